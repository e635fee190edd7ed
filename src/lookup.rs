//! Lookups rules consult with `bh.lookup(name, key)`: named key → value tables a profile
//! declares, given inline (`table`), read from a CSV file (`csv`, read again when it changes,
//! as part of a reload), or asked of an HTTP(S) consultation service (`http`). The profile
//! loads them; every shard's rule state shares them. An HTTP lookup is sans-IO here: the call
//! layer queues a [`LookupRequest`], the runtime (or the replay harness) asks the service and
//! hands back a [`LookupAnswer`]; answers are cached per lookup for every shard.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One lookup of a profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub name: String,
    /// The CSV file it was read from; None for an inline table or an HTTP service.
    pub csv: Option<PathBuf>,
    /// The consultation service it asks; None for a table or a CSV file.
    pub http: Option<HttpLookup>,
    /// Key → value (a table's or a CSV file's; empty for an HTTP service).
    pub entries: Arc<HashMap<String, String>>,
}

/// An HTTP(S) consultation service: `GET url` with `{key}` replaced by the key
/// (percent-encoded); `200` answers the body (trimmed), `404` says the key has no value,
/// anything else, no answer within `timeout` or a connection error is a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLookup {
    /// `http://` or `https://`, with `{key}` where the key goes.
    pub url: String,
    pub timeout: Duration,
    /// How long a value is kept.
    pub ttl: Duration,
    /// How long a "no value" (`404`) is kept.
    pub negative_ttl: Duration,
    /// Requests to the service in flight at once, process-wide; more fail at once (`busy`).
    pub concurrency: u32,
}

impl HttpLookup {
    /// The URL that asks for `key`.
    pub fn url_for(&self, key: &str) -> String {
        let key = percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC);
        self.url.replace("{key}", &key.to_string())
    }
}

impl Lookup {
    /// The value of `key` in a table or CSV lookup, counting the hit or the miss.
    pub fn get(&self, key: &str, state: &LookupState) -> Option<&str> {
        let value = self.entries.get(key).map(String::as_str);
        state.count_answer(value.is_some());
        value
    }
}

/// Gives the lookup `name` of `lookups` these entries, adding it when there is none: a replay
/// scenario's or a unit test's stub. A stubbed HTTP lookup keeps its service: the entries are
/// what the replay harness's stand-in service answers.
pub fn stub(lookups: &mut Vec<Lookup>, name: &str, entries: HashMap<String, String>) {
    let entries = Arc::new(entries);
    match lookups.iter_mut().find(|l| l.name == name) {
        Some(lookup) => lookup.entries = entries,
        None => lookups.push(Lookup {
            name: name.to_string(),
            csv: None,
            http: None,
            entries,
        }),
    }
}

/// A request for an HTTP lookup's service, from the call layer to whoever does the I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupRequest {
    /// Names the answer ([`crate::Engine::handle_lookup_answer`]).
    pub id: u64,
    /// The lookup's name.
    pub lookup: String,
    pub key: String,
    pub url: String,
    /// When the call layer stops waiting (the caller may stop earlier).
    pub timeout: Duration,
}

/// What a consultation service said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupAnswer {
    /// `200`: the value.
    Found(String),
    /// `404`: the key has no value.
    NotFound,
    /// Any other status, a connection or TLS error: why.
    Failed(String),
}

/// Values an HTTP lookup's cache keeps before it forgets them all (a bound on memory).
const CACHE_LIMIT: usize = 100_000;

/// One lookup's process-wide state (every shard and rule-set version): what it answered, and
/// for an HTTP lookup its cache and its requests in flight.
#[derive(Debug, Default)]
pub struct LookupState {
    /// Keys found (in the table, the file, the cache or by the service).
    pub hits: AtomicU64,
    /// Keys without a value.
    pub misses: AtomicU64,
    /// Answers an HTTP lookup took from its cache.
    pub cache_hits: AtomicU64,
    /// HTTP lookups that failed: the service's error, or too many in flight.
    pub errors: AtomicU64,
    /// HTTP lookups the service did not answer in time.
    pub timeouts: AtomicU64,
    in_flight: AtomicU32,
    /// Key → (value or None for "no value", until when it holds).
    cache: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

impl LookupState {
    fn count_answer(&self, found: bool) {
        let counter = if found { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The cached answer for `key` at `now`: Some(Some(value)), Some(None) for a cached "no
    /// value", None when the service must be asked. Counts a cache hit.
    pub fn cached(&self, key: &str, now: Instant) -> Option<Option<String>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let (value, until) = cache.get(key)?;
        if *until <= now {
            return None;
        }
        self.cache_hits.fetch_add(1, Ordering::Relaxed);
        self.count_answer(value.is_some());
        Some(value.clone())
    }

    /// Takes a place for one more request to the service, or says it is busy.
    pub fn begin_request(&self, concurrency: u32) -> bool {
        self.in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < concurrency).then_some(n + 1)
            })
            .is_ok()
    }

    /// A request is over: its answer (None: it timed out or its call went) is counted and
    /// cached, and its place given back. Returns what the rule gets: the value, or the reason
    /// the lookup failed.
    pub fn end_request(
        &self,
        key: &str,
        answer: Option<&LookupAnswer>,
        http: &HttpLookup,
        now: Instant,
    ) -> Result<Option<String>, String> {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let (value, ttl) = match answer {
            None => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err("timeout".into());
            }
            Some(LookupAnswer::Failed(why)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                return Err(why.clone());
            }
            Some(LookupAnswer::Found(value)) => (Some(value.clone()), http.ttl),
            Some(LookupAnswer::NotFound) => (None, http.negative_ttl),
        };
        self.count_answer(value.is_some());
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(key.to_string(), (value.clone(), now + ttl));
        Ok(value)
    }

    /// A request given up before it was sent or answered (its call went): its place back.
    pub fn abandon_request(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A CSV line that cannot be read: its line number (from 1) and why.
#[derive(Debug, PartialEq, Eq)]
pub struct CsvError {
    pub line: usize,
    pub message: String,
}

/// Reads a lookup's CSV text (the `csv` crate): one `key,value` record per line, spaces
/// around fields trimmed, a key alone has the value `""`, `#` lines are comments; a
/// double-quoted field (`"a,b"`) may hold commas. A record of more than two fields, an empty
/// key or a key given twice is an error.
pub fn parse_csv(text: &str) -> Result<HashMap<String, String>, CsvError> {
    // The reader does not count the lines it skips (blank ones, comments): each becomes a `#`
    // record, which is skipped here, so every line counts.
    let text: String = text
        .lines()
        .map(|line| if line.trim().is_empty() { "#" } else { line })
        .flat_map(|line| [line, "\n"])
        .collect();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut entries = HashMap::new();
    for record in reader.records() {
        let record = record.map_err(|err| CsvError {
            line: err.position().map_or(0, |p| p.line() as usize),
            message: err.to_string(),
        })?;
        if record.get(0).is_some_and(|first| first.starts_with('#')) {
            continue;
        }
        let line = record.position().map_or(0, |p| p.line() as usize);
        let error = |message: String| CsvError { line, message };
        let (key, value) = match (record.get(0), record.get(1), record.len()) {
            (Some(key), value, 1 | 2) => (key, value.unwrap_or_default()),
            (_, _, fields) => return Err(error(format!("{fields} fields, not key,value"))),
        };
        if key.is_empty() {
            return Err(error("empty key".into()));
        }
        if entries.insert(key.to_string(), value.to_string()).is_some() {
            return Err(error(format!("key '{key}' is given twice")));
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_comments_and_quotes() {
        let entries = parse_csv(
            "# subscriber,kind\n+4915112345678,tpm\n\n +4915100000001 , tpm ; mobile \n+49151,\"a, b\"\nonly-key\n\"+49 1\"\n",
        )
        .expect("valid");
        assert_eq!(entries["+4915112345678"], "tpm");
        assert_eq!(entries["+4915100000001"], "tpm ; mobile");
        assert_eq!(entries["+49151"], "a, b");
        assert_eq!(entries["only-key"], "");
        assert_eq!(entries["+49 1"], "");
        assert_eq!(entries.len(), 5);
    }

    #[test]
    fn errors_name_the_line() {
        let twice = parse_csv("a,1\n# c, d\n\na,2\n").expect_err("refused");
        assert_eq!(twice.line, 4);
        assert!(twice.message.contains("'a' is given twice"));
        assert_eq!(parse_csv("x\n,1\n").expect_err("refused").line, 2);
        let three = parse_csv("a,1\nk,v,x\n").expect_err("refused");
        assert_eq!(
            (three.line, three.message.as_str()),
            (2, "3 fields, not key,value")
        );
    }

    #[test]
    fn get_counts_hits_and_misses() {
        let lookup = Lookup {
            name: "t".into(),
            csv: None,
            http: None,
            entries: Arc::new(HashMap::from([("k".to_string(), "v".to_string())])),
        };
        let state = LookupState::default();
        assert_eq!(lookup.get("k", &state), Some("v"));
        assert_eq!(lookup.get("x", &state), None);
        assert_eq!(state.hits.load(Ordering::Relaxed), 1);
        assert_eq!(state.misses.load(Ordering::Relaxed), 1);
    }

    fn service() -> HttpLookup {
        HttpLookup {
            url: "http://127.0.0.1:8080/tpm/{key}?v=1".into(),
            timeout: Duration::from_millis(500),
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            concurrency: 2,
        }
    }

    #[test]
    fn the_key_is_percent_encoded_into_the_url() {
        assert_eq!(
            service().url_for("+49 151/1"),
            "http://127.0.0.1:8080/tpm/%2B49%20151%2F1?v=1"
        );
    }

    #[test]
    fn answers_are_cached_for_their_ttl_and_failures_are_not() {
        let (http, state, now) = (service(), LookupState::default(), Instant::now());
        assert_eq!(state.cached("a", now), None);
        assert!(state.begin_request(http.concurrency));
        let found = LookupAnswer::Found("tpm".into());
        assert_eq!(
            state.end_request("a", Some(&found), &http, now),
            Ok(Some("tpm".into()))
        );
        assert!(state.begin_request(http.concurrency));
        assert_eq!(
            state.end_request("b", Some(&LookupAnswer::NotFound), &http, now),
            Ok(None)
        );
        assert!(state.begin_request(http.concurrency));
        let failed = LookupAnswer::Failed("status 500".into());
        assert_eq!(
            state.end_request("c", Some(&failed), &http, now),
            Err("status 500".into())
        );
        assert!(state.begin_request(http.concurrency));
        assert_eq!(
            state.end_request("d", None, &http, now),
            Err("timeout".into())
        );

        let later = now + Duration::from_secs(30);
        assert_eq!(state.cached("a", later), Some(Some("tpm".into())));
        assert_eq!(state.cached("b", later), None, "past the negative TTL");
        assert_eq!(state.cached("c", later), None);
        assert_eq!(state.cached("a", now + Duration::from_secs(61)), None);
        let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(
            (
                count(&state.hits),
                count(&state.misses),
                count(&state.cache_hits)
            ),
            (2, 1, 1)
        );
        assert_eq!((count(&state.errors), count(&state.timeouts)), (1, 1));
    }

    #[test]
    fn no_more_requests_than_the_concurrency_limit() {
        let state = LookupState::default();
        assert!(state.begin_request(2));
        assert!(state.begin_request(2));
        assert!(!state.begin_request(2));
        state.abandon_request();
        assert!(state.begin_request(2));
    }
}
