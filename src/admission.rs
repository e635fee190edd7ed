//! Admission: what the engine does with a message before the call layer sees it. Per source
//! IP, on each shard: a token bucket of requests (the excess dropped unanswered: answering a
//! flood would feed it) and one of new calls (the excess answered `503` with `Retry-After`),
//! the rates of the source's trunk or of sources no trunk names; scanners (their
//! `User-Agent`) dropped silently; requests with too many header fields or a header field too
//! long refused with `400`; and a ban, every message dropped for `ban_seconds`, once a source
//! sent `ban_after` malformed, scanning or unauthorised (no trunk names it) messages. The
//! settings are the profile's (`admission`, and each trunk's `requests_per_source` and
//! `calls_per_source`): a reload changes them at once.

use crate::config::{ListenerId, Profile};
use crate::shared::{Peer, TokenBucket};
use crate::sip::{Fault, HeaderName, Message, Method};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sources a shard remembers at most: past this, sources idle for a while are forgotten first,
/// and a new one shares one state with the others that found no room.
const MAX_SOURCES: usize = 65_536;

/// A source idle this long is forgotten (unless banned).
const IDLE: Duration = Duration::from_secs(60);

/// What admission decided for a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// On to the call layer.
    Pass,
    /// Dropped unanswered.
    Drop,
    /// Answered statelessly with the fault's status (a request only).
    Refuse(Fault),
}

/// What the engine knows of a message when admission looks at it.
#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    /// Where it came from.
    pub from: Peer,
    /// It starts a call: an INVITE outside a dialog, no retransmission of one under way.
    pub new_call: bool,
    /// It is a request of a dialog the shard has (from a peer outside every trunk too: a
    /// callee a rule routed to, a peer a reload removed).
    pub known_dialog: bool,
}

/// What a shard knows of one source.
#[derive(Debug, Default)]
struct Source {
    requests: TokenBucket,
    calls: TokenBucket,
    /// Malformed, scanning or unauthorised messages since `strikes_since`.
    strikes: u32,
    strikes_since: Option<Instant>,
    banned_until: Option<Instant>,
    last_seen: Option<Instant>,
}

/// Counters of what admission refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Requests past their source's request rate.
    pub rate_dropped: u64,
    /// New calls past their source's call rate (answered 503).
    pub calls_refused: u64,
    /// Requests from a scanner's User-Agent.
    pub scanners_dropped: u64,
    /// Requests with too many header fields or one too long.
    pub oversized: u64,
    /// Messages dropped from banned sources.
    pub banned_dropped: u64,
    /// Sources banned.
    pub bans: u64,
}

/// A shard's admission state.
#[derive(Debug, Default)]
pub struct Admission {
    /// By listener and source IP: one host may be the peer of two trunks.
    sources: HashMap<(ListenerId, IpAddr), Source>,
    /// The state every source shares that finds the table full.
    overflow: Source,
    /// When the table was last swept of idle sources.
    last_sweep: Option<Instant>,
    stats: AdmissionStats,
    /// The bans of every shard (and instance), when the driver shares them.
    shared: Option<std::sync::Arc<crate::shared::SharedBans>>,
}

/// The `User-Agent` of a message, if any.
fn user_agent(msg: &Message) -> Option<&[u8]> {
    msg.headers
        .iter()
        .find(|h| matches!(&h.name, HeaderName::Other(name) if name.eq_ignore_ascii_case("user-agent")))
        .map(|h| &h.value[..])
}

/// Whether `haystack` contains `needle`, ASCII case ignored.
fn contains_ignoring_case(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle))
}

impl Admission {
    /// What admission refused so far.
    pub fn stats(&self) -> AdmissionStats {
        self.stats
    }

    /// Decides for a message at `now` (what the engine knows of it in `arrival`), under
    /// `profile`, on one of `shards` shards (each allows its share of a source's rates: a
    /// source's calls spread over the shards). Responses always pass (they answer Bridgehead's
    /// own requests); a request of a dialog the shard has is held to the header limits only; a
    /// trunk's peer is never banned and never taken for a scanner, and its rates count its
    /// requests outside a dialog other than ACK and CANCEL.
    pub fn check(
        &mut self,
        msg: &Message,
        arrival: Arrival,
        (profile, shards): (&Profile, usize),
        now: Instant,
    ) -> Verdict {
        let Some(method) = msg.method() else {
            return Verdict::Pass;
        };
        let from = arrival.from;
        let settings = &profile.admission;
        let ip = from.addr.ip();
        let trunk = profile
            .trunk_for(from.listener, ip)
            .map(|t| &profile.trunks[t]);
        let stranger = trunk.is_none() && !arrival.known_dialog;
        if stranger && self.banned(from, now) {
            self.stats.banned_dropped += 1;
            return Verdict::Drop;
        }
        let scanner = stranger
            && user_agent(msg).is_some_and(|agent| {
                settings
                    .scanners
                    .iter()
                    .any(|name| contains_ignoring_case(agent, name))
            });
        if scanner {
            self.stats.scanners_dropped += 1;
            tracing::debug!(source = %ip, "scanner dropped");
            self.strike(from, profile, now);
            return Verdict::Drop;
        }
        if msg.headers.len() > settings.max_headers {
            self.stats.oversized += 1;
            self.strike(from, profile, now);
            return Verdict::Refuse(Fault::TooManyHeaders(settings.max_headers));
        }
        if msg
            .headers
            .iter()
            .any(|h| h.value.len() > settings.max_header_bytes)
        {
            self.stats.oversized += 1;
            self.strike(from, profile, now);
            return Verdict::Refuse(Fault::HeaderTooLong(settings.max_header_bytes));
        }
        // A trunk's in-dialog requests, ACKs and CANCELs are never dropped for a rate (over
        // TCP nobody would send them again); a stranger's count like any.
        let dialog_traffic = in_dialog(msg) || matches!(method, Method::Ack | Method::Cancel);
        if arrival.known_dialog || (!stranger && dialog_traffic) {
            return Verdict::Pass;
        }
        if stranger {
            // Unauthorised: the call layer answers 403 or drops it, as the listener says.
            self.strike(from, profile, now);
        }
        let (requests, calls) = match trunk {
            Some(trunk) => (trunk.requests_per_source, trunk.calls_per_source),
            None => (settings.unknown_requests_per_source, None),
        };
        let share = |rate: Option<u32>| rate.map(|r| f64::from(r) / shards.max(1) as f64);
        let (requests, calls) = (share(requests), share(calls));
        if requests.is_none() && calls.is_none() {
            return Verdict::Pass;
        }
        let source = self.source(from, now);
        if let Some(rate) = requests {
            if !source.requests.take(rate, now) {
                self.stats.rate_dropped += 1;
                return Verdict::Drop;
            }
        }
        if let Some(rate) = calls.filter(|_| arrival.new_call) {
            if !source.calls.take(rate, now) {
                self.stats.calls_refused += 1;
                return Verdict::Refuse(Fault::SourceRate);
            }
        }
        Verdict::Pass
    }

    /// A message that could not be parsed came from `from`: a strike against its source.
    pub fn malformed(&mut self, from: Peer, profile: &Profile, now: Instant) {
        self.strike(from, profile, now);
    }

    /// Shares this shard's bans with every other holder of `bans`, and theirs with it.
    pub fn share_bans(&mut self, bans: std::sync::Arc<crate::shared::SharedBans>) {
        self.shared = Some(bans);
    }

    /// Whether messages from `from` (its address, on its listener; or its address, banned
    /// by another shard or instance) are dropped now.
    pub fn banned(&self, from: Peer, now: Instant) -> bool {
        self.sources
            .get(&(from.listener, from.addr.ip()))
            .and_then(|s| s.banned_until)
            .is_some_and(|until| until > now)
            || self
                .shared
                .as_ref()
                .is_some_and(|bans| bans.banned(from.addr.ip(), now))
    }

    /// One more bad message from `from`: banned at the profile's `ban_after` within
    /// `ban_seconds`. A trunk's peer is never banned (a bug in a partner's softswitch must
    /// not cut its calls off).
    fn strike(&mut self, from: Peer, profile: &Profile, now: Instant) {
        let settings = &profile.admission;
        let ip = from.addr.ip();
        if settings.ban_after == 0 || profile.trunk_for(from.listener, ip).is_some() {
            return;
        }
        let window = Duration::from_secs(settings.ban_seconds.into());
        let source = self.source(from, now);
        if source
            .strikes_since
            .is_none_or(|since| now.saturating_duration_since(since) > window)
        {
            source.strikes = 0;
            source.strikes_since = Some(now);
        }
        source.strikes += 1;
        if source.strikes >= settings.ban_after {
            source.banned_until = Some(now + window);
            source.strikes = 0;
            source.strikes_since = None;
            self.stats.bans += 1;
            if let Some(bans) = &self.shared {
                bans.ban(ip, now + window);
            }
            tracing::warn!(source = %ip, seconds = settings.ban_seconds, "source banned: too many malformed, scanning or unauthorised messages");
        }
    }

    /// The state of the source of `from`, remembered from now on if there is room. When the
    /// table is full, idle sources are swept out (once a second at most), and a source that
    /// still finds no room shares one state with every other such source.
    fn source(&mut self, from: Peer, now: Instant) -> &mut Source {
        let key = (from.listener, from.addr.ip());
        if !self.sources.contains_key(&key) && self.sources.len() >= MAX_SOURCES {
            let swept = self
                .last_sweep
                .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1));
            if !swept {
                self.last_sweep = Some(now);
                self.sources.retain(|_, s| {
                    s.banned_until.is_some_and(|until| until > now)
                        || s.last_seen
                            .is_some_and(|seen| now.saturating_duration_since(seen) < IDLE)
                });
            }
            if self.sources.len() >= MAX_SOURCES {
                return &mut self.overflow;
            }
        }
        let source = self.sources.entry(key).or_default();
        source.last_seen = Some(now);
        source
    }
}

/// Whether a message is a new call: an INVITE outside a dialog.
pub fn is_new_call(msg: &Message) -> bool {
    msg.method() == Some(&Method::Invite) && !in_dialog(msg)
}

/// Whether a message belongs to a dialog (its To carries a tag).
pub fn in_dialog(msg: &Message) -> bool {
    msg.header_str(&HeaderName::To)
        .and_then(|to| crate::sip::header::NameAddr::parse(to).ok())
        .is_some_and(|to| to.tag().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Transport;
    use std::path::Path;

    /// A trunk on listener 0 whose peer is 192.0.2.1, with `trunk_extra` lines, and
    /// `admission` settings.
    fn profile(trunk_extra: &str, admission: &str) -> Profile {
        let text = format!(
            "listeners:\n  - name: core\n    address: 127.0.0.1:5060\ntrunks:\n  - name: core\n    listener: core\n    peers: [\"192.0.2.1:5060\"]\n{trunk_extra}{admission}"
        );
        Profile::parse(Path::new("admission.yaml"), &text).expect("profile")
    }

    fn peer(ip: &str) -> Peer {
        Peer {
            listener: 0,
            transport: Transport::Udp,
            addr: format!("{ip}:5060").parse().expect("addr"),
            conn: None,
        }
    }

    fn arrival(from: Peer, new_call: bool) -> Arrival {
        Arrival {
            from,
            new_call,
            known_dialog: false,
        }
    }

    fn request(method: &str, to_tag: &str, extra: &str) -> Message {
        let text = format!(
            "{method} sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKa\r\nFrom: <sip:a@b>;tag=f\r\nTo: <sip:x@y>{to_tag}\r\nCall-ID: c\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Message::parse(&bytes::Bytes::from(text)).expect("request")
    }

    #[test]
    fn scanners_are_dropped_and_then_banned() {
        let profile = profile("", "admission:\n  ban_after: 3\n  ban_seconds: 60\n");
        let mut admission = Admission::default();
        let now = Instant::now();
        let scan = request("OPTIONS", "", "User-Agent: Friendly-Scanner 1.0\r\n");
        let stranger = peer("203.0.113.5");
        for _ in 0..3 {
            assert_eq!(
                admission.check(&scan, arrival(stranger, false), (&profile, 1), now),
                Verdict::Drop
            );
        }
        assert!(admission.banned(stranger, now));
        // Banned: even a clean request is dropped, until the ban ends.
        let clean = request("OPTIONS", "", "");
        assert_eq!(
            admission.check(&clean, arrival(stranger, false), (&profile, 1), now),
            Verdict::Drop
        );
        let later = now + Duration::from_secs(61);
        assert_ne!(
            admission.check(&clean, arrival(stranger, false), (&profile, 1), later),
            Verdict::Drop
        );
        let stats = admission.stats();
        assert_eq!(
            (stats.scanners_dropped, stats.bans, stats.banned_dropped),
            (3, 1, 1)
        );
    }

    #[test]
    fn a_ban_on_one_shard_drops_the_source_on_every_shard_sharing_bans() {
        let profile = profile("", "admission:\n  ban_after: 2\n  ban_seconds: 60\n");
        let bans = std::sync::Arc::new(crate::shared::SharedBans::default());
        bans.announce();
        let (mut first, mut second) = (Admission::default(), Admission::default());
        first.share_bans(bans.clone());
        second.share_bans(bans.clone());
        let now = Instant::now();
        // From another port of the same host, on the other shard: the address is banned.
        let (stranger, same_host) = (peer("203.0.113.7"), peer("203.0.113.7"));
        first.malformed(stranger, &profile, now);
        assert!(!second.banned(same_host, now));
        first.malformed(stranger, &profile, now);
        assert!(second.banned(same_host, now));
        let clean = request("OPTIONS", "", "");
        assert_eq!(
            second.check(&clean, arrival(same_host, false), (&profile, 2), now),
            Verdict::Drop
        );
        assert!(!second.banned(same_host, now + Duration::from_secs(61)));
        // The ban is announced once, for the cluster.
        let announced = bans.take_announced();
        assert_eq!(announced.len(), 1);
        assert_eq!(announced[0].0, same_host.addr.ip());
        assert!(bans.take_announced().is_empty());
    }

    #[test]
    fn a_trunk_peer_is_never_banned() {
        let profile = profile("", "admission:\n  ban_after: 2\n");
        let mut admission = Admission::default();
        let now = Instant::now();
        for _ in 0..5 {
            admission.malformed(peer("192.0.2.1"), &profile, now);
        }
        assert!(!admission.banned(peer("192.0.2.1"), now));
        for _ in 0..2 {
            admission.malformed(peer("203.0.113.9"), &profile, now);
        }
        assert!(admission.banned(peer("203.0.113.9"), now));
    }

    #[test]
    fn too_many_or_too_long_header_fields_are_refused() {
        let profile = profile(
            "",
            "admission:\n  max_headers: 10\n  max_header_bytes: 64\n",
        );
        let mut admission = Admission::default();
        let now = Instant::now();
        let many = request("OPTIONS", "", &"X-A: 1\r\n".repeat(5));
        assert_eq!(
            admission.check(&many, arrival(peer("192.0.2.1"), false), (&profile, 1), now),
            Verdict::Refuse(Fault::TooManyHeaders(10))
        );
        let long = request("OPTIONS", "", &format!("X-A: {}\r\n", "a".repeat(65)));
        assert_eq!(
            admission.check(&long, arrival(peer("192.0.2.1"), false), (&profile, 1), now),
            Verdict::Refuse(Fault::HeaderTooLong(64))
        );
        let fine = request("OPTIONS", "", "X-A: 1\r\n");
        assert_eq!(
            admission.check(&fine, arrival(peer("192.0.2.1"), false), (&profile, 1), now),
            Verdict::Pass
        );
    }

    #[test]
    fn a_source_past_its_rates_is_dropped_or_refused_and_shards_share_them() {
        let profile = profile("    requests_per_source: 10\n    calls_per_source: 2\n", "");
        let mut admission = Admission::default();
        let now = Instant::now();
        let trunk = peer("192.0.2.1");
        let invite = request("INVITE", "", "");
        assert_eq!(
            admission.check(&invite, arrival(trunk, true), (&profile, 1), now),
            Verdict::Pass
        );
        assert_eq!(
            admission.check(&invite, arrival(trunk, true), (&profile, 1), now),
            Verdict::Pass
        );
        assert_eq!(
            admission.check(&invite, arrival(trunk, true), (&profile, 1), now),
            Verdict::Refuse(Fault::SourceRate)
        );
        // Other requests outside a dialog count against the request rate only.
        let options = request("OPTIONS", "", "");
        let passed = (0..10)
            .filter(|_| {
                admission.check(&options, arrival(trunk, false), (&profile, 1), now)
                    == Verdict::Pass
            })
            .count();
        assert_eq!(passed, 7, "10 requests a second, 3 taken by the INVITEs");
        assert_eq!(admission.stats().rate_dropped, 3);
        // A trunk's in-dialog requests are never dropped for a rate.
        let bye = request("BYE", ";tag=t", "");
        assert!((0..20).all(
            |_| admission.check(&bye, arrival(trunk, false), (&profile, 1), now) == Verdict::Pass
        ));
        // Two shards: each allows half a source's rates.
        let mut shard = Admission::default();
        assert_eq!(
            shard.check(&invite, arrival(trunk, true), (&profile, 2), now),
            Verdict::Pass
        );
        assert_eq!(
            shard.check(&invite, arrival(trunk, true), (&profile, 2), now),
            Verdict::Refuse(Fault::SourceRate)
        );
    }

    #[test]
    fn a_rate_below_one_per_shard_still_lets_one_through() {
        let profile = profile("    calls_per_source: 3\n", "");
        let mut admission = Admission::default();
        let now = Instant::now();
        let invite = request("INVITE", "", "");
        let trunk = peer("192.0.2.1");
        // 3 a second over 4 shards: 0.75 a second here, one at a time.
        assert_eq!(
            admission.check(&invite, arrival(trunk, true), (&profile, 4), now),
            Verdict::Pass
        );
        let later = now + Duration::from_secs(2);
        assert_eq!(
            admission.check(&invite, arrival(trunk, true), (&profile, 4), later),
            Verdict::Pass
        );
    }

    #[test]
    fn a_dialog_the_shard_has_passes_from_any_address_and_strangers_are_banned() {
        let profile = profile(
            "",
            "admission:\n  ban_after: 2\n  unknown_requests_per_source: 1\n",
        );
        let mut admission = Admission::default();
        let now = Instant::now();
        let callee = peer("198.51.100.9");
        let bye = request("BYE", ";tag=t", "");
        let known = Arrival {
            from: callee,
            new_call: false,
            known_dialog: true,
        };
        assert!((0..5).all(|_| admission.check(&bye, known, (&profile, 1), now) == Verdict::Pass));
        assert!(!admission.banned(callee, now));
        // The same BYE from a stranger, for no dialog: struck, limited, banned.
        let strange = arrival(peer("203.0.113.8"), false);
        let verdicts: Vec<Verdict> = (0..3)
            .map(|_| admission.check(&bye, strange, (&profile, 1), now))
            .collect();
        assert_eq!(verdicts, [Verdict::Pass, Verdict::Drop, Verdict::Drop]);
        assert!(admission.banned(peer("203.0.113.8"), now));
    }

    #[test]
    fn unknown_sources_have_a_request_rate_of_their_own() {
        let profile = profile(
            "",
            "admission:\n  unknown_requests_per_source: 2\n  ban_after: 0\n",
        );
        let mut admission = Admission::default();
        let now = Instant::now();
        let options = request("OPTIONS", "", "");
        let verdicts: Vec<Verdict> = (0..3)
            .map(|_| {
                admission.check(
                    &options,
                    arrival(peer("203.0.113.7"), false),
                    (&profile, 1),
                    now,
                )
            })
            .collect();
        assert_eq!(verdicts, [Verdict::Pass, Verdict::Pass, Verdict::Drop]);
    }
}
