//! The explorer's state in sled (the default [`Storage`]): reservations with their results, the
//! per-node index the poll walks, the pending deletions, the signature
//! index that refuses a reservation posted twice, the node registry and the
//! reservation counter.
//!
//! Layout (one tree each):
//! - `meta`: `last_number` -> u64 BE, the last reservation number handed out.
//! - `reservations`: number BE -> [`Record`] JSON.
//! - `by_node`: node_id ‖ 0 ‖ number BE -> (), so `from=N` is a range scan.
//! - `pending_delete`: same keys, for `to_delete` reservations the node has
//!   not confirmed deleted: they are answered whatever the cursor.
//! - `by_signature`: the user's signature text -> number BE. Written in the
//!   same transaction as the reservation, under the write lock, so of two
//!   concurrent posts of one signed reservation exactly one is stored. (A
//!   database of protocol version 1 has no such index; it needs none, since
//!   version 1 reservations are refused at `POST` now.)
//! - `nodes`: node_id -> [`NodeRecord`] JSON, with the last accepted
//!   timestamp of the node's signed messages (one counter for registration
//!   and uptime).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reservation::{Reservation, WorkloadResult};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};

use crate::storage::{parse_id, Insert, NodeUpdate, PollRange, Record, Storage};
use crate::ExplorerError;
use reservation::node::{Capacity, NodeInfo};

/// Version of the stored record layout, so a later release can read it.
/// (Version 2 of the protocol only added fields with defaults.)
pub(crate) const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeRecord {
    v: u32,
    info: NodeInfo,
    /// The `timestamp` (unix ms) of the last registration or uptime report
    /// accepted for this node: the next one must be newer.
    #[serde(default)]
    last_timestamp: Option<i64>,
}

/// Why a transaction was aborted.
enum Abort {
    Duplicate(u64),
    Encode(String),
}

pub(crate) struct Db {
    path: PathBuf,
    db: sled::Db,
    meta: Tree,
    reservations: Tree,
    by_node: Tree,
    pending_delete: Tree,
    by_signature: Tree,
    nodes: Tree,
    /// Serializes read-modify-write of records (two results posted at once
    /// are both kept), the duplicate check of a new reservation with its
    /// insertion, and the timestamp check of a node message with its write.
    write: Mutex<()>,
}

fn node_key(node_id: &str, number: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(node_id.len() + 9);
    k.extend_from_slice(node_id.as_bytes());
    k.push(0);
    k.extend_from_slice(&number.to_be_bytes());
    k
}

fn node_prefix(node_id: &str) -> Vec<u8> {
    let mut k = node_id.as_bytes().to_vec();
    k.push(0);
    k
}

fn number_of_key(k: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = k.get(k.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

fn u64_of(b: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(b).ok().map(u64::from_be_bytes)
}

impl Db {
    pub fn open(path: &Path) -> Result<Db, ExplorerError> {
        let storage = |source| ExplorerError::Storage {
            path: path.to_path_buf(),
            source,
        };
        // A small cache: `agent --dev` runs this in-process and the node's
        // idle memory target is tight.
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(8 << 20)
            .open()
            .map_err(storage)?;
        let tree = |name: &str| db.open_tree(name).map_err(storage);
        Ok(Db {
            path: path.to_path_buf(),
            meta: tree("meta")?,
            reservations: tree("reservations")?,
            by_node: tree("by_node")?,
            pending_delete: tree("pending_delete")?,
            by_signature: tree("by_signature")?,
            nodes: tree("nodes")?,
            db,
            write: Mutex::new(()),
        })
    }

    fn storage(&self, source: sled::Error) -> ExplorerError {
        ExplorerError::Storage {
            path: self.path.clone(),
            source,
        }
    }

    fn tx_err(&self, e: TransactionError<()>) -> ExplorerError {
        match e {
            TransactionError::Storage(e) => self.storage(e),
            TransactionError::Abort(()) => {
                self.storage(sled::Error::Unsupported("transaction aborted".into()))
            }
        }
    }

    fn corrupt(&self, key: impl Into<String>, reason: impl ToString) -> ExplorerError {
        ExplorerError::Corrupt {
            path: self.path.clone(),
            key: key.into(),
            reason: reason.to_string(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock cannot leave a half-written record
        // (writes are transactions), so a poisoned lock is still usable.
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make every write so far durable. sled 0.34's `flush_async` can hang
    /// when awaited by several requests at once (spacejam/sled#1308), which
    /// stalled concurrent POSTs; the blocking `flush` on the blocking pool
    /// is safe to call concurrently.
    pub async fn flush(&self) -> Result<(), ExplorerError> {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(r) => r.map(|_| ()).map_err(|e| self.storage(e)),
            Err(e) => Err(self.storage(sled::Error::Io(std::io::Error::other(e.to_string())))),
        }
    }

    /// Store `r` under the next reservation number, unless a reservation
    /// with the same signature is already stored. The check, the counter
    /// and every index are one transaction, under the write lock.
    pub fn create(&self, r: Reservation) -> Result<Insert, ExplorerError> {
        let _g = self.lock();
        let sig = r.signature.clone();
        let done = (
            &self.meta,
            &self.reservations,
            &self.by_node,
            &self.pending_delete,
            &self.by_signature,
        )
            .transaction(|(meta, res, idx, pend, by_sig)| {
                if let Some(n) = by_sig.get(sig.as_bytes())? {
                    let n = u64_of(&n).unwrap_or(0);
                    return Err(ConflictableTransactionError::Abort(Abort::Duplicate(n)));
                }
                let last = meta
                    .get("last_number")?
                    .and_then(|b| u64_of(&b))
                    .unwrap_or(0);
                let next = last.saturating_add(1);
                let mut rec = Record {
                    v: SCHEMA,
                    reservation: r.clone(),
                    results: Vec::new(),
                    deleted: false,
                    deleted_signature: None,
                };
                rec.reservation.id = format!("{next}-1");
                let bytes = serde_json::to_vec(&rec).map_err(|e| {
                    ConflictableTransactionError::Abort(Abort::Encode(e.to_string()))
                })?;
                let nk = node_key(&rec.reservation.node_id, next);
                meta.insert("last_number", &next.to_be_bytes())?;
                res.insert(&next.to_be_bytes(), bytes.as_slice())?;
                idx.insert(nk.as_slice(), &[][..])?;
                if rec.reservation.to_delete {
                    pend.insert(nk.as_slice(), &[][..])?;
                }
                by_sig.insert(sig.as_bytes(), &next.to_be_bytes())?;
                Ok(rec.reservation)
            });
        match done {
            Ok(r) => Ok(Insert::New(Box::new(r), None)),
            Err(TransactionError::Abort(Abort::Duplicate(n))) => {
                Ok(Insert::Duplicate(format!("{n}-1")))
            }
            Err(TransactionError::Abort(Abort::Encode(e))) => {
                Err(self.corrupt("new reservation", e))
            }
            Err(TransactionError::Storage(e)) => Err(self.storage(e)),
        }
    }

    fn load(&self, number: u64) -> Result<Option<Record>, ExplorerError> {
        let Some(bytes) = self
            .reservations
            .get(number.to_be_bytes())
            .map_err(|e| self.storage(e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| self.corrupt(format!("reservations/{number}"), e))
    }

    /// The record of reservation `id` (`"<n>-1"`); `None` for an id that is
    /// malformed or unknown.
    pub fn get(&self, id: &str) -> Result<Option<Record>, ExplorerError> {
        let Some(number) = parse_id(id) else {
            return Ok(None);
        };
        Ok(self.load(number)?.filter(|r| r.reservation.id == id))
    }

    fn save(&self, rec: &Record, pending: Option<bool>) -> Result<(), ExplorerError> {
        let r = &rec.reservation;
        let number = r
            .number()
            .ok_or_else(|| self.corrupt(&r.id, "id has no number"))?;
        let bytes = serde_json::to_vec(rec).map_err(|e| self.corrupt(&r.id, e))?;
        let nk = node_key(&r.node_id, number);
        (&self.reservations, &self.pending_delete)
            .transaction(|(res, pend)| {
                res.insert(&number.to_be_bytes(), bytes.as_slice())?;
                match pending {
                    Some(true) => {
                        pend.insert(nk.as_slice(), &[][..])?;
                    }
                    Some(false) => {
                        pend.remove(nk.as_slice())?;
                    }
                    None => {}
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| self.tx_err(e))
    }

    /// Append a (verified) result; `None` if `id` is unknown. A PUT is
    /// idempotent: the very same signed result sent again (a node that
    /// crashed before recording our 200) is not appended twice.
    pub fn add_result(
        &self,
        id: &str,
        result: WorkloadResult,
    ) -> Result<Option<Record>, ExplorerError> {
        let _g = self.lock();
        let Some(mut rec) = self.get(id)? else {
            return Ok(None);
        };
        if rec.results.iter().any(|r| r.signature == result.signature) {
            return Ok(Some(rec));
        }
        rec.results.push(result);
        self.save(&rec, None)?;
        Ok(Some(rec))
    }

    /// The node confirmed (with its verified `confirmation`) that it
    /// decommissioned `id`.
    pub fn mark_deleted(
        &self,
        id: &str,
        confirmation: String,
    ) -> Result<Option<Record>, ExplorerError> {
        let _g = self.lock();
        let Some(mut rec) = self.get(id)? else {
            return Ok(None);
        };
        rec.deleted = true;
        rec.deleted_signature = Some(confirmation);
        self.save(&rec, Some(false))?;
        Ok(Some(rec))
    }

    /// Set `to_delete` with a (verified) `delete_signature`.
    pub fn set_to_delete(&self, id: &str, sig: String) -> Result<Option<Record>, ExplorerError> {
        let _g = self.lock();
        let Some(mut rec) = self.get(id)? else {
            return Ok(None);
        };
        rec.reservation.to_delete = true;
        rec.reservation.delete_signature = Some(sig);
        let pending = !rec.deleted;
        self.save(&rec, Some(pending))?;
        Ok(Some(rec))
    }

    /// The next reservation number of an index scan; keys too short to
    /// hold one are skipped.
    fn next_number(&self, it: &mut Option<sled::Iter>) -> Result<Option<u64>, ExplorerError> {
        let Some(iter) = it.as_mut() else {
            return Ok(None);
        };
        for kv in iter.by_ref() {
            let (k, _) = kv.map_err(|e| self.storage(e))?;
            if let Some(n) = number_of_key(&k) {
                return Ok(Some(n));
            }
        }
        *it = None;
        Ok(None)
    }

    /// Reservations of `node_id` as `GET /reservations/{node_id}/poll`
    /// answers them: ascending by reservation number, at most `q.limit`.
    ///
    /// `all`: every one numbered ≥ `from`. Otherwise: number ≥ `from`, not
    /// expired at `now` and not confirmed deleted (the node is done with
    /// those), plus every `to_delete` one the node has not confirmed
    /// deleted, whatever its number. The pending deletions and the range
    /// are two ordered index scans merged as they go, so no more records
    /// are loaded than the answer needs (plus those skipped as expired).
    pub fn poll(
        &self,
        node_id: &str,
        q: PollRange,
        now: DateTime<Utc>,
    ) -> Result<Vec<Reservation>, ExplorerError> {
        let mut out = Vec::new();
        if q.limit == 0 {
            return Ok(out);
        }
        let start = node_key(node_id, q.from);
        let end = node_key(node_id, u64::MAX);
        let mut range = Some(self.by_node.range(start..=end));
        let mut pending = (!q.all).then(|| self.pending_delete.scan_prefix(node_prefix(node_id)));
        let mut a = self.next_number(&mut pending)?;
        let mut b = self.next_number(&mut range)?;
        loop {
            let n = match (a, b) {
                (None, None) => break,
                (Some(x), Some(y)) if x == y => {
                    a = self.next_number(&mut pending)?;
                    b = self.next_number(&mut range)?;
                    x
                }
                (Some(x), Some(y)) if x < y => {
                    a = self.next_number(&mut pending)?;
                    x
                }
                (Some(x), None) => {
                    a = self.next_number(&mut pending)?;
                    x
                }
                (_, Some(y)) => {
                    b = self.next_number(&mut range)?;
                    y
                }
            };
            let Some(rec) = self.load(n)? else { continue };
            let r = rec.reservation;
            // The key prefix alone could match a node id that embeds a NUL.
            if r.node_id != node_id {
                continue;
            }
            let include = q.all
                || (r.to_delete && !rec.deleted)
                || (n >= q.from && !rec.deleted && !r.is_expired(now));
            if include {
                out.push(r);
                if out.len() >= q.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Register or re-register a (verified) node whose message carries
    /// `timestamp`: url and capacity are replaced, the last heartbeat and
    /// usage are kept. Refused, and nothing written, unless the timestamp
    /// passes [`reservation::node::check_timestamp`] at `now_ms` against
    /// the last one accepted for the node; `Err` says why.
    pub fn register_node(
        &self,
        node_id: &str,
        url: &str,
        capacity: Capacity,
        timestamp: i64,
        now_ms: i64,
    ) -> Result<Result<NodeInfo, String>, ExplorerError> {
        let _g = self.lock();
        let old = self.node(node_id)?;
        let last = old.as_ref().and_then(|o| o.last_timestamp);
        if let Err(e) = reservation::node::check_timestamp(timestamp, now_ms, last) {
            return Ok(Err(e.to_string()));
        }
        let old = old.map(|o| o.info);
        let rec = NodeRecord {
            v: SCHEMA,
            info: NodeInfo {
                node_id: node_id.to_string(),
                url: url.to_string(),
                capacity,
                used: old.as_ref().map(|o| o.used).unwrap_or_default(),
                draining: old.as_ref().is_some_and(|o| o.draining),
                last_heartbeat: old.and_then(|o| o.last_heartbeat),
            },
            last_timestamp: Some(timestamp),
        };
        self.put_node(&rec)?;
        Ok(Ok(rec.info))
    }

    /// Record a (verified) heartbeat at `now`, under the same timestamp
    /// rule as [`Db::register_node`]; [`NodeUpdate::Unknown`] if the node
    /// is not registered.
    pub fn heartbeat(
        &self,
        node_id: &str,
        used: Capacity,
        draining: bool,
        timestamp: i64,
        now: DateTime<Utc>,
    ) -> Result<NodeUpdate, ExplorerError> {
        let _g = self.lock();
        let Some(mut rec) = self.node(node_id)? else {
            return Ok(NodeUpdate::Unknown);
        };
        let now_ms = now.timestamp_millis();
        if let Err(e) = reservation::node::check_timestamp(timestamp, now_ms, rec.last_timestamp) {
            return Ok(NodeUpdate::Stale(e.to_string()));
        }
        rec.info.last_heartbeat = Some(now);
        rec.info.used = used;
        rec.info.draining = draining;
        rec.last_timestamp = Some(timestamp);
        self.put_node(&rec)?;
        Ok(NodeUpdate::Done)
    }

    fn node(&self, node_id: &str) -> Result<Option<NodeRecord>, ExplorerError> {
        let Some(b) = self.nodes.get(node_id).map_err(|e| self.storage(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| self.corrupt(format!("nodes/{node_id}"), e))
    }

    fn put_node(&self, rec: &NodeRecord) -> Result<(), ExplorerError> {
        let b = serde_json::to_vec(rec).map_err(|e| self.corrupt(&rec.info.node_id, e))?;
        self.nodes
            .insert(rec.info.node_id.as_bytes(), b)
            .map_err(|e| self.storage(e))?;
        Ok(())
    }

    /// Every registered node, ordered by node id.
    pub fn nodes(&self) -> Result<Vec<NodeInfo>, ExplorerError> {
        let mut out = Vec::new();
        for kv in self.nodes.iter() {
            let (k, b) = kv.map_err(|e| self.storage(e))?;
            let rec: NodeRecord = serde_json::from_slice(&b)
                .map_err(|e| self.corrupt(format!("nodes/{}", String::from_utf8_lossy(&k)), e))?;
            out.push(rec.info);
        }
        Ok(out)
    }
}

/// The sled store behind the seam: the inherent methods, which are
/// synchronous (sled is an embedded, in-memory-first store; a call never
/// waits on the network).
#[async_trait]
impl Storage for Db {
    fn describe(&self) -> String {
        format!("sled at {}", self.path.display())
    }

    async fn create(&self, r: Reservation) -> Result<Insert, ExplorerError> {
        Db::create(self, r)
    }

    async fn get(&self, id: &str) -> Result<Option<Record>, ExplorerError> {
        Db::get(self, id)
    }

    async fn add_result(&self, id: &str, result: WorkloadResult) -> Result<bool, ExplorerError> {
        Ok(Db::add_result(self, id, result)?.is_some())
    }

    async fn mark_deleted(&self, id: &str, confirmation: String) -> Result<bool, ExplorerError> {
        Ok(Db::mark_deleted(self, id, confirmation)?.is_some())
    }

    async fn set_to_delete(&self, id: &str, sig: String) -> Result<Option<String>, ExplorerError> {
        Ok(Db::set_to_delete(self, id, sig)?.map(|r| r.reservation.node_id))
    }

    async fn poll(
        &self,
        node_id: &str,
        q: PollRange,
        now: DateTime<Utc>,
    ) -> Result<Vec<Reservation>, ExplorerError> {
        Db::poll(self, node_id, q, now)
    }

    async fn register_node(
        &self,
        node_id: &str,
        url: &str,
        capacity: Capacity,
        timestamp: i64,
        now_ms: i64,
    ) -> Result<Result<NodeInfo, String>, ExplorerError> {
        Db::register_node(self, node_id, url, capacity, timestamp, now_ms)
    }

    async fn heartbeat(
        &self,
        node_id: &str,
        used: Capacity,
        draining: bool,
        timestamp: i64,
        now: DateTime<Utc>,
    ) -> Result<NodeUpdate, ExplorerError> {
        Db::heartbeat(self, node_id, used, draining, timestamp, now)
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, ExplorerError> {
        Db::nodes(self)
    }

    async fn flush(&self) -> Result<(), ExplorerError> {
        Db::flush(self).await
    }

    async fn health(&self) -> Result<(), String> {
        // A read through the tree: fails once sled has hit an I/O error.
        self.meta
            .get("last_number")
            .map(|_| ())
            .map_err(|e| format!("sled at {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(number_of_key(&node_key("abc", 7)), Some(7));
    }

    fn id_list(list: &[Reservation]) -> Vec<&str> {
        list.iter().map(|r| r.id.as_str()).collect()
    }

    #[test]
    fn poll_merges_pending_deletions_with_the_range_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let now = Utc::now();
        let mk = |node: &str, i: u32| Reservation {
            node_id: node.into(),
            user_id: "u".into(),
            kind: "volume".into(),
            created: Some(now),
            duration: 3_600_000_000_000,
            signature: format!("sig{i}"),
            ..Reservation::default()
        };
        for i in 1..=6 {
            let r = mk(if i == 4 { "b" } else { "a" }, i);
            assert!(matches!(db.create(r).unwrap(), Insert::New(r, _) if r.id == format!("{i}-1")));
        }
        db.set_to_delete("2-1", "d".into()).unwrap().unwrap();
        db.set_to_delete("5-1", "d".into()).unwrap().unwrap();
        let poll = |from, all, limit| db.poll("a", PollRange { from, all, limit }, now).unwrap();
        // The pending 2 below the cursor, then the range; 5 once.
        assert_eq!(id_list(&poll(4, false, 1000)), ["2-1", "5-1", "6-1"]);
        assert_eq!(id_list(&poll(4, false, 2)), ["2-1", "5-1"]);
        assert_eq!(
            id_list(&poll(1, false, 1000)),
            ["1-1", "2-1", "3-1", "5-1", "6-1"]
        );
        assert_eq!(id_list(&poll(1, false, 3)), ["1-1", "2-1", "3-1"]);
        assert_eq!(id_list(&poll(3, true, 1000)), ["3-1", "5-1", "6-1"]);
        assert_eq!(
            id_list(
                &db.poll(
                    "b",
                    PollRange {
                        from: 1,
                        all: false,
                        limit: 9
                    },
                    now
                )
                .unwrap()
            ),
            ["4-1"]
        );
        // Confirmed deleted: out of the ordinary poll, still in all=true.
        db.mark_deleted("2-1", "c".into()).unwrap().unwrap();
        assert_eq!(id_list(&poll(4, false, 1000)), ["5-1", "6-1"]);
        assert_eq!(id_list(&poll(1, false, 1000)), ["1-1", "3-1", "5-1", "6-1"]);
        assert_eq!(id_list(&poll(1, true, 2)), ["1-1", "2-1"]);
        // Expired: out of the ordinary poll only.
        let later = now + chrono::Duration::hours(2);
        let ordinary = db
            .poll(
                "a",
                PollRange {
                    from: 1,
                    all: false,
                    limit: 9,
                },
                later,
            )
            .unwrap();
        assert_eq!(id_list(&ordinary), ["5-1"], "only the pending deletion");
        assert_eq!(
            db.poll(
                "a",
                PollRange {
                    from: 1,
                    all: true,
                    limit: 9
                },
                later
            )
            .unwrap()
            .len(),
            5
        );
    }

    #[test]
    fn a_signature_is_stored_once_and_a_refusal_burns_no_number() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let r = Reservation {
            node_id: "a".into(),
            signature: "same".into(),
            ..Reservation::default()
        };
        assert!(matches!(db.create(r.clone()).unwrap(), Insert::New(n, _) if n.id == "1-1"));
        assert!(matches!(db.create(r.clone()).unwrap(), Insert::Duplicate(id) if id == "1-1"));
        let other = Reservation {
            signature: "other".into(),
            ..r
        };
        assert!(matches!(db.create(other).unwrap(), Insert::New(n, _) if n.id == "2-1"));
    }
}
