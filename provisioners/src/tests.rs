//! Unit tests of the provisioners' logic over the recording fake (the real
//! engine is exercised by tests/docker_engine).

use std::sync::Arc;

use reservation::{seal_for, Identity, Reservation, Workload, WorkloadType};
use serde_json::json;
use serde_json::value::RawValue;

use crate::docker::{ContainerNet, FakeDocker};
use crate::{
    docker_registry, ContainerProvisioner, NetworkProvisioner, ProvisionError, Provisioner,
    VolumeProvisioner,
};

fn res(
    user: &Identity,
    id: &str,
    kind: WorkloadType,
    data: serde_json::Value,
) -> (Reservation, Workload) {
    let r = Reservation {
        id: id.into(),
        node_id: "node".into(),
        user_id: user.id().into(),
        kind: kind.as_str().into(),
        data: RawValue::from_string(data.to_string()).unwrap(),
        created: None,
        duration: 0,
        signature: String::new(),
        to_delete: false,
        delete_signature: None,
        ..Default::default()
    };
    let w = Workload::parse(kind, &r.data).unwrap();
    (r, w)
}

struct Set {
    fake: Arc<FakeDocker>,
    node: Arc<Identity>,
    ct: ContainerProvisioner,
    vol: VolumeProvisioner,
    net: NetworkProvisioner,
    _dir: tempfile::TempDir,
}

fn set() -> Set {
    let fake = Arc::new(FakeDocker::new());
    fake.add_image("img");
    let node = Arc::new(Identity::generate());
    let dir = tempfile::tempdir().unwrap();
    Set {
        ct: ContainerProvisioner::new(fake.clone(), node.clone()),
        vol: VolumeProvisioner::unenforced_for_tests(fake.clone(), dir.path().into()),
        // The host's own routes are not the fake's business.
        net: NetworkProvisioner::new(fake.clone(), node.id())
            .with_host_view(crate::network::HostView::Fixed(Default::default())),
        fake,
        node,
        _dir: dir,
    }
}

fn net_data(s: &Set, name: &str, subnet: &str) -> serde_json::Value {
    json!({"name": name, "ip_range": "10.0.0.0/8",
           "net_resources": [{"node_id": s.node.id(), "subnet": subnet}]})
}

#[tokio::test]
async fn the_spec_follows_the_request_and_secrets_stay_redacted() {
    let s = set();
    let u = Identity::generate();
    let (r, w) = res(
        &u,
        "1-1",
        WorkloadType::Network,
        net_data(&s, "n", "10.1.1.0/24"),
    );
    s.net.provision(&r, &w).await.unwrap();
    let (r, w) = res(
        &u,
        "1-2",
        WorkloadType::Volume,
        json!({"size": 2, "type": "HDD"}),
    );
    assert_eq!(
        s.vol.provision(&r, &w).await.unwrap(),
        json!({"volume_id": "1-2"})
    );
    let sealed = seal_for(s.node.id(), b"hunter2").unwrap();
    let (r, w) = res(
        &u,
        "1-3",
        WorkloadType::Container,
        json!({"flist": "img", "env": {"A": "1", "S": "public"}, "secret_env": {"S": sealed},
               "entrypoint": "sh -c 'echo \"a b\"'", "interactive": true,
               "mounts": [{"volume_id": "1-2", "mountpoint": "/x/./y/"}],
               "network": {"network_id": "n", "ips": ["10.1.1.7"]},
               "ports": [{"container_port": 80, "host_port": 30080, "protocol": "udp"}],
               "capacity": {"cpu": 2, "memory": 100}}),
    );
    let out = s.ct.provision(&r, &w).await.unwrap();
    assert_eq!(out["ipv4"], "10.1.1.7");
    assert!(!out.to_string().contains("hunter2"));
    let spec = s.fake.container_spec("agent-ct-1-3").unwrap();
    assert_eq!(spec.image, "img");
    assert_eq!(spec.env, vec!["A=1".to_string()], "the secret overrides S");
    assert_eq!(spec.secret_env.len(), 1);
    assert_eq!(spec.secret_env[0].1.expose(), "hunter2");
    let dbg = format!("{spec:?}");
    assert!(
        !dbg.contains("hunter2") && dbg.contains("redacted"),
        "{dbg}"
    );
    assert_eq!(
        spec.entrypoint,
        Some(vec!["sh".into(), "-c".into(), "echo \"a b\"".into()])
    );
    assert!(spec.tty && spec.open_stdin && spec.restart_unless_stopped);
    assert_eq!(spec.nano_cpus, 2_000_000_000);
    assert_eq!(spec.memory, 100 * 1024 * 1024);
    assert_eq!(spec.mounts[0].target, "/x/y");
    assert_eq!(spec.mounts[0].volume, "agent-vol-1-2");
    assert_eq!(
        spec.network,
        ContainerNet::Bridge {
            network: crate::names::Names::unscoped().network_name(u.id(), "n"),
            ipv4: Some("10.1.1.7".parse().unwrap())
        }
    );
    assert_eq!(spec.ports[0].host_port, 30080);
    assert!(spec.ports[0].udp);
    assert_eq!(spec.labels["io.agent.user"], u.id());
    // Every tenant container is confined.
    let c = s.fake.container_confinement("agent-ct-1-3").unwrap();
    assert_eq!(c.pids_limit, Some(1024));
    assert!(c.no_new_privileges);
    assert_eq!(c.cap_drop, vec!["NET_RAW".to_string()]);
    assert_eq!(c.runtime, None);
    assert_eq!(c.port_address, Some("0.0.0.0".parse().unwrap()));
}

#[tokio::test]
async fn host_ports_come_from_the_operators_range_only() {
    let s = set();
    let ct = ContainerProvisioner::new(s.fake.clone(), s.node.clone()).with_policy(
        crate::container::ContainerPolicy {
            pids_limit: 64,
            runtime: Some("runsc".into()),
            host_ports: (40000, 40010),
            host_port_address: "127.0.0.1".parse().unwrap(),
        },
    );
    let u = Identity::generate();
    let (r, w) = res(
        &u,
        "9-1",
        WorkloadType::Network,
        net_data(&s, "n", "10.9.1.0/24"),
    );
    s.net.provision(&r, &w).await.unwrap();
    for (port, id) in [(22, "9-2"), (39999, "9-3"), (40011, "9-4")] {
        let (r, w) = res(
            &u,
            id,
            WorkloadType::Container,
            json!({"flist": "img", "capacity": {"cpu": 1, "memory": 8},
                   "network": {"network_id": "n"},
                   "ports": [{"container_port": 80, "host_port": 40000},
                             {"container_port": 81, "host_port": port}]}),
        );
        let e = ct.provision(&r, &w).await.unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "ports[1].host_port: {port} is outside this node's host port range 40000-40010"
            )
        );
    }
    let (r, w) = res(
        &u,
        "9-5",
        WorkloadType::Container,
        json!({"flist": "img", "capacity": {"cpu": 1, "memory": 8},
               "network": {"network_id": "n"},
               "ports": [{"container_port": 80, "host_port": 40010}]}),
    );
    ct.provision(&r, &w).await.unwrap();
    let c = s.fake.container_confinement("agent-ct-9-5").unwrap();
    assert_eq!(c.pids_limit, Some(64));
    assert_eq!(c.runtime.as_deref(), Some("runsc"));
    assert_eq!(c.port_address, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(s.fake.count("create_container"), 1);
}

#[tokio::test]
async fn a_taken_port_is_refused_without_naming_who_holds_it() {
    let s = set();
    let u = Identity::generate();
    let (r, w) = res(
        &u,
        "10-1",
        WorkloadType::Network,
        net_data(&s, "n", "10.10.1.0/24"),
    );
    s.net.provision(&r, &w).await.unwrap();
    let (r, w) = res(
        &u,
        "10-2",
        WorkloadType::Container,
        json!({"flist": "img", "capacity": {"cpu": 1, "memory": 8},
               "network": {"network_id": "n"},
               "ports": [{"container_port": 80, "host_port": 30001},
                         {"container_port": 81, "host_port": 30002}]}),
    );
    s.fake.fail_next(
        "start_container",
        "start container agent-ct-10-2: driver failed programming external connectivity on endpoint agent-ct-77-1 (abc): Bind for 0.0.0.0:30002 failed: port is already allocated",
    );
    let e = s.ct.provision(&r, &w).await.unwrap_err().to_string();
    assert_eq!(
        e,
        "ports[1].host_port: 30002/tcp is already in use on this node"
    );
    assert!(s.fake.container_names().is_empty());
}

#[tokio::test]
async fn objects_not_made_for_the_reservation_are_replaced_not_adopted() {
    let s = set();
    let (alice, mallory) = (Identity::generate(), Identity::generate());
    let (r, w) = res(
        &alice,
        "11-1",
        WorkloadType::Container,
        json!({"flist": "img", "capacity": {"cpu": 1, "memory": 8}}),
    );
    let foreign = crate::docker::Labels::from([
        ("io.agent.reservation".to_string(), "11-1".to_string()),
        ("io.agent.user".to_string(), mallory.id().to_string()),
        ("io.agent.type".to_string(), "container".to_string()),
    ]);
    s.fake.add_foreign_container("agent-ct-11-1", foreign);
    s.ct.provision(&r, &w).await.unwrap();
    assert_eq!(s.fake.count("remove_container"), 1);
    let spec = s.fake.container_spec("agent-ct-11-1").unwrap();
    assert_eq!(spec.labels["io.agent.user"], alice.id());
    assert!(s.fake.container_confinement("agent-ct-11-1").is_some());
    // Now it is hers: provisioning again adopts it.
    s.ct.provision(&r, &w).await.unwrap();
    assert_eq!(s.fake.count("create_container"), 1);
}

/// A hostile explorer gives Mallory's reservation the id of Alice's
/// running container: refused, and Alice's container stays.
#[tokio::test]
async fn an_id_reused_for_another_users_reservation_never_destroys_the_running_one() {
    let s = set();
    let (alice, mallory) = (Identity::generate(), Identity::generate());
    let data = json!({"flist": "img", "capacity": {"cpu": 1, "memory": 8}});
    let (r, w) = res(&alice, "12-1", WorkloadType::Container, data.clone());
    s.ct.provision(&r, &w).await.unwrap();
    let (m, mw) = res(&mallory, "12-1", WorkloadType::Container, data);
    let e = s.ct.provision(&m, &mw).await.unwrap_err().to_string();
    assert!(e.contains("held by another reservation"), "{e}");
    assert!(
        !e.contains(alice.id()),
        "names nothing of the other tenant: {e}"
    );
    // The engine rolls a refused provisioning back: that must not
    // touch Alice's container either.
    s.ct.decommission(&m, &mw).await.unwrap();
    assert_eq!(s.fake.count("remove_container"), 0);
    let spec = s.fake.container_spec("agent-ct-12-1").unwrap();
    assert_eq!(spec.labels["io.agent.user"], alice.id());
}

#[tokio::test]
async fn provisioning_twice_creates_once() {
    let s = set();
    let u = Identity::generate();
    let (r, w) = res(
        &u,
        "2-1",
        WorkloadType::Container,
        json!({"flist": "img", "capacity": {"cpu": 1, "memory": 8}}),
    );
    let a = s.ct.provision(&r, &w).await.unwrap();
    let b = s.ct.provision(&r, &w).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(s.fake.count("create_container"), 1);
    assert_eq!(s.ct.list_labelled().await.unwrap(), vec!["2-1".to_string()]);
    s.fake.vanish("agent-ct-2-1");
    assert!(!s.ct.exists(&r, &w).await.unwrap());
    s.ct.provision(&r, &w).await.unwrap();
    assert_eq!(s.fake.count("create_container"), 2);
}

#[tokio::test]
async fn images_are_pulled_or_refused_by_name() {
    let s = set();
    let u = Identity::generate();
    s.fake.allow_pull("reg.io/app:1");
    let (r, w) = res(
        &u,
        "3-1",
        WorkloadType::Container,
        json!({"flist": "app:1", "flist_storage": "reg.io", "capacity": {"cpu": 1, "memory": 8}}),
    );
    s.ct.provision(&r, &w).await.unwrap();
    assert_eq!(s.fake.count("pull_image"), 1);
    let (r, w) = res(
        &u,
        "3-2",
        WorkloadType::Container,
        json!({"flist": "nope", "capacity": {"cpu": 1, "memory": 8}}),
    );
    let e = s.ct.provision(&r, &w).await.unwrap_err();
    assert!(
        matches!(&e, ProvisionError::Refused(m) if m.starts_with("image nope is not on this node and cannot be pulled")),
        "{e}"
    );
    assert!(s.fake.container_spec("agent-ct-3-2").is_none());
}

#[tokio::test]
async fn a_failed_start_leaves_nothing() {
    let s = set();
    let u = Identity::generate();
    let (r, w) = res(
        &u,
        "4-1",
        WorkloadType::Container,
        json!({"flist": "img", "capacity": {"cpu": 1, "memory": 8}}),
    );
    s.fake
        .fail_next("start_container", "start container agent-ct-4-1: boom");
    let e = s.ct.provision(&r, &w).await.unwrap_err();
    assert!(
        matches!(&e, ProvisionError::Docker(m) if m.to_string().contains("boom")),
        "{e}"
    );
    assert!(s.fake.container_names().is_empty());
}

#[tokio::test]
async fn tenancy_and_in_use() {
    let s = set();
    let (a, b) = (Identity::generate(), Identity::generate());
    let (rv, wv) = res(
        &b,
        "5-1",
        WorkloadType::Volume,
        json!({"size": 1, "type": "SSD"}),
    );
    s.vol.provision(&rv, &wv).await.unwrap();
    let (r, w) = res(
        &a,
        "5-2",
        WorkloadType::Container,
        json!({"flist": "img",
        "capacity": {"cpu": 1, "memory": 8}, "mounts": [{"volume_id": "5-1", "mountpoint": "/d"}]}),
    );
    let e = s.ct.provision(&r, &w).await.unwrap_err().to_string();
    assert_eq!(
        e,
        format!("volume 5-1 is not a volume of user {} on this node", a.id())
    );
    // Bob's own container may mount it; then the volume is in use.
    let (r, w) = res(
        &b,
        "5-3",
        WorkloadType::Container,
        json!({"flist": "img",
        "capacity": {"cpu": 1, "memory": 8}, "mounts": [{"volume_id": "5-1", "mountpoint": "/d"}]}),
    );
    s.ct.provision(&r, &w).await.unwrap();
    let e = s.vol.decommission(&rv, &wv).await.unwrap_err();
    assert!(
        matches!(&e, ProvisionError::InUse(m) if m.contains("agent-ct-5-3 (running)")),
        "{e}"
    );
    s.ct.decommission(&r, &w).await.unwrap();
    s.vol.decommission(&rv, &wv).await.unwrap();
    assert!(s.fake.volume_names().is_empty());
}

#[tokio::test]
async fn overlapping_subnets_are_refused_by_name() {
    let s = set();
    s.fake.add_network(crate::docker::NetworkInfo {
        name: "bridge".into(),
        subnets: vec!["172.17.0.0/16".into()],
        ..Default::default()
    });
    let (a, b) = (Identity::generate(), Identity::generate());
    let (r, w) = res(
        &a,
        "6-1",
        WorkloadType::Network,
        net_data(&s, "n", "10.2.0.0/16"),
    );
    s.net.provision(&r, &w).await.unwrap();
    let (r, w) = res(
        &b,
        "6-2",
        WorkloadType::Network,
        net_data(&s, "n", "10.2.3.0/24"),
    );
    let e = s.net.provision(&r, &w).await.unwrap_err().to_string();
    let a_net = crate::names::Names::unscoped().network_name(a.id(), "n");
    assert_eq!(e, format!("subnet 10.2.3.0/24 overlaps network {a_net} (10.2.0.0/16) of another user on this node"));
    let (r, w) = res(
        &b,
        "6-3",
        WorkloadType::Network,
        json!({"name": "x", "ip_range": "172.16.0.0/12",
        "net_resources": [{"node_id": s.node.id(), "subnet": "172.17.9.0/24"}]}),
    );
    let e = s.net.provision(&r, &w).await.unwrap_err().to_string();
    assert!(e.contains("overlaps docker network bridge"), "{e}");
    assert_eq!(s.fake.count("create_network"), 1);
}

#[test]
fn registry_has_the_three_docker_types() {
    let fake = Arc::new(FakeDocker::new());
    let dir = tempfile::tempdir().unwrap();
    let reg = docker_registry(fake, Arc::new(Identity::generate()), dir.path());
    let mut kinds: Vec<_> = reg.kinds().collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            WorkloadType::Network,
            WorkloadType::Volume,
            WorkloadType::Container
        ]
    );
}
