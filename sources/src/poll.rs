//! The poll: [`PollQuery`] (which page), the request on [`ExplorerClient`]
//! and its capped, element-by-element answer ([`parse_poll_answer`]), and
//! `PollSource`, which long-polls the explorer. At start it resyncs with
//! `from=0&all=true`, page after page, so nothing is missed across a
//! restart; then it polls from the cursor. An answer too large to read is
//! asked for again with fewer entries, down to one, so a flood of large
//! reservations never stops the node for good. It backs off with jitter
//! while the explorer is unreachable and never ends on an error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reservation::Reservation;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{Backoff, ExplorerClient, ReservationSource, SourceError, Work};

/// What one poll brought: reservations that parsed, deduplicated by id, and
/// how many entries were skipped as malformed or repeated.
#[derive(Debug, Default)]
pub struct PollAnswer {
    pub reservations: Vec<Reservation>,
    pub malformed: usize,
    pub repeated: usize,
}

/// The largest reservation an honest explorer serves, in bytes: `data` of
/// at most 64 KiB (the node refuses more) plus the other fields. A poll
/// answer of `limit` entries is never read past `limit` times this.
pub const MAX_RESERVATION_BYTES: usize = 64 * 1024 + 4 * 1024;

/// Entries asked for in one poll (the protocol's default and maximum).
pub const POLL_LIMIT: usize = 1000;

/// Which page of the poll to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollQuery {
    /// Reservation number to start from.
    pub from: u64,
    /// `all=true`: expired and deleted ones too (the resync at start).
    pub all: bool,
    /// At most this many entries.
    pub limit: usize,
}

impl PollQuery {
    /// Bytes read of an answer to this query before it is dropped as too
    /// large: `limit` × the largest reservation, at most `max_answer`. A
    /// single entry may use the whole `max_answer`, so one oversized
    /// reservation can still be read and refused with a signed error.
    pub fn byte_cap(&self, max_answer: usize) -> usize {
        if self.limit <= 1 {
            max_answer
        } else {
            self.limit
                .saturating_mul(MAX_RESERVATION_BYTES)
                .min(max_answer)
        }
    }
}

impl ExplorerClient {
    /// `GET /reservations/{node}/poll?from=N&limit=L[&all=true]`, read up to
    /// [`PollQuery::byte_cap`].
    /// On a failure that fails over, the next explorer is in use for the
    /// next poll.
    pub async fn poll(&self, q: PollQuery) -> Result<PollAnswer, SourceError> {
        let (i, base) = self.explorers.current();
        let answer = self.poll_at(base, q).await;
        if let Err(e) = &answer {
            if e.fails_over() {
                self.explorers.fail_over(i);
            }
        }
        answer
    }

    async fn poll_at(&self, base: &str, q: PollQuery) -> Result<PollAnswer, SourceError> {
        let url = format!(
            "{}/reservations/{}/poll?from={}&limit={}{}",
            base,
            self.node_id,
            q.from,
            q.limit,
            if q.all { "&all=true" } else { "" }
        );
        let resp = self
            .http
            .get(&url)
            .timeout(self.long_poll + Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| self.unreachable(&url, e))?;
        let body = self
            .check_capped(&url, resp, q.byte_cap(self.max_answer))
            .await?;
        parse_poll_answer(&url, &body)
    }
}

/// What the poll loop last saw, for `agentctl status` and metrics.
#[derive(Debug, Default)]
pub struct PollStatus {
    last_ok_ms: AtomicI64,
    failures: AtomicU64,
    last_error: Mutex<String>,
    explorers: Option<Arc<crate::explorer_client::Explorers>>,
}

impl PollStatus {
    /// The explorer URL the node uses now (of those it was given).
    pub fn explorer_in_use(&self) -> Option<String> {
        self.explorers.as_ref().map(|e| e.current().1.to_string())
    }

    /// When a poll last succeeded.
    pub fn last_ok(&self) -> Option<DateTime<Utc>> {
        match self.last_ok_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }

    /// Polls failed in a row, and the last error.
    pub fn failures(&self) -> (u64, String) {
        let err = self
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        (self.failures.load(Ordering::Relaxed), err)
    }

    fn ok(&self) {
        self.last_ok_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
    }

    fn failed(&self, e: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.last_error.lock() {
            *l = e;
        }
    }
}

/// The pause after a poll answer with nothing new (see
/// `PollSource::idle_pause`).
pub const IDLE_PAUSE: Duration = Duration::from_millis(200);

/// An entry handed over longer ago than this is handed over again if the
/// explorer still sends it.
const REHAND_AFTER: Duration = Duration::from_secs(30);

/// What an entry said when it was handed over: its deletion flag and the
/// signatures the engine judges. The explorer decides ids, so an id alone
/// says nothing: a forged deletion of an id must not hide the user's real
/// one that follows under the same id.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Said {
    to_delete: bool,
    signature: String,
    delete_signature: Option<String>,
}

impl Said {
    fn of(r: &Reservation) -> Self {
        Said {
            to_delete: r.to_delete,
            signature: r.signature.clone(),
            delete_signature: r.delete_signature.clone(),
        }
    }
}

/// Long-polls `GET /reservations/{node}/poll`.
pub struct PollSource {
    client: ExplorerClient,
    cursor: u64,
    /// `Some(from)` while resyncing (`all=true`, page after page from 0);
    /// `None` once the explorer's whole history has been handed over.
    resync: Option<u64>,
    /// Entries asked for per page: [`POLL_LIMIT`], halved (down to 1) while
    /// answers are too large to read, doubled back after each good one.
    limit: usize,
    backoff: Backoff,
    status: Arc<PollStatus>,
    /// Pause after an answer that repeats exactly what was already handed
    /// over (a pending deletion the explorer sends again until our
    /// `PUT /deleted` reaches it).
    ///
    /// The trade-off: while a deletion is pending the explorer answers a
    /// long poll at once, so without some pacing the source would busy-loop
    /// against it; but a pause delays new work submitted meanwhile. So the
    /// pause is taken only on an answer with nothing new (an answer with
    /// anything new is handed over at once and polled after without a
    /// pause), and it is short: new work waits at most this long, and only
    /// while a deletion is pending.
    idle_pause: Duration,
    /// What was handed over from the last answers, by id: what it said
    /// ([`Said`]) and when. Only entries of the latest answer are kept
    /// (bounded by the page size); one handed over longer than
    /// [`REHAND_AFTER`] ago is handed over again (the engine may have failed
    /// to record it).
    handed: HashMap<String, (Said, Instant)>,
    /// Polls failed over to the next explorer in a row: once every one was
    /// tried, back off.
    failed_over: usize,
}

impl PollSource {
    /// Start at `cursor` (the persisted one) after a paged resync from 0.
    pub fn new(client: ExplorerClient, cursor: u64) -> Self {
        let status = Arc::new(PollStatus {
            explorers: Some(client.explorers()),
            ..PollStatus::default()
        });
        PollSource {
            client,
            cursor,
            resync: Some(0),
            limit: POLL_LIMIT,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            status,
            failed_over: 0,
            idle_pause: IDLE_PAUSE,
            handed: HashMap::new(),
        }
    }

    /// Shorter backoff for tests.
    pub fn with_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = Backoff::new(base, max);
        self
    }

    /// Another pause after an answer with nothing new (tests).
    pub fn with_idle_pause(mut self, d: Duration) -> Self {
        self.idle_pause = d;
        self
    }

    /// A smaller page size (tests).
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit.clamp(1, POLL_LIMIT);
        self
    }

    pub fn status(&self) -> Arc<PollStatus> {
        self.status.clone()
    }

    fn query(&self) -> PollQuery {
        match self.resync {
            Some(from) => PollQuery {
                from,
                all: true,
                limit: self.limit,
            },
            None => PollQuery {
                from: self.cursor,
                all: false,
                limit: self.limit,
            },
        }
    }
}

#[async_trait]
impl ReservationSource for PollSource {
    async fn next(&mut self) -> Option<Work> {
        loop {
            let q = self.query();
            let answer = match self.client.poll(q).await {
                Ok(a) => a,
                Err(e @ SourceError::TooLarge { .. }) if q.limit > 1 => {
                    // Never drop work for good: ask for fewer entries until
                    // a page fits (one entry may use the whole cap).
                    self.limit = (q.limit / 2).max(1);
                    tracing::warn!(
                        error = %e,
                        from = q.from,
                        limit = self.limit,
                        "poll answer larger than its cap; asking again for fewer entries"
                    );
                    continue;
                }
                Err(e) => {
                    self.status.failed(e.to_string());
                    let others = self.client.explorers.urls().len().saturating_sub(1);
                    if e.fails_over() && self.failed_over < others {
                        // Another replica may answer: ask it at once.
                        self.failed_over += 1;
                        tracing::warn!(error = %e, from = q.from, next = %self.client.base(), "poll failed; polling the next explorer");
                        continue;
                    }
                    self.failed_over = 0;
                    let delay = self.backoff.next_delay();
                    tracing::warn!(error = %e, from = q.from, limit = q.limit, retry_in_ms = delay.as_millis() as u64, "poll failed");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            self.failed_over = 0;
            self.status.ok();
            self.backoff.reset();
            self.limit = self.limit.saturating_mul(2).min(POLL_LIMIT);
            let before = self.cursor;
            // The cursor follows ids of the grammar only, of reservations
            // addressed to this node: a malformed id is skipped by the
            // engine, and another node's entry (a wrong or hostile explorer
            // URL) is refused, so neither may move the cursor past work.
            let last = answer
                .reservations
                .iter()
                .filter(|r| reservation::valid_id(&r.id) && r.node_id == self.client.node_id)
                .filter_map(|r| r.number())
                .max();
            if let Some(n) = last {
                self.cursor = self.cursor.max(n.saturating_add(1));
            }
            let entries = answer.reservations.len() + answer.malformed + answer.repeated;
            // A full page may have more after it.
            let full = entries >= q.limit;
            if let Some(from) = self.resync {
                let next = last.map(|n| n.saturating_add(1)).unwrap_or(from);
                if full && next > from {
                    self.resync = Some(next);
                } else {
                    self.resync = None;
                }
                tracing::debug!(
                    from,
                    count = answer.reservations.len(),
                    cursor = self.cursor,
                    done = self.resync.is_none(),
                    "resync page"
                );
                return Some(Work::Poll {
                    reservations: answer.reservations,
                    cursor: self.cursor,
                    synced: self.resync.is_none(),
                });
            }
            if answer.reservations.is_empty() {
                continue;
            }
            // Hand over only what is new: an id not handed over yet, or
            // handed over saying something else (or long ago).
            let now = Instant::now();
            let mut handed = HashMap::with_capacity(answer.reservations.len());
            let mut fresh = Vec::new();
            for r in answer.reservations {
                let said = Said::of(&r);
                let seen = self
                    .handed
                    .remove(&r.id)
                    .filter(|(was, at)| *was == said && now.duration_since(*at) < REHAND_AFTER);
                match seen {
                    Some(entry) => {
                        handed.insert(r.id.clone(), entry);
                    }
                    None => {
                        handed.insert(r.id.clone(), (said, now));
                        fresh.push(r);
                    }
                }
            }
            self.handed = handed;
            if fresh.is_empty() {
                // Exactly what was handed over already: the explorer
                // answers at once while a deletion is pending, so pace
                // the next poll (briefly; see `idle_pause`).
                if self.cursor == before && !full {
                    tokio::time::sleep(self.idle_pause).await;
                }
                continue;
            }
            let answer = PollAnswer {
                reservations: fresh,
                ..answer
            };
            tracing::debug!(
                from = q.from,
                count = answer.reservations.len(),
                cursor = self.cursor,
                "poll answer"
            );
            return Some(Work::Poll {
                reservations: answer.reservations,
                cursor: self.cursor,
                synced: true,
            });
        }
    }
}

/// Parse a poll answer: the array must be JSON, each element that fails to
/// parse as a reservation is logged and skipped, repeats of an id are
/// dropped (the first one wins).
pub fn parse_poll_answer(url: &str, body: &[u8]) -> Result<PollAnswer, SourceError> {
    let items: Vec<&RawValue> =
        serde_json::from_slice(body).map_err(|e| SourceError::Malformed {
            url: url.into(),
            reason: e.to_string(),
        })?;
    let mut answer = PollAnswer::default();
    let mut seen = std::collections::HashSet::new();
    for raw in items {
        match serde_json::from_str::<Reservation>(raw.get()) {
            Ok(r) => {
                if seen.insert(r.id.clone()) {
                    answer.reservations.push(r);
                } else {
                    answer.repeated += 1;
                }
            }
            Err(e) => {
                answer.malformed += 1;
                let id = serde_json::from_str::<IdOnly>(raw.get())
                    .map(|i| i.id)
                    .unwrap_or_else(|_| "?".into());
                tracing::warn!(reservation = %id, error = %e, "skipping malformed reservation in poll answer");
            }
        }
    }
    if answer.repeated > 0 {
        tracing::warn!(
            repeated = answer.repeated,
            "poll answer repeated reservations; kept one of each"
        );
    }
    Ok(answer)
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(id: &str) -> String {
        format!(
            r#"{{"id":"{id}","node_id":"n","user_id":"u","type":"volume","data":{{"size": 1}},"created":"2026-11-25T11:00:00Z","duration":1,"signature":"","to_delete":false}}"#
        )
    }

    #[test]
    fn malformed_elements_are_skipped_not_fatal() {
        let body = format!(
            r#"[{}, {{"id":"2-1","bogus":1}}, {{"id":3}}, {}, {}]"#,
            good("1-1"),
            good("4-1"),
            good("1-1")
        );
        let a = parse_poll_answer("u", body.as_bytes()).unwrap();
        let ids: Vec<_> = a.reservations.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["1-1", "4-1"]);
        assert_eq!(a.malformed, 2);
        assert_eq!(a.repeated, 1);
        assert_eq!(a.reservations[0].data.get(), r#"{"size": 1}"#);
    }

    #[test]
    fn bad_json_is_an_error() {
        assert!(parse_poll_answer("u", b"[{").is_err());
        assert!(parse_poll_answer("u", b"{}").is_err());
    }

    /// An explorer stand-in: every poll answers a pending deletion of 1-1
    /// at once, and from when `more` is set a new reservation 2-1 too.
    async fn pending_deletion_explorer(more: Arc<std::sync::atomic::AtomicBool>) -> String {
        use axum::routing::get;
        let answer = move || {
            let more = more.clone();
            async move {
                let del = good("1-1").replace("\"to_delete\":false", "\"to_delete\":true");
                if more.load(Ordering::SeqCst) {
                    format!("[{del},{}]", good("2-1"))
                } else {
                    format!("[{del}]")
                }
            }
        };
        let app = axum::Router::new().route("/reservations/:id/poll", get(answer));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    }

    /// An explorer stand-in that answers `answers` in turn (the last one
    /// again and again).
    async fn explorer_answering(answers: Vec<String>) -> String {
        use axum::routing::get;
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let answer = move || {
            let i = n.fetch_add(1, Ordering::SeqCst);
            let body = answers[i.min(answers.len() - 1)].clone();
            async move { body }
        };
        let app = axum::Router::new().route("/reservations/:id/poll", get(answer));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        url
    }

    fn cursor(w: Option<Work>) -> u64 {
        match w {
            Some(Work::Poll { cursor, .. }) => cursor,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn another_nodes_entry_never_moves_the_cursor() {
        // A wrong or hostile explorer URL answers an entry for another node
        // with a huge number: the engine refuses it, and the cursor stays
        // where this node's own work puts it.
        let foreign =
            good("18446744073709551614-1").replace("\"node_id\":\"n\"", "\"node_id\":\"m\"");
        let url = explorer_answering(vec![format!("[{},{foreign}]", good("2-1"))]).await;
        let client = ExplorerClient::new(&url, "n", 1 << 20).unwrap();
        let mut source = PollSource::new(client, 0);
        assert_eq!(cursor(source.next().await), 3);
    }

    #[tokio::test]
    async fn a_deletion_that_says_something_else_under_the_same_id_is_handed_over() {
        // A forged deletion of 1-1, then the user's own under the same id:
        // the second says something else and must reach the engine at once.
        let del = |sig: &str| {
            good("1-1").replace(
                "\"to_delete\":false",
                &format!("\"to_delete\":true,\"delete_signature\":\"{sig}\""),
            )
        };
        let url = explorer_answering(vec![
            "[]".into(),
            format!("[{}]", del("forged")),
            format!("[{}]", del("real")),
        ])
        .await;
        let client = ExplorerClient::new(&url, "n", 1 << 20).unwrap();
        let mut source = PollSource::new(client, 0);
        source.next().await; // the (empty) resync
        let sigs = |w: Option<Work>| match w {
            Some(Work::Poll { reservations, .. }) => reservations
                .into_iter()
                .map(|r| r.delete_signature.unwrap_or_default())
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(sigs(source.next().await), ["forged"]);
        assert_eq!(sigs(source.next().await), ["real"]);
    }

    fn ids(w: Option<Work>) -> Vec<(String, bool)> {
        match w {
            Some(Work::Poll { reservations, .. }) => reservations
                .into_iter()
                .map(|r| (r.id, r.to_delete))
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn new_work_during_a_pending_deletion_is_handed_over_promptly() {
        let more = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let url = pending_deletion_explorer(more.clone()).await;
        let client = ExplorerClient::new(&url, "n", 1 << 20).unwrap();
        let mut source = PollSource::new(client, 0);
        // The resync, then the pending deletion once.
        assert_eq!(ids(source.next().await), [("1-1".to_string(), true)]);
        assert_eq!(ids(source.next().await), [("1-1".to_string(), true)]);
        // Submitted while the explorer keeps repeating the deletion.
        let m = more.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            m.store(true, Ordering::SeqCst);
        });
        let started = Instant::now();
        let next = source.next().await;
        let waited = started.elapsed();
        // Only what is new is handed over, and without the old 1 s pause.
        assert_eq!(ids(next), [("2-1".to_string(), false)]);
        assert!(
            waited < IDLE_PAUSE + Duration::from_millis(250),
            "{waited:?}"
        );
    }
}
