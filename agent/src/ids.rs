//! Reservation ids as map keys in few bytes: the crash watch and the
//! capacity ledger each hold one entry per cached workload for as long as
//! the agent runs (10,000 on a full node).
//!
//! Why: a `String` key is 24 bytes plus a heap block of its own (32 bytes
//! or more with malloc's overhead), and 10,000 small blocks made while the
//! start-up pass frees the records it decoded keep heap pages from being
//! returned. A canonical id (`<number>-<number>`, no leading zero, each
//! part a u64, as the explorer numbers them) is kept as its two numbers, in
//! the key itself; any other spelling as its exact text, so `01-1` and
//! `1-1` stay two ids (the same rule as the store's remembered ids).

use std::fmt;

/// One reservation id, as its two numbers when canonical, else as text.
/// Ordered numbers first (numerically), then text: only the maps' own
/// order, never shown.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IdKey {
    Numbers(u64, u64),
    Text(Box<str>),
}

// `id` as two numbers, if it is in canonical form (one spelling per pair).
use reservation::id_numbers as numbers;

impl IdKey {
    pub fn new(id: &str) -> Self {
        match numbers(id) {
            Some((n, w)) => IdKey::Numbers(n, w),
            None => IdKey::Text(id.into()),
        }
    }
}

impl From<&str> for IdKey {
    fn from(id: &str) -> Self {
        IdKey::new(id)
    }
}

impl From<String> for IdKey {
    fn from(id: String) -> Self {
        match numbers(&id) {
            Some((n, w)) => IdKey::Numbers(n, w),
            None => IdKey::Text(id.into_boxed_str()),
        }
    }
}

/// The id exactly as it was spelled.
impl fmt::Display for IdKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdKey::Numbers(n, w) => write!(f, "{n}-{w}"),
            IdKey::Text(s) => f.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_spelling_round_trips_exactly() {
        for id in [
            "1-1",
            "0-0",
            "10000-3",
            "18446744073709551615-1",
            "18446744073709551616-1",
            "01-1",
            "1-01",
            "00-0",
            "1-1-1",
            "-1",
            "1-",
            "+1-1",
            " 1-1",
            "a-b",
            "",
            "1",
            "١-1",
        ] {
            assert_eq!(IdKey::new(id).to_string(), id, "{id:?}");
            assert_eq!(IdKey::from(id.to_string()).to_string(), id, "{id:?}");
        }
    }

    #[test]
    fn canonical_ids_are_numbers_and_others_stay_apart() {
        assert_eq!(IdKey::new("12-3"), IdKey::Numbers(12, 3));
        assert_eq!(IdKey::new("0-7"), IdKey::Numbers(0, 7));
        // Spellings that parse to the same numbers are other ids.
        let ids = ["1-1", "01-1", "1-01", "001-1", "+1-1"];
        let keys: HashSet<IdKey> = ids.iter().map(|i| IdKey::new(i)).collect();
        assert_eq!(keys.len(), ids.len(), "{keys:?}");
        for id in &ids[1..] {
            assert!(matches!(IdKey::new(id), IdKey::Text(_)), "{id}");
        }
        // Beyond u64: text, not wrapped or cut.
        assert!(matches!(
            IdKey::new("18446744073709551616-1"),
            IdKey::Text(_)
        ));
    }
}
