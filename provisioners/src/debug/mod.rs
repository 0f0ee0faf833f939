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
//!
//! Files: `mod.rs`, the plug-in ([`DebugProvisioner`] and its forwarders);
//! `bus.rs`, the [`LogBus`] and its tracing layer; `tests.rs`, unit tests.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{SecondsFormat, Utc};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, RedisConnectionInfo};
use reservation::workloads::Debug;
use reservation::Reservation;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::charge::Tenancy;
use crate::plugin::{Plugin, Setup};
use crate::{names, ProvisionError};

mod bus;
pub use bus::{
    is_quiet_target, is_secret_field, JsonLogLayer, LogBus, LogLine, DEFAULT_BUS_CAPACITY,
    QUIET_TARGETS, REDACTED, RESERVATION_SPAN,
};

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
mod tests;
