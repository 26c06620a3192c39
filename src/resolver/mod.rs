//! The resolver chain: every query passes through these links in order, and
//! each link either answers or passes the query on to the next.
//!
//! Links are generic over their successor (`Access<Block<Cache<Forward>>>`),
//! so a query costs no dynamic dispatch and no boxed futures. The order is
//! fixed in one place, [`chain`], with the reason for each position.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, LowerName, Record, RecordType};

mod access;
mod block;
mod cache;
mod forward;
mod local;
mod rebind;

pub use access::{Access, is_allowed};
pub use block::{Block, BlockPolicy};
pub use cache::Cache;
pub use forward::{Forward, Upstream, answer_from_reply, is_query_response};
pub use local::{Local, rfc8482_answer};
pub use rebind::{REBIND_LIST, Rebind, is_private, rebind_domain};

use crate::config::Config;
use crate::lists::ListStore;
use crate::metrics::Metrics;

/// One question, as the chain sees it.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    /// The queried name (already lowercase).
    pub name: &'a LowerName,
    /// The queried type.
    pub qtype: RecordType,
    /// The queried class (IN in practice).
    pub qclass: DNSClass,
    /// The client's address, for access control.
    pub client: IpAddr,
    /// The client set CD (checking disabled): passed on to the upstream.
    pub checking_disabled: bool,
}

/// Why an answer is what it is: the `outcome` label of metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The client is not allowed to query.
    Refused,
    /// A block list matched the name, or a CNAME target in its answer.
    Blocked {
        /// Configured name of the list that matched.
        list: Arc<str>,
        /// The CNAME target in the upstream answer that matched, when the
        /// queried name itself is not listed (CNAME cloaking).
        cname: Option<Box<str>>,
    },
    /// Served from the cache.
    Cached,
    /// Answered by an upstream resolver.
    Forwarded,
    /// Answered by telesink itself without an upstream (the RFC 8482
    /// answer to ANY).
    Local,
    /// No usable answer could be had (SERVFAIL).
    Error,
}

impl Outcome {
    /// The bounded metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Blocked { .. } => "blocked",
            Self::Cached => "cached",
            Self::Forwarded => "forwarded",
            Self::Local => "local",
            Self::Error => "error",
        }
    }
}

/// A complete answer: the records of each section and the response code.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Why this answer was given.
    pub outcome: Outcome,
    /// The response code.
    pub rcode: ResponseCode,
    /// The AD bit, as the upstream set it.
    pub authentic_data: bool,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section (the SOA of a negative answer, NS records).
    pub authorities: Vec<Record>,
    /// Additional section, without OPT.
    pub additionals: Vec<Record>,
}

impl Answer {
    /// An answer with no records.
    pub fn empty(outcome: Outcome, rcode: ResponseCode) -> Self {
        Self {
            outcome,
            rcode,
            authentic_data: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

/// One link of the chain.
pub trait Resolve: Send + Sync + Unpin + 'static {
    /// Answers `query`, by itself or by asking the next link.
    fn resolve(&self, query: &Query<'_>) -> impl Future<Output = Answer> + Send;
}

impl<R: Resolve> Resolve for Arc<R> {
    fn resolve(&self, query: &Query<'_>) -> impl Future<Output = Answer> + Send {
        (**self).resolve(query)
    }
}

/// Builds the chain for `config`, forwarding to `[upstream] servers`.
pub fn chain(config: &Config, lists: Arc<ListStore>, metrics: Arc<Metrics>) -> impl Resolve {
    // Forward is last: it is the only link that leaves the machine, and
    // everything above it exists to avoid or police that trip.
    let forward = Forward::new(
        &config.upstream,
        config.server.edns_udp_size,
        metrics.clone(),
    );
    chain_with(config, lists, metrics, forward)
}

/// Builds the chain for `config` in front of `upstream` (the real
/// [`Forward`], or an in-process fake for the fuzzer). This is the only
/// place that fixes the order of the links.
pub fn chain_with<U: Resolve>(
    config: &Config,
    lists: Arc<ListStore>,
    metrics: Arc<Metrics>,
    upstream: U,
) -> impl Resolve {
    // Cache sits right above the upstream so it holds only upstream
    // answers: a blocked answer is never cached, and unblocking a name
    // needs no flush.
    let cache = Cache::new(&config.cache, metrics.clone(), upstream);
    // Local answers ANY itself (RFC 8482) above Cache: the answer costs
    // nothing to make, and an ANY flood must not evict real entries.
    let local = Local::new(cache);
    // Block sits above Cache so a list change applies at once even to names
    // whose answers are cached, and it checks answers on their way back
    // from Cache/Forward: CNAME targets (CNAME cloaking) and, with
    // `[security] rebind_protection`, private addresses (DNS rebinding).
    // Rebinding is checked there, not in a link of its own, because its
    // answer is a blocked answer in the configured `[blocking] mode`, and
    // Block alone builds those from the current policy.
    let block = Block::new(lists, local).with_rebind(Rebind::from_config(&config.security));
    // Access control is first: a client outside `allow_clients` learns
    // nothing, not even whether a name is blocked, and costs no lookup.
    Access::new(config.server.allow_clients.clone(), block)
}
