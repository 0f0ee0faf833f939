//! End to end, the explorer at fleet scale: two `explorer serve` replicas
//! on one PostgreSQL database and one agent given both URLs. A reservation
//! posted to replica A reaches the agent through its long poll on replica
//! B (PostgreSQL NOTIFY wakes B's held poll); once B is killed the agent
//! fails over to A and goes on: new work, deletions, heartbeats. Every
//! result is stored exactly once.
//!
//! PostgreSQL comes from `EXPLORER_TEST_DATABASE` (scripts/test.sh starts a
//! throwaway cluster), or from a cluster this test starts itself.

mod common;

use std::time::{Duration, Instant};

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

/// The node's last heartbeat as `explorer` lists it.
async fn last_heartbeat(explorer: &Explorer, node: &str) -> Option<String> {
    let nodes: serde_json::Value = reqwest::get(format!("{}/nodes", explorer.url))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    nodes
        .as_array()?
        .iter()
        .find(|n| n["node_id"] == node)?
        .get("last_heartbeat")?
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_database_and_an_agent_that_fails_over() -> anyhow::Result<()> {
    let db = explorer::testing::fresh_database().await;
    let a = Explorer::replica(&db.url).await?;
    let mut b = Explorer::replica(&db.url).await?;
    // B first: the agent polls B.
    let agent = Agent::start(&format!("{},{}", b.url, a.url)).await?;
    let st = agent.status()?;
    assert_eq!(st["explorer_in_use"], json!(b.url), "{st}");
    assert_eq!(st["explorer"], json!(format!("{},{}", b.url, a.url)));
    let (_, shown, _) = agent.ctl(&["status"])?;
    assert!(
        shown.contains(&format!("{} (in use, of {},{})", b.url, b.url, a.url)),
        "{shown}"
    );
    // Registered through B, listed by A: one state.
    wait_for("the node registered", Duration::from_secs(30), || async {
        last_heartbeat(&a, &agent.node_id).await
    })
    .await?;

    // Posted to A while the agent's poll is held on B: B's poll wakes on
    // A's NOTIFY, well before its 20 s long poll would end.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let user = Identity::generate();
    let t = Instant::now();
    let first = a
        .reserve(
            &user,
            &agent.node_id,
            "network",
            network("replica-a", &agent.node_id, 241),
            Duration::from_secs(600),
        )
        .await?;
    let res = b.wait_result(&first).await?;
    let took = t.elapsed();
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    a.verify(&res, &agent.node_id).await?;
    assert!(
        took < Duration::from_secs(10),
        "posted to A, provisioned through B's poll in {took:?} (a missed wake-up waits out the 20 s long poll)"
    );
    assert_eq!(agent.status()?["explorer_in_use"], json!(b.url));

    // B dies: the agent's held poll breaks, it moves to A and goes on.
    b.kill();
    let second = a
        .reserve(
            &user,
            &agent.node_id,
            "network",
            network("replica-b", &agent.node_id, 242),
            Duration::from_secs(600),
        )
        .await?;
    let res2 = a.wait_result(&second).await?;
    assert_eq!(res2.state, ResultState::Ok, "{}", res2.error);
    wait_for("the agent on A", Duration::from_secs(30), || async {
        (agent.status().ok()?["explorer_in_use"] == json!(a.url)).then_some(())
    })
    .await?;
    // A deletion through A is carried out, and confirmed through A.
    assert_eq!(a.delete_as(&user, &first).await?, 200);
    a.wait_deleted(&first).await?;
    // Heartbeats go on through A.
    let before = last_heartbeat(&a, &agent.node_id).await;
    wait_for("a heartbeat through A", Duration::from_secs(30), || async {
        let now = last_heartbeat(&a, &agent.node_id).await;
        (now.is_some() && now != before).then_some(())
    })
    .await?;

    // Exactly one result each, whichever replica took it.
    assert_eq!(a.results(&first).await?.len(), 1);
    assert_eq!(a.results(&second).await?.len(), 1);
    let st = agent.status()?;
    assert_eq!(st["pending_results"], 0, "{st}");
    drop(agent);
    drop(a);
    Ok(())
}
