//! The dashboard and alert rules proven against a real Prometheus.
//!
//! Starts telesink (stub upstream, a vendor block list, two named devices),
//! starts the `prometheus` binary scraping it every second on loopback with
//! deploy/prometheus/telesink.rules.yml loaded, sends allowed, blocked,
//! cached, NXDOMAIN and SERVFAIL queries from 127.0.0.2 ("phone"),
//! 127.0.0.3 ("tv") and 127.0.0.1 (unnamed), then evaluates every PromQL
//! expression of every panel of deploy/grafana/telesink.json through
//! Prometheus's HTTP API and fails listing each one that returns no series.
//!
//! Needs Prometheus (Debian: `apt-get install prometheus`). Without it the
//! test fails under CI (`CI` set, where .ci/run installs it) and is skipped
//! with a message otherwise.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use hickory_proto::rr::RecordType;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

const CONFIG: &str = r#"
[upstream]
servers = [{upstreams}]
timeout = "300ms"
[http]
listen = "127.0.0.1:0"
[[blocking.lists]]
name = "xiaomi"
path = "xiaomi.txt"
[[clients]]
name = "phone"
ips = ["127.0.0.2"]
[[clients]]
name = "tv"
ips = ["127.0.0.3"]
"#;

/// How long Prometheus may take to start and scrape telesink.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(30);
/// How long, after the first samples, every dashboard query may take to
/// return series (rates need two scrapes inside their window).
const PANELS_DEADLINE: Duration = Duration::from_secs(20);

/// Values substituted for Grafana's template variables, longest name first
/// so `$__rate_interval` is not mistaken for a shorter variable.
const VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "15s"),
    ("${__rate_interval}", "15s"),
    ("$__interval", "15s"),
    ("${__interval}", "15s"),
    ("$__range", "5m"),
    ("${__range}", "5m"),
    ("${instance}", ".*"),
    ("$instance", ".*"),
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `prometheus` binary: on PATH, or where Debian installs it.
fn find_prometheus() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("prometheus"));
    on_path
        .chain([PathBuf::from("/usr/bin/prometheus")])
        .find(|p| p.is_file())
}

/// A TCP port that was free a moment ago (Prometheus cannot report a port
/// it chose itself, so it is given one).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Percent-encodes a query-string value.
fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A plain HTTP/1.1 GET; returns the status code and the body (chunked
/// transfer encoding decoded).
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "slow HTTP"))??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP header in {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> std::io::Result<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or_else(|| std::io::Error::other("truncated chunk"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
            .map_err(std::io::Error::other)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(
            after
                .get(..size)
                .ok_or_else(|| std::io::Error::other("truncated chunk"))?,
        );
        rest = after[size..].trim_start_matches("\r\n");
    }
}

/// A running Prometheus and what it needs to be queried and diagnosed.
struct Prometheus {
    addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Prometheus {
    async fn start(bin: &Path, dir: &Path, telesink: SocketAddr) -> Self {
        let rules = repo().join("deploy/prometheus/telesink.rules.yml");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules:?}\n\
             scrape_configs:\n  - job_name: telesink\n    static_configs:\n      - targets: [\"{telesink}\"]\n"
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            log,
        }
    }

    /// Prometheus's own log, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if Prometheus has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("prometheus exited with {status}:\n{}", self.log());
        }
    }

    /// GETs an API path and returns its `data`, or an error text.
    async fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = get(self.addr, path).await.map_err(|e| e.to_string())?;
        let json: Value =
            serde_json::from_str(&body).map_err(|e| format!("HTTP {status}: {e}: {body}"))?;
        if json["status"] != "success" {
            return Err(format!("HTTP {status}: {body}"));
        }
        Ok(json["data"].clone())
    }

    /// Evaluates `expr` now; returns how many series it yields.
    async fn count(&self, expr: &str) -> Result<usize, String> {
        let data = self
            .api(&format!("/api/v1/query?query={}", urlencode(expr)))
            .await?;
        Ok(match data["resultType"].as_str() {
            Some("vector" | "matrix") => data["result"].as_array().map_or(0, Vec::len),
            Some("scalar" | "string") => 1,
            other => return Err(format!("unexpected resultType {other:?}")),
        })
    }

    /// The result of `expr` as (labels, value) pairs.
    async fn vector(&self, expr: &str) -> Vec<(Value, f64)> {
        let data = self
            .api(&format!("/api/v1/query?query={}", urlencode(expr)))
            .await
            .unwrap_or_else(|e| panic!("{expr}: {e}"));
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let v = s["value"][1].as_str().unwrap().parse().unwrap();
                (s["metric"].clone(), v)
            })
            .collect()
    }
}

/// Every panel's target expressions (rows' nested panels included), as
/// (panel title, expression).
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("(untitled)");
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.to_string(), expr.to_string()));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every telesink_* / process_* selector in `expr` must filter on the
/// dashboard's instance variable.
fn unfiltered_selectors(expr: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut bad = Vec::new();
    let mut i = 0;
    while i < expr.len() {
        let rest = &expr[i..];
        let starts_metric = (rest.starts_with("telesink_") || rest.starts_with("process_"))
            && !expr[..i].ends_with(is_ident);
        if !starts_metric {
            i += rest.chars().next().unwrap().len_utf8();
            continue;
        }
        let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        let name = &rest[..end];
        let after = rest[end..].trim_start();
        let filtered = after
            .strip_prefix('{')
            .and_then(|a| a.split('}').next())
            .is_some_and(|labels| labels.contains("instance=~\"$instance\""));
        if !filtered {
            bad.push(name.to_string());
        }
        i += end;
    }
    bad
}

fn substitute(expr: &str) -> String {
    let mut out = expr.to_string();
    for (var, value) in VARIABLES {
        out = out.replace(var, value);
    }
    out
}

/// One round of the household's traffic: allowed, blocked (vendor list),
/// cached repeats, NXDOMAIN and SERVFAIL, from two named devices and one
/// unnamed client.
async fn traffic(ts: &Telesink) {
    let q = |name: &str, t| request(name, t, true);
    for (from, name, qtype) in [
        ("127.0.0.2:0", "a.test.", RecordType::A),
        ("127.0.0.2:0", "x.tracker.test.", RecordType::A),
        ("127.0.0.2:0", "a.test.", RecordType::A),
        ("127.0.0.2:0", "nope.test.", RecordType::A),
        ("127.0.0.3:0", "a.test.", RecordType::AAAA),
        ("127.0.0.3:0", "y.tracker.test.", RecordType::A),
        ("127.0.0.3:0", "a.test.", RecordType::AAAA),
        ("127.0.0.3:0", "servfail.test.", RecordType::A),
        ("127.0.0.1:0", "www.test.", RecordType::A),
    ] {
        udp_from(from, ts.udp, &q(name, qtype)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    let Some(bin) = find_prometheus() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus not found on PATH or at /usr/bin/prometheus; CI must install it (apt-get install prometheus)"
        );
        eprintln!(
            "SKIPPED prometheus_e2e: no prometheus binary on PATH or at /usr/bin/prometheus \
             (apt-get install prometheus to run this test; under CI it is required)"
        );
        return;
    };

    // The dashboard is checked before anything starts.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/telesink.json")).unwrap(),
    )
    .expect("deploy/grafana/telesink.json is JSON");
    let exprs = dashboard_exprs(&dashboard);
    assert!(
        exprs.len() >= 20,
        "only {} panel queries found",
        exprs.len()
    );
    let unfiltered: Vec<String> = exprs
        .iter()
        .flat_map(|(title, expr)| {
            unfiltered_selectors(expr)
                .into_iter()
                .map(move |m| format!("{title}: {m} in {expr}"))
        })
        .collect();
    assert!(
        unfiltered.is_empty(),
        "selectors without {{instance=~\"$instance\"}}:\n{}",
        unfiltered.join("\n")
    );

    let stub = Stub::start().await;
    let dir = dir_with(&[("xiaomi.txt", "# vendor telemetry\ntracker.test\n")]);
    let ts = Telesink::start(CONFIG, &[&stub], dir.path()).await;
    traffic(&ts).await;

    let mut prom = Prometheus::start(&bin, dir.path(), ts.http).await;

    // Phase 1: Prometheus is up and has scraped telesink's queries.
    let deadline = Instant::now() + SCRAPE_DEADLINE;
    loop {
        prom.assert_running();
        let scraped = prom.count("telesink_queries_total{job=\"telesink\"}").await;
        if scraped.is_ok_and(|n| n > 0) {
            break;
        }
        if Instant::now() > deadline {
            let targets = prom.api("/api/v1/targets").await;
            panic!(
                "no telesink_queries_total samples in Prometheus after {SCRAPE_DEADLINE:?}\n\
                 targets: {targets:?}\nprometheus log:\n{}",
                prom.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Phase 2: every panel query returns series. Traffic keeps flowing so
    // rates are not zero.
    let mut pending: BTreeSet<(String, String)> = exprs.iter().cloned().collect();
    let mut errors = Vec::new();
    let deadline = Instant::now() + PANELS_DEADLINE;
    while !pending.is_empty() && Instant::now() < deadline {
        prom.assert_running();
        traffic(&ts).await;
        let mut done = Vec::new();
        for (title, expr) in &pending {
            let promql = substitute(expr);
            assert!(
                !promql.contains('$'),
                "{title}: unknown template variable in {expr}"
            );
            match prom.count(&promql).await {
                Ok(0) => {}
                Ok(_) => done.push((title.clone(), expr.clone())),
                // A query Prometheus rejects never succeeds later.
                Err(e) => {
                    errors.push(format!("{title}: {promql}\n    {e}"));
                    done.push((title.clone(), expr.clone()));
                }
            }
        }
        for d in done {
            pending.remove(&d);
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let empty: Vec<String> = pending
        .iter()
        .map(|(title, expr)| format!("{title}: {}", substitute(expr)))
        .collect();
    println!(
        "{} of {} dashboard queries returned series",
        exprs.len() - empty.len() - errors.len(),
        exprs.len()
    );
    assert!(
        errors.is_empty() && empty.is_empty(),
        "dashboard queries rejected by Prometheus:\n{}\n\ndashboard queries with no series:\n{}",
        errors.join("\n"),
        empty.join("\n")
    );

    // The template variable the panels filter on has values.
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] != "query" {
            continue;
        }
        let def = var["definition"].as_str().unwrap();
        let args = def
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("unsupported variable query {def}"));
        let (metric, label) = args.split_once(',').unwrap();
        let promql = format!("count by ({}) ({})", label.trim(), metric.trim());
        assert!(
            prom.count(&promql).await.unwrap() > 0,
            "variable {}: {def} has no values",
            var["name"]
        );
    }

    // The numbers mean what the panels say: both devices were seen
    // blocked by the vendor list, and some but not all queries were blocked.
    let per_device = prom
        .vector("sum by (client, list) (telesink_client_blocked_total)")
        .await;
    for device in ["phone", "tv"] {
        assert!(
            per_device
                .iter()
                .any(|(m, v)| m["client"] == device && m["list"] == "xiaomi" && *v >= 1.0),
            "{device} has no blocked xiaomi telemetry: {per_device:?}"
        );
    }
    let outcomes: BTreeSet<String> = prom
        .vector("sum by (outcome) (telesink_queries_total)")
        .await
        .into_iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(m, _)| m["outcome"].as_str().unwrap().to_string())
        .collect();
    for outcome in ["blocked", "cached", "forwarded"] {
        assert!(
            outcomes.contains(outcome),
            "no {outcome} queries: {outcomes:?}"
        );
    }

    // The alert rules load and evaluate against real series without error.
    let deadline = Instant::now() + SCRAPE_DEADLINE;
    loop {
        let groups = prom.api("/api/v1/rules").await.unwrap();
        let rules: Vec<&Value> = groups["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert!(rules.len() >= 5, "rules not loaded: {groups}");
        let broken: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] == "err")
            .map(|r| format!("{}: {}", r["name"], r["lastError"]))
            .collect();
        assert!(broken.is_empty(), "rules failing: {broken:?}");
        if rules.iter().all(|r| r["health"] == "ok") {
            break;
        }
        assert!(Instant::now() < deadline, "rules never evaluated: {groups}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    drop(prom);
    ts.stop().await;
}
