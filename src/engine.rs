//! The sans-IO engine of one shard, driven by the tokio runtime in production and by the replay
//! harness and tests on virtual time.
//!
//! Shaped like quinn-proto's `Endpoint`: `handle_*` for what happened (a datagram, a parsed
//! message, the clock reaching a deadline, a media event, a transport error), then
//! `poll_transmit` / `poll_timeout` / `poll_media` for what the driver must do now. The engine
//! owns the transaction layer (`transactions`: the table, indexes and timers, emitting events)
//! and the call layer (`call::Calls`), turns each input into a typed [`CallInput`], lends the
//! call layer the transaction table for it, and drains the transactions' events afterwards:
//! bytes to send, and timeouts that go back to the call layer as inputs. It never touches a
//! socket, a clock or a file.

use crate::admission::{is_new_call, Admission, AdmissionStats, Arrival, Verdict};
use crate::call::admin::{CallSummary, CallsSnapshot};
use crate::call::join::CallNote;
use crate::call::record::{CallRecord, Link};
use crate::call::{CallInput, Calls, ClientOwner, Txns};
use crate::config::Profile;
use crate::lookup::{LookupAnswer, LookupRequest};
use crate::media::{MediaCallId, MediaCommand, MediaEvent};
use crate::overload::{Cause, Gate, Throttle};
use crate::script::RuleSet;
use crate::shared::{EngineStats, MessageCounts, Peer, Transmit};
use crate::sip::header::branch_of;
use crate::sip::transaction::TimerConfig;
use crate::sip::{parse_message, Fault, Framing, HeaderName, Message};
use crate::transactions::{server_key, TxnEvent};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A question or an order from the admin API for one shard.
#[derive(Clone, Debug)]
pub enum AdminQuery {
    Snapshot,
    Calls,
    /// The call with this A-leg or B-leg Call-ID.
    Call(String),
    /// Hang up the call with this A-leg or B-leg Call-ID.
    HangUp(String),
}

/// A shard's answer to an [`AdminQuery`].
#[derive(Clone, Debug)]
pub enum AdminAnswer {
    Snapshot(Box<ShardSnapshot>),
    Calls(Vec<CallSummary>),
    Call(Option<Box<CallSummary>>),
    /// Whether the shard had the call.
    HungUp(bool),
}

/// What one shard tells the metrics about itself.
#[derive(Clone, Debug, Default)]
pub struct ShardSnapshot {
    pub stats: EngineStats,
    pub admission: AdmissionStats,
    pub overload_refused: u64,
    pub calls: CallsSnapshot,
}

/// What the engine itself counts (the call layer counts the rest).
#[derive(Clone, Copy, Debug, Default)]
struct Traffic {
    messages_in: u64,
    messages_out: u64,
    unparsable: u64,
    transport_errors: u64,
    by_kind: MessageCounts,
}

/// The sans-IO SIP engine of one shard.
pub struct Engine {
    /// What a message must pass before the call layer sees it.
    admission: Admission,
    /// Shards in the process (each takes its share of a source's rates).
    shards: usize,
    /// Overload control: which new calls get 503 at once.
    overload: Gate,
    /// The transactions, their indexes and timers.
    txns: Txns,
    /// The calls, their dialogs and the rule-set version new calls take.
    calls: Calls,
    transmits: VecDeque<Transmit>,
    traffic: Traffic,
}

impl Engine {
    /// An engine for shard `shard` of `shards`, running one rule-set version (a profile and
    /// its rules compiled for this shard).
    pub fn new(rules: Arc<RuleSet>, shard: usize, shards: usize) -> Engine {
        Engine {
            admission: Admission::default(),
            shards: shards.max(1),
            overload: Gate::default(),
            txns: Txns::new(TimerConfig::default()),
            calls: Calls::new(rules, shard, shards),
            transmits: VecDeque::new(),
            traffic: Traffic::default(),
        }
    }

    /// Makes the media port pool bind each port before handing it out (the runtime's relay
    /// keeps the sockets); without a binder ports are only numbers, as in the replay harness.
    pub fn set_port_binder(&mut self, binder: Box<dyn crate::media::PortBinder>) {
        self.calls.set_port_binder(binder);
    }

    /// What the engine did so far.
    pub fn stats(&self) -> EngineStats {
        let calls = self.calls.stats();
        EngineStats {
            messages_in: self.traffic.messages_in,
            messages_out: self.traffic.messages_out,
            malformed: self.traffic.unparsable + calls.malformed,
            transport_errors: self.traffic.transport_errors,
            messages: self.traffic.by_kind,
            ..calls
        }
    }

    /// Makes `rules` the version new calls take. Calls in progress finish on theirs.
    pub fn reload(&mut self, rules: Arc<RuleSet>) {
        self.calls.reload(rules);
    }

    /// The version new calls take.
    pub fn version(&self) -> u64 {
        self.calls.current().version
    }

    /// Calls in progress per rule-set version, oldest first.
    pub fn calls_by_version(&self) -> Vec<(u64, usize)> {
        self.calls.by_version()
    }

    /// The next command for the media relay (streams to relay, calls to close).
    pub fn poll_media(&mut self) -> Option<MediaCommand> {
        self.calls.poll_media()
    }

    /// A media event the relay reported for a call (by its relay id); see
    /// [`Engine::handle_media_event`].
    pub fn handle_relay_event(&mut self, call: MediaCallId, event: &MediaEvent, now: Instant) {
        if let Some(key) = self.calls.relayed(call) {
            self.handle(CallInput::Media { call: key, event }, now);
        }
    }

    /// A media event (a DTMF digit, an RTP timeout, a quality report) for the call whose A-leg
    /// Call-ID is `call_id` (the newest such call, when a caller reused its Call-ID), as the
    /// relay would report it: `on_media` hears it, then the digit goes on or the timed-out
    /// call is hung up. Returns false when no such call exists.
    pub fn handle_media_event(&mut self, call_id: &str, event: &MediaEvent, now: Instant) -> bool {
        let Some(key) = self.calls.newest(call_id) else {
            return false;
        };
        self.handle(CallInput::Media { call: key, event }, now);
        true
    }

    /// The relay's id of the newest call whose A-leg Call-ID is `call_id`.
    pub(crate) fn media_call(&self, call_id: &str) -> Option<MediaCallId> {
        self.calls
            .newest(call_id)
            .map(|key| self.calls.media_call_id(key))
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
        &self.calls.current().profile
    }

    /// Makes every random value from now on (tags, branches, Call-IDs, SRTP keys) follow
    /// `seed`: the replay harness repeats a run byte for byte.
    pub fn seed_random(&mut self, seed: u64) {
        self.calls.seed_random(seed);
    }

    /// A datagram (UDP) arrived from `from`.
    pub fn handle_datagram(&mut self, bytes: Bytes, from: Peer, now: Instant) {
        match parse_message(&bytes, Framing::Datagram) {
            Ok((msg, _)) => self.handle_message(msg, from, now, now),
            Err(err) => self.handle_malformed(err, from, now),
        }
    }

    /// A message arrived that could not be parsed as it is: answer it if it is a request that
    /// can be answered, drop it otherwise.
    pub fn handle_malformed(&mut self, err: crate::sip::ParseError, from: Peer, now: Instant) {
        self.traffic.messages_in += 1;
        let stranger = self
            .calls
            .current()
            .profile
            .trunk_for(from.listener, from.addr.ip())
            .is_none();
        if stranger && self.admission.banned(from, now) {
            return;
        }
        self.admission
            .malformed(from, &self.calls.current().profile, now);
        self.traffic.unparsable += 1;
        tracing::debug!(peer = %from.addr, fault = %err.fault, "malformed message");
        if let Some(partial) = err.partial {
            let input = CallInput::Unparsable {
                partial: *partial,
                fault: err.fault,
                from,
            };
            self.handle(input, now);
        }
    }

    /// A parsed message arrived from `from` at `received` (it waited for the shard until
    /// `now`).
    pub fn handle_message(&mut self, msg: Message, from: Peer, received: Instant, now: Instant) {
        self.traffic.messages_in += 1;
        let counts = &mut self.traffic.by_kind;
        match &msg.start {
            crate::sip::StartLine::Request { method, .. } => {
                counts.count_request(false, from.transport, method.as_str().as_bytes())
            }
            crate::sip::StartLine::Response { status, .. } => {
                counts.count_response(false, from.transport, *status)
            }
        }
        let new_call = self.new_call(&msg, from);
        let profile = (&*self.calls.current().profile, self.shards);
        let arrival = Arrival {
            from,
            new_call,
            known_dialog: self.calls.knows_dialog(&msg),
        };
        // Admission first (bans, scanners, rates: a flood's source is counted and banned even
        // while the shard is overloaded), then overload control for what admission passes.
        let fault = match self.admission.check(&msg, arrival, profile, now) {
            Verdict::Drop => return,
            Verdict::Refuse(fault) => Some(fault),
            Verdict::Pass if new_call => self
                .refused_for_overload(now.saturating_duration_since(received), now)
                .then_some(Fault::Overloaded),
            Verdict::Pass => None,
        };
        let input = match fault {
            Some(fault) => CallInput::Unparsable {
                partial: msg,
                fault,
                from,
            },
            None => CallInput::Message { msg, from },
        };
        self.handle(input, now);
    }

    /// Whether `msg` starts a new call: an INVITE outside a dialog that is no retransmission
    /// of one under way (no server transaction has it yet).
    fn new_call(&self, msg: &Message, from: Peer) -> bool {
        is_new_call(msg)
            && msg
                .method()
                .and_then(|method| server_key(msg, method, &from))
                .is_none_or(|key| self.txns.find_server(&key).is_none())
    }

    /// The driver's view of the shard's load (the profile's `overload` queue, CPU and calls
    /// limits): which new calls get 503 with Retry-After before anything else is done for
    /// them, while in-dialog requests and responses go on.
    pub fn set_throttle(&mut self, throttle: Throttle, now: Instant) {
        let was = self.overload.refusing(now);
        self.overload.set(throttle);
        let cause = if throttle.shut {
            Some(Cause::Limit)
        } else {
            (throttle.share < 1.0).then_some(Cause::Cpu)
        };
        self.log_overload(was, cause, now);
    }

    /// Whether a new call that waited `waited` for the shard is refused for overload.
    fn refused_for_overload(&mut self, waited: Duration, now: Instant) -> bool {
        let limit = self.calls.current().profile.overload.queue_delay_ms;
        let was = self.overload.refusing(now);
        let cause = self
            .overload
            .check(waited, Duration::from_millis(limit.into()), now);
        self.log_overload(was, cause, now);
        cause.is_some()
    }

    /// Logs when the shard starts or stops refusing new calls.
    fn log_overload(&self, was: bool, cause: Option<Cause>, now: Instant) {
        let overloaded = self.overload.refusing(now);
        if overloaded != was {
            tracing::warn!(
                overloaded,
                ?cause,
                refused = self.overload.refused,
                calls = self.calls.len(),
                "overload"
            );
        }
    }

    /// New calls refused for overload so far.
    pub fn overload_refused(&self) -> u64 {
        self.overload.refused
    }

    /// What admission refused so far (rates, scanners, oversized requests, bans).
    pub fn admission_stats(&self) -> AdmissionStats {
        self.admission.stats()
    }

    /// Answers the admin API: the shard's counters and calls, one call, or hangs one up (its
    /// BYEs or CANCEL are then waiting in [`Engine::poll_transmit`]).
    pub fn admin(&mut self, query: AdminQuery, now: Instant) -> AdminAnswer {
        match query {
            AdminQuery::Snapshot => AdminAnswer::Snapshot(Box::new(ShardSnapshot {
                stats: self.stats(),
                admission: self.admission_stats(),
                overload_refused: self.overload_refused(),
                calls: self.calls.snapshot(),
            })),
            AdminQuery::Calls => AdminAnswer::Calls(self.calls.summaries(now)),
            AdminQuery::Call(id) => AdminAnswer::Call(self.calls.find(&id, now).map(Box::new)),
            AdminQuery::HangUp(id) => {
                let had = self
                    .calls
                    .with(&mut self.txns)
                    .hang_up_by_operator(&id, now);
                self.drain_transactions(now);
                AdminAnswer::HungUp(had)
            }
        }
    }

    /// The clock reached a deadline returned by [`Engine::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        while self.txns.fire_next_timer(now) {
            self.drain_transactions(now);
        }
        while let Some((call, timer)) = self.calls.next_call_timer(now) {
            self.handle(CallInput::Timer { call, timer }, now);
        }
        while let Some(id) = self.calls.next_lookup_timeout(now) {
            self.handle(CallInput::LookupAnswer { id, answer: None }, now);
        }
        if self.calls.poll_drain().is_some_and(|at| at <= now) {
            self.calls.with(&mut self.txns).end_drained_calls(now);
            self.drain_transactions(now);
        }
        if self.calls.poll_keepalive().is_some_and(|at| at <= now) {
            self.calls.with(&mut self.txns).send_keepalives(now);
            self.drain_transactions(now);
        }
    }

    /// The engine starts at `now`: the keepalive shard sends its first OPTIONS at once.
    pub fn start(&mut self, now: Instant) {
        self.calls.start_keepalives(now);
        self.handle_timeout(now);
    }

    /// Starts a graceful drain: from now on new calls and OPTIONS get `503` with
    /// `Retry-After`; the calls in progress go on until `deadline`, when Bridgehead ends them
    /// (BYE with a Reason, or 503 and CANCEL before the answer).
    pub fn drain(&mut self, deadline: Instant) {
        self.calls.start_drain(deadline);
    }

    /// The engine drains, has no call left and waits for no answer to a request of a call
    /// (the BYEs that ended them).
    pub fn drained(&self) -> bool {
        self.calls.drained()
            && self
                .txns
                .clients_waiting(|owner| !matches!(owner, ClientOwner::Keepalive { .. }))
                == 0
    }

    /// The health of the trunks' peers, as the keepalives tell it.
    pub fn peer_health(&self) -> &Arc<crate::shared::PeerHealth> {
        self.calls.peer_health()
    }

    /// Makes this engine count its calls per trunk in `loads`, shared with the other shards
    /// (each trunk's `max_calls` and `max_cps` are process-wide).
    pub fn share_trunk_loads(&mut self, loads: Arc<crate::shared::TrunkLoads>) {
        self.calls.share_trunk_loads(loads);
    }

    /// Makes this engine's bans every holder's of `bans` (the other shards, and with a
    /// cluster the other instances), and theirs its own.
    pub fn share_bans(&mut self, bans: Arc<crate::shared::SharedBans>) {
        self.admission.share_bans(bans);
    }

    /// Makes this engine read (and, on shard 0, write) `health`, shared with the other
    /// shards.
    pub fn share_peer_health(&mut self, health: Arc<crate::shared::PeerHealth>) {
        self.calls.share_peer_health(health);
    }

    /// The driver could not send `transmit` (RFC 3261 §18.4: a transport error, such as a
    /// datagram too big, a refused or reset connection). A request's client transaction ends
    /// as if the far end answered 503 (§8.1.3.1): the call fails over (`on_failure` sees the
    /// 503) or the caller hears 503 at once, instead of waiting for Timer B.
    pub fn handle_transport_error(&mut self, transmit: &Transmit, error: &str, now: Instant) {
        self.traffic.transport_errors += 1;
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
            .and_then(branch_of)
            .and_then(|branch| self.txns.find_client(branch, &method));
        let Some(id) = client else {
            tracing::warn!(%peer, %method, "cannot send: {error}");
            return;
        };
        tracing::warn!(%peer, %method, "cannot send: {error}: the request fails with 503");
        self.calls
            .with(&mut self.txns)
            .handle(CallInput::ClientFailed { id, status: 503 }, now);
        self.txns.abandon_client(id);
        self.drain_transactions(now);
    }

    /// The next instant at which [`Engine::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.txns.poll_timeout(),
            self.calls.poll_call_timer(),
            self.calls.poll_keepalive(),
            self.calls.poll_lookup_timeout(),
            self.calls.poll_drain(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next request for a lookup's consultation service: the driver asks it and hands the
    /// answer to [`Engine::handle_lookup_answer`] (a call waits for it, up to the request's
    /// timeout, after which the engine goes on without it).
    pub fn poll_lookup(&mut self) -> Option<LookupRequest> {
        self.calls.poll_lookup()
    }

    /// The consultation service answered the lookup request `id`.
    pub fn handle_lookup_answer(&mut self, id: u64, answer: LookupAnswer, now: Instant) {
        let answer = Some(answer);
        self.handle(CallInput::LookupAnswer { id, answer }, now);
    }

    /// The next stream connection the driver must close (a peer answered an INVITE 503).
    pub fn poll_close(&mut self) -> Option<Peer> {
        self.calls.poll_close()
    }

    /// The next note for another shard (an attended transfer joins calls of two shards):
    /// the driver hands it to that shard's [`Engine::handle_note`].
    pub fn poll_note(&mut self) -> Option<(usize, CallNote)> {
        self.calls.poll_note()
    }

    /// From now on every call that ends leaves a record for [`Engine::poll_record`].
    pub fn keep_records(&mut self) {
        self.calls.keep_records();
    }

    /// The record of a call that ended (CDRs, per-trunk metrics), once asked for.
    pub fn poll_record(&mut self) -> Option<CallRecord> {
        self.calls.poll_record()
    }

    /// From now on the engine tells which call each B-leg Call-ID it makes belongs to, and
    /// when calls end ([`Engine::poll_link`]): SIP capture's correlation.
    pub fn keep_links(&mut self) {
        self.calls.keep_links();
    }

    /// A link, to be handed to capture before the transmits that follow it.
    pub fn poll_link(&mut self) -> Option<Link> {
        self.calls.poll_link()
    }

    /// From now on answered calls' state is kept for the cluster ([`Engine::replicate`],
    /// [`Engine::poll_replica`]).
    pub fn keep_replicas(&mut self) {
        self.calls.keep_replicas();
    }

    /// Queues the state of every answered call that changed since it was last queued.
    pub fn replicate(&mut self, now: Instant) {
        self.calls.replicate(now);
    }

    /// Carries on a call a dead instance of the cluster carried (`Calls::restore`).
    pub fn take_over(
        &mut self,
        snapshot: crate::call::replica::CallSnapshot,
        now: Instant,
    ) -> Result<(), String> {
        self.calls.restore(snapshot, now)
    }

    /// Queued call state for the cluster's writer, oldest first.
    pub fn poll_replica(&mut self) -> Option<crate::call::replica::Replica> {
        self.calls.poll_replica()
    }

    /// A note from another shard's [`Engine::poll_note`].
    pub fn handle_note(&mut self, note: CallNote, now: Instant) {
        self.handle(CallInput::Note(note), now);
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Hands one input to the call layer, lending it the transaction table, then drains what
    /// the transactions did.
    fn handle(&mut self, input: CallInput<'_>, now: Instant) {
        self.calls.with(&mut self.txns).handle(input, now);
        self.drain_transactions(now);
    }

    /// Takes what the transactions did, in order: bytes to send go to the driver, timeouts go
    /// back to the call layer (whose answers queue more events, drained in the same loop), and
    /// transactions that ended are forgotten once the events before theirs were handled.
    fn drain_transactions(&mut self, now: Instant) {
        loop {
            self.drain_events(now);
            // Notes a shard writes itself (both calls of an attended transfer are its own)
            // are handled at once, as if another shard had sent them.
            let Some(note) = self.calls.take_own_note() else {
                return;
            };
            self.calls
                .with(&mut self.txns)
                .handle(CallInput::Note(note), now);
        }
    }

    /// The transactions' events, as [`Engine::drain_transactions`] takes them.
    fn drain_events(&mut self, now: Instant) {
        while let Some(event) = self.txns.poll_event() {
            let input = match event {
                TxnEvent::Transmit(transmit) => {
                    self.traffic.messages_out += 1;
                    let start = &transmit.bytes[..transmit.bytes.len().min(16)];
                    self.traffic
                        .by_kind
                        .count(true, transmit.peer.transport, start);
                    self.transmits.push_back(transmit);
                    continue;
                }
                TxnEvent::ServerTimedOut(id) => CallInput::ServerTimedOut(id),
                TxnEvent::ServerUnacknowledged(id) => CallInput::ProvisionalUnacknowledged(id),
                TxnEvent::ClientTimedOut(id) => CallInput::ClientFailed { id, status: 408 },
                TxnEvent::ServerEnded(_) | TxnEvent::ClientEnded(_) => {
                    self.txns.forget(&event);
                    continue;
                }
            };
            self.calls.with(&mut self.txns).handle(input, now);
        }
    }
}
