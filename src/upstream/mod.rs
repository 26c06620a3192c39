//! Transports to upstream resolvers: plain UDP (TCP when truncated), TCP,
//! DNS-over-TLS (RFC 7858) and DNS-over-HTTPS (RFC 8484).
//!
//! [`Upstream::exchange`] sends one query and returns a reply that answers
//! it: same ID and question, from the server asked. UDP sockets are bound
//! to random ports and carry one query at a time; each is reused for a few
//! queries within two seconds (`src/upstream/udp.rs` says why that keeps
//! RFC 5452's protections). TCP and TLS connections are kept in a small
//! pool per upstream and carry many queries at once
//! (pipelining, RFC 7766 §6.2.1); DoH shares one HTTP/2 connection. Idle
//! connections are closed after `[upstream] idle_timeout`, and a broken one
//! is replaced at the next query. Host names of encrypted upstreams are
//! resolved through `[upstream] bootstrap`, never through telesink.
//! Certificates are checked against the system's CA store plus
//! `[upstream] ca_file`; a wrong name or an untrusted certificate fails the
//! attempt (fail closed) with a warning naming the upstream.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::Message;

use crate::config::{UpstreamAddr, UpstreamConfig, UpstreamHost, UpstreamProtocol};

mod bootstrap;
mod doh;
mod stream;
mod tls;
mod udp;

pub use bootstrap::Bootstrap;
pub(crate) use udp::close_expired as close_expired_udp_sockets;

/// Why one upstream attempt produced no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// No reply within `[upstream] timeout`.
    #[error("timed out")]
    Timeout,
    /// A network error, a refused connection, a failed TLS handshake.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A reply that is not a DNS answer to the question.
    #[error("malformed reply: {0}")]
    Malformed(String),
    /// A UDP reply larger than the EDNS size telesink advertised, so cut
    /// short on receipt: asked again over TCP, as a truncated one is.
    #[error("reply larger than the advertised EDNS size")]
    TooBig,
}

/// What every transport needs: TLS settings, the bootstrap resolvers and
/// the connection limits. One per chain, shared by all upstreams.
#[derive(Debug, Clone)]
pub struct Context {
    /// DoT and DoH client configurations; `None` if TLS could not be set up.
    tls: Option<(Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>)>,
    bootstrap: Arc<Bootstrap>,
    idle_timeout: Duration,
    /// The attempt timeout: a pooled connection with a query unanswered
    /// this long, and nothing read meanwhile, is closed.
    timeout: Duration,
    edns_udp_size: u16,
}

impl Context {
    /// The context `[upstream]` describes; `base_dir` resolves `ca_file`.
    pub fn new(config: &UpstreamConfig, base_dir: &std::path::Path, edns_udp_size: u16) -> Self {
        let ca_file = config.ca_file.as_ref().map(|f| base_dir.join(f));
        let tls = match tls::client_configs(ca_file.as_deref()) {
            Ok(c) => Some(c),
            Err(error) => {
                // Encrypted upstreams then fail every attempt: never a
                // silent fallback to unverified or plain DNS.
                tracing::error!(%error, "TLS for encrypted upstreams is unavailable");
                None
            }
        };
        Self {
            tls,
            bootstrap: Arc::new(Bootstrap::new(
                config
                    .bootstrap
                    .iter()
                    .filter_map(UpstreamAddr::socket_addr),
                config.timeout,
            )),
            idle_timeout: config.idle_timeout,
            timeout: config.timeout,
            edns_udp_size: edns_udp_size.max(512),
        }
    }
}

/// One upstream resolver and its connections.
#[derive(Debug)]
pub struct Upstream {
    /// The `upstream` metrics label (see [`UpstreamAddr`]'s `Display`).
    pub label: String,
    transport: Transport,
    /// Receive buffer for UDP replies: the EDNS size telesink advertises.
    udp_size: usize,
    /// How long the UDP query at 4,096 bytes may take: a third of the
    /// attempt's timeout, at most 1 s, so TCP still has time after it.
    larger_wait: Duration,
}

#[derive(Debug)]
enum Transport {
    /// Plain DNS over UDP; the pool is for truncated answers, unless the
    /// upstream refused TCP lately.
    Udp(SocketAddr, stream::Pool, TcpRefused),
    /// Plain DNS over TCP.
    Tcp(stream::Pool),
    /// DNS-over-TLS.
    Tls(stream::Pool),
    /// DNS-over-HTTPS.
    Https(doh::Doh),
}

impl Upstream {
    /// The upstream `addr`, connected as its scheme says.
    pub fn new(addr: &UpstreamAddr, ctx: &Context) -> Self {
        let label = addr.to_string();
        let target = |tls: bool| stream::Target {
            label: label.clone(),
            host: addr.host.clone(),
            port: addr.port,
            tls: tls.then(|| (ctx.tls.as_ref().map(|t| t.0.clone()), addr.server_name())),
            bootstrap: ctx.bootstrap.clone(),
        };
        let pool = |tls: bool| stream::Pool::new(target(tls), ctx.idle_timeout, ctx.timeout);
        let transport = match addr.protocol {
            UpstreamProtocol::Udp => {
                let ip = match addr.host {
                    UpstreamHost::Ip(ip) => ip,
                    // Rejected when the config is parsed.
                    UpstreamHost::Name(_) => IpAddr::from([0, 0, 0, 0]),
                };
                Transport::Udp(
                    SocketAddr::new(ip, addr.port),
                    pool(false),
                    TcpRefused::default(),
                )
            }
            UpstreamProtocol::Tcp => Transport::Tcp(pool(false)),
            UpstreamProtocol::Tls => Transport::Tls(pool(true)),
            UpstreamProtocol::Https => Transport::Https(doh::Doh::new(addr, ctx)),
        };
        Self {
            label,
            transport,
            udp_size: usize::from(ctx.edns_udp_size),
            larger_wait: (ctx.timeout / 3).min(Duration::from_secs(1)),
        }
    }

    /// Sends `request` (already encoded as `bytes`) and returns the reply
    /// that answers it, with its bytes as they came.
    /// The caller bounds the time it may take.
    pub async fn exchange(
        &self,
        request: &Message,
        bytes: &[u8],
    ) -> Result<(Message, Option<Vec<u8>>), AttemptError> {
        let reply = match &self.transport {
            Transport::Udp(addr, pool, refused) => {
                return self
                    .exchange_udp(*addr, pool, refused, request, bytes)
                    .await;
            }
            Transport::Tcp(pool) | Transport::Tls(pool) => pool.exchange(request, bytes).await,
            Transport::Https(doh) => doh.exchange(request, bytes).await,
        };
        // A reply with TC over a stream (the answer did not fit even
        // 64 KiB, or the server copied a UDP reply) is returned as it is:
        // the caller must not pass it on as the whole answer.
        reply.map(|(reply, wire)| (reply, Some(wire)))
    }

    /// [`Upstream::exchange`] over plain DNS: UDP, then TCP for an answer
    /// UDP could not carry whole, and UDP at 4,096 bytes for an upstream
    /// that refuses TCP.
    async fn exchange_udp(
        &self,
        addr: SocketAddr,
        pool: &stream::Pool,
        refused: &TcpRefused,
        request: &Message,
        bytes: &[u8],
    ) -> Result<(Message, Option<Vec<u8>>), AttemptError> {
        // A truncated reply to fall back on: the upstream answers, only
        // not whole over UDP.
        let mut cut = match udp::exchange(addr, bytes, request, self.udp_size).await {
            Ok((reply, wire)) if !reply.metadata.truncation => return Ok((reply, Some(wire))),
            Ok((reply, _)) => reply,
            // Cut by the kernel, so unreadable: a truncated reply made
            // from the question stands for it.
            Err(AttemptError::TooBig) => truncated(request),
            Err(e) => return Err(e),
        };
        let larger = self.udp_size < LARGEST_UDP;
        let wait = self.larger_wait;
        // After a recent refusal the larger UDP query goes first; TCP is
        // still tried when it fails (the upstream may have started
        // listening, or the answer needs TCP).
        let udp_first = larger && refused.lately();
        if udp_first && let Some(reply) = udp_at_largest(addr, bytes, request, wait, &mut cut).await
        {
            return Ok(reply);
        }
        match pool.exchange(request, bytes).await {
            Ok((reply, wire)) => Ok((reply, Some(wire))),
            Err(AttemptError::Io(error)) => {
                if error.kind() == std::io::ErrorKind::ConnectionRefused {
                    refused.now();
                }
                if larger
                    && !udp_first
                    && let Some(reply) = udp_at_largest(addr, bytes, request, wait, &mut cut).await
                {
                    return Ok(reply);
                }
                // Too big for UDP and no TCP: the truncated reply, which
                // the caller takes for part of an answer (tried elsewhere;
                // the upstream, which answers, keeps its health), not an
                // error.
                Ok((cut, None))
            }
            Err(e) => Err(e),
        }
    }
}

/// When a UDP upstream last refused a TCP connection: for
/// [`TcpRefused::MEMORY`] after that, truncated answers try
/// [`udp_at_largest`] before TCP, instead of costing a refused connect
/// each.
#[derive(Debug, Default)]
struct TcpRefused(std::sync::Mutex<Option<std::time::Instant>>);

impl TcpRefused {
    /// How long a refusal is remembered: the upstream may start listening.
    const MEMORY: Duration = Duration::from_secs(300);

    fn lately(&self) -> bool {
        let at = self.0.lock().unwrap_or_else(|e| e.into_inner());
        at.is_some_and(|at| at.elapsed() < Self::MEMORY)
    }

    fn now(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
    }
}

/// The largest EDNS size telesink advertises (`edns_udp_size` at most).
const LARGEST_UDP: usize = 4096;

/// A truncated answer from an upstream that refuses TCP connections (the
/// DNS proxy of some routers listens on UDP only): asked once more over
/// UDP, advertising [`LARGEST_UDP`] bytes, which fragments carry whole on
/// a LAN, waiting at most `wait` (a lost fragment must leave time for
/// TCP). `None` if the reply is still truncated (then it replaces `cut`,
/// the truncated reply to fall back on) or does not come. Only a refused
/// or reset connection, or one refused lately, gets here: an upstream that
/// lets TCP time out has used up the attempt's time.
async fn udp_at_largest(
    addr: SocketAddr,
    bytes: &[u8],
    request: &Message,
    wait: Duration,
    cut: &mut Message,
) -> Option<(Message, Option<Vec<u8>>)> {
    let mut bytes = bytes.to_vec();
    set_opt_payload(&mut bytes, LARGEST_UDP as u16)?;
    tracing::debug!(upstream = %addr, "truncated answer and no TCP; asking over UDP with a larger size");
    let asked = udp::exchange(addr, &bytes, request, LARGEST_UDP);
    match tokio::time::timeout(wait, asked).await {
        Ok(Ok((reply, wire))) if !reply.metadata.truncation => Some((reply, Some(wire))),
        Ok(Ok((reply, _))) => {
            *cut = reply;
            None
        }
        _ => None,
    }
}

/// A reply to `request` with TC set and nothing in it: what an upstream
/// whose reply was too big to read said, for the caller, which never
/// passes a truncated reply on.
fn truncated(request: &Message) -> Message {
    let mut reply = Message::new(
        request.metadata.id,
        hickory_proto::op::MessageType::Response,
        hickory_proto::op::OpCode::Query,
    );
    reply.metadata.truncation = true;
    reply.add_queries(request.queries.clone());
    reply
}

/// Sets the payload size of the OPT record that ends `query`, as the
/// forwarder writes it (a root owner, no options); `None` if it does not
/// end with one.
fn set_opt_payload(query: &mut [u8], payload: u16) -> Option<()> {
    let opt = query.len().checked_sub(11)?;
    if query[opt..opt + 3] != [0, 0, 41] || query[opt + 9..] != [0, 0] {
        return None;
    }
    query[opt + 3..opt + 5].copy_from_slice(&payload.to_be_bytes());
    Some(())
}

/// Whether `reply` answers `request`: same ID, a response, same question.
pub(crate) fn matches(request: &Message, reply: &Message) -> bool {
    reply.metadata.id == request.metadata.id && same_question(request, reply)
}

/// Whether `reply` is a response to a standard query (see
/// [`crate::resolver::is_query_response`]) with the question of `request`.
pub(crate) fn same_question(request: &Message, reply: &Message) -> bool {
    crate::resolver::is_query_response(reply)
        && reply.queries.len() == 1
        && request.queries.first().is_some_and(|q| {
            let r = &reply.queries[0];
            // `Name` equality ignores ASCII case, as DNS does (0x20 mixing).
            r.query_type() == q.query_type()
                && r.query_class() == q.query_class()
                && r.name() == q.name()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    /// The reply of an upstream with `n` A records for the question of
    /// `query`, truncated to none if it does not fit `room` bytes.
    fn reply(query: &Message, n: u8, room: usize) -> Vec<u8> {
        let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
        reply.add_queries(query.queries.clone());
        let owner = query.queries[0].name().clone();
        reply.add_answers(
            (1..=n).map(|i| Record::from_rdata(owner.clone(), 60, RData::A(A::new(192, 0, 2, i)))),
        );
        if reply.to_vec().unwrap().len() > room {
            reply.answers.clear();
            reply.metadata.truncation = true;
        }
        reply.to_vec().unwrap()
    }

    /// A UDP socket on loopback and a TCP socket bound to the same port,
    /// not listening: connections to it are refused until it listens.
    async fn udp_and_closed_tcp() -> (tokio::net::UdpSocket, tokio::net::TcpSocket) {
        loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let tcp = tokio::net::TcpSocket::new_v4().unwrap();
            if tcp.bind(udp.local_addr().unwrap()).is_ok() {
                return (udp, tcp);
            }
        }
    }

    /// An upstream on UDP that answers `n` A records, truncated to none
    /// unless the query advertises room for them (queries advertising
    /// 4,096 bytes go unanswered unless `large`, as if their fragments
    /// were lost); its TCP port is bound, not listening (connections are
    /// refused) until the caller listens on the socket returned.
    async fn udp_only(n: u8, large: bool) -> (SocketAddr, tokio::net::TcpSocket) {
        let (udp, tcp) = udp_and_closed_tcp().await;
        let addr = udp.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, from)) = udp.recv_from(&mut buf).await {
                let query = Message::from_vec(&buf[..len]).unwrap();
                let room = query.edns.as_ref().map_or(512, Edns::max_payload);
                if room == 4096 && !large {
                    continue;
                }
                let bytes = reply(&query, n, usize::from(room));
                udp.send_to(&bytes, from).await.unwrap();
            }
        });
        (addr, tcp)
    }

    /// Serves `n` A records over TCP on `listener`.
    fn serve_tcp(listener: tokio::net::TcpListener, n: u8) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    while let Ok(len) = stream.read_u16().await {
                        let mut query = vec![0u8; usize::from(len)];
                        stream.read_exact(&mut query).await.unwrap();
                        let bytes = reply(&Message::from_vec(&query).unwrap(), n, 65_535);
                        stream
                            .write_all(&(bytes.len() as u16).to_be_bytes())
                            .await
                            .unwrap();
                        stream.write_all(&bytes).await.unwrap();
                    }
                });
            }
        });
    }

    fn upstream(addr: SocketAddr) -> Upstream {
        let ctx = Context::new(&UpstreamConfig::default(), std::path::Path::new("."), 1232);
        Upstream::new(&format!("udp://{addr}").parse().unwrap(), &ctx)
    }

    async fn ask(upstream: &Upstream, id: u16) -> Result<(Message, Option<Vec<u8>>), AttemptError> {
        let mut request = Message::new(id, MessageType::Query, OpCode::Query);
        request.add_query(Query::query(
            Name::from_ascii("big.test.").unwrap(),
            RecordType::A,
        ));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        request.set_edns(edns);
        let bytes = request.to_vec().unwrap();
        // Bounded as the forwarder bounds an attempt.
        tokio::time::timeout(Duration::from_secs(5), upstream.exchange(&request, &bytes))
            .await
            .expect("an exchange ends by itself")
    }

    #[tokio::test]
    async fn a_refused_tcp_connection_is_remembered() {
        let (addr, _tcp) = udp_only(100, true).await;
        let upstream = upstream(addr);
        let Transport::Udp(_, _, refused) = &upstream.transport else {
            panic!("a UDP upstream");
        };
        for id in [1, 2] {
            let (reply, _) = ask(&upstream, id).await.unwrap();
            assert_eq!(reply.answers.len(), 100);
            assert!(refused.lately(), "query {id}");
        }
    }

    #[tokio::test]
    async fn tcp_is_tried_again_when_the_larger_udp_query_is_not_enough() {
        // 250 records do not fit 4,096 bytes: only TCP brings them.
        let (addr, tcp) = udp_only(250, true).await;
        let upstream = upstream(addr);
        // Without TCP: the truncated reply, for the caller to try another
        // upstream without holding it against this one.
        let (reply, _) = ask(&upstream, 1).await.unwrap();
        assert!(reply.metadata.truncation, "TCP refused");
        // The upstream starts listening on TCP.
        serve_tcp(tcp.listen(16).unwrap(), 250);
        let (reply, _) = ask(&upstream, 2).await.unwrap();
        assert_eq!(reply.answers.len(), 250);
    }

    #[tokio::test]
    async fn a_reply_too_big_to_read_without_tcp_is_a_truncated_one() {
        // An upstream that ignores the advertised size: 255 records, over
        // 4,096 bytes, to every query; TCP refused.
        let (udp, _tcp) = udp_and_closed_tcp().await;
        let addr = udp.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, from)) = udp.recv_from(&mut buf).await {
                let bytes = reply(&Message::from_vec(&buf[..len]).unwrap(), 255, 65_535);
                assert!(bytes.len() > 4096);
                udp.send_to(&bytes, from).await.unwrap();
            }
        });
        let upstream = upstream(addr);
        let (reply, _) = ask(&upstream, 1).await.unwrap();
        assert!(reply.metadata.truncation);
        assert_eq!(reply.metadata.id, 1);
        assert!(reply.answers.is_empty());
    }

    #[tokio::test]
    async fn a_lost_larger_reply_leaves_time_for_tcp() {
        let (addr, tcp) = udp_only(100, false).await;
        let upstream = upstream(addr);
        let (reply, _) = ask(&upstream, 1).await.unwrap();
        assert!(
            reply.metadata.truncation,
            "TCP refused, the larger reply lost"
        );
        serve_tcp(tcp.listen(16).unwrap(), 100);
        let (reply, _) = ask(&upstream, 2).await.unwrap();
        assert_eq!(reply.answers.len(), 100, "TCP after the lost larger reply");
    }
}
