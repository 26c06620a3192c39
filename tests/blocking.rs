//! Blocking end to end: every answer mode, subdomains, allow lists beating
//! parent blocks, CNAME cloaking, and the shipped default lists.

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

fn config(mode_lines: &str) -> String {
    format!(
        r#"
[upstream]
servers = [{{upstreams}}]
timeout = "300ms"
[http]
listen = "127.0.0.1:0"
[blocking]
{mode_lines}
[[blocking.lists]]
name = "vendor"
path = "block.txt"
[[blocking.lists]]
name = "hosts"
path = "hosts.txt"
[[blocking.allow]]
name = "keep"
path = "allow.txt"
"#
    )
}

const BLOCK: &str = "# vendor telemetry\ntracker.test\n";
const HOSTS: &str = "127.0.0.1 localhost\n0.0.0.0 blocked.test other.blocked.test # hosts format\n";
const ALLOW: &str = "ok.tracker.test\nallowed.test\n";

async fn start(mode_lines: &str) -> (Stub, Telesink, tempfile::TempDir) {
    let stub = Stub::start().await;
    let dir = dir_with(&[
        ("block.txt", BLOCK),
        ("hosts.txt", HOSTS),
        ("allow.txt", ALLOW),
    ]);
    let ts = Telesink::start(&config(mode_lines), &[&stub], dir.path()).await;
    (stub, ts, dir)
}

#[tokio::test]
async fn null_mode_answers_unspecified_addresses() {
    let (stub, ts, _dir) = start("mode = \"null\"\nttl = \"45s\"").await;
    for qname in [
        "tracker.test.",
        "deep.sub.tracker.test.",
        "blocked.test.",
        "x.blocked.test.",
    ] {
        let r = ask(ts.udp, qname, RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{qname}");
        assert_eq!(addresses(&r), ["0.0.0.0"], "{qname}");
        assert_eq!(r.answers[0].ttl, 45);
        let r = ask(ts.udp, qname, RecordType::AAAA).await;
        assert_eq!(addresses(&r), ["::"], "{qname}");
        let r = ask(ts.udp, qname, RecordType::TXT).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty(), "other types get NODATA");
        assert!(matches!(r.authorities[0].data, RData::SOA(_)));
    }
    assert_eq!(stub.total(), 0, "blocked names never reach the upstream");
    ts.stop().await;
}

#[tokio::test]
async fn custom_sinkhole_addresses() {
    let (_stub, ts, _dir) =
        start("mode = \"null\"\nsinkhole_ipv4 = \"192.168.1.2\"\nsinkhole_ipv6 = \"fd00::2\"")
            .await;
    assert_eq!(
        addresses(&ask(ts.udp, "a.tracker.test.", RecordType::A).await),
        ["192.168.1.2"]
    );
    assert_eq!(
        addresses(&ask(ts.udp, "a.tracker.test.", RecordType::AAAA).await),
        ["fd00::2"]
    );
    ts.stop().await;
}

#[tokio::test]
async fn nxdomain_mode() {
    let (stub, ts, _dir) = start("mode = \"nxdomain\"").await;
    for qname in ["tracker.test.", "a.tracker.test.", "blocked.test."] {
        let r = ask(ts.udp, qname, RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{qname}");
        assert!(r.answers.is_empty());
        match &r.authorities[0].data {
            RData::SOA(soa) => assert_eq!(soa.minimum, 60),
            other => panic!("expected SOA, got {other:?}"),
        }
    }
    assert_eq!(stub.total(), 0);
    ts.stop().await;
}

#[tokio::test]
async fn nodata_mode() {
    let (_stub, ts, _dir) = start("mode = \"nodata\"").await;
    for qname in ["tracker.test.", "a.tracker.test."] {
        let r = ask(ts.udp, qname, RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.answers.is_empty());
        assert!(matches!(r.authorities[0].data, RData::SOA(_)));
    }
    ts.stop().await;
}

#[tokio::test]
async fn refused_mode() {
    let (_stub, ts, _dir) = start("mode = \"refused\"").await;
    for qname in ["tracker.test.", "a.tracker.test."] {
        let r = ask(ts.udp, qname, RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::Refused, "{qname}");
    }
    ts.stop().await;
}

#[tokio::test]
async fn allowed_subdomain_of_a_blocked_parent_resolves() {
    let (stub, ts, _dir) = start("").await;
    for qname in ["ok.tracker.test.", "deeper.ok.tracker.test."] {
        let r = ask(ts.udp, qname, RecordType::A).await;
        assert_eq!(addresses(&r), ["192.0.2.66"], "{qname} resolves upstream");
        assert_eq!(stub.count(qname, RecordType::A), 1);
    }
    // Its parent and siblings stay blocked.
    assert_eq!(
        addresses(&ask(ts.udp, "tracker.test.", RecordType::A).await),
        ["0.0.0.0"]
    );
    assert_eq!(
        addresses(&ask(ts.udp, "nok.tracker.test.", RecordType::A).await),
        ["0.0.0.0"]
    );
    ts.stop().await;
}

#[tokio::test]
async fn cname_to_a_blocked_name_is_blocked() {
    let (stub, ts, _dir) = start("").await;
    let r = ask(ts.udp, "cloaked.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["0.0.0.0"], "{r:?}");
    assert_eq!(stub.count("cloaked.test.", RecordType::A), 1);
    // And again from the cache.
    let r = ask(ts.udp, "cloaked.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["0.0.0.0"]);
    let m = ts.metrics().await;
    assert_eq!(
        metric(&m, "telesink_blocked_total{list=\"vendor\"}"),
        2.0,
        "{m}"
    );
    ts.stop().await;
}

/// An HTTPS record whose target is a listed tracker (with the tracker's
/// address as a hint) is cloaking as a CNAME is; one naming its own
/// owner (".") is not. Both forwarded and from the cache.
#[tokio::test]
async fn https_records_pointing_at_a_blocked_name_are_blocked() {
    let (_stub, ts, _dir) = start("").await;
    for round in ["forwarded", "cached"] {
        let r = ask(ts.udp, "svc.test.", RecordType::HTTPS).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{round}");
        assert!(r.answers.is_empty(), "{round}: {:?}", r.answers);
        let r = ask(ts.udp, "self-svc.test.", RecordType::HTTPS).await;
        assert_eq!(r.answers.len(), 1, "{round}: {r:?}");
    }
    let m = ts.metrics().await;
    assert_eq!(metric(&m, "telesink_blocked_total{list=\"vendor\"}"), 2.0);
    ts.stop().await;
}

/// A CNAME target with a label that is not UTF-8 is still under its
/// listed parent.
#[tokio::test]
async fn a_cname_into_an_odd_label_under_a_blocked_name_is_blocked() {
    let (_stub, ts, _dir) = start("").await;
    for round in ["forwarded", "cached"] {
        let r = ask(ts.udp, "odd-cloaked.test.", RecordType::A).await;
        assert_eq!(addresses(&r), ["0.0.0.0"], "{round}: {r:?}");
    }
    ts.stop().await;
}

#[tokio::test]
async fn an_allowed_name_is_answered_whatever_its_cname_leads_to() {
    // An essential host often sits behind a shared CDN name; when that
    // name is listed, the allowed host must still resolve.
    let (stub, ts, _dir) = start("").await;
    for _ in 0..2 {
        // Forwarded, then from the cache (the UDP fast path).
        let r = ask(ts.udp, "alias.allowed.test.", RecordType::A).await;
        assert_eq!(addresses(&r), ["192.0.2.67"], "{r:?}");
    }
    assert_eq!(stub.count("alias.allowed.test.", RecordType::A), 1);
    // The CNAME target itself stays blocked.
    assert_eq!(
        addresses(&ask(ts.udp, "edge.tracker.test.", RecordType::A).await),
        ["0.0.0.0"]
    );
    ts.stop().await;
}

#[tokio::test]
async fn blocking_can_be_turned_off() {
    let (_stub, ts, _dir) = start("enabled = false").await;
    assert_eq!(
        addresses(&ask(ts.udp, "tracker.test.", RecordType::A).await),
        ["192.0.2.66"]
    );
    assert_eq!(
        metric(&ts.metrics().await, "telesink_blocking_enabled"),
        0.0
    );
    ts.stop().await;
}

/// (allowed host, blocked sibling) pairs of the shipped default config.
const CARVE_OUTS: [(&str, &str); 11] = [
    // Xiaomi: allow entries below default-tier service rules
    (
        "data.mistat.intl.xiaomi.com",
        "abtest.mistat.intl.xiaomi.com",
    ),
    ("api.browser.miui.com", "hot.browser.miui.com"),
    ("api.sec.miui.com", "data.sec.miui.com"),
    ("account.migc.g.mi.com", "migcreport.g.mi.com"),
    ("upgrade.pandora.xiaomi.com", "stat.pandora.xiaomi.com"),
    ("ota.ptqy.gitv.tv", "cupid.ptqy.gitv.tv"),
    // Xiaomi push send API next to the server-side feedback API (blocked)
    (
        "api.xmpush.global.xiaomi.com",
        "fr.feedback.xmpush.global.xiaomi.com",
    ),
    // OPPO, Huawei, vivo, Samsung: allowed next to blocked in the same domain
    ("conn1.coloros.com", "log-eap.coloros.com"),
    ("grs.hicloud.com", "metrics1.dt.hicloud.com"),
    (
        "asia-cota.vivoglobal.com",
        "asia-abeacdataonrt-stsdk.vivoglobal.com",
    ),
    (
        "push.samsungosp.com.cn",
        "devicelog.samsungcloudsolution.net",
    ),
];

/// The embedded default config blocks vendor telemetry out of the box and
/// keeps every essential host resolvable. Its upstreams are replaced by the
/// stub so no query leaves the machine.
#[tokio::test]
async fn default_config_blocks_vendor_telemetry_and_keeps_essentials() {
    let stub = Stub::start().await;
    let mut config = telesink::config::Config::embedded_default();
    config.upstream.servers = vec![telesink::config::UpstreamAddr::plain(stub.addr)];
    config.http.listen = Some("127.0.0.1:0".parse().unwrap());
    let ts = Telesink::start_config(config).await;
    for qname in ["tracking.miui.com.", "sa.api.intl.miui.com."] {
        let r = ask(ts.udp, qname, RecordType::A).await;
        assert_eq!(addresses(&r), ["0.0.0.0"], "{qname} is sinkholed");
    }
    // Essential hosts go to the upstream (the stub answers NXDOMAIN for
    // names it does not know, which proves the query was forwarded).
    let mut essential = Vec::new();
    let skipped =
        telesink::lists::parse_text(telesink::lists::builtin("essential").unwrap(), |_, rule| {
            if let telesink::lists::Pattern::Domain(d) = rule.pattern {
                essential.push(d.into_owned());
            }
        });
    assert!(skipped.is_empty(), "{skipped:?}");
    assert!(essential.len() > 20);
    for host in &essential {
        let qname = format!("{host}.");
        let r = ask(ts.udp, &qname, RecordType::A).await;
        assert_ne!(addresses(&r), ["0.0.0.0"], "{host} must resolve");
        assert_eq!(stub.count(&qname, RecordType::A), 1, "{host} was forwarded");
    }
    // Carve-outs: an allowed host below a default-tier rule resolves (it is
    // an essential entry, asked above; here its subdomains) while a blocked
    // sibling under the same rule is sinkholed. Vendors without a carve-out
    // get an allowed host next to a blocked one in the same vendor domain.
    for (allowed, blocked) in CARVE_OUTS {
        assert!(essential.iter().any(|e| e == allowed), "{allowed}");
        let qname = format!("sub.{allowed}.");
        let r = ask(ts.udp, &qname, RecordType::A).await;
        assert_ne!(addresses(&r), ["0.0.0.0"], "{qname} must resolve");
        assert_eq!(
            stub.count(&qname, RecordType::A),
            1,
            "{qname} was forwarded"
        );
        let qname = format!("{blocked}.");
        let r = ask(ts.udp, &qname, RecordType::A).await;
        assert_eq!(addresses(&r), ["0.0.0.0"], "{blocked} is sinkholed");
        assert_eq!(
            stub.count(&qname, RecordType::A),
            0,
            "{blocked} never forwarded"
        );
    }
    let m = ts.metrics().await;
    for vendor in ["xiaomi", "oppo", "huawei", "vivo", "samsung"] {
        assert!(
            metric(
                &m,
                &format!("telesink_blocklist_domains{{list=\"{vendor}\"}}")
            ) > 10.0,
            "{vendor} list is active"
        );
    }
    ts.stop().await;
}
