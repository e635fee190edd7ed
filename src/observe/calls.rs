//! What ended calls leave behind: per-trunk counters for the metrics, and call detail records
//! (one JSON line per call) written by a thread of their own to a file rotated by size.
//!
//! A shard hands each [`CallRecord`] its engine queued to [`CallLog::ended`]: one lock for the
//! counters and one channel send per call, nothing per message.

use crate::call::record::CallRecord;
use crate::config::CdrConfig;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Upper bounds of the setup-time histogram (seconds from the caller's INVITE to the answer).
pub const SETUP_BUCKETS_S: [f64; 8] = [0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0];

/// Upper bounds of the media quality histograms: estimated MOS, jitter (seconds) and loss
/// (a ratio), of each leg's last RTCP report.
pub const MOS_BUCKETS: [f64; 7] = [1.0, 2.0, 2.5, 3.0, 3.5, 4.0, 4.3];
pub const JITTER_BUCKETS_S: [f64; 7] = [0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16];
pub const LOSS_BUCKETS: [f64; 7] = [0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2];

/// Values counted by upper bound (then one count for larger values), and their sum.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub bounds: &'static [f64],
    /// One count per bound, then one for values above the last (not cumulative).
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|limit| value <= *limit)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
    }

    /// Values observed.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// (upper bound, count) pairs, the last bound `f64::MAX` (+Inf).
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        self.bounds
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(self.counts.iter().copied())
            .collect()
    }
}

/// The media quality of one trunk's legs (their last RTCP report each).
#[derive(Clone, Debug, PartialEq)]
pub struct TrunkQuality {
    pub mos: Histogram,
    pub jitter_s: Histogram,
    pub loss: Histogram,
}

impl Default for TrunkQuality {
    fn default() -> TrunkQuality {
        TrunkQuality {
            mos: Histogram::new(&MOS_BUCKETS),
            jitter_s: Histogram::new(&JITTER_BUCKETS_S),
            loss: Histogram::new(&LOSS_BUCKETS),
        }
    }
}

/// The counters of calls from one trunk to another.
#[derive(Clone, Debug)]
pub struct TrunkCalls {
    /// Calls by the final status the caller got ("0": none).
    pub by_status: BTreeMap<u16, u64>,
    /// Answered calls by setup time ([`SETUP_BUCKETS_S`]).
    pub setup: Histogram,
    /// Answered calls shorter than the profile's `short_call_seconds`.
    pub short: u64,
    /// Seconds talked, summed.
    pub talk_s: f64,
}

impl Default for TrunkCalls {
    fn default() -> TrunkCalls {
        TrunkCalls {
            by_status: BTreeMap::new(),
            setup: Histogram::new(&SETUP_BUCKETS_S),
            short: 0,
            talk_s: 0.0,
        }
    }
}

/// A call record on its way to the CDR writer, with the instant it was sent at and the wall
/// clock then (the record's instants become wall-clock times).
type Pending = (CallRecord, Instant, SystemTime);

/// Where ended calls go.
pub struct CallLog {
    /// By (caller's trunk, callee's trunk).
    trunks: Mutex<BTreeMap<(String, String), TrunkCalls>>,
    /// By trunk: the quality of its legs.
    quality: Mutex<BTreeMap<String, TrunkQuality>>,
    short_call: Duration,
    cdr: Mutex<Option<mpsc::Sender<Pending>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl CallLog {
    /// A log counting short calls below `short_call`, writing CDRs as `cdr` says (none: no
    /// CDR). Fails when the CDR file cannot be opened.
    pub fn new(short_call: Duration, cdr: Option<&CdrConfig>) -> std::io::Result<CallLog> {
        let (sender, writer) = match cdr {
            Some(config) => {
                let file = CdrFile::open(config.clone())?;
                let poster = config.http.clone().map(Poster::open).transpose()?;
                let (sender, receiver) = mpsc::channel::<Pending>();
                let writer = std::thread::Builder::new()
                    .name("cdr".into())
                    .spawn(move || write_cdrs(&receiver, file, poster))?;
                (Some(sender), Some(writer))
            }
            None => (None, None),
        };
        Ok(CallLog {
            trunks: Mutex::new(BTreeMap::new()),
            quality: Mutex::new(BTreeMap::new()),
            short_call,
            cdr: Mutex::new(sender),
            writer: Mutex::new(writer),
        })
    }

    /// A call ended: counted, and its CDR queued.
    pub fn ended(&self, record: CallRecord) {
        {
            let mut trunks = lock(&self.trunks);
            let calls = trunks
                .entry((record.ingress.clone(), record.egress.clone()))
                .or_default();
            *calls.by_status.entry(record.status).or_default() += 1;
            if let Some(answered) = record.answered_at {
                let setup = answered
                    .saturating_duration_since(record.invite_at)
                    .as_secs_f64();
                calls.setup.observe(setup);
                let talk = record.ended_at.saturating_duration_since(answered);
                calls.talk_s += talk.as_secs_f64();
                calls.short += u64::from(talk < self.short_call);
            }
        }
        {
            let mut quality = lock(&self.quality);
            let legs = [&record.ingress, &record.egress];
            for (trunk, leg) in legs.into_iter().zip(record.quality) {
                if let Some(leg) = leg {
                    let trunk = quality.entry(trunk.clone()).or_default();
                    trunk.mos.observe(leg.mos);
                    trunk.jitter_s.observe(leg.jitter_ms / 1000.0);
                    trunk.loss.observe(leg.loss_percent / 100.0);
                }
            }
        }
        if let Some(cdr) = lock(&self.cdr).as_ref() {
            let _ = cdr.send((record, Instant::now(), SystemTime::now()));
        }
    }

    /// The counters by (caller's trunk, callee's trunk).
    pub fn trunks(&self) -> Vec<((String, String), TrunkCalls)> {
        lock(&self.trunks)
            .iter()
            .map(|(trunks, calls)| (trunks.clone(), calls.clone()))
            .collect()
    }

    /// The media quality of each trunk's legs, by trunk.
    pub fn quality(&self) -> Vec<(String, TrunkQuality)> {
        lock(&self.quality)
            .iter()
            .map(|(trunk, quality)| (trunk.clone(), quality.clone()))
            .collect()
    }

    /// Stops taking CDRs and waits until the writer wrote every one queued.
    pub fn close(&self) {
        lock(&self.cdr).take();
        if let Some(writer) = lock(&self.writer).take() {
            let _ = writer.join();
        }
    }
}

/// How long the CDR thread pauses after writing a batch.
const BATCH_PAUSE: Duration = Duration::from_millis(10);

/// The CDR thread: each record to the file (and to the HTTP endpoint's spool), flushed once
/// what queued is written; the endpoint tried whenever CDRs wait and its retry time came.
fn write_cdrs(receiver: &mpsc::Receiver<Pending>, mut file: CdrFile, mut poster: Option<Poster>) {
    loop {
        let wait = poster.as_ref().and_then(Poster::next_try);
        let first = match wait {
            Some(at) => receiver.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => receiver
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        let mut write = |pending: &Pending| {
            let line = cdr_line(&pending.0, pending.1, pending.2);
            file.write(&line);
            if let Some(poster) = poster.as_mut() {
                poster.queue(line);
            }
        };
        match first {
            Ok(pending) => {
                write(&pending);
                // What queued meanwhile, then one flush, then a pause for the next batch to
                // gather (the shards' sends then wake no one: a wake-up per call cost more
                // than writing its CDR).
                while let Ok(next) = receiver.try_recv() {
                    write(&next);
                }
                file.flush();
                std::thread::sleep(BATCH_PAUSE);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Some(poster) = poster.as_mut() {
            poster.send_due(false);
        }
    }
    file.flush();
    // The last ones once more (a graceful drain); what the endpoint did not take stays in the
    // spool for the next start.
    if let Some(poster) = poster.as_mut() {
        poster.send_due(true);
    }
}

/// CDRs on their way to the HTTP endpoint: the lines not yet acknowledged, kept in a spool file
/// (rewritten after each acknowledged batch) and in memory.
struct Poster {
    http: crate::config::CdrHttp,
    spool: std::path::PathBuf,
    pending: std::collections::VecDeque<String>,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    /// When the endpoint may be tried again after a failure.
    retry_at: Option<Instant>,
    /// The endpoint failed and has not taken a batch since (logged once per outage).
    failing: bool,
}

impl Poster {
    /// Opens the spool and takes the CDRs a previous run left in it.
    fn open(http: crate::config::CdrHttp) -> std::io::Result<Poster> {
        let spool = http
            .spool
            .clone()
            .unwrap_or_else(|| std::path::PathBuf::from("cdr.spool"));
        let pending = match std::fs::read_to_string(&spool) {
            Ok(text) => text
                .lines()
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(err) => {
                return Err(std::io::Error::new(
                    err.kind(),
                    format!("cdr spool {}: {err}", spool.display()),
                ))
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let tls =
            crate::transport::tls::https_client_config(None).map_err(std::io::Error::other)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_millis(http.timeout_ms))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Poster {
            http,
            spool,
            pending,
            runtime,
            client,
            retry_at: None,
            failing: false,
        })
    }

    /// When the endpoint should be tried next; None when no CDR waits.
    fn next_try(&self) -> Option<Instant> {
        (!self.pending.is_empty()).then(|| self.retry_at.unwrap_or_else(Instant::now))
    }

    /// A CDR for the endpoint: into the spool first.
    fn queue(&mut self, line: String) {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.spool)
            .and_then(|mut spool| writeln!(spool, "{line}"));
        if let Err(err) = appended {
            tracing::error!(spool = %self.spool.display(), "cdr spool: {err}");
        }
        self.pending.push_back(line);
    }

    /// POSTs batches while CDRs wait and the endpoint takes them (`now_anyway`: even before the
    /// retry time, once).
    fn send_due(&mut self, now_anyway: bool) {
        if !now_anyway && self.retry_at.is_some_and(|at| at > Instant::now()) {
            return;
        }
        while !self.pending.is_empty() {
            let count = self.pending.len().min(self.http.batch);
            let body = format!(
                "[{}]",
                self.pending
                    .iter()
                    .take(count)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(",")
            );
            // Built inside the runtime: the request's timeout needs its timer.
            let request = async {
                self.client
                    .post(&self.http.url)
                    .header("Content-Type", "application/json")
                    .body(body)
                    .send()
                    .await
            };
            match self.runtime.block_on(request) {
                Ok(answer) if answer.status().is_success() => {
                    self.pending.drain(..count);
                    self.rewrite_spool();
                    if std::mem::take(&mut self.failing) {
                        tracing::info!(url = %self.http.url, "cdr endpoint takes CDRs again");
                    }
                    self.retry_at = None;
                }
                failed => {
                    if !std::mem::replace(&mut self.failing, true) {
                        let why = match failed {
                            Ok(answer) => format!("answered {}", answer.status()),
                            Err(err) => err.to_string(),
                        };
                        tracing::warn!(url = %self.http.url, waiting = self.pending.len(), "cdr endpoint failed ({why}): spooled, retrying");
                    }
                    self.retry_at =
                        Some(Instant::now() + Duration::from_millis(self.http.retry_ms));
                    return;
                }
            }
        }
    }

    /// The spool holds what is still pending (written aside, then renamed over it).
    fn rewrite_spool(&self) {
        let mut aside = self.spool.clone().into_os_string();
        aside.push(".new");
        let aside = std::path::PathBuf::from(aside);
        let mut text = String::new();
        for line in &self.pending {
            text.push_str(line);
            text.push('\n');
        }
        let written =
            std::fs::write(&aside, text).and_then(|()| std::fs::rename(&aside, &self.spool));
        if let Err(err) = written {
            tracing::error!(spool = %self.spool.display(), "cdr spool: {err}");
        }
    }
}

/// The CDR file and its rotation.
struct CdrFile {
    config: CdrConfig,
    out: std::io::BufWriter<std::fs::File>,
    written: u64,
}

impl CdrFile {
    fn open(config: CdrConfig) -> std::io::Result<CdrFile> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .map_err(|err| {
                std::io::Error::new(err.kind(), format!("cdr: {}: {err}", config.path.display()))
            })?;
        let written = file.metadata().map_or(0, |m| m.len());
        Ok(CdrFile {
            config,
            out: std::io::BufWriter::new(file),
            written,
        })
    }

    /// Appends one CDR line, rotating first when it would pass `max_bytes`.
    fn write(&mut self, line: &str) {
        let size = line.len() as u64 + 1;
        if self.written > 0 && self.written + size > self.config.max_bytes {
            self.rotate();
        }
        match writeln!(self.out, "{line}") {
            Ok(()) => self.written += size,
            Err(err) => tracing::error!(path = %self.config.path.display(), "cdr lost: {err}"),
        }
    }

    fn flush(&mut self) {
        if let Err(err) = self.out.flush() {
            tracing::error!(path = %self.config.path.display(), "cdr not written: {err}");
        }
    }

    /// `path` becomes `path.1`, `path.1` becomes `path.2` … up to `keep`; a new `path` starts.
    fn rotate(&mut self) {
        self.flush();
        let path = &self.config.path;
        let numbered = |n: u32| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            std::path::PathBuf::from(name)
        };
        for n in (1..self.config.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        let rotated = if self.config.keep == 0 {
            std::fs::remove_file(path)
        } else {
            std::fs::rename(path, numbered(1))
        };
        if let Err(err) = rotated {
            tracing::error!(path = %path.display(), "cdr rotation: {err}");
        }
        match CdrFile::open(self.config.clone()) {
            Ok(fresh) => *self = fresh,
            Err(err) => tracing::error!("cdr: {err}"),
        }
    }
}

/// An instant of the engine's clock as an RFC 3339 wall-clock time, given the instant `sent`
/// and the wall clock `wall` at the same moment.
fn wall_time(at: Instant, sent: Instant, wall: SystemTime) -> String {
    crate::shared::rfc3339(wall - sent.saturating_duration_since(at))
}

/// One CDR as JSON.
pub fn cdr_line(record: &CallRecord, sent: Instant, wall: SystemTime) -> String {
    let at = |instant: Instant| wall_time(instant, sent, wall);
    let seconds = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64();
    let cdr = Cdr {
        call_id: &record.id,
        b_call_id: &record.b_call_id,
        ingress: &record.ingress,
        egress: &record.egress,
        from: &record.from,
        to: &record.to,
        caller_peer: &record.caller_peer,
        callee_peer: &record.callee_peer,
        invite_at: at(record.invite_at),
        ringing_at: record.ringing_at.map(at),
        answered_at: record.answered_at.map(at),
        ended_at: at(record.ended_at),
        setup_s: record.answered_at.map(|a| seconds(record.invite_at, a)),
        duration_s: record
            .answered_at
            .map_or(0.0, |a| seconds(a, record.ended_at)),
        status: record.status,
        ended_by: record.ended_by,
        reason: record.reason,
        version: record.version,
        attempts: record.attempts,
        reason_header: record.end_reason.as_deref(),
        quality_caller: record.quality[0],
        quality_callee: record.quality[1],
    };
    serde_json::to_string(&cdr).unwrap_or_default()
}

/// One CDR as it is written ([`cdr_line`]); `docs/operations.md` lists the fields.
#[derive(serde::Serialize)]
struct Cdr<'a> {
    call_id: &'a str,
    b_call_id: &'a str,
    ingress: &'a str,
    egress: &'a str,
    from: &'a str,
    to: &'a str,
    caller_peer: &'a str,
    callee_peer: &'a str,
    invite_at: String,
    ringing_at: Option<String>,
    answered_at: Option<String>,
    ended_at: String,
    setup_s: Option<f64>,
    duration_s: f64,
    status: u16,
    ended_by: &'static str,
    reason: &'static str,
    version: u64,
    attempts: u8,
    reason_header: Option<&'a str>,
    quality_caller: Option<crate::media::LegQuality>,
    quality_callee: Option<crate::media::LegQuality>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(answered_after: Option<u64>, talk_s: u64, status: u16) -> CallRecord {
        let invite_at = Instant::now();
        let answered_at = answered_after.map(|ms| invite_at + Duration::from_millis(ms));
        CallRecord {
            id: "a@x".into(),
            b_call_id: "bh1".into(),
            ingress: "core".into(),
            egress: "teams".into(),
            from: "<sip:+4930123@core>;tag=1".into(),
            to: "<sip:+4930987@teams>".into(),
            caller_peer: "udp:127.0.0.1:5090".into(),
            callee_peer: "udp:127.0.0.1:5080".into(),
            invite_at,
            ringing_at: None,
            answered_at,
            ended_at: answered_at.unwrap_or(invite_at) + Duration::from_secs(talk_s),
            status,
            ended_by: "caller",
            reason: "bye",
            version: 1,
            attempts: 1,
            quality: [
                Some(crate::media::LegQuality {
                    mos: 4.3,
                    loss_percent: 1.5,
                    jitter_ms: 12.0,
                }),
                None,
            ],
            end_reason: Some("Q.850;cause=16".into()),
        }
    }

    #[test]
    fn cdrs_a_previous_run_left_in_the_spool_are_sent_first() {
        use std::io::{BufRead, Read};
        let dir = std::env::temp_dir().join(format!("bh-spool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let spool = dir.join("cdr.spool");
        std::fs::write(
            &spool,
            "{\"call_id\":\"left-1\"}\n{\"call_id\":\"left-2\"}\n",
        )
        .expect("spool");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("a POST");
            let mut reader = std::io::BufReader::new(stream);
            let mut length = 0;
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().expect("length");
                }
                line.clear();
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("body");
            reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .expect("answer");
            String::from_utf8(body).expect("text")
        });
        let mut poster = Poster::open(crate::config::CdrHttp {
            url: format!("http://127.0.0.1:{port}/cdr"),
            spool: Some(spool.clone()),
            batch: 10,
            timeout_ms: 2000,
            retry_ms: 100,
        })
        .expect("poster");
        assert!(poster.next_try().is_some(), "two CDRs wait");
        poster.send_due(false);
        let body = server.join().expect("server");
        assert_eq!(body, "[{\"call_id\":\"left-1\"},{\"call_id\":\"left-2\"}]");
        assert_eq!(std::fs::read_to_string(&spool).expect("spool"), "");
        assert!(poster.next_try().is_none());
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn ended_calls_are_counted_per_trunk_and_written_rotated() {
        let dir = std::env::temp_dir().join(format!("bh-cdr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = CdrConfig {
            path: dir.join("cdr.jsonl"),
            max_bytes: 700,
            keep: 2,
            http: None,
        };
        let log = CallLog::new(Duration::from_secs(10), Some(&config)).expect("log");
        for _ in 0..5 {
            log.ended(record(Some(300), 60, 200));
        }
        log.ended(record(Some(50), 3, 200));
        log.ended(record(None, 0, 486));
        log.close();
        let trunks = log.trunks();
        assert_eq!(trunks.len(), 1);
        let ((from, to), calls) = &trunks[0];
        assert_eq!((from.as_str(), to.as_str()), ("core", "teams"));
        assert_eq!(calls.by_status.get(&200), Some(&6));
        assert_eq!(calls.by_status.get(&486), Some(&1));
        assert_eq!(calls.setup.counts[0], 1, "50 ms");
        assert_eq!(calls.setup.counts[2], 5, "300 ms");
        assert_eq!(calls.short, 1);
        assert!((calls.talk_s - 303.0).abs() < 1e-6);
        // The caller's legs' quality counts for its trunk, in the buckets of 4.3, 1.5 % and
        // 12 ms; the callee's legs had no report.
        let quality = log.quality();
        assert_eq!(quality.len(), 1);
        let (trunk, legs) = &quality[0];
        assert_eq!(trunk, "core");
        assert_eq!(legs.mos.counts, [0, 0, 0, 0, 0, 0, 7, 0]);
        assert_eq!(legs.loss.counts, [0, 0, 0, 7, 0, 0, 0, 0]);
        assert_eq!(legs.jitter_s.counts, [0, 0, 0, 7, 0, 0, 0, 0]);
        // 7 lines of about 550 bytes in files of at most 700: one per file, three files kept
        // (the file and two rotated), the four oldest gone.
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let lines: Vec<String> = [read("cdr.jsonl.2"), read("cdr.jsonl.1"), read("cdr.jsonl")]
            .concat()
            .lines()
            .map(String::from)
            .collect();
        assert!(!dir.join("cdr.jsonl.3").exists());
        assert_eq!(lines.len(), 3, "{lines:?}");
        let last: serde_json::Value =
            serde_json::from_str(lines.last().expect("a line")).expect("JSON");
        assert_eq!(last["status"], 486);
        assert_eq!(last["reason_header"], "Q.850;cause=16");
        assert_eq!(last["quality_caller"]["mos"], 4.3);
        assert_eq!(last["quality_callee"], serde_json::Value::Null);
        assert_eq!(last["answered_at"], serde_json::Value::Null);
        assert_eq!(last["ingress"], "core");
        assert!(last["invite_at"].as_str().is_some_and(|t| t.ends_with('Z')));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
