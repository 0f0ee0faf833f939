//! The node's cache on sled: what the node provisioned, the outcome of every
//! reservation it judged, the poll cursor, and the outbox of signed results.
//!
//! - [`Store`]: one sled database under the agent's root, opened once.
//! - [`records`]: the versioned records it holds ([`Cached`], [`Outcome`],
//!   [`Outbound`]).
//! - [`Unit`]: the records of one unit of work, staged, then committed in
//!   one transaction.
//!
//! Invariants:
//! - The store never talks to Docker or the network; it only remembers.
//! - Every multi-tree change (a result into the outbox *and* the workload
//!   into the cache) is one sled transaction: both or neither survive a crash.
//!   A [`Unit`] stages a unit of work's records in memory (its reads see
//!   them) and applies them all in one transaction: one IO buffer per unit,
//!   not per record. The `record_*` methods are a unit of one record.
//! - Writes are not flushed one by one: the engine calls [`Store::flush`]
//!   before any step that depends on them (delivering a result, reporting a
//!   deletion), which groups many reservations into one fsync.
//! - Unlike Zero-OS's cache, nothing here is wiped at boot.
//! - Expired reservations come from an index ordered by expiry time, never
//!   from a scan of the cache.
//! - Once [`Store::list_remembering`] has read the whole cache, the ids of
//!   the cached workloads are also kept in memory, updated by every commit
//!   under the overlay's lock: [`Store::is_cached`] answers from them.

mod known;
pub mod records;
mod unit;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use reservation::{WorkloadResult, WorkloadType};
use sled::transaction::{ConflictableTransactionError, TransactionError};

pub use records::{Cached, Outbound, OutboxEntry, Outcome, OutcomeState, SCHEMA};
pub use unit::Unit;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cache at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("cache i/o: {0}")]
    Io(#[from] sled::Error),
    #[error("cache record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("cache record {key}: schema {found} is newer than this agent reads ({SCHEMA}); upgrade the agent")]
    Schema { key: String, found: u32 },
    #[error("reservation {0} is not cached")]
    NotCached(String),
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(e: TransactionError<StoreError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Io(e),
        }
    }
}

pub(crate) type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

/// The node's cache. Cheap to clone (sled trees are handles).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// Where it lives (the agent checks the free space under it).
    dir: std::path::PathBuf,
    /// id -> [`Cached`]: workloads the node runs now.
    cache: sled::Tree,
    /// id -> [`Outcome`]: every reservation judged, so none is judged
    /// twice; a provisioned one written since stop 23 has none (its cache
    /// record implies it), only a refused or deleted one.
    outcomes: sled::Tree,
    /// expiry key (millis BE ‖ id) -> (): decommission order.
    expiry: sled::Tree,
    /// id -> its expiry key, when that is not the cache record's own expiry
    /// (a rescheduled decommission; before stop 23 written for every cached
    /// record): to move or drop the index entry.
    expiry_by_id: sled::Tree,
    /// seq BE -> [`Outbound`]: what the explorer has not acknowledged.
    outbox: sled::Tree,
    /// cursor and per-type counters.
    meta: sled::Tree,
    /// user signature -> reservation id, of every reservation judged
    /// (provisioned or refused) whose signature verified: ids are the
    /// explorer's, so only this catches a signed reservation replayed under
    /// a new id, also one refused earlier (its user was told it failed).
    signatures: sled::Tree,
    /// Bumped by every write that changes the cache tree (in this
    /// process): a reader that keeps a view of what is cached looks again
    /// only when it moved ([`Store::cache_generation`]).
    generation: Arc<AtomicU64>,
    /// Records staged by a [`Unit`], seen by every read before the trees.
    overlay: Arc<unit::Overlay>,
    /// The cache tree's ids, once [`Store::list_remembering`] read them all:
    /// [`Store::is_cached`] answers from them after the overlay.
    known: Arc<known::KnownIds>,
}

pub(crate) const CURSOR: &[u8] = b"cursor";

pub(crate) fn counter_key(kind: &str) -> Vec<u8> {
    format!("count/{kind}").into_bytes()
}

pub(crate) fn expiry_key(at: DateTime<Utc>, id: &str) -> Vec<u8> {
    let ms = at.timestamp_millis().max(0) as u64;
    let mut k = ms.to_be_bytes().to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

fn expiry_of(key: &[u8]) -> Option<(DateTime<Utc>, String)> {
    let ms = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let at = DateTime::from_timestamp_millis(ms as i64)?;
    Some((at, String::from_utf8_lossy(&key[8..]).into_owned()))
}

/// How long [`Store::open`] waits for sled's file lock.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Store {
    /// Open (or create) the cache in `dir`.
    ///
    /// sled's file lock is let go only when its background flusher of a
    /// dropped handle stops, a moment after the drop; a reopen in the same
    /// process (a restart in tests, an embedded explorer) may meet it. So a
    /// lock held elsewhere is waited for up to [`LOCK_WAIT`] before the
    /// error (another agent on the same root) is returned.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            let opened = sled::Config::new()
                .path(dir)
                .cache_capacity(8 * 1024 * 1024)
                .mode(sled::Mode::LowSpace)
                .open();
            match opened {
                // sled wraps the lock's `WouldBlock` in an `Other` error
                // whose text says so.
                Err(sled::Error::Io(e))
                    if (e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("could not acquire lock"))
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => {
                    break other.map_err(|source| StoreError::Open {
                        path: dir.display().to_string(),
                        source,
                    })?
                }
            }
        };
        Ok(Store {
            cache: db.open_tree("cache")?,
            outcomes: db.open_tree("outcomes")?,
            expiry: db.open_tree("expiry")?,
            expiry_by_id: db.open_tree("expiry_by_id")?,
            outbox: db.open_tree("outbox")?,
            meta: db.open_tree("meta")?,
            signatures: db.open_tree("signatures")?,
            generation: Arc::default(),
            overlay: Arc::default(),
            known: Arc::default(),
            dir: dir.to_path_buf(),
            db,
        })
    }

    /// The directory the cache lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Make every write so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// The cached workload `id`, if the node runs it.
    /// Staged records ([`Unit`]) are seen before the trees.
    pub fn get(&self, id: &str) -> Result<Option<Cached>, StoreError> {
        let v = match self.overlay.cached(id) {
            Some(staged) => staged,
            None => self.cache.get(id)?,
        };
        v.map(|v| records::decode(id, &v)).transpose()
    }

    /// Whether `id` is cached, without decoding its record: staged
    /// records first, then the ids remembered by
    /// [`Store::list_remembering`] (no read of the cache tree), else the
    /// tree.
    pub fn is_cached(&self, id: &str) -> Result<bool, StoreError> {
        if let Some(staged) = self.overlay.is_cached(id) {
            return Ok(staged);
        }
        match self.known.is_cached(id) {
            Some(known) => Ok(known),
            None => Ok(self.cache.contains_key(id)?),
        }
    }

    /// The id under which a reservation with this user signature was first
    /// judged, if any.
    pub fn signature_owner(&self, signature: &str) -> Result<Option<String>, StoreError> {
        if let Some(id) = self.overlay.signature_owner(signature) {
            return Ok(Some(id));
        }
        Ok(self
            .signatures
            .get(signature.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// How reservation `id` was judged, if it was. A provisioned record
    /// written since stop 23 has no outcome record of its own: its cache
    /// record says it was provisioned (and when). Records written before
    /// have both, and read the same.
    pub fn outcome(&self, id: &str) -> Result<Option<Outcome>, StoreError> {
        if let Some(o) = self.overlay.outcome(id) {
            return Ok(Some(o));
        }
        if let Some(v) = self.outcomes.get(id)? {
            return records::decode(id, &v).map(Some);
        }
        Ok(self.get(id)?.map(|c| Outcome {
            state: OutcomeState::Provisioned,
            at: c.cached_at,
            error: String::new(),
        }))
    }

    /// How reservation `id` was judged, if it was: [`Store::outcome`]'s
    /// state, without decoding a cache record.
    pub fn outcome_state(&self, id: &str) -> Result<Option<OutcomeState>, StoreError> {
        if let Some(o) = self.overlay.outcome(id) {
            return Ok(Some(o.state));
        }
        if let Some(v) = self.outcomes.get(id)? {
            return records::decode::<Outcome>(id, &v).map(|o| Some(o.state));
        }
        Ok(self.is_cached(id)?.then_some(OutcomeState::Provisioned))
    }

    /// Stage one record and commit it (one transaction); what staging
    /// returned. (Records staged already are committed with it: there is
    /// one writer.)
    fn record_one<T>(
        &self,
        stage: impl FnOnce(&Unit) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let unit = Unit::new(self.clone());
        let t = stage(&unit)?;
        unit.commit()?;
        Ok(t)
    }

    /// Record a provisioned workload: its signed result into the outbox and
    /// the workload into the cache, with its expiry and counter, atomically.
    /// One [`Unit`] of one record: a unit of work stages many in one.
    pub fn record_provisioned(
        &self,
        cached: &Cached,
        result: &WorkloadResult,
    ) -> Result<u64, StoreError> {
        self.record_one(|u| u.provisioned(cached, result))
    }

    /// Record a refusal (or any outcome that caches nothing) with its signed
    /// error result into the outbox, atomically. `verified_signature` is
    /// the reservation's user signature when it verified (empty otherwise):
    /// it enters the replay index, so the same signed reservation cannot be
    /// provisioned later under another id after its user was told it
    /// failed. An unverified signature is not indexed: anyone can copy a
    /// signature onto garbage, and that must not block the real one.
    pub fn record_refused(
        &self,
        result: &WorkloadResult,
        verified_signature: &str,
    ) -> Result<u64, StoreError> {
        self.record_one(|u| u.refused(result, verified_signature))
    }

    /// Record that `id` is decommissioned: it leaves the cache and the
    /// expiry index, is marked deleted, and `PUT /deleted` enters the outbox.
    /// `confirmation` is the node's signature of the deletion
    /// (`deleted-v2`); `result` is an error result to post too, if any (the
    /// node gave up on it: crash policy).
    ///
    /// `signature` is the reservation's user signature (verified by the
    /// caller): it enters the replay index if it is not there yet, so a
    /// reservation deleted before the node ever ran it cannot be handed
    /// over again under a new id and provisioned.
    pub fn record_decommissioned(
        &self,
        id: &str,
        kind: &str,
        signature: &str,
        confirmation: &str,
        result: Option<&WorkloadResult>,
    ) -> Result<u64, StoreError> {
        self.record_one(|u| u.decommissioned(id, kind, signature, confirmation, result))
    }

    /// Queue a bare `PUT /deleted` for `id` (the explorer asks again about
    /// a deletion the node already carried out), with the node's signed
    /// `confirmation`.
    pub fn queue_deleted(&self, id: &str, confirmation: &str) -> Result<u64, StoreError> {
        self.record_one(|u| u.deleted_again(id, confirmation))
    }

    /// Move `id`'s decommission time to `at` (a decommission that must wait
    /// for a volume still in use is tried again then).
    pub fn reschedule(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.record_one(|u| u.reschedule(id, at))
    }

    /// When `id`'s decommission is scheduled (to the millisecond): its
    /// expiry, or earlier when a decommission before expiry (a deletion,
    /// a give-up) must wait and is retried. `None` when it is not cached.
    pub fn scheduled(&self, id: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        if let Some(at) = self.rescheduled(id)? {
            return Ok(Some(at));
        }
        Ok(self
            .cache
            .get(id)?
            .map(|v| records::decode::<Cached>(id, &v))
            .transpose()?
            .map(|c| c.expires_at())
            .and_then(|at| expiry_of(&expiry_key(at, id)))
            .map(|(at, _)| at))
    }

    /// The decommission time of `id` when it may not be its record's own,
    /// without decoding the record: an `expiry_by_id` record is written
    /// only when a decommission is rescheduled (and was, before stop 23,
    /// for every cached record). `None`: [`Store::scheduled`] is the cache
    /// record's expiry (or it is not cached).
    pub fn rescheduled(&self, id: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self
            .expiry_by_id
            .get(id.as_bytes())?
            .and_then(|k| expiry_of(&k))
            .map(|(at, _)| at))
    }

    /// Every cached workload, in id order.
    pub fn list(&self) -> impl Iterator<Item = Result<Cached, StoreError>> + '_ {
        self.cache.iter().map(|kv| {
            let (k, v) = kv?;
            records::decode(&String::from_utf8_lossy(&k), &v)
        })
    }

    /// Every cached workload, in id order, as [`Store::list`]; a pass read
    /// to its end also remembers every cached id in memory (about 30 bytes
    /// each), and [`Store::is_cached`] answers from them from then on,
    /// kept up to date by every commit. For the agent's one pass over the
    /// cache at start: the `from=0` resync then asks about every cached id
    /// without sled decoding (and keeping) the tree nodes of their records.
    ///
    /// Not remembered when the pass met an I/O error or a key that is not
    /// UTF-8, or when a commit changed the cache during the pass.
    pub fn list_remembering(&self) -> impl Iterator<Item = Result<Cached, StoreError>> + '_ {
        let changes = self.known.changes();
        let mut ids = Some(known::Ids::with_capacity(self.cached_len()));
        let mut iter = self.cache.iter();
        std::iter::from_fn(move || match iter.next() {
            Some(Ok((k, v))) => {
                if let Some(list) = ids.as_mut() {
                    match std::str::from_utf8(&k) {
                        Ok(exact) => list.insert(exact),
                        Err(_) => ids = None,
                    }
                }
                Some(records::decode(&String::from_utf8_lossy(&k), &v))
            }
            Some(Err(e)) => {
                ids = None;
                Some(Err(e.into()))
            }
            None => {
                if let Some(ids) = ids.take() {
                    self.known.remember(ids, changes);
                }
                None
            }
        })
    }

    /// Close the database and open it again, the same store to its users
    /// (staged records, remembered ids and the cache generation are kept),
    /// when this is its only handle; else `self` as it is.
    ///
    /// Why: sled keeps every tree node it decoded (its LRU evicts only
    /// after 64 accesses to one of its 256 shards), so start-up's pass over
    /// 10,000 cached records left ~7–10 MB of decoded nodes for the life of
    /// the agent; a fresh open holds none, and with the ids remembered
    /// ([`Store::list_remembering`]) the resync does not read them again.
    /// About 10 ms with 10,000 cached (bench/notes.md, section 5d).
    pub fn reopen(self) -> Result<Store, StoreError> {
        // Every clone shares the overlay: another handle would keep sled
        // open (and its file lock held).
        if Arc::strong_count(&self.overlay) > 1 {
            return Ok(self);
        }
        // What was committed is made durable first: the reopen must not
        // depend on sled flushing as its handles drop.
        self.flush()?;
        // Every sled handle goes (fields named one by one: a new one must
        // be placed here too), then the database opens again.
        let Store {
            db,
            dir,
            cache,
            outcomes,
            expiry,
            expiry_by_id,
            outbox,
            meta,
            signatures,
            generation,
            overlay,
            known,
        } = self;
        drop((
            db,
            cache,
            outcomes,
            expiry,
            expiry_by_id,
            outbox,
            meta,
            signatures,
        ));
        let mut s = Store::open(&dir)?;
        s.generation = generation;
        s.overlay = overlay;
        s.known = known;
        Ok(s)
    }

    /// Whether [`Store::is_cached`] answers from remembered ids (see
    /// [`Store::list_remembering`]).
    pub fn remembers_cached_ids(&self) -> bool {
        self.known.remembered()
    }

    /// The ids of every cached workload, in id order, without decoding
    /// their records.
    pub fn cached_ids(&self) -> impl Iterator<Item = Result<String, StoreError>> + '_ {
        self.cache.iter().keys().map(|k| {
            let k = k?;
            Ok(String::from_utf8_lossy(&k).into_owned())
        })
    }

    /// A number that moves whenever this process changes which workloads
    /// are cached or their records (not across restarts: compare it only
    /// with one read from the same open store).
    pub fn cache_generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    pub(crate) fn cache_changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Number of cached workloads: the sum of the per-type counters, kept
    /// in the same transactions as the cache. Not `Tree::len`, a scan that
    /// decodes every node of the cache tree (with 10,000 cached, each
    /// `agentctl status` paged the whole cache into sled's memory).
    pub fn cached_len(&self) -> usize {
        self.meta
            .scan_prefix(b"count/")
            .values()
            .filter_map(|v| v.ok())
            .filter_map(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .sum::<u64>() as usize
    }

    /// Cached workloads per type (only types with at least one).
    pub fn counters(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut m = BTreeMap::new();
        for t in WorkloadType::ALL {
            if let Some(v) = self.meta.get(counter_key(t.as_str()))? {
                let n = v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0);
                m.insert(t.as_str().to_string(), n);
            } else {
                m.insert(t.as_str().to_string(), 0);
            }
        }
        Ok(m)
    }

    /// The earliest scheduled decommission, if any.
    pub fn next_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self
            .expiry
            .first()?
            .and_then(|(k, _)| expiry_of(&k))
            .map(|(at, _)| at))
    }

    /// Ids due for decommission at `now`, earliest first, at most `limit`.
    pub fn due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<String>, StoreError> {
        let end = expiry_key(now, "\u{10FFFF}");
        let mut ids = Vec::new();
        for kv in self.expiry.range(..end).take(limit) {
            let (k, _) = kv?;
            if let Some((_, id)) = expiry_of(&k) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// The persisted poll cursor (0 before the first batch).
    pub fn cursor(&self) -> Result<u64, StoreError> {
        Ok(self
            .meta
            .get(CURSOR)?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Advance the cursor; it never moves back.
    pub fn set_cursor(&self, cursor: u64) -> Result<(), StoreError> {
        self.record_one(|u| {
            u.set_cursor(cursor);
            Ok(())
        })
    }

    /// Up to `limit` outbox entries, oldest first: the committed ones, then
    /// the staged ones ([`Unit`]; never durable yet).
    pub fn outbox_peek(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut v = Vec::new();
        for kv in self.outbox.iter().take(limit) {
            let (k, val) = kv?;
            let seq =
                u64::from_be_bytes(k.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    key: format!("outbox/{k:?}"),
                    reason: "key is not a u64".into(),
                })?);
            let item = records::decode(&format!("outbox/{seq}"), &val)?;
            v.push(OutboxEntry { seq, item });
        }
        for (seq, val) in self.overlay.outbox(limit - v.len()) {
            let item = records::decode(&format!("outbox/{seq}"), &val)?;
            v.push(OutboxEntry { seq, item });
        }
        Ok(v)
    }

    /// Drop an entry the explorer acknowledged.
    pub fn outbox_ack(&self, seq: u64) -> Result<(), StoreError> {
        self.outbox.remove(seq.to_be_bytes())?;
        Ok(())
    }

    /// Sequence number of the newest outbox entry. At start everything on
    /// disk is durable, so delivery may send up to it.
    pub fn outbox_last_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .outbox
            .last()?
            .and_then(|(k, _)| k.as_ref().try_into().ok().map(u64::from_be_bytes)))
    }

    /// Entries not yet acknowledged (staged ones too).
    pub fn outbox_len(&self) -> usize {
        self.outbox.len() + self.overlay.outbox_len()
    }

    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
