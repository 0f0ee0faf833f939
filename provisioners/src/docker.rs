//! The narrow Docker seam ([`Docker`]) and its real implementation over
//! bollard ([`BollardDocker`]).
//!
//! Provisioners speak only this trait, with plain structs of this crate, so
//! the engine's unit tests can swap in the recording fake
//! (`crate::fake::FakeDocker`) and no bollard type leaks past this file.
//!
//! Conventions every implementation keeps:
//! - `inspect_*` answer `Ok(None)` for an object that does not exist;
//! - `remove_*` answer `Ok(false)` for an object already gone, and
//!   [`ProvisionError::InUse`] when Docker refuses because something still
//!   uses it (a volume mounted, a network with endpoints);
//! - every other failure is [`ProvisionError::Docker`] with Docker's message.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use ipnet::Ipv4Net;
use reservation::Secret;

use crate::ProvisionError;

/// Labels of a Docker object, sorted for stable output.
pub type Labels = BTreeMap<String, String>;

/// What the engine tells about itself (`/version` and `/info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerInfo {
    /// Engine version, e.g. `20.10.24`.
    pub version: String,
    /// API version the engine speaks (the client negotiated down to it).
    pub api_version: String,
    /// CPUs the engine can give containers.
    pub ncpu: u32,
    /// Memory of the host in bytes.
    pub mem_total: u64,
    /// Names of the OCI runtimes the engine knows (`runc`, `runsc`...).
    pub runtimes: Vec<String>,
}

/// A named Docker volume mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// Docker volume name.
    pub volume: String,
    /// Absolute, normalised path inside the container.
    pub target: String,
}

/// A published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    pub container_port: u16,
    pub host_port: u16,
    /// `tcp` or `udp`.
    pub udp: bool,
}

/// How a container is networked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerNet {
    /// Network mode `none`: loopback only.
    None,
    /// One user-defined bridge network, optionally with a static IPv4.
    Bridge {
        network: String,
        ipv4: Option<Ipv4Addr>,
    },
}

/// Everything needed to create one container. `Debug` is safe to log:
/// secret values are [`Secret`]s and print redacted.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// Public environment, `NAME=value`.
    pub env: Vec<String>,
    /// Opened secrets, passed to the container's environment only.
    pub secret_env: Vec<(String, Secret)>,
    /// Replaces the image's entrypoint (and with it the image's CMD);
    /// `None` keeps the image's.
    pub entrypoint: Option<Vec<String>>,
    pub tty: bool,
    pub open_stdin: bool,
    /// CPU limit in units of 10⁻⁹ CPUs.
    pub nano_cpus: i64,
    /// Memory limit in bytes.
    pub memory: i64,
    pub mounts: Vec<VolumeMount>,
    pub network: ContainerNet,
    pub ports: Vec<PortSpec>,
    /// Restart policy `unless-stopped` when true, `no` otherwise.
    pub restart_unless_stopped: bool,
    pub labels: Labels,
}

/// How a tenant's container is confined beyond its [`ContainerSpec`]:
/// what the container provisioner asks of every container a tenant
/// controls. `Default` confines nothing (Docker's own defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confinement {
    /// Most processes (threads included) the container may hold; `None`
    /// leaves Docker's default (unlimited).
    pub pids_limit: Option<i64>,
    /// Set `no-new-privileges`: set-uid binaries and file capabilities do
    /// not raise privileges inside the container.
    pub no_new_privileges: bool,
    /// Capabilities dropped from Docker's default set, e.g. `NET_RAW`.
    pub cap_drop: Vec<String>,
    /// OCI runtime of the container (e.g. `runsc`); `None`: the engine's
    /// default.
    pub runtime: Option<String>,
    /// Host address published ports are bound to; `None`: every address.
    pub port_address: Option<std::net::IpAddr>,
}

/// One network endpoint of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub ipv4: String,
    pub ipv6: String,
}

/// What provisioners need to know of an existing container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    /// Name without Docker's leading `/`.
    pub name: String,
    pub image: String,
    pub labels: Labels,
    /// Docker's state word: `created`, `running`, `restarting`, `exited`...
    pub state: String,
    /// Endpoints by network name.
    pub networks: BTreeMap<String, Endpoint>,
    /// Names of the Docker volumes it mounts.
    pub volumes: Vec<String>,
}

impl ContainerInfo {
    /// Running or being restarted by its restart policy.
    pub fn is_up(&self) -> bool {
        self.state == "running" || self.state == "restarting"
    }
}

/// Which containers to list (all states, stopped ones included). Every
/// given criterion must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFilter {
    /// `(key, value)` labels the container must carry.
    pub labels: Vec<(String, String)>,
    /// A Docker volume name it must mount.
    pub volume: Option<String>,
    /// A network name it must be attached to.
    pub network: Option<String>,
}

/// A Docker volume to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub name: String,
    /// Driver `local` with these options (`type`, `o`, `device`).
    pub driver_opts: BTreeMap<String, String>,
    pub labels: Labels,
}

/// An existing Docker volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub labels: Labels,
    pub driver_opts: BTreeMap<String, String>,
}

/// A bridge network to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub labels: Labels,
}

/// An existing Docker network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkInfo {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub labels: Labels,
    /// IPAM subnets as Docker reports them (IPv4 or IPv6 text).
    pub subnets: Vec<String>,
    /// IPAM gateways, when set.
    pub gateways: Vec<String>,
    /// Names of containers with a live endpoint (inspect only; empty in
    /// lists).
    pub containers: Vec<String>,
}

impl NetworkInfo {
    /// The IPv4 subnets among [`NetworkInfo::subnets`].
    pub fn ipv4_subnets(&self) -> Vec<Ipv4Net> {
        self.subnets.iter().filter_map(|s| s.parse().ok()).collect()
    }
}

/// The operations provisioners need from a Docker engine, and no more.
#[async_trait]
pub trait Docker: Send + Sync {
    /// Ping the engine and report its version and resources.
    async fn info(&self) -> Result<DockerInfo, ProvisionError>;

    /// Whether `image` (a reference, tag optional) is present locally.
    async fn image_exists(&self, image: &str) -> Result<bool, ProvisionError>;
    /// Pull `image` (tag `latest` when none is given), logging progress.
    async fn pull_image(&self, image: &str) -> Result<(), ProvisionError>;

    async fn inspect_container(&self, name: &str) -> Result<Option<ContainerInfo>, ProvisionError>;
    /// Create (not start) a container; returns its id.
    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, ProvisionError>;
    /// Create (not start) a tenant's container, confined by `confine`;
    /// returns its id.
    async fn create_confined_container(
        &self,
        spec: &ContainerSpec,
        confine: &Confinement,
    ) -> Result<String, ProvisionError>;
    async fn start_container(&self, name: &str) -> Result<(), ProvisionError>;
    /// Stop with SIGTERM, then SIGKILL after `grace`. Stopping a stopped or
    /// missing container succeeds.
    async fn stop_container(&self, name: &str, grace: Duration) -> Result<(), ProvisionError>;
    /// Remove a (stopped) container and its anonymous volumes.
    async fn remove_container(&self, name: &str) -> Result<bool, ProvisionError>;
    async fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<ContainerInfo>, ProvisionError>;
    /// The last `tail` lines of stdout and stderr.
    async fn container_logs(&self, name: &str, tail: usize) -> Result<String, ProvisionError>;

    async fn create_volume(&self, spec: &VolumeSpec) -> Result<(), ProvisionError>;
    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeInfo>, ProvisionError>;
    async fn remove_volume(&self, name: &str) -> Result<bool, ProvisionError>;
    /// Volumes carrying every `(key, value)` label.
    async fn list_volumes(
        &self,
        labels: &[(String, String)],
    ) -> Result<Vec<VolumeInfo>, ProvisionError>;

    /// Create a bridge network; returns its id.
    async fn create_network(&self, spec: &NetworkSpec) -> Result<String, ProvisionError>;
    async fn inspect_network(&self, name: &str) -> Result<Option<NetworkInfo>, ProvisionError>;
    async fn remove_network(&self, name: &str) -> Result<bool, ProvisionError>;
    /// Every network of the engine (Docker's own included).
    async fn list_networks(&self) -> Result<Vec<NetworkInfo>, ProvisionError>;
}

/// The containers matching `filter`, as `name (state), ...`, or `None` when
/// there are none: what an InUse refusal names.
pub async fn users_of(
    docker: &dyn Docker,
    filter: &ContainerFilter,
) -> Result<Option<String>, ProvisionError> {
    let users = docker.list_containers(filter).await?;
    Ok((!users.is_empty()).then(|| {
        users
            .iter()
            .map(|c| format!("{} ({})", c.name, c.state))
            .collect::<Vec<_>>()
            .join(", ")
    }))
}

/// Split an image reference into `(repository, tag)`, `latest` when there
/// is neither tag nor digest (Docker would otherwise pull every tag).
pub fn split_image_tag(image: &str) -> (String, String) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo.to_string(), digest.to_string());
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rfind(':') {
        Some(i) => {
            let cut = image.len() - last.len() + i;
            (image[..cut].to_string(), image[cut + 1..].to_string())
        }
        None => (image.to_string(), "latest".to_string()),
    }
}

/// [`Docker`] over bollard and the local engine.
#[derive(Clone)]
pub struct BollardDocker {
    client: bollard::Docker,
    /// Pull deadline, shared pulls and the record of pulled images.
    images: Arc<crate::images::ImagePolicy>,
}

type BErr = bollard::errors::Error;

fn status_of(e: &BErr) -> Option<u16> {
    match e {
        BErr::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Docker's own message, without bollard's wrapping.
fn msg_of(e: BErr) -> String {
    match e {
        BErr::DockerResponseServerError { message, .. } => message,
        BErr::DockerStreamError { error } => error,
        other => other.to_string(),
    }
}

fn derr(what: impl std::fmt::Display, e: BErr) -> ProvisionError {
    ProvisionError::Docker(format!("{what}: {}", msg_of(e)))
}

fn labels_of(m: Option<HashMap<String, String>>) -> Labels {
    m.unwrap_or_default().into_iter().collect()
}

fn label_filters(labels: &[(String, String)]) -> Vec<String> {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

impl BollardDocker {
    /// Connect to the local engine (`DOCKER_HOST` or the unix socket) and
    /// negotiate the API version down to what the engine speaks (bollard
    /// 0.18 defaults to 1.47; the engine here is 1.41).
    pub async fn connect() -> Result<Self, ProvisionError> {
        let client = bollard::Docker::connect_with_local_defaults()
            .map_err(|e| ProvisionError::Docker(format!("cannot reach the docker engine: {e}")))?
            // Pulls of large images and stops with a grace period take long.
            .with_timeout(Duration::from_secs(600));
        let client = client.negotiate_version().await.map_err(|e| {
            ProvisionError::Docker(format!("cannot negotiate the docker API version: {e}"))
        })?;
        Ok(Self {
            client,
            images: Arc::default(),
        })
    }

    /// Pull with this policy (deadline, record file for garbage collection).
    pub fn with_image_policy(mut self, policy: crate::images::ImagePolicy) -> Self {
        self.images = Arc::new(policy);
        self
    }

    /// The image policy, for garbage collection.
    pub fn image_policy(&self) -> &crate::images::ImagePolicy {
        &self.images
    }

    /// Images any container (ours or not, any state) was created from.
    pub async fn images_in_use(&self) -> Result<std::collections::HashSet<String>, ProvisionError> {
        use bollard::container::ListContainersOptions;
        let list = self
            .client
            .list_containers(Some(ListContainersOptions::<String> {
                all: true,
                ..Default::default()
            }))
            .await
            .map_err(|e| derr(format_args!("list containers"), e))?;
        let mut used = std::collections::HashSet::new();
        for c in list {
            used.extend(c.image);
            used.extend(c.image_id);
        }
        Ok(used)
    }

    /// Remove image `image`; an image already gone is fine.
    pub async fn remove_image(&self, image: &str) -> Result<(), ProvisionError> {
        match self.client.remove_image(image, None, None).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(derr(format_args!("remove image {image}"), e)),
        }
    }

    async fn pull_now(&self, image: &str) -> Result<(), ProvisionError> {
        use bollard::image::CreateImageOptions;
        let (repo, tag) = split_image_tag(image);
        let opts = CreateImageOptions {
            from_image: repo,
            tag,
            ..Default::default()
        };
        tracing::info!(image, "pulling image");
        let mut stream = self.client.create_image(Some(opts), None, None);
        // Log each layer's status when it changes, not every progress tick.
        let mut last: HashMap<String, String> = HashMap::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| derr(format_args!("pull image {image}"), e))?;
            let layer = info.id.clone().unwrap_or_default();
            let status = info.status.clone().unwrap_or_default();
            if last.get(&layer) != Some(&status) {
                tracing::info!(image, layer = %layer, status = %status, "pull progress");
                last.insert(layer, status);
            } else if let Some(p) = &info.progress {
                tracing::debug!(image, layer = %layer, progress = %p, "pull progress");
            }
        }
        tracing::info!(image, "image pulled");
        Ok(())
    }

    /// Wrap an already configured client.
    pub fn from_client(client: bollard::Docker) -> Self {
        Self {
            client,
            images: Arc::default(),
        }
    }

    /// The bollard client (for callers outside the seam, like tests).
    pub fn client(&self) -> &bollard::Docker {
        &self.client
    }
}

fn container_info(c: bollard::models::ContainerInspectResponse) -> ContainerInfo {
    let labels = labels_of(c.config.as_ref().and_then(|c| c.labels.clone()));
    let image = c
        .config
        .as_ref()
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let state = c
        .state
        .as_ref()
        .and_then(|s| s.status)
        .map(|s| s.to_string())
        .unwrap_or_default();
    let networks = c
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, e)| {
            (
                k,
                Endpoint {
                    ipv4: e.ip_address.unwrap_or_default(),
                    ipv6: e.global_ipv6_address.unwrap_or_default(),
                },
            )
        })
        .collect();
    let volumes = c
        .mounts
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.typ == Some(bollard::models::MountPointTypeEnum::VOLUME))
        .filter_map(|m| m.name)
        .collect();
    ContainerInfo {
        id: c.id.unwrap_or_default(),
        name: c
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image,
        labels,
        state,
        networks,
        volumes,
    }
}

fn network_info(n: bollard::models::Network) -> NetworkInfo {
    let cfg = n.ipam.and_then(|i| i.config).unwrap_or_default();
    NetworkInfo {
        id: n.id.unwrap_or_default(),
        name: n.name.unwrap_or_default(),
        driver: n.driver.unwrap_or_default(),
        labels: labels_of(n.labels),
        subnets: cfg.iter().filter_map(|c| c.subnet.clone()).collect(),
        gateways: cfg.iter().filter_map(|c| c.gateway.clone()).collect(),
        containers: n
            .containers
            .unwrap_or_default()
            .into_values()
            .filter_map(|c| c.name)
            .collect(),
    }
}

fn volume_info(v: bollard::models::Volume) -> VolumeInfo {
    VolumeInfo {
        name: v.name,
        labels: v.labels.into_iter().collect(),
        driver_opts: v.options.into_iter().collect(),
    }
}

#[async_trait]
impl Docker for BollardDocker {
    async fn info(&self) -> Result<DockerInfo, ProvisionError> {
        self.client.ping().await.map_err(|e| derr("ping", e))?;
        let v = self
            .client
            .version()
            .await
            .map_err(|e| derr("version", e))?;
        let i = self.client.info().await.map_err(|e| derr("info", e))?;
        let mut runtimes: Vec<String> = i.runtimes.unwrap_or_default().into_keys().collect();
        runtimes.sort();
        Ok(DockerInfo {
            version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
            ncpu: i.ncpu.unwrap_or(0).max(0) as u32,
            mem_total: i.mem_total.unwrap_or(0).max(0) as u64,
            runtimes,
        })
    }

    async fn image_exists(&self, image: &str) -> Result<bool, ProvisionError> {
        match self.client.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(derr(format_args!("inspect image {image}"), e)),
        }
    }

    async fn pull_image(&self, image: &str) -> Result<(), ProvisionError> {
        let policy = self.images.clone();
        policy.pull(image, || self.pull_now(image)).await
    }

    async fn inspect_container(&self, name: &str) -> Result<Option<ContainerInfo>, ProvisionError> {
        match self.client.inspect_container(name, None).await {
            Ok(c) => Ok(Some(container_info(c))),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(derr(format_args!("inspect container {name}"), e)),
        }
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, ProvisionError> {
        // One body for all: plain containers are containers with no extras.
        self.create_container_with(spec, &ContainerExtras::default())
            .await
    }

    async fn create_confined_container(
        &self,
        spec: &ContainerSpec,
        confine: &Confinement,
    ) -> Result<String, ProvisionError> {
        self.create_full(spec, &ContainerExtras::default(), confine)
            .await
    }

    async fn start_container(&self, name: &str) -> Result<(), ProvisionError> {
        match self.client.start_container::<String>(name, None).await {
            // 304: already started.
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) => Err(derr(format_args!("start container {name}"), e)),
        }
    }

    async fn stop_container(&self, name: &str, grace: Duration) -> Result<(), ProvisionError> {
        use bollard::container::StopContainerOptions;
        let opts = StopContainerOptions {
            t: grace.as_secs() as i64,
        };
        match self.client.stop_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status_of(&e), Some(304) | Some(404)) => Ok(()),
            Err(e) => Err(derr(format_args!("stop container {name}"), e)),
        }
    }

    async fn remove_container(&self, name: &str) -> Result<bool, ProvisionError> {
        use bollard::container::RemoveContainerOptions;
        let opts = RemoveContainerOptions {
            v: true,
            force: true,
            link: false,
        };
        match self.client.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) if status_of(&e) == Some(409) => Err(ProvisionError::InUse(format!(
                "container {name} cannot be removed yet: {}",
                msg_of(e)
            ))),
            Err(e) => Err(derr(format_args!("remove container {name}"), e)),
        }
    }

    async fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<ContainerInfo>, ProvisionError> {
        use bollard::container::ListContainersOptions;
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        if !filter.labels.is_empty() {
            filters.insert("label".into(), label_filters(&filter.labels));
        }
        if let Some(v) = &filter.volume {
            filters.insert("volume".into(), vec![v.clone()]);
        }
        if let Some(n) = &filter.network {
            filters.insert("network".into(), vec![n.clone()]);
        }
        let opts = ListContainersOptions {
            all: true,
            filters,
            ..Default::default()
        };
        let list = self
            .client
            .list_containers(Some(opts))
            .await
            .map_err(|e| derr("list containers", e))?;
        Ok(list
            .into_iter()
            .map(|c| ContainerInfo {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .unwrap_or_default()
                    .first()
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                labels: labels_of(c.labels),
                state: c.state.unwrap_or_default(),
                networks: c
                    .network_settings
                    .and_then(|n| n.networks)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, e)| {
                        (
                            k,
                            Endpoint {
                                ipv4: e.ip_address.unwrap_or_default(),
                                ipv6: e.global_ipv6_address.unwrap_or_default(),
                            },
                        )
                    })
                    .collect(),
                volumes: c
                    .mounts
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|m| m.typ == Some(bollard::models::MountPointTypeEnum::VOLUME))
                    .filter_map(|m| m.name)
                    .collect(),
            })
            .collect())
    }

    async fn container_logs(&self, name: &str, tail: usize) -> Result<String, ProvisionError> {
        use bollard::container::LogsOptions;
        let opts = LogsOptions::<String> {
            stdout: true,
            stderr: true,
            tail: tail.to_string(),
            ..Default::default()
        };
        let mut out = String::new();
        let mut s = self.client.logs(name, Some(opts));
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|e| derr(format_args!("logs of container {name}"), e))?;
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        Ok(out)
    }

    async fn create_volume(&self, spec: &VolumeSpec) -> Result<(), ProvisionError> {
        use bollard::volume::CreateVolumeOptions;
        let opts = CreateVolumeOptions {
            name: spec.name.clone(),
            driver: "local".to_string(),
            driver_opts: spec.driver_opts.clone().into_iter().collect(),
            labels: spec.labels.clone().into_iter().collect(),
        };
        self.client
            .create_volume(opts)
            .await
            .map_err(|e| derr(format_args!("create volume {}", spec.name), e))?;
        Ok(())
    }

    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeInfo>, ProvisionError> {
        match self.client.inspect_volume(name).await {
            Ok(v) => Ok(Some(volume_info(v))),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(derr(format_args!("inspect volume {name}"), e)),
        }
    }

    async fn remove_volume(&self, name: &str) -> Result<bool, ProvisionError> {
        use bollard::volume::RemoveVolumeOptions;
        match self
            .client
            .remove_volume(name, Some(RemoveVolumeOptions { force: false }))
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) if status_of(&e) == Some(409) => Err(ProvisionError::InUse(format!(
                "docker volume {name} is in use: {}",
                msg_of(e)
            ))),
            Err(e) => Err(derr(format_args!("remove volume {name}"), e)),
        }
    }

    async fn list_volumes(
        &self,
        labels: &[(String, String)],
    ) -> Result<Vec<VolumeInfo>, ProvisionError> {
        use bollard::volume::ListVolumesOptions;
        let mut filters = HashMap::new();
        if !labels.is_empty() {
            filters.insert("label".to_string(), label_filters(labels));
        }
        let r = self
            .client
            .list_volumes(Some(ListVolumesOptions { filters }))
            .await
            .map_err(|e| derr("list volumes", e))?;
        Ok(r.volumes
            .unwrap_or_default()
            .into_iter()
            .map(volume_info)
            .collect())
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<String, ProvisionError> {
        use bollard::models::{Ipam, IpamConfig};
        use bollard::network::CreateNetworkOptions;
        let opts = CreateNetworkOptions {
            name: spec.name.clone(),
            check_duplicate: true,
            driver: "bridge".to_string(),
            internal: false,
            attachable: false,
            ingress: false,
            ipam: Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(spec.subnet.to_string()),
                    gateway: Some(spec.gateway.to_string()),
                    ..Default::default()
                }]),
                options: None,
            },
            enable_ipv6: false,
            options: HashMap::new(),
            labels: spec.labels.clone().into_iter().collect(),
        };
        let r = self
            .client
            .create_network(opts)
            .await
            .map_err(|e| derr(format_args!("create network {}", spec.name), e))?;
        Ok(r.id)
    }

    async fn inspect_network(&self, name: &str) -> Result<Option<NetworkInfo>, ProvisionError> {
        use bollard::network::InspectNetworkOptions;
        match self
            .client
            .inspect_network(name, None::<InspectNetworkOptions<String>>)
            .await
        {
            // Docker matches ids by prefix too; only an exact name counts.
            Ok(n) if n.name.as_deref() == Some(name) => Ok(Some(network_info(n))),
            Ok(_) => Ok(None),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(derr(format_args!("inspect network {name}"), e)),
        }
    }

    async fn remove_network(&self, name: &str) -> Result<bool, ProvisionError> {
        match self.client.remove_network(name).await {
            Ok(()) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            // 20.10 answers 403 "has active endpoints".
            Err(e) if matches!(status_of(&e), Some(403) | Some(409)) => Err(ProvisionError::InUse(
                format!("docker network {name} is in use: {}", msg_of(e)),
            )),
            Err(e) => Err(derr(format_args!("remove network {name}"), e)),
        }
    }

    async fn list_networks(&self) -> Result<Vec<NetworkInfo>, ProvisionError> {
        use bollard::network::ListNetworksOptions;
        let list = self
            .client
            .list_networks(None::<ListNetworksOptions<String>>)
            .await
            .map_err(|e| derr("list networks", e))?;
        Ok(list.into_iter().map(network_info).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags() {
        let t = |s: &str| split_image_tag(s);
        assert_eq!(t("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(t("a/b:1.2"), ("a/b".into(), "1.2".into()));
        assert_eq!(
            t("reg.io:5000/a/b"),
            ("reg.io:5000/a/b".into(), "latest".into())
        );
        assert_eq!(
            t("reg.io:5000/a/b:v1"),
            ("reg.io:5000/a/b".into(), "v1".into())
        );
        assert_eq!(t("a@sha256:ab"), ("a".into(), "sha256:ab".into()));
    }
}

// ===========================================================================
// Additions for the kubernetes provisioner (added by the zdb/kubernetes
// work, kept apart from the seam above): privileged containers that keep
// their image's entrypoint and get a command, and files written into a
// container. `create_container_with` handles every `ContainerSpec` field as
// `create_container` does, plus the extras; `create_container` could
// delegate to it with `ContainerExtras::default()`.
// ===========================================================================

/// Container options beyond [`ContainerSpec`] that a k3s node needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerExtras {
    /// Replaces the image's CMD and keeps its entrypoint (`None`: keep the
    /// image's CMD). Ignored when the spec replaces the entrypoint.
    pub cmd: Option<Vec<String>>,
    /// Run privileged (k3s manages cgroups, mounts and iptables itself).
    pub privileged: bool,
    /// tmpfs mounts: container path → mount options (`""` for defaults).
    pub tmpfs: BTreeMap<String, String>,
    /// OCI runtime registered with the engine (`HostConfig.Runtime`), e.g.
    /// an isolating one such as `kata` or `sysbox-runc`; `None`: the
    /// engine's default.
    pub runtime: Option<String>,
}

/// A file written into a container by [`DockerExtras::upload_files`].
#[derive(Clone, PartialEq, Eq)]
pub struct FileUpload {
    /// Absolute path inside the container.
    pub path: String,
    /// Permission bits, e.g. `0o600`.
    pub mode: u32,
    pub content: Vec<u8>,
}

impl std::fmt::Debug for FileUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FileUpload({}, {:o}, {} bytes)",
            self.path,
            self.mode,
            self.content.len()
        )
    }
}

/// Operations beyond [`Docker`] for the kubernetes provisioner.
#[async_trait]
pub trait DockerExtras: Docker {
    /// Create (not start) a container with `extras`; returns its id.
    async fn create_container_with(
        &self,
        spec: &ContainerSpec,
        extras: &ContainerExtras,
    ) -> Result<String, ProvisionError>;

    /// Write `files` into container `name` (created or running), owned by
    /// root. Missing parent directories are created with mode 0700.
    async fn upload_files(&self, name: &str, files: &[FileUpload]) -> Result<(), ProvisionError>;
}

/// A tar archive (extracted at `/`) holding `files` and their parents.
pub fn tar_of(files: &[FileUpload]) -> Result<Vec<u8>, ProvisionError> {
    let bad = |e: std::io::Error| ProvisionError::Node(format!("cannot build a tar archive: {e}"));
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    for f in files {
        let rel = f.path.trim_start_matches('/');
        if rel.is_empty()
            || !f.path.starts_with('/')
            || rel
                .split('/')
                .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(ProvisionError::Node(format!(
                "cannot upload to {:?}: not a clean absolute file path",
                f.path
            )));
        }
        let parts: Vec<&str> = rel.split('/').collect();
        for i in 1..parts.len() {
            let dir = format!("{}/", parts[..i].join("/"));
            if dirs.insert(dir.clone()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o700);
                h.set_size(0);
                h.set_mtime(0);
                b.append_data(&mut h, &dir, std::io::empty()).map_err(bad)?;
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(f.mode);
        h.set_size(f.content.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, rel, f.content.as_slice())
            .map_err(bad)?;
    }
    b.into_inner().map_err(bad)
}

#[async_trait]
impl DockerExtras for BollardDocker {
    async fn create_container_with(
        &self,
        spec: &ContainerSpec,
        extras: &ContainerExtras,
    ) -> Result<String, ProvisionError> {
        self.create_full(spec, extras, &Confinement::default())
            .await
    }

    async fn upload_files(&self, name: &str, files: &[FileUpload]) -> Result<(), ProvisionError> {
        use bollard::container::UploadToContainerOptions;
        let archive = tar_of(files)?;
        let opts = UploadToContainerOptions {
            path: "/".to_string(),
            no_overwrite_dir_non_dir: "true".to_string(),
        };
        self.client
            .upload_to_container(name, Some(opts), archive.into())
            .await
            .map_err(|e| derr(format_args!("upload files into container {name}"), e))
    }
}

impl BollardDocker {
    /// The one create body: `spec`, plus `extras` (k3s) and `confine`
    /// (tenant containers).
    async fn create_full(
        &self,
        spec: &ContainerSpec,
        extras: &ContainerExtras,
        confine: &Confinement,
    ) -> Result<String, ProvisionError> {
        use bollard::container::{Config, CreateContainerOptions, NetworkingConfig};
        use bollard::models::{
            EndpointIpamConfig, EndpointSettings, HostConfig, Mount, MountTypeEnum, PortBinding,
            RestartPolicy, RestartPolicyNameEnum,
        };

        let mut env = spec.env.clone();
        env.extend(
            spec.secret_env
                .iter()
                .map(|(k, v)| format!("{k}={}", v.expose())),
        );
        let mounts = spec
            .mounts
            .iter()
            .map(|m| Mount {
                typ: Some(MountTypeEnum::VOLUME),
                source: Some(m.volume.clone()),
                target: Some(m.target.clone()),
                ..Default::default()
            })
            .collect();
        let mut exposed = HashMap::new();
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for p in &spec.ports {
            let key = format!("{}/{}", p.container_port, if p.udp { "udp" } else { "tcp" });
            exposed.insert(key.clone(), HashMap::new());
            bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: confine.port_address.map(|a| a.to_string()),
                    host_port: Some(p.host_port.to_string()),
                });
        }
        let (network_mode, networking) = match &spec.network {
            ContainerNet::None => ("none".to_string(), None),
            ContainerNet::Bridge { network, ipv4 } => {
                let ep = EndpointSettings {
                    ipam_config: ipv4.map(|ip| EndpointIpamConfig {
                        ipv4_address: Some(ip.to_string()),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                (
                    network.clone(),
                    Some(NetworkingConfig {
                        endpoints_config: HashMap::from([(network.clone(), ep)]),
                    }),
                )
            }
        };
        let host = HostConfig {
            nano_cpus: Some(spec.nano_cpus),
            memory: Some(spec.memory),
            mounts: Some(mounts),
            network_mode: Some(network_mode),
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            restart_policy: Some(RestartPolicy {
                name: Some(if spec.restart_unless_stopped {
                    RestartPolicyNameEnum::UNLESS_STOPPED
                } else {
                    RestartPolicyNameEnum::NO
                }),
                maximum_retry_count: None,
            }),
            privileged: Some(extras.privileged),
            pids_limit: confine.pids_limit,
            security_opt: confine
                .no_new_privileges
                .then(|| vec!["no-new-privileges:true".to_string()]),
            cap_drop: (!confine.cap_drop.is_empty()).then(|| confine.cap_drop.clone()),
            // The operator's tenant runtime, else the extras' own.
            runtime: confine.runtime.clone().or_else(|| extras.runtime.clone()),
            tmpfs: (!extras.tmpfs.is_empty()).then(|| extras.tmpfs.clone().into_iter().collect()),
            ..Default::default()
        };
        let config = Config {
            image: Some(spec.image.clone()),
            env: Some(env),
            entrypoint: spec.entrypoint.clone(),
            cmd: if spec.entrypoint.is_none() {
                extras.cmd.clone()
            } else {
                None
            },
            tty: Some(spec.tty),
            open_stdin: Some(spec.open_stdin),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            labels: Some(spec.labels.clone().into_iter().collect()),
            host_config: Some(host),
            networking_config: networking,
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: spec.name.clone(),
            platform: None,
        };
        let r = self
            .client
            .create_container(Some(opts), config)
            .await
            .map_err(|e| derr(format_args!("create container {}", spec.name), e))?;
        Ok(r.id)
    }
}

/// The fake creates the container from the spec alone (extras are not
/// modelled) and accepts uploads into containers it knows.
#[cfg(any(test, feature = "fake"))]
#[async_trait]
impl DockerExtras for crate::fake::FakeDocker {
    async fn create_container_with(
        &self,
        spec: &ContainerSpec,
        _extras: &ContainerExtras,
    ) -> Result<String, ProvisionError> {
        self.create_container(spec).await
    }

    async fn upload_files(&self, name: &str, files: &[FileUpload]) -> Result<(), ProvisionError> {
        tar_of(files)?;
        match self.inspect_container(name).await? {
            Some(_) => Ok(()),
            None => Err(ProvisionError::Docker(format!("no such container: {name}"))),
        }
    }
}

// ===========================================================================
// Additions for the crash policy (agent/src/crash.rs), kept apart from the
// seam above like the kubernetes block: how many times a container was
// restarted by its restart policy and how its last run ended. Docker's
// `RestartCount` grows when the engine decides to restart an exited
// container, so "restarts + (exited now ? 1 : 0)" counts its exits.
// `ContainerInfo` and `Docker` are unchanged.
// ===========================================================================

/// How a container has been running (from `docker inspect`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerRuns {
    /// Docker's state word: `running`, `restarting`, `exited`...
    pub state: String,
    /// Restarts by its restart policy since it was created.
    pub restart_count: u64,
    /// Exit code of its last run (0 if it never exited).
    pub exit_code: i64,
    /// When its last run ended (RFC 3339); `None` if it never exited.
    pub finished_at: Option<String>,
    /// Its last run was killed by the kernel's OOM killer.
    pub oom_killed: bool,
}

impl ContainerRuns {
    /// Times it exited: every restart followed an exit, and an `exited` or
    /// `dead` container has one exit not (yet) followed by a restart.
    pub fn exits(&self) -> u64 {
        let down_now = matches!(self.state.as_str(), "exited" | "dead");
        self.restart_count + down_now as u64
    }
}

/// Restart bookkeeping beyond [`Docker`], for the crash policy.
#[async_trait]
pub trait DockerRuns: Docker {
    /// How container `name` has been running; `Ok(None)` if it does not
    /// exist.
    async fn container_runs(&self, name: &str) -> Result<Option<ContainerRuns>, ProvisionError>;
}

#[async_trait]
impl DockerRuns for BollardDocker {
    async fn container_runs(&self, name: &str) -> Result<Option<ContainerRuns>, ProvisionError> {
        let c = match self.client.inspect_container(name, None).await {
            Ok(c) => c,
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(derr(format_args!("inspect container {name}"), e)),
        };
        let st = c.state.unwrap_or_default();
        Ok(Some(ContainerRuns {
            state: st.status.map(|s| s.to_string()).unwrap_or_default(),
            restart_count: c.restart_count.unwrap_or(0).max(0) as u64,
            exit_code: st.exit_code.unwrap_or(0),
            // Docker answers the zero time for a container that never
            // exited.
            finished_at: st
                .finished_at
                .filter(|t| !t.is_empty() && !t.starts_with("0001-01-01")),
            oom_killed: st.oom_killed.unwrap_or(false),
        }))
    }
}

/// The fake answers from the container's own state plus the restart count
/// and exit code a test sets with [`crate::fake::FakeDocker::set_runs`]
/// (kept in a side table, keyed by the fake's `Arc`, since the fake's state
/// lives in fake.rs).
#[cfg(any(test, feature = "fake"))]
mod fake_runs {
    use std::sync::{Arc, Mutex, Weak};

    use async_trait::async_trait;

    use super::{ContainerRuns, Docker, DockerRuns};
    use crate::fake::FakeDocker;
    use crate::ProvisionError;

    type Entry = (Weak<FakeDocker>, String, u64, i64);

    /// A `Weak` keeps the fake's allocation (not its value) alive, so no
    /// later fake can reuse the address of a dropped one.
    static RUNS: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

    fn table() -> std::sync::MutexGuard<'static, Vec<Entry>> {
        RUNS.lock().unwrap_or_else(|p| p.into_inner())
    }

    impl FakeDocker {
        /// Make `container_runs(name)` report `restart_count` restarts and
        /// `exit_code` for the last run (state stays the container's own:
        /// see `set_state`).
        pub fn set_runs(self: &Arc<Self>, name: &str, restart_count: u64, exit_code: i64) {
            let mut t = table();
            t.retain(|(w, n, _, _)| {
                w.strong_count() > 0 && !(std::ptr::eq(w.as_ptr(), Arc::as_ptr(self)) && n == name)
            });
            t.push((
                Arc::downgrade(self),
                name.to_string(),
                restart_count,
                exit_code,
            ));
        }
    }

    #[async_trait]
    impl DockerRuns for FakeDocker {
        async fn container_runs(
            &self,
            name: &str,
        ) -> Result<Option<ContainerRuns>, ProvisionError> {
            let Some(info) = self.inspect_container(name).await? else {
                return Ok(None);
            };
            let (restart_count, exit_code) = table()
                .iter()
                .find(|(w, n, _, _)| {
                    std::ptr::eq(w.as_ptr(), self as *const FakeDocker) && n == name
                })
                .map(|(_, _, r, e)| (*r, *e))
                .unwrap_or((0, 0));
            Ok(Some(ContainerRuns {
                state: info.state,
                restart_count,
                exit_code,
                finished_at: None,
                oom_killed: false,
            }))
        }
    }
}

// ---------------------------------------------------------------------------
// Log streaming, for `agentctl logs ID --follow`.

/// A stream of log text chunks.
pub type LogStream = futures_util::stream::BoxStream<'static, Result<String, ProvisionError>>;

/// Container logs as a stream, beyond [`Docker`]'s tail.
#[async_trait]
pub trait DockerLogs: Docker {
    /// The last `tail` lines of container `name`, then (with `follow`)
    /// every new line until the container stops or the stream is dropped.
    async fn stream_logs(
        &self,
        name: &str,
        tail: usize,
        follow: bool,
    ) -> Result<LogStream, ProvisionError>;
}

#[async_trait]
impl DockerLogs for BollardDocker {
    async fn stream_logs(
        &self,
        name: &str,
        tail: usize,
        follow: bool,
    ) -> Result<LogStream, ProvisionError> {
        use bollard::container::LogsOptions;
        if self.inspect_container(name).await?.is_none() {
            return Err(ProvisionError::Refused(format!(
                "container {name} does not exist"
            )));
        }
        let opts = LogsOptions::<String> {
            stdout: true,
            stderr: true,
            follow,
            tail: tail.to_string(),
            ..Default::default()
        };
        let name = name.to_string();
        let s = self
            .client
            .logs(&name.clone(), Some(opts))
            .map(move |chunk| {
                chunk
                    .map(|c| String::from_utf8_lossy(&c.into_bytes()).into_owned())
                    .map_err(|e| derr(format_args!("logs of container {name}"), e))
            });
        Ok(Box::pin(s))
    }
}
