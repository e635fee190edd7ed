//! HEP version 3 (the Homer Encapsulation Protocol that Homer, heplify-server and sngrep read):
//! a captured packet with its addresses, time, capture agent and correlation id, as chunks of
//! (vendor 0, type, length, value) after a `HEP3` header with the total length. All numbers
//! are big-endian.

use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

/// Chunk types of the generic vendor (0) used here.
mod chunk {
    pub const IP_FAMILY: u16 = 0x0001;
    pub const IP_PROTOCOL: u16 = 0x0002;
    pub const IPV4_SOURCE: u16 = 0x0003;
    pub const IPV4_DESTINATION: u16 = 0x0004;
    pub const IPV6_SOURCE: u16 = 0x0005;
    pub const IPV6_DESTINATION: u16 = 0x0006;
    pub const SOURCE_PORT: u16 = 0x0007;
    pub const DESTINATION_PORT: u16 = 0x0008;
    pub const SECONDS: u16 = 0x0009;
    pub const MICROSECONDS: u16 = 0x000a;
    pub const PROTOCOL_TYPE: u16 = 0x000b;
    pub const AGENT_ID: u16 = 0x000c;
    pub const PASSWORD: u16 = 0x000e;
    pub const PAYLOAD: u16 = 0x000f;
    pub const CORRELATION_ID: u16 = 0x0011;
}

/// The payload's protocol (HEP's "protocol type" chunk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload {
    Sip = 1,
    /// An RTCP report as JSON (what Homer shows as call quality).
    RtcpJson = 5,
}

/// One packet to encapsulate.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// True for TCP (and TLS), false for UDP.
    pub stream: bool,
    pub at: SystemTime,
    pub kind: Payload,
    pub payload: &'a [u8],
    /// Ties packets of one call together (Bridgehead: the A-leg Call-ID).
    pub correlation: Option<&'a [u8]>,
}

/// Who captured: the agent id and the collector's password, when it wants one.
#[derive(Clone, Debug, Default)]
pub struct Agent {
    pub id: u32,
    pub password: Option<String>,
}

fn put(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    // A chunk's length counts its own 6-byte header; `encode` keeps values far below 64 KiB.
    out.extend_from_slice(&((value.len() + 6) as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// The largest payload a HEP packet carries here (the total length is 16 bits).
pub const MAX_PAYLOAD: usize = 60_000;

/// Encodes `packet` into `out` (cleared first). A payload past [`MAX_PAYLOAD`] is cut there.
pub fn encode(packet: &Packet<'_>, agent: &Agent, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"HEP3\0\0");
    let v4 = matches!(
        (packet.source.ip(), packet.destination.ip()),
        (IpAddr::V4(_), IpAddr::V4(_))
    );
    put(out, chunk::IP_FAMILY, &[if v4 { 2 } else { 10 }]);
    put(
        out,
        chunk::IP_PROTOCOL,
        &[if packet.stream { 6 } else { 17 }],
    );
    let ip = |addr: IpAddr| -> Vec<u8> {
        match addr {
            IpAddr::V4(ip) if v4 => ip.octets().to_vec(),
            IpAddr::V4(ip) => ip.to_ipv6_mapped().octets().to_vec(),
            IpAddr::V6(ip) => ip.octets().to_vec(),
        }
    };
    let (source, destination) = if v4 {
        (chunk::IPV4_SOURCE, chunk::IPV4_DESTINATION)
    } else {
        (chunk::IPV6_SOURCE, chunk::IPV6_DESTINATION)
    };
    put(out, source, &ip(packet.source.ip()));
    put(out, destination, &ip(packet.destination.ip()));
    put(out, chunk::SOURCE_PORT, &packet.source.port().to_be_bytes());
    put(
        out,
        chunk::DESTINATION_PORT,
        &packet.destination.port().to_be_bytes(),
    );
    let since = packet.at.duration_since(UNIX_EPOCH).unwrap_or_default();
    // HEP's seconds are 32 bits (until 2106).
    put(out, chunk::SECONDS, &(since.as_secs() as u32).to_be_bytes());
    put(
        out,
        chunk::MICROSECONDS,
        &since.subsec_micros().to_be_bytes(),
    );
    put(out, chunk::PROTOCOL_TYPE, &[packet.kind as u8]);
    put(out, chunk::AGENT_ID, &agent.id.to_be_bytes());
    if let Some(password) = &agent.password {
        put(
            out,
            chunk::PASSWORD,
            &password.as_bytes()[..password.len().min(256)],
        );
    }
    if let Some(correlation) = packet.correlation {
        put(
            out,
            chunk::CORRELATION_ID,
            &correlation[..correlation.len().min(256)],
        );
    }
    let payload = &packet.payload[..packet.payload.len().min(MAX_PAYLOAD)];
    put(out, chunk::PAYLOAD, payload);
    let total = out.len() as u16;
    out[4..6].copy_from_slice(&total.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The chunks of a HEP3 packet by type (a decoder written from the specification, apart
    /// from the encoder).
    fn chunks(packet: &[u8]) -> Vec<(u16, Vec<u8>)> {
        assert_eq!(&packet[..4], b"HEP3");
        let total = u16::from_be_bytes([packet[4], packet[5]]) as usize;
        assert_eq!(total, packet.len());
        let mut at = 6;
        let mut found = Vec::new();
        while at < total {
            assert_eq!(&packet[at..at + 2], &[0, 0], "vendor 0");
            let kind = u16::from_be_bytes([packet[at + 2], packet[at + 3]]);
            let len = u16::from_be_bytes([packet[at + 4], packet[at + 5]]) as usize;
            found.push((kind, packet[at + 6..at + len].to_vec()));
            at += len;
        }
        assert_eq!(at, total);
        found
    }

    #[test]
    fn a_sip_message_is_encapsulated_with_its_addresses_time_and_correlation() {
        let mut out = Vec::new();
        let at = UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_789);
        let packet = Packet {
            source: "192.0.2.1:5060".parse().expect("addr"),
            destination: "198.51.100.7:5080".parse().expect("addr"),
            stream: false,
            at,
            kind: Payload::Sip,
            payload: b"OPTIONS sip:x SIP/2.0\r\n\r\n",
            correlation: Some(b"abc@host"),
        };
        let agent = Agent {
            id: 2001,
            password: Some("secret".into()),
        };
        encode(&packet, &agent, &mut out);
        let found = chunks(&out);
        let value = |kind: u16| {
            found
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("chunk {kind:#x} missing"))
        };
        assert_eq!(value(chunk::IP_FAMILY), [2]);
        assert_eq!(value(chunk::IP_PROTOCOL), [17]);
        assert_eq!(value(chunk::IPV4_SOURCE), [192, 0, 2, 1]);
        assert_eq!(value(chunk::IPV4_DESTINATION), [198, 51, 100, 7]);
        assert_eq!(value(chunk::SOURCE_PORT), 5060u16.to_be_bytes());
        assert_eq!(value(chunk::DESTINATION_PORT), 5080u16.to_be_bytes());
        assert_eq!(value(chunk::SECONDS), 1_800_000_000u32.to_be_bytes());
        assert_eq!(value(chunk::MICROSECONDS), 123_456u32.to_be_bytes());
        assert_eq!(value(chunk::PROTOCOL_TYPE), [1]);
        assert_eq!(value(chunk::AGENT_ID), 2001u32.to_be_bytes());
        assert_eq!(value(chunk::PASSWORD), b"secret");
        assert_eq!(value(chunk::CORRELATION_ID), b"abc@host");
        assert_eq!(value(chunk::PAYLOAD), packet.payload);
    }

    #[test]
    fn ipv6_and_streams_use_their_chunks_and_a_mixed_pair_is_mapped() {
        let mut out = Vec::new();
        let packet = Packet {
            source: "[2001:db8::1]:5061".parse().expect("addr"),
            destination: "192.0.2.9:5061".parse().expect("addr"),
            stream: true,
            at: UNIX_EPOCH,
            kind: Payload::Sip,
            payload: b"x",
            correlation: None,
        };
        encode(&packet, &Agent::default(), &mut out);
        let found = chunks(&out);
        assert!(found.contains(&(chunk::IP_FAMILY, vec![10])));
        assert!(found.contains(&(chunk::IP_PROTOCOL, vec![6])));
        let mapped: std::net::Ipv6Addr = "::ffff:192.0.2.9".parse().expect("v6");
        assert!(found.contains(&(chunk::IPV6_DESTINATION, mapped.octets().to_vec())));
        assert!(!found.iter().any(|(k, _)| *k == chunk::CORRELATION_ID));
    }
}
