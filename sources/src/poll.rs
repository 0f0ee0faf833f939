//! `PollSource`: long-polls the explorer. At start it resyncs with
//! `from=0&all=true`, page after page, so nothing is missed across a
//! restart; then it polls from the cursor. An answer too large to read is
//! asked for again with fewer entries, down to one, so a flood of large
//! reservations never stops the node for good. It backs off with jitter
//! while the explorer is unreachable and never ends on an error.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::{Backoff, ExplorerClient, PollQuery, ReservationSource, SourceError, Work, POLL_LIMIT};

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
    /// `Some(from)` while resyncing (`all=true`, page after page from 0);
    /// `None` once the explorer's whole history has been handed over.
    resync: Option<u64>,
    /// Entries asked for per page: [`POLL_LIMIT`], halved (down to 1) while
    /// answers are too large to read, doubled back after each good one.
    limit: usize,
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
    /// Start at `cursor` (the persisted one) after a paged resync from 0.
    pub fn new(client: ExplorerClient, cursor: u64) -> Self {
        PollSource {
            client,
            cursor,
            resync: Some(0),
            limit: POLL_LIMIT,
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

    /// A smaller page size (tests).
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit.clamp(1, POLL_LIMIT);
        self
    }

    pub fn status(&self) -> Arc<PollStatus> {
        self.status.clone()
    }

    fn query(&self) -> PollQuery {
        match self.resync {
            Some(from) => PollQuery {
                from,
                all: true,
                limit: self.limit,
            },
            None => PollQuery {
                from: self.cursor,
                all: false,
                limit: self.limit,
            },
        }
    }
}

#[async_trait]
impl ReservationSource for PollSource {
    async fn next(&mut self) -> Option<Work> {
        if std::mem::take(&mut self.pause_next) {
            tokio::time::sleep(self.idle_pause).await;
        }
        loop {
            let q = self.query();
            let answer = match self.client.poll(q).await {
                Ok(a) => a,
                Err(e @ SourceError::TooLarge { .. }) if q.limit > 1 => {
                    // Never drop work for good: ask for fewer entries until
                    // a page fits (one entry may use the whole cap).
                    self.limit = (q.limit / 2).max(1);
                    tracing::warn!(
                        error = %e,
                        from = q.from,
                        limit = self.limit,
                        "poll answer larger than its cap; asking again for fewer entries"
                    );
                    continue;
                }
                Err(e) => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(error = %e, from = q.from, limit = q.limit, retry_in_ms = delay.as_millis() as u64, "poll failed");
                    self.status.failed(e.to_string());
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            self.status.ok();
            self.backoff.reset();
            self.limit = self.limit.saturating_mul(2).min(POLL_LIMIT);
            let before = self.cursor;
            // The cursor follows ids of the grammar only: a malformed id is
            // skipped by the engine and must not move the cursor either.
            let last = answer
                .reservations
                .iter()
                .filter(|r| reservation::valid_id(&r.id))
                .filter_map(|r| r.number())
                .max();
            if let Some(n) = last {
                self.cursor = self.cursor.max(n.saturating_add(1));
            }
            let entries = answer.reservations.len() + answer.malformed + answer.repeated;
            // A full page may have more after it.
            let full = entries >= q.limit;
            if let Some(from) = self.resync {
                let next = last.map(|n| n.saturating_add(1)).unwrap_or(from);
                if full && next > from {
                    self.resync = Some(next);
                } else {
                    self.resync = None;
                }
                tracing::debug!(
                    from,
                    count = answer.reservations.len(),
                    cursor = self.cursor,
                    done = self.resync.is_none(),
                    "resync page"
                );
                return Some(Work::Poll {
                    reservations: answer.reservations,
                    cursor: self.cursor,
                    synced: self.resync.is_none(),
                });
            }
            if answer.reservations.is_empty() {
                continue;
            }
            // Only repeats (pending deletions the explorer sends until it
            // hears back): hand them over now, but do not ask again at once.
            self.pause_next = self.cursor == before && !full;
            tracing::debug!(
                from = q.from,
                count = answer.reservations.len(),
                cursor = self.cursor,
                "poll answer"
            );
            return Some(Work::Poll {
                reservations: answer.reservations,
                cursor: self.cursor,
                synced: true,
            });
        }
    }
}
