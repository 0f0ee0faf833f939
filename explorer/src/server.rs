//! The explorer's HTTP routes (PROTOCOL.md, "Explorer HTTP API"), the long
//! poll, and graceful shutdown.
//!
//! Reference-explorer extension, not part of the protocol:
//! `GET /reservations/{id}/results` answers every result the node posted
//! for the reservation, oldest first (the protocol's `GET /reservations/{id}`
//! only shows the latest). Tests use it to prove a node posted exactly one
//! result per attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, Method, StatusCode, Uri};
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

use crate::api::{Created, DeleteRequest, NodeRegistration, ReservationView, Uptime};
use crate::db::Db;
use crate::{ExplorerError, ServerConfig};

pub(crate) struct AppState {
    db: Db,
    long_poll: Duration,
    max_body: usize,
    /// One channel per node with a poll waiting; bumped when something for
    /// that node is posted or deleted.
    wake: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Flips to true on shutdown, so held polls answer at once and the
    /// graceful shutdown does not wait out the long poll.
    shutdown: watch::Receiver<bool>,
}

type St = State<Arc<AppState>>;

/// An error answer: status and a plain-text message a person can act on.
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
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
    fn from(e: ExplorerError) -> Self {
        tracing::error!(error = %e, "storage failure");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut m = self.message;
        m.push('\n');
        (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            m,
        )
            .into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

impl AppState {
    fn wake(&self, node_id: &str) {
        let map = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(node_id) {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    fn subscribe(&self, node_id: &str) -> watch::Receiver<u64> {
        let mut map = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(node_id.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Drop the node's channel once no poll waits on it, so arbitrary node
    /// ids in poll paths do not grow the map.
    fn unsubscribe(&self, node_id: &str, rx: watch::Receiver<u64>) {
        drop(rx);
        let mut map = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(node_id).is_some_and(|tx| tx.receiver_count() == 0) {
            map.remove(node_id);
        }
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

/// A reservation as posted: `id` may be absent (the explorer assigns it);
/// otherwise exactly the fields of [`Reservation`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Posted {
    #[serde(default)]
    #[allow(dead_code)]
    id: Option<String>,
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
    signature: String,
    #[serde(default)]
    to_delete: bool,
    #[serde(default)]
    delete_signature: Option<String>,
}

/// `POST /reservations/{node_id}`: check shape and the user's signature,
/// store, answer the assigned id. `data` is not judged here: a well-signed
/// reservation with bad data reaches the node, which refuses it with a
/// signed error result the user can read.
async fn create(
    State(st): St,
    Path(node_id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let b = body(st.max_body, b)?;
    let p: Posted = parse_json("reservation", &b)?;
    if p.node_id != node_id {
        return Err(ApiError::bad(format!(
            "node_id {:?} in the body does not match {:?} in the path",
            p.node_id, node_id
        )));
    }
    if p.kind.is_empty() {
        return Err(ApiError::bad("type: must not be empty"));
    }
    // Only `id` is ignored. `to_delete` and `delete_signature` are kept as
    // posted: they are outside the user's signature, and a node acts on a
    // deletion only after verifying `delete_signature` itself. (This is how
    // a test hands a node a forged deletion without a test-only hook.)
    let r = Reservation {
        id: String::new(),
        node_id: p.node_id,
        user_id: p.user_id,
        kind: p.kind,
        data: p.data,
        created: p.created,
        duration: p.duration,
        signature: p.signature,
        to_delete: p.to_delete,
        delete_signature: p.delete_signature,
    };
    if let Err(e) = r.verify() {
        warn!(node = %node_id, user = %r.user_id, error = %e, "reservation refused");
        return Err(ApiError::bad(format!("reservation refused: {e}")));
    }
    let r = st.db.create(r)?;
    st.flush().await?;
    info!(reservation = %r.id, node = %r.node_id, user = %r.user_id, r#type = %r.kind, "reservation created");
    st.wake(&r.node_id);
    let location = format!("/reservations/{}", r.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(Created { id: r.id }),
    )
        .into_response())
}

#[derive(Deserialize)]
struct PollQuery {
    #[serde(default)]
    from: u64,
}

/// `GET /reservations/{node_id}/poll?from=N`, held up to `long_poll` while
/// the answer is empty.
async fn poll(
    State(st): St,
    Path(node_id): Path<String>,
    q: Result<Query<PollQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<Reservation>>> {
    let Query(PollQuery { from }) = q.map_err(|e| {
        ApiError::bad(format!(
            "query: from must be a reservation number (an unsigned integer): {}",
            e.body_text()
        ))
    })?;
    let deadline = tokio::time::Instant::now() + st.long_poll;
    let mut rx = st.subscribe(&node_id);
    let mut shutdown = st.shutdown.clone();
    let answer = loop {
        rx.borrow_and_update();
        let list = match st.db.poll(&node_id, from, Utc::now()) {
            Ok(l) => l,
            Err(e) => {
                st.unsubscribe(&node_id, rx);
                return Err(e.into());
            }
        };
        if !list.is_empty() || *shutdown.borrow() {
            break list;
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() { break list },
            _ = tokio::time::sleep_until(deadline) => break list,
            _ = shutdown.wait_for(|s| *s) => break list,
        }
    };
    st.unsubscribe(&node_id, rx);
    tracing::debug!(node = %node_id, from, count = answer.len(), "poll answered");
    Ok(Json(answer))
}

/// `GET /reservations/{id}`.
async fn show(State(st): St, Path(id): Path<String>) -> ApiResult<Json<ReservationView>> {
    let rec = st.db.get(&id)?.ok_or_else(|| ApiError::not_found(&id))?;
    Ok(Json(ReservationView::new(
        &rec.reservation,
        rec.results.last().cloned(),
        rec.deleted,
    )))
}

/// `GET /reservations/{id}/results` (extension): every result, oldest first.
async fn results(State(st): St, Path(id): Path<String>) -> ApiResult<Json<Vec<WorkloadResult>>> {
    let rec = st.db.get(&id)?.ok_or_else(|| ApiError::not_found(&id))?;
    Ok(Json(rec.results))
}

/// `PUT /reservations/{id}`: a result, signed by the reservation's node.
async fn put_result(
    State(st): St,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let b = body(st.max_body, b)?;
    let rec = st.db.get(&id)?.ok_or_else(|| ApiError::not_found(&id))?;
    let result: WorkloadResult = parse_json("result", &b)?;
    if result.id != id {
        return Err(ApiError::bad(format!(
            "result id {:?} does not match reservation {id:?} in the path",
            result.id
        )));
    }
    if let Err(e) = result.verify(&rec.reservation.node_id) {
        warn!(reservation = %id, node = %rec.reservation.node_id, error = %e, "result refused");
        return Err(ApiError::bad(format!(
            "result refused: {e} (it must be signed by node {})",
            rec.reservation.node_id
        )));
    }
    let state = result.state.as_str();
    let error = result.error.clone();
    st.db
        .add_result(&id, result)?
        .ok_or_else(|| ApiError::not_found(&id))?;
    st.flush().await?;
    info!(reservation = %id, state, error = %error, "result stored");
    Ok(StatusCode::OK)
}

/// `PUT /reservations/{id}/deleted`: the node decommissioned it.
async fn put_deleted(State(st): St, Path(id): Path<String>) -> ApiResult<StatusCode> {
    st.db
        .mark_deleted(&id)?
        .ok_or_else(|| ApiError::not_found(&id))?;
    st.flush().await?;
    info!(reservation = %id, "node confirmed deletion");
    Ok(StatusCode::OK)
}

/// `DELETE /reservations/{id}`: only with the user's signature over
/// `"delete:" ‖ id`.
async fn delete(
    State(st): St,
    Path(id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let b = body(st.max_body, b)?;
    let rec = st.db.get(&id)?.ok_or_else(|| ApiError::not_found(&id))?;
    let req: DeleteRequest = parse_json("deletion", &b)?;
    let mut candidate = rec.reservation.clone();
    candidate.delete_signature = Some(req.delete_signature.clone());
    if let Err(e) = candidate.verify_delete() {
        warn!(reservation = %id, user = %rec.reservation.user_id, error = %e, "deletion refused");
        return Err(ApiError::bad(format!(
            "deletion refused: {e} (sign \"delete:{id}\" with the key of user {})",
            rec.reservation.user_id
        )));
    }
    let rec = st
        .db
        .set_to_delete(&id, req.delete_signature)?
        .ok_or_else(|| ApiError::not_found(&id))?;
    st.flush().await?;
    info!(reservation = %id, node = %rec.reservation.node_id, "deletion requested");
    st.wake(&rec.reservation.node_id);
    Ok(StatusCode::OK)
}

/// `POST /nodes`: register or re-register.
async fn register(State(st): St, b: Result<Bytes, BytesRejection>) -> ApiResult<StatusCode> {
    let b = body(st.max_body, b)?;
    let reg: NodeRegistration = parse_json("node registration", &b)?;
    reservation::identity::parse_public_key("node_id", &reg.node_id)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    if reg.url.trim().is_empty() {
        return Err(ApiError::bad("url: must say where the node can be reached"));
    }
    if let Some(f) = reg.capacity.invalid_field() {
        return Err(ApiError::bad(format!(
            "capacity.{f}: must be a non-negative number"
        )));
    }
    let info = st.db.register_node(reg)?;
    st.flush().await?;
    info!(node = %info.node_id, url = %info.url, "node registered");
    Ok(StatusCode::CREATED)
}

/// `POST /nodes/{node_id}/uptime`: heartbeat. 404 for an unknown node, so
/// the agent knows to register again (e.g. after the explorer lost state).
async fn uptime(
    State(st): St,
    Path(node_id): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<StatusCode> {
    let b = body(st.max_body, b)?;
    let up: Uptime = parse_json("uptime", &b)?;
    if let Some(f) = up.used.as_ref().and_then(|u| u.invalid_field()) {
        return Err(ApiError::bad(format!(
            "used.{f}: must be a non-negative number"
        )));
    }
    match st.db.heartbeat(&node_id, up.used, Utc::now())? {
        Some(_) => {
            tracing::debug!(node = %node_id, uptime = up.uptime, "heartbeat");
            Ok(StatusCode::OK)
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("node {node_id:?} is not registered: POST /nodes first"),
        )),
    }
}

/// `GET /nodes`.
async fn nodes(State(st): St) -> ApiResult<Json<Vec<crate::api::NodeInfo>>> {
    Ok(Json(st.db.nodes()?))
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
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(st)
}

/// The routes over the database in `cfg.data_dir`, with no listener. The
/// shutdown sender is dropped at once, so a poll with an empty answer
/// returns at once instead of being held: the fuzz targets drive the real
/// handlers in-process, one request after another.
pub(crate) fn in_process(cfg: &ServerConfig) -> Result<Router, ExplorerError> {
    let db = Db::open(&cfg.data_dir)?;
    let (_no_shutdown, rx) = watch::channel(false);
    Ok(router(Arc::new(AppState {
        db,
        long_poll: cfg.long_poll,
        max_body: cfg.max_body,
        wake: Mutex::new(HashMap::new()),
        shutdown: rx,
    })))
}

pub(crate) async fn run(
    listener: tokio::net::TcpListener,
    cfg: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ExplorerError> {
    let db = Db::open(&cfg.data_dir)?;
    let (tx, rx) = watch::channel(false);
    let st = Arc::new(AppState {
        db,
        long_poll: cfg.long_poll,
        max_body: cfg.max_body,
        wake: Mutex::new(HashMap::new()),
        shutdown: rx.clone(),
    });
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let mut stop = rx;
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, data = %cfg.data_dir.display(), "explorer listening");
    }
    let served = axum::serve(listener, router(st.clone()))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    let flushed = st.db.flush().await;
    served.map_err(ExplorerError::Serve)?;
    flushed?;
    info!("explorer stopped");
    Ok(())
}
