//! Seeing calls from outside the real `bridgehead` binary: SIP capture as HEP3 read by the
//! test and by sngrep (a HEP parser nobody here wrote), the dashboard in headless Chromium,
//! the admin server over HTTPS, and the CDRs of failed-over, cancelled and rule-rejected
//! calls.

mod common;

use common::http::{cdr_lines, https_request, request};
use common::pki::Pki;
use common::sipp::{
    core_to_teams, far_end_args, listening_far_end, scenario, wait_listening, Sipp, Transport,
};
use common::{core_teams_profile, free_udp_port, scratch_dir, Sbc};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A process the test started, killed and reaped (by its PID) when dropped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A profile with the core and Teams trunks running `rules`, the admin server on its own free
/// port, and `extra` top-level lines.
fn profile(dir: &Path, rules: &str, admin: &str, extra: &str) -> String {
    let script = dir.join("rules.lua");
    std::fs::write(&script, rules).expect("rules");
    let profile = core_teams_profile("drain_timeout: 2\n", "", "")
        .replace("{script}", &script.display().to_string());
    format!("{profile}admin:\n  address: 127.0.0.1:{{admin}}\n{admin}{extra}")
}

/// One HEP3 packet as the test's collector decoded it (from the specification, apart from
/// Bridgehead's encoder).
#[derive(Clone, Debug)]
struct Hep {
    source: SocketAddr,
    destination: SocketAddr,
    agent: u32,
    correlation: String,
    payload: String,
}

impl Hep {
    fn decode(packet: &[u8]) -> Hep {
        assert_eq!(&packet[..4], b"HEP3", "{packet:?}");
        let total = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
        assert_eq!(total, packet.len(), "the length covers the packet");
        let mut chunks = std::collections::HashMap::new();
        let mut at = 6;
        while at < total {
            let kind = u16::from_be_bytes([packet[at + 2], packet[at + 3]]);
            let len = usize::from(u16::from_be_bytes([packet[at + 4], packet[at + 5]]));
            chunks.insert(kind, packet[at + 6..at + len].to_vec());
            at += len;
        }
        let ip = |kind: u16| -> std::net::IpAddr {
            let bytes: [u8; 4] = chunks[&kind][..].try_into().expect("IPv4");
            bytes.into()
        };
        let port = |kind: u16| u16::from_be_bytes([chunks[&kind][0], chunks[&kind][1]]);
        assert_eq!(chunks[&0x0001], [2], "IPv4");
        assert_eq!(chunks[&0x0002], [17], "UDP");
        assert_eq!(chunks[&0x000b], [1], "SIP");
        Hep {
            source: SocketAddr::new(ip(0x0003), port(0x0007)),
            destination: SocketAddr::new(ip(0x0004), port(0x0008)),
            agent: u32::from_be_bytes(chunks[&0x000c][..].try_into().expect("agent id")),
            correlation: String::from_utf8_lossy(&chunks[&0x0011]).to_string(),
            payload: String::from_utf8_lossy(&chunks[&0x000f]).to_string(),
        }
    }

    fn first_line(&self) -> &str {
        self.payload.lines().next().unwrap_or_default()
    }

    fn call_id(&self) -> &str {
        self.payload
            .lines()
            .find_map(|l| l.strip_prefix("Call-ID:"))
            .map(str::trim)
            .unwrap_or_default()
    }
}

#[test]
fn sip_capture_reaches_a_hep_collector_and_sngrep_with_both_legs_correlated() {
    let dir = scratch_dir("hep");
    // The test's collector decodes each packet and relays it, as it came, to sngrep.
    let collector = UdpSocket::bind("127.0.0.1:0").expect("collector");
    collector
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let sngrep_port = free_udp_port();
    let pcap = dir.join("sngrep.pcap");
    let log = std::fs::File::create(dir.join("sngrep.out")).expect("log");
    let _sngrep = Started(
        Command::new("sngrep")
            .args([
                "-N",
                "-q",
                "-L",
                &format!("udp:127.0.0.1:{sngrep_port}"),
                "-O",
            ])
            .arg(&pcap)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("sngrep (Debian package sngrep; tests/run.sh installs it)"),
    );
    wait_listening(sngrep_port, Transport::Udp);
    let decoded = Arc::new(Mutex::new(Vec::<Hep>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let relay = {
        let (decoded, stop) = (decoded.clone(), stop.clone());
        let collector = collector.try_clone().expect("collector");
        std::thread::spawn(move || {
            let mut buf = [0u8; 65_536];
            while !stop.load(Ordering::Relaxed) {
                let Ok(len) = collector.recv(&mut buf) else {
                    continue;
                };
                decoded.lock().expect("lock").push(Hep::decode(&buf[..len]));
                collector
                    .send_to(&buf[..len], ("127.0.0.1", sngrep_port))
                    .expect("relay to sngrep");
            }
        })
    };
    let capture = format!(
        "capture:\n  hep:\n    address: {}\n    agent_id: 2042\n",
        collector.local_addr().expect("addr")
    );
    let sbc = Sbc::start(&profile(&dir, "return {}\n", "", &capture));
    let (callee, mut caller) =
        core_to_teams(&sbc, &dir, ("callee", 1), ("caller", 1, &["-d", "300"]));
    let status = caller.wait(Instant::now() + Duration::from_secs(30));
    assert_eq!(status, Some(0), "{}\n{}", caller.report(), sbc.log());
    drop(callee);
    // The call's 13 messages: the caller's INVITE, 100, 180, 200, ACK, BYE and 200, and the
    // callee's INVITE, 180, 200, ACK, BYE and 200 (SIPp's callee sends no 100).
    let deadline = Instant::now() + Duration::from_secs(10);
    while decoded.lock().expect("lock").len() < 13 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let packets = decoded.lock().expect("lock").clone();
    let invite = packets
        .iter()
        .find(|p| p.first_line().starts_with("INVITE") && p.source.port() == sbc.port("softswitch"))
        .expect("the caller's INVITE");
    let a_leg = invite.call_id().to_string();
    let b_leg = packets
        .iter()
        .find(|p| {
            p.first_line().starts_with("INVITE") && p.destination.port() == sbc.port("teams_peer")
        })
        .expect("Bridgehead's INVITE to the callee")
        .call_id()
        .to_string();
    assert_ne!(a_leg, b_leg, "the legs have Call-IDs of their own");
    let call: Vec<&Hep> = packets
        .iter()
        .filter(|p| p.call_id() == a_leg || p.call_id() == b_leg)
        .collect();
    let lines: Vec<(bool, &str)> = call
        .iter()
        .map(|p| (p.call_id() == a_leg, p.first_line()))
        .collect();
    for (leg_a, kind) in [
        (true, "INVITE"),
        (true, "SIP/2.0 100"),
        (true, "SIP/2.0 180"),
        (true, "SIP/2.0 200"),
        (true, "ACK"),
        (true, "BYE"),
        (false, "INVITE"),
        (false, "SIP/2.0 180"),
        (false, "SIP/2.0 200"),
        (false, "ACK"),
        (false, "BYE"),
    ] {
        assert!(
            lines
                .iter()
                .any(|(a, k)| *a == leg_a && k.starts_with(kind)),
            "{kind} on the {} leg missing: {lines:?}",
            if leg_a { "A" } else { "B" }
        );
    }
    assert_eq!(call.len(), 13, "{lines:?}");
    // Every message of the call, either leg, carries the A-leg Call-ID as correlation id.
    for packet in &call {
        assert_eq!(packet.correlation, a_leg, "{}", packet.first_line());
        assert_eq!(packet.agent, 2042);
    }
    // Bridgehead's side of each packet is its listener: core toward the caller, teams toward
    // the callee.
    for packet in &call {
        let ours = if packet.call_id() == a_leg {
            sbc.port("core")
        } else {
            sbc.port("teams")
        };
        assert!(
            packet.source.port() == ours || packet.destination.port() == ours,
            "{packet:?}"
        );
    }
    // sngrep decoded the same packets: same addresses, same SIP, in the same order.
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen = bridgehead::replay::capture::read_capture(&pcap).unwrap_or_default();
        if seen.len() >= packets.len() || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    stop.store(true, Ordering::Relaxed);
    relay.join().expect("relay");
    assert_eq!(seen.len(), packets.len(), "sngrep wrote what it decoded");
    for (ours, theirs) in packets.iter().zip(&seen) {
        assert_eq!((theirs.src, theirs.dst), (ours.source, ours.destination));
        assert_eq!(String::from_utf8_lossy(&theirs.bytes), ours.payload);
    }
    // The metrics count what was captured and sent.
    let text = request(sbc.port("admin"), "GET", "/metrics", None).body;
    let sent = common::http::sample(&text, "bridgehead_hep_packets_total{outcome=\"sent\"}");
    assert!(sent.is_some_and(|n| n >= packets.len() as f64), "{text}");
    assert_eq!(
        common::http::sample(
            &text,
            "bridgehead_capture_messages_total{outcome=\"dropped\"}"
        ),
        Some(0.0)
    );
}

/// The headless Chromium of the machine (Debian `chromium-headless-shell` or `chromium`).
fn chromium() -> PathBuf {
    ["chromium-headless-shell", "chromium"]
        .iter()
        .flat_map(|name| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(move |dir| dir.join(name))
                .collect::<Vec<_>>()
        })
        .find(|path| path.is_file())
        .expect("no Chromium: install Debian package chromium-headless-shell (tests/run.sh does)")
}

/// Loads `url` in headless Chromium for `budget_ms` of page time and returns its output
/// (`--dump-dom`, or nothing with `--screenshot`).
fn chromium_run(dir: &Path, url: &str, what: &[String], budget_ms: u32) -> String {
    let profile = dir.join("chromium-profile");
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=1280,1700",
            &format!("--virtual-time-budget={budget_ms}"),
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(what)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The text of the element with id `id` in `dom`, when it holds only text.
fn element_text<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = at + dom[at..].find('>')? + 1;
    let end = start + dom[start..].find('<')?;
    Some(dom[start..end].trim())
}

#[test]
fn the_dashboard_in_headless_chromium_shows_the_calls_the_api_reports() {
    let dir = scratch_dir("dashboard");
    let sbc = Sbc::start(&profile(
        &dir,
        "return { on_invite = function(call, req) bh.metric.inc('dashboard_calls') end }\n",
        "",
        "",
    ));
    // Three calls that stay up through the page's loads.
    let (callee, caller) =
        core_to_teams(&sbc, &dir, ("callee", 0), ("caller", 3, &["-d", "25000"]));
    let admin = sbc.port("admin");
    let deadline = Instant::now() + Duration::from_secs(10);
    while request(admin, "GET", "/api/status", None).json()["answered"] != 3 {
        assert!(
            Instant::now() < deadline,
            "the calls never came up\n{}",
            sbc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("http://127.0.0.1:{admin}/");
    let dom = chromium_run(&dir, &url, &["--dump-dom".to_string()], 4000);
    let api = request(admin, "GET", "/api/status", None).json();
    assert_eq!(api["calls"], 3, "{api}");
    assert_eq!(
        element_text(&dom, "active-calls"),
        Some("3"),
        "the page shows the active calls the API reports\n{dom}"
    );
    assert_eq!(element_text(&dom, "answered-calls"), Some("3"), "{dom}");
    // The recent calls' ladder is drawn, the trunks and the rule's counter are listed.
    assert!(dom.contains("<svg"), "{dom}");
    assert!(
        dom.contains("INVITE sip:+4930987654"),
        "a ladder step\n{dom}"
    );
    assert!(dom.contains("dashboard_calls"), "the rule counter\n{dom}");
    // A screenshot for the record (kept with the test's files and in the target folder).
    let artefacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("artefacts");
    std::fs::create_dir_all(&artefacts).expect("artefacts");
    let shot = artefacts.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium_run(
        &dir,
        &url,
        &[format!("--screenshot={}", shot.display())],
        4000,
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{}",
        png.len()
    );
    eprintln!("dashboard screenshot: {}", shot.display());
    drop((caller, callee));
}

#[test]
fn the_admin_server_speaks_https_with_the_profiles_certificate() {
    let dir = scratch_dir("admin-https");
    let pki = Pki::new(&dir, "admin");
    let (cert, key) = pki.issue("admin", &["127.0.0.1"], false);
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").expect("token");
    let admin = format!(
        "  token_file: {}\n  tls:\n    certificate: {}\n    key: {}\n",
        token.display(),
        cert.display(),
        key.display()
    );
    let sbc = Sbc::start(&profile(&dir, "return {}\n", &admin, ""));
    let port = sbc.port("admin");
    let answer = https_request(port, &pki.ca, "/api/status", Some("s3cret")).expect("HTTPS");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["calls"], 0);
    let refused = https_request(port, &pki.ca, "/api/status", None).expect("HTTPS");
    assert_eq!(refused.status, 401);
    // The page needs no token (it holds no data), and comes over HTTPS too.
    let page = https_request(port, &pki.ca, "/", None).expect("HTTPS");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/dashboard/app.js"));
    // `bridgehead ctl` over HTTPS, trusting the test's CA.
    let ctl = |ca: &Path| {
        Command::new(env!("CARGO_BIN_EXE_bridgehead"))
            .args([
                "ctl",
                "--url",
                &format!("https://127.0.0.1:{port}"),
                "--ca-file",
            ])
            .arg(ca)
            .arg("--token-file")
            .arg(&token)
            .args(["--json", "status"])
            .env_remove("BRIDGEHEAD_ADMIN_URL")
            .output()
            .expect("bridgehead ctl")
    };
    let out = ctl(&pki.ca);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(status["calls"], 0);
    // A client that does not trust the CA, or talks plain HTTP, gets nothing.
    let stranger = Pki::new(&dir, "stranger");
    assert!(https_request(port, &stranger.ca, "/api/status", Some("s3cret")).is_err());
    assert_eq!(
        ctl(&stranger.ca).status.code(),
        Some(2),
        "no answer it trusts"
    );
    let plain = std::panic::catch_unwind(|| request(port, "GET", "/api/status", Some("s3cret")));
    assert!(plain.is_err() || plain.is_ok_and(|a| a.status != 200));
}

#[test]
fn cdrs_of_failed_over_cancelled_and_rule_rejected_calls() {
    let dir = scratch_dir("cdr-kinds");
    let cdr = dir.join("cdr.jsonl");
    // The Teams trunk's peer is busy; the rules fail over to a backup trunk. Calls from the
    // "refused" trunk's peer are rejected by the rules.
    let rules = r#"return {
  on_invite = function(call, req)
    if call.trunk.name == "refused" then return call:reject(486, "Refused by rule") end
  end,
  on_failure = function(call, resp)
    if resp.status == 486 then return call:route("backup") end
  end,
}
"#;
    let script = dir.join("rules.lua");
    std::fs::write(&script, rules).expect("rules");
    let extra = format!(
        "  - name: backup
    listener: teams
    peers: [\"127.0.0.1:{{backup_peer}}\"]
    script: {script}
  - name: refused
    listener: core
    peers: [\"127.0.0.2:{{refused_peer}}\"]
    script: {script}
cdr:
  path: {cdr}
",
        script = script.display(),
        cdr = cdr.display()
    );
    let template =
        core_teams_profile("", "", &extra).replace("{script}", &script.display().to_string());
    let sbc = Sbc::start(&template);
    let core = format!("127.0.0.1:{}", sbc.port("core"));
    // Trunks know their peers by IP: the refused trunk's caller is on 127.0.0.2.
    let caller = |name: &str, (ip, port): (&str, &str), scenario_name: &str, extra: &[&str]| {
        let mut args = far_end_args(sbc.port(port), 1, &[]);
        args[1] = ip.to_string();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["-sf".to_string(), scenario(scenario_name), core.clone()]);
        let mut sipp = Sipp::start(&dir, name, &args);
        let status = sipp.wait(Instant::now() + Duration::from_secs(30));
        assert_eq!(status, Some(0), "{}\n{}", sipp.report(), sbc.log());
    };
    // Failed over: 486 from the Teams peer, answered by the backup.
    {
        let busy = listening_far_end(&sbc, &dir, "busy", ("teams_peer", "callee_busy", 0));
        let backup = listening_far_end(&sbc, &dir, "backup", ("backup_peer", "callee", 0));
        caller(
            "failover",
            ("127.0.0.1", "softswitch"),
            "caller",
            &["-d", "200"],
        );
        drop((busy, backup));
    }
    // Cancelled: the callee rings, the caller gives up.
    {
        let ringing = listening_far_end(&sbc, &dir, "ringing", ("teams_peer", "callee_cancel", 0));
        caller("cancel", ("127.0.0.1", "softswitch"), "caller_cancel", &[]);
        drop(ringing);
    }
    // Rejected by the rules: no B-leg at all.
    caller(
        "refused",
        ("127.0.0.2", "refused_peer"),
        "caller_rejected",
        &[],
    );
    let lines = cdr_lines(&cdr, 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let failover = &lines[0];
    assert_eq!(failover["status"], 200, "{failover}");
    assert_eq!(failover["attempts"], 2, "{failover}");
    assert_eq!(failover["ingress"], "core");
    assert_eq!(failover["egress"], "backup");
    assert_eq!(failover["ended_by"], "caller");
    assert_eq!(failover["reason"], "bye");
    assert!(failover["answered_at"].is_string());
    let cancelled = &lines[1];
    assert_eq!(cancelled["status"], 487, "{cancelled}");
    assert_eq!(cancelled["reason"], "cancel");
    assert_eq!(cancelled["ended_by"], "caller");
    assert!(cancelled["ringing_at"].is_string() && cancelled["answered_at"].is_null());
    assert_eq!(cancelled["duration_s"], 0.0);
    let refused = &lines[2];
    assert_eq!(refused["status"], 486, "{refused}");
    assert_eq!(refused["ingress"], "refused");
    assert_eq!(refused["reason"], "rejected");
    assert_eq!(refused["ended_by"], "sbc");
    assert_eq!(refused["attempts"], 0);
    assert!(refused["ringing_at"].is_null());
}
