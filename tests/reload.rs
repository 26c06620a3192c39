//! Hot reload, downloaded lists and explain, end to end.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use telesink::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config_text(lists: &str) -> String {
    format!(
        r#"
[upstream]
servers = [{{upstreams}}]
timeout = "300ms"
[http]
listen = "127.0.0.1:0"
{lists}
"#
    )
}

async fn is_blocked(ts: &Telesink, name: &str) -> bool {
    addresses(&ask(ts.udp, name, RecordType::A).await) == ["0.0.0.0"]
}

/// Queries `a.test` in a loop while the lists change, and fails if any
/// answer is wrong.
fn background_queries(ts: &Telesink) -> (Arc<AtomicBool>, tokio::task::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let udp = ts.udp;
    let flag = stop.clone();
    let handle = tokio::spawn(async move {
        let mut n = 0;
        while !flag.load(Ordering::Relaxed) {
            let r = ask(udp, "a.test.", RecordType::A).await;
            assert_eq!(r.metadata.response_code, ResponseCode::NoError);
            assert_eq!(addresses(&r), ["192.0.2.1"], "query {n} during a reload");
            n += 1;
        }
        n
    });
    (stop, handle)
}

async fn wait_blocked(ts: &Telesink, name: &str, want: bool) {
    // The issue asks for a new entry to block within 2 s of the write.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        if is_blocked(ts, name).await == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} blocked={want} not reached within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_edits_apply_in_place_and_by_rename_without_failing_queries() {
    let stub = Stub::start().await;
    let dir = dir_with(&[("block.txt", "one.blocked.test\n")]);
    let config = config_text("[[blocking.lists]]\nname = \"mine\"\npath = \"block.txt\"");
    let ts = Telesink::start(&config, &[&stub], dir.path()).await;
    assert!(is_blocked(&ts, "one.blocked.test.").await);
    assert!(!is_blocked(&ts, "two.blocked.test.").await);

    let (stop, queries) = background_queries(&ts);
    // In place, as `echo >>` does.
    let path = dir.path().join("block.txt");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, b"two.blocked.test\n").unwrap();
    drop(f);
    wait_blocked(&ts, "two.blocked.test.", true).await;

    // By rename, as editors and `sed -i` do.
    let tmp = dir.path().join(".block.txt.swp");
    std::fs::write(&tmp, "three.blocked.test\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    wait_blocked(&ts, "three.blocked.test.", true).await;
    wait_blocked(&ts, "one.blocked.test.", false).await;

    // An emptied file is an empty list.
    std::fs::write(&path, "").unwrap();
    wait_blocked(&ts, "three.blocked.test.", false).await;

    stop.store(true, Ordering::Relaxed);
    let n = queries.await.unwrap();
    assert!(n > 10, "only {n} queries ran during the reloads");
    let m = ts.metrics().await;
    assert!(
        metric(
            &m,
            "telesink_blocklist_reloads_total{list=\"mine\",result=\"success\"}"
        ) >= 3.0,
        "{m}"
    );
    assert_eq!(metric(&m, "telesink_blocklist_domains{list=\"mine\"}"), 0.0);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_list_keeps_its_old_entries() {
    let stub = Stub::start().await;
    let dir = dir_with(&[
        ("block.txt", "kept.blocked.test\n"),
        ("other.txt", "x.blocked.test\n"),
    ]);
    let config = config_text(
        "[[blocking.lists]]\nname = \"mine\"\npath = \"block.txt\"\n\
         [[blocking.lists]]\nname = \"other\"\npath = \"other.txt\"",
    );
    let ts = Telesink::start(&config, &[&stub], dir.path()).await;
    assert!(is_blocked(&ts, "kept.blocked.test.").await);
    // Root can read any file, so make the path unreadable by putting a
    // directory where the file was.
    let path = dir.path().join("block.txt");
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    // A change to the other list triggers a rebuild that must keep `mine`.
    std::fs::write(dir.path().join("other.txt"), "y.blocked.test\n").unwrap();
    wait_blocked(&ts, "y.blocked.test.", true).await;
    assert!(
        is_blocked(&ts, "kept.blocked.test.").await,
        "old entries kept"
    );
    let m = ts.metrics().await;
    assert!(
        metric(
            &m,
            "telesink_blocklist_reloads_total{list=\"mine\",result=\"failure\"}"
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "telesink_blocklist_domains{list=\"mine\"}"), 1.0);
    ts.stop().await;
}

/// Writes `text` as `dir`'s telesink.toml, `{upstreams}` being `stub`;
/// its path.
fn write_config(dir: &Path, text: &str, stub: &Stub) -> std::path::PathBuf {
    let path = dir.join("telesink.toml");
    std::fs::write(
        &path,
        text.replace("{upstreams}", &format!("\"{}\"", stub.addr)),
    )
    .unwrap();
    path
}

async fn start_from_file(dir: &Path, text: &str, stub: &Stub) -> Telesink {
    let path = write_config(dir, text, stub);
    Telesink::start_config(Config::load(&path).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_edits_apply_and_an_invalid_edit_keeps_the_running_config() {
    let stub = Stub::start().await;
    let dir = dir_with(&[("a.txt", "a.blocked.test\n"), ("b.txt", "b.blocked.test\n")]);
    let first = config_text("[[blocking.lists]]\nname = \"a\"\npath = \"a.txt\"");
    let ts = start_from_file(dir.path(), &first, &stub).await;
    assert!(is_blocked(&ts, "a.blocked.test.").await);
    let path = dir.path().join("telesink.toml");
    let write = |text: &str| {
        std::fs::write(
            &path,
            text.replace("{upstreams}", &format!("\"{}\"", stub.addr)),
        )
        .unwrap()
    };

    // A broken edit: reported, counted, and the old lists keep serving.
    write(&format!("{first}\n[blocking]\nmode = \"bogus\"\n"));
    let http = ts.http;
    let reloads = |result: &'static str| async move {
        let m = http_get(http, "/metrics").await.unwrap();
        metric(
            &m,
            &format!("telesink_config_reloads_total{{result=\"{result}\"}}"),
        )
    };
    let accepted = || async move {
        let m = http_get(http, "/metrics").await.unwrap();
        metric(&m, "telesink_config_last_reload_successful")
    };
    assert_eq!(accepted().await, 1.0);
    eventually("config reload failure counted", || async move {
        reloads("failure").await >= 1.0
    })
    .await;
    assert!(is_blocked(&ts, "a.blocked.test.").await);
    assert_eq!(accepted().await, 0.0, "the file as it is was rejected");
    // A list edit rebuilds the lists, reading the config again: neither a
    // config reload nor an acceptance.
    let failures = reloads("failure").await;
    std::fs::write(dir.path().join("a.txt"), "a.blocked.test\nd.blocked.test\n").unwrap();
    let udp = ts.udp;
    eventually("list edit applied", || async move {
        addresses(&ask(udp, "d.blocked.test.", RecordType::A).await) == ["0.0.0.0"]
    })
    .await;
    assert_eq!(reloads("failure").await, failures);
    assert_eq!(reloads("success").await, 0.0);
    assert_eq!(accepted().await, 0.0);

    // A good edit adds a list and changes the mode without a restart.
    write(&config_text(
        "[blocking]\nmode = \"nxdomain\"\n[[blocking.lists]]\nname = \"a\"\npath = \"a.txt\"\n[[blocking.lists]]\nname = \"b\"\npath = \"b.txt\"",
    ));
    let udp = ts.udp;
    eventually("new list and mode applied", || async move {
        ask(udp, "b.blocked.test.", RecordType::A)
            .await
            .metadata
            .response_code
            == ResponseCode::NXDomain
    })
    .await;
    assert_eq!(accepted().await, 1.0);
    // The new list's file is watched too.
    std::fs::write(dir.path().join("b.txt"), "c.blocked.test\n").unwrap();
    eventually("new list's file is watched", || async move {
        ask(udp, "c.blocked.test.", RecordType::A)
            .await
            .metadata
            .response_code
            == ResponseCode::NXDomain
    })
    .await;
    ts.stop().await;
}

#[tokio::test]
async fn api_reload_reports_success_and_failure() {
    let stub = Stub::start().await;
    let dir = dir_with(&[("a.txt", "a.blocked.test\n")]);
    let text = config_text("[[blocking.lists]]\nname = \"a\"\npath = \"a.txt\"");
    let ts = start_from_file(dir.path(), &text, &stub).await;
    let (status, body) = http_post(ts.http, "/api/reload").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("1 lists, 1 blocked domains"), "{body}");
    std::fs::write(dir.path().join("telesink.toml"), "[server\n").unwrap();
    let (status, body) = http_post(ts.http, "/api/reload").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("telesink.toml:1:"), "error located: {body}");
    assert!(is_blocked(&ts, "a.blocked.test.").await);
    ts.stop().await;
}

/// A local HTTP server for list downloads, whose behaviour the test sets.
struct ListServer {
    addr: std::net::SocketAddr,
    mode: Arc<std::sync::Mutex<&'static str>>,
    body: Arc<std::sync::Mutex<String>>,
    hits: Arc<AtomicUsize>,
    not_modified: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ListServer {
    async fn start(body: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(std::sync::Mutex::new("ok"));
        let body = Arc::new(std::sync::Mutex::new(body.to_string()));
        let hits = Arc::new(AtomicUsize::new(0));
        let not_modified = Arc::new(AtomicUsize::new(0));
        let (m, b, h, nm) = (
            mode.clone(),
            body.clone(),
            hits.clone(),
            not_modified.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let (m, b, h, nm) = (m.clone(), b.clone(), h.clone(), nm.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = stream.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        req.extend_from_slice(&buf[..n]);
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let req = String::from_utf8_lossy(&req).to_ascii_lowercase();
                    let body = b.lock().unwrap().clone();
                    let etag = format!("\"v{}\"", body.len());
                    let mode = *m.lock().unwrap();
                    let response = match mode {
                        "ok" if req.contains(&format!("if-none-match: {etag}")) => {
                            nm.fetch_add(1, Ordering::SeqCst);
                            "HTTP/1.1 304 Not Modified\r\nContent-Length: 0\r\n\r\n".to_string()
                        }
                        "ok" => format!(
                            "HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        ),
                        "error" => {
                            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n"
                                .to_string()
                        }
                        "slow" => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        // The list, after 1.5 s.
                        "late" => {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            )
                        }
                        // No Content-Length: the size shows only as it arrives.
                        "endless" => {
                            let big = "y.blocked.test\n".repeat(10_000);
                            format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{big}")
                        }
                        // A captive portal's page, announced as one or not.
                        "html" | "html-as-text" => {
                            let page = "\r\n <!DOCTYPE html>\n<html><body>\nx.blocked.test\n</body></html>\n";
                            let kind = if mode == "html" {
                                "text/html; charset=utf-8"
                            } else {
                                "text/plain"
                            };
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n{page}",
                                page.len()
                            )
                        }
                        "empty" => "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_string(),
                        // A 200 that is not a list: an API's error, a
                        // plain-text one, a compressed file.
                        "json" | "plain-error" | "gzip" => {
                            let body: &[u8] = match mode {
                                "json" => b"{\"error\": \"x.blocked.test: rate limited\"}\n",
                                "plain-error" => b"Too many requests, x.blocked.test.\n",
                                _ => b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcb\x48\xcd\xc9",
                            };
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            r.extend_from_slice(body);
                            let _ = stream.write_all(&r).await;
                            let _ = stream.shutdown().await;
                            return;
                        }
                        // The list, announced as a web page by a server
                        // that gets the type wrong.
                        "ok-as-html" => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        ),
                        "huge" => {
                            let big = "x.blocked.test\n".repeat(10_000);
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{big}",
                                big.len()
                            )
                        }
                        _ => unreachable!(),
                    };
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            addr,
            mode,
            body,
            hits,
            not_modified,
            task,
        }
    }

    fn set(&self, mode: &'static str) {
        *self.mode.lock().unwrap() = mode;
    }
}

impl Drop for ListServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_lists_download_refresh_fail_safely_and_survive_a_restart() {
    let stub = Stub::start().await;
    let server = ListServer::start("# remote list\nremote.blocked.test\n").await;
    let dir = dir_with(&[]);
    let text = config_text(&format!(
        "[blocking]\ncache_dir = \"cache\"\ndownload_timeout = \"1s\"\ndownload_max_bytes = 100000\n\
         [[blocking.lists]]\nname = \"remote\"\nurl = \"http://{}/list.txt\"\nrefresh = \"1h\"",
        server.addr
    ));
    let ts = start_from_file(dir.path(), &text, &stub).await;
    // Startup does not wait for the download; it lands in the background.
    let udp = ts.udp;
    eventually("downloaded list blocks", || async move {
        addresses(&ask(udp, "remote.blocked.test.", RecordType::A).await) == ["0.0.0.0"]
    })
    .await;
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    // A reload asks again with If-None-Match and gets 304.
    let (status, _) = http_post(ts.http, "/api/reload").await;
    assert_eq!(status, 200);
    assert_eq!(
        server.not_modified.load(Ordering::SeqCst),
        1,
        "conditional GET answered 304"
    );

    // A changed list is picked up.
    *server.body.lock().unwrap() = "remote.blocked.test\nnew.blocked.test\n".into();
    http_post(ts.http, "/api/reload").await;
    assert!(is_blocked(&ts, "new.blocked.test.").await);

    // 500, a timeout, an oversized body (announced, or only counted as it
    // arrives), a web page, an empty body and a 200 without a single rule
    // all keep the previous copy.
    let failures = [
        "error",
        "slow",
        "huge",
        "endless",
        "html",
        "html-as-text",
        "empty",
        "json",
        "plain-error",
        "gzip",
    ];
    for mode in failures {
        server.set(mode);
        let (status, _) = http_post(ts.http, "/api/reload").await;
        assert_eq!(status, 200, "{mode}: the reload itself succeeds");
        assert!(
            is_blocked(&ts, "new.blocked.test.").await,
            "{mode}: previous copy kept"
        );
        assert!(
            !is_blocked(&ts, "x.blocked.test.").await && !is_blocked(&ts, "y.blocked.test.").await,
            "{mode}: nothing of the bad download used"
        );
        let parts: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .collect();
        assert!(parts.is_empty(), "{mode}: part files left: {parts:?}");
    }
    let m = ts.metrics().await;
    assert_eq!(
        metric(
            &m,
            "telesink_blocklist_reloads_total{list=\"remote\",result=\"failure\"}"
        ),
        failures.len() as f64,
        "{m}"
    );
    // A list is taken by its text, whatever its Content-Type says.
    *server.body.lock().unwrap() = "new.blocked.test\nhtml.blocked.test\n".into();
    server.set("ok-as-html");
    http_post(ts.http, "/api/reload").await;
    assert!(is_blocked(&ts, "html.blocked.test.").await);
    assert_eq!(
        metric(&m, "telesink_blocklist_refresh_seconds{list=\"remote\"}"),
        3600.0
    );
    ts.stop().await;

    // Restart with the server gone: the copy on disk serves at once.
    drop(server);
    let ts = start_from_file(dir.path(), &text, &stub).await;
    assert!(
        is_blocked(&ts, "new.blocked.test.").await,
        "on-disk fallback after restart"
    );
    // Renamed in the config, the list keeps its copy (nothing to
    // download it from), under its new name only.
    let cached = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".list"))
            .collect();
        names.sort();
        names
    };
    assert_eq!(cached().len(), 1);
    assert!(cached()[0].starts_with("remote-"), "{:?}", cached());
    let renamed = text.replace("name = \"remote\"", "name = \"renamed\"");
    write_config(dir.path(), &renamed, &stub);
    http_post(ts.http, "/api/reload").await;
    assert!(is_blocked(&ts, "new.blocked.test.").await, "renamed list");
    assert_eq!(cached().len(), 2);
    assert!(cached()[1].starts_with("renamed-"), "{:?}", cached());
    ts.stop().await;

    // Copies no list has used for a week go, at the next start.
    let none = config_text("[blocking]\ncache_dir = \"cache\"");
    let ts = start_from_file(dir.path(), &none, &stub).await;
    assert!(!is_blocked(&ts, "new.blocked.test.").await);
    assert_eq!(cached().len(), 2, "kept for a week");
    ts.stop().await;
    // A week later (the copies and the marks telesink left on them):
    let week_ago = std::time::SystemTime::now() - Duration::from_secs(8 * 24 * 3600);
    for entry in std::fs::read_dir(dir.path().join("cache")).unwrap() {
        let file = std::fs::File::options()
            .append(true)
            .open(entry.unwrap().path())
            .unwrap();
        file.set_modified(week_ago).unwrap();
    }
    let ts = start_from_file(dir.path(), &none, &stub).await;
    let left: Vec<_> = std::fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    ts.stop().await;
}

#[tokio::test]
async fn api_explain_names_the_list_file_and_line_and_cname() {
    let stub = Stub::start().await;
    let dir = dir_with(&[
        ("block.txt", "# vendor\n\ntracker.test\n"),
        ("allow.txt", "ok.tracker.test\n"),
    ]);
    let config = config_text(
        "[[blocking.lists]]\nname = \"vendor\"\npath = \"block.txt\"\n[[blocking.allow]]\nname = \"keep\"\npath = \"allow.txt\"",
    );
    let ts = Telesink::start(&config, &[&stub], dir.path()).await;
    let json = |body: String| -> serde_json::Value { serde_json::from_str(&body).unwrap() };

    let v = json(
        http_get(ts.http, "/api/explain?name=a.tracker.test")
            .await
            .unwrap(),
    );
    assert_eq!(v["verdict"], "blocked");
    assert_eq!(v["rule"]["list"], "vendor");
    assert_eq!(v["rule"]["rule"], "tracker.test");
    assert_eq!(v["rule"]["line"], 3);

    let v = json(
        http_get(ts.http, "/api/explain?name=x.ok.tracker.test")
            .await
            .unwrap(),
    );
    assert_eq!(v["verdict"], "allowed");
    assert_eq!(v["rule"]["list"], "keep");
    assert_eq!(v["overrode"]["list"], "vendor");

    let v = json(http_get(ts.http, "/api/explain?name=a.test").await.unwrap());
    assert_eq!(v["verdict"], "not listed");
    assert_eq!(v["live"]["outcome"], "forwarded");

    let v = json(
        http_get(ts.http, "/api/explain?name=cloaked.test")
            .await
            .unwrap(),
    );
    assert_eq!(v["verdict"], "not listed");
    assert_eq!(v["live"]["outcome"], "blocked");
    assert_eq!(v["live"]["blocked_cname"], "collect.tracker.test.");
    assert_eq!(v["live"]["cname_rule"]["line"], 3);
    ts.stop().await;
}

/// What `/api/explain` says is what DNS does: for an international name
/// (the lists hold punycode), for a name two lists match in different
/// ways (the metric's `list` and the explanation name the same one), and
/// while blocking is paused through the API.
#[tokio::test]
async fn api_explain_agrees_with_the_query_path() {
    let stub = Stub::start().await;
    let dir = dir_with(&[
        ("first.txt", "*.example.test\nbücher.test\n"),
        ("second.txt", "example.test\n"),
    ]);
    let config = config_text(
        "[[blocking.lists]]\nname = \"first\"\npath = \"first.txt\"\n\
         [[blocking.lists]]\nname = \"second\"\npath = \"second.txt\"",
    );
    let ts = Telesink::start(&config, &[&stub], dir.path()).await;
    let explain = |name: &'static str| async move {
        let body = http_get(ts.http, &format!("/api/explain?name={name}"))
            .await
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };

    assert!(is_blocked(&ts, "xn--bcher-kva.test.").await);
    let v = explain("b%C3%BCcher.test").await;
    assert_eq!(v["verdict"], "blocked", "{v}");
    assert_eq!(v["name"], "xn--bcher-kva.test");
    assert_eq!(v["rule"]["line"], 2);

    assert!(is_blocked(&ts, "x.example.test.").await);
    let m = ts.metrics().await;
    // Both queries so far (the international name and this one).
    assert_eq!(metric(&m, "telesink_blocked_total{list=\"first\"}"), 2.0);
    assert_eq!(metric(&m, "telesink_blocked_total{list=\"second\"}"), 0.0);
    let v = explain("x.example.test").await;
    assert_eq!(v["rule"]["list"], "first", "{v}");
    assert_eq!(v["rule"]["rule"], "*.example.test");

    let (status, _) = http_post(ts.http, "/api/blocking?enabled=false").await;
    assert_eq!(status, 200);
    assert!(!is_blocked(&ts, "x.example.test.").await);
    let v = explain("x.example.test").await;
    assert_eq!(v["blocking_enabled"], false, "{v}");
    ts.stop().await;
}

#[test]
fn cli_explain_block_allow_override_and_not_listed() {
    let dir = dir_with(&[
        ("block.txt", "tracker.test\nxn--bcher-kva.test\n"),
        ("allow.txt", "# keep\nok.tracker.test\n"),
    ]);
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        "[[blocking.lists]]\nname = \"vendor\"\npath = \"block.txt\"\n[[blocking.allow]]\nname = \"keep\"\npath = \"allow.txt\"\n",
    )
    .unwrap();
    let run = |name: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_telesink"))
            .args(["explain", name, "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let out = run("a.tracker.test");
    assert!(
        out.starts_with("a.tracker.test: blocked by rule tracker.test in block list \"vendor\""),
        "{out}"
    );
    assert!(out.contains("block.txt, line 1)"), "{out}");
    let out = run("Z.OK.tracker.test.");
    assert!(
        out.starts_with(
            "z.ok.tracker.test: allowed by rule ok.tracker.test in allow list \"keep\""
        ),
        "{out}"
    );
    assert!(out.contains("allow.txt, line 2)"), "{out}");
    assert!(
        out.contains("overriding rule tracker.test in block list \"vendor\""),
        "{out}"
    );
    assert_eq!(run("example.org"), "example.org: not listed\n");
    // Asked in Unicode, explained as the punycode DNS and the list use.
    let out = run("Bücher.test");
    assert!(
        out.starts_with("xn--bcher-kva.test: blocked by rule xn--bcher-kva.test"),
        "{out}"
    );

    // A url list without a downloaded copy where the command looks: said.
    std::fs::write(
        &path,
        "[blocking]\ncache_dir = \"cache\"\n\
         [[blocking.lists]]\nname = \"remote\"\nurl = \"http://127.0.0.1:9/list.txt\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_telesink"))
        .args(["explain", "a.test", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("warning: list \"remote\" has no downloaded copy at"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_corrupt_list_copy_on_disk_is_survived() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    // Nothing listens on port 9 of loopback: downloads fail at once.
    let url = "http://127.0.0.1:9/list.txt";
    let paths = telesink::lists::CachePaths::new(&dir.path().join("cache"), "remote", url);
    std::fs::create_dir_all(paths.body.parent().unwrap()).unwrap();
    // A torn write: binary junk, a NUL, invalid UTF-8, a cut-off line, and
    // one good entry.
    let mut junk =
        b"\x00\xff\xfe garbage\n\xc3\x28 \xa0\xa1\nkept.blocked.test\npartial-entry.blo".to_vec();
    junk.extend((0..4096u32).map(|i| (i * 7919 % 251) as u8));
    std::fs::write(&paths.body, &junk).unwrap();
    std::fs::write(&paths.meta, b"\xffnot a header\n").unwrap();
    // Part files of downloads a killed process left behind.
    let cache = paths.body.parent().unwrap().to_path_buf();
    let parts = [
        cache.join("remote-0000.list.deadbeef.part"),
        cache.join("remote-0000.meta.0badf00d.part"),
    ];
    for part in &parts {
        std::fs::write(part, "half a list\n").unwrap();
    }
    let text = config_text(&format!(
        "[blocking]\ncache_dir = \"cache\"\ndownload_timeout = \"1s\"\n\
         [[blocking.lists]]\nname = \"remote\"\nurl = \"{url}\""
    ));
    let ts = start_from_file(dir.path(), &text, &stub).await;
    assert!(
        is_blocked(&ts, "kept.blocked.test.").await,
        "the good line of the copy is used"
    );
    eventually("left-over part files removed", || {
        let gone = parts.iter().all(|p| !p.exists());
        async move { gone }
    })
    .await;
    assert!(paths.body.exists() && paths.meta.exists(), "the copy stays");
    assert_eq!(
        addresses(&ask(ts.udp, "a.test.", RecordType::A).await),
        ["192.0.2.1"]
    );
    let m = ts.metrics().await;
    assert!(
        metric(&m, "telesink_blocklist_invalid_lines{list=\"remote\"}") >= 1.0,
        "{m}"
    );
    // A reload retries the download, fails, and keeps serving.
    let (status, _) = http_post(ts.http, "/api/reload").await;
    assert_eq!(status, 200);
    assert!(is_blocked(&ts, "kept.blocked.test.").await);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_directory_missing_or_made_anew_is_watched_again() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let lists = dir.path().join("lists");
    let config = config_text("[[blocking.lists]]\nname = \"mine\"\npath = \"lists/block.txt\"");
    // The directory does not exist yet.
    let ts = Telesink::start(&config, &[&stub], dir.path()).await;
    // Found within the rewatch period (5 s) and the debounce.
    let within = |secs| tokio::time::Instant::now() + Duration::from_secs(secs);
    let wait = |name: &'static str, deadline: tokio::time::Instant| {
        let ts = &ts;
        async move {
            while !is_blocked(ts, name).await {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{name} never blocked"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    std::fs::create_dir(&lists).unwrap();
    std::fs::write(lists.join("block.txt"), "one.blocked.test\n").unwrap();
    wait("one.blocked.test.", within(10)).await;
    // Replaced whole, as a deploy script or a checkout does.
    std::fs::remove_dir_all(&lists).unwrap();
    std::fs::create_dir(&lists).unwrap();
    std::fs::write(lists.join("block.txt"), "two.blocked.test\n").unwrap();
    wait("two.blocked.test.", within(10)).await;
    // Watched again: later edits apply too. (The events of the removal
    // may already have brought in "two"; only a watch on the new
    // directory sees this.)
    std::fs::write(lists.join("block.txt"), "three.blocked.test\n").unwrap();
    wait("three.blocked.test.", within(10)).await;
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_download_timeout_applies_without_a_restart() {
    let stub = Stub::start().await;
    let server = ListServer::start("remote.blocked.test\n").await;
    let dir = dir_with(&[]);
    let text = |timeout: &str| {
        config_text(&format!(
            "[blocking]\ncache_dir = \"cache\"\ndownload_timeout = \"{timeout}\"\n\
             [[blocking.lists]]\nname = \"remote\"\nurl = \"http://{}/list.txt\"\nrefresh = \"1h\"",
            server.addr
        ))
    };
    let ts = start_from_file(dir.path(), &text("1s"), &stub).await;
    let udp = ts.udp;
    eventually("downloaded list blocks", || async move {
        addresses(&ask(udp, "remote.blocked.test.", RecordType::A).await) == ["0.0.0.0"]
    })
    .await;
    // The server now takes 1.5 s: longer than download_timeout.
    *server.body.lock().unwrap() = "remote.blocked.test\nlate.blocked.test\n".into();
    server.set("late");
    http_post(ts.http, "/api/reload").await;
    assert!(!is_blocked(&ts, "late.blocked.test.").await, "timed out");
    // A longer timeout, edited in the config file, applies to the next
    // download.
    write_config(dir.path(), &text("5s"), &stub);
    let http = ts.http;
    eventually("config edit applied", || async move {
        let m = http_get(http, "/metrics").await.unwrap();
        metric(&m, "telesink_config_reloads_total{result=\"success\"}") >= 1.0
    })
    .await;
    http_post(ts.http, "/api/reload").await;
    assert!(is_blocked(&ts, "late.blocked.test.").await);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_that_is_a_symbolic_link_is_watched_where_it_points() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    std::fs::write(a.join("list.txt"), "one.blocked.test\n").unwrap();
    std::fs::write(b.join("list.txt"), "two.blocked.test\n").unwrap();
    let link = dir.path().join("list.txt");
    std::os::unix::fs::symlink(a.join("list.txt"), &link).unwrap();
    let config = config_text("[[blocking.lists]]\nname = \"mine\"\npath = \"list.txt\"");
    let ts = Telesink::start(&config, &[&stub], dir.path()).await;
    assert!(is_blocked(&ts, "one.blocked.test.").await);
    // An edit where it points applies.
    std::fs::write(a.join("list.txt"), "one.blocked.test\nx.blocked.test\n").unwrap();
    wait_blocked(&ts, "x.blocked.test.", true).await;
    // Pointed elsewhere at once, as `ln -sfn` does...
    let tmp = dir.path().join("list.txt.new");
    std::os::unix::fs::symlink(b.join("list.txt"), &tmp).unwrap();
    std::fs::rename(&tmp, &link).unwrap();
    wait_blocked(&ts, "two.blocked.test.", true).await;
    // ...and an edit there applies too.
    std::fs::write(b.join("list.txt"), "three.blocked.test\n").unwrap();
    wait_blocked(&ts, "three.blocked.test.", true).await;
    ts.stop().await;
}

/// Two lists in one directory, named through it and through a symbolic
/// link to it: edits to either apply, and the directory's watch survives
/// one of its names going out of use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_under_two_names_is_watched_under_both() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let real = dir.path().join("lists");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink(&real, dir.path().join("alias")).unwrap();
    std::fs::write(real.join("one.txt"), "one.blocked.test\n").unwrap();
    std::fs::write(real.join("two.txt"), "two.blocked.test\n").unwrap();
    let both = config_text(
        "[[blocking.lists]]\nname = \"one\"\npath = \"lists/one.txt\"\n\
         [[blocking.lists]]\nname = \"two\"\npath = \"alias/two.txt\"",
    );
    let ts = start_from_file(dir.path(), &both, &stub).await;
    assert!(is_blocked(&ts, "two.blocked.test.").await);
    std::fs::write(real.join("one.txt"), "one.blocked.test\na.blocked.test\n").unwrap();
    wait_blocked(&ts, "a.blocked.test.", true).await;
    std::fs::write(real.join("two.txt"), "two.blocked.test\nb.blocked.test\n").unwrap();
    wait_blocked(&ts, "b.blocked.test.", true).await;
    // The list named through the link goes; the other's edits still apply.
    let one = config_text("[[blocking.lists]]\nname = \"one\"\npath = \"lists/one.txt\"");
    write_config(dir.path(), &one, &stub);
    wait_blocked(&ts, "b.blocked.test.", false).await;
    std::fs::write(real.join("one.txt"), "c.blocked.test\n").unwrap();
    wait_blocked(&ts, "c.blocked.test.", true).await;
    // The directory link pointed elsewhere (as `ln -sfn` does): the list
    // is read from there within the 5 s rewatch, and its edits apply.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("one.txt"), "d.blocked.test\n").unwrap();
    std::fs::write(real.join("three.txt"), "f.blocked.test\n").unwrap();
    let via_alias = config_text(
        "[[blocking.lists]]\nname = \"one\"\npath = \"alias/one.txt\"\n\
         [[blocking.lists]]\nname = \"three\"\npath = \"lists/three.txt\"",
    );
    write_config(dir.path(), &via_alias, &stub);
    wait_blocked(&ts, "f.blocked.test.", true).await;
    let tmp = dir.path().join("alias.new");
    std::os::unix::fs::symlink(&other, &tmp).unwrap();
    std::fs::rename(&tmp, dir.path().join("alias")).unwrap();
    // Seen by the rewatch every 5 s, then debounced: more than
    // `eventually` waits.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !is_blocked(&ts, "d.blocked.test.").await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the list was not read where the link points now"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(other.join("one.txt"), "e.blocked.test\n").unwrap();
    wait_blocked(&ts, "e.blocked.test.", true).await;
    ts.stop().await;
}

/// Stopping does not wait for a reload's downloads: a list server that
/// accepts and never answers, with download_timeout at 20 s, and telesink
/// still stops at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_downloading_does_not_hold_up_the_stop() {
    use tokio::io::AsyncWriteExt;

    let stub = Stub::start().await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let dir = dir_with(&[]);
    let text = config_text(&format!(
        "[blocking]\ncache_dir = \"cache\"\ndownload_timeout = \"20s\"\n\
         [[blocking.lists]]\nname = \"remote\"\nurl = \"http://{addr}/list.txt\"\nrefresh = \"1h\""
    ));
    let ts = start_from_file(dir.path(), &text, &stub).await;
    // A reload through the API, which waits for it (not read here).
    let mut api = tokio::net::TcpStream::connect(ts.http).await.unwrap();
    let request = format!(
        "POST /api/reload HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
        ts.http
    );
    api.write_all(request.as_bytes()).await.unwrap();
    // The reload has read the config: it is downloading now.
    let http = ts.http;
    eventually("the reload started", || async move {
        let m = http_get(http, "/metrics").await.unwrap();
        metric(&m, "telesink_config_reloads_total{result=\"success\"}") >= 1.0
    })
    .await;
    let stopping = tokio::time::Instant::now();
    ts.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "stopped in {:?}",
        stopping.elapsed()
    );
    drop(api);
}

/// A url list whose copy on disk cannot be read (here a named pipe; in
/// life a file left by a run as another user) fails its list where the
/// alerts see it, and is downloaded again at once, not after `refresh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_list_copy_is_a_failure_and_downloaded_again() {
    let stub = Stub::start().await;
    let server = ListServer::start("remote.blocked.test\n").await;
    let dir = dir_with(&[]);
    let url = format!("http://{}/list.txt", server.addr);
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let paths = telesink::lists::CachePaths::new(&cache, "remote", &url);
    let copy = paths.body.clone();
    let made = std::process::Command::new("mkfifo")
        .arg(&copy)
        .status()
        .unwrap();
    assert!(made.success());
    // Its validators are current: sent, they would get a 304 that keeps
    // the copy that cannot be read.
    let body = "remote.blocked.test\n";
    std::fs::write(&paths.meta, format!("etag: \"v{}\"\n", body.len())).unwrap();
    let text = config_text(&format!(
        "[blocking]\ncache_dir = \"cache\"\n\
         [[blocking.lists]]\nname = \"remote\"\nurl = \"{url}\"\nrefresh = \"1d\""
    ));
    let ts = start_from_file(dir.path(), &text, &stub).await;
    let m = ts.metrics().await;
    assert!(
        metric(
            &m,
            "telesink_blocklist_reloads_total{list=\"remote\",result=\"failure\"}"
        ) >= 1.0,
        "{m}"
    );
    let udp = ts.udp;
    eventually("downloaded again at once", || async move {
        addresses(&ask(udp, "remote.blocked.test.", RecordType::A).await) == ["0.0.0.0"]
    })
    .await;
    assert!(std::fs::metadata(&copy).unwrap().is_file());
    assert_eq!(
        server.not_modified.load(Ordering::SeqCst),
        0,
        "asked unconditionally"
    );
    ts.stop().await;
}
