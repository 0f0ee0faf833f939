//! The agent's log events as JSON lines: the [`LogBus`] broadcast, its
//! tracing layer [`JsonLogLayer`] (secret-named fields redacted, client
//! crates' events left out), and which user each line belongs to.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use chrono::{SecondsFormat, Utc};
use serde_json::{Map, Value};
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

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
