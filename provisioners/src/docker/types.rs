//! The plain data that crosses the Docker seam: what to create
//! ([`ContainerSpec`], [`VolumeSpec`], [`NetworkSpec`] and their options)
//! and what the engine reports ([`ContainerInfo`], [`VolumeInfo`],
//! [`NetworkInfo`], [`ContainerRuns`], [`DockerInfo`]). No bollard type
//! appears here: these are this crate's own structs.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use reservation::Secret;

use super::DockerError;

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
    /// Names of the OCI runtimes the engine knows (`runc`, `runsc`...),
    /// sorted.
    pub runtimes: Vec<String>,
    /// The binary each of those runtimes runs, by name (`""` when the
    /// engine does not say).
    pub runtime_paths: BTreeMap<String, String>,
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

/// Container options beyond [`ContainerSpec`] that a k3s node needs
/// (see [`super::Docker::create_container_with`]).
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

/// A file written into a container by [`super::Docker::upload_files`].
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

/// A tar archive (extracted at `/`) holding `files` and their parents.
/// Refuses a path that is not clean and absolute.
pub fn tar_of(files: &[FileUpload]) -> Result<Vec<u8>, DockerError> {
    let bad = |e: std::io::Error| DockerError::Archive(format!("cannot build a tar archive: {e}"));
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
            return Err(DockerError::Archive(format!(
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

/// A stream of log text chunks ([`super::Docker::stream_logs`]).
pub type LogStream = futures_util::stream::BoxStream<'static, Result<String, DockerError>>;
