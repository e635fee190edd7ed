//! SIP capture: every SIP message in and out, sent as HEP3 to a collector (Homer, sngrep) and
//! kept for the dashboard's ladder diagrams of recent calls.
//!
//! The transports and shards hand each message to [`Capture`] (a copy of its bytes on a
//! bounded queue, nothing else on their path: a full queue drops the capture, never the
//! message); a `capture` thread ties the messages of a call together (the correlation id is
//! the A-leg Call-ID: the engine tells it each B-leg Call-ID it makes, as a [`Link`]), encodes
//! and sends them, and records the ladders.

pub mod hep;

use crate::call::record::Link;
use crate::config::{CaptureConfig, Listener, Transport};
use crate::shared::{endpoint_label, rfc3339, Peer, Transmit};
use bytes::Bytes;
use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Messages, and bytes of them, waiting for the capture thread at most; past either,
/// captures are dropped (counted).
const QUEUE: usize = 65_536;
const QUEUE_BYTES: usize = 64 << 20;

/// The longest start line a ladder keeps (bytes).
const LINE: usize = 256;

/// How long the correlation of an ended call's B-leg is kept (its retransmissions and late
/// responses: Timer F, 64 × T1).
const LINGER: Duration = Duration::from_secs(32);

/// The capture thread's pause after each batch, and the longest it waits on an empty queue
/// (ended calls are forgotten then).
const POLL: Duration = Duration::from_millis(5);
const IDLE: Duration = Duration::from_secs(1);

/// New ladders start at most this often (20 per second).
const LADDER_EVERY: Duration = Duration::from_millis(50);

/// Messages kept per recent call at most.
const LADDER_STEPS: usize = 200;

/// Which way a message went, seen from Bridgehead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

struct Captured {
    direction: Direction,
    peer: Peer,
    at: SystemTime,
    bytes: Bytes,
}

/// What capture did, for the metrics.
#[derive(Debug, Default)]
pub struct CaptureStats {
    /// Messages taken for capture, and those dropped because the queue was full.
    pub captured: AtomicU64,
    pub dropped: AtomicU64,
    /// HEP packets sent to the collector, and those the socket refused.
    pub hep_sent: AtomicU64,
    pub hep_failed: AtomicU64,
}

/// Where the transports and shards hand what they capture: messages on a bounded queue (a
/// full one drops the capture, never blocks), the links on an unbounded one (a couple per
/// call: the shards never wait, and none is lost).
pub struct Capture {
    queue: SyncSender<Captured>,
    links: Sender<Link>,
    /// Bytes of the messages waiting.
    queued_bytes: Arc<AtomicUsize>,
    pub stats: Arc<CaptureStats>,
}

/// A listener as capture sees it: its addresses, and whether HEP takes its messages.
struct CapturedListener {
    listener: Listener,
    /// Bridgehead's IP in HEP: the listener's, or its advertised one when it listens on all.
    ip: IpAddr,
    hep: bool,
}

impl Capture {
    /// Starts the capture thread: HEP to the collector of `config` (when set) for the
    /// listeners it names (all when it names none), and the ladders of the last calls into
    /// `recent`.
    pub fn start(
        config: Option<&CaptureConfig>,
        listeners: &[Listener],
        recent: Arc<Recent>,
    ) -> std::io::Result<Arc<Capture>> {
        let listeners = listeners
            .iter()
            .map(|listener| CapturedListener {
                ip: match listener.address.ip() {
                    ip if ip.is_unspecified() => listener.advertise.parse().unwrap_or(ip),
                    ip => ip,
                },
                listener: listener.clone(),
                hep: config.is_some_and(|config| {
                    config.hep.listeners.is_empty() || config.hep.listeners.contains(&listener.name)
                }),
            })
            .collect();
        // The socket is bound here (a start fails when it cannot be); its sender, which holds
        // raw system-call headers, is made on the capture thread.
        let hep = config
            .map(|config| -> std::io::Result<(UdpSocket, hep::Agent)> {
                let local: SocketAddr = if config.hep.address.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket = UdpSocket::bind(local)?;
                socket.connect(config.hep.address)?;
                let agent = hep::Agent {
                    id: config.hep.agent_id,
                    password: config.hep.password.clone(),
                };
                Ok((socket, agent))
            })
            .transpose()?;
        let (queue, messages) = mpsc::sync_channel(QUEUE);
        let (links, linked) = mpsc::channel();
        let stats = Arc::new(CaptureStats::default());
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let (worker_bytes, worker_stats) = (queued_bytes.clone(), stats.clone());
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                let mut worker = Worker {
                    queued_bytes: worker_bytes,
                    listeners,
                    hep: hep.map(|(socket, agent)| HepSender::new(socket, agent)),
                    recent,
                    stats: worker_stats,
                    b_legs: HashMap::new(),
                    legs_of: HashMap::new(),
                    ended: VecDeque::new(),
                };
                worker.run(&messages, &linked);
            })?;
        Ok(Arc::new(Capture {
            queue,
            links,
            queued_bytes,
            stats,
        }))
    }

    fn push(&self, captured: Captured) {
        let size = captured.bytes.len();
        if self.queued_bytes.fetch_add(size, Ordering::Relaxed) + size > QUEUE_BYTES {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.queue.try_send(captured) {
            Ok(()) => {
                self.stats.captured.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A message that arrived from `peer` at `received`.
    pub fn incoming(&self, bytes: Bytes, peer: &Peer, received: Instant) {
        let now = SystemTime::now();
        let at = now.checked_sub(received.elapsed()).unwrap_or(now);
        self.push(Captured {
            direction: Direction::In,
            peer: *peer,
            at,
            bytes,
        });
    }

    /// A message Bridgehead sends now.
    pub fn outgoing(&self, transmit: &Transmit) {
        self.push(Captured {
            direction: Direction::Out,
            peer: transmit.peer,
            at: SystemTime::now(),
            bytes: transmit.bytes.clone(),
        });
    }

    /// A B-leg Call-ID made for a call, or a call that ended: to be handed over before the
    /// messages it ties to their call.
    pub fn link(&self, link: Link) {
        let _ = self.links.send(link);
    }
}

/// HEP packets sent in one `sendmmsg` at most.
const HEP_BATCH: usize = 64;

/// HEP packets encoded and sent in batches: one system call for up to [`HEP_BATCH`] (a send
/// per packet, each waking the collector, cost more than the rest of capture together).
struct HepSender {
    socket: UdpSocket,
    agent: hep::Agent,
    /// Encoded packets; the first `queued` wait to be sent.
    packets: Vec<Vec<u8>>,
    queued: usize,
    headers: MultiHeaders<SockaddrStorage>,
}

impl HepSender {
    fn new(socket: UdpSocket, agent: hep::Agent) -> HepSender {
        HepSender {
            socket,
            agent,
            packets: (0..HEP_BATCH).map(|_| Vec::with_capacity(2048)).collect(),
            queued: 0,
            headers: MultiHeaders::preallocate(HEP_BATCH, None),
        }
    }

    /// Encodes `packet` for the next batch; sends the batch when it is full.
    fn queue(&mut self, packet: &hep::Packet<'_>, stats: &CaptureStats) {
        hep::encode(packet, &self.agent, &mut self.packets[self.queued]);
        self.queued += 1;
        if self.queued == HEP_BATCH {
            self.flush(stats);
        }
    }

    /// Sends what is queued.
    fn flush(&mut self, stats: &CaptureStats) {
        let HepSender {
            socket,
            packets,
            queued,
            headers,
            ..
        } = self;
        let mut start = 0;
        while start < *queued {
            let slices: Vec<[IoSlice<'_>; 1]> = packets[start..*queued]
                .iter()
                .map(|packet| [IoSlice::new(packet)])
                .collect();
            let to: Vec<Option<SockaddrStorage>> = vec![None; slices.len()];
            let no_control: [ControlMessage<'_>; 0] = [];
            let flags = MsgFlags::empty();
            let sent = sendmmsg(socket.as_raw_fd(), headers, &slices, &to, no_control, flags)
                .map_or(0, Iterator::count);
            match sent {
                1.. => {
                    stats.hep_sent.fetch_add(sent as u64, Ordering::Relaxed);
                    start += sent;
                }
                0 => {
                    let failed = *queued - start;
                    stats.hep_failed.fetch_add(failed as u64, Ordering::Relaxed);
                    start = *queued;
                }
            }
        }
        *queued = 0;
    }
}

struct Worker {
    queued_bytes: Arc<AtomicUsize>,
    listeners: Vec<CapturedListener>,
    hep: Option<HepSender>,
    recent: Arc<Recent>,
    stats: Arc<CaptureStats>,
    /// The call (A-leg Call-ID) of each B-leg Call-ID, and the B-legs of each call.
    b_legs: HashMap<String, String>,
    legs_of: HashMap<String, Vec<String>>,
    /// The B-legs of calls that ended, with when they are forgotten.
    ended: VecDeque<(Instant, Vec<String>)>,
}

impl Worker {
    /// Waits for a message, takes it and whatever queued behind it, sends the batch, then
    /// pauses for [`POLL`] so the next batch gathers: while messages come, the thread is
    /// mostly not waiting on the queue, so a shard's send wakes no one (a wake-up per
    /// message cost more than the capture itself).
    fn run(&mut self, messages: &Receiver<Captured>, links: &Receiver<Link>) {
        loop {
            let mut next = match messages.recv_timeout(IDLE) {
                Ok(captured) => Some(captured),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            loop {
                // A message's links were handed over before it: take them all first.
                while let Ok(link) = links.try_recv() {
                    self.link(link);
                }
                let Some(captured) = next.take() else {
                    break;
                };
                self.take(&captured);
                next = messages.try_recv().ok();
            }
            if let Some(hep) = self.hep.as_mut() {
                hep.flush(&self.stats);
            }
            self.forget_ended(Instant::now());
            std::thread::sleep(POLL);
        }
    }

    fn take(&mut self, captured: &Captured) {
        self.queued_bytes
            .fetch_sub(captured.bytes.len(), Ordering::Relaxed);
        self.message(captured);
    }

    fn link(&mut self, link: Link) {
        match link {
            Link::Leg { call, b_call_id } => {
                self.legs_of
                    .entry(call.clone())
                    .or_default()
                    .push(b_call_id.clone());
                self.b_legs.insert(b_call_id, call);
            }
            Link::Ended { call } => {
                // The B-legs it had so far: a caller that reuses the Call-ID (after a 401 or
                // a 3xx) starts a new list.
                let legs = self.legs_of.remove(&call).unwrap_or_default();
                self.ended.push_back((Instant::now() + LINGER, legs));
            }
        }
    }

    fn forget_ended(&mut self, now: Instant) {
        while self.ended.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, legs)) = self.ended.pop_front() {
                for b in legs {
                    self.b_legs.remove(&b);
                }
            }
        }
    }

    fn message(&mut self, captured: &Captured) {
        let Captured {
            direction,
            peer,
            at,
            bytes,
        } = captured;
        let (direction, at) = (*direction, *at);
        let Some(listener) = self.listeners.get(peer.listener) else {
            return;
        };
        let local = SocketAddr::new(listener.ip, listener.listener.port(peer.transport));
        let Some(glance) = Glance::of(bytes) else {
            return;
        };
        let correlation = self
            .b_legs
            .get(glance.call_id)
            .map_or(glance.call_id, String::as_str);
        let (source, destination) = match direction {
            Direction::In => (peer.addr, local),
            Direction::Out => (local, peer.addr),
        };
        if listener.hep {
            if let Some(hep) = self.hep.as_mut() {
                let packet = hep::Packet {
                    source,
                    destination,
                    stream: peer.transport.is_reliable(),
                    at,
                    kind: hep::Payload::Sip,
                    payload: bytes,
                    correlation: Some(correlation.as_bytes()),
                };
                hep.queue(&packet, &self.stats);
            }
        }
        if !self.recent.enabled() {
            return;
        }
        let starts_call = direction == Direction::In && glance.new_invite;
        let line = &glance.start[..glance.start.len().min(LINE)];
        let step = LadderStep {
            t_ms: 0.0,
            dir: match direction {
                Direction::In => "in",
                Direction::Out => "out",
            },
            local: Endpoint(peer.transport, local),
            remote: Endpoint(peer.transport, peer.addr),
            line: bytes.slice_ref(line),
        };
        self.recent.record(correlation, starts_call, at, step);
    }
}

/// What capture reads of a message: a scan of its header lines, not a parse (it runs on
/// every message, and a full parse was most of its cost).
struct Glance<'a> {
    /// The start line.
    start: &'a [u8],
    call_id: &'a str,
    /// An INVITE without a To tag: a new call.
    new_invite: bool,
}

impl<'a> Glance<'a> {
    /// None without a Call-ID.
    fn of(bytes: &'a [u8]) -> Option<Glance<'a>> {
        let mut lines = bytes.split(|b| *b == b'\n').map(<[u8]>::trim_ascii_end);
        let start = lines.next()?;
        let invite = start.starts_with(b"INVITE ");
        let (mut call_id, mut to) = (None, None);
        // Up to the blank line ending the head, or as soon as what is needed was seen.
        for line in lines.take_while(|line| !line.is_empty()) {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let name = line[..colon].trim_ascii();
            let value = || std::str::from_utf8(line[colon + 1..].trim_ascii()).ok();
            if name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i") {
                call_id = value();
            } else if invite
                && (name.eq_ignore_ascii_case(b"to") || name.eq_ignore_ascii_case(b"t"))
            {
                to = value();
            }
            if call_id.is_some() && (!invite || to.is_some()) {
                break;
            }
        }
        let to_tagged = to
            .and_then(|to| crate::sip::header::NameAddr::parse(to).ok())
            .is_some_and(|to| to.tag().is_some());
        Some(Glance {
            start,
            call_id: call_id.filter(|id| !id.is_empty())?,
            new_invite: invite && !to_tagged,
        })
    }
}

/// One message of a recent call's ladder. Kept as it came (addresses, and the start line
/// sharing the captured bytes): recording a step allocates nothing; the API formats it.
#[derive(Clone, Debug, Serialize)]
pub struct LadderStep {
    /// Milliseconds since the call's first message.
    pub t_ms: f64,
    /// `in` (from the remote to Bridgehead) or `out`.
    pub dir: &'static str,
    /// `transport:IP:port` of Bridgehead's listener and of the remote.
    pub local: Endpoint,
    pub remote: Endpoint,
    /// The start line.
    #[serde(serialize_with = "text")]
    pub line: Bytes,
}

/// A transport and an address, shown as `udp:192.0.2.1:5060`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint(pub Transport, pub SocketAddr);

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        out.serialize_str(&endpoint_label(self.0, self.1))
    }
}

fn text<S: serde::Serializer>(bytes: &Bytes, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(&String::from_utf8_lossy(bytes))
}

fn wall_clock<S: serde::Serializer>(at: &SystemTime, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(&rfc3339(*at))
}

/// A recent call and its messages.
#[derive(Clone, Debug, Serialize)]
pub struct RecentCall {
    /// The A-leg Call-ID.
    pub id: String,
    /// The first message's wall-clock time (RFC 3339).
    #[serde(serialize_with = "wall_clock")]
    pub started: SystemTime,
    pub messages: Vec<LadderStep>,
}

/// The ladders of the last calls (the dashboard's), newest first.
#[derive(Debug)]
pub struct Recent {
    calls: Mutex<VecDeque<RecentCall>>,
    keep: usize,
}

impl Recent {
    /// Keeps the last `keep` calls (0: none).
    pub fn new(keep: usize) -> Recent {
        Recent {
            calls: Mutex::new(VecDeque::new()),
            keep,
        }
    }

    /// Whether it keeps any call.
    pub fn enabled(&self) -> bool {
        self.keep > 0
    }

    /// A step of call `id` at `at`; a message that starts a call opens its ladder (others of
    /// unknown calls are not kept).
    fn record(&self, id: &str, starts_call: bool, at: SystemTime, mut step: LadderStep) {
        if self.keep == 0 {
            return;
        }
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        let call = match calls.iter().position(|call| call.id == id) {
            Some(index) => &mut calls[index],
            // A new ladder at most every LADDER_EVERY: under load the dashboard shows a
            // sample of the calls, and the others cost a lookup.
            None if starts_call
                && calls.front().is_none_or(|newest| {
                    at.duration_since(newest.started)
                        .is_ok_and(|age| age >= LADDER_EVERY)
                }) =>
            {
                calls.push_front(RecentCall {
                    id: id.to_string(),
                    started: at,
                    messages: Vec::new(),
                });
                calls.truncate(self.keep);
                &mut calls[0]
            }
            None => return,
        };
        if call.messages.len() < LADDER_STEPS {
            step.t_ms = at
                .duration_since(call.started)
                .unwrap_or_default()
                .as_secs_f64()
                * 1000.0;
            call.messages.push(step);
        }
    }

    /// The recent calls, newest first.
    pub fn calls(&self) -> Vec<RecentCall> {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Transport;

    fn request(method: &str, call_id: &str, to_tag: &str) -> Bytes {
        Bytes::from(format!(
            "{method} sip:+4930123@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@y>{to_tag}\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    fn peer(port: u16) -> Peer {
        Peer {
            listener: 0,
            transport: Transport::Udp,
            addr: ([127, 0, 0, 1], port).into(),
            conn: None,
        }
    }

    /// The correlation id chunk (0x0011) of a HEP3 packet.
    fn correlation(packet: &[u8]) -> Option<String> {
        let mut at = 6;
        while at + 6 <= packet.len() {
            let kind = u16::from_be_bytes([packet[at + 2], packet[at + 3]]);
            let len = usize::from(u16::from_be_bytes([packet[at + 4], packet[at + 5]]));
            if kind == 0x0011 {
                return Some(String::from_utf8_lossy(&packet[at + 6..at + len]).to_string());
            }
            at += len;
        }
        None
    }

    #[test]
    fn a_glance_finds_the_call_id_and_a_new_invite_in_long_or_compact_headers() {
        let glance =
            Glance::of(b"INVITE sip:x SIP/2.0\r\ni:  abc@host \r\nt: <sip:y>\r\n\r\nCall-ID: body")
                .expect("call-id");
        assert_eq!((glance.call_id, glance.new_invite), ("abc@host", true));
        assert_eq!(glance.start, b"INVITE sip:x SIP/2.0");
        let glance = Glance::of(b"INVITE sip:x SIP/2.0\r\nTO: <sip:y>;tag=9\r\ncall-id: x\r\n\r\n")
            .expect("call-id");
        assert_eq!((glance.call_id, glance.new_invite), ("x", false));
        let glance =
            Glance::of(b"SIP/2.0 200 OK\r\nCall-ID: y\r\nTo: <sip:y>\r\n").expect("call-id");
        assert!(!glance.new_invite);
        assert!(Glance::of(b"OPTIONS sip:x SIP/2.0\r\nCall-ID:\r\n\r\n").is_none());
        assert!(Glance::of(b"").is_none());
    }

    #[test]
    fn both_legs_of_a_call_share_the_a_leg_call_id_and_one_ladder() {
        let collector = UdpSocket::bind("127.0.0.1:0").expect("collector");
        collector
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let config = CaptureConfig {
            hep: crate::config::HepConfig {
                address: collector.local_addr().expect("addr"),
                agent_id: 7,
                password: None,
                listeners: Vec::new(),
            },
        };
        let listener = Listener {
            name: "core".into(),
            address: "127.0.0.1:5060".parse().expect("addr"),
            transports: vec![Transport::Udp],
            advertise: "127.0.0.1".into(),
            dscp: 24,
            idle_timeout: 0,
            max_connections_per_source: 0,
            unknown_sources: crate::config::UnknownSources::Answer,
            tls: None,
            ping_interval: 0,
        };
        let recent = Arc::new(Recent::new(5));
        let capture = Capture::start(Some(&config), &[listener], recent.clone()).expect("start");
        let now = Instant::now();
        capture.incoming(request("INVITE", "a-leg@caller", ""), &peer(5070), now);
        capture.link(Link::Leg {
            call: "a-leg@caller".into(),
            b_call_id: "bh-b-leg".into(),
        });
        let b_invite = Transmit {
            peer: peer(5080),
            bytes: request("INVITE", "bh-b-leg", ""),
        };
        capture.outgoing(&b_invite);
        capture.incoming(
            Bytes::from_static(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK2\r\nFrom: <sip:a@x>;tag=9\r\nTo: <sip:b@y>;tag=2\r\nCall-ID: bh-b-leg\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"),
            &peer(5080),
            now,
        );
        // An OPTIONS outside any call is sent to the collector but opens no ladder.
        capture.incoming(request("OPTIONS", "ping@x", ""), &peer(5090), now);
        let mut buf = [0u8; 4096];
        let mut correlations = Vec::new();
        for _ in 0..4 {
            let len = collector.recv(&mut buf).expect("a HEP packet");
            correlations.push(correlation(&buf[..len]).expect("a correlation id"));
        }
        assert_eq!(
            correlations,
            ["a-leg@caller", "a-leg@caller", "a-leg@caller", "ping@x"]
        );
        let calls = recent.calls();
        assert_eq!(calls.len(), 1, "{calls:?}");
        let json = serde_json::to_value(&calls[0]).expect("JSON");
        let lines: Vec<_> = json["messages"]
            .as_array()
            .expect("steps")
            .iter()
            .map(|m| format!("{} {} {} {}", m["dir"], m["local"], m["remote"], m["line"]))
            .collect();
        assert_eq!(
            lines,
            [
                r#""in" "udp:127.0.0.1:5060" "udp:127.0.0.1:5070" "INVITE sip:+4930123@127.0.0.1 SIP/2.0""#,
                r#""out" "udp:127.0.0.1:5060" "udp:127.0.0.1:5080" "INVITE sip:+4930123@127.0.0.1 SIP/2.0""#,
                r#""in" "udp:127.0.0.1:5060" "udp:127.0.0.1:5080" "SIP/2.0 200 OK""#,
            ]
        );
        assert_eq!(json["id"], "a-leg@caller");
        assert!(json["started"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
}
