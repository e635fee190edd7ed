//! The transaction layer: the RFC 3261 client and server transactions of one shard, the
//! indexes that match messages to them, and their timers. The engine owns it and lends it to
//! the call layer for each input. Sans-IO: each operation queues what happened as
//! [`TxnEvent`]s (bytes to send, a timeout, the end of a transaction), which the engine drains
//! in order and hands to the call layer. Who waits for a transaction's outcome (`S` for server
//! transactions, `C` for client ones) is the call layer's business: the table only keeps it.

use crate::shared::{Peer, Transmit, TxnId};
use crate::sip::header::{branch_of, split_list, Via};
use crate::sip::transaction::{
    ClientState, ClientTransaction, ServerTransaction, TimerConfig, TimerKind, TxnAction,
};
use crate::sip::{HeaderName, Message, Method};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

/// The key matching requests to server transactions: branch, sent-by and method (ACK
/// matches its INVITE), plus the source address: a retransmission comes from where the
/// original came from, and two peers that happen to pick the same branch stay apart.
/// Requests without an RFC 3261 branch fall back to RFC 2543 matching.
pub fn server_key(msg: &Message, method: &Method, source: &Peer) -> Option<String> {
    let top = msg.header_str(&HeaderName::Via)?;
    let top = split_list(top).next()?;
    let via = Via::parse(top).ok()?;
    let method = match method {
        Method::Ack => "INVITE",
        other => other.as_str(),
    };
    let sent_by = format!("{}:{}|{}", via.host, via.port.unwrap_or(0), source.addr);
    match via.branch() {
        Some(branch) if branch.starts_with("z9hG4bK") => {
            Some(format!("{branch}|{sent_by}|{method}"))
        }
        _ => {
            let call_id = msg.header_str(&HeaderName::CallId)?;
            let cseq = msg.header_str(&HeaderName::CSeq)?;
            let number = cseq.split_whitespace().next()?;
            let from = msg.header_str(&HeaderName::From)?;
            Some(format!("2543|{call_id}|{number}|{from}|{sent_by}|{method}"))
        }
    }
}

/// A server transaction and what Bridgehead knows about it.
pub(crate) struct ServerEntry<S> {
    pub txn: ServerTransaction,
    pub peer: Peer,
    /// The request, kept until the final response is sent (responses are built from it).
    pub request: Option<Message>,
    index_key: String,
    /// Its timers still pending, to drop with it.
    armed: Vec<TimerKey>,
    pub owner: S,
}

/// A client transaction and what Bridgehead knows about it.
pub(crate) struct ClientEntry<C> {
    pub txn: ClientTransaction,
    pub peer: Peer,
    /// The request, kept until a final response arrives (CANCEL, the hop-by-hop ACK and
    /// local answers are built from it); a transaction that only absorbs retransmissions
    /// holds no copy of it.
    pub request: Option<Message>,
    index_key: String,
    /// Its timers still pending, to drop with it.
    armed: Vec<TimerKey>,
    pub owner: C,
}

/// What a transaction did that the engine must act on, in order.
#[derive(Debug)]
pub(crate) enum TxnEvent {
    /// Bytes to send (a request, a response, a retransmission, a hop-by-hop ACK).
    Transmit(Transmit),
    /// A server transaction timed out (a 2xx or final response never acknowledged).
    ServerTimedOut(TxnId),
    /// A reliable provisional response of a server transaction never got its PRACK.
    ServerUnacknowledged(TxnId),
    /// A client transaction timed out (no final response).
    ClientTimedOut(TxnId),
    /// A server transaction is over: forget it once the events before this one are handled.
    ServerEnded(TxnId),
    /// A client transaction is over: forget it once the events before this one are handled.
    ClientEnded(TxnId),
}

/// Which side of a transaction Bridgehead is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

/// A pending timer: its deadline, then the order it was armed in.
type TimerKey = (Instant, u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerTarget {
    Server(TxnId, TimerKind),
    Client(TxnId, TimerKind),
}

/// The transactions of one shard.
pub(crate) struct Transactions<S, C> {
    config: TimerConfig,
    /// Entries are boxed: the tables hold every transaction still absorbing retransmissions
    /// (32 s of calls), and a slot the size of an entry doubled what each table grew by.
    servers: HashMap<TxnId, Box<ServerEntry<S>>>,
    server_index: HashMap<String, TxnId>,
    clients: HashMap<TxnId, Box<ClientEntry<C>>>,
    client_index: HashMap<String, TxnId>,
    /// Pending timers in deadline order. A transaction that ends takes its own out, so the
    /// map holds live timers only (a heap kept every ended transaction's Timer B or F for its
    /// 32 s, hundreds of thousands of them at a few thousand calls/s).
    timers: BTreeMap<TimerKey, TimerTarget>,
    timer_seq: u64,
    actions: Vec<TxnAction>,
    events: VecDeque<TxnEvent>,
}

impl<S, C> Transactions<S, C> {
    pub fn new(config: TimerConfig) -> Transactions<S, C> {
        Transactions {
            config,
            servers: HashMap::new(),
            server_index: HashMap::new(),
            clients: HashMap::new(),
            client_index: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            actions: Vec::new(),
            events: VecDeque::new(),
        }
    }

    /// The server transaction a request matches (by [`server_key`]).
    pub fn find_server(&self, key: &str) -> Option<TxnId> {
        self.server_index.get(key).copied()
    }

    /// The client transaction a response matches: its top Via branch and CSeq method.
    pub fn find_client(&self, branch: &str, method: &str) -> Option<TxnId> {
        self.client_index
            .get(&format!("{branch}|{method}"))
            .copied()
    }

    pub fn server(&self, id: TxnId) -> Option<&ServerEntry<S>> {
        self.servers.get(&id).map(|entry| &**entry)
    }

    pub fn server_mut(&mut self, id: TxnId) -> Option<&mut ServerEntry<S>> {
        self.servers.get_mut(&id).map(|entry| &mut **entry)
    }

    pub fn client(&self, id: TxnId) -> Option<&ClientEntry<C>> {
        self.clients.get(&id).map(|entry| &**entry)
    }

    /// Client transactions still waiting for a final response whose owner `counts`.
    pub fn clients_waiting(&self, counts: impl Fn(&C) -> bool) -> usize {
        self.clients
            .values()
            .filter(|e| {
                matches!(
                    e.txn.state(),
                    ClientState::Calling | ClientState::Proceeding
                )
            })
            .filter(|e| counts(&e.owner))
            .count()
    }

    /// Transactions in progress (server + client).
    pub fn len(&self) -> usize {
        self.servers.len() + self.clients.len()
    }

    /// Registers server transaction `id` for a request that just arrived.
    pub fn create_server(
        &mut self,
        id: TxnId,
        key: String,
        request: Message,
        peer: Peer,
        owner: S,
    ) {
        let invite = request.method() == Some(&Method::Invite);
        let txn = ServerTransaction::new(invite, peer.transport.is_reliable(), self.config);
        self.server_index.insert(key.clone(), id);
        self.servers.insert(
            id,
            Box::new(ServerEntry {
                txn,
                peer,
                request: Some(request),
                index_key: key,
                armed: Vec::new(),
                owner,
            }),
        );
    }

    /// Sends a response through a server transaction.
    pub fn send_response(&mut self, id: TxnId, response: &Message, now: Instant) {
        let Some(status) = response.status() else {
            return;
        };
        let Some(entry) = self.servers.get_mut(&id) else {
            return;
        };
        let bytes = Bytes::from(response.to_bytes());
        entry
            .txn
            .send_response(status, bytes, now, &mut self.actions);
        if status >= 200 {
            entry.request = None;
        }
        self.apply_server_actions(id);
    }

    /// Starts client transaction `id` sending `request` (serialized as `bytes`) to `peer`.
    pub fn start_client(
        &mut self,
        id: TxnId,
        (request, bytes): (Message, Bytes),
        peer: Peer,
        owner: C,
        now: Instant,
    ) {
        let method = request
            .method()
            .map(|m| m.as_str().to_string())
            .unwrap_or_default();
        let branch = request
            .header_str(&HeaderName::Via)
            .and_then(branch_of)
            .unwrap_or_default()
            .to_string();
        let index_key = format!("{branch}|{method}");
        let invite = request.method() == Some(&Method::Invite);
        let txn = ClientTransaction::start(
            invite,
            peer.transport.is_reliable(),
            bytes,
            self.config,
            now,
            &mut self.actions,
        );
        self.client_index.insert(index_key.clone(), id);
        self.clients.insert(
            id,
            Box::new(ClientEntry {
                txn,
                peer,
                request: Some(request),
                index_key,
                armed: Vec::new(),
                owner,
            }),
        );
        self.apply_client_actions(id);
    }

    /// Sends a reliable provisional response (RFC 3262) through a server transaction.
    pub fn send_reliable_provisional(&mut self, id: TxnId, response: &Message, now: Instant) {
        let Some(entry) = self.servers.get_mut(&id) else {
            return;
        };
        let bytes = Bytes::from(response.to_bytes());
        entry
            .txn
            .send_reliable_provisional(bytes, now, &mut self.actions);
        self.apply_server_actions(id);
    }

    /// The PRACK of a server transaction's reliable provisional response arrived; false when
    /// none was waiting for one.
    pub fn server_prack(&mut self, id: TxnId) -> bool {
        let Some(entry) = self.servers.get_mut(&id) else {
            return false;
        };
        if !entry.txn.on_prack() {
            return false;
        }
        // Its retransmission timer goes too: the next reliable provisional starts its own.
        let timers = &mut self.timers;
        entry.armed.retain(|key| {
            let prack = matches!(
                timers.get(key),
                Some(TimerTarget::Server(_, TimerKind::Prack))
            );
            if prack {
                timers.remove(key);
            }
            !prack
        });
        true
    }

    /// Feeds a response to a client transaction (`ack` builds the hop-by-hop ACK of a non-2xx
    /// final response when one is due); returns true when it must go up to the owner.
    pub fn client_response(
        &mut self,
        id: TxnId,
        status: u16,
        ack: impl FnOnce() -> Bytes,
        now: Instant,
    ) -> bool {
        let Some(entry) = self.clients.get_mut(&id) else {
            return false;
        };
        let pass = entry.txn.on_response(status, now, ack, &mut self.actions);
        if status >= 200 {
            entry.request = None;
        }
        self.apply_client_actions(id);
        pass
    }

    /// Feeds an ACK to an INVITE server transaction; returns true when it acknowledged a 2xx.
    pub fn server_ack(&mut self, id: TxnId, now: Instant) -> bool {
        let Some(entry) = self.servers.get_mut(&id) else {
            return false;
        };
        let acked_2xx = entry.txn.on_ack(now, &mut self.actions);
        self.apply_server_actions(id);
        acked_2xx
    }

    /// A request retransmission matched a server transaction.
    pub fn server_retransmission(&mut self, id: TxnId) {
        if let Some(entry) = self.servers.get_mut(&id) {
            entry.txn.on_request_retransmission(&mut self.actions);
            self.apply_server_actions(id);
        }
    }

    /// Sends bytes that belong to no transaction (a stateless answer, an end-to-end ACK), in
    /// order with the transactions' own.
    pub fn send_stateless(&mut self, transmit: Transmit) {
        self.events.push_back(TxnEvent::Transmit(transmit));
    }

    /// Ends a client transaction at once (its transport failed): no more retransmissions.
    pub fn abandon_client(&mut self, id: TxnId) {
        if let Some(entry) = self.clients.remove(&id) {
            self.client_index.remove(&entry.index_key);
            self.disarm(&entry.armed);
        }
    }

    /// Runs the next timer due at `now`, if any; returns false when none is due. One at a
    /// time, so that what the call layer does about one timer's events (ending a
    /// transaction, say) is seen by the next.
    pub fn fire_next_timer(&mut self, now: Instant) -> bool {
        let Some((&key, &target)) = self.timers.first_key_value() else {
            return false;
        };
        if key.0 > now {
            return false;
        }
        self.timers.remove(&key);
        match target {
            TimerTarget::Server(id, kind) => {
                if let Some(entry) = self.servers.get_mut(&id) {
                    entry.armed.retain(|armed| *armed != key);
                    entry.txn.on_timer(kind, now, &mut self.actions);
                    self.apply_server_actions(id);
                }
            }
            TimerTarget::Client(id, kind) => {
                if let Some(entry) = self.clients.get_mut(&id) {
                    entry.armed.retain(|armed| *armed != key);
                    entry.txn.on_timer(kind, now, &mut self.actions);
                    self.apply_client_actions(id);
                }
            }
        }
        true
    }

    /// The next timer deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first_key_value().map(|((at, _), _)| *at)
    }

    /// The next thing that happened, in order.
    pub fn poll_event(&mut self) -> Option<TxnEvent> {
        self.events.pop_front()
    }

    /// Forgets a transaction that ended (after its earlier events were handled).
    pub fn forget(&mut self, event: &TxnEvent) {
        match event {
            TxnEvent::ServerEnded(id) => {
                if let Some(entry) = self.servers.remove(id) {
                    self.server_index.remove(&entry.index_key);
                    self.disarm(&entry.armed);
                }
            }
            TxnEvent::ClientEnded(id) => self.abandon_client(*id),
            _ => {}
        }
        crate::shared::shrink_when_quiet(&mut self.servers);
        crate::shared::shrink_when_quiet(&mut self.server_index);
        crate::shared::shrink_when_quiet(&mut self.clients);
        crate::shared::shrink_when_quiet(&mut self.client_index);
    }

    fn arm(&mut self, at: Instant, target: TimerTarget) {
        self.timer_seq += 1;
        let key = (at, self.timer_seq);
        let armed = match target {
            TimerTarget::Server(id, _) => self.servers.get_mut(&id).map(|e| &mut e.armed),
            TimerTarget::Client(id, _) => self.clients.get_mut(&id).map(|e| &mut e.armed),
        };
        if let Some(armed) = armed {
            armed.push(key);
            self.timers.insert(key, target);
        }
    }

    /// Drops the pending timers of a transaction that is gone.
    fn disarm(&mut self, armed: &[TimerKey]) {
        for key in armed {
            self.timers.remove(key);
        }
    }

    fn apply_server_actions(&mut self, id: TxnId) {
        let peer = self.servers.get(&id).map(|e| e.peer);
        self.apply_actions(id, peer, Role::Server);
    }

    fn apply_client_actions(&mut self, id: TxnId) {
        let peer = self.clients.get(&id).map(|e| e.peer);
        self.apply_actions(id, peer, Role::Client);
    }

    /// Turns what transaction `id` (of `role`, talking to `peer`) asked for into timers and
    /// events.
    fn apply_actions(&mut self, id: TxnId, peer: Option<Peer>, role: Role) {
        let mut actions = std::mem::take(&mut self.actions);
        for action in actions.drain(..) {
            match action {
                TxnAction::Send(bytes) => {
                    if let Some(peer) = peer {
                        self.events
                            .push_back(TxnEvent::Transmit(Transmit { peer, bytes }));
                    }
                }
                TxnAction::Arm(kind, at) => {
                    let target = match role {
                        Role::Server => TimerTarget::Server(id, kind),
                        Role::Client => TimerTarget::Client(id, kind),
                    };
                    self.arm(at, target);
                }
                TxnAction::Timeout => self.events.push_back(match role {
                    Role::Server => TxnEvent::ServerTimedOut(id),
                    Role::Client => TxnEvent::ClientTimedOut(id),
                }),
                TxnAction::Unacknowledged => {
                    self.events.push_back(TxnEvent::ServerUnacknowledged(id))
                }
                TxnAction::Terminated => self.events.push_back(match role {
                    Role::Server => TxnEvent::ServerEnded(id),
                    Role::Client => TxnEvent::ClientEnded(id),
                }),
            }
        }
        self.actions = actions;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Transport;

    fn invite() -> Message {
        let text = "INVITE sip:b@127.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKt1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: t1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        Message::parse(&Bytes::from(text)).expect("INVITE")
    }

    #[test]
    fn a_transaction_that_ends_takes_its_timers_with_it() {
        let mut txns: Transactions<(), ()> = Transactions::new(TimerConfig::default());
        let peer = Peer {
            listener: 0,
            transport: Transport::Udp,
            addr: "127.0.0.2:5060".parse().expect("addr"),
            conn: None,
        };
        let now = Instant::now();
        let request = invite();
        let bytes = Bytes::from(request.to_bytes());
        txns.start_client(1, (request, bytes), peer, (), now);
        // Timer A (retransmit) and Timer B (give up) are pending.
        assert_eq!(txns.timers.len(), 2);
        assert!(txns.poll_timeout().is_some());
        // A 2xx ends an INVITE client transaction at once (RFC 3261 §17.1.1.2).
        assert!(txns.client_response(1, 200, Bytes::new, now));
        while let Some(event) = txns.poll_event() {
            txns.forget(&event);
        }
        assert_eq!(txns.len(), 0);
        assert_eq!(
            txns.poll_timeout(),
            None,
            "no timer of a forgotten transaction"
        );
        assert!(!txns.fire_next_timer(now + std::time::Duration::from_secs(64)));
    }
}
