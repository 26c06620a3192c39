//! The immutable snapshot of every list, and matching against it.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Read, Seek};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hashbrown::DefaultHashBuilder;
use hickory_proto::rr::LowerName;
use regex::RegexSet;

use super::parse::{Action, Pattern, Rule, Skip, parse_line};
use super::set::{DomainSet, MAX_LISTS};
use crate::config::ListSource;
use crate::resolver::BlockPolicy;

/// How many invalid lines of one list are logged with their location; the
/// rest are only counted, so a broken 100k-line file cannot flood the log.
const LOGGED_INVALID_LINES: usize = 5;

/// Whether a list blocks or allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `[[blocking.lists]]`: its plain rules block; `@@` rules in it allow.
    Block,
    /// `[[blocking.allow]]`: every rule in it allows.
    Allow,
}

impl ListKind {
    /// `block` or `allow`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Allow => "allow",
        }
    }
}

/// What is known about one loaded list.
#[derive(Debug, Clone)]
pub struct ListMeta {
    /// The configured name, used as the `list` metrics label.
    pub name: Arc<str>,
    /// Block or allow.
    pub kind: ListKind,
    /// Where the text comes from.
    pub source: ListSource,
    /// Where the text was read from, for messages (`builtin:xiaomi
    /// (blocklists/xiaomi.txt)`, a path, or a URL and its cached copy).
    pub origin: String,
    /// Distinct domain and wildcard rules.
    pub domains: usize,
    /// Regular expression rules.
    pub regexes: usize,
    /// Lines that were no rule in any supported format.
    pub invalid_lines: usize,
    /// Valid rules DNS cannot honour (adblock modifiers, cosmetic rules).
    pub unsupported_lines: usize,
    /// When the text now in use was loaded; `None` if it never was.
    pub loaded_at: Option<SystemTime>,
    /// Why the latest load failed, if it did (the previous text then
    /// stays in use).
    pub error: Option<String>,
    /// How often a downloaded list is refreshed; `None` for local lists.
    pub refresh: Option<Duration>,
}

/// The text of one list for a build, or why it could not be read.
#[derive(Debug)]
pub struct ListInput {
    /// Configured name.
    pub name: String,
    /// Block or allow.
    pub kind: ListKind,
    /// Where it comes from.
    pub source: ListSource,
    /// For messages.
    pub origin: String,
    /// The lines, or why opening them failed (then the previous
    /// snapshot's entries of the list are kept).
    pub text: Result<ListText, String>,
    /// When the text was obtained.
    pub loaded_at: Option<SystemTime>,
    /// How often a downloaded list is refreshed; `None` for local lists.
    pub refresh: Option<Duration>,
}

impl ListInput {
    /// A list given as text in memory (a `builtin:` source named `name`),
    /// for tests, benchmarks and the fuzz harness.
    pub fn from_text(name: &str, kind: ListKind, text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            name: name.into(),
            kind,
            source: ListSource::Builtin(name.into()),
            origin: name.into(),
            text: Ok(ListText::Memory(text.into())),
            loaded_at: None,
            refresh: None,
        }
    }
}

/// A list's lines, as a build reads them.
#[derive(Debug)]
pub enum ListText {
    /// Text already in memory: a builtin list, or a test's.
    Memory(Cow<'static, str>),
    /// An open file, read line by line while the snapshot is built. A big
    /// list is never held whole in memory beside the old and the new
    /// snapshot, which is what bounds memory during a reload.
    File(std::fs::File),
}

/// Read buffer for list files: big enough that a 1M-line list costs a few
/// hundred reads, small beside the sets being built.
const READ_BUFFER: usize = 64 * 1024;

impl ListText {
    /// Calls `rule` for every rule with its 1-based line number, and
    /// returns the lines skipped; an error if a file cannot be read to its
    /// end (then some rules may already have been passed to `rule`).
    pub fn parse(self, rule: impl FnMut(usize, Rule<'_>)) -> std::io::Result<Skipped> {
        match self {
            Self::Memory(text) => Ok(parse_text(&text, rule)),
            Self::File(file) => parse_lines(&mut BufReader::with_capacity(READ_BUFFER, file), rule),
        }
    }

    /// Lines and bytes, to size the sets before inserting: a pass over
    /// the file (from the page cache, as it was just written) costs far
    /// less than a set doubling, which briefly holds two copies.
    fn size(&mut self) -> std::io::Result<(usize, usize)> {
        let mut count = RuleLines::default();
        match self {
            Self::Memory(text) => count.feed(text.as_bytes()),
            Self::File(file) => {
                let mut buf = vec![0; READ_BUFFER];
                loop {
                    match file.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => count.feed(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                file.rewind()?;
            }
        }
        Ok((count.lines, count.bytes))
    }
}

/// Counts the lines of a list that may hold a rule, and their bytes: not
/// blank, not a comment. What the sets reserve room for, so a file of
/// blank lines or comments reserves nothing. A line counts at most
/// [`MAX_NAME_BYTES`] bytes: a file of huge lines or none (a disk image
/// given as a list) must not reserve its whole size.
struct RuleLines {
    lines: usize,
    bytes: usize,
    /// Bytes of the current line counted so far.
    line_bytes: usize,
    /// Still in the leading whitespace of a line.
    at_start: bool,
    /// The current line is counted.
    counting: bool,
}

impl Default for RuleLines {
    fn default() -> Self {
        Self {
            lines: 0,
            bytes: 0,
            line_bytes: 0,
            at_start: true,
            counting: false,
        }
    }
}

impl RuleLines {
    fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            if b == b'\n' {
                self.at_start = true;
                self.counting = false;
                self.line_bytes = 0;
                continue;
            }
            if self.at_start {
                if b.is_ascii_whitespace() {
                    continue;
                }
                self.at_start = false;
                self.counting = b != b'#' && b != b'!';
                self.lines += usize::from(self.counting);
            }
            if self.counting && self.line_bytes < MAX_NAME_BYTES {
                self.line_bytes += 1;
                self.bytes += 1;
            }
        }
    }
}

/// The most a line adds to a set's reservation: a name is at most 253
/// bytes (a hosts line with several is reserved short, and grows).
const MAX_NAME_BYTES: usize = 256;

/// How many times a list's regular expressions may be halved to fit the
/// regex crate's size limit: at most 2^3 = 8 sets per list, each matched
/// against every query that reaches the lists, each at most that limit.
const REGEX_SPLITS: u32 = 3;

/// `patterns` compiled into as few sets as the regex crate's size limit
/// allows: all in one when they fit, else halves, and so on, at most
/// [`REGEX_SPLITS`] times. Patterns that compile alone can still be too big
/// together (300 with Unicode `\w` are); what does not fit even then goes
/// to `skip`.
fn regex_sets(
    patterns: Vec<String>,
    splits: u32,
    skip: &mut impl FnMut(&str, regex::Error),
) -> Vec<(Vec<String>, RegexSet)> {
    match RegexSet::new(&patterns) {
        Ok(set) => vec![(patterns, set)],
        Err(error) if patterns.len() == 1 || splits == 0 => {
            for p in &patterns {
                skip(p, error.clone());
            }
            Vec::new()
        }
        Err(_) => {
            let mut first = patterns;
            let second = first.split_off(first.len() / 2);
            let mut sets = regex_sets(first, splits - 1, skip);
            sets.extend(regex_sets(second, splits - 1, skip));
            sets
        }
    }
}

/// Some of one list's regular expressions, compiled into one automaton.
#[derive(Debug, Clone)]
struct ListRegexes {
    list: usize,
    action: Action,
    patterns: Vec<String>,
    set: RegexSet,
}

/// The lines a parse skipped: the first few in full, for the log, and
/// how many of each kind. Not every line: a file of millions of junk
/// lines must not be kept in memory as their text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    /// The first few (five) skipped lines.
    pub first: Vec<SkippedLine>,
    /// Lines that were not a rule in any supported format.
    pub invalid: usize,
    /// Valid rules of a kind DNS blocking cannot honour.
    pub unsupported: usize,
}

impl Skipped {
    fn push(&mut self, line: SkippedLine) {
        match line.skip {
            Skip::Invalid(_) => self.invalid += 1,
            Skip::Unsupported(_) => self.unsupported += 1,
        }
        if self.first.len() < LOGGED_INVALID_LINES {
            self.first.push(line);
        }
    }

    /// Lines skipped in all.
    pub fn len(&self) -> usize {
        self.invalid + self.unsupported
    }

    /// Whether no line was skipped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A line that could not be used, with where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedLine {
    /// 1-based line number.
    pub line: usize,
    /// The line as written (trimmed).
    pub text: String,
    /// Why it was skipped.
    pub skip: Skip,
}

/// The rule that decided a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchedRule {
    /// A domain rule (the name or a parent).
    Domain(String),
    /// A `*.` rule.
    Subdomains(String),
    /// A regular expression.
    Regex(String),
}

impl std::fmt::Display for MatchedRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Domain(d) => f.write_str(d),
            Self::Subdomains(d) => write!(f, "*.{d}"),
            Self::Regex(r) => write!(f, "/{r}/"),
        }
    }
}

/// Why a name is or is not blocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No rule mentions the name or a parent.
    NotListed,
    /// A block rule matched and no allow rule applies.
    Blocked {
        /// Index into [`Snapshot::lists`].
        list: usize,
        /// The rule.
        rule: MatchedRule,
    },
    /// An allow rule matched; it beats any block rule.
    Allowed {
        /// Index into [`Snapshot::lists`].
        list: usize,
        /// The rule.
        rule: MatchedRule,
        /// The block rule it overrode, if any.
        overrode: Option<(usize, MatchedRule)>,
    },
}

impl Verdict {
    /// The verdict from the first allow and the first block rule found:
    /// an allow beats a block, and names the block it overrode.
    fn of(allowed: Option<(usize, MatchedRule)>, blocked: Option<(usize, MatchedRule)>) -> Self {
        match (allowed, blocked) {
            (Some((list, rule)), overrode) => Self::Allowed {
                list,
                rule,
                overrode,
            },
            (None, Some((list, rule))) => Self::Blocked { list, rule },
            (None, None) => Self::NotListed,
        }
    }
}

/// Every list as it was at one moment: immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    hasher: DefaultHashBuilder,
    deny: DomainSet,
    deny_sub: DomainSet,
    allow: DomainSet,
    allow_sub: DomainSet,
    regexes: Vec<ListRegexes>,
    /// Every configured list, block lists first, in config order.
    pub lists: Vec<ListMeta>,
    /// How blocked names are answered.
    pub policy: BlockPolicy,
    /// How long the build took.
    pub build_time: Duration,
}

impl Default for Snapshot {
    fn default() -> Self {
        let hasher = DefaultHashBuilder::default();
        Self {
            deny: DomainSet::with_hasher(hasher.clone()),
            deny_sub: DomainSet::with_hasher(hasher.clone()),
            allow: DomainSet::with_hasher(hasher.clone()),
            allow_sub: DomainSet::with_hasher(hasher.clone()),
            hasher,
            regexes: Vec::new(),
            lists: Vec::new(),
            policy: BlockPolicy::default(),
            build_time: Duration::ZERO,
        }
    }
}

/// Limits that keep one list from costing too much.
#[derive(Debug, Clone, Copy)]
pub struct BuildLimits {
    /// Regular expressions kept per list; the rest are skipped with a warning.
    pub max_regex_per_list: usize,
}

impl Default for BuildLimits {
    fn default() -> Self {
        Self {
            max_regex_per_list: 1000,
        }
    }
}

/// Calls `rule` for every rule of `text` with its 1-based line number, and
/// returns the lines skipped ([`Skipped`]: the first few, and counts).
pub fn parse_text<'a>(text: &'a str, mut rule: impl FnMut(usize, Rule<'a>)) -> Skipped {
    let mut skipped = Skipped::default();
    for (index, line) in text.lines().enumerate() {
        parse_numbered(index + 1, line, &mut rule, &mut skipped);
    }
    skipped
}

/// The longest line [`parse_lines`] holds. No list has longer lines (a
/// DNS name has at most 253 characters); a binary file might, and its
/// "line" is skipped instead of being read whole into memory.
pub const MAX_LINE: usize = 64 * 1024;

/// [`parse_text`] over a reader, one line in memory at a time. Lines are
/// split as [`str::lines`] does, and invalid UTF-8 is replaced per line
/// as it would be in the whole text. A line longer than [`MAX_LINE`]
/// bytes is skipped as invalid.
pub fn parse_lines(
    reader: &mut dyn BufRead,
    mut rule: impl FnMut(usize, Rule<'_>),
) -> std::io::Result<Skipped> {
    let mut skipped = Skipped::default();
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        if (&mut *reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)?
            == 0
        {
            return Ok(skipped);
        }
        number += 1;
        if buf.len() == MAX_LINE && buf.last() != Some(&b'\n') {
            skip_rest_of_line(reader)?;
            skipped.push(SkippedLine {
                line: number,
                text: String::from_utf8_lossy(&buf[..80]).trim().to_string(),
                skip: Skip::Invalid("a line longer than 64 KiB"),
            });
            continue;
        }
        let bytes = match buf.strip_suffix(b"\n") {
            Some(b) => b.strip_suffix(b"\r").unwrap_or(b),
            None => &buf,
        };
        let line = String::from_utf8_lossy(bytes);
        parse_numbered(number, &line, &mut rule, &mut skipped);
    }
}

/// Consumes `reader` up to and including the next newline.
fn skip_rest_of_line(reader: &mut dyn BufRead) -> std::io::Result<()> {
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(());
        }
        if let Some(at) = available.iter().position(|&b| b == b'\n') {
            reader.consume(at + 1);
            return Ok(());
        }
        let all = available.len();
        reader.consume(all);
    }
}

fn parse_numbered<'a>(
    number: usize,
    line: &'a str,
    rule: &mut impl FnMut(usize, Rule<'a>),
    skipped: &mut Skipped,
) {
    if let Err(skip) = parse_line(line, |r| rule(number, r)) {
        skipped.push(SkippedLine {
            line: number,
            text: line.trim().to_string(),
            skip,
        });
    }
}

impl Snapshot {
    /// Builds a snapshot from list texts. A list whose text could not be
    /// read keeps its entries from `previous` (matched by name and kind).
    /// Invalid lines are skipped, counted and the first few logged.
    pub fn build(
        inputs: Vec<ListInput>,
        policy: BlockPolicy,
        limits: BuildLimits,
        previous: Option<&Self>,
    ) -> Self {
        assert!(
            inputs.len() <= MAX_LISTS,
            "validated: at most {MAX_LISTS} lists"
        );
        let started = Instant::now();
        let mut snap = Self {
            policy,
            ..Self::default()
        };
        for (index, input) in inputs.into_iter().enumerate() {
            let mut meta = ListMeta {
                name: Arc::from(input.name.as_str()),
                kind: input.kind,
                source: input.source,
                origin: input.origin,
                domains: 0,
                regexes: 0,
                invalid_lines: 0,
                unsupported_lines: 0,
                loaded_at: input.loaded_at,
                error: None,
                refresh: input.refresh,
            };
            let read = input
                .text
                .and_then(|text| snap.add_text(index, &mut meta, text, limits));
            if let Err(error) = read {
                snap.keep_previous(index, &mut meta, error, previous);
            }
            snap.lists.push(meta);
        }
        for set in [
            &mut snap.deny,
            &mut snap.deny_sub,
            &mut snap.allow,
            &mut snap.allow_sub,
        ] {
            set.shrink_to_fit();
        }
        snap.count_domains();
        snap.build_time = started.elapsed();
        snap
    }

    /// The list could not be read: log why, drop whatever of it was
    /// already added, and keep its entries from `previous`.
    fn keep_previous(
        &mut self,
        index: usize,
        meta: &mut ListMeta,
        error: String,
        previous: Option<&Self>,
    ) {
        tracing::error!(list = %meta.name, "{}: {error}; keeping the previous version", meta.origin);
        self.forget(index);
        meta.loaded_at = None;
        if let Some(old) = previous {
            self.carry_over(index, meta, old);
        }
        meta.error = Some(error);
    }

    /// Removes list `index` from every set and regular expression.
    fn forget(&mut self, index: usize) {
        for set in [
            &mut self.deny,
            &mut self.deny_sub,
            &mut self.allow,
            &mut self.allow_sub,
        ] {
            set.remove_list(index);
        }
        self.regexes.retain(|r| r.list != index);
    }

    fn add_text(
        &mut self,
        index: usize,
        meta: &mut ListMeta,
        mut text: ListText,
        limits: BuildLimits,
    ) -> Result<(), String> {
        let (lines, bytes) = text.size().map_err(|e| format!("read failed: {e}"))?;
        self.add_lines(index, meta, |rule| text.parse(rule), (lines, bytes), limits)
    }

    /// Adds list `index` from `parse`, which feeds it rules (the list's
    /// text, or in tests a reader that fails). `size` is the lines and
    /// bytes to reserve for.
    fn add_lines(
        &mut self,
        index: usize,
        meta: &mut ListMeta,
        parse: impl FnOnce(&mut dyn FnMut(usize, Rule<'_>)) -> std::io::Result<Skipped>,
        (lines, bytes): (usize, usize),
        limits: BuildLimits,
    ) -> Result<(), String> {
        let mut block_re = Vec::new();
        let mut allow_re = Vec::new();
        let kind = meta.kind;
        // Most lines of a big list are plain names for the block set:
        // reserve for them once instead of growing by doubling.
        match kind {
            ListKind::Block => self.deny.reserve(lines, bytes),
            ListKind::Allow => self.allow.reserve(lines, bytes),
        }
        let skipped = parse(&mut |_, rule: Rule<'_>| {
            // Everything in an allow list allows, whatever its syntax.
            let action = if kind == ListKind::Allow {
                Action::Allow
            } else {
                rule.action
            };
            let (exact, sub) = match action {
                Action::Block => (&mut self.deny, &mut self.deny_sub),
                Action::Allow => (&mut self.allow, &mut self.allow_sub),
            };
            match rule.pattern {
                Pattern::Domain(d) => {
                    exact.insert(d.as_bytes(), index);
                }
                Pattern::Subdomains(d) => {
                    sub.insert(d.as_bytes(), index);
                }
                Pattern::Regex(r) => match action {
                    Action::Block => block_re.push(r.to_string()),
                    Action::Allow => allow_re.push(r.to_string()),
                },
            }
        })
        .map_err(|e| format!("read failed: {e}"))?;
        meta.invalid_lines = skipped.invalid;
        meta.unsupported_lines = skipped.unsupported;
        for bad in &skipped.first {
            tracing::warn!(
                list = %meta.name,
                "{}:{}: skipped {:?}: {}",
                meta.origin, bad.line, bad.text, bad.skip.reason()
            );
        }
        if skipped.len() > LOGGED_INVALID_LINES {
            tracing::warn!(
                list = %meta.name,
                "{}: {} more lines skipped ({} invalid, {} unsupported in all)",
                meta.origin,
                skipped.len() - LOGGED_INVALID_LINES,
                meta.invalid_lines,
                meta.unsupported_lines
            );
        }
        // The block and `@@` expressions of a list share its limit, the
        // `@@` ones first: they are the list's own exceptions, few, and
        // what keeps its block expressions from false positives.
        let mut room = limits.max_regex_per_list;
        for (action, mut patterns) in [(Action::Allow, allow_re), (Action::Block, block_re)] {
            if patterns.is_empty() {
                continue;
            }
            if patterns.len() > room {
                tracing::warn!(
                    list = %meta.name,
                    "{}: {} regular expressions, only {room} more are used ([blocking] max_regex_per_list = {})",
                    meta.origin, patterns.len(), limits.max_regex_per_list
                );
                patterns.truncate(room);
            }
            room -= patterns.len();
            // Compile one by one first so a bad pattern is reported and
            // dropped instead of failing the whole set.
            patterns.retain(|p| match regex::Regex::new(p) {
                Ok(_) => true,
                Err(error) => {
                    tracing::warn!(list = %meta.name, "{}: skipped regular expression /{p}/: {error}", meta.origin);
                    meta.invalid_lines += 1;
                    false
                }
            });
            // One line for all that do not fit, however many.
            let mut too_big: Option<(usize, String)> = None;
            let sets = regex_sets(patterns, REGEX_SPLITS, &mut |p, error| {
                let (n, _) = too_big.get_or_insert_with(|| (0, format!("/{p}/: {error}")));
                *n += 1;
            });
            if let Some((n, first)) = too_big {
                tracing::warn!(list = %meta.name, "{}: {n} regular expressions skipped, too big together or alone; the first: {first}", meta.origin);
                meta.invalid_lines += n;
            }
            for (patterns, set) in sets {
                meta.regexes += patterns.len();
                self.regexes.push(ListRegexes {
                    list: index,
                    action,
                    patterns,
                    set,
                });
            }
        }
        Ok(())
    }

    /// Copies list `meta.name`'s entries from `old` into this snapshot as list `index`.
    fn carry_over(&mut self, index: usize, meta: &mut ListMeta, old: &Self) {
        let Some(j) = old
            .lists
            .iter()
            .position(|l| l.name == meta.name && l.kind == meta.kind)
        else {
            return;
        };
        let bit = 1u32 << j;
        for (from, to) in [
            (&old.deny, &mut self.deny),
            (&old.deny_sub, &mut self.deny_sub),
            (&old.allow, &mut self.allow),
            (&old.allow_sub, &mut self.allow_sub),
        ] {
            for (name, mask) in from.iter() {
                if mask & bit != 0 {
                    to.insert(name, index);
                }
            }
        }
        for re in old.regexes.iter().filter(|r| r.list == j) {
            self.regexes.push(ListRegexes {
                list: index,
                ..re.clone()
            });
        }
        let before = &old.lists[j];
        meta.regexes = before.regexes;
        meta.invalid_lines = before.invalid_lines;
        meta.unsupported_lines = before.unsupported_lines;
        meta.loaded_at = before.loaded_at;
    }

    /// Sets each list's `domains` from the masks, in one pass over the sets.
    fn count_domains(&mut self) {
        let mut counts = [0usize; MAX_LISTS];
        for set in [&self.deny, &self.deny_sub, &self.allow, &self.allow_sub] {
            for (_, mut mask) in set.iter() {
                while mask != 0 {
                    counts[mask.trailing_zeros() as usize] += 1;
                    mask &= mask - 1;
                }
            }
        }
        for (meta, count) in self.lists.iter_mut().zip(counts) {
            meta.domains = count;
        }
    }

    /// Distinct names on block lists (domain and wildcard rules).
    pub fn blocked_domains(&self) -> usize {
        self.deny.len() + self.deny_sub.len()
    }

    /// `N lists, M blocked domains`: what the log and systemd's status
    /// line say is being served.
    pub fn summary(&self) -> String {
        format!(
            "{} lists, {} blocked domains",
            self.lists.len(),
            self.blocked_domains()
        )
    }

    /// Heap bytes held by the name sets.
    pub fn heap_bytes(&self) -> usize {
        [&self.deny, &self.deny_sub, &self.allow, &self.allow_sub]
            .iter()
            .map(|s| s.heap_bytes())
            .sum()
    }

    /// The index of the list that blocks `name`, or `None` if it is not
    /// blocked: the query path's lookup. It does not allocate, but for a
    /// name with an odd label (see `NameBuf::fill`).
    pub fn blocking_list(&self, name: &LowerName) -> Option<usize> {
        if self.deny.is_empty() && self.deny_sub.is_empty() && self.regexes.is_empty() {
            return None;
        }
        let mut buf = NameBuf::new();
        let full = buf.fill(name)?;
        self.blocking_list_str(full)
    }

    /// [`Snapshot::blocking_list`] for a lowercase name without a trailing dot.
    pub fn blocking_list_str(&self, full: &str) -> Option<usize> {
        let found = self.decide(full, Need::Block);
        if found.allowed.is_some() {
            return None;
        }
        found.blocked.map(|(list, _)| list)
    }

    /// Whether an allow rule covers `name`: then the answer to it is never
    /// blocked, not even for a CNAME target on a block list (the user or
    /// the essential list said this name must work, and it is often a
    /// vendor's update or push host behind a shared CDN name).
    pub fn is_allowed(&self, name: &LowerName) -> bool {
        if self.allow.is_empty() && self.allow_sub.is_empty() && self.regexes.is_empty() {
            return false;
        }
        let mut buf = NameBuf::new();
        let Some(full) = buf.fill(name) else {
            return false;
        };
        self.decide(full, Need::Allow).allowed.is_some()
    }

    /// The full verdict for `name` (lowercase, with or without a trailing
    /// dot): which rule of which list decides it, and what an allow rule
    /// overrode. For `explain`; allocates freely.
    pub fn verdict(&self, name: &str) -> Verdict {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let found = self.decide(&name, Need::Full);
        let rule = |(list, hit): (usize, Hit<'_>)| (list, hit.rule(&name));
        Verdict::of(found.allowed.map(rule), found.blocked.map(rule))
    }

    /// The first allow rule and the first block rule for `full` (lowercase,
    /// no trailing dot), as far as `need` asks: the one precedence of the
    /// query path, the CNAME check and `explain`, so they cannot disagree.
    ///
    /// Names are looked up from the name asked to its top-level domain; at
    /// each, a domain rule and (for a parent) a `*.` rule count, and among
    /// several lists the first in config order (the lowest bit) wins.
    /// Domain rules of any depth come before regular expressions, which
    /// are tried in list order. An allow beats a block wherever each was
    /// found. Nothing here allocates.
    // Inlined so each caller's `need` is a constant and the branches for
    // the others fold away: the query path costs what it did when it had
    // its own copy of this walk.
    #[inline(always)]
    fn decide<'a>(&'a self, full: &'a str, need: Need) -> Found<'a> {
        let mut found = Found {
            allowed: None,
            blocked: None,
        };
        let want_allow = !(self.allow.is_empty() && self.allow_sub.is_empty());
        let want_block = need != Need::Allow;
        for (depth, suffix) in suffixes(full).enumerate() {
            let bytes = suffix.as_bytes();
            let hash = self.hasher.hash_one(bytes);
            if want_allow && found.allowed.is_none() {
                found.allowed = first_hit(&self.allow, &self.allow_sub, bytes, hash, depth, suffix);
                if found.allowed.is_some() && need != Need::Full {
                    return found;
                }
            }
            if want_block && found.blocked.is_none() {
                found.blocked = first_hit(&self.deny, &self.deny_sub, bytes, hash, depth, suffix);
            }
        }
        for re in &self.regexes {
            let slot = match re.action {
                Action::Allow => &mut found.allowed,
                Action::Block if want_block => &mut found.blocked,
                Action::Block => continue,
            };
            if slot.is_none() && re.set.is_match(full) {
                *slot = Some((re.list, Hit::Regex(re)));
                if re.action == Action::Allow && need != Need::Full {
                    return found;
                }
            }
        }
        found
    }
}

/// How much of a name's rules [`Snapshot::decide`] looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Whether it is blocked, and by which list: stops at an allow rule.
    Block,
    /// Whether an allow rule covers it: block rules are not looked up.
    Allow,
    /// Both rules, for `explain`, which shows what an allow overrode.
    Full,
}

/// The first allow and block rule for a name, each with its list.
struct Found<'a> {
    allowed: Option<(usize, Hit<'a>)>,
    blocked: Option<(usize, Hit<'a>)>,
}

/// A rule that matched, borrowed, so the query path does not allocate.
#[derive(Clone, Copy)]
enum Hit<'a> {
    /// A domain rule: this suffix of the name.
    Domain(&'a str),
    /// A `*.` rule for this suffix of the name.
    Subdomains(&'a str),
    /// One of these expressions matched the name.
    Regex(&'a ListRegexes),
}

impl Hit<'_> {
    /// The rule as `explain` shows it; `name` is the name it matched.
    fn rule(self, name: &str) -> MatchedRule {
        match self {
            Self::Domain(d) => MatchedRule::Domain(d.to_owned()),
            Self::Subdomains(d) => MatchedRule::Subdomains(d.to_owned()),
            Self::Regex(re) => {
                let i = re.set.matches(name).iter().next().unwrap_or(0);
                MatchedRule::Regex(re.patterns[i].clone())
            }
        }
    }
}

/// The rule for `suffix` at `depth` (0: the name asked): the first list
/// (lowest bit) among the domain rules and, below the name itself, the
/// `*.` rules, with that list's own kind of rule.
#[inline(always)]
fn first_hit<'a>(
    exact: &DomainSet,
    sub: &DomainSet,
    bytes: &[u8],
    hash: u64,
    depth: usize,
    suffix: &'a str,
) -> Option<(usize, Hit<'a>)> {
    let domain = exact.get_hashed(bytes, hash);
    let wildcard = if depth > 0 {
        sub.get_hashed(bytes, hash)
    } else {
        0
    };
    let any = domain | wildcard;
    if any == 0 {
        return None;
    }
    let list = any.trailing_zeros();
    let hit = if domain >> list & 1 != 0 {
        Hit::Domain(suffix)
    } else {
        Hit::Subdomains(suffix)
    };
    Some((list as usize, hit))
}

/// A byte a label holds as it is in the text form [`NameBuf`] matches.
fn plain_byte(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'.' && b != b'\\'
}

/// Appends `labels` to `out` as a name's text form (no trailing dot), each
/// byte but printable ASCII, a dot or a backslash as a decimal `\DDD`
/// escape (RFC 1035 §5.1): the form the lists are matched in.
pub(crate) fn write_escaped<'a>(out: &mut String, labels: impl Iterator<Item = &'a [u8]>) {
    for (i, label) in labels.enumerate() {
        if i > 0 {
            out.push('.');
        }
        for &b in label {
            if plain_byte(b) {
                out.push(char::from(b));
            } else {
                let _ = write!(out, "\\{b:03}");
            }
        }
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
    /// The name with its odd labels escaped, for the rare name that has
    /// one (see [`NameBuf::fill`]); empty, and so unallocated, otherwise.
    escaped: String,
}

impl NameBuf {
    fn new() -> Self {
        Self {
            bytes: [0; 255],
            escaped: String::new(),
        }
    }

    /// Writes the name; `None` for the root.
    ///
    /// A name with a label that holds a dot or is not UTF-8 is written
    /// with such labels' odd bytes (a dot, a backslash, anything but
    /// printable ASCII) as `\DDD` escapes. Joined as they are, the labels
    /// `a.ok`, `tracker`, `test` would read as a name under an allowed
    /// `ok.tracker.test`, and a byte that is not UTF-8 would leave the
    /// name matching nothing: a way past the lists. No list entry holds a
    /// backslash, so an escaped label matches nothing itself, while the
    /// domains above it match as for any other name.
    fn fill(&mut self, name: &LowerName) -> Option<&str> {
        let mut len = 0;
        let mut labels = 0;
        for label in name.iter() {
            if len > 0 {
                *self.bytes.get_mut(len)? = b'.';
                len += 1;
            }
            self.bytes
                .get_mut(len..len + label.len())?
                .copy_from_slice(label);
            len += label.len();
            labels += 1;
        }
        if len == 0 {
            return None;
        }
        // The common case, checked without a branch per byte: valid UTF-8,
        // and no dots but the ones between labels.
        if let Ok(text) = std::str::from_utf8(&self.bytes[..len])
            && text.bytes().filter(|&b| b == b'.').count() + 1 == labels
        {
            return Some(text);
        }
        self.escaped.clear();
        write_escaped(&mut self.escaped, name.iter());
        Some(&self.escaped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    fn input(name: &str, kind: ListKind, text: &'static str) -> ListInput {
        ListInput::from_text(name, kind, text)
    }

    fn build(inputs: Vec<ListInput>) -> Snapshot {
        Snapshot::build(inputs, BlockPolicy::default(), BuildLimits::default(), None)
    }

    fn blocked(s: &Snapshot, name: &str) -> Option<usize> {
        let lower = LowerName::from(Name::from_str(name).unwrap());
        let via_str = s.blocking_list_str(name.trim_end_matches('.'));
        let via_name = s.blocking_list(&lower);
        assert_eq!(via_str, via_name, "{name}");
        via_name
    }

    #[test]
    fn allow_beats_a_parent_block_in_every_format() {
        for (block, allow) in [
            ("tracker.example", "ok.tracker.example"),
            ("0.0.0.0 tracker.example", "0.0.0.0 ok.tracker.example"),
            ("||tracker.example^", "@@||ok.tracker.example^"),
            ("||tracker.example^", "||ok.tracker.example^"),
            ("*.tracker.example", "*.ok.tracker.example"),
            (
                "/^([a-z0-9-]+\\.)*tracker\\.example$/",
                "/(^|\\.)ok\\.tracker\\.example$/",
            ),
        ] {
            let s = build(vec![
                input(
                    "b",
                    ListKind::Block,
                    Box::leak(block.to_string().into_boxed_str()),
                ),
                input(
                    "a",
                    ListKind::Allow,
                    Box::leak(allow.to_string().into_boxed_str()),
                ),
            ]);
            assert_eq!(blocked(&s, "x.tracker.example."), Some(0), "{block}");
            assert_eq!(blocked(&s, "deep.x.tracker.example."), Some(0), "{block}");
            assert_eq!(blocked(&s, "a.ok.tracker.example."), None, "{allow}");
            assert_eq!(blocked(&s, "trackerexample.org."), None);
            assert!(
                matches!(
                    s.verdict("a.ok.tracker.example"),
                    Verdict::Allowed {
                        list: 1,
                        overrode: Some((0, _)),
                        ..
                    }
                ),
                "{allow}"
            );
        }
    }

    #[test]
    fn exception_inside_a_block_list_allows() {
        let s = build(vec![input(
            "b",
            ListKind::Block,
            "||ads.example^\n@@||ok.ads.example^\n",
        )]);
        assert_eq!(blocked(&s, "x.ads.example."), Some(0));
        assert_eq!(blocked(&s, "ok.ads.example."), None);
    }

    /// Labels that do not read back as they were joined (a dot inside,
    /// a byte that is not UTF-8) neither hide a name from its listed
    /// parent nor pass it off as an allowed sibling.
    #[test]
    fn odd_labels_match_as_labels() {
        let s = build(vec![
            input("vendor", ListKind::Block, "tracker.test\n"),
            input("keep", ListKind::Allow, "ok.tracker.test\n"),
        ]);
        let name = |labels: &[&[u8]]| {
            let mut name = Name::from_labels(labels.iter().copied()).unwrap();
            name.set_fqdn(true);
            LowerName::from(name)
        };
        let not_utf8 = name(&[b"\xff", b"tracker", b"test"]);
        assert_eq!(s.blocking_list(&not_utf8), Some(0));
        let dotted = name(&[b"a.ok", b"tracker", b"test"]);
        assert_eq!(s.blocking_list(&dotted), Some(0));
        assert!(!s.is_allowed(&dotted));
        let escape = name(&[b"ok\\", b"tracker", b"test"]);
        assert_eq!(s.blocking_list(&escape), Some(0));
        // The ordinary names, for contrast.
        assert_eq!(s.blocking_list(&name(&[b"ok", b"tracker", b"test"])), None);
        assert_eq!(
            s.blocking_list(&name(&[b"a", b"tracker", b"test"])),
            Some(0)
        );
    }

    #[test]
    fn wildcards_do_not_match_the_apex() {
        let s = build(vec![input("b", ListKind::Block, "*.wild.example\n")]);
        assert_eq!(blocked(&s, "wild.example."), None);
        assert_eq!(blocked(&s, "a.wild.example."), Some(0));
        assert_eq!(blocked(&s, "b.a.wild.example."), Some(0));
    }

    #[test]
    fn attribution_goes_to_the_first_list() {
        let s = build(vec![
            input("one", ListKind::Block, "a.example\n"),
            input("two", ListKind::Block, "a.example\nb.example\n"),
        ]);
        assert_eq!(blocked(&s, "a.example."), Some(0));
        assert_eq!(blocked(&s, "b.example."), Some(1));
        assert_eq!(s.lists[0].domains, 1);
        assert_eq!(s.lists[1].domains, 2);
        assert_eq!(s.blocked_domains(), 2);
    }

    #[test]
    fn a_failed_list_keeps_its_previous_entries() {
        let old = build(vec![
            input("one", ListKind::Block, "a.example\n"),
            input("two", ListKind::Block, "b.example\n/^re\\./\n"),
        ]);
        let mut failed = input("two", ListKind::Block, "");
        failed.text = Err("permission denied".into());
        let new = Snapshot::build(
            vec![failed, input("one", ListKind::Block, "c.example\n")],
            BlockPolicy::default(),
            BuildLimits::default(),
            Some(&old),
        );
        assert_eq!(
            blocked(&new, "b.example."),
            Some(0),
            "carried over as list 0 now"
        );
        assert_eq!(blocked(&new, "re.example."), Some(0), "regexes too");
        assert_eq!(blocked(&new, "a.example."), None, "list one was re-read");
        assert_eq!(blocked(&new, "c.example."), Some(1));
        assert_eq!(new.lists[0].error.as_deref(), Some("permission denied"));
        assert_eq!(new.lists[0].domains, 1);
    }

    #[test]
    fn counts_invalid_and_unsupported_lines() {
        let s = build(vec![input(
            "b",
            ListKind::Block,
            "ok.example\nnot a domain\n||x.example^$third-party\n1.2.3.4\n/([/\n",
        )]);
        let m = &s.lists[0];
        assert_eq!(
            (m.domains, m.invalid_lines, m.unsupported_lines, m.regexes),
            (1, 3, 1, 0)
        );
    }

    #[test]
    fn regex_cap() {
        let s = Snapshot::build(
            vec![input("b", ListKind::Block, "/^a\\./\n/^b\\./\n/^c\\./\n")],
            BlockPolicy::default(),
            BuildLimits {
                max_regex_per_list: 2,
            },
            None,
        );
        assert_eq!(s.lists[0].regexes, 2);
        assert_eq!(blocked(&s, "b.example."), Some(0));
        assert_eq!(blocked(&s, "c.example."), None);
        // Block and `@@` expressions of one list count together, the
        // list's exceptions first.
        let s = Snapshot::build(
            vec![input(
                "b",
                ListKind::Block,
                "/^ads/\n/^trk/\n@@/^ads\\.ok\\./\n/^x/\n",
            )],
            BlockPolicy::default(),
            BuildLimits {
                max_regex_per_list: 2,
            },
            None,
        );
        assert_eq!(s.lists[0].regexes, 2);
        assert_eq!(blocked(&s, "ads.example."), Some(0));
        assert_eq!(blocked(&s, "trk.example."), None);
        let allowed = |n: &str| s.is_allowed(&LowerName::from(Name::from_str(n).unwrap()));
        assert!(allowed("ads.ok.example."));
    }

    #[test]
    fn room_is_reserved_for_rule_lines_only() {
        let text = "a.example\n\n  # c\n! x\n   b.example  \n\r\n\t\n0.0.0.0 c.example";
        let want = (
            3,
            "a.example".len() + "b.example  ".len() + "0.0.0.0 c.example".len(),
        );
        // Whole, and cut into chunks at every place.
        for cut in 0..=text.len() {
            let mut count = RuleLines::default();
            count.feed(&text.as_bytes()[..cut]);
            count.feed(&text.as_bytes()[cut..]);
            assert_eq!((count.lines, count.bytes), want, "cut at {cut}");
        }
        // A file of blank lines reserves nothing.
        let mut blank = ListText::Memory("\n".repeat(1 << 20).into());
        assert_eq!(blank.size().unwrap(), (0, 0));
    }

    #[test]
    fn regexes_too_big_for_one_set_are_all_used() {
        // Each compiles alone; with Unicode `\w` 300 together pass the
        // regex crate's size limit for one set.
        let text: String = (0..300).map(|i| format!("/^ad\\w*{i}[_.-]/\n")).collect();
        let s = build(vec![ListInput::from_text("b", ListKind::Block, text)]);
        let m = &s.lists[0];
        assert_eq!((m.regexes, m.invalid_lines), (300, 0));
        assert_eq!(blocked(&s, "adx0.example."), Some(0));
        assert_eq!(blocked(&s, "ad299-x.example."), Some(0));
        assert_eq!(blocked(&s, "bd299-x.example."), None);
        // Halving stops after REGEX_SPLITS times; what still does not fit
        // is skipped, each pattern counted.
        let patterns: Vec<String> = (0..300).map(|i| format!("^ad\\w*{i}[_.-]")).collect();
        let mut skipped = 0;
        let sets = regex_sets(patterns.clone(), 0, &mut |_, _| skipped += 1);
        assert_eq!((sets.len(), skipped), (0, 300));
        let sets = regex_sets(patterns, REGEX_SPLITS, &mut |_, _| panic!("fits in 8"));
        assert!((2..=8).contains(&sets.len()), "{}", sets.len());
    }

    proptest::proptest! {
        /// Reading a list file line by line gives exactly what parsing
        /// the whole text gives: line numbers, rules, skipped lines, over
        /// CRLF, a BOM, invalid UTF-8 and a missing final newline.
        #[test]
        fn lines_from_a_reader_parse_as_the_whole_text(
            bytes in proptest::collection::vec(
                proptest::sample::select(&b"ab.x-\n\r \t#|^@0/\xff\xef\xbb\xbf*"[..]),
                0..200,
            )
        ) {
            let text = String::from_utf8_lossy(&bytes);
            let mut whole = Vec::new();
            let skipped_whole = parse_text(&text, |n, r| whole.push((n, r.action, format!("{:?}", r.pattern))));
            let mut streamed = Vec::new();
            let skipped_streamed = parse_lines(&mut &bytes[..], |n, r| {
                streamed.push((n, r.action, format!("{:?}", r.pattern)));
            })
            .unwrap();
            proptest::prop_assert_eq!(whole, streamed);
            proptest::prop_assert_eq!(skipped_whole, skipped_streamed);
        }
    }

    #[test]
    fn an_overlong_line_is_skipped_and_the_next_one_read() {
        let mut text = b"a.example\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', 3 * MAX_LINE));
        text.extend_from_slice(b"\nb.example\n");
        let mut rules = Vec::new();
        let skipped = parse_lines(&mut BufReader::new(&text[..]), |n, r| {
            rules.push((n, format!("{:?}", r.pattern)));
        })
        .unwrap();
        assert_eq!(
            rules,
            [
                (1, "Domain(\"a.example\")".into()),
                (3, "Domain(\"b.example\")".into())
            ]
        );
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped.first[0].line, 2);
        assert_eq!(
            skipped.first[0].skip,
            Skip::Invalid("a line longer than 64 KiB")
        );
    }

    /// A reader that fails, as a disk can halfway through a file.
    struct FailingRead;

    impl Read for FailingRead {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("input/output error"))
        }
    }

    #[test]
    fn a_list_that_fails_halfway_keeps_its_previous_entries() {
        let old = build(vec![
            input("one", ListKind::Block, "a.example\n"),
            input("two", ListKind::Block, "b.example\n"),
        ]);
        let mut new = build(vec![input("one", ListKind::Block, "a.example\n")]);
        let mut meta = ListMeta {
            name: "two".into(),
            ..new.lists[0].clone()
        };
        let mut reader = BufReader::new((&b"c.example\n/^c\\./\nd.exam"[..]).chain(FailingRead));
        let error = new
            .add_lines(
                1,
                &mut meta,
                |rule| parse_lines(&mut reader, rule),
                (3, 30),
                BuildLimits::default(),
            )
            .unwrap_err();
        assert_eq!(
            blocked(&new, "c.example."),
            Some(1),
            "read before the error"
        );
        new.keep_previous(1, &mut meta, error, Some(&old));
        new.lists.push(meta);
        new.count_domains();
        assert_eq!(
            blocked(&new, "c.example."),
            None,
            "the half-read list is dropped"
        );
        assert_eq!(
            blocked(&new, "b.example."),
            Some(1),
            "and its last version kept"
        );
        assert_eq!(blocked(&new, "a.example."), Some(0));
        assert_eq!(new.blocked_domains(), 2);
        assert_eq!(new.lists[1].domains, 1);
        let error = new.lists[1].error.as_deref().unwrap();
        assert!(error.contains("input/output error"), "{error}");
    }

    /// One rule of the model below: its text in a list, and whom it covers.
    #[derive(Debug, Clone, Copy)]
    enum ModelRule {
        Domain(&'static str),
        Subdomains(&'static str),
        Adblock(&'static str),
        AdblockAllow(&'static str),
        /// `/^a\./`: names whose first label is `a`.
        RegexFirstA,
        /// `/b\.a\.x$/`.
        RegexUnderBA,
    }

    impl ModelRule {
        fn line(self) -> String {
            match self {
                Self::Domain(d) => d.to_string(),
                Self::Subdomains(d) => format!("*.{d}"),
                Self::Adblock(d) => format!("||{d}^"),
                Self::AdblockAllow(d) => format!("@@||{d}^"),
                Self::RegexFirstA => "/^a\\./".to_string(),
                Self::RegexUnderBA => "/b\\.a\\.x$/".to_string(),
            }
        }

        /// Whether the rule allows, in a list of `kind`.
        fn allows(self, kind: ListKind) -> bool {
            kind == ListKind::Allow || matches!(self, Self::AdblockAllow(_))
        }

        /// The rule that matches `suffix` of a name, `depth` labels below it.
        fn domain_hit(self, suffix: &str, depth: usize) -> Option<MatchedRule> {
            match self {
                Self::Domain(d) | Self::Adblock(d) | Self::AdblockAllow(d) if d == suffix => {
                    Some(MatchedRule::Domain(d.to_string()))
                }
                Self::Subdomains(d) if d == suffix && depth > 0 => {
                    Some(MatchedRule::Subdomains(d.to_string()))
                }
                _ => None,
            }
        }

        fn regex_hit(self, name: &str) -> Option<MatchedRule> {
            match self {
                Self::RegexFirstA if name.starts_with("a.") => {
                    Some(MatchedRule::Regex("^a\\.".to_string()))
                }
                Self::RegexUnderBA if name.ends_with("b.a.x") => {
                    Some(MatchedRule::Regex("b\\.a\\.x$".to_string()))
                }
                _ => None,
            }
        }
    }

    /// The documented precedence, written the slow and obvious way: for
    /// allow and for block rules alike, the nearest suffix of the name
    /// with a domain rule decides, the first list among several; then
    /// regular expressions, in list order; an allow beats a block.
    fn model(lists: &[(ListKind, Vec<ModelRule>)], name: &str) -> Verdict {
        let first = |allow: bool| -> Option<(usize, MatchedRule)> {
            let mut suffix = name;
            let mut depth = 0;
            loop {
                for (i, (kind, rules)) in lists.iter().enumerate() {
                    for r in rules.iter().filter(|r| r.allows(*kind) == allow) {
                        if let Some(rule) = r.domain_hit(suffix, depth) {
                            // The lowest list wins; within it, a domain
                            // rule names the match before a `*.` rule.
                            let better = rules
                                .iter()
                                .filter(|r| r.allows(*kind) == allow)
                                .find_map(|r| match r.domain_hit(suffix, depth) {
                                    Some(MatchedRule::Domain(d)) => Some(MatchedRule::Domain(d)),
                                    _ => None,
                                });
                            return Some((i, better.unwrap_or(rule)));
                        }
                    }
                }
                match suffix.split_once('.') {
                    Some((_, rest)) => {
                        suffix = rest;
                        depth += 1;
                    }
                    None => break,
                }
            }
            lists.iter().enumerate().find_map(|(i, (kind, rules))| {
                rules
                    .iter()
                    .filter(|r| r.allows(*kind) == allow)
                    .find_map(|r| r.regex_hit(name))
                    .map(|rule| (i, rule))
            })
        };
        Verdict::of(first(true), first(false))
    }

    fn model_rule() -> impl proptest::strategy::Strategy<Value = ModelRule> {
        use proptest::prelude::*;
        let domain = prop::sample::select(&["a.x", "b.a.x", "t.b.a.x", "a.b.a.x"][..]);
        prop_oneof![
            domain.clone().prop_map(ModelRule::Domain),
            domain.clone().prop_map(ModelRule::Subdomains),
            domain.clone().prop_map(ModelRule::Adblock),
            domain.prop_map(ModelRule::AdblockAllow),
            Just(ModelRule::RegexFirstA),
            Just(ModelRule::RegexUnderBA),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// The query path, the CNAME check's `is_allowed` and `explain`
        /// agree with each other and with the model, for any mix of
        /// lists, rule kinds and names.
        #[test]
        fn every_reader_of_the_lists_follows_one_precedence(
            blocks in proptest::collection::vec(proptest::collection::vec(model_rule(), 0..4), 1..4),
            allows in proptest::collection::vec(proptest::collection::vec(model_rule(), 0..3), 0..3),
            name in proptest::sample::select(&[
                "x", "a.x", "b.a.x", "a.b.a.x", "t.b.a.x", "a.t.b.a.x", "b.x", "a.x.x",
            ][..]),
        ) {
            let lists: Vec<(ListKind, Vec<ModelRule>)> = blocks
                .into_iter()
                .map(|r| (ListKind::Block, r))
                .chain(allows.into_iter().map(|r| (ListKind::Allow, r)))
                .collect();
            let inputs = lists
                .iter()
                .enumerate()
                .map(|(i, (kind, rules))| {
                    let text: String = rules.iter().map(|r| r.line() + "\n").collect();
                    ListInput::from_text(&format!("l{i}"), *kind, text)
                })
                .collect();
            let s = build(inputs);
            let expected = model(&lists, name);
            let verdict = s.verdict(name);
            proptest::prop_assert_eq!(&verdict, &expected, "{:?}", lists);
            let blocking = match &expected {
                Verdict::Blocked { list, .. } => Some(*list),
                _ => None,
            };
            proptest::prop_assert_eq!(blocked(&s, &format!("{name}.")), blocking);
            let lower = LowerName::from(Name::from_str(name).unwrap());
            proptest::prop_assert_eq!(
                s.is_allowed(&lower),
                matches!(expected, Verdict::Allowed { .. })
            );
        }
    }

    /// A list of junk keeps neither its skipped lines nor a reservation
    /// of its size: the first few lines for the log, and counts.
    #[test]
    fn junk_costs_no_memory_of_its_size() {
        let mut count = RuleLines::default();
        count.feed(&vec![b'a'; 1 << 20]);
        assert_eq!(
            (count.lines, count.bytes),
            (1, MAX_NAME_BYTES),
            "one huge line"
        );
        count.feed(b"\nads.example\n# comment\n");
        assert_eq!((count.lines, count.bytes), (2, MAX_NAME_BYTES + 11));

        let junk = "not a domain line\n".repeat(10_000) + "example.com##.ad\n";
        let skipped = parse_text(&junk, |_, _| {});
        assert_eq!((skipped.invalid, skipped.unsupported), (10_000, 1));
        assert_eq!(skipped.first.len(), LOGGED_INVALID_LINES);
        assert_eq!(skipped.first[0].line, 1);
    }
}
