//! Hot reload under load, end to end: SIPp places 100 calls/s for 30 s through the real
//! `bridgehead` binary while the rules file is rewritten 20 times (half editor-style atomic
//! renames, half in-place writes), with one broken version in the middle. Every call must
//! succeed and carry the header value of exactly one version; the broken version never serves;
//! calls after the last good reload carry its value.

mod common;

use common::sipp::{now_seconds_of_day, scenario, wait_listening, Sipp, Transport};
use common::{free_udp_port, scratch_dir, Sbc};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

const RATE: u32 = 100;
const SECONDS: u32 = 30;
const REWRITES: usize = 20;
/// The rewrite that installs a syntax error.
const BROKEN_AT: usize = 10;
/// The longest a saved version may take to serve new calls. Typically 160–210 ms: the 150 ms
/// debounce, the compile (up to 16 ms seen), the shard's queue and the next INVITE (one every
/// 10 ms). The bound is loose on purpose: on a machine shared with other work one save in a
/// run took 412 ms; what it catches is a reload that waits for seconds or never comes. The
/// figures are printed for the benchmark-minded.
const RELOAD_WITHIN: f64 = 1.0;

/// Rules that stamp every request toward Teams with `value`.
fn rules(value: &str) -> String {
    format!(
        "local r = {{}}\nfunction r.on_request(call, msg)\n  if msg.trunk == 'teams' then\n    msg:set_header('X-Rule-Version', '{value}')\n  end\nend\nreturn r\n"
    )
}

/// Writes the file the way editors do: to a temporary file renamed over it (atomic), or in
/// place (truncate and write).
fn save(path: &Path, text: &str, atomic: bool) {
    if atomic {
        let tmp = path.with_extension("lua.tmp~");
        std::fs::write(&tmp, text).expect("write temp");
        std::fs::rename(&tmp, path).expect("rename");
    } else {
        std::fs::write(path, text).expect("write in place");
    }
}

#[test]
fn hot_reload_under_load_keeps_every_call_on_one_version() {
    let rules_dir = scratch_dir("reload-rules");
    let script = rules_dir.join("rules.lua");
    std::fs::write(&script, rules("v0")).expect("rules");
    let profile = format!(
        "listeners:
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
# The debug build on a 2-core machine shared with two SIPps ran near its capacity at 200
# calls/s: overload control rightly refused some calls (their INVITEs waited past 200 ms) and
# late BYE answers made SIPp retransmit. This test is about versions: 100 calls/s, and a queue
# delay a loaded CI machine does not reach.
overload:
  queue_delay_ms: 1000
",
        script = script.display()
    );
    let sbc = Sbc::start(&profile);
    let dir = scratch_dir("reload-sipp");
    let calls = (RATE * SECONDS).to_string();
    let common = |port: u16| -> Vec<String> {
        [
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-m",
            &calls,
            "-d",
            "100",
            "-timeout",
            "90s",
            "-timeout_error",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let callee_port = sbc.port("teams_peer");
    let mut args = vec!["-sf".to_string(), scenario("callee")];
    args.extend(common(callee_port));
    let mut callee = Sipp::start(&dir, "callee", &args);
    wait_listening(callee_port, Transport::Udp);
    let mut args = vec![
        "-sf".to_string(),
        scenario("caller"),
        format!("127.0.0.1:{}", sbc.port("core")),
        "-r".to_string(),
        RATE.to_string(),
    ];
    args.extend(common(free_udp_port()));
    let mut caller = Sipp::start(&dir, "caller", &args);

    // 20 rewrites over ~24 s, one of them broken.
    let started = Instant::now();
    let mut last_good = String::from("v0");
    // When each good version was saved (seconds of the day, UTC, as SIPp's trace stamps).
    let mut saved_at: HashMap<String, f64> = HashMap::new();
    for rewrite in 1..=REWRITES {
        std::thread::sleep(Duration::from_millis(1200));
        let atomic = rewrite % 2 == 0;
        if rewrite == BROKEN_AT {
            let broken = rules("broken").replace("end\nreturn r", "return r");
            save(&script, &broken, atomic);
        } else {
            last_good = format!("v{rewrite}");
            save(&script, &rules(&last_good), atomic);
            saved_at.insert(last_good.clone(), now_seconds_of_day());
        }
    }
    let rewrites_done = started.elapsed();

    let deadline = Instant::now() + Duration::from_secs(90);
    let caller_status = caller.wait(deadline);
    let callee_status = callee.wait(deadline);
    let log = sbc.log();
    let context = || {
        format!(
            "{}\n{}\n--- sbc log ---\n{log}",
            caller.report(),
            callee.report()
        )
    };
    assert!(
        rewrites_done < Duration::from_secs(SECONDS as u64 - 4),
        "the rewrites took {rewrites_done:?}: no time left to see the last version serve"
    );
    assert_eq!(caller_status, Some(0), "failed calls\n{}", context());
    assert_eq!(callee_status, Some(0), "failed calls\n{}", context());

    // Per call (B-leg Call-ID), the versions seen on every request toward Teams.
    let mut versions: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut invite_order = Vec::new();
    // When the callee first saw each version.
    let mut first_seen: HashMap<String, f64> = HashMap::new();
    for message in callee.trace().iter().filter(|m| m.received) {
        if message.first_line().starts_with("SIP/2.0") {
            continue;
        }
        let call = message.header("Call-ID").expect("Call-ID").to_string();
        let value = message
            .header("X-Rule-Version")
            .unwrap_or_else(|| panic!("no X-Rule-Version in:\n{}", message.text))
            .to_string();
        if message.is_request("INVITE") {
            invite_order.push(call.clone());
            if let Some(at) = message.at {
                first_seen.entry(value.clone()).or_insert(at);
            }
        }
        versions.entry(call).or_default().insert(value);
    }
    assert_eq!(invite_order.len(), (RATE * SECONDS) as usize);
    for (call, seen) in &versions {
        assert_eq!(seen.len(), 1, "call {call} saw versions {seen:?}");
        assert!(!seen.contains("broken"), "the broken version served {call}");
    }
    // Every good save served new calls within RELOAD_WITHIN (100 INVITEs a second: one
    // every 10 ms, so the first INVITE with a version is at most that late).
    let mut latencies = Vec::new();
    for (version, saved) in &saved_at {
        let seen = first_seen
            .get(version)
            .unwrap_or_else(|| panic!("version {version} never served"));
        latencies.push((seen - saved, version.clone()));
    }
    latencies.sort_by(|a, b| a.0.total_cmp(&b.0));
    eprintln!(
        "save to first INVITE with the new version: {:?}",
        latencies
            .iter()
            .map(|(s, v)| format!("{v} {:.0} ms", s * 1000.0))
            .collect::<Vec<_>>()
    );
    for (latency, version) in &latencies {
        assert!(
            *latency <= RELOAD_WITHIN,
            "{version} served {:.0} ms after it was saved (at most {:.0} ms)",
            latency * 1000.0,
            RELOAD_WITHIN * 1000.0
        );
    }
    let served: BTreeSet<&String> = versions.values().flatten().collect();
    assert!(
        served.len() >= 10,
        "reloads took effect under load: {served:?}"
    );
    // The last calls (the final seconds, well after the last rewrite) carry the last version.
    for call in invite_order.iter().rev().take(RATE as usize) {
        assert_eq!(
            versions[call].iter().next(),
            Some(&last_good),
            "late call {call}"
        );
    }
    assert!(
        log.contains("reload refused"),
        "the broken version was refused with its place:\n{log}"
    );
    let refused_line = log
        .lines()
        .find(|l| l.contains("reload refused") && l.contains("rules.lua:"))
        .unwrap_or_else(|| panic!("no file:line for the broken version:\n{log}"));
    assert!(refused_line.contains("rules.lua:"), "{refused_line}");
}
