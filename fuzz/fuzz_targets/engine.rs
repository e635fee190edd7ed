//! The engine fed a sequence of datagrams from its two trunks and clock ticks (the bundled
//! default profile: media anchored, SRTP toward Teams, the default rules): never a panic, and
//! what it sends always parses.
//!
//! The input is a sequence of records: one byte (what: 0 a datagram from the core, 1 one
//! from Teams, 2 time passing), two bytes of length (big-endian), then that many bytes (the
//! datagram; for time, its length is the milliseconds).
#![no_main]

use bridgehead::config::{Profile, Transport};
use bridgehead::sip::Message;
use bridgehead::{Engine, Peer, RuleSet};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn rules() -> Arc<RuleSet> {
    static RULES: OnceLock<Arc<RuleSet>> = OnceLock::new();
    RULES
        .get_or_init(|| {
            let path = Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../profiles/default.yaml"
            ));
            let text = std::fs::read_to_string(path).expect("default profile");
            let profile = Profile::parse(path, &text).expect("profile");
            RuleSet::load(Arc::new(profile), 1, Default::default()).expect("rules")
        })
        .clone()
}

fn peer(listener: usize, addr: &str) -> Peer {
    Peer {
        listener,
        transport: Transport::Udp,
        addr: addr.parse().expect("address"),
        conn: None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::new(rules(), 0, 1);
    let mut now = Instant::now();
    let (core, teams) = (peer(0, "127.0.0.1:5090"), peer(1, "127.0.0.1:5080"));
    let mut rest = data;
    while rest.len() >= 3 {
        let (what, len) = (
            rest[0] % 3,
            usize::from(u16::from_be_bytes([rest[1], rest[2]])),
        );
        rest = &rest[3..];
        match what {
            2 => {
                now += Duration::from_millis(len as u64);
                engine.handle_timeout(now);
            }
            from => {
                let len = len.min(rest.len());
                let from = if from == 0 { core } else { teams };
                engine.handle_datagram(Bytes::copy_from_slice(&rest[..len]), from, now);
                rest = &rest[len..];
            }
        }
        while let Some(transmit) = engine.poll_transmit() {
            let parsed = Message::parse(&transmit.bytes);
            assert!(
                parsed.is_ok(),
                "the engine sent invalid SIP ({:?}):\n{}",
                parsed.err().map(|e| e.fault),
                String::from_utf8_lossy(&transmit.bytes)
            );
        }
        while engine.poll_media().is_some() {}
        while engine.poll_lookup().is_some() {}
        while engine.poll_note().is_some() {}
    }
});
