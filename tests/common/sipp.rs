//! SIPp as a far end: runs SIPp scenarios from `tests/sipp/` and reads what each end sent and
//! received from its `-trace_msg` log.

use super::{free_udp_port, Sbc};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn profile_name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }

    /// SIPp's `-t` mode: one socket for all calls.
    pub fn sipp_mode(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
        }
    }
}

/// One SIP message a far end sent or received, as SIPp's `-trace_msg` logged it.
#[derive(Debug)]
pub struct Traced {
    pub received: bool,
    pub text: String,
    /// When SIPp logged it: seconds since midnight UTC (SIPp runs with `TZ=UTC`).
    pub at: Option<f64>,
}

impl Traced {
    pub fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    /// Values of every header named `name` (long form, case-insensitive).
    pub fn headers(&self, name: &str) -> Vec<&str> {
        let head = self.text.split("\n\n").next().unwrap_or("");
        head.lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers(name).first().copied()
    }

    pub fn is_request(&self, method: &str) -> bool {
        self.first_line().starts_with(&format!("{method} "))
    }

    pub fn is_response(&self, status: u16) -> bool {
        self.first_line().starts_with(&format!("SIP/2.0 {status} "))
    }

    pub fn body(&self) -> &str {
        self.text.split_once("\n\n").map(|(_, b)| b).unwrap_or("")
    }
}

/// Parses a SIPp `-message_file`: blocks that start with a dashed timestamp line, then
/// `UDP message received [N] bytes :` or `TCP message sent (N bytes):`, a blank line, the message.
pub fn read_trace(path: &Path) -> Vec<Traced> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split("----------------------------------------------- ")
        .filter_map(|block| {
            let mut lines = block.lines();
            let at = seconds_of_day(lines.next()?);
            let what = lines.next()?;
            let received = what.contains("message received");
            if !received && !what.contains("message sent") {
                return None;
            }
            let message: Vec<&str> = lines.skip_while(|l| l.trim().is_empty()).collect();
            let text = message.join("\n").trim_end().replace('\r', "");
            Some(Traced { received, text, at })
        })
        .collect()
}

/// `2026-12-01 14:57:01.810884` → seconds since that day's midnight.
fn seconds_of_day(stamp: &str) -> Option<f64> {
    let time = stamp.split_whitespace().nth(1)?;
    let mut parts = time.split(':');
    let hours: f64 = parts.next()?.parse().ok()?;
    let minutes: f64 = parts.next()?.parse().ok()?;
    let seconds: f64 = parts.next()?.parse().ok()?;
    Some(hours * 3600.0 + minutes * 60.0 + seconds)
}

/// Now, in seconds since midnight UTC (to compare with [`Traced::at`]).
pub fn now_seconds_of_day() -> f64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    since_epoch.as_secs_f64() % 86_400.0
}

/// A SIPp process, killed by PID if it is still running when dropped.
pub struct Sipp {
    child: Child,
    name: String,
    dir: PathBuf,
}

impl Sipp {
    pub fn start(dir: &Path, name: &str, args: &[String]) -> Sipp {
        let sipp = which_sipp();
        let out = std::fs::File::create(dir.join(format!("{name}.out"))).expect("sipp log");
        let err = out.try_clone().expect("sipp log");
        let child = Command::new(sipp)
            .args(args)
            .args(["-nostdin", "-trace_msg", "-trace_err", "-message_file"])
            .arg(dir.join(format!("{name}.msg")))
            .arg("-error_file")
            .arg(dir.join(format!("{name}.err")))
            .current_dir(dir)
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start sipp");
        Sipp {
            child,
            name: name.to_string(),
            dir: dir.to_path_buf(),
        }
    }

    /// Waits for the exit status (SIPp: 0 = every call succeeded); kills it at the deadline.
    pub fn wait(&mut self, deadline: Instant) -> Option<i32> {
        loop {
            if let Some(status) = self.child.try_wait().expect("wait sipp") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn trace(&self) -> Vec<Traced> {
        read_trace(&self.dir.join(format!("{}.msg", self.name)))
    }

    /// Its console output and error log, for failure messages.
    pub fn report(&self) -> String {
        let read = |ext: &str| {
            std::fs::read_to_string(self.dir.join(format!("{}.{ext}", self.name)))
                .unwrap_or_default()
        };
        let out = read("out");
        let tail: Vec<&str> = out.lines().rev().take(30).collect();
        format!(
            "--- {} output (tail) ---\n{}\n--- {} errors ---\n{}",
            self.name,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            self.name,
            read("err")
        )
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn which_sipp() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("sipp"))
        .find(|path| path.is_file())
        .expect("sipp not found: install Debian package sip-tester (tests/run.sh does)")
}

pub fn scenario(name: &str) -> String {
    format!("{}/tests/sipp/{name}.xml", env!("CARGO_MANIFEST_DIR"))
}

/// Waits until SIPp's listening socket is bound (UDP or TCP) so the first INVITE is not lost.
/// It looks in /proc/net: probing by binding the port would hold it for an instant, and a SIPp
/// binding at that instant fails and exits (seen as "SIPp never bound port").
pub fn wait_listening(port: u16, transport: Transport) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_listening(port, transport) {
        assert!(Instant::now() < deadline, "SIPp never bound port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when some socket listens on `port` (TCP: in state LISTEN; UDP: bound), per
/// /proc/net/{tcp,tcp6,udp,udp6}.
fn is_listening(port: u16, transport: Transport) -> bool {
    let (files, listen_state) = match transport {
        Transport::Tcp => (["/proc/net/tcp", "/proc/net/tcp6"], Some("0A")),
        Transport::Udp => (["/proc/net/udp", "/proc/net/udp6"], None),
    };
    let wanted = format!("{port:04X}");
    files.iter().any(|file| {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port = fields.get(1).and_then(|a| a.rsplit(':').next());
                local_port == Some(wanted.as_str())
                    && listen_state.is_none_or(|state| fields.get(3) == Some(&state))
            })
    })
}

/// A SIPp caller placing one call into the core listener with an SDP naming `rtp` (a test
/// socket), talking for `duration_ms`.
pub fn media_caller(sbc: &Sbc, name: &str, rtp: &UdpSocket, duration_ms: u32) -> Vec<String> {
    [
        "-sf",
        &scenario(name),
        &format!("127.0.0.1:{}", sbc.port("core")),
        "-i",
        "127.0.0.1",
        "-p",
        &free_udp_port().to_string(),
        "-set",
        "rtp_port",
        &rtp.local_addr().expect("addr").port().to_string(),
        "-m",
        "1",
        "-d",
        &duration_ms.to_string(),
        "-timeout",
        "30s",
        "-timeout_error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A SIPp callee (`scenario`) answering one call on `port` with an SDP naming `rtp_port` (a
/// test socket); `vars` are its `-set` variables besides `rtp_port` (`te_pt`, the
/// telephone-event payload type, is 101 unless given).
pub fn callee_args(
    scenario_name: &str,
    port: u16,
    rtp_port: u16,
    vars: &[(&str, &str)],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "-sf",
        &scenario(scenario_name),
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-set",
        "rtp_port",
        &rtp_port.to_string(),
        "-m",
        "1",
        "-timeout",
        "30s",
        "-timeout_error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !vars.iter().any(|(name, _)| *name == "te_pt") {
        args.extend(["-set", "te_pt", "101"].map(String::from));
    }
    for (name, value) in vars {
        args.extend(["-set".to_string(), name.to_string(), value.to_string()]);
    }
    args
}

/// A SIPp far end's arguments: on 127.0.0.1:`port`, `calls` calls (0: as many as come),
/// failing after 30 s, then `extra`.
pub fn far_end_args(port: u16, calls: u32, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["-i", "127.0.0.1", "-p", &port.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    if calls > 0 {
        args.extend(["-m".to_string(), calls.to_string()]);
    }
    args.extend(["-timeout", "30s", "-timeout_error"].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A SIPp far end `name` on the SBC's port `at.0` running scenario `at.1` for `at.2` calls (0:
/// as many as come), once it listens (UDP).
#[allow(dead_code)]
pub fn listening_far_end(sbc: &Sbc, dir: &Path, name: &str, at: (&str, &str, u32)) -> Sipp {
    let (port, scenario_name, calls) = at;
    let args = far_end_args(sbc.port(port), calls, &["-sf", &scenario(scenario_name)]);
    let sipp = Sipp::start(dir, name, &args);
    wait_listening(sbc.port(port), Transport::Udp);
    sipp
}

/// A SIPp callee on the SBC's `teams_peer` port (scenario `callee.0`, `callee.1` calls, 0:
/// as many as come), listening before a SIPp caller on its `softswitch` port places
/// `caller.1` calls of scenario `caller.0` (with `caller.2` more arguments) into the `core`
/// listener. Returns (callee, caller), both running.
#[allow(dead_code)]
pub fn core_to_teams(
    sbc: &Sbc,
    dir: &Path,
    callee: (&str, u32),
    caller: (&str, u32, &[&str]),
) -> (Sipp, Sipp) {
    let callee = listening_far_end(sbc, dir, "callee", ("teams_peer", callee.0, callee.1));
    let mut args = far_end_args(sbc.port("softswitch"), caller.1, caller.2);
    args.extend(["-sf".to_string(), scenario(caller.0)]);
    args.push(format!("127.0.0.1:{}", sbc.port("core")));
    (callee, Sipp::start(dir, "caller", &args))
}
