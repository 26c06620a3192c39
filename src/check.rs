//! `telesink check-config`: load the configuration and every list it names,
//! and print a one-screen summary or every problem found.

use std::fmt::Write as _;

use crate::config::Config;
use crate::lists::ListKind;

/// The summary of a valid configuration, or the problems of an invalid one.
pub fn check(config: &Config) -> Result<String, String> {
    let snapshot = crate::lists::build(config, None);
    let mut problems: Vec<String> = snapshot
        .lists
        .iter()
        .filter_map(|l| {
            l.error
                .as_ref()
                .map(|e| format!("list {:?}: {}: {e}", &*l.name, l.origin))
        })
        .collect();
    // Looked up only when telesink switches at start, as root: a typo
    // would otherwise show first then.
    if let Err(e) = crate::privileges::target(&config.server) {
        problems.push(format!("{}: {e}", config.origin));
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    let mut out = String::new();
    let _ = writeln!(out, "config: {} is valid", config.origin);
    let listen: Vec<String> = config
        .server
        .listen
        .iter()
        .map(ToString::to_string)
        .collect();
    let _ = writeln!(out, "listen: {} (UDP and TCP)", listen.join(", "));
    let upstreams: Vec<String> = config
        .upstream
        .servers
        .iter()
        .map(ToString::to_string)
        .collect();
    let _ = writeln!(
        out,
        "upstream: {} (timeout {})",
        upstreams.join(", "),
        humantime::format_duration(config.upstream.timeout)
    );
    for rule in &config.forward {
        let servers: Vec<String> = rule.servers.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "forward: {} -> {}",
            rule.domains.join(", "),
            servers.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "local: {} records, special-use names {}",
        config.local.records.len(),
        if config.local.special_names {
            "answered locally"
        } else {
            "forwarded"
        }
    );
    let _ = writeln!(
        out,
        "cache: {} entries, ttl {}..{}",
        config.cache.capacity,
        humantime::format_duration(config.cache.min_ttl),
        humantime::format_duration(config.cache.max_ttl)
    );
    let _ = writeln!(
        out,
        "blocking: {}, mode {}, ttl {}",
        if config.blocking.enabled { "on" } else { "off" },
        config.blocking.mode.as_str(),
        humantime::format_duration(config.blocking.ttl)
    );
    for list in &snapshot.lists {
        let kind = match list.kind {
            ListKind::Block => "block",
            ListKind::Allow => "allow",
        };
        let _ = write!(
            out,
            "  {kind} {:<16} {:>7} domains  {}",
            list.name, list.domains, list.origin
        );
        if list.regexes > 0 {
            let _ = write!(out, "  (+{} regex)", list.regexes);
        }
        if list.invalid_lines > 0 {
            let _ = write!(out, "  ({} invalid lines skipped)", list.invalid_lines);
        }
        if list.unsupported_lines > 0 {
            let _ = write!(
                out,
                "  ({} unsupported rules skipped)",
                list.unsupported_lines
            );
        }
        if list.loaded_at.is_none() {
            let _ = write!(out, "  (not downloaded yet)");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "total: {} blocked domains, built in {:.1?}",
        snapshot.blocked_domains(),
        snapshot.build_time
    );
    match config.http.listen {
        Some(addr) => {
            let _ = writeln!(out, "http: http://{addr}/metrics");
        }
        None => {
            let _ = writeln!(out, "http: off");
        }
    }
    Ok(out)
}
