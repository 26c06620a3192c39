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
//!   [`resolver::chain_with`]: access control → rate limit → local names →
//!   blocking (CNAME targets and rebinding checked on the way back) → ANY
//!   (RFC 8482) → cache (serve-stale, shared requests, prefetch) →
//!   upstream (with `[[forward]]` rules choosing the upstreams). Every
//!   answer carries a typed [`resolver::Outcome`].
//! - [`upstream`]: transports to upstream resolvers: plain UDP/TCP,
//!   DNS-over-TLS and DNS-over-HTTPS, pooled and pipelined connections,
//!   random-port UDP sockets reused a few times per thread, bootstrap
//!   resolution of their host names.
//! - [`server`]: socket binding and the request handler that turns
//!   requests (parsed by hickory) into chain queries and answers into
//!   responses.
//! - [`clients`]: named devices (`[[clients]]` by address, network or MAC),
//!   the `client` label of per-device metrics.
//! - [`reload`]: the single writer of the list snapshot: file watching,
//!   SIGHUP, `POST /api/reload`, and scheduled downloads of `url` lists.
//! - [`explain`]: why a name is or is not blocked, to the file and line.
//! - [`udp`]: DNS over UDP: receive threads, each with its own
//!   single-threaded runtime, that answer blocked names and fresh cache
//!   hits inline from pre-encoded bytes (the chain's
//!   [`resolver::Resolve::peek`]) and run everything else through the
//!   handler.
//! - [`tcp`]: DNS over TCP with connection caps, first-byte and idle
//!   timeouts, and pipelined queries answered out of order.
//! - [`metrics`]: every Prometheus metric, with bounded labels only.
//! - [`recent`]: the last blocked queries, in memory, for the admin API:
//!   the names the metrics' labels never hold.
//! - [`http`]: `/metrics`, `/healthz` and the admin API (`/api/reload`,
//!   `/api/explain`, `/api/blocking`, `/api/blocked`, `/api/cache/flush`),
//!   with bearer tokens.
//! - [`controls`]: runtime switches the admin API sets (pause blocking,
//!   flush the cache).
//! - [`app`]: wiring; [`app::serve`] takes bound sockets and a shutdown
//!   token, so tests run the whole server on port 0.
//! - [`check`]: `telesink check-config`.
//! - [`privileges`]: switching from root to `[server] user` after binding.
//! - [`systemd`]: readiness, the status line and the watchdog, whose pings
//!   stop when a UDP receive thread stops running.
//! - [`throttle`]: rate-limited warnings under a flood.
//! - [`fuzzing`]: the harness of the `request_path` fuzz target (`fuzz/`):
//!   [`server::answer_bytes`] runs the production handler on one packet
//!   without sockets, in front of an in-process fake upstream.

pub mod app;
pub mod check;
pub mod clients;
pub mod config;
pub mod controls;
pub mod explain;
pub mod fuzzing;
pub mod http;
pub mod lists;
pub mod metrics;
pub mod privileges;
pub mod recent;
pub mod reload;
pub mod resolver;
pub mod server;
pub mod systemd;
pub mod tcp;
pub mod throttle;
pub mod udp;
pub mod upstream;
