//! The list matcher: memory, build time and lookup time, against a plain
//! `HashSet<String>` holding the same names.
//!
//! `cargo bench --bench matcher` uses a deterministic synthetic list of
//! 100k and 1M names; `TELESINK_BENCH_LIST=FILE` adds a real list file
//! (any supported format). Memory is counted by a global allocator that
//! tracks live heap bytes, so the figures are exact for this process.

use std::collections::HashSet;
use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion};
use telesink::lists::{BuildLimits, ListInput, ListKind, ListText, Snapshot};
use telesink::resolver::BlockPolicy;

mod support;

#[global_allocator]
static ALLOC: support::Counting = support::Counting;

/// `n` distinct names shaped like blocklist entries (2–4 labels).
fn synthetic(n: usize) -> String {
    const WORDS: &[&str] = &[
        "ad", "ads", "track", "metrics", "stat", "log", "cdn", "pixel", "beacon", "sync", "data",
        "api", "edge", "push", "collect", "event", "sdk", "tag", "rtb", "media",
    ];
    const TLDS: &[&str] = &[
        "com", "net", "org", "io", "cn", "ru", "de", "xyz", "info", "top",
    ];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = String::with_capacity(n * 26);
    for i in 0..n {
        let r = next();
        let labels = 1 + (r % 3) as usize;
        for l in 0..labels {
            out.push_str(WORDS[((r >> (8 * l + 4)) % WORDS.len() as u64) as usize]);
            if l == 0 {
                out.push_str(&format!("{i:x}"));
            }
            out.push('.');
        }
        out.push_str(TLDS[((r >> 40) % TLDS.len() as u64) as usize]);
        out.push('\n');
    }
    out
}

fn build(text: &str) -> Snapshot {
    let input = ListInput::from_text("bench", ListKind::Block, text.to_string());
    Snapshot::build(
        vec![input],
        BlockPolicy::default(),
        BuildLimits::default(),
        None,
    )
}

/// Prints bytes per name and build time for the matcher and a HashSet.
fn report(label: &str, text: &str) {
    let names = text.lines().filter(|l| !l.trim().is_empty()).count();
    let text_bytes = text.len();
    let base = support::reset_peak();
    let started = Instant::now();
    let snap = build(text);
    let took = started.elapsed();
    // The input text (a copy made by `build`) is freed by now.
    let held = support::live() - base;
    let peak = support::peak() - base;
    let domains = snap.blocked_domains();
    drop(snap);

    let base = support::live();
    let started = Instant::now();
    let set: HashSet<String> = text
        .lines()
        .map(|l| l.trim().to_ascii_lowercase())
        .collect();
    let set_took = started.elapsed();
    let set_held = support::live() - base;
    drop(set);
    println!(
        "{label}: {names} lines ({text_bytes} bytes), {domains} domains | matcher: {:.1} MB held ({:.1} B/domain), peak {:.1} MB during build incl. the {:.1} MB text copy, built in {:.0?} | HashSet<String>: {:.1} MB ({:.1} B/domain), built in {:.0?}",
        held as f64 / 1e6,
        held as f64 / domains as f64,
        peak as f64 / 1e6,
        text_bytes as f64 / 1e6,
        took,
        set_held as f64 / 1e6,
        set_held as f64 / domains as f64,
        set_took,
    );
}

/// Peak heap while building from the file itself, read line by line as
/// telesink reads list files (no copy of the text is held).
fn report_file(path: &str) {
    let file = std::fs::File::open(path).expect("TELESINK_BENCH_LIST is readable");
    let mut input = ListInput::from_text("bench", ListKind::Block, "");
    input.text = Ok(ListText::File(file));
    let base = support::reset_peak();
    let started = Instant::now();
    let snap = Snapshot::build(
        vec![input],
        BlockPolicy::default(),
        BuildLimits::default(),
        None,
    );
    let took = started.elapsed();
    let held = support::live() - base;
    let peak = support::peak() - base;
    println!(
        "{path} read from the file: {} domains | matcher: {:.1} MB held, peak {:.1} MB during build, built in {took:.0?}",
        snap.blocked_domains(),
        held as f64 / 1e6,
        peak as f64 / 1e6,
    );
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    for (label, n) in [("100k", 100_000), ("1m", 1_000_000)] {
        let text = synthetic(n);
        let snap = build(&text);
        let set: HashSet<String> = text.lines().map(str::to_string).collect();
        let listed = text.lines().nth(n / 2).unwrap().to_string();
        let sub = format!("a.b.{listed}");
        let miss = "static.images.example-cdn.com";
        assert_eq!(snap.blocking_list_str(&listed), Some(0));
        assert_eq!(snap.blocking_list_str(&sub), Some(0));
        assert_eq!(snap.blocking_list_str(miss), None);
        group.bench_with_input(
            BenchmarkId::new("matcher_miss_4_labels", label),
            &miss,
            |b, m| b.iter(|| snap.blocking_list_str(black_box(m))),
        );
        group.bench_with_input(
            BenchmarkId::new("matcher_hit_subdomain", label),
            &sub,
            |b, m| b.iter(|| snap.blocking_list_str(black_box(m))),
        );
        // The same suffix walk over a HashSet<String>, for comparison.
        group.bench_with_input(
            BenchmarkId::new("hashset_miss_4_labels", label),
            &miss,
            |b, m| {
                b.iter(|| {
                    let m: &str = black_box(m);
                    std::iter::once(m)
                        .chain(m.match_indices('.').map(|(i, _)| &m[i + 1..]))
                        .any(|s| set.contains(s))
                })
            },
        );
    }
    group.finish();
    let mut group = c.benchmark_group("build");
    group.sample_size(10);
    let text = synthetic(100_000);
    group.bench_function("matcher_100k", |b| b.iter(|| build(black_box(&text))));
    group.finish();
}

fn main() {
    report("synthetic 100k", &synthetic(100_000));
    report("synthetic 1m", &synthetic(1_000_000));
    if let Ok(path) = std::env::var("TELESINK_BENCH_LIST") {
        let text = std::fs::read_to_string(&path).expect("TELESINK_BENCH_LIST is readable");
        report(&path, &text);
        drop(text);
        report_file(&path);
    }
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
}
