//! Reliable provisional responses (RFC 3262, `100rel`), terminated on each leg: Bridgehead
//! PRACKs the reliable 18x the callee sends, and sends its own reliable 18x to a caller that
//! requires them (or supports them, once the callee's are reliable), retransmitted until
//! PRACKed. Either leg may use them while the other does not.

use super::in_dialog::OwnRequest;
use super::offer_answer::{carries_sdp, keep_first_g711, own_answer, sdp_of};
use super::*;

/// What a provisional response from the callee is, as far as reliability goes.
pub(super) enum CalleeProvisional {
    /// Not reliable, or reliable and new (PRACKed): it goes on.
    New,
    /// Reliable, new, and carrying the callee's offer to an INVITE Bridgehead sent without
    /// the caller's (`delayed_offer: always`): it goes on, then its PRACK with Bridgehead's
    /// answer (anchoring the provisional first teaches the relay the callee's payload types).
    Offer(OwnRequest<'static>),
    /// A reliable one already seen (or out of sequence): dropped (RFC 3262 §4).
    Repeated,
}

impl ReliableProvisionals {
    /// The A-leg's RSeq space, starting at a random value (RFC 3262 §3: between 1 and
    /// 2**31 - 1, with room left for the responses that follow); `active` when reliable
    /// provisionals are used from the first one.
    pub(super) fn starting_at(random: u32, invite_cseq: u32, active: bool) -> ReliableProvisionals {
        ReliableProvisionals {
            active,
            rseq: random & 0x3fff_ffff,
            invite_cseq,
            awaiting: false,
            b_prack: None,
            awaiting_sdp: false,
            held_final: None,
            queued: VecDeque::new(),
        }
    }
}

/// The RSeq of a reliable provisional response (`Require: 100rel` and an RSeq).
fn reliable_rseq(msg: &Message) -> Option<u32> {
    if !has_option(msg, &HeaderName::Require, "100rel") {
        return None;
    }
    msg.header_str(&HeaderName::RSeq)?.trim().parse().ok()
}

/// The RAck of a PRACK: the RSeq, CSeq number and method it acknowledges.
fn rack_of(msg: &Message) -> Option<(u32, u32, &str)> {
    let mut parts = msg.header_str(&HeaderName::RAck)?.split_whitespace();
    let rseq = parts.next()?.parse().ok()?;
    let cseq = parts.next()?.parse().ok()?;
    Some((rseq, cseq, parts.next()?))
}

/// What goes to the caller once a PRACK acknowledged the provisional waiting for it.
enum Next {
    Nothing,
    Provisional(Message),
    Final(Message),
}

impl B2bua<'_> {
    /// A provisional response from the callee (its B-leg dialog already learnt): a reliable
    /// one is PRACKed once, in sequence within its fork; repeats are dropped.
    pub(super) fn prack_callee(
        &mut self,
        key: CallKey,
        msg: &Message,
        now: Instant,
    ) -> CalleeProvisional {
        let Some(rseq) = reliable_rseq(msg) else {
            return CalleeProvisional::New;
        };
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return CalleeProvisional::Repeated;
        };
        // The fork that sent it (its dialog is the B-leg's now).
        let fork = call.b.remote_tag.clone().unwrap_or_default();
        match call.b_rseqs.iter_mut().find(|(tag, _)| *tag == fork) {
            Some((_, last)) if rseq != last.wrapping_add(1) => {
                return CalleeProvisional::Repeated;
            }
            Some((_, last)) => *last = rseq,
            None => call.b_rseqs.push((fork, rseq)),
        }
        // The callee made its provisionals reliable: so does Bridgehead toward a caller that
        // supports it.
        if let Some(reliable) = call.a_reliable.as_mut() {
            reliable.active = true;
        }
        let rack = format!("{rseq} {} INVITE", call.b.invite_cseq);
        let mut prack = OwnRequest::prack(rack.clone());
        if call.offer_withheld {
            // The callee's offer to the INVITE Bridgehead sent without the caller's: its
            // answer goes in the PRACK, when this provisional carried the offer.
            let answer = carries_sdp(msg)
                .then(|| call.callee_answer_due.take())
                .flatten();
            if let Some(answer) = answer {
                return CalleeProvisional::Offer(prack.with_body("application/sdp", answer));
            }
        } else if let Some(sdp) = sdp_of(msg).filter(|_| call.b_early_sdp.is_none()) {
            let invite_offered = self
                .txns
                .client(call.b_invite)
                .and_then(|entry| entry.request.as_ref())
                .is_some_and(super::offer_answer::carries_sdp);
            // The callee's first SDP in a reliable provisional: the answer to Bridgehead's own
            // offer, or, when the INVITE carried none, the callee's offer, answered in the
            // PRACK (RFC 3262 §5).
            call.b_early_sdp = Some(sdp.clone());
            if !invite_offered {
                if call.a_reliable.is_some() {
                    // The caller answers it in its PRACK of the provisional it goes on in.
                    call.b_prack_deferred = Some(rack);
                    return CalleeProvisional::New;
                }
                // The caller cannot answer in a provisional: Bridgehead does (one G.711), and
                // the offer goes to the caller in the 2xx cut to that same codec (its answer
                // in the ACK stays here).
                call.own_offer = true;
                let offer = Sdp::parse(&sdp).ok();
                match offer.as_ref().and_then(own_answer) {
                    Some((answer, _)) => {
                        prack = prack.with_body("application/sdp", Bytes::from(answer.to_bytes()));
                        let mut cut = offer.unwrap_or(answer);
                        if keep_first_g711(&mut cut).is_some() {
                            call.b_early_sdp = Some(Bytes::from(cut.to_bytes()));
                        }
                    }
                    None => {
                        tracing::warn!(call = %call.id, "the callee's early offer has no G.711 to answer: PRACKed without an answer");
                    }
                }
            }
        }
        self.send_in_dialog(key, Leg::B, prack, now);
        CalleeProvisional::New
    }

    /// Sends a provisional response to the caller's INVITE: reliably when the A-leg uses
    /// 100rel (behind one still waiting for its PRACK), else as it is.
    pub(super) fn provisional_to_caller(
        &mut self,
        key: CallKey,
        server: TxnId,
        mut response: Message,
        now: Instant,
    ) {
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        let call_deferred = &mut call.b_prack_deferred;
        let Some(reliable) = call.a_reliable.as_mut().filter(|r| r.active) else {
            self.send_response(server, &response, now);
            return;
        };
        if reliable.awaiting {
            reliable.queued.push_back(response);
            return;
        }
        reliable.rseq = reliable.rseq.wrapping_add(1);
        reliable.awaiting = true;
        reliable.awaiting_sdp = carries_sdp(&response);
        if reliable.awaiting_sdp {
            // The callee's offer: its PRACK waits for the caller's answer to this one.
            reliable.b_prack = call_deferred.take();
        }
        response.push_header(HeaderName::Require, "100rel".to_string());
        response.push_header(HeaderName::RSeq, reliable.rseq.to_string());
        self.txns.send_reliable_provisional(server, &response, now);
    }

    /// A 2xx to the caller's INVITE: held while a reliable provisional with SDP waits for its
    /// PRACK, or waits its turn (RFC 3262 §3: its offer or answer must reach the caller and be
    /// acknowledged first); the provisionals without SDP waiting their turn are dropped (the
    /// final response supersedes them). True when held.
    pub(super) fn hold_final(&mut self, key: CallKey, response: &Message) -> bool {
        let Some(reliable) = self
            .calls
            .by_key
            .get_mut(&key)
            .and_then(|call| call.a_reliable.as_mut())
            .filter(|r| r.awaiting && (r.awaiting_sdp || r.queued.iter().any(carries_sdp)))
        else {
            return false;
        };
        reliable.queued.retain(carries_sdp);
        reliable.held_final = Some(response.clone());
        true
    }

    /// The callee answered, but the caller's 2xx was held for a PRACK and the caller gave up
    /// (cancelled, or never PRACKed): the callee is acknowledged and hung up, and the call
    /// ends. False when no 2xx was held.
    pub(super) fn drop_held_answer(
        &mut self,
        key: CallKey,
        why: &'static str,
        now: Instant,
    ) -> bool {
        let held = self
            .calls
            .by_key
            .get_mut(&key)
            .and_then(|call| call.a_reliable.as_mut())
            .and_then(|reliable| {
                reliable.queued.clear();
                reliable.held_final.take()
            });
        if held.is_none() {
            return false;
        }
        self.ack_leg(key, Leg::B, None);
        self.send_bye(key, Leg::B, Vec::new(), now);
        self.end_call(key, why, Some(Leg::A), now);
        true
    }

    /// A PRACK from a leg: 200 when it acknowledges the reliable provisional response waiting
    /// for it (and the next one in line goes), else 481 (RFC 3262 §3).
    pub(super) fn on_prack(
        &mut self,
        key: CallKey,
        leg: Leg,
        (msg, server_key, from): (Message, String, Peer),
        now: Instant,
    ) {
        let rack = rack_of(&msg).map(|(rseq, cseq, method)| (rseq, cseq, method == "INVITE"));
        let server = self.create_server(server_key, msg, from, ServerOwner::Local);
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        let a_invite = call.a_invite;
        let (acknowledged, b_prack) = match (leg, call.a_reliable.as_mut(), rack) {
            (Leg::A, Some(reliable), Some((rseq, cseq, true)))
                if reliable.awaiting && rseq == reliable.rseq && cseq == reliable.invite_cseq =>
            {
                reliable.awaiting = false;
                // What waits its turn goes first: a 2xx held waits for the last of them.
                let next = match (reliable.queued.pop_front(), reliable.held_final.take()) {
                    (Some(provisional), held) => {
                        reliable.held_final = held;
                        Next::Provisional(provisional)
                    }
                    (None, Some(answer)) => Next::Final(answer),
                    (None, None) => Next::Nothing,
                };
                (next, reliable.b_prack.take())
            }
            _ => {
                self.reply_local(key, leg, server, 481, now);
                return;
            }
        };
        self.txns.server_prack(a_invite);
        // The callee's early offer went to the caller: its answer (read before the PRACK's
        // transaction lets its request go) goes in the callee's PRACK.
        let answer = b_prack
            .is_some()
            .then(|| {
                self.txns
                    .server(server)
                    .and_then(|e| sdp_of(e.request.as_ref()?))
            })
            .flatten();
        // With an offer in it, while Bridgehead terminates the caller's preconditions, the
        // 200 carries Bridgehead's answer.
        self.reply_with_own_answer(key, server, now);
        if let Some(rack) = b_prack {
            let mut prack = OwnRequest::prack(rack);
            if let Some(answer) = answer {
                prack = prack.with_body("application/sdp", answer);
            }
            self.send_in_dialog(key, Leg::B, prack, now);
        }
        match acknowledged {
            Next::Provisional(next) => self.provisional_to_caller(key, a_invite, next, now),
            Next::Final(answer) => self.send_response(a_invite, &answer, now),
            Next::Nothing => {}
        }
    }

    /// The caller never PRACKed a reliable provisional response (64·T1): its INVITE is
    /// rejected with 504 and the callee's is cancelled, as when the caller cancels.
    pub(super) fn on_prack_timeout(&mut self, server: TxnId, now: Instant) {
        let Some(ServerOwner::Invite(key)) = self.txns.server(server).map(|e| e.owner) else {
            return;
        };
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        tracing::info!(call = %call.id, "no PRACK from the caller: 504");
        self.calls.stats.calls_failed += 1;
        self.reply_local(key, Leg::A, server, 504, now);
        if self.drop_held_answer(key, "timeout", now) {
            // The callee answered while the caller's 2xx waited for this PRACK.
            return;
        }
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        let (state, send_cancel) = call.state.cancel();
        call.state = state;
        if let Some(reliable) = call.a_reliable.as_mut() {
            reliable.queued.clear();
        }
        if self.invite_held(key) {
            // The callee never heard of the call.
            self.end_call(key, "timeout", Some(Leg::A), now);
        } else if send_cancel {
            self.cancel_b_invite(key, now);
        }
    }
}
