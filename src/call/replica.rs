//! The state of answered calls for the other instances of a cluster (`cluster` in the
//! profile): what a peer needs to carry a call on — both legs' dialogs (Call-IDs, tags,
//! parties, remote targets, route sets, CSeqs, Contacts), the anchored media streams with
//! their ports, addresses, payload type tables and SRTP keys, and the rule-set version — as
//! JSON. The driver asks for [`Calls::replicate`] every `cluster.sync_ms`; a call whose state
//! changed since it was last queued (answered, a re-INVITE or UPDATE, a request either way)
//! is queued again, and an answered call that ends is queued for removal. The shard never
//! waits on Redis: the driver hands the queue to the cluster's writer thread.

use super::{Call, CallKey, CallState, Calls, Dialog};
use crate::config::Transport;
use crate::media::{MediaCommand, Stream};
use crate::shared::{shard_for_call_id, Leg, Peer};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The most `m=` lines a taken-over call's streams may index.
const MAX_STREAMS: usize = 64;

/// The format of [`CallSnapshot`]s written now.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// An answered call as another instance reads it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallSnapshot {
    pub format: u32,
    /// The A-leg Call-ID (`call.id`).
    pub id: String,
    /// The shard and the key the call has there.
    pub shard: usize,
    pub key: CallKey,
    /// The rule-set version the call runs on.
    pub rules: u64,
    pub ingress: String,
    pub egress: String,
    /// When the callee answered (Unix milliseconds).
    pub answered_unix_ms: u64,
    pub a: DialogSnapshot,
    pub b: DialogSnapshot,
    /// The anchored media streams, by `m=` line.
    pub streams: Vec<Stream>,
}

/// One leg's dialog (RFC 3261 §12).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogSnapshot {
    pub trunk: String,
    /// The listener (by name) and transport requests on this leg leave from, and the peer's
    /// address.
    pub listener: String,
    pub transport: String,
    pub peer: SocketAddr,
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: Option<String>,
    pub local_party: String,
    pub remote_party: String,
    pub remote_target: String,
    pub route_set: Vec<String>,
    pub local_cseq: u32,
    pub remote_cseq: u32,
    pub invite_cseq: u32,
    pub contact: String,
    pub allows_update: bool,
}

/// What the cluster writer is to do with a call's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replica {
    /// Write (or rewrite) the state of call `id`.
    Put { id: String, state: Vec<u8> },
    /// The call ended: its state goes.
    Remove { id: String },
}

/// The calls' replication, when the driver asked for it.
#[derive(Debug, Default)]
pub(super) struct Replicas {
    queue: VecDeque<Replica>,
    /// The fingerprint of each call's state as last queued.
    queued: HashMap<CallKey, u64>,
    /// The calls changed since the last look (room kept across looks).
    touched: Vec<CallKey>,
}

impl Calls {
    /// From now on answered calls' state is queued for [`Calls::poll_replica`] (cluster).
    pub fn keep_replicas(&mut self) {
        self.replicas = Some(Replicas::default());
        self.by_key.note_changes();
    }

    /// Queues the state of every answered call that changed since it was last queued: of
    /// the calls handed out to be changed since the last look (the others did not change),
    /// those whose fingerprint of dialogs and media differs; only those are serialized.
    pub fn replicate(&mut self, now: Instant) {
        let Some(replicas) = self.replicas.as_mut() else {
            return;
        };
        self.by_key.take_touched(&mut replicas.touched);
        for key in &replicas.touched {
            let Some(call) = self.by_key.get(key) else {
                continue;
            };
            let CallState::Answered { at } = call.state else {
                continue;
            };
            let fingerprint = fingerprint(call);
            if replicas.queued.get(key) == Some(&fingerprint) {
                continue;
            }
            let snapshot = snapshot(call, *key, self.shard, at, now);
            match serde_json::to_vec(&snapshot) {
                Ok(state) => {
                    replicas.queued.insert(*key, fingerprint);
                    replicas.queue.push_back(Replica::Put {
                        id: call.id.clone(),
                        state,
                    });
                }
                Err(err) => tracing::error!(call = %call.id, "cannot serialize its state: {err}"),
            }
        }
    }

    /// Takes over a call another instance carried (it died): the call's dialogs and media as
    /// `snapshot` has them, in this shard, answered, its media ports bound again and relayed.
    /// Refused (with why) when a trunk or listener it names is not in the running profile,
    /// its Call-IDs do not both belong to this shard, or a media port is not free here.
    pub fn restore(&mut self, snapshot: CallSnapshot, now: Instant) -> Result<(), String> {
        for call_id in [&snapshot.a.call_id, &snapshot.b.call_id] {
            if shard_for_call_id(call_id.as_bytes(), self.shards) != self.shard {
                return Err(format!("Call-ID {call_id} belongs to another shard"));
            }
        }
        // Read from Redis: an index the relay would grow its table to is refused.
        if let Some(stream) = snapshot.streams.iter().find(|s| s.index >= MAX_STREAMS) {
            return Err(format!(
                "stream index {} (at most {MAX_STREAMS} m= lines)",
                stream.index
            ));
        }
        let a = self.restored_dialog(&snapshot.a)?;
        let b = self.restored_dialog(&snapshot.b)?;
        let mut claimed = Vec::new();
        if let Some(pool) = self.media_ports.as_mut() {
            let ports = snapshot.streams.iter().flat_map(|s| [s.a.local, s.b.local]);
            // Port 0: a rejected m= line, anchored nowhere.
            for port in ports.filter(|port| *port != 0) {
                if let Err(err) = pool.claim(port) {
                    for port in claimed {
                        pool.give(port);
                    }
                    return Err(format!("media port {port}: {err}"));
                }
                claimed.push(port);
            }
        } else if !snapshot.streams.is_empty() {
            return Err("anchored media, and no media section here".into());
        }
        let rules = self.current.clone();
        let (ingress, egress) = (a.trunk, b.trunk);
        let seat = |trunk: usize| Some(self.loads.seat(&rules.profile.trunks[trunk].name));
        let seats = [seat(ingress), seat(egress)];
        // When it was answered, on this process's clock.
        let age = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
            .saturating_sub(snapshot.answered_unix_ms);
        let at = now
            .checked_sub(std::time::Duration::from_millis(age))
            .unwrap_or(now);
        self.next_id += 1;
        let key = self.next_id;
        let script = rules.rules.script_of(ingress);
        let mut call = Call::between(
            snapshot.id,
            (ingress, script, rules),
            (a, b),
            at,
            CallState::Answered { at },
        );
        call.a_final = Some(200);
        call.streams = snapshot.streams;
        call.seats = seats;
        for stream in &call.streams {
            self.media_commands.push_back(MediaCommand::Stream {
                call: self.media_call_id(key),
                stream: Box::new(*stream),
            });
        }
        tracing::info!(call = %call.id, "call taken over");
        self.dialogs.insert(call.a.dialog_key(), (key, Leg::A));
        self.dialogs.insert(call.b.dialog_key(), (key, Leg::B));
        self.by_key.insert(key, call);
        Ok(())
    }

    /// A leg's dialog from its snapshot, its trunk and listener found by name.
    fn restored_dialog(&self, leg: &DialogSnapshot) -> Result<Dialog, String> {
        let profile = &self.current.profile;
        let trunk = profile
            .trunks
            .iter()
            .position(|t| t.name == leg.trunk)
            .ok_or_else(|| format!("no trunk '{}' here", leg.trunk))?;
        let listener = profile
            .listeners
            .iter()
            .position(|l| l.name == leg.listener)
            .ok_or_else(|| format!("no listener '{}' here", leg.listener))?;
        let transport = match leg.transport.as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            other => return Err(format!("transport '{other}'")),
        };
        Ok(Dialog {
            trunk,
            peer: Peer {
                listener,
                transport,
                addr: leg.peer,
                conn: None,
            },
            call_id: leg.call_id.clone(),
            local_tag: leg.local_tag.clone(),
            remote_tag: leg.remote_tag.clone(),
            local_party: leg.local_party.clone(),
            remote_party: leg.remote_party.clone(),
            remote_target: leg.remote_target.clone(),
            route_set: leg.route_set.clone(),
            local_cseq: leg.local_cseq,
            remote_cseq: leg.remote_cseq,
            invite_cseq: leg.invite_cseq,
            contact: leg.contact.clone(),
            allows_update: leg.allows_update,
        })
    }

    /// Queued state, oldest first.
    pub fn poll_replica(&mut self) -> Option<Replica> {
        self.replicas.as_mut()?.queue.pop_front()
    }

    /// `call` ended: its state, if it was queued, goes.
    pub(super) fn replica_ended(&mut self, key: CallKey, call: &Call) {
        if let Some(replicas) = self.replicas.as_mut() {
            if replicas.queued.remove(&key).is_some() {
                replicas.queue.push_back(Replica::Remove {
                    id: call.id.clone(),
                });
            }
        }
    }
}

/// What changes when a call's dialogs or media change: CSeqs (every request either way),
/// tags, targets, route sets and the streams' ports, addresses, keys and directions.
fn fingerprint(call: &Call) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for dialog in [&call.a, &call.b] {
        (
            &dialog.remote_tag,
            &dialog.remote_target,
            &dialog.route_set,
            dialog.local_cseq,
            dialog.remote_cseq,
            dialog.invite_cseq,
            dialog.peer.addr,
        )
            .hash(&mut hasher);
    }
    for stream in &call.streams {
        stream.hash(&mut hasher);
    }
    hasher.finish()
}

fn snapshot(call: &Call, key: CallKey, shard: usize, at: Instant, now: Instant) -> CallSnapshot {
    let answered = SystemTime::now()
        .checked_sub(now.saturating_duration_since(at))
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    CallSnapshot {
        format: SNAPSHOT_FORMAT,
        id: call.id.clone(),
        shard,
        key,
        rules: call.rules.version,
        ingress: call.trunk_name(call.a.trunk),
        egress: call.trunk_name(call.b.trunk),
        answered_unix_ms: answered,
        a: dialog_snapshot(call, &call.a),
        b: dialog_snapshot(call, &call.b),
        streams: call.streams.clone(),
    }
}

fn dialog_snapshot(call: &Call, dialog: &Dialog) -> DialogSnapshot {
    DialogSnapshot {
        trunk: call.trunk_name(dialog.trunk),
        listener: call
            .rules
            .profile
            .listeners
            .get(dialog.peer.listener)
            .map_or_else(String::new, |l| l.name.clone()),
        transport: dialog.peer.transport.as_via_token().to_ascii_lowercase(),
        peer: dialog.peer.addr,
        call_id: dialog.call_id.clone(),
        local_tag: dialog.local_tag.clone(),
        remote_tag: dialog.remote_tag.clone(),
        local_party: dialog.local_party.clone(),
        remote_party: dialog.remote_party.clone(),
        remote_target: dialog.remote_target.clone(),
        route_set: dialog.route_set.clone(),
        local_cseq: dialog.local_cseq,
        remote_cseq: dialog.remote_cseq,
        invite_cseq: dialog.invite_cseq,
        contact: dialog.contact.clone(),
        allows_update: dialog.allows_update,
    }
}
