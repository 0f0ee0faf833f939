//! What start-up learns from one pass over the cache: each cached record is
//! decoded once, charged to the capacity [`Ledger`], and kept only as what
//! reconciliation ([`Live`]) and the crash watch ([`Watched`]) need, never
//! as whole reservations. With 10,000 cached, the records were decoded three
//! times at start (ledger, reconciliation, crash watch) and held all at once.

use chrono::{DateTime, Utc};
use provisioners::names::Names;
use store::{Cached, Store};

use crate::capacity::Ledger;
use crate::crash::Watched;

/// A cached workload as reconciliation needs it: its id, its type, and when
/// it expires (`None`: it counts as expired already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub id: String,
    pub kind: String,
    pub expires: Option<DateTime<Utc>>,
}

impl Live {
    fn of(c: &Cached) -> Live {
        let r = &c.reservation;
        Live {
            id: r.id.clone(),
            kind: r.kind.clone(),
            expires: r.expires_at().filter(|_| r.duration > 0),
        }
    }

    /// Whether it has expired at `now` (as `Reservation::is_expired`).
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_none_or(|at| at <= now)
    }
}

/// The one pass's findings.
#[derive(Debug, Default)]
pub struct Inventory {
    /// Every cached workload, for reconciliation.
    pub live: Vec<Live>,
    /// The containers the crash watch follows.
    pub watched: Vec<Watched>,
    /// The ids of every cached workload the crash watch does not follow.
    pub unwatched: Vec<String>,
    /// [`Store::cache_generation`] before the pass.
    pub generation: u64,
    /// How many the ledger charged.
    pub charged: usize,
    /// The first record that could not be read (reconciliation fails on
    /// it, as when it read the cache itself; the ledger skips it).
    pub unreadable: Option<store::StoreError>,
}

/// Read the cache once: charge `ledger` (rebuilt from nothing) and collect
/// what reconciliation and the crash watch (containers named in `names`)
/// need.
pub fn take(store: &Store, ledger: &mut Ledger, names: &Names) -> Inventory {
    let mut inv = Inventory {
        generation: store.cache_generation(),
        ..Inventory::default()
    };
    ledger.clear();
    // Remembering every cached id as it goes: the `from=0` resync's
    // `is_cached` of each then reads no tree node (store::Store::list_remembering).
    for c in store.list_remembering() {
        let c = match c {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a cached workload; not charged");
                inv.unreadable.get_or_insert(e);
                continue;
            }
        };
        ledger.charge_cached(&c);
        inv.live.push(Live::of(&c));
        match Watched::of(&c, names) {
            Some(w) => inv.watched.push(w),
            None => inv.unwatched.push(c.reservation.id.clone()),
        }
    }
    ledger.compact();
    inv.charged = ledger.len();
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pass finds every cached workload and leaves the store answering
    /// `is_cached` from the ids it read (the resync then reads no tree
    /// node), kept true through a decommission after it.
    #[test]
    fn the_pass_remembers_every_cached_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let node = reservation::Identity::generate();
        for (id, kind) in [("1-1", "container"), ("2-1", "volume")] {
            crate::testing::cache_bare(&store, &node, id, kind);
        }
        let mut ledger = Ledger::unbounded();
        let inv = take(&store, &mut ledger, &Names::unscoped());
        let ids: Vec<&str> = inv.live.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, ["1-1", "2-1"]);
        assert_eq!((inv.watched.len(), inv.unwatched.len()), (1, 1));
        assert!(store.remembers_cached_ids());
        assert!(store.is_cached("1-1").unwrap() && !store.is_cached("3-1").unwrap());
        store
            .record_decommissioned("1-1", "container", "", "c2ln", None)
            .unwrap();
        assert!(!store.is_cached("1-1").unwrap());
        assert!(store.is_cached("2-1").unwrap());
    }
}
