//! The `network` workload type, all of it ([`Plugin`]): one Docker bridge
//! network per node-local network id, named
//! `agent-net-<network_local_id(user_id, name)>`, counted against its
//! user's networks.
//!
//! The subnet is this node's `net_resources` entry. Refused: no entry for
//! this node, a subnet outside `ip_range`, a subnet overlapping any other
//! network on this node (another user's, the user's own other network, or
//! Docker's own bridges), and a second reservation of a network the user
//! already has here unless it can take it over (below).
//!
//! The host is protected too: a subnet must lie in the operator's pool
//! (`--network-pool`, default the RFC 1918 ranges), and is refused when it
//! overlaps loopback (127/8), link-local (169.254/16), multicast (224/4),
//! "this network" (0/8) or the reserved 240/4, any route of the host
//! (`/proc/net/route`) other than the default route, or any address of the
//! host (`/proc/net/fib_trie`). The routes and addresses of Docker's own
//! bridges (`br-<network id>`) are left to the check against Docker
//! networks, which names them better; `docker0` stays a host route.
//!
//! A network found under the name is reused only when it was made for this
//! very signed reservation ([`names::adoptable`]); anything else there (a
//! hand-made object, another owner's) is removed and made afresh.
//!
//! Replacing a network (new peers, a new key or port): the user signs a new
//! reservation of the same name while the old one lives. Names are per
//! user (the Docker name derives from the user id and the name), so only
//! the same user can ever get here. The new one takes the network over at
//! once when this node's subnet is the same and both or neither carry
//! WireGuard fields: the bridge and the containers on it stay, the tunnel
//! is reconfigured with the new key, port and peers (checked first; a
//! field, port or endpoint refused leaves the old tunnel running, and a
//! failure of the new interface itself, after the old one went down,
//! leaves nothing of the new one and brings the old one back as it ran:
//! the new reservation gets an error naming the reservation that keeps
//! the network), and a [`Holder`] record
//! (`<root>/networks/<docker network id>.json`, no secret in it) says the
//! new reservation holds the network and the old one is replaced. The old
//! one's decommission (delete or expiry) then leaves the network alone, and
//! provisioning it again (reconciliation) does nothing. When the holder's
//! end removes the network while replaced ones live, they are recorded as
//! ended with it ([`Ended`], `<root>/networks/ended-<network name>.json`):
//! present to reconciliation, provisioning them again makes nothing (the
//! network does not come back with old peers, nor does a newer network of
//! the name get taken over), and their own end drops them from the record.
//! Otherwise (another subnet, WireGuard added or dropped) the new one is
//! refused, naming the old reservation to delete first.
//!
//! Docker's bridge driver isolates bridge networks from
//! each other (its DOCKER-ISOLATION iptables chains), so two users'
//! networks cannot reach each other; the integration tests prove it.
//!
//! When this node's entry carries WireGuard fields the network spans
//! nodes: after the bridge, a tunnel is brought up through the
//! [`wireguard::Tunnels`] seam (see that module for what it owns). Every
//! field is checked first, and nothing is created when one is wrong: the
//! sealed private key must open to a base64 (or hex) 32-byte key matching
//! `wireguard_public_key` when given; the listen port lies in 1024-65535;
//! each peer's key is a 32-byte base64 key; each `allowed_ips` entry is an
//! IPv4 CIDR inside `ip_range`, off this node's subnet, and passes the same
//! host checks as a subnet (pool, reserved ranges, host routes and
//! addresses: so neither the default route nor the host's LAN can be
//! pointed into a tenant's tunnel); an endpoint is `host:port` that
//! resolves, not loopback, unspecified or multicast. A tunnel that fails to
//! come up (port taken, endpoint unreachable) removes the bridge again.
//! The Docker network carries the interface's name (`io.agent.wireguard`)
//! so reconciliation re-provisions a network whose tunnel is gone (after
//! a restart: the key stays sealed in the cache and is opened again).
//! Result `data`: `null`.

#[cfg(test)]
mod wg_tests;
pub mod wireguard;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use ipnet::Ipv4Net;
use reservation::workloads::{NetResource, Network};
use reservation::{Identity, Reservation, WorkloadType};

use serde::{Deserialize, Serialize};

use crate::charge::Tenancy;
use crate::docker::{ContainerFilter, Docker, NetworkInfo, NetworkSpec};
use crate::names::{self, label, signature_hash, Names, LABEL_NETWORK_NAME};
use crate::plugin::{Plugin, Setup};
use crate::{ProvisionError, LABEL_RESERVATION, LABEL_TYPE, LABEL_USER};
use wireguard::{PeerSpec, TunnelSpec, Tunnels, WgKey};

/// Label of a network with a tunnel: its interface name.
pub const LABEL_WIREGUARD: &str = "io.agent.wireguard";

/// Most peers of one network, and most `allowed_ips` of one peer.
pub const MAX_PEERS: usize = 64;
pub const MAX_ALLOWED_IPS: usize = 64;
/// Most `allowed_ips` of one network in all (one route each).
pub const MAX_ROUTES: usize = 256;

/// Who holds a network after a takeover (see the module doc): the
/// reservation (its id and signature hash) now holding it, and those it
/// replaced that are not deleted yet. Without a record the network's
/// labels say who holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub id: String,
    pub signature: String,
    pub replaced: Vec<Replaced>,
}

/// A reservation a takeover replaced: its id and signature hash (the
/// explorer assigns ids, so an id alone could be handed to another
/// reservation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replaced {
    pub id: String,
    pub signature: String,
}

/// The reservations a takeover replaced on a network that then ended
/// with its holder (`<root>/networks/ended-<network name>.json`, no
/// secret): they are live and cached, but their network is gone for good.
/// Without it a restart's reconciliation would find them missing and
/// provision them again: the deleted network back with the old peers, or
/// a takeover of a newer network of the name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub replaced: Vec<Replaced>,
}

/// File names of [`Ended`] records start with this.
const ENDED_PREFIX: &str = "ended-";

/// The record (holder or ended) kept at `path`, if any: a missing file is
/// none; an unreadable or unparsable one counts as none, and is logged.
fn read_record<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Option<T> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read a network record");
            return None;
        }
    };
    serde_json::from_slice(&text)
        .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "a network record does not parse; ignored"))
        .ok()
}

/// Write `text` to `path` through a temporary file and a rename, so a
/// reader sees the old text or the new, never a part.
fn write_atomic(path: &std::path::Path, text: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The checked WireGuard side of a network, before its bridge exists.
#[derive(Debug)]
pub struct WgPlan {
    pub key: WgKey,
    pub listen_port: u16,
    pub peers: Vec<PeerSpec>,
}

/// A 32-byte key written in base64 (as `wg` prints it) or hex.
fn parse_key(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    let bytes = if s.len() == 64 {
        hex::decode(s).ok()?
    } else {
        base64::engine::general_purpose::STANDARD.decode(s).ok()?
    };
    bytes.try_into().ok()
}

/// Default of `--network-pool`: the private ranges of RFC 1918.
pub const DEFAULT_POOL: &str = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16";

/// Ranges no tenant subnet may touch, whatever the pool.
const RESERVED: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\" range"),
    ("127.0.0.0/8", "loopback range"),
    ("169.254.0.0/16", "link-local range"),
    ("224.0.0.0/4", "multicast range"),
    ("240.0.0.0/4", "reserved range"),
];

/// Parse `--network-pool`: comma-separated IPv4 CIDRs.
pub fn parse_pool(s: &str) -> Result<Vec<Ipv4Net>, String> {
    let mut pool = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let net: Ipv4Net = part
            .parse()
            .map_err(|_| format!("network pool: {part:?} is not an IPv4 CIDR like 10.0.0.0/8"))?;
        pool.push(net.trunc());
    }
    if pool.is_empty() {
        return Err("network pool: empty; give at least one CIDR, e.g. 10.0.0.0/8".into());
    }
    Ok(pool)
}

/// Resolve a peer's `host:port`: refused when it does not parse, does not
/// resolve within 5 s, or names a loopback, unspecified or multicast
/// address (the tunnel would send to the node itself).
pub async fn resolve_endpoint(s: &str) -> Result<SocketAddr, String> {
    let addr = match s.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| format!("{s:?} is not host:port"))?;
            let ok_host = !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            if !ok_host || port.parse::<u16>().is_err() {
                return Err(format!("{s:?} is not host:port"));
            }
            let found = tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(s))
                .await
                .map_err(|_| format!("{s:?} did not resolve within 5 s"))?
                .map_err(|e| format!("{s:?} does not resolve: {e}"))?
                .find(|a| a.is_ipv4())
                .or(None);
            found.ok_or_else(|| format!("{s:?} has no IPv4 address"))?
        }
    };
    let ip = addr.ip();
    if addr.port() == 0 || ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("{addr} is not a peer's address"));
    }
    Ok(addr)
}

/// The host's IPv4 routes (other than default routes) and addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNet {
    /// `(destination, interface)` of each route of the main table.
    pub routes: Vec<(Ipv4Net, String)>,
    /// Local addresses of the host.
    pub addrs: Vec<Ipv4Addr>,
}

impl HostNet {
    /// Read them from `/proc/net/route` and `/proc/net/fib_trie`.
    pub fn read() -> Result<HostNet, String> {
        let routes = std::fs::read_to_string("/proc/net/route")
            .map_err(|e| format!("cannot read /proc/net/route: {e}"))?;
        let trie = std::fs::read_to_string("/proc/net/fib_trie")
            .map_err(|e| format!("cannot read /proc/net/fib_trie: {e}"))?;
        Ok(HostNet {
            routes: parse_routes(&routes),
            addrs: parse_local_addrs(&trie),
        })
    }
}

/// Routes of `/proc/net/route` text, default routes (mask 0) left out.
/// Addresses there are hex of the address in network order read as a
/// native-endian u32.
pub fn parse_routes(text: &str) -> Vec<(Ipv4Net, String)> {
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (iface, dest, mask) = (f.first()?, hex(f.get(1)?)?, hex(f.get(7)?)?);
            let bits = u32::from(mask);
            if bits == 0 || bits.leading_ones() != bits.count_ones() {
                return None;
            }
            let net = Ipv4Net::new(dest, bits.count_ones() as u8).ok()?.trunc();
            Some((net, iface.to_string()))
        })
        .collect()
}

/// Local addresses in `/proc/net/fib_trie` text: a leaf `|-- a.b.c.d`
/// followed by a `/32 host LOCAL` line.
pub fn parse_local_addrs(text: &str) -> Vec<Ipv4Addr> {
    let mut out = BTreeSet::new();
    let mut leaf: Option<Ipv4Addr> = None;
    for l in text.lines() {
        let t = l.trim();
        if let Some(a) = t.strip_prefix("|-- ") {
            leaf = a.trim().parse().ok();
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(a) = leaf {
                out.insert(a);
            }
        }
    }
    out.into_iter().collect()
}

/// Where the host's routes and addresses come from.
#[derive(Debug, Clone)]
pub enum HostView {
    /// Read `/proc` at each provisioning.
    Live,
    /// These (unit tests).
    Fixed(HostNet),
}

/// Provisions `network` workloads for node `node_id`.
pub struct NetworkProvisioner {
    docker: Arc<dyn Docker>,
    node_id: String,
    pool: Vec<Ipv4Net>,
    host: HostView,
    names: Names,
    /// Opens the sealed WireGuard keys (none: WireGuard fields refused).
    node_key: Option<Arc<Identity>>,
    tunnels: Arc<dyn Tunnels>,
    /// Where [`Holder`] records live (none: no takeover, a second
    /// reservation of a name is refused).
    holders: Option<std::path::PathBuf>,
}

impl NetworkProvisioner {
    pub fn new(docker: Arc<dyn Docker>, node_id: impl Into<String>) -> Self {
        Self {
            docker,
            node_id: node_id.into(),
            pool: parse_pool(DEFAULT_POOL).expect("valid default pool"),
            host: HostView::Live,
            names: Names::unscoped(),
            node_key: None,
            tunnels: Arc::new(wireguard::HostTunnels::new()),
            holders: None,
        }
    }

    /// Keep [`Holder`] records in `dir` (the daemon: `<root>/networks`).
    pub fn with_holders(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.holders = Some(dir.into());
        self
    }

    fn holder_path(&self, net: &NetworkInfo) -> Option<std::path::PathBuf> {
        // Docker ids are hex; a network made afresh under the same name has
        // a new id, so a stale record never applies to it.
        if net.id.is_empty() || !net.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(self.holders.as_ref()?.join(format!("{}.json", net.id)))
    }

    /// The takeover record of `net`, if any (an unreadable one counts as
    /// none, and is logged).
    fn holder(&self, net: &NetworkInfo) -> Option<Holder> {
        read_record(&self.holder_path(net)?)
    }

    fn write_holder(&self, net: &NetworkInfo, h: &Holder) -> Result<(), ProvisionError> {
        let path = self.holder_path(net).ok_or_else(|| {
            ProvisionError::Node(format!(
                "network of reservation {}: no place for its holder record",
                h.id
            ))
        })?;
        let err = |e: std::io::Error| {
            ProvisionError::Node(format!(
                "network of reservation {}: cannot write {}: {e}",
                h.id,
                path.display()
            ))
        };
        let text = serde_json::to_vec(h).expect("a holder serializes");
        write_atomic(&path, &text).map_err(err)
    }

    fn clear_holder(&self, net: &NetworkInfo) {
        if let Some(path) = self.holder_path(net) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Where the reservations replaced on network `name` (a Docker name:
    /// the agent's own, letters, digits and `-`) are kept once the network
    /// ended with its holder ([`Ended`]).
    fn ended_path(&self, name: &str) -> Option<std::path::PathBuf> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return None;
        }
        Some(
            self.holders
                .as_ref()?
                .join(format!("{ENDED_PREFIX}{name}.json")),
        )
    }

    /// The replaced reservations network `name` ended with (an unreadable
    /// record counts as none, and is logged).
    fn ended(&self, name: &str) -> Vec<Replaced> {
        self.ended_path(name)
            .and_then(|path| read_record::<Ended>(&path))
            .map(|e| e.replaced)
            .unwrap_or_default()
    }

    /// Keep `replaced` as what network `name` ended with (none: the record
    /// goes).
    fn write_ended(&self, name: &str, replaced: Vec<Replaced>) -> Result<(), ProvisionError> {
        let Some(path) = self.ended_path(name) else {
            return Ok(());
        };
        if replaced.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ProvisionError::Node(
                    format!("network {name}: cannot remove {}: {e}", path.display()),
                )),
                _ => Ok(()),
            };
        }
        let text = serde_json::to_vec(&Ended { replaced }).expect("a record serializes");
        write_atomic(&path, &text).map_err(|e| {
            ProvisionError::Node(format!(
                "network {name}: cannot write {}: {e}",
                path.display()
            ))
        })
    }

    /// Whether `r` (its id and signature) is a replaced reservation whose
    /// network ended with its holder.
    fn ended_with(&self, name: &str, r: &Reservation) -> bool {
        let sig = signature_hash(r);
        self.ended(name)
            .iter()
            .any(|x| x.id == r.id && x.signature == sig)
    }

    /// Every ended network record: (network name, replaced reservations).
    fn all_ended(&self) -> Vec<(String, Vec<Replaced>)> {
        let Some(dir) = self.holders.as_ref() else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let f = e.file_name().into_string().ok()?;
                let name = f
                    .strip_prefix(ENDED_PREFIX)?
                    .strip_suffix(".json")?
                    .to_string();
                let replaced = self.ended(&name);
                Some((name, replaced))
            })
            .collect()
    }

    /// Drop reservation `id` (with signature `sig`, or any) from every
    /// ended network record.
    fn forget_ended(&self, id: &str, sig: Option<&str>) -> Result<(), ProvisionError> {
        for (name, mut replaced) in self.all_ended() {
            let before = replaced.len();
            replaced.retain(|x| !(x.id == id && sig.is_none_or(|s| s == x.signature)));
            if replaced.len() != before {
                self.write_ended(&name, replaced)?;
            }
        }
        Ok(())
    }

    /// The id of the reservation holding `net`.
    fn holder_id(&self, net: &NetworkInfo) -> String {
        self.held(net).0
    }

    /// The id of the reservation holding `net` and the ids of those it
    /// replaced, from one read of its record.
    fn held(&self, net: &NetworkInfo) -> (String, Vec<String>) {
        match self.holder(net) {
            Some(h) => (h.id, h.replaced.into_iter().map(|x| x.id).collect()),
            None => (
                label(&net.labels, LABEL_RESERVATION).to_string(),
                Vec::new(),
            ),
        }
    }

    /// Whether `r` holds `net` (made it, or took it over), as its signed
    /// reservation.
    fn holds(&self, net: &NetworkInfo, r: &Reservation) -> bool {
        match self.holder(net) {
            Some(h) => {
                h.id == r.id
                    && h.signature == signature_hash(r)
                    && label(&net.labels, LABEL_USER) == r.user_id
                    && self.names.is_ours(&net.labels)
            }
            None => self.names.adoptable(&net.labels, r),
        }
    }

    /// Whether `r`'s decommission removes `net`: it holds it by the
    /// record, or (no record) by the labels, unless another signed
    /// reservation holds it.
    fn removable_by(&self, net: &NetworkInfo, r: &Reservation) -> bool {
        match self.holder(net) {
            Some(_) => self.holds(net, r),
            None => {
                label(&net.labels, LABEL_RESERVATION) == r.id
                    && !self.names.held_by_another(&net.labels, r)
            }
        }
    }

    /// Whether `r`'s id is that of a reservation a newer one of the same
    /// user replaced: `Some(true)` when `r` is that reservation (its
    /// signature too), `Some(false)` when another reservation was handed
    /// its id ([`names::held_error`]), `None` when no replaced one has it.
    fn replaced(&self, net: &NetworkInfo, r: &Reservation) -> Option<bool> {
        if label(&net.labels, LABEL_USER) != r.user_id || !self.names.is_ours(&net.labels) {
            return None;
        }
        let h = self.holder(net)?;
        let x = h.replaced.iter().find(|x| x.id == r.id)?;
        Some(x.signature == signature_hash(r))
    }

    /// Forget replaced reservation `id` of `net` (it was deleted).
    fn forget_replaced(&self, net: &NetworkInfo, id: &str) -> Result<(), ProvisionError> {
        if let Some(mut h) = self.holder(net) {
            h.replaced.retain(|x| x.id != id);
            self.write_holder(net, &h)?;
        }
        Ok(())
    }

    /// The node's key, which opens the sealed WireGuard private keys.
    pub fn with_identity(mut self, node: Arc<Identity>) -> Self {
        self.node_key = Some(node);
        self
    }

    /// Where tunnels are brought up (default: [`wireguard::HostTunnels`], kernel
    /// WireGuard where the host has it, else userspace boringtun).
    pub fn with_tunnels(mut self, tunnels: Arc<dyn Tunnels>) -> Self {
        self.tunnels = tunnels;
        self
    }

    /// Which WireGuard this provisioner's tunnels use.
    pub fn tunnel_mode(&self) -> String {
        self.tunnels.mode()
    }

    /// Check this node's WireGuard fields of `n`; `None` without them.
    /// Nothing is created here.
    pub async fn wireguard_plan(
        &self,
        n: &Network,
        sub: Ipv4Net,
        docker_nets: &[NetworkInfo],
    ) -> Result<Option<WgPlan>, ProvisionError> {
        let Some((i, entry)) = n
            .net_resources
            .iter()
            .enumerate()
            .find(|(_, e)| e.node_id == self.node_id)
        else {
            return Ok(None);
        };
        if !entry.has_wireguard() {
            return Ok(None);
        }
        let at = format!("data.net_resources[{i}]");
        let refuse = |field: &str, m: String| ProvisionError::Refused(format!("{at}.{field}: {m}"));
        let key = self.open_key(entry, &at)?;
        let port = entry.wireguard_listen_port;
        if port < 1024 {
            return Err(refuse(
                "wireguard_listen_port",
                format!("{port} is not in 1024-65535"),
            ));
        }
        if entry.peers.len() > MAX_PEERS {
            return Err(refuse("peers", format!("more than {MAX_PEERS} peers")));
        }
        let range = n
            .validate()
            .map_err(|e| ProvisionError::Refused(e.to_string()))?;
        let total: usize = entry.peers.iter().map(|p| p.allowed_ips.len()).sum();
        if total > MAX_ROUTES {
            return Err(refuse(
                "peers",
                format!("{total} allowed_ips in all; at most {MAX_ROUTES}"),
            ));
        }
        let host = self.host_net()?;
        let mut peers = Vec::new();
        let mut seen: Vec<Ipv4Net> = Vec::new();
        for (j, p) in entry.peers.iter().enumerate() {
            let pat = format!("peers[{j}]");
            let public_key = parse_key(&p.wireguard_public_key).ok_or_else(|| {
                refuse(
                    &format!("{pat}.wireguard_public_key"),
                    "is not a 32-byte key in base64".into(),
                )
            })?;
            if !p.subnet.is_empty() && p.subnet.parse::<Ipv4Net>().is_err() {
                return Err(refuse(
                    &format!("{pat}.subnet"),
                    format!("{:?} is not an IPv4 CIDR", p.subnet),
                ));
            }
            if p.allowed_ips.is_empty() || p.allowed_ips.len() > MAX_ALLOWED_IPS {
                return Err(refuse(
                    &format!("{pat}.allowed_ips"),
                    format!("needs 1 to {MAX_ALLOWED_IPS} CIDRs"),
                ));
            }
            let mut allowed = Vec::new();
            for a in &p.allowed_ips {
                let f = format!("{pat}.allowed_ips");
                let net: Ipv4Net = a
                    .parse()
                    .map_err(|_| refuse(&f, format!("{a:?} is not an IPv4 CIDR")))?;
                let net = net.trunc();
                if !range.contains(&net) {
                    return Err(refuse(&f, format!("{net} is outside ip_range {range}")));
                }
                if net.contains(&sub) || sub.contains(&net) {
                    return Err(refuse(
                        &f,
                        format!("{net} overlaps this node's subnet {sub}"),
                    ));
                }
                if let Some(o) = seen.iter().find(|o| o.contains(&net) || net.contains(*o)) {
                    return Err(refuse(&f, format!("{net} overlaps {o} of another peer")));
                }
                self.check_host_in(net, docker_nets, &host).map_err(|e| {
                    let m = e.to_string();
                    let m = m.strip_prefix("data.net_resources: ").unwrap_or(&m);
                    refuse(&f, m.replacen("subnet", "range", 1))
                })?;
                seen.push(net);
                allowed.push(net);
            }
            let endpoint = if p.endpoint.is_empty() {
                None
            } else {
                Some(
                    resolve_endpoint(&p.endpoint)
                        .await
                        .map_err(|m| refuse(&format!("{pat}.endpoint"), m))?,
                )
            };
            peers.push(PeerSpec {
                public_key,
                allowed_ips: allowed,
                endpoint,
            });
        }
        Ok(Some(WgPlan {
            key,
            listen_port: port,
            peers,
        }))
    }

    /// Open this entry's sealed private key; check it against its public key.
    fn open_key(&self, entry: &NetResource, at: &str) -> Result<WgKey, ProvisionError> {
        let field = format!("{at}.wireguard_private_key_encrypted");
        let refuse = |m: String| ProvisionError::Refused(format!("{field}: {m}"));
        if entry.wireguard_private_key_encrypted.is_empty() {
            return Err(refuse("is required with the other WireGuard fields".into()));
        }
        let node = self
            .node_key
            .as_ref()
            .ok_or_else(|| refuse("this node cannot open sealed keys".into()))?;
        let secret = node
            .open_sealed(&field, &entry.wireguard_private_key_encrypted)
            .map_err(|e| ProvisionError::Refused(e.to_string()))?;
        let key = WgKey(
            parse_key(secret.expose())
                .ok_or_else(|| refuse("does not open to a 32-byte key in base64".into()))?,
        );
        if !entry.wireguard_public_key.is_empty() {
            let want = parse_key(&entry.wireguard_public_key).ok_or_else(|| {
                ProvisionError::Refused(format!(
                    "{at}.wireguard_public_key: is not a 32-byte key in base64"
                ))
            })?;
            let secret = boringtun::x25519::StaticSecret::from(key.0);
            if boringtun::x25519::PublicKey::from(&secret).to_bytes() != want {
                return Err(ProvisionError::Refused(format!(
                    "{at}.wireguard_public_key: does not match the sealed private key"
                )));
            }
        }
        Ok(key)
    }

    /// Bring the tunnel of `plan` up on the bridge of Docker network `net`.
    async fn tunnel_up(
        &self,
        r: &Reservation,
        net: &NetworkInfo,
        sub: Ipv4Net,
        plan: WgPlan,
    ) -> Result<(), ProvisionError> {
        if net.id.len() < 12 {
            return Err(ProvisionError::Node(format!(
                "network of reservation {}: docker gave no id",
                r.id
            )));
        }
        let spec = TunnelSpec {
            iface: wireguard::iface_name(&net.name),
            bridge: format!("br-{}", &net.id[..12]),
            subnet: sub,
            key: plan.key,
            listen_port: plan.listen_port,
            peers: plan.peers,
        };
        let iface = spec.iface.clone();
        self.tunnels.up(spec).await.map_err(|e| {
            ProvisionError::Refused(format!(
                "data.net_resources: wireguard tunnel of reservation {}: {e}",
                r.id
            ))
        })?;
        tracing::info!(reservation = %r.id, interface = %iface, mode = %self.tunnels.mode(), "wireguard tunnel up");
        Ok(())
    }

    /// Name, label and filter objects in this node scope (default:
    /// unscoped, [`Names::unscoped`]).
    pub fn with_names(mut self, names: Names) -> Self {
        self.names = names;
        self
    }

    /// Subnets must lie in one of these ranges (default [`DEFAULT_POOL`]).
    pub fn with_pool(mut self, pool: Vec<Ipv4Net>) -> Self {
        self.pool = pool;
        self
    }

    /// Where the host's routes and addresses come from (default: `/proc`).
    pub fn with_host_view(mut self, host: HostView) -> Self {
        self.host = host;
        self
    }

    /// Refuse a subnet in a reserved range, outside the pool, or over a
    /// route or address of the host. `docker_nets` are every network of
    /// the engine: their bridges' routes are theirs, not the host's.
    fn check_host(&self, sub: Ipv4Net, docker_nets: &[NetworkInfo]) -> Result<(), ProvisionError> {
        self.check_host_in(sub, docker_nets, &self.host_net()?)
    }

    /// The host's routes and addresses, from `/proc` or the fixed view.
    fn host_net(&self) -> Result<HostNet, ProvisionError> {
        match &self.host {
            HostView::Fixed(h) => Ok(h.clone()),
            HostView::Live => HostNet::read().map_err(ProvisionError::Node),
        }
    }

    /// [`Self::check_host`] against routes and addresses read once.
    fn check_host_in(
        &self,
        sub: Ipv4Net,
        docker_nets: &[NetworkInfo],
        host: &HostNet,
    ) -> Result<(), ProvisionError> {
        let refuse = |m: String| Err(ProvisionError::Refused(format!("data.net_resources: {m}")));
        let overlaps = |a: &Ipv4Net, b: &Ipv4Net| a.contains(b) || b.contains(a);
        for (range, what) in RESERVED {
            let range: Ipv4Net = range.parse().expect("valid reserved range");
            if overlaps(&range, &sub) {
                return refuse(format!("subnet {sub} overlaps the {what} {range}"));
            }
        }
        if !self.pool.iter().any(|p| p.contains(&sub)) {
            let pool: Vec<String> = self.pool.iter().map(|p| p.to_string()).collect();
            return refuse(format!(
                "subnet {sub} is outside this node's network pool {}",
                pool.join(", ")
            ));
        }
        // Docker names a bridge `br-` and the first 12 characters of its
        // network id; those routes are checked as Docker networks.
        let bridges: BTreeSet<String> = docker_nets
            .iter()
            .filter(|n| n.id.len() >= 12)
            .map(|n| format!("br-{}", &n.id[..12]))
            .collect();
        if let Some((r, dev)) = host
            .routes
            .iter()
            .find(|(r, dev)| !bridges.contains(dev) && overlaps(r, &sub))
        {
            return refuse(format!("subnet {sub} overlaps the host route {r} ({dev})"));
        }
        let docker_subnets: Vec<Ipv4Net> =
            docker_nets.iter().flat_map(|n| n.ipv4_subnets()).collect();
        if let Some(a) = host
            .addrs
            .iter()
            .find(|a| sub.contains(*a) && !docker_subnets.iter().any(|d| d.contains(*a)))
        {
            return refuse(format!("subnet {sub} holds the host address {a}"));
        }
        Ok(())
    }

    /// This node's subnet of `n`, checked against `ip_range` and size.
    fn subnet(&self, n: &Network) -> Result<Ipv4Net, ProvisionError> {
        let refused = |e: reservation::Error| ProvisionError::Refused(e.to_string());
        let range = n.validate().map_err(refused)?;
        let sub = n.subnet_for(&self.node_id).map_err(refused)?;
        if !range.contains(&sub) {
            return Err(ProvisionError::Refused(format!(
                "data.net_resources: subnet {sub} of this node is outside ip_range {range}"
            )));
        }
        if sub.prefix_len() > 30 {
            return Err(ProvisionError::Refused(format!(
                "data.net_resources: subnet {sub} is too small (at most /30: a gateway and one container)"
            )));
        }
        Ok(sub.trunc())
    }

    /// Refuse a subnet overlapping any network already on this node.
    fn check_overlap(
        &self,
        r: &Reservation,
        sub: Ipv4Net,
        networks: &[NetworkInfo],
    ) -> Result<(), ProvisionError> {
        for other in networks {
            let Some(o) = other
                .ipv4_subnets()
                .into_iter()
                .find(|o| o.contains(&sub) || sub.contains(o))
            else {
                continue;
            };
            let is_agent = label(&other.labels, LABEL_TYPE) == WorkloadType::Network.as_str();
            let msg = if !is_agent {
                format!(
                    "subnet {sub} overlaps docker network {} ({o}) on this node",
                    other.name
                )
            } else if label(&other.labels, LABEL_USER) == r.user_id {
                format!(
                    "subnet {sub} overlaps your network {:?} ({o}, reservation {}) on this node",
                    label(&other.labels, LABEL_NETWORK_NAME),
                    label(&other.labels, LABEL_RESERVATION)
                )
            } else {
                format!(
                    "subnet {sub} overlaps network {} ({o}) of another user on this node",
                    other.name
                )
            };
            return Err(ProvisionError::Refused(msg));
        }
        Ok(())
    }

    /// A network without a tunnel, or whose tunnel runs.
    fn tunnel_ok(&self, n: &NetworkInfo) -> bool {
        !n.labels.contains_key(LABEL_WIREGUARD)
            || self.tunnels.is_up(&wireguard::iface_name(&n.name))
    }

    async fn remove(&self, name: &str, id: &str) -> Result<(), ProvisionError> {
        let filter = ContainerFilter {
            network: Some(name.to_string()),
            ..Default::default()
        };
        if let Some(who) = crate::docker::users_of(self.docker.as_ref(), &filter).await? {
            return Err(ProvisionError::InUse(format!(
                "network of reservation {id} still has container {who} attached; it is removed once that is gone"
            )));
        }
        let iface = wireguard::iface_name(name);
        let info = self.docker.inspect_network(name).await?;
        // The reservations it replaced end with it: recorded before it
        // goes, so a crash in between still leaves them ended.
        if let Some(h) = info.as_ref().and_then(|n| self.holder(n)) {
            if !h.replaced.is_empty() {
                let mut ended = self.ended(name);
                ended.retain(|x| !h.replaced.contains(x));
                ended.extend(h.replaced);
                self.write_ended(name, ended)?;
            }
        }
        let labelled = info
            .as_ref()
            .is_some_and(|n| n.labels.contains_key(LABEL_WIREGUARD));
        if labelled || self.tunnels.is_up(&iface) {
            self.tunnels.down(&iface).await.map_err(|e| {
                ProvisionError::Node(format!(
                    "wireguard tunnel of reservation {id}: cannot remove it: {e}"
                ))
            })?;
            tracing::info!(interface = %iface, reservation = %id, "wireguard tunnel removed");
        }
        if self.docker.remove_network(name).await? {
            tracing::info!(network = %name, reservation = %id, "network removed");
        }
        if let Some(info) = info {
            self.clear_holder(&info);
        }
        Ok(())
    }

    /// The agent's networks on this node.
    async fn ours(&self) -> Result<Vec<NetworkInfo>, ProvisionError> {
        Ok(self
            .docker
            .list_networks()
            .await?
            .into_iter()
            .filter(|n| label(&n.labels, LABEL_TYPE) == WorkloadType::Network.as_str())
            .filter(|n| self.names.is_ours(&n.labels))
            .collect())
    }

    /// `r` takes over the network `existing` its user holds under another
    /// reservation `owner` (see the module doc): same subnet, WireGuard on
    /// both or neither; the tunnel is reconfigured in place, the bridge and
    /// its containers stay.
    async fn take_over(
        &self,
        r: &Reservation,
        n: &Network,
        sub: Ipv4Net,
        existing: &NetworkInfo,
        owner: &str,
    ) -> Result<serde_json::Value, ProvisionError> {
        let delete_first = |why: String| {
            ProvisionError::Refused(format!(
                "network {:?} already exists on this node (reservation {owner}){why}; delete reservation {owner} first",
                n.name
            ))
        };
        if self.holders.is_none() {
            return Err(delete_first(String::new()));
        }
        let have: Vec<Ipv4Net> = existing.ipv4_subnets().iter().map(|s| s.trunc()).collect();
        if have != [sub] {
            let have: Vec<String> = have.iter().map(|s| s.to_string()).collect();
            return Err(delete_first(format!(
                " with subnet {}; a new reservation takes it over only with the same subnet, not {sub}",
                have.join(", ")
            )));
        }
        let networks = self.docker.list_networks().await?;
        let plan = self.wireguard_plan(n, sub, &networks).await?;
        let tunnelled = existing.labels.contains_key(LABEL_WIREGUARD);
        if plan.is_some() != tunnelled {
            let (had, has) = if tunnelled {
                ("WireGuard fields", "none")
            } else {
                ("no WireGuard fields", "some")
            };
            return Err(delete_first(format!(
                " with {had}; a new reservation with {has} cannot take it over"
            )));
        }
        let before = self.holder(existing);
        let mut replaced = before
            .as_ref()
            .map(|h| h.replaced.clone())
            .unwrap_or_default();
        replaced.retain(|x| x.id != r.id);
        replaced.push(Replaced {
            id: owner.to_string(),
            signature: match &before {
                Some(b) => b.signature.clone(),
                None => label(&existing.labels, names::LABEL_SIGNATURE).to_string(),
            },
        });
        let holder = Holder {
            id: r.id.clone(),
            signature: signature_hash(r),
            replaced,
        };
        self.write_holder(existing, &holder)?;
        if let Some(plan) = plan {
            if let Err(e) = self.tunnel_up(r, existing, sub, plan).await {
                // The old reservation holds the network again. Refused by
                // the pre-flight, its tunnel runs on; failed after that
                // (the new interface), the tunnels brought the old one back
                // as it ran, or say in `e` that they could not.
                let undo = match &before {
                    Some(b) => self.write_holder(existing, b),
                    None => {
                        self.clear_holder(existing);
                        Ok(())
                    }
                };
                if let Err(undo) = undo {
                    tracing::warn!(reservation = %r.id, error = %undo, "restoring the holder record of a refused takeover");
                }
                return Err(match e {
                    ProvisionError::Refused(m) => ProvisionError::Refused(format!(
                        "{m}; the network stays with reservation {owner}"
                    )),
                    e => e,
                });
            }
        }
        tracing::info!(reservation = %r.id, replaced = %owner, network = %existing.name, "network taken over by a new reservation of its name");
        Ok(serde_json::Value::Null)
    }
}

#[async_trait]
impl Plugin for NetworkProvisioner {
    type Data = Network;

    fn build(s: &Setup) -> Self {
        // The tunnels' chains carry the node scope, so the sweep at start
        // never takes another agent's tunnels on the same host.
        let owner = s
            .options
            .names
            .node_labels()
            .into_iter()
            .next()
            .map_or_else(|| "unscoped".to_string(), |(_, node)| node);
        NetworkProvisioner::new(s.docker.clone(), s.node.id())
            .with_tunnels(Arc::new(wireguard::HostTunnels::new().owned_by(&owner)))
            .with_pool(s.options.tenants.network_pool.clone())
            .with_names(s.options.names.clone())
            .with_identity(s.node.clone())
            .with_holders(s.root.join("networks"))
    }

    /// One network.
    fn tenancy(_n: &Network) -> Tenancy {
        Tenancy {
            networks: 1,
            ..Tenancy::default()
        }
    }

    fn objects(names: &Names, r: &Reservation, n: &Network) -> Vec<String> {
        vec![names.network_name(&r.user_id, &n.name)]
    }

    async fn provision(
        &self,
        r: &Reservation,
        n: &Network,
    ) -> Result<serde_json::Value, ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        let sub = self.subnet(n)?;
        let name = self.names.network_name(&r.user_id, &n.name);

        if self.ended_with(&name, r) {
            tracing::info!(reservation = %r.id, network = %name, "network ended with the reservation that replaced this one; nothing to do");
            return Ok(serde_json::Value::Null);
        }
        if let Some(existing) = self.docker.inspect_network(&name).await? {
            match self.replaced(&existing, r) {
                Some(true) => {
                    tracing::info!(reservation = %r.id, network = %name, "network replaced by a newer reservation of its name; nothing to do");
                    return Ok(serde_json::Value::Null);
                }
                Some(false) => return Err(names::held_error(r, "network")),
                None => {}
            }
            let owner = self.holder_id(&existing);
            if self.holds(&existing, r) {
                tracing::info!(reservation = %r.id, network = %name, "network already exists; reusing it");
                // Its tunnel died with the previous agent: bring it back.
                let iface = wireguard::iface_name(&name);
                if existing.labels.contains_key(LABEL_WIREGUARD) && !self.tunnels.is_up(&iface) {
                    let networks = self.docker.list_networks().await?;
                    if let Some(plan) = self.wireguard_plan(n, sub, &networks).await? {
                        self.tunnel_up(r, &existing, sub, plan).await?;
                    }
                }
                return Ok(serde_json::Value::Null);
            }
            let users_own = label(&existing.labels, LABEL_USER) == r.user_id
                && label(&existing.labels, LABEL_TYPE) == WorkloadType::Network.as_str()
                && self.names.is_ours(&existing.labels)
                && owner != r.id;
            if self.names.held_by_another(&existing.labels, r) && !users_own {
                return Err(names::held_error(r, "network"));
            }
            if users_own {
                return self.take_over(r, n, sub, &existing, &owner).await;
            }
            tracing::warn!(
                reservation = %r.id,
                network = %name,
                "a network under this reservation's name was not made for it; replacing it"
            );
            self.remove(&name, &r.id).await?;
        }
        let networks = self.docker.list_networks().await?;
        self.check_host(sub, &networks)?;
        self.check_overlap(r, sub, &networks)?;

        let gateway = sub.hosts().next().ok_or_else(|| {
            ProvisionError::Refused(format!(
                "data.net_resources: subnet {sub} has no host address"
            ))
        })?;
        let plan = self.wireguard_plan(n, sub, &networks).await?;
        let mut labels = self.names.labels(r, WorkloadType::Network);
        labels.insert(LABEL_NETWORK_NAME.into(), n.name.clone());
        if plan.is_some() {
            labels.insert(LABEL_WIREGUARD.into(), wireguard::iface_name(&name));
        }
        let spec = NetworkSpec {
            name: name.clone(),
            subnet: sub,
            gateway,
            labels,
        };
        if let Err(e) = self.docker.create_network(&spec).await {
            // A concurrent run may have made it: reuse that one if ours.
            match self.docker.inspect_network(&name).await? {
                Some(n) if self.names.adoptable(&n.labels, r) => {}
                _ => return Err(e.into()),
            }
        }
        if let Some(plan) = plan {
            let made = self.docker.inspect_network(&name).await?.ok_or_else(|| {
                ProvisionError::Node(format!(
                    "network of reservation {} vanished after its creation",
                    r.id
                ))
            })?;
            if let Err(e) = self.tunnel_up(r, &made, sub, plan).await {
                if let Err(undo) = self.remove(&name, &r.id).await {
                    tracing::warn!(reservation = %r.id, error = %undo, "removing the network of a failed tunnel");
                }
                return Err(e);
            }
        }
        tracing::info!(reservation = %r.id, network = %name, subnet = %sub, "network provisioned");
        Ok(serde_json::Value::Null)
    }

    async fn decommission(&self, r: &Reservation, n: &Network) -> Result<(), ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        let name = self.names.network_name(&r.user_id, &n.name);
        // Replaced, and the network ended with its holder: only the record
        // of this one goes (a newer network of the name is not its own).
        if self.ended_with(&name, r) {
            return self.forget_ended(&r.id, Some(&signature_hash(r)));
        }
        match self.docker.inspect_network(&name).await? {
            None => Ok(()),
            // Replaced by a newer reservation of the name: the network is
            // that one's now; only the record of this one goes.
            Some(e) if self.replaced(&e, r) == Some(true) => {
                tracing::info!(reservation = %r.id, network = %name, "replaced network reservation ended; the network stays with its successor");
                self.forget_replaced(&e, &r.id)
            }
            // Another reservation's network of the same name (this one was
            // refused, or was handed a replaced one's id): not ours to
            // remove.
            Some(e) if !self.removable_by(&e, r) => Ok(()),
            Some(_) => self.remove(&name, &r.id).await,
        }
    }

    async fn exists(&self, r: &Reservation, n: &Network) -> Result<bool, ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        let name = self.names.network_name(&r.user_id, &n.name);
        if self.ended_with(&name, r) {
            return Ok(true);
        }
        Ok(self.docker.inspect_network(&name).await?.is_some_and(|e| {
            (self.holder_id(&e) == r.id && self.tunnel_ok(&e)) || self.replaced(&e, r) == Some(true)
        }))
    }

    async fn present(&self) -> Result<Option<std::collections::HashSet<String>>, ProvisionError> {
        // The labels (or the holder record) carry the reservation; a
        // network whose tunnel is not running (the agent restarted) is not
        // present. Replaced reservations are, as long as the network is.
        let mut ids = std::collections::HashSet::new();
        for n in self.ours().await? {
            let (holder, replaced) = self.held(&n);
            if self.tunnel_ok(&n) {
                ids.insert(holder);
            }
            ids.extend(replaced);
        }
        for (_, replaced) in self.all_ended() {
            ids.extend(replaced.into_iter().map(|x| x.id));
        }
        ids.remove("");
        Ok(Some(ids))
    }

    /// The tunnels' leftovers: interfaces, rules, tables and chains of ours
    /// that no network here accounts for (deleted while the agent was down,
    /// a crash in the middle of a provisioning).
    async fn sweep_leftovers(&self) -> Result<(), ProvisionError> {
        let keep: BTreeSet<String> = self
            .ours()
            .await?
            .iter()
            .filter(|n| n.labels.contains_key(LABEL_WIREGUARD))
            .map(|n| wireguard::iface_name(&n.name))
            .collect();
        let gone =
            self.tunnels.sweep(&keep).await.map_err(|e| {
                ProvisionError::Node(format!("cannot sweep wireguard leftovers: {e}"))
            })?;
        if !gone.is_empty() {
            tracing::info!(removed = ?gone, "reconciliation: removed wireguard leftovers no network accounts for");
        }
        Ok(())
    }

    /// The reservations holding our networks and those they replaced,
    /// and those replaced on networks that ended ([`Ended`]).
    async fn list_labelled(&self) -> Result<Vec<String>, ProvisionError> {
        let nets = self.ours().await?;
        let mut ids = BTreeSet::new();
        for n in &nets {
            let (holder, replaced) = self.held(n);
            ids.insert(holder);
            ids.extend(replaced);
        }
        for (_, replaced) in self.all_ended() {
            ids.extend(replaced.into_iter().map(|x| x.id));
        }
        ids.remove("");
        Ok(ids.into_iter().collect())
    }

    async fn remove_labelled(&self, id: &str) -> Result<(), ProvisionError> {
        for n in self.ours().await? {
            let (holder, replaced) = self.held(&n);
            if holder == id {
                self.remove(&n.name, id).await?;
            } else if replaced.iter().any(|x| x == id) {
                self.forget_replaced(&n, id)?;
            }
        }
        self.forget_ended(id, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
br-0123456789ab\t0001400A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

    const TRIE: &str =
        "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     \
+-- 127.0.0.0/8 2 0 2\n        |-- 127.0.0.1\n           /32 host LOCAL\n     \
|-- 192.0.2.2\n        /32 host LOCAL\n     |-- 10.64.1.1\n        /32 host LOCAL\n     \
|-- 100.64.0.5\n        /32 host LOCAL\n     |-- 192.0.2.255\n        /32 link BROADCAST\n";

    fn host() -> HostNet {
        HostNet {
            routes: parse_routes(ROUTE),
            addrs: parse_local_addrs(TRIE),
        }
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn proc_files_parse() {
        let h = host();
        let r: Vec<String> = h.routes.iter().map(|(n, d)| format!("{n} {d}")).collect();
        assert_eq!(
            r,
            vec![
                "172.17.0.0/16 docker0",
                "192.0.2.0/24 eth0",
                "10.64.1.0/24 br-0123456789ab"
            ]
        );
        let a: Vec<String> = h.addrs.iter().map(|a| a.to_string()).collect();
        assert_eq!(a, vec!["10.64.1.1", "100.64.0.5", "127.0.0.1", "192.0.2.2"]);
        // This machine's own files parse too.
        HostNet::read().unwrap();
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn host_ranges_routes_and_addresses_are_refused_by_name() {
        let fake = Arc::new(crate::FakeDocker::new());
        let p = NetworkProvisioner::new(fake, "node")
            .with_pool(
                parse_pool("10.0.0.0/8, 172.16.0.0/12,192.168.0.0/16,100.64.0.0/10").unwrap(),
            )
            .with_host_view(HostView::Fixed(host()));
        let agent_net = NetworkInfo {
            id: "0123456789abcdef".into(),
            name: "agent-net-x".into(),
            subnets: vec!["10.64.1.0/24".into()],
            ..Default::default()
        };
        let check = |s: &str| {
            p.check_host(s.parse().unwrap(), std::slice::from_ref(&agent_net))
                .map_err(|e| e.to_string())
        };
        let cases = [
            ("172.17.0.0/24", "data.net_resources: subnet 172.17.0.0/24 overlaps the host route 172.17.0.0/16 (docker0)"),
            ("172.16.0.0/12", "data.net_resources: subnet 172.16.0.0/12 overlaps the host route 172.17.0.0/16 (docker0)"),
            ("127.0.0.0/24", "data.net_resources: subnet 127.0.0.0/24 overlaps the loopback range 127.0.0.0/8"),
            ("169.254.1.0/24", "data.net_resources: subnet 169.254.1.0/24 overlaps the link-local range 169.254.0.0/16"),
            ("224.1.0.0/24", "data.net_resources: subnet 224.1.0.0/24 overlaps the multicast range 224.0.0.0/4"),
            ("11.0.0.0/24", "data.net_resources: subnet 11.0.0.0/24 is outside this node's network pool 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10"),
            ("192.0.2.0/28", "data.net_resources: subnet 192.0.2.0/28 is outside this node's network pool 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10"),
            ("100.64.0.0/24", "data.net_resources: subnet 100.64.0.0/24 holds the host address 100.64.0.5"),
        ];
        for (sub, want) in cases {
            assert_eq!(check(sub).unwrap_err(), want, "{sub}");
        }
        // The agent's own bridge is a Docker network, not a host route:
        // left to the Docker overlap check. A free 10.x subnet passes.
        check("10.64.1.0/24").unwrap();
        check("10.65.0.0/16").unwrap();
        // Without that Docker network, its route counts as the host's.
        let e = p
            .check_host("10.64.1.0/25".parse().unwrap(), &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("host route 10.64.1.0/24 (br-0123456789ab)"),
            "{e}"
        );
        assert!(parse_pool("10.0.0.0/8,nope")
            .unwrap_err()
            .contains("\"nope\""));
        assert!(parse_pool(" , ").is_err());
    }
}
