//! The tokio driver: binds the transports, runs one engine per shard, moves messages and
//! timers between them, and reloads rule sets (on file changes and on SIGHUP). All SIP logic
//! lives in the sans-IO [`Engine`].
//!
//! Each shard is a thread of its own with a single-threaded runtime: it receives on its own
//! UDP sockets, runs its engine and sends from the same thread, so a datagram of a call the
//! shard owns is handled to completion where it arrived, with no hand-off. What arrives for
//! another shard, and what TCP connections, the media relay and the reloader send, comes
//! through the shard's queue. TCP, the media relay, the reloader and signals run on a shared
//! multi-threaded runtime.

use crate::config::Profile;
use crate::engine::Engine;
use crate::media::relay::Relay;
use crate::observe::ReloadRequest;
use crate::overload::{thread_cpu, Load};
use crate::script::reload::{self, Compiled};
use crate::script::{RuleMetrics, RuleSet};
use crate::shared::Transmit;
use crate::transport::udp::{bind_udp, parse_datagram, Datagram, UdpSockets};
use crate::transport::{Hub, ShardInput};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Quiet time after the last file event of a burst before reloading: one editor save makes
/// several events within a few milliseconds.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// Loads the profile and its rules, binds every listener and serves until the process is
/// stopped. Nothing is bound unless the whole profile and every script are valid.
pub fn run(mut profile: Profile) -> anyhow::Result<()> {
    // Peers given by name are resolved before anything uses the profile.
    let refresh = if crate::transport::dns::has_names(&profile) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(crate::transport::dns::resolve_peers(&mut profile))
    } else {
        None
    };
    let profile = Arc::new(profile);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // One shard per two cores by default: a shard handles its own datagrams to completion, and
    // every message that lands on another shard's socket costs a hand-off between threads. On
    // 2 cores one shard took a call for 0.18 ms of CPU and held 5,000 calls/s; two took 0.21-0.33
    // ms and held no more (docs/performance.md). The other cores carry the media relay.
    let shards = if profile.shards == 0 {
        (cores / 2).max(1)
    } else {
        profile.shards
    };
    let metrics = Arc::new(RuleMetrics::default());
    // Each shard has its own Lua state; load them all before binding anything.
    let mut engines = Vec::with_capacity(shards);
    for shard in 0..shards {
        let rules = RuleSet::load(profile.clone(), 1, metrics.clone()).map_err(|errors| {
            anyhow::anyhow!(errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"))
        })?;
        engines.push(Engine::new(rules, shard, shards));
    }
    // Shard 0 sends the OPTIONS keepalives; every shard routes calls by what they tell.
    let health = Arc::new(crate::shared::PeerHealth::default());
    let loads = Arc::new(crate::shared::TrunkLoads::default());
    let bans = Arc::new(crate::shared::SharedBans::default());
    if profile.cluster.is_some() {
        bans.announce();
    }
    for engine in &mut engines {
        engine.share_peer_health(health.clone());
        engine.share_trunk_loads(loads.clone());
        engine.share_bans(bans.clone());
    }
    let call_log = Arc::new(crate::observe::calls::CallLog::new(
        Duration::from_secs(profile.short_call_seconds.into()),
        profile.cdr.as_ref(),
    )?);
    let recent = Arc::new(crate::capture::Recent::new(
        profile.admin.as_ref().map_or(0, |admin| admin.recent_calls),
    ));
    let capture = (profile.capture.is_some() || recent.enabled())
        .then(|| {
            crate::capture::Capture::start(
                profile.capture.as_ref(),
                &profile.listeners,
                recent.clone(),
            )
        })
        .transpose()?;
    if let Some(hep) = profile.capture.as_ref().map(|capture| &capture.hep) {
        tracing::info!(collector = %hep.address, agent = hep.agent_id, "capturing SIP to HEP");
    }
    for engine in &mut engines {
        if profile.cluster.is_some() {
            engine.keep_replicas();
        }
        engine.keep_records();
        if capture.is_some() {
            engine.keep_links();
        }
    }
    let mut udp = bind_udp(&profile, shards)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut senders = Vec::with_capacity(shards);
        let mut receivers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            receivers.push(rx);
        }
        let (hub, tcp) = Hub::bind(&profile, senders.clone(), capture).await?;
        let shard_inputs = senders.clone();
        let events: crate::media::relay::EventSink = Arc::new(move |call, event| {
            // The relay id carries the shard that owns the call.
            if let Some(shard) = shard_inputs.get(call.shard) {
                let _ = shard.send(ShardInput::Media(call, event));
            }
        });
        // A dead instance's calls go to the shard that owns each.
        let take_over_inputs = senders.clone();
        let take_over: crate::cluster::TakeOver = Arc::new(move |snapshot| {
            let shard = crate::shared::shard_for_call_id(
                snapshot.a.call_id.as_bytes(),
                take_over_inputs.len(),
            );
            if let Some(shard) = take_over_inputs.get(shard) {
                let _ = shard.send(ShardInput::TakeOver(Box::new(snapshot)));
            }
        });
        let cluster = profile
            .cluster
            .as_ref()
            .map(|config| {
                let holds = profile
                    .listeners
                    .iter()
                    .map(|listener| listener.address.ip())
                    .chain(profile.media.as_ref().map(|media| media.address))
                    .collect();
                crate::cluster::Cluster::start(
                    config,
                    take_over,
                    (loads.clone(), bans.clone()),
                    holds,
                )
            })
            .transpose()?;
        if let Some(config) = &profile.cluster {
            tracing::info!(
                cluster = %config.name,
                instance = %config.instance,
                "sharing call state in Redis"
            );
        }
        let relay = profile
            .media
            .as_ref()
            .map(|media| Relay::new(media, events))
            .transpose()
            .map_err(anyhow::Error::msg)?;
        if let Some(media) = &profile.media {
            tracing::info!(
                address = %media.address,
                ports = format!("{}-{}", media.ports.0, media.ports.1),
                "anchoring media"
            );
        }
        let mut started = Vec::with_capacity(shards);
        let (drained_tx, mut drained_rx) = mpsc::unbounded_channel();
        for (shard, (mut engine, rx)) in engines.into_iter().zip(receivers).enumerate() {
            if let Some(relay) = &relay {
                engine.set_port_binder(Box::new(relay.port_binder()));
            }
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            let io = ShardIo {
                shard,
                calls: call_log.clone(),
                inputs: rx,
                udp: std::mem::take(&mut udp[shard]),
                hub: hub.clone(),
                relay: relay.clone(),
                cluster: cluster.clone(),
                started: started_tx,
                drained: drained_tx.clone(),
            };
            std::thread::Builder::new()
                .name(format!("shard-{shard}"))
                .spawn(move || run_shard_thread(engine, io))?;
            started.push(started_rx);
        }
        // Nothing is served unless every shard runs.
        for (shard, started) in started.into_iter().enumerate() {
            match started.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => anyhow::bail!("shard {shard} cannot start: {err}"),
                Err(_) => anyhow::bail!("shard {shard} cannot start"),
            }
        }
        hub.start(tcp);
        // Only now may the cluster take calls over (the process could still have failed).
        if let Some(cluster) = &cluster {
            cluster.serve();
        }
        for listener in &profile.listeners {
            tracing::info!(
                listener = %listener.name,
                address = %listener.address,
                transports = ?listener.transports,
                "listening"
            );
        }
        let (reload_tx, reload_rx) = mpsc::unbounded_channel::<ReloadRequest>();

        let watch_tx = reload_tx.clone();
        let _watcher = reload::watch(&profile, move || {
            let _ = watch_tx.send(None);
        })
        .map_err(|err| tracing::warn!("not watching rule files ({err}): reload with SIGHUP"))
        .ok();
        metrics.version.store(1, Ordering::Relaxed);
        // The admin server: the operator's drain comes in as SIGTERM's does.
        let (admin_drain_tx, mut admin_drain) = mpsc::unbounded_channel();
        if let Some(admin) = &profile.admin {
            let listener = crate::observe::bind(admin.address).await?;
            let observed = Arc::new(crate::observe::Observed {
                hub: hub.clone(),
                rules: metrics.clone(),
                relay: relay.as_ref().map(|relay| relay.stats.clone()),
                cluster: cluster.as_ref().map(|cluster| cluster.stats.clone()),
                health: health.clone(),
                reload: reload_tx.clone(),
                drain: admin_drain_tx,
                token: admin.token.clone(),
                calls: call_log.clone(),
                recent,
                started: Instant::now(),
            });
            let tls = admin
                .tls
                .as_ref()
                .map(crate::transport::tls::https_server_config)
                .transpose()
                .map_err(|err| anyhow::anyhow!("admin: TLS: {err}"))?;
            tracing::info!(
                address = %listener.local_addr()?,
                https = tls.is_some(),
                "admin listening"
            );
            tokio::spawn(crate::observe::serve(listener, tls, observed));
        }
        tokio::spawn(reloader(
            profile.clone(),
            shards,
            metrics,
            (senders, hub.clone()),
            (refresh, reload_rx),
        ));
        tracing::info!(shards, profile = %profile.path.display(), "ready");
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        // SIGTERM (or a first SIGINT) drains; a second SIGINT stops at once.
        let mut drain: Option<Drain> = None;
        loop {
            let stop_anyway = drain.as_ref().map(|d| d.stop_anyway);
            let hard_stop = async {
                match stop_anyway {
                    Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    let _ = reload_tx.send(None);
                }
                Some(()) = admin_drain.recv() => {
                    tracing::info!("admin: draining");
                    drain.get_or_insert_with(|| Drain::start(&hub, shards));
                }
                result = tokio::signal::ctrl_c() => {
                    result?;
                    if drain.is_some() {
                        tracing::info!("SIGINT again: stopping now");
                        break;
                    }
                    tracing::info!("SIGINT: draining (SIGINT again stops at once)");
                    drain = Some(Drain::start(&hub, shards));
                }
                _ = terminate.recv() => {
                    tracing::info!("SIGTERM: draining");
                    drain.get_or_insert_with(|| Drain::start(&hub, shards));
                }
                Some(_) = drained_rx.recv() => {
                    if let Some(drain) = drain.as_mut() {
                        drain.shards_left = drain.shards_left.saturating_sub(1);
                        if drain.shards_left == 0 {
                            tracing::info!("drained: every shard is without calls");
                            break;
                        }
                    }
                }
                () = hard_stop => {
                    tracing::warn!("drain: requests of ended calls still unanswered; stopping");
                    break;
                }
            }
        }
        tracing::info!("shutting down");
        call_log.close();
        Ok(())
    })
}

/// How long after the drain's deadline the BYEs that ended the last calls may wait for their
/// answers before the process stops anyway.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// A drain under way: when the process stops whatever happens, and how many shards still have
/// calls.
struct Drain {
    stop_anyway: Instant,
    shards_left: usize,
}

impl Drain {
    /// Tells every shard to drain until the current profile's `drain_timeout` from now.
    fn start(hub: &Hub, shards: usize) -> Drain {
        let timeout = Duration::from_secs(hub.profile().drain_timeout.into());
        let deadline = Instant::now() + timeout;
        tracing::info!(
            timeout_s = timeout.as_secs(),
            "new calls get 503; calls in progress go on until the drain timeout"
        );
        for shard in 0..shards {
            hub.to_shard(shard, ShardInput::Drain(deadline));
        }
        Drain {
            stop_anyway: deadline + DRAIN_GRACE,
            shards_left: shards,
        }
    }
}

/// How long after a refused reload the names of a profile that has some are resolved again
/// (the running version keeps the addresses it has meanwhile).
const REFRESH_AFTER_REFUSAL: Duration = Duration::from_secs(300);

/// Reloads on request (debounced): compiles the next version off the shards' threads and
/// hands it to every shard; a version that fails to compile is refused and the running one
/// stays.
async fn reloader(
    running: Arc<Profile>,
    shards: usize,
    metrics: Arc<RuleMetrics>,
    (senders, hub): (Vec<mpsc::UnboundedSender<ShardInput>>, Arc<Hub>),
    (refresh, mut requests): (Option<Duration>, mpsc::UnboundedReceiver<ReloadRequest>),
) {
    let mut version = 1;
    // The one pending re-resolution of the peer names (their TTL): a reload, as a request.
    let mut refresh_at = refresh.map(|after| tokio::time::Instant::now() + after);
    loop {
        let due = async {
            match refresh_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        // Who waits for this reload's outcome (the admin API).
        let mut waiting = Vec::new();
        tokio::select! {
            request = requests.recv() => match request {
                Some(reply) => waiting.extend(reply),
                None => return,
            },
            () = due => tracing::debug!("peer names expired: resolving them again"),
        }
        refresh_at = None;
        // Wait until the burst of events of one save has been quiet for DEBOUNCE, counted from
        // its last event (an atomic rename makes several events at once: waiting a whole
        // DEBOUNCE again for each one that arrived meanwhile doubled the delay).
        let mut quiet_from = tokio::time::Instant::now() + DEBOUNCE;
        loop {
            match tokio::time::timeout_at(quiet_from, requests.recv()).await {
                Ok(Some(reply)) => {
                    waiting.extend(reply);
                    quiet_from = tokio::time::Instant::now() + DEBOUNCE;
                }
                Ok(None) => return,
                Err(_elapsed) => break,
            }
        }
        let next = version + 1;
        let (compiling, compile_metrics) = (running.clone(), metrics.clone());
        let started = Instant::now();
        let compiled = tokio::task::spawn_blocking(move || {
            let running = compiling;
            // Names resolved here, on a blocking thread: never on a shard's. TLS settings that
            // cannot be built (a key that is not the certificate's) refuse the version.
            let resolve = |profile: &mut Profile| {
                let refresh = tokio::runtime::Handle::current()
                    .block_on(crate::transport::dns::resolve_peers(profile));
                crate::transport::tls::TlsContexts::new(profile)
                    .map(|_| refresh)
                    .map_err(|err| format!("TLS: {err}"))
            };
            reload::compile(
                &running.path,
                (&running, resolve),
                shards,
                next,
                &compile_metrics,
            )
        })
        .await;
        match compiled {
            Ok(Ok(Compiled {
                shards: sets,
                restart_needed,
                recompile_after,
            })) => {
                refresh_at = recompile_after.map(|after| tokio::time::Instant::now() + after);
                if let Some(set) = sets.first() {
                    hub.set_profile(set.profile.clone());
                }
                for (sender, set) in senders.iter().zip(sets) {
                    let _ = sender.send(ShardInput::Reload(set));
                }
                version = next;
                metrics.reloaded(Ok(version));
                for reply in waiting {
                    let _ = reply.send(Ok(version));
                }
                tracing::info!(
                    version,
                    took_ms = started.elapsed().as_millis() as u64,
                    "reload: new calls take version {version}"
                );
                for change in restart_needed {
                    tracing::warn!("reload: {change}: needs a restart, running as before");
                }
            }
            Ok(Err(errors)) => {
                if crate::transport::dns::has_names(&running) {
                    refresh_at = Some(tokio::time::Instant::now() + REFRESH_AFTER_REFUSAL);
                }
                for error in &errors {
                    tracing::error!("reload refused: {error}");
                }
                tracing::error!(
                    version,
                    "reload refused: version {version} stays in service"
                );
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                metrics.reloaded(Err(&errors));
                for reply in waiting {
                    let _ = reply.send(Err(errors.clone()));
                }
            }
            Err(err) => {
                tracing::error!("reload failed: {err}");
                let errors = vec![format!("reload failed: {err}")];
                metrics.reloaded(Err(&errors));
                for reply in waiting {
                    let _ = reply.send(Err(errors.clone()));
                }
            }
        }
    }
}

/// What a shard's thread talks to: its queue, its UDP sockets, the hub (TCP, other shards)
/// and the media relay.
struct ShardIo {
    shard: usize,
    /// Where the shard's ended calls go (per-trunk counters, CDRs).
    calls: Arc<crate::observe::calls::CallLog>,
    inputs: mpsc::UnboundedReceiver<ShardInput>,
    udp: Vec<(crate::config::ListenerId, std::net::UdpSocket)>,
    hub: Arc<Hub>,
    relay: Option<Arc<Relay>>,
    /// The cluster's writer, when call state is shared.
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Told once the shard runs, or why it cannot.
    started: tokio::sync::oneshot::Sender<Result<(), String>>,
    /// Told (the shard's index) once a drain left the shard without calls.
    drained: mpsc::UnboundedSender<usize>,
}

/// A shard's thread: a single-threaded runtime running [`run_shard`].
fn run_shard_thread(engine: Engine, io: ShardIo) {
    let shard = io.shard;
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = io.started.send(Err(format!("no runtime: {err}")));
            return;
        }
    };
    runtime.block_on(async move {
        match UdpSockets::new(io.udp) {
            Ok(udp) => {
                let _ = io.started.send(Ok(()));
                run_shard(
                    engine,
                    (io.inputs, io.drained),
                    udp,
                    (shard, io.hub, io.relay, io.calls),
                    io.cluster,
                )
                .await;
            }
            Err(err) => {
                let _ = io
                    .started
                    .send(Err(format!("UDP sockets not registered: {err}")));
            }
        }
    });
}

/// What woke a shard up.
enum Wake {
    Datagram(Datagram),
    Input(ShardInput),
    Timer,
}

/// Datagrams a shard takes in one go before it sends what they caused: enough to batch under
/// load, few enough to keep latency low.
const BATCH: usize = 64;

/// Work after which a batch ends early (rules that take milliseconds per call would otherwise
/// hold a batch's answers back for the whole batch).
const BATCH_TIME: Duration = Duration::from_millis(2);

async fn run_shard(
    mut engine: Engine,
    (mut inputs, drained): (
        mpsc::UnboundedReceiver<ShardInput>,
        mpsc::UnboundedSender<usize>,
    ),
    udp: UdpSockets,
    (shard, hub, relay, calls): (
        usize,
        Arc<Hub>,
        Option<Arc<Relay>>,
        Arc<crate::observe::calls::CallLog>,
    ),
    cluster: Option<Arc<crate::cluster::Cluster>>,
) {
    // When the shard next looks for calls whose state changed (cluster).
    let mut next_sync = Instant::now();
    let mut told_drained = false;
    let mut load = Load::default();
    // What the last batch of work took.
    let mut busy = Duration::ZERO;
    let mut buf = vec![0u8; 65_536];
    engine.start(Instant::now());
    while let Some(transmit) = engine.poll_transmit() {
        send(&mut engine, &udp, &hub, transmit).await;
    }
    loop {
        let deadline = match &cluster {
            Some(_) => Some(
                engine
                    .poll_timeout()
                    .map_or(next_sync, |at| at.min(next_sync)),
            ),
            None => engine.poll_timeout(),
        };
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                None => std::future::pending().await,
            }
        };
        let woken_by = tokio::select! {
            datagram = udp.recv(&mut buf) => Wake::Datagram(datagram),
            input = inputs.recv() => match input {
                Some(input) => Wake::Input(input),
                None => return,
            },
            () = sleep => Wake::Timer,
        };
        // When the shard stopped waiting: what follows is work (its busy share). The last
        // batch's work is counted now, so that the throttle is fresh before new calls are
        // looked at, after a quiet spell too.
        let woke = Instant::now();
        load.worked(busy, woke, thread_cpu);
        let limits = engine.profile().overload;
        let throttle = load.throttle(&limits, hub.waiting(shard), engine.active_calls());
        engine.set_throttle(throttle, woke);
        match woken_by {
            Wake::Datagram(datagram) => {
                let mut received = Some(datagram);
                let mut taken = 0;
                while let Some(Datagram {
                    len,
                    peer,
                    received: at,
                }) = received
                {
                    if let Some((bytes, parsed)) = parse_datagram(&buf[..len]) {
                        if let Some(capture) = &hub.capture {
                            capture.incoming(bytes, &peer, at);
                        }
                        if let Some(input) = hub.route(parsed, peer, at, shard) {
                            handle(&mut engine, input);
                        }
                    }
                    taken += 1;
                    received = if taken < BATCH && woke.elapsed() < BATCH_TIME {
                        udp.try_recv(&mut buf)
                    } else {
                        None
                    };
                }
            }
            Wake::Input(input) => {
                hub.took(shard);
                handle(&mut engine, input);
            }
            Wake::Timer => {}
        }
        // What queued up meanwhile (handed over by other shards, TCP, the relay), in the same
        // batch: a shard busy with its own datagrams never leaves its queue waiting.
        while woke.elapsed() < BATCH_TIME {
            let Ok(input) = inputs.try_recv() else { break };
            hub.took(shard);
            handle(&mut engine, input);
        }
        engine.handle_timeout(Instant::now());
        if let Some(cluster) = &cluster {
            let now = Instant::now();
            if now >= next_sync {
                engine.replicate(now);
                next_sync = now + cluster.sync;
            }
            while let Some(replica) = engine.poll_replica() {
                cluster.send(replica);
            }
        }
        // Media commands first, so the relay starts binding before the far end hears the SDP.
        while let Some(command) = engine.poll_media() {
            if let Some(relay) = &relay {
                relay.apply(command);
            }
        }
        while let Some(transmit) = engine.poll_transmit() {
            send(&mut engine, &udp, &hub, transmit).await;
        }
        if let Some(capture) = &hub.capture {
            hand_links(&mut engine, capture);
        }
        while let Some(peer) = engine.poll_close() {
            hub.close_toward(peer);
        }
        while let Some(request) = engine.poll_lookup() {
            hub.consult(request, shard);
        }
        while let Some((to, note)) = engine.poll_note() {
            hub.to_shard(to, ShardInput::Note(note));
        }
        while let Some(record) = engine.poll_record() {
            calls.ended(record);
        }
        busy = woke.elapsed();
        if !told_drained && engine.drained() {
            told_drained = true;
            let stats = engine.stats();
            tracing::info!(
                shard,
                refused = stats.drain_refused,
                ended = stats.drain_ended,
                "drained: no call left"
            );
            let _ = drained.send(shard);
        }
    }
}

/// Hands capture the engine's links (B-leg Call-IDs made, calls ended).
fn hand_links(engine: &mut Engine, capture: &crate::capture::Capture) {
    while let Some(link) = engine.poll_link() {
        capture.link(link);
    }
}

/// Sends one of the engine's messages: UDP from the shard's own socket of the listener (a
/// failure goes back to the engine at once), streams through the hub.
async fn send(engine: &mut Engine, udp: &UdpSockets, hub: &Arc<Hub>, transmit: Transmit) {
    if let Some(capture) = &hub.capture {
        // The links before the message (a failed send may have made a failover's B-leg).
        hand_links(engine, capture);
        capture.outgoing(&transmit);
    }
    match transmit.peer.transport {
        crate::config::Transport::Udp => {
            if let Err(error) = udp.send(&transmit.peer, &transmit.bytes).await {
                engine.handle_transport_error(&transmit, &error, Instant::now());
            }
        }
        crate::config::Transport::Tcp | crate::config::Transport::Tls => {
            hub.send_stream(transmit.peer, transmit.bytes)
        }
    }
}
fn handle(engine: &mut Engine, input: ShardInput) {
    let now = Instant::now();
    match input {
        ShardInput::Message(msg, peer, received) => engine.handle_message(msg, peer, received, now),
        ShardInput::Malformed(err, peer) => engine.handle_malformed(err, peer, now),
        ShardInput::Reload(rules) => engine.reload(rules),
        ShardInput::Media(call, event) => engine.handle_relay_event(call, &event, now),
        ShardInput::TransportError(transmit, error) => {
            engine.handle_transport_error(&transmit, &error, now)
        }
        ShardInput::LookupAnswer(id, answer) => engine.handle_lookup_answer(id, answer, now),
        ShardInput::Note(note) => engine.handle_note(note, now),
        ShardInput::Drain(deadline) => engine.drain(deadline),
        ShardInput::TakeOver(snapshot) => {
            let id = snapshot.id.clone();
            if let Err(err) = engine.take_over(*snapshot, now) {
                tracing::warn!(call = %id, "cannot take the call over: {err}");
            }
        }
        ShardInput::Admin(query, reply) => {
            let _ = reply.send(engine.admin(query, now));
        }
    }
}
