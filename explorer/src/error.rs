//! The explorer library's one error enum.

use std::path::PathBuf;

/// Errors of the explorer's store and server. Request errors are HTTP
/// answers, never this type; a store error is a `500` (the cause logged
/// only), except [`ExplorerError::Busy`], a `503` with `Retry-After`.
#[derive(Debug, thiserror::Error)]
pub enum ExplorerError {
    /// The sled database under the data directory cannot be opened or used.
    #[error("explorer data dir {path}: {source}")]
    Storage {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// The PostgreSQL database cannot be reached or refused a statement.
    #[cfg(feature = "postgres")]
    #[error("explorer database {at}: {source}")]
    Database {
        /// host:port/database (no password).
        at: String,
        #[source]
        source: sqlx::Error,
    },
    /// The PostgreSQL schema cannot be brought up to date.
    #[cfg(feature = "postgres")]
    #[error("explorer database {at}: migration failed: {source}")]
    Migrate {
        at: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A PostgreSQL database was named, and this build has no PostgreSQL
    /// store (built without the `postgres` feature, as `agent --dev`'s
    /// embedded explorer is).
    #[error("explorer database {at}: this build has no PostgreSQL support (the explorer crate's `postgres` feature is off); leave out --database to use sled, or use an explorer built with its default features")]
    NoPostgres {
        /// scheme://host:port/database (no password).
        at: String,
    },
    /// A stored record that no longer parses (a corrupt or foreign database).
    #[error("explorer data {path}: corrupt record {key}: {reason}")]
    Corrupt {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// The PostgreSQL writer already holds its bound of reservations
    /// waiting for the database (`ServerConfig::max_queued_posts`): the POST
    /// is answered `503` with `Retry-After`, and nothing of it is stored, so
    /// the same signed reservation may be posted again. Without the bound,
    /// concurrent POSTs (each up to 64 KiB) would pile up in memory while
    /// the database lags.
    #[error("explorer busy: the queue of reservations waiting for the database is full ({queued}); this one was not stored, post it again after {retry_after_secs} s")]
    Busy {
        /// The queue's bound, reached.
        queued: usize,
        /// What `Retry-After` says, in seconds.
        retry_after_secs: u64,
    },
    /// The HTTP server failed (the listener broke).
    #[error("explorer http server: {0}")]
    Serve(#[source] std::io::Error),
}
