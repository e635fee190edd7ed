//! Transport faults through the real `bridgehead` binary on loopback sockets: a request too
//! big for UDP fails at once with 503 (RFC 3261 §8.1.3.1) instead of a 408 after 32 s, a
//! request above a trunk's `tcp_above` goes over TCP (§18.1.1), and TCP connections that
//! idle, dribble or come from strangers are closed.

mod common;

use common::{core_teams_profile, receive, Sbc};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// An INVITE from the softswitch of exactly `size` bytes (its SDP padded with attributes).
fn invite(call_id: &str, softswitch: u16, core: u16, size: usize) -> Vec<u8> {
    let head = |body_len: usize| {
        format!(
            "INVITE sip:+4930987654@127.0.0.1:{core} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{softswitch};branch=z9hG4bK-{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:+4930123456@operator.example>;tag=a-{call_id}\r\nTo: <sip:+4930987654@teams.example>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.1:{softswitch}>\r\nContent-Type: application/sdp\r\nContent-Length: {body_len}\r\n\r\n"
        )
    };
    let mut body = String::from("v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n");
    // Pad with a=x-pad lines, then fill the last one to the byte (Content-Length's digits
    // settle after one more pass).
    let mut total = head(body.len()).len() + body.len();
    while total + 1000 < size {
        body.push_str(&format!("a=x-pad:{}\r\n", "p".repeat(988)));
        total = head(body.len()).len() + body.len();
    }
    for _ in 0..2 {
        let missing = size.saturating_sub(head(body.len()).len() + body.len());
        if missing >= 10 {
            body.push_str(&format!("a=x-pad:{}\r\n", "q".repeat(missing - 10)));
        }
    }
    let text = head(body.len()) + &body;
    assert_eq!(text.len(), size, "INVITE size");
    text.into_bytes()
}

/// The responses the caller gets within `wait`, by status line, each once (a final response
/// is retransmitted until ACKed, and this caller never ACKs).
fn responses(socket: &UdpSocket, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match receive(socket, left.max(Duration::from_millis(1))) {
            Some(text) => {
                let line = text.lines().next().unwrap_or("").to_string();
                if !lines.contains(&line) {
                    lines.push(line);
                }
            }
            None => break,
        }
    }
    lines
}

/// The softswitch sends an INVITE of `size` bytes: it hears 100 Trying, then 503 within
/// 3 s (not a 408 after 32 s).
fn assert_refused_with_503(sbc: &Sbc, softswitch: &UdpSocket, call_id: &str, size: usize) {
    let request = invite(call_id, sbc.port("softswitch"), sbc.port("core"), size);
    softswitch
        .send_to(&request, ("127.0.0.1", sbc.port("core")))
        .expect("send the INVITE");
    let got = responses(softswitch, Duration::from_secs(3));
    assert_eq!(
        got,
        ["SIP/2.0 100 Trying", "SIP/2.0 503 Service Unavailable"],
        "log:\n{}",
        sbc.log()
    );
}

fn start(teams_extra: &str) -> (Sbc, UdpSocket) {
    let sbc = Sbc::start(&core_teams_profile("", "", teams_extra));
    let softswitch =
        UdpSocket::bind(("127.0.0.1", sbc.port("softswitch"))).expect("softswitch socket");
    (sbc, softswitch)
}

#[test]
fn an_invite_too_big_for_udp_gets_503_at_once() {
    let (sbc, softswitch) = start("");
    let teams = UdpSocket::bind(("127.0.0.1", sbc.port("teams_peer"))).expect("teams socket");
    // 65,507 bytes: the largest datagram UDP over IPv4 carries; the B-leg copy is larger.
    assert_refused_with_503(&sbc, &softswitch, "big-1", 65_507);
    assert_eq!(receive(&teams, Duration::from_millis(100)), None);
    let log = sbc.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("cannot send")
            && l.contains("Message too long")),
        "the transport error is logged at WARN:\n{log}"
    );
}

#[test]
fn an_invite_above_tcp_above_reaches_the_trunk_over_tcp() {
    let (sbc, softswitch) = start("    tcp_above: 1300\n");
    let teams = TcpListener::bind(("127.0.0.1", sbc.port("teams_peer"))).expect("teams TCP");
    let request = invite("tcp-1", sbc.port("softswitch"), sbc.port("core"), 2_000);
    softswitch
        .send_to(&request, ("127.0.0.1", sbc.port("core")))
        .expect("send");
    teams.set_nonblocking(false).expect("blocking");
    let (mut stream, _) = accept_within(&teams, Duration::from_secs(3));
    let text = read_message(&mut stream);
    assert!(text.starts_with("INVITE "), "{text}");
    let via = text
        .lines()
        .find(|l| l.starts_with("Via:"))
        .unwrap_or_default();
    assert!(via.starts_with("Via: SIP/2.0/TCP "), "{via}");
    // Answer 486 on that connection: the caller hears it over UDP.
    let mut reply = String::from("SIP/2.0 486 Busy Here\r\n");
    for line in text.lines() {
        for name in ["Via:", "From:", "Call-ID:", "CSeq:"] {
            if line.starts_with(name) {
                reply.push_str(line);
                reply.push_str("\r\n");
            }
        }
        if line.starts_with("To:") {
            reply.push_str(&format!("{line};tag=teams\r\n"));
        }
    }
    reply.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(reply.as_bytes()).expect("reply");
    let got = responses(&softswitch, Duration::from_secs(2));
    assert_eq!(got, ["SIP/2.0 100 Trying", "SIP/2.0 486 Busy Here"]);
}

#[test]
fn an_invite_above_tcp_above_to_a_peer_without_tcp_gets_503_at_once() {
    let (sbc, softswitch) = start("    tcp_above: 1300\n");
    // Nothing listens on the peer's TCP port: the connection is refused.
    assert_refused_with_503(&sbc, &softswitch, "tcp-2", 2_000);
}

/// Listener `core` closes connections after 2 s without a complete message and takes 3 per
/// source; listener `guarded` drops whoever is no trunk's peer.
const CONNECTIONS: &str = "listeners:
  - name: core
    address: 127.0.0.1:{core}
    transports: [udp, tcp]
    idle_timeout: 2
    max_connections_per_source: 3
  - name: guarded
    address: 127.0.0.1:{guarded}
    transports: [udp, tcp]
    unknown_sources: drop
trunks:
  - name: core
    listener: core
    peers: [\"127.0.0.1:{softswitch}\"]
    script: {script}
  - name: partner
    listener: guarded
    peers: [\"127.0.0.2:5060\"]
    script: {script}
";

/// True when the far end closed `stream` (or closes it within `wait`).
fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).expect("timeout");
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
        ),
    }
}

/// Sends an OPTIONS on `stream` and reads the answer's status line.
fn options_over(stream: &mut TcpStream, n: u32) -> String {
    let request = options_text(stream, n);
    stream.write_all(request.as_bytes()).expect("write OPTIONS");
    read_message(stream)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// An out-of-dialog OPTIONS from `stream`'s address, the `n`-th.
fn options_text(stream: &TcpStream, n: u32) -> String {
    let local = stream.local_addr().expect("addr");
    format!(
        "OPTIONS sip:ping@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-tcp-{n}-{}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=t{n}\r\nTo: <sip:ping@127.0.0.1>\r\nCall-ID: tcp-{n}-{}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        local.port(),
        local.port()
    )
}

#[test]
fn a_keepalive_after_a_message_in_the_same_write_is_no_half_message() {
    let sbc = Sbc::start(CONNECTIONS);
    let mut client = TcpStream::connect(("127.0.0.1", sbc.port("core"))).expect("connect");
    // A message and a ping in one write, then quiet past idle_timeout (2 s).
    let first = options_text(&client, 1) + "\r\n\r\n";
    client.write_all(first.as_bytes()).expect("write");
    let answered = read_until(&mut client, "SIP/2.0 200", Duration::from_secs(2));
    assert!(answered.contains("SIP/2.0 200"), "{answered:?}");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        !closed_within(&mut client, Duration::from_millis(100)),
        "a connection in use with a keep-alive after its message was closed as stalled"
    );
    assert_eq!(options_over(&mut client, 2), "SIP/2.0 200 OK");
}

#[test]
fn connections_that_never_complete_a_message_are_closed_and_busy_ones_stay() {
    let sbc = Sbc::start(CONNECTIONS);
    let connect = || TcpStream::connect(("127.0.0.1", sbc.port("core"))).expect("connect");
    let mut dribblers = [connect(), connect()];
    let mut busy = connect();
    let request = b"OPTIONS sip:ping@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1";
    let started = Instant::now();
    let mut sent = 0;
    let mut options = 0;
    // One byte every 250 ms on each dribbler for 3.5 s (never a whole message), a whole
    // OPTIONS every 500 ms on the busy one.
    while started.elapsed() < Duration::from_millis(3500) {
        for dribbler in &mut dribblers {
            let _ = dribbler.write_all(&request[sent % request.len()..][..1]);
        }
        sent += 1;
        if sent % 2 == 0 {
            options += 1;
            assert_eq!(options_over(&mut busy, options), "SIP/2.0 200 OK");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    for dribbler in &mut dribblers {
        assert!(
            closed_within(dribbler, Duration::from_millis(500)),
            "a connection dribbling one byte at a time is still open after 3.5 s (idle_timeout 2 s)"
        );
    }
    assert_eq!(options_over(&mut busy, 99), "SIP/2.0 200 OK");
    assert!(!closed_within(&mut busy, Duration::from_millis(100)));
}

#[test]
fn a_source_gets_at_most_its_connections_and_strangers_are_dropped() {
    let sbc = Sbc::start(CONNECTIONS);
    let mut streams: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(("127.0.0.1", sbc.port("core"))).expect("connect"))
        .collect();
    let mut open = 0;
    for (n, stream) in streams.iter_mut().enumerate() {
        if closed_within(stream, Duration::from_millis(300)) {
            continue;
        }
        assert_eq!(options_over(stream, n as u32), "SIP/2.0 200 OK");
        open += 1;
    }
    assert_eq!(open, 3, "max_connections_per_source: 3");

    // `guarded` names only 127.0.0.2: a connection from 127.0.0.1 is closed at once, and a
    // datagram from it gets no answer at all (not even a 403).
    let mut stranger = TcpStream::connect(("127.0.0.1", sbc.port("guarded"))).expect("connect");
    assert!(closed_within(&mut stranger, Duration::from_secs(1)));
    assert_eq!(sbc.options("guarded"), 0);
    assert_eq!(sbc.options("core"), 200);
}

#[test]
fn a_call_whose_media_ports_cannot_be_bound_is_refused_with_503() {
    let media = common::media_range();
    // Media anchored, no port bound ahead of time (each is bound when a call takes it); the
    // core listener takes many connections from one source.
    let anchored = core_teams_profile(
        &format!(
            "media:\n  address: 127.0.0.1\n  ports: {media}-{}\n  bound_ahead: 0\n",
            media + 9
        ),
        "    max_connections_per_source: 1000\n",
        "",
    );
    // About 18 descriptors in use once it runs: 48 leaves room for 30 connections.
    let sbc = Sbc::start_with_fd_limit(&anchored, 48);
    let teams = UdpSocket::bind(("127.0.0.1", sbc.port("teams_peer"))).expect("teams socket");
    let softswitch =
        UdpSocket::bind(("127.0.0.1", sbc.port("softswitch"))).expect("softswitch socket");
    // Use up its file descriptors with connections it accepts.
    let _connections: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(("127.0.0.1", sbc.port("core"))).expect("connect"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sbc.log().contains("Too many open files") {
        assert!(
            Instant::now() < deadline,
            "descriptors not used up:\n{}",
            sbc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_refused_with_503(&sbc, &softswitch, "nofd-1", 600);
    assert_eq!(
        receive(&teams, Duration::from_millis(100)),
        None,
        "no INVITE advertising ports nobody listens on"
    );
    assert!(
        sbc.log().contains("call refused: media not anchored"),
        "{}",
        sbc.log()
    );
}

/// Accepts one connection within `wait`.
fn accept_within(listener: &TcpListener, wait: Duration) -> (TcpStream, std::net::SocketAddr) {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + wait;
    loop {
        match listener.accept() {
            Ok(accepted) => {
                accepted.0.set_nonblocking(false).expect("blocking");
                return accepted;
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => panic!("no connection within {wait:?}: {err}"),
        }
    }
}

/// Reads one SIP message (headers and Content-Length bytes of body) from a stream, skipping
/// keep-alive pongs before it.
fn read_message(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        // CRLFs before a message are keep-alive pongs (RFC 5626 §4.4.1): the answer to a ping
        // may reach the socket after the message the ping followed.
        let text = String::from_utf8_lossy(&data)
            .trim_start_matches(['\r', '\n'])
            .to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return text;
            }
        }
        let read = stream.read(&mut buf).expect("read");
        assert!(read > 0, "connection closed mid-message: {text}");
        data.extend_from_slice(&buf[..read]);
    }
}

/// Everything `stream` delivers until `needle` appears (or `wait` passes).
fn read_until(stream: &mut TcpStream, needle: &str, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    while !String::from_utf8_lossy(&data).contains(needle) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(read) => data.extend_from_slice(&buf[..read]),
        }
    }
    String::from_utf8_lossy(&data).into_owned()
}

#[test]
fn a_tcp_caller_ringing_longer_than_idle_timeout_still_hears_the_answer() {
    // The caller's connection is quiet while the callee rings for 2.5 s, past idle_timeout.
    let sbc = Sbc::start(&core_teams_profile("", "    idle_timeout: 1\n", ""));
    let teams = UdpSocket::bind(("127.0.0.1", sbc.port("teams_peer"))).expect("teams socket");
    let mut caller = TcpStream::connect(("127.0.0.1", sbc.port("core"))).expect("connect");
    let local = caller.local_addr().expect("addr");
    let invite = String::from_utf8(invite("ring-1", local.port(), sbc.port("core"), 700))
        .expect("text")
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    caller.write_all(invite.as_bytes()).expect("INVITE");
    let b_invite = receive(&teams, Duration::from_secs(2)).expect("INVITE toward Teams");
    let reply = |status: &str| {
        let mut text = format!("SIP/2.0 {status}\r\n");
        for line in b_invite.lines() {
            for name in ["Via:", "From:", "Call-ID:", "CSeq:"] {
                if line.starts_with(name) {
                    text.push_str(line);
                    text.push_str("\r\n");
                }
            }
            if line.starts_with("To:") {
                text.push_str(&format!("{line};tag=teams\r\n"));
            }
        }
        text.push_str("Contact: <sip:teams@127.0.0.1>\r\nContent-Length: 0\r\n\r\n");
        text
    };
    let teams_addr = ("127.0.0.1", sbc.port("teams"));
    teams
        .send_to(reply("180 Ringing").as_bytes(), teams_addr)
        .expect("180");
    let ringing = read_until(&mut caller, "SIP/2.0 180", Duration::from_secs(2));
    assert!(ringing.contains("SIP/2.0 180"), "{ringing}");
    std::thread::sleep(Duration::from_millis(2500));
    // A keep-alive ping on the quiet connection gets its pong (RFC 5626 §4.4.1).
    caller.write_all(b"\r\n\r\n").expect("ping");
    let pong = read_until(&mut caller, "\r\n", Duration::from_secs(1));
    assert_eq!(pong, "\r\n", "pong");
    teams
        .send_to(reply("200 OK").as_bytes(), teams_addr)
        .expect("200");
    let answered = read_until(&mut caller, "SIP/2.0 200", Duration::from_secs(2));
    assert!(
        answered.contains("SIP/2.0 200"),
        "the caller never heard the answer: {answered:?}\n{}",
        sbc.log()
    );
}

/// Garbage over UDP and TCP gets a clear answer or is dropped, and the next valid call
/// completes: too many header fields (400 naming the limit), a NUL in a header (400), 10,000
/// header fields over TCP (more than a message may hold: closed), a stream with no blank line
/// (closed), a writer sending a byte at a time (answered once whole).
#[test]
fn malformed_input_gets_clear_answers_and_the_next_call_goes_through() {
    let (sbc, softswitch) = start("");
    let teams = UdpSocket::bind(("127.0.0.1", sbc.port("teams_peer"))).expect("teams socket");
    let core = ("127.0.0.1", sbc.port("core"));
    let options = |branch: &str, extra: &str| {
        format!(
            "OPTIONS sip:ping@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bK-{branch}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:ping@127.0.0.1>\r\nCall-ID: {branch}\r\nCSeq: 1 OPTIONS\r\n{extra}Content-Length: 0\r\n\r\n",
            sbc.port("softswitch")
        )
    };
    let many = options("many", &"X-Filler: 1\r\n".repeat(300));
    softswitch.send_to(many.as_bytes(), core).expect("send");
    let answer = receive(&softswitch, Duration::from_secs(2)).unwrap_or_default();
    assert!(answer.starts_with("SIP/2.0 400"), "{answer}");
    assert!(answer.contains("more than 200 header fields"), "{answer}");
    let nul = options("nul", "X-Bad: a\0b\r\n");
    softswitch.send_to(nul.as_bytes(), core).expect("send");
    let answer = receive(&softswitch, Duration::from_secs(2)).unwrap_or_default();
    assert!(answer.starts_with("SIP/2.0 400"), "{answer}");

    // 10,000 header fields over TCP: larger than a message may be (65,535 bytes).
    let mut stream = TcpStream::connect(core).expect("connect");
    let huge = options("huge", &"X-Filler: 1\r\n".repeat(10_000)).replace("UDP", "TCP");
    let _ = stream.write_all(huge.as_bytes());
    assert!(closed_within(&mut stream, Duration::from_secs(3)));
    // Headers that never end.
    let mut stream = TcpStream::connect(core).expect("connect");
    let endless =
        options("endless", "").replace("\r\n\r\n", "\r\n") + &"X-More: 1\r\n".repeat(7_000);
    let _ = stream.write_all(endless.as_bytes());
    assert!(closed_within(&mut stream, Duration::from_secs(3)));
    // A slow writer: a byte at a time, then answered.
    let mut stream = TcpStream::connect(core).expect("connect");
    let slow = options_text(&stream, 1);
    for byte in slow.as_bytes() {
        stream.write_all(&[*byte]).expect("write");
        std::thread::sleep(Duration::from_millis(1));
    }
    let answer = read_message(&mut stream);
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");

    // And a call goes through.
    let request = invite(
        "after-garbage",
        sbc.port("softswitch"),
        sbc.port("core"),
        600,
    );
    softswitch.send_to(&request, core).expect("send");
    let forwarded = receive(&teams, Duration::from_secs(3)).unwrap_or_default();
    assert!(
        forwarded.starts_with("INVITE "),
        "{forwarded}\n{}",
        sbc.log()
    );
    assert!(sbc.is_running());
}
