//! The ids of every cached workload, kept in memory once a full pass over
//! the cache has read them ([`crate::Store::list_remembering`]), so
//! [`crate::Store::is_cached`] answers without reading the cache tree.
//!
//! Why: with 10,000 cached, the `from=0` resync asks `is_cached` of every
//! one (the prechecks and the judge), and each lookup made sled decode and
//! keep the tree node holding the id's whole record (~1.4 KB each): about
//! 3.7 MB of the idle agent's heap (bench/notes.md, section 5c). The ids
//! alone take about a tenth of that.
//!
//! Invariant: once remembered, the set holds exactly the cache tree's keys
//! (what commits applied; staged records are answered by the overlay
//! before the set). Every commit applies the cache records it drops from
//! the overlay to the set under the overlay's write lock, so a read sees
//! each record staged or remembered, never neither. A pass that a commit
//! may have raced is not remembered ([`KnownIds::remember`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use sled::IVec;

/// The remembered ids (`None` until a full pass was remembered) and a count
/// of the commits that changed the cache tree.
#[derive(Default)]
pub(crate) struct KnownIds {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Commits that changed the cache tree, counted whether or not ids are
    /// remembered: a pass remembers its ids only if none came in between.
    changes: u64,
    ids: Option<Ids>,
}

/// A set of ids in few allocations: a reservation id in its canonical form
/// (`<number>-<number>`, no leading zero, each part a u64) as two numbers
/// in one hash table (16 bytes each); any other id apart, as text. One
/// boxed string per id was 10,000 small allocations made while the pass
/// freed the records it decoded, and they kept heap pages from being
/// returned.
#[derive(Default)]
pub(crate) struct Ids {
    numbers: HashSet<(u64, u64)>,
    other: BTreeSet<Box<str>>,
}

// `id` as two numbers, if it is in canonical form (one spelling per pair).
use reservation::id_numbers as numbers;

impl Ids {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Ids {
            numbers: HashSet::with_capacity(n),
            other: BTreeSet::new(),
        }
    }

    pub(crate) fn insert(&mut self, id: &str) {
        match numbers(id) {
            Some(k) => {
                self.numbers.insert(k);
            }
            None => {
                if !self.other.contains(id) {
                    self.other.insert(id.into());
                }
            }
        }
    }

    fn remove(&mut self, id: &str) {
        match numbers(id) {
            Some(k) => self.numbers.remove(&k),
            None => self.other.remove(id),
        };
    }

    fn contains(&self, id: &str) -> bool {
        match numbers(id) {
            Some(k) => self.numbers.contains(&k),
            None => self.other.contains(id),
        }
    }
}

impl KnownIds {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `id` is cached, if the ids are remembered.
    pub(crate) fn is_cached(&self, id: &str) -> Option<bool> {
        self.read().ids.as_ref().map(|ids| ids.contains(id))
    }

    /// Whether the ids are remembered.
    pub(crate) fn remembered(&self) -> bool {
        self.read().ids.is_some()
    }

    /// The count of cache changes now: read it before a pass, give it to
    /// [`KnownIds::remember`] after.
    pub(crate) fn changes(&self) -> u64 {
        self.read().changes
    }

    /// Remember `ids`, every key a pass read from the cache tree, unless a
    /// commit changed the tree since `changes` was read (the pass may have
    /// missed it). Whether they were remembered.
    pub(crate) fn remember(&self, ids: Ids, changes: u64) -> bool {
        let mut k = self.write();
        if k.changes != changes {
            return false;
        }
        k.ids = Some(ids);
        true
    }

    /// A commit applied the staged cache records of generation `gen` and
    /// earlier (`Some`: written, `None`: removed) to the tree. Called with
    /// the overlay's write lock held, before they leave the overlay.
    pub(crate) fn applied(&self, staged: &HashMap<String, (u64, Option<IVec>)>, gen: u64) {
        let mut applied = staged.iter().filter(|(_, (g, _))| *g <= gen).peekable();
        if applied.peek().is_none() {
            return;
        }
        let mut k = self.write();
        k.changes += 1;
        if let Some(ids) = k.ids.as_mut() {
            for (id, (_, record)) in applied {
                match record {
                    Some(_) => ids.insert(id),
                    None => ids.remove(id),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Canonical ids are kept as numbers, every other id as text, and each
    /// is found again only under its exact spelling.
    #[test]
    fn ids_are_found_under_their_exact_spelling() {
        assert_eq!(numbers("12-3"), Some((12, 3)));
        assert_eq!(numbers("0-0"), Some((0, 0)));
        for other in [
            "012-3",
            "12-03",
            "+1-2",
            "1-",
            "-1",
            "1",
            "99999999999999999999-1",
        ] {
            assert_eq!(numbers(other), None, "{other}");
        }
        let mut ids = Ids::with_capacity(4);
        for id in ["12-3", "012-3", "x"] {
            ids.insert(id);
        }
        assert!(ids.contains("12-3") && ids.contains("012-3") && ids.contains("x"));
        assert!(!ids.contains("12-03") && !ids.contains("0012-3") && !ids.contains("3-12"));
        ids.remove("012-3");
        assert!(ids.contains("12-3") && !ids.contains("012-3"));
        ids.remove("12-3");
        assert!(!ids.contains("12-3"));
        assert_eq!((ids.numbers.len(), ids.other.len()), (0, 1));
    }
}
