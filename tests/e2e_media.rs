//! Media anchoring end to end: SIPp signals the calls through the real `bridgehead` binary,
//! and real UDP sockets (or SIPp's pcap player) are the media endpoints. Every packet must
//! reach the other leg from Bridgehead's own ports, both ways, RTP and RTCP, and the ports
//! must close when the call ends.

mod common;

use common::http::{request, sample};
use common::sipp::{callee_args, media_caller, scenario, wait_listening, Sipp, Traced, Transport};
use common::{free_udp_port, media_range, scratch_dir, Sbc};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

fn profile(base: u16) -> String {
    profile_with(base, "", &common::default_script())
}

/// The media profile with extra `media:` lines and another script.
fn profile_with(base: u16, media_extra: &str, script: &str) -> String {
    format!(
        "shards: 1
media:
  address: 127.0.0.1
  ports: {base}-{}
{media_extra}
listeners:
  - name: core
    address: 127.0.0.1:{{core}}
  - name: teams
    address: 127.0.0.1:{{teams}}
trunks:
  - name: core
    listener: core
    peers: [\"127.0.0.1:{{softswitch}}\"]
    script: {script}
    route: teams
  - name: teams
    listener: teams
    peers: [\"127.0.0.1:{{teams_peer}}\"]
    script: {script}
    route: core
",
        base + 9
    )
}

/// Rules that note media events in the call and show them on the BYE toward Teams.
const MEDIA_RULES: &str = r#"
local r = {}
function r.on_media(call, ev)
  if ev.kind == "dtmf" then
    call.vars.digits = (call.vars.digits or "") .. ev.digit
    call.vars.dtmf_method = ev.method
  elseif ev.kind == "rtp_timeout" then
    call.vars.timeout = ev.leg .. "/" .. ev.seconds
  elseif ev.kind == "quality" then
    call.vars.quality = string.format("%s loss=%.1f jitter=%.0f mos=%.2f", ev.leg, ev.loss, ev.jitter, ev.mos)
  end
end
function r.on_request(call, msg)
  if call and msg.method == "BYE" and msg.trunk == "teams" then
    if call.vars.digits then
      msg:set_header("X-Digits", call.vars.digits)
      msg:set_header("X-DTMF-Method", call.vars.dtmf_method)
    end
    if call.vars.timeout then msg:set_header("X-RTP-Timeout", call.vars.timeout) end
    if call.vars.quality then msg:set_header("X-Quality", call.vars.quality) end
  end
end
return r
"#;

fn media_rules() -> String {
    let dir = scratch_dir("media-rules");
    let path = dir.join("rules.lua");
    std::fs::write(&path, MEDIA_RULES).expect("rules");
    path.display().to_string()
}

/// RFC 4733 packets of one digit: three updates, then the end three times.
fn digit_packets(event: u8, seq: u16, timestamp: u32) -> Vec<Vec<u8>> {
    (0..6u16)
        .map(|i| {
            let end = i >= 3;
            let mut packet = vec![0x80, 101, 0, 0];
            packet[2..4].copy_from_slice(&(seq + i).to_be_bytes());
            packet.extend_from_slice(&timestamp.to_be_bytes());
            packet.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            let duration = 160 * (i.min(3) + 1);
            packet.extend_from_slice(&[event, if end { 0x8a } else { 0x0a }]);
            packet.extend_from_slice(&duration.to_be_bytes());
            packet
        })
        .collect()
}

fn rtp(seq: u16, payload_type: u8) -> Vec<u8> {
    let mut packet = vec![0x80, payload_type, (seq >> 8) as u8, seq as u8];
    packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    packet.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    packet.extend(std::iter::repeat_n(0xd5, 160));
    packet
}

/// Receives datagrams until `count` arrived or `wait` passed; returns (payload type, sequence,
/// source) of each.
fn receive(socket: &UdpSocket, count: usize, wait: Duration) -> Vec<(u8, u16, SocketAddr)> {
    receive_packets(socket, count, wait)
        .into_iter()
        .map(|(p, from)| (p[1] & 0x7f, u16::from_be_bytes([p[2], p[3]]), from))
        .collect()
}

/// Receives datagrams (4 bytes or more) until `count` arrived or `wait` passed.
fn receive_packets(socket: &UdpSocket, count: usize, wait: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while out.len() < count && Instant::now() < deadline {
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            if n >= 4 {
                out.push((buf[..n].to_vec(), from));
            }
        }
    }
    out
}

/// The digits of the RFC 4733 events among `packets` (payload type `pt`), one per event.
fn event_digits(packets: &[(Vec<u8>, SocketAddr)], pt: u8) -> String {
    let mut digits = String::new();
    let mut last = None;
    for (packet, _) in packets {
        if packet[1] & 0x7f != pt || packet.len() < 16 {
            continue;
        }
        let timestamp = &packet[4..8];
        if last != Some(timestamp.to_vec()) {
            last = Some(timestamp.to_vec());
            digits.push(match packet[12] {
                e @ 0..=9 => char::from(b'0' + e),
                10 => '*',
                11 => '#',
                e => char::from(b'A' + e - 12),
            });
        }
    }
    digits
}

/// The SIPp scenarios of a [`MediaCall`].
struct Scripts<'a> {
    /// The callee's scenario and its `-set` variables (see [`callee_args`]).
    callee: &'a str,
    vars: &'a [(&'a str, &'a str)],
    /// The caller's scenario, and how long it talks before its BYE.
    caller: &'a str,
    talk_ms: u32,
    /// How long the callee rings before it answers.
    ring_ms: u32,
}

impl Default for Scripts<'_> {
    fn default() -> Self {
        Scripts {
            callee: "callee_media",
            vars: &[],
            caller: "caller_media",
            talk_ms: 2500,
            ring_ms: 0,
        }
    }
}

/// One call through Bridgehead from the core to Teams: SIPp signals both sides, test sockets
/// are their media. One shard: the callee's leg has the first media port pair, the caller's
/// the second.
struct MediaCall {
    base: u16,
    sbc: Sbc,
    caller: Sipp,
    callee: Sipp,
    caller_rtp: UdpSocket,
    callee_rtp: UdpSocket,
}

impl MediaCall {
    /// Starts Bridgehead on `profile` (media ports from `base`), the callee, then the caller;
    /// returns `settle` later, when the call is up.
    fn start(base: u16, profile: &str, scripts: Scripts<'_>, settle: Duration) -> MediaCall {
        let sbc = Sbc::start(profile);
        let dir = scratch_dir("media-call");
        let caller_rtp = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
        let callee_rtp = UdpSocket::bind("127.0.0.1:0").expect("callee rtp");
        let callee_port = sbc.port("teams_peer");
        let rtp_port = callee_rtp.local_addr().expect("addr").port();
        let mut args = callee_args(scripts.callee, callee_port, rtp_port, scripts.vars);
        args.extend(["-d".to_string(), scripts.ring_ms.to_string()]);
        let callee = Sipp::start(&dir, "callee", &args);
        wait_listening(callee_port, Transport::Udp);
        let args = media_caller(&sbc, scripts.caller, &caller_rtp, scripts.talk_ms);
        let caller = Sipp::start(&dir, "caller", &args);
        std::thread::sleep(settle);
        MediaCall {
            base,
            sbc,
            caller,
            callee,
            caller_rtp,
            callee_rtp,
        }
    }

    /// The caller's and the callee's media sockets.
    fn sockets(&self) -> (UdpSocket, UdpSocket) {
        (
            self.caller_rtp.try_clone().expect("socket"),
            self.callee_rtp.try_clone().expect("socket"),
        )
    }

    /// Five PCMA packets each way, through Bridgehead's ports (the caller's sequence numbers
    /// 0-4, the callee's 100-104); returns the sequence numbers each side got, in order.
    fn exchange_pcma(&self) -> (Vec<u16>, Vec<u16>) {
        let (caller_rtp, callee_rtp) = self.sockets();
        for seq in 0..5 {
            caller_rtp
                .send_to(&rtp(seq, 8), self.toward_caller())
                .expect("send");
            callee_rtp
                .send_to(&rtp(100 + seq, 8), self.toward_callee())
                .expect("send");
        }
        let seqs = |got: Vec<(u8, u16, SocketAddr)>| got.iter().map(|(_, s, _)| *s).collect();
        (
            seqs(receive(&callee_rtp, 5, Duration::from_millis(500))),
            seqs(receive(&caller_rtp, 5, Duration::from_millis(500))),
        )
    }

    /// Bridgehead's RTP port facing the caller.
    fn toward_caller(&self) -> (&'static str, u16) {
        ("127.0.0.1", self.base + 2)
    }

    /// Bridgehead's RTP port facing the callee.
    fn toward_callee(&self) -> (&'static str, u16) {
        ("127.0.0.1", self.base)
    }

    /// Both SIPp reports and Bridgehead's log, for failure messages.
    fn context(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.caller.report(),
            self.callee.report(),
            self.sbc.log()
        )
    }

    /// Waits until both SIPp scripts end; each must have completed its call.
    fn finish(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let (caller, callee) = (self.caller.wait(deadline), self.callee.wait(deadline));
        assert_eq!(caller, Some(0), "caller\n{}", self.context());
        assert_eq!(callee, Some(0), "callee\n{}", self.context());
    }
}

/// The first message `sipp` received that `wanted` picks.
fn first_received(sipp: &Sipp, wanted: impl Fn(&Traced) -> bool) -> Traced {
    sipp.trace()
        .into_iter()
        .find(|m| m.received && wanted(m))
        .unwrap_or_else(|| panic!("not received:\n{}", sipp.report()))
}

#[test]
fn rtp_and_rtcp_flow_both_ways_through_bridgehead_ports_and_stop_at_bye() {
    let base = media_range();
    // With the admin server, whose metrics count what the relay moved.
    let sbc = Sbc::start(&format!(
        "{}admin:\n  address: 127.0.0.1:{{admin}}\n",
        profile(base)
    ));
    let dir = scratch_dir("media");
    let caller_rtp = UdpSocket::bind("127.0.0.1:0").expect("caller rtp");
    // The callee's RTP and RTCP sockets on a port pair.
    let (callee_rtp, callee_rtcp) = loop {
        let rtp = UdpSocket::bind("127.0.0.1:0").expect("callee rtp");
        let port = rtp.local_addr().expect("addr").port();
        if let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", port.wrapping_add(1))) {
            break (rtp, rtcp);
        }
    };
    let callee_rtp_port = callee_rtp.local_addr().expect("addr").port();
    let callee_port = sbc.port("teams_peer");
    let mut callee = Sipp::start(
        &dir,
        "callee",
        &callee_args("callee_media", callee_port, callee_rtp_port, &[]),
    );
    wait_listening(callee_port, Transport::Udp);
    let caller_args = media_caller(&sbc, "caller_media", &caller_rtp, 2500);
    let mut caller = Sipp::start(&dir, "caller", &caller_args);

    // One shard: the offer to the callee took the first port pair, the answer to the caller
    // the second.
    let toward_callee: SocketAddr = ("127.0.0.1".parse::<std::net::IpAddr>().unwrap(), base).into();
    let toward_caller: SocketAddr =
        ("127.0.0.1".parse::<std::net::IpAddr>().unwrap(), base + 2).into();
    std::thread::sleep(Duration::from_millis(800));
    for seq in 0..50 {
        caller_rtp
            .send_to(&rtp(seq, 8), toward_caller)
            .expect("send");
    }
    let got = receive(&callee_rtp, 50, Duration::from_secs(3));
    let context = || format!("{}\n{}\n{}", caller.report(), callee.report(), sbc.log());
    assert_eq!(got.len(), 50, "caller -> callee RTP\n{}", context());
    assert!(
        got.iter()
            .all(|(pt, _, from)| *pt == 8 && *from == toward_callee),
        "{got:?}"
    );
    assert_eq!(
        got.iter().map(|(_, seq, _)| *seq).collect::<Vec<_>>(),
        (0..50).collect::<Vec<_>>()
    );

    // The callee answers to where the media came from: it reaches the caller from the port
    // the caller was told.
    for seq in 100..120 {
        callee_rtp
            .send_to(&rtp(seq, 101), toward_callee)
            .expect("send");
    }
    let back = receive(&caller_rtp, 20, Duration::from_secs(3));
    assert_eq!(back.len(), 20, "callee -> caller RTP\n{}", context());
    assert!(
        back.iter()
            .all(|(pt, _, from)| *pt == 101 && *from == toward_caller),
        "{back:?}"
    );

    // RTCP on its own port: caller's RTCP to Bridgehead's RTCP port reaches the callee's.
    let report = [0x80u8, 200, 0, 6, 0x12, 0x34, 0x56, 0x78];
    caller_rtp
        .send_to(&report, (toward_caller.ip(), base + 3))
        .expect("send rtcp");
    let got = receive(&callee_rtcp, 1, Duration::from_secs(2));
    assert_eq!(got.len(), 1, "RTCP\n{}", context());
    assert_eq!(got[0].2, SocketAddr::new(toward_callee.ip(), base + 1));

    let deadline = Instant::now() + Duration::from_secs(30);
    let (caller_status, callee_status) = (caller.wait(deadline), callee.wait(deadline));
    let context = || format!("{}\n{}\n{}", caller.report(), callee.report(), sbc.log());
    assert_eq!(caller_status, Some(0), "caller\n{}", context());
    assert_eq!(callee_status, Some(0), "callee\n{}", context());
    // The call is over: its ports are closed, nothing is relayed any more.
    std::thread::sleep(Duration::from_millis(300));
    for seq in 200..210 {
        let _ = caller_rtp.send_to(&rtp(seq, 8), toward_caller);
    }
    let late = receive(&callee_rtp, 1, Duration::from_millis(500));
    assert!(late.is_empty(), "relayed after BYE: {late:?}");
    assert!(
        (base..base + 4).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()),
        "the call's ports are free again"
    );
    // The relay moved them with io_uring (the kernels Bridgehead is tested on have it): the
    // 50 + 20 RTP packets and the RTCP report, and no stream runs any more.
    let text = request(sbc.port("admin"), "GET", "/metrics", None).body;
    let threads = sample(&text, "bridgehead_media_relay_threads{driver=\"io_uring\"}");
    assert!(threads.is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(sample(&text, "bridgehead_media_packets_total"), Some(71.0));
    assert_eq!(sample(&text, "bridgehead_media_streams"), Some(0.0));
}

#[test]
fn sipp_pcap_audio_and_rfc2833_digit_reach_the_callee() {
    let base = media_range();
    let sbc = Sbc::start(&profile(base));
    let dir = scratch_dir("media-pcap");
    // SIPp's built-in uac_pcap plays pcap/g711a.pcap (236 PCMA packets) and an RFC 2833 '1'.
    let pcaps = dir.join("pcap");
    std::fs::create_dir_all(&pcaps).expect("pcap dir");
    for file in ["g711a.pcap", "dtmf_2833_1.pcap"] {
        let source = Path::new("/usr/share/sip-tester").join(file);
        std::fs::copy(&source, pcaps.join(file)).unwrap_or_else(|err| {
            panic!("{}: {err} (Debian sip-tester ships it)", source.display())
        });
    }
    let callee_rtp = UdpSocket::bind("127.0.0.1:0").expect("callee rtp");
    let callee_port = sbc.port("teams_peer");
    let rtp_port = callee_rtp.local_addr().expect("addr").port();
    let mut callee = Sipp::start(
        &dir,
        "callee",
        &callee_args("callee_media", callee_port, rtp_port, &[]),
    );
    wait_listening(callee_port, Transport::Udp);
    let caller_args: Vec<String> = [
        "-sn",
        "uac_pcap",
        &format!("127.0.0.1:{}", sbc.port("core")),
        "-i",
        "127.0.0.1",
        "-mi",
        "127.0.0.1",
        "-p",
        &free_udp_port().to_string(),
        "-m",
        "1",
        "-timeout",
        "40s",
        "-timeout_error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut caller = Sipp::start(&dir, "caller", &caller_args);
    let got = receive(&callee_rtp, 246, Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(40);
    let caller_status = caller.wait(deadline);
    let callee_status = callee.wait(deadline);
    let context = || format!("{}\n{}\n{}", caller.report(), callee.report(), sbc.log());
    assert_eq!(caller_status, Some(0), "caller\n{}", context());
    assert_eq!(callee_status, Some(0), "callee\n{}", context());
    let audio = got.iter().filter(|(pt, _, _)| *pt == 8).count();
    let digits = got.iter().filter(|(pt, _, _)| *pt == 101).count();
    assert!(audio >= 230, "PCMA packets relayed: {audio}\n{}", context());
    assert!(digits >= 1, "RFC 2833 packets relayed: {digits}");
    let from_sbc: SocketAddr = ("127.0.0.1".parse::<std::net::IpAddr>().unwrap(), base).into();
    assert!(
        got.iter().all(|(_, _, from)| *from == from_sbc),
        "all from Bridgehead's port"
    );
}

#[test]
fn rfc4733_digits_and_rtcp_quality_reach_the_rules() {
    let base = media_range();
    let mut call = MediaCall::start(
        base,
        &profile_with(base, "", &media_rules()),
        Scripts {
            talk_ms: 2000,
            ..Default::default()
        },
        Duration::from_millis(800),
    );
    let (caller_rtp, callee_rtp) = call.sockets();
    let toward_caller = call.toward_caller();
    for packet in digit_packets(4, 10, 8000)
        .into_iter()
        .chain(digit_packets(2, 20, 9600))
    {
        caller_rtp.send_to(&packet, toward_caller).expect("send");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The rules hear digits (on_media): Bridgehead holds the events and plays each digit
    // again once on_media let it through, 80 ms long as it came (4 packets, 3 ends).
    let relayed = receive_packets(&callee_rtp, 14, Duration::from_secs(3));
    // A receiver report from the caller: 10/256 lost, jitter 160 (20 ms at 8 kHz).
    let mut report = vec![
        0x81, 201, 0, 7, 0, 0, 0, 1, 0x12, 0x34, 0x56, 0x78, 10, 0, 0, 5,
    ];
    report.extend_from_slice(&[0, 0, 0x10, 0, 0, 0, 0, 160, 0, 0, 0, 0, 0, 0, 0, 0]);
    caller_rtp
        .send_to(&report, ("127.0.0.1", base + 3))
        .expect("send rtcp");
    call.finish();
    let context = || call.context();
    assert_eq!(relayed.len(), 14, "two digits played\n{}", context());
    assert_eq!(event_digits(&relayed, 101), "42", "{}", context());
    let ends = relayed.iter().filter(|(p, _)| p[13] & 0x80 != 0).count();
    assert_eq!(ends, 8, "the last packet of each and three repeats say end");
    let bye = first_received(&call.callee, |m| m.is_request("BYE"));
    assert_eq!(bye.header("X-Digits"), Some("42"), "{}", bye.text);
    assert_eq!(bye.header("X-DTMF-Method"), Some("rfc4733"), "{}", bye.text);
    // G.711 with 3.9 % loss and a 40 ms jitter buffer: R = 79.4, MOS 4.00 (E-model).
    assert_eq!(
        bye.header("X-Quality"),
        Some("a loss=3.9 jitter=20 mos=4.00"),
        "{}",
        bye.text
    );
}

#[test]
fn telephone_events_are_renumbered_between_legs_101_and_96() {
    let base = media_range();
    // The bundled rules have no on_media: the relay passes events through, renumbered.
    let mut call = MediaCall::start(
        base,
        &profile(base),
        Scripts {
            vars: &[("te_pt", "96")],
            talk_ms: 2000,
            ..Default::default()
        },
        Duration::from_millis(800),
    );
    let (caller_rtp, callee_rtp) = call.sockets();
    // The caller sends "4" on 101, as its offer said.
    for packet in digit_packets(4, 10, 8000) {
        caller_rtp
            .send_to(&packet, call.toward_caller())
            .expect("send");
        std::thread::sleep(Duration::from_millis(5));
    }
    let at_callee = receive(&callee_rtp, 6, Duration::from_secs(3));
    // The callee sends "7" with the offer's number (101), then "9" with its own (96).
    let callee_digits =
        digit_packets(7, 30, 16000)
            .into_iter()
            .chain(digit_packets(9, 40, 17600).into_iter().map(|mut p| {
                p[1] = 96;
                p
            }));
    for packet in callee_digits {
        callee_rtp
            .send_to(&packet, call.toward_callee())
            .expect("send");
        std::thread::sleep(Duration::from_millis(5));
    }
    let at_caller = receive(&caller_rtp, 12, Duration::from_secs(3));
    call.finish();
    let context = || call.context();
    let answer = first_received(&call.caller, |m| m.is_response(200));
    assert!(
        answer
            .body()
            .lines()
            .any(|l| l.trim_end().ends_with("RTP/AVP 8 101"))
            && answer.body().contains("a=rtpmap:101 telephone-event/8000"),
        "the caller sees its own numbers: {}",
        answer.text
    );
    let types = |got: &[(u8, u16, SocketAddr)]| got.iter().map(|p| p.0).collect::<Vec<_>>();
    assert_eq!(types(&at_callee), [96; 6], "{}", context());
    assert_eq!(types(&at_caller), [101; 12], "{}", context());
}

#[test]
fn silence_times_out_and_bridgehead_hangs_up_both_legs() {
    let base = media_range();
    let sbc = Sbc::start(&profile_with(base, "  rtp_timeout: 2", &media_rules()));
    let dir = scratch_dir("media-timeout");
    let callee_port = sbc.port("teams_peer");
    // SIPp's own media ports are in the SDP; nobody sends RTP.
    let callee_args: Vec<String> = [
        "-sf",
        &scenario("callee"),
        "-i",
        "127.0.0.1",
        "-p",
        &callee_port.to_string(),
        "-m",
        "1",
        "-timeout",
        "20s",
        "-timeout_error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut callee = Sipp::start(&dir, "callee", &callee_args);
    wait_listening(callee_port, Transport::Udp);
    let caller_args: Vec<String> = [
        "-sf",
        &scenario("caller_hungup"),
        &format!("127.0.0.1:{}", sbc.port("core")),
        "-i",
        "127.0.0.1",
        "-p",
        &free_udp_port().to_string(),
        "-m",
        "1",
        "-timeout",
        "20s",
        "-timeout_error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let started = Instant::now();
    let mut caller = Sipp::start(&dir, "caller", &caller_args);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (caller_status, callee_status) = (caller.wait(deadline), callee.wait(deadline));
    let context = || format!("{}\n{}\n{}", caller.report(), callee.report(), sbc.log());
    assert_eq!(
        caller_status,
        Some(0),
        "the caller got Bridgehead's BYE\n{}",
        context()
    );
    assert_eq!(
        callee_status,
        Some(0),
        "the callee got Bridgehead's BYE\n{}",
        context()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let bye = first_received(&callee, |m| m.is_request("BYE"));
    let timeout = bye.header("X-RTP-Timeout").unwrap_or_default().to_string();
    assert!(timeout == "a/2" || timeout == "b/2", "{}", bye.text);
    assert!(
        (base..base + 4).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()),
        "the call's ports are free again"
    );
}

/// An SRTP context from base64 SDES key material (30 bytes).
fn srtp_context(material_b64: &str, decrypting: bool) -> webrtc_srtp::context::Context {
    use base64::Engine as _;
    let material = base64::engine::general_purpose::STANDARD
        .decode(material_b64)
        .expect("base64 key");
    let replay = decrypting.then(|| webrtc_srtp::option::srtp_replay_protection(64));
    webrtc_srtp::context::Context::new(
        &material[..16],
        &material[16..30],
        webrtc_srtp::protection_profile::ProtectionProfile::Aes128CmHmacSha1_80,
        replay,
        None,
    )
    .expect("context")
}

#[test]
fn plain_rtp_from_the_core_is_srtp_toward_teams_and_back() {
    use base64::Engine as _;
    let base = media_range();
    let profile =
        profile(base).replace("    route: core\n", "    route: core\n    srtp: required\n");
    let callee_key = base64::engine::general_purpose::STANDARD.encode([0x5au8; 30]);
    // Teams' key comes with a lifetime and a 4-byte MKI (value 1) that its packets carry.
    let key_params = format!("{callee_key}|2^31|1:4");
    let mut call = MediaCall::start(
        base,
        &profile,
        Scripts {
            callee: "callee_srtp",
            vars: &[("key", &key_params)],
            ..Default::default()
        },
        Duration::from_millis(800),
    );
    let (caller_rtp, callee_rtp) = call.sockets();
    let toward_caller = call.toward_caller();
    let toward_teams: SocketAddr = ("127.0.0.1".parse::<std::net::IpAddr>().unwrap(), base).into();

    // Core -> Teams: plain RTP in, SRTP out (collected now, decrypted once the key is read).
    let sent: Vec<Vec<u8>> = (0..30).map(|seq| rtp(seq, 8)).collect();
    for packet in &sent {
        caller_rtp.send_to(packet, toward_caller).expect("send");
    }
    callee_rtp
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut encrypted = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(3);
    while encrypted.len() < sent.len() && Instant::now() < deadline {
        if let Ok((n, from)) = callee_rtp.recv_from(&mut buf) {
            assert_eq!(from, toward_teams);
            encrypted.push(buf[..n].to_vec());
        }
    }

    // Teams -> core: SRTP with Teams' key in, plain RTP out; a tampered packet is dropped.
    let mut teams_context = srtp_context(&callee_key, false);
    for seq in 500..510u16 {
        let secret = teams_context.encrypt_rtp(&rtp(seq, 8)).expect("encrypt");
        let mut secret = secret.to_vec();
        // The MKI goes before the 80-bit tag (which does not cover it).
        let tag_at = secret.len() - 10;
        secret.splice(tag_at..tag_at, [0, 0, 0, 1]);
        if seq == 505 {
            let last = secret.len() - 1;
            secret[last] ^= 0xff;
        }
        callee_rtp.send_to(&secret, toward_teams).expect("send");
    }
    let clear = receive(&caller_rtp, 10, Duration::from_secs(2));

    call.finish();
    let context = || call.context();

    // What Teams was offered: SAVP and exactly one key, Bridgehead's own.
    let invite = first_received(&call.callee, |m| m.is_request("INVITE"));
    let body = invite.body().to_string();
    assert!(
        body.contains(&format!("m=audio {base} RTP/SAVP 8 101")),
        "{body}"
    );
    let keys: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"))
        .collect();
    assert_eq!(keys.len(), 1, "{body}");
    let mut ours = srtp_context(keys[0], true);
    assert_eq!(
        encrypted.len(),
        sent.len(),
        "SRTP toward Teams\n{}",
        context()
    );
    for (secret, original) in encrypted.iter().zip(&sent) {
        assert_eq!(secret.len(), original.len() + 10, "an 80-bit tag");
        let plain = ours.decrypt_rtp(secret).expect("Teams can decrypt");
        assert_eq!(&plain[..], &original[..]);
    }
    // What the core got: plain RTP, without the tampered packet.
    let answer = first_received(&call.caller, |m| m.is_response(200));
    assert!(answer.body().contains("RTP/AVP 8 101"), "{}", answer.text);
    assert!(!answer.body().contains("crypto"), "{}", answer.text);
    let seqs: Vec<u16> = clear.iter().map(|(_, seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        [500, 501, 502, 503, 504, 506, 507, 508, 509],
        "{clear:?}"
    );
}

#[test]
fn inband_tones_from_the_core_reach_teams_as_rfc4733_events_once_each() {
    use bridgehead::media::dsp::{dtmf_frequencies, linear_to_alaw, tones};
    let base = media_range();
    let profile = profile_with(base, "", &media_rules())
        .replace("    route: teams\n", "    route: teams\n    dtmf: inband\n");
    let mut call = MediaCall::start(
        base,
        &profile,
        Scripts {
            ..Default::default()
        },
        Duration::from_millis(800),
    );
    let (caller_rtp, callee_rtp) = call.sockets();
    // "7", "3" as PCMA audio: 100 ms tones, 60 ms silence, 20 ms packets.
    let mut audio = Vec::new();
    for digit in ['7', '3'] {
        let (row, column) = dtmf_frequencies(digit).expect("digit");
        audio.extend(tones(&[row, column], &[6000.0, 6000.0], 800, audio.len()));
        audio.extend(std::iter::repeat_n(0i16, 480));
    }
    for (seq, frame) in audio.chunks(160).enumerate() {
        let mut packet = rtp(seq as u16, 8);
        packet.truncate(12);
        packet.extend(frame.iter().map(|s| linear_to_alaw(*s)));
        caller_rtp
            .send_to(&packet, call.toward_caller())
            .expect("send");
        std::thread::sleep(Duration::from_millis(2));
    }
    let relayed = receive_packets(&callee_rtp, usize::MAX, Duration::from_millis(1500));
    call.finish();
    let context = || call.context();
    // Teams takes RFC 4733: it gets each digit as events, and the audio, with the tones muted
    // so it cannot hear a digit twice.
    assert_eq!(event_digits(&relayed, 101), "73", "{}", context());
    let audio_packets: Vec<_> = relayed.iter().filter(|(p, _)| p[1] & 0x7f == 8).collect();
    assert_eq!(
        audio_packets.len(),
        audio.len() / 160,
        "the audio is relayed"
    );
    let loud = audio_packets
        .iter()
        .filter(|(p, _)| p[12..].iter().any(|b| b.abs_diff(0xd5) > 8))
        .count();
    assert!(loud <= 2, "{loud} packets still carry tones");
    let bye = first_received(&call.callee, |m| m.is_request("BYE"));
    assert_eq!(bye.header("X-Digits"), Some("73"), "{}", bye.text);
    assert_eq!(bye.header("X-DTMF-Method"), Some("inband"), "{}", bye.text);
}

/// The Asterisk testsuite capture's packets, each digit as RFC 4733 events (`events`: the
/// PCMU audio left out) or as tones in the audio (the events left out), resent by the caller
/// as fast as the relay takes them.
fn send_asterisk_digits(caller_rtp: &UdpSocket, toward: (&str, u16), events: bool) -> usize {
    let packets = common::rtp_capture::udp_payloads(common::rtp_capture::ASTERISK_DTMF);
    let mut sent = 0;
    for packet in packets.iter().filter(|p| (p[1] & 0x7f == 101) == events) {
        caller_rtp.send_to(packet, toward).expect("send");
        sent += 1;
        std::thread::sleep(Duration::from_micros(500));
    }
    sent
}

/// The digits heard in G.711 A-law packets, in arrival order (loopback keeps it).
fn heard_digits(packets: &[(Vec<u8>, SocketAddr)]) -> String {
    use bridgehead::media::dsp::{alaw_to_linear, DtmfDetector};
    let mut detector = DtmfDetector::default();
    let mut digits: String = packets
        .iter()
        .map(|(p, _)| p)
        .filter(|p| p[1] & 0x7f == 8)
        .filter_map(|p| {
            let pcm: Vec<i16> = p[12..].iter().map(|b| alaw_to_linear(*b)).collect();
            detector.push(&pcm).map(|(digit, _)| digit)
        })
        .collect();
    // A digit ends after two frames without it.
    for _ in 0..2 {
        digits.extend(detector.push(&[0; 160]).map(|(digit, _)| digit));
    }
    digits
}

#[test]
fn asterisk_rfc2833_digits_reach_an_inband_trunk_as_tones_heard_once_each() {
    let base = media_range();
    let profile = profile_with(base, "", &media_rules())
        .replace("    route: core\n", "    route: core\n    dtmf: inband\n");
    let mut call = MediaCall::start(
        base,
        &profile,
        Scripts {
            talk_ms: 6000,
            ..Default::default()
        },
        Duration::from_millis(800),
    );
    let (caller_rtp, callee_rtp) = call.sockets();
    let sent = send_asterisk_digits(&caller_rtp, call.toward_caller(), true);
    // Bridgehead plays each digit as long as it lasted, one after the other.
    let played = receive_packets(&callee_rtp, usize::MAX, Duration::from_secs(4));
    call.finish();
    let context = || call.context();
    assert!(sent > 50, "{sent} event packets in the capture");
    assert_eq!(
        event_digits(&played, 101),
        "",
        "no events toward an inband trunk"
    );
    assert_eq!(heard_digits(&played), "2013785496", "{}", context());
    let bye = first_received(&call.callee, |m| m.is_request("BYE"));
    assert_eq!(bye.header("X-Digits"), Some("2013785496"), "{}", bye.text);
    assert_eq!(bye.header("X-DTMF-Method"), Some("rfc4733"), "{}", bye.text);
}

/// One call: the Asterisk capture's digits, as RFC 4733 events (`events`) or as tones, from
/// the core (`dtmf: inband`) to Teams (`dtmf: info`), which must get each digit once, in order,
/// as SIP INFO. Returns the packets sent and what reached Teams' media socket.
fn asterisk_digits_to_info(events: bool) -> (usize, Vec<(Vec<u8>, SocketAddr)>) {
    let base = media_range();
    let profile = profile_with(base, "", &common::default_script())
        .replace("    route: teams\n", "    route: teams\n    dtmf: inband\n")
        .replace("    route: core\n", "    route: core\n    dtmf: info\n");
    let mut call = MediaCall::start(
        base,
        &profile,
        Scripts {
            callee: "callee_info",
            talk_ms: 4000,
            ..Default::default()
        },
        Duration::from_millis(800),
    );
    let (caller_rtp, callee_rtp) = call.sockets();
    // Received while it is sent (the capture's audio is more than a socket buffer holds).
    let relayed = std::thread::spawn(move || {
        receive_packets(&callee_rtp, usize::MAX, Duration::from_millis(1500))
    });
    let sent = send_asterisk_digits(&caller_rtp, call.toward_caller(), events);
    let relayed = relayed.join().expect("receiver");
    call.finish();
    let signals: String = call
        .callee
        .trace()
        .into_iter()
        .filter(|m| m.received && m.is_request("INFO"))
        .filter_map(|m| {
            m.body()
                .lines()
                .find_map(|l| l.strip_prefix("Signal="))
                .map(str::to_string)
        })
        .collect();
    assert_eq!(signals, "2013785496", "INFO signals\n{}", call.context());
    (sent, relayed)
}

#[test]
fn asterisk_digits_reach_an_info_trunk_as_sip_info_once_each_from_events_and_tones() {
    // RFC 4733 events: none reach Teams' media, each digit comes as one INFO.
    let (_, relayed) = asterisk_digits_to_info(true);
    assert_eq!(event_digits(&relayed, 101), "", "events held");
    // Tones: each digit comes as one INFO; the audio still flows (transcoded to Teams'
    // PCMA) with the tones muted.
    let (sent, relayed) = asterisk_digits_to_info(false);
    assert_eq!(relayed.len(), sent);
    assert_eq!(heard_digits(&relayed), "");
}

#[test]
fn rules_play_ringback_and_send_dtmf_through_the_relay() {
    let base = media_range();
    let dir = scratch_dir("media-play-rules");
    let rules = dir.join("rules.lua");
    std::fs::write(
        &rules,
        "return { on_answer = function(call, resp)\n  call:play_ringback('a')\n  call:send_dtmf('12', 'b')\nend }\n",
    )
    .expect("rules");
    let mut call = MediaCall::start(
        base,
        &profile_with(base, "", &rules.display().to_string()),
        Scripts {
            ..Default::default()
        },
        Duration::from_millis(0),
    );
    let (caller_rtp, callee_rtp) = call.sockets();

    // The callee hears the two digits as RFC 4733 events (payload type 101 from its SDP).
    callee_rtp
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut events = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(3);
    while events.len() < 16 && Instant::now() < deadline {
        if let Ok((n, from)) = callee_rtp.recv_from(&mut buf) {
            assert_eq!(from.port(), base, "from Bridgehead's port");
            if n >= 16 && buf[1] & 0x7f == 101 {
                events.push((buf[12], buf[13] & 0x80 != 0));
            }
        }
    }
    let digits: Vec<u8> = events
        .iter()
        .filter(|(_, end)| *end)
        .map(|(event, _)| *event)
        .collect::<Vec<_>>()
        .chunks(4)
        .map(|ends| ends[0])
        .collect();
    // The caller hears ringback (PCMA) until the callee's own media arrives: everything queued
    // so far is ringback.
    let ringback = receive(&caller_rtp, 10_000, Duration::from_millis(300));
    // Payload type 101 marks the callee's packets (its PCMU would reach the PCMA-only caller
    // transcoded, looking like ringback).
    for seq in 0..5 {
        callee_rtp
            .send_to(&rtp(seq, 101), call.toward_callee())
            .expect("send");
    }
    let after = receive(&caller_rtp, 10_000, Duration::from_millis(600));

    call.finish();
    let context = || call.context();
    assert_eq!(digits, [1, 2], "events {events:?}\n{}", context());
    assert!(
        ringback.len() >= 10,
        "ringback {}\n{}",
        ringback.len(),
        context()
    );
    assert!(ringback
        .iter()
        .all(|(pt, _, from)| *pt == 8 && from.port() == base + 2));
    assert!(
        after.iter().any(|(pt, _, _)| *pt == 101),
        "the callee's media got through: {after:?} ringback {}",
        ringback.len()
    );
    let first_real = after.iter().position(|(pt, _, _)| *pt == 101).unwrap_or(0);
    assert!(
        after[first_real..].iter().all(|(pt, _, _)| *pt != 8),
        "ringback stopped once real media flowed: {after:?}"
    );
}

#[test]
fn a_delayed_offer_reaches_teams_as_bridgeheads_offer_and_media_flows_once_the_ack_answers() {
    let base = media_range();
    let profile = profile(base).replace(
        "    route: core\n",
        "    route: core\n    delayed_offer: convert\n",
    );
    let mut call = MediaCall::start(
        base,
        &profile,
        Scripts {
            caller: "caller_delayed_media",
            talk_ms: 1500,
            ..Default::default()
        },
        Duration::from_millis(500),
    );
    let (at_callee, at_caller) = call.exchange_pcma();
    call.finish();
    let context = || call.context();
    let invite = first_received(&call.callee, |m| m.is_request("INVITE"));
    assert!(
        invite.body().contains(&format!("m=audio {base} RTP/AVP")),
        "Teams got Bridgehead's offer:\n{}",
        invite.text
    );
    let ack = first_received(&call.callee, |m| m.is_request("ACK"));
    assert!(
        ack.body().is_empty(),
        "Teams' ACK carries no SDP:\n{}",
        ack.text
    );
    let ok = first_received(&call.caller, |m| m.is_response(200));
    assert!(
        ok.body().contains(&format!("m=audio {} RTP/AVP", base + 2)),
        "the caller got the offer in the 200:\n{}",
        ok.text
    );
    assert_eq!(at_callee, [0, 1, 2, 3, 4], "{}", context());
    assert_eq!(at_caller, [100, 101, 102, 103, 104], "{}", context());
}

#[test]
fn a_callee_ringing_without_early_media_gets_the_caller_local_ringback() {
    let base = media_range();
    let profile = profile(base).replace(
        "    route: teams\n",
        "    route: teams\n    early_media: ringback\n",
    );
    let mut call = MediaCall::start(
        base,
        &profile,
        Scripts {
            ring_ms: 1500,
            talk_ms: 1000,
            ..Default::default()
        },
        Duration::from_millis(0),
    );
    let (caller_rtp, callee_rtp) = call.sockets();
    // While Teams rings: ITU ringback (425 Hz, PCMA) from Bridgehead's port facing the core.
    let ringback = receive_packets(&caller_rtp, 40, Duration::from_millis(1400));
    // Teams answers (at 1.5 s) and says nothing yet: the ringback stops all the same.
    std::thread::sleep(Duration::from_millis(800));
    let _ = receive(&caller_rtp, 10_000, Duration::from_millis(100));
    let answered_silence = receive(&caller_rtp, 10_000, Duration::from_millis(300));
    // Then Teams' own audio comes through.
    for seq in 0..5 {
        callee_rtp
            .send_to(&rtp(seq, 8), call.toward_callee())
            .expect("send");
    }
    let after = receive(&caller_rtp, 10_000, Duration::from_millis(400));
    call.finish();
    let context = || call.context();
    assert_eq!(ringback.len(), 40, "ringback\n{}", context());
    assert!(ringback.iter().all(|(p, from)| p[1] & 0x7f == 8
        && from.port() == base + 2
        && p[12..].iter().any(|b| b.abs_diff(0xd5) > 8)));
    let ringing = first_received(&call.caller, |m| m.is_response(180));
    let answer = first_received(&call.caller, |m| m.is_response(200));
    assert!(ringing.body().contains("RTP/AVP 8 101"), "{}", ringing.text);
    assert_eq!(ringing.body(), answer.body(), "one answer to the offer");
    assert!(answered_silence.is_empty(), "{answered_silence:?}");
    let seqs: Vec<u16> = after.iter().map(|(_, seq, _)| *seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4], "Teams' audio, and nothing else");
}

#[test]
fn pcmu_from_the_core_is_transcoded_to_pcma_for_teams_and_back() {
    use bridgehead::media::dsp::transcode;
    let base = media_range();
    let profile = profile(base).replace(
        "    route: core\n",
        "    route: core\n    codecs: [PCMA, telephone-event]\n",
    );
    let mut call = MediaCall::start(
        base,
        &profile,
        Scripts {
            caller: "caller_pcmu",
            talk_ms: 2000,
            ..Default::default()
        },
        Duration::from_millis(800),
    );
    let (caller_rtp, callee_rtp) = call.sockets();
    let payload: Vec<u8> = (0..160u16).map(|i| (i * 7 % 256) as u8).collect();
    let packet = |pt: u8, seq: u16| {
        let mut p = rtp(seq, pt);
        p.truncate(12);
        p.extend_from_slice(&payload);
        p
    };
    caller_rtp
        .send_to(&packet(0, 1), call.toward_caller())
        .expect("send");
    callee_rtp
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 2048];
    let (n, _) = callee_rtp.recv_from(&mut buf).expect("PCMA at Teams");
    assert_eq!(buf[1] & 0x7f, 8, "PCMA");
    let expected: Vec<u8> = payload.iter().map(|b| transcode(*b, true)).collect();
    assert_eq!(&buf[12..n], &expected[..]);
    callee_rtp
        .send_to(&packet(8, 2), call.toward_callee())
        .expect("send");
    caller_rtp
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let (n, _) = caller_rtp.recv_from(&mut buf).expect("PCMU at the core");
    assert_eq!(buf[1] & 0x7f, 0, "PCMU");
    let expected: Vec<u8> = payload.iter().map(|b| transcode(*b, false)).collect();
    assert_eq!(&buf[12..n], &expected[..]);

    call.finish();
    let offer = first_received(&call.callee, |m| m.is_request("INVITE"));
    assert!(offer.body().contains("RTP/AVP 8 101"), "{}", offer.text);
    let answer = first_received(&call.caller, |m| m.is_response(200));
    assert!(answer.body().contains("RTP/AVP 0 101"), "{}", answer.text);
}

#[test]
fn teams_hears_comfort_noise_while_the_core_is_silent() {
    let base = media_range();
    let profile = profile(base).replace(
        "    route: core\n",
        "    route: core\n    comfort_noise: true\n",
    );
    let mut call = MediaCall::start(
        base,
        &profile,
        Scripts {
            callee: "callee_cn",
            talk_ms: 3000,
            ..Default::default()
        },
        Duration::from_millis(500),
    );
    let (caller_rtp, callee_rtp) = call.sockets();
    // The core is silent: Teams gets SID packets (payload type 13, one byte of level).
    let silent = receive(&callee_rtp, 3, Duration::from_secs(2));
    // The core talks: its audio goes through, and no comfort noise meanwhile.
    for seq in 0..20 {
        caller_rtp
            .send_to(&rtp(seq, 8), call.toward_caller())
            .expect("send");
        std::thread::sleep(Duration::from_millis(20));
    }
    let talking = receive(&callee_rtp, 20, Duration::from_secs(1));

    call.finish();
    let context = || call.context();
    assert_eq!(silent.len(), 3, "comfort noise\n{}", context());
    assert!(
        silent
            .iter()
            .all(|(pt, _, from)| *pt == 13 && from.port() == base),
        "{silent:?}"
    );
    let audio = talking.iter().filter(|(pt, _, _)| *pt == 8).count();
    assert_eq!(audio, 20, "{talking:?}");
    let first_audio = talking.iter().position(|(pt, _, _)| *pt == 8).unwrap_or(0);
    assert!(
        talking[first_audio..].iter().all(|(pt, _, _)| *pt == 8),
        "no comfort noise while audio flows: {talking:?}"
    );
}

#[test]
fn an_ims_caller_with_preconditions_reaches_teams_once_its_bearer_is_up_and_media_flows() {
    let base = media_range();
    let profile = profile(base).replace(
        "    route: teams\n",
        "    route: teams\n    precondition: terminate\n",
    );
    let mut call = MediaCall::start(
        base,
        &profile,
        Scripts {
            caller: "caller_precondition",
            ring_ms: 500,
            talk_ms: 1500,
            ..Default::default()
        },
        Duration::from_millis(1000),
    );
    let (at_callee, at_caller) = call.exchange_pcma();
    call.finish();
    let context = || call.context();
    // The caller scenario checked the 183's conf:qos and the UPDATE's 200; Teams got a plain
    // offer only after that UPDATE.
    let invite = first_received(&call.callee, |m| m.is_request("INVITE"));
    assert!(!invite.body().contains("qos"), "{}", invite.text);
    assert!(
        invite
            .header("Require")
            .is_none_or(|r| !r.contains("precondition")),
        "{}",
        invite.text
    );
    let update_sent = call
        .caller
        .trace()
        .into_iter()
        .position(|m| !m.received && m.is_request("UPDATE"))
        .expect("the caller's UPDATE");
    let ringing = call
        .caller
        .trace()
        .into_iter()
        .position(|m| m.received && m.is_response(180))
        .expect("the 180");
    assert!(update_sent < ringing, "Teams rang only after the UPDATE");
    assert_eq!(at_callee, [0, 1, 2, 3, 4], "{}", context());
    assert_eq!(at_caller, [100, 101, 102, 103, 104], "{}", context());
}

#[test]
fn toward_a_trunk_wanting_delayed_offer_the_callee_offers_in_its_200_and_media_flows() {
    let base = media_range();
    let profile = profile(base).replace(
        "    route: core\n",
        "    route: core\n    delayed_offer: always\n",
    );
    let mut call = MediaCall::start(
        base,
        &profile,
        Scripts {
            talk_ms: 1500,
            ..Default::default()
        },
        Duration::from_millis(500),
    );
    let (at_callee, at_caller) = call.exchange_pcma();
    call.finish();
    let context = || call.context();
    let invite = first_received(&call.callee, |m| m.is_request("INVITE"));
    assert!(
        invite.body().is_empty(),
        "no offer to Teams:\n{}",
        invite.text
    );
    let ack = first_received(&call.callee, |m| m.is_request("ACK"));
    assert!(
        ack.body().contains(&format!("m=audio {base} RTP/AVP 8")),
        "Bridgehead's answer in the ACK:\n{}",
        ack.text
    );
    let ok = first_received(&call.caller, |m| m.is_response(200));
    assert!(
        ok.body()
            .contains(&format!("m=audio {} RTP/AVP 8", base + 2)),
        "the caller's answer:\n{}",
        ok.text
    );
    assert_eq!(at_callee, [0, 1, 2, 3, 4], "{}", context());
    assert_eq!(at_caller, [100, 101, 102, 103, 104], "{}", context());
}
