//! `DecommissionSource`: sleeps until the next expiry in the store's index
//! (not a fixed scan), and wakes early when something new is cached.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use store::Store;
use tokio::sync::Notify;

use crate::{ReservationSource, Work};

/// Longest sleep without looking at the index again (guards against wall
/// clock jumps).
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Most ids handed over at once.
const BATCH: usize = 1000;

/// Yields ids whose decommission time has come.
pub struct DecommissionSource {
    store: Store,
    wake: Arc<Notify>,
    /// Ids handed over whose index entry has not moved yet: not handed over
    /// again while the engine works on them.
    in_flight: HashSet<String>,
}

impl DecommissionSource {
    /// `wake` is notified by the engine whenever it caches or reschedules.
    pub fn new(store: Store, wake: Arc<Notify>) -> Self {
        DecommissionSource {
            store,
            wake,
            in_flight: HashSet::new(),
        }
    }
}

#[async_trait]
impl ReservationSource for DecommissionSource {
    async fn next(&mut self) -> Option<Work> {
        loop {
            let now = Utc::now();
            match self.store.due(now, BATCH) {
                Ok(due) => {
                    let fresh: Vec<String> = due
                        .iter()
                        .filter(|id| !self.in_flight.contains(*id))
                        .cloned()
                        .collect();
                    // Forget ids no longer due: handled, or moved later.
                    self.in_flight = due.into_iter().collect();
                    if !fresh.is_empty() {
                        return Some(Work::Due(fresh));
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read the expiry index"),
            }
            let sleep = match self.store.next_expiry() {
                Ok(Some(at)) if self.in_flight.is_empty() => (at - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(MAX_SLEEP),
                // While ids are in flight, look again soon: the engine may
                // have rescheduled them.
                Ok(Some(_)) => Duration::from_millis(200),
                _ => MAX_SLEEP,
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}
