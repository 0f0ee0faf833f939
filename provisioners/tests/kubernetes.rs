//! The kubernetes provisioner on the real Docker engine, against the local
//! k3s stand-in image `agent-test/k3s:latest` (tests/images/build-standins.sh;
//! production uses rancher/k3s). The stand-in records the argv and the
//! environment it was started with, so the tests assert the exact k3s
//! command lines, that the cluster token arrives intact in `K3S_TOKEN` and
//! nowhere else (argv, result, logs), the Docker limits, the state volume,
//! the authorized keys, and the refusals.
//!
//! This machine's engine cannot start privileged containers (its bounding
//! set lacks capabilities; runc fails "unable to apply caps"), so the
//! provisioning tests run nodes unprivileged (`with_privileged(false)`),
//! and a separate test creates, without starting, the container the
//! default provisioner asks for and checks Docker records it privileged.
//!
//! Kubernetes is refused unless enabled: the provisioning tests enable it
//! with `KubernetesMode::PrivilegedUnsafe` (the stand-in is not really
//! privileged here); the hostile tests check the default refusal, masters
//! outside the user's network, a hand-made container under a node's name,
//! and that an isolating runtime reaches Docker's HostConfig.

use std::net::Ipv4Addr;
use std::sync::{Arc, Once};
use std::time::Duration;

use chrono::Utc;
use provisioners::debug::LogBus;
use provisioners::docker::Docker;
use provisioners::kubernetes::{KubernetesMode, KubernetesProvisioner, DISABLED};
use provisioners::names::Names;
use provisioners::{BollardDocker, NetworkProvisioner, ProvisionError, Provisioner};
use reservation::workloads::Kubernetes;
use reservation::{seal_for, Identity, Reservation, Secret, Workload, WorkloadType};
use serde_json::{json, Value};
use tracing_subscriber::layer::SubscriberExt;

const IMAGE: &str = "agent-test/k3s:latest";

/// The node container's name, as the provisioners under test (unscoped)
/// make it.
fn node_name(id: &str) -> String {
    provisioners::kubernetes::node_name(&Names::unscoped(), id)
}

/// The Docker network's name, as the provisioners under test make it.
fn network_name(user_id: &str, name: &str) -> String {
    Names::unscoped().network_name(user_id, name)
}
const TOKEN: &str = "K10::server:t0k3n with 'quotes' \"and\" $dollars";

fn build_images() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/images/build-standins.sh"
        );
        let st = std::process::Command::new("sh")
            .arg(script)
            .status()
            .unwrap();
        assert!(st.success(), "{script} failed");
    });
}

fn counter() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes the test's containers, volumes and network, also on panic.
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    networks: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            sh(&format!(
                "docker rm -f {c} >/dev/null 2>&1; docker volume rm -f {c} >/dev/null 2>&1"
            ));
        }
        for n in &self.networks {
            sh(&format!("docker network rm {n} >/dev/null 2>&1"));
        }
    }
}

struct Setup {
    docker: Arc<BollardDocker>,
    node: Arc<Identity>,
    user: Identity,
    k8s: KubernetesProvisioner,
    /// The user's network: its name and this node's subnet's first three octets.
    net: String,
    octets: [u8; 3],
    cleanup: Cleanup,
}

fn reservation(node: &Identity, user: &Identity, kind: &str, data: &Value) -> Reservation {
    let mut r = Reservation {
        id: format!("{}{:04}-1", std::process::id(), counter()),
        node_id: node.id().to_string(),
        user_id: user.id().to_string(),
        kind: kind.into(),
        data: serde_json::value::RawValue::from_string(data.to_string()).unwrap(),
        created: Some(Utc::now()),
        duration: 3_600_000_000_000,
        signature: String::new(),
        to_delete: false,
        delete_signature: None,
        ..Default::default()
    };
    user.sign_reservation(&mut r);
    r
}

/// The user's network on a /24 no other network on this node uses.
async fn setup() -> Setup {
    build_images();
    let docker = Arc::new(BollardDocker::connect().await.unwrap());
    let node = Arc::new(Identity::generate());
    let user = Identity::generate();
    let nets = NetworkProvisioner::new(docker.clone(), node.id());
    let net = format!("k8snet-{}-{}", std::process::id(), counter());
    let mut cleanup = Cleanup::default();
    cleanup.networks.push(network_name(user.id(), &net));
    let mut seed = Utc::now().timestamp_subsec_nanos() ^ std::process::id() ^ counter();
    for _ in 0..20 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let octets = [10, 100 + (seed >> 8) as u8 % 100, (seed >> 16) as u8];
        let data = json!({
            "name": net,
            "ip_range": format!("10.{}.0.0/16", octets[1]),
            "net_resources": [{"node_id": node.id(), "subnet": format!("10.{}.{}.0/24", octets[1], octets[2])}],
        });
        let r = reservation(&node, &user, "network", &data);
        let w = Workload::parse(WorkloadType::Network, &r.data).unwrap();
        match nets.provision(&r, &w).await {
            Ok(_) => {
                let k8s = KubernetesProvisioner::new(docker.clone(), node.clone(), IMAGE)
                    .with_stop_grace(Duration::from_secs(1))
                    .with_privileged(false)
                    .with_mode(KubernetesMode::PrivilegedUnsafe);
                return Setup {
                    docker,
                    node,
                    user,
                    k8s,
                    net,
                    octets,
                    cleanup,
                };
            }
            Err(ProvisionError::Refused(m)) if m.contains("overlaps") => continue,
            Err(e) => panic!("cannot make the test network: {e}"),
        }
    }
    panic!("no free /24 found for the test network");
}

impl Setup {
    fn ip(&self, last: u8) -> String {
        let [a, b, c] = self.octets;
        format!("{a}.{b}.{c}.{last}")
    }

    fn k8s_reservation(&mut self, user: &Identity, mut data: Value) -> (Reservation, Workload) {
        if data.get("cluster_secret").is_none() {
            data["cluster_secret"] =
                Value::String(seal_for(self.node.id(), TOKEN.as_bytes()).unwrap());
        }
        let r = reservation(&self.node, user, "kubernetes", &data);
        self.cleanup.containers.push(node_name(&r.id));
        let w = Workload::parse(WorkloadType::Kubernetes, &r.data).unwrap();
        (r, w)
    }

    /// The stand-in's record of how k3s was started.
    async fn started(&self, name: &str) -> Value {
        for _ in 0..100 {
            let logs = self.docker.container_logs(name, 20).await.unwrap();
            if let Some(line) = logs.lines().find(|l| l.trim_start().starts_with('{')) {
                return serde_json::from_str(line.trim()).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name} recorded nothing");
    }

    async fn inspect(&self, name: &str) -> bollard::models::ContainerInspectResponse {
        self.docker
            .client()
            .inspect_container(name, None)
            .await
            .unwrap()
    }
}

fn argv(started: &Value) -> Vec<String> {
    started["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn server_and_agent_nodes_start_with_exact_commands_limits_token_and_keys() {
    let mut s = setup().await;
    let bus = LogBus::default();
    let mut logs = bus.subscribe();
    let _guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(bus.layer()));
    let user = Identity::from_seed(&s.user.seed());
    let keys = [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0 alice@laptop",
        "ssh-rsa AAAAB3NzaC1yc2E bob@desk",
    ];

    // The master.
    let (server, ws) = s.k8s_reservation(
        &user,
        json!({"size": 1, "network_id": s.net, "ip": s.ip(10), "master_ips": [], "ssh_keys": keys}),
    );
    let res = s.k8s.provision(&server, &ws).await.unwrap();
    assert_eq!(res["ip"], s.ip(10));
    assert!(!res.to_string().contains("t0k3n"), "{res}");
    let name = node_name(&server.id);
    let started = s.started(&name).await;
    assert_eq!(
        argv(&started),
        ["/bin/k3s", "server", "--node-ip", &s.ip(10)]
    );
    assert_eq!(started["env"]["K3S_TOKEN"], TOKEN);
    assert!(!argv(&started).iter().any(|a| a.contains("t0k3n")));

    let c = s.inspect(&name).await;
    assert_eq!(c.id.as_deref(), res["id"].as_str());
    let host = c.host_config.unwrap();
    assert_eq!(host.nano_cpus, Some(1_000_000_000));
    assert_eq!(host.memory, Some(2048 * 1024 * 1024));
    assert!(host.tmpfs.unwrap_or_default().contains_key("/run"));
    let mounts = c.mounts.unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.name.as_deref() == Some(name.as_str())
                && m.destination.as_deref() == Some("/var/lib/rancher")),
        "{mounts:?}"
    );
    let eps = c.network_settings.unwrap().networks.unwrap();
    let ep = &eps[&network_name(user.id(), &s.net)];
    assert_eq!(ep.ip_address.as_deref(), Some(s.ip(10).as_str()));
    let vol = s.docker.inspect_volume(&name).await.unwrap().unwrap();
    assert_eq!(vol.labels["io.agent.size_gib"], "50");

    // authorized_keys: both keys, one per line, 0600 in a 0700 directory.
    let ak = sh(&format!(
        "docker exec {name} cat /root/.ssh/authorized_keys"
    ));
    assert_eq!(ak, format!("{}\n{}\n", keys[0], keys[1]));
    let modes = sh(&format!(
        "docker exec {name} stat -c %a /root/.ssh /root/.ssh/authorized_keys"
    ));
    assert_eq!(modes, "700\n600\n");

    // An agent of size 2 joining it.
    let (agent, wa) = s.k8s_reservation(
        &user,
        json!({"size": 2, "network_id": s.net, "ip": s.ip(11), "master_ips": [s.ip(10)]}),
    );
    let res_a = s.k8s.provision(&agent, &wa).await.unwrap();
    let aname = node_name(&agent.id);
    let started = s.started(&aname).await;
    assert_eq!(
        argv(&started),
        [
            "/bin/k3s",
            "agent",
            "--server",
            &format!("https://{}:6443", s.ip(10)),
            "--node-ip",
            &s.ip(11)
        ]
    );
    assert_eq!(started["env"]["K3S_TOKEN"], TOKEN);
    let host = s.inspect(&aname).await.host_config.unwrap();
    assert_eq!(host.nano_cpus, Some(2_000_000_000));
    assert_eq!(host.memory, Some(4096 * 1024 * 1024));
    let ak = sh(&format!("docker exec {aname} ls /root/.ssh 2>&1"));
    assert!(
        !ak.contains("authorized_keys"),
        "no keys given, no file: {ak}"
    );

    // (An IPv6 master would be written in brackets, see the unit test of
    // `k3s_command`; networks on a node are IPv4, so such a master is
    // outside the user's network and refused: `refusals_change_nothing`.)

    // Provisioning again reuses the node.
    assert_eq!(s.k8s.provision(&server, &ws).await.unwrap(), res);
    assert!(s.k8s.exists(&agent, &wa).await.unwrap());
    let ids = s.k8s.list_labelled().await.unwrap();
    for r in [&server, &agent] {
        assert!(ids.contains(&r.id), "{ids:?}");
    }
    assert_eq!(res_a["ip"], s.ip(11));

    // The token never reached a log line.
    let mut n = 0;
    while let Ok(line) = logs.try_recv() {
        assert!(!line.contains("t0k3n"), "{line}");
        n += 1;
    }
    assert!(n > 0, "the provisioner logged nothing");

    // Decommission removes container and volume.
    for (r, w) in [(&server, &ws), (&agent, &wa)] {
        s.k8s.decommission(r, w).await.unwrap();
        assert!(!s.k8s.exists(r, w).await.unwrap());
        let name = node_name(&r.id);
        assert!(s.docker.inspect_container(&name).await.unwrap().is_none());
        assert!(s.docker.inspect_volume(&name).await.unwrap().is_none());
    }
    s.k8s.decommission(&server, &ws).await.unwrap();
}

#[tokio::test]
async fn refusals_change_nothing() {
    let mut s = setup().await;
    let user = Identity::from_seed(&s.user.seed());
    let refused = |r: Result<Value, ProvisionError>, want: &str| match r {
        Err(ProvisionError::Refused(m)) => assert!(m.contains(want), "{m:?} lacks {want:?}"),
        other => panic!("expected a refusal with {want:?}, got {other:?}"),
    };
    let mut tried = Vec::new();

    // Another user names this user's network: it is not theirs.
    let mallory = Identity::generate();
    let (r, w) = s.k8s_reservation(
        &mallory,
        json!({"size": 1, "network_id": s.net, "ip": s.ip(20)}),
    );
    refused(s.k8s.provision(&r, &w).await, "is not a network of user");
    tried.push(r);

    // Outside the subnet, the gateway, IPv6.
    let [a, b, c] = s.octets;
    let outside = Ipv4Addr::new(a, b, c.wrapping_add(1), 5).to_string();
    let gateway = s.ip(1);
    for (ip, want) in [
        (outside.as_str(), "outside"),
        (gateway.as_str(), "gateway"),
        ("fd00::5", "IPv6"),
    ] {
        let (r, w) = s.k8s_reservation(&user, json!({"size": 1, "network_id": s.net, "ip": ip}));
        refused(s.k8s.provision(&r, &w).await, want);
        tried.push(r);
    }

    // A cluster secret sealed for another node.
    let other = Identity::generate();
    let sealed = seal_for(other.id(), TOKEN.as_bytes()).unwrap();
    let (r, w) = s.k8s_reservation(
        &user,
        json!({"size": 1, "network_id": s.net, "ip": s.ip(21), "cluster_secret": sealed}),
    );
    refused(s.k8s.provision(&r, &w).await, "cluster_secret");
    tried.push(r);

    // A master outside the user's network: the node would join a server
    // anywhere (the tenant's own, on the internet, another tenant's).
    let elsewhere = Ipv4Addr::new(a, b, c.wrapping_add(1), 10).to_string();
    for master in ["1.2.3.4", elsewhere.as_str(), "fd00::1"] {
        let (r, w) = s.k8s_reservation(
            &user,
            json!({"size": 1, "network_id": s.net, "ip": s.ip(23), "master_ips": [master]}),
        );
        match s.k8s.provision(&r, &w).await {
            Err(ProvisionError::Refused(m)) => assert!(
                m.starts_with("data.master_ips: ") && m.contains(master),
                "{m}"
            ),
            other => panic!("expected a master_ips refusal, got {other:?}"),
        }
        tried.push(r);
    }

    // Size 3 (reservation validation refuses it first; the provisioner too).
    let (r, w) = s.k8s_reservation(
        &user,
        json!({"size": 1, "network_id": s.net, "ip": s.ip(22)}),
    );
    let Workload::Kubernetes(k) = w else {
        unreachable!()
    };
    let big = Workload::Kubernetes(Kubernetes { size: 3, ..k });
    refused(s.k8s.provision(&r, &big).await, "not 1 or 2");
    tried.push(r);

    for r in &tried {
        let name = node_name(&r.id);
        assert!(
            s.docker.inspect_container(&name).await.unwrap().is_none(),
            "{name}"
        );
        assert!(
            s.docker.inspect_volume(&name).await.unwrap().is_none(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn the_default_node_container_is_privileged() {
    let mut s = setup().await;
    let user = Identity::from_seed(&s.user.seed());
    let k8s = KubernetesProvisioner::new(s.docker.clone(), s.node.clone(), IMAGE);
    let (r, w) = s.k8s_reservation(
        &user,
        json!({"size": 2, "network_id": s.net, "ip": s.ip(30)}),
    );
    let Workload::Kubernetes(k) = &w else {
        unreachable!()
    };
    let network = network_name(user.id(), &s.net);
    let ip: Ipv4Addr = s.ip(30).parse().unwrap();
    let (spec, extras) = k8s
        .node_container(&r, k, &network, ip, Secret::new(TOKEN))
        .unwrap();
    // Created, not started: this engine could not start it.
    s.docker
        .create_container_with(&spec, &extras)
        .await
        .unwrap();
    let c = s.inspect(&spec.name).await;
    let host = c.host_config.unwrap();
    assert_eq!(host.privileged, Some(true));
    assert_eq!(host.nano_cpus, Some(2_000_000_000));
    assert_eq!(host.memory, Some(4096 * 1024 * 1024));
    let tmpfs = host.tmpfs.unwrap();
    assert!(
        tmpfs.contains_key("/run") && tmpfs.contains_key("/var/run"),
        "{tmpfs:?}"
    );
    let config = c.config.unwrap();
    assert_eq!(
        config.entrypoint.unwrap(),
        ["/bin/k3s"],
        "the image's entrypoint is kept"
    );
    assert_eq!(config.cmd.unwrap(), ["server", "--node-ip", &s.ip(30)]);
    let env = config.env.unwrap();
    assert!(env.contains(&format!("K3S_TOKEN={TOKEN}")), "{env:?}");
    s.docker.remove_container(&spec.name).await.unwrap();
}

#[tokio::test]
async fn kubernetes_is_refused_by_default() {
    let mut s = setup().await;
    let user = Identity::from_seed(&s.user.seed());
    let k8s =
        KubernetesProvisioner::new(s.docker.clone(), s.node.clone(), IMAGE).with_privileged(false);
    let (r, w) = s.k8s_reservation(
        &user,
        json!({"size": 1, "network_id": s.net, "ip": s.ip(40), "master_ips": []}),
    );
    match k8s.provision(&r, &w).await {
        Err(ProvisionError::Refused(m)) => {
            assert_eq!(m, DISABLED);
            assert!(
                m.contains("--kubernetes-runtime") && m.contains("--kubernetes-privileged-unsafe")
            );
        }
        other => panic!("expected the disabled refusal, got {other:?}"),
    }
    let name = node_name(&r.id);
    assert!(s.docker.inspect_container(&name).await.unwrap().is_none());
    assert!(s.docker.inspect_volume(&name).await.unwrap().is_none());
}

#[tokio::test]
async fn a_hand_made_container_under_a_nodes_name_is_not_adopted() {
    let mut s = setup().await;
    let user = Identity::from_seed(&s.user.seed());
    let (r, w) = s.k8s_reservation(
        &user,
        json!({"size": 1, "network_id": s.net, "ip": s.ip(41), "master_ips": []}),
    );
    let name = node_name(&r.id);
    // Another user's labels (and reservation X's id) on a container and a
    // volume made by hand under X's node name.
    let mallory = Identity::generate();
    let labels = format!(
        "--label io.agent.reservation={id} --label io.agent.user={m} --label io.agent.type=kubernetes",
        id = r.id,
        m = mallory.id()
    );
    sh(&format!("docker volume create {labels} {name} >/dev/null"));
    let foreign = sh(&format!(
        "docker create --name {name} {labels} --label io.agent.k8s.role=server {IMAGE} server"
    ));
    let foreign = foreign.trim();
    assert!(!foreign.is_empty(), "the hand-made container was created");

    let res = s.k8s.provision(&r, &w).await.unwrap();
    assert_ne!(res["id"], foreign, "the hand-made container was reused");
    let c = s.inspect(&name).await;
    let labels = c.config.unwrap().labels.unwrap();
    assert_eq!(labels["io.agent.user"], user.id());
    assert_eq!(
        labels["io.agent.sig"],
        provisioners::names::signature_hash(&r)
    );
    let vol = s.docker.inspect_volume(&name).await.unwrap().unwrap();
    assert_eq!(
        vol.labels["io.agent.user"],
        user.id(),
        "the volume was made afresh"
    );
    assert!(s.k8s.exists(&r, &w).await.unwrap());
    s.k8s.decommission(&r, &w).await.unwrap();
}

#[tokio::test]
async fn an_isolating_runtime_reaches_the_host_config() {
    let mut s = setup().await;
    let user = Identity::from_seed(&s.user.seed());
    // This engine registers no isolating runtime; `runc` is registered, so
    // Docker accepts the create and records what was asked. (The agent
    // itself refuses runc at start: it does not isolate.)
    let k8s = KubernetesProvisioner::new(s.docker.clone(), s.node.clone(), IMAGE)
        .with_mode(KubernetesMode::Runtime("runc".into()));
    let (r, w) = s.k8s_reservation(
        &user,
        json!({"size": 1, "network_id": s.net, "ip": s.ip(42)}),
    );
    let Workload::Kubernetes(k) = &w else {
        unreachable!()
    };
    let network = network_name(user.id(), &s.net);
    let ip: Ipv4Addr = s.ip(42).parse().unwrap();
    let (spec, extras) = k8s
        .node_container(&r, k, &network, ip, Secret::new(TOKEN))
        .unwrap();
    assert_eq!(extras.runtime.as_deref(), Some("runc"));
    s.docker
        .create_container_with(&spec, &extras)
        .await
        .unwrap();
    let host = s.inspect(&spec.name).await.host_config.unwrap();
    assert_eq!(host.runtime.as_deref(), Some("runc"));
    s.docker.remove_container(&spec.name).await.unwrap();

    // An unregistered runtime: Docker refuses the container outright.
    let k8s = KubernetesProvisioner::new(s.docker.clone(), s.node.clone(), IMAGE)
        .with_mode(KubernetesMode::Runtime("kata-not-registered".into()));
    let (spec, extras) = k8s
        .node_container(&r, k, &network, ip, Secret::new(TOKEN))
        .unwrap();
    let e = s.docker.create_container_with(&spec, &extras).await;
    assert!(e.is_err(), "{e:?}");
    assert!(s
        .docker
        .inspect_container(&spec.name)
        .await
        .unwrap()
        .is_none());
}
