//! Provisioners: one module per workload type, each through the Docker engine.
//!
//! - [`Provisioner`]: the seam the engine drives, one implementation per
//!   [`WorkloadType`], held as `Arc<dyn Provisioner>` in a [`Registry`].
//! - [`ProvisionError`]: what went wrong, split by who must act: the user
//!   ([`ProvisionError::Refused`]), the node ([`ProvisionError::Docker`],
//!   [`ProvisionError::Node`]), or time ([`ProvisionError::InUse`], retried
//!   later).
//!
//! Map:
//! - `docker/`: the one Docker seam, [`Docker`] (held as
//!   `Arc<dyn Docker>`), its plain types, [`DockerError`], the bollard
//!   implementation [`BollardDocker`] and the recording `FakeDocker`.
//! - `names.rs`: object names, labels and filters, in a node scope
//!   ([`names::Names`]) the caller passes in.
//! - `container.rs`, `volume.rs`, `network.rs`, `zdb.rs`, `kubernetes.rs`,
//!   `debug.rs`: one provisioner per workload type.
//! - `images.rs`: pull deadline, shared pulls, garbage collection of the
//!   images the agent pulled.
//!
//! Invariants: a provisioner looks before it creates (a second call for the
//! same reservation reuses what exists), labels every object it creates with
//! `io.agent.reservation`, `io.agent.user` and `io.agent.type`, and never
//! writes a plaintext secret anywhere but into the workload itself. No
//! globals but the host's mount lock (`volume.rs`); nothing outside
//! `docker/` names bollard.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::names::Names;
use async_trait::async_trait;
use reservation::{Identity, Reservation, Workload, WorkloadType};

pub mod container;
pub mod debug;
pub mod docker;
pub mod images;
pub mod kubernetes;
pub mod names;
pub mod network;
pub mod volume;
pub mod zdb;

#[cfg(test)]
mod tests;

pub use container::ContainerProvisioner;
pub use debug::{DebugProvisioner, LogBus};
#[cfg(any(test, feature = "fake"))]
pub use docker::FakeDocker;
pub use docker::{BollardDocker, Docker, DockerError};
pub use kubernetes::KubernetesProvisioner;
pub use network::NetworkProvisioner;
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

/// The seam between the engine and one workload type.
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
}

/// Provisioners keyed by workload type. A type without one is not
/// supported on this node.
#[derive(Default, Clone)]
pub struct Registry {
    map: HashMap<WorkloadType, Arc<dyn Provisioner>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&mut self, kind: WorkloadType, p: Arc<dyn Provisioner>) -> &mut Self {
        self.map.insert(kind, p);
        self
    }

    pub fn get(&self, kind: WorkloadType) -> Option<&Arc<dyn Provisioner>> {
        self.map.get(&kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = WorkloadType> + '_ {
        self.map.keys().copied()
    }
}

/// A registry with the Docker provisioners of `container`, `volume` and
/// `network`, with unscoped names. Volumes live under `<root>/volumes/`;
/// `node` opens sealed secrets and its id picks the network's
/// `net_resources` entry.
pub fn docker_registry(docker: Arc<dyn Docker>, node: Arc<Identity>, root: &Path) -> Registry {
    docker_registry_with(
        docker,
        node,
        root,
        &TenantOptions::default(),
        &Names::unscoped(),
    )
}

/// The operator's rules for what tenants may ask of the host: how their
/// containers are confined and which host ports they may publish, and the
/// pool their networks' subnets must come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantOptions {
    pub container: container::ContainerPolicy,
    pub network_pool: Vec<ipnet::Ipv4Net>,
}

impl Default for TenantOptions {
    fn default() -> Self {
        Self {
            container: container::ContainerPolicy::default(),
            network_pool: network::parse_pool(network::DEFAULT_POOL).expect("valid default pool"),
        }
    }
}

/// [`docker_registry`] under the operator's `tenants` rules, naming
/// objects in node scope `names`.
pub fn docker_registry_with(
    docker: Arc<dyn Docker>,
    node: Arc<Identity>,
    root: &Path,
    tenants: &TenantOptions,
    names: &Names,
) -> Registry {
    let mut reg = Registry::new();
    reg.register(
        WorkloadType::Network,
        Arc::new(
            NetworkProvisioner::new(docker.clone(), node.id())
                .with_pool(tenants.network_pool.clone())
                .with_names(names.clone()),
        ),
    )
    .register(
        WorkloadType::Volume,
        Arc::new(
            VolumeProvisioner::new(docker.clone(), root.to_path_buf()).with_names(names.clone()),
        ),
    )
    .register(
        WorkloadType::Container,
        Arc::new(
            ContainerProvisioner::new(docker, node)
                .with_policy(tenants.container.clone())
                .with_names(names.clone()),
        ),
    );
    reg
}

/// Settings of the provisioners beyond the three Docker basics.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Image of the 0-db containers.
    pub zdb_image: String,
    /// Image of the k3s containers.
    pub k3s_image: String,
    /// Run k3s containers privileged (k3s needs it; some sandboxed Docker
    /// engines cannot start privileged containers at all). Enables nothing
    /// by itself: see `kubernetes`.
    pub k3s_privileged: bool,
    /// Whether kubernetes is enabled, and how (default: disabled).
    pub kubernetes: kubernetes::KubernetesMode,
    /// Where the agent's own log lines go for `debug` reservations.
    pub log_bus: LogBus,
    /// User ids whose `debug` reservations get the whole node's log (every
    /// other user gets only the lines of their own reservations).
    pub debug_operators: Vec<String>,
    /// What tenants may ask of the host (containers, ports, subnets).
    pub tenants: TenantOptions,
    /// The node scope every object is named, labelled and found in.
    pub names: Names,
}

/// A registry with every workload type: `docker_registry`'s three plus
/// zdb, kubernetes and debug.
pub fn node_registry(
    docker: Arc<dyn Docker>,
    node: Arc<Identity>,
    root: &Path,
    opts: NodeOptions,
) -> Registry {
    let names = &opts.names;
    let mut reg = docker_registry_with(docker.clone(), node.clone(), root, &opts.tenants, names);
    reg.register(
        WorkloadType::Zdb,
        Arc::new(
            ZdbProvisioner::new(docker.clone(), node.clone(), opts.zdb_image)
                .with_names(names.clone())
                .with_name_prefix(format!("{}zdb-", names.prefix())),
        ),
    )
    .register(
        WorkloadType::Kubernetes,
        Arc::new(
            KubernetesProvisioner::new(docker, node, opts.k3s_image)
                .with_privileged(opts.k3s_privileged)
                .with_mode(opts.kubernetes)
                .with_names(names.clone()),
        ),
    )
    .register(
        WorkloadType::Debug,
        Arc::new(DebugProvisioner::new(opts.log_bus).with_operators(opts.debug_operators)),
    );
    reg
}
