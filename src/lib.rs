//! telesink: a DNS sinkhole for home networks.
//!
//! Every device on the LAN uses telesink as its DNS server. It forwards
//! ordinary queries to upstream resolvers through a cache, answers names on
//! the block lists (phone-vendor telemetry first of all) with a sinkhole
//! address, and exports Prometheus metrics that show which lists block how
//! much.
//!
//! # Layout
//!
//! - [`config`]: the TOML configuration; strict serde structs, every error
//!   with file:line:column; the embedded default `config/telesink.toml`.
//! - [`lists`]: list parsing, the immutable [`lists::Snapshot`] of all
//!   lists behind one `ArcSwap` ([`lists::ListStore`]), and name matching.
//! - [`resolver`]: the chain each query flows through, assembled in
//!   [`resolver::chain`]: access control → blocking → cache → upstream,
//!   with CNAME targets checked on the way back. Every answer carries a
//!   typed [`resolver::Outcome`].
//! - [`server`]: socket binding and the hickory `RequestHandler` that turns
//!   requests into chain queries and answers into responses.
//! - [`clients`]: named devices (`[[clients]]` by address, network or MAC),
//!   the `client` label of per-device metrics.
//! - [`reload`]: the single writer of the list snapshot: file watching,
//!   SIGHUP, `POST /api/reload`, and scheduled downloads of `url` lists.
//! - [`explain`]: why a name is or is not blocked, to the file and line.
//! - [`metrics`]: every Prometheus metric, with bounded labels only.
//! - [`http`]: `/metrics`, `/healthz`, `/api/reload`, `/api/explain`.
//! - [`app`]: wiring; [`app::serve`] takes bound sockets and a shutdown
//!   token, so tests run the whole server on port 0.
//! - [`check`]: `telesink check-config`.
//! - [`fuzzing`]: the harness of the `request_path` fuzz target (`fuzz/`):
//!   [`server::answer_bytes`] runs the production handler on one packet
//!   without sockets, in front of an in-process fake upstream.

pub mod app;
pub mod check;
pub mod clients;
pub mod config;
pub mod explain;
pub mod fuzzing;
pub mod http;
pub mod lists;
pub mod metrics;
pub mod reload;
pub mod resolver;
pub mod server;
