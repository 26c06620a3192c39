//! `telesink explain NAME` and `GET /api/explain?name=NAME`: why a name is
//! or is not blocked, down to the list, the file and the line.

use serde_json::{Value, json};

use crate::config::Config;
use crate::lists::{ListKind, MatchedRule, Pattern, Snapshot, Verdict, read_list};

/// Where a rule that decided a name was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSite {
    /// The list's configured name.
    pub list: String,
    /// Block or allow list.
    pub kind: ListKind,
    /// The rule as it matched (`tracker.example`, `*.example`, `/re/`).
    pub rule: String,
    /// File, builtin or URL copy the list was read from.
    pub origin: String,
    /// 1-based line of the rule in it, if it could be found again.
    pub line: Option<usize>,
}

/// The explanation of one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The name asked about, lowercase, without a trailing dot.
    pub name: String,
    /// `local` (a `[local] records` or special-use name: answered before
    /// any list is looked at), `blocked`, `allowed` or `not listed`.
    pub verdict: &'static str,
    /// For a `[local] records` CNAME chain that leads out of the local
    /// records: the name it leads to, which the verdict is about.
    pub local_cname: Option<String>,
    /// The rule that decided it (block or allow); for a local name, what
    /// the lists alone would say.
    pub rule: Option<RuleSite>,
    /// For an allowed name: the block rule the allow rule overrode.
    pub overrode: Option<RuleSite>,
    /// Blocking is turned off as a whole: nothing is blocked whatever the lists say.
    pub blocking_disabled: bool,
}

/// Explains `name` against `snapshot`, finding each rule's line by reading
/// its list again (explain is rare; the snapshot keeps no line numbers, to
/// stay small). An international name is explained as the punycode name
/// the lists and DNS use.
pub fn explain(snapshot: &Snapshot, config: &Config, name: &str) -> Explanation {
    let name = name.trim().trim_end_matches('.');
    let name = match crate::lists::normalize(name) {
        Ok(normal) => normal.into_owned(),
        Err(_) => name.to_ascii_lowercase(),
    };
    let site = |list: usize, rule: &MatchedRule| {
        let meta = &snapshot.lists[list];
        RuleSite {
            list: meta.name.to_string(),
            kind: meta.kind,
            rule: rule.to_string(),
            origin: meta.origin.clone(),
            line: find_line(config, &meta.name, meta.kind, rule),
        }
    };
    let (mut verdict, rule, overrode) = match snapshot.verdict(&name) {
        Verdict::NotListed => ("not listed", None, None),
        Verdict::Blocked { list, rule } => ("blocked", Some(site(list, &rule)), None),
        Verdict::Allowed {
            list,
            rule,
            overrode,
        } => (
            "allowed",
            Some(site(list, &rule)),
            overrode.map(|(l, r)| site(l, &r)),
        ),
    };
    // The local link sits before blocking in the chain: whatever the
    // lists say, such a name gets its records, or its special-use answer;
    // a local CNAME out of the local records is as blocked as its target.
    let lower = hickory_proto::rr::Name::from_ascii(format!("{name}."))
        .ok()
        .map(hickory_proto::rr::LowerName::from);
    let local = lower.and_then(|n| crate::resolver::local_verdict(config, &n));
    match local {
        Some(crate::resolver::LocalVerdict::Cname(target)) => {
            let target = explain(snapshot, config, &target.to_ascii());
            return Explanation {
                name,
                local_cname: Some(target.name),
                ..target
            };
        }
        Some(_) => verdict = "local",
        None => {}
    }
    Explanation {
        name,
        local_cname: None,
        verdict,
        rule,
        overrode,
        blocking_disabled: !snapshot.policy.enabled,
    }
}

/// The line of `rule` in the list named `name`.
fn find_line(config: &Config, name: &str, kind: ListKind, rule: &MatchedRule) -> Option<usize> {
    let lists = match kind {
        ListKind::Block => &config.blocking.lists,
        ListKind::Allow => &config.blocking.allow,
    };
    let list = lists.iter().find(|l| l.name == name)?;
    let text = read_list(list, kind, config).text.ok()?;
    let mut found = None;
    // A read error only means the line is not shown.
    let _ = text.parse(|line, r| {
        if found.is_some() {
            return;
        }
        let same = match (&r.pattern, rule) {
            (Pattern::Domain(d), MatchedRule::Domain(m)) => d == m,
            (Pattern::Subdomains(d), MatchedRule::Subdomains(m)) => d == m,
            (Pattern::Regex(p), MatchedRule::Regex(m)) => p == m,
            _ => false,
        };
        if same {
            found = Some(line);
        }
    });
    found
}

impl RuleSite {
    fn json(&self) -> Value {
        json!({
            "list": self.list,
            "kind": self.kind.as_str(),
            "rule": self.rule,
            "source": self.origin,
            "line": self.line,
        })
    }

    fn describe(&self) -> String {
        let at = self.line.map(|l| format!(", line {l}")).unwrap_or_default();
        format!(
            "rule {} in {} list {:?} ({}{at})",
            self.rule,
            self.kind.as_str(),
            self.list,
            self.origin
        )
    }
}

impl Explanation {
    /// The explanation as JSON, for the API.
    pub fn json(&self) -> Value {
        json!({
            "name": self.name,
            "verdict": self.verdict,
            "rule": self.rule.as_ref().map(RuleSite::json),
            "overrode": self.overrode.as_ref().map(RuleSite::json),
            "local_cname": self.local_cname,
            "blocking_enabled": !self.blocking_disabled,
        })
    }

    /// The explanation as text, for the command line.
    pub fn text(&self) -> String {
        let mut out = format!("{}: {}", self.name, self.verdict);
        if let Some(target) = &self.local_cname {
            out.push_str(&format!(" (through its [local] CNAME to {target})"));
        }
        if self.verdict == "local" {
            out.push_str(" (answered locally, before any list)");
            if let Some(rule) = &self.rule {
                out.push_str(&format!(
                    "\n  the lists alone would match {}",
                    rule.describe()
                ));
            }
        } else if let Some(rule) = &self.rule {
            out.push_str(&format!(" by {}", rule.describe()));
        }
        if let Some(o) = &self.overrode {
            out.push_str(&format!("\n  overriding {}", o.describe()));
        }
        if self.blocking_disabled {
            out.push_str("\n  note: blocking is turned off ([blocking] enabled = false)");
        }
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `[local] records` name is answered before any list: explain says
    /// so, and what the lists alone would have done.
    #[test]
    fn a_local_name_is_explained_as_local() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("block.txt"),
            "||lan^\ntracker.test\nuse-application-dns.net\n",
        )
        .unwrap();
        let text = "[local]\nrecords = { \"NAS.lan.\" = \"192.168.1.10\", \
                    \"tracked.home\" = \"x.tracker.test\", \"alias.home\" = \"nas.lan\" }\n\
                    [[blocking.lists]]\nname = \"wide\"\npath = \"block.txt\"\n";
        let config = Config::from_toml(text, "t.toml", dir.path()).unwrap();
        let snapshot = crate::lists::build(&config, None);
        let nas = explain(&snapshot, &config, "nas.lan.");
        assert_eq!(nas.verdict, "local");
        assert_eq!(nas.rule.as_ref().map(|r| r.rule.as_str()), Some("lan"));
        assert!(nas.text().contains("before any list"), "{}", nas.text());
        assert_eq!(explain(&snapshot, &config, "tv.lan").verdict, "blocked");
        // A local CNAME out of the local records: as blocked as its target.
        let tracked = explain(&snapshot, &config, "tracked.home");
        assert_eq!(tracked.verdict, "blocked");
        assert_eq!(tracked.name, "tracked.home");
        assert_eq!(tracked.local_cname.as_deref(), Some("x.tracker.test"));
        assert_eq!(
            tracked.rule.as_ref().map(|r| r.rule.as_str()),
            Some("tracker.test")
        );
        assert!(
            tracked
                .text()
                .contains("through its [local] CNAME to x.tracker.test"),
            "{}",
            tracked.text()
        );
        // One to another local name stays local.
        assert_eq!(explain(&snapshot, &config, "alias.home").verdict, "local");
        // A special-use name is answered locally, listed or not.
        assert_eq!(
            explain(&snapshot, &config, "use-application-dns.net").verdict,
            "local"
        );
    }
}
