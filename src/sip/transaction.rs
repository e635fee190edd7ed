//! RFC 3261 §17 transactions as sans-IO state machines.
//!
//! A transaction never touches a socket or a clock: its owner feeds it events (a response, a
//! retransmitted request, a timer firing) with the current time, and it answers with
//! [`TxnAction`]s: bytes to send again, timers to arm, a timeout to report. Retransmission
//! happens only over unreliable transports. INVITE server transactions also keep retransmitting
//! a 2xx until the ACK arrives (the "Accepted" state of RFC 6026).

use bytes::Bytes;
use std::time::{Duration, Instant};

/// Timer base values (RFC 3261 §17.1.1.1, table 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate (500 ms).
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE responses (4 s).
    pub t2: Duration,
    /// Longest time a message stays in the network (5 s).
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// How long an INVITE may stay unanswered after a provisional response (Timer C, > 3 min).
pub const TIMER_C: Duration = Duration::from_secs(181);

/// The RFC 3261 timers (and L for the 2xx retransmission window of RFC 6026).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKind {
    /// INVITE client retransmit.
    A,
    /// INVITE client timeout.
    B,
    /// INVITE client: a provisional response came but no final one for 3 minutes (RFC 3261
    /// §16.6 step 11, the proxy timer a B2BUA's callee side needs too).
    C,
    /// INVITE client wait for response retransmissions.
    D,
    /// Non-INVITE client retransmit.
    E,
    /// Non-INVITE client timeout.
    F,
    /// INVITE server response retransmit.
    G,
    /// INVITE server wait for ACK.
    H,
    /// INVITE server wait for ACK retransmissions.
    I,
    /// Non-INVITE server wait for request retransmissions.
    J,
    /// Non-INVITE client wait for response retransmissions.
    K,
    /// INVITE server: give up waiting for the ACK of a 2xx.
    L,
    /// INVITE server: retransmit a reliable provisional response, or give up on its PRACK
    /// (RFC 3262 §3).
    Prack,
}

/// What a transaction asks its owner to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnAction {
    /// Send these bytes to the transaction's peer.
    Send(Bytes),
    /// Fire `TimerKind` at this instant.
    Arm(TimerKind, Instant),
    /// No final response (client) or no ACK (server) arrived in time.
    Timeout,
    /// A reliable provisional response went unacknowledged for 64·T1 (RFC 3262 §3): the
    /// owner rejects the request with a 5xx.
    Unacknowledged,
    /// The transaction is over; its state can be dropped.
    Terminated,
}

/// States of a client transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// Request sent, nothing heard yet (Calling for INVITE, Trying otherwise).
    Calling,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived; absorbing retransmissions of it.
    Completed,
    /// Done.
    Terminated,
}

/// An INVITE or non-INVITE client transaction.
#[derive(Debug)]
pub struct ClientTransaction {
    invite: bool,
    reliable: bool,
    timers: TimerConfig,
    state: ClientState,
    request: Bytes,
    interval: Duration,
    ack: Option<Bytes>,
    /// When Timer C fires for real (each provisional pushes it back).
    timer_c: Option<Instant>,
}

impl ClientTransaction {
    /// Starts a transaction: sends the request and arms its timers.
    pub fn start(
        invite: bool,
        reliable: bool,
        request: Bytes,
        timers: TimerConfig,
        now: Instant,
        out: &mut Vec<TxnAction>,
    ) -> ClientTransaction {
        out.push(TxnAction::Send(request.clone()));
        if !reliable {
            let kind = if invite { TimerKind::A } else { TimerKind::E };
            out.push(TxnAction::Arm(kind, now + timers.t1));
        }
        let timeout = if invite { TimerKind::B } else { TimerKind::F };
        out.push(TxnAction::Arm(timeout, now + timers.t1 * 64));
        ClientTransaction {
            invite,
            reliable,
            timers,
            state: ClientState::Calling,
            request,
            interval: timers.t1,
            ack: None,
            timer_c: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// Handles a response. Returns true when the response must go up to the owner (the first of
    /// each final response, every provisional one, and every 2xx to an INVITE so that the ACK can
    /// be repeated). For a non-2xx final response to an INVITE, `ack` builds the hop-by-hop ACK.
    pub fn on_response(
        &mut self,
        status: u16,
        now: Instant,
        ack: impl FnOnce() -> Bytes,
        out: &mut Vec<TxnAction>,
    ) -> bool {
        match (self.state, status) {
            (ClientState::Terminated, _) => self.invite && (200..300).contains(&status),
            (ClientState::Calling | ClientState::Proceeding, 100..=199) => {
                self.state = ClientState::Proceeding;
                if self.invite {
                    let deadline = now + TIMER_C;
                    self.timer_c = Some(deadline);
                    out.push(TxnAction::Arm(TimerKind::C, deadline));
                }
                if !self.invite && !self.reliable {
                    // Non-INVITE: keep retransmitting at T2 while proceeding (timer E).
                    self.interval = self.timers.t2;
                }
                true
            }
            (ClientState::Calling | ClientState::Proceeding, 200..=299) if self.invite => {
                self.state = ClientState::Terminated;
                self.request = Bytes::new();
                out.push(TxnAction::Terminated);
                true
            }
            (ClientState::Calling | ClientState::Proceeding, _) => {
                self.state = ClientState::Completed;
                // Never sent again: only the final response's retransmissions are absorbed.
                self.request = Bytes::new();
                if self.invite {
                    let ack = ack();
                    out.push(TxnAction::Send(ack.clone()));
                    self.ack = Some(ack);
                    let wait = if self.reliable {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(32)
                    };
                    out.push(TxnAction::Arm(TimerKind::D, now + wait));
                } else {
                    let wait = if self.reliable {
                        Duration::ZERO
                    } else {
                        self.timers.t4
                    };
                    out.push(TxnAction::Arm(TimerKind::K, now + wait));
                }
                true
            }
            (ClientState::Completed, _) => {
                // A retransmitted final response: repeat the ACK, tell nobody.
                if let Some(ack) = &self.ack {
                    out.push(TxnAction::Send(ack.clone()));
                }
                false
            }
        }
    }

    /// Handles a timer.
    pub fn on_timer(&mut self, kind: TimerKind, now: Instant, out: &mut Vec<TxnAction>) {
        match (kind, self.state) {
            (TimerKind::A, ClientState::Calling) => {
                out.push(TxnAction::Send(self.request.clone()));
                self.interval *= 2;
                out.push(TxnAction::Arm(TimerKind::A, now + self.interval));
            }
            (TimerKind::E, ClientState::Calling | ClientState::Proceeding) => {
                out.push(TxnAction::Send(self.request.clone()));
                if self.state == ClientState::Calling {
                    self.interval = (self.interval * 2).min(self.timers.t2);
                }
                out.push(TxnAction::Arm(TimerKind::E, now + self.interval));
            }
            // Timer C (only the last one armed counts): the owner gives up and CANCELs; the
            // transaction stays to take the 487 and acknowledge it.
            (TimerKind::C, ClientState::Proceeding) if self.timer_c.is_some_and(|c| now >= c) => {
                self.timer_c = None;
                out.push(TxnAction::Timeout);
            }
            (TimerKind::B, ClientState::Calling)
            | (TimerKind::F, ClientState::Calling)
            | (TimerKind::F, ClientState::Proceeding) => {
                self.state = ClientState::Terminated;
                out.push(TxnAction::Timeout);
                out.push(TxnAction::Terminated);
            }
            (TimerKind::D | TimerKind::K, ClientState::Completed) => {
                self.state = ClientState::Terminated;
                out.push(TxnAction::Terminated);
            }
            _ => {}
        }
    }
}

/// States of a server transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Request received, no final response yet.
    Proceeding,
    /// Final non-2xx response sent (INVITE: waiting for the ACK).
    Completed,
    /// INVITE: ACK received, absorbing ACK retransmissions.
    Confirmed,
    /// INVITE: 2xx sent, retransmitting it until the ACK arrives.
    Accepted,
    /// Done.
    Terminated,
}

/// A reliable provisional response waiting for its PRACK.
#[derive(Debug)]
struct AwaitingPrack {
    bytes: Bytes,
    interval: Duration,
    give_up: Instant,
}

/// An INVITE or non-INVITE server transaction.
#[derive(Debug)]
pub struct ServerTransaction {
    invite: bool,
    reliable: bool,
    timers: TimerConfig,
    state: ServerState,
    last_response: Option<Bytes>,
    interval: Duration,
    awaiting_prack: Option<Box<AwaitingPrack>>,
}

impl ServerTransaction {
    /// A new transaction for a request that just arrived.
    pub fn new(invite: bool, reliable: bool, timers: TimerConfig) -> ServerTransaction {
        ServerTransaction {
            invite,
            reliable,
            timers,
            state: ServerState::Proceeding,
            last_response: None,
            interval: timers.t1,
            awaiting_prack: None,
        }
    }

    /// Sends a reliable provisional response (RFC 3262 §3): repeated after T1, 2·T1, 4·T1 …
    /// over any transport, until [`ServerTransaction::on_prack`], a final response, or 64·T1
    /// without a PRACK ([`TxnAction::Unacknowledged`]).
    pub fn send_reliable_provisional(
        &mut self,
        bytes: Bytes,
        now: Instant,
        out: &mut Vec<TxnAction>,
    ) {
        if self.state != ServerState::Proceeding {
            return;
        }
        out.push(TxnAction::Send(bytes.clone()));
        self.last_response = Some(bytes.clone());
        self.awaiting_prack = Some(Box::new(AwaitingPrack {
            bytes,
            interval: self.timers.t1,
            give_up: now + self.timers.t1 * 64,
        }));
        out.push(TxnAction::Arm(TimerKind::Prack, now + self.timers.t1));
    }

    /// The PRACK of the reliable provisional response sent last arrived: no more
    /// retransmissions. False when none was waiting for one.
    pub fn on_prack(&mut self) -> bool {
        self.awaiting_prack.take().is_some()
    }

    /// True while a reliable provisional response waits for its PRACK.
    pub fn awaits_prack(&self) -> bool {
        self.awaiting_prack.is_some()
    }

    /// The current state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// True once a final response has been sent.
    pub fn is_final_sent(&self) -> bool {
        self.state != ServerState::Proceeding
    }

    /// A retransmission of the request arrived: repeat the last response, if any.
    pub fn on_request_retransmission(&mut self, out: &mut Vec<TxnAction>) {
        if matches!(
            self.state,
            ServerState::Proceeding | ServerState::Completed | ServerState::Accepted
        ) {
            if let Some(last) = &self.last_response {
                out.push(TxnAction::Send(last.clone()));
            }
        }
    }

    /// Sends a response with this status through the transaction.
    pub fn send_response(
        &mut self,
        status: u16,
        bytes: Bytes,
        now: Instant,
        out: &mut Vec<TxnAction>,
    ) {
        if !matches!(self.state, ServerState::Proceeding) {
            return;
        }
        out.push(TxnAction::Send(bytes.clone()));
        self.last_response = Some(bytes);
        if status < 200 {
            return;
        }
        self.awaiting_prack = None;
        if !self.invite {
            self.state = ServerState::Completed;
            let wait = if self.reliable {
                Duration::ZERO
            } else {
                self.timers.t1 * 64
            };
            out.push(TxnAction::Arm(TimerKind::J, now + wait));
            return;
        }
        self.state = if status < 300 {
            ServerState::Accepted
        } else {
            ServerState::Completed
        };
        if !self.reliable {
            out.push(TxnAction::Arm(TimerKind::G, now + self.interval));
        }
        let give_up = if status < 300 {
            TimerKind::L
        } else {
            TimerKind::H
        };
        out.push(TxnAction::Arm(give_up, now + self.timers.t1 * 64));
    }

    /// An ACK for this INVITE transaction arrived. Returns true when it acknowledges a 2xx
    /// (an end-to-end ACK the owner must handle).
    pub fn on_ack(&mut self, now: Instant, out: &mut Vec<TxnAction>) -> bool {
        match self.state {
            ServerState::Completed => {
                self.state = ServerState::Confirmed;
                let wait = if self.reliable {
                    Duration::ZERO
                } else {
                    self.timers.t4
                };
                out.push(TxnAction::Arm(TimerKind::I, now + wait));
                false
            }
            ServerState::Accepted => {
                self.state = ServerState::Terminated;
                out.push(TxnAction::Terminated);
                true
            }
            _ => false,
        }
    }

    /// Handles a timer.
    pub fn on_timer(&mut self, kind: TimerKind, now: Instant, out: &mut Vec<TxnAction>) {
        match (kind, self.state) {
            (TimerKind::G, ServerState::Completed | ServerState::Accepted) => {
                if let Some(last) = &self.last_response {
                    out.push(TxnAction::Send(last.clone()));
                }
                self.interval = (self.interval * 2).min(self.timers.t2);
                out.push(TxnAction::Arm(TimerKind::G, now + self.interval));
            }
            (TimerKind::H, ServerState::Completed) | (TimerKind::L, ServerState::Accepted) => {
                self.state = ServerState::Terminated;
                out.push(TxnAction::Timeout);
                out.push(TxnAction::Terminated);
            }
            (TimerKind::I, ServerState::Confirmed) | (TimerKind::J, ServerState::Completed) => {
                self.state = ServerState::Terminated;
                out.push(TxnAction::Terminated);
            }
            (TimerKind::Prack, ServerState::Proceeding) => {
                let Some(awaiting) = self.awaiting_prack.as_mut() else {
                    return;
                };
                if now >= awaiting.give_up {
                    self.awaiting_prack = None;
                    out.push(TxnAction::Unacknowledged);
                    return;
                }
                out.push(TxnAction::Send(awaiting.bytes.clone()));
                awaiting.interval *= 2;
                let next = (now + awaiting.interval).min(awaiting.give_up);
                out.push(TxnAction::Arm(TimerKind::Prack, next));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a client transaction with no answer on virtual time and returns the send times (in
    /// ms since start) and the timeout time.
    fn silent_client(invite: bool) -> (Vec<u128>, Option<u128>) {
        let start = Instant::now();
        let mut out = Vec::new();
        let mut txn = ClientTransaction::start(
            invite,
            false,
            Bytes::from_static(b"REQ"),
            TimerConfig::default(),
            start,
            &mut out,
        );
        let mut timers: Vec<(Instant, TimerKind)> = Vec::new();
        let mut sends = Vec::new();
        let mut timeout = None;
        let mut now = start;
        loop {
            for action in out.drain(..) {
                match action {
                    TxnAction::Send(_) => sends.push((now - start).as_millis()),
                    TxnAction::Arm(kind, at) => timers.push((at, kind)),
                    TxnAction::Timeout => timeout = Some((now - start).as_millis()),
                    TxnAction::Terminated | TxnAction::Unacknowledged => {}
                }
            }
            timers.sort();
            if txn.state() == ClientState::Terminated || timers.is_empty() {
                break;
            }
            let (at, kind) = timers.remove(0);
            now = at;
            txn.on_timer(kind, now, &mut out);
        }
        (sends, timeout)
    }

    #[test]
    fn invite_over_udp_retransmits_then_times_out_at_32s() {
        let (sends, timeout) = silent_client(true);
        assert_eq!(sends, [0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(timeout, Some(32000));
    }

    #[test]
    fn non_invite_retransmit_interval_caps_at_t2() {
        let (sends, timeout) = silent_client(false);
        assert_eq!(
            sends,
            [0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert_eq!(timeout, Some(32000));
    }

    #[test]
    fn invite_client_acks_non_2xx_and_absorbs_retransmissions() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut txn = ClientTransaction::start(
            true,
            false,
            Bytes::from_static(b"INVITE"),
            TimerConfig::default(),
            now,
            &mut out,
        );
        out.clear();
        assert!(txn.on_response(180, now, Bytes::new, &mut out));
        assert_eq!(out, [TxnAction::Arm(TimerKind::C, now + TIMER_C)]);
        out.clear();
        assert!(txn.on_response(486, now, || Bytes::from_static(b"ACK"), &mut out));
        assert_eq!(out[0], TxnAction::Send(Bytes::from_static(b"ACK")));
        out.clear();
        assert!(!txn.on_response(486, now, Bytes::new, &mut out));
        assert_eq!(out, [TxnAction::Send(Bytes::from_static(b"ACK"))]);
        // Timer A no longer retransmits the INVITE once a response arrived.
        out.clear();
        txn.on_timer(TimerKind::A, now, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn timer_c_counts_from_the_last_provisional_and_keeps_the_transaction() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut txn = ClientTransaction::start(
            true,
            true,
            Bytes::from_static(b"INVITE"),
            TimerConfig::default(),
            now,
            &mut out,
        );
        txn.on_response(180, now, Bytes::new, &mut out);
        let later = now + Duration::from_secs(60);
        txn.on_response(183, later, Bytes::new, &mut out);
        out.clear();
        // The first Timer C is stale: the 183 pushed it back.
        txn.on_timer(TimerKind::C, now + TIMER_C, &mut out);
        assert!(out.is_empty());
        txn.on_timer(TimerKind::C, later + TIMER_C, &mut out);
        assert_eq!(out, [TxnAction::Timeout]);
        assert_eq!(
            txn.state(),
            ClientState::Proceeding,
            "waits for the 487 of the CANCEL"
        );
        out.clear();
        assert!(txn.on_response(
            487,
            later + TIMER_C,
            || Bytes::from_static(b"ACK"),
            &mut out
        ));
        assert_eq!(out[0], TxnAction::Send(Bytes::from_static(b"ACK")));
    }

    #[test]
    fn invite_server_retransmits_2xx_until_ack() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut txn = ServerTransaction::new(true, false, TimerConfig::default());
        txn.send_response(200, Bytes::from_static(b"200"), now, &mut out);
        assert_eq!(txn.state(), ServerState::Accepted);
        out.clear();
        txn.on_timer(TimerKind::G, now, &mut out);
        assert_eq!(out[0], TxnAction::Send(Bytes::from_static(b"200")));
        assert!(txn.on_ack(now, &mut out));
        out.clear();
        txn.on_timer(TimerKind::G, now, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn invite_server_without_ack_times_out_with_timer_h() {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut txn = ServerTransaction::new(true, false, TimerConfig::default());
        txn.send_response(486, Bytes::from_static(b"486"), now, &mut out);
        assert!(out.contains(&TxnAction::Arm(TimerKind::H, now + Duration::from_secs(32))));
        out.clear();
        txn.on_timer(TimerKind::H, now, &mut out);
        assert_eq!(out, [TxnAction::Timeout, TxnAction::Terminated]);
    }

    #[test]
    fn a_reliable_provisional_repeats_until_its_prack_or_gives_up_at_64_t1() {
        let start = Instant::now();
        let timers = TimerConfig::default();
        // Unanswered: sent at 0, then 0.5, 1.5, 3.5 … s (over TCP too), given up at 32 s.
        let mut txn = ServerTransaction::new(true, true, timers);
        let mut out = Vec::new();
        txn.send_reliable_provisional(Bytes::from_static(b"183"), start, &mut out);
        let mut sends = Vec::new();
        let mut unacknowledged = None;
        let mut at = start;
        loop {
            let mut next = None;
            for action in out.drain(..) {
                match action {
                    TxnAction::Send(_) => sends.push((at - start).as_millis()),
                    TxnAction::Arm(TimerKind::Prack, when) => next = Some(when),
                    TxnAction::Unacknowledged => unacknowledged = Some((at - start).as_millis()),
                    other => panic!("unexpected {other:?}"),
                }
            }
            let Some(when) = next else { break };
            at = when;
            txn.on_timer(TimerKind::Prack, at, &mut out);
        }
        assert_eq!(sends, [0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(unacknowledged, Some(32_000), "a 5xx is due at 64*T1");
        assert!(!txn.awaits_prack());

        // Acknowledged: no more retransmissions; a second PRACK matches nothing.
        let mut txn = ServerTransaction::new(true, false, timers);
        txn.send_reliable_provisional(Bytes::from_static(b"180"), start, &mut out);
        assert!(txn.on_prack());
        assert!(!txn.on_prack());
        out.clear();
        txn.on_timer(TimerKind::Prack, start + timers.t1, &mut out);
        assert!(out.is_empty(), "{out:?}");
        // A final response also ends the wait.
        txn.send_reliable_provisional(Bytes::from_static(b"183"), start, &mut out);
        txn.send_response(200, Bytes::from_static(b"200"), start, &mut out);
        assert!(!txn.awaits_prack());
    }

    #[test]
    fn reliable_transport_never_retransmits() {
        let now = Instant::now();
        let mut out = Vec::new();
        let _txn = ClientTransaction::start(
            true,
            true,
            Bytes::from_static(b"INVITE"),
            TimerConfig::default(),
            now,
            &mut out,
        );
        assert!(!out
            .iter()
            .any(|a| matches!(a, TxnAction::Arm(TimerKind::A, _))));
    }
}
