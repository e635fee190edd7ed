//! The SIP UDP sockets. Each shard binds every UDP listener's address itself
//! (`SO_REUSEPORT`, [`bind_udp`]) and receives on its own sockets ([`UdpSockets`]) with the
//! kernel's arrival stamp (`SO_TIMESTAMPNS`): the shard knows how long each datagram waited
//! for it, which is what overload control refuses late new calls by.

use crate::config::{ListenerId, Profile, Transport};
use crate::shared::{tos, Peer};
use crate::sip::{parse_message, Framing, Message, ParseError};
use bytes::Bytes;
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage,
};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The receive buffer each SIP UDP socket asks for (bytes).
const UDP_RECEIVE_BUFFER: usize = 8 << 20;

/// A UDP socket of the address's family, marked with a DSCP; with `shared`, other shards'
/// sockets may bind the same address (`SO_REUSEPORT`).
pub(super) fn udp_socket(
    address: SocketAddr,
    dscp: u8,
    shared: bool,
) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if shared {
        socket.set_reuse_port(true)?;
    }
    // A burst of datagrams while the shard is busy waits in the receive buffer: the default
    // (about 200 kB, a few milliseconds of signalling at thousands of calls/s) loses them, and
    // a lost datagram costs a retransmission half a second later. With CAP_NET_ADMIN the size
    // is forced; otherwise the kernel caps it at net.core.rmem_max.
    let forced = setsockopt(
        socket.as_raw_fd(),
        sockopt::RcvBufForce,
        &UDP_RECEIVE_BUFFER,
    );
    if forced.is_err() {
        if let Err(err) = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER) {
            tracing::debug!(%address, "cannot size the receive buffer: {err}");
        }
    }
    // The kernel stamps each datagram's arrival: the shard knows how long it waited.
    if let Err(err) = setsockopt(socket.as_raw_fd(), sockopt::ReceiveTimestampns, &true) {
        tracing::debug!(%address, "no arrival stamps: {err}");
    }
    let marked = if address.is_ipv4() {
        socket.set_tos_v4(tos(dscp))
    } else {
        socket.set_tclass_v6(tos(dscp))
    };
    if let Err(err) = marked {
        tracing::warn!(%address, "cannot set DSCP: {err}");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// Binds every UDP listener of the profile once per shard, all sockets of a listener on its one
/// address (the kernel spreads datagrams over them by source). Returns each shard's sockets;
/// fails before anything runs if one cannot be bound.
pub fn bind_udp(
    profile: &Profile,
    shards: usize,
) -> anyhow::Result<Vec<Vec<(ListenerId, std::net::UdpSocket)>>> {
    let mut bound: Vec<Vec<_>> = (0..shards).map(|_| Vec::new()).collect();
    for (id, listener) in profile.listeners.iter().enumerate() {
        if !listener.transports.contains(&Transport::Udp) {
            continue;
        }
        let cannot = |err: std::io::Error| {
            anyhow::anyhow!(
                "listener '{}': cannot bind UDP {}: {err}",
                listener.name,
                listener.address
            )
        };
        // SO_REUSEPORT would let a second Bridgehead (or anything of the same user asking for
        // it) share the address and silently take part of the traffic. A plain bind first
        // fails if anything holds the address now (a second listener on it included), and
        // picks a free port for a listener on port 0 (a reuse-port socket may be given one
        // another reuse-port socket holds). One shard needs no sharing at all.
        let shared = bound.len() > 1;
        let address = if shared {
            std::net::UdpSocket::bind(listener.address)
                .and_then(|probe| probe.local_addr())
                .map_err(cannot)?
        } else {
            listener.address
        };
        for sockets in &mut bound {
            let socket = udp_socket(address, listener.dscp, shared).map_err(cannot)?;
            sockets.push((id, socket));
        }
    }
    Ok(bound)
}

/// A datagram received: its length in the buffer, where it came from, and when the kernel
/// took it (now, where the kernel does not say).
#[derive(Clone, Copy, Debug)]
pub struct Datagram {
    pub len: usize,
    pub peer: Peer,
    pub received: Instant,
}

/// One shard's UDP sockets, one per UDP listener.
pub struct UdpSockets {
    sockets: Vec<(ListenerId, UdpSocket)>,
    /// The socket a receive tries first: each gets its turn, so a busy one cannot starve the
    /// others.
    next: std::cell::Cell<usize>,
    /// Room for the arrival stamp's control message, kept between receives.
    control: std::cell::RefCell<Vec<u8>>,
}

impl UdpSockets {
    /// Registers a shard's sockets with the runtime it runs on (call it there).
    pub fn new(bound: Vec<(ListenerId, std::net::UdpSocket)>) -> std::io::Result<UdpSockets> {
        let sockets = bound
            .into_iter()
            .map(|(id, socket)| Ok((id, UdpSocket::from_std(socket)?)))
            .collect::<std::io::Result<_>>()?;
        Ok(UdpSockets {
            sockets,
            next: std::cell::Cell::new(0),
            control: std::cell::RefCell::new(nix::cmsg_space!(nix::sys::time::TimeSpec)),
        })
    }

    /// Waits for a datagram on any of the sockets; its bytes are in `buf`. A receive error
    /// (an ICMP unreachable surfacing, say) is logged and waited past.
    pub async fn recv(&self, buf: &mut [u8]) -> Datagram {
        std::future::poll_fn(|cx| {
            if let Some(datagram) = self.try_recv(buf) {
                return Poll::Ready(datagram);
            }
            // Nothing waiting: wait for readiness. A socket tokio still takes for ready (it
            // was read past its readiness) is read through it, which clears the readiness
            // at the first WouldBlock; polling again then registers the waker.
            for (listener, socket) in &self.sockets {
                // Twice at most: a stale readiness is cleared by the first WouldBlock.
                for _ in 0..2 {
                    let Poll::Ready(ready) = socket.poll_recv_ready(cx) else {
                        break;
                    };
                    let received = ready.and_then(|()| {
                        socket.try_io(Interest::READABLE, || self.receive(*listener, socket, buf))
                    });
                    match received {
                        Ok(datagram) => return Poll::Ready(datagram),
                        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(err) => {
                            tracing::debug!("UDP receive error: {err}");
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    }
                }
            }
            Poll::Pending
        })
        .await
    }

    /// A datagram already waiting on any of the sockets, without waiting: each socket is asked
    /// in turn (starting after the last one read, so that a busy one cannot starve the
    /// others), and asked itself, not tokio's record of its readiness, which is only renewed
    /// when the shard waits: a shard kept busy by one socket would not see the others'.
    pub fn try_recv(&self, buf: &mut [u8]) -> Option<Datagram> {
        let count = self.sockets.len();
        let first = self.next.get();
        (0..count).find_map(|turn| {
            let at = (first + turn) % count;
            let (listener, socket) = &self.sockets[at];
            match self.receive(*listener, socket, buf) {
                Ok(datagram) => {
                    self.next.set((at + 1) % count);
                    Some(datagram)
                }
                Err(err) => {
                    if err.kind() != std::io::ErrorKind::WouldBlock {
                        tracing::debug!("UDP receive error: {err}");
                    }
                    None
                }
            }
        })
    }

    /// Receives a datagram from `socket` if one is there (a non-blocking `recvmsg`), with its
    /// arrival stamp.
    fn receive(
        &self,
        listener: ListenerId,
        socket: &UdpSocket,
        buf: &mut [u8],
    ) -> std::io::Result<Datagram> {
        let mut control = self.control.borrow_mut();
        let mut iov = [std::io::IoSliceMut::new(buf)];
        let msg = recvmsg::<SockaddrStorage>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut control),
            MsgFlags::MSG_DONTWAIT,
        )?;
        let stamp = msg.cmsgs().find_map(|cmsg| match cmsg {
            ControlMessageOwned::ScmTimestampns(at) => Some(at),
            _ => None,
        });
        let len = msg.bytes;
        let addr = msg.address.and_then(socket_addr).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "no source address")
        })?;
        Ok(Datagram {
            len,
            peer: udp_peer(listener, addr),
            received: arrival(stamp, Instant::now(), SystemTime::now()),
        })
    }

    /// Sends a datagram from the listener's socket. The error says why it could not go.
    pub async fn send(&self, peer: &Peer, bytes: &[u8]) -> Result<(), String> {
        let Some((_, socket)) = self.sockets.iter().find(|(id, _)| *id == peer.listener) else {
            return Err("the listener has no UDP".to_string());
        };
        let sent = match socket.try_send_to(bytes, peer.addr) {
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                socket.send_to(bytes, peer.addr).await
            }
            other => other,
        };
        sent.map(|_| ())
            .map_err(|err| format!("UDP send of {} bytes failed: {err}", bytes.len()))
    }
}

/// A received datagram's source as the standard library names it.
fn socket_addr(addr: SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// A wait longer than this is a wall clock stepped forward, not a wait.
const MAX_WAIT: Duration = Duration::from_secs(10);

/// When a datagram stamped `stamp` (the kernel's wall clock) arrived, on the monotonic clock:
/// `now` less what the wall clock says it waited. No stamp, one ahead of the wall clock (a
/// clock stepped back) or one implausibly old (stepped forward) is taken as arriving now.
fn arrival(stamp: Option<nix::sys::time::TimeSpec>, now: Instant, wall: SystemTime) -> Instant {
    let Some(stamp) = stamp else { return now };
    let since_epoch = Duration::new(
        u64::try_from(stamp.tv_sec()).unwrap_or(0),
        u32::try_from(stamp.tv_nsec()).unwrap_or(0),
    );
    let waited = wall
        .duration_since(SystemTime::UNIX_EPOCH + since_epoch)
        .unwrap_or_default();
    if waited > MAX_WAIT {
        return now;
    }
    now.checked_sub(waited).unwrap_or(now)
}

fn udp_peer(listener: ListenerId, addr: SocketAddr) -> Peer {
    Peer {
        listener,
        transport: Transport::Udp,
        addr,
        conn: None,
    }
}

/// A datagram as the engine takes it: its bytes (the message shares them), and the message
/// parsed, or what could be read of it. None for a keep-alive (RFC 5626 CRLF ping), which
/// needs no answer over UDP.
pub fn parse_datagram(data: &[u8]) -> Option<(Bytes, Result<Message, ParseError>)> {
    if data.iter().all(|b| *b == b'\r' || *b == b'\n') {
        return None;
    }
    let bytes = Bytes::copy_from_slice(data);
    let parsed = parse_message(&bytes, Framing::Datagram).map(|(m, _)| m);
    Some((bytes, parsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_udp_address_in_use_is_refused_and_the_shards_share_a_free_one() {
        let profile = |port: u16| {
            let text = format!(
                "listeners:\n  - name: core\n    address: 127.0.0.1:{port}\n    transports: [udp]\ntrunks: []\n"
            );
            Profile::parse(std::path::Path::new("t.yaml"), &text).expect("profile")
        };
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let port = taken.local_addr().expect("addr").port();
        let refused = bind_udp(&profile(port), 2).map(|_| ()).expect_err("in use");
        assert!(refused.to_string().contains("cannot bind UDP"), "{refused}");
        drop(taken);
        let bound = bind_udp(&profile(port), 3).expect("free now");
        assert_eq!(bound.len(), 3);
        for sockets in &bound {
            assert_eq!(sockets[0].1.local_addr().expect("addr").port(), port);
        }
    }

    #[tokio::test]
    async fn a_datagram_carries_how_long_it_waited_for_the_shard() {
        let bound = udp_socket("127.0.0.1:0".parse().expect("addr"), 0, false).expect("udp");
        let to = bound.local_addr().expect("addr");
        let sockets = UdpSockets::new(vec![(0, bound)]).expect("sockets");
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let mut buf = [0u8; 64];
        // The kernel turns stamping on a moment after it is asked for (deferred work): until
        // then a datagram has no stamp and is taken as arriving when read.
        sender.send_to(b"warm-up", to).expect("send");
        sockets.recv(&mut buf).await;
        std::thread::sleep(Duration::from_millis(20));
        sender.send_to(b"first", to).expect("send");
        let sent = Instant::now();
        std::thread::sleep(Duration::from_millis(200));
        let first = sockets.recv(&mut buf).await;
        assert_eq!(&buf[..first.len], b"first");
        assert_eq!(first.peer.addr, sender.local_addr().expect("addr"));
        let waited = first.received.elapsed();
        assert!(
            waited >= Duration::from_millis(195)
                && first.received <= sent + Duration::from_millis(5),
            "waited {waited:?}"
        );
        assert!(sockets.try_recv(&mut buf).is_none());
        sender.send_to(b"second", to).expect("send");
        let second = sockets.recv(&mut buf).await;
        assert!(second.received.elapsed() < Duration::from_millis(150));
    }

    #[test]
    fn an_arrival_stamp_ahead_of_the_wall_clock_is_now() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let epoch = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970");
        let stamp = |at: Duration| {
            Some(nix::sys::time::TimeSpec::new(
                at.as_secs() as i64,
                i64::from(at.subsec_nanos()),
            ))
        };
        assert_eq!(arrival(None, now, wall), now);
        let earlier = arrival(stamp(epoch - Duration::from_millis(300)), now, wall);
        assert_eq!(now - earlier, Duration::from_millis(300));
        assert_eq!(
            arrival(stamp(epoch + Duration::from_secs(5)), now, wall),
            now
        );
        assert_eq!(
            arrival(stamp(epoch - Duration::from_secs(60)), now, wall),
            now,
            "a clock stepped forward"
        );
    }
}
