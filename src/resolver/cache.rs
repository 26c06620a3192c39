//! The answer cache: upstream answers kept for their TTL.
//!
//! Keyed by (name, type, class). TTLs are clamped to `[min_ttl, max_ttl]`
//! when stored and counted down on every hit, so a client never holds an
//! answer longer than the upstream meant. Negative answers (NXDOMAIN and
//! NODATA) are kept for the SOA's negative TTL (RFC 2308 §5). The cache is
//! bounded by entry count, with an answer that holds more than a KiB
//! counted once per KiB ([`Weight`]), so its memory stays bounded whatever
//! the upstreams send; it evicts with S3-FIFO (quick_cache), which keeps
//! popular names through a burst of one-off lookups.
//!
//! When the upstreams fail or stay silent, an expired answer up to
//! `[cache] serve_stale` old is served with a 30 s TTL after at most
//! `stale_timeout` (RFC 8767). Identical queries that miss at the same time
//! share one upstream request, and at most `[upstream] max_in_flight`
//! upstream requests run at once.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, broadcast};

use hashbrown::HashMap;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, LowerName, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::{Answer, DNS_HEADER_LEN, Encoded, Outcome, Peek, Query, Resolve, wire, write_name};
use crate::config::{CacheConfig, UpstreamConfig};
use crate::metrics::Metrics;
use crate::throttle::Throttle;

/// The question, and whether it was asked with CD (checking disabled). An
/// upstream that validates answers a CD query with data that failed
/// validation (RFC 4035 §3.2.2): kept apart, such an answer never reaches
/// a client that did not set CD, whether from the cache or from a request
/// in flight.
type Key = (LowerName, RecordType, DNSClass, bool);

/// A borrowed [`Key`] for lookups, so a cache hit does not clone the name.
/// It hashes exactly as the tuple does (its fields in order).
#[derive(Hash)]
struct KeyRef<'a>(&'a LowerName, RecordType, DNSClass, bool);

impl<'a> KeyRef<'a> {
    fn of(query: &Query<'a>) -> Self {
        Self(
            query.name,
            query.qtype,
            query.qclass,
            query.checking_disabled,
        )
    }
}

impl quick_cache::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *self.0 == key.0 && self.1 == key.1 && self.2 == key.2 && self.3 == key.3
    }
}

/// The [`Key`] of `query`.
fn key_of(query: &Query<'_>) -> Key {
    (
        query.name.clone(),
        query.qtype,
        query.qclass,
        query.checking_disabled,
    )
}

/// Prefetches running at once.
const PREFETCH_SLOTS: usize = 8;

/// TTL of an answer served stale (RFC 8767 §4 recommends 30 s).
const STALE_TTL: u32 = 30;
/// After a failed refresh, stale answers are served without asking the
/// upstreams again for this long (RFC 8767's stale-refresh time).
const STALE_REFRESH: u32 = 30;

/// A cached answer encoded once, when it is stored, so the UDP fast path
/// ([`crate::udp`]) answers a hit by copying bytes and patching TTLs
/// instead of cloning and encoding records.
///
/// The bytes are the answer, authority and additional sections (without
/// OPT), with the stored TTLs: either as the upstream sent them, where
/// `wire::sections` finds they read the same after any header and the
/// question in any case, or as hickory's encoder writes them after a
/// header and the question. Either way the fast and the full path send
/// the same bytes. Compression pointers in them are offsets into the whole
/// message (the upstream's may point into the question's name), which is
/// why they are only valid after a question for the same name, of
/// `question_len` bytes.
#[derive(Debug)]
pub struct WireAnswer {
    /// The response code (its low four bits: entries with an extended
    /// code are not encoded).
    pub rcode: ResponseCode,
    /// The AD bit, as the upstream set it.
    pub authentic_data: bool,
    /// Record counts of the answer, authority and additional sections.
    pub counts: [u16; 3],
    /// Length of the question section the bytes were encoded after: the
    /// queried name in uncompressed wire form plus type and class.
    pub question_len: usize,
    bytes: Box<[u8]>,
    /// Each record's TTL: its offset in `bytes`, and its stored value.
    ttls: Box<[(u16, u32)]>,
    /// The names the answer section sends the client on to, for the
    /// CNAME check ([`super::block::onward_names`]).
    onward_names: Box<[LowerName]>,
}

impl WireAnswer {
    /// Encodes `answer` (TTLs already clamped) as the reply to a question
    /// for `name`; `None` if it cannot be, or if the bytes do not decode
    /// back to exactly its records, and then hits take the full path.
    pub(crate) fn encode(name: &LowerName, answer: &Answer) -> Option<Self> {
        if answer.rcode.high() != 0 {
            return None;
        }
        let mut buf = Vec::with_capacity(512);
        buf.extend_from_slice(&[0; DNS_HEADER_LEN]);
        write_name(name, &mut buf);
        buf.extend_from_slice(&[0; 4]);
        let question_len = buf.len() - DNS_HEADER_LEN;
        let start = buf.len();
        let mut starts = Vec::new();
        answer.emit_after_question(&mut buf, |at| starts.push(at))?;
        let ttls = starts
            .iter()
            .zip(answer.records())
            .map(|(&at, record)| {
                let ttl_at = skip_name(&buf, at)? + 4 - start;
                Some((u16::try_from(ttl_at).ok()?, record.ttl))
            })
            .collect::<Option<Box<[_]>>>()?;
        let count = |n: usize| u16::try_from(n).ok();
        let counts = [
            count(answer.answers.len())?,
            count(answer.authorities.len())?,
            count(answer.additionals.len())?,
        ];
        // Checked on the message as written, with the question zeroed as
        // [`Self::records`] sees it, so the check needs no copy.
        buf[DNS_HEADER_LEN..start].fill(0);
        let [a, n, d] = decode_sections(&buf, start, counts)?;
        if a != answer.answers || n != answer.authorities || d != answer.additionals {
            return None;
        }
        Some(Self {
            rcode: answer.rcode,
            authentic_data: answer.authentic_data,
            counts,
            question_len,
            bytes: buf.split_off(start).into_boxed_slice(),
            ttls,
            onward_names: onward_names(answer),
        })
    }

    /// The sections of `reply`, the upstream's answer to a question for
    /// `name` that hickory decoded into `answer` (TTLs since clamped), as
    /// the upstream wrote them but for the TTLs; `None` where
    /// [`wire::sections`] finds they could read differently in telesink's
    /// reply, and then [`Self::encode`] encodes the records instead. No
    /// check by decoding is needed: these are the bytes the records were
    /// decoded from, and what telesink's reply changes (header, the
    /// question's case, TTLs, OPT) is never read as part of a name.
    fn from_upstream(name: &LowerName, answer: &Answer, reply: &[u8]) -> Option<Self> {
        if answer.rcode.high() != 0 {
            return None;
        }
        let sections = wire::sections(reply, name)?;
        let lengths = [
            answer.answers.len(),
            answer.authorities.len(),
            answer.additionals.len(),
        ];
        // hickory takes OPT out of the additionals (so does `sections`),
        // and SIG(0) and TSIG records too (`sections` does not).
        if sections.counts.map(usize::from) != lengths {
            return None;
        }
        let ttls: Box<[(u16, u32)]> = sections
            .ttls
            .iter()
            .zip(answer.records())
            .map(|(&at, record)| (at, record.ttl))
            .collect();
        let mut bytes: Box<[u8]> = reply[sections.start..sections.end].into();
        // The clamped TTLs, so the records decode as they were stored.
        for &(at, ttl) in &ttls {
            let at = usize::from(at);
            bytes[at..at + 4].copy_from_slice(&ttl.to_be_bytes());
        }
        Some(Self {
            rcode: answer.rcode,
            authentic_data: answer.authentic_data,
            counts: sections.counts,
            question_len: sections.start - DNS_HEADER_LEN,
            bytes,
            ttls,
            onward_names: onward_names(answer),
        })
    }

    /// Appends the sections to `out`, every TTL counted down by `age`
    /// seconds as [`Cache`] counts down the records of a hit.
    pub fn write(&self, out: &mut Vec<u8>, age: u32) {
        let base = out.len();
        out.extend_from_slice(&self.bytes);
        for &(at, ttl) in &*self.ttls {
            let at = base + usize::from(at);
            out[at..at + 4].copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
        }
    }

    /// The records again, decoded from the bytes after a stand-in for the
    /// header and a question for `name` (compression pointers land where
    /// they were written, and the upstream's bytes may point into the
    /// question's name); `None` if they do not decode.
    fn records(&self, name: &LowerName) -> Option<[Vec<Record>; 3]> {
        let start = DNS_HEADER_LEN + self.question_len;
        let mut message = Vec::with_capacity(start + self.bytes.len());
        message.extend_from_slice(&[0; DNS_HEADER_LEN]);
        write_name(name, &mut message);
        message.resize(start, 0);
        message.extend_from_slice(&self.bytes);
        decode_sections(&message, start, self.counts)
    }

    /// Whether the sections, `age` seconds after they were stored for a
    /// question for `name`, hold exactly `answer`'s records and TTLs: the
    /// full check behind the handler's cheap one (debug builds, and so
    /// every test, make it on every reply sent from these bytes).
    pub(crate) fn holds(&self, name: &LowerName, age: u32, answer: &Answer) -> bool {
        let Some(sections) = self.records(name) else {
            return false;
        };
        let mut theirs = answer.records();
        sections.iter().flatten().all(|a| {
            theirs
                .next()
                .is_some_and(|b| a == b && a.ttl.saturating_sub(age) == b.ttl)
        }) && theirs.next().is_none()
    }

    /// Length of the sections in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether there are no records at all.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The names the answer section sends the client on to.
    pub fn onward_names(&self) -> &[LowerName] {
        &self.onward_names
    }
}

/// The names `answer`'s answer section sends the client on to.
fn onward_names(answer: &Answer) -> Box<[LowerName]> {
    super::block::onward_names(answer)
        .map(LowerName::new)
        .collect()
}

/// A fresh cache entry that has a wire form, found by [`Resolve::peek`].
#[derive(Debug)]
pub struct CacheHit {
    entry: Arc<Entry>,
    /// Seconds since the entry was stored, to count its TTLs down.
    age: u32,
}

impl CacheHit {
    /// The encoded answer.
    pub fn wire(&self) -> &WireAnswer {
        self.entry
            .wire()
            .expect("peek only returns entries that have a wire form")
    }

    /// Seconds since the answer was stored.
    pub fn age(&self) -> u32 {
        self.age
    }

    /// Counts the hit once it is answered: the hit counter that prefetch
    /// uses, and `telesink_cache_hits_total`.
    pub fn commit(&self, metrics: &Metrics) {
        self.entry.hits.fetch_add(1, Ordering::Relaxed);
        metrics.cache_hits.inc();
    }
}

/// The three sections of `message` from `start` on, `counts` records each;
/// `None` unless they decode and fill the message exactly.
fn decode_sections(message: &[u8], start: usize, counts: [u16; 3]) -> Option<[Vec<Record>; 3]> {
    let mut decoder = BinDecoder::new(message);
    decoder.read_slice(start).ok()?;
    let mut section = |count: u16| {
        (0..count)
            .map(|_| Record::read(&mut decoder).ok())
            .collect::<Option<Vec<_>>>()
    };
    let records = [
        section(counts[0])?,
        section(counts[1])?,
        section(counts[2])?,
    ];
    decoder.is_empty().then_some(records)
}

/// The offset just past the (possibly compressed) name at `at` in `msg`.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xC0 == 0xC0 => return Some(at + 2),
            l if l & 0xC0 == 0 => at += 1 + usize::from(l),
            _ => return None,
        }
    }
}

/// How a cached answer's records are kept.
#[derive(Debug)]
enum Stored {
    /// Encoded only, the usual form: the fast path sends it as it is, and
    /// the rare hit on the full path (stale, prefetch due, CNAME or
    /// rebinding checks) decodes the records again. hickory's record
    /// structures take several times the encoded size.
    Wire(Arc<WireAnswer>),
    /// Records that could not be encoded, or did not decode back to the
    /// same records: kept as they are, and answered by the full path only.
    Records([Vec<Record>; 3]),
}

/// One cached answer.
#[derive(Debug)]
struct Entry {
    stored: Stored,
    rcode: ResponseCode,
    authentic_data: bool,
    /// When it was stored.
    at: Instant,
    /// Seconds the entry stays fresh: the smallest (clamped) TTL in it.
    ttl: u32,
    /// Age in seconds + 1 at the last failed refresh; 0 if none.
    failed_at: AtomicU32,
    /// Cache hits so far, for prefetch.
    hits: AtomicU32,
    /// A prefetch of this entry is running.
    prefetching: AtomicBool,
    /// The share of the cache's capacity it takes ([`Weight`]).
    weight: u32,
}

/// Memory one entry takes besides its answer's own bytes: the entry, the
/// encoded answer's fields, the key, and the cache's bookkeeping.
const ENTRY_OVERHEAD: usize = size_of::<Entry>() + size_of::<WireAnswer>() + size_of::<Key>() + 64;

/// Memory one record takes as hickory's structures (about 270 bytes
/// measured for an A record, several times its encoded size).
const RECORD_MEMORY: usize = 256;

/// Memory one unit of `[cache] capacity` stands for.
const SLOT_BYTES: usize = 1024;

/// How much of the capacity an entry takes: one per KiB it holds, at
/// least one. Nearly every answer takes one, so `capacity` still counts
/// answers; one that holds 60 KiB (a TCP answer can) takes 60, so the
/// cache never holds much more than `capacity` KiB. Counted by entries
/// alone, 10,000 such answers would have held 600 MB.
#[derive(Clone, Copy)]
struct Weight;

impl quick_cache::Weighter<Key, Arc<Entry>> for Weight {
    fn weight(&self, _key: &Key, entry: &Arc<Entry>) -> u64 {
        u64::from(entry.weight)
    }
}

/// The weight one shard of the cache holds at least: quick_cache never
/// stores an entry heavier than 97% of a shard's, and a 64 KiB answer of
/// A records weighs about 110 (its bytes and its TTL table).
const MIN_SHARD_WEIGHT: usize = 128;

/// The cache's map for `capacity` units. quick_cache's own choice of
/// shards (four per CPU) would split a small capacity, or one on a machine
/// with many CPUs, into shards too light for a big answer, which would
/// then never be cached: fewer shards, each of [`MIN_SHARD_WEIGHT`] at
/// least.
fn entries(capacity: usize) -> quick_cache::sync::Cache<Key, Arc<Entry>, Weight> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let shards = (capacity / MIN_SHARD_WEIGHT).clamp(1, 4 * cpus);
    // quick_cache rounds the count up to a power of two; round it down.
    let shards = 1 << shards.ilog2();
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity(capacity)
        .weight_capacity(capacity as u64)
        .shards(shards)
        .build()
        .expect("capacity and shards are set");
    quick_cache::sync::Cache::with_options(options, Weight, Default::default(), Default::default())
}

impl Stored {
    /// The memory its records take, beyond [`ENTRY_OVERHEAD`].
    fn memory(&self) -> usize {
        match self {
            Self::Wire(wire) => {
                wire.bytes.len()
                    + wire.ttls.len() * size_of::<(u16, u32)>()
                    + wire.onward_names.len() * size_of::<LowerName>()
            }
            Self::Records(sections) => sections.iter().map(Vec::len).sum::<usize>() * RECORD_MEMORY,
        }
    }

    /// Its share of the cache's capacity, for a key of `name_len` bytes.
    fn weight(&self, name_len: usize) -> u32 {
        let bytes = ENTRY_OVERHEAD + name_len + self.memory();
        u32::try_from(bytes.div_ceil(SLOT_BYTES)).unwrap_or(u32::MAX)
    }
}

impl Entry {
    fn age(&self) -> u32 {
        u32::try_from(self.at.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// The encoded answer, when that is how it is kept.
    fn wire(&self) -> Option<&WireAnswer> {
        match &self.stored {
            Stored::Wire(wire) => Some(wire),
            Stored::Records(_) => None,
        }
    }

    /// The entry, stored for a question for `name`, as an answer, with
    /// TTLs counted down by `age`, or all set to `ttl` when given (stale
    /// answers).
    fn answer(&self, name: &LowerName, outcome: Outcome, age: u32, ttl: Option<u32>) -> Answer {
        let [mut answers, mut authorities, mut additionals] = match &self.stored {
            // Decoded when it was stored (the upstream's bytes by hickory,
            // telesink's own encoding by the check); should that ever fail
            // here, the client gets SERVFAIL rather than a wrong answer.
            Stored::Wire(wire) => match wire.records(name) {
                Some(records) => records,
                None => return Answer::empty(Outcome::Error, ResponseCode::ServFail),
            },
            Stored::Records(records) => records.clone(),
        };
        for r in answers
            .iter_mut()
            .chain(authorities.iter_mut())
            .chain(additionals.iter_mut())
        {
            r.ttl = ttl.unwrap_or_else(|| r.ttl.saturating_sub(age));
        }
        Answer {
            outcome,
            rcode: self.rcode,
            authentic_data: self.authentic_data,
            authoritative: false,
            answers,
            authorities,
            additionals,
            // A fresh hit goes out as the bytes the fast path would send
            // for it, whichever path sends it.
            wire: match (&self.stored, ttl) {
                (Stored::Wire(wire), None) => Some(Encoded {
                    sections: wire.clone(),
                    age,
                }),
                _ => None,
            },
            upstream_reply: None,
        }
    }

    fn mark_failed(&self) {
        self.failed_at
            .store(self.age().saturating_add(1), Ordering::Relaxed);
    }

    fn recently_failed(&self, age: u32) -> bool {
        let at = self.failed_at.load(Ordering::Relaxed);
        at != 0 && age < (at - 1).saturating_add(STALE_REFRESH)
    }
}

/// Removes an in-flight entry when its leader finishes or is dropped, so
/// waiters of an abandoned request share a new one (see
/// [`Fetch::coalesced`]).
struct InFlight<'a> {
    map: &'a Mutex<HashMap<Key, broadcast::Sender<Answer>>>,
    /// `None` once finished. (Not `mem::forget` of the whole guard: that
    /// would leak the key's name, which is on the heap past 32 bytes.)
    key: Option<Key>,
}

impl InFlight<'_> {
    fn finish(mut self, answer: &Answer) {
        let Some(key) = self.key.take() else { return };
        let tx = lock(self.map).remove(&key);
        // Most misses have no identical query waiting on them: the answer
        // is cloned only for those that do.
        if let Some(tx) = tx.filter(|tx| tx.receiver_count() > 0) {
            let _ = tx.send(answer.clone());
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(self.map).remove(&key);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves fresh cached answers, stores what `next` answers, shares one
/// upstream request among identical queries in flight, bounds how many
/// upstream requests run at once, and serves expired answers when the
/// upstreams fail (RFC 8767).
pub struct Cache<N> {
    /// Seconds past expiry an answer may still be served stale; 0 = never.
    serve_stale: u32,
    /// How long a query with a stale answer waits for the upstreams.
    stale_timeout: Duration,
    /// Refreshes popular answers before they expire; `None` when off.
    prefetch: Option<Prefetch>,
    metrics: Arc<Metrics>,
    /// The answers, and what asks for more: shared with prefetch tasks and
    /// with refreshes of stale answers, which outlive the query that
    /// started them.
    fetch: Arc<Fetch<N>>,
}

/// Asks the next link for what the cache does not hold, and stores the
/// answers.
struct Fetch<N> {
    /// The answers and how they are stored.
    store: Arc<Store>,
    /// Identical queries waiting on one upstream request. hashbrown's
    /// default hasher (foldhash, seeded per map) hashes a name several
    /// times faster than std's SipHash, and a miss hashes it three times
    /// here (look up, insert, remove).
    in_flight: Mutex<HashMap<Key, broadcast::Sender<Answer>>>,
    /// Upstream requests allowed at once.
    upstream_slots: Semaphore,
    /// How long a request waits for one of them.
    slot_wait: Duration,
    /// Time all upstream attempts of one query may take together.
    upstream_budget: Duration,
    /// Keeps "upstream saturated" warnings to one per interval in a flood.
    saturated_log: Throttle,
    next: Arc<N>,
}

/// The cached answers and the TTL rules for storing one.
struct Store {
    entries: Option<quick_cache::sync::Cache<Key, Arc<Entry>, Weight>>,
    min_ttl: u32,
    max_ttl: u32,
    negative_max_ttl: u32,
    metrics: Arc<Metrics>,
}

/// When and how many answers are refreshed ahead of expiry.
struct Prefetch {
    /// Hits an entry needs before it is worth refreshing.
    min_hits: u32,
    /// Refreshes running at once; more are skipped, not queued.
    slots: Arc<Semaphore>,
}

impl Prefetch {
    /// Whether `entry`, hit for the `hits`th time at `age`, is worth
    /// refreshing now: popular, and in the last tenth of its TTL (at least
    /// the last second).
    fn due(&self, entry: &Entry, hits: u32, age: u32) -> bool {
        let left = entry.ttl - age;
        hits >= self.min_hits && left <= (entry.ttl / 10).max(1)
    }
}

impl<N> std::fmt::Debug for Cache<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("len", &self.len()).finish()
    }
}

/// A configured TTL in seconds, at most 2^31 - 1: a larger one has the top
/// bit set, which clients take for 0 (RFC 2181 §8).
fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).map_or(MAX_TTL, |s| s.min(MAX_TTL))
}

/// The largest TTL there is (RFC 2181 §8).
const MAX_TTL: u32 = i32::MAX as u32;

/// A TTL as RFC 2181 §8 reads it: one with the top bit set means 0.
fn sane(ttl: u32) -> u32 {
    if ttl > MAX_TTL { 0 } else { ttl }
}

impl<N> Cache<N> {
    /// Number of cached answers.
    pub fn len(&self) -> usize {
        self.fetch.store.entries.as_ref().map_or(0, |c| c.len())
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A function that empties this cache and returns how many answers it
    /// dropped, for the admin API.
    pub fn flusher(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let store = self.fetch.store.clone();
        move || {
            let Some(entries) = &store.entries else {
                return 0;
            };
            let n = entries.len();
            entries.clear();
            store.metrics.cache_entries.set(0);
            n
        }
    }
}

impl<N: Resolve> Cache<N> {
    /// A cache as `[cache]` describes, in front of `next`, allowing
    /// `max_in_flight` upstream requests at once.
    pub fn new(
        config: &CacheConfig,
        upstream: &UpstreamConfig,
        metrics: Arc<Metrics>,
        next: N,
    ) -> Self {
        let max_in_flight = upstream.max_in_flight;
        let store = Arc::new(Store {
            entries: (config.capacity > 0).then(|| entries(config.capacity)),
            min_ttl: secs(config.min_ttl),
            max_ttl: secs(config.max_ttl),
            negative_max_ttl: secs(config.negative_max_ttl),
            metrics: metrics.clone(),
        });
        Self {
            prefetch: config.prefetch.then(|| Prefetch {
                min_hits: config.prefetch_min_hits,
                slots: Arc::new(Semaphore::new(PREFETCH_SLOTS)),
            }),
            serve_stale: secs(config.serve_stale),
            stale_timeout: config.stale_timeout,
            metrics,
            fetch: Arc::new(Fetch {
                store,
                in_flight: Mutex::new(HashMap::new()),
                upstream_slots: Semaphore::new(max_in_flight.max(1)),
                slot_wait: config.stale_timeout.max(Duration::from_secs(1)),
                upstream_budget: upstream.total_timeout,
                saturated_log: Throttle::new(Duration::from_secs(10)),
                next: Arc::new(next),
            }),
        }
    }
}

impl Store {
    /// How long `answer` may be cached, in seconds, with its records'
    /// TTLs clamped in place; `None` if it must not be cached.
    fn cacheable_ttl(&self, answer: &mut Answer, qtype: RecordType) -> Option<u32> {
        if !matches!(answer.rcode, ResponseCode::NoError | ResponseCode::NXDomain) {
            return None;
        }
        // A denial: NXDOMAIN, or NODATA (no record of the asked type, also
        // at the end of a CNAME chain).
        let denial = answer.rcode == ResponseCode::NXDomain
            || !answer.answers.iter().any(|r| r.record_type() == qtype);
        let (mut ttl, soa) = if denial {
            // RFC 2308 §5: it lasts the smaller of its SOA record's TTL
            // and the SOA's MINIMUM field. No SOA, no caching.
            let at = answer
                .authorities
                .iter()
                .position(|r| matches!(r.data, RData::SOA(_)))?;
            let record = &mut answer.authorities[at];
            let RData::SOA(soa) = &record.data else {
                unreachable!("found by its type")
            };
            // Capped by max_ttl too, but not raised by min_ttl: a name
            // that appears must not stay missing longer than its zone says.
            record.ttl = sane(record.ttl)
                .min(sane(soa.minimum))
                .min(self.negative_max_ttl)
                .min(self.max_ttl);
            (record.ttl, Some(answer.answers.len() + at))
        } else {
            (u32::MAX, None)
        };
        // The entry expires with the first of its records. All but a
        // denial's SOA are clamped, a denial's other records too (a CNAME
        // chain that ends in it): none goes out with its TTL counted down
        // past zero while the entry is still fresh.
        for (i, r) in answer
            .answers
            .iter_mut()
            .chain(answer.authorities.iter_mut())
            .chain(answer.additionals.iter_mut())
            .enumerate()
        {
            if Some(i) != soa {
                r.ttl = sane(r.ttl).clamp(self.min_ttl, self.max_ttl);
            }
            ttl = ttl.min(r.ttl);
        }
        (ttl > 0).then_some(ttl)
    }

    /// Stores `answer` under `key` if it may be cached.
    fn store(&self, key: Key, answer: &mut Answer) {
        let Some(entries) = &self.entries else {
            // Passed on uncached: still no TTL a client would misread.
            for r in answer
                .answers
                .iter_mut()
                .chain(answer.authorities.iter_mut())
                .chain(answer.additionals.iter_mut())
            {
                r.ttl = sane(r.ttl);
            }
            return;
        };
        if let Some(ttl) = self.cacheable_ttl(answer, key.1) {
            // Encoded here, on the miss path, so hits only copy bytes: as
            // the upstream sent them where they can stand as they are,
            // else by hickory, and kept encoded only if that decodes back
            // to exactly these records.
            let upstream = answer.upstream_reply.take();
            let wire = upstream
                .and_then(|reply| WireAnswer::from_upstream(&key.0, answer, &reply))
                .or_else(|| WireAnswer::encode(&key.0, answer));
            let stored = match wire {
                Some(wire) => {
                    let wire = Arc::new(wire);
                    answer.wire = Some(Encoded {
                        sections: wire.clone(),
                        age: 0,
                    });
                    Stored::Wire(wire)
                }
                None => Stored::Records([
                    answer.answers.clone(),
                    answer.authorities.clone(),
                    answer.additionals.clone(),
                ]),
            };
            let weight = stored.weight(key.0.len());
            entries.insert(
                key,
                Arc::new(Entry {
                    weight,
                    stored,
                    rcode: answer.rcode,
                    authentic_data: answer.authentic_data,
                    at: Instant::now(),
                    ttl,
                    failed_at: AtomicU32::new(0),
                    hits: AtomicU32::new(0),
                    prefetching: AtomicBool::new(false),
                }),
            );
            // Kept current on the write path (inserts and expiries), so
            // hits pay nothing for it.
            self.metrics.cache_entries.set(entries.len() as i64);
        }
    }
}

impl<N: Resolve> Fetch<N> {
    /// Asks `next`, sharing the request with identical queries in flight:
    /// the one that asks stores the answer before the others get it.
    async fn coalesced(&self, key: Key, query: &Query<'_>) -> Answer {
        let mut abandoned = false;
        loop {
            let waiting = {
                let mut map = lock(&self.in_flight);
                match map.get(&key) {
                    Some(tx) => Some(tx.subscribe()),
                    None => {
                        map.insert(key.clone(), broadcast::channel(1).0);
                        None
                    }
                }
            };
            let Some(mut rx) = waiting else { break };
            if let Ok(answer) = rx.recv().await {
                return answer;
            }
            // The leading request was abandoned (its client's query was
            // dropped). Once, the waiters share a new one, led by the
            // first of them back here; should that go too, each asks on
            // its own.
            if abandoned {
                return self.asked(key, query).await;
            }
            abandoned = true;
        }
        let leader = InFlight {
            map: &self.in_flight,
            key: Some(key.clone()),
        };
        let answer = self.asked(key, query).await;
        leader.finish(&answer);
        answer
    }

    /// Asks `next` and stores an upstream's answer under `key`.
    async fn asked(&self, key: Key, query: &Query<'_>) -> Answer {
        let mut answer = self.limited(query).await;
        if answer.outcome == Outcome::Forwarded {
            self.store.store(key, &mut answer);
        }
        answer
    }

    /// Asks `next` once an upstream slot is free; SERVFAIL if none frees
    /// up in time (the upstreams are saturated and more waiting would only
    /// pile up work the clients have given up on).
    async fn limited(&self, query: &Query<'_>) -> Answer {
        let wait = self.slot_wait;
        let Ok(Ok(_permit)) = tokio::time::timeout(wait, self.upstream_slots.acquire()).await
        else {
            if let Some(suppressed) = self.saturated_log.ready() {
                tracing::warn!(
                    suppressed,
                    "too many upstream requests in flight ([upstream] max_in_flight); answering SERVFAIL"
                );
            }
            return Answer::empty(Outcome::Error, ResponseCode::ServFail);
        };
        // However many upstreams are tried, the client hears back within
        // the budget, well inside its own timeout.
        match tokio::time::timeout(self.upstream_budget, self.next.resolve(query)).await {
            Ok(answer) => answer,
            Err(_) => Answer::empty(Outcome::Error, ResponseCode::ServFail),
        }
    }
}

impl<N: Resolve> Cache<N> {
    /// Refreshes `entry` in the background if it is popular and about to
    /// expire, so the next query for it is still a hit.
    fn maybe_prefetch(&self, query: &Query<'_>, entry: &Arc<Entry>, age: u32) {
        let Some(prefetch) = &self.prefetch else {
            return;
        };
        let hits = entry.hits.fetch_add(1, Ordering::Relaxed) + 1;
        if !prefetch.due(entry, hits, age) {
            return;
        }
        if entry.prefetching.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(permit) = prefetch.slots.clone().try_acquire_owned() else {
            entry.prefetching.store(false, Ordering::Relaxed);
            return;
        };
        let fetch = self.fetch.clone();
        let key = key_of(query);
        let entry = entry.clone();
        tokio::spawn(async move {
            let query = query_for(&key, std::net::Ipv4Addr::LOCALHOST.into());
            let result = match fetch.prefetched(&query).await {
                Some(mut answer) if usable(&answer) => {
                    fetch.store.store(key, &mut answer);
                    "success"
                }
                Some(_) => "failure",
                // No upstream slot free: not tried, and not counted.
                None => "",
            };
            if result != "success" {
                entry.prefetching.store(false, Ordering::Relaxed);
            }
            if !result.is_empty() {
                fetch
                    .store
                    .metrics
                    .cache_prefetches
                    .with_label_values(&[result])
                    .inc();
            }
            drop(permit);
        });
    }
}

impl<N: Resolve> Fetch<N> {
    /// Asks `next` for a prefetch within the limits a client's query has
    /// (an upstream slot, the time budget), but only if a slot is free
    /// now: a prefetch is worth it only while the upstreams have room, and
    /// must not take a slot a client is waiting for. `None` if none is.
    async fn prefetched(&self, query: &Query<'_>) -> Option<Answer> {
        let _slot = self.upstream_slots.try_acquire().ok()?;
        let asked = tokio::time::timeout(self.upstream_budget, self.next.resolve(query)).await;
        Some(asked.unwrap_or_else(|_| Answer::empty(Outcome::Error, ResponseCode::ServFail)))
    }
}

/// The query for `key`, for a task that asks on its own.
fn query_for(key: &Key, client: std::net::IpAddr) -> Query<'_> {
    Query {
        name: &key.0,
        qtype: key.1,
        qclass: key.2,
        client,
        checking_disabled: key.3,
    }
}

/// Whether an upstream answer is good enough to replace a stale one.
fn usable(answer: &Answer) -> bool {
    answer.outcome == Outcome::Forwarded
        && !matches!(answer.rcode, ResponseCode::ServFail | ResponseCode::Refused)
}

impl<N: Resolve> Resolve for Cache<N> {
    fn peek(&self, query: &Query<'_>) -> Peek {
        let Some(entries) = &self.fetch.store.entries else {
            return Peek::Slow;
        };
        let Some(entry) = entries.get(&KeyRef::of(query)) else {
            return Peek::Slow;
        };
        let age = entry.age();
        if entry.wire().is_none() || age >= entry.ttl {
            return Peek::Slow;
        }
        // A hit that should start a prefetch takes the full path, which
        // starts it. Any other hit is counted by whoever sends it
        // ([`CacheHit::commit`]), so a hit the links above turn down is
        // not counted twice.
        let hits = entry.hits.load(Ordering::Relaxed).saturating_add(1);
        if self
            .prefetch
            .as_ref()
            .is_some_and(|p| p.due(&entry, hits, age))
        {
            return Peek::Slow;
        }
        Peek::Cached(CacheHit { entry, age })
    }

    async fn resolve(&self, query: &Query<'_>) -> Answer {
        let Some(entries) = &self.fetch.store.entries else {
            return self.fetch.coalesced(key_of(query), query).await;
        };
        let mut stale = None;
        if let Some(entry) = entries.get(&KeyRef::of(query)) {
            let age = entry.age();
            if age < entry.ttl {
                self.metrics.cache_hits.inc();
                self.maybe_prefetch(query, &entry, age);
                return entry.answer(query.name, Outcome::Cached, age, None);
            }
            if age < entry.ttl.saturating_add(self.serve_stale) {
                if entry.recently_failed(age) {
                    // No fresh answer: a miss, as the metric's doc says,
                    // or an outage would leave the hit ratio looking fine.
                    self.metrics.cache_misses.inc();
                    return entry.answer(query.name, Outcome::Stale, age, Some(STALE_TTL));
                }
                stale = Some(entry);
            } else {
                // This entry only: another thread may have stored a fresh
                // one since it was read.
                entries.remove_if(&KeyRef::of(query), |e| Arc::ptr_eq(e, &entry));
                self.metrics.cache_entries.set(entries.len() as i64);
            }
        }
        self.metrics.cache_misses.inc();
        let key = key_of(query);
        match stale {
            None => self.fetch.coalesced(key, query).await,
            Some(entry) => {
                // RFC 8767: give the upstreams `stale_timeout`, then answer
                // with the expired data rather than keep the client waiting.
                // The request goes on in a task of its own (§5: the
                // resolution continues in the background), so an upstream
                // slower than that still refreshes the entry.
                let fetch = self.fetch.clone();
                let client = query.client;
                let refresh = tokio::spawn(async move {
                    let query = query_for(&key, client);
                    fetch.coalesced(key.clone(), &query).await
                });
                let fresh = tokio::time::timeout(self.stale_timeout, refresh).await;
                match fresh {
                    Ok(Ok(answer)) if usable(&answer) => answer,
                    _ => {
                        entry.mark_failed();
                        entry.answer(query.name, Outcome::Stale, entry.age(), Some(STALE_TTL))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;

    use hickory_proto::op::{Edns, Message, OpCode, Query as DnsQuery};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, SOA, SRV, TXT};
    use hickory_proto::rr::{Name, RData, Record};
    use proptest::prelude::*;

    use super::*;
    use crate::resolver::answer_from_reply;

    fn name(s: &str) -> Name {
        Name::from_str(s).unwrap()
    }

    const QNAME: &str = "www.example.test.";

    /// A reply's question type, response code and sections.
    type Shape = (
        RecordType,
        ResponseCode,
        Vec<Record>,
        Vec<Record>,
        Vec<Record>,
    );

    /// Upstream replies to `QNAME` as hickory writes them (compressed,
    /// with OPT), of the shapes upstreams send.
    fn replies() -> Vec<Vec<u8>> {
        let rec = |owner: &str, data: RData| Record::from_rdata(name(owner), 300, data);
        let a = |owner: &str| rec(owner, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))));
        let soa = rec(
            "example.test.",
            RData::SOA(SOA::new(
                name("ns.example.test."),
                name("hostmaster.example.test."),
                1,
                3600,
                600,
                86400,
                60,
            )),
        );
        let shapes: Vec<Shape> = vec![
            (
                RecordType::A,
                ResponseCode::NoError,
                vec![a(QNAME)],
                vec![],
                vec![],
            ),
            (
                RecordType::A,
                ResponseCode::NoError,
                vec![
                    rec(QNAME, RData::CNAME(CNAME(name("edge.cdn.example.test.")))),
                    rec(
                        "edge.cdn.example.test.",
                        RData::CNAME(CNAME(name("a.cdn.test."))),
                    ),
                    a("a.cdn.test."),
                ],
                vec![],
                vec![],
            ),
            (
                RecordType::AAAA,
                ResponseCode::NoError,
                vec![rec(QNAME, RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)))],
                vec![rec(
                    "example.test.",
                    RData::NS(NS(name("ns.example.test."))),
                )],
                vec![a("ns.example.test.")],
            ),
            (
                RecordType::MX,
                ResponseCode::NoError,
                vec![rec(
                    QNAME,
                    RData::MX(MX::new(10, name("mail.example.test."))),
                )],
                vec![],
                vec![a("mail.example.test.")],
            ),
            (
                RecordType::TXT,
                ResponseCode::NoError,
                vec![rec(
                    QNAME,
                    RData::TXT(TXT::new(vec!["v=spf1 -all".into(), String::new()])),
                )],
                vec![],
                vec![],
            ),
            (
                RecordType::SRV,
                ResponseCode::NoError,
                vec![rec(
                    QNAME,
                    RData::SRV(SRV::new(1, 2, 443, name("www.example.test."))),
                )],
                vec![],
                vec![],
            ),
            (
                RecordType::A,
                ResponseCode::NXDomain,
                vec![],
                vec![soa.clone()],
                vec![],
            ),
            (
                RecordType::AAAA,
                ResponseCode::NoError,
                vec![],
                vec![soa],
                vec![],
            ),
        ];
        shapes
            .into_iter()
            .map(|(qtype, rcode, answers, authorities, additionals)| {
                let mut m = Message::response(0x1234, OpCode::Query);
                m.metadata.response_code = rcode;
                m.add_query(DnsQuery::query(name(QNAME), qtype));
                m.answers = answers;
                m.authorities = authorities;
                m.additionals = additionals;
                let mut edns = Edns::new();
                edns.set_max_payload(1232);
                m.set_edns(edns);
                m.to_vec().unwrap()
            })
            .collect()
    }

    /// What telesink keeps of `bytes` as the upstream's reply to a
    /// question for `QNAME`, taken as Forward and the cache take it, TTLs
    /// clamped to `min..=max`; `None` where it would be encoded anew.
    /// Also the sections as hickory read them, TTLs clamped.
    fn kept(bytes: &[u8], min: u32, max: u32) -> Option<([Vec<Record>; 3], WireAnswer)> {
        let reply = Message::from_vec(bytes).ok()?;
        let key = LowerName::new(&name(QNAME));
        let asked = reply.queries.first()?;
        if !crate::resolver::is_query_response(&reply)
            || reply.queries.len() != 1
            || *asked.name() != *key
        {
            return None;
        }
        let mut answer = answer_from_reply(reply, None);
        for r in answer
            .answers
            .iter_mut()
            .chain(answer.authorities.iter_mut())
            .chain(answer.additionals.iter_mut())
        {
            r.ttl = r.ttl.clamp(min, max);
        }
        let wire = WireAnswer::from_upstream(&key, &answer, bytes)?;
        Some((
            [answer.answers, answer.authorities, answer.additionals],
            wire,
        ))
    }

    /// The records of `wire` as a client reads them `age` seconds after
    /// they were stored: after `header` and the question in the client's
    /// own case.
    fn read_back(
        wire: &WireAnswer,
        header: [u8; 12],
        upper: u64,
        age: u32,
    ) -> Option<[Vec<Record>; 3]> {
        let mut message = header.to_vec();
        let mut question = Vec::new();
        write_name(&name(QNAME), &mut question);
        for (i, byte) in question.iter_mut().enumerate() {
            if upper >> (i % 64) & 1 == 1 {
                byte.make_ascii_uppercase();
            }
        }
        message.extend_from_slice(&question);
        message.extend_from_slice(&[0, 1, 0, 1]);
        assert_eq!(message.len(), DNS_HEADER_LEN + wire.question_len);
        wire.write(&mut message, age);
        decode_sections(&message, DNS_HEADER_LEN + wire.question_len, wire.counts)
    }

    /// The records with their TTLs, which `Record`'s equality leaves out.
    fn with_ttls(sections: Option<[Vec<Record>; 3]>) -> Option<Vec<(Record, u32)>> {
        Some(
            sections?
                .into_iter()
                .flatten()
                .map(|r| {
                    let ttl = r.ttl;
                    (r, ttl)
                })
                .collect(),
        )
    }

    /// `sections` with every TTL counted down by `age`.
    fn aged(mut sections: [Vec<Record>; 3], age: u32) -> [Vec<Record>; 3] {
        for r in sections.iter_mut().flatten() {
            r.ttl = r.ttl.saturating_sub(age);
        }
        sections
    }

    #[test]
    fn upstream_replies_are_kept_as_they_came() {
        let key = LowerName::new(&name(QNAME));
        for bytes in replies() {
            let (sections, wire) = kept(&bytes, 0, u32::MAX).expect("kept as it came");
            for age in [0, 299, 1000] {
                let read = read_back(&wire, [0xff; 12], u64::MAX, age);
                assert_eq!(
                    with_ttls(read),
                    with_ttls(Some(aged(sections.clone(), age)))
                );
            }
            assert_eq!(with_ttls(wire.records(&key)), with_ttls(Some(sections)));
            // The upstream's compression: shorter than hickory's own.
            let answer = answer_from_reply(Message::from_vec(&bytes).unwrap(), None);
            let encoded = WireAnswer::encode(&key, &answer).expect("encodes");
            assert!(
                wire.len() <= encoded.len(),
                "{} > {}",
                wire.len(),
                encoded.len()
            );
        }
    }

    #[test]
    fn kept_replies_hold_the_clamped_ttls() {
        // The full path decodes the stored bytes: it must find the TTLs
        // the fast path sends.
        let key = LowerName::new(&name(QNAME));
        for bytes in replies() {
            let (sections, wire) = kept(&bytes, 0, 60).expect("kept as it came");
            assert!(sections.iter().flatten().all(|r| r.ttl == 60));
            let sections = with_ttls(Some(sections));
            assert_eq!(with_ttls(wire.records(&key)), sections);
            assert_eq!(with_ttls(read_back(&wire, [0; 12], 0, 0)), sections);
        }
    }

    #[test]
    fn holds_tells_the_records_and_ttls_kept_apart_from_others() {
        let key = LowerName::new(&name(QNAME));
        let bytes = &replies()[1];
        let reply = Message::from_vec(bytes).unwrap();
        let mut answer = answer_from_reply(reply, None);
        let wire = WireAnswer::from_upstream(&key, &answer, bytes).expect("kept");
        assert!(wire.holds(&key, 0, &answer));
        for r in &mut answer.answers {
            r.ttl -= 10;
        }
        assert!(wire.holds(&key, 10, &answer));
        assert!(!wire.holds(&key, 9, &answer), "a TTL off by one");
        answer.answers[2].data = RData::A(A(Ipv4Addr::new(192, 0, 2, 99)));
        assert!(!wire.holds(&key, 10, &answer), "another address");
        answer.answers.pop();
        assert!(!wire.holds(&key, 10, &answer), "a record fewer");
    }

    /// A store without entries, for its TTL rules: TTLs clamped to
    /// `0..=max_ttl`, denials to `negative_max_ttl`.
    fn ttl_store(max_ttl: u32, negative_max_ttl: u32) -> Store {
        Store {
            entries: None,
            min_ttl: 0,
            max_ttl,
            negative_max_ttl,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// A TTL with its top bit set is 0 (RFC 2181 §8): not cached, and
    /// not sent on as a day (or as 68 years); negative answers obey
    /// max_ttl as well as negative_max_ttl; configured TTLs stay below
    /// 2^31.
    #[test]
    fn ttl_limits() {
        let store = ttl_store(60, 3600);
        let mut answer = Answer::empty(Outcome::Forwarded, ResponseCode::NoError);
        answer.answers = vec![Record::from_rdata(
            name(QNAME),
            0xffff_ffff,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
        )];
        assert_eq!(store.cacheable_ttl(&mut answer, RecordType::A), None);
        assert_eq!(answer.answers[0].ttl, 0);
        answer.answers[0].ttl = 0x7fff_ffff;
        assert_eq!(store.cacheable_ttl(&mut answer, RecordType::A), Some(60));

        let soa = |ttl, minimum| {
            Record::from_rdata(
                name("example.test."),
                ttl,
                RData::SOA(SOA::new(
                    name("ns.test."),
                    name("h.test."),
                    1,
                    2,
                    3,
                    4,
                    minimum,
                )),
            )
        };
        let mut denial = Answer::empty(Outcome::Forwarded, ResponseCode::NXDomain);
        denial.authorities = vec![soa(3600, 3600)];
        assert_eq!(
            store.cacheable_ttl(&mut denial, RecordType::A),
            Some(60),
            "max_ttl"
        );
        denial.authorities = vec![soa(3600, 0x8000_0000)];
        assert_eq!(
            store.cacheable_ttl(&mut denial, RecordType::A),
            None,
            "MINIMUM 0"
        );

        // With the cache off, an answer passed on is cleaned as well.
        let mut passed = Answer::empty(Outcome::Forwarded, ResponseCode::NoError);
        passed.answers = vec![Record::from_rdata(
            name(QNAME),
            0x8000_0000,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
        )];
        store.store(key_of(&query()), &mut passed);
        assert_eq!(passed.answers[0].ttl, 0);

        assert_eq!(secs(Duration::from_secs(100 * 365 * 86_400)), 0x7fff_ffff);
        assert_eq!(secs(Duration::from_secs(86_400)), 86_400);
    }

    #[test]
    fn a_denial_expires_with_the_first_record_in_it() {
        let store = ttl_store(3600, 3600);
        let soa = Record::from_rdata(
            name("example.test."),
            300,
            RData::SOA(SOA::new(name("ns.test."), name("h.test."), 1, 2, 3, 4, 120)),
        );
        let cname = |ttl: u32| {
            Record::from_rdata(
                name(QNAME),
                ttl,
                RData::CNAME(CNAME(name("gone.example.test."))),
            )
        };
        let mut answer = Answer::empty(Outcome::Forwarded, ResponseCode::NXDomain);
        answer.authorities = vec![soa];
        assert_eq!(
            store.cacheable_ttl(&mut answer, RecordType::A),
            Some(120),
            "SOA MINIMUM"
        );
        // A CNAME chain into the denial: the entry goes with the CNAME.
        answer.answers = vec![cname(10)];
        assert_eq!(store.cacheable_ttl(&mut answer, RecordType::A), Some(10));
        assert_eq!(answer.authorities[0].ttl, 120);
        // Clamped as positive answers are.
        answer.answers = vec![cname(7200)];
        assert_eq!(store.cacheable_ttl(&mut answer, RecordType::A), Some(120));
        assert_eq!(answer.answers[0].ttl, 3600);
    }

    #[test]
    fn nodata_behind_a_cname_lasts_as_long_as_its_denial() {
        let store = ttl_store(86_400, 30);
        let soa = Record::from_rdata(
            name("example.test."),
            3600,
            RData::SOA(SOA::new(
                name("ns.test."),
                name("h.test."),
                1,
                2,
                3,
                4,
                3600,
            )),
        );
        let cname = Record::from_rdata(
            name(QNAME),
            3600,
            RData::CNAME(CNAME(name("v6less.example.test."))),
        );
        for rcode in [ResponseCode::NXDomain, ResponseCode::NoError] {
            let mut answer = Answer::empty(Outcome::Forwarded, rcode);
            answer.answers = vec![cname.clone()];
            answer.authorities = vec![soa.clone()];
            assert_eq!(
                store.cacheable_ttl(&mut answer, RecordType::A),
                Some(30),
                "{rcode}"
            );
            assert_eq!(answer.authorities[0].ttl, 30, "{rcode}: the SOA as sent");
        }
        // An answer of the asked type is no denial, SOA or not.
        let mut answer = Answer::empty(Outcome::Forwarded, ResponseCode::NoError);
        answer.answers = vec![Record::from_rdata(
            name(QNAME),
            3600,
            RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
        )];
        answer.authorities = vec![soa.clone()];
        assert_eq!(store.cacheable_ttl(&mut answer, RecordType::A), Some(3600));
        assert_eq!(answer.authorities[0].ttl, 3600, "the SOA untouched");
        // A positive answer without an SOA is cached; a denial is not.
        let mut answer = Answer::empty(Outcome::Forwarded, ResponseCode::NoError);
        answer.answers = vec![cname.clone()];
        assert_eq!(
            store.cacheable_ttl(&mut answer, RecordType::CNAME),
            Some(3600)
        );
        let mut answer = Answer::empty(Outcome::Forwarded, ResponseCode::NoError);
        answer.answers = vec![cname.clone()];
        assert_eq!(store.cacheable_ttl(&mut answer, RecordType::A), None);
        let mut answer = Answer::empty(Outcome::Forwarded, ResponseCode::NXDomain);
        answer.answers = vec![cname];
        assert_eq!(store.cacheable_ttl(&mut answer, RecordType::A), None);
    }

    /// An A query for `QNAME`.
    fn query() -> Query<'static> {
        static QNAME_LOWER: std::sync::LazyLock<LowerName> =
            std::sync::LazyLock::new(|| LowerName::from(name(QNAME)));
        Query {
            name: &QNAME_LOWER,
            qtype: RecordType::A,
            qclass: DNSClass::IN,
            client: Ipv4Addr::LOCALHOST.into(),
            checking_disabled: false,
        }
    }

    /// An upstream that answers every query with this many A records.
    struct Addresses(u32);

    impl Resolve for Addresses {
        async fn resolve(&self, query: &Query<'_>) -> Answer {
            let mut answer = Answer::empty(Outcome::Forwarded, ResponseCode::NoError);
            answer.answers = (0..self.0)
                .map(|i| {
                    Record::from_rdata(
                        Name::from(query.name.clone()),
                        300,
                        RData::A(A(Ipv4Addr::from(0xC000_0200 + i))),
                    )
                })
                .collect();
            answer
        }
    }

    /// An upstream that answers after 200 ms, counting what it is asked.
    struct Slow(Arc<std::sync::atomic::AtomicUsize>);

    impl Resolve for Slow {
        async fn resolve(&self, query: &Query<'_>) -> Answer {
            self.0.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            Addresses(1).resolve(query).await
        }
    }

    /// When the query leading a shared request is dropped, the queries
    /// waiting on it share one new request, not one each.
    #[tokio::test]
    async fn waiters_of_an_abandoned_request_share_a_new_one() {
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let cache = Arc::new(Cache::new(
            &CacheConfig::default(),
            &UpstreamConfig::default(),
            Arc::new(Metrics::new()),
            Slow(asked.clone()),
        ));
        let ask =
            |cache: Arc<Cache<Slow>>| tokio::spawn(async move { cache.resolve(&query()).await });
        let leader = ask(cache.clone());
        let deadline = Instant::now() + Duration::from_secs(5);
        while asked.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        let waiters: Vec<_> = (0..5).map(|_| ask(cache.clone())).collect();
        let key = key_of(&query());
        let waiting = || {
            lock(&cache.fetch.in_flight)
                .get(&key)
                .map_or(0, broadcast::Sender::receiver_count)
        };
        while waiting() < 5 {
            assert!(Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        leader.abort();
        for w in waiters {
            assert_eq!(w.await.unwrap().answers.len(), 1);
        }
        assert_eq!(
            asked.load(Ordering::SeqCst),
            2,
            "the leader's, then one shared"
        );
    }

    /// A prefetch takes an upstream slot only if one is free, and goes no
    /// further than a client's query may.
    #[tokio::test]
    async fn prefetches_keep_to_the_upstream_limits() {
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let upstream = UpstreamConfig {
            max_in_flight: 2,
            total_timeout: Duration::from_millis(100),
            ..UpstreamConfig::default()
        };
        let cache = Cache::new(
            &CacheConfig::default(),
            &upstream,
            Arc::new(Metrics::new()),
            Slow(asked.clone()),
        );
        let fetch = &cache.fetch;
        let held = fetch.upstream_slots.acquire_many(2).await.unwrap();
        assert!(fetch.prefetched(&query()).await.is_none(), "no slot free");
        assert_eq!(asked.load(Ordering::SeqCst), 0);
        drop(held);
        // The upstream takes 200 ms, the budget is 100 ms.
        let answer = fetch.prefetched(&query()).await.expect("a slot was free");
        assert_eq!(answer.rcode, ResponseCode::ServFail);
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        assert_eq!(fetch.upstream_slots.available_permits(), 2, "given back");
    }

    #[tokio::test]
    async fn big_answers_take_capacity_by_their_size() {
        // Most answers take one unit; 2,000 addresses (about 30 KiB) take
        // one per KiB.
        let small = Stored::Wire(Arc::new(
            WireAnswer::encode(
                &LowerName::from(name(QNAME)),
                &Addresses(4).resolve(&query()).await,
            )
            .unwrap(),
        ));
        assert_eq!(small.weight(QNAME.len()), 1, "overhead {ENTRY_OVERHEAD}");
        let config = CacheConfig {
            capacity: 2000,
            ..CacheConfig::default()
        };
        let cache = Cache::new(
            &config,
            &UpstreamConfig::default(),
            Arc::new(Metrics::new()),
            Addresses(2000),
        );
        let names: Vec<LowerName> = (0..100)
            .map(|i| LowerName::from(name(&format!("r{i}.example.test."))))
            .collect();
        for n in &names {
            cache.resolve(&Query { name: n, ..query() }).await;
        }
        let held: usize = names
            .iter()
            .filter_map(|n| match cache.peek(&Query { name: n, ..query() }) {
                Peek::Cached(hit) => Some(hit.wire().len()),
                _ => None,
            })
            .sum();
        assert!(held > 0, "some are kept");
        // Counted by entries, all 100 (3 MB) were kept.
        assert!(
            held <= 2000 * SLOT_BYTES,
            "{held} bytes held for a capacity of 2000"
        );
        // A small cache still keeps one: its shards are heavy enough,
        // whatever the number of CPUs.
        let config = CacheConfig {
            capacity: 256,
            ..CacheConfig::default()
        };
        let cache = Cache::new(
            &config,
            &UpstreamConfig::default(),
            Arc::new(Metrics::new()),
            Addresses(2000),
        );
        cache.resolve(&query()).await;
        assert!(matches!(cache.peek(&query()), Peek::Cached(_)));
        // hickory's records take several times the encoded size: weighed so.
        let records = Stored::Records([
            Addresses(2000).resolve(&query()).await.answers,
            vec![],
            vec![],
        ]);
        assert!(records.weight(QNAME.len()) >= 2000 * 256 / 1024);
    }

    /// Changes to an upstream reply: `(at, Some(byte), _)` writes a byte at
    /// `at`, `(at, None, to)` a compression pointer to an offset before it.
    fn changes() -> impl Strategy<Value = Vec<(prop::sample::Index, Option<u8>, u16)>> {
        prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                any::<Option<u8>>(),
                any::<u16>(),
            ),
            0..4,
        )
    }

    proptest! {
        /// Whatever an upstream's reply is made of, if it is kept as it
        /// came, a client reads in it exactly the records hickory read in
        /// the upstream's, TTLs clamped and counted down, whatever the
        /// header and the question's case.
        #[test]
        fn kept_replies_read_as_the_upstream_sent_them(
            which in any::<prop::sample::Index>(),
            changes in changes(),
            header in any::<[u8; 12]>(),
            upper in any::<u64>(),
            (min, max) in (0u32..400, 0u32..400),
            age in 0u32..400,
        ) {
            let seeds = replies();
            let mut bytes = which.get(&seeds).clone();
            for (at, value, pointer) in changes {
                let at = at.index(bytes.len() - 1);
                match value {
                    Some(value) => bytes[at] = value,
                    // A pointer to anywhere before it.
                    None => {
                        let to = usize::from(pointer) % at.max(1);
                        let to = u16::try_from(to).unwrap() | 0xC000;
                        bytes[at..at + 2].copy_from_slice(&to.to_be_bytes());
                    }
                }
            }
            if let Some((sections, wire)) = kept(&bytes, min.min(max), max) {
                let read = read_back(&wire, header, upper, age);
                prop_assert_eq!(with_ttls(read), with_ttls(Some(aged(sections, age))));
            }
        }
    }
}
