//! The explorer's HTTP routes (PROTOCOL.md, "Explorer HTTP API", version
//! 2), the long poll, and graceful shutdown.
//!
//! What each route checks before it writes anything (every refusal is a
//! `400` with a message saying what was wrong and how to fix it, unless
//! noted):
//!
//! - `POST /reservations/{node_id}`: the body's `node_id` is the path's and
//!   a node id; `type` is set; `data` is at most [`MAX_DATA`] bytes;
//!   version 2 with a well-formed nonce (`Reservation::check_version`); the
//!   user's signature over the framed message; `created` set in whole
//!   seconds, at most 5 minutes ahead, not expired (`check_lifetime`; each
//!   node enforces its own maximum duration); a deletion posted along
//!   (`to_delete`) must carry the user's `delete_signature`. A signature
//!   already stored is `409`, checked and inserted atomically. On
//!   PostgreSQL, when the replica's queue of posts waiting for the database
//!   is full (`ServerConfig::max_queued_posts`), `503` with `Retry-After`:
//!   nothing is stored, the same signed reservation may be posted again.
//! - `GET /reservations/{node_id}/poll?from=N[&all=true][&limit=L]`:
//!   `limit` 1 to [`MAX_POLL_LIMIT`] (the default). An empty answer is held
//!   up to `long_poll`; a node has at most `max_polls_per_node` polls held
//!   at once, beyond which the answer is `429` at once.
//! - `PUT /reservations/{id}`: the result's `id` is the path's, and the
//!   node signed it over this reservation's signature.
//! - `PUT /reservations/{id}/deleted`: the node's signature over
//!   `frame("deleted-v2", id, <the reservation's signature>)`.
//! - `DELETE /reservations/{id}`: the user's signature over
//!   `frame("delete-v2", <the reservation's signature>)`.
//! - `POST /nodes` and `POST /nodes/{node_id}/uptime`: the node's own
//!   signature, the capacity figures, and a `timestamp` within 5 minutes of
//!   the explorer's clock and newer than the last one accepted for that
//!   node (one counter for both routes), so a captured message cannot be
//!   replayed. Uptime of an unknown node is `404` (the agent registers
//!   again).
//! - Every body larger than `max_body` is `413`.
//!
//! A refused request changes nothing.
//!
//! Reference-explorer extensions, not part of the protocol:
//! `GET /reservations/{id}/results` answers every result the node posted
//! for the reservation, oldest first (the protocol's `GET /reservations/{id}`
//! only shows the latest). Tests use it to prove a node posted exactly one
//! result per attempt. `GET /health` answers `200 ok` while the store
//! answers, `503` with the reason otherwise (for a load balancer);
//! `GET /metrics` is Prometheus text ([`crate::metrics`]).
//!
//! The state is behind [`Storage`]: sled, or PostgreSQL shared with other
//! replicas, whose wake-ups reach this server's held polls through
//! [`Storage::forward_wakeups`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use reservation::{Reservation, WorkloadResult};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::db::Db;
use crate::metrics::{Metrics, OpenPoll};
#[cfg(feature = "postgres")]
use crate::pg::Pg;
use crate::storage::{Insert, NodeUpdate, PollRange, Storage, Wakers};
use crate::{ExplorerError, ServerConfig};
use reservation::api::{Created, DeleteRequest, DeletedConfirmation, ReservationView};
use reservation::node::{Capacity, NodeInfo, Registration, Uptime};

pub(crate) struct AppState {
    pub(crate) db: Arc<dyn Storage>,
    long_poll: Duration,
    max_body: usize,
    max_polls_per_node: usize,
    /// One channel per node with a poll waiting; bumped when something for
    /// that node is posted or deleted (here, or on another replica).
    wakers: Arc<Wakers>,
    metrics: Metrics,
    /// How many polls each node has held open (see [`HeldPoll`]).
    held: Mutex<HashMap<String, usize>>,
    /// Flips to true on shutdown, so held polls answer at once and the
    /// graceful shutdown does not wait out the long poll.
    shutdown: watch::Receiver<bool>,
    /// Recent heartbeats per node, for the dashboard's chart (the store
    /// keeps only the last one); see [`crate::ui::History`].
    pub(crate) history: crate::ui::History,
}

impl AppState {
    fn new(db: Arc<dyn Storage>, cfg: &ServerConfig, shutdown: watch::Receiver<bool>) -> Self {
        AppState {
            metrics: Metrics::new(db.connections().is_some()),
            db,
            long_poll: cfg.long_poll,
            max_body: cfg.max_body,
            max_polls_per_node: cfg.max_polls_per_node,
            wakers: Arc::default(),
            held: Mutex::new(HashMap::new()),
            shutdown,
            history: crate::ui::History::default(),
        }
    }
}

type St = State<Arc<AppState>>;

/// An error answer: status and a plain-text message a person can act on.
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds for a `Retry-After` header (a busy answer).
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("reservation {id:?} not found"),
        )
    }
}

impl From<ExplorerError> for ApiError {
    /// The cause goes to the log only: it may name the database's address,
    /// which anonymous callers have no business learning. A busy store is
    /// no failure: `503` with `Retry-After`, its message (no address) shown.
    fn from(e: ExplorerError) -> Self {
        if let ExplorerError::Busy {
            retry_after_secs, ..
        } = e
        {
            warn!(error = %e, "reservation refused: the store is busy");
            return ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: e.to_string(),
                retry_after: Some(retry_after_secs),
            };
        }
        tracing::error!(error = %e, "storage failure");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the explorer's store failed; its log says why",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut m = self.message;
        m.push('\n');
        let mut resp = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            m,
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

impl AppState {
    fn wake(&self, node_id: &str) {
        self.wakers.wake(node_id);
    }

    async fn flush(&self) -> ApiResult<()> {
        self.db.flush().await.map_err(ApiError::from)
    }
}

/// The body, or a 413 / 400 that says what was wrong with it.
fn body(max: usize, b: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than the {max} byte limit"),
            )
        } else {
            ApiError::bad(format!("cannot read the request body: {e}"))
        }
    })
}

fn parse_json<T: DeserializeOwned>(what: &str, b: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(b).map_err(|e| ApiError::bad(format!("invalid {what} JSON: {e}")))
}

/// The largest `data` accepted at `POST /reservations/{node_id}`, in bytes
/// (64 KiB). Every workload's parameters fit in far less; a node reads
/// whole poll answers, so one oversized reservation would weigh on every
/// poll of its node.
pub const MAX_DATA: usize = 64 << 10;

/// The longest lifetime the explorer stores (100 years): only a sanity
/// bound. Each node enforces its own maximum (check 6 of PROTOCOL.md) and
/// answers a longer reservation with a signed error.
const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 86_400);

/// A reservation as posted: `id` may be absent (the explorer assigns it);
/// otherwise exactly the fields of [`Reservation`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Posted {
    #[serde(default)]
    #[allow(dead_code)]
    id: Option<String>,
    #[serde(default)]
    version: u32,
    node_id: String,
    user_id: String,
    #[serde(rename = "type")]
    kind: String,
    data: Box<RawValue>,
    #[serde(default)]
    created: Option<DateTime<Utc>>,
    #[serde(default)]
    duration: i64,
    #[serde(default)]
    nonce: String,
    #[serde(default)]
    signature: String,
    #[serde(default)]
    to_delete: bool,
    #[serde(default)]
    delete_signature: Option<String>,
}

/// Every check of `POST /reservations/{node_id}` on a parsed body, in the
/// order a client sees them; the reservation to store, or the 400 message.
fn admit(node_id: &str, p: Posted, now: DateTime<Utc>) -> Result<Reservation, String> {
    if p.node_id != node_id {
        return Err(format!(
            "node_id {:?} in the body does not match {:?} in the path",
            p.node_id, node_id
        ));
    }
    reservation::identity::parse_public_key("node_id", node_id).map_err(|e| e.to_string())?;
    if p.kind.is_empty() {
        return Err("type: must not be empty".into());
    }
    let size = p.data.get().len();
    if size > MAX_DATA {
        return Err(format!(
            "data: {size} bytes is larger than the limit of {MAX_DATA} bytes (64 KiB)"
        ));
    }
    let r = Reservation {
        id: String::new(),
        version: p.version,
        node_id: p.node_id,
        user_id: p.user_id,
        kind: p.kind,
        data: p.data,
        created: p.created,
        duration: p.duration,
        nonce: p.nonce,
        signature: p.signature,
        to_delete: p.to_delete,
        delete_signature: p.delete_signature,
    };
    r.check_version()
        .map_err(|e| format!("reservation refused: {e}"))?;
    r.verify()
        .map_err(|e| format!("reservation refused: {e} (user_id {})", r.user_id))?;
    r.check_lifetime(now, MAX_LIFETIME)
        .map_err(|e| format!("reservation refused: {e}"))?;
    // `to_delete` and `delete_signature` are outside the user's signature.
    // A deletion posted with the reservation is kept only if the user
    // signed it, as `DELETE` requires: an unsigned one would stay pending
    // (and be answered in every poll of the node) for good.
    if r.to_delete || r.delete_signature.is_some() {
        if !r.to_delete {
            return Err("delete_signature is set but to_delete is false: leave both out, or ask for the deletion with DELETE /reservations/{id}".into());
        }
        r.verify_delete().map_err(|e| {
            format!(
                "reservation refused: to_delete is set but {e} (sign frame(\"delete-v2\", <the reservation's signature>) with the key of user {})",
                r.user_id
            )
        })?;
    }
    Ok(r)
}

/// `POST /reservations/{node_id}`: check shape, version, the user's
/// signature and the lifetime, store, answer the assigned id (`409` for a
/// signature already stored; `503` with `Retry-After` when the store's
/// queue is full: [`ExplorerError::Busy`]). `data` is not judged here: a well-signed
/// reservation with bad data reaches the node, which refuses it with a
/// signed error result the user can read.
async fn create(
    State(st): St,
    Path(node_id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let b = body(st.max_body, b)?;
    let p: Posted = parse_json("reservation", &b)?;
    let user = p.user_id.clone();
    let r = admit(&node_id, p, Utc::now()).map_err(|m| {
        warn!(node = %node_id, user = %user, error = %m, "reservation refused");
        ApiError::bad(m)
    })?;
    let (r, after) = match st.db.create(r).await? {
        Insert::New(r, after) => (*r, after),
        Insert::Duplicate(id) => {
            warn!(node = %node_id, user = %user, existing = %id, "reservation posted twice");
            return Ok((
                StatusCode::CONFLICT,
                [
                    (header::LOCATION, format!("/reservations/{id}")),
                    (
                        header::CONTENT_TYPE,
                        "text/plain; charset=utf-8".to_string(),
                    ),
                ],
                format!(
                    "this signed reservation is already stored as {id}: a signature is accepted once; \
                     to get another workload, sign a new reservation (with a fresh nonce)\n"
                ),
            )
                .into_response());
        }
    };
    st.flush().await?;
    st.metrics.stored.inc();
    info!(reservation = %r.id, node = %r.node_id, user = %r.user_id, r#type = %r.kind, "reservation created");
    st.wakers.wrote(&r, after);
    let location = format!("/reservations/{}", r.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(Created { id: r.id }),
    )
        .into_response())
}

/// The largest and default `limit` of a poll.
pub const MAX_POLL_LIMIT: usize = 1000;

/// The query of a poll: `from=N[&all=true|false][&limit=L]`. `from` is 0
/// when absent; `all` defaults to `from == 0` (a bare `from=0` is the full
/// resync); unknown parameters are ignored.
fn poll_query(pairs: &[(String, String)]) -> Result<PollRange, String> {
    let mut from = None;
    let mut all = None;
    let mut limit = None;
    for (k, v) in pairs {
        let slot = match k.as_str() {
            "from" => &mut from,
            "all" => &mut all,
            "limit" => &mut limit,
            _ => continue,
        };
        if slot.replace(v.as_str()).is_some() {
            return Err(format!("query: {k} is given twice"));
        }
    }
    let from = match from {
        None => 0,
        Some(v) => v.parse::<u64>().map_err(|_| {
            format!("query: from must be a reservation number (an unsigned integer), got {v:?}")
        })?,
    };
    let all = match all {
        None => from == 0,
        Some("true") => true,
        Some("false") => false,
        Some(v) => return Err(format!("query: all must be true or false, got {v:?}")),
    };
    let limit = match limit {
        None => MAX_POLL_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_POLL_LIMIT).contains(&n) => n,
            _ => {
                return Err(format!(
                    "query: limit must be a number from 1 to {MAX_POLL_LIMIT}, got {v:?}"
                ))
            }
        },
    };
    Ok(PollRange { from, all, limit })
}

/// A subscription to a node's wake channel; dropping it removes the
/// channel once no poll waits on it, so arbitrary node ids in poll paths do
/// not grow the map, whatever way the poll ends (answered, failed, or
/// dropped because the client went away).
struct Subscription {
    st: Arc<AppState>,
    node_id: String,
    rx: Option<watch::Receiver<u64>>,
}

impl Subscription {
    fn new(st: &Arc<AppState>, node_id: &str) -> Self {
        let rx = st.wakers.subscribe(node_id);
        Subscription {
            st: st.clone(),
            node_id: node_id.to_string(),
            rx: Some(rx),
        }
    }

    fn rx(&mut self) -> &mut watch::Receiver<u64> {
        self.rx.as_mut().expect("set until dropped")
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            self.st.wakers.release(&self.node_id, rx);
        }
    }
}

/// One of the node's held-poll slots; dropping it frees the slot, on
/// every exit path of the poll.
struct HeldPoll {
    st: Arc<AppState>,
    node_id: String,
    _open: OpenPoll,
}

impl HeldPoll {
    /// A slot, or `None` when the node already has `max_polls_per_node`
    /// polls held.
    fn acquire(st: &Arc<AppState>, node_id: &str) -> Option<Self> {
        let mut held = st.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(node_id.to_string()).or_insert(0);
        if *n >= st.max_polls_per_node {
            if *n == 0 {
                held.remove(node_id);
            }
            return None;
        }
        *n += 1;
        Some(HeldPoll {
            st: st.clone(),
            node_id: node_id.to_string(),
            _open: OpenPoll::new(&st.metrics.long_polls),
        })
    }
}

impl Drop for HeldPoll {
    fn drop(&mut self) {
        let mut held = self.st.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.node_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.node_id);
            }
        }
    }
}

/// `GET /reservations/{node_id}/poll?from=N[&all=true][&limit=L]`, held up
/// to `long_poll` while the answer is empty; `429` when the node already
/// has `max_polls_per_node` polls held.
async fn poll(
    State(st): St,
    Path(node_id): Path<String>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> ApiResult<Json<Vec<Reservation>>> {
    let Query(pairs) = q.map_err(|e| ApiError::bad(format!("query: {}", e.body_text())))?;
    let range = poll_query(&pairs).map_err(ApiError::bad)?;
    // Only a node id can have work: anything else would only fill the
    // wake-up and held-poll tables (and reach the store's queries).
    reservation::identity::parse_public_key("node_id", &node_id)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + st.long_poll;
    let mut sub = Subscription::new(&st, &node_id);
    let mut shutdown = st.shutdown.clone();
    let mut slot = None;
    let answer = loop {
        sub.rx().borrow_and_update();
        // A node just answered polls again from past what it got: when no
        // wake-up came for it since, that query would be empty, so the
        // poll is held without it (a write for the node wakes it, and it
        // then asks the store). One query per answer instead of two; and
        // none when the wake-up was a reservation this server stored
        // right after what the proof covers (see `Wakers::wrote`).
        let now = Utc::now();
        let known = st.wakers.known(
            &node_id,
            range,
            now.timestamp_nanos_opt().unwrap_or(i64::MAX),
        );
        let list = if let Some(list) = known {
            list
        } else {
            let token = st.wakers.begin_query(&node_id);
            let list = st.db.poll(&node_id, range, now).await?;
            st.wakers.end_query(&node_id, token, range, &list);
            list
        };
        if !list.is_empty() || *shutdown.borrow() || st.long_poll.is_zero() {
            break list;
        }
        if slot.is_none() {
            slot = Some(HeldPoll::acquire(&st, &node_id).ok_or_else(|| {
                warn!(node = %node_id, max = st.max_polls_per_node, "too many held polls");
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "too many concurrent polls for node {node_id}: at most {} are held at once; \
                         a node needs only one poll in flight, wait for its answer and poll again",
                        st.max_polls_per_node
                    ),
                )
            })?);
        }
        tokio::select! {
            r = sub.rx().changed() => if r.is_err() { break list },
            _ = tokio::time::sleep_until(deadline) => break list,
            _ = shutdown.wait_for(|s| *s) => break list,
        }
    };
    drop(slot);
    drop(sub);
    tracing::debug!(node = %node_id, from = range.from, all = range.all, count = answer.len(), "poll answered");
    Ok(Json(answer))
}

/// `GET /reservations/{id}`.
async fn show(State(st): St, Path(id): Path<String>) -> ApiResult<Json<ReservationView>> {
    let rec = st
        .db
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    Ok(Json(ReservationView::new(
        &rec.reservation,
        rec.results.last().cloned(),
        rec.deleted,
    )))
}

/// `GET /reservations/{id}/results` (extension): every result, oldest first.
async fn results(State(st): St, Path(id): Path<String>) -> ApiResult<Json<Vec<WorkloadResult>>> {
    let rec = st
        .db
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    Ok(Json(rec.results))
}

/// `PUT /reservations/{id}`: a result, signed by the reservation's node
/// over this reservation's signature.
async fn put_result(
    State(st): St,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let b = body(st.max_body, b)?;
    let rec = st
        .db
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    let result: WorkloadResult = parse_json("result", &b)?;
    if result.id != id {
        return Err(ApiError::bad(format!(
            "result id {:?} does not match reservation {id:?} in the path",
            result.id
        )));
    }
    let r = &rec.reservation;
    if let Err(e) = result.verify(&r.node_id, &r.signature) {
        warn!(reservation = %id, node = %r.node_id, error = %e, "result refused");
        return Err(ApiError::bad(format!(
            "result refused: {e} (it must be signed by node {} over frame(\"result-v2\", id, state, error, data, <the reservation's signature>), with the signature of reservation {id})",
            r.node_id
        )));
    }
    let state = result.state.as_str();
    let error = result.error.clone();
    if !st.db.add_result(&id, result).await? {
        return Err(ApiError::not_found(&id));
    }
    st.flush().await?;
    info!(reservation = %id, state, error = %error, "result stored");
    Ok(StatusCode::OK)
}

/// `PUT /reservations/{id}/deleted`: the node decommissioned it, and signed
/// so over the reservation's id and signature.
async fn put_deleted(
    State(st): St,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let b = body(st.max_body, b)?;
    let rec = st
        .db
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    let c: DeletedConfirmation = parse_json("deletion confirmation", &b)?;
    let r = &rec.reservation;
    if let Err(e) = r.verify_deleted(&c.signature) {
        warn!(reservation = %id, node = %r.node_id, error = %e, "deletion confirmation refused");
        return Err(ApiError::bad(format!(
            "deletion confirmation refused: {e} (it must be signed by node {} over frame(\"deleted-v2\", \"{id}\", <the reservation's signature>))",
            r.node_id
        )));
    }
    if !st.db.mark_deleted(&id, c.signature).await? {
        return Err(ApiError::not_found(&id));
    }
    st.flush().await?;
    info!(reservation = %id, "node confirmed deletion");
    Ok(StatusCode::OK)
}

/// `DELETE /reservations/{id}`: only with the user's signature over
/// `frame("delete-v2", <the reservation's signature>)`.
async fn delete(
    State(st): St,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let b = body(st.max_body, b)?;
    let rec = st
        .db
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    let req: DeleteRequest = parse_json("deletion", &b)?;
    let mut candidate = rec.reservation.clone();
    candidate.delete_signature = Some(req.delete_signature.clone());
    if let Err(e) = candidate.verify_delete() {
        warn!(reservation = %id, user = %rec.reservation.user_id, error = %e, "deletion refused");
        return Err(ApiError::bad(format!(
            "deletion refused: {e} (sign frame(\"delete-v2\", <the reservation's signature>) with the key of user {}; the signature of {id} is {})",
            rec.reservation.user_id, rec.reservation.signature
        )));
    }
    let node = st
        .db
        .set_to_delete(&id, req.delete_signature)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    st.flush().await?;
    info!(reservation = %id, node = %node, "deletion requested");
    st.wake(&node);
    Ok(StatusCode::OK)
}

/// A signed `capacity` or `used` object as a [`Capacity`].
fn capacity(what: &str, raw: &RawValue) -> ApiResult<Capacity> {
    let c: Capacity = serde_json::from_str(raw.get()).map_err(|e| {
        ApiError::bad(format!(
            "{what}: not a capacity object ({{\"cru\", \"mru\", \"sru\", \"hru\"}}): {e}"
        ))
    })?;
    if let Some(f) = c.invalid_field() {
        return Err(ApiError::bad(format!(
            "{what}.{f}: must be a number from 0 to {}",
            reservation::node::MAX_FIGURE
        )));
    }
    Ok(c)
}

/// Longest node URL accepted at registration.
pub const MAX_NODE_URL: usize = 2048;

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// `POST /nodes`: register or re-register, signed by the node, with a
/// timestamp newer than the node's last accepted one.
async fn register(State(st): St, b: Result<Bytes, BytesRejection>) -> ApiResult<StatusCode> {
    let b = body(st.max_body, b)?;
    let reg: Registration = parse_json("node registration", &b)?;
    reservation::identity::parse_public_key("node_id", &reg.node_id)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    if reg.url.trim().is_empty() {
        return Err(ApiError::bad("url: must say where the node can be reached"));
    }
    // Shown in `explorer nodes`, the dashboard and the log: bounded, one
    // line, no control characters.
    if reg.url.len() > MAX_NODE_URL || reg.url.chars().any(char::is_control) {
        return Err(ApiError::bad(format!(
            "url: at most {MAX_NODE_URL} bytes, without control characters"
        )));
    }
    let cap = capacity("capacity", &reg.capacity)?;
    if let Err(e) = reg.verify() {
        warn!(node = %reg.node_id, error = %e, "node registration refused");
        return Err(ApiError::bad(format!(
            "node registration refused: {e} (it must be signed by the node's own key over frame(\"node-v2\", node_id, url, capacity, timestamp))"
        )));
    }
    match st
        .db
        .register_node(&reg.node_id, &reg.url, cap, reg.timestamp, now_ms())
        .await?
    {
        Ok(info) => {
            st.flush().await?;
            info!(node = %info.node_id, url = %info.url, "node registered");
            Ok(StatusCode::CREATED)
        }
        Err(m) => {
            warn!(node = %reg.node_id, error = %m, "node registration refused");
            Err(ApiError::bad(format!(
                "node registration refused: {m} (sign every message with a fresh timestamp)"
            )))
        }
    }
}

/// `POST /nodes/{node_id}/uptime`: heartbeat, signed by the node, with a
/// timestamp newer than the node's last accepted one. 404 for an unknown
/// node, so the agent knows to register again (e.g. after the explorer
/// lost state).
async fn uptime(
    State(st): St,
    Path(node_id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let b = body(st.max_body, b)?;
    let up: Uptime = parse_json("uptime", &b)?;
    let used = capacity("used", &up.used)?;
    let draining = serde_json::from_str::<serde_json::Value>(up.used.get())
        .ok()
        .and_then(|v| v.get("draining").and_then(|d| d.as_bool()))
        .unwrap_or(false);
    if let Err(e) = up.verify(&node_id) {
        warn!(node = %node_id, error = %e, "uptime refused");
        return Err(ApiError::bad(format!(
            "uptime refused: {e} (it must be signed by node {node_id} over frame(\"node-v2\", node_id, \"uptime\", uptime, used, timestamp))"
        )));
    }
    match st
        .db
        .heartbeat(&node_id, used, draining, up.timestamp, Utc::now())
        .await?
    {
        NodeUpdate::Done => {
            st.flush().await?;
            st.history.record(&node_id, Utc::now(), used);
            tracing::debug!(node = %node_id, uptime = up.uptime, "heartbeat");
            Ok(StatusCode::OK)
        }
        NodeUpdate::Stale(m) => {
            warn!(node = %node_id, error = %m, "uptime refused");
            Err(ApiError::bad(format!(
                "uptime refused: {m} (sign every message with a fresh timestamp)"
            )))
        }
        NodeUpdate::Unknown => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("node {node_id:?} is not registered: POST /nodes first"),
        )),
    }
}

/// `GET /nodes`.
async fn nodes(State(st): St) -> ApiResult<Json<Vec<NodeInfo>>> {
    Ok(Json(st.db.nodes().await?))
}

/// `GET /health` (extension): `200 ok` while the store answers, else `503`
/// with the reason, so a load balancer sends nothing to a replica that
/// lost its database.
async fn health(State(st): St) -> Response {
    match st.db.health().await {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "ok\n",
        )
            .into_response(),
        Err(e) => {
            warn!(error = %e, "health check failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the explorer's store does not answer; its log says why",
            )
            .into_response()
        }
    }
}

/// `GET /metrics` (extension): Prometheus text.
async fn metrics(State(st): St) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(st.db.connections()),
    )
        .into_response()
}

/// Count every answer in `explorer_http_requests_total`.
async fn count(State(st): St, req: Request, next: Next) -> Response {
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "other",
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    st.metrics.request(method, &route, resp.status().as_u16());
    resp
}

async fn fallback(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route {method} {}: see PROTOCOL.md, Explorer HTTP API",
            uri.path()
        ),
    )
}

pub(crate) fn router(st: Arc<AppState>) -> Router {
    let limit = st.max_body;
    // One parameter name per position: the router refuses two names for the
    // same segment (`{node_id}` and `{id}` share `/reservations/:key`).
    Router::new()
        .route(
            "/reservations/:key",
            post(create).get(show).put(put_result).delete(delete),
        )
        .route("/reservations/:key/poll", get(poll))
        .route("/reservations/:key/results", get(results))
        .route("/reservations/:key/deleted", put(put_deleted))
        .route("/nodes", post(register).get(nodes))
        .route("/nodes/:key/uptime", post(uptime))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(crate::ui::routes())
        .fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(st.clone(), count))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(st)
}

/// The routes over the sled database in `cfg.data_dir`, with no listener.
/// The shutdown sender is dropped at once, so a poll with an empty answer
/// returns at once instead of being held: the fuzz targets drive the real
/// handlers in-process, one request after another.
pub(crate) fn in_process(cfg: &ServerConfig) -> Result<Router, ExplorerError> {
    let db = Db::open(&cfg.data_dir)?;
    let (_no_shutdown, rx) = watch::channel(false);
    Ok(router(Arc::new(AppState::new(Arc::new(db), cfg, rx))))
}

/// The store `cfg` names: PostgreSQL (schema migrated) when
/// `cfg.database` is set, else sled under `cfg.data_dir`.
pub(crate) async fn open(cfg: &ServerConfig) -> Result<Arc<dyn Storage>, ExplorerError> {
    match &cfg.database {
        #[cfg(feature = "postgres")]
        Some(url) => {
            let pg = Pg::connect(url, cfg.max_connections, cfg.max_queued_posts).await?;
            pg.migrate().await?;
            Ok(Arc::new(pg))
        }
        #[cfg(not(feature = "postgres"))]
        Some(url) => Err(ExplorerError::NoPostgres {
            at: crate::redact_database_url(url),
        }),
        None => Ok(Arc::new(Db::open(&cfg.data_dir)?)),
    }
}

pub(crate) async fn run(
    listener: tokio::net::TcpListener,
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ExplorerError> {
    let db = open(&cfg).await?;
    let (tx, rx) = watch::channel(false);
    let st = Arc::new(AppState::new(db, &cfg, rx.clone()));
    st.db.forward_wakeups(st.wakers.clone(), rx.clone());
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let mut stop = rx;
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, store = %st.db.describe(), "explorer listening");
    }
    let served = axum::serve(listener, router(st.clone()))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    let flushed = st.db.flush().await;
    st.db.close().await;
    served.map_err(ExplorerError::Serve)?;
    flushed?;
    info!("explorer stopped");
    Ok(())
}

/// What a build without the `postgres` feature (the agent's embedded
/// explorer) does with a database URL: `cargo test -p explorer
/// --no-default-features --lib`.
#[cfg(all(test, not(feature = "postgres")))]
mod without_postgres {
    use super::*;

    #[tokio::test]
    async fn a_database_url_is_refused_saying_this_build_has_no_postgresql() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ServerConfig {
            database: Some("postgres://explorer:s3cret@db:5432/explorer".into()),
            ..ServerConfig::new(dir.path())
        };
        let Err(e) = open(&cfg).await else {
            panic!("a database URL was taken by a build without PostgreSQL");
        };
        let m = e.to_string();
        assert!(matches!(e, ExplorerError::NoPostgres { .. }), "{m}");
        assert!(m.contains("this build has no PostgreSQL support"), "{m}");
        assert!(
            m.contains("postgres://db:5432/explorer") && !m.contains("s3cret"),
            "{m}"
        );
        let e = crate::migrate("postgres://explorer:s3cret@db:5432/explorer")
            .await
            .unwrap_err();
        assert!(matches!(e, ExplorerError::NoPostgres { .. }), "{e}");
    }
}
