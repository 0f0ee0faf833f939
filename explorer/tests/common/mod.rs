//! Shared test helpers: an explorer served on 127.0.0.1 port 0 from a temp
//! dir, and signed reservations with chosen raw `data` bytes.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use explorer::{ExplorerError, ServerConfig};
use reservation::{Identity, Reservation};
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Server {
    pub url: String,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), ExplorerError>>,
}

pub async fn start(dir: &Path, long_poll: Duration) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = oneshot::channel::<()>();
    let cfg = ServerConfig {
        long_poll,
        ..ServerConfig::new(dir)
    };
    let handle = tokio::spawn(explorer::serve(listener, cfg, async {
        let _ = rx.await;
    }));
    Server { url, stop, handle }
}

impl Server {
    /// Stop and wait until the database is closed (so it can be reopened).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("server stops within 10 s")
            .unwrap()
            .unwrap();
    }
}

/// A reservation of `data` (exact bytes) by `user` for `node`.
pub fn signed(
    user: &Identity,
    node: &str,
    kind: &str,
    data: &str,
    created: DateTime<Utc>,
    duration_s: i64,
) -> Reservation {
    let mut r = Reservation {
        id: String::new(),
        node_id: node.to_string(),
        user_id: user.id().to_string(),
        kind: kind.to_string(),
        data: RawValue::from_string(data.to_string()).unwrap(),
        created: Some(created.trunc_subsecs(0)),
        duration: duration_s * 1_000_000_000,
        signature: String::new(),
        to_delete: false,
        delete_signature: None,
    };
    user.sign_reservation(&mut r);
    r
}

/// A one-hour volume reservation created now.
pub fn volume(user: &Identity, node: &str) -> Reservation {
    signed(
        user,
        node,
        "volume",
        r#"{"size":1,"type":"SSD"}"#,
        Utc::now(),
        3600,
    )
}

pub async fn post(c: &reqwest::Client, url: &str, r: &Reservation) -> String {
    let resp = c
        .post(format!("{url}/reservations/{}", r.node_id))
        .body(serde_json::to_string(r).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let v: serde_json::Value = resp.json().await.unwrap();
    v["id"].as_str().unwrap().to_string()
}

pub async fn poll(c: &reqwest::Client, url: &str, node: &str, from: u64) -> Vec<Reservation> {
    let resp = c
        .get(format!("{url}/reservations/{node}/poll?from={from}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The agent parses with deny_unknown_fields: the answer must be exact.
    serde_json::from_str(&resp.text().await.unwrap()).unwrap()
}

pub fn ids(list: &[Reservation]) -> Vec<&str> {
    list.iter().map(|r| r.id.as_str()).collect()
}
