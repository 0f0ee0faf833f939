//! End to end, the core: the real `agent` binary against the real
//! `explorer serve` over loopback, with the real Docker engine behind it.

mod common;

use std::time::Duration;

use common::*;
use reservation::{Identity, ResultState};
use serde_json::json;

fn network(name: &str, node: &str, octet: u8) -> serde_json::Value {
    json!({
        "name": name,
        "ip_range": format!("10.{octet}.0.0/16"),
        "net_resources": [{"node_id": node, "subnet": format!("10.{octet}.1.0/24")}],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_reservation_result_and_signed_deletion() -> anyhow::Result<()> {
    let explorer = Explorer::start().await?;
    let agent = Agent::start(&explorer.url).await?;
    let user = Identity::generate();
    let id = explorer
        .reserve(
            &user,
            &agent.node_id,
            "network",
            network("core-a", &agent.node_id, 201),
            Duration::from_secs(600),
        )
        .await?;
    let res = explorer.wait_result(&id).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    explorer.verify(&res, &agent.node_id).await?; // signed by the node key, for this reservation
    let (_, nets, _) = labelled(&agent.node_id, &id);
    assert_eq!(nets.len(), 1, "one labelled docker network");

    // The agent shows it.
    let (code, out, _) = agent.ctl(&["list"])?;
    assert_eq!(code, 0);
    assert!(out.contains(&id) && out.contains("network"), "{out}");
    let st = agent.status()?;
    assert_eq!(st["node_id"], agent.node_id);
    assert_eq!(st["counters"]["network"], 1);
    assert_eq!(st["cached"], 1);
    assert_eq!(st["docker"]["ok"], true);

    // A forged deletion does not even pass the explorer...
    let mallory = Identity::generate();
    assert_eq!(explorer.delete_as(&mallory, &id).await?, 400);
    // ...and the signed one decommissions it.
    assert_eq!(explorer.delete_as(&user, &id).await?, 200);
    explorer.wait_deleted(&id).await?;
    assert!(
        labelled(&agent.node_id, &id).1.is_empty(),
        "network removed"
    );
    assert_eq!(agent.status()?["cached"], 0);
    // Exactly one result ever.
    assert_eq!(explorer.results(&id).await?.len(), 1);
    cleanup_user(user.id());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_get_signed_errors_and_the_agent_keeps_running() -> anyhow::Result<()> {
    let explorer = Explorer::start().await?;
    let mut agent = Agent::start(&explorer.url).await?;
    let user = Identity::generate();
    let node = agent.node_id.clone();
    let hour = Duration::from_secs(3600);
    // An expired reservation does not even reach the node: the explorer
    // refuses it (the node's own "expired" refusal is proven against a
    // hostile explorer in hostile.rs and in the engine's unit tests).
    let expired = signed(
        &user,
        &node,
        "volume",
        json!({"size": 1, "type": "SSD"}),
        chrono::Utc::now() - chrono::Duration::hours(2),
        hour,
    );
    let e = explorer.post(&expired).await.unwrap_err().to_string();
    assert!(e.contains("400") && e.contains("expired"), "{e}");
    let cases = vec![
        (explorer.reserve(&user, &node, "vm", json!({}), hour).await?, "unknown workload type \"vm\""),
        (
            explorer.reserve(&user, &node, "volume", json!({"size": 1, "type": "TAPE"}), hour).await?,
            "data.type: volume type \"TAPE\" is not one of HDD, SSD",
        ),
        (
            explorer.reserve(&user, &node, "container", json!({"flist": "x", "capacity": {"cpu": 0, "memory": 64}}), hour).await?,
            "data.capacity.cpu: must be > 0",
        ),
        (
            explorer
                .reserve(&user, &node, "network", json!({"name": "n", "ip_range": "10.202.0.0/16", "net_resources": []}), hour)
                .await?,
            "net_resources",
        ),
        (
            explorer
                .reserve(
                    &user,
                    &node,
                    "container",
                    json!({"flist": BUSYBOX, "capacity": {"cpu": 1, "memory": 64}, "mounts": [{"volume_id": "999-1", "mountpoint": "/data"}]}),
                    hour,
                )
                .await?,
            "999-1",
        ),
    ];
    for (id, want) in &cases {
        let res = explorer.wait_result(id).await?;
        assert_eq!(res.state, ResultState::Error, "{id}");
        assert!(
            res.error.contains(want),
            "{id}: want {want:?} in {:?}",
            res.error
        );
        assert_eq!(res.data.get(), "null");
        explorer.verify(&res, &node).await?;
        assert!(
            labelled(&agent.node_id, id) == (vec![], vec![], vec![]),
            "refusal changed nothing for {id}"
        );
    }
    assert!(agent.is_running());
    assert_eq!(agent.status()?["cached"], 0);
    // Refusals are not judged again after a restart.
    agent.stop();
    agent.spawn().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (id, _) in &cases {
        assert_eq!(explorer.results(id).await?.len(), 1, "{id} judged twice");
    }
    Ok(())
}
