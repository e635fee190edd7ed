//! The io_uring media relay (Linux): each worker thread owns one ring and the streams of the
//! calls hashed to it. Every socket of a stream has one multishot `recvmsg` armed that draws
//! its buffers from a ring of provided buffers, so one `io_uring_enter` hands back the packets
//! of all of a worker's sockets, and the packets they lead to go out as `send` requests
//! submitted by the next one. A packet costs no system call of its own, where the tokio
//! relay ([`super::relay`]) spends a `recvfrom`, a `sendto` and an epoll wake-up on it. What a
//! packet or a moment leads to is decided by the stream's sans-IO [`MediaStream`], as there.
//!
//! The `unsafe` here is the kernel sharing memory with the worker: the provided-buffer ring
//! and its buffers, the send slots, the eventfd's counter and the message header stay
//! allocated and unmoved while any request may use them ([`Region`], [`Worker::stop`]).

use super::player::Sound;
use super::sockets::{lock, mark_std, take_or_bind, EventSink, RelayStats, Settings};
use super::stream::MediaStream;
use super::{MediaCallId, MediaCommand, Stream};
use crate::config::DEFAULT_MEDIA_DSCP;
use crate::shared::Leg;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::alloc::Layout;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Submission queue entries of a worker's ring.
const SUBMISSIONS: u32 = 1024;
/// Completion queue entries of a worker's ring.
const COMPLETIONS: u32 = 8192;
/// Receive buffers a worker provides the kernel (a power of two): packets that may wait for
/// it at once (4 MiB).
const BUFFERS: u16 = 2048;
/// Bytes of one receive buffer: the kernel's `io_uring_recvmsg_out`, the source address and
/// the datagram.
const BUFFER_SIZE: usize = 2048;
/// The buffer group the receive buffers form.
const BUFFER_GROUP: u16 = 0;
/// Packets a worker can have on their way out at once (2 MiB); past that it sends directly.
const SEND_SLOTS: usize = 1024;
/// Bytes of one send slot: the destination address, then the datagram.
const SEND_SLOT_SIZE: usize = 2048;
/// Where a send slot's datagram starts (a `sockaddr_in6` is 28 bytes).
const SEND_PAYLOAD: usize = 32;
/// Bytes of source address a received packet carries (a `sockaddr_in6`).
const NAME_SIZE: u32 = 28;

/// The sockets of a stream, in the order completions name them.
const SOCKETS: usize = 4;

/// What a completion is for: the top four bits of its user data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Receive = 1,
    Send = 2,
    Wake = 3,
    Cancel = 4,
}

/// A request's user data: what it is for, which socket of which stream slot (and that slot's
/// generation, so a completion for a closed stream is never taken for its successor's).
fn tag(op: Op, socket: usize, generation: u32, index: u32) -> u64 {
    (op as u64) << 60
        | (socket as u64 & 0xf) << 56
        | u64::from(generation & 0xff_ffff) << 32
        | u64::from(index)
}

/// The parts of a request's user data.
fn untag(data: u64) -> (Option<Op>, usize, u32, u32) {
    let op = match data >> 60 {
        1 => Some(Op::Receive),
        2 => Some(Op::Send),
        3 => Some(Op::Wake),
        4 => Some(Op::Cancel),
        _ => None,
    };
    (
        op,
        ((data >> 56) & 0xf) as usize,
        ((data >> 32) & 0xff_ffff) as u32,
        data as u32,
    )
}

/// Which socket of a stream faces `leg` for RTP or RTCP.
fn socket_index(leg: Leg, rtcp: bool) -> usize {
    usize::from(leg == Leg::B) + 2 * usize::from(rtcp)
}

/// The leg a socket faces, and whether it is the RTCP one.
fn socket_role(socket: usize) -> (Leg, bool) {
    (
        if socket.is_multiple_of(2) {
            Leg::A
        } else {
            Leg::B
        },
        socket >= 2,
    )
}

/// `address` as the kernel's `sockaddr_in`/`sockaddr_in6`, into `out`; its length.
fn write_sockaddr(address: SocketAddr, out: &mut [u8]) -> u32 {
    match address {
        SocketAddr::V4(v4) => {
            out[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            out[2..4].copy_from_slice(&v4.port().to_be_bytes());
            out[4..8].copy_from_slice(&v4.ip().octets());
            out[8..16].fill(0);
            16
        }
        SocketAddr::V6(v6) => {
            out[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            out[2..4].copy_from_slice(&v6.port().to_be_bytes());
            out[4..8].copy_from_slice(&v6.flowinfo().to_be_bytes());
            out[8..24].copy_from_slice(&v6.ip().octets());
            out[24..28].copy_from_slice(&v6.scope_id().to_ne_bytes());
            28
        }
    }
}

/// The address of a `sockaddr_in`/`sockaddr_in6` the kernel wrote.
fn read_sockaddr(name: &[u8]) -> Option<SocketAddr> {
    let family = i32::from(u16::from_ne_bytes(name.get(..2)?.try_into().ok()?));
    let port = u16::from_be_bytes(name.get(2..4)?.try_into().ok()?);
    if family == libc::AF_INET {
        let ip: [u8; 4] = name.get(4..8)?.try_into().ok()?;
        Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
    } else if family == libc::AF_INET6 {
        let flowinfo = u32::from_be_bytes(name.get(4..8)?.try_into().ok()?);
        let ip: [u8; 16] = name.get(8..24)?.try_into().ok()?;
        let scope = u32::from_ne_bytes(name.get(24..28)?.try_into().ok()?);
        Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            flowinfo,
            scope,
        )))
    } else {
        None
    }
}

/// Memory the kernel reads or writes while requests run: allocated zeroed, never moved, freed
/// when dropped (after the worker made sure no request uses it).
struct Region {
    start: NonNull<u8>,
    layout: Layout,
}

impl Region {
    fn new(size: usize, align: usize) -> std::io::Result<Region> {
        let layout = Layout::from_size_align(size.max(1), align)
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
        // SAFETY: the layout's size is not zero.
        let start = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
            .ok_or(std::io::ErrorKind::OutOfMemory)?;
        Ok(Region { start, layout })
    }

    fn start(&self) -> *mut u8 {
        self.start.as_ptr()
    }

    /// `len` bytes from `offset`, which no request in flight writes.
    fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        let end = offset.saturating_add(len).min(self.layout.size());
        let offset = offset.min(end);
        // SAFETY: `offset..end` lies within the allocation; the caller holds no request
        // that writes it.
        unsafe { std::slice::from_raw_parts(self.start().add(offset), end - offset) }
    }

    /// [`Region::bytes`], to write.
    fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        let end = offset.saturating_add(len).min(self.layout.size());
        let offset = offset.min(end);
        // SAFETY: as in `bytes`, and no request in flight reads it either.
        unsafe { std::slice::from_raw_parts_mut(self.start().add(offset), end - offset) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.start(), self.layout) }
    }
}

/// The receive buffers and the ring through which they are handed to the kernel (a
/// provided-buffer ring, Linux 5.19).
struct ProvidedBuffers {
    ring: Region,
    memory: Region,
    /// The tail the worker has written entries up to.
    tail: u16,
}

impl ProvidedBuffers {
    fn new() -> std::io::Result<ProvidedBuffers> {
        let entry = std::mem::size_of::<types::BufRingEntry>();
        let mut buffers = ProvidedBuffers {
            ring: Region::new(usize::from(BUFFERS) * entry, 4096)?,
            memory: Region::new(usize::from(BUFFERS) * BUFFER_SIZE, 64)?,
            tail: 0,
        };
        for id in 0..BUFFERS {
            buffers.give_back(id);
        }
        buffers.publish();
        Ok(buffers)
    }

    /// Registers the ring with `ring` (before any receive names its group).
    fn register(&self, ring: &IoUring) -> std::io::Result<()> {
        // SAFETY: the ring's memory stays allocated until the worker unregisters it.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                self.ring.start() as u64,
                BUFFERS,
                BUFFER_GROUP,
                0,
            )
        }
    }

    /// Hands buffer `id` back to the kernel (seen once published).
    fn give_back(&mut self, id: u16) {
        if id >= BUFFERS {
            return;
        }
        let slot = usize::from(self.tail & (BUFFERS - 1));
        let address = self.memory.start() as u64 + u64::from(id) * BUFFER_SIZE as u64;
        // SAFETY: `slot` is within the ring; the kernel reads entries only up to the
        // published tail, which this one is past.
        let entry = unsafe { &mut *self.ring.start().cast::<types::BufRingEntry>().add(slot) };
        entry.set_addr(address);
        entry.set_len(BUFFER_SIZE as u32);
        entry.set_bid(id);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Lets the kernel see the buffers given back.
    fn publish(&self) {
        // SAFETY: the tail is the (aligned) `resv` field of the ring's first entry, which
        // the kernel reads atomically; the ring stays allocated.
        let tail = unsafe {
            AtomicU16::from_ptr(
                types::BufRingEntry::tail(self.ring.start().cast::<types::BufRingEntry>())
                    .cast_mut(),
            )
        };
        tail.store(self.tail, Ordering::Release);
    }

    /// The `len` bytes the kernel wrote into buffer `id`.
    fn received(&self, id: u16, len: usize) -> &[u8] {
        self.memory
            .bytes(usize::from(id) * BUFFER_SIZE, len.min(BUFFER_SIZE))
    }
}

/// Memory for packets on their way out: each slot holds a destination and a datagram until
/// the kernel says the send is done.
struct SendSlots {
    memory: Region,
    free: Vec<u32>,
}

/// A packet placed in a send slot, as a send request names it.
struct Outgoing {
    slot: u32,
    payload: *const u8,
    len: u32,
    address: *const libc::sockaddr,
    address_len: u32,
}

impl SendSlots {
    fn new() -> std::io::Result<SendSlots> {
        Ok(SendSlots {
            memory: Region::new(SEND_SLOTS * SEND_SLOT_SIZE, 64)?,
            free: (0..SEND_SLOTS as u32).rev().collect(),
        })
    }

    /// Copies a packet into a free slot (none free, or too big for one: `None`).
    fn place(&mut self, destination: SocketAddr, bytes: &[u8]) -> Option<Outgoing> {
        if bytes.len() > SEND_SLOT_SIZE - SEND_PAYLOAD {
            return None;
        }
        let slot = self.free.pop()?;
        let offset = slot as usize * SEND_SLOT_SIZE;
        let memory = self.memory.bytes_mut(offset, SEND_SLOT_SIZE);
        let address_len = write_sockaddr(destination, &mut memory[..SEND_PAYLOAD]);
        memory[SEND_PAYLOAD..SEND_PAYLOAD + bytes.len()].copy_from_slice(bytes);
        let start = memory.as_ptr();
        Some(Outgoing {
            slot,
            // SAFETY (of the offset): within the slot.
            payload: start.wrapping_add(SEND_PAYLOAD),
            len: bytes.len() as u32,
            address: start.cast(),
            address_len,
        })
    }

    /// The kernel is done with `slot`.
    fn release(&mut self, slot: u32) {
        if (slot as usize) < SEND_SLOTS && self.free.len() < SEND_SLOTS {
            self.free.push(slot);
        }
    }

    fn in_flight(&self) -> usize {
        SEND_SLOTS - self.free.len()
    }
}

/// Commands for one worker from the shards' threads, and the eventfd that wakes it.
struct Inbox {
    commands: Mutex<Vec<MediaCommand>>,
    bell: std::fs::File,
    stopping: AtomicBool,
}

impl Inbox {
    fn new() -> std::io::Result<Inbox> {
        // SAFETY: a plain system call; its descriptor, if any, is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let bell = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(Inbox {
            commands: Mutex::new(Vec::new()),
            bell,
            stopping: AtomicBool::new(false),
        })
    }

    /// Queues a command; the worker is woken only when the queue was empty (a burst of
    /// commands costs one wake-up).
    fn send(&self, command: MediaCommand) {
        let mut commands = lock(&self.commands);
        commands.push(command);
        if commands.len() == 1 {
            drop(commands);
            self.ring();
        }
    }

    fn ring(&self) {
        let _ = (&self.bell).write(&1u64.to_ne_bytes());
    }
}

/// The io_uring relay's workers.
pub(super) struct Workers {
    inboxes: Vec<Arc<Inbox>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Starts `threads` workers, each proving first that its kernel takes a multishot
    /// receive from a provided buffer and a send to an address; an error says why not (the
    /// relay then uses tokio).
    pub(super) fn start(
        threads: usize,
        settings: &Settings,
        stats: &Arc<RelayStats>,
        events: &EventSink,
    ) -> std::io::Result<Workers> {
        let mut workers = Workers {
            inboxes: Vec::new(),
            threads: Vec::new(),
        };
        for number in 0..threads.max(1) {
            let inbox = Arc::new(Inbox::new()?);
            let (ready, started) = std::sync::mpsc::channel();
            let context = (
                settings.clone(),
                stats.clone(),
                events.clone(),
                inbox.clone(),
            );
            let thread = std::thread::Builder::new()
                .name(format!("media-uring-{number}"))
                .spawn(move || {
                    let (settings, stats, events, inbox) = context;
                    match Worker::new(settings, stats, events, inbox) {
                        Ok(mut worker) => match worker.self_test() {
                            Ok(()) => {
                                let _ = ready.send(Ok(()));
                                worker.run();
                            }
                            Err(err) => {
                                let _ = ready.send(Err(err));
                            }
                        },
                        Err(err) => {
                            let _ = ready.send(Err(err));
                        }
                    }
                })?;
            workers.inboxes.push(inbox);
            workers.threads.push(thread);
            started
                .recv_timeout(Duration::from_secs(5))
                .map_err(|_| std::io::Error::other("the worker did not start"))??;
        }
        Ok(workers)
    }

    /// Hands an engine command to the worker of its call.
    pub(super) fn apply(&self, command: MediaCommand) {
        let call = match &command {
            MediaCommand::Stream { call, .. }
            | MediaCommand::Play { call, .. }
            | MediaCommand::Close { call } => *call,
        };
        let mixed = (call.call ^ (call.shard as u64).rotate_left(32))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            >> 32;
        let index = (mixed % self.inboxes.len().max(1) as u64) as usize;
        if let Some(inbox) = self.inboxes.get(index) {
            inbox.send(command);
        }
    }

    /// How many workers run.
    pub(super) fn len(&self) -> usize {
        self.threads.len()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for inbox in &self.inboxes {
            inbox.stopping.store(true, Ordering::Release);
            inbox.ring();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A stream the worker relays.
struct Running {
    call: MediaCallId,
    media: Box<MediaStream>,
    /// RTP facing A, RTP facing B, RTCP facing A, RTCP facing B.
    sockets: [UdpSocket; SOCKETS],
    /// The DSCP the sockets facing A and B mark with.
    marked: [u8; 2],
    /// The deadline the worker's timer heap holds for the stream.
    timer: Option<Instant>,
}

/// A stream slot: the running stream, and the generation that tells its completions apart
/// from those of the slot's earlier streams.
#[derive(Default)]
struct Slot {
    generation: u32,
    running: Option<Running>,
}

/// A stream of a call the engine described.
#[derive(Default)]
struct Anchored {
    /// Where it runs, once both legs know their ports.
    slot: Option<u32>,
    /// Its ports could not be bound: not tried again.
    failed: bool,
    /// Sounds to play once it runs.
    queued: Vec<(Leg, Sound)>,
}

/// What a worker moved since its last report to the shared counters.
#[derive(Default)]
struct Tally {
    packets: u64,
    bytes: u64,
    dropped: u64,
    srtp_failures: u64,
}

/// One worker: its ring, the memory it shares with the kernel, and its streams.
struct Worker {
    // Dropped first: no request outlives the memory below.
    ring: IoUring,
    buffers: ProvidedBuffers,
    sends: SendSlots,
    /// The header every multishot receive names (the kernel reads its name and control
    /// lengths).
    header: Box<libc::msghdr>,
    /// Where the eventfd's counter is read into.
    bell_counter: Region,
    inbox: Arc<Inbox>,
    /// Commands taken from the inbox (kept to reuse its memory).
    commands: Vec<MediaCommand>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    calls: HashMap<MediaCallId, Vec<Anchored>>,
    /// Streams' next deadlines (at most one live entry per stream).
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// The completions of one wait, copied out of the ring.
    completions: Vec<(u64, i32, u32)>,
    /// Receives the ring did not take (its queue full): armed again on the next round.
    unarmed: Vec<(u32, u32, usize)>,
    tally: Tally,
    settings: Settings,
    stats: Arc<RelayStats>,
    events: EventSink,
}

impl Worker {
    fn new(
        settings: Settings,
        stats: Arc<RelayStats>,
        events: EventSink,
        inbox: Arc<Inbox>,
    ) -> std::io::Result<Worker> {
        let ring = IoUring::builder()
            .setup_cqsize(COMPLETIONS)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(SUBMISSIONS)?;
        let buffers = ProvidedBuffers::new()?;
        buffers.register(&ring)?;
        // SAFETY: an all-zero msghdr is a valid (empty) one.
        let mut header: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        header.msg_namelen = NAME_SIZE;
        Ok(Worker {
            ring,
            buffers,
            sends: SendSlots::new()?,
            header,
            bell_counter: Region::new(8, 8)?,
            inbox,
            commands: Vec::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            calls: HashMap::new(),
            timers: BinaryHeap::with_capacity(1024),
            completions: Vec::with_capacity(COMPLETIONS as usize),
            unarmed: Vec::new(),
            tally: Tally::default(),
            settings,
            stats,
            events,
        })
    }

    /// Queues a request (submitting what is queued when the queue is full); false when the
    /// kernel takes none.
    ///
    /// # Safety
    /// Whatever memory `entry` points to stays valid until its completion.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> bool {
        for _ in 0..3 {
            // SAFETY: passed on from the caller.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return true;
            }
            if self.ring.submit().is_err() {
                break;
            }
        }
        false
    }

    /// Arms the multishot receive of a stream's socket.
    fn arm(&mut self, fd: i32, data: u64) -> bool {
        let entry =
            opcode::RecvMsgMulti::new(types::Fd(fd), &*self.header as *const _, BUFFER_GROUP)
                .build()
                .user_data(data);
        // SAFETY: the header lives as long as the worker.
        unsafe { self.push(&entry) }
    }

    /// Asks for the next ring of the bell.
    fn listen_for_bell(&mut self) {
        let entry = opcode::Read::new(
            types::Fd(self.inbox.bell.as_raw_fd()),
            self.bell_counter.start(),
            8,
        )
        .build()
        .user_data(tag(Op::Wake, 0, 0, 0));
        // SAFETY: the counter's region lives as long as the worker.
        unsafe { self.push(&entry) };
    }

    /// Sends `bytes` to `destination` from `socket` (a request, or directly when no send slot
    /// is free).
    fn send(&mut self, socket: &UdpSocket, destination: SocketAddr, bytes: &[u8]) {
        if let Some(out) = self.sends.place(destination, bytes) {
            let entry = opcode::Send::new(types::Fd(socket.as_raw_fd()), out.payload, out.len)
                .dest_addr(out.address)
                .dest_addr_len(out.address_len)
                .build()
                .user_data(tag(Op::Send, 0, 0, out.slot));
            // SAFETY: the slot stays taken until the send's completion releases it.
            if unsafe { self.push(&entry) } {
                return;
            }
            self.sends.release(out.slot);
        }
        if socket.send_to(bytes, destination).is_ok() {
            self.tally.packets += 1;
            self.tally.bytes += bytes.len() as u64;
        }
    }

    /// Sends one datagram to itself through the ring and receives it: whether the kernel
    /// offers what the worker needs (multishot `recvmsg` from provided buffers, Linux 6.0;
    /// `send` to an address). On the loopback of the media address's family: the media
    /// address may not be this machine's yet (a standby, bound with `ip_nonlocal_bind`
    /// before keepalived moves the address to it).
    fn self_test(&mut self) -> std::io::Result<()> {
        let loopback: std::net::IpAddr = match self.settings.address {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        let socket = UdpSocket::bind((loopback, 0))?;
        socket.set_nonblocking(true)?;
        let probe = tag(Op::Receive, 0, 0, u32::MAX);
        if !self.arm(socket.as_raw_fd(), probe) {
            return Err(std::io::Error::other("the ring took no request"));
        }
        let message = b"bridgehead io_uring self-test";
        self.send(&socket, socket.local_addr()?, message);
        let deadline = Instant::now() + Duration::from_secs(2);
        let (mut heard, mut sent) = (false, false);
        while !(heard && sent) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::other("no completion within 2 s"));
            }
            self.wait(Some(left))?;
            for cqe in self.ring.completion() {
                let (op, _, _, slot) = untag(cqe.user_data());
                let result = cqe.result();
                if result < 0 {
                    return Err(std::io::Error::from_raw_os_error(-result));
                }
                match op {
                    Some(Op::Receive) => {
                        let id = cqueue::buffer_select(cqe.flags());
                        if let Some(id) = id {
                            let data = self.buffers.received(id, result as usize);
                            heard = types::RecvMsgOut::parse(data, &self.header)
                                .is_ok_and(|m| m.payload_data() == message);
                            self.buffers.give_back(id);
                        }
                    }
                    Some(Op::Send) => {
                        self.sends.release(slot);
                        sent = true;
                    }
                    _ => {}
                }
            }
        }
        self.buffers.publish();
        let cancel = opcode::AsyncCancel::new(probe)
            .build()
            .user_data(tag(Op::Cancel, 0, 0, 0));
        // SAFETY: a cancel names no memory.
        unsafe { self.push(&cancel) };
        Ok(())
    }

    /// Submits what is queued and waits for a completion, at most `timeout`.
    fn wait(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        let result = match timeout {
            Some(timeout) => {
                let timespec = types::Timespec::from(timeout);
                let args = types::SubmitArgs::new().timespec(&timespec);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match result {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Relays until the relay stops.
    fn run(&mut self) {
        self.listen_for_bell();
        loop {
            self.arm_again();
            self.fire_timers(Instant::now());
            self.report();
            self.buffers.publish();
            let timeout = self.timers.peek().map(|Reverse((at, _, _))| {
                at.saturating_duration_since(Instant::now())
                    .max(Duration::from_micros(50))
            });
            if let Err(err) = self.wait(timeout) {
                tracing::error!("media: io_uring wait failed: {err}");
                std::thread::sleep(Duration::from_millis(10));
            }
            self.completions.clear();
            self.completions.extend(
                self.ring
                    .completion()
                    .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
            );
            let mut stopping = false;
            for index in 0..self.completions.len() {
                let (data, result, flags) = self.completions[index];
                let (op, socket, generation, slot) = untag(data);
                match op {
                    Some(Op::Receive) => self.received(socket, generation, slot, result, flags),
                    Some(Op::Send) => {
                        self.sends.release(slot);
                        if let Ok(len) = u64::try_from(result) {
                            self.tally.packets += 1;
                            self.tally.bytes += len;
                        }
                    }
                    Some(Op::Wake) => {
                        // Stopping: the other completions are still seen to (sends
                        // released) before the worker stops.
                        stopping |= self.inbox.stopping.load(Ordering::Acquire);
                        if !stopping {
                            self.take_commands();
                            self.listen_for_bell();
                        }
                    }
                    Some(Op::Cancel) | None => {}
                }
            }
            if stopping {
                self.stop();
                return;
            }
        }
    }

    /// Arms the receives the ring could not take before, of streams still running.
    fn arm_again(&mut self) {
        for (slot, generation, socket) in std::mem::take(&mut self.unarmed) {
            let fd = self
                .running(slot, generation)
                .map(|running| running.sockets[socket].as_raw_fd());
            if let Some(fd) = fd {
                self.arm_stream(fd, (slot, generation, socket));
            }
        }
    }

    /// Arms the receive of socket `socket` of the stream in `slot`; kept for the next round
    /// if the ring takes no more requests now.
    fn arm_stream(&mut self, fd: i32, (slot, generation, socket): (u32, u32, usize)) {
        if !self.arm(fd, tag(Op::Receive, socket, generation, slot)) {
            self.unarmed.push((slot, generation, socket));
        }
    }

    /// The stream in `slot`, if it is still the one of `generation`.
    fn running(&mut self, slot: u32, generation: u32) -> Option<&mut Running> {
        self.slots
            .get_mut(slot as usize)
            .filter(|s| s.generation == generation)
            .and_then(|s| s.running.as_mut())
    }

    /// A receive completed: the packet goes to its stream, the buffer back to the kernel,
    /// and a receive that ended is armed again.
    fn received(&mut self, socket: usize, generation: u32, slot: u32, result: i32, flags: u32) {
        let id = cqueue::buffer_select(flags);
        let (leg, rtcp) = socket_role(socket);
        if let Some(running) = self
            .slots
            .get_mut(slot as usize)
            .filter(|s| s.generation == generation)
            .and_then(|s| s.running.as_mut())
        {
            if let (Some(id), Ok(len)) = (id, usize::try_from(result)) {
                let data = self.buffers.received(id, len);
                if let Ok(message) = types::RecvMsgOut::parse(data, &self.header) {
                    let source = read_sockaddr(message.name_data());
                    if let (Some(source), false) = (source, message.is_payload_truncated()) {
                        running.media.handle_packet(
                            leg,
                            source,
                            rtcp,
                            message.payload_data(),
                            Instant::now(),
                        );
                    }
                }
            }
            let fd = running.sockets[socket].as_raw_fd();
            // A multishot receive ends on an error (out of buffers, say): armed again.
            if !cqueue::more(flags) && result != -libc::ECANCELED {
                self.arm_stream(fd, (slot, generation, socket));
            }
            self.drain(slot);
        }
        if let Some(id) = id {
            self.buffers.give_back(id);
        }
    }

    /// Sends what the stream in `slot` has to send and reports its events; its next
    /// deadline goes on the timer heap.
    fn drain(&mut self, slot: u32) {
        let Some(state) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let generation = state.generation;
        let Some(mut running) = state.running.take() else {
            return;
        };
        while let Some(transmit) = running.media.poll_transmit() {
            let socket = &running.sockets[socket_index(transmit.to, transmit.rtcp_port)];
            self.send(socket, transmit.destination, transmit.bytes);
        }
        while let Some(event) = running.media.poll_event() {
            (self.events)(running.call, event);
        }
        let refused = running.media.take_counters();
        self.tally.dropped += refused.dropped;
        self.tally.srtp_failures += refused.srtp_failures;
        if let Some(at) = running.media.poll_timeout() {
            if running.timer.is_none_or(|queued| at < queued) {
                running.timer = Some(at);
                self.timers.push(Reverse((at, slot, generation)));
            }
        }
        if let Some(state) = self.slots.get_mut(slot as usize) {
            state.running = Some(running);
        }
    }

    /// Runs the streams whose deadlines passed.
    fn fire_timers(&mut self, now: Instant) {
        // Bounded: a stream whose deadline stays in the past waits for the next round.
        for _ in 0..self.timers.len() {
            let Some(&Reverse((at, slot, generation))) = self.timers.peek() else {
                break;
            };
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(running) = self.running(slot, generation) else {
                continue;
            };
            if running.timer != Some(at) {
                continue; // superseded by an earlier deadline
            }
            running.timer = None;
            if running.media.poll_timeout().is_some_and(|due| due <= now) {
                running.media.handle_timeout(now);
            }
            self.drain(slot);
        }
    }

    /// Adds what the worker moved to the shared counters.
    fn report(&mut self) {
        let tally = std::mem::take(&mut self.tally);
        for (counter, value) in [
            (&self.stats.packets, tally.packets),
            (&self.stats.bytes, tally.bytes),
            (&self.stats.dropped, tally.dropped),
            (&self.stats.srtp_failures, tally.srtp_failures),
        ] {
            if value > 0 {
                counter.fetch_add(value, Ordering::Relaxed);
            }
        }
    }

    fn take_commands(&mut self) {
        std::mem::swap(&mut *lock(&self.inbox.commands), &mut self.commands);
        let mut commands = std::mem::take(&mut self.commands);
        for command in commands.drain(..) {
            self.apply(command);
        }
        self.commands = commands;
    }

    /// Carries out an engine command, as the tokio relay does.
    fn apply(&mut self, command: MediaCommand) {
        let now = Instant::now();
        match command {
            MediaCommand::Play { call, to, sound } => match self.anchored(call, 0).slot {
                Some(slot) => {
                    if let Some(running) = self.running_any(slot) {
                        running.media.play(to, sound, now);
                    }
                    self.drain(slot);
                }
                None => self.anchored(call, 0).queued.push((to, sound)),
            },
            MediaCommand::Close { call } => {
                for anchored in self.calls.remove(&call).into_iter().flatten() {
                    if let Some(slot) = anchored.slot {
                        self.close(slot);
                    }
                }
            }
            MediaCommand::Stream { call, stream } => {
                let anchored = self.anchored(call, stream.index);
                let (slot, failed) = (anchored.slot, anchored.failed);
                if let Some(slot) = slot {
                    if let Some(running) = self.running_any(slot) {
                        running.media.update(&stream, now);
                        mark(running, &stream);
                    }
                    self.drain(slot);
                } else if !failed && stream.a.advertised && stream.b.advertised {
                    let queued = std::mem::take(&mut self.anchored(call, stream.index).queued);
                    match self.start(call, &stream, queued, now) {
                        Ok(slot) => self.anchored(call, stream.index).slot = Some(slot),
                        Err(err) => {
                            self.anchored(call, stream.index).failed = true;
                            self.stats.bind_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(
                                a = stream.a.local,
                                b = stream.b.local,
                                "media: cannot bind the stream's ports: {err}"
                            );
                        }
                    }
                }
            }
        }
    }

    fn running_any(&mut self, slot: u32) -> Option<&mut Running> {
        self.slots
            .get_mut(slot as usize)
            .and_then(|s| s.running.as_mut())
    }

    fn anchored(&mut self, call: MediaCallId, index: usize) -> &mut Anchored {
        let streams = self.calls.entry(call).or_default();
        while streams.len() <= index {
            streams.push(Anchored::default());
        }
        &mut streams[index]
    }

    /// Binds (or takes the pool's) sockets for a stream and arms their receives.
    fn start(
        &mut self,
        call: MediaCallId,
        stream: &Stream,
        queued: Vec<(Leg, Sound)>,
        now: Instant,
    ) -> std::io::Result<u32> {
        let reserved = &self.settings.reserved;
        let (a_rtp, a_rtcp) = take_or_bind(self.settings.address, stream.a.local, reserved)?;
        let (b_rtp, b_rtcp) = take_or_bind(self.settings.address, stream.b.local, reserved)?;
        let mut media = Box::new(MediaStream::new(stream, self.settings.stream, now));
        for (to, sound) in queued {
            media.play(to, sound, now);
        }
        let mut running = Running {
            call,
            media,
            sockets: [a_rtp, b_rtp, a_rtcp, b_rtcp],
            marked: [DEFAULT_MEDIA_DSCP; 2],
            timer: None,
        };
        mark(&mut running, stream);
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let fds = running.sockets.each_ref().map(|s| s.as_raw_fd());
        let state = &mut self.slots[slot as usize];
        state.running = Some(running);
        let generation = state.generation;
        for (socket, fd) in fds.into_iter().enumerate() {
            self.arm_stream(fd, (slot, generation, socket));
        }
        self.stats.streams.fetch_add(1, Ordering::Relaxed);
        self.drain(slot);
        Ok(slot)
    }

    /// Ends the stream in `slot`: its receives are cancelled and its sockets closed.
    fn close(&mut self, slot: u32) {
        let Some(state) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let generation = state.generation;
        let Some(running) = state.running.take() else {
            return;
        };
        state.generation = (generation + 1) & 0xff_ffff;
        for socket in 0..SOCKETS {
            let cancel = opcode::AsyncCancel::new(tag(Op::Receive, socket, generation, slot))
                .build()
                .user_data(tag(Op::Cancel, 0, 0, 0));
            // SAFETY: a cancel names no memory.
            unsafe { self.push(&cancel) };
        }
        // The receives hold their own references to the sockets until cancelled.
        drop(running);
        self.free_slots.push(slot);
        self.stats.streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// Stops: every stream closes, and the worker waits (a bounded while) until the kernel
    /// is done with every request that names its memory.
    fn stop(&mut self) {
        let slots: Vec<u32> = (0..self.slots.len() as u32).collect();
        for slot in slots {
            self.close(slot);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.sends.in_flight() > 0 && Instant::now() < deadline {
            if self.wait(Some(Duration::from_millis(50))).is_err() {
                break;
            }
            for cqe in self.ring.completion() {
                if let (Some(Op::Send), _, _, slot) = untag(cqe.user_data()) {
                    self.sends.release(slot);
                }
            }
        }
        let _ = self.ring.submit();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // No receive may pick a buffer once the memory goes.
        let _ = self.ring.submitter().unregister_buf_ring(BUFFER_GROUP);
    }
}

/// Has the sockets facing each leg mark with its trunk's DSCP (unless they already do).
fn mark(running: &mut Running, stream: &Stream) {
    for (leg, dscp) in [(Leg::A, stream.a.dscp), (Leg::B, stream.b.dscp)] {
        let side = usize::from(leg == Leg::B);
        if running.marked[side] == dscp {
            continue;
        }
        running.marked[side] = dscp;
        for rtcp in [false, true] {
            if let Err(err) = mark_std(&running.sockets[socket_index(leg, rtcp)], dscp) {
                tracing::warn!("media: cannot set DSCP {dscp}: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addresses_are_written_and_read_as_the_kernel_lays_them_out() {
        for address in [
            "127.0.0.1:30000",
            "192.0.2.10:5",
            "[::1]:40000",
            "[2001:db8::7]:6000",
        ] {
            let address: SocketAddr = address.parse().expect("address");
            let mut bytes = [0u8; 32];
            let len = write_sockaddr(address, &mut bytes) as usize;
            // socket2's own conversion is the oracle.
            let oracle = socket2::SockAddr::from(address);
            assert_eq!(len, oracle.len() as usize);
            // SAFETY: `oracle` holds `len` initialised bytes of address.
            let expected = unsafe { std::slice::from_raw_parts(oracle.as_ptr().cast::<u8>(), len) };
            assert_eq!(&bytes[..len], expected, "{address}");
            assert_eq!(read_sockaddr(&bytes[..len]), Some(address));
        }
        assert_eq!(read_sockaddr(&[0u8; 16]), None, "no family");
        assert_eq!(read_sockaddr(&[2, 0, 1]), None, "too short");
    }

    #[test]
    fn user_data_keeps_its_parts_apart() {
        let data = tag(Op::Receive, 3, 0xff_fffe, u32::MAX - 1);
        assert_eq!(untag(data), (Some(Op::Receive), 3, 0xff_fffe, u32::MAX - 1));
        assert_eq!(untag(tag(Op::Send, 0, 0, 7)), (Some(Op::Send), 0, 0, 7));
        assert_eq!(untag(0).0, None);
        for socket in 0..SOCKETS {
            let (leg, rtcp) = socket_role(socket);
            assert_eq!(socket_index(leg, rtcp), socket);
        }
    }
}
