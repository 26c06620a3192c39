//! The DNS side: binding sockets, and the hickory request handler that turns
//! a request into a [`Query`], runs it through the chain and sends the
//! answer.
//!
//! hickory's `Server` owns the UDP and TCP loops: it drops packets shorter
//! than a header and responses (QR=1) sent as queries, and answers FORMERR
//! to anything it cannot parse. The handler adds the rest of RFC 1035
//! conformance: NOTIMP for other opcodes, FORMERR unless there is exactly one
//! question, BADVERS for EDNS versions above 0, RA set, RD and CD copied, and
//! an OPT record in the reply when the query had one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use socket2::{Domain, Protocol, Socket, Type};

use crate::clients::Clients;
use crate::metrics::Metrics;
use crate::resolver::{Query, Resolve};

/// The hickory `RequestHandler` in front of the resolver chain. Cloning
/// shares the chain, so UDP (hickory's loop) and TCP ([`crate::tcp`]) use
/// the same one.
#[derive(Clone)]
pub struct Handler<R> {
    chain: R,
    metrics: Arc<Metrics>,
    /// Names the device behind a client address, for per-device metrics.
    clients: Arc<Clients>,
    /// The largest UDP payload telesink advertises and sends.
    edns_udp_size: u16,
}

impl<R: Resolve> Handler<R> {
    /// A handler answering through `chain`.
    pub fn new(chain: R, metrics: Arc<Metrics>, clients: Arc<Clients>, edns_udp_size: u16) -> Self {
        Self {
            chain,
            metrics,
            clients,
            edns_udp_size: edns_udp_size.max(512),
        }
    }
}

fn failed(request: &Request, rcode: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = rcode;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl<R: Resolve> RequestHandler for Handler<R> {
    async fn handle_request<H: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: H,
    ) -> ResponseInfo {
        let started = Instant::now();
        let mut edns_out = None;
        if let Some(edns) = &request.edns {
            let mut ours = Edns::new();
            // Send no more than the client can take, and no more than we
            // advertise; answers that do not fit are truncated (TC) so the
            // client retries over TCP.
            ours.set_max_payload(edns.max_payload().clamp(512, self.edns_udp_size));
            edns_out = Some(ours);
        }
        let early = if request.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Some(ResponseCode::BADVERS)
        } else {
            None
        };
        let info = match (early, request.request_info()) {
            (Some(_), _) | (None, Err(_)) => {
                let rcode = early.unwrap_or(ResponseCode::FormErr);
                let mut builder = MessageResponseBuilder::from_message_request(request);
                if let Some(edns) = &mut edns_out {
                    if rcode == ResponseCode::BADVERS {
                        edns.set_rcode_high(rcode.high());
                    }
                    builder.edns(edns);
                }
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = rcode;
                metadata.recursion_available = true;
                let sent = response_handle
                    .send_response(builder.build_no_records(metadata))
                    .await;
                self.metrics
                    .responses
                    .with_label_values(&[crate::metrics::rcode_label(rcode)])
                    .inc();
                return sent.unwrap_or_else(|error| {
                    tracing::debug!(%error, "could not send an error response");
                    failed(request, rcode)
                });
            }
            (None, Ok(info)) => info,
        };

        let query = Query {
            name: info.query.name(),
            qtype: info.query.query_type(),
            qclass: info.query.query_class(),
            client: request.src().ip(),
            checking_disabled: request.metadata.checking_disabled,
        };
        let answer = self.chain.resolve(&query).await;
        if answer.outcome == crate::resolver::Outcome::Dropped {
            // Rate limited with `action = "drop"`: no reply at all, so it
            // counts as a query but not as a response.
            self.metrics
                .queries
                .with_label_values(&[
                    crate::metrics::qtype_label(query.qtype),
                    answer.outcome.label(),
                ])
                .inc();
            return failed(request, ResponseCode::Refused);
        }

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = answer.rcode;
        metadata.recursion_available = true;
        metadata.authentic_data = answer.authentic_data;
        metadata.authoritative = answer.authoritative;
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns_out {
            builder.edns(edns);
        }
        let response = builder.build(
            metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            [],
            answer.additionals.iter(),
        );
        let info = match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, client = %request.src(), "could not send a response");
                failed(request, ResponseCode::ServFail)
            }
        };
        self.metrics.observe_query(
            query.qtype,
            &answer.outcome,
            answer.rcode,
            started.elapsed(),
        );
        let client = self.clients.label(query.client);
        self.metrics.observe_client(&client, &answer.outcome);
        info
    }
}

/// Sockets bound before the core starts, so callers (and tests) choose the
/// addresses, port 0 included.
#[derive(Debug, Default)]
pub struct Listeners {
    /// DNS over UDP.
    pub udp: Vec<tokio::net::UdpSocket>,
    /// DNS over TCP.
    pub tcp: Vec<tokio::net::TcpListener>,
    /// `/metrics` and `/healthz`, if enabled.
    pub http: Option<tokio::net::TcpListener>,
}

impl Listeners {
    /// Binds UDP and TCP on every address of `[server] listen` and the HTTP
    /// listener. An IPv6 address on a host without IPv6 is skipped with a
    /// warning, as long as some other address could be bound.
    pub fn bind(dns: &[SocketAddr], http: Option<SocketAddr>) -> std::io::Result<Self> {
        let mut out = Self::default();
        for &addr in dns {
            match bind_udp_group(addr).and_then(|u| Ok((u, bind_tcp(addr)?))) {
                Ok((udp, tcp)) => {
                    out.udp.extend(udp);
                    out.tcp.push(tcp);
                }
                Err(error)
                    if addr.is_ipv6()
                        && matches!(
                            error.kind(),
                            std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::Unsupported
                        )
                        || error.raw_os_error() == Some(97) =>
                {
                    tracing::warn!(%addr, %error, "IPv6 is not available here; not listening on this address");
                }
                Err(error) => {
                    return Err(std::io::Error::new(
                        error.kind(),
                        format!("cannot listen on {addr}: {error}"),
                    ));
                }
            }
        }
        if out.udp.is_empty() {
            return Err(std::io::Error::other("no DNS listener could be bound"));
        }
        if let Some(addr) = http {
            let l = std::net::TcpListener::bind(addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen for HTTP on {addr}: {e}"))
            })?;
            l.set_nonblocking(true)?;
            out.http = Some(tokio::net::TcpListener::from_std(l)?);
        }
        Ok(out)
    }
}

fn new_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        // One socket per family: "[::]:53" must not also claim IPv4 port 53.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// One UDP socket per CPU (at most 8) on the same address with
/// SO_REUSEPORT: the kernel spreads clients over them, so each core runs
/// its own receive loop instead of all queries queueing behind one.
fn bind_udp_group(addr: SocketAddr) -> std::io::Result<Vec<tokio::net::UdpSocket>> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let mut sockets = Vec::with_capacity(n);
    let mut bound = addr;
    for _ in 0..n {
        let socket = new_socket(bound, Type::DGRAM, Protocol::UDP)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.bind(&bound.into())?;
        let socket = tokio::net::UdpSocket::from_std(socket.into())?;
        // With port 0 the first bind picks the port; the rest join it.
        bound = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = new_socket(addr, Type::STREAM, Protocol::TCP)?;
    // Restart without waiting for TIME_WAIT connections to expire.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}
