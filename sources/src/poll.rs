//! `PollSource`: long-polls the explorer. It asks `from=0` once at start so
//! nothing is missed across a restart, then from the cursor, and backs off
//! with jitter while the explorer is unreachable. It never ends on an error.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{Backoff, ExplorerClient, ReservationSource, Work};

/// What the poll loop last saw, for `agentctl status` and metrics.
#[derive(Debug, Default)]
pub struct PollStatus {
    last_ok_ms: AtomicI64,
    failures: AtomicU64,
    last_error: Mutex<String>,
}

impl PollStatus {
    /// When a poll last succeeded.
    pub fn last_ok(&self) -> Option<DateTime<Utc>> {
        match self.last_ok_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }

    /// Polls failed in a row, and the last error.
    pub fn failures(&self) -> (u64, String) {
        let err = self
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        (self.failures.load(Ordering::Relaxed), err)
    }

    fn ok(&self) {
        self.last_ok_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
    }

    fn failed(&self, e: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.last_error.lock() {
            *l = e;
        }
    }
}

/// Long-polls `GET /reservations/{node}/poll`.
pub struct PollSource {
    client: ExplorerClient,
    cursor: u64,
    first: bool,
    backoff: Backoff,
    status: Arc<PollStatus>,
    /// Pause after an answer with nothing new in it (only repeated
    /// deletions), so a pending deletion does not turn the long poll into a
    /// busy loop.
    idle_pause: Duration,
    /// The last answer brought nothing new: pause before the next poll.
    pause_next: bool,
}

impl PollSource {
    /// Start at `cursor` (the persisted one) after one `from=0` poll.
    pub fn new(client: ExplorerClient, cursor: u64) -> Self {
        PollSource {
            client,
            cursor,
            first: true,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            status: Arc::default(),
            idle_pause: Duration::from_secs(1),
            pause_next: false,
        }
    }

    /// Shorter backoff for tests.
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = Backoff::new(base, max);
        self
    }

    pub fn status(&self) -> Arc<PollStatus> {
        self.status.clone()
    }
}

#[async_trait]
impl ReservationSource for PollSource {
    async fn next(&mut self) -> Option<Work> {
        if std::mem::take(&mut self.pause_next) {
            tokio::time::sleep(self.idle_pause).await;
        }
        loop {
            let from = if self.first { 0 } else { self.cursor };
            match self.client.poll(from).await {
                Ok(answer) => {
                    self.status.ok();
                    self.backoff.reset();
                    self.first = false;
                    let before = self.cursor;
                    for r in &answer.reservations {
                        if let Some(n) = r.number() {
                            self.cursor = self.cursor.max(n.saturating_add(1));
                        }
                    }
                    if answer.reservations.is_empty() {
                        if from == 0 {
                            // Nothing at all: still report the (unchanged)
                            // cursor so the engine knows the first poll ran.
                            return Some(Work::Poll {
                                reservations: Vec::new(),
                                cursor: self.cursor,
                            });
                        }
                        continue;
                    }
                    // Only repeats (pending deletions the explorer sends
                    // until it hears back): hand them over now, but do not
                    // ask again at once.
                    self.pause_next = self.cursor == before && from != 0;
                    tracing::debug!(
                        from,
                        count = answer.reservations.len(),
                        cursor = self.cursor,
                        "poll answer"
                    );
                    return Some(Work::Poll {
                        reservations: answer.reservations,
                        cursor: self.cursor,
                    });
                }
                Err(e) => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "poll failed");
                    self.status.failed(e.to_string());
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
