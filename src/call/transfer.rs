//! REFER terminated by Bridgehead (RFC 3515, RFC 5589 blind transfer): on a trunk with
//! `refer: terminate` (Microsoft Teams, whose Allow-driven choice makes the SBC the
//! transferee), Bridgehead accepts the REFER (202), tells the transferor how it goes with
//! NOTIFYs of `message/sipfrag` (one at a time), plays ringback to the other party while it
//! places a new call to the Refer-To target (`on_refer` may route it elsewhere or refuse), and
//! once the target answers puts it in the transferor's place: same ports facing that side, the
//! target's answer learnt, the other party untouched. The transferor's old dialog then waits
//! for its BYE (Bridgehead sends its own if none comes). Replaces is never sent.

use super::in_dialog::OwnRequest;
use super::join::replaces_of;
use super::offer_answer::sdp_of;
use super::*;

/// A transfer of a call, from its REFER until the transferor's old dialog is gone.
#[derive(Debug)]
pub(super) struct Refer {
    /// The leg the REFER came on (the transferor's side).
    leg: Leg,
    /// The new dialog toward the target, and its INVITE, until the target answers or fails.
    target: Option<(Dialog, TxnId)>,
    /// The transferor's dialog once the target took its place in the call.
    transferor: Option<Dialog>,
    /// A NOTIFY waits for its response: the next one waits too.
    notifying: bool,
    /// The final NOTIFY's sipfrag, until it goes.
    final_frag: Option<String>,
    /// The final NOTIFY went.
    final_sent: bool,
    /// The transferor hung up while the target was being called (RFC 5589 lets it): the
    /// call waits for the target alone, and no NOTIFY goes any more.
    transferor_left: bool,
    /// An attended transfer waits for the call its Replaces names to be joined.
    joining: bool,
    /// The REFER of an attended transfer, while it waits: should the Replaces name no call
    /// of Bridgehead's, the Refer-To target is called instead.
    refer: Option<Message>,
    /// The fresh SRTP keys (by stream) the call's side toward the partner relay takes once
    /// an attended transfer joined the calls.
    keys: Vec<Option<crate::media::SrtpKey>>,
}

impl Refer {
    /// A blind transfer of the call's `leg`, its first NOTIFY sent.
    pub(super) fn blind(leg: Leg) -> Refer {
        Refer {
            leg,
            target: None,
            transferor: None,
            notifying: true,
            final_frag: None,
            final_sent: false,
            transferor_left: false,
            joining: false,
            refer: None,
            keys: Vec::new(),
        }
    }

    /// An attended transfer of the call's `leg` by `refer`, its first NOTIFY sent, waiting
    /// for the join; `keys` are the ones its side toward the partner takes then.
    pub(super) fn joining(
        leg: Leg,
        refer: Message,
        keys: Vec<Option<crate::media::SrtpKey>>,
    ) -> Refer {
        Refer {
            joining: true,
            refer: Some(refer),
            keys,
            ..Refer::blind(leg)
        }
    }

    /// The attended transfer waits for its join.
    pub(super) fn is_joining(&self) -> bool {
        self.joining
    }

    /// The attended transfer joined the calls: the transferor's dialog (`old`, still the
    /// call's leg, dead) waits for its BYE, unless it hung up already. Returns the keys
    /// toward the partner.
    pub(super) fn joined(&mut self, old: Dialog) -> Vec<Option<crate::media::SrtpKey>> {
        self.joining = false;
        self.refer = None;
        if !self.transferor_left {
            self.transferor = Some(old);
        }
        std::mem::take(&mut self.keys)
    }

    /// The transferor hung up while its transfer went on.
    pub(super) fn transferor_left(&self) -> bool {
        self.transferor_left
    }

    /// The leg the REFER came on.
    pub(super) fn leg(&self) -> Leg {
        self.leg
    }

    /// The trunk of the target while its INVITE is pending.
    pub(super) fn target_trunk(&self) -> Option<TrunkId> {
        self.target.as_ref().map(|(dialog, _)| dialog.trunk)
    }

    /// The transfer is done and its transferor has not hung up yet.
    pub(super) fn waits_for_bye(&self) -> bool {
        self.final_sent && self.transferor.is_some()
    }
}

/// The URI a Refer-To names, without its embedded headers (Replaces, Referred-By...): only
/// `sip:`, `sips:` and `tel:`.
fn refer_target(msg: &Message) -> Option<String> {
    let value = msg.header_str(&HeaderName::ReferTo)?;
    let uri = uri_of(value.trim())?;
    let uri = uri.split('?').next().unwrap_or_default().to_string();
    let scheme_ok = ["sip:", "sips:", "tel:"].iter().any(|s| {
        uri.len() > s.len()
            && uri
                .get(..s.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(s))
    });
    scheme_ok.then_some(uri)
}

/// A NOTIFY of the refer subscription carrying `frag` (a status line), its subscription
/// active or, for the last one, terminated.
pub(super) fn notify<'b>(frag: &str, last: bool, key: CallKey) -> OwnRequest<'b> {
    let state = if last {
        "terminated;reason=noresource"
    } else {
        "active;expires=60"
    };
    OwnRequest::new(Method::Notify)
        .with_headers(vec![
            (HeaderName::Other("Event".into()), "refer".to_string()),
            (
                HeaderName::Other("Subscription-State".into()),
                state.to_string(),
            ),
        ])
        .with_body(
            "message/sipfrag;version=2.0",
            Bytes::from(format!("{frag}\r\n")),
        )
        .owned_by(ClientOwner::TransferNotify(key))
}

impl Calls {
    /// The transfer of call `key` going on, if any.
    pub(super) fn refer_mut(&mut self, key: CallKey) -> Option<&mut Refer> {
        self.by_key.get_mut(&key).and_then(|c| c.refer.as_mut())
    }
}

impl B2bua<'_> {
    /// A REFER on `leg` of an answered call, from a trunk that has Bridgehead terminate it.
    pub(super) fn on_refer(
        &mut self,
        key: CallKey,
        leg: Leg,
        (msg, txn_key, from): (Message, String, Peer),
        now: Instant,
    ) {
        let server = self.create_server(txn_key, msg.clone(), from, ServerOwner::Local);
        let Some(call) = self.calls.by_key.get(&key) else {
            return;
        };
        let refusal = if !matches!(call.state, CallState::Answered { .. }) {
            Some(403)
        } else if call.refer.is_some() || call.invite_pending || call.pending_ack.is_some() {
            Some(491)
        } else {
            None
        };
        let Some(target) = refer_target(&msg).filter(|_| refusal.is_none()) else {
            self.reply_local(key, leg, server, refusal.unwrap_or(400), now);
            return;
        };
        // The rule may route the new call or refuse it; by default it goes back to the
        // transferor's trunk (Microsoft's Refer-To names its own proxy).
        let mut hooked = HookMessage::new(msg.clone(), leg, String::new());
        let decision = self
            .run_call_hook(key, Hook::Refer, HookArgs::Message(&mut hooked))
            .decision;
        let Some(call) = self.calls.by_key.get(&key) else {
            return;
        };
        let route = match (decision, replaces_of(&msg)) {
            (Some(RouteDecision::Reject { status, .. }), _) => {
                self.reply_local(key, leg, server, status, now);
                return;
            }
            (Some(RouteDecision::Route { trunk, peer, uri }), _) => Route { trunk, peer, uri },
            // An attended transfer (its Replaces names another call's dialog) joins the calls;
            // a rule that routes it makes it a blind transfer.
            (None, Some(replaces)) => {
                self.start_join(key, leg, (server, msg), replaces, now);
                return;
            }
            (None, None) => Route {
                trunk: call.leg(leg).trunk,
                peer: None,
                uri: None,
            },
        };
        let outgoing = match self.target_call(key, leg, (&target, &msg), &route, now) {
            Ok(outgoing) => outgoing,
            Err(status) => {
                self.reply_local(key, leg, server, status, now);
                return;
            }
        };
        self.reply_local(key, leg, server, 202, now);
        if let Some(call) = self.calls.by_key.get_mut(&key) {
            tracing::info!(call = %call.id, to = %outgoing.0.remote_party, "transfer: REFER accepted");
            call.refer = Some(Refer::blind(leg));
        }
        self.send_in_dialog(key, leg, notify("SIP/2.0 100 Trying", false, key), now);
        self.ring_target(key, leg, outgoing, now);
    }

    /// The target's dialog and INVITE for a transfer of `leg` to `target` (the URI the
    /// REFER names), offering what the transferor had: Bridgehead's ports facing that side,
    /// with its keys, so the target's trunk must take the same SRTP (else 488); 503 when
    /// the route has no peer.
    fn target_call(
        &mut self,
        key: CallKey,
        leg: Leg,
        (target, refer): (&str, &Message),
        route: &Route,
        now: Instant,
    ) -> Result<(Dialog, Message), u16> {
        let call = self.calls.by_key.get(&key).ok_or(481u16)?;
        let trunks = &call.rules.profile.trunks;
        let same_srtp = trunks[route.trunk].srtp == trunks[call.leg(leg).trunk].srtp;
        let script = call.script;
        let Some(offer) = call.last_sdp[leg.index()].clone().filter(|_| same_srtp) else {
            tracing::info!(call = %call.id, "transfer refused: no offer for the target (SRTP differs, or no SDP)");
            return Err(488);
        };
        let (dialog, invite) = self
            .target_invite(key, leg, target, refer, route, now)
            .ok_or(503u16)?;
        let mut invite = self.outgoing(Some(key), script, leg, dialog.trunk, invite);
        invite.set_header(HeaderName::ContentType, "application/sdp");
        invite.body = offer;
        Ok((dialog, invite))
    }

    /// Calls a transfer's target (its dialog and INVITE) while the other party hears
    /// ringback.
    fn ring_target(
        &mut self,
        key: CallKey,
        leg: Leg,
        (target, invite): (Dialog, Message),
        now: Instant,
    ) {
        let anchored = self
            .calls
            .by_key
            .get(&key)
            .is_some_and(|c| c.rules.profile.media.is_some());
        if anchored {
            let ringback = crate::script::MediaAction::PlayRingback { leg: leg.other() };
            self.play(key, &ringback);
        }
        let id = self.start_client(invite, target.peer, ClientOwner::Transfer(key), now);
        if let Some(refer) = self.calls.refer_mut(key) {
            refer.target = Some((target, id));
        }
    }

    /// An attended transfer whose Replaces names no call of Bridgehead's (`481`: Teams
    /// consulted one of its own users, say) calls its Refer-To target as a blind transfer
    /// would; any other refusal fails it.
    pub(super) fn join_refused(&mut self, key: CallKey, status: u16, now: Instant) {
        let refer = self.calls.refer_mut(key).and_then(|r| {
            r.joining = false;
            r.refer.take().map(|msg| (r.leg, msg))
        });
        let blind = refer.filter(|_| status == 481).and_then(|(leg, msg)| {
            let target = refer_target(&msg)?;
            Some((leg, msg, target))
        });
        let Some((leg, msg, target)) = blind else {
            self.transfer_failed(key, status, crate::sip::reason_phrase(status), now);
            return;
        };
        let Some(trunk) = self.calls.by_key.get(&key).map(|c| c.leg(leg).trunk) else {
            return;
        };
        let route = Route {
            trunk,
            peer: None,
            uri: None,
        };
        tracing::info!(
            call_key = key,
            "attended transfer: the replaced dialog is not Bridgehead's; calling the target"
        );
        match self.target_call(key, leg, (&target, &msg), &route, now) {
            Ok(outgoing) => self.ring_target(key, leg, outgoing, now),
            Err(status) => {
                self.transfer_failed(key, status, crate::sip::reason_phrase(status), now)
            }
        }
    }

    /// The INVITE toward a transfer's target and its dialog: from the party the transferor
    /// talked to, with the REFER's Referred-By, neither 100rel nor session timers (its body is
    /// added after the rules ran: the offer Bridgehead already made that side).
    fn target_invite(
        &mut self,
        key: CallKey,
        leg: Leg,
        target: &str,
        refer: &Message,
        route: &Route,
        now: Instant,
    ) -> Option<(Dialog, Message)> {
        let call = self.calls.by_key.get(&key)?;
        let rules = call.rules.clone();
        let from = call.leg(leg).local_party.clone();
        let mut draft = Message {
            start: StartLine::Request {
                method: Method::Invite,
                uri: target.to_string(),
            },
            headers: Vec::new(),
            body: Bytes::new(),
        };
        draft.push_header(HeaderName::From, from);
        draft.push_header(HeaderName::To, format!("<{target}>"));
        draft.push_header(HeaderName::CallId, String::new());
        draft.push_header(HeaderName::CSeq, "1 INVITE".to_string());
        draft.push_header(HeaderName::MaxForwards, "70".to_string());
        if let Some(by) = refer.header_str(&HeaderName::ReferredBy) {
            draft.push_header(HeaderName::ReferredBy, by.to_string());
        }
        let id = call.id.clone();
        let (call_id, tag) = self.fresh_b_identity(&id, &mut draft);
        // A body for now, so that no offer of Bridgehead's own is made: the real one follows.
        draft.body = Bytes::from_static(b"-");
        let (dialog, mut invite) =
            self.address_b_leg(&rules, draft, route, (call_id, tag, None), now)?;
        invite.body = Bytes::new();
        for name in [
            HeaderName::Supported,
            HeaderName::Require,
            HeaderName::SessionExpires,
            HeaderName::MinSE,
        ] {
            invite.remove_header(&name);
        }
        Some((dialog, invite))
    }

    /// A response from the transfer's target. A 2xx: acknowledged, the target takes the
    /// transferor's place (its answer learnt for that side), and the transferor hears `200
    /// OK`; a failure: the transferor hears it, and the call stays as it was.
    pub(super) fn on_transfer_response(&mut self, key: CallKey, msg: &Message, now: Instant) {
        let Some(status) = msg.status().filter(|s| *s >= 200) else {
            return;
        };
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        let Some(refer) = call.refer.as_mut() else {
            return;
        };
        let Some((mut target, _)) = refer.target.take() else {
            return;
        };
        let (leg, left) = (refer.leg, refer.transferor_left);
        if status >= 300 {
            let reason = match &msg.start {
                StartLine::Response { reason, .. } => reason.clone(),
                StartLine::Request { .. } => String::new(),
            };
            self.transfer_failed(key, status, &reason, now);
            return;
        }
        B2bua::learn_dialog(&mut target, msg);
        self.calls.dialogs.insert(target.dialog_key(), (key, leg));
        let old = std::mem::replace(call.leg_mut(leg), target);
        // The call now counts on the target's trunk (a transfer is held to no limit: the
        // call was admitted already).
        let trunk = &call.rules.profile.trunks[call.leg(leg).trunk].name;
        call.seats[leg.index()] = self.calls.loads.admit(trunk, (None, None), now).ok();
        call.session[leg.index()] = None;
        call.session_due[leg.index()] = None;
        tracing::info!(call = %call.id, "transfer: the target answered and takes the call");
        if left {
            // The transferor is gone already: nobody to tell.
            self.calls.dialogs.remove(&old.dialog_key());
            call.refer = None;
        } else if let Some(refer) = call.refer.as_mut() {
            refer.transferor = Some(old);
        }
        self.ack_leg(key, leg, None);
        self.end_ringback(key, leg.other());
        // Where the target wants media: learnt as any SDP from that side (nothing goes to the
        // other party, whose side of the relay stays as it is).
        if let Some(mut answer) = sdp_of(msg).and_then(|sdp| Sdp::parse(&sdp).ok()) {
            self.anchor_media(key, leg.other(), &mut answer);
        }
        self.transfer_done(key, status, now);
    }

    /// The transfer succeeded (`status`, the target's 2xx): the transferor hears it in the
    /// final NOTIFY.
    pub(super) fn transfer_done(&mut self, key: CallKey, status: u16, now: Instant) {
        if let Some(refer) = self.calls.refer_mut(key) {
            let reason = crate::sip::reason_phrase(status);
            refer.final_frag = Some(format!("SIP/2.0 {status} {reason}"));
        }
        self.send_final_notify(key, now);
    }

    /// The ringback a transfer plays toward `leg` ends (the target answered, or it failed and
    /// the party waits for the transferor to take the call back).
    fn end_ringback(&mut self, key: CallKey, leg: Leg) {
        let anchored = self
            .calls
            .by_key
            .get(&key)
            .is_some_and(|c| c.rules.profile.media.is_some());
        if anchored {
            self.play_sound(key, leg, crate::media::player::Sound::EndRingback);
        }
    }

    /// The target's INVITE got no response (timeout) or could not be sent.
    pub(super) fn on_transfer_failure(&mut self, key: CallKey, status: u16, now: Instant) {
        if self
            .calls
            .refer_mut(key)
            .is_some_and(|refer| refer.target.take().is_some())
        {
            self.transfer_failed(key, status, crate::sip::reason_phrase(status), now);
        }
    }

    /// The target refused or never answered: the transferor hears it and the call stays, or,
    /// when the transferor left already, the call ends.
    pub(super) fn transfer_failed(
        &mut self,
        key: CallKey,
        status: u16,
        reason: &str,
        now: Instant,
    ) {
        let Some(refer) = self.calls.refer_mut(key) else {
            return;
        };
        let leg = refer.leg;
        if refer.transferor_left {
            tracing::info!(
                call_key = key,
                status,
                "transfer failed and its transferor is gone: the call ends"
            );
            self.send_bye(key, leg.other(), Vec::new(), now);
            self.end_call(key, "bye", Some(leg), now);
            return;
        }
        tracing::info!(call_key = key, status, "transfer failed: the call stays");
        refer.final_frag = Some(format!("SIP/2.0 {status} {reason}"));
        self.end_ringback(key, leg.other());
        self.send_final_notify(key, now);
    }

    /// Sends the final NOTIFY once no other NOTIFY waits for its response: in the transferor's
    /// old dialog when the target took its place, else in the call's leg.
    fn send_final_notify(&mut self, key: CallKey, now: Instant) {
        let Some(refer) = self.calls.refer_mut(key) else {
            return;
        };
        if refer.notifying {
            return;
        }
        let Some(frag) = refer.final_frag.take() else {
            return;
        };
        refer.notifying = true;
        refer.final_sent = true;
        self.in_transferor_dialog(key, |b2bua, leg| {
            b2bua.send_in_dialog(key, leg, notify(&frag, true, key), now);
        });
    }

    /// A NOTIFY of a transfer got its response: the final one goes if it waited; after the
    /// final one, a failed transfer is over and a successful one waits for the transferor's
    /// BYE.
    pub(super) fn on_transfer_notified(&mut self, key: CallKey, now: Instant) {
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        let Some(refer) = call.refer.as_mut() else {
            return;
        };
        refer.notifying = false;
        if !refer.final_sent {
            self.send_final_notify(key, now);
            return;
        }
        if let Some(old) = &refer.transferor {
            // The transferor's trunk says how long it may stay in its old dialog.
            let trunk = old.trunk;
            let grace = call.rules.profile.trunks[trunk].transferor_bye;
            let grace = std::time::Duration::from_secs(grace.into());
            self.calls.arm_transferor_bye(key, now + grace);
        } else if refer.target.is_none() {
            call.refer = None;
        }
    }

    /// Runs `f` with the transferor's dialog as the call's leg (its old dialog, once the
    /// target took the call), then puts the target back.
    fn in_transferor_dialog(&mut self, key: CallKey, f: impl FnOnce(&mut Self, Leg)) {
        let swap = |b2bua: &mut Self| {
            let call = b2bua.calls.by_key.get_mut(&key)?;
            let refer = call.refer.as_mut()?;
            let leg = refer.leg;
            let old = refer.transferor.as_mut()?;
            std::mem::swap(
                old,
                match leg {
                    Leg::A => &mut call.a,
                    Leg::B => &mut call.b,
                },
            );
            Some(())
        };
        let Some(leg) = self
            .calls
            .by_key
            .get(&key)
            .and_then(|c| c.refer.as_ref())
            .map(|r| r.leg)
        else {
            return;
        };
        let swapped = swap(self).is_some();
        f(self, leg);
        if swapped {
            swap(self);
        }
    }

    /// A BYE from the transferor while its transfer's target is being called or its calls
    /// joined: true when it is one (the caller answers it `200`; the call goes on waiting).
    pub(super) fn transferor_leaves(&mut self, key: CallKey, leg: Leg) -> bool {
        let refer = self
            .calls
            .refer_mut(key)
            .filter(|r| r.leg == leg && (r.target.is_some() || r.joining));
        let Some(refer) = refer else {
            return false;
        };
        refer.transferor_left = true;
        refer.final_frag = None;
        true
    }

    /// The transferor's request in its old dialog: a BYE is answered and ends that dialog;
    /// anything else gets 481. True when the request was the transferor's.
    pub(super) fn on_transferor_request(
        &mut self,
        incoming: &Incoming,
        method: &Method,
        info: &RequestInfo,
        now: Instant,
    ) -> Option<u16> {
        let (key, _) = self
            .calls
            .dialogs
            .get(&dialog_key(&info.call_id, info.to_tag.as_deref()))
            .copied()?;
        let old = self
            .calls
            .by_key
            .get(&key)?
            .refer
            .as_ref()?
            .transferor
            .as_ref()?;
        if info.to_tag.as_deref() != Some(old.local_tag.as_str()) || old.call_id != info.call_id {
            return None;
        }
        if *method != Method::Bye {
            return Some(481);
        }
        tracing::info!(call_key = key, from = %incoming.from.addr, "the transferor hung up its old dialog");
        self.transferor_gone(key, false, now);
        Some(200)
    }

    /// The transferor's old dialog ends: by its BYE, or (`hang_up`) by Bridgehead's own when
    /// it did not send one in time.
    pub(super) fn transferor_gone(&mut self, key: CallKey, hang_up: bool, now: Instant) {
        if hang_up {
            self.in_transferor_dialog(key, |b2bua, leg| b2bua.send_bye(key, leg, Vec::new(), now));
        }
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        if let Some(old) = call.refer.take().and_then(|r| r.transferor) {
            self.calls.dialogs.remove(&old.dialog_key());
        }
    }

    /// A call that ends during a transfer: the target's INVITE is cancelled, the transferor's
    /// old dialog hung up.
    pub(super) fn end_transfer(&mut self, key: CallKey, now: Instant) {
        let Some(refer) = self.calls.by_key.get(&key).and_then(|c| c.refer.as_ref()) else {
            return;
        };
        let (pending, transferor) = (
            refer.target.as_ref().map(|(_, id)| *id),
            refer.transferor.is_some(),
        );
        if let Some(invite) = pending {
            if let Some((entry, request)) = self
                .txns
                .client(invite)
                .and_then(|e| Some((e, e.request.as_ref()?)))
            {
                let (cancel, peer) = (build::cancel_for(request), entry.peer);
                self.start_client(cancel, peer, ClientOwner::Local, now);
            }
        }
        if transferor {
            self.transferor_gone(key, true, now);
        }
        if let Some(call) = self.calls.by_key.get_mut(&key) {
            call.refer = None;
        }
    }
}
