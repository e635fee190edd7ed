//! DTMF: digits from SIP INFO, and each digit handed on to the other leg in the form its trunk
//! takes.

use super::in_dialog::OwnRequest;
use super::*;

/// The DTMF digit a SIP INFO carries (`application/dtmf-relay`: `Signal=5`, `Duration=160`;
/// `application/dtmf`: `5`), as a media event of the leg it came from.
pub(super) fn info_digit(msg: &Message, leg: Leg) -> Option<MediaEvent> {
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

impl B2bua<'_> {
    /// Hands on a DTMF digit that leg `from` sent (`event`, which `on_media` already heard and
    /// judged: `verdict`) in the form the other leg's trunk takes: SIP INFO, RFC 4733 events
    /// or tones played by the relay. Nothing is done where the other leg gets the digit
    /// anyway: events the relay passes through, tones that stay in the audio, an INFO relayed
    /// as it is. Returns true when Bridgehead took the digit in hand (an INFO carrying it is
    /// then answered here, not relayed).
    pub(super) fn hand_on_digit(
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
        let Some(call) = self.calls.by_key.get(&key) else {
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
            if self.dead_leg(key) == Some(to) {
                // An attended transfer joined the call: that leg's dialog is gone.
                return true;
            }
            let body = Bytes::from(format!("Signal={digit}\r\nDuration={duration_ms}\r\n"));
            let info = OwnRequest::new(Method::Info).with_body("application/dtmf-relay", body);
            self.send_in_dialog(key, to, info, now);
        } else {
            let sound = crate::media::player::Sound::Digits {
                digits: digit.to_string(),
                duration_ms,
            };
            self.play_sound(key, to, sound);
        }
        true
    }
}
