use super::*;
use crate::sip::{HeaderName, Message};
use bytes::Bytes;
use std::sync::atomic::AtomicUsize;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Writes `script` beside a one-trunk profile in a fresh directory and loads it.
fn load(script: &str) -> Result<Rules, Vec<ScriptError>> {
    let dir = std::env::temp_dir().join(format!(
        "bh-script-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("rules.lua"), script).expect("write script");
    let profile = String::from(
        "listeners:\n  - name: l\n    address: 127.0.0.1:5060\ntrunks:\n  - name: core\n    listener: l\n    peers: [\"127.0.0.1:5090\"]\n    script: rules.lua\n  - name: teams\n    listener: l\n    peers: [\"127.0.0.2:5080\"]\n"
    );
    let profile = Profile::parse(&dir.join("p.yaml"), &profile).expect("profile");
    Rules::load(&profile)
}

fn message() -> HookMessage {
    let msg = Message::parse(&Bytes::from_static(
        b"INVITE sip:+15550100@example.com;user=phone SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: \"Alice\" <sip:+15550199@example.com>;tag=a\r\nTo: <tel:+15550100>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
    ))
    .expect("valid");
    HookMessage::new(msg, "b", "teams".to_string())
}

fn call(rules: &Rules) -> HookCall {
    HookCall::new("c".to_string(), "core".to_string(), rules.trunk_names())
}

/// Runs `on_invite` with the body given and returns the message and call afterwards.
fn run_invite(body: &str) -> (Result<(), ScriptError>, HookMessage, HookCall) {
    let script =
        format!("local r = {{}}\nfunction r.on_invite(call, req)\n{body}\nend\nreturn r\n");
    let mut rules = load(&script).expect("loads");
    let mut msg = message();
    let mut call = call(&rules);
    let result = rules.on_invite(rules.script_of(0), &mut call, &mut msg);
    (result, msg, call)
}

fn header(msg: &HookMessage, name: &str) -> Vec<String> {
    msg.msg
        .headers_named(&HeaderName::parse(name))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[test]
fn reads_headers_and_fields() {
    let (result, msg, _) = run_invite(
        r#"
        assert(req.method == "INVITE" and req.status == nil and req.leg == "b" and req.trunk == "teams")
        assert(req:header("x-a") == "1")
        local all = req:headers("X-A")
        assert(#all == 2 and all[2] == "2")
        assert(req:has_header("From") and not req:has_header("X-None"))
        assert(req:header("X-None") == nil)
        assert(req:from_user() == "+15550199")
        assert(req:to_user() == "+15550100")
        assert(req:uri() == "sip:+15550100@example.com;user=phone")
        assert(req:uri_user() == "+15550100")
        assert(call.id == "c" and call.trunk == "core")
        req:set_header("X-Result", "ok")
    "#,
    );
    assert_eq!(result, Ok(()));
    assert_eq!(header(&msg, "X-Result"), ["ok"]);
}

#[test]
fn edits_headers_uri_and_users() {
    let (result, msg, _) = run_invite(
        r#"
        req:set_header("X-A", "9")
        req:add_header("X-B", "1")
        req:add_header("X-B", "2")
        req:remove_header("X-Gone")
        req:set_uri("sip:+4930123@core.example.com")
        req:set_uri_user("+4930999")
        req:set_from_user("anonymous")
        req:set_to_user("+4930777")
    "#,
    );
    assert_eq!(result, Ok(()));
    assert_eq!(header(&msg, "X-A"), ["9"]);
    assert_eq!(header(&msg, "X-B"), ["1", "2"]);
    assert_eq!(
        header(&msg, "From"),
        ["\"Alice\" <sip:anonymous@example.com>;tag=a"]
    );
    assert_eq!(header(&msg, "To"), ["<tel:+4930777>"]);
    match &msg.msg.start {
        crate::sip::StartLine::Request { uri, .. } => {
            assert_eq!(uri, "sip:+4930999@core.example.com")
        }
        _ => unreachable!(),
    }
    for name in ["X-A", "X-B", "X-Gone"] {
        assert!(
            msg.touched.contains(&HeaderName::parse(name)),
            "{name} touched"
        );
    }
}

#[test]
fn route_and_reject_decide() {
    let (_, _, call) = run_invite(r#"call:route("teams")"#);
    assert_eq!(call.decision, Some(RouteDecision::Route(1)));
    let (_, _, call) = run_invite(r#"call:reject(403, "Not Allowed")"#);
    assert_eq!(
        call.decision,
        Some(RouteDecision::Reject {
            status: 403,
            reason: "Not Allowed".into()
        })
    );
    let (_, _, call) = run_invite(r#"call:reject(486)"#);
    assert_eq!(
        call.decision,
        Some(RouteDecision::Reject {
            status: 486,
            reason: "Busy Here".into()
        })
    );
}

#[test]
fn bad_calls_raise_errors_with_file_and_line() {
    for (body, needle) in [
        (r#"call:route("nowhere")"#, "no trunk named 'nowhere'"),
        (r#"call:reject(200)"#, "not a final error status"),
        (r#"req:set_header("Via", "x")"#, "owned by the B2BUA"),
        (r#"req:set_header("Call-ID", "x")"#, "owned by the B2BUA"),
        (
            "req:set_header(\"X-A\", \"a\\r\\nVia: evil\")",
            "CR, LF or NUL",
        ),
        (r#"req:set_header("bad name", "x")"#, "must be a token"),
        (r#"req:set_uri("<sip:x>")"#, "not a valid URI"),
        (r#"req:set_from_user("a@b")"#, "not a valid URI user part"),
        (r#"error("boom")"#, "boom"),
    ] {
        let (result, _, _) = run_invite(body);
        let err = result.expect_err(body);
        assert!(err.message.contains(needle), "{body}: {}", err.message);
        assert!(
            err.message.contains("rules.lua:3:"),
            "{body}: {}",
            err.message
        );
    }
}

#[test]
fn sandbox_has_no_escape_hatches() {
    let (result, _, _) = run_invite(
        r#"
        assert(io == nil and os == nil and debug == nil and package == nil)
        assert(load == nil and loadfile == nil and dofile == nil and require == nil)
        assert(collectgarbage == nil)
        assert(string.dump ~= nil)
    "#,
    );
    assert_eq!(result, Ok(()));
}

#[test]
fn runaway_loop_hits_the_budget_and_the_state_stays_usable() {
    let script = "local r = {}\nfunction r.on_invite(call, req)\n  if req:has_header('X-Loop') then while true do end end\n  req:set_header('X-Fine', '1')\nend\nreturn r\n";
    let mut rules = load(script).expect("loads");
    let mut msg = message();
    msg.msg.push_header(HeaderName::parse("X-Loop"), "1");
    let mut hook_call = call(&rules);
    let err = rules
        .on_invite(rules.script_of(0), &mut hook_call, &mut msg)
        .expect_err("budget");
    assert!(
        err.message.contains("instruction budget exceeded"),
        "{}",
        err.message
    );
    assert_eq!(rules.errors, 1);
    let mut msg = message();
    let mut hook_call = call(&rules);
    rules
        .on_invite(rules.script_of(0), &mut hook_call, &mut msg)
        .expect("next call runs");
    assert_eq!(header(&msg, "X-Fine"), ["1"]);
}

#[test]
fn memory_bomb_is_stopped() {
    let (result, _, _) =
        run_invite(r#"local t = {} for i = 1, 1e9 do t[i] = string.rep("x", 1024) .. i end"#);
    let err = result.expect_err("memory");
    assert!(
        err.message.contains("memory") || err.message.contains("budget"),
        "{}",
        err.message
    );
}

#[test]
fn load_errors_name_file_and_line() {
    let err = load("local r = {}\nfunction r.on_invite(call, req)\n  if then\nend\nreturn r\n")
        .err()
        .expect("syntax error");
    assert!(
        err[0].message.contains("rules.lua:3:"),
        "{}",
        err[0].message
    );
    let err = load("return 42").err().expect("not a table");
    assert!(
        err[0].message.contains("must return a table"),
        "{}",
        err[0].message
    );
    let err = load("return { on_invite = 1 }")
        .err()
        .expect("not a function");
    assert!(err[0].message.contains("'on_invite' must be a function"));
    let err = load("return { on_invnite = function() end }")
        .err()
        .expect("typo");
    assert!(err[0].message.contains("unknown hook 'on_invnite'"));
}
