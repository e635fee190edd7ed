//! End to end with SIPp as both far ends: a SIPp caller and a SIPp callee on loopback, the
//! real `bridgehead` binary between them, over UDP and TCP, in both directions (operator core
//! to Teams and back). Every flow asserts what each far end actually received: its own dialog
//! identifiers only (topology hidden), `X-MS-SBC` on everything toward Teams, nothing toward
//! the core.
//!
//! SIPp must be installed (Debian `sip-tester`; `tests/run.sh` installs it): these tests fail,
//! they do not skip, without it.

mod common;

use common::sipp::{far_end_args, scenario, wait_listening, Sipp, Traced, Transport};
use common::{free_udp_port, scratch_dir, Sbc};
use std::time::{Duration, Instant};

/// Both trunks use `{transport}`; the core trunk's peer (the softswitch) listens on
/// `{softswitch}`, the Teams trunk's peer on `{teams_peer}`.
const PROFILE: &str = "\
listeners:
  - name: core
    address: 127.0.0.1:{core}
    transports: [udp, tcp]
  - name: teams
    address: 127.0.0.1:{teams}
    transports: [udp, tcp]
trunks:
  - name: core
    listener: core
    peers: [\"127.0.0.1:{softswitch}\"]
    transport: TRANSPORT
    script: {script}
    route: teams
  - name: teams
    listener: teams
    peers: [\"127.0.0.1:{teams_peer}\"]
    transport: TRANSPORT
    script: {script}
    route: core
";

/// Which side places the call.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Direction {
    /// The softswitch calls into listener `core`; the call leaves toward Teams.
    CoreToTeams,
    /// Teams calls into listener `teams`; the call leaves toward the softswitch.
    TeamsToCore,
}

/// One call flow: which scenarios, how many calls, how fast.
struct Flow {
    caller: &'static str,
    callee: &'static str,
    transport: Transport,
    direction: Direction,
    calls: u32,
    rate: u32,
    /// The profile's `shards` (0: the default).
    shards: usize,
    /// How long SIPp pauses where its scenario says `<pause />` (the caller talks).
    talk_ms: u32,
    /// Lines added to the Teams trunk of the profile.
    teams_extra: &'static str,
}

impl Flow {
    fn new(caller: &'static str, callee: &'static str) -> Flow {
        Flow {
            caller,
            callee,
            transport: Transport::Udp,
            direction: Direction::CoreToTeams,
            calls: 1,
            rate: 10,
            shards: 0,
            talk_ms: 200,
            teams_extra: "",
        }
    }

    /// The caller talks `ms` before it hangs up.
    fn talking(mut self, ms: u32) -> Flow {
        self.talk_ms = ms;
        self
    }

    /// Adds `lines` to the Teams trunk.
    fn teams_trunk(mut self, lines: &'static str) -> Flow {
        self.teams_extra = lines;
        self
    }

    fn over(mut self, transport: Transport) -> Flow {
        self.transport = transport;
        self
    }

    fn teams_calls(mut self) -> Flow {
        self.direction = Direction::TeamsToCore;
        self
    }

    /// Runs the SBC with `shards` shards: with more shards than the kernel's choice of socket
    /// can match, most messages reach a shard that does not own their call and are handed over.
    fn shards(mut self, shards: usize) -> Flow {
        self.shards = shards;
        self
    }

    fn load(mut self, calls: u32, rate: u32) -> Flow {
        self.calls = calls;
        self.rate = rate;
        self
    }

    /// Runs the flow against a fresh SBC, asserts both SIPp ends succeeded and that topology
    /// hiding and the X-MS-SBC rule held, and returns what each end saw.
    fn run(&self) -> Outcome {
        let profile = format!(
            "shards: {}\n{}{}",
            self.shards,
            PROFILE.replace("TRANSPORT", self.transport.profile_name()),
            self.teams_extra
        );
        let talk_s = u64::from(self.talk_ms / 1000);
        let sbc = Sbc::start(&profile);
        let (listener, callee_port) = match self.direction {
            Direction::CoreToTeams => (sbc.port("core"), sbc.port("teams_peer")),
            Direction::TeamsToCore => (sbc.port("teams"), sbc.port("softswitch")),
        };
        let dir = scratch_dir("sipp");
        let caller_port = free_udp_port();
        let common_args = |port: u16| -> Vec<String> {
            [
                "-i",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                self.transport.sipp_mode(),
                "-m",
                &self.calls.to_string(),
                "-d",
                &self.talk_ms.to_string(),
                "-timeout",
                &format!("{}s", 30 + talk_s),
                "-timeout_error",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        let mut callee_args = vec!["-sf".to_string(), scenario(self.callee)];
        callee_args.extend(common_args(callee_port));
        let mut callee = Sipp::start(&dir, "callee", &callee_args);
        wait_listening(callee_port, self.transport);

        let mut caller_args = vec![
            "-sf".to_string(),
            scenario(self.caller),
            format!("127.0.0.1:{listener}"),
            "-r".to_string(),
            self.rate.to_string(),
        ];
        caller_args.extend(common_args(caller_port));
        let mut caller = Sipp::start(&dir, "caller", &caller_args);

        let deadline = Instant::now() + Duration::from_secs(40 + talk_s);
        let caller_status = caller.wait(deadline);
        let callee_status = callee.wait(deadline);
        let context = || {
            format!(
                "{}\n{}\n--- sbc log ---\n{}",
                caller.report(),
                callee.report(),
                sbc.log()
            )
        };
        assert_eq!(caller_status, Some(0), "caller failed\n{}", context());
        assert_eq!(callee_status, Some(0), "callee failed\n{}", context());
        assert!(sbc.is_running(), "the SBC died\n{}", context());

        let outcome = Outcome {
            caller: caller.trace(),
            callee: callee.trace(),
            caller_port,
            callee_port,
            listener,
        };
        outcome.assert_topology_hidden();
        let (teams_side, core_side) = match self.direction {
            Direction::CoreToTeams => (&outcome.callee, &outcome.caller),
            Direction::TeamsToCore => (&outcome.caller, &outcome.callee),
        };
        for message in teams_side.iter().filter(|m| m.received) {
            let value = message
                .header("X-MS-SBC")
                .unwrap_or_else(|| panic!("no X-MS-SBC toward Teams in:\n{}", message.text));
            assert!(value.starts_with("Bridgehead/SBC/"), "X-MS-SBC: {value}");
        }
        for message in core_side.iter().filter(|m| m.received) {
            assert!(
                message.header("X-MS-SBC").is_none(),
                "X-MS-SBC toward the core in:\n{}",
                message.text
            );
        }
        outcome
    }
}

/// What the two far ends exchanged with the SBC.
struct Outcome {
    caller: Vec<Traced>,
    callee: Vec<Traced>,
    caller_port: u16,
    callee_port: u16,
    listener: u16,
}

impl Outcome {
    fn callee_got(&self) -> impl Iterator<Item = &Traced> {
        self.callee.iter().filter(|m| m.received)
    }

    fn caller_got(&self) -> impl Iterator<Item = &Traced> {
        self.caller.iter().filter(|m| m.received)
    }

    /// The first `method` request the callee got.
    fn callee_request(&self, method: &str) -> &Traced {
        self.callee_got()
            .find(|m| m.is_request(method))
            .unwrap_or_else(|| panic!("the callee got no {method}"))
    }

    /// The first `status` response the caller got.
    fn caller_response(&self, status: u16) -> &Traced {
        self.caller_got()
            .find(|m| m.is_response(status))
            .unwrap_or_else(|| panic!("the caller got no {status}"))
    }

    /// Nothing of one side's Call-ID, tags, Via, Contact or address reaches the other; no
    /// Record-Route or Route reaches either; the SBC's own Via and Contact are what each side
    /// sees.
    fn assert_topology_hidden(&self) {
        let caller_call_ids: Vec<&str> = self
            .caller
            .iter()
            .filter(|m| !m.received)
            .filter_map(|m| m.header("Call-ID"))
            .collect();
        let callee_address = format!("127.0.0.1:{}", self.callee_port);
        let caller_address = format!("127.0.0.1:{}", self.caller_port);
        assert!(self.callee_got().count() > 0, "the callee got nothing");
        assert!(self.caller_got().count() > 0, "the caller got nothing");
        for message in self.callee_got() {
            let text = &message.text;
            let call_id = message.header("Call-ID").expect("Call-ID");
            assert!(
                !caller_call_ids.contains(&call_id),
                "caller's Call-ID reached the callee:\n{text}"
            );
            assert!(
                !text.contains(&caller_address),
                "caller's address reached the callee:\n{text}"
            );
            assert!(
                !text.contains("SIPpTag00"),
                "caller's tag reached the callee:\n{text}"
            );
            assert!(message.header("Record-Route").is_none(), "{text}");
            assert!(message.header("Route").is_none(), "{text}");
            if message.first_line().ends_with("SIP/2.0") {
                let vias = message.headers("Via");
                assert_eq!(vias.len(), 1, "one Via, the SBC's:\n{text}");
                assert!(
                    !vias[0].contains(&format!(":{}", self.listener)),
                    "the callee sees the SBC's other listener:\n{text}"
                );
            }
        }
        for message in self.caller_got() {
            let text = &message.text;
            assert!(
                !text.contains(&callee_address),
                "callee's address reached the caller:\n{text}"
            );
            assert!(
                !text.contains("SIPpTag01"),
                "callee's tag reached the caller:\n{text}"
            );
            assert!(message.header("Record-Route").is_none(), "{text}");
            if let Some(contact) = message.header("Contact") {
                assert!(
                    contact.contains(&format!("127.0.0.1:{}", self.listener)),
                    "the caller's Contact is the SBC's listener:\n{text}"
                );
            }
        }
    }
}

#[test]
fn basic_call_core_to_teams_over_udp() {
    let outcome = Flow::new("caller", "callee").run();
    let invite = outcome.callee_request("INVITE");
    assert_eq!(invite.header("Subject"), Some("Bridgehead e2e"));
    assert!(
        invite.body().contains("m=audio"),
        "the SDP offer crossed: {}",
        invite.text
    );
    assert!(outcome.callee_got().any(|m| m.is_request("ACK")));
    assert!(outcome.callee_got().any(|m| m.is_request("BYE")));
    assert!(outcome
        .caller_got()
        .any(|m| m.is_response(200) && m.body().contains("m=audio")));
}

#[test]
fn basic_call_teams_to_core_over_udp() {
    let outcome = Flow::new("caller", "callee").teams_calls().run();
    assert!(outcome.callee_got().any(|m| m.is_request("BYE")));
}

#[test]
fn basic_call_both_ways_over_tcp() {
    Flow::new("caller", "callee").over(Transport::Tcp).run();
    Flow::new("caller", "callee")
        .over(Transport::Tcp)
        .teams_calls()
        .run();
}

#[test]
fn callee_hangs_up() {
    for flow in [
        Flow::new("caller_hungup", "callee_hangs_up"),
        Flow::new("caller_hungup", "callee_hangs_up")
            .over(Transport::Tcp)
            .teams_calls(),
    ] {
        let outcome = flow.run();
        assert!(outcome.caller_got().any(|m| m.is_request("BYE")));
        assert!(outcome.callee_got().any(|m| m.is_response(200)));
    }
}

#[test]
fn cancel_before_answer() {
    for transport in [Transport::Udp, Transport::Tcp] {
        let outcome = Flow::new("caller_cancel", "callee_cancel")
            .over(transport)
            .run();
        assert!(outcome.callee_got().any(|m| m.is_request("CANCEL")));
        assert!(outcome.caller_got().any(|m| m.is_response(487)));
    }
}

#[test]
fn busy_and_not_found_reach_the_caller() {
    let busy = Flow::new("caller_rejected", "callee_busy").run();
    assert!(busy.caller_got().any(|m| m.is_response(486)));
    assert!(busy.callee_got().any(|m| m.is_request("ACK")));
    let not_found = Flow::new("caller_rejected", "callee_not_found")
        .over(Transport::Tcp)
        .teams_calls()
        .run();
    assert!(not_found.caller_got().any(|m| m.is_response(404)));
}

#[test]
fn a_caller_requiring_100rel_gets_a_reliable_180_from_a_callee_without_it() {
    for transport in [Transport::Udp, Transport::Tcp] {
        let outcome = Flow::new("caller_100rel", "callee_slow_answer")
            .over(transport)
            .run();
        let invite = outcome.callee_request("INVITE");
        assert_eq!(
            invite.header("Supported"),
            Some("100rel, timer"),
            "{}",
            invite.text
        );
        assert!(invite.header("Require").is_none(), "{}", invite.text);
        assert!(
            !outcome.callee_got().any(|m| m.is_request("PRACK")),
            "the caller's PRACK stays at Bridgehead"
        );
        let ringing = outcome.caller_response(180);
        assert_eq!(
            ringing.header("Require"),
            Some("100rel"),
            "{}",
            ringing.text
        );
        assert!(ringing.header("RSeq").is_some(), "{}", ringing.text);
    }
}

#[test]
fn a_reliable_180_is_pracked_by_bridgehead_and_reaches_a_plain_caller_as_a_plain_180() {
    let outcome = Flow::new("caller", "callee_reliable").run();
    let prack = outcome.callee_request("PRACK");
    assert!(
        prack.header("RAck").is_some_and(|r| r.starts_with("3000 ")),
        "{}",
        prack.text
    );
    let ringing = outcome.caller_response(180);
    assert!(ringing.header("Require").is_none(), "{}", ringing.text);
    assert!(ringing.header("RSeq").is_none(), "{}", ringing.text);
}

#[test]
fn with_100rel_on_both_legs_each_leg_is_pracked_on_its_own() {
    let outcome = Flow::new("caller_100rel", "callee_reliable")
        .over(Transport::Tcp)
        .teams_calls()
        .run();
    assert_eq!(
        outcome
            .callee_got()
            .filter(|m| m.is_request("PRACK"))
            .count(),
        1
    );
    let ringing = outcome.caller_response(180);
    assert_eq!(
        ringing.header("Require"),
        Some("100rel"),
        "{}",
        ringing.text
    );
    assert_ne!(
        ringing.header("RSeq"),
        Some("3000"),
        "the caller's RSeq is Bridgehead's"
    );
}

#[test]
fn three_forks_ring_the_second_answers_and_the_third_is_acked_and_hung_up() {
    for transport in [Transport::Udp, Transport::Tcp] {
        let outcome = Flow::new("caller", "callee_forks").over(transport).run();
        // The callee scenario checked each ACK and BYE's To-tag and Request-URI; the caller
        // saw one early dialog and one answer.
        let tos: std::collections::BTreeSet<&str> = outcome
            .caller_got()
            .filter(|m| m.is_response(180) || m.is_response(200))
            .filter_map(|m| m.header("To"))
            .collect();
        assert_eq!(tos.len(), 1, "one dialog toward the caller: {tos:?}");
        assert_eq!(
            outcome.callee_got().filter(|m| m.is_request("BYE")).count(),
            2,
            "the third fork and, at the end, the second"
        );
    }
}

#[test]
fn an_emergency_invite_with_sdp_and_pidf_lo_reaches_the_callee_with_both_parts() {
    let outcome = Flow::new("caller_multipart", "callee").run();
    let invite = outcome.callee_request("INVITE");
    assert_eq!(
        invite.header("Content-Type"),
        Some("multipart/mixed;boundary=unique-boundary-1"),
        "{}",
        invite.text
    );
    let body = invite.body();
    assert!(body.contains("Content-Type: application/sdp"), "{body}");
    assert!(body.contains("m=audio"), "{body}");
    assert!(
        body.contains("<gml:pos>52.5200 13.4050</gml:pos>"),
        "{body}"
    );
    assert!(body.contains("Content-ID: <location-"), "{body}");
    assert!(body.trim_end().ends_with("--unique-boundary-1--"), "{body}");
}

#[test]
fn a_reliable_180_after_a_reliable_183_goes_on_once_the_183_is_pracked() {
    let outcome = Flow::new("caller_100rel_183_180", "callee_reliable_183_180").run();
    let rseq = |code: u16| -> u32 {
        let response = outcome
            .caller_got()
            .find(|m| m.is_response(code))
            .unwrap_or_else(|| panic!("the caller got no {code}"));
        response
            .header("RSeq")
            .and_then(|r| r.trim().parse().ok())
            .unwrap_or_else(|| panic!("no RSeq in\n{}", response.text))
    };
    assert_eq!(
        rseq(180),
        rseq(183) + 1,
        "the caller's RSeq space is Bridgehead's, in order"
    );
    let progress = outcome.caller_response(183);
    assert!(progress.body().contains("m=audio"), "early SDP crossed");
    assert_eq!(
        outcome
            .callee_got()
            .filter(|m| m.is_request("PRACK"))
            .count(),
        2,
        "Bridgehead PRACKed the callee's 183 and 180"
    );
}

#[test]
fn a_callees_offer_in_a_reliable_183_is_answered_in_the_callers_prack_and_crosses_in_bridgeheads() {
    for transport in [Transport::Udp, Transport::Tcp] {
        let outcome = Flow::new("caller_prack_answer", "callee_early_offer")
            .over(transport)
            .run();
        // The scenarios checked the 183's offer and the PRACK's answer at each end.
        let invite = outcome.callee_request("INVITE");
        assert!(
            invite.body().is_empty(),
            "a delayed offer:\n{}",
            invite.text
        );
        let prack = outcome.callee_request("PRACK");
        assert!(prack.body().contains("m=audio"), "{}", prack.text);
        let ok = outcome
            .caller_got()
            .find(|m| m.is_response(200) && m.header("CSeq") == Some("1 INVITE"))
            .expect("the caller's 200");
        assert!(
            ok.body().is_empty(),
            "the offer/answer was done:\n{}",
            ok.text
        );
    }
}

#[test]
fn an_update_before_the_answer_crosses_into_the_callees_early_dialog_and_its_answer_comes_back() {
    for transport in [Transport::Udp, Transport::Tcp] {
        let outcome = Flow::new("caller_early_update", "callee_early_update")
            .over(transport)
            .run();
        // The callee scenario checked the UPDATE's offer and its early dialog's To-tag; the
        // caller the 200's answer.
        let update = outcome.callee_request("UPDATE");
        assert!(update.header("Contact").is_some(), "{}", update.text);
        let prack = outcome.callee_request("PRACK");
        assert_eq!(
            update.header("To"),
            prack.header("To"),
            "the same early dialog"
        );
    }
}

/// The Teams trunk asks for 90 s session timers (the shortest there is, RFC 4028 §4).
const TEAMS_TIMER: &str = "    session_timer:\n      expires: 90\n";

#[test]
fn bridgehead_refreshes_a_session_at_half_its_interval() {
    let started = Instant::now();
    let outcome = Flow::new("caller", "callee_refreshed")
        .teams_trunk(TEAMS_TIMER)
        .talking(47_000)
        .run();
    // The callee scenario checked the INVITE's and the UPDATE's Session-Expires.
    let update = outcome.callee_request("UPDATE");
    assert_eq!(update.header("Supported"), Some("timer"), "{}", update.text);
    assert!(update.body().is_empty(), "a refresh carries no SDP");
    assert!(started.elapsed() >= Duration::from_secs(45));
    assert!(
        !outcome.caller_got().any(|m| m.is_request("UPDATE")),
        "the caller's leg has no timer of its own"
    );
}

#[test]
fn a_call_whose_refresh_fails_ends_with_bye_on_both_legs_and_a_reason() {
    let outcome = Flow::new("caller_hungup", "callee_refresh_fails")
        .over(Transport::Tcp)
        .teams_trunk(TEAMS_TIMER)
        .talking(60_000)
        .run();
    let bye = outcome
        .caller_got()
        .find(|m| m.is_request("BYE"))
        .expect("the caller's BYE");
    assert_eq!(
        bye.header("Reason"),
        Some("SIP ;cause=408 ;text=\"Session refresh failed\""),
        "{}",
        bye.text
    );
}

#[test]
fn hold_and_resume() {
    for transport in [Transport::Udp, Transport::Tcp] {
        let outcome = Flow::new("caller_hold", "callee_hold")
            .over(transport)
            .run();
        let offers: Vec<&str> = outcome
            .callee_got()
            .filter(|m| m.is_request("INVITE"))
            .map(|m| m.body())
            .collect();
        assert_eq!(offers.len(), 3, "initial INVITE, hold, resume");
        assert!(offers[1].contains("a=sendonly"), "{}", offers[1]);
        assert!(offers[2].contains("a=sendrecv"), "{}", offers[2]);
        let answers: Vec<&str> = outcome
            .caller_got()
            .filter(|m| {
                m.is_response(200) && m.header("CSeq").is_some_and(|c| c.ends_with("INVITE"))
            })
            .map(|m| m.body())
            .collect();
        assert_eq!(answers.len(), 3);
        assert!(answers[1].contains("a=recvonly"), "{}", answers[1]);
        // The caller numbers its INVITEs 1, 20, 30; the B-leg keeps its own CSeq space.
        let cseqs: Vec<&str> = outcome
            .callee_got()
            .filter(|m| m.is_request("INVITE"))
            .filter_map(|m| m.header("CSeq"))
            .collect();
        assert_eq!(cseqs, ["1 INVITE", "2 INVITE", "3 INVITE"]);
    }
}

/// Three shards: each SIPp end's datagrams land on one shard's socket (the kernel picks by
/// source), so about two thirds of the messages are handed to the shard that owns the call.
#[test]
fn five_hundred_calls_at_100_per_second_across_three_shards() {
    for transport in [Transport::Udp, Transport::Tcp] {
        let outcome = Flow::new("caller", "callee")
            .over(transport)
            .shards(3)
            .load(500, 100)
            .run();
        let invites: std::collections::HashSet<&str> = outcome
            .callee_got()
            .filter(|m| m.is_request("INVITE"))
            .filter_map(|m| m.header("Call-ID"))
            .collect();
        assert_eq!(
            invites.len(),
            500,
            "500 distinct B-leg calls over {transport:?}"
        );
        let byes_answered = outcome
            .caller_got()
            .filter(|m| m.is_response(200) && m.header("CSeq") == Some("5 BYE"))
            .count();
        assert_eq!(byes_answered, 500);
    }
}

/// Rules that send every transfer to the `pstn` trunk.
const TRANSFER_RULES: &str =
    "return { on_refer = function(call, req) return call:route('pstn') end }\n";

/// A blind transfer with SIPp far ends from the Asterisk testsuite: the transferor (Teams) is
/// the callee (`Direction::CoreToTeams`) or the caller (`Direction::TeamsToCore`) of a call
/// with the core's party; it REFERs the call to a target on a third trunk (`pstn`, by
/// `on_refer`), takes its two NOTIFYs and hangs up; the core's party and the target then talk
/// until one of them hangs up. Returns the traces of the transferor and the target.
fn blind_transfer(direction: Direction) -> (Vec<Traced>, Vec<Traced>) {
    let dir = scratch_dir("transfer");
    let script = dir.join("transfer.lua");
    std::fs::write(&script, TRANSFER_RULES).expect("rules");
    let profile = format!(
        "listeners:
  - name: core
    address: 127.0.0.1:{{core}}
  - name: teams
    address: 127.0.0.1:{{teams}}
  - name: pstn
    address: 127.0.0.1:{{pstn}}
trunks:
  - name: core
    listener: core
    peers: [\"127.0.0.1:{{softswitch}}\"]
    script: {script}
    route: teams
  - name: teams
    listener: teams
    peers: [\"127.0.0.1:{{teams_peer}}\"]
    script: {script}
    route: core
    refer: terminate
  - name: pstn
    listener: pstn
    peers: [\"127.0.0.1:{{target}}\"]
    script: {script}
",
        script = script.display()
    );
    let sbc = Sbc::start(&profile);
    let args = |port: u16, extra: &[&str]| far_end_args(port, 1, extra);
    let mut target = Sipp::start(&dir, "target", &args(sbc.port("target"), &["-sn", "uas"]));
    wait_listening(sbc.port("target"), Transport::Udp);
    // The transferor names Bridgehead as [remote_ip]:[remote_port] in its REFER.
    let teams = format!("127.0.0.1:{}", sbc.port("teams"));
    let core = format!("127.0.0.1:{}", sbc.port("core"));
    let transfer = ["-key", "transfer_target", "+4930555000", "-d", "500"];
    let (mut transferor, mut party) = match direction {
        Direction::CoreToTeams => {
            let mut transferor_args = args(sbc.port("teams_peer"), &transfer);
            transferor_args.extend(
                [
                    &teams,
                    "-sf",
                    &scenario("transferor_blind_uas"),
                    "-s",
                    "+4930987654",
                ]
                .map(String::from),
            );
            let transferor = Sipp::start(&dir, "transferor", &transferor_args);
            wait_listening(sbc.port("teams_peer"), Transport::Udp);
            let mut caller_args = args(sbc.port("softswitch"), &["-d", "3000"]);
            caller_args.extend(["-sn", "uac", &core, "-s", "+4930987654"].map(String::from));
            (transferor, Sipp::start(&dir, "party", &caller_args))
        }
        Direction::TeamsToCore => {
            let mut callee_args = args(sbc.port("softswitch"), &["-d", "3000"]);
            callee_args.extend(["-sf", &scenario("callee_hangs_up")].map(String::from));
            let callee = Sipp::start(&dir, "party", &callee_args);
            wait_listening(sbc.port("softswitch"), Transport::Udp);
            let mut transferor_args = args(sbc.port("teams_peer"), &transfer);
            transferor_args.extend(
                [
                    &teams,
                    "-sf",
                    &scenario("transferor_blind_uac"),
                    "-s",
                    "+4930123456",
                ]
                .map(String::from),
            );
            (Sipp::start(&dir, "transferor", &transferor_args), callee)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let statuses = [
        party.wait(deadline),
        transferor.wait(deadline),
        target.wait(deadline),
    ];
    let context = format!(
        "{}\n{}\n{}\n--- sbc log ---\n{}",
        party.report(),
        transferor.report(),
        target.report(),
        sbc.log()
    );
    assert_eq!(statuses, [Some(0); 3], "a far end failed\n{context}");
    (transferor.trace(), target.trace())
}

/// The transferor heard 100 Trying, then 200 OK, in sipfrag NOTIFYs of its dialog; the
/// target got the call with the transferor's Referred-By, and a BYE at the end.
fn assert_transferred(transferor: &[Traced], target: &[Traced]) {
    let notifies: Vec<String> = transferor
        .iter()
        .filter(|m| m.received && m.is_request("NOTIFY"))
        .map(|m| m.body().trim().to_string())
        .collect();
    assert_eq!(notifies, ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"]);
    let target_got: Vec<&Traced> = target.iter().filter(|m| m.received).collect();
    let invite = target_got
        .iter()
        .find(|m| m.is_request("INVITE"))
        .expect("the target got an INVITE");
    assert!(
        invite.first_line().starts_with("INVITE sip:+4930555000@"),
        "{}",
        invite.text
    );
    assert!(
        invite
            .header("Referred-By")
            .is_some_and(|v| v.contains("sipp@")),
        "{}",
        invite.text
    );
    assert!(target_got.iter().any(|m| m.is_request("BYE")));
}

#[test]
fn a_transfer_by_the_callee_reaches_the_target_and_the_caller_stays_in_the_call() {
    let (transferor, target) = blind_transfer(Direction::CoreToTeams);
    assert_transferred(&transferor, &target);
}

#[test]
fn a_transfer_by_the_caller_reaches_the_target_and_the_callee_stays_in_the_call() {
    let (transferor, target) = blind_transfer(Direction::TeamsToCore);
    assert_transferred(&transferor, &target);
}

/// An attended transfer with SIPp far ends from the Asterisk testsuite: Teams (the
/// transferor, two SIPp peers twinned over 3PCC) is the caller (`Direction::TeamsToCore`) or
/// the callee (`Direction::CoreToTeams`, holding the core's party) of a call with the core's
/// party, consults a second core party in a call of its own, and REFERs the first call with
/// Replaces naming the consultation. Bridgehead joins the two core parties, hangs up the
/// consultation and (as callee) Teams' old dialog; then the first party hangs up and the
/// BYE reaches the second one. Returns the traces of the transferor, the consultation leg,
/// and the core's parties (one trace for both when Teams called them).
fn attended_transfer(direction: Direction) -> [Vec<Traced>; 3] {
    let dir = scratch_dir("attended");
    let base = common::media_range();
    let profile = format!(
        "shards: 1
media:
  address: 127.0.0.1
  ports: {base}-{}
listeners:
  - name: core
    address: 127.0.0.1:{{core}}
  - name: teams
    address: 127.0.0.1:{{teams}}
trunks:
  - name: core
    listener: core
    peers: [\"127.0.0.1:{{softswitch}}\"]
    script: {script}
    route: teams
  - name: teams
    listener: teams
    peers: [\"127.0.0.1:{{teams_peer}}\", \"127.0.0.1:{{consult_peer}}\"]
    script: {script}
    route: core
    refer: terminate
    transferor_bye: 1
",
        base + 9,
        script = common::default_script()
    );
    let sbc = Sbc::start(&profile);
    let teams = format!("127.0.0.1:{}", sbc.port("teams"));
    let core = format!("127.0.0.1:{}", sbc.port("core"));
    let twin_port = free_udp_port();
    let twin = format!("127.0.0.1:{twin_port}");
    // The core's parties: the consulted one (and, when Teams calls, the first one too).
    let calls_to_core = match direction {
        Direction::TeamsToCore => 2,
        Direction::CoreToTeams => 1,
    };
    let mut parties = Sipp::start(
        &dir,
        "parties",
        &far_end_args(
            sbc.port("softswitch"),
            calls_to_core,
            &["-sf", &scenario("party_transferred_uas")],
        ),
    );
    wait_listening(sbc.port("softswitch"), Transport::Udp);
    // The transferor's two legs name Bridgehead as [remote_ip]:[remote_port] (the UAS too, in
    // its re-INVITE and REFER); they are twins over 3PCC, the consultation leg listening for
    // its twin's command first.
    let teams_leg = |port: u16, name: &str| {
        let mut args = far_end_args(port, 1, &["-3pcc", &twin, "-sf", &scenario(name)]);
        args.push(teams.clone());
        args
    };
    let consult_args = teams_leg(sbc.port("consult_peer"), "transferor_attended_consult");
    let mut consult = Sipp::start(&dir, "consult", &consult_args);
    wait_listening(twin_port, Transport::Tcp);
    let (mut transferor, mut caller) = match direction {
        Direction::TeamsToCore => {
            let transferor_args = teams_leg(sbc.port("teams_peer"), "transferor_attended_uac");
            (Sipp::start(&dir, "transferor", &transferor_args), None)
        }
        Direction::CoreToTeams => {
            let transferor_args = teams_leg(sbc.port("teams_peer"), "transferor_attended_uas");
            let transferor = Sipp::start(&dir, "transferor", &transferor_args);
            wait_listening(sbc.port("teams_peer"), Transport::Udp);
            let mut caller_args =
                far_end_args(free_udp_port(), 1, &["-d", "2000", "-s", "+4930987654"]);
            caller_args.extend(["-sf", &scenario("party_held_uac"), &core].map(String::from));
            (transferor, Some(Sipp::start(&dir, "caller", &caller_args)))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    let statuses = [
        transferor.wait(deadline),
        consult.wait(deadline),
        parties.wait(deadline),
        caller.as_mut().map_or(Some(0), |c| c.wait(deadline)),
    ];
    let context = format!(
        "{}\n{}\n{}\n{}\n--- sbc log ---\n{}",
        transferor.report(),
        consult.report(),
        parties.report(),
        caller.as_ref().map(|c| c.report()).unwrap_or_default(),
        sbc.log()
    );
    assert_eq!(statuses, [Some(0); 4], "a far end failed\n{context}");
    let mut core_trace = parties.trace();
    if let Some(caller) = &caller {
        core_trace.extend(caller.trace());
    }
    [transferor.trace(), consult.trace(), core_trace]
}

/// The transferor heard 100 Trying then 200 OK in its dialog; the consultation leg got
/// Bridgehead's BYE; the core's parties never saw Replaces, and the consulted party got the
/// first party's BYE.
fn assert_joined([transferor, consult, core]: &[Vec<Traced>; 3]) {
    let notifies: Vec<String> = transferor
        .iter()
        .filter(|m| m.received && m.is_request("NOTIFY"))
        .map(|m| m.body().trim().to_string())
        .collect();
    assert_eq!(notifies, ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"]);
    assert!(consult.iter().any(|m| m.received && m.is_request("BYE")));
    let core_got: Vec<&Traced> = core.iter().filter(|m| m.received).collect();
    assert!(core_got.iter().all(|m| m.header("Replaces").is_none()));
    let byes = core_got.iter().filter(|m| m.is_request("BYE")).count();
    assert_eq!(byes, 1, "the consulted party hears its new partner hang up");
}

#[test]
fn an_attended_transfer_by_the_caller_joins_its_two_core_parties() {
    let traces = attended_transfer(Direction::TeamsToCore);
    assert_joined(&traces);
}

#[test]
fn an_attended_transfer_by_the_callee_joins_the_caller_with_the_consulted_party() {
    let traces = attended_transfer(Direction::CoreToTeams);
    assert_joined(&traces);
    // The caller Teams held was taken off hold by Bridgehead.
    let [_, _, core] = &traces;
    let offers: Vec<&str> = core
        .iter()
        .filter(|m| m.received && m.is_request("INVITE"))
        .map(|m| m.body())
        .collect();
    assert_eq!(
        offers.len(),
        3,
        "the consulted party's call, the hold, the resume"
    );
    assert!(offers.iter().any(|o| o.contains("a=sendonly")));
    assert!(offers.last().is_some_and(|o| o.contains("a=sendrecv")));
}

/// The profile of the drain tests: core to Teams, `drain_timeout` as given.
fn drain_profile(timeout: u32) -> String {
    common::core_teams_profile(&format!("drain_timeout: {timeout}\n"), "", "")
}

/// `calls` calls from the core to Teams, answered and acknowledged; both SIPp ends then wait
/// for a BYE. Returns the caller and the callee.
fn calls_up(sbc: &Sbc, dir: &std::path::Path, calls: u32) -> (Sipp, Sipp) {
    let core = format!("127.0.0.1:{}", sbc.port("core"));
    let callee = Sipp::start(
        dir,
        "callee",
        &far_end_args(sbc.port("teams_peer"), calls, &["-sf", &scenario("callee")]),
    );
    wait_listening(sbc.port("teams_peer"), Transport::Udp);
    let mut caller_args = far_end_args(
        sbc.port("softswitch"),
        calls,
        &["-r", "50", "-sf", &scenario("caller_hungup")],
    );
    caller_args.push(core);
    let caller = Sipp::start(dir, "caller", &caller_args);
    let up = Instant::now() + Duration::from_secs(15);
    while callee
        .trace()
        .iter()
        .filter(|m| m.received && m.is_request("ACK"))
        .count()
        < calls as usize
    {
        assert!(
            Instant::now() < up,
            "the calls never came up\n{}",
            sbc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (caller, callee)
}

/// Graceful drain: SIGTERM with 50 calls up. New calls and OPTIONS get 503 with Retry-After at
/// once, the calls in progress go on until `drain_timeout`, then both SIPp ends get a BYE with
/// a Reason, and Bridgehead exits with 0.
#[test]
fn sigterm_drains_fifty_calls_then_exits_cleanly() {
    let dir = scratch_dir("drain");
    let mut sbc = Sbc::start(&drain_profile(2));
    let core = format!("127.0.0.1:{}", sbc.port("core"));
    let (mut caller, mut callee) = calls_up(&sbc, &dir, 50);
    let signalled = Instant::now();
    sbc.signal("TERM");
    // Once the signal is taken (OPTIONS get 503, so peers fail over), a new call is refused
    // with 503 and Retry-After while the others go on.
    let taken = (0..100).any(|_| sbc.options("core") == 503);
    assert!(taken, "OPTIONS never got 503\n{}", sbc.log());
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let local = probe.local_addr().expect("addr");
    let invite = format!(
        "INVITE sip:+4930987654@{core} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKdrain1\r\nMax-Forwards: 70\r\nFrom: <sip:+4930123456@127.0.0.1>;tag=d\r\nTo: <sip:+4930987654@127.0.0.1>\r\nCall-ID: drain-probe@127.0.0.1\r\nCSeq: 1 INVITE\r\nContact: <sip:probe@{local}>\r\nContent-Length: 0\r\n\r\n"
    );
    probe.send_to(invite.as_bytes(), &core).expect("send");
    let refused = common::receive(&probe, Duration::from_secs(1)).unwrap_or_default();
    assert!(
        refused.starts_with("SIP/2.0 503"),
        "{refused}\n{}",
        sbc.log()
    );
    assert!(refused.contains("Retry-After: "), "{refused}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let statuses = [caller.wait(deadline), callee.wait(deadline)];
    let context = format!(
        "{}\n{}\n--- sbc log ---\n{}",
        caller.report(),
        callee.report(),
        sbc.log()
    );
    assert_eq!(statuses, [Some(0); 2], "a far end failed\n{context}");
    assert_eq!(sbc.wait_exit(deadline), Some(0), "exit code\n{context}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "the calls ran until the drain timeout"
    );
    for (name, trace) in [("caller", caller.trace()), ("callee", callee.trace())] {
        let byes: Vec<&Traced> = trace
            .iter()
            .filter(|m| m.received && m.is_request("BYE"))
            .collect();
        assert_eq!(byes.len(), 50, "{name}: a BYE per call");
        assert!(
            byes.iter()
                .all(|m| m.header("Reason").is_some_and(|r| r.contains("cause=503"))),
            "{name}: BYE with Reason"
        );
    }
    let log = sbc.log();
    assert!(
        log.contains("drain timeout: ending the calls still up"),
        "{log}"
    );
    assert!(
        log.contains("drained: every shard is without calls"),
        "{log}"
    );
}

/// SIGINT drains like SIGTERM; a second SIGINT stops at once, calls or not.
#[test]
fn a_second_sigint_stops_at_once() {
    let dir = scratch_dir("interrupt");
    let mut sbc = Sbc::start(&drain_profile(60));
    let (_caller, _callee) = calls_up(&sbc, &dir, 1);
    sbc.signal("INT");
    let taken = (0..100).any(|_| sbc.options("core") == 503);
    assert!(taken, "OPTIONS never got 503\n{}", sbc.log());
    assert_eq!(
        sbc.wait_exit(Instant::now() + Duration::from_millis(500)),
        None
    );
    sbc.signal("INT");
    let exit = sbc.wait_exit(Instant::now() + Duration::from_secs(5));
    assert_eq!(exit, Some(0), "{}", sbc.log());
    assert!(sbc.log().contains("SIGINT again: stopping now"));
}

/// A flood from one source at 20× its call rate (`calls_per_source: 10`, SIPp at 200 calls a
/// second for 10 s) while a well-behaved trunk alongside places 500 calls at 50 a second: the
/// flood's excess gets 503 with Retry-After and at most its rate reaches the callee; every
/// call of the well-behaved trunk completes.
#[test]
fn a_flooding_source_is_held_to_its_rate_and_a_trunk_alongside_is_untouched() {
    let dir = scratch_dir("flood");
    let sbc = Sbc::start(
        "listeners:
  - name: core
    address: 127.0.0.1:{core}
  - name: flood
    address: 127.0.0.1:{flood}
  - name: teams
    address: 127.0.0.1:{teams}
trunks:
  - name: core
    listener: core
    peers: [\"127.0.0.1:{softswitch}\"]
    script: {script}
    route: teams
  - name: flood
    listener: flood
    peers: [\"127.0.0.1:{flooder}\"]
    script: {script}
    route: teams
    calls_per_source: 10
  - name: teams
    listener: teams
    peers: [\"127.0.0.1:{teams_peer}\"]
    script: {script}
    route: core
",
    );
    // As many calls as come: stopped by its PID at the end.
    let callee_args = far_end_args(sbc.port("teams_peer"), 0, &["-sf", &scenario("callee")]);
    let callee = Sipp::start(&dir, "callee", &callee_args);
    wait_listening(sbc.port("teams_peer"), Transport::Udp);
    let mut flood_args = far_end_args(
        sbc.port("flooder"),
        2000,
        &["-r", "200", "-d", "200", "-sf", &scenario("caller_flood")],
    );
    flood_args.push(format!("127.0.0.1:{}", sbc.port("flood")));
    let mut flooder = Sipp::start(&dir, "flooder", &flood_args);
    let mut good_args = far_end_args(
        sbc.port("softswitch"),
        500,
        &["-r", "50", "-d", "200", "-sf", &scenario("caller")],
    );
    good_args.push(format!("127.0.0.1:{}", sbc.port("core")));
    let mut good = Sipp::start(&dir, "good", &good_args);
    let deadline = Instant::now() + Duration::from_secs(40);
    let statuses = [good.wait(deadline), flooder.wait(deadline)];
    let context = format!(
        "{}\n{}\n--- sbc log ---\n{}",
        good.report(),
        flooder.report(),
        sbc.log()
    );
    assert_eq!(statuses, [Some(0); 2], "a far end failed\n{context}");
    let flood_got = flooder.trace();
    let refused = flood_got
        .iter()
        .filter(|m| m.received && m.is_response(503))
        .collect::<Vec<_>>();
    assert!(
        refused.len() >= 1800,
        "{} refused\n{context}",
        refused.len()
    );
    assert!(refused.iter().all(|m| m.header("Retry-After") == Some("1")));
    let admitted = callee
        .trace()
        .iter()
        .filter(|m| m.received && m.is_request("INVITE"))
        .filter(|m| m.header("From").is_some_and(|f| f.contains("flood@")))
        .count();
    // 10 a second for about 10 s, plus the bucket's first second.
    assert!(
        (50..=130).contains(&admitted),
        "{admitted} flood calls admitted"
    );
}

/// Overload: a rule that burns a few milliseconds of CPU per new call caps the shard at well
/// under 200 calls a second (less in a debug build); SIPp offers 500 a second for 10 s. The
/// shard refuses the new calls it cannot take in time (their INVITE waited past
/// `queue_delay_ms`) with 503 and Retry-After at once and keeps the ones it has: every call
/// SIPp places is either refused or completes (its BYE answered), none fails; memory stays
/// bounded; a call right after the flood goes through. `bench/overload.sh` prints the figures
/// (goodput against the measured capacity, setup times, recovery) beside Kamailio.
#[test]
fn an_overloaded_shard_refuses_new_calls_early_and_loses_none_it_took() {
    let dir = scratch_dir("overload");
    let script = dir.join("heavy.lua");
    std::fs::write(
        &script,
        "return { on_invite = function(call, req) local x = 0; for i = 1, 600000 do x = x + i end end }\n",
    )
    .expect("rules");
    let top =
        "shards: 1\nlimits:\n  script_instructions: 10000000\noverload:\n  queue_delay_ms: 200\n";
    let profile =
        common::core_teams_profile(top, "", "").replace("{script}", &script.display().to_string());
    let sbc = Sbc::start(&profile);
    let core = format!("127.0.0.1:{}", sbc.port("core"));
    let callee_args = far_end_args(
        sbc.port("teams_peer"),
        0,
        &["-sf", &scenario("callee_patient")],
    );
    let callee = Sipp::start(&dir, "callee", &callee_args);
    wait_listening(sbc.port("teams_peer"), Transport::Udp);
    let mut flood_args = far_end_args(
        sbc.port("softswitch"),
        5000,
        &["-r", "500", "-d", "1000", "-sf", &scenario("caller_flood")],
    );
    flood_args.push(core.clone());
    let mut flooder = Sipp::start(&dir, "flooder", &flood_args);
    let deadline = Instant::now() + Duration::from_secs(45);
    let status = flooder.wait(deadline);
    let context = format!("{}\n--- sbc log ---\n{}", flooder.report(), sbc.log());
    assert_eq!(status, Some(0), "a call failed\n{context}");
    let got = flooder.trace();
    // The calls (by Call-ID) that got a response matching `answer`.
    let calls_with = |answer: &dyn Fn(&Traced) -> bool| {
        got.iter()
            .filter(|m| m.received && answer(m))
            .filter_map(|m| m.header("Call-ID"))
            .collect::<std::collections::HashSet<_>>()
    };
    let cseq_ends =
        |m: &Traced, method: &str| m.header("CSeq").is_some_and(|c| c.ends_with(method));
    let refused = calls_with(&|m| m.is_response(503));
    let answered = calls_with(&|m| m.is_response(200) && cseq_ends(m, "INVITE"));
    let hung_up = calls_with(&|m| m.is_response(200) && cseq_ends(m, "BYE"));
    assert!(
        !refused.is_empty() && !answered.is_empty() && refused.len() + answered.len() == 5000,
        "{} refused, {} answered\n{context}",
        refused.len(),
        answered.len()
    );
    assert!(got
        .iter()
        .filter(|m| m.received && m.is_response(503))
        .all(|m| m.header("Retry-After") == Some("1")));
    // Every call set up ended with its BYE answered.
    assert_eq!(hung_up, answered, "{context}");
    assert!(sbc.log().contains("overloaded=true"), "{context}");
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", sbc.pid()))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    assert!(rss_kib < 400 * 1024, "RSS {rss_kib} KiB");
    // Recovered: the next call goes through.
    let mut after_args = far_end_args(
        sbc.port("softswitch"),
        1,
        &["-d", "200", "-sf", &scenario("caller")],
    );
    after_args.push(core);
    let mut after = Sipp::start(&dir, "after", &after_args);
    let status = after.wait(Instant::now() + Duration::from_secs(10));
    assert_eq!(status, Some(0), "{}\n{}", after.report(), sbc.log());
    drop(callee);
}
