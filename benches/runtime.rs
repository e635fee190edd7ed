//! One whole call through the running SBC: the `bridgehead` binary on the default rules
//! (one shard, no media anchoring), a caller and a callee on loopback UDP sockets of this
//! process, INVITE → 100/180/200 → ACK → BYE → 200 one call after another.
//!
//! - `runtime/whole_call_cpu`: the SBC process's CPU time per call (every thread's
//!   `/proc/PID/task/*/schedstat`, nanoseconds): what a change to the transports, the runtime
//!   or the engine costs per call, with sockets, wake-ups and system calls included.
//! - `runtime/whole_call_wall`: the time one call takes end to end (the caller and callee
//!   here wait for each message).

use bridgehead::sip::{response_to, HeaderName, Message};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The SBC process, stopped when dropped.
struct Sbc {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Sbc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Sbc {
    /// CPU time of every thread of the process so far.
    fn cpu(&self) -> Duration {
        let tasks = format!("/proc/{}/task", self.child.id());
        let nanos: u64 = std::fs::read_dir(tasks)
            .expect("tasks")
            .filter_map(Result::ok)
            .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
            .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Duration::from_nanos(nanos)
    }
}

/// A loopback port nobody uses now.
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// The caller and callee sockets, the SBC's core listener, and the SBC itself.
struct Setup {
    caller: UdpSocket,
    callee: UdpSocket,
    core: SocketAddr,
    sbc: Sbc,
}

fn start() -> Setup {
    let caller = UdpSocket::bind("127.0.0.1:0").expect("caller");
    let callee = UdpSocket::bind("127.0.0.1:0").expect("callee");
    for socket in [&caller, &callee] {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
    }
    let (core, teams) = (free_port(), free_port());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua");
    let dir = std::env::temp_dir().join(format!("bh-bench-runtime-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let profile = format!(
        "shards: 1\nlisteners:\n  - name: core\n    address: 127.0.0.1:{core}\n  - name: teams\n    address: 127.0.0.1:{teams}\ntrunks:\n  - name: core\n    listener: core\n    peers: [\"{}\"]\n    script: {script}\n    route: teams\n  - name: teams\n    listener: teams\n    peers: [\"{}\"]\n    script: {script}\n    route: core\n",
        caller.local_addr().expect("addr"),
        callee.local_addr().expect("addr"),
    );
    let path = dir.join("profile.yaml");
    std::fs::write(&path, profile).expect("profile");
    let log = std::fs::File::create(dir.join("sbc.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_bridgehead"))
        .args(["run", "--profile"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("bridgehead");
    let sbc = Sbc { child, dir };
    let core: SocketAddr = format!("127.0.0.1:{core}").parse().expect("addr");
    // Ready when it answers an OPTIONS.
    let options = format!(
        "OPTIONS sip:sbc@{core} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKready\r\nMax-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:sbc@127.0.0.1>\r\nCall-ID: ready\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        caller.local_addr().expect("addr")
    );
    caller
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    let ready = (0..100).any(|_| {
        let _ = caller.send_to(options.as_bytes(), core);
        caller.recv_from(&mut buf).is_ok()
    });
    assert!(ready, "bridgehead did not answer OPTIONS");
    caller
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    Setup {
        caller,
        callee,
        core,
        sbc,
    }
}

/// The next message on `socket`, and where it came from.
fn receive(socket: &UdpSocket) -> (Message, SocketAddr) {
    let mut buf = [0u8; 8192];
    let (len, from) = socket.recv_from(&mut buf).expect("a message in time");
    let msg = Message::parse(&Bytes::copy_from_slice(&buf[..len])).expect("SIP");
    (msg, from)
}

/// The next message on `socket` that `wanted` accepts (provisionals are skipped).
fn receive_until(socket: &UdpSocket, wanted: impl Fn(&Message) -> bool) -> (Message, SocketAddr) {
    loop {
        let (msg, from) = receive(socket);
        if wanted(&msg) {
            return (msg, from);
        }
    }
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

fn one_call(setup: &Setup, n: u64) {
    let Setup {
        caller,
        callee,
        core,
        ..
    } = setup;
    let me = caller.local_addr().expect("addr");
    let request = |method: &str, cseq: u32, to: &str| {
        let body = if method == "INVITE" { SDP } else { "" };
        let kind = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".to_string()
        };
        format!(
            "{method} sip:+15550100@{core} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{method}{n}\r\nMax-Forwards: 70\r\nFrom: <sip:+15550199@core.example.com>;tag=a{n}\r\nTo: {to}\r\nCall-ID: bench{n}@core.example.com\r\nCSeq: {cseq} {method}\r\nContact: <sip:alice@{me}>\r\n{kind}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let to = "<sip:+15550100@teams.example.com>";
    caller
        .send_to(request("INVITE", 1, to).as_bytes(), core)
        .expect("INVITE");
    let (invite, sbc_teams) = receive(callee);
    let mut ringing = response_to(&invite, 180, None, Some("b"));
    ringing.push_header(
        HeaderName::Contact,
        format!("<sip:bob@{}>", callee.local_addr().expect("addr")),
    );
    callee.send_to(&ringing.to_bytes(), sbc_teams).expect("180");
    let mut ok = ringing.clone();
    ok.start = bridgehead::sip::StartLine::Response {
        status: 200,
        reason: "OK".into(),
    };
    ok.push_header(HeaderName::ContentType, "application/sdp");
    ok.body = Bytes::from_static(SDP.as_bytes());
    callee.send_to(&ok.to_bytes(), sbc_teams).expect("200");
    let (answer, _) = receive_until(caller, |m| m.status() == Some(200));
    let to = answer.header_str(&HeaderName::To).expect("To").to_string();
    caller
        .send_to(request("ACK", 1, &to).as_bytes(), core)
        .expect("ACK");
    receive_until(callee, |m| m.method().is_some_and(|m| m.as_str() == "ACK"));
    caller
        .send_to(request("BYE", 2, &to).as_bytes(), core)
        .expect("BYE");
    let (bye, _) = receive_until(callee, |m| m.method().is_some_and(|m| m.as_str() == "BYE"));
    callee
        .send_to(&response_to(&bye, 200, None, None).to_bytes(), sbc_teams)
        .expect("200 to BYE");
    receive_until(caller, |m| m.status() == Some(200));
}

fn runtime(c: &mut Criterion) {
    let setup = start();
    let mut n = 0u64;
    let mut group = c.benchmark_group("runtime");
    group.throughput(Throughput::Elements(1));
    group.bench_function("whole_call_cpu", |b| {
        b.iter_custom(|iters| {
            let before = setup.sbc.cpu();
            for _ in 0..iters {
                n += 1;
                one_call(&setup, n);
            }
            setup.sbc.cpu().saturating_sub(before)
        })
    });
    group.bench_function("whole_call_wall", |b| {
        b.iter(|| {
            n += 1;
            let started = Instant::now();
            one_call(&setup, n);
            started.elapsed()
        })
    });
    group.finish();
}

criterion_group!(benches, runtime);
criterion_main!(benches);
