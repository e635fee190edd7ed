//! QoS preconditions (RFC 3312), terminated at Bridgehead for a trunk with
//! `precondition: terminate`: an IMS caller that will not let the callee ring before its
//! radio bearer is reserved gets Bridgehead's answer in a reliable 183 (Bridgehead's own
//! segment is always ready), tells Bridgehead in an UPDATE (or PRACK) when its own segment is,
//! and only then does the callee get the INVITE, with plain SDP.

use super::offer_answer::{keep_first_g711, own_answer, sdp_of};
use super::*;
use crate::sdp::Media;
use std::time::Duration;

/// How long Bridgehead waits for the caller's resources before it answers `580`: 64·T1, as
/// long as a reliable provisional may wait for its PRACK.
pub(super) const RESERVATION_WAIT: Duration = Duration::from_secs(32);

/// The precondition attributes of a media section (RFC 3312 §5).
const QOS_ATTRIBUTES: [&str; 3] = ["curr", "des", "conf"];

/// A caller's preconditions while Bridgehead terminates them.
#[derive(Debug, Default)]
pub(super) struct CallerPreconditions {
    /// The callee's INVITE, ready, until the caller's resources are reserved.
    held: Option<Message>,
    /// The origin version of Bridgehead's last answer to the caller (one more per answer).
    answers: u64,
    /// The caller said its resources are reserved.
    met: bool,
}

/// A precondition status line's segment (RFC 3312 §5.1: the status type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Segment {
    E2e,
    Local,
    Remote,
}

impl Segment {
    fn parse(name: &str) -> Option<Segment> {
        Some(match name {
            "e2e" => Segment::E2e,
            "local" => Segment::Local,
            "remote" => Segment::Remote,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Segment::E2e => "e2e",
            Segment::Local => "local",
            Segment::Remote => "remote",
        }
    }

    /// The same segment as the other party names it.
    fn mirrored(self) -> Segment {
        match self {
            Segment::E2e => Segment::E2e,
            Segment::Local => Segment::Remote,
            Segment::Remote => Segment::Local,
        }
    }
}

/// A direction tag as bits: send 1, recv 2.
fn direction_bits(name: &str) -> Option<u8> {
    Some(match name {
        "none" => 0,
        "send" => 1,
        "recv" => 2,
        "sendrecv" => 3,
        _ => return None,
    })
}

fn direction_name(bits: u8) -> &'static str {
    match bits & 3 {
        0 => "none",
        1 => "send",
        2 => "recv",
        _ => "sendrecv",
    }
}

/// A direction as the other party states it: its send is our receive.
fn swapped(bits: u8) -> u8 {
    ((bits & 1) << 1) | ((bits & 2) >> 1)
}

/// What a media section's sender states: current status (segment, direction) and desired
/// status (strength, segment, direction) of the `qos` precondition.
#[derive(Debug, Default)]
struct QosLines<'s> {
    current: Vec<(Segment, u8)>,
    desired: Vec<(&'s str, Segment, u8)>,
}

fn qos_lines(media: &Media) -> QosLines<'_> {
    let mut lines = QosLines::default();
    for value in media.attributes("curr").into_iter().flatten() {
        let mut words = value.split_whitespace();
        if words.next() != Some("qos") {
            continue;
        }
        let segment = words.next().and_then(Segment::parse);
        let direction = words.next().and_then(direction_bits);
        if let (Some(segment), Some(direction)) = (segment, direction) {
            lines.current.push((segment, direction));
        }
    }
    for value in media.attributes("des").into_iter().flatten() {
        let mut words = value.split_whitespace();
        if words.next() != Some("qos") {
            continue;
        }
        let strength = words.next().unwrap_or_default();
        let segment = words.next().and_then(Segment::parse);
        let direction = words.next().and_then(direction_bits);
        if let (Some(segment), Some(direction)) = (segment, direction) {
            lines.desired.push((strength, segment, direction));
        }
    }
    lines
}

/// True when an offer uses QoS preconditions (an `a=des:qos` in some media section).
pub(super) fn uses_preconditions(offer: &Sdp) -> bool {
    offer
        .media()
        .iter()
        .any(|media| !qos_lines(media).desired.is_empty())
}

/// True when the offerer's own segments (`local`, `e2e`) have what its mandatory desired
/// status asks for, in every media section (RFC 3312 §6: the precondition is met).
pub(super) fn offerer_ready(offer: &Sdp) -> bool {
    offer
        .media()
        .iter()
        .filter(|m| !m.is_rejected())
        .all(|media| {
            let lines = qos_lines(media);
            lines
                .desired
                .iter()
                .filter(|(strength, segment, _)| {
                    *strength == "mandatory" && *segment != Segment::Remote
                })
                .all(|(_, segment, wanted)| {
                    lines
                        .current
                        .iter()
                        .any(|(s, have)| s == segment && have & wanted == *wanted)
                })
        })
}

/// Removes the precondition attributes from every media section: what goes to a peer that
/// takes part in none. The callee's first offer (`initial`) is also cut to the codec the
/// caller was answered with (its first G.711, with telephone-event and comfort noise): the
/// callee cannot choose another.
pub(super) fn strip_preconditions(sdp: &mut Sdp, initial: bool) {
    for media in sdp.media_mut() {
        for name in QOS_ATTRIBUTES {
            media.remove_attribute(name);
        }
    }
    if initial {
        keep_first_g711(sdp);
    }
}

/// Bridgehead's precondition lines in its answer to `offer` (one media section): the offer's
/// lines mirrored (its local segment is Bridgehead's remote one), Bridgehead's own segment
/// ready, and a request to be told when the offerer's is (`conf`) while it is not.
fn answer_lines(offer: &Media, answer: &mut Media) -> Result<(), crate::sdp::SdpError> {
    for name in QOS_ATTRIBUTES {
        answer.remove_attribute(name);
    }
    let lines = qos_lines(offer);
    if lines.desired.is_empty() {
        return Ok(());
    }
    let mut current: Vec<(Segment, u8)> = lines
        .current
        .iter()
        .map(|(segment, have)| match segment.mirrored() {
            // Bridgehead's own segment: nothing to reserve.
            Segment::Local => (Segment::Local, 3),
            mirrored => (mirrored, swapped(*have)),
        })
        .collect();
    let segmented = lines.desired.iter().any(|(_, s, _)| *s != Segment::E2e);
    if segmented && !current.iter().any(|(s, _)| *s == Segment::Local) {
        current.push((Segment::Local, 3));
    }
    for (segment, have) in &current {
        let value = format!("qos {} {}", segment.name(), direction_name(*have));
        answer.add_attribute("curr", Some(&value))?;
    }
    for (strength, segment, wanted) in &lines.desired {
        let value = format!(
            "qos {strength} {} {}",
            segment.mirrored().name(),
            direction_name(swapped(*wanted))
        );
        answer.add_attribute("des", Some(&value))?;
    }
    if !offerer_segment_ready(&lines) {
        let segment = if segmented {
            Segment::Remote
        } else {
            Segment::E2e
        };
        answer.add_attribute("conf", Some(&format!("qos {} sendrecv", segment.name())))?;
    }
    Ok(())
}

fn offerer_segment_ready(lines: &QosLines<'_>) -> bool {
    lines
        .desired
        .iter()
        .filter(|(_, segment, _)| *segment != Segment::Remote)
        .all(|(_, segment, wanted)| {
            lines
                .current
                .iter()
                .any(|(s, have)| s == segment && have & wanted == *wanted)
        })
}

/// Bridgehead's answer to a caller's offer with preconditions: its own answer (the first
/// G.711 with telephone-event and comfort noise, not sending yet, other streams refused),
/// the precondition lines of each stream it takes, and origin version `version`. Also tells
/// whether its G.711 is PCMU.
pub(super) fn precondition_answer(offer: &Sdp, version: u64) -> Option<(Sdp, bool)> {
    let (mut answer, pcmu) = own_answer(offer)?;
    for (index, media) in answer.media_mut().iter_mut().enumerate() {
        if media.is_rejected() {
            continue;
        }
        let offered = offer.media().get(index)?;
        answer_lines(offered, media).ok()?;
    }
    answer.set_session_version(version).ok()?;
    Some((answer, pcmu))
}

impl CallerPreconditions {
    /// True while the callee's INVITE waits for the caller's resources.
    pub(super) fn waiting(&self) -> bool {
        self.held.is_some()
    }

    /// The preconditions of a new call, when the caller's trunk terminates them and its
    /// INVITE uses them (an offer with `a=des:qos`, and `precondition` in `Require` or
    /// `Supported`). Refused: an offer with them that Bridgehead cannot answer (no G.711:
    /// `488`), and `Require: precondition` without them in an offer (`420`).
    pub(super) fn of_invite(
        msg: &Message,
        trunk: &crate::config::Trunk,
    ) -> Result<Option<Self>, Refusal> {
        if trunk.precondition != crate::config::Precondition::Terminate {
            return Ok(None);
        }
        let required = has_option(msg, &HeaderName::Require, "precondition");
        let named = required || has_option(msg, &HeaderName::Supported, "precondition");
        let offer = sdp_of(msg).and_then(|sdp| Sdp::parse(&sdp).ok());
        match offer.filter(|offer| named && uses_preconditions(offer)) {
            Some(offer) if own_answer(&offer).is_some() => Ok(Some(Self::default())),
            Some(_) => Err((488, Vec::new())),
            None if required => Err((
                420,
                vec![(HeaderName::Unsupported, "precondition".to_string())],
            )),
            None => Ok(None),
        }
    }
}

impl B2bua<'_> {
    /// The callee's INVITE is ready: with the caller's preconditions terminated here, the
    /// caller gets Bridgehead's answer in a reliable 183 (once), and the INVITE waits for the
    /// caller's resources unless its offer says they are reserved. True when it waits.
    pub(super) fn hold_for_preconditions(
        &mut self,
        key: CallKey,
        invite: &Message,
        now: Instant,
    ) -> bool {
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return false;
        };
        let server = call.a_invite;
        let Some(preconditions) = call.preconditions.as_mut() else {
            return false;
        };
        if preconditions.answers > 0 {
            // A failover's INVITE: the caller has its answer already.
            return false;
        }
        preconditions.answers = 1;
        let Some(offer) = self
            .txns
            .server(server)
            .and_then(|entry| entry.request.as_ref())
            .and_then(sdp_of)
            .and_then(|sdp| Sdp::parse(&sdp).ok())
        else {
            return false;
        };
        let Some((answer, pcmu)) = precondition_answer(&offer, 1) else {
            return false;
        };
        let Some(request) = self.txns.server(server).and_then(|e| e.request.as_ref()) else {
            return false;
        };
        let mut progress = response_to(request, 183, Some("Session Progress"), None);
        progress.set_header(HeaderName::ContentType, "application/sdp");
        progress.body = Bytes::from(answer.to_bytes());
        let sent = self.relay_response_to(key, Leg::A, server, (&progress, Vec::new()), now);
        self.keep_local_answer(key, sent, pcmu);
        let Some(preconditions) = self
            .calls
            .by_key
            .get_mut(&key)
            .and_then(|call| call.preconditions.as_mut())
        else {
            return false;
        };
        if offerer_ready(&offer) {
            preconditions.met = true;
            return false;
        }
        preconditions.held = Some(invite.clone());
        self.calls.arm_reservation_wait(key, now + RESERVATION_WAIT);
        if let Some(call) = self.calls.by_key.get(&key) {
            tracing::info!(call = %call.id, "waiting for the caller's QoS preconditions");
        }
        true
    }

    /// True while Bridgehead answers the caller's offers itself: it terminates the caller's
    /// preconditions and the callee has not answered.
    pub(super) fn terminates_preconditions(&self, key: CallKey) -> bool {
        self.calls.by_key.get(&key).is_some_and(|call| {
            call.preconditions.is_some() && !matches!(call.state, CallState::Answered { .. })
        })
    }

    /// The request of server transaction `server` from the caller (UPDATE or PRACK), while
    /// Bridgehead terminates its preconditions: Bridgehead's answer to the offer it carries
    /// (None without one); the caller's resources are ready once an offer says so.
    pub(super) fn precondition_offer(&mut self, key: CallKey, server: TxnId) -> Option<Bytes> {
        if !self.terminates_preconditions(key) {
            return None;
        }
        let request = self.txns.server(server)?.request.as_ref()?;
        let offer = Sdp::parse(&sdp_of(request)?).ok()?;
        let preconditions = self.calls.by_key.get_mut(&key)?.preconditions.as_mut()?;
        preconditions.answers += 1;
        let (answer, _) = precondition_answer(&offer, preconditions.answers)?;
        preconditions.met |= offerer_ready(&offer);
        Some(Bytes::from(answer.to_bytes()))
    }

    /// Answers the caller's request `server` (UPDATE or PRACK) `200`, with Bridgehead's
    /// answer to the offer it carries while Bridgehead terminates the caller's preconditions
    /// (kept as the caller's answer, which the callee's 2xx then repeats); the callee's INVITE
    /// goes once they are met.
    pub(super) fn reply_with_own_answer(&mut self, key: CallKey, server: TxnId, now: Instant) {
        let offered = self.terminates_preconditions(key)
            && self
                .txns
                .server(server)
                .and_then(|entry| entry.request.as_ref())
                .is_some_and(super::offer_answer::carries_sdp);
        let answer = self.precondition_offer(key, server);
        let answered = answer.is_some();
        // An offer Bridgehead cannot answer (no G.711 left in it): 488.
        let status = if offered && !answered { 488 } else { 200 };
        let sent = self.reply_local_with(key, Leg::A, server, (status, answer), now);
        if answered {
            if let Some(call) = self.calls.by_key.get_mut(&key) {
                call.local_answer = sent.or(call.local_answer.take());
            }
        }
        self.release_held_invite(key, now);
    }

    /// Sends the callee's INVITE held for the caller's preconditions, once they are met.
    fn release_held_invite(&mut self, key: CallKey, now: Instant) {
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        let Some(invite) = call
            .preconditions
            .as_mut()
            .filter(|p| p.met)
            .and_then(|p| p.held.take())
        else {
            return;
        };
        tracing::info!(call = %call.id, "the caller's QoS preconditions are met: calling the callee");
        let peer = call.b.peer;
        let b_invite = self.start_client(invite, peer, ClientOwner::Invite(key), now);
        if let Some(call) = self.calls.by_key.get_mut(&key) {
            call.b_invite = b_invite;
        }
    }

    /// The caller's resources were never reserved in time: `580 Precondition Failure`.
    pub(super) fn on_reservation_timeout(&mut self, key: CallKey, now: Instant) {
        let Some(call) = self.calls.by_key.get(&key) else {
            return;
        };
        tracing::info!(call = %call.id, "the caller's QoS preconditions were not met in time: 580");
        let server = call.a_invite;
        self.calls.stats.calls_failed += 1;
        self.reply_local(key, Leg::A, server, 580, now);
        self.end_call(key, "precondition", Some(Leg::A), now);
    }

    /// True when the call's callee INVITE is still held for the caller's preconditions (the
    /// callee knows nothing of the call).
    pub(super) fn invite_held(&self, key: CallKey) -> bool {
        self.calls
            .by_key
            .get(&key)
            .and_then(|call| call.preconditions.as_ref())
            .is_some_and(CallerPreconditions::waiting)
    }
}
