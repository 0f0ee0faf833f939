//! The explorer's HTTP client (reqwest): poll, results, deletions, node
//! registration and heartbeat. Answers are read with a size cap.

use std::time::Duration;

use reservation::{Reservation, WorkloadResult};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::SourceError;

/// Capacity in the protocol's units: cores, GiB of memory, SSD and HDD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    pub cru: u64,
    pub mru: u64,
    pub sru: u64,
    pub hru: u64,
}

/// `POST /nodes` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub node_id: String,
    pub url: String,
    pub capacity: Capacity,
}

/// What one poll brought: reservations that parsed, deduplicated by id, and
/// how many entries were skipped as malformed or repeated.
#[derive(Debug, Default)]
pub struct PollAnswer {
    pub reservations: Vec<Reservation>,
    pub malformed: usize,
    pub repeated: usize,
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
        let status = resp.status();
        let body = self.read_capped(url, resp, self.max_answer).await?;
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

    /// `GET /reservations/{node}/poll?from=N`.
    pub async fn poll(&self, from: u64) -> Result<PollAnswer, SourceError> {
        let url = format!(
            "{}/reservations/{}/poll?from={from}",
            self.base, self.node_id
        );
        let resp = self
            .http
            .get(&url)
            .timeout(self.long_poll + Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| self.unreachable(&url, e))?;
        let body = self.check(&url, resp).await?;
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

    /// `PUT /reservations/{id}/deleted`.
    pub async fn put_deleted(&self, id: &str) -> Result<(), SourceError> {
        let url = format!("{}/reservations/{id}/deleted", self.base);
        self.send(&url, self.http.put(&url)).await
    }

    /// `POST /nodes`.
    pub async fn register(&self, reg: &NodeRegistration) -> Result<(), SourceError> {
        let url = format!("{}/nodes", self.base);
        self.send(&url, self.http.post(&url).json(reg)).await
    }

    /// `POST /nodes/{id}/uptime` with uptime seconds and used capacity.
    pub async fn heartbeat(&self, uptime_s: u64, used: Capacity) -> Result<(), SourceError> {
        let url = format!("{}/nodes/{}/uptime", self.base, self.node_id);
        let body = serde_json::json!({"uptime": uptime_s, "used": used});
        self.send(&url, self.http.post(&url).json(&body)).await
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
