//! The explorer's HTTP client (reqwest), one type for one node: connection
//! settings, answers read under a size cap, status checks, and the node's
//! outgoing messages: signed results, deletion confirmations, registration
//! and heartbeat. The poll request that feeds [`crate::PollSource`] is in
//! [`crate::poll`], on the same type.
//!
//! Failover: the client may be given several explorer URLs (replicas of one
//! explorer). Every request goes to the one in use; when it cannot be
//! reached or answers 5xx, the client moves to the next (shared by every
//! clone, so the poll, the delivery of results and the heartbeat follow
//! together). A message is tried on each URL in turn before it fails; a
//! poll fails at once and the poll loop asks the next URL.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reservation::api::DeletedConfirmation;
use reservation::node::{Registration, Uptime};
use reservation::WorkloadResult;

use crate::SourceError;

/// The explorer URLs a client may use, and which one is in use.
#[derive(Debug)]
pub struct Explorers {
    urls: Vec<String>,
    current: AtomicUsize,
}

impl Explorers {
    /// Comma-separated URLs (one is fine); trailing slashes dropped.
    pub fn parse(list: &str) -> Self {
        let urls = list
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        Explorers {
            urls,
            current: AtomicUsize::new(0),
        }
    }

    /// Every URL, in the order given.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The URL in use now, with its index.
    pub fn current(&self) -> (usize, &str) {
        let i = self.current.load(Ordering::Relaxed) % self.urls.len().max(1);
        (i, self.urls.get(i).map(String::as_str).unwrap_or(""))
    }

    /// The URL at `failed` did not answer: move to the next one, unless
    /// another request already moved on. `true` when there is another URL.
    pub fn fail_over(&self, failed: usize) -> bool {
        let n = self.urls.len();
        if n < 2 {
            return false;
        }
        let next = (failed + 1) % n;
        if self
            .current
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::warn!(
                failed = %self.urls[failed],
                next = %self.urls[next],
                "explorer failed; moving to the next one"
            );
        }
        true
    }
}

/// Client of one explorer (or of several replicas of it, failing over)
/// for one node.
#[derive(Clone)]
pub struct ExplorerClient {
    pub(crate) http: reqwest::Client,
    pub(crate) explorers: Arc<Explorers>,
    pub(crate) node_id: String,
    pub(crate) max_answer: usize,
    pub(crate) long_poll: Duration,
}

impl SourceError {
    /// Whether another replica may answer where this one failed: it could
    /// not be reached (or timed out), or failed (5xx). A 4xx is the
    /// explorer's answer to the request, the same on every replica.
    pub fn fails_over(&self) -> bool {
        match self {
            SourceError::Unreachable { .. } => true,
            SourceError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

impl ExplorerClient {
    /// `base` like `http://127.0.0.1:7700`, or several replicas' URLs
    /// separated by commas (`http://a:7700,http://b:7700`), tried in that
    /// order. Poll answers larger than `max_answer` bytes are dropped.
    pub fn new(base: &str, node_id: &str, max_answer: usize) -> Result<Self, SourceError> {
        let explorers = Explorers::parse(base);
        if explorers.urls.is_empty() {
            return Err(SourceError::Unreachable {
                url: base.into(),
                reason: "no explorer URL given".into(),
            });
        }
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
            explorers: Arc::new(explorers),
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

    /// The explorer URL in use now.
    pub fn base(&self) -> &str {
        self.explorers.current().1
    }

    /// Every explorer URL and which one is in use (shared by clones).
    pub fn explorers(&self) -> Arc<Explorers> {
        self.explorers.clone()
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
        let path = format!("/reservations/{}", result.id);
        let body = serde_json::to_vec(result).map_err(|e| SourceError::Malformed {
            url: path.clone(),
            reason: e.to_string(),
        })?;
        self.send(reqwest::Method::PUT, &path, body).await
    }

    /// `PUT /reservations/{id}/deleted` with the node's signed
    /// confirmation.
    pub async fn put_deleted(&self, id: &str, signature: &str) -> Result<(), SourceError> {
        let body = DeletedConfirmation {
            signature: signature.to_string(),
        };
        self.send(
            reqwest::Method::PUT,
            &format!("/reservations/{id}/deleted"),
            to_body(&body),
        )
        .await
    }

    /// `POST /nodes` with a signed registration.
    pub async fn register(&self, reg: &Registration) -> Result<(), SourceError> {
        self.send(reqwest::Method::POST, "/nodes", to_body(reg))
            .await
    }

    /// `POST /nodes/{id}/uptime` with a signed heartbeat.
    pub async fn heartbeat(&self, up: &Uptime) -> Result<(), SourceError> {
        let path = format!("/nodes/{}/uptime", self.node_id);
        self.send(reqwest::Method::POST, &path, to_body(up)).await
    }

    /// Send `body` to `path` on the explorer in use; where it fails over
    /// ([`SourceError::fails_over`]), on the next one, each URL once.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(), SourceError> {
        let mut tries = self.explorers.urls.len();
        loop {
            let (i, base) = self.explorers.current();
            let url = format!("{base}{path}");
            let sent = self
                .http
                .request(method.clone(), &url)
                .header("content-type", "application/json")
                .body(body.clone())
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            let done = match sent {
                Ok(resp) => self.check(&url, resp).await.map(|_| ()),
                Err(e) => Err(self.unreachable(&url, e)),
            };
            match done {
                Err(e) if e.fails_over() && tries > 1 && self.explorers.fail_over(i) => {
                    tries -= 1;
                    tracing::debug!(error = %e, "trying the next explorer");
                }
                other => return other,
            }
        }
    }
}

/// The JSON body of a message (the node's own types always serialize).
fn to_body<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PollQuery;
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn urls_parse_and_fail_over_in_turn() {
        let e = Explorers::parse(" http://a:1/, ,http://b:2 ");
        assert_eq!(e.urls(), ["http://a:1", "http://b:2"]);
        assert_eq!(e.current(), (0, "http://a:1"));
        assert!(e.fail_over(0));
        assert_eq!(e.current(), (1, "http://b:2"));
        // A late failure of the old one does not move it again.
        assert!(e.fail_over(0));
        assert_eq!(e.current(), (1, "http://b:2"));
        assert!(e.fail_over(1));
        assert_eq!(e.current(), (0, "http://a:1"));
        let one = Explorers::parse("http://a:1");
        assert!(!one.fail_over(0));
        assert_eq!(one.current(), (0, "http://a:1"));
    }

    /// An explorer stand-in answering `status` to every route, counting.
    async fn stand_in(status: StatusCode) -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let answer = move || {
            let h = h.clone();
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                (status, "[]")
            }
        };
        let app = axum::Router::new()
            .route("/nodes/:id/uptime", post(answer.clone()))
            .route("/reservations/:id/poll", get(answer));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        (url, hits)
    }

    fn dead_url() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }

    fn uptime() -> Uptime {
        let node = reservation::Identity::generate();
        Uptime::signed(&node, 1, &reservation::Capacity::default(), 1)
    }

    const Q: PollQuery = PollQuery {
        from: 1,
        all: false,
        limit: 10,
    };

    #[tokio::test]
    async fn messages_go_to_whichever_explorer_answers() {
        let dead = dead_url();
        let (live, hits) = stand_in(StatusCode::OK).await;
        let c = ExplorerClient::new(&format!("{dead},{live}"), "n", 1 << 20).unwrap();
        c.heartbeat(&uptime()).await.unwrap();
        assert_eq!(c.base(), live);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // Clones share the one in use: the poll goes there too.
        c.clone().poll(Q).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        // Every one down: the error of the last tried.
        let c = ExplorerClient::new(&format!("{dead},{}", dead_url()), "n", 1 << 20).unwrap();
        assert!(c.heartbeat(&uptime()).await.unwrap_err().fails_over());
    }

    #[tokio::test]
    async fn a_poll_that_fails_moves_the_next_poll_but_a_4xx_does_not() {
        let (failing, failed_hits) = stand_in(StatusCode::SERVICE_UNAVAILABLE).await;
        let (live, hits) = stand_in(StatusCode::OK).await;
        let c = ExplorerClient::new(&format!("{failing},{live}"), "n", 1 << 20).unwrap();
        assert!(c.poll(Q).await.is_err());
        assert_eq!(c.base(), live);
        c.poll(Q).await.unwrap();
        assert_eq!(
            (
                failed_hits.load(Ordering::SeqCst),
                hits.load(Ordering::SeqCst)
            ),
            (1, 1)
        );

        let (refusing, _) = stand_in(StatusCode::BAD_REQUEST).await;
        let c = ExplorerClient::new(&format!("{refusing},{live}"), "n", 1 << 20).unwrap();
        let e = c.heartbeat(&uptime()).await.unwrap_err();
        assert!(!e.fails_over(), "{e}");
        assert_eq!(c.base(), refusing, "a refusal is the same on every replica");
        assert!(c.poll(Q).await.is_err(), "400 is a refusal");
        assert_eq!(c.base(), refusing);
    }
}
