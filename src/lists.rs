//! Block and allow lists: parsing, the immutable snapshot, and matching.
//!
//! Everything that must change together when lists are reloaded (the deny
//! set, the allow set and the metadata of every list) lives in one
//! [`Snapshot`]. The query path loads it from one [`ArcSwap`], so a query
//! sees either the old lists or the new ones, never half of each. A snapshot
//! is built off the query path; if building fails the old one keeps serving.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::rr::LowerName;

use crate::config::{BlockingConfig, ListConfig, ListSource};

/// Lists compiled into the binary: (name, path in the repository, text).
static BUILTIN: &[(&str, &str, &str)] = include!(concat!(env!("OUT_DIR"), "/builtin_lists.rs"));

/// The text of a builtin list, by name (`xiaomi` for `builtin:xiaomi`).
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, t)| *t)
}

/// Names of all builtin lists.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, _, _)| *n)
}

/// How many invalid lines of one list are logged with their location; the
/// rest are only counted, so a broken 100k-line file cannot flood the log.
const LOGGED_INVALID_LINES: usize = 5;

/// Whether a list blocks or allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `[[blocking.lists]]`
    Block,
    /// `[[blocking.allow]]`
    Allow,
}

/// What is known about one loaded list.
#[derive(Debug, Clone)]
pub struct ListMeta {
    /// The configured name, used as the `list` metrics label.
    pub name: Arc<str>,
    /// Block or allow.
    pub kind: ListKind,
    /// Where the text came from (`builtin:xiaomi` or a file path).
    pub origin: String,
    /// Distinct valid domains in the list.
    pub domains: usize,
    /// Lines that were neither a domain, a hosts entry nor a comment.
    pub invalid_lines: usize,
}

/// A line that could not be understood, with where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidLine {
    /// 1-based line number.
    pub line: usize,
    /// The line as written (trimmed).
    pub text: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

/// One list's text, split into domains and rejected lines.
#[derive(Debug, Default)]
pub struct ParsedList {
    /// Lowercase domains without a trailing dot.
    pub domains: Vec<String>,
    /// The lines that were skipped.
    pub invalid: Vec<InvalidLine>,
}

/// Host names that hosts files map to themselves and that no list means to block.
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

/// Parses a list: one domain per line, or hosts-file lines
/// (`0.0.0.0 a.example b.example`). `#` starts a comment anywhere.
pub fn parse_list(text: &str) -> ParsedList {
    let mut out = ParsedList::default();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        let reject = |out: &mut ParsedList, reason| {
            out.invalid.push(InvalidLine {
                line: index + 1,
                text: raw.trim().to_string(),
                reason,
            })
        };
        if first.parse::<std::net::IpAddr>().is_ok() {
            // A hosts line: every name after the address is an entry.
            let mut any = false;
            for name in fields {
                any = true;
                match normalize(name) {
                    Ok(d) if HOSTS_PREAMBLE.contains(&d.as_str()) => {}
                    Ok(d) => out.domains.push(d),
                    Err(reason) => reject(&mut out, reason),
                }
            }
            if !any {
                reject(&mut out, "an address without a host name");
            }
            continue;
        }
        if fields.next().is_some() {
            reject(
                &mut out,
                "more than one word on a line that is not a hosts entry",
            );
            continue;
        }
        match normalize(first) {
            Ok(d) => out.domains.push(d),
            Err(reason) => reject(&mut out, reason),
        }
    }
    out
}

/// Lowercases a domain, drops one trailing dot, and checks it is a valid
/// host name (letters, digits, `-` and `_`; labels of 1–63 bytes; at most
/// 253 bytes in all; not an IP address).
pub fn normalize(name: &str) -> Result<String, &'static str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > 253 {
        return Err("name longer than 253 bytes");
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address, not a domain");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label");
        }
        if label.len() > 63 {
            return Err("label longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("character not allowed in a domain name");
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("an all-numeric top-level label");
    }
    Ok(name.to_ascii_lowercase())
}

/// A list could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The file could not be read.
    #[error("list {list:?}: {path}: {source}")]
    Read {
        /// The list's configured name.
        list: String,
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// `builtin:NAME` names no compiled-in list.
    #[error("list {list:?}: no builtin list {name:?}")]
    NoBuiltin {
        /// The list's configured name.
        list: String,
        /// The missing builtin.
        name: String,
    },
}

/// Why a name is or is not blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No list mentions the name or a parent.
    NotListed,
    /// A block list has the name or a parent (`rule`), and no allow rule applies.
    Blocked {
        /// Index into [`Snapshot::lists`].
        list: usize,
        /// The listed domain that matched.
        rule: String,
    },
    /// An allow list has the name or a parent; this beats any block rule.
    Allowed {
        /// Index into [`Snapshot::lists`].
        list: usize,
        /// The allowed domain that matched.
        rule: String,
    },
}

/// The lists as they were at one moment: immutable once built.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Domain → index of the first block list that has it.
    deny: HashMap<Box<str>, u16>,
    /// Domain → index of the first allow list that has it.
    allow: HashMap<Box<str>, u16>,
    /// Every configured list, block lists first, in config order.
    pub lists: Vec<ListMeta>,
    /// How long the build took.
    pub build_time: Duration,
}

impl Snapshot {
    /// Loads and indexes every list of `config`. Invalid lines are skipped
    /// and logged with file:line; an unreadable list fails the whole build so
    /// the caller can keep serving the previous snapshot.
    pub fn build(config: &BlockingConfig, base_dir: &std::path::Path) -> Result<Self, ListError> {
        let started = Instant::now();
        let mut snap = Self::default();
        let all = config
            .lists
            .iter()
            .map(|l| (l, ListKind::Block))
            .chain(config.allow.iter().map(|l| (l, ListKind::Allow)));
        for (index, (list, kind)) in all.enumerate() {
            let (origin, text) = read_source(list, base_dir)?;
            let parsed = parse_list(&text);
            for bad in parsed.invalid.iter().take(LOGGED_INVALID_LINES) {
                tracing::warn!(
                    list = %list.name,
                    "{origin}:{}: skipped line {:?}: {}",
                    bad.line, bad.text, bad.reason
                );
            }
            if parsed.invalid.len() > LOGGED_INVALID_LINES {
                tracing::warn!(
                    list = %list.name,
                    "{origin}: {} more invalid lines skipped",
                    parsed.invalid.len() - LOGGED_INVALID_LINES
                );
            }
            let set = match kind {
                ListKind::Block => &mut snap.deny,
                ListKind::Allow => &mut snap.allow,
            };
            let index = u16::try_from(index).expect("fewer than 65536 lists");
            let mut distinct = 0;
            for domain in parsed.domains {
                if let std::collections::hash_map::Entry::Vacant(v) =
                    set.entry(domain.into_boxed_str())
                {
                    v.insert(index);
                    distinct += 1;
                } else {
                    // Counted for the first list that has it; a duplicate
                    // within the same list is not counted twice either.
                }
            }
            snap.lists.push(ListMeta {
                name: Arc::from(list.name.as_str()),
                kind,
                origin,
                domains: distinct,
                invalid_lines: parsed.invalid.len(),
            });
        }
        snap.deny.shrink_to_fit();
        snap.allow.shrink_to_fit();
        snap.build_time = started.elapsed();
        Ok(snap)
    }

    /// Total distinct blocked domains.
    pub fn blocked_domains(&self) -> usize {
        self.deny.len()
    }

    /// Decides a query name. Allow rules win over block rules at any depth:
    /// if the name or any parent is allowed, it is not blocked.
    pub fn lookup(&self, name: &LowerName) -> Verdict {
        let mut buf = NameBuf::default();
        let Some(full) = buf.fill(name) else {
            return Verdict::NotListed;
        };
        self.lookup_str(full)
    }

    /// [`Snapshot::lookup`] for a lowercase name without a trailing dot.
    pub fn lookup_str(&self, full: &str) -> Verdict {
        let mut blocked = None;
        for suffix in suffixes(full) {
            if let Some(&list) = self.allow.get(suffix) {
                return Verdict::Allowed {
                    list: usize::from(list),
                    rule: suffix.to_string(),
                };
            }
            if blocked.is_none() {
                if let Some(&list) = self.deny.get(suffix) {
                    blocked = Some((list, suffix));
                }
            }
        }
        match blocked {
            Some((list, rule)) => Verdict::Blocked {
                list: usize::from(list),
                rule: rule.to_string(),
            },
            None => Verdict::NotListed,
        }
    }

    /// The block list index that blocks `name`, if any, without allocating:
    /// the query path's version of [`Snapshot::lookup`].
    pub fn blocking_list(&self, name: &LowerName) -> Option<usize> {
        if self.deny.is_empty() {
            return None;
        }
        let mut buf = NameBuf::default();
        let full = buf.fill(name)?;
        let mut blocked = None;
        for suffix in suffixes(full) {
            if self.allow.contains_key(suffix) {
                return None;
            }
            if blocked.is_none() {
                blocked = self.deny.get(suffix).map(|&l| usize::from(l));
            }
        }
        blocked
    }
}

/// `a.b.c`, `b.c`, `c`.
fn suffixes(name: &str) -> impl Iterator<Item = &str> {
    std::iter::once(name).chain(name.match_indices('.').map(move |(i, _)| &name[i + 1..]))
}

/// A stack buffer holding a query name as `a.b.c` (lowercase, no trailing
/// dot), so matching does not allocate.
struct NameBuf {
    bytes: [u8; 255],
}

impl Default for NameBuf {
    fn default() -> Self {
        Self { bytes: [0; 255] }
    }
}

impl NameBuf {
    /// Writes the name; `None` for the root or a label that is not UTF-8 text.
    fn fill(&mut self, name: &LowerName) -> Option<&str> {
        let mut len = 0;
        for label in name.iter() {
            if len > 0 {
                *self.bytes.get_mut(len)? = b'.';
                len += 1;
            }
            self.bytes
                .get_mut(len..len + label.len())?
                .copy_from_slice(label);
            len += label.len();
        }
        if len == 0 {
            return None;
        }
        std::str::from_utf8(&self.bytes[..len]).ok()
    }
}

fn read_source(
    list: &ListConfig,
    base_dir: &std::path::Path,
) -> Result<(String, String), ListError> {
    match list.resolved_source(base_dir) {
        ListSource::File(path) => match std::fs::read(&path) {
            Ok(bytes) => Ok((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            )),
            Err(source) => Err(ListError::Read {
                list: list.name.clone(),
                path,
                source,
            }),
        },
        ListSource::Builtin(name) => match BUILTIN.iter().find(|(n, _, _)| *n == name) {
            Some((_, path, text)) => Ok((format!("builtin:{name} ({path})"), (*text).to_string())),
            None => Err(ListError::NoBuiltin {
                list: list.name.clone(),
                name,
            }),
        },
    }
}

/// The one place the current lists live. Readers call [`ListStore::load`];
/// only the single writer (startup, and later the reload task) calls
/// [`ListStore::store`].
pub struct ListStore {
    current: ArcSwap<Snapshot>,
}

impl ListStore {
    /// A store holding `snapshot`.
    pub fn new(snapshot: Snapshot) -> Self {
        Self {
            current: ArcSwap::from_pointee(snapshot),
        }
    }

    /// The current snapshot; cheap and lock-free.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Replaces the snapshot atomically.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}

impl fmt::Debug for ListStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListStore")
            .field("lists", &self.load().lists.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    fn lower(s: &str) -> LowerName {
        LowerName::from(Name::from_str(s).unwrap())
    }

    #[test]
    fn parses_plain_hosts_and_comments() {
        let p = parse_list(
            "\u{feff}# header\nExample.COM.\r\n0.0.0.0 a.example b.example # two\n127.0.0.1 localhost\n:: v6.example\nbad name here\n1.2.3.4\nsub..dot\n",
        );
        assert_eq!(
            p.domains,
            ["example.com", "a.example", "b.example", "v6.example"]
        );
        let lines: Vec<_> = p.invalid.iter().map(|i| i.line).collect();
        assert_eq!(lines, [6, 7, 8]);
    }

    #[test]
    fn rejects_ip_literals_and_long_labels() {
        assert!(normalize("10.0.0.1").is_err());
        assert!(normalize(&"a".repeat(64)).is_err());
        assert!(normalize("ex ample.com").is_err());
        assert_eq!(
            normalize("_dmarc.Example.com").unwrap(),
            "_dmarc.example.com"
        );
    }

    fn snapshot(block: &str, allow: &str) -> Snapshot {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), block).unwrap();
        std::fs::write(dir.path().join("a.txt"), allow).unwrap();
        let config = BlockingConfig {
            lists: vec![ListConfig {
                name: "b".into(),
                path: Some("b.txt".into()),
                source: None,
            }],
            allow: vec![ListConfig {
                name: "a".into(),
                path: Some("a.txt".into()),
                source: None,
            }],
            ..BlockingConfig::default()
        };
        Snapshot::build(&config, dir.path()).unwrap()
    }

    #[test]
    fn subdomains_are_blocked_and_allow_wins() {
        let s = snapshot("tracker.example\n", "ok.tracker.example\n");
        assert_eq!(s.blocking_list(&lower("tracker.example.")), Some(0));
        assert_eq!(s.blocking_list(&lower("x.y.tracker.example.")), Some(0));
        assert_eq!(s.blocking_list(&lower("ok.tracker.example.")), None);
        assert_eq!(s.blocking_list(&lower("deep.ok.tracker.example.")), None);
        assert_eq!(s.blocking_list(&lower("tracker.example.org.")), None);
        assert_eq!(s.blocking_list(&lower("xtracker.example.")), None);
        assert!(matches!(
            s.lookup(&lower("a.ok.tracker.example.")),
            Verdict::Allowed { list: 1, .. }
        ));
        assert_eq!(
            s.lookup(&lower("a.tracker.example.")),
            Verdict::Blocked {
                list: 0,
                rule: "tracker.example".into()
            }
        );
        assert_eq!(s.lists[0].domains, 1);
    }

    #[test]
    fn unreadable_file_fails_the_build() {
        let config = BlockingConfig {
            lists: vec![ListConfig {
                name: "gone".into(),
                path: Some("/nonexistent/telesink/list.txt".into()),
                source: None,
            }],
            ..BlockingConfig::default()
        };
        let err = Snapshot::build(&config, std::path::Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/telesink/list.txt"));
    }
}
