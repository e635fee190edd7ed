//! Session timers (RFC 4028), on each leg on its own: Bridgehead is the UAS of the caller's
//! leg and the UAC of the callee's, agrees an interval and a refresher with each, refreshes a
//! leg itself (UPDATE) where it is the refresher, and ends the call with BYE on both legs when a
//! leg whose peer refreshes stops doing so, or when its own refresh fails.

use super::in_dialog::OwnRequest;
use super::*;
use crate::config::SessionTimerConfig;
use std::time::Duration;

/// Who refreshes a leg's session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refresher {
    Bridgehead,
    Peer,
}

/// A leg's session timer: the interval agreed, in seconds, and who refreshes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SessionTimer {
    pub interval: u32,
    pub refresher: Refresher,
}

/// What a call's timer does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallTimer {
    /// Bridgehead refreshes the leg's session.
    Refresh(Leg),
    /// The leg's peer did not refresh in time.
    Expire(Leg),
    /// The caller's QoS preconditions were not met in time (its callee INVITE still held).
    Reservation,
    /// The callee's peer did not answer the INVITE at all within the trunk's
    /// `failover_timeout`.
    Failover,
    /// A transferor left in its old dialog did not hang up after its transfer: Bridgehead does.
    TransferorBye,
}

/// The shortest session interval there is (RFC 4028 §4: Min-SE is never below 90 s).
const MIN_INTERVAL: u32 = 90;

/// The reason on the BYEs of a call whose session timer ran out.
const EXPIRED: &str = "SIP ;cause=408 ;text=\"Session timer expired\"";
/// The reason on the BYEs of a call whose refresh was refused or went unanswered.
const REFRESH_FAILED: &str = "SIP ;cause=408 ;text=\"Session refresh failed\"";

/// A message's Session-Expires: the interval, and the refresher parameter (`uac`/`uas`).
fn session_expires(msg: &Message) -> Option<(u32, Option<String>)> {
    let value = msg.header_str(&HeaderName::SessionExpires)?;
    let mut parts = value.split(';');
    let interval = parts.next()?.trim().parse().ok()?;
    let refresher = parts.find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("refresher")
            .then(|| value.trim().to_ascii_lowercase())
    });
    Some((interval, refresher))
}

/// When a leg's timer fires next: half the interval for Bridgehead's refresh; for the peer's,
/// the interval less a third of it (at most 32 s), when RFC 4028 §10 has the session end.
fn due(timer: SessionTimer, from: Instant) -> (Instant, bool) {
    let interval = Duration::from_secs(timer.interval.into());
    match timer.refresher {
        Refresher::Bridgehead => (from + interval / 2, true),
        Refresher::Peer => (
            from + interval - (interval / 3).min(Duration::from_secs(32)),
            false,
        ),
    }
}

impl Calls {
    /// The next instant a call timer is due.
    pub fn poll_call_timer(&self) -> Option<Instant> {
        self.call_timers.first_key_value().map(|((at, _), _)| *at)
    }

    /// The next call timer due at `now`, still current (a timer re-armed since, or of a call
    /// that ended, is dropped).
    pub fn next_call_timer(&mut self, now: Instant) -> Option<(CallKey, CallTimer)> {
        while let Some((&(at, seq), &(key, timer))) = self.call_timers.first_key_value() {
            if at > now {
                return None;
            }
            self.call_timers.remove(&(at, seq));
            let current = self.by_key.get(&key).is_some_and(|call| match timer {
                CallTimer::Refresh(leg) | CallTimer::Expire(leg) => {
                    call.session_due[leg.index()] == Some((at, seq))
                }
                CallTimer::Reservation => call.preconditions.as_ref().is_some_and(|p| p.waiting()),
                CallTimer::Failover => call.failover_due == Some((at, seq)),
                CallTimer::TransferorBye => call.refer.as_ref().is_some_and(|r| r.waits_for_bye()),
            });
            if current {
                return Some((key, timer));
            }
        }
        None
    }

    /// Arms the wait for an answer from the call's peer (at `at`; an INVITE sent since
    /// supersedes it).
    pub(super) fn arm_failover(&mut self, key: CallKey, at: Instant) {
        let Some(call) = self.by_key.get_mut(&key) else {
            return;
        };
        self.timer_seq += 1;
        let armed = (at, self.timer_seq);
        if let Some(superseded) = call.failover_due.replace(armed) {
            self.call_timers.remove(&superseded);
        }
        self.call_timers.insert(armed, (key, CallTimer::Failover));
    }

    /// Arms the wait for a transferor's BYE (at `at`, Bridgehead sends its own).
    pub(super) fn arm_transferor_bye(&mut self, key: CallKey, at: Instant) {
        self.timer_seq += 1;
        self.call_timers
            .insert((at, self.timer_seq), (key, CallTimer::TransferorBye));
    }

    /// Arms the wait for a caller's QoS preconditions (it ends at `at`).
    pub(super) fn arm_reservation_wait(&mut self, key: CallKey, at: Instant) {
        self.timer_seq += 1;
        self.call_timers
            .insert((at, self.timer_seq), (key, CallTimer::Reservation));
    }

    /// (Re)arms a leg's session timer from `from`.
    fn arm_session(&mut self, key: CallKey, leg: Leg, from: Instant) {
        let Some(call) = self.by_key.get_mut(&key) else {
            return;
        };
        let Some(timer) = call.session[leg.index()] else {
            return;
        };
        let (at, refresh) = due(timer, from);
        self.timer_seq += 1;
        let armed = (at, self.timer_seq);
        // The timer this one supersedes goes (a peer refreshing often leaves one entry).
        if let Some(superseded) = call.session_due[leg.index()].replace(armed) {
            self.call_timers.remove(&superseded);
        }
        let kind = if refresh {
            CallTimer::Refresh(leg)
        } else {
            CallTimer::Expire(leg)
        };
        self.call_timers.insert(armed, (key, kind));
    }
}

impl B2bua<'_> {
    /// The caller's leg, from its INVITE and its trunk's settings: `422` when it asks for less
    /// than the trunk's Min-SE, else its session timer (none when neither side wants one).
    pub(super) fn caller_session(
        msg: &Message,
        settings: SessionTimerConfig,
    ) -> Result<Option<SessionTimer>, Refusal> {
        let supports = has_option(msg, &HeaderName::Supported, "timer")
            || has_option(msg, &HeaderName::Require, "timer");
        let asked = session_expires(msg);
        if let Some((interval, _)) = asked {
            if interval < settings.min_se {
                let min_se = (HeaderName::MinSE, settings.min_se.to_string());
                return Err((422, vec![min_se]));
            }
        }
        let interval = match asked {
            Some((interval, _)) => interval,
            None if settings.expires > 0 => settings.expires,
            None => return Ok(None),
        };
        // A caller that supports timers refreshes unless it asked Bridgehead to (§9).
        let wants_uas = asked.and_then(|(_, r)| r).as_deref() == Some("uas");
        let refresher = if supports && !wants_uas {
            Refresher::Peer
        } else {
            Refresher::Bridgehead
        };
        Ok(Some(SessionTimer {
            interval,
            refresher,
        }))
    }

    /// What the callee's INVITE says of timers: Bridgehead supports them, and asks for the
    /// trunk's interval (or the caller's, when longer or when the trunk has none) with its
    /// Min-SE.
    pub(super) fn callee_session_headers(
        settings: SessionTimerConfig,
        caller: Option<SessionTimer>,
    ) -> Vec<(HeaderName, String)> {
        let asked = settings.expires.max(caller.map_or(0, |t| t.interval));
        if asked == 0 {
            return Vec::new();
        }
        vec![
            (HeaderName::SessionExpires, asked.to_string()),
            (HeaderName::MinSE, settings.min_se.to_string()),
        ]
    }

    /// The callee answered the call's current INVITE (`id`) `422` with its Min-SE (RFC 4028
    /// §8.1): the INVITE goes again, once, asking for that interval, in a new transaction
    /// (next CSeq, new branch). False when it is not retried (the 422 then goes on as any
    /// failure).
    pub(super) fn retry_with_min_se(
        &mut self,
        key: CallKey,
        id: TxnId,
        mut invite: Message,
        too_small: &Message,
        now: Instant,
    ) -> bool {
        let min_se = too_small
            .header_str(&HeaderName::MinSE)
            .and_then(|v| v.split(';').next()?.trim().parse::<u32>().ok())
            .filter(|s| *s >= MIN_INTERVAL && *s <= 86_400);
        let branch = self.new_branch();
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return false;
        };
        let Some(min_se) = min_se.filter(|_| call.b_invite == id && !call.min_se_retried) else {
            return false;
        };
        call.min_se_retried = true;
        call.b.local_cseq += 1;
        call.b.invite_cseq = call.b.local_cseq;
        tracing::info!(call = %call.id, min_se, "the callee wants a longer session interval: INVITE again");
        let listener = &call.rules.profile.listeners[call.b.peer.listener];
        let via = via_value(listener, call.b.peer.transport, &branch);
        if let Some(top) = invite
            .headers
            .iter_mut()
            .find(|h| h.name == HeaderName::Via)
        {
            *top = crate::sip::Header::new(HeaderName::Via, via);
        }
        invite.set_header(HeaderName::CSeq, format!("{} INVITE", call.b.local_cseq));
        invite.set_header(HeaderName::SessionExpires, min_se.to_string());
        invite.set_header(HeaderName::MinSE, min_se.to_string());
        let peer = call.b.peer;
        let retried = self.start_client(invite, peer, ClientOwner::Invite(key), now);
        if let Some(call) = self.calls.by_key.get_mut(&key) {
            call.b_invite = retried;
        }
        true
    }

    /// The callee's leg, from its 2xx: the interval and refresher it chose. A 2xx without
    /// Session-Expires means that leg's session does not expire (§7.2): no timer.
    pub(super) fn callee_session(msg: &Message) -> Option<SessionTimer> {
        let (interval, refresher) = session_expires(msg)?;
        Some(SessionTimer {
            // No session is shorter than 90 s (§4): a callee saying less (0 would have its
            // refresh due at once, again and again) gets the minimum.
            interval: interval.max(MIN_INTERVAL),
            refresher: if refresher.as_deref() == Some("uas") {
                Refresher::Peer
            } else {
                Refresher::Bridgehead
            },
        })
    }

    /// The session-timer headers of a message toward `leg` in a transaction whose request
    /// `sent_by` Bridgehead or the peer: `refresher` names the refresher by its role in that
    /// transaction (§7.4, §9), and a response whose UAC refreshes says `Require: timer`.
    pub(super) fn session_headers(
        call: &Call,
        leg: Leg,
        sent_by: Refresher,
    ) -> Vec<(HeaderName, String)> {
        let Some(timer) = call.session[leg.index()] else {
            return Vec::new();
        };
        let uac_refreshes = timer.refresher == sent_by;
        let refresher = if uac_refreshes { "uac" } else { "uas" };
        let mut headers = vec![(
            HeaderName::SessionExpires,
            format!("{};refresher={refresher}", timer.interval),
        )];
        match sent_by {
            // Bridgehead's own request (a refresh, or one relayed from the other leg).
            Refresher::Bridgehead => headers.push((HeaderName::Supported, "timer".to_string())),
            Refresher::Peer if uac_refreshes => {
                headers.push((HeaderName::Require, "timer".to_string()));
            }
            Refresher::Peer => {}
        }
        headers
    }

    /// The call is answered: both legs' session timers start.
    pub(super) fn start_session_timers(&mut self, key: CallKey, now: Instant) {
        self.calls.arm_session(key, Leg::A, now);
        self.calls.arm_session(key, Leg::B, now);
    }

    /// A leg's peer sent a refresh (re-INVITE or UPDATE): its session runs on from now.
    pub(super) fn session_refreshed(&mut self, key: CallKey, leg: Leg, now: Instant) {
        // Before the answer no session runs yet (an early UPDATE refreshes nothing).
        let peer_refreshes = self
            .calls
            .by_key
            .get(&key)
            .filter(|call| matches!(call.state, CallState::Answered { .. }))
            .and_then(|call| call.session[leg.index()])
            .is_some_and(|timer| timer.refresher == Refresher::Peer);
        if peer_refreshes {
            self.calls.arm_session(key, leg, now);
        }
    }

    /// A call timer fired: Bridgehead refreshes the leg (UPDATE without SDP, re-armed at once),
    /// or ends the call whose leg was not refreshed in time.
    pub(super) fn on_call_timer(&mut self, key: CallKey, timer: CallTimer, now: Instant) {
        match timer {
            CallTimer::Refresh(leg) => {
                let Some(call) = self.calls.by_key.get_mut(&key) else {
                    return;
                };
                let refresh = if call.leg(leg).allows_update {
                    OwnRequest::new(Method::Update)
                } else {
                    // A peer that takes no UPDATE is refreshed with a re-INVITE (§7.4) offering
                    // the session it has (the last SDP it got, unchanged).
                    let Some(sdp) = call.last_sdp[leg.index()].clone() else {
                        tracing::warn!(call = %call.id, leg = leg.name(), "no session refresh: the peer takes no UPDATE and has no SDP of Bridgehead's");
                        return;
                    };
                    if call.invite_pending {
                        // An INVITE of the call is under way: it refreshes the session too.
                        self.calls.arm_session(key, leg, now);
                        return;
                    }
                    call.invite_pending = true;
                    OwnRequest::new(Method::Invite).with_sdp_as_sent(sdp)
                };
                let refresh = refresh.owned_by(ClientOwner::Refresh(key, leg));
                self.send_in_dialog(key, leg, refresh, now);
                self.calls.arm_session(key, leg, now);
            }
            CallTimer::Reservation => self.on_reservation_timeout(key, now),
            CallTimer::Failover => self.on_failover_timeout(key, now),
            CallTimer::TransferorBye => self.transferor_gone(key, true, now),
            CallTimer::Expire(leg) => {
                if let Some(call) = self.calls.by_key.get(&key) {
                    tracing::info!(call = %call.id, leg = leg.name(), "session timer expired: hanging up");
                }
                self.hang_up(key, "session-timer", Some(EXPIRED), now);
            }
        }
    }

    /// Bridgehead's refresh got a final response (`status`), or none (408): a 408 or 481 ends
    /// the call (§10); other refusals (491, 405, 501…) leave it up.
    pub(super) fn on_refresh_outcome(&mut self, key: CallKey, status: u16, now: Instant) {
        if status != 408 && status != 481 {
            return;
        }
        if let Some(call) = self.calls.by_key.get(&key) {
            tracing::info!(call = %call.id, status, "session refresh failed: hanging up");
        }
        self.hang_up(key, "session-timer", Some(REFRESH_FAILED), now);
    }
}
