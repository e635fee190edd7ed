//! A trunk's peers end to end: OPTIONS keepalives mark a peer that refuses connections down
//! and up again once it answers, and calls go past it to the next peer with no call failed.
//! SIPp plays the peers (answering OPTIONS with `-aa`) and the caller, over TCP, against the
//! real `bridgehead` binary.

mod common;

use common::sipp::{scenario, wait_listening, Sipp, Transport};
use common::{free_udp_port, scratch_dir, Sbc};
use std::time::{Duration, Instant};

/// The core calls in over UDP; Teams has two TCP peers, `{first}` (down at first) and
/// `{second}`, watched every second.
const PROFILE: &str = "\
listeners:
  - name: core
    address: 127.0.0.1:{core}
  - name: teams
    address: 127.0.0.1:{teams}
    transports: [udp, tcp]
trunks:
  - name: core
    listener: core
    peers: [\"127.0.0.1:{softswitch}\"]
    script: {script}
    route: teams
  - name: teams
    listener: teams
    transport: tcp
    peers: [\"127.0.0.1:{first}\", \"127.0.0.1:{second}\"]
    script: {script}
    route: core
    keepalive:
      interval: 1
      down_after: 2
      up_after: 1
";

/// The keepalive lines of [`PROFILE`], for the tests without them.
const KEEPALIVE: &str =
    "    keepalive:\n      interval: 1\n      down_after: 2\n      up_after: 1\n";

/// A SIPp callee on `port` over TCP answering calls, and OPTIONS on its own (SIPp counts
/// those as calls too: it runs until the test drops it).
fn callee(dir: &std::path::Path, name: &str, port: u16) -> Sipp {
    let args: Vec<String> = [
        "-sf",
        &scenario("callee"),
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        "t1",
        "-aa",
        "-timeout",
        "30s",
        "-timeout_error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let sipp = Sipp::start(dir, name, &args);
    wait_listening(port, Transport::Tcp);
    sipp
}

/// A SIPp caller placing `calls` calls into the core listener.
fn caller(dir: &std::path::Path, sbc: &Sbc, calls: u32) -> Sipp {
    let args: Vec<String> = [
        "-sf",
        &scenario("caller"),
        &format!("127.0.0.1:{}", sbc.port("core")),
        "-i",
        "127.0.0.1",
        "-p",
        &free_udp_port().to_string(),
        "-m",
        &calls.to_string(),
        "-r",
        "5",
        "-d",
        "100",
        "-timeout",
        "30s",
        "-timeout_error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Sipp::start(dir, "caller", &args)
}

fn wait_log(sbc: &Sbc, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !sbc.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in the log:\n{}",
            sbc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_peer_refusing_connections_goes_down_calls_pass_it_and_it_comes_back_up() {
    let sbc = Sbc::start(PROFILE);
    let dir = scratch_dir("peers");
    let (first, second) = (sbc.port("first"), sbc.port("second"));
    let second_peer = callee(&dir, "second", second);
    // The first peer refuses connections: two failed OPTIONS and it is down.
    let down = format!(
        "peer down: 2 OPTIONS in a row failed (last: 503) trunk=\"teams\" peer=127.0.0.1:{first}"
    );
    wait_log(&sbc, &down, Duration::from_secs(10));

    let invites = |peer: &Sipp| {
        peer.trace()
            .iter()
            .filter(|m| m.received && m.is_request("INVITE"))
            .count()
    };
    let mut calls = caller(&dir, &sbc, 5);
    let status = calls.wait(Instant::now() + Duration::from_secs(30));
    let context = || {
        format!(
            "{}\n{}\n{}",
            calls.report(),
            second_peer.report(),
            sbc.log()
        )
    };
    assert_eq!(status, Some(0), "5 calls, none failed\n{}", context());
    assert_eq!(
        invites(&second_peer),
        5,
        "all at the second peer\n{}",
        context()
    );

    // The first peer comes back: one answered OPTIONS and calls go to it again.
    let first_peer = callee(&dir, "first", first);
    let up = format!(
        "peer up again: 1 OPTIONS in a row answered trunk=\"teams\" peer=127.0.0.1:{first}"
    );
    wait_log(&sbc, &up, Duration::from_secs(10));
    let mut call = caller(&dir, &sbc, 1);
    let status = call.wait(Instant::now() + Duration::from_secs(30));
    assert_eq!(status, Some(0), "{}", sbc.log());
    assert_eq!(
        invites(&first_peer),
        1,
        "the first peer took it\n{}",
        first_peer.report()
    );
    assert_eq!(invites(&second_peer), 5, "and not the second");
    let options = first_peer
        .trace()
        .into_iter()
        .find(|m| m.received && m.is_request("OPTIONS"))
        .expect("OPTIONS at the first peer");
    assert!(options.header("X-MS-SBC").is_some(), "{}", options.text);
    assert!(
        options
            .header("Contact")
            .is_some_and(|c| c.contains(";transport=tcp")),
        "{}",
        options.text
    );
}

/// dnsmasq on 127.0.0.1:`port` answering `names` (each with 127.0.0.1, TTL 60 s), and the
/// SRV records `srv` (`name,target,port,priority,weight`), and nothing else; killed by PID
/// on drop.
struct Dns(std::process::Child);

impl Dns {
    fn start(dir: &std::path::Path, port: u16, names: &[&str], srv: &[String]) -> Dns {
        let log = std::fs::File::create(dir.join("dnsmasq.log")).expect("log");
        let mut command = std::process::Command::new("dnsmasq");
        command.args([
            "--no-daemon",
            &format!("--port={port}"),
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--local-ttl=60",
            "--user=root",
        ]);
        for name in names {
            command.arg(format!("--host-record={name},127.0.0.1"));
        }
        for record in srv {
            command.arg(format!("--srv-host={record}"));
        }
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("dnsmasq (Debian dnsmasq-base; tests/run.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(dir.join("dnsmasq.log"))
            .unwrap_or_default()
            .contains("started")
        {
            assert!(Instant::now() < deadline, "dnsmasq did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Dns(child)
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn peers_by_name_are_resolved_and_calls_pass_the_first_when_it_is_down() {
    let dir = scratch_dir("peers-dns");
    let dns_port = free_udp_port();
    let _dns = Dns::start(
        &dir,
        dns_port,
        &["sip.pstnhub.test", "sip2.pstnhub.test", "sip3.pstnhub.test"],
        &[],
    );
    let profile = PROFILE
        .replace(
            "    peers: [\"127.0.0.1:{first}\", \"127.0.0.1:{second}\"]\n",
            "    peers: [\"sip.pstnhub.test:{first}\", \"sip2.pstnhub.test:{second}\", \"sip3.pstnhub.test:{third}\", \"nowhere.pstnhub.test:5060\"]\n",
        )
        .replace(
            "listeners:\n",
            &format!("dns:\n  servers: [\"127.0.0.1:{dns_port}\"]\nlisteners:\n"),
        );
    let sbc = Sbc::start(&profile);
    let (first, second) = (sbc.port("first"), sbc.port("second"));
    for resolved in ["sip.pstnhub.test", "sip2.pstnhub.test", "sip3.pstnhub.test"] {
        assert!(
            sbc.log()
                .contains(&format!("peer name resolved trunk=teams peer={resolved}:")),
            "{resolved}:\n{}",
            sbc.log()
        );
    }
    assert!(
        sbc.log().contains("peer name does not resolve (")
            && sbc.log().contains("peer=nowhere.pstnhub.test:5060"),
        "{}",
        sbc.log()
    );
    let second_peer = callee(&dir, "second", second);
    // sip refuses connections: down after two OPTIONS; calls go to sip2, by its name.
    let down = format!(
        "peer down: 2 OPTIONS in a row failed (last: 503) trunk=\"teams\" peer=127.0.0.1:{first}"
    );
    wait_log(&sbc, &down, Duration::from_secs(10));
    let mut calls = caller(&dir, &sbc, 3);
    let status = calls.wait(Instant::now() + Duration::from_secs(30));
    let context = || {
        format!(
            "{}\n{}\n{}",
            calls.report(),
            second_peer.report(),
            sbc.log()
        )
    };
    assert_eq!(status, Some(0), "3 calls, none failed\n{}", context());
    let trace = second_peer.trace();
    let invites: Vec<_> = trace
        .iter()
        .filter(|m| m.received && m.is_request("INVITE"))
        .collect();
    assert_eq!(invites.len(), 3, "{}", context());
    assert!(
        invites[0]
            .first_line()
            .contains(&format!("@sip2.pstnhub.test:{second};transport=tcp")),
        "the Request-URI names the peer: {}",
        invites[0].text
    );
    let options = trace
        .iter()
        .find(|m| m.received && m.is_request("OPTIONS"))
        .expect("OPTIONS at sip2");
    assert!(
        options.first_line().starts_with(&format!(
            "OPTIONS sip:sip2.pstnhub.test:{second};transport=tcp"
        )),
        "{}",
        options.text
    );
}

#[test]
fn calls_move_past_a_silent_peer_within_failover_timeout_with_none_failed() {
    // The first peer accepts connections and says nothing; the trunk gives a peer 2 s.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let held = std::thread::spawn(move || {
        // Keep what it accepts open (a peer that hangs, not one that closes).
        let mut open = Vec::new();
        silent.set_nonblocking(true).expect("nonblocking listener");
        let until = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while Instant::now() < until && !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((stream, _)) = silent.accept() {
                stream
                    .set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                open.push(stream);
            }
            for stream in &mut open {
                let mut buf = [0u8; 4096];
                if let Ok(n) = std::io::Read::read(stream, &mut buf) {
                    got.extend_from_slice(&buf[..n]);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        String::from_utf8_lossy(&got).into_owned()
    });
    let profile = PROFILE
        .replace("127.0.0.1:{first}", &format!("127.0.0.1:{silent_port}"))
        .replace(KEEPALIVE, "    failover_timeout: 2\n");
    let sbc = Sbc::start(&profile);
    let dir = scratch_dir("peers-silent");
    let second_peer = callee(&dir, "second", sbc.port("second"));
    let started = Instant::now();
    let mut calls = caller(&dir, &sbc, 2);
    let status = calls.wait(Instant::now() + Duration::from_secs(30));
    let took = started.elapsed();
    let context = || {
        format!(
            "{}\n{}\n{}",
            calls.report(),
            second_peer.report(),
            sbc.log()
        )
    };
    assert_eq!(status, Some(0), "2 calls, none failed\n{}", context());
    let answered = second_peer
        .trace()
        .iter()
        .filter(|m| m.received && m.is_request("INVITE"))
        .count();
    assert_eq!(answered, 2, "both at the second peer\n{}", context());
    assert!(
        took < Duration::from_secs(10),
        "within failover_timeout: {took:?}"
    );
    drop(sbc);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let heard = held.join().expect("silent peer");
    assert_eq!(
        heard.matches("INVITE sip:").count(),
        2,
        "the silent peer got each call first:\n{heard}"
    );
}

#[test]
fn a_peer_answering_503_loses_its_connection_and_the_call_goes_to_the_next() {
    use std::io::{Read, Write};
    // The first peer answers the INVITE 503 with Retry-After, then waits for the connection
    // to close.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_port = busy.local_addr().expect("addr").port();
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = busy.accept().ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let invite = String::from_utf8_lossy(&got).into_owned();
        let mut answer = String::from("SIP/2.0 503 Service Unavailable\r\n");
        for line in invite.lines() {
            let name = line.split(':').next().unwrap_or_default();
            if ["Via", "From", "Call-ID", "CSeq"].contains(&name) {
                answer.push_str(line);
                answer.push_str("\r\n");
            } else if name == "To" {
                answer.push_str(&format!("{line};tag=busy\r\n"));
            }
        }
        answer.push_str("Retry-After: 60\r\nContent-Length: 0\r\n\r\n");
        stream.write_all(answer.as_bytes()).ok()?;
        // Bridgehead's ACK, then the end of the connection.
        let closed_at = Instant::now() + Duration::from_secs(5);
        while Instant::now() < closed_at {
            match stream.read(&mut buf) {
                Ok(0) => return Some(true),
                Ok(_) => {}
                Err(_) => return Some(false),
            }
        }
        Some(false)
    });
    let profile = PROFILE
        .replace("127.0.0.1:{first}", &format!("127.0.0.1:{busy_port}"))
        .replace(KEEPALIVE, "");
    let sbc = Sbc::start(&profile);
    let dir = scratch_dir("peers-503");
    let second_peer = callee(&dir, "second", sbc.port("second"));
    let mut call = caller(&dir, &sbc, 1);
    let status = call.wait(Instant::now() + Duration::from_secs(30));
    assert_eq!(status, Some(0), "{}\n{}", call.report(), sbc.log());
    assert_eq!(
        peer.join().expect("busy peer"),
        Some(true),
        "Bridgehead closed the connection after the 503\n{}",
        sbc.log()
    );
    assert!(second_peer
        .trace()
        .iter()
        .any(|m| m.received && m.is_request("INVITE")));
}

#[test]
fn a_connection_whose_peer_never_answers_a_crlf_ping_is_closed_as_dead() {
    use std::io::Read;
    // A peer that takes the connection and the INVITE, then never says a byte again.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mute_port = mute.local_addr().expect("addr").port();
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = mute.accept().ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .ok()?;
        let opened = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => {
                    return Some((String::from_utf8_lossy(&got).into_owned(), opened.elapsed()))
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => return None,
            }
        }
    });
    let profile = PROFILE
        .replace("127.0.0.1:{first}", &format!("127.0.0.1:{mute_port}"))
        .replace(KEEPALIVE, "")
        .replace(
            "    transports: [udp, tcp]\n",
            "    transports: [udp, tcp]\n    ping_interval: 1\n",
        );
    let sbc = Sbc::start(&profile);
    let dir = scratch_dir("peers-ping");
    let _call = caller(&dir, &sbc, 1);
    let (heard, open_for) = peer
        .join()
        .expect("mute peer")
        .expect("the connection ended");
    assert!(heard.starts_with("INVITE sip:"), "{heard}");
    // After the INVITE (its headers, then Content-Length bytes of body): the ping.
    let head_end = heard.find("\r\n\r\n").expect("headers") + 4;
    let length: usize = heard
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    assert_eq!(
        &heard[head_end + length..],
        "\r\n\r\n",
        "a CRLF ping after the INVITE"
    );
    assert!(
        open_for >= Duration::from_secs(10) && open_for < Duration::from_secs(15),
        "closed 10 s after the unanswered ping: {open_for:?}"
    );
    wait_log(
        &sbc,
        "no pong to a CRLF ping within 10 s: connection dead, closed",
        Duration::from_secs(2),
    );
}

#[test]
fn an_srv_name_gives_its_targets_by_priority() {
    let dir = scratch_dir("peers-srv");
    let (dns_port, low, high) = (free_udp_port(), free_udp_port(), free_udp_port());
    // sip2 has the lower priority number: it comes first, whatever the order of the records.
    let _dns = Dns::start(
        &dir,
        dns_port,
        &["sip.pstnhub.test", "sip2.pstnhub.test"],
        &[
            format!("_sip._tcp.pstnhub.test,sip.pstnhub.test,{high},20,10"),
            format!("_sip._tcp.pstnhub.test,sip2.pstnhub.test,{low},10,10"),
        ],
    );
    let profile = PROFILE
        .replace(
            "    peers: [\"127.0.0.1:{first}\", \"127.0.0.1:{second}\"]\n",
            "    peers: [\"_sip._tcp.pstnhub.test\"]\n",
        )
        .replace(KEEPALIVE, "")
        .replace(
            "listeners:\n",
            &format!("dns:\n  servers: [\"127.0.0.1:{dns_port}\"]\nlisteners:\n"),
        );
    let sbc = Sbc::start(&profile);
    assert!(
        sbc.log()
            .contains("SRV resolved trunk=teams srv=_sip._tcp.pstnhub.test targets=2"),
        "{}",
        sbc.log()
    );
    let first = callee(&dir, "sip2", low);
    let mut call = caller(&dir, &sbc, 1);
    let status = call.wait(Instant::now() + Duration::from_secs(30));
    assert_eq!(status, Some(0), "{}\n{}", call.report(), sbc.log());
    let invite = first
        .trace()
        .into_iter()
        .find(|m| m.received && m.is_request("INVITE"))
        .expect("the call at the priority-10 target");
    assert!(
        invite
            .first_line()
            .contains(&format!("@pstnhub.test:{low};transport=tcp")),
        "{}",
        invite.text
    );
}
