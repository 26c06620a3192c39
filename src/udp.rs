//! DNS over UDP: receive threads that answer what needs no waiting
//! inline, and the rest on a runtime of their own.
//!
//! Most of a home network's queries are for names that are blocked or
//! already cached. Each UDP listen address has one socket, read by
//! `[server] udp_threads` threads (default 1), each running a
//! single-threaded tokio runtime. For those queries the thread answers
//! inline: it parses the header and question itself (the name with
//! hickory-proto), asks the chain what it can answer at once
//! ([`Resolve::peek`]) and writes the reply into a buffer it reuses, cached
//! answers as bytes encoded when they were stored. Datagrams are read up
//! to 32 per system call (`recvmmsg`) and a batch's replies sent with one
//! (`sendmmsg`): under load the system calls cost more than the answers.
//!
//! Everything else (misses, local names, anything unusual in the packet)
//! goes to the [`Handler`] as a task on the same thread's runtime, so a
//! query waiting on an upstream never holds up the socket, and a miss is
//! received, forwarded and answered without waking another thread. Both
//! choices were measured against the alternatives (docs/performance.md):
//! on a small machine, thread wake-ups cost more than the queries.
//!
//! The fast path sends byte for byte what the handler would send (the
//! `fast_path_matches_the_handler` test and the fuzz target compare the
//! two). It declines rather than guess: any packet it does not fully
//! understand goes the full way.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, LowerName, Name, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::net::NetError;
use std::os::fd::AsRawFd;

use nix::libc;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::BlockMode;
use crate::resolver::{
    BlockPolicy, DNS_HEADER_LEN, Outcome, Peek, Query, Resolve, blocked_answer, plain_name_end,
};
use crate::server::{Deliver, Handler, MAX_QUERY, Protocol, opt_record, respond};
use crate::systemd::Heartbeat;

/// The receive buffer: one byte more than the largest query read, so a
/// longer datagram shows as one that filled it (the kernel cuts it there)
/// and gets its FORMERR from the header.
const RECEIVE_BUFFER: usize = MAX_QUERY + 1;

/// The receive threads of one socket.
#[derive(Debug)]
pub struct UdpServer {
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Each thread's, with the thread's name and address, for the watchdog.
    heartbeats: Vec<(String, Heartbeat)>,
}

/// Starts `threads` threads serving DNS on `socket` until `shutdown` is
/// cancelled, each with a single-threaded runtime of its own and at most
/// `max_waiting` queries waiting on the full path. With more than one,
/// every thread reads the same socket and whichever is free takes the next
/// datagram.
pub fn start<R: Resolve>(
    socket: UdpSocket,
    threads: usize,
    max_waiting: usize,
    handler: Arc<Handler<R>>,
    shutdown: CancellationToken,
) -> io::Result<UdpServer> {
    let socket = socket.into_std()?;
    let addr = socket.local_addr()?;
    let mut heartbeats = Vec::new();
    let threads = (0..threads.max(1))
        .map(|i| {
            let name = format!("telesink-udp-{i}");
            let heartbeat = Heartbeat::new();
            heartbeats.push((format!("{name} on {addr}"), heartbeat.clone()));
            let receiver = Receiver {
                handler: handler.clone(),
                shutdown: shutdown.clone(),
                heartbeat,
                max_waiting,
            };
            // Built here, not in the thread, so a failure stops start-up
            // instead of leaving an address silently unserved.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let socket = {
                let _context = runtime.enter();
                UdpSocket::from_std(socket.try_clone()?)?
            };
            std::thread::Builder::new()
                .name(name)
                .spawn(move || runtime.block_on(receiver.serve(socket)))
        })
        .collect::<io::Result<_>>()?;
    Ok(UdpServer {
        threads,
        heartbeats,
    })
}

impl UdpServer {
    /// The threads' heartbeats, named, for [`crate::systemd::watchdog`].
    pub fn heartbeats(&self) -> impl Iterator<Item = (String, Heartbeat)> + '_ {
        self.heartbeats.iter().cloned()
    }

    /// Waits until the threads have stopped (after shutdown) and the
    /// queries they handed on are answered.
    pub async fn stopped(self) {
        for thread in self.threads {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Packets a receive loop answers in a row before it lets the queries it
/// handed on (and their upstream replies) run: a flood of cache hits must
/// not starve the misses.
const BATCH: usize = 64;

/// One receive thread.
struct Receiver<R> {
    handler: Arc<Handler<R>>,
    shutdown: CancellationToken,
    /// Beaten by this thread's timer task when it is idle, and by the
    /// receive loop between batches when it is busy (a flood's queued
    /// tasks can hold the timer task back for seconds while the loop
    /// still turns). It stops when the thread does.
    heartbeat: Heartbeat,
    /// `[server] udp_max_waiting`: queries handed to the full path and not
    /// yet answered, beyond which new ones that would wait are dropped.
    max_waiting: usize,
}

impl<R: Resolve> Receiver<R> {
    async fn serve(self, socket: UdpSocket) {
        let socket = Arc::new(socket);
        let tasks = TaskTracker::new();
        let mut received = Received::new();
        let mut replies = Replies::new();
        let mut batch = 0;
        let overload_log = crate::throttle::Throttle::new(Duration::from_secs(10));
        let receive_log = crate::throttle::Throttle::new(Duration::from_secs(60));
        tokio::spawn(keep_a_timer_armed(
            self.heartbeat.clone(),
            self.shutdown.clone(),
        ));
        loop {
            if batch >= BATCH {
                batch = 0;
                if self.shutdown.is_cancelled() {
                    break;
                }
                self.heartbeat.beat();
                tokio::task::yield_now().await;
            }
            let count = match socket.try_io(tokio::io::Interest::READABLE, || {
                received.receive(socket.as_raw_fd())
            }) {
                Ok(count) => count,
                Err(error) => match error.kind() {
                    io::ErrorKind::WouldBlock => {
                        batch = 0;
                        tokio::select! {
                            _ = socket.readable() => continue,
                            () = self.shutdown.cancelled() => break,
                        }
                    }
                    io::ErrorKind::NotConnected | io::ErrorKind::ConnectionAborted => {
                        tracing::error!(%error, "UDP socket closed; no longer serving on it");
                        break;
                    }
                    _ => {
                        // Counted as a pass: an error that keeps coming
                        // must not keep the loop from yielding and from
                        // seeing the shutdown.
                        batch += 1;
                        // An ICMP error for an earlier reply shows up here
                        // and means nothing; one the call itself caused
                        // (refused by a seccomp filter, say) stops all UDP
                        // service and must be seen.
                        let refused = [libc::ENOSYS, libc::EPERM, libc::EACCES, libc::EINVAL];
                        match error.raw_os_error() {
                            Some(code) if refused.contains(&code) => {
                                if let Some(suppressed) = receive_log.ready() {
                                    tracing::error!(
                                        %error,
                                        suppressed,
                                        "cannot read the UDP socket (recvmmsg); DNS over UDP is \
                                         not answered. Is a seccomp filter or sandbox refusing \
                                         the system call?"
                                    );
                                }
                            }
                            _ => tracing::debug!(%error, "UDP receive error"),
                        }
                        continue;
                    }
                },
            };
            batch += count;
            for i in 0..count {
                let (packet, src) = received.get(i);
                let Some(src) = src.filter(|src| can_answer(*src)) else {
                    continue;
                };
                if packet.len() > MAX_QUERY {
                    // Answered here from the header alone: nothing of it is
                    // kept, and the reply is smaller than the query.
                    if let Some(reply) = oversized_reply(packet) {
                        self.handler
                            .metrics()
                            .responses
                            .with_label_values(&[crate::metrics::rcode_label(
                                ResponseCode::FormErr,
                            )])
                            .inc();
                        let _ = socket.try_send_to(&reply, src);
                    }
                    continue;
                }
                if self.handler.answer_now(packet, src, replies.next_buffer()) {
                    replies.push(src);
                    continue;
                }
                // The answers so far wait for a miss's first poll (tens
                // of microseconds): sending them before it cost 7% of the
                // realistic mix's QPS and did not lower p99 at 10,000 QPS
                // (docs/performance.md).
                self.hand_on(packet, src, &socket, &tasks, &overload_log);
            }
            // Before anything waits: the answers go out together.
            replies.send(&socket).await;
        }
        tasks.close();
        tasks.wait().await;
    }

    /// Hands a query the fast path could not answer to the full path.
    fn hand_on(
        &self,
        packet: &[u8],
        src: SocketAddr,
        socket: &Arc<UdpSocket>,
        tasks: &TaskTracker,
        overload_log: &crate::throttle::Throttle,
    ) {
        // A flood of names nobody asked before would otherwise queue
        // here without bound, each waiting seconds on the upstreams.
        // With `max_waiting` queries waiting, a new one still gets its
        // first poll, which answers whatever needs no waiting (local
        // names, refusals, stale answers, ...); one that would wait is
        // dropped like a packet lost on the way: the client asks again
        // (or its other server), and nothing is sent to a source that
        // may be forged.
        let room = tasks.len() < self.max_waiting;
        let (socket, handler, packet) = (socket.clone(), self.handler.clone(), packet.to_vec());
        let kept = spawn_eagerly(
            tasks.track_future(async move {
                let reply = UdpReply { socket, to: src };
                respond(&*handler, packet, src, reply).await;
            }),
            room,
        );
        if !kept {
            self.handler.metrics().overload_dropped.inc();
            if let Some(suppressed) = overload_log.ready() {
                tracing::warn!(
                    suppressed,
                    "{} UDP queries are waiting on the upstreams; dropping new ones \
                     that would wait too. A flood, or upstreams that stopped \
                     answering; if this is your own network's load, raise \
                     [server] udp_max_waiting",
                    tasks.len()
                );
            }
        }
    }
}

/// Datagrams read per system call (`recvmmsg`), and replies sent per call
/// (`sendmmsg`). Under load the socket holds many at once, and a system
/// call costs more than answering a cached or blocked name; when it holds
/// one, one is read and answered at once, as before.
const RECEIVE_BATCH: usize = 32;

/// The buffers of one `recvmmsg`: [`RECEIVE_BATCH`] datagrams of at most
/// [`RECEIVE_BUFFER`] bytes, and where each came from. Allocated once per
/// receive thread.
///
/// The calls are made through `libc` directly: nix's wrappers leave the
/// offered address length as the last call set it, and read the
/// addresses of a `sendmmsg` that never wrote them. The headers point
/// into the boxed slices beside them, set once: a box's contents stay
/// where they are when the struct moves, and none is ever resized.
struct Received {
    buffers: Box<[u8]>,
    names: Box<[libc::sockaddr_storage]>,
    iovecs: Box<[libc::iovec]>,
    headers: Box<[libc::mmsghdr]>,
    /// Length and source of each datagram of the last call.
    got: [(usize, Option<SocketAddr>); RECEIVE_BATCH],
}

impl Received {
    fn new() -> Self {
        let mut me = Self {
            buffers: vec![0; RECEIVE_BATCH * RECEIVE_BUFFER].into_boxed_slice(),
            names: (0..RECEIVE_BATCH).map(|_| zeroed_c()).collect(),
            iovecs: (0..RECEIVE_BATCH).map(|_| zeroed_c()).collect(),
            headers: (0..RECEIVE_BATCH).map(|_| zeroed_c()).collect(),
            got: [(0, None); RECEIVE_BATCH],
        };
        let buffers = me.buffers.chunks_exact_mut(RECEIVE_BUFFER);
        for (((header, iovec), name), buffer) in me
            .headers
            .iter_mut()
            .zip(me.iovecs.iter_mut())
            .zip(me.names.iter_mut())
            .zip(buffers)
        {
            iovec.iov_base = buffer.as_mut_ptr().cast();
            iovec.iov_len = buffer.len();
            header.msg_hdr.msg_name = std::ptr::from_mut(name).cast();
            header.msg_hdr.msg_namelen = SOCKADDR_STORAGE_LEN;
            header.msg_hdr.msg_iov = std::ptr::from_mut(iovec);
            header.msg_hdr.msg_iovlen = 1;
        }
        me
    }

    /// Reads what the socket holds, up to [`RECEIVE_BATCH`] datagrams,
    /// without waiting; how many.
    fn receive(&mut self, fd: std::os::fd::RawFd) -> io::Result<usize> {
        // SAFETY: each header points at a buffer, an iovec and an address
        // owned by this struct with their true sizes (set in `new`), and
        // `&mut self` keeps every other use of them out for the call.
        let count = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                RECEIVE_BATCH as libc::c_uint,
                // `as _`: c_int in glibc, c_uint in musl.
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        let count = usize::try_from(count).map_err(|_| io::Error::last_os_error())?;
        for ((got, header), name) in self
            .got
            .iter_mut()
            .zip(self.headers.iter_mut())
            .zip(self.names.iter())
            .take(count)
        {
            *got = (
                (header.msg_len as usize).min(RECEIVE_BUFFER),
                socket_addr(name, header.msg_hdr.msg_namelen),
            );
            // The kernel wrote back the length it stored: the next call
            // offers the whole storage again.
            header.msg_hdr.msg_namelen = SOCKADDR_STORAGE_LEN;
        }
        Ok(count)
    }

    /// Datagram `i` of the last call and its source.
    fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        let (len, src) = self.got[i];
        let start = i * RECEIVE_BUFFER;
        (&self.buffers[start..start + len], src)
    }
}

/// A C structure with all bytes zero.
fn zeroed_c<T: CPlain>() -> T {
    // SAFETY: `CPlain` types are plain C structures (integers and raw
    // pointers), for which all zeros is a valid value.
    unsafe { std::mem::zeroed() }
}

/// The `libc` structures [`zeroed_c`] may make.
trait CPlain {}
impl CPlain for libc::sockaddr_storage {}
impl CPlain for libc::iovec {}
impl CPlain for libc::mmsghdr {}

const SOCKADDR_STORAGE_LEN: libc::socklen_t =
    size_of::<libc::sockaddr_storage>() as libc::socklen_t;

/// The address the kernel wrote in `name` (`len` bytes of it).
fn socket_addr(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(name.ss_family) {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a sockaddr_in (its family says so, and
            // its length fits); sockaddr_storage is aligned for any sockaddr.
            let sin = unsafe { &*std::ptr::from_ref(name).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::from((
                std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, a sockaddr_in6.
            let sin6 = unsafe { &*std::ptr::from_ref(name).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Writes `addr` into `name` as the kernel takes it; its length.
fn write_sockaddr(name: &mut libc::sockaddr_storage, addr: SocketAddr) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any
            // sockaddr, and every field written is plain data.
            let sin = unsafe { &mut *std::ptr::from_mut(name).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            };
            sin.sin_zero = [0; 8];
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *std::ptr::from_mut(name).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_flowinfo = v6.flowinfo();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            sin6.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The fast path's replies to one batch, sent together. As in
/// [`Received`], the headers point into boxes beside them, set once; each
/// reply's own buffer (which may grow) is pointed at when it is kept.
struct Replies {
    buffers: Box<[Vec<u8>]>,
    to: [SocketAddr; RECEIVE_BATCH],
    count: usize,
    names: Box<[libc::sockaddr_storage]>,
    iovecs: Box<[libc::iovec]>,
    headers: Box<[libc::mmsghdr]>,
}

impl Replies {
    fn new() -> Self {
        let mut me = Self {
            buffers: (0..RECEIVE_BATCH)
                .map(|_| Vec::with_capacity(512))
                .collect(),
            to: [SocketAddr::from(([0, 0, 0, 0], 0)); RECEIVE_BATCH],
            count: 0,
            names: (0..RECEIVE_BATCH).map(|_| zeroed_c()).collect(),
            iovecs: (0..RECEIVE_BATCH).map(|_| zeroed_c()).collect(),
            headers: (0..RECEIVE_BATCH).map(|_| zeroed_c()).collect(),
        };
        for ((header, iovec), name) in me
            .headers
            .iter_mut()
            .zip(me.iovecs.iter_mut())
            .zip(me.names.iter_mut())
        {
            header.msg_hdr.msg_name = std::ptr::from_mut(name).cast();
            header.msg_hdr.msg_iov = std::ptr::from_mut(iovec);
            header.msg_hdr.msg_iovlen = 1;
        }
        me
    }

    /// The buffer for the next reply (kept only if [`Replies::push`]ed).
    fn next_buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buffers[self.count]
    }

    /// Keeps the reply just written, for `to`.
    fn push(&mut self, to: SocketAddr) {
        let i = self.count;
        let buffer = &self.buffers[i];
        self.iovecs[i].iov_base = buffer.as_ptr().cast_mut().cast();
        self.iovecs[i].iov_len = buffer.len();
        self.headers[i].msg_hdr.msg_namelen = write_sockaddr(&mut self.names[i], to);
        self.to[i] = to;
        self.count += 1;
    }

    /// Sends replies `from..` with one `sendmmsg`, without waiting; how
    /// many went.
    fn send_some(&mut self, fd: std::os::fd::RawFd, from: usize) -> io::Result<usize> {
        let rest = &mut self.headers[from..self.count];
        // SAFETY: the headers of the replies kept point at their buffers
        // and addresses with their true lengths (set by `push`), which
        // `&mut self` keeps unchanged for the call; the kernel only reads
        // them, and writes each header's `msg_len`.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                rest.as_mut_ptr(),
                rest.len() as libc::c_uint,
                // `as _`: c_int in glibc, c_uint in musl.
                libc::MSG_DONTWAIT as _,
            )
        };
        usize::try_from(sent).map_err(|_| io::Error::last_os_error())
    }

    /// Sends the replies kept, as many per system call as the socket
    /// takes; waits for room only when it has none.
    async fn send(&mut self, socket: &UdpSocket) {
        let mut sent = 0;
        while sent < self.count {
            let result = socket.try_io(tokio::io::Interest::WRITABLE, || {
                self.send_some(socket.as_raw_fd(), sent)
            });
            match result {
                Ok(count) => sent += count.max(1),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    // The socket's send buffer is full: the next reply
                    // waits for room, then the rest go on.
                    let to = self.to[sent];
                    if let Err(error) = socket.send_to(&self.buffers[sent], to).await {
                        tracing::debug!(%error, client = %to, "could not send a response");
                    }
                    sent += 1;
                }
                // The first of the rest could not be sent (its destination
                // unreachable, say): the others still go.
                Err(error) => {
                    tracing::debug!(%error, client = %self.to[sent], "could not send a response");
                    sent += 1;
                }
            }
        }
        self.count = 0;
    }
}

/// FORMERR to a query over [`MAX_QUERY`] bytes: its ID, opcode and RD,
/// no sections. `None` for a response (QR set), never answered.
fn oversized_reply(packet: &[u8]) -> Option<[u8; DNS_HEADER_LEN]> {
    let head = packet.get(..4)?;
    if head[2] & 0x80 != 0 {
        return None;
    }
    let mut reply = [0u8; DNS_HEADER_LEN];
    reply[..2].copy_from_slice(&head[..2]);
    // QR, the opcode and RD as asked; RA; RCODE 1 (FORMERR).
    reply[2] = 0x80 | (head[2] & 0x79);
    reply[3] = 0x80 | ResponseCode::FormErr.low();
    Some(reply)
}

/// Runs `task` until it first waits, then leaves the rest to the runtime.
///
/// A query the fast path could not answer (a cache miss, mostly) is sent
/// upstream now, before this thread reads the next datagram, rather than
/// when the receive loop next finds its socket empty: under load that
/// wait was the slowest part of a miss on this side of the upstream. The
/// first poll uses a no-op waker; every future on the full path registers
/// its waker again when polled, and a spawned task is always polled once,
/// so nothing a first poll waits for is missed.
///
/// A panic in that first poll costs the one query, as it would in a task
/// (tokio catches those): it must not unwind through the receive loop and
/// end this thread's service.
///
/// Without `room`, a task still waiting after its first poll is dropped
/// (cancelled) instead of spawned; returns `false` then.
fn spawn_eagerly(task: impl Future<Output = ()> + Send + 'static, room: bool) -> bool {
    let mut task = Box::pin(task);
    let polled = panic::catch_unwind(AssertUnwindSafe(|| {
        task.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }));
    match polled {
        Ok(Poll::Pending) if room => drop(tokio::spawn(task)),
        Ok(Poll::Ready(())) => {}
        Ok(Poll::Pending) => {
            let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(task)));
            return false;
        }
        Err(_) => {
            tracing::error!("a query's handling panicked; the query is dropped");
            // Dropped as tokio drops a panicked task: a panic there too is
            // contained.
            let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(task)));
        }
    }
    true
}

/// How far ahead [`keep_a_timer_armed`] keeps its timer: shorter than any
/// upstream timeout worth having.
const KEEP_ARMED: Duration = Duration::from_millis(250);

/// Keeps a timer armed on this thread's runtime until `shutdown`, and
/// beats `heartbeat` with each tick.
///
/// tokio's timer driver wakes its event loop (a write to an eventfd, then
/// an `epoll_wait` that returns at once) whenever a timer is armed that is
/// due before the next wake-up it knows of; with no timer armed, that is
/// every timer. Each upstream query arms two (the attempt's timeout and
/// the overall budget), so every cache miss cost two extra system calls
/// and a turn of the loop before the upstream's reply could be read. With
/// a timer always due within [`KEEP_ARMED`], the misses' later timers are
/// armed without waking anything; the cost is four wake-ups a second,
/// which also close this thread's upstream sockets too old to reuse and
/// tell the watchdog that this thread runs.
async fn keep_a_timer_armed(heartbeat: Heartbeat, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(KEEP_ARMED);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                heartbeat.beat();
                crate::upstream::close_expired_udp_sockets();
            }
            () = shutdown.cancelled() => return,
        }
    }
}

/// Sends the full path's reply straight from the socket it came in on.
#[derive(Clone)]
struct UdpReply {
    socket: Arc<UdpSocket>,
    to: SocketAddr,
}

impl Deliver for UdpReply {
    fn protocol(&self) -> Protocol {
        Protocol::Udp
    }

    async fn deliver(&self, bytes: Vec<u8>) -> Result<(), NetError> {
        self.socket.send_to(&bytes, self.to).await?;
        Ok(())
    }
}

/// Whether a reply to `src` could arrive anywhere: not port 0, not an
/// unspecified or broadcast address (the checks hickory's `Server` makes,
/// so a forged source cannot turn telesink into a reflector to them).
fn can_answer(src: SocketAddr) -> bool {
    src.port() != 0
        && match src.ip() {
            IpAddr::V4(v4) => !v4.is_unspecified() && !v4.is_broadcast(),
            IpAddr::V6(v6) => !v6.is_unspecified(),
        }
}

/// A query in the one shape the fast path answers: a standard query with
/// exactly one IN question whose name has no compression pointers, and at
/// most an EDNS(0) OPT record.
struct Parsed<'a> {
    /// Bytes 0..4 of the header: the ID and the flags.
    head: [u8; 4],
    /// The question as the client sent it (its letter case kept).
    question: &'a [u8],
    name: LowerName,
    qtype: RecordType,
    /// The client's EDNS UDP payload size and DO bit, if it sent OPT.
    edns: Option<(u16, bool)>,
}

impl Parsed<'_> {
    fn recursion_desired(&self) -> bool {
        self.head[2] & 0x01 != 0
    }

    fn checking_disabled(&self) -> bool {
        self.head[3] & 0x10 != 0
    }

    /// Whether the client can use the AD bit: it set AD or DO (RFC 6840
    /// §5.8).
    fn wants_authentic_data(&self) -> bool {
        self.head[3] & 0x20 != 0 || self.edns.is_some_and(|(_, dnssec_ok)| dnssec_ok)
    }
}

/// The big-endian `u16` at `at`, if `bytes` holds it.
pub(crate) fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Parses `packet` if the fast path can answer its shape; `None` sends it
/// the full way, which also answers the malformed ones.
fn parse(packet: &[u8]) -> Option<Parsed<'_>> {
    let head: [u8; 4] = packet.get(..4)?.try_into().ok()?;
    // QR=0 (a query), opcode 0 (QUERY), TC=0.
    if head[2] & 0xFA != 0 {
        return None;
    }
    let counts = (
        u16_at(packet, 4)?,
        u16_at(packet, 6)?,
        u16_at(packet, 8)?,
        u16_at(packet, 10)?,
    );
    if !matches!(counts, (1, 0, 0, 0 | 1)) {
        return None;
    }
    // The name, label by label: no pointers, no extended label types.
    let at = plain_name_end(packet, DNS_HEADER_LEN)?;
    if at - DNS_HEADER_LEN > 255 {
        return None;
    }
    let qtype = RecordType::from(u16_at(packet, at)?);
    if u16_at(packet, at + 2)? != u16::from(DNSClass::IN) {
        return None;
    }
    // Types the handler refuses or rejects (see `server::reject`), and ANY,
    // which only needs the full path's RFC 8482 answer.
    if matches!(
        qtype,
        RecordType::OPT
            | RecordType::AXFR
            | RecordType::IXFR
            | RecordType::TSIG
            | RecordType::ANY
            | RecordType::Unknown(253 | 254)
    ) {
        return None;
    }
    let end = at + 4;
    let question = packet.get(DNS_HEADER_LEN..end)?;
    let edns = if counts.3 == 1 {
        Some(opt_edns(packet, end)?)
    } else if end == packet.len() {
        None
    } else {
        return None;
    };
    let name = Name::read(&mut BinDecoder::new(question)).ok()?;
    Some(Parsed {
        head,
        question,
        name: LowerName::from(name),
        qtype,
        edns,
    })
}

/// The payload size and DO bit of the EDNS(0) OPT record at `at`, the
/// last thing in `packet`; `None` for anything else there (other versions
/// get BADVERS from the full path).
fn opt_edns(packet: &[u8], at: usize) -> Option<(u16, bool)> {
    let opt = packet.get(at..)?;
    // Root owner name, type OPT, payload size, extended RCODE, version.
    if opt.len() < 11 || opt[0] != 0 || u16_at(opt, 1)? != u16::from(RecordType::OPT) {
        return None;
    }
    if opt[6] != 0 {
        return None;
    }
    let rdlen = usize::from(u16_at(opt, 9)?);
    if opt.len() != 11 + rdlen {
        return None;
    }
    if rdlen > 0 {
        // Options are rare; have hickory read them, so that whatever it
        // would reject still goes the full way and gets its FORMERR.
        let mut decoder = BinDecoder::new(opt);
        Record::read(&mut decoder).ok()?;
        if !decoder.is_empty() {
            return None;
        }
    }
    Some((u16_at(opt, 3)?, opt[7] & 0x80 != 0))
}

impl<R: Resolve> Handler<R> {
    /// Writes the reply to `packet` into `reply` if the fast path can give
    /// it, and records the query's metrics; `false` if the full path must
    /// answer (then nothing was recorded).
    pub(crate) fn answer_now(&self, packet: &[u8], src: SocketAddr, reply: &mut Vec<u8>) -> bool {
        let started = Instant::now();
        let Some(parsed) = parse(packet) else {
            return false;
        };
        let query = Query {
            name: &parsed.name,
            qtype: parsed.qtype,
            qclass: DNSClass::IN,
            client: src.ip(),
            checking_disabled: parsed.checking_disabled(),
        };
        // The client's limit as the full path takes it, and DO.
        let limit = self.udp_limit(parsed.edns.map(|(payload, _)| payload));
        let edns = parsed.edns.map(|(_, dnssec_ok)| dnssec_ok);
        let (outcome, rcode) = match self.chain().peek(&query) {
            Peek::Slow => return false,
            Peek::Blocked { policy, list } => match null_address(&policy, parsed.qtype) {
                // The common case, written directly: the one address record
                // `blocked_answer` would make, without building a record
                // and encoding it.
                Some((data, len)) => {
                    write_head(reply, &parsed, false, ResponseCode::NoError);
                    write_address(reply, &parsed, policy.ttl, &data[..len]);
                    set_counts(reply, [1, 0, 0]);
                    (
                        Outcome::Blocked { list, cname: None },
                        ResponseCode::NoError,
                    )
                }
                None => {
                    let answer = blocked_answer(&policy, &query, list, None);
                    write_head(reply, &parsed, false, answer.rcode);
                    let counts = [
                        answer.answers.len(),
                        answer.authorities.len(),
                        answer.additionals.len(),
                    ];
                    if answer.emit_after_question(reply, |_| {}).is_none() {
                        self.chain().declined(&query);
                        return false;
                    }
                    set_counts(reply, counts.map(|n| u16::try_from(n).unwrap_or(u16::MAX)));
                    (answer.outcome, answer.rcode)
                }
            },
            Peek::Cached(hit) => {
                let wire = hit.wire();
                if wire.question_len != parsed.question.len()
                    || DNS_HEADER_LEN + wire.question_len + wire.len() + 11 > usize::from(limit)
                {
                    self.chain().declined(&query);
                    return false;
                }
                write_head(reply, &parsed, wire.authentic_data, wire.rcode);
                wire.write(reply, hit.age());
                set_counts(reply, wire.counts);
                hit.commit(self.metrics());
                (Outcome::Cached, wire.rcode)
            }
        };
        if let Some(dnssec_ok) = edns {
            reply.extend_from_slice(&opt_record(self.edns_udp_size(), dnssec_ok));
            let additionals = u16::from_be_bytes([reply[10], reply[11]]);
            reply[10..12].copy_from_slice(&additionals.saturating_add(1).to_be_bytes());
        }
        if reply.len() > usize::from(limit) {
            // Too big for the client's buffer: the full path truncates.
            // Only a blocked answer can get here (cache hits are checked
            // before anything is counted), so nothing is counted twice.
            self.chain().declined(&query);
            return false;
        }
        self.metrics()
            .observe_query(parsed.qtype, &outcome, rcode, started.elapsed());
        let client = self.clients().label(query.client);
        // The name as sent: the question less its type and class.
        let wire = &parsed.question[..parsed.question.len().saturating_sub(4)];
        self.observe_client(&query, Some(wire), &client, &outcome);
        true
    }
}

/// Starts `reply` with the header of a response to `parsed` (section
/// counts zero) and the question as the client sent it.
fn write_head(reply: &mut Vec<u8>, parsed: &Parsed<'_>, authentic_data: bool, rcode: ResponseCode) {
    reply.clear();
    // QR, opcode QUERY, RD copied; RA, AD (for a client that asked for
    // it), CD copied, the RCODE's low bits.
    let authentic_data = authentic_data && parsed.wants_authentic_data();
    let flags = [
        0x80 | u8::from(parsed.recursion_desired()),
        0x80 | u8::from(authentic_data) << 5
            | u8::from(parsed.checking_disabled()) << 4
            | rcode.low(),
    ];
    reply.extend_from_slice(&[parsed.head[0], parsed.head[1], flags[0], flags[1]]);
    reply.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    reply.extend_from_slice(parsed.question);
}

/// The record data of a `null`-mode blocked answer to `qtype`, if it has
/// one (A and AAAA; other types get NODATA), as bytes and their length.
fn null_address(policy: &BlockPolicy, qtype: RecordType) -> Option<([u8; 16], usize)> {
    if policy.mode != BlockMode::Null {
        return None;
    }
    let mut data = [0; 16];
    match qtype {
        RecordType::A => {
            data[..4].copy_from_slice(&policy.ipv4.octets());
            Some((data, 4))
        }
        RecordType::AAAA => Some((policy.ipv6.octets(), 16)),
        _ => None,
    }
}

/// Appends one answer record for the queried name and type, as hickory
/// encodes it in this position: the owner name in full (lowercase, as the
/// chain sees it; nothing before it to point to), class IN, `ttl`, `data`.
fn write_address(reply: &mut Vec<u8>, parsed: &Parsed<'_>, ttl: u32, data: &[u8]) {
    let (name, qtype) = parsed.question.split_at(parsed.question.len() - 4);
    reply.extend(name.iter().map(u8::to_ascii_lowercase));
    reply.extend_from_slice(&qtype[..2]);
    reply.extend_from_slice(&[0, 1]);
    reply.extend_from_slice(&ttl.to_be_bytes());
    // At most 16 bytes of data.
    reply.extend_from_slice(&[0, data.len() as u8]);
    reply.extend_from_slice(data);
}

fn set_counts(reply: &mut [u8], counts: [u16; 3]) {
    for (i, n) in counts.into_iter().enumerate() {
        reply[6 + 2 * i..8 + 2 * i].copy_from_slice(&n.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::answer_bytes;
    use std::path::Path;
    use std::str::FromStr;

    use hickory_proto::op::{Edns, Message, Query as Question};
    use hickory_proto::rr::RData;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA};

    use crate::clients::Clients;
    use crate::config::{BlockMode, Config};
    use crate::controls::Controls;
    use crate::lists::{BuildLimits, ListInput, ListKind, ListStore, Snapshot};
    use crate::metrics::Metrics;
    use crate::resolver::{Answer, BlockPolicy, chain_with};

    /// Answers by name: a CNAME chain, a negative answer with an SOA, a
    /// CNAME into a blocked name, and an address for anything else.
    struct Upstream;

    fn name(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    /// Data of the asked type, for the types the tests ask; `None` for
    /// the rest (NODATA).
    fn data(qtype: RecordType, last: u8) -> Option<RData> {
        match qtype {
            RecordType::A => Some(RData::A(A::new(192, 0, 2, last))),
            RecordType::AAAA => Some(RData::AAAA(AAAA::new(
                0x2001,
                0xdb8,
                0,
                0,
                0,
                0,
                0,
                last.into(),
            ))),
            RecordType::MX => Some(RData::MX(MX::new(10, name("mail.example.")))),
            _ => None,
        }
    }

    impl Resolve for Upstream {
        async fn resolve(&self, query: &Query<'_>) -> Answer {
            let owner = Name::from(query.name.clone());
            let mut answer = Answer::empty(Outcome::Forwarded, ResponseCode::NoError);
            let cname =
                |from: Name, to: &str| Record::from_rdata(from, 600, RData::CNAME(CNAME(name(to))));
            let soa = || {
                Record::from_rdata(
                    name("test."),
                    900,
                    RData::SOA(SOA::new(
                        name("ns.test."),
                        name("hostmaster.test."),
                        7,
                        3600,
                        600,
                        86400,
                        300,
                    )),
                )
            };
            match owner.to_ascii().as_str() {
                "panic.test." => panic!("the handler of one query panics"),
                "www.cdn.test." => {
                    answer.answers.push(cname(owner, "edge.cdn.example."));
                    answer
                        .answers
                        .push(cname(name("edge.cdn.example."), "a.edge.cdn.example."));
                    for last in 1..=3 {
                        if let Some(data) = data(query.qtype, last) {
                            answer.answers.push(Record::from_rdata(
                                name("a.edge.cdn.example."),
                                120,
                                data,
                            ));
                        }
                    }
                }
                "nx.test." => {
                    answer.rcode = ResponseCode::NXDomain;
                    answer.authorities.push(soa());
                }
                "cloaked.test." => answer.answers.push(cname(owner, "tracker.test.")),
                _ => {
                    if let Some(data) = data(query.qtype, 7) {
                        answer.answers.push(Record::from_rdata(owner, 300, data));
                    }
                }
            }
            if answer.rcode == ResponseCode::NoError
                && !answer
                    .answers
                    .iter()
                    .any(|r| r.record_type() == query.qtype)
            {
                // NODATA, also after a CNAME chain.
                answer.authorities.push(soa());
            }
            answer.authentic_data = query.name.to_string().starts_with("www");
            answer
        }
    }

    fn handler(mode: BlockMode) -> Handler<impl Resolve> {
        let config = Config::from_toml(
            "[upstream]\nservers = [\"127.0.0.1:9\"]\n",
            "test.toml",
            Path::new("."),
        )
        .unwrap();
        let snapshot = Snapshot::build(
            vec![
                ListInput::from_text("vendor", ListKind::Block, "tracker.test\n"),
                ListInput::from_text("essential", ListKind::Allow, "ok.tracker.test\n"),
            ],
            BlockPolicy {
                mode,
                ..BlockPolicy::default()
            },
            BuildLimits {
                max_regex_per_list: 10,
            },
            None,
        );
        let metrics = Arc::new(Metrics::new());
        let chain = chain_with(
            &config,
            Arc::new(ListStore::new(snapshot)),
            metrics.clone(),
            Arc::new(Controls::default()),
            Upstream,
        );
        let clients = Arc::new(Clients::new(&[], &config.metrics));
        Handler::new(chain, metrics, clients, 1232)
    }

    /// A query for `qname` (letter case kept), with an OPT record of
    /// `payload` when given, and a cookie option when `cookie`.
    fn packet(
        qname: &str,
        qtype: RecordType,
        payload: Option<u16>,
        cookie: bool,
        id: u16,
    ) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = id;
        message.metadata.recursion_desired = id.is_multiple_of(2);
        message.metadata.checking_disabled = id.is_multiple_of(3);
        message.add_query(Question::query(name(qname), qtype));
        if let Some(payload) = payload {
            let mut edns = Edns::new();
            edns.set_max_payload(payload);
            edns.set_dnssec_ok(id.is_multiple_of(5));
            if cookie {
                edns.options_mut()
                    .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                        10,
                        vec![1, 2, 3, 4, 5, 6, 7, 8],
                    ));
            }
            message.edns = Some(edns);
        }
        let mut bytes = message.to_vec().unwrap();
        // hickory writes names lowercase; put the letter case back, as a
        // resolver using 0x20 randomisation sends it.
        let mut at = DNS_HEADER_LEN;
        for label in qname.trim_end_matches('.').split('.') {
            at += 1;
            bytes[at..at + label.len()].copy_from_slice(label.as_bytes());
            at += label.len();
        }
        bytes
    }

    /// Runs `packet` through the full path (which may fill the cache), then
    /// the fast path, then the full path again; returns whether the fast
    /// path answered, after checking that it sent what the full path did.
    /// The first reply must be the same too: for a miss the cache stored,
    /// the handler sent the cache's encoding, as it does for the hit
    /// after it (`server::tests::wire_replies_are_what_hickory_encodes`
    /// holds that encoding to hickory's).
    async fn compare(handler: &Handler<impl Resolve>, packet: &[u8]) -> bool {
        let src: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let first = answer_bytes(handler, packet, src, Protocol::Udp)
            .await
            .expect("a reply");
        let mut fast = Vec::new();
        if !handler.answer_now(packet, src, &mut fast) {
            return false;
        }
        let full = answer_bytes(handler, packet, src, Protocol::Udp).await;
        assert_eq!(Some(&fast), full.as_ref(), "{packet:?}");
        assert_eq!(Some(first), full, "the first reply, {packet:?}");
        true
    }

    #[tokio::test]
    async fn fast_path_matches_the_handler() {
        let modes = [
            BlockMode::Null,
            BlockMode::Nxdomain,
            BlockMode::Nodata,
            BlockMode::Refused,
        ];
        let mut id = 0;
        for mode in modes {
            let handler = handler(mode);
            let deep = format!("{}tracker.test.", "x.".repeat(61));
            for qname in [
                "tracker.test.",
                "Www.Tracker.TEST.",
                // Names of many labels fill the encoder's 64 compression
                // candidates, where the question's own candidate counts.
                deep.as_str(),
                "www.cdn.test.",
                "WWW.cdn.Test.",
                "nx.test.",
                "plain.example.",
            ] {
                for qtype in [
                    RecordType::A,
                    RecordType::AAAA,
                    RecordType::MX,
                    RecordType::HTTPS,
                ] {
                    for (payload, cookie) in [
                        (None, false),
                        (Some(1232), false),
                        (Some(4096), true),
                        (Some(512), false),
                        (Some(100), false),
                    ] {
                        id += 1;
                        let packet = packet(qname, qtype, payload, cookie, id);
                        assert!(
                            compare(&handler, &packet).await,
                            "fast path declined {qname} {qtype} {payload:?} {mode:?}"
                        );
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn fast_path_declines_what_only_the_full_path_answers() {
        let handler = handler(BlockMode::Null);
        // An allowed name under a blocked parent is forwarded, then a
        // plain cache hit.
        let allowed = packet("ok.tracker.test.", RecordType::A, None, false, 1);
        assert!(compare(&handler, &allowed).await);
        let declined = [
            // A cached CNAME into a blocked name: the full path blocks it.
            packet("cloaked.test.", RecordType::A, None, false, 2),
            // ANY (RFC 8482), special-use names.
            packet("plain.example.", RecordType::ANY, None, false, 3),
            packet("localhost.", RecordType::A, None, false, 4),
            packet("1.0.0.127.in-addr.arpa.", RecordType::PTR, None, false, 5),
        ];
        for packet in &declined {
            assert!(!compare(&handler, packet).await, "{packet:?}");
        }
        let mut chaos = packet("version.bind.", RecordType::TXT, None, false, 6);
        let class_at = chaos.len() - 2;
        chaos[class_at..].copy_from_slice(&3u16.to_be_bytes());
        let mut notify = packet("plain.example.", RecordType::SOA, None, false, 7);
        notify[2] |= 4 << 3;
        let mut edns1 = packet("plain.example.", RecordType::A, Some(1232), false, 8);
        let version_at = edns1.len() - 5;
        edns1[version_at] = 1;
        let mut trailing = packet("tracker.test.", RecordType::A, None, false, 9);
        trailing.push(0);
        let mut pointer = packet("tracker.test.", RecordType::A, None, false, 10);
        pointer.truncate(12);
        pointer.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
        let src: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        for packet in [chaos, notify, edns1, trailing, pointer, vec![0; 11], vec![]] {
            let mut fast = Vec::new();
            assert!(!handler.answer_now(&packet, src, &mut fast), "{packet:?}");
        }
    }

    /// One receive thread on an ephemeral 127.0.0.1 port, with a handler
    /// that blocks in null mode: the server, its address, and the token
    /// that stops it.
    fn serving(runtime: &tokio::runtime::Runtime) -> (UdpServer, SocketAddr, CancellationToken) {
        let _context = runtime.enter();
        let socket = runtime.block_on(UdpSocket::bind("127.0.0.1:0")).unwrap();
        let addr = socket.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let handler = Arc::new(handler(BlockMode::Null));
        let server = start(socket, 1, 4096, handler, shutdown.clone()).unwrap();
        (server, addr, shutdown)
    }

    /// A query whose handling panics in its first poll (run inside the
    /// receive loop) is dropped; the thread goes on serving.
    #[test]
    fn a_panicking_query_does_not_stop_the_receive_thread() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (server, addr, shutdown) = serving(&runtime);
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        client
            .send_to(&packet("panic.test.", RecordType::A, None, false, 1), addr)
            .unwrap();
        // Asked until answered, within a deadline: the first datagram may
        // race the thread's start.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut reply = [0; 512];
        let answered = loop {
            client
                .send_to(
                    &packet("plain.example.", RecordType::A, None, false, 2),
                    addr,
                )
                .unwrap();
            match client.recv(&mut reply) {
                Ok(n) if n >= 2 && reply[..2] == [0, 2] => break true,
                _ if Instant::now() > deadline => break false,
                _ => {}
            }
        };
        shutdown.cancel();
        runtime.block_on(server.stopped());
        assert!(answered, "the receive thread stopped after a panic");
    }

    /// recvmmsg takes what the socket holds, 32 at a time, each datagram
    /// with its own sender, length (an oversized one cut at the buffer)
    /// and bytes; sendmmsg sends each reply to its own client. Over IPv4
    /// and, where the machine has it, IPv6.
    #[test]
    fn batches_keep_each_datagram_with_its_sender() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(server) = std::net::UdpSocket::bind(local) else {
                eprintln!("skipping {local}: cannot bind it here");
                continue;
            };
            let addr = server.local_addr().unwrap();
            let clients: Vec<_> = (0..3)
                .map(|_| std::net::UdpSocket::bind(local).unwrap())
                .collect();
            // 40 datagrams, sent before any is read: the socket holds them
            // all (loopback delivers as it sends).
            let mut sent = Vec::new();
            for i in 0..40usize {
                let len = if i == 7 { MAX_QUERY + 500 } else { 20 + i };
                let datagram: Vec<u8> = (0..len).map(|b| (b + i) as u8).collect();
                let client = &clients[i % 3];
                client.send_to(&datagram, addr).unwrap();
                sent.push((datagram, client.local_addr().unwrap()));
            }
            let mut received = Received::new();
            let fd = server.as_raw_fd();
            let mut got = Vec::new();
            for want in [RECEIVE_BATCH, 40 - RECEIVE_BATCH] {
                assert_eq!(received.receive(fd).unwrap(), want, "{local}");
                for i in 0..want {
                    let (bytes, src) = received.get(i);
                    got.push((bytes.to_vec(), src.unwrap()));
                }
            }
            let error = received.receive(fd).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
            for (i, ((bytes, src), (datagram, from))) in got.iter().zip(&sent).enumerate() {
                assert_eq!(src, from, "{local} datagram {i}");
                let cut = datagram.len().min(RECEIVE_BUFFER);
                assert_eq!(bytes[..], datagram[..cut], "{local} datagram {i}");
            }

            // Replies: one per datagram of the first batch, to its sender.
            server.set_nonblocking(true).unwrap();
            let socket = {
                let _context = runtime.enter();
                UdpSocket::from_std(server).unwrap()
            };
            let mut replies = Replies::new();
            for (i, (_, to)) in got.iter().take(RECEIVE_BATCH).enumerate() {
                let buffer = replies.next_buffer();
                buffer.clear();
                buffer.extend_from_slice(format!("reply {i}").as_bytes());
                replies.push(*to);
            }
            runtime.block_on(replies.send(&socket));
            for (c, client) in clients.iter().enumerate() {
                client
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                for i in (c..RECEIVE_BATCH).step_by(3) {
                    let mut buf = [0; 64];
                    let (n, from) = client.recv_from(&mut buf).unwrap();
                    assert_eq!(from, addr);
                    assert_eq!(&buf[..n], format!("reply {i}").as_bytes(), "{local}");
                }
            }
        }
    }

    /// A reply the kernel refuses (to a broadcast address, without
    /// SO_BROADCAST) costs only itself: the replies after it in the batch
    /// still go.
    #[test]
    fn a_refused_reply_does_not_stop_the_rest_of_the_batch() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _context = runtime.enter();
        let socket = runtime.block_on(UdpSocket::bind("127.0.0.1:0")).unwrap();
        let addr = socket.local_addr().unwrap();
        let clients: Vec<_> = (0..2)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        // Writable already known, so the batch goes through sendmmsg.
        runtime.block_on(socket.writable()).unwrap();
        let mut replies = Replies::new();
        let to = [
            clients[0].local_addr().unwrap(),
            "255.255.255.255:53".parse().unwrap(),
            clients[1].local_addr().unwrap(),
            clients[0].local_addr().unwrap(),
        ];
        for (i, to) in to.iter().enumerate() {
            let buffer = replies.next_buffer();
            buffer.clear();
            buffer.extend_from_slice(format!("reply {i}").as_bytes());
            replies.push(*to);
        }
        runtime.block_on(replies.send(&socket));
        for (client, want) in [(0, "reply 0"), (1, "reply 2"), (0, "reply 3")] {
            let client = &clients[client];
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut buf = [0; 64];
            let (n, from) = client.recv_from(&mut buf).expect(want);
            assert_eq!((from, &buf[..n]), (addr, want.as_bytes()));
        }
    }

    /// A receive error that keeps coming (here: the "socket" is a pipe,
    /// so every recvmmsg fails with ENOTSOCK) does not keep the thread
    /// from seeing the shutdown.
    #[test]
    fn a_persistent_receive_error_still_stops() {
        let (reader, mut writer) = io::pipe().unwrap();
        io::Write::write_all(&mut writer, b"x").unwrap();
        let pipe = std::net::UdpSocket::from(std::os::fd::OwnedFd::from(reader));
        pipe.set_nonblocking(true).unwrap();
        let shutdown = CancellationToken::new();
        let heartbeat = Heartbeat::new();
        let created = Instant::now();
        let receiver = Receiver {
            handler: Arc::new(handler(BlockMode::Null)),
            shutdown: shutdown.clone(),
            heartbeat: heartbeat.clone(),
            max_waiting: 4096,
        };
        // On a thread of its own: a loop that never yields would hold a
        // runtime on this one, and the test with it.
        let (done, stopped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let socket = {
                let _context = runtime.enter();
                UdpSocket::from_std(pipe).unwrap()
            };
            runtime.block_on(receiver.serve(socket));
            let _ = done.send(());
        });
        // It goes on beating (between passes, failed ones included)...
        let deadline = Instant::now() + Duration::from_secs(5);
        while heartbeat.age(Instant::now()) + Duration::from_millis(20) > created.elapsed() {
            assert!(
                Instant::now() < deadline,
                "the receive thread stopped beating"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // ...and stops when told.
        shutdown.cancel();
        assert!(
            stopped.recv_timeout(Duration::from_secs(5)).is_ok(),
            "the receive thread never saw the shutdown"
        );
        drop(writer);
    }

    /// A burst from several clients through the receive thread: every
    /// query is answered, to its own sender, with its own ID.
    #[test]
    fn a_burst_is_answered_each_to_its_sender() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let (server, addr, shutdown) = serving(&runtime);
        let clients: Vec<_> = (0..4)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for client in &clients {
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
        }
        // Until the thread answers (the first datagram may race its start).
        let probe = packet("tracker.test.", RecordType::A, None, false, 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            clients[0].send_to(&probe, addr).unwrap();
            let mut reply = [0; 512];
            if clients[0].recv(&mut reply).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "no answer");
        }
        // Blocked names, answered by the fast path in batches.
        for id in 1..=200u16 {
            let query = packet("x.tracker.test.", RecordType::A, None, false, id);
            clients[usize::from(id) % 4].send_to(&query, addr).unwrap();
        }
        for (c, client) in clients.iter().enumerate() {
            let mut ids = Vec::new();
            while ids.len() < 50 {
                let mut reply = [0; 512];
                let n = client.recv(&mut reply).expect("every query answered");
                let message = Message::from_vec(&reply[..n]).unwrap();
                assert_eq!(message.answers.len(), 1);
                ids.push(message.metadata.id);
            }
            ids.sort_unstable();
            let want: Vec<u16> = (1..=200).filter(|id| usize::from(*id) % 4 == c).collect();
            assert_eq!(ids, want, "client {c}");
        }
        shutdown.cancel();
        runtime.block_on(server.stopped());
    }

    #[test]
    fn replies_go_only_where_they_can_arrive() {
        assert!(can_answer("192.0.2.1:53000".parse().unwrap()));
        assert!(can_answer("[2001:db8::1]:53000".parse().unwrap()));
        assert!(!can_answer("192.0.2.1:0".parse().unwrap()));
        assert!(!can_answer("0.0.0.0:53000".parse().unwrap()));
        assert!(!can_answer("255.255.255.255:53000".parse().unwrap()));
        assert!(!can_answer("[::]:53000".parse().unwrap()));
    }
}
