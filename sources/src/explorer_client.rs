//! The explorer's HTTP client (reqwest), one type for one node: connection
//! settings, answers read under a size cap, status checks, and the node's
//! outgoing messages: signed results, deletion confirmations, registration
//! and heartbeat. The poll request that feeds [`crate::PollSource`] is in
//! [`crate::poll`], on the same type.

use std::time::Duration;

use reservation::api::DeletedConfirmation;
use reservation::node::{Registration, Uptime};
use reservation::WorkloadResult;

use crate::SourceError;

/// Client of one explorer for one node.
#[derive(Clone)]
pub struct ExplorerClient {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) node_id: String,
    pub(crate) max_answer: usize,
    pub(crate) long_poll: Duration,
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

    pub(crate) fn unreachable(&self, url: &str, e: reqwest::Error) -> SourceError {
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

    pub(crate) async fn check_capped(
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
        let body = DeletedConfirmation {
            signature: signature.to_string(),
        };
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
