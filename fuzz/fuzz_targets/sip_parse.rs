//! The SIP parser and stream framing on arbitrary bytes: never a panic; whatever parses
//! serializes to bytes that parse again to the same start line and headers (Content-Length
//! aside: serializing writes the one the body has).
#![no_main]

use bridgehead::sip::{frame_stream, parse_message, Framing, HeaderName, Message};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let _ = frame_stream(data);
    for framing in [Framing::Datagram, Framing::Stream] {
        if let Ok((msg, used)) = parse_message(&bytes, framing) {
            assert!(used <= data.len());
            let again = Message::parse(&Bytes::from(msg.to_bytes()))
                .expect("a parsed message serializes to one that parses");
            assert_eq!(again.start, msg.start);
            let others = |m: &Message| {
                m.headers
                    .iter()
                    .filter(|h| h.name != HeaderName::ContentLength)
                    .count()
            };
            assert_eq!(others(&again), others(&msg));
        }
    }
});
