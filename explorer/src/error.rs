//! The explorer library's one error enum.

use std::path::PathBuf;

/// Errors that stop the explorer server (request errors are HTTP answers,
/// never this type).
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
    /// The HTTP server failed (the listener broke).
    #[error("explorer http server: {0}")]
    Serve(#[source] std::io::Error),
}
