//! A lookup's CSV file changed under the running `bridgehead` binary: the next calls get the
//! new answers (the file is watched like the rules, and a change is a reload); a broken CSV is
//! refused with its file:line and the running answers stay.

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
    let sbc = Sbc::start(&format!(
        "listeners:
  - name: core
    address: 127.0.0.1:{{core}}
  - name: teams
    address: 127.0.0.1:{{teams}}
lookups:
  - name: numbers
    csv: {csv}
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
",
        csv = csv.display(),
        script = script.display()
    ));
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
