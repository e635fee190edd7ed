//! SIP over TLS end to end: certificates made here (a CA, Bridgehead's, a Teams-like peer's,
//! a client's), the real `bridgehead` binary, and TLS far ends built on rustls in the test
//! (plus `openssl s_client` for a TLS 1.1 client). Every refused handshake must be logged
//! with its reason.

mod common;

use common::pki::{certs, key, roots, Pki};
use common::{scratch_dir, Sbc};
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client config trusting `ca`, presenting `identity` (certificate, key) when given.
fn client_config(ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots(ca));
    Arc::new(match identity {
        Some((cert, key_file)) => builder
            .with_client_auth_cert(certs(cert), key(key_file))
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    })
}

/// Connects to 127.0.0.1:`port` as a TLS client of `config` expecting `name`, sends
/// `request`, and returns what came back within a second (empty when the handshake failed).
fn tls_exchange(port: u16, config: Arc<rustls::ClientConfig>, name: &str, request: &str) -> String {
    let name = ServerName::try_from(name.to_string()).expect("name");
    let mut connection = rustls::ClientConnection::new(config, name).expect("client");
    let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut stream = rustls::Stream::new(&mut connection, &mut socket);
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn options(port: u16, transport: &str) -> String {
    format!(
        "OPTIONS sip:sbc.example.test:{port};transport={transport} SIP/2.0\r\n\
         Via: SIP/2.0/{} 127.0.0.1:5099;branch=z9hG4bK-tls-{}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:peer.example.test>;tag=p1\r\n\
         To: <sip:sbc.example.test>\r\n\
         Call-ID: tls-options-{}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        transport.to_uppercase(),
        rand_tail(),
        rand_tail()
    )
}

fn rand_tail() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// Waits until Bridgehead's log has `needle`.
fn wait_log(sbc: &Sbc, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sbc.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in the log:\n{}",
            sbc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A profile with a UDP core listener and a Teams listener taking TLS with `cert` (and
/// `listener_extra` lines in its tls section); the Teams trunk uses `trunk_tls`.
fn profile(cert: &(PathBuf, PathBuf), listener_extra: &str, trunk: &str) -> String {
    format!(
        "listeners:
  - name: core
    address: 127.0.0.1:{{core}}
  - name: teams
    address: 127.0.0.1:{{teams}}
    transports: [udp, tls]
    tls:
      port: {{teams_tls}}
      certificate: {}
      key: {}
{listener_extra}
trunks:
  - name: core
    listener: core
    peers: [\"127.0.0.1:{{softswitch}}\"]
    script: {{script}}
    route: teams
  - name: teams
    listener: teams
{trunk}
    script: {{script}}
    route: core
",
        cert.0.display(),
        cert.1.display()
    )
}

#[test]
fn a_tls_listener_answers_over_tls_and_refuses_what_is_not_mutual_tls_with_its_ca() {
    let dir = scratch_dir("tls-listener");
    let pki = Pki::new(&dir, "operator");
    let stranger = Pki::new(&dir, "stranger");
    let sbc_cert = pki.issue("sbc", &["sbc.example.test", "127.0.0.1"], false);
    let client = pki.issue("peer", &["peer.example.test"], false);
    let foreign_client = stranger.issue("foreign", &["peer.example.test"], false);
    let listener_extra = format!("      client_ca: {}", pki.ca.display());
    let trunk = "    peers: [\"127.0.0.1:{teams_peer}\"]\n    transport: udp";
    let sbc = Sbc::start(&profile(&sbc_cert, &listener_extra, trunk));
    let port = sbc.port("teams_tls");

    // Mutual TLS with a certificate of the CA: OPTIONS answered over TLS.
    let answer = tls_exchange(
        port,
        client_config(&pki.ca, Some(&client)),
        "sbc.example.test",
        &options(port, "tls"),
    );
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}\n{}", sbc.log());
    assert!(
        answer.contains("Via: SIP/2.0/TLS 127.0.0.1:5099"),
        "{answer}"
    );

    // No client certificate.
    let answer = tls_exchange(
        port,
        client_config(&pki.ca, None),
        "sbc.example.test",
        &options(port, "tls"),
    );
    assert!(answer.is_empty(), "{answer}");
    wait_log(&sbc, "failed: no client certificate");

    // A certificate of another CA.
    let answer = tls_exchange(
        port,
        client_config(&pki.ca, Some(&foreign_client)),
        "sbc.example.test",
        &options(port, "tls"),
    );
    assert!(answer.is_empty(), "{answer}");
    wait_log(&sbc, "failed: unknown CA");

    // Plain SIP over TCP on the TLS port.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    plain
        .write_all(options(port, "tcp").as_bytes())
        .expect("write");
    let mut buf = [0u8; 512];
    let read = plain.read(&mut buf).unwrap_or(0);
    assert!(
        !String::from_utf8_lossy(&buf[..read]).contains("SIP/2.0 200"),
        "no SIP answer in the clear"
    );
    wait_log(&sbc, "failed: not TLS");

    // A TLS 1.1 client (openssl, allowed to offer 1.1).
    let old = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-tls1_1",
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client (Debian openssl) must be installed");
    assert!(!old.status.success(), "TLS 1.1 refused");
    wait_log(&sbc, "failed: protocol version");
    drop(stranger);
}

/// What the TLS far end saw of its one connection: the server name the client asked for,
/// whether it presented a certificate, and the first message it sent.
struct PeerSaw {
    server_name: String,
    client_certificate: bool,
    first_message: String,
}

/// A TLS far end (the "Teams" peer) on a free port: accepts one connection with `cert` and
/// requires a client certificate of `client_ca`.
fn tls_peer(
    cert: (PathBuf, PathBuf),
    client_ca: PathBuf,
) -> (u16, std::thread::JoinHandle<Option<PeerSaw>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = std::thread::spawn(move || {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(&client_ca)),
            provider(),
        )
        .build()
        .expect("verifier");
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&cert.0), key(&cert.1))
            .expect("server config");
        listener.set_nonblocking(false).expect("blocking");
        let (mut socket, _) = listener.accept().ok()?;
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut connection = rustls::ServerConnection::new(Arc::new(config)).expect("server");
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until && !whole_message(&got) {
            let mut stream = rustls::Stream::new(&mut connection, &mut socket);
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        Some(PeerSaw {
            server_name: connection.server_name().unwrap_or_default().to_string(),
            client_certificate: connection
                .peer_certificates()
                .is_some_and(|c| !c.is_empty()),
            first_message: String::from_utf8_lossy(&got).into_owned(),
        })
    });
    (port, handle)
}

/// True once `got` holds a whole SIP message: its headers and `Content-Length` bytes of body.
fn whole_message(got: &[u8]) -> bool {
    let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&got[..end]);
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    got.len() >= end + 4 + length
}

/// An INVITE from the core (UDP) into Bridgehead's core listener.
fn core_invite(sbc: &Sbc, call: &str) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let port = socket.local_addr().expect("addr").port();
    let invite = format!(
        "INVITE sip:+4930987654@127.0.0.1:{} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{call}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:+4930123456@operator.example>;tag=a-{call}\r\n\
         To: <sip:+4930987654@teams.example>\r\n\
         Call-ID: {call}@operator.example\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@127.0.0.1:{port}>\r\n\
         Content-Length: 0\r\n\r\n",
        sbc.port("core")
    );
    socket
        .send_to(invite.as_bytes(), ("127.0.0.1", sbc.port("core")))
        .expect("send");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    socket
}

/// Statuses the core got on `socket` within `wait`.
fn statuses(socket: &UdpSocket, wait: Duration) -> Vec<u16> {
    let mut got = Vec::new();
    let until = Instant::now() + wait;
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            if let Some(status) = text.get(8..11).and_then(|s| s.parse().ok()) {
                got.push(status);
            }
        }
    }
    got
}

#[test]
fn calls_reach_a_tls_peer_by_its_name_with_bridgeheads_certificate_or_fail_with_the_reason() {
    let dir = scratch_dir("tls-trunk");
    let pki = Pki::new(&dir, "teams");
    let sbc_cert = pki.issue("sbc", &["sbc.example.test"], false);
    let teams_cert = pki.issue("teams", &["sip.teams.example.test"], false);
    let expired_cert = pki.issue("old", &["sip.teams.example.test"], true);

    for (peer_cert, server_name, wanted) in [
        (teams_cert.clone(), "sip.teams.example.test", None),
        (teams_cert, "sip2.teams.example.test", Some("wrong name")),
        (
            expired_cert,
            "sip.teams.example.test",
            Some("expired certificate"),
        ),
    ] {
        let (peer_port, peer) = tls_peer(peer_cert, pki.ca.clone());
        let trunk = format!(
            "    peers: [\"127.0.0.1:{peer_port}\"]\n    transport: tls\n    tls:\n      server_name: {server_name}\n      ca: {}",
            pki.ca.display()
        );
        let sbc = Sbc::start(&profile(&sbc_cert, "", &trunk));
        let core = core_invite(&sbc, &format!("tls-{peer_port}"));
        match wanted {
            None => {
                let saw = peer.join().expect("peer thread").expect("a connection");
                let invite = saw.first_message;
                assert_eq!(saw.server_name, "sip.teams.example.test", "SNI");
                assert!(
                    saw.client_certificate,
                    "Bridgehead presented its certificate"
                );
                assert!(invite.starts_with("INVITE sip:"), "{invite}");
                let via = format!("Via: SIP/2.0/TLS 127.0.0.1:{}", sbc.port("teams_tls"));
                assert!(invite.contains(&via), "{invite}");
                assert!(invite.contains(";transport=tls>"), "Contact: {invite}");
            }
            Some(reason) => {
                wait_log(&sbc, &format!("failed: {reason}"));
                let got = statuses(&core, Duration::from_secs(2));
                assert!(
                    got.contains(&503),
                    "the caller hears 503: {got:?}\n{}",
                    sbc.log()
                );
                let _ = peer.join();
            }
        }
    }
}

/// Connects as a TLS client and returns the certificate Bridgehead presented, and the open
/// connection.
fn presented_certificate(
    port: u16,
    ca: &Path,
) -> (
    CertificateDer<'static>,
    rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
) {
    let name = ServerName::try_from("sbc.example.test").expect("name");
    let connection = rustls::ClientConnection::new(client_config(ca, None), name).expect("client");
    let socket = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut stream = rustls::StreamOwned::new(connection, socket);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .expect("handshake");
    }
    let leaf = stream.conn.peer_certificates().expect("certificates")[0].clone();
    (leaf, stream)
}

/// Sends an OPTIONS on an open TLS connection and returns the status line of its answer.
fn options_on(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    port: u16,
) -> String {
    stream
        .write_all(options(port, "tls").as_bytes())
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn replaced_certificate_files_serve_new_handshakes_and_connections_up_keep_going() {
    let dir = scratch_dir("tls-reload");
    let pki = Pki::new(&dir, "operator");
    let first = pki.issue("sbc", &["sbc.example.test"], false);
    let trunk = "    peers: [\"127.0.0.1:{teams_peer}\"]\n    transport: udp";
    let sbc = Sbc::start(&profile(&first, "", trunk));
    let port = sbc.port("teams_tls");
    let (before, mut open) = presented_certificate(port, &pki.ca);
    assert_eq!(before.as_ref(), certs(&first.0)[0].as_ref());

    // The renewed certificate and key replace the files (written aside, renamed over them).
    let renewed = pki.issue("renewed", &["sbc.example.test"], false);
    for (from, to) in [(&renewed.0, &first.0), (&renewed.1, &first.1)] {
        let aside = to.with_extension("new");
        std::fs::copy(from, &aside).expect("copy");
        std::fs::rename(&aside, to).expect("rename");
    }
    wait_log(&sbc, "reload: new calls take version 2");
    let (after, _) = presented_certificate(port, &pki.ca);
    assert_eq!(
        after.as_ref(),
        certs(&renewed.0)[0].as_ref(),
        "a new handshake gets the renewed certificate"
    );
    assert_ne!(after, before);
    assert!(
        options_on(&mut open, port).starts_with("SIP/2.0 200"),
        "the connection made before goes on"
    );

    // A key that is not the certificate's: the reload is refused, the running one stays.
    let stray = pki.issue("stray", &["sbc.example.test"], false);
    let aside = first.1.with_extension("new");
    std::fs::copy(&stray.1, &aside).expect("copy");
    std::fs::rename(&aside, &first.1).expect("rename");
    wait_log(&sbc, "reload refused");
    assert!(sbc.log().contains("TLS: "), "{}", sbc.log());
    let (still, _) = presented_certificate(port, &pki.ca);
    assert_eq!(still, after, "the running certificate stays");
}

#[test]
fn a_certificate_behind_a_symlink_that_a_renewal_repoints_is_taken_too() {
    // certbot's layout: the profile names live/ links into archive/.
    let dir = scratch_dir("tls-symlink");
    let pki = Pki::new(&dir, "operator");
    let (live, archive) = (dir.join("live"), dir.join("archive"));
    std::fs::create_dir_all(&live).expect("live");
    std::fs::create_dir_all(&archive).expect("archive");
    let issue_into_archive = |n: u32| {
        let (cert, key) = pki.issue(&format!("sbc{n}"), &["sbc.example.test"], false);
        let (c, k) = (
            archive.join(format!("cert{n}.pem")),
            archive.join(format!("key{n}.pem")),
        );
        std::fs::rename(&cert, &c).expect("move");
        std::fs::rename(&key, &k).expect("move");
        (c, k)
    };
    let point = |target: &Path, link: &Path| {
        let aside = link.with_extension("tmp");
        let _ = std::fs::remove_file(&aside);
        std::os::unix::fs::symlink(target, &aside).expect("symlink");
        std::fs::rename(&aside, link).expect("repoint");
    };
    let (cert1, key1) = issue_into_archive(1);
    let named = (live.join("cert.pem"), live.join("key.pem"));
    point(&cert1, &named.0);
    point(&key1, &named.1);
    let trunk = "    peers: [\"127.0.0.1:{teams_peer}\"]\n    transport: udp";
    let sbc = Sbc::start(&profile(&named, "", trunk));
    let port = sbc.port("teams_tls");
    let (before, _) = presented_certificate(port, &pki.ca);
    assert_eq!(before.as_ref(), certs(&cert1)[0].as_ref());

    // Renewal: new files in archive/, the live/ links repointed (key first, as certbot).
    let (cert2, key2) = issue_into_archive(2);
    point(&key2, &named.1);
    point(&cert2, &named.0);
    wait_log(&sbc, "reload: new calls take version");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (now_presented, _) = presented_certificate(port, &pki.ca);
        if now_presented.as_ref() == certs(&cert2)[0].as_ref() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate never came\n{}",
            sbc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `examples/operator-connect/profile.yaml` as shipped, on free ports, with certificates made
/// here for the names it uses, its keepalive off (so the INVITE is the peer's first message).
fn operator_connect_profile(pki: &Pki, sbc: &(PathBuf, PathBuf), peer_port: u16) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let shipped = std::fs::read_to_string(format!("{root}/examples/operator-connect/profile.yaml"))
        .expect("the example profile");
    let media = common::media_range();
    let profile = shipped
        .replace("127.0.0.1:5060", "127.0.0.1:{core}")
        .replace("127.0.0.1:5061", "127.0.0.1:{teams_tls}")
        .replace("port: 5061", "port: {teams_tls}")
        .replace("127.0.0.1:5090", "127.0.0.1:{softswitch}")
        .replace("127.0.0.1:5081", &format!("127.0.0.1:{peer_port}"))
        .replace("40000-49999", &format!("{media}-{}", media + 9))
        .replace("certs/sbc.pem", &sbc.0.display().to_string())
        .replace("certs/sbc.key", &sbc.1.display().to_string())
        .replace("certs/ca.pem", &pki.ca.display().to_string())
        .replace("../../scripts/", &format!("{root}/scripts/"));
    assert_ne!(profile, shipped, "the example changed shape");
    profile
        .lines()
        .filter(|l| !l.trim_start().starts_with("keepalive:") && !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn the_operator_connect_example_reaches_a_tls_teams_peer_with_e164_srtp_and_x_ms_sbc() {
    let dir = scratch_dir("operator-connect");
    let pki = Pki::new(&dir, "example");
    let sbc_cert = pki.issue("sbc", &["sbc.operator.example"], false);
    let teams_cert = pki.issue("teams", &["sip.pstnhub.example.test"], false);
    let (peer_port, peer) = tls_peer(teams_cert, pki.ca.clone());
    let sbc = Sbc::start(&operator_connect_profile(&pki, &sbc_cert, peer_port));

    // The softswitch calls a national number from a national number, with plain RTP.
    let softswitch = UdpSocket::bind(("127.0.0.1", sbc.port("softswitch"))).expect("udp");
    let body = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=x-vendor:1\r\n";
    let invite = format!(
        "INVITE sip:030987654@127.0.0.1:{core} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{ss};branch=z9hG4bK-oc-1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:0301234567@operator.example>;tag=a-oc-1\r\n\
         To: <sip:030987654@operator.example>\r\n\
         Call-ID: oc-1@operator.example\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@127.0.0.1:{ss}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len(),
        core = sbc.port("core"),
        ss = sbc.port("softswitch"),
    );
    softswitch
        .send_to(invite.as_bytes(), ("127.0.0.1", sbc.port("core")))
        .expect("send");

    let saw = peer.join().expect("peer thread").expect("a connection");
    let invite = saw.first_message;
    assert_eq!(saw.server_name, "sip.pstnhub.example.test", "SNI");
    assert!(
        saw.client_certificate,
        "Bridgehead presented its certificate"
    );
    let line = |name: &str| {
        invite
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        invite.starts_with("INVITE sip:+4930987654@") && line("INVITE").contains(";user=phone"),
        "E.164 Request-URI:\n{invite}"
    );
    assert!(line("From:").contains("sip:+49301234567@"), "{invite}");
    assert!(line("To:").contains("sip:+4930987654@"), "{invite}");
    assert!(
        line("X-MS-SBC:").starts_with("X-MS-SBC: Bridgehead/SBC/"),
        "{invite}"
    );
    assert!(
        line("Contact:").contains("@sbc.operator.example:")
            && line("Contact:").contains(";transport=tls"),
        "{invite}"
    );
    assert!(line("m=audio").contains(" RTP/SAVP "), "{invite}");
    assert!(
        line("a=crypto:").contains("AES_CM_128_HMAC_SHA1_80 inline:"),
        "{invite}"
    );
    assert!(!invite.contains("a=x-vendor"), "strict a= lines: {invite}");
}
