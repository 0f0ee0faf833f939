//! The CLI's HTTP client for the explorer, and the two error kinds that
//! pick the exit code: [`Refused`] (1) and [`Unreachable`] (2).

use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::{Method, StatusCode, Url};

/// The explorer answered with a 4xx: the request was wrong. Exit code 1.
#[derive(Debug)]
pub struct Refused(pub String);

/// The explorer could not be reached, failed (5xx), or is busy (`503` with
/// `Retry-After`: nothing was done, the same command may be run again
/// after that many seconds). Exit code 2.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Refused {}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Unreachable {}

pub struct Client {
    base: Url,
    http: reqwest::Client,
}

/// The error and its causes on one line (reqwest's own text alone says
/// "error sending request" and hides the "connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

impl Client {
    pub fn new(explorer: &str) -> Result<Client> {
        let base = Url::parse(explorer)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--explorer {explorer:?} is not an http(s) URL; pass e.g. --explorer http://127.0.0.1:7700 (or set EXPLORER_URL)"
                )
            })?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client { base, http })
    }

    /// `base` + the path segments, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut u = self.base.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty().extend(segments);
        }
        u
    }

    /// Send a request; a 2xx answers `(status, body)`, anything else is a
    /// [`Refused`] or [`Unreachable`] that names the URL and how to fix it.
    pub async fn request(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<String>,
    ) -> Result<(StatusCode, String)> {
        let url = self.url(segments);
        let mut req = self.http.request(method.clone(), url.clone());
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        let unreachable = |e: &dyn std::error::Error| {
            Unreachable(format!(
                "cannot reach the explorer at {}: {}\n\
                 start one with `explorer serve`, or point --explorer (env EXPLORER_URL) at a running explorer",
                self.base,
                chain(e)
            ))
        };
        let resp = req.send().await.map_err(|e| unreachable(&e))?;
        let status = resp.status();
        let retry_after = retry_after(&resp);
        let text = resp.text().await.map_err(|e| unreachable(&e))?;
        let msg = text.trim();
        if status.is_client_error() {
            return Err(Refused(format!(
                "the explorer refused {method} {url}: {status}: {msg}"
            ))
            .into());
        }
        if let (StatusCode::SERVICE_UNAVAILABLE, Some(secs)) = (status, retry_after) {
            return Err(Unreachable(format!(
                "explorer busy, retry after {secs} s: the explorer at {} answered {method} {url} with {status}: {msg}",
                self.base
            ))
            .into());
        }
        if !status.is_success() {
            return Err(Unreachable(format!(
                "the explorer at {} failed on {method} {url}: {status}: {msg}\n\
                 check the explorer's log, or point --explorer (env EXPLORER_URL) at another one",
                self.base
            ))
            .into());
        }
        Ok((status, text))
    }
}

/// The whole seconds of a `Retry-After` header, if it has that form (the
/// explorer sends seconds, never an HTTP date).
fn retry_after(resp: &reqwest::Response) -> Option<u64> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
