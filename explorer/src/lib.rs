//! The reference explorer: the central reservation API of PROTOCOL.md
//! ("Explorer HTTP API"), protocol version 2, with its state in sled (one
//! process, the default) or in PostgreSQL (any number of replicas on one
//! database: [`ServerConfig::database`]). The `explorer` binary serves it
//! and is also the user CLI; `agent --dev` and tests run it in-process
//! through [`serve`].
//!
//! Besides the protocol's routes it answers three extensions:
//! `GET /reservations/{id}/results`: every result posted for a reservation,
//! oldest first (the protocol's `GET /reservations/{id}` shows only the
//! latest; tests use it to prove a node posted exactly one result);
//! `GET /health` (`200`, or `503` when the store does not answer); and
//! `GET /metrics` (Prometheus text).
//!
//! Nodes and users do not trust the explorer, but it still refuses every
//! protocol violation it can see, and never lets an unsigned message change
//! its state:
//!
//! - `POST /reservations/{node_id}` takes only version 2 reservations
//!   (a `nonce`, the user's signature over the framed message), live
//!   (`created` in whole seconds, at most 5 minutes ahead, not expired),
//!   with `data` of at most 64 KiB, for the node of the path; a signature
//!   already stored is a `409`, so one signed reservation is stored once. It
//!   does not judge `data` or `type`: a well-signed reservation with bad
//!   data reaches the node, which refuses it with a signed error result.
//!   Only `id` is replaced; `to_delete` is kept only with the user's
//!   `delete_signature`.
//! - Results (`PUT /reservations/{id}`) and deletion confirmations
//!   (`PUT .../deleted`) must be signed by the reservation's node over the
//!   reservation's own signature; deletions (`DELETE`) by its user, over the
//!   same signature.
//! - Node registrations and heartbeats must be signed by the node and carry
//!   a timestamp within 5 minutes of the explorer's clock and newer than the
//!   last one accepted for that node.
//!
//! Poll: an ordinary poll (`from=N`) leaves out expired reservations and
//! those the node confirmed deleted, but answers every pending deletion;
//! `all=true` (implied by a bare `from=0`) answers all of them from `N`.
//! Answers are ascending and at most `limit` (≤ 1000) long. An empty answer
//! is held up to [`ServerConfig::long_poll`], at most
//! [`ServerConfig::max_polls_per_node`] at once per node (`429` beyond).

mod db;
mod error;
mod metrics;
#[cfg(feature = "postgres")]
mod pg;
mod server;
mod storage;
#[cfg(feature = "postgres")]
#[doc(hidden)]
pub mod testing;
mod ui;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

// The wire types live in the reservation crate; re-exported for the
// explorer's users.
pub use error::ExplorerError;
pub use reservation::api::{Created, DeleteRequest, DeletedConfirmation, ReservationView};
pub use reservation::node::{Capacity, NodeInfo, Registration, Uptime};
pub use server::{MAX_DATA, MAX_POLL_LIMIT};

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the sled database lives (created if missing); unused when
    /// `database` is set.
    pub data_dir: PathBuf,
    /// A PostgreSQL URL (`postgres://user:password@host:port/dbname`): the
    /// state lives there instead, shared with every other server given the
    /// same URL; the schema is migrated at start. A build without the
    /// `postgres` feature refuses it ([`ExplorerError::NoPostgres`]).
    pub database: Option<String>,
    /// At most this many connections to `database`, the one that
    /// listens for the other replicas' wake-ups included.
    pub max_connections: u32,
    /// How long an empty poll is held open (the protocol allows 20 s).
    pub long_poll: Duration,
    /// Largest request body accepted; bigger ones get `413`.
    pub max_body: usize,
    /// How many empty polls one node may have held open at once; one more
    /// is answered `429` at once (a node needs only one in flight).
    pub max_polls_per_node: usize,
    /// PostgreSQL: how many posted reservations may wait for the replica's
    /// writer (beyond the batches being stored); one more is answered
    /// `503` with `Retry-After` ([`ExplorerError::Busy`]), nothing stored.
    /// sled stores each POST in its own request and queues nothing.
    pub max_queued_posts: usize,
}

impl ServerConfig {
    /// Defaults: sled under `data_dir`, 20 s long poll, 1 MiB bodies, 4
    /// held polls per node, 512 posts queued for PostgreSQL.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            database: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            long_poll: Duration::from_secs(20),
            max_body: 1 << 20,
            max_polls_per_node: 4,
            max_queued_posts: DEFAULT_MAX_QUEUED_POSTS,
        }
    }
}

/// Default of [`ServerConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

/// Default of [`ServerConfig::max_queued_posts`]: two full batches of the
/// PostgreSQL writer (256 reservations each), so a burst keeps every batch
/// full, while a lagging database costs at most this many POST bodies in
/// memory (each up to 64 KiB: 32 MiB), not one per concurrent POST.
pub const DEFAULT_MAX_QUEUED_POSTS: usize = 512;

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

/// Bring the PostgreSQL schema at `database` up to date (what `serve`
/// does at start; `explorer migrate`).
/// Without the `postgres` feature: [`ExplorerError::NoPostgres`].
pub async fn migrate(database: &str) -> Result<(), ExplorerError> {
    #[cfg(feature = "postgres")]
    {
        let pg = pg::Pg::connect(database, 2, 1).await?;
        let done = pg.migrate().await;
        storage::Storage::close(&pg).await;
        done
    }
    #[cfg(not(feature = "postgres"))]
    {
        Err(ExplorerError::NoPostgres {
            at: redact_database_url(database),
        })
    }
}

/// Whether this build has the PostgreSQL store (the `postgres` feature).
pub const POSTGRES: bool = cfg!(feature = "postgres");

/// The database `url` names, without its password (for messages).
pub fn redact_database_url(url: &str) -> String {
    #[cfg(feature = "postgres")]
    {
        pg::redact(url)
    }
    #[cfg(not(feature = "postgres"))]
    {
        redact_plain(url)
    }
}

/// `scheme://host[:port][/db]` of a database URL, without user, password
/// and parameters (what a build without sqlx can say of it).
#[cfg_attr(feature = "postgres", allow(dead_code))]
fn redact_plain(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "the database URL".into();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{path}")
}

/// The explorer's routes over the sled database in `cfg.data_dir`, without a
/// listener or graceful shutdown: the real handlers, for driving them
/// in-process (the fuzz targets in `fuzz/` send requests through it with
/// `tower::ServiceExt::oneshot`). A poll with an empty answer is not held.
/// Run a server with [`serve`].
pub fn router(cfg: &ServerConfig) -> Result<axum::Router, ExplorerError> {
    server::in_process(cfg)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_plain_redaction_keeps_no_credentials() {
        let r = super::redact_plain;
        assert_eq!(
            r("postgres://explorer:s3cret@db:5432/explorer?password=x"),
            "postgres://db:5432/explorer"
        );
        assert_eq!(r("postgres://db"), "postgres://db");
        assert_eq!(r("db:5432"), "the database URL");
    }
}
