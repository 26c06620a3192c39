//! Wiring: configuration in, a running server out.
//!
//! [`serve`] is the core: it takes already-bound sockets and a shutdown
//! token, so tests run it on port 0 and the binary on the configured
//! addresses. [`run`] binds, installs the signal handlers and calls it.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use arc_swap::ArcSwap;
use hickory_proto::rr::{DNSClass, LowerName, Name, RecordType};

use crate::clients::Clients;
use crate::config::Config;
use crate::controls::Controls;
use crate::lists::ListStore;
use crate::metrics::Metrics;
use crate::reload::{ReloadHandle, Reloader, publish};
use crate::resolver::{Query, Resolve, chain};
use crate::server::{Handler, Listeners};
use crate::tcp::TcpLimits;

/// Anything that stops telesink from starting or running.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Binds the configured addresses and serves until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), Error> {
    let listeners = Listeners::bind(&config.server.listen, config.http.listen)?;
    crate::privileges::drop_privileges(&config)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(shutdown_on_signal(shutdown.clone()));
    serve(config, listeners, shutdown).await
}

async fn shutdown_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                token.cancel();
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    token.cancel();
}

/// Serves DNS on `listeners` with `config` until `shutdown` is cancelled,
/// then finishes the requests in flight and returns.
pub async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let started = Instant::now();
    let metrics = Arc::new(Metrics::new());
    // Taken over before the first build, which takes seconds with a big
    // list: until then SIGHUP's default action would end the process.
    // One that comes meanwhile reloads once the writer runs.
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());

    // Lists are parsed on the blocking pool: a million-line file must not
    // hold up a runtime worker.
    let build_started = std::time::SystemTime::now();
    let for_build = config.clone();
    let snapshot = tokio::task::spawn_blocking(move || {
        // A list renamed since the last run keeps its downloaded copy.
        crate::lists::tidy_cache(&for_build);
        crate::lists::build(&for_build, None)
    })
    .await?;
    publish(&metrics, &snapshot);
    let summary = snapshot.summary();
    let lists = Arc::new(ListStore::new(snapshot));
    let shared_config = Arc::new(ArcSwap::from_pointee(config.clone()));

    // The single writer of the list snapshot.
    let (reloader, reload) = Reloader::new(
        config.path.clone(),
        shared_config.clone(),
        lists.clone(),
        metrics.clone(),
    );
    let reloader = reloader.first_build_started(build_started);
    let reloader = tokio::spawn(reloader.run(shutdown.clone()));
    #[cfg(unix)]
    tokio::spawn(reload_on_sighup(hup, reload.clone(), shutdown.clone()));

    let clients = Arc::new(Clients::new(&config.clients, &config.metrics));
    tokio::spawn(
        clients
            .clone()
            .refresh_task(config.metrics.neighbour_refresh, shutdown.clone()),
    );
    let controls = Arc::new(Controls::default());
    let chain = Arc::new(chain(
        &config,
        lists.clone(),
        metrics.clone(),
        controls.clone(),
    ));
    // Kept only where the admin API can show them.
    let recent = if config.http.api && config.http.listen.is_some() {
        crate::recent::RecentBlocked::new(config.http.recent_blocked)
    } else {
        None
    };
    let handler = Handler::new(
        chain.clone(),
        metrics.clone(),
        clients,
        config.server.edns_udp_size,
    )
    .with_recent_blocked(recent.clone());
    let handler = Arc::new(handler);
    let mut udp_servers = Vec::new();
    for udp in listeners.udp {
        let addr = udp.local_addr()?;
        tracing::info!(%addr, "listening for DNS over UDP");
        let threads = config.server.udp_threads;
        let max_waiting = config.server.udp_max_waiting;
        let server =
            crate::udp::start(udp, threads, max_waiting, handler.clone(), shutdown.clone())
                .map_err(|e| {
                    format!(
                        "cannot start {threads} UDP thread(s) for {addr}: {e} \
                     (lower [server] udp_threads, or raise the process's thread limit)"
                    )
                })?;
        udp_servers.push(server);
    }
    let limits = TcpLimits {
        max_connections: config.server.max_tcp_connections,
        max_per_client: config.server.max_tcp_connections_per_client,
        first_byte_timeout: config.server.tcp_first_byte_timeout,
        idle_timeout: config.server.tcp_timeout,
        max_pipelined: config.server.tcp_max_pipelined,
    };
    let allowed: crate::tcp::Allowed = config.server.allow_clients.clone().into();
    // One set of slots: the connection caps count every listen address.
    let slots = crate::tcp::TcpSlots::new(&limits);
    let mut tcp_servers = Vec::new();
    for tcp in listeners.tcp {
        tracing::info!(addr = %tcp.local_addr()?, "listening for DNS over TCP");
        tcp_servers.push(tokio::spawn(crate::tcp::serve(
            tcp,
            handler.clone(),
            limits,
            slots.clone(),
            allowed.clone(),
            shutdown.clone(),
        )));
    }
    let http = match listeners.http {
        Some(listener) => {
            tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /api over HTTP");
            let state = crate::http::HttpState {
                metrics: metrics.clone(),
                reload,
                lists,
                config: shared_config,
                lookup: live_lookup(chain),
                controls,
                recent,
                api: config.http.api,
                token: config.http.token.as_deref().map(Arc::from),
                metrics_token: config.http.metrics_token.as_deref().map(Arc::from),
                metrics_refused_log: Arc::new(crate::throttle::Throttle::new(
                    std::time::Duration::from_secs(60),
                )),
            };
            Some(tokio::spawn(crate::http::serve(
                listener,
                state,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    tracing::info!(
        "telesink {} ready: {summary}, started in {:.0?}",
        env!("CARGO_PKG_VERSION"),
        started.elapsed()
    );
    crate::systemd::ready(&format!("serving {summary}"));
    if let Some(period) = crate::systemd::watchdog_period() {
        let beats = udp_servers.iter().flat_map(|s| s.heartbeats()).collect();
        tracing::info!("pinging systemd's watchdog every {:?}", period / 2);
        tokio::spawn(crate::systemd::watchdog(period, beats, shutdown.clone()));
    }

    shutdown.cancelled().await;
    crate::systemd::stopping();
    for udp in udp_servers {
        udp.stopped().await;
    }
    for tcp in tcp_servers {
        let _ = tcp.await;
    }
    if let Some(http) = http {
        http.await??;
    }
    let _ = reloader.await;
    tracing::info!("stopped");
    Ok(())
}

/// An A lookup through the live chain, as a client on loopback would make.
fn live_lookup<R: Resolve>(chain: Arc<R>) -> crate::http::Lookup {
    Arc::new(move |name: String| {
        let chain = chain.clone();
        Box::pin(async move {
            let mut name = Name::from_ascii(&name).ok()?.to_lowercase();
            name.set_fqdn(true);
            let name = LowerName::from(name);
            let query = Query {
                name: &name,
                qtype: RecordType::A,
                qclass: DNSClass::IN,
                client: std::net::Ipv4Addr::LOCALHOST.into(),
                checking_disabled: false,
            };
            Some(chain.resolve(&query).await)
        })
    })
}

#[cfg(unix)]
async fn reload_on_sighup(
    hup: std::io::Result<tokio::signal::unix::Signal>,
    reload: ReloadHandle,
    shutdown: CancellationToken,
) {
    let mut hup = match hup {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP received, reloading");
                reload.signal().await;
            }
            _ = shutdown.cancelled() => return,
        }
    }
}
