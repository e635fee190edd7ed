//! What the admin API reads of a shard's calls, and the one thing it does to them: hang one up
//! (BYE with a Reason on both legs of an answered call; 503 to the caller and CANCEL to the
//! callee of one still ringing).

use super::*;
use serde::Serialize;

/// The Reason of the BYEs that end a call the operator hung up (RFC 3326: Q.850 normal call
/// clearing).
const OPERATOR_REASON: &str = "Q.850 ;cause=16 ;text=\"Ended by the operator\"";

/// One leg of a call as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct LegSummary {
    /// The leg's Call-ID.
    pub call_id: String,
    /// The trunk the leg is on.
    pub trunk: String,
    /// Where the leg's peer is (transport and address).
    pub peer: String,
    /// The party at the far end of the leg (its From or To header, as it came).
    pub party: String,
    /// The media addresses the leg's SDP gave, one per anchored stream.
    pub media: Vec<String>,
    /// Bridgehead's media ports facing the leg, one per anchored stream.
    pub ports: Vec<u16>,
    /// The leg's last RTCP quality report (MOS, loss, jitter).
    pub quality: Option<LegQuality>,
}

/// A call as the admin API lists it.
#[derive(Clone, Debug, Serialize)]
pub struct CallSummary {
    /// The A-leg Call-ID (the call's id in logs and rules).
    pub id: String,
    pub shard: usize,
    /// `calling`, `proceeding`, `cancelled` or `answered`.
    pub state: &'static str,
    /// The rule-set version the call runs on.
    pub version: u64,
    /// Seconds since the caller's INVITE.
    pub age_s: f64,
    /// Seconds since the answer, once answered.
    pub talk_s: Option<f64>,
    /// B-leg INVITEs sent (more than one: failover).
    pub attempts: u8,
    pub a: LegSummary,
    pub b: LegSummary,
}

/// What a shard's calls tell the metrics.
#[derive(Clone, Debug, Default)]
pub struct CallsSnapshot {
    /// Calls in progress, and how many of them are answered.
    pub calls: usize,
    pub answered: usize,
    /// Calls in progress by rule-set version.
    pub versions: Vec<(u64, usize)>,
    /// Media ports held by calls (RTP and RTCP).
    pub ports_in_use: usize,
}

impl Call {
    /// The name of trunk `id` in the call's rule-set version.
    pub(super) fn trunk_name(&self, id: TrunkId) -> String {
        self.rules
            .profile
            .trunks
            .get(id)
            .map_or_else(String::new, |t| t.name.clone())
    }
}

impl Calls {
    /// Every call in progress, oldest first.
    pub fn summaries(&self, now: Instant) -> Vec<CallSummary> {
        let mut calls: Vec<_> = self
            .by_key
            .values()
            .map(|call| self.summary(call, now))
            .collect();
        calls.sort_by(|x, y| y.age_s.total_cmp(&x.age_s));
        calls
    }

    /// The call whose A-leg or B-leg Call-ID is `id`.
    pub fn find(&self, id: &str, now: Instant) -> Option<CallSummary> {
        self.key_of(id)
            .and_then(|key| self.by_key.get(&key))
            .map(|call| self.summary(call, now))
    }

    fn key_of(&self, id: &str) -> Option<CallKey> {
        self.by_key
            .iter()
            .find(|(_, call)| call.a.call_id == id || call.b.call_id == id)
            .map(|(key, _)| *key)
    }

    fn summary(&self, call: &Call, now: Instant) -> CallSummary {
        let leg = |leg: Leg| {
            let dialog = call.leg(leg);
            let side = |stream: &crate::media::Stream| match leg {
                Leg::A => stream.a,
                Leg::B => stream.b,
            };
            LegSummary {
                call_id: dialog.call_id.clone(),
                trunk: call.trunk_name(dialog.trunk),
                peer: dialog.peer.label(),
                party: dialog.remote_party.clone(),
                media: call
                    .streams
                    .iter()
                    .filter_map(|s| side(s).remote.map(|a| a.to_string()))
                    .collect(),
                ports: call.streams.iter().map(|s| side(s).local).collect(),
                quality: call.quality[leg.index()],
            }
        };
        let (state, talk_s) = match call.state {
            CallState::Calling => ("calling", None),
            CallState::Proceeding => ("proceeding", None),
            CallState::Cancelled { .. } => ("cancelled", None),
            CallState::Answered { at } => (
                "answered",
                Some(now.saturating_duration_since(at).as_secs_f64()),
            ),
        };
        CallSummary {
            id: call.id.clone(),
            shard: self.shard,
            state,
            version: call.rules.version,
            age_s: now.saturating_duration_since(call.started).as_secs_f64(),
            talk_s,
            attempts: call.attempts,
            a: leg(Leg::A),
            b: leg(Leg::B),
        }
    }

    /// What the shard's calls tell the metrics.
    pub fn snapshot(&self) -> CallsSnapshot {
        let answered = self
            .by_key
            .values()
            .filter(|call| matches!(call.state, CallState::Answered { .. }))
            .count();
        let ports = self
            .by_key
            .values()
            .map(|call| call.streams.len() * 2)
            .sum();
        CallsSnapshot {
            calls: self.by_key.len(),
            answered,
            versions: self.by_version(),
            ports_in_use: ports,
        }
    }
}

impl B2bua<'_> {
    /// Hangs up the call whose A-leg or B-leg Call-ID is `id`; false when there is none.
    pub(crate) fn hang_up_by_operator(&mut self, id: &str, now: Instant) -> bool {
        let Some(key) = self.calls.key_of(id) else {
            return false;
        };
        tracing::info!(call = id, "call hung up by the operator");
        self.end_now(key, "operator", OPERATOR_REASON, now);
        true
    }

    /// Ends a call at once: BYE with `reason` on both legs of an answered call; a CANCEL to
    /// the callee (once it rang) and 503 to the caller of one not answered yet.
    pub(super) fn end_now(&mut self, key: CallKey, why: &'static str, reason: &str, now: Instant) {
        let Some(call) = self.calls.by_key.get(&key) else {
            return;
        };
        if matches!(call.state, CallState::Answered { .. }) {
            self.hang_up(key, why, Some(reason), now);
            return;
        }
        let (server, cancelled, rang) =
            (call.a_invite, call.state.is_cancelled(), call.state.rang());
        // A CANCEL goes only to a callee that sent a provisional (RFC 3261 §9.1) and was not
        // cancelled yet; one that answers later, for a call gone, gets a CANCEL or an ACK and
        // a BYE then.
        if rang && !cancelled {
            self.cancel_b_invite(key, now);
        }
        if !cancelled {
            self.reply_local(key, Leg::A, server, 503, now);
        }
        self.end_call(key, why, None, now);
    }
}
