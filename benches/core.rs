//! Hot-path benchmarks: SIP parse + serialize, one whole call through the sans-IO engine
//! (INVITE → 100/180/200 → ACK → BYE → 200, default rules running on every message), the cost
//! of one rule hook per message, a rule-set reload, and one RTP packet through a media
//! stream's per-packet logic (plain, and SRTP in place).

use bridgehead::config::{Profile, Transport};
use bridgehead::script::{Hook, HookArgs, HookCall, HookMessage, RuleMetrics, RuleSet, Rules};
use bridgehead::sip::response_to;
use bridgehead::sip::{HeaderName, Message};
use bridgehead::Engine;
use bridgehead::{Leg, Peer};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rsip::message::HasHeaders;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The allocator the `bridgehead` binary runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const INVITE: &str = "INVITE sip:+15550100@sbc.example.com;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-CALL\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKupstream\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:+15550199@core.example.com>;tag=a-CALL\r\n\
To: <sip:+15550100@sbc.example.com>\r\n\
Call-ID: CALL@core.example.com\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:+15550199@127.0.0.1:5090>\r\n\
Supported: 100rel, timer\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, PRACK\r\n\
P-Asserted-Identity: <sip:+15550199@core.example.com>\r\n\
User-Agent: core-softswitch/1.0\r\n\
Content-Type: application/sdp\r\n\
Content-Length: LEN\r\n\r\n\
v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n";

/// The INVITE with its Content-Length filled in.
fn invite() -> String {
    let body = INVITE
        .split_once("\r\n\r\n")
        .map_or(0, |(_, body)| body.len());
    INVITE.replace("LEN", &body.to_string())
}

fn parse_serialize(c: &mut Criterion) {
    let bytes = Bytes::from(invite());
    let mut group = c.benchmark_group("sip");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse", |b| {
        b.iter(|| Message::parse(&bytes).map(|m| m.headers.len()))
    });
    group.bench_function("parse+serialize", |b| {
        let mut out = Vec::with_capacity(2048);
        b.iter(|| {
            out.clear();
            if let Ok(msg) = Message::parse(&bytes) {
                msg.encode(&mut out);
            }
            out.len()
        })
    });
    // The same INVITE through rsip (a test oracle, docs/architecture.md), for comparison.
    group.bench_function("rsip_parse", |b| {
        b.iter(|| rsip::SipMessage::try_from(&bytes[..]).map(|m| m.headers().iter().count()))
    });
    group.finish();
}

fn engine() -> Engine {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let text = format!(
        "listeners:\n  - name: core\n    address: 127.0.0.1:5060\n  - name: teams\n    address: 127.0.0.1:5070\ntrunks:\n  - name: core\n    listener: core\n    peers: [\"127.0.0.1:5090\"]\n    script: {script}\n    route: teams\n  - name: teams\n    listener: teams\n    peers: [\"127.0.0.2:5080\"]\n    script: {script}\n    route: core\n"
    );
    let profile = Profile::parse(Path::new("bench.yaml"), &text).expect("profile");
    let rules = RuleSet::load(Arc::new(profile), 1, Default::default()).expect("rules");
    Engine::new(rules, 0, 1)
}

fn peer(listener: usize, addr: &str) -> Peer {
    Peer {
        listener,
        transport: Transport::Udp,
        addr: addr.parse().expect("addr"),
        conn: None,
    }
}

/// Feeds `bytes` and returns the messages the engine sent.
fn feed(engine: &mut Engine, bytes: Bytes, from: Peer, now: Instant) -> Vec<Message> {
    engine.handle_datagram(bytes, from, now);
    std::iter::from_fn(|| engine.poll_transmit())
        .filter_map(|t| Message::parse(&t.bytes).ok())
        .collect()
}

fn find(msgs: &[Message], what: impl Fn(&Message) -> bool) -> Message {
    msgs.iter()
        .find(|m| what(m))
        .cloned()
        .expect("expected message")
}

fn is(method: &str) -> impl Fn(&Message) -> bool + '_ {
    move |m| m.method().is_some_and(|x| x.as_str() == method)
}

fn with_tag(mut msg: Message, tag: &str) -> Bytes {
    if let Some(to) = msg.headers.iter_mut().find(|h| h.name == HeaderName::To) {
        let value = format!("{};tag={tag}", to.value_str().unwrap_or_default());
        to.value = Bytes::from(value);
    }
    Bytes::from(msg.to_bytes())
}

fn one_call(engine: &mut Engine, n: u64, now: Instant) {
    let (a, b) = (peer(0, "127.0.0.1:5090"), peer(1, "127.0.0.2:5080"));
    let call = format!("c{n}");
    let out = feed(engine, Bytes::from(invite().replace("CALL", &call)), a, now);
    let b_invite = find(&out, is("INVITE"));
    feed(
        engine,
        with_tag(response_to(&b_invite, 180, None, None), "t"),
        b,
        now,
    );
    let mut ok = response_to(&b_invite, 200, None, None);
    ok.push_header(HeaderName::Contact, "<sip:teams@127.0.0.2:5080>");
    let out = feed(engine, with_tag(ok, "t"), b, now);
    let a_ok = out.into_iter().next().expect("200 to caller");
    let to = a_ok
        .header_str(&HeaderName::To)
        .unwrap_or_default()
        .to_string();
    let dialog = |method: &str, cseq: u32, branch: &str| {
        Bytes::from(format!(
            "{method} sip:+15550100@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK{branch}{call}\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:+15550199@core.example.com>;tag=a-{call}\r\nTo: {to}\r\nCall-ID: {call}@core.example.com\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        ))
    };
    feed(engine, dialog("ACK", 1, "ack"), a, now);
    let out = feed(engine, dialog("BYE", 2, "bye"), a, now);
    let b_bye = find(&out, is("BYE"));
    feed(
        engine,
        Bytes::from(response_to(&b_bye, 200, None, None).to_bytes()),
        b,
        now,
    );
}

fn whole_call(c: &mut Criterion) {
    let mut engine = engine();
    let mut now = Instant::now();
    let mut n = 0u64;
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    group.bench_function("whole_call", |bench| {
        bench.iter(|| {
            n += 1;
            // Virtual time moves on so transaction timers expire as they would in production.
            now += Duration::from_millis(1);
            engine.handle_timeout(now);
            one_call(&mut engine, n, now);
        })
    });
    group.finish();
    assert_eq!(engine.active_calls(), 0, "every call ended");
}

/// A scratch directory holding `count` scripts and a profile with one trunk per script.
fn rules_dir(count: usize, script: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bh-bench-rules-{}-{count}", std::process::id()));
    std::fs::create_dir_all(dir.join("lib")).expect("dir");
    let teams = include_str!("../scripts/lib/teams.lua");
    std::fs::write(dir.join("lib/teams.lua"), teams).expect("library");
    let mut profile =
        String::from("listeners:\n  - name: l\n    address: 127.0.0.1:5060\ntrunks:\n");
    for i in 0..count {
        std::fs::write(dir.join(format!("rules{i}.lua")), script).expect("script");
        profile.push_str(&format!(
            "  - name: t{i}\n    listener: l\n    peers: [\"127.0.0.{}:5060\"]\n    script: rules{i}.lua\n",
            i + 1
        ));
    }
    std::fs::write(dir.join("profile.yaml"), profile).expect("profile");
    dir
}

/// A hook that reads From and sets two headers, against the same message with no hook: the
/// per-message cost rules add to the core.
fn hooks(c: &mut Criterion) {
    let script = "local r = {}\nfunction r.on_request(call, msg)\n  local user = msg:from_user()\n  msg:set_header('X-Caller', user or 'anonymous')\n  msg:set_header('X-MS-SBC', 'Bridgehead/SBC/0.1.0')\nend\nreturn r\n";
    let dir = rules_dir(1, script);
    let profile = Profile::load(&dir.join("profile.yaml")).expect("profile");
    let rules = Rules::load(&profile, Arc::new(RuleMetrics::default())).expect("rules");
    let message = Message::parse(&Bytes::from(invite())).expect("invite");
    let mut group = c.benchmark_group("script");
    group.throughput(Throughput::Elements(1));
    group.bench_function("hook_reads_from_sets_two_headers", |b| {
        let mut call = HookCall::new("bench".into(), 0, None);
        b.iter(|| {
            let mut hooked = HookMessage::new(message.clone(), Leg::B, "t0".into());
            rules
                .run(
                    rules.script_of(0),
                    Hook::Request,
                    Some(&mut call),
                    HookArgs::Message(&mut hooked),
                )
                .expect("hook runs");
            hooked.msg.headers.len()
        })
    });
    group.bench_function("no_hook_baseline", |b| {
        b.iter(|| {
            let hooked = HookMessage::new(message.clone(), Leg::B, "t0".into());
            hooked.msg.headers.len()
        })
    });
    group.finish();
}

/// Compiling a new version of a profile with 10 scripts (what a reload does per shard).
fn reload(c: &mut Criterion) {
    let script = include_str!("../scripts/default.lua");
    let dir = rules_dir(10, script);
    let path = dir.join("profile.yaml");
    let metrics = Arc::new(RuleMetrics::default());
    let mut group = c.benchmark_group("script");
    group.sample_size(20);
    group.bench_function("reload_10_scripts", |b| {
        b.iter(|| {
            let profile = Arc::new(Profile::load(&path).expect("profile"));
            RuleSet::load(profile, 2, metrics.clone())
                .expect("compiles")
                .version
        })
    });
    group.finish();
}

/// A Teams-style offer (SRTP, ICE, telephone-event, CN): parse and write back.
const SDP_OFFER: &str = include_str!("../tests/data/sdp/teams-offer.sdp");

/// SDP parse + serialize of the offer.
fn sdp(c: &mut Criterion) {
    let mut group = c.benchmark_group("sdp");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse+serialize", |b| {
        b.iter(|| bridgehead::sdp::Sdp::parse(SDP_OFFER.as_bytes()).map(|sdp| sdp.to_bytes().len()))
    });
    group.finish();
}

/// The project's replay scenarios (`tests/replay`), one after another on one core: the
/// harness's steps per second, scenario setup (profile, Lua state, scripts) included.
fn replay(c: &mut Criterion) {
    let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/replay"));
    let files = bridgehead::replay::collect(&[dir]).expect("scenarios");
    let steps: usize = files
        .iter()
        .map(|f| bridgehead::replay::run_file(f, false).steps)
        .sum();
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(steps as u64));
    group.bench_function("project_scenarios_one_core", |b| {
        b.iter(|| {
            files
                .iter()
                .map(|f| bridgehead::replay::run_file(f, false).steps)
                .sum::<usize>()
        })
    });
    group.bench_function("project_scenarios_all_cores", |b| {
        b.iter(|| bridgehead::replay::run_all(&files, false, None).len())
    });
    group.finish();
}

/// A G.711 packet with sequence number `seq`.
fn rtp_packet(seq: u16) -> Vec<u8> {
    let mut packet = vec![0x80, 8];
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    packet.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    packet.extend(std::iter::repeat_n(0xd5, 160));
    packet
}

/// One RTP packet from the caller through a stream's per-packet logic (latching, payload
/// map, quality, SRTP toward the callee when keyed) to the datagram handed out: the relay's
/// work per packet apart from its two system calls.
fn media_packet(c: &mut Criterion) {
    use bridgehead::media::srtp::Srtp;
    use bridgehead::media::stream::{MediaStream, StreamSettings};
    use bridgehead::media::{Side, SrtpKey, Stream, Suite};
    let caller: std::net::SocketAddr = "192.0.2.10:4000".parse().expect("addr");
    let callee: std::net::SocketAddr = "198.51.100.20:5000".parse().expect("addr");
    let side = |local: u16, remote| Side {
        local,
        advertised: true,
        remote: Some(remote),
        remote_rtcp: Some(remote),
        sends: true,
        ..Side::default()
    };
    let key = SrtpKey {
        tag: 1,
        suite: Suite::AesCm128HmacSha1_80,
        key: [7; 16],
        salt: [9; 14],
        mki_len: 0,
    };
    let mut group = c.benchmark_group("media_packet");
    group.throughput(Throughput::Elements(1));
    for (name, srtp) in [("rtp_to_rtp", false), ("rtp_to_srtp", true)] {
        let mut b = side(20002, callee);
        if srtp {
            b.local_key = Some(key);
        }
        let stream = Stream {
            index: 0,
            a: side(20000, caller),
            b,
        };
        let now = Instant::now();
        let mut media = MediaStream::new(&stream, StreamSettings::default(), now);
        let mut packet = rtp_packet(0);
        let mut seq = 0u16;
        group.bench_function(name, |bench| {
            bench.iter(|| {
                seq = seq.wrapping_add(1);
                packet[2..4].copy_from_slice(&seq.to_be_bytes());
                media.handle_packet(Leg::A, caller, false, &packet, now);
                let sent = media.poll_transmit().map_or(0, |t| t.bytes.len());
                assert!(sent > 0);
            })
        });
    }
    // SRTP alone, both ways: protect then unprotect one packet in place.
    let (mut sender, mut receiver) = (Srtp::new(&key), Srtp::new(&key));
    let (template, mut buffer) = (rtp_packet(0), Vec::with_capacity(256));
    let mut seq = 0u16;
    group.bench_function("srtp_protect_unprotect", |bench| {
        bench.iter(|| {
            seq = seq.wrapping_add(1);
            buffer.clear();
            buffer.extend_from_slice(&template);
            buffer[2..4].copy_from_slice(&seq.to_be_bytes());
            sender.protect_rtp(&mut buffer).expect("protect");
            receiver.unprotect_rtp(&mut buffer).expect("unprotect");
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    parse_serialize,
    whole_call,
    hooks,
    reload,
    sdp,
    replay,
    media_packet
);
criterion_main!(benches);
