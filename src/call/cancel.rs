//! CANCEL: from the caller before the answer, and Bridgehead cancelling its B-leg INVITE.

use super::*;

impl B2bua<'_> {
    pub(super) fn cancel_b_invite(&mut self, key: CallKey, now: Instant) {
        let Some(call) = self.calls.by_key.get(&key) else {
            return;
        };
        // Only an INVITE still waiting for its final response can be canceled.
        let Some((entry, invite)) = self
            .txns
            .client(call.b_invite)
            .and_then(|entry| Some((entry, entry.request.as_ref()?)))
        else {
            return;
        };
        let cancel = build::cancel_for(invite);
        let (peer, trunk, script) = (entry.peer, call.b.trunk, call.script);
        let cancel = self.outgoing(Some(key), script, Leg::B, trunk, cancel);
        self.start_client(cancel, peer, ClientOwner::Local, now);
    }

    pub(super) fn on_cancel(&mut self, incoming: Incoming, now: Instant) {
        let invite_key = server_key(&incoming.msg, &Method::Invite, &incoming.from);
        let invite = invite_key.as_deref().and_then(|k| self.txns.find_server(k));
        let Some(invite) = invite else {
            self.answer(incoming, 481, &[], now);
            return;
        };
        let (owner, final_sent, request) = match self.txns.server(invite) {
            Some(e) => (e.owner, e.txn.is_final_sent(), e.request.clone()),
            None => return,
        };
        if let ServerOwner::Lookup(id) = owner {
            self.cancel_waiting(id, incoming, now);
            return;
        }
        let Incoming {
            msg,
            key,
            from,
            trunk,
        } = incoming;
        // The CANCEL itself is answered 200 whatever happens to the INVITE (RFC 3261 §9.2).
        let call_key = match owner {
            ServerOwner::Invite(k) => Some(k),
            _ => None,
        };
        let to_tag = call_key
            .and_then(|k| self.calls.by_key.get(&k))
            .map(|c| c.a.local_tag.clone());
        if let Some(call_key) = call_key {
            self.calls
                .note_end_reason(call_key, super::record::reasons(&msg).as_deref());
        }
        let ok = response_to(&msg, 200, None, to_tag.as_deref());
        // Within a call, its own version's trunk and script (a reload may have renumbered them).
        let (trunk, script) = call_key
            .and_then(|k| self.calls.by_key.get(&k))
            .map_or_else(
                || (trunk, self.calls.current.rules.script_of(trunk)),
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
        let Some(call) = self.calls.by_key.get_mut(&call_key) else {
            return;
        };
        let (state, send_cancel) = call.state.cancel();
        call.state = state;
        call.a_final = Some(487);
        let terminated = response_to(&request, 487, None, Some(&call.a.local_tag));
        let terminated = self.outgoing(Some(call_key), script, Leg::A, trunk, terminated);
        self.send_response(invite, &terminated, now);
        if self.drop_held_answer(call_key, "cancel", now) {
            // The callee had answered; its 2xx waited for a PRACK the caller never sent.
            return;
        }
        if self.invite_held(call_key) {
            // The callee never heard of the call (its INVITE waited for preconditions).
            self.end_call(call_key, "cancel", Some(Leg::A), now);
        } else if send_cancel {
            self.cancel_b_invite(call_key, now);
        }
    }
}
