//! The engine: one unit of work at a time, in order. It judges each
//! reservation (deletion, expiry, cache, validation), provisions it under a
//! deadline, and records the signed result and the cache entry atomically.
//!
//! Durability: records are written without an fsync each; at the end of a
//! unit of work the engine flushes the store once and only then raises the
//! delivery watermark, so no result leaves the node before it is durable.
//! A crash before that flush loses the records but not the Docker objects;
//! the `from=0` poll at restart brings the reservation back and idempotent
//! provisioning reuses what exists, so nothing is made twice and exactly one
//! result is delivered.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;
use tokio::sync::mpsc;

use chrono::{DateTime, Utc};
use provisioners::{ProvisionError, Registry};
use reservation::{Identity, Reservation, Workload, WorkloadResult, WorkloadType};
use sources::{ReservationSource, Work};
use store::{Cached, OutcomeState, Store};
use tokio::sync::Notify;
use tracing::{debug, error, info, warn, Instrument};

use crate::capacity::Ledger;
use crate::crash::GiveUp;
use crate::faults;
use crate::metrics::Metrics;
use crate::AgentError;

/// Largest `data` accepted, in bytes.
pub const MAX_DATA_BYTES: usize = 64 * 1024;

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

/// The engine. Owns the only write path into the cache.
pub struct Engine {
    node: Arc<Identity>,
    store: Store,
    registry: Registry,
    cfg: EngineConfig,
    shared: Arc<Shared>,
    /// Forged deletions already warned about (warned once each).
    warned_forged: HashSet<String>,
    /// Deletions confirmed in this run (the explorer may ask again until
    /// our `PUT /deleted` reaches it; queue it once).
    confirmed: HashSet<String>,
    /// One past the highest outbox seq written so far.
    written_below: u64,
    first_poll_seen: bool,
    /// Capacity charged per workload ([`Ledger::unbounded`] until
    /// [`Engine::with_ledger`]).
    ledger: Arc<Mutex<Ledger>>,
    /// Give-up decisions of the crash watch.
    give_ups: Option<mpsc::Receiver<GiveUp>>,
    /// Error results of given-up workloads whose decommission must be
    /// retried: posted with the deletion once it succeeds.
    pending_errors: HashMap<String, WorkloadResult>,
}

enum Verdict {
    /// Provision it.
    Provision(WorkloadType, Box<Workload>),
    /// Refuse it with this message. `verified`: its user signature
    /// verified, so it enters the replay index.
    Refuse { message: String, verified: bool },
}

impl Verdict {
    fn refuse(message: impl Into<String>) -> Self {
        Verdict::Refuse {
            message: message.into(),
            verified: true,
        }
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
            store,
            registry,
            cfg,
            shared,
            warned_forged: HashSet::new(),
            confirmed: HashSet::new(),
            written_below: 0,
            first_poll_seen: false,
            ledger: Arc::new(Mutex::new(Ledger::unbounded())),
            give_ups: None,
            pending_errors: HashMap::new(),
        }
    }

    /// Admit new work against this capacity ledger, and charge it.
    pub fn with_ledger(mut self, ledger: Arc<Mutex<Ledger>>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Act on the crash watch's give-up decisions.
    pub fn with_give_ups(mut self, rx: mpsc::Receiver<GiveUp>) -> Self {
        self.give_ups = Some(rx);
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
        loop {
            let work = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(g) = async { match give_ups.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                    let span = tracing::info_span!("reservation", id = %g.id);
                    if let Err(e) = self.give_up(g).instrument(span).await.and_then(|_| self.commit()) {
                        error!(error = %e, "cannot record a give-up; going on");
                    }
                    continue;
                }
                w = source.next() => match w { Some(w) => w, None => break },
            };
            if let Err(e) = self.handle(work).await {
                // A cache that cannot be written (disk full, I/O error)
                // must not kill the node: what was not recorded comes back
                // (the explorer sends it again, the expiry index keeps it).
                error!(error = %e, "cannot record this work; going on");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        self.commit()?;
        Ok(())
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
                self.store.set_cursor(cursor)?;
                self.commit()?;
                if synced && !self.first_poll_seen {
                    // Every reservation the explorer knows has now been
                    // seen (and valid orphans adopted): what is left
                    // labelled but uncached is an orphan.
                    self.first_poll_seen = true;
                    crate::reconcile::remove_orphans(self).await;
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
                self.commit()?;
            }
        }
        Ok(())
    }

    /// Flush the store, then let delivery see what was written.
    fn commit(&mut self) -> Result<(), AgentError> {
        if self.written_below > self.shared.durable_below.load(Ordering::SeqCst) {
            self.store.flush()?;
            self.shared
                .durable_below
                .store(self.written_below, Ordering::SeqCst);
            self.shared.outbox_wake.notify_one();
        } else {
            self.store.flush()?;
        }
        self.shared.expiry_wake.notify_one();
        Ok(())
    }

    fn wrote(&mut self, seq: u64) {
        self.written_below = self.written_below.max(seq + 1);
    }

    /// Judge and act on one reservation from a poll answer.
    pub async fn handle_reservation(&mut self, r: Reservation) -> Result<(), AgentError> {
        // Check 1: nothing is signed about an id outside the grammar (a
        // crafted id could make signed bytes read as something else).
        if !reservation::valid_id(&r.id) {
            let shown: String = r.id.chars().take(64).collect();
            warn!(reservation = ?shown, "skipping a reservation whose id is not <number>-<number>; nothing is signed about it");
            return Ok(());
        }
        let id = r.id.clone();
        // The common case at start (`from=0` lists everything): cached and
        // not a deletion. Skip it without decoding the cached record.
        if !r.to_delete && self.store.is_cached(&id)? {
            debug!(reservation = %id, "already provisioned; skipped");
            return Ok(());
        }
        if let Some(cached) = self.store.get(&id)? {
            tracing::Span::current().record("user", cached.reservation.user_id.as_str());
            // The cached copy is what the user signed and we run; the
            // incoming copy can only ask for a deletion, and only with the
            // cached owner's signature.
            if r.to_delete {
                let mut check = cached.reservation.clone();
                check.delete_signature = r.delete_signature.clone();
                match check.verify_delete() {
                    Ok(()) => {
                        info!(reservation = %id, "signed deletion: decommissioning");
                        self.decommission(&cached, "deleted by its user").await?;
                    }
                    Err(e) => self.warn_forged(&id, &e.to_string()),
                }
            } else {
                debug!(reservation = %id, "already provisioned; skipped");
            }
            return Ok(());
        }
        let outcome = self.store.outcome(&id)?;
        if r.to_delete {
            if let Err(e) = r.verify().and_then(|_| r.verify_delete()) {
                self.warn_forged(&id, &e.to_string());
                return Ok(());
            }
            tracing::Span::current().record("user", r.user_id.as_str());
            if self.confirmed.insert(id.clone()) {
                info!(reservation = %id, "signed deletion of a workload not running here: confirming");
                let confirmation = self.node.sign_deleted(&id, &r.signature);
                match outcome.map(|o| o.state) {
                    Some(OutcomeState::Deleted) => {
                        let seq = self.store.queue_deleted(&id, &confirmation)?;
                        self.wrote(seq);
                    }
                    _ => {
                        let seq = self.store.record_decommissioned(
                            &id,
                            &r.kind,
                            &r.signature,
                            &confirmation,
                            None,
                        )?;
                        self.wrote(seq);
                    }
                }
            }
            return Ok(());
        }
        if let Some(o) = outcome {
            debug!(reservation = %id, outcome = ?o.state, "already judged; skipped");
            return Ok(());
        }
        let verdict = self.judge(&r);
        if matches!(
            verdict,
            Verdict::Provision(..) | Verdict::Refuse { verified: true, .. }
        ) {
            tracing::Span::current().record("user", r.user_id.as_str());
        }
        match verdict {
            Verdict::Refuse { message, verified } => {
                let sig = if verified { r.signature.as_str() } else { "" };
                self.refuse_recording(&r, message, sig)?
            }
            Verdict::Provision(kind, w) => self.provision(&r, kind, *w).await?,
        }
        Ok(())
    }

    fn warn_forged(&mut self, id: &str, why: &str) {
        if self.warned_forged.insert(id.to_string()) {
            warn!(reservation = %id, error = %why, "refusing a deletion that the user did not sign; the workload keeps running until it expires");
        }
    }

    /// Every check of a new reservation, in the order PROTOCOL.md lists them
    /// (check 1, the id grammar, is done before: nothing is signed about a
    /// malformed id; check 8, capacity and tenancy, at provisioning).
    fn judge(&self, r: &Reservation) -> Verdict {
        let unverified = |message: String| Verdict::Refuse {
            message,
            verified: false,
        };
        // 2. Version 2 with a nonce.
        if let Err(e) = r.check_version() {
            return unverified(e.to_string());
        }
        // 3. The user's signature.
        if let Err(e) = r.verify() {
            return unverified(format!("{e} (user_id {})", r.user_id));
        }
        // 4. Ids are the explorer's, not the user's: the same signed
        // reservation judged under another id is a replay, whether it was
        // provisioned or refused then.
        match self.store.signature_owner(&r.signature) {
            Ok(Some(first)) if first != r.id => {
                return Verdict::refuse(format!(
                    "signature: this signed reservation was already judged as {first}; a replay under a new id is refused"
                ))
            }
            Ok(_) => {}
            Err(e) => return unverified(format!("cache unreadable: {e}")),
        }
        // 5. This node.
        if r.node_id != self.node.id() {
            return Verdict::refuse(format!(
                "node_id {} is not this node ({})",
                r.node_id,
                self.node.id()
            ));
        }
        // 6. Lifetime.
        if let Err(e) = r.check_lifetime(Utc::now(), self.cfg.max_duration) {
            return Verdict::refuse(e.to_string());
        }
        // 7. Type and data.
        let kind = match r.workload_type() {
            Ok(k) => k,
            Err(e) => return Verdict::refuse(e.to_string()),
        };
        if r.data.get().len() > MAX_DATA_BYTES {
            return Verdict::refuse(format!(
                "data: {} bytes, more than the {MAX_DATA_BYTES} bytes limit",
                r.data.get().len()
            ));
        }
        match Workload::parse(kind, &r.data) {
            Ok(w) => Verdict::Provision(kind, Box::new(w)),
            Err(e) => Verdict::refuse(e.to_string()),
        }
    }

    /// Refuse a reservation whose signature verified (it enters the replay
    /// index).
    fn refuse(&mut self, r: &Reservation, msg: String) -> Result<(), AgentError> {
        self.refuse_recording(r, msg, &r.signature)
    }

    /// Refuse with a signed error result; `verified_signature` enters the
    /// replay index unless empty.
    fn refuse_recording(
        &mut self,
        r: &Reservation,
        msg: String,
        verified_signature: &str,
    ) -> Result<(), AgentError> {
        warn!(reservation = %r.id, kind = %r.kind, error = %msg, "refused");
        let res = self.node.error_result(r, msg);
        let seq = self.store.record_refused(&res, verified_signature)?;
        self.wrote(seq);
        self.shared.count(&r.kind, "refused");
        Ok(())
    }

    async fn provision(
        &mut self,
        r: &Reservation,
        kind: WorkloadType,
        w: Workload,
    ) -> Result<(), AgentError> {
        let Some(p) = self.registry.get(kind).cloned() else {
            return self.refuse(
                r,
                format!("workload type {kind} is not supported on this node"),
            );
        };
        if self.shared.draining.load(Ordering::SeqCst) {
            return self.refuse(
                r,
                "node is draining: it takes no new work (its operator retires it); reserve on another node".into(),
            );
        }
        if let Some(msg) = self.disk_short() {
            return self.refuse(r, msg);
        }
        let charge = {
            let l = self
                .ledger
                .lock()
                .map_err(|_| AgentError::Other("capacity ledger poisoned".into()))?;
            let c = l.charge_of(&w);
            let t = crate::capacity::tenancy_of(&w);
            if let Err(msg) = l
                .admit(&r.id, &c)
                .and_then(|()| l.admit_user(&r.user_id, &r.id, &t))
            {
                drop(l);
                return self.refuse(r, msg);
            }
            c
        };
        info!(reservation = %r.id, kind = %kind, user = %r.user_id, "provisioning");
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(self.cfg.provision_timeout, p.provision(r, &w)).await;
        let data = match outcome {
            Ok(Ok(data)) => data,
            Ok(Err(e)) => {
                let msg = match &e {
                    ProvisionError::Refused(m) => m.clone(),
                    other => format!("provisioning failed: {other}"),
                };
                self.roll_back(r, &w).await;
                return self.refuse(r, msg);
            }
            Err(_) => {
                self.roll_back(r, &w).await;
                return self.refuse(
                    r,
                    format!(
                        "provisioning did not finish within {}s; rolled back",
                        self.cfg.provision_timeout.as_secs()
                    ),
                );
            }
        };
        faults::point("after-provision");
        let res = match self.node.ok_result(r, &data) {
            Ok(res) => res,
            Err(e) => return self.refuse(r, format!("result data cannot be encoded: {e}")),
        };
        let seq = self
            .store
            .record_provisioned(&Cached::new(r.clone(), res.clone()), &res)?;
        self.wrote(seq);
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

    /// Why new work cannot be taken for lack of disk under the root, if so.
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

    /// The crash policy gave up on a workload: decommission it, post the
    /// signed error result with the deletion, and mark it deleted.
    async fn give_up(&mut self, g: GiveUp) -> Result<(), AgentError> {
        let Some(cached) = self.store.get(&g.id)? else {
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

    /// Undo what a failed provisioning may have left, so a refusal changes
    /// nothing on the node.
    async fn roll_back(&self, r: &Reservation, w: &Workload) {
        if let Some(p) = self.registry.get(w.kind()) {
            if let Err(e) = p.decommission(r, w).await {
                warn!(reservation = %r.id, error = %e, "rolling back a failed provisioning");
            }
        }
    }

    /// Decommission a cached workload; if it must wait (still in use) or
    /// fails, it is rescheduled and the decommission source retries it.
    async fn decommission(&mut self, cached: &Cached, why: &str) -> Result<(), AgentError> {
        let pending = self.pending_errors.get(&cached.reservation.id).cloned();
        self.decommission_with(cached, why, pending.as_ref()).await
    }

    /// Decommission, and post `result` (an error result) with the deletion.
    pub async fn decommission_with(
        &mut self,
        cached: &Cached,
        why: &str,
        result: Option<&WorkloadResult>,
    ) -> Result<(), AgentError> {
        let r = &cached.reservation;
        let kind = r.workload_type();
        let parsed = kind
            .as_ref()
            .ok()
            .and_then(|k| Workload::parse(*k, &r.data).ok());
        let step = match (
            kind.ok().and_then(|k| self.registry.get(k).cloned()),
            parsed,
        ) {
            (Some(p), Some(w)) => p.decommission(r, &w).await,
            // Nothing can have been provisioned for it.
            _ => Ok(()),
        };
        match step {
            Ok(()) => {
                let confirmation = self.node.sign_deleted(&r.id, &r.signature);
                let seq = self.store.record_decommissioned(
                    &r.id,
                    &r.kind,
                    &r.signature,
                    &confirmation,
                    result,
                )?;
                self.wrote(seq);
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
                self.store.reschedule(&r.id, at)?;
            }
        }
        Ok(())
    }

    async fn decommission_due(&mut self, id: &str) -> Result<(), AgentError> {
        match self.store.get(id)? {
            Some(c) => {
                self.decommission(&c, "due: expired or deletion pending")
                    .await
            }
            None => Ok(()),
        }
    }

    /// Whether a cached workload's objects are gone (reconciliation at
    /// start). Read-only, so many checks can run at once.
    pub async fn needs_repair(&self, cached: &Cached) -> bool {
        let r = &cached.reservation;
        let Ok(kind) = r.workload_type() else {
            return false;
        };
        let (Some(p), Ok(w)) = (self.registry.get(kind), Workload::parse(kind, &r.data)) else {
            return false;
        };
        match p.exists(r, &w).await {
            Ok(present) => !present,
            Err(e) => {
                warn!(reservation = %r.id, error = %e, "cannot check its Docker objects");
                false
            }
        }
    }

    /// Provision a cached workload again (its objects are gone). When the
    /// result data changed (a new container id), the new signed result is
    /// cached and posted.
    pub async fn repair(&mut self, cached: &Cached) -> Result<bool, AgentError> {
        let r = &cached.reservation;
        let Ok(kind) = r.workload_type() else {
            return Ok(false);
        };
        let (Some(p), Ok(w)) = (
            self.registry.get(kind).cloned(),
            Workload::parse(kind, &r.data),
        ) else {
            return Ok(false);
        };
        warn!(reservation = %r.id, kind = %kind, "repair: its Docker objects are gone; provisioning again");
        match tokio::time::timeout(self.cfg.provision_timeout, p.provision(r, &w)).await {
            Ok(Ok(data)) => {
                if let Ok(res) = self.node.ok_result(r, &data) {
                    if res.data.get() != cached.result.data.get() {
                        let c = Cached::new(r.clone(), res.clone());
                        let seq = self.store.record_provisioned(&c, &res)?;
                        self.wrote(seq);
                    }
                }
                info!(reservation = %r.id, "repair: provisioned again");
                Ok(true)
            }
            Ok(Err(e)) => {
                error!(reservation = %r.id, error = %e, "repair failed; will try at next start");
                Ok(false)
            }
            Err(_) => {
                error!(reservation = %r.id, "repair timed out; will try at next start");
                Ok(false)
            }
        }
    }

    /// Flush after a series of direct calls (reconciliation).
    pub fn finish(&mut self) -> Result<(), AgentError> {
        self.commit()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests;
