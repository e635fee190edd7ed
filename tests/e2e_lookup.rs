//! Lookups through the running `bridgehead` binary. A CSV file changed under it: the next
//! calls get the new answers (the file is watched like the rules, and a change is a reload); a
//! broken CSV is refused with its file:line and the running answers stay. An HTTP consultation
//! service on 127.0.0.1 answering in 50 ms for some keys and hanging for others, with calls at
//! 200/s: the calls whose lookups hang go on at the lookup's timeout, the others do not wait.

mod common;

use common::{receive, scratch_dir, Sbc};
use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

/// Rules that stamp each INVITE toward Teams with what the lookup says of its number.
const RULES: &str = r#"
local r = {}
function r.on_request(call, req)
  if req.trunk == "teams" and req.method == "INVITE" then
    req:set_header("X-Lookup", bh.lookup("numbers", req:uri_user()) or "none")
  end
end
return r
"#;

/// Core and Teams trunks on loopback, both running `script`, with the `lookups` entries given.
fn profile(lookups: &str, script: &Path) -> String {
    format!(
        "listeners:
  - name: core
    address: 127.0.0.1:{{core}}
  - name: teams
    address: 127.0.0.1:{{teams}}
lookups:
{lookups}trunks:
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
",
        script = script.display()
    )
}

fn invite(call_id: &str, softswitch: u16, core: u16) -> String {
    format!(
        "INVITE sip:+4930987654@127.0.0.1:{core} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{softswitch};branch=z9hG4bK-{call_id}\r\nMax-Forwards: 70\r\nFrom: <sip:+4930123456@operator.example>;tag=a-{call_id}\r\nTo: <sip:+4930987654@teams.example>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.1:{softswitch}>\r\nX-Call: {call_id}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Writes the file as editors do: a temporary file renamed over it.
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("csv.tmp~");
    std::fs::write(&tmp, text).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Places call `n` and returns the X-Lookup value of the INVITE that reaches Teams.
fn lookup_seen(sbc: &Sbc, softswitch: &UdpSocket, teams: &UdpSocket, n: u32) -> String {
    let request = invite(
        &format!("lookup-{n}"),
        sbc.port("softswitch"),
        sbc.port("core"),
    );
    softswitch
        .send_to(request.as_bytes(), ("127.0.0.1", sbc.port("core")))
        .expect("send the INVITE");
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let Some(text) = receive(teams, Duration::from_millis(500)) else {
            continue;
        };
        if text.starts_with("INVITE ") && text.contains(&format!("X-Call: lookup-{n}\r\n")) {
            return text
                .lines()
                .find_map(|l| l.strip_prefix("X-Lookup: "))
                .unwrap_or("absent")
                .to_string();
        }
    }
    panic!("call {n} never reached Teams:\n{}", sbc.log());
}

#[test]
fn a_changed_csv_answers_the_next_calls_and_a_broken_one_is_refused() {
    let dir = scratch_dir("lookup-csv");
    let csv = dir.join("numbers.csv");
    std::fs::write(&csv, "# number,answer\n+4930987654,first\n").expect("csv");
    let script = dir.join("rules.lua");
    std::fs::write(&script, RULES).expect("rules");
    let lookup = format!("  - name: numbers\n    csv: {}\n", csv.display());
    let sbc = Sbc::start(&profile(&lookup, &script));
    let softswitch = UdpSocket::bind(("127.0.0.1", sbc.port("softswitch"))).expect("softswitch");
    let teams = UdpSocket::bind(("127.0.0.1", sbc.port("teams_peer"))).expect("teams peer");
    assert_eq!(lookup_seen(&sbc, &softswitch, &teams, 1), "first");

    save(&csv, "# number,answer\n+4930987654,second\n");
    let mut n = 2;
    let deadline = Instant::now() + Duration::from_secs(5);
    while lookup_seen(&sbc, &softswitch, &teams, n) != "second" {
        assert!(
            Instant::now() < deadline,
            "the new CSV never served:\n{}",
            sbc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
        n += 1;
    }

    // A key given twice: refused, with the CSV's file and line, and "second" stays.
    save(&csv, "+4930987654,third\n+4930987654,fourth\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    let refusal = format!(
        "{}:2: lookup 'numbers': key '+4930987654' is given twice",
        csv.display()
    );
    while !sbc.log().contains(&refusal) {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            sbc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lookup_seen(&sbc, &softswitch, &teams, n + 1), "second");
}

/// A consultation service on 127.0.0.1: `GET /tpm/<key>` answers `tpm` after 50 ms for a key
/// ending in 0, 2, 4 or 6, `404` after 50 ms for one ending in 8, and never for an odd one
/// (it holds the connection 5 s). Returns its port.
fn consultation_service() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("service socket");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let last = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|path| path.chars().last())
                    .and_then(|c| c.to_digit(10))
                    .unwrap_or(1);
                if last % 2 == 1 {
                    std::thread::sleep(Duration::from_secs(5));
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
                let response = if last == 8 {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\ntpm"
                };
                let _ = stream.write_all(response.as_bytes());
            });
        }
    });
    port
}

/// Rules that ask the consultation service in `on_invite` and say what it answered.
const CONSULTING_RULES: &str = r#"
local r = {}
function r.on_invite(call, req)
  local value, failure = bh.lookup("consult", req:uri_user())
  req:set_header("X-Lookup", value or failure or "none")
end
return r
"#;

const CALLS: u32 = 600;
const RATE_PER_SECOND: u32 = 200;
/// The lookup's timeout.
const TIMEOUT: Duration = Duration::from_millis(1000);

#[test]
fn calls_waiting_for_a_service_that_hangs_go_on_at_its_timeout_and_others_do_not_wait() {
    let service = consultation_service();
    let dir = scratch_dir("lookup-http");
    let script = dir.join("rules.lua");
    std::fs::write(&script, CONSULTING_RULES).expect("rules");
    let lookup = format!(
        "  - name: consult\n    http: {{ url: \"http://127.0.0.1:{service}/tpm/{{{{key}}}}\", timeout_ms: {}, concurrency: 1000 }}\n",
        TIMEOUT.as_millis()
    );
    let sbc = Sbc::start(&profile(&lookup, &script));
    let softswitch = UdpSocket::bind(("127.0.0.1", sbc.port("softswitch"))).expect("softswitch");
    let teams = UdpSocket::bind(("127.0.0.1", sbc.port("teams_peer"))).expect("teams peer");

    // Teams' side: the first INVITE of each call, when it came and what the lookup said.
    let receiver = std::thread::spawn(move || {
        let mut seen = std::collections::HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < CALLS as usize && Instant::now() < deadline {
            let Some(text) = receive(&teams, Duration::from_millis(200)) else {
                continue;
            };
            let header = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::to_string)
            };
            if let (Some(call), Some(lookup)) = (header("X-Call: "), header("X-Lookup: ")) {
                seen.entry(call).or_insert((Instant::now(), lookup));
            }
        }
        seen
    });

    let started = Instant::now();
    let mut sent_at = std::collections::HashMap::new();
    for n in 0..CALLS {
        let at = started + Duration::from_secs(1) * n / RATE_PER_SECOND;
        if let Some(wait) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let call = format!("http-{n}");
        let request = invite(&call, sbc.port("softswitch"), sbc.port("core"))
            .replace("+4930987654@", &format!("+49151{n:05}@"));
        // Taken before the send: Bridgehead may handle the INVITE before send_to returns.
        let sent = Instant::now();
        softswitch
            .send_to(request.as_bytes(), ("127.0.0.1", sbc.port("core")))
            .expect("send the INVITE");
        sent_at.insert(call, (sent, n));
    }
    let seen = receiver.join().expect("receiver");

    let mut slowest_waiting = Duration::ZERO;
    let mut slowest_answered = Duration::ZERO;
    for (call, (sent, n)) in &sent_at {
        let (arrived, lookup) = seen
            .get(call)
            .unwrap_or_else(|| panic!("call {call} never reached Teams:\n{}", sbc.log()));
        let delay = arrived.duration_since(*sent);
        let want = match n % 10 {
            d if d % 2 == 1 => "timeout",
            8 => "none",
            _ => "tpm",
        };
        assert_eq!(lookup, want, "call {call}");
        if want == "timeout" {
            assert!(delay >= TIMEOUT, "call {call} went on after {delay:?}");
            slowest_waiting = slowest_waiting.max(delay);
        } else {
            slowest_answered = slowest_answered.max(delay);
        }
    }
    eprintln!(
        "{CALLS} calls at {RATE_PER_SECOND}/s: the slowest answered one reached Teams after {slowest_answered:?}, the slowest timed-out one after {slowest_waiting:?} (timeout {TIMEOUT:?})"
    );
    // No call stalled past the timeout (with room for a loaded machine), and calls whose
    // lookups were answered never waited behind the ones that hang.
    assert!(slowest_waiting < TIMEOUT + Duration::from_millis(1500));
    assert!(slowest_answered < TIMEOUT);
}
