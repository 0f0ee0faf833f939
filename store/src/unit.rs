//! A unit of work's records, staged in memory and applied to the store in
//! one sled transaction by [`Unit::commit`].
//!
//! Each sled transaction seals and writes an IO buffer of its own, so one
//! transaction per record cost a poll answer of 10,000 reservations about
//! 300 µs each (bench/notes.md); one per unit costs about 75 µs each.
//!
//! Invariants:
//! - A record is all-or-nothing, and so is a whole unit: the records staged
//!   are applied by one transaction, in the order they were staged, so a
//!   crash before [`Unit::commit`] (or before the flush after it) loses all
//!   of them, never part of them or part of a record.
//! - Staged records live in the store's shared overlay: every read of the
//!   store, through any clone ([`Store::get`], [`Store::is_cached`],
//!   [`Store::outcome`], [`Store::signature_owner`]), sees them before the
//!   trees, as it saw a written but unflushed record before: a replay or a
//!   deletion judged in the same unit is judged as if each record had been
//!   written on its own. Scans (`list`, `due`, counters, the outbox) see
//!   committed records only.
//! - There is one writer: every [`Unit`] over a store stages into the same
//!   overlay, and a commit applies all that is staged.
//! - Outbox sequence numbers are drawn when a message is staged, from
//!   sled's one id generator (as a record on its own drew them): unique and
//!   increasing, every staged one above every committed one. The outbox
//!   reads ([`Store::outbox_peek`], [`Store::outbox_len`]) see staged
//!   messages after the committed ones; delivery sends none of them before
//!   the commit's flush raises its durable watermark.
//! - A commit that fails keeps the staged records (the overlay goes on
//!   answering reads as before), and the next commit tries them again.
//! - During a commit the overlay stays readable (readers are not blocked);
//!   what the commit applied leaves it once the transaction is applied, so
//!   a read sees each record staged or in the tree, never neither.
//! - Records may be staged while a commit runs on another thread (the
//!   engine commits a long unit's first records while it records the
//!   rest): a commit takes what is staged when it starts and leaves the
//!   rest staged, and commits run one at a time, in order, so the trees
//!   see the records in staging order, as one commit would have applied
//!   them.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};
use reservation::WorkloadResult;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{IVec, Transactional};

use crate::records::{self, Cached, Outbound, Outcome, OutcomeState};
use crate::{counter_key, expiry_key, Store, StoreError, TxResult, CURSOR};

/// One staged record (already encoded), applied at commit as its own
/// transaction would have applied it; its outbox messages are staged
/// beside, under the seqs drawn when it was staged.
enum Op {
    Provisioned {
        id: String,
        kind: String,
        signature: String,
        expiry: Vec<u8>,
        cached: IVec,
        /// Encoded only if an outcome record is there to overwrite (none
        /// is written otherwise).
        outcome: Outcome,
    },
    Refused {
        id: String,
        signature: String,
        outcome: IVec,
    },
    Decommissioned {
        id: String,
        kind: String,
        signature: String,
        outcome: IVec,
    },
    Reschedule {
        id: String,
        expiry: Vec<u8>,
    },
    Cursor(u64),
}

/// The records staged and not committed, and the overlay through which
/// the store's reads see them. Each overlay entry carries the generation
/// it was staged in: a commit takes generation `g` (and every one before)
/// and, once applied, drops only entries of `g` or earlier, so what was
/// staged meanwhile (perhaps for the same key) stays.
#[derive(Default)]
pub(crate) struct Pending {
    /// The generation records are staged in now.
    gen: u64,
    /// Records not taken by a commit yet, in staging order.
    ops: Vec<Op>,
    /// id -> its staged cache record (`None`: removed).
    cache: HashMap<String, (u64, Option<IVec>)>,
    /// id -> its staged outcome.
    outcomes: HashMap<String, (u64, Outcome)>,
    /// user signature -> id, staged into the replay index.
    signatures: HashMap<String, (u64, String)>,
    /// seq -> message for the explorer (seqs only grow, so a commit drops
    /// the ones up to the last it applied).
    outbox: BTreeMap<u64, IVec>,
}

/// The overlay of one store, shared by its clones.
#[derive(Default)]
pub(crate) struct Overlay {
    pending: RwLock<Pending>,
    /// Held through a whole commit: commits run one at a time, in order.
    committing: Mutex<()>,
}

impl Overlay {
    fn read(&self) -> RwLockReadGuard<'_, Pending> {
        self.pending.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Pending> {
        self.pending.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The staged cache record of `id`: `Some(None)` when staged removed,
    /// `None` when nothing is staged for it.
    pub(crate) fn cached(&self, id: &str) -> Option<Option<IVec>> {
        self.read().cache.get(id).map(|(_, v)| v.clone())
    }

    /// Whether `id` is staged cached (`Some(false)`: staged removed), without
    /// copying the record.
    pub(crate) fn is_cached(&self, id: &str) -> Option<bool> {
        self.read().cache.get(id).map(|(_, v)| v.is_some())
    }

    pub(crate) fn outcome(&self, id: &str) -> Option<Outcome> {
        self.read().outcomes.get(id).map(|(_, o)| o.clone())
    }

    pub(crate) fn signature_owner(&self, signature: &str) -> Option<String> {
        self.read()
            .signatures
            .get(signature)
            .map(|(_, id)| id.clone())
    }

    /// Up to `limit` staged outbox messages, oldest first.
    pub(crate) fn outbox(&self, limit: usize) -> Vec<(u64, IVec)> {
        self.read()
            .outbox
            .iter()
            .take(limit)
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    pub(crate) fn outbox_len(&self) -> usize {
        self.read().outbox.len()
    }
}

/// The writer's handle on a store's staged records: stages records and
/// commits them (see the module's invariants). Cheap: it holds a clone of
/// the store.
#[derive(Clone)]
pub struct Unit {
    store: Store,
}

impl Unit {
    /// The unit over `store` (what is staged there already is part of it).
    pub fn new(store: Store) -> Self {
        Unit { store }
    }

    /// The store the unit commits to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records staged and not committed yet.
    pub fn len(&self) -> usize {
        self.store.overlay.read().ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached workload `id`, staged or in the store.
    pub fn get(&self, id: &str) -> Result<Option<Cached>, StoreError> {
        self.store.get(id)
    }

    pub fn is_cached(&self, id: &str) -> Result<bool, StoreError> {
        self.store.is_cached(id)
    }

    /// How reservation `id` was judged, staged or in the store.
    pub fn outcome(&self, id: &str) -> Result<Option<Outcome>, StoreError> {
        self.store.outcome(id)
    }

    /// How reservation `id` was judged, staged or in the store, without
    /// decoding a cache record ([`Store::outcome_state`]).
    pub fn outcome_state(&self, id: &str) -> Result<Option<OutcomeState>, StoreError> {
        self.store.outcome_state(id)
    }

    /// The id that owns this user signature in the replay index, staged or
    /// in the store.
    pub fn signature_owner(&self, signature: &str) -> Result<Option<String>, StoreError> {
        self.store.signature_owner(signature)
    }

    /// Index `signature` -> `id` unless empty; `first` keeps an owner
    /// already there (a refusal, a deletion), else it is replaced (a
    /// provisioning).
    /// Stage a message for the explorer under a new seq.
    fn queue(&self, p: &mut Pending, item: &Outbound) -> Result<u64, StoreError> {
        let seq = self.store.db.generate_id()?;
        p.outbox.insert(seq, records::encode(item).into());
        Ok(seq)
    }

    fn stage_signature(&self, signature: &str, id: &str, first: bool) -> Result<(), StoreError> {
        if signature.is_empty() || (first && self.signature_owner(signature)?.is_some()) {
            return Ok(());
        }
        let mut p = self.store.overlay.write();
        let gen = p.gen;
        p.signatures
            .insert(signature.to_string(), (gen, id.to_string()));
        Ok(())
    }

    /// Stage a provisioned workload: its cache entry (which is its
    /// outcome too, at `cached_at`, as [`Store::outcome`] reads it once
    /// committed), expiry, counter, replay index entry and signed result.
    /// Returns the result's outbox seq.
    pub fn provisioned(&self, cached: &Cached, result: &WorkloadResult) -> Result<u64, StoreError> {
        let r = &cached.reservation;
        let outcome = Outcome {
            state: OutcomeState::Provisioned,
            at: cached.cached_at,
            error: String::new(),
        };
        let rec = IVec::from(records::encode(cached));
        let mut p = self.store.overlay.write();
        let seq = self.queue(&mut p, &Outbound::Result(result.clone()))?;
        p.ops.push(Op::Provisioned {
            id: r.id.clone(),
            kind: r.kind.clone(),
            signature: r.signature.clone(),
            expiry: expiry_key(cached.expires_at(), &r.id),
            cached: rec.clone(),
            outcome: outcome.clone(),
        });
        let gen = p.gen;
        p.cache.insert(r.id.clone(), (gen, Some(rec)));
        p.outcomes.insert(r.id.clone(), (gen, outcome));
        drop(p);
        self.stage_signature(&r.signature, &r.id, false)?;
        Ok(seq)
    }

    /// Stage a refusal with its signed error result; `verified_signature`
    /// enters the replay index unless empty or owned already (see
    /// [`Store::record_refused`]). Returns the result's outbox seq.
    pub fn refused(
        &self,
        result: &WorkloadResult,
        verified_signature: &str,
    ) -> Result<u64, StoreError> {
        let outcome = Outcome::new(OutcomeState::Refused, &result.error);
        let mut p = self.store.overlay.write();
        let seq = self.queue(&mut p, &Outbound::Result(result.clone()))?;
        p.ops.push(Op::Refused {
            id: result.id.clone(),
            signature: verified_signature.to_string(),
            outcome: records::encode(&outcome).into(),
        });
        let gen = p.gen;
        p.outcomes.insert(result.id.clone(), (gen, outcome));
        drop(p);
        self.stage_signature(verified_signature, &result.id, true)?;
        Ok(seq)
    }

    /// Stage a decommission (see [`Store::record_decommissioned`]). Returns
    /// the outbox seq of the deletion's confirmation (after `result`'s).
    pub fn decommissioned(
        &self,
        id: &str,
        kind: &str,
        signature: &str,
        confirmation: &str,
        result: Option<&WorkloadResult>,
    ) -> Result<u64, StoreError> {
        let error = result.map(|r| r.error.as_str()).unwrap_or("");
        let outcome = Outcome::new(OutcomeState::Deleted, error);
        let mut p = self.store.overlay.write();
        if let Some(r) = result {
            self.queue(&mut p, &Outbound::Result(r.clone()))?;
        }
        let seq = self.queue(
            &mut p,
            &Outbound::Deleted {
                id: id.to_string(),
                signature: confirmation.to_string(),
            },
        )?;
        p.ops.push(Op::Decommissioned {
            id: id.to_string(),
            kind: kind.to_string(),
            signature: signature.to_string(),
            outcome: records::encode(&outcome).into(),
        });
        let gen = p.gen;
        p.cache.insert(id.to_string(), (gen, None));
        p.outcomes.insert(id.to_string(), (gen, outcome));
        drop(p);
        self.stage_signature(signature, id, true)?;
        Ok(seq)
    }

    /// Stage a bare `PUT /deleted` for `id` (see [`Store::queue_deleted`]);
    /// its outbox seq.
    pub fn deleted_again(&self, id: &str, confirmation: &str) -> Result<u64, StoreError> {
        let mut p = self.store.overlay.write();
        self.queue(
            &mut p,
            &Outbound::Deleted {
                id: id.to_string(),
                signature: confirmation.to_string(),
            },
        )
    }

    /// Stage a move of `id`'s decommission time to `at`; `id` must be
    /// cached (staged or in the store).
    pub fn reschedule(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        if !self.is_cached(id)? {
            return Err(StoreError::NotCached(id.to_string()));
        }
        self.store.overlay.write().ops.push(Op::Reschedule {
            id: id.to_string(),
            expiry: expiry_key(at, id),
        });
        Ok(())
    }

    /// Stage the poll cursor; it never moves back.
    pub fn set_cursor(&self, cursor: u64) {
        self.store.overlay.write().ops.push(Op::Cursor(cursor));
    }

    /// Apply every record staged so far in one sled transaction (not
    /// flushed: the caller flushes) and drop them from the overlay. Returns
    /// the highest outbox seq written, if any. On an error nothing is
    /// applied and the records stay staged. Records may be staged
    /// meanwhile (from another thread): they stay staged for the next
    /// commit. Commits wait for one another.
    pub fn commit(&self) -> Result<Option<u64>, StoreError> {
        let s = &self.store;
        let _one = s
            .overlay
            .committing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Take what is staged now (this is the only commit running, so every
        // staged outbox message is uncommitted); readers and staging go on
        // meanwhile.
        let (gen, ops, queued) = {
            let mut p = s.overlay.write();
            if p.ops.is_empty() && p.outbox.is_empty() {
                return Ok(None);
            }
            let gen = p.gen;
            p.gen += 1;
            (gen, std::mem::take(&mut p.ops), p.outbox.clone())
        };
        let changed = ops
            .iter()
            .any(|op| matches!(op, Op::Provisioned { .. } | Op::Decommissioned { .. }));
        // A panic in sled (none is known) must not lose the records taken:
        // they are staged again, as after an error, and the panic goes on.
        let applied =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.apply(&ops, &queued)));
        let mut p = s.overlay.write();
        let applied = match applied {
            Ok(applied) => applied,
            Err(panic) => {
                let later = std::mem::replace(&mut p.ops, ops);
                p.ops.extend(later);
                drop(p);
                std::panic::resume_unwind(panic);
            }
        };
        if let Err(e) = applied {
            // Staged again, before what was staged meanwhile.
            let later = std::mem::replace(&mut p.ops, ops);
            p.ops.extend(later);
            return Err(e);
        }
        let last = queued.keys().next_back().copied();
        s.known.applied(&p.cache, gen);
        p.cache.retain(|_, (g, _)| *g > gen);
        p.outcomes.retain(|_, (g, _)| *g > gen);
        p.signatures.retain(|_, (g, _)| *g > gen);
        if let Some(last) = last {
            p.outbox = p.outbox.split_off(&last.saturating_add(1));
        }
        drop(p);
        if changed {
            s.cache_changed();
        }
        Ok(last)
    }

    /// One sled transaction of `ops` and the outbox messages `queued`.
    fn apply(&self, ops: &[Op], queued: &BTreeMap<u64, IVec>) -> Result<(), StoreError> {
        let s = &self.store;
        // Expiry keys of cache records that cannot be decoded, found by a
        // scan of the index: sled's reads outside the transaction wait for
        // it to end, so a transaction that meets such a record stops, the
        // scan runs, and the transaction runs again (this commit is the
        // only writer: the trees have not moved meanwhile).
        let mut scanned: HashMap<String, Option<Vec<u8>>> = HashMap::new();
        loop {
            let unscanned = RefCell::new(None);
            let done = (
                &s.cache,
                &s.outcomes,
                &s.expiry,
                &s.expiry_by_id,
                &s.outbox,
                &s.meta,
                &s.signatures,
            )
                .transaction(|(cache, outcomes, expiry, by_id, outbox, meta, sigs)| {
                    for (seq, item) in queued {
                        outbox.insert(&seq.to_be_bytes(), item.clone())?;
                    }
                    let trees = Trees {
                        cache,
                        outcomes,
                        expiry,
                        by_id,
                        meta,
                        sigs,
                        scanned: &scanned,
                        unscanned: &unscanned,
                        counts: RefCell::default(),
                    };
                    for op in ops {
                        trees.apply(op)?;
                    }
                    trees.write_counts()
                });
            match (done, unscanned.into_inner()) {
                (Err(TransactionError::Abort(_)), Some(id)) if !scanned.contains_key(&id) => {
                    let key = s
                        .expiry
                        .iter()
                        .keys()
                        .find(|k| {
                            k.as_ref()
                                .map_or(true, |k| k.get(8..) == Some(id.as_bytes()))
                        })
                        .transpose()?
                        .map(|k| k.to_vec());
                    scanned.insert(id, key);
                }
                (done, _) => return Ok(done?),
            }
        }
    }
}

/// The trees of one commit's transaction.
struct Trees<'a> {
    cache: &'a TransactionalTree,
    outcomes: &'a TransactionalTree,
    expiry: &'a TransactionalTree,
    by_id: &'a TransactionalTree,
    meta: &'a TransactionalTree,
    sigs: &'a TransactionalTree,
    /// id -> its expiry key found by a scan, for cache records that cannot
    /// be decoded ([`Unit::apply`]).
    scanned: &'a HashMap<String, Option<Vec<u8>>>,
    /// The id of such a record not scanned yet: the transaction stops.
    unscanned: &'a RefCell<Option<String>>,
    /// Per-type counters as this transaction moves them, written once at
    /// its end ([`Trees::write_counts`]) rather than once per record.
    counts: RefCell<HashMap<String, u64>>,
}

impl Trees<'_> {
    /// Move the cached-workload counter of `kind` by `delta` (never below
    /// zero, step by step, as when each record wrote it).
    fn count(&self, kind: &str, delta: i64) -> TxResult<()> {
        let mut counts = self.counts.borrow_mut();
        let cur = match counts.get(kind) {
            Some(n) => *n,
            None => self
                .meta
                .get(counter_key(kind))?
                .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0),
        };
        counts.insert(kind.to_string(), (cur as i64 + delta).max(0) as u64);
        Ok(())
    }

    fn write_counts(&self) -> TxResult<()> {
        for (kind, n) in self.counts.borrow().iter() {
            self.meta.insert(counter_key(kind), &n.to_be_bytes())?;
        }
        Ok(())
    }

    /// Take `id`'s expiry index key, whose entry the caller removes or
    /// moves: its `expiry_by_id` record (removed here) when it has one (a
    /// rescheduled decommission, or any record written before stop 23),
    /// else the expiry of its cache record `cached`, the time it was
    /// indexed under. `None` when it is not cached.
    fn unschedule(&self, id: &str, cached: Option<&IVec>) -> TxResult<Option<Vec<u8>>> {
        if let Some(k) = self.by_id.get(id.as_bytes())? {
            self.by_id.remove(id.as_bytes())?;
            return Ok(Some(k.to_vec()));
        }
        let Some(cached) = cached else {
            return Ok(None);
        };
        match records::decode::<Cached>(id, cached) {
            Ok(c) => Ok(Some(expiry_key(c.expires_at(), id))),
            // Not decodable (never written so): its entry is found by a
            // scan of the index, so it is not left behind for an id no
            // longer cached, and the unit is not failed for one record.
            Err(e) => match self.scanned.get(id) {
                Some(key) => Ok(key.clone()),
                None => {
                    tracing::warn!(reservation = %id, error = %e, "cache record unreadable; its expiry entry is looked up by a scan");
                    *self.unscanned.borrow_mut() = Some(id.to_string());
                    Err(ConflictableTransactionError::Abort(e))
                }
            },
        }
    }

    fn index_signature(&self, signature: &str, id: &str, first: bool) -> TxResult<()> {
        if !signature.is_empty() && (!first || self.sigs.get(signature.as_bytes())?.is_none()) {
            self.sigs.insert(signature.as_bytes(), id.as_bytes())?;
        }
        Ok(())
    }

    /// Apply one record (its outbox messages are inserted apart).
    fn apply(&self, op: &Op) -> TxResult<()> {
        match op {
            Op::Provisioned {
                id,
                kind,
                signature,
                expiry,
                cached,
                outcome,
            } => {
                self.index_signature(signature, id, false)?;
                match self.cache.insert(id.as_bytes(), cached.clone())? {
                    // New to the cache: no expiry entry to move, and no
                    // `expiry_by_id` record to write (the record's own
                    // expiry is its time).
                    None => self.count(kind, 1)?,
                    // Cached already (a repair): move its one entry (the
                    // new one is the new record's own expiry).
                    Some(old) => {
                        if let Some(old) = self.unschedule(id, Some(&old))? {
                            self.expiry.remove(old)?;
                        }
                    }
                }
                // Its outcome is implied by the cache record
                // ([`Store::outcome`]), so none is written: one tree insert
                // less per provisioned reservation. An outcome recorded
                // before (an old store's, or a judged id's, which is never
                // provisioned again) is overwritten, so the two never
                // contradict each other.
                if self.outcomes.get(id.as_bytes())?.is_some() {
                    self.outcomes
                        .insert(id.as_bytes(), records::encode(outcome))?;
                }
                self.expiry.insert(expiry.as_slice(), &[])?;
            }
            Op::Refused {
                id,
                signature,
                outcome,
            } => {
                self.outcomes.insert(id.as_bytes(), outcome.clone())?;
                self.index_signature(signature, id, true)?;
            }
            Op::Decommissioned {
                id,
                kind,
                signature,
                outcome,
            } => {
                self.index_signature(signature, id, true)?;
                let old = self.cache.remove(id.as_bytes())?;
                if old.is_some() {
                    self.count(kind, -1)?;
                }
                if let Some(k) = self.unschedule(id, old.as_ref())? {
                    self.expiry.remove(k)?;
                }
                self.outcomes.insert(id.as_bytes(), outcome.clone())?;
            }
            Op::Reschedule { id, expiry } => {
                // Checked cached when staged; nothing else writes the
                // store, so it is cached and indexed. Were it not, the
                // move is dropped rather than the whole unit. The new time
                // is not the record's own: `expiry_by_id` keeps it.
                let cached = self.cache.get(id.as_bytes())?;
                if let Some(old) = self.unschedule(id, cached.as_ref())? {
                    self.expiry.remove(old)?;
                    self.expiry.insert(expiry.as_slice(), &[])?;
                    self.by_id.insert(id.as_bytes(), expiry.as_slice())?;
                }
            }
            Op::Cursor(cursor) => {
                let cur = self
                    .meta
                    .get(CURSOR)?
                    .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
                    .unwrap_or(0);
                if *cursor > cur {
                    self.meta.insert(CURSOR, &cursor.to_be_bytes())?;
                }
            }
        }
        Ok(())
    }
}
