//! Per-client rate limiting: a token bucket per client address.
//!
//! Each address may send `rate` queries per second on average and up to
//! `burst` at once. Addresses in `exempt` (the router that forwards for the
//! whole LAN, say) are never limited. Over the limit a query is answered
//! REFUSED or dropped, as configured. Buckets live in sharded maps so
//! clients rarely contend for a lock, and the maps are bounded: when a
//! shard is full, buckets idle long enough to be full again are dropped,
//! and if none is, a new address goes unlimited until one is.
//!
//! Each IPv6 address has its own bucket, not each /64: on a home network
//! every device shares the one /64 the router hands out.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use hickory_proto::op::ResponseCode;
use ipnet::IpNet;

use super::{Answer, Outcome, Peek, Query, Resolve};
use crate::config::{RateLimitAction, RateLimitConfig};

const SHARDS: usize = 16;
/// Clients tracked per shard before idle buckets are evicted.
const SHARD_CAPACITY: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Debug, Default)]
struct Shard {
    buckets: HashMap<IpAddr, Bucket>,
    /// When idle buckets were last swept out; sweeps are at most one per
    /// second, so a flood of new sources cannot make every query scan.
    last_sweep: Option<Instant>,
}

/// Refuses or drops queries from clients over their rate.
pub struct RateLimit<N> {
    rate: f64,
    burst: f64,
    exempt: Vec<IpNet>,
    action: RateLimitAction,
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    next: N,
}

impl<N> std::fmt::Debug for RateLimit<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl<N: Resolve> RateLimit<N> {
    /// Limits as `config` says, then asks `next`.
    pub fn new(config: &RateLimitConfig, next: N) -> Self {
        Self {
            rate: f64::from(config.rate),
            burst: f64::from(config.burst.max(1)),
            exempt: config.exempt.clone(),
            action: config.action,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            next,
        }
    }

    /// Takes one token for `client`; false if it has none left.
    pub fn allow(&self, client: IpAddr, now: Instant) -> bool {
        if self.rate <= 0.0 || self.exempt.iter().any(|n| n.contains(&client)) {
            return true;
        }
        let shard = &self.shards[(self.hasher.hash_one(client) as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        if shard.buckets.len() >= SHARD_CAPACITY && !shard.buckets.contains_key(&client) {
            let due = shard
                .last_sweep
                .is_none_or(|t| now.duration_since(t).as_secs() >= 1);
            if due {
                // A bucket idle for burst/rate seconds is full again:
                // forgetting it changes nothing for that client.
                let refill = self.burst / self.rate;
                shard
                    .buckets
                    .retain(|_, b| now.duration_since(b.last).as_secs_f64() < refill);
                shard.last_sweep = Some(now);
            }
            if shard.buckets.len() >= SHARD_CAPACITY {
                // Every tracked client is busy: a flood of new (likely
                // forged) sources. The newcomer goes untracked rather than
                // refused: refusing would cut off every phone that joins
                // or wakes up during the flood, while each forged source
                // is within its own limit anyway. The map stays bounded.
                return true;
            }
        }
        let bucket = shard.buckets.entry(client).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl<N> RateLimit<N> {
    /// Gives back the token [`RateLimit::allow`] just took for `client`.
    fn refund(&self, client: IpAddr) {
        if self.rate <= 0.0 || self.exempt.iter().any(|n| n.contains(&client)) {
            return;
        }
        let shard = &self.shards[(self.hasher.hash_one(client) as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = shard.buckets.get_mut(&client) {
            bucket.tokens = (bucket.tokens + 1.0).min(self.burst);
        }
    }
}

/// The address a client is limited by: an IPv4-mapped IPv6 address shares
/// the bucket of its IPv4 address.
fn bucket_key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    }
}

impl<N: Resolve> Resolve for RateLimit<N> {
    async fn resolve(&self, query: &Query<'_>) -> Answer {
        if !self.allow(bucket_key(query.client), Instant::now()) {
            let outcome = match self.action {
                RateLimitAction::Refuse => Outcome::RateLimited,
                RateLimitAction::Drop => Outcome::Dropped,
            };
            return Answer::empty(outcome, ResponseCode::Refused);
        }
        self.next.resolve(query).await
    }

    fn peek(&self, query: &Query<'_>) -> Peek {
        // The links below decide first, and a token is taken only for an
        // answer the caller can send. A client out of tokens goes the
        // full path, which finds the bucket still empty and refuses or
        // drops as configured; an answer the caller declines gives its
        // token back (`declined`) before the full path takes one: one
        // token per query either way.
        let peeked = self.next.peek(query);
        if matches!(peeked, Peek::Slow) || self.allow(bucket_key(query.client), Instant::now()) {
            peeked
        } else {
            Peek::Slow
        }
    }

    fn declined(&self, query: &Query<'_>) {
        self.refund(bucket_key(query.client));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    struct Never;
    impl Resolve for Never {
        async fn resolve(&self, _: &Query<'_>) -> Answer {
            unreachable!()
        }
    }

    fn limiter(rate: u32, burst: u32, exempt: &[&str]) -> RateLimit<Never> {
        RateLimit::new(
            &RateLimitConfig {
                rate,
                burst,
                exempt: exempt.iter().map(|s| s.parse().unwrap()).collect(),
                action: RateLimitAction::Refuse,
            },
            Never,
        )
    }

    #[test]
    fn burst_then_rate() {
        let l = limiter(10, 5, &[]);
        let c: IpAddr = "192.168.1.20".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(l.allow(c, t0));
        }
        assert!(!l.allow(c, t0), "burst used up");
        // 10 per second: one token every 100 ms.
        assert!(l.allow(c, t0 + Duration::from_millis(100)));
        assert!(!l.allow(c, t0 + Duration::from_millis(100)));
        // Another client has its own bucket.
        assert!(l.allow("192.168.1.21".parse().unwrap(), t0));
    }

    #[test]
    fn exempt_and_disabled() {
        let l = limiter(1, 1, &["192.168.1.1/32"]);
        let router: IpAddr = "192.168.1.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(l.allow(router, t0));
        }
        let off = limiter(0, 1, &[]);
        for _ in 0..100 {
            assert!(off.allow("10.0.0.1".parse().unwrap(), t0));
        }
    }

    #[test]
    fn a_full_table_does_not_refuse_newcomers() {
        let l = limiter(1, 1, &[]);
        let t0 = Instant::now();
        // Forged sources, each within its limit, fill every shard.
        for i in 0..(SHARDS * SHARD_CAPACITY * 2) as u32 {
            l.allow(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), t0);
        }
        for phone in 1..=20u8 {
            assert!(
                l.allow(IpAddr::from([192, 168, 1, phone]), t0),
                "a new client during the flood"
            );
        }
    }

    #[test]
    fn tracked_clients_are_bounded() {
        let l = limiter(1, 1, &[]);
        let t0 = Instant::now();
        for i in 0..(SHARDS * SHARD_CAPACITY * 2) as u32 {
            l.allow(IpAddr::from(i.to_be_bytes()), t0);
        }
        let tracked: usize = l
            .shards
            .iter()
            .map(|s| s.lock().unwrap().buckets.len())
            .sum();
        assert!(tracked <= SHARDS * SHARD_CAPACITY, "{tracked}");
    }
}
