//! The answer cache: the cost of a hit on the full path (records cloned
//! with their TTLs counted down, as the handler then encodes them) against
//! the UDP fast path (the answer encoded at store time, copied and its TTLs
//! patched), and the heap each cached answer holds.
//!
//! `cargo bench --bench cache`. Answers come from an in-process upstream:
//! one A record, and a CDN-style chain of two CNAMEs and three A records.
//! Heap bytes are counted by a global allocator that tracks live bytes.

use std::future::Future;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use criterion::Criterion;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, CNAME};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use telesink::config::{CacheConfig, UpstreamConfig};
use telesink::metrics::Metrics;
use telesink::resolver::{Answer, Cache, Outcome, Peek, Query, Resolve};

mod support;

#[global_allocator]
static ALLOC: support::Counting = support::Counting;

/// Answers every name, with a CNAME chain for names starting with `cdn`.
struct Upstream;

fn name(s: &str) -> Name {
    Name::from_str(s).expect("valid name")
}

impl Resolve for Upstream {
    async fn resolve(&self, query: &Query<'_>) -> Answer {
        let owner = Name::from(query.name.clone());
        let mut answer = Answer::empty(Outcome::Forwarded, ResponseCode::NoError);
        if owner.to_ascii().starts_with("cdn") {
            let edge = name("edge.example-cdn.net.");
            let last = name("a1.edge.example-cdn.net.");
            answer.answers.push(Record::from_rdata(
                owner,
                300,
                RData::CNAME(CNAME(edge.clone())),
            ));
            answer.answers.push(Record::from_rdata(
                edge,
                300,
                RData::CNAME(CNAME(last.clone())),
            ));
            for i in 1..=3 {
                answer.answers.push(Record::from_rdata(
                    last.clone(),
                    60,
                    RData::A(A::new(192, 0, 2, i)),
                ));
            }
        } else {
            answer.answers.push(Record::from_rdata(
                owner,
                300,
                RData::A(A::new(192, 0, 2, 1)),
            ));
        }
        answer
    }
}

/// Runs a future that never waits (a cache hit) to completion without
/// the overhead of a runtime's `block_on`.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the future waited"),
    }
}

fn cache(capacity: usize) -> Cache<Upstream> {
    let config = CacheConfig {
        capacity,
        prefetch: false,
        ..CacheConfig::default()
    };
    Cache::new(
        &config,
        &UpstreamConfig::default(),
        Arc::new(Metrics::new()),
        Upstream,
    )
}

fn query(name: &LowerName) -> Query<'_> {
    Query {
        name,
        qtype: RecordType::A,
        qclass: DNSClass::IN,
        client: Ipv4Addr::LOCALHOST.into(),
        checking_disabled: false,
    }
}

fn lower(s: &str) -> LowerName {
    LowerName::from(name(s))
}

fn main() {
    // Misses go through tokio timers (the upstream budget), so the cache
    // is filled on a runtime; hits never wait and are polled directly.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _context = runtime.enter();
    // Heap per cached answer: the cache filled with 100,000 answers, live
    // bytes before and after.
    for (label, prefix) in [("one A record", "host"), ("CNAME chain", "cdn")] {
        let n = 100_000;
        let names: Vec<LowerName> = (0..n)
            .map(|i| lower(&format!("{prefix}{i}.example.com.")))
            .collect();
        let before = support::live();
        let cache = cache(n);
        for name in &names {
            runtime.block_on(cache.resolve(&query(name)));
        }
        let per = (support::live() - before) / n;
        println!("cache heap, {label}: {per} bytes per cached answer ({n} answers)");
        black_box(&cache);
    }

    let mut criterion = Criterion::default().configure_from_args();
    for (label, qname) in [
        ("a", "host1.example.com."),
        ("cname_chain", "cdn1.example.com."),
    ] {
        let cache = cache(1_000);
        let name = lower(qname);
        runtime.block_on(cache.resolve(&query(&name)));
        criterion.bench_function(&format!("cache_hit/full_path/{label}"), |b| {
            b.iter(|| black_box(now(cache.resolve(black_box(&query(&name))))))
        });
        let mut out = Vec::with_capacity(512);
        criterion.bench_function(&format!("cache_hit/wire/{label}"), |b| {
            b.iter(|| {
                let Peek::Cached(hit) = cache.peek(black_box(&query(&name))) else {
                    panic!("a fresh hit with a wire form");
                };
                out.clear();
                hit.wire().write(&mut out, hit.age());
                black_box(out.len())
            })
        });
    }
    criterion.final_summary();
}
