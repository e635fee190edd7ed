//! The replay harness on the project's own scenarios (`tests/replay/`), and on scenarios that
//! must fail or be recorded.

use bridgehead::replay::{collect, run_file};
use std::path::{Path, PathBuf};

fn scenarios_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/replay"))
}

#[test]
fn every_project_scenario_passes() {
    let files = collect(&[scenarios_dir()]).expect("scenarios");
    assert!(files.len() >= 8, "scenarios found: {files:?}");
    let mut report = String::new();
    for file in &files {
        let outcome = run_file(file, false);
        if !outcome.passed() {
            report.push_str(&outcome.failures.join("\n"));
            report.push('\n');
        }
    }
    assert!(report.is_empty(), "{report}");
}

/// A scratch copy of `tests/replay` where scenarios can be written.
fn scratch(label: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bh-replay-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("messages")).expect("dir");
    let profile = std::fs::read_to_string(scenarios_dir().join("profile.yaml"))
        .expect("profile")
        .replace(
            "../../scripts/default.lua",
            concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua"),
        );
    std::fs::write(dir.join("profile.yaml"), profile).expect("profile");
    std::fs::copy(
        scenarios_dir().join("messages/invite.sip"),
        dir.join("messages/invite.sip"),
    )
    .expect("invite");
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("scenario");
    path
}

#[test]
fn a_wrong_expectation_fails_with_the_step_line_and_a_diff() {
    let dir = scratch("wrong");
    let path = write(
        &dir,
        "wrong.yaml",
        "vars: { call: w1 }\nsteps:\n  - send: { from: core, file: messages/invite.sip }\n    expect:\n      - { to: core, response: 100 }\n      - { to: teams, request: INVITE, headers: { X-MS-SBC: nope } }\n",
    );
    let outcome = run_file(&path, false);
    assert!(!outcome.passed());
    let text = outcome.failures.join("\n");
    assert!(text.contains("wrong.yaml:3: step 1"), "{text}");
    assert!(text.contains("X-MS-SBC: Bridgehead/SBC/"), "{text}");
    assert!(text.contains("not nope"), "{text}");

    // Something sent that no expectation covers fails too.
    let path = write(
        &dir,
        "extra.yaml",
        "vars: { call: w2 }\nsteps:\n  - send: { from: core, file: messages/invite.sip }\n    expect:\n      - { to: core, response: 100 }\n",
    );
    let text = run_file(&path, false).failures.join("\n");
    assert!(text.contains("not expected: INVITE"), "{text}");

    // A list of lines is compared line by line: the INVITE has one From.
    let path = write(
        &dir,
        "lines.yaml",
        "vars: { call: w3 }\nsteps:\n  - send: { from: core, file: messages/invite.sip }\n    expect:\n      - { to: core, response: 100 }\n      - { to: teams, request: INVITE, headers: { Max-Forwards: ['69', '69'] } }\n",
    );
    let text = run_file(&path, false).failures.join("\n");
    assert!(
        text.contains(r#"Max-Forwards: lines ["69"], not ["69", "69"]"#),
        "{text}"
    );
}

#[test]
fn malformed_scenarios_name_file_and_line() {
    let dir = scratch("malformed");
    for (text, wanted) in [
        (
            "steps:\n  - send: { from: core }\n    bogus: 1\n",
            "bad.yaml:3",
        ),
        (
            "steps:\n  - wait: 1s\n    send: { from: core, sip: x }\n",
            "exactly one of",
        ),
        ("steps:\n  - wait: soon\n", "not a duration"),
        (
            "steps:\n  - send: { from: nowhere, sip: x }\n",
            "no trunk named 'nowhere'",
        ),
        (
            "steps:\n  - reply: { to: ghost, status: 200 }\n",
            "no saved message 'ghost'",
        ),
        (
            "steps:\n  - send: { from: core, sip: \"${nope}\" }\n",
            "unknown variable ${nope}",
        ),
        ("steps:\n  - rtp: { leg: a }\n", "bad.yaml:2: step 1: no call yet"),
        (
            "vars: { call: m1 }\nsteps:\n  - send: { from: core, file: messages/invite.sip }\n    expect: any\n  - rtp: { leg: a }\n",
            "bad.yaml:5: step 2: the call has no media stream yet",
        ),
        (
            "steps:\n  - wait: 1s\n    media_out: [{ to: c }]\n",
            "bad.yaml:2: step 1: media_out #1: to must be a or b, not 'c'",
        ),
    ] {
        let path = write(&dir, "bad.yaml", text);
        let outcome = run_file(&path, false);
        let failures = outcome.failures.join("\n");
        assert!(failures.contains(wanted), "{text:?}: {failures}");
    }
}

#[test]
fn record_writes_expectations_that_then_pass() {
    let dir = scratch("record");
    let path = write(
        &dir,
        "new.yaml",
        "vars: { call: rec-1 }\nsteps:\n  - send: { from: core, file: messages/invite.sip }\n  - reply: { to: invite_1, status: 486 }\n",
    );
    let outcome = run_file(&path, true);
    assert!(outcome.passed(), "{:?}", outcome.failures);
    let recorded = std::fs::read_to_string(&path).expect("recorded");
    assert!(recorded.contains("save: invite_1"), "{recorded}");
    assert!(
        recorded.contains("X-MS-SBC: Bridgehead/SBC/${version}"),
        "{recorded}"
    );
    assert!(recorded.contains("response: 486"), "{recorded}");
    let again = run_file(&path, false);
    assert!(again.passed(), "{:?}", again.failures);
}

#[test]
fn rule_unit_tests_run_and_failures_name_the_line() {
    let profile = bridgehead::config::Profile::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/profiles/default.yaml"
    )))
    .expect("profile");
    let scripts = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts"));
    let files = bridgehead::script::unit::find_tests(&scripts);
    assert!(!files.is_empty());
    for file in &files {
        for outcome in bridgehead::script::unit::run_test_file(file, &profile) {
            assert_eq!(
                outcome.failure,
                None,
                "{}: {}",
                file.display(),
                outcome.name
            );
        }
    }

    let dir = scratch("unit");
    std::fs::copy(scripts.join("default.lua"), dir.join("default.lua")).expect("rules");
    std::fs::create_dir_all(dir.join("lib")).expect("lib");
    std::fs::copy(scripts.join("lib/teams.lua"), dir.join("lib/teams.lua")).expect("library");
    let test = write(
        &dir,
        "broken_test.lua",
        "local rules = require('default')\nreturn {\n  test_a_wrong_sum = function() t.eq(1 + 1, 3, 'sum') end,\n  test_runaway = function() while true do end end,\n  test_fine = function() t.ok(rules.on_invite) end,\n}\n",
    );
    let outcomes = bridgehead::script::unit::run_test_file(&test, &profile);
    let failures: Vec<(&str, Option<&str>)> = outcomes
        .iter()
        .map(|o| (o.name.as_str(), o.failure.as_deref()))
        .collect();
    assert_eq!(failures.len(), 3, "{failures:?}");
    assert_eq!(failures[0].0, "test_a_wrong_sum");
    assert!(
        failures[0]
            .1
            .is_some_and(|f| f.contains("broken_test.lua:3: sum: expected 3, got 2")),
        "{failures:?}"
    );
    assert_eq!(failures[1], ("test_fine", None));
    assert!(
        failures[2]
            .1
            .is_some_and(|f| f.contains("broken_test.lua:4: instruction budget exceeded")),
        "{failures:?}"
    );
}

#[test]
fn one_side_of_a_capture_replays_as_a_call_flow() {
    use bridgehead::replay::pcap::{replay_capture, TrunkSide};
    let pcap = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pcap"));
    let profile = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/replay/profile.yaml"
    ));
    // SIP over TCP, the caller's side: its INVITE goes to Teams; nobody answers there, so the
    // caller gets 408 at 32 s, once (no retransmission over TCP).
    let core = TrunkSide::parse("core=10.33.6.100").expect("side");
    let flow =
        replay_capture(&pcap.join("sip-over-tcp.pcap"), profile, &[core], false).expect("replays");
    let lines: Vec<&str> = flow.lines().collect();
    assert!(
        lines[0].ends_with("core     -> SBC       INVITE sip:201@10.33.6.101;user=phone"),
        "{flow}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("SBC      -> teams     INVITE sip:201@127.0.0.1:5080")),
        "{flow}"
    );
    let timeouts: Vec<&&str> = lines.iter().filter(|l| l.contains("408")).collect();
    assert_eq!(timeouts.len(), 1, "{flow}");
    assert!(timeouts[0].trim_start().starts_with("32.000"), "{flow}");

    // pcapng, both sides named: each side's requests are fed in capture time.
    let sides = [
        TrunkSide::parse("core=192.168.8.13").expect("side"),
        TrunkSide::parse("teams=192.168.8.183:5060").expect("side"),
    ];
    let flow = replay_capture(
        &pcap.join("sip-488-codec-reject.pcapng"),
        profile,
        &sides,
        true,
    )
    .expect("replays");
    assert!(flow.contains("-> SBC"), "{flow}");
    assert!(
        flow.contains("           | "),
        "verbose prints messages: {flow}"
    );

    // A side that sent nothing: the error lists who did.
    let nobody = TrunkSide::parse("core=192.0.2.1").expect("side");
    let err = replay_capture(&pcap.join("sip-proxy.pcap"), profile, &[nobody], false)
        .expect_err("no SIP from that side")
        .to_string();
    assert!(err.contains("no SIP sent from core=192.0.2.1"), "{err}");
    assert!(err.contains("10.33.6.101:5060 (3)"), "{err}");

    let refused = TrunkSide::parse("core").expect_err("no address");
    assert_eq!(refused.to_string(), "'core' is not NAME=IP[:port]");
    assert_eq!(
        TrunkSide::parse("teams=[2001:db8::1]:5061")
            .ok()
            .map(|s| s.port),
        Some(Some(5061))
    );
}

#[test]
fn a_capture_with_ip_fragments_replays_the_reassembled_invite() {
    use bridgehead::replay::pcap::{replay_capture, TrunkSide};
    let capture = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/pcap/sip-fragmented-udp.pcap"
    ));
    let profile = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/replay/profile.yaml"
    ));
    // The caller's side, over IPv4 and IPv6: each INVITE (3.2 KB, three IP fragments on the
    // wire) is fed whole and answered.
    let sides = [
        TrunkSide::parse("core=10.99.0.1").expect("side"),
        TrunkSide::parse("core=[fd00:99::1]").expect("side"),
    ];
    let flow = replay_capture(capture, profile, &sides, true).expect("replays");
    // Each message with the lines `-v` prints of it.
    let mut messages: Vec<(&str, String)> = Vec::new();
    for line in flow.lines() {
        match (line.trim_start().strip_prefix("| "), messages.last_mut()) {
            (Some(text), Some((_, body))) => {
                body.push_str(text);
                body.push('\n');
            }
            _ => messages.push((line, String::new())),
        }
    }
    let heads: Vec<&str> = messages.iter().map(|(head, _)| head.trim_start()).collect();
    assert_eq!(
        heads[..4],
        [
            "0.000  core     -> SBC       INVITE sip:+4930987654@10.99.0.2:5060",
            "0.000  SBC      -> core      100 Trying",
            "0.000  SBC      -> teams     INVITE sip:+4930987654@127.0.0.1:5080",
            "0.023  core     -> SBC       ACK sip:+4930987654@10.99.0.2:5060",
        ],
        "{flow}"
    );
    assert_eq!(
        heads[4..7],
        [
            "0.402  core     -> SBC       INVITE sip:+4930987654@[fd00:99::2]:5060",
            "0.402  SBC      -> core      100 Trying",
            "0.402  SBC      -> teams     INVITE sip:+4930987654@127.0.0.1:5080",
        ],
        "{flow}"
    );
    // The INVITEs fed and forwarded are whole: the SDP's last line came in the last fragment.
    for at in [0, 2, 4, 6] {
        let (head, body) = &messages[at];
        assert!(
            body.contains("Content-Type: application/sdp\n"),
            "{head}:\n{body}"
        );
        assert!(body.len() > 3_000, "{head}:\n{body}");
        assert!(body.ends_with("a=x-end-of-large-sdp\n"), "{head}:\n{body}");
    }
}

#[test]
fn replay_profile_replaces_the_scenarios_own_profile() {
    let dir = scratch("candidate");
    // A candidate rule set that stamps INVITEs toward Teams, and a candidate profile using it.
    std::fs::write(
        dir.join("candidate.lua"),
        "local r = {}\nfunction r.on_invite(call, req)\n  req:set_header('X-Candidate', 'yes')\nend\nreturn r\n",
    )
    .expect("script");
    let candidate = std::fs::read_to_string(dir.join("profile.yaml"))
        .expect("profile")
        .replace(
            concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/default.lua"),
            "candidate.lua",
        );
    std::fs::write(dir.join("candidate.yaml"), candidate).expect("candidate");
    let path = write(
        &dir,
        "stamped.yaml",
        "vars: { call: cand-1 }\nsteps:\n  - send: { from: core, file: messages/invite.sip }\n    expect:\n      - { to: core, response: 100 }\n      - { to: teams, request: INVITE, headers: { X-Candidate: 'yes' } }\n",
    );
    let replay = |extra: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_bridgehead"))
            .arg("replay")
            .arg(&path)
            .args(extra)
            .output()
            .expect("run bridgehead replay");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string(),
        )
    };
    let (passed, report) = replay(&[]);
    assert!(
        !passed,
        "the scenario's own profile has no X-Candidate:\n{report}"
    );
    assert!(report.contains("X-Candidate"), "{report}");
    let candidate = dir.join("candidate.yaml");
    let (passed, report) = replay(&["--profile", &candidate.display().to_string()]);
    assert!(passed, "on the candidate profile:\n{report}");
    assert!(report.contains("1 passed, 0 failed"), "{report}");
}

#[test]
fn record_writes_media_expectations_that_then_pass() {
    // A copy of the media scenarios, the ringback cadence's media_out stripped, recorded anew.
    let dir = std::env::temp_dir().join(format!("bh-replay-record-media-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["media", "messages"] {
        std::fs::create_dir_all(dir.join(sub)).expect("dir");
        for entry in std::fs::read_dir(scenarios_dir().join(sub)).expect("read") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("text").replace(
                "../../../scripts/",
                concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/"),
            );
            std::fs::write(dir.join(sub).join(path.file_name().expect("name")), text)
                .expect("copy");
        }
    }
    let path = dir.join("media/ringback_cadence.yaml");
    let stripped: String = std::fs::read_to_string(&path)
        .expect("scenario")
        .lines()
        .filter(|l| {
            !l.trim_start().starts_with("media_out")
                && !l.trim_start().starts_with("- { to: a, pt: 8")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!stripped.contains("media_out"), "{stripped}");
    std::fs::write(&path, stripped).expect("write");
    let outcome = run_file(&path, true);
    assert!(outcome.passed(), "{:?}", outcome.failures);
    let recorded = std::fs::read_to_string(&path).expect("recorded");
    assert!(recorded.contains("media_out:"), "{recorded}");
    assert!(
        recorded.contains("packets: 50"),
        "a second of ringback: {recorded}"
    );
    assert!(recorded.contains("interval: 20"), "{recorded}");
    let again = run_file(&path, false);
    assert!(again.passed(), "{:?}", again.failures);
}
