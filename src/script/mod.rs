//! Lua rules (mlua, Lua 5.4): loading, sandboxing and hook dispatch.
//!
//! Each trunk may name a script: a Lua chunk that returns a table of hook functions. One
//! [`Rules`] holds one Lua state (per shard) with every script of a profile loaded into it.
//! Hooks receive a `call` object and the message that is about to be sent, as userdata borrowed
//! for the duration of the call: they can read and edit the message and decide where a new call
//! goes. An error in a hook is reported with the script's file:line and the call id and never
//! stops the engine: the call continues with default behaviour.

mod api;

pub use api::{HookCall, HookMessage, RouteDecision};

use crate::config::{Profile, TrunkId};
use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Product model and version, as Lua sees them in `bh.model` and `bh.version`.
pub const MODEL: &str = "SBC";
/// The running version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Memory one Lua state may use.
const MEMORY_LIMIT: usize = 64 * 1024 * 1024;
/// Instructions one hook call may run (checked every [`BUDGET_STEP`] instructions).
const INSTRUCTION_BUDGET: u32 = 5_000_000;
const BUDGET_STEP: u32 = 1000;

/// A script that failed to load, or a hook that failed to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptError {
    /// `file:line: message` as Lua reports it (or the file alone when there is no line).
    pub message: String,
}

impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ScriptError {}

impl ScriptError {
    fn from_lua(err: &mlua::Error) -> ScriptError {
        // Lua runtime errors carry "file:line: message" first; keep that line, drop the traceback.
        // An error raised by a Rust API function has no place of its own: take the script line
        // that called it from the traceback.
        if let mlua::Error::CallbackError { traceback, cause } = err {
            let inner = ScriptError::from_lua(cause);
            let caller = traceback
                .lines()
                .map(str::trim)
                .filter(|l| !l.starts_with("[C]") && !l.starts_with("stack traceback"))
                .find_map(|l| {
                    let (place, _) = l.split_once(": in ")?;
                    place
                        .rsplit_once(':')
                        .map(|(_, n)| n.parse::<u32>().is_ok())?
                        .then_some(place)
                });
            return match caller {
                Some(place) if !inner.message.starts_with(place) => ScriptError {
                    message: format!("{place}: {}", inner.message),
                },
                _ => inner,
            };
        }
        let text = err.to_string();
        let first = text.lines().next().unwrap_or_default();
        let first = first
            .strip_prefix("runtime error: ")
            .or_else(|| first.strip_prefix("syntax error: "))
            .unwrap_or(first);
        ScriptError {
            message: first.to_string(),
        }
    }
}

/// The hooks one script defines.
#[derive(Default)]
struct ScriptHooks {
    on_invite: Option<Function>,
    on_request: Option<Function>,
    on_response: Option<Function>,
}

/// Index of a loaded script.
pub type ScriptId = usize;

/// Every script of a profile, loaded into one sandboxed Lua state.
pub struct Rules {
    lua: Lua,
    scripts: Vec<ScriptHooks>,
    /// Script of each trunk, by trunk index.
    trunk_script: Vec<Option<ScriptId>>,
    trunk_names: Arc<[String]>,
    instructions: Arc<AtomicU32>,
    /// Hook calls that raised an error or ran out of budget.
    pub errors: u64,
}

impl Rules {
    /// Loads the scripts a profile names. Every failing script is reported.
    pub fn load(profile: &Profile) -> Result<Rules, Vec<ScriptError>> {
        let (lua, instructions) = sandbox().map_err(|e| vec![ScriptError::from_lua(&e)])?;
        let mut scripts = Vec::new();
        let mut by_path: HashMap<PathBuf, ScriptId> = HashMap::new();
        let mut trunk_script = Vec::new();
        let mut errors = Vec::new();
        for trunk in &profile.trunks {
            let Some(path) = &trunk.script else {
                trunk_script.push(None);
                continue;
            };
            if let Some(id) = by_path.get(path) {
                trunk_script.push(Some(*id));
                continue;
            }
            match load_script(&lua, path) {
                Ok(hooks) => {
                    scripts.push(hooks);
                    by_path.insert(path.clone(), scripts.len() - 1);
                    trunk_script.push(Some(scripts.len() - 1));
                }
                Err(err) => {
                    errors.push(err);
                    trunk_script.push(None);
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Rules {
            lua,
            scripts,
            trunk_script,
            trunk_names: profile.trunks.iter().map(|t| t.name.clone()).collect(),
            instructions,
            errors: 0,
        })
    }

    /// The script that governs calls arriving on this trunk.
    pub fn script_of(&self, trunk: TrunkId) -> Option<ScriptId> {
        self.trunk_script.get(trunk).copied().flatten()
    }

    /// Names of the profile's trunks, for `call:route`.
    pub fn trunk_names(&self) -> Arc<[String]> {
        self.trunk_names.clone()
    }

    /// Runs `on_invite(call, req)` for a new call.
    pub fn on_invite(
        &mut self,
        script: Option<ScriptId>,
        call: &mut HookCall,
        msg: &mut HookMessage,
    ) -> Result<(), ScriptError> {
        let hook = script.and_then(|s| self.scripts[s].on_invite.clone());
        self.run(hook, Some(call), msg)
    }

    /// Runs `on_request(call, req)` for a request about to be sent; `call` is nil outside calls.
    pub fn on_request(
        &mut self,
        script: Option<ScriptId>,
        call: Option<&mut HookCall>,
        msg: &mut HookMessage,
    ) -> Result<(), ScriptError> {
        let hook = script.and_then(|s| self.scripts[s].on_request.clone());
        self.run(hook, call, msg)
    }

    /// Runs `on_response(call, resp)` for a response about to be sent.
    pub fn on_response(
        &mut self,
        script: Option<ScriptId>,
        call: Option<&mut HookCall>,
        msg: &mut HookMessage,
    ) -> Result<(), ScriptError> {
        let hook = script.and_then(|s| self.scripts[s].on_response.clone());
        self.run(hook, call, msg)
    }

    /// True when the script defines any per-message hook (lets the engine skip building the
    /// hook objects when nothing listens).
    pub fn has_message_hooks(&self, script: Option<ScriptId>) -> bool {
        script.is_some_and(|s| {
            self.scripts[s].on_request.is_some() || self.scripts[s].on_response.is_some()
        })
    }

    fn run(
        &mut self,
        hook: Option<Function>,
        call: Option<&mut HookCall>,
        msg: &mut HookMessage,
    ) -> Result<(), ScriptError> {
        let Some(hook) = hook else {
            return Ok(());
        };
        self.instructions.store(0, Ordering::Relaxed);
        let result = self.lua.scope(|scope| {
            let call = match call {
                Some(call) => Value::UserData(scope.create_userdata_ref_mut(call)?),
                None => Value::Nil,
            };
            let msg = scope.create_userdata_ref_mut(msg)?;
            hook.call::<()>((call, msg))
        });
        result.map_err(|err| {
            self.errors += 1;
            ScriptError::from_lua(&err)
        })
    }
}

/// A fresh Lua state with only safe libraries, a memory limit and an instruction budget.
fn sandbox() -> mlua::Result<(Lua, Arc<AtomicU32>)> {
    let lua = Lua::new_with(
        StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE,
        LuaOptions::default(),
    )?;
    lua.set_memory_limit(MEMORY_LIMIT)?;
    let globals = lua.globals();
    for name in [
        "dofile",
        "loadfile",
        "load",
        "require",
        "collectgarbage",
        "print",
    ] {
        globals.raw_set(name, Value::Nil)?;
    }
    globals.raw_set("bh", api::bh_table(&lua)?)?;
    let instructions = Arc::new(AtomicU32::new(0));
    let counter = instructions.clone();
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(BUDGET_STEP),
        move |_, _| {
            let used = counter.fetch_add(BUDGET_STEP, Ordering::Relaxed) + BUDGET_STEP;
            if used > INSTRUCTION_BUDGET {
                Err(mlua::Error::runtime("instruction budget exceeded"))
            } else {
                Ok(VmState::Continue)
            }
        },
    )?;
    Ok((lua, instructions))
}

fn load_script(lua: &Lua, path: &Path) -> Result<ScriptHooks, ScriptError> {
    let source = std::fs::read(path).map_err(|err| ScriptError {
        message: format!("{}: cannot read script: {err}", path.display()),
    })?;
    let module: Value = lua
        .load(&source[..])
        .set_name(format!("@{}", path.display()))
        .eval()
        .map_err(|e| ScriptError::from_lua(&e))?;
    let Value::Table(module) = module else {
        return Err(ScriptError {
            message: format!(
                "{}: the script must return a table of hook functions",
                path.display()
            ),
        });
    };
    let hook = |name: &str| -> Result<Option<Function>, ScriptError> {
        match module.raw_get::<Value>(name) {
            Ok(Value::Nil) => Ok(None),
            Ok(Value::Function(f)) => Ok(Some(f)),
            _ => Err(ScriptError {
                message: format!("{}: '{name}' must be a function", path.display()),
            }),
        }
    };
    check_hook_names(&module, path)?;
    Ok(ScriptHooks {
        on_invite: hook("on_invite")?,
        on_request: hook("on_request")?,
        on_response: hook("on_response")?,
    })
}

/// Hook names a script may define; anything else starting with `on_` is a typo worth reporting.
const HOOKS: [&str; 3] = ["on_invite", "on_request", "on_response"];

fn check_hook_names(module: &Table, path: &Path) -> Result<(), ScriptError> {
    for pair in module.pairs::<Value, Value>() {
        let (key, _) = pair.map_err(|e| ScriptError::from_lua(&e))?;
        if let Value::String(key) = key {
            let key = key.to_string_lossy();
            if key.starts_with("on_") && !HOOKS.contains(&key.as_str()) {
                return Err(ScriptError {
                    message: format!(
                        "{}: unknown hook '{key}' (known: {})",
                        path.display(),
                        HOOKS.join(", ")
                    ),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
