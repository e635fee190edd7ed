//! The relay under test for `bench/compare-media.sh`: Bridgehead's media relay alone, in a
//! process of its own, with N anchored calls set up through a bench-only control path (the
//! same `MediaCommand::Stream` the call layer sends after an offer/answer), so that the
//! relay's CPU is measured apart from the load generator's (`examples/rtp_load.rs`).
//!
//! `media_relay CALLS RELAY_FIRST_PORT GENERATOR_FIRST_PORT [rtp|srtp] [io_uring|tokio] [THREADS]`
//!
//! Call `i` is anchored on RELAY_FIRST_PORT + 4i (facing the caller) and + 4i + 2 (facing the
//! callee), its far ends at GENERATOR_FIRST_PORT + 2i and + 2i + 1. With `srtp` the callee leg
//! is SRTP (keys derived from `i`: `media_bench::callee_keys`). The relay moves packets with
//! io_uring (THREADS workers, default 1) or tokio tasks. Prints `ready` and the driver once
//! every stream is bound, then relays until killed, printing every second the packets relayed and
//! the heap allocations made so far (a counting allocator: the per-packet path must make
//! none).

#[path = "media_bench/mod.rs"]
mod media_bench;

use bridgehead::config::{MediaConfig, MediaIo};
use bridgehead::media::relay::Relay;
use bridgehead::media::{MediaCallId, MediaCommand, Side, Stream};
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let number = |i: usize| -> u16 {
        args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
            panic!(
                "usage: media_relay CALLS RELAY_FIRST_PORT GENERATOR_FIRST_PORT \
                 [rtp|srtp] [io_uring|tokio] [THREADS]"
            )
        })
    };
    let (calls, relay_first, generator_first) = (number(1), number(2), number(3));
    let srtp = args.get(4).is_some_and(|a| a == "srtp");
    let io = match args.get(5).map(String::as_str) {
        Some("tokio") => MediaIo::Tokio,
        _ => MediaIo::IoUring,
    };
    let io_threads = args.get(6).and_then(|a| a.parse().ok()).unwrap_or(1);
    let config = MediaConfig {
        address: "127.0.0.1".parse().expect("ip"),
        advertise: "127.0.0.1".into(),
        ports: (relay_first, relay_first + 4 * calls + 3),
        strict_source: false,
        rtp_timeout: 0,
        ringback: Default::default(),
        no_ports: Default::default(),
        bound_ahead: 0,
        io,
        io_threads,
    };
    let relay = Relay::new(&config, Arc::new(|_, _| {})).unwrap_or_else(|err| panic!("{err}"));
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    for call in 0..calls {
        let (a_local, b_local) = media_bench::relay_ports(relay_first, call);
        let (caller, callee) = media_bench::generator_ports(generator_first, call);
        let side = |port: u16, remote: u16| Side {
            local: port,
            advertised: true,
            remote: Some(local(remote)),
            remote_rtcp: Some(local(remote)),
            sends: true,
            ..Side::default()
        };
        let mut b = side(b_local, callee);
        if srtp {
            let (toward_callee, from_callee) = media_bench::callee_keys(call);
            b.local_key = Some(toward_callee);
            b.remote_key = Some(from_callee);
        }
        relay.apply(MediaCommand::Stream {
            call: MediaCallId {
                shard: 0,
                call: u64::from(call),
            },
            stream: Box::new(Stream {
                index: 0,
                a: side(a_local, caller),
                b,
            }),
        });
    }
    // Every stream runs once its four sockets are bound.
    let deadline = Instant::now() + Duration::from_secs(30);
    while relay.stats.streams.load(Ordering::Relaxed) < u64::from(calls) {
        assert!(Instant::now() < deadline, "streams never bound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("ready ({})", relay.driver());
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!(
            "packets {} allocations {}",
            relay.stats.packets.load(Ordering::Relaxed),
            ALLOCATIONS.load(Ordering::Relaxed)
        );
    }
}
