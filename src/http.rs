//! The HTTP listener: `GET /metrics` (Prometheus text format), `GET
//! /healthz`, and the admin API: `POST /api/reload`, `GET
//! /api/explain?name=NAME`, `GET /api/blocking` (the state), `POST
//! /api/blocking?enabled=false&for=10m`, `GET /api/blocked` (the last
//! blocked queries) and `POST /api/cache/flush`. The
//! admin API takes `[http] token` as a bearer token when one is set, and
//! `/metrics` takes `metrics_token`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::controls::Controls;
use crate::lists::ListStore;
use crate::metrics::Metrics;
use crate::recent::RecentBlocked;
use crate::reload::ReloadHandle;
use crate::resolver::{Answer, Outcome};

/// Resolves a name through the live chain (an A query from loopback).
pub type Lookup =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Option<Answer>> + Send>> + Send + Sync>;

/// What the HTTP handlers can see.
#[derive(Clone)]
pub struct HttpState {
    /// Every metric.
    pub metrics: Arc<Metrics>,
    /// Asks the list writer for a reload.
    pub reload: ReloadHandle,
    /// The current lists.
    pub lists: Arc<ListStore>,
    /// The running configuration.
    pub config: Arc<ArcSwap<Config>>,
    /// A live lookup, for explaining CNAME cloaking.
    pub lookup: Lookup,
    /// Runtime switches: pause blocking, flush the cache.
    pub controls: Arc<Controls>,
    /// The last blocked queries, unless `[http] recent_blocked = 0`.
    pub recent: Option<Arc<RecentBlocked>>,
    /// Whether the admin API is served at all.
    pub api: bool,
    /// `Authorization: Bearer` value the admin API requires, if any.
    pub token: Option<Arc<str>>,
    /// The same for `/metrics`.
    pub metrics_token: Option<Arc<str>>,
    /// Refused scrapes are logged at most once a minute.
    pub metrics_refused_log: Arc<crate::throttle::Throttle>,
}

/// Whether `headers` carry `Authorization: Bearer <expected>`. The
/// comparison takes the same time wherever the first difference is.
fn authorized(headers: &HeaderMap, expected: Option<&str>) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn require_token(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    if !authorized(request.headers(), state.token.as_deref()) {
        return unauthorized();
    }
    if let Some(why) = from_a_web_page(request.headers(), state.token.is_some()) {
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    next.run(request).await
}

/// Why a request to the admin API without a token looks like a web
/// page's, which it refuses: any page the browser shows could otherwise
/// pause blocking with a cross-site form POST, or read the API after
/// rebinding its own name to 127.0.0.1. With a token there is nothing to
/// refuse: a page does not have it.
///
/// - A browser marks a request a page made with `Origin` (every POST) or
///   `Sec-Fetch-Site`; curl, scripts and Prometheus send neither.
/// - Without a token the API listens on loopback only, so the `Host` a
///   client names is an address or `localhost`; a rebound page names its
///   own domain.
fn from_a_web_page(headers: &HeaderMap, has_token: bool) -> Option<&'static str> {
    if has_token {
        return None;
    }
    if made_by_a_page(headers) {
        return Some(
            "without [http] token, the admin API does not answer requests made by web pages\n",
        );
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if host.is_some_and(|h| !loopback_host(h)) {
        return Some(
            "without [http] token, the admin API answers only requests to 127.0.0.1, [::1] or localhost\n",
        );
    }
    None
}

/// Whether a browser marks the request as made by a page: `Origin` (every
/// POST, and cross-origin reads) or `Sec-Fetch-Site` other than `none`
/// (what the user typed in the address bar).
fn made_by_a_page(headers: &HeaderMap) -> bool {
    let site = headers.get("sec-fetch-site");
    headers.contains_key(header::ORIGIN) || site.is_some_and(|s| s != "none")
}

/// The name or address a `Host` header gives, without its port.
fn host_name(host: &str) -> &str {
    match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    }
}

/// Whether a `Host` header names an IP address or `localhost`, with or
/// without a port.
fn loopback_host(host: &str) -> bool {
    let name = host_name(host);
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Domains whose names only a home network (or a tailnet) resolves: a
/// page from the internet cannot be served under them.
const LAN_ZONES: [&str; 9] = [
    ".lan",
    ".local",
    ".home.arpa",
    ".internal",
    ".home",
    ".localdomain",
    ".localhost",
    ".fritz.box",
    ".ts.net",
];

/// Whether a `Host` header names what only the LAN can: an address,
/// `localhost`, a single label (`telesink`, `pi`) or a name under one of
/// [`LAN_ZONES`]. A rebinding page names a public domain.
fn lan_host(host: &str) -> bool {
    let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
    loopback_host(host)
        || (!name.is_empty() && !name.contains('.'))
        || LAN_ZONES.iter().any(|zone| name.ends_with(zone))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "missing or wrong bearer token ([http] token)\n",
    )
        .into_response()
}

async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if !authorized(&headers, state.metrics_token.as_deref()) {
        return unauthorized();
    }
    // Device and list names are private: without a token, a page must
    // not read them. Prometheus sends no browser headers, and names the
    // target as an address, localhost, a compose service (`telesink`) or
    // a LAN name; a page that rebinds its own name to this address names
    // that (and over plain http sends no Sec-Fetch-* headers at all).
    if state.metrics_token.is_none() {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        if made_by_a_page(&headers) || host.is_some_and(|h| !lan_host(h)) {
            if let Some(suppressed) = state.metrics_refused_log.ready() {
                tracing::warn!(
                    host = host.unwrap_or(""),
                    suppressed,
                    "/metrics refused a request from a web page or to a public name; scrape by address or LAN name, or set [http] metrics_token"
                );
            }
            return (
                StatusCode::FORBIDDEN,
                "without [http] metrics_token, /metrics answers only Prometheus and curl, at an address or a LAN name\n",
            )
                .into_response();
        }
    }
    // Derived at scrape time, the one place it is set: the config's
    // `enabled` (reloadable) and a pause from the API both change it.
    state.metrics.blocking_enabled.set(i64::from(
        state.lists.load().policy.enabled && !state.controls.paused(),
    ));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct BlockingParams {
    enabled: bool,
    /// Pause for this long, then resume by itself (`"10m"`).
    #[serde(default, rename = "for", with = "humantime_serde")]
    for_: Option<Duration>,
}

async fn set_blocking(State(state): State<HttpState>, Query(p): Query<BlockingParams>) -> Response {
    state.controls.set_paused(!p.enabled, p.for_);
    tracing::info!(enabled = p.enabled, "blocking switched from the API");
    blocking_status(State(state)).await
}

async fn blocking_status(State(state): State<HttpState>) -> Response {
    let configured = state.lists.load().policy.enabled;
    let paused = state.controls.paused();
    Json(serde_json::json!({
        "enabled": configured && !paused,
        "configured": configured,
        "paused": paused,
    }))
    .into_response()
}

async fn flush_cache(State(state): State<HttpState>) -> Response {
    let n = state.controls.flush_cache();
    tracing::info!(answers = n, "cache flushed from the API");
    format!("flushed {n} cached answers\n").into_response()
}

#[derive(Deserialize)]
struct BlockedParams {
    /// At most this many, newest first.
    limit: Option<usize>,
    /// Only this device (its `client` label) or client address.
    client: Option<String>,
    /// Only names equal to or under this domain.
    name: Option<String>,
}

async fn recent_blocked(
    State(state): State<HttpState>,
    Query(params): Query<BlockedParams>,
) -> Response {
    let Some(recent) = &state.recent else {
        return (
            StatusCode::NOT_FOUND,
            "blocked queries are not kept: [http] recent_blocked = 0\n",
        )
            .into_response();
    };
    let domain =
        match params.name.as_deref().map(|n| {
            crate::lists::normalize(n.trim().trim_end_matches('.')).map(|n| n.into_owned())
        }) {
            Some(Err(_)) => {
                let name = params.name.unwrap_or_default();
                return (
                    StatusCode::BAD_REQUEST,
                    format!("not a domain name: {name:?}\n"),
                )
                    .into_response();
            }
            Some(Ok(d)) => Some(d),
            None => None,
        };
    let client = params.client.as_deref().map(str::trim);
    let address = client.and_then(|c| c.parse::<std::net::IpAddr>().ok());
    let blocked = recent.list(params.limit.unwrap_or(100), |q| {
        client.is_none_or(|c| q.device == c || address == Some(q.client))
            && domain.as_deref().is_none_or(|d| {
                q.name == d
                    || q.name
                        .strip_suffix(d)
                        .is_some_and(|rest| rest.ends_with('.'))
            })
    });
    Json(serde_json::json!({ "blocked": blocked })).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn reload(State(state): State<HttpState>) -> Response {
    match state.reload.reload().await {
        Ok(summary) => (StatusCode::OK, format!("reloaded: {summary}\n")).into_response(),
        Err(error) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reload failed, still serving the previous configuration: {error}\n"),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct ExplainParams {
    name: String,
}

async fn explain(State(state): State<HttpState>, Query(params): Query<ExplainParams>) -> Response {
    // Lowercase and punycode, as the lists store names and DNS asks them.
    let name = match crate::lists::normalize(params.name.trim().trim_end_matches('.')) {
        Ok(name) => name.into_owned(),
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a domain name: {:?}\n", params.name),
            )
                .into_response();
        }
    };
    let snapshot = state.lists.load_full();
    let config = state.config.load_full();
    // Reading list files to find line numbers is blocking I/O.
    let (mut explained, snapshot) = {
        let name = name.clone();
        match tokio::task::spawn_blocking(move || {
            (crate::explain::explain(&snapshot, &config, &name), snapshot)
        })
        .await
        {
            Ok(r) => r,
            Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    };
    // Paused through this API: nothing is blocked, whatever the lists say.
    explained.blocking_disabled |= state.controls.paused();
    let mut body = explained.json();
    // A live lookup shows whether the answer's CNAME chain is blocked.
    if explained.verdict == "not listed"
        && let Some(answer) = (state.lookup)(name.clone()).await
    {
        let chain: Vec<String> = answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                hickory_proto::rr::RData::CNAME(t) => Some(t.0.to_ascii()),
                _ => None,
            })
            .collect();
        let mut live = serde_json::json!({
            "outcome": answer.outcome.label(),
            "cname_chain": chain,
        });
        if let Outcome::Blocked {
            list,
            cname: Some(target),
        } = &answer.outcome
        {
            live["blocked_list"] = serde_json::json!(&**list);
            live["blocked_cname"] = serde_json::json!(&**target);
            let config = state.config.load_full();
            let target = target.to_string();
            if let Ok(why) = tokio::task::spawn_blocking(move || {
                crate::explain::explain(&snapshot, &config, &target)
            })
            .await
            {
                live["cname_rule"] = why.json()["rule"].clone();
            }
        }
        body["live"] = live;
    }
    Json(body).into_response()
}

/// Serves HTTP on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let api = state.api;
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz));
    if api {
        let admin = Router::new()
            .route("/api/reload", post(reload))
            .route("/api/explain", get(explain))
            .route("/api/blocking", get(blocking_status).post(set_blocking))
            .route("/api/blocked", get(recent_blocked))
            .route("/api/cache/flush", post(flush_cache))
            .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
        app = app.merge(admin);
    }
    let app = app.with_state(state);
    accept_loop(listener, app, shutdown).await;
    Ok(())
}

/// Connections served at once; more are closed as they come. Prometheus,
/// a dashboard and an admin's curl need a handful.
const MAX_CONNECTIONS: usize = 64;

/// Connections one client address may hold of [`MAX_CONNECTIONS`], so a
/// single client cannot lock Prometheus and the admin out.
const MAX_PER_PEER: usize = 16;

/// How long a client has to send a request's headers, on a new connection
/// or a kept-alive one.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long open connections get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Open connections by client address.
type PeerCounts = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// One of a client address's [`MAX_PER_PEER`] connections, given back
/// when dropped.
struct PeerSlot {
    counts: PeerCounts,
    peer: std::net::IpAddr,
}

impl PeerSlot {
    fn take(counts: &PeerCounts, peer: std::net::IpAddr) -> Option<Self> {
        let mut map = counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = map.entry(peer).or_insert(0);
        if *open >= MAX_PER_PEER {
            return None;
        }
        *open += 1;
        Some(Self {
            counts: counts.clone(),
            peer,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(open) = map.get_mut(&self.peer) {
            *open -= 1;
            if *open == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// How long a response may wait for the client to read it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection whose writes fail once one has made no progress for
/// `timeout`: hyper has no write timeout, and a client that asks (or
/// pipelines) and never reads would hold its connection, and a slot of
/// [`MAX_CONNECTIONS`], for good. Reads pass through (hyper times the
/// headers). The timer exists only while a write waits.
struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// `poll` of a write or flush, with the deadline.
    fn timed<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        poll: impl FnOnce(
            Pin<&mut S>,
            &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>>
    where
        S: Unpin,
    {
        use std::task::Poll;
        match poll(Pin::new(&mut self.inner), cx) {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.timed(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.timed(cx, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.timed(cx, |inner, cx| inner.poll_shutdown(cx))
    }
}

/// Serves `app` on `listener` until `shutdown`, then waits at most
/// [`SHUTDOWN_GRACE`] for the requests being answered. Every connection
/// has [`HEADER_TIMEOUT`] per request's headers, [`WRITE_TIMEOUT`] for a
/// response that is not read, and a 16 KiB buffer, and at most
/// [`MAX_CONNECTIONS`] are open: a client that opens connections and
/// sends nothing, dribbles a header forever or never reads, holds neither
/// memory nor descriptors nor the shutdown (this listener may face the LAN, and
/// anything on the machine can reach it on loopback).
async fn accept_loop(listener: tokio::net::TcpListener, app: Router, shutdown: CancellationToken) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(16 * 1024);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_peer: PeerCounts = Arc::default();
    let connections = tokio_util::task::TaskTracker::new();
    // One throttle per warning: a flood of one kind must not hide another.
    let minute = Duration::from_secs(60);
    let (accept_log, peer_full_log, full_log) = (
        crate::throttle::Throttle::new(minute),
        crate::throttle::Throttle::new(minute),
        crate::throttle::Throttle::new(minute),
    );
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, mostly: give the others time to
                    // close rather than spin.
                    if let Some(suppressed) = accept_log.ready() {
                        tracing::warn!(%error, suppressed, "HTTP accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Some(peer_slot) = PeerSlot::take(&per_peer, peer.ip()) else {
            if let Some(suppressed) = peer_full_log.ready() {
                tracing::warn!(%peer, suppressed, "{MAX_PER_PEER} HTTP connections open from one address; closing its new ones");
            }
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(suppressed) = full_log.ready() {
                tracing::warn!(%peer, suppressed, "{MAX_CONNECTIONS} HTTP connections open; closing new ones");
            }
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stream = WriteDeadline::new(stream, WRITE_TIMEOUT);
        let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    // Idle connections close now; a request being answered
                    // gets the grace period.
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connection).await;
                }
            }
            drop((slot, peer_slot));
        });
    }
    connections.close();
    connections.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A write the other end never reads fails after the timeout; one it
    /// reads goes through.
    #[tokio::test]
    async fn a_write_nobody_reads_times_out() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut stream = WriteDeadline::new(near, Duration::from_millis(200));
        stream.write_all(&[0; 64]).await.unwrap();
        let started = std::time::Instant::now();
        let error = stream.write_all(&[0; 64]).await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
        // Read, it makes progress again, and the deadline starts anew.
        let mut buf = [0; 64];
        tokio::io::AsyncReadExt::read_exact(&mut far, &mut buf)
            .await
            .unwrap();
        stream.write_all(&[1; 64]).await.unwrap();
    }
}
