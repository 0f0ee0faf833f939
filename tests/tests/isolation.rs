//! Tenant isolation on a shared node, tried as a hostile tenant or local
//! user would, on the real Docker engine: file modes of the agent's state,
//! volume images and their mount options, and the control socket's peer
//! check.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use reservation::{Identity, ResultState};
use serde_json::json;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Every file under `dir` with group or other permission bits.
fn open_to_others(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let m = mode(&p);
        if m & 0o077 != 0 {
            out.push(format!("{} {m:o}", p.display()));
        }
        if e.file_type().unwrap().is_dir() {
            out.extend(open_to_others(&p));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_volumes_and_socket_are_for_root_alone() -> anyhow::Result<()> {
    let explorer = Explorer::start().await?;
    let agent = Agent::start(&explorer.url).await?;
    let user = Identity::generate();
    let id = explorer
        .reserve(
            &user,
            &agent.node_id,
            "volume",
            json!({"size": 1, "type": "SSD"}),
            Duration::from_secs(600),
        )
        .await?;
    let res = explorer.wait_result(&id).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);

    assert_eq!(mode(&agent.root), 0o700, "root");
    assert_eq!(mode(&agent.root.join("node.seed")), 0o600);
    assert_eq!(mode(&agent.socket), 0o600, "control socket");
    let cache = agent.root.join("cache");
    assert_eq!(open_to_others(&cache), Vec::<String>::new(), "cache");

    // The volume image is 0600 and mounted nosuid,nodev.
    let img = agent.root.join(format!("volumes/{id}.img"));
    assert_eq!(mode(&img), 0o600, "{}", img.display());
    let mp = agent.root.join(format!("volumes/{id}"));
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    let line = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(mp.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} is not mounted:\n{mounts}", mp.display()));
    let opts = line.split_whitespace().nth(3).unwrap();
    assert!(
        opts.split(',').any(|o| o == "nosuid") && opts.split(',').any(|o| o == "nodev"),
        "{line}"
    );

    // An operator loosens the socket's mode by mistake: a local user who is
    // neither root nor in its group is still refused, by SO_PEERCRED.
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666))?;
    std::fs::set_permissions(
        agent.socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o711),
    )?;
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("agentctl"))
        .arg("--socket")
        .arg(&agent.socket)
        .arg("status")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody must be refused: {stderr}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(
        agent.log().contains("refusing a peer"),
        "the refusal is logged"
    );
    // Root still gets through.
    assert_eq!(agent.status()?["node_id"], agent.node_id);
    Ok(())
}

fn net(node: &str, name: &str, subnet: &str) -> serde_json::Value {
    json!({"name": name, "ip_range": "10.0.0.0/8",
           "net_resources": [{"node_id": node, "subnet": subnet}]})
}

/// A hostile tenant tries to exhaust the node's networks: with the cap set
/// to 1 (AGENT_MAX_NETWORKS_PER_USER), its second network is refused with a
/// signed error naming the limit, another user is not held back, the count
/// shows per user in `agentctl status`, and decommissioning releases it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_networks_are_capped_and_released() -> anyhow::Result<()> {
    let explorer = Explorer::start().await?;
    let agent = Agent::start_with(&explorer.url, &[("AGENT_MAX_NETWORKS_PER_USER", "1")]).await?;
    let node = agent.node_id.clone();
    let (mallory, alice) = (Identity::generate(), Identity::generate());
    let hour = Duration::from_secs(3600);
    let first = explorer
        .reserve(
            &mallory,
            &node,
            "network",
            net(&node, "a", "10.203.1.0/24"),
            hour,
        )
        .await?;
    let res = explorer.wait_result(&first).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);

    let second = explorer
        .reserve(
            &mallory,
            &node,
            "network",
            net(&node, "b", "10.203.2.0/24"),
            hour,
        )
        .await?;
    let res = explorer.wait_result(&second).await?;
    assert_eq!(res.state, ResultState::Error);
    assert_eq!(
        res.error,
        format!(
            "per-user limit: user {} already has 1 networks on this node, the most one user may hold (max_networks_per_user = 1)",
            mallory.id()
        )
    );
    explorer.verify(&res, &node).await?;
    assert_eq!(
        labelled(&node, &second).1,
        Vec::<String>::new(),
        "nothing made"
    );

    // Another user is not held back by mallory's count.
    let theirs = explorer
        .reserve(
            &alice,
            &node,
            "network",
            net(&node, "a", "10.203.3.0/24"),
            hour,
        )
        .await?;
    let res = explorer.wait_result(&theirs).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);

    // Charged per user, in the JSON and the human view.
    let status = agent.status()?;
    assert_eq!(status["tenants"]["limits"]["networks"], 1);
    assert_eq!(status["tenants"]["users"][mallory.id()]["networks"], 1);
    assert_eq!(status["tenants"]["users"][alice.id()]["networks"], 1);
    let (code, human, _) = agent.ctl(&["status"])?;
    assert_eq!(code, 0);
    assert!(
        human.contains(&format!(
            "{} networks 1/1, debug 0/2, ports 0/16",
            mallory.id()
        )),
        "{human}"
    );

    // Decommissioned: released, so a new network is accepted.
    assert_eq!(explorer.delete_as(&mallory, &first).await?, 200);
    explorer.wait_deleted(&first).await?;
    wait_for(
        "mallory's count released",
        Duration::from_secs(30),
        || async {
            let s = agent.status().ok()?;
            s["tenants"]["users"][mallory.id()].is_null().then_some(())
        },
    )
    .await?;
    let third = explorer
        .reserve(
            &mallory,
            &node,
            "network",
            net(&node, "c", "10.203.4.0/24"),
            hour,
        )
        .await?;
    let res = explorer.wait_result(&third).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    Ok(())
}

/// `--container-runtime` naming a runtime Docker does not have: the agent
/// refuses to start, saying which and what it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_container_runtime_stops_the_agent_at_start() -> anyhow::Result<()> {
    let explorer = Explorer::start().await?;
    let mut agent = Agent::prepare(
        &explorer.url,
        &[("AGENT_CONTAINER_RUNTIME", "no-such-runtime")],
    )?;
    // Spawned without waiting for readiness: it must exit instead.
    agent.env.push(("AGENT_FAULT".into(), "none".into()));
    agent.spawn().await?;
    let status = agent.wait_exit(Duration::from_secs(60))?;
    assert!(!status.success(), "{status}");
    let log = agent.log();
    assert!(
        log.contains(
            "runtime \\\"no-such-runtime\\\" is not registered with this node's docker engine"
        ) || log.contains(
            "runtime \"no-such-runtime\" is not registered with this node's docker engine"
        ),
        "{log}"
    );
    assert!(log.contains("--container-runtime"), "{log}");
    Ok(())
}
