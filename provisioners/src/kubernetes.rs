//! The `kubernetes` workload type, all of it ([`Plugin`]): one k3s node per
//! reservation, run in a privileged Docker container as k3d and kind do,
//! charged its size's cores, memory and disk, watched for crashes, using
//! the user's network it joins.
//!
//! A privileged container is root on the host, and a tenant's k3s agent
//! joins whatever server `master_ips` names, so kubernetes is **refused by
//! default** ([`KubernetesMode::Disabled`], a signed error saying how to
//! enable it). The operator enables it with an isolating OCI runtime
//! registered with Docker ([`KubernetesMode::Runtime`], the agent's
//! `--kubernetes-runtime`, checked against `docker info` at start by
//! [`check_runtime`]; the node containers then run under it), or, on a
//! single-tenant node only, [`KubernetesMode::PrivilegedUnsafe`]
//! (`--kubernetes-privileged-unsafe`). Every master IP must be a host
//! address of the user's own network on this node.
//!
//! - Container `agent-k8s-<id>` from the configured image (default
//!   [`DEFAULT_K3S_IMAGE`], the agent's `--k3s-image`), whose entrypoint is
//!   `/bin/k3s`; the command is `server --node-ip <ip>` when `master_ips` is
//!   empty, else `agent --server https://<master_ips[0]>:6443 --node-ip <ip>`
//!   (an IPv6 master in brackets). Privileged (k3s needs it; only an
//!   engine that cannot grant it, like a sandboxed CI runner, turns it off
//!   with [`KubernetesProvisioner::with_privileged`]), tmpfs on `/run` and
//!   `/var/run`, restart `unless-stopped`.
//! - `size` 1 or 2: the CPU and memory of the protocol's table as Docker
//!   limits, and a Docker volume `agent-k8s-<id>` for `/var/lib/rancher`,
//!   labelled with the table's disk size (counted as SSD). It is a plain
//!   local volume: its size is accounted, not enforced by a filesystem.
//! - The container joins the user's network (the Docker network named
//!   after the node-local id of `network_id`, as the network provisioner
//!   makes it) with the reserved `ip`.
//! - The cluster secret is opened from its sealed form and given to k3s
//!   only as the `K3S_TOKEN` environment variable: never on the command
//!   line, in a log, the cache or the result.
//! - `ssh_keys` are written to `/root/.ssh/authorized_keys` (0600, in a 0700
//!   directory) before the container starts. k3s images carry no SSH
//!   server: the keys serve an image that adds one, or tooling that reads
//!   them; nothing listens on port 22 by default.
//! - Result `data`: `{"id": <container id>, "ip"}`.
//! - Refused: kubernetes disabled on this node, a size other than 1 or 2,
//!   a network that is not the user's on this node, an IP outside its
//!   subnet (or its network, broadcast or gateway address), an IPv6 `ip`,
//!   a master IP outside that network, more CPUs than the node has.
//! - Adoption: a container or volume found under the node's name is reused
//!   only when [`names::adoptable`] holds (made for this very signed
//!   reservation); anything else there is removed and made afresh.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reservation::workloads::{kubernetes_size, DiskType, Kubernetes};
use reservation::{Identity, Reservation, Secret, WorkloadType};
use serde_json::json;

use crate::charge::{Charge, Resources, CONTAINER_LAYER_MIB, MIB_PER_GIB};
use crate::docker::{
    ContainerExtras, ContainerFilter, ContainerInfo, ContainerNet, ContainerSpec, Docker,
    DockerError, FileUpload, NetworkInfo, VolumeMount, VolumeSpec,
};
use crate::names::{self, label, Names, LABEL_DISK, LABEL_SIZE_GIB};
use crate::plugin::{Plugin, Setup};
use crate::{ProvisionError, LABEL_RESERVATION, LABEL_TYPE, LABEL_USER};

/// The pinned upstream k3s image (production); tests use a local stand-in.
pub const DEFAULT_K3S_IMAGE: &str = "rancher/k3s:v1.31.4-k3s1";
/// Where k3s keeps its state, on the reservation's volume.
pub const STATE_DIR: &str = "/var/lib/rancher";
/// Where `ssh_keys` are written.
pub const AUTHORIZED_KEYS: &str = "/root/.ssh/authorized_keys";
/// Label with a node's role, `server` or `agent`.
pub const LABEL_ROLE: &str = "io.agent.k8s.role";

/// The refusal every kubernetes reservation gets while kubernetes is
/// disabled on the node.
pub const DISABLED: &str = "kubernetes is disabled on this node: k3s needs a privileged container; the operator enables it with --kubernetes-runtime <isolating runtime> or, on a single-tenant node, --kubernetes-privileged-unsafe";

/// OCI runtimes that share the host's kernel with plain namespaces: no
/// isolation for a privileged container. Refused by [`check_runtime_name`].
pub const NON_ISOLATING_RUNTIMES: &[&str] = &[
    "runc",
    "crun",
    "youki",
    "io.containerd.runc.v1",
    "io.containerd.runc.v2",
    "io.containerd.runtime.v1.linux",
];

/// Whether and how this node runs k3s nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KubernetesMode {
    /// Every kubernetes reservation is refused with [`DISABLED`] (default).
    #[default]
    Disabled,
    /// Node containers run under this isolating OCI runtime (`kata`,
    /// `sysbox-runc`...), registered with the Docker engine.
    Runtime(String),
    /// Node containers run privileged on the host's runtime: any tenant
    /// owns the host. Only for a node with a single tenant.
    PrivilegedUnsafe,
}

impl KubernetesMode {
    /// `disabled`, `runtime <name>` or `privileged-unsafe`.
    pub fn describe(&self) -> String {
        match self {
            KubernetesMode::Disabled => "disabled".into(),
            KubernetesMode::Runtime(r) => format!("runtime {r}"),
            KubernetesMode::PrivilegedUnsafe => "privileged-unsafe".into(),
        }
    }
}

/// Refuse a runtime name known not to isolate (`runc` and its aliases).
pub fn check_runtime_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("--kubernetes-runtime: the runtime name is empty".into());
    }
    if NON_ISOLATING_RUNTIMES.contains(&name) {
        return Err(format!(
            "--kubernetes-runtime: {name:?} does not isolate containers from the host (a privileged k3s container would own it); name an isolating runtime such as kata or sysbox-runc, or use --kubernetes-privileged-unsafe on a single-tenant node"
        ));
    }
    Ok(())
}

/// Check that `name` is registered with the engine (`docker info`
/// Runtimes) and is not runc under another name.
pub async fn check_runtime(docker: &dyn Docker, name: &str) -> Result<(), String> {
    check_runtime_name(name)?;
    let info = docker
        .info()
        .await
        .map_err(|e| format!("--kubernetes-runtime: cannot read docker info: {e}"))?;
    check_runtime_in(name, &info.runtime_paths.into_iter().collect::<Vec<_>>())
}

/// [`check_runtime`] against a list of (name, path) registered runtimes.
pub fn check_runtime_in(name: &str, registered: &[(String, String)]) -> Result<(), String> {
    check_runtime_name(name)?;
    let Some((_, path)) = registered.iter().find(|(n, _)| n == name) else {
        let mut known: Vec<&str> = registered.iter().map(|(n, _)| n.as_str()).collect();
        known.sort();
        return Err(format!(
            "--kubernetes-runtime: runtime {name:?} is not registered with this node's docker engine (registered: {}); add it to \"runtimes\" in /etc/docker/daemon.json and restart dockerd",
            known.join(", ")
        ));
    };
    let base = path.rsplit('/').next().unwrap_or("");
    if NON_ISOLATING_RUNTIMES.contains(&base) {
        return Err(format!(
            "--kubernetes-runtime: runtime {name:?} runs {path:?}, which does not isolate containers from the host; name an isolating runtime such as kata or sysbox-runc"
        ));
    }
    Ok(())
}

/// Provisions `kubernetes` workloads.
pub struct KubernetesProvisioner {
    docker: Arc<dyn Docker>,
    node: Arc<Identity>,
    image: String,
    stop_grace: Duration,
    privileged: bool,
    mode: KubernetesMode,
    names: Names,
}

/// Docker name of the container (and volume) of reservation `id`, in
/// node scope `names`.
pub fn node_name(names: &Names, id: &str) -> String {
    names.scoped("k8s", id)
}

/// The k3s command line (without the `/bin/k3s` entrypoint) of a node at
/// `ip`: a server when `masters` is empty, else an agent of the first one.
pub fn k3s_command(ip: IpAddr, masters: &[IpAddr]) -> Vec<String> {
    let mut cmd = match masters.first() {
        None => vec!["server".to_string()],
        Some(IpAddr::V4(m)) => vec![
            "agent".into(),
            "--server".into(),
            format!("https://{m}:6443"),
        ],
        Some(IpAddr::V6(m)) => vec![
            "agent".into(),
            "--server".into(),
            format!("https://[{m}]:6443"),
        ],
    };
    cmd.push("--node-ip".into());
    cmd.push(ip.to_string());
    cmd
}

/// CPU cores, memory MiB and disk GiB of the node's size, or a refusal.
fn size_of(k: &Kubernetes) -> Result<(u32, u64, u64), ProvisionError> {
    kubernetes_size(k.size).ok_or_else(|| {
        ProvisionError::Refused(format!(
            "data.size: kubernetes size {} is not 1 or 2",
            k.size
        ))
    })
}

/// Every master must be a host address of the user's network on this node
/// (a k3s agent joins the server it is told to: never one elsewhere).
fn check_masters(
    masters: &[IpAddr],
    network_id: &str,
    n: &NetworkInfo,
) -> Result<(), ProvisionError> {
    let subnets = n.ipv4_subnets();
    for m in masters {
        let inside = match m {
            IpAddr::V4(m) => subnets
                .iter()
                .any(|s| s.contains(m) && *m != s.network() && *m != s.broadcast()),
            IpAddr::V6(_) => false,
        };
        if !inside {
            let s: Vec<String> = subnets.iter().map(|s| s.to_string()).collect();
            return Err(ProvisionError::Refused(format!(
                "data.master_ips: {m} is not in network {network_id:?}'s subnet {} on this node; a node may only join a master on the user's own network",
                s.join(", ")
            )));
        }
    }
    Ok(())
}

/// `ip` must be a host address of one of the network's subnets, not its
/// gateway.
fn check_ip(ip: Ipv4Addr, network_id: &str, n: &NetworkInfo) -> Result<(), ProvisionError> {
    let subnets = n.ipv4_subnets();
    let Some(sub) = subnets.iter().find(|s| s.contains(&ip)) else {
        let s: Vec<String> = subnets.iter().map(|s| s.to_string()).collect();
        return Err(ProvisionError::Refused(format!(
            "data.ip: {ip} is outside network {network_id:?}'s subnet {} on this node",
            s.join(", ")
        )));
    };
    if ip == sub.network() || ip == sub.broadcast() {
        return Err(ProvisionError::Refused(format!(
            "data.ip: {ip} is the network or broadcast address of {sub}"
        )));
    }
    if n.gateways.iter().any(|g| g == &ip.to_string()) {
        return Err(ProvisionError::Refused(format!(
            "data.ip: {ip} is the gateway of network {network_id:?}"
        )));
    }
    Ok(())
}

impl KubernetesProvisioner {
    /// k3s nodes from `image` (entrypoint `/bin/k3s`).
    pub fn new(docker: Arc<dyn Docker>, node: Arc<Identity>, image: impl Into<String>) -> Self {
        Self {
            docker,
            node,
            image: image.into(),
            stop_grace: crate::container::DEFAULT_STOP_GRACE,
            privileged: true,
            mode: KubernetesMode::Disabled,
            names: Names::unscoped(),
        }
    }

    /// Name, label and filter objects in this node scope (default:
    /// unscoped, [`Names::unscoped`]).
    pub fn with_names(mut self, names: Names) -> Self {
        self.names = names;
        self
    }

    /// Enable kubernetes (default: [`KubernetesMode::Disabled`], every
    /// reservation refused).
    pub fn with_mode(mut self, mode: KubernetesMode) -> Self {
        self.mode = mode;
        self
    }

    /// Whether node containers run privileged once kubernetes is enabled
    /// (default: yes, real k3s needs it; under an isolating runtime the
    /// privilege stays inside its sandbox). Only an engine that cannot
    /// start privileged containers (a sandboxed CI runner) calls for
    /// `false`, with a k3s stand-in. It enables nothing by itself.
    pub fn with_privileged(mut self, privileged: bool) -> Self {
        self.privileged = privileged;
        self
    }

    /// How long k3s gets to stop before it is killed on decommission.
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    /// The user's network `network_id` on this node, or a refusal.
    async fn user_network(
        &self,
        r: &Reservation,
        network_id: &str,
    ) -> Result<NetworkInfo, ProvisionError> {
        let name = self.names.network_name(&r.user_id, network_id);
        match self.docker.inspect_network(&name).await? {
            Some(n)
                if label(&n.labels, LABEL_USER) == r.user_id
                    && label(&n.labels, LABEL_TYPE) == WorkloadType::Network.as_str() =>
            {
                Ok(n)
            }
            _ => Err(ProvisionError::Refused(format!(
                "data.network_id: {network_id:?} is not a network of user {} on this node",
                r.user_id
            ))),
        }
    }

    async fn ensure_image(&self) -> Result<(), ProvisionError> {
        if self.docker.image_exists(&self.image).await? {
            return Ok(());
        }
        tracing::info!(image = %self.image, "k3s image not on this node; pulling it");
        self.docker.pull_image(&self.image).await.map_err(|e| {
            ProvisionError::Node(format!(
                "k3s image {} is not on this node and cannot be pulled: {e}",
                self.image
            ))
        })
    }

    /// Remove the container and the volume of `name`.
    async fn remove(&self, name: &str) -> Result<(), ProvisionError> {
        self.remove_within(name, self.stop_grace).await
    }

    /// Remove the container (SIGKILL after `grace`) and the volume of `name`.
    async fn remove_within(&self, name: &str, grace: Duration) -> Result<(), ProvisionError> {
        self.docker.stop_container(name, grace).await?;
        if self.docker.remove_container(name).await? {
            tracing::info!(container = %name, "k3s node container removed");
        }
        if self.docker.remove_volume(name).await? {
            tracing::info!(volume = %name, "k3s node volume removed");
        }
        Ok(())
    }

    fn result(c: &ContainerInfo, ip: IpAddr) -> serde_json::Value {
        json!({"id": c.id, "ip": ip.to_string()})
    }

    /// The container of node `r` on Docker network `network` at `ip`, with
    /// `token` for `K3S_TOKEN`: what [`Plugin::provision`] creates.
    pub fn node_container(
        &self,
        r: &Reservation,
        k: &Kubernetes,
        network: &str,
        ip: Ipv4Addr,
        token: Secret,
    ) -> Result<(ContainerSpec, ContainerExtras), ProvisionError> {
        let (cpu, memory_mib, _) = size_of(k)?;
        let name = node_name(&self.names, &r.id);
        let mut labels = self.names.labels(r, WorkloadType::Kubernetes);
        let role = if k.master_ips.is_empty() {
            "server"
        } else {
            "agent"
        };
        labels.insert(LABEL_ROLE.into(), role.into());
        let spec = ContainerSpec {
            name: name.clone(),
            image: self.image.clone(),
            env: Vec::new(),
            secret_env: vec![("K3S_TOKEN".into(), token)],
            entrypoint: None,
            tty: false,
            open_stdin: false,
            nano_cpus: i64::from(cpu) * 1_000_000_000,
            memory: (memory_mib * 1024 * 1024) as i64,
            mounts: vec![VolumeMount {
                volume: name,
                target: STATE_DIR.into(),
            }],
            network: ContainerNet::Bridge {
                network: network.to_string(),
                ipv4: Some(ip),
            },
            ports: Vec::new(),
            restart_unless_stopped: true,
            labels,
        };
        let extras = ContainerExtras {
            cmd: Some(k3s_command(IpAddr::V4(ip), &k.master_ips)),
            privileged: self.privileged,
            tmpfs: BTreeMap::from([
                ("/run".into(), String::new()),
                ("/var/run".into(), String::new()),
            ]),
            runtime: match &self.mode {
                KubernetesMode::Runtime(r) => Some(r.clone()),
                _ => None,
            },
        };
        Ok((spec, extras))
    }

    /// Create, fill and start the node; on failure leave nothing behind.
    async fn create(
        &self,
        r: &Reservation,
        k: &Kubernetes,
        network: &str,
        ip: Ipv4Addr,
    ) -> Result<(), ProvisionError> {
        let name = node_name(&self.names, &r.id);
        let (_, _, disk_gib) = size_of(k)?;
        let token = self
            .node
            .open_sealed("cluster_secret", &k.cluster_secret)
            .map_err(|e| ProvisionError::Refused(e.to_string()))?;
        let (spec, extras) = self.node_container(r, k, network, ip, token)?;
        self.ensure_image().await?;

        if let Some(v) = self.docker.inspect_volume(&name).await? {
            if !self.names.adoptable(&v.labels, r) {
                tracing::warn!(volume = %name, "a volume under this k3s node's name was not made for this reservation; removing it");
                self.docker.remove_volume(&name).await?;
            }
        }
        if self.docker.inspect_volume(&name).await?.is_none() {
            let mut labels = self.names.labels(r, WorkloadType::Kubernetes);
            labels.insert(LABEL_DISK.into(), DiskType::Ssd.as_str().into());
            labels.insert(LABEL_SIZE_GIB.into(), disk_gib.to_string());
            self.docker
                .create_volume(&VolumeSpec {
                    name: name.clone(),
                    driver_opts: BTreeMap::new(),
                    labels,
                })
                .await?;
        }
        if let Err(e) = self.docker.create_container_with(&spec, &extras).await {
            self.cleanup_after_failure(&name).await;
            return Err(e.into());
        }
        if !k.ssh_keys.is_empty() {
            let mut content = k.ssh_keys.join("\n").into_bytes();
            content.push(b'\n');
            let file = FileUpload {
                path: AUTHORIZED_KEYS.into(),
                mode: 0o600,
                content,
            };
            if let Err(e) = self.docker.upload_files(&name, &[file]).await {
                self.cleanup_after_failure(&name).await;
                return Err(e.into());
            }
        }
        if let Err(e) = self.docker.start_container(&name).await {
            self.cleanup_after_failure(&name).await;
            let msg = e.to_string();
            if msg.contains("Address already in use") {
                return Err(ProvisionError::Refused(format!(
                    "data.ip: {ip} is already used on network {:?}",
                    k.network_id
                )));
            }
            if extras.privileged && msg.contains("unable to apply caps") {
                return Err(ProvisionError::Node(format!(
                    "this node's docker engine cannot start privileged containers, which k3s needs: {msg}"
                )));
            }
            return Err(e.into());
        }
        Ok(())
    }

    async fn cleanup_after_failure(&self, name: &str) {
        if let Err(e) = self.remove(name).await {
            tracing::warn!(container = %name, error = %e, "cannot remove the k3s node that failed to start");
        }
    }
}

#[async_trait]
impl Plugin for KubernetesProvisioner {
    type Data = Kubernetes;

    fn build(s: &Setup) -> Self {
        let o = &s.options;
        KubernetesProvisioner::new(s.docker.clone(), s.node.clone(), o.k3s_image.clone())
            .with_privileged(o.k3s_privileged)
            .with_mode(o.kubernetes.clone())
            .with_names(o.names.clone())
            .with_stop_grace(o.stop_grace)
    }

    /// The size table's cores, memory and disk (on the root disk), plus
    /// the [`CONTAINER_LAYER_MIB`] layer of its container.
    fn charge(k: &Kubernetes, root_disk: DiskType) -> Charge {
        match kubernetes_size(k.size) {
            Some((cpu, mem_mib, disk_gib)) => Resources {
                cpu: cpu as u64,
                memory_mib: mem_mib,
                ..Resources::ZERO
            }
            .saturating_add(Resources::disk(
                root_disk,
                disk_gib.saturating_mul(MIB_PER_GIB) + CONTAINER_LAYER_MIB,
            )),
            // Validation refuses other sizes before admission.
            None => Resources::ZERO,
        }
    }

    fn watched_container(names: &Names, r: &Reservation) -> Option<String> {
        Some(node_name(names, &r.id))
    }

    /// Its container and the volume of the same name.
    fn objects(names: &Names, r: &Reservation, _k: &Kubernetes) -> Vec<String> {
        vec![node_name(names, &r.id)]
    }

    /// The user's network it joins.
    fn uses(names: &Names, r: &Reservation, k: &Kubernetes) -> Vec<String> {
        vec![names.network_name(&r.user_id, &k.network_id)]
    }

    async fn provision(
        &self,
        r: &Reservation,
        k: &Kubernetes,
    ) -> Result<serde_json::Value, ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        if self.mode == KubernetesMode::Disabled {
            return Err(ProvisionError::Refused(DISABLED.into()));
        }
        let (cpu, memory_mib, _) = size_of(k)?;
        let network = self.user_network(r, &k.network_id).await?;
        let ip = match k.ip {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(ip) => {
                return Err(ProvisionError::Refused(format!(
                    "data.ip: {ip} is IPv6; networks on this node are IPv4"
                )))
            }
        };
        check_ip(ip, &k.network_id, &network)?;
        check_masters(&k.master_ips, &k.network_id, &network)?;
        let ncpu = self.docker.info().await?.ncpu;
        if ncpu > 0 && cpu > ncpu {
            return Err(ProvisionError::Refused(format!(
                "data.size: size {} needs {cpu} CPUs, this node has {ncpu}",
                k.size
            )));
        }

        let name = node_name(&self.names, &r.id);
        let existing = match self.docker.inspect_container(&name).await? {
            Some(c) if self.names.held_by_another(&c.labels, r) => {
                return Err(names::held_error(r, "k3s node"));
            }
            Some(c) if !self.names.adoptable(&c.labels, r) => {
                // Another user's, hand-made, or of an earlier reservation
                // under the same id: never reused (nor its labels logged).
                tracing::warn!(container = %name, "a container under this k3s node's name was not made for this reservation; removing it and creating the node afresh");
                self.remove(&name).await?;
                None
            }
            other => other,
        };
        if let Some(c) = existing {
            if !c.is_up() {
                tracing::info!(reservation = %r.id, container = %name, state = %c.state, "starting existing k3s node");
                self.docker.start_container(&name).await?;
            }
            tracing::info!(reservation = %r.id, container = %name, "k3s node exists; reusing it");
            return Ok(Self::result(&c, k.ip));
        }

        self.create(r, k, &network.name, ip).await?;
        let c = self.docker.inspect_container(&name).await?.ok_or_else(|| {
            ProvisionError::Docker(DockerError::Other(format!(
                "container {name} vanished after start"
            )))
        })?;
        tracing::info!(
            reservation = %r.id,
            container = %name,
            ip = %ip,
            role = if k.master_ips.is_empty() { "server" } else { "agent" },
            cpu,
            memory_mib,
            "k3s node provisioned"
        );
        Ok(Self::result(&c, k.ip))
    }

    async fn decommission(&self, r: &Reservation, _k: &Kubernetes) -> Result<(), ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        let name = node_name(&self.names, &r.id);
        if let Some(c) = self.docker.inspect_container(&name).await? {
            if self.names.held_by_another(&c.labels, r) {
                tracing::warn!(reservation = %r.id, "not removing a k3s node not made for this reservation");
                return Ok(());
            }
        }
        let grace =
            crate::container::stop_grace_before_expiry(r, self.stop_grace, chrono::Utc::now());
        self.remove_within(&name, grace).await
    }

    async fn exists(&self, r: &Reservation, _k: &Kubernetes) -> Result<bool, ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        Ok(self
            .docker
            .inspect_container(&node_name(&self.names, &r.id))
            .await?
            .is_some_and(|c| c.is_up() && self.names.adoptable(&c.labels, r)))
    }

    async fn present(&self) -> Result<Option<std::collections::HashSet<String>>, ProvisionError> {
        let filter = ContainerFilter {
            labels: self.names.type_filter(WorkloadType::Kubernetes),
            ..Default::default()
        };
        let list = self.docker.list_containers(&filter).await?;
        Ok(Some(
            list.into_iter()
                .filter(|c| {
                    c.is_up()
                        && c.name == node_name(&self.names, label(&c.labels, LABEL_RESERVATION))
                })
                .map(|c| label(&c.labels, LABEL_RESERVATION).to_string())
                .collect(),
        ))
    }

    async fn list_labelled(&self) -> Result<Vec<String>, ProvisionError> {
        let filter = ContainerFilter {
            labels: self.names.type_filter(WorkloadType::Kubernetes),
            ..Default::default()
        };
        let mut ids: Vec<String> = self
            .docker
            .list_containers(&filter)
            .await?
            .iter()
            .map(|c| label(&c.labels, LABEL_RESERVATION).to_string())
            .collect();
        ids.extend(
            self.docker
                .list_volumes(&self.names.type_filter(WorkloadType::Kubernetes))
                .await?
                .iter()
                .map(|v| label(&v.labels, LABEL_RESERVATION).to_string()),
        );
        ids.retain(|id| names::check_id("id", id).is_ok());
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    async fn remove_labelled(&self, id: &str) -> Result<(), ProvisionError> {
        names::check_id("reservation id", id)?;
        self.remove(&node_name(&self.names, id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Provisioner;
    use reservation::Workload;

    fn signed_k8s(node: &Identity) -> (Reservation, Workload) {
        let user = Identity::generate();
        let data = json!({"size": 1, "network_id": "net", "ip": "10.9.0.5",
            "cluster_secret": reservation::seal_for(node.id(), b"tok").unwrap(),
            "master_ips": ["10.9.0.2"]});
        let mut r = Reservation {
            id: "77-1".into(),
            node_id: node.id().to_string(),
            user_id: user.id().to_string(),
            kind: "kubernetes".into(),
            data: serde_json::value::RawValue::from_string(data.to_string()).unwrap(),
            created: Some(chrono::Utc::now()),
            duration: 3_600_000_000_000,
            ..Default::default()
        };
        user.sign_reservation(&mut r);
        let w = Workload::parse(WorkloadType::Kubernetes, &r.data).unwrap();
        (r, w)
    }

    #[tokio::test]
    async fn disabled_by_default_with_a_refusal_that_says_how_to_enable() {
        let node = Arc::new(Identity::generate());
        let fake = Arc::new(crate::FakeDocker::new());
        let k8s = KubernetesProvisioner::new(fake.clone(), node.clone(), "img");
        let (r, w) = signed_k8s(&node);
        match Provisioner::provision(&k8s, &r, &w).await {
            Err(ProvisionError::Refused(m)) => {
                assert_eq!(m, DISABLED);
                assert!(
                    m.contains("--kubernetes-runtime")
                        && m.contains("--kubernetes-privileged-unsafe")
                );
            }
            other => panic!("expected the disabled refusal, got {other:?}"),
        }
        assert!(fake.container_names().is_empty() && fake.volume_names().is_empty());
    }

    #[test]
    fn the_node_container_carries_the_isolating_runtime() {
        let node = Arc::new(Identity::generate());
        let fake = Arc::new(crate::FakeDocker::new());
        let (r, w) = signed_k8s(&node);
        let Workload::Kubernetes(k) = &w else {
            unreachable!()
        };
        let ip = Ipv4Addr::new(10, 9, 0, 5);
        let k8s = KubernetesProvisioner::new(fake.clone(), node.clone(), "img")
            .with_mode(KubernetesMode::Runtime("kata".into()));
        let (spec, extras) = k8s
            .node_container(&r, k, "n", ip, Secret::new("t"))
            .unwrap();
        assert_eq!(extras.runtime.as_deref(), Some("kata"));
        assert!(extras.privileged, "privileged inside the sandbox");
        assert_eq!(
            spec.labels[names::LABEL_SIGNATURE],
            names::signature_hash(&r)
        );
        let unsafe_mode = KubernetesProvisioner::new(fake, node, "img")
            .with_mode(KubernetesMode::PrivilegedUnsafe);
        let (_, extras) = unsafe_mode
            .node_container(&r, k, "n", ip, Secret::new("t"))
            .unwrap();
        assert_eq!(extras.runtime, None);
    }

    #[test]
    fn runtimes_must_be_registered_and_isolating() {
        let reg = vec![
            ("runc".to_string(), "runc".to_string()),
            ("io.containerd.runc.v2".to_string(), "runc".to_string()),
            ("kata".to_string(), "/usr/bin/kata-runtime".to_string()),
            ("runc-alias".to_string(), "/usr/local/sbin/runc".to_string()),
        ];
        assert!(check_runtime_in("kata", &reg).is_ok());
        let e = check_runtime_in("sysbox-runc", &reg).unwrap_err();
        assert!(
            e.starts_with("--kubernetes-runtime: runtime \"sysbox-runc\" is not registered"),
            "{e}"
        );
        for bad in ["runc", "io.containerd.runc.v2", "runc-alias", ""] {
            let e = check_runtime_in(bad, &reg).unwrap_err();
            assert!(e.starts_with("--kubernetes-runtime:"), "{bad}: {e}");
        }
    }

    #[test]
    fn masters_must_be_on_the_users_network() {
        let n = NetworkInfo {
            name: "n".into(),
            subnets: vec!["10.9.0.0/24".into()],
            gateways: vec!["10.9.0.1".into()],
            ..Default::default()
        };
        assert!(check_masters(&["10.9.0.2".parse().unwrap()], "net", &n).is_ok());
        for bad in ["1.2.3.4", "10.9.1.2", "10.9.0.255", "fd00::1"] {
            let e = check_masters(&[bad.parse().unwrap()], "net", &n)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("data.master_ips: ") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn command_lines() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(k3s_command(ip, &[]), ["server", "--node-ip", "10.1.2.3"]);
        assert_eq!(
            k3s_command(ip, &["10.1.2.2".parse().unwrap()]),
            [
                "agent",
                "--server",
                "https://10.1.2.2:6443",
                "--node-ip",
                "10.1.2.3"
            ]
        );
        assert_eq!(
            k3s_command(
                ip,
                &["fd00::1".parse().unwrap(), "10.0.0.1".parse().unwrap()]
            ),
            [
                "agent",
                "--server",
                "https://[fd00::1]:6443",
                "--node-ip",
                "10.1.2.3"
            ]
        );
    }
}
