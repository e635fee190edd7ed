//! The sans-IO engine: one per shard, driven by the tokio runtime in production and by tests
//! (and later the replay harness) on virtual time.
//!
//! Shaped like quinn-proto's `Connection`: `handle_*` for what happened (a datagram, a parsed
//! message, the clock reaching a deadline), then `poll_transmit` / `poll_timeout` for what the
//! driver must do now. The engine owns transactions (`transactions`: the table, indexes and
//! timers, emitting events), calls and media ports; it never touches a socket, a clock or a
//! file.

pub(crate) mod transactions;

use crate::call::{Call, CallKey, ClientOwner, ServerOwner};
use crate::config::{Profile, Transport};
use crate::media::{MediaCallId, MediaEvent};
use crate::media::{MediaCommand, PortPool};
use crate::script::{HookArgs, RuleSet};
use crate::shared::{Leg, Peer, Transmit, TxnId};
use crate::sip::transaction::TimerConfig;
use crate::sip::{parse_message, Framing, HeaderName, Message};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;
use transactions::{Transactions, TxnEvent};

/// Counters of what the engine did.
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
}

/// Rewrites the top Via of a request Bridgehead sends to say TCP (RFC 3261 §18.1.1: a change
/// of transport changes the top Via).
fn switch_via_to_tcp(request: &mut Message) {
    if let Some(via) = request
        .headers
        .iter_mut()
        .find(|h| h.name == HeaderName::Via)
    {
        if let Some(rest) = via.value_str().and_then(|v| {
            v.get(..11)
                .filter(|p| p.eq_ignore_ascii_case("SIP/2.0/UDP"))
                .map(|_| &v[11..])
        }) {
            via.value = Bytes::from(format!("SIP/2.0/TCP{rest}"));
        }
    }
}

/// A ChaCha generator seeded from the operating system. Should the OS have no randomness to
/// give (it always has on Linux), the seed comes from the standard library's per-process
/// random hasher keys, and that is logged.
fn os_seeded() -> StdRng {
    StdRng::try_from_os_rng().unwrap_or_else(|err| {
        tracing::error!("no randomness from the OS ({err}): seeding from the hasher's keys");
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(std::process::id().into());
        StdRng::seed_from_u64(hasher.finish())
    })
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

/// The sans-IO SIP engine of one shard.
pub struct Engine {
    /// The rule-set version new calls take; calls in progress keep their own.
    pub(crate) current: Arc<RuleSet>,
    shard: usize,
    shards: usize,
    /// The transactions, their indexes and timers.
    pub(crate) txns: Transactions,
    pub(crate) calls: HashMap<CallKey, Call>,
    /// Call-ID of each leg → the call and which leg it is.
    pub(crate) dialogs: HashMap<String, (CallKey, Leg)>,
    transmits: VecDeque<Transmit>,
    next_id: u64,
    /// Tags, branches, Call-IDs and SRTP keys come from here (RFC 3261 §19.3: cryptographically
    /// random tags).
    pub(crate) random: StdRng,
    pub(crate) stats: EngineStats,
    /// This shard's media ports (when the profile anchors media).
    pub(crate) media_ports: Option<PortPool>,
    /// What the relay must do, in order.
    pub(crate) media_commands: VecDeque<MediaCommand>,
}

impl Engine {
    /// An engine for shard `shard` of `shards`, running one rule-set version (a profile and
    /// its rules compiled for this shard).
    pub fn new(rules: Arc<RuleSet>, shard: usize, shards: usize) -> Engine {
        let media_ports = rules
            .profile
            .media
            .as_ref()
            .map(|media| PortPool::new(media.ports, shard, shards.max(1)));
        Engine {
            media_ports,
            media_commands: VecDeque::new(),
            current: rules,
            shard,
            shards: shards.max(1),
            txns: Transactions::new(TimerConfig::default()),
            calls: HashMap::new(),
            dialogs: HashMap::new(),
            transmits: VecDeque::new(),
            next_id: 1,
            random: os_seeded(),
            stats: EngineStats::default(),
        }
    }

    /// Makes the media port pool bind each port before handing it out (the runtime's relay
    /// keeps the sockets); without a binder ports are only numbers, as in the replay harness.
    pub fn set_port_binder(&mut self, binder: Box<dyn crate::media::PortBinder>) {
        if let Some(pool) = self.media_ports.as_mut() {
            pool.set_binder(binder);
        }
    }

    /// What the engine did so far.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Makes `rules` the version new calls take. Calls in progress finish on theirs.
    pub fn reload(&mut self, rules: Arc<RuleSet>) {
        tracing::info!(
            shard = self.shard,
            version = rules.version,
            previous = self.current.version,
            "rule set now current"
        );
        self.current = rules;
    }

    /// The version new calls take.
    pub fn version(&self) -> u64 {
        self.current.version
    }

    /// Calls in progress per rule-set version, oldest first.
    pub fn calls_by_version(&self) -> Vec<(u64, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for call in self.calls.values() {
            *counts.entry(call.rules.version).or_insert(0) += 1;
        }
        counts.into_iter().collect()
    }

    /// The next command for the media relay (streams to relay, calls to close).
    pub fn poll_media(&mut self) -> Option<MediaCommand> {
        self.media_commands.pop_front()
    }

    /// A media event the relay reported for a call (by its relay id); see
    /// [`Engine::handle_media_event`].
    pub fn handle_relay_event(&mut self, call: MediaCallId, event: &MediaEvent, now: Instant) {
        if call.shard == self.shard && self.calls.contains_key(&call.call) {
            self.media_event(call.call, event, now);
        }
    }

    /// What follows a media event: `on_media` hears it; a DTMF digit then goes on to the other
    /// leg in the form its trunk takes (unless a rule dropped it); an RTP timeout hangs the
    /// call up on both legs.
    fn media_event(&mut self, key: CallKey, event: &MediaEvent, now: Instant) {
        if let (MediaEvent::Quality { leg, mos, .. }, Some(call)) =
            (event, self.calls.get_mut(&key))
        {
            call.mos[leg.index()] = Some(*mos);
        }
        let heard = self.run_call_hook(key, crate::script::Hook::Media, HookArgs::Media(event));
        if let MediaEvent::Dtmf { leg, .. } = event {
            self.hand_on_digit(key, *leg, event, heard.digit_verdict, now);
        }
        if let MediaEvent::RtpTimeout { leg, seconds } = event {
            tracing::info!(leg = leg.name(), seconds, "no RTP: hanging up");
            self.hang_up(key, now);
        }
    }

    /// The relay's id of a call: unique across shards.
    pub(crate) fn media_call_id(&self, key: CallKey) -> MediaCallId {
        MediaCallId {
            shard: self.shard,
            call: key,
        }
    }

    /// A media event (a DTMF digit, an RTP timeout, a quality report) for the call whose A-leg
    /// Call-ID is `call_id` (the newest such call, when a caller reused its Call-ID), as the
    /// relay would report it: `on_media` hears it, then the digit goes on or the timed-out
    /// call is hung up. Returns false when no such call exists.
    pub fn handle_media_event(&mut self, call_id: &str, event: &MediaEvent, now: Instant) -> bool {
        let newest = self
            .calls
            .iter()
            .filter(|(_, call)| call.id == call_id)
            .map(|(key, _)| *key)
            .max();
        let Some(key) = newest else {
            return false;
        };
        self.media_event(key, event, now);
        true
    }

    /// Calls in progress.
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// Transactions in progress (server + client).
    pub fn active_transactions(&self) -> usize {
        self.txns.len()
    }

    /// The profile new calls take.
    pub fn profile(&self) -> &Profile {
        &self.current.profile
    }

    /// A datagram (UDP) arrived from `from`.
    pub fn handle_datagram(&mut self, bytes: Bytes, from: Peer, now: Instant) {
        match parse_message(&bytes, Framing::Datagram) {
            Ok((msg, _)) => self.handle_message(msg, from, now),
            Err(err) => self.handle_malformed(err, from, now),
        }
    }

    /// A message arrived that could not be parsed as it is: answer it if it is a request that
    /// can be answered, drop it otherwise.
    pub fn handle_malformed(&mut self, err: crate::sip::ParseError, from: Peer, now: Instant) {
        self.stats.messages_in += 1;
        self.stats.malformed += 1;
        tracing::debug!(peer = %from.addr, fault = %err.fault, "malformed message");
        if let Some(partial) = err.partial {
            if partial.is_request() && partial.method() != Some(&crate::sip::Method::Ack) {
                self.reject_stateless(
                    &partial,
                    from,
                    err.fault.status(),
                    &err.fault.to_string(),
                    now,
                );
            }
        }
    }

    /// A parsed message arrived from `from`.
    pub fn handle_message(&mut self, msg: Message, from: Peer, now: Instant) {
        self.stats.messages_in += 1;
        if msg.is_request() {
            self.on_request(msg, from, now);
        } else {
            self.on_response(msg, from, now);
        }
    }

    /// The clock reached a deadline returned by [`Engine::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        while self.txns.fire_next_timer(now) {
            self.drain_transactions(now);
        }
    }

    /// The driver could not send `transmit` (RFC 3261 §18.4: a transport error, such as a
    /// datagram too big, a refused or reset connection). A request's client transaction ends
    /// as if the far end answered 503 (§8.1.3.1): the call fails over (`on_failure` sees the
    /// 503) or the caller hears 503 at once, instead of waiting for Timer B.
    pub fn handle_transport_error(&mut self, transmit: &Transmit, error: &str, now: Instant) {
        self.stats.transport_errors += 1;
        let peer = transmit.peer.addr;
        let Ok(msg) = Message::parse(&transmit.bytes) else {
            tracing::warn!(%peer, "cannot send: {error}");
            return;
        };
        let Some(method) = msg.method().map(|m| m.as_str().to_string()) else {
            tracing::warn!(%peer, status = msg.status(), "cannot send a response: {error}");
            return;
        };
        let client = msg
            .header_str(&HeaderName::Via)
            .and_then(crate::call::build::branch_of)
            .and_then(|branch| self.txns.find_client(branch, &method));
        let Some(id) = client else {
            tracing::warn!(%peer, %method, "cannot send: {error}");
            return;
        };
        tracing::warn!(%peer, %method, "cannot send: {error}: the request fails with 503");
        self.on_client_failure(id, 503, now);
        self.txns.abandon_client(id);
    }

    /// The next instant at which [`Engine::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.txns.poll_timeout()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    // ----- plumbing used by the B2BUA -----

    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn random(&mut self) -> u64 {
        self.random.next_u64()
    }

    /// Makes every random value from now on (tags, branches, Call-IDs, SRTP keys) follow
    /// `seed`: the replay harness repeats a run byte for byte.
    pub fn seed_random(&mut self, seed: u64) {
        self.random = StdRng::seed_from_u64(seed);
    }

    /// A fresh tag.
    pub(crate) fn new_tag(&mut self) -> String {
        format!("{:016x}", self.random())
    }

    /// A fresh branch with the RFC 3261 magic cookie.
    pub(crate) fn new_branch(&mut self) -> String {
        format!("z9hG4bK{:016x}", self.random())
    }

    /// A fresh Call-ID that hashes to this shard.
    pub(crate) fn new_call_id(&mut self) -> String {
        loop {
            let id = format!("bh{:016x}{:08x}", self.random(), self.next_id());
            if shard_for_call_id(id.as_bytes(), self.shards) == self.shard {
                return id;
            }
        }
    }

    pub(crate) fn transmit(&mut self, peer: Peer, bytes: Bytes) {
        self.stats.messages_out += 1;
        self.transmits.push_back(Transmit { peer, bytes });
    }

    /// Hands what the transactions did to the call layer, in order: bytes to send,
    /// timeouts, and transactions to forget once their timeout was handled.
    fn drain_transactions(&mut self, now: Instant) {
        while let Some(event) = self.txns.poll_event() {
            match event {
                TxnEvent::Transmit(Transmit { peer, bytes }) => self.transmit(peer, bytes),
                TxnEvent::ServerTimedOut(id) => self.on_server_timeout(id, now),
                TxnEvent::ClientTimedOut(id) => self.on_client_timeout(id, now),
                TxnEvent::ServerEnded(_) | TxnEvent::ClientEnded(_) => self.txns.forget(&event),
            }
        }
    }

    /// Registers a server transaction for a request that just arrived.
    pub(crate) fn create_server(
        &mut self,
        key: String,
        request: Message,
        peer: Peer,
        owner: ServerOwner,
    ) -> TxnId {
        let id = self.next_id();
        self.txns.create_server(id, key, request, peer, owner);
        id
    }

    /// Sends a response through a server transaction.
    pub(crate) fn send_response(&mut self, id: TxnId, response: &Message, now: Instant) {
        self.txns.send_response(id, response, now);
        self.drain_transactions(now);
    }

    /// Answers a request without keeping a transaction (for requests that will not be
    /// retransmitted into a transaction, or cannot be matched to one).
    pub(crate) fn reject_stateless(
        &mut self,
        req: &Message,
        peer: Peer,
        status: u16,
        warning: &str,
        _now: Instant,
    ) {
        if req.header(&HeaderName::Via).is_none() {
            return;
        }
        let mut response = crate::sip::response_to(req, status, None, None);
        let tag = self.new_tag();
        if let Some(to) = response
            .headers
            .iter_mut()
            .find(|h| h.name == HeaderName::To)
        {
            if let Some(value) = to.value_str() {
                if crate::call::build::tag_of(value).is_none() {
                    to.value = Bytes::from(format!("{value};tag={tag}"));
                }
            }
        }
        response.push_header(
            HeaderName::Warning,
            format!("399 bridgehead \"{}\"", warning.replace('"', "'")),
        );
        let bytes = Bytes::from(response.to_bytes());
        self.transmit(peer, bytes);
    }

    /// Starts a client transaction sending `request` to `peer` (over TCP instead when the
    /// peer's trunk says so for its size).
    pub(crate) fn start_client(
        &mut self,
        mut request: Message,
        peer: Peer,
        owner: ClientOwner,
        now: Instant,
    ) -> TxnId {
        let id = self.next_id();
        let mut bytes = request.to_bytes();
        let mut peer = peer;
        if self.goes_over_tcp(&peer, bytes.len()) {
            switch_via_to_tcp(&mut request);
            peer.transport = Transport::Tcp;
            bytes = request.to_bytes();
            self.stats.switched_to_tcp += 1;
        }
        self.txns
            .start_client(id, (request, Bytes::from(bytes)), peer, owner, now);
        self.drain_transactions(now);
        id
    }

    /// RFC 3261 §18.1.1: a request of `size` bytes toward a UDP peer whose trunk sets
    /// `tcp_above` below that size goes over TCP.
    fn goes_over_tcp(&self, peer: &Peer, size: usize) -> bool {
        if peer.transport != Transport::Udp {
            return false;
        }
        let profile = &self.current.profile;
        profile
            .trunk_for(peer.listener, peer.addr.ip())
            .and_then(|trunk| profile.trunks[trunk].tcp_above)
            .is_some_and(|limit| size > limit)
            && profile
                .listeners
                .get(peer.listener)
                .is_some_and(|l| l.transports.contains(&Transport::Tcp))
    }

    /// Feeds a response to a client transaction; returns true when it must go up to the owner.
    pub(crate) fn client_response(&mut self, id: TxnId, response: &Message, now: Instant) -> bool {
        let Some(status) = response.status() else {
            return false;
        };
        let ack = self.hop_by_hop_ack(id, status, response);
        let ack = || {
            ack.map(|ack| Bytes::from(ack.to_bytes()))
                .unwrap_or_default()
        };
        let pass = self.txns.client_response(id, status, ack, now);
        self.drain_transactions(now);
        pass
    }

    /// Feeds an ACK to an INVITE server transaction; returns true when it acknowledged a 2xx.
    pub(crate) fn server_ack(&mut self, id: TxnId, now: Instant) -> bool {
        let acked_2xx = self.txns.server_ack(id, now);
        self.drain_transactions(now);
        acked_2xx
    }

    /// A request retransmission matched a server transaction.
    pub(crate) fn server_retransmission(&mut self, id: TxnId, now: Instant) {
        self.txns.server_retransmission(id);
        self.drain_transactions(now);
    }
}
