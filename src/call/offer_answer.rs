//! Offer/answer and media: SDP anchored on the relay's ports, trunk codec lists, local ringback,
//! and sounds the rules play.

use super::*;
use crate::sip::multipart::{is_multipart, Multipart};

/// True when a Content-Type value is `application/sdp` (no allocation: checked per message).
fn is_sdp_type(content_type: &str) -> bool {
    content_type
        .trim_start()
        .get(..15)
        .is_some_and(|t| t.eq_ignore_ascii_case("application/sdp"))
}

/// The SDP a message carries: its body when that is `application/sdp`, or the first SDP part
/// of a multipart body (RFC 5621: an emergency call's PIDF-LO, a SIP-I call's ISUP beside it).
pub(super) fn sdp_of(msg: &Message) -> Option<Bytes> {
    if msg.body.is_empty() {
        return None;
    }
    let content_type = msg.header_str(&HeaderName::ContentType)?;
    if is_sdp_type(content_type) {
        return Some(msg.body.clone());
    }
    let multipart = Multipart::parse(content_type, &msg.body)?;
    let index = multipart.sdp_index()?;
    Some(multipart.parts[index].content.clone())
}

/// True when a message carries an SDP (the body, or a part of it).
pub(super) fn carries_sdp(msg: &Message) -> bool {
    sdp_of(msg).is_some()
}

/// Cuts the SDP of `msg` until the whole message takes at most `limit` bytes: every ICE
/// candidate first, then one codec at a time from the end of the list of the stream that has
/// the most (never a stream's first codec, telephone-event or CN). Returns how many candidates
/// and codecs went; the message may still be larger when nothing else can go.
pub(super) fn trim_to_fit(msg: &mut Message, limit: usize) -> (usize, usize) {
    let fits = |msg: &Message| msg.to_bytes().len() <= limit;
    if fits(msg) {
        return (0, 0);
    }
    let Some(mut sdp) = sdp_of(msg).and_then(|body| Sdp::parse(&body).ok()) else {
        return (0, 0);
    };
    let mut candidates = sdp.remove_attribute("candidate");
    for media in sdp.media_mut() {
        candidates += media.remove_attribute("candidate");
    }
    replace_sdp(msg, Bytes::from(sdp.to_bytes()));
    let mut codecs = 0;
    while !fits(msg) {
        let removable = |media: &crate::sdp::Media| -> Vec<String> {
            let all = media.codecs();
            all.iter()
                .skip(1)
                .filter(|c| {
                    !c.name.eq_ignore_ascii_case("telephone-event")
                        && !c.name.eq_ignore_ascii_case("CN")
                })
                .map(|c| c.pt.clone())
                .collect()
        };
        let most = sdp
            .media()
            .iter()
            .enumerate()
            .map(|(index, media)| (index, removable(media)))
            .max_by_key(|(_, pts)| pts.len());
        let Some((index, pt)) = most.and_then(|(index, pts)| Some((index, pts.last()?.clone())))
        else {
            break;
        };
        if sdp.media_mut()[index]
            .remove_codecs(&[pt.as_str()])
            .is_err()
        {
            break;
        }
        codecs += 1;
        replace_sdp(msg, Bytes::from(sdp.to_bytes()));
    }
    (candidates, codecs)
}

/// Puts `sdp` where the message's SDP is: the whole body, or its part of a multipart body
/// (the other parts unchanged).
pub(super) fn replace_sdp(msg: &mut Message, sdp: Bytes) {
    let multipart = msg
        .header_str(&HeaderName::ContentType)
        .filter(|content_type| !is_sdp_type(content_type))
        .and_then(|content_type| Multipart::parse(content_type, &msg.body));
    match multipart {
        Some(mut multipart) => {
            if let Some(index) = multipart.sdp_index() {
                multipart.parts[index].content = sdp;
                msg.body = multipart.to_bytes();
            }
        }
        None => msg.body = sdp,
    }
}

/// Toward a trunk that takes SDP alone (`multipart: sdp_only`): a multipart body becomes its
/// SDP part, or no body when it has none.
pub(super) fn keep_sdp_only(msg: &mut Message) {
    let Some(content_type) = msg.header_str(&HeaderName::ContentType) else {
        return;
    };
    if !is_multipart(content_type) {
        return;
    }
    match sdp_of(msg) {
        Some(sdp) => {
            msg.set_header(HeaderName::ContentType, "application/sdp");
            msg.body = sdp;
        }
        None => {
            msg.remove_header(&HeaderName::ContentType);
            msg.body = Bytes::new();
        }
    }
}

/// Takes the SDP out of a message (`delayed_offer: always`): an SDP body goes; a multipart
/// body loses its SDP part (the others stay), or goes when that was its only part.
pub(super) fn remove_sdp(msg: &mut Message) {
    let multipart = msg
        .header_str(&HeaderName::ContentType)
        .filter(|content_type| is_multipart(content_type))
        .and_then(|content_type| Multipart::parse(content_type, &msg.body));
    if let Some(mut multipart) = multipart {
        if let Some(index) = multipart.sdp_index() {
            multipart.parts.remove(index);
        }
        if !multipart.parts.is_empty() {
            msg.body = multipart.to_bytes();
            return;
        }
    }
    msg.remove_header(&HeaderName::ContentType);
    msg.body = Bytes::new();
}

/// Cuts `media` to the codecs of `other` (by name; telephone-event and CN only beside a voice
/// codec). With no voice codec in common but a G.711 on each side, the first G.711 stays when
/// the relay can transcode (`anchored`). Refuses the stream (port 0) when nothing is left.
fn keep_common_codecs(media: &mut crate::sdp::Media, other: &crate::sdp::Media, anchored: bool) {
    let theirs = other.codecs();
    let voice = |name: &str| {
        !name.eq_ignore_ascii_case("telephone-event") && !name.eq_ignore_ascii_case("CN")
    };
    let mut kept: Vec<String> = media
        .codecs()
        .iter()
        .filter(|c| theirs.iter().any(|t| t.name.eq_ignore_ascii_case(&c.name)))
        .map(|c| c.pt.clone())
        .collect();
    let has_voice = media
        .codecs()
        .iter()
        .any(|c| kept.contains(&c.pt) && voice(&c.name));
    if !has_voice {
        kept.retain(|pt| {
            !media
                .codecs()
                .iter()
                .any(|c| c.pt == *pt && !voice(&c.name))
        });
        let g711 = media.codecs().into_iter().find(|c| c.is_g711());
        if let Some(g711) = g711.filter(|_| anchored && theirs.iter().any(|t| t.is_g711())) {
            kept.push(g711.pt);
        }
    }
    let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
    if kept.is_empty() || media.kind() != other.kind() || media.keep_codecs(&kept).is_err() {
        media.set_port(0);
    }
}

/// The two answers Bridgehead gives when it withheld the caller's offer from the callee
/// (`delayed_offer: always`) and the callee offered in turn: to the caller, what the callee's
/// offer says of the callee; to the callee, what the caller's offer says of the caller. Each
/// stays in its sender's terms (addresses, payload types), which anchoring then translates
/// (`anchored`: media is).
pub(super) fn answers_to_withheld_offer(caller: &Sdp, callee: &Sdp, anchored: bool) -> (Sdp, Sdp) {
    (
        answer_from(caller, callee, anchored),
        answer_from(callee, caller, anchored),
    )
}

/// An answer to `offer` made of what `other` says of its own side: each of the offer's media
/// sections answered with `other`'s section at the same place (its address, its codecs cut to
/// the offer's, the direction both allow, RFC 3264 §6.1), or refused (port 0) when `other` has
/// none of that kind there.
fn answer_from(offer: &Sdp, other: &Sdp, anchored: bool) -> Sdp {
    let mut answer = offer.clone();
    for (index, media) in answer.media_mut().iter_mut().enumerate() {
        let offered = media.clone();
        let theirs = other
            .media()
            .get(index)
            .filter(|m| m.kind() == offered.kind() && !m.is_rejected());
        let Some(theirs) = theirs else {
            media.set_port(0);
            continue;
        };
        *media = theirs.clone();
        // Their address, whether their section or their session names it.
        let address = theirs.connection().map(|c| c.address);
        if address.is_some_and(|address| media.set_connection(&address).is_err()) {
            media.set_port(0);
            continue;
        }
        keep_common_codecs(media, &offered, anchored);
        media.set_direction(offered.direction().answering(theirs.direction()));
    }
    answer
}

/// The streams of an SDP that are on hold one way or another: sendonly, recvonly, or sent to
/// `c=0.0.0.0` (RFC 2543 hold), by index (refused streams aside).
pub(super) fn held_streams(sdp: &Sdp) -> Vec<usize> {
    sdp.media()
        .iter()
        .enumerate()
        .filter(|(_, media)| !media.is_rejected())
        .filter(|(_, media)| {
            let unspecified = media
                .connection()
                .and_then(|c| c.address.parse::<std::net::IpAddr>().ok())
                .is_some_and(|ip| ip.is_unspecified());
            unspecified
                || matches!(
                    media.direction(),
                    crate::sdp::Direction::SendOnly | crate::sdp::Direction::RecvOnly
                )
        })
        .map(|(index, _)| index)
        .collect()
}

/// The codecs Bridgehead can offer by name: name, payload type, rtpmap, fmtp.
const OFFERABLE: [(&str, u8, &str, Option<&str>); 6] = [
    ("PCMA", 8, "PCMA/8000", None),
    ("PCMU", 0, "PCMU/8000", None),
    ("G722", 9, "G722/8000", None),
    ("G729", 18, "G729/8000", Some("annexb=no")),
    ("telephone-event", 101, "telephone-event/8000", Some("0-16")),
    ("CN", 13, "CN/8000", None),
];

/// Bridgehead's own offer, for a delayed-offer INVITE toward a trunk that takes only early
/// offers: one audio stream with the trunk's codecs that Bridgehead knows (PCMA, PCMU and
/// telephone-event when it lists none of them), not sending yet (`c=0.0.0.0`: where the
/// caller wants media comes with its answer in the ACK). Anchoring then puts Bridgehead's
/// address, port and the trunk's SRTP in.
pub(super) fn own_offer(codecs: &[String], session: u32) -> Bytes {
    let named = |name: &str| {
        OFFERABLE
            .iter()
            .find(|(known, pt, ..)| known.eq_ignore_ascii_case(name) || pt.to_string() == name)
    };
    let mut chosen: Vec<_> = codecs.iter().filter_map(|c| named(c)).collect();
    chosen.dedup();
    if chosen
        .iter()
        .all(|(name, ..)| *name == "telephone-event" || *name == "CN")
    {
        chosen = ["PCMA", "PCMU", "telephone-event"]
            .iter()
            .filter_map(|c| named(c))
            .collect();
    }
    let pts: Vec<String> = chosen.iter().map(|(_, pt, ..)| pt.to_string()).collect();
    let mut sdp = format!(
        "v=0\r\no=- {session} 1 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 9 RTP/AVP {}\r\n",
        pts.join(" ")
    );
    for (_, pt, rtpmap, fmtp) in chosen {
        sdp.push_str(&format!("a=rtpmap:{pt} {rtpmap}\r\n"));
        if let Some(fmtp) = fmtp {
            sdp.push_str(&format!("a=fmtp:{pt} {fmtp}\r\n"));
        }
    }
    sdp.push_str("a=ptime:20\r\na=sendrecv\r\n");
    Bytes::from(sdp)
}

/// Bridgehead's own answer to an offer, as if the callee had answered without sending yet
/// (`c=0.0.0.0`): the offer's first audio stream with a G.711 cut to that G.711 plus
/// telephone-event and comfort noise, its direction mirrored, without SRTP keys (anchoring
/// puts Bridgehead's in); every other stream refused. Also tells whether its G.711 is PCMU.
pub(super) fn own_answer(offer: &Sdp) -> Option<(Sdp, bool)> {
    let mut sdp = offer.clone();
    let pcmu = keep_first_g711(&mut sdp)?;
    for media in sdp.media_mut().iter_mut().filter(|m| !m.is_rejected()) {
        media.remove_attribute("crypto");
        media.set_connection("0.0.0.0").ok()?;
        // The answer's direction mirrors the offer's (RFC 3264 §6.1).
        media.set_direction(media.direction().mirrored());
    }
    if sdp.connection().is_some() {
        sdp.set_connection("0.0.0.0").ok()?;
    }
    Some((sdp, pcmu))
}

/// Cuts an SDP to the first audio stream with a G.711, keeping that G.711 plus
/// telephone-event and comfort noise; every other stream is refused (port 0). Returns whether
/// the G.711 is PCMU, or None when no audio stream has one.
pub(super) fn keep_first_g711(sdp: &mut Sdp) -> Option<bool> {
    let mut voice = None;
    for media in sdp.media_mut() {
        let g711 = media.codecs().into_iter().find(|c| c.is_g711());
        match g711 {
            Some(codec) if media.kind() == "audio" && voice.is_none() => {
                media
                    .keep_codecs(&[&codec.pt, "telephone-event", "CN"])
                    .ok()?;
                voice = Some(codec.name);
            }
            _ => media.set_port(0),
        }
    }
    Some(voice?.eq_ignore_ascii_case("PCMU"))
}

/// Keeps only a trunk's codecs in an offer toward it, in its order. When nothing is in common
/// but G.711 (the offer has PCMU, the trunk takes PCMA, or the reverse) and media is anchored,
/// the other G.711 is offered and the relay transcodes. Otherwise a media section with none of
/// the trunk's codecs is left as it is (the far end refuses it, as it would without the list).
pub(super) fn offer_codecs(sdp: &mut Sdp, codecs: &[String], anchored: bool, call_id: &str) {
    let wanted: Vec<&str> = codecs.iter().map(String::as_str).collect();
    let takes = |name: &str| wanted.iter().any(|w| w.eq_ignore_ascii_case(name));
    for media in sdp.media_mut() {
        if media.is_rejected() || media.kind() != "audio" {
            continue;
        }
        // Voice codecs in common (telephone-event and comfort noise do not carry a call).
        let voice = |name: &str| {
            !name.eq_ignore_ascii_case("telephone-event") && !name.eq_ignore_ascii_case("CN")
        };
        let common = media
            .codecs()
            .iter()
            .any(|c| voice(&c.name) && takes(&c.name));
        if !common && anchored {
            let has = |name: &str| {
                media
                    .codecs()
                    .iter()
                    .any(|c| c.name.eq_ignore_ascii_case(name))
            };
            let renamed = if has("PCMU") && takes("PCMA") {
                media.replace_codec("PCMU", "8", "PCMA/8000")
            } else if has("PCMA") && takes("PCMU") {
                media.replace_codec("PCMA", "0", "PCMU/8000")
            } else {
                false
            };
            if renamed {
                tracing::info!(call = %call_id, "no codec in common: transcoding G.711");
            }
        }
        let kept = media.keep_codecs(&wanted);
        match kept {
            Ok(_) => {
                media.reorder_codecs(&wanted);
            }
            Err(err) => tracing::info!(call = %call_id, "codec list not applied: {err}"),
        }
    }
}

/// What an SDP body is in offer/answer terms (RFC 3264): requests offer, except ACK and PRACK
/// which answer; responses answer, unless their request carried no offer (delayed offer).
pub(super) fn sdp_kind(msg: &Message, request_had_sdp: Option<bool>) -> &'static str {
    match msg.method() {
        Some(Method::Ack | Method::Prack) => "answer",
        Some(_) => "offer",
        None if request_had_sdp == Some(false) => "offer",
        None => "answer",
    }
}

impl B2bua<'_> {
    /// With the caller's offer withheld from the callee (`delayed_offer: always`), a response
    /// from the callee: its first SDP is its offer, for which Bridgehead makes both answers
    /// (the callee's goes in the PRACK or the ACK); the response then carries the caller's
    /// answer, as does a 2xx without SDP.
    pub(super) fn answer_withheld_offer(&mut self, key: CallKey, msg: &mut Message) {
        let Some(call) = self.calls.by_key.get(&key).filter(|c| c.offer_withheld) else {
            return;
        };
        let (a_invite, first) = (call.a_invite, call.caller_answer.is_none());
        if first {
            let caller = self
                .txns
                .server(a_invite)
                .and_then(|e| sdp_of(e.request.as_ref()?))
                .and_then(|sdp| Sdp::parse(&sdp).ok());
            let callee = sdp_of(msg).and_then(|sdp| Sdp::parse(&sdp).ok());
            let (Some(caller), Some(callee)) = (caller, callee) else {
                return;
            };
            let Some(call) = self.calls.by_key.get_mut(&key) else {
                return;
            };
            let anchored = self.calls.media_ports.is_some() && !call.unanchored;
            let (to_caller, to_callee) = answers_to_withheld_offer(&caller, &callee, anchored);
            call.caller_answer = Some(Bytes::from(to_caller.to_bytes()));
            call.callee_answer_due = Some(Bytes::from(to_callee.to_bytes()));
        }
        let Some(answer) = self
            .calls
            .by_key
            .get(&key)
            .and_then(|c| c.caller_answer.clone())
        else {
            return;
        };
        let is_2xx = msg.status().is_some_and(|s| (200..300).contains(&s));
        if carries_sdp(msg) || is_2xx {
            if !carries_sdp(msg) {
                msg.set_header(HeaderName::ContentType, "application/sdp");
            }
            replace_sdp(msg, answer);
        }
    }

    /// Anchors an SDP about to be sent on `leg` of a call: Bridgehead's ports facing that leg,
    /// the other leg's addresses learned; the relay is told what changed.
    pub(super) fn anchor_media(&mut self, key: CallKey, leg: Leg, sdp: &mut Sdp) {
        let media_id = self.media_call_id(key);
        let advertise = match &self.calls.current.profile.media {
            Some(media) => media.advertise.clone(),
            None => return,
        };
        let (Some(call), Some(pool)) = (
            self.calls.by_key.get_mut(&key),
            self.calls.media_ports.as_mut(),
        ) else {
            return;
        };
        if call.unanchored {
            return;
        }
        let trunk = &call.rules.profile.trunks[call.leg(leg).trunk];
        let policy = (trunk.srtp, trunk.media_dscp);
        let dtmf = |trunk: TrunkId| call.rules.profile.trunks[trunk].dtmf;
        let (a_dtmf, b_dtmf) = (dtmf(call.a.trunk), dtmf(call.b.trunk));
        let noise = |trunk: TrunkId| call.rules.profile.trunks[trunk].comfort_noise;
        let (a_noise, b_noise) = (noise(call.a.trunk), noise(call.b.trunk));
        let rules_hear_digits = call.rules.rules.has_hook(call.script, Hook::Media);
        // Anchored on copies: an SDP that cannot be anchored goes out as it came.
        let mut anchored = sdp.clone();
        let mut streams = call.streams.clone();
        let result = crate::media::anchor(
            &mut anchored,
            &mut streams,
            leg,
            policy,
            pool,
            &mut self.calls.random,
            &advertise,
        );
        if result.is_ok() {
            *sdp = anchored;
            call.streams = streams;
        } else {
            // Give back the ports taken before it failed.
            let held: Vec<u16> = call
                .streams
                .iter()
                .flat_map(|s| [s.a.local, s.b.local])
                .collect();
            for port in streams.iter().flat_map(|s| [s.a.local, s.b.local]) {
                if !held.contains(&port) {
                    pool.give(port);
                }
            }
        }
        match result {
            Ok(mut changed) => {
                use crate::config::DtmfMode;
                for stream in &mut call.streams {
                    let before = *stream;
                    stream.a.dtmf = a_dtmf;
                    stream.b.dtmf = b_dtmf;
                    // Events cross as they are only toward an RFC 4733 trunk that took
                    // telephone-event, and only when no rule may drop or change them.
                    stream.a.dtmf_held = b_dtmf != DtmfMode::Rfc4733
                        || stream.b.dtmf_pt.is_none()
                        || rules_hear_digits;
                    stream.b.dtmf_held = a_dtmf != DtmfMode::Rfc4733
                        || stream.a.dtmf_pt.is_none()
                        || rules_hear_digits;
                    stream.a.comfort_noise = a_noise;
                    stream.b.comfort_noise = b_noise;
                    // A reload can change these without any SDP change.
                    if *stream != before && !changed.contains(&stream.index) {
                        changed.push(stream.index);
                    }
                }
                for index in changed {
                    self.calls.media_commands.push_back(MediaCommand::Stream {
                        call: media_id,
                        stream: Box::new(call.streams[index]),
                    });
                }
            }
            Err(err) => {
                self.calls.stats.media_failures += 1;
                let refuse = call.rules.profile.media.as_ref().map(|m| m.no_ports)
                    == Some(crate::config::NoPortsPolicy::Refuse);
                // Only a new call's offer can be refused: its answer uses the port taken with
                // the offer, and later SDPs go out as they are.
                if refuse && call.state == CallState::Calling && leg == Leg::B {
                    call.media_refused = Some(err);
                } else {
                    // From now on the call's media flows end to end, its SDP as it came: half
                    // an anchored call would carry audio one way only.
                    call.unanchored = true;
                    tracing::error!(call = %call.id, "media not anchored: {err}: the call's SDP goes as it came");
                }
            }
        }
    }

    /// Local ringback: when the call's early media is `ringback` or `convert_180_to_183` (sent
    /// as a 183) and the callee rings
    /// without early media (a 180-183 without SDP) before any answer reached the caller, the
    /// same provisional with an SDP as if the callee had answered without sending yet
    /// (`c=0.0.0.0`): the caller's offer cut to its first G.711 plus telephone-event and
    /// comfort noise, other streams refused. Anchoring it gives the caller Bridgehead's answer.
    /// Returns that provisional and whether its G.711 is PCMU.
    pub(super) fn local_ringback_answer(
        &self,
        key: CallKey,
        msg: &Message,
    ) -> Option<(Message, bool)> {
        let status = msg.status()?;
        let call = self.calls.by_key.get(&key)?;
        // Not once the callee sent an SDP (early media): the caller has its answer.
        let wanted = (180..=183).contains(&status)
            && !carries_sdp(msg)
            && call.local_answer.is_none()
            && !call.streams.is_empty()
            && call.streams.iter().all(|s| s.b.own_pts.is_empty())
            && call.early_media().local_ringback();
        if !wanted {
            return None;
        }
        let offer = self.txns.server(call.a_invite)?.request.as_ref()?;
        let (sdp, pcmu) = own_answer(&Sdp::parse(&sdp_of(offer)?).ok()?)?;
        let mut ringing = msg.clone();
        if call.early_media() == EarlyMedia::Convert180To183 {
            ringing.start = StartLine::Response {
                status: 183,
                reason: "Session Progress".to_string(),
            };
        }
        ringing.set_header(HeaderName::ContentType, "application/sdp");
        ringing.body = Bytes::from(sdp.to_bytes());
        Some((ringing, pcmu))
    }

    /// After the caller got Bridgehead's own answer (`answer`, the SDP sent, with PCMU or
    /// PCMA): keeps it, makes the relay give the caller only that G.711 (transcoding if the
    /// callee picks the other), and plays the caller ringback until the callee's media comes.
    pub(super) fn start_local_ringback(&mut self, key: CallKey, answer: Option<Bytes>, pcmu: bool) {
        if answer.is_none() {
            return;
        }
        self.keep_local_answer(key, answer, pcmu);
        let ringback = crate::script::MediaAction::PlayRingback { leg: Leg::A };
        self.play(key, &ringback);
    }

    /// After the caller got Bridgehead's own answer (`answer`, the SDP sent, with PCMU or
    /// PCMA): keeps it, and makes the relay give the caller only that G.711 (transcoding if
    /// the callee picks the other).
    pub(super) fn keep_local_answer(&mut self, key: CallKey, answer: Option<Bytes>, pcmu: bool) {
        let media_id = self.media_call_id(key);
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        let Some(answer) = answer else {
            return;
        };
        call.local_answer = Some(answer);
        for stream in &mut call.streams {
            if stream.a.accepts != (false, false) {
                stream.a.accepts = (pcmu, !pcmu);
                self.calls.media_commands.push_back(MediaCommand::Stream {
                    call: media_id,
                    stream: Box::new(*stream),
                });
            }
        }
    }

    /// The callee's answer to the caller's offer, after Bridgehead answered it itself (local
    /// ringback): the caller gets Bridgehead's answer again, as long as the callee chose a
    /// G.711 (the relay transcodes the other one).
    pub(super) fn repeat_local_answer(&self, key: CallKey, response: &mut Message) {
        let Some(call) = self.calls.by_key.get(&key) else {
            return;
        };
        let Some(answer) = &call.local_answer else {
            return;
        };
        if call.streams.iter().any(|s| s.b.accepts != (false, false)) {
            replace_sdp(response, answer.clone());
        } else {
            tracing::warn!(
                call = %call.id,
                "the callee answered without G.711: the caller gets an answer other than the one in its ringback"
            );
        }
    }

    /// Hands a rule's media action to the relay.
    pub(super) fn play(&mut self, key: CallKey, action: &crate::script::MediaAction) {
        let Some(call) = self.calls.by_key.get(&key) else {
            return;
        };
        let (leg, sound) = match action {
            crate::script::MediaAction::PlayRingback { leg } => {
                // The plan of the trunk that hears it, else the media section's.
                let trunk = call.leg(*leg).trunk;
                let profile = &call.rules.profile;
                let plan = profile.trunks[trunk]
                    .ringback
                    .or(profile.media.as_ref().map(|m| m.ringback))
                    .unwrap_or_default();
                (*leg, crate::media::player::Sound::Ringback(plan))
            }
            crate::script::MediaAction::SendDtmf { leg, digits } => (
                *leg,
                crate::media::player::Sound::Digits {
                    digits: digits.clone(),
                    duration_ms: 100,
                },
            ),
        };
        self.play_sound(key, leg, sound);
    }

    /// Asks the relay to play a sound toward one leg of a call.
    pub(super) fn play_sound(&mut self, key: CallKey, to: Leg, sound: crate::media::player::Sound) {
        self.calls.media_commands.push_back(MediaCommand::Play {
            call: self.media_call_id(key),
            to,
            sound,
        });
    }
}
