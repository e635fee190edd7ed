//! Lua rules (mlua, Lua 5.4): loading, sandboxing, hook dispatch and per-hook metrics.
//!
//! Each trunk may name a script: a Lua chunk that returns a table of hook functions. One
//! [`Rules`] is one shard's copy of one rule-set version: a sandboxed Lua state with every
//! script of a profile loaded into it, each script in its own environment. Hooks receive a
//! `call` object and what the hook is about (a message, an SDP, a media event), as userdata
//! borrowed for the duration of the call. An error, an exhausted instruction budget or the
//! memory limit stops only that hook call: it is logged with the script's file:line and the
//! call id, counted, and the call follows its trunk's `on_script_error` policy.

mod api;
mod pattern;
pub mod reload;
mod sandbox;
mod sdp_api;
pub mod unit;

pub use api::{
    is_dtmf_digit, CallEndInfo, DigitVerdict, HookCall, HookMessage, MediaAction, RouteDecision,
};
pub use sandbox::BUDGET_EXCEEDED;
pub use sdp_api::SharedSdp;

use crate::config::{Profile, TrunkId};
use crate::lookup::LookupState;
use crate::media::MediaEvent;
use crate::shared::Leg;
use mlua::{Function, Lua, Table, Value};
use sandbox::{Budget, Modules};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
/// Product model and version, as Lua sees them in `bh.model` and `bh.version`.
pub const MODEL: &str = "SBC";
/// The running version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What stopped a hook or a load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A Lua error (raised by the script or by an API function it called).
    Error,
    /// The hook call ran out of instructions.
    Budget,
    /// The Lua state ran out of memory.
    Memory,
}

/// A script that failed to load, or a hook that failed to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptError {
    /// `file:line: message` as Lua reports it (or the file alone when there is no line).
    pub message: String,
    pub kind: ErrorKind,
}
impl fmt::Display for ScriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ScriptError {}

impl ScriptError {
    fn new(message: String) -> ScriptError {
        ScriptError {
            message,
            kind: ErrorKind::Error,
        }
    }

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
                    kind: inner.kind,
                },
                _ => inner,
            };
        }
        let kind = match err {
            mlua::Error::MemoryError(_) => ErrorKind::Memory,
            _ if err.to_string().contains(BUDGET_EXCEEDED) => ErrorKind::Budget,
            _ => ErrorKind::Error,
        };
        let text = err.to_string();
        let first = text.lines().next().unwrap_or_default();
        let first = first
            .strip_prefix("runtime error: ")
            .or_else(|| first.strip_prefix("syntax error: "))
            .unwrap_or(first);
        ScriptError {
            message: first.to_string(),
            kind,
        }
    }
}

/// A hook a script may define.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// `on_invite(call, req)`: a new call, before it is routed.
    Invite,
    /// `on_request(call, req)`: a request about to be sent.
    Request,
    /// `on_response(call, resp)`: a response about to be sent.
    Response,
    /// `on_sdp(call, sdp, ctx)`: an SDP offer or answer about to be sent on a leg.
    Sdp,
    /// `on_early_media(call, resp)`: the callee sent a provisional response with SDP.
    EarlyMedia,
    /// `on_answer(call, resp)`: the callee answered.
    Answer,
    /// `on_failure(call, resp)`: the callee refused; a rule may route the call again.
    Failure,
    /// `on_media(call, ev)`: a media event (DTMF, RTP timeout, quality report).
    Media,
    /// `on_call_end(call, info)`: the call is over.
    CallEnd,
    /// `on_refer(call, req)`: a peer asks Bridgehead to transfer the call (REFER, on a trunk
    /// with `refer: terminate`); a rule may route the new call or refuse.
    Refer,
}

impl Hook {
    /// Every hook, in declaration order.
    pub const ALL: [Hook; 10] = [
        Hook::Invite,
        Hook::Request,
        Hook::Response,
        Hook::Sdp,
        Hook::EarlyMedia,
        Hook::Answer,
        Hook::Failure,
        Hook::Media,
        Hook::CallEnd,
        Hook::Refer,
    ];

    /// The function name a script defines.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Invite => "on_invite",
            Hook::Request => "on_request",
            Hook::Response => "on_response",
            Hook::Sdp => "on_sdp",
            Hook::EarlyMedia => "on_early_media",
            Hook::Answer => "on_answer",
            Hook::Failure => "on_failure",
            Hook::Media => "on_media",
            Hook::CallEnd => "on_call_end",
            Hook::Refer => "on_refer",
        }
    }
}

/// Upper bounds (µs) of the hook latency histogram buckets; the last bucket is unbounded.
pub const LATENCY_BUCKETS_US: [u64; 8] = [5, 10, 50, 100, 500, 1_000, 10_000, 100_000];

/// Counters of one hook of one script, shared by every shard and kept across reloads.
#[derive(Debug, Default)]
pub struct HookCounters {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
    pub budget_hits: AtomicU64,
    pub memory_hits: AtomicU64,
    pub total_ns: AtomicU64,
    /// Hook calls per latency bucket ([`LATENCY_BUCKETS_US`], then one for slower ones).
    pub buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
}

impl HookCounters {
    fn record(&self, elapsed_ns: u64, error: Option<ErrorKind>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.total_ns.fetch_add(elapsed_ns, Ordering::Relaxed);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|limit| elapsed_ns <= limit * 1000)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let counter = match error {
            None => return,
            Some(ErrorKind::Error) => &self.errors,
            Some(ErrorKind::Budget) => &self.budget_hits,
            Some(ErrorKind::Memory) => &self.memory_hits,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Label pairs of a rule-defined counter, sorted by name.
pub type Labels = Vec<(String, String)>;

/// Metrics of the rule engine: per script and hook, plus the counters rules increment with
/// `bh.metric.inc`. One registry serves every shard and every rule-set version.
#[derive(Debug, Default)]
pub struct RuleMetrics {
    hooks: Mutex<BTreeMap<(PathBuf, Hook), Arc<HookCounters>>>,
    user: Mutex<BTreeMap<(String, Labels), u64>>,
    lookups: Mutex<BTreeMap<String, Arc<LookupState>>>,
    /// The rule-set version new calls take (the reloader sets it).
    pub version: AtomicU64,
    /// Reloads that became current, and reloads refused.
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// The last reloads, newest last.
    history: Mutex<std::collections::VecDeque<Reload>>,
}

/// Reloads [`RuleMetrics::history`] keeps.
const RELOAD_HISTORY: usize = 20;

/// One reload: the version it made current, or the errors it was refused for.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Reload {
    /// RFC 3339.
    pub at: String,
    pub version: Option<u64>,
    pub ok: bool,
    pub errors: Vec<String>,
}

impl RuleMetrics {
    /// A reload made `version` current, or was refused for `errors`: counted and kept in
    /// the history.
    pub fn reloaded(&self, outcome: Result<u64, &[String]>) {
        let reload = Reload {
            at: crate::shared::rfc3339(std::time::SystemTime::now()),
            version: outcome.as_ref().ok().copied(),
            ok: outcome.is_ok(),
            errors: outcome.err().map(<[String]>::to_vec).unwrap_or_default(),
        };
        match outcome {
            Ok(version) => {
                self.version.store(version, Ordering::Relaxed);
                self.reloads.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.push_back(reload);
        if history.len() > RELOAD_HISTORY {
            history.pop_front();
        }
    }

    /// The last reloads, newest last.
    pub fn history(&self) -> Vec<Reload> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.iter().cloned().collect()
    }

    fn counters(&self, script: &Path, hook: Hook) -> Arc<HookCounters> {
        let mut hooks = self.hooks.lock().unwrap_or_else(|e| e.into_inner());
        hooks
            .entry((script.to_path_buf(), hook))
            .or_default()
            .clone()
    }

    /// The counters of every script and hook that has been loaded.
    pub fn hooks(&self) -> Vec<(PathBuf, Hook, Arc<HookCounters>)> {
        let hooks = self.hooks.lock().unwrap_or_else(|e| e.into_inner());
        hooks
            .iter()
            .map(|((path, hook), counters)| (path.clone(), *hook, counters.clone()))
            .collect()
    }

    /// Counters incremented by rules (`bh.metric.inc(name, labels)`), with sorted labels.
    pub fn user_counters(&self) -> Vec<(String, Labels, u64)> {
        let user = self.user.lock().unwrap_or_else(|e| e.into_inner());
        user.iter()
            .map(|((name, labels), value)| (name.clone(), labels.clone(), *value))
            .collect()
    }

    pub(crate) fn inc_user(&self, name: String, labels: Labels, by: u64) {
        let mut user = self.user.lock().unwrap_or_else(|e| e.into_inner());
        *user.entry((name, labels)).or_default() += by;
    }

    /// The process-wide state of the lookup named `name` (its counters, an HTTP lookup's cache),
    /// created on first use: it outlives reloads.
    pub(crate) fn lookup_state(&self, name: &str) -> Arc<LookupState> {
        let mut lookups = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
        lookups.entry(name.to_string()).or_default().clone()
    }

    /// What each lookup rules consulted answered, by lookup name.
    pub fn lookups(&self) -> Vec<(String, Arc<LookupState>)> {
        let lookups = self.lookups.lock().unwrap_or_else(|e| e.into_inner());
        lookups
            .iter()
            .map(|(name, counters)| (name.clone(), counters.clone()))
            .collect()
    }
}

/// An `on_invite` waiting for a lookup's answer (its coroutine, its `call` and `req`).
pub struct SuspendedInvite {
    script: ScriptId,
    id: String,
    thread: mlua::Thread,
    call: mlua::AnyUserData,
    msg: mlua::AnyUserData,
    /// Time the hook ran so far, over its slices.
    elapsed_ns: u64,
}

impl fmt::Debug for SuspendedInvite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SuspendedInvite")
            .field("call", &self.id)
            .finish()
    }
}

/// The lookup an `on_invite` waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitingLookup {
    /// The lookup's name.
    pub name: String,
    pub key: String,
}

/// How far an `on_invite` got.
// Returned once per new call and matched at once: boxing `Done` would allocate per call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum InviteRun {
    /// It ended: the call and the B-leg INVITE as the rule left them (None only if they could
    /// not be taken back from Lua), and the hook's result.
    Done {
        taken: Option<(HookCall, HookMessage)>,
        result: Result<(), ScriptError>,
    },
    /// It waits for a lookup's answer.
    Waiting {
        invite: SuspendedInvite,
        lookup: WaitingLookup,
    },
}

/// One rule-set version as one shard runs it: the profile and the rules compiled from it.
/// Calls keep the version they started with; it is freed when the last of them ends.
pub struct RuleSet {
    /// Increases with every reload that became current (the first version is 1).
    pub version: u64,
    pub profile: Arc<Profile>,
    pub rules: Rules,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("version", &self.version)
            .field("profile", &self.profile.path)
            .finish()
    }
}

impl RuleSet {
    /// Compiles a profile's rules into a version for one shard.
    pub fn load(
        profile: Arc<Profile>,
        version: u64,
        metrics: Arc<RuleMetrics>,
    ) -> Result<Arc<RuleSet>, Vec<ScriptError>> {
        let rules = Rules::load(&profile, metrics)?;
        Ok(Arc::new(RuleSet {
            version,
            profile,
            rules,
        }))
    }
}

/// One loaded script: its hooks and their counters.
struct Script {
    hooks: [Option<Function>; Hook::ALL.len()],
    counters: [Arc<HookCounters>; Hook::ALL.len()],
}

/// Index of a loaded script.
pub type ScriptId = usize;

/// What a hook is called with, besides the call.
pub enum HookArgs<'a> {
    /// A SIP message (on_invite, on_request, on_response, on_early_media, on_answer,
    /// on_failure).
    Message(&'a mut HookMessage),
    /// An SDP offer or answer (on_sdp): the SDP, "offer" or "answer", the leg it is sent on,
    /// and the message carrying it.
    Sdp {
        sdp: SharedSdp,
        kind: &'static str,
        leg: Leg,
        msg: &'a mut HookMessage,
    },
    /// A media event (on_media).
    Media(&'a MediaEvent),
    /// How the call ended (on_call_end).
    CallEnd(&'a CallEndInfo),
}

impl HookArgs<'_> {
    /// The leg the hook is about, as `call.leg` shows it.
    fn leg(&self) -> Option<&'static str> {
        match self {
            HookArgs::Message(msg) => Some(msg.leg.name()),
            HookArgs::Sdp { leg, .. } => Some(leg.name()),
            HookArgs::Media(event) => Some(event.leg().name()),
            HookArgs::CallEnd(_) => None,
        }
    }
}

/// One shard's copy of one rule-set version: every script of a profile, loaded into one
/// sandboxed Lua state.
pub struct Rules {
    lua: Lua,
    budget: Budget,
    scripts: Vec<Script>,
    /// Script of each trunk, by trunk index.
    trunk_script: Vec<Option<ScriptId>>,
    metrics: Arc<RuleMetrics>,
    /// Memory use (bytes) at which the next full collection runs; see [`Rules::collect`].
    collect_at: AtomicU64,
}

impl Rules {
    /// Makes `bh.peer_status` read `health` (the keepalives' view of the trunks' peers).
    pub fn set_peer_health(&self, health: Arc<crate::shared::PeerHealth>) {
        self.lua.set_app_data(health);
    }

    /// Makes `bh.trunk_calls` read `loads` (the calls up on each trunk, process-wide).
    pub fn set_trunk_loads(&self, loads: Arc<crate::shared::TrunkLoads>) {
        self.lua.set_app_data(loads);
    }

    /// Loads the scripts a profile names, counting into `metrics`. Every failing script is
    /// reported with file:line.
    pub fn load(profile: &Profile, metrics: Arc<RuleMetrics>) -> Result<Rules, Vec<ScriptError>> {
        let (lua, budget, bh) =
            rule_state(profile, &metrics).map_err(|e| vec![ScriptError::from_lua(&e)])?;
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
            budget.refill();
            match load_script(&lua, &bh, path) {
                Ok(hooks) => {
                    let counters = Hook::ALL.map(|hook| metrics.counters(path, hook));
                    scripts.push(Script { hooks, counters });
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
        if let Some(mut modules) = lua.app_data_mut::<Modules>() {
            modules.loading = false;
        }
        let collect_at = AtomicU64::new(next_collection(lua.used_memory()));
        Ok(Rules {
            lua,
            budget,
            scripts,
            trunk_script,
            metrics,
            collect_at,
        })
    }

    /// The script that governs calls arriving on this trunk.
    pub fn script_of(&self, trunk: TrunkId) -> Option<ScriptId> {
        self.trunk_script.get(trunk).copied().flatten()
    }

    /// True when the script defines this hook (lets the engine skip building hook objects
    /// when nothing listens).
    pub fn has_hook(&self, script: Option<ScriptId>, hook: Hook) -> bool {
        script
            .and_then(|s| self.scripts.get(s))
            .is_some_and(|s| s.hooks[hook as usize].is_some())
    }

    /// The metrics registry these rules count into.
    pub fn metrics(&self) -> &Arc<RuleMetrics> {
        &self.metrics
    }

    /// Runs a hook if the script defines it. `call` is nil outside calls.
    pub fn run(
        &self,
        script: Option<ScriptId>,
        hook: Hook,
        call: Option<&mut HookCall>,
        args: HookArgs<'_>,
    ) -> Result<(), ScriptError> {
        let Some(script) = script.and_then(|s| self.scripts.get(s)) else {
            return Ok(());
        };
        let Some(function) = &script.hooks[hook as usize] else {
            return Ok(());
        };
        let mut call = call;
        if let Some(call) = call.as_mut() {
            if call.vars.is_none() {
                let vars = self.lua.create_table();
                call.vars = Some(vars.map_err(|e| ScriptError::from_lua(&e))?);
            }
            call.leg = args.leg();
        }
        let call_id = call.as_ref().map(|c| c.id.clone()).unwrap_or_default();
        self.lua.set_app_data(api::CurrentCall(call_id));
        self.budget.refill();
        let started = Instant::now();
        let mut verdict = api::DigitVerdict::Keep;
        let result = self.lua.scope(|scope| {
            let call = match call.as_deref_mut() {
                Some(call) => Value::UserData(scope.create_userdata_ref_mut(call)?),
                None => Value::Nil,
            };
            match args {
                HookArgs::Message(msg) => {
                    function.call::<()>((call, scope.create_userdata_ref_mut(msg)?))
                }
                HookArgs::Sdp {
                    sdp,
                    kind,
                    leg,
                    msg,
                } => {
                    let ctx = self.lua.create_table()?;
                    ctx.raw_set("kind", kind)?;
                    ctx.raw_set("leg", leg.name())?;
                    ctx.raw_set("msg", scope.create_userdata_ref_mut(msg)?)?;
                    function.call::<()>((call, sdp_api::LuaSdp(sdp), ctx))
                }
                HookArgs::Media(event) => {
                    let returned: Value =
                        function.call((call, api::media_event_table(&self.lua, event)?))?;
                    if matches!(event, MediaEvent::Dtmf { .. }) {
                        verdict = api::DigitVerdict::from_lua(&returned)?;
                    }
                    Ok(())
                }
                HookArgs::CallEnd(info) => function.call::<()>((call, info.to_lua(&self.lua)?)),
            }
        });
        if let Some(call) = call {
            call.digit_verdict = verdict;
        }
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let result = result.map_err(|err| {
            let mut error = ScriptError::from_lua(&err);
            if self.budget.exhausted() {
                error.kind = ErrorKind::Budget;
            }
            error
        });
        script.counters[hook as usize].record(elapsed, result.as_ref().err().map(|e| e.kind));
        self.collect();
        result
    }

    /// Runs `on_invite` in a coroutine of its own, so that a rule can wait for an HTTP lookup
    /// (`bh.lookup`): the hook either finishes (the call and the B-leg INVITE come back) or
    /// waits for a lookup's answer, to be resumed with [`Rules::resume_invite`]. `now` is the
    /// time lookups' caches are read at.
    pub fn run_invite(
        &self,
        script: Option<ScriptId>,
        mut call: HookCall,
        msg: HookMessage,
        now: Instant,
    ) -> InviteRun {
        let function = script
            .and_then(|s| self.scripts.get(s))
            .and_then(|s| s.hooks[Hook::Invite as usize].clone());
        let (Some(script), Some(function)) = (script, function) else {
            return InviteRun::Done {
                taken: Some((call, msg)),
                result: Ok(()),
            };
        };
        let started = (|| {
            if call.vars.is_none() {
                call.vars = Some(self.lua.create_table()?);
            }
            call.leg = Some(Leg::B.name());
            let id = call.id.clone();
            let thread = self.lua.create_thread(function)?;
            let call = self.lua.create_userdata(call)?;
            let msg = self.lua.create_userdata(msg)?;
            Ok::<_, mlua::Error>(SuspendedInvite {
                script,
                id,
                thread,
                call,
                msg,
                elapsed_ns: 0,
            })
        })();
        match started {
            Ok(invite) => {
                let args = (invite.call.clone(), invite.msg.clone());
                self.drive_invite(invite, args, now)
            }
            Err(err) => InviteRun::Done {
                taken: None,
                result: Err(ScriptError::from_lua(&err)),
            },
        }
    }

    /// Resumes an `on_invite` that waited for a lookup, with its answer: the value (None: the
    /// key has none) or why the lookup failed (`"timeout"`, the service's error).
    pub fn resume_invite(
        &self,
        invite: SuspendedInvite,
        answer: Result<Option<String>, String>,
        now: Instant,
    ) -> InviteRun {
        let args = match answer {
            Ok(value) => (value, None),
            Err(why) => (None, Some(why)),
        };
        self.drive_invite(invite, args, now)
    }

    /// Runs the hook's coroutine until it ends or waits for a lookup.
    fn drive_invite(
        &self,
        mut invite: SuspendedInvite,
        args: impl mlua::IntoLuaMulti,
        now: Instant,
    ) -> InviteRun {
        self.lua.set_app_data(api::CurrentCall(invite.id.clone()));
        self.lua.set_app_data(api::InviteSlice {
            now,
            thread: invite.thread.clone(),
            waiting_for: None,
        });
        self.budget.refill();
        let started = Instant::now();
        let resumed = invite.thread.resume::<mlua::MultiValue>(args);
        let slice = self.lua.remove_app_data::<api::InviteSlice>();
        invite.elapsed_ns = invite
            .elapsed_ns
            .saturating_add(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        let result = match resumed {
            Ok(yielded) if invite.thread.status() == mlua::thread::ThreadStatus::Resumable => {
                match slice.and_then(|s| s.waiting_for) {
                    Some(lookup) if api::is_lookup_yield(&self.lua, &yielded) => {
                        self.collect();
                        return InviteRun::Waiting { invite, lookup };
                    }
                    _ => Err(ScriptError::new(format!(
                        "on_invite yielded (only bh.lookup may wait): call {}",
                        invite.id
                    ))),
                }
            }
            Ok(_) => Ok(()),
            Err(err) => {
                let mut error = ScriptError::from_lua(&err);
                if self.budget.exhausted() {
                    error.kind = ErrorKind::Budget;
                }
                Err(error)
            }
        };
        if let Some(script) = self.scripts.get(invite.script) {
            script.counters[Hook::Invite as usize]
                .record(invite.elapsed_ns, result.as_ref().err().map(|e| e.kind));
        }
        let taken = invite
            .call
            .take::<HookCall>()
            .and_then(|call| Ok((call, invite.msg.take::<HookMessage>()?)))
            .ok();
        self.collect();
        InviteRun::Done { taken, result }
    }

    /// Runs a full garbage collection once memory use doubled since the last one. The objects
    /// hooks see are userdata with finalizers, which Lua's emergency collection (the one the
    /// memory limit triggers) cannot free: without this, a busy state would hit its memory
    /// limit with nothing but garbage in it.
    fn collect(&self) {
        let used = self.lua.used_memory() as u64;
        if used < self.collect_at.load(Ordering::Relaxed) {
            return;
        }
        if let Err(err) = self.lua.gc_collect() {
            tracing::warn!("Lua garbage collection failed: {err}");
        }
        self.collect_at
            .store(next_collection(self.lua.used_memory()), Ordering::Relaxed);
    }
}

/// A sandboxed Lua state ready for a profile's scripts: budgeted patterns, the `bh` table, the
/// profile's trunks for the API, and an empty module registry.
fn rule_state(profile: &Profile, metrics: &Arc<RuleMetrics>) -> mlua::Result<(Lua, Budget, Table)> {
    let (lua, budget) = sandbox::new_state(&profile.limits)?;
    pattern::install(&lua, &budget)?;
    let bh = api::bh_table(&lua)?;
    api::install_app_data(&lua, profile, metrics.clone())?;
    lua.set_app_data(Modules::new());
    Ok((lua, budget, bh))
}

/// Memory use at which to collect next: twice the live data, at least 4 MiB.
fn next_collection(live: usize) -> u64 {
    (live as u64 * 2).max(4 * 1024 * 1024)
}

fn load_script(
    lua: &Lua,
    bh: &Table,
    path: &Path,
) -> Result<[Option<Function>; Hook::ALL.len()], ScriptError> {
    let source = std::fs::read(path).map_err(|err| {
        ScriptError::new(format!("{}: cannot read script: {err}", path.display()))
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let env = sandbox::script_env(lua, bh, dir).map_err(|e| ScriptError::from_lua(&e))?;
    let module: Value = lua
        .load(&source[..])
        .set_name(format!("@{}", path.display()))
        .set_environment(env)
        .eval()
        .map_err(|e| ScriptError::from_lua(&e))?;
    let Value::Table(module) = module else {
        return Err(ScriptError::new(format!(
            "{}: the script must return a table of hook functions",
            path.display()
        )));
    };
    check_hook_names(&module, path)?;
    let mut hooks: [Option<Function>; Hook::ALL.len()] = Default::default();
    for hook in Hook::ALL {
        hooks[hook as usize] = match module.raw_get::<Value>(hook.name()) {
            Ok(Value::Nil) => None,
            Ok(Value::Function(f)) => Some(f),
            _ => {
                return Err(ScriptError::new(format!(
                    "{}: '{}' must be a function",
                    path.display(),
                    hook.name()
                )))
            }
        };
    }
    Ok(hooks)
}

/// Anything starting with `on_` that is not a hook is a typo worth reporting.
fn check_hook_names(module: &Table, path: &Path) -> Result<(), ScriptError> {
    for pair in module.pairs::<Value, Value>() {
        let (key, _) = pair.map_err(|e| ScriptError::from_lua(&e))?;
        if let Value::String(key) = key {
            let key = key.to_string_lossy();
            if key.starts_with("on_") && !Hook::ALL.iter().any(|h| h.name() == key) {
                let known: Vec<&str> = Hook::ALL.iter().map(|h| h.name()).collect();
                return Err(ScriptError::new(format!(
                    "{}: unknown hook '{key}' (known: {})",
                    path.display(),
                    known.join(", ")
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
