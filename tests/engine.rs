//! Whole call flows through the sans-IO engine on virtual time: no sockets, no clock.

use bridgehead::config::TonePlan;
use bridgehead::config::{Profile, Transport};
use bridgehead::media::player::Sound;
use bridgehead::media::MediaCommand;
use bridgehead::media::{DtmfMethod, MediaCallId, MediaEvent};
use bridgehead::overload::Throttle;
use bridgehead::script::{RuleMetrics, RuleSet};
use bridgehead::sip::{HeaderName, Message};
use bridgehead::Engine;
use bridgehead::Leg;
use bridgehead::Peer;
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::trunks::{profile_with_script, udp_peer, CORE_PEER, TEAMS_PEER};

/// The default profile's trunks running the bundled rules, `extra_teams` appended to the
/// Teams trunk.
fn profile_text(extra_teams: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    profile_with_script(script, "", extra_teams)
}

/// The engine plus a virtual clock and what it sent.
struct Sim {
    engine: Engine,
    start: Instant,
    now: Instant,
}

impl Sim {
    fn new() -> Sim {
        Sim::with_profile(&profile_text(""))
    }

    fn with_profile(text: &str) -> Sim {
        Sim::with_rules(text, Default::default())
    }

    /// An engine on `text`, counting rule metrics into `metrics`.
    fn with_rules(text: &str, metrics: Arc<RuleMetrics>) -> Sim {
        Sim::on_shard(text, metrics, (0, 1))
    }

    /// The engine of shard `shard` of `shards` on `text`.
    fn on_shard(text: &str, metrics: Arc<RuleMetrics>, (shard, shards): (usize, usize)) -> Sim {
        let engine = Engine::new(rule_set(text, 1, metrics), shard, shards);
        let start = Instant::now();
        Sim {
            engine,
            start,
            now: start,
        }
    }

    /// A message arrives from the core peer (listener 0) or the Teams peer (listener 1).
    fn core_sends(&mut self, text: &str) -> Vec<(Peer, Message)> {
        self.deliver(udp_peer(0, CORE_PEER), text)
    }

    fn teams_sends(&mut self, text: &str) -> Vec<(Peer, Message)> {
        self.deliver(udp_peer(1, TEAMS_PEER), text)
    }

    fn deliver(&mut self, peer: Peer, text: &str) -> Vec<(Peer, Message)> {
        let text = with_length(text);
        self.engine
            .handle_datagram(Bytes::from(text), peer, self.now);
        self.sent()
    }

    fn advance(&mut self, by: Duration) -> Vec<(Peer, Message)> {
        let until = self.now + by;
        let mut out = Vec::new();
        while let Some(at) = self.engine.poll_timeout() {
            if at > until {
                break;
            }
            self.now = at.max(self.now);
            self.engine.handle_timeout(self.now);
            out.extend(self.sent());
        }
        self.now = until;
        out
    }

    fn sent(&mut self) -> Vec<(Peer, Message)> {
        let mut out = Vec::new();
        while let Some(t) = self.engine.poll_transmit() {
            let msg = Message::parse(&t.bytes).expect("engine sends valid SIP");
            out.push((t.peer, msg));
        }
        out
    }

    fn elapsed_ms(&self) -> u128 {
        (self.now - self.start).as_millis()
    }
}

/// Compiles profile text as rule-set version `version`.
fn rule_set(text: &str, version: u64, metrics: Arc<RuleMetrics>) -> Arc<RuleSet> {
    let profile = Profile::parse(Path::new("test.yaml"), text).expect("profile");
    RuleSet::load(Arc::new(profile), version, metrics).expect("rules")
}

/// Writes a rules file into a fresh directory; returns its path.
fn rules_file(lua: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "bh-engine-rules-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("rules.lua");
    std::fs::write(&path, lua).expect("rules");
    path.display().to_string()
}

/// Counter value a rule incremented with `bh.metric.inc(name, labels)`.
fn user_counter(metrics: &RuleMetrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .user_counters()
        .into_iter()
        .filter(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && l.iter().zip(labels).all(|(a, b)| a.0 == b.0 && a.1 == b.1)
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// Fills in Content-Length and CRLF line ends.
fn with_length(text: &str) -> String {
    let text = text.replace("\r\n", "\n").replace('\n', "\r\n");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    format!("{head}\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

fn h<'a>(msg: &'a Message, name: &str) -> Option<&'a str> {
    msg.header_str(&HeaderName::parse(name))
}

fn status(msg: &Message) -> u16 {
    msg.status().unwrap_or(0)
}

fn method(msg: &Message) -> String {
    msg.method().map(|m| m.to_string()).unwrap_or_default()
}

fn summary(out: &[(Peer, Message)]) -> Vec<String> {
    out.iter()
        .map(|(p, m)| {
            let what = match m.status() {
                Some(s) => s.to_string(),
                None => method(m),
            };
            format!("{}->{}", what, p.addr)
        })
        .collect()
}

const SDP: &str = "v=0\no=- 1 1 IN IP4 192.0.2.10\ns=-\nc=IN IP4 192.0.2.10\nt=0 0\nm=audio 4000 RTP/AVP 8 101\na=rtpmap:8 PCMA/8000\na=rtpmap:101 telephone-event/8000\n";

fn invite(call_id: &str, branch: &str, extra: &str) -> String {
    format!(
        "INVITE sip:+15550100@sbc.example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch={branch}
Via: SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bKinner
Record-Route: <sip:10.1.1.1;lr>
Max-Forwards: 70
From: \"Alice\" <sip:+15550199@core.example.com>;tag=a1
To: <sip:+15550100@sbc.example.com>
Call-ID: {call_id}
CSeq: 10 INVITE
Contact: <sip:alice@127.0.0.1:5090>
Supported: 100rel, timer
Allow: INVITE, ACK, BYE, CANCEL, PRACK
P-Asserted-Identity: <sip:+15550199@core.example.com>
X-Trace: keep-me
{extra}Content-Type: application/sdp

{SDP}"
    )
}

/// The callee's response to the B-leg INVITE `b`.
fn answer(b: &Message, code: u16, reason: &str, to_tag: &str, body: &str) -> String {
    let mut text = format!("SIP/2.0 {code} {reason}\n");
    for name in ["Via", "From"] {
        for v in b.headers_named(&HeaderName::parse(name)) {
            text.push_str(&format!("{name}: {}\n", String::from_utf8_lossy(v)));
        }
    }
    let to = h(b, "To").unwrap_or_default();
    let to = if to.contains("tag=") || code == 100 {
        to.to_string()
    } else {
        format!("{to};tag={to_tag}")
    };
    text.push_str(&format!(
        "To: {to}\nCall-ID: {}\nCSeq: {}\nContact: <sip:teams@127.0.0.2:5080>\nServer: TeamsProxy\n",
        h(b, "Call-ID").unwrap_or_default(),
        h(b, "CSeq").unwrap_or_default()
    ));
    if !body.is_empty() {
        text.push_str("Content-Type: application/sdp\n");
    }
    text.push('\n');
    text.push_str(body);
    text
}

/// Sets up an answered call; returns the B-leg INVITE and the 200 the caller got.
fn answered_call(sim: &mut Sim, call_id: &str) -> (Message, Message) {
    let out = sim.core_sends(&invite(call_id, "z9hG4bKc1", ""));
    let b_invite = out
        .iter()
        .find(|(_, m)| method(m) == "INVITE")
        .map(|(_, m)| m.clone())
        .expect("B-leg INVITE");
    let out = sim.teams_sends(&answer(&b_invite, 200, "OK", "t1", SDP));
    let ok = out
        .iter()
        .find(|(_, m)| status(m) == 200)
        .map(|(_, m)| m.clone())
        .expect("200 to caller");
    let ack = format!(
        "ACK sip:alice@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKack1
Max-Forwards: 70
From: \"Alice\" <sip:+15550199@core.example.com>;tag=a1
To: {}
Call-ID: {call_id}
CSeq: 10 ACK

",
        h(&ok, "To").unwrap_or_default()
    );
    let out = sim.core_sends(&ack);
    assert_eq!(summary(&out), [format!("ACK->{TEAMS_PEER}")]);
    assert_eq!(h(&out[0].1, "CSeq"), Some("1 ACK"));
    assert_eq!(h(&out[0].1, "Call-ID"), h(&b_invite, "Call-ID"));
    (b_invite, ok)
}

#[test]
fn basic_call_hides_topology_and_tags_teams() {
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite("call-1@10.1.1.1", "z9hG4bKc1", ""));
    assert_eq!(
        summary(&out),
        [format!("100->{CORE_PEER}"), format!("INVITE->{TEAMS_PEER}")]
    );
    let b = &out[1].1;
    let text = String::from_utf8(b.to_bytes()).unwrap();
    // Nothing of the A-leg's topology crosses.
    for leak in ["call-1", "10.1.1.1", "z9hG4bKc1", "alice@127.0.0.1:5090"] {
        assert!(!text.contains(leak), "B-leg INVITE leaks {leak}:\n{text}");
    }
    assert_eq!(b.headers_named(&HeaderName::Via).count(), 1);
    assert!(h(b, "Via")
        .unwrap()
        .starts_with("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK"));
    assert_eq!(h(b, "Contact"), Some("<sip:+15550199@127.0.0.1:5070>"));
    assert_eq!(h(b, "Max-Forwards"), Some("69"));
    assert_eq!(h(b, "CSeq"), Some("1 INVITE"));
    assert!(h(b, "Record-Route").is_none());
    assert_eq!(
        h(b, "X-MS-SBC"),
        Some(concat!("Bridgehead/SBC/", env!("CARGO_PKG_VERSION")))
    );
    // Other headers cross unchanged; B2BUA-owned ones are Bridgehead's own.
    assert_eq!(h(b, "X-Trace"), Some("keep-me"));
    assert_eq!(
        h(b, "P-Asserted-Identity"),
        Some("<sip:+15550199@core.example.com>")
    );
    assert_eq!(
        h(b, "Supported"),
        Some("100rel, timer"),
        "Supported says what Bridgehead supports toward the trunk"
    );
    assert_eq!(
        h(b, "Allow"),
        Some("INVITE, ACK, CANCEL, BYE, OPTIONS, PRACK, UPDATE, INFO, NOTIFY")
    );
    assert_eq!(String::from_utf8_lossy(&b.body), SDP.replace('\n', "\r\n"));
    match &b.start {
        bridgehead::sip::StartLine::Request { uri, .. } => {
            assert_eq!(uri, "sip:+15550100@127.0.0.2:5080")
        }
        _ => unreachable!(),
    }
    // Nothing toward core carries X-MS-SBC.
    assert!(h(&out[0].1, "X-MS-SBC").is_none());

    let out = sim.teams_sends(&answer(b, 180, "Ringing", "t1", ""));
    assert_eq!(summary(&out), [format!("180->{CORE_PEER}")]);
    let ringing = &out[0].1;
    assert_eq!(
        ringing.headers_named(&HeaderName::Via).count(),
        2,
        "caller's Vias restored"
    );
    assert_eq!(h(ringing, "Call-ID"), Some("call-1@10.1.1.1"));
    assert_eq!(h(ringing, "CSeq"), Some("10 INVITE"));
    assert!(h(ringing, "To").unwrap().contains(";tag="));
    assert!(
        !h(ringing, "To").unwrap().contains("t1"),
        "callee's tag must not cross"
    );
    assert_eq!(
        h(ringing, "Contact"),
        Some("<sip:+15550100@127.0.0.1:5060>")
    );
    assert_eq!(h(ringing, "Server"), Some("TeamsProxy"));
    assert!(h(ringing, "X-MS-SBC").is_none());

    let out = sim.teams_sends(&answer(b, 200, "OK", "t1", SDP));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    let ok = out[0].1.clone();
    assert_eq!(ok.body.len(), SDP.replace('\n', "\r\n").len());
    assert_eq!(h(&ok, "To"), h(ringing, "To"));

    // The 200 is retransmitted to the caller until it ACKs.
    let out = sim.advance(Duration::from_millis(500));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    let ack = format!(
        "ACK sip:+15550100@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKack1
Max-Forwards: 70
From: \"Alice\" <sip:+15550199@core.example.com>;tag=a1
To: {}
Call-ID: call-1@10.1.1.1
CSeq: 10 ACK

",
        h(&ok, "To").unwrap()
    );
    let out = sim.core_sends(&ack);
    assert_eq!(summary(&out), [format!("ACK->{TEAMS_PEER}")]);
    assert_eq!(
        h(&out[0].1, "To"),
        Some("<sip:+15550100@sbc.example.com>;tag=t1")
    );
    match &out[0].1.start {
        bridgehead::sip::StartLine::Request { uri, .. } => {
            assert_eq!(uri, "sip:teams@127.0.0.2:5080")
        }
        _ => unreachable!(),
    }
    assert!(
        sim.advance(Duration::from_secs(40)).is_empty(),
        "no more 200 retransmissions"
    );

    // BYE from the callee is relayed; its 200 comes back; the call is gone.
    let bye = format!(
        "BYE sip:+15550199@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKbye1
Max-Forwards: 70
From: <sip:+15550100@sbc.example.com>;tag=t1
To: {}
Call-ID: {}
CSeq: 5 BYE

",
        h(b, "From").unwrap(),
        h(b, "Call-ID").unwrap()
    );
    let out = sim.teams_sends(&bye);
    assert_eq!(summary(&out), [format!("BYE->{CORE_PEER}")]);
    let a_bye = out[0].1.clone();
    assert_eq!(h(&a_bye, "Call-ID"), Some("call-1@10.1.1.1"));
    assert_eq!(
        h(&a_bye, "Route"),
        Some("<sip:10.1.1.1;lr>"),
        "caller's route set is used"
    );
    assert_eq!(
        h(&a_bye, "To"),
        Some("\"Alice\" <sip:+15550199@core.example.com>;tag=a1")
    );
    match &a_bye.start {
        bridgehead::sip::StartLine::Request { uri, .. } => {
            assert_eq!(uri, "sip:alice@127.0.0.1:5090")
        }
        _ => unreachable!(),
    }
    let ok = answer_request(&a_bye, 200, "OK");
    let out = sim.core_sends(&ok);
    assert_eq!(summary(&out), [format!("200->{TEAMS_PEER}")]);
    assert_eq!(h(&out[0].1, "CSeq"), Some("5 BYE"));
    assert!(h(&out[0].1, "X-MS-SBC").is_some());
    assert_eq!(sim.engine.active_calls(), 0);
}

/// A UA's response to a request Bridgehead sent it.
fn answer_request(req: &Message, code: u16, reason: &str) -> String {
    let mut text = format!("SIP/2.0 {code} {reason}\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        text.push_str(&format!("{name}: {}\n", h(req, name).unwrap_or_default()));
    }
    text.push('\n');
    text
}

#[test]
fn unanswered_invite_retransmits_on_rfc_schedule_then_408() {
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite("call-2", "z9hG4bKc2", ""));
    assert_eq!(out.len(), 2);
    let mut sends = vec![sim.elapsed_ms()];
    let mut timeout_at = None;
    for _ in 0..400 {
        for (peer, msg) in sim.advance(Duration::from_millis(100)) {
            if method(&msg) == "INVITE" {
                sends.push(sim.elapsed_ms());
            } else if status(&msg) == 408 {
                assert_eq!(peer.addr.to_string(), CORE_PEER);
                timeout_at = timeout_at.or(Some(sim.elapsed_ms()));
            }
        }
    }
    assert_eq!(sends, [0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(timeout_at, Some(32000));
    assert_eq!(sim.engine.active_calls(), 0);
}

#[test]
fn cancel_before_answer() {
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite("call-3", "z9hG4bKc3", ""));
    let b = out[1].1.clone();
    sim.teams_sends(&answer(&b, 180, "Ringing", "t3", ""));
    let cancel = "CANCEL sip:+15550100@sbc.example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKc3
Max-Forwards: 70
From: \"Alice\" <sip:+15550199@core.example.com>;tag=a1
To: <sip:+15550100@sbc.example.com>
Call-ID: call-3
CSeq: 10 CANCEL

";
    let out = sim.core_sends(cancel);
    assert_eq!(
        summary(&out),
        [
            format!("200->{CORE_PEER}"),
            format!("487->{CORE_PEER}"),
            format!("CANCEL->{TEAMS_PEER}")
        ]
    );
    let b_cancel = &out[2].1;
    assert_eq!(
        h(b_cancel, "Via"),
        h(&b, "Via"),
        "CANCEL matches the B-leg INVITE"
    );
    assert_eq!(h(b_cancel, "CSeq"), Some("1 CANCEL"));
    assert_eq!(h(&out[1].1, "CSeq"), Some("10 INVITE"));
    sim.teams_sends(&answer_request(b_cancel, 200, "OK"));
    let out = sim.teams_sends(&answer(&b, 487, "Request Terminated", "t3", ""));
    assert_eq!(
        summary(&out),
        [format!("ACK->{TEAMS_PEER}")],
        "hop-by-hop ACK, nothing to caller"
    );
    assert_eq!(sim.engine.active_calls(), 0);
}

#[test]
fn busy_is_relayed_and_acked_hop_by_hop() {
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite("call-4", "z9hG4bKc4", ""));
    let b = out[1].1.clone();
    let out = sim.teams_sends(&answer(&b, 486, "Busy Here", "t4", ""));
    assert_eq!(
        summary(&out),
        [format!("ACK->{TEAMS_PEER}"), format!("486->{CORE_PEER}")]
    );
    let busy = out[1].1.clone();
    // A retransmitted 486 is ACKed again and not relayed twice.
    let out = sim.teams_sends(&answer(&b, 486, "Busy Here", "t4", ""));
    assert_eq!(summary(&out), [format!("ACK->{TEAMS_PEER}")]);
    // The caller's ACK is absorbed by the server transaction.
    let ack = format!(
        "ACK sip:+15550100@sbc.example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKc4
Max-Forwards: 70
From: \"Alice\" <sip:+15550199@core.example.com>;tag=a1
To: {}
Call-ID: call-4
CSeq: 10 ACK

",
        h(&busy, "To").unwrap()
    );
    assert!(sim.core_sends(&ack).is_empty());
    assert!(
        sim.advance(Duration::from_secs(40)).is_empty(),
        "no 486 retransmission after ACK"
    );
}

#[test]
fn reinvite_hold_is_relayed_and_acked_end_to_end() {
    let mut sim = Sim::new();
    let (b_invite, ok) = answered_call(&mut sim, "call-5");
    let hold_sdp = SDP.replace("m=audio", "a=sendonly\nm=audio");
    let reinvite = format!(
        "INVITE sip:+15550100@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKre1
Max-Forwards: 70
From: \"Alice\" <sip:+15550199@core.example.com>;tag=a1
To: {}
Call-ID: call-5
CSeq: 11 INVITE
Contact: <sip:alice@127.0.0.1:5090>
Content-Type: application/sdp

{hold_sdp}",
        h(&ok, "To").unwrap()
    );
    let out = sim.core_sends(&reinvite);
    assert_eq!(summary(&out), [format!("INVITE->{TEAMS_PEER}")]);
    let b_re = out[0].1.clone();
    assert_eq!(h(&b_re, "CSeq"), Some("2 INVITE"));
    assert_eq!(h(&b_re, "Call-ID"), h(&b_invite, "Call-ID"));
    assert!(String::from_utf8_lossy(&b_re.body).contains("a=sendonly"));
    // A second re-INVITE while the first is pending gets 491.
    let glare = reinvite
        .replace("z9hG4bKre1", "z9hG4bKre2")
        .replace("CSeq: 11", "CSeq: 12");
    let out = sim.core_sends(&glare);
    assert_eq!(summary(&out), [format!("491->{CORE_PEER}")]);
    let out = sim.teams_sends(&answer(&b_re, 200, "OK", "t1", SDP));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "CSeq"), Some("11 INVITE"));
    let ack = format!(
        "ACK sip:+15550100@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKack2
Max-Forwards: 70
From: \"Alice\" <sip:+15550199@core.example.com>;tag=a1
To: {}
Call-ID: call-5
CSeq: 11 ACK

",
        h(&ok, "To").unwrap()
    );
    let out = sim.core_sends(&ack);
    assert_eq!(summary(&out), [format!("ACK->{TEAMS_PEER}")]);
    assert_eq!(h(&out[0].1, "CSeq"), Some("2 ACK"));

    // A peer whose ACK of a 2xx reuses its INVITE's branch (as some do, against RFC 3261
    // §17.1.1.3) still gets it across: the server transaction hands it to the dialog.
    let resume = reinvite
        .replace("z9hG4bKre1", "z9hG4bKre3")
        .replace("CSeq: 11", "CSeq: 13")
        .replace("a=sendonly\n", "");
    let out = sim.core_sends(&resume);
    assert_eq!(summary(&out), [format!("INVITE->{TEAMS_PEER}")]);
    let out = sim.teams_sends(&answer(&out[0].1, 200, "OK", "t1", SDP));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    let same_branch = ack
        .replace("z9hG4bKack2", "z9hG4bKre3")
        .replace("CSeq: 11", "CSeq: 13");
    let out = sim.core_sends(&same_branch);
    assert_eq!(summary(&out), [format!("ACK->{TEAMS_PEER}")]);
    assert_eq!(h(&out[0].1, "CSeq"), Some("3 ACK"));
    // Its retransmission is absorbed.
    assert!(sim.core_sends(&same_branch).is_empty());
}

#[test]
fn in_dialog_timeout_answers_408_and_hangs_up_the_requester() {
    let mut sim = Sim::new();
    let (_, ok) = answered_call(&mut sim, "call-6");
    let info = format!(
        "INFO sip:+15550100@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKinfo1
Max-Forwards: 70
From: \"Alice\" <sip:+15550199@core.example.com>;tag=a1
To: {}
Call-ID: call-6
CSeq: 11 INFO
Content-Type: application/dtmf-relay

Signal=5
Duration=160
",
        h(&ok, "To").unwrap()
    );
    let out = sim.core_sends(&info);
    assert_eq!(summary(&out), [format!("INFO->{TEAMS_PEER}")]);
    assert_eq!(h(&out[0].1, "Content-Type"), Some("application/dtmf-relay"));
    let later: Vec<String> = summary(&sim.advance(Duration::from_millis(32_100)))
        .into_iter()
        .filter(|s| !s.starts_with("INFO"))
        .collect();
    assert_eq!(
        later,
        [format!("408->{CORE_PEER}"), format!("BYE->{CORE_PEER}")]
    );
    assert_eq!(sim.engine.active_calls(), 0);
}

#[test]
fn unacknowledged_2xx_hangs_up_both_legs() {
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite("call-7", "z9hG4bKc7", ""));
    let b = out[1].1.clone();
    sim.teams_sends(&answer(&b, 200, "OK", "t7", SDP));
    let out: Vec<String> = summary(&sim.advance(Duration::from_millis(32_100)))
        .into_iter()
        .filter(|s| s.starts_with("BYE"))
        .collect();
    assert_eq!(
        out,
        [format!("BYE->{CORE_PEER}"), format!("BYE->{TEAMS_PEER}")]
    );
    assert_eq!(sim.engine.active_calls(), 0);
}

#[test]
fn local_answers() {
    let mut sim = Sim::new();
    let options = "OPTIONS sip:sbc.example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKopt
Max-Forwards: 70
From: <sip:sip.pstnhub.microsoft.com>;tag=o1
To: <sip:sbc.example.com>
Call-ID: opt-1
CSeq: 1 OPTIONS

";
    let out = sim.teams_sends(options);
    assert_eq!(summary(&out), [format!("200->{TEAMS_PEER}")]);
    let ok = &out[0].1;
    assert!(h(ok, "Allow").unwrap().contains("INVITE"));
    assert_eq!(h(ok, "Accept"), Some("application/sdp"));
    assert!(ok.header(&HeaderName::Supported).is_some());
    assert!(h(ok, "X-MS-SBC").is_some(), "toward Teams");
    // A retransmission gets the same answer from the transaction.
    let again = sim.teams_sends(options);
    assert_eq!(again[0].1.to_bytes(), ok.to_bytes());

    let bye = "BYE sip:x@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKnodialog
Max-Forwards: 70
From: <sip:a@h>;tag=1
To: <sip:b@h>;tag=2
Call-ID: nosuchcall
CSeq: 1 BYE

";
    assert_eq!(summary(&sim.core_sends(bye)), [format!("481->{CORE_PEER}")]);
    let zero = invite("call-8", "z9hG4bKc8", "").replace("Max-Forwards: 70", "Max-Forwards: 0");
    assert_eq!(
        summary(&sim.core_sends(&zero)),
        [format!("483->{CORE_PEER}")]
    );
    let require = invite("call-9", "z9hG4bKc9", "Require: foo, 100rel\n");
    let out = sim.core_sends(&require);
    assert_eq!(summary(&out), [format!("420->{CORE_PEER}")]);
    assert_eq!(
        h(&out[0].1, "Unsupported"),
        Some("foo"),
        "only what Bridgehead cannot give"
    );
    let stranger = Peer {
        listener: 0,
        transport: Transport::Udp,
        addr: "127.0.0.9:5000".parse().unwrap(),
        conn: None,
    };
    let out = sim.deliver(stranger, &invite("call-10", "z9hG4bKc10", ""));
    assert_eq!(status(&out[0].1), 403);
}

#[test]
fn x_ms_fmc_calls_are_anchored_from_the_core_and_never_sent_back_to_teams() {
    // From the core (an IMS application server anchoring the call): to Teams, header intact.
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite("call-11", "z9hG4bKc11", "X-MS-FMC: MO\n"));
    let b = b_leg_invite(&out);
    assert_eq!(out[1].0.addr.to_string(), TEAMS_PEER);
    assert_eq!(h(&b, "X-MS-FMC"), Some("MO"));
    // From Teams (already anchored there): to the core, header intact, even when a rule
    // would send Teams' calls back to Teams.
    let out = sim.teams_sends(&invite("call-12", "z9hG4bKc12", "X-MS-FMC: MT\n"));
    let b = b_leg_invite(&out);
    assert!(summary(&out).contains(&format!("INVITE->{CORE_PEER}")));
    assert_eq!(h(&b, "X-MS-FMC"), Some("MT"));
}

#[test]
fn header_policy_strips_at_the_trust_boundary() {
    let mut sim = Sim::with_profile(&profile_text(
        "    headers:\n      strip: [\"P-*\", \"X-Trace\"]\n",
    ));
    let out = sim.core_sends(&invite(
        "call-12",
        "z9hG4bKc12",
        "P-Charging-Vector: icid=1\n",
    ));
    let b = &out[1].1;
    assert!(h(b, "P-Asserted-Identity").is_none());
    assert!(h(b, "P-Charging-Vector").is_none());
    assert!(h(b, "X-Trace").is_none());
    assert!(
        h(b, "X-MS-SBC").is_some(),
        "a rule's explicit edit wins over the policy"
    );
}

#[test]
fn malformed_requests_get_400_naming_the_fault() {
    let mut sim = Sim::new();
    let bad = invite("call-13", "z9hG4bKc13", "").replace("CSeq: 10 INVITE", "CSeq: 10 OPTIONS");
    let out = sim.core_sends(&bad);
    assert_eq!(summary(&out), [format!("400->{CORE_PEER}")]);
    assert!(h(&out[0].1, "Warning").unwrap().contains("CSeq method"));
    assert!(h(&out[0].1, "X-MS-SBC").is_none(), "not toward the core");
    let garbage = "this is not SIP\r\n\r\n";
    assert!(sim.core_sends(garbage).is_empty());
    assert_eq!(sim.engine.stats().malformed, 2);
    // Toward Teams, Bridgehead's own stateless 400 carries X-MS-SBC like every message.
    let out = sim.teams_sends(&bad.replace("call-13", "call-13b"));
    assert_eq!(summary(&out), [format!("400->{TEAMS_PEER}")]);
    assert!(
        h(&out[0].1, "X-MS-SBC").is_some_and(|v| v.starts_with("Bridgehead/SBC/")),
        "{:?}",
        out[0].1.headers
    );
}

const LIFECYCLE_RULES: &str = r#"
local r = {}
function r.on_invite(call, req)
  call.vars.started = "yes"
end
function r.on_early_media(call, resp)
  bh.metric.inc("early_media", { status = tostring(resp.status) })
  call:play_ringback()
end
function r.on_answer(call, resp)
  assert(call.vars.started == "yes" and call.leg == "b")
  call:send_dtmf("1#", "b")
  bh.metric.inc("answered", { trunk = resp.trunk })
end
function r.on_failure(call, resp)
  bh.metric.inc("failure", { status = tostring(resp.status) })
  if resp.status == 503 and not call.vars.failed_over then
    call.vars.failed_over = true
    call:route("backup")
  elseif resp.status == 480 then
    call:reject(404, "Nobody Here", { ["X-Why"] = "480 upstream" })
  end
end
function r.on_media(call, ev)
  assert(call.leg == ev.leg)
  bh.metric.inc("media", { kind = ev.kind, digit = ev.digit or "" })
end
function r.on_call_end(call, info)
  bh.metric.inc("ended", { reason = info.reason, by = info.by, status = tostring(info.status),
                           answered = tostring(info.answered) })
end
return r
"#;

#[test]
fn failover_routes_the_call_again_and_hooks_see_its_life() {
    let metrics = Arc::new(RuleMetrics::default());
    let script = rules_file(LIFECYCLE_RULES);
    let mut sim = Sim::with_rules(&profile_with_script(&script, "", ""), metrics.clone());
    let out = sim.core_sends(&invite("fo-1@10.1.1.1", "z9hG4bKfo1", ""));
    let first = out
        .iter()
        .find(|(_, m)| method(m) == "INVITE")
        .map(|(_, m)| m.clone())
        .expect("B-leg INVITE");
    let out = sim.teams_sends(&answer(&first, 183, "Session Progress", "t1", SDP));
    assert_eq!(summary(&out), [format!("183->{CORE_PEER}")]);
    assert_eq!(
        user_counter(&metrics, "early_media", &[("status", "183")]),
        1
    );

    // The first callee fails with 503: the SBC acknowledges it and tries the backup trunk,
    // with a fresh B-leg; the caller hears nothing of the 503.
    let out = sim.teams_sends(&answer(&first, 503, "Service Unavailable", "t1", ""));
    assert_eq!(
        summary(&out),
        [
            format!("ACK->{TEAMS_PEER}"),
            "INVITE->127.0.0.3:5080".to_string()
        ]
    );
    let second = out[1].1.clone();
    assert_ne!(h(&second, "Call-ID"), h(&first, "Call-ID"));
    assert_ne!(h(&second, "From"), h(&first, "From"), "fresh From-tag");
    assert_eq!(h(&second, "X-Trace"), Some("keep-me"));
    assert_eq!(user_counter(&metrics, "failure", &[("status", "503")]), 1);

    let backup = |text: &str, sim: &mut Sim| sim.deliver(udp_peer(1, "127.0.0.3:5080"), text);
    let out = backup(&answer(&second, 200, "OK", "t2", SDP), &mut sim);
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    assert_eq!(
        user_counter(&metrics, "answered", &[("trunk", "backup")]),
        1
    );
    // What the rules asked of the media plane, in order, for this call.
    let plays: Vec<(Leg, Sound)> = std::iter::from_fn(|| sim.engine.poll_media())
        .filter_map(|command| match command {
            MediaCommand::Play { to, sound, .. } => Some((to, sound)),
            _ => None,
        })
        .collect();
    assert_eq!(
        plays,
        [
            (Leg::A, Sound::Ringback(TonePlan::Itu)),
            (
                Leg::B,
                Sound::Digits {
                    digits: "1#".into(),
                    duration_ms: 100
                }
            ),
        ]
    );

    // DTMF from the media plane reaches on_media.
    let dtmf = MediaEvent::Dtmf {
        leg: Leg::A,
        digit: '5',
        duration_ms: 120,
        method: DtmfMethod::Rfc4733,
    };
    assert!(sim
        .engine
        .handle_media_event("fo-1@10.1.1.1", &dtmf, sim.now));
    assert!(!sim.engine.handle_media_event("nope", &dtmf, sim.now));
    assert_eq!(
        user_counter(&metrics, "media", &[("digit", "5"), ("kind", "dtmf")]),
        1
    );

    // The callee hangs up: on_call_end says so.
    let bye = format!(
        "BYE sip:alice@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.3:5080;branch=z9hG4bKbye9
Max-Forwards: 70
From: {};tag=t2
To: {}
Call-ID: {}
CSeq: 1 BYE

",
        h(&second, "To").unwrap_or_default(),
        h(&second, "From").unwrap_or_default(),
        h(&second, "Call-ID").unwrap_or_default()
    );
    let out = backup(&bye, &mut sim);
    let relayed = out
        .iter()
        .find(|(_, m)| method(m) == "BYE")
        .expect("BYE to caller");
    let ok = answer_request(&relayed.1, 200, "OK");
    sim.core_sends(&ok);
    assert_eq!(
        user_counter(
            &metrics,
            "ended",
            &[
                ("answered", "true"),
                ("by", "b"),
                ("reason", "bye"),
                ("status", "200")
            ]
        ),
        1
    );
    assert_eq!(sim.engine.active_calls(), 0);
}

#[test]
fn failure_hook_may_turn_the_failure_into_another_answer() {
    let metrics = Arc::new(RuleMetrics::default());
    let script = rules_file(LIFECYCLE_RULES);
    let mut sim = Sim::with_rules(&profile_with_script(&script, "", ""), metrics.clone());
    let out = sim.core_sends(&invite("fo-2@10.1.1.1", "z9hG4bKfo2", ""));
    let b = out
        .iter()
        .find(|(_, m)| method(m) == "INVITE")
        .expect("INVITE")
        .1
        .clone();
    let out = sim.teams_sends(&answer(&b, 480, "Temporarily Unavailable", "t1", ""));
    let to_caller = out
        .iter()
        .find(|(p, _)| p.addr.to_string() == CORE_PEER)
        .expect("answer to caller");
    assert_eq!(status(&to_caller.1), 404);
    assert_eq!(h(&to_caller.1, "X-Why"), Some("480 upstream"));
    assert_eq!(
        user_counter(
            &metrics,
            "ended",
            &[
                ("answered", "false"),
                ("by", "b"),
                ("reason", "rejected"),
                ("status", "404")
            ]
        ),
        1
    );
}

#[test]
fn script_error_policy_rejects_or_continues() {
    let script = rules_file("return { on_invite = function(call, req) error('boom') end }");
    let mut sim = Sim::with_profile(&profile_with_script(
        &script,
        "    on_script_error: reject 503",
        "",
    ));
    let out = sim.core_sends(&invite("err-1@10.1.1.1", "z9hG4bKe1", ""));
    assert_eq!(
        summary(&out),
        [format!("100->{CORE_PEER}"), format!("503->{CORE_PEER}")]
    );
    assert_eq!(sim.engine.stats().script_errors, 1);

    let mut sim = Sim::with_profile(&profile_with_script(&script, "", ""));
    let out = sim.core_sends(&invite("err-2@10.1.1.1", "z9hG4bKe2", ""));
    assert_eq!(
        summary(&out),
        [format!("100->{CORE_PEER}"), format!("INVITE->{TEAMS_PEER}")],
        "continue is the default"
    );
}

#[test]
fn runaway_rule_in_one_call_leaves_the_next_call_alone() {
    let script = rules_file(
        "return { on_invite = function(call, req)\n  if req:has_header('X-Evil') then while true do pcall(function() while true do end end) end end\nend }",
    );
    let mut sim = Sim::with_profile(&profile_with_script(
        &script,
        "    on_script_error: reject 500",
        "",
    ));
    let out = sim.core_sends(&invite("evil@10.1.1.1", "z9hG4bKev", "X-Evil: 1\n"));
    assert_eq!(
        status(&out[1].1),
        500,
        "the runaway call follows the policy"
    );
    let out = sim.core_sends(&invite("good@10.1.1.1", "z9hG4bKgd", ""));
    assert_eq!(
        summary(&out),
        [format!("100->{CORE_PEER}"), format!("INVITE->{TEAMS_PEER}")]
    );
}

#[test]
fn reload_pins_calls_in_progress_to_their_version() {
    let version_rules = |value: &str| {
        rules_file(&format!(
            "return {{ on_request = function(call, msg) if msg.trunk == 'teams' then msg:set_header('X-Version', '{value}') end end }}"
        ))
    };
    let metrics = Arc::new(RuleMetrics::default());
    let v1 = profile_with_script(&version_rules("one"), "", "");
    let mut sim = Sim::with_rules(&v1, metrics.clone());
    let (first_b, first_ok) = answered_call(&mut sim, "v-1@10.1.1.1");
    assert_eq!(h(&first_b, "X-Version"), Some("one"));

    let v2 = profile_with_script(&version_rules("two"), "", "");
    sim.engine.reload(rule_set(&v2, 2, metrics));
    assert_eq!(sim.engine.version(), 2);
    let out = sim.core_sends(&invite("v-2@10.1.1.1", "z9hG4bKv2", ""));
    let second_b = out
        .iter()
        .find(|(_, m)| method(m) == "INVITE")
        .expect("INVITE")
        .1
        .clone();
    assert_eq!(
        h(&second_b, "X-Version"),
        Some("two"),
        "new calls take the new version"
    );
    assert_eq!(sim.engine.calls_by_version(), [(1, 1), (2, 1)]);

    // The first call's BYE toward Teams still runs version one; when it ends, only version
    // two is in use.
    let bye = format!(
        "BYE sip:teams@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKbyev1
Max-Forwards: 70
From: \"Alice\" <sip:+15550199@core.example.com>;tag=a1
To: {}
Call-ID: v-1@10.1.1.1
CSeq: 11 BYE

",
        h(&first_ok, "To").unwrap_or_default()
    );
    let out = sim.core_sends(&bye);
    let relayed = out
        .iter()
        .find(|(_, m)| method(m) == "BYE")
        .expect("BYE to Teams");
    assert_eq!(h(&relayed.1, "X-Version"), Some("one"));
    sim.teams_sends(&answer_request(&relayed.1, 200, "OK"));
    assert_eq!(sim.engine.calls_by_version(), [(2, 1)]);
}

#[test]
fn on_sdp_edits_offers_and_answers_on_each_leg() {
    let metrics = Arc::new(RuleMetrics::default());
    let script = rules_file(
        r#"
return { on_sdp = function(call, sdp, ctx)
  bh.metric.inc("sdp", { kind = ctx.kind, leg = ctx.leg, method = ctx.msg.method or tostring(ctx.msg.status) })
  local audio = sdp:media("audio")[1]
  if ctx.leg == "b" and ctx.kind == "offer" then
    audio:keep_codecs({ "PCMA", 101 })
    audio:set_attribute("ptime", "20")
    ctx.msg:set_header("X-Codecs", tostring(#audio:codecs()))
  elseif ctx.leg == "a" and ctx.kind == "answer" then
    sdp:set_attribute("x-anchored", true)
  end
end }
"#,
    );
    let mut sim = Sim::with_rules(&profile_with_script(&script, "", ""), metrics.clone());
    let offer = "v=0\no=- 1 1 IN IP4 192.0.2.10\ns=-\nc=IN IP4 192.0.2.10\nt=0 0\nm=audio 4000 RTP/AVP 0 8 9 101\na=rtpmap:0 PCMU/8000\na=rtpmap:8 PCMA/8000\na=rtpmap:9 G722/8000\na=rtpmap:101 telephone-event/8000\na=fmtp:101 0-16\n";
    let text = invite("sdp-1@10.1.1.1", "z9hG4bKsdp", "").replace(SDP, offer);
    let out = sim.core_sends(&text);
    let b = out
        .iter()
        .find(|(_, m)| method(m) == "INVITE")
        .expect("INVITE")
        .1
        .clone();
    let body = String::from_utf8_lossy(&b.body).into_owned();
    assert!(body.contains("m=audio 4000 RTP/AVP 8 101\r\n"), "{body}");
    assert!(!body.contains("PCMU") && !body.contains("G722"), "{body}");
    assert!(
        body.contains("a=fmtp:101 0-16\r\na=ptime:20\r\n") || body.contains("a=ptime:20"),
        "{body}"
    );
    assert_eq!(h(&b, "X-Codecs"), Some("2"));
    assert_eq!(
        h(&b, "Content-Length"),
        Some(b.body.len().to_string().as_str())
    );

    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", SDP));
    let ok = out
        .iter()
        .find(|(_, m)| status(m) == 200)
        .expect("200")
        .1
        .clone();
    assert!(String::from_utf8_lossy(&ok.body).contains("a=x-anchored\r\n"));
    assert_eq!(
        user_counter(
            &metrics,
            "sdp",
            &[("kind", "offer"), ("leg", "b"), ("method", "INVITE")]
        ),
        1
    );
    assert_eq!(
        user_counter(
            &metrics,
            "sdp",
            &[("kind", "answer"), ("leg", "a"), ("method", "200")]
        ),
        1
    );
}

#[test]
fn in_dialog_requests_still_reach_a_call_after_its_peer_left_the_profile() {
    let metrics = Arc::new(RuleMetrics::default());
    let mut sim = Sim::with_rules(&profile_text(""), metrics.clone());
    let (b_invite, _) = answered_call(&mut sim, "moved@10.1.1.1");
    // The Teams peer moves to another address in a new version.
    let moved = profile_text("").replace(TEAMS_PEER, "127.0.0.9:5080");
    sim.engine.reload(rule_set(&moved, 2, metrics));
    let bye = format!(
        "BYE sip:+15550199@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/UDP {TEAMS_PEER};branch=z9hG4bKmoved
Max-Forwards: 70
From: {};tag=t1
To: {}
Call-ID: {}
CSeq: 9 BYE

",
        h(&b_invite, "To").unwrap_or_default(),
        h(&b_invite, "From").unwrap_or_default(),
        h(&b_invite, "Call-ID").unwrap_or_default()
    );
    let out = sim.teams_sends(&bye);
    assert_eq!(summary(&out), [format!("BYE->{CORE_PEER}")], "not a 403");
}

#[test]
fn dtmf_is_converted_between_rfc4733_and_sip_info() {
    let text = format!(
        "media:\n  address: 127.0.0.1\n  ports: 30000-30099\n{}",
        profile_text("    dtmf: info")
    );
    let mut sim = Sim::with_profile(&text);
    let (b_invite, ok) = answered_call(&mut sim, "dtmf@10.1.1.1");
    let anchored: Vec<MediaCommand> = std::iter::from_fn(|| sim.engine.poll_media()).collect();
    let call = anchored
        .into_iter()
        .find_map(|command| match command {
            MediaCommand::Stream { call, .. } => Some(call),
            _ => None,
        })
        .expect("anchored");

    // An RFC 4733 digit from the core's media goes to Teams as SIP INFO.
    let digit = MediaEvent::Dtmf {
        leg: Leg::A,
        digit: '5',
        duration_ms: 120,
        method: DtmfMethod::Rfc4733,
    };
    sim.engine.handle_relay_event(call, &digit, sim.now);
    let out = sim.sent();
    assert_eq!(summary(&out), [format!("INFO->{TEAMS_PEER}")]);
    let info = &out[0].1;
    assert_eq!(h(info, "Content-Type"), Some("application/dtmf-relay"));
    assert_eq!(&info.body[..], b"Signal=5\r\nDuration=120\r\n");
    assert_eq!(h(info, "Call-ID"), h(&b_invite, "Call-ID"));
    assert_eq!(h(info, "CSeq"), Some("2 INFO"));

    // SIP INFO from Teams becomes RFC 4733 toward the core: answered here, played there.
    let info = format!(
        "INFO sip:+15550199@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/UDP {TEAMS_PEER};branch=z9hG4bKinfo9
Max-Forwards: 70
From: {};tag=t1
To: {}
Call-ID: {}
CSeq: 5 INFO
Content-Type: application/dtmf-relay

Signal=9
Duration=160
",
        h(&b_invite, "To").unwrap_or_default(),
        h(&b_invite, "From").unwrap_or_default(),
        h(&b_invite, "Call-ID").unwrap_or_default()
    );
    let out = sim.teams_sends(&info);
    assert_eq!(
        summary(&out),
        [format!("200->{TEAMS_PEER}")],
        "not relayed as INFO"
    );
    assert_eq!(h(&out[0].1, "CSeq"), Some("5 INFO"));
    let plays: Vec<MediaCommand> = std::iter::from_fn(|| sim.engine.poll_media()).collect();
    assert_eq!(
        plays,
        [MediaCommand::Play {
            call,
            to: Leg::A,
            sound: Sound::Digits {
                digits: "9".into(),
                duration_ms: 160
            }
        }]
    );
    drop(ok);
}

/// The relay id of the call the relay was last told about, and whether each side's RFC 4733
/// events are held (caller's, callee's).
fn held_events(sim: &mut Sim) -> (MediaCallId, (bool, bool)) {
    std::iter::from_fn(|| sim.engine.poll_media())
        .filter_map(|command| match command {
            MediaCommand::Stream { call, stream } => {
                Some((call, (stream.a.dtmf_held, stream.b.dtmf_held)))
            }
            _ => None,
        })
        .last()
        .expect("anchored")
}

/// Rules that drop "1" and turn "2" into "#".
const DIGIT_RULES: &str = r##"
local r = {}
function r.on_media(call, ev)
  if ev.kind ~= "dtmf" then return end
  if ev.digit == "1" then return false end
  if ev.digit == "2" then return "#" end
end
return r
"##;

/// An answered, anchored call between trunks with `core` and `teams` DTMF modes; returns the
/// simulation, the relay's call id, the B-leg INVITE and what each side's stream holds back
/// (caller's events, callee's events).
fn dtmf_call(script: &str, core: &str, teams: &str) -> (Sim, MediaCallId, Message, (bool, bool)) {
    let text = format!(
        "media:\n  address: 127.0.0.1\n  ports: 30000-30099\n{}",
        profile_with_script(
            script,
            &format!("    dtmf: {core}"),
            &format!("    dtmf: {teams}")
        )
    );
    let mut sim = Sim::with_profile(&text);
    let (b_invite, _) = answered_call(&mut sim, "digits@10.1.1.1");
    let (call, held) = held_events(&mut sim);
    (sim, call, b_invite, held)
}

fn digit(leg: Leg, digit: char, method: DtmfMethod) -> MediaEvent {
    MediaEvent::Dtmf {
        leg,
        digit,
        duration_ms: 140,
        method,
    }
}

/// What the relay was asked to play since the last look: (toward which leg, digits, ms).
fn played(sim: &mut Sim) -> Vec<(Leg, String, u32)> {
    std::iter::from_fn(|| sim.engine.poll_media())
        .filter_map(|command| match command {
            MediaCommand::Play {
                to,
                sound:
                    Sound::Digits {
                        digits,
                        duration_ms,
                    },
                ..
            } => Some((to, digits, duration_ms)),
            _ => None,
        })
        .collect()
}

#[test]
fn dtmf_crosses_between_rfc4733_and_tones_both_ways() {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    // Core sends tones, Teams takes RFC 4733 events (and sends them).
    let (mut sim, call, _, held) = dtmf_call(default, "inband", "rfc4733");
    assert_eq!(
        held,
        (false, true),
        "Teams' events toward the tone leg are held"
    );
    sim.engine
        .handle_relay_event(call, &digit(Leg::A, '7', DtmfMethod::Inband), sim.now);
    assert_eq!(
        played(&mut sim),
        [(Leg::B, "7".into(), 140)],
        "tones -> events"
    );
    sim.engine
        .handle_relay_event(call, &digit(Leg::B, '3', DtmfMethod::Rfc4733), sim.now);
    assert_eq!(
        played(&mut sim),
        [(Leg::A, "3".into(), 140)],
        "events -> tones"
    );
    assert!(sim.sent().is_empty(), "no INFO");

    // Both RFC 4733 and no rule on digits: events pass through the relay untouched.
    let (mut sim, call, _, held) = dtmf_call(default, "rfc4733", "rfc4733");
    assert_eq!(held, (false, false));
    sim.engine
        .handle_relay_event(call, &digit(Leg::A, '7', DtmfMethod::Rfc4733), sim.now);
    assert!(played(&mut sim).is_empty());
    // Both tones: they stay in the audio.
    let (mut sim, call, _, _) = dtmf_call(default, "inband", "inband");
    sim.engine
        .handle_relay_event(call, &digit(Leg::A, '7', DtmfMethod::Inband), sim.now);
    assert!(played(&mut sim).is_empty());
}

#[test]
fn rules_drop_or_change_digits_in_every_form() {
    let rules = rules_file(DIGIT_RULES);
    // RFC 4733 both sides: with on_media the events are held and played again after it.
    let (mut sim, call, _, held) = dtmf_call(&rules, "rfc4733", "rfc4733");
    assert_eq!(held, (true, true));
    for d in ['5', '1', '2'] {
        sim.engine
            .handle_relay_event(call, &digit(Leg::A, d, DtmfMethod::Rfc4733), sim.now);
    }
    assert_eq!(
        played(&mut sim),
        [(Leg::B, "5".into(), 140), (Leg::B, "#".into(), 140)],
        "1 dropped, 2 became #"
    );

    // Toward a SIP INFO trunk: the INFO carries the changed digit; a dropped one sends none.
    let (mut sim, call, _, _) = dtmf_call(&rules, "inband", "info");
    sim.engine
        .handle_relay_event(call, &digit(Leg::A, '1', DtmfMethod::Inband), sim.now);
    assert!(sim.sent().is_empty(), "dropped");
    sim.engine
        .handle_relay_event(call, &digit(Leg::A, '2', DtmfMethod::Inband), sim.now);
    let out = sim.sent();
    assert_eq!(summary(&out), [format!("INFO->{TEAMS_PEER}")]);
    assert_eq!(&out[0].1.body[..], b"Signal=#\r\nDuration=140\r\n");

    // SIP INFO between two INFO trunks: a changed digit is answered here and sent anew.
    let (mut sim, _, b_invite, _) = dtmf_call(&rules, "info", "info");
    info_digits_from_teams_are_judged(&mut sim, &b_invite);
    assert!(played(&mut sim).is_empty());
}

/// Teams sends SIP INFO digits 2, 1, 5 under [`DIGIT_RULES`]: the core gets "#" in a new INFO
/// (Teams' answered here), nothing for "1", and the INFO for "5" as it is.
fn info_digits_from_teams_are_judged(sim: &mut Sim, b_invite: &Message) {
    let info = |signal: char, cseq: u32| {
        format!(
            "INFO sip:+15550199@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/UDP {TEAMS_PEER};branch=z9hG4bKinfo{cseq}
Max-Forwards: 70
From: {};tag=t1
To: {}
Call-ID: {}
CSeq: {cseq} INFO
Content-Type: application/dtmf-relay

Signal={signal}
Duration=100
",
            h(b_invite, "To").unwrap_or_default(),
            h(b_invite, "From").unwrap_or_default(),
            h(b_invite, "Call-ID").unwrap_or_default()
        )
    };
    let out = sim.teams_sends(&info('2', 5));
    assert_eq!(
        summary(&out),
        [format!("INFO->{CORE_PEER}"), format!("200->{TEAMS_PEER}")]
    );
    assert_eq!(&out[0].1.body[..], b"Signal=#\r\nDuration=100\r\n");
    let out = sim.teams_sends(&info('1', 6));
    assert_eq!(summary(&out), [format!("200->{TEAMS_PEER}")], "dropped");
    let out = sim.teams_sends(&info('5', 7));
    assert_eq!(
        summary(&out),
        [format!("INFO->{CORE_PEER}")],
        "unchanged: relayed as it is"
    );
}

/// A call from the core (its trunk with `core_extra`) offered to Teams, media anchored; returns
/// the simulation and the B-leg INVITE.
fn ringing_call(core_extra: &str) -> (Sim, Message) {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let text = format!(
        "media:\n  address: 127.0.0.1\n  ports: 30000-30099\n{}",
        profile_with_script(default, core_extra, "")
    );
    let mut sim = Sim::with_profile(&text);
    let out = sim.core_sends(&invite("ring@10.1.1.1", "z9hG4bKr1", ""));
    let b_invite = out
        .iter()
        .find(|(_, m)| method(m) == "INVITE")
        .map(|(_, m)| m.clone())
        .expect("B-leg INVITE");
    (sim, b_invite)
}

#[test]
fn local_ringback_answers_the_caller_in_the_180_and_the_200_repeats_it() {
    let (mut sim, b_invite) = ringing_call("    early_media: ringback\n    ringback: uk");
    std::iter::from_fn(|| sim.engine.poll_media()).for_each(drop);

    // Teams rings without early media: the core gets a 180 with Bridgehead's answer, and
    // ringback is played to it.
    let out = sim.teams_sends(&answer(&b_invite, 180, "Ringing", "t1", ""));
    assert_eq!(summary(&out), [format!("180->{CORE_PEER}")]);
    let ringing = out[0].1.clone();
    let early = String::from_utf8_lossy(&ringing.body).into_owned();
    assert_eq!(h(&ringing, "Content-Type"), Some("application/sdp"));
    assert!(early.contains("c=IN IP4 127.0.0.1\r\n"), "{early}");
    assert!(early.contains("m=audio 30002 RTP/AVP 8 101\r\n"), "{early}");
    assert!(!early.contains("0.0.0.0"), "{early}");
    let commands: Vec<MediaCommand> = std::iter::from_fn(|| sim.engine.poll_media()).collect();
    assert!(
        commands.iter().any(|c| matches!(
            c,
            MediaCommand::Play {
                to: Leg::A,
                sound: Sound::Ringback(TonePlan::Uk),
                ..
            }
        )),
        "the core trunk's own plan"
    );
    let last = commands.iter().rev().find_map(|c| match c {
        MediaCommand::Stream { stream, .. } => Some(stream.clone()),
        _ => None,
    });
    let stream = last.expect("stream");
    assert_eq!(stream.a.accepts, (false, true), "the caller gets PCMA only");
    assert_eq!(stream.b.remote, None, "Teams is not sending yet");

    // Teams answers PCMU: the core's 200 repeats the 180's answer; the relay transcodes.
    let pcmu = "v=0\no=- 7 7 IN IP4 52.114.1.10\ns=-\nc=IN IP4 52.114.1.10\nt=0 0\nm=audio 5000 RTP/AVP 0\na=rtpmap:0 PCMU/8000\n";
    let out = sim.teams_sends(&answer(&b_invite, 200, "OK", "t1", pcmu));
    let ok = out
        .iter()
        .find(|(_, m)| status(m) == 200)
        .map(|(_, m)| m.clone())
        .expect("200 to the core");
    assert_eq!(String::from_utf8_lossy(&ok.body), early);
    let stream = std::iter::from_fn(|| sim.engine.poll_media())
        .filter_map(|c| match c {
            MediaCommand::Stream { stream, .. } => Some(stream),
            _ => None,
        })
        .last()
        .expect("stream");
    assert_eq!(
        (stream.a.accepts, stream.b.accepts),
        ((false, true), (true, false))
    );
    assert_eq!(stream.b.remote, Some("52.114.1.10:5000".parse().unwrap()));
}

#[test]
fn local_ringback_waits_for_no_one_who_already_sent_early_media() {
    let (mut sim, b_invite) = ringing_call("    early_media: ringback");
    let out = sim.teams_sends(&answer(&b_invite, 183, "Session Progress", "t1", SDP));
    assert!(!out[0].1.body.is_empty(), "Teams' early media answer");
    std::iter::from_fn(|| sim.engine.poll_media()).for_each(drop);
    let out = sim.teams_sends(&answer(&b_invite, 180, "Ringing", "t1", ""));
    assert_eq!(summary(&out), [format!("180->{CORE_PEER}")]);
    assert!(out[0].1.body.is_empty(), "no second answer");
    let plays = std::iter::from_fn(|| sim.engine.poll_media())
        .filter(|c| matches!(c, MediaCommand::Play { .. }))
        .count();
    assert_eq!(plays, 0, "Teams' early media, not ringback");
}

#[test]
fn rfc4733_digits_become_tones_toward_a_leg_without_telephone_event() {
    let (mut sim, b_invite) = ringing_call("");
    let pcma_only = "v=0\no=- 7 7 IN IP4 52.114.1.10\ns=-\nc=IN IP4 52.114.1.10\nt=0 0\nm=audio 5000 RTP/AVP 8\n";
    sim.teams_sends(&answer(&b_invite, 200, "OK", "t1", pcma_only));
    let (call, held) = held_events(&mut sim);
    assert_eq!(held, (true, false), "Teams took no telephone-event");
    sim.engine
        .handle_relay_event(call, &digit(Leg::A, '8', DtmfMethod::Rfc4733), sim.now);
    assert_eq!(played(&mut sim), [(Leg::B, "8".into(), 140)]);
}

#[test]
fn without_media_a_changed_info_digit_goes_on_as_a_new_info() {
    let rules = rules_file(DIGIT_RULES);
    let mut sim = Sim::with_profile(&profile_with_script(&rules, "", ""));
    let (b_invite, _) = answered_call(&mut sim, "plain@10.1.1.1");
    info_digits_from_teams_are_judged(&mut sim, &b_invite);
}

/// A new call from the core; returns the B-leg INVITE as the engine would transmit it (peer,
/// transport and bytes).
fn b_invite_transmit(sim: &mut Sim, call_id: &str, extra: &str) -> bridgehead::Transmit {
    let text = invite(call_id, &format!("z9hG4bK{call_id}"), extra);
    sim.engine.handle_datagram(
        Bytes::from(with_length(&text)),
        udp_peer(0, CORE_PEER),
        sim.now,
    );
    std::iter::from_fn(|| sim.engine.poll_transmit())
        .find(|t| t.bytes.starts_with(b"INVITE"))
        .expect("B-leg INVITE")
}

#[test]
fn an_invite_the_transport_cannot_send_fails_at_once_with_503() {
    let mut sim = Sim::new();
    let b_invite = b_invite_transmit(&mut sim, "te-1", "");
    // The socket refuses it (a datagram too big, say): the caller hears 503 now, not 408
    // after Timer B, and nothing more goes toward Teams.
    sim.engine
        .handle_transport_error(&b_invite, "Message too long (os error 90)", sim.now);
    let out = sim.sent();
    assert_eq!(summary(&out), [format!("503->{CORE_PEER}")]);
    assert_eq!(sim.engine.stats().transport_errors, 1);
    assert_eq!(sim.engine.stats().calls_failed, 1);
    let later = sim.advance(Duration::from_secs(40));
    assert!(
        later.iter().all(|(p, _)| p.addr.to_string() == CORE_PEER),
        "no retransmission toward Teams: {:?}",
        summary(&later)
    );
    assert!(
        later.iter().all(|(_, m)| status(m) != 408),
        "{:?}",
        summary(&later)
    );
    assert_eq!(sim.engine.active_calls(), 0);
}

#[test]
fn a_transport_error_is_a_503_that_on_failure_can_route_again() {
    let metrics = Arc::new(RuleMetrics::default());
    let script = rules_file(LIFECYCLE_RULES);
    let mut sim = Sim::with_rules(&profile_with_script(&script, "", ""), metrics.clone());
    let b_invite = b_invite_transmit(&mut sim, "te-2", "");
    sim.engine
        .handle_transport_error(&b_invite, "Connection refused", sim.now);
    let out = sim.sent();
    assert_eq!(summary(&out), ["INVITE->127.0.0.3:5080"]);
    assert_eq!(user_counter(&metrics, "failure", &[("status", "503")]), 1);
}

#[test]
fn a_request_above_tcp_above_goes_over_tcp_with_its_via_saying_so() {
    let text = profile_text("    tcp_above: 1300\n").replace(
        "address: 127.0.0.1:5070\n",
        "address: 127.0.0.1:5070\n    transports: [udp, tcp]\n",
    );
    let mut sim = Sim::with_profile(&text);
    let small = b_invite_transmit(&mut sim, "tcp-1", "");
    assert!(small.bytes.len() <= 1300, "{}", small.bytes.len());
    assert_eq!(small.peer.transport, Transport::Udp);

    let padding = format!("X-Padding: {}\n", "p".repeat(1000));
    let large = b_invite_transmit(&mut sim, "tcp-2", &padding);
    assert!(large.bytes.len() > 1300, "{}", large.bytes.len());
    assert_eq!(large.peer.transport, Transport::Tcp);
    let msg = Message::parse(&large.bytes).expect("valid");
    let via = h(&msg, "Via").expect("Via");
    assert!(via.starts_with("SIP/2.0/TCP 127.0.0.1:5070;"), "{via}");
    assert_eq!(sim.engine.stats().switched_to_tcp, 1);
}

#[test]
fn a_call_whose_offer_cannot_be_anchored_is_refused_or_sent_unanchored_as_the_profile_says() {
    // One port pair per call leg: the first call takes both, the second finds none.
    let refuse = format!(
        "media:\n  address: 127.0.0.1\n  ports: 30000-30003\n{}",
        profile_text("")
    );
    let mut sim = Sim::with_profile(&refuse);
    let out = sim.core_sends(&invite("np-1@10.1.1.1", "z9hG4bKnp1", ""));
    assert_eq!(
        summary(&out),
        [format!("100->{CORE_PEER}"), format!("INVITE->{TEAMS_PEER}")]
    );
    let out = sim.core_sends(&invite("np-2@10.1.1.1", "z9hG4bKnp2", ""));
    assert_eq!(
        summary(&out),
        [format!("100->{CORE_PEER}"), format!("503->{CORE_PEER}")]
    );
    let stats = sim.engine.stats();
    assert_eq!((stats.media_failures, stats.calls_failed), (1, 1));
    assert_eq!(sim.engine.active_calls(), 1);

    let unanchored = refuse.replace(
        "ports: 30000-30003\n",
        "ports: 30000-30003\n  no_ports: unanchored\n",
    );
    let mut sim = Sim::with_profile(&unanchored);
    let first = sim.core_sends(&invite("np-3@10.1.1.1", "z9hG4bKnp3", ""));
    let out = sim.core_sends(&invite("np-4@10.1.1.1", "z9hG4bKnp4", ""));
    assert_eq!(
        summary(&out),
        [format!("100->{CORE_PEER}"), format!("INVITE->{TEAMS_PEER}")]
    );
    // The offer goes exactly as it came: the caller's address, port and payload types.
    assert_eq!(
        String::from_utf8_lossy(&out[1].1.body).replace("\r\n", "\n"),
        SDP,
        "not anchored: the SDP as it came"
    );
    assert_eq!(sim.engine.stats().media_failures, 1);
    // The first call fails and frees its ports; the second is answered: it stays unanchored
    // (half an anchored call would carry audio one way only).
    let b_first = first
        .iter()
        .find(|(_, m)| method(m) == "INVITE")
        .expect("B")
        .1
        .clone();
    sim.teams_sends(&answer(&b_first, 486, "Busy Here", "t1", ""));
    std::iter::from_fn(|| sim.engine.poll_media()).for_each(drop);
    let ok = sim.teams_sends(&answer(&out[1].1, 200, "OK", "t2", SDP));
    let to_caller = ok
        .iter()
        .find(|(p, m)| status(m) == 200 && p.addr.to_string() == CORE_PEER)
        .expect("200 to the caller");
    assert!(
        String::from_utf8_lossy(&to_caller.1.body).contains("m=audio 4000 RTP/AVP 8 101"),
        "the callee's answer as it came: {}",
        String::from_utf8_lossy(&to_caller.1.body)
    );
    let relayed: Vec<MediaCommand> = std::iter::from_fn(|| sim.engine.poll_media()).collect();
    assert!(
        !relayed
            .iter()
            .any(|c| matches!(c, MediaCommand::Stream { .. })),
        "no relay for an unanchored call: {relayed:?}"
    );
}

#[test]
fn a_seeded_engine_repeats_its_tags_branches_call_ids_and_keys() {
    let text = format!(
        "media:\n  address: 127.0.0.1\n  ports: 30000-30099\n{}",
        profile_text("    srtp: required\n")
    );
    let b_invite = |seed: u64| {
        let mut sim = Sim::with_profile(&text);
        sim.engine.seed_random(seed);
        b_invite_transmit(&mut sim, "seed-1", "").bytes
    };
    let first = b_invite(42);
    assert!(
        String::from_utf8_lossy(&first).contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    assert_eq!(first, b_invite(42), "the same seed: the same bytes");
    assert_ne!(first, b_invite(43));
}

/// The INVITE of [`invite`] (its branch made of the Call-ID) with the caller's option
/// headers replaced by `options` (lines).
fn invite_with_options(call_id: &str, options: &str) -> String {
    let branch = format!("z9hG4bK{}", call_id.replace(['@', '.'], ""));
    invite(call_id, &branch, "").replace("Supported: 100rel, timer\n", options)
}

/// The callee's reliable provisional response (RFC 3262) to the B-leg INVITE `b`.
fn reliable_answer(b: &Message, code: u16, rseq: u32, body: &str) -> String {
    answer(b, code, "Progress", "t1", body).replace(
        "Server: TeamsProxy\n",
        &format!("Server: TeamsProxy\nRequire: 100rel\nRSeq: {rseq}\n"),
    )
}

/// A PRACK from the caller in the early dialog `to` (the To of the provisional response).
fn caller_prack(to: &str, rack: &str, cseq: u32) -> String {
    format!(
        "PRACK sip:+15550100@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKprack{cseq}
Max-Forwards: 70
From: \"Alice\" <sip:+15550199@core.example.com>;tag=a1
To: {to}
Call-ID: r1@10.1.1.1
CSeq: {cseq} PRACK
RAck: {rack}

"
    )
}

fn b_leg_invite(out: &[(Peer, Message)]) -> Message {
    out.iter()
        .find(|(_, m)| method(m) == "INVITE")
        .map(|(_, m)| m.clone())
        .expect("B-leg INVITE")
}

#[test]
fn a_caller_requiring_100rel_gets_reliable_provisionals_one_at_a_time() {
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite_with_options("r1@10.1.1.1", "Require: 100rel\n"));
    let b = b_leg_invite(&out);
    assert_eq!(
        h(&b, "Supported"),
        Some("100rel, timer"),
        "Bridgehead's own"
    );
    assert!(
        h(&b, "Require").is_none(),
        "the caller's Require stays on its leg"
    );

    // The callee rings unreliably; the caller gets the 180 reliably.
    let out = sim.teams_sends(&answer(&b, 180, "Ringing", "t1", ""));
    assert_eq!(summary(&out), [format!("180->{CORE_PEER}")]);
    let ringing = out[0].1.clone();
    assert_eq!(h(&ringing, "Require"), Some("100rel"));
    let rseq: u32 = h(&ringing, "RSeq").expect("RSeq").parse().expect("number");
    assert!((1..1 << 31).contains(&rseq));
    let to = h(&ringing, "To").expect("To").to_string();

    // A 183 while the 180 waits for its PRACK waits its turn; the 180 is repeated at T1.
    let out = sim.teams_sends(&answer(&b, 183, "Session Progress", "t1", SDP));
    assert!(out.is_empty(), "{:?}", summary(&out));
    let out = sim.advance(Duration::from_millis(500));
    assert_eq!(summary(&out), [format!("180->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "RSeq"), Some(rseq.to_string().as_str()));

    // A PRACK that acknowledges something else: 481, and the 180 still waits.
    let out = sim.core_sends(&caller_prack(&to, &format!("{} 10 INVITE", rseq + 7), 11));
    assert_eq!(summary(&out), [format!("481->{CORE_PEER}")]);
    // The right one: 200, never relayed to the callee, and the 183 goes next.
    let out = sim.core_sends(&caller_prack(&to, &format!("{rseq} 10 INVITE"), 12));
    assert_eq!(
        summary(&out),
        [format!("200->{CORE_PEER}"), format!("183->{CORE_PEER}")]
    );
    assert_eq!(h(&out[0].1, "CSeq"), Some("12 PRACK"));
    let progress = &out[1].1;
    assert_eq!(h(progress, "RSeq"), Some((rseq + 1).to_string().as_str()));
    assert_eq!(h(progress, "Require"), Some("100rel"));
    assert!(!progress.body.is_empty(), "the early SDP crossed");
    // The 183 repeats on its own timer (T1 after it went), not the 180's (whose next repeat
    // was due at 1.5 s): one repeat in the next second.
    let out = sim.advance(Duration::from_millis(1000));
    assert_eq!(summary(&out), [format!("183->{CORE_PEER}")]);

    // The answer waits for the 183's PRACK (its SDP must be acknowledged first, RFC 3262
    // §3), which still repeats; then the 200 goes, and only it repeats until the ACK.
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", SDP));
    assert!(out.is_empty(), "{:?}", summary(&out));
    let out = sim.advance(Duration::from_millis(1000));
    assert_eq!(summary(&out), [format!("183->{CORE_PEER}")]);
    let out = sim.core_sends(&caller_prack(&to, &format!("{} 10 INVITE", rseq + 1), 13));
    assert_eq!(
        summary(&out),
        [format!("200->{CORE_PEER}"), format!("200->{CORE_PEER}")]
    );
    assert_eq!(h(&out[0].1, "CSeq"), Some("13 PRACK"));
    assert_eq!(h(&out[1].1, "CSeq"), Some("10 INVITE"));
    let out = sim.advance(Duration::from_millis(600));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
}

#[test]
fn a_2xx_held_for_a_prack_that_never_comes_fails_the_call_and_hangs_up_the_callee() {
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite_with_options("r1@10.1.1.1", "Require: 100rel\n"));
    let b = b_leg_invite(&out);
    let out = sim.teams_sends(&answer(&b, 183, "Session Progress", "t1", SDP));
    assert_eq!(summary(&out), [format!("183->{CORE_PEER}")]);
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", SDP));
    assert!(out.is_empty(), "held for the PRACK: {:?}", summary(&out));
    let out = sim.advance(Duration::from_secs(33));
    let sent = summary(&out);
    for wanted in [
        format!("504->{CORE_PEER}"),
        format!("ACK->{TEAMS_PEER}"),
        format!("BYE->{TEAMS_PEER}"),
    ] {
        assert!(sent.contains(&wanted), "{wanted} in {sent:?}");
    }
    assert!(!sent.contains(&format!("200->{CORE_PEER}")), "{sent:?}");
}

#[test]
fn bridgehead_pracks_the_callees_reliable_provisionals_in_sequence() {
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite_with_options("r1@10.1.1.1", ""));
    let b = b_leg_invite(&out);

    // A reliable 183: Bridgehead PRACKs it in the early dialog; the caller (no 100rel) gets
    // a plain 183 with the early SDP.
    let out = sim.teams_sends(&reliable_answer(&b, 183, 3000, SDP));
    assert_eq!(
        summary(&out),
        [format!("PRACK->{TEAMS_PEER}"), format!("183->{CORE_PEER}")]
    );
    let prack = &out[0].1;
    assert_eq!(h(prack, "RAck"), Some("3000 1 INVITE"));
    assert_eq!(h(prack, "CSeq"), Some("2 PRACK"));
    assert!(h(prack, "To").expect("To").ends_with(";tag=t1"));
    assert_eq!(h(prack, "Call-ID"), h(&b, "Call-ID"));
    match &prack.start {
        bridgehead::sip::StartLine::Request { uri, .. } => {
            assert_eq!(uri, "sip:teams@127.0.0.2:5080", "the 183's Contact")
        }
        _ => unreachable!(),
    }
    let progress = &out[1].1;
    assert!(h(progress, "Require").is_none() && h(progress, "RSeq").is_none());
    assert!(!progress.body.is_empty());

    // Its retransmission is neither PRACKed again nor relayed; one out of sequence neither.
    let out = sim.teams_sends(&reliable_answer(&b, 183, 3000, SDP));
    assert!(out.is_empty(), "{:?}", summary(&out));
    let out = sim.teams_sends(&reliable_answer(&b, 180, 3005, ""));
    assert!(out.is_empty(), "{:?}", summary(&out));
    // The next in sequence is.
    let out = sim.teams_sends(&reliable_answer(&b, 180, 3001, ""));
    assert_eq!(
        summary(&out),
        [format!("PRACK->{TEAMS_PEER}"), format!("180->{CORE_PEER}")]
    );
    assert_eq!(h(&out[0].1, "RAck"), Some("3001 1 INVITE"));
    assert_eq!(h(&out[0].1, "CSeq"), Some("3 PRACK"));
    // The callee's 200 to the PRACK ends there.
    let prack = out[0].1.clone();
    let text = answer(&prack, 200, "OK", "t1", "");
    let out = sim.teams_sends(&text);
    assert!(out.is_empty(), "{:?}", summary(&out));
}

#[test]
fn a_caller_that_supports_100rel_gets_reliable_provisionals_once_the_callees_are() {
    let mut sim = Sim::new();
    // The default INVITE says `Supported: 100rel, timer`.
    let out = sim.core_sends(&invite("r1@10.1.1.1", "z9hG4bKc1", ""));
    let b = b_leg_invite(&out);
    let out = sim.teams_sends(&answer(&b, 180, "Ringing", "t1", ""));
    assert!(
        h(&out[0].1, "RSeq").is_none(),
        "unreliable while the callee's are"
    );
    let out = sim.teams_sends(&reliable_answer(&b, 183, 1, SDP));
    assert_eq!(
        summary(&out),
        [format!("PRACK->{TEAMS_PEER}"), format!("183->{CORE_PEER}")]
    );
    assert_eq!(h(&out[1].1, "Require"), Some("100rel"));
    assert!(h(&out[1].1, "RSeq").is_some());
}

#[test]
fn the_trunks_100rel_setting_refuses_or_requires_it() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    // Disabled on the caller's trunk: a caller that requires it gets 420.
    let text = profile_with_script(script, "    rel100: disabled", "");
    let mut sim = Sim::with_profile(&text);
    let out = sim.core_sends(&invite_with_options("r1@10.1.1.1", "Require: 100rel\n"));
    assert_eq!(summary(&out), [format!("420->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "Unsupported"), Some("100rel"));
    // Required on the caller's trunk: a caller without it gets 421; required toward Teams:
    // the INVITE requires it.
    let text = profile_with_script(script, "    rel100: required", "    rel100: required");
    let mut sim = Sim::with_profile(&text);
    let out = sim.core_sends(&invite_with_options("r1@10.1.1.1", ""));
    assert_eq!(summary(&out), [format!("421->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "Require"), Some("100rel"));
    let out = sim.core_sends(&invite_with_options("r2@10.1.1.1", "Supported: 100rel\n"));
    let b = b_leg_invite(&out);
    assert_eq!(h(&b, "Require"), Some("100rel"));
    assert_eq!(h(&b, "Supported"), Some("timer"));
    // Any other option the caller requires still gets 420.
    let out = sim.core_sends(&invite_with_options(
        "r3@10.1.1.1",
        "Require: 100rel, foo\n",
    ));
    assert_eq!(summary(&out), [format!("420->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "Unsupported"), Some("foo"));
}

#[test]
fn a_reliable_provisional_never_pracked_fails_the_call_with_504_at_64_t1() {
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite_with_options("r1@10.1.1.1", "Require: 100rel\n"));
    let b = b_leg_invite(&out);
    let out = sim.teams_sends(&answer(&b, 180, "Ringing", "t1", ""));
    assert_eq!(summary(&out), [format!("180->{CORE_PEER}")]);
    // Repeated at 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s; at 32 s the caller gets 504 and the
    // callee a CANCEL.
    let out = sim.advance(Duration::from_millis(31_999));
    assert_eq!(out.len(), 6, "{:?}", summary(&out));
    let out = sim.advance(Duration::from_millis(1));
    assert_eq!(
        summary(&out),
        [format!("504->{CORE_PEER}"), format!("CANCEL->{TEAMS_PEER}")]
    );
    assert_eq!(sim.elapsed_ms(), 32_000);
}

/// A request from the caller in the dialog `to` (the To of the 200 it got).
fn caller_in_dialog(method: &str, call_id: &str, to: &str, cseq: u32) -> String {
    format!(
        "{method} sip:+15550100@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK{method}{cseq}
Max-Forwards: 70
From: \"Alice\" <sip:+15550199@core.example.com>;tag=a1
To: {to}
Call-ID: {call_id}
CSeq: {cseq} {method}

"
    )
}

/// The callee's response from fork `fork` (its To-tag and its own Contact).
fn fork_answer(b: &Message, code: u16, fork: &str, body: &str) -> String {
    answer(b, code, "From a fork", fork, body).replace(
        "<sip:teams@127.0.0.2:5080>",
        &format!("<sip:{fork}@127.0.0.2:5080>"),
    )
}

fn request_uri(msg: &Message) -> String {
    match &msg.start {
        bridgehead::sip::StartLine::Request { uri, .. } => uri.clone(),
        bridgehead::sip::StartLine::Response { .. } => String::new(),
    }
}

#[test]
fn three_forks_ring_the_second_answers_and_the_third_answering_late_is_acked_and_hung_up() {
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite_with_options("f1@10.1.1.1", ""));
    let b = b_leg_invite(&out);
    // Three endpoints ring, each in an early dialog of its own; the caller sees one.
    let mut caller_tos = Vec::new();
    for fork in ["fork1", "fork2", "fork3"] {
        let out = sim.teams_sends(&fork_answer(&b, 180, fork, ""));
        assert_eq!(summary(&out), [format!("180->{CORE_PEER}")]);
        caller_tos.push(h(&out[0].1, "To").expect("To").to_string());
    }
    caller_tos.dedup();
    assert_eq!(caller_tos.len(), 1, "one early dialog toward the caller");

    // The second answers: the caller gets the 200, and its ACK goes to that fork's dialog.
    let out = sim.teams_sends(&fork_answer(&b, 200, "fork2", SDP));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    let to = h(&out[0].1, "To").expect("To").to_string();
    let out = sim.core_sends(&caller_in_dialog("ACK", "f1@10.1.1.1", &to, 10));
    assert_eq!(summary(&out), [format!("ACK->{TEAMS_PEER}")]);
    assert!(h(&out[0].1, "To").expect("To").ends_with(";tag=fork2"));
    assert_eq!(request_uri(&out[0].1), "sip:fork2@127.0.0.2:5080");

    // The third answers too: ACKed and hung up in its own dialog; the caller hears nothing.
    let out = sim.teams_sends(&fork_answer(&b, 200, "fork3", SDP));
    assert_eq!(
        summary(&out),
        [format!("ACK->{TEAMS_PEER}"), format!("BYE->{TEAMS_PEER}")]
    );
    for (_, msg) in &out {
        assert!(h(msg, "To").expect("To").ends_with(";tag=fork3"));
        assert_eq!(request_uri(msg), "sip:fork3@127.0.0.2:5080");
    }
    assert_eq!(h(&out[0].1, "CSeq"), Some("1 ACK"));
    assert_eq!(h(&out[1].1, "CSeq"), Some("2 BYE"));
    // Its retransmission is only ACKed again; the answering fork's 200 repeated gets the
    // caller's ACK again, as before.
    let out = sim.teams_sends(&fork_answer(&b, 200, "fork3", SDP));
    assert_eq!(summary(&out), [format!("ACK->{TEAMS_PEER}")]);
    let out = sim.teams_sends(&fork_answer(&b, 200, "fork2", SDP));
    assert_eq!(summary(&out), [format!("ACK->{TEAMS_PEER}")]);
    assert!(h(&out[0].1, "To").expect("To").ends_with(";tag=fork2"));

    // The call goes on with the second fork: the caller's BYE reaches it.
    let out = sim.core_sends(&caller_in_dialog("BYE", "f1@10.1.1.1", &to, 11));
    assert_eq!(summary(&out), [format!("BYE->{TEAMS_PEER}")]);
    assert!(h(&out[0].1, "To").expect("To").ends_with(";tag=fork2"));
    assert_eq!(request_uri(&out[0].1), "sip:fork2@127.0.0.2:5080");
    assert_eq!(h(&out[0].1, "CSeq"), Some("3 BYE"));
}

#[test]
fn each_fork_has_its_own_rseq_space_and_its_own_pracks() {
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite_with_options("f2@10.1.1.1", ""));
    let b = b_leg_invite(&out);
    let reliable = |fork: &str, code: u16, rseq: u32| {
        fork_answer(&b, code, fork, "").replace(
            "Server: TeamsProxy\n",
            &format!("Server: TeamsProxy\nRequire: 100rel\nRSeq: {rseq}\n"),
        )
    };
    for (fork, code, rseq) in [("fork1", 180, 1), ("fork2", 180, 1), ("fork1", 183, 2)] {
        let out = sim.teams_sends(&reliable(fork, code, rseq));
        assert_eq!(
            summary(&out),
            [
                format!("PRACK->{TEAMS_PEER}"),
                format!("{code}->{CORE_PEER}")
            ],
            "{fork} RSeq {rseq}"
        );
        let prack = &out[0].1;
        assert!(h(prack, "To")
            .expect("To")
            .ends_with(&format!(";tag={fork}")));
        assert_eq!(request_uri(prack), format!("sip:{fork}@127.0.0.2:5080"));
        assert_eq!(h(prack, "RAck"), Some(format!("{rseq} 1 INVITE").as_str()));
    }
}

/// An emergency call's body: the SDP offer beside a PIDF-LO location (RFC 6442).
const PIDF: &str = "<?xml version=\"1.0\"?>\n<presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"pres:+15550199@core.example.com\"><tuple id=\"loc\"/></presence>";

fn multipart_invite(call_id: &str) -> String {
    let body = format!(
        "--b1\nContent-Type: application/sdp\n\n{SDP}\n--b1\nContent-Type: application/pidf+xml\nContent-ID: <loc@core.example.com>\n\n{PIDF}\n--b1--\n"
    );
    invite_with_options(call_id, "Geolocation: <cid:loc@core.example.com>\n")
        .replace(
            "Content-Type: application/sdp\n",
            "Content-Type: multipart/mixed;boundary=b1\n",
        )
        .replace(&format!("\n\n{SDP}"), &format!("\n\n{body}"))
}

#[test]
fn a_multipart_offer_is_relayed_with_its_sdp_anchored_and_its_location_intact() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let text = format!(
        "media:\n  address: 127.0.0.1\n  ports: 30000-30099\n{}",
        profile_with_script(script, "", "")
    );
    let mut sim = Sim::with_profile(&text);
    let out = sim.core_sends(&multipart_invite("m1@10.1.1.1"));
    let b = b_leg_invite(&out);
    assert_eq!(h(&b, "Content-Type"), Some("multipart/mixed;boundary=b1"));
    let body = String::from_utf8_lossy(&b.body).into_owned();
    assert!(
        body.contains(&PIDF.replace('\n', "\r\n")),
        "location intact:\n{body}"
    );
    assert!(
        body.contains("Content-ID: <loc@core.example.com>"),
        "{body}"
    );
    assert!(
        body.contains("c=IN IP4 127.0.0.1") && !body.contains("192.0.2.10"),
        "the SDP part anchored:\n{body}"
    );
    // The answer comes back as plain SDP, anchored toward the caller.
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", SDP));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    assert!(String::from_utf8_lossy(&out[0].1.body).contains("c=IN IP4 127.0.0.1"));
}

#[test]
fn toward_a_trunk_that_takes_sdp_only_a_multipart_offer_becomes_its_sdp() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let text = profile_with_script(script, "", "    multipart: sdp_only");
    let mut sim = Sim::with_profile(&text);
    let out = sim.core_sends(&multipart_invite("m2@10.1.1.1"));
    let b = b_leg_invite(&out);
    assert_eq!(h(&b, "Content-Type"), Some("application/sdp"));
    assert_eq!(String::from_utf8_lossy(&b.body), SDP.replace('\n', "\r\n"));
    // A body that is neither SDP nor multipart is still refused.
    let isup = invite_with_options("m3@10.1.1.1", "").replace(
        "Content-Type: application/sdp",
        "Content-Type: application/isup",
    );
    let out = sim.core_sends(&isup);
    assert_eq!(summary(&out), [format!("415->{CORE_PEER}")]);
}

#[test]
fn convert_183_to_180_rings_the_caller_and_keeps_the_sdp_only_of_a_reliable_183() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let text = profile_with_script(script, "    early_media: convert_183_to_180", "");
    let mut sim = Sim::with_profile(&text);
    let out = sim.core_sends(&invite_with_options("e1@10.1.1.1", ""));
    let b = b_leg_invite(&out);
    let out = sim.teams_sends(&answer(&b, 183, "Session Progress", "t1", SDP));
    assert_eq!(summary(&out), [format!("180->{CORE_PEER}")]);
    assert!(out[0].1.body.is_empty() && h(&out[0].1, "Content-Type").is_none());
    // The answer comes in the 200 (RFC 3261 §13.3.1.4 repeats it there).
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", SDP));
    assert!(!out[0].1.body.is_empty());

    // A reliable 183's SDP is the answer: it stays, in the 180.
    let out = sim.core_sends(&invite_with_options("e2@10.1.1.1", ""));
    let b = b_leg_invite(&out);
    let out = sim.teams_sends(&reliable_answer(&b, 183, 1, SDP));
    assert_eq!(
        summary(&out),
        [format!("PRACK->{TEAMS_PEER}"), format!("180->{CORE_PEER}")]
    );
    assert!(!out[1].1.body.is_empty(), "the answer stays");
}

#[test]
fn convert_180_to_183_answers_a_silent_180_with_bridgeheads_sdp_in_a_183() {
    let (mut sim, b_invite) = ringing_call("    early_media: convert_180_to_183");
    let out = sim.teams_sends(&answer(&b_invite, 180, "Ringing", "t1", ""));
    assert_eq!(summary(&out), [format!("183->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "Content-Type"), Some("application/sdp"));
    assert!(String::from_utf8_lossy(&out[0].1.body).contains("m=audio 30002"));
    let ringback = std::iter::from_fn(|| sim.engine.poll_media())
        .any(|c| matches!(c, MediaCommand::Play { .. }));
    assert!(ringback, "ringback played to the caller");
    // A later 180 reaches the caller as a 183 too (without SDP: it has its answer).
    let out = sim.teams_sends(&answer(&b_invite, 180, "Ringing", "t1", ""));
    assert_eq!(summary(&out), [format!("183->{CORE_PEER}")]);
    assert!(out[0].1.body.is_empty());
}

#[test]
fn a_rule_chooses_the_early_media_of_one_call_and_its_early_media_edits_go_on() {
    let rules = rules_file(
        r#"
local M = {}
function M.on_invite(call, req)
  if req:header("X-Trace") == "keep-me" then
    call:set_early_media("convert_183_to_180")
  end
end
function M.on_early_media(call, resp)
  resp:set_header("X-Early", "seen")
end
return M
"#,
    );
    let text = profile_with_script(&rules, "", "");
    let mut sim = Sim::with_profile(&text);
    let out = sim.core_sends(&invite_with_options("e3@10.1.1.1", ""));
    let b = b_leg_invite(&out);
    let out = sim.teams_sends(&answer(&b, 183, "Session Progress", "t1", SDP));
    assert_eq!(summary(&out), [format!("180->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "X-Early"), Some("seen"));
    // A call without the header keeps the trunk's passthrough.
    let out =
        sim.core_sends(&invite_with_options("e4@10.1.1.1", "").replace("X-Trace: keep-me\n", ""));
    let b = b_leg_invite(&out);
    let out = sim.teams_sends(&answer(&b, 183, "Session Progress", "t1", SDP));
    assert_eq!(summary(&out), [format!("183->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "X-Early"), Some("seen"));
}

#[test]
fn p_early_media_goes_only_to_trunks_that_take_it_and_is_added_there() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    // The core (an IMS core) takes P-Early-Media; Teams does not.
    let text = profile_with_script(script, "    p_early_media: true", "");
    let mut sim = Sim::with_profile(&text);
    let out = sim.core_sends(&invite_with_options(
        "p1@10.1.1.1",
        "P-Early-Media: supported\n",
    ));
    let b = b_leg_invite(&out);
    assert!(h(&b, "P-Early-Media").is_none(), "not toward Teams");
    let out = sim.teams_sends(&answer(&b, 183, "Session Progress", "t1", SDP));
    assert_eq!(h(&out[0].1, "P-Early-Media"), Some("sendrecv"));
    let gated = answer(&b, 183, "Session Progress", "t1", SDP).replace(
        "Server: TeamsProxy\n",
        "Server: TeamsProxy\nP-Early-Media: inactive\n",
    );
    let out = sim.teams_sends(&gated);
    assert_eq!(
        h(&out[0].1, "P-Early-Media"),
        Some("inactive"),
        "the callee's own"
    );
    // Toward the core an INVITE says it supports it.
    let text = profile_with_script(script, "", "    p_early_media: true");
    let mut sim = Sim::with_profile(&text);
    let out = sim.core_sends(&invite_with_options("p2@10.1.1.1", ""));
    assert_eq!(h(&b_leg_invite(&out), "P-Early-Media"), Some("supported"));
}

#[test]
fn a_delayed_offer_toward_a_trunk_that_takes_none_gets_bridgeheads_offer_and_the_ack_answer_stays()
{
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let text = format!(
        "media:\n  address: 127.0.0.1\n  ports: 30000-30099\n{}",
        profile_with_script(
            script,
            "",
            "    delayed_offer: convert\n    codecs: [PCMU, PCMA, telephone-event]"
        )
    );
    let mut sim = Sim::with_profile(&text);
    // The caller offers nothing.
    let no_sdp = invite_with_options("d1@10.1.1.1", "")
        .replace("Content-Type: application/sdp\n", "")
        .replace(&format!("\n\n{SDP}"), "\n\n");
    let out = sim.core_sends(&no_sdp);
    let b = b_leg_invite(&out);
    let offer = String::from_utf8_lossy(&b.body).into_owned();
    assert_eq!(h(&b, "Content-Type"), Some("application/sdp"));
    assert!(offer.contains("c=IN IP4 127.0.0.1\r\n"), "{offer}");
    assert!(
        offer.contains("m=audio 30000 RTP/AVP 0 8 101\r\n"),
        "{offer}"
    );
    assert!(
        offer.contains("a=rtpmap:101 telephone-event/8000"),
        "{offer}"
    );
    // Early media from Teams answers Bridgehead's offer, not the caller's: no SDP to it.
    let out = sim.teams_sends(&answer(&b, 183, "Session Progress", "t1", SDP));
    assert_eq!(summary(&out), [format!("183->{CORE_PEER}")]);
    assert!(out[0].1.body.is_empty());
    // Teams' answer becomes the caller's offer, on the caller's side of the relay.
    let teams_answer = SDP
        .replace("RTP/AVP 8 101", "RTP/AVP 0 101")
        .replace("rtpmap:8 PCMA", "rtpmap:0 PCMU");
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", &teams_answer));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    let caller_offer = String::from_utf8_lossy(&out[0].1.body).into_owned();
    assert!(
        caller_offer.contains("m=audio 30002 RTP/AVP 0 101\r\n"),
        "{caller_offer}"
    );
    assert!(
        caller_offer.contains("c=IN IP4 127.0.0.1\r\n"),
        "{caller_offer}"
    );
    let to = h(&out[0].1, "To").expect("To").to_string();
    // The caller answers in its ACK: anchored (the relay sends to it), not sent to Teams.
    std::iter::from_fn(|| sim.engine.poll_media()).for_each(drop);
    let caller_answer = SDP
        .replace("192.0.2.10", "192.0.2.77")
        .replace("m=audio 4000 RTP/AVP 8 101", "m=audio 7000 RTP/AVP 0 101")
        .replace("rtpmap:8 PCMA", "rtpmap:0 PCMU");
    let ack = caller_in_dialog("ACK", "d1@10.1.1.1", &to, 10).replace(
        "CSeq: 10 ACK\n",
        "CSeq: 10 ACK\nContent-Type: application/sdp\n",
    ) + &caller_answer;
    let out = sim.core_sends(&ack);
    assert_eq!(summary(&out), [format!("ACK->{TEAMS_PEER}")]);
    assert!(out[0].1.body.is_empty(), "Teams has its answer");
    assert!(h(&out[0].1, "Content-Type").is_none());
    let learnt = std::iter::from_fn(|| sim.engine.poll_media()).any(|command| match command {
        MediaCommand::Stream { stream, .. } => {
            stream.a.remote == Some("192.0.2.77:7000".parse().expect("addr"))
        }
        _ => false,
    });
    assert!(
        learnt,
        "the relay sends the caller's media where its answer says"
    );
}

#[test]
fn an_update_before_the_answer_crosses_the_early_dialogs_with_its_sdp() {
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite_with_options("u1@10.1.1.1", ""));
    let b = b_leg_invite(&out);
    let out = sim.teams_sends(&answer(&b, 183, "Session Progress", "t1", SDP));
    let to = h(&out[0].1, "To").expect("To").to_string();
    // The caller updates the session in the early dialog (RFC 3311).
    let update = caller_in_dialog("UPDATE", "u1@10.1.1.1", &to, 11).replace(
        "CSeq: 11 UPDATE\n",
        "CSeq: 11 UPDATE\nContact: <sip:alice@127.0.0.1:5090>\nContent-Type: application/sdp\n",
    ) + &SDP.replace("a=rtpmap:101", "a=sendonly\na=rtpmap:101");
    let out = sim.core_sends(&update);
    assert_eq!(summary(&out), [format!("UPDATE->{TEAMS_PEER}")]);
    let b_update = out[0].1.clone();
    assert!(h(&b_update, "To").expect("To").ends_with(";tag=t1"));
    assert_eq!(request_uri(&b_update), "sip:teams@127.0.0.2:5080");
    assert_eq!(h(&b_update, "CSeq"), Some("2 UPDATE"));
    assert!(String::from_utf8_lossy(&b_update.body).contains("a=sendonly"));
    // Teams answers it: the answer goes back to the caller, the INVITE still pending.
    let out = sim.teams_sends(&answer(&b_update, 200, "OK", "t1", SDP));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "CSeq"), Some("11 UPDATE"));
    assert!(!out[0].1.body.is_empty());
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", SDP));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "CSeq"), Some("10 INVITE"));
}

#[test]
fn a_refresh_update_toward_a_leg_that_takes_no_update_is_answered_by_bridgehead() {
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite_with_options("u2@10.1.1.1", ""));
    let b = b_leg_invite(&out);
    // Teams' Allow has no UPDATE.
    let ok = answer(&b, 200, "OK", "t1", SDP).replace(
        "Server: TeamsProxy\n",
        "Server: TeamsProxy\nAllow: INVITE, ACK, BYE, CANCEL, OPTIONS\n",
    );
    let out = sim.teams_sends(&ok);
    let to = h(&out[0].1, "To").expect("To").to_string();
    sim.core_sends(&caller_in_dialog("ACK", "u2@10.1.1.1", &to, 10));
    // The caller refreshes its session with an UPDATE without SDP: answered here.
    let out = sim.core_sends(&caller_in_dialog("UPDATE", "u2@10.1.1.1", &to, 11));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "CSeq"), Some("11 UPDATE"));
    assert_eq!(
        h(&out[0].1, "Contact"),
        Some("<sip:+15550100@127.0.0.1:5060>")
    );
    // One with SDP goes to Teams as a re-INVITE; Teams' answer comes back in the UPDATE's
    // 200, and Bridgehead acknowledges the re-INVITE.
    let update = caller_offer("UPDATE", "u2@10.1.1.1", &to, 12, SDP);
    let out = sim.core_sends(&update);
    assert_eq!(summary(&out), [format!("INVITE->{TEAMS_PEER}")]);
    let reinvite = out[0].1.clone();
    assert_eq!(h(&reinvite, "CSeq"), Some("2 INVITE"));
    assert!(String::from_utf8_lossy(&reinvite.body).contains("m=audio 4000"));
    assert!(h(&reinvite, "Contact").is_some());
    // A second offer meanwhile: 491 (one INVITE at a time).
    let out = sim.core_sends(&caller_offer("UPDATE", "u2@10.1.1.1", &to, 13, SDP));
    assert_eq!(summary(&out), [format!("491->{CORE_PEER}")]);
    let answer_sdp = SDP.replace("4000", "4002");
    let out = sim.teams_sends(&answer(&reinvite, 200, "OK", "t1", &answer_sdp));
    assert_eq!(
        summary(&out),
        [format!("200->{CORE_PEER}"), format!("ACK->{TEAMS_PEER}")]
    );
    assert_eq!(h(&out[0].1, "CSeq"), Some("12 UPDATE"));
    assert!(String::from_utf8_lossy(&out[0].1.body).contains("m=audio 4002"));
    assert_eq!(h(&out[1].1, "CSeq"), Some("2 ACK"));
    // Its retransmitted 200 gets the same ACK again, and nothing reaches the caller.
    let out = sim.teams_sends(&answer(&reinvite, 200, "OK", "t1", &answer_sdp));
    assert_eq!(summary(&out), [format!("ACK->{TEAMS_PEER}")]);
}

#[test]
fn a_leg_that_takes_no_update_is_refreshed_with_a_reinvite_offering_its_session_unchanged() {
    let text = profile_text("    session_timer:\n      expires: 90");
    let mut sim = Sim::with_profile(&text);
    let (b, _, _) = timed_call(
        &mut sim,
        "s9@10.1.1.1",
        "",
        "Session-Expires: 90;refresher=uac\nRequire: timer\nAllow: INVITE, ACK, BYE, CANCEL\n",
    );
    let offered = String::from_utf8_lossy(&b.body).into_owned();
    let out = sim.advance(Duration::from_secs(45));
    assert_eq!(summary(&out), [format!("INVITE->{TEAMS_PEER}")]);
    let refresh = out[0].1.clone();
    assert_eq!(h(&refresh, "Session-Expires"), Some("90;refresher=uac"));
    assert_eq!(
        String::from_utf8_lossy(&refresh.body),
        offered,
        "the session as Teams has it"
    );
    let out = sim.teams_sends(&answer(&refresh, 200, "OK", "t1", SDP));
    assert_eq!(summary(&out), [format!("ACK->{TEAMS_PEER}")]);
    assert_eq!(h(&out[0].1, "CSeq"), Some("2 ACK"));
    // The next refresh is due 45 s later; the call is still up.
    let out = sim.advance(Duration::from_secs(45));
    assert_eq!(summary(&out), [format!("INVITE->{TEAMS_PEER}")]);
    assert_eq!(sim.engine.active_calls(), 1);
}

/// An answered call whose caller asked for session timers with `options` (lines); returns the
/// B-leg INVITE, the caller's 200 and its To.
fn timed_call(
    sim: &mut Sim,
    call_id: &str,
    options: &str,
    teams_ok_extra: &str,
) -> (Message, Message, String) {
    let out = sim.core_sends(&invite_with_options(call_id, options));
    let b = b_leg_invite(&out);
    let ok = answer(&b, 200, "OK", "t1", SDP).replace(
        "Server: TeamsProxy\n",
        &format!("Server: TeamsProxy\n{teams_ok_extra}"),
    );
    let out = sim.teams_sends(&ok);
    let a_ok = out[0].1.clone();
    let to = h(&a_ok, "To").expect("To").to_string();
    sim.core_sends(&caller_in_dialog("ACK", call_id, &to, 10));
    (b, a_ok, to)
}

#[test]
fn a_caller_that_refreshes_keeps_its_call_and_one_that_stops_is_hung_up_on_both_legs() {
    let mut sim = Sim::new();
    // Teams takes the interval and leaves its leg's refreshes to Bridgehead.
    let (b, ok, to) = timed_call(
        &mut sim,
        "s1@10.1.1.1",
        "Supported: timer\nSession-Expires: 120;refresher=uac\nMin-SE: 90\n",
        "Session-Expires: 120;refresher=uac\nRequire: timer\n",
    );
    // The callee's INVITE asks for the caller's interval; the caller's 200 names it refresher.
    assert_eq!(h(&b, "Session-Expires"), Some("120"));
    assert_eq!(h(&b, "Min-SE"), Some("90"));
    assert_eq!(h(&ok, "Session-Expires"), Some("120;refresher=uac"));
    assert_eq!(h(&ok, "Require"), Some("timer"));
    // At 60 s Bridgehead refreshes Teams' leg, and the caller refreshes its own (an UPDATE
    // without SDP; Teams allows UPDATE: relayed).
    let out = sim.advance(Duration::from_secs(60));
    assert_eq!(summary(&out), [format!("UPDATE->{TEAMS_PEER}")]);
    assert_eq!(h(&out[0].1, "Session-Expires"), Some("120;refresher=uac"));
    let refresh = out[0].1.clone();
    sim.teams_sends(&answer(&refresh, 200, "OK", "t1", ""));
    let out = sim.core_sends(&caller_in_dialog("UPDATE", "s1@10.1.1.1", &to, 11));
    assert_eq!(summary(&out), [format!("UPDATE->{TEAMS_PEER}")]);
    let update = out[0].1.clone();
    // Relayed with Teams' own timer: Bridgehead (its UAC) refreshes that leg.
    assert_eq!(h(&update, "Session-Expires"), Some("120;refresher=uac"));
    let out = sim.teams_sends(&answer(&update, 200, "OK", "t1", ""));
    // The caller's 2xx names it (its UAC) the refresher.
    assert_eq!(h(&out[0].1, "Session-Expires"), Some("120;refresher=uac"));
    assert_eq!(h(&out[0].1, "Require"), Some("timer"));
    // Then stops: 120 - 32 s after its refresh (at 148 s), both legs get a BYE with a Reason
    // (meanwhile Bridgehead refreshed Teams' leg again at 120 s, unanswered so far).
    let out = sim.advance(Duration::from_secs(87));
    assert!(
        out.iter().all(|(_, m)| method(m) != "BYE"),
        "{:?}",
        summary(&out)
    );
    let out = sim.advance(Duration::from_millis(1001));
    let byes: Vec<_> = out.iter().filter(|(_, m)| method(m) == "BYE").collect();
    assert_eq!(byes.len(), 2, "one to each leg: {:?}", summary(&out));
    assert_ne!(byes[0].0.addr, byes[1].0.addr);
    assert_eq!(sim.elapsed_ms(), 148_001);
    for (_, bye) in byes {
        assert!(h(bye, "Reason")
            .expect("Reason")
            .contains("Session timer expired"));
    }
    assert_eq!(sim.engine.active_calls(), 0);
}

#[test]
fn too_short_a_session_gets_422_with_the_trunks_min_se() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let text = profile_with_script(script, "    session_timer: { min_se: 300 }", "");
    let mut sim = Sim::with_profile(&text);
    let out = sim.core_sends(&invite_with_options(
        "s2@10.1.1.1",
        "Supported: timer\nSession-Expires: 120\n",
    ));
    assert_eq!(summary(&out), [format!("422->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "Min-SE"), Some("300"));
    // Require: timer is no reason for 420.
    let out = sim.core_sends(&invite_with_options(
        "s3@10.1.1.1",
        "Require: timer\nSession-Expires: 600\n",
    ));
    assert_eq!(status(&out[0].1), 100);
}

#[test]
fn bridgehead_refreshes_the_leg_it_refreshes_and_only_a_481_or_408_ends_the_call() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    // Teams' trunk asks for 1800 s and Teams leaves the refreshes to Bridgehead (the UAC of
    // that INVITE): every 900 s.
    let text = profile_with_script(script, "", "    session_timer: { expires: 1800 }");
    let mut sim = Sim::with_profile(&text);
    let (b, ok, _) = timed_call(
        &mut sim,
        "s4@10.1.1.1",
        "",
        "Session-Expires: 1800;refresher=uac\n",
    );
    assert_eq!(h(&b, "Session-Expires"), Some("1800"));
    assert!(
        h(&ok, "Session-Expires").is_none(),
        "no timer toward a caller that asked none"
    );
    let out = sim.advance(Duration::from_secs(900));
    assert_eq!(summary(&out), [format!("UPDATE->{TEAMS_PEER}")]);
    let refresh = out[0].1.clone();
    assert_eq!(h(&refresh, "Session-Expires"), Some("1800;refresher=uac"));
    assert_eq!(h(&refresh, "Supported"), Some("timer"));
    assert!(refresh.body.is_empty());
    // A 491 (a glare) does not end the call; the next refresh comes 900 s later.
    let out = sim.teams_sends(&answer(&refresh, 491, "Request Pending", "t1", ""));
    assert!(
        out.iter().all(|(_, m)| method(m) != "BYE"),
        "{:?}",
        summary(&out)
    );
    let out = sim.advance(Duration::from_secs(900));
    assert_eq!(summary(&out), [format!("UPDATE->{TEAMS_PEER}")]);
    // A 481 does: the call ends on both legs.
    let refresh = out[0].1.clone();
    let out = sim.teams_sends(&answer(&refresh, 481, "Call Does Not Exist", "t1", ""));
    let byes: Vec<_> = out.iter().filter(|(_, m)| method(m) == "BYE").collect();
    assert_eq!(byes.len(), 2, "{:?}", summary(&out));
    assert!(h(&byes[0].1, "Reason")
        .expect("Reason")
        .contains("refresh failed"));
}

#[test]
fn a_callee_whose_2xx_says_nothing_of_timers_gets_no_refresh() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let text = profile_with_script(script, "", "    session_timer: { expires: 1800 }");
    let mut sim = Sim::with_profile(&text);
    timed_call(&mut sim, "s5@10.1.1.1", "", "");
    // RFC 4028 §7.2: no Session-Expires in the 2xx, no session expiration on that leg.
    let out = sim.advance(Duration::from_secs(3600));
    assert!(out.is_empty(), "{:?}", summary(&out));
    assert_eq!(sim.engine.active_calls(), 1);
}

#[test]
fn a_callee_asking_for_a_zero_second_session_gets_the_90_second_minimum() {
    let mut sim = Sim::new();
    let (_, _, _) = timed_call(
        &mut sim,
        "s6@10.1.1.1",
        "",
        "Session-Expires: 0;refresher=uac\n",
    );
    // Refreshed every 45 s, not at once over and over.
    let out = sim.advance(Duration::from_secs(44));
    assert!(out.is_empty(), "{:?}", summary(&out));
    let out = sim.advance(Duration::from_secs(1));
    assert_eq!(summary(&out), [format!("UPDATE->{TEAMS_PEER}")]);
    assert_eq!(h(&out[0].1, "Session-Expires"), Some("90;refresher=uac"));
}

/// An offer from an IMS caller whose QoS preconditions (RFC 3312) are not met yet: its own
/// segment (local) must be reserved both ways before the callee may ring.
const QOS_OFFER: &str = "v=0\no=- 1 1 IN IP4 192.0.2.10\ns=-\nc=IN IP4 192.0.2.10\nt=0 0\nm=audio 4000 RTP/AVP 8 101\na=rtpmap:8 PCMA/8000\na=rtpmap:101 telephone-event/8000\na=curr:qos local none\na=curr:qos remote none\na=des:qos mandatory local sendrecv\na=des:qos mandatory remote sendrecv\n";

/// A call with preconditions from the core (its trunk terminating them), media anchored:
/// returns the simulation and what the caller's INVITE got.
fn precondition_call(call_id: &str, options: &str) -> (Sim, Vec<(Peer, Message)>) {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let text = format!(
        "media:\n  address: 127.0.0.1\n  ports: 30000-30099\n{}",
        profile_with_script(default, "    precondition: terminate", "")
    );
    let mut sim = Sim::with_profile(&text);
    let invite = invite_with_options(call_id, options).replace(SDP, QOS_OFFER);
    let out = sim.core_sends(&invite);
    (sim, out)
}

/// A request from the caller in dialog `to` with an SDP body.
fn caller_offer(method: &str, call_id: &str, to: &str, cseq: u32, sdp: &str) -> String {
    caller_in_dialog(method, call_id, to, cseq)
        .trim_end()
        .to_string()
        + &format!("\nContent-Type: application/sdp\n\n{sdp}")
}

#[test]
fn an_ims_caller_with_preconditions_reaches_the_callee_once_its_resources_are_reserved() {
    let call_id = "q1@10.1.1.1";
    let (mut sim, out) = precondition_call(call_id, "Require: 100rel, precondition\n");
    // Bridgehead answers at once in a reliable 183; the callee hears nothing yet.
    assert_eq!(
        summary(&out),
        [format!("100->{CORE_PEER}"), format!("183->{CORE_PEER}")]
    );
    let progress = out[1].1.clone();
    assert_eq!(h(&progress, "Require"), Some("100rel"));
    let rseq = h(&progress, "RSeq").expect("RSeq").to_string();
    let answer_sdp = String::from_utf8_lossy(&progress.body).into_owned();
    for line in [
        "m=audio 30002 RTP/AVP 8 101",
        "a=curr:qos local sendrecv",
        "a=curr:qos remote none",
        "a=des:qos mandatory local sendrecv",
        "a=des:qos mandatory remote sendrecv",
        "a=conf:qos remote sendrecv",
    ] {
        assert!(answer_sdp.contains(line), "{line} in\n{answer_sdp}");
    }
    let to = h(&progress, "To").expect("To").to_string();

    // The PRACK: 200, and still nothing to the callee.
    let out = sim.core_sends(
        &caller_prack(&to, &format!("{rseq} 10 INVITE"), 11).replace("r1@10.1.1.1", call_id),
    );
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);

    // The caller's bearer is up: its UPDATE says so. Bridgehead answers it (its own segment
    // and now the caller's are met, nothing more to confirm) and calls the callee, plain SDP.
    let ready = QOS_OFFER
        .replace("o=- 1 1", "o=- 1 2")
        .replace("a=curr:qos local none", "a=curr:qos local sendrecv");
    let out = sim.core_sends(&caller_offer("UPDATE", call_id, &to, 12, &ready));
    assert_eq!(
        summary(&out),
        [format!("200->{CORE_PEER}"), format!("INVITE->{TEAMS_PEER}")]
    );
    let updated = String::from_utf8_lossy(&out[0].1.body).into_owned();
    assert!(updated.contains("a=curr:qos remote sendrecv"), "{updated}");
    assert!(!updated.contains("a=conf:qos"), "{updated}");
    assert!(
        updated.contains("m=audio 30002 "),
        "the same port: {updated}"
    );
    assert!(
        updated.contains(" 2 IN IP4 "),
        "the next origin version: {updated}"
    );
    let b = out[1].1.clone();
    let offer = String::from_utf8_lossy(&b.body).into_owned();
    assert!(offer.contains("m=audio 30000 RTP/AVP"), "{offer}");
    assert!(
        !offer.contains("qos"),
        "no precondition toward Teams:\n{offer}"
    );
    assert!(h(&b, "Require").is_none_or(|r| !r.contains("precondition")));

    // Teams rings: a reliable 180 to the caller; Teams answers: the caller's 200 repeats
    // Bridgehead's answer.
    let out = sim.teams_sends(&answer(&b, 180, "Ringing", "t1", ""));
    assert_eq!(summary(&out), [format!("180->{CORE_PEER}")]);
    let next: u32 = rseq.parse::<u32>().expect("number") + 1;
    assert_eq!(h(&out[0].1, "RSeq"), Some(next.to_string().as_str()));
    let out = sim.core_sends(
        &caller_prack(&to, &format!("{next} 10 INVITE"), 13).replace("r1@10.1.1.1", call_id),
    );
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", SDP));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    assert_eq!(String::from_utf8_lossy(&out[0].1.body), updated);
}

#[test]
fn an_offer_already_meeting_its_preconditions_calls_the_callee_at_once() {
    let ready = QOS_OFFER.replace("a=curr:qos local none", "a=curr:qos local sendrecv");
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let text = format!(
        "media:\n  address: 127.0.0.1\n  ports: 30000-30099\n{}",
        profile_with_script(default, "    precondition: terminate", "")
    );
    let mut sim = Sim::with_profile(&text);
    let invite = invite_with_options("q2@10.1.1.1", "Supported: 100rel, precondition\n")
        .replace(SDP, &ready);
    let out = sim.core_sends(&invite);
    assert_eq!(
        summary(&out),
        [
            format!("100->{CORE_PEER}"),
            format!("183->{CORE_PEER}"),
            format!("INVITE->{TEAMS_PEER}")
        ]
    );
    assert!(!String::from_utf8_lossy(&out[1].1.body).contains("conf:qos"));
}

#[test]
fn a_caller_waiting_for_preconditions_cancels_or_times_out_without_the_callee_hearing_of_it() {
    let call_id = "q3@10.1.1.1";
    let (mut sim, out) = precondition_call(call_id, "Require: 100rel, precondition\n");
    let to = h(&out[1].1, "To").expect("To").to_string();
    let cancel = format!(
        "CANCEL sip:+15550100@sbc.example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKq310111
Max-Forwards: 70
From: \"Alice\" <sip:+15550199@core.example.com>;tag=a1
To: <sip:+15550100@sbc.example.com>
Call-ID: {call_id}
CSeq: 10 CANCEL

"
    );
    let out = sim.core_sends(&cancel);
    assert_eq!(
        summary(&out),
        [format!("200->{CORE_PEER}"), format!("487->{CORE_PEER}")],
        "{to}"
    );
    assert_eq!(sim.engine.active_calls(), 0, "the call is over");

    // No UPDATE ever: 580 after 32 s (the 183 was PRACKed), the callee never called.
    let (mut sim, out) = precondition_call("q4@10.1.1.1", "Require: 100rel, precondition\n");
    let progress = out[1].1.clone();
    let to = h(&progress, "To").expect("To").to_string();
    let rack = format!("{} 10 INVITE", h(&progress, "RSeq").expect("RSeq"));
    sim.core_sends(&caller_prack(&to, &rack, 11).replace("r1@10.1.1.1", "q4@10.1.1.1"));
    let out = sim.advance(Duration::from_secs(40));
    let sent = summary(&out);
    assert!(sent.contains(&format!("580->{CORE_PEER}")), "{sent:?}");
    assert!(!sent.iter().any(|s| s.starts_with("INVITE")), "{sent:?}");
    assert_eq!(sim.engine.active_calls(), 0);
}

#[test]
fn preconditions_need_a_trunk_that_terminates_them_and_a_caller_with_100rel() {
    // The default trunk takes no part: Require gets 420.
    let mut sim = Sim::new();
    let invite =
        invite_with_options("q5@10.1.1.1", "Require: precondition\n").replace(SDP, QOS_OFFER);
    let out = sim.core_sends(&invite);
    assert_eq!(summary(&out), [format!("420->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "Unsupported"), Some("precondition"));
    // A terminating trunk, a caller without 100rel: 421 asking for it.
    let (_, out) = precondition_call("q6@10.1.1.1", "Require: precondition\n");
    assert_eq!(summary(&out), [format!("421->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "Require"), Some("100rel"));
}

/// A caller with `options` offering nothing (delayed offer), media anchored, Teams' trunk
/// with `teams_extra`; returns the simulation and the B-leg INVITE.
fn delayed_offer_call(call_id: &str, options: &str, teams_extra: &str) -> (Sim, Message) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let text = format!(
        "media:\n  address: 127.0.0.1\n  ports: 30000-30099\n{}",
        profile_with_script(script, "", teams_extra)
    );
    let mut sim = Sim::with_profile(&text);
    let no_sdp = invite_with_options(call_id, options)
        .replace("Content-Type: application/sdp\n", "")
        .replace(&format!("\n\n{SDP}"), "\n\n");
    let out = sim.core_sends(&no_sdp);
    let b = b_leg_invite(&out);
    (sim, b)
}

/// Teams' offer (it answers a delayed offer in its first reliable provisional).
const TEAMS_OFFER: &str = "v=0\no=- 7 1 IN IP4 192.0.2.20\ns=-\nc=IN IP4 192.0.2.20\nt=0 0\nm=audio 6000 RTP/AVP 8 0 101\na=rtpmap:8 PCMA/8000\na=rtpmap:0 PCMU/8000\na=rtpmap:101 telephone-event/8000\n";

#[test]
fn the_callees_offer_in_a_reliable_183_is_answered_in_the_callers_prack_and_crosses_in_bridgeheads()
{
    let (mut sim, b) = delayed_offer_call("o1@10.1.1.1", "Supported: 100rel\n", "");
    assert!(b.body.is_empty(), "relayed as a delayed offer");
    // Teams offers in a reliable 183: not PRACKed yet, the offer goes to the caller reliably.
    let out = sim.teams_sends(&reliable_answer(&b, 183, 40, TEAMS_OFFER));
    assert_eq!(summary(&out), [format!("183->{CORE_PEER}")]);
    let progress = out[0].1.clone();
    assert_eq!(h(&progress, "Require"), Some("100rel"));
    let offer = String::from_utf8_lossy(&progress.body).into_owned();
    // The first SDP of the call: its ports are the first pair Bridgehead took.
    assert!(offer.contains("m=audio 30000 RTP/AVP 8 0 101"), "{offer}");
    // The caller answers in its PRACK: 200, and Teams' PRACK carries the answer, anchored.
    let to = h(&progress, "To").expect("To").to_string();
    let rack = format!("{} 10 INVITE", h(&progress, "RSeq").expect("RSeq"));
    let prack = caller_offer("PRACK", "o1@10.1.1.1", &to, 11, SDP).replace(
        "CSeq: 11 PRACK\n",
        &format!("CSeq: 11 PRACK\nRAck: {rack}\n"),
    );
    let out = sim.core_sends(&prack);
    assert_eq!(
        summary(&out),
        [format!("200->{CORE_PEER}"), format!("PRACK->{TEAMS_PEER}")]
    );
    let teams_prack = &out[1].1;
    assert_eq!(h(teams_prack, "RAck"), Some("40 1 INVITE"));
    let answer_sdp = String::from_utf8_lossy(&teams_prack.body).into_owned();
    assert!(
        answer_sdp.contains("m=audio 30002 RTP/AVP 8 101"),
        "{answer_sdp}"
    );
    assert!(!answer_sdp.contains("192.0.2.10"), "anchored: {answer_sdp}");
    // The answer came early: the 200s carry no SDP.
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", ""));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    assert!(out[0].1.body.is_empty());
}

#[test]
fn the_callees_early_offer_toward_a_caller_without_100rel_is_answered_by_bridgehead_and_offered_in_the_200(
) {
    let (mut sim, b) = delayed_offer_call("o2@10.1.1.1", "", "");
    // Bridgehead answers Teams' offer in its PRACK (the first G.711); the caller, which
    // cannot answer in a provisional, gets the 183 without SDP.
    let out = sim.teams_sends(&reliable_answer(&b, 183, 40, TEAMS_OFFER));
    assert_eq!(
        summary(&out),
        [format!("PRACK->{TEAMS_PEER}"), format!("183->{CORE_PEER}")]
    );
    let own = String::from_utf8_lossy(&out[0].1.body).into_owned();
    assert!(own.contains("m=audio 30000 RTP/AVP 8 101"), "{own}");
    assert!(out[1].1.body.is_empty());
    // Teams' 200 has no SDP (its offer was answered): the caller gets Teams' offer in its 200,
    // cut to the codec Bridgehead answered Teams with.
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", ""));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    let offer = String::from_utf8_lossy(&out[0].1.body).into_owned();
    assert!(offer.contains("m=audio 30002 RTP/AVP 8 101\r\n"), "{offer}");
    // Its answer in the ACK stays at Bridgehead.
    let to = h(&out[0].1, "To").expect("To").to_string();
    let ack = caller_offer("ACK", "o2@10.1.1.1", &to, 10, SDP);
    let out = sim.core_sends(&ack);
    assert_eq!(summary(&out), [format!("ACK->{TEAMS_PEER}")]);
    assert!(out[0].1.body.is_empty());
}

#[test]
fn a_callee_answering_bridgeheads_offer_only_in_a_reliable_183_still_gives_the_caller_an_offer() {
    let (mut sim, b) = delayed_offer_call("o3@10.1.1.1", "", "    delayed_offer: convert");
    assert!(!b.body.is_empty(), "Bridgehead's offer");
    let teams_answer = TEAMS_OFFER.replace("RTP/AVP 8 0 101", "RTP/AVP 8 101");
    let out = sim.teams_sends(&reliable_answer(&b, 183, 40, &teams_answer));
    assert_eq!(
        summary(&out),
        [format!("PRACK->{TEAMS_PEER}"), format!("183->{CORE_PEER}")]
    );
    assert!(out[0].1.body.is_empty(), "an answer is not answered");
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", ""));
    let offer = String::from_utf8_lossy(&out[0].1.body).into_owned();
    assert!(offer.contains("m=audio 30002 RTP/AVP 8 101"), "{offer}");
}

/// Teams' offer with telephone-event on 96 (the caller's is on 101).
const TEAMS_OFFER_96: &str = "v=0\no=- 7 1 IN IP4 192.0.2.20\ns=-\nc=IN IP4 192.0.2.20\nt=0 0\nm=audio 6000 RTP/AVP 0 8 96\na=rtpmap:0 PCMU/8000\na=rtpmap:8 PCMA/8000\na=rtpmap:96 telephone-event/8000\n";

/// A call from the core offering [`SDP`] toward a Teams trunk with `delayed_offer: always`.
fn withheld_offer_call(call_id: &str) -> (Sim, Message) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let text = format!(
        "media:\n  address: 127.0.0.1\n  ports: 30000-30099\n{}",
        profile_with_script(script, "", "    delayed_offer: always")
    );
    let mut sim = Sim::with_profile(&text);
    let out = sim.core_sends(&invite_with_options(call_id, ""));
    (sim, b_leg_invite(&out))
}

#[test]
fn toward_a_trunk_wanting_delayed_offer_the_callee_offers_in_its_200_and_bridgehead_answers_both() {
    let (mut sim, b) = withheld_offer_call("w1@10.1.1.1");
    assert!(b.body.is_empty(), "no offer toward the trunk");
    assert!(h(&b, "Content-Type").is_none());
    // Teams offers in its 200: the caller's answer is it, cut to the caller's codecs, on
    // Bridgehead's port, in the caller's payload types.
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", TEAMS_OFFER_96));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    let to_caller = String::from_utf8_lossy(&out[0].1.body).into_owned();
    assert!(
        to_caller.contains("m=audio 30002 RTP/AVP 8 101\r\n"),
        "{to_caller}"
    );
    assert!(!to_caller.contains("192.0.2.20"), "{to_caller}");
    // The caller's ACK: Teams' carries Bridgehead's answer, in Teams' payload types.
    let to = h(&out[0].1, "To").expect("To").to_string();
    let out = sim.core_sends(&caller_in_dialog("ACK", "w1@10.1.1.1", &to, 10));
    assert_eq!(summary(&out), [format!("ACK->{TEAMS_PEER}")]);
    let to_teams = String::from_utf8_lossy(&out[0].1.body).into_owned();
    assert_eq!(h(&out[0].1, "Content-Type"), Some("application/sdp"));
    assert!(
        to_teams.contains("m=audio 30000 RTP/AVP 8 96\r\n"),
        "{to_teams}"
    );
    assert!(to_teams.contains("c=IN IP4 127.0.0.1\r\n"), "{to_teams}");
    assert!(!to_teams.contains("192.0.2.10"), "{to_teams}");
}

#[test]
fn toward_a_trunk_wanting_delayed_offer_an_offer_in_a_reliable_183_is_answered_in_the_prack() {
    let (mut sim, b) = withheld_offer_call("w2@10.1.1.1");
    let out = sim.teams_sends(&reliable_answer(&b, 183, 9, TEAMS_OFFER_96));
    assert_eq!(
        summary(&out),
        [format!("183->{CORE_PEER}"), format!("PRACK->{TEAMS_PEER}")]
    );
    let in_prack = String::from_utf8_lossy(&out[1].1.body).into_owned();
    assert!(
        in_prack.contains("m=audio 30000 RTP/AVP 8 96\r\n"),
        "{in_prack}"
    );
    let early = String::from_utf8_lossy(&out[0].1.body).into_owned();
    assert!(early.contains("m=audio 30002 RTP/AVP 8 101\r\n"), "{early}");
    // Teams' 200 without SDP: the caller's 200 repeats its answer; the ACK carries none.
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", ""));
    assert_eq!(String::from_utf8_lossy(&out[0].1.body), early);
    let to = h(&out[0].1, "To").expect("To").to_string();
    let out = sim.core_sends(&caller_in_dialog("ACK", "w2@10.1.1.1", &to, 10));
    assert!(out[0].1.body.is_empty(), "answered in the PRACK");
}

#[test]
fn rules_see_which_legs_use_reliable_provisionals() {
    let rules = rules_file(
        r#"
local M = {}
function M.on_response(call, resp)
  resp:set_header("X-Reliable", tostring(call.reliable.a) .. "/" .. tostring(call.reliable.b))
end
return M
"#,
    );
    let text = profile_with_script(&rules, "", "");
    let mut sim = Sim::with_profile(&text);
    let out = sim.core_sends(&invite_with_options("rr@10.1.1.1", ""));
    let b = b_leg_invite(&out);
    let out = sim.teams_sends(&answer(&b, 180, "Ringing", "t1", ""));
    assert_eq!(h(&out[0].1, "X-Reliable"), Some("false/false"));
    // The callee's reliable 183: the B-leg is reliable; the caller, without 100rel, is not.
    let out = sim.teams_sends(&reliable_answer(&b, 183, 1, SDP));
    let progress = |out: &[(Peer, Message)]| {
        out.iter()
            .find(|(_, m)| status(m) == 183)
            .map(|(_, m)| m.clone())
            .expect("183 to the caller")
    };
    assert_eq!(h(&progress(&out), "X-Reliable"), Some("false/true"));
    // A caller that supports 100rel: its leg becomes reliable with the callee's.
    let out = sim.core_sends(&invite_with_options("rs@10.1.1.1", "Supported: 100rel\n"));
    let b = b_leg_invite(&out);
    let out = sim.teams_sends(&reliable_answer(&b, 183, 1, SDP));
    assert_eq!(h(&progress(&out), "X-Reliable"), Some("true/true"));
}

#[test]
fn an_answer_from_a_reliable_183_reaches_a_caller_without_100rel_again_in_the_200() {
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite_with_options("ua@10.1.1.1", ""));
    let b = b_leg_invite(&out);
    let out = sim.teams_sends(&reliable_answer(&b, 183, 5, SDP));
    assert_eq!(
        summary(&out),
        [format!("PRACK->{TEAMS_PEER}"), format!("183->{CORE_PEER}")]
    );
    assert!(
        h(&out[1].1, "RSeq").is_none(),
        "unreliable toward the caller"
    );
    // Teams' 200 has no SDP (its answer was in the reliable 183): the caller's 200 must carry
    // it, since an answer in an unreliable provisional is not one until the 2xx repeats it.
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", ""));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "Content-Type"), Some("application/sdp"));
    assert!(String::from_utf8_lossy(&out[0].1.body).contains("m=audio 4000"));
}

#[test]
fn a_callee_wanting_a_longer_session_interval_gets_the_invite_again_with_its_min_se() {
    let text = profile_text("    session_timer:\n      expires: 90");
    let mut sim = Sim::with_profile(&text);
    let out = sim.core_sends(&invite_with_options("m1@10.1.1.1", ""));
    let b = b_leg_invite(&out);
    assert_eq!(h(&b, "Session-Expires"), Some("90"));
    let too_small = answer(&b, 422, "Session Interval Too Small", "t1", "")
        .replace("Server: TeamsProxy\n", "Server: TeamsProxy\nMin-SE: 300\n");
    // The 422 is acknowledged, and the INVITE goes again asking for 300 s: a new transaction
    // (next CSeq, another branch) of the same call. The caller hears nothing of it.
    let out = sim.teams_sends(&too_small);
    assert_eq!(
        summary(&out),
        [
            format!("ACK->{TEAMS_PEER}"),
            format!("INVITE->{TEAMS_PEER}")
        ]
    );
    let again = out[1].1.clone();
    assert_eq!(h(&again, "CSeq"), Some("2 INVITE"));
    assert_eq!(h(&again, "Session-Expires"), Some("300"));
    assert_eq!(h(&again, "Min-SE"), Some("300"));
    assert_eq!(h(&again, "Call-ID"), h(&b, "Call-ID"));
    assert_ne!(h(&again, "Via"), h(&b, "Via"));
    let out = sim.teams_sends(&answer(&again, 200, "OK", "t2", SDP));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    // Only once: a second 422 goes to the caller as the failure it is.
    let out = sim.core_sends(&invite_with_options("m2@10.1.1.1", ""));
    let b = b_leg_invite(&out);
    let refuse = |invite: &Message| {
        answer(invite, 422, "Session Interval Too Small", "t1", "")
            .replace("Server: TeamsProxy\n", "Server: TeamsProxy\nMin-SE: 300\n")
    };
    let again = b_leg_invite(&sim.teams_sends(&refuse(&b)));
    let out = sim.teams_sends(&refuse(&again));
    assert_eq!(
        summary(&out),
        [format!("ACK->{TEAMS_PEER}"), format!("422->{CORE_PEER}")]
    );
}

#[test]
fn a_reinvite_refresh_offers_the_anchored_session_again_without_moving_the_media() {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let text = format!(
        "media:\n  address: 127.0.0.1\n  ports: 30000-30099\n{}",
        profile_with_script(default, "", "    session_timer:\n      expires: 90")
    );
    let mut sim = Sim::with_profile(&text);
    let (b, _, _) = timed_call(
        &mut sim,
        "s10@10.1.1.1",
        "",
        "Session-Expires: 90;refresher=uac\nRequire: timer\nAllow: INVITE, ACK, BYE, CANCEL\n",
    );
    std::iter::from_fn(|| sim.engine.poll_media()).for_each(drop);
    let out = sim.advance(Duration::from_secs(45));
    assert_eq!(summary(&out), [format!("INVITE->{TEAMS_PEER}")]);
    assert_eq!(out[0].1.body, b.body, "Teams' session, byte for byte");
    let moved = std::iter::from_fn(|| sim.engine.poll_media())
        .filter(|c| matches!(c, MediaCommand::Stream { .. }))
        .count();
    assert_eq!(moved, 0, "the refresh changes nothing in the relay");
}

#[test]
fn a_caller_cancelling_while_its_2xx_waits_for_a_prack_gets_487_and_the_callee_a_bye() {
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite_with_options("h1@10.1.1.1", "Require: 100rel\n"));
    let b = b_leg_invite(&out);
    sim.teams_sends(&answer(&b, 183, "Session Progress", "t1", SDP));
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", SDP));
    assert!(out.is_empty(), "held: {:?}", summary(&out));
    let cancel = invite_with_options("h1@10.1.1.1", "")
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace("CSeq: 10 INVITE", "CSeq: 10 CANCEL");
    let cancel = cancel[..cancel.find("Content-Type").expect("body")].to_string() + "\n";
    let out = sim.core_sends(&cancel);
    assert_eq!(
        summary(&out),
        [
            format!("200->{CORE_PEER}"),
            format!("487->{CORE_PEER}"),
            format!("ACK->{TEAMS_PEER}"),
            format!("BYE->{TEAMS_PEER}")
        ]
    );
    assert_eq!(sim.engine.active_calls(), 0);
}

#[test]
fn a_2xx_without_sdp_waits_for_the_queued_183_that_carries_the_answer() {
    let mut sim = Sim::new();
    let out = sim.core_sends(&invite_with_options("h2@10.1.1.1", "Require: 100rel\n"));
    let b = b_leg_invite(&out);
    let out = sim.teams_sends(&reliable_answer(&b, 180, 1, ""));
    let ringing = out
        .iter()
        .find(|(_, m)| status(m) == 180)
        .map(|(_, m)| m.clone())
        .expect("180");
    let rseq: u32 = h(&ringing, "RSeq").expect("RSeq").parse().expect("number");
    let to = h(&ringing, "To").expect("To").to_string();
    // The answer comes in a reliable 183 that waits its turn, then a 200 without SDP.
    sim.teams_sends(&reliable_answer(&b, 183, 2, SDP));
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", ""));
    assert!(!summary(&out).contains(&format!("200->{CORE_PEER}")));
    let prack = |rseq: u32, cseq: u32| {
        caller_prack(&to, &format!("{rseq} 10 INVITE"), cseq).replace("r1@10.1.1.1", "h2@10.1.1.1")
    };
    let out = sim.core_sends(&prack(rseq, 11));
    assert_eq!(
        summary(&out),
        [format!("200->{CORE_PEER}"), format!("183->{CORE_PEER}")]
    );
    assert!(!out[1].1.body.is_empty(), "the answer reaches the caller");
    let out = sim.core_sends(&prack(rseq + 1, 12));
    assert_eq!(
        summary(&out),
        [format!("200->{CORE_PEER}"), format!("200->{CORE_PEER}")]
    );
    assert_eq!(h(&out[1].1, "CSeq"), Some("10 INVITE"));
}

#[test]
fn a_withheld_offer_is_answered_stream_by_stream_whatever_each_side_offered() {
    let (mut sim, b) = withheld_offer_call("w3@10.1.1.1");
    // Teams offers audio (sendonly) and video; the caller offered audio only (sendrecv).
    let teams_offer = TEAMS_OFFER_96.to_string()
        + "a=sendonly\nm=video 6002 RTP/AVP 96\na=rtpmap:96 H264/90000\n";
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", &teams_offer));
    let to_caller = String::from_utf8_lossy(&out[0].1.body).into_owned();
    assert_eq!(to_caller.matches("m=").count(), 1, "{to_caller}");
    assert!(to_caller.contains("a=sendonly"), "{to_caller}");
    let to = h(&out[0].1, "To").expect("To").to_string();
    let out = sim.core_sends(&caller_in_dialog("ACK", "w3@10.1.1.1", &to, 10));
    let to_teams = String::from_utf8_lossy(&out[0].1.body).into_owned();
    assert_eq!(to_teams.matches("m=").count(), 2, "{to_teams}");
    assert!(to_teams.contains("m=video 0 "), "refused: {to_teams}");
    assert!(to_teams.contains("a=recvonly"), "{to_teams}");
}

#[test]
fn an_offer_with_preconditions_and_no_g711_gets_488() {
    let amr = QOS_OFFER
        .replace("RTP/AVP 8 101", "RTP/AVP 96 101")
        .replace("a=rtpmap:8 PCMA/8000", "a=rtpmap:96 AMR-WB/16000");
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let text = format!(
        "media:\n  address: 127.0.0.1\n  ports: 30000-30099\n{}",
        profile_with_script(default, "    precondition: terminate", "")
    );
    let mut sim = Sim::with_profile(&text);
    let invite =
        invite_with_options("q7@10.1.1.1", "Require: 100rel, precondition\n").replace(SDP, &amr);
    let out = sim.core_sends(&invite);
    assert_eq!(summary(&out), [format!("488->{CORE_PEER}")]);
}

#[test]
fn a_peer_silent_past_failover_timeout_loses_the_call_to_the_next_peer() {
    let text = profile_text("    failover_timeout: 2").replace(
        &format!("    peers: [\"{TEAMS_PEER}\"]\n"),
        &format!("    peers: [\"{TEAMS_PEER}\", \"127.0.0.4:5080\"]\n"),
    );
    let mut sim = Sim::with_profile(&text);
    let out = sim.core_sends(&invite_with_options("ft@10.1.1.1", ""));
    assert!(summary(&out).contains(&format!("INVITE->{TEAMS_PEER}")));
    let first = b_leg_invite(&out);
    // Silence: UDP retransmissions at 0.5 s and 1.5 s, then at 2 s the second peer.
    let out = sim.advance(Duration::from_millis(2000));
    assert_eq!(
        summary(&out),
        [
            format!("INVITE->{TEAMS_PEER}"),
            format!("INVITE->{TEAMS_PEER}"),
            "INVITE->127.0.0.4:5080".to_string()
        ]
    );
    // The second peer answers 100: it keeps the call.
    let second = out[2].1.clone();
    sim.teams_sends(&answer(&second, 100, "Trying", "", ""));
    // The first peer wakes up: its 180 gets a CANCEL, its 200 an ACK and a BYE; the caller
    // hears nothing of it.
    let out = sim.teams_sends(&answer(&first, 180, "Ringing", "late", ""));
    assert_eq!(summary(&out), [format!("CANCEL->{TEAMS_PEER}")]);
    let out = sim.teams_sends(&answer(&first, 200, "OK", "late", SDP));
    assert_eq!(
        summary(&out),
        [format!("ACK->{TEAMS_PEER}"), format!("BYE->{TEAMS_PEER}")]
    );
    assert!(h(&out[1].1, "To").is_some_and(|t| t.contains("tag=late")));
    assert!(
        h(&out[1].1, "X-MS-SBC").is_some(),
        "toward Teams: the rules ran"
    );
}

#[test]
fn rules_read_the_keepalives_view_of_a_trunks_peers() {
    let rules = rules_file(
        r#"
local M = {}
function M.on_invite(call, req)
  req:set_header("X-Teams-Peer", bh.peer_status("teams")["127.0.0.2:5080"])
end
return M
"#,
    );
    let text = profile_with_script(
        &rules,
        "",
        "    keepalive:\n      interval: 60\n      down_after: 1\n      up_after: 1",
    );
    let mut sim = Sim::with_profile(&text);
    let now = sim.now;
    sim.engine.start(now);
    let out = sim.sent();
    assert_eq!(summary(&out), [format!("OPTIONS->{TEAMS_PEER}")]);
    let out = sim.core_sends(&invite_with_options("ps1@10.1.1.1", ""));
    assert_eq!(h(&b_leg_invite(&out), "X-Teams-Peer"), Some("up"));
    // The OPTIONS goes unanswered (Timer F, 32 s): down.
    sim.advance(Duration::from_secs(33));
    let out = sim.core_sends(&invite_with_options("ps2@10.1.1.1", ""));
    assert_eq!(h(&b_leg_invite(&out), "X-Teams-Peer"), Some("down"));
}

#[test]
fn a_rule_puts_a_tenants_fqdn_in_bridgeheads_contact_on_either_leg() {
    let rules = rules_file(
        r#"
local M = {}
function M.on_invite(call, req)
  call:set_contact_host("b", "tenant1.sbc.example.com")
  call:set_contact_host("a", "core-side.sbc.example.com")
end
return M
"#,
    );
    let text = profile_with_script(&rules, "", "");
    let mut sim = Sim::with_profile(&text);
    let out = sim.core_sends(&invite_with_options("ct@10.1.1.1", ""));
    let b = b_leg_invite(&out);
    assert_eq!(
        h(&b, "Contact"),
        Some("<sip:+15550199@tenant1.sbc.example.com:5070>")
    );
    let out = sim.teams_sends(&answer(&b, 200, "OK", "t1", SDP));
    assert_eq!(
        h(&out[0].1, "Contact"),
        Some("<sip:+15550100@core-side.sbc.example.com:5060>")
    );
    // A host that is none: the hook fails (logged), the call goes on with the listener's.
    let bad = rules_file(
        r#"
local M = {}
function M.on_invite(call, req)
  call:set_contact_host("b", "not a host")
end
return M
"#,
    );
    let mut sim = Sim::with_profile(&profile_with_script(&bad, "", ""));
    let out = sim.core_sends(&invite_with_options("ct2@10.1.1.1", ""));
    assert_eq!(
        h(&b_leg_invite(&out), "Contact"),
        Some("<sip:+15550199@127.0.0.1:5070>")
    );
}

#[test]
fn options_say_what_bridgehead_supports_on_the_trunk_they_came_from() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let text = profile_with_script(script, "    rel100: disabled", "");
    let mut sim = Sim::with_profile(&text);
    let options = "OPTIONS sip:sbc.example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKopt1
Max-Forwards: 70
From: <sip:core.example.com>;tag=o1
To: <sip:sbc.example.com>
Call-ID: opt-1@core
CSeq: 1 OPTIONS

";
    let out = sim.core_sends(options);
    assert_eq!(h(&out[0].1, "Supported"), Some("timer"));
    let out = sim.teams_sends(&options.replace("opt1", "opt2").replace("opt-1", "opt-2"));
    assert_eq!(h(&out[0].1, "Supported"), Some("100rel, timer"));
}

#[test]
fn hold_reaches_a_trunk_that_takes_only_inactive_as_inactive() {
    let mut sim = Sim::with_profile(&profile_text("    hold: inactive"));
    let (_, ok) = answered_call(&mut sim, "hold-1");
    let to = h(&ok, "To").expect("To").to_string();
    let reinvite = |cseq: u32, sdp: &str| {
        caller_offer("INVITE", "hold-1", &to, cseq, sdp)
            .replace("CSeq:", "Contact: <sip:alice@127.0.0.1:5090>\nCSeq:")
    };
    // sendonly (the core puts Teams on hold) goes as inactive.
    let sendonly = SDP.to_string() + "a=sendonly\n";
    let out = sim.core_sends(&reinvite(11, &sendonly));
    assert_eq!(summary(&out), [format!("INVITE->{TEAMS_PEER}")]);
    let held = String::from_utf8_lossy(&out[0].1.body).into_owned();
    assert!(held.contains("a=inactive"), "{held}");
    assert!(!held.contains("a=sendonly"), "{held}");
    let b_re = out[0].1.clone();
    sim.teams_sends(&answer(
        &b_re,
        200,
        "OK",
        "t1",
        &(SDP.to_string() + "a=inactive\n"),
    ));
    let ack = caller_in_dialog("ACK", "hold-1", &to, 11);
    sim.core_sends(&ack);
    // RFC 2543 hold (c=0.0.0.0) goes as inactive too.
    let zero = SDP.replace("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0");
    let out = sim.core_sends(&reinvite(12, &zero));
    let held = String::from_utf8_lossy(&out[0].1.body).into_owned();
    assert!(held.contains("a=inactive"), "{held}");
    // A trunk without the setting gets hold as it was written.
    let mut sim = Sim::new();
    let (_, ok) = answered_call(&mut sim, "hold-2");
    let to = h(&ok, "To").expect("To").to_string();
    let out = sim.core_sends(
        &caller_offer("INVITE", "hold-2", &to, 11, &sendonly)
            .replace("CSeq:", "Contact: <sip:alice@127.0.0.1:5090>\nCSeq:"),
    );
    assert!(String::from_utf8_lossy(&out[0].1.body).contains("a=sendonly"));
}

#[test]
fn a_national_number_reaches_a_trunk_taking_e164_as_e164_with_user_phone() {
    let text = profile_text(
        "    e164: { country_code: \"1\", trunk_prefix: \"1\", international_prefix: \"011\" }",
    );
    let mut sim = Sim::with_profile(&text);
    let invite = invite_with_options("e164@10.1.1.1", "")
        .replace("INVITE sip:+15550100@", "INVITE sip:15550100@")
        .replace(
            "<sip:+15550199@core.example.com>;tag=a1",
            "<sip:01144207946000@core.example.com>;tag=a1",
        );
    let out = sim.core_sends(&invite);
    let b = b_leg_invite(&out);
    assert_eq!(
        request_uri(&b),
        format!("sip:+15550100@{TEAMS_PEER};user=phone")
    );
    assert!(
        h(&b, "From").is_some_and(|f| f.contains("<sip:+44207946000@")),
        "{:?}",
        h(&b, "From")
    );
}

#[test]
fn a_strict_trunk_gets_only_the_sdp_attributes_it_names() {
    let text = profile_text(
        "    sdp_attributes: [rtpmap, fmtp, ptime, sendrecv, sendonly, recvonly, inactive, crypto]",
    );
    let mut sim = Sim::with_profile(&text);
    let with_extras = SDP.to_string()
        + "a=ice-ufrag:abcd\na=candidate:1 1 UDP 2130706431 192.0.2.10 4000 typ host\na=x-custom:1\na=ptime:20\n";
    let invite = invite_with_options("sdp-strict@10.1.1.1", "").replace(SDP, &with_extras);
    let out = sim.core_sends(&invite);
    let offer = String::from_utf8_lossy(&b_leg_invite(&out).body).into_owned();
    for gone in ["ice-ufrag", "candidate", "x-custom"] {
        assert!(!offer.contains(gone), "{gone} in\n{offer}");
    }
    for kept in ["a=rtpmap:8 PCMA/8000", "a=ptime:20"] {
        assert!(offer.contains(kept), "{kept} in\n{offer}");
    }
}

/// A Call-ID starting with `prefix` that shard `shard` of `shards` owns.
fn call_id_on(prefix: &str, shard: usize, shards: usize) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}@example"))
        .find(|id| bridgehead::shard_for_call_id(id.as_bytes(), shards) == shard)
        .expect("some Call-ID hashes to every shard")
}

/// The remote address the relay learnt for `leg` of the streams of `commands`.
fn learnt_remote(commands: &[MediaCommand], leg: Leg) -> Vec<std::net::SocketAddr> {
    commands
        .iter()
        .filter_map(|command| match command {
            MediaCommand::Stream { stream, .. } => match leg {
                Leg::A => stream.a.remote,
                Leg::B => stream.b.remote,
            },
            _ => None,
        })
        .collect()
}

/// An attended transfer whose two calls live on different shards: the REFER's shard asks the
/// consultation's shard by a note, each relay then faces the other's ports toward Teams, the
/// consultation is hung up, and a BYE of either party reaches the other across the shards.
#[test]
fn attended_transfer_joins_calls_of_two_shards() {
    let text = format!(
        "media:\n  address: 127.0.0.1\n  ports: 30000-30099\n{}",
        profile_text("    refer: terminate")
    );
    let mut zero = Sim::on_shard(&text, Default::default(), (0, 2));
    let mut one = Sim::on_shard(&text, Default::default(), (1, 2));

    // Alice (core) to Teams, on shard 0.
    let alice = call_id_on("alice", 0, 2);
    let (b_invite, _) = answered_call(&mut zero, &alice);
    let to_teams: Vec<MediaCommand> = std::iter::from_fn(|| zero.engine.poll_media()).collect();
    let x_teams_port = to_teams
        .iter()
        .find_map(|c| match c {
            MediaCommand::Stream { stream, .. } if stream.b.local != 0 => Some(stream.b.local),
            _ => None,
        })
        .expect("call 1 anchored");

    // Teams consults Carol (core), on shard 1.
    let consult = call_id_on("consult", 1, 2);
    let out = one.teams_sends(&format!(
        "INVITE sip:+15550300@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKconsult
Max-Forwards: 70
From: <sip:+15550100@teams.example>;tag=tc
To: <sip:+15550300@core.example.com>
Call-ID: {consult}
CSeq: 1 INVITE
Contact: <sip:teams@127.0.0.2:5080>
Content-Type: application/sdp

v=0
o=- 5 5 IN IP4 192.0.2.50
s=-
c=IN IP4 192.0.2.50
t=0 0
m=audio 5002 RTP/AVP 8
a=sendrecv
"
    ));
    let carol_invite = out
        .iter()
        .find(|(_, m)| method(m) == "INVITE")
        .map(|(_, m)| m.clone())
        .expect("Carol's INVITE");
    let carol_sdp = "v=0\no=- 9 9 IN IP4 192.0.2.60\ns=-\nc=IN IP4 192.0.2.60\nt=0 0\nm=audio 4100 RTP/AVP 8\na=sendrecv\n";
    let out = one.core_sends(&answer(&carol_invite, 200, "OK", "carol", carol_sdp));
    let consult_ok = out
        .iter()
        .find(|(_, m)| status(m) == 200)
        .map(|(_, m)| m.clone())
        .expect("200 to Teams");
    let consult_tag = h(&consult_ok, "To")
        .and_then(|to| to.split("tag=").nth(1))
        .expect("Bridgehead's tag")
        .to_string();
    one.teams_sends(&format!(
        "ACK sip:+15550300@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKconsultack
Max-Forwards: 70
From: <sip:+15550100@teams.example>;tag=tc
To: {}
Call-ID: {consult}
CSeq: 1 ACK

",
        h(&consult_ok, "To").unwrap_or_default()
    ));
    let consult_commands: Vec<MediaCommand> =
        std::iter::from_fn(|| one.engine.poll_media()).collect();
    let y_teams_port = consult_commands
        .iter()
        .find_map(|c| match c {
            MediaCommand::Stream { stream, .. } if stream.a.local != 0 => Some(stream.a.local),
            _ => None,
        })
        .expect("call 2 anchored");

    // Teams REFERs Alice's call (shard 0) with Replaces naming the consultation (shard 1).
    let refer = format!(
        "REFER sip:+15550199@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKrefer
Max-Forwards: 70
From: {}
To: {}
Call-ID: {}
CSeq: 2 REFER
Contact: <sip:teams@127.0.0.2:5080>
Refer-To: <sip:+15550300@sip.pstnhub.microsoft.com?Replaces={}%3Bto-tag%3D{consult_tag}%3Bfrom-tag%3Dtc>
Referred-By: <sip:+15550100@teams.example>

",
        h(&b_invite, "To").map(|to| format!("{to};tag=t1")).unwrap_or_default(),
        h(&b_invite, "From").unwrap_or_default(),
        h(&b_invite, "Call-ID").unwrap_or_default(),
        consult.replace('@', "%40"),
    );
    let out = zero.teams_sends(&refer);
    assert_eq!(
        summary(&out),
        ["202->127.0.0.2:5080", "NOTIFY->127.0.0.2:5080"]
    );
    let notify = out[1].1.clone();
    let (to, join) = zero
        .engine
        .poll_note()
        .expect("a note to the consultation's shard");
    assert_eq!(to, 1);
    one.engine.handle_note(join, one.now);
    let out = one.sent();
    assert_eq!(
        summary(&out),
        ["BYE->127.0.0.2:5080"],
        "the consultation is hung up"
    );
    assert_eq!(h(&out[0].1, "Call-ID"), Some(consult.as_str()));
    let relay_one: Vec<MediaCommand> = std::iter::from_fn(|| one.engine.poll_media()).collect();
    let x_port = format!("127.0.0.1:{x_teams_port}").parse().expect("addr");
    assert_eq!(
        learnt_remote(&relay_one, Leg::A),
        [x_port],
        "shard 1 faces call 1's port"
    );
    let (to, joined) = one.engine.poll_note().expect("the answer");
    assert_eq!(to, 0);
    assert!(one.engine.poll_note().is_none());
    zero.engine.handle_note(joined, zero.now);
    let relay_zero: Vec<MediaCommand> = std::iter::from_fn(|| zero.engine.poll_media()).collect();
    let y_port = format!("127.0.0.1:{y_teams_port}").parse().expect("addr");
    assert_eq!(
        learnt_remote(&relay_zero, Leg::B),
        [y_port],
        "shard 0 faces call 2's port"
    );
    // The final NOTIFY goes once the first is answered.
    let out = zero.teams_sends(&answer_request(&notify, 200, "OK"));
    assert_eq!(summary(&out), ["NOTIFY->127.0.0.2:5080"]);
    assert!(out[0].1.body.starts_with(b"SIP/2.0 200 OK"));

    // Carol hangs up on shard 1: Alice gets the BYE on shard 0.
    let out = one.core_sends(&format!(
        "BYE sip:+15550300@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKcarolbye
Max-Forwards: 70
From: {};tag=carol
To: {}
Call-ID: {}
CSeq: 2 BYE

",
        h(&carol_invite, "To").unwrap_or_default(),
        h(&carol_invite, "From").unwrap_or_default(),
        h(&carol_invite, "Call-ID").unwrap_or_default(),
    ));
    assert_eq!(summary(&out), [format!("200->{CORE_PEER}")]);
    assert_eq!(one.engine.active_calls(), 0);
    let (to, ended) = one.engine.poll_note().expect("the partner is told");
    assert_eq!(to, 0);
    zero.engine.handle_note(ended, zero.now);
    let out = zero.sent();
    assert_eq!(
        summary(&out),
        [
            format!("BYE->{CORE_PEER}"),
            "BYE->127.0.0.2:5080".to_string()
        ]
    );
    assert_eq!(h(&out[0].1, "Call-ID"), Some(alice.as_str()));
    assert_eq!(zero.engine.active_calls(), 0);
}

/// A drain on virtual time: OPTIONS and a new INVITE get 503 with Retry-After at once; at
/// the deadline a ringing call is ended (503 to the caller, CANCEL to the callee) and an
/// answered one hung up with a Reason on both legs.
#[test]
fn a_drain_ends_ringing_and_answered_calls_at_its_deadline() {
    let mut sim = Sim::new();
    let (b_answered, _) = answered_call(&mut sim, "drain-answered");
    let out = sim.core_sends(&invite("drain-ringing", "z9hG4bKring", ""));
    let b_ringing = out
        .iter()
        .find(|(_, m)| method(m) == "INVITE")
        .map(|(_, m)| m.clone())
        .expect("B-leg INVITE");
    sim.teams_sends(&answer(&b_ringing, 180, "Ringing", "t2", ""));
    let deadline = sim.now + Duration::from_secs(10);
    sim.engine.drain(deadline);
    assert!(!sim.engine.drained());
    let out = sim.core_sends(&invite("drain-new", "z9hG4bKnew", ""));
    assert_eq!(summary(&out), [format!("503->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "Retry-After"), Some("10"));
    let options = "OPTIONS sip:127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKopt
Max-Forwards: 70
From: <sip:core@core.example.com>;tag=o
To: <sip:sbc@sbc.example.com>
Call-ID: drain-options
CSeq: 1 OPTIONS

";
    let out = sim.core_sends(options);
    assert_eq!(summary(&out), [format!("503->{CORE_PEER}")]);
    // Nothing happens to the calls before the deadline (the unacknowledged 503 repeats).
    let before = summary(&sim.advance(Duration::from_millis(9_900)));
    assert!(
        before.iter().all(|m| m == &format!("503->{CORE_PEER}")),
        "{before:?}"
    );
    let out = sim.advance(Duration::from_millis(100));
    let mut got = summary(&out);
    got.sort();
    let mut want = vec![
        format!("BYE->{CORE_PEER}"),
        format!("BYE->{TEAMS_PEER}"),
        format!("CANCEL->{TEAMS_PEER}"),
        format!("503->{CORE_PEER}"),
    ];
    want.sort();
    assert_eq!(got, want);
    for (_, bye) in out.iter().filter(|(_, m)| method(m) == "BYE") {
        assert_eq!(
            h(bye, "Reason"),
            Some("SIP ;cause=503 ;text=\"Service shutting down\"")
        );
    }
    let cancel = &out
        .iter()
        .find(|(_, m)| method(m) == "CANCEL")
        .expect("CANCEL")
        .1;
    assert_eq!(h(cancel, "Call-ID"), h(&b_ringing, "Call-ID"));
    assert_eq!(sim.engine.active_calls(), 0);
    // Drained once the BYEs and the CANCEL are answered.
    assert!(!sim.engine.drained());
    for (_, request) in out.iter().filter(|(_, m)| m.is_request()) {
        let from_teams = h(request, "Call-ID") == h(&b_answered, "Call-ID")
            || h(request, "Call-ID") == h(&b_ringing, "Call-ID");
        let ok = answer_request(request, 200, "OK");
        if from_teams {
            sim.teams_sends(&ok);
        } else {
            sim.core_sends(&ok);
        }
    }
    // ...and the cancelled INVITE its 487.
    assert!(!sim.engine.drained());
    let out = sim.teams_sends(&answer(&b_ringing, 487, "Request Terminated", "t2", ""));
    assert_eq!(summary(&out), [format!("ACK->{TEAMS_PEER}")]);
    assert!(sim.engine.drained());
}

/// Teams hangs up the answered call whose B-leg INVITE was `b`; returns what Bridgehead sent.
fn teams_hangs_up(sim: &mut Sim, b: &Message) -> Vec<(Peer, Message)> {
    sim.teams_sends(&teams_bye(b))
}

/// Teams's BYE for the answered call whose B-leg INVITE was `b`.
fn teams_bye(b: &Message) -> String {
    format!(
        "BYE sip:+15550199@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKbye-{}
Max-Forwards: 70
From: <sip:+15550100@sbc.example.com>;tag=t1
To: {}
Call-ID: {}
CSeq: 5 BYE

",
        h(b, "Call-ID").unwrap_or_default(),
        h(b, "From").unwrap_or_default(),
        h(b, "Call-ID").unwrap_or_default()
    )
}

/// `max_calls`: a call to a full trunk fails before its INVITE goes (503 without
/// Retry-After: the caller's trunk is not the full one); a call from a full trunk gets 503
/// with Retry-After before any rule runs; a call that ends frees its seat.
#[test]
fn max_calls_refuses_calls_from_and_to_a_full_trunk() {
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    // To a full trunk.
    let mut sim = Sim::with_profile(&profile_with_script(default, "", "    max_calls: 1"));
    answered_call(&mut sim, "limit-1");
    let out = sim.core_sends(&invite("limit-2", "z9hG4bKl2", ""));
    assert_eq!(
        summary(&out),
        [format!("100->{CORE_PEER}"), format!("503->{CORE_PEER}")]
    );
    assert_eq!(h(&out[1].1, "Retry-After"), None);
    assert_eq!(sim.engine.active_calls(), 1);
    assert_eq!(sim.engine.stats().limit_refused, 1);

    // From a full trunk.
    let mut sim = Sim::with_profile(&profile_with_script(default, "    max_calls: 1", ""));
    let (b_first, _) = answered_call(&mut sim, "limit-3");
    let out = sim.core_sends(&invite("limit-4", "z9hG4bKl4", ""));
    assert_eq!(summary(&out), [format!("503->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "Retry-After"), Some("1"));
    // The first call ends: the core trunk has room again.
    let out = teams_hangs_up(&mut sim, &b_first);
    assert_eq!(summary(&out), [format!("BYE->{CORE_PEER}")]);
    let out = sim.core_sends(&answer_request(&out[0].1, 200, "OK"));
    assert_eq!(summary(&out), [format!("200->{TEAMS_PEER}")]);
    let out = sim.core_sends(&invite("limit-5", "z9hG4bKl5", ""));
    assert_eq!(
        summary(&out),
        [format!("100->{CORE_PEER}"), format!("INVITE->{TEAMS_PEER}")]
    );
}

/// `max_cps` on the core trunk: a burst takes the bucket's tokens, then 503 with Retry-After
/// until time refills it.
#[test]
fn max_cps_refuses_a_burst_past_the_rate() {
    let text = profile_with_script(
        concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua"),
        "    max_cps: 2",
        "",
    );
    let mut sim = Sim::with_profile(&text);
    let statuses = |out: &[(Peer, Message)]| -> Vec<String> { summary(out) };
    for n in 0..2 {
        let out = sim.core_sends(&invite(&format!("cps-{n}"), &format!("z9hG4bKc{n}"), ""));
        assert!(statuses(&out).contains(&format!("INVITE->{TEAMS_PEER}")));
    }
    let out = sim.core_sends(&invite("cps-2", "z9hG4bKc2", ""));
    assert_eq!(statuses(&out), [format!("503->{CORE_PEER}")]);
    sim.advance(Duration::from_millis(400));
    let out = sim.core_sends(&invite("cps-3", "z9hG4bKc3", ""));
    assert_eq!(
        statuses(&out),
        [format!("503->{CORE_PEER}")],
        "0.8 of a token"
    );
    sim.advance(Duration::from_millis(100));
    let out = sim.core_sends(&invite("cps-4", "z9hG4bKc4", ""));
    assert!(
        statuses(&out).contains(&format!("INVITE->{TEAMS_PEER}")),
        "a token after 0.5 s"
    );
}

/// A rule moves a call whose callee's trunk is full to another trunk (`on_failure` sees the
/// 503 the limit makes, and `bh.trunk_calls`).
#[test]
fn a_rule_fails_over_from_a_full_trunk() {
    let script = rules_file(
        "return { on_failure = function(call, resp)
           if resp.status == 503 and bh.trunk_calls('teams') == 1 then return call:route('backup') end
         end }",
    );
    let mut sim = Sim::with_profile(&profile_with_script(&script, "", "    max_calls: 1"));
    answered_call(&mut sim, "full-1");
    let out = sim.core_sends(&invite("full-2", "z9hG4bKf2", ""));
    assert_eq!(
        summary(&out),
        [
            format!("100->{CORE_PEER}"),
            "INVITE->127.0.0.3:5080".to_string()
        ]
    );
}

/// Overloaded (the driver says so: past the queue or calls limit): a new call gets a stateless
/// 503 with Retry-After at once, while a call already up goes on (its BYE crosses); then new
/// calls pass again.
#[test]
fn an_overloaded_shard_refuses_new_calls_and_keeps_the_ones_it_has() {
    let mut sim = Sim::new();
    let (b, _) = answered_call(&mut sim, "up-1");
    let ringing = invite("up-2", "z9hG4bKup2", "");
    sim.core_sends(&ringing);
    let shut = Throttle {
        shut: true,
        share: 1.0,
    };
    sim.engine.set_throttle(shut, sim.now);
    // A retransmission of an INVITE under way is no new call: its 100 again, no 503.
    let out = sim.core_sends(&ringing);
    assert_eq!(summary(&out), [format!("100->{CORE_PEER}")]);
    let out = sim.core_sends(&invite("new-1", "z9hG4bKnew1", ""));
    assert_eq!(summary(&out), [format!("503->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "Retry-After"), Some("1"));
    assert_eq!(sim.engine.overload_refused(), 1);
    let out = teams_hangs_up(&mut sim, &b);
    assert_eq!(summary(&out), [format!("BYE->{CORE_PEER}")]);
    sim.engine.set_throttle(Throttle::default(), sim.now);
    let out = sim.core_sends(&invite("new-2", "z9hG4bKnew2", ""));
    assert!(summary(&out).contains(&format!("INVITE->{TEAMS_PEER}")));
}

/// A new call whose INVITE waited for the shard past `overload.queue_delay_ms` (200 by
/// default) is refused with 503 at once; one that waited less, and any in-dialog request
/// however long it waited, goes on.
#[test]
fn a_new_call_that_waited_past_the_queue_delay_is_refused() {
    let mut sim = Sim::new();
    let (b, _) = answered_call(&mut sim, "up-1");
    let now = sim.now;
    let arrives = |sim: &mut Sim, from: Peer, text: &str, waited_ms: u64| {
        let msg = Message::parse(&Bytes::from(with_length(text))).expect("valid");
        let received = now - Duration::from_millis(waited_ms);
        sim.engine.handle_message(msg, from, received, now);
        sim.sent()
    };
    let core = udp_peer(0, CORE_PEER);
    let out = arrives(&mut sim, core, &invite("late-1", "z9hG4bKlate1", ""), 250);
    assert_eq!(summary(&out), [format!("503->{CORE_PEER}")]);
    assert_eq!(h(&out[0].1, "Retry-After"), Some("1"));
    let out = arrives(&mut sim, core, &invite("prompt-1", "z9hG4bKp1", ""), 150);
    assert!(summary(&out).contains(&format!("INVITE->{TEAMS_PEER}")));
    assert_eq!(sim.engine.overload_refused(), 1);
    // Teams's BYE of the answered call waited a second: it crosses all the same.
    let out = arrives(&mut sim, udp_peer(1, TEAMS_PEER), &teams_bye(&b), 1000);
    assert_eq!(summary(&out), [format!("BYE->{CORE_PEER}")]);
}

/// A raw NUL in a header gets 400 ("malformed header line"), unless it is in a header the
/// answer would repeat (Via, From, To, Call-ID, CSeq): then the request is dropped, as no
/// valid answer can carry it (found by `fuzz/run.sh`, target `engine`).
#[test]
fn a_nul_in_a_header_gets_400_or_a_drop_never_an_invalid_answer() {
    let mut sim = Sim::new();
    let options = |to: &str, extra: &str| {
        format!(
            "OPTIONS sip:127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKnul
Max-Forwards: 70
From: <sip:core@core.example.com>;tag=o
To: {to}
Call-ID: nul-1
CSeq: 1 OPTIONS
{extra}
"
        )
    };
    let out = sim.core_sends(&options("<sip:sbc@sbc.example.com>", "X-Odd: a\0b\n"));
    assert_eq!(summary(&out), [format!("400->{CORE_PEER}")]);
    assert!(h(&out[0].1, "Warning").is_some_and(|w| w.contains("malformed header line")));
    let out = sim.core_sends(&options("<sip:sb\0c@sbc.example.com>", ""));
    assert!(out.is_empty(), "{:?}", summary(&out));
}
