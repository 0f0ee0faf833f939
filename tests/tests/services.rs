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
    // apply caps); the stand-in does not need it.
    ("AGENT_K3S_PRIVILEGED", "false"),
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
    assert_eq!(data["namespace"], id.as_str());
    assert_eq!(data["port"], 9900);
    let ip = data["ip"].as_str().unwrap();
    let client = redis::Client::open(format!("redis://{ip}:9900/"))?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let wrong: Result<String, _> = redis::cmd("SELECT")
        .arg(&id)
        .arg("nope")
        .query_async(&mut con)
        .await;
    assert!(wrong.is_err(), "a wrong password is refused");
    let right: String = redis::cmd("SELECT")
        .arg(&id)
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
