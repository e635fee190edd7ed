//! OPTIONS keepalives toward trunk peers and the health they tell (Microsoft demotes an SBC
//! that sent none for three minutes, and answers them itself). A peer is down after the
//! trunk's `down_after` failed OPTIONS in a row (no answer, a transport error, 408, 5xx) and
//! up again after `up_after` answered ones. Shard 0 sends them; every shard reads the health,
//! shared ([`PeerHealth`]), to route calls past peers that are down.

use super::*;
use crate::shared::PeerHealth;

/// One peer whose OPTIONS the monitor sends.
#[derive(Debug)]
struct Monitored {
    /// Names the peer's OPTIONS transactions ([`ClientOwner::Keepalive`]).
    id: u32,
    trunk: String,
    peer: SocketAddr,
    /// When its next OPTIONS is due.
    at: Instant,
}

/// When each monitored peer's next OPTIONS is due (the keepalive shard only).
#[derive(Debug, Default)]
pub(crate) struct PeerMonitor {
    monitored: Vec<Monitored>,
    next_id: u32,
    /// The last instant the monitor was started or fired: peers a reload adds are due then.
    clock: Option<Instant>,
}

impl PeerMonitor {
    /// Follows `profile`: every peer of a trunk with `keepalive` is monitored (a new one due
    /// at once), the others are dropped, and what `health` said of them is forgotten (a peer
    /// no longer watched cannot come up again).
    pub(crate) fn sync(&mut self, profile: &crate::config::Profile, health: &PeerHealth) {
        let wanted: Vec<(&str, SocketAddr)> = profile
            .trunks
            .iter()
            .filter(|trunk| trunk.keepalive.is_some())
            .flat_map(|trunk| trunk.peers.iter().map(|peer| (trunk.name.as_str(), *peer)))
            .collect();
        self.monitored.retain(|m| {
            let kept = wanted.contains(&(m.trunk.as_str(), m.peer));
            if !kept {
                health.forget(&m.trunk, m.peer);
            }
            kept
        });
        let Some(now) = self.clock else {
            return;
        };
        for (trunk, peer) in wanted {
            if !self
                .monitored
                .iter()
                .any(|m| m.trunk == trunk && m.peer == peer)
            {
                self.next_id += 1;
                self.monitored.push(Monitored {
                    id: self.next_id,
                    trunk: trunk.to_string(),
                    peer,
                    at: now,
                });
            }
        }
    }

    /// The next instant an OPTIONS is due.
    pub(crate) fn poll(&self) -> Option<Instant> {
        self.monitored.iter().map(|m| m.at).min()
    }
}

impl Calls {
    /// Starts the OPTIONS keepalives at `now` (on the shard that sends them).
    pub fn start_keepalives(&mut self, now: Instant) {
        if let Some(monitor) = self.monitor.as_mut() {
            monitor.clock = Some(now);
            monitor.sync(&self.current.profile, &self.health);
        }
    }

    /// The next instant an OPTIONS keepalive is due.
    pub fn poll_keepalive(&self) -> Option<Instant> {
        self.monitor.as_ref().and_then(PeerMonitor::poll)
    }

    /// The health of the trunks' peers this shard reads (and, on the keepalive shard, writes).
    pub fn peer_health(&self) -> &Arc<PeerHealth> {
        &self.health
    }

    /// Makes this shard read and write `health` (shared with the other shards).
    pub fn share_peer_health(&mut self, health: Arc<PeerHealth>) {
        self.current.rules.set_peer_health(health.clone());
        self.health = health;
    }

    /// Makes this shard count its calls in `loads`, shared with the other shards.
    pub fn share_trunk_loads(&mut self, loads: Arc<crate::shared::TrunkLoads>) {
        self.current.rules.set_trunk_loads(loads.clone());
        self.loads = loads;
    }
}

impl B2bua<'_> {
    /// Sends the OPTIONS keepalives due at `now`, each peer's next one an interval later.
    pub(crate) fn send_keepalives(&mut self, now: Instant) {
        let rules = self.calls.current.clone();
        let Some(monitor) = self.calls.monitor.as_mut() else {
            return;
        };
        monitor.clock = Some(now);
        let mut due = Vec::new();
        for monitored in monitor.monitored.iter_mut().filter(|m| m.at <= now) {
            let trunk = rules.profile.trunk_by_name(&monitored.trunk);
            let interval = trunk
                .and_then(|t| rules.profile.trunks[t].keepalive)
                .map_or(60, |k| k.interval);
            monitored.at = now + std::time::Duration::from_secs(u64::from(interval));
            if let Some(trunk) = trunk {
                due.push((monitored.id, trunk, monitored.peer));
            }
        }
        for (id, trunk, peer) in due {
            self.send_options(id, trunk, peer, now);
        }
    }

    /// An OPTIONS to a trunk's peer, as Microsoft's example has it: the peer's name (the
    /// trunk's TLS server name, else its address) in the Request-URI and To, Bridgehead's in
    /// From and Contact; the trunk's rules run on it like on any message toward it.
    fn send_options(&mut self, id: u32, trunk_id: TrunkId, addr: SocketAddr, now: Instant) {
        let (branch, call_id, tag) = (self.new_branch(), self.new_call_id(), self.new_tag());
        let rules = self.calls.current.clone();
        let trunk = &rules.profile.trunks[trunk_id];
        let listener = &rules.profile.listeners[trunk.listener];
        let transport = trunk.transport;
        let host = trunk.peer_host(addr);
        let target = format!(
            "sip:{host}:{}{}",
            addr.port(),
            match transport {
                crate::config::Transport::Udp => "",
                crate::config::Transport::Tcp => ";transport=tcp",
                crate::config::Transport::Tls => ";transport=tls",
            }
        );
        let own = format!(
            "<sip:{}:{}>;tag={tag}",
            listener.advertise,
            listener.port(transport)
        );
        let mut options = Message {
            start: StartLine::Request {
                method: Method::Options,
                uri: target,
            },
            headers: Vec::new(),
            body: Bytes::new(),
        };
        options.push_header(HeaderName::Via, via_value(listener, transport, &branch));
        options.push_header(HeaderName::MaxForwards, "70".to_string());
        options.push_header(HeaderName::From, own);
        options.push_header(HeaderName::To, format!("<sip:{host}:{}>", addr.port()));
        options.push_header(HeaderName::CallId, call_id);
        options.push_header(HeaderName::CSeq, "1 OPTIONS".to_string());
        options.push_header(
            HeaderName::Contact,
            contact_value(None, listener, transport),
        );
        options.push_header(HeaderName::Allow, ALLOW.to_string());
        options.push_header(HeaderName::Accept, ACCEPT.to_string());
        let peer = Peer {
            listener: trunk.listener,
            transport,
            addr,
            conn: None,
        };
        let script = rules.rules.script_of(trunk_id);
        let options = self.outgoing(None, script, Leg::B, trunk_id, options);
        self.start_client(options, peer, ClientOwner::Keepalive { id, sent: now }, now);
    }

    /// A keepalive OPTIONS sent at `sent` got its final response at `now` (or none: 408,
    /// 503): the peer's health and round-trip time follow, and a change is logged.
    pub(super) fn on_keepalive_outcome(
        &mut self,
        id: u32,
        (status, sent): (u16, Instant),
        now: Instant,
    ) {
        let Some(monitor) = self.calls.monitor.as_ref() else {
            return;
        };
        let Some(monitored) = monitor.monitored.iter().find(|m| m.id == id) else {
            return;
        };
        let profile = &self.calls.current.profile;
        let Some(settings) = profile
            .trunk_by_name(&monitored.trunk)
            .and_then(|t| profile.trunks[t].keepalive)
        else {
            return;
        };
        let answered = status != 408 && !(500..600).contains(&status);
        let (trunk, peer) = (monitored.trunk.as_str(), monitored.peer);
        let round_trip = answered.then(|| now.saturating_duration_since(sent));
        let Some(state) = self.calls.health.record(
            trunk,
            peer,
            (answered, round_trip),
            (settings.down_after, settings.up_after),
        ) else {
            return;
        };
        if state.down {
            tracing::warn!(trunk, %peer, status, "peer down: {} OPTIONS in a row failed (last: {status})", settings.down_after);
        } else {
            tracing::info!(trunk, %peer, "peer up again: {} OPTIONS in a row answered", settings.up_after);
        }
    }
}
