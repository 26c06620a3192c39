//! Pooled, pipelined DNS over TCP and TLS (RFC 7766 §6.2.1, RFC 7858).
//!
//! Each upstream keeps up to [`POOL_SIZE`] connections. Each connection is
//! one task that owns the stream: it writes queries as they come (giving
//! each an ID unique on the connection), reads replies in whatever order
//! the server sends them, and hands each to the query that waits for it.
//! A connection closes itself after `idle_timeout` without queries, and
//! when a query has waited longer than the attempt timeout while nothing at
//! all came back (a server that hangs, or state lost on the way that drops
//! packets silently); a closed one is replaced at the next query. The fast
//! path (a live connection) takes no lock: the connection handle is an
//! `ArcSwapOption`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use arc_swap::ArcSwapOption;
use hickory_proto::op::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::{AttemptError, Bootstrap, same_question};
use crate::config::UpstreamHost;

/// Connections kept per upstream: pipelining makes one enough for a home
/// network; a second avoids head-of-line waits behind a large answer.
pub(super) const POOL_SIZE: usize = 2;

/// Queries waiting to be written to one connection.
const QUEUE: usize = 64;

/// Queries written to one connection and not yet answered; more are
/// turned down until replies come. A server that answers keeps far fewer
/// waiting; the bound keeps one that drops queries from filling memory
/// (and from using up the 65,536 IDs).
const MAX_WAITING: usize = 1024;

/// Where and how to connect.
#[derive(Debug)]
pub(super) struct Target {
    /// The upstream's metrics label, for logs.
    pub(super) label: String,
    pub(super) host: UpstreamHost,
    pub(super) port: u16,
    /// For DoT: the client configuration (`None` if TLS is unavailable)
    /// and the server name the certificate must match.
    pub(super) tls: Option<(Option<Arc<rustls::ClientConfig>>, String)>,
    pub(super) bootstrap: Arc<Bootstrap>,
}

/// One query handed to a connection task.
struct Job {
    request: Message,
    bytes: Vec<u8>,
    reply: oneshot::Sender<Result<(Message, Vec<u8>), AttemptError>>,
}

/// The handle of a live connection.
#[derive(Debug)]
struct Conn {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

/// The connections of one upstream.
#[derive(Debug)]
pub(super) struct Pool {
    target: Arc<Target>,
    slots: [ArcSwapOption<Conn>; POOL_SIZE],
    /// Serialises (re)connecting per slot, so a burst of queries to a
    /// closed connection opens one new connection, not one each.
    connecting: [tokio::sync::Mutex<()>; POOL_SIZE],
    next: AtomicUsize,
    idle_timeout: Duration,
    /// How long a query may go unanswered, with nothing read meanwhile,
    /// before the connection is taken for dead: the attempt timeout.
    unanswered: Duration,
    /// Failed connects are logged at most once per 10 s (a UDP upstream
    /// that refuses TCP fails one per large answer).
    connect_log: crate::throttle::Throttle,
}

impl Pool {
    pub(super) fn new(target: Target, idle_timeout: Duration, unanswered: Duration) -> Self {
        Self {
            target: Arc::new(target),
            slots: Default::default(),
            connecting: Default::default(),
            next: AtomicUsize::new(0),
            idle_timeout,
            unanswered,
            connect_log: crate::throttle::Throttle::new(Duration::from_secs(10)),
        }
    }

    /// Sends `request` on a pooled connection; if a reused connection turns
    /// out to be closed by the server (they may close idle ones at any
    /// time), once more on a fresh one.
    pub(super) async fn exchange(
        &self,
        request: &Message,
        bytes: &[u8],
    ) -> Result<(Message, Vec<u8>), AttemptError> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % POOL_SIZE;
        let mut fresh_tried = false;
        loop {
            let (conn, fresh) = self.conn(slot).await?;
            let (tx, rx) = oneshot::channel();
            let job = Job {
                request: request.clone(),
                bytes: bytes.to_vec(),
                reply: tx,
            };
            let sent = conn.jobs.send(job).await.is_ok();
            let result = if sent {
                rx.await.unwrap_or_else(|_| Err(closed()))
            } else {
                Err(closed())
            };
            match result {
                Err(AttemptError::Io(e))
                    if e.kind() == std::io::ErrorKind::ConnectionAborted
                        && !fresh
                        && !fresh_tried =>
                {
                    self.slots[slot].store(None);
                    fresh_tried = true;
                }
                other => return other,
            }
        }
    }

    /// The live connection of `slot`, opened if needed; `true` if new.
    async fn conn(&self, slot: usize) -> Result<(Arc<Conn>, bool), AttemptError> {
        if let Some(conn) = self.slots[slot].load_full()
            && !conn.jobs.is_closed()
        {
            return Ok((conn, false));
        }
        let _guard = self.connecting[slot].lock().await;
        if let Some(conn) = self.slots[slot].load_full()
            && !conn.jobs.is_closed()
        {
            return Ok((conn, false));
        }
        let (jobs, rx) = mpsc::channel(QUEUE);
        let limits = (self.idle_timeout, self.unanswered);
        match self.target.connect().await {
            Ok(Stream::Tcp(s)) => {
                tokio::spawn(run(s, rx, limits));
            }
            Ok(Stream::Tls(s)) => {
                tokio::spawn(run(*s, rx, limits));
            }
            Err(error) => {
                if let Some(suppressed) = self.connect_log.ready() {
                    tracing::warn!(upstream = %self.target.label, %error, suppressed, "cannot connect to upstream");
                }
                return Err(AttemptError::Io(error));
            }
        }
        let conn = Arc::new(Conn { jobs });
        self.slots[slot].store(Some(conn.clone()));
        Ok((conn, true))
    }
}

fn closed() -> AttemptError {
    AttemptError::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "upstream closed the connection",
    ))
}

enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Target {
    async fn connect(&self) -> std::io::Result<Stream> {
        let addrs: Vec<SocketAddr> = match &self.host {
            UpstreamHost::Ip(ip) => vec![SocketAddr::new(*ip, self.port)],
            UpstreamHost::Name(name) => self
                .bootstrap
                .lookup(name)
                .await?
                .into_iter()
                .map(|ip| SocketAddr::new(ip, self.port))
                .collect(),
        };
        let tcp = connect_any(&addrs).await?;
        tcp.set_nodelay(true)?;
        let Some((config, server_name)) = &self.tls else {
            return Ok(Stream::Tcp(tcp));
        };
        let Some(config) = config else {
            return Err(std::io::Error::other(
                "TLS is unavailable (see the startup log)",
            ));
        };
        let name = rustls::pki_types::ServerName::try_from(server_name.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // A wrong name or an untrusted certificate fails here: the error
        // says which ("invalid peer certificate: NotValidForName", ...).
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("TLS with {server_name:?} failed: {e}"))
            })?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// How long a connection attempt to one address runs before the next
/// address is tried beside it (RFC 8305 §5's connection attempt delay).
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// A connection to the first of `addrs` that accepts one. Each address
/// gets [`ATTEMPT_DELAY`] before the next is tried too (at once if it
/// fails), and the first to connect wins: one that silently drops
/// packets does not hold up the rest until the attempt times out. (A
/// plain connect to a list tries the addresses strictly one after the
/// other.) The caller's timeout bounds the whole.
async fn connect_any(addrs: &[SocketAddr]) -> std::io::Result<TcpStream> {
    let mut attempts = tokio::task::JoinSet::new();
    let mut rest = addrs.iter().copied();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address to connect to");
    loop {
        match rest.next() {
            Some(addr) => drop(attempts.spawn(TcpStream::connect(addr))),
            None if attempts.is_empty() => return Err(last),
            None => {}
        }
        // The first of: a connection (done), a failure or the delay
        // (either way, the next address).
        tokio::select! {
            Some(done) = attempts.join_next() => match done {
                // The others are aborted as the set is dropped.
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(error)) => last = error,
                Err(error) => last = std::io::Error::other(error),
            },
            () = tokio::time::sleep(ATTEMPT_DELAY) => {}
        }
    }
}

/// Forgets the queries whose caller gave up (timed out).
fn forget_abandoned(waiting: &mut HashMap<u16, Waiting>) {
    waiting.retain(|_, w| !w.reply.is_closed());
}

/// A query written and waiting for its reply.
struct Waiting {
    request: Message,
    reply: oneshot::Sender<Result<(Message, Vec<u8>), AttemptError>>,
}

/// The task of one connection: until the server closes it, it breaks, it
/// has been idle for `idle`, or it looks dead (a query unanswered for
/// `unanswered` with nothing read since it was sent).
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    mut jobs: mpsc::Receiver<Job>,
    (idle, unanswered): (Duration, Duration),
) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut waiting: HashMap<u16, Waiting> = HashMap::new();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut next_id: u16 = rand::random();
    // When the first query written since anything was last read went out:
    // how long the server has been silent while asked. (A query written
    // before the last read and never answered says nothing of that: the
    // server dropped that one query.)
    let mut silent_since: Option<Instant> = None;
    let mut frame_starts;
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let mut check = tokio::time::interval(unanswered.max(Duration::from_millis(100)) / 2);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let error = loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some(mut job) = job else { break None };
                if waiting.len() >= MAX_WAITING {
                    forget_abandoned(&mut waiting);
                    if waiting.len() >= MAX_WAITING {
                        let _ = job.reply.send(Err(AttemptError::Io(std::io::Error::other(
                            "too many queries unanswered on the connection",
                        ))));
                        continue;
                    }
                }
                // An ID not in use on this connection; the caller's own
                // ID is put back into the reply.
                while waiting.contains_key(&next_id) {
                    next_id = next_id.wrapping_add(1);
                }
                let id = next_id;
                next_id = next_id.wrapping_add(1);
                let Ok(len) = u16::try_from(job.bytes.len()) else {
                    let _ = job.reply.send(Err(AttemptError::Malformed("query too long".into())));
                    continue;
                };
                job.bytes[..2].copy_from_slice(&id.to_be_bytes());
                let mut framed = Vec::with_capacity(job.bytes.len() + 2);
                framed.extend_from_slice(&len.to_be_bytes());
                framed.extend_from_slice(&job.bytes);
                // Bounded: while it waits, nothing else here runs (the
                // dead-connection check included), and a server that
                // stopped reading would hold every query sent this way.
                let write = tokio::time::timeout(unanswered, wr.write_all(&framed)).await;
                if !matches!(write, Ok(Ok(()))) {
                    let _ = job.reply.send(Err(closed()));
                    break Some("write failed or stalled");
                }
                waiting.insert(id, Waiting { request: job.request, reply: job.reply });
                silent_since.get_or_insert_with(Instant::now);
                idle_timer.as_mut().reset(Instant::now() + idle);
            }
            read = {
                // Whether what comes now starts a message.
                frame_starts = buf.is_empty();
                rd.read_buf(&mut buf)
            } => {
                match read {
                    Ok(0) => break Some("closed by the upstream"),
                    Err(_) => break Some("read failed"),
                    Ok(_) => {}
                }
                // The first bytes of a reply: it has the whole timeout to
                // arrive, whenever the server went quiet before it (a query
                // it dropped earlier must not cut a slow reply short).
                if frame_starts && silent_since.is_some() {
                    silent_since = Some(Instant::now());
                }
                // Every complete frame in the buffer.
                while buf.len() >= 2 {
                    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                    if buf.len() < 2 + len {
                        break;
                    }
                    let frame: Vec<u8> = buf.drain(..2 + len).skip(2).collect();
                    // A whole message, not just bytes: a server that
                    // trickles a byte now and then is still silent.
                    silent_since = None;
                    let Ok(mut reply) = Message::from_vec(&frame) else { continue };
                    let Some(w) = waiting.remove(&reply.metadata.id) else { continue };
                    let result = if same_question(&w.request, &reply) {
                        reply.metadata.id = w.request.metadata.id;
                        Ok((reply, frame))
                    } else {
                        Err(AttemptError::Malformed("reply does not match the question".into()))
                    };
                    let _ = w.reply.send(result);
                }
            }
            _ = check.tick() => {
                forget_abandoned(&mut waiting);
                if silent_since.is_some_and(|since| since.elapsed() >= unanswered) {
                    break Some("no reply within the timeout; reconnecting");
                }
            }
            () = &mut idle_timer => {
                forget_abandoned(&mut waiting);
                if waiting.is_empty() {
                    break None;
                }
                idle_timer.as_mut().reset(Instant::now() + idle);
            }
        }
    };
    jobs.close();
    if let Some(why) = error {
        tracing::debug!(why, waiting = waiting.len(), "upstream connection ended");
    }
    for (_, w) in waiting {
        let _ = w.reply.send(Err(closed()));
    }
    // Queries queued but never written.
    while let Ok(job) = jobs.try_recv() {
        let _ = job.reply.send(Err(closed()));
    }
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::op::Query;
    use hickory_proto::rr::{Name, RecordType};
    use tokio::net::TcpListener;

    use super::*;

    /// A server that takes connections and reads queries but never
    /// answers; its port and how many connections it took.
    async fn mute_server() -> (u16, Arc<AtomicUsize>) {
        server_answering(&[]).await
    }

    /// A server that, on each connection, answers the queries whose entry
    /// in `answers` is true and drops the others, then reads the rest and
    /// answers nothing, as a path that lost its state drops packets.
    async fn server_answering(answers: &'static [bool]) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let taken = Arc::new(AtomicUsize::new(0));
        let count = taken.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    for &answer in answers {
                        let Ok(len) = s.read_u16().await else { return };
                        let mut query = vec![0u8; usize::from(len)];
                        if s.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        if !answer {
                            continue;
                        }
                        let framed = framed_reply(&query);
                        if s.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                    let mut buf = vec![0u8; 65_536];
                    while s.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                });
            }
        });
        (port, taken)
    }

    /// `query` answered as it is (no records), framed for TCP.
    fn framed_reply(query: &[u8]) -> Vec<u8> {
        let mut reply = Message::from_vec(query).unwrap();
        reply.metadata.message_type = hickory_proto::op::MessageType::Response;
        let reply = reply.to_vec().unwrap();
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        framed
    }

    fn pool(port: u16, unanswered: Duration) -> Pool {
        let target = Target {
            label: "mute".into(),
            host: UpstreamHost::Ip([127, 0, 0, 1].into()),
            port,
            tls: None,
            bootstrap: Arc::new(Bootstrap::new([], Duration::from_secs(1))),
        };
        Pool::new(target, Duration::from_secs(30), unanswered)
    }

    fn query() -> (Message, Vec<u8>) {
        let mut m = Message::query();
        m.add_query(Query::query(
            Name::from_str("a.example.").unwrap(),
            RecordType::A,
        ));
        let bytes = m.to_vec().unwrap();
        (m, bytes)
    }

    /// A listener on 127.0.0.1 whose accept queue is full: the kernel
    /// drops the SYNs of further connections, as a dead host's path does.
    fn black_hole() -> (SocketAddr, Vec<std::net::TcpStream>, socket2::Socket) {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        // Fill the queue; never accepted.
        let mut held = Vec::new();
        for _ in 0..4 {
            let s =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&addr.into());
            held.push(std::net::TcpStream::from(s));
        }
        (addr, held, socket)
    }

    #[tokio::test]
    async fn an_address_that_drops_packets_does_not_hold_up_the_next() {
        let (dead, _held, _listener) = black_hole();
        // Dead indeed: a plain connect does not complete in a second.
        let plain = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(dead)).await;
        assert!(plain.is_err(), "the black hole accepted: {plain:?}");
        let good = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good_addr = good.local_addr().unwrap();
        let started = Instant::now();
        let stream = tokio::time::timeout(Duration::from_secs(2), connect_any(&[dead, good_addr]))
            .await
            .expect("connected in time")
            .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), good_addr);
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
        // A refused address is passed over at once.
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let started = Instant::now();
        let stream = connect_any(&[refused, good_addr]).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), good_addr);
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        assert!(connect_any(&[refused]).await.is_err());
        assert!(connect_any(&[]).await.is_err());
    }

    #[tokio::test]
    async fn a_connection_that_stops_answering_is_replaced() {
        let (port, taken) = mute_server().await;
        let pool = pool(port, Duration::from_millis(200));
        let (m, bytes) = query();
        let timeout =
            |ms| tokio::time::timeout(Duration::from_millis(ms), pool.exchange(&m, &bytes));
        for _ in 0..POOL_SIZE {
            assert!(timeout(200).await.is_err(), "never answered");
        }
        assert_eq!(taken.load(Ordering::SeqCst), POOL_SIZE);
        // Queries keep coming, so no connection is ever idle; once a query
        // has gone unanswered for the timeout with nothing read, its
        // connection is closed and the next query there opens another.
        let deadline = Instant::now() + Duration::from_secs(5);
        while taken.load(Ordering::SeqCst) == POOL_SIZE {
            assert!(Instant::now() < deadline, "the silent connection was kept");
            assert!(timeout(50).await.is_err());
        }
    }

    /// A server that sends a byte every 50 ms but never a whole message
    /// is as silent as one that sends nothing.
    #[tokio::test]
    async fn a_connection_that_trickles_bytes_is_replaced() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let taken = Arc::new(AtomicUsize::new(0));
        let count = taken.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    // A frame of 65,535 bytes announced, never finished.
                    let mut trickle = [0xffu8; 2].into_iter().chain(std::iter::repeat(0));
                    let mut tick = tokio::time::interval(Duration::from_millis(50));
                    loop {
                        tick.tick().await;
                        let byte = [trickle.next().unwrap()];
                        if s.write_all(&byte).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let pool = pool(port, Duration::from_millis(200));
        let (m, bytes) = query();
        let deadline = Instant::now() + Duration::from_secs(5);
        while taken.load(Ordering::SeqCst) <= POOL_SIZE {
            assert!(
                Instant::now() < deadline,
                "the trickling connection was kept"
            );
            let asked = pool.exchange(&m, &bytes);
            assert!(
                tokio::time::timeout(Duration::from_millis(100), asked)
                    .await
                    .is_err()
            );
        }
    }

    /// A slow reply is not cut short because the server dropped an
    /// earlier query on its connection: the reply's first bytes restart
    /// the clock.
    #[tokio::test]
    async fn a_slow_reply_after_a_dropped_query_is_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let taken = Arc::new(AtomicUsize::new(0));
        let count = taken.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                // The very first query of all is dropped.
                let first = count.fetch_add(1, Ordering::SeqCst) == 0;
                tokio::spawn(async move {
                    for n in 0.. {
                        let Ok(len) = s.read_u16().await else { return };
                        let mut query = vec![0u8; usize::from(len)];
                        if s.read_exact(&mut query).await.is_err() || (first && n == 0) {
                            continue;
                        }
                        let framed = framed_reply(&query);
                        // In 8 pieces, 40 ms apart: 280 ms in all.
                        for piece in framed.chunks(framed.len().div_ceil(8)) {
                            if s.write_all(piece).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(40)).await;
                        }
                    }
                });
            }
        });
        let pool = pool(port, Duration::from_millis(500));
        let (m, bytes) = query();
        let ask = |ms| tokio::time::timeout(Duration::from_millis(ms), pool.exchange(&m, &bytes));
        // The pool's two connections take turns: the first, at 0 ms, is
        // dropped on connection A; the second goes on B.
        assert!(ask(100).await.is_err());
        ask(2_000).await.expect("answered in time").unwrap();
        // The third, on A at about 380 ms, is answered by about 660 ms:
        // past 500 ms after the dropped one, within 500 ms of its start.
        let (reply, _) = ask(2_000).await.expect("answered in time").unwrap();
        assert_eq!(reply.queries, m.queries);
        assert_eq!(taken.load(Ordering::SeqCst), 2, "A was kept");
    }

    #[tokio::test]
    async fn a_connection_that_goes_silent_under_steady_traffic_is_replaced() {
        // The first query of a connection is dropped, the second answered:
        // when that reply comes, the first is still waiting, unanswered.
        // After it the server answers nothing more on that connection.
        let (port, taken) = server_answering(&[false, true]).await;
        let pool = Arc::new(pool(port, Duration::from_millis(200)));
        let (m, bytes) = query();
        let deadline = Instant::now() + Duration::from_secs(5);
        while taken.load(Ordering::SeqCst) <= POOL_SIZE {
            assert!(Instant::now() < deadline, "the silent connection was kept");
            let (pool, m, bytes) = (pool.clone(), m.clone(), bytes.clone());
            tokio::spawn(async move {
                let asked = pool.exchange(&m, &bytes);
                tokio::time::timeout(Duration::from_millis(150), asked).await
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn queries_unanswered_on_a_connection_are_bounded() {
        let (port, _) = mute_server().await;
        // Not taken for dead within the test.
        let pool = Arc::new(pool(port, Duration::from_secs(60)));
        let (m, bytes) = query();
        let over = 50;
        let tasks: Vec<_> = (0..POOL_SIZE * MAX_WAITING + over)
            .map(|_| {
                let (pool, m, bytes) = (pool.clone(), m.clone(), bytes.clone());
                tokio::spawn(async move {
                    let asked = pool.exchange(&m, &bytes);
                    tokio::time::timeout(Duration::from_secs(2), asked).await
                })
            })
            .collect();
        let mut turned_down = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(Err(AttemptError::Io(e))) if e.to_string().contains("too many") => {
                    turned_down += 1;
                }
                Ok(other) => panic!("{other:?}"),
                Err(_elapsed) => {}
            }
        }
        assert_eq!(turned_down, over);
    }
}
