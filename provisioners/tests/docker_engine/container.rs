//! The container provisioner against the real engine.

use std::sync::Arc;
use std::time::Duration;

use provisioners::{
    ContainerProvisioner, Docker, NetworkProvisioner, ProvisionError, Provisioner,
    VolumeProvisioner,
};
use reservation::{seal_for, Identity, Workload, WorkloadType};
use serde_json::json;

use crate::common::{self, host, inspect, reservation, Guard};

struct Env {
    d: Arc<provisioners::BollardDocker>,
    node: Arc<Identity>,
    ct: ContainerProvisioner,
    vol: VolumeProvisioner,
    net: NetworkProvisioner,
}

async fn env(g: &Guard) -> Env {
    let d = common::docker().await;
    let node = Arc::new(Identity::generate());
    Env {
        ct: ContainerProvisioner::new(d.clone(), node.clone())
            .with_stop_grace(Duration::from_secs(2)),
        vol: VolumeProvisioner::new(d.clone(), g.root()),
        net: NetworkProvisioner::new(d.clone(), node.id()),
        d,
        node,
    }
}

impl Env {
    /// Provision user's network `name` on `subnet`; returns its reservation.
    async fn network(&self, g: &mut Guard, user: &Identity, name: &str, subnet: &str) {
        let (r, w) = reservation(
            user,
            &self.node,
            &g.id(),
            WorkloadType::Network,
            json!({"name": name, "ip_range": "10.0.0.0/8",
                   "net_resources": [{"node_id": self.node.id(), "subnet": subnet}]}),
        );
        self.net.provision(&r, &w).await.expect("network");
    }

    async fn volume(&self, g: &mut Guard, user: &Identity) -> String {
        let id = g.id();
        let (r, w) = reservation(
            user,
            &self.node,
            &id,
            WorkloadType::Volume,
            json!({"size": 1, "type": "SSD"}),
        );
        self.vol.provision(&r, &w).await.expect("volume");
        id
    }
}

#[tokio::test]
async fn container_matches_the_request_and_is_decommissioned() {
    let mut g = Guard::new();
    let e = env(&g).await;
    let user = Identity::generate();
    let subnet = common::unique_subnet();
    e.network(&mut g, &user, "web", &subnet).await;
    let vol = e.volume(&mut g, &user).await;
    let ip = host(&subnet, 20);
    let sealed = seal_for(e.node.id(), b"s3cret-value").unwrap();
    let id = g.id();
    let (r, w) = reservation(
        &user,
        &e.node,
        &id,
        WorkloadType::Container,
        json!({
            "flist": common::IMAGE,
            "env": {"FOO": "bar baz"},
            "secret_env": {"TOKEN": sealed},
            "entrypoint": "sh -c 'echo \"foo=$FOO token=$TOKEN\"; echo hello > /data/x; exec sleep 600'",
            "mounts": [{"volume_id": vol, "mountpoint": "/data//"}],
            "network": {"network_id": "web", "ips": [ip]},
            "capacity": {"cpu": 1, "memory": 64},
        }),
    );
    let result = e.ct.provision(&r, &w).await.expect("provision");
    assert_eq!(result["ipv4"], ip, "{result}");
    assert_eq!(result["ipv6"], "");
    let text = result.to_string();
    assert!(!text.contains("s3cret"), "secret in result: {text}");

    let name = format!("agent-ct-{id}");
    let c = common::inspect(&e.d, &name).await;
    assert_eq!(result["id"], c.id.clone().unwrap());
    let cfg = c.config.clone().unwrap();
    assert_eq!(cfg.image.as_deref(), Some(common::IMAGE));
    let env = cfg.env.clone().unwrap();
    assert!(env.contains(&"FOO=bar baz".to_string()), "{env:?}");
    assert!(env.contains(&"TOKEN=s3cret-value".to_string()));
    assert_eq!(
        cfg.entrypoint.clone().unwrap(),
        vec![
            "sh",
            "-c",
            "echo \"foo=$FOO token=$TOKEN\"; echo hello > /data/x; exec sleep 600"
        ]
    );
    assert_eq!(cfg.tty, Some(false));
    let labels = common::labels(cfg.labels.clone());
    assert_eq!(labels["io.agent.reservation"], id);
    assert_eq!(labels["io.agent.user"], user.id());
    assert_eq!(labels["io.agent.type"], "container");
    let hc = c.host_config.clone().unwrap();
    assert_eq!(hc.nano_cpus, Some(1_000_000_000));
    assert_eq!(hc.memory, Some(64 * 1024 * 1024));
    assert_eq!(
        hc.restart_policy.unwrap().name,
        Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED)
    );
    let net_name = provisioners::names::network_name(user.id(), "web");
    assert_eq!(hc.network_mode.as_deref(), Some(net_name.as_str()));
    let mounts = c.mounts.clone().unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(
        mounts[0].name.as_deref(),
        Some(format!("agent-vol-{vol}").as_str())
    );
    assert_eq!(mounts[0].destination.as_deref(), Some("/data"));
    let eps = c.network_settings.clone().unwrap().networks.unwrap();
    assert_eq!(eps[&net_name].ip_address.as_deref(), Some(ip.as_str()));
    assert_eq!(
        eps[&net_name]
            .ipam_config
            .clone()
            .unwrap()
            .ipv4_address
            .as_deref(),
        Some(ip.as_str())
    );
    assert_eq!(c.state.unwrap().running, Some(true));

    // What the user sees inside: env and secret, and a write to the volume
    // that lands in the volume's filesystem.
    let file = e.vol.data_path(&vol).join("x");
    let mut logs = String::new();
    for _ in 0..50 {
        logs = e.d.container_logs(&name, 10).await.unwrap();
        let written = std::fs::read_to_string(&file).is_ok_and(|s| s == "hello\n");
        if logs.contains("foo=") && written {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(logs.contains("foo=bar baz token=s3cret-value"), "{logs}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hello\n");

    // Decommission: stopped and removed.
    assert!(e.ct.exists(&r, &w).await.unwrap());
    e.ct.decommission(&r, &w).await.expect("decommission");
    assert!(e.d.inspect_container(&name).await.unwrap().is_none());
    assert!(!e.ct.exists(&r, &w).await.unwrap());
    e.ct.decommission(&r, &w)
        .await
        .expect("decommission twice is fine");
}

#[tokio::test]
async fn provisioning_twice_reuses_the_container() {
    let mut g = Guard::new();
    let e = env(&g).await;
    let user = Identity::generate();
    let id = g.id();
    let (r, w) = reservation(
        &user,
        &e.node,
        &id,
        WorkloadType::Container,
        json!({"flist": "agent-test/busybox", "entrypoint": "sleep 600",
               "capacity": {"cpu": 1, "memory": 32}}),
    );
    let a = e.ct.provision(&r, &w).await.unwrap();
    let b = e.ct.provision(&r, &w).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(
        e.ct.list_labelled()
            .await
            .unwrap()
            .iter()
            .filter(|x| **x == id)
            .count(),
        1
    );
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.agent.reservation={id}"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    // No network: loopback only, empty addresses, network mode none.
    assert_eq!(a["ipv4"], "");
    let c = inspect(&e.d, &format!("agent-ct-{id}")).await;
    assert_eq!(c.host_config.unwrap().network_mode.as_deref(), Some("none"));
    let run =
        e.d.client()
            .create_exec(
                &format!("agent-ct-{id}"),
                bollard::exec::CreateExecOptions::<String> {
                    cmd: Some(vec!["ls".into(), "/sys/class/net".into()]),
                    attach_stdout: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    let mut out = String::new();
    if let bollard::exec::StartExecResults::Attached { mut output, .. } =
        e.d.client().start_exec(&run.id, None).await.unwrap()
    {
        use futures_util::StreamExt;
        while let Some(Ok(o)) = output.next().await {
            out.push_str(&o.to_string());
        }
    }
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), vec!["lo"]);
}

#[tokio::test]
async fn a_container_removed_behind_our_back_is_seen_and_made_again() {
    let mut g = Guard::new();
    let e = env(&g).await;
    let user = Identity::generate();
    let id = g.id();
    let (r, w) = reservation(
        &user,
        &e.node,
        &id,
        WorkloadType::Container,
        json!({"flist": common::IMAGE, "entrypoint": "sh", "interactive": true,
               "capacity": {"cpu": 1, "memory": 32}}),
    );
    let first = e.ct.provision(&r, &w).await.unwrap();
    // interactive: a tty and an open stdin keep `sh` running.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = inspect(&e.d, &format!("agent-ct-{id}")).await;
    let cfg = c.config.unwrap();
    assert_eq!((cfg.tty, cfg.open_stdin), (Some(true), Some(true)));
    assert_eq!(c.state.unwrap().running, Some(true));

    assert!(e.ct.list_labelled().await.unwrap().contains(&id));
    let st = std::process::Command::new("docker")
        .args(["rm", "-f", &format!("agent-ct-{id}")])
        .output()
        .unwrap();
    assert!(st.status.success());
    assert!(!e.ct.exists(&r, &w).await.unwrap());
    let again = e.ct.provision(&r, &w).await.unwrap();
    assert_ne!(first["id"], again["id"]);
    assert!(e.ct.exists(&r, &w).await.unwrap());

    // Stopped behind our back: not counted as existing; provisioning
    // starts the same container again.
    e.d.stop_container(&format!("agent-ct-{id}"), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(!e.ct.exists(&r, &w).await.unwrap());
    let third = e.ct.provision(&r, &w).await.unwrap();
    assert_eq!(third["id"], again["id"]);
    assert!(e.ct.exists(&r, &w).await.unwrap());

    // Orphan removal by label.
    e.ct.remove_labelled(&id).await.unwrap();
    assert!(!e.ct.list_labelled().await.unwrap().contains(&id));
}

/// Provision and expect a refusal whose message holds `want`, leaving no
/// container behind.
async fn refused(e: &Env, r: &reservation::Reservation, w: &Workload, want: &str) {
    match e.ct.provision(r, w).await {
        Err(ProvisionError::Refused(m)) => assert!(m.contains(want), "{want:?} not in {m:?}"),
        other => panic!("expected a refusal with {want:?}, got {other:?}"),
    }
    let name = format!("agent-ct-{}", r.id);
    assert!(
        e.d.inspect_container(&name).await.unwrap().is_none(),
        "{name} was created"
    );
}

#[tokio::test]
async fn bad_requests_are_refused_and_change_nothing() {
    let mut g = Guard::new();
    let e = env(&g).await;
    let alice = Identity::generate();
    let bob = Identity::generate();
    let subnet = common::unique_subnet();
    e.network(&mut g, &bob, "shared-name", &subnet).await;
    let bobs_volume = e.volume(&mut g, &bob).await;
    let asubnet = common::unique_subnet();
    e.network(&mut g, &alice, "mine", &asubnet).await;
    let ncpu = common::info(&e.d).await.ncpu;

    let cases: Vec<(serde_json::Value, String)> = vec![
        (
            json!({"flist": common::IMAGE, "capacity": {"cpu": 1, "memory": 32},
                   "mounts": [{"volume_id": bobs_volume, "mountpoint": "/data"}]}),
            format!(
                "volume {bobs_volume} is not a volume of user {} on this node",
                alice.id()
            ),
        ),
        (
            json!({"flist": common::IMAGE, "capacity": {"cpu": 1, "memory": 32},
                   "mounts": [{"volume_id": "999999999-9", "mountpoint": "/data"}]}),
            "volume 999999999-9 is not a volume of user".into(),
        ),
        (
            json!({"flist": common::IMAGE, "capacity": {"cpu": 1, "memory": 32},
                   "network": {"network_id": "shared-name"}}),
            format!(
                "network \"shared-name\" is not a network of user {} on this node",
                alice.id()
            ),
        ),
        (
            json!({"flist": "agent-test/not-here:v9", "capacity": {"cpu": 1, "memory": 32}}),
            "image agent-test/not-here:v9 is not on this node and cannot be pulled".into(),
        ),
        (
            json!({"flist": "agent-test/busybox", "flist_storage": "127.0.0.1:9",
                   "capacity": {"cpu": 1, "memory": 32}}),
            "image 127.0.0.1:9/agent-test/busybox".into(),
        ),
        (
            json!({"flist": common::IMAGE, "capacity": {"cpu": 1, "memory": 32},
                   "network": {"network_id": "mine", "ips": ["10.255.255.7"]}}),
            "network.ips: 10.255.255.7 is outside network \"mine\"".into(),
        ),
        (
            json!({"flist": common::IMAGE, "capacity": {"cpu": 1, "memory": 32},
                   "network": {"network_id": "mine", "ips": [host(&asubnet, 1)]}}),
            "is the gateway".into(),
        ),
        (
            json!({"flist": common::IMAGE, "capacity": {"cpu": 1, "memory": 32},
                   "network": {"network_id": "mine", "public_ip6": true}}),
            "network.public_ip6: this node has no public IPv6".into(),
        ),
        (
            json!({"flist": common::IMAGE, "capacity": {"cpu": 1, "memory": 32},
                   "ports": [{"container_port": 80, "host_port": 18080}]}),
            "ports: publishing ports needs a network".into(),
        ),
        (
            json!({"flist": common::IMAGE, "capacity": {"cpu": ncpu + 1, "memory": 32}}),
            format!(
                "capacity.cpu: {} cores asked, this node has {ncpu}",
                ncpu + 1
            ),
        ),
        (
            json!({"flist": common::IMAGE, "capacity": {"cpu": 1, "memory": 2}}),
            "capacity.memory: 2 MiB is below".into(),
        ),
        (
            json!({"flist": common::IMAGE, "capacity": {"cpu": 1, "memory": 32},
                   "secret_env": {"K": seal_for(bob.id(), b"x").unwrap()}}),
            "sealed secret secret_env.K: cannot be opened with this node's key".into(),
        ),
    ];
    for (data, want) in cases {
        let (r, w) = reservation(&alice, &e.node, &g.id(), WorkloadType::Container, data);
        refused(&e, &r, &w, &want).await;
    }

    // A mountpoint that escapes, built past the wire parser's own check.
    let (r, w) = reservation(
        &alice,
        &e.node,
        &g.id(),
        WorkloadType::Container,
        json!({"flist": common::IMAGE, "capacity": {"cpu": 1, "memory": 32}}),
    );
    let Workload::Container(mut c) = w else {
        unreachable!()
    };
    c.mounts.push(reservation::workloads::Mount {
        volume_id: bobs_volume.clone(),
        mountpoint: "/data/../etc".into(),
    });
    refused(&e, &r, &Workload::Container(c), "mounts[0].mountpoint").await;
}

#[tokio::test]
async fn a_taken_static_ip_or_host_port_is_refused_and_cleaned_up() {
    let mut g = Guard::new();
    let e = env(&g).await;
    let user = Identity::generate();
    let subnet = common::unique_subnet();
    e.network(&mut g, &user, "n", &subnet).await;
    let port = common::free_host_port();
    let ip = host(&subnet, 9);
    let (r, w) = reservation(
        &user,
        &e.node,
        &g.id(),
        WorkloadType::Container,
        json!({"flist": common::IMAGE, "entrypoint": "httpd -f -p 80 -h /etc",
               "capacity": {"cpu": 1, "memory": 32},
               "network": {"network_id": "n", "ips": [ip]},
               "ports": [{"container_port": 80, "host_port": port}]}),
    );
    e.ct.provision(&r, &w).await.expect("first");
    let c = inspect(&e.d, &format!("agent-ct-{}", r.id)).await;
    let pb = c.host_config.unwrap().port_bindings.unwrap();
    assert_eq!(
        pb["80/tcp"].clone().unwrap()[0].host_port.as_deref(),
        Some(port.to_string().as_str())
    );
    // The port answers on the host.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("published port");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /passwd HTTP/1.0\r\n\r\n").await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(body.contains("root:x:0:0"), "{body}");

    let (r2, w2) = reservation(
        &user,
        &e.node,
        &g.id(),
        WorkloadType::Container,
        json!({"flist": common::IMAGE, "entrypoint": "sleep 600",
               "capacity": {"cpu": 1, "memory": 32},
               "network": {"network_id": "n"},
               "ports": [{"container_port": 81, "host_port": port}]}),
    );
    refused(
        &e,
        &r2,
        &w2,
        &format!("ports: a host port of {port} is already in use"),
    )
    .await;
    let (r3, w3) = reservation(
        &user,
        &e.node,
        &g.id(),
        WorkloadType::Container,
        json!({"flist": common::IMAGE, "entrypoint": "sleep 600",
               "capacity": {"cpu": 1, "memory": 32},
               "network": {"network_id": "n", "ips": [ip]}}),
    );
    refused(&e, &r3, &w3, &format!("network.ips: {ip} is already used")).await;
}
