//! Encrypted upstreams: DNS-over-TLS and DNS-over-HTTPS servers in the test
//! harness, with a CA generated per test and trusted through
//! `[upstream] ca_file`. Real answers are forwarded over reused
//! connections; a wrong name or an untrusted certificate fails closed.

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

/// telesink in front of `upstream` (a URL), trusting `ca`, without cache
/// so every query reaches the upstream.
async fn telesink(upstream: &str, extra: &str, ca: &TestCa) -> (Telesink, tempfile::TempDir) {
    let dir = dir_with(&[("ca.pem", &ca.pem)]);
    let config = format!(
        r#"
[upstream]
servers = ["{upstream}"]
timeout = "2s"
ca_file = "ca.pem"
{extra}
[cache]
capacity = 0
[http]
listen = "127.0.0.1:0"
"#
    );
    let ts = Telesink::start(&config, &[], dir.path()).await;
    (ts, dir)
}

async fn forwards_through(stub: &Stub, ts: &Telesink) {
    let r = ask(ts.udp, "www.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 3, "CNAME chain kept");
    assert_eq!(addresses(&r), ["192.0.2.1"]);
    let r = ask(ts.udp, "nothing.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    // Many queries at once share the pooled connections. The names differ:
    // identical queries in flight would be merged into one request.
    let before = stub.total();
    let mut asks = Vec::new();
    for i in 0..20 {
        asks.push(tokio::spawn(ask(
            ts.udp,
            Box::leak(format!("n{i}.test.").into_boxed_str()),
            RecordType::A,
        )));
    }
    for a in asks {
        assert_eq!(
            a.await.unwrap().metadata.response_code,
            ResponseCode::NXDomain
        );
    }
    assert_eq!(stub.total() - before, 20);
    assert!(
        stub.connections() <= 2,
        "{} connections for 22 queries",
        stub.connections()
    );
}

#[tokio::test]
async fn dot_forwards_real_answers_over_reused_connections() {
    let ca = TestCa::new();
    let stub = Stub::tls(ca.server(&["dot.example"], &[b"dot"])).await;
    let (ts, _dir) = telesink(&format!("tls://{}#dot.example", stub.addr), "", &ca).await;
    forwards_through(&stub, &ts).await;
    let text = ts.metrics().await;
    let label = format!("tls://{}#dot.example", stub.addr);
    assert_eq!(
        metric(
            &text,
            &format!(r#"telesink_upstream_requests_total{{result="ok",upstream="{label}"}}"#)
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            &format!(r#"telesink_upstream_requests_total{{result="nxdomain",upstream="{label}"}}"#)
        ),
        21.0,
        "{text}"
    );
    ts.stop().await;
}

#[tokio::test]
async fn dot_by_ip_address_and_by_name_through_bootstrap() {
    let ca = TestCa::new();
    // A certificate for the address itself: no #name needed.
    let stub = Stub::tls(ca.server(&["127.0.0.1"], &[])).await;
    let (ts, _dir) = telesink(&format!("tls://{}", stub.addr), "", &ca).await;
    forwards_through(&stub, &ts).await;
    ts.stop().await;

    // A host name, resolved by the plain bootstrap resolver only.
    let bootstrap = Stub::start().await;
    let stub = Stub::tls(ca.server(&["dot.upstream.test"], &[b"dot"])).await;
    let (ts, _dir) = telesink(
        &format!("tls://dot.upstream.test:{}", stub.addr.port()),
        &format!("bootstrap = [\"{}\"]", bootstrap.addr),
        &ca,
    )
    .await;
    forwards_through(&stub, &ts).await;
    assert_eq!(bootstrap.count("dot.upstream.test.", RecordType::A), 1);
    assert_eq!(
        bootstrap.count("a.test.", RecordType::A),
        0,
        "queries never go to the bootstrap resolver"
    );
    ts.stop().await;
}

#[tokio::test]
async fn a_dead_bootstrap_resolver_is_passed_over() {
    let ca = TestCa::new();
    let dead = Stub::silent().await;
    let good = Stub::start().await;
    let stub = Stub::tls(ca.server(&["dot.upstream.test"], &[b"dot"])).await;
    let (ts, _dir) = telesink(
        &format!("tls://dot.upstream.test:{}", stub.addr.port()),
        &format!("bootstrap = [\"{}\", \"{}\"]", dead.addr, good.addr),
        &ca,
    )
    .await;
    // The first resolver never answers; within one attempt the second is
    // asked and its addresses serve.
    let r = ask(ts.udp, "a.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&r), ["192.0.2.1"]);
    assert_eq!(good.count("dot.upstream.test.", RecordType::A), 1);
    ts.stop().await;
}

#[tokio::test]
async fn doh_forwards_real_answers_over_http2() {
    let ca = TestCa::new();
    // The stub speaks HTTP/2 only.
    let stub = Stub::https(ca.server(&["doh.example"], &[b"h2"])).await;
    let (ts, _dir) = telesink(
        &format!("https://{}/dns-query#doh.example", stub.addr),
        "",
        &ca,
    )
    .await;
    forwards_through(&stub, &ts).await;
    ts.stop().await;

    let bootstrap = Stub::start().await;
    let stub = Stub::https(ca.server(&["doh.upstream.test"], &[b"h2"])).await;
    let (ts, _dir) = telesink(
        &format!("https://doh.upstream.test:{}/dns-query", stub.addr.port()),
        &format!("bootstrap = [\"{}\"]", bootstrap.addr),
        &ca,
    )
    .await;
    forwards_through(&stub, &ts).await;
    assert_eq!(bootstrap.count("doh.upstream.test.", RecordType::A), 1);
    ts.stop().await;
}

#[tokio::test]
async fn doh_turns_down_what_is_not_one_dns_message() {
    let ca = TestCa::new();
    let stub = Stub::https(ca.server(&["doh.example"], &[b"h2"])).await;
    for path in ["web-page", "padded"] {
        let (ts, _dir) = telesink(
            &format!("https://{}/{path}#doh.example", stub.addr),
            "",
            &ca,
        )
        .await;
        let r = ask(ts.udp, "a.test.", RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail, "{path}");
        ts.stop().await;
    }
}

/// `upstream` must fail: SERVFAIL, counted as an error, nothing answered.
async fn fails_closed(stub: &Stub, upstream: &str, ca: &TestCa) {
    let (ts, _dir) = telesink(upstream, "", ca).await;
    let r = ask(ts.udp, "a.test.", RecordType::A).await;
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::ServFail,
        "{upstream}"
    );
    assert_eq!(stub.total(), 0, "{upstream}: no query was sent");
    let text = ts.metrics().await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("telesink_upstream_requests_total")
                && l.contains("result=\"error\"")
                && l.ends_with(" 1")),
        "{upstream}: {text}"
    );
    ts.stop().await;
}

#[tokio::test]
async fn wrong_name_or_untrusted_certificate_fails_closed() {
    // The warnings name the upstream and the reason (shown with --nocapture).
    let _ = tracing_subscriber::fmt()
        .with_env_filter("telesink=warn")
        .with_test_writer()
        .try_init();
    let ca = TestCa::new();
    let other_ca = TestCa::new();

    let stub = Stub::tls(ca.server(&["other.example"], &[])).await;
    fails_closed(&stub, &format!("tls://{}#dot.example", stub.addr), &ca).await;
    let stub = Stub::tls(other_ca.server(&["dot.example"], &[])).await;
    fails_closed(&stub, &format!("tls://{}#dot.example", stub.addr), &ca).await;

    let stub = Stub::https(ca.server(&["other.example"], &[b"h2"])).await;
    fails_closed(
        &stub,
        &format!("https://{}/dns-query#doh.example", stub.addr),
        &ca,
    )
    .await;
    let stub = Stub::https(other_ca.server(&["doh.example"], &[b"h2"])).await;
    fails_closed(
        &stub,
        &format!("https://{}/dns-query#doh.example", stub.addr),
        &ca,
    )
    .await;
}

#[tokio::test]
async fn tcp_upstream_pipelines_over_reused_connections() {
    let ca = TestCa::new();
    let stub = Stub::start().await;
    let (ts, _dir) = telesink(&format!("tcp://{}", stub.addr), "", &ca).await;
    forwards_through(&stub, &ts).await;
    ts.stop().await;
}
