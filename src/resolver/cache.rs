//! The answer cache: upstream answers kept for their TTL.
//!
//! Keyed by (name, type, class). TTLs are clamped to `[min_ttl, max_ttl]`
//! when stored and counted down on every hit, so a client never holds an
//! answer longer than the upstream meant. Negative answers (NXDOMAIN and
//! NODATA) are kept for the SOA's negative TTL (RFC 2308 §5). The cache is
//! bounded by entry count and evicts with S3-FIFO (quick_cache), which keeps
//! popular names through a burst of one-off lookups.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, LowerName, RData, Record, RecordType};

use super::{Answer, Outcome, Query, Resolve};
use crate::config::CacheConfig;
use crate::metrics::Metrics;

type Key = (LowerName, RecordType, DNSClass);

/// One cached answer.
#[derive(Debug)]
struct Entry {
    rcode: ResponseCode,
    authentic_data: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    stored: Instant,
    /// Seconds the entry stays fresh: the smallest (clamped) TTL in it.
    ttl: u32,
}

/// Serves fresh cached answers and stores what `next` answers.
pub struct Cache<N> {
    entries: Option<quick_cache::sync::Cache<Key, Arc<Entry>>>,
    min_ttl: u32,
    max_ttl: u32,
    negative_max_ttl: u32,
    metrics: Arc<Metrics>,
    next: N,
}

impl<N> std::fmt::Debug for Cache<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("len", &self.len()).finish()
    }
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl<N> Cache<N> {
    /// Number of cached answers.
    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |c| c.len())
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<N: Resolve> Cache<N> {
    /// A cache as `[cache]` describes, in front of `next`.
    pub fn new(config: &CacheConfig, metrics: Arc<Metrics>, next: N) -> Self {
        Self {
            entries: (config.capacity > 0).then(|| quick_cache::sync::Cache::new(config.capacity)),
            min_ttl: secs(config.min_ttl),
            max_ttl: secs(config.max_ttl),
            negative_max_ttl: secs(config.negative_max_ttl),
            metrics,
            next,
        }
    }

    /// How long `answer` may be cached, in seconds, with its records'
    /// TTLs clamped in place; `None` if it must not be cached.
    fn cacheable_ttl(&self, answer: &mut Answer) -> Option<u32> {
        match answer.rcode {
            ResponseCode::NoError if !answer.answers.is_empty() => {
                let mut ttl = u32::MAX;
                for r in answer
                    .answers
                    .iter_mut()
                    .chain(answer.authorities.iter_mut())
                    .chain(answer.additionals.iter_mut())
                {
                    r.ttl = r.ttl.clamp(self.min_ttl, self.max_ttl);
                    ttl = ttl.min(r.ttl);
                }
                (ttl > 0).then_some(ttl)
            }
            ResponseCode::NoError | ResponseCode::NXDomain => {
                // RFC 2308 §5: the negative TTL is the smaller of the SOA
                // record's TTL and its MINIMUM field. No SOA, no caching.
                let record = answer
                    .authorities
                    .iter_mut()
                    .find(|r| matches!(r.data, RData::SOA(_)))?;
                let RData::SOA(soa) = &record.data else {
                    unreachable!("found by its type")
                };
                let ttl = record.ttl.min(soa.minimum).min(self.negative_max_ttl);
                record.ttl = ttl;
                (ttl > 0).then_some(ttl)
            }
            _ => None,
        }
    }
}

impl<N: Resolve> Resolve for Cache<N> {
    async fn resolve(&self, query: &Query<'_>) -> Answer {
        let Some(entries) = &self.entries else {
            return self.next.resolve(query).await;
        };
        let key: Key = (query.name.clone(), query.qtype, query.qclass);
        if let Some(entry) = entries.get(&key) {
            let age = u32::try_from(entry.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
            if age < entry.ttl {
                self.metrics.cache_hits.inc();
                let count_down = |records: &[Record]| -> Vec<Record> {
                    records
                        .iter()
                        .map(|r| {
                            let mut r = r.clone();
                            r.ttl = r.ttl.saturating_sub(age);
                            r
                        })
                        .collect()
                };
                return Answer {
                    outcome: Outcome::Cached,
                    rcode: entry.rcode,
                    authentic_data: entry.authentic_data,
                    authoritative: false,
                    answers: count_down(&entry.answers),
                    authorities: count_down(&entry.authorities),
                    additionals: count_down(&entry.additionals),
                };
            }
            entries.remove(&key);
            self.metrics.cache_entries.set(entries.len() as i64);
        }
        self.metrics.cache_misses.inc();
        let mut answer = self.next.resolve(query).await;
        if answer.outcome == Outcome::Forwarded {
            if let Some(ttl) = self.cacheable_ttl(&mut answer) {
                entries.insert(
                    key,
                    Arc::new(Entry {
                        rcode: answer.rcode,
                        authentic_data: answer.authentic_data,
                        answers: answer.answers.clone(),
                        authorities: answer.authorities.clone(),
                        additionals: answer.additionals.clone(),
                        stored: Instant::now(),
                        ttl,
                    }),
                );
                // Kept current on the write path (inserts and expiries),
                // so hits pay nothing for it.
                self.metrics.cache_entries.set(entries.len() as i64);
            }
        }
        answer
    }
}
