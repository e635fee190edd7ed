//! Call state shared in Redis (the `cluster` section), end to end: the real `bridgehead`
//! binary, SIPp calls from the core to Teams, and a Redis server the test starts (Debian's
//! `redis-server`), read with the `redis` crate as another instance would.

mod common;

use common::http::cdr_lines;
use common::http::{request, sample};
use common::redis_server::Redis;
use common::sipp::{core_to_teams, far_end_args, scenario, wait_listening, Sipp, Transport};
use common::{free_udp_port, media_range_of, scratch_dir, Sbc};
use std::time::{Duration, Instant};

/// The core-to-Teams profile with a cluster section on Redis at `redis_port`, and the admin
/// server.
fn profile(redis_port: u16) -> String {
    let cluster = format!(
        "cluster:\n  redis: redis://127.0.0.1:{redis_port}/\n  name: test\n  instance: one\n  \
         heartbeat_ms: 200\n  dead_after_ms: 1000\n  state_ttl: 30\n  sync_ms: 50\n"
    );
    let profile =
        common::core_teams_profile(&cluster, "", "").replace("{script}", &common::default_script());
    format!("{profile}admin:\n  address: 127.0.0.1:{{admin}}\n")
}

/// The ids in instance `one`'s set of calls.
fn calls_in_redis(redis: &Redis) -> Vec<String> {
    calls_of(redis, "one")
}

/// The ids in `instance`'s set of calls.
fn calls_of(redis: &Redis, instance: &str) -> Vec<String> {
    let mut connection = redis.connection().expect("redis");
    redis::cmd("SMEMBERS")
        .arg(format!("bridgehead:test:calls:{instance}"))
        .query(&mut connection)
        .expect("SMEMBERS")
}

/// Waits (up to 30 s) until both far ends ended, every call of theirs successful.
fn both_succeed(caller: &mut Sipp, callee: &mut Sipp) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let (caller_status, callee_status) = (caller.wait(deadline), callee.wait(deadline));
    let context = format!("{}\n{}", caller.report(), callee.report());
    assert_eq!(
        (caller_status, callee_status),
        (Some(0), Some(0)),
        "{context}"
    );
}

/// Waits (up to 10 s) until `ready` holds.
fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn answered_calls_state_is_in_redis_while_they_last_with_the_heartbeat() {
    let dir = scratch_dir("cluster");
    let redis = Redis::start(&dir, free_udp_port());
    let sbc = Sbc::start(&profile(redis.port));
    let (mut callee, mut caller) =
        core_to_teams(&sbc, &dir, ("callee", 3), ("caller", 3, &["-d", "3000"]));
    until("three calls in Redis", || calls_in_redis(&redis).len() == 3);
    let mut connection = redis.connection().expect("redis");
    // One call's state, as another instance reads it.
    let id = calls_in_redis(&redis).remove(0);
    let key = format!("bridgehead:test:call:one:{id}");
    let state: String = redis::cmd("GET")
        .arg(&key)
        .query(&mut connection)
        .expect("GET");
    let state: serde_json::Value = serde_json::from_str(&state).expect("JSON");
    assert_eq!(state["format"], 1, "{state}");
    assert_eq!(state["id"], id.as_str());
    assert_eq!(
        (state["ingress"].as_str(), state["egress"].as_str()),
        (Some("core"), Some("teams"))
    );
    assert_eq!(
        state["a"]["call_id"],
        id.as_str(),
        "the A leg is the caller's dialog"
    );
    assert_eq!(state["a"]["listener"], "core");
    assert_eq!(state["b"]["listener"], "teams");
    assert_ne!(
        state["b"]["call_id"], state["a"]["call_id"],
        "B-leg has its own Call-ID"
    );
    for leg in ["a", "b"] {
        assert!(
            state[leg]["remote_tag"]
                .as_str()
                .is_some_and(|t| !t.is_empty()),
            "{state}"
        );
        assert!(
            state[leg]["remote_target"]
                .as_str()
                .is_some_and(|t| t.starts_with("sip:")),
            "{state}"
        );
    }
    assert_eq!(
        state["b"]["local_cseq"], state["b"]["invite_cseq"],
        "{state}"
    );
    assert!(state["answered_unix_ms"]
        .as_u64()
        .is_some_and(|t| t > 1_700_000_000_000));
    // It lives for state_ttl unless refreshed; the heartbeat for dead_after_ms.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query(&mut connection)
        .expect("PTTL");
    assert!((1..=30_000).contains(&ttl), "{ttl}");
    let beat: String = redis::cmd("GET")
        .arg("bridgehead:test:instance:one")
        .query(&mut connection)
        .expect("heartbeat");
    assert!(beat.contains("\"calls\""), "{beat}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg("bridgehead:test:instance:one")
        .query(&mut connection)
        .expect("PTTL");
    assert!((1..=1000).contains(&ttl), "{ttl}");
    both_succeed(&mut caller, &mut callee);
    // Ended calls' state goes.
    until("no call left in Redis", || {
        calls_in_redis(&redis).is_empty()
    });
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("bridgehead:test:call:one:*")
        .query(&mut connection)
        .expect("KEYS");
    assert!(left.is_empty(), "{left:?}");
    let text = request(sbc.port("admin"), "GET", "/metrics", None).body;
    assert_eq!(
        sample(&text, "bridgehead_cluster_redis_up"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "bridgehead_cluster_calls"), Some(0.0));
    assert!(sample(&text, "bridgehead_cluster_state_writes_total").is_some_and(|n| n >= 6.0));
}

#[test]
fn a_redis_outage_fails_no_call_and_the_state_is_written_again_when_it_returns() {
    let dir = scratch_dir("cluster-outage");
    let port = free_udp_port();
    let redis = Redis::start(&dir, port);
    let sbc = Sbc::start(&profile(port));
    // 20 calls, 10 a second, each 10 s long: all up between 2 s and 10 s.
    let (mut callee, mut caller) = core_to_teams(
        &sbc,
        &dir,
        ("callee", 20),
        ("caller", 20, &["-r", "10", "-d", "10000"]),
    );
    until("calls in Redis", || !calls_in_redis(&redis).is_empty());
    redis.kill();
    let admin = sbc.port("admin");
    let metrics = || request(admin, "GET", "/metrics", None).body;
    until("the outage counted", || {
        let text = metrics();
        sample(&text, "bridgehead_cluster_redis_up") == Some(0.0)
            && sample(&text, "bridgehead_cluster_redis_outages_total") == Some(1.0)
    });
    // Calls go on meanwhile; once every call is up, Redis comes back (empty, as after a
    // crash without persistence) and gets every live call's state again.
    std::thread::sleep(Duration::from_millis(1500));
    let redis = Redis::start(&dir, port);
    until("every live call written again", || {
        let text = metrics();
        let live = sample(&text, "bridgehead_cluster_calls").unwrap_or(0.0);
        sample(&text, "bridgehead_cluster_redis_up") == Some(1.0)
            && live == 20.0
            && calls_in_redis(&redis).len() == 20
    });
    // No failed call.
    both_succeed(&mut caller, &mut callee);
    until("no call left in Redis", || {
        calls_in_redis(&redis).is_empty()
    });
    let text = metrics();
    assert!(sample(&text, "bridgehead_cluster_redis_errors_total").is_some_and(|n| n >= 1.0));
    assert_eq!(
        sample(&text, "bridgehead_calls_failed_total"),
        Some(0.0),
        "{text}"
    );
}

/// Instance `instance` of the cluster on Redis at `redis_port` (any other than `one` takes
/// `one` over), with media anchored from port `media`, two shards, CDRs in `cdr`.
fn instance_profile(redis_port: u16, instance: &str, media: u16, cdr: &std::path::Path) -> String {
    let takes_over = if instance == "one" { "[]" } else { "[one]" };
    let top = format!(
        "shards: 2\ncluster:\n  redis: redis://127.0.0.1:{redis_port}/\n  name: test\n  \
         instance: {instance}\n  heartbeat_ms: 200\n  dead_after_ms: 1000\n  sync_ms: 50\n  \
         takes_over: {takes_over}\nmedia:\n  address: 127.0.0.1\n  ports: {media}-{}\ncdr:\n  path: {}\n",
        media + 199,
        cdr.display()
    );
    let profile =
        common::core_teams_profile(&top, "", "").replace("{script}", &common::default_script());
    format!("{profile}admin:\n  address: 127.0.0.1:{{admin}}\n")
}

#[test]
fn a_dead_instances_answered_calls_are_carried_on_by_the_next_one() {
    takeover("two", "caller");
}

#[test]
fn an_instance_killed_and_started_again_carries_its_calls_on() {
    takeover("one", "callee");
}

/// Instance `one` carries 20 answered calls and is killed; instance `second` (another, or
/// `one` started again) takes its place on its ports and carries the calls on, to a
/// re-INVITE and a BYE from `side` (`caller` or `callee`).
fn takeover(second: &str, side: &str) {
    let dir = scratch_dir("cluster-takeover");
    let redis = Redis::start(&dir, free_udp_port());
    let media = media_range_of(200);
    let (cdr_one, cdr_two) = (dir.join("one.cdr"), dir.join("two.cdr"));
    let mut first = Sbc::start(&instance_profile(redis.port, "one", media, &cdr_one));
    // 20 calls up through the first instance, held 8 s; then each caller re-INVITEs and
    // hangs up, through whichever instance carries the call by then.
    let calls = 20;
    let (caller_scenario, callee_scenario) = match side {
        "caller" => ("caller_takeover", "callee_takeover"),
        _ => ("caller_takeover_uas", "callee_takeover_uac"),
    };
    let held = ["-d", "8000"];
    let callee_args = far_end_args(
        first.port("teams_peer"),
        calls,
        &["-sf", &scenario(callee_scenario), held[0], held[1]],
    );
    let mut callee = Sipp::start(&dir, "callee", &callee_args);
    wait_listening(first.port("teams_peer"), Transport::Udp);
    let mut args = far_end_args(
        first.port("softswitch"),
        calls,
        &["-r", "20", held[0], held[1]],
    );
    args.extend(["-sf".to_string(), scenario(caller_scenario)]);
    args.push(format!("127.0.0.1:{}", first.port("core")));
    let mut caller = Sipp::start(&dir, "caller", &args);
    let deadline = Instant::now() + Duration::from_secs(10);
    while calls_of(&redis, "one").len() != calls as usize {
        assert!(
            Instant::now() < deadline,
            "not every call answered and in Redis: {:?}\n{}\n{}\n{}",
            calls_of(&redis, "one"),
            caller.report(),
            callee.report(),
            first.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The first instance dies at once; the second takes its place on the same addresses.
    first.signal("KILL");
    first.wait_exit(Instant::now() + Duration::from_secs(5));
    let survivor = Sbc::start_on_ports_of(
        &instance_profile(redis.port, second, media, &cdr_two),
        &first,
    );
    let admin = survivor.port("admin");
    let metrics = || request(admin, "GET", "/metrics", None).body;
    until("the calls taken over", || {
        let text = metrics();
        sample(&text, "bridgehead_cluster_calls_taken_over_total") == Some(f64::from(calls))
            && sample(&text, "bridgehead_media_streams") == Some(f64::from(calls))
    });
    // Their state is now the second instance's; the first's is gone.
    until("the state moved", || {
        let moved = second == "one" || calls_of(&redis, "one").is_empty();
        calls_of(&redis, second).len() == calls as usize && moved
    });
    // Media flows through the same ports, now the second instance's: a packet into the
    // caller-facing port of one call, and one into its callee-facing port, each reach the
    // other side from Bridgehead's port (the relay latches onto the test's sockets).
    let id = calls_of(&redis, second).remove(0);
    let mut connection = redis.connection().expect("redis");
    let state: String = redis::cmd("GET")
        .arg(format!("bridgehead:test:call:{second}:{id}"))
        .query(&mut connection)
        .expect("GET");
    let state: serde_json::Value = serde_json::from_str(&state).expect("JSON");
    let port = |side: &str| state["streams"][0][side]["local"].as_u64().expect("port") as u16;
    let (toward_caller, toward_callee) = (port("a"), port("b"));
    let caller_media = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let callee_media = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    for socket in [&caller_media, &callee_media] {
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
    }
    let rtp = [0x80u8, 0, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 0xff];
    caller_media
        .send_to(&rtp, ("127.0.0.1", toward_caller))
        .expect("send");
    std::thread::sleep(Duration::from_millis(100));
    callee_media
        .send_to(&rtp, ("127.0.0.1", toward_callee))
        .expect("send");
    let mut buf = [0u8; 64];
    let (len, from) = caller_media
        .recv_from(&mut buf)
        .expect("RTP relayed by the second instance");
    assert_eq!((len, from.port()), (rtp.len(), toward_caller));
    let deadline = Instant::now() + Duration::from_secs(40);
    let (caller_status, callee_status) = (caller.wait(deadline), callee.wait(deadline));
    let context = format!(
        "{}\n{}\n{}",
        caller.report(),
        callee.report(),
        survivor.log()
    );
    assert_eq!(
        caller_status,
        Some(0),
        "re-INVITE and BYE after the takeover\n{context}"
    );
    assert_eq!(callee_status, Some(0), "callee\n{context}");
    // One CDR per call, by the instance that saw it end.
    let lines = cdr_lines(&cdr_two, calls as usize);
    assert_eq!(lines.len(), calls as usize, "{lines:?}");
    let mut ids: Vec<&str> = lines.iter().filter_map(|c| c["call_id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), calls as usize, "each call once");
    assert!(
        lines
            .iter()
            .all(|c| c["status"] == 200 && c["ended_by"] == side),
        "{lines:?}"
    );
    assert!(std::fs::read_to_string(&cdr_one)
        .unwrap_or_default()
        .is_empty());
    until("no call left in Redis", || {
        calls_of(&redis, second).is_empty()
    });
}

/// The answered calls an instance has up now.
fn answered(sbc: &Sbc) -> f64 {
    let text = request(sbc.port("admin"), "GET", "/metrics", None).body;
    sample(&text, "bridgehead_calls_active{state=\"answered\"}").unwrap_or(0.0)
}

#[test]
fn a_trunks_max_calls_holds_across_two_instances() {
    let dir = scratch_dir("cluster-limits");
    let redis = Redis::start(&dir, free_udp_port());
    let limit = 50;
    let template = |instance: &str| {
        let top = format!(
            "cluster:\n  redis: redis://127.0.0.1:{}/\n  name: test\n  instance: {instance}\n  \
             heartbeat_ms: 200\n  dead_after_ms: 1000\n",
            redis.port
        );
        let profile = common::core_teams_profile(&top, "", "")
            .replace("{script}", &common::default_script())
            .replace(
                "    route: teams\n",
                &format!("    route: teams\n    max_calls: {limit}\n"),
            );
        format!("{profile}admin:\n  address: 127.0.0.1:{{admin}}\n")
    };
    let (one, two) = (Sbc::start(&template("one")), Sbc::start(&template("two")));
    // 40 calls into each instance, 20 a second each, held 10 s: 80 offered for 50 seats.
    let offered = ["-r", "20", "-d", "10000"];
    let calls_one = core_to_teams(&one, &dir, ("callee", 0), ("caller", 40, &offered));
    let calls_two = core_to_teams(&two, &dir, ("callee", 0), ("caller", 40, &offered));
    // Every call offered has been answered or refused after 3 s.
    std::thread::sleep(Duration::from_secs(3));
    let up = (answered(&one), answered(&two));
    // Each instance admits against its own calls plus what the other said it had at its
    // last heartbeat: over the limit by at most what the other admitted meanwhile (20 calls
    // a second for 200 ms, 4).
    let total = up.0 + up.1;
    eprintln!("answered: {up:?}, {total} of {limit} seats");
    assert!(
        (f64::from(limit)..=f64::from(limit) + 8.0).contains(&total),
        "{up:?}\n{}\n{}",
        one.log(),
        two.log()
    );
    assert!(up.0 > 0.0 && up.1 > 0.0, "both took calls: {up:?}");
    drop((calls_one, calls_two));
}

/// An OPTIONS from `socket` to `port` on loopback, with `user_agent`: whether an answer came
/// within 500 ms.
fn answered_options(socket: &std::net::UdpSocket, port: u16, user_agent: &str) -> bool {
    let local = socket.local_addr().expect("addr");
    let request = format!(
        "OPTIONS sip:ping@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@127.0.0.2>;tag=p\r\nTo: <sip:ping@127.0.0.1>\r\nCall-ID: ban-{}@127.0.0.2\r\nCSeq: 1 OPTIONS\r\nUser-Agent: {user_agent}\r\nContent-Length: 0\r\n\r\n",
        free_udp_port(),
        free_udp_port()
    );
    socket
        .send_to(request.as_bytes(), ("127.0.0.1", port))
        .expect("send");
    let mut buf = [0u8; 2048];
    socket.recv_from(&mut buf).is_ok()
}

#[test]
fn a_source_banned_by_one_instance_is_dropped_by_the_other() {
    let dir = scratch_dir("cluster-bans");
    let redis = Redis::start(&dir, free_udp_port());
    // The second instance bans nobody itself (`ban_after: 0`; a stranger's requests are
    // strikes): what it drops, the first banned.
    let template = |instance: &str, ban_after: u32| {
        let top = format!(
            "cluster:\n  redis: redis://127.0.0.1:{}/\n  name: test\n  instance: {instance}\n  \
             heartbeat_ms: 200\n  dead_after_ms: 1000\nadmission:\n  ban_after: {ban_after}\n  \
             ban_seconds: 60\n",
            redis.port
        );
        common::core_teams_profile(&top, "", "").replace("{script}", &common::default_script())
    };
    let (one, two) = (
        Sbc::start(&template("one", 2)),
        Sbc::start(&template("two", 0)),
    );
    // A stranger on 127.0.0.2 (the trunks' peers are on 127.0.0.1): answered at first.
    let stranger = std::net::UdpSocket::bind("127.0.0.2:0").expect("127.0.0.2");
    stranger
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    for _ in 0..3 {
        assert!(answered_options(&stranger, two.port("core"), "probe"));
    }
    // Two scanner requests to the first instance ban it there...
    for _ in 0..2 {
        assert!(!answered_options(
            &stranger,
            one.port("core"),
            "friendly-scanner"
        ));
    }
    // ...and, within a heartbeat or two, at the second instance too.
    let deadline = Instant::now() + Duration::from_secs(5);
    while answered_options(&stranger, two.port("core"), "probe") {
        assert!(
            Instant::now() < deadline,
            "never banned by the second instance"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut connection = redis.connection().expect("redis");
    let banned: Vec<String> = redis::cmd("ZRANGE")
        .arg("bridgehead:test:bans")
        .arg(0)
        .arg(-1)
        .query(&mut connection)
        .expect("ZRANGE");
    assert_eq!(banned, ["127.0.0.2"]);
}

#[test]
fn an_instance_started_without_redis_says_so_once_and_writes_once_redis_comes() {
    let dir = scratch_dir("cluster-no-redis");
    let port = free_udp_port();
    let sbc = Sbc::start(&profile(port));
    let admin = sbc.port("admin");
    let metrics = || request(admin, "GET", "/metrics", None).body;
    // (The warning's words, not the debug line's, which RUST_LOG=debug would add.)
    let warning = "cluster: Redis unreachable (";
    // Tried every second: the failures are counted, the warning logged once.
    until("three attempts", || {
        sample(&metrics(), "bridgehead_cluster_redis_errors_total").is_some_and(|n| n >= 3.0)
    });
    assert_eq!(sbc.log().matches(warning).count(), 1, "{}", sbc.log());
    let text = metrics();
    assert_eq!(sample(&text, "bridgehead_cluster_redis_up"), Some(0.0));
    // Redis comes: reached, said once, and heartbeats written.
    let redis = Redis::start(&dir, port);
    until("Redis reached", || {
        sample(&metrics(), "bridgehead_cluster_redis_up") == Some(1.0)
            && sbc.log().contains("cluster: Redis reached")
    });
    let mut connection = redis.connection().expect("redis");
    until("the heartbeat", || {
        redis::cmd("EXISTS")
            .arg("bridgehead:test:instance:one")
            .query::<bool>(&mut connection)
            .unwrap_or(false)
    });
    assert_eq!(sbc.log().matches(warning).count(), 1);
}
