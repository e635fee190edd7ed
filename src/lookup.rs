//! Lookups rules consult with `bh.lookup(name, key)`: named key → value tables a profile
//! declares, given inline (`table`) or read from a CSV file (`csv`, read again when it changes,
//! as part of a reload). The profile loads them; every shard's rule state shares them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One lookup of a profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub name: String,
    /// The CSV file it was read from; None for an inline table.
    pub csv: Option<PathBuf>,
    /// Key → value.
    pub entries: Arc<HashMap<String, String>>,
}

impl Lookup {
    /// The value of `key`, counting the hit or the miss.
    pub fn get(&self, key: &str, counters: &LookupCounters) -> Option<&str> {
        let value = self.entries.get(key).map(String::as_str);
        let counter = if value.is_some() {
            &counters.hits
        } else {
            &counters.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        value
    }
}

/// Gives the lookup `name` of `lookups` these entries, adding it when there is none: a replay
/// scenario's or a unit test's stub.
pub fn stub(lookups: &mut Vec<Lookup>, name: &str, entries: HashMap<String, String>) {
    let entries = Arc::new(entries);
    match lookups.iter_mut().find(|l| l.name == name) {
        Some(lookup) => lookup.entries = entries,
        None => lookups.push(Lookup {
            name: name.to_string(),
            csv: None,
            entries,
        }),
    }
}

/// What one lookup answered, process-wide (every shard and rule-set version).
#[derive(Debug, Default)]
pub struct LookupCounters {
    /// Keys found.
    pub hits: AtomicU64,
    /// Keys not found.
    pub misses: AtomicU64,
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
            entries: Arc::new(HashMap::from([("k".to_string(), "v".to_string())])),
        };
        let counters = LookupCounters::default();
        assert_eq!(lookup.get("k", &counters), Some("v"));
        assert_eq!(lookup.get("x", &counters), None);
        assert_eq!(counters.hits.load(Ordering::Relaxed), 1);
        assert_eq!(counters.misses.load(Ordering::Relaxed), 1);
    }
}
