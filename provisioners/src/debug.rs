//! The `debug` workload: the agent's own log events, as JSON lines, on a
//! user's Redis pub/sub channel.
//!
//! - [`LogBus`]: a broadcast of already formatted JSON lines. The agent
//!   installs [`LogBus::layer`] in its tracing subscriber; every event
//!   becomes one line on the bus (formatting is skipped while nobody
//!   listens).
//! - [`DebugProvisioner`]: one forwarding task per debug reservation that
//!   reads the bus and `PUBLISH`es each line to `channel` at `host:port`
//!   (default channel `<node_id>-logs`), reconnecting with exponential
//!   backoff when Redis goes away. It runs until the reservation expires or
//!   is decommissioned; an agent restart ends it, and reconciliation starts
//!   it again ([`Provisioner::exists`] is false then).
//!
//! Secrets: the agent never logs a plaintext secret (`reservation::Secret`
//! redacts itself), and the layer also replaces the value of any field whose
//! name says password, secret or token with `<redacted>`, in events and in
//! span fields alike. Free text in a message is not inspected.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{SecondsFormat, Utc};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisConnectionInfo};
use reservation::{Reservation, Workload};
use serde_json::{Map, Value};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::{ProvisionError, Provisioner};

/// Lines kept for a slow or reconnecting forwarder before it starts to
/// miss some (it then publishes how many it missed).
pub const DEFAULT_BUS_CAPACITY: usize = 4096;
/// What a secret-named field's value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Whether a field of this name may hold a secret: its value is never
/// forwarded.
pub fn is_secret_field(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "private_key"]
        .iter()
        .any(|s| n.contains(s))
}

/// The node's log events as JSON lines, for every debug forwarder.
#[derive(Clone)]
pub struct LogBus {
    tx: broadcast::Sender<Arc<str>>,
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
        LogBus { tx }
    }

    /// The tracing layer that formats each event onto this bus. Install it
    /// once, in the agent's subscriber
    /// (`tracing_subscriber::registry().with(bus.layer())`).
    pub fn layer(&self) -> JsonLogLayer {
        JsonLogLayer {
            tx: self.tx.clone(),
        }
    }

    /// A listener of every line sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.tx.subscribe()
    }
}

/// A `tracing_subscriber` layer writing each event as one JSON line onto a
/// [`LogBus`]: `{"timestamp","level","target","fields":{..},"spans":[{"name",..}]}`.
pub struct JsonLogLayer {
    tx: broadcast::Sender<Arc<str>>,
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

impl<S> Layer<S> for JsonLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Map::new();
        attrs.record(&mut JsonVisitor(&mut fields));
        span.extensions_mut().insert(SpanFields(fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(fields) = ext.get_mut::<SpanFields>() {
            values.record(&mut JsonVisitor(&mut fields.0));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let meta = event.metadata();
        let mut fields = Map::new();
        event.record(&mut JsonVisitor(&mut fields));
        let spans: Vec<Value> = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .from_root()
                    .map(|span| {
                        let mut o = Map::new();
                        o.insert("name".into(), Value::String(span.name().into()));
                        if let Some(f) = span.extensions().get::<SpanFields>() {
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
        let _ = self.tx.send(Arc::from(line.to_string()));
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
}

/// Provisions `debug` workloads: one forwarding task per reservation.
pub struct DebugProvisioner {
    bus: LogBus,
    backoff: Backoff,
    tasks: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl DebugProvisioner {
    /// Forward from `bus`, whose layer the agent installed.
    pub fn new(bus: LogBus) -> Self {
        DebugProvisioner {
            bus,
            backoff: Backoff::default(),
            tasks: Mutex::new(HashMap::new()),
        }
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
            .filter(|(_, h)| !h.is_finished())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn target(r: &Reservation, w: &Workload) -> Result<Target, ProvisionError> {
        let Workload::Debug(d) = w else {
            return Err(ProvisionError::Refused(format!(
                "reservation {}: not a debug workload",
                r.id
            )));
        };
        let host = d.host.trim().trim_start_matches('[').trim_end_matches(']');
        let channel = if d.channel.is_empty() {
            format!("{}-logs", r.node_id)
        } else {
            d.channel.clone()
        };
        Ok(Target {
            id: r.id.clone(),
            host: host.to_string(),
            port: d.port,
            channel,
        })
    }
}

impl Drop for DebugProvisioner {
    fn drop(&mut self) {
        for (_, h) in self.lock().drain() {
            h.abort();
        }
    }
}

#[async_trait]
impl Provisioner for DebugProvisioner {
    async fn provision(&self, r: &Reservation, w: &Workload) -> Result<Value, ProvisionError> {
        let target = Self::target(r, w)?;
        let mut tasks = self.lock();
        if tasks.get(&r.id).is_some_and(|h| !h.is_finished()) {
            return Ok(Value::Null);
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
        tasks.insert(r.id.clone(), handle);
        Ok(Value::Null)
    }

    async fn decommission(&self, r: &Reservation, _w: &Workload) -> Result<(), ProvisionError> {
        let handle = self.lock().remove(&r.id);
        if let Some(h) = handle {
            h.abort();
            // Wait until it is really gone: no line leaves after this returns.
            let _ = h.await;
            tracing::info!(reservation = %r.id, "debug log forwarding stopped");
        }
        Ok(())
    }

    async fn exists(&self, r: &Reservation, _w: &Workload) -> Result<bool, ProvisionError> {
        Ok(self.lock().get(&r.id).is_some_and(|h| !h.is_finished()))
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
async fn forward(t: Target, mut rx: broadcast::Receiver<Arc<str>>, backoff: Backoff) {
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
                    Ok(l) => l,
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
    fn secret_names() {
        for n in [
            "password",
            "zdb_password",
            "cluster_secret",
            "secret_env",
            "K3S_TOKEN",
            "token",
        ] {
            assert!(is_secret_field(n), "{n}");
        }
        for n in ["message", "reservation", "host", "channel"] {
            assert!(!is_secret_field(n), "{n}");
        }
    }
}
