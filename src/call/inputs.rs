//! The call layer's entry: each [`CallInput`] the engine hands over, sent to the flow it
//! belongs to; and what a media event does to a call.

use super::*;

impl B2bua<'_> {
    /// Handles one input. What it causes is queued on the transaction table and the media
    /// command queue.
    pub(crate) fn handle(&mut self, input: CallInput<'_>, now: Instant) {
        match input {
            CallInput::Message { msg, from } if msg.is_request() => self.on_request(msg, from, now),
            CallInput::Message { msg, from } => self.on_response(msg, from, now),
            CallInput::Unparsable {
                partial,
                fault,
                from,
            } => {
                if partial.is_request() && partial.method() != Some(&Method::Ack) {
                    self.reject_stateless(&partial, from, fault.status(), &fault.to_string());
                }
            }
            CallInput::ServerTimedOut(id) => self.on_server_timeout(id, now),
            CallInput::ProvisionalUnacknowledged(id) => self.on_prack_timeout(id, now),
            CallInput::ClientFailed { id, status } => self.on_client_failure(id, status, now),
            CallInput::Media { call, event } => self.media_event(call, event, now),
            CallInput::Timer { call, timer } => self.on_call_timer(call, timer, now),
            CallInput::LookupAnswer { id, answer } => self.on_lookup_answer(id, answer, now),
            CallInput::Note(note) => self.on_note(note, now),
        }
    }

    /// What follows a media event: `on_media` hears it; a DTMF digit then goes on to the other
    /// leg in the form its trunk takes (unless a rule dropped it); an RTP timeout hangs the
    /// call up on both legs.
    fn media_event(&mut self, key: CallKey, event: &MediaEvent, now: Instant) {
        if let (
            MediaEvent::Quality {
                leg,
                mos,
                loss_percent,
                jitter_ms,
                ..
            },
            Some(call),
        ) = (event, self.calls.by_key.get_mut(&key))
        {
            call.quality[leg.index()] = Some(LegQuality {
                mos: *mos,
                loss_percent: *loss_percent,
                jitter_ms: *jitter_ms,
            });
        }
        let heard = self.run_call_hook(key, Hook::Media, HookArgs::Media(event));
        if let MediaEvent::Dtmf { leg, .. } = event {
            self.hand_on_digit(key, *leg, event, heard.digit_verdict, now);
        }
        if let MediaEvent::RtpTimeout { leg, seconds } = event {
            tracing::info!(leg = leg.name(), seconds, "no RTP: hanging up");
            self.calls.stats.rtp_timeouts += 1;
            self.hang_up(key, "timeout", None, now);
        }
    }

    /// The relay's id of a call: unique across shards.
    pub(super) fn media_call_id(&self, key: CallKey) -> MediaCallId {
        self.calls.media_call_id(key)
    }
}
