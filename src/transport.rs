//! UDP and TCP transports on tokio. Receivers parse each message and hand it to the shard its
//! Call-ID hashes to (so all messages of a call are handled, in order, by one engine); senders
//! take the engine's [`Transmit`]s. TLS plugs in as another stream transport beside TCP: a
//! stream only needs [`spawn_stream`] with its reader and writer halves.

use crate::config::{Listener, ListenerId, Profile, Transport, UnknownSources};
use crate::media::relay::mark_udp;
use crate::shared::shard_for_call_id;
use crate::shared::{tos, ConnId, Peer, Transmit};
use crate::sip::header::{split_list, Via};
use crate::sip::{frame_stream, parse_message, Framing, HeaderName, Message, ParseError};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::mpsc;

/// What a shard receives from the transports.
#[derive(Debug)]
pub enum ShardInput {
    Message(Message, Peer),
    Malformed(ParseError, Peer),
    /// A new rule-set version for new calls.
    Reload(Arc<crate::script::RuleSet>),
    /// A media event from the relay, for a call by its relay id.
    Media(crate::media::MediaCallId, crate::media::MediaEvent),
    /// A message the transport could not send, and why.
    TransportError(Transmit, String),
}

/// The bound sockets and open connections, shared by receivers and shards.
pub struct Hub {
    udp: Vec<Option<Arc<UdpSocket>>>,
    /// The listeners as the process started with them (their settings need a restart).
    listeners: Vec<Listener>,
    /// The profile new calls take: which sources are trunk peers.
    profile: RwLock<Arc<Profile>>,
    conns: Mutex<HashMap<ConnId, mpsc::UnboundedSender<Bytes>>>,
    outbound: Mutex<HashMap<(ListenerId, SocketAddr), ConnId>>,
    /// Connections accepted and open, by listener and source IP.
    accepted: Mutex<HashMap<(ListenerId, IpAddr), u32>>,
    next_conn: AtomicU64,
    shards: Vec<mpsc::UnboundedSender<ShardInput>>,
    /// What the transports refused or closed.
    pub stats: TransportStats,
    /// The reference for connections' last-activity stamps.
    started: Instant,
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
}

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
    /// Binds every listener of the profile; fails before anything runs if one cannot be bound.
    pub async fn bind(
        profile: &Profile,
        shards: Vec<mpsc::UnboundedSender<ShardInput>>,
    ) -> anyhow::Result<(Arc<Hub>, Vec<(ListenerId, TcpListener)>)> {
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for (id, listener) in profile.listeners.iter().enumerate() {
            let socket = if listener.transports.contains(&Transport::Udp) {
                let socket = UdpSocket::bind(listener.address).await.map_err(|err| {
                    anyhow::anyhow!(
                        "listener '{}': cannot bind UDP {}: {err}",
                        listener.name,
                        listener.address
                    )
                })?;
                if let Err(err) = mark_udp(&socket, listener.dscp) {
                    tracing::warn!(listener = %listener.name, "cannot set DSCP: {err}");
                }
                Some(Arc::new(socket))
            } else {
                None
            };
            udp.push(socket);
            if listener.transports.contains(&Transport::Tcp) {
                // Accepted connections inherit the listening socket's DSCP.
                let bound = tcp_socket(listener.address, listener.dscp)
                    .and_then(|socket| {
                        socket.set_reuseaddr(true)?;
                        socket.bind(listener.address)?;
                        socket.listen(1024)
                    })
                    .map_err(|err| {
                        anyhow::anyhow!(
                            "listener '{}': cannot bind TCP {}: {err}",
                            listener.name,
                            listener.address
                        )
                    })?;
                tcp.push((id, bound));
            }
        }
        let hub = Arc::new(Hub {
            listeners: profile.listeners.clone(),
            profile: RwLock::new(Arc::new(profile.clone())),
            udp,
            conns: Mutex::new(HashMap::new()),
            outbound: Mutex::new(HashMap::new()),
            accepted: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            shards,
            stats: TransportStats::default(),
            started: Instant::now(),
        });
        Ok((hub, tcp))
    }

    /// Makes `profile` the one whose trunk peers connections are checked against.
    pub fn set_profile(&self, profile: Arc<Profile>) {
        *self.profile.write().unwrap_or_else(|e| e.into_inner()) = profile;
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

    /// Starts the receive loops.
    pub fn start(self: &Arc<Hub>, tcp: Vec<(ListenerId, TcpListener)>) {
        for (id, socket) in self.udp.iter().enumerate() {
            if let Some(socket) = socket {
                tokio::spawn(udp_receive(self.clone(), id, socket.clone()));
            }
        }
        for (id, listener) in tcp {
            tokio::spawn(tcp_accept(self.clone(), id, listener));
        }
    }

    /// The shard that owns a message's call (by its Call-ID).
    fn shard_of(&self, msg: &Message) -> usize {
        msg.header(&HeaderName::CallId)
            .map_or(0, |id| shard_for_call_id(trim_bytes(id), self.shards.len()))
    }

    /// Hands a parsed (or malformed) message to its shard.
    fn dispatch(&self, parsed: Result<Message, ParseError>, peer: Peer) {
        let (shard, input) = match parsed {
            Ok(msg) => (self.shard_of(&msg), ShardInput::Message(msg, peer)),
            Err(err) => (
                err.partial.as_deref().map_or(0, |m| self.shard_of(m)),
                ShardInput::Malformed(err, peer),
            ),
        };
        if let Some(tx) = self.shards.get(shard) {
            let _ = tx.send(input);
        }
    }

    /// Tells the shard that sent `bytes` that they could not be sent (its engine fails the
    /// transaction at once, RFC 3261 §18.4).
    fn report_failure(&self, peer: Peer, bytes: Bytes, error: String) {
        let shard = parse_message(&bytes, Framing::Datagram).map_or(0, |(m, _)| self.shard_of(&m));
        if let Some(tx) = self.shards.get(shard) {
            let _ = tx.send(ShardInput::TransportError(Transmit { peer, bytes }, error));
        }
    }

    /// Sends what an engine produced.
    pub async fn send(self: &Arc<Hub>, transmit: Transmit) {
        let Transmit { peer, bytes } = transmit;
        match peer.transport {
            Transport::Udp => {
                let Some(Some(socket)) = self.udp.get(peer.listener) else {
                    return;
                };
                if let Err(err) = socket.send_to(&bytes, peer.addr).await {
                    let error = format!("UDP send of {} bytes failed: {err}", bytes.len());
                    self.report_failure(peer, bytes, error);
                }
            }
            Transport::Tcp => self.send_stream(peer, bytes),
        }
    }

    fn send_stream(self: &Arc<Hub>, mut peer: Peer, bytes: Bytes) {
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
        tokio::spawn(async move {
            let connected = match tcp_socket(peer.addr, dscp) {
                Ok(socket) => socket.connect(peer.addr).await,
                Err(err) => Err(err),
            };
            match connected {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    let (reader, writer) = stream.into_split();
                    let conn = Connection {
                        id,
                        listener: peer.listener,
                        addr: peer.addr,
                        accepted: false,
                    };
                    spawn_stream(hub, conn, reader, writer, rx);
                }
                Err(err) => {
                    hub.forget(id, peer.listener, peer.addr);
                    let mut rx = rx;
                    rx.close();
                    while let Ok(bytes) = rx.try_recv() {
                        hub.report_failure(peer, bytes, format!("TCP connect failed: {err}"));
                    }
                }
            }
        });
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

async fn udp_receive(hub: Arc<Hub>, listener: ListenerId, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, addr) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                // ICMP port unreachable and friends surface here on some systems: keep going.
                tracing::debug!("UDP receive error: {err}");
                continue;
            }
        };
        let bytes = Bytes::copy_from_slice(&buf[..len]);
        if bytes.iter().all(|b| *b == b'\r' || *b == b'\n') {
            continue; // keep-alive (RFC 5626 CRLF ping)
        }
        let peer = Peer {
            listener,
            transport: Transport::Udp,
            addr,
            conn: None,
        };
        hub.dispatch(
            parse_message(&bytes, Framing::Datagram).map(|(m, _)| m),
            peer,
        );
    }
}

async fn tcp_accept(hub: Arc<Hub>, listener: ListenerId, socket: TcpListener) {
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
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&hub.conns).insert(id, tx);
        let (reader, writer) = stream.into_split();
        let conn = Connection {
            id,
            listener,
            addr,
            accepted: true,
        };
        spawn_stream(hub.clone(), conn, reader, writer, rx);
    }
}

/// A stream connection: which, on which listener, to or from where, and whether it was
/// accepted (counted against its source's limit) or opened by Bridgehead.
#[derive(Clone, Copy, Debug)]
pub struct Connection {
    pub id: ConnId,
    pub listener: ListenerId,
    pub addr: SocketAddr,
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
        id, listener, addr, ..
    } = conn;
    let peer = Peer {
        listener,
        transport: Transport::Tcp,
        addr,
        conn: Some(id),
    };
    let idle = hub
        .listeners
        .get(listener)
        .map_or(0, |l| u64::from(l.idle_timeout) * 1000);
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
    });
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(8192);
        let opened = hub.now_ms();
        // A whole message (or keep-alive) came in.
        let mut received_any = false;
        // When the message now in `buf` began to arrive.
        let mut partial_since: Option<u64> = None;
        'read: loop {
            loop {
                // Keep-alives may stand before any message, also after one in the same read.
                received_any |= skip_keepalives(&mut buf, |pong| hub.reply_on(id, pong));
                match frame_stream(&buf) {
                    Ok(Some(len)) => {
                        received_any = true;
                        let bytes = buf.split_to(len).freeze();
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
            let deadline = match partial_since {
                Some(since) => Some(since),
                None if !in_use => Some(opened),
                None => None,
            }
            .filter(|_| idle != 0)
            .map(|since| hub.started + Duration::from_millis(since + idle));
            let read = match deadline {
                None => reader.read_buf(&mut buf).await,
                Some(at) => {
                    match tokio::time::timeout_at(at.into(), reader.read_buf(&mut buf)).await {
                        Ok(read) => read,
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
                Ok(_) => {}
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
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
        mark_udp(&udp, 24).expect("mark");
        assert_eq!(udp.tos_v4().ok(), Some(96), "CS3");
        let tcp = tcp_socket("127.0.0.1:5060".parse().expect("addr"), 46).expect("tcp");
        assert_eq!(tcp.tos_v4().ok(), Some(184), "EF");
        let v6 = tcp_socket("[::1]:5060".parse().expect("addr"), 26);
        if let Ok(v6) = v6 {
            assert_eq!(v6.tclass_v6().ok(), Some(104), "AF31");
        }
    }
}
