//! What both drivers of the relay ([`super::relay`]'s tokio tasks, [`super::uring`]'s
//! io_uring workers) share: the counters, where events go, the settings every stream runs
//! with, and the sockets of a port pair (taken from the ones bound ahead, or bound here).

use super::stream::StreamSettings;
use super::{MediaCallId, MediaEvent};
use crate::config::DEFAULT_MEDIA_DSCP;
use crate::shared::tos;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// What the relay moved.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    /// Packets from an address the stream does not accept (strict sources).
    pub dropped: AtomicU64,
    /// Streams that could not bind their ports.
    pub bind_failures: AtomicU64,
    /// SRTP/SRTCP packets that failed authentication or replay checks (dropped).
    pub srtp_failures: AtomicU64,
    /// Streams running now.
    pub streams: AtomicU64,
    /// The driver moving the packets (`io_uring` or `tokio`) and its threads (0 for tokio:
    /// the shared runtime's).
    pub driver: std::sync::OnceLock<(&'static str, usize)>,
}

/// Where the relay reports media events: the call's relay id and the event.
pub type EventSink = Arc<dyn Fn(MediaCallId, MediaEvent) + Send + Sync>;

/// What every stream runs with.
#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) address: IpAddr,
    pub(crate) stream: StreamSettings,
    pub(crate) reserved: Reserved,
}

/// Sockets bound for ports the engines' pools handed out, until a stream takes them.
pub(crate) type Reserved = Arc<Mutex<HashMap<u16, (std::net::UdpSocket, std::net::UdpSocket)>>>;

/// The RTP and RTCP sockets for `port`: the ones the pool bound, or freshly bound ones (port
/// 0, in tests: any free ports); marked with the default media DSCP.
pub(crate) fn take_or_bind(
    address: IpAddr,
    port: u16,
    reserved: &Reserved,
) -> std::io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
    match lock(reserved).remove(&port) {
        Some(pair) => Ok(pair),
        None => bind_pair(address, port),
    }
}

/// Binds the RTP and RTCP sockets of `port` (0: any two ports): non-blocking from the start,
/// and marked with the default media DSCP (most trunks' own, so most streams need no marking
/// of their own).
pub(crate) fn bind_pair(
    address: IpAddr,
    port: u16,
) -> std::io::Result<(std::net::UdpSocket, std::net::UdpSocket)> {
    let bind = |port: u16| -> std::io::Result<std::net::UdpSocket> {
        let addr = std::net::SocketAddr::new(address, port);
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM.nonblocking(),
            Some(socket2::Protocol::UDP),
        )?;
        socket.bind(&addr.into())?;
        let socket = std::net::UdpSocket::from(socket);
        mark_std(&socket, DEFAULT_MEDIA_DSCP)?;
        Ok(socket)
    };
    let rtcp = if port == 0 { 0 } else { port.wrapping_add(1) };
    Ok((bind(port)?, bind(rtcp)?))
}

/// Marks what a socket sends with a DSCP (IPv4 TOS or IPv6 traffic class).
pub(crate) fn mark_std(socket: &impl std::os::fd::AsFd, dscp: u8) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(socket);
    if socket.local_addr()?.is_ipv4() {
        socket.set_tos_v4(tos(dscp))
    } else {
        socket.set_tclass_v6(tos(dscp))
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
