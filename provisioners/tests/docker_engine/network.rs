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
    refused(&np, &r, &w, "overlaps docker network bridge").await;
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
    let neta = provisioners::names::network_name(alice.id(), "lan");
    let netb = provisioners::names::network_name(bob.id(), "lan");
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
