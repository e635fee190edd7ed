//! New calls whose `on_invite` waits for an HTTP lookup (`bh.lookup`): the request queued for
//! the driver, the answer or the timeout resuming the hook, the caller cancelling meanwhile.
//! The call does not exist yet while it waits: the caller has its `100 Trying`, retransmissions
//! of its INVITE are absorbed by the transaction, and other calls go on.

use super::setup::NewCall;
use super::*;
use crate::lookup::{HttpLookup, LookupAnswer, LookupRequest};
use crate::script::{SuspendedInvite, WaitingLookup};
use std::collections::BTreeSet;

/// A new call whose `on_invite` waits for a lookup's answer.
pub(super) struct WaitingInvite {
    setup: NewCall,
    invite: SuspendedInvite,
    lookup: WaitingLookup,
    deadline: Instant,
}

/// The lookups this shard's new calls wait for, by request id.
#[derive(Default)]
pub(super) struct Waiting {
    by_id: HashMap<u64, WaitingInvite>,
    deadlines: BTreeSet<(Instant, u64)>,
    requests: VecDeque<LookupRequest>,
}

/// The consultation service of the lookup `name` in a version's profile.
fn service(rules: &RuleSet, name: &str) -> Option<HttpLookup> {
    let lookup = rules.profile.lookups.iter().find(|l| l.name == name)?;
    lookup.http.clone()
}

impl Calls {
    /// New calls waiting for a lookup.
    pub(super) fn waiting_calls(&self) -> usize {
        self.waiting.by_id.len()
    }

    /// The next request for a consultation service.
    pub fn poll_lookup(&mut self) -> Option<LookupRequest> {
        self.waiting.requests.pop_front()
    }

    /// When the next lookup a new call waits for times out.
    pub fn poll_lookup_timeout(&self) -> Option<Instant> {
        self.waiting.deadlines.first().map(|(at, _)| *at)
    }

    /// A lookup whose time ran out at `now`, if any.
    pub fn next_lookup_timeout(&mut self, now: Instant) -> Option<u64> {
        let &(at, id) = self.waiting.deadlines.first()?;
        (at <= now).then(|| {
            self.waiting.deadlines.remove(&(at, id));
            id
        })
    }
}

impl B2bua<'_> {
    /// Parks a new call while its `on_invite` waits for `lookup`, and asks for the lookup.
    pub(super) fn wait_for_lookup(
        &mut self,
        setup: NewCall,
        invite: SuspendedInvite,
        lookup: WaitingLookup,
        now: Instant,
    ) {
        let Some(http) = service(&setup.rules, &lookup.name) else {
            // Only an HTTP lookup waits: resume the hook with a failure rather than strand it.
            let rules = setup.rules.clone();
            let run = rules
                .rules
                .resume_invite(invite, Err("no service".into()), now);
            self.after_invite_hook(setup, run, now);
            return;
        };
        let id = self.next_id();
        let deadline = now + http.timeout;
        self.calls.waiting.requests.push_back(LookupRequest {
            id,
            lookup: lookup.name.clone(),
            key: lookup.key.clone(),
            url: http.url_for(&lookup.key),
            timeout: http.timeout,
        });
        self.calls.waiting.deadlines.insert((deadline, id));
        if let Some(entry) = self.txns.server_mut(setup.a_invite) {
            entry.owner = ServerOwner::Lookup(id);
        }
        self.calls.waiting.by_id.insert(
            id,
            WaitingInvite {
                setup,
                invite,
                lookup,
                deadline,
            },
        );
    }

    /// The service's answer to lookup `id`, or None when its time ran out: counted, cached,
    /// and handed to the waiting `on_invite`. An answer for a call that went on without it
    /// (it timed out, the caller cancelled) is dropped.
    pub(super) fn on_lookup_answer(&mut self, id: u64, answer: Option<LookupAnswer>, now: Instant) {
        let Some(waiting) = self.calls.waiting.by_id.remove(&id) else {
            return;
        };
        self.calls.waiting.deadlines.remove(&(waiting.deadline, id));
        let WaitingInvite {
            setup,
            invite,
            lookup,
            ..
        } = waiting;
        let rules = setup.rules.clone();
        let state = rules.rules.metrics().lookup_state(&lookup.name);
        let result = match service(&rules, &lookup.name) {
            Some(http) => state.end_request(&lookup.key, answer.as_ref(), &http, now),
            None => Err("no service".into()),
        };
        if let Err(why) = &result {
            tracing::info!(call = %setup.info.call_id, lookup = %lookup.name, key = %lookup.key, "lookup failed: {why}");
        }
        if let Some(entry) = self.txns.server_mut(setup.a_invite) {
            entry.owner = ServerOwner::Local;
        }
        let run = rules.rules.resume_invite(invite, result, now);
        self.after_invite_hook(setup, run, now);
    }

    /// Every new call waiting for a lookup gets `503` and is dropped (the drain's deadline:
    /// their hooks' answers will find nothing).
    pub(super) fn refuse_waiting(&mut self, now: Instant) {
        let ids: Vec<u64> = self.calls.waiting.by_id.keys().copied().collect();
        for id in ids {
            if let Some(setup) = self.drop_waiting(id) {
                self.answer_new_call(&setup, 503, now);
            }
        }
    }

    /// The caller cancelled a new call whose `on_invite` waits for lookup `id`: the CANCEL
    /// gets `200`, the INVITE `487`, and the hook is dropped (its answer will find nothing).
    pub(super) fn cancel_waiting(&mut self, id: u64, cancel: Incoming, now: Instant) {
        let Some(setup) = self.drop_waiting(id) else {
            return;
        };
        let (trunk, script, tag) = (setup.trunk, setup.script, setup.a.local_tag.as_str());
        let ok = response_to(&cancel.msg, 200, None, Some(tag));
        let ok = self.outgoing(None, script, Leg::A, trunk, ok);
        let server = self.create_server(cancel.key, cancel.msg, cancel.from, ServerOwner::Local);
        self.send_response(server, &ok, now);
        self.answer_new_call(&setup, 487, now);
    }

    /// Forgets the new call waiting for lookup `id` (its request abandoned); returns what its
    /// setup kept.
    fn drop_waiting(&mut self, id: u64) -> Option<NewCall> {
        let waiting = self.calls.waiting.by_id.remove(&id)?;
        self.calls.waiting.deadlines.remove(&(waiting.deadline, id));
        let state = waiting
            .setup
            .rules
            .rules
            .metrics()
            .lookup_state(&waiting.lookup.name);
        state.abandon_request();
        Some(waiting.setup)
    }
}
