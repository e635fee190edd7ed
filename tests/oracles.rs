//! Independent parsers as test oracles (docs/architecture.md): rsip reads every SIP message
//! Bridgehead sends in a whole call (anchored media, SRTP toward Teams, BYE) and agrees with our
//! model on what identifies it; sdp-rs reads every SDP it sends and agrees on the media. Where
//! both parse a message of the RFC 4475/5118 torture corpus, they agree on what it is.

use bridgehead::config::Profile;
use bridgehead::script::{RuleMetrics, RuleSet};
use bridgehead::sdp::Sdp;
use bridgehead::sip::{HeaderName, Message, StartLine};
use bridgehead::Engine;
use bridgehead::{Peer, Transmit};
use bytes::Bytes;
use rsip::prelude::*;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::trunks::{profile_with_script, udp_peer, CORE_PEER, TEAMS_PEER};

fn engine() -> Engine {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let text = format!(
        "media:\n  address: 127.0.0.1\n  ports: 30000-30099\n{}",
        profile_with_script(script, "", "    srtp: required")
    );
    let profile = Profile::parse(Path::new("oracle.yaml"), &text).expect("profile");
    let rules =
        RuleSet::load(Arc::new(profile), 1, Arc::new(RuleMetrics::default())).expect("rules");
    let mut engine = Engine::new(rules, 0, 1);
    engine.seed_random(7);
    engine
}

/// CRLF line ends and Content-Length.
fn wire(text: &str) -> Bytes {
    let text = text.replace('\n', "\r\n");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Bytes::from(format!(
        "{head}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

fn deliver(engine: &mut Engine, from: Peer, text: &str, now: Instant) -> Vec<Transmit> {
    engine.handle_datagram(wire(text), from, now);
    std::iter::from_fn(|| engine.poll_transmit()).collect()
}

/// What identifies a message, read by our model.
fn ours(msg: &Message) -> (String, String, String, Option<String>) {
    let first = match &msg.start {
        StartLine::Request { method, uri } => format!("{method} {uri}"),
        StartLine::Response { status, .. } => status.to_string(),
    };
    let header = |name: HeaderName| msg.header_str(&name).unwrap_or_default().to_string();
    let from_tag = msg
        .header_str(&HeaderName::From)
        .and_then(|f| f.split(";tag=").nth(1))
        .map(|t| t.split(';').next().unwrap_or(t).to_string());
    (
        first,
        header(HeaderName::CallId),
        header(HeaderName::CSeq),
        from_tag,
    )
}

/// The same, read by rsip.
fn theirs(msg: &rsip::SipMessage) -> (String, String, String, Option<String>) {
    let first = match msg {
        rsip::SipMessage::Request(request) => format!("{} {}", request.method, request.uri),
        rsip::SipMessage::Response(response) => u16::from(response.status_code.clone()).to_string(),
    };
    let call_id = msg
        .call_id_header()
        .expect("rsip: Call-ID")
        .value()
        .to_string();
    let cseq = msg.cseq_header().expect("rsip: CSeq").value().to_string();
    let from_tag = msg
        .from_header()
        .expect("rsip: From")
        .tag()
        .expect("rsip: From tag parses")
        .map(|tag| tag.value().to_string());
    (first, call_id, cseq, from_tag)
}

/// Every message in `sent` reads the same with rsip as with our model, and every SDP in them
/// the same with sdp-rs. Returns how many SDP bodies were checked.
fn agree(sent: &[Transmit]) -> usize {
    let mut bodies = 0;
    for transmit in sent {
        let text = String::from_utf8_lossy(&transmit.bytes).into_owned();
        let mine = Message::parse(&transmit.bytes).expect("our own message parses");
        let other = rsip::SipMessage::try_from(&transmit.bytes[..])
            .unwrap_or_else(|err| panic!("rsip cannot read what we sent ({err}):\n{text}"));
        assert_eq!(ours(&mine), theirs(&other), "{text}");
        let via = other
            .via_header()
            .expect("rsip: Via")
            .typed()
            .expect("typed Via");
        let branch = via.branch().map(|b| b.to_string()).unwrap_or_default();
        assert!(branch.contains("z9hG4bK"), "an RFC 3261 branch: {text}");
        assert_eq!(other.body(), &mine.body[..], "the same body: {text}");
        if mine.body.is_empty() {
            continue;
        }
        bodies += 1;
        let sdp = Sdp::parse(&mine.body).expect("our SDP parses");
        let body = String::from_utf8_lossy(&mine.body).into_owned();
        let their_sdp = sdp_rs::SessionDescription::try_from(body.clone())
            .unwrap_or_else(|err| panic!("sdp-rs cannot read our SDP ({err}):\n{body}"));
        assert_eq!(
            sdp.media().len(),
            their_sdp.media_descriptions.len(),
            "{body}"
        );
        for (media, theirs) in sdp.media().iter().zip(&their_sdp.media_descriptions) {
            assert_eq!(media.port(), theirs.media.port, "{body}");
            let formats: Vec<String> = media.codecs().iter().map(|c| c.pt.clone()).collect();
            let their_formats: Vec<&str> = theirs.media.fmt.split_whitespace().collect();
            assert_eq!(formats, their_formats, "{body}");
        }
    }
    bodies
}

#[test]
fn an_independent_parser_reads_every_message_of_a_call_as_we_do() {
    let mut engine = engine();
    let now = Instant::now();
    let core = udp_peer(0, CORE_PEER);
    let teams = udp_peer(1, TEAMS_PEER);
    let mut sent = deliver(
        &mut engine,
        core,
        "INVITE sip:+4930987654@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-oracle-1
Max-Forwards: 70
From: \"Alice\" <sip:+4930123456@operator.example>;tag=alice-1
To: <sip:+4930987654@teams.example>
Call-ID: oracle-1@operator.example
CSeq: 1 INVITE
Contact: <sip:alice@127.0.0.1:5090>
P-Asserted-Identity: <sip:+4930123456@operator.example>
P-Asserted-Identity: <tel:+4930123456>
Content-Type: application/sdp

v=0
o=- 1 1 IN IP4 192.0.2.10
s=-
c=IN IP4 192.0.2.10
t=0 0
m=audio 4000 RTP/AVP 8 0 101
a=rtpmap:8 PCMA/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-16
",
        now,
    );
    let invite = sent
        .iter()
        .find(|t| t.bytes.starts_with(b"INVITE"))
        .map(|t| Message::parse(&t.bytes).expect("B-leg INVITE"))
        .expect("B-leg INVITE sent");
    assert!(
        String::from_utf8_lossy(&invite.body).contains("a=crypto:"),
        "SRTP toward Teams"
    );
    let answer = |status: &str, body: &str| {
        let mut text = format!("SIP/2.0 {status}\n");
        for name in ["Via", "From", "Call-ID", "CSeq"] {
            let value = invite
                .header_str(&HeaderName::parse(name))
                .unwrap_or_default();
            text.push_str(&format!("{name}: {value}\n"));
        }
        let to = invite.header_str(&HeaderName::To).unwrap_or_default();
        text.push_str(&format!(
            "To: {to};tag=teams-1\nContact: <sip:teams@{TEAMS_PEER}>\n"
        ));
        if !body.is_empty() {
            text.push_str("Content-Type: application/sdp\n");
        }
        text.push('\n');
        text.push_str(body);
        text
    };
    let ringing = answer("180 Ringing", "");
    sent.extend(deliver(&mut engine, teams, &ringing, now));
    let ok = answer(
        "200 OK",
        "v=0
o=- 2 2 IN IP4 198.51.100.7
s=-
c=IN IP4 198.51.100.7
t=0 0
m=audio 5000 RTP/SAVP 8 101
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^31
",
    );
    sent.extend(deliver(&mut engine, teams, &ok, now));
    let a_ok = sent
        .iter()
        .rev()
        .find(|t| t.bytes.starts_with(b"SIP/2.0 200"))
        .map(|t| Message::parse(&t.bytes).expect("200 to the caller"))
        .expect("200 relayed to the caller");
    let a_to = a_ok
        .header_str(&HeaderName::To)
        .unwrap_or_default()
        .to_string();
    let in_dialog = |method: &str, cseq: u32| {
        format!(
            "{method} sip:+4930987654@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-oracle-{method}
Max-Forwards: 70
From: \"Alice\" <sip:+4930123456@operator.example>;tag=alice-1
To: {a_to}
Call-ID: oracle-1@operator.example
CSeq: {cseq} {method}

"
        )
    };
    sent.extend(deliver(&mut engine, core, &in_dialog("ACK", 1), now));
    sent.extend(deliver(&mut engine, core, &in_dialog("BYE", 2), now));
    engine.handle_timeout(now + Duration::from_millis(600));
    sent.extend(std::iter::from_fn(|| engine.poll_transmit()));

    let kinds: Vec<String> = sent
        .iter()
        .map(|t| {
            String::from_utf8_lossy(&t.bytes)
                .lines()
                .next()
                .unwrap_or("")
                .split(' ')
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    for wanted in [
        "SIP/2.0 100",
        "INVITE sip:",
        "SIP/2.0 180",
        "SIP/2.0 200",
        "ACK sip:",
        "BYE sip:",
    ] {
        assert!(
            kinds.iter().any(|k| k.starts_with(wanted)),
            "{wanted} among {kinds:?}"
        );
    }
    let bodies = agree(&sent);
    assert!(bodies >= 2, "the offer and the answer, at least: {bodies}");
}

#[test]
fn where_both_parse_the_torture_corpus_they_agree() {
    let dirs = ["rfc4475", "rfc5118"];
    let mut both = 0;
    for dir in dirs {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data")).join(dir);
        let mut files: Vec<_> = std::fs::read_dir(&path)
            .expect("corpus")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "dat"))
            .collect();
        files.sort();
        for file in files {
            let bytes = Bytes::from(std::fs::read(&file).expect("read"));
            let (Ok(mine), Ok(other)) = (
                Message::parse(&bytes),
                rsip::SipMessage::try_from(&bytes[..]),
            ) else {
                continue;
            };
            // rsip knows no compact forms: compare only what it can see.
            let (Ok(call_id), Ok(cseq)) = (other.call_id_header(), other.cseq_header()) else {
                continue;
            };
            both += 1;
            let name = file.display();
            assert_eq!(
                mine.header_str(&HeaderName::CallId).map(str::trim),
                Some(call_id.value().trim()),
                "{name}"
            );
            assert_eq!(
                mine.header_str(&HeaderName::CSeq).map(str::trim),
                Some(cseq.value().trim()),
                "{name}"
            );
            assert_eq!(mine.is_request(), other.is_request(), "{name}");
        }
    }
    assert!(both >= 10, "messages both parsers read: {both}");
}
