//! The workload types, declared once each in `workload_types!` (wire
//! name, dependency order, `data` struct: it makes [`WorkloadType`] and
//! [`Workload`]), and one typed struct per workload's `data`, parsed from
//! the raw bytes with errors that name the field
//! (`data.capacity.memory: ...`), and range checks (each struct's `check`).
//!
//! Unknown fields inside `data` are accepted and ignored (Zero-OS clients
//! send more than we use); the envelope itself is strict.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Error;

/// Largest size accepted for any disk-backed workload, in GiB (1 PiB):
/// keeps byte arithmetic far from overflow.
pub const MAX_SIZE_GIB: u64 = 1 << 20;

/// A container's mount of one of the user's volumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    pub volume_id: String,
    pub mountpoint: String,
}

/// Which network a container joins.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerNetwork {
    #[serde(default)]
    pub network_id: String,
    #[serde(default)]
    pub ips: Vec<Ipv4Addr>,
    #[serde(default)]
    pub public_ip6: bool,
}

/// CPU cores and memory MiB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerCapacity {
    pub cpu: u32,
    pub memory: u64,
}

/// `tcp` or `udp`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
}

impl PortProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Port {
    pub container_port: u16,
    pub host_port: u16,
    #[serde(default)]
    pub protocol: PortProtocol,
}

/// `container` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    pub flist: String,
    #[serde(default)]
    pub flist_storage: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// name -> hex sealed value.
    #[serde(default)]
    pub secret_env: BTreeMap<String, String>,
    #[serde(default)]
    pub entrypoint: String,
    #[serde(default)]
    pub interactive: bool,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub network: ContainerNetwork,
    pub capacity: ContainerCapacity,
    #[serde(default)]
    pub ports: Vec<Port>,
}

/// `volume` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    pub size: u64,
    #[serde(rename = "type")]
    pub disk_type: String,
}

/// One node's share of a network. The WireGuard fields are optional:
/// without them the network is local to the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetResource {
    pub node_id: String,
    pub subnet: String,
    /// This node's WireGuard private key for the network (its base64 text,
    /// as `wg genkey` prints it), sealed for the node, hex.
    #[serde(default)]
    pub wireguard_private_key_encrypted: String,
    /// The matching public key, base64.
    #[serde(default)]
    pub wireguard_public_key: String,
    /// UDP port the node's interface listens on.
    #[serde(default)]
    pub wireguard_listen_port: u16,
    /// The other nodes' shares, reached through the tunnel.
    #[serde(default)]
    pub peers: Vec<WireguardPeer>,
}

impl NetResource {
    /// Whether this entry asks for a WireGuard interface.
    pub fn has_wireguard(&self) -> bool {
        !self.wireguard_private_key_encrypted.is_empty()
            || self.wireguard_listen_port != 0
            || !self.peers.is_empty()
    }
}

/// A peer of a node's WireGuard interface: another node's share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireguardPeer {
    #[serde(default)]
    pub subnet: String,
    pub wireguard_public_key: String,
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    /// `host:port`, empty when the peer has none.
    #[serde(default)]
    pub endpoint: String,
}

/// `network` data. Other Zero-OS fields are accepted and ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub ip_range: String,
    #[serde(default)]
    pub net_resources: Vec<NetResource>,
}

/// `zdb` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Zdb {
    pub size: u64,
    pub mode: String,
    /// hex sealed.
    pub password: String,
    pub disk_type: String,
    #[serde(default)]
    pub public: bool,
}

/// `kubernetes` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kubernetes {
    pub size: u8,
    pub network_id: String,
    pub ip: IpAddr,
    /// hex sealed.
    pub cluster_secret: String,
    #[serde(default)]
    pub master_ips: Vec<IpAddr>,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
}

/// `debug` data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Debug {
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub channel: String,
}

/// Disk types of volumes and zdb namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DiskType {
    #[serde(rename = "HDD")]
    Hdd,
    #[serde(rename = "SSD")]
    Ssd,
}

impl DiskType {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskType::Hdd => "HDD",
            DiskType::Ssd => "SSD",
        }
    }

    fn parse(what: &str, field: &str, s: &str) -> Result<Self, Error> {
        match s {
            "HDD" => Ok(DiskType::Hdd),
            "SSD" => Ok(DiskType::Ssd),
            _ => Err(Error::data(
                field,
                format!("{what} type {s:?} is not one of HDD, SSD"),
            )),
        }
    }
}

/// CPU cores, memory MiB and disk GiB of a Kubernetes size (the protocol's
/// table).
pub fn kubernetes_size(size: u8) -> Option<(u32, u64, u64)> {
    match size {
        1 => Some((1, 2048, 50)),
        2 => Some((2, 4096, 100)),
        _ => None,
    }
}

// The one list of workload types, in dependency order (a poll batch is
// handled in this order). A new type is one line here, its `data` struct
// below and its `check`.
workload_types! {
    Network = "network",
    Volume = "volume",
    Zdb = "zdb",
    Container = "container",
    Kubernetes = "kubernetes",
    Debug = "debug",
}

fn parse_as<T: DeserializeOwned>(raw: &RawValue) -> Result<T, Error> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        let inner = e.into_inner().to_string();
        // serde's text ends with " at line L column C": useless to a user
        // who sent the field; keep the what, drop the where.
        let msg = match inner.rfind(" at line ") {
            Some(i) => inner[..i].to_string(),
            None => inner,
        };
        Error::data(
            if field.is_empty() {
                "(root)".into()
            } else {
                field
            },
            msg,
        )
    })
}

/// One workload type's `data` struct: the wire type it is the data of, and
/// the step from a parsed [`Workload`] to it. The provisioners' plug-ins
/// are typed by it, so no code outside this crate matches on the variants.
pub trait WorkloadData: Sized + Send + Sync + 'static {
    /// The wire type whose `data` this is.
    const KIND: WorkloadType;

    /// `w`'s data when `w` is of this type.
    fn of(w: &Workload) -> Option<&Self>;
}

impl Volume {
    fn check(&self) -> Result<(), Error> {
        check_size("size", self.size)?;
        DiskType::parse("volume", "type", &self.disk_type).map(|_| ())
    }
}

impl Zdb {
    fn check(&self) -> Result<(), Error> {
        check_size("size", self.size)?;
        if self.mode != "user" && self.mode != "seq" {
            return Err(Error::data(
                "mode",
                format!("zdb mode {:?} is not one of user, seq", self.mode),
            ));
        }
        DiskType::parse("disk", "disk_type", &self.disk_type)?;
        check_sealed("password", &self.password)
    }
}

impl Kubernetes {
    fn check(&self) -> Result<(), Error> {
        if kubernetes_size(self.size).is_none() {
            return Err(Error::data(
                "size",
                format!("kubernetes size {} is not 1 or 2", self.size),
            ));
        }
        if self.network_id.is_empty() {
            return Err(Error::data("network_id", "must name the user's network"));
        }
        check_sealed("cluster_secret", &self.cluster_secret)?;
        if self.ssh_keys.iter().any(|s| s.contains('\n')) {
            return Err(Error::data("ssh_keys", "a key must be a single line"));
        }
        Ok(())
    }
}

impl Debug {
    fn check(&self) -> Result<(), Error> {
        if self.host.trim().is_empty() {
            return Err(Error::data("host", "must not be empty"));
        }
        if self.port == 0 {
            return Err(Error::data("port", "must be > 0"));
        }
        Ok(())
    }
}

fn check_size(field: &str, size: u64) -> Result<(), Error> {
    if size == 0 {
        return Err(Error::data(field, "must be > 0 GiB"));
    }
    if size > MAX_SIZE_GIB {
        return Err(Error::data(
            field,
            format!("{size} GiB is more than the {MAX_SIZE_GIB} GiB limit"),
        ));
    }
    Ok(())
}

/// Whether a key of `data` names a secret: the sealed fields of the
/// protocol (`secret_env`, `password`, `cluster_secret`) and, for data the
/// node does not parse, any key that says secret, password, private or
/// token. Whoever shows `data` (agentctl, the dashboard) masks its value.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("secret") || k.contains("password") || k.contains("private") || k == "token"
}

fn check_sealed(field: &str, v: &str) -> Result<(), Error> {
    if v.is_empty() {
        return Err(Error::data(
            field,
            "must be a hex sealed secret, got nothing",
        ));
    }
    if hex::decode(v).is_err() {
        return Err(Error::data(
            field,
            "must be a hex sealed secret, got non-hex text",
        ));
    }
    Ok(())
}

impl Container {
    fn check(&self) -> Result<(), Error> {
        if self.flist.trim().is_empty() {
            return Err(Error::data("flist", "must name a container image"));
        }
        if self.capacity.cpu == 0 {
            return Err(Error::data("capacity.cpu", "must be > 0 cores"));
        }
        if self.capacity.cpu > 1024 {
            return Err(Error::data("capacity.cpu", "more than 1024 cores"));
        }
        if self.capacity.memory == 0 {
            return Err(Error::data("capacity.memory", "must be > 0 MiB"));
        }
        if self.capacity.memory > MAX_SIZE_GIB * 1024 {
            return Err(Error::data("capacity.memory", "out of range"));
        }
        for (k, _) in self.env.iter().chain(self.secret_env.iter()) {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(Error::data(
                    "env",
                    format!("variable name {k:?} is empty or holds '=' or NUL"),
                ));
            }
        }
        for (k, v) in &self.secret_env {
            check_sealed(&format!("secret_env.{k}"), v)?;
        }
        if !self.entrypoint.trim().is_empty() {
            shell_split_ok(&self.entrypoint)?;
        }
        for (i, m) in self.mounts.iter().enumerate() {
            if m.volume_id.is_empty() {
                return Err(Error::data(
                    format!("mounts[{i}].volume_id"),
                    "must not be empty",
                ));
            }
            normalize_mountpoint(&m.mountpoint)
                .map_err(|msg| Error::data(format!("mounts[{i}].mountpoint"), msg))?;
        }
        if self.network.network_id.is_empty() && !self.network.ips.is_empty() {
            return Err(Error::data(
                "network.ips",
                "ips given but network.network_id is empty",
            ));
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.container_port == 0 || p.host_port == 0 {
                return Err(Error::data(format!("ports[{i}]"), "ports must be > 0"));
            }
        }
        Ok(())
    }
}

/// The entrypoint must split exactly as the container provisioner splits it
/// (`shell_words::split`): a hand-rolled quote check disagreed on `#`
/// comments (`#'\n'` passed here, then failed at provisioning), found by
/// the `workload_data` fuzz target.
fn shell_split_ok(s: &str) -> Result<(), Error> {
    shell_words::split(s)
        .map(|_| ())
        .map_err(|e| Error::data("entrypoint", format!("cannot be shell-split: {e}")))
}

/// The absolute, clean form of a container mountpoint. Relative paths,
/// `..` and `/` itself are refused: a mount must not shadow the root or
/// escape through the image's symlinks of parents.
pub fn normalize_mountpoint(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("{p:?} is not an absolute path"));
    }
    let mut parts = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("{p:?} holds '..'")),
            _ if part.contains('\0') => return Err(format!("{p:?} holds NUL")),
            _ => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err(format!("{p:?} would mount over the container's root"));
    }
    Ok(format!("/{}", parts.join("/")))
}

impl Network {
    fn check(&self) -> Result<(), Error> {
        self.validate().map(|_| ())
    }

    /// Parse `ip_range` and every subnet; each subnet must lie in the range.
    pub fn validate(&self) -> Result<Ipv4Net, Error> {
        if self.name.trim().is_empty() {
            return Err(Error::data("name", "must not be empty"));
        }
        let range: Ipv4Net = self.ip_range.parse().map_err(|_| {
            Error::data(
                "ip_range",
                format!("{:?} is not an IPv4 CIDR", self.ip_range),
            )
        })?;
        for (i, r) in self.net_resources.iter().enumerate() {
            let sub: Ipv4Net = r.subnet.parse().map_err(|_| {
                Error::data(
                    format!("net_resources[{i}].subnet"),
                    format!("{:?} is not an IPv4 CIDR", r.subnet),
                )
            })?;
            if !range.contains(&sub) {
                return Err(Error::data(
                    format!("net_resources[{i}].subnet"),
                    format!("{sub} is outside ip_range {range}"),
                ));
            }
        }
        Ok(range)
    }

    /// This node's subnet, from its `net_resources` entry.
    pub fn subnet_for(&self, node_id: &str) -> Result<Ipv4Net, Error> {
        let r = self
            .net_resources
            .iter()
            .find(|r| r.node_id == node_id)
            .ok_or_else(|| {
                Error::data("net_resources", format!("no entry for this node {node_id}"))
            })?;
        r.subnet
            .parse()
            .map_err(|_| Error::data("net_resources.subnet", "not an IPv4 CIDR"))
    }
}

impl Volume {
    pub fn disk(&self) -> DiskType {
        DiskType::parse("volume", "type", &self.disk_type).unwrap_or(DiskType::Ssd)
    }
}

impl Zdb {
    pub fn disk(&self) -> DiskType {
        DiskType::parse("disk", "disk_type", &self.disk_type).unwrap_or(DiskType::Ssd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kind: WorkloadType, s: &str) -> Result<Workload, Error> {
        Workload::parse(kind, &RawValue::from_string(s.to_string()).unwrap())
    }

    #[test]
    fn workload_data_takes_its_own_variant_only() {
        let w = parse(WorkloadType::Volume, r#"{"size":2,"type":"HDD"}"#).unwrap();
        assert_eq!(Volume::of(&w).map(|v| v.size), Some(2));
        assert!(Container::of(&w).is_none() && Debug::of(&w).is_none());
        assert_eq!(<Volume as WorkloadData>::KIND, w.kind());
        assert_eq!(<Kubernetes as WorkloadData>::KIND, WorkloadType::Kubernetes);
    }

    #[test]
    fn the_list_keeps_the_wire_names_and_the_dependency_order() {
        let names: Vec<&str> = WorkloadType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "network",
                "volume",
                "zdb",
                "container",
                "kubernetes",
                "debug"
            ]
        );
        for (i, t) in WorkloadType::ALL.into_iter().enumerate() {
            assert_eq!(t.order(), i);
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("{:?}", t.as_str())
            );
            let back: WorkloadType = serde_json::from_str(&format!("{:?}", t.as_str())).unwrap();
            assert_eq!(back, t);
            assert_eq!(t.as_str().parse::<WorkloadType>().unwrap(), t);
            assert_eq!(t.to_string(), t.as_str());
        }
        let e = "vm".parse::<WorkloadType>().unwrap_err().to_string();
        assert!(e.contains("unknown workload type \"vm\": expected one of network, volume, zdb, container, kubernetes, debug"), "{e}");
    }

    #[test]
    fn mountpoints() {
        assert_eq!(normalize_mountpoint("/data//x/./").unwrap(), "/data/x");
        assert!(normalize_mountpoint("data").is_err());
        assert!(normalize_mountpoint("/").is_err());
        assert!(normalize_mountpoint("//.").is_err());
        assert!(normalize_mountpoint("/a/../etc").is_err());
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(
            WorkloadType::Container,
            r#"{"flist":"x","capacity":{"cpu":1,"memory":"lots"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("data.capacity.memory:"), "{e}");
        let e = parse(
            WorkloadType::Container,
            r#"{"flist":"x","capacity":{"cpu":0,"memory":5}}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(e, "data.capacity.cpu: must be > 0 cores");
        let e = parse(WorkloadType::Volume, r#"{"size":1,"type":"TAPE"}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "data.type: volume type \"TAPE\" is not one of HDD, SSD");
        let e = parse(
            WorkloadType::Network,
            r#"{"name":"n","ip_range":"10.1.0.0/16","net_resources":[{"node_id":"a","subnet":"10.2.1.0/24"}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("outside ip_range"), "{e}");
        let e = parse(
            WorkloadType::Kubernetes,
            r#"{"size":3,"network_id":"n","ip":"10.1.1.2","cluster_secret":"00"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not 1 or 2"), "{e}");
    }

    #[test]
    fn network_ignores_zero_os_fields() {
        let w = parse(
            WorkloadType::Network,
            r#"{"name":"n","ip_range":"10.1.0.0/16","wireguard_private_key_encrypted":"x","peers":[],"net_resources":[{"node_id":"a","subnet":"10.1.1.0/24","wg_listen_port":1}]}"#,
        )
        .unwrap();
        match w {
            Workload::Network(n) => {
                assert_eq!(n.subnet_for("a").unwrap().to_string(), "10.1.1.0/24")
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_sealed_field_is_a_secret_key() {
        for k in [
            "secret_env",
            "password",
            "cluster_secret",
            "wg_private_key",
            "TOKEN",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in ["env", "flist", "network_id", "size"] {
            assert!(!is_secret_key(k), "{k}");
        }
    }
}
