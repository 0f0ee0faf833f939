//! The network provisioner against the real engine: subnets, refusals,
//! isolation between users, in-use protection.

use std::sync::Arc;
use std::time::Duration;

use provisioners::{ContainerProvisioner, Docker, NetworkProvisioner, ProvisionError, Provisioner};
use reservation::workloads::{NetResource, Network};
use reservation::{Identity, Workload, WorkloadType};
use serde_json::json;

use crate::common::{self, host, reservation, run_once, Guard};

fn net_data(node: &Identity, name: &str, range: &str, subnet: &str) -> serde_json::Value {
    json!({"name": name, "ip_range": range,
           "net_resources": [{"node_id": node.id(), "subnet": subnet}],
           "wireguard_private_key_encrypted": "ignored"})
}

#[tokio::test]
async fn network_matches_the_request_and_is_idempotent() {
    let mut g = Guard::new();
    let d = common::docker().await;
    let node = Identity::generate();
    let np = NetworkProvisioner::new(d.clone(), node.id());
    let user = Identity::generate();
    let subnet = common::unique_subnet();
    let id = g.id();
    let (r, w) = reservation(
        &user,
        &node,
        &id,
        WorkloadType::Network,
        net_data(&node, "lan", "10.0.0.0/8", &subnet),
    );
    assert_eq!(np.provision(&r, &w).await.unwrap(), serde_json::Value::Null);
    assert_eq!(np.provision(&r, &w).await.unwrap(), serde_json::Value::Null);

    let name = format!(
        "agent-net-{}",
        reservation::network_local_id(user.id(), "lan")
    );
    let n = d
        .client()
        .inspect_network::<String>(&name, None)
        .await
        .expect("docker network");
    assert_eq!(n.driver.as_deref(), Some("bridge"));
    let ipam = n.ipam.unwrap().config.unwrap();
    assert_eq!(ipam.len(), 1);
    assert_eq!(ipam[0].subnet.as_deref(), Some(subnet.as_str()));
    assert_eq!(ipam[0].gateway.as_deref(), Some(host(&subnet, 1).as_str()));
    let labels = n.labels.unwrap();
    assert_eq!(labels["io.agent.reservation"], id);
    assert_eq!(labels["io.agent.user"], user.id());
    assert_eq!(labels["io.agent.type"], "network");
    assert_eq!(labels["io.agent.network"], "lan");
    let out = std::process::Command::new("docker")
        .args([
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label=io.agent.reservation={id}"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "no twin"
    );
    assert!(np.exists(&r, &w).await.unwrap());
    assert!(np.list_labelled().await.unwrap().contains(&id));

    // Removed behind our back.
    assert!(std::process::Command::new("docker")
        .args(["network", "rm", &name])
        .output()
        .unwrap()
        .status
        .success());
    assert!(!np.exists(&r, &w).await.unwrap());
    np.provision(&r, &w).await.unwrap();
    assert!(np.exists(&r, &w).await.unwrap());

    np.decommission(&r, &w).await.unwrap();
    assert!(d.inspect_network(&name).await.unwrap().is_none());
    np.decommission(&r, &w).await.expect("again is fine");
}

async fn refused(np: &NetworkProvisioner, r: &reservation::Reservation, w: &Workload, want: &str) {
    match np.provision(r, w).await {
        Err(ProvisionError::Refused(m)) => assert!(m.contains(want), "{want:?} not in {m:?}"),
        other => panic!("expected a refusal with {want:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_subnets_are_refused() {
    let mut g = Guard::new();
    let d = common::docker().await;
    let node = Identity::generate();
    let np = NetworkProvisioner::new(d.clone(), node.id());
    let (alice, bob) = (Identity::generate(), Identity::generate());
    let subnet = common::unique_subnet();
    let (r, w) = reservation(
        &bob,
        &node,
        &g.id(),
        WorkloadType::Network,
        net_data(&node, "bobnet", "10.0.0.0/8", &subnet),
    );
    np.provision(&r, &w).await.unwrap();
    let bobs = format!(
        "agent-net-{}",
        reservation::network_local_id(bob.id(), "bobnet")
    );

    // Overlap with another user's network: named.
    let (r, w) = reservation(
        &alice,
        &node,
        &g.id(),
        WorkloadType::Network,
        net_data(&node, "a", "10.0.0.0/8", &subnet),
    );
    refused(
        &np,
        &r,
        &w,
        &format!("overlaps network {bobs} ({subnet}) of another user on this node"),
    )
    .await;
    let octets: Vec<&str> = subnet.split('.').collect();
    let wider = format!("{}.{}.0.0/16", octets[0], octets[1]);
    let (r, w) = reservation(
        &alice,
        &node,
        &g.id(),
        WorkloadType::Network,
        net_data(&node, "a", "10.0.0.0/8", &wider),
    );
    refused(&np, &r, &w, "of another user on this node").await;
    // Overlap with the user's own other network, and a duplicate name.
    let (r, w) = reservation(
        &bob,
        &node,
        &g.id(),
        WorkloadType::Network,
        net_data(&node, "other", "10.0.0.0/8", &subnet),
    );
    refused(&np, &r, &w, "overlaps your network \"bobnet\"").await;
    let (r, w) = reservation(
        &bob,
        &node,
        &g.id(),
        WorkloadType::Network,
        net_data(&node, "bobnet", "10.0.0.0/8", &common::unique_subnet()),
    );
    refused(
        &np,
        &r,
        &w,
        "network \"bobnet\" already exists on this node",
    )
    .await;
    // The dup's decommission leaves the original alone.
    np.decommission(&r, &w).await.unwrap();
    assert!(d.inspect_network(&bobs).await.unwrap().is_some());
    // Docker's own default bridge.
    let (r, w) = reservation(
        &alice,
        &node,
        &g.id(),
        WorkloadType::Network,
        net_data(&node, "b", "172.16.0.0/12", "172.17.5.0/24"),
    );
    refused(
        &np,
        &r,
        &w,
        "overlaps the host route 172.17.0.0/16 (docker0)",
    )
    .await;
    // No entry for this node.
    let other = Identity::generate();
    let (r, w) = reservation(
        &alice,
        &node,
        &g.id(),
        WorkloadType::Network,
        net_data(&other, "c", "10.0.0.0/8", &common::unique_subnet()),
    );
    refused(
        &np,
        &r,
        &w,
        &format!("no entry for this node {}", node.id()),
    )
    .await;
    // Outside ip_range (built past the wire parser's own check).
    let (r, _) = reservation(
        &alice,
        &node,
        &g.id(),
        WorkloadType::Network,
        net_data(&node, "d", "10.0.0.0/8", &common::unique_subnet()),
    );
    let w = Workload::Network(Network {
        name: "d".into(),
        ip_range: "192.168.0.0/16".into(),
        net_resources: vec![NetResource {
            node_id: node.id().into(),
            subnet: common::unique_subnet(),
            wireguard_private_key_encrypted: String::new(),
            wireguard_public_key: String::new(),
            wireguard_listen_port: 0,
            peers: Vec::new(),
        }],
    });
    refused(&np, &r, &w, "outside ip_range 192.168.0.0/16").await;
    // Nothing was created by any refusal.
    let mine: Vec<String> = np.list_labelled().await.unwrap();
    for id in &g.ids[1..] {
        assert!(!mine.contains(id), "{id} created something");
    }
}

#[tokio::test]
async fn two_users_networks_cannot_reach_each_other() {
    let mut g = Guard::new();
    let d = common::docker().await;
    let node = Arc::new(Identity::generate());
    let np = NetworkProvisioner::new(d.clone(), node.id());
    let ct =
        ContainerProvisioner::new(d.clone(), node.clone()).with_stop_grace(Duration::from_secs(1));
    let (alice, bob) = (Identity::generate(), Identity::generate());
    let (sa, sb) = (common::unique_subnet(), common::unique_subnet());
    // Both users call their network "lan": two different objects.
    let (ra, wa) = reservation(
        &alice,
        &node,
        &g.id(),
        WorkloadType::Network,
        net_data(&node, "lan", "10.0.0.0/8", &sa),
    );
    np.provision(&ra, &wa).await.unwrap();
    let (rb, wb) = reservation(
        &bob,
        &node,
        &g.id(),
        WorkloadType::Network,
        net_data(&node, "lan", "10.0.0.0/8", &sb),
    );
    np.provision(&rb, &wb).await.unwrap();
    let neta = provisioners::names::Names::unscoped().network_name(alice.id(), "lan");
    let netb = provisioners::names::Names::unscoped().network_name(bob.id(), "lan");
    assert_ne!(neta, netb);

    // Alice's web server.
    let server_ip = host(&sa, 10);
    let (rs, ws) = reservation(
        &alice,
        &node,
        &g.id(),
        WorkloadType::Container,
        json!({"flist": common::IMAGE, "entrypoint": "httpd -f -p 8080 -h /etc",
               "capacity": {"cpu": 1, "memory": 32},
               "network": {"network_id": "lan", "ips": [server_ip]}}),
    );
    ct.provision(&rs, &ws).await.unwrap();
    let probe =
        format!("printf 'GET /passwd HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {server_ip} 8080; echo rc=$?");

    // Positive control: from Alice's network the server answers.
    let mut ok = None;
    for _ in 0..20 {
        let run = run_once(&d, Some(&neta), &[], &probe).await.unwrap();
        if run.output.contains("root:x:0:0") {
            ok = Some(run);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok.is_some(), "same network must reach the server");
    // From Bob's network it does not.
    let run = run_once(&d, Some(&netb), &[], &probe).await.unwrap();
    assert!(!run.output.contains("root:x:0:0"), "{}", run.output);
    assert!(!run.output.contains("rc=0"), "{}", run.output);

    // A network with a container attached is not removed under it.
    match np.decommission(&ra, &wa).await {
        Err(ProvisionError::InUse(m)) => assert!(m.contains(&format!("agent-ct-{}", rs.id)), "{m}"),
        other => panic!("expected InUse, got {other:?}"),
    }
    assert!(np.exists(&ra, &wa).await.unwrap());
    ct.decommission(&rs, &ws).await.unwrap();
    np.decommission(&ra, &wa).await.unwrap();
    assert!(!np.exists(&ra, &wa).await.unwrap());
    np.remove_labelled(&rb.id).await.unwrap();
    assert!(!np.exists(&rb, &wb).await.unwrap());
}

/// A hostile tenant asks for subnets over the host's own ranges: each is
/// refused naming what it overlaps; an ordinary private subnet passes.
#[tokio::test]
async fn subnets_over_the_host_are_refused_by_name() {
    let mut g = Guard::new();
    let d = common::docker().await;
    let node = Identity::generate();
    let np = NetworkProvisioner::new(d.clone(), node.id());
    let user = Identity::generate();
    let bridge = d
        .inspect_network("bridge")
        .await
        .unwrap()
        .expect("docker's default bridge");
    let docker0 = bridge.ipv4_subnets()[0];
    let inside = ipnet::Ipv4Net::new(docker0.network(), 24).unwrap();
    let cases = [
        (
            "172.16.0.0/12".to_string(),
            inside.to_string(),
            format!("data.net_resources: subnet {inside} overlaps the host route {docker0} (docker0)"),
        ),
        (
            "127.0.0.0/8".into(),
            "127.0.5.0/24".into(),
            "data.net_resources: subnet 127.0.5.0/24 overlaps the loopback range 127.0.0.0/8".into(),
        ),
        (
            "169.254.0.0/16".into(),
            "169.254.7.0/24".into(),
            "data.net_resources: subnet 169.254.7.0/24 overlaps the link-local range 169.254.0.0/16".into(),
        ),
        (
            "100.64.0.0/10".into(),
            "100.64.1.0/24".into(),
            "data.net_resources: subnet 100.64.1.0/24 is outside this node's network pool 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16".into(),
        ),
    ];
    for (range, subnet, want) in cases {
        let (r, w) = reservation(
            &user,
            &node,
            &g.id(),
            WorkloadType::Network,
            net_data(&node, "n", &range, &subnet),
        );
        refused(&np, &r, &w, &want).await;
    }
    // A narrower pool refuses what the default allows.
    let tight = NetworkProvisioner::new(d.clone(), node.id())
        .with_pool(vec!["192.168.0.0/16".parse().unwrap()]);
    let subnet = common::unique_subnet();
    let (r, w) = reservation(
        &user,
        &node,
        &g.id(),
        WorkloadType::Network,
        net_data(&node, "n", "10.0.0.0/8", &subnet),
    );
    refused(
        &tight,
        &r,
        &w,
        &format!("subnet {subnet} is outside this node's network pool 192.168.0.0/16"),
    )
    .await;
    // Nothing was made; an ordinary 10.x subnet is accepted, and a second
    // network next to it is not mistaken for a host route (its bridge is
    // Docker's).
    assert!(np
        .list_labelled()
        .await
        .unwrap()
        .iter()
        .all(|id| !g.ids.contains(id)));
    np.provision(&r, &w).await.expect("a private subnet");
    let (r2, w2) = reservation(
        &user,
        &node,
        &g.id(),
        WorkloadType::Network,
        net_data(&node, "m", "10.0.0.0/8", &common::unique_subnet()),
    );
    np.provision(&r2, &w2)
        .await
        .expect("a second private subnet");
    // Its own subnet is now taken by a Docker network: named as such.
    let (r3, w3) = reservation(
        &user,
        &node,
        &g.id(),
        WorkloadType::Network,
        net_data(&node, "o", "10.0.0.0/8", &subnet),
    );
    refused(&np, &r3, &w3, "overlaps your network \"n\"").await;
}

/// A network made by hand under the name the agent would give a user's
/// network, labelled for another user, is replaced, not adopted.
#[tokio::test]
async fn a_hand_made_network_under_the_name_is_replaced_not_adopted() {
    let mut g = Guard::new();
    let d = common::docker().await;
    let node = Identity::generate();
    let np = NetworkProvisioner::new(d.clone(), node.id());
    let (alice, mallory) = (Identity::generate(), Identity::generate());
    let id = g.id();
    let name = provisioners::names::Names::unscoped().network_name(alice.id(), "lan");
    let planted = common::unique_subnet();
    let out = std::process::Command::new("docker")
        .args(["network", "create", "--subnet", &planted])
        .args(["--label", &format!("io.agent.reservation={id}")])
        .args(["--label", &format!("io.agent.user={}", mallory.id())])
        .args(["--label", "io.agent.type=network", &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let planted_id = d.inspect_network(&name).await.unwrap().unwrap().id;
    let subnet = common::unique_subnet();
    let (r, w) = reservation(
        &alice,
        &node,
        &id,
        WorkloadType::Network,
        net_data(&node, "lan", "10.0.0.0/8", &subnet),
    );
    np.provision(&r, &w)
        .await
        .expect("provision over the planted network");
    let n = d.inspect_network(&name).await.unwrap().unwrap();
    assert_ne!(n.id, planted_id, "the planted network was adopted");
    assert_eq!(n.labels["io.agent.user"], alice.id());
    assert_eq!(n.subnets, vec![subnet]);
    assert_eq!(
        n.labels["io.agent.sig"],
        provisioners::names::signature_hash(&r)
    );
}
