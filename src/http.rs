//! The HTTP listener: `GET /metrics` (Prometheus text format),
//! `GET /healthz`, `POST /api/reload` and `GET /api/explain?name=NAME`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::lists::ListStore;
use crate::metrics::Metrics;
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
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
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
    let name = params
        .name
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if crate::lists::normalize(&name).is_err() {
        return (
            StatusCode::BAD_REQUEST,
            format!("not a domain name: {:?}\n", params.name),
        )
            .into_response();
    }
    let snapshot = state.lists.load_full();
    let config = state.config.load_full();
    // Reading list files to find line numbers is blocking I/O.
    let (explained, snapshot) = {
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
    let mut body = explained.json();
    // A live lookup shows whether the answer's CNAME chain is blocked.
    if explained.verdict == "not listed" {
        if let Some(answer) = (state.lookup)(name.clone()).await {
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
    }
    Json(body).into_response()
}

/// Serves HTTP on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/reload", post(reload))
        .route("/api/explain", get(explain))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
