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
use crate::config::{CaptureConfig, Listener};
use crate::shared::{endpoint_label, rfc3339, Peer, Transmit};
use crate::sip::{parse_message, Framing, HeaderName, Method};
use bytes::Bytes;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Messages waiting for the capture thread at most; past it captures are dropped (counted).
const QUEUE: usize = 65_536;

/// How long the correlation of an ended call's B-leg is kept (its retransmissions and late
/// responses: Timer F, 64 × T1).
const LINGER: Duration = Duration::from_secs(32);

/// Messages kept per recent call at most.
const LADDER_STEPS: usize = 200;

/// Which way a message went, seen from Bridgehead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
}

enum Event {
    Message {
        direction: Direction,
        peer: Peer,
        at: SystemTime,
        bytes: Bytes,
    },
    Link(Link),
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

/// Where the transports and shards hand what they capture.
pub struct Capture {
    queue: SyncSender<Event>,
    pub stats: Arc<CaptureStats>,
}

/// A listener as capture sees it: its addresses, and whether HEP takes its messages.
struct CapturedListener {
    listener: Listener,
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
                listener: listener.clone(),
                hep: config.is_some_and(|config| {
                    config.hep.listeners.is_empty() || config.hep.listeners.contains(&listener.name)
                }),
            })
            .collect();
        let hep = config
            .map(|config| -> std::io::Result<HepSender> {
                let local: SocketAddr = if config.hep.address.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket = UdpSocket::bind(local)?;
                socket.connect(config.hep.address)?;
                Ok(HepSender {
                    socket,
                    agent: hep::Agent {
                        id: config.hep.agent_id,
                        password: config.hep.password.clone(),
                    },
                    buf: Vec::with_capacity(2048),
                })
            })
            .transpose()?;
        let (queue, events) = mpsc::sync_channel(QUEUE);
        let stats = Arc::new(CaptureStats::default());
        let mut worker = Worker {
            listeners,
            hep,
            recent,
            stats: stats.clone(),
            b_legs: HashMap::new(),
            legs_of: HashMap::new(),
            ended: VecDeque::new(),
        };
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || worker.run(&events))?;
        Ok(Arc::new(Capture { queue, stats }))
    }

    fn push(&self, event: Event) {
        match self.queue.try_send(event) {
            Ok(()) => {
                self.stats.captured.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// A message that arrived from `peer` at `received`.
    pub fn incoming(&self, bytes: Bytes, peer: &Peer, received: Instant) {
        let at = SystemTime::now() - received.elapsed();
        self.push(Event::Message {
            direction: Direction::In,
            peer: *peer,
            at,
            bytes,
        });
    }

    /// A message Bridgehead sends now.
    pub fn outgoing(&self, transmit: &Transmit) {
        self.push(Event::Message {
            direction: Direction::Out,
            peer: transmit.peer,
            at: SystemTime::now(),
            bytes: transmit.bytes.clone(),
        });
    }

    /// A B-leg Call-ID made for a call, or a call that ended.
    pub fn link(&self, link: Link) {
        // Links are never dropped (a dropped one would split a call in two): they are a
        // couple per call, far fewer than the messages the queue bounds.
        let _ = self.queue.send(Event::Link(link));
    }
}

struct HepSender {
    socket: UdpSocket,
    agent: hep::Agent,
    buf: Vec<u8>,
}

struct Worker {
    listeners: Vec<CapturedListener>,
    hep: Option<HepSender>,
    recent: Arc<Recent>,
    stats: Arc<CaptureStats>,
    /// The call (A-leg Call-ID) of each B-leg Call-ID, and the B-legs of each call.
    b_legs: HashMap<String, String>,
    legs_of: HashMap<String, Vec<String>>,
    /// Calls that ended, with when their B-legs are forgotten.
    ended: VecDeque<(Instant, String)>,
}

impl Worker {
    fn run(&mut self, events: &Receiver<Event>) {
        loop {
            match events.recv_timeout(Duration::from_secs(1)) {
                Ok(Event::Message {
                    direction,
                    peer,
                    at,
                    bytes,
                }) => self.message(direction, &peer, at, &bytes),
                Ok(Event::Link(link)) => self.link(link),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.forget_ended(Instant::now());
        }
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
            Link::Ended { call } => self.ended.push_back((Instant::now() + LINGER, call)),
        }
    }

    fn forget_ended(&mut self, now: Instant) {
        while let Some((_, call)) = self.ended.front().filter(|(at, _)| *at <= now) {
            for b in self.legs_of.remove(call).unwrap_or_default() {
                self.b_legs.remove(&b);
            }
            self.ended.pop_front();
        }
    }

    fn message(&mut self, direction: Direction, peer: &Peer, at: SystemTime, bytes: &Bytes) {
        let Some(captured) = self.listeners.get(peer.listener) else {
            return;
        };
        let local = SocketAddr::new(
            captured.listener.address.ip(),
            captured.listener.port(peer.transport),
        );
        let Ok((msg, _)) = parse_message(bytes, Framing::Datagram) else {
            return;
        };
        let Some(call_id) = msg.header_str(&HeaderName::CallId).map(str::trim) else {
            return;
        };
        let correlation = self
            .b_legs
            .get(call_id)
            .map_or(call_id, String::as_str)
            .to_string();
        let (source, destination) = match direction {
            Direction::In => (peer.addr, local),
            Direction::Out => (local, peer.addr),
        };
        if captured.hep {
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
                hep::encode(&packet, &hep.agent, &mut hep.buf);
                let counter = match hep.socket.send(&hep.buf) {
                    Ok(_) => &self.stats.hep_sent,
                    Err(_) => &self.stats.hep_failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        let starts_call = direction == Direction::In
            && msg.method() == Some(&Method::Invite)
            && msg
                .header_str(&HeaderName::To)
                .and_then(|to| crate::sip::header::NameAddr::parse(to).ok())
                .is_some_and(|to| to.tag().is_none());
        let line = bytes
            .split(|b| *b == b'\n')
            .next()
            .map(|line| String::from_utf8_lossy(line).trim_end().to_string())
            .unwrap_or_default();
        self.recent.record(
            &correlation,
            starts_call,
            at,
            LadderStep {
                t_ms: 0.0,
                dir: match direction {
                    Direction::In => "in",
                    Direction::Out => "out",
                },
                local: endpoint_label(peer.transport, local),
                remote: peer.label(),
                line,
            },
        );
    }
}

/// One message of a recent call's ladder.
#[derive(Clone, Debug, Serialize)]
pub struct LadderStep {
    /// Milliseconds since the call's first message.
    pub t_ms: f64,
    /// `in` (from the remote to Bridgehead) or `out`.
    pub dir: &'static str,
    /// `transport:IP:port` of Bridgehead's listener and of the remote.
    pub local: String,
    pub remote: String,
    /// The start line.
    pub line: String,
}

/// A recent call and its messages.
#[derive(Clone, Debug, Serialize)]
pub struct RecentCall {
    /// The A-leg Call-ID.
    pub id: String,
    /// The first message's wall-clock time (RFC 3339).
    pub started: String,
    #[serde(skip)]
    start: SystemTime,
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
            None if starts_call => {
                calls.push_front(RecentCall {
                    id: id.to_string(),
                    started: rfc3339(at),
                    start: at,
                    messages: Vec::new(),
                });
                calls.truncate(self.keep);
                &mut calls[0]
            }
            None => return,
        };
        if call.messages.len() < LADDER_STEPS {
            step.t_ms = at
                .duration_since(call.start)
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
        let lines: Vec<_> = calls[0]
            .messages
            .iter()
            .map(|m| (m.dir, m.remote.as_str(), m.line.as_str()))
            .collect();
        assert_eq!(
            lines,
            [
                (
                    "in",
                    "udp:127.0.0.1:5070",
                    "INVITE sip:+4930123@127.0.0.1 SIP/2.0"
                ),
                (
                    "out",
                    "udp:127.0.0.1:5080",
                    "INVITE sip:+4930123@127.0.0.1 SIP/2.0"
                ),
                ("in", "udp:127.0.0.1:5080", "SIP/2.0 200 OK"),
            ]
        );
    }
}
