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

/// Our SDP model and sdp-rs read `body` alike: the session's connection address, the streams,
/// each one's port, formats and effective address (ours gives the one that applies, the
/// session's when the stream has none; sdp-rs only a stream's own `c=`).
fn assert_same_sdp(sdp: &Sdp, theirs: &sdp_rs::SessionDescription, body: &str) {
    let address = |c: &sdp_rs::lines::Connection| c.connection_address.base.to_string();
    assert_eq!(
        sdp.connection().map(|c| c.address),
        theirs.connection.as_ref().map(address),
        "{body}"
    );
    assert_eq!(sdp.media().len(), theirs.media_descriptions.len(), "{body}");
    for (media, their) in sdp.media().iter().zip(&theirs.media_descriptions) {
        assert_eq!(media.port(), their.media.port, "{body}");
        let formats: Vec<&str> = their.media.fmt.split_whitespace().collect();
        assert_eq!(media.formats(), formats, "{body}");
        let effective = their.connections.first().or(theirs.connection.as_ref());
        assert_eq!(
            media.connection().map(|c| c.address),
            effective.map(address),
            "{body}"
        );
    }
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
        assert_same_sdp(&sdp, &their_sdp, &body);
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

/// A generated message: its text, and whether it carries SDP.
struct Generated {
    text: String,
    sdp: bool,
}

/// One of `items`, by `rng`.
fn pick<'a>(rng: &mut rand::rngs::StdRng, items: &[&'a str]) -> &'a str {
    use rand::Rng;
    items[rng.random_range(0..items.len())]
}

/// A random token of `len` characters from `alphabet`.
fn token(rng: &mut rand::rngs::StdRng, alphabet: &str, len: usize) -> String {
    use rand::Rng;
    let chars: Vec<char> = alphabet.chars().collect();
    (0..len)
        .map(|_| chars[rng.random_range(0..chars.len())])
        .collect()
}

/// A request or response with varied methods, URIs, header spellings, parameters and SDP.
fn generate(rng: &mut rand::rngs::StdRng) -> Generated {
    use rand::Rng;
    let alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let host = |rng: &mut rand::rngs::StdRng| match rng.random_range(0..3) {
        0 => format!(
            "{}.example.{}",
            token(rng, "abcdefghij", 6),
            pick(rng, &["com", "net", "org"])
        ),
        1 => format!(
            "{}.{}.{}.{}",
            rng.random_range(1..224),
            rng.random_range(0..256),
            rng.random_range(0..256),
            rng.random_range(1..255)
        ),
        _ => "sbc.operator.example".to_string(),
    };
    let port = |rng: &mut rand::rngs::StdRng| {
        if rng.random_bool(0.5) {
            format!(":{}", rng.random_range(1024..65535))
        } else {
            String::new()
        }
    };
    let user = |rng: &mut rand::rngs::StdRng| match rng.random_range(0..3) {
        0 => format!("+49{}", token(rng, "0123456789", 10)),
        1 => token(rng, "abcdefghijklmnop", 5),
        _ => token(rng, "0123456789", 4),
    };
    let params = [";user=phone", ";transport=udp", ";transport=tcp", ";lr", ""];
    let name = |rng: &mut rand::rngs::StdRng, full: &str| match rng.random_range(0..3) {
        0 => full.to_string(),
        1 => full.to_ascii_lowercase(),
        _ => full.to_ascii_uppercase(),
    };
    let method = pick(
        rng,
        &[
            "INVITE",
            "ACK",
            "BYE",
            "CANCEL",
            "OPTIONS",
            "REGISTER",
            "INFO",
            "UPDATE",
            "PRACK",
            "NOTIFY",
            "SUBSCRIBE",
            "REFER",
            "MESSAGE",
        ],
    );
    let request = rng.random_bool(0.7);
    let uri = format!(
        "sip:{}@{}{}{}",
        user(rng),
        host(rng),
        port(rng),
        pick(rng, &params)
    );
    let start = if request {
        format!("{method} {uri} SIP/2.0")
    } else {
        let status = pick(
            rng,
            &[
                "100", "180", "183", "200", "202", "404", "486", "487", "503", "603",
            ],
        );
        let reason = pick(
            rng,
            &["OK", "Ringing", "Not Found", "Busy Here", "Whatever"],
        );
        format!("SIP/2.0 {status} {reason}")
    };
    let mut headers = vec![format!(
        "{}: SIP/2.0/{} {}{};branch=z9hG4bK{}{}",
        name(rng, "Via"),
        pick(rng, &["UDP", "TCP", "TLS"]),
        host(rng),
        port(rng),
        token(rng, alnum, 12),
        pick(rng, &[";rport", ";received=192.0.2.1", ""])
    )];
    if rng.random_bool(0.3) {
        headers.push(format!(
            "Via: SIP/2.0/UDP {};branch=z9hG4bK{}",
            host(rng),
            token(rng, alnum, 8)
        ));
    }
    let display = |rng: &mut rand::rngs::StdRng| match rng.random_range(0..3) {
        0 => "\"Alice Example\" ".to_string(),
        1 => "Bob ".to_string(),
        _ => String::new(),
    };
    let from_tag = token(rng, alnum, 10);
    headers.push(format!(
        "{}: {}<sip:{}@{}>;tag={from_tag}",
        name(rng, "From"),
        display(rng),
        user(rng),
        host(rng)
    ));
    let to_tag = if request && rng.random_bool(0.5) {
        String::new()
    } else {
        format!(";tag={}", token(rng, alnum, 8))
    };
    headers.push(format!(
        "{}: {}<sip:{}@{}>{to_tag}",
        name(rng, "To"),
        display(rng),
        user(rng),
        host(rng)
    ));
    headers.push(format!(
        "{}: {}@{}",
        name(rng, "Call-ID"),
        token(rng, alnum, 16),
        host(rng)
    ));
    headers.push(format!(
        "{}: {} {method}",
        name(rng, "CSeq"),
        rng.random_range(1..2_000_000_000u32)
    ));
    headers.push(format!("Max-Forwards: {}", rng.random_range(0..71)));
    if rng.random_bool(0.5) {
        headers.push(format!(
            "Contact: <sip:{}@{}{}>",
            user(rng),
            host(rng),
            port(rng)
        ));
    }
    if rng.random_bool(0.3) {
        headers.push(format!(
            "X-{}: {}",
            token(rng, "abcdef", 5),
            token(rng, alnum, 20)
        ));
    }
    let sdp = rng.random_bool(0.4);
    let body = if sdp {
        let at_session = rng.random_bool(0.5);
        let address = || format!("192.0.2.{}", rand::random_range(1..255));
        let mut body = format!(
            "v=0\r\no=- {} {} IN IP4 {}\r\ns=-\r\n",
            rng.random_range(1..1_000_000u32),
            rng.random_range(1..1_000_000u32),
            address()
        );
        if at_session {
            body.push_str(&format!("c=IN IP4 {}\r\n", address()));
        }
        body.push_str("t=0 0\r\n");
        for _ in 0..rng.random_range(1..4) {
            let formats: Vec<String> = (0..rng.random_range(1..5))
                .map(|_| pick(rng, &["0", "8", "9", "18", "96", "101", "13"]).to_string())
                .collect();
            body.push_str(&format!(
                "m={} {} RTP/AVP {}\r\n",
                pick(rng, &["audio", "video"]),
                rng.random_range(1024..65535) & !1,
                formats.join(" ")
            ));
            if !at_session {
                body.push_str(&format!("c=IN IP4 {}\r\n", address()));
            }
            body.push_str(pick(
                rng,
                &[
                    "a=sendrecv\r\n",
                    "a=inactive\r\n",
                    "a=rtpmap:0 PCMU/8000\r\n",
                    "",
                ],
            ));
        }
        headers.push(format!("{}: application/sdp", name(rng, "Content-Type")));
        body
    } else {
        String::new()
    };
    headers.push(format!("{}: {}", name(rng, "Content-Length"), body.len()));
    Generated {
        text: format!("{start}\r\n{}\r\n\r\n{body}", headers.join("\r\n")),
        sdp,
    }
}

/// Thousands of generated messages read by both parsers: wherever rsip (and sdp-rs, for a
/// body) accepts one, the two agree on method, Request-URI user, host and port, status,
/// Call-ID, CSeq, From and To tags, top Via branch and Content-Length, and on each SDP's
/// connection address, media ports and payload types.
#[test]
fn thousands_of_generated_messages_read_the_same_with_both_parsers() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(4475);
    let (mut both, mut sdp_both) = (0, 0);
    for _ in 0..3000 {
        let generated = generate(&mut rng);
        let bytes = Bytes::from(generated.text.clone());
        let mine = Message::parse(&bytes).unwrap_or_else(|err| {
            panic!(
                "ours refuses a well-formed message ({err}):\n{}",
                generated.text
            )
        });
        let Ok(other) = rsip::SipMessage::try_from(&bytes[..]) else {
            continue;
        };
        both += 1;
        let text = &generated.text;
        // The Request-URI is compared by its parts below: rsip writes a `transport`
        // parameter's value in capitals when it prints a URI (an oracle defect).
        let (mine_first, call_id, cseq, from_tag) = ours(&mine);
        let (their_first, their_call_id, their_cseq, their_from_tag) = theirs(&other);
        assert_eq!(
            (call_id, cseq, from_tag),
            (their_call_id, their_cseq, their_from_tag),
            "{text}"
        );
        assert_eq!(
            mine_first.split(' ').next(),
            their_first.split(' ').next(),
            "method or status: {text}"
        );
        if let (StartLine::Request { uri, .. }, rsip::SipMessage::Request(request)) =
            (&mine.start, &other)
        {
            let uri = bridgehead::sip::uri::Uri::parse(uri).expect("our URI");
            let their = &request.uri;
            assert_eq!(
                uri.user,
                their.auth.as_ref().map(|a| a.user.as_str()),
                "{text}"
            );
            let host_port = match uri.port {
                Some(port) => format!("{}:{port}", uri.host),
                None => uri.host.to_string(),
            };
            assert_eq!(host_port, their.host_with_port.to_string(), "{text}");
        }
        let to_tag = mine
            .header_str(&HeaderName::To)
            .and_then(|t| t.split(";tag=").nth(1))
            .map(str::to_string);
        let their_to = other
            .to_header()
            .expect("rsip: To")
            .tag()
            .expect("rsip: To tag");
        assert_eq!(to_tag, their_to.map(|t| t.value().to_string()), "{text}");
        let branch = mine
            .header_str(&HeaderName::Via)
            .and_then(|v| v.split(";branch=").nth(1))
            .map(|b| b.split(';').next().unwrap_or(b).to_string());
        let their_via = other
            .via_header()
            .expect("rsip: Via")
            .typed()
            .expect("typed Via");
        assert_eq!(branch, their_via.branch().map(|b| b.to_string()), "{text}");
        let length = mine.header_str(&HeaderName::ContentLength).map(str::trim);
        let their_length = other.headers().iter().find_map(|h| match h {
            rsip::Header::ContentLength(length) => Some(length.value().trim().to_string()),
            _ => None,
        });
        assert_eq!(length.map(str::to_string), their_length, "{text}");
        assert_eq!(other.body(), &mine.body[..], "{text}");
        if !generated.sdp {
            continue;
        }
        let sdp = Sdp::parse(&mine.body).expect("our SDP parses");
        let body = String::from_utf8_lossy(&mine.body).into_owned();
        let Ok(their_sdp) = sdp_rs::SessionDescription::try_from(body.clone()) else {
            continue;
        };
        sdp_both += 1;
        assert_same_sdp(&sdp, &their_sdp, &body);
    }
    assert!(both >= 2500, "messages both parsers read: {both} of 3000");
    assert!(sdp_both >= 900, "SDP bodies both parsers read: {sdp_both}");
}
