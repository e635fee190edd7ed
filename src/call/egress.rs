//! Egress: the rules' hooks on every message Bridgehead sends, and the trunk's header policy (what
//! crosses from the other leg).

use super::offer_answer::offer_codecs;
use super::offer_answer::sdp_kind;
use super::offer_answer::{carries_sdp, keep_sdp_only, replace_sdp, sdp_of};
use super::*;

/// Removes the headers the policy does not let cross, unless a rule set them.
pub(super) fn apply_policy(msg: &mut Message, touched: &[HeaderName], policy: &HeaderPolicy) {
    msg.headers.retain(|h| {
        h.name.is_b2bua_owned() || touched.contains(&h.name) || policy.allows(h.name.as_str())
    });
}

/// `P-Early-Media` (RFC 5009) toward a trunk: a trunk that takes it gets `supported` on an
/// INVITE and `sendrecv` on a provisional response with SDP where none came (the callee's own
/// value crosses); toward any other trunk it is removed, unless a rule set it.
fn p_early_media(msg: &mut Message, touched: &[HeaderName], trunk_takes_it: bool) {
    let name = HeaderName::PEarlyMedia;
    if !trunk_takes_it {
        if !touched.contains(&name) {
            msg.remove_header(&name);
        }
        return;
    }
    if msg.header(&name).is_some() {
        return;
    }
    let value = match (msg.method(), msg.status()) {
        (Some(Method::Invite), _) => "supported",
        (None, Some(101..=199)) if carries_sdp(msg) => "sendrecv",
        _ => return,
    };
    msg.push_header(name, value.to_string());
}

impl B2bua<'_> {
    pub(super) fn rules_of(&self, call: Option<CallKey>) -> Arc<RuleSet> {
        call.and_then(|k| self.calls.by_key.get(&k))
            .map_or_else(|| self.calls.current.clone(), |c| c.rules.clone())
    }

    /// Runs `hook` of `script` for the call `key` (or, with `key` None, for a call being set
    /// up when the hook is `on_invite`, and for a message outside calls otherwise: `call` is
    /// nil then). Failures are logged with the call id and counted.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_hook(
        &mut self,
        rules: &RuleSet,
        key: Option<CallKey>,
        call_id: &str,
        ingress: TrunkId,
        script: Option<ScriptId>,
        hook: Hook,
        args: HookArgs<'_>,
    ) -> HookOutcome {
        let (vars, reliable) = key
            .and_then(|k| self.calls.by_key.get_mut(&k))
            .map_or((None, [false; 2]), |c| (c.vars.take(), c.reliable_legs()));
        let mut call = HookCall::new(call_id.to_string(), ingress, vars);
        call.reliable = reliable;
        let in_call = key.is_some() || hook == Hook::Invite;
        let result = rules
            .rules
            .run(script, hook, in_call.then_some(&mut call), args);
        self.hook_outcome(key, call_id, hook, call, result)
    }

    /// What a hook that ran for the call `key` (None: a call being set up, or no call) left:
    /// its variables, Contact hosts and media actions go to the call; a failure is logged and
    /// counted.
    pub(super) fn hook_outcome(
        &mut self,
        key: Option<CallKey>,
        call_id: &str,
        hook: Hook,
        mut call: HookCall,
        result: Result<(), crate::script::ScriptError>,
    ) -> HookOutcome {
        let mut vars = call.vars.take();
        let contact_hosts = std::mem::take(&mut call.contact_hosts);
        if let Some(c) = key.and_then(|k| self.calls.by_key.get_mut(&k)) {
            c.vars = vars.take();
            c.early_media = call.early_media.or(c.early_media);
            for leg in [Leg::A, Leg::B] {
                if let Some(host) = &contact_hosts[leg.index()] {
                    let dialog = c.leg_mut(leg);
                    dialog.contact = build::with_contact_host(&dialog.contact, host);
                    c.contact_hosts[leg.index()] = Some(host.clone());
                }
            }
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
                self.calls.stats.script_errors += 1;
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
            early_media: call.early_media,
            contact_hosts: if key.is_some() {
                [None, None]
            } else {
                contact_hosts
            },
            failed,
        }
    }

    /// Runs a hook of a call's own script on its own rule-set version.
    pub(super) fn run_call_hook(
        &mut self,
        key: CallKey,
        hook: Hook,
        args: HookArgs<'_>,
    ) -> HookOutcome {
        let Some(call) = self.calls.by_key.get(&key) else {
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

    /// Runs `on_early_media` on a provisional response of the callee that carries SDP; returns
    /// it as the rule left it (what goes on to the caller), with the headers the rule set.
    pub(super) fn early_media_hook(
        &mut self,
        key: CallKey,
        msg: Message,
    ) -> (Message, Vec<HeaderName>) {
        let Some(call) = self.calls.by_key.get(&key) else {
            return (msg, Vec::new());
        };
        if !call.rules.rules.has_hook(call.script, Hook::EarlyMedia) {
            return (msg, Vec::new());
        }
        let trunk = call.rules.profile.trunks[call.b.trunk].name.clone();
        let mut hooked = HookMessage::new(msg, Leg::B, trunk);
        self.run_call_hook(key, Hook::EarlyMedia, HookArgs::Message(&mut hooked));
        (hooked.msg, hooked.touched)
    }

    /// Runs a lifecycle hook (`on_answer`, `on_failure`) with the callee's response and returns
    /// the rule's decision (only `on_failure` acts on it).
    pub(super) fn lifecycle_hook(
        &mut self,
        key: CallKey,
        hook: Hook,
        msg: &Message,
    ) -> Option<RouteDecision> {
        let call = self.calls.by_key.get(&key)?;
        if !call.rules.rules.has_hook(call.script, hook) {
            return None;
        }
        let trunk = call.rules.profile.trunks[call.b.trunk].name.clone();
        let mut hooked = HookMessage::new(msg.clone(), Leg::B, trunk);
        self.run_call_hook(key, hook, HookArgs::Message(&mut hooked))
            .decision
    }

    /// Runs the rules on a message about to be sent toward `trunk` (`on_sdp` for an SDP body,
    /// then `on_request` or `on_response`), then applies the trunk's header policy (of the
    /// call's rule-set version).
    pub(super) fn outgoing(
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

    /// [`B2bua::outgoing`] for a message some headers of which a rule already edited (they
    /// bypass the policy), and for a response whose request did or did not carry an SDP offer
    /// (`request_had_sdp`). Also tells whether a hook failed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn outgoing_edited(
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
        let anchoring = has_sdp && call.is_some() && self.calls.media_ports.is_some();
        // The callee takes no part in the caller's preconditions, terminated here.
        let terminated = call
            .and_then(|k| self.calls.by_key.get(&k))
            .filter(|c| c.preconditions.is_some())
            .map(|c| c.state == CallState::Calling);
        let plain = has_sdp && leg == Leg::B && terminated.is_some();
        // Hold is a thing of an answered call: before it, `c=0.0.0.0` is Bridgehead's own "not
        // sending yet" (its offer for a delayed one, its ringback answer), not hold.
        let answered = call
            .and_then(|k| self.calls.by_key.get(&k))
            .is_some_and(|c| matches!(c.state, CallState::Answered { .. }));
        let inactive_hold = has_sdp
            && answered
            && rules.profile.trunks[trunk].hold == crate::config::HoldStyle::Inactive;
        // A strict peer (Microsoft Teams) gets only the attributes it names, whatever the
        // other leg or a rule wrote.
        let strict = has_sdp && !rules.profile.trunks[trunk].sdp_attributes.is_empty();
        let allowed: Vec<&str> = if strict {
            rules.profile.trunks[trunk]
                .sdp_attributes
                .iter()
                .map(String::as_str)
                .collect()
        } else {
            Vec::new()
        };
        let initial_offer = terminated == Some(true) && msg.method() == Some(&Method::Invite);
        let codecs = &rules.profile.trunks[trunk].codecs;
        let filtering = has_sdp && !codecs.is_empty() && sdp_kind(&msg, request_had_sdp) == "offer";
        let wants_sdp = has_sdp && rules.rules.has_hook(script, Hook::Sdp);
        let wants_message = rules.rules.has_hook(script, hook);
        let mut hooked = HookMessage::new(msg, leg, String::new());
        hooked.touched = touched;
        let mut failed = false;
        let (call_id, ingress) = call
            .and_then(|k| self.calls.by_key.get(&k))
            .map_or((String::new(), trunk), |c| (c.id.clone(), c.ingress));
        if wants_sdp || wants_message {
            hooked.trunk = rules.profile.trunks[trunk].name.clone();
        }
        // The offer/answer hand-off: the trunk's codecs, media anchoring, then the rules' own
        // edits.
        if anchoring || wants_sdp || filtering || plain || inactive_hold || strict {
            match Sdp::parse(&sdp_of(&hooked.msg).unwrap_or_default()) {
                Ok(mut sdp) => {
                    if plain {
                        super::precondition::strip_preconditions(&mut sdp, initial_offer);
                    }
                    // Which streams are held, read before anchoring rewrites the addresses.
                    let held = if inactive_hold {
                        super::offer_answer::held_streams(&sdp)
                    } else {
                        Vec::new()
                    };
                    // Anchoring first: it learns the sender's own codecs before any filter.
                    if let Some(key) = call.filter(|_| anchoring) {
                        self.anchor_media(key, leg, &mut sdp);
                    }
                    if filtering {
                        offer_codecs(&mut sdp, codecs, anchoring, &call_id);
                    }
                    for index in held {
                        if let Some(media) = sdp.media_mut().get_mut(index) {
                            media.set_direction(crate::sdp::Direction::Inactive);
                        }
                    }
                    if wants_sdp {
                        let shared: SharedSdp = Arc::new(Mutex::new(sdp));
                        let kind = sdp_kind(&hooked.msg, request_had_sdp);
                        let args = HookArgs::Sdp {
                            sdp: shared.clone(),
                            kind,
                            leg,
                            msg: &mut hooked,
                        };
                        failed |= self
                            .run_hook(&rules, call, &call_id, ingress, script, Hook::Sdp, args)
                            .failed;
                        let mut sdp = shared.lock().unwrap_or_else(|e| e.into_inner());
                        if strict {
                            sdp.keep_only_attributes(&allowed);
                        }
                        replace_sdp(&mut hooked.msg, Bytes::from(sdp.to_bytes()));
                    } else {
                        if strict {
                            sdp.keep_only_attributes(&allowed);
                        }
                        replace_sdp(&mut hooked.msg, Bytes::from(sdp.to_bytes()));
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
        let dest = &rules.profile.trunks[trunk];
        if dest.multipart == MultipartPolicy::SdpOnly {
            keep_sdp_only(&mut hooked.msg);
        }
        p_early_media(&mut hooked.msg, &hooked.touched, dest.p_early_media);
        apply_policy(&mut hooked.msg, &hooked.touched, &dest.headers);
        if dest.refer == ReferPolicy::Terminate {
            // Microsoft reads REFER in the SBC's Allow as "the SBC takes transfers itself".
            if let Some(allow) = hooked.msg.header_str(&HeaderName::Allow) {
                if !allow.split(',').any(|m| m.trim() == "REFER") {
                    let allow = format!("{allow}, REFER");
                    hooked.msg.set_header(HeaderName::Allow, allow);
                }
            }
        }
        if let Some(limit) = dest.trim_above.filter(|_| has_sdp) {
            let (candidates, codecs) = super::offer_answer::trim_to_fit(&mut hooked.msg, limit);
            if candidates + codecs > 0 {
                tracing::info!(call = %call_id, trunk = %dest.name, limit, candidates, codecs, "SDP trimmed to fit");
            }
        }
        if has_sdp {
            if let Some(c) = call.and_then(|k| self.calls.by_key.get_mut(&k)) {
                c.last_sdp[leg.index()] = sdp_of(&hooked.msg);
            }
        }
        (hooked.msg, failed)
    }
}
