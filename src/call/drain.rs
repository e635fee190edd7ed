//! Graceful drain (SIGTERM): new calls and OPTIONS get `503` with `Retry-After` (a peer with
//! another SBC fails over to it), calls in progress go on until the profile's
//! `drain_timeout`, then Bridgehead ends the rest: BYE with a Reason on both legs of an
//! answered call, `503` to the caller and CANCEL to the callee of one still ringing, `503` to
//! a new call waiting for a lookup.

use super::*;

/// The Reason of the BYEs that end calls still up at the drain's deadline (RFC 3326).
const DRAIN_REASON: &str = "SIP ;cause=503 ;text=\"Service shutting down\"";

/// A drain under way on a shard.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Drain {
    /// When the calls still up are ended.
    deadline: Instant,
    /// They were.
    ended: bool,
}

impl Calls {
    /// Starts draining: new calls are refused from now on, those in progress ended at
    /// `deadline`.
    pub fn start_drain(&mut self, deadline: Instant) {
        if self.draining.is_some() {
            return;
        }
        tracing::info!(
            shard = self.shard,
            calls = self.by_key.len(),
            "draining: new calls refused, calls in progress go on until the drain timeout"
        );
        self.draining = Some(Drain {
            deadline,
            ended: false,
        });
    }

    /// The drain's deadline, while the calls still up have not been ended.
    pub fn poll_drain(&self) -> Option<Instant> {
        self.draining.filter(|d| !d.ended).map(|d| d.deadline)
    }

    /// Whether the shard drains: the `Retry-After` (seconds, at least 1) a refused request
    /// gets.
    pub(super) fn drain_retry_after(&self, now: Instant) -> Option<u64> {
        let drain = self.draining?;
        let left = drain.deadline.saturating_duration_since(now).as_secs();
        Some(left.max(1))
    }

    /// The shard drains and has no call left (nor one waiting for a lookup).
    pub fn drained(&self) -> bool {
        self.draining.is_some() && self.by_key.is_empty() && self.waiting_calls() == 0
    }

    /// The drain's deadline passed: a new call resuming from a lookup is refused.
    pub(super) fn drain_ended(&self) -> bool {
        self.draining.is_some_and(|d| d.ended)
    }
}

impl B2bua<'_> {
    /// A request outside a dialog: while the shard drains, a new call (INVITE) or an
    /// OPTIONS gets `503` with `Retry-After`; any other request is handed back.
    pub(super) fn refuse_while_draining(
        &mut self,
        incoming: Incoming,
        method: &Method,
        now: Instant,
    ) -> Option<Incoming> {
        let Some(retry) = self.calls.drain_retry_after(now) else {
            return Some(incoming);
        };
        if !matches!(method, Method::Invite | Method::Options) {
            return Some(incoming);
        }
        if *method == Method::Invite {
            self.calls.stats.drain_refused += 1;
            tracing::info!(peer = %incoming.from.addr, "draining: new call refused with 503");
        }
        let retry = (HeaderName::Other("Retry-After".into()), retry.to_string());
        self.answer(incoming, 503, &[retry], now);
        None
    }

    /// The drain's deadline came: every call still up is ended.
    pub(crate) fn end_drained_calls(&mut self, now: Instant) {
        let Some(drain) = self.calls.draining.as_mut() else {
            return;
        };
        drain.ended = true;
        let keys: Vec<CallKey> = self.calls.by_key.keys().copied().collect();
        tracing::info!(
            shard = self.calls.shard,
            calls = keys.len(),
            "drain timeout: ending the calls still up"
        );
        for key in keys {
            self.calls.stats.drain_ended += 1;
            self.end_now(key, "drain", DRAIN_REASON, now);
        }
        self.refuse_waiting(now);
    }
}
