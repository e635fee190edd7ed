//! The B2BUA: a call is two dialogs (the A-leg toward the caller, the B-leg toward the callee)
//! joined by the engine. Each leg has its own Call-ID, tags, Via, Contact and CSeq space; what
//! crosses from one leg to the other is the body and the headers the trunk's policy lets through
//! (after the Lua rules ran). Topology headers (Via, Contact, Record-Route, Route, Call-ID) never
//! cross.
//!
//! One file per flow: `setup` (requests outside a dialog, a new INVITE, routing and failover),
//! `responses` (the B-leg INVITE's responses and relayed ones), `reliable` (100rel and PRACK
//! on each leg), `precondition` (QoS preconditions terminated for the caller), `in_dialog` (ACK, BYE, re-INVITE, UPDATE, INFO...), `cancel`, `offer_answer` (SDP, media anchoring, local ringback),
//! `dtmf`, `egress` (hooks and header policy on what is sent), `ending` (timeouts, failures,
//! the end of a call); `build` makes the messages.
//!
//! The engine owns the call layer's state ([`Calls`]) and the transaction table, and drives
//! the call layer with typed inputs ([`CallInput`]): for each one it lends the table
//! ([`Calls::with`] makes the [`B2bua`] at work on that input). What the call layer does goes
//! out as the transaction table's events (responses, requests and stateless answers to send,
//! timers armed) and as media commands ([`Calls::poll_media`]). `call` never names the engine.

pub mod admin;
pub mod build;
mod cancel;
mod drain;
mod dtmf;
mod egress;
mod ending;
mod failover;
mod in_dialog;
mod inputs;
pub mod join;
mod keepalive;
mod lookups;
mod offer_answer;
mod precondition;
pub mod record;
mod reliable;
pub mod replica;
mod responses;
mod session_timer;
mod setup;
mod table;
#[cfg(test)]
mod tests;
mod transactions;
mod transfer;

use crate::config::{
    DelayedOffer, EarlyMedia, HeaderPolicy, MultipartPolicy, ReferPolicy, Rel100,
    ScriptErrorPolicy, TrunkId,
};
use crate::media::{DtmfMethod, LegQuality, MediaCallId, MediaCommand, MediaEvent, PortPool};
use crate::script::{
    CallEndInfo, Hook, HookArgs, HookCall, HookMessage, InviteRun, RouteDecision, RuleSet,
    ScriptId, SharedSdp,
};
use crate::sdp::Sdp;
use crate::shared::{shard_for_call_id, EngineStats, Leg, Peer, Transmit, TxnId};
use crate::sip::check::{check_request, check_response, RequestInfo};
use crate::sip::header::split_list;
use crate::sip::transaction::ClientState;
use crate::sip::uri::{Scheme, Uri};
use crate::sip::{response_to, Fault, HeaderName, Message, Method, StartLine};
use crate::transactions::{server_key, Transactions};
use build::{
    contact_value, copy_crossing, dialog_request, has_option, option_tags, tag_of, uri_of, user_of,
    via_value, without_tag, ACCEPT, ALLOW,
};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use session_timer::{CallTimer, Refresher, SessionTimer};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Serial failover attempts one call may make from `on_failure`.
const MAX_ATTEMPTS: u8 = 5;

/// Identifies a call inside one engine.
pub type CallKey = u64;

/// Who waits for a server transaction's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerOwner {
    /// Answered locally.
    Local,
    /// The INVITE that created a call.
    Invite(CallKey),
    /// An in-dialog request relayed to the other leg.
    Dialog(CallKey, Leg),
    /// The INVITE of a new call whose `on_invite` waits for lookup request `id`.
    Lookup(u64),
}

/// Who waits for a client transaction's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientOwner {
    /// The B-leg INVITE of a call.
    Invite(CallKey),
    /// An in-dialog request relayed from the other leg's server transaction.
    Relay { call: CallKey, server: TxnId },
    /// A request Bridgehead sent on its own (CANCEL, BYE): nobody waits.
    Local,
    /// Bridgehead's session refresh (UPDATE, or re-INVITE toward a leg that takes no UPDATE)
    /// of a call's leg: a failure ends the call.
    Refresh(CallKey, Leg),
    /// An OPTIONS keepalive to a trunk peer (by its monitor id), sent at `sent`: the outcome
    /// is its health and round trip.
    Keepalive { id: u32, sent: Instant },
    /// The INVITE toward a transfer's target (Bridgehead the transferee).
    Transfer(CallKey),
    /// A NOTIFY telling the transferor how its transfer goes.
    TransferNotify(CallKey),
}

/// The transaction table as the call layer uses it: who waits for each transaction.
pub(crate) type Txns = Transactions<ServerOwner, ClientOwner>;

/// What happened that concerns the call layer, as the engine hands it over.
pub(crate) enum CallInput<'e> {
    /// A request or response arrived from `from`.
    Message { msg: Message, from: Peer },
    /// A request that could not be parsed whole (`partial` is what could be): answered
    /// statelessly with the fault's status when it can be.
    Unparsable {
        partial: Message,
        fault: Fault,
        from: Peer,
    },
    /// A server transaction timed out (a final response never acknowledged).
    ServerTimedOut(TxnId),
    /// A reliable provisional response of a server transaction never got its PRACK.
    ProvisionalUnacknowledged(TxnId),
    /// A client transaction failed without a response: 408 when it timed out, 503 when the
    /// transport could not send it.
    ClientFailed { id: TxnId, status: u16 },
    /// The media relay reported an event for a call.
    Media {
        call: CallKey,
        event: &'e MediaEvent,
    },
    /// A call's timer fired (session timers).
    Timer { call: CallKey, timer: CallTimer },
    /// A consultation service answered lookup request `id` (None: its time ran out).
    LookupAnswer {
        id: u64,
        answer: Option<crate::lookup::LookupAnswer>,
    },
    /// A note from a shard (this one included) about joined calls.
    Note(join::CallNote),
}

/// The call layer of one shard: its calls and their dialogs, the rule-set version new calls
/// take, the identifiers it makes, its media ports and counters.
pub(crate) struct Calls {
    current: Arc<RuleSet>,
    shard: usize,
    shards: usize,
    by_key: table::CallTable,
    /// The dialog of each leg ([`dialog_key`]) → the call and which leg it is.
    dialogs: HashMap<String, (CallKey, Leg)>,
    /// Call keys, transaction ids, and the tail of Bridgehead's Call-IDs.
    next_id: u64,
    /// Tags, branches, Call-IDs and SRTP keys come from here (RFC 3261 §19.3: cryptographically
    /// random tags).
    random: StdRng,
    stats: EngineStats,
    /// This shard's media ports (when the profile anchors media).
    media_ports: Option<PortPool>,
    /// What the relay must do, in order.
    media_commands: VecDeque<MediaCommand>,
    /// Session timers of the calls, by deadline (then the order they were armed in); a
    /// timer re-armed since, or of a call that ended, is dropped when it comes up.
    call_timers: std::collections::BTreeMap<(Instant, u64), (CallKey, CallTimer)>,
    timer_seq: u64,
    /// The OPTIONS keepalives this shard sends (shard 0 only).
    monitor: Option<keepalive::PeerMonitor>,
    /// The trunks' peers' health, shared by the shards.
    health: Arc<crate::shared::PeerHealth>,
    /// Stream connections the transport must close (toward peers that answered 503).
    closes: VecDeque<Peer>,
    /// New calls whose `on_invite` waits for an HTTP lookup.
    waiting: lookups::Waiting,
    /// Notes about joined calls (attended transfers) for a shard, this one included.
    notes: VecDeque<(usize, join::CallNote)>,
    /// The records of calls that ended, when the driver asked for them.
    records: Option<VecDeque<record::CallRecord>>,
    /// The links of captured messages to their calls, when the driver asked for them.
    links: Option<VecDeque<record::Link>>,
    /// Answered calls' state for the cluster, when the driver asked for it.
    replicas: Option<replica::Replicas>,
    /// The drain under way (SIGTERM), if any.
    draining: Option<drain::Drain>,
    /// The trunks' calls and call rates, shared by the shards.
    loads: Arc<crate::shared::TrunkLoads>,
}

/// The call layer at work on one input: the shard's calls, and the transaction table the
/// engine lends it for that input.
pub(crate) struct B2bua<'a> {
    calls: &'a mut Calls,
    txns: &'a mut Txns,
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

impl Calls {
    /// The call layer of shard `shard` of `shards`, new calls taking `rules`.
    pub fn new(rules: Arc<RuleSet>, shard: usize, shards: usize) -> Calls {
        let shards = shards.max(1);
        let media_ports = rules
            .profile
            .media
            .as_ref()
            .map(|media| PortPool::new(media.ports, shard, shards));
        let health = Arc::<crate::shared::PeerHealth>::default();
        rules.rules.set_peer_health(health.clone());
        let loads = Arc::<crate::shared::TrunkLoads>::default();
        rules.rules.set_trunk_loads(loads.clone());
        Calls {
            current: rules,
            shard,
            shards,
            by_key: table::CallTable::default(),
            dialogs: HashMap::new(),
            next_id: 1,
            random: os_seeded(),
            stats: EngineStats::default(),
            media_ports,
            media_commands: VecDeque::new(),
            call_timers: std::collections::BTreeMap::new(),
            timer_seq: 0,
            monitor: (shard == 0).then(keepalive::PeerMonitor::default),
            health,
            closes: VecDeque::new(),
            waiting: lookups::Waiting::default(),
            notes: VecDeque::new(),
            records: None,
            links: None,
            replicas: None,
            draining: None,
            loads,
        }
    }

    /// The call layer at work on one input, with the transaction table lent for it.
    pub fn with<'a>(&'a mut self, txns: &'a mut Txns) -> B2bua<'a> {
        B2bua { calls: self, txns }
    }

    /// Makes the media port pool bind each port before handing it out.
    pub fn set_port_binder(&mut self, binder: Box<dyn crate::media::PortBinder>) {
        let ahead = self
            .current
            .profile
            .media
            .as_ref()
            .map_or(0, |media| media.bound_ahead);
        if let Some(pool) = self.media_ports.as_mut() {
            pool.set_binder(binder, ahead);
        }
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
        self.current.rules.set_peer_health(self.health.clone());
        self.current.rules.set_trunk_loads(self.loads.clone());
        if let Some(monitor) = self.monitor.as_mut() {
            monitor.sync(&self.current.profile, &self.health);
        }
    }

    /// The rule-set version new calls take.
    pub fn current(&self) -> &Arc<RuleSet> {
        &self.current
    }

    /// What the call layer did so far.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Calls in progress.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Calls in progress per rule-set version, oldest first.
    pub fn by_version(&self) -> Vec<(u64, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for call in self.by_key.values() {
            *counts.entry(call.rules.version).or_insert(0) += 1;
        }
        counts.into_iter().collect()
    }

    /// The next command for the media relay.
    pub fn poll_media(&mut self) -> Option<MediaCommand> {
        self.media_commands.pop_front()
    }

    /// The next stream connection the transport must close.
    pub fn poll_close(&mut self) -> Option<Peer> {
        self.closes.pop_front()
    }

    /// Makes every random value from now on follow `seed`.
    pub fn seed_random(&mut self, seed: u64) {
        self.random = StdRng::seed_from_u64(seed);
    }

    /// The call the relay knows as `call`, when it is one of this shard's and still up.
    pub fn relayed(&self, call: MediaCallId) -> Option<CallKey> {
        (call.shard == self.shard && self.by_key.contains_key(&call.call)).then_some(call.call)
    }

    /// The relay's id of a call: unique across shards.
    pub fn media_call_id(&self, key: CallKey) -> MediaCallId {
        MediaCallId {
            shard: self.shard,
            call: key,
        }
    }

    /// Gives back the tables' room once a peak of calls is over (a call is a few KiB inline
    /// in its table).
    fn shrink_when_quiet(&mut self) {
        self.by_key.shrink_when_quiet();
        crate::shared::shrink_when_quiet(&mut self.dialogs);
    }

    /// Whether a request belongs to a dialog of this shard's calls (its Call-ID and To-tag).
    pub fn knows_dialog(&self, msg: &Message) -> bool {
        let Some(call_id) = msg.header_str(&HeaderName::CallId) else {
            return false;
        };
        let tag = msg.header_str(&HeaderName::To).and_then(tag_of);
        tag.is_some_and(|tag| {
            self.dialogs
                .contains_key(&dialog_key(call_id.trim(), Some(&tag)))
        })
    }

    /// The newest call whose A-leg Call-ID is `call_id`.
    pub fn newest(&self, call_id: &str) -> Option<CallKey> {
        self.by_key
            .iter()
            .filter(|(_, call)| call.id == call_id)
            .map(|(key, _)| *key)
            .max()
    }
}

/// One leg's dialog state, from Bridgehead's side.
#[derive(Clone, Debug)]
pub struct Dialog {
    pub trunk: TrunkId,
    /// Where requests on this leg go (the trunk peer, or where the caller's INVITE came from).
    pub peer: Peer,
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: Option<String>,
    /// Our party (From on our requests), without tag.
    pub local_party: String,
    /// Their party (To on our requests), without tag.
    pub remote_party: String,
    /// Request-URI of our requests: the peer's Contact.
    pub remote_target: String,
    pub route_set: Vec<String>,
    pub local_cseq: u32,
    pub remote_cseq: u32,
    /// CSeq of the last INVITE sent on this leg (its ACK uses it).
    pub invite_cseq: u32,
    /// Bridgehead's Contact on this leg.
    pub contact: String,
    /// The peer takes UPDATE: false once its Allow (in its INVITE, or in a response that
    /// makes the dialog) lists methods without it.
    pub allows_update: bool,
}

/// False when a message's Allow lists methods and UPDATE is not among them (no Allow says
/// nothing, RFC 3261 §20.5).
fn allows_update(msg: &Message) -> bool {
    msg.header(&HeaderName::Allow).is_none() || has_option(msg, &HeaderName::Allow, "UPDATE")
}

/// An ACK Bridgehead is waiting for: a 2xx to an INVITE was sent on `from`.
#[derive(Clone, Copy, Debug)]
struct PendingAck {
    from: Leg,
    server: TxnId,
}

/// Where a call stands in its life (a call that ended is forgotten).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallState {
    /// The B-leg INVITE is out; the callee sent no provisional response yet.
    Calling,
    /// The callee sent a provisional response (100 Trying, or ringing, perhaps with early
    /// media): a CANCEL may now go to it.
    Proceeding,
    /// The caller cancelled before the answer. `cancel_sent`: the CANCEL went to the callee
    /// (it had sent a provisional); otherwise it goes with the callee's first provisional
    /// (RFC 3261 §9.1).
    Cancelled { cancel_sent: bool },
    /// The callee answered (2xx) at this instant.
    Answered { at: Instant },
}

impl CallState {
    /// True once the callee sent a provisional response (a CANCEL may go to it).
    fn rang(self) -> bool {
        matches!(
            self,
            CallState::Proceeding | CallState::Cancelled { cancel_sent: true }
        )
    }

    fn is_cancelled(self) -> bool {
        matches!(self, CallState::Cancelled { .. })
    }

    /// The callee sent a provisional response: the next state, and whether the CANCEL the
    /// caller asked for before must go to the callee now.
    fn provisional(self) -> (CallState, bool) {
        match self {
            CallState::Calling => (CallState::Proceeding, false),
            CallState::Cancelled { cancel_sent: false } => {
                (CallState::Cancelled { cancel_sent: true }, true)
            }
            other => (other, false),
        }
    }

    /// The caller cancelled: the next state, and whether the CANCEL goes to the callee now
    /// (only once it sent a provisional response).
    fn cancel(self) -> (CallState, bool) {
        let now = self.rang();
        (CallState::Cancelled { cancel_sent: now }, now)
    }
}

/// A call: two legs and where it stands.
pub struct Call {
    /// The A-leg Call-ID, used in logs and as `call.id` in rules.
    pub id: String,
    /// When the caller's INVITE came, and the callee's first ringing (any attempt's).
    started: Instant,
    rang_at: Option<Instant>,
    pub ingress: TrunkId,
    /// The rule-set version the call started on; it keeps it to the end.
    pub rules: Arc<RuleSet>,
    pub script: Option<ScriptId>,
    /// `call.vars`, once a hook used them.
    vars: Option<mlua::Table>,
    /// The B-leg INVITE as `on_invite` left it (and the headers it edited), kept when the
    /// script has `on_failure` so the call can be routed again.
    b_template: Option<(Message, Vec<HeaderName>)>,
    /// B-leg INVITEs sent so far (serial failover).
    attempts: u8,
    state: CallState,
    /// The final status the caller got for its INVITE, once it got one.
    a_final: Option<u16>,
    /// Anchored media streams, by m= line.
    streams: Vec<crate::media::Stream>,
    /// Each leg's last quality report (A, B).
    pub(crate) quality: [Option<LegQuality>; 2],
    /// The Reason header (RFC 3326) of the BYE or CANCEL that ended the call, or of the BYE
    /// Bridgehead sent when it ended it.
    end_reason: Option<String>,
    /// The answer Bridgehead gave the caller's offer itself (local ringback): every later
    /// answer to the caller's INVITE repeats it (one answer per offer, RFC 3261 §13.3.1.1).
    local_answer: Option<Bytes>,
    pub a: Dialog,
    pub b: Dialog,
    a_invite: TxnId,
    b_invite: TxnId,
    /// An INVITE of the call (the first, or a re-INVITE) waits for its final response: a
    /// second one gets 491.
    invite_pending: bool,
    pending_ack: Option<PendingAck>,
    /// The last end-to-end ACK sent, by leg, repeated when a 2xx is retransmitted.
    last_ack: Option<(Leg, Bytes)>,
    /// An SDP of the call could not be anchored and went out as it came: its media flows end
    /// to end, and no later SDP of the call is anchored either.
    unanchored: bool,
    /// Why the SDP just built could not be anchored, when the profile refuses such calls
    /// (`media.no_ports: refuse`); the B-leg INVITE is then not sent.
    media_refused: Option<crate::media::AnchorError>,
    /// Reliable provisional responses toward the caller (RFC 3262), when its leg uses them.
    a_reliable: Option<ReliableProvisionals>,
    /// The RSeq of the last reliable provisional response each fork of the callee (by its
    /// To-tag) sent and Bridgehead PRACKed: each fork has its own RSeq space.
    b_rseqs: Vec<(String, u32)>,
    /// Forks of the callee that answered after another one had: ACKed and hung up (their 2xx
    /// retransmissions are only ACKed again).
    b_forks_ended: Vec<String>,
    /// The early-media handling a rule chose for this call (else the caller's trunk's).
    early_media: Option<EarlyMedia>,
    /// The Contact host a rule chose for each leg (`call:set_contact_host`), by leg index.
    contact_hosts: [Option<String>; 2],
    /// The caller made no offer and the callee got Bridgehead's own (`delayed_offer:
    /// convert`): the callee's answer is the caller's offer, and the caller's answer stays
    /// here.
    own_offer: bool,
    /// Each leg's session timer (RFC 4028), by leg index.
    session: [Option<SessionTimer>; 2],
    /// Each leg's session timer armed last (its key in the call timers): the only one that
    /// counts.
    session_due: [Option<(Instant, u64)>; 2],
    /// The SDP of the callee's first reliable provisional response with one: what the 2xx to
    /// the caller carries when the callee's has none and the caller made no offer (it is its
    /// offer) or got that SDP only in an unreliable provisional (its answer is repeated).
    b_early_sdp: Option<Bytes>,
    /// The RAck of the callee's reliable provisional with an offer, not PRACKed until the
    /// caller answers that offer in its own PRACK.
    b_prack_deferred: Option<String>,
    /// The caller's offer was withheld from the callee (`delayed_offer: always`): the callee
    /// offers in its response, and Bridgehead answers both.
    offer_withheld: bool,
    /// With the offer withheld: Bridgehead's answer to the caller's offer, made from the
    /// callee's offer (every response with SDP, and the 2xx, carries it).
    caller_answer: Option<Bytes>,
    /// With the offer withheld: Bridgehead's answer to the callee's offer, until it goes in
    /// the PRACK of the provisional that carried the offer, or the ACK of the 2xx.
    callee_answer_due: Option<Bytes>,
    /// The callee's INVITE was sent again after a 422 (once).
    min_se_retried: bool,
    /// The callee sent a provisional response other than 100: the call no longer fails over
    /// to another peer (it would ring twice).
    b_rang: bool,
    /// The peers of the trunk this call's INVITE went to and that failed.
    tried: Vec<SocketAddr>,
    /// The failover timer armed for the current INVITE (its key in the call timers).
    failover_due: Option<(Instant, u64)>,
    /// The last SDP Bridgehead sent on each leg (by leg index): the offer of its own
    /// re-INVITE refreshing that leg's session.
    last_sdp: [Option<Bytes>; 2],
    /// The caller's QoS preconditions, when Bridgehead terminates them.
    preconditions: Option<precondition::CallerPreconditions>,
    /// A transfer a peer asked for (REFER), while it goes on.
    refer: Option<transfer::Refer>,
    /// The call an attended transfer joined this one with.
    joined: Option<join::Join>,
    /// The call counted on each leg's trunk (by leg index), until it ends.
    seats: [Option<crate::shared::TrunkSeat>; 2],
}

/// Bridgehead's reliable provisional responses on the A-leg (RFC 3262 §3): whether they are
/// in use yet, their RSeq space, the one waiting for its PRACK, and those that wait their turn
/// (a second reliable provisional may not go before the first is acknowledged).
#[derive(Debug, Default)]
struct ReliableProvisionals {
    /// Provisionals go reliably from now on: from the start when the caller requires it (or
    /// the trunk does), else from the callee's first reliable provisional.
    active: bool,
    /// The RSeq of the last one sent.
    rseq: u32,
    /// The CSeq number of the caller's INVITE (a PRACK's RAck names it).
    invite_cseq: u32,
    /// The last one sent waits for its PRACK.
    awaiting: bool,
    /// The RAck of the callee's reliable provisional whose offer the one waiting carries:
    /// the callee's PRACK goes with the caller's answer (RFC 3262 §5).
    b_prack: Option<String>,
    /// The one waiting carries SDP: a 2xx may not go before its PRACK (RFC 3262 §3).
    awaiting_sdp: bool,
    /// A 2xx to the caller held until then.
    held_final: Option<Message>,
    queued: VecDeque<Message>,
}

/// The key of a dialog in [`Calls::dialogs`]: its Call-ID and Bridgehead's tag. The Call-ID
/// alone is not enough: a caller that retries an INVITE after a 401/407 keeps its Call-ID, and
/// a call of the first attempt may still be up.
fn dialog_key(call_id: &str, local_tag: Option<&str>) -> String {
    format!("{call_id};{}", local_tag.unwrap_or_default())
}

impl Dialog {
    fn dialog_key(&self) -> String {
        dialog_key(&self.call_id, Some(&self.local_tag))
    }
}

impl Call {
    /// A call `id` between dialogs `a` and `b`, from trunk `ingress` (its script) on `rules`,
    /// started at `started`, in `state`; the rest as a call has it before anything happened
    /// (one attempt, nothing pending, no media yet).
    fn between(
        id: String,
        (ingress, script, rules): (TrunkId, Option<ScriptId>, Arc<RuleSet>),
        (a, b): (Dialog, Dialog),
        started: Instant,
        state: CallState,
    ) -> Call {
        Call {
            id,
            started,
            rang_at: None,
            ingress,
            rules,
            script,
            vars: None,
            b_template: None,
            attempts: 1,
            state,
            a_final: None,
            streams: Vec::new(),
            quality: [None, None],
            end_reason: None,
            local_answer: None,
            a,
            b,
            a_invite: 0,
            b_invite: 0,
            invite_pending: false,
            pending_ack: None,
            last_ack: None,
            unanchored: false,
            media_refused: None,
            a_reliable: None,
            b_rseqs: Vec::new(),
            b_forks_ended: Vec::new(),
            early_media: None,
            contact_hosts: [None, None],
            own_offer: false,
            session: [None, None],
            session_due: [None, None],
            b_early_sdp: None,
            offer_withheld: false,
            last_sdp: [None, None],
            min_se_retried: false,
            b_rang: false,
            tried: Vec::new(),
            failover_due: None,
            caller_answer: None,
            callee_answer_due: None,
            b_prack_deferred: None,
            preconditions: None,
            refer: None,
            joined: None,
            seats: [None, None],
        }
    }

    /// Forgets what the callee of a failed attempt said (serial failover: the next callee
    /// starts afresh).
    fn forget_callee(&mut self) {
        self.b_rseqs.clear();
        self.b_forks_ended.clear();
        self.b_early_sdp = None;
        self.b_prack_deferred = None;
        self.caller_answer = None;
        self.callee_answer_due = None;
        self.min_se_retried = false;
        self.b_rang = false;
        self.session[Leg::B.index()] = None;
    }

    /// Whether each leg (A, B) uses reliable provisional responses so far: the caller's once
    /// Bridgehead sends them reliably, the callee's once it sent one.
    fn reliable_legs(&self) -> [bool; 2] {
        [
            self.a_reliable.as_ref().is_some_and(|r| r.active),
            !self.b_rseqs.is_empty(),
        ]
    }

    /// What the caller's provisional responses become: the rule's choice, else its trunk's.
    fn early_media(&self) -> EarlyMedia {
        self.early_media
            .unwrap_or(self.rules.profile.trunks[self.a.trunk].early_media)
    }

    fn leg(&self, leg: Leg) -> &Dialog {
        match leg {
            Leg::A => &self.a,
            Leg::B => &self.b,
        }
    }

    fn leg_mut(&mut self, leg: Leg) -> &mut Dialog {
        match leg {
            Leg::A => &mut self.a,
            Leg::B => &mut self.b,
        }
    }
}

/// A request that arrived and is being handled: the message, the key of its server
/// transaction, where it came from and the trunk that is.
struct Incoming {
    msg: Message,
    key: String,
    from: Peer,
    trunk: TrunkId,
}

/// A local answer to a request Bridgehead refuses: the status and extra headers.
type Refusal = (u16, Vec<(HeaderName, String)>);

/// Where a call is routed: a trunk, optionally one of its peers or another address, and
/// optionally a Request-URI chosen by a rule.
pub(super) struct Route {
    trunk: TrunkId,
    peer: Option<SocketAddr>,
    uri: Option<String>,
}

/// What a hook run decided.
#[derive(Default)]
pub(crate) struct HookOutcome {
    pub(crate) decision: Option<RouteDecision>,
    /// What `on_media` decided for a DTMF digit.
    pub(crate) digit_verdict: crate::script::DigitVerdict,
    /// `call.vars` created by a hook that ran before the call existed (`on_invite`).
    vars: Option<mlua::Table>,
    /// Media actions asked for before the call existed (`on_invite`).
    media: Vec<crate::script::MediaAction>,
    /// The early-media handling a rule chose before the call existed (`on_invite`).
    early_media: Option<EarlyMedia>,
    /// The Contact hosts a rule chose before the call existed (`on_invite`), by leg.
    contact_hosts: [Option<String>; 2],
    failed: bool,
}
