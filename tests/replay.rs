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
