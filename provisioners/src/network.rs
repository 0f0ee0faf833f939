//! The `network` workload type, all of it ([`Plugin`]): one Docker bridge
//! network per node-local network id, named
//! `agent-net-<network_local_id(user_id, name)>`, counted against its
//! user's networks.
//!
//! The subnet is this node's `net_resources` entry. Refused: no entry for
//! this node, a subnet outside `ip_range`, a subnet overlapping any other
//! network on this node (another user's, the user's own other network, or
//! Docker's own bridges), and a second reservation of a network the user
//! already has here.
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
//! very signed reservation ([`names::adoptable`]); the user's own network
//! of another reservation refuses the duplicate; anything else there (a
//! hand-made object, another owner's) is removed and made afresh.
//!
//! Docker's bridge driver isolates bridge networks from
//! each other (its DOCKER-ISOLATION iptables chains), so two users'
//! networks cannot reach each other; the integration tests prove it.
//! Result `data`: `null`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use reservation::workloads::Network;
use reservation::{Reservation, WorkloadType};

use crate::charge::Tenancy;
use crate::docker::{ContainerFilter, Docker, NetworkInfo, NetworkSpec};
use crate::names::{self, label, Names, LABEL_NETWORK_NAME};
use crate::plugin::{Plugin, Setup};
use crate::{ProvisionError, LABEL_RESERVATION, LABEL_TYPE, LABEL_USER};

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
}

impl NetworkProvisioner {
    pub fn new(docker: Arc<dyn Docker>, node_id: impl Into<String>) -> Self {
        Self {
            docker,
            node_id: node_id.into(),
            pool: parse_pool(DEFAULT_POOL).expect("valid default pool"),
            host: HostView::Live,
            names: Names::unscoped(),
        }
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
        let host = match &self.host {
            HostView::Fixed(h) => h.clone(),
            HostView::Live => HostNet::read().map_err(ProvisionError::Node)?,
        };
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
        if self.docker.remove_network(name).await? {
            tracing::info!(network = %name, reservation = %id, "network removed");
        }
        Ok(())
    }
}

#[async_trait]
impl Plugin for NetworkProvisioner {
    type Data = Network;

    fn build(s: &Setup) -> Self {
        NetworkProvisioner::new(s.docker.clone(), s.node.id())
            .with_pool(s.options.tenants.network_pool.clone())
            .with_names(s.options.names.clone())
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

        if let Some(existing) = self.docker.inspect_network(&name).await? {
            let owner = label(&existing.labels, LABEL_RESERVATION);
            if self.names.adoptable(&existing.labels, r) {
                tracing::info!(reservation = %r.id, network = %name, "network already exists; reusing it");
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
                return Err(ProvisionError::Refused(format!(
                    "network {:?} already exists on this node (reservation {owner})",
                    n.name
                )));
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
        let mut labels = self.names.labels(r, WorkloadType::Network);
        labels.insert(LABEL_NETWORK_NAME.into(), n.name.clone());
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
        tracing::info!(reservation = %r.id, network = %name, subnet = %sub, "network provisioned");
        Ok(serde_json::Value::Null)
    }

    async fn decommission(&self, r: &Reservation, n: &Network) -> Result<(), ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        let name = self.names.network_name(&r.user_id, &n.name);
        match self.docker.inspect_network(&name).await? {
            None => Ok(()),
            // Another reservation's network of the same name (this one was
            // refused as a duplicate): not ours to remove.
            Some(e)
                if label(&e.labels, LABEL_RESERVATION) != r.id
                    || self.names.held_by_another(&e.labels, r) =>
            {
                Ok(())
            }
            Some(_) => self.remove(&name, &r.id).await,
        }
    }

    async fn exists(&self, r: &Reservation, n: &Network) -> Result<bool, ProvisionError> {
        names::check_id("reservation id", &r.id)?;
        let name = self.names.network_name(&r.user_id, &n.name);
        Ok(self
            .docker
            .inspect_network(&name)
            .await?
            .is_some_and(|e| label(&e.labels, LABEL_RESERVATION) == r.id))
    }

    async fn present(&self) -> Result<Option<std::collections::HashSet<String>>, ProvisionError> {
        // The labels carry the reservation; the name must be the one the
        // user's (user_id, name) maps to, which list_labelled already keeps.
        Ok(Some(
            Plugin::list_labelled(self).await?.into_iter().collect(),
        ))
    }

    async fn list_labelled(&self) -> Result<Vec<String>, ProvisionError> {
        let ids: BTreeSet<String> = self
            .docker
            .list_networks()
            .await?
            .into_iter()
            .filter(|n| label(&n.labels, LABEL_TYPE) == WorkloadType::Network.as_str())
            .filter(|n| self.names.is_ours(&n.labels))
            .map(|n| label(&n.labels, LABEL_RESERVATION).to_string())
            .filter(|id| !id.is_empty())
            .collect();
        Ok(ids.into_iter().collect())
    }

    async fn remove_labelled(&self, id: &str) -> Result<(), ProvisionError> {
        for n in self.docker.list_networks().await? {
            if label(&n.labels, LABEL_TYPE) == WorkloadType::Network.as_str()
                && label(&n.labels, LABEL_RESERVATION) == id
                && self.names.is_ours(&n.labels)
            {
                self.remove(&n.name, id).await?;
            }
        }
        Ok(())
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
