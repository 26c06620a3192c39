//! The admin surface: bearer tokens, pausing blocking, flushing the cache,
//! and refusing a network-facing API without a token.

mod common;

use std::path::Path;

use common::*;
use hickory_proto::rr::RecordType;
use telesink::config::Config;

fn config(http: &str) -> String {
    format!(
        "[upstream]\nservers = [{{upstreams}}]\ntimeout = \"300ms\"\n[http]\nlisten = \"127.0.0.1:0\"\n{http}\n\
         [[blocking.lists]]\nname = \"vendor\"\npath = \"block.txt\"\n"
    )
}

#[tokio::test]
async fn admin_api_and_metrics_take_their_tokens() {
    let stub = Stub::start().await;
    let dir = dir_with(&[("block.txt", "tracker.test\n")]);
    let ts = Telesink::start(
        &config("token = \"s3cret\"\nmetrics_token = \"scrape\""),
        &[&stub],
        dir.path(),
    )
    .await;
    for (method, path) in [
        ("POST", "/api/reload"),
        ("GET", "/api/explain?name=a.test"),
        ("GET", "/api/blocking"),
        ("POST", "/api/blocking?enabled=false"),
        ("POST", "/api/cache/flush"),
        ("GET", "/api/blocked"),
    ] {
        let (status, _) = http_request(ts.http, method, path, None).await;
        assert_eq!(status, 401, "{method} {path} without a token");
        let (status, _) = http_request(ts.http, method, path, Some("wrong")).await;
        assert_eq!(status, 401, "{method} {path} with a wrong token");
    }
    let (status, body) = http_request(ts.http, "POST", "/api/reload", Some("s3cret")).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = http_request(ts.http, "GET", "/metrics", None).await;
    assert_eq!(status, 401);
    let (status, body) = http_request(ts.http, "GET", "/metrics", Some("scrape")).await;
    assert_eq!(status, 200);
    assert!(body.contains("telesink_build_info"));
    let (status, _) = http_request(ts.http, "GET", "/healthz", None).await;
    assert_eq!(status, 200, "health stays open for probes");
    ts.stop().await;
}

#[tokio::test]
async fn blocking_can_be_paused_and_resumed_and_a_timed_pause_ends() {
    let stub = Stub::start().await;
    let dir = dir_with(&[("block.txt", "tracker.test\n")]);
    let ts = Telesink::start(&config(""), &[&stub], dir.path()).await;
    let blocked = |ts: &Telesink| {
        let udp = ts.udp;
        async move { addresses(&ask(udp, "x.tracker.test.", RecordType::A).await) == ["0.0.0.0"] }
    };
    assert!(blocked(&ts).await);
    let (status, body) = http_post(ts.http, "/api/blocking?enabled=false").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"paused\":true"), "{body}");
    assert!(!blocked(&ts).await, "paused: resolves upstream");
    assert_eq!(
        metric(&ts.metrics().await, "telesink_blocking_enabled"),
        0.0
    );
    http_post(ts.http, "/api/blocking?enabled=true").await;
    assert!(blocked(&ts).await);
    assert_eq!(
        metric(&ts.metrics().await, "telesink_blocking_enabled"),
        1.0
    );

    http_post(ts.http, "/api/blocking?enabled=false&for=1s").await;
    assert!(!blocked(&ts).await);
    let t = &ts;
    eventually(
        "timed pause ends by itself",
        || async move { blocked(t).await },
    )
    .await;
    ts.stop().await;
}

#[tokio::test]
async fn the_cache_can_be_flushed() {
    let stub = Stub::start().await;
    let dir = dir_with(&[("block.txt", "")]);
    let ts = Telesink::start(&config(""), &[&stub], dir.path()).await;
    ask(ts.udp, "a.test.", RecordType::A).await;
    ask(ts.udp, "a.test.", RecordType::A).await;
    assert_eq!(stub.count("a.test.", RecordType::A), 1);
    let (status, body) = http_post(ts.http, "/api/cache/flush").await;
    assert_eq!(status, 200);
    assert_eq!(body, "flushed 1 cached answers\n");
    ask(ts.udp, "a.test.", RecordType::A).await;
    assert_eq!(
        stub.count("a.test.", RecordType::A),
        2,
        "asked again after the flush"
    );
    ts.stop().await;
}

/// The last blocked queries, newest first: from the UDP fast path, the
/// full path (TCP) and a CNAME-cloaked answer alike, each with its device;
/// answered names are not kept. Filters by device, address and domain.
#[tokio::test]
async fn recent_blocked_queries_are_listed() {
    let stub = Stub::start().await;
    let dir = dir_with(&[("block.txt", "tracker.test\n")]);
    let config = format!(
        "{}[[clients]]\nname = \"tv\"\nips = [\"127.0.0.2\"]\n",
        config("recent_blocked = 3")
    );
    let ts = Telesink::start(&config, &[&stub], dir.path()).await;
    let tv = |qname: &str, qtype| request(qname, qtype, true);
    udp_from(
        "127.0.0.2:0",
        ts.udp,
        &tv("first.tracker.test.", RecordType::A),
    )
    .await;
    udp_from(
        "127.0.0.2:0",
        ts.udp,
        &tv("Ads.Tracker.Test.", RecordType::AAAA),
    )
    .await;
    tcp(ts.tcp, &request("tcp.tracker.test.", RecordType::A, true)).await;
    ask(ts.udp, "a.test.", RecordType::A).await;
    let r = ask(ts.udp, "cloaked.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["0.0.0.0"]);

    let get = |path: &'static str| {
        let http = ts.http;
        async move {
            let (status, body) = http_request(http, "GET", path, None).await;
            assert_eq!(status, 200, "{path}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v["blocked"].as_array().unwrap().clone()
        }
    };
    let all = get("/api/blocked").await;
    let names: Vec<_> = all.iter().map(|q| q["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["cloaked.test", "tcp.tracker.test", "ads.tracker.test"],
        "the three newest of four, newest first; a.test was answered"
    );
    assert_eq!(all[0]["cname"], "collect.tracker.test");
    assert_eq!(all[0]["device"], "unknown");
    assert_eq!(all[0]["client"], "127.0.0.1");
    assert_eq!(all[0]["list"], "vendor");
    assert_eq!(all[2]["device"], "tv");
    assert_eq!(all[2]["client"], "127.0.0.2");
    assert_eq!(all[2]["qtype"], "AAAA");
    assert!(all[2]["cname"].is_null());
    assert!(
        all[2]["time"].as_str().unwrap().ends_with('Z'),
        "{}",
        all[2]["time"]
    );

    assert_eq!(get("/api/blocked?limit=1").await.len(), 1);
    let names = |v: Vec<serde_json::Value>| -> Vec<String> {
        v.iter()
            .map(|q| q["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(get("/api/blocked?client=tv").await),
        ["ads.tracker.test"]
    );
    assert_eq!(
        names(get("/api/blocked?client=127.0.0.1").await),
        ["cloaked.test", "tcp.tracker.test"]
    );
    assert_eq!(
        names(get("/api/blocked?name=Tracker.Test.").await),
        ["tcp.tracker.test", "ads.tracker.test"]
    );
    assert!(get("/api/blocked?name=racker.test").await.is_empty());
    let (status, _) = http_request(ts.http, "GET", "/api/blocked?name=a..b", None).await;
    assert_eq!(status, 400);
    ts.stop().await;

    let ts = Telesink::start(&config_off(), &[&stub], dir.path()).await;
    ask(ts.udp, "x.tracker.test.", RecordType::A).await;
    let (status, body) = http_request(ts.http, "GET", "/api/blocked", None).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("recent_blocked = 0"), "{body}");
    ts.stop().await;
}

fn config_off() -> String {
    config("recent_blocked = 0")
}

#[test]
fn a_network_facing_api_needs_a_token() {
    let parse =
        |http: &str| Config::from_toml(&format!("[http]\n{http}\n"), "t.toml", Path::new("."));
    let err = parse("listen = \"0.0.0.0:9153\"").unwrap_err().to_string();
    assert!(err.contains("set [http] token"), "{err}");
    assert!(parse("listen = \"0.0.0.0:9153\"\ntoken = \"x\"").is_ok());
    assert!(parse("listen = \"0.0.0.0:9153\"\napi = false").is_ok());
    assert!(parse("listen = \"127.0.0.1:9153\"").is_ok());
    assert!(parse("listen = \"[::1]:9153\"").is_ok());
}

#[tokio::test]
async fn api_off_serves_only_metrics_and_health() {
    let stub = Stub::start().await;
    let dir = dir_with(&[("block.txt", "")]);
    let ts = Telesink::start(&config("api = false"), &[&stub], dir.path()).await;
    let (status, _) = http_post(ts.http, "/api/reload").await;
    assert_eq!(status, 404);
    let (status, _) = http_request(ts.http, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    ts.stop().await;
}

#[tokio::test]
async fn web_pages_cannot_use_the_admin_api() {
    let stub = Stub::start().await;
    let dir = dir_with(&[("block.txt", "tracker.test\n")]);
    let ts = Telesink::start(&config(""), &[&stub], dir.path()).await;
    let pause = "/api/blocking?enabled=false&for=1h";
    // A cross-site form POST carries the page's Origin...
    let (status, body) = http_request_with(
        ts.http,
        "POST",
        pause,
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    // ...and a fetch, Sec-Fetch-Site.
    let (status, _) =
        http_request_with(ts.http, "POST", pause, &[("Sec-Fetch-Site", "cross-site")]).await;
    assert_eq!(status, 403);
    // A page that rebound its own name to 127.0.0.1 names it in Host.
    let (status, _) = http_request_with(
        ts.http,
        "GET",
        "/api/blocking",
        &[("Host", "evil.example:9153")],
    )
    .await;
    assert_eq!(status, 403);
    let blocked = addresses(&ask(ts.udp, "tracker.test.", RecordType::A).await);
    assert_eq!(blocked, ["0.0.0.0"], "blocking was not paused");
    // Nor can a page read the metrics (device and list names); Prometheus
    // and the address bar can.
    for headers in [
        &[("Sec-Fetch-Site", "same-origin")][..],
        // A rebound page over plain http sends no Sec-Fetch-* headers.
        &[("Host", "rebind.attacker.example:9153")][..],
    ] {
        let (status, _) = http_request_with(ts.http, "GET", "/metrics", headers).await;
        assert_eq!(status, 403, "{headers:?}");
    }
    for headers in [
        &[][..],
        &[("Sec-Fetch-Site", "none")][..],
        &[("Host", "telesink:9153")][..],
        &[("Host", "pi.lan:9153")][..],
        &[("Host", "pi.home.arpa")][..],
        &[("Host", "pi.fritz.box:9153")][..],
        &[("Host", "PI.LOCALDOMAIN.")][..],
    ] {
        let (status, body) = http_request_with(ts.http, "GET", "/metrics", headers).await;
        assert_eq!(status, 200, "{headers:?}");
        assert!(body.contains("telesink_build_info"));
    }
    // curl and scripts name an address or localhost.
    for host in [
        ts.http.to_string(),
        "localhost:9153".into(),
        "[::1]:9153".into(),
    ] {
        let (status, body) =
            http_request_with(ts.http, "GET", "/api/blocking", &[("Host", &host)]).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    ts.stop().await;

    // With a token, a LAN name in Host is fine.
    let ts = Telesink::start(&config("token = \"s3cret\""), &[&stub], dir.path()).await;
    let headers = [("Host", "pi.lan:9153"), ("Authorization", "Bearer s3cret")];
    let (status, body) = http_request_with(ts.http, "GET", "/api/blocking", &headers).await;
    assert_eq!(status, 200, "{body}");
    // A page of the owner's that holds the token may call it.
    let headers = [
        ("Origin", "http://pi.lan:3000"),
        ("Authorization", "Bearer s3cret"),
    ];
    let (status, _) = http_request_with(ts.http, "POST", pause, &headers).await;
    assert_eq!(status, 200);
    ts.stop().await;
}

/// The HTTP listener cannot be held by slow clients: connections past 64
/// in all, or 16 from one address, are closed at once, a request's
/// headers must come within 5 s, and a half-sent request does not hold up
/// shutdown.
#[tokio::test]
async fn slow_http_clients_cannot_hold_the_listener() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpSocket, TcpStream};

    let stub = Stub::start().await;
    let dir = dir_with(&[("block.txt", "")]);
    let ts = Telesink::start(&config(""), &[&stub], dir.path()).await;
    let half = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: ";
    let http = ts.http;
    let connect_from = |last: u8| async move {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(([127, 0, 0, last], 0).into()).unwrap();
        socket.connect(http).await.unwrap()
    };
    let closed = |mut s: TcpStream| async move {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(2 * DEADLINE, s.read(&mut buf)).await;
        matches!(read, Ok(Ok(0)) | Ok(Err(_)))
    };
    // 64 from four addresses, 16 each.
    let mut held = Vec::new();
    for i in 0..64u8 {
        let mut s = connect_from(1 + i / 16).await;
        s.write_all(half).await.unwrap();
        held.push(s);
    }
    let started = tokio::time::Instant::now();
    assert!(
        closed(connect_from(9).await).await,
        "the 65th connection is closed"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "at once: {:?}",
        started.elapsed()
    );
    // The 64 are closed when their 5 s for the headers are up.
    for s in held {
        assert!(closed(s).await, "a dribbling client is cut off");
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let (status, body) = http_request(ts.http, "GET", "/metrics", None).await;
    assert_eq!(status, 200, "{body}");

    // One address holding its 16 does not lock the others out: its 17th
    // is closed at once.
    let mut one = Vec::new();
    for _ in 0..16 {
        let mut s = connect_from(1).await;
        s.write_all(half).await.unwrap();
        one.push(s);
    }
    let started = tokio::time::Instant::now();
    assert!(
        closed(connect_from(1).await).await,
        "a 17th from one address is closed"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "at once: {:?}",
        started.elapsed()
    );
    let mut other = connect_from(2).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, other.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A half-sent request does not hold up the stop.
    let stopping = tokio::time::Instant::now();
    ts.stop().await;
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(4),
        "stopped in {:?}",
        stopping.elapsed()
    );
    drop(one);
}
