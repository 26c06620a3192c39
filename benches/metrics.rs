//! What counting one query in the metrics costs: the per-query series
//! (`observe_query`) and the per-device series (`observe_client`), whose
//! handles are resolved once per device, against looking each label set
//! up on every query as `observe_client` did before.
//!
//! `cargo bench --bench metrics`.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::Criterion;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use telesink::clients::Clients;
use telesink::config::{ClientConfig, MetricsConfig};
use telesink::metrics::Metrics;
use telesink::resolver::Outcome;

fn main() {
    let metrics = Metrics::new();
    let phone = ClientConfig {
        name: "phone".into(),
        ips: vec!["192.168.1.20/32".parse().unwrap()],
        macs: Vec::new(),
    };
    let clients = Clients::new(&[phone], &MetricsConfig::default());
    let ip: IpAddr = "192.168.1.20".parse().unwrap();
    let outcome = Outcome::Cached;

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("count_one_query");
    group.bench_function("observe_query", |b| {
        b.iter(|| {
            metrics.observe_query(
                black_box(RecordType::A),
                &outcome,
                ResponseCode::NoError,
                Duration::from_micros(40),
            );
        });
    });
    group.bench_function("observe_client, handles kept per device", |b| {
        b.iter(|| {
            let device = clients.label(black_box(ip));
            metrics.observe_client(&device, &outcome);
        });
    });
    // The same two series, their labels looked up on every query.
    group.bench_function("observe_client, labels looked up per query", |b| {
        b.iter(|| {
            let device = clients.label(black_box(ip));
            metrics
                .client_queries
                .with_label_values(&[&*device.name, outcome.label()])
                .inc();
            metrics
                .client_last_query
                .with_label_values(&[&*device.name])
                .set(telesink::metrics::unix_now());
        });
    });
    group.finish();
    c.final_summary();
}
