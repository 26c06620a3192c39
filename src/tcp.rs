//! DNS over TCP (RFC 7766), with the limits a server exposed to every
//! device on the LAN needs.
//!
//! hickory's `Server` answers the queries of one TCP connection one after
//! another and caps neither connections nor the time before the first
//! byte. This loop does both: connections are capped in total and per
//! client address, a client must send its first query within
//! `tcp_first_byte_timeout` and then stay active within `tcp_timeout`,
//! and pipelined queries are answered as they complete, out of order, with
//! a bound on those in flight per connection. Each query goes through the
//! same [`Handler`] as UDP.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_server::net::NetError;
use hickory_server::net::xfer::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::resolver::Resolve;
use crate::server::{Deliver, Handler};
use crate::throttle::Throttle;

/// Limits for TCP clients.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Open connections in all.
    pub max_connections: usize,
    /// Open connections per client address.
    pub max_per_client: usize,
    /// Time allowed before a new connection's first query arrives.
    pub first_byte_timeout: Duration,
    /// Time a connection may stay idle between queries.
    pub idle_timeout: Duration,
    /// Queries of one connection answered at the same time.
    pub max_pipelined: usize,
}

/// Who may open a connection: `[server] allow_clients`.
pub type Allowed = Arc<[ipnet::IpNet]>;

/// Sends encoded replies to the connection's writer task.
#[derive(Clone)]
struct Reply {
    tx: mpsc::Sender<Vec<u8>>,
}

impl Deliver for Reply {
    fn protocol(&self) -> Protocol {
        Protocol::Tcp
    }

    async fn deliver(&self, bytes: Vec<u8>) -> Result<(), NetError> {
        self.tx
            .send(bytes)
            .await
            .map_err(|_| NetError::from("TCP connection closed"))
    }
}

/// Counts open connections per client address.
#[derive(Default)]
struct PerClient {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// Releases a client's connection slot when the connection ends.
struct ClientSlot {
    clients: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.clients.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl PerClient {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            clients: Arc::clone(self),
            ip,
        })
    }
}

/// The connection slots every TCP listener takes from: the caps hold for
/// all listen addresses together (the default listens on two).
#[derive(Clone)]
pub struct TcpSlots {
    total: Arc<Semaphore>,
    clients: Arc<PerClient>,
}

impl TcpSlots {
    /// Slots for `limits.max_connections` connections in all.
    pub fn new(limits: &TcpLimits) -> Self {
        Self {
            total: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            clients: Arc::new(PerClient::default()),
        }
    }
}

/// Accepts DNS-over-TCP connections on `listener` until `shutdown`,
/// within `slots` (shared by all listeners).
pub async fn serve<R: Resolve>(
    listener: TcpListener,
    handler: Arc<Handler<R>>,
    limits: TcpLimits,
    slots: TcpSlots,
    allowed: Allowed,
    shutdown: CancellationToken,
) {
    let TcpSlots { total, clients } = slots;
    let refused_log = Throttle::new(Duration::from_secs(10));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning.
                    tracing::debug!(%error, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        // A client outside `allow_clients` would only get REFUSED, and
        // its open connection would hold a slot the LAN's clients need:
        // it is closed before taking one.
        if !crate::resolver::is_allowed(&allowed, peer.ip()) {
            continue;
        }
        let Ok(permit) = total.clone().try_acquire_owned() else {
            if let Some(suppressed) = refused_log.ready() {
                tracing::warn!(
                    suppressed,
                    "TCP connection limit reached; closing new connections"
                );
            }
            continue;
        };
        let Some(slot) = clients.take(peer.ip(), limits.max_per_client.max(1)) else {
            if let Some(suppressed) = refused_log.ready() {
                tracing::warn!(suppressed, client = %peer.ip(), "per-client TCP connection limit reached");
            }
            continue;
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            connection(stream, peer, handler, limits, shutdown).await;
            drop((permit, slot));
        });
    }
    connections.close();
    // Queries in flight get their answers; idle connections close now.
    connections.wait().await;
}

async fn connection<R: Resolve>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<Handler<R>>,
    limits: TcpLimits,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    // No more than DNS message IDs can tell apart.
    let pipelined = limits.max_pipelined.clamp(1, usize::from(u16::MAX));
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(pipelined);
    // Cancelled when the writer gives up, so the reader stops too.
    let stuck = CancellationToken::new();
    let write = {
        let stuck = stuck.clone();
        async move {
            while let Some(reply) = rx.recv().await {
                let Ok(len) = u16::try_from(reply.len()) else {
                    continue;
                };
                let mut framed = Vec::with_capacity(reply.len() + 2);
                framed.extend_from_slice(&len.to_be_bytes());
                framed.extend_from_slice(&reply);
                // A client that stops reading fills its window and would
                // hold the connection, its queries and their replies for
                // good: it gets as long as an idle one.
                let written =
                    tokio::time::timeout(limits.idle_timeout, writer.write_all(&framed)).await;
                if !matches!(written, Ok(Ok(()))) {
                    // Dropping `rx` fails the replies still to come, which
                    // frees their queries.
                    stuck.cancel();
                    return;
                }
            }
            let _ = writer.shutdown().await;
        }
    };
    let in_flight = Arc::new(Semaphore::new(pipelined));
    let queries = tokio_util::task::TaskTracker::new();
    let read = async {
        let mut first = true;
        loop {
            let wait = if first {
                limits.first_byte_timeout
            } else {
                limits.idle_timeout
            };
            // Every branch but the read ends the connection, so a length
            // half read when another one wins is never needed.
            let len = tokio::select! {
                len = reader.read_u16() => match len {
                    Ok(len) => len,
                    // Closed or reset.
                    Err(_) => break,
                },
                () = idle(&in_flight, pipelined, wait) => break,
                _ = shutdown.cancelled() => break,
                _ = stuck.cancelled() => break,
            };
            first = false;
            if len == 0 || usize::from(len) > crate::server::MAX_QUERY {
                break;
            }
            let mut body = vec![0u8; usize::from(len)];
            // The rest of a message must follow promptly too.
            match tokio::time::timeout(limits.idle_timeout, reader.read_exact(&mut body)).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
            // Waits for a free slot: a client that pipelines more than
            // `max_pipelined` queries is simply read more slowly.
            let permit = tokio::select! {
                permit = in_flight.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                _ = stuck.cancelled() => break,
            };
            let handler = handler.clone();
            let reply = Reply { tx: tx.clone() };
            queries.spawn(async move {
                crate::server::respond(&*handler, body, peer, reply).await;
                drop(permit);
            });
        }
        queries.close();
        queries.wait().await;
        drop(tx);
    };
    tokio::join!(read, write);
}

/// Completes once the connection has been idle for `wait`: none of its
/// `all` query slots taken, then `wait` without a new query. A client
/// waiting for a slow answer is not idle, and must not lose the next query
/// it sends when the answer comes.
async fn idle(in_flight: &Semaphore, all: usize, wait: Duration) {
    let all = u32::try_from(all).unwrap_or(u32::MAX);
    if let Ok(every_slot) = in_flight.acquire_many(all).await {
        drop(every_slot);
    }
    tokio::time::sleep(wait).await;
}
