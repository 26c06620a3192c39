//! Prometheus metrics: one struct of handles, created once, passed in.
//!
//! Labels come only from small fixed sets (outcome, query type, rcode,
//! upstream address from config, list name from config), never from a
//! queried domain or a client address, so the number of series stays
//! bounded however many names a household looks up.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use std::sync::{Arc, OnceLock};

use crate::clients::Device;
use crate::resolver::{OUTCOME_LABELS, Outcome};

/// Histogram buckets for DNS latencies: 100 µs (a cache hit) to 2 s (an
/// upstream that is about to time out).
const DNS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0,
];

/// Every metric telesink exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    hot: Arc<HotHandles>,
    /// `telesink_queries_total{qtype,outcome}`
    pub queries: IntCounterVec,
    /// `telesink_responses_total{rcode}`
    pub responses: IntCounterVec,
    /// `telesink_blocked_total{list}`
    pub blocked: IntCounterVec,
    /// `telesink_query_duration_seconds{outcome}`
    pub query_duration: HistogramVec,
    /// `telesink_cache_hits_total`
    pub cache_hits: IntCounter,
    /// `telesink_cache_misses_total`
    pub cache_misses: IntCounter,
    /// `telesink_overload_dropped_total`
    pub overload_dropped: IntCounter,
    /// `telesink_cache_entries`, set when scraped.
    pub cache_entries: IntGauge,
    /// `telesink_cache_prefetches_total{result}`
    pub cache_prefetches: IntCounterVec,
    /// `telesink_upstream_requests_total{upstream,result}`
    pub upstream_requests: IntCounterVec,
    /// `telesink_upstream_duration_seconds{upstream}`
    pub upstream_duration: HistogramVec,
    /// `telesink_upstream_healthy{upstream}`
    pub upstream_healthy: IntGaugeVec,
    /// `telesink_blocklist_domains{list}`
    pub blocklist_domains: IntGaugeVec,
    /// `telesink_blocklist_invalid_lines{list}`
    pub blocklist_invalid_lines: IntGaugeVec,
    /// `telesink_blocklist_build_seconds`: how long the last list build took.
    pub blocklist_build_seconds: Histogram,
    /// `telesink_blocking_enabled`
    pub blocking_enabled: IntGauge,
    /// `telesink_client_queries_total{client,outcome}`
    pub client_queries: IntCounterVec,
    /// `telesink_client_blocked_total{client,list}`
    pub client_blocked: IntCounterVec,
    /// `telesink_client_last_query_timestamp_seconds{client}`
    pub client_last_query: GaugeVec,
    /// `telesink_config_reloads_total{result}`
    pub config_reloads: IntCounterVec,
    /// `telesink_config_last_reload_successful`
    pub config_last_reload_ok: IntGauge,
    /// `telesink_blocklist_reloads_total{list,result}`
    pub blocklist_reloads: IntCounterVec,
    /// `telesink_blocklist_last_success_timestamp_seconds{list}`
    pub blocklist_last_success: GaugeVec,
    /// `telesink_blocklist_refresh_seconds{list}`
    pub blocklist_refresh: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let metrics = Self {
            queries: counter_vec(
                r,
                "telesink_queries_total",
                "DNS queries answered, by query type and outcome (blocked, cached, stale, forwarded, local, refused, ratelimited, error).",
                &["qtype", "outcome"],
            ),
            responses: counter_vec(
                r,
                "telesink_responses_total",
                "DNS responses sent, by response code.",
                &["rcode"],
            ),
            blocked: counter_vec(
                r,
                "telesink_blocked_total",
                "Queries blocked, by the configured name of the list that blocked them.",
                &["list"],
            ),
            query_duration: histogram_vec(
                r,
                "telesink_query_duration_seconds",
                "Time from receiving a query to sending its answer, by outcome.",
                &["outcome"],
            ),
            cache_hits: counter(
                r,
                "telesink_cache_hits_total",
                "Answers served from the cache.",
            ),
            cache_misses: counter(
                r,
                "telesink_cache_misses_total",
                "Cache lookups that found no fresh answer.",
            ),
            cache_entries: gauge(r, "telesink_cache_entries", "Answers currently cached."),
            overload_dropped: counter(
                r,
                "telesink_overload_dropped_total",
                "UDP queries dropped unanswered because their thread already had [server] udp_max_waiting queries waiting.",
            ),
            cache_prefetches: counter_vec(
                r,
                "telesink_cache_prefetches_total",
                "Popular answers refreshed before they expired, by result (success, failure).",
                &["result"],
            ),
            upstream_requests: counter_vec(
                r,
                "telesink_upstream_requests_total",
                "Requests sent to upstream resolvers, by upstream and result (ok, nxdomain, servfail, refused, formerr, notimp, truncated, other, timeout, error).",
                &["upstream", "result"],
            ),
            upstream_duration: histogram_vec(
                r,
                "telesink_upstream_duration_seconds",
                "Round-trip time of upstream requests that got an answer, by upstream.",
                &["upstream"],
            ),
            upstream_healthy: gauge_vec(
                r,
                "telesink_upstream_healthy",
                "1 while an upstream answers, 0 while it is skipped after repeated timeouts or errors.",
                &["upstream"],
            ),
            blocklist_domains: gauge_vec(
                r,
                "telesink_blocklist_domains",
                "Distinct domains loaded from each block or allow list.",
                &["list"],
            ),
            blocklist_invalid_lines: gauge_vec(
                r,
                "telesink_blocklist_invalid_lines",
                "Lines skipped as invalid in each list.",
                &["list"],
            ),
            blocklist_build_seconds: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "telesink_blocklist_build_seconds",
                        "Time taken to build the list snapshot.",
                    )
                    .buckets(vec![0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                )
                .expect("valid histogram");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            blocking_enabled: gauge(
                r,
                "telesink_blocking_enabled",
                "1 when blocking is on, 0 when it is turned off or paused.",
            ),
            client_queries: counter_vec(
                r,
                "telesink_client_queries_total",
                "Queries per configured device (unknown for unnamed clients), by outcome.",
                &["client", "outcome"],
            ),
            client_blocked: counter_vec(
                r,
                "telesink_client_blocked_total",
                "Blocked queries per configured device and list.",
                &["client", "list"],
            ),
            client_last_query: {
                let g = GaugeVec::new(
                    Opts::new(
                        "telesink_client_last_query_timestamp_seconds",
                        "Unix time of the last query from each configured device; a phone that falls silent may have switched to its own DNS.",
                    ),
                    &["client"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            config_reloads: counter_vec(
                r,
                "telesink_config_reloads_total",
                "Configuration reloads (the file changed, or SIGHUP or the API asked), by result (success, failure).",
                &["result"],
            ),
            config_last_reload_ok: gauge(
                r,
                "telesink_config_last_reload_successful",
                "1 when the configuration file as it is now was accepted (or not reloaded since start), 0 when it was rejected and the previous one is still in use.",
            ),
            blocklist_reloads: counter_vec(
                r,
                "telesink_blocklist_reloads_total",
                "List loads, by list and result (success, failure).",
                &["list", "result"],
            ),
            blocklist_last_success: {
                let g = GaugeVec::new(
                    Opts::new(
                        "telesink_blocklist_last_success_timestamp_seconds",
                        "Unix time each list was last loaded successfully.",
                    ),
                    &["list"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            blocklist_refresh: gauge_vec(
                r,
                "telesink_blocklist_refresh_seconds",
                "Configured refresh period of each downloaded list; 0 for local and builtin lists.",
                &["list"],
            ),
            registry,
            hot: Arc::new(HotHandles::new()),
        };
        // Both results exist from the start, so `increase()` sees the first failure.
        for result in ["success", "failure"] {
            metrics.config_reloads.with_label_values(&[result]);
            metrics.cache_prefetches.with_label_values(&[result]);
        }
        // Started, so accepted.
        metrics.config_last_reload_ok.set(1);
        let build_info = gauge_vec(
            &metrics.registry,
            "telesink_build_info",
            "Always 1; the version label tells which telesink is running.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            // The process collector reads /proc; if it cannot register we
            // lose only the process_* series.
            if let Err(error) = metrics.registry.register(Box::new(process)) {
                tracing::debug!(%error, "process metrics unavailable");
            }
        }
        metrics
    }

    /// Counts one answered query.
    pub fn observe_query(
        &self,
        qtype: hickory_proto::rr::RecordType,
        outcome: &Outcome,
        rcode: hickory_proto::op::ResponseCode,
        elapsed: std::time::Duration,
    ) {
        let (q, o, r) = (qtype_index(qtype), outcome.index(), rcode_index(rcode));
        // Handles are resolved on first use and kept: a query costs atomic
        // increments, not a label hash and a lock per metric.
        let hot = &self.hot;
        hot.queries[q * OUTCOME_LABELS.len() + o]
            .get_or_init(|| {
                self.queries
                    .with_label_values(&[QTYPE_LABELS[q], OUTCOME_LABELS[o]])
            })
            .inc();
        hot.responses[r]
            .get_or_init(|| self.responses.with_label_values(&[RCODE_LABELS[r]]))
            .inc();
        hot.duration[o]
            .get_or_init(|| self.query_duration.with_label_values(&[OUTCOME_LABELS[o]]))
            .observe(elapsed.as_secs_f64());
        if let Outcome::Blocked { list, .. } = outcome {
            self.blocked.with_label_values(&[&**list]).inc();
        }
    }

    /// Counts one query for `device`. Its handles are resolved against
    /// this `Metrics` on first use: a device counts into one `Metrics`.
    pub fn observe_client(&self, device: &Device, outcome: &Outcome) {
        let (name, o) = (&*device.name, outcome.index());
        device.handles.queries[o]
            .get_or_init(|| {
                self.client_queries
                    .with_label_values(&[name, OUTCOME_LABELS[o]])
            })
            .inc();
        if let Outcome::Blocked { list, .. } = outcome {
            // Per list: the lists change with reloads, so this one is
            // looked up (a fifth of the queries on a typical network).
            self.client_blocked
                .with_label_values(&[name, &**list])
                .inc();
        }
        device
            .handles
            .last_query
            .get_or_init(|| self.client_last_query.with_label_values(&[name]))
            .set(unix_now());
    }

    /// Publishes the sizes of a freshly built list snapshot.
    pub fn observe_lists(&self, snapshot: &crate::lists::Snapshot) {
        // Lists removed from the config must not linger as stale series.
        self.blocklist_domains.reset();
        self.blocklist_invalid_lines.reset();
        self.blocklist_refresh.reset();
        self.blocklist_last_success.reset();
        for list in &snapshot.lists {
            self.blocklist_domains
                .with_label_values(&[&*list.name])
                .set(list.domains as i64);
            self.blocklist_invalid_lines
                .with_label_values(&[&*list.name])
                .set(list.invalid_lines as i64);
        }
        self.blocklist_build_seconds
            .observe(snapshot.build_time.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds since the Unix epoch, for timestamp gauges.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Every `qtype` label value, in [`qtype_index`] order.
pub const QTYPE_LABELS: [&str; 16] = [
    "A", "AAAA", "CNAME", "MX", "TXT", "PTR", "SRV", "NS", "SOA", "HTTPS", "SVCB", "ANY", "CAA",
    "DS", "DNSKEY", "other",
];

/// Position of a query type's label in [`QTYPE_LABELS`]: the common types
/// by name, the rest `other`.
pub fn qtype_index(qtype: hickory_proto::rr::RecordType) -> usize {
    use hickory_proto::rr::RecordType as T;
    match qtype {
        T::A => 0,
        T::AAAA => 1,
        T::CNAME => 2,
        T::MX => 3,
        T::TXT => 4,
        T::PTR => 5,
        T::SRV => 6,
        T::NS => 7,
        T::SOA => 8,
        T::HTTPS => 9,
        T::SVCB => 10,
        T::ANY => 11,
        T::CAA => 12,
        T::DS => 13,
        T::DNSKEY => 14,
        _ => 15,
    }
}

/// A bounded label for a query type.
pub fn qtype_label(qtype: hickory_proto::rr::RecordType) -> &'static str {
    QTYPE_LABELS[qtype_index(qtype)]
}

/// Every `rcode` label value, in [`rcode_index`] order.
pub const RCODE_LABELS: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "other",
];

/// Position of a response code's label in [`RCODE_LABELS`].
pub fn rcode_index(rcode: hickory_proto::op::ResponseCode) -> usize {
    use hickory_proto::op::ResponseCode as R;
    match rcode {
        R::NoError => 0,
        R::FormErr => 1,
        R::ServFail => 2,
        R::NXDomain => 3,
        R::NotImp => 4,
        R::Refused => 5,
        R::BADVERS => 6,
        _ => 7,
    }
}

/// A bounded label for a response code.
pub fn rcode_label(rcode: hickory_proto::op::ResponseCode) -> &'static str {
    RCODE_LABELS[rcode_index(rcode)]
}

/// One device's handles for the metrics every query of it touches,
/// resolved on first use (see [`Metrics::observe_client`]).
#[derive(Debug, Default)]
pub struct ClientHandles {
    queries: [OnceLock<IntCounter>; OUTCOME_LABELS.len()],
    last_query: OnceLock<Gauge>,
}

/// Metric handles for the labels every query touches, resolved on first
/// use.
struct HotHandles {
    queries: Vec<OnceLock<IntCounter>>,
    responses: Vec<OnceLock<IntCounter>>,
    duration: Vec<OnceLock<Histogram>>,
}

impl HotHandles {
    fn new() -> Self {
        Self {
            queries: (0..QTYPE_LABELS.len() * OUTCOME_LABELS.len())
                .map(|_| OnceLock::new())
                .collect(),
            responses: (0..RCODE_LABELS.len()).map(|_| OnceLock::new()).collect(),
            duration: (0..OUTCOME_LABELS.len()).map(|_| OnceLock::new()).collect(),
        }
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(DNS_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_build_info_and_counts() {
        let m = Metrics::new();
        m.observe_query(
            hickory_proto::rr::RecordType::A,
            &Outcome::Cached,
            hickory_proto::op::ResponseCode::NoError,
            std::time::Duration::from_micros(50),
        );
        let text = m.render();
        assert!(text.contains(&format!(
            "telesink_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(text.contains("telesink_queries_total{outcome=\"cached\",qtype=\"A\"} 1"));
        assert!(text.contains("telesink_responses_total{rcode=\"NOERROR\"} 1"));
    }
}
