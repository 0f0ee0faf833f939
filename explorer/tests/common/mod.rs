//! Shared test helpers: an explorer served on 127.0.0.1 port 0 on either
//! store ([`Backend`]), signed version 2 reservations with chosen raw `data`
//! bytes, signed node messages, and small request helpers that answer
//! `(status, text)`.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use explorer::{ExplorerError, ServerConfig};
use reservation::node::{Registration, Uptime};
use reservation::{Capacity, Identity, Reservation};
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sled,
    Postgres,
}

/// A test's store, kept across restarts of its servers: a temp dir (sled),
/// or a fresh PostgreSQL database of its own.
pub struct Store {
    pub backend: Backend,
    pub dir: tempfile::TempDir,
    pub database: Option<explorer::testing::TestDatabase>,
}

impl Backend {
    /// An empty store. PostgreSQL: a fresh database, on the server
    /// `EXPLORER_TEST_DATABASE` names or on a cluster the tests start;
    /// panics saying how to run the tests when there is neither.
    pub async fn store(self) -> Store {
        Store {
            backend: self,
            dir: tempfile::tempdir().unwrap(),
            database: match self {
                Backend::Sled => None,
                Backend::Postgres => Some(explorer::testing::fresh_database().await),
            },
        }
    }
}

impl Store {
    /// The default server configuration on this store.
    pub fn config(&self) -> ServerConfig {
        ServerConfig {
            database: self.database.as_ref().map(|d| d.url.clone()),
            ..ServerConfig::new(self.dir.path())
        }
    }

    /// A server on this store (another one on the same PostgreSQL database
    /// is a replica of it).
    pub async fn start(&self, long_poll: Duration) -> Server {
        start_with(ServerConfig {
            long_poll,
            ..self.config()
        })
        .await
    }
}

/// `both_backends! { #[tokio::test] name; ... }`: for each `async fn
/// name(b: Backend)`, a test `sled::name` and a test `postgres::name`.
#[macro_export]
macro_rules! both_backends {
    ($($(#[$m:meta])* $name:ident;)*) => {
        mod sled {
            $( $(#[$m])* async fn $name() { super::$name($crate::common::Backend::Sled).await } )*
        }
        mod postgres {
            $( $(#[$m])* async fn $name() { super::$name($crate::common::Backend::Postgres).await } )*
        }
    };
}

pub struct Server {
    pub url: String,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), ExplorerError>>,
}

pub async fn start(dir: &Path, long_poll: Duration) -> Server {
    start_with(ServerConfig {
        long_poll,
        ..ServerConfig::new(dir)
    })
    .await
}

pub async fn start_with(cfg: ServerConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(explorer::serve(listener, cfg, async {
        let _ = rx.await;
    }));
    // Ready once it answers (PostgreSQL: connected and migrated).
    let c = reqwest::Client::new();
    for _ in 0..300 {
        if handle.is_finished() {
            break;
        }
        if c.get(format!("{url}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!handle.is_finished(), "the explorer stopped at start");
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

/// A version 2 reservation of `data` (exact bytes) by `user` for `node`,
/// `created` exactly as given (not rounded), lasting `duration_ns`.
pub fn signed_exact(
    user: &Identity,
    node: &str,
    kind: &str,
    data: &str,
    created: DateTime<Utc>,
    duration_ns: i64,
) -> Reservation {
    let mut r = Reservation {
        node_id: node.to_string(),
        user_id: user.id().to_string(),
        kind: kind.to_string(),
        data: RawValue::from_string(data.to_string()).unwrap(),
        created: Some(created),
        duration: duration_ns,
        ..Reservation::default()
    };
    user.sign_reservation(&mut r);
    r
}

/// A version 2 reservation of `data` (exact bytes) by `user` for `node`,
/// created at `created` rounded down to whole seconds.
pub fn signed(
    user: &Identity,
    node: &str,
    kind: &str,
    data: &str,
    created: DateTime<Utc>,
    duration_s: i64,
) -> Reservation {
    signed_exact(
        user,
        node,
        kind,
        data,
        created.trunc_subsecs(0),
        duration_s * 1_000_000_000,
    )
}

pub const VOLUME: &str = r#"{"size":1,"type":"SSD"}"#;

/// A one-hour volume reservation created now.
pub fn volume(user: &Identity, node: &str) -> Reservation {
    signed(user, node, "volume", VOLUME, Utc::now(), 3600)
}

/// A volume reservation that expires `secs` seconds from now (created a
/// minute before that, so it is live when posted).
pub fn expiring_in(user: &Identity, node: &str, secs: i64) -> Reservation {
    let created = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(secs - 60);
    signed(user, node, "volume", VOLUME, created, 60)
}

/// Sleep until `r` has expired.
pub async fn until_expired(r: &Reservation) {
    let at = r.expires_at().unwrap();
    let left = (at - Utc::now()).num_milliseconds().max(0) as u64;
    tokio::time::sleep(Duration::from_millis(left + 200)).await;
    assert!(r.is_expired(Utc::now()));
}

/// POST `r`; asserts `201` and answers the assigned id.
pub async fn post(c: &reqwest::Client, url: &str, r: &Reservation) -> String {
    let (st, text) = post_body(c, url, &r.node_id, serde_json::to_string(r).unwrap()).await;
    assert_eq!(st, 201, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// POST `r` and give it the id the explorer assigned (so it can be signed
/// about, e.g. by a node's result).
pub async fn post_as(c: &reqwest::Client, url: &str, r: &Reservation) -> Reservation {
    let mut r = r.clone();
    r.id = post(c, url, &r).await;
    r
}

/// POST raw bytes as a reservation for `node`.
pub async fn post_body(c: &reqwest::Client, url: &str, node: &str, body: String) -> (u16, String) {
    send(c.post(format!("{url}/reservations/{node}")).body(body)).await
}

/// Send a request; `(status, body text)`.
pub async fn send(req: reqwest::RequestBuilder) -> (u16, String) {
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// `GET /reservations/{node}/poll?{query}`; `(status, body text)`.
pub async fn poll_query(c: &reqwest::Client, url: &str, node: &str, query: &str) -> (u16, String) {
    send(c.get(format!("{url}/reservations/{node}/poll?{query}"))).await
}

/// A poll that must answer `200`, parsed as the agent parses it.
pub async fn poll_q(c: &reqwest::Client, url: &str, node: &str, query: &str) -> Vec<Reservation> {
    let (st, text) = poll_query(c, url, node, query).await;
    assert_eq!(st, 200, "{text}");
    // The agent parses with deny_unknown_fields: the answer must be exact.
    serde_json::from_str(&text).unwrap()
}

pub async fn poll(c: &reqwest::Client, url: &str, node: &str, from: u64) -> Vec<Reservation> {
    poll_q(c, url, node, &format!("from={from}")).await
}

pub fn ids(list: &[Reservation]) -> Vec<&str> {
    list.iter().map(|r| r.id.as_str()).collect()
}

/// `DELETE /reservations/{id}` signed by `user` over `r`'s signature.
pub async fn delete(
    c: &reqwest::Client,
    url: &str,
    user: &Identity,
    r: &Reservation,
) -> (u16, String) {
    let body = serde_json::json!({"delete_signature": user.sign_delete(&r.signature)});
    send(c.delete(format!("{url}/reservations/{}", r.id)).json(&body)).await
}

/// `PUT /reservations/{id}/deleted` with `signature`.
pub async fn confirm_deleted(
    c: &reqwest::Client,
    url: &str,
    id: &str,
    signature: &str,
) -> (u16, String) {
    let body = serde_json::json!({"signature": signature});
    send(
        c.put(format!("{url}/reservations/{id}/deleted"))
            .json(&body),
    )
    .await
}

/// Unix milliseconds now, strictly increasing across calls (two node
/// messages signed in the same millisecond would share a timestamp, and
/// the explorer accepts a timestamp once).
pub fn now_ms() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = Utc::now().timestamp_millis();
    let prev = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| Some(now.max(l + 1)))
        .unwrap();
    now.max(prev + 1)
}

pub fn cap(cru: u64, mru: u64, sru: u64, hru: u64) -> Capacity {
    Capacity::whole(cru, mru, sru, hru)
}

/// A registration of `node` at `url`, signed by `node`, stamped now.
pub fn registration(node: &Identity, url: &str) -> Registration {
    Registration::signed(node, url, &cap(8, 16, 100, 500), now_ms())
}

/// `POST /nodes` with `body`.
pub async fn register(
    c: &reqwest::Client,
    url: &str,
    body: &impl serde::Serialize,
) -> (u16, String) {
    send(c.post(format!("{url}/nodes")).json(body)).await
}

/// An uptime report of `node`, signed by `node`, stamped now.
pub fn uptime(node: &Identity, up: u64, used: reservation::Capacity) -> Uptime {
    Uptime::signed(node, up, &used, now_ms())
}

/// `POST /nodes/{node_id}/uptime` with `body`.
pub async fn heartbeat(
    c: &reqwest::Client,
    url: &str,
    node_id: &str,
    body: &impl serde::Serialize,
) -> (u16, String) {
    send(c.post(format!("{url}/nodes/{node_id}/uptime")).json(body)).await
}

/// `GET /nodes`, parsed.
pub async fn nodes(c: &reqwest::Client, url: &str) -> Vec<explorer::NodeInfo> {
    let (st, text) = send(c.get(format!("{url}/nodes"))).await;
    assert_eq!(st, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// PostgreSQL: a session holding `reservations` locked against writes
/// (reads pass) until [`Stalled::release`]: every insert statement of a
/// replica on `store` waits, as when the database lags behind the POSTs.
pub struct Stalled(sqlx::PgConnection);

impl Stalled {
    pub async fn new(store: &Store) -> Stalled {
        use sqlx::{Connection, Executor};
        let url = &store.database.as_ref().expect("a PostgreSQL store").url;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        conn.execute("BEGIN").await.unwrap();
        conn.execute("LOCK TABLE reservations IN EXCLUSIVE MODE")
            .await
            .unwrap();
        Stalled(conn)
    }

    /// Let the waiting inserts go on.
    pub async fn release(mut self) {
        use sqlx::Executor;
        self.0.execute("COMMIT").await.unwrap();
    }
}

/// A POST's answer: status, its `Retry-After` header, body text.
pub type Answer = (u16, Option<String>, String);

/// POST `r` to `url`; the answer with its `Retry-After`.
pub async fn post_answer(c: &reqwest::Client, url: &str, r: &Reservation) -> Answer {
    let resp = c
        .post(format!("{url}/reservations/{}", r.node_id))
        .body(serde_json::to_string(r).unwrap())
        .send()
        .await
        .unwrap();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), retry, resp.text().await.unwrap())
}

/// While inserts are [`Stalled`]: POST fresh reservations for `node` to
/// `url`, one at a time, each left waiting once it has not been answered
/// within 300 ms, until one is answered (at most `max` POSTs). The POSTs
/// left waiting, and the reservation answered with its answer (`None`:
/// every POST was left waiting).
pub async fn post_until_answered(
    url: &str,
    node: &str,
    max: usize,
) -> (
    Vec<JoinHandle<(Reservation, Answer)>>,
    Option<(Reservation, Answer)>,
) {
    let c = reqwest::Client::new();
    let mut waiting = Vec::new();
    for _ in 0..max {
        let r = volume(&Identity::generate(), node);
        let mut task = tokio::spawn({
            let (c, url) = (c.clone(), url.to_string());
            async move {
                let a = post_answer(&c, &url, &r).await;
                (r, a)
            }
        });
        match tokio::time::timeout(Duration::from_millis(300), &mut task).await {
            Ok(answered) => return (waiting, Some(answered.unwrap())),
            Err(_) => waiting.push(task),
        }
    }
    (waiting, None)
}
