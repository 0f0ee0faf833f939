//! Restart properties, end to end: kill -9 at each step of the engine, and
//! an explorer outage across a restart. Nothing is provisioned twice and
//! exactly one result reaches the explorer.

mod common;

use std::time::Duration;

use common::proxy::{Proxy, DOWN, REFUSE_PUTS, UP};
use common::*;
use reservation::{Identity, ResultState};
use serde_json::json;

fn container(name_suffix: &str) -> serde_json::Value {
    json!({
        "flist": BUSYBOX,
        "entrypoint": format!("sleep 3600 # {name_suffix}"),
        "capacity": {"cpu": 1, "memory": 64},
    })
}

/// Kill -9 at `fault`, restart clean, and check the outcome.
async fn crash_at(fault: &str) -> anyhow::Result<()> {
    ensure_images();
    let explorer = Explorer::start().await?;
    let mut agent = Agent::start_with(&explorer.url, &[("AGENT_FAULT", fault)]).await?;
    let user = Identity::generate();
    let id = explorer
        .reserve(
            &user,
            &agent.node_id,
            "container",
            container(fault),
            Duration::from_secs(600),
        )
        .await?;
    let status = agent.wait_exit(Duration::from_secs(60))?;
    assert!(!status.success(), "agent must have died at {fault}");
    assert!(
        agent.log().contains(&format!("AGENT_FAULT={fault}")),
        "{}",
        agent.log()
    );

    agent.env.clear();
    agent.spawn().await?;
    let res = explorer.wait_result(&id).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    explorer.verify(&res, &agent.node_id).await?;
    // Let the restarted agent settle, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        explorer.results(&id).await?.len(),
        1,
        "exactly one result after {fault}"
    );
    let (containers, _, _) = labelled(&agent.node_id, &id);
    assert_eq!(containers.len(), 1, "one container after {fault}, no twin");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &containers[0]])?,
        "true"
    );
    assert_eq!(agent.status()?["cached"], 1);
    cleanup_user(user.id());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_provisioning_before_caching() -> anyhow::Result<()> {
    crash_at("after-provision").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_caching_before_delivery() -> anyhow::Result<()> {
    crash_at("after-record").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_delivery() -> anyhow::Result<()> {
    crash_at("during-delivery").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explorer_outage_results_wait_in_the_outbox_across_a_restart() -> anyhow::Result<()> {
    let explorer = Explorer::start().await?;
    let proxy = Proxy::start(&explorer.url).await;
    let mut agent = Agent::start(&proxy.url).await?;
    let user = Identity::generate();
    let node = agent.node_id.clone();
    proxy.set(REFUSE_PUTS);
    let mut ids = Vec::new();
    for (i, octet) in [(0, 211u8), (1, 212)] {
        let data = json!({
            "name": format!("outage-{i}"),
            "ip_range": format!("10.{octet}.0.0/16"),
            "net_resources": [{"node_id": node, "subnet": format!("10.{octet}.1.0/24")}],
        });
        ids.push(
            explorer
                .reserve(&user, &node, "network", data, Duration::from_secs(600))
                .await?,
        );
    }
    // A refusal queues too.
    ids.push(
        explorer
            .reserve(
                &user,
                &node,
                "volume",
                json!({"size": 1, "type": "TAPE"}),
                Duration::from_secs(600),
            )
            .await?,
    );
    wait_for(
        "3 results pending in the outbox",
        Duration::from_secs(30),
        || async {
            let st = agent.status().ok()?;
            (st["pending_results"].as_u64()? >= 3 && st["cached"] == 2).then_some(())
        },
    )
    .await?;
    for id in &ids {
        assert!(explorer.results(id).await?.is_empty());
    }

    // Restart during a full outage: the outbox is on disk.
    agent.kill9();
    proxy.set(DOWN);
    agent.spawn().await?;
    assert!(agent.status()?["pending_results"].as_u64().unwrap() >= 3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set(UP);
    for id in &ids {
        let r = explorer.wait_result(id).await?;
        explorer.verify(&r, &node).await?;
    }
    wait_for("outbox drained", Duration::from_secs(30), || async {
        (agent.status().ok()?["pending_results"] == 0).then_some(())
    })
    .await?;
    for id in &ids {
        assert_eq!(explorer.results(id).await?.len(), 1, "{id}");
    }
    assert_eq!(labelled(&node, &ids[0]).1.len(), 1, "one network, no twin");
    assert_eq!(labelled(&node, &ids[1]).1.len(), 1, "one network, no twin");
    cleanup_user(user.id());
    Ok(())
}

/// A restart that reopens the store after its start-up pass (as from 2,000
/// cached; `AGENT_REOPEN_FROM=1` here) adopts what runs without
/// provisioning it again, and the reopened store takes a deletion and new
/// work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_that_reopens_the_store_provisions_nothing_twice() -> anyhow::Result<()> {
    ensure_images();
    let explorer = Explorer::start().await?;
    let mut agent = Agent::start(&explorer.url).await?;
    let user = Identity::generate();
    let node = agent.node_id.clone();
    let mut ids = Vec::new();
    for i in 0..2 {
        let spec = container(&format!("reopen-{i}"));
        ids.push(
            explorer
                .reserve(&user, &node, "container", spec, Duration::from_secs(600))
                .await?,
        );
    }
    for id in &ids {
        let res = explorer.wait_result(id).await?;
        assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    }
    agent.stop();
    agent
        .env
        .push(("AGENT_REOPEN_FROM".to_string(), "1".to_string()));
    agent.spawn().await?;
    assert!(
        agent
            .log()
            .contains("store reopened after the start-up pass"),
        "{}",
        agent.log()
    );
    // The first resync (from=0) lists both again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in &ids {
        assert_eq!(explorer.results(id).await?.len(), 1, "one result for {id}");
        let (containers, _, _) = labelled(&node, id);
        assert_eq!(containers.len(), 1, "one container for {id}, no twin");
    }
    assert_eq!(agent.status()?["cached"], 2);
    // The reopened store records a deletion and a new workload.
    assert!(explorer.delete_as(&user, &ids[0]).await? < 300);
    explorer.wait_deleted(&ids[0]).await?;
    let spec = container("reopen-2");
    let id = explorer
        .reserve(&user, &node, "container", spec, Duration::from_secs(600))
        .await?;
    let res = explorer.wait_result(&id).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    wait_for("2 cached", Duration::from_secs(30), || async {
        (agent.status().ok()?["cached"] == 2).then_some(())
    })
    .await?;
    assert!(labelled(&node, &ids[0]).0.is_empty(), "deleted, gone");
    cleanup_user(user.id());
    Ok(())
}
