//! `explorer reserve <type>`: the flags for every workload's `data`
//! (PROTOCOL.md, "Workload data"), building the JSON, sealing secrets for
//! the node, and signing.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{SubsecRound, Utc};
use clap::{Args, Subcommand};
use reservation::{seal_for, Identity, Reservation, Workload, WorkloadType};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::duration::parse_duration;

/// Flags every type shares.
#[derive(Debug, Args)]
pub struct Common {
    /// The node (its base58 id) that runs the workload.
    #[arg(long, value_name = "NODE_ID")]
    pub node: String,
    /// How long the workload lives: 30s, 10m, 2h, 1d, 1h30m.
    #[arg(long, default_value = "1h", value_parser = parse_duration, value_name = "DURATION")]
    pub duration: i64,
    /// Raw `data` JSON, signed and sent byte for byte instead of the type's
    /// flags (which it conflicts with). Not checked: the node judges it.
    #[arg(long, value_name = "JSON", conflicts_with = "fields")]
    pub data: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ReserveKind {
    /// A container: an image, its environment, mounts, network and size.
    #[command(
        after_help = "Example:\n  explorer reserve container --node NODE_ID --flist busybox:latest \\\n    --entrypoint 'sh -c \"sleep 3600\"' --env GREETING=hi --secret-env TOKEN=s3cr3t \\\n    --mount VOLUME_ID:/data --cpu 1 --memory 256 --port 8080:80 --duration 2h"
    )]
    Container {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        f: ContainerArgs,
    },
    /// A volume of SIZE GiB on SSD or HDD.
    #[command(
        after_help = "Example:\n  explorer reserve volume --node NODE_ID --size 1 --type SSD --duration 1d"
    )]
    Volume {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        f: VolumeArgs,
    },
    /// A private network: its name, IP range and each node's subnet.
    #[command(
        after_help = "Example:\n  explorer reserve network --node NODE_ID --name mynet --ip-range 10.1.0.0/16 --subnet 10.1.1.0/24"
    )]
    Network {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        f: NetworkArgs,
    },
    /// A 0-db namespace.
    #[command(
        after_help = "Example:\n  explorer reserve zdb --node NODE_ID --size 1 --mode user --password s3cr3t --disk-type SSD"
    )]
    Zdb {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        f: ZdbArgs,
    },
    /// A Kubernetes (k3s) VM-sized node in one of the user's networks.
    #[command(
        after_help = "Example:\n  explorer reserve kubernetes --node NODE_ID --size 1 --network-id mynet --ip 10.1.1.10 \\\n    --cluster-secret s3cr3t --ssh-key \"$(cat ~/.ssh/id_ed25519.pub)\""
    )]
    Kubernetes {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        f: KubernetesArgs,
    },
    /// Ship the node's logs to a redis channel.
    #[command(
        after_help = "Example:\n  explorer reserve debug --node NODE_ID --host 10.0.0.1 --port 6379"
    )]
    Debug {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        f: DebugArgs,
    },
}

#[derive(Debug, Args)]
#[group(id = "fields", multiple = true)]
pub struct ContainerArgs {
    /// Container image reference.
    #[arg(long, required_unless_present = "data", value_name = "IMAGE")]
    pub flist: Option<String>,
    /// Registry or mirror to pull the image from.
    #[arg(long, value_name = "URL")]
    pub flist_storage: Option<String>,
    /// Environment variable (repeat).
    #[arg(long, value_name = "K=V")]
    pub env: Vec<String>,
    /// Secret environment variable in plaintext (repeat); the CLI seals it
    /// for the node, so only the node can read it.
    #[arg(long, value_name = "K=V")]
    pub secret_env: Vec<String>,
    /// Command line, shell-split by the node.
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Run interactively (a TTY and open stdin).
    #[arg(long)]
    pub interactive: bool,
    /// Mount one of your volumes on this node (repeat).
    #[arg(long = "mount", value_name = "VOLUME_ID:/PATH")]
    pub mounts: Vec<String>,
    /// Name of your network on this node to join; none: no network at all.
    #[arg(long, value_name = "NAME")]
    pub network_id: Option<String>,
    /// IPv4 address in the network (repeat).
    #[arg(long = "ip", value_name = "IPV4")]
    pub ips: Vec<Ipv4Addr>,
    /// Also give the container a public IPv6 address.
    #[arg(long)]
    pub public_ip6: bool,
    /// CPU cores [default: 1].
    #[arg(long, value_name = "CORES")]
    pub cpu: Option<u32>,
    /// Memory in MiB [default: 256].
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u64>,
    /// Publish a port (repeat): HOST:CONTAINER, or HOST:CONTAINER/udp.
    #[arg(long = "port", value_name = "HOST:CONTAINER[/udp]")]
    pub ports: Vec<String>,
}

#[derive(Debug, Args)]
#[group(id = "fields", multiple = true)]
pub struct VolumeArgs {
    /// Size in GiB.
    #[arg(long, required_unless_present = "data", value_name = "GIB")]
    pub size: Option<u64>,
    /// Disk type: SSD or HDD [default: SSD].
    #[arg(long = "type", value_name = "SSD|HDD")]
    pub disk_type: Option<String>,
}

#[derive(Debug, Args)]
#[group(id = "fields", multiple = true)]
pub struct NetworkArgs {
    /// The network's name (containers join it by this name).
    #[arg(long, required_unless_present = "data")]
    pub name: Option<String>,
    /// The whole network's IPv4 range (CIDR).
    #[arg(long, required_unless_present = "data", value_name = "CIDR")]
    pub ip_range: Option<String>,
    /// A node's subnet inside --ip-range (repeat).
    #[arg(long = "net-resource", value_name = "NODE_ID=CIDR")]
    pub net_resources: Vec<String>,
    /// The subnet of --node, when no --net-resource is given.
    #[arg(long, value_name = "CIDR")]
    pub subnet: Option<String>,
}

#[derive(Debug, Args)]
#[group(id = "fields", multiple = true)]
pub struct ZdbArgs {
    /// Size in GiB.
    #[arg(long, required_unless_present = "data", value_name = "GIB")]
    pub size: Option<u64>,
    /// user or seq [default: user].
    #[arg(long, value_name = "user|seq")]
    pub mode: Option<String>,
    /// Namespace password in plaintext; the CLI seals it for the node.
    #[arg(long, required_unless_present = "data")]
    pub password: Option<String>,
    /// SSD or HDD [default: SSD].
    #[arg(long, value_name = "SSD|HDD")]
    pub disk_type: Option<String>,
    /// Reachable from outside the node.
    #[arg(long)]
    pub public: bool,
}

#[derive(Debug, Args)]
#[group(id = "fields", multiple = true)]
pub struct KubernetesArgs {
    /// 1: 1 vCPU, 2 GiB RAM, 50 GiB disk; 2: 2 vCPU, 4 GiB, 100 GiB.
    #[arg(long, required_unless_present = "data", value_name = "1|2")]
    pub size: Option<u8>,
    /// Your network on this node to join.
    #[arg(long, required_unless_present = "data", value_name = "NAME")]
    pub network_id: Option<String>,
    /// The VM's address in the network.
    #[arg(long, required_unless_present = "data")]
    pub ip: Option<IpAddr>,
    /// Cluster secret in plaintext; the CLI seals it for the node.
    #[arg(long, required_unless_present = "data")]
    pub cluster_secret: Option<String>,
    /// A master's IP (repeat); none: this one is a master.
    #[arg(long = "master-ip", value_name = "IP")]
    pub master_ips: Vec<IpAddr>,
    /// An SSH public key allowed in (repeat).
    #[arg(long = "ssh-key", value_name = "KEY")]
    pub ssh_keys: Vec<String>,
}

#[derive(Debug, Args)]
#[group(id = "fields", multiple = true)]
pub struct DebugArgs {
    /// Redis host that receives the logs.
    #[arg(long, required_unless_present = "data")]
    pub host: Option<String>,
    /// Redis port.
    #[arg(long, required_unless_present = "data")]
    pub port: Option<u16>,
    /// Redis channel [default on the node: <node_id>-logs].
    #[arg(long)]
    pub channel: Option<String>,
}

fn pair<'a>(flag: &str, s: &'a str, sep: char, shape: &str) -> Result<(&'a str, &'a str)> {
    match s.split_once(sep) {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => bail!("{flag} {s:?}: expected {shape}"),
    }
}

fn need<T>(v: Option<T>, flag: &str) -> Result<T> {
    v.ok_or_else(|| anyhow!("{flag} is required (or give the whole data with --data)"))
}

fn seal(node: &str, flag: &str, plaintext: &str) -> Result<String> {
    seal_for(node, plaintext.as_bytes())
        .map_err(|e| anyhow!("cannot seal {flag} for node {node}: {e}"))
}

fn container(node: &str, f: ContainerArgs) -> Result<Value> {
    let mut env = BTreeMap::new();
    for e in &f.env {
        let (k, v) = pair("--env", e, '=', "NAME=VALUE")?;
        env.insert(k.to_string(), v.to_string());
    }
    let mut secret_env = BTreeMap::new();
    for e in &f.secret_env {
        let (k, v) = pair("--secret-env", e, '=', "NAME=VALUE")?;
        secret_env.insert(k.to_string(), seal(node, &format!("--secret-env {k}"), v)?);
    }
    let mut mounts = Vec::new();
    for m in &f.mounts {
        let (vol, path) = pair("--mount", m, ':', "VOLUME_ID:/PATH")?;
        mounts.push(json!({ "volume_id": vol, "mountpoint": path }));
    }
    let mut ports = Vec::new();
    for p in &f.ports {
        let (spec, proto) = match p.split_once('/') {
            Some((s, pr)) => (s, pr),
            None => (p.as_str(), "tcp"),
        };
        if proto != "tcp" && proto != "udp" {
            bail!("--port {p:?}: protocol {proto:?} is not tcp or udp");
        }
        let (h, c) = pair("--port", spec, ':', "HOST:CONTAINER[/udp]")?;
        let num = |s: &str| -> Result<u16> {
            s.parse()
                .map_err(|_| anyhow!("--port {p:?}: {s:?} is not a port number"))
        };
        ports.push(json!({ "host_port": num(h)?, "container_port": num(c)?, "protocol": proto }));
    }
    Ok(json!({
        "flist": need(f.flist, "--flist")?,
        "flist_storage": f.flist_storage.unwrap_or_default(),
        "env": env,
        "secret_env": secret_env,
        "entrypoint": f.entrypoint.unwrap_or_default(),
        "interactive": f.interactive,
        "mounts": mounts,
        "network": {
            "network_id": f.network_id.unwrap_or_default(),
            "ips": f.ips,
            "public_ip6": f.public_ip6,
        },
        "capacity": { "cpu": f.cpu.unwrap_or(1), "memory": f.memory.unwrap_or(256) },
        "ports": ports,
    }))
}

fn network(node: &str, f: NetworkArgs) -> Result<Value> {
    let mut res = Vec::new();
    for r in &f.net_resources {
        let (n, s) = pair("--net-resource", r, '=', "NODE_ID=CIDR")?;
        res.push(json!({ "node_id": n, "subnet": s }));
    }
    match (&f.subnet, res.is_empty()) {
        (Some(s), true) => res.push(json!({ "node_id": node, "subnet": s })),
        (Some(_), false) => bail!("give either --subnet (for --node) or --net-resource, not both"),
        (None, true) => bail!(
            "--subnet is required: the subnet of --node inside --ip-range (or give --net-resource NODE_ID=CIDR per node)"
        ),
        (None, false) => {}
    }
    Ok(json!({
        "name": need(f.name, "--name")?,
        "ip_range": need(f.ip_range, "--ip-range")?,
        "net_resources": res,
    }))
}

/// `(type, node, duration, data JSON)` of the command line. The data built
/// from flags is checked with the node's own parser first, so a typo fails
/// here rather than as an error result later; `--data` is sent as given.
pub fn build(kind: ReserveKind) -> Result<(WorkloadType, String, i64, String)> {
    let (t, common, data) = match kind {
        ReserveKind::Container { common, f } => {
            let d = raw_or(&common, |n| container(n, f))?;
            (WorkloadType::Container, common, d)
        }
        ReserveKind::Volume { common, f } => {
            let d = raw_or(&common, |_| {
                Ok(json!({
                    "size": need(f.size, "--size")?,
                    "type": f.disk_type.unwrap_or_else(|| "SSD".into()),
                }))
            })?;
            (WorkloadType::Volume, common, d)
        }
        ReserveKind::Network { common, f } => {
            let d = raw_or(&common, |n| network(n, f))?;
            (WorkloadType::Network, common, d)
        }
        ReserveKind::Zdb { common, f } => {
            let d = raw_or(&common, |n| {
                Ok(json!({
                    "size": need(f.size, "--size")?,
                    "mode": f.mode.unwrap_or_else(|| "user".into()),
                    "password": seal(n, "--password", &need(f.password, "--password")?)?,
                    "disk_type": f.disk_type.unwrap_or_else(|| "SSD".into()),
                    "public": f.public,
                }))
            })?;
            (WorkloadType::Zdb, common, d)
        }
        ReserveKind::Kubernetes { common, f } => {
            let d = raw_or(&common, |n| {
                Ok(json!({
                    "size": need(f.size, "--size")?,
                    "network_id": need(f.network_id, "--network-id")?,
                    "ip": need(f.ip, "--ip")?,
                    "cluster_secret": seal(n, "--cluster-secret", &need(f.cluster_secret, "--cluster-secret")?)?,
                    "master_ips": f.master_ips,
                    "ssh_keys": f.ssh_keys,
                }))
            })?;
            (WorkloadType::Kubernetes, common, d)
        }
        ReserveKind::Debug { common, f } => {
            let d = raw_or(&common, |_| {
                let mut v = json!({
                    "host": need(f.host, "--host")?,
                    "port": need(f.port, "--port")?,
                });
                if let Some(c) = f.channel {
                    v["channel"] = json!(c);
                }
                Ok(v)
            })?;
            (WorkloadType::Debug, common, d)
        }
    };
    if common.data.is_none() {
        let raw = RawValue::from_string(data.clone())?;
        Workload::parse(t, &raw).map_err(|e| anyhow!("{t} {e}"))?;
    }
    Ok((t, common.node, common.duration, data))
}

/// `--data` as given, or the JSON the type's flags make.
fn raw_or(common: &Common, make: impl FnOnce(&str) -> Result<Value>) -> Result<String> {
    reservation::identity::parse_public_key("node_id", &common.node)
        .map_err(|e| anyhow!("--node: {e}; pass the node id an agent prints at start"))?;
    match &common.data {
        Some(d) => {
            let d = d.trim();
            serde_json::from_str::<&RawValue>(d).context("--data is not valid JSON")?;
            Ok(d.to_string())
        }
        None => Ok(serde_json::to_string(&make(&common.node)?)?),
    }
}

/// A version 2 reservation of `data` for `node`, created now (whole
/// seconds), with a fresh random nonce, signed by `user`.
pub fn signed(
    user: &Identity,
    t: WorkloadType,
    node: String,
    duration: i64,
    data: String,
) -> Result<Reservation> {
    let mut r = Reservation {
        node_id: node,
        user_id: user.id().to_string(),
        kind: t.as_str().to_string(),
        data: RawValue::from_string(data)?,
        created: Some(Utc::now().trunc_subsecs(0)),
        duration,
        nonce: reservation::new_nonce(),
        ..Reservation::default()
    };
    user.sign_reservation(&mut r);
    Ok(r)
}
