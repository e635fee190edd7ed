//! Call setup and routing: requests arriving outside a dialog, what Bridgehead answers itself, a
//! new INVITE through `on_invite` to its B-leg, and serial failover (`on_failure`).

use super::in_dialog::contact_uri;
use super::in_dialog::record_routes;
use super::offer_answer::carries_sdp;
use super::*;

/// A new call as far as its `on_invite`: what the setup prepared before the hook, kept while
/// the hook waits for a lookup.
pub(super) struct NewCall {
    /// The caller's INVITE.
    pub(super) msg: Message,
    pub(super) info: RequestInfo,
    /// The version the call takes.
    pub(super) rules: Arc<RuleSet>,
    pub(super) trunk: TrunkId,
    pub(super) script: Option<ScriptId>,
    /// The caller's INVITE transaction.
    pub(super) a_invite: TxnId,
    pub(super) a: Dialog,
    /// The B-leg's Call-ID and From-tag.
    pub(super) b_identity: (String, String),
    /// When the caller's INVITE came.
    pub(super) received: Instant,
    a_session: Option<SessionTimer>,
    a_reliable: Option<ReliableProvisionals>,
    preconditions: Option<precondition::CallerPreconditions>,
    /// The call counted on the caller's trunk.
    seat: crate::shared::TrunkSeat,
}

impl NewCall {
    /// What the record of the call needs when it is refused as it is.
    pub(super) fn refused(&self) -> record::Refused<'_> {
        record::Refused {
            a: &self.a,
            b_call_id: &self.b_identity.0,
            rules: &self.rules,
            received: self.received,
        }
    }
}

/// The caller's dialog (the A-leg) of a new INVITE from `from` on `trunk`, with Bridgehead's
/// tag `a_tag`.
fn a_dialog(
    msg: &Message,
    info: &RequestInfo,
    (from, trunk): (Peer, TrunkId),
    listener: &crate::config::Listener,
    a_tag: String,
) -> Dialog {
    let a_from = msg.header_str(&HeaderName::From).unwrap_or_default();
    let a_to = msg.header_str(&HeaderName::To).unwrap_or_default();
    Dialog {
        trunk,
        peer: from,
        call_id: info.call_id.clone(),
        local_tag: a_tag,
        remote_tag: info.from_tag.clone(),
        local_party: without_tag(a_to),
        remote_party: without_tag(a_from),
        // An RFC 2543 caller may send no Contact: its From URI is the target then.
        remote_target: contact_uri(msg)
            .or_else(|| uri_of(a_from))
            .unwrap_or_default(),
        route_set: record_routes(msg),
        local_cseq: 0,
        remote_cseq: info.cseq,
        invite_cseq: 0,
        contact: contact_value(user_of(a_to).as_deref(), listener, from.transport),
        allows_update: allows_update(msg),
    }
}

/// The B-leg INVITE as the rules see it: the caller's identity, what crosses and the body,
/// no routing yet.
fn b_leg_draft(msg: &Message, info: &RequestInfo, a: &Dialog) -> Message {
    let uri = match &msg.start {
        StartLine::Request { uri, .. } => uri.clone(),
        StartLine::Response { .. } => String::new(),
    };
    let mut draft = Message {
        start: StartLine::Request {
            method: Method::Invite,
            uri,
        },
        headers: Vec::with_capacity(msg.headers.len() + 4),
        body: Bytes::new(),
    };
    let max_forwards = info.max_forwards.unwrap_or(70).saturating_sub(1);
    draft.push_header(HeaderName::MaxForwards, max_forwards.to_string());
    draft.push_header(HeaderName::From, a.remote_party.clone());
    draft.push_header(HeaderName::To, a.local_party.clone());
    draft.push_header(HeaderName::CallId, String::new());
    draft.push_header(HeaderName::CSeq, "1 INVITE".to_string());
    copy_crossing(msg, &mut draft);
    draft
}

/// Where `on_invite` sends a new call: its decision, the trunk's default route when it made
/// none, or a rejection when it failed on a trunk whose policy is `reject`.
fn invite_decision(
    rules: &RuleSet,
    trunk: TrunkId,
    (failed, decision): (bool, Option<RouteDecision>),
) -> Option<RouteDecision> {
    let settings = &rules.profile.trunks[trunk];
    match (failed, settings.on_script_error) {
        (true, ScriptErrorPolicy::Reject(status)) => Some(RouteDecision::Reject {
            status,
            reason: crate::sip::reason_phrase(status).to_string(),
            headers: Vec::new(),
        }),
        _ => decision.or_else(|| {
            settings.route.map(|trunk| RouteDecision::Route {
                trunk,
                peer: None,
                uri: None,
            })
        }),
    }
}

/// A Request-URI for a trunk peer: the user and parameters of `uri`, the peer's `host` (its
/// name, or its address) and port.
pub(super) fn retarget(uri: &str, host: &str, peer: &Peer) -> String {
    let parsed = Uri::parse(uri).ok();
    let user = parsed.as_ref().and_then(|u| u.user);
    let mut out = String::with_capacity(64);
    out.push_str("sip:");
    if let Some(user) = user {
        out.push_str(user);
        out.push('@');
    }
    out.push_str(host);
    out.push(':');
    out.push_str(&peer.addr.port().to_string());
    if let Some(parsed) = &parsed {
        for (name, value) in crate::sip::header::params(parsed.params).map_while(Result::ok) {
            if ["transport", "maddr", "lr", "phone-context"]
                .iter()
                .any(|skip| name.eq_ignore_ascii_case(skip))
            {
                continue;
            }
            out.push(';');
            out.push_str(name);
            if let Some(value) = value {
                out.push('=');
                out.push_str(value);
            }
        }
        if parsed.scheme == Scheme::Tel {
            out.push_str(";user=phone");
        }
    }
    match peer.transport {
        crate::config::Transport::Udp => {}
        crate::config::Transport::Tcp => out.push_str(";transport=tcp"),
        crate::config::Transport::Tls => out.push_str(";transport=tls"),
    }
    out
}

impl B2bua<'_> {
    /// A request arrived.
    pub(super) fn on_request(&mut self, msg: Message, from: Peer, now: Instant) {
        let Some(method) = msg.method().cloned() else {
            return;
        };
        let info = match check_request(&msg) {
            Ok(info) => info,
            Err(fault) => {
                self.calls.stats.malformed += 1;
                tracing::debug!(peer = %from.addr, %fault, "malformed request");
                // An unknown method is answered 501 even when its CSeq does not match (RFC 4475
                // §3.1.2.18): the method is the first thing Bridgehead cannot serve.
                let status = match (&method, &fault) {
                    (Method::Extension(_), crate::sip::Fault::CSeqMethod) => 501,
                    _ => fault.status(),
                };
                if method != Method::Ack {
                    self.reject_stateless(&msg, from, status, &fault.to_string());
                }
                return;
            }
        };
        let Some(key) = server_key(&msg, &method, &from) else {
            return;
        };
        if method == Method::Ack {
            match self.txns.find_server(&key) {
                // An ACK reusing its INVITE's branch still acknowledges a 2xx end to end
                // (RFC 6026 §7.1: in Accepted, it goes to the dialog).
                Some(id) => {
                    if self.server_ack(id, now) {
                        self.on_dialog_ack(msg, &info, now);
                    }
                }
                None => self.on_dialog_ack(msg, &info, now),
            }
            return;
        }
        if let Some(id) = self.txns.find_server(&key) {
            self.server_retransmission(id);
            return;
        }
        // A request inside a dialog belongs to that leg's trunk, even when its source is not one
        // of the trunk's peers any more (a reload removed it) or never was (a rule routed the
        // call to another address).
        // (Local answers use the current version's trunks: the index must exist there too.)
        let trunks = self.calls.current.profile.trunks.len();
        let trunk = self
            .calls
            .current
            .profile
            .trunk_for(from.listener, from.addr.ip())
            .or_else(|| {
                let tag = info.to_tag.as_deref()?;
                let (key, leg) = self
                    .calls
                    .dialogs
                    .get(&dialog_key(&info.call_id, Some(tag)))?;
                let trunk = self.calls.by_key.get(key)?.leg(*leg).trunk;
                (trunk < trunks).then_some(trunk)
            });
        let Some(trunk) = trunk else {
            let drop = self
                .calls
                .current
                .profile
                .listeners
                .get(from.listener)
                .is_some_and(|l| l.unknown_sources == crate::config::UnknownSources::Drop);
            if drop {
                tracing::debug!(peer = %from.addr, "request from a source that belongs to no trunk: dropped");
                return;
            }
            tracing::info!(peer = %from.addr, "request from a source that belongs to no trunk");
            self.reject_stateless(&msg, from, 403, "source belongs to no trunk");
            return;
        };
        let incoming = Incoming {
            msg,
            key,
            from,
            trunk,
        };
        if method == Method::Cancel {
            self.on_cancel(incoming, now);
            return;
        }
        let ingress = &self.calls.current.profile.trunks[incoming.trunk];
        if let Some((status, extra)) = B2bua::refuse_request(&incoming.msg, ingress) {
            self.answer(incoming, status, &extra, now);
            return;
        }
        if info.to_tag.is_some() {
            self.on_dialog_request(incoming, method, info, now);
            return;
        }
        let Some(incoming) = self.refuse_while_draining(incoming, &method, now) else {
            return;
        };
        let ingress = &self.calls.current.profile.trunks[incoming.trunk];
        let (status, extra) = match method {
            Method::Invite => return self.on_new_invite(incoming, info, now),
            Method::Options => (
                200,
                vec![
                    (HeaderName::Allow, ALLOW.to_string()),
                    (HeaderName::Accept, ACCEPT.to_string()),
                    (HeaderName::Supported, build::supported(ingress)),
                ],
            ),
            Method::Extension(_) => (501, vec![(HeaderName::Allow, ALLOW.to_string())]),
            Method::Register | Method::Message | Method::Subscribe | Method::Publish => {
                (405, vec![(HeaderName::Allow, ALLOW.to_string())])
            }
            _ => (481, Vec::new()),
        };
        self.answer(incoming, status, &extra, now);
    }

    /// Checks what any request asks for that Bridgehead cannot give (an option it does not
    /// support on the trunk it came from, a URI scheme it cannot route); returns the refusal.
    pub(super) fn refuse_request(msg: &Message, trunk: &crate::config::Trunk) -> Option<Refusal> {
        let required: Vec<&str> = option_tags(msg, &HeaderName::Require)
            .filter(|t| !(t.eq_ignore_ascii_case("100rel") && trunk.rel100.allowed()))
            .filter(|t| !t.eq_ignore_ascii_case("timer"))
            .filter(|t| {
                !(t.eq_ignore_ascii_case("precondition")
                    && trunk.precondition == crate::config::Precondition::Terminate)
            })
            .collect();
        if !required.is_empty() {
            return Some((420, vec![(HeaderName::Unsupported, required.join(", "))]));
        }
        if let StartLine::Request { uri, .. } = &msg.start {
            if Uri::parse(uri).is_ok_and(|u| u.scheme == Scheme::Other) {
                return Some((416, vec![]));
            }
        }
        None
    }

    /// Checks what a new INVITE asks for that Bridgehead cannot give; returns the refusal.
    pub(super) fn refuse_invite(msg: &Message, info: &RequestInfo) -> Option<Refusal> {
        if !msg.body.is_empty() {
            // SDP, or a multipart body (SDP beside a location or ISUP) relayed with it.
            let relayed = msg.header_str(&HeaderName::ContentType).is_some_and(|ct| {
                let media_type = crate::sip::multipart::media_type(ct);
                media_type == "application/sdp" || media_type.starts_with("multipart/")
            });
            if !relayed {
                return Some((415, vec![(HeaderName::Accept, ACCEPT.to_string())]));
            }
        }
        let accepts: Vec<String> = msg
            .headers_named(&HeaderName::Accept)
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(split_list)
            .map(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .collect();
        let has_accept = msg.header(&HeaderName::Accept).is_some();
        if has_accept
            && !accepts
                .iter()
                .any(|t| t == "application/sdp" || t == "application/*" || t == "*/*")
        {
            return Some((406, vec![(HeaderName::Accept, ACCEPT.to_string())]));
        }
        if info.max_forwards == Some(0) {
            return Some((483, vec![]));
        }
        None
    }

    /// Answers a request locally through a new server transaction.
    pub(super) fn answer(
        &mut self,
        incoming: Incoming,
        status: u16,
        extra: &[(HeaderName, String)],
        now: Instant,
    ) {
        let Incoming {
            msg: req,
            key,
            from,
            trunk,
        } = incoming;
        let to_tag = self.new_tag();
        let mut response = response_to(&req, status, None, Some(&to_tag));
        for (name, value) in extra {
            response.push_header(name.clone(), value.clone());
        }
        let script = self.calls.current.rules.script_of(trunk);
        // Headers Bridgehead adds to its own answers are not subject to the header policy.
        let own = extra.iter().map(|(name, _)| name.clone()).collect();
        let (response, _) = self.outgoing_edited(None, script, Leg::A, trunk, response, own, None);
        let id = self.create_server(key, req, from, ServerOwner::Local);
        self.send_response(id, &response, now);
    }

    /// What a new INVITE asks of its trunk's leg: its QoS preconditions (when the trunk
    /// terminates them) and its session timer; or the refusal (420/488 for preconditions, 421
    /// for 100rel the caller lacks, 422 for a session interval too small).
    fn caller_leg(
        msg: &Message,
        trunk: &crate::config::Trunk,
        anchored: bool,
    ) -> Result<
        (
            Option<precondition::CallerPreconditions>,
            Option<SessionTimer>,
        ),
        Refusal,
    > {
        let preconditions =
            precondition::CallerPreconditions::of_invite(msg, trunk)?.filter(|_| anchored);
        let caller_100rel = has_option(msg, &HeaderName::Require, "100rel")
            || has_option(msg, &HeaderName::Supported, "100rel");
        // Preconditions need reliable provisionals (RFC 3312 §11).
        if (trunk.rel100 == Rel100::Required || preconditions.is_some()) && !caller_100rel {
            return Err((421, vec![(HeaderName::Require, "100rel".to_string())]));
        }
        let session = B2bua::caller_session(msg, trunk.session_timer)?;
        Ok((preconditions, session))
    }

    pub(super) fn on_new_invite(&mut self, incoming: Incoming, info: RequestInfo, now: Instant) {
        if let Some((status, extra)) = B2bua::refuse_invite(&incoming.msg, &info) {
            self.answer(incoming, status, &extra, now);
            return;
        }
        let rules = self.calls.current.clone();
        let settings = &rules.profile.trunks[incoming.trunk];
        let anchored = rules.profile.media.is_some();
        let (preconditions, a_session) = match B2bua::caller_leg(&incoming.msg, settings, anchored)
        {
            Ok(leg) => leg,
            Err((status, extra)) => {
                self.answer(incoming, status, &extra, now);
                return;
            }
        };
        // The caller's trunk's limits: a peer past them gets 503 before any rule runs (an
        // INVITE refused for its options above takes no seat).
        let ingress = &self.calls.current.profile.trunks[incoming.trunk];
        let limits = (ingress.max_calls, ingress.max_cps);
        let seat = match self.calls.loads.admit(&ingress.name, limits, now) {
            Ok(seat) => seat,
            Err(hit) => {
                self.calls.stats.limit_refused += 1;
                tracing::info!(trunk = %ingress.name, limit = hit.name(), peer = %incoming.from.addr, "new call past the caller's trunk limit: 503");
                let retry = (HeaderName::Other("Retry-After".into()), "1".to_string());
                self.answer(incoming, 503, &[retry], now);
                return;
            }
        };
        let Incoming {
            msg,
            key,
            from,
            trunk,
        } = incoming;
        let script = rules.rules.script_of(trunk);
        let rel100 = rules.profile.trunks[trunk].rel100;
        let caller_requires = has_option(&msg, &HeaderName::Require, "100rel");
        let caller_100rel = caller_requires || has_option(&msg, &HeaderName::Supported, "100rel");
        let a_reliable = (rel100.allowed() && caller_100rel).then(|| {
            let from_the_start =
                caller_requires || rel100 == Rel100::Required || preconditions.is_some();
            ReliableProvisionals::starting_at(
                self.calls.random.next_u32(),
                info.cseq,
                from_the_start,
            )
        });
        let a_invite = self.create_server(key, msg.clone(), from, ServerOwner::Local);
        let a_tag = self.new_tag();
        let trying = response_to(&msg, 100, None, None);
        let trying = self.outgoing(None, script, Leg::A, trunk, trying);
        self.send_response(a_invite, &trying, now);

        let listener = &rules.profile.listeners[from.listener];
        let a = a_dialog(&msg, &info, (from, trunk), listener, a_tag);
        let mut draft = b_leg_draft(&msg, &info, &a);
        let (b_call_id, b_tag) = self.fresh_b_identity(&info.call_id, &mut draft);

        let mut hooked = HookMessage::new(draft, Leg::B, String::new());
        hooked.caller = Some(msg.clone());
        let call = HookCall::new(info.call_id.clone(), trunk, None);
        let run = rules.rules.run_invite(script, call, hooked, now);
        let setup = NewCall {
            msg,
            info,
            rules,
            trunk,
            script,
            a_invite,
            a,
            b_identity: (b_call_id, b_tag),
            a_session,
            a_reliable,
            preconditions,
            seat,
            received: now,
        };
        self.after_invite_hook(setup, run, now);
    }

    /// Answers the caller's INVITE of a new call that will not be (it has no call yet) with
    /// `status`.
    pub(super) fn answer_new_call(&mut self, setup: &NewCall, status: u16, now: Instant) {
        let reason = match status {
            487 => "cancel",
            500 => "error",
            _ => "drain",
        };
        self.calls
            .record_refused(setup.refused(), (status, reason, status == 487), now);
        let (trunk, script, tag) = (setup.trunk, setup.script, setup.a.local_tag.as_str());
        let answer = response_to(&setup.msg, status, None, Some(tag));
        let answer = self.outgoing(None, script, Leg::A, trunk, answer);
        self.send_response(setup.a_invite, &answer, now);
    }

    /// Goes on with a new call once its `on_invite` ran: it waits for a lookup, or the call is
    /// routed (or refused) by what the rule decided.
    pub(super) fn after_invite_hook(&mut self, setup: NewCall, run: InviteRun, now: Instant) {
        let (taken, result) = match run {
            InviteRun::Waiting { invite, lookup } => {
                self.wait_for_lookup(setup, invite, lookup, now);
                return;
            }
            InviteRun::Done { taken, result } => (taken, result),
        };
        if self.calls.drain_ended() {
            // Its lookup answered after the drain's deadline: no new call any more.
            self.answer_new_call(&setup, 503, now);
            return;
        }
        let Some((call, hooked)) = taken else {
            // The rule's objects could not be taken back from Lua: nothing to route with.
            tracing::error!(call = %setup.info.call_id, "on_invite left no call to route: 500");
            self.calls.stats.calls_failed += 1;
            self.answer_new_call(&setup, 500, now);
            return;
        };
        let call_id = setup.info.call_id.clone();
        let mut outcome = self.hook_outcome(None, &call_id, Hook::Invite, call, result);
        let decision = (outcome.failed, outcome.decision.take());
        let route = match invite_decision(&setup.rules, setup.trunk, decision) {
            Some(RouteDecision::Route { trunk, peer, uri }) => Route { trunk, peer, uri },
            refused => {
                self.calls.stats.calls_failed += 1;
                let record = match &refused {
                    Some(RouteDecision::Reject { status, .. }) => (*status, "rejected", false),
                    _ => (404, "no_route", false),
                };
                self.calls.record_refused(setup.refused(), record, now);
                let answer = (setup.a_invite, &setup.msg, setup.a.local_tag.as_str());
                self.refuse_new_call(answer, (setup.script, setup.trunk), refused, now);
                return;
            }
        };
        let NewCall {
            msg,
            info,
            rules,
            trunk,
            script,
            a_invite,
            a,
            b_identity: (b_call_id, b_tag),
            a_session,
            a_reliable,
            preconditions,
            seat,
            received,
        } = setup;
        let HookMessage {
            msg: draft,
            touched,
            ..
        } = hooked;
        // Kept for failover: by a rule, or to the trunk's next peer.
        let b_template = (rules.rules.has_hook(script, Hook::Failure)
            || rules.profile.trunks[route.trunk].peers.len() > 1)
            .then(|| (draft.clone(), touched.clone()));
        let b_leg = (b_call_id.clone(), b_tag, a_session);
        let Some((mut b, mut invite)) = self.address_b_leg(&rules, draft, &route, b_leg, now)
        else {
            // The trunk has no peer (its names do not resolve): 503 at once.
            tracing::warn!(call = %info.call_id, trunk = %rules.profile.trunks[route.trunk].name, "no peer to send the call to: 503");
            self.calls.stats.calls_failed += 1;
            let refused = record::Refused {
                a: &a,
                b_call_id: &b_call_id,
                rules: &rules,
                received,
            };
            self.calls
                .record_refused(refused, (503, "no_peer", false), now);
            let unavailable = response_to(&msg, 503, None, Some(&a.local_tag));
            let unavailable = self.outgoing(None, script, Leg::A, trunk, unavailable);
            self.send_response(a_invite, &unavailable, now);
            return;
        };
        // Contact hosts a rule chose (a tenant's FQDN toward Teams).
        let mut a = a;
        let contact_hosts = std::mem::take(&mut outcome.contact_hosts);
        if let Some(host) = &contact_hosts[Leg::A.index()] {
            a.contact = build::with_contact_host(&a.contact, host);
        }
        if let Some(host) = &contact_hosts[Leg::B.index()] {
            b.contact = build::with_contact_host(&b.contact, host);
            invite.set_header(HeaderName::Contact, b.contact.clone());
        }
        let call_key = self.next_id();
        let mut call = Call::between(
            info.call_id,
            (trunk, script, rules),
            (a, b),
            now,
            CallState::Calling,
        );
        call.vars = outcome.vars;
        call.b_template = b_template;
        call.a_invite = a_invite;
        call.invite_pending = true;
        call.a_reliable = a_reliable;
        call.early_media = outcome.early_media;
        call.contact_hosts = contact_hosts;
        call.session = [a_session, None];
        call.preconditions = preconditions;
        call.seats = [Some(seat), None];
        self.calls
            .dialogs
            .insert(call.a.dialog_key(), (call_key, Leg::A));
        self.calls
            .dialogs
            .insert(call.b.dialog_key(), (call_key, Leg::B));
        self.calls.by_key.insert(call_key, call);
        if let Some(entry) = self.txns.server_mut(a_invite) {
            entry.owner = ServerOwner::Invite(call_key);
        }
        self.calls.stats.calls_started += 1;
        for action in &outcome.media {
            self.play(call_key, action);
        }
        self.send_b_invite(call_key, invite, touched, now);
    }

    /// Answers a new INVITE that no route takes: the rule's rejection (status, reason and
    /// headers, which bypass the header policy) or `404 No Route`.
    fn refuse_new_call(
        &mut self,
        (a_invite, msg, a_tag): (TxnId, &Message, &str),
        (script, trunk): (Option<ScriptId>, TrunkId),
        rejection: Option<RouteDecision>,
        now: Instant,
    ) {
        let response = match rejection {
            Some(RouteDecision::Reject {
                status,
                reason,
                headers,
            }) => {
                let mut response = response_to(msg, status, Some(&reason), Some(a_tag));
                let touched = headers.iter().map(|(name, _)| name.clone()).collect();
                for (name, value) in headers {
                    response.push_header(name, value);
                }
                self.outgoing_edited(None, script, Leg::A, trunk, response, touched, None)
                    .0
            }
            _ => {
                let response = response_to(msg, 404, Some("No Route"), Some(a_tag));
                self.outgoing(None, script, Leg::A, trunk, response)
            }
        };
        self.send_response(a_invite, &response, now);
    }

    /// Gives a B-leg INVITE draft of call `call` (its A-leg Call-ID) a fresh Call-ID and
    /// From-tag; returns them.
    pub(super) fn fresh_b_identity(&mut self, call: &str, draft: &mut Message) -> (String, String) {
        let call_id = self.new_call_id();
        self.calls.link(record::Link::Leg {
            call: call.to_string(),
            b_call_id: call_id.clone(),
        });
        let tag = self.new_tag();
        let from = without_tag(draft.header_str(&HeaderName::From).unwrap_or_default());
        draft.set_header(HeaderName::From, format!("{from};tag={tag}"));
        draft.set_header(HeaderName::CallId, call_id.clone());
        (call_id, tag)
    }

    /// Addresses a B-leg INVITE to a route: Request-URI, Via, Contact and Allow. Returns the
    /// B-leg dialog and the INVITE, or None when the trunk has no peer.
    pub(super) fn address_b_leg(
        &mut self,
        rules: &RuleSet,
        mut invite: Message,
        route: &Route,
        (call_id, local_tag, caller_timer): (String, String, Option<SessionTimer>),
        now: Instant,
    ) -> Option<(Dialog, Message)> {
        let dest = &rules.profile.trunks[route.trunk];
        // The trunk's first peer that is not down (the first, when all are).
        let health = &self.calls.health;
        let first_up = dest
            .peers
            .iter()
            .find(|peer| !health.avoid(&dest.name, **peer, now))
            .or(dest.peers.first());
        let peer = Peer {
            listener: dest.listener,
            transport: dest.transport,
            addr: route.peer.or_else(|| first_up.copied())?,
            conn: None,
        };
        if let StartLine::Request { uri, .. } = &mut invite.start {
            *uri = match &route.uri {
                Some(chosen) => chosen.clone(),
                None => retarget(uri, &dest.peer_host(peer.addr), &peer),
            };
        }
        if let Some(plan) = &dest.e164 {
            build::numbers_to_e164(&mut invite, plan);
        }
        let branch = self.new_branch();
        let listener = &rules.profile.listeners[peer.listener];
        invite.headers.insert(
            0,
            crate::sip::Header::new(
                HeaderName::Via,
                via_value(listener, peer.transport, &branch),
            ),
        );
        let b_from = invite
            .header_str(&HeaderName::From)
            .unwrap_or_default()
            .to_string();
        let b_to = invite
            .header_str(&HeaderName::To)
            .unwrap_or_default()
            .to_string();
        let contact = contact_value(user_of(&b_from).as_deref(), listener, peer.transport);
        invite.push_header(HeaderName::Contact, contact.clone());
        invite.push_header(HeaderName::Allow, ALLOW.to_string());
        if invite.body.is_empty()
            && dest.delayed_offer == DelayedOffer::Convert
            && rules.profile.media.is_some()
        {
            let session = self.calls.random.next_u32() & 0x7fff_ffff;
            invite.set_header(HeaderName::ContentType, "application/sdp");
            invite.body = super::offer_answer::own_offer(&dest.codecs, session);
        }
        let supported = match dest.rel100 {
            Rel100::Supported => "100rel, timer",
            Rel100::Required => {
                invite.push_header(HeaderName::Require, "100rel".to_string());
                "timer"
            }
            Rel100::Disabled => "timer",
        };
        invite.push_header(HeaderName::Supported, supported.to_string());
        for (name, value) in B2bua::callee_session_headers(dest.session_timer, caller_timer) {
            invite.push_header(name, value);
        }
        let remote_target = match &invite.start {
            StartLine::Request { uri, .. } => uri.clone(),
            StartLine::Response { .. } => String::new(),
        };
        let dialog = Dialog {
            trunk: route.trunk,
            peer,
            call_id,
            local_tag,
            remote_tag: None,
            local_party: without_tag(&b_from),
            remote_party: without_tag(&b_to),
            remote_target,
            route_set: Vec::new(),
            local_cseq: 1,
            remote_cseq: 0,
            invite_cseq: 1,
            contact,
            allows_update: true,
        };
        Some((dialog, invite))
    }

    /// Sends a call's B-leg INVITE after the per-message hook and the header policy (edits
    /// from `on_invite` stay exempt from the policy). A failing hook on a trunk whose policy is
    /// `reject` refuses the call instead.
    pub(super) fn send_b_invite(
        &mut self,
        key: CallKey,
        invite: Message,
        touched: Vec<HeaderName>,
        now: Instant,
    ) {
        let caller_offered = self
            .calls
            .by_key
            .get(&key)
            .and_then(|call| self.txns.server(call.a_invite))
            .and_then(|entry| entry.request.as_ref())
            .is_some_and(carries_sdp);
        if !self.seat_callee(key, &invite, now) {
            return;
        }
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        call.own_offer = !caller_offered && carries_sdp(&invite);
        let (script, peer, dest, ingress) = (call.script, call.b.peer, call.b.trunk, call.ingress);
        let policy = call.rules.profile.trunks[ingress].on_script_error;
        let (mut invite, failed) =
            self.outgoing_edited(Some(key), script, Leg::B, dest, invite, touched, None);
        if let Some(call) = self.calls.by_key.get_mut(&key) {
            let withheld = call.rules.profile.trunks[dest].delayed_offer == DelayedOffer::Always;
            call.offer_withheld = withheld && carries_sdp(&invite);
            if call.offer_withheld {
                // Anchored (the caller's address and codecs are known), then withheld: the
                // callee makes the offer.
                super::offer_answer::remove_sdp(&mut invite);
            }
        }
        if let Some(err) = self
            .calls
            .by_key
            .get_mut(&key)
            .and_then(|c| c.media_refused.take())
        {
            tracing::warn!(call = %self.calls.by_key.get(&key).map_or("", |c| c.id.as_str()), "call refused: media not anchored: {err}");
            self.calls.stats.calls_failed += 1;
            if let Some(server) = self.calls.by_key.get(&key).map(|c| c.a_invite) {
                self.reply_local(key, Leg::A, server, 503, now);
            }
            self.end_call(key, "error", None, now);
            return;
        }
        if let (true, ScriptErrorPolicy::Reject(status)) = (failed, policy) {
            self.calls.stats.calls_failed += 1;
            if let Some(server) = self.calls.by_key.get(&key).map(|c| c.a_invite) {
                self.reply_local(key, Leg::A, server, status, now);
            }
            self.end_call(key, "error", None, now);
            return;
        }
        if self.hold_for_preconditions(key, &invite, now) {
            return;
        }
        let b_invite = self.start_client(invite, peer, ClientOwner::Invite(key), now);
        if let Some(call) = self.calls.by_key.get_mut(&key) {
            call.b_invite = b_invite;
            let trunk = &call.rules.profile.trunks[call.b.trunk];
            if let Some(seconds) = trunk.failover_timeout.filter(|_| trunk.peers.len() > 1) {
                let at = now + std::time::Duration::from_secs(u64::from(seconds));
                self.calls.arm_failover(key, at);
            }
        }
    }

    /// Counts the call on its callee's trunk before its INVITE goes. Past the trunk's
    /// `max_calls` or `max_cps` the INVITE fails as with a 503 (`on_failure` may route the
    /// call elsewhere), else the caller gets 503, without Retry-After (its own trunk is not
    /// the one that is full), and the call ends. False when the INVITE must not go.
    fn seat_callee(&mut self, key: CallKey, invite: &Message, now: Instant) -> bool {
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return false;
        };
        // A failover's earlier attempt no longer counts (its trunk may be this one).
        call.seats[Leg::B.index()] = None;
        let trunk = &call.rules.profile.trunks[call.b.trunk];
        let hit = match self
            .calls
            .loads
            .admit(&trunk.name, (trunk.max_calls, trunk.max_cps), now)
        {
            Ok(seat) => {
                call.seats[Leg::B.index()] = Some(seat);
                return true;
            }
            Err(hit) => hit,
        };
        self.calls.stats.limit_refused += 1;
        tracing::info!(call = %call.id, trunk = %trunk.name, limit = hit.name(), "callee's trunk at its limit");
        let failure = response_to(invite, 503, None, None);
        if self.on_failure(key, &failure, None, now) {
            return false;
        }
        self.calls.stats.calls_failed += 1;
        if let Some(server) = self.calls.by_key.get(&key).map(|c| c.a_invite) {
            self.reply_local(key, Leg::A, server, 503, now);
        }
        self.end_call(key, "limit", None, now);
        false
    }

    /// Serial failover: sends the call's INVITE again, as `on_invite` left it, on a fresh
    /// B-leg toward `route`. Returns false when the call cannot be routed again.
    pub(super) fn reroute(&mut self, key: CallKey, route: &Route, now: Instant) -> bool {
        let Some(call) = self.calls.by_key.get(&key) else {
            return false;
        };
        if call.attempts >= MAX_ATTEMPTS {
            tracing::info!(call = %call.id, attempts = call.attempts, "failover limit reached");
            return false;
        }
        let Some((mut draft, touched)) = call.b_template.clone() else {
            return false;
        };
        let rules = call.rules.clone();
        let caller_timer = call.session[Leg::A.index()];
        let id = call.id.clone();
        let (call_id, tag) = self.fresh_b_identity(&id, &mut draft);
        let b_leg = (call_id, tag, caller_timer);
        let Some((b, invite)) = self.address_b_leg(&rules, draft, route, b_leg, now) else {
            return false;
        };
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return false;
        };
        tracing::info!(call = %call.id, trunk = %rules.profile.trunks[route.trunk].name, "failover");
        let mut b = b;
        let mut invite = invite;
        if let Some(host) = &call.contact_hosts[Leg::B.index()] {
            b.contact = build::with_contact_host(&b.contact, host);
            invite.set_header(HeaderName::Contact, b.contact.clone());
        }
        let old = std::mem::replace(&mut call.b, b);
        call.attempts += 1;
        call.state = CallState::Calling;
        call.invite_pending = true;
        call.forget_callee();
        let new_key = call.b.dialog_key();
        self.calls.dialogs.remove(&old.dialog_key());
        self.calls.dialogs.insert(new_key, (key, Leg::B));
        self.send_b_invite(key, invite, touched, now);
        true
    }

    /// `on_failure` for a callee's failure (`by`: who failed, for `on_call_end`): routes the call
    /// again or answers the caller as the rule decided. False when the failure goes on to the
    /// caller as it is.
    pub(super) fn on_failure(
        &mut self,
        key: CallKey,
        failure: &Message,
        by: Option<Leg>,
        now: Instant,
    ) -> bool {
        match self.lifecycle_hook(key, Hook::Failure, failure) {
            Some(RouteDecision::Route { trunk, peer, uri }) => {
                self.reroute(key, &Route { trunk, peer, uri }, now)
            }
            Some(RouteDecision::Reject {
                status,
                reason,
                headers,
            }) => {
                self.calls.stats.calls_failed += 1;
                self.reject_call(key, status, &reason, headers, now);
                self.end_call(key, "rejected", by, now);
                true
            }
            None => false,
        }
    }

    /// Answers the caller's INVITE with a rule's rejection.
    pub(super) fn reject_call(
        &mut self,
        key: CallKey,
        status: u16,
        reason: &str,
        headers: Vec<(HeaderName, String)>,
        now: Instant,
    ) {
        let Some(call) = self.calls.by_key.get_mut(&key) else {
            return;
        };
        call.a_final = Some(status);
        let (server, tag, script, trunk) = (
            call.a_invite,
            call.a.local_tag.clone(),
            call.script,
            call.a.trunk,
        );
        let Some(request) = self.txns.server(server).and_then(|e| e.request.as_ref()) else {
            return;
        };
        let mut response = response_to(request, status, Some(reason), Some(&tag));
        let touched = headers.iter().map(|(name, _)| name.clone()).collect();
        for (name, value) in headers {
            response.push_header(name, value);
        }
        let (response, _) =
            self.outgoing_edited(Some(key), script, Leg::A, trunk, response, touched, None);
        self.send_response(server, &response, now);
    }
}
