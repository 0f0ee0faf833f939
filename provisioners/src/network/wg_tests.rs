//! Unit tests of the network plug-in's WireGuard side over the recording
//! fakes: what a tunnel is made from, restart and removal, and one attack
//! per defence of the fields a hostile tenant controls.

use std::sync::Arc;

use base64::Engine as _;
use reservation::workloads::Network;
use reservation::{seal_for, Identity, Reservation, Workload, WorkloadType};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::wireguard::RecordingTunnels;
use super::*;
use crate::docker::FakeDocker;

fn b64(k: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// A key pair as `wg genkey | wg pubkey` would give: (private, public).
fn keypair(seed: u8) -> ([u8; 32], [u8; 32]) {
    let secret = boringtun::x25519::StaticSecret::from([seed; 32]);
    let public = boringtun::x25519::PublicKey::from(&secret).to_bytes();
    (secret.to_bytes(), public)
}

struct Set {
    fake: Arc<FakeDocker>,
    tunnels: Arc<RecordingTunnels>,
    node: Arc<Identity>,
    net: NetworkProvisioner,
    holders: tempfile::TempDir,
}

fn set() -> Set {
    let fake = Arc::new(FakeDocker::new());
    let tunnels = Arc::new(RecordingTunnels::default());
    let node = Arc::new(Identity::generate());
    let host = HostNet {
        routes: vec![
            ("192.0.2.0/24".parse().unwrap(), "eth0".into()),
            ("10.200.0.0/16".parse().unwrap(), "eth1".into()),
        ],
        addrs: vec!["192.0.2.2".parse().unwrap(), "10.66.0.1".parse().unwrap()],
    };
    let holders = tempfile::tempdir().unwrap();
    let net = NetworkProvisioner::new(fake.clone(), node.id())
        .with_host_view(HostView::Fixed(host))
        .with_identity(node.clone())
        .with_tunnels(tunnels.clone())
        .with_holders(holders.path());
    Set {
        fake,
        tunnels,
        node,
        net,
        holders,
    }
}

/// A network `name` whose entry for `s`'s node has a tunnel to one peer.
fn wg_data(s: &Set, name: &str, entry: Value) -> Value {
    let (private, public) = keypair(1);
    let (_, peer) = keypair(2);
    let mut e = json!({
        "node_id": s.node.id(),
        "subnet": "10.77.1.0/24",
        "wireguard_private_key_encrypted": seal_for(s.node.id(), b64(&private).as_bytes()).unwrap(),
        "wireguard_public_key": b64(&public),
        "wireguard_listen_port": 51820,
        "peers": [{"subnet": "10.77.2.0/24", "wireguard_public_key": b64(&peer),
                   "allowed_ips": ["10.77.2.0/24"], "endpoint": "192.0.2.9:51820"}]
    });
    for (k, v) in entry.as_object().unwrap() {
        e[k] = v.clone();
    }
    json!({"name": name, "ip_range": "10.0.0.0/8", "net_resources": [e]})
}

fn res(user: &Identity, id: &str, data: Value) -> (Reservation, Network) {
    let r = Reservation {
        id: id.into(),
        node_id: "node".into(),
        user_id: user.id().into(),
        kind: "network".into(),
        signature: format!("sig-{id}"),
        data: RawValue::from_string(data.to_string()).unwrap(),
        ..Default::default()
    };
    match Workload::parse(WorkloadType::Network, &r.data).unwrap() {
        Workload::Network(n) => (r, n),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn a_tunnel_is_made_from_the_fields_and_follows_the_network() {
    let s = set();
    let user = Identity::generate();
    let (r, n) = res(&user, "1-1", wg_data(&s, "mesh", json!({})));
    Plugin::provision(&s.net, &r, &n).await.unwrap();

    let name = s.net.names.network_name(&r.user_id, "mesh");
    let made = s.fake.inspect_network(&name).await.unwrap().unwrap();
    let iface = wireguard::iface_name(&name);
    assert_eq!(label(&made.labels, LABEL_WIREGUARD), iface);
    let spec = s.tunnels.up.lock().unwrap().get(&iface).cloned().unwrap();
    assert_eq!(spec.bridge, format!("br-{}", &made.id[..12]));
    assert_eq!(spec.subnet.to_string(), "10.77.1.0/24");
    assert_eq!(spec.listen_port, 51820);
    assert_eq!(spec.key.0, keypair(1).0, "the sealed key, opened");
    assert_eq!(spec.peers.len(), 1);
    assert_eq!(spec.peers[0].public_key, keypair(2).1);
    assert_eq!(spec.peers[0].allowed_ips[0].to_string(), "10.77.2.0/24");
    assert_eq!(
        spec.peers[0].endpoint.unwrap().to_string(),
        "192.0.2.9:51820"
    );
    assert!(!format!("{spec:?}").contains(&format!("{:?}", keypair(1).0)));
    assert!(Plugin::exists(&s.net, &r, &n).await.unwrap());

    // The agent restarted: the tunnel is gone, the bridge is not. The
    // network is not present, and provisioning again brings the tunnel back.
    s.tunnels.up.lock().unwrap().clear();
    assert!(!Plugin::exists(&s.net, &r, &n).await.unwrap());
    assert!(!Plugin::present(&s.net)
        .await
        .unwrap()
        .unwrap()
        .contains("1-1"));
    Plugin::provision(&s.net, &r, &n).await.unwrap();
    assert!(s.tunnels.is_up(&iface));
    assert!(Plugin::present(&s.net)
        .await
        .unwrap()
        .unwrap()
        .contains("1-1"));

    // Decommission takes the tunnel down with the bridge.
    Plugin::decommission(&s.net, &r, &n).await.unwrap();
    assert!(!s.tunnels.is_up(&iface));
    assert!(s.fake.inspect_network(&name).await.unwrap().is_none());
    let calls = s.tunnels.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            format!("up {iface} 51820 1"),
            format!("up {iface} 51820 1"),
            format!("down {iface}")
        ]
    );

    // A network without WireGuard fields never touches the tunnels.
    let (r2, n2) = res(
        &user,
        "2-1",
        json!({"name": "local", "ip_range": "10.0.0.0/8",
               "net_resources": [{"node_id": s.node.id(), "subnet": "10.78.1.0/24"}]}),
    );
    Plugin::provision(&s.net, &r2, &n2).await.unwrap();
    Plugin::decommission(&s.net, &r2, &n2).await.unwrap();
    assert_eq!(s.tunnels.calls.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_tunnel_that_fails_leaves_nothing() {
    let s = set();
    let user = Identity::generate();
    let (r, n) = res(&user, "1-1", wg_data(&s, "mesh", json!({})));
    *s.tunnels.fail_up.lock().unwrap() =
        Some("wireguard_listen_port 51820 is already in use on this node".into());
    let e = Plugin::provision(&s.net, &r, &n)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "data.net_resources: wireguard tunnel of reservation 1-1: wireguard_listen_port 51820 is already in use on this node"
    );
    assert!(
        s.fake.list_networks().await.unwrap().is_empty(),
        "bridge removed"
    );
    assert!(s.tunnels.up.lock().unwrap().is_empty());
}

/// Each hostile or broken field is refused by name before anything is made.
#[tokio::test]
async fn every_wireguard_field_is_checked_before_anything_is_made() {
    let s = set();
    let user = Identity::generate();
    let other = Identity::generate();
    let (_, peer) = keypair(2);
    let peer_with = |extra: Value| {
        let mut p = json!({"wireguard_public_key": b64(&peer), "allowed_ips": ["10.77.2.0/24"],
                           "endpoint": "192.0.2.9:51820"});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        json!({"peers": [p]})
    };
    let (_, wrong_public) = keypair(9);
    let cases: Vec<(Value, &str)> = vec![
        // Tunnel the host's default route, its LAN, its addresses, or
        // the tenant's own subnet.
        (peer_with(json!({"allowed_ips": ["0.0.0.0/0"]})),
         "data.net_resources[0].peers[0].allowed_ips: 0.0.0.0/0 is outside ip_range 10.0.0.0/8"),
        (peer_with(json!({"allowed_ips": ["10.200.1.0/24"]})),
         "data.net_resources[0].peers[0].allowed_ips: range 10.200.1.0/24 overlaps the host route 10.200.0.0/16 (eth1)"),
        (peer_with(json!({"allowed_ips": ["10.66.0.0/16"]})),
         "data.net_resources[0].peers[0].allowed_ips: range 10.66.0.0/16 holds the host address 10.66.0.1"),
        (peer_with(json!({"allowed_ips": ["10.77.0.0/16"]})),
         "data.net_resources[0].peers[0].allowed_ips: 10.77.0.0/16 overlaps this node's subnet 10.77.1.0/24"),
        (peer_with(json!({"allowed_ips": ["10.77.2.0/33"]})),
         "data.net_resources[0].peers[0].allowed_ips: \"10.77.2.0/33\" is not an IPv4 CIDR"),
        (peer_with(json!({"allowed_ips": []})),
         "data.net_resources[0].peers[0].allowed_ips: needs 1 to 64 CIDRs"),
        // Point the tunnel at the node itself, or at something not an address.
        (peer_with(json!({"endpoint": "127.0.0.1:22"})),
         "data.net_resources[0].peers[0].endpoint: 127.0.0.1:22 is not a peer's address"),
        (peer_with(json!({"endpoint": "0.0.0.0:51820"})),
         "data.net_resources[0].peers[0].endpoint: 0.0.0.0:51820 is not a peer's address"),
        (peer_with(json!({"endpoint": "x;reboot:1"})),
         "data.net_resources[0].peers[0].endpoint: \"x;reboot:1\" is not host:port"),
        (peer_with(json!({"endpoint": "192.0.2.9"})),
         "data.net_resources[0].peers[0].endpoint: \"192.0.2.9\" is not host:port"),
        (peer_with(json!({"wireguard_public_key": "bm90IGEga2V5"})),
         "data.net_resources[0].peers[0].wireguard_public_key: is not a 32-byte key in base64"),
        // Keys: sealed for another node, not a key, not the pair of the
        // public key given.
        (json!({"wireguard_private_key_encrypted": seal_for(other.id(), b64(&keypair(1).0).as_bytes()).unwrap()}),
         "sealed secret data.net_resources[0].wireguard_private_key_encrypted: cannot be opened with this node's key (sealed for another node, or corrupt)"),
        (json!({"wireguard_private_key_encrypted": seal_for(s.node.id(), b"short").unwrap()}),
         "data.net_resources[0].wireguard_private_key_encrypted: does not open to a 32-byte key in base64"),
        (json!({"wireguard_public_key": b64(&wrong_public)}),
         "data.net_resources[0].wireguard_public_key: does not match the sealed private key"),
        (json!({"wireguard_private_key_encrypted": ""}),
         "data.net_resources[0].wireguard_private_key_encrypted: is required with the other WireGuard fields"),
        // A privileged port (DNS, NTP...) of the host.
        (json!({"wireguard_listen_port": 53}),
         "data.net_resources[0].wireguard_listen_port: 53 is not in 1024-65535"),
    ];
    for (i, (entry, want)) in cases.into_iter().enumerate() {
        let (r, n) = res(&user, &format!("{}-1", i + 1), wg_data(&s, "mesh", entry));
        let e = Plugin::provision(&s.net, &r, &n).await.unwrap_err();
        assert!(matches!(e, ProvisionError::Refused(_)), "{e:?}");
        assert_eq!(e.to_string(), want);
        assert!(s.fake.list_networks().await.unwrap().is_empty(), "{want}");
        assert!(s.tunnels.calls.lock().unwrap().is_empty(), "{want}");
    }
    // Two peers may not claim the same range (one would silently win).
    let mut d = wg_data(&s, "mesh", json!({}));
    let p = d["net_resources"][0]["peers"][0].clone();
    let mut p2 = p.clone();
    p2["wireguard_public_key"] = json!(b64(&keypair(3).1));
    p2["allowed_ips"] = json!(["10.77.2.128/25"]);
    d["net_resources"][0]["peers"] = json!([p, p2]);
    let (r, n) = res(&user, "90-1", d);
    assert_eq!(
        Plugin::provision(&s.net, &r, &n).await.unwrap_err().to_string(),
        "data.net_resources[0].peers[1].allowed_ips: 10.77.2.128/25 overlaps 10.77.2.0/24 of another peer"
    );
}

/// A tenant cannot make the node spawn thousands of route changes.
#[tokio::test]
async fn routes_are_capped_per_network() {
    let s = set();
    let user = Identity::generate();
    let mut d = wg_data(&s, "mesh", json!({}));
    let peers: Vec<Value> = (0..5u8)
        .map(|i| {
            let ips: Vec<String> = (0..64)
                .map(|j| format!("10.{}.{j}.0/24", 100 + i))
                .collect();
            json!({"wireguard_public_key": b64(&keypair(10 + i).1), "allowed_ips": ips})
        })
        .collect();
    d["net_resources"][0]["peers"] = json!(peers);
    let (r, n) = res(&user, "1-1", d);
    assert_eq!(
        Plugin::provision(&s.net, &r, &n)
            .await
            .unwrap_err()
            .to_string(),
        "data.net_resources[0].peers: 320 allowed_ips in all; at most 256"
    );
    assert!(s.fake.list_networks().await.unwrap().is_empty());
}

/// The interface is named from the node-local id only: a hostile network
/// name never reaches a command line.
#[tokio::test]
async fn interface_names_never_come_from_user_strings() {
    let s = set();
    let user = Identity::generate();
    let (r, n) = res(
        &user,
        "1-1",
        wg_data(&s, "x; ip link del eth0 && $(reboot)", json!({})),
    );
    Plugin::provision(&s.net, &r, &n).await.unwrap();
    let up = s.tunnels.up.lock().unwrap();
    let iface = up.keys().next().unwrap();
    assert!(iface.starts_with("wg") && iface.len() == 15, "{iface}");
    assert!(iface.chars().all(|c| c.is_ascii_alphanumeric()), "{iface}");
}

/// The peers of `d`'s entry replaced by one peer of key `seed` routing `cidr`.
fn with_peer(mut d: Value, seed: u8, cidr: &str, port: u16) -> Value {
    d["net_resources"][0]["peers"] = json!([{"wireguard_public_key": b64(&keypair(seed).1),
        "allowed_ips": [cidr], "endpoint": "192.0.2.10:51820"}]);
    d["net_resources"][0]["wireguard_listen_port"] = json!(port);
    d
}

/// A set with user `user`'s network "mesh" made by reservation 1-1 (one
/// tunnel to the peer of key 2), its Docker name and its interface.
struct Mesh {
    s: Set,
    user: Identity,
    r1: Reservation,
    n1: Network,
    name: String,
    iface: String,
}

async fn mesh() -> Mesh {
    let s = set();
    let user = Identity::generate();
    let (r1, n1) = res(&user, "1-1", wg_data(&s, "mesh", json!({})));
    Plugin::provision(&s.net, &r1, &n1).await.unwrap();
    let name = s.net.names.network_name(&r1.user_id, "mesh");
    let iface = wireguard::iface_name(&name);
    Mesh {
        s,
        user,
        r1,
        n1,
        name,
        iface,
    }
}

/// The peer update of issue 16: a new signed reservation of the same name
/// takes the network over in place (same bridge, new tunnel), and the old
/// one's end leaves the network alone.
#[tokio::test]
async fn a_new_reservation_of_the_name_takes_the_network_over_in_place() {
    let Mesh {
        s,
        user,
        r1,
        n1,
        name,
        iface,
    } = mesh().await;
    let bridge = s.fake.inspect_network(&name).await.unwrap().unwrap().id;

    let (r2, n2) = res(
        &user,
        "2-1",
        with_peer(wg_data(&s, "mesh", json!({})), 3, "10.77.3.0/24", 51821),
    );
    Plugin::provision(&s.net, &r2, &n2).await.unwrap();
    let made = s.fake.inspect_network(&name).await.unwrap().unwrap();
    assert_eq!(made.id, bridge, "the same bridge: its containers stay");
    let spec = s.tunnels.up.lock().unwrap().get(&iface).cloned().unwrap();
    assert_eq!(spec.listen_port, 51821);
    assert_eq!(spec.peers.len(), 1);
    assert_eq!(spec.peers[0].public_key, keypair(3).1, "the new peer only");
    assert_eq!(spec.peers[0].allowed_ips[0].to_string(), "10.77.3.0/24");
    for r in [&r1, &r2] {
        assert!(Plugin::exists(&s.net, r, &n1).await.unwrap(), "{}", r.id);
    }
    let present = Plugin::present(&s.net).await.unwrap().unwrap();
    assert!(present.contains("1-1") && present.contains("2-1"));
    assert_eq!(
        Plugin::list_labelled(&s.net).await.unwrap(),
        vec!["1-1".to_string(), "2-1".to_string()]
    );

    // The old one provisioned again (reconciliation after a restart) does
    // not take it back.
    Plugin::provision(&s.net, &r1, &n1).await.unwrap();
    let spec = s.tunnels.up.lock().unwrap().get(&iface).cloned().unwrap();
    assert_eq!(spec.peers[0].public_key, keypair(3).1);
    // After a restart (tunnel gone) the holder brings it back with its peers.
    s.tunnels.up.lock().unwrap().clear();
    assert!(!Plugin::exists(&s.net, &r2, &n2).await.unwrap());
    Plugin::provision(&s.net, &r1, &n1).await.unwrap();
    assert!(!s.tunnels.is_up(&iface), "the replaced one does nothing");
    Plugin::provision(&s.net, &r2, &n2).await.unwrap();
    let spec = s.tunnels.up.lock().unwrap().get(&iface).cloned().unwrap();
    assert_eq!(spec.peers[0].public_key, keypair(3).1);

    // The old one deleted: the network and the tunnel stay.
    Plugin::decommission(&s.net, &r1, &n1).await.unwrap();
    assert!(s.fake.inspect_network(&name).await.unwrap().is_some());
    assert!(s.tunnels.is_up(&iface));
    assert!(!Plugin::exists(&s.net, &r1, &n1).await.unwrap());
    assert_eq!(
        Plugin::list_labelled(&s.net).await.unwrap(),
        vec!["2-1".to_string()]
    );
    // The new one deleted: all of it goes, its record too.
    Plugin::decommission(&s.net, &r2, &n2).await.unwrap();
    assert!(s.fake.inspect_network(&name).await.unwrap().is_none());
    assert!(!s.tunnels.is_up(&iface));
    assert_eq!(std::fs::read_dir(s.holders.path()).unwrap().count(), 0);
    let calls = s.tunnels.calls.lock().unwrap().clone();
    assert_eq!(
        calls
            .iter()
            .filter(|c| !c.starts_with("sweep"))
            .cloned()
            .collect::<Vec<_>>(),
        vec![
            format!("up {iface} 51820 1"),
            format!("up {iface} 51821 1"),
            format!("up {iface} 51821 1"),
            format!("down {iface}"),
        ]
    );
}

/// What a takeover refuses, naming the reservation to delete first, and
/// what it leaves: the old tunnel and holder as they were.
#[tokio::test]
async fn a_takeover_that_cannot_be_refuses_and_changes_nothing() {
    let Mesh {
        s,
        user,
        r1,
        n1,
        name,
        iface,
    } = mesh().await;

    let (r, n) = res(
        &user,
        "2-1",
        wg_data(&s, "mesh", json!({"subnet": "10.77.5.0/24"})),
    );
    assert_eq!(
        Plugin::provision(&s.net, &r, &n).await.unwrap_err().to_string(),
        "network \"mesh\" already exists on this node (reservation 1-1) with subnet 10.77.1.0/24; \
         a new reservation takes it over only with the same subnet, not 10.77.5.0/24; delete reservation 1-1 first"
    );
    let (r, n) = res(
        &user,
        "3-1",
        json!({"name": "mesh", "ip_range": "10.0.0.0/8",
               "net_resources": [{"node_id": s.node.id(), "subnet": "10.77.1.0/24"}]}),
    );
    assert_eq!(
        Plugin::provision(&s.net, &r, &n)
            .await
            .unwrap_err()
            .to_string(),
        "network \"mesh\" already exists on this node (reservation 1-1) with WireGuard fields; \
         a new reservation with none cannot take it over; delete reservation 1-1 first"
    );
    // A bad field of the new one: refused before the tunnel is touched.
    let (r, n) = res(
        &user,
        "4-1",
        wg_data(&s, "mesh", json!({"wireguard_listen_port": 80})),
    );
    let e = Plugin::provision(&s.net, &r, &n)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("wireguard_listen_port: 80 is not in 1024-65535"),
        "{e}"
    );
    // The tunnel refuses (its port taken): the old holder keeps it.
    *s.tunnels.fail_up.lock().unwrap() =
        Some("wireguard_listen_port 51821 cannot be used on this node".into());
    let (r5, n5) = res(
        &user,
        "5-1",
        with_peer(wg_data(&s, "mesh", json!({})), 3, "10.77.3.0/24", 51821),
    );
    assert!(Plugin::provision(&s.net, &r5, &n5).await.is_err());
    assert!(!Plugin::exists(&s.net, &r5, &n5).await.unwrap());
    assert!(Plugin::exists(&s.net, &r1, &n1).await.unwrap());
    let spec = s.tunnels.up.lock().unwrap().get(&iface).cloned().unwrap();
    assert_eq!(spec.peers[0].public_key, keypair(2).1, "the old peers");
    // The failed one's decommission leaves the network to its holder.
    Plugin::decommission(&s.net, &r5, &n5).await.unwrap();
    assert!(s.tunnels.is_up(&iface));
    assert_eq!(std::fs::read_dir(s.holders.path()).unwrap().count(), 0);

    // Another user's network of the same name is another network: it
    // never touches this one.
    let mallory = Identity::generate();
    let (rm, nm) = res(
        &mallory,
        "6-1",
        wg_data(&s, "mesh", json!({"subnet": "10.77.9.0/24"})),
    );
    Plugin::provision(&s.net, &rm, &nm).await.unwrap();
    assert_ne!(s.net.names.network_name(&rm.user_id, "mesh"), name);
    let spec = s.tunnels.up.lock().unwrap().get(&iface).cloned().unwrap();
    assert_eq!(spec.peers[0].public_key, keypair(2).1);
    Plugin::decommission(&s.net, &rm, &nm).await.unwrap();
    assert!(s.tunnels.is_up(&iface));

    // Without a place for holder records, a second reservation is refused.
    let bare = NetworkProvisioner::new(s.fake.clone(), s.node.id())
        .with_host_view(s.net.host.clone())
        .with_identity(s.node.clone())
        .with_tunnels(s.tunnels.clone());
    let (r, n) = res(
        &user,
        "7-1",
        with_peer(wg_data(&s, "mesh", json!({})), 3, "10.77.3.0/24", 51821),
    );
    assert_eq!(
        Plugin::provision(&bare, &r, &n).await.unwrap_err().to_string(),
        "network \"mesh\" already exists on this node (reservation 1-1); delete reservation 1-1 first"
    );
}

/// The orphan sweep asks the tunnels to keep exactly the interfaces of the
/// networks that exist.
#[tokio::test]
async fn the_orphan_sweep_keeps_the_tunnels_of_existing_networks() {
    let s = set();
    let user = Identity::generate();
    let (r, n) = res(&user, "1-1", wg_data(&s, "mesh", json!({})));
    Plugin::provision(&s.net, &r, &n).await.unwrap();
    let iface = wireguard::iface_name(&s.net.names.network_name(&r.user_id, "mesh"));
    Plugin::sweep_leftovers(&s.net).await.unwrap();
    Plugin::decommission(&s.net, &r, &n).await.unwrap();
    Plugin::sweep_leftovers(&s.net).await.unwrap();
    let calls = s.tunnels.calls.lock().unwrap().clone();
    assert_eq!(calls[1], format!("sweep keep [{iface}]"));
    assert_eq!(calls[3], "sweep keep []");
}

/// A hostile explorer hands the user's other signed reservations the ids
/// of the holder and of the one it replaced: neither takes the network
/// back, changes its tunnel or removes it; the holder keeps it.
#[tokio::test]
async fn reused_ids_neither_take_back_nor_remove_a_taken_over_network() {
    let Mesh {
        s,
        user,
        r1,
        n1,
        name,
        iface,
    } = mesh().await;
    let (r2, n2) = res(
        &user,
        "2-1",
        with_peer(wg_data(&s, "mesh", json!({})), 3, "10.77.3.0/24", 51821),
    );
    Plugin::provision(&s.net, &r2, &n2).await.unwrap();
    let peers_now = |s: &Set| s.tunnels.up.lock().unwrap().get(&iface).cloned().unwrap();
    assert_eq!(peers_now(&s).peers[0].public_key, keypair(3).1);

    // The holder's id on another signed reservation (its old peers).
    let (mut forged, fnet) = res(&user, "2-1", wg_data(&s, "mesh", json!({})));
    forged.signature = "sig-forged-2".into();
    assert_eq!(
        Plugin::provision(&s.net, &forged, &fnet)
            .await
            .unwrap_err()
            .to_string(),
        names::held_error(&forged, "network").to_string()
    );
    Plugin::decommission(&s.net, &forged, &fnet).await.unwrap();
    assert!(s.fake.inspect_network(&name).await.unwrap().is_some());
    assert!(s.tunnels.is_up(&iface));
    assert_eq!(peers_now(&s).peers[0].public_key, keypair(3).1);

    // The replaced one's id on another signed reservation: refused too,
    // and its end neither removes the network nor forgets the real
    // replaced one (which, forgotten, a restart's reconciliation would
    // find missing and provision again: a takeover back to the old peers).
    let (mut forged, fnet) = res(&user, "1-1", wg_data(&s, "mesh", json!({})));
    forged.signature = "sig-forged-1".into();
    assert_eq!(
        Plugin::provision(&s.net, &forged, &fnet)
            .await
            .unwrap_err()
            .to_string(),
        names::held_error(&forged, "network").to_string()
    );
    assert!(!Plugin::exists(&s.net, &forged, &fnet).await.unwrap());
    assert_eq!(peers_now(&s).peers[0].public_key, keypair(3).1);
    Plugin::decommission(&s.net, &forged, &fnet).await.unwrap();
    assert!(s.fake.inspect_network(&name).await.unwrap().is_some());
    assert!(s.tunnels.is_up(&iface));
    assert!(Plugin::exists(&s.net, &r1, &n1).await.unwrap());
    assert_eq!(
        Plugin::list_labelled(&s.net).await.unwrap(),
        vec!["1-1".to_string(), "2-1".to_string()]
    );
    Plugin::provision(&s.net, &r1, &n1).await.unwrap();
    assert_eq!(peers_now(&s).peers[0].public_key, keypair(3).1);
    // Then the real old one's end: still the holder's.
    Plugin::decommission(&s.net, &r1, &n1).await.unwrap();
    assert!(s.fake.inspect_network(&name).await.unwrap().is_some());
    assert!(Plugin::exists(&s.net, &r2, &n2).await.unwrap());
    assert_eq!(peers_now(&s).peers[0].public_key, keypair(3).1);
}

/// The holder record's path comes from the Docker network id, only when
/// it is hex: an id with a path in it (a hostile or broken engine) gets no
/// record; a record that does not parse counts as none (the labels say who
/// holds the network), and a takeover then writes a good one over it.
#[tokio::test]
async fn holder_records_only_by_hex_ids_and_unreadable_ones_count_as_none() {
    let Mesh {
        s,
        user,
        r1,
        n1,
        name,
        iface,
    } = mesh().await;
    for id in ["../../etc/passwd", "abc/../../x", "", "a.json", "ab cd"] {
        let net = NetworkInfo {
            id: id.into(),
            ..Default::default()
        };
        assert_eq!(s.net.holder_path(&net), None, "{id:?}");
    }
    let net = s.fake.inspect_network(&name).await.unwrap().unwrap();
    let path = s.net.holder_path(&net).unwrap();
    assert_eq!(path.parent(), Some(s.holders.path()));

    std::fs::write(&path, b"{not json").unwrap();
    assert!(s.net.holds(&net, &r1), "the labels say 1-1 holds it");
    assert!(Plugin::exists(&s.net, &r1, &n1).await.unwrap());
    let (r2, n2) = res(
        &user,
        "2-1",
        with_peer(wg_data(&s, "mesh", json!({})), 3, "10.77.3.0/24", 51821),
    );
    Plugin::provision(&s.net, &r2, &n2).await.unwrap();
    let h = s.net.holder(&net).unwrap();
    assert_eq!(h.id, "2-1");
    assert_eq!(
        h.replaced,
        vec![Replaced {
            id: "1-1".into(),
            signature: signature_hash(&r1),
        }]
    );
    assert!(s.tunnels.is_up(&iface));
}

/// Issue 16 follow-up: the takeover chain A → B → C. Each takeover makes
/// the newest the holder and keeps every reservation it replaced (with its
/// signature) until that one ends, in any order; a takeover whose tunnel
/// fails after its pre-flight, in the middle of the chain, gets an error
/// naming the holder that keeps the network, and the record and tunnel
/// stay the holder's; the replaced ones provisioned again change nothing.
#[tokio::test]
async fn a_chain_of_takeovers_keeps_every_replaced_one_until_it_ends() {
    let Mesh {
        s,
        user,
        r1,
        n1,
        name,
        iface,
    } = mesh().await;
    let net = s.fake.inspect_network(&name).await.unwrap().unwrap();
    let now = |s: &Set| s.tunnels.up.lock().unwrap().get(&iface).cloned().unwrap();
    let replaced = |rs: &[&Reservation]| -> Vec<Replaced> {
        rs.iter()
            .map(|r| Replaced {
                id: r.id.clone(),
                signature: signature_hash(r),
            })
            .collect()
    };
    let (r2, n2) = res(
        &user,
        "2-1",
        with_peer(wg_data(&s, "mesh", json!({})), 3, "10.77.3.0/24", 51821),
    );
    Plugin::provision(&s.net, &r2, &n2).await.unwrap();

    // C's interface fails after the old tunnel went down (the tunnels
    // bring B's back): refused, naming B; B still holds the network.
    let (r3, n3) = res(
        &user,
        "3-1",
        with_peer(wg_data(&s, "mesh", json!({})), 4, "10.77.4.0/24", 51822),
    );
    *s.tunnels.fail_up.lock().unwrap() = Some(
        "the wireguard interface refused its configuration; \
         the tunnel it was to replace runs again as it was"
            .into(),
    );
    assert_eq!(
        Plugin::provision(&s.net, &r3, &n3)
            .await
            .unwrap_err()
            .to_string(),
        "data.net_resources: wireguard tunnel of reservation 3-1: the wireguard interface \
         refused its configuration; the tunnel it was to replace runs again as it was; \
         the network stays with reservation 2-1"
    );
    let h = s.net.holder(&net).unwrap();
    assert_eq!(
        (h.id.as_str(), h.signature.clone()),
        ("2-1", signature_hash(&r2))
    );
    assert_eq!(h.replaced, replaced(&[&r1]));
    assert_eq!(now(&s).peers[0].public_key, keypair(3).1, "B's peers");
    assert!(!Plugin::exists(&s.net, &r3, &n3).await.unwrap());
    for (r, n) in [(&r1, &n1), (&r2, &n2)] {
        assert!(Plugin::exists(&s.net, r, n).await.unwrap(), "{}", r.id);
    }

    // C again, and it takes over from B.
    Plugin::provision(&s.net, &r3, &n3).await.unwrap();
    let h = s.net.holder(&net).unwrap();
    assert_eq!(
        (h.id.as_str(), h.signature.clone()),
        ("3-1", signature_hash(&r3))
    );
    assert_eq!(h.replaced, replaced(&[&r1, &r2]));
    let spec = now(&s);
    assert_eq!(
        (spec.peers[0].public_key, spec.listen_port),
        (keypair(4).1, 51822)
    );
    assert_eq!(
        s.fake.inspect_network(&name).await.unwrap().unwrap().id,
        net.id,
        "the same bridge all along"
    );
    for (r, n) in [(&r1, &n1), (&r2, &n2), (&r3, &n3)] {
        assert!(Plugin::exists(&s.net, r, n).await.unwrap(), "{}", r.id);
    }
    let present = Plugin::present(&s.net).await.unwrap().unwrap();
    assert!(["1-1", "2-1", "3-1"].iter().all(|id| present.contains(*id)));
    assert_eq!(
        Plugin::list_labelled(&s.net).await.unwrap(),
        vec!["1-1".to_string(), "2-1".to_string(), "3-1".to_string()]
    );

    // A and B provisioned again (a restart's reconciliation): nothing.
    Plugin::provision(&s.net, &r1, &n1).await.unwrap();
    Plugin::provision(&s.net, &r2, &n2).await.unwrap();
    assert_eq!(now(&s).peers[0].public_key, keypair(4).1);
    assert_eq!(s.net.holder(&net).unwrap().replaced, replaced(&[&r1, &r2]));

    // B, the middle one, ends first, then A: the network stays C's.
    Plugin::decommission(&s.net, &r2, &n2).await.unwrap();
    assert!(s.tunnels.is_up(&iface));
    assert_eq!(s.net.holder(&net).unwrap().replaced, replaced(&[&r1]));
    assert!(!Plugin::exists(&s.net, &r2, &n2).await.unwrap());
    Plugin::decommission(&s.net, &r1, &n1).await.unwrap();
    let h = s.net.holder(&net).unwrap();
    assert_eq!((h.id.as_str(), h.replaced.len()), ("3-1", 0));
    assert_eq!(
        Plugin::list_labelled(&s.net).await.unwrap(),
        vec!["3-1".to_string()]
    );
    assert_eq!(now(&s).peers[0].public_key, keypair(4).1);

    // C's end removes it all, its record too.
    Plugin::decommission(&s.net, &r3, &n3).await.unwrap();
    assert!(s.fake.inspect_network(&name).await.unwrap().is_none());
    assert!(!s.tunnels.is_up(&iface));
    assert_eq!(std::fs::read_dir(s.holders.path()).unwrap().count(), 0);
    let calls: Vec<String> = s
        .tunnels
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| !c.starts_with("sweep"))
        .cloned()
        .collect();
    assert_eq!(
        calls,
        vec![
            format!("up {iface} 51820 1"),
            format!("up {iface} 51821 1"),
            format!("up {iface} 51822 1"),
            format!("up {iface} 51822 1"),
            format!("down {iface}"),
        ]
    );
}

/// Issue 16 follow-up, found reading the chain: the holder's end removes
/// the network while the reservations it replaced still live. A restart's
/// reconciliation finds those missing and provisions them again; that must
/// neither bring the network back with the old peers nor take over a newer
/// network of the name. They stay ended until their own end.
#[tokio::test]
async fn replaced_reservations_stay_ended_with_their_holders_network() {
    let Mesh {
        s,
        user,
        r1,
        n1,
        name,
        iface,
    } = mesh().await;
    let (r2, n2) = res(
        &user,
        "2-1",
        with_peer(wg_data(&s, "mesh", json!({})), 3, "10.77.3.0/24", 51821),
    );
    Plugin::provision(&s.net, &r2, &n2).await.unwrap();
    let (r3, n3) = res(
        &user,
        "3-1",
        with_peer(wg_data(&s, "mesh", json!({})), 4, "10.77.4.0/24", 51822),
    );
    Plugin::provision(&s.net, &r3, &n3).await.unwrap();
    Plugin::decommission(&s.net, &r3, &n3).await.unwrap();
    assert!(s.fake.inspect_network(&name).await.unwrap().is_none());
    assert!(!s.tunnels.is_up(&iface));

    // A restart: the replaced ones are present, so not repaired; provisioned
    // anyway, they make nothing.
    for (r, n) in [(&r1, &n1), (&r2, &n2)] {
        assert!(Plugin::exists(&s.net, r, n).await.unwrap(), "{}", r.id);
        Plugin::provision(&s.net, r, n).await.unwrap();
    }
    let present = Plugin::present(&s.net).await.unwrap().unwrap();
    assert!(present.contains("1-1") && present.contains("2-1"));
    assert!(!present.contains("3-1"));
    assert!(s.fake.inspect_network(&name).await.unwrap().is_none());
    assert!(!s.tunnels.is_up(&iface));
    // Another reservation with an ended one's id is not it.
    let (mut forged, fnet) = res(&user, "1-1", wg_data(&s, "mesh", json!({})));
    forged.signature = "sig-forged-1".into();
    assert!(!Plugin::exists(&s.net, &forged, &fnet).await.unwrap());

    // A newer network of the name: its own, untouched by the ended ones.
    let (r4, n4) = res(
        &user,
        "4-1",
        with_peer(wg_data(&s, "mesh", json!({})), 5, "10.77.5.0/24", 51823),
    );
    Plugin::provision(&s.net, &r4, &n4).await.unwrap();
    let net4 = s.fake.inspect_network(&name).await.unwrap().unwrap();
    for (r, n) in [(&r1, &n1), (&r2, &n2)] {
        Plugin::provision(&s.net, r, n).await.unwrap();
    }
    let spec = s.tunnels.up.lock().unwrap().get(&iface).cloned().unwrap();
    assert_eq!(spec.peers[0].public_key, keypair(5).1, "4-1's peers");
    assert_eq!(s.net.holder_id(&net4), "4-1");
    assert_eq!(s.net.holder(&net4), None, "no takeover happened");

    // Their ends drop only their records: 4-1's network stays.
    Plugin::decommission(&s.net, &r1, &n1).await.unwrap();
    assert!(!Plugin::exists(&s.net, &r1, &n1).await.unwrap());
    assert!(s.fake.inspect_network(&name).await.unwrap().is_some());
    assert!(s.tunnels.is_up(&iface));
    assert_eq!(
        Plugin::list_labelled(&s.net).await.unwrap(),
        vec!["2-1".to_string(), "4-1".to_string()]
    );
    // One the cache does not know (the orphan sweep) goes by its id.
    Plugin::remove_labelled(&s.net, "2-1").await.unwrap();
    assert!(!Plugin::exists(&s.net, &r2, &n2).await.unwrap());
    assert_eq!(
        Plugin::list_labelled(&s.net).await.unwrap(),
        vec!["4-1".to_string()]
    );
    assert!(s.fake.inspect_network(&name).await.unwrap().is_some());
    Plugin::decommission(&s.net, &r4, &n4).await.unwrap();
    assert_eq!(std::fs::read_dir(s.holders.path()).unwrap().count(), 0);
}
