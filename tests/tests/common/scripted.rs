//! A scripted explorer on loopback for hostile-explorer tests: it serves
//! poll answers from a script (bad JSON, endless bodies, huge bodies...) and
//! records every result and deletion the agent posts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use reservation::WorkloadResult;

/// One poll answer.
#[derive(Clone)]
pub enum Answer {
    /// This body, as `application/json`.
    Json(String),
    /// `[` and then a byte every 100 ms, forever.
    Endless,
    /// A valid-looking JSON array of `bytes` bytes, streamed.
    Huge(usize),
}

#[derive(Default)]
pub struct Script {
    /// Poll answers served in order; the last one repeats.
    pub answers: Vec<Answer>,
    pub served: usize,
    pub results: Vec<WorkloadResult>,
    /// Ids of the deletion confirmations (`PUT .../deleted`) received.
    pub deleted: Vec<String>,
    /// Their node signatures, in the same order.
    pub deleted_signatures: Vec<String>,
    /// Query strings of the polls received, in order.
    pub polls: Vec<String>,
}

pub type Shared = Arc<Mutex<Script>>;

/// Start it; returns its URL and the script to steer it.
pub async fn start() -> (String, Shared) {
    let script: Shared = Arc::default();
    script
        .lock()
        .unwrap()
        .answers
        .push(Answer::Json("[]".into()));
    let app = axum::Router::new()
        .route("/reservations/:node/poll", get(poll))
        .route(
            "/reservations/:id",
            put(|State(s): State<Shared>, body: String| async move {
                let r: WorkloadResult = serde_json::from_str(&body).unwrap();
                s.lock().unwrap().results.push(r);
                "ok"
            }),
        )
        .route(
            "/reservations/:id/deleted",
            put(
                |State(s): State<Shared>, Path(id): Path<String>, body: String| async move {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    let mut s = s.lock().unwrap();
                    s.deleted.push(id);
                    s.deleted_signatures
                        .push(v["signature"].as_str().unwrap_or_default().to_string());
                    "ok"
                },
            ),
        )
        .with_state(script.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, script)
}

/// Replace the script's answers and start from the first.
pub fn set(script: &Shared, answers: Vec<Answer>) {
    let mut s = script.lock().unwrap();
    s.answers = answers;
    s.served = 0;
}

async fn poll(State(s): State<Shared>, uri: axum::http::Uri) -> Response {
    let answer = {
        let mut s = s.lock().unwrap();
        s.polls.push(uri.query().unwrap_or_default().to_string());
        let i = s.served.min(s.answers.len() - 1);
        s.served += 1;
        s.answers[i].clone()
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let json = [("content-type", "application/json")];
    match answer {
        Answer::Json(body) => (json, body).into_response(),
        Answer::Endless => {
            let stream = futures_util::stream::unfold(0u64, |n| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let chunk = if n == 0 { "[" } else { " " };
                Some((Ok::<_, std::io::Error>(chunk.to_string()), n + 1))
            });
            (json, Body::from_stream(stream)).into_response()
        }
        Answer::Huge(bytes) => {
            let chunk = format!("{{\"id\":\"1-1\",\"pad\":\"{}\"}},", "x".repeat(64 * 1024));
            let n = bytes / chunk.len();
            let stream = futures_util::stream::iter(0..=n).map(move |i| {
                Ok::<_, std::io::Error>(if i == 0 {
                    "[".to_string()
                } else if i == n {
                    "{}]".to_string()
                } else {
                    chunk.clone()
                })
            });
            (json, Body::from_stream(stream)).into_response()
        }
    }
}

use futures_util::StreamExt as _;
