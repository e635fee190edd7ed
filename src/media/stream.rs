//! The per-packet logic of one relayed media stream, sans-IO: a [`MediaStream`] takes a packet
//! from a leg, the time, new SDP state or a sound to play, and hands back what to send where,
//! the media events it saw, and when it wants to be woken. It owns no socket and reads no
//! clock, so the socket relay ([`super::relay`]) and a test on virtual time drive the same code.
//!
//! What it does: SRTP decryption (MKI cut) and encryption, symmetric RTP (latching) or strict
//! sources, payload type renumbering, G.711 transcoding, RFC 4733 and in-band DTMF detection,
//! muting of tones toward a leg that gets digits apart, ringback and digits played by
//! [`Player`], comfort noise, RTCP quality (MOS) and RTP timeouts.

use super::player::{Player, Sound, Step};
use super::srtp::Srtp;
use super::{dsp, quality, DtmfMethod, MediaEvent, Side, SrtpKey, Stream, Suite};
use crate::config::DtmfMode;
use crate::shared::Leg;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How often comfort noise is sent, and after how much silence it starts.
const CN_INTERVAL: Duration = Duration::from_millis(200);
/// The noise level of the SID packets Bridgehead sends: -70 dBov (RFC 3389).
const CN_LEVEL: u8 = 70;
/// One frame of what Bridgehead plays (8 kHz G.711 or RFC 4733).
const FRAME_INTERVAL: Duration = Duration::from_millis(20);
/// Sender reports remembered per leg (reports come every few seconds).
const REPORTS_KEPT: usize = 8;
/// Datagram buffers kept for reuse once sent.
const SPARE_BUFFERS: usize = 8;
/// Room for any datagram the stream takes or makes.
const BUFFER_CAPACITY: usize = 2048;

/// What a stream runs with, from the profile's media settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamSettings {
    /// Packets are taken only from the address a leg's SDP names (its IP), not latched.
    pub strict_source: bool,
    /// Seconds without RTP from a sending leg before an RTP timeout is reported; 0: never.
    pub rtp_timeout: u32,
}

/// A datagram the stream wants sent.
#[derive(Debug, PartialEq, Eq)]
pub struct MediaTransmit<'a> {
    /// The leg it goes to (from Bridgehead's sockets facing that leg).
    pub to: Leg,
    /// Where it goes.
    pub destination: SocketAddr,
    /// From the RTCP socket facing the leg (else the RTP socket).
    pub rtcp_port: bool,
    /// The datagram.
    pub bytes: &'a [u8],
}

/// Packets the stream refused since the counters were last taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCounters {
    /// Packets from an address the stream does not accept (strict sources).
    pub dropped: u64,
    /// SRTP/SRTCP packets that failed authentication or replay checks, or could not be
    /// encrypted.
    pub srtp_failures: u64,
}

/// A datagram waiting to be handed out.
#[derive(Debug)]
struct Queued {
    to: Leg,
    destination: SocketAddr,
    rtcp_port: bool,
    bytes: Vec<u8>,
}

/// Keeps SRTP state matching the key (a new key, on a re-INVITE, starts afresh).
fn rekey(slot: &mut Option<(SrtpKey, Srtp)>, key: Option<SrtpKey>) {
    match key {
        None => *slot = None,
        Some(key) if slot.as_ref().is_some_and(|(k, _)| *k == key) => {}
        Some(key) => *slot = Some((key, Srtp::new(&key))),
    }
}

/// What the stream knows of one leg and keeps for it.
struct LegState {
    leg: Leg,
    /// The source of the leg's last RTP packet (symmetric RTP).
    latched: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
    /// When the leg last sent RTP (or started to be expected to).
    last_rtp: Instant,
    timed_out: bool,
    /// RTP timestamp of the last DTMF event reported (its end is sent three times).
    last_digit: Option<u32>,
    /// SRTP from the leg (its key) and toward it (ours), with the keys they were made from.
    decrypt: Option<(SrtpKey, Srtp)>,
    encrypt: Option<(SrtpKey, Srtp)>,
    /// Sender reports relayed to the leg (NTP middle bits, when), to time its round trip.
    reports_sent: VecDeque<(u32, Instant)>,
    /// Inband DTMF: the detector, and a buffer for one decoded frame (reused).
    detector: dsp::DtmfDetector,
    pcm: Vec<i16>,
    /// What Bridgehead plays toward the leg, if anything.
    player: Option<Player>,
    /// Reused buffer for packets from the leg that must be changed (MKI cut, transcoded,
    /// renumbered, muted).
    scratch: Vec<u8>,
    /// When media was last sent toward the leg (relayed, played or comfort noise).
    last_sent: Instant,
    /// Comfort noise toward the leg: its own RTP stream (sequence number).
    cn_seq: u16,
    /// The payload type each of the leg's payload types has toward the other leg.
    pt_map: [u8; 128],
    /// The payload types (bits) on which the leg sends RFC 4733 events.
    dtmf_pts: u128,
}

impl LegState {
    /// A leg Bridgehead faces on `port`, first expected to send at `now`.
    fn new(leg: Leg, port: u16, now: Instant) -> LegState {
        LegState {
            leg,
            latched: None,
            latched_rtcp: None,
            last_rtp: now,
            timed_out: false,
            last_digit: None,
            decrypt: None,
            encrypt: None,
            reports_sent: VecDeque::with_capacity(REPORTS_KEPT),
            detector: dsp::DtmfDetector::default(),
            pcm: Vec::with_capacity(320),
            player: None,
            scratch: Vec::with_capacity(BUFFER_CAPACITY),
            last_sent: now,
            cn_seq: port,
            pt_map: std::array::from_fn(|pt| pt as u8),
            dtmf_pts: 0,
        }
    }

    /// Learns the payload types of what the leg (`side`) sends and the other leg takes.
    fn learn_payload_types(&mut self, side: &Side, other: &Side) {
        self.pt_map = super::payload_type_map(side, other);
        self.dtmf_pts = (0..128u8)
            .filter(|pt| side.sent_codec(*pt).is_some_and(|c| c.is_telephone_event()))
            .fold(0, |bits, pt| bits | 1 << pt);
    }

    /// Whether the leg sends RFC 4733 events on this payload type.
    fn is_dtmf(&self, payload_type: u8) -> bool {
        payload_type < 128 && self.dtmf_pts & 1 << payload_type != 0
    }

    /// Follows the leg's keys (ours toward it, its own).
    fn rekey(&mut self, side: &Side) {
        rekey(&mut self.decrypt, side.remote_key);
        rekey(&mut self.encrypt, side.local_key);
    }

    /// The leg's reception quality from the report blocks of its RTCP.
    fn quality(&self, rtcp: &quality::Rtcp, now: Instant) -> Option<MediaEvent> {
        let block = rtcp.blocks.first()?;
        let rtt = self
            .reports_sent
            .iter()
            .find(|(ntp, _)| *ntp == block.last_sr)
            .and_then(|(_, sent)| {
                let held = Duration::from_micros(
                    u64::from(block.delay_since_last_sr) * 1_000_000 / 65_536,
                );
                now.saturating_duration_since(*sent).checked_sub(held)
            });
        let loss_percent = f64::from(block.fraction_lost) * 100.0 / 256.0;
        // Audio at 8 kHz: jitter in timestamp units / 8 = ms.
        let jitter_ms = f64::from(block.jitter) / 8.0;
        let rtt_ms = rtt.map(|d| d.as_secs_f64() * 1000.0);
        // One-way delay: half the round trip plus a jitter buffer of twice the jitter.
        let one_way = rtt_ms.unwrap_or(0.0) / 2.0 + 2.0 * jitter_ms;
        Some(MediaEvent::Quality {
            leg: self.leg,
            loss_percent,
            jitter_ms,
            rtt_ms,
            mos: quality::mos(one_way, loss_percent),
        })
    }

    /// When the leg times out if it sends nothing more: it should send, and `timeout`
    /// seconds (not 0) pass after its last RTP. Once per silence.
    fn rtp_deadline(&self, side: &Side, timeout: u32) -> Option<Instant> {
        // A leg not known to send yet (its SDP said 0.0.0.0: a callee still ringing) cannot
        // time out.
        if timeout == 0 || !side.sends || side.remote.is_none() || self.timed_out {
            return None;
        }
        Some(self.last_rtp + Duration::from_secs(u64::from(timeout)))
    }

    /// An RTP timeout of this leg, once: it should send and has not for `timeout` seconds.
    fn timeout(&mut self, side: &Side, timeout: u32, now: Instant) -> Option<MediaEvent> {
        if self.rtp_deadline(side, timeout)? > now {
            return None;
        }
        self.timed_out = true;
        Some(MediaEvent::RtpTimeout {
            leg: self.leg,
            seconds: timeout,
        })
    }

    /// When comfort noise is next due toward the leg, if it wants it and can be reached.
    fn comfort_noise_due(&self, side: &Side) -> Option<Instant> {
        if side.cn_pt.is_none() || !side.comfort_noise || self.latched.or(side.remote).is_none() {
            return None;
        }
        Some(self.last_sent + CN_INTERVAL)
    }

    /// A DTMF digit that ended in this RFC 4733 packet, reported once per event.
    fn digit(&mut self, packet: &[u8]) -> Option<MediaEvent> {
        let (payload_type, timestamp, payload) = rtp_parts(packet)?;
        if !self.is_dtmf(payload_type) || payload.len() < 4 || payload[1] & 0x80 == 0 {
            return None;
        }
        if self.last_digit == Some(timestamp) {
            return None;
        }
        self.last_digit = Some(timestamp);
        let digit = match payload[0] {
            event @ 0..=9 => char::from(b'0' + event),
            10 => '*',
            11 => '#',
            event @ 12..=15 => char::from(b'A' + event - 12),
            _ => return None,
        };
        let duration = u16::from_be_bytes([payload[2], payload[3]]);
        Some(MediaEvent::Dtmf {
            leg: self.leg,
            digit,
            // telephone-event runs at 8 kHz.
            duration_ms: u32::from(duration) / 8,
            method: DtmfMethod::Rfc4733,
        })
    }

    /// A DTMF digit heard in the audio (G.711) of this leg, when the leg's trunk sends tones.
    fn inband_digit(&mut self, packet: &[u8], side: &Side) -> Option<MediaEvent> {
        if side.dtmf != DtmfMode::Inband {
            return None;
        }
        let (payload_type, _, payload) = rtp_parts(packet)?;
        let decode = match payload_type {
            0 => dsp::ulaw_to_linear,
            8 => dsp::alaw_to_linear,
            _ => return None,
        };
        self.pcm.clear();
        self.pcm.extend(payload.iter().map(|b| decode(*b)));
        let (digit, duration_ms) = self.detector.push(&self.pcm)?;
        Some(MediaEvent::Dtmf {
            leg: self.leg,
            digit,
            duration_ms,
            method: DtmfMethod::Inband,
        })
    }
}

/// The sans-IO state of one relayed stream (an `m=` line) between the two legs of a call.
///
/// Inputs: [`handle_packet`](Self::handle_packet), [`handle_timeout`](Self::handle_timeout),
/// [`update`](Self::update) and [`play`](Self::play). After any of them the driver drains
/// [`poll_transmit`](Self::poll_transmit) and [`poll_event`](Self::poll_event), and sleeps until
/// [`poll_timeout`](Self::poll_timeout).
pub struct MediaStream {
    settings: StreamSettings,
    /// The SDP state of each leg, A then B.
    sides: [Side; 2],
    /// What the stream keeps of each leg, A then B.
    legs: [LegState; 2],
    /// When the next 20 ms frame of what Bridgehead plays is due (while anything plays).
    next_frame: Option<Instant>,
    /// Varies what each player's RTP stream starts with (SSRC, sequence, timestamp).
    seed: u32,
    /// Datagrams to hand out, oldest first.
    transmits: VecDeque<Queued>,
    /// The datagram `poll_transmit` handed out last (its buffer is reused after).
    handed_out: Option<Queued>,
    /// Buffers of datagrams handed out, for the next ones.
    spare: Vec<Vec<u8>>,
    /// Reused buffer for SRTP packets decrypted.
    clear: Vec<u8>,
    events: VecDeque<MediaEvent>,
    counters: StreamCounters,
}

impl MediaStream {
    /// A stream starting at `now` with the legs of `stream`.
    pub fn new(stream: &Stream, settings: StreamSettings, now: Instant) -> MediaStream {
        let mut legs = [
            LegState::new(Leg::A, stream.a.local, now),
            LegState::new(Leg::B, stream.b.local, now),
        ];
        let sides = [stream.a, stream.b];
        for (i, leg) in legs.iter_mut().enumerate() {
            leg.rekey(&sides[i]);
            leg.learn_payload_types(&sides[i], &sides[1 - i]);
        }
        MediaStream {
            settings,
            sides,
            legs,
            next_frame: None,
            seed: u32::from(stream.a.local) << 16 | u32::from(stream.b.local),
            transmits: VecDeque::new(),
            handed_out: None,
            spare: Vec::new(),
            clear: Vec::with_capacity(BUFFER_CAPACITY),
            events: VecDeque::new(),
            counters: StreamCounters::default(),
        }
    }

    /// New SDP state (a re-INVITE, an answer, new keys).
    pub fn update(&mut self, stream: &Stream, now: Instant) {
        let new = [stream.a, stream.b];
        for i in 0..2 {
            let (old, new, leg) = (&self.sides[i], &new[i], &mut self.legs[i]);
            // A leg that starts sending (resumed from hold, or answered after ringing) gets a
            // fresh timeout.
            if new.sends && (!old.sends || old.remote.is_none()) {
                leg.last_rtp = now;
                leg.timed_out = false;
            }
            // A leg that moved (re-INVITE, UPDATE) gets media at its new address until its
            // packets come from elsewhere again.
            if new.remote != old.remote {
                leg.latched = None;
            }
            if new.remote_rtcp != old.remote_rtcp {
                leg.latched_rtcp = None;
            }
        }
        // The callee answered with its address: ringback played while it rang ends, whether
        // or not its media comes.
        for i in 0..2 {
            let (old_other, new_other) = (&self.sides[1 - i], &new[1 - i]);
            let leg = &mut self.legs[i];
            if old_other.remote.is_none()
                && new_other.remote.is_some()
                && leg.player.as_ref().is_some_and(Player::is_ringback)
            {
                leg.player = None;
            }
        }
        self.sides = new;
        for (i, leg) in self.legs.iter_mut().enumerate() {
            leg.rekey(&self.sides[i]);
            leg.learn_payload_types(&self.sides[i], &self.sides[1 - i]);
        }
    }

    /// Plays a sound toward a leg from `now` on, 20 ms at a time: digits wait for the digits
    /// playing; anything else replaces what plays.
    pub fn play(&mut self, to: Leg, sound: Sound, now: Instant) {
        if sound == Sound::EndRingback {
            let leg = &mut self.legs[to.index()];
            if leg.player.as_ref().is_some_and(Player::is_ringback) {
                leg.player = None;
            }
            return;
        }
        let was_playing = self.playing();
        self.seed = self.seed.wrapping_mul(0x9e37_79b9).wrapping_add(1);
        let leg = &mut self.legs[to.index()];
        let replacing = match &mut leg.player {
            Some(player) => player.queue(sound),
            None => Some(sound),
        };
        if let Some(sound) = replacing {
            leg.player = Some(Player::new(sound, self.seed));
        }
        if !was_playing {
            self.next_frame = Some(now);
        }
    }

    /// A datagram that arrived from a leg's `source` on the RTP port facing it (RTCP may be
    /// multiplexed there) or, with `on_rtcp_port`, on its RTCP port.
    pub fn handle_packet(
        &mut self,
        from: Leg,
        source: SocketAddr,
        on_rtcp_port: bool,
        packet: &[u8],
        now: Instant,
    ) {
        let rtcp = on_rtcp_port || is_rtcp(packet);
        let from_side = self.sides[from.index()];
        let to_side = self.sides[from.other().index()];
        let expected = if rtcp {
            from_side.remote_rtcp
        } else {
            from_side.remote
        };
        let stranger = from_side.pinned && expected.is_some_and(|e| e != source);
        if stranger || !accepted(self.settings.strict_source, expected, source) {
            self.counters.dropped += 1;
            return;
        }
        let [a, b] = &mut self.legs;
        let (from_leg, to_leg) = match from {
            Leg::A => (a, b),
            Leg::B => (b, a),
        };
        // SRTP from the leg is decrypted, in a buffer kept for it (a packet that fails
        // authentication goes no further).
        let decrypted = match &mut from_leg.decrypt {
            Some((key, srtp)) => {
                let clear = &mut self.clear;
                if key.mki_len > 0 {
                    without_mki(packet, key, rtcp, clear);
                } else {
                    clear.clear();
                    clear.extend_from_slice(packet);
                }
                let checked = if rtcp {
                    srtp.unprotect_rtcp(clear)
                } else {
                    srtp.unprotect_rtp(clear)
                };
                if checked.is_err() {
                    self.counters.srtp_failures += 1;
                    return;
                }
                true
            }
            None => false,
        };
        let packet = if decrypted { &self.clear[..] } else { packet };
        if rtcp {
            if let Some(report) = quality::parse_rtcp(packet) {
                // The leg's report blocks say how it hears us; its SRs, relayed on, let the
                // other leg's later reports time that leg's round trip.
                self.events.extend(from_leg.quality(&report, now));
                for ntp in report.sender_reports {
                    if to_leg.reports_sent.len() == REPORTS_KEPT {
                        to_leg.reports_sent.pop_front();
                    }
                    to_leg.reports_sent.push_back((ntp, now));
                }
            }
        }
        if on_rtcp_port {
            if !from_side.pinned {
                from_leg.latched_rtcp = Some(source);
            }
        } else if !rtcp {
            if !from_side.pinned {
                from_leg.latched = Some(source);
            }
            from_leg.last_rtp = now;
            let digit = from_leg
                .digit(packet)
                .or_else(|| from_leg.inband_digit(packet, &from_side));
            self.events.extend(digit);
        }
        if !rtcp {
            // Real media toward a leg replaces the ringback Bridgehead plays it; digits played
            // as tones replace the real audio while they last.
            if to_leg.player.as_ref().is_some_and(Player::is_ringback) {
                to_leg.player = None;
            }
            if to_side.hears_digits_as_tones()
                && to_leg.player.as_ref().is_some_and(Player::plays_digits)
            {
                return;
            }
            // Held telephone-events: Bridgehead hands the digit on itself.
            if from_side.dtmf_held && packet.get(1).is_some_and(|b| from_leg.is_dtmf(b & 0x7f)) {
                return;
            }
        }
        // G.711 toward a leg that takes only the other variant is transcoded; other payload
        // types get the number the other leg gave their codec. Tones toward a leg that gets
        // the digit another way (INFO, events) are muted, so it does not hear the digit twice.
        let payload_type = packet.get(1).map_or(0, |b| b & 0x7f);
        let mapped = from_leg.pt_map[usize::from(payload_type)];
        let mute = !rtcp
            && from_side.dtmf == DtmfMode::Inband
            && to_side.gets_digits_apart()
            && from_leg.detector.hearing();
        let transcode = transcoding(packet, rtcp, &to_side);
        let rewrite = !rtcp && packet.len() >= 12 && (mapped != payload_type || mute);
        let packet = if transcode.is_some() || rewrite {
            match transcode {
                Some(to_alaw) => transcode_into(packet, to_alaw, &mut from_leg.scratch),
                None => {
                    from_leg.scratch.clear();
                    from_leg.scratch.extend_from_slice(packet);
                    from_leg.scratch[1] = (from_leg.scratch[1] & 0x80) | mapped;
                }
            }
            if mute {
                silence(&mut from_leg.scratch);
            }
            &from_leg.scratch[..]
        } else {
            packet
        };
        // Where the other leg wants it: where its media comes from, else what its SDP says.
        let muxed = to_side.remote_rtcp.is_some() && to_side.remote_rtcp == to_side.remote;
        let (rtcp_port, destination) = if rtcp && !muxed {
            (true, to_leg.latched_rtcp.or(to_side.remote_rtcp))
        } else {
            (false, to_leg.latched.or(to_side.remote))
        };
        if let Some(destination) = destination {
            let mut bytes = spare_buffer(&mut self.spare);
            bytes.extend_from_slice(packet);
            // Toward an SRTP leg, encrypted in place with the key Bridgehead gave it.
            if let Some((_, srtp)) = &mut to_leg.encrypt {
                let protected = if rtcp {
                    srtp.protect_rtcp(&mut bytes)
                } else {
                    srtp.protect_rtp(&mut bytes)
                };
                if protected.is_err() {
                    self.counters.srtp_failures += 1;
                    self.spare.push(bytes);
                    return;
                }
            }
            if !rtcp {
                to_leg.last_sent = now;
            }
            self.transmits.push_back(Queued {
                to: from.other(),
                destination,
                rtcp_port,
                bytes,
            });
        }
    }

    /// Time passed to `now`: frames of what plays, comfort noise, RTP timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(due) = self.next_frame.filter(|due| *due <= now) {
            if !self.playing() {
                self.next_frame = None;
                break;
            }
            self.play_frame(Leg::A, now);
            self.play_frame(Leg::B, now);
            self.next_frame = Some(due + FRAME_INTERVAL);
        }
        for leg in [Leg::A, Leg::B] {
            self.comfort_noise(leg, now);
        }
        for (leg, side) in self.legs.iter_mut().zip(&self.sides) {
            self.events
                .extend(leg.timeout(side, self.settings.rtp_timeout, now));
        }
    }

    /// The next datagram to send, if any. Its buffer is the stream's again at the next call.
    pub fn poll_transmit(&mut self) -> Option<MediaTransmit<'_>> {
        if let Some(sent) = self.handed_out.take() {
            if self.spare.len() < SPARE_BUFFERS {
                self.spare.push(sent.bytes);
            }
        }
        let next = self.handed_out.insert(self.transmits.pop_front()?);
        Some(MediaTransmit {
            to: next.to,
            destination: next.destination,
            rtcp_port: next.rtcp_port,
            bytes: &next.bytes,
        })
    }

    /// The next media event (DTMF digit, RTP timeout, quality report), if any.
    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let frame = self.next_frame.filter(|_| self.playing());
        self.legs
            .iter()
            .zip(&self.sides)
            .flat_map(|(leg, side)| {
                [
                    leg.rtp_deadline(side, self.settings.rtp_timeout),
                    leg.comfort_noise_due(side),
                ]
            })
            .chain([frame])
            .flatten()
            .min()
    }

    /// What the stream refused since the last call (then counts from zero again).
    pub fn take_counters(&mut self) -> StreamCounters {
        std::mem::take(&mut self.counters)
    }

    /// Whether Bridgehead plays anything toward either leg.
    fn playing(&self) -> bool {
        self.legs.iter().any(|leg| leg.player.is_some())
    }

    /// Sends a comfort noise SID (RFC 3389) toward a leg that wants it and heard nothing for
    /// a while.
    fn comfort_noise(&mut self, to: Leg, now: Instant) {
        let i = to.index();
        let side = &self.sides[i];
        let leg = &mut self.legs[i];
        let (Some(pt), Some(due)) = (side.cn_pt, leg.comfort_noise_due(side)) else {
            return;
        };
        if due > now {
            return;
        }
        let mut packet = spare_buffer(&mut self.spare);
        packet.extend_from_slice(&[0x80, pt]);
        packet.extend_from_slice(&leg.cn_seq.to_be_bytes());
        packet.extend_from_slice(&(u32::from(leg.cn_seq) * 1600).to_be_bytes());
        packet.extend_from_slice(&(0xc0de_0000 | u32::from(side.local)).to_be_bytes());
        packet.push(CN_LEVEL);
        leg.cn_seq = leg.cn_seq.wrapping_add(1);
        self.send_own(to, packet, now);
    }

    /// The next 20 ms of what Bridgehead plays toward a leg.
    fn play_frame(&mut self, to: Leg, now: Instant) {
        let i = to.index();
        let side = &self.sides[i];
        let Some(player) = &mut self.legs[i].player else {
            return;
        };
        let events = if side.hears_digits_as_tones() {
            None
        } else {
            side.dtmf_pt
        };
        match player.next(side.audio_pt, events) {
            Step::Packet(packet) => self.send_own(to, packet, now),
            Step::Silence => {}
            Step::Done => self.legs[i].player = None,
        }
    }

    /// Queues a packet Bridgehead made (a played sound, comfort noise) toward a leg: encrypted
    /// when the leg is SRTP, to where its media comes from.
    fn send_own(&mut self, to: Leg, packet: Vec<u8>, now: Instant) {
        let i = to.index();
        let leg = &mut self.legs[i];
        let Some(destination) = leg.latched.or(self.sides[i].remote) else {
            return;
        };
        // Tried now, sent or not: comfort noise waits its next turn.
        leg.last_sent = now;
        let mut bytes = packet;
        if let Some((_, srtp)) = &mut leg.encrypt {
            if srtp.protect_rtp(&mut bytes).is_err() {
                self.counters.srtp_failures += 1;
                return;
            }
        }
        self.transmits.push_back(Queued {
            to,
            destination,
            rtcp_port: false,
            bytes,
        });
    }
}

/// An empty buffer for a datagram: one of a handed-out datagram's, else a new one.
fn spare_buffer(spare: &mut Vec<Vec<u8>>) -> Vec<u8> {
    match spare.pop() {
        Some(mut buffer) => {
            buffer.clear();
            buffer
        }
        None => Vec::with_capacity(BUFFER_CAPACITY),
    }
}

/// Payload type, timestamp and payload of an RTP packet (CSRCs and extension skipped).
fn rtp_parts(packet: &[u8]) -> Option<(u8, u32, &[u8])> {
    let first = *packet.first()?;
    if first >> 6 != 2 {
        return None;
    }
    let mut header = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let words = packet.get(header + 2..header + 4)?;
        header += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    let timestamp = u32::from_be_bytes(packet.get(4..8)?.try_into().ok()?);
    Some((packet.get(1)? & 0x7f, timestamp, packet.get(header..)?))
}

/// RTCP packet types 200-204 (SR, RR, SDES, BYE, APP) and 205-207 (feedback, XR) sit where
/// RTP has marker + payload type; RTP payload types never use 72-79 with the marker set.
fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 2 && (192..=223).contains(&packet[1])
}

/// Whether a packet from `source` is accepted from a leg whose SDP named `expected`.
fn accepted(strict: bool, expected: Option<SocketAddr>, source: SocketAddr) -> bool {
    !strict || expected.is_none_or(|e| e.ip() == source.ip())
}

/// Whether an RTP packet must be transcoded toward a leg: `Some(true)` µ-law to A-law,
/// `Some(false)` A-law to µ-law.
fn transcoding(packet: &[u8], rtcp: bool, to: &Side) -> Option<bool> {
    if rtcp {
        return None;
    }
    match (packet.get(1).map(|b| b & 0x7f)?, to.accepts) {
        (0, (false, true)) => Some(true),
        (8, (true, false)) => Some(false),
        _ => None,
    }
}

/// Writes the transcoded packet into `out` (header kept, payload type changed).
fn transcode_into(packet: &[u8], to_alaw: bool, out: &mut Vec<u8>) {
    out.clear();
    let Some((_, _, payload)) = rtp_parts(packet) else {
        out.extend_from_slice(packet);
        return;
    };
    let header = packet.len() - payload.len();
    out.extend_from_slice(&packet[..header]);
    out[1] = (out[1] & 0x80) | if to_alaw { 8 } else { 0 };
    out.extend(payload.iter().map(|b| dsp::transcode(*b, to_alaw)));
}

/// Writes an SRTP or SRTCP packet without its MKI (the `mki_len` bytes before the
/// authentication tag, which the tag does not cover, RFC 3711 §3.1) into `out`.
fn without_mki(packet: &[u8], key: &SrtpKey, rtcp: bool, out: &mut Vec<u8>) {
    // SRTCP's tag is 80 bits with either suite.
    let tag = match (key.suite, rtcp) {
        (Suite::AesCm128HmacSha1_32, false) => 4,
        _ => 10,
    };
    let mki = usize::from(key.mki_len);
    out.clear();
    match packet.len().checked_sub(tag + mki) {
        Some(end) => {
            out.extend_from_slice(&packet[..end]);
            out.extend_from_slice(&packet[end + mki..]);
        }
        // Too short to hold an MKI: it will fail authentication as it is.
        None => out.extend_from_slice(packet),
    }
}

/// Replaces a G.711 packet's audio by silence.
fn silence(packet: &mut [u8]) {
    let Some((payload_type, _, payload)) = rtp_parts(packet) else {
        return;
    };
    let quiet = match payload_type {
        0 => dsp::linear_to_ulaw(0),
        8 => dsp::linear_to_alaw(0),
        _ => return,
    };
    let header = packet.len() - payload.len();
    packet[header..].fill(quiet);
}

#[cfg(test)]
#[path = "../../tests/common/rtp_capture.rs"]
mod rtp_capture;

#[cfg(test)]
mod tests {
    use super::rtp_capture;
    use super::*;
    use crate::config::TonePlan;
    use webrtc_srtp::context::Context;

    /// The far end's SRTP as webrtc-srtp does it: an implementation apart from Bridgehead's.
    fn far_end(key: &SrtpKey) -> Context {
        let profile = match key.suite {
            Suite::AesCm128HmacSha1_80 => {
                webrtc_srtp::protection_profile::ProtectionProfile::Aes128CmHmacSha1_80
            }
            Suite::AesCm128HmacSha1_32 => {
                webrtc_srtp::protection_profile::ProtectionProfile::Aes128CmHmacSha1_32
            }
        };
        Context::new(&key.key, &key.salt, profile, None, None).expect("an SRTP context")
    }

    #[test]
    fn rtcp_is_told_from_rtp_by_payload_type() {
        assert!(is_rtcp(&[0x80, 200, 0, 6]));
        assert!(is_rtcp(&[0x81, 201, 0, 7]));
        assert!(!is_rtcp(&[0x80, 8, 0, 1]));
        assert!(!is_rtcp(&[0x80, 0x80 | 101, 0, 1]));
        assert!(!is_rtcp(&[0x80]));
    }

    #[test]
    fn rtp_parts_skip_csrcs_and_extensions() {
        let mut packet = vec![
            0x82, 101, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 9, 9, 9, 9, 8, 8, 8, 8,
        ];
        packet.extend_from_slice(&[5, 0x80, 0, 160]);
        let (pt, ts, payload) = rtp_parts(&packet).expect("rtp");
        assert_eq!((pt, ts, payload), (101, 160, &[5u8, 0x80, 0, 160][..]));
        let mut with_extension = vec![
            0x90, 8, 0, 1, 0, 0, 0, 1, 1, 2, 3, 4, 0xbe, 0xde, 0, 1, 7, 7, 7, 7,
        ];
        with_extension.push(0xd5);
        assert_eq!(rtp_parts(&with_extension).map(|p| p.2), Some(&[0xd5u8][..]));
        assert_eq!(rtp_parts(&[0x80, 8, 0]), None);
        assert_eq!(rtp_parts(&[0x40, 8, 0, 1, 0, 0, 0, 1, 1, 2, 3, 4]), None);
    }

    /// A leg whose SDP offers PCMA and telephone-event on `dtmf`.
    fn side_with_dtmf(dtmf: u8) -> Side {
        let sdp = format!(
            "v=0\r\nm=audio 1 RTP/AVP 8 {dtmf}\r\na=rtpmap:{dtmf} telephone-event/8000\r\n"
        );
        let sdp = crate::sdp::Sdp::parse(sdp.as_bytes()).expect("sdp");
        let pts = super::super::PayloadTypes::of(&sdp.media()[0]);
        Side {
            dtmf_pt: Some(dtmf),
            own_pts: pts,
            given_pts: pts,
            ..Side::default()
        }
    }

    #[test]
    fn dtmf_ends_are_reported_once_and_silence_times_out_once() {
        let side = Side {
            sends: true,
            remote: Some("192.0.2.1:4000".parse().unwrap()),
            ..side_with_dtmf(101)
        };
        let start = Instant::now();
        let mut leg = LegState::new(Leg::A, 0, start);
        leg.learn_payload_types(&side, &Side::default());
        let event = |end: bool, ts: u8| {
            vec![
                0x80,
                101,
                0,
                1,
                0,
                0,
                0,
                ts,
                1,
                2,
                3,
                4,
                11,
                if end { 0x8a } else { 0x0a },
                0x03,
                0x20,
            ]
        };
        assert_eq!(leg.digit(&event(false, 1)), None, "not the end yet");
        let digit = leg.digit(&event(true, 1));
        assert_eq!(
            digit,
            Some(MediaEvent::Dtmf {
                leg: Leg::A,
                digit: '#',
                duration_ms: 100,
                method: DtmfMethod::Rfc4733,
            })
        );
        assert_eq!(leg.digit(&event(true, 1)), None, "retransmitted end");
        assert!(leg.digit(&event(true, 2)).is_some(), "the next digit");
        leg.learn_payload_types(&side_with_dtmf(96), &Side::default());
        assert_eq!(leg.digit(&event(true, 3)), None, "101 is not DTMF any more");

        assert_eq!(leg.timeout(&side, 1, start), None, "not silent long enough");
        let later = start + Duration::from_secs(2);
        let ringing = Side {
            remote: None,
            ..side
        };
        assert_eq!(
            leg.timeout(&ringing, 1, later),
            None,
            "not sending yet (c=0.0.0.0)"
        );
        assert_eq!(
            leg.timeout(&side, 1, later),
            Some(MediaEvent::RtpTimeout {
                leg: Leg::A,
                seconds: 1
            })
        );
        assert_eq!(leg.timeout(&side, 1, later), None, "once");
        let on_hold = Side {
            sends: false,
            ..side
        };
        leg.timed_out = false;
        assert_eq!(
            leg.timeout(&on_hold, 1, later),
            None,
            "a leg that does not send never times out"
        );
        assert_eq!(leg.timeout(&side, 0, later), None, "0 turns it off");
    }

    #[test]
    fn g711_is_transcoded_only_toward_a_leg_that_needs_it() {
        let pcma_only = Side {
            accepts: (false, true),
            ..Side::default()
        };
        let both = Side {
            accepts: (true, true),
            ..Side::default()
        };
        let mut packet = vec![0x80, 0x80, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4];
        packet.extend([0xff; 160]);
        assert_eq!(transcoding(&packet, false, &pcma_only), Some(true));
        assert_eq!(transcoding(&packet, false, &both), None);
        assert_eq!(transcoding(&packet, true, &pcma_only), None, "not RTCP");
        let mut out = Vec::new();
        transcode_into(&packet, true, &mut out);
        assert_eq!(out[1], 0x80 | 8, "marker kept, PCMA");
        assert_eq!(&out[2..12], &packet[2..12]);
        assert!(
            out[12..].iter().all(|b| *b == 0xd5),
            "µ-law silence is A-law silence"
        );
    }

    #[test]
    fn asterisk_capture_digits_are_each_reported_once_in_order_both_ways() {
        let packets = rtp_capture::udp_payloads(rtp_capture::ASTERISK_DTMF);
        assert!(packets.len() > 900, "{} packets", packets.len());
        let side = Side {
            dtmf: DtmfMode::Inband,
            ..side_with_dtmf(101)
        };
        let mut leg = LegState::new(Leg::A, 0, Instant::now());
        leg.learn_payload_types(&side, &Side::default());
        let digits: String = packets
            .iter()
            .filter_map(|p| leg.digit(p))
            .filter_map(|event| match event {
                MediaEvent::Dtmf { digit, .. } => Some(digit),
                _ => None,
            })
            .collect();
        assert_eq!(digits, "2013785496");
        let mut leg = LegState::new(Leg::A, 0, Instant::now());
        let inband: String = packets
            .iter()
            .filter_map(|p| leg.inband_digit(p, &side))
            .filter_map(|event| match event {
                MediaEvent::Dtmf { digit, .. } => Some(digit),
                _ => None,
            })
            .collect();
        assert_eq!(inband, "2013785496", "the same digits, heard in the audio");
    }

    #[test]
    fn the_mki_is_cut_from_before_the_tag() {
        let key = SrtpKey {
            mki_len: 2,
            ..SrtpKey::generate(
                &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3),
                1,
                Suite::AesCm128HmacSha1_32,
            )
        };
        let mut out = Vec::new();
        // RTP with the 32-bit suite: 4-byte tag.
        without_mki(&[1, 2, 3, 9, 9, 7, 7, 7, 7], &key, false, &mut out);
        assert_eq!(out, [1, 2, 3, 7, 7, 7, 7]);
        // SRTCP: always an 80-bit tag.
        let mut rtcp = vec![5u8; 4];
        rtcp.extend([9, 9]);
        rtcp.extend([6u8; 10]);
        without_mki(&rtcp, &key, true, &mut out);
        assert_eq!(out.len(), 14);
        assert!(!out.contains(&9));
        without_mki(&[1, 2], &key, false, &mut out);
        assert_eq!(out, [1, 2], "too short: left as it is");
    }

    #[test]
    fn strict_sources_accept_only_the_sdp_address() {
        let sdp: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        assert!(accepted(
            false,
            Some(sdp),
            "198.51.100.1:9".parse().unwrap()
        ));
        assert!(accepted(true, Some(sdp), "192.0.2.1:4002".parse().unwrap()));
        assert!(!accepted(
            true,
            Some(sdp),
            "198.51.100.1:4000".parse().unwrap()
        ));
        assert!(accepted(true, None, "198.51.100.1:4000".parse().unwrap()));
    }

    const CALLER: &str = "192.0.2.1:4000";
    const CALLEE: &str = "198.51.100.7:5000";

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    /// A PCMA leg reachable at `remote`, sending, on Bridgehead's port `local`.
    fn pcma_side(local: u16, remote: &str) -> Side {
        Side {
            local,
            advertised: true,
            remote: Some(addr(remote)),
            sends: true,
            audio_pt: Some(8),
            accepts: (false, true),
            ..Side::default()
        }
    }

    /// A caller and a callee talking PCMA.
    fn pcma_call() -> Stream {
        Stream {
            index: 0,
            a: pcma_side(20000, CALLER),
            b: pcma_side(20002, CALLEE),
        }
    }

    /// A PCMA packet with sequence number `seq` and a payload of `byte`s.
    fn pcma(seq: u16, byte: u8) -> Vec<u8> {
        let mut packet = vec![0x80, 8];
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        packet.extend_from_slice(&0x0bad_cafe_u32.to_be_bytes());
        packet.extend(std::iter::repeat_n(byte, 160));
        packet
    }

    /// Everything the stream wants sent now, as owned datagrams.
    fn sent(media: &mut MediaStream) -> Vec<(Leg, SocketAddr, Vec<u8>)> {
        std::iter::from_fn(|| {
            media
                .poll_transmit()
                .map(|t| (t.to, t.destination, t.bytes.to_vec()))
        })
        .collect()
    }

    fn events(media: &mut MediaStream) -> Vec<MediaEvent> {
        std::iter::from_fn(|| media.poll_event()).collect()
    }

    #[test]
    fn an_rtp_timeout_fires_at_exactly_the_virtual_second() {
        let start = Instant::now();
        let settings = StreamSettings {
            strict_source: false,
            rtp_timeout: 1,
        };
        let mut media = MediaStream::new(&pcma_call(), settings, start);
        assert_eq!(media.poll_timeout(), Some(start + Duration::from_secs(1)));
        // The callee talks at 300 ms: its silence counts from there.
        let talked = start + Duration::from_millis(300);
        media.handle_packet(Leg::B, addr(CALLEE), false, &pcma(1, 0xd5), talked);
        assert_eq!(sent(&mut media).len(), 1, "relayed to the caller");
        media.handle_timeout(start + Duration::from_millis(999));
        assert_eq!(events(&mut media), [], "a millisecond early");
        media.handle_timeout(start + Duration::from_secs(1));
        assert_eq!(
            events(&mut media),
            [MediaEvent::RtpTimeout {
                leg: Leg::A,
                seconds: 1
            }]
        );
        assert_eq!(
            media.poll_timeout(),
            Some(talked + Duration::from_secs(1)),
            "the callee's turn"
        );
        media.handle_timeout(talked + Duration::from_secs(1));
        assert_eq!(
            events(&mut media),
            [MediaEvent::RtpTimeout {
                leg: Leg::B,
                seconds: 1
            }]
        );
        assert_eq!(media.poll_timeout(), None, "each silence times out once");
        media.handle_timeout(start + Duration::from_secs(10));
        assert_eq!(events(&mut media), []);
    }

    #[test]
    fn ringback_plays_every_20_virtual_ms_until_the_callee_answers() {
        let start = Instant::now();
        let mut call = pcma_call();
        call.b.remote = None;
        let mut media = MediaStream::new(&call, StreamSettings::default(), start);
        assert_eq!(media.poll_timeout(), None, "nothing to do");
        media.play(Leg::A, Sound::Ringback(TonePlan::Itu), start);
        let mut times = Vec::new();
        let mut packets = Vec::new();
        while times.len() < 50 {
            let due = media.poll_timeout().expect("a frame due");
            media.handle_timeout(due);
            for (to, destination, packet) in sent(&mut media) {
                assert_eq!((to, destination), (Leg::A, addr(CALLER)));
                times.push(due);
                packets.push(packet);
            }
        }
        let expected: Vec<Instant> = (0..50u32).map(|n| start + FRAME_INTERVAL * n).collect();
        assert_eq!(times, expected, "one packet every 20 ms from the start");
        assert!(packets.iter().all(|p| p.len() == 172 && p[1] == 8));
        let seqs: Vec<u16> = packets
            .iter()
            .map(|p| u16::from_be_bytes([p[2], p[3]]))
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
        // The callee answers with its address: ringback ends.
        media.update(&pcma_call(), start + Duration::from_secs(1));
        assert_eq!(media.poll_timeout(), None);
        media.handle_timeout(start + Duration::from_secs(2));
        assert_eq!(sent(&mut media), []);
    }

    #[test]
    fn srtp_from_one_leg_comes_out_as_rtp_toward_the_other_and_back() {
        let mut random = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        let callers_key = SrtpKey::generate(&mut random, 1, Suite::AesCm128HmacSha1_80);
        let our_key = SrtpKey::generate(&mut random, 1, Suite::AesCm128HmacSha1_80);
        let mut call = pcma_call();
        call.a.remote_key = Some(callers_key);
        call.a.local_key = Some(our_key);
        let now = Instant::now();
        let mut media = MediaStream::new(&call, StreamSettings::default(), now);
        let mut caller_sends = far_end(&callers_key);
        let mut caller_hears = far_end(&our_key);

        let secret = caller_sends
            .encrypt_rtp(&pcma(1, 0x55))
            .expect("encrypt")
            .to_vec();
        media.handle_packet(Leg::A, addr(CALLER), false, &secret, now);
        assert_eq!(sent(&mut media), [(Leg::B, addr(CALLEE), pcma(1, 0x55))]);
        media.handle_packet(Leg::A, addr(CALLER), false, &secret, now);
        assert_eq!(sent(&mut media), [], "a replayed packet");
        assert_eq!(media.take_counters().srtp_failures, 1);

        media.handle_packet(Leg::B, addr(CALLEE), false, &pcma(9, 0x66), now);
        let toward_caller = sent(&mut media);
        assert_eq!(toward_caller.len(), 1);
        let (to, destination, secret) = &toward_caller[0];
        assert_eq!((*to, *destination), (Leg::A, addr(CALLER)));
        assert_ne!(secret, &pcma(9, 0x66), "encrypted");
        let clear = caller_hears.decrypt_rtp(secret).expect("authentic");
        assert_eq!(&clear[..], &pcma(9, 0x66)[..]);
    }

    #[test]
    fn srtp_and_srtcp_with_an_mki_come_out_plain() {
        let mut random = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(11);
        let callers_key = SrtpKey {
            mki_len: 2,
            ..SrtpKey::generate(&mut random, 1, Suite::AesCm128HmacSha1_32)
        };
        let mut call = pcma_call();
        call.a.remote_key = Some(callers_key);
        call.b.remote_rtcp = Some(addr("198.51.100.7:5001"));
        let now = Instant::now();
        let mut media = MediaStream::new(&call, StreamSettings::default(), now);
        let mut caller_sends = far_end(&callers_key);
        // The MKI sits before the tag: 4 bytes for SRTP with this suite, 10 for SRTCP.
        let with_mki = |secret: &[u8], tag: usize| {
            let mut packet = secret[..secret.len() - tag].to_vec();
            packet.extend([0, 1]);
            packet.extend_from_slice(&secret[secret.len() - tag..]);
            packet
        };
        let secret = caller_sends.encrypt_rtp(&pcma(1, 0x55)).expect("encrypt");
        media.handle_packet(Leg::A, addr(CALLER), false, &with_mki(&secret, 4), now);
        assert_eq!(sent(&mut media), [(Leg::B, addr(CALLEE), pcma(1, 0x55))]);

        let mut receiver_report = vec![0x81, 201, 0, 7, 0, 0, 0, 2, 0, 0, 0, 9];
        receiver_report.extend([0; 20]);
        let secret = caller_sends
            .encrypt_rtcp(&receiver_report)
            .expect("encrypt");
        media.handle_packet(
            Leg::A,
            addr("192.0.2.1:4001"),
            true,
            &with_mki(&secret, 10),
            now,
        );
        assert_eq!(
            sent(&mut media),
            [(Leg::B, addr("198.51.100.7:5001"), receiver_report)]
        );
        assert!(matches!(
            events(&mut media)[..],
            [MediaEvent::Quality { leg: Leg::A, .. }]
        ));
        assert_eq!(media.take_counters(), StreamCounters::default());
    }

    #[test]
    fn inband_dtmf_from_generated_tones_is_reported_once_and_muted_toward_events() {
        let mut call = pcma_call();
        call.a.dtmf = DtmfMode::Inband;
        call.b.dtmf_pt = Some(101);
        let start = Instant::now();
        let mut media = MediaStream::new(&call, StreamSettings::default(), start);
        let mut phone = Player::new(
            Sound::Digits {
                digits: "5".into(),
                duration_ms: 200,
            },
            3,
        );
        let mut frames = Vec::new();
        while let Step::Packet(packet) = phone.next(Some(8), None) {
            frames.push(packet);
        }
        // Then the caller talks on (silence).
        frames.extend((0..5).map(|n| pcma(1000 + n, 0xd5)));
        let mut heard = Vec::new();
        let mut muted = 0;
        for (n, frame) in (0u32..).zip(&frames) {
            let at = start + FRAME_INTERVAL * n;
            media.handle_packet(Leg::A, addr(CALLER), false, frame, at);
            heard.extend(events(&mut media));
            for (to, _, packet) in sent(&mut media) {
                assert_eq!(to, Leg::B);
                if packet[12..].iter().all(|b| *b == 0xd5) && frame[12..] != packet[12..] {
                    muted += 1;
                }
            }
        }
        assert_eq!(
            heard,
            [MediaEvent::Dtmf {
                leg: Leg::A,
                digit: '5',
                duration_ms: heard_duration(&heard),
                method: DtmfMethod::Inband,
            }]
        );
        assert!(
            muted >= 5,
            "the tone is muted toward the callee ({muted} frames)"
        );
    }

    #[test]
    fn comfort_noise_fills_each_200_virtual_ms_of_silence_toward_a_leg_that_wants_it() {
        let mut call = pcma_call();
        call.a.cn_pt = Some(13);
        call.a.comfort_noise = true;
        let start = Instant::now();
        let mut media = MediaStream::new(&call, StreamSettings::default(), start);
        assert_eq!(media.poll_timeout(), Some(start + CN_INTERVAL));
        media.handle_timeout(start + CN_INTERVAL - Duration::from_millis(1));
        assert_eq!(sent(&mut media), [], "not yet");
        media.handle_timeout(start + CN_INTERVAL);
        let first = sent(&mut media);
        assert_eq!(first.len(), 1);
        let (to, destination, sid) = &first[0];
        assert_eq!((*to, *destination), (Leg::A, addr(CALLER)));
        assert_eq!((sid.len(), sid[1], sid[12]), (13, 13, CN_LEVEL));
        // The callee talks at 300 ms: the caller hears it, and noise waits 200 ms from there.
        let talked = start + Duration::from_millis(300);
        media.handle_packet(Leg::B, addr(CALLEE), false, &pcma(1, 0xd5), talked);
        assert_eq!(sent(&mut media).len(), 1);
        assert_eq!(media.poll_timeout(), Some(talked + CN_INTERVAL));
        media.handle_timeout(talked + CN_INTERVAL);
        let second = sent(&mut media);
        assert_eq!(second.len(), 1);
        assert_eq!(
            u16::from_be_bytes([second[0].2[2], second[0].2[3]]),
            u16::from_be_bytes([sid[2], sid[3]]).wrapping_add(1),
            "one RTP stream of noise"
        );
    }

    #[test]
    fn media_goes_where_a_leg_talks_from_until_it_moves_and_strict_sources_drop_strangers() {
        let now = Instant::now();
        let mut media = MediaStream::new(&pcma_call(), StreamSettings::default(), now);
        // The callee talks from behind a NAT: Bridgehead latches onto that source.
        let natted = addr("203.0.113.9:31000");
        media.handle_packet(Leg::B, natted, false, &pcma(1, 0xd5), now);
        media.handle_packet(Leg::A, addr(CALLER), false, &pcma(1, 0xd5), now);
        let toward: Vec<_> = sent(&mut media).into_iter().map(|t| (t.0, t.1)).collect();
        assert_eq!(toward, [(Leg::A, addr(CALLER)), (Leg::B, natted)]);
        // A re-INVITE moves the callee: media goes to its new address at once.
        let mut moved = pcma_call();
        moved.b.remote = Some(addr("198.51.100.8:6000"));
        media.update(&moved, now);
        media.handle_packet(Leg::A, addr(CALLER), false, &pcma(2, 0xd5), now);
        assert_eq!(sent(&mut media)[0].1, addr("198.51.100.8:6000"));

        let strict = StreamSettings {
            strict_source: true,
            rtp_timeout: 0,
        };
        let mut media = MediaStream::new(&pcma_call(), strict, now);
        media.handle_packet(Leg::B, natted, false, &pcma(1, 0xd5), now);
        assert_eq!(sent(&mut media), [], "not from the callee's SDP address");
        assert_eq!(media.take_counters().dropped, 1);
        assert_eq!(media.take_counters().dropped, 0, "counted once");
        media.handle_packet(
            Leg::B,
            addr("198.51.100.7:5002"),
            false,
            &pcma(1, 0xd5),
            now,
        );
        assert_eq!(
            sent(&mut media).len(),
            1,
            "another port of the same address"
        );
    }

    #[test]
    fn a_pinned_side_takes_only_its_exact_address_and_never_latches() {
        let now = Instant::now();
        let mut call = pcma_call();
        call.b.pinned = true;
        let mut media = MediaStream::new(&call, StreamSettings::default(), now);
        // The transferor still sends to the port: dropped, and nothing latches onto it.
        media.handle_packet(
            Leg::B,
            addr("198.51.100.7:5009"),
            false,
            &pcma(1, 0xd5),
            now,
        );
        assert_eq!(sent(&mut media), []);
        assert_eq!(media.take_counters().dropped, 1);
        media.handle_packet(Leg::B, addr(CALLEE), false, &pcma(2, 0xd5), now);
        media.handle_packet(Leg::A, addr(CALLER), false, &pcma(1, 0xd5), now);
        let toward: Vec<_> = sent(&mut media).into_iter().map(|t| (t.0, t.1)).collect();
        assert_eq!(toward, [(Leg::A, addr(CALLER)), (Leg::B, addr(CALLEE))]);
    }

    #[test]
    fn rtcp_quality_times_the_round_trip_on_virtual_time() {
        let mut call = pcma_call();
        call.a.remote_rtcp = Some(addr("192.0.2.1:4001"));
        call.b.remote_rtcp = Some(addr("198.51.100.7:5001"));
        let start = Instant::now();
        let mut media = MediaStream::new(&call, StreamSettings::default(), start);
        // The callee's sender report (NTP middle bits 0x0001_8000) goes on to the caller.
        let mut sender_report = vec![0x80, 200, 0, 6, 0, 0, 0, 9, 0, 0, 0, 1, 0x80, 0, 0, 0];
        sender_report.extend([0; 12]);
        let callee_rtcp = addr("198.51.100.7:5001");
        media.handle_packet(Leg::B, callee_rtcp, true, &sender_report, start);
        assert_eq!(
            sent(&mut media),
            [(Leg::A, addr("192.0.2.1:4001"), sender_report.clone())]
        );
        assert_eq!(events(&mut media), [], "an SR without report blocks");
        // 150 ms later the caller reports on it, having held it 50 ms: 100 ms round trip.
        let mut receiver_report = vec![0x81, 201, 0, 7, 0, 0, 0, 2, 0, 0, 0, 9, 64, 0, 0, 3];
        receiver_report.extend([0, 0, 0, 50, 0, 0, 0, 80]);
        receiver_report.extend(0x0001_8000_u32.to_be_bytes());
        receiver_report.extend((65_536_u32 * 50 / 1000).to_be_bytes());
        let reported = start + Duration::from_millis(150);
        media.handle_packet(
            Leg::A,
            addr("192.0.2.1:4001"),
            true,
            &receiver_report,
            reported,
        );
        let heard = events(&mut media);
        let [MediaEvent::Quality {
            leg: Leg::A,
            loss_percent,
            jitter_ms,
            rtt_ms: Some(rtt_ms),
            mos,
        }] = heard[..]
        else {
            panic!("one quality report of the caller: {heard:?}");
        };
        assert_eq!((loss_percent, jitter_ms), (25.0, 10.0));
        assert!((rtt_ms - 100.0).abs() < 0.1, "{rtt_ms} ms");
        assert!(mos > 1.0 && mos < 4.0, "{mos}");
    }

    /// The duration of the one digit heard (what the detector measured).
    fn heard_duration(heard: &[MediaEvent]) -> u32 {
        match heard.first() {
            Some(MediaEvent::Dtmf { duration_ms, .. }) => *duration_ms,
            _ => 0,
        }
    }
}
