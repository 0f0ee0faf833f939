//! Reconciliation between Docker and the cache, at start. It reads the
//! store and asks Docker; what must change in the cache it asks of the
//! engine with [`EngineCommand`]s (it never imports the engine):
//! - a cached workload whose objects are gone is provisioned again
//!   ([`EngineCommand::Repair`]; the engine takes them before any work,
//!   and [`start`] returns once they are recorded);
//! - a labelled object the cache does not know is removed, right after
//!   the last page of the first `from=0` resync (by which time every valid
//!   reservation has been adopted by idempotent provisioning), while the
//!   engine holds still ([`SweepGate`]), so it can never race a
//!   provisioning in flight.
//!
//! Each repair is logged.

use std::collections::{HashMap, HashSet};

use futures_util::StreamExt;
use provisioners::Registry;
use reservation::Workload;
use store::{Cached, Store};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::commands::{EngineCommand, SweepGate};
use crate::inventory::Live;
use crate::AgentError;

/// Existence checks in flight at once during reconciliation.
const CHECKS_AT_ONCE: usize = 32;

/// Find the cached workloads whose objects are gone and have the engine
/// provision them again; arm the orphan sweep for after the first resync.
/// Returns how many were repaired, once the engine recorded them (`None`
/// if the engine stopped first).
///
/// `cached` is every cached workload as start-up's one pass over the cache
/// found it (`inventory::take`), or the first record it could not read.
pub async fn start(
    store: Store,
    registry: Registry,
    engine: mpsc::Sender<EngineCommand>,
    cached: Result<Vec<Live>, store::StoreError>,
) -> Result<Option<usize>, AgentError> {
    let missing = missing(&store, &registry, cached?).await?;
    crate::memory::release_freed_memory();
    let (synced, synced_rx) = oneshot::channel();
    let (done_tx, done) = oneshot::channel();
    let (repaired, answer) = oneshot::channel();
    let sweep = Some(SweepGate { synced, done });
    let commands = missing
        .into_iter()
        .map(EngineCommand::Repair)
        .chain([EngineCommand::Reconciled { repaired, sweep }]);
    for c in commands {
        if engine.send(c).await.is_err() {
            return Ok(None); // the engine stopped: shutting down
        }
    }
    tokio::spawn(async move {
        if let Ok(running) = synced_rx.await {
            remove_orphans(&store, &registry, &running).await;
        }
        let _ = done_tx.send(());
    });
    let repaired = match answer.await {
        Ok(r) => r?,
        Err(_) => return Ok(None),
    };
    if repaired > 0 {
        info!(
            repaired,
            "reconciliation: re-provisioned workloads whose objects were gone"
        );
    }
    Ok(Some(repaired))
}

/// The ids of cached workloads (not expired: the decommission source takes
/// those) whose Docker objects are gone. Only those the listings do not
/// clear are read from the cache (one at a time) and checked.
async fn missing(
    store: &Store,
    registry: &Registry,
    cached: Vec<Live>,
) -> Result<Vec<String>, AgentError> {
    let now = chrono::Utc::now();
    // One listing per type clears most workloads at once; the rest are
    // checked one by one (reads: side by side, a bounded number at once),
    // so a node with thousands of workloads is ready in about a second.
    let mut present: HashMap<String, HashSet<String>> = HashMap::new();
    for kind in registry.kinds().collect::<Vec<_>>() {
        let Some(p) = registry.get(kind) else {
            continue;
        };
        match p.present().await {
            Ok(Some(ids)) => {
                present.insert(kind.as_str().to_string(), ids);
            }
            Ok(None) => {}
            Err(e) => {
                warn!(kind = %kind, error = %e, "reconciliation: cannot list; checking one by one")
            }
        }
    }
    let to_check: Vec<String> = cached
        .into_iter()
        .filter(|c| {
            !c.is_expired(now) && !present.get(&c.kind).is_some_and(|ids| ids.contains(&c.id))
        })
        .map(|c| c.id)
        .collect();
    drop(present);
    Ok(futures_util::stream::iter(to_check)
        .map(|id| async move {
            match store.get(&id) {
                Ok(Some(c)) => gone(registry, &c).await.then_some(id),
                Ok(None) => None,
                Err(e) => {
                    warn!(reservation = %id, error = %e, "reconciliation: cannot read the cache");
                    None
                }
            }
        })
        .buffer_unordered(CHECKS_AT_ONCE)
        .filter_map(|id| async move { id })
        .collect()
        .await)
}

/// Whether a cached workload's objects are gone. Read-only, so many
/// checks can run at once.
async fn gone(registry: &Registry, cached: &Cached) -> bool {
    let r = &cached.reservation;
    let Ok(kind) = r.workload_type() else {
        return false;
    };
    let (Some(p), Ok(w)) = (registry.get(kind), Workload::parse(kind, &r.data)) else {
        return false;
    };
    match p.exists(r, &w).await {
        Ok(present) => !present,
        Err(e) => {
            warn!(reservation = %r.id, error = %e, "cannot check its Docker objects");
            false
        }
    }
}

/// Remove labelled objects whose reservation is not cached.
pub async fn remove_orphans(store: &Store, registry: &Registry, running: &HashSet<String>) {
    for kind in registry.kinds().collect::<Vec<_>>() {
        let Some(p) = registry.get(kind) else {
            continue;
        };
        if let Err(e) = p.sweep_leftovers().await {
            warn!(kind = %kind, error = %e, "reconciliation: cannot sweep leftovers");
        }
        let ids = match p.list_labelled().await {
            Ok(ids) => ids,
            Err(e) => {
                warn!(kind = %kind, error = %e, "reconciliation: cannot list labelled objects");
                continue;
            }
        };
        for id in ids {
            if running.contains(&id) {
                // Its provisioning runs (a slow pull): recorded when done.
                continue;
            }
            match store.is_cached(&id) {
                Ok(true) => {}
                Ok(false) => match p.remove_labelled(&id).await {
                    Ok(()) => {
                        info!(reservation = %id, kind = %kind, "reconciliation: removed an orphan object the cache does not know")
                    }
                    Err(e) => {
                        error!(reservation = %id, kind = %kind, error = %e, "reconciliation: cannot remove an orphan")
                    }
                },
                Err(e) => {
                    error!(reservation = %id, error = %e, "reconciliation: cannot read the cache")
                }
            }
        }
    }
}
