//! The explorer's HTTP client (reqwest): paged polls, results, signed
//! deletion confirmations, node registration and heartbeat. Answers are
//! read with a size cap.

use std::time::Duration;

use reservation::node::{Registration, Uptime};
use reservation::{Reservation, WorkloadResult};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::SourceError;

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

/// Client of one explorer for one node.
#[derive(Clone)]
pub struct ExplorerClient {
    http: reqwest::Client,
    base: String,
    node_id: String,
    max_answer: usize,
    long_poll: Duration,
}

impl ExplorerClient {
    /// `base` like `http://127.0.0.1:7700`. Poll answers larger than
    /// `max_answer` bytes are dropped.
    pub fn new(base: &str, node_id: &str, max_answer: usize) -> Result<Self, SourceError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("node-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SourceError::Unreachable {
                url: base.into(),
                reason: e.to_string(),
            })?;
        Ok(ExplorerClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            node_id: node_id.to_string(),
            max_answer,
            long_poll: Duration::from_secs(20),
        })
    }

    /// How long the explorer may hold a poll; the request times out 10 s
    /// after that.
    pub fn with_long_poll(mut self, d: Duration) -> Self {
        self.long_poll = d;
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, url: &str, e: reqwest::Error) -> SourceError {
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            reason = format!("{reason}: {s}");
            src = s.source();
        }
        SourceError::Unreachable {
            url: url.to_string(),
            reason,
        }
    }

    /// Read the body of `resp`, at most `limit` bytes.
    async fn read_capped(
        &self,
        url: &str,
        mut resp: reqwest::Response,
        limit: usize,
    ) -> Result<Vec<u8>, SourceError> {
        if resp.content_length().is_some_and(|n| n as usize > limit) {
            return Err(SourceError::TooLarge {
                url: url.into(),
                limit,
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(url, e))? {
            if body.len() + chunk.len() > limit {
                return Err(SourceError::TooLarge {
                    url: url.into(),
                    limit,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    async fn check(&self, url: &str, resp: reqwest::Response) -> Result<Vec<u8>, SourceError> {
        self.check_capped(url, resp, self.max_answer).await
    }

    async fn check_capped(
        &self,
        url: &str,
        resp: reqwest::Response,
        limit: usize,
    ) -> Result<Vec<u8>, SourceError> {
        let status = resp.status();
        let body = self.read_capped(url, resp, limit).await?;
        if !status.is_success() {
            return Err(SourceError::Status {
                url: url.into(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body[..body.len().min(512)])
                    .trim()
                    .to_string(),
            });
        }
        Ok(body)
    }

    /// The configured cap on one answer, in bytes.
    pub fn max_answer(&self) -> usize {
        self.max_answer
    }

    /// `GET /reservations/{node}/poll?from=N&limit=L[&all=true]`, read up to
    /// [`PollQuery::byte_cap`].
    pub async fn poll(&self, q: PollQuery) -> Result<PollAnswer, SourceError> {
        let url = format!(
            "{}/reservations/{}/poll?from={}&limit={}{}",
            self.base,
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

    /// `PUT /reservations/{id}` with a signed result.
    pub async fn put_result(&self, result: &WorkloadResult) -> Result<(), SourceError> {
        let url = format!("{}/reservations/{}", self.base, result.id);
        let body = serde_json::to_vec(result).map_err(|e| SourceError::Malformed {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        self.send(&url, self.http.put(&url).body(body)).await
    }

    /// `PUT /reservations/{id}/deleted` with the node's signed
    /// confirmation.
    pub async fn put_deleted(&self, id: &str, signature: &str) -> Result<(), SourceError> {
        let url = format!("{}/reservations/{id}/deleted", self.base);
        let body = serde_json::json!({ "signature": signature });
        self.send(&url, self.http.put(&url).json(&body)).await
    }

    /// `POST /nodes` with a signed registration.
    pub async fn register(&self, reg: &Registration) -> Result<(), SourceError> {
        let url = format!("{}/nodes", self.base);
        self.send(&url, self.http.post(&url).json(reg)).await
    }

    /// `POST /nodes/{id}/uptime` with a signed heartbeat.
    pub async fn heartbeat(&self, up: &Uptime) -> Result<(), SourceError> {
        let url = format!("{}/nodes/{}/uptime", self.base, self.node_id);
        self.send(&url, self.http.post(&url).json(up)).await
    }

    async fn send(&self, url: &str, req: reqwest::RequestBuilder) -> Result<(), SourceError> {
        let resp = req
            .header("content-type", "application/json")
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| self.unreachable(url, e))?;
        self.check(url, resp).await.map(|_| ())
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
}
