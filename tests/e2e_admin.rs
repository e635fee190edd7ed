//! The admin server of the real `bridgehead` binary, driven over HTTP while SIPp places calls:
//! Prometheus metrics that match what SIPp counted, the admin API listing, showing and hanging
//! up live calls (both far ends get a BYE), reload and drain through the API, and the bearer
//! token.

mod common;

use common::http::{cdr_lines, json_sink, request, sample};
use common::sipp::{core_to_teams, far_end_args, listening_far_end, scenario, Sipp};
use common::{core_teams_profile, scratch_dir, Sbc};
use std::time::{Duration, Instant};

/// Rules that count each routed call per trunk (`bh.metric`) and let the default route run.
const COUNTING_RULES: &str =
    "return { on_invite = function(call, req) bh.metric.inc('routed', { trunk = call.trunk.name }) end }\n";

/// A profile with the admin server on its own free port and `rules` as every trunk's script.
fn admin_profile(dir: &std::path::Path, rules: &str, admin: &str) -> String {
    let script = dir.join("rules.lua");
    std::fs::write(&script, rules).expect("rules");
    // After the listeners: the harness checks readiness on the first port it finds.
    let profile = core_teams_profile("drain_timeout: 2\n", "", "")
        .replace("{script}", &script.display().to_string());
    format!("{profile}admin:\n  address: 127.0.0.1:{{admin}}\n{admin}")
}

/// Runs `bridgehead ctl ARGS` against the admin server on `port`: its exit code and output.
fn ctl(port: u16, token_file: Option<&std::path::Path>, args: &[&str]) -> (i32, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bridgehead"));
    command
        .args(["ctl", "--url", &format!("http://127.0.0.1:{port}")])
        .env_remove("BRIDGEHEAD_ADMIN_TOKEN_FILE");
    if let Some(file) = token_file {
        command.arg("--token-file").arg(file);
    }
    let out = command.args(args).output().expect("bridgehead ctl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn metrics(sbc: &Sbc) -> String {
    let answer = request(sbc.port("admin"), "GET", "/metrics", None);
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

/// Waits until `ready` holds for the text of `/metrics`.
fn metrics_until(sbc: &Sbc, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = metrics(sbc);
        if ready(&text) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_scraped_during_a_sipp_run_match_what_sipp_counted() {
    let dir = scratch_dir("admin-metrics");
    let cdr = dir.join("cdr.jsonl");
    let profile = admin_profile(&dir, COUNTING_RULES, "")
        + &format!("cdr:\n  path: {}\nshort_call_seconds: 3\n", cdr.display());
    let sbc = Sbc::start(&profile);
    let core = format!("127.0.0.1:{}", sbc.port("core"));
    let (callee, mut caller) = core_to_teams(
        &sbc,
        &dir,
        ("callee", 0),
        ("caller", 10, &["-r", "5", "-d", "1500"]),
    );
    // While calls are up, the gauge shows them.
    let during = metrics_until(&sbc, |text| {
        sample(text, "bridgehead_calls_active{state=\"answered\"}").is_some_and(|n| n >= 1.0)
    });
    assert!(
        sample(&during, "bridgehead_calls_active{state=\"answered\"}").is_some_and(|n| n >= 1.0),
        "{during}"
    );
    let status = caller.wait(Instant::now() + Duration::from_secs(30));
    assert_eq!(status, Some(0), "{}\n{}", caller.report(), sbc.log());
    drop(callee);
    // A busy callee: every call fails with 486.
    let busy = listening_far_end(&sbc, &dir, "busy", ("teams_peer", "callee_busy", 0));
    let mut args = far_end_args(
        sbc.port("softswitch"),
        3,
        &["-sf", &scenario("caller_rejected")],
    );
    args.push(core);
    let mut rejected = Sipp::start(&dir, "rejected", &args);
    let status = rejected.wait(Instant::now() + Duration::from_secs(30));
    assert_eq!(status, Some(0), "{}\n{}", rejected.report(), sbc.log());
    drop(busy);
    let text = metrics_until(&sbc, |text| {
        sample(text, "bridgehead_calls_active{state=\"answered\"}") == Some(0.0)
            && sample(text, "bridgehead_calls_failed_total") == Some(3.0)
    });
    // SIPp placed 13 calls: 10 answered and hung up, 3 refused with 486.
    for (series, expected) in [
        ("bridgehead_calls_started_total", 13.0),
        ("bridgehead_calls_answered_total", 10.0),
        ("bridgehead_calls_failed_total", 3.0),
        ("bridgehead_calls_active{state=\"answered\"}", 0.0),
        ("bridgehead_calls_active{state=\"setup\"}", 0.0),
        (
            "bridgehead_rule_counter_total{counter=\"routed\",trunk=\"core\"}",
            13.0,
        ),
        ("bridgehead_rules_version", 1.0),
        ("bridgehead_reloads_total", 0.0),
        ("bridgehead_overload_refused_total", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(expected), "{series}\n{text}");
    }
    // Each call's INVITE, ACK and BYE came from the core, with the callee's answers; by
    // method and status class (retransmissions, if any, count too).
    let messages_in = sample(&text, "bridgehead_messages_total{direction=\"in\"}").expect("in");
    assert!(messages_in >= 13.0 * 3.0, "{text}");
    let by_kind = |direction: &str, kind: &str| {
        let series = format!(
            "bridgehead_sip_messages_total{{direction=\"{direction}\",transport=\"udp\",kind=\"{kind}\"}}"
        );
        sample(&text, &series).unwrap_or(0.0)
    };
    assert!(by_kind("in", "INVITE") >= 13.0, "{text}");
    assert!(by_kind("out", "INVITE") >= 13.0, "{text}");
    assert!(by_kind("in", "BYE") >= 10.0, "{text}");
    assert!(by_kind("in", "4xx") >= 3.0, "the callee's 486s\n{text}");
    assert!(
        by_kind("out", "4xx") >= 3.0,
        "relayed to the caller\n{text}"
    );
    assert!(
        by_kind("out", "2xx") >= 20.0,
        "200 to INVITE and BYE\n{text}"
    );
    let script = dir.join("rules.lua").display().to_string();
    let calls =
        format!("bridgehead_rule_hook_seconds_count{{script=\"{script}\",hook=\"on_invite\"}}");
    assert_eq!(sample(&text, &calls), Some(13.0), "{text}");
    let slowest = format!(
        "bridgehead_rule_hook_seconds_bucket{{le=\"+Inf\",script=\"{script}\",hook=\"on_invite\"}}"
    );
    assert_eq!(sample(&text, &slowest), Some(13.0), "{text}");
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    // Per trunk: by final status, setup times, short calls (all 10 talked 1.5 s < 3 s).
    for (series, expected) in [
        (
            "bridgehead_trunk_calls_total{trunk=\"core\",to=\"teams\",status=\"200\"}",
            10.0,
        ),
        (
            "bridgehead_trunk_calls_total{trunk=\"core\",to=\"teams\",status=\"486\"}",
            3.0,
        ),
        (
            "bridgehead_trunk_short_calls_total{trunk=\"core\",to=\"teams\"}",
            10.0,
        ),
        (
            "bridgehead_trunk_setup_seconds_count{trunk=\"core\",to=\"teams\"}",
            10.0,
        ),
    ] {
        assert_eq!(sample(&text, series), Some(expected), "{series}\n{text}");
    }
    // One CDR per call, written by the CDR thread.
    let lines = cdr_lines(&cdr, 13);
    assert_eq!(lines.len(), 13);
    let answered: Vec<_> = lines.iter().filter(|c| c["status"] == 200).collect();
    assert_eq!(answered.len(), 10);
    for call in &answered {
        assert_eq!(call["ingress"], "core");
        assert_eq!(call["egress"], "teams");
        assert_eq!(call["ended_by"], "caller");
        assert_eq!(call["reason"], "bye");
        assert_eq!(call["version"], 1);
        assert!(
            call["ringing_at"].is_string() && call["answered_at"].is_string(),
            "{call}"
        );
        let talked = call["duration_s"].as_f64().expect("duration");
        assert!((1.4..3.0).contains(&talked), "{call}");
        assert!(
            call["from"]
                .as_str()
                .is_some_and(|f| f.contains("+4930123456")),
            "{call}"
        );
    }
    let busy: Vec<_> = lines.iter().filter(|c| c["status"] == 486).collect();
    assert_eq!(busy.len(), 3);
    assert!(busy.iter().all(|c| c["answered_at"].is_null()
        && c["duration_s"] == 0.0
        && c["ended_by"] == "callee"));
}

#[test]
fn the_admin_api_lists_shows_and_hangs_up_live_calls() {
    let dir = scratch_dir("admin-calls");
    std::fs::write(dir.join("token"), "s3cret\n").expect("token");
    let token_file = format!("  token_file: {}\n", dir.join("token").display());
    let cdr = dir.join("cdr.jsonl");
    let profile = admin_profile(&dir, "return {}\n", &token_file)
        + &format!("cdr:\n  path: {}\n", cdr.display());
    let sbc = Sbc::start(&profile);
    let admin = sbc.port("admin");
    // The token is required.
    let refused = request(admin, "GET", "/api/calls", None);
    assert_eq!(refused.status, 401, "{}", refused.body);
    let refused = request(admin, "GET", "/metrics", Some("wrong"));
    assert_eq!(refused.status, 401);
    let token = Some("s3cret");
    let (mut callee, mut caller) = core_to_teams(
        &sbc,
        &dir,
        ("callee", 2),
        ("caller_hungup", 2, &["-r", "10"]),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let calls = loop {
        let calls = request(admin, "GET", "/api/calls", token).json();
        let answered = calls
            .as_array()
            .expect("a list")
            .iter()
            .filter(|c| c["state"] == "answered")
            .count();
        if answered == 2 || Instant::now() > deadline {
            break calls;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let calls = calls.as_array().expect("a list").clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for call in &calls {
        assert_eq!(call["state"], "answered");
        assert_eq!(call["a"]["trunk"], "core");
        assert_eq!(call["b"]["trunk"], "teams");
        assert_eq!(call["version"], 1);
        assert!(call["a"]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("udp:127.0.0.1:")));
    }
    // One call, by its A-leg or its B-leg Call-ID.
    let a_id = calls[0]["id"].as_str().expect("id").to_string();
    let b_id = calls[0]["b"]["call_id"].as_str().expect("b id").to_string();
    let shown = request(admin, "GET", &format!("/api/calls/{b_id}"), token);
    assert_eq!(shown.status, 200, "{}", shown.body);
    assert_eq!(shown.json()["id"], a_id.as_str());
    assert_eq!(request(admin, "GET", "/api/calls/nope", token).status, 404);
    // `ctl list` shows them; without the token it is refused.
    let token_file = dir.join("token");
    let (code, table) = ctl(admin, Some(&token_file), &["list"]);
    assert_eq!(code, 0, "{table}");
    assert!(
        table.lines().next().is_some_and(|l| l.starts_with("CALL")),
        "{table}"
    );
    assert_eq!(
        table
            .lines()
            .filter(|l| l.contains("core -> teams"))
            .count(),
        2,
        "{table}"
    );
    let (code, said) = ctl(admin, None, &["list"]);
    assert_eq!(code, 1, "{said}");
    // Hang both up, one with `ctl hangup` and one through the API: each far end gets a BYE
    // with the operator's Reason.
    let (code, said) = ctl(admin, Some(&token_file), &["hangup", &a_id]);
    assert_eq!((code, said.trim()), (0, format!("hung up {a_id}").as_str()));
    let other = calls[1]["id"].as_str().expect("id");
    let hung = request(admin, "DELETE", &format!("/api/calls/{other}"), token);
    assert_eq!(hung.status, 200, "{}", hung.body);
    assert_eq!(
        request(admin, "DELETE", &format!("/api/calls/{a_id}"), token).status,
        404,
        "gone"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    assert_eq!(caller.wait(deadline), Some(0), "{}", caller.report());
    assert_eq!(callee.wait(deadline), Some(0), "{}", callee.report());
    for trace in [caller.trace(), callee.trace()] {
        let byes: Vec<_> = trace
            .iter()
            .filter(|m| m.received && m.is_request("BYE"))
            .collect();
        assert_eq!(byes.len(), 2);
        assert!(byes
            .iter()
            .all(|m| m.header("Reason").is_some_and(|r| r.contains("cause=16"))));
    }
    let calls = request(admin, "GET", "/api/calls", token).json();
    assert_eq!(calls.as_array().map(Vec::len), Some(0));
    // Their CDRs: ended by Bridgehead for the operator, with the Reason it sent.
    let records = cdr_lines(&cdr, 2);
    assert_eq!(records.len(), 2, "{records:?}");
    for record in &records {
        assert_eq!(record["ended_by"], "sbc", "{record}");
        assert_eq!(record["reason"], "operator");
        assert!(
            record["reason_header"]
                .as_str()
                .is_some_and(|r| r.contains("cause=16")),
            "{record}"
        );
    }
}

#[test]
fn reload_and_drain_through_the_admin_api() {
    let dir = scratch_dir("admin-reload");
    let sbc_profile = admin_profile(&dir, "return {}\n", "");
    let mut sbc = Sbc::start(&sbc_profile);
    let admin = sbc.port("admin");
    let (code, said) = ctl(admin, None, &["reload"]);
    assert_eq!(
        (code, said.as_str()),
        (0, "reloaded: new calls take version 2\n")
    );
    // A broken script is refused with its file and line; version 2 stays.
    std::fs::write(dir.join("rules.lua"), "return {\n  on_invite = function(\n").expect("rules");
    let refused = request(admin, "POST", "/api/reload", None);
    assert_eq!(refused.status, 422, "{}", refused.body);
    let why = refused.json()["refused"].to_string();
    assert!(why.contains("rules.lua:"), "{why}");
    let versions = request(admin, "GET", "/api/versions", None).json();
    assert_eq!(versions["current"], 2, "{versions}");
    assert!(versions["reload_failures"].as_u64().is_some_and(|n| n >= 1));
    let (code, said) = ctl(admin, None, &["--json", "reload"]);
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("\"refused\""), "{said}");
    // Drain: accepted, and the process, without calls, ends with 0.
    let (code, said) = ctl(admin, None, &["drain"]);
    assert_eq!(code, 0, "{said}");
    assert!(said.starts_with("draining"), "{said}");
    assert_eq!(
        sbc.wait_exit(Instant::now() + Duration::from_secs(10)),
        Some(0),
        "{}",
        sbc.log()
    );
    assert!(sbc.log().contains("admin: draining"), "{}", sbc.log());
}

/// CDRs POSTed to an HTTP endpoint that is down for the first 10 s: they wait in the spool and
/// every one arrives exactly once when it comes up.
#[test]
fn cdrs_reach_an_http_endpoint_that_was_down_exactly_once() {
    let dir = scratch_dir("admin-cdr-http");
    let cdr = dir.join("cdr.jsonl");
    let profile = admin_profile(&dir, "return {}\n", "")
        + &format!(
            "cdr:\n  path: {}\n  http:\n    url: http://127.0.0.1:{{sink}}/cdr\n    batch: 4\n    retry_ms: 500\n    timeout_ms: 1000\n",
            cdr.display()
        );
    let sbc = Sbc::start(&profile);
    let started = Instant::now();
    let callee = listening_far_end(&sbc, &dir, "callee", ("teams_peer", "callee", 0));
    let mut args = far_end_args(
        sbc.port("softswitch"),
        10,
        &["-r", "5", "-d", "200", "-sf", &scenario("caller")],
    );
    args.push(format!("127.0.0.1:{}", sbc.port("core")));
    let mut caller = Sipp::start(&dir, "caller", &args);
    assert_eq!(
        caller.wait(Instant::now() + Duration::from_secs(30)),
        Some(0),
        "{}",
        caller.report()
    );
    drop(callee);
    let spool = dir.join("cdr.jsonl.spool");
    let spooled = || {
        std::fs::read_to_string(&spool)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while spooled() < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        spooled(),
        10,
        "the endpoint is down: all ten wait in the spool"
    );
    // Up after 10 s.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(started.elapsed()));
    let got = json_sink(sbc.port("sink"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.lock().expect("sink").len() < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let got = got.lock().expect("sink").clone();
    let mut ids: Vec<&str> = got.iter().filter_map(|c| c["call_id"].as_str()).collect();
    ids.sort_unstable();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids.len(), 10, "{ids:?}\n{}", sbc.log());
    assert_eq!(unique.len(), 10, "each CDR once: {ids:?}");
    let mut written: Vec<String> = std::fs::read_to_string(&cdr)
        .expect("cdr file")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("JSON")["call_id"]
                .as_str()
                .expect("call_id")
                .to_string()
        })
        .collect();
    written.sort_unstable();
    assert_eq!(written, ids, "the file and the endpoint have the same CDRs");
    assert_eq!(spooled(), 0, "the spool is empty once all were taken");
    assert!(sbc.log().contains("cdr endpoint failed"), "{}", sbc.log());
}
