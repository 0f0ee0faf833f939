//! The `container` workload type, all of it ([`Plugin`]): one Docker
//! container per reservation, named `agent-ct-<id>`. It is charged its
//! cores, memory and a 256 MiB layer on the root disk, counts its published
//! ports against its user, is the container the crash watch follows, and
//! uses the volumes it mounts and the network it joins.
//!
//! Request to Docker, field by field (the `container` workload of
//! docs/PROTOCOL.md):
//! - `flist` is the image reference; `flist_storage`, when given, is the
//!   registry host it is pulled from (it replaces a host already in `flist`,
//!   mirror style). A missing image is pulled (progress logged); one that is
//!   neither present nor pullable is refused, naming the image.
//! - `env` is passed as given; `secret_env` values are opened with the node
//!   key and exist in plaintext only inside the create request to Docker.
//! - `entrypoint` is shell-split into Docker's **Entrypoint** (not Cmd):
//!   it is the whole command line, so the image's own ENTRYPOINT and CMD are
//!   both replaced, as with `docker run --entrypoint`. Empty keeps the image's.
//! - `interactive` gives a tty and an open stdin.
//! - `capacity.cpu` cores become NanoCpus, `capacity.memory` MiB a memory
//!   limit in bytes.
//! - `mounts` name the user's volumes on this node (checked through the
//!   volume's `io.agent.user` label); mountpoints are normalised.
//! - `network.network_id` names the user's network, mapped through the
//!   node-local id; `ips` (one) becomes a static IPAM address; empty
//!   `network_id` means network mode `none`.
//! - `ports` are published on the host, bound to the operator's
//!   `--host-port-address`, and only from `--host-port-range` (default
//!   30000-32767: never a port of the host's own services, like 22); a
//!   port already taken is refused without saying by whom. Restart policy
//!   `unless-stopped`.
//!
//! Every container is confined ([`Confinement`]): a PIDs limit
//! (`--container-pids-limit`), `no-new-privileges`, `NET_RAW` dropped from
//! Docker's default capabilities (no raw sockets: no ARP or ICMP spoofing
//! of neighbours), and the operator's `--container-runtime` (e.g. gVisor's
//! `runsc`) when set.
//!
//! A container found under the reservation's name is reused only when its
//! labels say it was made for this very signed reservation
//! ([`names::adoptable`]); anything else there is removed and replaced.
//!
//! Result `data`: `{"id": <container id>, "ipv4": "...", "ipv6": "..."}`.
//!
//! Files: `mod.rs`, the plug-in ([`ContainerProvisioner`] and its
//! [`Plugin`] impl: create, start, reuse, remove, list); `policy.rs`, the
//! operator's [`ContainerPolicy`]; `spec.rs`, the Docker request built and
//! checked from the data; `tests.rs`, unit tests.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reservation::workloads::{Container, DiskType};
use reservation::{Identity, Reservation, WorkloadType};
use serde_json::json;
use tokio::sync::OnceCell;

use crate::charge::{Charge, Resources, Tenancy, CONTAINER_LAYER_MIB};
use crate::docker::{
    ContainerFilter, ContainerInfo, ContainerNet, ContainerSpec, Docker, DockerError, DockerInfo,
};
use crate::names::{self, label, Names};
use crate::plugin::{Plugin, Setup};
use crate::{ProvisionError, LABEL_RESERVATION};

mod policy;
pub use policy::{
    parse_port_range, ContainerPolicy, CAP_DROP, DEFAULT_HOST_PORTS, DEFAULT_PIDS_LIMIT,
};
mod spec;
pub use spec::image_ref;
use spec::port_taken;

/// Provisions `container` workloads.
pub struct ContainerProvisioner {
    docker: Arc<dyn Docker>,
    node: Arc<Identity>,
    stop_grace: Duration,
    info: OnceCell<DockerInfo>,
    policy: ContainerPolicy,
    names: Names,
}

impl ContainerProvisioner {
    /// `node` opens the sealed `secret_env` values.
    pub fn new(docker: Arc<dyn Docker>, node: Arc<Identity>) -> Self {
        Self {
            docker,
            node,
            stop_grace: DEFAULT_STOP_GRACE,
            info: OnceCell::new(),
            policy: ContainerPolicy::default(),
            names: Names::unscoped(),
        }
    }

    /// Name, label and filter objects in this node scope (default:
    /// unscoped, [`Names::unscoped`]).
    pub fn with_names(mut self, names: Names) -> Self {
        self.names = names;
        self
    }

    /// Confine containers and publish ports under `policy` (default:
    /// [`ContainerPolicy::default`]).
    pub fn with_policy(mut self, policy: ContainerPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How long a decommissioned container gets between SIGTERM and
    /// SIGKILL (default 10 s).
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    async fn docker_info(&self) -> Result<&DockerInfo, ProvisionError> {
        Ok(self.info.get_or_try_init(|| self.docker.info()).await?)
    }

    /// Start a created container; on failure remove it so a refused
    /// request leaves nothing behind, and say which field was at fault.
    async fn start_new(&self, spec: &ContainerSpec) -> Result<(), ProvisionError> {
        let Err(e) = self.docker.start_container(&spec.name).await else {
            return Ok(());
        };
        if let Err(rm) = self.docker.remove_container(&spec.name).await {
            tracing::warn!(container = %spec.name, error = %rm, "cannot remove the container that failed to start");
        }
        let msg = e.to_string();
        if msg.contains("port is already allocated") || msg.contains("address already in use") {
            // Docker's message may name whoever holds the port (another
            // tenant's container): it is not passed on.
            return Err(ProvisionError::Refused(port_taken(&spec.ports, &msg)));
        }
        if let ContainerNet::Bridge {
            ipv4: Some(ip),
            network,
        } = &spec.network
        {
            if msg.contains("Address already in use") {
                return Err(ProvisionError::Refused(format!(
                    "network.ips: {ip} is already used on network {network}"
                )));
            }
        }
        Err(e.into())
    }

    fn result(c: &ContainerInfo, spec_net: Option<&str>) -> serde_json::Value {
        let ep = spec_net
            .and_then(|n| c.networks.get(n))
            .cloned()
            .unwrap_or_default();
        json!({"id": c.id, "ipv4": ep.ipv4, "ipv6": ep.ipv6})
    }

    /// Start an existing container of ours if it is down, making sure the
    /// disk images of its volumes are mounted first.
    async fn revive(&self, c: &ContainerInfo) -> Result<(), ProvisionError> {
        if c.is_up() {
            return Ok(());
        }
        for v in &c.volumes {
            if let Some(v) = self.docker.inspect_volume(v).await? {
                if let Some(device) = v.driver_opts.get("device") {
                    crate::volume::ensure_device_mounted(device).await?;
                }
            }
        }
        tracing::info!(container = %c.name, state = %c.state, "starting existing container");
        Ok(self.docker.start_container(&c.name).await?)
    }

    /// Create and start container `name` of `r`; its result data.
    async fn create(
        &self,
        r: &Reservation,
        c: &Container,
        name: &str,
        net: Option<&str>,
    ) -> Result<serde_json::Value, ProvisionError> {
        let spec = self.spec(r, c).await?;
        let confine = self.policy.confinement();
        match self.docker.create_confined_container(&spec, &confine).await {
            Ok(id) => {
                tracing::info!(reservation = %r.id, container = %name, id = %id, image = %spec.image, "container created");
                self.start_new(&spec).await?;
            }
            Err(e) => {
                // Another run may have created it meanwhile: reuse that one
                // if it is this reservation's.
                match self.docker.inspect_container(name).await? {
                    Some(c) if self.names.adoptable(&c.labels, r) => {}
                    _ => return Err(e.into()),
                }
                self.docker.start_container(name).await?;
            }
        }
        let info = self.docker.inspect_container(name).await?.ok_or_else(|| {
            ProvisionError::Docker(DockerError::Other(format!(
                "container {name} vanished after start"
            )))
        })?;
        tracing::info!(reservation = %r.id, container = %name, state = %info.state, "container provisioned");
        Ok(Self::result(&info, net))
    }

    async fn remove(&self, name: &str) -> Result<(), ProvisionError> {
        self.remove_within(name, self.stop_grace).await
    }

    /// Stop (SIGTERM, SIGKILL after `grace`) and remove.
    async fn remove_within(&self, name: &str, grace: Duration) -> Result<(), ProvisionError> {
        self.docker.stop_container(name, grace).await?;
        if self.docker.remove_container(name).await? {
            tracing::info!(container = %name, "container removed");
        }
        Ok(())
    }
}

#[async_trait]
impl Plugin for ContainerProvisioner {
    type Data = Container;

    fn build(s: &Setup) -> Self {
        ContainerProvisioner::new(s.docker.clone(), s.node.clone())
            .with_policy(s.options.tenants.container.clone())
            .with_names(s.options.names.clone())
            .with_stop_grace(s.options.stop_grace)
    }

    /// Its cores and memory, and [`CONTAINER_LAYER_MIB`] of root disk.
    fn charge(c: &Container, root_disk: DiskType) -> Charge {
        Resources {
            cpu: c.capacity.cpu as u64,
            memory_mib: c.capacity.memory,
            ..Resources::ZERO
        }
        .saturating_add(Resources::disk(root_disk, CONTAINER_LAYER_MIB))
    }

    /// Its published host ports.
    fn tenancy(c: &Container) -> Tenancy {
        Tenancy {
            ports: c.ports.len() as u64,
            ..Tenancy::default()
        }
    }

    fn watched_container(names: &Names, id: &str) -> Option<String> {
        Some(names.container_name(id))
    }

    fn objects(names: &Names, r: &Reservation, _c: &Container) -> Vec<String> {
        vec![names.container_name(&r.id)]
    }

    /// The volumes it mounts and the network it joins.
    fn uses(names: &Names, r: &Reservation, c: &Container) -> Vec<String> {
        let mut used: Vec<String> = c
            .mounts
            .iter()
            .map(|m| names.volume_name(&m.volume_id))
            .collect();
        if !c.network.network_id.is_empty() {
            used.push(names.network_name(&r.user_id, &c.network.network_id));
        }
        used
    }

    async fn provision(
        &self,
        r: &Reservation,
        c: &Container,
    ) -> Result<serde_json::Value, ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        let name = self.names.container_name(&r.id);
        let net = (!c.network.network_id.is_empty())
            .then(|| self.names.network_name(&r.user_id, &c.network.network_id));

        if let Some(existing) = self.docker.inspect_container(&name).await? {
            if self.names.held_by_another(&existing.labels, r) {
                return Err(names::held_error(r, "container"));
            }
            if !self.names.adoptable(&existing.labels, r) {
                tracing::warn!(
                    reservation = %r.id,
                    container = %name,
                    "a container under this reservation's name was not made for it; replacing it"
                );
                self.remove(&name).await?;
                return self.create(r, c, &name, net.as_deref()).await;
            }
            tracing::info!(reservation = %r.id, container = %name, "container already exists; reusing it");
            self.revive(&existing).await?;
            let now = self.docker.inspect_container(&name).await?.ok_or_else(|| {
                ProvisionError::Docker(DockerError::Other(format!("container {name} vanished")))
            })?;
            return Ok(Self::result(&now, net.as_deref()));
        }

        self.create(r, c, &name, net.as_deref()).await
    }

    async fn decommission(&self, r: &Reservation, _c: &Container) -> Result<(), ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        let name = self.names.container_name(&r.id);
        match self.docker.inspect_container(&name).await? {
            None => Ok(()),
            Some(c)
                if label(&c.labels, LABEL_RESERVATION) != r.id
                    || self.names.held_by_another(&c.labels, r) =>
            {
                tracing::warn!(container = %name, reservation = %r.id, "not removing a container not made for this reservation");
                Ok(())
            }
            Some(_) => {
                let grace = stop_timeout_at_expiry(r, self.stop_grace).await;
                self.remove_within(&name, grace).await
            }
        }
    }

    /// True when the container exists and is running (or being restarted
    /// by Docker). A stopped one counts as gone: provisioning it again
    /// starts it (e.g. after a reboot that lost a volume's mount).
    async fn exists(&self, r: &Reservation, _c: &Container) -> Result<bool, ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        let name = self.names.container_name(&r.id);
        Ok(match self.docker.inspect_container(&name).await? {
            None => false,
            Some(c) if label(&c.labels, LABEL_RESERVATION) != r.id => false,
            Some(c) if !c.is_up() => {
                tracing::info!(container = %name, state = %c.state, "container exists but is not running");
                false
            }
            Some(_) => true,
        })
    }

    async fn present(&self) -> Result<Option<std::collections::HashSet<String>>, ProvisionError> {
        let filter = ContainerFilter {
            labels: self.names.type_filter(WorkloadType::Container),
            ..Default::default()
        };
        let list = self.docker.list_containers(&filter).await?;
        Ok(Some(
            list.into_iter()
                .filter(|c| {
                    c.is_up()
                        && c.name
                            == self
                                .names
                                .container_name(label(&c.labels, LABEL_RESERVATION))
                })
                .map(|c| label(&c.labels, LABEL_RESERVATION).to_string())
                .collect(),
        ))
    }

    async fn list_labelled(&self) -> Result<Vec<String>, ProvisionError> {
        let filter = ContainerFilter {
            labels: self.names.type_filter(WorkloadType::Container),
            ..Default::default()
        };
        let ids: BTreeSet<String> = self
            .docker
            .list_containers(&filter)
            .await?
            .into_iter()
            .map(|c| label(&c.labels, LABEL_RESERVATION).to_string())
            .filter(|id| !id.is_empty())
            .collect();
        Ok(ids.into_iter().collect())
    }

    async fn remove_labelled(&self, id: &str) -> Result<(), ProvisionError> {
        let filter = ContainerFilter {
            labels: self.names.id_filter(WorkloadType::Container, id),
            ..Default::default()
        };
        for c in self.docker.list_containers(&filter).await? {
            self.remove(&c.name).await?;
        }
        Ok(())
    }
}

/// Default `--stop-grace`: Docker's own.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// The stop timeout of a decommission at `now`: the full `grace` unless the
/// reservation expires sooner, then what is left until its expiry (so
/// SIGKILL comes at the expiry at the latest). The decommission source
/// wakes `grace` before the expiry, so an expiring workload gets SIGTERM
/// then and is gone by its expiry; an early deletion gets the full grace.
pub fn stop_grace_before_expiry(
    r: &Reservation,
    grace: Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> Duration {
    match r.expires_at() {
        Some(at) => grace.min((at - now).to_std().unwrap_or(Duration::ZERO)),
        None => grace,
    }
}

/// Docker's stop takes its timeout in whole seconds: a grace of 9.8 s
/// would SIGKILL 0.8 s before the expiry (9 s) or 0.2 s after it (10 s).
/// Instead wait the fraction, then stop with the whole seconds: SIGKILL
/// lands at the expiry, SIGTERM a fraction of a second later than it could.
/// Returns (wait before stopping, whole-second stop timeout).
pub fn whole_second_grace(grace: Duration) -> (Duration, Duration) {
    let whole = Duration::from_secs(grace.as_secs());
    (grace - whole, whole)
}

/// The whole-second stop timeout for decommissioning `r` now, after
/// waiting its fraction ([`stop_grace_before_expiry`] then
/// [`whole_second_grace`]): what every plug-in that stops a container on
/// decommission passes to Docker.
pub async fn stop_timeout_at_expiry(r: &Reservation, grace: Duration) -> Duration {
    let grace = stop_grace_before_expiry(r, grace, chrono::Utc::now());
    let (wait, whole) = whole_second_grace(grace);
    tokio::time::sleep(wait).await;
    whole
}

#[cfg(test)]
mod tests;
