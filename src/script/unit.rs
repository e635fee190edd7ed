//! Rule unit tests: `*_test.lua` files beside the rules, run by `bridgehead test [DIR]`.
//!
//! A test file runs in the same sandbox as rules (it `require`s the rules it tests from its own
//! directory) with a small API in the global `t`, and returns a table of `test_*` functions:
//!
//! ```lua
//! local rules = require("default")
//! local tests = {}
//! function tests.test_tags_teams()
//!   local req = t.request("INVITE sip:+1@x SIP/2.0\nFrom: <sip:a@b>;tag=1\nTo: <sip:c@d>\n", { trunk = "teams" })
//!   rules.on_request(t.call({ trunk = "core" }), req)
//!   t.eq(req:header("X-MS-SBC"), "Bridgehead/SBC/" .. bh.version)
//! end
//! return tests
//! ```

use super::api::{HookCall, HookMessage, RouteDecision, RuleContext};
use super::{rule_state, sandbox, RuleMetrics, ScriptError};
use crate::config::Profile;
use crate::shared::Leg;
use crate::sip::Message;
use bytes::Bytes;
use mlua::{AnyUserData, Function, Lua, Table, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The result of one `test_*` function (or of a file that could not load: `name` is empty).
#[derive(Debug)]
pub struct TestOutcome {
    pub file: PathBuf,
    pub name: String,
    /// The failure, `file:line: message`, or None when it passed.
    pub failure: Option<String>,
}

/// `*_test.lua` files under `dir`, sorted.
pub fn find_tests(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if path.is_dir() {
                pending.push(path);
            } else if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with("_test.lua"))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Runs every `test_*` function of a test file, each with a full instruction budget. The
/// profile gives the trunks `t.call{trunk = ...}` and `call:route` know.
pub fn run_test_file(path: &Path, profile: &Profile) -> Vec<TestOutcome> {
    let failed = |message: String| {
        vec![TestOutcome {
            file: path.to_path_buf(),
            name: String::new(),
            failure: Some(message),
        }]
    };
    let metrics = Arc::new(RuleMetrics::default());
    let (lua, budget, bh) = match rule_state(profile, &metrics) {
        Ok(state) => state,
        Err(err) => return failed(ScriptError::from_lua(&err).message),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let loaded = sandbox::script_env(&lua, &bh, dir)
        .and_then(|env| test_api(&lua).and_then(|t| env.raw_set("t", t).map(|()| env)))
        .and_then(|env| {
            let source = std::fs::read(path).map_err(mlua::Error::external)?;
            budget.refill();
            lua.load(&source[..])
                .set_name(format!("@{}", path.display()))
                .set_environment(env)
                .eval::<Value>()
        });
    let tests = match loaded {
        Ok(Value::Table(tests)) => tests,
        Ok(_) => {
            return failed(format!(
                "{}: a test file must return a table of test_* functions",
                path.display()
            ))
        }
        Err(err) => return failed(ScriptError::from_lua(&err).message),
    };
    let mut names: Vec<(String, Function)> = tests
        .pairs::<String, Value>()
        .filter_map(Result::ok)
        .filter(|(name, _)| name.starts_with("test"))
        .filter_map(|(name, value)| match value {
            Value::Function(f) => Some((name, f)),
            _ => None,
        })
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    names
        .into_iter()
        .map(|(name, function)| {
            budget.refill();
            let failure = function
                .call::<()>(())
                .err()
                .map(|err| ScriptError::from_lua(&err).message);
            TestOutcome {
                file: path.to_path_buf(),
                name,
                failure,
            }
        })
        .collect()
}

/// The `t` table of test files.
fn test_api(lua: &Lua) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    // t.request(text, opts) / t.response(text, opts): a message as hooks see it.
    let message = |lua: &Lua, (text, opts): (String, Option<Table>)| -> mlua::Result<AnyUserData> {
        let text = crate::sip::wire_text(&text);
        let msg = Message::parse(&Bytes::from(text))
            .map_err(|err| mlua::Error::runtime(format!("not a SIP message: {}", err.fault)))?;
        let leg = match opts
            .as_ref()
            .map(|o| o.get::<Option<String>>("leg"))
            .transpose()?
            .flatten()
            .as_deref()
        {
            Some("a") => Leg::A,
            _ => Leg::B,
        };
        let trunk = opts
            .as_ref()
            .map(|o| o.get::<Option<String>>("trunk"))
            .transpose()?
            .flatten()
            .unwrap_or_default();
        // The message is also the caller's INVITE `req:caller_headers` reads.
        let caller = msg.is_request().then(|| msg.clone());
        let mut hooked = HookMessage::new(msg, leg, trunk);
        hooked.caller = caller;
        lua.create_userdata(hooked)
    };
    t.set("request", lua.create_function(message)?)?;
    t.set("response", lua.create_function(message)?)?;
    // t.call{id=, trunk=}: a call object.
    t.set(
        "call",
        lua.create_function(|lua, opts: Option<Table>| {
            let id: Option<String> = opts.as_ref().map(|o| o.get("id")).transpose()?.flatten();
            let trunk: Option<String> =
                opts.as_ref().map(|o| o.get("trunk")).transpose()?.flatten();
            let index = match trunk {
                None => 0,
                Some(name) => lua
                    .app_data_ref::<RuleContext>()
                    .and_then(|c| c.trunk_index(&name))
                    .ok_or_else(|| {
                        mlua::Error::runtime(format!(
                            "t.call: no trunk named '{name}' in the profile"
                        ))
                    })?,
            };
            let mut call = HookCall::new(id.unwrap_or_else(|| "test-call".into()), index, None);
            call.vars = Some(lua.create_table()?);
            lua.create_userdata(call)
        })?,
    )?;
    // t.lookup(name, entries): bh.lookup(name, key) answers from `entries` for the rest of the
    // file, whatever the profile gives that lookup (or without one there).
    t.set(
        "lookup",
        lua.create_function(|lua, (name, entries): (String, Table)| {
            let mut stub = std::collections::HashMap::new();
            for pair in entries.pairs::<String, String>() {
                let (key, value) = pair?;
                stub.insert(key, value);
            }
            lua.app_data_mut::<RuleContext>()
                .ok_or_else(|| mlua::Error::runtime("rule context missing"))?
                .stub_lookup(&name, stub);
            Ok(())
        })?,
    )?;
    // t.decision(call): what call:route / call:reject decided, as a table, or nil.
    t.set(
        "decision",
        lua.create_function(|lua, call: AnyUserData| {
            let call = call.borrow::<HookCall>()?;
            let Some(decision) = &call.decision else {
                return Ok(Value::Nil);
            };
            let out = lua.create_table()?;
            match decision {
                RouteDecision::Route { trunk, peer, uri } => {
                    let name = lua
                        .app_data_ref::<RuleContext>()
                        .and_then(|c| c.trunk_name(*trunk));
                    out.set("route", name)?;
                    out.set("peer", peer.map(|p| p.to_string()))?;
                    out.set("uri", uri.clone())?;
                }
                RouteDecision::Reject { status, reason, .. } => {
                    out.set("reject", *status)?;
                    out.set("reason", reason.clone())?;
                }
            }
            Ok(Value::Table(out))
        })?,
    )?;
    lua.load(
        r#"
        local t = ...
        local function show(v) return type(v) == "string" and string.format("%q", v) or tostring(v) end
        function t.eq(got, want, what)
          if got ~= want then
            error((what and what .. ": " or "") .. "expected " .. show(want) .. ", got " .. show(got), 2)
          end
        end
        function t.ok(value, what)
          if not value then error(what or "expected a true value", 2) end
        end
        function t.raises(f, pattern)
          local ok, err = pcall(f)
          if ok then error("expected an error", 2) end
          if pattern and not tostring(err):find(pattern, 1, true) then
            error("error " .. show(tostring(err)) .. " does not mention " .. show(pattern), 2)
          end
        end
        "#,
    )
    .set_name("=bridgehead-test")
    .call::<()>(t.clone())?;
    Ok(t)
}
