//! The delivery task: drains the outbox to the explorer, oldest first, with
//! retries and backoff until it answers 200, across restarts too (the outbox
//! is on disk). It never sends an entry the engine has not made durable.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sources::{Backoff, ExplorerClient};
use store::{Outbound, Store};
use tracing::{debug, error, warn};

use crate::engine::Shared;

/// Entries read from the outbox at a time.
const BATCH: usize = 64;

/// Drain the outbox until `shutdown` resolves.
pub async fn run(
    store: Store,
    client: ExplorerClient,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let wait = match drain(&store, &client, &shared).await {
            Ok(true) => None,
            Ok(false) => Some(Duration::from_secs(30)),
            Err(()) => Some(backoff.next_delay()),
        };
        if wait.is_none() {
            backoff.reset();
            continue;
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = shared.outbox_wake.notified() => {}
            _ = tokio::time::sleep(wait.unwrap_or_default()) => {}
        }
    }
}

/// One pass. `Ok(true)`: more may be waiting; `Ok(false)`: nothing durable
/// left; `Err`: the explorer is unreachable, back off.
async fn drain(store: &Store, client: &ExplorerClient, shared: &Shared) -> Result<bool, ()> {
    let durable_below = shared.durable_below.load(Ordering::SeqCst);
    let entries = match store.outbox_peek(BATCH) {
        Ok(e) => e,
        Err(e) => {
            error!(error = %e, "cannot read the outbox");
            return Err(());
        }
    };
    let mut sent = 0;
    for entry in entries.iter().filter(|e| e.seq < durable_below) {
        let id = entry.item.id();
        let outcome = match &entry.item {
            Outbound::Result(r) => client.put_result(r).await,
            Outbound::Deleted { id, signature } => client.put_deleted(id, signature).await,
        };
        match outcome {
            Ok(()) => {
                shared.faults.point("during-delivery");
                debug!(reservation = %id, seq = entry.seq, "delivered");
            }
            Err(e) if e.is_retryable() => {
                warn!(reservation = %id, error = %e, "delivery failed; will retry");
                flush(store);
                return Err(());
            }
            Err(e) => {
                // The explorer refuses it for good (4xx): retrying cannot
                // help, and holding it would block every later result.
                error!(reservation = %id, error = %e, "explorer refused delivery; dropped from the outbox");
            }
        }
        if let Err(e) = store.outbox_ack(entry.seq) {
            error!(reservation = %id, error = %e, "cannot acknowledge an outbox entry");
            return Err(());
        }
        sent += 1;
    }
    if sent > 0 {
        flush(store);
    }
    Ok(sent == BATCH)
}

fn flush(store: &Store) {
    if let Err(e) = store.flush() {
        error!(error = %e, "cannot flush outbox acknowledgements");
    }
}
