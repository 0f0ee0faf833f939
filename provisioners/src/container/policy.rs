//! The operator's rules for tenant containers: [`ContainerPolicy`]
//! (confinement, host ports) and its defaults.

use std::net::{IpAddr, Ipv4Addr};

use crate::docker::Confinement;

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
