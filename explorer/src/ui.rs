//! The read-only fleet dashboard (`/ui/...`) and the JSON read API it
//! polls (`/api/...`), both served by `explorer serve` itself.
//!
//! Pages are rendered on the server with maud (compile-time templates that
//! escape every interpolated value), charts and capacity bars are inline
//! SVG drawn here, and `/ui/app.js` (a few KB, embedded in the binary)
//! polls the page's JSON endpoint every second: when the answer changes it
//! fetches the page again and swaps its `<main>`. Every `/ui` and `/api`
//! answer carries `Content-Security-Policy: default-src 'self'; script-src
//! 'self'`, so no inline script or style can run even if something slipped
//! through the escaping.
//!
//! What a user signed is shown escaped; secrets inside `data` (any key
//! naming a secret or a password: `secret_env` values, `password`,
//! `cluster_secret`) are shown as `<sealed>`, and strings longer than
//! [`MAX_STRING`] bytes are cut with a note.
//!
//! The store keeps only a node's last heartbeat, so the server keeps the
//! last [`HISTORY`] heartbeats of each node in memory ([`History`]); they
//! start empty at each restart and are per replica.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use reservation::node::{Capacity, NodeInfo};
use reservation::{Reservation, ResultState};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::server::AppState;
use crate::storage::{PollRange, Record};
use crate::ExplorerError;

/// The agent's default heartbeat interval; a heartbeat older than three
/// of them is shown stale (red).
pub(crate) const HEARTBEAT_INTERVAL_S: i64 = 30;
/// Heartbeats kept per node for the chart.
pub(crate) const HISTORY: usize = 120;
/// At most this many reservations are listed per node (the oldest first).
pub(crate) const MAX_LISTED: usize = 1000;
/// Longer strings in `data` (and result data) are cut to this many bytes.
pub(crate) const MAX_STRING: usize = 1024;
/// Shown instead of a secret.
pub(crate) const SEALED: &str = "<sealed>";

const CSP: &str = "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const APP_JS: &str = include_str!("ui/app.js");
const APP_CSS: &str = include_str!("ui/app.css");

type St = State<Arc<AppState>>;

/// One heartbeat as the dashboard remembers it.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Beat {
    pub at: DateTime<Utc>,
    pub used: Capacity,
}

/// The last [`HISTORY`] heartbeats of each node that sent one to this
/// server (only registered nodes with a valid signature get here).
#[derive(Default)]
pub(crate) struct History {
    map: Mutex<HashMap<String, VecDeque<Beat>>>,
}

impl History {
    pub fn record(&self, node_id: &str, at: DateTime<Utc>, used: Capacity) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let ring = map.entry(node_id.to_string()).or_default();
        if ring.len() == HISTORY {
            ring.pop_front();
        }
        ring.push_back(Beat { at, used });
    }

    pub fn get(&self, node_id: &str) -> Vec<Beat> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(node_id)
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }
}

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(fleet_page))
        .route("/ui/app.js", get(app_js))
        .route("/ui/app.css", get(app_css))
        .route("/ui/nodes/:key", get(node_page))
        .route("/ui/reservations/:key", get(reservation_page))
        .route("/ui/users/:key", get(user_page))
        .route("/api/fleet", get(fleet_api))
        .route("/api/nodes/:key", get(node_api))
        .route("/api/reservations/:key", get(reservation_api))
        .route("/api/users/:key", get(user_api))
        .layer(axum::middleware::map_response(secure))
}

async fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

async fn app_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

// ---------------------------------------------------------------- data

/// A reservation as the dashboard lists it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub id: String,
    pub node_id: String,
    pub user_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `pending`, `deployed`, `error`, `deleting`, `deleted` or `expired`.
    pub state: &'static str,
    pub created: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub to_delete: bool,
    pub deleted: bool,
    pub result_state: Option<&'static str>,
    pub result_error: Option<String>,
}

const STATES: [&str; 6] = [
    "pending", "deployed", "error", "deleting", "deleted", "expired",
];

fn row(rec: &Record, now: DateTime<Utc>) -> Row {
    let r = &rec.reservation;
    let result = rec.results.last();
    let state = if rec.deleted {
        "deleted"
    } else if r.to_delete {
        "deleting"
    } else if r.is_expired(now) {
        "expired"
    } else {
        match result.map(|x| x.state) {
            Some(ResultState::Ok) => "deployed",
            Some(ResultState::Error) => "error",
            None => "pending",
        }
    };
    Row {
        id: r.id.clone(),
        node_id: r.node_id.clone(),
        user_id: r.user_id.clone(),
        kind: cut(&r.kind, 64),
        state,
        created: r.created_set(),
        expires_at: r.expires_at(),
        to_delete: r.to_delete,
        deleted: rec.deleted,
        result_state: result.map(|x| x.state.as_str()),
        result_error: result
            .filter(|x| !x.error.is_empty())
            .map(|x| cut(&x.error, MAX_STRING)),
    }
}

/// A node's row on the fleet page.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeRow {
    #[serde(flatten)]
    pub info: NodeInfo,
    /// Workloads not expired nor being deleted, per type.
    pub workloads: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Totals {
    pub nodes: usize,
    pub capacity: Capacity,
    pub used: Capacity,
    pub workloads: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Fleet {
    pub heartbeat_interval_s: i64,
    pub nodes: Vec<NodeRow>,
    pub totals: Totals,
}

fn add(a: &mut Capacity, b: &Capacity) {
    a.cru += b.cru;
    a.mru += b.mru;
    a.sru += b.sru;
    a.hru += b.hru;
}

async fn fleet(st: &AppState) -> Result<Fleet, ExplorerError> {
    let now = Utc::now();
    let mut nodes = Vec::new();
    let mut totals = Totals::default();
    for info in st.db.nodes().await? {
        let active = st
            .db
            .poll(
                &info.node_id,
                PollRange {
                    from: 0,
                    all: false,
                    limit: MAX_LISTED,
                },
                now,
            )
            .await?;
        let mut workloads = BTreeMap::new();
        for r in active.iter().filter(|r| !r.to_delete) {
            *workloads.entry(cut(&r.kind, 64)).or_insert(0) += 1;
            *totals.workloads.entry(cut(&r.kind, 64)).or_insert(0) += 1;
        }
        totals.nodes += 1;
        add(&mut totals.capacity, &info.capacity);
        add(&mut totals.used, &info.used);
        nodes.push(NodeRow { info, workloads });
    }
    Ok(Fleet {
        heartbeat_interval_s: HEARTBEAT_INTERVAL_S,
        nodes,
        totals,
    })
}

/// Filters of the node page (`?state=...&type=...`).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Filter {
    #[serde(default)]
    state: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

impl Filter {
    fn keeps(&self, r: &Row) -> bool {
        let state = self.state.as_deref().filter(|s| !s.is_empty());
        let kind = self.kind.as_deref().filter(|s| !s.is_empty());
        state.is_none_or(|s| s == r.state) && kind.is_none_or(|k| k == r.kind)
    }
    fn query(&self) -> String {
        let mut q = Vec::new();
        for (k, v) in [("state", &self.state), ("type", &self.kind)] {
            if let Some(v) = v.as_deref().filter(|s| !s.is_empty()) {
                q.push(format!("{k}={}", urlencode(v)));
            }
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }
}

fn urlencode(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeDetail {
    pub node: NodeInfo,
    pub heartbeat_interval_s: i64,
    /// Reservations of the node after the filters, oldest first.
    pub reservations: Vec<Row>,
    /// Every workload type seen on the node (for the filter).
    pub types: Vec<String>,
    /// The last heartbeats this server received, oldest first.
    pub heartbeats: Vec<Beat>,
}

async fn records_of(st: &AppState, node_id: &str) -> Result<Vec<Record>, ExplorerError> {
    let q = PollRange {
        from: 0,
        all: true,
        limit: MAX_LISTED,
    };
    let mut out = Vec::new();
    for r in st.db.poll(node_id, q, Utc::now()).await? {
        if let Some(rec) = st.db.get(&r.id).await? {
            out.push(rec);
        }
    }
    Ok(out)
}

async fn node_detail(
    st: &AppState,
    id: &str,
    f: &Filter,
) -> Result<Option<NodeDetail>, ExplorerError> {
    let Some(node) = st.db.nodes().await?.into_iter().find(|n| n.node_id == id) else {
        return Ok(None);
    };
    let now = Utc::now();
    let rows: Vec<Row> = records_of(st, id)
        .await?
        .iter()
        .map(|r| row(r, now))
        .collect();
    let mut types: Vec<String> = rows.iter().map(|r| r.kind.clone()).collect();
    types.sort();
    types.dedup();
    Ok(Some(NodeDetail {
        heartbeats: st.history.get(id),
        node,
        heartbeat_interval_s: HEARTBEAT_INTERVAL_S,
        reservations: rows.into_iter().filter(|r| f.keeps(r)).collect(),
        types,
    }))
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ResultDetail {
    pub state: &'static str,
    pub error: String,
    pub created: DateTime<Utc>,
    /// `data`, secrets sealed and long strings cut.
    pub data: Value,
    pub signature: String,
    /// The node's signature over this result and the reservation's
    /// signature, checked as this answer was made.
    pub signature_verifies: bool,
    pub verify_error: Option<String>,
    /// How many results the node posted (this is the last).
    pub attempts: usize,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReservationDetail {
    #[serde(flatten)]
    pub row: Row,
    pub version: u32,
    pub duration: i64,
    pub nonce: String,
    pub signature: String,
    pub user_signature_verifies: bool,
    /// `data`, secrets sealed and long strings cut.
    pub data: Value,
    pub delete_signature: Option<String>,
    pub delete_signature_verifies: Option<bool>,
    pub deleted_signature: Option<String>,
    pub deleted_signature_verifies: Option<bool>,
    pub result: Option<ResultDetail>,
}

fn detail(rec: &Record) -> ReservationDetail {
    let r = &rec.reservation;
    let result = rec.results.last().map(|x| {
        let check = x.verify(&r.node_id, &r.signature);
        ResultDetail {
            state: x.state.as_str(),
            error: cut(&x.error, MAX_STRING),
            created: x.created,
            data: shown(x.data.get()),
            signature: x.signature.clone(),
            signature_verifies: check.is_ok(),
            verify_error: check.err().map(|e| e.to_string()),
            attempts: rec.results.len(),
        }
    });
    ReservationDetail {
        row: row(rec, Utc::now()),
        version: r.version,
        duration: r.duration,
        nonce: cut(&r.nonce, 128),
        signature: cut(&r.signature, 256),
        user_signature_verifies: r.verify().is_ok(),
        data: shown(r.data.get()),
        delete_signature: r.delete_signature.as_deref().map(|s| cut(s, 256)),
        delete_signature_verifies: r
            .delete_signature
            .as_ref()
            .map(|_| r.verify_delete().is_ok()),
        deleted_signature: rec.deleted_signature.as_deref().map(|s| cut(s, 256)),
        deleted_signature_verifies: rec
            .deleted_signature
            .as_deref()
            .map(|c| r.verify_deleted(c).is_ok()),
        result,
    }
}

async fn user_rows(st: &AppState, user: &str) -> Result<Vec<Row>, ExplorerError> {
    let now = Utc::now();
    let mut out = Vec::new();
    for n in st.db.nodes().await? {
        let q = PollRange {
            from: 0,
            all: true,
            limit: MAX_LISTED,
        };
        for r in st.db.poll(&n.node_id, q, now).await? {
            if r.user_id != user {
                continue;
            }
            if let Some(rec) = st.db.get(&r.id).await? {
                out.push(row(&rec, now));
            }
        }
    }
    Ok(out)
}

// ------------------------------------------------------ sealing, cutting

/// `raw` JSON as the dashboard shows it: secrets sealed, long strings cut.
pub(crate) fn shown(raw: &str) -> Value {
    match serde_json::from_str::<Value>(raw) {
        Ok(mut v) => {
            clean(&mut v, false);
            v
        }
        Err(_) => Value::String(cut(raw, MAX_STRING)),
    }
}

fn clean(v: &mut Value, secret: bool) {
    match v {
        Value::Object(m) => {
            let old = std::mem::take(m);
            for (k, mut x) in old {
                let s = secret || reservation::workloads::is_secret_key(&k);
                clean(&mut x, s);
                m.insert(cut(&k, MAX_STRING), x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| clean(x, secret)),
        Value::Null => {}
        _ if secret => *v = Value::String(SEALED.into()),
        Value::String(s) if s.len() > MAX_STRING => *s = cut(s, MAX_STRING),
        _ => {}
    }
}

/// `s` cut to at most `max` bytes (on a character boundary), with a note
/// of the full length when cut.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [truncated: {} bytes in all]", &s[..end], s.len())
}

/// The first characters of an id, for tables (the full id goes in `title`).
fn short(id: &str) -> String {
    if id.chars().count() <= 10 {
        id.to_string()
    } else {
        format!("{}…", id.chars().take(8).collect::<String>())
    }
}

// ---------------------------------------------------------------- API

/// A storage failure: the cause to the log, not to the anonymous reader.
fn fail(e: ExplorerError) -> Response {
    crate::server::ApiError::from(e).into_response()
}

fn json_404(what: &str, id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": format!("{what} {id:?} not found") })),
    )
        .into_response()
}

async fn fleet_api(State(st): St) -> Response {
    match fleet(&st).await {
        Ok(f) => Json(f).into_response(),
        Err(e) => fail(e),
    }
}

async fn node_api(State(st): St, Path(id): Path<String>, Query(f): Query<Filter>) -> Response {
    match node_detail(&st, &id, &f).await {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => json_404("node", &id),
        Err(e) => fail(e),
    }
}

async fn reservation_api(State(st): St, Path(id): Path<String>) -> Response {
    match st.db.get(&id).await {
        Ok(Some(rec)) => Json(detail(&rec)).into_response(),
        Ok(None) => json_404("reservation", &id),
        Err(e) => fail(e),
    }
}

async fn user_api(State(st): St, Path(id): Path<String>) -> Response {
    match user_rows(&st, &id).await {
        Ok(rows) => {
            Json(serde_json::json!({ "user_id": id, "reservations": rows })).into_response()
        }
        Err(e) => fail(e),
    }
}

// -------------------------------------------------------------- pages

fn page(title: &str, api: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · explorer" }
                link rel="stylesheet" href="/ui/app.css";
                script src="/ui/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/ui/" { "explorer" }
                    span.muted { "fleet dashboard, read-only" }
                }
                main data-api=(api) { (body) }
                footer.muted { "Live: refreshes every second from " code { (api) } "." }
            }
        }
    }
}

fn html_page(status: StatusCode, m: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

fn not_found(what: &str, id: &str) -> Response {
    let title = format!("No such {what}");
    html_page(
        StatusCode::NOT_FOUND,
        page(
            &title,
            "/api/fleet",
            html! { h1 { (title) } p { "Nothing is stored under " code { (cut(id, 200)) } ". " a href="/ui/" { "Back to the fleet" } } },
        ),
    )
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.1}")
    }
}

/// A used/total bar as inline SVG (no inline style: the CSP forbids it).
fn bar(label: &str, used: f64, total: f64, unit: &str) -> Markup {
    let pct = if total > 0.0 {
        (used / total * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    };
    let class = if pct >= 90.0 { "fill hot" } else { "fill" };
    let text = format!("{}/{}{unit}", num(used), num(total));
    html! {
        div.cap title=(format!("{label}: {text} used")) {
            span.caplabel { (label) }
            svg.bar viewBox="0 0 100 6" preserveAspectRatio="none" role="img" aria-label=(format!("{label} {text}")) {
                rect.track x="0" y="0" width="100" height="6" {}
                rect class=(class) x="0" y="0" width=(format!("{pct:.1}")) height="6" {}
            }
            span.capnum { (text) }
        }
    }
}

fn bars(used: &Capacity, total: &Capacity) -> Markup {
    html! {
        (bar("cpu", used.cru, total.cru, ""))
        (bar("mem", used.mru, total.mru, " GiB"))
        (bar("ssd", used.sru, total.sru, " GiB"))
        (bar("hdd", used.hru, total.hru, " GiB"))
    }
}

fn ago_text(secs: i64) -> String {
    let s = secs.max(0);
    if s < 90 {
        format!("{s} s ago")
    } else if s < 5400 {
        format!("{} min ago", (s + 30) / 60)
    } else if s < 172_800 {
        format!("{} h ago", (s + 1800) / 3600)
    } else {
        format!("{} d ago", (s + 43_200) / 86_400)
    }
}

fn until_text(secs: i64) -> String {
    if secs <= 0 {
        "expired".into()
    } else if secs < 90 {
        format!("in {secs} s")
    } else if secs < 5400 {
        format!("in {} min", (secs + 30) / 60)
    } else if secs < 172_800 {
        format!("in {} h", (secs + 1800) / 3600)
    } else {
        format!("in {} d", (secs + 43_200) / 86_400)
    }
}

fn heartbeat(at: Option<DateTime<Utc>>) -> Markup {
    let limit = 3 * HEARTBEAT_INTERVAL_S;
    match at {
        None => html! { span.stale { "never" } },
        Some(t) => {
            let secs = (Utc::now() - t).num_seconds();
            let class = if secs > limit { "ago stale" } else { "ago" };
            html! {
                time class=(class) datetime=(t.to_rfc3339()) title=(t.to_rfc3339())
                    data-ts=(t.timestamp_millis()) data-kind="ago" data-stale=(limit) { (ago_text(secs)) }
            }
        }
    }
}

fn expires(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        None => html! { "never set" },
        Some(t) => html! {
            time datetime=(t.to_rfc3339()) title=(t.to_rfc3339()) data-ts=(t.timestamp_millis()) data-kind="until" {
                (until_text((t - Utc::now()).num_seconds()))
            }
        },
    }
}

fn id_link(kind: &str, id: &str) -> Markup {
    html! { a.id href=(format!("/ui/{kind}/{}", urlencode(id))) title=(id) { (short(id)) } }
}

fn workload_list(w: &BTreeMap<String, usize>) -> Markup {
    html! {
        @if w.is_empty() { span.muted { "none" } }
        ul.chips { @for (k, n) in w { li { span.k { (k) } " " b { (n) } } } }
    }
}

async fn fleet_page(State(st): St) -> Response {
    let f = match fleet(&st).await {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let body = html! {
        h1 { "Fleet" }
        section.totals {
            div { span.big { (f.totals.nodes) } " nodes" }
            div.totalbars { (bars(&f.totals.used, &f.totals.capacity)) }
            div { h2 { "Workloads" } (workload_list(&f.totals.workloads)) }
        }
        @if f.nodes.is_empty() {
            p.muted { "No node has registered yet." }
        } @else {
            table.list #nodes {
                thead { tr { th { "Node" } th { "URL" } th { "Last heartbeat" } th { "Capacity used" } th { "Workloads" } } }
                tbody {
                    @for n in &f.nodes {
                        tr data-node=(n.info.node_id) {
                            td data-label="Node" {
                                (id_link("nodes", &n.info.node_id))
                                @if n.info.draining { " " span.tag { "draining" } }
                            }
                            td data-label="URL" { span.url { (cut(&n.info.url, 200)) } }
                            td data-label="Heartbeat" { (heartbeat(n.info.last_heartbeat)) }
                            td data-label="Capacity" { (bars(&n.info.used, &n.info.capacity)) }
                            td data-label="Workloads" { (workload_list(&n.workloads)) }
                        }
                    }
                }
            }
        }
    };
    html_page(StatusCode::OK, page("Fleet", "/api/fleet", body))
}

/// The heartbeat history as an inline SVG line chart of cpu and memory
/// use (fraction of capacity).
fn chart(beats: &[Beat], cap: &Capacity) -> Markup {
    if beats.len() < 2 {
        return html! { p.muted { "Not enough heartbeats received by this server yet for a chart (" (beats.len()) ")." } };
    }
    let (w, h) = (300.0, 60.0);
    let t0 = beats[0].at.timestamp_millis() as f64;
    let t1 = beats[beats.len() - 1].at.timestamp_millis() as f64;
    let span = (t1 - t0).max(1.0);
    let line = |f: &dyn Fn(&Capacity) -> f64, total: f64| {
        let mut pts = String::new();
        for b in beats {
            let x = (b.at.timestamp_millis() as f64 - t0) / span * w;
            let frac = if total > 0.0 {
                (f(&b.used) / total).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let _ = write!(pts, "{x:.1},{:.1} ", h - frac * (h - 2.0) - 1.0);
        }
        pts
    };
    let cpu = line(&|c| c.cru, cap.cru);
    let mem = line(&|c| c.mru, cap.mru);
    html! {
        figure.chart {
            svg viewBox="0 0 300 60" preserveAspectRatio="none" role="img" aria-label="heartbeat history" {
                rect.track x="0" y="0" width="300" height="60" {}
                polyline.cpu points=(cpu) {}
                polyline.mem points=(mem) {}
            }
            figcaption.muted {
                span.key.cpu { "cpu" } " " span.key.mem { "memory" }
                " used, last " (beats.len()) " heartbeats from " (beats[0].at.format("%H:%M:%S")) " to "
                (beats[beats.len() - 1].at.format("%H:%M:%S")) " UTC"
            }
        }
    }
}

fn res_table(rows: &[Row], with_node: bool) -> Markup {
    html! {
        @if rows.is_empty() { p.muted { "No reservation." } }
        @else {
            table.list.res {
                thead { tr {
                    th { "Id" } th { "Type" }
                    @if with_node { th { "Node" } } @else { th { "User" } }
                    th { "State" } th { "Expires" } th { "Result" }
                } }
                tbody {
                    @for r in rows {
                        tr data-id=(r.id) {
                            td data-label="Id" { a href=(format!("/ui/reservations/{}", urlencode(&r.id))) { (r.id) } }
                            td data-label="Type" { (r.kind) }
                            @if with_node { td data-label="Node" { (id_link("nodes", &r.node_id)) } }
                            @else { td data-label="User" { (id_link("users", &r.user_id)) } }
                            td data-label="State" { span class=(format!("state s-{}", r.state)) { (r.state) } }
                            td data-label="Expires" { (expires(r.expires_at)) }
                            td data-label="Result" {
                                @match r.result_state { Some(s) => span class=(format!("state s-{s}")) { (s) }, None => span.muted { "none" } }
                                @if let Some(e) = &r.result_error { div.err { (e) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn node_page(State(st): St, Path(id): Path<String>, Query(f): Query<Filter>) -> Response {
    let d = match node_detail(&st, &id, &f).await {
        Ok(Some(d)) => d,
        Ok(None) => return not_found("node", &id),
        Err(e) => return fail(e),
    };
    let n = &d.node;
    let api = format!("/api/nodes/{}{}", urlencode(&id), f.query());
    let sel_state = f.state.clone().unwrap_or_default();
    let sel_type = f.kind.clone().unwrap_or_default();
    let body = html! {
        h1 { "Node " span title=(n.node_id) { (short(&n.node_id)) } }
        dl.fields {
            dt { "Id" } dd.mono { (n.node_id) }
            dt { "URL" } dd.mono { (cut(&n.url, 200)) }
            dt { "Last heartbeat" } dd { (heartbeat(n.last_heartbeat)) }
            dt { "Draining" } dd { (if n.draining { "yes" } else { "no" }) }
        }
        section { h2 { "Capacity used" } div.totalbars { (bars(&n.used, &n.capacity)) } }
        section { h2 { "Heartbeats" } (chart(&d.heartbeats, &n.capacity)) }
        section {
            h2 { "Reservations" }
            form.filters method="get" {
                label { "State " select name="state" {
                    option value="" { "any" }
                    @for s in STATES { option value=(s) selected[sel_state == s] { (s) } }
                } }
                label { "Type " select name="type" {
                    option value="" { "any" }
                    @for t in &d.types { option value=(t) selected[&sel_type == t] { (t) } }
                } }
                button type="submit" { "Filter" }
            }
            (res_table(&d.reservations, false))
        }
    };
    html_page(
        StatusCode::OK,
        page(&format!("Node {}", short(&id)), &api, body),
    )
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn verdict(ok: bool, yes: &str, no: &str) -> Markup {
    html! { @if ok { span.ok { "✔ " (yes) } } @else { span.bad { "✘ " (no) } } }
}

async fn reservation_page(State(st): St, Path(id): Path<String>) -> Response {
    let rec = match st.db.get(&id).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found("reservation", &id),
        Err(e) => return fail(e),
    };
    let d = detail(&rec);
    let r: &Reservation = &rec.reservation;
    let api = format!("/api/reservations/{}", urlencode(&id));
    let body = html! {
        h1 { "Reservation " (d.row.id) }
        section {
            h2 { "Signed by the user" }
            dl.fields {
                dt { "Type" } dd { (d.row.kind) }
                dt { "Node" } dd { (id_link("nodes", &d.row.node_id)) }
                dt { "User" } dd { (id_link("users", &d.row.user_id)) }
                dt { "State" } dd { span class=(format!("state s-{}", d.row.state)) { (d.row.state) } }
                dt { "Created" } dd { (d.row.created.map(|c| c.to_rfc3339()).unwrap_or_else(|| "unset".into())) }
                dt { "Duration" } dd { (r.duration / 1_000_000_000) " s" }
                dt { "Expires" } dd { (expires(d.row.expires_at)) }
                dt { "Version" } dd { (d.version) }
                dt { "Nonce" } dd.mono { (d.nonce) }
                dt { "Signature" } dd.mono { (d.signature) br; (verdict(d.user_signature_verifies, "user signature verifies", "user signature does not verify")) }
            }
            h3 { "data" }
            pre.data { (pretty(&d.data)) }
            p.muted.note { "Secrets are shown as " code { (SEALED) } "; strings longer than " (MAX_STRING) " bytes are cut." }
        }
        section #result {
            h2 { "Result" }
            @match &d.result {
                None => p.muted { "The node has not posted a result yet." },
                Some(x) => {
                    dl.fields {
                        dt { "State" } dd { span class=(format!("state s-{}", x.state)) { (x.state) } }
                        @if !x.error.is_empty() { dt { "Error" } dd.err { (x.error) } }
                        dt { "Posted" } dd { (x.created.to_rfc3339()) }
                        dt { "Attempts" } dd { (x.attempts) }
                        dt { "Node signature" } dd.mono { (cut(&x.signature, 256)) br;
                            (verdict(x.signature_verifies, "node signature verifies", "node signature does not verify"))
                            @if let Some(e) = &x.verify_error { div.err { (e) } } }
                    }
                    h3 { "result data" }
                    pre.data { (pretty(&x.data)) }
                }
            }
        }
        section #deletion {
            h2 { "Deletion" }
            @if !d.row.to_delete && !d.row.deleted { p.muted { "Not asked to be deleted." } }
            dl.fields {
                @if let Some(ok) = d.delete_signature_verifies {
                    dt { "Asked by the user" } dd { (verdict(ok, "delete signature verifies", "delete signature does not verify")) }
                }
                @if d.row.deleted {
                    dt { "Node confirmed" } dd { (verdict(d.deleted_signature_verifies == Some(true), "deleted: node confirmation verifies", "deleted: node confirmation does not verify")) }
                } @else if d.row.to_delete {
                    dt { "Node confirmed" } dd { "not yet" }
                }
            }
        }
    };
    html_page(
        StatusCode::OK,
        page(&format!("Reservation {}", cut(&id, 40)), &api, body),
    )
}

async fn user_page(State(st): St, Path(id): Path<String>) -> Response {
    let rows = match user_rows(&st, &id).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let api = format!("/api/users/{}", urlencode(&id));
    let body = html! {
        h1 { "User " span title=(id) { (short(&id)) } }
        dl.fields { dt { "Id" } dd.mono { (cut(&id, 200)) } }
        (res_table(&rows, true))
    };
    html_page(
        StatusCode::OK,
        page(&format!("User {}", short(&id)), &api, body),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_sealed_and_long_strings_cut() {
        let big = "x".repeat(5000);
        let v = shown(&format!(
            r#"{{"env":{{"A":"1"}},"secret_env":{{"K":"abcd"}},"password":"p","nested":[{{"cluster_secret":"s"}}],"long":"{big}","n":null}}"#
        ));
        assert_eq!(v["env"]["A"], "1");
        assert_eq!(v["secret_env"]["K"], SEALED);
        assert_eq!(v["password"], SEALED);
        assert_eq!(v["nested"][0]["cluster_secret"], SEALED);
        let long = v["long"].as_str().unwrap();
        assert!(long.len() < 1100 && long.ends_with("[truncated: 5000 bytes in all]"));
        assert_eq!(v["n"], Value::Null);
    }

    #[test]
    fn cut_keeps_char_boundaries() {
        assert_eq!(cut("héllo", 2), "h… [truncated: 6 bytes in all]");
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(short("abcdefghijklmnop"), "abcdefgh…");
    }

    #[test]
    fn relative_times() {
        assert_eq!(ago_text(8), "8 s ago");
        assert_eq!(ago_text(600), "10 min ago");
        assert_eq!(until_text(-1), "expired");
        assert_eq!(until_text(3600), "in 60 min");
    }

    #[test]
    fn history_is_bounded() {
        let h = History::default();
        for _ in 0..HISTORY + 5 {
            h.record("n", Utc::now(), Capacity::default());
        }
        assert_eq!(h.get("n").len(), HISTORY);
        assert!(h.get("other").is_empty());
    }
}
