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
use crate::media::SrtpKey;
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
    /// ports toward the transferor `sdp` describes as the partner's relay must see them
    /// ([`toward_partner`]; None when its media is not anchored: no join is possible).
    Join {
        replaces: Replaces,
        from: (usize, CallKey),
        sdp: Option<Bytes>,
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
/// cannot reach itself), with `keys` (fresh ones, by stream: both ends of the joint start
/// their SRTP contexts afresh), and `recvonly`: the partner relay promises no media (a party
/// on hold sends nothing through it), so that side never times out for silence.
fn toward_partner(
    sdp: &Bytes,
    address: std::net::IpAddr,
    keys: &[Option<SrtpKey>],
) -> Option<Bytes> {
    let address = match address {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    }
    .to_string();
    let mut parsed = Sdp::parse(sdp).ok()?;
    for (index, media) in parsed.media_mut().iter_mut().enumerate() {
        if media.connection().is_some() {
            media.set_connection(&address).ok()?;
        }
        media.set_direction(Direction::RecvOnly);
        media.remove_attribute("crypto");
        if let Some(key) = keys.get(index).copied().flatten() {
            media.add_attribute("crypto", Some(&key.attribute())).ok()?;
        }
    }
    if parsed.connection().is_some() {
        parsed.set_connection(&address).ok()?;
    }
    Some(Bytes::from(parsed.to_bytes()))
}

/// The first audio codec of an SDP's first stream (telephone-event and CN aside).
fn first_codec(sdp: &Sdp) -> Option<String> {
    let codecs = sdp.media().first()?.codecs();
    codecs
        .iter()
        .find(|c| {
            !c.name.eq_ignore_ascii_case("telephone-event") && !c.name.eq_ignore_ascii_case("CN")
        })
        .map(|c| c.name.to_ascii_uppercase())
}

/// Whether what the two calls agreed with the transferor can cross the joint: the same
/// codec, or G.711 on both (the relay turns µ-law into A-law), and SRTP on both or neither.
fn compatible(ours: &Sdp, theirs: &Sdp) -> bool {
    let g711 = |codec: &Option<String>| matches!(codec.as_deref(), Some("PCMU" | "PCMA"));
    let (a, b) = (first_codec(ours), first_codec(theirs));
    let codecs = a.is_some() && (a == b || (g711(&a) && g711(&b)));
    let secure = |sdp: &Sdp| sdp.media().iter().any(|m| !m.crypto().is_empty());
    codecs && secure(ours) == secure(theirs)
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

    /// The SDP a partner relay must learn for the `dead` leg of call `key`, and the fresh keys
    /// it names (applied once the join is done); None when the call's media is not anchored.
    fn partner_view(&mut self, key: CallKey, dead: Leg) -> Option<(Bytes, Vec<Option<SrtpKey>>)> {
        let call = self.by_key.get(&key)?;
        let address = call.rules.profile.media.as_ref()?.address;
        if call.unanchored {
            return None;
        }
        let last = call.last_sdp[dead.index()].clone()?;
        let old: Vec<Option<SrtpKey>> = call
            .streams
            .iter()
            .map(|s| match dead {
                Leg::A => s.a.local_key,
                Leg::B => s.b.local_key,
            })
            .collect();
        let keys: Vec<Option<SrtpKey>> = old
            .into_iter()
            .map(|k| k.map(|k| SrtpKey::generate(&mut self.random, k.tag, k.suite)))
            .collect();
        Some((toward_partner(&last, address, &keys)?, keys))
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
        let view = self.calls.partner_view(key, leg);
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        tracing::info!(call = %call.id, replaces = %replaces.call_id, "attended transfer: REFER with Replaces accepted");
        let (sdp, keys) = view.map_or((None, Vec::new()), |(sdp, keys)| (Some(sdp), keys));
        call.refer = Some(Refer::joining(leg, refer, keys));
        self.reply_local(key, leg, server, 202, now);
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
            } => {
                let outcome = self.join_replaced(&replaces, from, sdp.as_ref(), now);
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

    /// The leg of this shard's dialog `replaces` names: Bridgehead's tag as the to-tag (RFC
    /// 3891 §3), else the other way round.
    fn replaced_dialog(&self, replaces: &Replaces) -> Option<(CallKey, Leg)> {
        [
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
    }

    /// Joins the call whose dialog `replaces` names (on this shard) with call `from`, whose
    /// ports toward its transferor `sdp` describes: this call's relay faces them, its
    /// transferor's dialog is hung up. Returns the call and its own ports for the partner, or
    /// the status that refuses the join: 481 (no such dialog, or not answered: the REFER's
    /// target is then called as in a blind transfer), 403 (a dialog no transferor faces),
    /// 491 (an INVITE or ACK under way), 488 (media that cannot cross).
    fn join_replaced(
        &mut self,
        replaces: &Replaces,
        from: (usize, CallKey),
        sdp: Option<&Bytes>,
        now: Instant,
    ) -> Result<(CallKey, Bytes), u16> {
        let (key, leg) = self.replaced_dialog(replaces).ok_or(481u16)?;
        if from == (self.calls.shard, key) {
            return Err(403);
        }
        let call = self.calls.by_key.get(&key).ok_or(481u16)?;
        if !matches!(call.state, CallState::Answered { .. }) {
            return Err(481);
        }
        // Only the dialog of a transferor's trunk may be replaced (RFC 3891 §7).
        if call.rules.profile.trunks[call.leg(leg).trunk].refer != ReferPolicy::Terminate {
            return Err(403);
        }
        if call.refer.is_some()
            || call.joined.is_some()
            || call.invite_pending
            || call.pending_ack.is_some()
        {
            return Err(491);
        }
        let mut partner = sdp.and_then(|sdp| Sdp::parse(sdp).ok()).ok_or(488u16)?;
        let (own, keys) = self.calls.partner_view(key, leg).ok_or(488u16)?;
        let fits = Sdp::parse(&own).is_ok_and(|own| compatible(&own, &partner));
        if !fits {
            return Err(488);
        }
        if let Some(call) = self.calls.by_key.get_mut(&key) {
            tracing::info!(call = %call.id, "attended transfer: this call's transferor is replaced by another call's party");
            call.joined = Some(Join {
                partner: from,
                dead: leg,
            });
        }
        self.face_partner(key, leg, &keys, &mut partner);
        self.send_bye(key, leg, Vec::new(), now);
        if let Some(call) = self.calls.by_key.get(&key) {
            self.calls.dialogs.remove(&call.leg(leg).dialog_key());
        }
        self.take_off_hold(key, leg.other(), now);
        Ok((key, own))
    }

    /// The partner's shard answered this call's join: on success the relay faces the
    /// partner's ports, the transferor hears `200 OK` and its dialog waits for its BYE;
    /// otherwise the transferor hears the refusal (or, for 481, the target is called) and the
    /// call stays as it was.
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
        let sdp = match (joining, outcome) {
            (Some(_), Err(status)) => {
                self.join_refused(key, status, now);
                return;
            }
            (None, Err(_)) => return,
            (None, Ok(_)) => {
                // This call ended while its partner joined it: the partner hangs up.
                self.calls
                    .note(partner.0, CallNote::PartnerEnded { to: partner.1 });
                return;
            }
            (Some(_), Ok(sdp)) => sdp,
        };
        let Some(leg) = joining else {
            return;
        };
        let Ok(mut partner_sdp) = Sdp::parse(&sdp) else {
            self.calls
                .note(partner.0, CallNote::PartnerEnded { to: partner.1 });
            self.join_refused(key, 500, now);
            return;
        };
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        tracing::info!(call = %call.id, "attended transfer: joined");
        call.joined = Some(Join { partner, dead: leg });
        let old = call.leg(leg).clone();
        let (keys, left) = call
            .refer
            .as_mut()
            .map(|refer| (refer.joined(old), refer.transferor_left()))
            .unwrap_or_default();
        if left {
            // The transferor hung up while the calls were joined: nobody to tell.
            call.refer = None;
        }
        self.face_partner(key, leg, &keys, &mut partner_sdp);
        self.take_off_hold(key, leg.other(), now);
        if !left {
            self.transfer_done(key, 200, now);
        }
    }

    /// A request from the party of a call whose attended transfer waits for its join: a BYE
    /// gets 200 here (the call ends, and the join finds it gone), an offer 491. None: the
    /// request goes on as usual.
    pub(super) fn while_joining(&self, key: CallKey, leg: Leg, method: &Method) -> Option<u16> {
        let refer = self.calls.by_key.get(&key)?.refer.as_ref()?;
        if !refer.is_joining() || refer.leg() == leg {
            return None;
        }
        match method {
            Method::Bye => Some(200),
            Method::Invite | Method::Update => Some(491),
            _ => None,
        }
    }

    /// The `dead` leg's side of each stream faces the partner relay: pinned to its address,
    /// with the fresh `keys`, its session timer stopped, and the partner's SDP learnt.
    fn face_partner(
        &mut self,
        key: CallKey,
        dead: Leg,
        keys: &[Option<SrtpKey>],
        partner: &mut Sdp,
    ) {
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        call.session[dead.index()] = None;
        call.session_due[dead.index()] = None;
        // No trunk carries that leg any more.
        call.seats[dead.index()] = None;
        for (index, stream) in call.streams.iter_mut().enumerate() {
            let side = match dead {
                Leg::A => &mut stream.a,
                Leg::B => &mut stream.b,
            };
            side.pinned = true;
            if let Some(key) = keys.get(index).copied().flatten() {
                side.local_key = Some(key);
            }
        }
        // Learnt as an SDP from that side (the streams go to the relay with the changes).
        self.anchor_media(key, dead.other(), partner);
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

    /// A request of the joined call `key` on its leg `leg`: true when it was handled here.
    /// From the party: a BYE hangs up the partner's party; an offer is answered with the
    /// media already agreed (its new address learnt; 488 for another number of streams); INFO
    /// and OPTIONS get 200; anything else 501. On the dead leg (the transferor's dialog
    /// ended): 481.
    pub(super) fn on_joined_request(
        &mut self,
        key: CallKey,
        leg: Leg,
        (msg, txn_key, from): (Message, String, Peer),
        now: Instant,
    ) -> bool {
        let Some(dead) = self.dead_leg(key) else {
            return false;
        };
        let method = msg
            .method()
            .cloned()
            .unwrap_or(Method::Extension(String::new()));
        let offer = sdp_of(&msg).and_then(|sdp| Sdp::parse(&sdp).ok());
        let server = self.create_server(txn_key, msg, from, ServerOwner::Local);
        if leg == dead {
            self.reply_local(key, leg, server, 481, now);
            return true;
        }
        match method {
            Method::Bye => {
                self.reply_local(key, leg, server, 200, now);
                if let Some(call) = self.calls.by_key.get(&key) {
                    tracing::info!(call = %call.id, "a joined party hung up: hanging up the other");
                }
                self.end_call(key, "bye", Some(leg), now);
            }
            Method::Invite | Method::Update => {
                let is_invite = method == Method::Invite;
                if let Some(call) = self.calls.by_key.get_mut(&key).filter(|_| is_invite) {
                    call.invite_pending = false;
                }
                let answer = self.answer_joined_offer(key, leg, offer, is_invite);
                let Ok(answer) = answer else {
                    self.reply_local(key, leg, server, 488, now);
                    return true;
                };
                self.session_refreshed(key, leg, now);
                if let Some(call) = self.calls.by_key.get_mut(&key).filter(|_| is_invite) {
                    call.pending_ack = Some(PendingAck { from: leg, server });
                }
                self.reply_local_as_sent(key, leg, server, (200, answer), now);
            }
            Method::Info | Method::Options => self.reply_local(key, leg, server, 200, now),
            _ => self.reply_local(key, leg, server, 501, now),
        }
        true
    }

    /// Bridgehead's SDP for a joined party's offer (`is_invite`: in an INVITE, where a request
    /// without one gets Bridgehead's offer): the media already agreed, each stream's direction
    /// answering the offer's; where the party now wants media is learnt. Err for an offer with
    /// another number of streams.
    fn answer_joined_offer(
        &mut self,
        key: CallKey,
        leg: Leg,
        offer: Option<Sdp>,
        is_invite: bool,
    ) -> Result<Option<Bytes>, ()> {
        let Some(last) = self
            .calls
            .by_key
            .get(&key)
            .and_then(|c| c.last_sdp[leg.index()].clone())
        else {
            return Ok(None);
        };
        let Some(mut offer) = offer else {
            // An UPDATE without SDP (a session refresh) is answered without one.
            return Ok(is_invite.then_some(last));
        };
        let streams = Sdp::parse(&last).map_or(0, |sdp| sdp.media().len());
        if offer.media().len() != streams {
            return Err(());
        }
        let directions: Vec<Direction> = offer.media().iter().map(|m| m.direction()).collect();
        self.anchor_media(key, leg.other(), &mut offer);
        let answer = restated(&last, |index, _| {
            directions
                .get(index)
                .map_or(Direction::Inactive, |d| d.answering(Direction::SendRecv))
        });
        if let (Some(answer), Some(call)) = (&answer, self.calls.by_key.get_mut(&key)) {
            call.last_sdp[leg.index()] = Some(answer.clone());
        }
        Ok(answer)
    }

    /// A joined call's party acknowledged Bridgehead's 2xx (an answer it carries is learnt):
    /// true when the call is a joined one and the ACK came from its party.
    pub(super) fn on_joined_ack(&mut self, key: CallKey, leg: Leg, msg: &Message) -> bool {
        if self.dead_leg(key).is_none_or(|dead| dead == leg) {
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
