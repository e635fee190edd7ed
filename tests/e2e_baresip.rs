//! SRTP (and SIP over TLS) against an independent implementation: baresip (Debian
//! `baresip-core`, libre's SRTP and TLS) on the Teams side, SIPp with plain RTP (a test
//! socket) on the core side, the real `bridgehead` binary between them.
//!
//! baresip's media binds an interface address, never 127.0.0.1, so it runs in a network
//! namespace the test creates, joined to this one by a veth pair (needs root and iproute2, as
//! in CI). Its audio player feeds its audio source (`aubridge`): it echoes what it hears. The
//! test sends DTMF digits as plain PCMA audio; they can only come back if baresip decrypted
//! the SRTP Bridgehead encrypted and Bridgehead decrypted the SRTP baresip encrypted.

mod common;

use bridgehead::media::dsp::{
    alaw_to_linear, dtmf_frequencies, linear_to_alaw, tones, DtmfDetector,
};
use common::netns::{self, ip};
use common::sipp::{callee_args, media_caller, wait_listening, Sipp, Transport};
use common::{media_range, scratch_dir, Sbc};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The digits of the Asterisk testsuite capture, sent as tones and expected back in order.
const DIGITS: &str = "2013785496";
/// The telephone number baresip registers as (the Request-URI user must match it).
const TEAMS_USER: &str = "+4930987654";

static NAMESPACES: AtomicU32 = AtomicU32::new(0);

/// A network namespace joined to this one by a veth pair with a /30 between them; removed on
/// drop.
struct Namespace {
    name: String,
    outer_link: String,
    inner_link: String,
    /// Our address on the veth pair (Bridgehead's Teams side).
    outer: String,
    /// The namespace's address (baresip's).
    inner: String,
}

impl Namespace {
    fn create() -> Namespace {
        let id = std::process::id() % 100_000 * 10 + NAMESPACES.fetch_add(1, Ordering::Relaxed);
        // A /30 of 10.213.0.0/16 per namespace.
        let block = (id % 16_000) * 4;
        let prefix = format!("10.213.{}", block / 256);
        let ns = Namespace {
            name: format!("bh-e2e-{id}"),
            outer_link: format!("bh{id}o"),
            inner_link: format!("bh{id}i"),
            outer: format!("{prefix}.{}", block % 256 + 1),
            inner: format!("{prefix}.{}", block % 256 + 2),
        };
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.outer_link,
            "type",
            "veth",
            "peer",
            "name",
            &ns.inner_link,
        ]);
        ip(&["link", "set", &ns.inner_link, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.outer),
            "dev",
            &ns.outer_link,
        ]);
        ip(&["link", "set", &ns.outer_link, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&[
            "addr",
            "add",
            &format!("{}/30", ns.inner),
            "dev",
            &ns.inner_link,
        ]);
        inside(&["link", "set", &ns.inner_link, "up"]);
        inside(&["link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting either end removes the pair (here the outer one, should a process still
        // hold the namespace).
        let _ = Command::new("ip")
            .args(["link", "del", &self.outer_link])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        netns::delete(&self.name);
    }
}

/// baresip in the namespace, echoing audio; killed by PID on drop.
struct Baresip {
    child: Child,
    log: PathBuf,
}

impl Baresip {
    /// Starts baresip with one SRTP-mandatory account; `dial` makes it call that URI.
    fn start(ns: &Namespace, dir: &Path, dial: Option<&str>) -> Baresip {
        Baresip::start_with(ns, dir, dial, "")
    }

    /// [`Baresip::start`] with more lines of configuration (`extra`).
    fn start_with(ns: &Namespace, dir: &Path, dial: Option<&str>, extra: &str) -> Baresip {
        let config = format!(
            "poll_method\t\tepoll\n\
             sip_listen\t\t{inner}:5060\n\
             net_interface\t\t{link}\n\
             audio_source\t\taubridge,echo\n\
             audio_player\t\taubridge,echo\n\
             audio_alert\t\taubridge,alert\n\
             module_path\t\t/usr/lib/baresip/modules\n\
             module\t\t\tg711.so\n\
             module\t\t\taubridge.so\n\
             module\t\t\tsrtp.so\n\
             module_app\t\taccount.so\n\
             module_app\t\tmenu.so\n\
             rtp_ports\t\t7000-7100\n\
             ausrc_srate\t\t8000\n\
             auplay_srate\t\t8000\n\
             ausrc_channels\t\t1\n\
             auplay_channels\t\t1\n\
             {extra}",
            inner = ns.inner,
            link = ns.inner_link,
        );
        std::fs::write(dir.join("config"), config).expect("baresip config");
        std::fs::write(
            dir.join("accounts"),
            format!(
                "<sip:{TEAMS_USER}@{}>;regint=0;answermode=auto;mediaenc=srtp-mand;audio_codecs=PCMA\n",
                ns.inner
            ),
        )
        .expect("baresip accounts");
        let log = dir.join("baresip.log");
        let out = std::fs::File::create(&log).expect("baresip log");
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &ns.name, "baresip", "-s", "-t", "30", "-f"])
            .arg(dir)
            // Sound files from the scratch directory, that has none: a ringback tone on the
            // player would take over the echo device.
            .arg("-p")
            .arg(dir);
        if let Some(uri) = dial {
            command.args(["-e", &format!("/dial {uri}")]);
        }
        // `ip netns exec` execs baresip: the PID is baresip's.
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start baresip (Debian package baresip-core; tests/run.sh installs it)");
        Baresip { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until its log shows `line`.
    fn wait_for(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log().contains(line) {
            assert!(
                Instant::now() < deadline,
                "baresip never logged {line:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Baresip {
    /// Stops it with SIGTERM, on which it hangs up its calls (BYE) before it exits.
    fn hang_up(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Core on loopback, Teams (baresip, SRTP required) across the veth pair. Media ports are
/// on our veth address, which is also a local address for the core side's test socket.
fn profile(ns: &Namespace, base: u16) -> String {
    format!(
        "shards: 1
media:
  address: {outer}
  ports: {base}-{}
listeners:
  - name: core
    address: 127.0.0.1:{{core}}
  - name: teams
    address: {outer}:{{teams}}
trunks:
  - name: core
    listener: core
    peers: [\"127.0.0.1:{{softswitch}}\"]
    script: {{script}}
    route: teams
  - name: teams
    listener: teams
    peers: [\"{inner}:5060\"]
    script: {{script}}
    route: core
    srtp: required
",
        base + 9,
        outer = ns.outer,
        inner = ns.inner,
    )
}

/// Sends [`DIGITS`] as PCMA tones (100 ms on, 100 ms off) in real time from `socket` to
/// `toward`, and returns the digits heard in what came back, and from where it came.
fn echo_digits(socket: &UdpSocket, toward: SocketAddr) -> (String, Vec<SocketAddr>) {
    let mut audio = vec![0i16; 1600];
    for digit in DIGITS.chars() {
        let (row, column) = dtmf_frequencies(digit).expect("digit");
        audio.extend(tones(&[row, column], &[5000.0, 5000.0], 800, 0));
        audio.extend(std::iter::repeat_n(0i16, 800));
    }
    audio.extend(std::iter::repeat_n(0i16, 4000));
    socket.set_nonblocking(true).expect("nonblocking");
    let start = Instant::now();
    let mut heard: Vec<(u16, Vec<u8>)> = Vec::new();
    let mut sources = Vec::new();
    let mut buf = [0u8; 2048];
    for (seq, frame) in audio.chunks(160).enumerate() {
        let mut packet = vec![0x80, 8];
        packet.extend_from_slice(&(seq as u16).to_be_bytes());
        packet.extend_from_slice(&(seq as u32 * 160).to_be_bytes());
        packet.extend_from_slice(&0x0bad_cafe_u32.to_be_bytes());
        packet.extend(frame.iter().map(|s| linear_to_alaw(*s)));
        socket.send_to(&packet, toward).expect("send");
        let due = start + Duration::from_millis(20 * (seq as u64 + 1));
        while Instant::now() < due {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) if n > 12 && buf[1] & 0x7f == 8 => {
                    heard.push((u16::from_be_bytes([buf[2], buf[3]]), buf[12..n].to_vec()));
                    if !sources.contains(&from) {
                        sources.push(from);
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
    // Sequence order (a 16-bit wrap cannot happen in these few seconds).
    heard.sort_by_key(|(seq, _)| *seq);
    let mut detector = DtmfDetector::default();
    let digits = heard
        .iter()
        .filter_map(|(_, payload)| {
            let samples: Vec<i16> = payload.iter().map(|b| alaw_to_linear(*b)).collect();
            detector.push(&samples).map(|(digit, _)| digit)
        })
        .collect();
    (digits, sources)
}

/// The SIP message baresip received (its `-s` trace) that starts with `first_line`.
fn received_by_baresip<'a>(log: &'a str, first_line: &str) -> &'a str {
    let start = log
        .find(first_line)
        .unwrap_or_else(|| panic!("baresip never got {first_line:?}:\n{log}"));
    &log[start..]
}

#[test]
fn a_plain_rtp_call_to_baresip_carries_audio_both_ways_over_srtp() {
    let ns = Namespace::create();
    let base = media_range();
    let sbc = Sbc::start(&profile(&ns, base));
    let dir = scratch_dir("baresip-callee");
    let baresip = Baresip::start(&ns, &dir, None);
    baresip.wait_for("baresip is ready");
    let core_rtp = UdpSocket::bind("127.0.0.1:0").expect("core rtp");
    let args = media_caller(&sbc, "caller_media", &core_rtp, 6000);
    let mut caller = Sipp::start(&dir, "caller", &args);
    baresip.wait_for("Call established");

    // One shard: the callee leg (Teams) has the first port pair, the caller leg the second.
    let toward_core_leg: SocketAddr = format!("{}:{}", ns.outer, base + 2).parse().expect("addr");
    let (digits, sources) = echo_digits(&core_rtp, toward_core_leg);

    let status = caller.wait(Instant::now() + Duration::from_secs(30));
    let context = || format!("{}\n{}\n{}", caller.report(), baresip.log(), sbc.log());
    assert_eq!(digits, DIGITS, "echoed through baresip\n{}", context());
    assert_eq!(sources, [toward_core_leg], "{}", context());
    assert_eq!(status, Some(0), "caller\n{}", context());
    let log = baresip.log();
    assert!(
        log.contains("SRTP is Enabled (cryptosuite=AES_CM_128_HMAC_SHA1_80)"),
        "{log}"
    );
    let invite = received_by_baresip(&log, &format!("INVITE sip:{TEAMS_USER}@"));
    assert!(invite.contains("RTP/SAVP 8"), "{invite}");
    assert!(
        invite.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
        "{invite}"
    );
    let answer = caller
        .trace()
        .into_iter()
        .find(|m| m.received && m.is_response(200))
        .expect("200 at the core");
    assert!(answer.body().contains("RTP/AVP 8"), "{}", answer.text);
    assert!(!answer.body().contains("crypto"), "{}", answer.text);
}

#[test]
fn a_call_from_baresip_over_srtp_reaches_the_core_as_plain_rtp_and_back() {
    let ns = Namespace::create();
    let base = media_range();
    let sbc = Sbc::start(&profile(&ns, base));
    let dir = scratch_dir("baresip-caller");
    let core_rtp = UdpSocket::bind("127.0.0.1:0").expect("core rtp");
    let softswitch = sbc.port("softswitch");
    let rtp_port = core_rtp.local_addr().expect("addr").port();
    let args = callee_args("callee_media", softswitch, rtp_port, &[]);
    let mut callee = Sipp::start(&dir, "callee", &args);
    wait_listening(softswitch, Transport::Udp);
    let uri = format!("sip:+4930123456@{}:{}", ns.outer, sbc.port("teams"));
    let mut baresip = Baresip::start(&ns, &dir, Some(&uri));
    baresip.wait_for("Call established");

    // The callee leg (core) has the first port pair.
    let toward_core_leg: SocketAddr = format!("{}:{}", ns.outer, base).parse().expect("addr");
    let (digits, sources) = echo_digits(&core_rtp, toward_core_leg);
    baresip.hang_up();
    let status = callee.wait(Instant::now() + Duration::from_secs(10));
    let context = || format!("{}\n{}\n{}", callee.report(), baresip.log(), sbc.log());
    assert_eq!(digits, DIGITS, "echoed through baresip\n{}", context());
    assert_eq!(sources, [toward_core_leg], "{}", context());
    assert_eq!(status, Some(0), "callee\n{}", context());
    let invite = callee
        .trace()
        .into_iter()
        .find(|m| m.received && m.is_request("INVITE"))
        .expect("INVITE at the core");
    assert!(invite.body().contains("RTP/AVP 8"), "{}", invite.text);
    assert!(!invite.body().contains("crypto"), "{}", invite.text);
}

/// The TLS variant of [`profile`]: Bridgehead's Teams listener also takes TLS with a
/// certificate of `pki` for our veth address, and the Teams trunk reaches baresip over TLS
/// (its port 5061), trusting `pki`'s CA. Returns the profile and baresip's configuration lines
/// (its certificate and key in one file, and the CA).
fn tls_setup(ns: &Namespace, base: u16, dir: &Path) -> (String, String) {
    use common::pki::Pki;
    let pki = Pki::new(dir, "operator");
    let sbc_cert = pki.issue("sbc", &[&ns.outer], false);
    let (baresip_cert, baresip_key) = pki.issue("baresip", &[&ns.inner], false);
    // baresip takes its certificate and key in one file.
    let both = dir.join("baresip-both.pem");
    let pem = std::fs::read_to_string(&baresip_cert).expect("cert")
        + &std::fs::read_to_string(&baresip_key).expect("key");
    std::fs::write(&both, pem).expect("write");
    let profile = profile(ns, base)
        .replace(
            &format!("    address: {}:{{teams}}\n", ns.outer),
            &format!(
                "    address: {}:{{teams}}\n    transports: [udp, tls]\n    tls:\n      port: {{teams_tls}}\n      certificate: {}\n      key: {}\n",
                ns.outer,
                sbc_cert.0.display(),
                sbc_cert.1.display()
            ),
        )
        .replace(
            &format!("    peers: [\"{}:5060\"]\n", ns.inner),
            &format!(
                "    peers: [\"{}:5061\"]\n    transport: tls\n    tls:\n      ca: {}\n",
                ns.inner,
                pki.ca.display()
            ),
        );
    let extra = format!(
        "sip_certificate\t\t{}\nsip_cafile\t\t{}\n",
        both.display(),
        pki.ca.display()
    );
    (profile, extra)
}

#[test]
fn a_call_to_baresip_over_tls_carries_audio_both_ways_over_srtp() {
    let ns = Namespace::create();
    let base = media_range();
    let dir = scratch_dir("baresip-tls");
    let (profile, extra) = tls_setup(&ns, base, &dir);
    let sbc = Sbc::start(&profile);
    let baresip = Baresip::start_with(&ns, &dir, None, &extra);
    baresip.wait_for("baresip is ready");
    let core_rtp = UdpSocket::bind("127.0.0.1:0").expect("core rtp");
    let args = media_caller(&sbc, "caller_media", &core_rtp, 6000);
    let mut caller = Sipp::start(&dir, "caller", &args);
    baresip.wait_for("Call established");

    let toward_core_leg: SocketAddr = format!("{}:{}", ns.outer, base + 2).parse().expect("addr");
    let (digits, _) = echo_digits(&core_rtp, toward_core_leg);
    let status = caller.wait(Instant::now() + Duration::from_secs(30));
    let context = || format!("{}\n{}\n{}", caller.report(), baresip.log(), sbc.log());
    assert_eq!(digits, DIGITS, "echoed through baresip\n{}", context());
    assert_eq!(status, Some(0), "caller\n{}", context());
    let log = baresip.log();
    let invite = received_by_baresip(&log, &format!("INVITE sip:{TEAMS_USER}@"));
    assert!(
        invite.contains(&format!(
            "Via: SIP/2.0/TLS {}:{}",
            ns.outer,
            sbc.port("teams_tls")
        )),
        "{invite}"
    );
    assert!(invite.contains(";transport=tls>"), "{invite}");
    assert!(invite.contains("RTP/SAVP 8"), "{invite}");
}

#[test]
fn a_call_from_baresip_over_tls_reaches_the_core_and_audio_crosses_both_ways() {
    let ns = Namespace::create();
    let base = media_range();
    let dir = scratch_dir("baresip-tls-caller");
    let (profile, extra) = tls_setup(&ns, base, &dir);
    let sbc = Sbc::start(&profile);
    let core_rtp = UdpSocket::bind("127.0.0.1:0").expect("core rtp");
    let softswitch = sbc.port("softswitch");
    let rtp_port = core_rtp.local_addr().expect("addr").port();
    let args = callee_args("callee_media", softswitch, rtp_port, &[]);
    let mut callee = Sipp::start(&dir, "callee", &args);
    wait_listening(softswitch, Transport::Udp);
    let uri = format!(
        "sip:+4930123456@{}:{};transport=tls",
        ns.outer,
        sbc.port("teams_tls")
    );
    let mut baresip = Baresip::start_with(&ns, &dir, Some(&uri), &extra);
    baresip.wait_for("Call established");

    let toward_core_leg: SocketAddr = format!("{}:{}", ns.outer, base).parse().expect("addr");
    let (digits, _) = echo_digits(&core_rtp, toward_core_leg);
    baresip.hang_up();
    let status = callee.wait(Instant::now() + Duration::from_secs(10));
    let context = || format!("{}\n{}\n{}", callee.report(), baresip.log(), sbc.log());
    assert_eq!(digits, DIGITS, "echoed through baresip\n{}", context());
    assert_eq!(status, Some(0), "callee\n{}", context());
    let log = baresip.log();
    let ok = received_by_baresip(&log, "SIP/2.0 200 OK");
    let contact = format!(
        "Contact: <sip:+4930123456@{}:{};transport=tls>",
        ns.outer,
        sbc.port("teams_tls")
    );
    assert!(ok.contains(&contact), "the answer's Contact is TLS:\n{ok}");
}
