//! Versioned hot reload: compile a whole new version (profile and every script, one Lua state
//! per shard) before anything changes, and watch the profile and rule directories.
//!
//! A version becomes current only when everything in it loads. What cannot change while
//! running (listeners, the number of shards) is reported as needing a restart and kept as it
//! runs; trunks, peers, routes, header policies, scripts and limits take effect for new calls.

use super::ScriptError;
use super::{RuleMetrics, RuleSet};
use crate::config::{ConfigError, Profile};
use notify::{EventKind, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a new version was refused (the running one stays). Each says its place:
/// `file:line: message`.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The profile does not load.
    #[error("{0}")]
    Profile(ConfigError),
    /// The profile loads but cannot be put to use (its TLS settings cannot be built).
    #[error("{}: {message}", profile.display())]
    Unusable { profile: PathBuf, message: String },
    /// A trunk names a running listener that lacks its transport.
    #[error("{}: trunk '{trunk}': running listener '{listener}' has no {transport:?} transport (restart to change listeners)", profile.display())]
    ListenerTransport {
        profile: PathBuf,
        trunk: String,
        listener: String,
        transport: crate::config::Transport,
    },
    /// A trunk names a listener that is not running.
    #[error("{}: trunk '{trunk}' uses listener '{listener}', which is not running (restart to add listeners)", profile.display())]
    ListenerNotRunning {
        profile: PathBuf,
        trunk: String,
        listener: String,
    },
    /// A script does not compile.
    #[error("{0}")]
    Script(ScriptError),
}

/// A compiled version, one rule set per shard, and what it could not apply live.
pub struct Compiled {
    pub shards: Vec<Arc<RuleSet>>,
    /// Changes that need a restart (they are not applied).
    pub restart_needed: Vec<String>,
    /// When the version should be compiled again (its trunk peers' names expire then).
    pub recompile_after: Option<std::time::Duration>,
}

/// Compiles the profile at `path` as version `version` for `shards` shards, keeping the
/// listeners of `running`; `prepare` completes the profile once read (resolves its peer
/// names, checks its TLS settings build) and says when to compile again, or why the profile
/// cannot be used. Errors are `file:line: message`.
pub fn compile(
    path: &Path,
    (running, prepare): (
        &Profile,
        impl FnOnce(&mut Profile) -> Result<Option<std::time::Duration>, String>,
    ),
    shards: usize,
    version: u64,
    metrics: &Arc<RuleMetrics>,
) -> Result<Compiled, Vec<ReloadError>> {
    let mut profile = Profile::load(path).map_err(|errors| {
        errors
            .into_iter()
            .map(ReloadError::Profile)
            .collect::<Vec<_>>()
    })?;
    let recompile_after = prepare(&mut profile).map_err(|message| {
        vec![ReloadError::Unusable {
            profile: path.to_path_buf(),
            message,
        }]
    })?;
    let mut restart_needed = Vec::new();
    for listener in &profile.listeners {
        match running.listeners.iter().find(|l| l.name == listener.name) {
            None => restart_needed.push(format!("new listener '{}'", listener.name)),
            Some(old) if old != listener => {
                restart_needed.push(format!("listener '{}' changed", listener.name));
            }
            Some(_) => {}
        }
    }
    for old in &running.listeners {
        if !profile.listeners.iter().any(|l| l.name == old.name) {
            restart_needed.push(format!("listener '{}' removed", old.name));
        }
    }
    // Trunks name listeners; point them at the running ones (same order as the sockets).
    let mut errors = Vec::new();
    for trunk in &mut profile.trunks {
        let name = &profile.listeners[trunk.listener].name;
        match running.listeners.iter().position(|l| &l.name == name) {
            Some(index) => {
                let running_listener = &running.listeners[index];
                if !running_listener.transports.contains(&trunk.transport) {
                    errors.push(ReloadError::ListenerTransport {
                        profile: path.to_path_buf(),
                        trunk: trunk.name.clone(),
                        listener: name.clone(),
                        transport: trunk.transport,
                    });
                }
                trunk.listener = index;
            }
            None => errors.push(ReloadError::ListenerNotRunning {
                profile: path.to_path_buf(),
                trunk: trunk.name.clone(),
                listener: name.clone(),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    profile.listeners = running.listeners.clone();
    if profile.media != running.media {
        restart_needed.push("media changed".to_string());
        profile.media = running.media.clone();
    }
    if profile.cluster != running.cluster {
        restart_needed.push("cluster changed".to_string());
        profile.cluster = running.cluster.clone();
    }
    if profile.shards != running.shards {
        restart_needed.push("shards changed".to_string());
        profile.shards = running.shards;
    }
    if profile.admin != running.admin {
        restart_needed.push("admin changed".to_string());
        profile.admin = running.admin.clone();
    }
    if profile.capture != running.capture {
        restart_needed.push("capture changed".to_string());
        profile.capture = running.capture.clone();
    }
    if profile.cdr != running.cdr || profile.short_call_seconds != running.short_call_seconds {
        restart_needed.push("cdr or short_call_seconds changed".to_string());
        profile.cdr = running.cdr.clone();
        profile.short_call_seconds = running.short_call_seconds;
    }
    let profile = Arc::new(profile);
    let mut sets = Vec::with_capacity(shards);
    for _ in 0..shards {
        sets.push(
            RuleSet::load(profile.clone(), version, metrics.clone()).map_err(|errors| {
                errors
                    .into_iter()
                    .map(ReloadError::Script)
                    .collect::<Vec<_>>()
            })?,
        );
    }
    Ok(Compiled {
        shards: sets,
        restart_needed,
        recompile_after,
    })
}

/// The data files a profile names (TLS certificates, keys and CAs, lookup CSVs), as the watcher
/// sees them: each as named (its folder resolved, the file itself not: a symlink that a renewal
/// points elsewhere, as certbot's `live/` links and Kubernetes secrets are) and as the file it
/// leads to.
fn data_files(profile: &Profile) -> Vec<PathBuf> {
    let listeners = profile.listeners.iter().filter_map(|l| l.tls.as_ref());
    let listener_files = listeners.flat_map(|tls| {
        [
            Some(&tls.certificate),
            Some(&tls.key),
            tls.client_ca.as_ref(),
        ]
    });
    let trunk_files = profile.trunks.iter().map(|t| t.tls.ca.as_ref());
    let lookup_files = profile.lookups.iter().map(|l| l.csv.as_ref());
    listener_files
        .chain(trunk_files)
        .chain(lookup_files)
        .flatten()
        .flat_map(|file| {
            let named = match (file.parent(), file.file_name()) {
                (Some(dir), Some(name)) => dir
                    .canonicalize()
                    .map(|dir| dir.join(name))
                    .unwrap_or_else(|_| file.clone()),
                _ => file.clone(),
            };
            let target = file.canonicalize().unwrap_or_else(|_| file.clone());
            [named, target]
        })
        .collect()
}

/// Directories to watch for a profile: its own, each script's (recursively, for modules), and
/// each data file's.
pub fn watched_dirs(profile: &Profile) -> Vec<(PathBuf, RecursiveMode)> {
    let mut dirs: Vec<(PathBuf, RecursiveMode)> = Vec::new();
    let mut add = |dir: &Path, mode| {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        match dirs.iter_mut().find(|(d, _)| *d == dir) {
            Some(entry) if mode == RecursiveMode::Recursive => entry.1 = mode,
            Some(_) => {}
            None => dirs.push((dir, mode)),
        }
    };
    if let Some(dir) = profile.path.parent() {
        add(dir, RecursiveMode::NonRecursive);
    }
    for trunk in &profile.trunks {
        if let Some(dir) = trunk.script.as_ref().and_then(|s| s.parent()) {
            add(dir, RecursiveMode::Recursive);
        }
    }
    for file in data_files(profile) {
        if let Some(dir) = file.parent() {
            add(dir, RecursiveMode::NonRecursive);
        }
    }
    dirs
}

/// True for an event that may change a rule set: a profile, Lua or CSV file, or a data file
/// (one of `data_files`) written, created, renamed or removed (editor temp and swap files are ignored;
/// their rename onto the real name is what counts).
fn is_relevant(event: &notify::Event, data_files: &[PathBuf]) -> bool {
    let kind_matters = matches!(
        event.kind,
        EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Remove(_)
            | EventKind::Access(notify::event::AccessKind::Close(
                notify::event::AccessMode::Write
            ))
    );
    kind_matters
        && event.paths.iter().any(|path| {
            matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("lua" | "yaml" | "yml" | "csv")
            ) || data_files.contains(path)
        })
}

/// Watches the directories of `profile`; `changed` is called (from the watcher's thread) for
/// every relevant event. The watcher stops when the returned value is dropped.
pub fn watch(
    profile: &Profile,
    changed: impl Fn() + Send + 'static,
) -> notify::Result<notify::RecommendedWatcher> {
    let data_files = data_files(profile);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| is_relevant(&event, &data_files)) {
            changed();
        }
    })?;
    for (dir, mode) in watched_dirs(profile) {
        watcher.watch(&dir, mode)?;
    }
    Ok(watcher)
}
