//! End to end, Docker workloads through the real agent and explorer:
//! dependency order within a poll answer, what `docker inspect` shows,
//! decommission by expiry, and reconciliation at start.

mod common;

use std::time::Duration;

use common::*;
use reservation::{Identity, ResultState};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_listed_before_its_network_and_volume_still_runs() -> anyhow::Result<()> {
    ensure_images();
    let explorer = Explorer::start().await?;
    let mut agent = Agent::prepare(&explorer.url, &[])?;
    let node = agent.node_id.clone();
    let user = Identity::generate();
    let hour = Duration::from_secs(3600);
    // Ids are given in order of arrival: 1-1, 2-1, 3-1. The container comes
    // first and names the volume and network that come after it.
    let ct = explorer
        .reserve(
            &user,
            &node,
            "container",
            json!({
                "flist": BUSYBOX,
                "entrypoint": "sh -c 'echo hello > /data/hello; sleep 3600'",
                "env": {"GREETING": "hi"},
                "mounts": [{"volume_id": "3-1", "mountpoint": "/data/"}],
                "network": {"network_id": "ordered", "ips": ["10.231.1.10"]},
                "capacity": {"cpu": 1, "memory": 128},
            }),
            hour,
        )
        .await?;
    let net = explorer
        .reserve(
            &user,
            &node,
            "network",
            json!({"name": "ordered", "ip_range": "10.231.0.0/16",
                   "net_resources": [{"node_id": node, "subnet": "10.231.1.0/24"}]}),
            hour,
        )
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
    assert_eq!(
        (ct.as_str(), net.as_str(), vol.as_str()),
        ("1-1", "2-1", "3-1")
    );
    agent.spawn().await?;

    let res = explorer.wait_result(&ct).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    let data: serde_json::Value = serde_json::from_str(res.data.get())?;
    assert_eq!(data["ipv4"], "10.231.1.10");
    let cid = data["id"].as_str().unwrap().to_string();
    for id in [&net, &vol] {
        assert_eq!(explorer.wait_result(id).await?.state, ResultState::Ok);
    }

    // What `docker inspect` shows matches the request.
    let f = |fmt: &str| docker(&["inspect", "-f", fmt, &cid]);
    assert_eq!(f("{{.State.Running}}")?, "true");
    assert_eq!(f("{{.HostConfig.NanoCpus}}")?, "1000000000");
    assert_eq!(f("{{.HostConfig.Memory}}")?, (128u64 << 20).to_string());
    assert_eq!(f("{{.HostConfig.RestartPolicy.Name}}")?, "unless-stopped");
    assert!(f("{{json .Config.Env}}")?.contains("GREETING=hi"));
    assert_eq!(f("{{index .Config.Labels \"io.agent.reservation\"}}")?, ct);
    assert_eq!(f("{{index .Config.Labels \"io.agent.user\"}}")?, user.id());
    assert_eq!(
        f("{{index .Config.Labels \"io.agent.type\"}}")?,
        "container"
    );
    let mounts = f("{{range .Mounts}}{{.Destination}} {{end}}")?;
    assert!(mounts.contains("/data"), "{mounts}");
    let hello = wait_for(
        "the container to write into its volume",
        Duration::from_secs(20),
        || async {
            docker(&["exec", &cid, "cat", "/data/hello"])
                .ok()
                .filter(|s| s == "hello")
        },
    )
    .await?;
    assert_eq!(hello, "hello");

    // It shows in agentctl list and docker ps.
    let (_, out, _) = agent.ctl(&["list"])?;
    assert!(out.contains(&ct) && out.contains("container"), "{out}");
    assert!(docker(&["ps", "--format", "{{.ID}}"])?.contains(&cid[..12]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_removes_the_container_and_confirms_deletion() -> anyhow::Result<()> {
    ensure_images();
    let explorer = Explorer::start().await?;
    let agent = Agent::start(&explorer.url).await?;
    let user = Identity::generate();
    let id = explorer
        .reserve(
            &user,
            &agent.node_id,
            "container",
            json!({"flist": BUSYBOX, "entrypoint": "sleep 3600", "capacity": {"cpu": 1, "memory": 64}}),
            Duration::from_secs(4),
        )
        .await?;
    assert_eq!(explorer.wait_result(&id).await?.state, ResultState::Ok);
    assert_eq!(labelled(&agent.node_id, &id).0.len(), 1);
    explorer.wait_deleted(&id).await?;
    assert!(
        labelled(&agent.node_id, &id).0.is_empty(),
        "container removed at expiry"
    );
    assert_eq!(agent.status()?["cached"], 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_removed_behind_our_back_is_provisioned_again_at_start() -> anyhow::Result<()> {
    ensure_images();
    let explorer = Explorer::start().await?;
    let mut agent = Agent::start(&explorer.url).await?;
    let user = Identity::generate();
    let id = explorer
        .reserve(
            &user,
            &agent.node_id,
            "container",
            json!({"flist": BUSYBOX, "entrypoint": "sleep 3600", "capacity": {"cpu": 1, "memory": 64}}),
            Duration::from_secs(3600),
        )
        .await?;
    assert_eq!(explorer.wait_result(&id).await?.state, ResultState::Ok);
    agent.stop();
    let (cts, _, _) = labelled(&agent.node_id, &id);
    docker(&["rm", "-f", &cts[0]])?;
    agent.spawn().await?;
    let (cts, _, _) = labelled(&agent.node_id, &id);
    assert_eq!(cts.len(), 1, "provisioned again");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &cts[0]])?,
        "true"
    );
    assert!(agent.log().contains("repair"), "the repair is logged");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_of_an_expired_reservation_is_removed_at_start() -> anyhow::Result<()> {
    ensure_images();
    let explorer = Explorer::start().await?;
    let mut agent = Agent::start_with(&explorer.url, &[("AGENT_FAULT", "after-provision")]).await?;
    let user = Identity::generate();
    let id = explorer
        .reserve(
            &user,
            &agent.node_id,
            "container",
            json!({"flist": BUSYBOX, "entrypoint": "sleep 3600", "capacity": {"cpu": 1, "memory": 64}}),
            Duration::from_secs(4),
        )
        .await?;
    agent.wait_exit(Duration::from_secs(60))?;
    assert_eq!(
        labelled(&agent.node_id, &id).0.len(),
        1,
        "made, but never cached"
    );
    tokio::time::sleep(Duration::from_secs(5)).await; // now expired
    agent.env.clear();
    agent.spawn().await?;
    wait_for(
        "the orphan to be removed",
        Duration::from_secs(30),
        || async { labelled(&agent.node_id, &id).0.is_empty().then_some(()) },
    )
    .await?;
    assert!(agent.log().contains("orphan"), "the removal is logged");
    Ok(())
}
