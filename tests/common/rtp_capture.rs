//! The RTP of a capture, for media tests (shared by the relay's unit tests and the end-to-end
//! tests).

/// The UDP payloads of a pcap with Linux cooked headers (the Asterisk testsuite's DTMF
/// captures), in capture order.
pub fn udp_payloads(path: &str) -> Vec<Vec<u8>> {
    let file = std::fs::File::open(path).expect("capture");
    let mut reader = pcap_file::pcap::PcapReader::new(file).expect("pcap");
    let mut packets = Vec::new();
    while let Some(Ok(packet)) = reader.next_packet() {
        // 16-byte Linux cooked header, then IP.
        let Some(ip) = packet.data.get(16..) else {
            continue;
        };
        if let Ok(sliced) = etherparse::SlicedPacket::from_ip(ip) {
            if let Some(etherparse::TransportSlice::Udp(udp)) = sliced.transport {
                packets.push(udp.payload().to_vec());
            }
        }
    }
    packets
}

/// The Asterisk testsuite capture of the digits 2013785496: PCMU audio carrying them as tones
/// (with a large DC offset), and RFC 2833 events (payload type 101) for the same digits.
pub const ASTERISK_DTMF: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/pcap/dtmf-2013785496-ulaw.pcap"
);
