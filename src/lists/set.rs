//! A compact set of domain names, each with a bit mask of the lists that
//! contain it.
//!
//! A `HashSet<String>` costs about 80–100 bytes per domain on a 64-bit
//! machine (a 24-byte `String`, a separate heap block with allocator
//! overhead, and the table slot). Here every name lives in one byte arena
//! as `[mask: u32 LE][len: u8][bytes]`, and the hash table holds only a
//! 4-byte offset into it, so a 25-byte name costs about 36 bytes in all.
//! Lookups hash the probe once and compare bytes in place; nothing is
//! allocated. Built once, then read-only, so it needs no locking.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

/// Bytes before the name in an arena entry: the list mask and the length.
const HEADER: usize = 5;

/// The most lists a set can tell apart (bits of the mask).
pub const MAX_LISTS: usize = 32;

/// A set of lowercase domain names with per-name list masks.
#[derive(Clone, Default)]
pub struct DomainSet {
    arena: Vec<u8>,
    table: HashTable<u32>,
    hasher: DefaultHashBuilder,
}

impl std::fmt::Debug for DomainSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainSet")
            .field("len", &self.len())
            .field("bytes", &self.heap_bytes())
            .finish()
    }
}

impl DomainSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty set hashing with `hasher`: sets that share a hasher can be
    /// probed with one hash per name ([`DomainSet::get_hashed`]).
    pub fn with_hasher(hasher: DefaultHashBuilder) -> Self {
        Self {
            arena: Vec::new(),
            table: HashTable::new(),
            hasher,
        }
    }

    /// Number of distinct names.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The hash of a name, for [`DomainSet::get_hashed`].
    pub fn hash(&self, name: &[u8]) -> u64 {
        self.hasher.hash_one(name)
    }

    fn name_at(arena: &[u8], offset: u32) -> &[u8] {
        let at = offset as usize;
        let len = usize::from(arena[at + 4]);
        &arena[at + HEADER..at + HEADER + len]
    }

    fn mask_at(arena: &[u8], offset: u32) -> u32 {
        let at = offset as usize;
        u32::from_le_bytes(arena[at..at + 4].try_into().expect("4 bytes"))
    }

    /// Adds `name` for list `list` (0-based, below [`MAX_LISTS`]). Names
    /// longer than 255 bytes cannot be DNS names and are ignored. Returns
    /// true if the name was new to the set.
    pub fn insert(&mut self, name: &[u8], list: usize) -> bool {
        let Ok(len) = u8::try_from(name.len()) else {
            return false;
        };
        debug_assert!(list < MAX_LISTS);
        let bit = 1u32 << list;
        let hash = self.hash(name);
        let arena = &mut self.arena;
        if let Some(&offset) = self.table.find(hash, |&o| Self::name_at(arena, o) == name) {
            let at = offset as usize;
            let mask = Self::mask_at(arena, offset) | bit;
            arena[at..at + 4].copy_from_slice(&mask.to_le_bytes());
            return false;
        }
        let offset = u32::try_from(arena.len()).expect("list arena under 4 GiB");
        arena.extend_from_slice(&bit.to_le_bytes());
        arena.push(len);
        arena.extend_from_slice(name);
        let hasher = &self.hasher;
        let arena = &self.arena;
        self.table
            .insert_unique(hash, offset, |&o| hasher.hash_one(Self::name_at(arena, o)));
        true
    }

    /// Makes room for about `names` more names of `bytes` bytes in all, so
    /// a large list is built without the arena and table doubling (which
    /// briefly holds two copies).
    pub fn reserve(&mut self, names: usize, bytes: usize) {
        // Only a hint: if the memory is not there, the set grows as names
        // come (most lines of a broken list hold none) instead of the
        // process aborting.
        if self
            .arena
            .try_reserve(bytes.saturating_add(names.saturating_mul(HEADER)))
            .is_err()
        {
            return;
        }
        let hasher = &self.hasher;
        let arena = &self.arena;
        let _ = self
            .table
            .try_reserve(names, |&o| hasher.hash_one(Self::name_at(arena, o)));
    }

    /// The list mask of `name`, or 0 if absent.
    pub fn get(&self, name: &[u8]) -> u32 {
        self.get_hashed(name, self.hash(name))
    }

    /// [`DomainSet::get`] with a hash from [`DomainSet::hash`] of a set
    /// built with the same hasher (the same set, or a clone of it).
    pub fn get_hashed(&self, name: &[u8], hash: u64) -> u32 {
        self.table
            .find(hash, |&o| Self::name_at(&self.arena, o) == name)
            .map_or(0, |&o| Self::mask_at(&self.arena, o))
    }

    /// Every name with its mask, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], u32)> {
        let mut at = 0usize;
        std::iter::from_fn(move || {
            if at >= self.arena.len() {
                return None;
            }
            let offset = u32::try_from(at).ok()?;
            let name = Self::name_at(&self.arena, offset);
            let mask = Self::mask_at(&self.arena, offset);
            at += HEADER + name.len();
            Some((name, mask))
        })
    }

    /// Removes list `list` from every name, and names left in no list.
    /// Rebuilds the set: only a list that failed halfway through needs it.
    pub fn remove_list(&mut self, list: usize) {
        let bit = 1u32 << list;
        if self.iter().all(|(_, mask)| mask & bit == 0) {
            return;
        }
        let mut kept = Self::with_hasher(self.hasher.clone());
        for (name, mask) in self.iter() {
            for other in (0..MAX_LISTS).filter(|&i| mask & !bit & (1 << i) != 0) {
                kept.insert(name, other);
            }
        }
        *self = kept;
    }

    /// Releases spare capacity after building.
    pub fn shrink_to_fit(&mut self) {
        self.arena.shrink_to_fit();
        let hasher = &self.hasher;
        let arena = &self.arena;
        self.table
            .shrink_to_fit(|&o| hasher.hash_one(Self::name_at(arena, o)));
    }

    /// Heap bytes held (arena plus table), for reports.
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity() + self.table.allocation_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_masks() {
        let mut s = DomainSet::new();
        assert!(s.insert(b"a.example", 0));
        assert!(!s.insert(b"a.example", 3));
        assert!(s.insert(b"b.example", 1));
        assert_eq!(s.get(b"a.example"), 0b1001);
        assert_eq!(s.get(b"b.example"), 0b10);
        assert_eq!(s.get(b"c.example"), 0);
        assert_eq!(s.len(), 2);
        s.shrink_to_fit();
        assert_eq!(s.get(b"b.example"), 0b10);
        let all: Vec<_> = s.iter().collect();
        assert_eq!(
            all,
            [(&b"a.example"[..], 0b1001), (&b"b.example"[..], 0b10)]
        );
    }

    #[test]
    fn many_names_survive_growth() {
        let mut s = DomainSet::new();
        for i in 0..10_000 {
            s.insert(format!("host{i}.example").as_bytes(), i % 32);
        }
        for i in 0..10_000 {
            assert_eq!(s.get(format!("host{i}.example").as_bytes()), 1 << (i % 32));
        }
        assert_eq!(s.get(b"host10000.example"), 0);
    }

    #[test]
    fn removing_a_list_keeps_the_others() {
        let mut s = DomainSet::new();
        s.insert(b"only.example", 2);
        s.insert(b"both.example", 2);
        s.insert(b"both.example", 5);
        s.insert(b"other.example", 0);
        s.remove_list(2);
        assert_eq!(s.get(b"only.example"), 0);
        assert_eq!(s.get(b"both.example"), 1 << 5);
        assert_eq!(s.get(b"other.example"), 1);
        assert_eq!(s.len(), 2, "a name in no list is gone");
        s.remove_list(7);
        assert_eq!(s.len(), 2);
    }
}
