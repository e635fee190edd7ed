//! SRTP and SRTCP (RFC 3711) for the suites Bridgehead offers (AES_CM_128_HMAC_SHA1_80 and
//! _32, RFC 4568), **in place**: a packet is encrypted or decrypted in the buffer it is in and
//! its tag appended or removed, so the relay's per-packet path allocates nothing.
//!
//! `webrtc-srtp` returns each packet in a new buffer (three allocations per SRTP<->RTP packet
//! relayed, measured by `bench/compare-media.sh`); it stays as the test oracle of this module,
//! as rsip and sdp-rs are for SIP and SDP. The primitives are RustCrypto's `aes`, `ctr`,
//! `hmac` and `sha1`.

use super::{SrtpKey, Suite};
use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use aes::Aes128;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use std::collections::HashMap;

type AesCtr = ctr::Ctr128BE<Aes128>;

/// AES in counter mode from `iv` (SRTP's AES-CM: the whole 128-bit block counts up, which
/// for packets under 2^16 blocks is RFC 3711's 16-bit counter).
fn keystream(cipher: &Aes128, iv: &[u8; 16]) -> AesCtr {
    AesCtr::from_core(ctr::CtrCore::inner_iv_init(cipher.clone(), iv.into()))
}

/// Why a packet was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    #[error("packet too short or its header malformed")]
    Malformed,
    #[error("authentication failed")]
    Authentication,
    #[error("replayed or too old")]
    Replayed,
}

/// The session keys of one direction of RTP or RTCP (RFC 3711 §4.3).
struct SessionKeys {
    cipher: Aes128,
    salt: [u8; 14],
    auth: Hmac<Sha1>,
}

impl SessionKeys {
    /// The keys labelled `first`, `first + 1` and `first + 2` (encryption, authentication,
    /// salt) derived from the master key and salt, with a key derivation rate of 0.
    fn derive(master: &SrtpKey, first: u8) -> SessionKeys {
        let prf = Aes128::new(&master.key.into());
        let derive = |label: u8, out: &mut [u8]| {
            let mut iv = [0u8; 16];
            iv[..14].copy_from_slice(&master.salt);
            iv[7] ^= label;
            out.fill(0);
            keystream(&prf, &iv).apply_keystream(out);
        };
        let (mut key, mut auth, mut salt) = ([0u8; 16], [0u8; 20], [0u8; 14]);
        derive(first, &mut key);
        derive(first + 1, &mut auth);
        derive(first + 2, &mut salt);
        SessionKeys {
            cipher: Aes128::new(&key.into()),
            salt,
            // HMAC takes keys of any length: 20 bytes cannot fail.
            auth: <Hmac<Sha1> as Mac>::new_from_slice(&auth).unwrap_or_else(|_| unreachable!()),
        }
    }

    /// Applies the keystream of packet index `index` of `ssrc` to `data` (RFC 3711 §4.1.1).
    fn crypt(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (byte, ssrc) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *byte ^= ssrc;
        }
        for (byte, index) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *byte ^= index;
        }
        keystream(&self.cipher, &iv).apply_keystream(data);
    }

    /// The full HMAC-SHA1 of `data` then `trailer`.
    fn tag(&self, data: &[u8], trailer: &[u8]) -> [u8; 20] {
        let mut mac = self.auth.clone();
        mac.update(data);
        mac.update(trailer);
        mac.finalize().into_bytes().into()
    }
}

/// What a receiver or sender knows of one SSRC's packet indexes: the rollover counter, the
/// highest sequence number, and the replay window of the last 64 indexes.
#[derive(Clone, Copy, Debug, Default)]
struct Indexes {
    roc: u32,
    highest: u16,
    /// Bit n: index `highest_index - n` was seen.
    window: u64,
}

impl Indexes {
    fn highest_index(&self) -> u64 {
        u64::from(self.roc) << 16 | u64::from(self.highest)
    }

    /// The packet index of sequence number `seq` (RFC 3711 §3.3.1, Appendix A).
    fn estimate(&self, seq: u16) -> u64 {
        let roc = i64::from(self.roc);
        let (s_l, seq_i) = (i64::from(self.highest), i64::from(seq));
        let v = if s_l < 32_768 {
            if seq_i - s_l > 32_768 {
                roc - 1
            } else {
                roc
            }
        } else if s_l - 32_768 > seq_i {
            roc + 1
        } else {
            roc
        };
        // A negative rollover (a packet from before the first one) counts as index 0's.
        (v.max(0) as u64) << 16 | u64::from(seq)
    }

    /// Whether `index` is new: not seen, and not older than the window.
    fn fresh(&self, index: u64) -> bool {
        let highest = self.highest_index();
        match highest.checked_sub(index) {
            None => true,
            Some(age) if age >= 64 => false,
            Some(age) => self.window & (1 << age) == 0,
        }
    }

    /// Marks `index` seen.
    fn accept(&mut self, index: u64) {
        let highest = self.highest_index();
        if index > highest {
            let shift = index - highest;
            self.window = if shift >= 64 { 0 } else { self.window << shift };
            self.window |= 1;
            self.roc = (index >> 16) as u32;
            self.highest = index as u16;
        } else if highest - index < 64 {
            self.window |= 1 << (highest - index);
        }
    }
}

/// The SRTP and SRTCP state of one direction of one leg: its session keys and, per SSRC, the
/// packet indexes seen (receiving) or used (sending).
pub struct Srtp {
    rtp: SessionKeys,
    rtcp: SessionKeys,
    /// The SRTP tag length (10 or 4 bytes); SRTCP's is 10 in both suites (RFC 4568 §6.2).
    tag_len: usize,
    rtp_indexes: HashMap<u32, Indexes>,
    rtcp_indexes: HashMap<u32, Indexes>,
    /// The next SRTCP index to send, per SSRC.
    rtcp_next: HashMap<u32, u32>,
}

/// SRTCP's authentication tag length (80 bits in both suites).
const RTCP_TAG: usize = 10;

/// SSRCs one direction keeps state for. A leg sending plain RTP chooses the SSRCs Bridgehead
/// encrypts toward the other leg: past this many, the state starts afresh rather than grow.
const MAX_SSRCS: usize = 64;

/// Makes room for `ssrc` in `map` (see [`MAX_SSRCS`]).
fn room_for<V>(map: &mut HashMap<u32, V>, ssrc: u32) {
    if map.len() >= MAX_SSRCS && !map.contains_key(&ssrc) {
        map.clear();
    }
}

/// The length of an RTP packet's header (fixed part, CSRCs, extension), when it has one.
fn rtp_header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    if first >> 6 != 2 {
        return None;
    }
    let mut len = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let words = packet.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    (len <= packet.len()).then_some(len)
}

fn ssrc_at(packet: &[u8], at: usize) -> Option<u32> {
    let bytes = packet.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

impl Srtp {
    /// The state of one direction keyed with `key`.
    pub fn new(key: &SrtpKey) -> Srtp {
        Srtp {
            rtp: SessionKeys::derive(key, 0),
            rtcp: SessionKeys::derive(key, 3),
            tag_len: match key.suite {
                Suite::AesCm128HmacSha1_80 => 10,
                Suite::AesCm128HmacSha1_32 => 4,
            },
            rtp_indexes: HashMap::new(),
            rtcp_indexes: HashMap::new(),
            rtcp_next: HashMap::new(),
        }
    }

    /// Encrypts the RTP packet in `packet` and appends its tag.
    pub fn protect_rtp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let header = rtp_header_len(packet).ok_or(SrtpError::Malformed)?;
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = ssrc_at(packet, 8).ok_or(SrtpError::Malformed)?;
        room_for(&mut self.rtp_indexes, ssrc);
        let indexes = self.rtp_indexes.entry(ssrc).or_insert(Indexes {
            highest: seq,
            ..Indexes::default()
        });
        let index = indexes.estimate(seq);
        indexes.accept(index);
        let roc = (index >> 16) as u32;
        self.rtp.crypt(ssrc, index, &mut packet[header..]);
        let tag = self.rtp.tag(packet, &roc.to_be_bytes());
        packet.extend_from_slice(&tag[..self.tag_len]);
        Ok(())
    }

    /// Checks and decrypts the SRTP packet in `packet` (without MKI), removing its tag.
    pub fn unprotect_rtp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let signed = packet
            .len()
            .checked_sub(self.tag_len)
            .ok_or(SrtpError::Malformed)?;
        let header = rtp_header_len(&packet[..signed]).ok_or(SrtpError::Malformed)?;
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = ssrc_at(packet, 8).ok_or(SrtpError::Malformed)?;
        let known = self.rtp_indexes.get(&ssrc).copied();
        let indexes = known.unwrap_or(Indexes {
            highest: seq,
            ..Indexes::default()
        });
        let index = indexes.estimate(seq);
        if known.is_some() && !indexes.fresh(index) {
            return Err(SrtpError::Replayed);
        }
        let roc = (index >> 16) as u32;
        let (signed_part, tag) = packet.split_at(signed);
        let expected = self.rtp.tag(signed_part, &roc.to_be_bytes());
        if !constant_time_eq(&expected[..self.tag_len], tag) {
            return Err(SrtpError::Authentication);
        }
        packet.truncate(signed);
        self.rtp.crypt(ssrc, index, &mut packet[header..]);
        // Only an authentic packet makes room: a forged one must not reset the others.
        room_for(&mut self.rtp_indexes, ssrc);
        self.rtp_indexes
            .entry(ssrc)
            .or_insert(indexes)
            .accept(index);
        Ok(())
    }

    /// Encrypts the (compound) RTCP packet in `packet` and appends its index and tag.
    pub fn protect_rtcp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let ssrc = ssrc_at(packet, 4).ok_or(SrtpError::Malformed)?;
        room_for(&mut self.rtcp_next, ssrc);
        let next = self.rtcp_next.entry(ssrc).or_insert(0);
        let index = *next;
        *next = (*next + 1) & 0x7fff_ffff;
        self.rtcp.crypt(ssrc, u64::from(index), &mut packet[8..]);
        packet.extend_from_slice(&(index | 0x8000_0000).to_be_bytes());
        let tag = self.rtcp.tag(packet, &[]);
        packet.extend_from_slice(&tag[..RTCP_TAG]);
        Ok(())
    }

    /// Checks and decrypts the SRTCP packet in `packet` (without MKI), removing its index and
    /// tag.
    pub fn unprotect_rtcp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let signed = packet
            .len()
            .checked_sub(RTCP_TAG)
            .filter(|signed| *signed >= 12)
            .ok_or(SrtpError::Malformed)?;
        let ssrc = ssrc_at(packet, 4).ok_or(SrtpError::Malformed)?;
        let (signed_part, tag) = packet.split_at(signed);
        let expected = self.rtcp.tag(signed_part, &[]);
        if !constant_time_eq(&expected[..RTCP_TAG], tag) {
            return Err(SrtpError::Authentication);
        }
        let e_index = ssrc_at(packet, signed - 4).ok_or(SrtpError::Malformed)?;
        let (encrypted, index) = (e_index & 0x8000_0000 != 0, u64::from(e_index & 0x7fff_ffff));
        room_for(&mut self.rtcp_indexes, ssrc);
        let indexes = self.rtcp_indexes.entry(ssrc).or_default();
        if !indexes.fresh(index) {
            return Err(SrtpError::Replayed);
        }
        indexes.accept(index);
        packet.truncate(signed - 4);
        if encrypted {
            self.rtcp.crypt(ssrc, index, &mut packet[8..]);
        }
        Ok(())
    }
}

/// Compares two tags in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use webrtc_srtp::context::Context;
    use webrtc_srtp::protection_profile::ProtectionProfile;

    fn key(suite: Suite, seed: u8) -> SrtpKey {
        let mut key = [0u8; 16];
        let mut salt = [0u8; 14];
        key.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = seed.wrapping_mul(7).wrapping_add(i as u8));
        salt.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = seed.wrapping_add(3 * i as u8));
        SrtpKey {
            tag: 1,
            suite,
            key,
            salt,
            mki_len: 0,
        }
    }

    /// The oracle: webrtc-srtp with the same key.
    fn oracle(key: &SrtpKey) -> Context {
        let profile = match key.suite {
            Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        };
        Context::new(&key.key, &key.salt, profile, None, None).expect("context")
    }

    fn rtp(seq: u16, ssrc: u32, extension: bool) -> Vec<u8> {
        let mut packet = vec![if extension { 0x91 } else { 0x80 }, 8];
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        packet.extend_from_slice(&ssrc.to_be_bytes());
        if extension {
            // One CSRC and a one-word extension.
            packet.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            packet.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xaa, 0, 0]);
        }
        packet.extend((0..160).map(|i| (i as u8) ^ (seq as u8)));
        packet
    }

    fn receiver_report(ssrc: u32) -> Vec<u8> {
        let mut report = vec![0x81, 201, 0, 7];
        report.extend_from_slice(&ssrc.to_be_bytes());
        report.extend_from_slice(&0x0bad_cafeu32.to_be_bytes());
        report.extend_from_slice(&[
            0x05, 0, 0, 9, 0, 0, 0x10, 0x20, 0, 0, 0, 42, 1, 2, 3, 4, 0, 0, 0, 5,
        ]);
        report
    }

    #[test]
    fn packets_match_webrtc_srtp_both_ways_in_both_suites() {
        for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32] {
            let key = key(suite, 9);
            let (mut ours, mut theirs) = (Srtp::new(&key), oracle(&key));
            // Across a sequence number rollover, with and without CSRC and extension.
            for (n, seq) in (65_530u16..=65_535).chain(0..6).enumerate() {
                let clear = rtp(seq, 0x1111_2222, n % 3 == 0);
                let mut mine = clear.clone();
                ours.protect_rtp(&mut mine).expect("protect");
                let expected = theirs.encrypt_rtp(&clear).expect("oracle encrypts");
                assert_eq!(mine, expected.to_vec(), "{suite:?} seq {seq}");
            }
            // What the oracle encrypts, ours decrypts (a fresh receiver each).
            let (mut ours, mut theirs) = (Srtp::new(&key), oracle(&key));
            for seq in (65_533u16..=65_535).chain(0..3) {
                let clear = rtp(seq, 7, false);
                let mut secret = theirs.encrypt_rtp(&clear).expect("oracle").to_vec();
                ours.unprotect_rtp(&mut secret).expect("authentic");
                assert_eq!(secret, clear, "{suite:?} seq {seq}");
            }
        }
    }

    #[test]
    fn rtcp_matches_webrtc_srtp_both_ways() {
        let key = key(Suite::AesCm128HmacSha1_80, 3);
        let (mut ours, mut theirs) = (Srtp::new(&key), oracle(&key));
        let (mut ours_in, mut theirs_in) = (Srtp::new(&key), oracle(&key));
        for _ in 0..3 {
            let clear = receiver_report(0x5555_6666);
            let mut mine = clear.clone();
            ours.protect_rtcp(&mut mine).expect("protect");
            let decrypted = theirs_in
                .decrypt_rtcp(&mine)
                .expect("the oracle takes ours");
            assert_eq!(decrypted.to_vec(), clear);
            let mut secret = theirs.encrypt_rtcp(&clear).expect("oracle").to_vec();
            ours_in
                .unprotect_rtcp(&mut secret)
                .expect("ours takes the oracle's");
            assert_eq!(secret, clear);
        }
    }

    #[test]
    fn arbitrary_bytes_are_refused_without_panic() {
        use rand::{Rng, SeedableRng};
        let mut random = rand::rngs::StdRng::seed_from_u64(3711);
        let key = key(Suite::AesCm128HmacSha1_32, 1);
        let (mut receiver, mut sender) = (Srtp::new(&key), Srtp::new(&key));
        for _ in 0..20_000 {
            let len = random.random_range(0..200);
            let mut packet: Vec<u8> = (0..len).map(|_| random.random()).collect();
            if random.random_bool(0.5) {
                // Version 2, so the header parser goes further.
                if let Some(first) = packet.first_mut() {
                    *first = 0x80 | (*first & 0x3f);
                }
            }
            let mut copy = packet.clone();
            assert!(receiver.unprotect_rtp(&mut packet).is_err());
            let _ = receiver.unprotect_rtcp(&mut copy);
            let mut outgoing = copy.clone();
            let _ = sender.protect_rtp(&mut outgoing);
            let _ = sender.protect_rtcp(&mut copy);
        }
    }

    #[test]
    fn tampered_replayed_and_short_packets_are_refused() {
        let key = key(Suite::AesCm128HmacSha1_80, 5);
        let (mut sender, mut receiver) = (Srtp::new(&key), Srtp::new(&key));
        let mut first = rtp(100, 1, false);
        sender.protect_rtp(&mut first).expect("protect");
        let mut tampered = first.clone();
        tampered[20] ^= 1;
        assert_eq!(
            receiver.unprotect_rtp(&mut tampered),
            Err(SrtpError::Authentication)
        );
        let mut again = first.clone();
        receiver.unprotect_rtp(&mut first).expect("authentic");
        assert_eq!(receiver.unprotect_rtp(&mut again), Err(SrtpError::Replayed));
        for short in [vec![], vec![0x80; 5], vec![0x80; 21]] {
            let mut short = short;
            assert!(receiver.unprotect_rtp(&mut short).is_err());
            assert!(receiver.unprotect_rtcp(&mut short).is_err());
        }
        // A plain leg spraying SSRCs does not grow the state past MAX_SSRCS.
        for ssrc in 1000..1000 + 3 * MAX_SSRCS as u32 {
            let mut sprayed = rtp(1, ssrc, false);
            sender.protect_rtp(&mut sprayed).expect("protect");
            assert!(sender.rtp_indexes.len() <= MAX_SSRCS);
        }
        // A sender relaying packets far out of order (past the window) protects them all.
        for seq in [200u16, 100, 300, 1] {
            let mut late = rtp(seq, 2, false);
            sender.protect_rtp(&mut late).expect("protect");
        }
        // A later packet, then an earlier one still inside the window, both pass once.
        let (mut p101, mut p103) = (rtp(101, 1, false), rtp(103, 1, false));
        sender.protect_rtp(&mut p101).expect("protect");
        sender.protect_rtp(&mut p103).expect("protect");
        receiver.unprotect_rtp(&mut p103).expect("later");
        receiver
            .unprotect_rtp(&mut p101)
            .expect("earlier, in the window");
    }
}
