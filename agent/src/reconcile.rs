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

use tracing::{error, info, warn};

use crate::engine::Engine;
use crate::AgentError;

/// Provision again every cached workload whose objects are gone. Returns
/// how many were repaired.
pub async fn repair_cached(engine: &mut Engine) -> Result<usize, AgentError> {
    let cached: Vec<_> = engine.store().list().collect::<Result<_, _>>()?;
    let mut repaired = 0;
    for c in &cached {
        if c.reservation.is_expired(chrono::Utc::now()) {
            continue; // the decommission source takes it
        }
        if engine.reprovision(c).await? {
            repaired += 1;
        }
    }
    engine.finish()?;
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
