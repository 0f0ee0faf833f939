//! Debug log forwarding against a real `redis-server` (Debian package) on
//! loopback: lines arrive as JSON on the channel, secrets stay redacted,
//! forwarding survives a Redis restart, and stops on decommission and on
//! expiry; a user's stream carries only their own reservations' lines,
//! a debug operator's the whole node's.
//!
//! The generic tests pump node-wide lines, so their debug reservations'
//! users are operators.

use std::net::TcpListener;
use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt;
use provisioners::debug::{Backoff, DebugProvisioner, LogBus, REDACTED};
use provisioners::{ProvisionError, Provisioner};
use redis::aio::PubSubStream;
use reservation::{Identity, Reservation, Workload, WorkloadType};
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tracing_subscriber::layer::SubscriberExt;

/// A redis-server child on a fixed loopback port, killed on drop.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    async fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (Debian package redis-server)");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Redis { port, child };
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        self.child.kill().await.unwrap();
        let _ = self.child.wait().await;
    }

    async fn subscribe(&self, channel: &str) -> PubSubStream {
        let client = redis::Client::open(("127.0.0.1", self.port)).unwrap();
        let mut ps = client.get_async_pubsub().await.unwrap();
        ps.subscribe(channel).await.unwrap();
        ps.into_on_message()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn counter() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

fn uniq(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), counter())
}

/// A signed debug reservation created `age` ago, living `life`.
fn debug_reservation(
    node: &Identity,
    port: u16,
    channel: &str,
    age: Duration,
    life: Duration,
) -> (Reservation, Workload) {
    debug_reservation_of(&Identity::generate(), node, port, channel, age, life)
}

/// [`debug_reservation`] signed by `user`.
fn debug_reservation_of(
    user: &Identity,
    node: &Identity,
    port: u16,
    channel: &str,
    age: Duration,
    life: Duration,
) -> (Reservation, Workload) {
    let data = json!({"host": "127.0.0.1", "port": port, "channel": channel}).to_string();
    let mut r = Reservation {
        id: format!("{}{:04}-1", std::process::id(), counter()),
        node_id: node.id().to_string(),
        user_id: user.id().to_string(),
        kind: "debug".into(),
        data: serde_json::value::RawValue::from_string(data).unwrap(),
        created: Some(Utc::now() - chrono::Duration::from_std(age).unwrap()),
        duration: life.as_nanos() as i64,
        signature: String::new(),
        to_delete: false,
        delete_signature: None,
        ..Default::default()
    };
    user.sign_reservation(&mut r);
    let w = Workload::parse(WorkloadType::Debug, &r.data).unwrap();
    (r, w)
}

fn fast() -> Backoff {
    Backoff {
        min: Duration::from_millis(50),
        max: Duration::from_millis(400),
    }
}

/// The next message's payload as JSON, or `None` after `wait` of silence.
async fn next_line(stream: &mut PubSubStream, wait: Duration) -> Option<Value> {
    let msg = tokio::time::timeout(wait, stream.next()).await.ok()??;
    let payload: String = msg.get_payload().unwrap();
    Some(serde_json::from_str(&payload).unwrap_or_else(|e| panic!("not JSON ({e}): {payload}")))
}

/// Emit `message` events carrying `marker` until one arrives; return it.
async fn pump_until_arrival(stream: &mut PubSubStream, marker: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0u64;
    loop {
        tracing::info!(marker, n, "pumping");
        n += 1;
        while let Some(v) = next_line(stream, Duration::from_millis(100)).await {
            if v["fields"]["marker"] == marker {
                return v;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no line with marker {marker} arrived"
        );
    }
}

/// Drain the stream until `quiet` passes without a message; return all.
async fn drain(stream: &mut PubSubStream, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(v) = next_line(stream, quiet).await {
        out.push(v);
    }
    out
}

#[tokio::test]
async fn lines_arrive_as_json_survive_a_redis_restart_and_stop_on_decommission() {
    let bus = LogBus::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(bus.layer()));
    let node = Identity::generate();
    let port = free_port();
    let channel = uniq("debug-chan");
    let redis = Redis::start(port).await;
    let mut sub = redis.subscribe(&channel).await;

    let (r, w) = debug_reservation(
        &node,
        port,
        &channel,
        Duration::ZERO,
        Duration::from_secs(3600),
    );
    let p = DebugProvisioner::new(bus.clone())
        .with_backoff(fast())
        .with_operators([r.user_id.clone()]);
    assert_eq!(p.provision(&r, &w).await.unwrap(), Value::Null);
    assert!(p.exists(&r, &w).await.unwrap());

    let first = pump_until_arrival(&mut sub, "before-restart").await;
    assert_eq!(first["level"], "INFO");
    assert_eq!(first["fields"]["message"], "pumping");
    assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));

    // Secret-named fields never leave the node, in events or spans.
    {
        let span =
            tracing::info_span!("provision", reservation = %r.id, cluster_secret = "k3s-s3cr3t");
        let _e = span.enter();
        tracing::warn!(
            password = "hunter2",
            marker = "secret",
            "opened a sealed secret"
        );
    }
    let lines = drain(&mut sub, Duration::from_millis(500)).await;
    let secret_line = lines
        .iter()
        .find(|v| v["fields"]["marker"] == "secret")
        .expect("the secret event arrives");
    let text = secret_line.to_string();
    assert!(
        !text.contains("hunter2") && !text.contains("k3s-s3cr3t"),
        "{text}"
    );
    assert_eq!(secret_line["fields"]["password"], REDACTED);
    assert_eq!(secret_line["spans"][0]["name"], "provision");
    assert_eq!(secret_line["spans"][0]["reservation"], r.id.as_str());
    assert_eq!(secret_line["spans"][0]["cluster_secret"], REDACTED);

    // Redis goes away and comes back on the same port.
    drop(sub);
    redis.stop().await;
    tracing::info!(marker = "while-down", "emitted while redis is down");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let redis = Redis::start(port).await;
    let mut sub = redis.subscribe(&channel).await;
    let again = pump_until_arrival(&mut sub, "after-restart").await;
    assert_eq!(again["fields"]["message"], "pumping");
    assert!(p.exists(&r, &w).await.unwrap());

    // Decommission: nothing leaves after it returns.
    p.decommission(&r, &w).await.unwrap();
    assert!(!p.exists(&r, &w).await.unwrap());
    assert!(p.active().is_empty());
    drain(&mut sub, Duration::from_millis(300)).await;
    for n in 0..10 {
        tracing::info!(marker = "after-decommission", n, "must not be forwarded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late = drain(&mut sub, Duration::from_millis(800)).await;
    assert!(late.is_empty(), "lines after decommission: {late:?}");
    // Decommissioning again succeeds.
    p.decommission(&r, &w).await.unwrap();
    redis.stop().await;
}

#[tokio::test]
async fn default_channel_is_node_logs_and_provisioning_twice_forwards_once() {
    let bus = LogBus::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(bus.layer()));
    let node = Identity::generate();
    let port = free_port();
    let redis = Redis::start(port).await;
    let mut sub = redis.subscribe(&format!("{}-logs", node.id())).await;

    let (r, w) = debug_reservation(&node, port, "", Duration::ZERO, Duration::from_secs(3600));
    let p = DebugProvisioner::new(bus.clone())
        .with_backoff(fast())
        .with_operators([r.user_id.clone()]);
    p.provision(&r, &w).await.unwrap();
    p.provision(&r, &w).await.unwrap();
    assert_eq!(p.active(), vec![r.id.clone()]);
    pump_until_arrival(&mut sub, "warmup").await;
    drain(&mut sub, Duration::from_millis(300)).await;

    for n in 0..20u64 {
        tracing::info!(marker = "counted", n, "numbered");
    }
    let lines = drain(&mut sub, Duration::from_millis(800)).await;
    let mut seen: Vec<u64> = lines
        .iter()
        .filter(|v| v["fields"]["marker"] == "counted")
        .map(|v| v["fields"]["n"].as_u64().unwrap())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..20).collect::<Vec<_>>(),
        "each line exactly once, none lost"
    );

    // Not a debug workload: refused, nothing started.
    let other = Workload::parse(
        WorkloadType::Volume,
        &serde_json::value::RawValue::from_string(r#"{"size":1,"type":"SSD"}"#.into()).unwrap(),
    )
    .unwrap();
    let mut r2 = r.clone();
    r2.id = "999999-1".into();
    match p.provision(&r2, &other).await {
        Err(ProvisionError::Refused(m)) => assert!(m.contains("999999-1"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(p.active(), vec![r.id.clone()]);
    p.decommission(&r, &w).await.unwrap();
    redis.stop().await;
}

#[tokio::test]
async fn forwarding_ends_when_the_reservation_expires() {
    let bus = LogBus::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(bus.layer()));
    let node = Identity::generate();
    let port = free_port();
    let channel = uniq("expiring");
    let redis = Redis::start(port).await;
    let mut sub = redis.subscribe(&channel).await;

    // Created almost an hour ago: about 3 s left.
    let (r, w) = debug_reservation(
        &node,
        port,
        &channel,
        Duration::from_secs(3600 - 3),
        Duration::from_secs(3600),
    );
    let p = DebugProvisioner::new(bus.clone())
        .with_backoff(fast())
        .with_operators([r.user_id.clone()]);
    p.provision(&r, &w).await.unwrap();
    pump_until_arrival(&mut sub, "alive").await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while p.exists(&r, &w).await.unwrap() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still forwarding after expiry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drain(&mut sub, Duration::from_millis(300)).await;
    tracing::info!(marker = "after-expiry", "must not be forwarded");
    let late = drain(&mut sub, Duration::from_millis(800)).await;
    assert!(late.is_empty(), "lines after expiry: {late:?}");

    // An already expired reservation is refused.
    let (old, w_old) = debug_reservation(
        &node,
        port,
        &channel,
        Duration::from_secs(7200),
        Duration::from_secs(3600),
    );
    assert!(matches!(
        p.provision(&old, &w_old).await,
        Err(ProvisionError::Refused(_))
    ));
    redis.stop().await;
}

/// Log like the engine does about reservation `id` of `user`: inside its
/// `reservation` span, the user recorded once its signature verified.
fn log_about(id: &str, user: &str, marker: &str) {
    let span = tracing::info_span!("reservation", id = %id, user = tracing::field::Empty);
    let _e = span.enter();
    tracing::info!(reservation = %id, marker, "judging");
    span.record("user", user);
    tracing::info!(reservation = %id, marker, "provisioned");
    // Secrets by field name, and a Docker request body, at debug level.
    tracing::warn!(
        password = "hunter2",
        cluster_secret = "s3cr3t",
        marker,
        "opened"
    );
    tracing::debug!(target: "bollard::docker", marker, body = %format!("{{\"Env\":[\"K3S_TOKEN=body-t0k3n\"],\"user\":\"{user}\"}}"), "POST /containers/create");
    tracing::trace!(target: "hyper::proto::h1::io", marker, "flushed body-t0k3n");
}

#[tokio::test]
async fn a_users_stream_carries_only_their_reservations_and_operators_get_the_node() {
    let bus = LogBus::default();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(bus.layer()));
    let node = Identity::generate();
    let port = free_port();
    let redis = Redis::start(port).await;
    let (alice, bob, op) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let (ca, cb, co) = (uniq("alice"), uniq("bob"), uniq("operator"));
    let mut sub_a = redis.subscribe(&ca).await;
    let mut sub_b = redis.subscribe(&cb).await;
    let mut sub_o = redis.subscribe(&co).await;
    let life = Duration::from_secs(3600);
    let (da, wa) = debug_reservation_of(&alice, &node, port, &ca, Duration::ZERO, life);
    let (db, wb) = debug_reservation_of(&bob, &node, port, &cb, Duration::ZERO, life);
    let (dop, wo) = debug_reservation_of(&op, &node, port, &co, Duration::ZERO, life);
    let p = DebugProvisioner::new(bus.clone())
        .with_backoff(fast())
        .with_operators([op.id().to_string()]);
    for (r, w) in [(&da, &wa), (&db, &wb), (&dop, &wo)] {
        p.provision(r, w).await.unwrap();
    }
    let (a1, b1) = ("910001-1", "920001-1");

    // Until each stream has seen its user's line (the forwarders connect).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (mut seen_a, mut seen_b, mut seen_o) = (Vec::new(), Vec::new(), Vec::new());
    let has = |v: &[Value], m: &str| v.iter().any(|l| l["fields"]["marker"] == m);
    let mut round = 0;
    while !(has(&seen_a, "a")
        && has(&seen_b, "b")
        && has(&seen_o, "a")
        && has(&seen_o, "b")
        && has(&seen_o, "node"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lines did not arrive"
        );
        log_about(a1, alice.id(), "a");
        log_about(b1, bob.id(), "b");
        tracing::info!(
            marker = "node",
            round,
            "node-wide: registered with the explorer"
        );
        tracing::info!(reservation = %b1, marker = "about-b", "outside any span, about bob's");
        round += 1;
        seen_a.extend(drain(&mut sub_a, Duration::from_millis(200)).await);
        seen_b.extend(drain(&mut sub_b, Duration::from_millis(200)).await);
        seen_o.extend(drain(&mut sub_o, Duration::from_millis(200)).await);
    }
    seen_a.extend(drain(&mut sub_a, Duration::from_millis(300)).await);
    seen_o.extend(drain(&mut sub_o, Duration::from_millis(300)).await);

    let text_a: String = seen_a.iter().map(|l| l.to_string() + "\n").collect();
    for never in [
        b1,
        bob.id(),
        op.id(),
        &db.id,
        &dop.id,
        "\"node\"",
        "hunter2",
        "s3cr3t",
        "t0k3n",
        "bollard",
        "hyper",
    ] {
        assert!(
            !text_a.contains(never),
            "alice's stream carries {never:?}:\n{text_a}"
        );
    }
    assert!(text_a.contains(a1), "{text_a}");
    assert!(
        seen_a.iter().all(|l| l["fields"]["marker"] == "a"),
        "{text_a}"
    );
    assert!(
        seen_a.iter().all(|l| l["fields"]["message"] != "judging"),
        "a line before the signature verified is nobody's: {text_a}"
    );
    let secret = seen_a
        .iter()
        .find(|l| l["fields"]["message"] == "opened")
        .unwrap();
    assert_eq!(secret["fields"]["password"], REDACTED);
    assert_eq!(secret["fields"]["cluster_secret"], REDACTED);
    let text_b: String = seen_b.iter().map(|l| l.to_string()).collect();
    assert!(
        !text_b.contains(a1) && !text_b.contains(alice.id()),
        "{text_b}"
    );
    assert!(
        has(&seen_b, "about-b"),
        "a line about bob's reservation outside its span is bob's"
    );

    // The operator gets every user's lines and the node's, never secrets
    // nor Docker request bodies.
    let text_o: String = seen_o.iter().map(|l| l.to_string() + "\n").collect();
    assert!(text_o.contains("judging"), "{text_o}");
    for never in [
        "hunter2",
        "s3cr3t",
        "t0k3n",
        "\"target\":\"bollard",
        "\"target\":\"hyper",
    ] {
        assert!(!text_o.contains(never), "operator stream carries {never:?}");
    }
    for (r, w) in [(&da, &wa), (&db, &wb), (&dop, &wo)] {
        p.decommission(r, w).await.unwrap();
    }
    redis.stop().await;
}
