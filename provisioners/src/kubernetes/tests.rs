//! Unit tests of the `kubernetes` plug-in: enabling, runtimes, masters,
//! command lines, the node container.

use super::*;
use crate::Provisioner;
use reservation::Secret;
use reservation::Workload;

fn signed_k8s(node: &Identity) -> (Reservation, Workload) {
    let user = Identity::generate();
    let data = json!({"size": 1, "network_id": "net", "ip": "10.9.0.5",
        "cluster_secret": reservation::seal_for(node.id(), b"tok").unwrap(),
        "master_ips": ["10.9.0.2"]});
    let mut r = Reservation {
        id: "77-1".into(),
        node_id: node.id().to_string(),
        user_id: user.id().to_string(),
        kind: "kubernetes".into(),
        data: serde_json::value::RawValue::from_string(data.to_string()).unwrap(),
        created: Some(chrono::Utc::now()),
        duration: 3_600_000_000_000,
        ..Default::default()
    };
    user.sign_reservation(&mut r);
    let w = Workload::parse(WorkloadType::Kubernetes, &r.data).unwrap();
    (r, w)
}

#[tokio::test]
async fn disabled_by_default_with_a_refusal_that_says_how_to_enable() {
    let node = Arc::new(Identity::generate());
    let fake = Arc::new(crate::FakeDocker::new());
    let k8s = KubernetesProvisioner::new(fake.clone(), node.clone(), "img");
    let (r, w) = signed_k8s(&node);
    match Provisioner::provision(&k8s, &r, &w).await {
        Err(ProvisionError::Refused(m)) => {
            assert_eq!(m, DISABLED);
            assert!(
                m.contains("--kubernetes-runtime") && m.contains("--kubernetes-privileged-unsafe")
            );
        }
        other => panic!("expected the disabled refusal, got {other:?}"),
    }
    assert!(fake.container_names().is_empty() && fake.volume_names().is_empty());
}

#[test]
fn the_node_container_carries_the_isolating_runtime() {
    let node = Arc::new(Identity::generate());
    let fake = Arc::new(crate::FakeDocker::new());
    let (r, w) = signed_k8s(&node);
    let Workload::Kubernetes(k) = &w else {
        unreachable!()
    };
    let ip = Ipv4Addr::new(10, 9, 0, 5);
    let k8s = KubernetesProvisioner::new(fake.clone(), node.clone(), "img")
        .with_mode(KubernetesMode::Runtime("kata".into()));
    let (spec, extras) = k8s
        .node_container(&r, k, "n", ip, Secret::new("t"))
        .unwrap();
    assert_eq!(extras.runtime.as_deref(), Some("kata"));
    assert!(extras.privileged, "privileged inside the sandbox");
    assert_eq!(
        spec.labels[names::LABEL_SIGNATURE],
        names::signature_hash(&r)
    );
    let unsafe_mode =
        KubernetesProvisioner::new(fake, node, "img").with_mode(KubernetesMode::PrivilegedUnsafe);
    let (_, extras) = unsafe_mode
        .node_container(&r, k, "n", ip, Secret::new("t"))
        .unwrap();
    assert_eq!(extras.runtime, None);
}

#[test]
fn runtimes_must_be_registered_and_isolating() {
    let reg = vec![
        ("runc".to_string(), "runc".to_string()),
        ("io.containerd.runc.v2".to_string(), "runc".to_string()),
        ("kata".to_string(), "/usr/bin/kata-runtime".to_string()),
        ("runc-alias".to_string(), "/usr/local/sbin/runc".to_string()),
    ];
    assert!(check_runtime_in("kata", &reg).is_ok());
    let e = check_runtime_in("sysbox-runc", &reg).unwrap_err();
    assert!(
        e.starts_with("--kubernetes-runtime: runtime \"sysbox-runc\" is not registered"),
        "{e}"
    );
    for bad in ["runc", "io.containerd.runc.v2", "runc-alias", ""] {
        let e = check_runtime_in(bad, &reg).unwrap_err();
        assert!(e.starts_with("--kubernetes-runtime:"), "{bad}: {e}");
    }
}

#[test]
fn masters_must_be_on_the_users_network() {
    let n = NetworkInfo {
        name: "n".into(),
        subnets: vec!["10.9.0.0/24".into()],
        gateways: vec!["10.9.0.1".into()],
        ..Default::default()
    };
    assert!(check_masters(&["10.9.0.2".parse().unwrap()], "net", &n).is_ok());
    for bad in ["1.2.3.4", "10.9.1.2", "10.9.0.255", "fd00::1"] {
        let e = check_masters(&[bad.parse().unwrap()], "net", &n)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("data.master_ips: ") && e.contains(bad), "{e}");
    }
}

#[test]
fn command_lines() {
    let ip: IpAddr = "10.1.2.3".parse().unwrap();
    assert_eq!(k3s_command(ip, &[]), ["server", "--node-ip", "10.1.2.3"]);
    assert_eq!(
        k3s_command(ip, &["10.1.2.2".parse().unwrap()]),
        [
            "agent",
            "--server",
            "https://10.1.2.2:6443",
            "--node-ip",
            "10.1.2.3"
        ]
    );
    assert_eq!(
        k3s_command(
            ip,
            &["fd00::1".parse().unwrap(), "10.0.0.1".parse().unwrap()]
        ),
        [
            "agent",
            "--server",
            "https://[fd00::1]:6443",
            "--node-ip",
            "10.1.2.3"
        ]
    );
}
