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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};
use reservation::WorkloadResult;
use sled::transaction::TransactionalTree;
use sled::{IVec, Transactional};

use crate::records::{self, Cached, Outbound, Outcome, OutcomeState};
use crate::{bump, expiry_key, Store, StoreError, TxResult, CURSOR};

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
        outcome: IVec,
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

    /// Stage a provisioned workload: its cache entry, outcome, expiry,
    /// counter, replay index entry and signed result. Returns the result's
    /// outbox seq.
    pub fn provisioned(&self, cached: &Cached, result: &WorkloadResult) -> Result<u64, StoreError> {
        let r = &cached.reservation;
        let outcome = Outcome::new(OutcomeState::Provisioned, "");
        let rec = IVec::from(records::encode(cached));
        let mut p = self.store.overlay.write();
        let seq = self.queue(&mut p, &Outbound::Result(result.clone()))?;
        p.ops.push(Op::Provisioned {
            id: r.id.clone(),
            kind: r.kind.clone(),
            signature: r.signature.clone(),
            expiry: expiry_key(cached.expires_at(), &r.id),
            cached: rec.clone(),
            outcome: records::encode(&outcome).into(),
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
        (
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
                };
                for op in ops {
                    trees.apply(op)?;
                }
                Ok(())
            })?;
        Ok(())
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
}

impl Trees<'_> {
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
                let fresh = self.cache.insert(id.as_bytes(), cached.clone())?.is_none();
                self.outcomes.insert(id.as_bytes(), outcome.clone())?;
                // An expiry index entry exists only beside a cache record
                // (they are written and removed in the same transactions),
                // so a fresh record has none to move: one tree lookup less
                // per provisioned reservation, the common case.
                let old = match fresh {
                    true => None,
                    false => self.by_id.get(id.as_bytes())?,
                };
                if let Some(old) = old {
                    self.expiry.remove(old)?;
                }
                self.expiry.insert(expiry.as_slice(), &[])?;
                self.by_id.insert(id.as_bytes(), expiry.as_slice())?;
                if fresh {
                    bump(self.meta, kind, 1)?;
                }
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
                if self.cache.remove(id.as_bytes())?.is_some() {
                    bump(self.meta, kind, -1)?;
                }
                if let Some(k) = self.by_id.remove(id.as_bytes())? {
                    self.expiry.remove(k)?;
                }
                self.outcomes.insert(id.as_bytes(), outcome.clone())?;
            }
            Op::Reschedule { id, expiry } => {
                // Checked cached when staged; nothing else writes the
                // store, so the index entry is there. Were it not, the
                // move is dropped rather than the whole unit.
                if let Some(old) = self.by_id.get(id.as_bytes())? {
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
