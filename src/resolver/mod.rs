//! The resolver chain: every query passes through these links in order, and
//! each link either answers or passes the query on to the next.
//!
//! Links are generic over their successor
//! (`Access<Local<Block<Cache<Forward>>>>`),
//! so a query costs no dynamic dispatch and no boxed futures. The order is
//! fixed in one place, [`chain`], with the reason for each position.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

/// Length of the DNS message header (RFC 1035 §4.1.1).
pub(crate) const DNS_HEADER_LEN: usize = 12;

/// Appends `name` uncompressed (RFC 1035 §3.1): each label after its
/// length, then the root's zero. The bytes hickory's encoder writes for a
/// name with nothing before it to point to, without its per-byte writes
/// and compression bookkeeping.
pub(crate) fn write_name(name: &Name, out: &mut Vec<u8>) {
    for label in name.iter() {
        // `Name` holds labels of at most 63 bytes.
        out.push(u8::try_from(label.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(label);
    }
    out.push(0);
}

/// Where the name at `at` in `bytes` ends, if it is written out in full:
/// labels of at most 63 bytes, no compression pointer, the root label last.
pub(crate) fn plain_name_end(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        match *bytes.get(at)? {
            0 => return Some(at + 1),
            len @ 1..=63 => at += 1 + usize::from(len),
            _ => return None,
        }
    }
}

mod access;
mod any;
mod block;
mod cache;
mod forward;
mod local;
mod ratelimit;
mod rebind;
mod wire;

pub use access::{Access, is_allowed};
pub use any::{AnyQuery, rfc8482_answer};
pub use block::{Block, BlockPolicy, blocked_answer};
pub use cache::{Cache, CacheHit, WireAnswer};
pub(crate) use forward::dname_targets_uncompressed;
pub use forward::{Forward, answer_from_reply, is_query_response};
pub use local::{Local, LocalRecords, LocalVerdict, local_verdict};
pub use ratelimit::RateLimit;
pub use rebind::{REBIND_LIST, Rebind, is_private, rebind_domain};

use crate::config::Config;
use crate::controls::Controls;
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
    /// The client is over its rate limit and gets REFUSED.
    RateLimited,
    /// The client is over its rate limit and gets no answer at all.
    Dropped,
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
    /// An expired cached answer, served because the upstreams failed or
    /// were too slow (RFC 8767).
    Stale,
    /// Answered by an upstream resolver.
    Forwarded,
    /// Answered by telesink itself without an upstream: a `[local]`
    /// record, a special-use name, or the RFC 8482 answer to ANY.
    Local,
    /// No usable answer could be had (SERVFAIL).
    Error,
}

impl Outcome {
    /// The bounded metrics label.
    pub fn label(&self) -> &'static str {
        OUTCOME_LABELS[self.index()]
    }

    /// Position of [`Outcome::label`] in [`OUTCOME_LABELS`], for metrics
    /// handles resolved once instead of per query.
    pub fn index(&self) -> usize {
        match self {
            Self::Refused => 0,
            Self::RateLimited | Self::Dropped => 1,
            Self::Blocked { .. } => 2,
            Self::Cached => 3,
            Self::Stale => 4,
            Self::Forwarded => 5,
            Self::Local => 6,
            Self::Error => 7,
        }
    }
}

/// Every `outcome` label value, in [`Outcome::index`] order.
pub const OUTCOME_LABELS: [&str; 8] = [
    "refused",
    "ratelimited",
    "blocked",
    "cached",
    "stale",
    "forwarded",
    "local",
    "error",
];

/// A complete answer: the records of each section and the response code.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Why this answer was given.
    pub outcome: Outcome,
    /// The response code.
    pub rcode: ResponseCode,
    /// The AD bit, as the upstream set it.
    pub authentic_data: bool,
    /// The AA bit: set for local answers, which telesink is the authority for.
    pub authoritative: bool,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section (the SOA of a negative answer, NS records).
    pub authorities: Vec<Record>,
    /// Additional section, without OPT.
    pub additionals: Vec<Record>,
    /// These sections as the cache keeps them encoded: the handler sends
    /// these bytes, as the fast path sends a cache hit, instead of
    /// encoding the records again. Set only by the cache, on a fresh
    /// upstream answer it has just stored and on a fresh hit; an answer
    /// built or changed anywhere else has `None` (links that block or
    /// rewrite an answer build a new one).
    pub(crate) wire: Option<Encoded>,
    /// The upstream's reply these records were decoded from, as it came,
    /// for the cache to store its bytes rather than encode the
    /// records again. Set only by [`answer_from_reply`]; the cache takes it
    /// from the answer it stores, with the answer's records unchanged but
    /// for their TTLs.
    pub(crate) upstream_reply: Option<Vec<u8>>,
}

/// An answer's sections as the cache keeps them encoded ([`Answer::wire`]).
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    /// The sections.
    pub(crate) sections: Arc<WireAnswer>,
    /// Seconds since the cache stored them: their TTLs count down by that.
    pub(crate) age: u32,
}

impl Answer {
    /// Every record: the answer, authority and additional sections in order.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.answers
            .iter()
            .chain(&self.authorities)
            .chain(&self.additionals)
    }

    /// Appends the three sections to `message`, which holds a header and
    /// the question, exactly as hickory's response encoder writes them
    /// there, telling `record_at` where each record starts; `None` if one
    /// cannot be encoded. Used for answers the UDP fast path sends (and
    /// caches) itself, so they are the bytes the handler would send.
    pub(crate) fn emit_after_question(
        &self,
        message: &mut Vec<u8>,
        mut record_at: impl FnMut(usize),
    ) -> Option<()> {
        let end = message.len();
        let mut encoder = BinEncoder::new(message);
        encoder.set_offset(end);
        // hickory registers the echoed question as one compression
        // candidate. No name can match it (it includes type and class), but
        // it counts towards the encoder's limit of 64 candidates, and with
        // names of many labels that decides what is compressed.
        encoder.store_label_pointer(DNS_HEADER_LEN, end);
        self.records()
            .try_for_each(|record| {
                record_at(encoder.offset());
                record.emit(&mut encoder)
            })
            .ok()
    }

    /// An answer with no records.
    pub fn empty(outcome: Outcome, rcode: ResponseCode) -> Self {
        Self {
            outcome,
            rcode,
            authentic_data: false,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
            wire: None,
            upstream_reply: None,
        }
    }
}

/// The SOA telesink puts in the answers it makes up itself (blocked and
/// local negative answers), so clients cache the denial for `ttl` (RFC
/// 2308): `telesink. hostmaster.telesink. 1 3600 600 86400 <ttl>`.
pub(crate) fn synthetic_soa(owner: Name, ttl: u32) -> Record {
    static NAMES: std::sync::OnceLock<(Name, Name)> = std::sync::OnceLock::new();
    let (mname, rname) = NAMES.get_or_init(|| {
        (
            Name::from_ascii("telesink.").expect("valid name"),
            Name::from_ascii("hostmaster.telesink.").expect("valid name"),
        )
    });
    Record::from_rdata(
        owner,
        ttl,
        RData::SOA(SOA::new(
            mname.clone(),
            rname.clone(),
            1,
            3600,
            600,
            86_400,
            ttl,
        )),
    )
}

/// What the chain can answer at once, without awaiting anything: the
/// UDP fast path ([`crate::udp`]) asks this first and answers from it
/// directly, and takes the full [`Resolve::resolve`] path for
/// [`Peek::Slow`].
///
/// Each link decides for itself, in chain order, exactly as its `resolve`
/// would: a peek never answers differently from the full path, it only
/// skips the work. It has no side effects beyond the rate limiter's token
/// for an answer it commits to; the caller counts the hit.
#[derive(Debug)]
pub enum Peek {
    /// Only the full path can answer this query.
    Slow,
    /// A block list matched the queried name.
    Blocked {
        /// The blocking policy of the snapshot that matched.
        policy: BlockPolicy,
        /// Configured name of the list that matched.
        list: Arc<str>,
    },
    /// A fresh cached answer, already encoded.
    Cached(CacheHit),
}

/// One link of the chain.
pub trait Resolve: Send + Sync + Unpin + 'static {
    /// Answers `query`, by itself or by asking the next link.
    fn resolve(&self, query: &Query<'_>) -> impl Future<Output = Answer> + Send;

    /// What this link, and the links after it, can answer for `query`
    /// without awaiting; see [`Peek`]. Links that cannot tell leave it to
    /// the full path.
    fn peek(&self, _query: &Query<'_>) -> Peek {
        Peek::Slow
    }

    /// Tells the links that the caller did not send what [`Self::peek`]
    /// answered for `query` (it did not fit the client's buffer), so the
    /// query goes the full path: a link that counted it in `peek` takes
    /// that back. Only the links down to the rate limit, which counts,
    /// pass it on.
    fn declined(&self, _query: &Query<'_>) {}
}

impl<R: Resolve> Resolve for Arc<R> {
    fn resolve(&self, query: &Query<'_>) -> impl Future<Output = Answer> + Send {
        (**self).resolve(query)
    }

    fn peek(&self, query: &Query<'_>) -> Peek {
        (**self).peek(query)
    }

    fn declined(&self, query: &Query<'_>) {
        (**self).declined(query);
    }
}

/// Builds the chain for `config`, forwarding to `[upstream] servers` and
/// `[[forward]]` rules.
pub fn chain(
    config: &Config,
    lists: Arc<ListStore>,
    metrics: Arc<Metrics>,
    controls: Arc<Controls>,
) -> impl Resolve + use<> {
    // Forward is last: it is the only link that leaves the machine, and
    // everything above it exists to avoid or police that trip.
    // `[[forward]]` rules are part of it: conditional forwarding only
    // chooses which upstreams to ask, so blocking and caching apply to
    // those names exactly as to any other.
    let forward = Forward::new(config, metrics.clone());
    chain_with(config, lists, metrics, controls, forward)
}

/// Builds the chain for `config` in front of `upstream` (the real
/// [`Forward`], or an in-process fake for the fuzzer). This is the only
/// place that fixes the order of the links.
pub fn chain_with<U: Resolve>(
    config: &Config,
    lists: Arc<ListStore>,
    metrics: Arc<Metrics>,
    controls: Arc<Controls>,
    upstream: U,
) -> impl Resolve + use<U> {
    // Cache sits right above the upstream so it holds only upstream
    // answers: a blocked answer is never cached, and unblocking a name
    // needs no flush.
    let cache = Cache::new(&config.cache, &config.upstream, metrics.clone(), upstream);
    controls.set_flush(cache.flusher());
    // ANY is answered (RFC 8482) above Cache: the answer costs nothing to
    // make, and an ANY flood must not evict real entries or reach the
    // upstreams.
    let any = AnyQuery::new(cache);
    // Block sits above Cache so a list change applies at once even to names
    // whose answers are cached, and it checks answers on their way back
    // from Cache/Forward: CNAME targets (CNAME cloaking) and, with
    // `[security] rebind_protection`, private addresses (DNS rebinding).
    // Rebinding is checked there, not in a link of its own, because its
    // answer is a blocked answer in the configured `[blocking] mode`, and
    // Block alone builds those from the current policy.
    let block = Block::new(lists, controls, any).with_rebind(Rebind::from_config(&config.security));
    // Local records and special-use names sit above Block: a name the
    // household defined itself (`nas.lan`) is never blocked by a list entry
    // for a parent, and names that must never leave the network
    // (`localhost`, private reverse zones, the Firefox DoH canary) are
    // answered before anything else could forward them. A CNAME from a
    // local record to an outside name goes down through Block, so the
    // target is still checked. Private reverse zones covered by a
    // `[[forward]]` rule are left to Forward.
    let local = Local::new(&config.local, local::forwarded_domains(config), block);
    // Rate limiting comes right after access control: a flooding client is
    // stopped before it costs a lookup of any kind, and refused outsiders
    // do not use up anyone's bucket.
    let limited = RateLimit::new(&config.security.rate_limit, local);
    // Access control is first: a client outside `allow_clients` learns
    // nothing, not even whether a name is blocked, and costs no lookup.
    Access::new(config.server.allow_clients.clone(), limited)
}
