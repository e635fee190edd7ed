//! UDP and TCP transports on tokio. Every message is handled by the shard its Call-ID hashes
//! to (so all messages of a call are handled, in order, by one engine).
//!
//! UDP runs to completion on the shard's own thread: each shard binds every UDP listener's
//! address itself (`SO_REUSEPORT`, [`udp::bind_udp`]), receives on its sockets
//! ([`udp::UdpSockets`], with the kernel's arrival stamps), handles what is its own at once and forwards the rest to the owner shard's queue, and sends
//! its engine's datagrams from its own socket of the listener. TCP connections run as tasks on
//! the shared runtime and hand each framed message to its shard's queue. TLS ([`tls`]) is a
//! stream transport beside TCP: once its handshake is done, a TLS connection runs through the
//! same [`spawn_stream`] with its reader and writer halves.

pub mod consult;
pub mod dns;
pub mod tls;
pub mod udp;

use crate::capture::Capture;
use crate::config::{Listener, ListenerId, Profile, Transport, UnknownSources};
use crate::shared::shard_for_call_id;
use crate::shared::{tos, ConnId, Peer, Transmit};
use crate::sip::header::{split_list, Via};
use crate::sip::{frame_stream, parse_message, Framing, HeaderName, Message, ParseError};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tls::{HandshakeFailure, TlsContexts};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// What a shard receives from the transports.
#[derive(Debug)]
pub enum ShardInput {
    /// A message, where it came from, and when it arrived (a new call that waited too long
    /// for its shard is refused).
    Message(Message, Peer, Instant),
    Malformed(ParseError, Peer),
    /// A new rule-set version for new calls.
    Reload(Arc<crate::script::RuleSet>),
    /// A media event from the relay, for a call by its relay id.
    Media(crate::media::MediaCallId, crate::media::MediaEvent),
    /// A message the transport could not send, and why.
    TransportError(Transmit, String),
    /// A lookup's consultation service answered request `id`.
    LookupAnswer(u64, crate::lookup::LookupAnswer),
    /// Another shard's note about joined calls.
    Note(crate::call::join::CallNote),
    /// Drain (SIGTERM): refuse new calls, end the rest at this instant.
    Drain(std::time::Instant),
    /// A call of a dead instance of the cluster, to carry on.
    TakeOver(Box<crate::call::replica::CallSnapshot>),
    /// The admin API asks; the answer goes back on the channel.
    Admin(
        crate::engine::AdminQuery,
        tokio::sync::oneshot::Sender<crate::engine::AdminAnswer>,
    ),
}

/// The bound sockets and open connections, shared by receivers and shards.
pub struct Hub {
    /// The shared runtime: connections are spawned there, whichever thread asks.
    runtime: Handle,
    /// The listeners as the process started with them (their settings need a restart).
    listeners: Vec<Listener>,
    /// The profile new calls take: which sources are trunk peers.
    profile: RwLock<Arc<Profile>>,
    /// The TLS of that profile: listeners' certificates, trunks' trust and names.
    tls: RwLock<Arc<TlsContexts>>,
    conns: Mutex<HashMap<ConnId, mpsc::UnboundedSender<Bytes>>>,
    outbound: Mutex<HashMap<(ListenerId, SocketAddr), ConnId>>,
    /// Connections accepted and open, by listener and source IP.
    accepted: Mutex<HashMap<(ListenerId, IpAddr), u32>>,
    next_conn: AtomicU64,
    shards: Vec<mpsc::UnboundedSender<ShardInput>>,
    /// What waits in each shard's queue (the shard counts down what it takes).
    waiting: Vec<AtomicUsize>,
    /// The profile's `overload.queue` (kept here: the routing path takes no lock for it).
    queue_limit: AtomicUsize,
    /// Asks lookups' consultation services (HTTP).
    consultant: consult::Consultant,
    /// What the transports refused or closed.
    pub stats: TransportStats,
    /// The reference for connections' last-activity stamps.
    started: Instant,
    /// SIP capture (HEP, the dashboard's ladders), when on.
    pub capture: Option<Arc<Capture>>,
}

/// Connections the transports refused or closed on their own.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Connections closed at accept: their source is no trunk's peer (`unknown_sources: drop`).
    pub refused_unknown: AtomicU64,
    /// Connections closed at accept: their source had `max_connections_per_source` open.
    pub refused_over_limit: AtomicU64,
    /// Connections closed after `idle_timeout` without a complete message.
    pub closed_idle: AtomicU64,
    /// Connections closed because a CRLF ping got no pong in time (RFC 5626 §4.4.1).
    pub dead_connections: AtomicU64,
    /// TLS handshakes completed, either way.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes failed, either way, by [`HandshakeFailure::index`].
    pub tls_failures: [AtomicU64; HandshakeFailure::ALL.len()],
    /// New requests dropped on their way to a shard whose queue was past four times the
    /// profile's `overload.queue`.
    pub queue_dropped: AtomicU64,
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A CRLF ping, and how long its pong may take (RFC 5626 §4.4.1: 10 s).
const PING: &[u8] = b"\r\n\r\n";
const PONG_WAIT_MS: u64 = 10_000;

/// A TCP socket of the address's family, marked with a DSCP.
fn tcp_socket(address: SocketAddr, dscp: u8) -> std::io::Result<TcpSocket> {
    if address.is_ipv4() {
        let socket = TcpSocket::new_v4()?;
        socket.set_tos_v4(tos(dscp))?;
        Ok(socket)
    } else {
        let socket = TcpSocket::new_v6()?;
        socket.set_tclass_v6(tos(dscp))?;
        Ok(socket)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hub {
    /// Binds every TCP listener of the profile; fails before anything runs if one cannot be
    /// bound. Must run inside the shared runtime.
    pub async fn bind(
        profile: &Profile,
        shards: Vec<mpsc::UnboundedSender<ShardInput>>,
        capture: Option<Arc<Capture>>,
    ) -> anyhow::Result<(Arc<Hub>, Vec<StreamListener>)> {
        let mut streams = Vec::new();
        for (id, listener) in profile.listeners.iter().enumerate() {
            for transport in [Transport::Tcp, Transport::Tls] {
                if !listener.transports.contains(&transport) {
                    continue;
                }
                let address = SocketAddr::new(listener.address.ip(), listener.port(transport));
                // Accepted connections inherit the listening socket's DSCP.
                let bound = tcp_socket(address, listener.dscp)
                    .and_then(|socket| {
                        socket.set_reuseaddr(true)?;
                        socket.bind(address)?;
                        socket.listen(1024)
                    })
                    .map_err(|err| {
                        anyhow::anyhow!(
                            "listener '{}': cannot bind {transport:?} {address}: {err}",
                            listener.name,
                        )
                    })?;
                streams.push(StreamListener {
                    listener: id,
                    transport,
                    socket: bound,
                });
            }
        }
        let tls = TlsContexts::new(profile)?;
        let consultant = consult::Consultant::new(Handle::current())?;
        let hub = Arc::new(Hub {
            consultant,
            runtime: Handle::current(),
            listeners: profile.listeners.clone(),
            profile: RwLock::new(Arc::new(profile.clone())),
            tls: RwLock::new(Arc::new(tls)),
            conns: Mutex::new(HashMap::new()),
            outbound: Mutex::new(HashMap::new()),
            accepted: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            waiting: shards.iter().map(|_| AtomicUsize::new(0)).collect(),
            queue_limit: AtomicUsize::new(profile.overload.queue),
            shards,
            stats: TransportStats::default(),
            started: Instant::now(),
            capture,
        });
        Ok((hub, streams))
    }

    /// Makes `profile` the one whose trunk peers connections are checked against, and whose
    /// TLS settings new connections take (established ones keep theirs). TLS settings that
    /// cannot be built leave the previous ones in use.
    pub fn set_profile(&self, profile: Arc<Profile>) {
        match TlsContexts::new(&profile) {
            Ok(tls) => *self.tls.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tls),
            Err(err) => tracing::error!("TLS settings not reloaded, the previous stay: {err}"),
        }
        self.queue_limit
            .store(profile.overload.queue, Ordering::Relaxed);
        *self.profile.write().unwrap_or_else(|e| e.into_inner()) = profile;
    }

    /// The TLS settings new connections take.
    fn tls(&self) -> Arc<TlsContexts> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A TLS handshake failed with `peer`: logged with its reason, and counted.
    fn tls_failed(&self, peer: SocketAddr, outbound: bool, failure: HandshakeFailure, err: &str) {
        self.stats.tls_failures[failure.index()].fetch_add(1, Ordering::Relaxed);
        let total = self.stats.tls_failures[failure.index()].load(Ordering::Relaxed);
        let side = if outbound { "to" } else { "from" };
        tracing::warn!(%peer, reason = failure.name(), count = total, "TLS handshake {side} {peer} failed: {}: {err}", failure.name());
    }

    /// Whether a connection accepted on `listener` from `source` may stay: its source is a
    /// trunk's peer (or the listener answers strangers) and has fewer connections open than
    /// the limit. Counts it when it may.
    fn admit(&self, listener: ListenerId, source: IpAddr) -> bool {
        let Some(settings) = self.listeners.get(listener) else {
            return false;
        };
        if settings.unknown_sources == UnknownSources::Drop {
            let profile = self.profile.read().unwrap_or_else(|e| e.into_inner());
            if profile.trunk_for(listener, source).is_none() {
                self.stats.refused_unknown.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%source, "connection from a source that belongs to no trunk: closed");
                return false;
            }
        }
        let mut accepted = lock(&self.accepted);
        let open = accepted.entry((listener, source)).or_insert(0);
        let limit = settings.max_connections_per_source;
        if limit != 0 && *open >= limit {
            self.stats
                .refused_over_limit
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%source, open = *open, "too many connections from one source: closed");
            return false;
        }
        *open += 1;
        true
    }

    /// An accepted connection closed.
    fn release(&self, listener: ListenerId, source: IpAddr) {
        let mut accepted = lock(&self.accepted);
        if let Some(open) = accepted.get_mut(&(listener, source)) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                accepted.remove(&(listener, source));
            }
        }
    }

    /// Queues `bytes` on connection `id` (a keep-alive pong).
    fn reply_on(&self, id: ConnId, bytes: Bytes) {
        if let Some(tx) = lock(&self.conns).get(&id) {
            let _ = tx.send(bytes);
        }
    }

    /// Milliseconds since the hub started: connections' activity stamps.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Starts accepting TCP and TLS connections.
    pub fn start(self: &Arc<Hub>, streams: Vec<StreamListener>) {
        for listener in streams {
            self.runtime.spawn(stream_accept(self.clone(), listener));
        }
    }

    /// The shard that owns the call with Call-ID `call_id` (either leg's).
    pub fn shard_of_call(&self, call_id: &str) -> usize {
        shard_for_call_id(call_id.trim().as_bytes(), self.shards.len())
    }

    /// How many shards there are.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The shard that owns a message's call (by its Call-ID).
    fn shard_of(&self, msg: &Message) -> usize {
        msg.header(&HeaderName::CallId)
            .map_or(0, |id| shard_for_call_id(trim_bytes(id), self.shards.len()))
    }

    /// Queues a parsed (or malformed) message from a stream for the shard that owns it.
    fn dispatch(&self, parsed: Result<Message, ParseError>, peer: Peer) {
        self.route(parsed, peer, Instant::now(), usize::MAX);
    }

    /// Asks a lookup's consultation service for `shard`'s engine; the answer comes back on
    /// that shard's queue.
    pub fn consult(&self, request: crate::lookup::LookupRequest, shard: usize) {
        if let Some(queue) = self.shards.get(shard) {
            self.consultant.ask(request, queue.clone());
        }
    }

    /// A parsed (or malformed) message for shard `here`: returned when it is that shard's own,
    /// queued for the shard that owns it otherwise.
    pub fn route(
        &self,
        parsed: Result<Message, ParseError>,
        peer: Peer,
        received: Instant,
        here: usize,
    ) -> Option<ShardInput> {
        let (shard, input) = match parsed {
            Ok(msg) => (
                self.shard_of(&msg),
                ShardInput::Message(msg, peer, received),
            ),
            Err(err) => (
                err.partial.as_deref().map_or(0, |m| self.shard_of(m)),
                ShardInput::Malformed(err, peer),
            ),
        };
        if shard == here {
            return Some(input);
        }
        self.to_shard(shard, input);
        None
    }

    /// The profile new calls take.
    pub fn profile(&self) -> Arc<Profile> {
        self.profile
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Queues `input` for shard `shard`. Past four times the profile's `overload.queue`
    /// waiting, a new request (or one that cannot be parsed) is dropped: the queue stays
    /// bounded by the calls the shard has, whose messages always go.
    pub fn to_shard(&self, shard: usize, input: ShardInput) {
        let (Some(tx), Some(waiting)) = (self.shards.get(shard), self.waiting.get(shard)) else {
            return;
        };
        let droppable = match &input {
            ShardInput::Message(msg, ..) => msg.is_request() && !crate::admission::in_dialog(msg),
            ShardInput::Malformed(..) => true,
            _ => false,
        };
        if droppable {
            let limit = 4 * self.queue_limit.load(Ordering::Relaxed);
            if waiting.load(Ordering::Relaxed) > limit {
                self.stats.queue_dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if tx.send(input).is_ok() {
            waiting.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Shard `shard` took an input from its queue.
    pub fn took(&self, shard: usize) {
        if let Some(waiting) = self.waiting.get(shard) {
            let _ =
                waiting.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// What waits in shard `shard`'s queue.
    pub fn waiting(&self, shard: usize) -> usize {
        self.waiting
            .get(shard)
            .map_or(0, |waiting| waiting.load(Ordering::Relaxed))
    }

    /// Tells the shard that sent `bytes` that they could not be sent (its engine fails the
    /// transaction at once, RFC 3261 §18.4).
    fn report_failure(&self, peer: Peer, bytes: Bytes, error: String) {
        let shard = parse_message(&bytes, Framing::Datagram).map_or(0, |(m, _)| self.shard_of(&m));
        self.to_shard(
            shard,
            ShardInput::TransportError(Transmit { peer, bytes }, error),
        );
    }

    /// Sends a message over a stream connection: the one it names, the one open toward its
    /// address, or a new one. Returns at once; a failure comes back to the shard later.
    pub fn send_stream(self: &Arc<Hub>, mut peer: Peer, bytes: Bytes) {
        let conn = peer.conn.or_else(|| {
            lock(&self.outbound)
                .get(&(peer.listener, peer.addr))
                .copied()
        });
        if let Some(conn) = conn {
            if let Some(tx) = lock(&self.conns).get(&conn) {
                if tx.send(bytes.clone()).is_ok() {
                    return;
                }
            }
            if peer.conn.is_some() {
                // The connection the far end used is gone. A response goes to the top Via's
                // sent-by port at the address it came from (RFC 3261 §18.2.2) over a new
                // connection; a request fails at once.
                match response_destination(&bytes, peer.addr) {
                    Some(addr) => {
                        peer.addr = addr;
                        peer.conn = None;
                        let open = lock(&self.outbound).get(&(peer.listener, addr)).copied();
                        let tx = open.and_then(|conn| lock(&self.conns).get(&conn).cloned());
                        if tx.is_some_and(|tx| tx.send(bytes.clone()).is_ok()) {
                            return;
                        }
                    }
                    None => {
                        let error = "the connection it was to go on is closed".to_string();
                        self.report_failure(peer, bytes, error);
                        return;
                    }
                }
            }
        }
        // Open a connection; queue the message until it is up.
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(bytes);
        lock(&self.conns).insert(id, tx);
        lock(&self.outbound).insert((peer.listener, peer.addr), id);
        let hub = self.clone();
        let dscp = self
            .listeners
            .get(peer.listener)
            .map_or(0, |listener| listener.dscp);
        self.runtime.spawn(async move {
            let connected = match tcp_socket(peer.addr, dscp) {
                Ok(socket) => socket.connect(peer.addr).await,
                Err(err) => Err(err),
            };
            let conn = Connection {
                id,
                listener: peer.listener,
                addr: peer.addr,
                transport: peer.transport,
                accepted: false,
            };
            let failed = match connected {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    if peer.transport != Transport::Tls {
                        let (reader, writer) = stream.into_split();
                        spawn_stream(hub, conn, reader, writer, rx);
                        return;
                    }
                    match hub.tls_connect(stream, peer).await {
                        Ok(stream) => {
                            let (reader, writer) = tokio::io::split(stream);
                            spawn_stream(hub, conn, reader, writer, rx);
                            return;
                        }
                        Err(err) => err,
                    }
                }
                Err(err) => format!("TCP connect failed: {err}"),
            };
            hub.forget(id, peer.listener, peer.addr);
            let mut rx = rx;
            rx.close();
            while let Ok(bytes) = rx.try_recv() {
                hub.report_failure(peer, bytes, failed.clone());
            }
        });
    }

    /// The TLS handshake of a connection Bridgehead opened toward a TLS trunk's peer; the
    /// error in words when it fails (logged and counted).
    async fn tls_connect(
        &self,
        stream: tokio::net::TcpStream,
        peer: Peer,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let Some((connector, name)) = self.tls().connector(peer.listener, peer.addr) else {
            let error = format!("no TLS trunk has {} as a peer", peer.addr);
            self.tls_failed(peer.addr, true, HandshakeFailure::Other, &error);
            return Err(error);
        };
        let failure =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream)).await {
                Ok(Ok(stream)) => {
                    self.stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
                    return Ok(stream);
                }
                Ok(Err(err)) => (HandshakeFailure::of(&err), err.to_string()),
                Err(_) => (HandshakeFailure::Timeout, "no answer".to_string()),
            };
        self.tls_failed(peer.addr, true, failure.0, &failure.1);
        Err(format!(
            "TLS handshake failed: {}: {}",
            failure.0.name(),
            failure.1
        ))
    }

    /// Closes the connection Bridgehead keeps toward `peer` (a peer that answered 503 to an
    /// INVITE, as Microsoft asks): what is queued on it still goes, then it is shut down.
    pub fn close_toward(&self, peer: Peer) {
        let open = peer.conn.or_else(|| {
            lock(&self.outbound)
                .get(&(peer.listener, peer.addr))
                .copied()
        });
        if let Some(id) = open {
            tracing::info!(peer = %peer.addr, "closing the connection to a peer that answered 503");
            self.forget(id, peer.listener, peer.addr);
        }
    }

    fn forget(&self, id: ConnId, listener: ListenerId, addr: SocketAddr) {
        lock(&self.conns).remove(&id);
        let mut outbound = lock(&self.outbound);
        if outbound.get(&(listener, addr)) == Some(&id) {
            outbound.remove(&(listener, addr));
        }
    }
}

fn trim_bytes(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &bytes[start..end.max(start)]
}

/// A bound stream listening socket: which listener, TCP or TLS.
pub struct StreamListener {
    listener: ListenerId,
    transport: Transport,
    socket: TcpListener,
}

async fn stream_accept(hub: Arc<Hub>, stream_listener: StreamListener) {
    let StreamListener {
        listener,
        transport,
        socket,
    } = stream_listener;
    // Out of descriptors, accept fails until one closes: say so once a minute, not 20 times
    // a second.
    let mut warned: Option<Instant> = None;
    loop {
        let (stream, addr) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                if warned.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!("TCP accept failed: {err} (retrying every 50 ms)");
                    warned = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !hub.admit(listener, addr.ip()) {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let id = hub.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn = Connection {
            id,
            listener,
            addr,
            transport,
            accepted: true,
        };
        if transport != Transport::Tls {
            let (tx, rx) = mpsc::unbounded_channel();
            lock(&hub.conns).insert(id, tx);
            let (reader, writer) = stream.into_split();
            spawn_stream(hub.clone(), conn, reader, writer, rx);
            continue;
        }
        let Some(acceptor) = hub.tls().acceptor(listener) else {
            hub.release(listener, addr.ip());
            continue;
        };
        // The handshake runs on its own: a slow client holds up no one.
        let hub = hub.clone();
        tokio::spawn(async move {
            let failure =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        hub.stats.tls_handshakes.fetch_add(1, Ordering::Relaxed);
                        let (tx, rx) = mpsc::unbounded_channel();
                        lock(&hub.conns).insert(id, tx);
                        let (reader, writer) = tokio::io::split(stream);
                        spawn_stream(hub, conn, reader, writer, rx);
                        return;
                    }
                    Ok(Err(err)) => (HandshakeFailure::of(&err), err.to_string()),
                    Err(_) => (HandshakeFailure::Timeout, "no handshake".to_string()),
                };
            hub.tls_failed(addr, false, failure.0, &failure.1);
            hub.release(listener, addr.ip());
        });
    }
}

/// A stream connection: which, on which listener, to or from where, and whether it was
/// accepted (counted against its source's limit) or opened by Bridgehead.
#[derive(Clone, Copy, Debug)]
pub struct Connection {
    pub id: ConnId,
    pub listener: ListenerId,
    pub addr: SocketAddr,
    /// TCP or TLS.
    pub transport: Transport,
    pub accepted: bool,
}

/// Runs a stream connection: frames and dispatches what it reads, writes what is queued, and
/// closes it when it goes `idle_timeout` without a complete message either way.
pub fn spawn_stream<R, W>(
    hub: Arc<Hub>,
    conn: Connection,
    mut reader: R,
    mut writer: W,
    mut outgoing: mpsc::UnboundedReceiver<Bytes>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Connection {
        id,
        listener,
        addr,
        transport,
        ..
    } = conn;
    let peer = Peer {
        listener,
        transport,
        addr,
        conn: Some(id),
    };
    let idle = hub
        .listeners
        .get(listener)
        .map_or(0, |l| u64::from(l.idle_timeout) * 1000);
    // Pings on the connections Bridgehead opened, when the listener asks for them.
    let ping_every = hub
        .listeners
        .get(listener)
        .filter(|_| !conn.accepted)
        .map_or(0, |l| u64::from(l.ping_interval) * 1000);
    // Whether a message ever went out on the connection: a connection in use may stay quiet.
    let sent_any = Arc::new(AtomicBool::new(false));
    let writer_hub = hub.clone();
    let sent = sent_any.clone();
    tokio::spawn(async move {
        while let Some(bytes) = outgoing.recv().await {
            if let Err(err) = writer.write_all(&bytes).await {
                // What could not be written, and what waits behind it, fails now.
                writer_hub.forget(id, listener, addr);
                outgoing.close();
                let error = format!("TCP write failed: {err}");
                writer_hub.report_failure(peer, bytes, error.clone());
                while let Ok(bytes) = outgoing.try_recv() {
                    writer_hub.report_failure(peer, bytes, error.clone());
                }
                break;
            }
            sent.store(true, Ordering::Relaxed);
        }
        // Nothing more will be queued (the connection was closed on purpose, or is gone):
        // say so to the far end (FIN, or TLS close_notify then FIN).
        let _ = writer.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(8192);
        let opened = hub.now_ms();
        // A whole message (or keep-alive) came in.
        let mut received_any = false;
        // When the message now in `buf` began to arrive.
        let mut partial_since: Option<u64> = None;
        // When a byte last came, and the ping still waiting for its pong.
        let mut heard = opened;
        let mut ping_sent: Option<u64> = None;
        'read: loop {
            loop {
                // Keep-alives may stand before any message, also after one in the same read.
                received_any |= skip_keepalives(&mut buf, |pong| hub.reply_on(id, pong));
                match frame_stream(&buf) {
                    Ok(Some(len)) => {
                        received_any = true;
                        let bytes = buf.split_to(len).freeze();
                        if let Some(capture) = &hub.capture {
                            // A copy: the frozen bytes share the connection's whole buffer.
                            let copy = Bytes::copy_from_slice(&bytes);
                            capture.incoming(copy, &peer, Instant::now());
                        }
                        match parse_message(&bytes, Framing::Stream) {
                            Ok((msg, _)) => hub.dispatch(Ok(msg), peer),
                            Err(err) if err.fault == crate::sip::Fault::Empty => {}
                            Err(err) => hub.dispatch(Err(err), peer),
                        }
                    }
                    Ok(None) => break,
                    Err(fault) => {
                        tracing::info!(peer = %addr, %fault, "closing a stream that cannot be framed");
                        break 'read;
                    }
                }
            }
            if buf.is_empty() {
                partial_since = None;
            } else {
                partial_since.get_or_insert_with(|| hub.now_ms());
            }
            // A connection in use may be quiet for as long as a call rings or talks; one that
            // holds half a message, or never carried one, gets `idle` to finish it.
            let in_use = received_any || sent_any.load(Ordering::Relaxed);
            let idle_at = match partial_since {
                Some(since) => Some(since),
                None if !in_use => Some(opened),
                None => None,
            }
            .filter(|_| idle != 0)
            .map(|since| since + idle);
            let ping_at = (ping_every != 0).then(|| match ping_sent {
                Some(sent) => sent + PONG_WAIT_MS,
                None => heard + ping_every,
            });
            let deadline = match (idle_at, ping_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let read = match deadline {
                None => reader.read_buf(&mut buf).await,
                Some(at) => {
                    let at = hub.started + Duration::from_millis(at);
                    match tokio::time::timeout_at(at.into(), reader.read_buf(&mut buf)).await {
                        Ok(read) => read,
                        Err(_) if ping_at.is_some_and(|p| hub.now_ms() >= p) => {
                            if !lock(&hub.conns).contains_key(&id) {
                                // Bridgehead closed it (a 503): no ping, no verdict.
                                break;
                            }
                            if ping_sent.is_some() {
                                let dead =
                                    hub.stats.dead_connections.fetch_add(1, Ordering::Relaxed) + 1;
                                tracing::warn!(peer = %addr, dead, "no pong to a CRLF ping within 10 s: connection dead, closed");
                                break;
                            }
                            hub.reply_on(id, Bytes::from_static(PING));
                            ping_sent = Some(hub.now_ms());
                            continue;
                        }
                        // Something went out meanwhile: the connection is in use after all.
                        Err(_) if buf.is_empty() && sent_any.load(Ordering::Relaxed) => continue,
                        Err(_) => {
                            hub.stats.closed_idle.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(peer = %addr, pending = buf.len(), "closing a stalled connection");
                            break;
                        }
                    }
                }
            };
            match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    // Any byte, a pong or a message, says the far end is there.
                    heard = hub.now_ms();
                    ping_sent = None;
                }
            }
        }
        hub.forget(id, listener, addr);
        if conn.accepted {
            hub.release(listener, addr.ip());
        }
    });
}

/// Where a response goes when the connection its request came on is closed (RFC 3261
/// §18.2.2): the `received` address (else the one it came from) at the top Via's sent-by port
/// (5060 when it names none). None for a request or an unreadable Via.
fn response_destination(bytes: &Bytes, came_from: SocketAddr) -> Option<SocketAddr> {
    let (msg, _) = parse_message(bytes, Framing::Stream).ok()?;
    if msg.is_request() {
        return None;
    }
    let top = msg.header_str(&HeaderName::Via)?;
    let via = Via::parse(split_list(top).next()?).ok()?;
    let ip = crate::sip::header::param(via.params, "received")
        .and_then(|r| r.parse().ok())
        .unwrap_or(came_from.ip());
    Some(SocketAddr::new(ip, via.port.unwrap_or(5060)))
}

/// Drops the CR/LF keep-alives at the front of a stream's buffer (RFC 5626 §4.4.1): a double
/// CRLF ping is answered with a CRLF pong through `pong`. Returns true when it dropped any.
fn skip_keepalives(buf: &mut BytesMut, pong: impl FnOnce(Bytes)) -> bool {
    let blank = buf
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    if blank == 0 {
        return false;
    }
    if buf[..blank].windows(4).any(|w| w == b"\r\n\r\n") {
        pong(Bytes::from_static(b"\r\n"));
    }
    let _ = buf.split_to(blank);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_whose_connection_closed_goes_to_the_via_sent_by() {
        let came_from: SocketAddr = "192.0.2.1:40123".parse().expect("addr");
        let response = |via: &str| {
            Bytes::from(format!(
                "SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            ))
        };
        assert_eq!(
            response_destination(
                &response("SIP/2.0/TCP pc.example:5070;branch=z9hG4bK1"),
                came_from
            ),
            "192.0.2.1:5070".parse().ok()
        );
        assert_eq!(
            response_destination(
                &response("SIP/2.0/TCP pc.example;branch=z9hG4bK1;received=198.51.100.4"),
                came_from
            ),
            "198.51.100.4:5060".parse().ok()
        );
        let request = Bytes::from_static(b"BYE sip:a@h SIP/2.0\r\nVia: SIP/2.0/TCP h:5060;branch=z9hG4bK2\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: c\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(response_destination(&request, came_from), None);
    }

    #[test]
    fn keepalives_are_skipped_and_a_ping_gets_a_pong() {
        let mut pongs = 0;
        let mut buf = BytesMut::from(&b"\r\n\r\nOPTIONS sip:a SIP/2.0\r\n"[..]);
        assert!(skip_keepalives(&mut buf, |p| {
            assert_eq!(&p[..], b"\r\n");
            pongs += 1;
        }));
        assert_eq!(&buf[..], b"OPTIONS sip:a SIP/2.0\r\n");
        assert_eq!(pongs, 1);
        assert!(!skip_keepalives(&mut buf, |_| pongs += 1));
        let mut lone = BytesMut::from(&b"\r\n"[..]);
        assert!(skip_keepalives(&mut lone, |_| pongs += 1));
        assert!(lone.is_empty());
        assert_eq!(pongs, 1, "a lone CRLF is no ping");
    }

    #[tokio::test]
    async fn sockets_carry_the_dscp() {
        let udp = udp::udp_socket("127.0.0.1:0".parse().expect("addr"), 24, false).expect("udp");
        assert_eq!(socket2::SockRef::from(&udp).tos_v4().ok(), Some(96), "CS3");
        let tcp = tcp_socket("127.0.0.1:5060".parse().expect("addr"), 46).expect("tcp");
        assert_eq!(tcp.tos_v4().ok(), Some(184), "EF");
        let v6 = tcp_socket("[::1]:5060".parse().expect("addr"), 26);
        if let Ok(v6) = v6 {
            assert_eq!(v6.tclass_v6().ok(), Some(104), "AF31");
        }
    }
}
