//! The reference explorer: the central reservation API of PROTOCOL.md
//! ("Explorer HTTP API"), with its state in sled. The `explorer` binary
//! serves it and is also the user CLI; `agent --dev` and tests run it
//! in-process through [`serve`].
//!
//! Besides the protocol's routes it answers one extension,
//! `GET /reservations/{id}/results`: every result posted for a reservation,
//! oldest first (the protocol's `GET /reservations/{id}` shows only the
//! latest). Tests use it to prove a node posted exactly one result.
//!
//! What it checks: the user's signature on `POST /reservations/{node_id}`
//! (and that the body's `node_id` is the path's), the node's signature on
//! `PUT /reservations/{id}`, the user's on `DELETE`. It does not judge
//! `data` or `type`: a well-signed reservation with bad data reaches the
//! node, which refuses it with a signed error result. On `POST` only `id`
//! is replaced; `to_delete` and `delete_signature` are kept as posted (they
//! are outside the user's signature and the node verifies a deletion
//! itself).
//!
//! Poll (`from=N > 0`) leaves out reservations the node confirmed deleted
//! (`PUT .../deleted`): the node is done with them. `from=0` answers all.

pub mod api;
mod db;
mod error;
mod server;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

pub use api::{Capacity, NodeInfo, NodeRegistration, ReservationView, Uptime};
pub use error::ExplorerError;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the sled database lives (created if missing).
    pub data_dir: PathBuf,
    /// How long an empty poll is held open (the protocol allows 20 s).
    pub long_poll: Duration,
    /// Largest request body accepted; bigger ones get `413`.
    pub max_body: usize,
}

impl ServerConfig {
    /// Defaults: 20 s long poll, 1 MiB bodies.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            long_poll: Duration::from_secs(20),
            max_body: 1 << 20,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self::new("explorer-data")
    }
}

/// Serve the explorer on `listener` until `shutdown` completes. Polls held
/// open answer at once on shutdown; every write is flushed before the
/// answer that acknowledges it, and once more on the way out.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ExplorerError> {
    server::run(listener, cfg, shutdown).await
}

/// The explorer's routes over the database in `cfg.data_dir`, without a
/// listener or graceful shutdown: the real handlers, for driving them
/// in-process (the fuzz targets in `fuzz/` send requests through it with
/// `tower::ServiceExt::oneshot`). A poll with an empty answer is not held.
/// Run a server with [`serve`].
pub fn router(cfg: &ServerConfig) -> Result<axum::Router, ExplorerError> {
    server::in_process(cfg)
}
