//! Every metric documented in docs/metrics.md exists in `/metrics`, with
//! exactly the documented labels, after ordinary traffic.

mod common;

use std::collections::BTreeSet;

use common::*;
use hickory_proto::rr::RecordType;

/// (name, type, labels) rows of the metric tables in docs/metrics.md.
fn documented() -> Vec<(String, String, BTreeSet<String>)> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    doc.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            if !(name.starts_with("telesink_") || name.starts_with("process_")) {
                return None;
            }
            let labels = cells[3]
                .split(',')
                .map(|s| s.trim().trim_matches('`').to_string())
                .filter(|s| !s.is_empty())
                .collect();
            Some((name.to_string(), cells[2].to_string(), labels))
        })
        .collect()
}

/// The label names of each series line of `name` (`le` dropped).
fn series_labels(text: &str, name: &str) -> Vec<BTreeSet<String>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, _) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let base = metric
                .strip_suffix("_bucket")
                .or_else(|| metric.strip_suffix("_sum"))
                .or_else(|| metric.strip_suffix("_count"))
                .filter(|b| *b == name)
                .unwrap_or(metric);
            (base == name).then(|| {
                labels
                    .split(',')
                    .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
                    .filter(|k| k != "le")
                    .collect()
            })
        })
        .collect()
}

#[tokio::test]
async fn every_documented_metric_is_exported_with_its_labels() {
    let stub = Stub::start().await;
    let dir = dir_with(&[("block.txt", "tracker.test\n")]);
    let config = "
[upstream]
servers = [{upstreams}]
timeout = \"300ms\"
[http]
listen = \"127.0.0.1:0\"
[[blocking.lists]]
name = \"xiaomi\"
path = \"block.txt\"
[[clients]]
name = \"phone\"
ips = [\"127.0.0.2\"]
";
    let ts = Telesink::start(config, &[&stub], dir.path()).await;
    for name in ["x.tracker.test.", "a.test.", "a.test."] {
        udp_from("127.0.0.2:0", ts.udp, &request(name, RecordType::A, true)).await;
    }
    let text = ts.metrics().await;
    let docs = documented();
    assert!(
        docs.len() >= 24,
        "docs/metrics.md lists {} metrics",
        docs.len()
    );
    for (name, kind, labels) in &docs {
        let found = series_labels(&text, name);
        assert!(
            !found.is_empty(),
            "{name} is documented but not exported:\n{text}"
        );
        assert!(
            found.iter().any(|l| l == labels),
            "{name}: documented labels {labels:?}, exported {found:?}"
        );
        assert!(
            text.contains(&format!("# TYPE {name} {kind}")),
            "{name} is documented as a {kind}"
        );
    }
    // And nothing exported is undocumented.
    let names: BTreeSet<&str> = docs.iter().map(|(n, _, _)| n.as_str()).collect();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let metric = line.split_whitespace().next().unwrap();
        if metric.starts_with("telesink_") {
            assert!(
                names.contains(metric),
                "{metric} is exported but not in docs/metrics.md"
            );
        }
    }
    ts.stop().await;
}
