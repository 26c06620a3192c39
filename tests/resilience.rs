//! Upstream loss and overload: serve-stale, shared upstream requests, and
//! the bound on upstream requests in flight.

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

fn config(extra: &str) -> String {
    format!(
        "[upstream]\nservers = [{{upstreams}}]\ntimeout = \"2s\"\n{extra}\n[http]\nlisten = \"127.0.0.1:0\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_answers_are_served_stale_when_the_upstream_dies() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(
        &config("[cache]\nserve_stale = \"1d\"\nstale_timeout = \"500ms\""),
        &[&stub],
        dir.path(),
    )
    .await;
    let first = ask(ts.udp, "short.test.", RecordType::A).await;
    assert_eq!(addresses(&first), ["192.0.2.11"]);
    stub.set_silent(true);
    // Once the 2 s TTL has run out, the answer comes from the stale entry.
    let udp = ts.udp;
    eventually("stale answer served", || async move {
        let r = ask(udp, "short.test.", RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(
            addresses(&r),
            ["192.0.2.11"],
            "never SERVFAIL while a stale answer exists"
        );
        r.answers[0].ttl == 30
    })
    .await;
    let asked = stub.count("short.test.", RecordType::A);
    let misses = metric(&ts.metrics().await, "telesink_cache_misses_total");
    // Within the stale-refresh window the upstream is not asked again...
    let r = ask(ts.udp, "short.test.", RecordType::A).await;
    assert_eq!(r.answers[0].ttl, 30);
    assert_eq!(stub.count("short.test.", RecordType::A), asked);
    let m = ts.metrics().await;
    // ...and the answer, not a fresh one, counts as a cache miss.
    assert_eq!(metric(&m, "telesink_cache_misses_total"), misses + 1.0);
    assert!(
        metric(&m, "telesink_queries_total{outcome=\"stale\",qtype=\"A\"}") >= 2.0,
        "{m}"
    );
    // A name never cached fails with SERVFAIL.
    let r = ask(ts.udp, "a.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_slower_than_stale_timeout_still_refreshes_the_answer() {
    // Answers take 400 ms; a stale answer waits only 100 ms for them.
    // (Without prefetch, which would refresh the answer before it expires.)
    let stub = Stub::delayed(std::time::Duration::from_millis(400)).await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(
        &config("[cache]\nserve_stale = \"1d\"\nstale_timeout = \"100ms\"\nprefetch = false"),
        &[&stub],
        dir.path(),
    )
    .await;
    let first = ask(ts.udp, "short.test.", RecordType::A).await;
    assert_eq!(addresses(&first), ["192.0.2.11"]);
    let udp = ts.udp;
    // Once the 2 s TTL has run out: the stale answer, while the refresh
    // goes on.
    eventually("stale answer served", || async move {
        ask(udp, "short.test.", RecordType::A).await.answers[0].ttl == 30
    })
    .await;
    // The refresh's answer is stored when it comes, though no client
    // waited for it: the next answers are fresh, with the record's TTL.
    eventually("refreshed answer served", || async move {
        ask(udp, "short.test.", RecordType::A).await.answers[0].ttl <= 2
    })
    .await;
    assert_eq!(
        stub.count("short.test.", RecordType::A),
        2,
        "the first query and the one refresh"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_stale_can_be_turned_off() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(
        &config("[cache]\nserve_stale = \"0s\""),
        &[&stub],
        dir.path(),
    )
    .await;
    ask(ts.udp, "short.test.", RecordType::A).await;
    stub.set_silent(true);
    let udp = ts.udp;
    eventually("SERVFAIL once expired", || async move {
        ask(udp, "short.test.", RecordType::A)
            .await
            .metadata
            .response_code
            == ResponseCode::ServFail
    })
    .await;
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_queries_in_flight_share_one_upstream_request() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(&config(""), &[&stub], dir.path()).await;
    let udp = ts.udp;
    let queries: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { ask(udp, "slow.test.", RecordType::A).await }))
        .collect();
    for q in queries {
        assert_eq!(addresses(&q.await.unwrap()), ["192.0.2.13"]);
    }
    assert_eq!(
        stub.count("slow.test.", RecordType::A),
        1,
        "ten clients, one upstream request"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_requests_in_flight_are_bounded() {
    let stub = Stub::silent().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(
        &config("max_in_flight = 1\n[cache]\nstale_timeout = \"200ms\""),
        &[&stub],
        dir.path(),
    )
    .await;
    let udp = ts.udp;
    // The first query holds the only slot until its 2 s timeout.
    let first = tokio::spawn(async move { ask(udp, "a.test.", RecordType::A).await });
    let s = &stub;
    eventually("first query reached the upstream", || async move {
        s.total() == 1
    })
    .await;
    let r = ask(ts.udp, "mx.test.", RecordType::MX).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(
        stub.count("mx.test.", RecordType::MX),
        0,
        "no slot, no upstream request"
    );
    assert_eq!(
        first.await.unwrap().metadata.response_code,
        ResponseCode::ServFail
    );
    ts.stop().await;
}

#[tokio::test]
async fn clients_over_their_rate_are_refused_or_dropped_but_exempt_ones_are_not() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let extra = "[security]\nrate_limit = { rate = 1, burst = 3, exempt = [\"127.0.0.7/32\"] }";
    let ts = Telesink::start(&config(extra), &[&stub], dir.path()).await;
    let q = request("a.test.", RecordType::A, true);
    for i in 0..3 {
        let r = udp_from("127.0.0.5:0", ts.udp, &q).await;
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::NoError,
            "query {i} within the burst"
        );
    }
    let r = udp_from("127.0.0.5:0", ts.udp, &q).await;
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::Refused,
        "over the burst"
    );
    // Other clients have their own bucket; exempt ones have none.
    let r = udp_from("127.0.0.6:0", ts.udp, &q).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    for _ in 0..10 {
        let r = udp_from("127.0.0.7:0", ts.udp, &q).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    }
    let m = ts.metrics().await;
    assert_eq!(
        metric(
            &m,
            "telesink_queries_total{outcome=\"ratelimited\",qtype=\"A\"}"
        ),
        1.0,
        "{m}"
    );
    ts.stop().await;

    let extra = "[security]\nrate_limit = { rate = 1, burst = 1, exempt = [], action = \"drop\" }\n\
                 [[clients]]\nname = \"phone\"\nips = [\"127.0.0.8\"]";
    let ts = Telesink::start(&config(extra), &[&stub], dir.path()).await;
    let r = udp_from("127.0.0.8:0", ts.udp, &q).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    let socket = tokio::net::UdpSocket::bind("127.0.0.8:0").await.unwrap();
    socket.send_to(&q.to_vec().unwrap(), ts.udp).await.unwrap();
    let mut buf = [0u8; 512];
    // Waiting for the absence of a reply needs a bound; 500 ms is far above
    // the loopback round trip of the answered queries above.
    let silent = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        socket.recv_from(&mut buf),
    )
    .await;
    assert!(
        silent.is_err(),
        "over the limit with action = drop: no reply"
    );
    // Over TCP nobody can forge the source: a REFUSED, not a silence the
    // client would wait out on an open connection.
    let r = tcp_from("127.0.0.8:0", ts.tcp, &q).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    // Both count for the device, the dropped one too: a flooding device
    // is the one its owner looks for.
    let m = ts.metrics().await;
    assert_eq!(
        metric(
            &m,
            "telesink_client_queries_total{client=\"phone\",outcome=\"ratelimited\"}"
        ),
        2.0,
        "{m}"
    );
    ts.stop().await;
}

#[tokio::test]
async fn an_answer_too_big_for_the_fast_path_costs_one_token() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let extra = "[security]\nrate_limit = { rate = 1, burst = 3, exempt = [] }";
    let ts = Telesink::start(&config(extra), &[&stub], dir.path()).await;
    // 40 addresses, more than the 512 bytes of a client without EDNS: the
    // cached answer goes the full path, which truncates it.
    let q = request("big.test.", RecordType::A, false);
    for i in 0..3 {
        let r = udp_from("127.0.0.9:0", ts.udp, &q).await;
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::NoError,
            "query {i} within the burst"
        );
        assert!(r.metadata.truncation);
    }
    let r = udp_from("127.0.0.9:0", ts.udp, &q).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert_eq!(
        stub.count("big.test.", RecordType::A),
        1,
        "the rest were hits"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn popular_answers_are_refreshed_before_they_expire() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(
        &config("[cache]\nprefetch_min_hits = 3"),
        &[&stub],
        dir.path(),
    )
    .await;
    // short.test has a 2 s TTL: one miss, then hits.
    for _ in 0..4 {
        assert_eq!(
            addresses(&ask(ts.udp, "short.test.", RecordType::A).await),
            ["192.0.2.11"]
        );
    }
    assert_eq!(stub.count("short.test.", RecordType::A), 1);
    // In the last second of the TTL a hit starts a background refresh.
    let (udp, s) = (ts.udp, &stub);
    eventually("prefetched", || async move {
        assert_eq!(
            addresses(&ask(udp, "short.test.", RecordType::A).await),
            ["192.0.2.11"]
        );
        s.count("short.test.", RecordType::A) == 2
    })
    .await;
    // The refresh is counted once its answer is stored, a moment after the
    // stub has seen the request.
    let ts_ref = &ts;
    eventually("the prefetch counted", || async move {
        let m = ts_ref.metrics().await;
        metric(&m, "telesink_cache_prefetches_total{result=\"success\"}") == 1.0
    })
    .await;
    let m = ts.metrics().await;
    assert_eq!(
        metric(&m, "telesink_cache_misses_total"),
        1.0,
        "the entry never expired in use: {m}"
    );
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_upstreams_give_servfail_within_the_total_budget() {
    let first = Stub::silent().await;
    let second = Stub::silent().await;
    let dir = dir_with(&[]);
    // Each upstream would be waited for 2 s; the query's budget is 500 ms,
    // so the second upstream is never reached.
    let config = "[upstream]\nservers = [{upstreams}]\ntimeout = \"2s\"\ntotal_timeout = \"500ms\"\n\
                  [http]\nlisten = \"127.0.0.1:0\"\n";
    let ts = Telesink::start(config, &[&first, &second], dir.path()).await;
    let r = ask(ts.udp, "a.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(first.total(), 1);
    assert_eq!(
        second.total(),
        0,
        "the budget ran out before the second upstream"
    );
    ts.stop().await;
}

/// A flood of names nobody asked before, to upstreams that do not answer:
/// past `udp_max_waiting` waiting queries, new ones that would wait are
/// dropped and counted, while whatever needs no waiting is answered: a
/// cached name (the fast path), a local name and ANY (the full path's
/// first poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_misses_is_bounded_and_cached_names_still_answer() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(
        &config(
            "[server]\nudp_max_waiting = 8\n[local]\nrecords = { \"nas.lan\" = \"192.168.1.5\" }",
        ),
        &[&stub],
        dir.path(),
    )
    .await;
    assert_eq!(
        addresses(&ask(ts.udp, "a.test.", RecordType::A).await),
        ["192.0.2.1"]
    );
    stub.set_silent(true);
    let flood = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..40 {
        let q = request(&format!("u{i}.flood.test."), RecordType::A, false);
        flood.send_to(&q.to_vec().unwrap(), ts.udp).await.unwrap();
    }
    eventually("the queries past udp_max_waiting are dropped", || async {
        metric(&ts.metrics().await, "telesink_overload_dropped_total") >= 32.0
    })
    .await;
    // The 8 still wait on the silent upstream (2 s); the cache answers,
    // and so do the links that answer at once.
    assert_eq!(
        addresses(&ask(ts.udp, "a.test.", RecordType::A).await),
        ["192.0.2.1"]
    );
    assert_eq!(
        addresses(&ask(ts.udp, "nas.lan.", RecordType::A).await),
        ["192.168.1.5"]
    );
    let any = ask(ts.udp, "a.test.", RecordType::ANY).await;
    assert_eq!(any.metadata.response_code, ResponseCode::NoError);
    assert_eq!(any.answers.len(), 1, "{any:?}");
    let m = ts.metrics().await;
    assert_eq!(metric(&m, "telesink_overload_dropped_total"), 32.0, "{m}");
    ts.stop().await;
}
