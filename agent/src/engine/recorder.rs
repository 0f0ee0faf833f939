//! The recorder: owns every write into the store. A unit of work's
//! records are staged in a [`store::Unit`] (each record all-or-nothing: a
//! provisioned workload's cache entry, outcome, replay index entry and
//! signed result go together, or none does); reads made meanwhile
//! ([`Reads`], and every other read of the store) see them before its
//! trees. [`Recorder::commit`] applies the
//! whole unit in one sled transaction and flushes, both on the blocking
//! pool, and only then raises the durable watermark that delivery reads, so
//! no result leaves the node before it is on disk, and a crash before the
//! commit loses the whole unit (the `from=0` resync and idempotent
//! provisioning finish it).
//!
//! A long unit (a poll answer of thousands, or thousands of jobs that
//! finished together) does not wait for one long transaction at its end
//! (a third of such a unit's time, on one core): [`Recorder::commit_ahead`]
//! applies what is staged on the blocking pool while the engine records
//! the rest, one such commit at a time. It does not flush and raises no
//! watermark: the unit's own commit still flushes once and only then lets
//! delivery see any of it. Records are applied in staging order all the
//! same (`store::Unit::commit` applies what was staged when it started, and
//! commits run one after another); a crash may now keep a unit's first
//! records and lose the rest, each record whole, as a crash between two
//! units' commits always could (the `from=0` resync brings the rest back).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use reservation::WorkloadResult;
use store::{Cached, OutcomeState, Store, Unit};
use tokio::task::JoinHandle;
use tracing::warn;

use super::Shared;
use crate::AgentError;

/// A commit ahead running on the blocking pool.
type Ahead = JoinHandle<Result<Option<u64>, store::StoreError>>;

/// Records staged at least this many make a commit ahead worth its
/// transaction and flush (one per record cost ~300 µs each; one per 100
/// about as little as one per 10,000: bench/notes.md, section 1).
pub const AHEAD_MIN: usize = 256;

/// The only writer of the store.
pub struct Recorder {
    /// The records of the unit of work in hand, not yet committed.
    unit: Unit,
    shared: Arc<Shared>,
    /// One past the highest outbox seq written so far.
    written_below: u64,
    /// The commit ahead running, if any.
    ahead: Option<Ahead>,
}

/// Read-only access to the store, for the judge's view and the engine:
/// what the unit in hand staged, then the store.
#[derive(Clone, Copy)]
pub struct Reads<'a>(&'a Unit);

impl Reads<'_> {
    pub fn is_cached(&self, id: &str) -> Result<bool, AgentError> {
        Ok(self.0.is_cached(id)?)
    }

    pub fn get(&self, id: &str) -> Result<Option<Cached>, AgentError> {
        Ok(self.0.get(id)?)
    }

    pub fn outcome(&self, id: &str) -> Result<Option<OutcomeState>, AgentError> {
        Ok(self.0.outcome_state(id)?)
    }

    pub fn signature_owner(&self, signature: &str) -> Result<Option<String>, AgentError> {
        Ok(self.0.signature_owner(signature)?)
    }

    /// The store, for reads on another thread (the prechecks' hints).
    pub fn store(&self) -> Store {
        self.0.store().clone()
    }

    /// Where the cache lives: new work is refused while its disk is short.
    pub fn dir(&self) -> &std::path::Path {
        self.0.store().dir()
    }
}

impl Recorder {
    pub fn new(store: Store, shared: Arc<Shared>) -> Self {
        Recorder {
            unit: Unit::new(store),
            shared,
            written_below: 0,
            ahead: None,
        }
    }

    pub fn reads(&self) -> Reads<'_> {
        Reads(&self.unit)
    }

    fn wrote(&mut self, seq: u64) {
        self.written_below = self.written_below.max(seq + 1);
    }

    /// A provisioned workload (or a repaired one with new result data):
    /// cache entry, outcome, replay index and result, all or nothing.
    pub fn provisioned(
        &mut self,
        cached: &Cached,
        result: &WorkloadResult,
    ) -> Result<(), AgentError> {
        let seq = self.unit.provisioned(cached, result)?;
        self.wrote(seq);
        Ok(())
    }

    /// A refusal and its signed error result; `verified_signature` enters
    /// the replay index unless empty.
    pub fn refused(
        &mut self,
        result: &WorkloadResult,
        verified_signature: &str,
    ) -> Result<(), AgentError> {
        let seq = self.unit.refused(result, verified_signature)?;
        self.wrote(seq);
        Ok(())
    }

    /// A decommissioned (or never run) workload: out of the cache, marked
    /// deleted, its signed `confirmation` and `result` (if any) queued.
    pub fn decommissioned(
        &mut self,
        id: &str,
        kind: &str,
        signature: &str,
        confirmation: &str,
        result: Option<&WorkloadResult>,
    ) -> Result<(), AgentError> {
        let seq = self
            .unit
            .decommissioned(id, kind, signature, confirmation, result)?;
        self.wrote(seq);
        Ok(())
    }

    /// A deletion confirmed again (the workload was deleted before).
    pub fn deleted_again(&mut self, id: &str, confirmation: &str) -> Result<(), AgentError> {
        let seq = self.unit.deleted_again(id, confirmation)?;
        self.wrote(seq);
        Ok(())
    }

    /// A decommission to try again at `at`.
    pub fn reschedule(&mut self, id: &str, at: DateTime<Utc>) -> Result<(), AgentError> {
        Ok(self.unit.reschedule(id, at)?)
    }

    /// The poll cursor after an answer.
    pub fn cursor(&mut self, cursor: u64) -> Result<(), AgentError> {
        self.unit.set_cursor(cursor);
        Ok(())
    }

    /// Apply the unit's records in one transaction and make them durable
    /// (one flush), both on the blocking pool; then let delivery see them
    /// and the decommission source look again. On an error the records stay
    /// staged (reads still see them) and the next commit tries again. A
    /// commit ahead still running is waited for first.
    pub async fn commit(&mut self) -> Result<(), AgentError> {
        if let Some(task) = self.ahead.take() {
            reap(task.await);
        }
        let unit = self.unit.clone();
        tokio::task::spawn_blocking(move || unit.commit().and_then(|_| unit.store().flush()))
            .await
            .map_err(|e| AgentError::Other(format!("cache commit did not finish: {e}")))??;
        self.durable(self.written_below);
        Ok(())
    }

    /// Apply what is staged on the blocking pool without waiting (no
    /// flush), when [`AHEAD_MIN`] records or more are staged and no commit
    /// ahead runs (one that finished is reaped first). Records staged
    /// meanwhile wait for the next commit; [`Recorder::commit`] at the end
    /// of the unit waits for this one, then flushes.
    pub fn commit_ahead(&mut self) {
        if let Some(task) = &self.ahead {
            if !task.is_finished() {
                return;
            }
            if let Some(done) = self.ahead.take().and_then(|t| t.now_or_never()) {
                reap(done);
            }
        }
        if self.unit.len() < AHEAD_MIN {
            return;
        }
        let unit = self.unit.clone();
        self.ahead = Some(tokio::task::spawn_blocking(move || unit.commit()));
    }

    /// Records up to outbox seq `below` are durable (flushed): let delivery
    /// send them and the decommission source look again.
    fn durable(&self, below: u64) {
        if below > self.shared.durable_below.load(Ordering::SeqCst) {
            self.shared.durable_below.store(below, Ordering::SeqCst);
            self.shared.outbox_wake.notify_one();
        }
        self.shared.expiry_wake.notify_one();
    }
}

/// A commit ahead ended. If it failed, its records are staged again, and
/// the next commit (at the latest the unit's own) applies them and reports
/// its own error.
fn reap(done: Result<Result<Option<u64>, store::StoreError>, tokio::task::JoinError>) {
    match done {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            warn!(error = %e, "cache commit ahead failed; its records are committed with the next")
        }
        Err(e) => {
            warn!(error = %e, "cache commit ahead did not finish; its records are committed with the next")
        }
    }
}
