//! The RTP/RTCP relay. Each anchored stream has four sockets (RTP and RTCP facing each leg);
//! what a packet or a moment leads to (latching, SRTP, transcoding, DTMF, tones, comfort
//! noise, RTCP quality, RTP timeouts) is decided by the stream's sans-IO [`MediaStream`], and
//! the relay sends what it hands back. Two drivers move the packets, chosen at start
//! (`media.io`): io_uring workers ([`super::uring`], no system call per packet), or here one
//! tokio task per stream, its sockets read into fixed buffers, with its SDP updates, sounds
//! to play and one timer.

use super::player::Sound;
use super::sockets::{bind_pair, lock, mark_std, take_or_bind, Reserved, Settings};
pub use super::sockets::{EventSink, RelayStats};
use super::stream::{MediaStream, StreamSettings};
use super::uring::Workers;
use super::{MediaCallId, MediaCommand, MediaEvent, PortBinder, Stream};
use crate::config::{MediaConfig, MediaIo, DEFAULT_MEDIA_DSCP};
use crate::shared::Leg;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

struct Running {
    update: watch::Sender<Stream>,
    /// Sounds to play (queued until the task runs).
    plays: mpsc::UnboundedSender<(Leg, Sound)>,
    queued: Option<mpsc::UnboundedReceiver<(Leg, Sound)>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    fn new() -> Running {
        let (update, _) = watch::channel(Stream::default());
        let (plays, queued) = mpsc::unbounded_channel();
        Running {
            update,
            plays,
            queued: Some(queued),
            task: None,
        }
    }
}

/// The relay of one process.
pub struct Relay {
    driver: Driver,
    settings: Settings,
    /// Ports to bind ahead of time, for the thread that does it.
    prepare: Arc<PrepareQueue>,
    pub stats: Arc<RelayStats>,
}

/// What moves the packets.
enum Driver {
    /// io_uring workers.
    Uring(Workers),
    /// A tokio task per stream.
    Tasks(Tasks),
}

/// The tokio driver's streams.
struct Tasks {
    /// The runtime the streams run on, whichever thread commands them.
    runtime: tokio::runtime::Handle,
    calls: Mutex<HashMap<MediaCallId, Vec<Running>>>,
    events: EventSink,
}

impl Relay {
    /// A relay on the profile's media address; events (DTMF digits, RTP timeouts) go to
    /// `events`. With `media.io: auto` it uses io_uring when the kernel offers what that
    /// needs, else tokio tasks on the runtime this is called in; the log says which. An error
    /// only when `media.io: io_uring` cannot be had.
    pub fn new(config: &MediaConfig, events: EventSink) -> Result<Arc<Relay>, String> {
        let reserved: Reserved = Arc::new(Mutex::new(HashMap::new()));
        let settings = Settings {
            address: config.address,
            stream: StreamSettings {
                strict_source: config.strict_source,
                rtp_timeout: config.rtp_timeout,
            },
            reserved: reserved.clone(),
        };
        let stats = Arc::new(RelayStats::default());
        let threads = match config.io_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2).min(8)),
            n => n,
        };
        let uring = match config.io {
            MediaIo::Tokio => Err("media.io is tokio".to_string()),
            MediaIo::Auto | MediaIo::IoUring => {
                Workers::start(threads, &settings, &stats, &events).map_err(|e| e.to_string())
            }
        };
        let driver = match uring {
            Ok(workers) => {
                tracing::info!(threads = workers.len(), "media: relaying with io_uring");
                let _ = stats.driver.set(("io_uring", workers.len()));
                Driver::Uring(workers)
            }
            Err(err) if config.io == MediaIo::IoUring => {
                return Err(format!("media.io is io_uring, which cannot be used: {err}"));
            }
            Err(err) => {
                tracing::info!("media: relaying with tokio tasks (no io_uring: {err})");
                let _ = stats.driver.set(("tokio", 0));
                Driver::Tasks(Tasks {
                    runtime: tokio::runtime::Handle::current(),
                    calls: Mutex::new(HashMap::new()),
                    events,
                })
            }
        };
        Ok(Arc::new(Relay {
            driver,
            prepare: spawn_preparer(config.address, reserved),
            settings,
            stats,
        }))
    }

    /// The driver moving the packets: `io_uring` or `tokio`.
    pub fn driver(&self) -> &'static str {
        self.stats
            .driver
            .get()
            .map_or("tokio", |(driver, _)| driver)
    }

    /// A binder for an engine's port pool: the ports it binds are the ones this relay's
    /// streams then use.
    pub fn port_binder(&self) -> ReservingBinder {
        ReservingBinder {
            address: self.settings.address,
            reserved: self.settings.reserved.clone(),
            prepare: self.prepare.clone(),
        }
    }

    /// Carries out an engine command (from any thread).
    pub fn apply(&self, command: MediaCommand) {
        match &self.driver {
            Driver::Uring(workers) => workers.apply(command),
            Driver::Tasks(tasks) => tasks.apply(command, &self.settings, &self.stats),
        }
    }
}

impl Tasks {
    fn apply(&self, command: MediaCommand, settings: &Settings, stats: &Arc<RelayStats>) {
        let mut calls = lock(&self.calls);
        match command {
            MediaCommand::Play { call, to, sound } => {
                let streams = calls.entry(call).or_default();
                if streams.is_empty() {
                    streams.push(Running::new());
                }
                let _ = streams[0].plays.send((to, sound));
            }
            MediaCommand::Close { call } => {
                for running in calls.remove(&call).into_iter().flatten() {
                    if let Some(task) = running.task {
                        task.abort();
                        stats.streams.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            MediaCommand::Stream { call, stream } => {
                let streams = calls.entry(call).or_default();
                while streams.len() <= stream.index {
                    streams.push(Running::new());
                }
                let running = &mut streams[stream.index];
                let stream = *stream;
                running.update.send_replace(stream);
                // Both legs' ports are known once the answer is anchored: start relaying.
                if running.task.is_none() && stream.a.advertised && stream.b.advertised {
                    let updates = running.update.subscribe();
                    let plays = running
                        .queued
                        .take()
                        .unwrap_or_else(|| mpsc::unbounded_channel().1);
                    let events = self.events.clone();
                    let report: Box<dyn Fn(MediaEvent) + Send + Sync> =
                        Box::new(move |event| events(call, event));
                    running.task = Some(self.runtime.spawn(relay_stream(
                        settings.clone(),
                        updates,
                        plays,
                        stats.clone(),
                        report,
                    )));
                    stats.streams.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The engines' [`PortBinder`]: binds each port pair as the pool hands it out and keeps the
/// sockets for the relay's stream on that port. The ports next in line (`media.bound_ahead`)
/// are bound ahead of time by a thread of the relay's own, so a shard handing out a port finds
/// it bound and makes no system call (binding four sockets per call took 6 % of a shard's
/// time).
pub struct ReservingBinder {
    address: IpAddr,
    reserved: Reserved,
    prepare: Arc<PrepareQueue>,
}

impl PortBinder for ReservingBinder {
    fn bind(&mut self, port: u16) -> std::io::Result<()> {
        if lock(&self.reserved).contains_key(&port) {
            return Ok(());
        }
        // Not prepared (yet): bound here.
        let pair = bind_pair(self.address, port)?;
        lock(&self.reserved).insert(port, pair);
        Ok(())
    }

    fn release(&mut self, port: u16) {
        lock(&self.reserved).remove(&port);
    }

    fn prepare(&mut self, port: u16) {
        self.prepare.push(port);
    }
}

/// Ports waiting to be bound ahead of time, and the signal that some are.
#[derive(Default)]
struct PrepareQueue {
    ports: Mutex<Vec<u16>>,
    added: std::sync::Condvar,
}

impl PrepareQueue {
    /// Queues a port; the preparer is woken only when the queue was empty (under load it
    /// takes many ports per wake-up instead of one system call per port).
    fn push(&self, port: u16) {
        let mut ports = lock(&self.ports);
        ports.push(port);
        if ports.len() == 1 {
            self.added.notify_one();
        }
    }
}

/// The thread that binds ports ahead of time into `reserved`; it ends once the relay and
/// every binder are gone. A port it cannot bind (another process holds it) is left alone: the
/// pool's own bind then fails the same way and skips it.
fn spawn_preparer(address: IpAddr, reserved: Reserved) -> Arc<PrepareQueue> {
    let queue = Arc::new(PrepareQueue::default());
    let shared = queue.clone();
    let spawned = std::thread::Builder::new()
        .name("media-ports".into())
        .spawn(move || {
            let mut batch = Vec::new();
            while Arc::strong_count(&shared) > 1 {
                {
                    let ports = lock(&shared.ports);
                    let (mut ports, _) = shared
                        .added
                        .wait_timeout_while(ports, std::time::Duration::from_secs(1), |p| {
                            p.is_empty()
                        })
                        .unwrap_or_else(|e| e.into_inner());
                    std::mem::swap(&mut *ports, &mut batch);
                }
                for port in batch.drain(..) {
                    if lock(&reserved).contains_key(&port) {
                        continue;
                    }
                    if let Ok(pair) = bind_pair(address, port) {
                        lock(&reserved).entry(port).or_insert(pair);
                    }
                }
            }
        });
    if let Err(err) = spawned {
        // Ports are then bound when handed out, as without a preparer.
        tracing::warn!("media: no thread to bind ports ahead of time: {err}");
    }
    queue
}

/// Marks what a UDP socket sends with a DSCP (IPv4 TOS or IPv6 traffic class).
pub fn mark_udp(socket: &UdpSocket, dscp: u8) -> std::io::Result<()> {
    mark_std(socket, dscp)
}

/// The sockets facing one leg.
struct LegSockets {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    /// The DSCP they already mark with.
    marked: u8,
}

impl LegSockets {
    /// The leg's sockets: the ones the pool bound for `port`, or freshly bound ones.
    fn bind(address: IpAddr, port: u16, reserved: &Reserved) -> std::io::Result<LegSockets> {
        let (rtp, rtcp) = take_or_bind(address, port, reserved)?;
        Ok(LegSockets {
            rtp: UdpSocket::from_std(rtp)?,
            rtcp: UdpSocket::from_std(rtcp)?,
            marked: DEFAULT_MEDIA_DSCP,
        })
    }

    /// Marks what the relay sends toward the leg with its trunk's DSCP (unless they already
    /// do).
    fn mark(&self, dscp: u8) {
        if self.marked == dscp {
            return;
        }
        for socket in [&self.rtp, &self.rtcp] {
            if let Err(err) = mark_udp(socket, dscp) {
                tracing::warn!("media: cannot set DSCP {dscp}: {err}");
            }
        }
    }
}

/// The clock the relay hands its streams.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Runs one stream: its four sockets, its SDP updates and sounds to play, and its timer,
/// around a [`MediaStream`] that decides what each of them leads to.
async fn relay_stream(
    settings: Settings,
    mut updates: watch::Receiver<Stream>,
    mut plays: mpsc::UnboundedReceiver<(Leg, Sound)>,
    stats: Arc<RelayStats>,
    report: Box<dyn Fn(MediaEvent) + Send + Sync>,
) {
    let stream = *updates.borrow_and_update();
    let (a, b) = match (
        LegSockets::bind(settings.address, stream.a.local, &settings.reserved),
        LegSockets::bind(settings.address, stream.b.local, &settings.reserved),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(err), _) | (_, Err(err)) => {
            stats.bind_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                a = stream.a.local,
                b = stream.b.local,
                "media: cannot bind the stream's ports: {err}"
            );
            return;
        }
    };
    a.mark(stream.a.dscp);
    b.mark(stream.b.dscp);
    // On the heap, allocated here on the runtime's thread: held in the task itself they made
    // each stream's task several kilobytes, allocated by the shard that spawns it and freed by
    // another thread, which cost the shard fresh (zeroed) pages on every call.
    let mut media = Box::new(MediaStream::new(&stream, settings.stream, now()));
    let mut buffers = Box::new([[0u8; 2048]; 4]);
    let [from_a, from_b, rtcp_a, rtcp_b] = &mut *buffers;
    // One timer, moved to whatever the stream wants next (frames played, comfort noise, RTP
    // timeouts).
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    loop {
        let deadline = media.poll_timeout().map(tokio::time::Instant::from_std);
        if let Some(deadline) = deadline {
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
        }
        tokio::select! {
            Some((to, sound)) = plays.recv() => media.play(to, sound, now()),
            () = &mut timer, if deadline.is_some() => media.handle_timeout(now()),
            changed = updates.changed() => {
                if changed.is_err() {
                    return;
                }
                let stream = *updates.borrow_and_update();
                media.update(&stream, now());
            }
            Ok((n, source)) = a.rtp.recv_from(from_a) => {
                media.handle_packet(Leg::A, source, false, &from_a[..n], now());
            }
            Ok((n, source)) = b.rtp.recv_from(from_b) => {
                media.handle_packet(Leg::B, source, false, &from_b[..n], now());
            }
            Ok((n, source)) = a.rtcp.recv_from(rtcp_a) => {
                media.handle_packet(Leg::A, source, true, &rtcp_a[..n], now());
            }
            Ok((n, source)) = b.rtcp.recv_from(rtcp_b) => {
                media.handle_packet(Leg::B, source, true, &rtcp_b[..n], now());
            }
        }
        while let Some(transmit) = media.poll_transmit() {
            let sockets = match transmit.to {
                Leg::A => &a,
                Leg::B => &b,
            };
            let socket = if transmit.rtcp_port {
                &sockets.rtcp
            } else {
                &sockets.rtp
            };
            if socket
                .send_to(transmit.bytes, transmit.destination)
                .await
                .is_ok()
            {
                stats.packets.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes
                    .fetch_add(transmit.bytes.len() as u64, Ordering::Relaxed);
            }
        }
        while let Some(event) = media.poll_event() {
            report(event);
        }
        let refused = media.take_counters();
        if refused.dropped > 0 {
            stats.dropped.fetch_add(refused.dropped, Ordering::Relaxed);
        }
        if refused.srtp_failures > 0 {
            stats
                .srtp_failures
                .fetch_add(refused.srtp_failures, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::MediaEvent;

    /// The call the relay tests drive.
    const TEST_CALL: MediaCallId = MediaCallId { shard: 0, call: 1 };

    /// An even loopback port free for RTP and RTCP right now.
    fn free_port_pair() -> u16 {
        loop {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            let port = probe.local_addr().expect("addr").port() & !1;
            drop(probe);
            let pair = (
                std::net::UdpSocket::bind(("127.0.0.1", port)),
                std::net::UdpSocket::bind(("127.0.0.1", port + 1)),
            );
            if let (Ok(_), Ok(_)) = pair {
                return port;
            }
        }
    }

    async fn heard(socket: &UdpSocket) -> bool {
        let mut buf = [0u8; 256];
        tokio::time::timeout(
            std::time::Duration::from_millis(300),
            socket.recv_from(&mut buf),
        )
        .await
        .is_ok()
    }

    /// A media section on loopback (streams here name their own ports), moved by `io`.
    fn loopback_media(io: MediaIo) -> MediaConfig {
        MediaConfig {
            address: "127.0.0.1".parse().unwrap(),
            advertise: "127.0.0.1".into(),
            ports: (20000, 20099),
            strict_source: false,
            rtp_timeout: 0,
            ringback: Default::default(),
            no_ports: Default::default(),
            bound_ahead: crate::config::DEFAULT_BOUND_AHEAD,
            io,
            io_threads: 1,
        }
    }

    /// A relay moved by `io` (io_uring must be there: the machines Bridgehead is tested on
    /// run Linux 6.x with it enabled), and the media events it reports.
    fn relay(config: &MediaConfig) -> (Arc<Relay>, mpsc::UnboundedReceiver<MediaEvent>) {
        let (events, heard) = mpsc::unbounded_channel();
        let sink: EventSink = Arc::new(move |call, event| {
            assert_eq!(call, TEST_CALL);
            let _ = events.send(event);
        });
        let relay = Relay::new(config, sink).expect("relay");
        let expected = if config.io == MediaIo::Tokio {
            "tokio"
        } else {
            "io_uring"
        };
        assert_eq!(relay.driver(), expected);
        (relay, heard)
    }

    /// True when nobody holds `port` and `port + 1` on loopback.
    fn is_free(port: u16) -> bool {
        std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port + 1)).is_ok()
    }

    #[tokio::test]
    async fn a_port_prepared_ahead_is_bound_by_the_relay_thread_and_closed_on_release() {
        let config = loopback_media(MediaIo::Tokio);
        let (relay, _) = relay(&config);
        let mut binder = relay.port_binder();
        let port = free_port_pair();
        binder.prepare(port);
        // Watched in the relay's table, not by binding the port: a probe holding it for an
        // instant made the preparer's own bind fail now and then (seen on a loaded CI).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !lock(&relay.settings.reserved).contains_key(&port) {
            assert!(std::time::Instant::now() < deadline, "never prepared");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(!is_free(port), "a prepared port is bound");
        // Handing the port out finds it bound: no second bind (which would fail, in use).
        binder.bind(port).expect("prepared");
        binder.release(port);
        assert!(is_free(port), "released ports close");
    }

    /// A stream between two loopback far ends, relayed by `relay`.
    fn anchored(caller: &UdpSocket, callee: &UdpSocket) -> Stream {
        let addr = |s: &UdpSocket| s.local_addr().ok();
        let mut stream = Stream::default();
        stream.a.local = free_port_pair();
        stream.b.local = free_port_pair();
        stream.a.advertised = true;
        stream.b.advertised = true;
        stream.a.remote = addr(caller);
        stream.b.remote = addr(callee);
        stream.a.remote_rtcp = addr(caller);
        stream.a.sends = true;
        stream.b.sends = true;
        stream
    }

    async fn loopback_socket() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.expect("bind")
    }

    const PACKET: [u8; 13] = [0x80, 8, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 0xd5];

    /// Polls `check` every 10 ms for up to 2 s.
    async fn eventually(mut check: impl FnMut() -> bool) -> bool {
        for _ in 0..200 {
            if check() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        false
    }

    async fn a_leg_that_moves_gets_media_at_its_new_address(io: MediaIo) {
        let (relay, _) = relay(&loopback_media(io));
        let (caller, callee, moved) = (
            loopback_socket().await,
            loopback_socket().await,
            loopback_socket().await,
        );
        let mut stream = anchored(&caller, &callee);
        relay.apply(MediaCommand::Stream {
            call: TEST_CALL,
            stream: Box::new(stream),
        });
        assert!(eventually(|| relay.stats.streams.load(Ordering::Relaxed) == 1).await);
        let (toward_a, toward_b) = (("127.0.0.1", stream.a.local), ("127.0.0.1", stream.b.local));
        // The callee talks first: Bridgehead latches onto it.
        callee.send_to(&PACKET, toward_b).await.unwrap();
        assert!(heard(&caller).await);
        caller.send_to(&PACKET, toward_a).await.unwrap();
        assert!(heard(&callee).await);
        // A re-INVITE moves the callee: media goes to its new address at once.
        stream.b.remote = moved.local_addr().ok();
        relay.apply(MediaCommand::Stream {
            call: TEST_CALL,
            stream: Box::new(stream),
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        caller.send_to(&PACKET, toward_a).await.unwrap();
        assert!(heard(&moved).await, "at the new address");
        assert!(!heard(&callee).await, "not at the old one");
        // RTCP crosses too, between the RTCP ports.
        moved
            .send_to(
                &[0x80, 200, 0, 1, 0, 0, 0, 9],
                ("127.0.0.1", stream.b.local + 1),
            )
            .await
            .unwrap();
        assert!(heard(&caller).await, "RTCP, to the caller's address");
        // Counted once the send completed, which may be just after the far end heard it.
        assert!(eventually(|| relay.stats.packets.load(Ordering::Relaxed) == 4).await);
        // Closing the call frees its four ports.
        relay.apply(MediaCommand::Close { call: TEST_CALL });
        assert!(eventually(|| is_free(stream.a.local) && is_free(stream.b.local)).await);
        assert_eq!(relay.stats.streams.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_leg_that_moves_gets_media_at_its_new_address_with_io_uring() {
        a_leg_that_moves_gets_media_at_its_new_address(MediaIo::IoUring).await;
    }

    #[tokio::test]
    async fn a_leg_that_moves_gets_media_at_its_new_address_with_tokio() {
        a_leg_that_moves_gets_media_at_its_new_address(MediaIo::Tokio).await;
    }

    /// A leg that stops sending is reported once its timeout passes (the driver's timer),
    /// and a sound queued before the stream ran is played to the other leg.
    async fn silence_times_out_and_queued_sounds_play(io: MediaIo) {
        let config = MediaConfig {
            rtp_timeout: 1,
            ..loopback_media(io)
        };
        let (relay, mut events) = relay(&config);
        let (caller, callee) = (loopback_socket().await, loopback_socket().await);
        let mut stream = anchored(&caller, &callee);
        stream.a.audio_pt = Some(8);
        stream.a.accepts = (false, true);
        relay.apply(MediaCommand::Play {
            call: TEST_CALL,
            to: Leg::A,
            sound: Sound::Ringback(crate::config::TonePlan::Itu),
        });
        relay.apply(MediaCommand::Stream {
            call: TEST_CALL,
            stream: Box::new(stream),
        });
        assert!(heard(&caller).await, "ringback toward the caller");
        caller
            .send_to(&PACKET, ("127.0.0.1", stream.a.local))
            .await
            .unwrap();
        let event = tokio::time::timeout(std::time::Duration::from_secs(3), events.recv())
            .await
            .expect("an event in time");
        assert!(
            matches!(event, Some(MediaEvent::RtpTimeout { seconds: 1, .. })),
            "{event:?}"
        );
        relay.apply(MediaCommand::Close { call: TEST_CALL });
    }

    #[tokio::test]
    async fn silence_times_out_and_queued_sounds_play_with_io_uring() {
        silence_times_out_and_queued_sounds_play(MediaIo::IoUring).await;
    }

    #[tokio::test]
    async fn silence_times_out_and_queued_sounds_play_with_tokio() {
        silence_times_out_and_queued_sounds_play(MediaIo::Tokio).await;
    }
}
