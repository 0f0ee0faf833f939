//! What the tasks around the engine may ask of it: the commands that
//! reconciliation, the crash watch and the operator's `purge` send over a
//! channel, instead of calling into the engine.
//!
//! The engine takes them between units of work, so none of them races a
//! provisioning; each ends up as records written by the engine's recorder.
//! This module is the one both sides import: the engine does not import
//! reconciliation, and reconciliation does not import the engine.

use tokio::sync::oneshot;

pub use crate::crash::GiveUp;
use crate::AgentError;

/// A command for the engine.
#[derive(Debug)]
pub enum EngineCommand {
    /// The Docker objects of this cached workload are gone: provision it
    /// again, and post its new result if the result data changed.
    Repair(String),
    /// End this cached workload now: decommission it and post a signed
    /// error result with the deletion (crash policy, `agentctl purge`).
    GiveUp(GiveUp),
    /// Reconciliation at start has sent every repair: make them durable,
    /// answer `repaired` with how many were provisioned again (or the
    /// first cache error, after which no other repair is tried), then start
    /// taking work. `sweep`: the orphan sweep's hold on the engine after
    /// the first resync (see [`SweepGate`]).
    Reconciled {
        repaired: oneshot::Sender<Result<usize, AgentError>>,
        sweep: Option<SweepGate>,
    },
}

impl From<GiveUp> for EngineCommand {
    fn from(g: GiveUp) -> Self {
        EngineCommand::GiveUp(g)
    }
}

/// The orphan sweep's hold on the engine. Once the last page of the first
/// `from=0` resync is judged (every valid reservation has been seen, and
/// adopted or started), the engine sends on `synced` the ids of the jobs
/// still running (the sweep spares their objects) and takes nothing else,
/// nor runs those jobs, until `done` answers or is dropped: removing
/// labelled objects the cache does not know must never race a
/// provisioning in flight.
#[derive(Debug)]
pub struct SweepGate {
    pub synced: oneshot::Sender<std::collections::HashSet<String>>,
    pub done: oneshot::Receiver<()>,
}
