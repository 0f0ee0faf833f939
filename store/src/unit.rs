//! A unit of work's records, staged in memory and applied to the store in
//! one sled transaction by [`Unit::commit`].
//!
//! Each sled transaction seals and writes an IO buffer of its own, so one
//! transaction per record cost a poll answer of 10,000 reservations about
//! 300 µs each (bench/notes.md); one per unit costs about 75 µs each.
//!
//! Invariants:
//! - A record is all-or-nothing, and so is a whole unit: the records of one
//!   unit are applied by one transaction, in the order they were staged, so
//!   a crash before [`Unit::commit`] (or before the flush after it) loses
//!   the whole unit, never part of it or part of a record.
//! - Reads through the unit ([`Unit::get`], [`Unit::is_cached`],
//!   [`Unit::outcome`], [`Unit::signature_owner`]) see its staged records
//!   before the trees: a replay or a deletion judged in the same unit is
//!   judged as if each record had been written on its own.
//! - Outbox sequence numbers are drawn inside the commit's transaction from
//!   sled's one id generator, in staging order: unique and increasing.
//! - A commit that fails keeps the staged records (the overlay goes on
//!   answering reads as before), and the next commit tries them again.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use reservation::WorkloadResult;
use sled::transaction::TransactionalTree;
use sled::{IVec, Transactional};

use crate::records::{self, Cached, Outbound, Outcome, OutcomeState};
use crate::{bump, expiry_key, Store, StoreError, TxResult, CURSOR};

/// One staged record (already encoded), applied at commit as its own
/// transaction would have applied it.
enum Op {
    Provisioned {
        id: String,
        kind: String,
        signature: String,
        expiry: Vec<u8>,
        cached: IVec,
        outcome: IVec,
        result: IVec,
    },
    Refused {
        id: String,
        signature: String,
        outcome: IVec,
        result: IVec,
    },
    Decommissioned {
        id: String,
        kind: String,
        signature: String,
        outcome: IVec,
        result: Option<IVec>,
        deleted: IVec,
    },
    Deleted(IVec),
    Reschedule {
        id: String,
        expiry: Vec<u8>,
    },
    Cursor(u64),
}

/// The records of one unit of work, not yet in the store, and the overlay
/// through which reads see them.
pub struct Unit {
    store: Store,
    ops: Vec<Op>,
    /// id -> its staged cache record (`None`: removed in this unit).
    cache: HashMap<String, Option<IVec>>,
    /// id -> its staged outcome.
    outcomes: HashMap<String, Outcome>,
    /// user signature -> id, staged into the replay index.
    signatures: HashMap<String, String>,
}

impl Unit {
    /// An empty unit over `store`.
    pub fn new(store: Store) -> Self {
        Unit {
            store,
            ops: Vec::new(),
            cache: HashMap::new(),
            outcomes: HashMap::new(),
            signatures: HashMap::new(),
        }
    }

    /// The store the unit commits to (its reads skip the staged records).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records staged and not committed yet.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The cached workload `id`, staged or in the store.
    pub fn get(&self, id: &str) -> Result<Option<Cached>, StoreError> {
        match self.cache.get(id) {
            Some(Some(v)) => records::decode(id, v).map(Some),
            Some(None) => Ok(None),
            None => self.store.get(id),
        }
    }

    pub fn is_cached(&self, id: &str) -> Result<bool, StoreError> {
        match self.cache.get(id) {
            Some(v) => Ok(v.is_some()),
            None => self.store.is_cached(id),
        }
    }

    /// How reservation `id` was judged, staged or in the store.
    pub fn outcome(&self, id: &str) -> Result<Option<Outcome>, StoreError> {
        match self.outcomes.get(id) {
            Some(o) => Ok(Some(o.clone())),
            None => self.store.outcome(id),
        }
    }

    /// The id that owns this user signature in the replay index, staged or
    /// in the store.
    pub fn signature_owner(&self, signature: &str) -> Result<Option<String>, StoreError> {
        match self.signatures.get(signature) {
            Some(id) => Ok(Some(id.clone())),
            None => self.store.signature_owner(signature),
        }
    }

    /// Index `signature` -> `id` unless empty; `first` keeps an owner
    /// already there (a refusal, a deletion), else it is replaced (a
    /// provisioning).
    fn stage_signature(
        &mut self,
        signature: &str,
        id: &str,
        first: bool,
    ) -> Result<(), StoreError> {
        if signature.is_empty() || (first && self.signature_owner(signature)?.is_some()) {
            return Ok(());
        }
        self.signatures
            .insert(signature.to_string(), id.to_string());
        Ok(())
    }

    /// Stage a provisioned workload: its cache entry, outcome, expiry,
    /// counter, replay index entry and signed result.
    pub fn provisioned(
        &mut self,
        cached: &Cached,
        result: &WorkloadResult,
    ) -> Result<(), StoreError> {
        let r = &cached.reservation;
        let outcome = Outcome::new(OutcomeState::Provisioned, "");
        let rec = IVec::from(records::encode(cached));
        self.ops.push(Op::Provisioned {
            id: r.id.clone(),
            kind: r.kind.clone(),
            signature: r.signature.clone(),
            expiry: expiry_key(cached.expires_at(), &r.id),
            cached: rec.clone(),
            outcome: records::encode(&outcome).into(),
            result: records::encode(&Outbound::Result(result.clone())).into(),
        });
        self.cache.insert(r.id.clone(), Some(rec));
        self.outcomes.insert(r.id.clone(), outcome);
        self.stage_signature(&r.signature, &r.id, false)
    }

    /// Stage a refusal with its signed error result; `verified_signature`
    /// enters the replay index unless empty or owned already (see
    /// [`Store::record_refused`]).
    pub fn refused(
        &mut self,
        result: &WorkloadResult,
        verified_signature: &str,
    ) -> Result<(), StoreError> {
        let outcome = Outcome::new(OutcomeState::Refused, &result.error);
        self.ops.push(Op::Refused {
            id: result.id.clone(),
            signature: verified_signature.to_string(),
            outcome: records::encode(&outcome).into(),
            result: records::encode(&Outbound::Result(result.clone())).into(),
        });
        self.outcomes.insert(result.id.clone(), outcome);
        self.stage_signature(verified_signature, &result.id, true)
    }

    /// Stage a decommission (see [`Store::record_decommissioned`]).
    pub fn decommissioned(
        &mut self,
        id: &str,
        kind: &str,
        signature: &str,
        confirmation: &str,
        result: Option<&WorkloadResult>,
    ) -> Result<(), StoreError> {
        let error = result.map(|r| r.error.as_str()).unwrap_or("");
        let outcome = Outcome::new(OutcomeState::Deleted, error);
        self.ops.push(Op::Decommissioned {
            id: id.to_string(),
            kind: kind.to_string(),
            signature: signature.to_string(),
            outcome: records::encode(&outcome).into(),
            result: result.map(|r| records::encode(&Outbound::Result(r.clone())).into()),
            deleted: records::encode(&Outbound::Deleted {
                id: id.to_string(),
                signature: confirmation.to_string(),
            })
            .into(),
        });
        self.cache.insert(id.to_string(), None);
        self.outcomes.insert(id.to_string(), outcome);
        self.stage_signature(signature, id, true)
    }

    /// Stage a bare `PUT /deleted` for `id` (see [`Store::queue_deleted`]).
    pub fn deleted_again(&mut self, id: &str, confirmation: &str) {
        self.ops.push(Op::Deleted(
            records::encode(&Outbound::Deleted {
                id: id.to_string(),
                signature: confirmation.to_string(),
            })
            .into(),
        ));
    }

    /// Stage a move of `id`'s decommission time to `at`; `id` must be
    /// cached (staged or in the store).
    pub fn reschedule(&mut self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        if !self.is_cached(id)? {
            return Err(StoreError::NotCached(id.to_string()));
        }
        self.ops.push(Op::Reschedule {
            id: id.to_string(),
            expiry: expiry_key(at, id),
        });
        Ok(())
    }

    /// Stage the poll cursor; it never moves back.
    pub fn set_cursor(&mut self, cursor: u64) {
        self.ops.push(Op::Cursor(cursor));
    }

    /// Apply every staged record in one sled transaction (not flushed:
    /// the caller flushes) and empty the unit. Returns the highest outbox
    /// seq written, if any. On an error nothing is applied and the records
    /// stay staged.
    pub fn commit(&mut self) -> Result<Option<u64>, StoreError> {
        if self.ops.is_empty() {
            return Ok(None);
        }
        let s = &self.store;
        let ops = &self.ops;
        let last = (
            &s.cache,
            &s.outcomes,
            &s.expiry,
            &s.expiry_by_id,
            &s.outbox,
            &s.meta,
            &s.signatures,
        )
            .transaction(|(cache, outcomes, expiry, by_id, outbox, meta, sigs)| {
                let trees = Trees {
                    cache,
                    outcomes,
                    expiry,
                    by_id,
                    outbox,
                    meta,
                    sigs,
                };
                let mut last = None;
                for op in ops {
                    if let Some(seq) = trees.apply(op)? {
                        last = Some(seq);
                    }
                }
                Ok(last)
            })?;
        self.ops.clear();
        if !self.cache.is_empty() {
            self.store.cache_changed();
        }
        self.cache.clear();
        self.outcomes.clear();
        self.signatures.clear();
        Ok(last)
    }
}

/// The trees of one commit's transaction.
struct Trees<'a> {
    cache: &'a TransactionalTree,
    outcomes: &'a TransactionalTree,
    expiry: &'a TransactionalTree,
    by_id: &'a TransactionalTree,
    outbox: &'a TransactionalTree,
    meta: &'a TransactionalTree,
    sigs: &'a TransactionalTree,
}

impl Trees<'_> {
    fn queue(&self, item: &IVec) -> TxResult<u64> {
        let seq = self.outbox.generate_id()?;
        self.outbox.insert(&seq.to_be_bytes(), item.clone())?;
        Ok(seq)
    }

    fn index_signature(&self, signature: &str, id: &str, first: bool) -> TxResult<()> {
        if !signature.is_empty() && (!first || self.sigs.get(signature.as_bytes())?.is_none()) {
            self.sigs.insert(signature.as_bytes(), id.as_bytes())?;
        }
        Ok(())
    }

    /// Apply one record; the outbox seq it wrote last, if any.
    fn apply(&self, op: &Op) -> TxResult<Option<u64>> {
        match op {
            Op::Provisioned {
                id,
                kind,
                signature,
                expiry,
                cached,
                outcome,
                result,
            } => {
                let seq = self.queue(result)?;
                self.index_signature(signature, id, false)?;
                let fresh = self.cache.insert(id.as_bytes(), cached.clone())?.is_none();
                self.outcomes.insert(id.as_bytes(), outcome.clone())?;
                if let Some(old) = self.by_id.get(id.as_bytes())? {
                    self.expiry.remove(old)?;
                }
                self.expiry.insert(expiry.as_slice(), &[])?;
                self.by_id.insert(id.as_bytes(), expiry.as_slice())?;
                if fresh {
                    bump(self.meta, kind, 1)?;
                }
                Ok(Some(seq))
            }
            Op::Refused {
                id,
                signature,
                outcome,
                result,
            } => {
                let seq = self.queue(result)?;
                self.outcomes.insert(id.as_bytes(), outcome.clone())?;
                self.index_signature(signature, id, true)?;
                Ok(Some(seq))
            }
            Op::Decommissioned {
                id,
                kind,
                signature,
                outcome,
                result,
                deleted,
            } => {
                self.index_signature(signature, id, true)?;
                if self.cache.remove(id.as_bytes())?.is_some() {
                    bump(self.meta, kind, -1)?;
                }
                if let Some(k) = self.by_id.remove(id.as_bytes())? {
                    self.expiry.remove(k)?;
                }
                self.outcomes.insert(id.as_bytes(), outcome.clone())?;
                if let Some(r) = result {
                    self.queue(r)?;
                }
                Ok(Some(self.queue(deleted)?))
            }
            Op::Deleted(item) => Ok(Some(self.queue(item)?)),
            Op::Reschedule { id, expiry } => {
                // Checked cached when staged; nothing else writes the
                // store, so the index entry is there. Were it not, the
                // move is dropped rather than the whole unit.
                if let Some(old) = self.by_id.get(id.as_bytes())? {
                    self.expiry.remove(old)?;
                    self.expiry.insert(expiry.as_slice(), &[])?;
                    self.by_id.insert(id.as_bytes(), expiry.as_slice())?;
                }
                Ok(None)
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
                Ok(None)
            }
        }
    }
}
