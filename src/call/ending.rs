//! How calls end: transaction timeouts and transport failures, local final responses, and
//! forgetting a call after `on_call_end`.

use super::*;

impl B2bua<'_> {
    /// A client transaction failed without a response: 408 when it timed out, 503 when the
    /// transport could not send it (RFC 3261 §8.1.3.1). For a call's INVITE the failure is like
    /// any other: `on_failure` may route the call again, otherwise the caller hears it.
    pub(super) fn on_client_failure(&mut self, id: TxnId, status: u16, now: Instant) {
        let Some(owner) = self.txns.client(id).map(|e| e.owner) else {
            return;
        };
        let reason = if status == 408 { "timeout" } else { "error" };
        let was_invite = self
            .txns
            .client(id)
            .and_then(|entry| entry.request.as_ref())
            .is_some_and(|r| r.method() == Some(&Method::Invite));
        if was_invite {
            self.reinvite_over(owner);
        }
        match owner {
            ClientOwner::Invite(key) => {
                let Some(call) = self.calls.by_key.get(&key).filter(|c| c.b_invite == id) else {
                    return;
                };
                let server = call.a_invite;
                let canceled = call.state.is_cancelled();
                let rang = call.state.rang();
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
                        .and_then(|entry| entry.request.as_ref())
                        .map(|invite| response_to(invite, status, None, None));
                    if failure.is_some_and(|f| self.on_failure(key, &f, None, now)) {
                        return;
                    }
                    if self.fail_over(key, status, now) {
                        return;
                    }
                    self.calls.stats.calls_failed += 1;
                    self.reply_local(key, Leg::A, server, status, now);
                }
                self.end_call(key, reason, None, now);
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
                    self.send_bye(key, requester, Vec::new(), now);
                }
                if status == 408 || is_bye {
                    self.end_call(key, reason, None, now);
                }
            }
            ClientOwner::Refresh(call, _) => self.on_refresh_outcome(call, status, now),
            ClientOwner::Keepalive { id, sent } => {
                self.on_keepalive_outcome(id, (status, sent), now)
            }
            ClientOwner::Transfer(key) => self.on_transfer_failure(key, status, now),
            ClientOwner::TransferNotify(key) => self.on_transfer_notified(key, now),
            ClientOwner::Local => {}
        }
    }

    /// A server transaction timed out: a 2xx was never acknowledged.
    pub(super) fn on_server_timeout(&mut self, id: TxnId, now: Instant) {
        let Some(owner) = self.txns.server(id).map(|e| e.owner) else {
            return;
        };
        let key = match owner {
            ServerOwner::Invite(key) | ServerOwner::Dialog(key, _) => key,
            ServerOwner::Local | ServerOwner::Lookup(_) => return,
        };
        let Some(call) = self.calls.by_key.get(&key) else {
            return;
        };
        if call.pending_ack.is_some_and(|p| p.server == id) {
            tracing::info!(call = %call.id, "2xx never acknowledged: hanging up both legs");
            self.hang_up(key, "timeout", None, now);
        }
    }

    /// Answers a request of a call locally (408, 487…).
    pub(super) fn reply_local(
        &mut self,
        key: CallKey,
        leg: Leg,
        server: TxnId,
        status: u16,
        now: Instant,
    ) {
        self.reply_local_with(key, leg, server, (status, None), now);
    }

    /// [`B2bua::reply_local`] with an SDP body (Bridgehead's own answer); returns the SDP
    /// sent.
    pub(super) fn reply_local_with(
        &mut self,
        key: CallKey,
        leg: Leg,
        server: TxnId,
        (status, sdp): (u16, Option<Bytes>),
        now: Instant,
    ) -> Option<Bytes> {
        self.reply_local_sdp(key, leg, server, (status, sdp.map(|s| (s, false))), now)
    }

    /// [`B2bua::reply_local`] with an SDP that is already what the leg gets (Bridgehead's own
    /// SDP to it, restated): neither anchored again nor shown to the rules.
    pub(super) fn reply_local_as_sent(
        &mut self,
        key: CallKey,
        leg: Leg,
        server: TxnId,
        (status, sdp): (u16, Option<Bytes>),
        now: Instant,
    ) {
        self.reply_local_sdp(key, leg, server, (status, sdp.map(|s| (s, true))), now);
    }

    /// A local answer with an SDP, anchored like any (false) or as sent (true).
    fn reply_local_sdp(
        &mut self,
        key: CallKey,
        leg: Leg,
        server: TxnId,
        (status, sdp): (u16, Option<(Bytes, bool)>),
        now: Instant,
    ) -> Option<Bytes> {
        let request = self.txns.server(server).and_then(|e| e.request.as_ref())?;
        let call = self.calls.by_key.get_mut(&key)?;
        if server == call.a_invite {
            call.a_final = Some(status);
        }
        let dialog = call.leg(leg);
        let mut response = response_to(request, status, None, Some(&dialog.local_tag));
        // A target refresh in the dialog (not the call's first INVITE) gets Bridgehead's
        // Contact and session timer.
        let refresh = server != call.a_invite
            && request
                .method()
                .is_some_and(super::in_dialog::is_target_refresh);
        if (200..300).contains(&status) && refresh {
            response.push_header(HeaderName::Contact, dialog.contact.clone());
            for (name, value) in B2bua::session_headers(call, leg, Refresher::Peer) {
                response.push_header(name, value);
            }
        }
        let attach = |response: &mut Message, sdp: Bytes| {
            response.set_header(HeaderName::ContentType, "application/sdp");
            response.body = sdp;
        };
        let (anchored, as_sent) = match sdp {
            Some((sdp, true)) => (None, Some(sdp)),
            Some((sdp, false)) => (Some(sdp), None),
            None => (None, None),
        };
        if let Some(sdp) = anchored {
            attach(&mut response, sdp);
        }
        let (script, trunk) = (call.script, dialog.trunk);
        let offered = Some(!request.body.is_empty());
        let (mut response, _) =
            self.outgoing_edited(Some(key), script, leg, trunk, response, Vec::new(), offered);
        if let Some(sdp) = as_sent {
            attach(&mut response, sdp);
        }
        self.send_response(server, &response, now);
        super::offer_answer::sdp_of(&response)
    }

    /// Forgets a call after telling its rules how it ended (`on_call_end`).
    pub(super) fn end_call(
        &mut self,
        key: CallKey,
        reason: &'static str,
        by: Option<Leg>,
        now: Instant,
    ) {
        self.end_transfer(key, now);
        self.end_join(key);
        if let Some(call) = self.calls.by_key.get(&key) {
            if call.rules.rules.has_hook(call.script, Hook::CallEnd) {
                let info = CallEndInfo {
                    reason,
                    by,
                    status: call.a_final.unwrap_or(0),
                    answered: matches!(call.state, CallState::Answered { .. }),
                    duration: match call.state {
                        CallState::Answered { at } => {
                            now.saturating_duration_since(at).as_secs_f64()
                        }
                        _ => 0.0,
                    },
                    mos: call
                        .quality
                        .iter()
                        .flatten()
                        .map(|q| q.mos)
                        .reduce(f64::min),
                };
                self.run_call_hook(key, Hook::CallEnd, HookArgs::CallEnd(&info));
            }
        }
        if let Some(call) = self.calls.by_key.remove(&key) {
            tracing::debug!(call = %call.id, reason, by = by.map_or("sbc", Leg::name), "call ended");
            self.calls.record(&call, reason, by, now);
            self.calls.replica_ended(key, &call);
            self.calls.link(record::Link::Ended {
                call: call.id.clone(),
            });
            if !call.streams.is_empty() {
                self.calls.media_commands.push_back(MediaCommand::Close {
                    call: self.media_call_id(key),
                });
                if let Some(pool) = self.calls.media_ports.as_mut() {
                    for stream in &call.streams {
                        pool.give(stream.a.local);
                        pool.give(stream.b.local);
                    }
                }
            }
            self.calls.dialogs.remove(&call.a.dialog_key());
            self.calls.dialogs.remove(&call.b.dialog_key());
            self.calls.shrink_when_quiet();
        }
    }
}
