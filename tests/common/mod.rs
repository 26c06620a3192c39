//! Test harness: a stub upstream DNS server, telesink started in-process on
//! port 0, and small DNS and HTTP clients. Everything stays on 127.0.0.1.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::svcb::{IpHint, SVCB, SvcParamKey, SvcParamValue};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, HTTPS, MX, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use telesink::config::Config;
use telesink::server::Listeners;

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(5);

pub fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn soa(zone: &str, ttl: u32, minimum: u32) -> Record {
    Record::from_rdata(
        name(zone),
        ttl,
        RData::SOA(SOA::new(
            name("ns.test."),
            name("hostmaster.test."),
            2026113001,
            3600,
            600,
            86400,
            minimum,
        )),
    )
}

/// What the stub upstream answers, by (lowercase name, type).
fn zone_answer(q: &Query, tcp: bool) -> (ResponseCode, Vec<Record>, Vec<Record>, bool, bool) {
    let n = q.name().to_lowercase().to_ascii();
    let t = q.query_type();
    let rec = |owner: &str, ttl: u32, data: RData| Record::from_rdata(name(owner), ttl, data);
    let a = |owner: &str, ip: [u8; 4]| rec(owner, 300, RData::A(A(Ipv4Addr::from(ip))));
    // (rcode, answers, authorities, authentic_data, truncated)
    let ok = |answers: Vec<Record>| (ResponseCode::NoError, answers, vec![], false, false);
    let https = |owner: &str, target: &str, hint: [u8; 4]| {
        let hint = SvcParamValue::Ipv4Hint(IpHint(vec![A(Ipv4Addr::from(hint))]));
        let svcb = SVCB::new(1, name(target), vec![(SvcParamKey::Ipv4Hint, hint)]);
        rec(owner, 300, RData::HTTPS(HTTPS(svcb)))
    };
    match (n.as_str(), t) {
        ("a.test.", RecordType::A) => ok(vec![a("a.test.", [192, 0, 2, 1])]),
        ("a.test.", RecordType::AAAA) => ok(vec![rec(
            "a.test.",
            300,
            RData::AAAA(AAAA(Ipv6Addr::from_str("2001:db8::1").unwrap())),
        )]),
        ("www.test.", RecordType::A) => ok(vec![
            rec("www.test.", 300, RData::CNAME(CNAME(name("edge.test.")))),
            rec("edge.test.", 300, RData::CNAME(CNAME(name("a.test.")))),
            a("a.test.", [192, 0, 2, 1]),
        ]),
        ("mx.test.", RecordType::MX) => ok(vec![rec(
            "mx.test.",
            300,
            RData::MX(MX::new(10, name("mail.test."))),
        )]),
        ("txt.test.", RecordType::TXT) => ok(vec![rec(
            "txt.test.",
            300,
            RData::TXT(TXT::new(vec!["v=spf1 -all".into(), "hello world".into()])),
        )]),
        ("big.test.", RecordType::A) => ok((1..=40u8)
            .map(|i| a("big.test.", [198, 51, 100, i]))
            .collect()),
        // Sent whole over UDP too (about 1,650 bytes), whatever size the
        // query advertised, as a misbehaving upstream does.
        ("huge.test.", RecordType::A) => ok((1..=100u8)
            .map(|i| a("huge.test.", [198, 51, 100, i]))
            .collect()),
        ("ad.test.", RecordType::A) => (
            ResponseCode::NoError,
            vec![a("ad.test.", [192, 0, 2, 9])],
            vec![],
            true,
            false,
        ),
        ("tc.test.", RecordType::A) if !tcp => (ResponseCode::NoError, vec![], vec![], false, true),
        ("tc.test.", RecordType::A) => ok(vec![a("tc.test.", [192, 0, 2, 10])]),
        ("slow.test.", RecordType::A) => ok(vec![a("slow.test.", [192, 0, 2, 13])]),
        ("short.test.", RecordType::A) => ok(vec![rec(
            "short.test.",
            2,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 11))),
        )]),
        // Public names whose upstream answer points into the LAN (DNS
        // rebinding), and a LAN name that may.
        ("private.test.", RecordType::A) => ok(vec![a("private.test.", [192, 168, 1, 10])]),
        ("private.test.", RecordType::AAAA) => ok(vec![rec(
            "private.test.",
            300,
            RData::AAAA(AAAA(Ipv6Addr::from_str("fd00::10").unwrap())),
        )]),
        ("nas.lan.", RecordType::A) => ok(vec![a("nas.lan.", [10, 0, 0, 2])]),
        ("servfail.test.", _) => (ResponseCode::ServFail, vec![], vec![], false, false),
        ("formerr.test.", _) => (ResponseCode::FormErr, vec![], vec![], false, false),
        ("notimp.test.", _) => (ResponseCode::NotImp, vec![], vec![], false, false),
        ("cloaked.test.", RecordType::A) => ok(vec![
            rec(
                "cloaked.test.",
                300,
                RData::CNAME(CNAME(name("collect.tracker.test."))),
            ),
            a("collect.tracker.test.", [192, 0, 2, 66]),
        ]),
        // An HTTPS record that sends the client to a tracker, with the
        // tracker's address as a hint (RFC 9460), and one for its own name.
        ("svc.test.", RecordType::HTTPS) => ok(vec![https(
            "svc.test.",
            "edge.tracker.test.",
            [192, 0, 2, 66],
        )]),
        ("self-svc.test.", RecordType::HTTPS) => {
            ok(vec![https("self-svc.test.", ".", [192, 0, 2, 1])])
        }
        // A CNAME into a label that is not UTF-8, under a blocked domain.
        ("odd-cloaked.test.", RecordType::A) => {
            let mut target = Name::from_labels(vec![&b"\xff"[..], b"tracker", b"test"]).unwrap();
            target.set_fqdn(true);
            ok(vec![
                rec(
                    "odd-cloaked.test.",
                    300,
                    RData::CNAME(CNAME(target.clone())),
                ),
                Record::from_rdata(target, 300, RData::A(A(Ipv4Addr::new(192, 0, 2, 66)))),
            ])
        }
        ("alias.allowed.test.", RecordType::A) => ok(vec![
            rec(
                "alias.allowed.test.",
                300,
                RData::CNAME(CNAME(name("edge.tracker.test."))),
            ),
            a("edge.tracker.test.", [192, 0, 2, 67]),
        ]),
        // Names a blocking test expects telesink to sinkhole: the stub
        // would resolve them, so a missed block shows as a real address.
        (other, RecordType::A) if other.ends_with("tracker.test.") => {
            ok(vec![a(other, [192, 0, 2, 66])])
        }
        (other, RecordType::A) if other.ends_with("blocked.test.") => {
            ok(vec![a(other, [192, 0, 2, 66])])
        }
        (_, RecordType::AAAA) if n == "nodata.test." => (
            ResponseCode::NoError,
            vec![],
            vec![soa("test.", 300, 120)],
            false,
            false,
        ),
        ("nodata.test.", RecordType::A) => ok(vec![a("nodata.test.", [192, 0, 2, 12])]),
        // Host names of encrypted test upstreams, for bootstrap resolution.
        (other, RecordType::A) if other.ends_with("upstream.test.") => {
            ok(vec![a(other, [127, 0, 0, 1])])
        }
        _ => (
            ResponseCode::NXDomain,
            vec![],
            vec![soa("test.", 300, 120)],
            false,
            false,
        ),
    }
}

/// A stub upstream DNS server on 127.0.0.1 (UDP and TCP on the same port).
pub struct Stub {
    pub addr: SocketAddr,
    /// Every question received: (lowercase name, type).
    log: Arc<Mutex<Vec<(String, RecordType)>>>,
    /// Connections accepted (TCP, TLS or HTTPS).
    connections: Arc<AtomicUsize>,
    /// While set, questions are logged but never answered.
    silent: Arc<AtomicBool>,
    token: CancellationToken,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl Stub {
    /// A stub that answers from the fixed test zone.
    pub async fn start() -> Self {
        Self::start_with(false).await
    }

    /// A stub that receives queries and never answers (a dead upstream).
    pub async fn silent() -> Self {
        Self::start_with(true).await
    }

    async fn start_with(silent: bool) -> Self {
        Self::start_delayed(silent, Duration::ZERO).await
    }

    /// Stops (or resumes) answering, as a dead upstream would.
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::SeqCst);
    }

    /// A stub that answers UDP queries after `delay` (a distant upstream).
    pub async fn delayed(delay: Duration) -> Self {
        Self::start_delayed(false, delay).await
    }

    async fn start_delayed(silent: bool, delay: Duration) -> Self {
        // UDP and TCP on the same port: the port the OS picks for UDP may
        // be taken for TCP (another test's connection), so pick again.
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                break (Arc::new(udp), tcp);
            }
        };
        let addr = udp.local_addr().unwrap();
        let me = Self::new(addr);
        me.silent.store(silent, Ordering::SeqCst);
        {
            let log = me.log.clone();
            let token = me.token.clone();
            let silent = me.silent.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let (n, from) = tokio::select! {
                        r = udp.recv_from(&mut buf) => r.unwrap(),
                        _ = token.cancelled() => return,
                    };
                    let quiet = silent.load(Ordering::SeqCst);
                    if let Some((reply, slow)) = answer(&buf[..n], false, &log, quiet) {
                        let delay = delay + slow;
                        if delay.is_zero() {
                            let _ = udp.send_to(&reply, from).await;
                        } else {
                            // Simulated network latency, not a wait.
                            let udp = udp.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                let _ = udp.send_to(&reply, from).await;
                            });
                        }
                    }
                }
            });
        }
        let silent = me.silent.clone();
        me.accept(tcp, move |stream, log| {
            let silent = silent.clone();
            async move {
                serve_stream(stream, log, silent).await;
            }
        });
        me
    }

    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            log: Arc::new(Mutex::new(Vec::new())),
            connections: Arc::new(AtomicUsize::new(0)),
            silent: Arc::new(AtomicBool::new(false)),
            token: CancellationToken::new(),
        }
    }

    /// Accepts connections on `listener` and serves each with `serve`.
    fn accept<F, Fut>(&self, listener: TcpListener, serve: F)
    where
        F: Fn(TcpStream, Arc<Mutex<Vec<(String, RecordType)>>>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let log = self.log.clone();
        let token = self.token.clone();
        let connections = self.connections.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    r = listener.accept() => r.unwrap(),
                    _ = token.cancelled() => return,
                };
                connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, log.clone()));
            }
        });
    }

    /// A DNS-over-TLS stub on 127.0.0.1 with the certificate of `tls`.
    pub async fn tls(tls: Arc<rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let me = Self::new(listener.local_addr().unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        me.accept(listener, move |stream, log| {
            let acceptor = acceptor.clone();
            async move {
                if let Ok(stream) = acceptor.accept(stream).await {
                    serve_stream(stream, log, Arc::new(AtomicBool::new(false))).await;
                }
            }
        });
        me
    }

    /// A DNS-over-HTTPS stub on 127.0.0.1 (HTTP/2 only, POST and GET on
    /// /dns-query) with the certificate of `tls`.
    pub async fn https(tls: Arc<rustls::ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let me = Self::new(listener.local_addr().unwrap());
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        me.accept(listener, move |stream, log| {
            let acceptor = acceptor.clone();
            async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| doh_answer(req, log.clone()));
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            }
        });
        me
    }

    /// How many connections the stub accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// How many times the stub was asked for (`name`, `qtype`).
    pub fn count(&self, qname: &str, qtype: RecordType) -> usize {
        let qname = qname.to_ascii_lowercase();
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, t)| *n == qname && *t == qtype)
            .count()
    }

    /// How many questions the stub received in all.
    pub fn total(&self) -> usize {
        self.log.lock().unwrap().len()
    }
}

/// Serves length-prefixed DNS messages on a stream until it closes.
async fn serve_stream<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    log: Arc<Mutex<Vec<(String, RecordType)>>>,
    silent: Arc<AtomicBool>,
) {
    while let Ok(len) = stream.read_u16().await {
        let mut buf = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        if let Some((reply, slow)) = answer(&buf, true, &log, silent.load(Ordering::SeqCst)) {
            tokio::time::sleep(slow).await;
            let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&reply);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    }
}

/// One DoH request (RFC 8484): POST of application/dns-message on
/// /dns-query.
async fn doh_answer(
    req: hyper::Request<hyper::body::Incoming>,
    log: Arc<Mutex<Vec<(String, RecordType)>>>,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let status = |code: u16| {
        Ok(hyper::Response::builder()
            .status(code)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap())
    };
    // Besides /dns-query, two ways to answer wrongly: an error page, and
    // the right answer followed by 70,000 bytes no DNS message can hold.
    let path = req.uri().path().to_string();
    if !["/dns-query", "/web-page", "/padded"].contains(&path.as_str())
        || req.method() != hyper::Method::POST
    {
        return status(404);
    }
    if path == "/web-page" {
        return Ok(hyper::Response::builder()
            .header("content-type", "text/html")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                "<html></html>",
            )))
            .unwrap());
    }
    if req
        .headers()
        .get("content-type")
        .is_none_or(|v| v != "application/dns-message")
    {
        return status(415);
    }
    let Ok(body) = req.into_body().collect().await else {
        return status(400);
    };
    match answer(&body.to_bytes(), true, &log, false) {
        Some((mut reply, _)) => Ok(hyper::Response::builder()
            .header("content-type", "application/dns-message")
            .body(http_body_util::Full::new(bytes::Bytes::from({
                if path == "/padded" {
                    reply.resize(reply.len() + 70_000, 0);
                }
                reply
            })))
            .unwrap()),
        None => status(400),
    }
}

/// A certificate authority made for one test, and server certificates
/// signed by it.
pub struct TestCa {
    /// The CA certificate, PEM: what `[upstream] ca_file` points at.
    pub pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("telesink test CA {}", rand_id()),
        );
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server configuration whose certificate is valid for `names` (host
    /// names or IP addresses), offering `alpn`.
    pub fn server(&self, names: &[&str], alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

fn answer(
    bytes: &[u8],
    tcp: bool,
    log: &Mutex<Vec<(String, RecordType)>>,
    silent: bool,
) -> Option<(Vec<u8>, Duration)> {
    let req = Message::from_vec(bytes).ok()?;
    let q = req.queries.first()?.clone();
    log.lock()
        .unwrap()
        .push((q.name().to_lowercase().to_ascii(), q.query_type()));
    if silent {
        return None;
    }
    // `bogus.test` fails validation: SERVFAIL, or the data when the query
    // sets CD, as a validating resolver answers (RFC 4035 §3.2.2).
    let (rcode, answers, authorities, ad, tc) = if q.name().to_lowercase().to_ascii()
        == "bogus.test."
    {
        if req.metadata.checking_disabled {
            let a = Record::from_rdata(q.name().clone(), 300, RData::A(A::new(203, 0, 113, 66)));
            (ResponseCode::NoError, vec![a], vec![], false, false)
        } else {
            (ResponseCode::ServFail, vec![], vec![], false, false)
        }
    } else {
        zone_answer(&q, tcp)
    };
    let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata.checking_disabled = req.metadata.checking_disabled;
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.response_code = rcode;
    resp.metadata.authentic_data = ad;
    resp.metadata.truncation = tc;
    resp.add_query(q);
    resp.add_answers(answers);
    resp.add_authorities(authorities);
    if req.edns.is_some() {
        resp.set_edns(Edns::new());
    }
    // `slow.test` answers after 300 ms, so identical queries overlap.
    let delay = if q_name_is(&resp, "slow.test.") {
        Duration::from_millis(300)
    } else {
        Duration::ZERO
    };
    Some((resp.to_vec().ok()?, delay))
}

fn q_name_is(m: &Message, name: &str) -> bool {
    m.queries
        .first()
        .is_some_and(|q| q.name().to_lowercase().to_ascii() == name)
}

/// telesink running in-process on ephemeral ports.
pub struct Telesink {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    token: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl Telesink {
    /// Starts telesink with `config` (TOML, `{upstream}` replaced by the
    /// stub's address), relative paths resolving against `dir`.
    pub async fn start(config: &str, upstreams: &[&Stub], dir: &Path) -> Self {
        let list: Vec<String> = upstreams
            .iter()
            .map(|s| format!("\"{}\"", s.addr))
            .collect();
        let text = config.replace("{upstreams}", &list.join(", "));
        let config = Config::from_toml(&text, "test.toml", dir).unwrap();
        Self::start_config(config).await
    }

    pub async fn start_config(config: Config) -> Self {
        let listeners = Listeners::bind(
            &["127.0.0.1:0".parse().unwrap()],
            Some("127.0.0.1:0".parse().unwrap()),
        )
        .unwrap();
        let udp = listeners.udp[0].local_addr().unwrap();
        let tcp = listeners.tcp[0].local_addr().unwrap();
        let http = listeners.http.as_ref().unwrap().local_addr().unwrap();
        let token = CancellationToken::new();
        let t = token.clone();
        let handle = tokio::spawn(async move {
            telesink::app::serve(config, listeners, t).await.unwrap();
        });
        let me = Self {
            udp,
            tcp,
            http,
            token,
            handle: Some(handle),
        };
        // Ready when /healthz answers (lists are loaded before it listens).
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while http_get(me.http, "/healthz").await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "telesink did not start"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        me
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(DEADLINE, h).await.unwrap().unwrap();
        }
    }

    pub async fn metrics(&self) -> String {
        http_get(self.http, "/metrics").await.unwrap()
    }
}

impl Drop for Telesink {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A query for `qname`/`qtype` with RD set, and EDNS when `edns` is true.
pub fn request(qname: &str, qtype: RecordType, edns: bool) -> Message {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(4242);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Sends raw bytes over UDP from `from` and waits for one reply.
pub async fn udp_raw_from(
    from: &str,
    server: SocketAddr,
    bytes: &[u8],
) -> std::io::Result<Vec<u8>> {
    let socket = UdpSocket::bind(from).await?;
    socket.send_to(bytes, server).await?;
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(DEADLINE, socket.recv_from(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no reply"))??;
    buf.truncate(n);
    Ok(buf)
}

/// Sends `msg` over UDP and returns the parsed reply.
pub async fn udp(server: SocketAddr, msg: &Message) -> Message {
    udp_from("127.0.0.1:0", server, msg).await
}

pub async fn udp_from(from: &str, server: SocketAddr, msg: &Message) -> Message {
    let reply = udp_raw_from(from, server, &msg.to_vec().unwrap())
        .await
        .unwrap();
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(
        reply.metadata.id, msg.metadata.id,
        "reply ID echoes the query"
    );
    reply
}

/// Sends `msg` over TCP and returns the parsed reply.
pub async fn tcp(server: SocketAddr, msg: &Message) -> Message {
    tcp_from("127.0.0.1:0", server, msg).await
}

/// [`tcp`] from the address `from` (`127.0.0.x:0`), as another client.
pub async fn tcp_from(from: &str, server: SocketAddr, msg: &Message) -> Message {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(from.parse().unwrap()).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    let bytes = msg.to_vec().unwrap();
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&bytes);
    stream.write_all(&framed).await.unwrap();
    let len = tokio::time::timeout(DEADLINE, stream.read_u16())
        .await
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

/// `qname`/`qtype` over UDP with EDNS.
pub async fn ask(server: SocketAddr, qname: &str, qtype: RecordType) -> Message {
    udp(server, &request(qname, qtype, true)).await
}

/// The A/AAAA addresses of an answer, as strings.
pub fn addresses(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// A plain HTTP/1.1 GET; returns the body of a 200 response.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut out = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "slow HTTP"))??;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(head.to_string()));
    }
    Ok(body.to_string())
}

/// A plain HTTP/1.1 POST with an empty body; returns the status and body.
pub async fn http_post(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "POST", path, None).await
}

/// An HTTP/1.1 request with an optional bearer token; status and body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    http_request_with(addr, method, path, &headers).await
}

/// An HTTP/1.1 request as curl sends it (`Host` is the address), with
/// `headers` added (a `Host` among them replaces it); status and body.
pub async fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = String::new();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\n{head}Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The value of one series in a Prometheus text exposition, 0 if absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Polls `check` until it is true or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `files` (name, contents) into a fresh temporary directory.
pub fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

pub type Counts = HashMap<String, usize>;

/// Kills a process when dropped, so that a server a failed test started
/// does not outlive the test (and hold its output pipe open).
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The real `telesink` binary, started on a config file, with the
/// addresses it logged as bound (its config may use port 0).
pub struct Binary {
    pub child: std::process::Child,
    /// Its log up to the `ready` line.
    pub startup: Vec<String>,
    /// The rest of its log, after the `ready` line.
    pub log: std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
    pub udp: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
}

impl Binary {
    /// Runs `telesink run --config CONFIG` and reads its log until ready.
    pub fn start(config: &Path) -> Self {
        Self::start_with_env(config, &[])
    }

    /// [`Binary::start`] with more environment variables.
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_telesink"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env("TELESINK_LOG", "info")
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut log = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut udp, mut http) = (None, None);
        let mut startup = Vec::new();
        let after = |line: &str, marker: &str| {
            line.split(marker)
                .nth(1)
                .map(|a| a.trim().parse::<SocketAddr>().unwrap())
        };
        for line in log.by_ref() {
            let line = line.unwrap();
            udp = udp.or_else(|| after(&line, "listening for DNS over UDP addr="));
            http = http.or_else(|| after(&line, "over HTTP addr="));
            let ready = line.contains("ready:");
            startup.push(line);
            if ready {
                break;
            }
        }
        Self {
            child,
            startup,
            log,
            udp,
            http,
        }
    }
}
