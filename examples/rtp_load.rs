//! The load generator of `bench/compare-media.sh`, in a process of its own: N calls of G.711
//! at 50 packets/s each way (172-byte RTP, 20 ms) through a relay, RTP<->RTP or SRTP<->RTP
//! (the callee leg SRTP). It counts what came through, and reads the relay process's CPU
//! from /proc at the start and the end of the sending window.
//!
//! ```text
//! rtp_load CALLS SECONDS rtp|srtp bridgehead RELAY_FIRST_PORT GENERATOR_FIRST_PORT RELAY_PID
//! rtp_load CALLS SECONDS rtp|srtp rtpengine  NG_ADDRESS       GENERATOR_FIRST_PORT RELAY_PID
//! ```
//!
//! With `bridgehead` the calls are the ones `examples/media_relay.rs` anchored (same port
//! layout and keys). With `rtpengine` each call is set up over rtpengine's ng control
//! protocol: an offer with the caller's SDP (`transport-protocol: RTP/SAVP` for SRTP toward
//! the callee), then an answer with the callee's; the relay's ports and its SDES key come
//! from the SDPs it returns. Prints one line of figures.

#[path = "media_bench/mod.rs"]
mod media_bench;

use bridgehead::media::SrtpKey;
use bridgehead::sdp::Sdp;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

/// Where one call's packets go, and with which keys.
struct Call {
    /// The relay's ports facing the caller and the callee.
    relay: (SocketAddr, SocketAddr),
    /// SRTP: the key the callee encrypts with, and the relay's toward it.
    callee_keys: Option<(SrtpKey, SrtpKey)>,
}

fn context(key: &SrtpKey) -> Context {
    Context::new(
        &key.key,
        &key.salt,
        ProtectionProfile::Aes128CmHmacSha1_80,
        None,
        None,
    )
    .expect("an SRTP context")
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// An ng request (bencoded, keys in sorted order).
#[derive(Serialize)]
struct NgRequest<'a> {
    #[serde(rename = "call-id")]
    call_id: &'a str,
    command: &'a str,
    #[serde(rename = "from-tag")]
    from_tag: &'a str,
    sdp: &'a str,
    #[serde(rename = "to-tag", skip_serializing_if = "Option::is_none")]
    to_tag: Option<&'a str>,
    #[serde(rename = "transport-protocol", skip_serializing_if = "Option::is_none")]
    transport_protocol: Option<&'a str>,
}

#[derive(Deserialize)]
struct NgReply {
    result: String,
    sdp: Option<String>,
    #[serde(rename = "error-reason")]
    error_reason: Option<String>,
}

/// Sends one ng request and returns the SDP of the answer.
async fn ng(socket: &UdpSocket, cookie: &str, request: &NgRequest<'_>) -> Sdp {
    let mut message = format!("{cookie} ").into_bytes();
    message.extend(serde_bencode::to_bytes(request).expect("bencode"));
    socket.send(&message).await.expect("ng send");
    let mut buf = vec![0u8; 65_536];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("rtpengine answers within 5 s")
        .expect("ng receive");
    let body = &buf[cookie.len() + 1..n];
    let reply: NgReply = serde_bencode::from_bytes(body).expect("an ng reply");
    assert_eq!(
        reply.result, "ok",
        "rtpengine refused {}: {:?}",
        request.command, reply.error_reason
    );
    Sdp::parse(reply.sdp.expect("an SDP").as_bytes()).expect("rtpengine's SDP")
}

fn sdp(port: u16, session: u16, srtp: Option<&SrtpKey>) -> String {
    let (proto, crypto) = match srtp {
        Some(key) => ("RTP/SAVP", format!("a=crypto:{}\r\n", key.attribute())),
        None => ("RTP/AVP", String::new()),
    };
    format!(
        "v=0\r\no=- {session} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} {proto} 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n{crypto}"
    )
}

/// Sets call `i` up in rtpengine: its ports and, for SRTP, its key toward the callee.
async fn rtpengine_call(ng_socket: &UdpSocket, i: u16, generator_first: u16, srtp: bool) -> Call {
    let (caller, callee) = media_bench::generator_ports(generator_first, i);
    let (call_id, from_tag, to_tag) = (format!("bench-{i}"), format!("a{i}"), format!("b{i}"));
    let offer_sdp = sdp(caller, i, None);
    let offered = ng(
        ng_socket,
        &format!("o{i}"),
        &NgRequest {
            call_id: &call_id,
            command: "offer",
            from_tag: &from_tag,
            sdp: &offer_sdp,
            to_tag: None,
            transport_protocol: srtp.then_some("RTP/SAVP"),
        },
    )
    .await;
    let toward_callee = offered.media().first().expect("an m= line");
    let relay_b = local(toward_callee.port());
    // The relay's own key toward the callee: the offered line of the suite used here; the
    // callee answers with that tag and a key of its own.
    let relay_key = srtp.then(|| {
        toward_callee
            .crypto()
            .iter()
            .filter_map(SrtpKey::from_crypto)
            .find(|key| key.suite == media_bench::SUITE && key.mki_len == 0)
            .expect("rtpengine offers AES_CM_128_HMAC_SHA1_80")
    });
    let callee_key = relay_key.as_ref().map(|relay_key| SrtpKey {
        tag: relay_key.tag,
        ..media_bench::callee_keys(i).1
    });
    let answer_sdp = sdp(callee, i, callee_key.as_ref());
    let answered = ng(
        ng_socket,
        &format!("a{i}"),
        &NgRequest {
            call_id: &call_id,
            command: "answer",
            from_tag: &from_tag,
            sdp: &answer_sdp,
            to_tag: Some(&to_tag),
            transport_protocol: None,
        },
    )
    .await;
    let relay_a = local(answered.media().first().expect("an m= line").port());
    Call {
        relay: (relay_a, relay_b),
        callee_keys: callee_key.zip(relay_key),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: rtp_load CALLS SECONDS rtp|srtp bridgehead|rtpengine RELAY_FIRST_PORT|NG_ADDRESS GENERATOR_FIRST_PORT RELAY_PID";
    let arg = |i: usize| args.get(i).unwrap_or_else(|| panic!("{usage}")).as_str();
    let calls: u16 = arg(1).parse().expect("CALLS");
    let seconds: u64 = arg(2).parse().expect("SECONDS");
    let srtp = arg(3) == "srtp";
    let relay_kind = arg(4);
    let generator_first: u16 = arg(6).parse().expect("GENERATOR_FIRST_PORT");
    let relay_pid: u32 = arg(7).parse().expect("RELAY_PID");
    let mut setups = Vec::with_capacity(usize::from(calls));
    match relay_kind {
        "bridgehead" => {
            let relay_first: u16 = arg(5).parse().expect("RELAY_FIRST_PORT");
            for i in 0..calls {
                let (a, b) = media_bench::relay_ports(relay_first, i);
                setups.push(Call {
                    relay: (local(a), local(b)),
                    callee_keys: srtp.then(|| {
                        let (toward_callee, from_callee) = media_bench::callee_keys(i);
                        (from_callee, toward_callee)
                    }),
                });
            }
        }
        "rtpengine" => {
            let socket = UdpSocket::bind("127.0.0.1:0").await.expect("ng socket");
            socket.connect(arg(5)).await.expect("NG_ADDRESS");
            for i in 0..calls {
                setups.push(rtpengine_call(&socket, i, generator_first, srtp).await);
            }
        }
        _ => panic!("{usage}"),
    }
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now() + Duration::from_millis(500);
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for (i, call) in setups.into_iter().enumerate() {
        let i = i as u16;
        let (caller_port, callee_port) = media_bench::generator_ports(generator_first, i);
        let caller = Arc::new(
            UdpSocket::bind(local(caller_port))
                .await
                .expect("caller port"),
        );
        let callee = Arc::new(
            UdpSocket::bind(local(callee_port))
                .await
                .expect("callee port"),
        );
        // The calls' 20 ms ticks are spread over the 20 ms, as real calls' are.
        let first = start + Duration::from_micros(u64::from(i % 1000) * 20);
        let (encrypt, decrypt) = match &call.callee_keys {
            Some((own, relays)) => (Some(context(own)), Some(context(relays))),
            None => (None, None),
        };
        for (socket, to, encrypt, ssrc) in [
            (
                caller.clone(),
                call.relay.0,
                None,
                0x0a00_0000 | u32::from(i),
            ),
            (
                callee.clone(),
                call.relay.1,
                encrypt,
                0x0b00_0000 | u32::from(i),
            ),
        ] {
            let sent = sent.clone();
            tasks.push(tokio::spawn(async move {
                let mut encrypt = encrypt;
                let mut tick = tokio::time::interval_at(first, Duration::from_millis(20));
                let mut seq = 0u16;
                while tokio::time::Instant::now() < deadline {
                    tick.tick().await;
                    let packet = media_bench::rtp(seq, ssrc);
                    let packet = match &mut encrypt {
                        Some(ctx) => ctx.encrypt_rtp(&packet).expect("encrypt").to_vec(),
                        None => packet,
                    };
                    if socket.send_to(&packet, to).await.is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    seq = seq.wrapping_add(1);
                }
            }));
        }
        for (socket, decrypt) in [(caller, None), (callee, decrypt)] {
            let received = received.clone();
            tasks.push(tokio::spawn(async move {
                let mut decrypt = decrypt;
                let mut buf = [0u8; 2048];
                let until = deadline + Duration::from_millis(500);
                while let Ok(Ok(n)) = tokio::time::timeout_at(until, socket.recv(&mut buf)).await {
                    let ok = match &mut decrypt {
                        Some(ctx) => ctx.decrypt_rtp(&buf[..n]).is_ok(),
                        None => true,
                    };
                    if ok {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    tokio::time::sleep_until(start).await;
    let cpu_start = media_bench::cpu_seconds(relay_pid);
    tokio::time::sleep_until(deadline).await;
    let cpu = media_bench::cpu_seconds(relay_pid) - cpu_start;
    for task in tasks {
        let _ = task.await;
    }
    let (sent, received) = (
        sent.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
    );
    let lost = sent.saturating_sub(received);
    let window = seconds as f64;
    println!(
        "{relay_kind:<10} {:<10} calls {calls:>5}  sent {sent:>9}  received {received:>9}  lost {lost:>7} ({:.3} %)  relayed {:>7.0} packets/s  relay CPU {:>5.1} %  {:>6.2} CPU s per million packets  {:>7.0} packets/s per core",
        if srtp { "srtp<->rtp" } else { "rtp<->rtp" },
        100.0 * lost as f64 / sent.max(1) as f64,
        received as f64 / window,
        100.0 * cpu / window,
        cpu / (received.max(1) as f64 / 1e6),
        if cpu > 0.0 { received as f64 / cpu } else { 0.0 },
    );
}
