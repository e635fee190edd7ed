//! Every RFC 4475 and RFC 5118 torture message sent over UDP to a running SBC: it stays up,
//! invalid requests get the answer the corpus index names, valid ones are processed.

mod common;

use common::{free_udp_port, Sbc};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Duration;

fn corpus_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data"))
}

/// (file, expected first response status; None = dropped without an answer).
const EXPECTED: &[(&str, Option<u16>)] = &[
    // RFC 4475 §3.1.1: valid messages are processed.
    ("rfc4475/wsinv.dat", Some(481)), // in-dialog INVITE (To has a tag) for no known dialog
    ("rfc4475/intmeth.dat", Some(501)),
    ("rfc4475/esc01.dat", Some(100)),
    ("rfc4475/escnull.dat", Some(405)),
    ("rfc4475/esc02.dat", Some(501)),
    ("rfc4475/lwsdisp.dat", Some(200)),
    ("rfc4475/longreq.dat", Some(100)),
    ("rfc4475/dblreq.dat", Some(405)),
    ("rfc4475/semiuri.dat", Some(200)),
    ("rfc4475/transports.dat", Some(200)),
    ("rfc4475/mpart01.dat", Some(405)),
    ("rfc4475/unreason.dat", None), // a valid response matching no transaction
    ("rfc4475/noreason.dat", None),
    // RFC 4475 §3.1.2: invalid messages.
    ("rfc4475/badinv01.dat", Some(400)),
    ("rfc4475/clerr.dat", Some(400)),
    ("rfc4475/ncl.dat", Some(400)),
    ("rfc4475/scalar02.dat", Some(400)),
    ("rfc4475/scalarlg.dat", None),
    ("rfc4475/quotbal.dat", Some(400)),
    ("rfc4475/ltgtruri.dat", Some(400)),
    ("rfc4475/lwsruri.dat", Some(400)),
    ("rfc4475/lwsstart.dat", Some(400)),
    ("rfc4475/trws.dat", Some(400)),
    ("rfc4475/escruri.dat", Some(400)),
    ("rfc4475/baddate.dat", Some(100)), // Date does not matter to an SBC: processed
    ("rfc4475/regbadct.dat", Some(400)),
    ("rfc4475/badaspec.dat", Some(400)),
    ("rfc4475/baddn.dat", Some(400)),
    ("rfc4475/baddn.ersip-variant.dat", Some(400)),
    ("rfc4475/badvers.dat", Some(505)),
    ("rfc4475/mismatch01.dat", Some(400)),
    ("rfc4475/mismatch02.dat", Some(501)),
    ("rfc4475/bigcode.dat", None),
    // §3.2 transaction semantics, §3.3 application semantics, §3.4 backward compatibility.
    ("rfc4475/badbranch.dat", Some(400)),
    ("rfc4475/insuf.dat", Some(400)),
    ("rfc4475/unkscm.dat", Some(416)),
    ("rfc4475/novelsc.dat", Some(416)),
    ("rfc4475/unksm2.dat", Some(405)),
    ("rfc4475/bext01.dat", Some(420)),
    ("rfc4475/invut.dat", Some(415)),
    ("rfc4475/regaut01.dat", Some(405)),
    ("rfc4475/multi01.dat", Some(400)),
    ("rfc4475/mcl01.dat", Some(400)),
    ("rfc4475/bcast.dat", None),
    ("rfc4475/zeromf.dat", Some(200)), // OPTIONS may be answered with Max-Forwards 0
    ("rfc4475/cparam01.dat", Some(405)),
    ("rfc4475/cparam02.dat", Some(405)),
    ("rfc4475/regescrt.dat", Some(405)),
    ("rfc4475/sdp01.dat", Some(406)),
    ("rfc4475/inv2543.dat", Some(100)),
    ("rfc4475/extra/sipsorcery-test.dat", None), // no Via: no response is possible
    // RFC 5118 (IPv6).
    ("rfc5118/ipv6-good.dat", Some(405)),
    ("rfc5118/ipv6-bad.dat", Some(400)),
    ("rfc5118/port-ambiguous.dat", Some(405)),
    ("rfc5118/port-unambiguous.dat", Some(405)),
    ("rfc5118/via-received-param-with-delim.dat", Some(481)),
    ("rfc5118/via-received-param-no-delim.dat", Some(200)),
    ("rfc5118/ipv6-in-sdp.dat", Some(100)),
    ("rfc5118/mult-ip-in-header.dat", Some(481)),
    ("rfc5118/mult-ip-in-sdp.dat", Some(100)),
    ("rfc5118/ipv4-mapped-ipv6.dat", Some(100)),
    ("rfc5118/ipv6-bug-abnf-3-colons.dat", Some(200)),
    ("rfc5118/ipv6-correct-abnf-2-colons.dat", Some(200)),
];

/// Sends one file from a fresh socket and returns the status codes of what came back.
fn exchange(port: u16, bytes: &[u8]) -> Vec<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.send_to(bytes, ("127.0.0.1", port)).expect("send");
    let mut statuses = Vec::new();
    let mut wait = Duration::from_millis(600);
    let mut buf = [0u8; 65_536];
    loop {
        socket.set_read_timeout(Some(wait)).expect("timeout");
        match socket.recv(&mut buf) {
            Ok(len) => {
                let text = String::from_utf8_lossy(&buf[..len]);
                let status = text
                    .strip_prefix("SIP/2.0 ")
                    .and_then(|rest| rest.get(..3))
                    .and_then(|code| code.parse().ok())
                    .expect("the SBC answers with SIP responses");
                statuses.push(status);
                wait = Duration::from_millis(80);
            }
            Err(_) => return statuses,
        }
    }
}

#[test]
fn torture_messages_over_udp() {
    let dir = corpus_dir();
    assert!(
        dir.is_dir(),
        "the shared corpus is expected at {} (shared/ beside the checkout)",
        dir.display()
    );
    let sbc = Sbc::start(&format!(
        "listeners:\n  - name: core\n    address: 127.0.0.1:{{core}}\ntrunks:\n  - name: core\n    listener: core\n    peers: [\"127.0.0.1:{}\"]\n    route: core\n",
        free_udp_port()
    ));
    let port = sbc.port("core");
    let mut failures = Vec::new();
    for (file, expected) in EXPECTED {
        let bytes = std::fs::read(dir.join(file)).expect("corpus file");
        let statuses = exchange(port, &bytes);
        let first = statuses
            .iter()
            .copied()
            .find(|s| *s != 100 || *expected == Some(100));
        if first != *expected {
            failures.push(format!("{file}: expected {expected:?}, got {statuses:?}"));
        }
        if *file == "rfc4475/dblreq.dat" && statuses.contains(&100) {
            failures.push(format!("{file}: the trailing INVITE octets were processed"));
        }
        assert!(sbc.is_running(), "the SBC died on {file}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Still serving.
    assert_eq!(sbc.options("core"), 200);
}
