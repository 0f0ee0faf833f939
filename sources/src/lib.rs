//! Where reservations come from, and the explorer's HTTP client.
//!
//! - [`ReservationSource`]: the seam the engine pulls [`Work`] from.
//! - [`PollSource`]: long-polls the explorer: a paged resync from 0 at
//!   start, then from the cursor, shrinking a page that is too large.
//! - [`DecommissionSource`]: wakes at the next expiry in the store's index.
//! - [`CombinedSource`]: merges sources; ends when all of them end.
//! - [`ExplorerClient`]: the explorer's one HTTP client: the poll request
//!   (in [`poll`]), and the node's outgoing results, deletion
//!   confirmations, registration and heartbeat (in [`explorer_client`]).
//!
//! Invariants: a source never exits on a network error (it backs off with
//! jitter and goes on), never panics on a malformed answer (it logs and
//! skips), and holds a bounded amount of an answer in memory.

pub mod combined;
pub mod decommission;
pub mod explorer_client;
pub mod poll;

use async_trait::async_trait;
use reservation::Reservation;

pub use combined::CombinedSource;
pub use decommission::DecommissionSource;
pub use explorer_client::{ExplorerClient, Explorers};
pub use poll::{PollQuery, PollSource, PollStatus, MAX_RESERVATION_BYTES, POLL_LIMIT};

/// Errors talking to the explorer.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("explorer {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("explorer {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("explorer {url} sent more than {limit} bytes; answer dropped")]
    TooLarge { url: String, limit: usize },
    #[error("explorer {url} sent malformed json: {reason}")]
    Malformed { url: String, reason: String },
    #[error("cache: {0}")]
    Store(#[from] store::StoreError),
}

impl SourceError {
    /// Whether trying again can help, or the explorer refused the request
    /// for good. Retried: an unreachable explorer, `5xx`, `429` and `408`
    /// answers, a cache error on our side, and an answer that was too large
    /// or malformed (an explorer mid-restart or behind a broken proxy may
    /// answer well next time). Final: every other `4xx`.
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            SourceError::Unreachable { .. } | SourceError::Store(_) => true,
            SourceError::TooLarge { .. } | SourceError::Malformed { .. } => true,
        }
    }
}

/// One unit of work for the engine.
#[derive(Debug)]
pub enum Work {
    /// A poll answer: reservations (deduplicated by id) and the cursor to
    /// persist once they are handled. `synced` is set once every
    /// reservation the explorer knows has been handed over (the last page
    /// of the resync at start, and every live poll after it).
    Poll {
        reservations: Vec<Reservation>,
        cursor: u64,
        synced: bool,
    },
    /// Cached reservations whose decommission time has come.
    Due(Vec<String>),
}

/// A source of work. `next` returns `None` once the source has ended.
#[async_trait]
pub trait ReservationSource: Send {
    async fn next(&mut self) -> Option<Work>;
}

/// Exponential backoff with full jitter, for retry loops.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: std::time::Duration,
    max: std::time::Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: std::time::Duration, max: std::time::Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay: uniform in [ceiling/2, ceiling], the ceiling doubling
    /// up to `max`.
    pub fn next_delay(&mut self) -> std::time::Duration {
        use rand::Rng;
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        let ceiling = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let ms = ceiling.as_millis().max(2) as u64;
        std::time::Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[9] >= Duration::from_secs(1) && d[9] <= Duration::from_secs(2));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
