//! Conditional forwarding: `[[forward]]` rules send names under their
//! domains to their own servers, the most specific rule winning, after
//! blocking and through the cache.

mod common;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

#[tokio::test]
async fn names_go_only_to_the_most_specific_rule() {
    let main = Stub::start().await;
    let router = Stub::start().await;
    let iot = Stub::start().await;
    let dir = dir_with(&[("block.txt", "ads.lan\n")]);
    let config = format!(
        r#"
[upstream]
servers = [{{upstreams}}]
timeout = "300ms"
[http]
listen = "127.0.0.1:0"
[[forward]]
domains = ["lan", "168.192.in-addr.arpa", "a.test"]
servers = ["{router}"]
[[forward]]
domains = ["iot.lan"]
servers = ["udp://{iot}"]
[[blocking.lists]]
name = "ads"
path = "block.txt"
"#,
        router = router.addr,
        iot = iot.addr,
    );
    let ts = Telesink::start(&config, &[&main], dir.path()).await;

    // A name under "lan" goes to the router only.
    let r = ask(ts.udp, "x.lan.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(router.count("x.lan.", RecordType::A), 1);
    assert_eq!(main.total(), 0);
    assert_eq!(iot.total(), 0);

    // The more specific rule wins.
    ask(ts.udp, "cam.iot.lan.", RecordType::A).await;
    assert_eq!(iot.count("cam.iot.lan.", RecordType::A), 1);
    assert_eq!(router.count("cam.iot.lan.", RecordType::A), 0);

    // A forwarded answer is passed on and cached like any other.
    for _ in 0..2 {
        let r = ask(ts.udp, "a.test.", RecordType::A).await;
        assert_eq!(addresses(&r), ["192.0.2.1"]);
    }
    assert_eq!(
        router.count("a.test.", RecordType::A),
        1,
        "second answer cached"
    );
    ask(ts.udp, "x.lan.", RecordType::A).await;
    assert_eq!(router.count("x.lan.", RecordType::A), 1, "NXDOMAIN cached");

    // Other names go to [upstream] servers.
    ask(ts.udp, "www.test.", RecordType::A).await;
    assert_eq!(main.count("www.test.", RecordType::A), 1);
    assert_eq!(router.count("www.test.", RecordType::A), 0);

    // A private reverse zone with a rule is forwarded, not answered locally;
    // one without a rule still never leaves.
    ask(ts.udp, "10.1.168.192.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(
        router.count("10.1.168.192.in-addr.arpa.", RecordType::PTR),
        1
    );
    let r = ask(ts.udp, "1.0.0.10.in-addr.arpa.", RecordType::PTR).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(main.total() + router.total() + iot.total(), 5);

    // Blocking applies before forwarding.
    let r = ask(ts.udp, "ads.lan.", RecordType::A).await;
    assert_eq!(addresses(&r), ["0.0.0.0"]);
    assert_eq!(router.count("ads.lan.", RecordType::A), 0);
    ts.stop().await;
}

#[test]
fn rules_are_checked() {
    use std::path::Path;
    use telesink::config::Config;
    let err = Config::from_toml(
        "[[forward]]\ndomains = [\"lan\"]\nservers = [\"192.168.1.1\"]\n[[forward]]\ndomains = [\"lan.\"]\nservers = [\"192.168.1.2\"]\n",
        "x.toml",
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("in two rules"), "{err}");
    let err = Config::from_toml(
        "[[forward]]\ndomains = [\"lan\"]\nservers = []\n",
        "x.toml",
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("needs `domains` and `servers`"), "{err}");
    let err = Config::from_toml(
        "[[forward]]\ndomains = [\"lan\"]\nservers = [\"192.168.1.1\"]\nnope = 1\n",
        "x.toml",
        Path::new("."),
    )
    .unwrap_err()
    .to_string();
    assert!(err.starts_with("x.toml:4:1:"), "{err}");
}
