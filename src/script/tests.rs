use super::*;
use crate::sip::{HeaderName, Message};
use bytes::Bytes;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

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
    Rules::load(&profile, Arc::new(RuleMetrics::default()))
}

fn message() -> HookMessage {
    let msg = Message::parse(&Bytes::from_static(
        b"INVITE sip:+15550100@example.com;user=phone SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: \"Alice\" <sip:+15550199@example.com>;tag=a\r\nTo: <tel:+15550100>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
    ))
    .expect("valid");
    HookMessage::new(msg, Leg::B, "teams".to_string())
}

fn call(_rules: &Rules) -> HookCall {
    HookCall::new("c".to_string(), 0, None)
}

/// Runs `on_invite`.
fn invite(rules: &Rules, call: &mut HookCall, msg: &mut HookMessage) -> Result<(), ScriptError> {
    rules.run(
        rules.script_of(0),
        Hook::Invite,
        Some(call),
        HookArgs::Message(msg),
    )
}

/// Runs `on_invite` with the body given and returns the message and call afterwards.
fn run_invite(body: &str) -> (Result<(), ScriptError>, HookMessage, HookCall) {
    run_invite_on(message(), body)
}

/// [`run_invite`] on a message of the test's own.
fn run_invite_on(
    mut msg: HookMessage,
    body: &str,
) -> (Result<(), ScriptError>, HookMessage, HookCall) {
    let script =
        format!("local r = {{}}\nfunction r.on_invite(call, req)\n{body}\nend\nreturn r\n");
    let rules = load(&script).expect("loads");
    let mut call = call(&rules);
    let result = invite(&rules, &mut call, &mut msg);
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
        assert(call.id == "c" and call.trunk.name == "core")
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
    assert_eq!(
        call.decision,
        Some(RouteDecision::Route {
            trunk: 1,
            peer: None,
            uri: None
        })
    );
    let (result, _, call) = run_invite(
        r#"call:route("teams", { peer = "127.0.0.9:5099", uri = "sip:+1555@sip.pstnhub.microsoft.com" })"#,
    );
    assert_eq!(result, Ok(()));
    assert_eq!(
        call.decision,
        Some(RouteDecision::Route {
            trunk: 1,
            peer: Some("127.0.0.9:5099".parse().unwrap()),
            uri: Some("sip:+1555@sip.pstnhub.microsoft.com".into())
        })
    );
    let (_, _, call) = run_invite(r#"call:reject(403, "Not Allowed", { ["Retry-After"] = "60" })"#);
    assert_eq!(
        call.decision,
        Some(RouteDecision::Reject {
            status: 403,
            reason: "Not Allowed".into(),
            headers: vec![(HeaderName::parse("Retry-After"), "60".into())],
        })
    );
    let (_, _, call) = run_invite(r#"call:reject(486)"#);
    assert_eq!(
        call.decision,
        Some(RouteDecision::Reject {
            status: 486,
            reason: "Busy Here".into(),
            headers: Vec::new(),
        })
    );
    for bad in [
        r#"call:route("teams", { peer = "nowhere" })"#,
        r#"call:route("teams", { uri = "not a uri" })"#,
        r#"call:reject(486, "Busy", { Via = "x" })"#,
        r#"call:reject(486, "Busy", { ["X-A"] = "a\r\nInjected: 1" })"#,
    ] {
        let (result, _, call) = run_invite(bad);
        assert!(result.is_err(), "{bad} must fail");
        assert_eq!(call.decision, None, "{bad}");
    }
}

#[test]
fn call_object_has_trunk_params_and_vars() {
    let dir = std::env::temp_dir().join(format!(
        "bh-script-params-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("rules.lua"),
        "return { on_invite = function(call, req)
  assert(call.trunk.name == 'core' and tostring(call.trunk) == 'core')
  assert(call.trunk.params.region == 'emea' and call.trunk.params.max == '30')
  call.vars.seen = (call.vars.seen or 0) + 1
  req:set_header('X-Seen', tostring(call.vars.seen))
end }
",
    )
    .expect("script");
    let profile = "listeners:\n  - name: l\n    address: 127.0.0.1:5060\ntrunks:\n  - name: core\n    listener: l\n    peers: [\"127.0.0.1:5090\"]\n    script: rules.lua\n    params: { region: emea, max: 30 }\n";
    let profile = Profile::parse(&dir.join("p.yaml"), profile).expect("profile");
    let rules = Rules::load(&profile, Arc::new(RuleMetrics::default())).expect("loads");
    let mut call = call(&rules);
    for expected in ["1", "2"] {
        let mut msg = message();
        invite(&rules, &mut call, &mut msg).expect("runs");
        assert_eq!(
            header(&msg, "X-Seen"),
            [expected],
            "vars persist across hooks"
        );
    }
}

#[test]
fn name_addr_parts_body_and_content_type() {
    let (result, msg, _) = run_invite(
        r#"
        local from = req:name_addr("From")
        assert(from.display == "Alice" and from.user == "+15550199" and from.host == "example.com")
        assert(from.params.tag == "a")
        local to = req:name_addr("To")
        assert(to.user == "+15550100" and to.display == nil)
        assert(req:name_addr("P-Asserted-Identity") == nil)
        req:set_display("From", 'Bob "B"')
        req:set_host("From", "operator.example")
        req:add_header("P-Asserted-Identity", "<sip:+15550111@pai.example>")
        req:set_user("P-Asserted-Identity", "+15550112")
        assert(req:body() == "" and req:content_type() == nil)
        req:set_body("v=0\r\n", "application/sdp")
        assert(req:body() == "v=0\r\n" and req:content_type() == "application/sdp")
    "#,
    );
    assert_eq!(result, Ok(()));
    assert_eq!(
        header(&msg, "From"),
        [r#""Bob \"B\"" <sip:+15550199@operator.example>;tag=a"#]
    );
    assert_eq!(
        header(&msg, "P-Asserted-Identity"),
        ["<sip:+15550112@pai.example>"]
    );
    assert_eq!(&msg.msg.body[..], b"v=0\r\n");
    let (result, _, _) = run_invite(r#"req:set_host("Contact", "x")"#);
    assert!(result.is_err(), "Contact is the B2BUA's");
}

/// An INVITE as an IMS core sends it: two P-Asserted-Identity lines (sip: and tel:), two
/// Diversion lines, a History-Info line with two values, and internal headers.
fn ims_invite() -> HookMessage {
    let msg = Message::parse(&Bytes::from_static(
        b"INVITE sip:+15550100@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:+15550199@ims.example>;tag=a\r\nTo: <tel:+15550100>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nP-Asserted-Identity: \"Alice\" <sip:+15550199@ims.example;user=phone>\r\nP-Asserted-Identity: <tel:+15550199>\r\nDiversion: <sip:+15550101@ims.example>;reason=unconditional;counter=1\r\nDiversion: <sip:+15550102@ims.example>;reason=no-answer;counter=1\r\nHistory-Info: <sip:+15550100@ims.example>;index=1, <sip:+15550103@ims.example>;index=1.1\r\nX-Internal-Route: core-7\r\nx-internal-trace: 42\r\nX-Keep: yes\r\n\r\n",
    ))
    .expect("valid");
    HookMessage::new(msg, Leg::B, "teams".to_string())
}

#[test]
fn editing_one_line_of_a_multi_line_header_keeps_the_others() {
    let (result, msg, _) = run_invite_on(
        ims_invite(),
        r#"req:set_user("P-Asserted-Identity", "+44201234567")
           req:set_display("Diversion", "Desk")
           req:set_host("Diversion", "core.example", 2)"#,
    );
    assert_eq!(result, Ok(()));
    assert_eq!(
        header(&msg, "P-Asserted-Identity"),
        [
            "\"Alice\" <sip:+44201234567@ims.example;user=phone>",
            "<tel:+15550199>"
        ]
    );
    assert_eq!(
        header(&msg, "Diversion"),
        [
            "\"Desk\" <sip:+15550101@ims.example>;reason=unconditional;counter=1",
            "<sip:+15550102@core.example>;reason=no-answer;counter=1"
        ]
    );
}

#[test]
fn rules_address_values_by_index_scheme_or_all() {
    let (result, msg, _) = run_invite_on(
        ims_invite(),
        r#"req:set_user("P-Asserted-Identity", "+44201234567", "tel")
           req:set_user("History-Info", "+15550999", 2)
           req:set_display("Diversion", "Fwd", "*")"#,
    );
    assert_eq!(result, Ok(()));
    assert_eq!(
        header(&msg, "P-Asserted-Identity"),
        [
            "\"Alice\" <sip:+15550199@ims.example;user=phone>",
            "<tel:+44201234567>"
        ]
    );
    assert_eq!(
        header(&msg, "History-Info"),
        ["<sip:+15550100@ims.example>;index=1, <sip:+15550999@ims.example>;index=1.1"]
    );
    assert_eq!(
        header(&msg, "Diversion"),
        [
            "\"Fwd\" <sip:+15550101@ims.example>;reason=unconditional;counter=1",
            "\"Fwd\" <sip:+15550102@ims.example>;reason=no-answer;counter=1"
        ]
    );
    // Every value: set_host skips the tel: URI, which has no host.
    let (result, msg, _) = run_invite_on(
        ims_invite(),
        r#"req:set_user("P-Asserted-Identity", "+44201234567", "*")
           req:set_host("P-Asserted-Identity", "teams.example", "*")"#,
    );
    assert_eq!(result, Ok(()));
    assert_eq!(
        header(&msg, "P-Asserted-Identity"),
        [
            "\"Alice\" <sip:+44201234567@teams.example;user=phone>",
            "<tel:+44201234567>"
        ]
    );
    for (body, wanted) in [
        (
            r#"req:set_user("P-Asserted-Identity", "+1", 3)"#,
            "P-Asserted-Identity has 2 value(s), no value 3",
        ),
        (
            r#"req:set_user("Diversion", "+1", "tel")"#,
            "Diversion has no tel: value",
        ),
        (
            r#"req:set_host("P-Asserted-Identity", "x.example", "tel")"#,
            "is not a SIP or tel name-addr with a host",
        ),
        (
            r#"req:set_user("P-Asserted-Identity", "+1", "mailto")"#,
            "which value?",
        ),
        (
            r#"req:set_user("P-Asserted-Identity", "+1", 0)"#,
            "which value?",
        ),
    ] {
        let (result, _, _) = run_invite_on(ims_invite(), body);
        let error = result.expect_err(body).to_string();
        assert!(error.contains(wanted), "{body}: {error}");
    }
}

#[test]
fn every_value_of_a_header_can_be_read() {
    let (result, _, _) = run_invite_on(
        ims_invite(),
        r#"local pai = req:name_addrs("P-Asserted-Identity")
           assert(#pai == 2, #pai)
           assert(pai[1].index == 1 and pai[1].scheme == "sip" and pai[1].display == "Alice")
           assert(pai[1].user == "+15550199" and pai[1].host == "ims.example")
           assert(pai[2].index == 2 and pai[2].scheme == "tel" and pai[2].user == "+15550199")
           local hi = req:name_addrs("History-Info")
           assert(#hi == 2 and hi[2].params.index == "1.1")
           assert(req:name_addr("P-Asserted-Identity", "tel").uri == "tel:+15550199")
           assert(req:name_addr("P-Asserted-Identity", 2).index == 2)
           assert(req:name_addr("P-Asserted-Identity", 3) == nil)
           assert(req:name_addr("P-Asserted-Identity").scheme == "sip")
           assert(#req:name_addrs("X-None") == 0)
           local names = table.concat(req:header_names(), ",")
           assert(names == "Via,From,To,Call-ID,CSeq,P-Asserted-Identity,Diversion,History-Info,X-Internal-Route,x-internal-trace,X-Keep", names)"#,
    );
    assert_eq!(result, Ok(()));
}

#[test]
fn headers_are_removed_by_pattern_and_a_star_in_a_name_is_an_error() {
    let (result, msg, _) = run_invite_on(
        ims_invite(),
        r#"assert(req:remove_headers("X-Internal-*") == 2)
           assert(req:remove_headers("*-Identity") == 2, "both lines")
           assert(req:remove_headers("*") == 4, "every line the rules may edit")
           assert(req:remove_headers("X-Nothing-*") == 0)"#,
    );
    assert_eq!(result, Ok(()));
    let names: Vec<&str> = msg.msg.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["Via", "From", "To", "Call-ID", "CSeq"]);
    for (body, wanted) in [
        (
            r#"req:remove_header("X-Internal-*")"#,
            "contains '*': to remove headers by pattern use msg:remove_headers('X-Internal-*')",
        ),
        (r#"req:set_header("X-*", "1")"#, "contains '*'"),
        (
            r#"req:remove_headers("X Bad")"#,
            "is not a header name pattern",
        ),
        (r#"req:remove_headers("")"#, "is not a header name pattern"),
    ] {
        let (result, _, _) = run_invite_on(ims_invite(), body);
        let error = result.expect_err(body).to_string();
        assert!(error.contains(wanted), "{body}: {error}");
    }
}

#[test]
fn bh_metric_and_log_and_re() {
    let script = r#"
        local r = {}
        function r.on_invite(call, req)
          bh.metric.inc("calls_from", { trunk = call.trunk.name })
          bh.metric.inc("calls_from", { trunk = call.trunk.name }, 2)
          bh.log.info("hello from " .. call.id)
          assert(bh.re.test("+15550100123", [[^\+1\d{10}$]]))
          assert(not bh.re.test("15550100", [[^\+1\d{10}$]]))
          local s, e = bh.re.find("abc123", [[\d+]])
          assert(s == 4 and e == 6)
          local user, host = bh.re.match("sip:alice@example.com", [[^sip:([^@]+)@(.+)$]])
          assert(user == "alice" and host == "example.com")
          assert(bh.re.match("x", "y") == nil)
          local out, n = bh.re.gsub("a-b-c", "-", "+")
          assert(out == "a+b+c" and n == 2)
          local ok, err = pcall(bh.re.test, "x", "(")
          assert(not ok and tostring(err):find("bh.re", 1, true))
        end
        return r
    "#;
    let rules = load(script).expect("loads");
    let mut msg = message();
    let mut c = call(&rules);
    invite(&rules, &mut c, &mut msg).expect("runs");
    let user = rules.metrics().user_counters();
    assert_eq!(
        user,
        [(
            "calls_from".to_string(),
            vec![("trunk".to_string(), "core".to_string())],
            3
        )]
    );
    let hooks = rules.metrics().hooks();
    let invite_counters = hooks
        .iter()
        .find(|(_, hook, _)| *hook == Hook::Invite)
        .expect("counters");
    assert_eq!(invite_counters.2.calls.load(Ordering::Relaxed), 1);
    assert_eq!(invite_counters.2.errors.load(Ordering::Relaxed), 0);
}

#[test]
fn sandbox_escapes_are_refused() {
    for attempt in [
        "return io.open('/etc/passwd')",
        "return os.execute('true')",
        "return load('return 1')()",
        "return loadfile('/etc/passwd')",
        "return dofile('/etc/passwd')",
        "return require('os')",
        "return require('../../etc/passwd')",
        "return debug.getinfo(1)",
        "return string.dump(function() end) and load",
        "return collectgarbage('count')",
        "string.rep = nil",
        "getmetatable('').__index = {}",
        "bh.version = 'evil'",
        "bh.log.info = function() end",
        "bh.metric.inc = nil",
        "bh.re.test = function() return true end",
        "call.trunk.name = 'teams'",
        "call.trunk.params.x = '1'",
        "return package.loadlib",
        "local mt = getmetatable(req); mt.__index = nil",
        "setmetatable(string, {})",
    ] {
        let (result, _, _) = run_invite(attempt);
        let refused = match &result {
            Err(_) => true,
            // `return string.dump(...) and load` evaluates to nil: load is gone.
            Ok(()) => attempt.ends_with("and load"),
        };
        assert!(refused, "{attempt}: {result:?}");
    }
    // The shared libraries are intact for the next script.
    let (result, _, _) =
        run_invite("assert(string.rep('a', 2) == 'aa' and ('x'):rep(2) == 'xx' and bh.version)");
    assert_eq!(result, Ok(()));
}

#[test]
fn require_loads_modules_from_the_rule_directory_only() {
    let dir = std::env::temp_dir().join(format!(
        "bh-script-require-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(dir.join("lib")).expect("dir");
    std::fs::write(
        dir.join("lib/numbers.lua"),
        "return { e164 = function(n) return '+' .. n end }",
    )
    .expect("module");
    std::fs::write(
        dir.join("rules.lua"),
        "local numbers = require('lib.numbers')
return { on_invite = function(call, req)
  req:set_header('X-Number', numbers.e164('15550100'))
  assert(require('lib.numbers') == numbers)
  assert(not pcall(require, 'lib.other'))
end }
",
    )
    .expect("script");
    std::fs::write(dir.join("lib/other.lua"), "return {}").expect("module");
    let profile = "listeners:\n  - name: l\n    address: 127.0.0.1:5060\ntrunks:\n  - name: core\n    listener: l\n    peers: [\"127.0.0.1:5090\"]\n    script: rules.lua\n";
    let profile = Profile::parse(&dir.join("p.yaml"), profile).expect("profile");
    let rules = Rules::load(&profile, Arc::new(RuleMetrics::default())).expect("loads");
    let mut msg = message();
    invite(&rules, &mut call(&rules), &mut msg).expect("runs");
    assert_eq!(header(&msg, "X-Number"), ["+15550100"]);
}

/// A hook body that must be stopped by the budget, within a bounded time, leaving the state
/// usable for the next call.
fn assert_stopped(body: &str) {
    let script = format!(
        "local r = {{}}\nfunction r.on_invite(call, req)\n  if req:has_header('X-Bad') then\n{body}\n  end\n  req:set_header('X-Fine', '1')\nend\nreturn r\n"
    );
    let rules = load(&script).expect("loads");
    let mut msg = message();
    msg.msg.push_header(HeaderName::parse("X-Bad"), "1");
    let started = std::time::Instant::now();
    let err = invite(&rules, &mut call(&rules), &mut msg).expect_err("stopped");
    let took = started.elapsed();
    assert!(
        matches!(err.kind, ErrorKind::Budget | ErrorKind::Memory),
        "{body}: {err:?}"
    );
    assert!(
        took < std::time::Duration::from_secs(5),
        "{body}: took {took:?}"
    );
    let mut msg = message();
    invite(&rules, &mut call(&rules), &mut msg).expect("the next call runs");
    assert_eq!(header(&msg, "X-Fine"), ["1"]);
}

#[test]
fn runaway_code_is_stopped_even_inside_pcall() {
    assert_stopped("while true do end");
    assert_stopped("while true do pcall(function() while true do end end) end");
    assert_stopped(
        "while true do xpcall(function() while true do end end, function(e) return e end) end",
    );
    assert_stopped("local co = coroutine.wrap(function() while true do end end) co()");
    assert_stopped(
        "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
    );
    assert_stopped("local t = {3, 2, 1} while true do pcall(table.sort, t, function(a, b) while true do end end) end");
    assert_stopped(
        "while true do pcall(string.gsub, 'aaa', 'a', function() while true do end end) end",
    );
}

#[test]
fn catastrophic_patterns_are_stopped() {
    assert_stopped("local s = string.rep('a', 3000) return s:find('.-.-.-.-b')");
    assert_stopped(
        "local s = string.rep('a', 3000) while true do pcall(string.match, s, '.-.-.-.-b') end",
    );
    assert_stopped("for w in string.rep('a', 5000):gmatch('(.-)(.-)(.-)b') do end");
    assert_stopped("return (string.rep('a', 3000)):gsub('.-.-.-b', 'x')");
}

#[test]
fn lua_patterns_keep_their_semantics() {
    let (result, _, _) = run_invite(
        r#"
        assert(("hello world"):find("wor") == 7)
        assert(select(2, ("hello world"):find("wor")) == 9)
        assert(("hello"):find("l", 1, true) == 3)
        assert(("a.b"):find(".", 1, true) == 2)
        assert(("abc"):find("", 2) == 2)
        assert(("abc"):find("x") == nil)
        assert(("abc"):find("b", -1) == nil)
        assert(("key = value"):match("(%w+)%s*=%s*(%w+)") == "key")
        assert(select(2, ("key = value"):match("(%w+)%s*=%s*(%w+)")) == "value")
        assert(("  trim  "):match("^%s*(.-)%s*$") == "trim")
        assert(("sip:+15550100@x"):match("^sip:(%+?%d+)@") == "+15550100")
        assert(("THE (quick) fox"):find("%((%a+)%)") == 5)
        assert(("f(a(b)c)d"):match("%b()") == "(a(b)c)")
        assert(("THE (quick) fox"):match("%f[%a]%a+", 5) == "quick")
        assert(("hello"):match("()ll()") == 3)
        assert(("abcabc"):match("(abc)%1") == "abc")
        assert(("[x]"):match("[]]") == "]")
        assert(("a-b"):match("[a%-]+") == "a-")
        assert(("x9y"):match("[^%a]") == "9")
        assert(("aaa"):match("a-b") == nil)
        assert(("aaab"):match("a-b") == "aaab")
        assert(("ab"):match("a?b") == "ab" and ("b"):match("a?b") == "b")
        assert(("end$"):match("d%$") == "d$" and ("end"):match("d$") == "d")
        local out, n = ("hello world"):gsub("o", "0")
        assert(out == "hell0 w0rld" and n == 2)
        assert(("hello world"):gsub("(%w+)", "<%1>") == "<hello> <world>")
        assert(("hello"):gsub("", "-") == "-h-e-l-l-o-")
        assert(("abc"):gsub("%w", "%0%0") == "aabbcc")
        assert(("abc"):gsub("b", { b = "B" }) == "aBc")
        assert(("abc"):gsub("%w", function(c) if c == "b" then return false end return c:upper() end) == "AbC")
        assert(("abc"):gsub("^a", "x") == "xbc")
        assert(select(2, ("aaa"):gsub("a", "b", 2)) == 2)
        local words = {}
        for k, v in ("a=1, b=2"):gmatch("(%w+)=(%w+)") do words[#words + 1] = k .. v end
        assert(#words == 2 and words[1] == "a1" and words[2] == "b2")
        local count = 0
        for _ in ("abc"):gmatch("") do count = count + 1 end
        assert(count == 4)
        assert(not pcall(string.find, "a", "%"))
        assert(not pcall(string.find, "a", "[a"))
        assert(not pcall(string.find, "a", "(a"))
        assert(not pcall(string.match, "a", "%1"))
        assert(not pcall(string.gsub, "a", "a", "%2"))
    "#,
    );
    assert_eq!(result, Ok(()));
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
        assert(load == nil and loadfile == nil and dofile == nil and type(require) == "function")
        assert(collectgarbage == nil)
        assert(string.dump ~= nil)
    "#,
    );
    assert_eq!(result, Ok(()));
}

#[test]
fn runaway_loop_hits_the_budget_and_the_state_stays_usable() {
    let script = "local r = {}\nfunction r.on_invite(call, req)\n  if req:has_header('X-Loop') then while true do end end\n  req:set_header('X-Fine', '1')\nend\nreturn r\n";
    let rules = load(script).expect("loads");
    let mut msg = message();
    msg.msg.push_header(HeaderName::parse("X-Loop"), "1");
    let mut hook_call = call(&rules);
    let err = invite(&rules, &mut hook_call, &mut msg).expect_err("budget");
    assert!(
        err.message.contains("instruction budget exceeded"),
        "{}",
        err.message
    );
    let budget_hits: u64 = rules
        .metrics()
        .hooks()
        .iter()
        .map(|(_, _, c)| c.budget_hits.load(Ordering::Relaxed))
        .sum();
    assert_eq!(budget_hits, 1);
    let mut msg = message();
    let mut hook_call = call(&rules);
    invite(&rules, &mut hook_call, &mut msg).expect("next call runs");
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

#[test]
fn sdp_api_reads_and_edits_every_part() {
    let script = r#"
local r = {}
function r.on_sdp(call, sdp, ctx)
  assert(ctx.kind == "offer" and ctx.leg == "b" and ctx.msg.method == "INVITE")
  assert(sdp:connection() == "192.0.2.10" and sdp:origin_address() == "192.0.2.10")
  assert(sdp:attribute("ice-lite") == true and sdp:attribute("group") == nil)
  sdp:set_connection("203.0.113.5")
  sdp:set_origin_address("203.0.113.5")
  sdp:set_bandwidth("AS", 64)
  assert(sdp:bandwidth("AS") == 64)
  local all = sdp:media()
  assert(#all == 2 and #sdp:media("video") == 1)
  local audio = sdp:media("audio")[1]
  assert(audio.kind == "audio" and audio.port == 4000 and audio.proto == "RTP/SAVP")
  local codecs = audio:codecs()
  assert(#codecs == 4 and codecs[1].name == "PCMU" and codecs[1].clock == 8000 and codecs[4].fmtp == "0-16")
  assert(audio:direction() == "sendrecv")
  audio:set_direction("sendonly")
  assert(audio:direction() == "sendonly")
  local crypto = audio:crypto()
  assert(#crypto == 2 and crypto[1].tag == 1 and crypto[1].suite == "AES_CM_128_HMAC_SHA1_80")
  assert(audio:attribute("rtcp-mux") == true and audio:attribute("ptime") == "20")
  assert(#audio:attributes("crypto") == 2)
  audio:remove_attribute("crypto")
  audio:add_attribute("crypto", "1 AES_CM_128_HMAC_SHA1_80 inline:AAAA")
  assert(audio:reorder_codecs({ "PCMA" }) == 1)
  assert(audio:remove_codecs({ "G722" }) == 1)
  assert(audio:keep_codecs({ "pcma", "101" }) == 2)
  assert(not pcall(audio.keep_codecs, audio, { "opus" }), "removing every codec is refused")
  audio:keep_only_attributes({ "rtpmap", "fmtp", "crypto", "sendonly" })
  assert(audio:attribute("rtcp-mux") == nil)
  audio:set_port(5000)
  local video = sdp:media("video")[1]
  assert(video:is_rejected())
  assert(not pcall(audio.set_attribute, audio, "x", "a\r\nb=evil"), "no line injection")
  assert(not pcall(audio.set_direction, audio, "sideways"))
  ctx.msg:set_header("X-Sdp", "edited")
end
return r
"#;
    let rules = load(script).expect("loads");
    let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\na=ice-lite\r\nm=audio 4000 RTP/SAVP 0 8 9 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\na=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj|2^20|1:32\r\na=rtcp-mux\r\na=ptime:20\r\na=sendrecv\r\nm=video 0 RTP/AVP 96\r\n";
    let sdp: SharedSdp = Arc::new(std::sync::Mutex::new(
        crate::sdp::Sdp::parse(offer.as_bytes()).expect("offer"),
    ));
    let mut msg = message();
    let mut c = call(&rules);
    rules
        .run(
            rules.script_of(0),
            Hook::Sdp,
            Some(&mut c),
            HookArgs::Sdp {
                sdp: sdp.clone(),
                kind: "offer",
                leg: Leg::B,
                msg: &mut msg,
            },
        )
        .expect("runs");
    let text = String::from_utf8(sdp.lock().unwrap().to_bytes()).unwrap();
    assert!(text.contains("c=IN IP4 203.0.113.5\r\n"), "{text}");
    assert!(text.contains("o=- 1 1 IN IP4 203.0.113.5\r\n"), "{text}");
    assert!(text.contains("b=AS:64\r\n"), "{text}");
    assert!(text.contains("m=audio 5000 RTP/SAVP 8 101\r\n"), "{text}");
    assert!(
        text.contains("a=sendonly\r\n") && !text.contains("a=sendrecv"),
        "{text}"
    );
    assert!(
        text.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AAAA\r\n"),
        "{text}"
    );
    assert!(
        !text.contains("rtcp-mux") && !text.contains("G722"),
        "{text}"
    );
    assert!(text.contains("m=video 0 RTP/AVP 96\r\n"), "{text}");
    assert_eq!(header(&msg, "X-Sdp"), ["edited"]);
}

#[test]
fn garbage_from_many_hook_calls_is_collected() {
    // Hook objects are userdata with finalizers that the memory limit's emergency collection
    // cannot free; the rules collect on their own before that. 200k calls make far more
    // garbage than the 4 MiB collection threshold.
    let rules = load("local r = {}\nfunction r.on_request(call, msg)\n  msg:set_header('X-Caller', msg:from_user() or 'anonymous')\nend\nreturn r\n").expect("loads");
    let mut c = call(&rules);
    let mut peak = 0;
    for _ in 0..200_000 {
        let mut msg = message();
        rules
            .run(
                rules.script_of(0),
                Hook::Request,
                Some(&mut c),
                HookArgs::Message(&mut msg),
            )
            .expect("runs");
        peak = peak.max(rules.lua.used_memory());
    }
    assert!(peak < 6 * 1024 * 1024, "peak Lua memory {peak} bytes");
}

#[test]
fn lua_patterns_never_panic_on_arbitrary_input() {
    // Random patterns and subjects over the characters that matter to the matcher: any input
    // gives a result or a Lua error, never a panic.
    let rules = load(
        "local r = {}\nfunction r.on_invite(call, req)\n  local s, p = req:header('X-S'), req:header('X-P')\n  pcall(string.find, s, p)\n  pcall(string.find, s, p, -3)\n  pcall(string.match, s, p, 2)\n  pcall(string.gsub, s, p, '%0%1')\n  pcall(string.gsub, s, p, { a = 'b' })\n  pcall(function() for a, b in s:gmatch(p) do end end)\nend\nreturn r\n",
    )
    .expect("loads");
    let alphabet = b"%[]^$()*+-?.ab1 fdb";
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let mut pick = |max: u64| -> String {
            let len = next() % max;
            (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                .collect()
        };
        let (subject, pattern) = (pick(12), pick(8));
        let mut msg = message();
        msg.msg
            .push_header(HeaderName::parse("X-S"), subject.clone());
        msg.msg
            .push_header(HeaderName::parse("X-P"), pattern.clone());
        let result = invite(&rules, &mut call(&rules), &mut msg);
        assert!(result.is_ok(), "{subject:?} {pattern:?}: {result:?}");
    }
}

#[test]
fn media_actions_are_validated_and_queued() {
    let (result, _, call) = run_invite(
        r#"
        assert(call.leg == "b")
        call:play_ringback()
        call:send_dtmf("12*#ab")
        call:send_dtmf("9", "a")
        assert(not pcall(call.send_dtmf, call, "12x"))
        assert(not pcall(call.send_dtmf, call, ""))
        assert(not pcall(call.play_ringback, call, "c"))
    "#,
    );
    assert_eq!(result, Ok(()));
    assert_eq!(
        call.media_actions,
        [
            MediaAction::PlayRingback { leg: Leg::A },
            MediaAction::SendDtmf {
                leg: Leg::B,
                digits: "12*#AB".into()
            },
            MediaAction::SendDtmf {
                leg: Leg::A,
                digits: "9".into()
            },
        ]
    );
}

#[test]
fn set_early_media_takes_the_profiles_names_only() {
    let (result, _, call) = run_invite(
        r#"
        call:set_early_media("ringback")
        assert(not pcall(call.set_early_media, call, "convert_183_to_181"))
        call:set_early_media("convert_180_to_183")
    "#,
    );
    assert_eq!(result, Ok(()));
    assert_eq!(
        call.early_media,
        Some(crate::config::EarlyMedia::Convert180To183)
    );
}

#[test]
fn on_media_returns_a_verdict_on_each_digit() {
    let rules = load(
        "local r = {}\nfunction r.on_media(call, ev)\n  if ev.kind ~= 'dtmf' then return false end\n  if ev.digit == '1' then return false end\n  if ev.digit == '2' then return '#' end\n  if ev.digit == '3' then return 'b' end\n  if ev.digit == '4' then return 'xy' end\n  if ev.digit == '5' then return {} end\nend\nreturn r\n",
    )
    .expect("loads");
    let verdict = |digit: char| {
        let mut call = call(&rules);
        let event = MediaEvent::Dtmf {
            leg: crate::shared::Leg::A,
            digit,
            duration_ms: 100,
            method: crate::media::DtmfMethod::Rfc4733,
        };
        let result = rules.run(
            rules.script_of(0),
            Hook::Media,
            Some(&mut call),
            HookArgs::Media(&event),
        );
        (result.map_err(|e| e.to_string()), call.digit_verdict)
    };
    assert_eq!(verdict('9'), (Ok(()), DigitVerdict::Keep));
    assert_eq!(verdict('1'), (Ok(()), DigitVerdict::Drop));
    assert_eq!(verdict('2'), (Ok(()), DigitVerdict::Replace('#')));
    assert_eq!(verdict('3'), (Ok(()), DigitVerdict::Replace('B')));
    for bad in ['4', '5'] {
        let (result, kept) = verdict(bad);
        assert_eq!(kept, DigitVerdict::Keep, "an error changes nothing");
        assert!(result.is_err_and(|e| e.contains("on_media")), "{bad}");
    }
    // Other events' return values mean nothing.
    let mut call = call(&rules);
    let timeout = MediaEvent::RtpTimeout {
        leg: crate::shared::Leg::A,
        seconds: 5,
    };
    let result = rules.run(
        rules.script_of(0),
        Hook::Media,
        Some(&mut call),
        HookArgs::Media(&timeout),
    );
    assert!(result.is_ok());
    assert_eq!(call.digit_verdict, DigitVerdict::Keep);
    assert_eq!(DigitVerdict::Drop.apply('5'), None);
    assert_eq!(DigitVerdict::Replace('#').apply('5'), Some('#'));
}

#[test]
fn the_luals_stubs_are_valid_lua() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/lua/bridgehead.lua");
    let text = std::fs::read_to_string(path).expect("stubs");
    let compiled = mlua::Lua::new()
        .load(&text)
        .set_name("bridgehead.lua")
        .into_function();
    assert!(compiled.is_ok(), "{:?}", compiled.err());
    for method in [
        "Message:name_addrs",
        "Message:header_names",
        "Message:remove_headers",
    ] {
        assert!(text.contains(&format!("function {method}(")), "{method}");
    }
}

#[test]
fn lookups_answer_from_a_table_and_a_csv_and_count() {
    let dir = std::env::temp_dir().join(format!("bh-script-lookup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(
        dir.join("subscribers.csv"),
        "# number,kind\n+4915112345678,tpm\n+4915100000000\n",
    )
    .expect("csv");
    std::fs::write(
        dir.join("rules.lua"),
        r#"
local r = {}
function r.on_invite(call, req)
  assert(bh.lookup("subscribers", "+4915112345678") == "tpm")
  assert(bh.lookup("subscribers", "+4915100000000") == "")
  assert(bh.lookup("subscribers", "+49301") == nil)
  assert(bh.lookup("ranges", "030") == "berlin")
  local ok, err = pcall(bh.lookup, "nothing", "1")
  assert(not ok and tostring(err):find("no lookup named 'nothing'", 1, true))
  req:set_header("X-Done", "1")
end
return r
"#,
    )
    .expect("script");
    let profile = "listeners:\n  - name: l\n    address: 127.0.0.1:5060\ntrunks:\n  - name: core\n    listener: l\n    peers: [\"127.0.0.1:5090\"]\n    script: rules.lua\nlookups:\n  - name: subscribers\n    csv: subscribers.csv\n  - name: ranges\n    table: { \"030\": berlin, \"040\": hamburg }\n";
    let profile = Profile::parse(&dir.join("p.yaml"), profile).expect("profile");
    let metrics = Arc::new(RuleMetrics::default());
    let rules = Rules::load(&profile, metrics.clone()).expect("loads");
    let mut call = call(&rules);
    let mut msg = message();
    invite(&rules, &mut call, &mut msg).expect("hook runs");
    assert_eq!(header(&msg, "X-Done"), ["1"]);
    let counted: Vec<(String, u64, u64)> = metrics
        .lookups()
        .iter()
        .map(|(name, c)| {
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            (name.clone(), load(&c.hits), load(&c.misses))
        })
        .collect();
    assert_eq!(
        counted,
        [
            ("ranges".to_string(), 1, 0),
            ("subscribers".to_string(), 2, 1)
        ]
    );
}

#[test]
fn a_broken_lookup_csv_is_refused_with_its_line() {
    let dir = std::env::temp_dir().join(format!("bh-config-lookup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("bad.csv"), "a,1\n# c\na,2\n").expect("csv");
    let head = "listeners:\n  - name: l\n    address: 127.0.0.1:5060\ntrunks:\n  - name: core\n    listener: l\n    peers: [\"127.0.0.1:5090\"]\nlookups:\n";
    let errors = Profile::parse(
        &dir.join("p.yaml"),
        &format!("{head}  - name: numbers\n    csv: bad.csv\n"),
    )
    .expect_err("refused");
    assert_eq!(errors[0].file, dir.join("bad.csv"));
    assert_eq!(errors[0].line, Some(3));
    assert!(errors[0]
        .message
        .contains("lookup 'numbers': key 'a' is given twice"));
    let errors = Profile::parse(
        &dir.join("p.yaml"),
        &format!("{head}  - name: numbers\n    csv: missing.csv\n"),
    )
    .expect_err("refused");
    assert_eq!(errors[0].line, Some(10));
    assert!(errors[0].message.contains("cannot read"));
    for (entry, message) in [
        ("  - name: numbers\n", "needs one of table, csv or http"),
        (
            "  - name: numbers\n    csv: bad.csv\n    table: {}\n",
            "needs one of table, csv or http",
        ),
        ("  - name: \"a b\"\n    table: {}\n", "letters, digits"),
        (
            "  - name: n\n    table: {}\n  - name: n\n    table: {}\n",
            "defined twice",
        ),
    ] {
        let errors =
            Profile::parse(&dir.join("p.yaml"), &format!("{head}{entry}")).expect_err("refused");
        assert!(
            errors.iter().any(|e| e.message.contains(message)),
            "{entry}: {errors:?}"
        );
    }
}

/// Rules with an HTTP lookup `consult` (nothing listens: the tests answer themselves), and
/// that lookup's service.
fn http_lookup_rules(script: &str) -> (Rules, crate::lookup::HttpLookup) {
    let dir = std::env::temp_dir().join(format!(
        "bh-script-http-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("rules.lua"), script).expect("script");
    let profile = "listeners:\n  - name: l\n    address: 127.0.0.1:5060\ntrunks:\n  - name: core\n    listener: l\n    peers: [\"127.0.0.1:5090\"]\n    script: rules.lua\nlookups:\n  - name: consult\n    http: { url: \"http://127.0.0.1:9/{key}\", timeout_ms: 200, concurrency: 1 }\n";
    let profile = Profile::parse(&dir.join("p.yaml"), profile).expect("profile");
    let http = profile.lookups[0].http.clone().expect("an HTTP lookup");
    let rules = Rules::load(&profile, Arc::new(RuleMetrics::default())).expect("loads");
    (rules, http)
}

/// The message of an `on_invite` that ended.
fn ended(run: InviteRun) -> HookMessage {
    match run {
        InviteRun::Done {
            taken: Some((_, msg)),
            result: Ok(()),
        } => msg,
        other => panic!("expected the hook to end: {other:?}"),
    }
}

#[test]
fn an_http_lookup_suspends_on_invite_until_its_answer_which_is_cached() {
    let (rules, http) = http_lookup_rules(
        "local r = {}\nfunction r.on_invite(call, req)\n  local ok, v, err = pcall(bh.lookup, 'consult', req:header('X-Key'))\n  req:set_header('X-Lookup', tostring(v) .. '/' .. tostring(err))\n  call.vars.after = true\nend\nreturn r\n",
    );
    let with_key = |key: &str| {
        let mut msg = message();
        msg.msg
            .push_header(HeaderName::parse("X-Key"), key.to_string());
        msg
    };
    let state = rules.metrics().lookup_state("consult");
    let now = Instant::now();
    let script = rules.script_of(0);
    // Inside pcall too: Lua 5.4's pcall lets the coroutine wait.
    let run = rules.run_invite(script, call(&rules), with_key("+491"), now);
    let InviteRun::Waiting { invite, lookup } = run else {
        panic!("expected to wait: {run:?}")
    };
    assert_eq!(
        (lookup.name.as_str(), lookup.key.as_str()),
        ("consult", "+491")
    );
    let found = crate::lookup::LookupAnswer::Found("tpm".into());
    let answer = state.end_request("+491", Some(&found), &http, now);
    let run = rules.resume_invite(invite, answer, now);
    let InviteRun::Done {
        taken: Some((call, msg)),
        result: Ok(()),
    } = run
    else {
        panic!("expected the hook to end: {run:?}")
    };
    assert_eq!(header(&msg, "X-Lookup"), ["tpm/nil"]);
    let vars = call.vars.expect("vars");
    assert!(vars.get::<bool>("after").expect("after"));

    // Cached: the next call for that key does not wait.
    let cached = rules.run_invite(
        script,
        HookCall::new("c2".into(), 0, None),
        with_key("+491"),
        now,
    );
    assert_eq!(header(&ended(cached), "X-Lookup"), ["tpm/nil"]);

    // A timeout comes back as nil and why.
    let run = rules.run_invite(
        script,
        HookCall::new("c3".into(), 0, None),
        with_key("+492"),
        now,
    );
    let InviteRun::Waiting { invite, .. } = run else {
        panic!("expected to wait: {run:?}")
    };
    let answer = state.end_request("+492", None, &http, now);
    let run = rules.resume_invite(invite, answer, now);
    assert_eq!(header(&ended(run), "X-Lookup"), ["nil/timeout"]);
}

#[test]
fn an_http_lookup_refuses_to_wait_outside_on_invite_and_in_a_rules_coroutine() {
    let (rules, _) = http_lookup_rules(
        "local r = {}\nfunction r.on_invite(call, req)\n  local co = coroutine.wrap(function() return bh.lookup('consult', '+491') end)\n  local ok, err = pcall(co)\n  req:set_header('X-Coroutine', (tostring(err):gsub('%s+', ' ')))\nend\nfunction r.on_request(call, req)\n  bh.lookup('consult', '+491')\nend\nreturn r\n",
    );
    let run = rules.run_invite(rules.script_of(0), call(&rules), message(), Instant::now());
    let said = header(&ended(run), "X-Coroutine");
    assert!(
        said[0].contains("not inside a coroutine of the rule's"),
        "{said:?}"
    );
    let mut call = call(&rules);
    let mut msg = message();
    let err = rules
        .run(
            rules.script_of(0),
            Hook::Request,
            Some(&mut call),
            HookArgs::Message(&mut msg),
        )
        .expect_err("refused");
    assert!(err.message.contains("only in on_invite"), "{err}");
}

#[test]
fn an_http_lookup_over_its_concurrency_is_busy_at_once() {
    let (rules, _) = http_lookup_rules(
        "local r = {}\nfunction r.on_invite(call, req)\n  local v, err = bh.lookup('consult', req:header('X-Key'))\n  req:set_header('X-Lookup', tostring(err))\nend\nreturn r\n",
    );
    let with_key = |key: &str| {
        let mut msg = message();
        msg.msg
            .push_header(HeaderName::parse("X-Key"), key.to_string());
        msg
    };
    let now = Instant::now();
    let first = rules.run_invite(rules.script_of(0), call(&rules), with_key("1"), now);
    assert!(matches!(first, InviteRun::Waiting { .. }));
    // Concurrency 1: a second key, while the first waits, fails at once.
    let second = rules.run_invite(rules.script_of(0), call(&rules), with_key("2"), now);
    assert_eq!(header(&ended(second), "X-Lookup"), ["busy"]);
    let errors = rules
        .metrics()
        .lookup_state("consult")
        .errors
        .load(Ordering::Relaxed);
    assert_eq!(errors, 1);
}
