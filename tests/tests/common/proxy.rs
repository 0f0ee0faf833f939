//! A loopback HTTP proxy in front of the real explorer that a test can turn
//! into an outage: every request refused, or only results refused.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

pub const UP: u8 = 0;
/// Every request answers 503.
pub const DOWN: u8 = 1;
/// `PUT` (results, deletions) answers 503; polls pass.
pub const REFUSE_PUTS: u8 = 2;

#[derive(Clone)]
struct Inner {
    upstream: String,
    mode: Arc<AtomicU8>,
    http: reqwest::Client,
}

pub struct Proxy {
    pub url: String,
    mode: Arc<AtomicU8>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let mode = Arc::new(AtomicU8::new(UP));
        let inner = Inner {
            upstream: upstream.to_string(),
            mode: mode.clone(),
            http: reqwest::Client::new(),
        };
        let app = axum::Router::new().fallback(forward).with_state(inner);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Proxy { url, mode }
    }

    pub fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

async fn forward(State(s): State<Inner>, method: Method, uri: Uri, body: Bytes) -> Response {
    let mode = s.mode.load(Ordering::SeqCst);
    if mode == DOWN || (mode == REFUSE_PUTS && method == Method::PUT) {
        return (StatusCode::SERVICE_UNAVAILABLE, "outage drill").into_response();
    }
    let url = format!(
        "{}{}",
        s.upstream,
        uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")
    );
    let m = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
    match s
        .http
        .request(m, url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(r) => {
            let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
            let body = r.bytes().await.unwrap_or_default();
            (status, [("content-type", "application/json")], body).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}
