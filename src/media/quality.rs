//! Call quality from RTCP (RFC 3550): the report blocks a leg sends say how it receives the
//! media Bridgehead relays to it (fraction lost, jitter); the sender reports passing through
//! let Bridgehead time the round trip to that leg. The E-model (ITU-T G.107) turns them into an
//! estimated MOS.

use std::time::Duration;

/// One reception report block of an SR or RR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportBlock {
    /// Fraction of packets lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
    /// The middle 32 bits of the NTP time of the last SR the leg received (0: none).
    pub last_sr: u32,
    /// Time since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

/// What a compound RTCP packet carries that quality needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rtcp {
    /// The middle 32 bits of the NTP time of each SR in it (as a later LSR refers to it).
    pub sender_reports: Vec<u32>,
    /// Report blocks of its SRs and RRs.
    pub blocks: Vec<ReportBlock>,
}

/// Parses a (decrypted) compound RTCP packet; None when it is not RTCP.
pub fn parse_rtcp(mut packet: &[u8]) -> Option<Rtcp> {
    let mut out = Rtcp::default();
    while packet.len() >= 4 {
        if packet[0] >> 6 != 2 {
            return None;
        }
        let count = usize::from(packet[0] & 0x1f);
        let kind = packet[1];
        let length = (usize::from(u16::from_be_bytes([packet[2], packet[3]])) + 1) * 4;
        let body = packet.get(4..length)?;
        let blocks = match kind {
            200 => {
                // SR: sender SSRC, NTP (8), RTP ts, packets, octets; then the blocks.
                let ntp = body.get(4..12)?;
                out.sender_reports
                    .push(u32::from_be_bytes([ntp[2], ntp[3], ntp[4], ntp[5]]));
                body.get(24..)?
            }
            201 => body.get(4..)?,
            192..=223 => &[][..],
            _ => return None,
        };
        for block in blocks.chunks_exact(24).take(count) {
            out.blocks.push(ReportBlock {
                fraction_lost: block[4],
                jitter: u32::from_be_bytes([block[12], block[13], block[14], block[15]]),
                last_sr: u32::from_be_bytes([block[16], block[17], block[18], block[19]]),
                delay_since_last_sr: u32::from_be_bytes([
                    block[20], block[21], block[22], block[23],
                ]),
            });
        }
        packet = packet.get(length..)?;
    }
    // Trailing bytes that are no whole RTCP header: not a well-formed compound packet.
    packet.is_empty().then_some(out)
}

/// The middle 32 bits of an NTP timestamp for a time since some epoch (only differences of
/// these matter).
pub fn ntp_middle(since: Duration) -> u32 {
    let seconds = since.as_secs() as u32;
    let fraction = ((u64::from(since.subsec_nanos()) << 16) / 1_000_000_000) as u32;
    (seconds << 16) | (fraction & 0xffff)
}

/// Round trip from a report block: now − LSR − DLSR (RFC 3550 §6.4.1), all as NTP middle bits.
pub fn round_trip(now_ntp: u32, block: &ReportBlock) -> Option<Duration> {
    if block.last_sr == 0 {
        return None;
    }
    let units = now_ntp
        .wrapping_sub(block.last_sr)
        .wrapping_sub(block.delay_since_last_sr);
    // A negative (wrapped) result means clocks or reports that do not fit: no estimate.
    (units < 0x8000_0000).then(|| Duration::from_micros(u64::from(units) * 1_000_000 / 65_536))
}

/// Estimated MOS (ITU-T G.107 E-model) for G.711 with packet loss concealment: one-way delay
/// (ms) and packet loss (percent, random).
pub fn mos(one_way_delay_ms: f64, loss_percent: f64) -> f64 {
    // Defaults of G.107: R0 - Is = 93.2; G.711 with PLC: Ie = 0, Bpl = 25.1; random loss.
    const R_DEFAULT: f64 = 93.2;
    const BPL: f64 = 25.1;
    let d = one_way_delay_ms.max(0.0);
    let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
    let ppl = loss_percent.clamp(0.0, 100.0);
    let ie_eff = 95.0 * ppl / (ppl + BPL);
    let r = R_DEFAULT - id - ie_eff;
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + 7.0e-6 * r * (r - 60.0) * (100.0 - r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver_report(fraction: u8, jitter: u32, lsr: u32, dlsr: u32) -> Vec<u8> {
        let mut packet = vec![0x81, 201, 0, 7, 0, 0, 0, 1];
        packet.extend_from_slice(&[0, 0, 0, 2, fraction, 0, 0, 3, 0, 0, 0x10, 0]);
        packet.extend_from_slice(&jitter.to_be_bytes());
        packet.extend_from_slice(&lsr.to_be_bytes());
        packet.extend_from_slice(&dlsr.to_be_bytes());
        packet
    }

    #[test]
    fn reports_are_read_from_compound_packets() {
        let mut sr = vec![0x80, 200, 0, 6, 0, 0, 0, 9];
        sr.extend_from_slice(&[0x00, 0x00, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc]);
        sr.extend_from_slice(&[0; 12]);
        let mut compound = sr.clone();
        compound.extend(receiver_report(64, 80, 0x1234_5678, 0x0001_0000));
        compound.extend_from_slice(&[0x81, 202, 0, 1, 0, 0, 0, 9]); // SDES, skipped
        let rtcp = parse_rtcp(&compound).expect("rtcp");
        assert_eq!(rtcp.sender_reports, [0x1234_5678]);
        assert_eq!(
            rtcp.blocks,
            [ReportBlock {
                fraction_lost: 64,
                jitter: 80,
                last_sr: 0x1234_5678,
                delay_since_last_sr: 0x0001_0000,
            }]
        );
        assert_eq!(
            parse_rtcp(&[0x80, 8, 0, 1, 0, 0, 0, 0]),
            None,
            "RTP is not RTCP"
        );
        assert_eq!(parse_rtcp(&compound[..30]), None, "truncated");
    }

    #[test]
    fn round_trip_subtracts_the_time_the_leg_held_the_report() {
        let block = ReportBlock {
            fraction_lost: 0,
            jitter: 0,
            last_sr: ntp_middle(Duration::from_millis(1000)),
            delay_since_last_sr: 65536 / 2,
        };
        let rtt = round_trip(ntp_middle(Duration::from_millis(1600)), &block).expect("rtt");
        assert!(
            rtt.abs_diff(Duration::from_millis(100)) < Duration::from_millis(1),
            "{rtt:?}"
        );
        assert_eq!(
            round_trip(ntp_middle(Duration::from_millis(1200)), &block),
            None
        );
        let none = ReportBlock {
            last_sr: 0,
            ..block
        };
        assert_eq!(round_trip(1, &none), None);
    }

    #[test]
    fn mos_follows_g107_reference_points() {
        // G.107 defaults: R = 93.2, MOS 4.41.
        assert!((mos(0.0, 0.0) - 4.41).abs() < 0.01, "{}", mos(0.0, 0.0));
        // 2 % random loss on G.711 with PLC: Ie,eff = 95 * 2 / 27.1 = 7.01, R = 86.19.
        assert!((mos(0.0, 2.0) - 4.235).abs() < 0.01, "{}", mos(0.0, 2.0));
        // 300 ms one way: Id = 7.2 + 13.5 = 20.7, R = 72.5, MOS 3.70.
        assert!((mos(300.0, 0.0) - 3.70).abs() < 0.02, "{}", mos(300.0, 0.0));
        assert!(mos(0.0, 100.0) < 1.5);
        assert_eq!(mos(2000.0, 50.0), 1.0);
    }
}
