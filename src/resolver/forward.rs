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
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as DnsQuery, ResponseCode};
use hickory_proto::rr::{LowerName, Name};

use super::{Answer, Outcome, Query, Resolve};
use crate::config::{Config, UpstreamAddr, parse_domain};
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
    upstreams: Vec<Upstream>,
    timeout: Duration,
    edns_udp_size: u16,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("upstreams", &self.default.upstreams)
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
        let group = |servers: &[UpstreamAddr]| Group {
            upstreams: servers.iter().map(|s| Upstream::new(s, &ctx)).collect(),
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

impl Group {
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

    /// One exchange with one upstream, within `timeout`.
    async fn exchange(
        &self,
        upstream: &Upstream,
        query: &Query<'_>,
    ) -> Result<Message, AttemptError> {
        let request = self.request(query, rand::random());
        let bytes = request
            .to_vec()
            .map_err(|e| AttemptError::Malformed(e.to_string()))?;
        tokio::time::timeout(self.timeout, upstream.exchange(&request, &bytes))
            .await
            .map_err(|_| AttemptError::Timeout)?
    }
}

impl Group {
    /// Asks the upstreams in order until one answers.
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
                        tracing::debug!(upstream = %upstream.label, %rcode, "upstream failed, trying the next");
                        last_rcode = ResponseCode::ServFail;
                        continue;
                    }
                    return into_answer(reply);
                }
                Err(error) => {
                    tracing::debug!(upstream = %upstream.label, %error, "upstream attempt failed");
                }
            }
        }
        Answer::empty(Outcome::Error, last_rcode)
    }
}

fn into_answer(mut reply: Message) -> Answer {
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
    }
}
