//! Reconciliation between Docker and the cache, at start:
//! - a cached workload whose objects are gone is provisioned again
//!   ([`repair_cached`], before the first poll);
//! - a labelled object the cache does not know is removed
//!   ([`remove_orphans`], right after the first `from=0` poll answer, by
//!   which time every valid reservation has been adopted by idempotent
//!   provisioning). It runs inside the engine so it can never race a
//!   provisioning in flight.
//!
//! Each repair is logged.

use std::collections::{HashMap, HashSet};

use futures_util::StreamExt;
use tracing::{error, info, warn};

/// Existence checks in flight at once during reconciliation.
const CHECKS_AT_ONCE: usize = 32;

use crate::engine::Engine;
use crate::AgentError;

/// Provision again every cached workload whose objects are gone. Returns
/// how many were repaired.
pub async fn repair_cached(engine: &mut Engine) -> Result<usize, AgentError> {
    let now = chrono::Utc::now();
    let cached: Vec<_> = engine
        .store()
        .list()
        .filter(|c| !matches!(c, Ok(c) if c.reservation.is_expired(now))) // the decommission source takes those
        .collect::<Result<_, _>>()?;
    // One listing per type clears most workloads at once; the rest are
    // checked one by one (reads: side by side, a bounded number at once),
    // so a node with thousands of workloads is ready in about a second.
    let mut present: HashMap<String, HashSet<String>> = HashMap::new();
    for kind in engine.registry().kinds().collect::<Vec<_>>() {
        let Some(p) = engine.registry().get(kind) else {
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
    let to_check: Vec<&store::Cached> = cached
        .iter()
        .filter(|c| {
            !present
                .get(&c.reservation.kind)
                .is_some_and(|ids| ids.contains(&c.reservation.id))
        })
        .collect();
    let missing: Vec<&store::Cached> = {
        let engine = &*engine;
        futures_util::stream::iter(to_check)
            .map(|c| async move { engine.needs_repair(c).await.then_some(c) })
            .buffer_unordered(CHECKS_AT_ONCE)
            .filter_map(|c| async move { c })
            .collect()
            .await
    };
    let mut repaired = 0;
    for c in missing {
        if engine.repair(c).await? {
            repaired += 1;
        }
    }
    engine.finish()?;
    drop(cached);
    crate::release_freed_memory();
    if repaired > 0 {
        info!(
            repaired,
            "reconciliation: re-provisioned workloads whose objects were gone"
        );
    }
    Ok(repaired)
}

/// Remove labelled objects whose reservation is not cached.
pub async fn remove_orphans(engine: &Engine) {
    let registry = engine.registry().clone();
    for kind in registry.kinds().collect::<Vec<_>>() {
        let Some(p) = registry.get(kind) else {
            continue;
        };
        let ids = match p.list_labelled().await {
            Ok(ids) => ids,
            Err(e) => {
                warn!(kind = %kind, error = %e, "reconciliation: cannot list labelled objects");
                continue;
            }
        };
        for id in ids {
            match engine.store().is_cached(&id) {
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
