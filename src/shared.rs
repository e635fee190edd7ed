//! The vocabulary every floor shares: the two legs of a call, where a message comes from or
//! goes ([`Peer`]), bytes to send ([`Transmit`]), and the ids of connections and transactions.
//! Like quinn-proto's `shared` module: plain data, no I/O, imported from anywhere above.

use crate::config::{ListenerId, Transport};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

/// The two legs of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leg {
    /// Toward the caller.
    A,
    /// Toward the callee.
    B,
}

impl Leg {
    /// The other leg.
    pub fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }

    /// "a" or "b", as rules see it.
    pub fn name(self) -> &'static str {
        match self {
            Leg::A => "a",
            Leg::B => "b",
        }
    }

    /// The leg a rule names ("a" or "b").
    pub fn from_name(name: &str) -> Option<Leg> {
        match name {
            "a" => Some(Leg::A),
            "b" => Some(Leg::B),
            _ => None,
        }
    }

    /// 0 for A, 1 for B: an index into per-leg pairs.
    pub fn index(self) -> usize {
        match self {
            Leg::A => 0,
            Leg::B => 1,
        }
    }
}

/// Identifies a stream connection in the transport layer.
pub type ConnId = u64;
/// Identifies a transaction inside one engine.
pub type TxnId = u64;

/// Where a message came from, or where one goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub listener: ListenerId,
    pub transport: Transport,
    pub addr: SocketAddr,
    /// The stream connection a message arrived on (responses go back on it); `None` lets the
    /// transport pick or open one.
    pub conn: Option<ConnId>,
}

impl Peer {
    /// `transport:IP:port`, as the admin API, CDRs and ladders show a peer.
    pub fn label(&self) -> String {
        endpoint_label(self.transport, self.addr)
    }
}

/// `transport:IP:port` (`udp:192.0.2.1:5060`).
pub fn endpoint_label(transport: Transport, addr: SocketAddr) -> String {
    format!("{}:{addr}", transport.as_via_token().to_ascii_lowercase())
}

/// A wall-clock time as RFC 3339 (`2026-12-02T07:01:02.123Z`).
pub fn rfc3339(when: SystemTime) -> String {
    time::OffsetDateTime::from(when)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Bytes the driver must send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub peer: Peer,
    pub bytes: Bytes,
}

/// The IP TOS / IPv6 traffic class byte of a DSCP.
pub fn tos(dscp: u8) -> u32 {
    u32::from(dscp) << 2
}

/// Hashes a Call-ID to a shard (FNV-1a). The dispatcher and the engine must agree on it: the
/// engine picks B-leg Call-IDs that hash to its own shard so both legs of a call stay together.
pub fn shard_for_call_id(call_id: &[u8], shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in call_id {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

/// Counters of what an engine did. The engine counts messages in and out and transport
/// errors; its call layer counts the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub messages_in: u64,
    pub messages_out: u64,
    /// Requests answered 4xx/5xx for being malformed, and malformed responses dropped.
    pub malformed: u64,
    pub calls_started: u64,
    pub calls_answered: u64,
    pub calls_failed: u64,
    pub script_errors: u64,
    /// SDPs that could not be anchored (no media ports left).
    pub media_failures: u64,
    /// Messages the transport could not send (RFC 3261 §18.4).
    pub transport_errors: u64,
    /// Requests sent over TCP instead of UDP for their size (RFC 3261 §18.1.1).
    pub switched_to_tcp: u64,
    /// New calls refused for a trunk's `max_calls` or `max_cps`.
    pub limit_refused: u64,
    /// New calls refused with 503 while draining.
    pub drain_refused: u64,
    /// Calls still up at the drain's deadline, ended by Bridgehead.
    pub drain_ended: u64,
    /// RTP timeouts that ended calls.
    pub rtp_timeouts: u64,
    /// Messages by direction, transport and kind.
    pub messages: MessageCounts,
}

/// What a SIP message is counted as: requests by method (rare ones as `other`), responses
/// by status class.
pub const MESSAGE_KINDS: [&str; 20] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "PRACK",
    "UPDATE",
    "INFO",
    "REFER",
    "NOTIFY",
    "SUBSCRIBE",
    "MESSAGE",
    "other",
    "1xx",
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "6xx",
];

/// The transports in [`MessageCounts`]' order.
pub const MESSAGE_TRANSPORTS: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

/// SIP messages by direction (in, out), transport ([`MESSAGE_TRANSPORTS`]) and kind
/// ([`MESSAGE_KINDS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageCounts(pub [[[u64; MESSAGE_KINDS.len()]; 3]; 2]);

impl Default for MessageCounts {
    fn default() -> MessageCounts {
        MessageCounts([[[0; MESSAGE_KINDS.len()]; 3]; 2])
    }
}

impl MessageCounts {
    /// Counts a message whose start line begins with `start` (a method token, or `SIP/2.0`
    /// and a status code), received (`out` false) or sent over `transport`.
    pub fn count(&mut self, out: bool, transport: Transport, start: &[u8]) {
        match start.strip_prefix(b"SIP/2.0 ") {
            Some(status) => {
                let class = status.first().map_or(0, |digit| digit.wrapping_sub(b'0'));
                self.count_kind(out, transport, Self::response_kind(u16::from(class) * 100));
            }
            None => {
                let token = start.split(|b| *b == b' ').next().unwrap_or_default();
                self.count_request(out, transport, token);
            }
        }
    }

    /// Counts a request by its method token.
    pub fn count_request(&mut self, out: bool, transport: Transport, method: &[u8]) {
        let kind = MESSAGE_KINDS[..13]
            .iter()
            .position(|kind| kind.as_bytes() == method)
            .unwrap_or(13);
        self.count_kind(out, transport, kind);
    }

    /// Counts a response by its status.
    pub fn count_response(&mut self, out: bool, transport: Transport, status: u16) {
        self.count_kind(out, transport, Self::response_kind(status));
    }

    fn response_kind(status: u16) -> usize {
        match status / 100 {
            class @ 1..=6 => 13 + usize::from(class),
            _ => 13,
        }
    }

    fn count_kind(&mut self, out: bool, transport: Transport, kind: usize) {
        let transport = MESSAGE_TRANSPORTS
            .iter()
            .position(|t| *t == transport)
            .unwrap_or(0);
        self.0[usize::from(out)][transport][kind] += 1;
    }

    /// The sum of `self` and `other`.
    pub fn add(&mut self, other: &MessageCounts) {
        for (mine, theirs) in self.0.iter_mut().flatten().zip(other.0.iter().flatten()) {
            for (m, t) in mine.iter_mut().zip(theirs) {
                *m += t;
            }
        }
    }
}

/// The health of the trunks' peers, told by the OPTIONS keepalives (shard 0 sends them),
/// read by every shard to route calls and by the rules (`bh.peer_status`).
/// How a peer stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerState {
    /// Down: calls skip it.
    pub down: bool,
    /// Failed OPTIONS in a row (while up), or answered ones in a row (while down).
    streak: u32,
    /// A 503 with Retry-After asked for a rest: calls skip it until then.
    pub resting_until: Option<Instant>,
    /// Times it went down or up.
    pub changes: u64,
    /// The last answered OPTIONS' round-trip time (none after a failed one).
    pub round_trip: Option<std::time::Duration>,
}

/// The health of every trunk's peers, by trunk name and peer address.
#[derive(Debug, Default)]
pub struct PeerHealth {
    peers: Mutex<HashMap<(String, SocketAddr), PeerState>>,
}

impl PeerHealth {
    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<(String, SocketAddr), PeerState>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets what was known of a peer (its keepalives stopped).
    pub fn forget(&self, trunk: &str, peer: SocketAddr) {
        self.peers().remove(&(trunk.to_string(), peer));
    }

    /// True when the keepalives found the peer down.
    pub fn is_down(&self, trunk: &str, peer: SocketAddr) -> bool {
        self.peers()
            .get(&(trunk.to_string(), peer))
            .is_some_and(|state| state.down)
    }

    /// True when calls should skip the peer at `now`: down, or resting after a 503.
    pub fn avoid(&self, trunk: &str, peer: SocketAddr, now: Instant) -> bool {
        self.peers()
            .get(&(trunk.to_string(), peer))
            .is_some_and(|state| state.down || state.resting_until.is_some_and(|t| t > now))
    }

    /// A 503 with Retry-After from the peer: calls skip it until `until`.
    pub fn rest(&self, trunk: &str, peer: SocketAddr, until: Instant) {
        self.peers()
            .entry((trunk.to_string(), peer))
            .or_default()
            .resting_until = Some(until);
    }

    /// The outcome of one OPTIONS (answered or not, and its round-trip time when known);
    /// returns the peer's new state when it went down or up.
    /// `(down_after, up_after)`: the failures in a row that make a peer down, the answers in a
    /// row that make it up again.
    pub fn record(
        &self,
        trunk: &str,
        peer: SocketAddr,
        (answered, round_trip): (bool, Option<std::time::Duration>),
        (down_after, up_after): (u32, u32),
    ) -> Option<PeerState> {
        let mut peers = self.peers();
        let state = peers.entry((trunk.to_string(), peer)).or_default();
        state.round_trip = round_trip;
        // A streak counts what would change the state: failures while up, answers while down.
        if answered == state.down {
            state.streak += 1;
        } else {
            state.streak = 0;
        }
        let threshold = if state.down { up_after } else { down_after };
        if state.streak < threshold {
            return None;
        }
        state.down = !state.down;
        state.streak = 0;
        state.changes += 1;
        Some(*state)
    }

    /// Every peer known so far and how it stands, by trunk and address.
    pub fn snapshot(&self) -> Vec<(String, SocketAddr, PeerState)> {
        let mut all: Vec<_> = self
            .peers()
            .iter()
            .map(|((trunk, peer), state)| (trunk.clone(), *peer, *state))
            .collect();
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        all
    }
}

/// Which of a trunk's limits a new call hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    /// `max_calls`: as many calls are up on the trunk.
    Calls,
    /// `max_cps`: as many calls started on it in the last second.
    Cps,
}

impl LimitHit {
    /// The trunk setting, as logs and rules name it.
    pub fn name(self) -> &'static str {
        match self {
            LimitHit::Calls => "max_calls",
            LimitHit::Cps => "max_cps",
        }
    }
}

/// A token bucket: `rate` tokens a second, at most one second's worth (and one) kept.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenBucket {
    tokens: f64,
    /// When `tokens` was counted; None: never used (full).
    at: Option<Instant>,
}

impl TokenBucket {
    /// Takes a token at `now` if one is left after refilling at `rate` a second (the bucket
    /// holds one token at least, however low the rate: a shard's share of a rate may be
    /// below one a second).
    pub fn take(&mut self, rate: f64, now: Instant) -> bool {
        let depth = rate.max(1.0);
        // Shards share a trunk's bucket: an instant taken before the lock may be behind.
        let now = self.at.map_or(now, |at| now.max(at));
        let tokens = match self.at {
            Some(at) => {
                (self.tokens + now.saturating_duration_since(at).as_secs_f64() * rate).min(depth)
            }
            None => depth,
        };
        self.at = Some(now);
        if tokens < 1.0 {
            self.tokens = tokens;
            return false;
        }
        self.tokens = tokens - 1.0;
        true
    }
}

/// How busy one trunk is: its calls up, and a token bucket of new calls (`max_cps`); with a
/// cluster, what the other instances last said of theirs.
#[derive(Debug, Default)]
pub struct TrunkLoad {
    calls: std::sync::atomic::AtomicU32,
    bucket: Mutex<TokenBucket>,
    /// New calls admitted since the start (the cluster samples their rate).
    admitted: std::sync::atomic::AtomicU64,
    /// Calls up on the trunk at the cluster's other instances, as last read.
    others_calls: std::sync::atomic::AtomicU32,
    /// New calls a second on the trunk at the other instances, as last read.
    others_rate: std::sync::atomic::AtomicU32,
}

/// A call counted on a trunk: it stops counting when this is dropped (the call ended, or its
/// leg moved to another trunk).
#[derive(Debug)]
pub struct TrunkSeat(std::sync::Arc<TrunkLoad>);

impl Drop for TrunkSeat {
    fn drop(&mut self) {
        self.0
            .calls
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Sources banned by any shard (admission's `ban_after`), process-wide and, with a cluster,
/// across the instances: a ban on one shard drops the source's messages on every shard.
#[derive(Debug, Default)]
pub struct SharedBans {
    bans: Mutex<HashMap<std::net::IpAddr, Instant>>,
    /// How many bans the table holds (a look costs no lock while it is empty).
    held: std::sync::atomic::AtomicUsize,
    /// Bans made here since the cluster last took them, when a cluster shares them.
    announced: Mutex<Option<Vec<(std::net::IpAddr, Instant)>>>,
    /// The table's size past which ended bans are swept out (twice what a sweep left).
    sweep_at: std::sync::atomic::AtomicUsize,
}

impl SharedBans {
    /// From now on the bans made here are kept for [`SharedBans::take_announced`].
    pub fn announce(&self) {
        *self.announced.lock().unwrap_or_else(|e| e.into_inner()) = Some(Vec::new());
    }

    /// Bans `ip` until `until` (made here: announced to the cluster).
    pub fn ban(&self, ip: std::net::IpAddr, until: Instant) {
        self.learn(ip, until);
        if let Some(announced) = self
            .announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            announced.push((ip, until));
        }
    }

    /// Bans `ip` until `until` (made by another instance, or here).
    pub fn learn(&self, ip: std::net::IpAddr, until: Instant) {
        use std::sync::atomic::Ordering;
        let mut bans = self.bans.lock().unwrap_or_else(|e| e.into_inner());
        let ends = bans.entry(ip).or_insert(until);
        *ends = (*ends).max(until);
        // Ended bans go once the table doubled since the last sweep.
        if bans.len() > self.sweep_at.load(Ordering::Relaxed).max(4096) {
            let now = Instant::now();
            bans.retain(|_, ends| *ends > now);
            self.sweep_at.store(bans.len() * 2, Ordering::Relaxed);
        }
        self.held.store(bans.len(), Ordering::Relaxed);
    }

    /// Whether `ip` is banned at `now`.
    pub fn banned(&self, ip: std::net::IpAddr, now: Instant) -> bool {
        if self.held.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return false;
        }
        let bans = self.bans.lock().unwrap_or_else(|e| e.into_inner());
        bans.get(&ip).is_some_and(|until| *until > now)
    }

    /// Bans taken by [`SharedBans::take_announced`] that could not be shared: announced again.
    pub fn announce_again(&self, bans: Vec<(std::net::IpAddr, Instant)>) {
        if let Some(announced) = self
            .announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            announced.extend(bans);
        }
    }

    /// The bans made here since the last call (for the cluster).
    pub fn take_announced(&self) -> Vec<(std::net::IpAddr, Instant)> {
        self.announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }
}

/// Every trunk's load, by trunk name, process-wide: the shards count their calls here against
/// each trunk's `max_calls` and `max_cps`, and rules read it (`bh.trunk_calls`).
#[derive(Debug, Default)]
pub struct TrunkLoads {
    trunks: Mutex<HashMap<String, std::sync::Arc<TrunkLoad>>>,
}

impl TrunkLoads {
    fn load(&self, trunk: &str) -> std::sync::Arc<TrunkLoad> {
        let mut trunks = self.trunks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(load) = trunks.get(trunk) {
            return load.clone();
        }
        let load = std::sync::Arc::<TrunkLoad>::default();
        trunks.insert(trunk.to_string(), load.clone());
        load
    }

    /// Counts a new call on `trunk` at `now` unless it would pass `max_calls` or `max_cps`
    /// (with a cluster: what this instance has plus what the others last said they had).
    pub fn admit(
        &self,
        trunk: &str,
        (max_calls, max_cps): (Option<u32>, Option<u32>),
        now: Instant,
    ) -> Result<TrunkSeat, LimitHit> {
        use std::sync::atomic::Ordering;
        let load = self.load(trunk);
        let others = load.others_calls.load(Ordering::Relaxed);
        let limit = max_calls.map_or(u32::MAX, |max| max.saturating_sub(others));
        load.calls
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |calls| {
                (calls < limit).then_some(calls + 1)
            })
            .map_err(|_| LimitHit::Calls)?;
        let seat = TrunkSeat(load);
        if let Some(cps) = max_cps {
            let others = seat.0.others_rate.load(Ordering::Relaxed);
            let mut bucket = seat.0.bucket.lock().unwrap_or_else(|e| e.into_inner());
            if !bucket.take(f64::from(cps.saturating_sub(others)), now) {
                return Err(LimitHit::Cps);
            }
        }
        seat.0.admitted.fetch_add(1, Ordering::Relaxed);
        Ok(seat)
    }

    /// Counts a call on `trunk` whatever the limits, and not as a new call (one taken over
    /// from a dead instance of the cluster).
    pub fn seat(&self, trunk: &str) -> TrunkSeat {
        let load = self.load(trunk);
        load.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TrunkSeat(load)
    }

    /// Every trunk's calls up and new calls admitted so far, here (what the cluster shares).
    pub fn local(&self) -> Vec<(String, u32, u64)> {
        use std::sync::atomic::Ordering;
        let trunks = self.trunks.lock().unwrap_or_else(|e| e.into_inner());
        trunks
            .iter()
            .map(|(name, load)| {
                (
                    name.clone(),
                    load.calls.load(Ordering::Relaxed),
                    load.admitted.load(Ordering::Relaxed),
                )
            })
            .collect()
    }

    /// What the cluster's other instances have, by trunk: calls up and new calls a second
    /// (a trunk left out: none; an empty map: this instance alone, as when Redis is down).
    pub fn set_others(&self, others: &HashMap<String, (u32, u32)>) {
        use std::sync::atomic::Ordering;
        for (name, &(calls, rate)) in others {
            let load = self.load(name);
            load.others_calls.store(calls, Ordering::Relaxed);
            load.others_rate.store(rate, Ordering::Relaxed);
        }
        let trunks = self.trunks.lock().unwrap_or_else(|e| e.into_inner());
        for (name, load) in trunks.iter() {
            if !others.contains_key(name) {
                load.others_calls.store(0, Ordering::Relaxed);
                load.others_rate.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Calls up on `trunk` now.
    pub fn calls(&self, trunk: &str) -> u32 {
        self.load(trunk)
            .calls
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Gives back a table's room once a peak is over (a `HashMap` keeps its capacity otherwise):
/// at a quarter full, to twice what is used, never below 1,024 entries.
pub fn shrink_when_quiet<K: std::hash::Hash + Eq, V>(table: &mut HashMap<K, V>) {
    const SMALLEST: usize = 1024;
    let used = table.len();
    if table.capacity() > SMALLEST && used * 4 < table.capacity() {
        table.shrink_to((used * 2).max(SMALLEST));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_by_method_or_status_class_and_transport() {
        let mut counts = MessageCounts::default();
        counts.count(true, Transport::Udp, b"INVITE sip:x SIP/2.0");
        counts.count(true, Transport::Tls, b"SIP/2.0 486 Busy Here");
        counts.count(true, Transport::Tcp, b"FOO sip:x SIP/2.0");
        counts.count_request(false, Transport::Udp, b"BYE");
        counts.count_response(false, Transport::Udp, 183);
        counts.count_response(false, Transport::Udp, 799);
        let kind = |name: &str| MESSAGE_KINDS.iter().position(|k| *k == name).expect(name);
        assert_eq!(counts.0[1][0][kind("INVITE")], 1);
        assert_eq!(counts.0[1][2][kind("4xx")], 1);
        assert_eq!(counts.0[1][1][kind("other")], 1);
        assert_eq!(counts.0[0][0][kind("BYE")], 1);
        assert_eq!(counts.0[0][0][kind("1xx")], 1);
        assert_eq!(counts.0[0][0][kind("other")], 1);
        let mut sum = counts;
        sum.add(&counts);
        assert_eq!(sum.0[1][2][kind("4xx")], 2);
        assert_eq!(sum.0.iter().flatten().flatten().sum::<u64>(), 12);
    }
}
