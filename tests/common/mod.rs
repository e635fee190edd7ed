//! Test harness shared by the end-to-end tests: runs the real `bridgehead` binary on a profile
//! written for the test, on free loopback ports, and stops it by PID when the test ends
//! (also when it fails).

#![allow(dead_code)]

pub mod http;
pub mod netns;
pub mod pki;
pub mod redis_server;
pub mod rtp_capture;
pub mod sipp;
pub mod trunks;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// Test ports come from 10000-29999, below the kernel's ephemeral range (32768-60999): no
/// connection's source port can take one between a test choosing it and a far end binding it.
/// Each test process walks its own cursor (started from its pid), so the tests of a process,
/// running in parallel, never pick the same ports.
const TEST_PORTS: std::ops::Range<u32> = 10_000..30_000;

/// The first of `count` consecutive candidate ports, each call a fresh block. The cursor goes
/// round the range modulo its whole size, whatever `count`, and a block that would straddle
/// the range's end is skipped: blocks never overlap until the cursor has gone all the way
/// round. (Taking the cursor modulo a span that depended on `count` let blocks of different
/// sizes wrap at different places and overlap: seen in CI as a listener port inside a media
/// range.)
fn candidate_ports(count: u32) -> u16 {
    static CURSOR: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
    let total = TEST_PORTS.end - TEST_PORTS.start;
    let cursor = CURSOR.get_or_init(|| {
        std::sync::atomic::AtomicU32::new(std::process::id().wrapping_mul(7919) % total)
    });
    loop {
        let offset = cursor.fetch_add(count, Ordering::Relaxed) % total;
        if offset + count <= total {
            return (TEST_PORTS.start + offset) as u16;
        }
    }
}

/// True when `port` can be bound on 127.0.0.1 for UDP and for TCP without SO_REUSEADDR (so a
/// port with connections lingering in TIME_WAIT, which a far end could not bind, is not free).
fn port_is_free(port: u16) -> bool {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    UdpSocket::bind(address).is_ok()
        && tokio::net::TcpSocket::new_v4().is_ok_and(|socket| socket.bind(address).is_ok())
}

/// A loopback port free for both UDP and TCP right now.
pub fn free_udp_port() -> u16 {
    loop {
        let port = candidate_ports(1);
        if port_is_free(port) {
            return port;
        }
    }
}

/// The bundled default rules.
pub fn default_script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua").to_string()
}

/// A fresh scratch directory for one test.
pub fn scratch_dir(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "bridgehead-{label}-{}-{}",
        std::process::id(),
        DIRS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A running SBC; killed and reaped on drop.
pub struct Sbc {
    child: Child,
    pub dir: PathBuf,
    ports: HashMap<String, u16>,
    first: String,
}

impl Sbc {
    /// Starts the SBC on `template`: each `{name}` placeholder becomes a free port (ask for it
    /// with [`Sbc::port`]), `{script}` the bundled default rules, `{{name}}` a literal
    /// `{name}`. Waits until the listener on the first placeholder answers OPTIONS.
    pub fn start(template: &str) -> Sbc {
        Sbc::start_with_env(template, &[])
    }

    /// [`Sbc::start`] with more environment variables for the process.
    pub fn start_with_env(template: &str, env: &[(&str, &str)]) -> Sbc {
        Sbc::launch(template, env, None, HashMap::new())
    }

    /// [`Sbc::start`] on the ports `other` was given for the same names (an SBC that takes
    /// another's place, once that one is gone).
    pub fn start_on_ports_of(template: &str, other: &Sbc) -> Sbc {
        Sbc::launch(template, &[], None, other.ports.clone())
    }

    /// [`Sbc::start`] with at most `files` open file descriptors (`ulimit -n`).
    pub fn start_with_fd_limit(template: &str, files: u32) -> Sbc {
        Sbc::launch(template, &[], Some(files), HashMap::new())
    }

    fn launch(
        template: &str,
        env: &[(&str, &str)],
        fd_limit: Option<u32>,
        mut ports: HashMap<String, u16>,
    ) -> Sbc {
        let mut first = None;
        let mut profile = template.replace("{script}", &default_script());
        // The tests run the debug build, several times slower than a release one, on machines
        // shared with SIPp and other work: a burst can keep an INVITE waiting past the 200 ms
        // a release shard is held to. A test about overload sets its own `overload`; the
        // others get a queue delay they do not reach.
        if !profile.contains("\noverload:") {
            if !profile.ends_with('\n') {
                profile.push('\n');
            }
            profile.push_str("overload:\n  queue_delay_ms: 5000\n");
        }
        // `{name}` (a lowercase word) is a port; any other brace stays (YAML flow maps, a
        // lookup URL's `{key}` written `{{key}}`, which becomes `{key}`).
        let mut from = 0;
        while let Some(open) = profile[from..].find('{').map(|i| i + from) {
            let name: String = profile[open + 1..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let close = open + 1 + name.len();
            if name.is_empty() || profile.as_bytes().get(close) != Some(&b'}') {
                from = open + 1;
                continue;
            }
            if open > 0 && profile.as_bytes()[open - 1] == b'{' {
                // `{{key}}`: a literal `{key}`.
                profile.replace_range(open - 1..=close + 1, &format!("{{{name}}}"));
                from = open + name.len();
                continue;
            }
            first.get_or_insert_with(|| name.clone());
            let port = *ports.entry(name.clone()).or_insert_with(free_udp_port);
            profile.replace_range(open..=close, &port.to_string());
            from = open;
        }
        let dir = scratch_dir("sbc");
        let path = dir.join("profile.yaml");
        std::fs::write(&path, &profile).expect("write profile");
        let log = std::fs::File::create(dir.join("sbc.log")).expect("log file");
        let mut command = match fd_limit {
            None => Command::new(env!("CARGO_BIN_EXE_bridgehead")),
            Some(files) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_bridgehead"));
                shell
            }
        };
        let child = command
            .args(["run", "--profile"])
            .arg(&path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bridgehead");
        let first = first.expect("a listener port placeholder");
        let sbc = Sbc {
            child,
            dir,
            ports,
            first,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while sbc.options(&sbc.first) == 0 {
            assert!(sbc.is_running(), "bridgehead exited:\n{}", sbc.log());
            assert!(
                Instant::now() < deadline,
                "bridgehead not ready:\n{}",
                sbc.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sbc
    }

    /// The port chosen for `{name}`.
    pub fn port(&self, name: &str) -> u16 {
        self.ports[name]
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn is_running(&self) -> bool {
        // try_wait needs &mut; /proc tells the same without reaping.
        std::path::Path::new(&format!("/proc/{}", self.child.id())).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
    }

    /// Sends the process a signal (`"TERM"`, `"INT"`...).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    /// The exit code once the process ended, waiting up to `deadline`; None if it still runs.
    pub fn wait_exit(&mut self, deadline: Instant) -> Option<i32> {
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// What the SBC logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sbc.log")).unwrap_or_default()
    }

    /// Sends an out-of-dialog OPTIONS over UDP to the listener on `{name}`; returns the status
    /// of the answer, or 0 when none came within 500 ms.
    pub fn options(&self, name: &str) -> u16 {
        let port = self.port(name);
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let local = socket.local_addr().expect("addr");
        let request = format!(
            "OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=p\r\nTo: <sip:ping@127.0.0.1>\r\nCall-ID: probe-{}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            local.port(),
            local.port()
        );
        if socket
            .send_to(request.as_bytes(), ("127.0.0.1", port))
            .is_err()
        {
            return 0;
        }
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut buf = [0u8; 4096];
        match socket.recv(&mut buf) {
            Ok(len) => String::from_utf8_lossy(&buf[..len])
                .strip_prefix("SIP/2.0 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            Err(_) => 0,
        }
    }
}

impl Drop for Sbc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A media port range for one test: ten free ports from an even port (one shard, so the first
/// The first (even) port of 10 consecutive free loopback ports, for a media range.
pub fn media_range() -> u16 {
    media_range_of(10)
}

/// The first (even) port of `count` consecutive free loopback ports, from a block no other
/// port of this test process comes from.
pub fn media_range_of(count: u16) -> u16 {
    loop {
        let base = candidate_ports(u32::from(count) + 2);
        let base = base + base % 2;
        if (base..base + count).all(port_is_free) {
            return base;
        }
    }
}

/// The first SIP message on `socket` within `wait`, as text.
pub fn receive(socket: &UdpSocket, wait: Duration) -> Option<String> {
    socket.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = vec![0u8; 70_000];
    socket
        .recv(&mut buf)
        .ok()
        .map(|len| String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// An `Sbc` template: core and Teams trunks (UDP and TCP) running the bundled rules, with
/// extra lines for the profile's top, the core listener and the Teams trunk.
pub fn core_teams_profile(top: &str, core_listener: &str, teams_trunk: &str) -> String {
    format!(
        "{top}listeners:
  - name: core
    address: 127.0.0.1:{{core}}
    transports: [udp, tcp]
{core_listener}  - name: teams
    address: 127.0.0.1:{{teams}}
    transports: [udp, tcp]
trunks:
  - name: core
    listener: core
    peers: [\"127.0.0.1:{{softswitch}}\"]
    script: {{script}}
    route: teams
  - name: teams
    listener: teams
    peers: [\"127.0.0.1:{{teams_peer}}\"]
    script: {{script}}
    route: core
{teams_trunk}"
    )
}
