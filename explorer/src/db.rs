//! The explorer's state in sled: reservations with their results, the
//! per-node index the poll walks, the pending deletions, the node registry
//! and the reservation counter.
//!
//! Layout (one tree each):
//! - `meta`: `last_number` -> u64 BE, the last reservation number handed out.
//! - `reservations`: number BE -> [`Record`] JSON.
//! - `by_node`: node_id ‖ 0 ‖ number BE -> (), so `from=N` is a range scan.
//! - `pending_delete`: same keys, for `to_delete` reservations the node has
//!   not confirmed deleted: they are answered whatever the cursor.
//! - `nodes`: node_id -> [`NodeInfo`] JSON.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use reservation::{Reservation, WorkloadResult};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Transactional, Tree};

use crate::api::{Capacity, NodeInfo, NodeRegistration};
use crate::ExplorerError;

/// Version of the stored record layout, so a later release can read it.
const SCHEMA: u32 = 1;

/// A stored reservation and what the node said about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub v: u32,
    pub reservation: Reservation,
    /// Every result received, oldest first; the last one is "the" result.
    #[serde(default)]
    pub results: Vec<WorkloadResult>,
    /// The node confirmed it decommissioned the workload.
    #[serde(default)]
    pub deleted: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeRecord {
    v: u32,
    info: NodeInfo,
}

pub(crate) struct Db {
    path: PathBuf,
    db: sled::Db,
    meta: Tree,
    reservations: Tree,
    by_node: Tree,
    pending_delete: Tree,
    nodes: Tree,
    /// Serializes read-modify-write of records, so two results posted at
    /// once are both kept.
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

    /// Store `r` under the next reservation number; returns it with its id.
    pub fn create(&self, mut r: Reservation) -> Result<Reservation, ExplorerError> {
        let next = self
            .meta
            .update_and_fetch("last_number", |old| {
                let n = old
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0);
                Some(n.saturating_add(1).to_be_bytes().to_vec())
            })
            .map_err(|e| self.storage(e))?
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| self.corrupt("meta/last_number", "not a u64"))?;
        r.id = format!("{next}-1");
        let rec = Record {
            v: SCHEMA,
            reservation: r,
            results: Vec::new(),
            deleted: false,
        };
        let bytes = serde_json::to_vec(&rec).map_err(|e| self.corrupt(&rec.reservation.id, e))?;
        let nk = node_key(&rec.reservation.node_id, next);
        let pending = rec.reservation.to_delete;
        (&self.reservations, &self.by_node, &self.pending_delete)
            .transaction(|(res, idx, pend)| {
                res.insert(&next.to_be_bytes(), bytes.as_slice())?;
                idx.insert(nk.as_slice(), &[][..])?;
                if pending {
                    pend.insert(nk.as_slice(), &[][..])?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| self.tx_err(e))?;
        Ok(rec.reservation)
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

    /// The node confirmed it decommissioned `id`.
    pub fn mark_deleted(&self, id: &str) -> Result<Option<Record>, ExplorerError> {
        let _g = self.lock();
        let Some(mut rec) = self.get(id)? else {
            return Ok(None);
        };
        rec.deleted = true;
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

    /// Reservations of `node_id` as `GET /reservations/{node_id}/poll?from=N`
    /// answers them, ordered by reservation number.
    ///
    /// `from=0`: all of them. Otherwise: number ≥ `from`, not expired at
    /// `now` and not confirmed deleted (the node is done with those), plus
    /// every `to_delete` one the node has not confirmed deleted.
    pub fn poll(
        &self,
        node_id: &str,
        from: u64,
        now: DateTime<Utc>,
    ) -> Result<Vec<Reservation>, ExplorerError> {
        let mut numbers = Vec::new();
        if from == 0 {
            for kv in self.by_node.scan_prefix(node_prefix(node_id)) {
                let (k, _) = kv.map_err(|e| self.storage(e))?;
                numbers.extend(number_of_key(&k));
            }
        } else {
            for kv in self.pending_delete.scan_prefix(node_prefix(node_id)) {
                let (k, _) = kv.map_err(|e| self.storage(e))?;
                numbers.extend(number_of_key(&k));
            }
            let start = node_key(node_id, from);
            let end = node_key(node_id, u64::MAX);
            for kv in self.by_node.range(start..=end) {
                let (k, _) = kv.map_err(|e| self.storage(e))?;
                numbers.extend(number_of_key(&k));
            }
            numbers.sort_unstable();
            numbers.dedup();
        }
        let mut out = Vec::with_capacity(numbers.len());
        for n in numbers {
            let Some(rec) = self.load(n)? else { continue };
            let r = rec.reservation;
            // The key prefix alone could match a node id that embeds a NUL.
            if r.node_id != node_id {
                continue;
            }
            let include = from == 0
                || (r.to_delete && !rec.deleted)
                || (n >= from && !rec.deleted && !r.is_expired(now));
            if include {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Register or re-register a node: url and capacity are replaced, the
    /// last heartbeat and usage are kept.
    pub fn register_node(&self, reg: NodeRegistration) -> Result<NodeInfo, ExplorerError> {
        let _g = self.lock();
        let old = self.node(&reg.node_id)?;
        let info = NodeInfo {
            node_id: reg.node_id,
            url: reg.url,
            capacity: reg.capacity,
            used: old.as_ref().map(|o| o.used).unwrap_or_default(),
            last_heartbeat: old.and_then(|o| o.last_heartbeat),
        };
        self.put_node(&info)?;
        Ok(info)
    }

    /// Record a heartbeat; `None` if the node is not registered.
    pub fn heartbeat(
        &self,
        node_id: &str,
        used: Option<Capacity>,
        now: DateTime<Utc>,
    ) -> Result<Option<NodeInfo>, ExplorerError> {
        let _g = self.lock();
        let Some(mut info) = self.node(node_id)? else {
            return Ok(None);
        };
        info.last_heartbeat = Some(now);
        if let Some(u) = used {
            info.used = u;
        }
        self.put_node(&info)?;
        Ok(Some(info))
    }

    fn node(&self, node_id: &str) -> Result<Option<NodeInfo>, ExplorerError> {
        let Some(b) = self.nodes.get(node_id).map_err(|e| self.storage(e))? else {
            return Ok(None);
        };
        let rec: NodeRecord =
            serde_json::from_slice(&b).map_err(|e| self.corrupt(format!("nodes/{node_id}"), e))?;
        Ok(Some(rec.info))
    }

    fn put_node(&self, info: &NodeInfo) -> Result<(), ExplorerError> {
        let rec = NodeRecord {
            v: SCHEMA,
            info: info.clone(),
        };
        let b = serde_json::to_vec(&rec).map_err(|e| self.corrupt(&info.node_id, e))?;
        self.nodes
            .insert(info.node_id.as_bytes(), b)
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

/// The reservation number of an id this explorer hands out (`"<n>-1"`).
pub(crate) fn parse_id(id: &str) -> Option<u64> {
    let (n, w) = id.split_once('-')?;
    if w != "1" {
        return None;
    }
    n.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(parse_id("12-1"), Some(12));
        assert_eq!(parse_id("12-2"), None);
        assert_eq!(parse_id("x-1"), None);
        assert_eq!(parse_id("12"), None);
        assert_eq!(number_of_key(&node_key("abc", 7)), Some(7));
    }
}
