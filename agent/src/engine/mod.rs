//! The engine: judges one unit of work at a time, in order, and runs the
//! jobs it gives (provisionings, decommissions) concurrently, across units:
//! a slow job holds up nothing but its own workload and what depends on it.
//! This file owns the loop; the parts it drives each own one thing:
//! - [`judge`]: the decision about a reservation, pure;
//! - [`executor`]: provisioning (under a deadline, rolled back when it
//!   fails) and decommissioning through the provisioners;
//! - [`inflight`]: the jobs running, the reservations parked behind them
//!   (same id or signature) and the poll cursors waiting for them;
//! - [`recorder`]: every write into the store, and the flush.
//!
//! Durability: records are written without an fsync each; after a unit of
//! work is judged, and after jobs finish, the recorder flushes the store
//! once and only then raises the delivery watermark, so no result leaves
//! the node before it is durable. A poll cursor is recorded only once all
//! the work handed over up to it is. A crash before a flush loses the
//! records but not the Docker objects; the `from=0` poll at restart brings
//! the reservation back and idempotent provisioning reuses what exists, so
//! nothing is made twice and exactly one result is delivered.

mod ahead;
mod executor;
mod inflight;
pub mod judge;
mod recorder;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use provisioners::names::Names;
use provisioners::{ProvisionError, Registry};
use reservation::{Identity, KeyCache, Reservation, Workload, WorkloadResult, WorkloadType};
use sources::{ReservationSource, Work};
use store::{Cached, OutcomeState, Store};
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tracing::{debug, error, info, warn, Instrument};

use crate::capacity::{Charge, Ledger};
use crate::commands::{EngineCommand, GiveUp, SweepGate};
use crate::metrics::Metrics;
use crate::AgentError;
use ahead::{Ahead, Checked};
use executor::{Executor, Failure};
use inflight::{InFlight, Parking, Running, Ticket};
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
    /// New work is refused while the filesystem of the cache has less
    /// than this many bytes free (the cache must stay writable for what
    /// runs already).
    pub min_free_disk: u64,
    /// The longest `duration` accepted (`--max-duration`).
    pub max_duration: Duration,
    /// How many provisionings and decommissionings run at once
    /// (`--max-parallel`).
    pub max_parallel: usize,
    /// `--stop-grace`: the decommission source hands an id over this long
    /// before its time, so a retry is scheduled this much later.
    pub stop_grace: Duration,
}

/// Default `--max-parallel`: 4 × the cores.
pub fn default_max_parallel() -> usize {
    4 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Default `--max-duration`: 366 days.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);
/// Default `--provision-timeout`.
pub const DEFAULT_PROVISION_TIMEOUT: Duration = Duration::from_secs(600);
/// Default `--min-free-disk`, in bytes.
pub const DEFAULT_MIN_FREE_DISK: u64 = 64 << 20;
/// How long a stopping engine waits for the jobs that run (systemd's
/// `TimeoutStopSec` is 120 s; an abandoned job is taken again at start).
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            provision_timeout: DEFAULT_PROVISION_TIMEOUT,
            retry_decommission: Duration::from_secs(5),
            min_free_disk: DEFAULT_MIN_FREE_DISK,
            max_duration: DEFAULT_MAX_DURATION,
            max_parallel: default_max_parallel(),
            stop_grace: Duration::ZERO,
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
    /// The jobs running now, for `agentctl status`.
    pub jobs: Arc<Mutex<HashMap<u64, JobView>>>,
    /// The restart drills' fault point (`AGENT_FAULT`), if any.
    pub faults: crate::faults::Faults,
}

/// A job running, as `agentctl status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `provisioning` or `decommissioning`.
    pub action: &'static str,
    pub since: DateTime<Utc>,
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
    executor: Arc<Executor>,
    /// Bounds the jobs that run at once (`max_parallel`).
    permits: Arc<Semaphore>,
    /// The cores: how many chunks of work ahead run at once.
    cores: usize,
    /// The node's object names, for the dependencies between jobs.
    names: Names,
    /// Provisionings and decommissionings judged and not started yet:
    /// [`Engine::start_jobs`] starts them.
    jobs: Vec<(Ticket, Job)>,
    /// The ids and user signatures of `jobs` (a reservation about one of
    /// them starts them first), so that check is not a scan of them all.
    queued_ids: HashSet<String>,
    queued_signatures: HashSet<String>,
    /// Jobs running (across units of work), what is parked behind them,
    /// and the poll cursors waiting for them.
    inflight: InFlight<Done>,
    /// Users' keys decoded before, for the judge and the prechecks.
    keys: Arc<KeyCache>,
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
    /// The last reading of the disk under the root ([`NodeView::disk_short`]):
    /// when, and why it is short, if it is. Read again at each unit of work.
    disk: DiskReading,
}

/// A reading of the free space under the root: when it was taken, and why
/// new work cannot be taken, if so.
type DiskReading = std::cell::RefCell<Option<(Instant, Option<String>)>>;

/// How long one reading of the free disk serves the judge within a unit of
/// work: a statvfs per reservation was a sixth of an answer's judgement
/// (bench/notes.md, section 1c), and the unit's own records are a few
/// KiB each.
const DISK_READING_FOR: Duration = Duration::from_millis(500);

/// What the judge sees: the store through the recorder's reads, the
/// ledger, the drain flag, the disk under the root and the registry.
struct NodeView<'a> {
    reads: Reads<'a>,
    executor: &'a Executor,
    ledger: &'a Mutex<Ledger>,
    shared: &'a Shared,
    cfg: &'a EngineConfig,
    disk: &'a DiskReading,
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
        let mut reading = self.disk.borrow_mut();
        match &*reading {
            Some((at, short)) if at.elapsed() < DISK_READING_FOR => short.clone(),
            _ => {
                let short = self.read_disk();
                *reading = Some((Instant::now(), short.clone()));
                short
            }
        }
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

impl NodeView<'_> {
    /// Why the disk under the root is short, read now (statvfs).
    fn read_disk(&self) -> Option<String> {
        let root = self.reads.dir();
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
            names: Names::for_node(node.id()),
            node,
            executor: Arc::new(Executor::new(registry, cfg.provision_timeout)),
            permits: Arc::new(Semaphore::new(cfg.max_parallel.max(1))),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            jobs: Vec::new(),
            queued_ids: HashSet::new(),
            queued_signatures: HashSet::new(),
            inflight: InFlight::new(),
            keys: Arc::new(KeyCache::new()),
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
            disk: DiskReading::default(),
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

    /// Run until the source ends or `shutdown` resolves. Work is taken
    /// while earlier jobs run; each job is recorded (and flushed) as it
    /// finishes. At shutdown the jobs still running get [`SHUTDOWN_WAIT`]
    /// to finish; what is left then was not recorded and comes back with
    /// the `from=0` poll at the next start (provisioning is idempotent).
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
                done = self.inflight.next_done() => {
                    if let Err(e) = self.finished(done).await {
                        error!(error = %e, "cannot record a finished job; going on");
                        tokio::time::sleep(Duration::from_secs(1)).await;
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
            if let Err(e) = self.take(work).await {
                // A cache that cannot be written (disk full, I/O error)
                // must not kill the node: what was not recorded comes back
                // (the explorer sends it again, the expiry index keeps it).
                error!(error = %e, "cannot record this work; going on");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if !self.inflight.is_idle() {
            info!(
                jobs = self.inflight.running_len(),
                "stopping: waiting for the jobs that run"
            );
            if tokio::time::timeout(SHUTDOWN_WAIT, self.drain())
                .await
                .is_err()
            {
                warn!(
                    reservations = ?self.inflight.ids(),
                    "stopping with jobs unfinished; they were not recorded and are taken again at the next start"
                );
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

    /// Handle one unit of work, wait for every job it started (and any
    /// started before), and make its records durable.
    pub async fn handle(&mut self, work: Work) -> Result<(), AgentError> {
        self.take(work).await?;
        self.drain().await
    }

    /// Take one unit of work: judge it, record what needs no Docker, start
    /// its jobs (without waiting for them) and flush.
    async fn take(&mut self, work: Work) -> Result<(), AgentError> {
        // Each unit of work reads the free disk again (once).
        self.disk.replace(None);
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
                let mut tickets = Vec::with_capacity(reservations.len());
                // User signatures are verified ahead on every core; the
                // judge takes the reservations in this order still.
                let mut answer = Ahead::start(
                    reservations.into_iter().map(|r| (r, None)).collect(),
                    ahead::precheck(self.keys.clone(), self.recorder.reads().store()),
                    self.cores,
                );
                while let Some((r, checked)) = answer.next().await? {
                    let t = self.inflight.ticket();
                    tickets.push(t);
                    self.admit(t, r, checked).await?;
                    self.recorder.commit_ahead();
                }
                self.start_jobs();
                self.inflight.answered(cursor, tickets);
                if let Some(c) = self.inflight.ready_cursor() {
                    self.recorder.cursor(c)?;
                }
                self.recorder.commit().await?;
                if synced && !self.first_poll_seen {
                    // Every reservation the explorer knows has now been
                    // seen, and adopted or started: what is left labelled,
                    // uncached and not running is an orphan.
                    self.first_poll_seen = true;
                    self.hold_for_sweep().await;
                    self.shared.first_poll_done.store(true, Ordering::SeqCst);
                    // Start-up decoded the whole cache and the full `from=0`
                    // answer; hand that memory back to the system.
                    crate::memory::release_freed_memory();
                }
            }
            Work::Due(ids) => {
                for id in ids {
                    // Running or parked: it is recorded first, and the
                    // decommission source hands it over again if still due.
                    if self.inflight.holds_id(&id) || self.queued_ids.contains(&id) {
                        continue;
                    }
                    self.decommission_due(&id)?;
                }
                self.start_jobs();
                self.recorder.commit().await?;
            }
        }
        Ok(())
    }

    /// Judge `r` now, or park it behind the running or parked reservation
    /// with its id or signature (a deletion, a replay): it is judged once
    /// that one is recorded, so the judge sees each id in order.
    /// `checked`: its user signature verified ahead, if it was (a parked
    /// reservation is judged without: the judge verifies it).
    async fn admit(
        &mut self,
        t: Ticket,
        r: Reservation,
        checked: Checked,
    ) -> Result<(), AgentError> {
        if self.queued_ids.contains(&r.id) || self.queued_signatures.contains(&r.signature) {
            self.start_jobs();
        }
        if let Some(after) = self.inflight.blocker(t, &r) {
            let id = r.id.clone();
            match self.inflight.park(t, after, r) {
                Parking::Parked => {
                    debug!(reservation = %id, "waits for the work on the same reservation that runs")
                }
                Parking::Duplicate => {
                    debug!(reservation = %id, "dropped: the same reservation already waits for the work on it")
                }
                Parking::Full => warn!(
                    reservation = %id,
                    waiting = inflight::MAX_PARKED,
                    "dropped: too many reservations wait for running work (the explorer hands a deletion over again until it is confirmed)"
                ),
            }
            return Ok(());
        }
        // Every line logged while handling it (provisioners' too) carries
        // the reservation id, and its user once the signature verified
        // (debug streams go by it).
        let span = tracing::info_span!("reservation", id = %r.id, user = tracing::field::Empty);
        self.judge_one(t, r, checked).instrument(span).await
    }

    /// Record a job that finished, and any other that finished meanwhile
    /// (their results signed ahead on every core, recorded in the order
    /// they finished); judge what was parked behind them; record the poll
    /// cursor they held; flush once.
    async fn finished(&mut self, first: (Ticket, Done)) -> Result<(), AgentError> {
        let mut first = Some(first);
        let mut first_error = None;
        loop {
            let mut batch: Vec<(Ticket, Done)> = first.take().into_iter().collect();
            let mut yielded = false;
            loop {
                if let Some(d) = self.inflight.try_done() {
                    yielded = false;
                    batch.push(d);
                    continue;
                }
                // Nothing ready now may only mean this task spent its
                // scheduling budget (tokio then answers "pending" and wakes
                // at once): yield once and look again, so jobs that finish
                // together share one commit instead of one each.
                if !yielded && self.inflight.running_len() > batch.len() {
                    yielded = true;
                    tokio::task::yield_now().await;
                    continue;
                }
                break;
            }
            if batch.is_empty() {
                break;
            }
            let mut signed = Ahead::start(batch, sign_ahead(self.node.clone()), self.cores);
            while let Some((t, d)) = signed.next().await? {
                if let Ok(mut shown) = self.shared.jobs.lock() {
                    shown.remove(&t);
                }
                {
                    let span = tracing::info_span!("reservation", id = %d.id());
                    let _entered = span.enter();
                    if let Err(e) = self.record(d) {
                        error!(error = %e, "cannot record this job");
                        first_error.get_or_insert(e);
                    }
                }
                self.recorder.commit_ahead();
                let mut settled = vec![t];
                while let Some(t) = settled.pop() {
                    for (own, r) in self.inflight.settle(t) {
                        self.admit(own, r, None).await?;
                        self.start_jobs();
                        if !self.inflight.pending(own) {
                            settled.push(own);
                        }
                    }
                }
            }
        }
        if let Some(c) = self.inflight.ready_cursor() {
            self.recorder.cursor(c)?;
        }
        self.recorder.commit().await?;
        first_error.map_or(Ok(()), Err)
    }

    /// Wait for every job in flight (and what is parked behind them), and
    /// record each.
    pub async fn drain(&mut self) -> Result<(), AgentError> {
        self.start_jobs();
        let mut first_error = None;
        while self.inflight.running_len() > 0 {
            let done = self.inflight.next_done().await;
            if let Err(e) = self.finished(done).await {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => self.recorder.commit().await,
        }
    }

    /// Let the orphan sweep run, if reconciliation asked for it, and take
    /// nothing else meanwhile.
    async fn hold_for_sweep(&mut self) {
        if let Some(SweepGate { synced, done }) = self.sweep.take() {
            let running = self.inflight.ids().into_iter().collect();
            if synced.send(running).is_ok() {
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
            disk: &self.disk,
        }
    }

    /// Judge and act on one reservation from a poll answer.
    pub async fn handle_reservation(&mut self, r: Reservation) -> Result<(), AgentError> {
        let t = self.inflight.ticket();
        self.admit(t, r, None).await?;
        self.drain().await
    }

    /// Judge one reservation: record what needs no Docker at once, and
    /// queue a provisioning or decommissioning as a job (ticket `t`) for
    /// [`Engine::start_jobs`].
    async fn judge_one(
        &mut self,
        t: Ticket,
        r: Reservation,
        checked: Checked,
    ) -> Result<(), AgentError> {
        let rules = Rules {
            node_id: self.node.id(),
            now: Utc::now(),
            max_duration: self.cfg.max_duration,
            keys: Some(&self.keys),
            checked,
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
                self.decommission(t, *cached, "deleted by its user");
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
            } => self.provision(t, r, kind, *workload, charge),
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

    /// Queue the provisioning of an admitted reservation and charge the
    /// ledger now (so what is judged after it is admitted against it); a
    /// failure releases the charge.
    fn provision(
        &mut self,
        t: Ticket,
        r: Reservation,
        kind: WorkloadType,
        w: Workload,
        charge: Charge,
    ) {
        info!(reservation = %r.id, kind = %kind, user = %r.user_id, "provisioning");
        if let Ok(mut l) = self.ledger.lock() {
            l.add(&r.id, charge);
            l.add_user(&r.id, &r.user_id, crate::capacity::tenancy_of(&w));
        }
        self.queue(t, Job::Provision { r, kind, w });
    }

    /// Queue a job for [`Engine::start_jobs`].
    fn queue(&mut self, t: Ticket, job: Job) {
        let r = job.reservation();
        self.queued_ids.insert(r.id.clone());
        self.queued_signatures.insert(r.signature.clone());
        self.jobs.push((t, job));
    }

    /// Start the queued jobs, at most `max_parallel` running at once; each
    /// is recorded when it finishes ([`Engine::finished`], on the engine's
    /// task: the recorder stays the one writer). A job waits for the jobs
    /// it depends on, queued with it or running (see [`dependencies`]);
    /// nothing else waits for a slow one.
    fn start_jobs(&mut self) {
        let mut jobs = std::mem::take(&mut self.jobs);
        self.queued_ids.clear();
        self.queued_signatures.clear();
        if jobs.is_empty() {
            return;
        }
        // `dependencies` reads makers before users: a poll answer comes
        // sorted so, an expiry batch in time order. A stable sort by type
        // puts both in that order.
        jobs.sort_by_key(|(_, j)| {
            j.reservation()
                .workload_type()
                .map_or(usize::MAX, |t| t.order())
        });
        let running: Vec<&Running> = self.inflight.running().collect();
        let deps = dependencies(&self.names, &jobs, &running);
        drop(running);
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..jobs.len()).map(|_| watch::channel(false)).unzip();
        for (((t, job), tx), (wait, waits_running, objects, uses)) in
            jobs.into_iter().zip(txs).zip(deps)
        {
            let mut waits: Vec<watch::Receiver<bool>> =
                wait.iter().map(|&i| rxs[i].clone()).collect();
            waits.extend(waits_running);
            let executor = self.executor.clone();
            let permits = self.permits.clone();
            let r = job.reservation().clone();
            let span = tracing::info_span!("reservation", id = %r.id, user = %r.user_id);
            let info = Running {
                ticket: t,
                provision: matches!(job, Job::Provision { .. }),
                reservation: r,
                objects,
                uses,
                done: tx.subscribe(),
            };
            let run = async move {
                for mut rx in waits {
                    // An error means the other job is gone: go on.
                    let _ = rx.wait_for(|done| *done).await;
                }
                let permit = permits.acquire_owned().await;
                let done = match job {
                    Job::Provision { r, kind, w } => {
                        let started = Instant::now();
                        let outcome = executor.provision(&r, &w).await;
                        Done::Provisioned {
                            r,
                            kind,
                            outcome,
                            started,
                            signed: None,
                        }
                    }
                    Job::Decommission { cached, why } => {
                        let outcome = executor.decommission(&cached.reservation).await;
                        Done::Decommissioned {
                            cached,
                            why,
                            outcome,
                        }
                    }
                };
                drop(permit);
                let _ = tx.send(true);
                done
            }
            .instrument(span);
            if let Ok(mut shown) = self.shared.jobs.lock() {
                shown.insert(
                    t,
                    JobView {
                        id: info.reservation.id.clone(),
                        kind: info.reservation.kind.clone(),
                        action: if info.provision {
                            "provisioning"
                        } else {
                            "decommissioning"
                        },
                        since: Utc::now(),
                    },
                );
            }
            self.inflight.start(info, Box::pin(run));
        }
    }

    /// Record a finished job.
    fn record(&mut self, done: Done) -> Result<(), AgentError> {
        match done {
            Done::Provisioned {
                r,
                kind,
                outcome,
                started,
                signed,
            } => self.provisioned(&r, kind, outcome, started, signed),
            Done::Decommissioned {
                cached,
                why,
                outcome,
            } => self.decommissioned(&cached, why, outcome),
        }
    }

    /// Record a provisioning that finished: its result and cache entry in
    /// one transaction, or its refusal (the charge released). `signed`:
    /// its result signed ahead, if it was.
    fn provisioned(
        &mut self,
        r: &Reservation,
        kind: WorkloadType,
        outcome: Result<serde_json::Value, String>,
        started: Instant,
        signed: Option<Result<WorkloadResult, String>>,
    ) -> Result<(), AgentError> {
        let release = |ledger: &Mutex<Ledger>| {
            if let Ok(mut l) = ledger.lock() {
                l.release(&r.id);
            }
        };
        let data = match outcome {
            Ok(data) => data,
            Err(msg) => {
                release(&self.ledger);
                return self.refuse(r, msg, &r.signature);
            }
        };
        self.shared.faults.point("after-provision");
        let signed =
            signed.unwrap_or_else(|| self.node.ok_result(r, &data).map_err(|e| e.to_string()));
        let res = match signed {
            Ok(res) => res,
            Err(e) => {
                release(&self.ledger);
                return self.refuse(
                    r,
                    format!("result data cannot be encoded: {e}"),
                    &r.signature,
                );
            }
        };
        if let Err(e) = self
            .recorder
            .provisioned(&Cached::new(r.clone(), res.clone()), &res)
        {
            release(&self.ledger);
            return Err(e);
        }
        let secs = started.elapsed().as_secs_f64();
        self.shared.metrics.provisioned_in(&r.kind, secs);
        self.shared.count(&r.kind, "provisioned");
        info!(reservation = %r.id, kind = %kind, seconds = secs, "provisioned");
        self.shared.faults.point("after-record");
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
        let t = self.inflight.ticket();
        self.decommission(t, cached, why);
        self.start_jobs();
        Ok(())
    }

    /// Queue the decommission of a cached workload (ticket `t`).
    fn decommission(&mut self, t: Ticket, cached: Cached, why: &'static str) {
        self.queue(t, Job::Decommission { cached, why });
    }

    /// Record a decommission that finished, posting a pending error result
    /// (a give-up's) with the deletion; if it must wait (still in use) or
    /// failed, it is rescheduled and the decommission source retries it.
    fn decommissioned(
        &mut self,
        cached: &Cached,
        why: &str,
        outcome: Result<(), ProvisionError>,
    ) -> Result<(), AgentError> {
        let r = &cached.reservation;
        match outcome {
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
                // The decommission source hands it over `stop_grace` early.
                let at: DateTime<Utc> = Utc::now()
                    + chrono::Duration::from_std(self.cfg.retry_decommission + self.cfg.stop_grace)
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

    fn decommission_due(&mut self, id: &str) -> Result<(), AgentError> {
        if let Some(c) = self.recorder.reads().get(id)? {
            let t = self.inflight.ticket();
            self.decommission(t, c, "due: expired or deletion pending");
        }
        Ok(())
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

/// A provisioning or decommissioning judged and not run yet.
enum Job {
    Provision {
        r: Reservation,
        kind: WorkloadType,
        w: Workload,
    },
    Decommission {
        cached: Cached,
        why: &'static str,
    },
}

impl Job {
    fn reservation(&self) -> &Reservation {
        match self {
            Job::Provision { r, .. } => r,
            Job::Decommission { cached, .. } => &cached.reservation,
        }
    }
}

/// A job that ran, to record.
enum Done {
    Provisioned {
        r: Reservation,
        kind: WorkloadType,
        outcome: Result<serde_json::Value, String>,
        started: Instant,
        /// The node's result for `outcome`'s data, signed ahead
        /// ([`sign_ahead`]), or why it cannot be; `None`: not signed yet.
        signed: Option<Result<WorkloadResult, String>>,
    },
    Decommissioned {
        cached: Cached,
        why: &'static str,
        outcome: Result<(), ProvisionError>,
    },
}

/// The step that signs the node's results of finished provisionings
/// ahead of their recording (each result's bytes are its own).
fn sign_ahead(node: Arc<Identity>) -> ahead::Step<(Ticket, Done)> {
    Arc::new(move |(_, d): &mut (Ticket, Done)| {
        if let Done::Provisioned {
            r,
            outcome: Ok(data),
            signed,
            ..
        } = d
        {
            *signed = Some(node.ok_result(r, data).map_err(|e| e.to_string()));
        }
    })
}

impl Done {
    fn id(&self) -> &str {
        match self {
            Done::Provisioned { r, .. } => &r.id,
            Done::Decommissioned { cached, .. } => &cached.reservation.id,
        }
    }
}

/// For each job: the jobs of its batch it waits for (indices), the running
/// jobs it waits for, and its objects and uses. Jobs come in dependency
/// order (networks, volumes, zdb, containers, ...): a provisioning waits
/// for the earlier provisionings that make an object it uses (a container
/// for its network and volumes); a decommission waits for the later
/// decommissions of workloads that use one of its objects (a volume for the
/// container that mounts it). Only earlier (resp. later) jobs of the batch
/// count, and running jobs wait for none of the batch, so there is no
/// cycle.
#[allow(clippy::type_complexity)]
fn dependencies(
    names: &Names,
    jobs: &[(Ticket, Job)],
    running: &[&Running],
) -> Vec<(
    Vec<usize>,
    Vec<watch::Receiver<bool>>,
    Vec<String>,
    Vec<String>,
)> {
    use provisioners::registry;
    let objects: Vec<Vec<String>> = jobs
        .iter()
        .map(|(_, j)| registry::objects(names, j.reservation()))
        .collect();
    let uses: Vec<Vec<String>> = jobs
        .iter()
        .map(|(_, j)| registry::uses(names, j.reservation()))
        .collect();
    let shares = |user: usize, maker: usize| {
        registry::relies_on(
            jobs[user].1.reservation(),
            &uses[user],
            jobs[maker].1.reservation(),
            &objects[maker],
        )
    };
    let is_provision = |i: usize| matches!(jobs[i].1, Job::Provision { .. });
    // The batch's provisionings that make each object, and its
    // decommissions that use each: a job looks up only the jobs that share
    // an object with it (not every other job: 10,000 jobs of one answer
    // made that quadratic).
    let mut made_by: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut used_by: HashMap<&str, Vec<usize>> = HashMap::new();
    for i in 0..jobs.len() {
        let (named, index) = if is_provision(i) {
            (&objects[i], &mut made_by)
        } else {
            (&uses[i], &mut used_by)
        };
        for o in named {
            index.entry(o.as_str()).or_default().push(i);
        }
    }
    let among = |index: &HashMap<&str, Vec<usize>>, names: &[String]| {
        let mut found: Vec<usize> = names
            .iter()
            .filter_map(|o| index.get(o.as_str()))
            .flatten()
            .copied()
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    };
    (0..jobs.len())
        .map(|j| {
            let r = jobs[j].1.reservation();
            let (batch, running): (Vec<usize>, Vec<_>) = if is_provision(j) {
                (
                    among(&made_by, &uses[j])
                        .into_iter()
                        .filter(|&i| i < j && shares(j, i))
                        .collect(),
                    running
                        .iter()
                        .filter(|o| {
                            o.provision
                                && registry::relies_on(r, &uses[j], &o.reservation, &o.objects)
                        })
                        .map(|o| o.done.clone())
                        .collect(),
                )
            } else {
                (
                    among(&used_by, &objects[j])
                        .into_iter()
                        .filter(|&i| i > j && shares(i, j))
                        .collect(),
                    running
                        .iter()
                        .filter(|o| {
                            !o.provision
                                && registry::relies_on(&o.reservation, &o.uses, r, &objects[j])
                        })
                        .map(|o| o.done.clone())
                        .collect(),
                )
            };
            (batch, running, objects[j].clone(), uses[j].clone())
        })
        .collect()
}

#[cfg(test)]
mod tests;
