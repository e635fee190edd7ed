//! A call's record at its end (what a CDR and the per-trunk metrics are made of), queued for
//! the driver when it asked for records ([`Calls::keep_records`]).

use super::*;

/// What a call was, told once when it ends. Times are the engine's clock: the driver turns
/// them into wall-clock times.
#[derive(Clone, Debug)]
pub struct CallRecord {
    /// The A-leg Call-ID (the call's id) and the B-leg's.
    pub id: String,
    pub b_call_id: String,
    /// The caller's trunk and the callee's.
    pub ingress: String,
    pub egress: String,
    /// The caller (its From) and whom it called (its To), as they came.
    pub from: String,
    pub to: String,
    /// Where each leg's peer is (`udp:IP:port`).
    pub caller_peer: String,
    pub callee_peer: String,
    /// The caller's INVITE, the callee's first ringing (a provisional other than 100), the
    /// answer, the end.
    pub invite_at: Instant,
    pub ringing_at: Option<Instant>,
    pub answered_at: Option<Instant>,
    pub ended_at: Instant,
    /// The final status the caller got (200 when answered; 0 when it got none).
    pub status: u16,
    /// Who ended it: `caller`, `callee` or `sbc`.
    pub ended_by: &'static str,
    /// How: `bye`, `cancel`, `rejected`, `timeout`, `error`, `drain`, `operator`, …
    pub reason: &'static str,
    /// The rule-set version it ran on, and the B-leg INVITEs sent (more than one: failover).
    pub version: u64,
    pub attempts: u8,
    /// The estimated MOS of each leg's last RTCP quality report.
    pub mos: [Option<f64>; 2],
}

impl Calls {
    /// From now on every call that ends leaves a [`CallRecord`] for [`Calls::poll_record`]
    /// (the driver asks; the replay harness and tests need none).
    pub fn keep_records(&mut self) {
        self.records = Some(VecDeque::new());
    }

    /// A record of a call that ended, oldest first.
    pub fn poll_record(&mut self) -> Option<CallRecord> {
        self.records.as_mut()?.pop_front()
    }

    /// Queues the record of `call`, ended at `now` by `by` for `reason`.
    pub(super) fn record(
        &mut self,
        call: &Call,
        reason: &'static str,
        by: Option<Leg>,
        now: Instant,
    ) {
        let Some(records) = self.records.as_mut() else {
            return;
        };
        let answered_at = match call.state {
            CallState::Answered { at } => Some(at),
            _ => None,
        };
        records.push_back(CallRecord {
            id: call.id.clone(),
            b_call_id: call.b.call_id.clone(),
            ingress: call.trunk_name(call.a.trunk),
            egress: call.trunk_name(call.b.trunk),
            from: call.a.remote_party.clone(),
            to: call.a.local_party.clone(),
            caller_peer: call.a.peer_label(),
            callee_peer: call.b.peer_label(),
            invite_at: call.started,
            ringing_at: call.rang_at,
            answered_at,
            ended_at: now,
            status: call.a_final.unwrap_or(0),
            ended_by: match by {
                Some(Leg::A) => "caller",
                Some(Leg::B) => "callee",
                None => "sbc",
            },
            reason,
            version: call.rules.version,
            attempts: call.attempts,
            mos: call.mos,
        });
    }
}
