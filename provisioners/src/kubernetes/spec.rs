//! From a `kubernetes` reservation to its k3s node container: the k3s
//! command line, the size, the checks of its address and masters on the
//! user's network, and the container request.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use reservation::workloads::{kubernetes_size, Kubernetes};
use reservation::{Reservation, Secret, WorkloadType};

use super::{node_name, KubernetesMode, KubernetesProvisioner, LABEL_ROLE, STATE_DIR};
use crate::docker::{ContainerExtras, ContainerNet, ContainerSpec, NetworkInfo, VolumeMount};
use crate::ProvisionError;

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
pub(super) fn size_of(k: &Kubernetes) -> Result<(u32, u64, u64), ProvisionError> {
    kubernetes_size(k.size).ok_or_else(|| {
        ProvisionError::Refused(format!(
            "data.size: kubernetes size {} is not 1 or 2",
            k.size
        ))
    })
}

/// Every master must be a host address of the user's network on this node
/// (a k3s agent joins the server it is told to: never one elsewhere).
pub(super) fn check_masters(
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
pub(super) fn check_ip(
    ip: Ipv4Addr,
    network_id: &str,
    n: &NetworkInfo,
) -> Result<(), ProvisionError> {
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
}
