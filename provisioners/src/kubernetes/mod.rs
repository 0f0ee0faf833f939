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
//!
//! Files: `mod.rs`, the plug-in ([`KubernetesProvisioner`] and its
//! [`Plugin`] impl); `runtime.rs`, whether and how kubernetes runs here
//! ([`KubernetesMode`]); `spec.rs`, the k3s node container built and
//! checked from the data; `tests.rs`, unit tests.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reservation::workloads::{kubernetes_size, DiskType, Kubernetes};
use reservation::{Identity, Reservation, WorkloadType};
use serde_json::json;

use crate::charge::{Charge, Resources, CONTAINER_LAYER_MIB, MIB_PER_GIB};
use crate::docker::{
    ContainerFilter, ContainerInfo, Docker, DockerError, FileUpload, NetworkInfo, VolumeSpec,
};
use crate::names::{self, label, Names, LABEL_DISK, LABEL_SIZE_GIB};
use crate::plugin::{Plugin, Setup};
use crate::{ProvisionError, LABEL_RESERVATION, LABEL_TYPE, LABEL_USER};

mod runtime;
pub use runtime::{
    check_runtime, check_runtime_in, check_runtime_name, KubernetesMode, DISABLED,
    NON_ISOLATING_RUNTIMES,
};
mod spec;
pub use spec::k3s_command;
use spec::{check_ip, check_masters, size_of};

/// The pinned upstream k3s image (production); tests use a local stand-in.
pub const DEFAULT_K3S_IMAGE: &str = "rancher/k3s:v1.31.4-k3s1";
/// Where k3s keeps its state, on the reservation's volume.
pub const STATE_DIR: &str = "/var/lib/rancher";
/// Where `ssh_keys` are written.
pub const AUTHORIZED_KEYS: &str = "/root/.ssh/authorized_keys";
/// Label with a node's role, `server` or `agent`.
pub const LABEL_ROLE: &str = "io.agent.k8s.role";

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

    fn watched_container(names: &Names, id: &str) -> Option<String> {
        Some(node_name(names, id))
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
        let grace = crate::container::stop_timeout_at_expiry(r, self.stop_grace).await;
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
mod tests;
