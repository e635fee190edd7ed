//! Media load generator for `bench/media.sh`: N anchored calls through Bridgehead's relay on
//! loopback, G.711 packets (172 bytes) every 20 ms in both directions, for S seconds. Prints
//! what was sent, relayed and lost, and the process's CPU.
//!
//! `cargo run --release --example media_load -- CALLS SECONDS [srtp]`
//!
//! With `srtp`, the callee side is SRTP: the relay encrypts toward it and decrypts from it
//! (the generator encrypts and decrypts too, in the same process).

use bridgehead::config::MediaConfig;
use bridgehead::media::relay::Relay;
use bridgehead::media::{MediaCallId, MediaCommand, Side, SrtpKey, Stream, Suite};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

/// Below Linux's ephemeral ports (32768 and up), where the generator's own sockets land.
const FIRST_PORT: u16 = 20000;

fn rtp(seq: u16) -> Vec<u8> {
    let mut packet = vec![0x80, 8];
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    packet.extend_from_slice(&0x0bad_cafeu32.to_be_bytes());
    packet.extend(std::iter::repeat_n(0xd5, 160));
    packet
}

fn context(key: &SrtpKey) -> Context {
    Context::new(
        &key.key,
        &key.salt,
        ProtectionProfile::Aes128CmHmacSha1_80,
        None,
        None,
    )
    .expect("srtp context")
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let calls: u16 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let srtp = args.get(3).is_some_and(|a| a == "srtp");
    let config = MediaConfig {
        address: "127.0.0.1".parse().expect("ip"),
        advertise: "127.0.0.1".into(),
        ports: (FIRST_PORT, FIRST_PORT + 4 * calls + 3),
        strict_source: false,
        rtp_timeout: 0,
        ringback: Default::default(),
        no_ports: Default::default(),
        bound_ahead: 0,
    };
    let relay = Relay::new(&config, Arc::new(|_, _| {}));
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // Senders start once every stream's sockets are bound.
    let start = tokio::time::Instant::now() + Duration::from_millis(500);
    let deadline = start + Duration::from_secs(seconds);
    let mut random = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    for call in 0..calls {
        let caller = UdpSocket::bind("127.0.0.1:0").await.expect("caller");
        let callee = UdpSocket::bind("127.0.0.1:0").await.expect("callee");
        let a_local = FIRST_PORT + 4 * call;
        let b_local = a_local + 2;
        let toward_callee = SrtpKey::generate(&mut random, 1, Suite::AesCm128HmacSha1_80);
        let from_callee = SrtpKey::generate(&mut random, 1, Suite::AesCm128HmacSha1_80);
        let side = |local: u16, remote: SocketAddr| Side {
            local,
            advertised: true,
            remote: Some(remote),
            remote_rtcp: Some(remote),
            sends: true,
            ..Side::default()
        };
        let mut b = side(b_local, callee.local_addr().expect("addr"));
        if srtp {
            b.local_key = Some(toward_callee);
            b.remote_key = Some(from_callee);
        }
        let stream = Stream {
            index: 0,
            a: side(a_local, caller.local_addr().expect("addr")),
            b,
        };
        relay.apply(MediaCommand::Stream {
            call: MediaCallId {
                shard: 0,
                call: u64::from(call),
            },
            stream: Box::new(stream),
        });
        let (caller, callee) = (Arc::new(caller), Arc::new(callee));
        let a_addr: SocketAddr = (
            "127.0.0.1".parse::<std::net::IpAddr>().expect("ip"),
            a_local,
        )
            .into();
        let b_addr: SocketAddr = (
            "127.0.0.1".parse::<std::net::IpAddr>().expect("ip"),
            b_local,
        )
            .into();
        // Senders: 50 packets/s each way, the callee's encrypted when SRTP.
        for (socket, to, encrypt) in [
            (caller.clone(), a_addr, None),
            (callee.clone(), b_addr, srtp.then(|| context(&from_callee))),
        ] {
            let sent = sent.clone();
            tasks.push(tokio::spawn(async move {
                let mut encrypt = encrypt;
                let mut tick = tokio::time::interval_at(start, Duration::from_millis(20));
                let mut seq = 0u16;
                while tokio::time::Instant::now() < deadline {
                    tick.tick().await;
                    let packet = rtp(seq);
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
        // Receivers: the callee decrypts what the relay encrypted toward it.
        for (socket, decrypt) in [
            (caller, None),
            (callee, srtp.then(|| context(&toward_callee))),
        ] {
            let received = received.clone();
            tasks.push(tokio::spawn(async move {
                let mut decrypt = decrypt;
                let mut buf = [0u8; 2048];
                let until = deadline + Duration::from_millis(500);
                while let Ok(Ok((n, _))) =
                    tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await
                {
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
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    for task in tasks {
        let _ = task.await;
    }
    let (cpu, wall) = (cpu_seconds() - cpu0, wall0.elapsed().as_secs_f64());
    let (sent, received) = (
        sent.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
    );
    let relayed = relay.stats.packets.load(Ordering::Relaxed);
    let lost = sent.saturating_sub(received);
    println!(
        "calls {calls:>5}  {}  sent {sent:>9}  relayed {relayed:>9}  received {received:>9}  lost {lost:>6} ({:.3} %)  relay {:>8.0} packets/s  process CPU {:.0} %",
        if srtp { "srtp<->rtp" } else { "rtp<->rtp " },
        100.0 * lost as f64 / sent.max(1) as f64,
        relayed as f64 / wall,
        100.0 * cpu / wall
    );
}
