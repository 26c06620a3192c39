//! The list line parser: one line in, zero or more rules out.
//!
//! The format is detected per line, so mixed files work:
//!
//! | line | rule |
//! |---|---|
//! | `example.com` | blocks `example.com` and its subdomains |
//! | `0.0.0.0 a.example b.example` (also `127.0.0.1`, `::`, `::1`) | the same, for each name |
//! | `\|\|example.com^` | the same (adblock DNS syntax) |
//! | `@@\|\|example.com^` | allows `example.com` and its subdomains |
//! | `*.example.com` | blocks the subdomains of `example.com`, not `example.com` itself |
//! | `/regex/` and `@@/regex/` | blocks (allows) names the regular expression matches |
//!
//! A single label (`com`, `lan`) in a plain or hosts line is skipped: with
//! "and its subdomains" it would block a whole top-level domain, and such a
//! line is far more often a mistake (or a router's host name, in a hosts
//! file) than a wish. `||tld^` and `*.tld` still block one on purpose, as
//! lists of abused top-level domains do.
//!
//! `#` and `!` start comments; `#` also ends a line after whitespace. Names
//! are lowercased, a trailing dot is dropped and internationalised names
//! are converted to punycode. Adblock rules with modifiers DNS cannot
//! honour (`$third-party`, `$script`, ...) and cosmetic rules (`##`) are
//! skipped as unsupported rather than misapplied.

use std::borrow::Cow;

/// What one rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Block matching names.
    Block,
    /// Never block matching names (beats any block rule).
    Allow,
}

/// Which names a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern<'a> {
    /// The domain and every subdomain.
    Domain(Cow<'a, str>),
    /// Only the subdomains (`*.example.com`).
    Subdomains(Cow<'a, str>),
    /// A regular expression over the whole name (lowercase, no trailing dot).
    Regex(&'a str),
}

/// A parsed rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule<'a> {
    /// Block or allow.
    pub action: Action,
    /// What it matches.
    pub pattern: Pattern<'a>,
}

/// Why a line produced no rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not a rule in any supported format.
    Invalid(&'static str),
    /// A valid rule of a kind DNS blocking cannot honour.
    Unsupported(&'static str),
}

impl Skip {
    /// The reason, for messages.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Invalid(r) | Self::Unsupported(r) => r,
        }
    }
}

/// Host names that hosts files map to loopback and no list means to block.
const HOSTS_PREAMBLE: &[&str] = &[
    "localhost",
    "localhost.localdomain",
    "local",
    "broadcasthost",
    "ip6-localhost",
    "ip6-loopback",
    "ip6-localnet",
    "ip6-mcastprefix",
    "ip6-allnodes",
    "ip6-allrouters",
    "ip6-allhosts",
    "0.0.0.0",
];

/// Parses one line, calling `rule` for each rule in it. Returns the first
/// problem found; a hosts line may yield rules and still report a bad name.
pub fn parse_line<'a>(raw: &'a str, mut rule: impl FnMut(Rule<'a>)) -> Result<(), Skip> {
    let line = raw.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    if line.is_empty() || line.starts_with('#') || line.starts_with('!') || line.starts_with('[') {
        return Ok(());
    }
    // Regular expressions are taken whole: `#` may be part of them.
    if let Some(body) = regex_rule(line) {
        rule(Rule {
            action: Action::Block,
            pattern: Pattern::Regex(body),
        });
        return Ok(());
    }
    if let Some(body) = line.strip_prefix("@@").and_then(regex_rule) {
        rule(Rule {
            action: Action::Allow,
            pattern: Pattern::Regex(body),
        });
        return Ok(());
    }
    // A comment goes first: `0.0.0.0 ads.example ## tracker` is a hosts
    // entry, while a cosmetic rule has no space before its marker.
    let line = strip_inline_comment(line);
    if ["##", "#@#", "#?#", "#$#", "#%#"]
        .iter()
        .any(|m| line.contains(m))
    {
        return Err(Skip::Unsupported("cosmetic (element hiding) rule"));
    }
    if line.starts_with("||")
        || line.starts_with("@@")
        || line.starts_with('|')
        || line.ends_with('^')
    {
        return parse_adblock(line).map(rule);
    }
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or_default();
    if is_address(first) {
        let mut result = Ok(());
        let mut any = false;
        for word in words {
            any = true;
            // Before `normalize`, which turns down `0.0.0.0` as an address.
            let bare = word.strip_suffix('.').unwrap_or(word);
            if HOSTS_PREAMBLE.iter().any(|h| h.eq_ignore_ascii_case(bare)) {
                continue;
            }
            match normalize(word) {
                Ok(name) if !name.contains('.') => result = result.and(Err(SINGLE_LABEL)),
                Ok(name) => rule(Rule {
                    action: Action::Block,
                    pattern: Pattern::Domain(name),
                }),
                Err(e) => result = result.and(Err(e)),
            }
        }
        if !any {
            return Err(Skip::Invalid("an address without a host name"));
        }
        return result;
    }
    if words.next().is_some() {
        return Err(Skip::Invalid(
            "more than one word on a line that is not a hosts entry",
        ));
    }
    let parsed = parse_name(first, Action::Block)?;
    if matches!(&parsed.pattern, Pattern::Domain(name) if !name.contains('.')) {
        return Err(SINGLE_LABEL);
    }
    rule(parsed);
    Ok(())
}

/// Why a plain or hosts line naming a single label is skipped.
const SINGLE_LABEL: Skip = Skip::Unsupported(
    "a single label, which would match a whole top-level domain (write ||name^ or @@||name^ to mean that)",
);

fn regex_body(line: &str) -> Option<&str> {
    let body = line.strip_prefix('/')?.strip_suffix('/')?;
    (!body.is_empty()).then_some(body)
}

/// [`regex_body`] of `line`, or of what comes before a `#` comment after
/// whitespace (`/^ads\./ # ad servers`), as for any other line; the whole
/// line first, so a `#` inside the expression stays in it.
fn regex_rule(line: &str) -> Option<&str> {
    if let Some(body) = regex_body(line) {
        return Some(body);
    }
    if !line.starts_with('/') {
        return None;
    }
    line.match_indices('#')
        .filter(|&(i, _)| line[..i].ends_with(char::is_whitespace))
        .find_map(|(i, _)| regex_body(line[..i].trim_end()))
}

/// Drops a `#` comment that follows whitespace.
fn strip_inline_comment(line: &str) -> &str {
    let mut prev_space = false;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_space {
            return line[..i].trim_end();
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// An IP address at the start of a hosts line (`fe80::1%lo0` included).
fn is_address(word: &str) -> bool {
    let word = word.split('%').next().unwrap_or(word);
    word.parse::<std::net::IpAddr>().is_ok()
}

fn parse_adblock(line: &str) -> Result<Rule<'_>, Skip> {
    let (action, rest) = match line.strip_prefix("@@") {
        Some(rest) => (Action::Allow, rest),
        None => (Action::Block, line),
    };
    let (body, modifiers) = match rest.split_once('$') {
        Some((b, m)) => (b, Some(m)),
        None => (rest, None),
    };
    if let Some(modifiers) = modifiers {
        // `important` only changes precedence between rules; every other
        // modifier narrows the rule in ways a DNS server cannot see.
        if modifiers.split(',').any(|m| m.trim() != "important") {
            return Err(Skip::Unsupported(
                "adblock rule with a modifier DNS cannot honour",
            ));
        }
    }
    let Some(host) = body.strip_prefix("||") else {
        return Err(Skip::Unsupported("adblock rule without a || domain anchor"));
    };
    let Some(host) = host.strip_suffix('^').or_else(|| host.strip_suffix("^|")) else {
        return Err(Skip::Unsupported(
            "adblock rule that also matches longer names (no ^)",
        ));
    };
    parse_name(host, action)
}

fn parse_name(word: &str, action: Action) -> Result<Rule<'_>, Skip> {
    let (word, subdomains) = match word.strip_prefix("*.") {
        Some(rest) => (rest, true),
        None => (word.strip_prefix('.').unwrap_or(word), false),
    };
    let name = normalize(word)?;
    Ok(Rule {
        action,
        pattern: if subdomains {
            Pattern::Subdomains(name)
        } else {
            Pattern::Domain(name)
        },
    })
}

/// Lowercases a domain, drops one trailing dot, converts an international
/// name to punycode, and checks it is a host name (letters, digits, `-`
/// and `_`; labels of 1–63 bytes; at most 253 bytes; not an IP address).
pub fn normalize(name: &str) -> Result<Cow<'_, str>, Skip> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let name: Cow<'_, str> = if name.is_ascii() {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        }
    } else {
        Cow::Owned(idna::domain_to_ascii(name).map_err(|_| {
            Skip::Invalid("international name that cannot be converted to punycode")
        })?)
    };
    check_host_name(&name)?;
    Ok(name)
}

fn check_host_name(name: &str) -> Result<(), Skip> {
    if name.is_empty() {
        return Err(Skip::Invalid("empty name"));
    }
    if name.len() > 253 {
        return Err(Skip::Invalid("name longer than 253 bytes"));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err(Skip::Invalid("an IP address, not a domain"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(Skip::Invalid("empty label"));
        }
        if label.len() > 63 {
            return Err(Skip::Invalid("label longer than 63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(Skip::Invalid("character not allowed in a domain name"));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(Skip::Invalid("an all-numeric top-level label"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(line: &str) -> (Vec<String>, Result<(), Skip>) {
        let mut out = Vec::new();
        let r = parse_line(line, |rule| {
            let a = match rule.action {
                Action::Block => "block",
                Action::Allow => "allow",
            };
            out.push(match rule.pattern {
                Pattern::Domain(d) => format!("{a} {d}"),
                Pattern::Subdomains(d) => format!("{a} *.{d}"),
                Pattern::Regex(r) => format!("{a} /{r}/"),
            });
        });
        (out, r)
    }

    fn ok(line: &str) -> Vec<String> {
        let (out, r) = rules(line);
        assert_eq!(r, Ok(()), "{line}");
        out
    }

    #[test]
    fn a_regex_may_have_a_comment_after_it() {
        assert_eq!(
            ok("/^ads[0-9]*\\./ # ad servers"),
            ["block /^ads[0-9]*\\./"]
        );
        assert_eq!(ok("@@/^ok\\./\t# fine"), ["allow /^ok\\./"]);
        // A `#` inside the expression stays in it.
        assert_eq!(ok("/a #b/ # c"), ["block /a #b/"]);
        assert_eq!(ok("/a #b/"), ["block /a #b/"]);
    }

    #[test]
    fn every_format() {
        assert_eq!(ok("Example.COM."), ["block example.com"]);
        assert_eq!(
            ok("0.0.0.0 a.example\tb.example # two"),
            ["block a.example", "block b.example"]
        );
        assert_eq!(ok("127.0.0.1 localhost"), Vec::<String>::new());
        assert_eq!(ok("::1 ip6-localhost ip6-loopback"), Vec::<String>::new());
        assert_eq!(ok("fe80::1%lo0 localhost"), Vec::<String>::new());
        // StevenBlack's hosts file opens with this line.
        assert_eq!(ok("0.0.0.0 0.0.0.0"), Vec::<String>::new());
        assert_eq!(ok("0.0.0.0 LocalHost."), Vec::<String>::new());
        // `##` after a space is a comment, not a cosmetic rule.
        assert_eq!(ok("0.0.0.0 ads.example ## tracker"), ["block ads.example"]);
        assert_eq!(ok("ads.example ## tracker"), ["block ads.example"]);
        assert_eq!(ok(":: v6.example"), ["block v6.example"]);
        assert_eq!(ok("||ads.example^"), ["block ads.example"]);
        assert_eq!(ok("||ads.example^$important"), ["block ads.example"]);
        assert_eq!(ok("@@||ok.ads.example^"), ["allow ok.ads.example"]);
        assert_eq!(ok("*.wild.example"), ["block *.wild.example"]);
        assert_eq!(ok(".dot.example"), ["block dot.example"]);
        assert_eq!(ok("/^ad[0-9]+\\./"), ["block /^ad[0-9]+\\./"]);
        assert_eq!(ok("@@/^ok\\./"), ["allow /^ok\\./"]);
        assert_eq!(ok("bücher.example"), ["block xn--bcher-kva.example"]);
        for comment in [
            "# c",
            "! adblock comment",
            "[Adblock Plus 2.0]",
            "",
            "   \t",
            "\u{feff}",
        ] {
            assert_eq!(ok(comment), Vec::<String>::new(), "{comment:?}");
        }
    }

    #[test]
    fn rejects_and_skips() {
        assert!(matches!(rules("10.0.0.1").1, Err(Skip::Invalid(_))));
        assert!(matches!(rules("0.0.0.0").1, Err(Skip::Invalid(_))));
        assert!(matches!(rules("bad name here").1, Err(Skip::Invalid(_))));
        assert!(matches!(rules("sub..dot.example").1, Err(Skip::Invalid(_))));
        assert!(matches!(rules(&"a".repeat(64)).1, Err(Skip::Invalid(_))));
        assert!(matches!(
            rules("||ads.example^$third-party").1,
            Err(Skip::Unsupported(_))
        ));
        assert!(matches!(
            rules("example.com##.banner").1,
            Err(Skip::Unsupported(_))
        ));
        assert!(matches!(
            rules("||ads.example").1,
            Err(Skip::Unsupported(_))
        ));
        // A single label would take a whole top-level domain with it;
        // adblock syntax and a wildcard still mean one on purpose.
        for line in ["com", ".com", "COM.", "0.0.0.0 com", "0.0.0.0 XiaoQiang"] {
            let (out, r) = rules(line);
            assert!(out.is_empty(), "{line}: {out:?}");
            assert_eq!(r, Err(SINGLE_LABEL), "{line}");
        }
        assert_eq!(ok("||zip^"), ["block zip"]);
        assert_eq!(ok("*.zip"), ["block *.zip"]);
        assert_eq!(ok("@@||lan^"), ["allow lan"]);
        let (out, r) = rules("0.0.0.0 router ads.example");
        assert_eq!(out, ["block ads.example"]);
        assert_eq!(r, Err(SINGLE_LABEL));
        // A hosts line keeps its good names and reports the bad one.
        let (out, r) = rules("0.0.0.0 good.example bad!name");
        assert_eq!(out, ["block good.example"]);
        assert!(r.is_err());
    }
}
