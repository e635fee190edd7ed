//! Attended transfer terminated by Bridgehead (RFC 3891 Replaces, RFC 5589 §7). A transferor
//! on a `refer: terminate` trunk (Microsoft Teams) that consulted a third party before
//! transferring sends a REFER whose Refer-To carries `Replaces`, naming its consultation
//! dialog: another call through Bridgehead. Bridgehead never sends Replaces on: it joins the
//! two calls' other parties itself.
//!
//! Each call keeps its party (its live leg); its other leg, the one facing the transferor,
//! is dead from then on, and the relay ports that faced the transferor face the partner
//! call's instead (each side learns the other's ports and keys as the transferor's SDP), so
//! the media of the two parties crosses the two relays and neither party hears a re-INVITE,
//! unless it was on hold (it is taken off hold). The two calls may live on different shards:
//! they talk with [`CallNote`]s. Bridgehead hangs up the consultation dialog; the REFER's
//! dialog ends as after a blind transfer (the transferor's BYE, else Bridgehead's). From then
//! on a BYE of either party hangs up the other, and the requests that cannot cross (a
//! re-INVITE, an UPDATE) are answered by Bridgehead with the media already agreed.

use super::offer_answer::sdp_of;
use super::transfer::Refer;
use super::*;
use crate::config::SrtpPolicy;
use crate::sdp::Direction;

/// The dialog a Refer-To's `Replaces` names (RFC 3891 §6.1): its Call-ID and tags, the
/// to-tag being the one of the side that receives it (here Bridgehead's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaces {
    pub call_id: String,
    pub to_tag: String,
    pub from_tag: String,
}

/// What a shard tells another (or itself) about two calls an attended transfer joins.
#[derive(Clone, Debug)]
pub enum CallNote {
    /// Join the call whose dialog `replaces` names with call `from` (shard, key), whose
    /// ports toward the transferor `sdp` describes (Bridgehead's SDP to it, at the relay's
    /// own address; None when its media is not anchored: no join is possible), on a trunk
    /// with `srtp`.
    Join {
        replaces: Replaces,
        from: (usize, CallKey),
        sdp: Option<Bytes>,
        srtp: SrtpPolicy,
    },
    /// The answer to a [`CallNote::Join`] for call `to`: joined with `partner`, whose ports
    /// `Ok` describes, or refused with a status.
    Joined {
        to: CallKey,
        partner: (usize, CallKey),
        outcome: Result<Bytes, u16>,
    },
    /// The partner of call `to` ended: hang up its party.
    PartnerEnded { to: CallKey },
}

/// A call joined to another by an attended transfer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Join {
    /// The partner call: its shard and key.
    partner: (usize, CallKey),
    /// The leg that faced the transferor: no request goes there from the party any more.
    dead: Leg,
}

/// The `Replaces` embedded in a Refer-To URI (`?Replaces=...`, percent-encoded), if any.
pub(super) fn replaces_of(msg: &Message) -> Option<Replaces> {
    let uri = uri_of(msg.header_str(&HeaderName::ReferTo)?.trim())?;
    let (_, headers) = uri.split_once('?')?;
    let value = headers.split('&').find_map(|header| {
        let (name, value) = header.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("replaces")
            .then_some(value)
    })?;
    let value = percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .ok()?;
    let mut parts = value.split(';').map(str::trim);
    let call_id = parts.next().filter(|id| !id.is_empty())?.to_string();
    let (mut to_tag, mut from_tag) = (None, None);
    for part in parts {
        match part.split_once('=') {
            Some((name, tag)) if name.eq_ignore_ascii_case("to-tag") => to_tag = Some(tag),
            Some((name, tag)) if name.eq_ignore_ascii_case("from-tag") => from_tag = Some(tag),
            _ => {}
        }
    }
    Some(Replaces {
        call_id,
        to_tag: to_tag?.to_string(),
        from_tag: from_tag?.to_string(),
    })
}

/// Bridgehead's last SDP to a leg with every stream's direction set by `direction` (given
/// the stream's index and its direction now) and, when that changed anything, the next
/// session version (RFC 3264 §8).
fn restated(sdp: &Bytes, direction: impl Fn(usize, Direction) -> Direction) -> Option<Bytes> {
    let mut parsed = Sdp::parse(sdp).ok()?;
    let mut changed = false;
    for (index, media) in parsed.media_mut().iter_mut().enumerate() {
        if media.is_rejected() {
            continue;
        }
        let wanted = direction(index, media.direction());
        if wanted != media.direction() {
            media.set_direction(wanted);
            changed = true;
        }
    }
    if !changed {
        return Some(sdp.clone());
    }
    let version = parsed.origin()?.session_version.parse::<u64>().ok()?;
    parsed.set_session_version(version.saturating_add(1)).ok()?;
    Some(Bytes::from(parsed.to_bytes()))
}

/// Bridgehead's SDP toward the transferor on one call, as the partner call's relay must see
/// it: at the relay's own address (what is advertised may be a public address the relay
/// cannot reach itself), and sending both ways.
fn toward_partner(sdp: &Bytes, address: std::net::IpAddr) -> Option<Bytes> {
    let address = match address {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    }
    .to_string();
    let mut parsed = Sdp::parse(sdp).ok()?;
    for media in parsed.media_mut() {
        if media.connection().is_some() {
            media.set_connection(&address).ok()?;
        }
        media.set_direction(Direction::SendRecv);
    }
    if parsed.connection().is_some() {
        parsed.set_connection(&address).ok()?;
    }
    Some(Bytes::from(parsed.to_bytes()))
}

impl Calls {
    /// The next note for another shard, and which one.
    pub fn poll_note(&mut self) -> Option<(usize, CallNote)> {
        let at = self
            .notes
            .iter()
            .position(|(shard, _)| *shard != self.shard)?;
        self.notes.remove(at)
    }

    /// The next note this shard wrote for itself.
    pub fn take_own_note(&mut self) -> Option<CallNote> {
        let at = self
            .notes
            .iter()
            .position(|(shard, _)| *shard == self.shard)?;
        self.notes.remove(at).map(|(_, note)| note)
    }

    fn note(&mut self, shard: usize, note: CallNote) {
        self.notes.push_back((shard, note));
    }
}

impl B2bua<'_> {
    /// A REFER with Replaces on `leg` of call `key`, accepted by the rules: Bridgehead answers
    /// `202` and asks the shard of the replaced dialog to join its call with this one.
    pub(super) fn start_join(
        &mut self,
        key: CallKey,
        leg: Leg,
        (server, refer): (TxnId, Message),
        replaces: Replaces,
        now: Instant,
    ) {
        let Some(call) = self.calls.by_key.get(&key) else {
            return;
        };
        let address = call.rules.profile.media.as_ref().map(|m| m.address);
        let srtp = call.rules.profile.trunks[call.leg(leg).trunk].srtp;
        let sdp = address
            .filter(|_| !call.unanchored)
            .zip(call.last_sdp[leg.index()].as_ref())
            .and_then(|(address, sdp)| toward_partner(sdp, address));
        tracing::info!(call = %call.id, replaces = %replaces.call_id, "attended transfer: REFER with Replaces accepted");
        self.reply_local(key, leg, server, 202, now);
        if let Some(call) = self.calls.by_key.get_mut(&key) {
            call.refer = Some(Refer::joining(leg, refer));
        }
        self.send_in_dialog(
            key,
            leg,
            transfer::notify("SIP/2.0 100 Trying", false, key),
            now,
        );
        let shard = shard_for_call_id(replaces.call_id.as_bytes(), self.calls.shards);
        let from = (self.calls.shard, key);
        self.calls.note(
            shard,
            CallNote::Join {
                replaces,
                from,
                sdp,
                srtp,
            },
        );
    }

    /// A note from a shard (this one included).
    pub(super) fn on_note(&mut self, note: CallNote, now: Instant) {
        match note {
            CallNote::Join {
                replaces,
                from,
                sdp,
                srtp,
            } => {
                let outcome = self.join_replaced(&replaces, from, sdp.as_ref(), srtp, now);
                let partner = (
                    self.calls.shard,
                    outcome.as_ref().map_or(0, |(key, _)| *key),
                );
                let outcome = outcome.map(|(_, sdp)| sdp);
                self.calls.note(
                    from.0,
                    CallNote::Joined {
                        to: from.1,
                        partner,
                        outcome,
                    },
                );
            }
            CallNote::Joined {
                to,
                partner,
                outcome,
            } => self.on_joined(to, partner, outcome, now),
            CallNote::PartnerEnded { to } => {
                let Some(call) = self.calls.by_key.get_mut(&to) else {
                    return;
                };
                let Some(join) = call.joined.take() else {
                    return;
                };
                tracing::info!(call = %call.id, "the joined party hung up: hanging up ours");
                self.send_bye(to, join.dead.other(), Vec::new(), now);
                self.end_call(to, "bye", Some(join.dead), now);
            }
        }
    }

    /// Joins the call whose dialog `replaces` names (on this shard) with call `from`: its
    /// relay faces `from`'s ports, its transferor's dialog is hung up. Returns the call and
    /// its ports toward the transferor, or the status that refuses the join.
    fn join_replaced(
        &mut self,
        replaces: &Replaces,
        from: (usize, CallKey),
        sdp: Option<&Bytes>,
        srtp: SrtpPolicy,
        now: Instant,
    ) -> Result<(CallKey, Bytes), u16> {
        // The to-tag is Bridgehead's own (RFC 3891 §3); the other order is tried too.
        let (key, leg) = [
            (&replaces.to_tag, &replaces.from_tag),
            (&replaces.from_tag, &replaces.to_tag),
        ]
        .into_iter()
        .find_map(|(local, remote)| {
            let found = *self
                .calls
                .dialogs
                .get(&dialog_key(&replaces.call_id, Some(local)))?;
            let call = self.calls.by_key.get(&found.0)?;
            (call.leg(found.1).remote_tag.as_ref() == Some(remote)).then_some(found)
        })
        .ok_or(481u16)?;
        if from == (self.calls.shard, key) {
            return Err(403);
        }
        let call = self.calls.by_key.get_mut(&key).ok_or(481u16)?;
        if !matches!(call.state, CallState::Answered { .. }) {
            return Err(481);
        }
        if call.refer.is_some() || call.joined.is_some() || call.invite_pending {
            return Err(491);
        }
        let address = call.rules.profile.media.as_ref().map(|m| m.address);
        let same_srtp = call.rules.profile.trunks[call.leg(leg).trunk].srtp == srtp;
        let own = address
            .filter(|_| same_srtp && !call.unanchored)
            .zip(call.last_sdp[leg.index()].as_ref())
            .and_then(|(address, own)| toward_partner(own, address))
            .ok_or(488u16)?;
        // Without anchored media on both calls there are no relays to join.
        let mut partner = sdp.and_then(|sdp| Sdp::parse(sdp).ok()).ok_or(488u16)?;
        tracing::info!(call = %call.id, "attended transfer: this call's transferor is replaced by another call's party");
        call.joined = Some(Join {
            partner: from,
            dead: leg,
        });
        self.forget_session(key, leg);
        self.anchor_media(key, leg.other(), &mut partner);
        self.send_bye(key, leg, Vec::new(), now);
        if let Some(call) = self.calls.by_key.get(&key) {
            self.calls.dialogs.remove(&call.leg(leg).dialog_key());
        }
        self.take_off_hold(key, leg.other(), now);
        Ok((key, own))
    }

    /// The partner's shard answered this call's join: on success the relay faces the
    /// partner's ports, the transferor hears `200 OK` and its dialog waits for its BYE;
    /// otherwise the transferor hears the refusal and the call stays as it was.
    fn on_joined(
        &mut self,
        key: CallKey,
        partner: (usize, CallKey),
        outcome: Result<Bytes, u16>,
        now: Instant,
    ) {
        let joining = self
            .calls
            .refer_mut(key)
            .filter(|refer| refer.is_joining())
            .map(|refer| refer.leg());
        let (Some(leg), Ok(sdp)) = (joining, &outcome) else {
            if let Err(status) = outcome {
                self.join_refused(key, status, now);
            } else {
                // This call ended while its partner joined it: the partner hangs up.
                self.calls
                    .note(partner.0, CallNote::PartnerEnded { to: partner.1 });
            }
            return;
        };
        let Ok(mut partner_sdp) = Sdp::parse(sdp) else {
            return;
        };
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        tracing::info!(call = %call.id, "attended transfer: joined");
        call.joined = Some(Join { partner, dead: leg });
        let old = call.leg(leg).clone();
        if let Some(refer) = call.refer.as_mut() {
            refer.joined(old);
        }
        self.forget_session(key, leg);
        self.anchor_media(key, leg.other(), &mut partner_sdp);
        self.take_off_hold(key, leg.other(), now);
        self.transfer_done(key, 200, now);
    }

    /// A leg's session timer stops (the leg left the call).
    fn forget_session(&mut self, key: CallKey, leg: Leg) {
        if let Some(call) = self.calls.by_key.get_mut(&key) {
            call.session[leg.index()] = None;
            call.session_due[leg.index()] = None;
        }
    }

    /// A party the transferor held while it consulted gets its media back: Bridgehead's own
    /// re-INVITE offers the last SDP it sent that party, sending both ways.
    fn take_off_hold(&mut self, key: CallKey, leg: Leg, now: Instant) {
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        let Some(last) = call.last_sdp[leg.index()].as_ref() else {
            return;
        };
        let Some(offer) = restated(last, |_, _| Direction::SendRecv) else {
            return;
        };
        if offer == *last {
            return;
        }
        tracing::info!(call = %call.id, leg = leg.name(), "attended transfer: taking the party off hold");
        call.last_sdp[leg.index()] = Some(offer.clone());
        call.invite_pending = true;
        let invite = in_dialog::OwnRequest::new(Method::Invite)
            .with_sdp_as_sent(offer)
            .owned_by(ClientOwner::Refresh(key, leg));
        self.send_in_dialog(key, leg, invite, now);
    }

    /// The joined call `key`'s party sent `method` on its live leg `leg`: true when it was
    /// handled here (a BYE hangs up the partner's party; an offer is answered with the media
    /// already agreed, its new address learnt; INFO and OPTIONS get 200; anything else 501).
    pub(super) fn on_joined_request(
        &mut self,
        key: CallKey,
        leg: Leg,
        (msg, txn_key, from): (Message, String, Peer),
        now: Instant,
    ) -> bool {
        if self.dead_leg(key).is_none() {
            return false;
        }
        let method = msg
            .method()
            .cloned()
            .unwrap_or(Method::Extension(String::new()));
        let offer = sdp_of(&msg).and_then(|sdp| Sdp::parse(&sdp).ok());
        let server = self.create_server(txn_key, msg, from, ServerOwner::Local);
        match method {
            Method::Bye => {
                self.reply_local(key, leg, server, 200, now);
                if let Some(call) = self.calls.by_key.get(&key) {
                    tracing::info!(call = %call.id, "a joined party hung up: hanging up the other");
                }
                self.end_call(key, "bye", Some(leg), now);
            }
            Method::Invite | Method::Update => {
                self.session_refreshed(key, leg, now);
                let answer = self.answer_joined_offer(key, leg, offer);
                if method == Method::Invite {
                    if let Some(call) = self.calls.by_key.get_mut(&key) {
                        call.invite_pending = false;
                        call.pending_ack = Some(PendingAck { from: leg, server });
                    }
                }
                self.reply_local_with(key, leg, server, (200, answer), now);
            }
            Method::Info | Method::Options => self.reply_local(key, leg, server, 200, now),
            _ => self.reply_local(key, leg, server, 501, now),
        }
        true
    }

    /// Bridgehead's answer to a joined party's offer (or its offer, for a request without
    /// one): the media already agreed, each stream's direction answering the offer's; where
    /// the party now wants media is learnt.
    fn answer_joined_offer(&mut self, key: CallKey, leg: Leg, offer: Option<Sdp>) -> Option<Bytes> {
        let last = self.calls.by_key.get(&key)?.last_sdp[leg.index()].clone()?;
        let Some(mut offer) = offer else {
            return Some(last);
        };
        let directions: Vec<Direction> = offer.media().iter().map(|m| m.direction()).collect();
        self.anchor_media(key, leg.other(), &mut offer);
        let answer = restated(&last, |index, _| {
            directions
                .get(index)
                .map_or(Direction::Inactive, |d| d.answering(Direction::SendRecv))
        })?;
        if let Some(call) = self.calls.by_key.get_mut(&key) {
            call.last_sdp[leg.index()] = Some(answer.clone());
        }
        Some(answer)
    }

    /// A joined call's party acknowledged Bridgehead's 2xx (an answer it carries is learnt):
    /// true when the call is a joined one.
    pub(super) fn on_joined_ack(&mut self, key: CallKey, leg: Leg, msg: &Message) -> bool {
        if self
            .calls
            .by_key
            .get(&key)
            .is_none_or(|c| c.joined.is_none())
        {
            return false;
        }
        if let Some(mut answer) = sdp_of(msg).and_then(|sdp| Sdp::parse(&sdp).ok()) {
            self.anchor_media(key, leg.other(), &mut answer);
        }
        true
    }

    /// The leg of call `key` that a join left dead, if it is joined.
    pub(super) fn dead_leg(&self, key: CallKey) -> Option<Leg> {
        self.calls.by_key.get(&key)?.joined.map(|j| j.dead)
    }

    /// A joined call ends: its partner's party is hung up.
    pub(super) fn end_join(&mut self, key: CallKey) {
        let Some(join) = self
            .calls
            .by_key
            .get_mut(&key)
            .and_then(|c| c.joined.take())
        else {
            return;
        };
        self.calls.note(
            join.partner.0,
            CallNote::PartnerEnded { to: join.partner.1 },
        );
    }
}
