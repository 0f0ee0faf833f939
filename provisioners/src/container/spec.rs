//! From a `container` reservation to the Docker request: the
//! [`ContainerSpec`] with every check that can be made before Docker is
//! asked, the image reference and its pull, and the refusals Docker's
//! answers become.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use reservation::workloads::{normalize_mountpoint, Container, PortProtocol};
use reservation::{Reservation, WorkloadType};

use super::ContainerProvisioner;
use crate::docker::{ContainerNet, ContainerSpec, PortSpec, VolumeMount};
use crate::names::{self, label};
use crate::{ProvisionError, LABEL_RESERVATION, LABEL_TYPE, LABEL_USER};

/// Docker's smallest memory limit (6 MiB); less is refused up front.
const MIN_MEMORY_MIB: u64 = 6;

impl ContainerProvisioner {
    /// Turn the request into a [`ContainerSpec`], checking everything that
    /// can be checked before Docker is asked to create anything.
    pub(super) async fn spec(
        &self,
        r: &Reservation,
        c: &Container,
    ) -> Result<ContainerSpec, ProvisionError> {
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
    pub(super) async fn image(&self, c: &Container) -> Result<String, ProvisionError> {
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
}

/// The refusal for a host port already taken: the field of the port
/// Docker names (`Bind for 0.0.0.0:30001 failed`, `listen tcp4
/// 0.0.0.0:30001: bind: ...`), else every published port, and nothing of
/// who holds it.
pub(super) fn port_taken(ports: &[PortSpec], docker_msg: &str) -> String {
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
pub(super) fn check_ip(
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
