//! Plain DNS over UDP, from a small per-thread pool of connected sockets.
//!
//! RFC 5452 §9.2 asks for an unpredictable source port per outgoing query,
//! different ports for queries outstanding at once, and an unpredictable
//! ID. Opening a socket for every query does that, but costs five system
//! calls (socket, bind, connect, and registering and unregistering it with
//! the event loop) plus close: about a fifth of a cache miss's CPU time.
//! Here a socket is still bound to a random port chosen by the kernel and
//! carries one query at a time, but it is reused for up to [`MAX_USES`]
//! queries within [`MAX_AGE`]:
//!
//! - before each reuse its receive queue is drained, so replies an
//!   attacker queued while it sat idle (one per possible ID) are never
//!   read as the answer to the next query;
//! - a socket whose query timed out or failed is closed, never reused, so
//!   a late reply cannot meet a later query;
//! - it is connected, so the kernel only delivers datagrams from the
//!   upstream's address and port;
//! - it is closed [`MAX_AGE`] after it was opened, used or not (on the UDP
//!   receive threads within a quarter of a second of that, by the timer
//!   they keep armed; on other threads at their next query).
//!
//! The pool is per thread: each UDP receive thread runs its own runtime,
//! and a socket must stay on the runtime it was registered with. On the
//! multi-threaded runtime (queries that came over TCP) a socket may be
//! taken on one worker and put back on another; they share one event loop.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use tokio::net::UdpSocket;

use super::{AttemptError, matches};

/// Queries one socket carries before it is closed and a new port taken:
/// the system calls of opening one are shared by 16 queries (94% of the
/// saving), while a port stays in use for little time.
pub(super) const MAX_USES: u32 = 16;

/// How long a socket may be reused after it was opened.
pub(super) const MAX_AGE: Duration = Duration::from_secs(2);

/// Idle sockets kept per upstream on one thread: enough for the bursts of
/// a page load, few enough that little sits open.
const MAX_IDLE: usize = 8;

/// Datagrams drained from an idle socket before reuse; a socket with more
/// queued is being flooded and is closed instead.
const MAX_DRAIN: usize = 16;

struct Idle {
    upstream: SocketAddr,
    socket: UdpSocket,
    uses: u32,
    opened: Instant,
}

thread_local! {
    static IDLE: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
}

/// One query to `addr` over a pooled socket; `size` is the receive buffer.
/// Returns the reply and its bytes.
pub(super) async fn exchange(
    addr: SocketAddr,
    bytes: &[u8],
    request: &Message,
    size: usize,
) -> Result<(Message, Vec<u8>), AttemptError> {
    let (socket, uses, opened) = match take(addr) {
        Some(idle) => (idle.socket, idle.uses, idle.opened),
        None => (open(addr).await?, 0, Instant::now()),
    };
    let reply = query(&socket, bytes, request, size).await?;
    // Only a socket whose query was answered goes back: one that timed
    // out is dropped with the future, one that failed by the `?` above.
    put(Idle {
        upstream: addr,
        socket,
        uses: uses + 1,
        opened,
    });
    Ok(reply)
}

/// One query over a fresh socket, closed afterwards (for the bootstrap
/// resolvers, which are asked rarely).
pub(super) async fn once(
    addr: SocketAddr,
    bytes: &[u8],
    request: &Message,
    size: usize,
) -> Result<Message, AttemptError> {
    let (reply, _) = query(&open(addr).await?, bytes, request, size).await?;
    Ok(reply)
}

/// A socket on a random port, connected to `addr`.
async fn open(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(addr).await?;
    Ok(socket)
}

async fn query(
    socket: &UdpSocket,
    bytes: &[u8],
    request: &Message,
    size: usize,
) -> Result<(Message, Vec<u8>), AttemptError> {
    socket.send(bytes).await?;
    // One byte more than advertised, to tell a datagram the kernel cut to
    // the buffer from one that fits.
    let mut buf = vec![0u8; size + 1];
    loop {
        // A connected socket only receives from the upstream; anything
        // that does not match the request is a stray or spoofed packet.
        let n = socket.recv(&mut buf).await?;
        if n > size {
            if buf[..2] == bytes[..2] {
                return Err(AttemptError::TooBig);
            }
            continue;
        }
        if let Ok(reply) = Message::from_vec(&buf[..n])
            && matches(request, &reply)
        {
            buf.truncate(n);
            return Ok((reply, buf));
        }
    }
}

/// Closes this thread's idle sockets that are too old to be reused, so
/// none stays open long after the traffic that opened it. Each UDP
/// receive thread calls it a few times a second; elsewhere they are closed
/// at the next query.
pub(crate) fn close_expired() {
    close_expired_at(Instant::now());
}

fn close_expired_at(now: Instant) {
    IDLE.with_borrow_mut(|idle| idle.retain(|s| now.duration_since(s.opened) < MAX_AGE));
}

/// An idle socket for `addr` that may still be used, drained.
fn take(addr: SocketAddr) -> Option<Idle> {
    close_expired();
    IDLE.with_borrow_mut(|idle| {
        while let Some(at) = idle.iter().rposition(|s| s.upstream == addr) {
            let candidate = idle.swap_remove(at);
            if drain(&candidate.socket) {
                return Some(candidate);
            }
        }
        None
    })
}

/// Empties the receive queue; false if it would not empty (or failed).
fn drain(socket: &UdpSocket) -> bool {
    // Asks the kernel itself: tokio's `try_recv` answers "nothing queued"
    // without a system call when its cached readiness says so, and here
    // only the kernel's answer will do.
    let socket = socket2::SockRef::from(socket);
    let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    for _ in 0..MAX_DRAIN {
        match socket.recv(&mut scratch) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    false
}

fn put(socket: Idle) {
    if socket.uses >= MAX_USES || socket.opened.elapsed() >= MAX_AGE {
        return;
    }
    IDLE.with_borrow_mut(|idle| {
        if idle
            .iter()
            .filter(|s| s.upstream == socket.upstream)
            .count()
            < MAX_IDLE
        {
            idle.push(socket);
        }
    });
}

/// Idle sockets on this thread, for tests.
#[cfg(test)]
fn idle_count() -> usize {
    IDLE.with_borrow(Vec::len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    use std::str::FromStr;
    use std::sync::Arc;

    fn request(id: u16) -> Message {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Query::query(
            Name::from_str("a.example.").unwrap(),
            RecordType::A,
        ));
        m
    }

    fn reply_to(request: &Message) -> Vec<u8> {
        let mut r = request.clone();
        r.metadata.message_type = MessageType::Response;
        r.to_vec().unwrap()
    }

    /// A stub upstream answering every query and reporting its source
    /// port; its socket is shared so a test can forge datagrams from the
    /// upstream's own address.
    async fn upstream() -> (
        Arc<UdpSocket>,
        SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<u16>,
    ) {
        let server = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = server.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let serving = server.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = serving.recv_from(&mut buf).await {
                let q = Message::from_vec(&buf[..n]).unwrap();
                let _ = tx.send(from.port());
                let _ = serving.send_to(&reply_to(&q), from).await;
            }
        });
        (server, addr, rx)
    }

    async fn ask(addr: SocketAddr, id: u16) -> Message {
        let q = request(id);
        exchange(addr, &q.to_vec().unwrap(), &q, 512)
            .await
            .unwrap()
            .0
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_socket_carries_at_most_max_uses_queries() {
        let (_server, addr, mut ports) = upstream().await;
        let mut seen = Vec::new();
        for id in 0..(2 * MAX_USES) {
            let id = u16::try_from(id).unwrap();
            assert_eq!(ask(addr, id).await.metadata.id, id);
            seen.push(ports.recv().await.unwrap());
        }
        let (first, second) = seen.split_at(MAX_USES as usize);
        assert!(first.iter().all(|p| *p == first[0]), "{seen:?}");
        assert!(second.iter().all(|p| *p == second[0]), "{seen:?}");
        assert_ne!(first[0], second[0], "a new port after {MAX_USES} queries");
        assert_eq!(
            idle_count(),
            0,
            "a socket that carried {MAX_USES} is closed"
        );
    }

    /// A reply for the next query, forged from the upstream's address to
    /// the idle socket's port: NXDOMAIN where the real answer is NOERROR.
    async fn forge(server: &UdpSocket, port: u16, id: u16, copies: usize) {
        let mut forged = request(id);
        forged.metadata.message_type = MessageType::Response;
        forged.metadata.response_code = ResponseCode::NXDomain;
        let bytes = forged.to_vec().unwrap();
        for _ in 0..copies {
            // On loopback the datagram is queued before send_to returns.
            server.send_to(&bytes, ("127.0.0.1", port)).await.unwrap();
        }
    }

    /// Asks once; runs `before_forging` with the socket now idle; forges
    /// `copies` replies for the next query into it; asks again. Returns
    /// whether the second query went out on the same socket, and the
    /// response code it got.
    async fn forge_between_queries(
        copies: usize,
        before_forging: impl FnOnce(),
    ) -> (bool, ResponseCode) {
        let (server, addr, mut ports) = upstream().await;
        ask(addr, 1).await;
        let port = ports.recv().await.unwrap();
        before_forging();
        forge(&server, port, 2, copies).await;
        let reply = ask(addr, 2).await;
        let reused = ports.recv().await.unwrap() == port;
        (reused, reply.metadata.response_code)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn replies_queued_while_idle_are_never_read_as_answers() {
        let (reused, rcode) = forge_between_queries(3, || {}).await;
        assert!(reused, "the socket was reused");
        assert_eq!(rcode, ResponseCode::NoError);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn replies_the_event_loop_has_not_seen_are_drained_too() {
        // Make tokio believe the idle socket has nothing queued (a receive
        // that would block clears its cached readiness), then queue a
        // forged reply without letting the event loop run.
        let clear_readiness = || {
            IDLE.with_borrow(|idle| {
                let mut buf = [0u8; 512];
                let error = idle[0].socket.try_recv(&mut buf).unwrap_err();
                assert_eq!(error.kind(), std::io::ErrorKind::WouldBlock);
            });
        };
        let (reused, rcode) = forge_between_queries(1, clear_readiness).await;
        assert!(reused, "the socket was reused");
        assert_eq!(rcode, ResponseCode::NoError);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_flooded_idle_socket_is_closed() {
        let (reused, rcode) = forge_between_queries(MAX_DRAIN + 1, || {}).await;
        assert!(!reused, "a new socket");
        assert_eq!(rcode, ResponseCode::NoError);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn idle_sockets_are_closed_once_too_old() {
        let (_server, addr, _ports) = upstream().await;
        ask(addr, 1).await;
        assert_eq!(idle_count(), 1);
        close_expired_at(Instant::now() + MAX_AGE / 2);
        assert_eq!(idle_count(), 1, "still young enough to reuse");
        close_expired_at(Instant::now() + MAX_AGE);
        assert_eq!(idle_count(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_socket_whose_query_timed_out_is_not_reused() {
        // An upstream that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let q = request(1);
        let bytes = q.to_vec().unwrap();
        let attempt = exchange(addr, &bytes, &q, 512);
        let timed_out = tokio::time::timeout(Duration::from_millis(20), attempt).await;
        assert!(timed_out.is_err());
        assert_eq!(idle_count(), 0);
    }
}
