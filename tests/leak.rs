//! Memory kept per query: telesink runs for months on a Pi, so the query
//! paths must keep nothing once a query is answered. This test binary
//! counts the heap bytes in use (its own global allocator) while
//! telesink, in-process, answers thousands of unique misses (the cache
//! off) and blocked names: after a warm-up, more of them must not grow
//! the heap.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use common::*;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RecordType;

/// Heap bytes in use by the whole test process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is passed to the system allocator unchanged; only
// the sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as the caller promised for `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as the caller promised for `ptr` and `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// An upstream that answers every query NXDOMAIN and keeps nothing (the
/// harness's stub logs every question, which would grow the heap).
async fn nxdomain_upstream() -> std::net::SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Ok(mut reply) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            reply.metadata.message_type = MessageType::Response;
            reply.metadata.response_code = ResponseCode::NXDomain;
            let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
        }
    });
    addr
}

#[tokio::test(flavor = "current_thread")]
async fn queries_keep_nothing_once_answered() {
    let upstream = nxdomain_upstream().await;
    let dir = dir_with(&[("block.txt", "tracker.test\n")]);
    let config = format!(
        "[upstream]\nservers = [\"{upstream}\"]\n[cache]\ncapacity = 0\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [[blocking.lists]]\nname = \"vendor\"\npath = \"block.txt\"\n"
    );
    let ts = Telesink::start(&config, &[], dir.path()).await;
    // Names past 32 bytes, which hickory keeps on the heap; every other
    // one blocked (kept in the ring of recent blocked queries, which is
    // full after the warm-up).
    let name = |i: usize| format!("n{i}.a-label-long-enough-for-the-heap.example.test.");
    let blocked = |i: usize| format!("n{i}.a-label-long-enough-for-the-heap.tracker.test.");
    let ask_range = |from: usize, to: usize| {
        let udp = ts.udp;
        async move {
            for i in from..to {
                let r = ask(udp, &name(i), RecordType::A).await;
                assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
                let r = ask(udp, &blocked(i), RecordType::A).await;
                assert_eq!(addresses(&r), ["0.0.0.0"]);
            }
        }
    };
    // Warm-up: sockets, pools, metrics handles, buffers at their size.
    ask_range(0, 2_000).await;
    let before = LIVE.load(Ordering::Relaxed);
    ask_range(2_000, 5_000).await;
    let grown = LIVE.load(Ordering::Relaxed) - before;
    // 3,000 misses and 3,000 blocked: a leak of 16 bytes a query would be
    // 96,000.
    assert!(
        grown < 16_000,
        "the heap grew by {grown} bytes over 3,000 misses and 3,000 blocked"
    );
    ts.stop().await;
}
