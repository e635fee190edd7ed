//! Call state shared in Redis (the `cluster` section), end to end: the real `bridgehead`
//! binary, SIPp calls from the core to Teams, and a Redis server the test starts (Debian's
//! `redis-server`), read with the `redis` crate as another instance would.

mod common;

use common::http::{request, sample};
use common::redis_server::Redis;
use common::sipp::core_to_teams;
use common::{free_udp_port, scratch_dir, Sbc};
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

/// The ids in the instance's set of calls.
fn calls_in_redis(redis: &Redis) -> Vec<String> {
    let mut connection = redis.connection().expect("redis");
    redis::cmd("SMEMBERS")
        .arg("bridgehead:test:one:calls")
        .query(&mut connection)
        .expect("SMEMBERS")
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
    let key = format!("bridgehead:test:one:call:{id}");
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
    let deadline = Instant::now() + Duration::from_secs(30);
    assert_eq!(
        caller.wait(deadline),
        Some(0),
        "caller\n{}",
        caller.report()
    );
    assert_eq!(
        callee.wait(deadline),
        Some(0),
        "callee\n{}",
        callee.report()
    );
    // Ended calls' state goes.
    until("no call left in Redis", || {
        calls_in_redis(&redis).is_empty()
    });
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("bridgehead:test:one:call:*")
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
    let deadline = Instant::now() + Duration::from_secs(30);
    assert_eq!(
        caller.wait(deadline),
        Some(0),
        "no failed call\n{}",
        caller.report()
    );
    assert_eq!(
        callee.wait(deadline),
        Some(0),
        "callee\n{}",
        callee.report()
    );
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
