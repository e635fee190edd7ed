//! The call layer stepped on its own: a [`Calls`] and a transaction table, inputs handed in as
//! the engine would, what goes out read from the table's events. No engine, no sockets, no Lua
//! (the trunks route by profile alone).

use super::setup::retarget;
use super::*;
use crate::config::{Profile, Transport};
use crate::script::RuleMetrics;
use crate::sip::transaction::TimerConfig;
use crate::transactions::TxnEvent;
use std::path::Path;
use std::time::Duration;

const CORE: &str = "127.0.0.1:5090";
const TEAMS: &str = "127.0.0.2:5080";

/// The call layer of one shard, the table the engine would lend it, and a virtual clock.
struct Layer {
    calls: Calls,
    txns: Txns,
    now: Instant,
}

impl Layer {
    fn new() -> Layer {
        let text = format!(
            "listeners:
  - name: core
    address: 127.0.0.1:5060
  - name: teams
    address: 127.0.0.1:5070
trunks:
  - name: core
    listener: core
    peers: [\"{CORE}\"]
    route: teams
  - name: teams
    listener: teams
    peers: [\"{TEAMS}\"]
    route: core
"
        );
        let profile = Profile::parse(Path::new("test.yaml"), &text).expect("profile");
        let rules =
            RuleSet::load(Arc::new(profile), 1, Arc::new(RuleMetrics::default())).expect("rules");
        let mut calls = Calls::new(rules, 0, 1);
        calls.seed_random(7);
        Layer {
            calls,
            txns: Txns::new(TimerConfig::default()),
            now: Instant::now(),
        }
    }

    fn peer(listener: usize, addr: &str) -> Peer {
        Peer {
            listener,
            transport: Transport::Udp,
            addr: addr.parse().expect("addr"),
            conn: None,
        }
    }

    /// Hands `input` over and returns what went out, handling timeouts as the engine would.
    fn input(&mut self, input: CallInput<'_>) -> Vec<(Peer, Message)> {
        self.calls.with(&mut self.txns).handle(input, self.now);
        self.drain()
    }

    fn drain(&mut self) -> Vec<(Peer, Message)> {
        let mut sent = Vec::new();
        while let Some(event) = self.txns.poll_event() {
            let input = match event {
                TxnEvent::Transmit(Transmit { peer, bytes }) => {
                    sent.push((peer, Message::parse(&bytes).expect("bridgehead sends SIP")));
                    continue;
                }
                TxnEvent::ServerTimedOut(id) => CallInput::ServerTimedOut(id),
                TxnEvent::ClientTimedOut(id) => CallInput::ClientFailed { id, status: 408 },
                ended => {
                    self.txns.forget(&ended);
                    continue;
                }
            };
            self.calls.with(&mut self.txns).handle(input, self.now);
        }
        sent
    }

    /// A message from the core (listener 0) or Teams (listener 1).
    fn from(&mut self, listener: usize, text: &str) -> Vec<(Peer, Message)> {
        let addr = if listener == 0 { CORE } else { TEAMS };
        let msg = Message::parse(&Bytes::from(
            text.replace("\r\n", "\n").replace('\n', "\r\n"),
        ))
        .expect("test SIP");
        let from = Layer::peer(listener, addr);
        self.input(CallInput::Message { msg, from })
    }

    /// Lets `seconds` pass, firing the transaction timers due.
    fn wait(&mut self, seconds: u64) -> Vec<(Peer, Message)> {
        self.now += Duration::from_secs(seconds);
        let mut sent = Vec::new();
        while self.txns.fire_next_timer(self.now) {
            sent.extend(self.drain());
        }
        sent
    }

    /// The state of the one call in progress.
    fn state(&self) -> Option<CallState> {
        assert!(self.calls.len() <= 1);
        self.calls.by_key.values().next().map(|call| call.state)
    }
}

/// What a list of sent messages says, one line each: where to, and the first line.
fn summary(sent: &[(Peer, Message)]) -> Vec<String> {
    sent.iter()
        .map(|(peer, msg)| {
            let what = match &msg.start {
                StartLine::Request { method, .. } => method.as_str().to_string(),
                StartLine::Response { status, .. } => status.to_string(),
            };
            format!("{} {what}", peer.addr)
        })
        .collect()
}

/// The one message sent to `addr` whose first line is `what` (a method or a status).
fn sent_to<'m>(sent: &'m [(Peer, Message)], addr: &str, what: &str) -> &'m Message {
    let line = format!("{addr} {what}");
    let at = summary(sent).iter().position(|s| *s == line);
    &sent[at.unwrap_or_else(|| panic!("no {line} in {:?}", summary(sent)))].1
}

const INVITE: &str = "INVITE sip:+15550100@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKcaller1
Max-Forwards: 70
From: <sip:+15550199@127.0.0.1>;tag=caller
To: <sip:+15550100@127.0.0.1>
Call-ID: a-leg-1
CSeq: 1 INVITE
Contact: <sip:caller@127.0.0.1:5090>
Content-Length: 0

";

/// A response from Teams to the B-leg INVITE, with Teams' tag and Contact.
fn teams_answer(invite: &Message, status: u16) -> String {
    let mut response = response_to(invite, status, None, Some("teams"));
    response.push_header(HeaderName::Contact, format!("<sip:callee@{TEAMS}>"));
    String::from_utf8(response.to_bytes()).expect("utf-8")
}

#[test]
fn a_call_is_set_up_answered_and_hung_up_by_the_callee() {
    let mut layer = Layer::new();
    // Its state for a cluster too: queued once answered, again on a change, removed at the
    // end.
    layer.calls.keep_replicas();
    let sent = layer.from(0, INVITE);
    assert_eq!(
        summary(&sent),
        [format!("{CORE} 100"), format!("{TEAMS} INVITE")]
    );
    assert_eq!(layer.state(), Some(CallState::Calling));
    let b_invite = sent_to(&sent, TEAMS, "INVITE").clone();
    assert_ne!(b_invite.header_str(&HeaderName::CallId), Some("a-leg-1"));

    let sent = layer.from(1, &teams_answer(&b_invite, 180));
    assert_eq!(summary(&sent), [format!("{CORE} 180")]);
    assert_eq!(layer.state(), Some(CallState::Proceeding));
    layer.calls.replicate(layer.now);
    assert_eq!(
        layer.calls.poll_replica(),
        None,
        "a call in setup is not replicated"
    );

    let sent = layer.from(1, &teams_answer(&b_invite, 200));
    assert_eq!(summary(&sent), [format!("{CORE} 200")]);
    assert_eq!(layer.state(), Some(CallState::Answered { at: layer.now }));
    assert_eq!(layer.calls.stats().calls_answered, 1);
    let ok = sent_to(&sent, CORE, "200");
    let a_to = ok.header_str(&HeaderName::To).expect("To").to_string();
    layer.calls.replicate(layer.now);
    let Some(super::replica::Replica::Put { id, state }) = layer.calls.poll_replica() else {
        panic!("the answered call's state");
    };
    assert_eq!(id, "a-leg-1");
    let snapshot: super::replica::CallSnapshot = serde_json::from_slice(&state).expect("JSON");
    assert_eq!(snapshot.a.call_id, "a-leg-1");
    assert_eq!(
        Some(snapshot.b.call_id.as_str()),
        b_invite.header_str(&HeaderName::CallId)
    );
    assert_eq!(
        (snapshot.a.listener.as_str(), snapshot.b.listener.as_str()),
        ("core", "teams")
    );
    assert_eq!(
        (snapshot.ingress.as_str(), snapshot.egress.as_str()),
        ("core", "teams")
    );
    assert_eq!(snapshot.b.peer.to_string(), TEAMS);
    assert!(snapshot.b.remote_tag.is_some() && snapshot.a.remote_tag.is_some());
    layer.calls.replicate(layer.now);
    assert_eq!(
        layer.calls.poll_replica(),
        None,
        "unchanged: not queued again"
    );

    // The caller's ACK goes on to the callee as the B-leg's own ACK.
    let ack = format!(
        "ACK sip:bridgehead@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKcaller2
Max-Forwards: 70
From: <sip:+15550199@127.0.0.1>;tag=caller
To: {a_to}
Call-ID: a-leg-1
CSeq: 1 ACK
Content-Length: 0

"
    );
    let sent = layer.from(0, &ack);
    assert_eq!(summary(&sent), [format!("{TEAMS} ACK")]);
    let b_ack = &sent[0].1;
    assert_eq!(
        b_ack.header_str(&HeaderName::CallId),
        b_invite.header_str(&HeaderName::CallId)
    );

    // The callee hangs up: the BYE crosses, and its 200 comes back; the call is gone.
    let b_from = b_invite.header_str(&HeaderName::From).expect("From");
    let b_to = sent[0].1.header_str(&HeaderName::To).expect("To");
    let bye = format!(
        "BYE sip:bridgehead@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/UDP {TEAMS};branch=z9hG4bKcallee1
Max-Forwards: 70
From: {b_to}
To: {b_from}
Call-ID: {}
CSeq: 2 BYE
Content-Length: 0

",
        b_invite.header_str(&HeaderName::CallId).expect("Call-ID")
    );
    let sent = layer.from(1, &bye);
    assert_eq!(summary(&sent), [format!("{CORE} BYE")]);
    // The callee's BYE moved its CSeq, and Bridgehead's toward the caller moved the A-leg's.
    layer.calls.replicate(layer.now);
    let Some(super::replica::Replica::Put { state, .. }) = layer.calls.poll_replica() else {
        panic!("the changed state");
    };
    let changed: super::replica::CallSnapshot = serde_json::from_slice(&state).expect("JSON");
    assert_eq!(changed.b.remote_cseq, 2);
    assert_eq!(changed.a.local_cseq, snapshot.a.local_cseq + 1);
    let a_bye = sent[0].1.clone();
    assert_eq!(a_bye.header_str(&HeaderName::CallId), Some("a-leg-1"));
    let sent = layer.from(
        0,
        &String::from_utf8(response_to(&a_bye, 200, None, None).to_bytes()).expect("utf-8"),
    );
    assert_eq!(summary(&sent), [format!("{TEAMS} 200")]);
    assert_eq!(layer.state(), None);
    assert_eq!(
        layer.calls.poll_replica(),
        Some(super::replica::Replica::Remove {
            id: "a-leg-1".into()
        })
    );
}

#[test]
fn a_call_cancelled_before_the_callee_rang_cancels_at_its_first_provisional() {
    let mut layer = Layer::new();
    let sent = layer.from(0, INVITE);
    let b_invite = sent_to(&sent, TEAMS, "INVITE").clone();
    let cancel = INVITE
        .replace("INVITE sip:", "CANCEL sip:")
        .replace("1 INVITE", "1 CANCEL");
    let sent = layer.from(0, &cancel);
    // The CANCEL is answered 200 and the INVITE 487; nothing goes to the callee yet (RFC 3261
    // §9.1: a CANCEL waits for a provisional response).
    assert_eq!(
        summary(&sent),
        [format!("{CORE} 200"), format!("{CORE} 487")]
    );
    assert_eq!(
        layer.state(),
        Some(CallState::Cancelled { cancel_sent: false })
    );
    let sent = layer.from(1, &teams_answer(&b_invite, 180));
    assert_eq!(summary(&sent), [format!("{TEAMS} CANCEL")]);
    assert_eq!(
        layer.state(),
        Some(CallState::Cancelled { cancel_sent: true })
    );
    let sent = layer.from(1, &teams_answer(&b_invite, 487));
    assert_eq!(summary(&sent), [format!("{TEAMS} ACK")]);
    assert_eq!(layer.state(), None);
}

#[test]
fn a_callee_that_never_answers_gets_the_caller_a_408() {
    let mut layer = Layer::new();
    layer.from(0, INVITE);
    // Timer A retransmits the INVITE; Timer B (64 × T1 = 32 s) gives up.
    let sent = layer.wait(1);
    assert_eq!(summary(&sent), [format!("{TEAMS} INVITE")]);
    let sent = layer.wait(32);
    assert!(
        summary(&sent).contains(&format!("{CORE} 408")),
        "{:?}",
        summary(&sent)
    );
    assert_eq!(layer.state(), None);
    assert_eq!(layer.calls.stats().calls_failed, 1);
}

#[test]
fn a_call_steps_through_its_states() {
    let answered = CallState::Answered { at: Instant::now() };
    // Rings, then the caller cancels: the CANCEL goes at once.
    let (state, cancel_now) = CallState::Calling.provisional();
    assert_eq!((state, cancel_now), (CallState::Proceeding, false));
    assert!(state.rang());
    assert_eq!(
        state.cancel(),
        (CallState::Cancelled { cancel_sent: true }, true)
    );
    // Cancelled before any provisional: the CANCEL waits for the first one (RFC 3261 §9.1).
    let (state, cancel_now) = CallState::Calling.cancel();
    assert_eq!(
        (state, cancel_now),
        (CallState::Cancelled { cancel_sent: false }, false)
    );
    assert!(state.is_cancelled() && !state.rang());
    assert_eq!(
        state.provisional(),
        (CallState::Cancelled { cancel_sent: true }, true)
    );
    // Later provisionals change nothing.
    let sent = CallState::Cancelled { cancel_sent: true };
    assert_eq!(sent.provisional(), (sent, false));
    assert_eq!(
        CallState::Proceeding.provisional(),
        (CallState::Proceeding, false)
    );
    assert_eq!(answered.provisional(), (answered, false));
    assert!(!answered.rang() && !answered.is_cancelled());
}

#[test]
fn retarget_keeps_user_and_params() {
    let peer = Peer {
        listener: 0,
        transport: crate::config::Transport::Tcp,
        addr: "127.0.0.1:5080".parse().unwrap(),
        conn: None,
    };
    assert_eq!(
        retarget(
            "sip:+15550100@example.com;user=phone;transport=udp",
            "127.0.0.1",
            &peer
        ),
        "sip:+15550100@127.0.0.1:5080;user=phone;transport=tcp"
    );
    assert_eq!(
        retarget("tel:+15550100", "sip.pstnhub.example", &peer),
        "sip:+15550100@sip.pstnhub.example:5080;user=phone;transport=tcp"
    );
}

#[test]
fn a_contact_takes_another_host_keeping_user_port_and_parameters() {
    use super::build::with_contact_host;
    assert_eq!(
        with_contact_host(
            "<sip:+15550100@10.0.0.1:5061;transport=tls>",
            "t1.sbc.example"
        ),
        "<sip:+15550100@t1.sbc.example:5061;transport=tls>"
    );
    assert_eq!(
        with_contact_host("<sip:10.0.0.1:5060>", "t1.sbc.example"),
        "<sip:t1.sbc.example:5060>"
    );
    assert_eq!(
        with_contact_host(
            "<sip:+1@[2001:db8::1]:5061;transport=tls>",
            "t1.sbc.example"
        ),
        "<sip:+1@t1.sbc.example:5061;transport=tls>"
    );
    assert_eq!(with_contact_host("garbage", "x"), "garbage");
}

#[test]
fn numbers_become_e164_toward_a_trunk_that_takes_nothing_else() {
    let plan = crate::config::E164 {
        country_code: "49".into(),
        trunk_prefix: "0".into(),
        international_prefix: "00".into(),
    };
    assert_eq!(
        plan.normalize("030-1234.56").as_deref(),
        Some("+4930123456")
    );
    assert_eq!(plan.normalize("0044201234").as_deref(), Some("+44201234"));
    assert_eq!(plan.normalize("+15550100").as_deref(), Some("+15550100"));
    assert_eq!(plan.normalize("1234"), None, "no area code: left alone");
    assert_eq!(plan.normalize("alice"), None);
    let mut invite = Message::parse(&Bytes::from_static(
        b"INVITE sip:0301234@10.0.0.1:5080;transport=tcp SIP/2.0\r\nFrom: \"A\" <sip:00441234@core.example>;tag=1\r\nTo: <tel:0301234>\r\nP-Asserted-Identity: <sip:alice@core.example>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
    ))
    .expect("invite");
    super::build::numbers_to_e164(&mut invite, &plan);
    let text = String::from_utf8_lossy(&invite.to_bytes()).into_owned();
    assert!(
        text.starts_with("INVITE sip:+49301234@10.0.0.1:5080;transport=tcp;user=phone SIP/2.0"),
        "{text}"
    );
    assert!(
        text.contains("From: \"A\" <sip:+441234@core.example>;tag=1"),
        "{text}"
    );
    assert!(text.contains("To: <tel:+49301234>"), "{text}");
    assert!(
        text.contains("P-Asserted-Identity: <sip:alice@core.example>"),
        "{text}"
    );
}

#[test]
fn an_sdp_too_big_for_the_limit_loses_candidates_then_codecs_from_the_end() {
    let offer = include_str!("../../tests/data/sdp/teams-offer.sdp");
    let text = format!(
        "INVITE sip:+4930987654@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: trim\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        offer.len()
    );
    let msg = Message::parse(&Bytes::from(text)).expect("valid");
    let size = msg.to_bytes().len();
    let codecs_of = |msg: &Message| -> Vec<String> {
        let sdp = Sdp::parse(&msg.body).expect("sdp");
        sdp.media()[0]
            .codecs()
            .into_iter()
            .map(|c| c.name)
            .collect()
    };

    // Room enough: nothing goes.
    let mut untouched = msg.clone();
    assert_eq!(
        super::offer_answer::trim_to_fit(&mut untouched, size),
        (0, 0)
    );

    // A little less: the two candidates are enough.
    let mut trimmed = msg.clone();
    assert_eq!(
        super::offer_answer::trim_to_fit(&mut trimmed, size - 50),
        (2, 0)
    );
    assert!(!String::from_utf8_lossy(&trimmed.body).contains("a=candidate"));

    // Much less: codecs go from the end of the audio list (video has only its first).
    let mut trimmed = msg.clone();
    let (candidates, codecs) = super::offer_answer::trim_to_fit(&mut trimmed, size - 200);
    assert_eq!(candidates, 2);
    assert!(codecs > 0);
    assert!(trimmed.to_bytes().len() <= size - 200);
    let kept = codecs_of(&trimmed);
    assert_eq!(kept[0], "SILK", "the first codec stays: {kept:?}");
    assert!(kept.iter().any(|c| c == "telephone-event"), "{kept:?}");
    assert!(kept.iter().any(|c| c == "G722"), "{kept:?}");
    assert_eq!(kept.len(), 10 - codecs, "{kept:?}");

    // Impossible: everything removable goes, and the message stays as small as it can.
    let mut trimmed = msg;
    super::offer_answer::trim_to_fit(&mut trimmed, 500);
    assert_eq!(codecs_of(&trimmed), ["SILK", "telephone-event", "CN", "CN"]);
}
