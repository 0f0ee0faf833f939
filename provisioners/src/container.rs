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

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reservation::workloads::{normalize_mountpoint, Container, DiskType, PortProtocol};
use reservation::{Identity, Reservation, WorkloadType};
use serde_json::json;
use tokio::sync::OnceCell;

use crate::charge::{Charge, Resources, Tenancy, CONTAINER_LAYER_MIB};
use crate::docker::{
    Confinement, ContainerFilter, ContainerInfo, ContainerNet, ContainerSpec, Docker, DockerError,
    DockerInfo, PortSpec, VolumeMount,
};
use crate::names::{self, label, Names};
use crate::plugin::{Plugin, Setup};
use crate::{ProvisionError, LABEL_RESERVATION, LABEL_TYPE, LABEL_USER};

/// Docker's smallest memory limit (6 MiB); less is refused up front.
const MIN_MEMORY_MIB: u64 = 6;

/// Default of `--container-pids-limit`.
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;
/// Default of `--host-port-range`.
pub const DEFAULT_HOST_PORTS: (u16, u16) = (30000, 32767);
/// Capabilities dropped from Docker's default set in every tenant
/// container: raw sockets would let a tenant forge packets (ARP, ICMP) on
/// a bridge.
pub const CAP_DROP: &[&str] = &["NET_RAW"];

/// The operator's rules for tenant containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPolicy {
    /// Most processes a container may hold (`--container-pids-limit`).
    pub pids_limit: i64,
    /// OCI runtime of every tenant container (`--container-runtime`);
    /// `None`: the engine's default.
    pub runtime: Option<String>,
    /// Host ports tenants may publish, inclusive (`--host-port-range`).
    pub host_ports: (u16, u16),
    /// Host address published ports are bound to (`--host-port-address`);
    /// `0.0.0.0` is every address.
    pub host_port_address: IpAddr,
}

impl Default for ContainerPolicy {
    fn default() -> Self {
        Self {
            pids_limit: DEFAULT_PIDS_LIMIT,
            runtime: None,
            host_ports: DEFAULT_HOST_PORTS,
            host_port_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }
}

impl ContainerPolicy {
    /// What every tenant container gets.
    pub fn confinement(&self) -> Confinement {
        Confinement {
            pids_limit: Some(self.pids_limit),
            no_new_privileges: true,
            cap_drop: CAP_DROP.iter().map(|c| c.to_string()).collect(),
            runtime: self.runtime.clone(),
            port_address: Some(self.host_port_address),
        }
    }
}

/// Parse a port range such as `30000-32767` (a single port is a range of
/// one).
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("port range {s:?}: expected LOW-HIGH with 1 <= LOW <= HIGH <= 65535");
    let (a, b) = match s.trim().split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (s.trim(), s.trim()),
    };
    let (a, b): (u16, u16) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

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

    /// Turn the request into a [`ContainerSpec`], checking everything that
    /// can be checked before Docker is asked to create anything.
    async fn spec(&self, r: &Reservation, c: &Container) -> Result<ContainerSpec, ProvisionError> {
        let refused = |m: String| ProvisionError::Refused(m);

        // Limits.
        let ncpu = self.docker_info().await?.ncpu;
        if ncpu > 0 && c.capacity.cpu > ncpu {
            return Err(refused(format!(
                "capacity.cpu: {} cores asked, this node has {ncpu}",
                c.capacity.cpu
            )));
        }
        if c.capacity.cpu == 0 {
            return Err(refused("capacity.cpu: must be > 0 cores".into()));
        }
        if c.capacity.memory < MIN_MEMORY_MIB {
            return Err(refused(format!(
                "capacity.memory: {} MiB is below docker's minimum of {MIN_MEMORY_MIB} MiB",
                c.capacity.memory
            )));
        }
        let memory = c
            .capacity
            .memory
            .checked_mul(1024 * 1024)
            .and_then(|b| i64::try_from(b).ok())
            .ok_or_else(|| refused("capacity.memory: out of range".into()))?;

        // Environment: secrets override a public variable of the same name.
        let mut secret_env = Vec::new();
        for (k, v) in &c.secret_env {
            let s = self
                .node
                .open_sealed(&format!("secret_env.{k}"), v)
                .map_err(|e| refused(e.to_string()))?;
            secret_env.push((k.clone(), s));
        }
        let env = c
            .env
            .iter()
            .filter(|(k, _)| !c.secret_env.contains_key(*k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();

        let entrypoint = if c.entrypoint.trim().is_empty() {
            None
        } else {
            let argv = shell_words::split(&c.entrypoint)
                .map_err(|e| refused(format!("entrypoint: cannot be shell-split: {e}")))?;
            (!argv.is_empty()).then_some(argv)
        };

        // Mounts: only the user's own volumes on this node.
        let mut mounts = Vec::new();
        let mut targets = BTreeSet::new();
        for (i, m) in c.mounts.iter().enumerate() {
            names::check_id(&format!("mounts[{i}].volume_id"), &m.volume_id)?;
            let target = normalize_mountpoint(&m.mountpoint)
                .map_err(|e| refused(format!("mounts[{i}].mountpoint: {e}")))?;
            if !targets.insert(target.clone()) {
                return Err(refused(format!(
                    "mounts[{i}].mountpoint: {target} is mounted twice"
                )));
            }
            let vname = self.names.volume_name(&m.volume_id);
            let v = self.docker.inspect_volume(&vname).await?;
            let owned = v.as_ref().is_some_and(|v| {
                label(&v.labels, LABEL_USER) == r.user_id
                    && label(&v.labels, LABEL_TYPE) == WorkloadType::Volume.as_str()
                    && label(&v.labels, LABEL_RESERVATION) == m.volume_id
            });
            if !owned {
                return Err(refused(format!(
                    "volume {} is not a volume of user {} on this node",
                    m.volume_id, r.user_id
                )));
            }
            if let Some(device) = v.as_ref().and_then(|v| v.driver_opts.get("device")) {
                crate::volume::ensure_device_mounted(device).await?;
            }
            mounts.push(VolumeMount {
                volume: vname,
                target,
            });
        }

        // Network.
        let network = if c.network.network_id.is_empty() {
            if !c.ports.is_empty() {
                return Err(refused(
                    "ports: publishing ports needs a network, but network.network_id is empty"
                        .into(),
                ));
            }
            if c.network.public_ip6 {
                return Err(refused(
                    "network.public_ip6: needs a network, but network.network_id is empty".into(),
                ));
            }
            ContainerNet::None
        } else {
            let nname = self.names.network_name(&r.user_id, &c.network.network_id);
            let n = self.docker.inspect_network(&nname).await?;
            let n = match n {
                Some(n)
                    if label(&n.labels, LABEL_USER) == r.user_id
                        && label(&n.labels, LABEL_TYPE) == WorkloadType::Network.as_str() =>
                {
                    n
                }
                _ => {
                    return Err(refused(format!(
                        "network {:?} is not a network of user {} on this node",
                        c.network.network_id, r.user_id
                    )))
                }
            };
            if c.network.public_ip6 {
                return Err(refused(
                    "network.public_ip6: this node has no public IPv6 to give".into(),
                ));
            }
            if c.network.ips.len() > 1 {
                return Err(refused(format!(
                    "network.ips: docker gives a container one address per network, {} given",
                    c.network.ips.len()
                )));
            }
            let ipv4 = c.network.ips.first().copied();
            if let Some(ip) = ipv4 {
                check_ip(ip, &c.network.network_id, &n.ipv4_subnets(), &n.gateways)?;
            }
            ContainerNet::Bridge {
                network: nname,
                ipv4,
            }
        };

        let mut seen = BTreeSet::new();
        let mut ports = Vec::new();
        let (low, high) = self.policy.host_ports;
        for (i, p) in c.ports.iter().enumerate() {
            if !(low..=high).contains(&p.host_port) {
                return Err(refused(format!(
                    "ports[{i}].host_port: {} is outside this node's host port range {low}-{high}",
                    p.host_port
                )));
            }
            let udp = p.protocol == PortProtocol::Udp;
            if !seen.insert((p.host_port, udp)) {
                return Err(refused(format!(
                    "ports[{i}]: host port {}/{} is published twice",
                    p.host_port,
                    p.protocol.as_str()
                )));
            }
            ports.push(PortSpec {
                container_port: p.container_port,
                host_port: p.host_port,
                udp,
            });
        }

        let image = self.image(c).await?;

        Ok(ContainerSpec {
            name: self.names.container_name(&r.id),
            image,
            env,
            secret_env,
            entrypoint,
            tty: c.interactive,
            open_stdin: c.interactive,
            nano_cpus: i64::from(c.capacity.cpu) * 1_000_000_000,
            memory,
            mounts,
            network,
            ports,
            restart_unless_stopped: true,
            labels: self.names.labels(r, WorkloadType::Container),
        })
    }

    /// The image reference, present locally (pulled if it was not).
    async fn image(&self, c: &Container) -> Result<String, ProvisionError> {
        let image = image_ref(&c.flist, &c.flist_storage)?;
        if self.docker.image_exists(&image).await? {
            return Ok(image);
        }
        tracing::info!(image = %image, "image not on this node; pulling it");
        match self.docker.pull_image(&image).await {
            Ok(()) if self.docker.image_exists(&image).await? => Ok(image),
            Ok(()) => Err(ProvisionError::Refused(format!(
                "image {image} is not on this node and the pull did not produce it"
            ))),
            Err(e) => Err(ProvisionError::Refused(format!(
                "image {image} is not on this node and cannot be pulled: {}",
                e.to_string().trim_start_matches("docker: ")
            ))),
        }
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

/// The refusal for a host port already taken: the field of the port
/// Docker names (`Bind for 0.0.0.0:30001 failed`, `listen tcp4
/// 0.0.0.0:30001: bind: ...`), else every published port, and nothing of
/// who holds it.
fn port_taken(ports: &[PortSpec], docker_msg: &str) -> String {
    let proto = |p: &PortSpec| if p.udp { "udp" } else { "tcp" };
    let named = ports.iter().enumerate().find(|(_, p)| {
        let h = p.host_port;
        docker_msg.contains(&format!(":{h} failed")) || docker_msg.contains(&format!(":{h}: bind"))
    });
    match named {
        Some((i, p)) => format!(
            "ports[{i}].host_port: {}/{} is already in use on this node",
            p.host_port,
            proto(p)
        ),
        None => {
            let all: Vec<String> = ports
                .iter()
                .map(|p| format!("{}/{}", p.host_port, proto(p)))
                .collect();
            format!(
                "ports: a host port of {} is already in use on this node",
                all.join(", ")
            )
        }
    }
}

/// `ip` must be a host address of the network's subnet, not its gateway.
fn check_ip(
    ip: Ipv4Addr,
    network: &str,
    subnets: &[ipnet::Ipv4Net],
    gateways: &[String],
) -> Result<(), ProvisionError> {
    let Some(sub) = subnets.iter().find(|s| s.contains(&ip)) else {
        let s: Vec<String> = subnets.iter().map(|s| s.to_string()).collect();
        return Err(ProvisionError::Refused(format!(
            "network.ips: {ip} is outside network {network:?}'s subnet {} on this node",
            s.join(", ")
        )));
    };
    if ip == sub.network() || ip == sub.broadcast() {
        return Err(ProvisionError::Refused(format!(
            "network.ips: {ip} is the network or broadcast address of {sub}"
        )));
    }
    if gateways.iter().any(|g| g == &ip.to_string()) {
        return Err(ProvisionError::Refused(format!(
            "network.ips: {ip} is the gateway of network {network:?}"
        )));
    }
    Ok(())
}

/// The Docker image reference of `flist`, pulled from `storage` when given.
/// Refuses what is not a plain image reference: it ends up in Docker URLs.
pub fn image_ref(flist: &str, storage: &str) -> Result<String, ProvisionError> {
    let bad = |why: &str| {
        ProvisionError::Refused(format!(
            "flist {:?} is not a container image reference: {why}",
            flist.chars().take(128).collect::<String>()
        ))
    };
    let flist = flist.trim();
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 255
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._-/:@".contains(&c))
            && !s.starts_with(['/', '.', '-', ':', '@'])
            && !s.split('/').any(|p| p.is_empty() || p == "." || p == "..")
    };
    if !valid(flist) {
        return Err(bad("use letters, digits and . _ - / : @"));
    }
    let storage = storage.trim();
    if storage.is_empty() {
        return Ok(flist.to_string());
    }
    let host = storage
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if !valid(host) || host.contains('/') || host.contains('@') {
        return Err(ProvisionError::Refused(format!(
            "flist_storage {:?} is not a registry host",
            storage.chars().take(128).collect::<String>()
        )));
    }
    // A first component with a '.' or ':' (or `localhost`) is a registry
    // host already: the storage replaces it.
    let path = match flist.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            rest
        }
        _ => flist,
    };
    Ok(format!("{host}/{path}"))
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

    fn watched_container(names: &Names, r: &Reservation) -> Option<String> {
        Some(names.container_name(&r.id))
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
                let grace = stop_grace_before_expiry(r, self.stop_grace, chrono::Utc::now());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs() {
        assert_eq!(image_ref("busybox", "").unwrap(), "busybox");
        assert_eq!(
            image_ref("a/b:1", "reg.io:5000").unwrap(),
            "reg.io:5000/a/b:1"
        );
        assert_eq!(
            image_ref("hub.grid.tf/a/b", "https://mirror.io/").unwrap(),
            "mirror.io/a/b"
        );
        assert_eq!(image_ref("localhost/a", "m.io").unwrap(), "m.io/a");
        for bad in [
            "",
            "../x",
            "a/../b",
            "a b",
            "a?x=1",
            "/abs",
            "a//b",
            "https://x/y",
        ] {
            let e = image_ref(bad, "").unwrap_err().to_string();
            assert!(e.starts_with("flist "), "{bad}: {e}");
        }
        assert!(image_ref("a", "x/y")
            .unwrap_err()
            .to_string()
            .contains("flist_storage"));
    }

    #[test]
    fn ips() {
        let sub: ipnet::Ipv4Net = "10.1.2.0/24".parse().unwrap();
        let gw = vec!["10.1.2.1".to_string()];
        assert!(check_ip("10.1.2.5".parse().unwrap(), "n", &[sub], &gw).is_ok());
        for (ip, want) in [
            ("10.1.3.5", "outside"),
            ("10.1.2.0", "network or broadcast"),
            ("10.1.2.255", "network or broadcast"),
            ("10.1.2.1", "gateway"),
        ] {
            let e = check_ip(ip.parse().unwrap(), "n", &[sub], &gw)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(want) && e.starts_with("network.ips: "),
                "{ip}: {e}"
            );
        }
    }
}
