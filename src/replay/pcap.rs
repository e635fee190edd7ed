//! Replaying one side of a real capture: the SIP a trunk's peer sent, fed through the rules in
//! capture time, and what Bridgehead would have sent, printed as a call flow.

use super::capture::{read_capture, CapturedSip};
use super::ReplayError;
use crate::config::{Profile, TrunkId};
use crate::engine::Engine;
use crate::script::{RuleMetrics, RuleSet};
use crate::shared::Peer;
use crate::sip::{Message, StartLine};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `--trunk NAME=IP[:port]`: the capture address whose messages are the trunk's peer's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkSide {
    pub trunk: String,
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl TrunkSide {
    /// Parses `core=10.0.0.1`, `core=10.0.0.1:5060` or `teams=[2001:db8::1]:5061`.
    pub fn parse(text: &str) -> Result<TrunkSide, ReplayError> {
        let bad = || ReplayError::TrunkSide(text.to_string());
        let (trunk, address) = text.split_once('=').ok_or_else(bad)?;
        if trunk.is_empty() {
            return Err(bad());
        }
        let (ip, port) = match address.parse::<SocketAddr>() {
            Ok(addr) => (addr.ip(), Some(addr.port())),
            Err(_) => (
                address
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .map_err(|_| bad())?,
                None,
            ),
        };
        Ok(TrunkSide {
            trunk: trunk.to_string(),
            ip,
            port,
        })
    }

    fn sent(&self, message: &CapturedSip) -> bool {
        message.src.ip() == self.ip && self.port.is_none_or(|p| p == message.src.port())
    }
}

/// Feeds what the given sides sent in `capture` through the profile's rules; returns the call
/// flow as text. Fails when the capture cannot be read or has no SIP from those sides.
pub fn replay_capture(
    capture: &Path,
    profile: &Path,
    sides: &[TrunkSide],
    verbose: bool,
) -> Result<String, ReplayError> {
    let profile = Arc::new(Profile::load(profile).map_err(ReplayError::Profile)?);
    let mut trunks: Vec<(TrunkId, &TrunkSide)> = Vec::new();
    for side in sides {
        let trunk = profile
            .trunk_by_name(&side.trunk)
            .ok_or_else(|| ReplayError::NoSuchTrunk {
                trunk: side.trunk.clone(),
                profile: profile.path.clone(),
            })?;
        trunks.push((trunk, side));
    }
    let messages = read_capture(capture)?;
    let fed: Vec<(&CapturedSip, TrunkId)> = messages
        .iter()
        .filter_map(|m| trunks.iter().find(|(_, s)| s.sent(m)).map(|(t, _)| (m, *t)))
        .collect();
    if fed.is_empty() {
        let sides: Vec<String> = sides
            .iter()
            .map(|s| format!("{}={}", s.trunk, s.ip))
            .collect();
        let mut senders: Vec<(SocketAddr, usize)> = Vec::new();
        for message in &messages {
            match senders.iter_mut().find(|(a, _)| *a == message.src) {
                Some((_, count)) => *count += 1,
                None => senders.push((message.src, 1)),
            }
        }
        let senders: Vec<String> = senders
            .iter()
            .map(|(addr, count)| format!("{addr} ({count})"))
            .collect();
        return Err(ReplayError::NoSipFrom {
            capture: capture.to_path_buf(),
            sides: sides.join(", "),
            senders: if senders.is_empty() {
                "none".to_string()
            } else {
                senders.join(", ")
            },
        });
    }
    let rules = RuleSet::load(profile.clone(), 1, Arc::new(RuleMetrics::default()))
        .map_err(ReplayError::Rules)?;
    let mut engine = super::seeded_engine(rules);
    let start = Instant::now();
    let mut now = start;
    let mut out = String::new();
    let first = fed.first().map_or(Duration::ZERO, |(m, _)| m.at);
    for (message, trunk) in fed {
        let at = start + message.at.saturating_sub(first);
        while let Some(deadline) = engine.poll_timeout() {
            if deadline > at {
                break;
            }
            now = deadline.max(now);
            engine.handle_timeout(now);
            print_sent(&mut out, &mut engine, &profile, now - start, verbose);
        }
        now = at.max(now);
        let config = &profile.trunks[trunk];
        // Over the transport the capture shows, when the trunk's listener has it.
        let listener = &profile.listeners[config.listener];
        let transport = if listener.transports.contains(&message.transport) {
            message.transport
        } else {
            config.transport
        };
        let peer = Peer {
            listener: config.listener,
            transport,
            // The engine knows the trunk by its configured peer, not the capture's address.
            addr: config.peers.first().copied().unwrap_or(message.src),
            conn: None,
        };
        let _ = writeln!(
            out,
            "{:>9.3}  {:<8} -> SBC       {}",
            (now - start).as_secs_f64(),
            config.name,
            first_line(&message.bytes)
        );
        if verbose {
            indent(&mut out, &String::from_utf8_lossy(&message.bytes));
        }
        engine.handle_datagram(message.bytes.clone(), peer, now);
        print_sent(&mut out, &mut engine, &profile, now - start, verbose);
    }
    // Let the timers run out (retransmissions, timeouts), as the far end would have seen.
    let end = now + Duration::from_secs(64);
    while let Some(deadline) = engine.poll_timeout() {
        if deadline > end {
            break;
        }
        now = deadline.max(now);
        engine.handle_timeout(now);
        print_sent(&mut out, &mut engine, &profile, now - start, verbose);
    }
    Ok(out)
}

fn print_sent(
    out: &mut String,
    engine: &mut Engine,
    profile: &Profile,
    at: Duration,
    verbose: bool,
) {
    while let Some(transmit) = engine.poll_transmit() {
        let to = profile
            .trunk_for(transmit.peer.listener, transmit.peer.addr.ip())
            .map_or_else(
                || transmit.peer.addr.to_string(),
                |t| profile.trunks[t].name.clone(),
            );
        let _ = writeln!(
            out,
            "{:>9.3}  SBC      -> {:<9} {}",
            at.as_secs_f64(),
            to,
            first_line(&transmit.bytes)
        );
        if verbose {
            indent(out, &String::from_utf8_lossy(&transmit.bytes));
        }
    }
}

fn first_line(bytes: &[u8]) -> String {
    match Message::parse(&bytes::Bytes::copy_from_slice(bytes)) {
        Ok(msg) => match &msg.start {
            StartLine::Request { method, uri } => format!("{method} {uri}"),
            StartLine::Response { status, reason } => format!("{status} {reason}"),
        },
        Err(err) => format!("(malformed: {})", err.fault),
    }
}

fn indent(out: &mut String, text: &str) {
    for line in text.replace("\r\n", "\n").trim_end().lines() {
        let _ = writeln!(out, "           | {line}");
    }
}
