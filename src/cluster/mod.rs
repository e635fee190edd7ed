//! Past one machine (`cluster` in the profile): the instance's answered calls' state and its
//! heartbeat, in Redis, where the other instances of the cluster can read them; and the
//! takeover of the calls of an instance that died.
//!
//! The shards queue each call's state ([`Replica`], made by the call layer every
//! `cluster.sync_ms` for the calls that changed) and never wait: the writer thread of this
//! module keeps the latest state of every live call, writes what changed in one pipeline
//! (`SET ... PX`, with the call in the instance's set of calls), renews the time to live of
//! them all every third of `state_ttl`, and sets the heartbeat key every `heartbeat_ms` with
//! a life of `dead_after_ms`. When Redis cannot be reached the outage is logged once and
//! counted, calls go on, and once it is back every live call's state is written again.
//!
//! With each heartbeat it looks at the instances it takes over (`takes_over`): one with
//! calls and no heartbeat is dead. The first survivor to claim it (`SET ... NX`) reads its
//! calls' state, hands each to the shard that owns it (`TakeOver`; the shard binds its media
//! ports and carries it on) and removes them from the dead instance's keys. At its first
//! connection it takes its own previous run's calls the same way.
//!
//! Keys (NAME the cluster's, INSTANCE this instance's):
//! - `bridgehead:NAME:instance:INSTANCE`: the heartbeat (JSON: when it started, its calls);
//! - `bridgehead:NAME:calls:INSTANCE`: the set of its calls' ids (A-leg Call-IDs);
//! - `bridgehead:NAME:call:INSTANCE:ID`: one call's state (JSON, `call::replica::CallSnapshot`);
//! - `bridgehead:NAME:load:INSTANCE`: its trunks' calls and rates;
//! - `bridgehead:NAME:bans`: the banned sources;
//! - `bridgehead:NAME:claim:INSTANCE`: which survivor takes a dead instance's calls.

use crate::call::replica::{CallSnapshot, Replica, SNAPSHOT_FORMAT};
use crate::config::ClusterConfig;
use crate::shared::{SharedBans, TrunkLoads};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
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

/// How long a claim on a dead instance's calls holds others off (a takeover that failed half
/// way is tried again after it, well within the calls' time to live).
const CLAIM_MS: u64 = 10_000;

/// Where the calls of a dead instance go: the runtime hands each to the shard that owns it.
pub type TakeOver = Arc<dyn Fn(CallSnapshot) + Send + Sync>;

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
    /// Dead instances whose calls this one took over.
    pub takeovers: AtomicU64,
    /// Calls of dead instances handed to the shards to carry on.
    pub taken_over: AtomicU64,
}

/// The shards' side of the writer.
pub struct Cluster {
    queue: Mutex<Vec<Replica>>,
    queued: Condvar,
    /// Lets the writer reach Redis ([`Cluster::serve`]).
    go: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    pub stats: Arc<ClusterStats>,
    /// How often the shards look for changed calls.
    pub sync: Duration,
}

impl Cluster {
    /// Starts the writer thread, which waits for [`Cluster::serve`] before it reaches Redis
    /// (which need not be up); the calls of dead instances it takes over go to `take_over`.
    /// `holds`: the addresses the far ends reach this instance on (its listeners' and its
    /// media's): it takes calls over only while its machine has them all.
    pub fn start(
        config: &ClusterConfig,
        take_over: TakeOver,
        (loads, bans): (Arc<TrunkLoads>, Arc<SharedBans>),
        holds: Vec<IpAddr>,
    ) -> std::io::Result<Arc<Cluster>> {
        let client = redis::Client::open(config.redis.as_str())
            .map_err(|err| std::io::Error::other(err.to_string()))?;
        let (go, serve) = std::sync::mpsc::channel();
        let cluster = Arc::new(Cluster {
            queue: Mutex::new(Vec::new()),
            queued: Condvar::new(),
            go: Mutex::new(Some(go)),
            stats: Arc::new(ClusterStats::default()),
            sync: Duration::from_millis(config.sync_ms.into()),
        });
        let writer = Writer {
            client,
            keys: Keys::new(config),
            heartbeat: Duration::from_millis(config.heartbeat_ms.into()),
            takes_over: config.takes_over.clone(),
            holds,
            held: None,
            dead_after_ms: config.dead_after_ms,
            ttl_ms: u64::from(config.state_ttl) * 1000,
            started_unix_ms: unix_ms(),
            connection: None,
            beat_now: true,
            adopted: false,
            reached: false,
            unreachable_logged: false,
            take_over,
            loads,
            bans,
            admitted: HashMap::new(),
            live: HashMap::new(),
            dirty: HashSet::new(),
            removed: HashSet::new(),
        };
        let shared = cluster.clone();
        std::thread::Builder::new()
            .name("cluster".into())
            .spawn(move || {
                // Nothing is read or taken over before the process runs (the process may
                // still fail to start).
                if serve.recv().is_ok() {
                    writer.run(&shared);
                }
            })?;
        Ok(cluster)
    }

    /// The process runs: the writer may reach Redis, take calls over and write.
    pub fn serve(&self) {
        if let Some(go) = lock(&self.go).take() {
            let _ = go.send(());
        }
    }

    /// Queues a call's state for the writer (never waits on Redis). Past [`QUEUE_LIMIT`] a
    /// state is dropped (the call's next change queues it again); a removal never is (it is
    /// small, and a call gone from the writer's table would be kept alive in Redis).
    pub fn send(&self, replica: Replica) {
        let mut queue = lock(&self.queue);
        if queue.len() >= QUEUE_LIMIT && matches!(replica, Replica::Put { .. }) {
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

/// The key names of one instance, and of the others of its cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    cluster: String,
    instance: String,
}

impl Keys {
    pub fn new(config: &ClusterConfig) -> Keys {
        Keys {
            cluster: config.name.clone(),
            instance: config.instance.clone(),
        }
    }

    /// The key of this instance's call `id`.
    pub fn call(&self, id: &str) -> String {
        self.call_of(&self.instance, id)
    }

    /// The key of `instance`'s call `id`.
    pub fn call_of(&self, instance: &str, id: &str) -> String {
        format!("bridgehead:{}:call:{instance}:{id}", self.cluster)
    }

    /// This instance's heartbeat key.
    pub fn heartbeat(&self) -> String {
        self.heartbeat_of(&self.instance)
    }

    /// `instance`'s heartbeat key.
    pub fn heartbeat_of(&self, instance: &str) -> String {
        format!("bridgehead:{}:instance:{instance}", self.cluster)
    }

    /// The key of the set of this instance's calls.
    pub fn calls(&self) -> String {
        self.calls_of(&self.instance)
    }

    /// The key of the set of `instance`'s calls.
    pub fn calls_of(&self, instance: &str) -> String {
        format!("bridgehead:{}:calls:{instance}", self.cluster)
    }

    /// This instance's trunk loads (a hash: `TRUNK:calls`, `TRUNK:rate`).
    fn load(&self) -> String {
        format!("bridgehead:{}:load:{}", self.cluster, self.instance)
    }

    /// The pattern of every instance's trunk loads (instance names hold no `:`, and no
    /// other kind of key starts this way).
    fn every_load(&self) -> String {
        format!("bridgehead:{}:load:*", self.cluster)
    }

    /// The cluster's banned sources (a sorted set, scored with when each ban ends).
    fn bans(&self) -> String {
        format!("bridgehead:{}:bans", self.cluster)
    }

    /// The key whose holder takes `instance`'s calls over.
    fn claim_of(&self, instance: &str) -> String {
        format!("bridgehead:{}:claim:{instance}", self.cluster)
    }
}

/// The writer thread's state.
struct Writer {
    client: redis::Client,
    keys: Keys,
    heartbeat: Duration,
    /// The instances whose calls this one takes over when they die.
    takes_over: Vec<String>,
    /// The addresses this instance must have before it takes calls over.
    holds: Vec<IpAddr>,
    /// Whether this machine had those addresses at the last heartbeat (None: not looked
    /// yet). Without them, no heartbeat and no takeover.
    held: Option<bool>,
    dead_after_ms: u32,
    ttl_ms: u64,
    started_unix_ms: u64,
    connection: Option<redis::Connection>,
    /// The heartbeat goes before anything else (after a reconnection: Redis may have come
    /// back empty, and another instance must not take this one's calls for dead).
    beat_now: bool,
    /// The calls of this instance's previous run were looked for (at the first heartbeat
    /// with the addresses).
    adopted: bool,
    /// Redis answered a whole round since the start.
    reached: bool,
    /// The warning that Redis cannot be reached was logged, and Redis has not answered since.
    unreachable_logged: bool,
    take_over: TakeOver,
    /// The trunks' calls and rates, shared with the other instances.
    loads: Arc<TrunkLoads>,
    /// The sources banned here and by the other instances.
    bans: Arc<SharedBans>,
    /// Each trunk's calls admitted here as last shared, and when.
    admitted: HashMap<String, (u64, Instant)>,
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
            let heartbeat = now >= next_heartbeat || self.beat_now;
            if heartbeat {
                next_heartbeat = now + self.heartbeat;
                self.check_addresses();
            }
            let refresh = now >= next_refresh;
            if refresh {
                next_refresh = now + self.refresh_every();
            }
            // This instance's previous run's calls, before its first heartbeat.
            let adopted = match heartbeat && !self.adopted && self.held == Some(true) {
                true => self.adopt(&cluster.stats),
                false => Ok(()),
            };
            let written = adopted
                .and_then(|()| self.write(heartbeat, &cluster.stats))
                .and_then(|()| match refresh {
                    true => self.refresh(),
                    false => Ok(()),
                });
            // Each heartbeat, the trunks' loads and the bans shared, and a look for dead
            // instances.
            let watched = written.and_then(|()| match heartbeat {
                true => self
                    .share_loads()
                    .and_then(|()| self.share_bans())
                    .and_then(|()| self.watch(&cluster.stats)),
                false => Ok(()),
            });
            match watched {
                Err(err) => self.lost(&err, &cluster.stats),
                // Up once Redis answered a whole round (a server that takes the connection
                // and refuses the commands is not), said at the start and after an outage.
                Ok(()) => {
                    cluster.stats.redis_up.store(1, Ordering::Relaxed);
                    if self.unreachable_logged || !self.reached {
                        self.unreachable_logged = false;
                        self.reached = true;
                        tracing::info!(calls = self.live.len(), "cluster: Redis reached");
                    }
                }
            }
        }
    }

    /// Every live call's time to live is renewed this often.
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
                self.connection = Some(connection);
                self.beat_now = true;
                self.dirty.extend(self.live.keys().cloned());
                true
            }
            Err(err) => {
                self.lost(&err, stats);
                false
            }
        }
    }

    /// Redis failed: logged once until it is reached again (also when it never was since
    /// the start: a wrong address, a refusal), each outage counted once and every failure
    /// counted; the trunks' limits count this instance's calls alone until it is back.
    fn lost(&mut self, err: &redis::RedisError, stats: &ClusterStats) {
        stats.redis_errors.fetch_add(1, Ordering::Relaxed);
        self.connection = None;
        self.loads.set_others(&HashMap::new());
        if stats.redis_up.swap(0, Ordering::Relaxed) == 1 {
            stats.outages.fetch_add(1, Ordering::Relaxed);
        }
        if self.unreachable_logged {
            tracing::debug!("cluster: Redis unreachable: {err}");
        } else {
            self.unreachable_logged = true;
            tracing::warn!(
                calls = self.live.len(),
                "cluster: Redis unreachable ({err}): calls go on, their state is written once it is back"
            );
        }
    }

    /// Writes what changed (and the heartbeat), a pipeline of at most [`PIPELINE`] calls at
    /// a time; what was written is no longer dirty.
    fn write(&mut self, heartbeat: bool, stats: &ClusterStats) -> redis::RedisResult<()> {
        if heartbeat {
            self.beat()?;
        }
        let calls = self.keys.calls();
        // A heartbeat between pipelines too: many calls to write must not let it lapse.
        let mut beat_at = Instant::now() + self.heartbeat;
        while !self.dirty.is_empty() || !self.removed.is_empty() {
            self.beat_when_due(&mut beat_at)?;
            let Some(connection) = self.connection.as_mut() else {
                return Ok(());
            };
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
                    pipe.cmd("SADD").arg(&calls).arg(id).ignore();
                }
                batch.push(id.clone());
            }
            for id in self
                .removed
                .iter()
                .take(PIPELINE - batch.len().min(PIPELINE))
            {
                pipe.cmd("DEL").arg(self.keys.call(id)).ignore();
                pipe.cmd("SREM").arg(&calls).arg(id).ignore();
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

    /// Writes the heartbeat if `beat_at` passed (between pipelines), and when it is next due.
    fn beat_when_due(&mut self, beat_at: &mut Instant) -> redis::RedisResult<()> {
        if Instant::now() >= *beat_at {
            self.beat()?;
            *beat_at = Instant::now() + self.heartbeat;
        }
        Ok(())
    }

    /// Writes the heartbeat, living `dead_after_ms`, while this machine has the addresses
    /// (an instance without them is taken for dead: whoever has them may take its calls).
    fn beat(&mut self) -> redis::RedisResult<()> {
        if self.held != Some(true) {
            return Ok(());
        }
        let Some(connection) = self.connection.as_mut() else {
            return Ok(());
        };
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
        self.beat_now = false;
        Ok(())
    }

    /// Renews the time to live of every live call's state (a key Redis lost, after a restart,
    /// is written again on reconnection), a pipeline of [`PIPELINE`] at a time with
    /// heartbeats between them.
    fn refresh(&mut self) -> redis::RedisResult<()> {
        let ids: Vec<String> = self.live.keys().cloned().collect();
        let mut beat_at = Instant::now() + self.heartbeat;
        for chunk in ids.chunks(PIPELINE) {
            self.beat_when_due(&mut beat_at)?;
            let Some(connection) = self.connection.as_mut() else {
                return Ok(());
            };
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("PEXPIRE")
                    .arg(self.keys.call(id))
                    .arg(self.ttl_ms)
                    .ignore();
            }
            pipe.cmd("PEXPIRE")
                .arg(self.keys.calls())
                .arg(self.ttl_ms)
                .ignore();
            pipe.exec(connection)?;
        }
        Ok(())
    }
}

impl Writer {
    /// Writes this instance's calls and new calls a second per trunk (living as long as its
    /// heartbeat), reads the other instances' and hands their sums to the trunks' limits.
    fn share_loads(&mut self) -> redis::RedisResult<()> {
        let Some(connection) = self.connection.as_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        let key = self.keys.load();
        let mut pipe = redis::pipe();
        for (trunk, calls, admitted) in self.loads.local() {
            let rate = match self.admitted.insert(trunk.clone(), (admitted, now)) {
                Some((before, at)) if now > at => (admitted.saturating_sub(before) as f64
                    / (now - at).as_secs_f64())
                .round() as u32,
                _ => 0,
            };
            pipe.cmd("HSET")
                .arg(&key)
                .arg(format!("{trunk}:calls"))
                .arg(calls)
                .arg(format!("{trunk}:rate"))
                .arg(rate)
                .ignore();
        }
        pipe.cmd("PEXPIRE")
            .arg(&key)
            .arg(self.dead_after_ms)
            .ignore();
        pipe.exec(connection)?;
        let mut others: HashMap<String, (u32, u32)> = HashMap::new();
        for other in scan(connection, &self.keys.every_load())? {
            if other == key {
                continue;
            }
            let fields: HashMap<String, u32> =
                redis::cmd("HGETALL").arg(&other).query(connection)?;
            for (field, value) in fields {
                let Some((trunk, what)) = field.rsplit_once(':') else {
                    continue;
                };
                let sums = others.entry(trunk.to_string()).or_default();
                match what {
                    "calls" => sums.0 += value,
                    "rate" => sums.1 += value,
                    _ => {}
                }
            }
        }
        self.loads.set_others(&others);
        Ok(())
    }

    /// Adds the bans made here to the cluster's (a sorted set: each source scored with when
    /// its ban ends), drops the ended ones, and takes the others' bans.
    fn share_bans(&mut self) -> redis::RedisResult<()> {
        let Some(connection) = self.connection.as_mut() else {
            return Ok(());
        };
        let key = self.keys.bans();
        let (now, now_ms) = (Instant::now(), unix_ms());
        let mut pipe = redis::pipe();
        let announced = self.bans.take_announced();
        for &(ip, until) in &announced {
            let ends = now_ms + until.saturating_duration_since(now).as_millis() as u64;
            pipe.cmd("ZADD")
                .arg(&key)
                .arg("GT")
                .arg(ends)
                .arg(ip.to_string())
                .ignore();
        }
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now_ms)
            .ignore();
        if let Err(err) = pipe.exec(connection) {
            // Shared once Redis is back.
            self.bans.announce_again(announced);
            return Err(err);
        }
        let bans: Vec<(String, u64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg(now_ms)
            .arg("+inf")
            .arg("WITHSCORES")
            .query(connection)?;
        for (ip, ends) in bans {
            if let Ok(ip) = ip.parse() {
                let left = Duration::from_millis(ends.saturating_sub(now_ms));
                self.bans.learn(ip, now + left);
            }
        }
        Ok(())
    }

    /// Looks at the instances this one takes over (`takes_over`): one without a heartbeat is
    /// dead, and the first survivor to claim it takes its calls.
    fn watch(&mut self, stats: &ClusterStats) -> redis::RedisResult<()> {
        if self.held != Some(true) {
            return Ok(());
        }
        for instance in self.takes_over.clone() {
            let Some(connection) = self.connection.as_mut() else {
                return Ok(());
            };
            let alive: bool = redis::cmd("EXISTS")
                .arg(self.keys.heartbeat_of(&instance))
                .query(connection)?;
            if alive {
                continue;
            }
            self.claim_and_take(&instance, stats)?;
        }
        Ok(())
    }

    /// Looks whether this machine has the addresses the far ends reach this instance on (its
    /// listeners' and media's): the far ends of a call send to them, so only the machine that
    /// has them now (keepalived moved them here) may carry calls on. Said when that changes.
    fn check_addresses(&mut self) {
        let missing = missing_address(&self.holds);
        match (missing, self.held) {
            (Some(missing), Some(true) | None) => tracing::warn!(
                %missing,
                "cluster: this machine does not have the address: no heartbeat and no takeover until it does (an instance that has it may take this one's calls)"
            ),
            (None, Some(false)) => {
                tracing::info!("cluster: this machine has its addresses: heartbeat and takeovers")
            }
            _ => {}
        }
        self.held = Some(missing.is_none());
    }

    /// Takes the calls of this instance's previous run (killed, then started again under the
    /// same name), once, when this run has none of its own yet (both are in one set).
    fn adopt(&mut self, stats: &ClusterStats) -> redis::RedisResult<()> {
        if self.live.is_empty() {
            let instance = self.keys.instance.clone();
            self.claim_and_take(&instance, stats)?;
        } else {
            tracing::warn!(
                calls = self.live.len(),
                "cluster: the previous run's calls not looked for: this run has calls already"
            );
        }
        self.adopted = true;
        Ok(())
    }

    /// Claims `instance`'s calls, if it has any (`SET NX`, for [`CLAIM_MS`]) and, if no
    /// other instance holds the claim, takes them; the claim goes once they are taken.
    fn claim_and_take(&mut self, instance: &str, stats: &ClusterStats) -> redis::RedisResult<()> {
        let Some(connection) = self.connection.as_mut() else {
            return Ok(());
        };
        let calls: u64 = redis::cmd("SCARD")
            .arg(self.keys.calls_of(instance))
            .query(connection)?;
        if calls == 0 {
            return Ok(());
        }
        let claimed: Option<String> = redis::cmd("SET")
            .arg(self.keys.claim_of(instance))
            .arg(&self.keys.instance)
            .arg("NX")
            .arg("PX")
            .arg(CLAIM_MS)
            .query(connection)?;
        if claimed.is_none() {
            return Ok(()); // another instance takes them
        }
        if instance == self.keys.instance {
            tracing::warn!("cluster: taking over the calls of this instance's previous run");
        } else {
            tracing::warn!(
                instance,
                "cluster: instance is dead (no heartbeat): taking its calls over"
            );
        }
        self.take_calls_of(instance, stats)?;
        if let Some(connection) = self.connection.as_mut() {
            redis::cmd("DEL")
                .arg(self.keys.claim_of(instance))
                .exec(connection)?;
        }
        Ok(())
    }

    /// Hands the calls of `instance` (dead, or this one's previous run) to the shards and
    /// removes them from its keys.
    fn take_calls_of(&mut self, instance: &str, stats: &ClusterStats) -> redis::RedisResult<()> {
        let Some(connection) = self.connection.as_mut() else {
            return Ok(());
        };
        let set = self.keys.calls_of(instance);
        let ids: Vec<String> = redis::cmd("SMEMBERS").arg(&set).query(connection)?;
        if ids.is_empty() {
            return Ok(());
        }
        let mut taken = 0;
        for chunk in ids.chunks(PIPELINE) {
            let keys: Vec<String> = chunk
                .iter()
                .map(|id| self.keys.call_of(instance, id))
                .collect();
            let states: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&keys).query(connection)?;
            for (id, state) in chunk.iter().zip(states) {
                // None: expired (older than state_ttl).
                let Some(state) = state else { continue };
                match serde_json::from_slice::<CallSnapshot>(&state) {
                    Ok(snapshot) if snapshot.format == SNAPSHOT_FORMAT => {
                        (self.take_over)(snapshot);
                        taken += 1;
                    }
                    Ok(snapshot) => tracing::warn!(
                        call = %id,
                        "cluster: state of format {} (this version reads {SNAPSHOT_FORMAT}): not taken over",
                        snapshot.format
                    ),
                    Err(err) => {
                        tracing::warn!(call = %id, "cluster: unreadable state: {err}")
                    }
                }
            }
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("DEL").arg(key).ignore();
            }
            pipe.cmd("SREM").arg(&set).arg(chunk).ignore();
            pipe.exec(connection)?;
        }
        tracing::info!(instance, calls = taken, "cluster: calls taken over");
        stats.takeovers.fetch_add(1, Ordering::Relaxed);
        stats.taken_over.fetch_add(taken, Ordering::Relaxed);
        Ok(())
    }
}

/// The first of `needed` that no interface of this machine has (the unspecified address and
/// loopback ones always count as had); None when it has them all, or cannot tell.
fn missing_address(needed: &[IpAddr]) -> Option<IpAddr> {
    let local: Vec<IpAddr> = match nix::ifaddrs::getifaddrs() {
        Ok(interfaces) => interfaces
            .filter_map(|interface| interface.address)
            .filter_map(|address| {
                address
                    .as_sockaddr_in()
                    .map(|v4| IpAddr::V4(std::net::SocketAddrV4::from(*v4).ip().to_owned()))
                    .or_else(|| address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                    .map(|ip| ip.to_canonical())
            })
            .collect(),
        Err(err) => {
            tracing::debug!("cluster: cannot list this machine's addresses: {err}");
            return None;
        }
    };
    needed
        .iter()
        .map(IpAddr::to_canonical)
        .find(|ip| !ip.is_unspecified() && !ip.is_loopback() && !local.contains(ip))
}

/// Every key matching `pattern` (SCAN, a hundred at a time).
fn scan(connection: &mut redis::Connection, pattern: &str) -> redis::RedisResult<Vec<String>> {
    let mut found = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(100)
            .query(connection)?;
        found.extend(keys);
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
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
            takes_over: Vec::new(),
        };
        let keys = Keys::new(&config);
        assert_eq!(keys.call("abc@h"), "bridgehead:eu:call:sbc-1:abc@h");
        assert_eq!(keys.heartbeat(), "bridgehead:eu:instance:sbc-1");
        assert_eq!(keys.calls(), "bridgehead:eu:calls:sbc-1");
        assert_eq!(keys.load(), "bridgehead:eu:load:sbc-1");
        assert_eq!(keys.claim_of("sbc-2"), "bridgehead:eu:claim:sbc-2");
        // A Call-ID cannot make a call key look like another kind.
        assert!(!keys.call("x:calls").starts_with("bridgehead:eu:load:"));
    }

    #[test]
    fn a_takeover_waits_for_an_address_no_interface_has() {
        // (An IPv4 address written as IPv6 is the IPv4 one.)
        let had: Vec<IpAddr> = ["127.0.0.1", "0.0.0.0", "::", "::1", "::ffff:127.0.0.1"]
            .iter()
            .map(|ip| ip.parse().expect("address"))
            .collect();
        assert_eq!(missing_address(&had), None);
        // TEST-NET-3 (RFC 5737): no machine has it.
        let absent: IpAddr = "203.0.113.77".parse().expect("address");
        let needed = [had, vec![absent]].concat();
        assert_eq!(missing_address(&needed), Some(absent));
    }
}
