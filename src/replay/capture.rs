//! SIP messages out of a packet capture, for `bridgehead replay --pcap`.
//!
//! [`read_capture`] reads a pcap or pcapng file (told apart by their magic numbers) with the
//! `pcap-file` crate, decodes each frame with `etherparse` and returns every SIP message it
//! carries, in capture order.
//!
//! What is understood:
//! - pcap (micro- and nanosecond, either byte order) and pcapng (several sections and
//!   interfaces, each with its own link type and `if_tsresol`/`if_tsoffset`; microseconds when
//!   `if_tsresol` is absent). Enhanced, simple and obsolete packet blocks.
//! - Link types Ethernet (1) with 802.1Q/802.1ad VLAN tags and PPPoE session frames (ethertype
//!   0x8864 carrying PPP protocol 0x0021 IPv4 or 0x0057 IPv6), Linux cooked captures SLL (113)
//!   and SLL2 (276), raw IP (101, 228, 229) and BSD loopback (0 and 108). Frames of other link
//!   types are skipped; when no frame at all had a supported link type the capture is an error
//!   naming the link type.
//! - IPv4 and IPv6 (with extension headers), UDP and TCP.
//! - IP fragments (IPv4, and IPv6 fragment headers) are reassembled with etherparse's
//!   [`IpDefragPool`], whatever order they come in; overlapping and repeated fragments are
//!   merged. A reassembled datagram's time is that of the fragment that completed it. At most
//!   `MAX_REASSEMBLIES` (64) datagrams are put together at once (the one that has waited longest is
//!   dropped to make room), and a datagram still missing fragments `REASSEMBLY_TIMEOUT` (30 s) after
//!   its last one, or at the end of the capture, is dropped; the dropped ones are counted and
//!   named in a warning.
//! - UDP: a datagram whose payload starts with a SIP start line is one message; keep-alive CRLFs,
//!   RTP, STUN and everything else are ignored.
//! - TCP: each direction of each connection is reassembled in sequence order (duplicates and
//!   retransmissions dropped, out-of-order segments held until the gap is filled) and split into
//!   messages with [`crate::sip::frame_stream`]. A message's time is that of the segment that
//!   completed it. A connection joined mid-stream, or a hole left by a segment the capture
//!   missed, is resynchronised at the next line that starts a SIP message. A stream that is not
//!   SIP (binary, TLS, HTTP) or cannot be framed is dropped without failing the capture.
//!
//! Frames truncated by the capture's snap length are skipped. A capture that ends in the middle
//! of a record (a capture cut short) keeps everything read up to that point.
//!
//! Nothing in this module panics on any input: every length comes from a checked parser or a
//! checked slice access.

use crate::config::Transport;
use crate::sip;
use bytes::{Buf, Bytes, BytesMut};
use etherparse::defrag::{IpDefragPayloadVec, IpDefragPool};
use etherparse::{
    EtherType, IpFragOffset, IpNumber, Ipv6ExtensionSlice, Ipv6FragmentHeader, NetSlice,
    SlicedPacket, TcpSlice, TransportSlice, UdpSlice,
};
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, Endianness, PcapError, TsResolution};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One SIP message seen in a capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedSip {
    /// Time since the first (earliest) packet of the capture.
    pub at: Duration,
    /// Sender of the datagram or of the TCP stream direction.
    pub src: SocketAddr,
    /// Receiver of the datagram or of the TCP stream direction.
    pub dst: SocketAddr,
    /// [`Transport::Udp`] or [`Transport::Tcp`].
    pub transport: Transport,
    /// Exactly one SIP message (without leading keep-alive CRLFs).
    pub bytes: Bytes,
}

/// One RTP packet seen in a capture: a UDP datagram holding RTP version 2 (not RTCP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedRtp {
    /// Time since the first (earliest) packet of the capture.
    pub at: Duration,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The RTP packet.
    pub bytes: Bytes,
}

/// Why a capture could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be opened.
    #[error("cannot open capture {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading the file failed.
    #[error("cannot read capture {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file starts with neither the pcap nor the pcapng magic number.
    #[error("{} is not a pcap or pcapng capture ({detail})", path.display())]
    NotACapture { path: PathBuf, detail: String },
    /// The file header (pcap global header or first pcapng section header) is malformed.
    #[error("{}: malformed capture header: {detail}", path.display())]
    Malformed { path: PathBuf, detail: String },
    /// No packet of the capture had a link type this reader can decode.
    #[error(
        "{}: unsupported link type {link}: no packet could be decoded (supported: Ethernet, \
         Linux cooked SLL/SLL2, raw IPv4/IPv6, BSD loopback)",
        path.display()
    )]
    UnsupportedLinkType { path: PathBuf, link: String },
}

/// Every SIP message in the capture at `path`, sorted by time, then by packet order.
pub fn read_capture(path: &Path) -> Result<Vec<CapturedSip>, CaptureError> {
    read_with_stats(path).map(|(messages, _)| messages)
}

/// Every RTP packet (over UDP) in the capture at `path`, sorted by time, then by packet order.
pub fn read_rtp(path: &Path) -> Result<Vec<CapturedRtp>, CaptureError> {
    read_parts(path, true).map(|(_, rtp, _)| rtp)
}

/// Counters of what the reader saw (for logs and tests).
#[derive(Debug, Default)]
struct Stats {
    /// Packet records in the file.
    packets: u64,
    /// Frames on a supported link type.
    supported: u64,
    /// UDP datagrams and TCP segments decoded.
    udp: u64,
    tcp: u64,
    /// IP fragments seen.
    fragments: u64,
    /// Datagrams reassembled from IP fragments.
    reassembled: u64,
    /// Fragmented datagrams dropped with fragments missing (timed out, pushed out by newer
    /// ones, or unfinished at the end of the capture).
    unfinished: u64,
    /// Fragments refused by the reassembly: a length that is not a multiple of 8 before the
    /// last fragment, an end past 64 KiB, or an end that contradicts another fragment's.
    bad_fragments: u64,
    /// The first link type met that is not supported.
    unsupported: Option<DataLink>,
}

fn read_with_stats(path: &Path) -> Result<(Vec<CapturedSip>, Stats), CaptureError> {
    read_parts(path, false).map(|(messages, _, stats)| (messages, stats))
}

/// The SIP messages of a capture, its RTP packets when `keep_rtp` says so, and what the reader
/// saw.
fn read_parts(
    path: &Path,
    keep_rtp: bool,
) -> Result<(Vec<CapturedSip>, Vec<CapturedRtp>, Stats), CaptureError> {
    let mut file = File::open(path).map_err(|source| CaptureError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let read_error = |source| CaptureError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut magic = [0u8; 4];
    if let Err(err) = file.read_exact(&mut magic) {
        return Err(if err.kind() == io::ErrorKind::UnexpectedEof {
            CaptureError::NotACapture {
                path: path.to_path_buf(),
                detail: "file shorter than 4 bytes".into(),
            }
        } else {
            read_error(err)
        });
    }
    file.seek(SeekFrom::Start(0)).map_err(read_error)?;
    let mut extractor = Extractor {
        keep_rtp,
        ..Extractor::default()
    };
    match magic {
        [0xa1, 0xb2, 0xc3, 0xd4]
        | [0xd4, 0xc3, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0x3c, 0x4d]
        | [0x4d, 0x3c, 0xb2, 0xa1] => read_pcap(path, file, &mut extractor)?,
        [0x0a, 0x0d, 0x0d, 0x0a] => read_pcapng(path, file, &mut extractor)?,
        _ => {
            return Err(CaptureError::NotACapture {
                path: path.to_path_buf(),
                detail: format!(
                    "magic number {:02x}{:02x}{:02x}{:02x}",
                    magic[0], magic[1], magic[2], magic[3]
                ),
            })
        }
    }
    let (messages, rtp, stats) = extractor.finish();
    tracing::debug!(
        path = %path.display(),
        packets = stats.packets,
        supported = stats.supported,
        udp = stats.udp,
        tcp = stats.tcp,
        fragments = stats.fragments,
        reassembled = stats.reassembled,
        "capture read"
    );
    if stats.supported == 0 {
        if let Some(link) = stats.unsupported {
            return Err(CaptureError::UnsupportedLinkType {
                path: path.to_path_buf(),
                link: link_name(link),
            });
        }
    }
    if stats.unfinished > 0 || stats.bad_fragments > 0 {
        tracing::warn!(
            "{}: skipped {} IP-fragmented datagram(s) with fragments missing and {} malformed \
             fragment(s); {} datagram(s) reassembled",
            path.display(),
            stats.unfinished,
            stats.bad_fragments,
            stats.reassembled
        );
    }
    Ok((messages, rtp, stats))
}

fn read_pcap(path: &Path, file: File, extractor: &mut Extractor) -> Result<(), CaptureError> {
    let mut reader = PcapReader::new(file).map_err(|err| header_error(path, err))?;
    let header = reader.header();
    let nanos = header.ts_resolution == TsResolution::NanoSecond;
    while let Some(next) = reader.next_raw_packet() {
        let packet = match next {
            Ok(packet) => packet,
            Err(err) => {
                cut_short(path, extractor.stats.packets, err)?;
                break;
            }
        };
        let fraction = u64::from(packet.ts_frac);
        let fraction = if nanos {
            Duration::from_nanos(fraction)
        } else {
            Duration::from_micros(fraction)
        };
        let time = Duration::from_secs(u64::from(packet.ts_sec)).saturating_add(fraction);
        extractor.frame(header.datalink, Some(time), &packet.data);
    }
    Ok(())
}

/// What the reader needs of a pcapng interface.
struct Interface {
    link: DataLink,
    /// `if_tsresol`: bit 7 clear, units of 10^-n s; set, units of 2^-n s.
    resolution: u8,
    /// `if_tsoffset`, seconds.
    offset: u64,
}

impl Interface {
    fn new(block: &InterfaceDescriptionBlock<'_>) -> Interface {
        let mut interface = Interface {
            link: block.linktype,
            resolution: 6,
            offset: 0,
        };
        for option in &block.options {
            match option {
                InterfaceDescriptionOption::IfTsResol(resolution) => {
                    interface.resolution = *resolution
                }
                InterfaceDescriptionOption::IfTsOffset(offset) => interface.offset = *offset,
                _ => {}
            }
        }
        interface
    }

    /// A raw pcapng timestamp in this interface's units, as time since the epoch.
    fn time(&self, raw: u64) -> Duration {
        const NANOS: u128 = 1_000_000_000;
        let exponent = u32::from(self.resolution & 0x7f);
        let raw = u128::from(raw);
        let nanos = if self.resolution & 0x80 == 0 {
            if exponent <= 9 {
                raw * 10u128.pow(9 - exponent)
            } else {
                10u128
                    .checked_pow(exponent - 9)
                    .map_or(0, |divisor| raw / divisor)
            }
        } else {
            // raw < 2^64, so raw * 10^9 < 2^94 and the exponent is below 128.
            (raw * NANOS) >> exponent
        };
        let seconds = u64::try_from(nanos / NANOS).unwrap_or(u64::MAX);
        let subsec = u32::try_from(nanos % NANOS).unwrap_or(0);
        Duration::new(seconds, subsec).saturating_add(Duration::from_secs(self.offset))
    }
}

fn read_pcapng(path: &Path, file: File, extractor: &mut Extractor) -> Result<(), CaptureError> {
    let mut reader = PcapNgReader::new(file).map_err(|err| header_error(path, err))?;
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut endianness = reader.section().endianness;
    while let Some(next) = reader.next_block() {
        let block = match next {
            Ok(block) => block,
            Err(err) => {
                cut_short(path, extractor.stats.packets, err)?;
                break;
            }
        };
        match block {
            Block::SectionHeader(section) => {
                endianness = section.endianness;
                interfaces.clear();
            }
            Block::InterfaceDescription(block) => interfaces.push(Interface::new(&block)),
            Block::EnhancedPacket(packet) => {
                // pcap-file hands the raw 64-bit timestamp over as nanoseconds, whatever the
                // interface's resolution: take the raw value back and scale it here.
                let raw = u64::try_from(packet.timestamp.as_nanos()).unwrap_or(u64::MAX);
                let interface = usize::try_from(packet.interface_id)
                    .ok()
                    .and_then(|id| interfaces.get(id));
                match interface {
                    Some(interface) => {
                        let time = interface.time(raw);
                        extractor.frame(interface.link, Some(time), &packet.data)
                    }
                    None => extractor.stats.packets += 1,
                }
            }
            Block::Packet(packet) => match interfaces.get(usize::from(packet.interface_id)) {
                Some(interface) => {
                    // pcap-file reads the timestamp (high word, then low word) as one u64 in the
                    // section's byte order, which swaps the words in a little-endian section.
                    let raw = match endianness {
                        Endianness::Little => packet.timestamp.rotate_left(32),
                        Endianness::Big => packet.timestamp,
                    };
                    let time = interface.time(raw);
                    extractor.frame(interface.link, Some(time), &packet.data)
                }
                None => extractor.stats.packets += 1,
            },
            // No timestamp: it was captured after the previous packet, on interface 0.
            Block::SimplePacket(packet) => match interfaces.first() {
                Some(interface) => extractor.frame(interface.link, None, &packet.data),
                None => extractor.stats.packets += 1,
            },
            _ => {}
        }
    }
    Ok(())
}

fn header_error(path: &Path, err: PcapError) -> CaptureError {
    match err {
        PcapError::IoError(source) if source.kind() != io::ErrorKind::UnexpectedEof => {
            CaptureError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
        PcapError::IoError(_) | PcapError::IncompleteBuffer => CaptureError::Malformed {
            path: path.to_path_buf(),
            detail: "file ends inside the header".into(),
        },
        other => CaptureError::Malformed {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    }
}

/// A record that cannot be read ends the capture (a capture cut short, or corrupt from there
/// on): what came before is kept. A real I/O failure is an error.
fn cut_short(path: &Path, packets: u64, err: PcapError) -> Result<(), CaptureError> {
    match err {
        PcapError::IoError(source) if source.kind() != io::ErrorKind::UnexpectedEof => {
            Err(CaptureError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
        PcapError::IoError(_) | PcapError::IncompleteBuffer => {
            tracing::warn!(
                "{}: capture ends inside a record after {packets} packets; using what came before",
                path.display()
            );
            Ok(())
        }
        other => {
            tracing::warn!(
                "{}: unreadable record after {packets} packets ({other}); using what came before",
                path.display()
            );
            Ok(())
        }
    }
}

fn link_name(link: DataLink) -> String {
    match link {
        DataLink::Unknown(number) => format!("LINKTYPE {number}"),
        known => format!("{known:?} ({})", u32::from(known)),
    }
}

/// PPPoE session stage (RFC 2516).
const PPPOE_SESSION: EtherType = EtherType(0x8864);

/// What a frame decoded to.
enum Frame<'a> {
    /// A link type this reader does not decode.
    Unsupported,
    /// A supported link type, but not an IP packet this reader can slice (ARP, truncated...).
    Undecodable,
    Packet(SlicedPacket<'a>),
}

fn slice_frame(link: DataLink, data: &[u8]) -> Frame<'_> {
    let sliced = match link {
        DataLink::ETHERNET => SlicedPacket::from_ethernet(data).ok().and_then(below_link),
        DataLink::LINUX_SLL => linux_cooked(data, 16, 14),
        DataLink::LINUX_SLL2 => linux_cooked(data, 20, 0),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(data).ok(),
        // A 4-byte address family (host or network byte order) before the IP header; the IP
        // version nibble tells the rest.
        DataLink::NULL | DataLink::LOOP => data
            .get(4..)
            .and_then(|packet| SlicedPacket::from_ip(packet).ok()),
        _ => return Frame::Unsupported,
    };
    match sliced {
        Some(packet) => Frame::Packet(packet),
        None => Frame::Undecodable,
    }
}

/// Goes on below a link layer whose payload etherparse leaves undecoded: PPPoE sessions (after
/// Ethernet or a VLAN tag).
fn below_link(sliced: SlicedPacket<'_>) -> Option<SlicedPacket<'_>> {
    if sliced.net.is_some() {
        return Some(sliced);
    }
    match sliced.ether_payload() {
        Some(payload) if payload.ether_type == PPPOE_SESSION => pppoe(payload.payload),
        _ => Some(sliced),
    }
}

fn by_ether_type(ether_type: EtherType, data: &[u8]) -> Option<SlicedPacket<'_>> {
    if ether_type == PPPOE_SESSION {
        return pppoe(data);
    }
    SlicedPacket::from_ether_type(ether_type, data)
        .ok()
        .and_then(below_link)
}

/// Linux cooked captures: SLL is 16 bytes with the protocol (an ethertype) at 14; SLL2 is 20
/// bytes with it at 0. Parsed here rather than with etherparse's SLL slicer, which refuses the
/// ARPHRD types of loopback (772) and tun (65534) interfaces that `tcpdump -i any` produces.
fn linux_cooked(data: &[u8], header: usize, protocol_at: usize) -> Option<SlicedPacket<'_>> {
    let protocol = data.get(protocol_at..protocol_at.checked_add(2)?)?;
    let protocol = u16::from_be_bytes(<[u8; 2]>::try_from(protocol).ok()?);
    by_ether_type(EtherType(protocol), data.get(header..)?)
}

/// A PPPoE session frame: version/type 0x11, code 0, session id, length, then PPP.
fn pppoe(data: &[u8]) -> Option<SlicedPacket<'_>> {
    let [0x11, 0x00, _, _, high, low, ppp @ ..] = data else {
        return None;
    };
    // The length covers the PPP protocol field and payload; anything after it is padding.
    let length = usize::from(u16::from_be_bytes([*high, *low]));
    let ppp = ppp.get(..length).unwrap_or(ppp);
    // The protocol field may be compressed to one byte (RFC 1661 §6.5).
    match ppp {
        [0x00, 0x21, packet @ ..]
        | [0x21, packet @ ..]
        | [0x00, 0x57, packet @ ..]
        | [0x57, packet @ ..] => SlicedPacket::from_ip(packet).ok(),
        _ => None,
    }
}

/// etherparse 0.16 reads (and writes) the offset and M flag of an IPv6 fragment header from the
/// wrong bits (etherparse issue #150, fixed upstream in 0.20): RFC 8200 has bytes 2-3 as one
/// big-endian word of the offset (13 bits), 2 reserved bits and M. When etherparse reads a
/// frame's first IPv6 fragment header otherwise than the wire says, this returns a copy of the
/// frame with those two bytes rewritten (by etherparse's own writer, the mirror of its reader)
/// so that it reads what the wire says; None when nothing needs rewriting, as with an etherparse
/// that reads them right.
fn ipv6_fragment_header_rewritten(data: &[u8], sliced: &SlicedPacket<'_>) -> Option<Vec<u8>> {
    let Some(NetSlice::Ipv6(ip)) = &sliced.net else {
        return None;
    };
    let header = ip
        .extensions()
        .clone()
        .into_iter()
        .find_map(|extension| match extension {
            Ipv6ExtensionSlice::Fragment(header) => Some(header),
            _ => None,
        })?;
    let bytes = header.slice();
    let word = u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]);
    let offset = IpFragOffset::try_new(word >> 3).ok()?;
    let more_fragments = word & 1 == 1;
    if header.fragment_offset() == offset && header.more_fragments() == more_fragments {
        return None;
    }
    // The header is a slice of the frame: where it starts in it.
    let at = (bytes.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
    let readable = Ipv6FragmentHeader::new(
        header.next_header(),
        offset,
        more_fragments,
        header.identification(),
    )
    .to_bytes();
    let mut copy = data.to_vec();
    copy.get_mut(at.checked_add(2)?..at.checked_add(4)?)?
        .copy_from_slice(readable.get(2..4)?);
    Some(copy)
}

/// A SIP message found, with what orders it.
struct Found {
    time: Duration,
    packet: u64,
    src: SocketAddr,
    dst: SocketAddr,
    transport: Transport,
    bytes: Bytes,
}

#[derive(Default)]
struct Extractor {
    stats: Stats,
    /// Earliest packet time seen.
    first: Option<Duration>,
    /// Time of the last packet (for pcapng simple packet blocks, which have none).
    last: Duration,
    streams: HashMap<(SocketAddr, SocketAddr), Stream>,
    /// IP datagrams being put together from their fragments.
    reassembly: Reassembly,
    found: Vec<Found>,
    /// Whether RTP datagrams are kept too.
    keep_rtp: bool,
    rtp: Vec<Found>,
}

impl Extractor {
    /// One captured frame; `time` is None for a frame without a timestamp (taken as
    /// captured with the previous one).
    fn frame(&mut self, link: DataLink, time: Option<Duration>, data: &[u8]) {
        self.stats.packets += 1;
        let packet = self.stats.packets;
        let time = match time {
            Some(time) => {
                self.first = Some(self.first.map_or(time, |first| first.min(time)));
                self.last = time;
                time
            }
            None => self.last,
        };
        // A copy of the frame with its IPv6 fragment header made readable to etherparse.
        let rewritten;
        let sliced = match slice_frame(link, data) {
            Frame::Unsupported => {
                self.stats.unsupported.get_or_insert(link);
                return;
            }
            Frame::Undecodable => {
                self.stats.supported += 1;
                return;
            }
            Frame::Packet(sliced) => {
                self.stats.supported += 1;
                sliced
            }
        };
        let sliced = match ipv6_fragment_header_rewritten(data, &sliced) {
            Some(copy) => {
                rewritten = copy;
                match slice_frame(link, &rewritten) {
                    Frame::Packet(sliced) => sliced,
                    Frame::Unsupported | Frame::Undecodable => return,
                }
            }
            None => sliced,
        };
        let (src, dst) = match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => (
                IpAddr::from(ip.header().source_addr()),
                IpAddr::from(ip.header().destination_addr()),
            ),
            Some(NetSlice::Ipv6(ip)) => (
                IpAddr::from(ip.header().source_addr()),
                IpAddr::from(ip.header().destination_addr()),
            ),
            None => return,
        };
        let stamp = (time, packet);
        if sliced.is_ip_payload_fragmented() {
            self.stats.fragments += 1;
            let Some(whole) = self.reassembly.add(&sliced, stamp, &mut self.stats) else {
                return;
            };
            self.stats.reassembled += 1;
            match whole.ip_number {
                IpNumber::UDP => {
                    if let Ok(udp) = UdpSlice::from_slice(&whole.payload) {
                        self.udp(src, dst, &udp, stamp);
                    }
                }
                IpNumber::TCP => {
                    if let Ok(tcp) = TcpSlice::from_slice(&whole.payload) {
                        self.tcp(src, dst, &tcp, stamp);
                    }
                }
                _ => {}
            }
            self.reassembly.recycle(whole);
            return;
        }
        match &sliced.transport {
            Some(TransportSlice::Udp(udp)) => self.udp(src, dst, udp, stamp),
            Some(TransportSlice::Tcp(tcp)) => self.tcp(src, dst, tcp, stamp),
            _ => {}
        }
    }

    /// A UDP datagram (whole, or reassembled from IP fragments) captured at `stamp`.
    fn udp(&mut self, src: IpAddr, dst: IpAddr, udp: &UdpSlice<'_>, (time, packet): Stamp) {
        self.stats.udp += 1;
        let payload = skip_crlf(udp.payload());
        let found = |bytes: &[u8]| Found {
            time,
            packet,
            src: SocketAddr::new(src, udp.source_port()),
            dst: SocketAddr::new(dst, udp.destination_port()),
            transport: Transport::Udp,
            bytes: Bytes::copy_from_slice(bytes),
        };
        if looks_like_sip(payload) {
            self.found.push(found(payload));
        } else if self.keep_rtp && looks_like_rtp(udp.payload()) {
            self.rtp.push(found(udp.payload()));
        }
    }

    /// A TCP segment (whole, or reassembled from IP fragments) captured at `stamp`.
    fn tcp(&mut self, src: IpAddr, dst: IpAddr, tcp: &TcpSlice<'_>, stamp: Stamp) {
        self.stats.tcp += 1;
        let src = SocketAddr::new(src, tcp.source_port());
        let dst = SocketAddr::new(dst, tcp.destination_port());
        let mut out = Vec::new();
        let stream = self.streams.entry((src, dst)).or_default();
        stream.segment(
            tcp.sequence_number(),
            tcp.syn(),
            tcp.payload(),
            stamp,
            &mut out,
        );
        self.take(src, dst, out);
    }

    fn take(&mut self, src: SocketAddr, dst: SocketAddr, messages: Vec<Emitted>) {
        self.found
            .extend(messages.into_iter().map(|((time, packet), bytes)| Found {
                time,
                packet,
                src,
                dst,
                transport: Transport::Tcp,
                bytes,
            }));
    }

    /// Flushes the TCP streams, drops the datagrams still missing fragments and returns the
    /// messages and RTP packets in capture order.
    fn finish(mut self) -> (Vec<CapturedSip>, Vec<CapturedRtp>, Stats) {
        self.stats.unfinished += self.reassembly.in_flight();
        let streams = std::mem::take(&mut self.streams);
        for ((src, dst), mut stream) in streams {
            let mut out = Vec::new();
            stream.finish(&mut out);
            self.take(src, dst, out);
        }
        // Stable: messages completed by the same packet keep their stream order.
        self.found.sort_by_key(|found| (found.time, found.packet));
        let first = self.first.unwrap_or_default();
        let messages = self
            .found
            .into_iter()
            .map(|found| CapturedSip {
                at: found.time.saturating_sub(first),
                src: found.src,
                dst: found.dst,
                transport: found.transport,
                bytes: found.bytes,
            })
            .collect();
        self.rtp.sort_by_key(|found| (found.time, found.packet));
        let rtp = self
            .rtp
            .into_iter()
            .map(|found| CapturedRtp {
                at: found.time.saturating_sub(first),
                src: found.src,
                dst: found.dst,
                bytes: found.bytes,
            })
            .collect();
        (messages, rtp, self.stats)
    }
}

/// When a segment or fragment was captured: its time and packet number.
type Stamp = (Duration, u64);

/// IP datagrams reassembled at once, at most; a new one beyond this drops the one that has
/// waited longest for a fragment. Each is at most 64 KiB (etherparse refuses fragments that end
/// past it), so this bounds the memory held to a few MiB.
const MAX_REASSEMBLIES: u64 = 64;
/// A datagram whose next fragment has not come this long (in capture time) after its last one
/// is dropped (Linux's default `ipfrag_time`).
const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(30);

/// IP reassembly: etherparse's pool, which tells datagrams apart by VLAN ids, addresses,
/// identification and protocol, kept within [`MAX_REASSEMBLIES`] and [`REASSEMBLY_TIMEOUT`].
/// The pool keeps, for each datagram, the [`Stamp`] of the last fragment added to it.
#[derive(Default)]
struct Reassembly {
    pool: IpDefragPool<Stamp>,
}

impl Reassembly {
    /// Adds a fragment captured at `stamp`; returns the whole IP payload (the transport header
    /// and its payload) when the fragment completes a datagram. Malformed fragments and the
    /// datagrams dropped to make room or timed out are counted in `stats`.
    fn add(
        &mut self,
        sliced: &SlicedPacket<'_>,
        stamp: Stamp,
        stats: &mut Stats,
    ) -> Option<IpDefragPayloadVec> {
        let (time, _) = stamp;
        stats.unfinished += self.drop_where(|(last, _)| {
            last.checked_add(REASSEMBLY_TIMEOUT)
                .is_some_and(|deadline| deadline < time)
        });
        let whole = match self.pool.process_sliced_packet(sliced, stamp, ()) {
            Ok(whole) => whole,
            Err(err) => {
                tracing::trace!("IP fragment in packet {} refused: {err}", stamp.1);
                stats.bad_fragments += 1;
                None
            }
        };
        if whole.is_none() && self.in_flight() > MAX_REASSEMBLIES {
            stats.unfinished += self.drop_oldest();
        }
        whole
    }

    /// Hands a reassembled datagram's buffer back to the pool, for the next one.
    fn recycle(&mut self, whole: IpDefragPayloadVec) {
        self.pool.return_buf(whole);
    }

    /// Datagrams started and not complete.
    fn in_flight(&mut self) -> u64 {
        // The pool does not say how many it holds; a predicate that keeps everything is shown
        // each of them once.
        let count = Cell::new(0u64);
        self.pool.retain(|_| {
            count.set(count.get() + 1);
            true
        });
        count.get()
    }

    /// Drops the datagram whose last fragment came first (in packet order); the number dropped.
    fn drop_oldest(&mut self) -> u64 {
        let oldest = Cell::new(None::<u64>);
        self.pool.retain(|&(_, packet)| {
            oldest.set(Some(oldest.get().map_or(packet, |o| o.min(packet))));
            true
        });
        match oldest.get() {
            // Each packet is the last fragment of one datagram at most.
            Some(oldest) => self.drop_where(|&(_, packet)| packet == oldest),
            None => 0,
        }
    }

    /// Drops the datagrams whose last fragment's stamp matches; the number dropped.
    fn drop_where(&mut self, doomed: impl Fn(&Stamp) -> bool) -> u64 {
        let before = self.in_flight();
        self.pool.retain(|stamp| !doomed(stamp));
        before.saturating_sub(self.in_flight())
    }
}
/// A message completed by a segment.
type Emitted = (Stamp, Bytes);

/// Out-of-order bytes held per stream before the hole is taken as lost.
const MAX_AHEAD: usize = 4 * sip::MAX_MESSAGE_SIZE;
/// Bytes searched for a message start before a stream is taken as not SIP.
const MAX_RESYNC: usize = 2 * sip::MAX_MESSAGE_SIZE;

/// One direction of a TCP connection.
#[derive(Default)]
struct Stream {
    /// Initial sequence number, when the SYN was seen.
    isn: Option<u32>,
    /// Sequence number of the next byte expected (None before the first segment).
    next: Option<u32>,
    /// Bytes taken in order so far (the stream offset of `next`).
    delivered: u64,
    /// Bytes taken in order and not yet framed.
    buf: BytesMut,
    /// Segments beyond a hole, by stream offset.
    ahead: BTreeMap<u64, (Bytes, Stamp)>,
    ahead_bytes: usize,
    /// Looking for the start of a message (joined mid-stream, or after a hole or junk).
    resync: bool,
    /// Bytes dropped while looking for the start of a message.
    skipped: usize,
    /// Not SIP, or not frameable: ignored until a new SYN.
    dead: bool,
}

impl Stream {
    fn segment(
        &mut self,
        seq: u32,
        syn: bool,
        payload: &[u8],
        stamp: Stamp,
        out: &mut Vec<Emitted>,
    ) {
        let mut seq = seq;
        if syn {
            if self.isn != Some(seq) {
                // A new connection on the same addresses starts afresh.
                *self = Stream {
                    isn: Some(seq),
                    next: Some(seq.wrapping_add(1)),
                    ..Stream::default()
                };
            }
            // Data on a SYN (TCP Fast Open) starts after the SYN's sequence number.
            seq = seq.wrapping_add(1);
        }
        if payload.is_empty() || self.dead {
            return;
        }
        let next = match self.next {
            Some(next) => next,
            None => {
                // Joined mid-connection: the first bytes may be the tail of a message.
                self.next = Some(seq);
                self.resync = true;
                seq
            }
        };
        // Signed distance from the next expected byte, modulo 2^32.
        let distance = i64::from(seq.wrapping_sub(next) as i32);
        let delivered = i64::try_from(self.delivered).unwrap_or(i64::MAX);
        let start = delivered.saturating_add(distance);
        let end = start.saturating_add(i64::try_from(payload.len()).unwrap_or(i64::MAX));
        if end <= delivered {
            return; // a retransmission of bytes already taken
        }
        if start > delivered {
            let Ok(offset) = u64::try_from(start) else {
                return;
            };
            let longer = self
                .ahead
                .get(&offset)
                .is_none_or(|(held, _)| held.len() < payload.len());
            if longer {
                let replaced = self
                    .ahead
                    .insert(offset, (Bytes::copy_from_slice(payload), stamp));
                let replaced = replaced.map_or(0, |(held, _)| held.len());
                self.ahead_bytes = self.ahead_bytes.saturating_sub(replaced) + payload.len();
            }
            if self.ahead_bytes > MAX_AHEAD {
                self.skip_hole(out);
            }
            return;
        }
        let overlap = usize::try_from(delivered - start).unwrap_or(usize::MAX);
        if let Some(fresh) = payload.get(overlap..) {
            self.append(fresh, stamp, out);
        }
        self.drain_ahead(Some(stamp), out);
    }

    /// Takes the held segments that have become contiguous. Their messages were complete when
    /// the segment that filled the hole (`filled_by`) arrived, if that came later.
    fn drain_ahead(&mut self, filled_by: Option<Stamp>, out: &mut Vec<Emitted>) {
        while let Some(entry) = self.ahead.first_entry() {
            let start = *entry.key();
            if start > self.delivered {
                break;
            }
            let (data, held) = entry.remove();
            let stamp = filled_by.map_or(held, |filled_by| filled_by.max(held));
            self.ahead_bytes = self.ahead_bytes.saturating_sub(data.len());
            let overlap = usize::try_from(self.delivered - start).unwrap_or(usize::MAX);
            if let Some(fresh) = data.get(overlap..) {
                if !fresh.is_empty() {
                    self.append(fresh, stamp, out);
                }
            }
        }
    }

    /// Gives up on the bytes missing before the first held segment (the capture lost them):
    /// drops the partial message and picks up at the next message start.
    fn skip_hole(&mut self, out: &mut Vec<Emitted>) {
        let Some(&start) = self.ahead.keys().next() else {
            return;
        };
        let gap = start.saturating_sub(self.delivered);
        // Sequence numbers are modulo 2^32: the truncation is the intent.
        self.next = self.next.map(|next| next.wrapping_add(gap as u32));
        self.delivered = start;
        self.buf.clear();
        self.resync = true;
        self.drain_ahead(None, out);
    }

    /// End of capture: whatever is held beyond holes is still worth framing.
    fn finish(&mut self, out: &mut Vec<Emitted>) {
        while !self.ahead.is_empty() && !self.dead {
            self.skip_hole(out);
        }
    }

    fn append(&mut self, data: &[u8], stamp: Stamp, out: &mut Vec<Emitted>) {
        self.delivered = self
            .delivered
            .saturating_add(u64::try_from(data.len()).unwrap_or(u64::MAX));
        // Modulo 2^32, as above.
        self.next = self.next.map(|next| next.wrapping_add(data.len() as u32));
        if self.dead {
            return;
        }
        self.buf.extend_from_slice(data);
        self.frame(stamp, out);
    }

    /// Splits off every complete message in the buffer.
    fn frame(&mut self, stamp: Stamp, out: &mut Vec<Emitted>) {
        loop {
            if self.resync && !self.find_message_start() {
                return;
            }
            // A SIP message starts with a token; anything else (TLS, binary) is not SIP.
            let first = self.buf.iter().find(|b| !matches!(b, b'\r' | b'\n'));
            if first.is_some_and(|b| !b.is_ascii_graphic()) {
                self.kill();
                return;
            }
            match sip::frame_stream(&self.buf) {
                Ok(Some(length)) if length > 0 && length <= self.buf.len() => {
                    let message = self.buf.split_to(length).freeze();
                    let skip = message.len() - skip_crlf(&message).len();
                    let message = message.slice(skip..);
                    if looks_like_sip(&message) {
                        out.push((stamp, message));
                    } else {
                        // Framed, but not SIP (HTTP...): look for a SIP message after it.
                        self.resync = true;
                    }
                }
                Ok(_) => return,
                Err(_) => {
                    self.kill();
                    return;
                }
            }
        }
    }

    /// Drops bytes up to the first line that starts a SIP message; false when there is none
    /// in the buffer yet (the last, unfinished line is kept).
    fn find_message_start(&mut self) -> bool {
        let mut line = 0;
        let found = loop {
            let rest = self.buf.get(line..).unwrap_or_default();
            if looks_like_sip(rest) {
                break true;
            }
            match rest.iter().position(|b| *b == b'\n') {
                Some(end) => line += end + 1,
                None => break false,
            }
        };
        let line = line.min(self.buf.len());
        self.buf.advance(line);
        if found {
            self.resync = false;
            self.skipped = 0;
            return true;
        }
        self.skipped = self.skipped.saturating_add(line);
        if self.skipped > MAX_RESYNC || self.buf.len() > sip::MAX_MESSAGE_SIZE {
            self.kill();
        }
        false
    }

    fn kill(&mut self) {
        self.dead = true;
        self.buf = BytesMut::new();
        self.ahead.clear();
        self.ahead_bytes = 0;
    }
}

/// `data` without its leading CR and LF bytes.
fn skip_crlf(data: &[u8]) -> &[u8] {
    let start = data
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(data.len());
    data.get(start..).unwrap_or_default()
}

/// True when `data` starts with a complete SIP start line: `SIP/2.0 ` (a status line), or a
/// method token, a space, a URI with a scheme (`sip:`, `sips:`, `tel:`...) and `SIP/2.0`.
/// RTP version 2 with a whole fixed header, and not RTCP (packet types 200 to 204).
fn looks_like_rtp(data: &[u8]) -> bool {
    data.len() >= 12 && data[0] >> 6 == 2 && !(200..=204).contains(&data[1])
}

fn looks_like_sip(data: &[u8]) -> bool {
    let Some(end) = data.iter().position(|b| matches!(b, b'\r' | b'\n')) else {
        return false;
    };
    let line = data.get(..end).unwrap_or_default();
    if line
        .get(..8)
        .is_some_and(|version| version.eq_ignore_ascii_case(b"SIP/2.0 "))
    {
        return true;
    }
    let mut parts = line.splitn(2, |b| *b == b' ');
    let (Some(method), Some(rest)) = (parts.next(), parts.next()) else {
        return false;
    };
    let method_ok = matches!(method.first(), Some(b'A'..=b'Z'))
        && method.len() <= 32
        && method
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'));
    let scheme_len = rest
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
        .unwrap_or(rest.len());
    let scheme_ok = (1..=16).contains(&scheme_len)
        && rest.first().is_some_and(u8::is_ascii_alphabetic)
        && rest.get(scheme_len) == Some(&b':');
    let version_ok = rest.len() >= 8
        && rest
            .get(rest.len() - 8..)
            .is_some_and(|version| version.eq_ignore_ascii_case(b" SIP/2.0"));
    method_ok && scheme_ok && version_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{Message, Method};
    use etherparse::{Ipv4Header, Ipv6Header, PacketBuilder, PacketBuilderStep, UdpHeader, VlanId};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn sample(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/pcap")
            .join(name)
    }

    /// A file in the temp directory, removed on drop.
    struct TempCapture(PathBuf);

    impl TempCapture {
        fn new(bytes: &[u8]) -> TempCapture {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "bridgehead-capture-{}-{}.cap",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, bytes).unwrap();
            TempCapture(path)
        }
    }

    impl Drop for TempCapture {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn read_bytes(bytes: &[u8]) -> Result<(Vec<CapturedSip>, Stats), CaptureError> {
        let file = TempCapture::new(bytes);
        read_with_stats(&file.0)
    }

    fn parse(message: &CapturedSip) -> Message {
        Message::parse(&message.bytes).unwrap_or_else(|err| {
            panic!(
                "{err:?}: {:?}",
                String::from_utf8_lossy(&message.bytes[..message.bytes.len().min(200)])
            )
        })
    }

    fn methods(messages: &[CapturedSip]) -> Vec<String> {
        messages
            .iter()
            .map(|m| {
                let msg = parse(m);
                match msg.method() {
                    Some(method) => format!("{method:?}"),
                    None => msg.status().unwrap().to_string(),
                }
            })
            .collect()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    // ---- captures -----------------------------------------------------------------------------

    /// A little-endian microsecond pcap file.
    fn pcap(link: u32, records: &[(Duration, Vec<u8>)]) -> Vec<u8> {
        pcap_with(link, records, false, false)
    }

    fn pcap_with(
        link: u32,
        records: &[(Duration, Vec<u8>)],
        big_endian: bool,
        nanos: bool,
    ) -> Vec<u8> {
        let u32b = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let u16b = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut out = Vec::new();
        out.extend(u32b(if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }));
        out.extend(u16b(2));
        out.extend(u16b(4));
        out.extend(u32b(0));
        out.extend(u32b(0));
        out.extend(u32b(262_144));
        out.extend(u32b(link));
        for (time, data) in records {
            let fraction = if nanos {
                time.subsec_nanos()
            } else {
                time.subsec_micros()
            };
            out.extend(u32b(time.as_secs() as u32));
            out.extend(u32b(fraction));
            out.extend(u32b(data.len() as u32));
            out.extend(u32b(data.len() as u32));
            out.extend(data);
        }
        out
    }

    fn pcapng_block(kind: u32, body: &[u8]) -> Vec<u8> {
        let padded = body.len().div_ceil(4) * 4;
        let total = (12 + padded) as u32;
        let mut out = Vec::new();
        out.extend(kind.to_le_bytes());
        out.extend(total.to_le_bytes());
        out.extend(body);
        out.resize(8 + padded, 0);
        out.extend(total.to_le_bytes());
        out
    }

    fn pcapng_section() -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(0x1a2b_3c4du32.to_le_bytes());
        body.extend(1u16.to_le_bytes());
        body.extend(0u16.to_le_bytes());
        body.extend((-1i64).to_le_bytes());
        pcapng_block(0x0a0d_0d0a, &body)
    }

    fn pcapng_interface(link: u16, tsresol: Option<u8>) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(link.to_le_bytes());
        body.extend(0u16.to_le_bytes());
        body.extend(0u32.to_le_bytes());
        if let Some(tsresol) = tsresol {
            body.extend(9u16.to_le_bytes());
            body.extend(1u16.to_le_bytes());
            body.extend([tsresol, 0, 0, 0]);
            body.extend([0u8; 4]); // opt_endofopt
        }
        pcapng_block(1, &body)
    }

    fn pcapng_packet(interface: u32, raw_time: u64, data: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(interface.to_le_bytes());
        body.extend(((raw_time >> 32) as u32).to_le_bytes());
        body.extend((raw_time as u32).to_le_bytes());
        body.extend((data.len() as u32).to_le_bytes());
        body.extend((data.len() as u32).to_le_bytes());
        body.extend(data);
        body.resize(body.len().div_ceil(4) * 4, 0);
        pcapng_block(6, &body)
    }

    // ---- frames -------------------------------------------------------------------------------

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn build(builder: PacketBuilderStep<UdpHeader>, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut out, payload).unwrap();
        out
    }

    fn udp4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        build(PacketBuilder::ipv4(src, dst, 64).udp(5060, 5080), payload)
    }

    fn udp6(src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
        build(PacketBuilder::ipv6(src, dst, 64).udp(5060, 5080), payload)
    }

    fn ethernet(ether_type: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(MAC_B);
        out.extend(MAC_A);
        out.extend(ether_type.to_be_bytes());
        out.extend(payload);
        out
    }

    fn pppoe_session(protocol: &[u8], ip: &[u8]) -> Vec<u8> {
        let mut out = vec![0x11, 0x00, 0x12, 0x34];
        out.extend(((protocol.len() + ip.len()) as u16).to_be_bytes());
        out.extend(protocol);
        out.extend(ip);
        out
    }

    fn sll(arphrd: u16, protocol: u16, ip: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(0u16.to_be_bytes()); // packet type: to us
        out.extend(arphrd.to_be_bytes());
        out.extend(6u16.to_be_bytes());
        out.extend([2, 0, 0, 0, 0, 1, 0, 0]);
        out.extend(protocol.to_be_bytes());
        out.extend(ip);
        out
    }

    fn sll2(arphrd: u16, protocol: u16, ip: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(protocol.to_be_bytes());
        out.extend(0u16.to_be_bytes());
        out.extend(3u32.to_be_bytes()); // interface index
        out.extend(arphrd.to_be_bytes());
        out.push(4); // outgoing
        out.push(6);
        out.extend([2, 0, 0, 0, 0, 1, 0, 0]);
        out.extend(ip);
        out
    }

    fn sip_request(method: &str, n: u32) -> Vec<u8> {
        format!(
            "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a{n}\r\n\
             To: <sip:bob@example.com>\r\nCall-ID: call-{n}\r\nCSeq: {n} {method}\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    fn sip_response(status: u16, n: u32, body: &str) -> Vec<u8> {
        format!(
            "SIP/2.0 {status} Whatever\r\nVia: SIP/2.0/TCP 192.0.2.1;branch=z9hG4bK{n}\r\n\
             From: <sip:alice@example.com>;tag=a{n}\r\nTo: <sip:bob@example.com>;tag=b\r\n\
             Call-ID: call-{n}\r\nCSeq: {n} INVITE\r\nContent-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\n\
                       t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(1_700_000_000_000 + millis)
    }

    // ---- real captures ------------------------------------------------------------------------

    #[test]
    fn pcap_ethernet_udp_proxy_call() {
        let (messages, stats) = read_with_stats(&sample("sip-proxy.pcap")).unwrap();
        assert_eq!(stats.packets, 11);
        assert_eq!(
            methods(&messages),
            ["Invite", "100", "Invite", "100", "180", "180", "200", "200", "Ack", "Bye", "200"]
        );
        assert!(messages.iter().all(|m| m.transport == Transport::Udp));
        assert_eq!(messages[0].src, addr("10.33.6.101:5060"));
        assert_eq!(messages[0].dst, addr("10.33.6.102:5080"));
        assert_eq!(messages[2].src, addr("10.33.6.102:5080"));
        assert_eq!(messages[2].dst, addr("10.33.6.100:5060"));
        assert_eq!(messages[0].at, Duration::ZERO);
        assert_eq!(messages[1].at, Duration::from_micros(24_724));
        assert_eq!(messages[10].at, Duration::from_micros(2_970_123));
    }

    #[test]
    fn pcapng_without_tsresol_is_microseconds() {
        let (messages, stats) = read_with_stats(&sample("sip-488-codec-reject.pcapng")).unwrap();
        assert_eq!(stats.packets, 13);
        let found = methods(&messages);
        let count = |name: &str| found.iter().filter(|m| *m == name).count();
        assert_eq!(messages.len(), 13);
        assert_eq!(count("Options"), 3);
        assert_eq!(count("Invite"), 2);
        assert_eq!(count("Ack"), 2);
        assert_eq!(count("488"), 1);
        assert_eq!(count("401"), 1);
        assert_eq!(messages[6].src, addr("192.168.8.183:5060"));
        assert_eq!(messages[6].dst, addr("192.168.8.13:5060"));
        assert_eq!(found[6], "Invite");
        assert_eq!(messages[4].src, addr("176.9.39.206:5010"));
        // 1566926808.953340 - 1566926798.890031
        assert_eq!(messages[12].at, Duration::from_micros(10_063_309));
    }

    #[test]
    fn tcp_capture_yields_whole_messages() {
        let (messages, stats) = read_with_stats(&sample("sip-over-tcp.pcap")).unwrap();
        assert!(stats.tcp > 7);
        assert_eq!(
            methods(&messages),
            ["Invite", "100", "180", "200", "Ack", "Bye", "200"]
        );
        let lengths: Vec<usize> = messages.iter().map(|m| m.bytes.len()).collect();
        assert_eq!(lengths, [788, 447, 499, 752, 536, 536, 477]);
        assert!(messages.iter().all(|m| m.transport == Transport::Tcp));
        let phone = addr("10.33.6.100:64802");
        let proxy = addr("10.33.6.101:5060");
        assert_eq!((messages[0].src, messages[0].dst), (phone, proxy));
        assert_eq!((messages[1].src, messages[1].dst), (proxy, phone));
        assert_eq!((messages[5].src, messages[5].dst), (proxy, phone));
        assert!(messages.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn pppoe_capture() {
        let (messages, _) = read_with_stats(&sample("DTMFsipinfo.pcap")).unwrap();
        let found = methods(&messages);
        let count = |name: &str| found.iter().filter(|m| *m == name).count();
        assert_eq!(messages.len(), 32);
        assert_eq!(count("Invite"), 5);
        assert_eq!(count("Cancel"), 2);
        assert_eq!(count("Ack"), 5);
        assert_eq!(count("Info"), 4);
        assert_eq!(
            found.iter().filter(|m| m.parse::<u16>().is_ok()).count(),
            16
        );
        assert_eq!(messages[0].src, addr("178.45.73.241:5060"));
        assert_eq!(messages[0].dst, addr("213.192.59.75:5060"));
        assert_eq!(messages[1].src, addr("178.45.73.241:1032"));
        assert_eq!(messages[2].src, addr("213.192.59.75:5060"));
        assert_eq!(messages[2].dst, addr("178.45.73.241:5060"));
    }

    #[test]
    fn linux_cooked_capture_without_sip() {
        let (messages, stats) = read_with_stats(&sample("speech_8k_ulaw-head.pcap")).unwrap();
        assert!(messages.is_empty());
        assert!(stats.packets > 0);
        assert_eq!(
            stats.udp, stats.packets,
            "every SLL frame decodes to UDP (RTP)"
        );
    }

    #[test]
    fn rtp_packets_come_with_their_sender_and_time() {
        let rtp = read_rtp(&sample("dtmf-2013785496-ulaw.pcap")).unwrap();
        assert_eq!(rtp.len(), 974);
        let sender: SocketAddr = "10.0.0.51:4000".parse().unwrap();
        assert!(rtp.iter().all(|p| p.src == sender && p.bytes[0] >> 6 == 2));
        assert_eq!(rtp[0].at, Duration::ZERO);
        assert!(rtp.windows(2).all(|pair| pair[0].at <= pair[1].at));
        let events = rtp.iter().filter(|p| p.bytes[1] & 0x7f == 101).count();
        assert_eq!(events, 120);
        assert!(read_capture(&sample("dtmf-2013785496-ulaw.pcap"))
            .unwrap()
            .is_empty());
    }

    // ---- synthetic framings -------------------------------------------------------------------

    #[test]
    fn ethernet_vlan_and_ipv6() {
        let invite = sip_request("INVITE", 1);
        let options = sip_request("OPTIONS", 2);
        let v6_src = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let v6_dst = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let single = build(
            PacketBuilder::ethernet2(MAC_A, MAC_B)
                .single_vlan(VlanId::try_new(100).unwrap())
                .ipv6(v6_src, v6_dst, 64)
                .udp(5060, 5080),
            &invite,
        );
        let double = build(
            PacketBuilder::ethernet2(MAC_A, MAC_B)
                .double_vlan(VlanId::try_new(10).unwrap(), VlanId::try_new(20).unwrap())
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(5060, 5080),
            &options,
        );
        let rtp = build(
            PacketBuilder::ethernet2(MAC_A, MAC_B)
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(4000, 4002),
            &[0x80, 0x00, 0x00, 0x01, 0, 0, 0, 160, 1, 2, 3, 4, 0xff, 0xff],
        );
        let keepalive = build(
            PacketBuilder::ethernet2(MAC_A, MAC_B)
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                .udp(5060, 5080),
            b"\r\n\r\n",
        );
        let arp = ethernet(0x0806, &[0u8; 28]);
        let file = pcap(
            1,
            &[
                (ms(0), single),
                (ms(5), rtp),
                (ms(6), keepalive),
                (ms(7), arp),
                (ms(10), double),
            ],
        );
        let (messages, stats) = read_bytes(&file).unwrap();
        assert_eq!(stats.supported, 5);
        assert_eq!(methods(&messages), ["Invite", "Options"]);
        assert_eq!(messages[0].bytes, invite);
        assert_eq!(messages[0].src, addr("[2001:db8::1]:5060"));
        assert_eq!(messages[0].dst, addr("[2001:db8::2]:5080"));
        assert_eq!(messages[1].src, addr("10.0.0.1:5060"));
        assert_eq!(messages[1].at, Duration::from_millis(10));
    }

    #[test]
    fn pppoe_ipv4_ipv6_vlan_and_compressed_protocol() {
        let v4 = udp4([192, 0, 2, 1], [192, 0, 2, 2], &sip_request("REGISTER", 1));
        let v6 = udp6(
            [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9],
            [0xfe; 16],
            &sip_request("BYE", 2),
        );
        let v4b = udp4([192, 0, 2, 3], [192, 0, 2, 4], &sip_request("NOTIFY", 3));
        let mut plain = ethernet(0x8864, &pppoe_session(&[0x00, 0x21], &v4));
        plain.extend([0u8; 7]); // trailer padding after the PPPoE length
        let ipv6 = ethernet(0x8864, &pppoe_session(&[0x00, 0x57], &v6));
        let mut tagged = Vec::new();
        tagged.extend(MAC_B);
        tagged.extend(MAC_A);
        tagged.extend([0x81, 0x00, 0x00, 0x2a, 0x88, 0x64]);
        tagged.extend(pppoe_session(&[0x21], &v4b));
        let lcp = ethernet(0x8864, &pppoe_session(&[0xc0, 0x21], &[1, 1, 0, 4]));
        let discovery = ethernet(0x8863, &[0x11, 0x09, 0, 0, 0, 0]);
        let file = pcap(
            1,
            &[
                (ms(0), plain),
                (ms(1), ipv6),
                (ms(2), tagged),
                (ms(3), lcp),
                (ms(4), discovery),
            ],
        );
        let (messages, stats) = read_bytes(&file).unwrap();
        assert_eq!(stats.udp, 3);
        assert_eq!(methods(&messages), ["Register", "Bye", "Notify"]);
        assert_eq!(messages[0].src, addr("192.0.2.1:5060"));
        assert_eq!(messages[0].bytes, sip_request("REGISTER", 1));
        assert_eq!(messages[1].src, addr("[fe80::9]:5060"));
        assert_eq!(messages[2].dst, addr("192.0.2.4:5080"));
    }

    #[test]
    fn linux_cooked_sll_and_sll2() {
        let v4 = udp4([127, 0, 0, 1], [127, 0, 0, 1], &sip_request("INVITE", 1));
        let v6 = udp6([0; 16], [0xff; 16], &sip_request("ACK", 1));
        let by_etherparse = {
            let builder = PacketBuilder::linux_sll(
                etherparse::LinuxSllPacketType::OUTGOING,
                6,
                [2, 0, 0, 0, 0, 1, 0, 0],
            )
            .ipv4([10, 1, 1, 1], [10, 1, 1, 2], 64)
            .udp(5060, 5060);
            let payload = sip_request("OPTIONS", 2);
            let mut out = Vec::with_capacity(builder.size(payload.len()));
            builder.write(&mut out, &payload).unwrap();
            out
        };
        let sll_file = pcap(
            113,
            &[
                (ms(0), sll(772, 0x0800, &v4)), // loopback, as `tcpdump -i any` writes it
                (ms(1), sll(65534, 0x86dd, &v6)), // tun
                (ms(2), by_etherparse),
            ],
        );
        let (messages, _) = read_bytes(&sll_file).unwrap();
        assert_eq!(methods(&messages), ["Invite", "Ack", "Options"]);
        assert_eq!(messages[0].src, addr("127.0.0.1:5060"));
        assert_eq!(messages[2].dst, addr("10.1.1.2:5060"));

        let sll2_file = pcap(
            276,
            &[
                (ms(0), sll2(1, 0x0800, &v4)),
                (ms(1), sll2(772, 0x86dd, &v6)),
                (ms(2), sll2(1, 0x0806, &[0u8; 28])),
            ],
        );
        let (messages, stats) = read_bytes(&sll2_file).unwrap();
        assert_eq!(stats.supported, 3);
        assert_eq!(methods(&messages), ["Invite", "Ack"]);
        assert_eq!(
            messages[1].dst,
            addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:5080")
        );
    }

    #[test]
    fn raw_ip_and_loopback_link_types() {
        let v4 = udp4([192, 0, 2, 1], [192, 0, 2, 2], &sip_request("INVITE", 7));
        let v6 = udp6([1; 16], [2; 16], &sip_request("INVITE", 8));
        for (link, frames) in [
            (101u32, vec![v4.clone(), v6.clone()]),
            (228, vec![v4.clone()]),
            (229, vec![v6.clone()]),
            (
                0,
                vec![
                    [&2u32.to_le_bytes()[..], &v4].concat(),
                    [&30u32.to_le_bytes()[..], &v6].concat(),
                ],
            ),
            (
                108,
                vec![
                    [&2u32.to_be_bytes()[..], &v4].concat(),
                    [&24u32.to_be_bytes()[..], &v6].concat(),
                ],
            ),
        ] {
            let records: Vec<_> = frames
                .iter()
                .enumerate()
                .map(|(i, f)| (ms(i as u64), f.clone()))
                .collect();
            let (messages, _) = read_bytes(&pcap(link, &records)).unwrap();
            assert_eq!(messages.len(), frames.len(), "link type {link}");
            assert!(messages
                .iter()
                .all(|m| parse(m).method() == Some(&Method::Invite)));
        }
    }

    // ---- IP fragments -------------------------------------------------------------------------

    /// An INVITE of over 3 KB: most of it an SDP offer with many ICE candidates.
    fn large_invite(n: u32) -> Vec<u8> {
        let mut sdp = String::from(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
             m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n",
        );
        for candidate in 0..40 {
            sdp.push_str(&format!(
                "a=candidate:{candidate} 1 udp 2122260223 192.0.2.1 {} typ host generation 0\r\n",
                40_000 + candidate
            ));
        }
        sdp.push_str("a=x-last-line-of-the-sdp\r\n");
        format!(
            "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a{n}\r\n\
             To: <sip:bob@example.com>\r\nCall-ID: call-{n}\r\nCSeq: 1 INVITE\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
        .into_bytes()
    }

    /// The UDP datagram `udp4` builds, cut into IPv4 fragments (identification `id`) of at most
    /// `mtu` bytes, as Ethernet frames in order.
    fn fragments4(id: u16, src: [u8; 4], dst: [u8; 4], payload: &[u8], mtu: usize) -> Vec<Vec<u8>> {
        let whole = udp4(src, dst, payload);
        let datagram = &whole[Ipv4Header::MIN_LEN..];
        let size = (mtu - Ipv4Header::MIN_LEN) / 8 * 8;
        datagram
            .chunks(size)
            .enumerate()
            .map(|(n, piece)| {
                let mut header =
                    Ipv4Header::new(piece.len() as u16, 64, IpNumber::UDP, src, dst).unwrap();
                header.identification = id;
                header.dont_fragment = false;
                header.more_fragments = (n + 1) * size < datagram.len();
                header.fragment_offset = IpFragOffset::try_new((n * size / 8) as u16).unwrap();
                header.header_checksum = header.calc_header_checksum();
                let mut ip = header.to_bytes().to_vec();
                ip.extend(piece);
                ethernet(0x0800, &ip)
            })
            .collect()
    }

    /// The UDP datagram `udp6` builds, cut into IPv6 fragments (a fragment header with
    /// identification `id`) of at most `mtu` bytes, as Ethernet frames in order.
    fn fragments6(
        id: u32,
        src: [u8; 16],
        dst: [u8; 16],
        payload: &[u8],
        mtu: usize,
    ) -> Vec<Vec<u8>> {
        let whole = udp6(src, dst, payload);
        let datagram = &whole[Ipv6Header::LEN..];
        let size = (mtu - Ipv6Header::LEN - Ipv6FragmentHeader::LEN) / 8 * 8;
        datagram
            .chunks(size)
            .enumerate()
            .map(|(n, piece)| {
                let header = Ipv6Header {
                    traffic_class: 0,
                    flow_label: Default::default(),
                    payload_length: (Ipv6FragmentHeader::LEN + piece.len()) as u16,
                    next_header: IpNumber::IPV6_FRAGMENTATION_HEADER,
                    hop_limit: 64,
                    source: src,
                    destination: dst,
                };
                // By hand, as RFC 8200 lays it out (etherparse 0.16's writer does not).
                let more = u16::from((n + 1) * size < datagram.len());
                let word = ((n * size / 8) as u16) << 3 | more;
                let mut ip = header.to_bytes().to_vec();
                ip.extend([u8::from(IpNumber::UDP), 0]);
                ip.extend(word.to_be_bytes());
                ip.extend(id.to_be_bytes());
                ip.extend(piece);
                ethernet(0x86dd, &ip)
            })
            .collect()
    }

    /// An Ethernet pcap of `frames`, one millisecond apart.
    fn ethernet_pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let records: Vec<_> = frames
            .iter()
            .enumerate()
            .map(|(i, frame)| (ms(i as u64), frame.clone()))
            .collect();
        pcap(1, &records)
    }

    #[test]
    fn ipv4_fragments_reassemble_in_any_order() {
        let invite = large_invite(1);
        assert!(invite.len() > 3_000);
        let pieces = fragments4(0x1234, [192, 0, 2, 1], [192, 0, 2, 2], &invite, 1500);
        assert_eq!(pieces.len(), 3);
        let bye = ethernet(
            0x0800,
            &udp4([192, 0, 2, 1], [192, 0, 2, 2], &sip_request("BYE", 2)),
        );
        let [a, b, c] = [&pieces[0], &pieces[1], &pieces[2]].map(|f| f.clone());
        // The frames, the index of the one that completes the datagram, and the datagrams left
        // unfinished at the end.
        for (order, frames, completing, unfinished) in [
            ("in order", vec![a.clone(), b.clone(), c.clone()], 2, 0),
            ("reversed", vec![c.clone(), b.clone(), a.clone()], 2, 0),
            ("last first", vec![c.clone(), a.clone(), b.clone()], 2, 0),
            // A repeated fragment is merged; one after completion starts a datagram that
            // never completes.
            (
                "with duplicates",
                vec![b.clone(), b.clone(), a.clone(), c.clone(), a.clone()],
                3,
                1,
            ),
        ] {
            let (messages, stats) = read_bytes(&ethernet_pcap(&frames)).unwrap();
            assert_eq!(messages.len(), 1, "{order}");
            assert_eq!(messages[0].bytes, invite, "{order}");
            assert_eq!(messages[0].transport, Transport::Udp);
            assert_eq!(messages[0].src, addr("192.0.2.1:5060"));
            assert_eq!(messages[0].dst, addr("192.0.2.2:5080"));
            // The time of the fragment that completed it.
            assert_eq!(messages[0].at, Duration::from_millis(completing), "{order}");
            assert_eq!(stats.reassembled, 1, "{order}");
            assert_eq!(stats.unfinished, unfinished, "{order}");
            assert_eq!(stats.fragments, frames.len() as u64, "{order}");
            assert_eq!(stats.udp, 1, "{order}");
        }
        // Two datagrams' fragments interleaved with whole packets: each finds its own.
        let other = large_invite(3);
        let others = fragments4(0x1235, [192, 0, 2, 1], [192, 0, 2, 2], &other, 1200);
        assert_eq!(others.len(), 3);
        let frames = vec![
            others[2].clone(),
            a.clone(),
            bye.clone(),
            others[0].clone(),
            c.clone(),
            others[1].clone(),
            b.clone(),
        ];
        let (messages, stats) = read_bytes(&ethernet_pcap(&frames)).unwrap();
        assert_eq!(stats.fragments, 6);
        assert_eq!(stats.reassembled, 2);
        assert_eq!(methods(&messages), ["Bye", "Invite", "Invite"]);
        assert_eq!(messages[1].bytes, other);
        assert_eq!(messages[1].at, Duration::from_millis(5));
        assert_eq!(messages[2].bytes, invite);
        assert_eq!(messages[2].at, Duration::from_millis(6));
        let parsed = parse(&messages[2]);
        assert!(String::from_utf8_lossy(&parsed.body).ends_with("a=x-last-line-of-the-sdp\r\n"));
    }

    #[test]
    fn ipv6_fragment_headers_reassemble() {
        let invite = large_invite(1);
        let src = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut frames = fragments6(0xdead_beef, src, dst, &invite, 1280);
        assert_eq!(frames.len(), 3);
        frames.swap(0, 1);
        // An atomic fragment (offset 0, no more fragments: RFC 8200 §4.5) is a whole datagram.
        let options = sip_request("OPTIONS", 2);
        let atomic = fragments6(1, src, dst, &options, 1500);
        assert_eq!(atomic.len(), 1);
        frames.push(atomic[0].clone());
        let (messages, stats) = read_bytes(&ethernet_pcap(&frames)).unwrap();
        assert_eq!(stats.reassembled, 1);
        assert_eq!(stats.fragments, 3);
        assert_eq!(methods(&messages), ["Invite", "Options"]);
        assert_eq!(messages[0].bytes, invite);
        assert_eq!(messages[0].src, addr("[2001:db8::1]:5060"));
        assert_eq!(messages[0].dst, addr("[2001:db8::2]:5080"));
        assert_eq!(messages[0].at, Duration::from_millis(2));
        assert_eq!(messages[1].bytes, options);
    }

    #[test]
    fn missing_fragments_yield_nothing() {
        let invite = large_invite(1);
        let v4 = fragments4(7, [192, 0, 2, 1], [192, 0, 2, 2], &invite, 1500);
        let v6 = fragments6(7, [1; 16], [2; 16], &invite, 1500);
        let bye = ethernet(
            0x0800,
            &udp4([192, 0, 2, 1], [192, 0, 2, 2], &sip_request("BYE", 2)),
        );
        // Each datagram misses one fragment: the first, a middle one, the last.
        let frames = vec![
            v4[1].clone(),
            v4[2].clone(),
            v6[0].clone(),
            v6[2].clone(),
            bye,
        ];
        let (messages, stats) = read_bytes(&ethernet_pcap(&frames)).unwrap();
        assert_eq!(methods(&messages), ["Bye"]);
        assert_eq!(stats.fragments, 4);
        assert_eq!(stats.reassembled, 0);
        assert_eq!(stats.unfinished, 2);
        let frames = vec![v4[0].clone(), v4[1].clone()];
        let (messages, stats) = read_bytes(&ethernet_pcap(&frames)).unwrap();
        assert!(messages.is_empty());
        assert_eq!(stats.unfinished, 1);
    }

    #[test]
    fn bad_fragments_are_refused_without_panic() {
        let invite = large_invite(1);
        let pieces = fragments4(9, [192, 0, 2, 1], [192, 0, 2, 2], &invite, 1500);
        // Offsets and flags are bytes 6 and 7 of the IPv4 header, after 14 of Ethernet (the
        // header checksums are left stale: they are not checked).
        const FLAGS: usize = 14 + 6;
        // A fragment whose length is not a multiple of 8 while more follow.
        let mut unaligned = udp4([192, 0, 2, 1], [192, 0, 2, 2], &sip_request("INVITE", 1));
        assert_ne!((unaligned.len() - Ipv4Header::MIN_LEN) % 8, 0);
        unaligned[6] = 0x20;
        let unaligned = ethernet(0x0800, &unaligned);
        // The middle fragment marked as the last: an end before the one already held.
        let mut early_end = pieces[1].clone();
        early_end[FLAGS] &= !0x20;
        // An offset that would end past 64 KiB.
        let mut too_far = pieces[1].clone();
        too_far[FLAGS] = 0x3f;
        too_far[FLAGS + 1] = 0xff;
        let frames = vec![
            unaligned,
            pieces[2].clone(),
            early_end,
            too_far,
            pieces[1].clone(),
            pieces[0].clone(),
        ];
        let (messages, stats) = read_bytes(&ethernet_pcap(&frames)).unwrap();
        assert_eq!(stats.fragments, 6);
        assert_eq!(stats.bad_fragments, 3);
        // The fragments that agree still make the datagram.
        assert_eq!(stats.reassembled, 1);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].bytes, invite);

        // Overlapping fragments of the same datagram cut two ways: exact.
        let other_cut = fragments4(9, [192, 0, 2, 1], [192, 0, 2, 2], &invite, 1000);
        assert_eq!(other_cut.len(), 4);
        let frames = vec![
            pieces[0].clone(),
            other_cut[1].clone(),
            pieces[1].clone(),
            other_cut[3].clone(),
        ];
        let (messages, stats) = read_bytes(&ethernet_pcap(&frames)).unwrap();
        assert_eq!(stats.reassembled, 1);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].bytes, invite);

        // Overlaps that disagree (the last fragment 8 bytes early, shorter than the UDP length
        // says): reassembled, found not to be a whole UDP datagram, and dropped.
        let mut shifted = pieces[2].clone();
        shifted[FLAGS + 1] -= 1;
        let frames = vec![pieces[0].clone(), shifted, pieces[1].clone()];
        let (messages, stats) = read_bytes(&ethernet_pcap(&frames)).unwrap();
        assert_eq!(stats.reassembled, 1);
        assert!(messages.is_empty());
    }

    #[test]
    fn reassembly_is_bounded_in_count_and_time() {
        let invite = large_invite(1);
        let datagrams: Vec<Vec<Vec<u8>>> = (0..100u16)
            .map(|id| fragments4(id, [192, 0, 2, 1], [192, 0, 2, 2], &invite, 1500))
            .collect();
        // 100 datagrams started: only the newest MAX_REASSEMBLIES are held.
        let mut frames: Vec<Vec<u8>> = datagrams.iter().map(|d| d[0].clone()).collect();
        // The newest completes; the oldest was pushed out, so its rest never completes.
        frames.extend([datagrams[99][1].clone(), datagrams[99][2].clone()]);
        frames.extend([datagrams[0][1].clone(), datagrams[0][2].clone()]);
        let (messages, stats) = read_bytes(&ethernet_pcap(&frames)).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].at, Duration::from_millis(101));
        assert_eq!(stats.reassembled, 1);
        // 36 pushed out, 63 unfinished at the end, and datagram 0's second start.
        assert_eq!(stats.unfinished, 100 - 64 + 63 + 1);
        assert_eq!(MAX_REASSEMBLIES, 64);

        // A fragment that comes after the timeout starts afresh: nothing completes.
        let pieces = &datagrams[5];
        let late = REASSEMBLY_TIMEOUT + Duration::from_secs(1);
        let records = [
            (ms(0), pieces[0].clone()),
            (ms(0) + late, pieces[1].clone()),
            (ms(0) + late, pieces[2].clone()),
        ];
        let (messages, stats) = read_bytes(&pcap(1, &records)).unwrap();
        assert!(messages.is_empty());
        assert_eq!(stats.unfinished, 2);
        // Within the timeout it completes.
        let records = [
            (ms(0), pieces[0].clone()),
            (ms(29_000), pieces[1].clone()),
            (ms(58_000), pieces[2].clone()),
        ];
        let (messages, _) = read_bytes(&pcap(1, &records)).unwrap();
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].at, Duration::from_secs(58));
    }

    #[test]
    fn recorded_fragmented_capture() {
        let (messages, stats) = read_with_stats(&sample("sip-fragmented-udp.pcap")).unwrap();
        assert_eq!(stats.packets, 12);
        assert_eq!(stats.fragments, 6);
        assert_eq!(stats.reassembled, 2);
        assert_eq!(stats.unfinished, 0);
        assert_eq!(
            methods(&messages),
            ["Invite", "100", "486", "Ack", "Invite", "100", "486", "Ack"]
        );
        assert_eq!(messages[0].src, addr("10.99.0.1:5060"));
        assert_eq!(messages[0].dst, addr("10.99.0.2:5060"));
        assert_eq!(messages[0].bytes.len(), 3171);
        assert_eq!(messages[4].src, addr("[fd00:99::1]:5060"));
        assert_eq!(messages[4].bytes.len(), 3198);
        for invite in [&messages[0], &messages[4]] {
            let body = parse(invite).body;
            assert!(body.len() >= 2_800, "{}", body.len());
            assert!(String::from_utf8_lossy(&body).ends_with("a=x-end-of-large-sdp\r\n"));
        }
    }

    // ---- TCP ----------------------------------------------------------------------------------

    struct Tcp {
        src: ([u8; 4], u16),
        dst: ([u8; 4], u16),
    }

    impl Tcp {
        fn segment(&self, seq: u32, syn: bool, payload: &[u8]) -> Vec<u8> {
            let builder = PacketBuilder::ethernet2(MAC_A, MAC_B)
                .ipv4(self.src.0, self.dst.0, 64)
                .tcp(self.src.1, self.dst.1, seq, 65535);
            let builder = if syn {
                builder.syn()
            } else {
                builder.ack(1).psh()
            };
            let mut out = Vec::with_capacity(builder.size(payload.len()));
            builder.write(&mut out, payload).unwrap();
            out
        }
    }

    const CLIENT: Tcp = Tcp {
        src: ([10, 0, 0, 1], 40000),
        dst: ([10, 0, 0, 2], 5060),
    };
    const SERVER: Tcp = Tcp {
        src: ([10, 0, 0, 2], 5060),
        dst: ([10, 0, 0, 1], 40000),
    };

    #[test]
    fn tcp_reassembly_in_order_out_of_order_and_duplicates() {
        let invite = sip_request("INVITE", 1);
        let ok = sip_response(200, 1, SDP);
        let ack = sip_request("ACK", 1);
        let bye = sip_request("BYE", 1);
        // Client: ISN near the wrap to exercise modulo arithmetic.
        let isn = u32::MAX - 100;
        let c = |offset: usize| isn.wrapping_add(1).wrapping_add(offset as u32);
        let (a, b) = invite.split_at(50);
        let (b, d) = b.split_at(100);
        let mut second = b"\r\n\r\n".to_vec(); // keep-alive before the ACK
        second.extend(&ack);
        second.extend(&bye);
        let after_invite = invite.len();
        // Server: the 200 arrives in two segments, out of order.
        let s_isn = 7_000u32;
        let s = |offset: usize| s_isn.wrapping_add(1).wrapping_add(offset as u32);
        let (ok1, ok2) = ok.split_at(100);
        let records = vec![
            (ms(0), CLIENT.segment(isn, true, &[])),
            (ms(1), SERVER.segment(s_isn, true, &[])),
            (ms(2), CLIENT.segment(c(0), false, a)),
            (ms(3), CLIENT.segment(c(50 + 100), false, d)), // ahead of a hole
            (ms(4), CLIENT.segment(c(0), false, a)),        // retransmission
            (ms(5), CLIENT.segment(c(50), false, b)),       // fills the hole: INVITE done
            (ms(6), CLIENT.segment(c(40), false, &invite[40..200])), // overlapping duplicate
            (ms(7), SERVER.segment(s(100), false, ok2)),
            (ms(8), SERVER.segment(s(0), false, ok1)), // 200 done
            (ms(9), CLIENT.segment(c(after_invite), false, &second)), // ACK and BYE
        ];
        let (messages, _) = read_bytes(&pcap(1, &records)).unwrap();
        assert_eq!(methods(&messages), ["Invite", "200", "Ack", "Bye"]);
        assert_eq!(messages[0].bytes, invite);
        assert_eq!(messages[0].at, Duration::from_millis(5));
        assert_eq!(messages[1].bytes, ok);
        assert_eq!(parse(&messages[1]).body, SDP.as_bytes());
        assert_eq!(messages[1].at, Duration::from_millis(8));
        assert_eq!(
            (messages[1].src, messages[1].dst),
            (addr("10.0.0.2:5060"), addr("10.0.0.1:40000"))
        );
        assert_eq!(messages[2].bytes, ack);
        assert_eq!(messages[3].bytes, bye);
        assert_eq!(messages[3].at, Duration::from_millis(9));
        assert!(messages.iter().all(|m| m.transport == Transport::Tcp));
    }

    #[test]
    fn tcp_joined_mid_stream_and_lost_segment() {
        let first = sip_request("INVITE", 1);
        let second = sip_request("OPTIONS", 2);
        let third = sip_request("INFO", 3);
        let fourth = sip_request("BYE", 4);
        let mut stream = Vec::new();
        stream.extend(&first);
        stream.extend(&second);
        stream.extend(&third);
        stream.extend(&fourth);
        let base = 1_000_000u32;
        let at = |offset: usize| base + offset as u32;
        let second_at = first.len();
        let third_at = second_at + second.len();
        let fourth_at = third_at + third.len();
        let records = vec![
            // No SYN; the capture starts in the middle of the INVITE.
            (
                ms(0),
                CLIENT.segment(at(100), false, &stream[100..second_at + 30]),
            ),
            (
                ms(1),
                CLIENT.segment(
                    at(second_at + 30),
                    false,
                    &stream[second_at + 30..third_at + 20],
                ),
            ),
            // third_at + 20 .. third_at + 60 is never captured.
            (
                ms(2),
                CLIENT.segment(at(third_at + 60), false, &stream[third_at + 60..]),
            ),
        ];
        let (messages, _) = read_bytes(&pcap(1, &records)).unwrap();
        assert_eq!(methods(&messages), ["Options", "Bye"]);
        assert_eq!(messages[0].bytes, second);
        assert_eq!(messages[0].at, Duration::from_millis(1));
        assert_eq!(messages[1].bytes, fourth);
        assert_eq!(messages[1].at, Duration::from_millis(2));
        let _ = fourth_at;
    }

    #[test]
    fn tcp_hole_that_never_fills_is_skipped() {
        let body = "x".repeat(1_000);
        let messages: Vec<Vec<u8>> = (0..300u32).map(|n| sip_response(200, n, &body)).collect();
        let mut records = vec![(ms(0), SERVER.segment(10, true, &[]))];
        let mut seq = 11u32;
        for (n, message) in messages.iter().enumerate() {
            if n == 0 {
                // Only the start of the first message is captured.
                records.push((ms(1), SERVER.segment(seq, false, &message[..50])));
            } else {
                records.push((ms(1 + n as u64), SERVER.segment(seq, false, message)));
            }
            seq += message.len() as u32;
        }
        let (found, _) = read_bytes(&pcap(1, &records)).unwrap();
        assert_eq!(found.len(), 299);
        for (n, message) in found.iter().enumerate() {
            assert_eq!(message.bytes, messages[n + 1]);
            assert_eq!(message.at, Duration::from_millis(2 + n as u64));
        }
    }

    #[test]
    fn tcp_non_sip_streams_are_dropped() {
        let tls = Tcp {
            src: ([10, 0, 0, 1], 40001),
            dst: ([10, 0, 0, 2], 443),
        };
        let http = Tcp {
            src: ([10, 0, 0, 1], 40002),
            dst: ([10, 0, 0, 2], 80),
        };
        let broken = Tcp {
            src: ([10, 0, 0, 1], 40003),
            dst: ([10, 0, 0, 2], 5060),
        };
        let mut hello = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
        hello.extend([0xab; 400]);
        let get = b"GET / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n";
        let conflicting = b"INVITE sip:x@y SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\nab";
        let records = vec![
            (ms(0), tls.segment(1, true, &[])),
            (ms(1), tls.segment(2, false, &hello)),
            (ms(2), http.segment(1, true, &[])),
            (ms(3), http.segment(2, false, get)),
            (ms(4), broken.segment(1, true, &[])),
            (ms(5), broken.segment(2, false, conflicting)),
            (
                ms(6),
                broken.segment(2 + conflicting.len() as u32, false, &sip_request("BYE", 1)),
            ),
            (ms(7), CLIENT.segment(1, true, &[])),
            (ms(8), CLIENT.segment(2, false, &sip_request("REGISTER", 1))),
        ];
        let (messages, _) = read_bytes(&pcap(1, &records)).unwrap();
        assert_eq!(methods(&messages), ["Register"]);
        assert_eq!(messages[0].at, Duration::from_millis(8));
    }

    #[test]
    fn tcp_connection_reused_after_new_syn() {
        let records = vec![
            (ms(0), CLIENT.segment(100, true, &[])),
            (
                ms(1),
                CLIENT.segment(101, false, &sip_request("INVITE", 1)[..80]),
            ),
            // A new connection on the same ports: the unfinished INVITE is dropped.
            (ms(2), CLIENT.segment(9_000, true, &[])),
            (
                ms(3),
                CLIENT.segment(9_001, false, &sip_request("OPTIONS", 2)),
            ),
        ];
        let (messages, _) = read_bytes(&pcap(1, &records)).unwrap();
        assert_eq!(methods(&messages), ["Options"]);
    }

    // ---- file formats -------------------------------------------------------------------------

    #[test]
    fn pcap_big_endian_nanoseconds() {
        let frame = udp4([192, 0, 2, 1], [192, 0, 2, 2], &sip_request("INVITE", 1));
        let records = [
            (Duration::new(1_700_000_000, 5), frame.clone()),
            (Duration::new(1_700_000_001, 7), frame),
        ];
        let (messages, _) = read_bytes(&pcap_with(101, &records, true, true)).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1].at, Duration::new(1, 2));
    }

    #[test]
    fn pcapng_interfaces_with_their_own_link_type_and_resolution() {
        let invite = udp4([192, 0, 2, 1], [192, 0, 2, 2], &sip_request("INVITE", 1));
        let trying = build(
            PacketBuilder::ethernet2(MAC_B, MAC_A)
                .ipv4([192, 0, 2, 2], [192, 0, 2, 1], 64)
                .udp(5080, 5060),
            &sip_response(100, 1, ""),
        );
        let ringing = udp4([192, 0, 2, 1], [192, 0, 2, 2], &sip_response(180, 1, ""));
        let options = udp4([192, 0, 2, 1], [192, 0, 2, 2], &sip_request("OPTIONS", 2));
        let mut file = pcapng_section();
        file.extend(pcapng_interface(101, Some(9))); // raw IP, nanoseconds
        file.extend(pcapng_interface(1, None)); // Ethernet, microseconds by default
        file.extend(pcapng_interface(101, Some(0x80 | 10))); // raw IP, 2^-10 s
        file.extend(pcapng_interface(105, Some(6))); // 802.11: not supported, skipped
        let t0 = 1_700_000_000u64;
        file.extend(pcapng_packet(0, t0 * 1_000_000_000 + 1_000, &invite));
        // Written before the INVITE's 100 Trying but captured after it: sorted by time.
        file.extend(pcapng_packet(2, (t0 + 2) * 1024 + 512, &ringing)); // t0 + 2.5 s
        file.extend(pcapng_packet(1, t0 * 1_000_000 + 250_000, &trying)); // t0 + 0.25 s
        file.extend(pcapng_packet(3, t0 * 1_000_000 + 100, &[0u8; 40]));
        file.extend(pcapng_packet(7, t0 * 1_000_000, &invite)); // no such interface
                                                                // A second section resets the interfaces.
        file.extend(pcapng_section());
        file.extend(pcapng_interface(228, Some(3))); // milliseconds
        file.extend(pcapng_packet(0, t0 * 1_000 + 3_000, &options));
        // A simple packet block (no timestamp: taken as captured with the previous packet)
        // and an obsolete packet block.
        let bye = udp4([192, 0, 2, 1], [192, 0, 2, 2], &sip_request("BYE", 3));
        let mut simple = (bye.len() as u32).to_le_bytes().to_vec();
        simple.extend(&bye);
        file.extend(pcapng_block(3, &simple));
        let ok = udp4([192, 0, 2, 2], [192, 0, 2, 1], &sip_response(200, 3, ""));
        let mut obsolete = Vec::new();
        obsolete.extend(0u16.to_le_bytes());
        obsolete.extend(0u16.to_le_bytes());
        let raw = t0 * 1_000 + 3_500;
        obsolete.extend(((raw >> 32) as u32).to_le_bytes());
        obsolete.extend((raw as u32).to_le_bytes());
        obsolete.extend((ok.len() as u32).to_le_bytes());
        obsolete.extend((ok.len() as u32).to_le_bytes());
        obsolete.extend(&ok);
        file.extend(pcapng_block(2, &obsolete));
        let (messages, stats) = read_bytes(&file).unwrap();
        assert_eq!(stats.packets, 8);
        assert_eq!(stats.supported, 6);
        assert_eq!(
            methods(&messages),
            ["Invite", "100", "180", "Options", "Bye", "200"]
        );
        assert_eq!(messages[0].at, Duration::ZERO);
        assert_eq!(messages[1].at, Duration::from_nanos(249_999_000));
        assert_eq!(messages[2].at, Duration::from_nanos(2_499_999_000));
        assert_eq!(messages[3].at, Duration::from_nanos(2_999_999_000));
        assert_eq!(messages[4].at, Duration::from_nanos(2_999_999_000));
        assert_eq!(messages[5].at, Duration::from_nanos(3_499_999_000));
        assert_eq!(messages[1].src, addr("192.0.2.2:5080"));
    }

    #[test]
    fn unsupported_link_type_is_an_error_naming_it() {
        let frame = vec![0u8; 60];
        let file = TempCapture::new(&pcap(105, &[(ms(0), frame.clone())]));
        let err = read_capture(&file.0).unwrap_err();
        assert!(matches!(err, CaptureError::UnsupportedLinkType { .. }));
        let text = err.to_string();
        assert!(text.contains("IEEE802_11 (105)"), "{text}");
        assert!(text.contains(&*file.0.to_string_lossy()), "{text}");

        let file = TempCapture::new(&pcap(4242, &[(ms(0), frame)]));
        let text = read_capture(&file.0).unwrap_err().to_string();
        assert!(text.contains("LINKTYPE 4242"), "{text}");

        // An unsupported interface next to a supported one is only skipped.
        let mut ng = pcapng_section();
        ng.extend(pcapng_interface(105, None));
        ng.extend(pcapng_interface(101, None));
        ng.extend(pcapng_packet(0, 1, &[0u8; 60]));
        ng.extend(pcapng_packet(
            1,
            2,
            &udp4([1, 1, 1, 1], [2, 2, 2, 2], &sip_request("BYE", 1)),
        ));
        let (messages, _) = read_bytes(&ng).unwrap();
        assert_eq!(messages.len(), 1);
    }

    #[test]
    fn bad_files() {
        let missing = Path::new("/nonexistent/bridgehead/capture.pcap");
        let err = read_capture(missing).unwrap_err();
        assert!(matches!(err, CaptureError::Open { .. }));
        assert!(err
            .to_string()
            .contains("/nonexistent/bridgehead/capture.pcap"));

        let text = TempCapture::new(b"INVITE sip:bob@example.com SIP/2.0\r\n");
        let err = read_capture(&text.0).unwrap_err();
        assert!(matches!(err, CaptureError::NotACapture { .. }), "{err}");
        assert!(err.to_string().contains(&*text.0.to_string_lossy()));

        let tiny = TempCapture::new(b"ab");
        assert!(matches!(
            read_capture(&tiny.0),
            Err(CaptureError::NotACapture { .. })
        ));

        let short = TempCapture::new(&[0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0]);
        assert!(matches!(
            read_capture(&short.0),
            Err(CaptureError::Malformed { .. })
        ));

        let no_packets = TempCapture::new(&pcap(1, &[]));
        assert!(read_capture(&no_packets.0).unwrap().is_empty());

        // A capture cut inside its last record keeps the records before it.
        let frame = udp4([192, 0, 2, 1], [192, 0, 2, 2], &sip_request("INVITE", 1));
        let mut cut = pcap(101, &[(ms(0), frame.clone()), (ms(1), frame)]);
        cut.truncate(cut.len() - 10);
        let (messages, _) = read_bytes(&cut).unwrap();
        assert_eq!(messages.len(), 1);
    }

    #[test]
    fn start_line_detection() {
        assert!(looks_like_sip(b"SIP/2.0 200 OK\r\n"));
        assert!(looks_like_sip(b"INVITE sip:a@b SIP/2.0\r\n"));
        assert!(looks_like_sip(b"MESSAGE tel:+15551234 SIP/2.0\n"));
        assert!(looks_like_sip(b"OPTIONS sips:b SIP/2.0\r\n"));
        assert!(!looks_like_sip(b"INVITE sip:a@b SIP/2.0")); // unfinished line
        assert!(!looks_like_sip(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_sip(b"GET http://a/ HTTP/1.1\r\n"));
        assert!(!looks_like_sip(b"invite sip:a@b SIP/2.0\r\n"));
        assert!(!looks_like_sip(b"\r\n\r\n"));
        assert!(!looks_like_sip(b""));
        assert!(!looks_like_sip(&[0x80, 0x00, b' ', b's', b':', b'\r']));
    }

    // ---- robustness ---------------------------------------------------------------------------

    /// Deterministic xorshift, so a failure can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn truncated_and_corrupted_captures_never_panic() {
        let mut inputs: Vec<(String, Vec<u8>)> = [
            "sip-proxy.pcap",
            "sip-488-codec-reject.pcapng",
            "sip-over-tcp.pcap",
            "DTMFsipinfo.pcap",
            "speech_8k_ulaw-head.pcap",
            "sip-fragmented-udp.pcap",
        ]
        .iter()
        .map(|name| (name.to_string(), std::fs::read(sample(name)).unwrap()))
        .collect();
        // Synthetic captures reach the framings and the TCP paths the samples do not.
        let mut ng = pcapng_section();
        ng.extend(pcapng_interface(113, Some(9)));
        ng.extend(pcapng_interface(276, Some(0x83)));
        let v4 = udp4([1, 1, 1, 1], [2, 2, 2, 2], &sip_request("INVITE", 1));
        ng.extend(pcapng_packet(0, 5, &sll(1, 0x0800, &v4)));
        ng.extend(pcapng_packet(1, 6, &sll2(1, 0x0800, &v4)));
        inputs.push(("synthetic.pcapng".into(), ng));
        let ok = sip_response(200, 1, SDP);
        inputs.push((
            "synthetic-tcp.pcap".into(),
            pcap(
                1,
                &[
                    (ms(0), CLIENT.segment(1, true, &[])),
                    (ms(1), SERVER.segment(2, false, &ok[..120])),
                    (ms(2), CLIENT.segment(2, false, &sip_request("INVITE", 1))),
                    (ms(3), SERVER.segment(122, false, &ok[120..])),
                    (ms(4), CLIENT.segment(9, false, b"junk\r\n\r\n")),
                    (ms(5), ethernet(0x8864, &pppoe_session(&[0, 0x21], &v4))),
                ],
            ),
        ));

        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut runs = 0;
        for (name, original) in &inputs {
            let len = original.len();
            // Truncations at many positions, including every byte of the headers.
            let step = (len / 150).max(1);
            let cuts = (0..len.min(64)).chain((64..len).step_by(step));
            for cut in cuts {
                let _ = read_bytes(&original[..cut]);
                runs += 1;
            }
            // Corruptions: single bytes, and 32-bit values that land on length fields.
            for round in 0..300 {
                let mut bytes = original.clone();
                let edits = 1 + rng.below(4);
                for _ in 0..edits {
                    let at = rng.below(len);
                    match round % 4 {
                        0 => {
                            if let Some(slot) = bytes.get_mut(at) {
                                *slot = rng.next() as u8;
                            }
                        }
                        1 => {
                            if let Some(slot) = bytes.get_mut(at) {
                                *slot ^= 0xff;
                            }
                        }
                        2 => {
                            let value = [0u32, 0xffff_ffff, 0x7fff_ffff, 0x0001_0000, 13]
                                [rng.below(5)]
                            .to_le_bytes();
                            for (i, b) in value.iter().enumerate() {
                                if let Some(slot) = bytes.get_mut(at + i) {
                                    *slot = *b;
                                }
                            }
                        }
                        _ => {
                            bytes.truncate(at.max(24));
                            bytes.extend((0..rng.below(64)).map(|_| rng.next() as u8));
                        }
                    }
                }
                if let Err(err) = read_bytes(&bytes) {
                    assert!(!err.to_string().is_empty(), "{name}");
                }
                runs += 1;
            }
        }
        assert!(runs > 2000);
    }
}
