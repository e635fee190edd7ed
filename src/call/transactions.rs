//! The call layer's side of the transaction table the engine lends it: identifiers (tags,
//! branches, Call-IDs), server transactions created and answered, client transactions started
//! (over TCP when a request is too big for the trunk's UDP), responses and ACKs fed to them,
//! and stateless answers.

use super::*;

/// Rewrites the top Via of a request Bridgehead sends to say TCP (RFC 3261 §18.1.1: a change
/// of transport changes the top Via).
fn switch_via_to_tcp(request: &mut Message) {
    if let Some(via) = request
        .headers
        .iter_mut()
        .find(|h| h.name == HeaderName::Via)
    {
        if let Some(rest) = via.value_str().and_then(|v| {
            v.get(..11)
                .filter(|p| p.eq_ignore_ascii_case("SIP/2.0/UDP"))
                .map(|_| &v[11..])
        }) {
            via.value = Bytes::from(format!("SIP/2.0/TCP{rest}"));
        }
    }
}

impl B2bua<'_> {
    /// A fresh call key or transaction id.
    pub(super) fn next_id(&mut self) -> u64 {
        self.calls.next_id += 1;
        self.calls.next_id
    }

    /// A fresh tag.
    pub(super) fn new_tag(&mut self) -> String {
        format!("{:016x}", self.calls.random.next_u64())
    }

    /// A fresh branch with the RFC 3261 magic cookie.
    pub(super) fn new_branch(&mut self) -> String {
        format!("z9hG4bK{:016x}", self.calls.random.next_u64())
    }

    /// A fresh Call-ID that hashes to this shard.
    pub(super) fn new_call_id(&mut self) -> String {
        loop {
            let random = self.calls.random.next_u64();
            let id = format!("bh{random:016x}{:08x}", self.next_id());
            if shard_for_call_id(id.as_bytes(), self.calls.shards) == self.calls.shard {
                return id;
            }
        }
    }

    /// Sends bytes outside any transaction (an end-to-end ACK, a stateless answer).
    pub(super) fn transmit(&mut self, peer: Peer, bytes: Bytes) {
        self.txns.send_stateless(Transmit { peer, bytes });
    }

    /// Registers a server transaction for a request that just arrived.
    pub(super) fn create_server(
        &mut self,
        key: String,
        request: Message,
        peer: Peer,
        owner: ServerOwner,
    ) -> TxnId {
        let id = self.next_id();
        self.txns.create_server(id, key, request, peer, owner);
        id
    }

    /// Sends a response through a server transaction.
    pub(super) fn send_response(&mut self, id: TxnId, response: &Message, now: Instant) {
        self.txns.send_response(id, response, now);
    }

    /// Answers a request without keeping a transaction (for requests that will not be
    /// retransmitted into a transaction, or cannot be matched to one).
    pub(super) fn reject_stateless(
        &mut self,
        req: &Message,
        peer: Peer,
        status: u16,
        warning: &str,
    ) {
        if req.header(&HeaderName::Via).is_none() {
            return;
        }
        let mut response = response_to(req, status, None, None);
        // The answer repeats the request's Via, From, To, Call-ID and CSeq: one with a raw NUL
        // in them would carry it back (found by fuzzing); such a request is dropped.
        if response.headers.iter().any(|h| h.value.contains(&0)) {
            tracing::debug!(peer = %peer.addr, status, "request with a NUL in the headers an answer repeats: dropped");
            return;
        }
        let tag = self.new_tag();
        if let Some(to) = response
            .headers
            .iter_mut()
            .find(|h| h.name == HeaderName::To)
        {
            if let Some(value) = to.value_str() {
                if tag_of(value).is_none() {
                    to.value = Bytes::from(format!("{value};tag={tag}"));
                }
            }
        }
        response.push_header(
            HeaderName::Warning,
            format!("399 bridgehead \"{}\"", warning.replace('"', "'")),
        );
        if status == 503 {
            // Bridgehead's own stateless 503 (a source past its call rate): back off a second.
            response.push_header(HeaderName::Other("Retry-After".into()), "1".to_string());
        }
        // Toward a trunk's peer, its rules run on the answer like on any message sent there
        // (Microsoft wants X-MS-SBC on every one); a stranger gets it bare.
        let profile = &self.calls.current.profile;
        if let Some(trunk) = profile.trunk_for(peer.listener, peer.addr.ip()) {
            let script = self.calls.current.rules.script_of(trunk);
            response = self.outgoing(None, script, Leg::A, trunk, response);
        }
        let bytes = Bytes::from(response.to_bytes());
        self.transmit(peer, bytes);
    }

    /// Starts a client transaction sending `request` to `peer` (over TCP instead when the
    /// peer's trunk says so for its size).
    pub(super) fn start_client(
        &mut self,
        mut request: Message,
        peer: Peer,
        owner: ClientOwner,
        now: Instant,
    ) -> TxnId {
        let id = self.next_id();
        let mut bytes = request.to_bytes();
        let mut peer = peer;
        if self.goes_over_tcp(&peer, bytes.len()) {
            switch_via_to_tcp(&mut request);
            peer.transport = crate::config::Transport::Tcp;
            bytes = request.to_bytes();
            self.calls.stats.switched_to_tcp += 1;
        }
        self.txns
            .start_client(id, (request, Bytes::from(bytes)), peer, owner, now);
        id
    }

    /// RFC 3261 §18.1.1: a request of `size` bytes toward a UDP peer whose trunk sets
    /// `tcp_above` below that size goes over TCP.
    fn goes_over_tcp(&self, peer: &Peer, size: usize) -> bool {
        use crate::config::Transport;
        if peer.transport != Transport::Udp {
            return false;
        }
        let profile = &self.calls.current.profile;
        profile
            .trunk_for(peer.listener, peer.addr.ip())
            .and_then(|trunk| profile.trunks[trunk].tcp_above)
            .is_some_and(|limit| size > limit)
            && profile
                .listeners
                .get(peer.listener)
                .is_some_and(|l| l.transports.contains(&Transport::Tcp))
    }

    /// Feeds a response to a client transaction; returns true when it must go up to the owner.
    pub(super) fn client_response(&mut self, id: TxnId, response: &Message, now: Instant) -> bool {
        let Some(status) = response.status() else {
            return false;
        };
        let ack = self.hop_by_hop_ack(id, status, response);
        let ack = || {
            ack.map(|ack| Bytes::from(ack.to_bytes()))
                .unwrap_or_default()
        };
        self.txns.client_response(id, status, ack, now)
    }

    /// Feeds an ACK to an INVITE server transaction; returns true when it acknowledged a 2xx.
    pub(super) fn server_ack(&mut self, id: TxnId, now: Instant) -> bool {
        self.txns.server_ack(id, now)
    }

    /// A request retransmission matched a server transaction.
    pub(super) fn server_retransmission(&mut self, id: TxnId) {
        self.txns.server_retransmission(id);
    }
}
