//! What the media benchmark's two processes share (`examples/media_relay.rs`, the relay under
//! test, and `examples/rtp_load.rs`, the load generator): the port layout, the SRTP keys
//! both derive from a call's number, G.711 packets, and a process's CPU from /proc.

#![allow(dead_code)]

use bridgehead::media::{SrtpKey, Suite};

/// The relay's ports for call `call` from `first`: RTP (and RTCP above it) facing the caller,
/// then facing the callee.
pub fn relay_ports(first: u16, call: u16) -> (u16, u16) {
    let a = first + 4 * call;
    (a, a + 2)
}

/// The generator's ports for call `call` from `first`: the caller's socket, the callee's.
pub fn generator_ports(first: u16, call: u16) -> (u16, u16) {
    let a = first + 2 * call;
    (a, a + 1)
}

/// The SRTP keys of call `call`'s callee leg (the relay encrypts toward the callee with the
/// first, the callee toward the relay with the second): derived from the call's number so
/// both processes know them without a signalling path. A benchmark's keys, not secrets.
pub fn callee_keys(call: u16) -> (SrtpKey, SrtpKey) {
    let key = |direction: u8| {
        let mut material = [0u8; 30];
        for (i, byte) in material.iter_mut().enumerate() {
            *byte = (call as u8)
                .wrapping_mul(31)
                .wrapping_add((call >> 8) as u8)
                .wrapping_add(i as u8 * 7)
                .wrapping_add(direction * 101);
        }
        let (mut key, mut salt) = ([0u8; 16], [0u8; 14]);
        key.copy_from_slice(&material[..16]);
        salt.copy_from_slice(&material[16..]);
        SrtpKey {
            tag: 1,
            suite: SUITE,
            key,
            salt,
            mki_len: 0,
        }
    };
    (key(0), key(1))
}

/// The suite every benchmark key uses.
pub const SUITE: Suite = Suite::AesCm128HmacSha1_80;

/// A G.711 A-law RTP packet (12-byte header, 160 bytes of payload: 20 ms).
pub fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut packet = vec![0x80, 8];
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet.extend(std::iter::repeat_n(0xd5, 160));
    packet
}

/// CPU seconds (user + system) process `pid` used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}
