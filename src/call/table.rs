//! A shard's calls by key, noting which calls were handed out to be changed: the cluster's
//! replication looks only at those (`Calls::replicate`), so an answered call that nothing
//! touched since the last look costs nothing, however many calls are up.
//!
//! Every change to a call goes through [`CallTable::get_mut`] or [`CallTable::insert`] (the
//! table hands out no other mutable access), so none escapes the note. Reads go through
//! `Deref` to the map.

use super::{Call, CallKey};
use std::collections::{HashMap, HashSet};

#[derive(Default)]
pub(crate) struct CallTable {
    calls: HashMap<CallKey, Call>,
    /// The calls handed out to be changed since [`CallTable::take_touched`]; `None` while
    /// nobody asks (no cluster).
    touched: Option<HashSet<CallKey>>,
}

impl std::ops::Deref for CallTable {
    type Target = HashMap<CallKey, Call>;

    fn deref(&self) -> &Self::Target {
        &self.calls
    }
}

impl CallTable {
    /// From now on, note the calls handed out to be changed.
    pub fn note_changes(&mut self) {
        self.touched.get_or_insert_with(HashSet::new);
    }

    /// The call `key`, to change it (noted).
    pub fn get_mut(&mut self, key: &CallKey) -> Option<&mut Call> {
        let call = self.calls.get_mut(key)?;
        if let Some(touched) = self.touched.as_mut() {
            touched.insert(*key);
        }
        Some(call)
    }

    /// Adds a call (noted).
    pub fn insert(&mut self, key: CallKey, call: Call) {
        if let Some(touched) = self.touched.as_mut() {
            touched.insert(key);
        }
        self.calls.insert(key, call);
    }

    /// Takes a call out.
    pub fn remove(&mut self, key: &CallKey) -> Option<Call> {
        if let Some(touched) = self.touched.as_mut() {
            touched.remove(key);
        }
        self.calls.remove(key)
    }

    /// The calls noted since the last call of this (empty while not noting), into `into`
    /// (cleared first; its room is kept across looks).
    pub fn take_touched(&mut self, into: &mut Vec<CallKey>) {
        into.clear();
        if let Some(touched) = self.touched.as_mut() {
            into.extend(touched.drain());
        }
    }

    /// Gives back the table's room once a peak of calls is over.
    pub fn shrink_when_quiet(&mut self) {
        // (The note holds the calls touched in one sync interval, drained at each look.)
        crate::shared::shrink_when_quiet(&mut self.calls);
    }
}
