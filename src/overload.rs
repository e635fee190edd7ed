//! Overload control of one shard: which new calls it refuses (`503` with `Retry-After`, before
//! anything else is done for them) so that it keeps doing well what it took on.
//!
//! Three signals, each from the profile's `overload`:
//! - **queue delay**: a new call's INVITE that waited longer than `queue_delay_ms` for the
//!   shard (kernel arrival stamp to handling) is refused. It measures what callers feel, works
//!   when the machine is shared, and refuses just what the shard cannot take in time: under a
//!   flood the shard keeps completing calls at its capacity.
//! - **CPU**: past `cpu_percent`, the shard takes a share of new calls that brings its CPU back
//!   to the limit (scaled each 100 ms window), not none at all: refusing everything for a
//!   window and taking a backlog the next would waste most of the capacity.
//! - **hard limits**: past `queue` messages waiting or `calls` calls, every new call is refused
//!   until the shard is well below (half the queue, nine tenths of the calls).
//!
//! [`Load`] measures the shard (the driver feeds it); [`Gate`] decides per new call (the engine
//! asks it). Neither touches a clock or a file.

use crate::config::OverloadConfig;
use std::time::{Duration, Instant};

/// How long a shard's CPU share is measured over.
pub const LOAD_WINDOW: Duration = Duration::from_millis(100);

/// The share of new calls the CPU limit leaves at least (a shard never stops taking calls for
/// its CPU alone: the queue delay refuses what it cannot take).
const MIN_SHARE: f64 = 0.05;

/// What the driver tells the engine after each batch of work.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throttle {
    /// Past the queue or calls limit: every new call is refused.
    pub shut: bool,
    /// The share of new calls taken (the CPU limit's), 1 when below it.
    pub share: f64,
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle {
            shut: false,
            share: 1.0,
        }
    }
}

/// How busy a shard is: its CPU share over the last window, the share of new calls that share
/// leaves, and whether a hard limit is passed (with hysteresis, so that it does not flap).
#[derive(Debug)]
pub struct Load {
    /// Time between waking and waiting again in the current window (what the shard's work
    /// took, its thread preempted or not), and when the window started.
    busy: Duration,
    since: Option<Instant>,
    /// The thread's CPU time at the window's start, where the system tells it.
    cpu_at: Option<Duration>,
    /// The CPU share of the last full window, in percent.
    percent: u32,
    /// Set at the end of a window whose CPU share is new.
    measured: bool,
    throttle: Throttle,
}

impl Default for Load {
    fn default() -> Load {
        Load {
            busy: Duration::ZERO,
            since: None,
            cpu_at: None,
            percent: 0,
            measured: false,
            throttle: Throttle::default(),
        }
    }
}

impl Load {
    /// The shard worked for `busy` until `now`. At each window's end the share is the CPU the
    /// thread used (`cpu`: its CPU time now), or, where that is unknown, the time it was busy:
    /// a shard preempted by other work on the machine is not taken for an overloaded one.
    pub fn worked(&mut self, busy: Duration, now: Instant, cpu: impl FnOnce() -> Option<Duration>) {
        self.busy += busy;
        let Some(since) = self.since else {
            // The first window starts now.
            self.since = Some(now);
            self.cpu_at = cpu();
            return;
        };
        let window = now.saturating_duration_since(since);
        if window >= LOAD_WINDOW {
            let cpu_now = cpu();
            let used = match (cpu_now, self.cpu_at) {
                (Some(now), Some(before)) => now.saturating_sub(before),
                _ => self.busy,
            };
            self.cpu_at = cpu_now;
            self.percent = (used.as_secs_f64() / window.as_secs_f64() * 100.0).round() as u32;
            self.measured = true;
            self.busy = Duration::ZERO;
            self.since = Some(now);
        }
    }

    /// What new calls the shard takes now, with `waiting` messages in its queue and `calls`
    /// calls: shut past a hard limit; a share of them scaled by limit/CPU at each window's end
    /// (at most halved at once; back up as fast as the CPU allows, all of them after a quiet
    /// window).
    pub fn throttle(&mut self, limits: &OverloadConfig, waiting: usize, calls: usize) -> Throttle {
        let calls_limit = if limits.calls == 0 {
            usize::MAX
        } else {
            limits.calls
        };
        self.throttle.shut = if self.throttle.shut {
            waiting * 2 >= limits.queue || calls * 10 >= calls_limit.saturating_mul(9)
        } else {
            waiting >= limits.queue || calls >= calls_limit
        };
        if std::mem::take(&mut self.measured) {
            self.throttle.share = if limits.cpu_percent == 0 {
                1.0
            } else {
                let ratio = f64::from(limits.cpu_percent) / f64::from(self.percent.max(1));
                let next = self.throttle.share * ratio.max(0.5);
                // All of them again only well below the limit (a tenth), so that a shard at
                // its limit does not flip between all and a share every window.
                let well_below = self.percent * 10 <= limits.cpu_percent * 9;
                if next >= 1.0 && (self.throttle.share >= 1.0 || well_below) {
                    1.0
                } else {
                    next.clamp(MIN_SHARE, 0.99)
                }
            };
        }
        self.throttle
    }
}

/// The CPU time the calling thread has used (Linux: the first field of
/// `/proc/thread-self/schedstat`, nanoseconds on a CPU); None where it cannot be read.
pub fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(nanos))
}

/// Why a new call is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Past the queue or calls limit.
    Limit,
    /// Its INVITE waited past `queue_delay_ms`.
    QueueDelay,
    /// Outside the share the CPU limit leaves.
    Cpu,
}

/// The engine's side: decides for each new call, counts the refused, and says when refusing
/// starts and stops (logged at WARN by the engine).
#[derive(Debug)]
pub struct Gate {
    throttle: Throttle,
    /// The CPU share's running credit: a new call is taken while it holds a whole one.
    credit: f64,
    /// A late INVITE was refused and no new call was taken promptly since; the spell ends by
    /// itself a window after the last late one.
    late_until: Option<Instant>,
    /// New calls refused so far.
    pub refused: u64,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            throttle: Throttle::default(),
            credit: 0.0,
            late_until: None,
            refused: 0,
        }
    }
}

impl Gate {
    /// Whether the gate refuses anything now.
    pub fn refusing(&self, now: Instant) -> bool {
        self.throttle.shut
            || self.throttle.share < 1.0
            || self.late_until.is_some_and(|until| until > now)
    }

    /// The driver's latest throttle.
    pub fn set(&mut self, throttle: Throttle) {
        self.throttle = throttle;
    }

    /// A new call whose INVITE waited `waited` for the shard: None to take it, the cause to
    /// refuse it. A call taken after waiting less than half `queue_delay` ends a late spell.
    pub fn check(
        &mut self,
        waited: Duration,
        queue_delay: Duration,
        now: Instant,
    ) -> Option<Cause> {
        let cause = if self.throttle.shut {
            Some(Cause::Limit)
        } else if waited > queue_delay {
            self.late_until = Some(now + LOAD_WINDOW);
            Some(Cause::QueueDelay)
        } else {
            // Taken while the credit holds a whole call; what is left over carries to the next
            // (capped at one call, so that a quiet spell does not let a burst through).
            self.credit += self.throttle.share;
            let taken = self.credit >= 1.0 - 1e-9;
            if taken {
                self.credit -= 1.0;
            }
            self.credit = self.credit.clamp(0.0, 1.0);
            (!taken).then_some(Cause::Cpu)
        };
        match cause {
            Some(_) => self.refused += 1,
            None if waited * 2 < queue_delay => self.late_until = None,
            None => {}
        }
        cause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> OverloadConfig {
        OverloadConfig {
            queue: 100,
            cpu_percent: 90,
            calls: 1000,
            queue_delay_ms: 200,
        }
    }

    #[test]
    fn past_the_queue_or_calls_limit_a_shard_is_shut_until_well_below_both() {
        let limits = limits();
        let mut load = Load::default();
        assert!(load.throttle(&limits, 100, 0).shut);
        assert!(
            load.throttle(&limits, 60, 0).shut,
            "not yet below half the queue limit"
        );
        assert!(!load.throttle(&limits, 40, 0).shut);
        assert!(load.throttle(&limits, 0, 1000).shut);
        assert!(!load.throttle(&limits, 0, 899).shut);
        let unlimited = OverloadConfig { calls: 0, ..limits };
        assert!(!load.throttle(&unlimited, 0, 1_000_000).shut);
    }

    #[test]
    fn past_the_cpu_limit_the_share_of_new_calls_brings_it_back() {
        let limits = limits();
        let mut load = Load::default();
        let start = Instant::now();
        let mut at = start;
        let mut window = |load: &mut Load, busy_ms: u64| {
            at += LOAD_WINDOW;
            load.worked(Duration::from_millis(busy_ms), at, || None);
            load.throttle(&limits, 0, 0).share
        };
        load.worked(Duration::ZERO, start, || None);
        // Saturated: 100 % against 90 takes 9 in 10.
        let share = window(&mut load, 100);
        assert!((share - 0.9).abs() < 1e-9, "{share}");
        // Still 100 % (the flood grew): 0.81.
        let share = window(&mut load, 100);
        assert!((share - 0.81).abs() < 1e-9, "{share}");
        // At the limit: kept.
        assert!((window(&mut load, 90) - 0.81).abs() < 1e-9);
        // 200 %, a measure gone wrong: halved at most.
        assert!((window(&mut load, 200) - 0.405).abs() < 1e-9);
        // 60 %: up by 90/60.
        assert!((window(&mut load, 60) - 0.405 * 1.5).abs() < 1e-9);
        // Quiet: all at once.
        assert!((window(&mut load, 0) - 1.0).abs() < 1e-9);
        // No new measure between windows: the share stays.
        assert!((load.throttle(&limits, 0, 0).share - 1.0).abs() < 1e-9);
        let off = OverloadConfig {
            cpu_percent: 0,
            ..limits
        };
        window(&mut load, 100);
        load.worked(Duration::from_millis(100), at + LOAD_WINDOW, || None);
        assert_eq!(load.throttle(&off, 0, 0).share, 1.0);
    }

    #[test]
    fn the_cpu_share_is_the_threads_where_the_system_tells_it() {
        let mut load = Load::default();
        let start = Instant::now();
        load.worked(Duration::ZERO, start, || Some(Duration::from_millis(1000)));
        // Busy 95 ms by the wall clock (preempted), 10 ms on the CPU.
        load.worked(Duration::from_millis(95), start + LOAD_WINDOW, || {
            Some(Duration::from_millis(1010))
        });
        assert_eq!(load.percent, 10);
        assert!(thread_cpu().is_some(), "Linux tells a thread's CPU time");
    }

    #[test]
    fn the_gate_refuses_late_invites_and_takes_the_cpu_share_evenly() {
        let delay = Duration::from_millis(200);
        let now = Instant::now();
        let mut gate = Gate::default();
        assert_eq!(gate.check(Duration::from_millis(150), delay, now), None);
        assert!(!gate.refusing(now));
        assert_eq!(
            gate.check(Duration::from_millis(201), delay, now),
            Some(Cause::QueueDelay)
        );
        assert!(gate.refusing(now));
        // Taken, but not yet prompt: still a late spell.
        assert_eq!(gate.check(Duration::from_millis(150), delay, now), None);
        assert!(gate.refusing(now));
        assert_eq!(gate.check(Duration::from_millis(10), delay, now), None);
        assert!(!gate.refusing(now));
        // A late spell ends by itself a window after the last late INVITE.
        gate.check(Duration::from_millis(300), delay, now);
        assert!(gate.refusing(now + LOAD_WINDOW / 2));
        assert!(!gate.refusing(now + LOAD_WINDOW));
        // The share taken is the share set, evenly.
        for (share, of_100) in [(0.25, 25), (0.405, 40), (0.9, 90), (0.99, 99)] {
            gate.set(Throttle { shut: false, share });
            let taken = (0..100)
                .filter(|_| gate.check(Duration::ZERO, delay, now).is_none())
                .count();
            assert!(taken.abs_diff(of_100) <= 1, "share {share}: {taken} of 100");
        }
        gate.set(Throttle {
            shut: false,
            share: 0.25,
        });
        gate.credit = 0.0;
        let taken: Vec<bool> = (0..8)
            .map(|_| gate.check(Duration::ZERO, delay, now).is_none())
            .collect();
        assert_eq!(
            taken,
            [false, false, false, true, false, false, false, true]
        );
        let before = gate.refused;
        gate.set(Throttle {
            shut: true,
            share: 1.0,
        });
        assert_eq!(gate.check(Duration::ZERO, delay, now), Some(Cause::Limit));
        assert_eq!(gate.refused, before + 1);
    }
}
