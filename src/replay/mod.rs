//! The replay harness: whole calls through the real rules and the real sans-IO engine, on a
//! virtual clock, with no sockets. Scenarios (YAML) say what arrives from which trunk and what
//! Bridgehead must send; `--record` writes what it sent as expectations.

pub mod capture;
mod media;
pub mod pcap;
pub mod scenario;

use crate::config::{Profile, TrunkId};
use crate::engine::Engine;
use crate::lookup::{LookupAnswer, LookupRequest};
use crate::media::stream::StreamSettings;
use crate::media::{DtmfMethod, MediaCallId, MediaEvent};
use crate::script::reload;
use crate::script::{RuleMetrics, RuleSet};
use crate::sdp::Sdp;
use crate::shared::{Leg, Peer};
use crate::sip::header::{param, NameAddr};
use crate::sip::{HeaderName, Message, StartLine};
use bytes::Bytes;
use scenario::{Expect, Expectations, HeaderExpect, Loaded, SdpExpect, ServiceStub, Step};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one scenario run found.
#[derive(Debug)]
pub struct Outcome {
    pub path: PathBuf,
    pub name: String,
    /// Steps run (all of them when it passed).
    pub steps: usize,
    /// Empty when it passed; otherwise each failure, with the step and the scenario line.
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Why a scenario or a capture could not be run. Each prints as one line (or one per profile
/// or script error) with its place: `file:line: message`.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{}: no such file or directory", .0.display())]
    NotFound(PathBuf),
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A scenario that does not parse or is not well formed.
    #[error("{}:{line}: {message}", path.display())]
    Scenario {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: cannot write scenario: {message}", path.display())]
    Write { path: PathBuf, message: String },
    #[error("{}", lines(.0))]
    Profile(Vec<crate::config::ConfigError>),
    #[error("{}", lines(.0))]
    Rules(Vec<crate::script::ScriptError>),
    #[error("'{0}' is not NAME=IP[:port]")]
    TrunkSide(String),
    #[error("no trunk named '{trunk}' in {}", profile.display())]
    NoSuchTrunk { trunk: String, profile: PathBuf },
    #[error(transparent)]
    Capture(#[from] capture::CaptureError),
    /// Nothing in the capture came from the sides given; says who did send SIP.
    #[error("{}: no SIP sent from {sides}; SIP senders in the capture: {senders}", capture.display())]
    NoSipFrom {
        capture: PathBuf,
        sides: String,
        senders: String,
    },
}

/// Errors one per line.
fn lines<E: ToString>(errors: &[E]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Scenario files under `paths`: files as given, directories searched (recursively) for YAML
/// files with a top-level `steps:` list.
pub fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ReplayError> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            collect_dir(path, &mut out)?;
        } else if path.is_file() {
            out.push(path.clone());
        } else {
            return Err(ReplayError::NotFound(path.clone()));
        }
    }
    Ok(out)
}

fn collect_dir(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ReplayError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| ReplayError::Read {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_dir(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) && std::fs::read_to_string(&path)
            .is_ok_and(|t| t.starts_with("steps:") || t.contains("\nsteps:"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Runs one scenario file on the profile it names. With `record`, the expectations of every
/// step are replaced by what Bridgehead sent and the file is written back.
pub fn run_file(path: &Path, record: bool) -> Outcome {
    run_file_on(path, record, None)
}

/// [`run_file`], on `profile` instead of the scenario's own `profile:` when one is given (to
/// check a scenario against a candidate profile before it goes live).
pub fn run_file_on(path: &Path, record: bool, profile: Option<&Path>) -> Outcome {
    let started = Instant::now();
    let name = path.display().to_string();
    let loaded = match scenario::load(path) {
        Ok(loaded) => loaded,
        Err(error) => {
            return Outcome {
                path: path.to_path_buf(),
                name,
                steps: 0,
                failures: vec![error.to_string()],
                elapsed: started.elapsed(),
            }
        }
    };
    let name = loaded.scenario.name.clone().unwrap_or(name);
    let mut outcome = Outcome {
        path: path.to_path_buf(),
        name,
        steps: 0,
        failures: Vec::new(),
        elapsed: Duration::ZERO,
    };
    match Replay::new(&loaded, profile) {
        Err(error) => outcome.failures.push(error.to_string()),
        Ok(mut replay) => {
            let mut recorded = loaded.scenario.clone();
            for (index, step) in loaded.scenario.steps.iter().enumerate() {
                let at = format!(
                    "{}:{}: step {}",
                    path.display(),
                    loaded.step_lines.get(index).copied().unwrap_or(0),
                    index + 1
                );
                outcome.steps += 1;
                let sent = match replay.act(step) {
                    Ok(sent) => sent,
                    Err(error) => {
                        outcome.failures.push(format!("{at}: {error}"));
                        break;
                    }
                };
                if record {
                    recorded.steps[index].expect = replay.record(&sent, &step.expect, index + 1);
                    // Nothing sent: `[]` where the step expected media, nothing where it did not.
                    recorded.steps[index].media_out = replay
                        .media
                        .record()
                        .or_else(|| step.media_out.as_ref().map(|_| Vec::new()));
                    // Later steps may reply to what this one saved.
                    replay.remember(&sent, &recorded.steps[index].expect);
                    continue;
                }
                let checked = replay
                    .check(&sent, &step.expect)
                    .and_then(|()| replay.media.check(step.media_out.as_deref()));
                if let Err(error) = checked {
                    outcome.failures.push(format!("{at}: {error}"));
                    break;
                }
            }
            if record && outcome.failures.is_empty() {
                if let Err(error) = scenario::save(path, &recorded) {
                    outcome.failures.push(error.to_string());
                }
            }
        }
    }
    outcome.elapsed = started.elapsed();
    outcome
}

/// Runs scenario files on every core (each scenario has its own engine), on `profile` instead
/// of their own when one is given; outcomes come back in the order of `files`.
pub fn run_all(files: &[PathBuf], record: bool, profile: Option<&Path>) -> Vec<Outcome> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut outcomes: Vec<Option<Outcome>> = files.iter().map(|_| None).collect();
    let results = std::sync::Mutex::new(&mut outcomes);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(file) = files.get(index) else {
                    break;
                };
                let outcome = run_file_on(file, record, profile);
                let mut results = results.lock().unwrap_or_else(|e| e.into_inner());
                results[index] = Some(outcome);
            });
        }
    });
    outcomes.into_iter().flatten().collect()
}

/// A message Bridgehead sent, with where it went.
struct Sent {
    peer: Peer,
    trunk: String,
    msg: Message,
}

impl Sent {
    fn describe(&self) -> String {
        let what = match &self.msg.start {
            StartLine::Request { method, uri } => format!("{method} {uri}"),
            StartLine::Response { status, reason } => format!("{status} {reason}"),
        };
        format!("{what} -> {} ({})", self.trunk, self.peer.addr)
    }

    fn full(&self) -> String {
        let text = String::from_utf8_lossy(&self.msg.to_bytes()).replace("\r\n", "\n");
        let mut out = String::new();
        for line in text.trim_end().lines() {
            let _ = writeln!(out, "      | {line}");
        }
        out
    }
}

/// A running scenario: the engine, the virtual clock, saved messages and variables.
struct Replay {
    dir: PathBuf,
    profile_path: PathBuf,
    profile: Arc<Profile>,
    engine: Engine,
    metrics: Arc<RuleMetrics>,
    version: u64,
    now: Instant,
    vars: HashMap<String, String>,
    saved: HashMap<String, Sent>,
    last_call: Option<String>,
    /// The relay's streams on the virtual clock.
    media: media::MediaPlane,
    /// How each HTTP lookup's stand-in service answers.
    services: BTreeMap<String, ServiceStub>,
    /// Answers the stand-in services owe the engine: when, to which request, what.
    lookup_answers: Vec<(Instant, u64, LookupAnswer)>,
}

/// The seed of every replay: a scenario run twice sends the same bytes (tags, branches,
/// Call-IDs, SRTP keys).
pub const REPLAY_SEED: u64 = 0x6272_6964_6765;

/// An engine for one replay: one shard, random values from [`REPLAY_SEED`].
pub fn seeded_engine(rules: Arc<RuleSet>) -> Engine {
    let mut engine = Engine::new(rules, 0, 1);
    engine.seed_random(REPLAY_SEED);
    engine
}

impl Replay {
    fn new(loaded: &Loaded, profile: Option<&Path>) -> Result<Replay, ReplayError> {
        let dir = loaded.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let profile_path = match profile {
            Some(path) => path.to_path_buf(),
            None => dir.join(
                loaded
                    .scenario
                    .profile
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("profile.yaml")),
            ),
        };
        let mut profile = Profile::load(&profile_path).map_err(ReplayError::Profile)?;
        for (name, entries) in &loaded.scenario.lookups {
            let entries = entries.clone().into_iter().collect();
            crate::lookup::stub(&mut profile.lookups, name, entries);
        }
        let profile = Arc::new(profile);
        let metrics = Arc::new(RuleMetrics::default());
        let rules =
            RuleSet::load(profile.clone(), 1, metrics.clone()).map_err(ReplayError::Rules)?;
        let mut vars: HashMap<String, String> = loaded.scenario.vars.clone().into_iter().collect();
        vars.insert("version".to_string(), crate::script::VERSION.to_string());
        let now = Instant::now();
        let mut engine = seeded_engine(rules);
        engine.start(now);
        let media = media::MediaPlane::new(profile.media.as_ref().map(|m| m.address));
        Ok(Replay {
            dir,
            profile_path,
            profile,
            engine,
            metrics,
            version: 1,
            now,
            vars,
            saved: HashMap::new(),
            last_call: None,
            media,
            services: loaded.scenario.lookup_service.clone(),
            lookup_answers: Vec::new(),
        })
    }

    /// Runs a step's action; returns what Bridgehead sent meanwhile.
    fn act(&mut self, step: &Step) -> Result<Vec<Sent>, String> {
        self.media.new_step();
        if let Some(send) = &step.send {
            let text = match (&send.sip, &send.file) {
                (Some(text), None) => text.clone(),
                (None, Some(file)) => std::fs::read_to_string(self.dir.join(file))
                    .map_err(|err| format!("cannot read {}: {err}", file.display()))?,
                _ => return Err("send needs exactly one of sip or file".into()),
            };
            let trunk = self.trunk(&send.from)?;
            let peer = self.peer_of(trunk, send.peer.as_deref())?;
            let text = self.expand(&text)?;
            self.deliver(peer, &text)?;
        } else if let Some(reply) = &step.reply {
            let saved = self
                .saved
                .get(&reply.to)
                .ok_or_else(|| format!("no saved message '{}' to reply to", reply.to))?;
            let mut headers = Vec::new();
            for (name, value) in &reply.headers {
                headers.push((name.clone(), self.expand(value)?));
            }
            let sdp = reply.sdp.as_deref().map(|s| self.expand(s)).transpose()?;
            let text = response_text(saved, reply, &headers, sdp.as_deref());
            let peer = saved.peer;
            self.deliver(peer, &text)?;
        } else if let Some(wait) = &step.wait {
            let duration = parse_duration(wait)?;
            self.advance(duration);
        } else if let Some(media) = &step.media {
            let call = self.call_id(media.call.as_deref())?;
            let leg = media.leg.as_deref().unwrap_or("a");
            let leg = Leg::from_name(leg).ok_or(format!("leg must be a or b, not '{leg}'"))?;
            let event = match media.kind.as_str() {
                "dtmf" => MediaEvent::Dtmf {
                    leg,
                    digit: media
                        .digit
                        .as_deref()
                        .and_then(|d| d.chars().next())
                        .ok_or("a dtmf event needs a digit")?,
                    duration_ms: media.duration.unwrap_or(100),
                    method: match media.method.as_deref().unwrap_or("rfc4733") {
                        "rfc4733" => DtmfMethod::Rfc4733,
                        "inband" => DtmfMethod::Inband,
                        other => {
                            return Err(format!(
                                "a dtmf method is rfc4733 or inband (send a SIP INFO for info), not '{other}'"
                            ))
                        }
                    },
                },
                "rtp_timeout" => MediaEvent::RtpTimeout {
                    leg,
                    seconds: media.seconds.unwrap_or(30),
                },
                "quality" => {
                    let (loss, jitter) = (media.loss.unwrap_or(0.0), media.jitter.unwrap_or(0.0));
                    MediaEvent::Quality {
                        leg,
                        loss_percent: loss,
                        jitter_ms: jitter,
                        rtt_ms: None,
                        mos: crate::media::quality::mos(2.0 * jitter, loss),
                    }
                }
                other => {
                    return Err(format!(
                        "media kind must be dtmf, rtp_timeout or quality, not '{other}'"
                    ))
                }
            };
            if !self.engine.handle_media_event(&call, &event, self.now) {
                return Err(format!("no call '{call}' for the media event"));
            }
        } else if let Some(reload) = &step.reload {
            let path = reload
                .profile
                .as_ref()
                .map_or_else(|| self.profile_path.clone(), |p| self.dir.join(p));
            let next = self.version + 1;
            match reload::compile(&path, (&self.profile, |_| Ok(None)), 1, next, &self.metrics) {
                Ok(mut compiled) if !reload.fails => {
                    let set = compiled.shards.pop().ok_or("reload compiled no shard")?;
                    self.profile = set.profile.clone();
                    self.engine.reload(set);
                    self.version = next;
                }
                Ok(_) => return Err(format!("{}: reload was expected to fail", path.display())),
                Err(errors) if !reload.fails => {
                    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    return Err(format!("reload refused:\n{}", lines.join("\n")));
                }
                Err(_) => {}
            }
        } else if let Some(rtp) = &step.rtp {
            let call = self.call_id(rtp.call.as_deref())?;
            let media_call = self
                .media_call(&call)
                .ok_or_else(|| format!("no call '{call}' for rtp"))?;
            let leg = rtp.leg.as_deref().unwrap_or("a");
            let leg = Leg::from_name(leg).ok_or(format!("leg must be a or b, not '{leg}'"))?;
            let feed = self.media.feed(media_call, leg, rtp, &self.dir)?;
            for (packet, after) in &feed.packets {
                let events = self.media.handle_packet(&feed, packet, self.now);
                self.settle(events);
                self.advance(*after);
            }
        }
        self.settle(Vec::new());
        Ok(self.sent())
    }

    /// The A-leg Call-ID a step names (variables expanded), or the last call's.
    fn call_id(&self, call: Option<&str>) -> Result<String, String> {
        match call {
            Some(call) => self.expand(call),
            None => self
                .last_call
                .clone()
                .ok_or_else(|| "no call yet".to_string()),
        }
    }

    /// The relay's id of the newest call whose A-leg Call-ID is `call_id`.
    fn media_call(&self, call_id: &str) -> Option<MediaCallId> {
        self.engine.media_call(call_id)
    }

    /// What the profile's media settings give each stream when it starts.
    fn stream_settings(&self) -> StreamSettings {
        self.profile
            .media
            .as_ref()
            .map_or_else(StreamSettings::default, |media| StreamSettings {
                strict_source: media.strict_source,
                rtp_timeout: media.rtp_timeout,
            })
    }

    /// Brings the media plane to the present: the engine's media commands carried out,
    /// streams whose moment came run, and the events they (or `events`) saw handed to the
    /// engine, until nothing more follows.
    fn settle(&mut self, mut events: Vec<(MediaCallId, MediaEvent)>) {
        loop {
            for (call, event) in events.drain(..) {
                self.engine.handle_relay_event(call, &event, self.now);
            }
            let mut commanded = false;
            while let Some(command) = self.engine.poll_media() {
                self.media.apply(command, self.stream_settings(), self.now);
                commanded = true;
            }
            while let Some(request) = self.engine.poll_lookup() {
                self.ask_service(request);
                commanded = true;
            }
            if let Some(at) = self
                .lookup_answers
                .iter()
                .position(|(due, ..)| *due <= self.now)
            {
                let (_, id, answer) = self.lookup_answers.remove(at);
                self.engine.handle_lookup_answer(id, answer, self.now);
                commanded = true;
            }
            events = self.media.run_due(self.now);
            if events.is_empty() && !commanded {
                break;
            }
        }
    }

    /// The stand-in service of a lookup takes a request: its answer is owed after the
    /// scenario's latency (never when it hangs), from the lookup's entries.
    fn ask_service(&mut self, request: LookupRequest) {
        let stub = self
            .services
            .get(&request.lookup)
            .cloned()
            .unwrap_or_default();
        if stub.hang {
            return;
        }
        let latency = stub.latency.as_deref().and_then(|l| parse_duration(l).ok());
        let entries = self
            .profile
            .lookups
            .iter()
            .find(|l| l.name == request.lookup);
        let value = entries.and_then(|l| l.entries.get(&request.key)).cloned();
        let answer = match (stub.status.unwrap_or(200), value) {
            (200, Some(value)) => LookupAnswer::Found(value),
            (200 | 404, _) => LookupAnswer::NotFound,
            (status, _) => LookupAnswer::Failed(format!("status {status}")),
        };
        let due = self.now + latency.unwrap_or_default();
        self.lookup_answers.push((due, request.id, answer));
    }

    fn trunk(&self, name: &str) -> Result<TrunkId, String> {
        self.profile
            .trunk_by_name(name)
            .ok_or_else(|| format!("no trunk named '{name}' in {}", self.profile_path.display()))
    }

    fn peer_of(&self, trunk: TrunkId, address: Option<&str>) -> Result<Peer, String> {
        let trunk = &self.profile.trunks[trunk];
        let addr = match address {
            Some(text) => text
                .parse::<SocketAddr>()
                .map_err(|_| format!("peer '{text}' is not IP:port"))?,
            None => *trunk
                .peers
                .first()
                .ok_or_else(|| format!("trunk '{}' has no peer", trunk.name))?,
        };
        Ok(Peer {
            listener: trunk.listener,
            transport: trunk.transport,
            addr,
            conn: None,
        })
    }

    fn deliver(&mut self, peer: Peer, text: &str) -> Result<(), String> {
        let bytes = Bytes::from(crate::sip::wire_text(text));
        if let Ok(msg) = Message::parse(&bytes) {
            let new_call = msg.method() == Some(&crate::sip::Method::Invite)
                && msg
                    .header_str(&HeaderName::To)
                    .is_some_and(|to| !to.contains("tag="));
            if new_call {
                self.last_call = msg.header_str(&HeaderName::CallId).map(str::to_string);
            }
        }
        self.engine.handle_datagram(bytes, peer, self.now);
        Ok(())
    }

    /// Virtual time passes: the engine's timers and the media streams' moments, in order of
    /// time (the engine first at one instant), each followed by what it leads to.
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        loop {
            let engine = self.engine.poll_timeout();
            let answer = self.lookup_answers.iter().map(|(due, ..)| *due).min();
            let next = [engine, self.media.poll_timeout(), answer]
                .into_iter()
                .flatten()
                .min();
            let Some(at) = next.filter(|at| *at <= until) else {
                break;
            };
            self.now = at.max(self.now);
            if engine.is_some_and(|due| due <= self.now) {
                self.engine.handle_timeout(self.now);
            }
            self.settle(Vec::new());
        }
        self.now = until;
    }

    fn sent(&mut self) -> Vec<Sent> {
        let mut out = Vec::new();
        while let Some(transmit) = self.engine.poll_transmit() {
            let Ok(msg) = Message::parse(&transmit.bytes) else {
                continue;
            };
            let trunk = self
                .profile
                .trunk_for(transmit.peer.listener, transmit.peer.addr.ip())
                .map_or_else(
                    || format!("?{}", transmit.peer.addr),
                    |t| self.profile.trunks[t].name.clone(),
                );
            out.push(Sent {
                peer: transmit.peer,
                trunk,
                msg,
            });
        }
        out
    }

    /// Replaces `${var}`, `${saved.Header}`, `${saved.Header;param}`, `${saved.uri}`.
    fn expand(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unterminated ${{ in '{text}'"))?;
            out.push_str(&self.lookup(&after[..end])?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn lookup(&self, key: &str) -> Result<String, String> {
        if let Some(value) = self.vars.get(key) {
            return Ok(value.clone());
        }
        let (name, field) = key
            .split_once('.')
            .ok_or_else(|| format!("unknown variable ${{{key}}}"))?;
        let saved = self
            .saved
            .get(name)
            .ok_or_else(|| format!("unknown variable ${{{key}}} (nothing saved as '{name}')"))?;
        field_of(&saved.msg, field).ok_or_else(|| format!("${{{key}}}: no such field"))
    }

    /// Checks what was sent against a step's expectations.
    fn check(&mut self, sent: &[Sent], expect: &Expectations) -> Result<(), String> {
        let expected: &[Expect] = match expect {
            Expectations::Any(_) => return Ok(()),
            Expectations::None => &[],
            Expectations::List(list) => list,
        };
        let mut report = String::new();
        for (index, exp) in expected.iter().enumerate() {
            let Some(got) = sent.get(index) else {
                let _ = writeln!(
                    report,
                    "  expected #{}: {} -> {}, but nothing more was sent",
                    index + 1,
                    describe_expect(exp),
                    exp.to
                );
                continue;
            };
            // Saves and captures come first: the expectation may refer to them (a tag).
            let mut problems = self.keep(exp, got);
            problems.extend(self.mismatches(exp, got)?);
            if !problems.is_empty() {
                let _ = writeln!(
                    report,
                    "  expected #{}: {} -> {}\n  sent:        {}\n{}{}",
                    index + 1,
                    describe_expect(exp),
                    exp.to,
                    got.describe(),
                    problems
                        .iter()
                        .map(|p| format!("    - {p}\n"))
                        .collect::<String>(),
                    got.full()
                );
            }
        }
        for extra in sent.iter().skip(expected.len()) {
            let _ = writeln!(
                report,
                "  not expected: {}\n{}",
                extra.describe(),
                extra.full()
            );
        }
        if report.is_empty() {
            Ok(())
        } else {
            Err(format!("what Bridgehead sent differs:\n{report}"))
        }
    }

    fn mismatches(&self, exp: &Expect, got: &Sent) -> Result<Vec<String>, String> {
        let mut problems = Vec::new();
        if got.trunk != exp.to {
            problems.push(format!("sent to {}, not {}", got.trunk, exp.to));
        }
        if let Some(peer) = &exp.peer {
            if got.peer.addr.to_string() != *peer {
                problems.push(format!("sent to peer {}, not {peer}", got.peer.addr));
            }
        }
        match (&exp.request, exp.response, &got.msg.start) {
            (Some(method), None, StartLine::Request { method: m, .. }) => {
                if !m.as_str().eq_ignore_ascii_case(method) {
                    problems.push(format!("method {m}, not {method}"));
                }
            }
            (None, Some(status), StartLine::Response { status: s, .. }) => {
                if *s != status {
                    problems.push(format!("status {s}, not {status}"));
                }
            }
            (Some(_), Some(_), _) | (None, None, _) => {
                return Err("an expectation needs exactly one of request or response".into())
            }
            _ => problems.push("a request where a response was expected, or the reverse".into()),
        }
        if let Some(uri) = &exp.uri {
            let uri = self.expand(uri)?;
            let got_uri = field_of(&got.msg, "uri").unwrap_or_default();
            if got_uri != uri {
                problems.push(format!("Request-URI {got_uri}, not {uri}"));
            }
        }
        for (name, expected) in &exp.headers {
            let header = HeaderName::parse(name);
            match expected {
                HeaderExpect::First(value) => {
                    let value = self.expand(value)?;
                    match got.msg.header_str(&header) {
                        Some(v) if v == value => {}
                        Some(v) => problems.push(format!("{name}: {v}, not {value}")),
                        None => problems.push(format!("no {name} (expected {value})")),
                    }
                }
                HeaderExpect::Every(values) => {
                    let wanted = values
                        .iter()
                        .map(|v| self.expand(v))
                        .collect::<Result<Vec<_>, _>>()?;
                    let lines: Vec<String> = got
                        .msg
                        .headers_named(&header)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .collect();
                    if lines != wanted {
                        problems.push(format!("{name}: lines {lines:?}, not {wanted:?}"));
                    }
                }
            }
        }
        for (name, pattern) in &exp.matches {
            let pattern = self.expand(pattern)?;
            let re = compiled(&pattern).map_err(|err| format!("match {name}: bad regex: {err}"))?;
            match got.msg.header_str(&HeaderName::parse(name)) {
                Some(v) if re.is_match(v) => {}
                Some(v) => problems.push(format!("{name}: {v} does not match {pattern}")),
                None => problems.push(format!("no {name} (expected to match {pattern})")),
            }
        }
        for name in &exp.present {
            if got.msg.header(&HeaderName::parse(name)).is_none() {
                problems.push(format!("no {name}"));
            }
        }
        for name in &exp.absent {
            if let Some(v) = got.msg.header_str(&HeaderName::parse(name)) {
                problems.push(format!("{name}: {v} should be absent"));
            }
        }
        if let Some(pattern) = &exp.body {
            let pattern = self.expand(pattern)?;
            let re = compiled(&pattern).map_err(|err| format!("body: bad regex: {err}"))?;
            let body = String::from_utf8_lossy(&got.msg.body);
            if !re.is_match(&body) {
                problems.push(format!("body {body:?} does not match {pattern}"));
            }
        }
        if let Some(sdp) = &exp.sdp {
            problems.extend(sdp_mismatches(sdp, &got.msg));
        }
        Ok(problems)
    }

    /// Expectations that describe what was sent (record mode), keeping the `save` and
    /// `capture` of the expectations they replace.
    fn record(&self, sent: &[Sent], old: &Expectations, step: usize) -> Expectations {
        if sent.is_empty() {
            return Expectations::None;
        }
        let old: &[Expect] = match old {
            Expectations::List(list) => list,
            _ => &[],
        };
        let list = sent
            .iter()
            .enumerate()
            .map(|(index, got)| {
                let mut exp = describe_sent(got);
                match old.get(index) {
                    Some(previous) => {
                        exp.save = previous.save.clone();
                        exp.capture = previous.capture.clone();
                    }
                    // Requests get a name later steps can reply to: `invite_3` (step 3).
                    None => {
                        exp.save = exp
                            .request
                            .as_ref()
                            .filter(|m| *m != "ACK")
                            .map(|m| format!("{}_{step}", m.to_ascii_lowercase()));
                    }
                }
                exp
            })
            .collect();
        Expectations::List(list)
    }

    /// Saves and captures from recorded expectations, so later steps can use them.
    fn remember(&mut self, sent: &[Sent], expect: &Expectations) {
        if let Expectations::List(list) = expect {
            for (exp, got) in list.iter().zip(sent) {
                self.keep(exp, got);
            }
        }
    }

    /// Does what an expectation's `save` and `capture` ask with a sent message; returns the
    /// captures that found nothing.
    fn keep(&mut self, exp: &Expect, got: &Sent) -> Vec<String> {
        if let Some(name) = &exp.save {
            self.saved.insert(name.clone(), clone_sent(got));
        }
        let mut problems = Vec::new();
        for (var, spec) in &exp.capture {
            match field_of(&got.msg, spec) {
                Some(value) => {
                    self.vars.insert(var.clone(), value);
                }
                None => problems.push(format!("capture {var}: no {spec}")),
            }
        }
        problems
    }
}

thread_local! {
    /// Regexes of `match:` expectations, compiled once per thread (scenarios repeat them).
    static REGEXES: std::cell::RefCell<HashMap<String, regex::Regex>> =
        std::cell::RefCell::new(HashMap::new());
}

fn compiled(pattern: &str) -> Result<regex::Regex, regex::Error> {
    REGEXES.with(|cache| {
        if let Some(re) = cache.borrow().get(pattern) {
            return Ok(re.clone());
        }
        let re = regex::Regex::new(pattern)?;
        cache.borrow_mut().insert(pattern.to_string(), re.clone());
        Ok(re)
    })
}

fn clone_sent(sent: &Sent) -> Sent {
    Sent {
        peer: sent.peer,
        trunk: sent.trunk.clone(),
        msg: sent.msg.clone(),
    }
}

fn describe_expect(exp: &Expect) -> String {
    match (&exp.request, exp.response) {
        (Some(method), _) => method.clone(),
        (None, Some(status)) => status.to_string(),
        (None, None) => "?".into(),
    }
}

/// A field of a message: `uri`, `status`, `Header` (first value) or `Header;param`.
fn field_of(msg: &Message, field: &str) -> Option<String> {
    match field {
        "uri" => match &msg.start {
            StartLine::Request { uri, .. } => Some(uri.clone()),
            StartLine::Response { .. } => None,
        },
        "status" => msg.status().map(|s| s.to_string()),
        _ => {
            let (name, wanted) = match field.split_once(';') {
                Some((name, wanted)) => (name, Some(wanted)),
                None => (field, None),
            };
            let value = msg.header_str(&HeaderName::parse(name))?;
            match wanted {
                None => Some(value.to_string()),
                Some(wanted) => {
                    // Parameters follow the URI of a name-addr, or start at the first ';'.
                    let params = match NameAddr::parse(value) {
                        Ok(addr) if addr.bracketed => addr.params,
                        _ => value.find(';').map_or("", |at| &value[at..]),
                    };
                    param(params, wanted).map(str::to_string)
                }
            }
        }
    }
}

fn sdp_mismatches(exp: &SdpExpect, msg: &Message) -> Vec<String> {
    let sdp = match Sdp::parse(&msg.body) {
        Ok(sdp) => sdp,
        Err(err) => return vec![format!("no SDP body: {err}")],
    };
    let kind = exp.media.as_deref().unwrap_or("audio");
    let Some(media) = sdp.media().iter().find(|m| m.kind() == kind) else {
        return vec![format!("no m={kind} section")];
    };
    let mut problems = Vec::new();
    if let Some(codecs) = &exp.codecs {
        let got: Vec<String> = media.codecs().into_iter().map(|c| c.name).collect();
        let same = got.len() == codecs.len()
            && got
                .iter()
                .zip(codecs)
                .all(|(g, e)| g.eq_ignore_ascii_case(e));
        if !same {
            problems.push(format!("codecs {got:?}, not {codecs:?}"));
        }
    }
    if let Some(direction) = &exp.direction {
        if media.direction().as_str() != direction {
            problems.push(format!(
                "direction {}, not {direction}",
                media.direction().as_str()
            ));
        }
    }
    if let Some(address) = &exp.connection {
        let got = media.connection().map(|c| c.address).unwrap_or_default();
        if got != *address {
            problems.push(format!("connection {got}, not {address}"));
        }
    }
    if let Some(port) = exp.port {
        if media.port() != port {
            problems.push(format!("port {}, not {port}", media.port()));
        }
    }
    // `name`, or `name:value` for one attribute of that name with that value.
    let has = |wanted: &str| {
        let (name, value) = match wanted.split_once(':') {
            Some((name, value)) => (name, Some(value)),
            None => (wanted, None),
        };
        let mut values = media
            .attributes(name)
            .into_iter()
            .chain(sdp.attributes(name));
        match value {
            Some(value) => values.any(|v| v == Some(value)),
            None => values.next().is_some(),
        }
    };
    for wanted in &exp.attributes {
        if !has(wanted) {
            problems.push(format!("no a={wanted}"));
        }
    }
    for wanted in &exp.absent_attributes {
        if has(wanted) {
            problems.push(format!("a={wanted} should be absent"));
        }
    }
    if let Some(wanted) = exp.crypto {
        if media.crypto().is_empty() == wanted {
            problems.push(if wanted {
                "no a=crypto".to_string()
            } else {
                "a=crypto should be absent".to_string()
            });
        }
    }
    problems
}

/// Headers whose values Bridgehead generates afresh each run (not recorded as equalities).
const VOLATILE: [&str; 5] = ["Via", "Call-ID", "From", "To", "Content-Length"];

/// An expectation describing one sent message (record mode).
fn describe_sent(sent: &Sent) -> Expect {
    let mut exp = Expect {
        to: sent.trunk.clone(),
        ..Expect::default()
    };
    match &sent.msg.start {
        StartLine::Request { method, uri } => {
            exp.request = Some(method.to_string());
            exp.uri = Some(uri.clone());
        }
        StartLine::Response { status, .. } => exp.response = Some(*status),
    }
    for header in &sent.msg.headers {
        let name = header.name.as_str().to_string();
        if VOLATILE.iter().any(|v| v.eq_ignore_ascii_case(&name)) {
            if !exp.present.contains(&name) {
                exp.present.push(name);
            }
            continue;
        }
        // Bridgehead's own version is written as ${version}, so a release does not break it.
        let value =
            String::from_utf8_lossy(&header.value).replace(crate::script::VERSION, "${version}");
        match exp.headers.entry(name) {
            Entry::Vacant(entry) => {
                entry.insert(HeaderExpect::First(value));
            }
            // A header on several lines is recorded whole.
            Entry::Occupied(mut entry) => {
                let lines = match entry.get_mut() {
                    HeaderExpect::First(first) => vec![std::mem::take(first), value],
                    HeaderExpect::Every(lines) => {
                        lines.push(value);
                        std::mem::take(lines)
                    }
                };
                entry.insert(HeaderExpect::Every(lines));
            }
        }
    }
    if let Ok(sdp) = Sdp::parse(&sent.msg.body) {
        if let Some(media) = sdp.media().iter().find(|m| m.kind() == "audio") {
            exp.sdp = Some(SdpExpect {
                codecs: Some(media.codecs().into_iter().map(|c| c.name).collect()),
                direction: Some(media.direction().as_str().to_string()),
                ..SdpExpect::default()
            });
        }
    }
    exp
}

/// The text of a response from a peer to a saved request.
fn response_text(
    saved: &Sent,
    reply: &scenario::Reply,
    headers: &[(String, String)],
    sdp: Option<&str>,
) -> String {
    let msg = &saved.msg;
    let reason = reply
        .reason
        .clone()
        .unwrap_or_else(|| crate::sip::reason_phrase(reply.status).to_string());
    let mut text = format!("SIP/2.0 {} {reason}\r\n", reply.status);
    for name in [HeaderName::Via, HeaderName::From] {
        for value in msg.headers_named(&name) {
            let _ = write!(
                text,
                "{}: {}\r\n",
                name.as_str(),
                String::from_utf8_lossy(value)
            );
        }
    }
    let to = msg.header_str(&HeaderName::To).unwrap_or_default();
    let tag = reply.tag.as_deref().unwrap_or("replay");
    if to.contains("tag=") || reply.status == 100 {
        let _ = write!(text, "To: {to}\r\n");
    } else {
        let _ = write!(text, "To: {to};tag={tag}\r\n");
    }
    for name in [HeaderName::CallId, HeaderName::CSeq] {
        if let Some(value) = msg.header_str(&name) {
            let _ = write!(text, "{}: {value}\r\n", name.as_str());
        }
    }
    if reply.status > 100 && reply.status < 300 {
        let _ = write!(text, "Contact: <sip:replay@{}>\r\n", saved.peer.addr);
    }
    for (name, value) in headers {
        let _ = write!(text, "{name}: {value}\r\n");
    }
    match sdp {
        Some(body) => {
            let body = crate::sip::crlf_lines(body);
            let _ = write!(
                text,
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
        None => text.push_str("Content-Length: 0\r\n\r\n"),
    }
    text
}

/// `250ms`, `2s`, `1.5s`, `1m`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("'{text}' is not a duration (e.g. 500ms, 2s, 1m)");
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|at| text.split_at(at))
        .ok_or_else(bad)?;
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(bad()),
    };
    if !(0.0..=86_400.0).contains(&seconds) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// JUnit XML for CI.
pub fn junit(outcomes: &[Outcome]) -> String {
    let failures = outcomes.iter().filter(|o| !o.passed()).count();
    let time: f64 = outcomes.iter().map(|o| o.elapsed.as_secs_f64()).sum();
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuite name=\"bridgehead replay\" tests=\"{}\" failures=\"{failures}\" time=\"{time:.3}\">\n",
        outcomes.len()
    );
    for outcome in outcomes {
        let _ = write!(
            xml,
            "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            xml_escape(&outcome.path.display().to_string()),
            xml_escape(&outcome.name),
            outcome.elapsed.as_secs_f64()
        );
        if outcome.passed() {
            xml.push_str("/>\n");
        } else {
            let text = outcome.failures.join("\n");
            let first = text.lines().next().unwrap_or_default();
            let _ = write!(
                xml,
                ">\n    <failure message=\"{}\">{}</failure>\n  </testcase>\n",
                xml_escape(first),
                xml_escape(&text)
            );
        }
    }
    xml.push_str("</testsuite>\n");
    xml
}

fn xml_escape(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            _ => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("2h").is_err());
    }

    #[test]
    fn fields_of_messages() {
        let msg = Message::parse(&Bytes::from_static(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1;rport\r\nTo: <sip:b@h;user=phone>;tag=t9\r\nFrom: a <sip:a@h>;tag=f1\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\r\n",
        ))
        .expect("parses");
        assert_eq!(field_of(&msg, "To;tag").as_deref(), Some("t9"));
        assert_eq!(field_of(&msg, "From;tag").as_deref(), Some("f1"));
        assert_eq!(field_of(&msg, "Via;branch").as_deref(), Some("z9hG4bK1"));
        assert_eq!(field_of(&msg, "Call-ID").as_deref(), Some("c1"));
        assert_eq!(field_of(&msg, "status").as_deref(), Some("200"));
        assert_eq!(field_of(&msg, "To;user"), None);
        assert_eq!(field_of(&msg, "uri"), None);
    }

    #[test]
    fn junit_escapes_and_counts() {
        let outcomes = [
            Outcome {
                path: "a.yaml".into(),
                name: "a <ok>".into(),
                steps: 1,
                failures: vec![],
                elapsed: Duration::ZERO,
            },
            Outcome {
                path: "b.yaml".into(),
                name: "b".into(),
                steps: 1,
                failures: vec!["b.yaml:3: step 1: \"x\" & y".into()],
                elapsed: Duration::ZERO,
            },
        ];
        let xml = junit(&outcomes);
        assert!(xml.contains("tests=\"2\" failures=\"1\""));
        assert!(xml.contains("name=\"a &lt;ok&gt;\" time=\"0.000\"/>"));
        assert!(xml.contains("&quot;x&quot; &amp; y"));
    }
}
