//! Upstream strategies and health: `fastest` prefers the faster upstream,
//! `failover` skips a dead one, `round_robin` spreads the load.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

fn config(strategy: &str, timeout: &str) -> String {
    format!(
        r#"
[upstream]
servers = [{{upstreams}}]
timeout = "{timeout}"
strategy = "{strategy}"
[cache]
capacity = 0
[http]
listen = "127.0.0.1:0"
"#
    )
}

#[tokio::test]
async fn fastest_prefers_the_faster_upstreams() {
    let slow = Stub::delayed(Duration::from_millis(600)).await;
    let medium = Stub::delayed(Duration::from_millis(250)).await;
    let fast = Stub::start().await;
    let dir = dir_with(&[]);
    // The slowest first: `failover` would always wait for it.
    let ts = Telesink::start(
        &config("fastest", "2s"),
        &[&slow, &medium, &fast],
        dir.path(),
    )
    .await;
    let mut times = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let r = ask(ts.udp, "a.test.", RecordType::A).await;
        times.push(started.elapsed());
        assert_eq!(addresses(&r), ["192.0.2.1"]);
    }
    // Two queries measure the three upstreams; then the fast one answers
    // every query, and the slowest is no longer asked.
    for t in &times[2..] {
        assert!(*t < Duration::from_millis(200), "{times:?}");
    }
    assert!(
        slow.total() <= 1,
        "slow upstream asked {} times",
        slow.total()
    );
    assert_eq!(fast.total(), 9, "{times:?}");
    ts.stop().await;
}

#[tokio::test]
async fn failover_skips_a_dead_upstream_within_the_timeout() {
    let dead = Stub::silent().await;
    let good = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(&config("failover", "300ms"), &[&dead, &good], dir.path()).await;
    for _ in 0..2 {
        let started = Instant::now();
        let r = ask(ts.udp, "a.test.", RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
            "{took:?}: one timeout, then the next upstream"
        );
    }
    // Two timeouts in a row: the dead upstream is skipped from now on.
    for _ in 0..5 {
        let started = Instant::now();
        ask(ts.udp, "a.test.", RecordType::A).await;
        assert!(started.elapsed() < Duration::from_millis(200));
    }
    assert_eq!(dead.total(), 2);
    assert_eq!(good.total(), 7);
    let text = ts.metrics().await;
    let healthy = |stub: &Stub| {
        metric(
            &text,
            &format!("telesink_upstream_healthy{{upstream=\"{}\"}}", stub.addr),
        )
    };
    assert_eq!(healthy(&dead), 0.0, "{text}");
    assert_eq!(healthy(&good), 1.0, "{text}");
    assert_eq!(
        metric(
            &text,
            &format!(
                "telesink_upstream_requests_total{{result=\"timeout\",upstream=\"{}\"}}",
                dead.addr
            )
        ),
        2.0
    );
    ts.stop().await;
}

#[tokio::test]
async fn round_robin_spreads_queries() {
    let one = Stub::start().await;
    let two = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(&config("round_robin", "1s"), &[&one, &two], dir.path()).await;
    for _ in 0..6 {
        ask(ts.udp, "a.test.", RecordType::A).await;
    }
    assert_eq!((one.total(), two.total()), (3, 3));
    ts.stop().await;
}

#[tokio::test]
async fn a_recovered_upstream_is_asked_again() {
    let one = Stub::start().await;
    let two = Stub::silent().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(&config("round_robin", "300ms"), &[&one, &two], dir.path()).await;
    // Every other query starts at `two`: two timeouts put it in backoff.
    for _ in 0..4 {
        ask(ts.udp, "a.test.", RecordType::A).await;
    }
    assert_eq!(two.total(), 2);
    two.set_silent(false);
    // Once the backoff (5 s) is over, a query probes it; queries that
    // start at `one` must not hold that probe while `one` answers them.
    let deadline = Instant::now() + Duration::from_secs(15);
    while two.total() == 2 {
        assert!(
            Instant::now() < deadline,
            "the recovered upstream was never probed"
        );
        ask(ts.udp, "a.test.", RecordType::A).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = two.total();
    for _ in 0..10 {
        ask(ts.udp, "a.test.", RecordType::A).await;
    }
    assert_eq!(two.total() - before, 5, "back in the rotation");
    let text = ts.metrics().await;
    let healthy = format!("telesink_upstream_healthy{{upstream=\"{}\"}}", two.addr);
    assert_eq!(metric(&text, &healthy), 1.0, "{text}");
    ts.stop().await;
}
