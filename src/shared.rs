//! The vocabulary every floor shares: the two legs of a call, where a message comes from or
//! goes ([`Peer`]), bytes to send ([`Transmit`]), and the ids of connections and transactions.
//! Like quinn-proto's `shared` module: plain data, no I/O, imported from anywhere above.

use crate::config::{ListenerId, Transport};
use bytes::Bytes;
use std::net::SocketAddr;

/// The two legs of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leg {
    /// Toward the caller.
    A,
    /// Toward the callee.
    B,
}

impl Leg {
    /// The other leg.
    pub fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }

    /// "a" or "b", as rules see it.
    pub fn name(self) -> &'static str {
        match self {
            Leg::A => "a",
            Leg::B => "b",
        }
    }

    /// The leg a rule names ("a" or "b").
    pub fn from_name(name: &str) -> Option<Leg> {
        match name {
            "a" => Some(Leg::A),
            "b" => Some(Leg::B),
            _ => None,
        }
    }

    /// 0 for A, 1 for B: an index into per-leg pairs.
    pub fn index(self) -> usize {
        match self {
            Leg::A => 0,
            Leg::B => 1,
        }
    }
}

/// Identifies a stream connection in the transport layer.
pub type ConnId = u64;
/// Identifies a transaction inside one engine.
pub type TxnId = u64;

/// Where a message came from, or where one goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub listener: ListenerId,
    pub transport: Transport,
    pub addr: SocketAddr,
    /// The stream connection a message arrived on (responses go back on it); `None` lets the
    /// transport pick or open one.
    pub conn: Option<ConnId>,
}

/// Bytes the driver must send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub peer: Peer,
    pub bytes: Bytes,
}

/// The IP TOS / IPv6 traffic class byte of a DSCP.
pub fn tos(dscp: u8) -> u32 {
    u32::from(dscp) << 2
}

/// Hashes a Call-ID to a shard (FNV-1a). The dispatcher and the engine must agree on it: the
/// engine picks B-leg Call-IDs that hash to its own shard so both legs of a call stay together.
pub fn shard_for_call_id(call_id: &[u8], shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in call_id {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

/// Counters of what an engine did. The engine counts messages in and out and transport
/// errors; its call layer counts the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub messages_in: u64,
    pub messages_out: u64,
    /// Requests answered 4xx/5xx for being malformed, and malformed responses dropped.
    pub malformed: u64,
    pub calls_started: u64,
    pub calls_answered: u64,
    pub calls_failed: u64,
    pub script_errors: u64,
    /// SDPs that could not be anchored (no media ports left).
    pub media_failures: u64,
    /// Messages the transport could not send (RFC 3261 §18.4).
    pub transport_errors: u64,
    /// Requests sent over TCP instead of UDP for their size (RFC 3261 §18.1.1).
    pub switched_to_tcp: u64,
}
