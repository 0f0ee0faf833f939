//! Node registration and heartbeat: `POST /nodes` at start, then
//! `POST /nodes/{id}/uptime` with the uptime and used capacity every
//! interval (30 s by default). Both are signed by the node (`node-v2`) with
//! a unix millisecond timestamp that never repeats or goes back, so the
//! explorer can refuse a replayed or forged one.
//!
//! The loop never ends on an error: while the explorer is down it retries
//! with jittered backoff (capped at the interval), and a `404` on the
//! heartbeat (the explorer lost the node, e.g. its state was wiped) makes it
//! register again. [`HeartbeatState`] says how it goes, for `agentctl
//! status` and metrics.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reservation::node::{Registration, Uptime};
use reservation::Capacity;
use reservation::Identity;
use serde::Serialize;
use sources::{Backoff, ExplorerClient, SourceError};
use tracing::{debug, info, warn};

/// Default time between two heartbeats.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// The default `node_url`: `http://<hostname>` (the kernel's host name;
/// `http://localhost` if it cannot be read, which `explorer nodes` flags as
/// unreachable).
pub fn default_node_url() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        "http://localhost".into()
    } else {
        format!("http://{host}")
    }
}

/// What the heartbeat loop last saw. Shared with the control socket and
/// metrics; every read is lock-free except the last error.
#[derive(Debug, Default)]
pub struct HeartbeatState {
    registered: AtomicBool,
    last_ok_ms: AtomicI64,
    registered_ms: AtomicI64,
    failures: AtomicU64,
    last_error: Mutex<String>,
}

/// [`HeartbeatState`] as `agentctl status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeartbeatSnapshot {
    pub registered: bool,
    /// RFC 3339, `null` before the first registration.
    pub registered_at: Option<String>,
    /// RFC 3339, `null` before the first heartbeat.
    pub last_heartbeat: Option<String>,
    /// Failed calls in a row.
    pub failures: u64,
    /// The last failure, `null` once a call succeeds again.
    pub last_error: Option<String>,
}

fn ms_to_time(ms: i64) -> Option<DateTime<Utc>> {
    match ms {
        0 => None,
        ms => DateTime::from_timestamp_millis(ms),
    }
}

impl HeartbeatState {
    /// Whether the explorer knows this node (the last registration
    /// succeeded and no heartbeat was answered `404` since).
    pub fn registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    /// When the explorer last accepted a heartbeat.
    pub fn last_heartbeat(&self) -> Option<DateTime<Utc>> {
        ms_to_time(self.last_ok_ms.load(Ordering::Relaxed))
    }

    /// When the node last registered.
    pub fn registered_at(&self) -> Option<DateTime<Utc>> {
        ms_to_time(self.registered_ms.load(Ordering::Relaxed))
    }

    /// Failed calls in a row (0 once one succeeds).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The last error, `None` once a call succeeded after it.
    pub fn last_error(&self) -> Option<String> {
        let e = self
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        (!e.is_empty()).then_some(e)
    }

    pub fn snapshot(&self) -> HeartbeatSnapshot {
        HeartbeatSnapshot {
            registered: self.registered(),
            registered_at: self.registered_at().map(|t| t.to_rfc3339()),
            last_heartbeat: self.last_heartbeat().map(|t| t.to_rfc3339()),
            failures: self.failures(),
            last_error: self.last_error(),
        }
    }

    fn ok(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            e.clear();
        }
    }

    fn set_registered(&self) {
        self.registered.store(true, Ordering::Relaxed);
        self.registered_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        self.ok();
    }

    fn beat(&self) {
        self.last_ok_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        self.ok();
    }

    /// Records a failure; returns how many in a row.
    fn failed(&self, e: &SourceError) -> u64 {
        if let Ok(mut l) = self.last_error.lock() {
            *l = e.to_string();
        }
        self.failures.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// What the node says of itself at registration.
#[derive(Debug, Clone)]
pub struct NodeProfile {
    pub node: Arc<Identity>,
    /// Where the node can be reached.
    pub url: String,
    pub capacity: Capacity,
    /// Set while the node drains: heartbeats say so to the explorer.
    pub draining: Arc<AtomicBool>,
}

/// The signed `used` object: the capacity in use, and `"draining": true`
/// while the node takes no new work.
fn used_json(used: &Capacity, draining: bool) -> Box<serde_json::value::RawValue> {
    let mut v = serde_json::json!(used);
    if draining {
        v["draining"] = serde_json::Value::Bool(true);
    }
    serde_json::value::to_raw_value(&v).unwrap_or_else(|_| {
        serde_json::value::RawValue::from_string("{}".into()).expect("{} is JSON")
    })
}

/// Timestamps for signed node messages: unix ms, strictly increasing
/// within this process (the explorer refuses one not newer than the last).
#[derive(Debug, Default)]
struct Stamps {
    last: i64,
}

impl Stamps {
    fn next(&mut self) -> i64 {
        self.last = Utc::now().timestamp_millis().max(self.last + 1);
        self.last
    }
}

/// Register, then heartbeat every `interval` until `shutdown` resolves.
/// `used` is asked for the used capacity at each heartbeat; the uptime sent
/// is the time since this call. Backoff while the explorer is down starts at
/// 1 s and is capped at `interval`.
pub async fn run(
    client: ExplorerClient,
    reg: NodeProfile,
    used: impl Fn() -> Capacity + Send,
    interval: Duration,
    state: Arc<HeartbeatState>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let cap = interval.max(Duration::from_millis(10));
    let backoff = Backoff::new(Duration::from_secs(1).min(cap), cap);
    run_with_backoff(client, reg, used, interval, backoff, state, shutdown).await
}

/// [`run`] with an explicit backoff (tests use a short one).
pub async fn run_with_backoff(
    client: ExplorerClient,
    reg: NodeProfile,
    used: impl Fn() -> Capacity + Send,
    interval: Duration,
    mut backoff: Backoff,
    state: Arc<HeartbeatState>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let started = Instant::now();
    tokio::pin!(shutdown);
    let mut registered = false;
    let mut stamps = Stamps::default();
    let node_id = reg.node.id().to_string();
    loop {
        let delay = if !registered {
            let signed = Registration::signed(&reg.node, &reg.url, &reg.capacity, stamps.next());
            match client.register(&signed).await {
                Ok(()) => {
                    registered = true;
                    state.set_registered();
                    backoff.reset();
                    let c = reg.capacity;
                    info!(node_id = %node_id, url = %reg.url, capacity = %format!("cpu={} memory={}GiB ssd={}GiB hdd={}GiB", c.cru, c.mru, c.sru, c.hru), explorer = %client.base(), "registered with the explorer");
                    // Heartbeat at once: the explorer learns the used
                    // capacity and the first heartbeat time now.
                    continue;
                }
                Err(e) => failure(&state, &mut backoff, "registration", &e),
            }
        } else {
            let uptime = started.elapsed().as_secs();
            let draining = reg.draining.load(Ordering::Relaxed);
            let signed = Uptime::signed_raw(
                &reg.node,
                uptime,
                used_json(&used(), draining),
                stamps.next(),
            );
            match client.heartbeat(&signed).await {
                Ok(()) => {
                    if state.failures() > 0 {
                        info!(explorer = %client.base(), "heartbeat accepted again");
                    }
                    state.beat();
                    backoff.reset();
                    debug!(uptime, "heartbeat");
                    interval
                }
                Err(SourceError::Status { status: 404, .. }) => {
                    warn!(node_id = %node_id, explorer = %client.base(), "the explorer does not know this node (404 on heartbeat); registering again");
                    registered = false;
                    state.registered.store(false, Ordering::Relaxed);
                    continue;
                }
                Err(e) => failure(&state, &mut backoff, "heartbeat", &e),
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Record and log a failed call; the delay before the next try. Logged at
/// `warn` the first time and every 10th time in a row, at `debug` between.
fn failure(state: &HeartbeatState, backoff: &mut Backoff, what: &str, e: &SourceError) -> Duration {
    let n = state.failed(e);
    let delay = backoff.next_delay();
    if n == 1 || n.is_multiple_of(10) {
        warn!(error = %e, failures = n, retry_in_ms = delay.as_millis() as u64, "{what} failed; retrying");
    } else {
        debug!(error = %e, failures = n, "{what} failed");
    }
    delay
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicU64;
    use tokio::sync::oneshot;

    struct Explorer {
        addr: SocketAddr,
        stop: Option<oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Explorer {
        /// An explorer on `addr` (port 0: any) with its data in `dir`.
        async fn start(addr: SocketAddr, dir: &std::path::Path) -> Explorer {
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, rx) = oneshot::channel::<()>();
            let mut cfg = explorer::ServerConfig::new(dir);
            cfg.long_poll = Duration::from_millis(200);
            let task = tokio::spawn(async move {
                explorer::serve(listener, cfg, async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            });
            Explorer {
                addr,
                stop: Some(tx),
                task,
            }
        }

        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            let _ = self.task.await;
        }

        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }
    }

    async fn nodes(url: &str) -> Vec<reservation::NodeInfo> {
        match reqwest::get(format!("{url}/nodes")).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Wait until `f` holds for the explorer's node list (at most 10 s).
    async fn until(
        url: &str,
        what: &str,
        f: impl Fn(&[reservation::NodeInfo]) -> bool,
    ) -> Vec<reservation::NodeInfo> {
        for _ in 0..200 {
            let n = nodes(url).await;
            if f(&n) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out waiting for: {what}; nodes: {:?}",
            nodes(url).await
        );
    }

    fn registration(node: &reservation::Identity) -> NodeProfile {
        NodeProfile {
            node: Arc::new(node.clone()),
            url: "http://10.0.0.7:9100".into(),
            draining: Arc::default(),
            capacity: Capacity::whole(4, 7, 100, 0),
        }
    }

    #[test]
    fn default_url_names_this_host() {
        let u = default_node_url();
        assert!(u.starts_with("http://") && u.len() > "http://".len(), "{u}");
    }

    #[tokio::test]
    async fn registers_then_heartbeats_with_used_capacity() {
        let dir = tempfile::tempdir().unwrap();
        let ex = Explorer::start("127.0.0.1:0".parse().unwrap(), dir.path()).await;
        let node = reservation::Identity::generate();
        let client = ExplorerClient::new(&ex.url(), node.id(), 1 << 20).unwrap();
        let state = Arc::new(HeartbeatState::default());
        let mem = Arc::new(AtomicU64::new(1));
        let m = mem.clone();
        let used = move || Capacity::whole(1, m.load(Ordering::SeqCst), 1, 0);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let hb = tokio::spawn(run(
            client,
            registration(&node),
            used,
            Duration::from_millis(100),
            state.clone(),
            async move {
                let _ = stop_rx.await;
            },
        ));
        let n = until(&ex.url(), "registered with a heartbeat", |n| {
            n.len() == 1 && n[0].last_heartbeat.is_some()
        })
        .await;
        assert_eq!(n[0].node_id, node.id());
        assert_eq!(n[0].url, "http://10.0.0.7:9100");
        assert_eq!(n[0].capacity.cru, 4.0);
        assert_eq!(n[0].capacity.mru, 7.0);
        assert_eq!(n[0].used.mru, 1.0);
        assert!(state.registered());
        // Used capacity follows the callback.
        mem.store(3, Ordering::SeqCst);
        until(&ex.url(), "used memory 3", |n| {
            n.len() == 1 && n[0].used.mru == 3.0
        })
        .await;
        let snap = state.snapshot();
        assert!(
            snap.last_heartbeat.is_some() && snap.last_error.is_none(),
            "{snap:?}"
        );
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(5), hb)
            .await
            .expect("stops on shutdown")
            .unwrap();
        ex.stop().await;
    }

    #[tokio::test]
    async fn survives_an_explorer_outage_and_a_lost_registration() {
        // Reserve a port, then start with the explorer down.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let url = format!("http://{addr}");
        let node = reservation::Identity::generate();
        let client = ExplorerClient::new(&url, node.id(), 1 << 20).unwrap();
        let state = Arc::new(HeartbeatState::default());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let hb = tokio::spawn(run_with_backoff(
            client,
            registration(&node),
            Capacity::default,
            Duration::from_millis(100),
            Backoff::new(Duration::from_millis(20), Duration::from_millis(100)),
            state.clone(),
            async move {
                let _ = stop_rx.await;
            },
        ));
        for _ in 0..100 {
            if state.failures() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!state.registered());
        assert!(state.failures() >= 2, "{:?}", state.snapshot());
        let err = state.last_error().expect("an error while down");
        assert!(err.contains(&url) && err.contains("unreachable"), "{err}");

        // The explorer comes up: the node registers and beats.
        let dir1 = tempfile::tempdir().unwrap();
        let ex = Explorer::start(addr, dir1.path()).await;
        until(&url, "registered after the outage", |n| {
            n.len() == 1 && n[0].last_heartbeat.is_some()
        })
        .await;
        assert!(state.registered());
        assert_eq!(state.failures(), 0);
        assert!(state.last_error().is_none());
        let first_registration = state.registered_at().unwrap();
        ex.stop().await;

        // The explorer comes back with its state lost: the heartbeat's 404
        // makes the node register again.
        let dir2 = tempfile::tempdir().unwrap();
        let ex = Explorer::start(addr, dir2.path()).await;
        let n = until(&url, "registered again on an empty explorer", |n| {
            n.len() == 1 && n[0].last_heartbeat.is_some()
        })
        .await;
        assert_eq!(n[0].node_id, node.id());
        assert!(state.registered());
        assert!(state.registered_at().unwrap() > first_registration);
        let _ = stop_tx.send(());
        hb.await.unwrap();
        ex.stop().await;
    }
}
