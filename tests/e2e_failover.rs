//! A cluster's failover with a moving service address, end to end: two `bridgehead` instances
//! in network namespaces of their own, sharing call state in a Redis server the test starts,
//! and SIPp at both ends of 100 calls streaming RTP (SIPp's `rtp_stream`) through the
//! service address. Instance `one` holds the address and carries the calls; instance `two`
//! runs beside it as a standby, bound to the address before its machine has it
//! (`net.ipv4.ip_nonlocal_bind`, set in its namespace). The test SIGKILLs `one`: `two` must
//! leave the calls alone while the address is not its machine's, then, once the test moves
//! the address to it as keepalived would (the hub's neighbour cache refreshed as keepalived's
//! gratuitous ARP does), carry every call on.
//!
//! The namespaces: `hub` (a bridge, the far ends' and Redis's address 10.77.0.1) and `one`,
//! `two` (10.77.0.11, 10.77.0.12, and the service address 10.77.0.100 on whichever holds it),
//! each joined to the bridge by a veth pair created inside them: nothing of the test touches
//! the host's own network. Needs root and iproute2, as in CI.

mod common;

use common::http::{cdr_lines, request, sample};
use common::netns::{self, inside, ip};
use common::redis_server::Redis;
use common::sipp::{scenario, Sipp};
use common::{scratch_dir, Sbc};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The hub's address: the far ends (SIPp) and Redis.
const HUB: &str = "10.77.0.1";
/// The service address both instances are configured with.
const SERVICE: &str = "10.77.0.100";
const CALLS: usize = 100;
/// The cluster's timing: an instance is dead `DEAD_AFTER_MS` after its last heartbeat, and a
/// survivor looks every `HEARTBEAT_MS`.
const HEARTBEAT_MS: u64 = 250;
const DEAD_AFTER_MS: u64 = 1500;
/// How long each call is held before its re-INVITEs and BYE: all that happens before the
/// takeover happens within it.
const HOLD_MS: u64 = 15_000;

static SITES: AtomicU32 = AtomicU32::new(0);

/// The three namespaces and their links; removed on drop (after the processes in them, which
/// the test drops first).
struct Site {
    hub: String,
    one: String,
    two: String,
}

impl Site {
    fn create() -> Site {
        let id = format!(
            "{}-{}",
            std::process::id(),
            SITES.fetch_add(1, Ordering::Relaxed)
        );
        let site = Site {
            hub: format!("bh-fo-{id}-hub"),
            one: format!("bh-fo-{id}-one"),
            two: format!("bh-fo-{id}-two"),
        };
        for name in [&site.hub, &site.one, &site.two] {
            ip(&["netns", "add", name]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
        }
        let hub = site.hub.as_str();
        ip(&["-n", hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", hub, "addr", "add", &format!("{HUB}/24"), "dev", "br0"]);
        ip(&["-n", hub, "link", "set", "br0", "up"]);
        for (name, address) in [(&site.one, "10.77.0.11"), (&site.two, "10.77.0.12")] {
            let port = if name == &site.one {
                "to-one"
            } else {
                "to-two"
            };
            ip(&[
                "link", "add", "name", port, "netns", hub, "type", "veth", "peer", "name", "eth0",
                "netns", name,
            ]);
            ip(&["-n", hub, "link", "set", port, "master", "br0", "up"]);
            ip(&[
                "-n",
                name,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", name, "link", "set", "eth0", "up"]);
        }
        site
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for name in [&self.hub, &self.one, &self.two] {
            netns::delete(name);
        }
    }
}

/// Instance `instance`'s profile: listeners `core` and `teams` on the service address (and
/// `probe`, on the namespace's loopback, for the harness's readiness check), trunks toward
/// the SIPp far ends on the hub, media on the service address, the cluster on the hub's
/// Redis. `two` takes `one` over.
fn profile(instance: &str, redis_port: u16, cdr: &Path) -> String {
    let takes_over = if instance == "one" { "[]" } else { "[one]" };
    format!(
        "shards: 2
cluster:
  redis: redis://{HUB}:{redis_port}/
  name: failover
  instance: {instance}
  heartbeat_ms: {HEARTBEAT_MS}
  dead_after_ms: {DEAD_AFTER_MS}
  sync_ms: 50
  takes_over: {takes_over}
media:
  address: {SERVICE}
  ports: 20000-21199
cdr:
  path: {cdr}
listeners:
  - name: probe
    address: 127.0.0.1:{{probe}}
    transports: [udp]
  - name: core
    address: {SERVICE}:{{core}}
    transports: [udp]
  - name: teams
    address: {SERVICE}:{{teams}}
    transports: [udp]
trunks:
  - name: core
    listener: core
    peers: [\"{HUB}:{{softswitch}}\"]
    script: {{script}}
    route: teams
  - name: teams
    listener: teams
    peers: [\"{HUB}:{{teams_peer}}\"]
    script: {{script}}
    route: core
admin:
  address: 127.0.0.1:{{admin}}
",
        cdr = cdr.display()
    )
}

/// Every UDP socket of the calling thread's namespace by local port: (bytes waiting to be
/// read, datagrams dropped for a full buffer). SIPp's `rtp_stream` never reads its sockets, so
/// a socket that gets RTP either queues more or drops more: either figure moves.
fn udp_sockets() -> HashMap<u16, (u64, u64)> {
    let table = std::fs::read_to_string("/proc/thread-self/net/udp").expect("/proc/net/udp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
            let queued = u64::from_str_radix(fields.get(4)?.split(':').nth(1)?, 16).ok()?;
            let drops = fields.last()?.parse().ok()?;
            Some((port, (queued, drops)))
        })
        .collect()
}

/// The UDP ports bound on `address` in the calling thread's namespace.
fn bound_on(address: std::net::Ipv4Addr) -> std::collections::HashSet<u16> {
    // /proc/net/udp writes an IPv4 address as the hex of its bytes in the machine's order.
    let hex = format!("{:08X}", u32::from_ne_bytes(address.octets()));
    let table = std::fs::read_to_string("/proc/thread-self/net/udp").expect("/proc/net/udp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (ip, port) = line.split_whitespace().nth(1)?.split_once(':')?;
            (ip == hex).then(|| u16::from_str_radix(port, 16).ok())?
        })
        .collect()
}

/// Of `ports` (SIPp's RTP sockets in the hub), those that got no datagram in half a second.
fn silent_ports(site: &Site, ports: &[u16]) -> Vec<u16> {
    let before = inside(&site.hub, udp_sockets);
    std::thread::sleep(Duration::from_millis(500));
    let after = inside(&site.hub, udp_sockets);
    ports
        .iter()
        .copied()
        .filter(|port| before.get(port) == after.get(port))
        .collect()
}

/// A call's media as instance `instance` wrote it to Redis: (Bridgehead's ports toward the
/// caller and the callee, SIPp's RTP ports at the caller and the callee).
#[derive(Debug, PartialEq)]
struct Media {
    local: (u64, u64),
    remote: (u16, u16),
}

/// The media of every call instance `instance` has in Redis, by call id.
fn media_in_redis(redis: &mut redis::Connection, instance: &str) -> HashMap<String, Media> {
    let ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("bridgehead:failover:calls:{instance}"))
        .query(redis)
        .expect("SMEMBERS");
    ids.into_iter()
        .filter_map(|id| {
            let state: Option<String> = redis::cmd("GET")
                .arg(format!("bridgehead:failover:call:{instance}:{id}"))
                .query(redis)
                .expect("GET");
            let state: serde_json::Value = serde_json::from_str(&state?).expect("JSON");
            let side = |leg: &str| &state["streams"][0][leg];
            let port = |leg: &str| {
                side(leg)["remote"]
                    .as_str()
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                    .map_or(0, |a| a.port())
            };
            let media = Media {
                local: (
                    side("a")["local"].as_u64().unwrap_or(0),
                    side("b")["local"].as_u64().unwrap_or(0),
                ),
                remote: (port("a"), port("b")),
            };
            Some((id, media))
        })
        .collect()
}

/// The metrics of the instance whose admin port is `admin`, in namespace `namespace`.
fn metrics(namespace: &str, admin: u16) -> String {
    inside(namespace, || request(admin, "GET", "/metrics", None).body)
}

#[test]
fn a_survivor_given_the_dead_instances_address_carries_its_100_calls_with_their_media() {
    let site = Site::create();
    let dir = scratch_dir("failover");
    // SIPp's audio: a second of A-law silence, looped for the whole call.
    std::fs::write(dir.join("silence.al"), [0xd5u8; 8000]).expect("audio file");
    // Half the calls to a number whose callee hangs up, half to one whose caller does.
    std::fs::write(
        dir.join("numbers.csv"),
        "SEQUENTIAL\n+4930987654;\n+4930987655;\n",
    )
    .expect("injection file");
    let redis = inside(&site.hub, || Redis::start_on(&dir, 6379, &[HUB]));
    let mut connection = inside(&site.hub, || redis.connection()).expect("redis");
    // The standby binds the service address before its namespace has it.
    inside(&site.two, || {
        std::fs::write("/proc/sys/net/ipv4/ip_nonlocal_bind", "1").expect("ip_nonlocal_bind")
    });
    ip(&[
        "-n",
        &site.one,
        "addr",
        "add",
        &format!("{SERVICE}/32"),
        "dev",
        "eth0",
    ]);
    let (cdr_one, cdr_two) = (dir.join("one.cdr"), dir.join("two.cdr"));
    let mut one = inside(&site.one, || Sbc::start(&profile("one", 6379, &cdr_one)));
    let two = inside(&site.two, || {
        Sbc::start_on_ports_of(&profile("two", 6379, &cdr_two), &one)
    });
    let far_end = |name: &str, rtp: u16, extra: &[String]| {
        let mut args: Vec<String> = ["-i", HUB, "-mp", &rtp.to_string(), "-m"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(CALLS.to_string());
        args.extend(["-timeout", "60s", "-timeout_error"].map(String::from));
        args.extend(extra.iter().cloned());
        inside(&site.hub, || Sipp::start(&dir, name, &args))
    };
    let callee_port = one.port("teams_peer");
    let mut callee = far_end(
        "callee",
        40000,
        &[
            "-p".into(),
            callee_port.to_string(),
            "-sf".into(),
            scenario("callee_failover"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !inside(&site.hub, udp_sockets).contains_key(&callee_port) {
        assert!(Instant::now() < deadline, "SIPp never bound {callee_port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // 100 calls, 50 a second, each held HOLD_MS before the re-INVITEs and BYEs.
    let calls_placed = Instant::now();
    let mut caller = far_end(
        "caller",
        30000,
        &[
            "-p".into(),
            one.port("softswitch").to_string(),
            "-r".into(),
            "50".into(),
            "-d".into(),
            HOLD_MS.to_string(),
            "-inf".into(),
            dir.join("numbers.csv").display().to_string(),
            "-sf".into(),
            scenario("caller_failover"),
            format!("{SERVICE}:{}", one.port("core")),
        ],
    );
    let report = |caller: &Sipp, callee: &Sipp, sbc: &Sbc| {
        format!("{}\n{}\n{}", caller.report(), callee.report(), sbc.log())
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let before = loop {
        let media = media_in_redis(&mut connection, "one");
        if media.len() == CALLS && media.values().all(|m| m.remote.0 > 0 && m.remote.1 > 0) {
            break media;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {CALLS} calls answered and in Redis\n{}",
            media.len(),
            report(&caller, &callee, &one)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // RTP reaches every SIPp socket of every call, both ways, through instance one.
    let sipp_ports: Vec<u16> = before
        .values()
        .flat_map(|m| [m.remote.0, m.remote.1])
        .collect();
    assert_eq!(
        silent_ports(&site, &sipp_ports),
        Vec::<u16>::new(),
        "RTP through instance one"
    );
    // The standby relays with the same driver as the active instance (io_uring where the
    // kernel has it), though the media address was not its machine's at its start.
    let driver = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("bridgehead_media_relay_threads{"))
            .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
    };
    let driver_one = driver(&metrics(&site.one, one.port("admin")));
    assert!(driver_one.is_some());
    assert_eq!(driver(&metrics(&site.two, two.port("admin"))), driver_one);
    // Two, without the address, neither heartbeats nor takes calls over, and says so.
    let log = two.log();
    assert!(
        log.contains("cluster: this machine does not have the address: no heartbeat")
            && log.contains(&format!("missing={SERVICE}")),
        "{log}"
    );
    let alive = |connection: &mut redis::Connection, instance: &str| -> bool {
        redis::cmd("EXISTS")
            .arg(format!("bridgehead:failover:instance:{instance}"))
            .query(connection)
            .expect("EXISTS")
    };
    assert!(alive(&mut connection, "one") && !alive(&mut connection, "two"));
    // Instance one dies. While its address stays on its machine, two leaves its calls alone
    // (a machine without the address cannot carry them: it may be an instance restarting in
    // place), though one's heartbeat expired; and no RTP reaches the far ends.
    one.signal("KILL");
    let killed = Instant::now();
    one.wait_exit(killed + Duration::from_secs(5));
    let deadline = killed + Duration::from_millis(DEAD_AFTER_MS + 3000);
    while alive(&mut connection, "one") {
        assert!(Instant::now() < deadline, "one's heartbeat never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("one's heartbeat gone {:?} after the kill", killed.elapsed());
    // Two looks every HEARTBEAT_MS: over these 500 ms it looked twice at a dead one.
    assert_eq!(
        silent_ports(&site, &sipp_ports).len(),
        sipp_ports.len(),
        "RTP while nobody carries it"
    );
    let admin = two.port("admin");
    let text = metrics(&site.two, admin);
    assert_eq!(
        sample(&text, "bridgehead_cluster_calls_taken_over_total"),
        Some(0.0)
    );
    assert_eq!(media_in_redis(&mut connection, "one").len(), CALLS);
    // The address moves to two: at its next look (every HEARTBEAT_MS) it takes every call
    // over and binds their ports (a second allowed for that, in this debug build on a busy
    // machine).
    let address = format!("{SERVICE}/32");
    ip(&["-n", &site.one, "addr", "del", &address, "dev", "eth0"]);
    ip(&["-n", &site.two, "addr", "add", &address, "dev", "eth0"]);
    // What keepalived's gratuitous ARP does: the hub learns where the address is now.
    ip(&["-n", &site.hub, "neigh", "flush", "to", SERVICE]);
    let moved = Instant::now();
    let bound = Duration::from_millis(HEARTBEAT_MS + 1000);
    loop {
        let text = metrics(&site.two, admin);
        if sample(&text, "bridgehead_cluster_calls_taken_over_total") == Some(CALLS as f64)
            && sample(&text, "bridgehead_media_streams") == Some(CALLS as f64)
        {
            break;
        }
        assert!(
            moved.elapsed() < bound,
            "not every call taken over {:?} after the address moved\n{text}\n{}",
            moved.elapsed(),
            two.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "every call taken over {:?} after the address moved ({:?} after the kill)",
        moved.elapsed(),
        killed.elapsed()
    );
    // Two, now with the address, heartbeats.
    assert!(alive(&mut connection, "two"));
    // Its calls' state is now two's, on the same media ports toward the same far ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let after = media_in_redis(&mut connection, "two");
        if after == before && media_in_redis(&mut connection, "one").is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "state not moved: {after:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Two relays each call from the service address and the ports one used for it (RTP and
    // RTCP facing each side), the only sockets it has for the call.
    let service: std::net::Ipv4Addr = SERVICE.parse().expect("address");
    let sockets = inside(&site.two, || bound_on(service));
    for media in before.values() {
        for port in [media.local.0, media.local.1] {
            let port = u16::try_from(port).expect("a port");
            assert!(
                sockets.contains(&port) && sockets.contains(&(port + 1)),
                "{port} not bound on {SERVICE} by two"
            );
        }
    }
    // RTP flows again to every SIPp socket of every call, both ways, through two; two relays
    // at the rate 100 calls stream both ways (50 packets a second each way).
    let relayed = |text: &str| sample(text, "bridgehead_media_packets_total").unwrap_or(0.0);
    let (start, counted) = (relayed(&metrics(&site.two, admin)), Instant::now());
    assert_eq!(
        silent_ports(&site, &sipp_ports),
        Vec::<u16>::new(),
        "RTP through instance two"
    );
    std::thread::sleep(Duration::from_millis(1000));
    let rate = (relayed(&metrics(&site.two, admin)) - start) / counted.elapsed().as_secs_f64();
    eprintln!("instance two relays {rate:.0} packets a second");
    assert!(
        rate > 0.8 * (CALLS as f64) * 2.0 * 50.0,
        "{rate} packets a second"
    );
    // All that before the first call's hold ended: every re-INVITE comes after the takeover.
    assert!(calls_placed.elapsed() < Duration::from_millis(HOLD_MS));
    // Every call's re-INVITEs (one from each side) and its BYE (the caller's on half the
    // calls, the callee's on the others) complete through two.
    let deadline = Instant::now() + Duration::from_secs(40);
    let (caller_status, callee_status) = (caller.wait(deadline), callee.wait(deadline));
    assert_eq!(
        (caller_status, callee_status),
        (Some(0), Some(0)),
        "{}",
        report(&caller, &callee, &two)
    );
    // Each call has one CDR, by two, with its answer from before the takeover (held 15 s).
    let lines = cdr_lines(&cdr_two, CALLS);
    let ids: std::collections::HashSet<&str> =
        lines.iter().filter_map(|c| c["call_id"].as_str()).collect();
    assert_eq!(lines.len(), CALLS, "{lines:?}");
    assert_eq!(ids, before.keys().map(String::as_str).collect());
    let ended_by = |side: &str| lines.iter().filter(|c| c["ended_by"] == side).count();
    assert_eq!(
        (ended_by("caller"), ended_by("callee")),
        (CALLS / 2, CALLS / 2)
    );
    let held = HOLD_MS as f64 / 1000.0;
    assert!(
        lines
            .iter()
            .all(|c| c["status"] == 200 && c["duration_s"].as_f64().is_some_and(|d| d >= held)),
        "{lines:?}"
    );
    assert!(media_in_redis(&mut connection, "two").is_empty());
    drop((caller, callee, two, one, redis));
}
