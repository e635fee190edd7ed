//! Past one machine (`cluster` in the profile): the instance's answered calls' state and its
//! heartbeat, in Redis, where the other instances of the cluster can read them.
//!
//! The shards queue each call's state ([`Replica`], made by the call layer every
//! `cluster.sync_ms` for the calls that changed) and never wait: the writer thread of this
//! module keeps the latest state of every live call, writes what changed in one pipeline
//! (`SET ... PX`, with the call in the instance's set of calls), refreshes the time to live of
//! them all every third of `state_ttl`, and sets the heartbeat key every `heartbeat_ms` with
//! a life of `dead_after_ms`. When Redis cannot be reached the outage is logged once and
//! counted, calls go on, and once it is back every live call's state is written again.
//!
//! Keys (NAME the cluster's, INSTANCE this instance's):
//! - `bridgehead:NAME:instance:INSTANCE`: the heartbeat (JSON: when it started, its calls);
//! - `bridgehead:NAME:INSTANCE:calls`: the set of its calls' ids (A-leg Call-IDs);
//! - `bridgehead:NAME:INSTANCE:call:ID`: one call's state (JSON, `call::replica::CallSnapshot`).

use crate::call::replica::Replica;
use crate::config::ClusterConfig;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the writer waits for Redis to connect or answer.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// The pause between two attempts to reach Redis while it is down.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// The most commands in one pipeline.
const PIPELINE: usize = 1000;
/// The most call states queued for the writer; past that a shard's state is dropped (and
/// counted): it is queued again at its next change, or rewritten after an outage.
const QUEUE_LIMIT: usize = 100_000;

/// What the writer did, for the metrics.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// 1 while Redis answers.
    pub redis_up: AtomicU64,
    /// Commands or connections that failed.
    pub redis_errors: AtomicU64,
    /// Times Redis went from reachable to not.
    pub outages: AtomicU64,
    /// Call states written (and removed).
    pub writes: AtomicU64,
    /// Calls whose state this instance keeps in Redis now.
    pub calls: AtomicU64,
    /// Call states the shards could not queue (the writer far behind).
    pub dropped: AtomicU64,
}

/// The shards' side of the writer.
pub struct Cluster {
    queue: Mutex<Vec<Replica>>,
    queued: Condvar,
    pub stats: Arc<ClusterStats>,
    /// How often the shards look for changed calls.
    pub sync: Duration,
}

impl Cluster {
    /// Starts the writer thread (Redis need not be up).
    pub fn start(config: &ClusterConfig) -> std::io::Result<Arc<Cluster>> {
        let client = redis::Client::open(config.redis.as_str())
            .map_err(|err| std::io::Error::other(err.to_string()))?;
        let cluster = Arc::new(Cluster {
            queue: Mutex::new(Vec::new()),
            queued: Condvar::new(),
            stats: Arc::new(ClusterStats::default()),
            sync: Duration::from_millis(config.sync_ms.into()),
        });
        let writer = Writer {
            client,
            keys: Keys::new(config),
            heartbeat: Duration::from_millis(config.heartbeat_ms.into()),
            dead_after_ms: config.dead_after_ms,
            ttl_ms: u64::from(config.state_ttl) * 1000,
            started_unix_ms: unix_ms(),
            connection: None,
            live: HashMap::new(),
            dirty: HashSet::new(),
            removed: HashSet::new(),
        };
        let shared = cluster.clone();
        std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || writer.run(&shared))?;
        Ok(cluster)
    }

    /// Queues a call's state for the writer (never waits on Redis).
    pub fn send(&self, replica: Replica) {
        let mut queue = lock(&self.queue);
        if queue.len() >= QUEUE_LIMIT {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.push(replica);
        if queue.len() == 1 {
            self.queued.notify_one();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The key names of one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    heartbeat: String,
    calls: String,
}

impl Keys {
    pub fn new(config: &ClusterConfig) -> Keys {
        Keys {
            prefix: format!("bridgehead:{}:{}:call:", config.name, config.instance),
            heartbeat: format!("bridgehead:{}:instance:{}", config.name, config.instance),
            calls: format!("bridgehead:{}:{}:calls", config.name, config.instance),
        }
    }

    /// The key of call `id`'s state.
    pub fn call(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    /// The heartbeat key.
    pub fn heartbeat(&self) -> &str {
        &self.heartbeat
    }

    /// The key of the set of the instance's calls.
    pub fn calls(&self) -> &str {
        &self.calls
    }
}

/// The writer thread's state.
struct Writer {
    client: redis::Client,
    keys: Keys,
    heartbeat: Duration,
    dead_after_ms: u32,
    ttl_ms: u64,
    started_unix_ms: u64,
    connection: Option<redis::Connection>,
    /// The latest state of every live call.
    live: HashMap<String, Vec<u8>>,
    /// Calls whose state Redis does not have yet.
    dirty: HashSet<String>,
    /// Calls ended whose state Redis still has.
    removed: HashSet<String>,
}

impl Writer {
    fn run(mut self, cluster: &Arc<Cluster>) {
        let mut taken = Vec::new();
        let mut next_heartbeat = Instant::now();
        let mut next_refresh = Instant::now() + self.refresh_every();
        let mut next_attempt = Instant::now();
        // Ends when the process does (the runtime holds the cluster to the end).
        loop {
            {
                let queue = lock(&cluster.queue);
                // Connected: up to the next heartbeat; else up to the next attempt.
                let due = if self.connection.is_some() {
                    next_heartbeat
                } else {
                    next_attempt
                };
                let wait = due.saturating_duration_since(Instant::now());
                let (mut queue, _) = cluster
                    .queued
                    .wait_timeout_while(queue, wait, |q| q.is_empty())
                    .unwrap_or_else(|e| e.into_inner());
                std::mem::swap(&mut *queue, &mut taken);
            }
            for replica in taken.drain(..) {
                match replica {
                    Replica::Put { id, state } => {
                        self.removed.remove(&id);
                        self.dirty.insert(id.clone());
                        self.live.insert(id, state);
                    }
                    Replica::Remove { id } => {
                        self.dirty.remove(&id);
                        if self.live.remove(&id).is_some() {
                            self.removed.insert(id);
                        }
                    }
                }
            }
            cluster
                .stats
                .calls
                .store(self.live.len() as u64, Ordering::Relaxed);
            let now = Instant::now();
            if self.connection.is_none() {
                if now < next_attempt {
                    continue;
                }
                next_attempt = now + RECONNECT_EVERY;
                if !self.connect(&cluster.stats) {
                    continue;
                }
            }
            if now >= next_refresh {
                next_refresh = now + self.refresh_every();
                self.dirty.extend(self.live.keys().cloned());
            }
            let heartbeat = now >= next_heartbeat;
            if heartbeat {
                next_heartbeat = now + self.heartbeat;
            }
            if let Err(err) = self.write(heartbeat, &cluster.stats) {
                self.lost(&err, &cluster.stats);
            }
        }
    }

    /// Every live call's state is written again this often (its time to live renewed).
    fn refresh_every(&self) -> Duration {
        Duration::from_millis(self.ttl_ms / 3)
    }

    /// Connects; once connected after an outage (or at start), every live call's state is
    /// written again.
    fn connect(&mut self, stats: &ClusterStats) -> bool {
        match self.client.get_connection_with_timeout(REDIS_TIMEOUT) {
            Ok(connection) => {
                let timeouts = connection
                    .set_read_timeout(Some(REDIS_TIMEOUT))
                    .and_then(|()| connection.set_write_timeout(Some(REDIS_TIMEOUT)));
                if let Err(err) = timeouts {
                    self.lost(&err, stats);
                    return false;
                }
                tracing::info!(calls = self.live.len(), "cluster: Redis reached");
                self.connection = Some(connection);
                self.dirty.extend(self.live.keys().cloned());
                stats.redis_up.store(1, Ordering::Relaxed);
                true
            }
            Err(err) => {
                self.lost(&err, stats);
                false
            }
        }
    }

    /// Redis failed: logged and counted once per outage (every failure is counted).
    fn lost(&mut self, err: &redis::RedisError, stats: &ClusterStats) {
        stats.redis_errors.fetch_add(1, Ordering::Relaxed);
        self.connection = None;
        if stats.redis_up.swap(0, Ordering::Relaxed) == 1 {
            stats.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                calls = self.live.len(),
                "cluster: Redis unreachable ({err}): calls go on, their state is written once it is back"
            );
        } else {
            tracing::debug!("cluster: Redis unreachable: {err}");
        }
    }

    /// Writes what changed (and the heartbeat), a pipeline of at most [`PIPELINE`] calls at
    /// a time; what was written is no longer dirty.
    fn write(&mut self, heartbeat: bool, stats: &ClusterStats) -> redis::RedisResult<()> {
        let Some(connection) = self.connection.as_mut() else {
            return Ok(());
        };
        if heartbeat {
            let beat = serde_json::json!({
                "started_unix_ms": self.started_unix_ms,
                "at_unix_ms": unix_ms(),
                "calls": self.live.len(),
            })
            .to_string();
            redis::cmd("SET")
                .arg(self.keys.heartbeat())
                .arg(beat)
                .arg("PX")
                .arg(self.dead_after_ms)
                .exec(connection)?;
        }
        while !self.dirty.is_empty() || !self.removed.is_empty() {
            let mut pipe = redis::pipe();
            let mut batch = Vec::new();
            let mut gone = Vec::new();
            for id in self.dirty.iter().take(PIPELINE) {
                if let Some(state) = self.live.get(id) {
                    pipe.cmd("SET")
                        .arg(self.keys.call(id))
                        .arg(state.as_slice())
                        .arg("PX")
                        .arg(self.ttl_ms)
                        .ignore();
                    pipe.cmd("SADD").arg(self.keys.calls()).arg(id).ignore();
                }
                batch.push(id.clone());
            }
            for id in self
                .removed
                .iter()
                .take(PIPELINE - batch.len().min(PIPELINE))
            {
                pipe.cmd("DEL").arg(self.keys.call(id)).ignore();
                pipe.cmd("SREM").arg(self.keys.calls()).arg(id).ignore();
                gone.push(id.clone());
            }
            pipe.exec(connection)?;
            stats
                .writes
                .fetch_add((batch.len() + gone.len()) as u64, Ordering::Relaxed);
            for id in &batch {
                self.dirty.remove(id);
            }
            for id in &gone {
                self.removed.remove(id);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced_by_cluster_and_instance() {
        let config = ClusterConfig {
            redis: "redis://127.0.0.1:6379".into(),
            name: "eu".into(),
            instance: "sbc-1".into(),
            heartbeat_ms: 1000,
            dead_after_ms: 3000,
            state_ttl: 60,
            sync_ms: 200,
        };
        let keys = Keys::new(&config);
        assert_eq!(keys.call("abc@h"), "bridgehead:eu:sbc-1:call:abc@h");
        assert_eq!(keys.heartbeat(), "bridgehead:eu:instance:sbc-1");
        assert_eq!(keys.calls(), "bridgehead:eu:sbc-1:calls");
    }
}
