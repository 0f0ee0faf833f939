//! End to end, what an operator of a fleet relies on: admission against
//! capacity, registration and heartbeat, `explorer nodes`, Prometheus
//! metrics, the crash policy, and `agentctl` exit codes.

mod common;

use std::time::Duration;

use common::*;
use reservation::{Identity, ResultState};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refuses_what_does_not_fit_and_changes_nothing() -> anyhow::Result<()> {
    let explorer = Explorer::start().await?;
    let agent = Agent::start(&explorer.url).await?;
    let node = agent.node_id.clone();
    let user = Identity::generate();
    let id = explorer
        .reserve(
            &user,
            &node,
            "container",
            json!({"flist": BUSYBOX, "capacity": {"cpu": 1, "memory": 100_000_000}}),
            Duration::from_secs(600),
        )
        .await?;
    let res = explorer.wait_result(&id).await?;
    assert_eq!(res.state, ResultState::Error);
    assert!(
        res.error
            .starts_with("not enough memory: asked 100000000 MiB,"),
        "{}",
        res.error
    );
    assert!(res.error.ends_with("MiB free"), "{}", res.error);
    assert_eq!(labelled(&node, &id), (vec![], vec![], vec![]));
    let st = agent.status()?;
    assert_eq!(st["capacity"]["used"]["memory_mib"], 0, "{st}");
    assert!(st["capacity"]["total"]["memory_mib"].as_u64().unwrap() > 1024);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_heartbeats_and_shows_in_explorer_nodes() -> anyhow::Result<()> {
    let explorer = Explorer::start().await?;
    let agent =
        Agent::start_with(&explorer.url, &[("AGENT_NODE_URL", "http://127.0.0.1:9")]).await?;
    let node = agent.node_id.clone();
    let nodes = wait_for("two heartbeats", Duration::from_secs(20), || async {
        let v: serde_json::Value = reqwest::get(format!("{}/nodes", explorer.url))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let n = v
            .as_array()?
            .iter()
            .find(|n| n["node_id"] == node.as_str())?
            .clone();
        (!n["last_heartbeat"].is_null()).then_some(n)
    })
    .await?;
    assert_eq!(nodes["url"], "http://127.0.0.1:9");
    assert!(nodes["capacity"]["mru"].as_f64().unwrap() >= 1.0, "{nodes}");
    let st = agent.status()?;
    assert_eq!(st["registration"]["registered"], true, "{st}");
    assert!(!st["registration"]["last_heartbeat"].is_null());
    // The CLI table flags the loopback URL.
    let out = std::process::Command::new(bin("explorer"))
        .args(["--explorer", &explorer.url, "nodes"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&node) && text.contains("ago"), "{text}");
    assert!(text.to_lowercase().contains("loopback"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_count_outcomes() -> anyhow::Result<()> {
    let explorer = Explorer::start().await?;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let agent = Agent::start_with(&explorer.url, &[("AGENT_METRICS", addr.as_str())]).await?;
    let user = Identity::generate();
    let id = explorer
        .reserve(
            &user,
            &agent.node_id,
            "volume",
            json!({"size": 1, "type": "TAPE"}),
            Duration::from_secs(60),
        )
        .await?;
    explorer.wait_result(&id).await?;
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?;
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("agent_reservations_total")
                && l.contains("volume")
                && l.contains("refused")
        })
        .unwrap_or_default();
    assert!(line.ends_with(" 1"), "{line}\n{text}");
    assert!(text.contains("agent_outbox_depth"), "{text}");
    assert!(text.contains("agent_last_poll"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_keeps_crashing_is_given_up() -> anyhow::Result<()> {
    ensure_images();
    let explorer = Explorer::start().await?;
    let agent = Agent::start_with(
        &explorer.url,
        &[("AGENT_CRASH_LIMIT", "2"), ("AGENT_CRASH_WINDOW", "5m")],
    )
    .await?;
    let user = Identity::generate();
    let id = explorer
        .reserve(
            &user,
            &agent.node_id,
            "container",
            json!({"flist": BUSYBOX, "entrypoint": "sh -c 'echo about to fail; exit 3'", "capacity": {"cpu": 1, "memory": 32}}),
            Duration::from_secs(600),
        )
        .await?;
    assert_eq!(explorer.wait_result(&id).await?.state, ResultState::Ok);
    let give_up = wait_for(
        "the crash policy to give up",
        Duration::from_secs(90),
        || async {
            explorer
                .results(&id)
                .await
                .ok()?
                .into_iter()
                .find(|r| r.state == ResultState::Error)
        },
    )
    .await?;
    explorer.verify(&give_up, &agent.node_id).await?;
    assert!(
        give_up.error.starts_with("workload crashed"),
        "{}",
        give_up.error
    );
    assert!(
        give_up.error.contains("exit code 3") && give_up.error.contains("about to fail"),
        "{}",
        give_up.error
    );
    explorer.wait_deleted(&id).await?;
    assert!(labelled(&agent.node_id, &id).0.is_empty(), "decommissioned");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentctl_exit_codes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (code, _, err) = ctl_at(&dir.path().join("nope.sock"), &["status"])?;
    assert_eq!(code, 2, "unreachable agent");
    assert!(err.contains("--socket"), "{err}");
    let explorer = Explorer::start().await?;
    let agent = Agent::start(&explorer.url).await?;
    let (code, _, err) = agent.ctl(&["show", "404-1"])?;
    assert_eq!(code, 1, "a request the agent refuses");
    assert!(err.contains("404-1"), "{err}");
    let (code, out, _) = agent.ctl(&["status"])?;
    assert_eq!(code, 0);
    assert!(
        out.contains("node id:") && out.contains(&agent.node_id),
        "{out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agentctl_show_and_logs_of_a_container() -> anyhow::Result<()> {
    ensure_images();
    let explorer = Explorer::start().await?;
    let agent = Agent::start(&explorer.url).await?;
    let user = Identity::generate();
    let sealed = reservation::seal_for(&agent.node_id, b"never-shown")?;
    let id = explorer
        .reserve(
            &user,
            &agent.node_id,
            "container",
            json!({"flist": BUSYBOX, "entrypoint": "sh -c 'echo hello-logs; sleep 3600'",
                   "secret_env": {"TOKEN": sealed}, "capacity": {"cpu": 1, "memory": 32}}),
            Duration::from_secs(600),
        )
        .await?;
    assert_eq!(explorer.wait_result(&id).await?.state, ResultState::Ok);
    let (code, out, err) = agent.ctl(&["show", &id, "--json"])?;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v["docker"]["state"], "running", "{out}");
    assert_eq!(
        v["reservation"]["data"]["secret_env"]["TOKEN"],
        "<redacted>"
    );
    let logs = wait_for(
        "the container's output",
        Duration::from_secs(20),
        || async {
            let (code, out, _) = agent.ctl(&["logs", &id]).ok()?;
            (code == 0 && out.contains("hello-logs")).then_some(out)
        },
    )
    .await?;
    assert!(logs.contains("hello-logs"));
    // A follow stream keeps the connection open until we stop it.
    let mut follow = std::process::Command::new(bin("agentctl"))
        .arg("--socket")
        .arg(&agent.socket)
        .args(["logs", "--follow", &id])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(follow.try_wait()?.is_none(), "--follow keeps streaming");
    follow.kill()?;
    let _ = follow.wait();
    let (code, _, err) = agent.ctl(&["logs", "999-1"])?;
    assert_eq!(code, 1, "{err}");
    Ok(())
}

fn net(octet: u8, node: &str) -> serde_json::Value {
    json!({"name": format!("fleet-{octet}"), "ip_range": format!("10.{octet}.0.0/16"),
           "net_resources": [{"node_id": node, "subnet": format!("10.{octet}.1.0/24")}]})
}

/// Retiring a node: `agentctl drain` refuses new work with a signed error,
/// lets running work go on (and be deleted), survives a restart, shows in
/// `agentctl status` and in the explorer's node list; `--undo` lifts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_new_work_and_keeps_running_work() -> anyhow::Result<()> {
    let explorer = Explorer::start().await?;
    let mut agent = Agent::start(&explorer.url).await?;
    let node = agent.node_id.clone();
    let user = Identity::generate();
    let hour = Duration::from_secs(3600);
    let running = explorer
        .reserve(&user, &node, "network", net(241, &node), hour)
        .await?;
    assert_eq!(explorer.wait_result(&running).await?.state, ResultState::Ok);

    let (code, out, err) = agent.ctl(&["drain"])?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("draining") && out.contains("1 running"),
        "{out}"
    );
    assert_eq!(agent.status()?["draining"], true);
    let (_, human, _) = agent.ctl(&["status"])?;
    assert!(human.contains("DRAINING"), "{human}");

    let refused = explorer
        .reserve(&user, &node, "network", net(242, &node), hour)
        .await?;
    let res = explorer.wait_result(&refused).await?;
    assert_eq!(res.state, ResultState::Error);
    assert!(res.error.starts_with("node is draining"), "{}", res.error);
    explorer.verify(&res, &node).await?;
    assert_eq!(labelled(&node, &running).1.len(), 1, "running work goes on");

    // The explorer's node list says so, through the signed heartbeat.
    wait_for(
        "draining in GET /nodes",
        Duration::from_secs(20),
        || async {
            let v: serde_json::Value = reqwest::get(format!("{}/nodes", explorer.url))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v[0]["draining"] == true).then_some(())
        },
    )
    .await?;
    let out = std::process::Command::new(bin("explorer"))
        .args(["nodes", "--explorer", &explorer.url])
        .output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("draining"), "{table}");

    // Kept across a restart; deletions still work while draining.
    agent.stop();
    agent.spawn().await?;
    assert_eq!(agent.status()?["draining"], true);
    assert_eq!(explorer.delete_as(&user, &running).await?, 200);
    explorer.wait_deleted(&running).await?;

    let (code, out, _) = agent.ctl(&["drain", "--undo"])?;
    assert_eq!(code, 0);
    assert!(out.contains("drain lifted"), "{out}");
    let again = explorer
        .reserve(&user, &node, "network", net(243, &node), hour)
        .await?;
    assert_eq!(explorer.wait_result(&again).await?.state, ResultState::Ok);
    cleanup_user(user.id());
    Ok(())
}

/// `agentctl purge` removes every workload of the node, says what it
/// removed, tells each user with a signed error and the explorer with a
/// signed deletion, leaves no Docker object or mount behind, and takes no
/// new work afterwards. Without `--yes` off a terminal it removes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_every_workload_and_says_what() -> anyhow::Result<()> {
    let explorer = Explorer::start().await?;
    let agent = Agent::start(&explorer.url).await?;
    let node = agent.node_id.clone();
    let user = Identity::generate();
    let hour = Duration::from_secs(3600);
    let netw = explorer
        .reserve(&user, &node, "network", net(244, &node), hour)
        .await?;
    let vol = explorer
        .reserve(
            &user,
            &node,
            "volume",
            json!({"size": 1, "type": "SSD"}),
            hour,
        )
        .await?;
    for id in [&netw, &vol] {
        assert_eq!(explorer.wait_result(id).await?.state, ResultState::Ok);
    }
    let ct = explorer
        .reserve(
            &user,
            &node,
            "container",
            json!({"flist": BUSYBOX, "entrypoint": "sleep 600", "capacity": {"cpu": 1, "memory": 32},
                   "network": {"network_id": "fleet-244"},
                   "mounts": [{"volume_id": vol, "mountpoint": "/data"}]}),
            hour,
        )
        .await?;
    let res = explorer.wait_result(&ct).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);

    // Not on a terminal and no --yes: nothing happens.
    let (code, _, err) = agent.ctl(&["purge"])?;
    assert_eq!(code, 1);
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(agent.status()?["cached"], 3);

    let (code, out, err) = agent.ctl(&["purge", "--yes"])?;
    assert_eq!(code, 0, "{out}{err}");
    for id in [&netw, &vol, &ct] {
        assert!(out.contains(id.as_str()), "{id} listed: {out}");
    }
    assert!(out.contains("removed"), "{out}");
    assert_eq!(agent.status()?["cached"], 0);
    let f = format!("label=io.agent.node={node}");
    for what in [
        vec!["ps", "-a", "-q", "--filter", &f],
        vec!["network", "ls", "-q", "--filter", &f],
        vec!["volume", "ls", "-q", "--filter", &f],
    ] {
        assert_eq!(docker(&what)?, "", "docker {what:?} after purge");
    }
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    assert!(
        !mounts.contains(agent.root.to_str().unwrap()),
        "volume images unmounted"
    );
    for id in [&netw, &vol, &ct] {
        explorer.wait_deleted(id).await?;
        let results = explorer.results(id).await?;
        let last = results.last().unwrap();
        assert_eq!(last.state, ResultState::Error);
        assert!(
            last.error.starts_with("removed by the node's operator"),
            "{}",
            last.error
        );
        explorer.verify(last, &node).await?;
    }
    let next = explorer
        .reserve(&user, &node, "network", net(245, &node), hour)
        .await?;
    let res = explorer.wait_result(&next).await?;
    assert!(res.error.starts_with("node is draining"), "{}", res.error);
    Ok(())
}
