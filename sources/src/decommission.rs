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
    /// Ids are handed over this long before their time (`--stop-grace`):
    /// SIGTERM then, SIGKILL at the expiry.
    grace: Duration,
}

impl DecommissionSource {
    /// `wake` is notified by the engine whenever it caches or reschedules.
    pub fn new(store: Store, wake: Arc<Notify>) -> Self {
        DecommissionSource {
            store,
            wake,
            in_flight: HashSet::new(),
            grace: Duration::ZERO,
        }
    }

    /// Hand ids over `grace` before their time (the engine schedules its
    /// retries that much later).
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
}

#[async_trait]
impl ReservationSource for DecommissionSource {
    async fn next(&mut self) -> Option<Work> {
        loop {
            let grace = chrono::Duration::from_std(self.grace).unwrap_or_default();
            let now = Utc::now() + grace;
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
                Ok(Some(at)) if self.in_flight.is_empty() => (at - grace - Utc::now())
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

#[cfg(test)]
mod tests {
    use super::*;
    use reservation::{Identity, Reservation};
    use std::time::Instant;

    fn cache(store: &Store, id: &str, expires_in_ms: i64) {
        cache_from(store, id, Utc::now(), expires_in_ms)
    }

    /// Cache `id` created at `created`: ids given one `created` expire at
    /// the very same instant.
    fn cache_from(store: &Store, id: &str, created: chrono::DateTime<Utc>, expires_in_ms: i64) {
        let node = Identity::generate();
        let r: Reservation = serde_json::from_value(serde_json::json!({
            "id": id, "node_id": "n", "user_id": "u", "type": "network", "data": {},
            "created": created, "duration": expires_in_ms * 1_000_000,
        }))
        .unwrap();
        let res = node.error_result(&r, "x");
        store
            .record_provisioned(&store::Cached::new(r, res.clone()), &res)
            .unwrap();
    }

    #[tokio::test]
    async fn wakes_at_the_next_expiry_not_on_a_fixed_scan() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let wake = Arc::new(Notify::new());
        cache(&store, "1-1", 400);
        let mut src = DecommissionSource::new(store.clone(), wake.clone());
        let t = Instant::now();
        let Some(Work::Due(ids)) = src.next().await else {
            panic!()
        };
        assert_eq!(ids, ["1-1"]);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(350) && took < Duration::from_millis(1000),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn something_new_cached_wakes_it_early() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let wake = Arc::new(Notify::new());
        cache(&store, "1-1", 3_600_000);
        let mut src = DecommissionSource::new(store.clone(), wake.clone());
        let s2 = store.clone();
        let w2 = wake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cache(&s2, "2-1", 200);
            w2.notify_one();
        });
        let t = Instant::now();
        let Some(Work::Due(ids)) = src.next().await else {
            panic!()
        };
        assert_eq!(ids, ["2-1"]);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[tokio::test]
    async fn an_id_in_flight_is_not_handed_over_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        cache(&store, "1-1", 0);
        let mut src = DecommissionSource::new(store.clone(), Arc::new(Notify::new()));
        let Some(Work::Due(ids)) = src.next().await else {
            panic!()
        };
        assert_eq!(ids, ["1-1"]);
        // Not handled yet: a second call must not return it again at once.
        let again = tokio::time::timeout(Duration::from_millis(500), src.next()).await;
        assert!(again.is_err(), "handed over twice: {again:?}");
        // Once handled (gone from the index) and a new one is due, only
        // the new one comes.
        store
            .record_decommissioned("1-1", "network", "", "c2ln", None)
            .unwrap();
        cache(&store, "2-1", 0);
        let Some(Work::Due(ids)) = src.next().await else {
            panic!()
        };
        assert_eq!(ids, ["2-1"]);
    }

    #[tokio::test]
    async fn wakes_stop_grace_before_the_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let wake = Arc::new(Notify::new());
        // The same expiry (two calls to `cache` would be milliseconds apart,
        // and the later one then comes in a batch of its own).
        let created = Utc::now();
        cache_from(&store, "1-1", created, 1500);
        cache_from(&store, "2-1", created, 1500);
        let mut src = DecommissionSource::new(store.clone(), wake.clone())
            .with_grace(Duration::from_millis(1000));
        let t = Instant::now();
        let Some(Work::Due(ids)) = src.next().await else {
            panic!()
        };
        // Both in one batch (stopped concurrently by the engine), 1 s early.
        assert_eq!(ids, ["1-1", "2-1"]);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_millis(1100),
            "{took:?}"
        );
    }
}
