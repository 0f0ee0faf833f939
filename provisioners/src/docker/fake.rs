//! [`FakeDocker`]: an in-memory implementation of the whole [`Docker`]
//! seam that records every call, for unit tests of logic (the engine's,
//! the provisioners', the crash watch's). Integration tests use the real
//! engine through [`super::BollardDocker`].
//!
//! It keeps containers, volumes, networks and images in maps and follows
//! the seam's conventions (inspect → `None` when missing, remove → `false`
//! when gone, `InUse` when Docker would refuse). Calls are recorded as
//! `"<operation> <name>"` strings, e.g. `"create_container agent-ct-12-1"`.
//! What a real engine would report of a container's past (restarts, exit
//! code, log text) is set by the test: [`FakeDocker::set_runs`],
//! [`FakeDocker::set_logs`]. Container extras (k3s) are not modelled: such
//! a container is created from its spec alone.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    tar_of, Confinement, ContainerExtras, ContainerFilter, ContainerInfo, ContainerNet,
    ContainerRuns, ContainerSpec, Docker, DockerError, DockerInfo, Endpoint, FileUpload, LogStream,
    NetworkInfo, NetworkSpec, VolumeInfo, VolumeSpec,
};

#[derive(Default)]
struct State {
    calls: Vec<String>,
    images: BTreeSet<String>,
    pullable: BTreeSet<String>,
    containers: BTreeMap<String, (ContainerSpec, ContainerInfo)>,
    /// How each container made by `create_confined_container` is confined.
    confinements: BTreeMap<String, Confinement>,
    volumes: BTreeMap<String, VolumeInfo>,
    networks: BTreeMap<String, (NetworkSpec, NetworkInfo)>,
    failures: BTreeMap<String, String>,
    /// The stop timeout of the last stop of each container.
    stop_graces: BTreeMap<String, Duration>,
    /// How long pulling an image takes, from `delay_pull`.
    pull_delays: BTreeMap<String, Duration>,
    /// `(restart count, last exit code)` by container, from `set_runs`.
    runs: BTreeMap<String, (u64, i64)>,
    /// Log text by container, from `set_logs`.
    logs: BTreeMap<String, String>,
    next_id: u64,
}

/// The recording fake. Cheap to share as `Arc<FakeDocker>` (coerces to
/// `Arc<dyn Docker>`).
#[derive(Default)]
pub struct FakeDocker {
    state: Mutex<State>,
}

impl FakeDocker {
    pub fn new() -> Self {
        Self::default()
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make `image` present locally.
    pub fn add_image(&self, image: &str) {
        self.st().images.insert(normal(image));
    }

    /// Let `image` be pulled (pulling anything else fails).
    pub fn allow_pull(&self, image: &str) {
        self.st().pullable.insert(normal(image));
    }

    /// The stop timeout the last stop of container `name` was given.
    pub fn stop_grace(&self, name: &str) -> Option<Duration> {
        self.st().stop_graces.get(name).copied()
    }

    /// Make pulling `image` take `d` (a slow registry).
    pub fn delay_pull(&self, image: &str, d: Duration) {
        self.st().pull_delays.insert(normal(image), d);
    }

    /// Make the next call of operation `op` (e.g. `"start_container"`)
    /// fail with `DockerError::Other(message)` (a `DockerError::Docker`
    /// to provisioners).
    pub fn fail_next(&self, op: &str, message: &str) {
        self.st()
            .failures
            .insert(op.to_string(), message.to_string());
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.st().calls.clone()
    }

    /// How many calls of operation `op` were made.
    pub fn count(&self, op: &str) -> usize {
        self.st()
            .calls
            .iter()
            .filter(|c| c.split(' ').next() == Some(op))
            .count()
    }

    /// The spec container `name` was created with.
    pub fn container_spec(&self, name: &str) -> Option<ContainerSpec> {
        self.st().containers.get(name).map(|(s, _)| s.clone())
    }

    /// How container `name` was confined (`None`: it was created without
    /// `create_confined_container`, or does not exist).
    pub fn container_confinement(&self, name: &str) -> Option<Confinement> {
        let st = self.st();
        st.containers
            .contains_key(name)
            .then(|| st.confinements.get(name).cloned())
            .flatten()
    }

    /// Add a container behind the provisioner's back (`docker run` by
    /// hand), with these labels.
    pub fn add_foreign_container(&self, name: &str, labels: super::Labels) {
        let mut st = self.st();
        st.next_id += 1;
        let info = ContainerInfo {
            id: format!("{:064x}", st.next_id),
            name: name.to_string(),
            image: "foreign".into(),
            labels: labels.clone(),
            state: "running".into(),
            ..Default::default()
        };
        let spec = ContainerSpec {
            name: name.to_string(),
            image: "foreign".into(),
            env: Vec::new(),
            secret_env: Vec::new(),
            entrypoint: None,
            tty: false,
            open_stdin: false,
            nano_cpus: 0,
            memory: 0,
            mounts: Vec::new(),
            network: ContainerNet::None,
            ports: Vec::new(),
            restart_unless_stopped: false,
            labels,
        };
        st.containers.insert(name.to_string(), (spec, info));
    }

    /// Names of existing containers, volumes and networks.
    pub fn container_names(&self) -> Vec<String> {
        self.st().containers.keys().cloned().collect()
    }
    pub fn volume_names(&self) -> Vec<String> {
        self.st().volumes.keys().cloned().collect()
    }
    pub fn network_names(&self) -> Vec<String> {
        self.st().networks.keys().cloned().collect()
    }

    /// Set a container's state word (`"exited"`...), as if it stopped.
    pub fn set_state(&self, name: &str, state: &str) {
        if let Some((_, c)) = self.st().containers.get_mut(name) {
            c.state = state.to_string();
        }
    }

    /// Make `container_runs(name)` report `restart_count` restarts and
    /// `exit_code` for the last run (state stays the container's own:
    /// see `set_state`).
    pub fn set_runs(&self, name: &str, restart_count: u64, exit_code: i64) {
        self.st()
            .runs
            .insert(name.to_string(), (restart_count, exit_code));
    }

    /// Make container `name`'s logs (tail and stream) read `text`.
    pub fn set_logs(&self, name: &str, text: &str) {
        self.st().logs.insert(name.to_string(), text.to_string());
    }

    /// Remove an object behind the provisioner's back (`docker rm -f`).
    pub fn vanish(&self, name: &str) {
        let mut st = self.st();
        st.containers.remove(name);
        st.volumes.remove(name);
        st.networks.remove(name);
    }

    /// Add a foreign network (Docker's own bridge, say).
    pub fn add_network(&self, info: NetworkInfo) {
        let spec = NetworkSpec {
            name: info.name.clone(),
            subnet: info
                .ipv4_subnets()
                .first()
                .copied()
                .unwrap_or_else(|| "0.0.0.0/32".parse().expect("valid")),
            gateway: std::net::Ipv4Addr::UNSPECIFIED,
            labels: info.labels.clone(),
        };
        self.st().networks.insert(info.name.clone(), (spec, info));
    }

    fn record(&self, op: &str, target: &str) -> Result<(), DockerError> {
        let mut st = self.st();
        st.calls.push(format!("{op} {target}"));
        match st.failures.remove(op) {
            Some(m) => Err(DockerError::Other(m)),
            None => Ok(()),
        }
    }

    /// The last `tail` lines of the logs set for `name`.
    fn tail(&self, name: &str, tail: usize) -> String {
        let st = self.st();
        let text = st.logs.get(name).map(String::as_str).unwrap_or("");
        let lines: Vec<&str> = text.lines().collect();
        let mut out = lines[lines.len().saturating_sub(tail)..].join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        out
    }
}

/// `busybox` and `busybox:latest` are one image.
fn normal(image: &str) -> String {
    let (repo, tag) = super::split_image_tag(image);
    format!("{repo}:{tag}")
}

fn matches(c: &ContainerInfo, f: &ContainerFilter) -> bool {
    f.labels.iter().all(|(k, v)| c.labels.get(k) == Some(v))
        && f.volume.as_ref().is_none_or(|v| c.volumes.contains(v))
        && f.network
            .as_ref()
            .is_none_or(|n| c.networks.contains_key(n))
}

#[async_trait]
impl Docker for FakeDocker {
    async fn info(&self) -> Result<DockerInfo, DockerError> {
        self.record("info", "")?;
        Ok(DockerInfo {
            version: "fake".into(),
            api_version: "1.41".into(),
            ncpu: 4,
            mem_total: 8 << 30,
            runtimes: vec!["runc".into()],
            runtime_paths: BTreeMap::from([("runc".into(), "runc".into())]),
        })
    }

    async fn image_exists(&self, image: &str) -> Result<bool, DockerError> {
        self.record("image_exists", image)?;
        Ok(self.st().images.contains(&normal(image)))
    }

    async fn pull_image(&self, image: &str) -> Result<(), DockerError> {
        self.record("pull_image", image)?;
        let delay = self.st().pull_delays.get(&normal(image)).copied();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let mut st = self.st();
        if st.pullable.contains(&normal(image)) {
            st.images.insert(normal(image));
            Ok(())
        } else {
            Err(DockerError::Other(format!(
                "pull image {image}: pull access denied for {image}"
            )))
        }
    }

    async fn images_in_use(&self) -> Result<HashSet<String>, DockerError> {
        self.record("images_in_use", "")?;
        Ok(self
            .st()
            .containers
            .values()
            .map(|(_, c)| c.image.clone())
            .collect())
    }

    async fn remove_image(&self, image: &str) -> Result<(), DockerError> {
        self.record("remove_image", image)?;
        self.st().images.remove(&normal(image));
        Ok(())
    }

    async fn inspect_container(&self, name: &str) -> Result<Option<ContainerInfo>, DockerError> {
        self.record("inspect_container", name)?;
        Ok(self.st().containers.get(name).map(|(_, c)| c.clone()))
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        self.record("create_container", &spec.name)?;
        let mut st = self.st();
        if st.containers.contains_key(&spec.name) {
            return Err(DockerError::Other(format!(
                "create container {}: name already in use",
                spec.name
            )));
        }
        if !st.images.contains(&normal(&spec.image)) {
            return Err(DockerError::Other(format!("no such image: {}", spec.image)));
        }
        for m in &spec.mounts {
            if !st.volumes.contains_key(&m.volume) {
                return Err(DockerError::Other(format!("no such volume: {}", m.volume)));
            }
        }
        let mut networks = BTreeMap::new();
        if let ContainerNet::Bridge { network, ipv4 } = &spec.network {
            let Some((nspec, _)) = st.networks.get(network) else {
                return Err(DockerError::Other(format!("network {network} not found")));
            };
            let ip = ipv4.map(|i| i.to_string()).unwrap_or_else(|| {
                nspec
                    .subnet
                    .hosts()
                    .nth(1)
                    .map(|i| i.to_string())
                    .unwrap_or_default()
            });
            networks.insert(
                network.clone(),
                Endpoint {
                    ipv4: ip,
                    ipv6: String::new(),
                },
            );
        }
        st.next_id += 1;
        let id = format!("{:064x}", st.next_id);
        let info = ContainerInfo {
            id: id.clone(),
            name: spec.name.clone(),
            image: spec.image.clone(),
            labels: spec.labels.clone(),
            state: "created".into(),
            networks,
            volumes: spec.mounts.iter().map(|m| m.volume.clone()).collect(),
        };
        st.containers
            .insert(spec.name.clone(), (spec.clone(), info));
        Ok(id)
    }

    async fn create_confined_container(
        &self,
        spec: &ContainerSpec,
        confine: &Confinement,
    ) -> Result<String, DockerError> {
        let id = self.create_container(spec).await?;
        self.st()
            .confinements
            .insert(spec.name.clone(), confine.clone());
        Ok(id)
    }

    async fn create_container_with(
        &self,
        spec: &ContainerSpec,
        _extras: &ContainerExtras,
    ) -> Result<String, DockerError> {
        self.create_container(spec).await
    }

    /// Accepts uploads (that would pack) into containers it knows.
    async fn upload_files(&self, name: &str, files: &[FileUpload]) -> Result<(), DockerError> {
        tar_of(files)?;
        match self.inspect_container(name).await? {
            Some(_) => Ok(()),
            None => Err(DockerError::Other(format!("no such container: {name}"))),
        }
    }

    async fn start_container(&self, name: &str) -> Result<(), DockerError> {
        self.record("start_container", name)?;
        match self.st().containers.get_mut(name) {
            Some((_, c)) => {
                c.state = "running".into();
                Ok(())
            }
            None => Err(DockerError::Other(format!("no such container: {name}"))),
        }
    }

    async fn stop_container(&self, name: &str, grace: Duration) -> Result<(), DockerError> {
        self.st().stop_graces.insert(name.to_string(), grace);
        self.record("stop_container", name)?;
        if let Some((_, c)) = self.st().containers.get_mut(name) {
            c.state = "exited".into();
        }
        Ok(())
    }

    async fn remove_container(&self, name: &str) -> Result<bool, DockerError> {
        self.record("remove_container", name)?;
        let mut st = self.st();
        st.confinements.remove(name);
        Ok(st.containers.remove(name).is_some())
    }

    async fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<ContainerInfo>, DockerError> {
        self.record("list_containers", "")?;
        Ok(self
            .st()
            .containers
            .values()
            .map(|(_, c)| c)
            .filter(|c| matches(c, filter))
            .cloned()
            .collect())
    }

    /// The container's own state, with the restart count and exit code
    /// set by [`FakeDocker::set_runs`] (none: 0 and 0).
    async fn container_runs(&self, name: &str) -> Result<Option<ContainerRuns>, DockerError> {
        let Some(info) = self.inspect_container(name).await? else {
            return Ok(None);
        };
        let (restart_count, exit_code) = self.st().runs.get(name).copied().unwrap_or((0, 0));
        Ok(Some(ContainerRuns {
            state: info.state,
            restart_count,
            exit_code,
            finished_at: None,
            oom_killed: false,
        }))
    }

    async fn container_logs(&self, name: &str, tail: usize) -> Result<String, DockerError> {
        self.record("container_logs", name)?;
        Ok(self.tail(name, tail))
    }

    /// The logs set for the container, as one chunk; `follow` adds nothing.
    async fn stream_logs(
        &self,
        name: &str,
        tail: usize,
        _follow: bool,
    ) -> Result<LogStream, DockerError> {
        self.record("stream_logs", name)?;
        if !self.st().containers.contains_key(name) {
            return Err(DockerError::NoSuchContainer(name.to_string()));
        }
        let text = self.tail(name, tail);
        Ok(Box::pin(futures_util::stream::iter(
            (!text.is_empty()).then_some(Ok(text)),
        )))
    }

    async fn create_volume(&self, spec: &VolumeSpec) -> Result<(), DockerError> {
        self.record("create_volume", &spec.name)?;
        self.st()
            .volumes
            .entry(spec.name.clone())
            .or_insert_with(|| VolumeInfo {
                name: spec.name.clone(),
                labels: spec.labels.clone(),
                driver_opts: spec.driver_opts.clone(),
            });
        Ok(())
    }

    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeInfo>, DockerError> {
        self.record("inspect_volume", name)?;
        Ok(self.st().volumes.get(name).cloned())
    }

    async fn remove_volume(&self, name: &str) -> Result<bool, DockerError> {
        self.record("remove_volume", name)?;
        let mut st = self.st();
        if st
            .containers
            .values()
            .any(|(_, c)| c.volumes.iter().any(|v| v == name))
        {
            return Err(DockerError::InUse {
                message: format!("docker volume {name} is in use"),
                source: None,
            });
        }
        Ok(st.volumes.remove(name).is_some())
    }

    async fn list_volumes(
        &self,
        labels: &[(String, String)],
    ) -> Result<Vec<VolumeInfo>, DockerError> {
        self.record("list_volumes", "")?;
        Ok(self
            .st()
            .volumes
            .values()
            .filter(|v| labels.iter().all(|(k, val)| v.labels.get(k) == Some(val)))
            .cloned()
            .collect())
    }

    async fn create_network(&self, spec: &NetworkSpec) -> Result<String, DockerError> {
        self.record("create_network", &spec.name)?;
        let mut st = self.st();
        if st.networks.contains_key(&spec.name) {
            return Err(DockerError::Other(format!(
                "network with name {} already exists",
                spec.name
            )));
        }
        if st
            .networks
            .values()
            .any(|(s, _)| s.subnet.contains(&spec.subnet) || spec.subnet.contains(&s.subnet))
        {
            return Err(DockerError::Other(
                "Pool overlaps with other one on this address space".into(),
            ));
        }
        st.next_id += 1;
        let id = format!("{:064x}", st.next_id);
        let info = NetworkInfo {
            id: id.clone(),
            name: spec.name.clone(),
            driver: "bridge".into(),
            labels: spec.labels.clone(),
            subnets: vec![spec.subnet.to_string()],
            gateways: vec![spec.gateway.to_string()],
            containers: Vec::new(),
        };
        st.networks.insert(spec.name.clone(), (spec.clone(), info));
        Ok(id)
    }

    async fn inspect_network(&self, name: &str) -> Result<Option<NetworkInfo>, DockerError> {
        self.record("inspect_network", name)?;
        let st = self.st();
        Ok(st.networks.get(name).map(|(_, n)| {
            let mut n = n.clone();
            n.containers = st
                .containers
                .values()
                .filter(|(_, c)| c.is_up() && c.networks.contains_key(name))
                .map(|(_, c)| c.name.clone())
                .collect();
            n
        }))
    }

    async fn remove_network(&self, name: &str) -> Result<bool, DockerError> {
        self.record("remove_network", name)?;
        let mut st = self.st();
        if st
            .containers
            .values()
            .any(|(_, c)| c.is_up() && c.networks.contains_key(name))
        {
            return Err(DockerError::InUse {
                message: format!("docker network {name} is in use: has active endpoints"),
                source: None,
            });
        }
        Ok(st.networks.remove(name).is_some())
    }

    async fn list_networks(&self) -> Result<Vec<NetworkInfo>, DockerError> {
        self.record("list_networks", "")?;
        Ok(self
            .st()
            .networks
            .values()
            .map(|(_, n)| n.clone())
            .collect())
    }
}
