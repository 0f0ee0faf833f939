//! The registry: the [`Registry`] of built provisioners keyed by type, and
//! the dispatch from an untyped workload or reservation to its type's
//! plug-in (charge, tenancy, watched container, Docker objects, uses),
//! over [`PLUGINS`], the one list of workload types this agent runs
//! (declared in `lib.rs` beside the plug-ins' `mod` lines; re-exported
//! here).
//!
//! Invariant: nothing outside this module and the `reservation` crate
//! matches on workload types; a new type is its module, declared in
//! `lib.rs`, and one line in [`PLUGINS`] there.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use reservation::workloads::DiskType;
use reservation::{Identity, Reservation, Workload, WorkloadType};

use crate::charge::{Charge, Tenancy};
use crate::container::ContainerPolicy;
use crate::names::Names;
use crate::plugin::{Kind, Setup};
use crate::{kubernetes, network, zdb, Docker, LogBus, Provisioner};

pub use crate::PLUGINS;

/// The plug-in of type `kind`, if this agent has one.
pub fn kind(kind: WorkloadType) -> Option<&'static dyn Kind> {
    PLUGINS.iter().copied().find(|k| k.kind() == kind)
}

/// What workload `w` holds while it runs, with container layers on
/// `root_disk`, as its type's plug-in counts it.
pub fn charge_of(w: &Workload, root_disk: DiskType) -> Charge {
    kind(w.kind()).map_or(Charge::ZERO, |k| k.charge(w, root_disk))
}

/// The charge of a reservation's workload, `None` when its type or data
/// does not parse (nothing of it can run, so nothing is charged).
pub fn charge_of_reservation(r: &Reservation, root_disk: DiskType) -> Option<Charge> {
    let kind = r.workload_type().ok()?;
    let w = Workload::parse(kind, &r.data).ok()?;
    Some(charge_of(&w, root_disk))
}

/// What workload `w` counts against its user's limits.
pub fn tenancy_of(w: &Workload) -> Tenancy {
    kind(w.kind()).map_or_else(Tenancy::default, |k| k.tenancy(w))
}

/// The container of its own that reservation `r` runs, named in node scope
/// `names`, for the crash watch and `agentctl logs` (none for types that
/// run none, or share theirs like zdb).
pub fn watched_container(names: &Names, r: &Reservation) -> Option<String> {
    watched_container_of(names, r.workload_type().ok()?, &r.id)
}

/// [`watched_container`] of reservation `id` of type `kind`: the type and
/// the id alone name it.
pub fn watched_container_of(names: &Names, kind_: WorkloadType, id: &str) -> Option<String> {
    kind(kind_)?.watched_container(names, id)
}

/// Names of the Docker objects reservation `r` makes, in node scope
/// `names` (empty when its type or data does not parse).
pub fn objects(names: &Names, r: &Reservation) -> Vec<String> {
    parsed(r).map_or_else(Vec::new, |(k, w)| k.objects(names, r, &w))
}

/// Objects of other workloads reservation `r` needs while it runs (named
/// as [`objects`] names them).
pub fn uses(names: &Names, r: &Reservation) -> Vec<String> {
    parsed(r).map_or_else(Vec::new, |(k, w)| k.uses(names, r, &w))
}

/// Whether workload `user`, which uses the objects `uses` (as [`uses`]
/// names them), relies on workload `maker`, which makes `objects` (as
/// [`objects`] names them): the one rule for provisioning order, deletion
/// order and `agentctl list`'s "waits for". Only a workload of the same
/// user counts: naming another tenant's volume (ids are the explorer's) is
/// refused when provisioned, and must not order, delay or show against
/// that tenant's workloads either.
pub fn relies_on(
    user: &Reservation,
    uses: &[String],
    maker: &Reservation,
    objects: &[String],
) -> bool {
    user.user_id == maker.user_id && uses.iter().any(|o| objects.contains(o))
}

fn parsed(r: &Reservation) -> Option<(&'static dyn Kind, Workload)> {
    let t = r.workload_type().ok()?;
    Some((kind(t)?, Workload::parse(t, &r.data).ok()?))
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

    /// Every plug-in of [`PLUGINS`] whose type `pick` keeps, built from
    /// `setup`.
    pub fn build(setup: &Setup, pick: impl Fn(WorkloadType) -> bool) -> Self {
        let mut reg = Registry::new();
        for k in PLUGINS.iter().filter(|k| pick(k.kind())) {
            reg.register(k.kind(), k.build(setup));
        }
        reg
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
    pub container: ContainerPolicy,
    pub network_pool: Vec<ipnet::Ipv4Net>,
}

impl Default for TenantOptions {
    fn default() -> Self {
        Self {
            container: ContainerPolicy::default(),
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
    let setup = Setup {
        docker,
        node,
        root: root.to_path_buf(),
        options: NodeOptions {
            tenants: tenants.clone(),
            names: names.clone(),
            ..NodeOptions::default()
        },
    };
    Registry::build(&setup, |k| {
        matches!(
            k,
            WorkloadType::Network | WorkloadType::Volume | WorkloadType::Container
        )
    })
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
    /// SIGTERM to SIGKILL when a container is stopped (`--stop-grace`);
    /// less when its reservation expires sooner.
    pub stop_grace: std::time::Duration,
}

impl Default for NodeOptions {
    /// The images' defaults, kubernetes disabled, no debug operators,
    /// default tenant rules, unscoped names.
    fn default() -> Self {
        NodeOptions {
            zdb_image: zdb::DEFAULT_ZDB_IMAGE.into(),
            k3s_image: kubernetes::DEFAULT_K3S_IMAGE.into(),
            k3s_privileged: true,
            kubernetes: kubernetes::KubernetesMode::Disabled,
            log_bus: LogBus::default(),
            debug_operators: Vec::new(),
            tenants: TenantOptions::default(),
            names: Names::unscoped(),
            stop_grace: crate::container::DEFAULT_STOP_GRACE,
        }
    }
}

/// A registry with every workload type of [`PLUGINS`].
pub fn node_registry(
    docker: Arc<dyn Docker>,
    node: Arc<Identity>,
    root: &Path,
    opts: NodeOptions,
) -> Registry {
    let setup = Setup {
        docker,
        node,
        root: root.to_path_buf(),
        options: opts,
    };
    Registry::build(&setup, |_| true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FakeDocker;
    use serde_json::json;

    #[test]
    fn every_type_is_listed_once_and_built() {
        let mut listed: Vec<WorkloadType> = PLUGINS.iter().map(|k| k.kind()).collect();
        listed.sort();
        let mut all = WorkloadType::ALL.to_vec();
        all.sort();
        assert_eq!(listed, all);
        let dir = tempfile::tempdir().unwrap();
        let reg = node_registry(
            Arc::new(FakeDocker::new()),
            Arc::new(Identity::generate()),
            dir.path(),
            NodeOptions::default(),
        );
        for t in WorkloadType::ALL {
            assert!(reg.get(t).is_some(), "{t}");
        }
    }

    #[tokio::test]
    async fn a_workload_of_another_type_is_refused_by_the_adapter() {
        let dir = tempfile::tempdir().unwrap();
        let reg = docker_registry(
            Arc::new(FakeDocker::new()),
            Arc::new(Identity::generate()),
            dir.path(),
        );
        let raw = serde_json::value::to_raw_value(&json!({"size": 1, "type": "SSD"})).unwrap();
        let w = Workload::parse(WorkloadType::Volume, &raw).unwrap();
        let r = Reservation {
            id: "1-1".into(),
            ..Default::default()
        };
        let ct = reg.get(WorkloadType::Container).unwrap();
        let e = ct.provision(&r, &w).await.unwrap_err().to_string();
        assert_eq!(e, "reservation 1-1 is a volume, not a container");
        // Nothing is charged, named or used for the wrong type either.
        let k = kind(WorkloadType::Container).unwrap();
        assert_eq!(k.charge(&w, DiskType::Ssd), Charge::ZERO);
        assert!(k.objects(&Names::unscoped(), &r, &w).is_empty());
        assert_eq!(charge_of(&w, DiskType::Ssd).ssd_mib, 1024);
    }

    #[test]
    fn names_come_from_the_reservation_alone() {
        let names = Names::for_node("ABCDEFGHIJ");
        let r = |kind: &str, data: serde_json::Value| Reservation {
            id: "7-1".into(),
            user_id: "u".into(),
            kind: kind.into(),
            data: serde_json::value::to_raw_value(&data).unwrap(),
            ..Default::default()
        };
        let ct = r(
            "container",
            json!({"flist": "b", "capacity": {"cpu": 1, "memory": 64},
                   "mounts": [{"volume_id": "3-1", "mountpoint": "/d"}],
                   "network": {"network_id": "n"}}),
        );
        assert_eq!(
            watched_container(&names, &ct).as_deref(),
            Some("agent-ABCDEFGH-ct-7-1")
        );
        assert_eq!(objects(&names, &ct), vec!["agent-ABCDEFGH-ct-7-1"]);
        assert_eq!(
            uses(&names, &ct),
            vec![
                "agent-ABCDEFGH-vol-3-1".to_string(),
                names.network_name("u", "n")
            ]
        );
        // The type alone names the watched container; data that does not
        // parse names no objects.
        let bad = r("kubernetes", json!({}));
        assert_eq!(
            watched_container(&names, &bad).as_deref(),
            Some("agent-ABCDEFGH-k8s-7-1")
        );
        assert!(objects(&names, &bad).is_empty() && uses(&names, &bad).is_empty());
        let vol = r("volume", json!({"size": 1, "type": "HDD"}));
        assert_eq!(watched_container(&names, &vol), None);
        assert_eq!(objects(&names, &vol), vec!["agent-ABCDEFGH-vol-7-1"]);
        assert!(objects(&names, &r("nonsense", json!({}))).is_empty());
    }
}
