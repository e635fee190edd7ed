//! The B2BUA: a call is two dialogs (the A-leg toward the caller, the B-leg toward the callee)
//! joined by the engine. Each leg has its own Call-ID, tags, Via, Contact and CSeq space; what
//! crosses from one leg to the other is the body and the headers the trunk's policy lets through
//! (after the Lua rules ran). Topology headers (Via, Contact, Record-Route, Route, Call-ID) never
//! cross.

pub mod build;

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
use crate::sip::{HeaderName, Message, Method, StartLine};
use build::{
    contact_value, copy_crossing, dialog_request, response_to, tag_of, uri_of, user_of, via_value,
    without_tag, ACCEPT, ALLOW, SUPPORTED,
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
    answered_at: Option<Instant>,
    /// The final status the caller got for its INVITE (0 until then).
    a_status: u16,
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
    answered: bool,
    b_provisional: bool,
    cancel_pending: bool,
    canceled: bool,
    invite_pending: bool,
    pending_ack: Option<PendingAck>,
    /// The last end-to-end ACK sent, by leg, repeated when a 2xx is retransmitted.
    last_ack: Option<(Leg, Bytes)>,
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

/// True when a message carries an SDP body.
fn carries_sdp(msg: &Message) -> bool {
    !msg.body.is_empty()
        && msg.header_str(&HeaderName::ContentType).is_some_and(|t| {
            t.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/sdp")
        })
}

/// The DTMF digit a SIP INFO carries (`application/dtmf-relay`: `Signal=5`, `Duration=160`;
/// `application/dtmf`: `5`), as a media event of the leg it came from.
fn info_digit(msg: &Message, leg: Leg) -> Option<MediaEvent> {
    let kind = msg
        .header_str(&HeaderName::ContentType)?
        .trim()
        .to_ascii_lowercase();
    let body = std::str::from_utf8(&msg.body).ok()?;
    let (signal, duration) = if kind.starts_with("application/dtmf-relay") {
        let field = |name: &str| {
            body.lines().find_map(|line| {
                let (key, value) = line.split_once('=')?;
                key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
            })
        };
        (
            field("Signal")?,
            field("Duration").and_then(|d| d.parse().ok()),
        )
    } else if kind.starts_with("application/dtmf") {
        (body.trim(), None)
    } else {
        return None;
    };
    let digit = match signal {
        "10" => '*',
        "11" => '#',
        s if s.len() == 1 => s.chars().next()?.to_ascii_uppercase(),
        _ => return None,
    };
    if !crate::script::is_dtmf_digit(digit) {
        return None;
    }
    Some(MediaEvent::Dtmf {
        leg,
        digit,
        duration_ms: duration.unwrap_or(100),
        method: DtmfMethod::Info,
    })
}

/// Keeps only a trunk's codecs in an offer toward it, in its order. When nothing is in common
/// but G.711 (the offer has PCMU, the trunk takes PCMA, or the reverse) and media is anchored,
/// the other G.711 is offered and the relay transcodes. Otherwise a media section with none of
/// the trunk's codecs is left as it is (the far end refuses it, as it would without the list).
fn offer_codecs(sdp: &mut Sdp, codecs: &[String], anchored: bool, call_id: &str) {
    let wanted: Vec<&str> = codecs.iter().map(String::as_str).collect();
    let takes = |name: &str| wanted.iter().any(|w| w.eq_ignore_ascii_case(name));
    for media in sdp.media_mut() {
        if media.is_rejected() || media.kind() != "audio" {
            continue;
        }
        // Voice codecs in common (telephone-event and comfort noise do not carry a call).
        let voice = |name: &str| {
            !name.eq_ignore_ascii_case("telephone-event") && !name.eq_ignore_ascii_case("CN")
        };
        let common = media
            .codecs()
            .iter()
            .any(|c| voice(&c.name) && takes(&c.name));
        if !common && anchored {
            let has = |name: &str| {
                media
                    .codecs()
                    .iter()
                    .any(|c| c.name.eq_ignore_ascii_case(name))
            };
            let renamed = if has("PCMU") && takes("PCMA") {
                media.replace_codec("PCMU", "8", "PCMA/8000")
            } else if has("PCMA") && takes("PCMU") {
                media.replace_codec("PCMA", "0", "PCMU/8000")
            } else {
                false
            };
            if renamed {
                tracing::info!(call = %call_id, "no codec in common: transcoding G.711");
            }
        }
        let kept = media.keep_codecs(&wanted);
        match kept {
            Ok(_) => {
                media.reorder_codecs(&wanted);
            }
            Err(err) => tracing::info!(call = %call_id, "codec list not applied: {err}"),
        }
    }
}

/// What an SDP body is in offer/answer terms (RFC 3264): requests offer, except ACK and PRACK
/// which answer; responses answer, unless their request carried no offer (delayed offer).
fn sdp_kind(msg: &Message, request_had_sdp: Option<bool>) -> &'static str {
    match msg.method() {
        Some(Method::Ack | Method::Prack) => "answer",
        Some(_) => "offer",
        None if request_had_sdp == Some(false) => "offer",
        None => "answer",
    }
}

/// Requests that refresh the remote target and carry our Contact.
fn is_target_refresh(method: &Method) -> bool {
    matches!(
        method,
        Method::Invite | Method::Update | Method::Subscribe | Method::Notify | Method::Refer
    )
}

/// Removes the headers the policy does not let cross, unless a rule set them.
fn apply_policy(msg: &mut Message, touched: &[HeaderName], policy: &HeaderPolicy) {
    msg.headers.retain(|h| {
        h.name.is_b2bua_owned() || touched.contains(&h.name) || policy.allows(h.name.as_str())
    });
}

/// The Record-Route values of a message, in order.
fn record_routes(msg: &Message) -> Vec<String> {
    msg.headers_named(&HeaderName::RecordRoute)
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(split_list)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

/// The URI of the first Contact of a message.
fn contact_uri(msg: &Message) -> Option<String> {
    let value = msg.header_str(&HeaderName::Contact)?;
    uri_of(split_list(value).next()?)
}

/// A Request-URI for a trunk peer: the user and parameters of `uri`, the peer's address.
fn retarget(uri: &str, peer: &Peer) -> String {
    let parsed = Uri::parse(uri).ok();
    let user = parsed.as_ref().and_then(|u| u.user);
    let mut out = String::with_capacity(64);
    out.push_str("sip:");
    if let Some(user) = user {
        out.push_str(user);
        out.push('@');
    }
    out.push_str(&match peer.addr {
        std::net::SocketAddr::V4(a) => a.to_string(),
        std::net::SocketAddr::V6(a) => a.to_string(),
    });
    if let Some(parsed) = &parsed {
        for (name, value) in crate::sip::header::params(parsed.params).map_while(Result::ok) {
            if ["transport", "maddr", "lr", "phone-context"]
                .iter()
                .any(|skip| name.eq_ignore_ascii_case(skip))
            {
                continue;
            }
            out.push(';');
            out.push_str(name);
            if let Some(value) = value {
                out.push('=');
                out.push_str(value);
            }
        }
        if parsed.scheme == Scheme::Tel {
            out.push_str(";user=phone");
        }
    }
    if peer.transport == crate::config::Transport::Tcp {
        out.push_str(";transport=tcp");
    }
    out
}

impl Engine {
    /// The rule set of a call, or the current one outside calls.
    fn rules_of(&self, call: Option<CallKey>) -> Arc<RuleSet> {
        call.and_then(|k| self.calls.get(&k))
            .map_or_else(|| self.current.clone(), |c| c.rules.clone())
    }

    /// Runs `hook` of `script` for the call `key` (or, with `key` None, for a call being set
    /// up when the hook is `on_invite`, and for a message outside calls otherwise: `call` is
    /// nil then). Failures are logged with the call id and counted.
    #[allow(clippy::too_many_arguments)]
    fn run_hook(
        &mut self,
        rules: &RuleSet,
        key: Option<CallKey>,
        call_id: &str,
        ingress: TrunkId,
        script: Option<ScriptId>,
        hook: Hook,
        args: HookArgs<'_>,
    ) -> HookOutcome {
        let vars = key
            .and_then(|k| self.calls.get_mut(&k))
            .and_then(|c| c.vars.take());
        let mut call = HookCall::new(call_id.to_string(), ingress, vars);
        let in_call = key.is_some() || hook == Hook::Invite;
        let result = rules
            .rules
            .run(script, hook, in_call.then_some(&mut call), args);
        let mut vars = call.vars.take();
        if let Some(c) = key.and_then(|k| self.calls.get_mut(&k)) {
            c.vars = vars.take();
        }
        let media = std::mem::take(&mut call.media_actions);
        if let Some(key) = key {
            for action in &media {
                self.play(key, action);
            }
        }
        let failed = match result {
            Ok(()) => false,
            Err(err) => {
                self.stats.script_errors += 1;
                tracing::warn!(call = %call_id, hook = hook.name(), "script error: {err}");
                true
            }
        };
        HookOutcome {
            decision: call.decision,
            digit_verdict: call.digit_verdict,
            vars,
            // Asked for before the call existed (on_invite): played once it does.
            media: if key.is_some() { Vec::new() } else { media },
            failed,
        }
    }

    /// Hands on a DTMF digit that leg `from` sent (`event`, which `on_media` already heard and
    /// judged: `verdict`) in the form the other leg's trunk takes: SIP INFO, RFC 4733 events
    /// or tones played by the relay. Nothing is done where the other leg gets the digit
    /// anyway: events the relay passes through, tones that stay in the audio, an INFO relayed
    /// as it is. Returns true when Bridgehead took the digit in hand (an INFO carrying it is
    /// then answered here, not relayed).
    pub(crate) fn hand_on_digit(
        &mut self,
        key: CallKey,
        from: Leg,
        event: &MediaEvent,
        verdict: crate::script::DigitVerdict,
        now: Instant,
    ) -> bool {
        use crate::config::DtmfMode;
        let MediaEvent::Dtmf {
            digit,
            duration_ms,
            method,
            ..
        } = *event
        else {
            return false;
        };
        let Some(call) = self.calls.get(&key) else {
            return false;
        };
        let to = from.other();
        let mode = call.rules.profile.trunks[call.leg(to).trunk].dtmf;
        let sides = call.streams.first().map(|s| match from {
            Leg::A => (s.a, s.b),
            Leg::B => (s.b, s.a),
        });
        let changed = verdict != crate::script::DigitVerdict::Keep;
        let gets_it_anyway = match (method, mode, sides) {
            // No media to play into, or an INFO trunk: the INFO goes on, unless a rule
            // changed the digit.
            (DtmfMethod::Info, _, None) | (DtmfMethod::Info, DtmfMode::Info, _) => !changed,
            // A digit in media that is not anchored (a replay): only SIP INFO can carry it.
            (_, other, None) => other != DtmfMode::Info,
            (DtmfMethod::Rfc4733, DtmfMode::Rfc4733, Some((from_side, _))) => !from_side.dtmf_held,
            // Tones stay in the audio; a leg without telephone-event has nothing else.
            (DtmfMethod::Inband, DtmfMode::Inband, _) => true,
            (DtmfMethod::Inband, DtmfMode::Rfc4733, Some((_, to_side))) => {
                to_side.dtmf_pt.is_none()
            }
            _ => false,
        };
        if gets_it_anyway {
            return false;
        }
        let Some(digit) = verdict.apply(digit) else {
            return true;
        };
        if mode == DtmfMode::Info || sides.is_none() {
            let body = Bytes::from(format!("Signal={digit}\r\nDuration={duration_ms}\r\n"));
            self.send_in_dialog(
                key,
                to,
                Method::Info,
                Some(("application/dtmf-relay", body)),
                now,
            );
        } else {
            let sound = crate::media::player::Sound::Digits {
                digits: digit.to_string(),
                duration_ms,
            };
            self.play_sound(key, to, sound);
        }
        true
    }

    /// Hands a rule's media action to the relay.
    fn play(&mut self, key: CallKey, action: &crate::script::MediaAction) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let (leg, sound) = match action {
            crate::script::MediaAction::PlayRingback { leg } => {
                // The plan of the trunk that hears it, else the media section's.
                let trunk = call.leg(if *leg == "a" { Leg::A } else { Leg::B }).trunk;
                let profile = &call.rules.profile;
                let plan = profile.trunks[trunk]
                    .ringback
                    .or(profile.media.as_ref().map(|m| m.ringback))
                    .unwrap_or_default();
                (*leg, crate::media::player::Sound::Ringback(plan))
            }
            crate::script::MediaAction::SendDtmf { leg, digits } => (
                *leg,
                crate::media::player::Sound::Digits {
                    digits: digits.clone(),
                    duration_ms: 100,
                },
            ),
        };
        self.play_sound(key, if leg == "a" { Leg::A } else { Leg::B }, sound);
    }

    /// Asks the relay to play a sound toward one leg of a call.
    fn play_sound(&mut self, key: CallKey, to: Leg, sound: crate::media::player::Sound) {
        self.media_commands.push_back(MediaCommand::Play {
            call: self.media_call_id(key),
            to,
            sound,
        });
    }

    /// Runs a hook of a call's own script on its own rule-set version.
    pub(crate) fn run_call_hook(
        &mut self,
        key: CallKey,
        hook: Hook,
        args: HookArgs<'_>,
    ) -> HookOutcome {
        let Some(call) = self.calls.get(&key) else {
            return HookOutcome::default();
        };
        let (rules, id, ingress, script) = (
            call.rules.clone(),
            call.id.clone(),
            call.ingress,
            call.script,
        );
        if !rules.rules.has_hook(script, hook) {
            return HookOutcome::default();
        }
        self.run_hook(&rules, Some(key), &id, ingress, script, hook, args)
    }

    /// Runs the rules on a message about to be sent toward `trunk` (`on_sdp` for an SDP body,
    /// then `on_request` or `on_response`), then applies the trunk's header policy (of the
    /// call's rule-set version).
    fn outgoing(
        &mut self,
        call: Option<CallKey>,
        script: Option<ScriptId>,
        leg: Leg,
        trunk: TrunkId,
        msg: Message,
    ) -> Message {
        self.outgoing_edited(call, script, leg, trunk, msg, Vec::new(), None)
            .0
    }

    /// [`Engine::outgoing`] for a message some headers of which a rule already edited (they
    /// bypass the policy), and for a response whose request did or did not carry an SDP offer
    /// (`request_had_sdp`). Also tells whether a hook failed.
    #[allow(clippy::too_many_arguments)]
    fn outgoing_edited(
        &mut self,
        call: Option<CallKey>,
        script: Option<ScriptId>,
        leg: Leg,
        trunk: TrunkId,
        msg: Message,
        touched: Vec<HeaderName>,
        request_had_sdp: Option<bool>,
    ) -> (Message, bool) {
        let rules = self.rules_of(call);
        let hook = if msg.is_request() {
            Hook::Request
        } else {
            Hook::Response
        };
        let has_sdp = carries_sdp(&msg);
        let anchoring = has_sdp && call.is_some() && self.media_ports.is_some();
        let codecs = &rules.profile.trunks[trunk].codecs;
        let filtering = has_sdp && !codecs.is_empty() && sdp_kind(&msg, request_had_sdp) == "offer";
        let wants_sdp = has_sdp && rules.rules.has_hook(script, Hook::Sdp);
        let wants_message = rules.rules.has_hook(script, hook);
        let mut hooked = HookMessage::new(msg, leg.name(), String::new());
        hooked.touched = touched;
        let mut failed = false;
        let (call_id, ingress) = call
            .and_then(|k| self.calls.get(&k))
            .map_or((String::new(), trunk), |c| (c.id.clone(), c.ingress));
        if wants_sdp || wants_message {
            hooked.trunk = rules.profile.trunks[trunk].name.clone();
        }
        // The offer/answer hand-off: the trunk's codecs, media anchoring, then the rules' own
        // edits.
        if anchoring || wants_sdp || filtering {
            match Sdp::parse(&hooked.msg.body) {
                Ok(mut sdp) => {
                    // Anchoring first: it learns the sender's own codecs before any filter.
                    if let Some(key) = call.filter(|_| anchoring) {
                        self.anchor_media(key, leg, &mut sdp);
                    }
                    if filtering {
                        offer_codecs(&mut sdp, codecs, anchoring, &call_id);
                    }
                    if wants_sdp {
                        let shared: SharedSdp = Arc::new(Mutex::new(sdp));
                        let kind = sdp_kind(&hooked.msg, request_had_sdp);
                        let args = HookArgs::Sdp {
                            sdp: shared.clone(),
                            kind,
                            leg: leg.name(),
                            msg: &mut hooked,
                        };
                        failed |= self
                            .run_hook(&rules, call, &call_id, ingress, script, Hook::Sdp, args)
                            .failed;
                        let sdp = shared.lock().unwrap_or_else(|e| e.into_inner());
                        hooked.msg.body = Bytes::from(sdp.to_bytes());
                    } else {
                        hooked.msg.body = Bytes::from(sdp.to_bytes());
                    }
                }
                Err(err) => {
                    tracing::warn!(call = %call_id, "SDP not parsed, sent as it is: {err}");
                }
            }
        }
        if wants_message {
            let args = HookArgs::Message(&mut hooked);
            failed |= self
                .run_hook(&rules, call, &call_id, ingress, script, hook, args)
                .failed;
        }
        let policy = &rules.profile.trunks[trunk].headers;
        apply_policy(&mut hooked.msg, &hooked.touched, policy);
        (hooked.msg, failed)
    }

    /// The ACK for a non-2xx final response to a client INVITE transaction (RFC 3261
    /// §17.1.1.3), when the transaction needs one now; it goes through the leg's hooks and header
    /// policy like every other message Bridgehead sends toward a trunk.
    pub(crate) fn hop_by_hop_ack(
        &mut self,
        id: TxnId,
        status: u16,
        response: &Message,
    ) -> Option<Message> {
        let entry = self.txns.client(id)?;
        let waiting = matches!(
            entry.txn.state(),
            ClientState::Calling | ClientState::Proceeding
        );
        if status < 300 || !waiting || entry.request.method() != Some(&Method::Invite) {
            return None;
        }
        let ack = build::ack_for(&entry.request, response);
        let (key, leg) = match entry.owner {
            ClientOwner::Invite(key) => (key, Leg::B),
            ClientOwner::Relay { call, server } => match self.txns.server(server)?.owner {
                ServerOwner::Dialog(_, requester) => (call, requester.other()),
                _ => return Some(ack),
            },
            ClientOwner::Local => return Some(ack),
        };
        let Some(call) = self.calls.get(&key) else {
            return Some(ack);
        };
        let (script, trunk) = (call.script, call.leg(leg).trunk);
        Some(self.outgoing(Some(key), script, leg, trunk, ack))
    }

    /// Answers a request locally through a new server transaction.
    fn answer(
        &mut self,
        incoming: Incoming,
        status: u16,
        extra: &[(HeaderName, String)],
        now: Instant,
    ) {
        let Incoming {
            msg: req,
            key,
            from,
            trunk,
        } = incoming;
        let to_tag = self.new_tag();
        let mut response = response_to(&req, status, None, Some(&to_tag));
        for (name, value) in extra {
            response.push_header(name.clone(), value.clone());
        }
        let script = self.current.rules.script_of(trunk);
        // Headers Bridgehead adds to its own answers are not subject to the header policy.
        let own = extra.iter().map(|(name, _)| name.clone()).collect();
        let (response, _) = self.outgoing_edited(None, script, Leg::A, trunk, response, own, None);
        let id = self.create_server(key, req, from, ServerOwner::Local);
        self.send_response(id, &response, now);
    }

    /// A request arrived.
    pub(crate) fn on_request(&mut self, msg: Message, from: Peer, now: Instant) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        let info = match check_request(&msg) {
            Ok(info) => info,
            Err(fault) => {
                self.stats.malformed += 1;
                tracing::debug!(peer = %from.addr, %fault, "malformed request");
                // An unknown method is answered 501 even when its CSeq does not match (RFC 4475
                // §3.1.2.18): the method is the first thing Bridgehead cannot serve.
                let status = match (&method, &fault) {
                    (Method::Extension(_), crate::sip::Fault::CSeqMethod) => 501,
                    _ => fault.status(),
                };
                if method != Method::Ack {
                    self.reject_stateless(&msg, from, status, &fault.to_string(), now);
                }
                return;
            }
        };
        let Some(key) = Transactions::server_key(&msg, &method, &from) else {
            return;
        };
        if method == Method::Ack {
            match self.txns.find_server(&key) {
                Some(id) => {
                    self.server_ack(id, now);
                }
                None => self.on_dialog_ack(msg, &info, now),
            }
            return;
        }
        if let Some(id) = self.txns.find_server(&key) {
            self.server_retransmission(id, now);
            return;
        }
        // A request inside a dialog belongs to that leg's trunk, even when its source is not one
        // of the trunk's peers any more (a reload removed it) or never was (a rule routed the
        // call to another address).
        // (Local answers use the current version's trunks: the index must exist there too.)
        let trunks = self.current.profile.trunks.len();
        let trunk = self
            .current
            .profile
            .trunk_for(from.listener, from.addr.ip())
            .or_else(|| {
                let tag = info.to_tag.as_deref()?;
                let (key, leg) = self.dialogs.get(&dialog_key(&info.call_id, Some(tag)))?;
                let trunk = self.calls.get(key)?.leg(*leg).trunk;
                (trunk < trunks).then_some(trunk)
            });
        let Some(trunk) = trunk else {
            let drop = self
                .current
                .profile
                .listeners
                .get(from.listener)
                .is_some_and(|l| l.unknown_sources == crate::config::UnknownSources::Drop);
            if drop {
                tracing::debug!(peer = %from.addr, "request from a source that belongs to no trunk: dropped");
                return;
            }
            tracing::info!(peer = %from.addr, "request from a source that belongs to no trunk");
            self.reject_stateless(&msg, from, 403, "source belongs to no trunk", now);
            return;
        };
        let incoming = Incoming {
            msg,
            key,
            from,
            trunk,
        };
        if method == Method::Cancel {
            self.on_cancel(incoming, now);
            return;
        }
        if let Some((status, extra)) = Engine::refuse_request(&incoming.msg) {
            self.answer(incoming, status, &extra, now);
            return;
        }
        if info.to_tag.is_some() {
            self.on_dialog_request(incoming, method, info, now);
            return;
        }
        let (status, extra) = match method {
            Method::Invite => return self.on_new_invite(incoming, info, now),
            Method::Options => (
                200,
                vec![
                    (HeaderName::Allow, ALLOW.to_string()),
                    (HeaderName::Accept, ACCEPT.to_string()),
                    (HeaderName::Supported, SUPPORTED.to_string()),
                ],
            ),
            Method::Extension(_) => (501, vec![(HeaderName::Allow, ALLOW.to_string())]),
            Method::Register | Method::Message | Method::Subscribe | Method::Publish => {
                (405, vec![(HeaderName::Allow, ALLOW.to_string())])
            }
            _ => (481, Vec::new()),
        };
        self.answer(incoming, status, &extra, now);
    }

    /// Checks what any request asks for that Bridgehead cannot give (an option it does not
    /// support, a URI scheme it cannot route); returns the refusal.
    fn refuse_request(msg: &Message) -> Option<Refusal> {
        let required: Vec<&str> = msg
            .headers_named(&HeaderName::Require)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(split_list)
            .filter(|t| !t.is_empty())
            .collect();
        if !required.is_empty() {
            return Some((420, vec![(HeaderName::Unsupported, required.join(", "))]));
        }
        if let StartLine::Request { uri, .. } = &msg.start {
            if Uri::parse(uri).is_ok_and(|u| u.scheme == Scheme::Other) {
                return Some((416, vec![]));
            }
        }
        None
    }

    /// Checks what a new INVITE asks for that Bridgehead cannot give; returns the refusal.
    fn refuse_invite(msg: &Message, info: &RequestInfo) -> Option<Refusal> {
        if !msg.body.is_empty() {
            let sdp = msg.header_str(&HeaderName::ContentType).is_some_and(|ct| {
                ct.trim()
                    .to_ascii_lowercase()
                    .starts_with("application/sdp")
            });
            if !sdp {
                return Some((415, vec![(HeaderName::Accept, ACCEPT.to_string())]));
            }
        }
        let accepts: Vec<String> = msg
            .headers_named(&HeaderName::Accept)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(split_list)
            .map(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .collect();
        let has_accept = msg.header(&HeaderName::Accept).is_some();
        if has_accept
            && !accepts
                .iter()
                .any(|t| t == "application/sdp" || t == "application/*" || t == "*/*")
        {
            return Some((406, vec![(HeaderName::Accept, ACCEPT.to_string())]));
        }
        if info.max_forwards == Some(0) {
            return Some((483, vec![]));
        }
        None
    }

    fn on_new_invite(&mut self, incoming: Incoming, info: RequestInfo, now: Instant) {
        if let Some((status, extra)) = Engine::refuse_invite(&incoming.msg, &info) {
            self.answer(incoming, status, &extra, now);
            return;
        }
        let Incoming {
            msg,
            key,
            from,
            trunk,
        } = incoming;
        let rules = self.current.clone();
        let script = rules.rules.script_of(trunk);
        let a_invite = self.create_server(key, msg.clone(), from, ServerOwner::Local);
        let a_tag = self.new_tag();
        let trying = response_to(&msg, 100, None, None);
        let trying = self.outgoing(None, script, Leg::A, trunk, trying);
        self.send_response(a_invite, &trying, now);

        let a_from = msg.header_str(&HeaderName::From).unwrap_or_default();
        let a_to = msg.header_str(&HeaderName::To).unwrap_or_default();
        let listener = &rules.profile.listeners[from.listener];
        let a = Dialog {
            trunk,
            peer: from,
            call_id: info.call_id.clone(),
            local_tag: a_tag,
            remote_tag: info.from_tag.clone(),
            local_party: without_tag(a_to),
            remote_party: without_tag(a_from),
            // An RFC 2543 caller may send no Contact: its From URI is the target then.
            remote_target: contact_uri(&msg)
                .or_else(|| uri_of(a_from))
                .unwrap_or_default(),
            route_set: record_routes(&msg),
            local_cseq: 0,
            remote_cseq: info.cseq,
            invite_cseq: 0,
            contact: contact_value(user_of(a_to).as_deref(), listener, from.transport),
        };

        // The B-leg INVITE as the rules see it: identity and body, no routing yet.
        let uri = match &msg.start {
            StartLine::Request { uri, .. } => uri.clone(),
            StartLine::Response { .. } => String::new(),
        };
        let mut draft = Message {
            start: StartLine::Request {
                method: Method::Invite,
                uri,
            },
            headers: Vec::with_capacity(msg.headers.len() + 4),
            body: Bytes::new(),
        };
        let max_forwards = info.max_forwards.unwrap_or(70).saturating_sub(1);
        draft.push_header(HeaderName::MaxForwards, max_forwards.to_string());
        draft.push_header(HeaderName::From, a.remote_party.clone());
        draft.push_header(HeaderName::To, a.local_party.clone());
        draft.push_header(HeaderName::CallId, String::new());
        draft.push_header(HeaderName::CSeq, "1 INVITE".to_string());
        copy_crossing(&msg, &mut draft);
        let (b_call_id, b_tag) = self.fresh_b_identity(&mut draft);

        let mut hooked = HookMessage::new(draft, Leg::B.name(), String::new());
        let outcome = self.run_hook(
            &rules,
            None,
            &info.call_id,
            trunk,
            script,
            Hook::Invite,
            HookArgs::Message(&mut hooked),
        );
        let policy = rules.profile.trunks[trunk].on_script_error;
        let decision = match (outcome.failed, policy) {
            (true, ScriptErrorPolicy::Reject(status)) => Some(RouteDecision::Reject {
                status,
                reason: crate::sip::reason_phrase(status).to_string(),
                headers: Vec::new(),
            }),
            _ => outcome.decision.or_else(|| {
                rules.profile.trunks[trunk]
                    .route
                    .map(|trunk| RouteDecision::Route {
                        trunk,
                        peer: None,
                        uri: None,
                    })
            }),
        };
        let route = match decision {
            Some(RouteDecision::Route { trunk, peer, uri }) => Route { trunk, peer, uri },
            Some(RouteDecision::Reject {
                status,
                reason,
                headers,
            }) => {
                self.stats.calls_failed += 1;
                let mut response = response_to(&msg, status, Some(&reason), Some(&a.local_tag));
                let touched = headers.iter().map(|(name, _)| name.clone()).collect();
                for (name, value) in headers {
                    response.push_header(name, value);
                }
                let (response, _) =
                    self.outgoing_edited(None, script, Leg::A, trunk, response, touched, None);
                self.send_response(a_invite, &response, now);
                return;
            }
            None => {
                self.stats.calls_failed += 1;
                let response = response_to(&msg, 404, Some("No Route"), Some(&a.local_tag));
                let response = self.outgoing(None, script, Leg::A, trunk, response);
                self.send_response(a_invite, &response, now);
                return;
            }
        };
        let HookMessage {
            msg: draft,
            touched,
            ..
        } = hooked;
        let b_template = rules
            .rules
            .has_hook(script, Hook::Failure)
            .then(|| (draft.clone(), touched.clone()));
        let Some((b, invite)) = self.address_b_leg(&rules, draft, &route, b_call_id, b_tag) else {
            return;
        };
        let call_key = self.next_id();
        let call = Call {
            id: info.call_id,
            ingress: trunk,
            rules,
            script,
            vars: outcome.vars,
            b_template,
            attempts: 1,
            answered_at: None,
            a_status: 0,
            streams: Vec::new(),
            mos: [None, None],
            local_answer: None,
            a,
            b,
            a_invite,
            b_invite: 0,
            answered: false,
            b_provisional: false,
            cancel_pending: false,
            canceled: false,
            invite_pending: true,
            pending_ack: None,
            last_ack: None,
            media_refused: None,
        };
        self.dialogs.insert(call.a.dialog_key(), (call_key, Leg::A));
        self.dialogs.insert(call.b.dialog_key(), (call_key, Leg::B));
        self.calls.insert(call_key, call);
        if let Some(entry) = self.txns.server_mut(a_invite) {
            entry.owner = ServerOwner::Invite(call_key);
        }
        self.stats.calls_started += 1;
        for action in &outcome.media {
            self.play(call_key, action);
        }
        self.send_b_invite(call_key, invite, touched, now);
    }

    /// Gives a B-leg INVITE draft a fresh Call-ID and From-tag; returns them.
    fn fresh_b_identity(&mut self, draft: &mut Message) -> (String, String) {
        let call_id = self.new_call_id();
        let tag = self.new_tag();
        let from = without_tag(draft.header_str(&HeaderName::From).unwrap_or_default());
        draft.set_header(HeaderName::From, format!("{from};tag={tag}"));
        draft.set_header(HeaderName::CallId, call_id.clone());
        (call_id, tag)
    }

    /// Addresses a B-leg INVITE to a route: Request-URI, Via, Contact and Allow. Returns the
    /// B-leg dialog and the INVITE, or None when the trunk has no peer.
    fn address_b_leg(
        &mut self,
        rules: &RuleSet,
        mut invite: Message,
        route: &Route,
        call_id: String,
        local_tag: String,
    ) -> Option<(Dialog, Message)> {
        let dest = &rules.profile.trunks[route.trunk];
        let peer = Peer {
            listener: dest.listener,
            transport: dest.transport,
            addr: route.peer.or_else(|| dest.peers.first().copied())?,
            conn: None,
        };
        if let StartLine::Request { uri, .. } = &mut invite.start {
            *uri = match &route.uri {
                Some(chosen) => chosen.clone(),
                None => retarget(uri, &peer),
            };
        }
        let branch = self.new_branch();
        let listener = &rules.profile.listeners[peer.listener];
        invite.headers.insert(
            0,
            crate::sip::Header::new(
                HeaderName::Via,
                via_value(listener, peer.transport, &branch),
            ),
        );
        let b_from = invite
            .header_str(&HeaderName::From)
            .unwrap_or_default()
            .to_string();
        let b_to = invite
            .header_str(&HeaderName::To)
            .unwrap_or_default()
            .to_string();
        let contact = contact_value(user_of(&b_from).as_deref(), listener, peer.transport);
        invite.push_header(HeaderName::Contact, contact.clone());
        invite.push_header(HeaderName::Allow, ALLOW.to_string());
        let remote_target = match &invite.start {
            StartLine::Request { uri, .. } => uri.clone(),
            StartLine::Response { .. } => String::new(),
        };
        let dialog = Dialog {
            trunk: route.trunk,
            peer,
            call_id,
            local_tag,
            remote_tag: None,
            local_party: without_tag(&b_from),
            remote_party: without_tag(&b_to),
            remote_target,
            route_set: Vec::new(),
            local_cseq: 1,
            remote_cseq: 0,
            invite_cseq: 1,
            contact,
        };
        Some((dialog, invite))
    }

    /// Sends a call's B-leg INVITE after the per-message hook and the header policy (edits
    /// from `on_invite` stay exempt from the policy). A failing hook on a trunk whose policy is
    /// `reject` refuses the call instead.
    fn send_b_invite(
        &mut self,
        key: CallKey,
        invite: Message,
        touched: Vec<HeaderName>,
        now: Instant,
    ) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let (script, peer, dest, ingress) = (call.script, call.b.peer, call.b.trunk, call.ingress);
        let policy = call.rules.profile.trunks[ingress].on_script_error;
        let (invite, failed) =
            self.outgoing_edited(Some(key), script, Leg::B, dest, invite, touched, None);
        if let Some(err) = self
            .calls
            .get_mut(&key)
            .and_then(|c| c.media_refused.take())
        {
            tracing::warn!(call = %self.calls.get(&key).map_or("", |c| c.id.as_str()), "call refused: media not anchored: {err}");
            self.stats.calls_failed += 1;
            if let Some(server) = self.calls.get(&key).map(|c| c.a_invite) {
                self.reply_local(key, Leg::A, server, 503, now);
            }
            self.end_call(key, "error", "sbc", now);
            return;
        }
        if let (true, ScriptErrorPolicy::Reject(status)) = (failed, policy) {
            self.stats.calls_failed += 1;
            if let Some(server) = self.calls.get(&key).map(|c| c.a_invite) {
                self.reply_local(key, Leg::A, server, status, now);
            }
            self.end_call(key, "error", "sbc", now);
            return;
        }
        let b_invite = self.start_client(invite, peer, ClientOwner::Invite(key), now);
        if let Some(call) = self.calls.get_mut(&key) {
            call.b_invite = b_invite;
        }
    }

    /// Serial failover: sends the call's INVITE again, as `on_invite` left it, on a fresh
    /// B-leg toward `route`. Returns false when the call cannot be routed again.
    fn reroute(&mut self, key: CallKey, route: &Route, now: Instant) -> bool {
        let Some(call) = self.calls.get(&key) else {
            return false;
        };
        if call.attempts >= MAX_ATTEMPTS {
            tracing::info!(call = %call.id, attempts = call.attempts, "failover limit reached");
            return false;
        }
        let Some((mut draft, touched)) = call.b_template.clone() else {
            return false;
        };
        let rules = call.rules.clone();
        let (call_id, tag) = self.fresh_b_identity(&mut draft);
        let Some((b, invite)) = self.address_b_leg(&rules, draft, route, call_id, tag) else {
            return false;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return false;
        };
        tracing::info!(call = %call.id, trunk = %rules.profile.trunks[route.trunk].name, "failover");
        let old = std::mem::replace(&mut call.b, b);
        call.attempts += 1;
        call.b_provisional = false;
        call.invite_pending = true;
        let new_key = call.b.dialog_key();
        self.dialogs.remove(&old.dialog_key());
        self.dialogs.insert(new_key, (key, Leg::B));
        self.send_b_invite(key, invite, touched, now);
        true
    }

    /// A response arrived.
    pub(crate) fn on_response(&mut self, msg: Message, from: Peer, now: Instant) {
        let info = match check_response(&msg) {
            Ok(info) => info,
            Err(fault) => {
                self.stats.malformed += 1;
                tracing::debug!(peer = %from.addr, %fault, "malformed response dropped");
                return;
            }
        };
        let Some(id) = self.txns.find_client(&info.branch, &info.cseq_method) else {
            self.on_stray_response(&msg, &info.call_id, &info.cseq_method);
            return;
        };
        let Some(owner) = self.txns.client(id).map(|e| e.owner) else {
            return;
        };
        if !self.client_response(id, &msg, now) {
            return;
        }
        match owner {
            // Only the call's current B-leg INVITE counts (an abandoned one, after Timer C and a
            // failover, still gets its 487 acknowledged by its transaction).
            ClientOwner::Invite(call)
                if self.calls.get(&call).is_some_and(|c| c.b_invite == id) =>
            {
                self.on_b_invite_response(call, msg, now)
            }
            ClientOwner::Invite(_) => {}
            ClientOwner::Relay { call, server } => self.on_relay_response(call, server, msg, now),
            ClientOwner::Local => {}
        }
    }

    /// A 2xx to an INVITE whose transaction is over: repeat the ACK we sent (RFC 3261 §13.2.2.4).
    fn on_stray_response(&mut self, msg: &Message, call_id: &str, cseq_method: &str) {
        let is_2xx = msg.status().is_some_and(|s| (200..300).contains(&s));
        if !is_2xx || cseq_method != "INVITE" {
            return;
        }
        // Our tag is the From-tag of a response to our request.
        let our_tag = msg.header_str(&HeaderName::From).and_then(tag_of);
        let Some((key, leg)) = self
            .dialogs
            .get(&dialog_key(call_id, our_tag.as_deref()))
            .copied()
        else {
            return;
        };
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        if let Some((ack_leg, bytes)) = &call.last_ack {
            if *ack_leg == leg {
                let (peer, bytes) = (call.leg(leg).peer, bytes.clone());
                self.transmit(peer, bytes);
            }
        }
    }

    /// Records what a response from the callee says about the B-leg dialog.
    fn learn_b_dialog(call: &mut Call, msg: &Message) {
        if call.b.remote_tag.is_none() {
            call.b.remote_tag = msg.header_str(&HeaderName::To).and_then(tag_of);
        }
        if let Some(target) = contact_uri(msg) {
            call.b.remote_target = target;
        }
        let mut routes = record_routes(msg);
        if !routes.is_empty() {
            routes.reverse();
            call.b.route_set = routes;
        }
    }

    fn on_b_invite_response(&mut self, key: CallKey, msg: Message, now: Instant) {
        let Some(status) = msg.status() else {
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if status < 200 {
            call.b_provisional = true;
            if call.cancel_pending {
                call.cancel_pending = false;
                self.cancel_b_invite(key, now);
                return;
            }
            if status == 100 || call.canceled {
                return;
            }
            Engine::learn_b_dialog(call, &msg);
            if !msg.body.is_empty() {
                self.lifecycle_hook(key, Hook::EarlyMedia, &msg);
            }
        } else if status < 300 {
            Engine::learn_b_dialog(call, &msg);
            call.invite_pending = false;
            if call.canceled {
                // The caller gave up first: acknowledge and hang up the callee.
                self.ack_leg(key, Leg::B, None);
                self.send_bye(key, Leg::B, now);
                self.end_call(key, "cancel", "a", now);
                return;
            }
            call.answered = true;
            call.answered_at = Some(now);
            call.pending_ack = Some(PendingAck {
                from: Leg::A,
                server: call.a_invite,
            });
            self.stats.calls_answered += 1;
            self.lifecycle_hook(key, Hook::Answer, &msg);
        } else {
            call.invite_pending = false;
            if call.canceled {
                self.end_call(key, "cancel", "a", now);
                return;
            }
            if self.on_failure(key, &msg, "b", now) {
                return;
            }
            self.stats.calls_failed += 1;
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let server = call.a_invite;
        if status >= 200 {
            call.a_status = status;
        }
        match self.local_ringback_answer(key, &msg) {
            Some((ringing, pcmu)) => {
                let answer = self.relay_response_to(key, Leg::A, server, &ringing, now);
                self.start_local_ringback(key, answer, pcmu);
            }
            None => {
                self.relay_response_to(key, Leg::A, server, &msg, now);
            }
        }
        if status >= 300 {
            self.end_call(key, "rejected", "b", now);
        }
    }

    /// `on_failure` for a callee's failure (`by`: who failed, for `on_call_end`): routes the call
    /// again or answers the caller as the rule decided. False when the failure goes on to the
    /// caller as it is.
    fn on_failure(
        &mut self,
        key: CallKey,
        failure: &Message,
        by: &'static str,
        now: Instant,
    ) -> bool {
        match self.lifecycle_hook(key, Hook::Failure, failure) {
            Some(RouteDecision::Route { trunk, peer, uri }) => {
                self.reroute(key, &Route { trunk, peer, uri }, now)
            }
            Some(RouteDecision::Reject {
                status,
                reason,
                headers,
            }) => {
                self.stats.calls_failed += 1;
                self.reject_call(key, status, &reason, headers, now);
                self.end_call(key, "rejected", by, now);
                true
            }
            None => false,
        }
    }

    /// Runs a lifecycle hook (`on_early_media`, `on_answer`, `on_failure`) with the callee's
    /// response and returns the rule's decision (only `on_failure` acts on it).
    fn lifecycle_hook(&mut self, key: CallKey, hook: Hook, msg: &Message) -> Option<RouteDecision> {
        let call = self.calls.get(&key)?;
        if !call.rules.rules.has_hook(call.script, hook) {
            return None;
        }
        let trunk = call.rules.profile.trunks[call.b.trunk].name.clone();
        let mut hooked = HookMessage::new(msg.clone(), Leg::B.name(), trunk);
        self.run_call_hook(key, hook, HookArgs::Message(&mut hooked))
            .decision
    }

    /// Answers the caller's INVITE with a rule's rejection.
    fn reject_call(
        &mut self,
        key: CallKey,
        status: u16,
        reason: &str,
        headers: Vec<(HeaderName, String)>,
        now: Instant,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.a_status = status;
        let (server, tag, script, trunk) = (
            call.a_invite,
            call.a.local_tag.clone(),
            call.script,
            call.a.trunk,
        );
        let Some(request) = self.txns.server(server).and_then(|e| e.request.as_ref()) else {
            return;
        };
        let mut response = response_to(request, status, Some(reason), Some(&tag));
        let touched = headers.iter().map(|(name, _)| name.clone()).collect();
        for (name, value) in headers {
            response.push_header(name, value);
        }
        let (response, _) =
            self.outgoing_edited(Some(key), script, Leg::A, trunk, response, touched, None);
        self.send_response(server, &response, now);
    }

    /// Local ringback: when the caller's trunk has `local_ringback` and the callee rings
    /// without early media (a 180-183 without SDP) before any answer reached the caller, the
    /// same provisional with an SDP as if the callee had answered without sending yet
    /// (`c=0.0.0.0`): the caller's offer cut to its first G.711 plus telephone-event and
    /// comfort noise, other streams refused. Anchoring it gives the caller Bridgehead's answer.
    /// Returns that provisional and whether its G.711 is PCMU.
    fn local_ringback_answer(&self, key: CallKey, msg: &Message) -> Option<(Message, bool)> {
        let status = msg.status()?;
        let call = self.calls.get(&key)?;
        // Not once the callee sent an SDP (early media): the caller has its answer.
        let wanted = (180..=183).contains(&status)
            && msg.body.is_empty()
            && call.local_answer.is_none()
            && !call.streams.is_empty()
            && call.streams.iter().all(|s| s.b.own_pts.is_empty())
            && call.rules.profile.trunks[call.a.trunk].local_ringback;
        if !wanted {
            return None;
        }
        let offer = self.txns.server(call.a_invite)?.request.as_ref()?;
        let mut sdp = Sdp::parse(&offer.body).ok()?;
        let mut voice = None;
        for media in sdp.media_mut() {
            let g711 = media.codecs().into_iter().find(|c| c.is_g711());
            match g711 {
                Some(codec) if media.kind() == "audio" && voice.is_none() => {
                    media
                        .keep_codecs(&[&codec.pt, "telephone-event", "CN"])
                        .ok()?;
                    media.remove_attribute("crypto");
                    media.set_connection("0.0.0.0").ok()?;
                    // The answer's direction mirrors the offer's (RFC 3264 §6.1).
                    let direction = match media.direction() {
                        crate::sdp::Direction::SendOnly => crate::sdp::Direction::RecvOnly,
                        crate::sdp::Direction::RecvOnly => crate::sdp::Direction::SendOnly,
                        other => other,
                    };
                    media.set_direction(direction);
                    voice = Some(codec.name);
                }
                _ => media.set_port(0),
            }
        }
        let pcmu = voice?.eq_ignore_ascii_case("PCMU");
        if sdp.connection().is_some() {
            sdp.set_connection("0.0.0.0").ok()?;
        }
        let mut ringing = msg.clone();
        ringing.set_header(HeaderName::ContentType, "application/sdp");
        ringing.body = Bytes::from(sdp.to_bytes());
        Some((ringing, pcmu))
    }

    /// After the caller got Bridgehead's own answer (`answer`, the SDP sent, with PCMU or
    /// PCMA): keeps it, makes the relay give the caller only that G.711 (transcoding if the
    /// callee picks the other), and plays the caller ringback until the callee's media comes.
    fn start_local_ringback(&mut self, key: CallKey, answer: Option<Bytes>, pcmu: bool) {
        let media_id = self.media_call_id(key);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(answer) = answer else {
            return;
        };
        call.local_answer = Some(answer);
        for stream in &mut call.streams {
            if stream.a.accepts != (false, false) {
                stream.a.accepts = (pcmu, !pcmu);
                self.media_commands.push_back(MediaCommand::Stream {
                    call: media_id,
                    stream: Box::new(*stream),
                });
            }
        }
        let ringback = crate::script::MediaAction::PlayRingback { leg: "a" };
        self.play(key, &ringback);
    }

    /// Relays a response from one leg to the server transaction `server` on leg `to`; returns
    /// the SDP it carried, if any.
    fn relay_response_to(
        &mut self,
        key: CallKey,
        to: Leg,
        server: TxnId,
        msg: &Message,
        now: Instant,
    ) -> Option<Bytes> {
        let request = self.txns.server(server).and_then(|e| e.request.as_ref())?;
        let call = self.calls.get(&key)?;
        let status = msg.status()?;
        let reason = match &msg.start {
            StartLine::Response { reason, .. } => reason.clone(),
            StartLine::Request { .. } => String::new(),
        };
        let dialog = call.leg(to);
        let method = request.method().cloned().unwrap_or(Method::Ack);
        let mut response = response_to(request, status, Some(&reason), Some(&dialog.local_tag));
        if status > 100 && status < 300 && is_target_refresh(&method) {
            response.push_header(HeaderName::Contact, dialog.contact.clone());
        }
        if (200..300).contains(&status) && matches!(method, Method::Invite | Method::Update) {
            response.push_header(HeaderName::Allow, ALLOW.to_string());
        }
        copy_crossing(msg, &mut response);
        if (300..400).contains(&status) {
            // A redirect is only useful with its targets.
            for contact in msg.headers_named(&HeaderName::Contact) {
                response.push_header(
                    HeaderName::Contact,
                    String::from_utf8_lossy(contact).into_owned(),
                );
            }
        }
        let (script, trunk) = (call.script, dialog.trunk);
        let offered = Some(!request.body.is_empty());
        let a_invite = call.a_invite;
        let (mut response, _) =
            self.outgoing_edited(Some(key), script, to, trunk, response, Vec::new(), offered);
        if server == a_invite && status < 300 && carries_sdp(&response) {
            self.repeat_local_answer(key, &mut response);
        }
        self.send_response(server, &response, now);
        carries_sdp(&response).then(|| response.body.clone())
    }

    /// The callee's answer to the caller's offer, after Bridgehead answered it itself (local
    /// ringback): the caller gets Bridgehead's answer again, as long as the callee chose a
    /// G.711 (the relay transcodes the other one).
    fn repeat_local_answer(&self, key: CallKey, response: &mut Message) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let Some(answer) = &call.local_answer else {
            return;
        };
        if call.streams.iter().any(|s| s.b.accepts != (false, false)) {
            response.body = answer.clone();
        } else {
            tracing::warn!(
                call = %call.id,
                "the callee answered without G.711: the caller gets an answer other than the one in its ringback"
            );
        }
    }

    fn on_relay_response(&mut self, key: CallKey, server: TxnId, msg: Message, now: Instant) {
        let Some(status) = msg.status() else {
            return;
        };
        let Some(entry) = self.txns.server(server) else {
            return;
        };
        let ServerOwner::Dialog(_, to) = entry.owner else {
            return;
        };
        let method = entry
            .request
            .as_ref()
            .and_then(|r| r.method().cloned())
            .unwrap_or(Method::Ack);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let from_leg = to.other();
        if (200..300).contains(&status) && is_target_refresh(&method) {
            if let Some(target) = contact_uri(&msg) {
                call.leg_mut(from_leg).remote_target = target;
            }
        }
        if method == Method::Invite && status >= 200 {
            call.invite_pending = false;
            if status < 300 {
                call.pending_ack = Some(PendingAck { from: to, server });
            }
        }
        self.relay_response_to(key, to, server, &msg, now);
        if method == Method::Bye && status >= 200 {
            self.end_call(key, "bye", to.name(), now);
        }
    }

    /// An ACK outside any transaction: the end-to-end ACK of a 2xx.
    fn on_dialog_ack(&mut self, msg: Message, info: &RequestInfo, now: Instant) {
        let key = dialog_key(&info.call_id, info.to_tag.as_deref());
        let Some((key, leg)) = self.dialogs.get(&key).copied() else {
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(pending) = call.pending_ack.filter(|p| p.from == leg) else {
            return;
        };
        call.pending_ack = None;
        self.server_ack(pending.server, now);
        self.ack_leg(key, leg.other(), Some(&msg));
    }

    /// Sends the ACK of the last INVITE on `leg`, carrying the body of `from` (late offer).
    fn ack_leg(&mut self, key: CallKey, leg: Leg, from: Option<&Message>) {
        let branch = self.new_branch();
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let dialog = call.leg(leg);
        let listener = &self.current.profile.listeners[dialog.peer.listener];
        let via = via_value(listener, dialog.peer.transport, &branch);
        let mut ack = dialog_request(Method::Ack, dialog, via, dialog.invite_cseq, 70);
        if let Some(from) = from {
            copy_crossing(from, &mut ack);
        }
        let (peer, trunk, script) = (dialog.peer, dialog.trunk, call.script);
        let ack = self.outgoing(Some(key), script, leg, trunk, ack);
        let bytes = Bytes::from(ack.to_bytes());
        if let Some(call) = self.calls.get_mut(&key) {
            call.last_ack = Some((leg, bytes.clone()));
        }
        self.transmit(peer, bytes);
    }

    /// Sends a BYE on a leg (Bridgehead hangs up that side).
    fn send_bye(&mut self, key: CallKey, leg: Leg, now: Instant) {
        self.send_in_dialog(key, leg, Method::Bye, None, now);
    }

    /// Sends a request of Bridgehead's own in the dialog of a leg (next CSeq), with an optional
    /// body (content type, bytes). Nothing is sent before the dialog is established.
    fn send_in_dialog(
        &mut self,
        key: CallKey,
        leg: Leg,
        method: Method,
        body: Option<(&str, Bytes)>,
        now: Instant,
    ) {
        let branch = self.new_branch();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let dialog = call.leg_mut(leg);
        if dialog.remote_tag.is_none() {
            return;
        }
        dialog.local_cseq += 1;
        let dialog = call.leg(leg);
        let listener = &self.current.profile.listeners[dialog.peer.listener];
        let via = via_value(listener, dialog.peer.transport, &branch);
        let mut request = dialog_request(method, dialog, via, dialog.local_cseq, 70);
        if let Some((content_type, bytes)) = body {
            request.push_header(HeaderName::ContentType, content_type.to_string());
            request.body = bytes;
        }
        let (peer, trunk, script) = (dialog.peer, dialog.trunk, call.script);
        let request = self.outgoing(Some(key), script, leg, trunk, request);
        self.start_client(request, peer, ClientOwner::Local, now);
    }

    fn cancel_b_invite(&mut self, key: CallKey, now: Instant) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let Some(entry) = self.txns.client(call.b_invite) else {
            return;
        };
        let cancel = build::cancel_for(&entry.request);
        let (peer, trunk, script) = (entry.peer, call.b.trunk, call.script);
        let cancel = self.outgoing(Some(key), script, Leg::B, trunk, cancel);
        self.start_client(cancel, peer, ClientOwner::Local, now);
    }

    fn on_cancel(&mut self, incoming: Incoming, now: Instant) {
        let invite_key = Transactions::server_key(&incoming.msg, &Method::Invite, &incoming.from);
        let invite = invite_key.as_deref().and_then(|k| self.txns.find_server(k));
        let Some(invite) = invite else {
            self.answer(incoming, 481, &[], now);
            return;
        };
        let Incoming {
            msg,
            key,
            from,
            trunk,
        } = incoming;
        let (owner, final_sent, request) = match self.txns.server(invite) {
            Some(e) => (e.owner, e.txn.is_final_sent(), e.request.clone()),
            None => return,
        };
        // The CANCEL itself is answered 200 whatever happens to the INVITE (RFC 3261 §9.2).
        let call_key = match owner {
            ServerOwner::Invite(k) => Some(k),
            _ => None,
        };
        let to_tag = call_key
            .and_then(|k| self.calls.get(&k))
            .map(|c| c.a.local_tag.clone());
        let ok = response_to(&msg, 200, None, to_tag.as_deref());
        // Within a call, its own version's trunk and script (a reload may have renumbered them).
        let (trunk, script) = call_key.and_then(|k| self.calls.get(&k)).map_or_else(
            || (trunk, self.current.rules.script_of(trunk)),
            |c| (c.a.trunk, c.script),
        );
        let ok = self.outgoing(call_key, script, Leg::A, trunk, ok);
        let id = self.create_server(key, msg, from, ServerOwner::Local);
        self.send_response(id, &ok, now);
        if final_sent {
            return;
        }
        let (Some(call_key), Some(request)) = (call_key, request) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&call_key) else {
            return;
        };
        call.canceled = true;
        let send_cancel = call.b_provisional;
        call.cancel_pending = !send_cancel;
        call.a_status = 487;
        let terminated = response_to(&request, 487, None, Some(&call.a.local_tag));
        let terminated = self.outgoing(Some(call_key), script, Leg::A, trunk, terminated);
        self.send_response(invite, &terminated, now);
        if send_cancel {
            self.cancel_b_invite(call_key, now);
        }
    }

    /// Checks an in-dialog request against its dialog (RFC 3261 §12.2.2) and records what it
    /// changes; returns the call and the leg it came on, or the status to refuse it with.
    fn accept_dialog_request(
        &mut self,
        msg: &Message,
        method: &Method,
        info: &RequestInfo,
    ) -> Result<(CallKey, Leg), Refusal> {
        let (call_key, leg) = self
            .dialogs
            .get(&dialog_key(&info.call_id, info.to_tag.as_deref()))
            .copied()
            .ok_or((481, Vec::new()))?;
        let call = self.calls.get_mut(&call_key).ok_or((481, Vec::new()))?;
        let dialog = call.leg_mut(leg);
        let tags_match = info.to_tag.as_deref() == Some(dialog.local_tag.as_str())
            && (dialog.remote_tag.is_none() || info.from_tag == dialog.remote_tag);
        if !tags_match {
            return Err((481, Vec::new()));
        }
        if dialog.remote_cseq != 0 && info.cseq <= dialog.remote_cseq {
            let warning = "399 bridgehead \"CSeq out of order\"".to_string();
            return Err((500, vec![(HeaderName::Warning, warning)]));
        }
        dialog.remote_cseq = info.cseq;
        if info.max_forwards == Some(0) {
            return Err((483, Vec::new()));
        }
        if *method == Method::Invite && call.invite_pending {
            let retry = (HeaderName::Other("Retry-After".into()), "1".to_string());
            return Err((491, vec![retry]));
        }
        if is_target_refresh(method) {
            if let Some(target) = contact_uri(msg) {
                call.leg_mut(leg).remote_target = target;
            }
        }
        if *method == Method::Invite {
            call.invite_pending = true;
        }
        Ok((call_key, leg))
    }

    fn on_dialog_request(
        &mut self,
        incoming: Incoming,
        method: Method,
        info: RequestInfo,
        now: Instant,
    ) {
        let (call_key, leg) = match self.accept_dialog_request(&incoming.msg, &method, &info) {
            Ok(found) => found,
            Err((status, extra)) => {
                self.answer(incoming, status, &extra, now);
                return;
            }
        };
        let Incoming { msg, key, from, .. } = incoming;
        if method == Method::Info {
            if let Some(event) = info_digit(&msg, leg) {
                let heard = self.run_call_hook(call_key, Hook::Media, HookArgs::Media(&event));
                if self.hand_on_digit(call_key, leg, &event, heard.digit_verdict, now) {
                    let server = self.create_server(key, msg, from, ServerOwner::Local);
                    self.reply_local(call_key, leg, server, 200, now);
                    return;
                }
            }
        }
        let to = leg.other();
        let branch = self.new_branch();
        let Some(call) = self.calls.get_mut(&call_key) else {
            return;
        };
        let other = call.leg_mut(to);
        other.local_cseq += 1;
        if method == Method::Invite {
            other.invite_cseq = other.local_cseq;
        }
        let other = call.leg(to);
        let listener = &self.current.profile.listeners[other.peer.listener];
        let via = via_value(listener, other.peer.transport, &branch);
        let max_forwards = info.max_forwards.unwrap_or(70).saturating_sub(1);
        let mut request =
            dialog_request(method.clone(), other, via, other.local_cseq, max_forwards);
        if is_target_refresh(&method) {
            request.push_header(HeaderName::Contact, other.contact.clone());
        }
        if matches!(method, Method::Invite | Method::Update) {
            request.push_header(HeaderName::Allow, ALLOW.to_string());
        }
        copy_crossing(&msg, &mut request);
        let (peer, dest_trunk, script) = (other.peer, other.trunk, call.script);
        let server = self.create_server(key, msg, from, ServerOwner::Dialog(call_key, leg));
        let request = self.outgoing(Some(call_key), script, to, dest_trunk, request);
        self.start_client(
            request,
            peer,
            ClientOwner::Relay {
                call: call_key,
                server,
            },
            now,
        );
    }

    /// A client transaction got no final response in time.
    pub(crate) fn on_client_timeout(&mut self, id: TxnId, now: Instant) {
        self.on_client_failure(id, 408, now);
    }

    /// A client transaction failed without a response: 408 when it timed out, 503 when the
    /// transport could not send it (RFC 3261 §8.1.3.1). For a call's INVITE the failure is like
    /// any other: `on_failure` may route the call again, otherwise the caller hears it.
    pub(crate) fn on_client_failure(&mut self, id: TxnId, status: u16, now: Instant) {
        let Some(owner) = self.txns.client(id).map(|e| e.owner) else {
            return;
        };
        let reason = if status == 408 { "timeout" } else { "error" };
        match owner {
            ClientOwner::Invite(key) => {
                let Some(call) = self.calls.get(&key).filter(|c| c.b_invite == id) else {
                    return;
                };
                let server = call.a_invite;
                let canceled = call.canceled;
                let rang = call.b_provisional;
                if status == 408 {
                    tracing::info!(call = %call.id, "no answer from the callee: 408");
                } else {
                    tracing::warn!(call = %call.id, status, "the INVITE could not be sent");
                }
                if rang {
                    // Timer C: the callee rang but never answered. Stop it ringing.
                    self.cancel_b_invite(key, now);
                }
                if !canceled {
                    let failure = self
                        .txns
                        .client(id)
                        .map(|entry| response_to(&entry.request, status, None, None));
                    if failure.is_some_and(|f| self.on_failure(key, &f, "sbc", now)) {
                        return;
                    }
                    self.stats.calls_failed += 1;
                    self.reply_local(key, Leg::A, server, status, now);
                }
                self.end_call(key, reason, "sbc", now);
            }
            ClientOwner::Relay { call: key, server } => {
                let Some(entry) = self.txns.server(server) else {
                    return;
                };
                let ServerOwner::Dialog(_, requester) = entry.owner else {
                    return;
                };
                let is_bye = entry
                    .request
                    .as_ref()
                    .is_some_and(|r| r.method() == Some(&Method::Bye));
                self.reply_local(key, requester, server, status, now);
                if status == 408 && !is_bye {
                    // The dialog is gone on the silent side (RFC 5057): hang up the requester.
                    self.send_bye(key, requester, now);
                }
                if status == 408 || is_bye {
                    self.end_call(key, reason, "sbc", now);
                }
            }
            ClientOwner::Local => {}
        }
    }

    /// A server transaction timed out: a 2xx was never acknowledged.
    pub(crate) fn on_server_timeout(&mut self, id: TxnId, now: Instant) {
        let Some(owner) = self.txns.server(id).map(|e| e.owner) else {
            return;
        };
        let key = match owner {
            ServerOwner::Invite(key) | ServerOwner::Dialog(key, _) => key,
            ServerOwner::Local => return,
        };
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        if call.pending_ack.is_some_and(|p| p.server == id) {
            tracing::info!(call = %call.id, "2xx never acknowledged: hanging up both legs");
            self.hang_up(key, now);
        }
    }

    /// Answers a request of a call locally (408, 487…).
    fn reply_local(&mut self, key: CallKey, leg: Leg, server: TxnId, status: u16, now: Instant) {
        let Some(request) = self.txns.server(server).and_then(|e| e.request.as_ref()) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if server == call.a_invite {
            call.a_status = status;
        }
        let dialog = call.leg(leg);
        let response = response_to(request, status, None, Some(&dialog.local_tag));
        let (script, trunk) = (call.script, dialog.trunk);
        let response = self.outgoing(Some(key), script, leg, trunk, response);
        self.send_response(server, &response, now);
    }

    /// Bridgehead ends an answered call: BYE on both legs.
    pub(crate) fn hang_up(&mut self, key: CallKey, now: Instant) {
        self.send_bye(key, Leg::A, now);
        self.send_bye(key, Leg::B, now);
        self.end_call(key, "timeout", "sbc", now);
    }

    /// Anchors an SDP about to be sent on `leg` of a call: Bridgehead's ports facing that leg,
    /// the other leg's addresses learned; the relay is told what changed.
    fn anchor_media(&mut self, key: CallKey, leg: Leg, sdp: &mut Sdp) {
        let media_id = self.media_call_id(key);
        let advertise = match &self.current.profile.media {
            Some(media) => media.advertise.clone(),
            None => return,
        };
        let (Some(call), Some(pool)) = (self.calls.get_mut(&key), self.media_ports.as_mut()) else {
            return;
        };
        let trunk = &call.rules.profile.trunks[call.leg(leg).trunk];
        let policy = (trunk.srtp, trunk.media_dscp);
        let dtmf = |trunk: TrunkId| call.rules.profile.trunks[trunk].dtmf;
        let (a_dtmf, b_dtmf) = (dtmf(call.a.trunk), dtmf(call.b.trunk));
        let noise = |trunk: TrunkId| call.rules.profile.trunks[trunk].comfort_noise;
        let (a_noise, b_noise) = (noise(call.a.trunk), noise(call.b.trunk));
        let rules_hear_digits = call.rules.rules.has_hook(call.script, Hook::Media);
        match crate::media::anchor(
            sdp,
            &mut call.streams,
            leg,
            policy,
            pool,
            &mut self.random,
            &advertise,
        ) {
            Ok(mut changed) => {
                use crate::config::DtmfMode;
                for stream in &mut call.streams {
                    let before = *stream;
                    stream.a.dtmf = a_dtmf;
                    stream.b.dtmf = b_dtmf;
                    // Events cross as they are only toward an RFC 4733 trunk that took
                    // telephone-event, and only when no rule may drop or change them.
                    stream.a.dtmf_held = b_dtmf != DtmfMode::Rfc4733
                        || stream.b.dtmf_pt.is_none()
                        || rules_hear_digits;
                    stream.b.dtmf_held = a_dtmf != DtmfMode::Rfc4733
                        || stream.a.dtmf_pt.is_none()
                        || rules_hear_digits;
                    stream.a.comfort_noise = a_noise;
                    stream.b.comfort_noise = b_noise;
                    // A reload can change these without any SDP change.
                    if *stream != before && !changed.contains(&stream.index) {
                        changed.push(stream.index);
                    }
                }
                for index in changed {
                    self.media_commands.push_back(MediaCommand::Stream {
                        call: media_id,
                        stream: Box::new(call.streams[index]),
                    });
                }
            }
            Err(err) => {
                self.stats.media_failures += 1;
                let refuse = call.rules.profile.media.as_ref().map(|m| m.no_ports)
                    == Some(crate::config::NoPortsPolicy::Refuse);
                // Only a new call's offer can be refused: its answer uses the port taken with
                // the offer, and later SDPs go out as they are.
                if refuse && !call.answered && call.invite_pending && leg == Leg::B {
                    call.media_refused = Some(err);
                } else {
                    tracing::error!(call = %call.id, "media not anchored: {err}");
                }
            }
        }
    }

    /// Forgets a call after telling its rules how it ended (`on_call_end`).
    fn end_call(&mut self, key: CallKey, reason: &'static str, by: &'static str, now: Instant) {
        if let Some(call) = self.calls.get(&key) {
            if call.rules.rules.has_hook(call.script, Hook::CallEnd) {
                let info = CallEndInfo {
                    reason,
                    by,
                    status: call.a_status,
                    answered: call.answered,
                    duration: call
                        .answered_at
                        .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64()),
                    mos: call.mos.iter().flatten().copied().reduce(f64::min),
                };
                self.run_call_hook(key, Hook::CallEnd, HookArgs::CallEnd(&info));
            }
        }
        if let Some(call) = self.calls.remove(&key) {
            tracing::debug!(call = %call.id, reason, by, "call ended");
            if !call.streams.is_empty() {
                self.media_commands.push_back(MediaCommand::Close {
                    call: self.media_call_id(key),
                });
                if let Some(pool) = self.media_ports.as_mut() {
                    for stream in &call.streams {
                        pool.give(stream.a.local);
                        pool.give(stream.b.local);
                    }
                }
            }
            self.dialogs.remove(&call.a.dialog_key());
            self.dialogs.remove(&call.b.dialog_key());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
