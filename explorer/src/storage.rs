//! The storage seam: one async trait, [`Storage`], that every route goes
//! through, with two implementations: sled in one process
//! ([`crate::db::Db`], the default, for `agent --dev` and labs) and
//! PostgreSQL shared by any number of replicas (`crate::pg::Pg`, with the
//! `postgres` feature).
//!
//! What both promise (the routes rely on it, `explorer/tests/server.rs`
//! runs the same tests on each):
//! - reservation numbers are handed out once, ascending, by the store (a
//!   counter under a lock; a database sequence);
//! - a signature is stored once: of two posts of one signed reservation,
//!   however concurrent and on whichever replica, exactly one is stored;
//! - `data` and every signed field come back exactly as stored;
//! - a node's message timestamp is accepted only if newer than the last
//!   accepted one, checked and written in one step;
//! - a write is durable when its call (and [`Storage::flush`]) returns.
//!
//! Wake-ups: a poll held open waits on [`Wakers`]; the server wakes a node
//! after a write that concerns it, and a shared store also forwards the
//! other replicas' wake-ups ([`Storage::forward_wakeups`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reservation::node::{Capacity, NodeInfo};
use reservation::{Reservation, WorkloadResult};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ExplorerError;

/// A stored reservation and what the node said about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    /// Version of sled's record layout (see [`crate::db`]).
    pub v: u32,
    pub reservation: Reservation,
    /// Every result received, oldest first; the last one is "the" result.
    #[serde(default)]
    pub results: Vec<WorkloadResult>,
    /// The node confirmed it decommissioned the workload.
    #[serde(default)]
    pub deleted: bool,
    /// The node's signed confirmation (`PUT /reservations/{id}/deleted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_signature: Option<String>,
}

/// What [`Storage::create`] did.
pub(crate) enum Insert {
    /// Stored, with its id; and the highest number its node had before it
    /// (0: none) when the store says (see [`Wakers::wrote`]).
    New(Box<Reservation>, Option<u64>),
    /// A reservation with the same signature is already stored, under this
    /// id; nothing was written.
    Duplicate(String),
}

/// What an uptime report did.
pub(crate) enum NodeUpdate {
    /// Accepted and stored.
    Done,
    /// The node is not registered.
    Unknown,
    /// The timestamp is refused; the message says why. Nothing was written.
    Stale(String),
}

/// Which reservations a poll answers (see [`Storage::poll`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PollRange {
    pub from: u64,
    pub all: bool,
    pub limit: usize,
}

/// How many database connections a store holds, and how its inserts were
/// grouped, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Connections {
    pub open: u32,
    pub idle: u32,
    /// Statements that stored reservations (one per batch), since start.
    pub insert_statements: u64,
    /// Reservations those statements stored or found stored.
    pub inserted_rows: u64,
}

/// The explorer's state. Every method is one atomic step: a refused or
/// failed call changes nothing.
#[async_trait]
pub(crate) trait Storage: Send + Sync + 'static {
    /// Where the state lives, for logs (no password).
    fn describe(&self) -> String;

    /// Store `r` under the next reservation number, unless a reservation
    /// with the same signature is already stored.
    async fn create(&self, r: Reservation) -> Result<Insert, ExplorerError>;

    /// The record of reservation `id` (`"<n>-1"`); `None` for an id that is
    /// malformed or unknown.
    async fn get(&self, id: &str) -> Result<Option<Record>, ExplorerError>;

    /// Append a (verified) result; `false` if `id` is unknown. The very
    /// same signed result sent again is not appended twice.
    async fn add_result(&self, id: &str, result: WorkloadResult) -> Result<bool, ExplorerError>;

    /// The node confirmed (with its verified `confirmation`) that it
    /// decommissioned `id`; `false` if `id` is unknown.
    async fn mark_deleted(&self, id: &str, confirmation: String) -> Result<bool, ExplorerError>;

    /// Set `to_delete` with a (verified) `delete_signature`; the node id of
    /// the reservation, `None` if `id` is unknown.
    async fn set_to_delete(&self, id: &str, sig: String) -> Result<Option<String>, ExplorerError>;

    /// Reservations of `node_id` as `GET /reservations/{node_id}/poll`
    /// answers them: ascending by reservation number, at most `q.limit`.
    ///
    /// `all`: every one numbered ≥ `from`. Otherwise: number ≥ `from`, not
    /// expired at `now` and not confirmed deleted (the node is done with
    /// those), plus every `to_delete` one the node has not confirmed
    /// deleted, whatever its number.
    async fn poll(
        &self,
        node_id: &str,
        q: PollRange,
        now: DateTime<Utc>,
    ) -> Result<Vec<Reservation>, ExplorerError>;

    /// Register or re-register a (verified) node whose message carries
    /// `timestamp`: url and capacity are replaced, the last heartbeat and
    /// usage are kept. Refused, and nothing written, unless the timestamp
    /// passes [`reservation::node::check_timestamp`] at `now_ms` against
    /// the last one accepted for the node; `Err` says why.
    async fn register_node(
        &self,
        node_id: &str,
        url: &str,
        capacity: Capacity,
        timestamp: i64,
        now_ms: i64,
    ) -> Result<Result<NodeInfo, String>, ExplorerError>;

    /// Record a (verified) heartbeat at `now`, under the same timestamp
    /// rule as [`Storage::register_node`].
    async fn heartbeat(
        &self,
        node_id: &str,
        used: Capacity,
        draining: bool,
        timestamp: i64,
        now: DateTime<Utc>,
    ) -> Result<NodeUpdate, ExplorerError>;

    /// Every registered node, ordered by node id (bytewise).
    async fn nodes(&self) -> Result<Vec<NodeInfo>, ExplorerError>;

    /// Make every write so far durable (sled defers it; PostgreSQL's
    /// commit already is).
    async fn flush(&self) -> Result<(), ExplorerError>;

    /// Whether the store answers now (`GET /health`); `Err` says why not.
    async fn health(&self) -> Result<(), String>;

    /// Forward wake-ups that other replicas publish to `wakers` until
    /// `shutdown` flips (a shared store; sled has no other replicas).
    fn forward_wakeups(&self, _wakers: Arc<Wakers>, _shutdown: watch::Receiver<bool>) {}

    /// Database connections held (a pool), if any.
    fn connections(&self) -> Option<Connections> {
        None
    }

    /// Close connections (the server is stopping).
    async fn close(&self) {}
}

/// The reservation number of an id this explorer hands out (`"<n>-1"`).
pub(crate) fn parse_id(id: &str) -> Option<u64> {
    let (n, w) = id.split_once('-')?;
    if w != "1" {
        return None;
    }
    n.parse().ok()
}

/// The number of `id` if `id` is exactly how this explorer writes it
/// (`"7-1"`, not `"07-1"` nor `"+7-1"`).
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn canonical_number(id: &str) -> Option<u64> {
    match reservation::id_numbers(id)? {
        (n, 1) => Some(n),
        _ => None,
    }
}

/// One channel per node with a poll waiting: a write for the node bumps
/// it, which wakes every poll of that node held on this server. Channels
/// exist only while a poll waits, so arbitrary node ids in poll paths do
/// not grow the map.
///
/// Also what the last poll query of each node proved ([`Wakers::known`]):
/// a node that was just answered polls again from past its last
/// reservation, and that query is empty unless something was written for
/// the node since. A wake-up for the node forgets the proof, so the poll
/// is held without asking the store and still wakes on the next write.
/// A reservation just stored for the node (by this server, or by another
/// replica whose wake-up carries it), right after the last one the proof
/// covers, extends the proof instead
/// ([`Wakers::wrote`]): the woken poll answers it without asking the store
/// again (with PostgreSQL, that query was one round trip and one
/// transaction per reservation).
pub(crate) struct Wakers {
    map: Mutex<HashMap<String, watch::Sender<u64>>>,
    quiet: Mutex<HashMap<String, Quiet>>,
    /// Tokens of [`Wakers::begin_query`].
    next_token: AtomicU64,
    /// Every write of another replica reaches [`Wakers::wake`] (a shared
    /// store: while its LISTEN connection is up; sled: always).
    complete: AtomicBool,
}

/// What is known of a node's poll answers.
#[derive(Debug, Clone)]
enum Quiet {
    /// A query (this token) is running; nothing woke the node since it
    /// began.
    Pending(u64),
    /// An ordinary poll from `from` answers exactly `fresh` (ascending;
    /// empty: nothing), less those expired by then, as long as no other
    /// wake-up for the node comes (which removes the entry).
    From { from: u64, fresh: Vec<Fresh> },
}

/// A reservation stored since a node's proof, with its
/// number and expiry (unix nanoseconds; `i64::MIN`: none, as stored).
#[derive(Debug, Clone)]
struct Fresh {
    number: u64,
    expires_ns: i64,
    r: Reservation,
}

/// At most this many reservations are kept in one node's proof; one more
/// forgets the proof (the node's next poll asks the store).
const MAX_FRESH: usize = 32;

/// A reservation whose `data` is larger than this is not kept in a proof
/// (it forgets it): with [`MAX_FRESH`] and proofs kept only while a poll
/// of the node is held here, what a user can make this server hold stays
/// near 128 KiB per open long poll, not 64 KiB × 32 × every node id.
pub(crate) const MAX_FRESH_DATA: usize = 4096;

/// When `r` expires, in unix nanoseconds, as the stores compute it (no
/// lifetime: already expired).
pub(crate) fn expires_ns(r: &Reservation) -> i64 {
    match r.expires_at() {
        Some(at) if r.duration > 0 => at.timestamp_nanos_opt().unwrap_or(i64::MAX),
        _ => i64::MIN,
    }
}

/// At most this many nodes' proofs are kept; past it they are all
/// forgotten (each costs a query again), so arbitrary node ids in poll
/// paths cannot grow the map without bound.
const MAX_QUIET: usize = 100_000;

impl Default for Wakers {
    fn default() -> Self {
        Wakers {
            map: Mutex::default(),
            quiet: Mutex::default(),
            next_token: AtomicU64::new(0),
            complete: AtomicBool::new(true),
        }
    }
}

impl Wakers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn quiet(&self) -> std::sync::MutexGuard<'_, HashMap<String, Quiet>> {
        self.quiet.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wake the polls of `node_id` held here.
    pub fn wake(&self, node_id: &str) {
        // Forget first: a poll that finds no proof asks the store.
        self.quiet().remove(node_id);
        if let Some(tx) = self.lock().get(node_id) {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Wake every poll held here (wake-ups may have been missed: each
    /// looks again). Only a shared store misses wake-ups.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub fn wake_all(&self) {
        self.quiet().clear();
        for tx in self.lock().values() {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Whether every write of another replica wakes here from now on
    /// (`true`), or wake-ups may be missed (`false`: no poll is held on a
    /// proof meanwhile). Set `true` only after [`Wakers::wake_all`].
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub fn set_complete(&self, complete: bool) {
        self.complete.store(complete, Ordering::SeqCst);
        if !complete {
            self.quiet().clear();
        }
    }

    /// A receiver for `node_id`'s wake-ups; hand it back with
    /// [`Wakers::release`].
    pub fn subscribe(&self, node_id: &str) -> watch::Receiver<u64> {
        self.lock()
            .entry(node_id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Drop `rx`, and the node's channel once no poll waits on it.
    pub fn release(&self, node_id: &str, rx: watch::Receiver<u64>) {
        drop(rx);
        let mut map = self.lock();
        if map.get(node_id).is_some_and(|tx| tx.receiver_count() == 0) {
            map.remove(node_id);
        }
    }

    /// The answer to the poll `q` of `node_id` at `now_ns` when it is
    /// known without the store: an earlier query proved what it was, and
    /// since then only reservations this server stored right after it
    /// came ([`Wakers::wrote`]), no other wake-up. `None`: ask the store.
    /// Ask with a receiver from [`Wakers::subscribe`] already marked seen,
    /// so a wake-up right after this still wakes the poll.
    pub fn known(&self, node_id: &str, q: PollRange, now_ns: i64) -> Option<Vec<Reservation>> {
        if q.all || !self.complete.load(Ordering::SeqCst) {
            return None;
        }
        let mut quiet = self.quiet();
        let Some(Quiet::From { from, fresh }) = quiet.get_mut(node_id) else {
            return None;
        };
        if q.from < *from {
            return None;
        }
        // What answers from `from` answers from `q.from` without those
        // below it; expiry only takes reservations out, for good.
        *from = q.from;
        fresh.retain(|f| f.number >= q.from && f.expires_ns > now_ns);
        Some(fresh.iter().take(q.limit).map(|f| f.r.clone()).collect())
    }

    /// Whether the poll `q` of `node_id` is known to answer nothing now.
    #[cfg(test)]
    pub fn is_quiet(&self, node_id: &str, q: PollRange) -> bool {
        self.known(node_id, q, 0).is_some_and(|l| l.is_empty())
    }

    /// `r` (with its id) was stored for its node, whose highest number
    /// before it was `after` (0: none; `None`: unknown), by this server or
    /// by another replica (its wake-up carries both): wake the node's polls
    /// held here. When the node's proof covers every number
    /// up to `after` (`after` is below the proof's `from`, or is the last
    /// reservation the proof holds), no reservation of another replica
    /// can lie between, so the proof holds `r` too and the woken poll
    /// answers it without the store. Otherwise the proof is forgotten, as
    /// by [`Wakers::wake`].
    pub fn wrote(&self, r: &Reservation, after: Option<u64>) {
        // Only a poll held now is answered from the proof: with none, a
        // copy kept would only cost memory (any node id can be polled).
        let held = self
            .lock()
            .get(&r.node_id)
            .is_some_and(|tx| tx.receiver_count() > 0);
        {
            let complete = self.complete.load(Ordering::SeqCst);
            let mut quiet = self.quiet();
            let kept = match (quiet.get_mut(&r.node_id), after, r.number()) {
                (Some(Quiet::From { from, fresh }), Some(after), Some(n))
                    if complete && !r.to_delete =>
                {
                    let last = fresh.last().map(|f| f.number);
                    if n < *from && last.is_none() {
                        // Stored before the proof's query, which saw it
                        // (or polls from past it): nothing changes.
                        true
                    } else if last.map_or(after < *from, |l| after == l)
                        && n > after
                        && held
                        && fresh.len() < MAX_FRESH
                        && r.data.get().len() <= MAX_FRESH_DATA
                    {
                        fresh.push(Fresh {
                            number: n,
                            expires_ns: expires_ns(r),
                            r: r.clone(),
                        });
                        true
                    } else {
                        false
                    }
                }
                _ => false,
            };
            if !kept {
                quiet.remove(&r.node_id);
            }
        }
        if let Some(tx) = self.lock().get(&r.node_id) {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Call before querying the store for a poll of `node_id`; hand the
    /// token and the answer to [`Wakers::end_query`].
    pub fn begin_query(&self, node_id: &str) -> u64 {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut quiet = self.quiet();
        if quiet.len() >= MAX_QUIET && !quiet.contains_key(node_id) {
            quiet.clear();
        }
        quiet.insert(node_id.to_string(), Quiet::Pending(token));
        token
    }

    /// Record what the answer `list` to the poll `q` of `node_id` proves,
    /// unless a wake-up for the node (or another query) came since
    /// [`Wakers::begin_query`]. An ordinary poll that answered fewer than
    /// its limit and no pending deletion saw every live reservation of the
    /// node from `q.from`: later ones can only come with a write, which
    /// wakes. (Expiry and confirmed deletions only take reservations out.)
    pub fn end_query(&self, node_id: &str, token: u64, q: PollRange, list: &[Reservation]) {
        let mut quiet = self.quiet();
        if !matches!(quiet.get(node_id), Some(Quiet::Pending(t)) if *t == token) {
            return;
        }
        let proven = !q.all && list.len() < q.limit && !list.iter().any(|r| r.to_delete);
        let numbers: Option<Vec<u64>> = list.iter().map(Reservation::number).collect();
        match (proven, numbers) {
            (true, Some(numbers)) => {
                let from = numbers
                    .into_iter()
                    .map(|n| n.saturating_add(1))
                    .fold(q.from, u64::max);
                quiet.insert(
                    node_id.to_string(),
                    Quiet::From {
                        from,
                        fresh: Vec::new(),
                    },
                );
            }
            _ => {
                quiet.remove(node_id);
            }
        }
    }
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
        assert_eq!(canonical_number("12-1"), Some(12));
        assert_eq!(canonical_number("012-1"), None);
        assert_eq!(canonical_number("+12-1"), None);
    }

    fn answered(numbers: &[u64], to_delete: bool) -> Vec<Reservation> {
        numbers
            .iter()
            .map(|n| {
                let mut r: Reservation = serde_json::from_value(serde_json::json!({
                    "id": format!("{n}-1"), "node_id": "n", "user_id": "u", "type": "volume",
                    "data": {}, "to_delete": to_delete,
                }))
                .unwrap();
                r.id = format!("{n}-1");
                r
            })
            .collect()
    }

    fn range(from: u64, all: bool) -> PollRange {
        PollRange {
            from,
            all,
            limit: 10,
        }
    }

    #[test]
    fn a_quiet_proof_holds_until_a_wake_up() {
        let w = Wakers::default();
        assert!(!w.is_quiet("n", range(1, false)), "nothing known yet");
        let t = w.begin_query("n");
        w.end_query("n", t, range(1, false), &answered(&[3, 5], false));
        assert!(w.is_quiet("n", range(6, false)));
        assert!(w.is_quiet("n", range(9, false)));
        assert!(!w.is_quiet("n", range(5, false)), "5 is live");
        assert!(!w.is_quiet("n", range(6, true)), "all=true answers more");
        assert!(!w.is_quiet("m", range(6, false)), "another node");
        w.wake("n");
        assert!(!w.is_quiet("n", range(6, false)), "a wake-up forgets");

        // An empty answer proves its own `from`.
        let t = w.begin_query("n");
        w.end_query("n", t, range(6, false), &[]);
        assert!(w.is_quiet("n", range(6, false)));
        w.wake_all();
        assert!(!w.is_quiet("n", range(6, false)), "wake_all forgets all");
    }

    #[test]
    fn no_proof_from_a_woken_query_a_full_answer_or_a_pending_deletion() {
        let w = Wakers::default();
        // Woken while the query ran: what it saw may be old.
        let t = w.begin_query("n");
        w.wake("n");
        w.end_query("n", t, range(1, false), &answered(&[3], false));
        assert!(!w.is_quiet("n", range(4, false)));
        // A newer query of the node supersedes an older one.
        let old = w.begin_query("n");
        let new = w.begin_query("n");
        w.end_query("n", old, range(1, false), &answered(&[3], false));
        assert!(!w.is_quiet("n", range(4, false)));
        w.end_query("n", new, range(1, false), &answered(&[3], false));
        assert!(w.is_quiet("n", range(4, false)));
        // As many as the limit: there may be more.
        let t = w.begin_query("n");
        let full: Vec<u64> = (1..=10).collect();
        w.end_query("n", t, range(1, false), &answered(&full, false));
        assert!(!w.is_quiet("n", range(11, false)));
        // A pending deletion is answered whatever the cursor.
        let t = w.begin_query("n");
        w.end_query("n", t, range(1, false), &answered(&[2], true));
        assert!(!w.is_quiet("n", range(3, false)));
        // all=true proves nothing of the ordinary poll.
        let t = w.begin_query("n");
        w.end_query("n", t, range(1, true), &answered(&[2], false));
        assert!(!w.is_quiet("n", range(3, false)));
    }

    /// Reservation `n` of node "n", live for an hour from now.
    fn stored(n: u64) -> Reservation {
        let mut r = answered(&[n], false).remove(0);
        r.created = Some(Utc::now());
        r.duration = 3_600_000_000_000;
        r
    }

    fn numbers(list: Option<Vec<Reservation>>) -> Option<Vec<u64>> {
        list.map(|l| l.iter().filter_map(Reservation::number).collect())
    }

    fn now_ns() -> i64 {
        Utc::now().timestamp_nanos_opt().unwrap()
    }

    #[test]
    fn a_woken_poll_answers_what_this_server_stored_right_after_the_proof() {
        let w = Wakers::default();
        let _held = w.subscribe("n");
        let t = w.begin_query("n");
        w.end_query("n", t, range(6, false), &[]);
        // 6 follows 5, below the proof's 6: nothing can hide in between.
        w.wrote(&stored(6), Some(5));
        w.wrote(&stored(9), Some(6));
        assert_eq!(
            numbers(w.known("n", range(6, false), now_ns())),
            Some(vec![6, 9])
        );
        let one = PollRange {
            from: 6,
            all: false,
            limit: 1,
        };
        assert_eq!(numbers(w.known("n", one, now_ns())), Some(vec![6]), "limit");
        assert_eq!(
            numbers(w.known("n", range(7, false), now_ns())),
            Some(vec![9])
        );
        assert_eq!(
            w.known("n", range(6, false), now_ns()).map(|l| l.len()),
            None,
            "from 7 on now"
        );
        assert_eq!(
            w.known("n", range(7, true), now_ns()).map(|l| l.len()),
            None,
            "all=true"
        );
        assert!(w.is_quiet("n", range(10, false)), "past 9: nothing");
        // Expired by then: not answered.
        w.wrote(&stored(11), Some(9));
        assert_eq!(
            numbers(w.known("n", range(10, false), i64::MAX)),
            Some(vec![])
        );
    }

    #[test]
    fn a_stored_reservation_with_a_gap_before_it_forgets_the_proof() {
        let w = Wakers::default();
        let held = w.subscribe("n");
        let proven = |from| {
            let t = w.begin_query("n");
            w.end_query("n", t, range(from, false), &[]);
        };
        // 7 (another replica's, its NOTIFY not here yet) lies between.
        proven(6);
        w.wrote(&stored(8), Some(7));
        assert_eq!(
            w.known("n", range(6, false), now_ns()).map(|l| l.len()),
            None
        );
        // After a stored one, only its direct successor extends it.
        proven(6);
        w.wrote(&stored(6), Some(0));
        w.wrote(&stored(9), Some(7));
        assert_eq!(
            w.known("n", range(6, false), now_ns()).map(|l| l.len()),
            None
        );
        // A store that does not say what came before.
        proven(6);
        w.wrote(&stored(6), None);
        assert_eq!(
            w.known("n", range(6, false), now_ns()).map(|l| l.len()),
            None
        );
        // A pending deletion is answered whatever the cursor: the store says.
        proven(6);
        let mut gone = stored(6);
        gone.to_delete = true;
        w.wrote(&gone, Some(5));
        assert_eq!(
            w.known("n", range(6, false), now_ns()).map(|l| l.len()),
            None
        );
        // Any other wake-up (another replica's write, a deletion).
        proven(6);
        w.wrote(&stored(6), Some(5));
        w.wake("n");
        assert_eq!(
            w.known("n", range(6, false), now_ns()).map(|l| l.len()),
            None
        );
        // One stored before the proof's query: the proof stands as it is.
        proven(6);
        w.wrote(&stored(4), Some(3));
        assert!(w.is_quiet("n", range(6, false)));
        // Too many kept: forgotten.
        proven(6);
        for n in 6..6 + MAX_FRESH as u64 + 1 {
            w.wrote(&stored(n), Some(n - 1));
        }
        assert_eq!(
            w.known("n", range(6, false), now_ns()).map(|l| l.len()),
            None
        );
        // While wake-ups may be missed: no proof is extended.
        proven(6);
        w.set_complete(false);
        w.set_complete(true);
        w.wrote(&stored(6), Some(5));
        assert_eq!(
            w.known("n", range(6, false), now_ns()).map(|l| l.len()),
            None
        );
        // A user's large data is not held in memory: forgotten.
        proven(6);
        let mut large = stored(6);
        large.data = serde_json::value::to_raw_value(&"x".repeat(MAX_FRESH_DATA)).unwrap();
        w.wrote(&large, Some(5));
        assert_eq!(
            w.known("n", range(6, false), now_ns()).map(|l| l.len()),
            None
        );
        // With no poll of the node held here (any node id can be polled
        // once): nothing kept, forgotten.
        w.release("n", held);
        proven(6);
        w.wrote(&stored(6), Some(5));
        assert_eq!(
            w.known("n", range(6, false), now_ns()).map(|l| l.len()),
            None
        );
    }

    #[test]
    fn nothing_is_held_on_a_proof_while_wake_ups_may_be_missed() {
        let w = Wakers::default();
        let t = w.begin_query("n");
        w.end_query("n", t, range(1, false), &[]);
        w.set_complete(false);
        assert!(!w.is_quiet("n", range(1, false)));
        let t = w.begin_query("n");
        w.end_query("n", t, range(1, false), &[]);
        assert!(!w.is_quiet("n", range(1, false)), "incomplete");
        w.wake_all();
        w.set_complete(true);
        assert!(
            !w.is_quiet("n", range(1, false)),
            "proofs of that time are gone"
        );
    }
}
