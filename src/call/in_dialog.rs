//! In-dialog requests: ACKs, BYE, re-INVITE, UPDATE, INFO and the rest relayed between the legs,
//! and the requests Bridgehead sends itself within a dialog.

use super::dtmf::info_digit;
use super::offer_answer::carries_sdp;
use super::record::reasons;
use super::*;

/// Requests that refresh the remote target and carry our Contact.
pub(super) fn is_target_refresh(method: &Method) -> bool {
    matches!(
        method,
        Method::Invite | Method::Update | Method::Subscribe | Method::Notify | Method::Refer
    )
}

/// The Record-Route values of a message, in order.
pub(super) fn record_routes(msg: &Message) -> Vec<String> {
    msg.headers_named(&HeaderName::RecordRoute)
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(split_list)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect()
}

/// The URI of the first Contact of a message.
pub(super) fn contact_uri(msg: &Message) -> Option<String> {
    let value = msg.header_str(&HeaderName::Contact)?;
    uri_of(split_list(value).next()?)
}

/// A request Bridgehead sends on its own in a dialog: the method, extra headers, an optional
/// body (content type, bytes), and who waits for its outcome.
#[derive(Debug)]
pub(super) struct OwnRequest<'b> {
    method: Method,
    headers: Vec<(HeaderName, String)>,
    body: Option<(&'b str, Bytes)>,
    /// The body is already what this leg gets (an SDP Bridgehead sent it before): it is
    /// neither anchored again nor shown to the rules.
    body_as_sent: bool,
    owner: ClientOwner,
}

impl<'b> OwnRequest<'b> {
    pub(super) fn new(method: Method) -> OwnRequest<'b> {
        OwnRequest {
            method,
            headers: Vec::new(),
            body: None,
            body_as_sent: false,
            owner: ClientOwner::Local,
        }
    }

    /// A PRACK acknowledging `rack` (`RSeq CSeq INVITE`).
    pub(super) fn prack(rack: String) -> OwnRequest<'b> {
        OwnRequest::new(Method::Prack).with_headers(vec![(HeaderName::RAck, rack)])
    }

    pub(super) fn with_headers(mut self, headers: Vec<(HeaderName, String)>) -> OwnRequest<'b> {
        self.headers = headers;
        self
    }

    pub(super) fn with_body(mut self, content_type: &'b str, bytes: Bytes) -> OwnRequest<'b> {
        self.body = Some((content_type, bytes));
        self
    }

    /// An SDP this leg already got from Bridgehead, sent again as it is.
    pub(super) fn with_sdp_as_sent(mut self, sdp: Bytes) -> OwnRequest<'b> {
        self.body = Some(("application/sdp", sdp));
        self.body_as_sent = true;
        self
    }

    pub(super) fn owned_by(mut self, owner: ClientOwner) -> OwnRequest<'b> {
        self.owner = owner;
        self
    }
}

impl B2bua<'_> {
    /// An ACK outside any transaction: the end-to-end ACK of a 2xx.
    pub(super) fn on_dialog_ack(&mut self, msg: Message, info: &RequestInfo, now: Instant) {
        let key = dialog_key(&info.call_id, info.to_tag.as_deref());
        let Some((key, leg)) = self.calls.dialogs.get(&key).copied() else {
            return;
        };
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        let Some(pending) = call.pending_ack.filter(|p| p.from == leg) else {
            return;
        };
        call.pending_ack = None;
        self.server_ack(pending.server, now);
        if !self.on_joined_ack(key, leg, &msg) {
            self.ack_leg(key, leg.other(), Some(&msg));
        }
    }

    /// Sends the ACK of the last INVITE on `leg`, carrying the body of `from` (late offer).
    pub(super) fn ack_leg(&mut self, key: CallKey, leg: Leg, from: Option<&Message>) {
        let branch = self.new_branch();
        let Some(call) = self.calls.by_key.get(&key) else {
            return;
        };
        let dialog = call.leg(leg);
        let listener = &self.calls.current.profile.listeners[dialog.peer.listener];
        let via = via_value(listener, dialog.peer.transport, &branch);
        let mut ack = dialog_request(Method::Ack, dialog, via, dialog.invite_cseq, 70);
        if let Some(from) = from {
            copy_crossing(from, &mut ack);
        }
        let withheld_answer = (leg == Leg::B)
            .then(|| {
                self.calls
                    .by_key
                    .get_mut(&key)
                    .and_then(|c| c.callee_answer_due.take())
            })
            .flatten();
        if let Some(answer) = withheld_answer {
            // The callee offered in its 2xx (its INVITE had none): Bridgehead's answer.
            ack.set_header(HeaderName::ContentType, "application/sdp");
            ack.body = answer;
        }
        let Some(call) = self.calls.by_key.get(&key) else {
            return;
        };
        let dialog = call.leg(leg);
        let (peer, trunk, script, own_offer) =
            (dialog.peer, dialog.trunk, call.script, call.own_offer);
        let mut ack = self.outgoing(Some(key), script, leg, trunk, ack);
        if own_offer && leg == Leg::B {
            // The caller's answer to the callee's SDP: anchored (where the caller wants media
            // is learnt), and not for the callee, which got its answer in the 2xx.
            ack.remove_header(&HeaderName::ContentType);
            ack.body = Bytes::new();
        }
        let bytes = Bytes::from(ack.to_bytes());
        if let Some(call) = self.calls.by_key.get_mut(&key) {
            call.last_ack = Some((leg, bytes.clone()));
        }
        self.transmit(peer, bytes);
    }

    /// Sends a BYE on a leg (Bridgehead hangs up that side), with extra headers (a Reason).
    pub(super) fn send_bye(
        &mut self,
        key: CallKey,
        leg: Leg,
        headers: Vec<(HeaderName, String)>,
        now: Instant,
    ) {
        let bye = OwnRequest::new(Method::Bye).with_headers(headers);
        self.send_in_dialog(key, leg, bye, now);
    }

    /// Sends a request of Bridgehead's own in the dialog of a leg (next CSeq). Nothing is sent
    /// before the dialog (early or confirmed) exists.
    pub(super) fn send_in_dialog(
        &mut self,
        key: CallKey,
        leg: Leg,
        OwnRequest {
            method,
            headers,
            body,
            body_as_sent,
            owner,
        }: OwnRequest<'_>,
        now: Instant,
    ) {
        let has_dialog = self
            .calls
            .by_key
            .get(&key)
            .is_some_and(|call| call.leg(leg).remote_tag.is_some());
        if !has_dialog {
            return;
        }
        let Some((mut request, peer, trunk, script)) = self.next_request(key, leg, method, 70)
        else {
            return;
        };
        for (name, value) in headers {
            request.push_header(name, value);
        }
        let attach = |request: &mut Message, (content_type, bytes): (&str, Bytes)| {
            request.set_header(HeaderName::ContentType, content_type.to_string());
            request.body = bytes;
        };
        let (now_body, later_body) = if body_as_sent {
            (None, body)
        } else {
            (body, None)
        };
        if let Some(body) = now_body {
            attach(&mut request, body);
        }
        let mut request = self.outgoing(Some(key), script, leg, trunk, request);
        if let Some(body) = later_body {
            attach(&mut request, body);
        }
        self.start_client(request, peer, owner, now);
    }

    /// The next request of Bridgehead's on a leg's dialog: the next CSeq (an INVITE's is the
    /// one its ACK takes), a new branch, Bridgehead's Contact on a target refresh, and on an
    /// INVITE or UPDATE what Bridgehead allows and the leg's own session timer (§9). Also
    /// where it goes: the peer, and the trunk and script of its hooks.
    fn next_request(
        &mut self,
        key: CallKey,
        leg: Leg,
        method: Method,
        max_forwards: u8,
    ) -> Option<(Message, Peer, TrunkId, Option<ScriptId>)> {
        let branch = self.new_branch();
        let call = self.calls.by_key.get_mut(&key)?;
        let dialog = call.leg_mut(leg);
        dialog.local_cseq += 1;
        if method == Method::Invite {
            dialog.invite_cseq = dialog.local_cseq;
        }
        let dialog = call.leg(leg);
        let listener = &self.calls.current.profile.listeners[dialog.peer.listener];
        let via = via_value(listener, dialog.peer.transport, &branch);
        let target_refresh = is_target_refresh(&method);
        let offers = matches!(method, Method::Invite | Method::Update);
        let mut request = dialog_request(method, dialog, via, dialog.local_cseq, max_forwards);
        if target_refresh {
            request.push_header(HeaderName::Contact, dialog.contact.clone());
        }
        if offers {
            request.push_header(HeaderName::Allow, ALLOW.to_string());
            for (name, value) in B2bua::session_headers(call, leg, Refresher::Bridgehead) {
                request.push_header(name, value);
            }
        }
        Some((request, dialog.peer, dialog.trunk, call.script))
    }

    /// Checks an in-dialog request against its dialog (RFC 3261 §12.2.2) and records what it
    /// changes; returns the call and the leg it came on, or the status to refuse it with.
    pub(super) fn accept_dialog_request(
        &mut self,
        msg: &Message,
        method: &Method,
        info: &RequestInfo,
    ) -> Result<(CallKey, Leg), Refusal> {
        let (call_key, leg) = self
            .calls
            .dialogs
            .get(&dialog_key(&info.call_id, info.to_tag.as_deref()))
            .copied()
            .ok_or((481, Vec::new()))?;
        let call = self
            .calls
            .by_key
            .get_mut(&call_key)
            .ok_or((481, Vec::new()))?;
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

    pub(super) fn on_dialog_request(
        &mut self,
        incoming: Incoming,
        method: Method,
        info: RequestInfo,
        now: Instant,
    ) {
        // The transferor of a transfer done, in the dialog the target took over.
        if let Some(status) = self.on_transferor_request(&incoming, &method, &info, now) {
            self.answer(incoming, status, &[], now);
            return;
        }
        let (call_key, leg) = match self.accept_dialog_request(&incoming.msg, &method, &info) {
            Ok(found) => found,
            Err((status, extra)) => {
                self.answer(incoming, status, &extra, now);
                return;
            }
        };
        if method == Method::Bye {
            self.calls
                .note_end_reason(call_key, reasons(&incoming.msg).as_deref());
        }
        let Incoming {
            msg,
            key,
            from,
            trunk,
        } = incoming;
        if method == Method::Prack {
            // Reliability ends at Bridgehead on each leg: a PRACK is never relayed.
            self.on_prack(call_key, leg, (msg, key, from), now);
            return;
        }
        if self.dead_leg(call_key).is_some() {
            // Joined by an attended transfer: nothing crosses to or from the dead leg.
            self.on_joined_request(call_key, leg, (msg, key, from), now);
            return;
        }
        if let Some(status) = self.while_joining(call_key, leg, &method) {
            if let Some(call) = self.calls.by_key.get_mut(&call_key) {
                call.invite_pending &= method != Method::Invite;
            }
            let server = self.create_server(key, msg, from, ServerOwner::Local);
            self.reply_local(call_key, leg, server, status, now);
            if method == Method::Bye {
                // The transferor's dialog ends with it.
                self.send_bye(call_key, leg.other(), Vec::new(), now);
                self.end_call(call_key, "bye", Some(leg), now);
            }
            return;
        }
        let terminates_refer = self.calls.by_key.get(&call_key).is_some_and(|call| {
            call.rules.profile.trunks[call.leg(leg).trunk].refer == ReferPolicy::Terminate
        });
        if method == Method::Refer && terminates_refer {
            self.on_refer(call_key, leg, (msg, key, from), now);
            return;
        }
        if method == Method::Bye && self.transferor_leaves(call_key, leg) {
            let server = self.create_server(key, msg, from, ServerOwner::Local);
            self.reply_local(call_key, leg, server, 200, now);
            return;
        }
        if matches!(method, Method::Invite | Method::Update) {
            self.session_refreshed(call_key, leg, now);
        }
        if method == Method::Update && leg == Leg::A && self.terminates_preconditions(call_key) {
            // The caller's preconditions end here: Bridgehead answers, and the callee's
            // INVITE goes once they are met.
            let server = self.create_server(key, msg, from, ServerOwner::Local);
            self.reply_with_own_answer(call_key, server, now);
            return;
        }
        let Some(call) = self.calls.by_key.get_mut(&call_key) else {
            return;
        };
        let other_takes_update = call.leg(leg.other()).allows_update;
        let answered = matches!(call.state, CallState::Answered { .. });
        if method == Method::Update && !other_takes_update && !carries_sdp(&msg) {
            // A session refresh (RFC 4028) toward a leg that takes no UPDATE: Bridgehead
            // answers it; the other leg's session is not the requester's to refresh.
            let server = self.create_server(key, msg, from, ServerOwner::Local);
            self.reply_local(call_key, leg, server, 200, now);
            return;
        }
        // An UPDATE with an offer toward a leg that takes no UPDATE goes as a re-INVITE once
        // the call is answered; its answer comes back in the UPDATE's 200.
        let as_invite = method == Method::Update && !other_takes_update && answered;
        if as_invite {
            if call.invite_pending {
                let retry = (HeaderName::Other("Retry-After".into()), "1".to_string());
                self.answer(
                    Incoming {
                        msg,
                        key,
                        from,
                        trunk,
                    },
                    491,
                    &[retry],
                    now,
                );
                return;
            }
            call.invite_pending = true;
        }
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
        let sent_method = if as_invite {
            Method::Invite
        } else {
            method.clone()
        };
        let max_forwards = info.max_forwards.unwrap_or(70).saturating_sub(1);
        let Some((mut request, peer, dest_trunk, script)) =
            self.next_request(call_key, to, sent_method, max_forwards)
        else {
            return;
        };
        copy_crossing(&msg, &mut request);
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

    /// Bridgehead ends an answered call: BYE on both legs, with a Reason when it has one
    /// (RFC 3326); `why` is what `on_call_end` hears.
    pub(super) fn hang_up(
        &mut self,
        key: CallKey,
        why: &'static str,
        reason: Option<&str>,
        now: Instant,
    ) {
        let headers = || {
            reason
                .map(|r| vec![(HeaderName::Reason, r.to_string())])
                .unwrap_or_default()
        };
        self.calls.note_end_reason(key, reason);
        // A joined call's dead leg is not hung up here: its transferor's dialog ends with
        // the transfer (`end_call`), and the partner's party is hung up by its own shard.
        let dead = self.dead_leg(key);
        for leg in [Leg::A, Leg::B] {
            if dead != Some(leg) {
                self.send_bye(key, leg, headers(), now);
            }
        }
        self.end_call(key, why, None, now);
    }
}
