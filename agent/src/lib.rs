//! The node agent: the engine and what runs around it.
//!
//! - [`engine`]: takes one unit of work at a time from a
//!   [`sources::ReservationSource`], judges each reservation, drives the
//!   provisioners (jobs run concurrently, across units), and records
//!   outcomes and signed results in the store.
//! - [`commands`]: what reconciliation, the crash watch and the operator
//!   ask of the engine, over a channel.
//! - [`delivery`]: drains the outbox to the explorer with retries.
//! - [`inventory`]: the one pass over the cache at start (ledger,
//!   reconciliation, crash watch).
//! - [`reconcile`]: at start, matches Docker objects with the cache.
//! - [`control`]: the Unix socket `agentctl` talks to.
//! - [`config`]: the one layered `Settings` (flags, environment, TOML
//!   file, defaults).
//! - [`daemon`]: wires everything for the `agent` binary, step by step.
//! - `dev` (feature `dev`, on by default): `agent --dev`'s embedded
//!   explorer.
//! - [`faults`]: crash points for the restart drills.
//! - [`files`]: the modes of the agent's state (root 0700, cache 0600).
//! - [`ids`]: reservation ids as compact map keys (the crash watch's and
//!   the ledger's 10,000 entries on a full node).
//! - `testing` (tests only): helpers shared by the unit tests.
//! - [`memory`]: heap memory given back to the system (glibc's arenas
//!   limited, freed pages returned after large units of work).
//!
//! Invariants: the engine's recorder is the only writer of the cache; a result enters
//! the outbox in the same transaction as the outcome it reports; nothing is
//! delivered before it is durable.

pub mod capacity;
pub mod commands;
pub mod config;
pub mod control;
pub mod crash;
pub mod daemon;
pub mod delivery;
#[cfg(feature = "dev")]
pub mod dev;
pub mod engine;
pub mod faults;
pub mod files;
pub mod heartbeat;
pub mod ids;
pub mod inventory;
pub mod memory;
pub mod metrics;
pub mod reconcile;
#[cfg(test)]
mod testing;

/// Errors of the agent library.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Reservation(#[from] reservation::Error),
    #[error(transparent)]
    Source(#[from] sources::SourceError),
    /// Flags or environment that do not parse, or `--help`/`--version`:
    /// clap prints them (`clap::Error::exit`).
    #[error(transparent)]
    Cli(#[from] clap::Error),
    #[error("config {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("control socket {path}: {reason}")]
    Socket { path: String, reason: String },
    #[error("{0}")]
    Other(String),
}
