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
    /// Each leg's last RTCP quality report.
    pub quality: [Option<LegQuality>; 2],
    /// The Reason header of the BYE or CANCEL that ended the call (or Bridgehead's own).
    pub end_reason: Option<String>,
}

/// How captured messages are tied to their call (SIP capture's correlation), told when the
/// driver asked for links ([`Calls::keep_links`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// A B-leg Call-ID made for `call` (an A-leg Call-ID): its first attempt, a failover, a
    /// transfer's target.
    Leg { call: String, b_call_id: String },
    /// `call` ended.
    Ended { call: String },
}

/// Every Reason header of `msg` (a SIP one and a Q.850 one may come together), joined with
/// `, `; None without any.
pub(super) fn reasons(msg: &Message) -> Option<String> {
    let all: Vec<&str> = msg
        .headers_named(&HeaderName::Reason)
        .filter_map(|value| std::str::from_utf8(value).ok())
        .map(str::trim)
        .collect();
    (!all.is_empty()).then(|| all.join(", "))
}

/// A new call refused before it became a call, as its record needs it.
pub(super) struct Refused<'a> {
    /// The caller's dialog (its Call-ID, parties, peer and trunk).
    pub a: &'a Dialog,
    pub b_call_id: &'a str,
    pub rules: &'a RuleSet,
    /// When its INVITE came.
    pub received: Instant,
}

impl Calls {
    /// From now on every B-leg Call-ID made and every call ended leaves a [`Link`] for
    /// [`Calls::poll_link`].
    pub fn keep_links(&mut self) {
        self.links = Some(VecDeque::new());
    }

    /// A link, oldest first.
    pub fn poll_link(&mut self) -> Option<Link> {
        self.links.as_mut()?.pop_front()
    }

    /// Tells the driver of `link`, when it asked.
    pub(super) fn link(&mut self, link: Link) {
        if let Some(links) = self.links.as_mut() {
            links.push_back(link);
        }
    }

    /// Keeps `reason` (a Reason header value) as what ended the call, unless one was kept.
    pub(super) fn note_end_reason(&mut self, key: CallKey, reason: Option<&str>) {
        if let (Some(call), Some(reason)) = (self.by_key.get_mut(&key), reason) {
            call.end_reason.get_or_insert_with(|| reason.to_string());
        }
    }

    /// Queues the record of a new call refused at `now` before it became a call (no B-leg
    /// went: a rule's rejection, no route or peer, a drain), with the `status` the caller
    /// got; `caller` (true) when it ended it itself (a CANCEL).
    pub(super) fn record_refused(
        &mut self,
        setup: Refused<'_>,
        (status, reason, caller): (u16, &'static str, bool),
        now: Instant,
    ) {
        self.link(Link::Ended {
            call: setup.a.call_id.clone(),
        });
        let Some(records) = self.records.as_mut() else {
            return;
        };
        let a = setup.a;
        records.push_back(CallRecord {
            id: a.call_id.clone(),
            b_call_id: setup.b_call_id.to_string(),
            ingress: setup
                .rules
                .profile
                .trunks
                .get(a.trunk)
                .map_or_else(String::new, |t| t.name.clone()),
            egress: String::new(),
            from: a.remote_party.clone(),
            to: a.local_party.clone(),
            caller_peer: a.peer.label(),
            callee_peer: String::new(),
            invite_at: setup.received,
            ringing_at: None,
            answered_at: None,
            ended_at: now,
            status,
            ended_by: if caller { "caller" } else { "sbc" },
            reason,
            version: setup.rules.version,
            attempts: 0,
            quality: [None, None],
            end_reason: None,
        });
    }

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
            caller_peer: call.a.peer.label(),
            callee_peer: call.b.peer.label(),
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
            quality: call.quality,
            end_reason: call.end_reason.clone(),
        });
    }
}
