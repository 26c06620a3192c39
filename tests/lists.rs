//! List formats and quirks on fixture texts (with LF, CRLF and BOM
//! variants), and the integrity of the lists shipped in `blocklists/`.

use std::collections::HashSet;

use telesink::lists::{
    BuildLimits, ListInput, ListKind, Pattern, Skip, Snapshot, builtin, builtin_names, parse_text,
};
use telesink::resolver::BlockPolicy;

fn input(name: &str, kind: ListKind, text: String) -> ListInput {
    ListInput::from_text(name, kind, text)
}

fn build(block: String, allow: String) -> Snapshot {
    Snapshot::build(
        vec![
            input("block", ListKind::Block, block),
            input("allow", ListKind::Allow, allow),
        ],
        BlockPolicy::default(),
        BuildLimits::default(),
        None,
    )
}

/// The same text with LF, CRLF, a BOM and CRLF, and tabs for spaces.
fn variants(text: &str) -> Vec<String> {
    let crlf = text.replace('\n', "\r\n");
    vec![
        text.to_string(),
        crlf.clone(),
        format!("\u{feff}{crlf}"),
        text.replace(' ', "\t"),
    ]
}

const MIXED: &str = "\
# A mixed list: every supported format and quirk
! adblock-style comment
[Adblock Plus 2.0]
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
255.255.255.255 broadcasthost
0.0.0.0 hosts-one.example hosts-two.example  # inline comment
127.0.0.1 hosts-loopback.example
:: hosts-v6.example
PLAIN-UPPER.Example.
plain-trailing-dot.example.
||adblock.example^
||adblock-important.example^$important
||adblock-thirdparty.example^$third-party
example.com##.banner
*.wild.example
/^regex[0-9]+\\.example$/
bücher.example
10.0.0.1
not a domain line
under_score.example
bad..label.example
@@||exception.adblock.example^
";

#[test]
fn every_format_and_quirk_in_every_line_ending() {
    for (i, text) in variants(MIXED).into_iter().enumerate() {
        let s = build(text, String::new());
        let blocked = |n: &str| s.blocking_list_str(n).is_some();
        for name in [
            "hosts-one.example",
            "hosts-two.example",
            "x.hosts-loopback.example",
            "hosts-v6.example",
            "plain-upper.example",
            "a.plain-trailing-dot.example",
            "adblock.example",
            "deep.adblock.example",
            "adblock-important.example",
            "a.wild.example",
            "regex42.example",
            "xn--bcher-kva.example",
            "under_score.example",
        ] {
            assert!(blocked(name), "variant {i}: {name} should be blocked");
        }
        for name in [
            "localhost",
            "ip6-localhost",
            "broadcasthost",
            "wild.example",
            "adblock-thirdparty.example",
            "regex.example",
            "exception.adblock.example",
            "a.exception.adblock.example",
            "example.com",
        ] {
            assert!(!blocked(name), "variant {i}: {name} should not be blocked");
        }
        let meta = &s.lists[0];
        assert_eq!(
            meta.invalid_lines, 3,
            "variant {i}: 10.0.0.1, 'not a domain line', bad..label"
        );
        assert_eq!(
            meta.unsupported_lines, 2,
            "variant {i}: $third-party and ##"
        );
        assert_eq!(meta.regexes, 1);
    }
}

#[test]
fn allow_beats_a_parent_block_in_every_format_and_line_ending() {
    let block = "tracker.example\n0.0.0.0 hosts-tracker.example\n||ab-tracker.example^\n*.wild-tracker.example\n";
    for allow in [
        "ok.tracker.example\nok.hosts-tracker.example\nok.ab-tracker.example\nok.wild-tracker.example\n",
        "0.0.0.0 ok.tracker.example ok.hosts-tracker.example ok.ab-tracker.example ok.wild-tracker.example\n",
        "@@||ok.tracker.example^\n@@||ok.hosts-tracker.example^\n@@||ok.ab-tracker.example^\n@@||ok.wild-tracker.example^\n",
        "*.ok.tracker.example\nok.hosts-tracker.example\n/^(.*\\.)?ok\\.ab-tracker\\.example$/\nok.wild-tracker.example\n",
    ] {
        for (b, a) in variants(block).into_iter().zip(variants(allow)) {
            let s = build(b, a);
            for parent in [
                "tracker.example",
                "hosts-tracker.example",
                "ab-tracker.example",
                "wild-tracker.example",
            ] {
                let child = format!("x.ok.{parent}");
                assert_eq!(
                    s.blocking_list_str(&child),
                    None,
                    "{child} allowed by {allow:?}"
                );
                assert_eq!(
                    s.blocking_list_str(&format!("x.{parent}")),
                    Some(0),
                    "x.{parent} blocked"
                );
            }
        }
    }
}

/// Every builtin list parses with no invalid lines, no duplicates, and no
/// entry already covered by a listed parent (in the file, or for a strict
/// file in its vendor's telemetry file).
#[test]
fn shipped_lists_are_clean() {
    let names: Vec<&str> = builtin_names().collect();
    for vendor in ["xiaomi", "oppo", "huawei", "vivo", "samsung"] {
        assert!(names.contains(&vendor), "{vendor}");
        assert!(
            names.contains(&format!("{vendor}-strict").as_str()),
            "{vendor}-strict"
        );
    }
    assert!(names.contains(&"essential"));
    let domains = |name: &str| -> Vec<String> {
        let mut out = Vec::new();
        let skipped = parse_text(builtin(name).unwrap(), |_, rule| match rule.pattern {
            Pattern::Domain(d) => out.push(d.into_owned()),
            other => panic!("{name}: shipped lists hold plain domains only, found {other:?}"),
        });
        let invalid: Vec<_> = skipped
            .first
            .iter()
            .filter(|s| matches!(s.skip, Skip::Invalid(_)))
            .collect();
        assert!(
            skipped.is_empty(),
            "{name}: skipped lines {invalid:?} {skipped:?}"
        );
        out
    };
    for name in &names {
        let list = domains(name);
        assert!(!list.is_empty(), "{name} is empty");
        let mut base: HashSet<String> = HashSet::new();
        if let Some(vendor) = name.strip_suffix("-strict") {
            base.extend(domains(vendor));
        }
        let mut seen = HashSet::new();
        for d in &list {
            assert!(seen.insert(d.clone()), "{name}: duplicate {d}");
        }
        let all: HashSet<&String> = seen.iter().chain(base.iter()).collect();
        for d in &list {
            assert!(
                !base.contains(d),
                "{name}: {d} is already in the telemetry tier"
            );
            let parents = d.match_indices('.').map(|(i, _)| &d[i + 1..]);
            for p in parents {
                assert!(
                    !all.contains(&p.to_string()),
                    "{name}: {d} is redundant under {p}"
                );
            }
        }
    }
}

/// No essential host (or its subdomains) is blocked by the default tier,
/// and the default tier does block each vendor's known telemetry hosts.
#[test]
fn default_config_blocks_telemetry_but_no_essential_host() {
    let config = telesink::config::Config::embedded_default();
    let snap = telesink::lists::build(&config, None);
    let mut essential = Vec::new();
    parse_text(builtin("essential").unwrap(), |_, r| {
        if let Pattern::Domain(d) = r.pattern {
            essential.push(d.into_owned());
        }
    });
    for host in &essential {
        assert_eq!(snap.blocking_list_str(host), None, "{host} must resolve");
        assert_eq!(
            snap.blocking_list_str(&format!("sub.{host}")),
            None,
            "sub.{host} must resolve"
        );
    }
    // Siblings of essential hosts under a blocked parent stay blocked.
    assert!(
        snap.blocking_list_str("abtest.mistat.intl.xiaomi.com")
            .is_some()
    );
    assert!(
        snap.blocking_list_str("data.mistat.intl.xiaomi.com")
            .is_none()
    );
    // Every carve-out below a default-tier service rule, and a blocked sibling.
    for (allowed, blocked) in [
        ("api.browser.miui.com", "hot.browser.miui.com"),
        ("api.sec.miui.com", "data.sec.miui.com"),
        ("api.sec.intl.miui.com", "data.sec.intl.miui.com"),
        ("account.migc.g.mi.com", "migcreport.g.mi.com"),
        ("upgrade.pandora.xiaomi.com", "stat.pandora.xiaomi.com"),
        ("3rdupgrade.pandora.xiaomi.com", "tvboss.pandora.xiaomi.com"),
        ("ota.cdn.pandora.xiaomi.com", "ad.cdn.pandora.xiaomi.com"),
        (
            "package.cdn.pandora.xiaomi.com",
            "image.cdn.pandora.xiaomi.com",
        ),
        ("appstore.pandora.xiaomi.com", "shop.pandora.xiaomi.com"),
        (
            "appstore.cdn.pandora.xiaomi.com",
            "gallery.cdn.pandora.xiaomi.com",
        ),
        (
            "upgrade.mishop.pandora.xiaomi.com",
            "mishop.pandora.xiaomi.com",
        ),
        ("netcheck.pandora.xiaomi.com", "log.pandora.xiaomi.com"),
        ("ota.ptqy.gitv.tv", "cupid.ptqy.gitv.tv"),
        ("appstore.ptmi.gitv.tv", "pb.bi.gitv.tv"),
    ] {
        assert!(
            snap.blocking_list_str(allowed).is_none(),
            "{allowed} allowed"
        );
        assert!(
            snap.blocking_list_str(blocked).is_some(),
            "{blocked} blocked"
        );
    }
    for (host, list) in [
        ("sa.api.intl.miui.com", "xiaomi"),
        ("tracking.miui.com", "xiaomi"),
    ] {
        let i = snap
            .blocking_list_str(host)
            .unwrap_or_else(|| panic!("{host} blocked"));
        assert_eq!(&*snap.lists[i].name, list);
    }
    for vendor in ["xiaomi", "oppo", "huawei", "vivo", "samsung"] {
        let meta = snap.lists.iter().find(|l| &*l.name == vendor).unwrap();
        assert!(meta.domains > 10, "{vendor}: {}", meta.domains);
    }
}
