//! Memory per established call, measured (issue: protection and survival). Holds N calls open
//! through the sans-IO engine on the bundled default profile (media anchored, SRTP toward
//! Teams), each stream's relay state (`MediaStream`) created as the relay would, and counts
//! the heap with a counting allocator: what N calls hold, per call, and what is left once
//! every call ended and its transactions expired, after a first wave of N calls and after a
//! second one (what the first leaves is capacity kept for the next, not a leak: the second
//! must leave no more). Kernel socket buffers of the relay's four sockets per stream are not
//! heap and not counted.
//!
//! `cargo run --release --example memory_per_call -- [CALLS]` (default 10000)

use bridgehead::config::Profile;
use bridgehead::media::stream::{MediaStream, StreamSettings};
use bridgehead::media::MediaCommand;
use bridgehead::sip::{response_to, HeaderName, Message};
use bridgehead::{Engine, Peer, RuleSet};
use bytes::Bytes;
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The system allocator, counting the bytes in use.
struct Counting;

static IN_USE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        IN_USE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        IN_USE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn in_use() -> isize {
    IN_USE.load(Ordering::Relaxed)
}

fn peer(listener: usize, addr: &str) -> Peer {
    Peer {
        listener,
        transport: bridgehead::config::Transport::Udp,
        addr: addr.parse().expect("address"),
        conn: None,
    }
}

fn sent(engine: &mut Engine) -> Vec<Message> {
    std::iter::from_fn(|| engine.poll_transmit())
        .filter_map(|t| Message::parse(&t.bytes).ok())
        .collect()
}

/// The core's INVITE of call `n`, with an SDP offer.
fn invite(n: usize) -> Bytes {
    let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n";
    Bytes::from(format!(
        "INVITE sip:+4930987654@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-i{n}\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:+4930123456@operator.example>;tag=a{n}\r\nTo: <sip:+4930987654@teams.example>\r\nCall-ID: mem-{n}@operator.example\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.1:5090>\r\nSupported: timer\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    ))
}

/// Teams' 200 to the B-leg INVITE `b`, with an SRTP answer.
fn teams_answer(b: &Message) -> Bytes {
    let sdp = "v=0\r\no=- 2 2 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 5000 RTP/SAVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n";
    let mut ok = response_to(b, 200, None, None);
    if let Some(to) = ok.headers.iter_mut().find(|h| h.name == HeaderName::To) {
        to.value = Bytes::from(format!("{};tag=t", to.value_str().unwrap_or_default()));
    }
    ok.push_header(HeaderName::Contact, "<sip:teams@127.0.0.1:5080>");
    ok.set_header(HeaderName::ContentType, "application/sdp");
    ok.body = Bytes::from(sdp);
    Bytes::from(ok.to_bytes())
}

/// An in-dialog request of call `n` from the core.
fn core_request(n: usize, method: &str, cseq: u32, to: &str) -> Bytes {
    Bytes::from(format!(
        "{method} sip:+4930987654@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-{method}{n}\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:+4930123456@operator.example>;tag=a{n}\r\nTo: {to}\r\nCall-ID: mem-{n}@operator.example\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn main() {
    let calls: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/profiles/default.yaml"
    ));
    let text = std::fs::read_to_string(path)
        .expect("default profile")
        .replace("ports: 20000-29999", "ports: 10000-65000");
    let profile = Profile::parse(path, &text).expect("profile");
    let rules = RuleSet::load(Arc::new(profile), 1, Default::default()).expect("rules");
    let mut engine = Engine::new(rules, 0, 1);
    let mut now = Instant::now();
    let before = in_use();
    let mut left = Vec::new();
    for wave in 0..2 {
        wave_of_calls(&mut engine, calls, wave * calls, &mut now);
        left.push(in_use() - before);
        println!(
            "after wave {} ended: {} active, {} transactions, heap {:+.1} KiB against before any call",
            wave + 1,
            engine.active_calls(),
            engine.active_transactions(),
            left[wave] as f64 / 1024.0
        );
    }
    println!(
        "second wave left {:+.0} bytes per call more than the first",
        (left[1] - left[0]) as f64 / calls as f64
    );
}

/// Establishes `calls` calls numbered from `first`, reports what they hold, ends them all.
fn wave_of_calls(engine: &mut Engine, calls: usize, first: usize, now: &mut Instant) {
    let (core, teams) = (peer(0, "127.0.0.1:5090"), peer(1, "127.0.0.1:5080"));
    let settings = StreamSettings {
        strict_source: false,
        rtp_timeout: 0,
    };
    let mut streams: Vec<MediaStream> = Vec::with_capacity(calls);
    let mut tos: Vec<String> = Vec::with_capacity(calls);
    let start = in_use();
    for n in first..first + calls {
        engine.handle_datagram(invite(n), core, *now);
        let b = sent(engine)
            .into_iter()
            .find(|m| m.method().is_some_and(|x| x.as_str() == "INVITE"))
            .expect("B-leg INVITE");
        engine.handle_datagram(teams_answer(&b), teams, *now);
        let ok = sent(engine)
            .into_iter()
            .find(|m| m.status() == Some(200))
            .expect("200 to the caller");
        let to = ok
            .header_str(&HeaderName::To)
            .unwrap_or_default()
            .to_string();
        engine.handle_datagram(core_request(n, "ACK", 1, &to), core, *now);
        sent(engine);
        tos.push(to);
        while let Some(command) = engine.poll_media() {
            if let MediaCommand::Stream { stream, .. } = command {
                if stream.a.advertised && stream.b.advertised && streams.len() <= n - first {
                    streams.push(MediaStream::new(&stream, settings, *now));
                }
            }
        }
    }
    // The 2xx and ACK transactions that are over go with their timers.
    *now += Duration::from_secs(40);
    engine.handle_timeout(*now);
    sent(engine);
    let held = in_use() - start;
    let names_size: isize = tos.iter().map(|t| t.capacity() as isize).sum::<isize>()
        + (tos.capacity() * std::mem::size_of::<String>()) as isize;
    let held = held - names_size;
    let signalling = held - (streams.len() * std::mem::size_of::<MediaStream>()) as isize;
    println!(
        "{calls} calls established ({} active, {} transactions, {} media streams)",
        engine.active_calls(),
        engine.active_transactions(),
        streams.len()
    );
    println!(
        "heap held: {:.1} MiB, {:.1} KiB per call (signalling {:.1} KiB, media stream state {:.1} KiB inline + its buffers)",
        held as f64 / 1048576.0,
        held as f64 / calls as f64 / 1024.0,
        signalling as f64 / calls as f64 / 1024.0,
        std::mem::size_of::<MediaStream>() as f64 / 1024.0
    );
    // Every call ends: BYE from the core, 200 from Teams; transactions expire.
    for (n, to) in tos.iter().enumerate() {
        engine.handle_datagram(core_request(first + n, "BYE", 2, to), core, *now);
        let bye = sent(engine)
            .into_iter()
            .find(|m| m.method().is_some_and(|x| x.as_str() == "BYE"))
            .expect("BYE to Teams");
        let ok = Bytes::from(response_to(&bye, 200, None, None).to_bytes());
        engine.handle_datagram(ok, teams, *now);
        sent(engine);
    }
    while engine.poll_media().is_some() {}
    drop(streams);
    drop(tos);
    *now += Duration::from_secs(40);
    engine.handle_timeout(*now);
    sent(engine);
}
