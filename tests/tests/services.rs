//! End to end through the real agent: zdb namespaces, k3s nodes and debug
//! log forwarding, on the real Docker engine with the local stand-in images
//! (`tests/images/build-standins.sh`) and a real `redis-server`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use reservation::{seal_for, Identity, ResultState};
use serde_json::{json, Value};

fn standins() {
    ensure_images();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build-standins.sh");
    assert!(std::process::Command::new("bash")
        .arg(script)
        .status()
        .unwrap()
        .success());
}

const SERVICES: &[(&str, &str)] = &[
    ("AGENT_ZDB_IMAGE", "agent-test/zdb:latest"),
    ("AGENT_K3S_IMAGE", "agent-test/k3s:latest"),
    // This engine cannot start privileged containers (runc: unable to
    // apply caps); the stand-in does not need it. It enables nothing by
    // itself: kubernetes is off unless the operator enables it.
    ("AGENT_K3S_PRIVILEGED", "false"),
    ("AGENT_KUBERNETES_PRIVILEGED_UNSAFE", "true"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zdb_namespace_with_sealed_password() -> anyhow::Result<()> {
    standins();
    let explorer = Explorer::start().await?;
    let agent = Agent::start_with(&explorer.url, SERVICES).await?;
    let user = Identity::generate();
    let id = explorer
        .reserve(
            &user,
            &agent.node_id,
            "zdb",
            json!({"size": 1, "mode": "user", "password": seal_for(&agent.node_id, b"pw-e2e")?,
                   "disk_type": "SSD", "public": false}),
            Duration::from_secs(600),
        )
        .await?;
    let res = explorer.wait_result(&id).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    assert!(
        !res.data.get().contains("pw-e2e"),
        "no plaintext in the result"
    );
    let data: Value = serde_json::from_str(res.data.get())?;
    // The namespace is named after the signed reservation: `<id>-<hash>`.
    let ns = data["namespace"].as_str().unwrap().to_string();
    assert!(ns.starts_with(&format!("{id}-")), "{ns}");
    assert_eq!(data["port"], 9900);
    let ip = data["ip"].as_str().unwrap();
    let client = redis::Client::open(format!("redis://{ip}:9900/"))?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let wrong: Result<String, _> = redis::cmd("SELECT")
        .arg(&ns)
        .arg("nope")
        .query_async(&mut con)
        .await;
    assert!(wrong.is_err(), "a wrong password is refused");
    let right: String = redis::cmd("SELECT")
        .arg(&ns)
        .arg("pw-e2e")
        .query_async(&mut con)
        .await?;
    assert_eq!(right, "OK");
    assert!(!agent.log().contains("pw-e2e"), "no plaintext in the logs");
    // Signed deletion: NSDEL, and the last namespace takes the container.
    explorer.delete_as(&user, &id).await?;
    explorer.wait_deleted(&id).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_master_on_the_users_network() -> anyhow::Result<()> {
    standins();
    let explorer = Explorer::start().await?;
    let agent = Agent::start_with(&explorer.url, SERVICES).await?;
    let node = agent.node_id.clone();
    let user = Identity::generate();
    let hour = Duration::from_secs(3600);
    let net = explorer
        .reserve(
            &user,
            &node,
            "network",
            json!({"name": "k8s", "ip_range": "10.241.0.0/16",
                   "net_resources": [{"node_id": node, "subnet": "10.241.1.0/24"}]}),
            hour,
        )
        .await?;
    assert_eq!(explorer.wait_result(&net).await?.state, ResultState::Ok);
    let id = explorer
        .reserve(
            &user,
            &node,
            "kubernetes",
            json!({"size": 1, "network_id": "k8s", "ip": "10.241.1.20",
                   "cluster_secret": seal_for(&node, b"cluster-token-e2e")?,
                   "master_ips": [], "ssh_keys": ["ssh-ed25519 AAAA e2e"]}),
            hour,
        )
        .await?;
    let res = explorer.wait_result(&id).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    let data: Value = serde_json::from_str(res.data.get())?;
    assert_eq!(data["ip"], "10.241.1.20");
    let cid = data["id"].as_str().unwrap().to_string();
    let started: Value = wait_for(
        "the k3s stand-in to record its start",
        Duration::from_secs(20),
        || async {
            let logs = docker(&["logs", &cid]).ok()?;
            logs.lines()
                .find(|l| l.starts_with('{'))
                .and_then(|l| serde_json::from_str(l).ok())
        },
    )
    .await?;
    let text = started.to_string();
    assert!(
        text.contains("server") && text.contains("--node-ip") && text.contains("10.241.1.20"),
        "{text}"
    );
    assert!(
        text.contains("K3S_TOKEN") && text.contains("cluster-token-e2e"),
        "token arrives: {text}"
    );
    let argv = started["argv"].to_string();
    assert!(
        !argv.contains("cluster-token-e2e"),
        "token never on the command line: {argv}"
    );
    assert_eq!(
        docker(&[
            "inspect",
            "-f",
            "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}}",
            &cid
        ])?,
        format!("1000000000 {}", 2048u64 << 20)
    );
    assert!(!agent.log().contains("cluster-token-e2e"));
    // The operator sees that kubernetes is privileged-unsafe here.
    assert_eq!(agent.status()?["kubernetes"], "privileged-unsafe");
    let (_, human, _) = agent.ctl(&["status"])?;
    assert!(human.contains("PRIVILEGED-UNSAFE"), "{human}");
    assert!(agent.log().contains("KUBERNETES PRIVILEGED-UNSAFE"));
    // A master outside the user's network: a signed refusal naming it.
    let rogue = explorer
        .reserve(
            &user,
            &node,
            "kubernetes",
            json!({"size": 1, "network_id": "k8s", "ip": "10.241.1.22",
                   "cluster_secret": seal_for(&node, b"x")?, "master_ips": ["203.0.113.7"], "ssh_keys": []}),
            hour,
        )
        .await?;
    let res = explorer.wait_result(&rogue).await?;
    assert_eq!(res.state, ResultState::Error);
    assert!(
        res.error.starts_with("data.master_ips: 203.0.113.7 "),
        "{}",
        res.error
    );
    explorer.verify(&res, &node).await?;
    // A network the user does not own is refused.
    let other = Identity::generate();
    let bad = explorer
        .reserve(
            &other,
            &node,
            "kubernetes",
            json!({"size": 1, "network_id": "k8s", "ip": "10.241.1.21",
                   "cluster_secret": seal_for(&node, b"x")?, "master_ips": [], "ssh_keys": []}),
            hour,
        )
        .await?;
    let res = explorer.wait_result(&bad).await?;
    assert_eq!(res.state, ResultState::Error);
    assert!(res.error.contains("k8s"), "{}", res.error);
    Ok(())
}

/// A `redis-server` on a free loopback port, killed on drop.
struct Redis {
    port: u16,
    child: tokio::process::Child,
}

impl Redis {
    async fn start(port: u16) -> anyhow::Result<Redis> {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        wait_for("redis-server", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await?;
        Ok(Redis { port, child })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_forwards_the_agents_log_lines_until_deleted() -> anyhow::Result<()> {
    let redis_port = free_port();
    let mut redis = Redis::start(redis_port).await?;
    let explorer = Explorer::start().await?;
    let agent = Agent::start(&explorer.url).await?;
    let node = agent.node_id.clone();
    let client = redis::Client::open(format!("redis://127.0.0.1:{redis_port}/"))?;
    let mut ps = client.get_async_pubsub().await?;
    ps.subscribe(format!("{node}-logs")).await?;
    let mut lines = ps.into_on_message();

    let user = Identity::generate();
    let id = explorer
        .reserve(
            &user,
            &node,
            "debug",
            json!({"host": "127.0.0.1", "port": redis.port}),
            Duration::from_secs(600),
        )
        .await?;
    assert_eq!(explorer.wait_result(&id).await?.state, ResultState::Ok);
    // Make the agent log about another reservation; its lines arrive as JSON.
    let probe = explorer
        .reserve(
            &user,
            &node,
            "volume",
            json!({"size": 0, "type": "SSD"}),
            Duration::from_secs(60),
        )
        .await?;
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(m) = lines.next().await {
            let payload: String = m.get_payload().unwrap();
            let v: Value = serde_json::from_str(&payload).expect("a JSON line");
            if payload.contains(&probe) && payload.contains("refused") {
                return Some(v);
            }
        }
        None
    })
    .await?;
    assert!(found.is_some(), "the refusal of {probe} was forwarded");
    let _ = redis.child.kill().await;
    drop(lines);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_is_refused_unless_the_operator_enables_it() -> anyhow::Result<()> {
    standins();
    let explorer = Explorer::start().await?;
    // The old knob alone enables nothing.
    let agent = Agent::start_with(
        &explorer.url,
        &[
            ("AGENT_K3S_IMAGE", "agent-test/k3s:latest"),
            ("AGENT_K3S_PRIVILEGED", "false"),
        ],
    )
    .await?;
    let node = agent.node_id.clone();
    assert_eq!(agent.status()?["kubernetes"], "disabled");
    let user = Identity::generate();
    let hour = Duration::from_secs(3600);
    let net = explorer
        .reserve(
            &user,
            &node,
            "network",
            json!({"name": "k8s-off", "ip_range": "10.242.0.0/16",
                   "net_resources": [{"node_id": node, "subnet": "10.242.1.0/24"}]}),
            hour,
        )
        .await?;
    assert_eq!(explorer.wait_result(&net).await?.state, ResultState::Ok);
    let id = explorer
        .reserve(
            &user,
            &node,
            "kubernetes",
            json!({"size": 1, "network_id": "k8s-off", "ip": "10.242.1.20",
                   "cluster_secret": seal_for(&node, b"t")?, "master_ips": [], "ssh_keys": []}),
            hour,
        )
        .await?;
    let res = explorer.wait_result(&id).await?;
    assert_eq!(res.state, ResultState::Error);
    assert_eq!(
        res.error,
        "kubernetes is disabled on this node: k3s needs a privileged container; the operator enables it with --kubernetes-runtime <isolating runtime> or, on a single-tenant node, --kubernetes-privileged-unsafe"
    );
    explorer.verify(&res, &node).await?;
    let (containers, _, _) = labelled(&node, &id);
    assert!(containers.is_empty(), "{containers:?}");
    Ok(())
}

/// Run the agent with `env` until it exits; its exit code and stderr.
fn agent_exit(env: &[(&str, &str)]) -> anyhow::Result<(Option<i32>, String)> {
    let dir = tempfile::tempdir()?;
    let mut cmd = std::process::Command::new(bin("agent"));
    cmd.arg("--explorer")
        .arg(format!("http://127.0.0.1:{}", free_port()))
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--socket")
        .arg(dir.path().join("agent.sock"))
        .arg("--config")
        .arg("/dev/null")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err)?;
            return Ok((status.code(), err));
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            anyhow::bail!("the agent did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_unregistered_or_non_isolating_kubernetes_runtime_stops_the_agent() -> anyhow::Result<()> {
    // Not registered with this engine: checked against `docker info`.
    let (code, err) = agent_exit(&[("AGENT_KUBERNETES_RUNTIME", "kata-not-here")])?;
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("--kubernetes-runtime: runtime \"kata-not-here\" is not registered"),
        "{err}"
    );
    assert!(
        err.contains("runc"),
        "the registered runtimes are listed: {err}"
    );
    // runc (and its containerd aliases) isolates nothing: refused at once.
    for rt in ["runc", "io.containerd.runc.v2"] {
        let (code, err) = agent_exit(&[("AGENT_KUBERNETES_RUNTIME", rt)])?;
        assert_eq!(code, Some(2), "{err}");
        assert!(
            err.contains("--kubernetes-runtime") && err.contains("does not isolate"),
            "{err}"
        );
    }
    // Both ways at once is a mistake.
    let (code, err) = agent_exit(&[
        ("AGENT_KUBERNETES_RUNTIME", "kata"),
        ("AGENT_KUBERNETES_PRIVILEGED_UNSAFE", "true"),
    ])?;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("exclude each other"), "{err}");
    Ok(())
}
