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

/// The counters of calls from one trunk to another.
#[derive(Clone, Debug, Default)]
pub struct TrunkCalls {
    /// Calls by the final status the caller got ("0": none).
    pub by_status: BTreeMap<u16, u64>,
    /// Answered calls by setup time ([`SETUP_BUCKETS_S`], then slower), and the sum.
    pub setup: [u64; SETUP_BUCKETS_S.len() + 1],
    pub setup_sum_s: f64,
    /// Answered calls shorter than the profile's `short_call_seconds`.
    pub short: u64,
    /// Seconds talked, summed.
    pub talk_s: f64,
}

/// A call record on its way to the CDR writer, with the instant it was sent at and the wall
/// clock then (the record's instants become wall-clock times).
type Pending = (CallRecord, Instant, SystemTime);

/// Where ended calls go.
pub struct CallLog {
    /// By (caller's trunk, callee's trunk).
    trunks: Mutex<BTreeMap<(String, String), TrunkCalls>>,
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
                let mut file = CdrFile::open(config.clone())?;
                let (sender, receiver) = mpsc::channel::<Pending>();
                let writer = std::thread::Builder::new()
                    .name("cdr".into())
                    .spawn(move || {
                        while let Ok(first) = receiver.recv() {
                            file.write(&first);
                            // What queued meanwhile, then one flush.
                            while let Ok(next) = receiver.try_recv() {
                                file.write(&next);
                            }
                            file.flush();
                        }
                        file.flush();
                    })?;
                (Some(sender), Some(writer))
            }
            None => (None, None),
        };
        Ok(CallLog {
            trunks: Mutex::new(BTreeMap::new()),
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
                let bucket = SETUP_BUCKETS_S
                    .iter()
                    .position(|limit| setup <= *limit)
                    .unwrap_or(SETUP_BUCKETS_S.len());
                calls.setup[bucket] += 1;
                calls.setup_sum_s += setup;
                let talk = record.ended_at.saturating_duration_since(answered);
                calls.talk_s += talk.as_secs_f64();
                calls.short += u64::from(talk < self.short_call);
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

    /// Stops taking CDRs and waits until the writer wrote every one queued.
    pub fn close(&self) {
        lock(&self.cdr).take();
        if let Some(writer) = lock(&self.writer).take() {
            let _ = writer.join();
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

    /// Appends one record, rotating first when it would pass `max_bytes`.
    fn write(&mut self, (record, sent, wall): &Pending) {
        let mut line = cdr_json(record, *sent, *wall).to_string();
        line.push('\n');
        if self.written > 0 && self.written + line.len() as u64 > self.config.max_bytes {
            self.rotate();
        }
        match self.out.write_all(line.as_bytes()) {
            Ok(()) => self.written += line.len() as u64,
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
    let when = wall - sent.saturating_duration_since(at);
    time::OffsetDateTime::from(when)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// One CDR as JSON.
pub fn cdr_json(record: &CallRecord, sent: Instant, wall: SystemTime) -> serde_json::Value {
    let at = |instant: Instant| wall_time(instant, sent, wall);
    let seconds = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64();
    serde_json::json!({
        "call_id": record.id,
        "b_call_id": record.b_call_id,
        "ingress": record.ingress,
        "egress": record.egress,
        "from": record.from,
        "to": record.to,
        "caller_peer": record.caller_peer,
        "callee_peer": record.callee_peer,
        "invite_at": at(record.invite_at),
        "ringing_at": record.ringing_at.map(at),
        "answered_at": record.answered_at.map(at),
        "ended_at": at(record.ended_at),
        "setup_s": record.answered_at.map(|a| seconds(record.invite_at, a)),
        "duration_s": record.answered_at.map_or(0.0, |a| seconds(a, record.ended_at)),
        "status": record.status,
        "ended_by": record.ended_by,
        "reason": record.reason,
        "version": record.version,
        "attempts": record.attempts,
        "mos_caller": record.mos[0],
        "mos_callee": record.mos[1],
    })
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
            mos: [Some(4.3), None],
        }
    }

    #[test]
    fn ended_calls_are_counted_per_trunk_and_written_rotated() {
        let dir = std::env::temp_dir().join(format!("bh-cdr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = CdrConfig {
            path: dir.join("cdr.jsonl"),
            max_bytes: 700,
            keep: 2,
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
        assert_eq!(calls.setup[0], 1, "50 ms");
        assert_eq!(calls.setup[2], 5, "300 ms");
        assert_eq!(calls.short, 1);
        assert!((calls.talk_s - 303.0).abs() < 1e-6);
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
        assert_eq!(last["answered_at"], serde_json::Value::Null);
        assert_eq!(last["ingress"], "core");
        assert!(last["invite_at"].as_str().is_some_and(|t| t.ends_with('Z')));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
