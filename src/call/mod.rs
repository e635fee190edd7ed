//! The B2BUA: a call is two dialogs (the A-leg toward the caller, the B-leg toward the callee)
//! joined by the engine. Each leg has its own Call-ID, tags, Via, Contact and CSeq space; what
//! crosses from one leg to the other is the body and the headers the trunk's policy lets through
//! (after the Lua rules ran). Topology headers (Via, Contact, Record-Route, Route, Call-ID) never
//! cross.
//!
//! One file per flow: `setup` (requests outside a dialog, a new INVITE, routing and failover),
//! `responses` (the B-leg INVITE's responses and relayed ones), `in_dialog` (ACK, BYE,
//! re-INVITE, UPDATE, INFO...), `cancel`, `offer_answer` (SDP, media anchoring, local ringback),
//! `dtmf`, `egress` (hooks and header policy on what is sent), `ending` (timeouts, failures,
//! the end of a call); `build` makes the messages.

pub mod build;
mod cancel;
mod dtmf;
mod egress;
mod ending;
mod in_dialog;
mod offer_answer;
mod responses;
mod setup;

use crate::config::{HeaderPolicy, ScriptErrorPolicy, TrunkId};
use crate::engine::transactions::Transactions;
use crate::engine::Engine;
use crate::media::{DtmfMethod, MediaCommand, MediaEvent};
use crate::script::{
    CallEndInfo, Hook, HookArgs, HookCall, HookMessage, RouteDecision, RuleSet, ScriptId, SharedSdp,
};
use crate::sdp::Sdp;
use crate::shared::{Leg, Peer, TxnId};
use crate::sip::check::{check_request, check_response, RequestInfo};
use crate::sip::header::split_list;
use crate::sip::transaction::ClientState;
use crate::sip::uri::{Scheme, Uri};
use crate::sip::{response_to, HeaderName, Message, Method, StartLine};
use build::{
    contact_value, copy_crossing, dialog_request, tag_of, uri_of, user_of, via_value, without_tag,
    ACCEPT, ALLOW, SUPPORTED,
};
use bytes::Bytes;
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
    /// The estimated MOS of each leg's last quality report (A, B).
    pub(crate) mos: [Option<f64>; 2],
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
}

/// The key of a dialog in [`Engine::dialogs`]: its Call-ID and Bridgehead's tag. The Call-ID
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
struct Route {
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
    failed: bool,
}

#[cfg(test)]
mod tests {
    use super::setup::retarget;
    use super::*;

    #[test]
    fn a_call_steps_through_its_states() {
        let answered = CallState::Answered { at: Instant::now() };
        // Rings, then the caller cancels: the CANCEL goes at once.
        let (state, cancel_now) = CallState::Calling.provisional();
        assert_eq!((state, cancel_now), (CallState::Proceeding, false));
        assert!(state.rang());
        assert_eq!(
            state.cancel(),
            (CallState::Cancelled { cancel_sent: true }, true)
        );
        // Cancelled before any provisional: the CANCEL waits for the first one (RFC 3261 §9.1).
        let (state, cancel_now) = CallState::Calling.cancel();
        assert_eq!(
            (state, cancel_now),
            (CallState::Cancelled { cancel_sent: false }, false)
        );
        assert!(state.is_cancelled() && !state.rang());
        assert_eq!(
            state.provisional(),
            (CallState::Cancelled { cancel_sent: true }, true)
        );
        // Later provisionals change nothing.
        let sent = CallState::Cancelled { cancel_sent: true };
        assert_eq!(sent.provisional(), (sent, false));
        assert_eq!(
            CallState::Proceeding.provisional(),
            (CallState::Proceeding, false)
        );
        assert_eq!(answered.provisional(), (answered, false));
        assert!(!answered.rang() && !answered.is_cancelled());
    }

    #[test]
    fn retarget_keeps_user_and_params() {
        let peer = Peer {
            listener: 0,
            transport: crate::config::Transport::Tcp,
            addr: "127.0.0.1:5080".parse().unwrap(),
            conn: None,
        };
        assert_eq!(
            retarget("sip:+15550100@example.com;user=phone;transport=udp", &peer),
            "sip:+15550100@127.0.0.1:5080;user=phone;transport=tcp"
        );
        assert_eq!(
            retarget("tel:+15550100", &peer),
            "sip:+15550100@127.0.0.1:5080;user=phone;transport=tcp"
        );
    }
}
