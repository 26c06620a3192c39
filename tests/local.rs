//! Local records and special-use names: answered by telesink itself, with
//! AA set, and never sent to the upstream stub.

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

const CONFIG: &str = r#"
[upstream]
servers = [{upstreams}]
timeout = "300ms"
[http]
listen = "127.0.0.1:0"
[local]
records = { "nas.lan" = "192.168.1.10", "printer.lan" = ["192.168.1.11", "fd00::11"], "tv.lan" = "nas.lan", "alias.lan" = "a.test", "tracked.lan" = "x.tracker.test" }
ttl = "1m"
[[blocking.lists]]
name = "trackers"
path = "block.txt"
"#;

#[tokio::test]
async fn local_records_are_authoritative_and_never_forwarded() {
    let stub = Stub::start().await;
    let dir = dir_with(&[("block.txt", "tracker.test\n")]);
    let ts = Telesink::start(CONFIG, &[&stub], dir.path()).await;

    let r = ask(ts.udp, "nas.lan.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative, "AA is set on local answers");
    assert_eq!(addresses(&r), ["192.168.1.10"]);
    assert_eq!(r.answers[0].ttl, 60);

    let r = ask(ts.udp, "printer.lan.", RecordType::AAAA).await;
    assert_eq!(addresses(&r), ["fd00::11"]);
    let r = ask(ts.udp, "PRINTER.lan.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.168.1.11"], "names match in any case");

    // A CNAME to another local name is followed locally.
    let r = ask(ts.udp, "tv.lan.", RecordType::A).await;
    assert!(matches!(r.answers[0].data, RData::CNAME(_)));
    assert_eq!(addresses(&r), ["192.168.1.10"]);

    // Local name, other type: NODATA with an SOA.
    let r = ask(ts.udp, "nas.lan.", RecordType::MX).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    assert!(matches!(r.authorities[0].data, RData::SOA(_)));

    // PTRs are synthesised for A and AAAA records.
    let r = ask(ts.udp, "10.1.168.192.in-addr.arpa.", RecordType::PTR).await;
    assert!(r.metadata.authoritative);
    match &r.answers[0].data {
        RData::PTR(p) => assert_eq!(p.0, name("nas.lan.")),
        other => panic!("expected PTR, got {other:?}"),
    }
    let r = ask(
        ts.udp,
        "1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
        RecordType::PTR,
    )
    .await;
    match &r.answers[0].data {
        RData::PTR(p) => assert_eq!(p.0, name("printer.lan.")),
        other => panic!("expected PTR, got {other:?}"),
    }
    assert_eq!(stub.total(), 0, "no local name reached the upstream");

    // A CNAME to an outside name is resolved through the chain...
    let r = ask(ts.udp, "alias.lan.", RecordType::A).await;
    assert_eq!(
        r.answers[0].data,
        RData::CNAME(hickory_proto::rr::rdata::CNAME(name("a.test.")))
    );
    assert_eq!(addresses(&r), ["192.0.2.1"]);
    assert_eq!(stub.count("a.test.", RecordType::A), 1);
    assert_eq!(stub.count("alias.lan.", RecordType::A), 0);
    // ...so a blocked target is still blocked.
    let r = ask(ts.udp, "tracked.lan.", RecordType::A).await;
    assert_eq!(addresses(&r), ["0.0.0.0"]);
    assert_eq!(stub.count("x.tracker.test.", RecordType::A), 0);
    // It is the target that is listed, and the blocked queries say so.
    let (status, body) = http_request(ts.http, "GET", "/api/blocked?name=tracked.lan", None).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["blocked"][0]["cname"], "x.tracker.test", "{body}");
    // And explain says why: through the local CNAME, by the target's rule.
    let (status, body) = http_request(ts.http, "GET", "/api/explain?name=tracked.lan", None).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["verdict"], "blocked", "{body}");
    assert_eq!(v["local_cname"], "x.tracker.test", "{body}");
    assert_eq!(v["rule"]["rule"], "tracker.test", "{body}");

    let text = ts.metrics().await;
    assert!(
        metric(
            &text,
            r#"telesink_queries_total{outcome="local",qtype="A"}"#
        ) >= 4.0
    );
    ts.stop().await;
}

#[tokio::test]
async fn special_names_never_reach_the_upstream() {
    let stub = Stub::start().await;
    let dir = dir_with(&[("block.txt", "")]);
    let ts = Telesink::start(CONFIG, &[&stub], dir.path()).await;

    let r = ask(ts.udp, "use-application-dns.net.", RecordType::A).await;
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::NXDomain,
        "Firefox canary"
    );
    assert!(matches!(r.authorities[0].data, RData::SOA(_)));

    let r = ask(ts.udp, "_dns.resolver.arpa.", RecordType::SVCB).await;
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::NoError,
        "DDR: NODATA"
    );
    assert!(r.answers.is_empty());

    let r = ask(ts.udp, "localhost.", RecordType::A).await;
    assert_eq!(addresses(&r), ["127.0.0.1"]);
    let r = ask(ts.udp, "app.localhost.", RecordType::AAAA).await;
    assert_eq!(addresses(&r), ["::1"]);

    for (qname, qtype) in [
        ("nothing.invalid.", RecordType::A),
        ("abc.onion.", RecordType::A),
        ("printer.home.arpa.", RecordType::A),
        ("1.0.0.10.in-addr.arpa.", RecordType::PTR),
        ("1.0.16.172.in-addr.arpa.", RecordType::PTR),
        ("1.0.31.172.in-addr.arpa.", RecordType::PTR),
        ("20.1.168.192.in-addr.arpa.", RecordType::PTR),
        ("1.0.0.127.in-addr.arpa.", RecordType::PTR),
        ("1.1.254.169.in-addr.arpa.", RecordType::PTR),
        (
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.e.f.ip6.arpa.",
            RecordType::PTR,
        ),
        (
            "1.2.3.4.5.6.7.8.9.0.1.2.3.4.5.6.d.f.ip6.arpa.",
            RecordType::PTR,
        ),
    ] {
        let r = ask(ts.udp, qname, qtype).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{qname}");
        assert!(r.metadata.authoritative, "{qname}");
        assert!(
            matches!(r.authorities.first().map(|a| &a.data), Some(RData::SOA(_))),
            "{qname} has an SOA"
        );
    }
    // ::1 is a zone of its own (RFC 6303): its apex exists, without a PTR.
    let r = ask(
        ts.udp,
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.",
        RecordType::PTR,
    )
    .await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    assert!(matches!(r.authorities[0].data, RData::SOA(_)));
    assert_eq!(stub.total(), 0, "no special name reached the upstream");

    // A public reverse name is forwarded as usual.
    ask(ts.udp, "8.8.8.8.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(stub.count("8.8.8.8.in-addr.arpa.", RecordType::PTR), 1);
    ts.stop().await;
}

#[tokio::test]
async fn special_names_can_be_turned_off() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let config = "
[upstream]
servers = [{upstreams}]
timeout = \"300ms\"
[http]
listen = \"127.0.0.1:0\"
[local]
special_names = false
";
    let ts = Telesink::start(config, &[&stub], dir.path()).await;
    ask(ts.udp, "1.0.0.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(stub.count("1.0.0.10.in-addr.arpa.", RecordType::PTR), 1);
    ts.stop().await;
}
