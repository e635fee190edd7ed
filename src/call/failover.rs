//! Failover to a trunk's next peer (Microsoft asks an SBC to try sip, sip2 and sip3 in turn):
//! a call whose INVITE got no answer, a 503, or one of the trunk's `failover_codes` goes to
//! the trunk's next peer that is not down, never after the callee rang (a non-100
//! provisional: it would ring twice) nor on one of the trunk's `final_codes`. A 503's
//! Retry-After rests that peer for new calls too.

use super::*;

/// The seconds of a Retry-After header (RFC 3261 §20.33), when it has some.
fn retry_after(msg: &Message) -> Option<u64> {
    let value = msg.header_str(&HeaderName::Other("Retry-After".into()))?;
    value.split(['(', ';']).next()?.trim().parse().ok()
}

impl B2bua<'_> {
    /// The call's peer said nothing at all (not even 100) within the trunk's
    /// `failover_timeout`: the call goes to the next peer as if it had timed out.
    pub(super) fn on_failover_timeout(&mut self, key: CallKey, now: Instant) {
        let Some(call) = self.calls.by_key.get(&key) else {
            return;
        };
        if call.state != CallState::Calling {
            return;
        }
        tracing::info!(call = %call.id, peer = %call.b.peer.addr, "no answer within failover_timeout");
        // Its INVITE stays pending: a late provisional gets a CANCEL, a late 2xx an ACK and a
        // BYE (see on_response).
        self.fail_over(key, 408, now);
    }

    /// The call's peer answered its INVITE 503: a Retry-After rests the peer for new calls,
    /// and its stream connection is closed (the next request opens a new one). Whatever
    /// `on_failure` then decides.
    pub(super) fn peer_unavailable(&mut self, key: CallKey, answer: &Message, now: Instant) {
        let Some(call) = self.calls.by_key.get(&key) else {
            return;
        };
        let (trunk, peer) = (&call.rules.profile.trunks[call.b.trunk].name, call.b.peer);
        if let Some(seconds) = retry_after(answer) {
            let until = now + std::time::Duration::from_secs(seconds.min(3600));
            self.calls.health.rest(trunk, peer.addr, until);
        }
        if peer.transport.is_reliable() {
            self.calls.closes.push_back(peer);
        }
    }

    /// The call's INVITE to its peer failed with `status` (a response, or 408/503 for none):
    /// the call goes to the trunk's next peer when it may. True when it did.
    pub(super) fn fail_over(&mut self, key: CallKey, status: u16, now: Instant) -> bool {
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return false;
        };
        let trunk_id = call.b.trunk;
        let rules = call.rules.clone();
        let trunk = &rules.profile.trunks[trunk_id];
        let failed = call.b.peer.addr;
        let eligible = !call.b_rang
            && !trunk.final_codes.contains(&status)
            && (status == 408 || status == 503 || trunk.failover_codes.contains(&status));
        if !eligible {
            return false;
        }
        if !call.tried.contains(&failed) {
            call.tried.push(failed);
        }
        let health = &self.calls.health;
        let next = trunk
            .peers
            .iter()
            .find(|peer| !call.tried.contains(peer) && !health.avoid(&trunk.name, **peer, now))
            .copied();
        let Some(next) = next else {
            return false;
        };
        tracing::info!(call = %call.id, trunk = %trunk.name, %failed, status, %next, "peer failed: trying the next");
        let route = Route {
            trunk: trunk_id,
            peer: Some(next),
            uri: None,
        };
        self.reroute(key, &route, now)
    }
}
