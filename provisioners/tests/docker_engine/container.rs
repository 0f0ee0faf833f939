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
    let net_name = provisioners::names::Names::unscoped().network_name(user.id(), "web");
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
    // The port answers on the host (once httpd listens: Docker's proxy
    // accepts, then resets, before that).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut body = String::new();
    for _ in 0..50 {
        body.clear();
        let got = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            s.write_all(b"GET /passwd HTTP/1.0\r\n\r\n").await?;
            s.read_to_string(&mut body).await
        }
        .await;
        if got.is_ok() && body.contains("root:x:0:0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(body.contains("root:x:0:0"), "{body}");

    assert_eq!(
        pb["80/tcp"].clone().unwrap()[0].host_ip.as_deref(),
        Some("0.0.0.0")
    );
    // Another tenant asks for the same port: refused, and told nothing of
    // who holds it.
    let mallory = Identity::generate();
    e.network(&mut g, &mallory, "m", &common::unique_subnet())
        .await;
    let (r2, w2) = reservation(
        &mallory,
        &e.node,
        &g.id(),
        WorkloadType::Container,
        json!({"flist": common::IMAGE, "entrypoint": "sleep 600",
               "capacity": {"cpu": 1, "memory": 32},
               "network": {"network_id": "m"},
               "ports": [{"container_port": 81, "host_port": port}]}),
    );
    let want = format!("ports[0].host_port: {port}/tcp is already in use on this node");
    refused(&e, &r2, &w2, &want).await;
    let msg = e.ct.provision(&r2, &w2).await.unwrap_err().to_string();
    assert_eq!(msg, want);
    for leak in [r.id.as_str(), user.id(), "agent-", "endpoint"] {
        assert!(!msg.contains(leak), "{leak:?} leaks in {msg:?}");
    }
    // A port held by a host process (not Docker) is refused the same way.
    let held = common::free_host_port();
    let _listener = std::net::TcpListener::bind(("0.0.0.0", held)).unwrap();
    let (r4, w4) = reservation(
        &mallory,
        &e.node,
        &g.id(),
        WorkloadType::Container,
        json!({"flist": common::IMAGE, "entrypoint": "sleep 600",
               "capacity": {"cpu": 1, "memory": 32},
               "network": {"network_id": "m"},
               "ports": [{"container_port": 81, "host_port": held}]}),
    );
    refused(
        &e,
        &r4,
        &w4,
        &format!("ports[0].host_port: {held}/tcp is already in use on this node"),
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

/// The output of `cmd` run in the running container `name`.
async fn exec(d: &provisioners::BollardDocker, name: &str, cmd: &str) -> String {
    let run = d
        .client()
        .create_exec(
            name,
            bollard::exec::CreateExecOptions::<String> {
                cmd: Some(vec!["sh".into(), "-c".into(), cmd.into()]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut out = String::new();
    if let bollard::exec::StartExecResults::Attached { mut output, .. } =
        d.client().start_exec(&run.id, None).await.unwrap()
    {
        use futures_util::StreamExt;
        while let Some(Ok(o)) = output.next().await {
            out.push_str(&o.to_string());
        }
    }
    out
}

/// A hostile tenant's container: limited in processes, unable to gain
/// privileges, and without raw sockets (no ping, no ARP forging), while a
/// plain container on the same engine can ping (so the check can fail).
#[tokio::test]
async fn tenant_containers_are_confined() {
    let mut g = Guard::new();
    let e = env(&g).await;
    let user = Identity::generate();
    let id = g.id();
    let (r, w) = reservation(
        &user,
        &e.node,
        &id,
        WorkloadType::Container,
        json!({"flist": common::IMAGE, "entrypoint": "sleep 600",
               "capacity": {"cpu": 1, "memory": 32}}),
    );
    e.ct.provision(&r, &w).await.expect("provision");
    let name = format!("agent-ct-{id}");
    let hc = inspect(&e.d, &name).await.host_config.unwrap();
    assert_eq!(hc.pids_limit, Some(1024));
    assert_eq!(
        hc.security_opt,
        Some(vec!["no-new-privileges:true".to_string()])
    );
    assert_eq!(hc.cap_drop, Some(vec!["NET_RAW".to_string()]));
    assert_eq!(hc.privileged, Some(false));

    let out = exec(&e.d, &name, "ping -c1 -W1 127.0.0.1; echo ping=$?").await;
    assert!(out.contains("ping=1"), "ping worked inside: {out}");
    assert!(out.contains("permission denied"), "{out}");
    let status = exec(
        &e.d,
        &name,
        "grep -E '^(NoNewPrivs|CapEff)' /proc/self/status",
    )
    .await;
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    // CAP_NET_RAW is bit 13.
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(eff & (1 << 13), 0, "{status}");
    let plain = common::run_once(&e.d, None, &[], "ping -c1 -W1 127.0.0.1; echo ping=$?")
        .await
        .unwrap();
    assert!(plain.output.contains("ping=0"), "control: {}", plain.output);

    // The PIDs limit bites: with 16, a fork loop cannot pass it.
    let ct = ContainerProvisioner::new(e.d.clone(), e.node.clone())
        .with_stop_grace(Duration::from_secs(1))
        .with_policy(provisioners::container::ContainerPolicy {
            pids_limit: 16,
            ..Default::default()
        });
    let id2 = g.id();
    let (r2, w2) = reservation(
        &user,
        &e.node,
        &id2,
        WorkloadType::Container,
        json!({"flist": common::IMAGE, "entrypoint": "sleep 600",
               "capacity": {"cpu": 1, "memory": 32}}),
    );
    ct.provision(&r2, &w2).await.expect("provision");
    let name2 = format!("agent-ct-{id2}");
    assert_eq!(
        inspect(&e.d, &name2).await.host_config.unwrap().pids_limit,
        Some(16)
    );
    let out = exec(
        &e.d,
        &name2,
        "i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done; echo looped",
    )
    .await;
    assert!(
        out.contains("can't fork"),
        "40 processes forked under a limit of 16: {out}"
    );
    let stats = std::process::Command::new("docker")
        .args(["stats", "--no-stream", "--format", "{{.PIDs}}", &name2])
        .output()
        .unwrap();
    let pids: u32 = String::from_utf8_lossy(&stats.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(pids <= 16, "{pids} processes under a limit of 16");
}

/// Host ports only from the operator's range: 22 (the host's ssh) and a
/// port just past the range are refused naming the field and the range.
#[tokio::test]
async fn host_ports_outside_the_range_are_refused() {
    let mut g = Guard::new();
    let e = env(&g).await;
    let user = Identity::generate();
    e.network(&mut g, &user, "n", &common::unique_subnet())
        .await;
    for port in [22u16, 80, 29999, 32768] {
        let (r, w) = reservation(
            &user,
            &e.node,
            &g.id(),
            WorkloadType::Container,
            json!({"flist": common::IMAGE, "entrypoint": "sleep 600",
                   "capacity": {"cpu": 1, "memory": 32},
                   "network": {"network_id": "n"},
                   "ports": [{"container_port": 22, "host_port": port}]}),
        );
        refused(
            &e,
            &r,
            &w,
            &format!(
                "ports[0].host_port: {port} is outside this node's host port range 30000-32767"
            ),
        )
        .await;
    }
}

/// A container made by hand under the name the agent would use for a
/// reservation, labelled for another user, is replaced, not adopted.
#[tokio::test]
async fn a_hand_made_container_under_the_name_is_replaced_not_adopted() {
    let mut g = Guard::new();
    let e = env(&g).await;
    let (alice, mallory) = (Identity::generate(), Identity::generate());
    let id = g.id();
    let name = format!("agent-ct-{id}");
    let out = std::process::Command::new("docker")
        .args(["create", "--name", &name])
        .args(["--label", &format!("io.agent.reservation={id}")])
        .args(["--label", &format!("io.agent.user={}", mallory.id())])
        .args(["--label", "io.agent.type=container"])
        .args([common::IMAGE, "sleep", "600"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let planted = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (r, w) = reservation(
        &alice,
        &e.node,
        &id,
        WorkloadType::Container,
        json!({"flist": common::IMAGE, "entrypoint": "sleep 600",
               "capacity": {"cpu": 1, "memory": 32}}),
    );
    let res =
        e.ct.provision(&r, &w)
            .await
            .expect("provision over the planted one");
    assert_ne!(
        res["id"],
        planted.as_str(),
        "the planted container was adopted"
    );
    let c = inspect(&e.d, &name).await;
    let labels = common::labels(c.config.unwrap().labels);
    assert_eq!(labels["io.agent.user"], alice.id());
    assert_eq!(
        labels["io.agent.sig"],
        provisioners::names::signature_hash(&r)
    );
    assert_eq!(c.host_config.unwrap().pids_limit, Some(1024));
    // Now it is hers: a second provisioning keeps it.
    let again = e.ct.provision(&r, &w).await.unwrap();
    assert_eq!(again["id"], res["id"]);
}

/// `--container-runtime runsc` (gVisor): every tenant container runs in
/// the sandbox. Needs runsc registered with Docker; skipped, saying so,
/// where it is not.
#[tokio::test]
async fn containers_run_under_the_operators_runtime() {
    let mut g = Guard::new();
    let e = env(&g).await;
    let runtimes = common::info(&e.d).await.runtimes;
    if !runtimes.iter().any(|r| r == "runsc") {
        eprintln!(
            "SKIPPED containers_run_under_the_operators_runtime: runsc is not registered with this docker engine (runtimes: {runtimes:?}); NOTHING WAS TESTED"
        );
        return;
    }
    let ct = ContainerProvisioner::new(e.d.clone(), e.node.clone())
        .with_stop_grace(Duration::from_secs(1))
        .with_policy(provisioners::container::ContainerPolicy {
            runtime: Some("runsc".into()),
            ..Default::default()
        });
    let user = Identity::generate();
    let id = g.id();
    let (r, w) = reservation(
        &user,
        &e.node,
        &id,
        WorkloadType::Container,
        json!({"flist": common::IMAGE, "entrypoint": "sleep 600",
               "capacity": {"cpu": 1, "memory": 32}}),
    );
    ct.provision(&r, &w).await.expect("provision under runsc");
    let name = format!("agent-ct-{id}");
    let hc = inspect(&e.d, &name).await.host_config.unwrap();
    assert_eq!(hc.runtime.as_deref(), Some("runsc"));
    assert_eq!(hc.pids_limit, Some(1024));
    // The kernel it sees is gVisor's.
    let out = exec(&e.d, &name, "dmesg | head -3").await;
    assert!(out.contains("gVisor"), "not under gVisor: {out}");
}

/// A hostile explorer hands Mallory's signed reservation the id of Alice's
/// running container: refused without naming Alice, and neither the
/// provisioning nor the engine's rollback (a decommission) touches Alice's
/// container.
#[tokio::test]
async fn an_id_reused_for_another_users_reservation_never_destroys_the_running_one() {
    let mut g = Guard::new();
    let e = env(&g).await;
    let (alice, mallory) = (Identity::generate(), Identity::generate());
    let id = g.id();
    let data = json!({"flist": common::IMAGE, "entrypoint": "sleep 600",
                      "capacity": {"cpu": 1, "memory": 32}});
    let (r, w) = reservation(&alice, &e.node, &id, WorkloadType::Container, data.clone());
    let res = e.ct.provision(&r, &w).await.expect("alice's container");
    let (m, mw) = reservation(&mallory, &e.node, &id, WorkloadType::Container, data);
    let err = e.ct.provision(&m, &mw).await.unwrap_err().to_string();
    assert!(err.contains("held by another reservation"), "{err}");
    assert!(!err.contains(alice.id()), "{err}");
    e.ct.decommission(&m, &mw)
        .await
        .expect("rollback is a no-op");
    let c = inspect(&e.d, &format!("agent-ct-{id}")).await;
    assert_eq!(c.id.as_deref(), res["id"].as_str(), "same container");
    assert_eq!(c.state.unwrap().running, Some(true));
    let labels = common::labels(c.config.unwrap().labels);
    assert_eq!(labels["io.agent.user"], alice.id());
}
