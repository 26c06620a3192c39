//! Block and allow lists: parsing, sources, the immutable snapshot, and
//! matching.
//!
//! Everything that must change together when lists are reloaded (the block
//! and allow rules, the answer policy and the metadata of every list) lives
//! in one [`Snapshot`]. The query path loads it from one `ArcSwap`
//! ([`ListStore`]), so a query sees either the old lists or the new ones,
//! never half of each. Snapshots are built off the query path by a single
//! writer (see [`crate::reload`]).

use std::sync::Arc;

use arc_swap::ArcSwap;

mod parse;
mod set;
mod snapshot;
mod source;

pub use parse::{Action, Pattern, Rule, Skip, normalize, parse_line};
pub use set::{DomainSet, MAX_LISTS};
pub(crate) use snapshot::write_escaped;
pub use snapshot::{
    BuildLimits, ListInput, ListKind, ListMeta, ListText, MAX_LINE, MatchedRule, Skipped,
    SkippedLine, Snapshot, Verdict, parse_lines, parse_text,
};
pub(crate) use source::readable_file;
#[cfg(test)]
pub(crate) use source::test_http;
pub use source::{CachePaths, DownloadOutcome, download, read_all, read_list, tidy_cache};

/// Lists compiled into the binary: (name, path in the repository, text).
static BUILTIN: &[(&str, &str, &str)] = include!(concat!(env!("OUT_DIR"), "/builtin_lists.rs"));

/// The text of a builtin list, by name (`xiaomi` for `builtin:xiaomi`).
pub fn builtin(name: &str) -> Option<&'static str> {
    BUILTIN
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, t)| *t)
}

/// The repository path a builtin list was compiled from.
pub fn builtin_path(name: &str) -> Option<&'static str> {
    BUILTIN
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, p, _)| *p)
}

/// Names of all builtin lists.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(n, _, _)| *n)
}

/// Builds the snapshot `config` describes, reading every list (blocking
/// I/O: call it on the blocking pool). Lists that cannot be read keep
/// their entries from `previous`.
pub fn build(config: &crate::config::Config, previous: Option<&Snapshot>) -> Snapshot {
    let limits = BuildLimits {
        max_regex_per_list: config.blocking.max_regex_per_list,
    };
    Snapshot::build(
        read_all(config),
        crate::resolver::BlockPolicy::from_config(&config.blocking),
        limits,
        previous,
    )
}

/// The one place the current lists live. Readers call [`ListStore::load`];
/// only the single writer calls [`ListStore::store`].
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

    /// The current snapshot as an owned `Arc`, for holding across awaits.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the snapshot atomically.
    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}

impl std::fmt::Debug for ListStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListStore")
            .field("lists", &self.load().lists.len())
            .finish()
    }
}
