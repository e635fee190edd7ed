//! The replay harness's media plane: the relay's per-stream logic ([`MediaStream`]) on the
//! virtual clock. Streams come and go with the engine's [`MediaCommand`]s exactly as the
//! socket relay ([`crate::media::relay`]) runs them; `rtp` steps feed packets from a leg's far
//! end; what the streams send is kept, as that far end hears it, for `media_out` checks.

use super::capture::read_rtp;
use super::scenario::{MediaExpect, RtpStep};
use crate::media::dsp;
use crate::media::player::Sound;
use crate::media::stream::{MediaStream, StreamSettings};
use crate::media::{MediaCallId, MediaCommand, MediaEvent, Side, SrtpKey, Stream, Suite};
use crate::shared::Leg;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

/// Samples per millisecond of 8 kHz audio (and RTP timestamp units of telephone-event).
const SAMPLES_PER_MS: u32 = 8;
/// The amplitude of each frequency of a `tone` or `dtmf` step (linear, about -15 dBm0).
const TONE_AMPLITUDE: f32 = 4000.0;
/// The most packets one `rtp` step feeds (ten minutes of 20 ms packets): no scenario can make
/// the harness run out of memory.
const MAX_STEP_PACKETS: u64 = 30_000;
/// The end of an RFC 4733 event is sent this many times.
const EVENT_END_REPEATS: usize = 3;
/// Silent frames pushed after the audio toward a leg so a digit at its very end is heard.
const FLUSH_FRAMES: usize = 3;

/// One stream of a call, as the relay holds it.
struct Slot {
    /// The newest SDP state the engine gave.
    latest: Stream,
    /// Running once both legs were told Bridgehead's ports.
    running: Option<MediaStream>,
    /// Sounds to play once it runs.
    queued: Vec<(Leg, Sound)>,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            latest: Stream::default(),
            running: None,
            queued: Vec::new(),
        }
    }
}

/// What a leg's far end sent so far: its sequence number, timestamp and SRTP context go on
/// from one `rtp` step to the next.
struct Sender {
    seq: u16,
    timestamp: u32,
    srtp: Option<(SrtpKey, Context)>,
}

/// How the far end a packet went to reads its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Payload {
    /// G.711 audio, A-law (true) or µ-law.
    G711 { alaw: bool },
    /// RFC 4733 telephone-events.
    Event,
    /// Anything else (comfort noise, other codecs).
    Other,
}

/// An RTP packet the media plane sent toward a leg, as its far end reads it (decrypted when
/// it was SRTP).
struct MediaSent {
    at: Instant,
    to: Leg,
    pt: u8,
    timestamp: u32,
    payload: Vec<u8>,
    kind: Payload,
}

/// Packets an `rtp` step feeds in, ready to go: where they come from, and each packet with
/// the virtual time that passes after it.
pub struct Feed {
    pub call: MediaCallId,
    pub leg: Leg,
    pub source: SocketAddr,
    pub packets: Vec<(Vec<u8>, Duration)>,
}

/// The media plane of one replay.
#[derive(Default)]
pub struct MediaPlane {
    /// The streams of each call, by (shard, call): the order timers fire in at one instant.
    calls: BTreeMap<(usize, u64), Vec<Slot>>,
    /// What the far end of each leg (by its index) sent so far.
    senders: HashMap<(MediaCallId, usize), Sender>,
    /// The far ends' SRTP contexts for what Bridgehead sends them.
    listeners: HashMap<(MediaCallId, usize), (SrtpKey, Context)>,
    /// RTP sent during the current step.
    sent: Vec<MediaSent>,
    /// Payloads `rtp` fed in during the current step (in the clear).
    fed: Vec<Vec<u8>>,
    /// The relay's own address (the profile's `media.address`): RTP a stream sends there, to
    /// another running stream's port, reaches that stream.
    address: Option<std::net::IpAddr>,
}

/// One side of a stream: its call (shard, key), the stream's index, the leg it faces.
type StreamSide = ((usize, u64), usize, Leg);

fn key(call: MediaCallId) -> (usize, u64) {
    (call.shard, call.call)
}

fn call_id((shard, call): (usize, u64)) -> MediaCallId {
    MediaCallId { shard, call }
}

/// An SRTP context for a key (no replay checks: the harness is both ends).
fn context(key: &SrtpKey) -> Option<Context> {
    let profile = match key.suite {
        Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
    };
    Context::new(&key.key, &key.salt, profile, None, None).ok()
}

/// The side of a leg in a stream.
fn side(stream: &Stream, leg: Leg) -> &Side {
    match leg {
        Leg::A => &stream.a,
        Leg::B => &stream.b,
    }
}

/// The length of an RTP header (CSRCs and extension included), if the packet holds one.
fn header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    let mut len = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let words = packet.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    (packet.len() >= len).then_some(len)
}

/// Hand-offs between two streams in one drain at most: a loop between joined calls cannot
/// hang a replay.
const MAX_HAIRPIN_ROUNDS: usize = 16;

impl MediaPlane {
    /// The media plane of a relay on `address`.
    pub fn new(address: Option<std::net::IpAddr>) -> MediaPlane {
        MediaPlane {
            address,
            ..MediaPlane::default()
        }
    }

    /// Carries out an engine command as the relay does: a stream starts once both legs were
    /// told Bridgehead's ports, later states update it, sounds wait until it runs, and a
    /// closed call's streams go.
    pub fn apply(&mut self, command: MediaCommand, settings: StreamSettings, now: Instant) {
        match command {
            MediaCommand::Play { call, to, sound } => {
                let slots = self.calls.entry(key(call)).or_default();
                if slots.is_empty() {
                    slots.push(Slot::new());
                }
                match &mut slots[0].running {
                    Some(media) => media.play(to, sound, now),
                    None => slots[0].queued.push((to, sound)),
                }
            }
            MediaCommand::Close { call } => {
                self.calls.remove(&key(call));
                self.senders.retain(|(c, _), _| *c != call);
                self.listeners.retain(|(c, _), _| *c != call);
            }
            MediaCommand::Stream { call, stream } => {
                let slots = self.calls.entry(key(call)).or_default();
                while slots.len() <= stream.index {
                    slots.push(Slot::new());
                }
                let slot = &mut slots[stream.index];
                slot.latest = *stream;
                match &mut slot.running {
                    Some(media) => media.update(&stream, now),
                    None if stream.a.advertised && stream.b.advertised => {
                        let mut media = MediaStream::new(&stream, settings, now);
                        for (to, sound) in slot.queued.drain(..) {
                            media.play(to, sound, now);
                        }
                        slot.running = Some(media);
                    }
                    None => {}
                }
            }
        }
    }

    /// When a stream next wants [`MediaPlane::run_due`], if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.calls
            .values()
            .flatten()
            .filter_map(|slot| slot.running.as_ref()?.poll_timeout())
            .min()
    }

    /// Time reached `now`: streams whose moment came handle it. Returns the events they saw.
    pub fn run_due(&mut self, now: Instant) -> Vec<(MediaCallId, MediaEvent)> {
        for media in self
            .calls
            .values_mut()
            .flatten()
            .filter_map(|s| s.running.as_mut())
        {
            if media.poll_timeout().is_some_and(|at| at <= now) {
                media.handle_timeout(now);
            }
        }
        self.drain(now)
    }

    /// A packet from a leg's far end reaches the call's first stream. Returns the events it
    /// led to.
    pub fn handle_packet(
        &mut self,
        feed: &Feed,
        packet: &[u8],
        now: Instant,
    ) -> Vec<(MediaCallId, MediaEvent)> {
        if let Some(media) = self
            .calls
            .get_mut(&key(feed.call))
            .and_then(|slots| slots.first_mut())
            .and_then(|slot| slot.running.as_mut())
        {
            media.handle_packet(feed.leg, feed.source, false, packet, now);
        }
        self.drain(now)
    }

    /// Takes what the streams sent and saw: RTP kept as its far end reads it (SRTP it could
    /// not decrypt is not kept), RTCP left out, events handed back.
    fn drain(&mut self, now: Instant) -> Vec<(MediaCallId, MediaEvent)> {
        let mut events = Vec::new();
        for _ in 0..MAX_HAIRPIN_ROUNDS {
            let hairpins = self.drain_once(now, &mut events);
            if hairpins.is_empty() {
                break;
            }
            for (to, source, packet) in hairpins {
                if let Some(media) = self.running_at(to) {
                    media.handle_packet(to.2, source, false, &packet, now);
                }
            }
        }
        events
    }

    /// The running stream at (call, index, leg).
    fn running_at(
        &mut self,
        (call, index, _): ((usize, u64), usize, Leg),
    ) -> Option<&mut MediaStream> {
        self.calls.get_mut(&call)?.get_mut(index)?.running.as_mut()
    }

    /// One pass of [`MediaPlane::drain`]; returns the RTP a stream sent to another stream's
    /// port (two calls an attended transfer joined), to hand to that stream.
    fn drain_once(
        &mut self,
        now: Instant,
        events: &mut Vec<(MediaCallId, MediaEvent)>,
    ) -> Vec<(StreamSide, SocketAddr, Vec<u8>)> {
        let mut hairpins = Vec::new();
        let locals: Vec<(u16, StreamSide)> = self
            .calls
            .iter()
            .flat_map(|(call, slots)| {
                slots
                    .iter()
                    .enumerate()
                    .filter(|(_, slot)| slot.running.is_some())
                    .flat_map(move |(index, slot)| {
                        [Leg::A, Leg::B].into_iter().filter_map(move |leg| {
                            let local = side(&slot.latest, leg).local;
                            (local != 0).then_some((local, (*call, index, leg)))
                        })
                    })
            })
            .collect();
        let relay = self.address;
        for (&call, slots) in &mut self.calls {
            let call = call_id(call);
            for slot in slots.iter_mut() {
                let Some(media) = slot.running.as_mut() else {
                    continue;
                };
                while let Some(transmit) = media.poll_transmit() {
                    if transmit.rtcp_port {
                        continue;
                    }
                    let hairpin = locals
                        .iter()
                        .filter(|_| Some(transmit.destination.ip()) == relay)
                        .find(|(port, _)| *port == transmit.destination.port());
                    if let Some((_, to)) = hairpin {
                        let source = side(&slot.latest, transmit.to).local;
                        let source = SocketAddr::new(transmit.destination.ip(), source);
                        hairpins.push((*to, source, transmit.bytes.to_vec()));
                        continue;
                    }
                    let to = side(&slot.latest, transmit.to);
                    let clear = match to.local_key {
                        Some(key) => {
                            match decrypt(
                                &mut self.listeners,
                                (call, transmit.to.index()),
                                key,
                                transmit.bytes,
                            ) {
                                Some(clear) => clear,
                                None => continue,
                            }
                        }
                        None => transmit.bytes.to_vec(),
                    };
                    self.sent.extend(received(clear, transmit.to, to, now));
                }
                while let Some(event) = media.poll_event() {
                    events.push((call, event));
                }
            }
        }
        hairpins
    }

    /// Forgets what the previous step sent and fed: a new step starts.
    pub fn new_step(&mut self) {
        self.sent.clear();
        self.fed.clear();
    }

    /// The packets of an `rtp` step from the far end of `leg` of the call's first stream, at
    /// the address the leg's SDP gives; a capture is found relative to `dir`.
    pub fn feed(
        &mut self,
        call: MediaCallId,
        leg: Leg,
        step: &RtpStep,
        dir: &Path,
    ) -> Result<Feed, String> {
        let stream = self
            .calls
            .get(&key(call))
            .and_then(|slots| slots.first())
            .filter(|slot| slot.running.is_some())
            .map(|slot| slot.latest)
            .ok_or("the call has no media stream yet (both legs must have had Bridgehead's SDP)")?;
        let side = *side(&stream, leg);
        let source = side
            .remote
            .ok_or_else(|| format!("leg {} has no media address in its SDP", leg.name()))?;
        let interval_ms = step.interval.unwrap_or(20);
        if !(1..=1000).contains(&interval_ms) {
            return Err(format!("interval {interval_ms} ms is not 1 to 1000"));
        }
        let interval = Duration::from_millis(u64::from(interval_ms));
        if let Some(pcap) = &step.pcap {
            let packets = self.captured(step, &dir.join(pcap), interval)?;
            return Ok(Feed {
                call,
                leg,
                source,
                packets,
            });
        }
        let sender = self.senders.entry((call, leg.index())).or_insert(Sender {
            seq: 1,
            timestamp: 0,
            srtp: None,
        });
        let (frames, advance) =
            frames(step, &side, interval_ms * SAMPLES_PER_MS, sender.timestamp)?;
        if step.srtp {
            let key = side.remote_key.ok_or_else(|| {
                format!(
                    "leg {}'s SDP gave no SRTP key (a=crypto) Bridgehead took",
                    leg.name()
                )
            })?;
            if key.mki_len > 0 {
                return Err("rtp with srtp: keys with an MKI are not supported".into());
            }
            if sender.srtp.as_ref().map(|(k, _)| *k) != Some(key) {
                let context = context(&key).ok_or("the leg's SRTP key is not usable")?;
                sender.srtp = Some((key, context));
            }
        }
        let ssrc = step.ssrc.unwrap_or(match leg {
            Leg::A => 0x5eed_000a,
            Leg::B => 0x5eed_000b,
        });
        let mut packets = Vec::with_capacity(frames.len());
        for frame in frames {
            let mut packet = vec![0x80, u8::from(frame.marker) << 7 | frame.pt];
            packet.extend_from_slice(&sender.seq.to_be_bytes());
            packet.extend_from_slice(&sender.timestamp.wrapping_add(frame.offset).to_be_bytes());
            packet.extend_from_slice(&ssrc.to_be_bytes());
            packet.extend_from_slice(&frame.payload);
            self.fed.push(frame.payload);
            sender.seq = sender.seq.wrapping_add(1);
            if let (true, Some((_, context))) = (step.srtp, sender.srtp.as_mut()) {
                packet = context
                    .encrypt_rtp(&packet)
                    .map_err(|err| format!("cannot encrypt: {err}"))?
                    .to_vec();
            }
            packets.push((packet, interval));
        }
        sender.timestamp = sender.timestamp.wrapping_add(advance);
        Ok(Feed {
            call,
            leg,
            source,
            packets,
        })
    }

    /// The RTP packets one sender sent in a capture, each with the time until the next one
    /// (`interval` after the last).
    fn captured(
        &mut self,
        step: &RtpStep,
        path: &Path,
        interval: Duration,
    ) -> Result<Vec<(Vec<u8>, Duration)>, String> {
        let made_up = step.pt.is_some()
            || step.count.is_some()
            || step.tone.is_some()
            || step.dtmf.is_some()
            || step.duration.is_some()
            || step.event.is_some()
            || step.ssrc.is_some()
            || step.srtp;
        if made_up {
            return Err("rtp with pcap takes only leg, call, from and interval".into());
        }
        let captured = read_rtp(path).map_err(|err| err.to_string())?;
        let mut senders: BTreeMap<SocketAddr, usize> = BTreeMap::new();
        for packet in &captured {
            *senders.entry(packet.src).or_default() += 1;
        }
        let listed = || {
            let list: Vec<String> = senders.iter().map(|(a, n)| format!("{a} ({n})")).collect();
            format!("RTP senders in {}: {}", path.display(), list.join(", "))
        };
        let from = match &step.from {
            Some(text) => {
                let from = text
                    .parse::<SocketAddr>()
                    .map_err(|_| format!("from '{text}' is not IP:port"))?;
                if !senders.contains_key(&from) {
                    return Err(format!("no RTP from {from}; {}", listed()));
                }
                from
            }
            None => match senders.keys().next() {
                Some(only) if senders.len() == 1 => *only,
                Some(_) => return Err(format!("say which sender with from; {}", listed())),
                None => return Err(format!("no RTP in {}", path.display())),
            },
        };
        let mine: Vec<_> = captured.iter().filter(|p| p.src == from).collect();
        let mut packets = Vec::with_capacity(mine.len());
        for (index, packet) in mine.iter().enumerate() {
            let after = mine
                .get(index + 1)
                .map_or(interval, |next| next.at.saturating_sub(packet.at));
            if let Some(header) = header_len(&packet.bytes) {
                self.fed.push(packet.bytes[header..].to_vec());
            }
            packets.push((packet.bytes.to_vec(), after));
        }
        Ok(packets)
    }

    /// What the step sent, as `media_out` expectations (record mode): per leg and payload type,
    /// the packet count, the interval when it never varied (in whole milliseconds), and the
    /// digits when any were heard. None when nothing was sent.
    pub fn record(&self) -> Option<Vec<MediaExpect>> {
        let mut groups: BTreeMap<(&str, u8), Vec<&MediaSent>> = BTreeMap::new();
        for sent in &self.sent {
            groups
                .entry((sent.to.name(), sent.pt))
                .or_default()
                .push(sent);
        }
        if groups.is_empty() {
            return None;
        }
        let expectations = groups
            .into_iter()
            .map(|((to, pt), picked)| {
                let gaps: Vec<Duration> = picked
                    .windows(2)
                    .map(|pair| pair[1].at.saturating_duration_since(pair[0].at))
                    .collect();
                let interval = gaps
                    .first()
                    .filter(|first| gaps.iter().all(|gap| gap == *first))
                    .filter(|gap| gap.subsec_nanos() % 1_000_000 == 0)
                    .map(|gap| gap.as_millis() as u64);
                let digits = digits_in(&picked);
                MediaExpect {
                    to: to.to_string(),
                    pt: Some(pt),
                    packets: Some(picked.len()),
                    interval,
                    digits: (!digits.is_empty()).then_some(digits),
                    relayed: false,
                }
            })
            .collect();
        Some(expectations)
    }

    /// Checks what the step sent against `media_out` (nothing is checked without one).
    pub fn check(&self, expected: Option<&[MediaExpect]>) -> Result<(), String> {
        let Some(expected) = expected else {
            return Ok(());
        };
        let mut covered = vec![false; self.sent.len()];
        let mut report = String::new();
        for (index, exp) in expected.iter().enumerate() {
            let to = Leg::from_name(&exp.to).ok_or_else(|| {
                format!(
                    "media_out #{}: to must be a or b, not '{}'",
                    index + 1,
                    exp.to
                )
            })?;
            let mut picked = Vec::new();
            for (sent, covered) in self.sent.iter().zip(covered.iter_mut()) {
                if sent.to == to && exp.pt.is_none_or(|pt| pt == sent.pt) {
                    *covered = true;
                    picked.push(sent);
                }
            }
            let problems = self.mismatches(exp, &picked);
            if !problems.is_empty() {
                let pt = exp.pt.map_or("any payload type".to_string(), |pt| {
                    format!("payload type {pt}")
                });
                let _ = writeln!(
                    report,
                    "  media_out #{}: toward {}, {pt}:",
                    index + 1,
                    to.name()
                );
                for problem in problems {
                    let _ = writeln!(report, "    - {problem}");
                }
            }
        }
        let mut extra: BTreeMap<(&str, u8), usize> = BTreeMap::new();
        for (sent, covered) in self.sent.iter().zip(&covered) {
            if !covered {
                *extra.entry((sent.to.name(), sent.pt)).or_default() += 1;
            }
        }
        for ((leg, pt), count) in extra {
            let _ = writeln!(
                report,
                "  not expected: {count} packets of payload type {pt} toward {leg}"
            );
        }
        if report.is_empty() {
            Ok(())
        } else {
            Err(format!("what the media plane sent differs:\n{report}"))
        }
    }

    /// What is wrong with the packets one expectation picked.
    fn mismatches(&self, exp: &MediaExpect, picked: &[&MediaSent]) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(packets) = exp.packets {
            if picked.len() != packets {
                problems.push(format!("{} packets, not {packets}", picked.len()));
            }
        }
        if let Some(interval) = exp.interval {
            let wanted = Duration::from_millis(interval);
            if let Some((index, gap)) = picked
                .windows(2)
                .map(|pair| pair[1].at.saturating_duration_since(pair[0].at))
                .enumerate()
                .find(|(_, gap)| *gap != wanted)
            {
                problems.push(format!(
                    "packet #{} came {} ms after the one before, not {interval} ms",
                    index + 2,
                    gap.as_secs_f64() * 1000.0
                ));
            }
        }
        if let Some(digits) = &exp.digits {
            let heard = digits_in(picked);
            if heard != *digits {
                problems.push(format!("digits \"{heard}\", not \"{digits}\""));
            }
        }
        if exp.relayed {
            if let Some(index) = picked.iter().position(|s| !self.fed.contains(&s.payload)) {
                problems.push(format!(
                    "packet #{}'s payload is not one fed in by rtp (changed or still encrypted)",
                    index + 1
                ));
            }
        }
        problems
    }
}

/// Decrypts SRTP toward a leg as its far end would, with the key Bridgehead gave it.
fn decrypt(
    listeners: &mut HashMap<(MediaCallId, usize), (SrtpKey, Context)>,
    far_end: (MediaCallId, usize),
    key: SrtpKey,
    packet: &[u8],
) -> Option<Vec<u8>> {
    if listeners.get(&far_end).map(|(k, _)| *k) != Some(key) {
        listeners.insert(far_end, (key, context(&key)?));
    }
    let (_, context) = listeners.get_mut(&far_end)?;
    context.decrypt_rtp(packet).ok().map(|clear| clear.to_vec())
}

/// An RTP packet toward a leg, as its far end reads it; None for RTCP or what is no RTP.
fn received(packet: Vec<u8>, to: Leg, side: &Side, at: Instant) -> Option<MediaSent> {
    let header = header_len(&packet)?;
    // RTCP multiplexed on the RTP port (packet types 200 to 204).
    if (200..=204).contains(&packet[1]) {
        return None;
    }
    let pt = packet[1] & 0x7f;
    let kind = match pt {
        0 => Payload::G711 { alaw: false },
        8 => Payload::G711 { alaw: true },
        _ if side
            .own_pts
            .codec(pt)
            .is_some_and(|c| c.is_telephone_event()) =>
        {
            Payload::Event
        }
        _ => Payload::Other,
    };
    Some(MediaSent {
        at,
        to,
        pt,
        timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        payload: packet[header..].to_vec(),
        kind,
    })
}

/// The DTMF digits in packets, in order: tones in G.711 audio, RFC 4733 event ends (once per
/// event).
fn digits_in(packets: &[&MediaSent]) -> String {
    let mut detector = dsp::DtmfDetector::default();
    let mut digits = String::new();
    let mut last_event = None;
    for sent in packets {
        match sent.kind {
            Payload::G711 { alaw } => {
                let decode = if alaw {
                    dsp::alaw_to_linear
                } else {
                    dsp::ulaw_to_linear
                };
                let pcm: Vec<i16> = sent.payload.iter().map(|b| decode(*b)).collect();
                digits.extend(detector.push(&pcm).map(|(digit, _)| digit));
            }
            Payload::Event => {
                let ended = sent.payload.get(1).is_some_and(|b| b & 0x80 != 0);
                if ended && last_event != Some(sent.timestamp) {
                    last_event = Some(sent.timestamp);
                    digits.extend(sent.payload.first().and_then(|e| event_digit(*e)));
                }
            }
            Payload::Other => {}
        }
    }
    let silence = [0i16; 160];
    for _ in 0..FLUSH_FRAMES {
        digits.extend(detector.push(&silence).map(|(digit, _)| digit));
    }
    digits
}

/// The digit of an RFC 4733 event code.
fn event_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// The RFC 4733 event code of a digit.
fn event_code(digit: char) -> Option<u8> {
    (0..16).find(|e| event_digit(*e) == Some(digit.to_ascii_uppercase()))
}

/// One packet an `rtp` step sends, before its header is written.
struct Frame {
    pt: u8,
    marker: bool,
    /// Its timestamp after the sender's.
    offset: u32,
    payload: Vec<u8>,
}

/// The frames of an `rtp` step of `samples` per interval whose timestamps start at `start`,
/// and how far the sender's timestamp moves on.
fn frames(
    step: &RtpStep,
    side: &Side,
    samples: u32,
    start: u32,
) -> Result<(Vec<Frame>, u32), String> {
    let kinds = [
        step.tone.is_some(),
        step.dtmf.is_some(),
        step.event.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() > 1 {
        return Err("rtp takes at most one of tone, dtmf and event".into());
    }
    if step.count.is_some() && (step.dtmf.is_some() || step.event.is_some()) {
        return Err(
            "rtp: count is for silence and tone (dtmf and event last their duration)".into(),
        );
    }
    let frame_ms = samples / SAMPLES_PER_MS;
    if let Some(event) = &step.event {
        let pt = step
            .pt
            .or(side.dtmf_pt)
            .ok_or("the leg's SDP has no telephone-event: give pt")?;
        let mut chars = event.digit.chars();
        let code = match (chars.next().and_then(event_code), chars.next()) {
            (Some(code), None) => code,
            _ => {
                return Err(format!(
                    "event digit '{}' is not one of 0-9 * # A-D",
                    event.digit
                ))
            }
        };
        let packets = (event.duration.unwrap_or(100) / frame_ms).max(1);
        check_packets(u64::from(packets))?;
        let mut frames: Vec<Frame> = (1..=packets)
            .map(|n| {
                let duration = u16::try_from(n * samples).unwrap_or(u16::MAX).to_be_bytes();
                let end = if n == packets { 0x80 } else { 0 };
                Frame {
                    pt,
                    marker: n == 1,
                    offset: 0,
                    payload: vec![code, end | 10, duration[0], duration[1]],
                }
            })
            .collect();
        for _ in 1..EVENT_END_REPEATS {
            let payload = frames.last().map(|f| f.payload.clone()).unwrap_or_default();
            frames.push(Frame {
                pt,
                marker: false,
                offset: 0,
                payload,
            });
        }
        return Ok((frames, packets * samples));
    }
    let pt = step
        .pt
        .or(side.audio_pt)
        .ok_or("the leg's SDP has no G.711 payload type: give pt")?;
    let encode = match pt {
        0 => dsp::linear_to_ulaw,
        8 => dsp::linear_to_alaw,
        _ => return Err(format!("audio is G.711 (pt 0 or 8), not pt {pt}")),
    };
    // What sounds in each frame: frequencies, or none for silence.
    let mut sounds: Vec<Vec<f32>> = Vec::new();
    if let Some(digits) = &step.dtmf {
        let frames = (step.duration.unwrap_or(100) / frame_ms).max(1);
        check_packets(2 * u64::from(frames) * digits.chars().count() as u64)?;
        for digit in digits.chars() {
            let (row, column) = dsp::dtmf_frequencies(digit)
                .ok_or_else(|| format!("dtmf digit '{digit}' is not one of 0-9 * # A-D"))?;
            sounds.extend((0..frames).map(|_| vec![row, column]));
            sounds.extend((0..frames).map(|_| Vec::new()));
        }
    } else {
        check_packets(u64::from(step.count.unwrap_or(1)))?;
        let tone = step.tone.clone().unwrap_or_default();
        sounds.extend((0..step.count.unwrap_or(1)).map(|_| tone.clone()));
    }
    let size = samples as usize;
    let frames: Vec<Frame> = sounds
        .iter()
        .zip(0u32..)
        .map(|(frequencies, n)| {
            let offset = n * samples;
            let amplitudes = vec![TONE_AMPLITUDE; frequencies.len()];
            let at = start.wrapping_add(offset) as usize;
            let pcm = dsp::tones(frequencies, &amplitudes, size, at);
            Frame {
                pt,
                marker: false,
                offset,
                payload: pcm.into_iter().map(encode).collect(),
            }
        })
        .collect();
    let advance = samples * frames.len() as u32;
    Ok((frames, advance))
}

/// Refuses an `rtp` step that would feed more than [`MAX_STEP_PACKETS`] packets.
fn check_packets(packets: u64) -> Result<(), String> {
    if packets > MAX_STEP_PACKETS {
        return Err(format!(
            "an rtp step feeds at most {MAX_STEP_PACKETS} packets, not {packets}: split it"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leg whose SDP offers PCMA and telephone-event 101.
    fn pcma_side() -> Side {
        let sdp = crate::sdp::Sdp::parse(
            b"v=0\r\nm=audio 1 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n",
        )
        .expect("sdp");
        let pts = crate::media::PayloadTypes::of(&sdp.media()[0]);
        Side {
            audio_pt: Some(8),
            dtmf_pt: Some(101),
            own_pts: pts,
            ..Side::default()
        }
    }

    /// Frames as the far end of `side` would receive them, 20 ms apart.
    fn heard(frames: &[Frame], side: &Side) -> Vec<MediaSent> {
        let at = Instant::now();
        frames
            .iter()
            .zip(0u64..)
            .filter_map(|(frame, n)| {
                let mut packet = vec![0x80, frame.pt, 0, 0];
                packet.extend_from_slice(&frame.offset.to_be_bytes());
                packet.extend_from_slice(&[0, 0, 0, 1]);
                packet.extend_from_slice(&frame.payload);
                received(packet, Leg::B, side, at + Duration::from_millis(20 * n))
            })
            .collect()
    }

    #[test]
    fn dtmf_tones_fed_are_heard_as_their_digits() {
        let side = pcma_side();
        let step = RtpStep {
            dtmf: Some("1#9".into()),
            ..RtpStep::default()
        };
        let (frames, advance) = frames(&step, &side, 160, 0).expect("frames");
        assert_eq!(
            frames.len(),
            30,
            "5 frames of tones and 5 of silence per digit"
        );
        assert_eq!(advance, 30 * 160);
        let sent = heard(&frames, &side);
        assert_eq!(digits_in(&sent.iter().collect::<Vec<_>>()), "1#9");
    }

    #[test]
    fn an_event_lasts_its_duration_and_ends_three_times_as_one_digit() {
        let side = pcma_side();
        let step = RtpStep {
            event: Some(super::super::scenario::RtpEvent {
                digit: "*".into(),
                duration: Some(60),
            }),
            ..RtpStep::default()
        };
        let (frames, advance) = frames(&step, &side, 160, 0).expect("frames");
        let ends: Vec<bool> = frames.iter().map(|f| f.payload[1] & 0x80 != 0).collect();
        assert_eq!(ends, [false, false, true, true, true]);
        assert!(frames.iter().all(|f| f.pt == 101 && f.offset == 0));
        assert_eq!(
            frames[2].payload,
            [10, 0x80 | 10, 1, 224],
            "* for 480 samples"
        );
        assert_eq!(advance, 3 * 160);
        let sent = heard(&frames, &side);
        assert_eq!(digits_in(&sent.iter().collect::<Vec<_>>()), "*");
    }

    #[test]
    fn a_step_that_cannot_be_sent_says_why() {
        let side = pcma_side();
        let bad = |step: RtpStep| frames(&step, &side, 160, 0).err().unwrap_or_default();
        assert!(bad(RtpStep {
            pt: Some(18),
            ..RtpStep::default()
        })
        .contains("G.711"));
        assert!(bad(RtpStep {
            dtmf: Some("x".into()),
            ..RtpStep::default()
        })
        .contains("'x'"));
        assert!(bad(RtpStep {
            dtmf: Some("1".into()),
            tone: Some(vec![440.0]),
            ..RtpStep::default()
        })
        .contains("at most one"));
        assert!(bad(RtpStep {
            count: Some(u32::MAX),
            ..RtpStep::default()
        })
        .contains("at most 30000 packets"));
        assert!(bad(RtpStep {
            dtmf: Some("1".into()),
            duration: Some(u32::MAX),
            ..RtpStep::default()
        })
        .contains("at most 30000 packets"));
    }
}
