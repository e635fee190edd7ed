//! The RTP/RTCP relay (tokio): one task per anchored stream, four sockets (RTP and RTCP facing
//! each leg), packets copied from one leg to the other through a fixed buffer. Symmetric RTP:
//! media goes back to where a leg's media comes from (latching), unless the profile asks for
//! strict sources. RTCP multiplexed on the RTP port (RFC 5761) on one leg and on its own port
//! on the other is sorted by payload type.

use super::{MediaCommand, Side, Stream};
use crate::config::MediaConfig;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the relay moved.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Packets from an address the stream does not accept (strict sources).
    pub dropped: AtomicU64,
    /// Streams that could not bind their ports.
    pub bind_failures: AtomicU64,
    /// Streams running now.
    pub streams: AtomicU64,
}

struct Running {
    update: watch::Sender<Stream>,
    task: Option<JoinHandle<()>>,
}

/// The relay of one process.
pub struct Relay {
    address: IpAddr,
    strict: bool,
    calls: Mutex<HashMap<u64, Vec<Running>>>,
    pub stats: Arc<RelayStats>,
}

impl Relay {
    pub fn new(config: &MediaConfig) -> Arc<Relay> {
        Arc::new(Relay {
            address: config.address,
            strict: config.strict_source,
            calls: Mutex::new(HashMap::new()),
            stats: Arc::new(RelayStats::default()),
        })
    }

    /// Carries out an engine command. Must run inside the tokio runtime.
    pub fn apply(&self, command: MediaCommand) {
        let mut calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        match command {
            MediaCommand::Close { call } => {
                for running in calls.remove(&call).into_iter().flatten() {
                    if let Some(task) = running.task {
                        task.abort();
                        self.stats.streams.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            MediaCommand::Stream { call, stream } => {
                let streams = calls.entry(call).or_default();
                while streams.len() <= stream.index {
                    let (update, _) = watch::channel(Stream::default());
                    streams.push(Running { update, task: None });
                }
                let running = &mut streams[stream.index];
                running.update.send_replace(stream);
                // Both legs' ports are known once the answer is anchored: start relaying.
                if running.task.is_none() && stream.a.local != 0 && stream.b.local != 0 {
                    let updates = running.update.subscribe();
                    running.task = Some(tokio::spawn(relay_stream(
                        self.address,
                        self.strict,
                        updates,
                        self.stats.clone(),
                    )));
                    self.stats.streams.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The sockets facing one leg, and where that leg's media really comes from.
struct Leg {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    /// The source of the leg's last RTP packet (symmetric RTP).
    latched: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
}

impl Leg {
    async fn bind(address: IpAddr, port: u16) -> std::io::Result<Leg> {
        Ok(Leg {
            rtp: UdpSocket::bind((address, port)).await?,
            rtcp: UdpSocket::bind((address, port.wrapping_add(1))).await?,
            latched: None,
            latched_rtcp: None,
        })
    }
}

/// RTCP packet types 200-204 (SR, RR, SDES, BYE, APP) and 205-207 (feedback, XR) sit where
/// RTP has marker + payload type; RTP payload types never use 72-79 with the marker set.
fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 2 && (192..=223).contains(&packet[1])
}

/// Whether a packet from `source` is accepted from a leg whose SDP named `expected`.
fn accepted(strict: bool, expected: Option<SocketAddr>, source: SocketAddr) -> bool {
    !strict || expected.is_none_or(|e| e.ip() == source.ip())
}

async fn relay_stream(
    address: IpAddr,
    strict: bool,
    mut updates: watch::Receiver<Stream>,
    stats: Arc<RelayStats>,
) {
    let stream = *updates.borrow_and_update();
    let (mut a, mut b) = match (
        Leg::bind(address, stream.a.local).await,
        Leg::bind(address, stream.b.local).await,
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(err), _) | (_, Err(err)) => {
            stats.bind_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                a = stream.a.local,
                b = stream.b.local,
                "media: cannot bind the stream's ports: {err}"
            );
            return;
        }
    };
    let mut sides = (stream.a, stream.b);
    let mut from_a = [0u8; 2048];
    let mut from_b = [0u8; 2048];
    let mut rtcp_a = [0u8; 2048];
    let mut rtcp_b = [0u8; 2048];
    loop {
        tokio::select! {
            changed = updates.changed() => {
                if changed.is_err() {
                    return;
                }
                let stream = *updates.borrow_and_update();
                sides = (stream.a, stream.b);
            }
            Ok((n, source)) = a.rtp.recv_from(&mut from_a) => {
                forward(&from_a[..n], source, false, (&mut a, &sides.0), (&b, &sides.1), strict, &stats).await;
            }
            Ok((n, source)) = b.rtp.recv_from(&mut from_b) => {
                forward(&from_b[..n], source, false, (&mut b, &sides.1), (&a, &sides.0), strict, &stats).await;
            }
            Ok((n, source)) = a.rtcp.recv_from(&mut rtcp_a) => {
                forward(&rtcp_a[..n], source, true, (&mut a, &sides.0), (&b, &sides.1), strict, &stats).await;
            }
            Ok((n, source)) = b.rtcp.recv_from(&mut rtcp_b) => {
                forward(&rtcp_b[..n], source, true, (&mut b, &sides.1), (&a, &sides.0), strict, &stats).await;
            }
        }
    }
}

/// Sends a packet that arrived from one leg on to the other.
async fn forward(
    packet: &[u8],
    source: SocketAddr,
    on_rtcp_port: bool,
    (from, from_side): (&mut Leg, &Side),
    (to, to_side): (&Leg, &Side),
    strict: bool,
    stats: &RelayStats,
) {
    let rtcp = on_rtcp_port || is_rtcp(packet);
    let expected = if rtcp {
        from_side.remote_rtcp
    } else {
        from_side.remote
    };
    if !accepted(strict, expected, source) {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if on_rtcp_port {
        from.latched_rtcp = Some(source);
    } else if !rtcp {
        from.latched = Some(source);
    }
    // Where the other leg wants it: where its media comes from, else what its SDP says.
    let (socket, destination) = if rtcp {
        let muxed = to_side.remote_rtcp.is_some() && to_side.remote_rtcp == to_side.remote;
        if muxed {
            (&to.rtp, to.latched.or(to_side.remote))
        } else {
            (&to.rtcp, to.latched_rtcp.or(to_side.remote_rtcp))
        }
    } else {
        (&to.rtp, to.latched.or(to_side.remote))
    };
    let Some(destination) = destination else {
        return;
    };
    if socket.send_to(packet, destination).await.is_ok() {
        stats.packets.fetch_add(1, Ordering::Relaxed);
        stats
            .bytes
            .fetch_add(packet.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtcp_is_told_from_rtp_by_payload_type() {
        assert!(is_rtcp(&[0x80, 200, 0, 6]));
        assert!(is_rtcp(&[0x81, 201, 0, 7]));
        assert!(!is_rtcp(&[0x80, 8, 0, 1]));
        assert!(!is_rtcp(&[0x80, 0x80 | 101, 0, 1]));
        assert!(!is_rtcp(&[0x80]));
    }

    #[test]
    fn strict_sources_accept_only_the_sdp_address() {
        let sdp: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        assert!(accepted(
            false,
            Some(sdp),
            "198.51.100.1:9".parse().unwrap()
        ));
        assert!(accepted(true, Some(sdp), "192.0.2.1:4002".parse().unwrap()));
        assert!(!accepted(
            true,
            Some(sdp),
            "198.51.100.1:4000".parse().unwrap()
        ));
        assert!(accepted(true, None, "198.51.100.1:4000".parse().unwrap()));
    }
}
