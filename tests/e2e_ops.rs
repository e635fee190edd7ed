//! What an operator meets when running the real `bridgehead` binary: its logs (plain text
//! in a file, JSON for log shippers), its connections (idle and half-sent ones closed, a cap
//! per source, unknown sources refused) and its media ports (never advertised unbound).

mod common;

use common::Sbc;

const PROFILE: &str = "listeners:
  - name: core
    address: 127.0.0.1:{core}
trunks:
  - name: core
    listener: core
    peers: [\"127.0.0.1:{softswitch}\"]
    script: {script}
";

#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let sbc = Sbc::start(PROFILE);
    let log = sbc.log();
    assert!(log.contains("ready"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a log file:\n{log:?}"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let sbc = Sbc::start_with_env(PROFILE, &[("RUST_LOG_FORMAT", "json")]);
    let log = sbc.log();
    let mut messages = Vec::new();
    for line in log.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
        assert!(value["level"].is_string(), "{line}");
        assert!(value["timestamp"].is_string(), "{line}");
        messages.push(
            value["fields"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
    }
    assert!(messages.iter().any(|m| m == "ready"), "{log}");
}
