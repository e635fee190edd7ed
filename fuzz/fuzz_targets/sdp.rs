//! The SDP model on arbitrary bytes: never a panic; whatever parses serializes to bytes that
//! parse again with the same media sections.
#![no_main]

use bridgehead::sdp::Sdp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sdp) = Sdp::parse(data) {
        let again =
            Sdp::parse(&sdp.to_bytes()).expect("a parsed SDP serializes to one that parses");
        assert_eq!(again.media().len(), sdp.media().len());
        for (a, b) in again.media().iter().zip(sdp.media()) {
            assert_eq!(a.port(), b.port());
            assert_eq!(a.formats(), b.formats());
        }
    }
});
