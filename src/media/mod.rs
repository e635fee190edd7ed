//! The media plane. The engine (sans-IO) anchors media: it allocates Bridgehead's RTP/RTCP
//! ports for each leg of a call, rewrites every SDP offer and answer it sends so that media
//! flows through those ports, and tells the relay what to connect with [`MediaCommand`]s. The
//! relay ([`relay`], tokio) owns the sockets and moves the packets.

pub mod dsp;
pub mod player;
pub mod quality;
pub mod relay;
mod sockets;
pub mod srtp;
pub mod stream;
mod uring;

use crate::config::{DtmfMode, SrtpPolicy};
use crate::sdp::{Crypto, Media, Sdp};
use crate::shared::Leg;
use base64::Engine as _;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

/// Binds a port pair (RTP, and RTCP on the next port) before the pool hands the port out, so
/// no SDP ever advertises a port nobody listens on. The runtime's binder keeps the sockets for
/// the relay; without one (the replay harness, tests) ports are only numbers.
pub trait PortBinder: Send {
    /// Binds `port` and `port + 1`.
    fn bind(&mut self, port: u16) -> std::io::Result<()>;
    /// The pool took `port` back: sockets still held for it close.
    fn release(&mut self, port: u16);
    /// `port` is among the next the pool hands out: a binder may bind it ahead of time, off
    /// the thread that will ask for it (the default does nothing).
    fn prepare(&mut self, _port: u16) {}
}

/// The RTP ports of one shard's slice of the profile's range: every port pair (even RTP port,
/// RTCP on the next) whose index modulo the number of shards is the shard's, so shards never
/// hand out the same port.
pub struct PortPool {
    free: VecDeque<u16>,
    binder: Option<Box<dyn PortBinder>>,
    /// How many of the next ports in line the binder is asked to prepare.
    ahead: usize,
}

impl std::fmt::Debug for PortPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortPool")
            .field("free", &self.free.len())
            .field("binds", &self.binder.is_some())
            .finish()
    }
}

impl PortPool {
    /// The pool of shard `shard` of `shards` in the range `first..=last`.
    pub fn new((first, last): (u16, u16), shard: usize, shards: usize) -> PortPool {
        let first = first + first % 2;
        let free = (first..last)
            .step_by(2)
            .enumerate()
            .filter(|(index, _)| index % shards.max(1) == shard)
            .map(|(_, port)| port)
            .collect();
        PortPool {
            free,
            binder: None,
            ahead: 0,
        }
    }

    /// Binds every port before handing it out, and has the `ahead` next ones in line
    /// prepared.
    pub fn set_binder(&mut self, mut binder: Box<dyn PortBinder>, ahead: usize) {
        for &port in self.free.iter().take(ahead) {
            binder.prepare(port);
        }
        self.binder = Some(binder);
        self.ahead = ahead;
    }

    /// An RTP port (its RTCP port is the next one) that is really Bridgehead's. A port another
    /// process holds is skipped (it goes to the end of the line); any other failure to bind
    /// (out of file descriptors) means no port can be had now.
    pub fn take(&mut self) -> Result<u16, AnchorError> {
        let Some(binder) = self.binder.as_mut() else {
            return self.free.pop_front().ok_or(AnchorError::NoPorts);
        };
        for _ in 0..self.free.len() {
            let Some(port) = self.free.pop_front() else {
                break;
            };
            match binder.bind(port) {
                Ok(()) => {
                    // The port that just moved into the prepared window.
                    if let Some(&next) = self.ahead.checked_sub(1).and_then(|i| self.free.get(i)) {
                        binder.prepare(next);
                    }
                    return Ok(port);
                }
                Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
                    self.free.push_back(port);
                }
                Err(err) => {
                    self.free.push_front(port);
                    return Err(AnchorError::Bind(err.to_string()));
                }
            }
        }
        Err(AnchorError::NoPorts)
    }

    /// Takes `port` out of the free ones (a call taken over from another instance holds
    /// it), bound like any port handed out; an error when it is not free in this pool.
    pub fn claim(&mut self, port: u16) -> Result<(), AnchorError> {
        let at = self
            .free
            .iter()
            .position(|p| *p == port)
            .ok_or(AnchorError::NotFree(port))?;
        if let Some(binder) = self.binder.as_mut() {
            // The relay's preparer may be binding this very port (ahead of time) right now:
            // it is then in the relay's table a moment later.
            let mut tries = 0;
            while let Err(err) = binder.bind(port) {
                tries += 1;
                if err.kind() != std::io::ErrorKind::AddrInUse || tries == 5 {
                    return Err(AnchorError::Bind(err.to_string()));
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        self.free.remove(at);
        Ok(())
    }

    /// Gives a port back (last in line: a freed port is not reused at once, so late packets of
    /// the old call do not reach a new one).
    pub fn give(&mut self, port: u16) {
        if port != 0 {
            if let Some(binder) = self.binder.as_mut() {
                binder.release(port);
            }
            self.free.push_back(port);
        }
    }

    /// Ports left.
    pub fn available(&self) -> usize {
        self.free.len()
    }
}

/// One side of a media stream: Bridgehead's port facing that leg, and where that leg's media
/// goes (from its SDP; the relay may latch onto the real source).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, Hash,
)]
pub struct Side {
    /// Bridgehead's RTP port facing the leg (RTCP on the next port); 0 until allocated.
    pub local: u16,
    /// True once an SDP told the leg about `local`: the relay starts when both legs know.
    pub advertised: bool,
    /// The leg's RTP address from its SDP.
    pub remote: Option<SocketAddr>,
    /// The leg's RTCP address (its `a=rtcp`, its RTP address with `a=rtcp-mux`, or RTP + 1).
    pub remote_rtcp: Option<SocketAddr>,
    /// The RFC 4733 telephone-event payload type the leg uses.
    pub dtmf_pt: Option<u8>,
    /// False while the leg said it will not send (recvonly, inactive, port 0): no RTP timeout.
    pub sends: bool,
    /// The SRTP key Bridgehead gave the leg: media toward it is encrypted with it.
    pub local_key: Option<SrtpKey>,
    /// The leg's SRTP key from its SDP: media from it is decrypted with it.
    pub remote_key: Option<SrtpKey>,
    /// DSCP of the media sent toward the leg (its trunk's `media_dscp`).
    pub dscp: u8,
    /// How the leg's trunk carries DTMF. `Inband`: the relay listens for tones in its audio
    /// and plays digits to it as tones.
    pub dtmf: DtmfMode,
    /// RFC 4733 events from the leg are not relayed: Bridgehead hands each digit on itself
    /// (as SIP INFO, tones, or events again after `on_media` judged it).
    pub dtmf_held: bool,
    /// The G.711 payload type the leg's SDP lists first (what generated audio toward it uses).
    pub audio_pt: Option<u8>,
    /// The G.711 variants the leg's SDP accepts (PCMU, PCMA): the relay transcodes toward a
    /// leg that takes only the other one.
    pub accepts: (bool, bool),
    /// The leg's comfort noise payload type (RFC 3389 `CN` in its SDP).
    pub cn_pt: Option<u8>,
    /// Media from the leg is taken only from the exact addresses of its SDP and never
    /// latched: the side of a joined call that faces the partner call's relay (the
    /// transferor may still send to that port).
    pub pinned: bool,
    /// The leg's trunk wants comfort noise while the other leg is silent.
    pub comfort_noise: bool,
    /// The payload types of the leg's own SDP: what it expects to receive.
    pub own_pts: PayloadTypes,
    /// The payload types of Bridgehead's SDP toward the leg: what it should send with
    /// (RFC 3264); endpoints that send with their own numbers are understood too.
    pub given_pts: PayloadTypes,
}

impl Side {
    /// Whether digits Bridgehead plays toward the leg are tones in its audio (its trunk wants
    /// tones, or it took no telephone-event) rather than RFC 4733 events.
    pub fn hears_digits_as_tones(&self) -> bool {
        self.dtmf == DtmfMode::Inband || self.dtmf_pt.is_none()
    }

    /// Whether the leg gets DTMF other than as tones in its audio: SIP INFO, or RFC 4733
    /// events Bridgehead plays.
    pub fn gets_digits_apart(&self) -> bool {
        !self.hears_digits_as_tones() || self.dtmf == DtmfMode::Info
    }

    /// The codec of a payload type the leg sends: by the numbers Bridgehead gave it, else by
    /// its own.
    pub fn sent_codec(&self, pt: u8) -> Option<CodecId> {
        self.given_pts.codec(pt).or_else(|| self.own_pts.codec(pt))
    }
}

/// A codec as RTP knows it: encoding name (case-insensitive, the first 15 bytes) and clock
/// rate.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, Hash,
)]
pub struct CodecId {
    name: [u8; 15],
    len: u8,
    clock: u32,
}

impl CodecId {
    /// The codec `name`/`clock`.
    pub fn new(name: &str, clock: u32) -> CodecId {
        let mut id = CodecId {
            clock,
            ..CodecId::default()
        };
        for (slot, byte) in id.name.iter_mut().zip(name.bytes()) {
            *slot = byte.to_ascii_lowercase();
            id.len += 1;
        }
        id
    }

    /// RFC 4733 events.
    pub fn is_telephone_event(&self) -> bool {
        &self.name[..usize::from(self.len)] == b"telephone-event"
    }
}

/// How many payload types of one m= line Bridgehead keeps track of: the ones it works with
/// (G.711, telephone-event, comfort noise) always, then the others in m= order.
const MAX_PAYLOAD_TYPES: usize = 20;

/// The payload types an SDP gave its codecs; fixed-size, so a [`Side`] stays `Copy` and a
/// lookup never allocates.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, Hash,
)]
pub struct PayloadTypes {
    entries: [(u8, CodecId); MAX_PAYLOAD_TYPES],
    len: u8,
}

impl PayloadTypes {
    /// The payload types of an m= line (numbers above 127 and unnamed ones are left out).
    pub fn of(media: &Media) -> PayloadTypes {
        let mut table = PayloadTypes::default();
        let codecs: Vec<(u8, CodecId, bool)> = media
            .codecs()
            .into_iter()
            .filter_map(|codec| {
                let pt = codec.pt.parse::<u8>().ok().filter(|pt| *pt <= 127)?;
                let known = ["PCMU", "PCMA", "telephone-event", "CN"]
                    .iter()
                    .any(|n| codec.name.eq_ignore_ascii_case(n));
                (!codec.name.is_empty()).then(|| {
                    (
                        pt,
                        CodecId::new(&codec.name, codec.clock.unwrap_or(0)),
                        known,
                    )
                })
            })
            .collect();
        let ordered = codecs
            .iter()
            .filter(|c| c.2)
            .chain(codecs.iter().filter(|c| !c.2));
        for (slot, (pt, codec, _)) in table.entries.iter_mut().zip(ordered) {
            *slot = (*pt, *codec);
            table.len += 1;
        }
        table
    }

    fn entries(&self) -> &[(u8, CodecId)] {
        &self.entries[..usize::from(self.len)]
    }

    /// The codec on payload type `pt`.
    pub fn codec(&self, pt: u8) -> Option<CodecId> {
        self.entries()
            .iter()
            .find_map(|(p, codec)| (*p == pt).then_some(*codec))
    }

    /// The payload type of `codec`.
    pub fn pt(&self, codec: CodecId) -> Option<u8> {
        self.entries()
            .iter()
            .find_map(|(pt, c)| (*c == codec).then_some(*pt))
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The payload type each payload type of `from`'s packets has toward `to`: the number `to`'s
/// own SDP gave the same codec, else unchanged (a G.711 the relay transcodes, a codec `to`
/// did not list).
pub fn payload_type_map(from: &Side, to: &Side) -> [u8; 128] {
    let mut map = [0u8; 128];
    for (pt, slot) in (0u8..).zip(map.iter_mut()) {
        *slot = from
            .sent_codec(pt)
            .and_then(|codec| to.own_pts.pt(codec))
            .unwrap_or(pt);
    }
    map
}

/// Renumbers the dynamic payload types (96-127) of an audio section toward a leg to the numbers the
/// leg's own SDP gave the same codecs, so each leg sees one numbering (RFC 3264 asks answers
/// to keep the offer's numbers; many endpoints insist). A number in use stays as it is.
fn renumber_like(media: &mut Media, own: &PayloadTypes) {
    // Video and the like can tie payload types together (RTX `apt=`): left as they are.
    if media.kind() != "audio" {
        return;
    }
    for codec in media.codecs() {
        let Ok(pt) = codec.pt.parse::<u8>() else {
            continue;
        };
        let wanted = own.pt(CodecId::new(&codec.name, codec.clock.unwrap_or(0)));
        if let Some(wanted) = wanted.filter(|w| *w != pt && (96..=127).contains(w)) {
            if (96..=127).contains(&pt) {
                media.renumber(&codec.pt, &wanted.to_string());
            }
        }
    }
}

/// An SRTP crypto suite Bridgehead terminates (SDES, RFC 4568).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, Hash)]
pub enum Suite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
}

impl Suite {
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    fn parse(name: &str) -> Option<Suite> {
        [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32]
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

/// One SDES key: its a=crypto tag, suite, master key and salt.
#[derive(Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Hash)]
pub struct SrtpKey {
    pub tag: u32,
    pub suite: Suite,
    pub key: [u8; 16],
    pub salt: [u8; 14],
    /// Bytes of Master Key Identifier the leg's packets carry before their tag (0: none).
    pub mki_len: u8,
}

impl std::fmt::Debug for SrtpKey {
    // Keys never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SrtpKey({} {})", self.tag, self.suite.name())
    }
}

impl SrtpKey {
    /// A fresh key from a cryptographically secure generator (the engine's, seeded from the
    /// operating system; the replay harness seeds it to repeat a run).
    pub fn generate(random: &mut dyn rand::RngCore, tag: u32, suite: Suite) -> SrtpKey {
        let mut material = [0u8; 30];
        random.fill_bytes(&mut material);
        SrtpKey::from_material(tag, suite, &material)
    }

    fn from_material(tag: u32, suite: Suite, material: &[u8; 30]) -> SrtpKey {
        let mut key = [0u8; 16];
        let mut salt = [0u8; 14];
        key.copy_from_slice(&material[..16]);
        salt.copy_from_slice(&material[16..]);
        SrtpKey {
            tag,
            suite,
            key,
            salt,
            mki_len: 0,
        }
    }

    /// The key of an a=crypto line, when Bridgehead supports its suite. A lifetime
    /// (`|2^31`) and an MKI (`|1:4`: value 1 in 4 bytes, which the leg's packets then carry)
    /// are accepted.
    pub fn from_crypto(crypto: &Crypto) -> Option<SrtpKey> {
        let suite = Suite::parse(&crypto.suite)?;
        let inline = crypto
            .key_params
            .split(';')
            .next()?
            .strip_prefix("inline:")?;
        let mut parts = inline.split('|');
        let encoded = parts.next()?;
        // RFC 4568 §6.1: MKI is `value:length`, the length in bytes, 1 to 128.
        let mut mki_len = 0;
        for part in parts {
            if let Some((_, length)) = part.split_once(':') {
                mki_len = length
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|l| (1..=128).contains(l))?;
            }
        }
        let material = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        let material: [u8; 30] = material.try_into().ok()?;
        Some(SrtpKey {
            mki_len,
            ..SrtpKey::from_material(crypto.tag, suite, &material)
        })
    }

    /// The value of the a=crypto line that gives this key.
    pub fn attribute(&self) -> String {
        let mut material = [0u8; 30];
        material[..16].copy_from_slice(&self.key);
        material[16..].copy_from_slice(&self.salt);
        format!(
            "{} {} inline:{}",
            self.tag,
            self.suite.name(),
            base64::engine::general_purpose::STANDARD.encode(material)
        )
    }
}

/// One media stream (an `m=` line) of a call: what the relay joins.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, Hash,
)]
pub struct Stream {
    /// The `m=` line's index in the SDP.
    pub index: usize,
    /// The caller's side.
    pub a: Side,
    /// The callee's side.
    pub b: Side,
}

/// How a DTMF digit came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DtmfMethod {
    /// An RFC 4733 telephone-event in the RTP stream.
    Rfc4733,
    /// Tones detected in the G.711 audio.
    Inband,
    /// A SIP INFO.
    Info,
}

impl DtmfMethod {
    /// "rfc4733", "inband" or "info", as rules see it.
    pub fn name(self) -> &'static str {
        match self {
            DtmfMethod::Rfc4733 => "rfc4733",
            DtmfMethod::Inband => "inband",
            DtmfMethod::Info => "info",
        }
    }
}

/// Something the media plane saw on a leg of a call: what `on_media` hears.
#[derive(Clone, Debug, PartialEq)]
pub enum MediaEvent {
    /// A DTMF digit ended (an RFC 4733 event, tones, or a SIP INFO).
    Dtmf {
        leg: Leg,
        digit: char,
        duration_ms: u32,
        method: DtmfMethod,
    },
    /// No RTP arrived on a leg for `seconds`.
    RtpTimeout { leg: Leg, seconds: u32 },
    /// A leg's reception quality, from its RTCP reports.
    Quality {
        leg: Leg,
        loss_percent: f64,
        jitter_ms: f64,
        /// Round trip between Bridgehead and the leg, when it could be timed.
        rtt_ms: Option<f64>,
        /// Estimated MOS (ITU-T G.107 E-model).
        mos: f64,
    },
}

/// A leg's reception quality from its last RTCP report (what CDRs and the per-trunk
/// histograms keep).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct LegQuality {
    pub mos: f64,
    pub loss_percent: f64,
    pub jitter_ms: f64,
}

impl MediaEvent {
    /// The leg the event is about.
    pub fn leg(&self) -> Leg {
        match self {
            MediaEvent::Dtmf { leg, .. }
            | MediaEvent::RtpTimeout { leg, .. }
            | MediaEvent::Quality { leg, .. } => *leg,
        }
    }
}

/// A call as the relay knows it: the shard that owns it and the call's key in that shard's
/// engine. Media events come back to that shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MediaCallId {
    pub shard: usize,
    pub call: u64,
}

/// What the engine asks of the media plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaCommand {
    /// Relay this stream of a call (new, or with new addresses or keys).
    Stream {
        call: MediaCallId,
        stream: Box<Stream>,
    },
    /// Play a sound toward one leg of a call (its first stream).
    Play {
        call: MediaCallId,
        to: Leg,
        sound: player::Sound,
    },
    /// The call is over: close its sockets.
    Close { call: MediaCallId },
}

/// Why an SDP could not be anchored.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnchorError {
    #[error("no media ports left in this shard's range")]
    NoPorts,
    #[error("cannot bind media ports: {0}")]
    Bind(String),
    #[error("cannot write the SDP: {0}")]
    Sdp(String),
    #[error("port {0} is not free in this shard's range")]
    NotFree(u16),
}

/// Anchors an SDP crossing to leg `to`: learns where the other leg
/// wants media (its addresses in this SDP), and points every media section at Bridgehead's
/// ports facing the receiving leg. Returns the indexes of the streams that changed.
pub fn anchor(
    sdp: &mut Sdp,
    streams: &mut Vec<Stream>,
    to: Leg,
    (srtp, dscp): (SrtpPolicy, u8),
    pool: &mut PortPool,
    random: &mut dyn rand::RngCore,
    advertise: &str,
) -> Result<Vec<usize>, AnchorError> {
    let sdp_error = |e: crate::sdp::SdpError| AnchorError::Sdp(e.to_string());
    let mut changed = Vec::new();
    for index in 0..sdp.media().len() {
        while streams.len() <= index {
            let index = streams.len();
            streams.push(Stream {
                index,
                ..Stream::default()
            });
        }
        let media = &mut sdp.media_mut()[index];
        if media.is_rejected() {
            continue;
        }
        // 0.0.0.0 (hold, or a callee not sending yet) is nowhere to send to.
        let ip = media
            .connection()
            .and_then(|c| c.address.parse::<IpAddr>().ok())
            .filter(|ip| !ip.is_unspecified());
        let remote = ip.map(|ip| SocketAddr::new(ip, media.port()));
        let remote_rtcp = match media.attribute("rtcp").flatten() {
            Some(value) => rtcp_address(value, ip),
            None if media.attribute("rtcp-mux").is_some() => remote,
            None => ip.map(|ip| SocketAddr::new(ip, media.port().saturating_add(1))),
        };
        let dtmf_pt = media
            .codecs()
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case("telephone-event"))
            .and_then(|c| c.pt.parse::<u8>().ok());
        let audio_pt = media
            .codecs()
            .iter()
            .find(|c| c.is_g711())
            .and_then(|c| c.pt.parse::<u8>().ok());
        let sends = matches!(
            media.direction(),
            crate::sdp::Direction::SendRecv | crate::sdp::Direction::SendOnly
        );
        let stream = &mut streams[index];
        let before = *stream;
        let (from, to) = match to {
            Leg::A => (&mut stream.b, &mut stream.a),
            Leg::B => (&mut stream.a, &mut stream.b),
        };
        from.remote = remote;
        from.remote_rtcp = remote_rtcp;
        from.own_pts = PayloadTypes::of(media);
        from.dtmf_pt = dtmf_pt;
        from.audio_pt = audio_pt;
        let has = |name: &str| {
            media
                .codecs()
                .iter()
                .any(|c| c.name.eq_ignore_ascii_case(name))
        };
        from.accepts = (has("PCMU"), has("PCMA"));
        from.cn_pt = media
            .codecs()
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case("CN"))
            .and_then(|c| c.pt.parse::<u8>().ok());
        // Toward a leg that takes only the other G.711: rename it (the relay transcodes).
        match (from.accepts, to.accepts) {
            ((false, true), (true, false)) => {
                media.replace_codec("PCMA", "0", "PCMU/8000");
            }
            ((true, false), (false, true)) => {
                media.replace_codec("PCMU", "8", "PCMA/8000");
            }
            _ => {}
        }
        if !to.own_pts.is_empty() {
            renumber_like(media, &to.own_pts);
        }
        to.given_pts = PayloadTypes::of(media);
        from.sends = sends;
        from.remote_key = if media.proto().contains("SAVP") {
            media.crypto().iter().find_map(SrtpKey::from_crypto)
        } else {
            None
        };
        let secure = match srtp {
            SrtpPolicy::Off => false,
            SrtpPolicy::Required => true,
            SrtpPolicy::Optional => from.remote_key.is_some() || to.remote_key.is_some(),
        };
        terminate_srtp(media, to, secure, random)?;
        to.dscp = dscp;
        if to.local == 0 {
            to.local = pool.take()?;
        }
        // The port facing the sender is taken with the first offer too: its answer then
        // needs no port, so only an offer can find the pool empty (and be refused).
        if from.local == 0 {
            from.local = pool.take()?;
        }
        to.advertised = true;
        media.set_port(to.local);
        media.set_connection(advertise).map_err(sdp_error)?;
        // Our RTCP is on the RTP port + 1, the default: no a=rtcp line needed.
        media.remove_attribute("rtcp");
        if *stream != before {
            changed.push(index);
        }
    }
    if sdp.connection().is_some() {
        sdp.set_connection(advertise).map_err(sdp_error)?;
    }
    if sdp.origin().is_some() {
        sdp.set_origin_address(advertise).map_err(sdp_error)?;
    }
    Ok(changed)
}

/// Bridgehead's own keys toward a leg: the other leg's a=crypto never crosses; toward a secure
/// leg the m= line says SAVP and carries Bridgehead's key (matching the leg's own offer when it
/// made one), toward a plain leg AVP.
fn terminate_srtp(
    media: &mut Media,
    to: &mut Side,
    secure: bool,
    random: &mut dyn rand::RngCore,
) -> Result<(), AnchorError> {
    let sdp_error = |e: crate::sdp::SdpError| AnchorError::Sdp(e.to_string());
    media.remove_attribute("crypto");
    let feedback = if media.proto().ends_with('F') {
        "F"
    } else {
        ""
    };
    if !secure {
        to.local_key = None;
        return media
            .set_proto(&format!("RTP/AVP{feedback}"))
            .map_err(sdp_error);
    }
    let wanted = to
        .remote_key
        .map_or((1, Suite::AesCm128HmacSha1_80), |k| (k.tag, k.suite));
    let key = match to.local_key {
        Some(key) if (key.tag, key.suite) == wanted => key,
        _ => SrtpKey::generate(random, wanted.0, wanted.1),
    };
    to.local_key = Some(key);
    media
        .set_proto(&format!("RTP/SAVP{feedback}"))
        .map_err(sdp_error)?;
    media
        .add_attribute("crypto", Some(&key.attribute()))
        .map_err(sdp_error)
}

/// `a=rtcp:PORT [IN IP4 ADDR]` (RFC 3605).
fn rtcp_address(value: &str, rtp_ip: Option<IpAddr>) -> Option<SocketAddr> {
    let mut words = value.split_whitespace();
    let port = words.next()?.parse::<u16>().ok()?;
    let ip = match (words.next(), words.next(), words.next()) {
        (Some(_), Some(_), Some(address)) => address.parse::<IpAddr>().ok(),
        _ => rtp_ip,
    }?;
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A seeded generator: keys repeat from run to run.
    fn test_random() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtcp:4005\r\nm=video 0 RTP/AVP 96\r\n";

    #[test]
    fn pools_split_the_range_between_shards() {
        let mut zero = PortPool::new((20000, 20011), 0, 2);
        let mut one = PortPool::new((20000, 20011), 1, 2);
        assert_eq!(zero.available() + one.available(), 6);
        let mut all: Vec<u16> = std::iter::from_fn(|| zero.take().ok())
            .chain(std::iter::from_fn(|| one.take().ok()))
            .collect();
        all.sort();
        assert_eq!(all, [20000, 20002, 20004, 20006, 20008, 20010]);
        let mut odd_start = PortPool::new((20001, 20004), 0, 1);
        assert_eq!(odd_start.take().ok(), Some(20002));
        assert_eq!(odd_start.take().ok(), None);
        odd_start.give(20002);
        assert_eq!(odd_start.take().ok(), Some(20002));
    }

    #[test]
    fn anchoring_points_each_leg_at_bridgehead() {
        let mut pool = PortPool::new((30000, 30099), 0, 1);
        let mut streams = Vec::new();
        // The caller's offer goes to the callee (leg B).
        let mut offer = Sdp::parse(OFFER.as_bytes()).expect("offer");
        let changed = anchor(
            &mut offer,
            &mut streams,
            Leg::B,
            (SrtpPolicy::Off, 46),
            &mut pool,
            &mut test_random(),
            "203.0.113.1",
        )
        .expect("anchors");
        assert_eq!(changed, [0]);
        let text = String::from_utf8(offer.to_bytes()).expect("utf8");
        assert!(text.contains("o=- 1 1 IN IP4 203.0.113.1\r\n"), "{text}");
        assert!(text.contains("m=audio 30000 RTP/AVP 8 101\r\n"), "{text}");
        assert!(
            !text.contains("192.0.2.10") && !text.contains("a=rtcp:"),
            "{text}"
        );
        assert!(
            text.contains("m=video 0 RTP/AVP 96\r\n"),
            "rejected stays rejected: {text}"
        );
        assert_eq!(
            streams[0].a.remote,
            Some("192.0.2.10:4000".parse().unwrap())
        );
        assert_eq!(
            streams[0].a.remote_rtcp,
            Some("192.0.2.10:4005".parse().unwrap())
        );
        assert_eq!(streams[0].b.local, 30000);
        assert!(streams[0].b.advertised);
        // The caller's port is taken with the offer, so its answer cannot run out of ports.
        assert_eq!(streams[0].a.local, 30002);
        assert!(!streams[0].a.advertised);

        // The callee's answer goes to the caller (leg A), with rtcp-mux.
        let answer = "v=0\r\no=- 2 2 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 5000 RTP/AVP 8\r\na=rtcp-mux\r\nm=video 0 RTP/AVP 96\r\n";
        let mut answer = Sdp::parse(answer.as_bytes()).expect("answer");
        anchor(
            &mut answer,
            &mut streams,
            Leg::A,
            (SrtpPolicy::Off, 46),
            &mut pool,
            &mut test_random(),
            "203.0.113.1",
        )
        .expect("anchors");
        let text = String::from_utf8(answer.to_bytes()).expect("utf8");
        assert!(text.contains("m=audio 30002 RTP/AVP 8\r\n"), "{text}");
        assert_eq!(
            streams[0].b.remote,
            Some("198.51.100.7:5000".parse().unwrap())
        );
        assert_eq!(
            streams[0].b.remote_rtcp,
            Some("198.51.100.7:5000".parse().unwrap())
        );
        assert_eq!(streams[0].a.local, 30002);
        assert!(streams[0].a.advertised);

        // A re-offer keeps the ports; nothing changed, nothing to tell the relay.
        let mut again = Sdp::parse(OFFER.as_bytes()).expect("offer");
        let changed = anchor(
            &mut again,
            &mut streams,
            Leg::B,
            (SrtpPolicy::Off, 46),
            &mut pool,
            &mut test_random(),
            "203.0.113.1",
        )
        .expect("anchors");
        assert!(changed.is_empty());
        assert!(String::from_utf8(again.to_bytes())
            .unwrap()
            .contains("m=audio 30000 "));
    }

    #[test]
    fn srtp_is_terminated_with_fresh_keys_per_leg() {
        let mut pool = PortPool::new((30000, 30099), 0, 1);
        let mut streams = Vec::new();
        // Plain RTP from the core, toward Teams where SRTP is required.
        let mut offer = Sdp::parse(OFFER.as_bytes()).expect("offer");
        anchor(
            &mut offer,
            &mut streams,
            Leg::B,
            (SrtpPolicy::Required, 46),
            &mut pool,
            &mut test_random(),
            "203.0.113.1",
        )
        .expect("anchors");
        let text = String::from_utf8(offer.to_bytes()).expect("utf8");
        assert!(text.contains("m=audio 30000 RTP/SAVP 8 101\r\n"), "{text}");
        let ours = offer.media()[0].crypto();
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].suite, "AES_CM_128_HMAC_SHA1_80");
        let key = streams[0].b.local_key.expect("our key toward Teams");
        assert_eq!(SrtpKey::from_crypto(&ours[0]), Some(key));

        // Teams answers with its own key and the 32-bit tag suite; the core gets plain RTP.
        let answer = format!(
            "v=0\r\no=- 2 2 IN IP4 52.114.1.10\r\ns=-\r\nc=IN IP4 52.114.1.10\r\nt=0 0\r\nm=audio 5000 RTP/SAVP 8\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}|2^31\r\n",
            base64::engine::general_purpose::STANDARD.encode([7u8; 30])
        );
        let mut answer = Sdp::parse(answer.as_bytes()).expect("answer");
        anchor(
            &mut answer,
            &mut streams,
            Leg::A,
            (SrtpPolicy::Off, 46),
            &mut pool,
            &mut test_random(),
            "203.0.113.1",
        )
        .expect("anchors");
        let text = String::from_utf8(answer.to_bytes()).expect("utf8");
        assert!(text.contains("m=audio 30002 RTP/AVP 8\r\n"), "{text}");
        assert!(
            !text.contains("crypto"),
            "no key crosses to a plain leg: {text}"
        );
        let teams = streams[0].b.remote_key.expect("Teams' key");
        assert_eq!((teams.key, teams.salt), ([7u8; 16], [7u8; 14]));
        assert_eq!(streams[0].a.local_key, None);

        // A key with an MKI is taken, with the MKI's length; a bad MKI or an unknown suite
        // is not.
        let mki = Crypto::parse(
            "1 AES_CM_128_HMAC_SHA1_80 inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA|2^20|1:4",
        )
        .expect("crypto line");
        assert_eq!(SrtpKey::from_crypto(&mki).map(|k| k.mki_len), Some(4));
        let no_lifetime = Crypto::parse(
            "1 AES_CM_128_HMAC_SHA1_32 inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA|7:2",
        )
        .expect("crypto line");
        assert_eq!(
            SrtpKey::from_crypto(&no_lifetime).map(|k| k.mki_len),
            Some(2)
        );
        let bad_mki = Crypto::parse(
            "1 AES_CM_128_HMAC_SHA1_80 inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA|1:0",
        )
        .expect("crypto line");
        assert_eq!(SrtpKey::from_crypto(&bad_mki), None);
        let gcm = Crypto::parse("2 AEAD_AES_256_GCM inline:AAAA").expect("crypto line");
        assert_eq!(SrtpKey::from_crypto(&gcm), None);
        assert!(
            format!("{key:?}").starts_with("SrtpKey(1 AES_CM"),
            "keys stay out of logs"
        );
    }

    #[test]
    fn answers_keep_the_offer_numbers_and_the_relay_maps_between_legs() {
        let mut pool = PortPool::new((30000, 30099), 0, 1);
        let mut streams = Vec::new();
        let policy = (SrtpPolicy::Off, 46);
        let mut offer = Sdp::parse(OFFER.as_bytes()).expect("offer");
        offer.media_mut()[0]
            .add_attribute("rtpmap", Some("101 telephone-event/8000"))
            .expect("rtpmap");
        anchor(
            &mut offer,
            &mut streams,
            Leg::B,
            policy,
            &mut pool,
            &mut test_random(),
            "203.0.113.1",
        )
        .expect("offer");
        // The callee answers with telephone-event on 96 (and a codec of its own on 97).
        let answer = "v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 5000 RTP/AVP 8 96 97\r\na=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\na=rtpmap:97 opus/48000/2\r\n";
        let mut answer = Sdp::parse(answer.as_bytes()).expect("answer");
        anchor(
            &mut answer,
            &mut streams,
            Leg::A,
            policy,
            &mut pool,
            &mut test_random(),
            "203.0.113.1",
        )
        .expect("answer");
        let text = String::from_utf8(answer.to_bytes()).expect("utf8");
        assert!(
            text.contains("m=audio 30002 RTP/AVP 8 101 97\r\n"),
            "{text}"
        );
        assert!(
            text.contains("a=rtpmap:101 telephone-event/8000\r\n"),
            "{text}"
        );
        assert!(text.contains("a=fmtp:101 0-15\r\n"), "{text}");
        let (a, b) = (streams[0].a, streams[0].b);
        let toward_b = payload_type_map(&a, &b);
        assert_eq!((toward_b[101], toward_b[8], toward_b[0]), (96, 8, 0));
        let toward_a = payload_type_map(&b, &a);
        assert_eq!(
            toward_a[101], 101,
            "the callee sends with the offer's numbers"
        );
        assert_eq!(toward_a[96], 101, "or with its own");
        assert_eq!(
            toward_a[97], 97,
            "a codec the caller never listed is left alone"
        );
        assert!(a.sent_codec(101).is_some_and(|c| c.is_telephone_event()));
        assert!(b.sent_codec(96).is_some_and(|c| c.is_telephone_event()));
    }

    #[test]
    fn telephone_event_is_tracked_behind_many_codecs() {
        let mut text = String::from("v=0\r\nm=audio 1 RTP/AVP");
        for pt in 96..126 {
            text.push_str(&format!(" {pt}"));
        }
        text.push_str(" 126\r\n");
        for pt in 96..126 {
            text.push_str(&format!("a=rtpmap:{pt} X{pt}/8000\r\n"));
        }
        text.push_str("a=rtpmap:126 telephone-event/8000\r\n");
        let sdp = Sdp::parse(text.as_bytes()).expect("sdp");
        let table = PayloadTypes::of(&sdp.media()[0]);
        assert!(table.codec(126).is_some_and(|c| c.is_telephone_event()));
        assert!(table.codec(96).is_some(), "then the others, in order");
        assert!(table.codec(125).is_none(), "up to the table's size");
    }

    #[test]
    fn an_empty_pool_is_an_error() {
        let mut pool = PortPool::new((30000, 30001), 0, 1);
        assert_eq!(pool.take().ok(), Some(30000));
        let mut offer = Sdp::parse(OFFER.as_bytes()).expect("offer");
        let result = anchor(
            &mut offer,
            &mut Vec::new(),
            Leg::B,
            (SrtpPolicy::Off, 46),
            &mut pool,
            &mut test_random(),
            "203.0.113.1",
        );
        assert_eq!(result, Err(AnchorError::NoPorts));
    }

    /// A binder that refuses some ports as taken and fails every bind after a budget of
    /// descriptors; it records what it holds.
    struct FakeBinder {
        taken_elsewhere: Vec<u16>,
        descriptors: usize,
        held: std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
        prepared: std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
    }

    impl PortBinder for FakeBinder {
        fn bind(&mut self, port: u16) -> std::io::Result<()> {
            if self.taken_elsewhere.contains(&port) {
                return Err(std::io::ErrorKind::AddrInUse.into());
            }
            if self.descriptors == 0 {
                return Err(std::io::Error::from_raw_os_error(24)); // EMFILE
            }
            self.descriptors -= 1;
            self.held.lock().expect("lock").push(port);
            Ok(())
        }

        fn release(&mut self, port: u16) {
            self.held.lock().expect("lock").retain(|p| *p != port);
        }

        fn prepare(&mut self, port: u16) {
            self.prepared.lock().expect("lock").push(port);
        }
    }

    #[test]
    fn a_pool_has_its_binder_prepare_the_ports_next_in_line() {
        let mut pool = PortPool::new((30000, 30999), 0, 1);
        let prepared = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let ahead = 32;
        pool.set_binder(
            Box::new(FakeBinder {
                taken_elsewhere: Vec::new(),
                descriptors: 100,
                held: Default::default(),
                prepared: prepared.clone(),
            }),
            ahead,
        );
        let first: Vec<u16> = (0..ahead as u16).map(|i| 30000 + 2 * i).collect();
        assert_eq!(*prepared.lock().expect("lock"), first);
        // Each port handed out brings the next one into the window.
        assert_eq!(pool.take().ok(), Some(30000));
        assert_eq!(pool.take().ok(), Some(30002));
        let window_end = 30000 + 2 * ahead as u16;
        assert_eq!(
            prepared.lock().expect("lock")[ahead..],
            [window_end, window_end + 2]
        );
    }

    #[test]
    fn a_pool_with_a_binder_hands_out_only_ports_it_bound() {
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut pool = PortPool::new((30000, 30009), 0, 1);
        pool.set_binder(
            Box::new(FakeBinder {
                taken_elsewhere: vec![30002],
                descriptors: 2,
                held: held.clone(),
                prepared: Default::default(),
            }),
            0,
        );
        assert_eq!(pool.take().ok(), Some(30000));
        // 30002 is another process's: skipped, and tried again later.
        assert_eq!(pool.take().ok(), Some(30004));
        assert_eq!(*held.lock().expect("lock"), [30000, 30004]);
        // Out of descriptors: an error that says so, and the port stays free.
        let error = pool.take().expect_err("no descriptors");
        assert!(
            matches!(&error, AnchorError::Bind(e) if e.contains("os error 24")),
            "{error}"
        );
        assert_eq!(pool.available(), 3);
        // A port given back is released by the binder.
        pool.give(30000);
        assert_eq!(*held.lock().expect("lock"), [30004]);
    }
}
