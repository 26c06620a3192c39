//! Forwarding to upstream resolvers over plain DNS.
//!
//! Each request goes out on a fresh UDP socket with a random ID and source
//! port, and only a reply from the server it was sent to, with the same ID
//! and question, is accepted (RFC 5452). A truncated reply is asked again
//! over TCP. A server that times out, fails or refuses is skipped for the
//! next one. The upstream's answer is passed on as it came: response code,
//! every section, the AD flag and the CNAME chain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as DnsQuery, ResponseCode};
use hickory_proto::rr::Name;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::{Answer, Outcome, Query, Resolve};
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;

/// One upstream resolver.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The `upstream` metrics label (its address as configured).
    label: String,
}

/// Why one upstream attempt produced no usable answer.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("malformed reply: {0}")]
    Malformed(String),
}

/// Asks the configured upstreams, in order, until one answers.
pub struct Forward {
    upstreams: Vec<Upstream>,
    timeout: Duration,
    edns_udp_size: u16,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("upstreams", &self.upstreams)
            .finish()
    }
}

impl Forward {
    /// Forwards to `[upstream] servers`.
    pub fn new(config: &UpstreamConfig, edns_udp_size: u16, metrics: Arc<Metrics>) -> Self {
        Self {
            upstreams: config
                .servers
                .iter()
                .map(|s| Upstream {
                    addr: s.0,
                    label: s.to_string(),
                })
                .collect(),
            timeout: config.timeout,
            edns_udp_size,
            metrics,
        }
    }

    fn request(&self, query: &Query<'_>, id: u16) -> Message {
        let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.metadata.checking_disabled = query.checking_disabled;
        // RFC 6840 §5.7: setting AD asks the upstream to report whether it
        // validated the answer, without asking for DNSSEC records.
        msg.metadata.authentic_data = true;
        let mut q = DnsQuery::query(Name::from(query.name.clone()), query.qtype);
        q.set_query_class(query.qclass);
        msg.add_query(q);
        let mut edns = Edns::new();
        edns.set_max_payload(self.edns_udp_size.max(512));
        msg.set_edns(edns);
        msg
    }

    /// One exchange with one upstream: UDP, then TCP if the reply was truncated.
    async fn exchange(
        &self,
        upstream: &Upstream,
        query: &Query<'_>,
    ) -> Result<Message, AttemptError> {
        let id: u16 = rand::random();
        let request = self.request(query, id);
        let bytes = request
            .to_vec()
            .map_err(|e| AttemptError::Malformed(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        let reply = tokio::time::timeout_at(deadline, self.udp(upstream.addr, &bytes, &request))
            .await
            .map_err(|_| AttemptError::Timeout)??;
        if !reply.metadata.truncation {
            return Ok(reply);
        }
        tokio::time::timeout_at(deadline, self.tcp(upstream.addr, &bytes, &request))
            .await
            .map_err(|_| AttemptError::Timeout)?
    }

    async fn udp(
        &self,
        addr: SocketAddr,
        bytes: &[u8],
        request: &Message,
    ) -> Result<Message, AttemptError> {
        let local: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(addr).await?;
        socket.send(bytes).await?;
        let mut buf = vec![0u8; usize::from(self.edns_udp_size.max(512))];
        loop {
            // A connected socket only receives from `addr`; anything that
            // does not match the request is a stray or spoofed packet.
            let n = socket.recv(&mut buf).await?;
            if let Ok(reply) = Message::from_vec(&buf[..n]) {
                if matches(request, &reply) {
                    return Ok(reply);
                }
            }
        }
    }

    async fn tcp(
        &self,
        addr: SocketAddr,
        bytes: &[u8],
        request: &Message,
    ) -> Result<Message, AttemptError> {
        let mut stream = TcpStream::connect(addr).await?;
        let len = u16::try_from(bytes.len())
            .map_err(|_| AttemptError::Malformed("query too long".into()))?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(bytes);
        stream.write_all(&framed).await?;
        let len = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await?;
        let reply = Message::from_vec(&buf).map_err(|e| AttemptError::Malformed(e.to_string()))?;
        if !matches(request, &reply) {
            return Err(AttemptError::Malformed(
                "reply does not match the question".into(),
            ));
        }
        Ok(reply)
    }
}

/// Whether `reply` answers `request`: same ID, a response to a standard
/// query, same question.
fn matches(request: &Message, reply: &Message) -> bool {
    reply.metadata.id == request.metadata.id
        && is_query_response(reply)
        && reply.queries.len() == 1
        && request.queries.first().is_some_and(|q| {
            let r = &reply.queries[0];
            // `Name` equality ignores ASCII case, as DNS does (0x20 mixing).
            r.query_type() == q.query_type()
                && r.query_class() == q.query_class()
                && r.name() == q.name()
        })
}

impl Resolve for Forward {
    async fn resolve(&self, query: &Query<'_>) -> Answer {
        let mut last_rcode = ResponseCode::ServFail;
        for upstream in &self.upstreams {
            let started = Instant::now();
            let result = self.exchange(upstream, query).await;
            let label = match &result {
                Ok(reply) => match reply.metadata.response_code {
                    ResponseCode::NoError => "ok",
                    ResponseCode::NXDomain => "nxdomain",
                    ResponseCode::ServFail => "servfail",
                    ResponseCode::Refused => "refused",
                    _ => "other",
                },
                Err(AttemptError::Timeout) => "timeout",
                Err(_) => "error",
            };
            self.metrics
                .upstream_requests
                .with_label_values(&[upstream.label.as_str(), label])
                .inc();
            match result {
                Ok(reply) => {
                    self.metrics
                        .upstream_duration
                        .with_label_values(&[upstream.label.as_str()])
                        .observe(started.elapsed().as_secs_f64());
                    let rcode = reply.metadata.response_code;
                    if matches!(rcode, ResponseCode::ServFail | ResponseCode::Refused) {
                        tracing::debug!(upstream = %upstream.addr, %rcode, "upstream failed, trying the next");
                        last_rcode = ResponseCode::ServFail;
                        continue;
                    }
                    return answer_from_reply(reply);
                }
                Err(error) => {
                    tracing::debug!(upstream = %upstream.addr, %error, "upstream attempt failed");
                }
            }
        }
        Answer::empty(Outcome::Error, last_rcode)
    }
}

/// Whether `reply` is a response (QR=1) to a standard query (opcode QUERY).
///
/// The opcode matters: hickory parses records with empty data only in
/// UPDATE messages, so passing on the records of an upstream "response"
/// with opcode UPDATE gave the client a reply that does not parse (found
/// by the fuzzer).
pub fn is_query_response(reply: &Message) -> bool {
    reply.metadata.message_type == MessageType::Response && reply.metadata.op_code == OpCode::Query
}

/// The answer an accepted upstream reply gives the client.
pub fn answer_from_reply(mut reply: Message) -> Answer {
    // hickory parses OPT into `edns`, not `additionals`, so the client gets
    // telesink's own OPT record and the upstream's sections unchanged.
    Answer {
        outcome: Outcome::Forwarded,
        rcode: reply.metadata.response_code,
        authentic_data: reply.metadata.authentic_data,
        answers: std::mem::take(&mut reply.answers),
        authorities: std::mem::take(&mut reply.authorities),
        additionals: std::mem::take(&mut reply.additionals),
    }
}
