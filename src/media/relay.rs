//! The RTP/RTCP relay (tokio): one task per anchored stream, four sockets (RTP and RTCP facing
//! each leg), packets copied from one leg to the other through a fixed buffer. Symmetric RTP:
//! media goes back to where a leg's media comes from (latching), unless the profile asks for
//! strict sources. RTCP multiplexed on the RTP port (RFC 5761) on one leg and on its own port
//! on the other is sorted by payload type.

use super::player::{Player, Sound, Step};
use super::{dsp, quality, MediaCommand, PortBinder, Side, SrtpKey, Stream, Suite};
use super::{DtmfMethod, MediaCallId, MediaEvent};
use crate::config::{DtmfMode, MediaConfig};
use crate::shared::{tos, Leg};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use webrtc_srtp::context::Context;
use webrtc_srtp::option;
use webrtc_srtp::protection_profile::ProtectionProfile;

/// What the relay moved.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Packets from an address the stream does not accept (strict sources).
    pub dropped: AtomicU64,
    /// Streams that could not bind their ports.
    pub bind_failures: AtomicU64,
    /// SRTP/SRTCP packets that failed authentication or replay checks (dropped).
    pub srtp_failures: AtomicU64,
    /// Streams running now.
    pub streams: AtomicU64,
}

struct Running {
    update: watch::Sender<Stream>,
    /// Sounds to play (queued until the task runs).
    plays: mpsc::UnboundedSender<(Leg, Sound)>,
    queued: Option<mpsc::UnboundedReceiver<(Leg, Sound)>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    fn new() -> Running {
        let (update, _) = watch::channel(Stream::default());
        let (plays, queued) = mpsc::unbounded_channel();
        Running {
            update,
            plays,
            queued: Some(queued),
            task: None,
        }
    }
}

/// Where the relay reports media events: the call's relay id and the event.
pub type EventSink = Arc<dyn Fn(MediaCallId, MediaEvent) + Send + Sync>;

/// The relay of one process.
pub struct Relay {
    address: IpAddr,
    strict: bool,
    rtp_timeout: u32,
    calls: Mutex<HashMap<MediaCallId, Vec<Running>>>,
    events: EventSink,
    reserved: Reserved,
    pub stats: Arc<RelayStats>,
}

impl Relay {
    /// A relay on the profile's media address; events (DTMF digits, RTP timeouts) go to
    /// `events`.
    pub fn new(config: &MediaConfig, events: EventSink) -> Arc<Relay> {
        Arc::new(Relay {
            address: config.address,
            strict: config.strict_source,
            rtp_timeout: config.rtp_timeout,
            calls: Mutex::new(HashMap::new()),
            events,
            reserved: Arc::new(Mutex::new(HashMap::new())),
            stats: Arc::new(RelayStats::default()),
        })
    }

    /// A binder for an engine's port pool: the ports it binds are the ones this relay's
    /// streams then use.
    pub fn port_binder(&self) -> ReservingBinder {
        ReservingBinder {
            address: self.address,
            reserved: self.reserved.clone(),
        }
    }

    /// Carries out an engine command. Must run inside the tokio runtime.
    pub fn apply(&self, command: MediaCommand) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        match command {
            MediaCommand::Play { call, to, sound } => {
                let streams = calls.entry(call).or_default();
                if streams.is_empty() {
                    streams.push(Running::new());
                }
                let _ = streams[0].plays.send((to, sound));
            }
            MediaCommand::Close { call } => {
                for running in calls.remove(&call).into_iter().flatten() {
                    if let Some(task) = running.task {
                        task.abort();
                        self.stats.streams.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            MediaCommand::Stream { call, stream } => {
                let streams = calls.entry(call).or_default();
                while streams.len() <= stream.index {
                    streams.push(Running::new());
                }
                let running = &mut streams[stream.index];
                let stream = *stream;
                running.update.send_replace(stream);
                // Both legs' ports are known once the answer is anchored: start relaying.
                if running.task.is_none() && stream.a.advertised && stream.b.advertised {
                    let updates = running.update.subscribe();
                    let plays = running
                        .queued
                        .take()
                        .unwrap_or_else(|| mpsc::unbounded_channel().1);
                    let events = self.events.clone();
                    let report: Box<dyn Fn(MediaEvent) + Send + Sync> =
                        Box::new(move |event| events(call, event));
                    running.task = Some(tokio::spawn(relay_stream(
                        Settings {
                            address: self.address,
                            strict: self.strict,
                            rtp_timeout: self.rtp_timeout,
                            reserved: self.reserved.clone(),
                        },
                        updates,
                        plays,
                        self.stats.clone(),
                        report,
                    )));
                    self.stats.streams.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// What every stream task runs with.
#[derive(Clone)]
struct Settings {
    address: IpAddr,
    strict: bool,
    rtp_timeout: u32,
    reserved: Reserved,
}

/// Sockets bound for ports the engines' pools handed out, until a stream takes them.
type Reserved = Arc<Mutex<HashMap<u16, (std::net::UdpSocket, std::net::UdpSocket)>>>;

/// The engines' [`PortBinder`]: binds each port pair as the pool hands it out and keeps the
/// sockets for the relay's stream on that port.
pub struct ReservingBinder {
    address: IpAddr,
    reserved: Reserved,
}

impl PortBinder for ReservingBinder {
    fn bind(&mut self, port: u16) -> std::io::Result<()> {
        let rtp = std::net::UdpSocket::bind((self.address, port))?;
        let rtcp = std::net::UdpSocket::bind((self.address, port.wrapping_add(1)))?;
        rtp.set_nonblocking(true)?;
        rtcp.set_nonblocking(true)?;
        lock(&self.reserved).insert(port, (rtp, rtcp));
        Ok(())
    }

    fn release(&mut self, port: u16) {
        lock(&self.reserved).remove(&port);
    }
}

/// Marks what a UDP socket sends with a DSCP (IPv4 TOS or IPv6 traffic class).
pub fn mark_udp(socket: &UdpSocket, dscp: u8) -> std::io::Result<()> {
    if socket.local_addr()?.is_ipv4() {
        socket.set_tos_v4(tos(dscp))
    } else {
        socket.set_tclass_v6(tos(dscp))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sockets facing one leg, and what the relay saw of that leg.
struct LegSockets {
    leg: Leg,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    /// The source of the leg's last RTP packet (symmetric RTP).
    latched: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
    /// When the leg last sent RTP (or started to be expected to).
    last_rtp: tokio::time::Instant,
    timed_out: bool,
    /// RTP timestamp of the last DTMF event reported (its end is sent three times).
    last_digit: Option<u32>,
    /// SRTP from the leg (its key) and toward it (ours), with the keys they were made from.
    decrypt: Option<(SrtpKey, Context)>,
    encrypt: Option<(SrtpKey, Context)>,
    /// Sender reports relayed to the leg (NTP middle bits, when), to time its round trip.
    reports_sent: VecDeque<(u32, tokio::time::Instant)>,
    /// Inband DTMF: the detector, and a buffer for one decoded frame (reused).
    detector: dsp::DtmfDetector,
    pcm: Vec<i16>,
    /// What Bridgehead plays toward the leg, if anything.
    player: Option<Player>,
    /// Reused buffer for packets from the leg that must be transcoded.
    scratch: Vec<u8>,
    /// When media was last sent toward the leg (relayed, played or comfort noise).
    last_sent: tokio::time::Instant,
    /// Comfort noise toward the leg: its own RTP stream (sequence number).
    cn_seq: u16,
    /// The payload type each of the leg's payload types has toward the other leg.
    pt_map: [u8; 128],
    /// The payload types (bits) on which the leg sends RFC 4733 events.
    dtmf_pts: u128,
}

/// How often comfort noise is sent, and after how much silence it starts.
const CN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);
/// The noise level of the SID packets Bridgehead sends: -70 dBov (RFC 3389).
const CN_LEVEL: u8 = 70;

/// Sender reports remembered per leg (reports come every few seconds).
const REPORTS_KEPT: usize = 8;

/// An SRTP context for a key: replay protection when it decrypts.
fn context(key: &SrtpKey, decrypting: bool) -> Option<Context> {
    let profile = match key.suite {
        Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
    };
    let (rtp, rtcp) = if decrypting {
        (
            Some(option::srtp_replay_protection(64)),
            Some(option::srtcp_replay_protection(64)),
        )
    } else {
        (None, None)
    };
    Context::new(&key.key, &key.salt, profile, rtp, rtcp).ok()
}

/// Keeps a context matching the key (a new key, on a re-INVITE, gets a new context).
fn rekey(slot: &mut Option<(SrtpKey, Context)>, key: Option<SrtpKey>, decrypting: bool) {
    match key {
        None => *slot = None,
        Some(key) if slot.as_ref().is_some_and(|(k, _)| *k == key) => {}
        Some(key) => *slot = context(&key, decrypting).map(|c| (key, c)),
    }
}

impl LegSockets {
    /// The leg's sockets: the ones the pool bound for `port`, or freshly bound ones.
    async fn bind(
        leg: Leg,
        address: IpAddr,
        port: u16,
        reserved: &Reserved,
    ) -> std::io::Result<LegSockets> {
        let held = lock(reserved).remove(&port);
        let (rtp, rtcp) = match held {
            Some((rtp, rtcp)) => (UdpSocket::from_std(rtp)?, UdpSocket::from_std(rtcp)?),
            None => (
                UdpSocket::bind((address, port)).await?,
                // Port 0 (tests): any free ports.
                UdpSocket::bind((address, if port == 0 { 0 } else { port.wrapping_add(1) }))
                    .await?,
            ),
        };
        Ok(LegSockets {
            leg,
            rtp,
            rtcp,
            latched: None,
            latched_rtcp: None,
            last_rtp: tokio::time::Instant::now(),
            timed_out: false,
            last_digit: None,
            decrypt: None,
            encrypt: None,
            reports_sent: VecDeque::with_capacity(REPORTS_KEPT),
            detector: dsp::DtmfDetector::default(),
            pcm: Vec::with_capacity(320),
            player: None,
            scratch: Vec::with_capacity(2048),
            last_sent: tokio::time::Instant::now(),
            cn_seq: port,
            pt_map: std::array::from_fn(|pt| pt as u8),
            dtmf_pts: 0,
        })
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

    /// The leg's reception quality from the report blocks of its RTCP.
    fn quality(&self, rtcp: &quality::Rtcp) -> Option<MediaEvent> {
        let block = rtcp.blocks.first()?;
        let now = tokio::time::Instant::now();
        let rtt = self
            .reports_sent
            .iter()
            .find(|(ntp, _)| *ntp == block.last_sr)
            .and_then(|(_, sent)| {
                let held = std::time::Duration::from_micros(
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

    /// Marks what the relay sends toward the leg with its trunk's DSCP.
    fn mark(&self, dscp: u8) {
        for socket in [&self.rtp, &self.rtcp] {
            if let Err(err) = mark_udp(socket, dscp) {
                tracing::warn!("media: cannot set DSCP {dscp}: {err}");
            }
        }
    }

    /// Follows the leg's keys (ours toward it, its own).
    fn rekey(&mut self, side: &Side) {
        rekey(&mut self.decrypt, side.remote_key, true);
        rekey(&mut self.encrypt, side.local_key, false);
    }

    /// An RTP timeout of this leg, once: it should send and has not for `timeout` seconds.
    fn timeout(&mut self, side: &Side, timeout: u32) -> Option<MediaEvent> {
        let silent = self.last_rtp.elapsed() >= std::time::Duration::from_secs(u64::from(timeout));
        // A leg not known to send yet (its SDP said 0.0.0.0: a callee still ringing) cannot
        // time out.
        if timeout == 0 || !side.sends || side.remote.is_none() || self.timed_out || !silent {
            return None;
        }
        self.timed_out = true;
        Some(MediaEvent::RtpTimeout {
            leg: self.leg,
            seconds: timeout,
        })
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

async fn relay_stream(
    settings: Settings,
    mut updates: watch::Receiver<Stream>,
    mut plays: mpsc::UnboundedReceiver<(Leg, Sound)>,
    stats: Arc<RelayStats>,
    report: Box<dyn Fn(MediaEvent) + Send + Sync>,
) {
    let stream = *updates.borrow_and_update();
    let (mut a, mut b) = match (
        LegSockets::bind(Leg::A, settings.address, stream.a.local, &settings.reserved).await,
        LegSockets::bind(Leg::B, settings.address, stream.b.local, &settings.reserved).await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(err), _) | (_, Err(err)) => {
            stats.bind_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                a = stream.a.local,
                b = stream.b.local,
                "media: cannot bind the stream's ports: {err}"
            );
            return;
        }
    };
    let strict = settings.strict;
    let mut sides = (stream.a, stream.b);
    a.rekey(&sides.0);
    b.rekey(&sides.1);
    a.learn_payload_types(&sides.0, &sides.1);
    b.learn_payload_types(&sides.1, &sides.0);
    a.mark(sides.0.dscp);
    b.mark(sides.1.dscp);
    let mut from_a = [0u8; 2048];
    let mut from_b = [0u8; 2048];
    let mut rtcp_a = [0u8; 2048];
    let mut rtcp_b = [0u8; 2048];
    // Timeouts and comfort noise (a SID every 200 ms while a leg hears nothing).
    let mut tick = tokio::time::interval(CN_INTERVAL);
    let mut frames = tokio::time::interval(std::time::Duration::from_millis(20));
    let mut seed = u32::from(stream.a.local) << 16 | u32::from(stream.b.local);
    loop {
        let playing = a.player.is_some() || b.player.is_some();
        let event = tokio::select! {
            Some((to, sound)) = plays.recv() => {
                seed = seed.wrapping_mul(0x9e37_79b9).wrapping_add(1);
                let leg = match to {
                    Leg::A => &mut a,
                    Leg::B => &mut b,
                };
                // Digits wait for the ones playing; anything else replaces what plays.
                let replacing = match &mut leg.player {
                    Some(player) => player.queue(sound),
                    None => Some(sound),
                };
                if let Some(sound) = replacing {
                    leg.player = Some(Player::new(sound, seed));
                }
                None
            }
            _ = frames.tick(), if playing => {
                play(&mut a, &sides.0, &stats).await;
                play(&mut b, &sides.1, &stats).await;
                None
            }
            changed = updates.changed() => {
                if changed.is_err() {
                    return;
                }
                let stream = *updates.borrow_and_update();
                // A leg that starts sending (resumed from hold, or answered after ringing)
                // gets a fresh timeout.
                for (leg, old, new) in [(&mut a, &sides.0, &stream.a), (&mut b, &sides.1, &stream.b)] {
                    if new.sends && (!old.sends || old.remote.is_none()) {
                        leg.last_rtp = tokio::time::Instant::now();
                        leg.timed_out = false;
                    }
                    // A leg that moved (re-INVITE, UPDATE) gets media at its new address
                    // until its packets come from elsewhere again.
                    if new.remote != old.remote {
                        leg.latched = None;
                    }
                    if new.remote_rtcp != old.remote_rtcp {
                        leg.latched_rtcp = None;
                    }
                }
                // The callee answered with its address: ringback played while it rang ends,
                // whether or not its media comes.
                for (leg, old_other, new_other) in [(&mut a, &sides.1, &stream.b), (&mut b, &sides.0, &stream.a)] {
                    if old_other.remote.is_none()
                        && new_other.remote.is_some()
                        && leg.player.as_ref().is_some_and(Player::is_ringback)
                    {
                        leg.player = None;
                    }
                }
                sides = (stream.a, stream.b);
                a.rekey(&sides.0);
                b.rekey(&sides.1);
                a.learn_payload_types(&sides.0, &sides.1);
                b.learn_payload_types(&sides.1, &sides.0);
                None
            }
            _ = tick.tick() => {
                comfort_noise(&mut a, &sides.0, &stats).await;
                comfort_noise(&mut b, &sides.1, &stats).await;
                a.timeout(&sides.0, settings.rtp_timeout)
                    .or_else(|| b.timeout(&sides.1, settings.rtp_timeout))
            }
            Ok((n, source)) = a.rtp.recv_from(&mut from_a) => {
                forward(&from_a[..n], source, false, (&mut a, &sides.0), (&mut b, &sides.1), strict, &stats).await
            }
            Ok((n, source)) = b.rtp.recv_from(&mut from_b) => {
                forward(&from_b[..n], source, false, (&mut b, &sides.1), (&mut a, &sides.0), strict, &stats).await
            }
            Ok((n, source)) = a.rtcp.recv_from(&mut rtcp_a) => {
                forward(&rtcp_a[..n], source, true, (&mut a, &sides.0), (&mut b, &sides.1), strict, &stats).await
            }
            Ok((n, source)) = b.rtcp.recv_from(&mut rtcp_b) => {
                forward(&rtcp_b[..n], source, true, (&mut b, &sides.1), (&mut a, &sides.0), strict, &stats).await
            }
        };
        if let Some(event) = event {
            report(event);
        }
    }
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

/// Sends a comfort noise SID (RFC 3389) toward a leg that wants it and heard nothing for a
/// while.
async fn comfort_noise(leg: &mut LegSockets, side: &Side, stats: &RelayStats) {
    let (Some(pt), true) = (side.cn_pt, side.comfort_noise) else {
        return;
    };
    if leg.last_sent.elapsed() < CN_INTERVAL || leg.latched.or(side.remote).is_none() {
        return;
    }
    let mut packet = vec![0x80, pt];
    packet.extend_from_slice(&leg.cn_seq.to_be_bytes());
    packet.extend_from_slice(&(u32::from(leg.cn_seq) * 1600).to_be_bytes());
    packet.extend_from_slice(&(0xc0de_0000 | u32::from(side.local)).to_be_bytes());
    packet.push(CN_LEVEL);
    leg.cn_seq = leg.cn_seq.wrapping_add(1);
    send_own(leg, side, packet, stats).await;
}

/// Sends the leg the next 20 ms of what Bridgehead plays it.
async fn play(leg: &mut LegSockets, side: &Side, stats: &RelayStats) {
    let Some(player) = &mut leg.player else {
        return;
    };
    let events = if side.hears_digits_as_tones() {
        None
    } else {
        side.dtmf_pt
    };
    let packet = match player.next(side.audio_pt, events) {
        Step::Packet(packet) => packet,
        Step::Silence => return,
        Step::Done => {
            leg.player = None;
            return;
        }
    };
    send_own(leg, side, packet, stats).await;
}

/// Sends a packet Bridgehead made (a played sound, comfort noise) toward a leg: encrypted
/// when the leg is SRTP, to where its media comes from.
async fn send_own(leg: &mut LegSockets, side: &Side, packet: Vec<u8>, stats: &RelayStats) {
    let Some(destination) = leg.latched.or(side.remote) else {
        return;
    };
    let packet = match &mut leg.encrypt {
        Some((_, context)) => match context.encrypt_rtp(&packet) {
            Ok(secret) => secret.to_vec(),
            Err(_) => {
                stats.srtp_failures.fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
        None => packet,
    };
    if leg.rtp.send_to(&packet, destination).await.is_ok() {
        leg.last_sent = tokio::time::Instant::now();
        stats.packets.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends a packet that arrived from one leg on to the other.
async fn forward(
    packet: &[u8],
    source: SocketAddr,
    on_rtcp_port: bool,
    (from, from_side): (&mut LegSockets, &Side),
    (to, to_side): (&mut LegSockets, &Side),
    strict: bool,
    stats: &RelayStats,
) -> Option<MediaEvent> {
    let rtcp = on_rtcp_port || is_rtcp(packet);
    let expected = if rtcp {
        from_side.remote_rtcp
    } else {
        from_side.remote
    };
    if !accepted(strict, expected, source) {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        return None;
    }
    // SRTP from the leg is decrypted (a packet that fails authentication goes no further).
    let decrypted = match &mut from.decrypt {
        Some((key, context)) => {
            let packet = if key.mki_len > 0 {
                without_mki(packet, key, rtcp, &mut from.scratch);
                &from.scratch[..]
            } else {
                packet
            };
            let clear = if rtcp {
                context.decrypt_rtcp(packet)
            } else {
                context.decrypt_rtp(packet)
            };
            match clear {
                Ok(clear) => Some(clear),
                Err(_) => {
                    stats.srtp_failures.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
        None => None,
    };
    let packet = decrypted.as_deref().unwrap_or(packet);
    let mut event = None;
    if rtcp {
        if let Some(report) = quality::parse_rtcp(packet) {
            // The leg's report blocks say how it hears us; its SRs, relayed on, let the
            // other leg's later reports time that leg's round trip.
            event = from.quality(&report);
            let now = tokio::time::Instant::now();
            for ntp in report.sender_reports {
                if to.reports_sent.len() == REPORTS_KEPT {
                    to.reports_sent.pop_front();
                }
                to.reports_sent.push_back((ntp, now));
            }
        }
    }
    if on_rtcp_port {
        from.latched_rtcp = Some(source);
    } else if !rtcp {
        from.latched = Some(source);
        from.last_rtp = tokio::time::Instant::now();
        event = from
            .digit(packet)
            .or_else(|| from.inband_digit(packet, from_side));
    }
    if !rtcp {
        // Real media toward a leg replaces the ringback Bridgehead plays it; digits played
        // as tones replace the real audio while they last.
        if to.player.as_ref().is_some_and(Player::is_ringback) {
            to.player = None;
        }
        if to_side.hears_digits_as_tones() && to.player.as_ref().is_some_and(Player::plays_digits) {
            return event;
        }
        // Held telephone-events: Bridgehead hands the digit on itself.
        if from_side.dtmf_held && packet.get(1).is_some_and(|b| from.is_dtmf(b & 0x7f)) {
            return event;
        }
    }
    // G.711 toward a leg that takes only the other variant is transcoded; other payload
    // types get the number the other leg gave their codec. Tones toward a leg that gets the
    // digit another way (INFO, events) are muted, so it does not hear the digit twice.
    let payload_type = packet.get(1).map_or(0, |b| b & 0x7f);
    let mapped = from.pt_map[usize::from(payload_type)];
    let mute = !rtcp
        && from_side.dtmf == DtmfMode::Inband
        && to_side.gets_digits_apart()
        && from.detector.hearing();
    let transcode = transcoding(packet, rtcp, to_side);
    let rewrite = !rtcp && packet.len() >= 12 && (mapped != payload_type || mute);
    let packet = if transcode.is_some() || rewrite {
        match transcode {
            Some(to_alaw) => transcode_into(packet, to_alaw, &mut from.scratch),
            None => {
                from.scratch.clear();
                from.scratch.extend_from_slice(packet);
                from.scratch[1] = (from.scratch[1] & 0x80) | mapped;
            }
        }
        if mute {
            silence(&mut from.scratch);
        }
        &from.scratch[..]
    } else {
        packet
    };
    // Where the other leg wants it: where its media comes from, else what its SDP says.
    let muxed = to_side.remote_rtcp.is_some() && to_side.remote_rtcp == to_side.remote;
    let (use_rtcp_socket, destination) = if rtcp && !muxed {
        (true, to.latched_rtcp.or(to_side.remote_rtcp))
    } else {
        (false, to.latched.or(to_side.remote))
    };
    // Toward an SRTP leg, encrypted with the key Bridgehead gave it.
    let encrypted = match &mut to.encrypt {
        Some((_, context)) => {
            let secret = if rtcp {
                context.encrypt_rtcp(packet)
            } else {
                context.encrypt_rtp(packet)
            };
            match secret {
                Ok(secret) => Some(secret),
                Err(_) => {
                    stats.srtp_failures.fetch_add(1, Ordering::Relaxed);
                    return event;
                }
            }
        }
        None => None,
    };
    let packet = encrypted.as_deref().unwrap_or(packet);
    let socket = if use_rtcp_socket { &to.rtcp } else { &to.rtp };
    if let Some(destination) = destination {
        if socket.send_to(packet, destination).await.is_ok() {
            if !rtcp {
                to.last_sent = tokio::time::Instant::now();
            }
            stats.packets.fetch_add(1, Ordering::Relaxed);
            stats
                .bytes
                .fetch_add(packet.len() as u64, Ordering::Relaxed);
        }
    }
    event
}

#[cfg(test)]
#[path = "../../tests/common/rtp_capture.rs"]
mod rtp_capture;

#[cfg(test)]
mod tests {
    use super::rtp_capture;
    use super::*;

    /// The call the relay tests drive.
    const TEST_CALL: MediaCallId = MediaCallId { shard: 0, call: 1 };

    /// An even loopback port free for RTP and RTCP right now.
    fn free_port_pair() -> u16 {
        loop {
            let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            let port = probe.local_addr().expect("addr").port() & !1;
            drop(probe);
            let pair = (
                std::net::UdpSocket::bind(("127.0.0.1", port)),
                std::net::UdpSocket::bind(("127.0.0.1", port + 1)),
            );
            if let (Ok(_), Ok(_)) = pair {
                return port;
            }
        }
    }

    async fn heard(socket: &UdpSocket) -> bool {
        let mut buf = [0u8; 256];
        tokio::time::timeout(
            std::time::Duration::from_millis(300),
            socket.recv_from(&mut buf),
        )
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn a_leg_that_moves_gets_media_at_its_new_address() {
        let config = MediaConfig {
            address: "127.0.0.1".parse().unwrap(),
            advertise: "127.0.0.1".into(),
            ports: (20000, 20099),
            strict_source: false,
            rtp_timeout: 0,
            ringback: Default::default(),
            no_ports: Default::default(),
        };
        let relay = Relay::new(&config, Arc::new(|_, _| {}));
        let bind = || UdpSocket::bind("127.0.0.1:0");
        let (caller, callee, moved) = (bind().await, bind().await, bind().await);
        let (caller, callee, moved) = (caller.unwrap(), callee.unwrap(), moved.unwrap());
        let addr = |s: &UdpSocket| s.local_addr().ok();
        let mut stream = Stream::default();
        stream.a.local = free_port_pair();
        stream.b.local = free_port_pair();
        stream.a.advertised = true;
        stream.b.advertised = true;
        stream.a.remote = addr(&caller);
        stream.b.remote = addr(&callee);
        relay.apply(MediaCommand::Stream {
            call: TEST_CALL,
            stream: Box::new(stream),
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let packet = [0x80, 8, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 0xd5];
        let (toward_a, toward_b) = (("127.0.0.1", stream.a.local), ("127.0.0.1", stream.b.local));
        // The callee talks first: Bridgehead latches onto it.
        callee.send_to(&packet, toward_b).await.unwrap();
        assert!(heard(&caller).await);
        caller.send_to(&packet, toward_a).await.unwrap();
        assert!(heard(&callee).await);
        // A re-INVITE moves the callee: media goes to its new address at once.
        stream.b.remote = addr(&moved);
        relay.apply(MediaCommand::Stream {
            call: TEST_CALL,
            stream: Box::new(stream),
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        caller.send_to(&packet, toward_a).await.unwrap();
        assert!(heard(&moved).await, "at the new address");
        assert!(!heard(&callee).await, "not at the old one");
        relay.apply(MediaCommand::Close { call: TEST_CALL });
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

    #[tokio::test]
    async fn dtmf_ends_are_reported_once_and_silence_times_out_once() {
        let side = Side {
            sends: true,
            remote: Some("192.0.2.1:4000".parse().unwrap()),
            ..side_with_dtmf(101)
        };
        let mut leg = LegSockets::bind(
            Leg::A,
            "127.0.0.1".parse().unwrap(),
            0,
            &Reserved::default(),
        )
        .await
        .expect("bind");
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

        assert_eq!(leg.timeout(&side, 1), None, "not silent long enough");
        leg.last_rtp -= std::time::Duration::from_secs(2);
        let ringing = Side {
            remote: None,
            ..side
        };
        assert_eq!(
            leg.timeout(&ringing, 1),
            None,
            "not sending yet (c=0.0.0.0)"
        );
        assert_eq!(
            leg.timeout(&side, 1),
            Some(MediaEvent::RtpTimeout {
                leg: Leg::A,
                seconds: 1
            })
        );
        assert_eq!(leg.timeout(&side, 1), None, "once");
        let on_hold = Side {
            sends: false,
            ..side
        };
        leg.timed_out = false;
        assert_eq!(
            leg.timeout(&on_hold, 1),
            None,
            "a leg that does not send never times out"
        );
        assert_eq!(leg.timeout(&side, 0), None, "0 turns it off");
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

    #[tokio::test]
    async fn asterisk_capture_digits_are_each_reported_once_in_order_both_ways() {
        let packets = rtp_capture::udp_payloads(rtp_capture::ASTERISK_DTMF);
        assert!(packets.len() > 900, "{} packets", packets.len());
        let side = Side {
            dtmf: DtmfMode::Inband,
            ..side_with_dtmf(101)
        };
        let mut leg = LegSockets::bind(
            Leg::A,
            "127.0.0.1".parse().unwrap(),
            0,
            &Reserved::default(),
        )
        .await
        .expect("bind");
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
        let mut leg = LegSockets::bind(
            Leg::A,
            "127.0.0.1".parse().unwrap(),
            0,
            &Reserved::default(),
        )
        .await
        .expect("bind");
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
}
