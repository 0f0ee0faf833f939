//! The `debug` workload type, all of it ([`Plugin`]): the agent's own log
//! events, as JSON lines, on a user's Redis pub/sub channel; counted
//! against its user's debug reservations.
//!
//! - [`LogBus`]: a broadcast of already formatted JSON lines, each with the
//!   user it belongs to ([`LogLine::owner`]). The agent installs
//!   [`LogBus::layer`] in its tracing subscriber; every event becomes one
//!   line on the bus (formatting is skipped while nobody listens).
//! - [`DebugProvisioner`]: one forwarding task per debug reservation that
//!   reads the bus and `PUBLISH`es each line it may see to `channel` at
//!   `host:port` (default channel `<node_id>-logs`), reconnecting with
//!   exponential backoff when Redis goes away. It runs until the
//!   reservation expires or is decommissioned; an agent restart ends it,
//!   and reconciliation starts it again ([`Plugin::exists`] is false
//!   then).
//!
//! Tenancy: a line belongs to a user when every reservation it is about
//! (the engine's `reservation` spans, whose `user` it records once the
//! signature verified, and `reservation` fields of events and spans, looked
//! up in the ids the bus saw in those spans) belongs to that one user. A
//! debug reservation gets only its own user's lines: never another user's,
//! never node-wide lines (start-up, heartbeats, lines about nobody or about
//! several users), unless its user is one of the node's debug operators
//! ([`DebugProvisioner::with_operators`], the agent's `--debug-operators`),
//! who get every line.
//!
//! Secrets: the agent never logs a plaintext secret (`reservation::Secret`
//! redacts itself); the layer also replaces the value of any field whose
//! name says password, secret, token, key, private, credential, auth,
//! cookie, seed or admin with `<redacted>`, in events and in span fields
//! alike; and events of the HTTP and Docker client crates (bollard, hyper,
//! reqwest, h2..., whose debug events carry request bodies) and of the
//! redis client never become lines, at any level. Free text in a message
//! is not inspected.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{SecondsFormat, Utc};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisConnectionInfo};
use reservation::workloads::Debug;
use reservation::Reservation;
use serde_json::{Map, Value};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::charge::Tenancy;
use crate::plugin::{Plugin, Setup};
use crate::{names, ProvisionError};

/// Lines kept for a slow or reconnecting forwarder before it starts to
/// miss some (it then publishes how many it missed).
pub const DEFAULT_BUS_CAPACITY: usize = 4096;
/// What a secret-named field's value is replaced with.
pub const REDACTED: &str = "<redacted>";
/// Name of the engine's span around each reservation (fields `id`, `user`).
pub const RESERVATION_SPAN: &str = "reservation";
/// Crates whose events never become lines: HTTP and Docker clients (their
/// debug events carry request and response bodies) and the redis client
/// the forwarders themselves use.
pub const QUIET_TARGETS: &[&str] = &[
    "bollard",
    "hyper",
    "hyper_util",
    "reqwest",
    "h2",
    "http",
    "tower",
    "tower_http",
    "want",
    "rustls",
    "mio",
    "redis",
    "tokio_util",
];
/// Reservation ids whose owner the bus remembers at most (then it forgets
/// them all; lines about a forgotten id go to operators only).
const MAX_OWNERS: usize = 100_000;

/// Whether a field of this name may hold a secret: its value is never
/// forwarded.
pub fn is_secret_field(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "key",
        "private",
        "credential",
        "auth",
        "cookie",
        "seed",
        "admin",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// Whether events of this target never become lines ([`QUIET_TARGETS`]).
pub fn is_quiet_target(target: &str) -> bool {
    QUIET_TARGETS.iter().any(|q| {
        target == *q
            || target
                .strip_prefix(q)
                .is_some_and(|rest| rest.starts_with("::"))
    })
}

/// One formatted log line and the user it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    text: String,
    owner: Option<String>,
}

impl LogLine {
    /// The JSON text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The user every reservation this line is about belongs to; `None`
    /// for a node-wide line (or one about several users), which only
    /// debug operators see.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }
}

impl std::ops::Deref for LogLine {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Reservation id → its user (`None`: seen with two users, so nobody's).
type Owners = Arc<Mutex<HashMap<String, Option<String>>>>;

/// The node's log events as JSON lines, for every debug forwarder.
#[derive(Clone)]
pub struct LogBus {
    tx: broadcast::Sender<Arc<LogLine>>,
    owners: Owners,
}

impl Default for LogBus {
    fn default() -> Self {
        Self::new(DEFAULT_BUS_CAPACITY)
    }
}

impl fmt::Debug for LogBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogBus({} listeners)", self.tx.receiver_count())
    }
}

impl LogBus {
    /// A bus keeping up to `capacity` lines for each lagging listener.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        LogBus {
            tx,
            owners: Arc::default(),
        }
    }

    /// The tracing layer that formats each event onto this bus. Install it
    /// once, in the agent's subscriber
    /// (`tracing_subscriber::registry().with(bus.layer())`).
    pub fn layer(&self) -> JsonLogLayer {
        JsonLogLayer {
            tx: self.tx.clone(),
            owners: self.owners.clone(),
        }
    }

    /// A listener of every line sent from now on (node-wide: filter on
    /// [`LogLine::owner`] before showing a line to a user).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.tx.subscribe()
    }
}

/// A `tracing_subscriber` layer writing each event as one JSON line onto a
/// [`LogBus`]: `{"timestamp","level","target","fields":{..},"spans":[{"name",..}]}`.
pub struct JsonLogLayer {
    tx: broadcast::Sender<Arc<LogLine>>,
    owners: Owners,
}

impl JsonLogLayer {
    /// Remember the user of a `reservation` span's id.
    fn learn(&self, fields: &Map<String, Value>) {
        let (Some(Value::String(id)), Some(Value::String(user))) =
            (fields.get("id"), fields.get("user"))
        else {
            return;
        };
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if owners.len() >= MAX_OWNERS && !owners.contains_key(id) {
            owners.clear();
        }
        let entry = owners
            .entry(id.clone())
            .or_insert_with(|| Some(user.clone()));
        if entry.as_deref() != Some(user.as_str()) {
            *entry = None;
        }
    }

    fn owner_of(&self, id: &str) -> Option<String> {
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        owners.get(id.trim_matches('"')).cloned().flatten()
    }
}

/// A span's recorded fields, kept in its extensions for the events inside.
struct SpanFields(Map<String, Value>);

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl JsonVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let value = if is_secret_field(field.name()) {
            Value::String(REDACTED.into())
        } else {
            value
        };
        self.0.insert(field.name().to_string(), value);
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

/// Who a line is about, collected over its spans and fields.
#[derive(Default)]
struct Attribution {
    users: BTreeSet<String>,
    /// A reservation whose user is not known: the line is nobody's.
    unknown: bool,
}

impl Attribution {
    fn user(&mut self, u: Option<String>) {
        match u {
            Some(u) => {
                self.users.insert(u);
            }
            None => self.unknown = true,
        }
    }

    fn owner(self) -> Option<String> {
        if self.unknown || self.users.len() != 1 {
            return None;
        }
        self.users.into_iter().next()
    }
}

fn as_text(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s.as_str()),
        _ => None,
    }
}

impl<S> Layer<S> for JsonLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Map::new();
        attrs.record(&mut JsonVisitor(&mut fields));
        if span.name() == RESERVATION_SPAN {
            self.learn(&fields);
        }
        span.extensions_mut().insert(SpanFields(fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(fields) = ext.get_mut::<SpanFields>() {
            values.record(&mut JsonVisitor(&mut fields.0));
            if span.name() == RESERVATION_SPAN {
                self.learn(&fields.0);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let meta = event.metadata();
        if is_quiet_target(meta.target()) {
            return;
        }
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        let mut who = Attribution::default();
        for key in ["reservation", "reservation_id"] {
            if let Some(id) = fields.get(key).and_then(as_text) {
                who.user(self.owner_of(id));
            }
        }
        let spans: Vec<Value> = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .from_root()
                    .map(|span| {
                        let mut o = Map::new();
                        o.insert("name".into(), Value::String(span.name().into()));
                        if let Some(f) = span.extensions().get::<SpanFields>() {
                            if span.name() == RESERVATION_SPAN {
                                match (
                                    f.0.get("user").and_then(as_text),
                                    f.0.get("id").and_then(as_text),
                                ) {
                                    (Some(u), _) => who.user(Some(u.to_string())),
                                    // Not verified (yet): ids are the
                                    // explorer's, so the id's earlier owner
                                    // must not get these lines.
                                    (None, _) => who.user(None),
                                }
                            }
                            for key in ["reservation", "reservation_id"] {
                                if let Some(id) = f.0.get(key).and_then(as_text) {
                                    who.user(self.owner_of(id));
                                }
                            }
                            o.extend(f.0.iter().map(|(k, v)| (k.clone(), v.clone())));
                        }
                        Value::Object(o)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let line = serde_json::json!({
            "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            "level": meta.level().as_str(),
            "target": meta.target(),
            "fields": fields,
            "spans": spans,
        });
        // No listener left between the check and now: nothing to do.
        let _ = self.tx.send(Arc::new(LogLine {
            text: line.to_string(),
            owner: who.owner(),
        }));
    }
}

/// Delays between reconnection attempts: `min`, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

/// Where one debug reservation's lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    id: String,
    host: String,
    port: u16,
    channel: String,
    /// The reservation's user: the lines it may see.
    user: String,
    /// Every line, not only the user's.
    operator: bool,
}

impl Target {
    fn may_see(&self, line: &LogLine) -> bool {
        self.operator || line.owner() == Some(self.user.as_str())
    }
}

/// A running forwarder and the signed reservation it serves.
struct Task {
    signature: String,
    handle: JoinHandle<()>,
}

/// Provisions `debug` workloads: one forwarding task per reservation.
pub struct DebugProvisioner {
    bus: LogBus,
    backoff: Backoff,
    operators: BTreeSet<String>,
    tasks: Mutex<HashMap<String, Task>>,
}

impl DebugProvisioner {
    /// Forward from `bus`, whose layer the agent installed.
    pub fn new(bus: LogBus) -> Self {
        DebugProvisioner {
            bus,
            backoff: Backoff::default(),
            operators: BTreeSet::new(),
            tasks: Mutex::new(HashMap::new()),
        }
    }

    /// Users (ids) whose debug reservations get the whole node's log;
    /// everybody else gets only the lines of their own reservations.
    pub fn with_operators(mut self, operators: impl IntoIterator<Item = String>) -> Self {
        self.operators = operators
            .into_iter()
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty())
            .collect();
        self
    }

    /// Change the reconnection delays (tests use short ones).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Ids of the reservations being forwarded right now.
    pub fn active(&self) -> Vec<String> {
        let tasks = self.lock();
        let mut ids: Vec<String> = tasks
            .iter()
            .filter(|(_, t)| !t.handle.is_finished())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Task>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn target(&self, r: &Reservation, d: &Debug) -> Target {
        let host = d.host.trim().trim_start_matches('[').trim_end_matches(']');
        let channel = if d.channel.is_empty() {
            format!("{}-logs", r.node_id)
        } else {
            d.channel.clone()
        };
        Target {
            id: r.id.clone(),
            host: host.to_string(),
            port: d.port,
            channel,
            user: r.user_id.clone(),
            operator: self.operators.contains(&r.user_id),
        }
    }
}

impl Drop for DebugProvisioner {
    fn drop(&mut self) {
        for (_, t) in self.lock().drain() {
            t.handle.abort();
        }
    }
}

#[async_trait]
impl Plugin for DebugProvisioner {
    type Data = Debug;

    fn build(s: &Setup) -> Self {
        DebugProvisioner::new(s.options.log_bus.clone())
            .with_operators(s.options.debug_operators.clone())
    }

    /// One debug reservation.
    fn tenancy(_d: &Debug) -> Tenancy {
        Tenancy {
            debug: 1,
            ..Tenancy::default()
        }
    }

    async fn provision(&self, r: &Reservation, d: &Debug) -> Result<Value, ProvisionError> {
        let target = self.target(r, d);
        let signature = names::signature_hash(r);
        let mut tasks = self.lock();
        if let Some(t) = tasks.get(&r.id) {
            if !t.handle.is_finished() && t.signature == signature {
                return Ok(Value::Null);
            }
            if !t.handle.is_finished() {
                // Another signed reservation under this id: never adopt
                // its forwarder (it may stream to somebody else).
                tracing::warn!(reservation = %r.id, "a debug forwarder under this id serves another reservation; stopping it");
            }
            t.handle.abort();
        }
        let lifetime = r
            .expires_at()
            .map(|at| (at - Utc::now()).to_std().unwrap_or(Duration::ZERO));
        if lifetime == Some(Duration::ZERO) {
            return Err(ProvisionError::Refused(format!(
                "reservation {}: expired, nothing to forward",
                r.id
            )));
        }
        tracing::info!(
            reservation = %target.id,
            host = %target.host,
            port = target.port,
            channel = %target.channel,
            operator = target.operator,
            "debug log forwarding starts"
        );
        let rx = self.bus.subscribe();
        let backoff = self.backoff;
        let handle = tokio::spawn(async move {
            let id = target.id.clone();
            match lifetime {
                Some(left) => {
                    tokio::select! {
                        _ = forward(target, rx, backoff) => {}
                        _ = tokio::time::sleep(left) => {
                            tracing::info!(reservation = %id, "debug log forwarding ends: reservation expired");
                        }
                    }
                }
                None => forward(target, rx, backoff).await,
            }
        });
        tasks.insert(r.id.clone(), Task { signature, handle });
        Ok(Value::Null)
    }

    async fn decommission(&self, r: &Reservation, _d: &Debug) -> Result<(), ProvisionError> {
        let task = self.lock().remove(&r.id);
        if let Some(t) = task {
            t.handle.abort();
            // Wait until it is really gone: no line leaves after this returns.
            let _ = t.handle.await;
            tracing::info!(reservation = %r.id, "debug log forwarding stopped");
        }
        Ok(())
    }

    async fn exists(&self, r: &Reservation, _d: &Debug) -> Result<bool, ProvisionError> {
        let signature = names::signature_hash(r);
        Ok(self
            .lock()
            .get(&r.id)
            .is_some_and(|t| !t.handle.is_finished() && t.signature == signature))
    }
}

async fn connect(t: &Target) -> redis::RedisResult<MultiplexedConnection> {
    let info = (t.host.clone(), t.port)
        .into_connection_info()?
        .set_redis_settings(RedisConnectionInfo::default().set_skip_set_lib_name());
    let client = redis::Client::open(info)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// The line published in place of `n` lines a lagging forwarder missed.
fn dropped_line(n: u64) -> Arc<str> {
    let line = serde_json::json!({
        "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        "level": "WARN",
        "target": module_path!(),
        "fields": {"message": format!("debug forwarding missed {n} log lines (redis unreachable or slow)")},
        "spans": [],
    });
    Arc::from(line.to_string())
}

/// Publish every line of `rx` to the target until the bus closes,
/// reconnecting with backoff. A line whose publish failed is sent again
/// after reconnecting.
async fn forward(t: Target, mut rx: broadcast::Receiver<Arc<LogLine>>, backoff: Backoff) {
    let mut delay = backoff.min;
    let mut pending: Option<Arc<str>> = None;
    let mut failing = false;
    loop {
        let mut con = match connect(&t).await {
            Ok(c) => {
                if failing {
                    tracing::info!(reservation = %t.id, host = %t.host, port = t.port, "debug log forwarding reconnected");
                }
                delay = backoff.min;
                c
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(reservation = %t.id, host = %t.host, port = t.port, error = %e, "debug log forwarding cannot reach redis; retrying with backoff");
                }
                failing = true;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(backoff.max);
                continue;
            }
        };
        loop {
            let line = match pending.take() {
                Some(l) => l,
                None => match rx.recv().await {
                    Ok(l) if t.may_see(&l) => Arc::from(l.text()),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => dropped_line(n),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(&t.channel)
                .arg(line.as_bytes())
                .query_async(&mut con)
                .await;
            if let Err(e) = sent {
                pending = Some(line);
                tracing::warn!(reservation = %t.id, host = %t.host, port = t.port, error = %e, "debug log forwarding lost redis; reconnecting");
                failing = true;
                break;
            }
        }
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_become_json_lines_with_secrets_redacted() {
        let bus = LogBus::new(16);
        let mut rx = bus.subscribe();
        let subscriber = tracing_subscriber::registry().with(bus.layer());
        tracing::subscriber::with_default(subscriber, || {
            let span =
                tracing::info_span!("provision", reservation = "7-1", cluster_secret = "s3cr3t");
            let _g = span.enter();
            tracing::warn!(password = "hunter2", secret_env = ?["A"], count = 3u64, "opened");
        });
        let line = rx.try_recv().unwrap();
        assert!(
            !line.contains("hunter2") && !line.contains("s3cr3t"),
            "{line}"
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["fields"]["message"], "opened");
        assert_eq!(v["fields"]["password"], REDACTED);
        assert_eq!(v["fields"]["secret_env"], REDACTED);
        assert_eq!(v["fields"]["count"], 3);
        assert_eq!(v["spans"][0]["name"], "provision");
        assert_eq!(v["spans"][0]["reservation"], "7-1");
        assert_eq!(v["spans"][0]["cluster_secret"], REDACTED);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn lines_belong_to_the_verified_user_of_their_reservation() {
        let bus = LogBus::new(64);
        let mut rx = bus.subscribe();
        let subscriber = tracing_subscriber::registry().with(bus.layer());
        tracing::subscriber::with_default(subscriber, || {
            {
                let span =
                    tracing::info_span!("reservation", id = "1-1", user = tracing::field::Empty);
                let _g = span.enter();
                tracing::info!("before its signature verified");
                span.record("user", "alice");
                tracing::info!("alice's");
            }
            tracing::info!(reservation = "1-1", "about alice's, outside the span");
            tracing::info!(reservation = "9-9", "about a reservation nobody saw");
            tracing::info!("node-wide");
            {
                let span = tracing::info_span!("reservation", id = "2-1", user = "bob");
                let _g = span.enter();
                tracing::info!(
                    reservation = "1-1",
                    "bob's span mentions alice's reservation"
                );
                tracing::info!("bob's");
            }
            tracing::debug!(target: "bollard::docker", body = "{\"Env\":[\"A=b\"]}", "request");
            tracing::error!(target: "hyper_util::client::legacy", "connection");
            tracing::info!(target: "reqwest", "request");
        });
        let owners: Vec<Option<String>> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|l| l.owner().map(String::from))
            .collect();
        let s = |u: &str| Some(u.to_string());
        assert_eq!(
            owners,
            [None, s("alice"), s("alice"), None, None, None, s("bob")],
            "HTTP and Docker client events never become lines"
        );
    }

    #[test]
    fn quiet_targets() {
        for t in [
            "bollard",
            "bollard::docker",
            "hyper::proto::h1",
            "reqwest::connect",
            "h2",
        ] {
            assert!(is_quiet_target(t), "{t}");
        }
        for t in ["agent::engine", "provisioners::zdb", "bollardx", "hyperion"] {
            assert!(!is_quiet_target(t), "{t}");
        }
    }

    #[test]
    fn secret_names() {
        for n in [
            "password",
            "zdb_password",
            "cluster_secret",
            "secret_env",
            "K3S_TOKEN",
            "token",
            "key",
            "ssh_private_key",
            "admin_password",
            "seed",
        ] {
            assert!(is_secret_field(n), "{n}");
        }
        for n in ["message", "reservation", "host", "channel"] {
            assert!(!is_secret_field(n), "{n}");
        }
    }
}
