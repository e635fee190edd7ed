//! The sandbox every rule set runs in: safe libraries only, read-only library tables, one
//! environment per script, `require` confined to the script's directory, a memory limit, and an
//! instruction budget per hook call that `pcall` cannot swallow.
//!
//! The budget is a count hook that raises an error once a hook call has run its instructions.
//! Lua code can catch errors, so `pcall`, `xpcall`, `coroutine.resume` and `coroutine.close`
//! are wrapped: when the budget is spent they re-raise whatever they caught, and the error
//! unwinds to Bridgehead. Hooks run from C functions (a `table.sort` comparator, a `gsub`
//! callback) are covered the same way, because an error crosses C frames where a yield cannot.
//! Lua string patterns run inside C where no hook fires; [`super::pattern`] replaces them.

use crate::config::Limits;
use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Instructions between two budget checks.
const BUDGET_STEP: u64 = 1000;

/// The message of the error that stops a hook out of budget.
pub const BUDGET_EXCEEDED: &str = "instruction budget exceeded";

/// The instruction budget of one hook call, shared with the count hook.
#[derive(Clone)]
pub struct Budget {
    used: Arc<AtomicU64>,
    limit: u64,
}

impl Budget {
    /// Starts a new hook call with a full budget.
    pub fn refill(&self) {
        self.used.store(0, Ordering::Relaxed);
    }

    /// True once the current hook call has spent its budget.
    pub fn exhausted(&self) -> bool {
        self.used.load(Ordering::Relaxed) > self.limit
    }

    /// Charges work done outside the Lua VM (pattern matching) to the current hook call.
    pub fn charge(&self, steps: u64) {
        self.used.fetch_add(steps, Ordering::Relaxed);
    }
}

/// Globals every script sees (read-only libraries and safe base functions).
const BASE_FUNCTIONS: [&str; 18] = [
    "assert",
    "error",
    "ipairs",
    "next",
    "pairs",
    "pcall",
    "rawequal",
    "rawget",
    "rawlen",
    "rawset",
    "select",
    "setmetatable",
    "getmetatable",
    "tonumber",
    "tostring",
    "type",
    "xpcall",
    "_VERSION",
];
const LIBRARIES: [&str; 5] = ["string", "table", "math", "utf8", "coroutine"];

/// A fresh Lua state: safe libraries, the memory limit, the budget hook, and the catch
/// wrappers. Scripts get their environments from [`script_env`].
pub fn new_state(limits: &Limits) -> mlua::Result<(Lua, Budget)> {
    let lua = Lua::new_with(
        StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE,
        LuaOptions::default(),
    )?;
    lua.set_memory_limit(limits.script_memory_mb.saturating_mul(1024 * 1024))?;
    let budget = Budget {
        used: Arc::new(AtomicU64::new(0)),
        limit: u64::from(limits.script_instructions),
    };
    let counter = budget.used.clone();
    let limit = budget.limit;
    // A global hook also covers coroutines: Lua threads inherit their creator's hook.
    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(BUDGET_STEP as u32),
        move |_, debug| {
            let used = counter.fetch_add(BUDGET_STEP, Ordering::Relaxed) + BUDGET_STEP;
            if used <= limit {
                return Ok(VmState::Continue);
            }
            // Say where the script was when it ran out, as Lua errors do.
            let source = debug.source();
            let place = match (source.short_src, debug.current_line()) {
                (Some(file), Some(line)) => format!("{file}:{line}: "),
                _ => String::new(),
            };
            Err(mlua::Error::runtime(format!("{place}{BUDGET_EXCEEDED}")))
        },
    )?;
    let spent = budget.clone();
    let exhausted = lua.create_function(move |_, ()| Ok(spent.exhausted()))?;
    let globals = lua.globals();
    let coroutine: Table = globals.get("coroutine")?;
    lua.load(
        r#"
        local exhausted, raw_pcall, raw_xpcall, raw_resume, raw_close, raw_error, co = ...
        local function pass(ok, ...)
          if not ok and exhausted() then raw_error((...), 0) end
          return ok, ...
        end
        pcall = function(...) return pass(raw_pcall(...)) end
        xpcall = function(...) return pass(raw_xpcall(...)) end
        co.resume = function(...) return pass(raw_resume(...)) end
        co.close = function(...) return pass(raw_close(...)) end
        getmetatable("").__metatable = false
        "#,
    )
    .set_name("=bridgehead-sandbox")
    .call::<()>((
        exhausted,
        globals.get::<Function>("pcall")?,
        globals.get::<Function>("xpcall")?,
        coroutine.get::<Function>("resume")?,
        coroutine.get::<Function>("close")?,
        globals.get::<Function>("error")?,
        coroutine,
    ))?;
    Ok((lua, budget))
}

/// A read-only view of `table`: reads go through, writes raise an error.
pub(super) fn read_only(lua: &Lua, table: Table, name: &str) -> mlua::Result<Table> {
    let proxy = lua.create_table()?;
    let meta = lua.create_table()?;
    meta.set("__index", table)?;
    let name = name.to_string();
    meta.set(
        "__newindex",
        lua.create_function(move |_, (_, key): (Value, Value)| -> mlua::Result<()> {
            Err(mlua::Error::runtime(format!(
                "{name} is read-only (cannot set {})",
                key.to_string().unwrap_or_default()
            )))
        })?,
    )?;
    meta.set("__metatable", false)?;
    proxy.set_metatable(Some(meta))?;
    Ok(proxy)
}

/// Modules loaded by `require`, by canonical path, shared by the scripts of one state.
pub struct Modules {
    loaded: HashMap<PathBuf, Value>,
    /// False once the rule set has loaded: `require` then only returns modules already loaded.
    pub loading: bool,
}

impl Modules {
    /// An empty registry, open for loading.
    pub fn new() -> Modules {
        Modules {
            loaded: HashMap::new(),
            loading: true,
        }
    }
}

/// The environment of one script (or module): its own globals, read-only libraries and `bh`,
/// the safe base functions, and a `require` that loads `NAME.lua` (dots are directories) from
/// `dir` and nowhere else.
pub fn script_env(lua: &Lua, bh: &Table, dir: &Path) -> mlua::Result<Table> {
    let globals = lua.globals();
    let env = lua.create_table()?;
    for name in BASE_FUNCTIONS {
        env.raw_set(name, globals.raw_get::<Value>(name)?)?;
    }
    for name in LIBRARIES {
        env.raw_set(name, read_only(lua, globals.raw_get(name)?, name)?)?;
    }
    env.raw_set("bh", read_only(lua, bh.clone(), "bh")?)?;
    env.raw_set("_G", env.clone())?;
    let dir = dir.to_path_buf();
    let bh = bh.clone();
    env.raw_set(
        "require",
        lua.create_function(move |lua, name: String| require(lua, &bh, &dir, &name))?,
    )?;
    Ok(env)
}

fn require(lua: &Lua, bh: &Table, dir: &Path, name: &str) -> mlua::Result<Value> {
    let valid = !name.is_empty()
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if !valid {
        return Err(mlua::Error::runtime(format!(
            "require: '{name}' is not a module name (letters, digits, _ and -, dots for directories)"
        )));
    }
    let relative: PathBuf = name.split('.').collect::<PathBuf>().with_extension("lua");
    let path = dir.join(&relative);
    let not_found = || {
        mlua::Error::runtime(format!(
            "require: module '{name}' not found ({} does not exist)",
            path.display()
        ))
    };
    let root = dir.canonicalize().map_err(|_| not_found())?;
    let canonical = path.canonicalize().map_err(|_| not_found())?;
    if !canonical.starts_with(&root) {
        return Err(mlua::Error::runtime(format!(
            "require: module '{name}' resolves outside the rule directory {}",
            root.display()
        )));
    }
    let loading = {
        let modules = lua
            .app_data_ref::<Modules>()
            .ok_or_else(|| mlua::Error::runtime("require: no module registry"))?;
        if let Some(value) = modules.loaded.get(&canonical) {
            return Ok(value.clone());
        }
        modules.loading
    };
    if !loading {
        return Err(mlua::Error::runtime(format!(
            "require: module '{name}' must be required while the script loads, not in a hook"
        )));
    }
    let source = std::fs::read(&canonical).map_err(|err| {
        mlua::Error::runtime(format!("require: cannot read {}: {err}", path.display()))
    })?;
    let env = script_env(lua, bh, canonical.parent().unwrap_or(&root))?;
    let value: Value = lua
        .load(&source[..])
        .set_name(format!("@{}", path.display()))
        .set_environment(env)
        .eval()?;
    // A module that returns nothing is remembered as `true`, as Lua's own require does.
    let value = if value.is_nil() {
        Value::Boolean(true)
    } else {
        value
    };
    if let Some(mut modules) = lua.app_data_mut::<Modules>() {
        modules.loaded.insert(canonical, value.clone());
    }
    Ok(value)
}
