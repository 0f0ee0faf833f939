//! The engine: one unit of work at a time, in order, and the commands of
//! the tasks around it between units. This file owns the loop; the parts
//! it drives each own one thing:
//! - [`judge`]: the decision about a reservation, pure;
//! - [`executor`]: provisioning (under a deadline, rolled back when it
//!   fails) and decommissioning through the provisioners;
//! - [`recorder`]: every write into the store, and the flush.
//!
//! Durability: records are written without an fsync each; at the end of a
//! unit of work the recorder flushes the store once and only then raises the
//! delivery watermark, so no result leaves the node before it is durable.
//! A crash before that flush loses the records but not the Docker objects;
//! the `from=0` poll at restart brings the reservation back and idempotent
//! provisioning reuses what exists, so nothing is made twice and exactly one
//! result is delivered.

mod executor;
pub mod judge;
mod recorder;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use provisioners::{ProvisionError, Registry};
use reservation::{Identity, Reservation, Workload, WorkloadResult, WorkloadType};
use sources::{ReservationSource, Work};
use store::{Cached, OutcomeState, Store};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, error, info, warn, Instrument};

use crate::capacity::{Charge, Ledger};
use crate::commands::{EngineCommand, GiveUp, SweepGate};
use crate::faults;
use crate::metrics::Metrics;
use crate::AgentError;
use executor::{Executor, Failure};
use judge::{Rules, Verdict, View};
use recorder::{Reads, Recorder};

pub use judge::MAX_DATA_BYTES;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Deadline for one provisioning.
    pub provision_timeout: Duration,
    /// Delay before a decommission that must wait (volume in use) or that
    /// failed is tried again.
    pub retry_decommission: Duration,
    /// The agent's root: new work is refused while the filesystem under it
    /// has less than `min_free_disk` bytes free (the cache must stay
    /// writable for what runs already).
    pub root: Option<PathBuf>,
    pub min_free_disk: u64,
    /// The longest `duration` accepted (`--max-duration`).
    pub max_duration: Duration,
}

/// Default `--max-duration`: 366 days.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);
/// Default `--provision-timeout`.
pub const DEFAULT_PROVISION_TIMEOUT: Duration = Duration::from_secs(600);
/// Default `--min-free-disk`, in bytes.
pub const DEFAULT_MIN_FREE_DISK: u64 = 64 << 20;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            provision_timeout: DEFAULT_PROVISION_TIMEOUT,
            retry_decommission: Duration::from_secs(5),
            root: None,
            min_free_disk: DEFAULT_MIN_FREE_DISK,
            max_duration: DEFAULT_MAX_DURATION,
        }
    }
}

/// What the engine shares with the delivery task, the control socket and
/// metrics.
#[derive(Debug, Default)]
pub struct Shared {
    /// Outbox entries with a sequence number below this are durable:
    /// delivery sends nothing at or above it.
    pub durable_below: AtomicU64,
    /// Wakes the delivery task.
    pub outbox_wake: Notify,
    /// Wakes the decommission source.
    pub expiry_wake: Arc<Notify>,
    /// Set once the first `from=0` poll answer is handled.
    pub first_poll_done: std::sync::atomic::AtomicBool,
    /// Prometheus series: reservations handled, provisioning durations.
    pub metrics: Arc<Metrics>,
    /// The operator drains the node (`agentctl drain`): new reservations
    /// are refused with a signed error; running work goes on.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

impl Shared {
    fn count(&self, kind: &str, outcome: &'static str) {
        self.metrics.handled(kind, outcome);
    }
}

/// The engine: the loop over units of work and commands. It owns the
/// judge's view, the executor and the recorder, and the run's memory.
pub struct Engine {
    node: Arc<Identity>,
    cfg: EngineConfig,
    shared: Arc<Shared>,
    executor: Executor,
    /// The only writer of the store.
    recorder: Recorder,
    /// Forged deletions already warned about (warned once each).
    warned_forged: HashSet<String>,
    /// Deletions confirmed in this run (the explorer may ask again until
    /// our `PUT /deleted` reaches it; queue it once).
    confirmed: HashSet<String>,
    first_poll_seen: bool,
    /// Capacity charged per workload ([`Ledger::unbounded`] until
    /// [`Engine::with_ledger`]).
    ledger: Arc<Mutex<Ledger>>,
    /// Give-up decisions of the crash watch and the operator's purge.
    give_ups: Option<mpsc::Receiver<GiveUp>>,
    /// Commands of reconciliation; while it is set and reconciliation has
    /// not said [`EngineCommand::Reconciled`], no work is taken.
    commands: Option<mpsc::Receiver<EngineCommand>>,
    /// The orphan sweep's hold after the first resync.
    sweep: Option<SweepGate>,
    /// Workloads repaired at start, and the first cache error of a repair.
    repaired: usize,
    repair_error: Option<AgentError>,
    /// Error results of given-up workloads whose decommission must be
    /// retried: posted with the deletion once it succeeds.
    pending_errors: HashMap<String, WorkloadResult>,
}

/// What the judge sees: the store through the recorder's reads, the
/// ledger, the drain flag, the disk under the root and the registry.
struct NodeView<'a> {
    reads: Reads<'a>,
    executor: &'a Executor,
    ledger: &'a Mutex<Ledger>,
    shared: &'a Shared,
    cfg: &'a EngineConfig,
}

impl View for NodeView<'_> {
    fn is_cached(&self, id: &str) -> Result<bool, AgentError> {
        self.reads.is_cached(id)
    }

    fn cached(&self, id: &str) -> Result<Option<Cached>, AgentError> {
        self.reads.get(id)
    }

    fn outcome(&self, id: &str) -> Result<Option<OutcomeState>, AgentError> {
        self.reads.outcome(id)
    }

    fn signature_owner(&self, signature: &str) -> Result<Option<String>, AgentError> {
        self.reads.signature_owner(signature)
    }

    fn supports(&self, kind: WorkloadType) -> bool {
        self.executor.supports(kind)
    }

    fn draining(&self) -> bool {
        self.shared.draining.load(Ordering::SeqCst)
    }

    fn disk_short(&self) -> Option<String> {
        let root = self.cfg.root.as_ref()?;
        let free = crate::capacity::free_bytes(root).ok()?;
        (free < self.cfg.min_free_disk).then(|| {
            format!(
                "not enough disk space on this node: {} MiB free under {}, {} MiB must stay free for the agent's state",
                free >> 20,
                root.display(),
                self.cfg.min_free_disk >> 20
            )
        })
    }

    fn admit(&self, r: &Reservation, w: &Workload) -> Result<Result<Charge, String>, AgentError> {
        let l = self
            .ledger
            .lock()
            .map_err(|_| AgentError::Other("capacity ledger poisoned".into()))?;
        let c = l.charge_of(w);
        let t = crate::capacity::tenancy_of(w);
        Ok(l.admit(&r.id, &c)
            .and_then(|()| l.admit_user(&r.user_id, &r.id, &t))
            .map(|()| c))
    }
}

/// The next message of an optional channel; `None` once it is closed.
async fn next<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Engine {
    pub fn new(
        node: Arc<Identity>,
        store: Store,
        registry: Registry,
        cfg: EngineConfig,
        shared: Arc<Shared>,
    ) -> Self {
        Engine {
            node,
            executor: Executor::new(registry, cfg.provision_timeout),
            recorder: Recorder::new(store, shared.clone()),
            cfg,
            shared,
            warned_forged: HashSet::new(),
            confirmed: HashSet::new(),
            first_poll_seen: false,
            ledger: Arc::new(Mutex::new(Ledger::unbounded())),
            give_ups: None,
            commands: None,
            sweep: None,
            repaired: 0,
            repair_error: None,
            pending_errors: HashMap::new(),
        }
    }

    /// Admit new work against this capacity ledger, and charge it.
    pub fn with_ledger(mut self, ledger: Arc<Mutex<Ledger>>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Act on the crash watch's give-up decisions (and the operator's
    /// purge): each is [`EngineCommand::GiveUp`].
    pub fn with_give_ups(mut self, rx: mpsc::Receiver<GiveUp>) -> Self {
        self.give_ups = Some(rx);
        self
    }

    /// Take reconciliation's commands. The engine then takes no work until
    /// [`EngineCommand::Reconciled`] (repairs come before the first poll).
    pub fn with_commands(mut self, rx: mpsc::Receiver<EngineCommand>) -> Self {
        self.commands = Some(rx);
        self
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Run until the source ends or `shutdown` resolves. The current unit of
    /// work is always finished (and flushed) before returning.
    pub async fn run(
        mut self,
        mut source: impl ReservationSource,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        let mut give_ups = self.give_ups.take();
        let mut commands = self.commands.take();
        let mut reconciling = commands.is_some();
        loop {
            let work = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                c = next(&mut commands) => {
                    match c {
                        Some(c) => {
                            if self.command(c).await {
                                reconciling = false;
                            }
                        }
                        // Reconciliation is gone (it says when it is done
                        // first, unless the agent stops).
                        None => {
                            commands = None;
                            reconciling = false;
                        }
                    }
                    continue;
                }
                g = next(&mut give_ups) => {
                    match g {
                        Some(g) => {
                            self.command(g.into()).await;
                        }
                        None => give_ups = None,
                    }
                    continue;
                }
                w = source.next(), if !reconciling => match w { Some(w) => w, None => break },
            };
            if let Err(e) = self.handle(work).await {
                // A cache that cannot be written (disk full, I/O error)
                // must not kill the node: what was not recorded comes back
                // (the explorer sends it again, the expiry index keeps it).
                error!(error = %e, "cannot record this work; going on");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        self.recorder.commit().await?;
        Ok(())
    }

    /// Carry out one command; true once reconciliation is done and went
    /// well (work may be taken).
    async fn command(&mut self, c: EngineCommand) -> bool {
        match c {
            EngineCommand::GiveUp(g) => {
                let span = tracing::info_span!("reservation", id = %g.id);
                let done = async {
                    self.give_up(g).await?;
                    self.recorder.commit().await
                };
                if let Err(e) = done.instrument(span).await {
                    error!(error = %e, "cannot record a give-up; going on");
                }
                false
            }
            EngineCommand::Repair(id) => {
                // After a cache error, reconciliation has failed: the rest
                // is not tried.
                if self.repair_error.is_none() {
                    let span = tracing::info_span!("reservation", id = %id);
                    match self.repair(&id).instrument(span).await {
                        Ok(true) => self.repaired += 1,
                        Ok(false) => {}
                        Err(e) => self.repair_error = Some(e),
                    }
                }
                false
            }
            EngineCommand::Reconciled { repaired, sweep } => {
                self.sweep = sweep;
                let outcome = match self.repair_error.take() {
                    Some(e) => Err(e),
                    None => self.recorder.commit().await.map(|()| self.repaired),
                };
                let ok = outcome.is_ok();
                let _ = repaired.send(outcome);
                ok
            }
        }
    }

    /// Handle one unit of work and make its records durable.
    pub async fn handle(&mut self, work: Work) -> Result<(), AgentError> {
        match work {
            Work::Poll {
                mut reservations,
                cursor,
                synced,
            } => {
                // Dependency order: networks and volumes before the
                // containers that use them; unknown types last.
                reservations
                    .sort_by_key(|r| r.workload_type().map(|t| t.order()).unwrap_or(usize::MAX));
                for r in reservations {
                    // Every line logged while handling it (provisioners'
                    // too) carries the reservation id, and its user once
                    // the signature verified (debug streams go by it).
                    let span = tracing::info_span!("reservation", id = %r.id, user = tracing::field::Empty);
                    self.handle_reservation(r).instrument(span).await?;
                }
                self.recorder.cursor(cursor)?;
                self.recorder.commit().await?;
                if synced && !self.first_poll_seen {
                    // Every reservation the explorer knows has now been
                    // seen (and valid orphans adopted): what is left
                    // labelled but uncached is an orphan.
                    self.first_poll_seen = true;
                    self.hold_for_sweep().await;
                    self.shared.first_poll_done.store(true, Ordering::SeqCst);
                    // Start-up decoded the whole cache and the full `from=0`
                    // answer; hand that memory back to the system.
                    crate::release_freed_memory();
                }
            }
            Work::Due(ids) => {
                for id in ids {
                    let span = tracing::info_span!("reservation", id = %id);
                    self.decommission_due(&id).instrument(span).await?;
                }
                self.recorder.commit().await?;
            }
        }
        Ok(())
    }

    /// Let the orphan sweep run, if reconciliation asked for it, and take
    /// nothing else meanwhile.
    async fn hold_for_sweep(&mut self) {
        if let Some(SweepGate { synced, done }) = self.sweep.take() {
            if synced.send(()).is_ok() {
                let _ = done.await;
            }
        }
    }

    fn view(&self) -> NodeView<'_> {
        NodeView {
            reads: self.recorder.reads(),
            executor: &self.executor,
            ledger: &self.ledger,
            shared: &self.shared,
            cfg: &self.cfg,
        }
    }

    /// Judge and act on one reservation from a poll answer.
    pub async fn handle_reservation(&mut self, r: Reservation) -> Result<(), AgentError> {
        let rules = Rules {
            node_id: self.node.id(),
            now: Utc::now(),
            max_duration: self.cfg.max_duration,
        };
        let verdict = judge::judge(&r, &self.view(), &rules)?;
        if let Some(user) = verdict.user(&r) {
            tracing::Span::current().record("user", user);
        }
        let id = r.id.as_str();
        match verdict {
            Verdict::BadId => {
                let shown: String = r.id.chars().take(64).collect();
                warn!(reservation = ?shown, "skipping a reservation whose id is not <number>-<number>; nothing is signed about it");
            }
            Verdict::Running => debug!(reservation = %id, "already provisioned; skipped"),
            Verdict::Judged(state) => {
                debug!(reservation = %id, outcome = ?state, "already judged; skipped")
            }
            Verdict::Forged { error, .. } => self.warn_forged(id, &error),
            Verdict::Decommission(cached) => {
                info!(reservation = %id, "signed deletion: decommissioning");
                self.decommission(&cached, "deleted by its user").await?;
            }
            Verdict::Confirm { again } => {
                if self.confirmed.insert(id.to_string()) {
                    info!(reservation = %id, "signed deletion of a workload not running here: confirming");
                    let confirmation = self.node.sign_deleted(id, &r.signature);
                    if again {
                        self.recorder.deleted_again(id, &confirmation)?;
                    } else {
                        self.recorder.decommissioned(
                            id,
                            &r.kind,
                            &r.signature,
                            &confirmation,
                            None,
                        )?;
                    }
                }
            }
            Verdict::Refuse { message, verified } => {
                let sig = if verified { r.signature.as_str() } else { "" };
                self.refuse(&r, message, sig)?
            }
            Verdict::Provision {
                kind,
                workload,
                charge,
            } => self.provision(&r, kind, *workload, charge).await?,
        }
        Ok(())
    }

    fn warn_forged(&mut self, id: &str, why: &str) {
        if self.warned_forged.insert(id.to_string()) {
            warn!(reservation = %id, error = %why, "refusing a deletion that the user did not sign; the workload keeps running until it expires");
        }
    }

    /// Refuse with a signed error result; `verified_signature` enters the
    /// replay index unless empty.
    fn refuse(
        &mut self,
        r: &Reservation,
        msg: String,
        verified_signature: &str,
    ) -> Result<(), AgentError> {
        warn!(reservation = %r.id, kind = %r.kind, error = %msg, "refused");
        let res = self.node.error_result(r, msg);
        self.recorder.refused(&res, verified_signature)?;
        self.shared.count(&r.kind, "refused");
        Ok(())
    }

    /// Provision an admitted reservation, record it and charge the ledger;
    /// a failure is rolled back and refused.
    async fn provision(
        &mut self,
        r: &Reservation,
        kind: WorkloadType,
        w: Workload,
        charge: Charge,
    ) -> Result<(), AgentError> {
        info!(reservation = %r.id, kind = %kind, user = %r.user_id, "provisioning");
        let started = std::time::Instant::now();
        let data = match self.executor.provision(r, &w).await {
            Ok(data) => data,
            Err(msg) => return self.refuse(r, msg, &r.signature),
        };
        faults::point("after-provision");
        let res = match self.node.ok_result(r, &data) {
            Ok(res) => res,
            Err(e) => {
                return self.refuse(
                    r,
                    format!("result data cannot be encoded: {e}"),
                    &r.signature,
                )
            }
        };
        self.recorder
            .provisioned(&Cached::new(r.clone(), res.clone()), &res)?;
        let secs = started.elapsed().as_secs_f64();
        self.shared.metrics.provisioned_in(&r.kind, secs);
        if let Ok(mut l) = self.ledger.lock() {
            l.add(&r.id, charge);
            l.add_user(&r.id, &r.user_id, crate::capacity::tenancy_of(&w));
        }
        self.shared.count(&r.kind, "provisioned");
        info!(reservation = %r.id, kind = %kind, seconds = secs, "provisioned");
        faults::point("after-record");
        Ok(())
    }

    /// The crash policy (or the operator) gave up on a workload:
    /// decommission it, post the signed error result with the deletion,
    /// and mark it deleted.
    async fn give_up(&mut self, g: GiveUp) -> Result<(), AgentError> {
        let Some(cached) = self.recorder.reads().get(&g.id)? else {
            return Ok(());
        };
        let why = if g.crashes == 0 {
            warn!(reservation = %g.id, reason = %g.message, "removed by the node's operator");
            "removed by the operator"
        } else {
            warn!(reservation = %g.id, crashes = g.crashes, exit_code = g.exit_code, "crash policy: giving up on the workload");
            "crash policy"
        };
        let res = self.node.error_result(&cached.reservation, g.message);
        self.pending_errors.insert(g.id.clone(), res);
        self.decommission(&cached, why).await
    }

    /// Decommission a cached workload, posting a pending error result (a
    /// give-up's) with the deletion; if it must wait (still in use) or
    /// fails, it is rescheduled and the decommission source retries it.
    async fn decommission(&mut self, cached: &Cached, why: &str) -> Result<(), AgentError> {
        let r = &cached.reservation;
        match self.executor.decommission(r).await {
            Ok(()) => {
                let confirmation = self.node.sign_deleted(&r.id, &r.signature);
                self.recorder.decommissioned(
                    &r.id,
                    &r.kind,
                    &r.signature,
                    &confirmation,
                    self.pending_errors.get(&r.id),
                )?;
                self.pending_errors.remove(&r.id);
                if let Ok(mut l) = self.ledger.lock() {
                    l.release(&r.id);
                }
                self.confirmed.insert(r.id.clone());
                self.shared.count(&r.kind, "decommissioned");
                info!(reservation = %r.id, kind = %r.kind, why, "decommissioned");
            }
            Err(e) => {
                let at: DateTime<Utc> = Utc::now()
                    + chrono::Duration::from_std(self.cfg.retry_decommission)
                        .unwrap_or(chrono::Duration::seconds(5));
                match &e {
                    ProvisionError::InUse(m) => {
                        info!(reservation = %r.id, reason = %m, retry_at = %at.to_rfc3339(), "decommission waits: still in use")
                    }
                    other => {
                        error!(reservation = %r.id, error = %other, retry_at = %at.to_rfc3339(), "decommission failed; will retry")
                    }
                }
                self.recorder.reschedule(&r.id, at)?;
            }
        }
        Ok(())
    }

    async fn decommission_due(&mut self, id: &str) -> Result<(), AgentError> {
        match self.recorder.reads().get(id)? {
            Some(c) => {
                self.decommission(&c, "due: expired or deletion pending")
                    .await
            }
            None => Ok(()),
        }
    }

    /// Provision a cached workload again (its objects are gone). When the
    /// result data changed (a new container id), the new signed result is
    /// cached and posted. True when it was provisioned again.
    async fn repair(&mut self, id: &str) -> Result<bool, AgentError> {
        let Some(cached) = self.recorder.reads().get(id)? else {
            return Ok(false);
        };
        let r = &cached.reservation;
        let Some(w) = self.executor.workload(r) else {
            return Ok(false);
        };
        warn!(reservation = %r.id, kind = %w.kind(), "repair: its Docker objects are gone; provisioning again");
        match self.executor.provision_once(r, &w).await {
            Ok(data) => {
                if let Ok(res) = self.node.ok_result(r, &data) {
                    if res.data.get() != cached.result.data.get() {
                        let c = Cached::new(r.clone(), res.clone());
                        self.recorder.provisioned(&c, &res)?;
                    }
                }
                info!(reservation = %r.id, "repair: provisioned again");
                Ok(true)
            }
            Err(Failure::Failed(e)) => {
                error!(reservation = %r.id, error = %e, "repair failed; will try at next start");
                Ok(false)
            }
            Err(Failure::TimedOut) => {
                error!(reservation = %r.id, "repair timed out; will try at next start");
                Ok(false)
            }
        }
    }
}

#[cfg(test)]
mod tests;
