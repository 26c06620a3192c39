//! Forwarding to upstream resolvers (see [`crate::upstream`] for the
//! transports: plain UDP/TCP, DNS-over-TLS, DNS-over-HTTPS).
//!
//! The upstreams of the most specific `[[forward]]` rule for the name, or
//! else `[upstream] servers`, are asked in order: a server that times out,
//! fails or refuses is skipped for the next one. The upstream's answer is
//! passed on as it came: response code, every section, the AD flag and the
//! CNAME chain.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as DnsQuery, ResponseCode};
use hickory_proto::rr::{LowerName, Name, RData, RecordType};

use super::{Answer, DNS_HEADER_LEN, Outcome, Query, Resolve, plain_name_end, write_name};
use crate::config::{Config, Strategy, UpstreamAddr, parse_domain};
use crate::metrics::Metrics;
use crate::upstream::{AttemptError, Context, Upstream};

/// Asks upstream resolvers: the `[[forward]]` rule whose domain is the most
/// specific match for the name, or else `[upstream] servers`.
pub struct Forward {
    default: Group,
    /// Conditional forwarding rules, most specific domain first.
    rules: Vec<(LowerName, Arc<Group>)>,
}

/// A set of upstreams asked for the same names.
struct Group {
    /// Shared with the other groups that name the same server: one
    /// health, one connection pool and one metrics label per server.
    upstreams: Vec<Arc<Member>>,
    strategy: Strategy,
    /// The next first choice of `round_robin`.
    turn: AtomicUsize,
    /// The zero of the health clocks: the same in every group, as the
    /// members are shared.
    epoch: Instant,
    timeout: Duration,
    edns_udp_size: u16,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("upstreams", &self.default.upstreams.len())
            .field("rules", &self.rules.len())
            .finish()
    }
}

impl Forward {
    /// Forwards to `[upstream] servers`, and names under the domains of
    /// `[[forward]]` rules to their servers.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let ctx = Context::new(
            &config.upstream,
            &config.base_dir,
            config.server.edns_udp_size,
        );
        let epoch = Instant::now();
        let mut members: std::collections::HashMap<String, Arc<Member>> = Default::default();
        let mut group = |servers: &[UpstreamAddr]| Group {
            upstreams: servers
                .iter()
                .map(|s| {
                    let member = members.entry(s.to_string()).or_insert_with(|| {
                        let upstream = Upstream::new(s, &ctx);
                        metrics
                            .upstream_healthy
                            .with_label_values(&[upstream.label.as_str()])
                            .set(1);
                        Arc::new(Member {
                            upstream,
                            health: Health::default(),
                        })
                    });
                    member.clone()
                })
                .collect(),
            strategy: config.upstream.strategy,
            turn: AtomicUsize::new(0),
            epoch,
            timeout: config.upstream.timeout,
            edns_udp_size: config.server.edns_udp_size,
            metrics: metrics.clone(),
        };
        let mut rules = Vec::new();
        for rule in &config.forward {
            let servers = Arc::new(group(&rule.servers));
            for domain in &rule.domains {
                if let Some(domain) = parse_domain(domain) {
                    rules.push((domain, servers.clone()));
                }
            }
        }
        // Longest first: the first rule that matches is the most specific.
        rules.sort_by_key(|(domain, _)| std::cmp::Reverse(domain.num_labels()));
        Self {
            default: group(&config.upstream.servers),
            rules,
        }
    }

    /// The upstreams that answer `name`.
    fn group(&self, name: &LowerName) -> &Group {
        self.rules
            .iter()
            .find(|(domain, _)| domain.zone_of(name))
            .map_or(&self.default, |(_, group)| group)
    }
}

impl Resolve for Forward {
    fn resolve(&self, query: &Query<'_>) -> impl Future<Output = Answer> + Send {
        self.group(query.name).resolve(query)
    }
}

/// The query sent upstream for `query`, advertising `payload` bytes.
fn request(query: &Query<'_>, id: u16, payload: u16) -> Message {
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
    edns.set_max_payload(payload);
    msg.set_edns(edns);
    msg
}

impl Group {
    /// One exchange with one upstream, within `timeout`. The request is
    /// built as a [`Message`] (to match the reply against) and encoded by
    /// [`query_bytes`].
    async fn exchange(
        &self,
        upstream: &Upstream,
        query: &Query<'_>,
    ) -> Result<(Message, Option<Vec<u8>>), AttemptError> {
        let (id, payload) = (rand::random(), self.edns_udp_size.max(512));
        let request = request(query, id, payload);
        let bytes = query_bytes(query, id, payload);
        tokio::time::timeout(self.timeout, upstream.exchange(&request, &bytes))
            .await
            .map_err(|_| AttemptError::Timeout)?
    }
}

/// The bytes of the query [`request`] builds, as hickory's
/// `Message::to_vec` writes them (a unit test holds the two equal), without
/// its encoder: header, the one question, an OPT record with `payload`.
fn query_bytes(query: &Query<'_>, id: u16, payload: u16) -> Vec<u8> {
    // As hickory's `Edns::set_max_payload` does.
    let payload = payload.max(512);
    let mut bytes = Vec::with_capacity(DNS_HEADER_LEN + query.name.len() + 2 + 4 + 11);
    bytes.extend_from_slice(&id.to_be_bytes());
    // RD; AD (see `request`), CD as the client set it. One question, one
    // additional record (OPT).
    bytes.extend_from_slice(&[0x01, 0x20 | u8::from(query.checking_disabled) << 4]);
    bytes.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]);
    write_name(query.name, &mut bytes);
    bytes.extend_from_slice(&u16::from(query.qtype).to_be_bytes());
    bytes.extend_from_slice(&u16::from(query.qclass).to_be_bytes());
    // OPT: root owner, type 41, the payload size as its class, no extended
    // RCODE, version 0, no flags, no options.
    bytes.extend_from_slice(&[0, 0, 41]);
    bytes.extend_from_slice(&payload.to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    bytes
}

/// Consecutive failures (timeouts, errors) after which an upstream is
/// skipped for a while.
const FAILS_BEFORE_BACKOFF: u32 = 2;
/// The first backoff; it doubles with every further failure, up to
/// [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// One upstream of a group and what telesink knows of its health.
struct Member {
    upstream: Upstream,
    health: Health,
}

/// Lock-free health of one upstream.
#[derive(Default)]
struct Health {
    /// Failures in a row: attempts that timed out or failed, each started
    /// after the failure counted before it.
    failures: AtomicU32,
    /// One more than the microseconds after the group's epoch when a
    /// failure was last counted; 0 before any. When an upstream blips,
    /// every query already waiting on it fails together: that is one
    /// failure, not one per query, or a second's hiccup under load would
    /// send it straight into the longest backoff.
    failed_at: AtomicU64,
    /// Milliseconds after the group's epoch until which it is skipped; 0
    /// when healthy.
    down_until: AtomicU64,
    /// Milliseconds after the group's epoch until which one query holds
    /// the probe of an upstream whose backoff is over; the others skip it
    /// meanwhile. A lease, not a flag: a probe whose query is dropped
    /// (`fastest`'s loser, the total timeout) frees it by expiring.
    probe_until: AtomicU64,
    /// Smoothed round-trip time in microseconds; 0 until measured.
    latency_us: AtomicU64,
}

/// What one attempt came to.
enum Attempt {
    /// A reply to pass on, and its bytes if the transport keeps them.
    Answer(Message, Option<Vec<u8>>),
    /// SERVFAIL, REFUSED, FORMERR, NOTIMP or a truncated reply over a
    /// stream: ask another upstream.
    Failed,
    /// A timeout or a network/TLS error.
    Unreachable,
    /// Not asked: another query is probing it.
    Skipped,
}

impl Health {
    /// Adds a round-trip sample to the smoothed latency (1/4 weight: a few
    /// replies move it).
    fn sample(&self, elapsed: Duration) {
        let sample = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old.saturating_mul(3).saturating_add(sample)) / 4
        };
        self.latency_us.store(new, Ordering::Relaxed);
    }
}

impl Group {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Whether `m` may be asked now: healthy, or its backoff is over and
    /// no other query holds its probe.
    fn available(&self, m: &Member) -> bool {
        let until = m.health.down_until.load(Ordering::Relaxed);
        until == 0 || {
            let now = self.now_ms();
            now >= until && now >= m.health.probe_until.load(Ordering::Relaxed)
        }
    }

    /// Takes the probe of `m` if it is in backoff: `false` if it is still
    /// in backoff, or another query took the probe since [`Self::order`].
    /// Taken only right before asking, so an upstream put in the order but
    /// never reached (another answered first) is probed by a later query.
    fn claim(&self, m: &Member) -> bool {
        let h = &m.health;
        if h.down_until.load(Ordering::Relaxed) == 0 {
            return true;
        }
        // The lease seen free, taken only if no other query took it since.
        let lease = h.probe_until.load(Ordering::Relaxed);
        let until = self.now_ms().saturating_add(self.probe_lease_ms());
        self.available(m)
            && h.probe_until
                .compare_exchange(lease, until, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// How long a probe is held: its attempt's timeout, and a margin.
    fn probe_lease_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(100)
    }

    /// The upstreams to ask, in order, as the strategy says, and whether
    /// each must first [`Self::claim`] its probe. When every upstream is in
    /// backoff they are all tried anyway: an answer late is better than
    /// none.
    fn order(&self) -> Vec<(usize, bool)> {
        let n = self.upstreams.len();
        let start = match self.strategy {
            Strategy::RoundRobin => self.turn.fetch_add(1, Ordering::Relaxed) % n,
            Strategy::Failover | Strategy::Fastest => 0,
        };
        let mut order: Vec<(usize, bool)> = (0..n)
            .map(|i| (start + i) % n)
            .filter(|&i| self.available(&self.upstreams[i]))
            .map(|i| (i, true))
            .collect();
        if order.is_empty() {
            order.extend((0..n).map(|i| ((start + i) % n, false)));
        }
        if self.strategy == Strategy::Fastest {
            // Unmeasured upstreams (0) come first, so each gets measured.
            order
                .sort_by_key(|&(i, _)| self.upstreams[i].health.latency_us.load(Ordering::Relaxed));
        }
        order
    }

    /// One attempt at `m`, with its metrics and health bookkeeping; first
    /// its probe, if `claim` (see [`Self::order`]).
    async fn attempt(&self, (i, claim): (usize, bool), query: &Query<'_>) -> Attempt {
        let m = &self.upstreams[i];
        if claim && !self.claim(m) {
            return Attempt::Skipped;
        }
        let upstream = &m.upstream;
        let started = Instant::now();
        let started_us = self.now_us();
        let result = self.exchange(upstream, query).await;
        let label = match &result {
            Ok((reply, _)) if reply.metadata.truncation => "truncated",
            Ok((reply, _)) => match reply.metadata.response_code {
                ResponseCode::NoError => "ok",
                ResponseCode::NXDomain => "nxdomain",
                ResponseCode::ServFail => "servfail",
                ResponseCode::Refused => "refused",
                ResponseCode::FormErr => "formerr",
                ResponseCode::NotImp => "notimp",
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
            Ok((reply, bytes)) => {
                let elapsed = started.elapsed();
                self.metrics
                    .upstream_duration
                    .with_label_values(&[upstream.label.as_str()])
                    .observe(elapsed.as_secs_f64());
                self.healthy(m, elapsed);
                // TC even over TCP, TLS or HTTPS, or from a UDP upstream
                // without TCP (see `Upstream::exchange`): part of an
                // answer, not to be passed on or cached as the whole. It
                // says nothing of the upstream's health.
                if reply.metadata.truncation {
                    tracing::debug!(upstream = %upstream.label, "truncated reply over a stream, trying the next");
                    return Attempt::Failed;
                }
                let rcode = reply.metadata.response_code;
                // FORMERR and NOTIMP speak of telesink's own query (its
                // EDNS, a type the server does not know), not the client's.
                if matches!(
                    rcode,
                    ResponseCode::ServFail
                        | ResponseCode::Refused
                        | ResponseCode::FormErr
                        | ResponseCode::NotImp
                ) {
                    tracing::debug!(upstream = %upstream.label, %rcode, "upstream failed, trying the next");
                    return Attempt::Failed;
                }
                if !dname_targets_uncompressed(&reply) {
                    tracing::debug!(upstream = %upstream.label, "compressed DNAME target (RFC 6672 §2.5), trying the next");
                    return Attempt::Failed;
                }
                Attempt::Answer(reply, bytes)
            }
            Err(error) => {
                tracing::debug!(upstream = %upstream.label, %error, "upstream attempt failed");
                self.unhealthy(m, started_us);
                Attempt::Unreachable
            }
        }
    }

    fn healthy(&self, m: &Member, elapsed: Duration) {
        let h = &m.health;
        h.failures.store(0, Ordering::Relaxed);
        h.probe_until.store(0, Ordering::Relaxed);
        if h.down_until.swap(0, Ordering::Relaxed) != 0 {
            tracing::info!(upstream = %m.upstream.label, "upstream answers again");
            self.metrics
                .upstream_healthy
                .with_label_values(&[m.upstream.label.as_str()])
                .set(1);
        }
        h.sample(elapsed);
    }

    /// Counts a failure of an attempt started at `started_us`, unless
    /// another was counted since it started (see [`Health::failed_at`]).
    fn unhealthy(&self, m: &Member, started_us: u64) {
        let h = &m.health;
        h.probe_until.store(0, Ordering::Relaxed);
        let now = self.now_us() + 1;
        let mut last = h.failed_at.load(Ordering::Relaxed);
        loop {
            if last > started_us {
                return;
            }
            match h
                .failed_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(other) => last = other,
            }
        }
        let failures = h.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < FAILS_BEFORE_BACKOFF {
            return;
        }
        let backoff = BACKOFF
            .saturating_mul(1 << (failures - FAILS_BEFORE_BACKOFF).min(8))
            .min(MAX_BACKOFF);
        let until = self.now_ms() + u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
        if h.down_until.swap(until, Ordering::Relaxed) == 0 {
            tracing::warn!(upstream = %m.upstream.label, ?backoff, "upstream keeps failing; skipping it, then probing");
            self.metrics
                .upstream_healthy
                .with_label_values(&[m.upstream.label.as_str()])
                .set(0);
        }
    }

    /// Asks the upstreams as the strategy says until one answers.
    async fn resolve(&self, query: &Query<'_>) -> Answer {
        self.resolve_in(&self.order(), query).await
    }

    /// [`Self::resolve`] with the order already made.
    async fn resolve_in(&self, order: &[(usize, bool)], query: &Query<'_>) -> Answer {
        let servfail = || Answer::empty(Outcome::Error, ResponseCode::ServFail);
        match self.ask(order, query).await {
            Ok(answer) => answer,
            Err(Asked::Some) => servfail(),
            // Every upstream of the order was being probed by other
            // queries (they came out of backoff together): ask them all
            // rather than fail without asking.
            Err(Asked::None) => {
                let all: Vec<_> = (0..self.upstreams.len()).map(|i| (i, false)).collect();
                self.ask(&all, query).await.unwrap_or_else(|_| servfail())
            }
        }
    }

    /// Asks the upstreams of `order` until one answers.
    async fn ask(&self, order: &[(usize, bool)], query: &Query<'_>) -> Result<Answer, Asked> {
        let mut asked = Asked::None;
        let mut rest = order;
        if self.strategy == Strategy::Fastest && order.len() >= 2 {
            // The two best at once; the first good answer wins and the
            // other request is dropped.
            let raced = Instant::now();
            let a = self.attempt(order[0], query);
            let b = self.attempt(order[1], query);
            tokio::pin!(a, b);
            let (mut a_done, mut b_done) = (false, false);
            while !(a_done && b_done) {
                let result = tokio::select! {
                    r = &mut a, if !a_done => { a_done = true; r }
                    r = &mut b, if !b_done => { b_done = true; r }
                };
                match result {
                    Attempt::Answer(reply, bytes) => {
                        // The other request is dropped. It took at least
                        // as long, so it counts as twice that; without
                        // this, an upstream that always loses would never
                        // be measured. (Only here: a query dropped for
                        // another reason says nothing of its upstreams.)
                        let loser = match (a_done, b_done) {
                            (true, false) => Some(order[1].0),
                            (false, true) => Some(order[0].0),
                            _ => None,
                        };
                        if let Some(i) = loser {
                            self.upstreams[i].health.sample(raced.elapsed() * 2);
                        }
                        return Ok(answer_from_reply(reply, bytes));
                    }
                    Attempt::Skipped => {}
                    Attempt::Failed | Attempt::Unreachable => asked = Asked::Some,
                }
            }
            rest = &order[2..];
        }
        for &i in rest {
            match self.attempt(i, query).await {
                Attempt::Answer(reply, bytes) => return Ok(answer_from_reply(reply, bytes)),
                Attempt::Skipped => {}
                Attempt::Failed | Attempt::Unreachable => asked = Asked::Some,
            }
        }
        Err(asked)
    }
}

/// Whether a round of attempts asked any upstream.
enum Asked {
    None,
    Some,
}

/// Whether every DNAME record in `reply` has its target written out in
/// full, as RFC 6672 §2.5 requires. hickory keeps DNAME data as opaque
/// bytes, so a compressed target would be encoded again as the same
/// pointer, into a message laid out differently: another name. Such a
/// reply is treated as a failed attempt.
pub(crate) fn dname_targets_uncompressed(reply: &Message) -> bool {
    reply
        .answers
        .iter()
        .chain(&reply.authorities)
        .chain(&reply.additionals)
        .all(|record| match &record.data {
            RData::Unknown { code, rdata } if *code == RecordType::DNAME => {
                plain_name_end(&rdata.anything, 0) == Some(rdata.anything.len())
            }
            _ => true,
        })
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

/// The answer an accepted upstream reply gives the client; `bytes` is the
/// reply as it came, if the transport kept it (the cache may store those
/// bytes instead of encoding the records).
pub fn answer_from_reply(mut reply: Message, bytes: Option<Vec<u8>>) -> Answer {
    // hickory parses OPT into `edns`, not `additionals`, so the client gets
    // telesink's own OPT record and the upstream's sections unchanged.
    Answer {
        outcome: Outcome::Forwarded,
        rcode: reply.metadata.response_code,
        authentic_data: reply.metadata.authentic_data,
        authoritative: false,
        answers: std::mem::take(&mut reply.answers),
        authorities: std::mem::take(&mut reply.authorities),
        additionals: std::mem::take(&mut reply.additionals),
        wire: None,
        upstream_reply: bytes,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use hickory_proto::rr::{DNSClass, RecordType};

    use super::*;

    /// An A query for `name` from loopback.
    fn query(name: &LowerName) -> Query<'_> {
        Query {
            name,
            qtype: RecordType::A,
            qclass: DNSClass::IN,
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
            checking_disabled: false,
        }
    }

    #[test]
    fn a_compressed_dname_target_fails_the_attempt() {
        use hickory_proto::rr::Record;
        use hickory_proto::rr::rdata::NULL;

        let with_dname = |target: &[u8]| {
            let mut m = Message::response(1, OpCode::Query);
            m.answers.push(Record::from_rdata(
                Name::from_ascii("example.test.").unwrap(),
                300,
                RData::Unknown {
                    code: RecordType::DNAME,
                    rdata: NULL::with(target.to_vec()),
                },
            ));
            m
        };
        assert!(dname_targets_uncompressed(&with_dname(
            b"\x04edge\x04test\x00"
        )));
        assert!(dname_targets_uncompressed(&with_dname(b"\x00")));
        assert!(!dname_targets_uncompressed(&with_dname(
            b"\x04edge\xc0\x10"
        )));
        assert!(!dname_targets_uncompressed(&with_dname(b"\x04edge")));
        assert!(!dname_targets_uncompressed(&with_dname(
            b"\x04edge\x00\x00"
        )));
    }

    #[tokio::test]
    async fn a_query_whose_probes_were_all_taken_still_asks() {
        // An upstream that answers every query (no records, NOERROR).
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let mut reply = Message::from_vec(&buf[..n]).unwrap();
                reply.metadata.message_type = MessageType::Response;
                let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
            }
        });
        let text = format!("[upstream]\nservers = [\"{addr}\"]\n");
        let config = Config::from_toml(&text, "t", std::path::Path::new(".")).unwrap();
        let forward = Forward::new(&config, Arc::new(Metrics::new()));
        let group = &forward.default;
        // Its backoff is over, so this query orders it as a probe...
        let health = &group.upstreams[0].health;
        health.down_until.store(1, Ordering::Relaxed);
        while group.now_ms() < 1 {
            tokio::task::yield_now().await;
        }
        let order = group.order();
        assert_eq!(order, [(0, true)]);
        // ...and before it asks, another query takes the probe.
        health.probe_until.store(u64::MAX, Ordering::Relaxed);
        let name = LowerName::from(Name::from_ascii("a.test.").unwrap());
        let query = query(&name);
        let answer = group.resolve_in(&order, &query).await;
        assert_eq!(answer.rcode, ResponseCode::NoError, "asked after all");
    }

    /// Queries waiting on an upstream when it stops answering fail
    /// together, and count as one failure: a blip under load must not send
    /// it into the longest backoff. Failures in a row still back it off.
    #[tokio::test]
    async fn failures_at_once_count_once() {
        // An upstream that never answers.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let text = format!(
            "[upstream]\nservers = [\"{addr}\"]\ntimeout = \"100ms\"\ntotal_timeout = \"1s\"\n"
        );
        let config = Config::from_toml(&text, "t", std::path::Path::new(".")).unwrap();
        let forward = Arc::new(Forward::new(&config, Arc::new(Metrics::new())));
        let mut asking = tokio::task::JoinSet::new();
        for i in 0..8 {
            let forward = forward.clone();
            asking.spawn(async move {
                let name = LowerName::from(Name::from_ascii(format!("n{i}.test.")).unwrap());
                forward.default.resolve(&query(&name)).await.rcode
            });
        }
        let answers = asking.join_all().await;
        let group = &forward.default;
        let health = &group.upstreams[0].health;
        let names = [LowerName::from(Name::from_ascii("n0.test.").unwrap())];
        assert!(
            answers.iter().all(|&r| r == ResponseCode::ServFail),
            "{answers:?}"
        );
        assert_eq!(health.failures.load(Ordering::Relaxed), 1);
        assert_eq!(health.down_until.load(Ordering::Relaxed), 0, "not skipped");

        // The next query fails on its own: two in a row, the first backoff.
        let before = group.now_ms();
        group.resolve(&query(&names[0])).await;
        assert_eq!(health.failures.load(Ordering::Relaxed), 2);
        let skipped_for = health.down_until.load(Ordering::Relaxed) - before;
        assert!((5_000..5_500).contains(&skipped_for), "{skipped_for} ms");
    }

    /// A query dropped while it waits (the UDP waiting bound, a client
    /// gone) says nothing of its upstream's latency; only `fastest`'s
    /// loser is counted as slow.
    #[tokio::test]
    async fn a_dropped_query_is_no_latency_sample() {
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let text = format!("[upstream]\nservers = [\"{addr}\"]\n");
        let config = Config::from_toml(&text, "t", std::path::Path::new(".")).unwrap();
        let forward = Forward::new(&config, Arc::new(Metrics::new()));
        let group = &forward.default;
        let name = LowerName::from(Name::from_ascii("a.test.").unwrap());
        let query = query(&name);
        let mut buf = [0u8; 512];
        {
            let resolving = group.resolve(&query);
            tokio::pin!(resolving);
            tokio::select! {
                _ = &mut resolving => panic!("a silent upstream answered"),
                // Asked: the query reached the upstream.
                got = silent.recv_from(&mut buf) => { got.unwrap(); }
            }
        }
        let health = &group.upstreams[0].health;
        assert_eq!(health.latency_us.load(Ordering::Relaxed), 0);
    }

    /// A server named in `[upstream] servers` and in a `[[forward]]` rule
    /// is one upstream: its failures seen through one group back it off
    /// in the other, and `telesink_upstream_healthy` has one value for it.
    #[test]
    fn a_server_in_several_groups_is_one_upstream() {
        let text = "[upstream]\nservers = [\"127.0.0.1:5301\", \"127.0.0.1:5302\"]\n\
                    [[forward]]\ndomains = [\"lan\"]\nservers = [\"127.0.0.1:5303\", \"127.0.0.1:5301\"]\n";
        let config = Config::from_toml(text, "t", std::path::Path::new(".")).unwrap();
        let forward = Forward::new(&config, Arc::new(Metrics::new()));
        let lan = forward.group(&LowerName::from(Name::from_ascii("nas.lan.").unwrap()));
        assert_eq!(lan.upstreams.len(), 2);
        assert!(Arc::ptr_eq(
            &forward.default.upstreams[0],
            &lan.upstreams[1]
        ));
        assert!(!Arc::ptr_eq(
            &forward.default.upstreams[1],
            &lan.upstreams[0]
        ));
        assert_eq!(forward.default.epoch, lan.epoch);
    }

    /// The hand-written query is byte for byte what hickory encodes, for
    /// names of every shape, any type, CD either way, any payload size.
    #[test]
    fn query_bytes_are_what_hickory_encodes() {
        let long_label = format!("{}.example.", "a".repeat(63));
        let names = [
            ".",
            "example.com.",
            "a.b.c.d.e.f.g.",
            "xn--bcher-kva.example.",
            "_dmarc.x.",
            &long_label,
        ];
        let types = [
            RecordType::A,
            RecordType::AAAA,
            RecordType::HTTPS,
            RecordType::ANY,
            RecordType::PTR,
            RecordType::Unknown(65280),
        ];
        for name in names {
            let name = LowerName::new(&Name::from_ascii(name).unwrap());
            for qtype in types {
                for checking_disabled in [false, true] {
                    for payload in [0, 512, 1232, 4096, u16::MAX] {
                        let query = Query {
                            name: &name,
                            qtype,
                            qclass: DNSClass::IN,
                            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
                            checking_disabled,
                        };
                        let id = 0xbeef;
                        assert_eq!(
                            query_bytes(&query, id, payload),
                            request(&query, id, payload).to_vec().unwrap(),
                            "{name} {qtype} cd={checking_disabled} payload={payload}"
                        );
                    }
                }
            }
        }
    }
}
