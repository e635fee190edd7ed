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
