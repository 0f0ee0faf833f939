//! Provisioners: one module per workload type, each owning everything about
//! its type, through the Docker engine.
//!
//! - [`Plugin`]: one workload type, typed by its `data`: provisioning
//!   through Docker, its charge and tenancy, its Docker objects' names, the
//!   container the crash watch follows, what it uses of other workloads.
//! - [`Provisioner`]: the erased seam the engine drives (`&Workload`);
//!   every plug-in is one, held as `Arc<dyn Provisioner>` in a [`Registry`]
//!   keyed by [`WorkloadType`](reservation::WorkloadType).
//! - [`ProvisionError`]: what went wrong, split by who must act: the user
//!   ([`ProvisionError::Refused`]), the node ([`ProvisionError::Docker`],
//!   [`ProvisionError::Node`]), or time ([`ProvisionError::InUse`], retried
//!   later).
//!
//! Map:
//! - `plugin.rs`: [`Plugin`], the adapter to [`Provisioner`], and [`Kind`],
//!   a plug-in's type-level side erased.
//! - this file: each plug-in's `mod` line and [`PLUGINS`], the one list of
//!   types (a line each).
//! - `registry.rs`: the [`Registry`]; dispatch from a workload or
//!   reservation to its plug-in.
//! - `charge.rs`: [`Resources`], [`Charge`], [`Tenancy`].
//! - `docker/`: the one Docker seam, [`Docker`] (held as
//!   `Arc<dyn Docker>`), its plain types, [`DockerError`], the bollard
//!   implementation [`BollardDocker`] and the recording `FakeDocker`.
//! - `names.rs`: object names, labels and filters, in a node scope
//!   ([`names::Names`]) the caller passes in.
//! - `volume.rs`, and the directories `network/` (its WireGuard tunnels in
//!   `wireguard.rs`), `container/`, `zdb/`,
//!   `kubernetes/`, `debug/` (the plug-in in `mod.rs`, its other concerns
//!   beside it, unit tests in `tests.rs`): one plug-in per workload type,
//!   owning all of it.
//! - `images.rs`: pull deadline, shared pulls, garbage collection of the
//!   images the agent pulled.
//!
//! Invariants: a provisioner looks before it creates (a second call for the
//! same reservation reuses what exists), labels every object it creates with
//! `io.agent.reservation`, `io.agent.user` and `io.agent.type`, and never
//! writes a plaintext secret anywhere but into the workload itself. No
//! globals but the host's mount lock (`volume.rs`); nothing outside
//! `docker/` names bollard.

use async_trait::async_trait;
use reservation::{Reservation, Workload};

pub mod charge;
pub mod docker;
pub mod images;
pub mod names;
pub mod plugin;
pub mod registry;

// The plug-ins: one module per workload type, owning all of it. A new
// type is its module, declared here, and its line in `PLUGINS` below.
pub mod container;
pub mod debug;
pub mod kubernetes;
pub mod network;
pub mod volume;
pub mod zdb;

/// Every workload type's plug-in, one line each, in no particular order
/// (the engine's dependency order is
/// [`WorkloadType::ALL`](reservation::WorkloadType::ALL)'s).
pub static PLUGINS: &[&dyn Kind] = &[
    &KindOf::<network::NetworkProvisioner>::new(),
    &KindOf::<volume::VolumeProvisioner>::new(),
    &KindOf::<zdb::ZdbProvisioner>::new(),
    &KindOf::<container::ContainerProvisioner>::new(),
    &KindOf::<kubernetes::KubernetesProvisioner>::new(),
    &KindOf::<debug::DebugProvisioner>::new(),
];

#[cfg(test)]
mod tests;

pub use charge::{Charge, Resources, Tenancy};
pub use container::ContainerProvisioner;
pub use debug::{DebugProvisioner, LogBus};
#[cfg(any(test, feature = "fake"))]
pub use docker::FakeDocker;
pub use docker::{BollardDocker, Docker, DockerError};
pub use kubernetes::KubernetesProvisioner;
pub use network::NetworkProvisioner;
pub use plugin::{Kind, KindOf, Plugin, Setup};
pub use registry::{
    charge_of, docker_registry, docker_registry_with, node_registry, tenancy_of, NodeOptions,
    Registry, TenantOptions,
};
pub use volume::VolumeProvisioner;
pub use zdb::ZdbProvisioner;

/// Label naming the reservation id that owns a Docker object.
pub const LABEL_RESERVATION: &str = "io.agent.reservation";
/// Label naming the `user_id` that owns a Docker object.
pub const LABEL_USER: &str = "io.agent.user";
/// Label naming the workload type of a Docker object.
pub const LABEL_TYPE: &str = "io.agent.type";

/// Errors of provisioning and decommissioning.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProvisionError {
    /// The request cannot be honoured (bad image, another user's volume,
    /// overlapping subnet...). Nothing was changed; the message goes into
    /// the signed error result as is.
    #[error("{0}")]
    Refused(String),
    /// The Docker engine failed or cannot be reached. Displays as the
    /// [`DockerError`] does (`docker: <what>: <Docker's message>`), whose
    /// source is the bollard error.
    #[error(transparent)]
    Docker(DockerError),
    /// Decommission must wait: the object is still used (a volume mounted
    /// by a running container, a network with containers attached).
    #[error("{0}")]
    InUse(String),
    /// Anything else on the node's side (disk images, files).
    #[error("{0}")]
    Node(String),
}

/// The seam between the engine and one workload type, untyped: every
/// [`Plugin`] is one (the adapter in `plugin.rs` takes its data out of the
/// [`Workload`]).
#[async_trait]
pub trait Provisioner: Send + Sync {
    /// Create the workload, or find and reuse it if a previous run (cut by
    /// a crash before caching) already did. Returns the result `data`.
    async fn provision(
        &self,
        r: &Reservation,
        w: &Workload,
    ) -> Result<serde_json::Value, ProvisionError>;

    /// Remove the workload and everything it owns. Removing what is already
    /// gone succeeds.
    async fn decommission(&self, r: &Reservation, w: &Workload) -> Result<(), ProvisionError>;

    /// Whether the workload's objects still exist (reconciliation at start:
    /// a cached workload whose objects are gone is provisioned again).
    async fn exists(&self, _r: &Reservation, _w: &Workload) -> Result<bool, ProvisionError> {
        Ok(true)
    }

    /// Reservation ids whose objects exist and are healthy, found in one
    /// call, so a restart with thousands of workloads checks them at once.
    /// `None`: this type can only be checked one by one with `exists`. An
    /// id missing from the set is then checked with `exists` before it is
    /// repaired.
    async fn present(&self) -> Result<Option<std::collections::HashSet<String>>, ProvisionError> {
        Ok(None)
    }

    /// Reservation ids of every labelled object of this type on the node.
    async fn list_labelled(&self) -> Result<Vec<String>, ProvisionError> {
        Ok(Vec::new())
    }

    /// Remove the labelled objects of reservation `id` (an orphan the cache
    /// does not know).
    async fn remove_labelled(&self, _id: &str) -> Result<(), ProvisionError> {
        Ok(())
    }

    /// Remove host state of this type that no labelled object accounts for
    /// (the orphan sweep at start calls it before `list_labelled`): what
    /// has no Docker label to find it by, e.g. a WireGuard tunnel's
    /// interface, rules and chains left by a network removed while the
    /// agent was down. It logs what it removed.
    async fn sweep_leftovers(&self) -> Result<(), ProvisionError> {
        Ok(())
    }
}
