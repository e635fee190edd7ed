//! Responses: matching them to client transactions, the B-leg INVITE's provisional and final
//! responses relayed to the caller, relayed in-dialog responses, and hop-by-hop ACKs.

use super::in_dialog::contact_uri;
use super::in_dialog::is_target_refresh;
use super::in_dialog::record_routes;
use super::offer_answer::{carries_sdp, sdp_of};
use super::*;

/// Forks of one call remembered as hung up (their 2xx retransmissions are only ACKed).
const MAX_ENDED_FORKS: usize = 16;

/// `convert_183_to_180`: a 181-183 becomes `180 Ringing`. Its SDP goes too, unless the
/// provisional was reliable: the answer in a reliable provisional is the answer (the 2xx need
/// not repeat it), while an unreliable one's is repeated in the 2xx (RFC 3261 §13.3.1.4).
fn ring_instead(msg: &mut Message) {
    msg.start = StartLine::Response {
        status: 180,
        reason: "Ringing".to_string(),
    };
    if !has_option(msg, &HeaderName::Require, "100rel") {
        msg.remove_header(&HeaderName::ContentType);
        msg.body = Bytes::new();
    }
}

impl B2bua<'_> {
    /// A response arrived.
    pub(super) fn on_response(&mut self, msg: Message, from: Peer, now: Instant) {
        let info = match check_response(&msg) {
            Ok(info) => info,
            Err(fault) => {
                self.calls.stats.malformed += 1;
                tracing::debug!(peer = %from.addr, %fault, "malformed response dropped");
                return;
            }
        };
        let Some(id) = self.txns.find_client(&info.branch, &info.cseq_method) else {
            self.on_stray_response(&msg, &info.call_id, &info.cseq_method, now);
            return;
        };
        let Some(owner) = self.txns.client(id).map(|e| e.owner) else {
            return;
        };
        // The INVITE is kept before its transaction lets it go, for a callee's 422 (session
        // interval too small: retried with its Min-SE) and for a 2xx to an INVITE failover
        // left behind (acknowledged and hung up).
        let status = msg.status().unwrap_or_default();
        let stale = match owner {
            ClientOwner::Invite(call) => self
                .calls
                .by_key
                .get(&call)
                .is_none_or(|c| c.b_invite != id),
            // A transfer's target answering a call that ended meanwhile.
            ClientOwner::Transfer(call) => !self.calls.by_key.contains_key(&call),
            _ => false,
        };
        let invite_owner = matches!(owner, ClientOwner::Invite(_) | ClientOwner::Transfer(_));
        let kept = (invite_owner && (status == 422 || (stale && (200..300).contains(&status))))
            .then(|| self.txns.client(id).and_then(|e| e.request.clone()))
            .flatten();
        let stale_peer = self.txns.client(id).map(|e| e.peer);
        if stale && (101..200).contains(&status) {
            // A callee that rings for an INVITE the call moved on from must stop (its
            // transaction still has the INVITE: the CANCEL names it).
            if let Some(invite) = self.txns.client(id).and_then(|e| e.request.as_ref()) {
                let cancel = build::cancel_for(invite);
                if let Some(peer) = stale_peer {
                    tracing::info!(peer = %peer.addr, "a late provisional for an INVITE failover left: CANCEL");
                    self.start_client(cancel, peer, ClientOwner::Local, now);
                }
            }
        }
        if !self.client_response(id, &msg, now) {
            return;
        }
        if let (Some(invite), ClientOwner::Invite(call), false) = (&kept, owner, stale) {
            if self.retry_with_min_se(call, id, invite.clone(), &msg, now) {
                return;
            }
        }
        if let (Some(invite), Some(peer), true) = (kept, stale_peer, stale) {
            self.hang_up_stale_answer(&invite, &msg, peer, now);
            return;
        }
        if info.cseq_method == "INVITE" && msg.status().is_some_and(|s| s >= 200) {
            self.reinvite_over(owner);
        }
        match owner {
            // Only the call's current B-leg INVITE counts (an abandoned one, after Timer C and a
            // failover, still gets its 487 acknowledged by its transaction).
            ClientOwner::Invite(call)
                if self
                    .calls
                    .by_key
                    .get(&call)
                    .is_some_and(|c| c.b_invite == id) =>
            {
                self.on_b_invite_response(call, msg, now)
            }
            ClientOwner::Invite(_) => {}
            ClientOwner::Relay { call, server } => self.on_relay_response(call, server, msg, now),
            ClientOwner::Refresh(call, leg) => {
                if let Some(status) = msg.status().filter(|s| *s >= 200) {
                    if info.cseq_method == "INVITE" {
                        // Bridgehead's own re-INVITE: its 2xx gets Bridgehead's ACK.
                        if status < 300 {
                            self.ack_leg(call, leg, None);
                            // Its answer: where the peer now wants media (learnt as any SDP
                            // from it; nothing goes to the other leg).
                            let answer = sdp_of(&msg).and_then(|sdp| Sdp::parse(&sdp).ok());
                            if let Some(mut answer) = answer {
                                self.anchor_media(call, leg.other(), &mut answer);
                            }
                        }
                    }
                    self.on_refresh_outcome(call, status, now);
                }
            }
            ClientOwner::Keepalive { id, sent } => {
                if let Some(status) = msg.status().filter(|s| *s >= 200) {
                    self.on_keepalive_outcome(id, (status, sent), now);
                }
            }
            ClientOwner::Transfer(call) => self.on_transfer_response(call, &msg, now),
            ClientOwner::TransferNotify(call) => {
                if msg.status().is_some_and(|s| s >= 200) {
                    self.on_transfer_notified(call, now);
                }
            }
            ClientOwner::Local => {}
        }
    }

    /// A 2xx to an INVITE failover left behind (its peer answered too late): acknowledged and
    /// hung up in the dialog it made, as the caller never hears of it.
    fn hang_up_stale_answer(
        &mut self,
        invite: &Message,
        answer: &Message,
        peer: Peer,
        now: Instant,
    ) {
        let (Some(to), Some(from)) = (
            answer.header_str(&HeaderName::To),
            invite.header_str(&HeaderName::From),
        ) else {
            return;
        };
        let cseq = invite
            .header_str(&HeaderName::CSeq)
            .and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(1);
        let mut routes = record_routes(answer);
        routes.reverse();
        let (ack_branch, bye_branch) = (self.new_branch(), self.new_branch());
        let rules = self.calls.current.clone();
        let listener = &rules.profile.listeners[peer.listener];
        let dialog = Dialog {
            trunk: 0,
            peer,
            call_id: invite
                .header_str(&HeaderName::CallId)
                .unwrap_or_default()
                .to_string(),
            local_tag: tag_of(from).unwrap_or_default(),
            remote_tag: tag_of(to),
            local_party: without_tag(from),
            remote_party: without_tag(to),
            remote_target: contact_uri(answer).unwrap_or_else(|| match &invite.start {
                StartLine::Request { uri, .. } => uri.clone(),
                StartLine::Response { .. } => String::new(),
            }),
            route_set: routes,
            local_cseq: cseq,
            remote_cseq: 0,
            invite_cseq: cseq,
            contact: contact_value(None, listener, peer.transport),
            allows_update: false,
        };
        tracing::info!(peer = %peer.addr, "a late answer to an INVITE failover left: ACK and BYE");
        let ack = dialog_request(
            Method::Ack,
            &dialog,
            via_value(listener, peer.transport, &ack_branch),
            cseq,
            70,
        );
        let bye = dialog_request(
            Method::Bye,
            &dialog,
            via_value(listener, peer.transport, &bye_branch),
            cseq + 1,
            70,
        );
        // Through the rules of the trunk the peer belongs to, like every message toward it.
        let (ack, bye) = match rules.profile.trunk_for(peer.listener, peer.addr.ip()) {
            Some(trunk) => {
                let script = rules.rules.script_of(trunk);
                (
                    self.outgoing(None, script, Leg::B, trunk, ack),
                    self.outgoing(None, script, Leg::B, trunk, bye),
                )
            }
            None => (ack, bye),
        };
        self.transmit(peer, Bytes::from(ack.to_bytes()));
        self.start_client(bye, peer, ClientOwner::Local, now);
    }

    /// A re-INVITE of a call (relayed, or Bridgehead's own) got its final response, or none:
    /// another INVITE of the call may go.
    pub(super) fn reinvite_over(&mut self, owner: ClientOwner) {
        if let ClientOwner::Relay { call, .. } | ClientOwner::Refresh(call, _) = owner {
            if let Some(call) = self.calls.by_key.get_mut(&call) {
                call.invite_pending = false;
            }
        }
    }

    /// A 2xx to an INVITE whose transaction is over: repeat the ACK we sent (RFC 3261
    /// §13.2.2.4); from another fork of the callee than the one that answered, ACK it and hang
    /// that fork up (§13.2.2.4 too).
    pub(super) fn on_stray_response(
        &mut self,
        msg: &Message,
        call_id: &str,
        cseq_method: &str,
        now: Instant,
    ) {
        let is_2xx = msg.status().is_some_and(|s| (200..300).contains(&s));
        if !is_2xx || cseq_method != "INVITE" {
            return;
        }
        // Our tag is the From-tag of a response to our request.
        let our_tag = msg.header_str(&HeaderName::From).and_then(tag_of);
        let Some((key, leg)) = self
            .calls
            .dialogs
            .get(&dialog_key(call_id, our_tag.as_deref()))
            .copied()
        else {
            return;
        };
        let Some(call) = self.calls.by_key.get(&key) else {
            return;
        };
        let their_tag = msg.header_str(&HeaderName::To).and_then(tag_of);
        if leg == Leg::B && their_tag.is_some() && their_tag != call.b.remote_tag {
            self.end_other_fork(key, msg, now);
            return;
        }
        if let Some((ack_leg, bytes)) = &call.last_ack {
            if *ack_leg == leg {
                let (peer, bytes) = (call.leg(leg).peer, bytes.clone());
                self.transmit(peer, bytes);
            }
        }
    }

    /// A 2xx from a fork of the callee other than the one whose answer went to the caller:
    /// that dialog gets its ACK and a BYE, with its own To-tag, remote target and route set; a
    /// retransmission of it only the ACK again.
    fn end_other_fork(&mut self, key: CallKey, msg: &Message, now: Instant) {
        let Some(tag) = msg.header_str(&HeaderName::To).and_then(tag_of) else {
            return;
        };
        let (ack_branch, bye_branch) = (self.new_branch(), self.new_branch());
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        let first_time = !call.b_forks_ended.contains(&tag);
        let mut fork = call.b.clone();
        fork.remote_tag = Some(tag.clone());
        fork.remote_target = contact_uri(msg).unwrap_or(fork.remote_target);
        let mut routes = record_routes(msg);
        routes.reverse();
        fork.route_set = routes;
        if first_time {
            tracing::info!(call = %call.id, fork = %tag, "a second fork answered: ACK and BYE");
            // Bounded: a peer making up tags cannot grow it without end.
            if call.b_forks_ended.len() == MAX_ENDED_FORKS {
                call.b_forks_ended.remove(0);
            }
            call.b_forks_ended.push(tag);
            call.b.local_cseq += 1;
        }
        let (peer, trunk, script) = (fork.peer, fork.trunk, call.script);
        let listener = &self.calls.current.profile.listeners[peer.listener];
        let ack = dialog_request(
            Method::Ack,
            &fork,
            via_value(listener, peer.transport, &ack_branch),
            fork.invite_cseq,
            70,
        );
        let bye = dialog_request(
            Method::Bye,
            &fork,
            via_value(listener, peer.transport, &bye_branch),
            call.b.local_cseq,
            70,
        );
        let ack = self.outgoing(Some(key), script, Leg::B, trunk, ack);
        self.transmit(peer, Bytes::from(ack.to_bytes()));
        if first_time {
            let bye = self.outgoing(Some(key), script, Leg::B, trunk, bye);
            self.start_client(bye, peer, ClientOwner::Local, now);
        }
    }

    /// Records what a response from the callee says about the B-leg dialog. A forking callee
    /// answers from several dialogs (To-tags): the B-leg follows the fork that spoke last before
    /// the answer (its PRACKs go there), and the one that answered after it; each fork brings
    /// its own remote target and route set.
    pub(super) fn learn_b_dialog(call: &mut Call, msg: &Message) {
        B2bua::learn_dialog(&mut call.b, msg);
    }

    /// Records what a response to an INVITE Bridgehead sent says about its dialog: the
    /// remote tag, target and route set, and whether the peer takes UPDATE.
    pub(super) fn learn_dialog(dialog: &mut Dialog, msg: &Message) {
        let tag = msg.header_str(&HeaderName::To).and_then(tag_of);
        if tag.is_some() && tag != dialog.remote_tag {
            dialog.remote_tag = tag;
            dialog.route_set = Vec::new();
        }
        if let Some(target) = contact_uri(msg) {
            dialog.remote_target = target;
        }
        dialog.allows_update = allows_update(msg);
        let mut routes = record_routes(msg);
        if !routes.is_empty() {
            routes.reverse();
            dialog.route_set = routes;
        }
    }

    pub(super) fn on_b_invite_response(&mut self, key: CallKey, mut msg: Message, now: Instant) {
        let Some(status) = msg.status() else {
            return;
        };
        // Headers `on_early_media` set (they cross whatever the header policy says).
        let mut touched = Vec::new();
        // The PRACK of a provisional carrying the callee's offer, sent once it went on.
        let mut prack_after = None;
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        if status < 200 {
            let (state, cancel_now) = call.state.provisional();
            call.state = state;
            if cancel_now {
                // The caller cancelled before the callee said anything: now it can be.
                self.cancel_b_invite(key, now);
                return;
            }
            if status == 100 || call.state.is_cancelled() {
                return;
            }
            call.b_rang = true;
            call.rang_at.get_or_insert(now);
            B2bua::learn_b_dialog(call, &msg);
            self.answer_withheld_offer(key, &mut msg);
            match self.prack_callee(key, &msg, now) {
                reliable::CalleeProvisional::Repeated => return,
                reliable::CalleeProvisional::Offer(prack) => prack_after = Some(prack),
                reliable::CalleeProvisional::New => {}
            }
            if carries_sdp(&msg) {
                (msg, touched) = self.early_media_hook(key, msg);
            }
        } else if status < 300 {
            B2bua::learn_b_dialog(call, &msg);
            self.answer_withheld_offer(key, &mut msg);
            let Some(call) = self.calls.by_key.get_mut(&key) else {
                return;
            };
            call.invite_pending = false;
            if call.state.is_cancelled() {
                // The caller gave up first: acknowledge and hang up the callee.
                self.ack_leg(key, Leg::B, None);
                self.send_bye(key, Leg::B, Vec::new(), now);
                self.end_call(key, "cancel", Some(Leg::A), now);
                return;
            }
            call.state = CallState::Answered { at: now };
            // The callee completed its offer/answer in a reliable provisional. The caller, when
            // it made no offer, gets the callee's SDP as its offer; when it got that answer in
            // an unreliable provisional (no answer until the 2xx says it, RFC 3261 §13.3.1.4),
            // the 2xx repeats it.
            let answer_unconfirmed = !call.a_reliable.as_ref().is_some_and(|r| r.active);
            if (call.own_offer || answer_unconfirmed) && !carries_sdp(&msg) {
                if let Some(sdp) = call.b_early_sdp.clone() {
                    msg.set_header(HeaderName::ContentType, "application/sdp");
                    msg.body = sdp;
                }
            }
            call.session[Leg::B.index()] = B2bua::callee_session(&msg);
            call.pending_ack = Some(PendingAck {
                from: Leg::A,
                server: call.a_invite,
            });
            self.calls.stats.calls_answered += 1;
            self.start_session_timers(key, now);
            self.lifecycle_hook(key, Hook::Answer, &msg);
        } else {
            call.invite_pending = false;
            if call.state.is_cancelled() {
                self.end_call(key, "cancel", Some(Leg::A), now);
                return;
            }
            if status == 503 {
                self.peer_unavailable(key, &msg, now);
            }
            if self.on_failure(key, &msg, Some(Leg::B), now) {
                return;
            }
            if self.fail_over(key, status, now) {
                return;
            }
            self.calls.stats.calls_failed += 1;
        }
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        let server = call.a_invite;
        if status >= 200 {
            call.a_final = Some(status);
        }
        match call.early_media() {
            EarlyMedia::Convert183To180 if (181..=183).contains(&status) => ring_instead(&mut msg),
            // After the first (which carried Bridgehead's answer): the caller still hears 183s.
            EarlyMedia::Convert180To183 if status == 180 && call.local_answer.is_some() => {
                msg.start = StartLine::Response {
                    status: 183,
                    reason: "Session Progress".to_string(),
                };
            }
            _ => {}
        }
        if call.own_offer && status < 200 {
            // The caller made no offer: an early answer to Bridgehead's is not for it.
            msg.remove_header(&HeaderName::ContentType);
            msg.body = Bytes::new();
        }
        match self.local_ringback_answer(key, &msg) {
            Some((ringing, pcmu)) => {
                let answer = self.relay_response_to(key, Leg::A, server, (&ringing, touched), now);
                self.start_local_ringback(key, answer, pcmu);
            }
            None => {
                self.relay_response_to(key, Leg::A, server, (&msg, touched), now);
            }
        }
        if let Some(prack) = prack_after {
            self.send_in_dialog(key, Leg::B, prack, now);
        }
        if status >= 300 {
            self.end_call(key, "rejected", Some(Leg::B), now);
        }
    }

    /// Relays a response from one leg to the server transaction `server` on leg `to` (with the
    /// headers a rule set on it, which bypass the header policy); returns the SDP it carried,
    /// if any.
    pub(super) fn relay_response_to(
        &mut self,
        key: CallKey,
        to: Leg,
        server: TxnId,
        (msg, touched): (&Message, Vec<HeaderName>),
        now: Instant,
    ) -> Option<Bytes> {
        let request = self.txns.server(server).and_then(|e| e.request.as_ref())?;
        let call = self.calls.by_key.get(&key)?;
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
            for (name, value) in B2bua::session_headers(call, to, Refresher::Peer) {
                response.push_header(name, value);
            }
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
            self.outgoing_edited(Some(key), script, to, trunk, response, touched, offered);
        if server == a_invite && status < 300 && carries_sdp(&response) {
            self.repeat_local_answer(key, &mut response);
        }
        let sdp = sdp_of(&response);
        if server == a_invite && (101..200).contains(&status) {
            self.provisional_to_caller(key, server, response, now);
        } else if !(server == a_invite && status < 300 && self.hold_final(key, &response)) {
            self.send_response(server, &response, now);
        }
        sdp
    }

    pub(super) fn on_relay_response(
        &mut self,
        key: CallKey,
        server: TxnId,
        msg: Message,
        now: Instant,
    ) {
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
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        let from_leg = to.other();
        if (200..300).contains(&status) && is_target_refresh(&method) {
            if let Some(target) = contact_uri(&msg) {
                call.leg_mut(from_leg).remote_target = target;
            }
        }
        // An UPDATE that went as a re-INVITE (toward a leg that takes no UPDATE).
        let as_invite = method == Method::Update
            && msg
                .header_str(&HeaderName::CSeq)
                .and_then(|cseq| cseq.split_whitespace().nth(1))
                == Some("INVITE");
        if method == Method::Invite && (200..300).contains(&status) {
            call.pending_ack = Some(PendingAck { from: to, server });
        }
        self.relay_response_to(key, to, server, (&msg, Vec::new()), now);
        if as_invite && (200..300).contains(&status) {
            // Nobody else acknowledges it.
            self.ack_leg(key, from_leg, None);
        }
        if method == Method::Bye && status >= 200 {
            self.end_call(key, "bye", Some(to), now);
        }
    }

    /// The ACK for a non-2xx final response to a client INVITE transaction (RFC 3261
    /// §17.1.1.3), when the transaction needs one now; it goes through the leg's hooks and header
    /// policy like every other message Bridgehead sends toward a trunk.
    pub(super) fn hop_by_hop_ack(
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
        let invite = entry.request.as_ref()?;
        if status < 300 || !waiting || invite.method() != Some(&Method::Invite) {
            return None;
        }
        let ack = build::ack_for(invite, response);
        let (key, leg) = match entry.owner {
            ClientOwner::Invite(key) => (key, Leg::B),
            ClientOwner::Relay { call, server } => match self.txns.server(server)?.owner {
                ServerOwner::Dialog(_, requester) => (call, requester.other()),
                _ => return Some(ack),
            },
            ClientOwner::Transfer(key) => {
                let call = self.calls.by_key.get(&key)?;
                let refer = call.refer.as_ref()?;
                let trunk = refer.target_trunk()?;
                let (script, leg) = (call.script, refer.leg());
                return Some(self.outgoing(Some(key), script, leg, trunk, ack));
            }
            ClientOwner::Local
            | ClientOwner::Refresh(..)
            | ClientOwner::Keepalive { .. }
            | ClientOwner::TransferNotify(_) => return Some(ack),
        };
        let Some(call) = self.calls.by_key.get(&key) else {
            return Some(ack);
        };
        let (script, trunk) = (call.script, call.leg(leg).trunk);
        Some(self.outgoing(Some(key), script, leg, trunk, ack))
    }
}
