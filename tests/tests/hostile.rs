//! A malformed or hostile explorer, served by the test on loopback: bad
//! JSON, unknown fields, wrong types, a 2 MB body, forged signatures, other
//! nodes' reservations, forged deletions. The agent logs and skips what it
//! must, posts signed errors where the protocol asks, and keeps running.

mod common;

use std::time::Duration;

use common::scripted::{self, Answer};
use common::*;
use reservation::{Identity, Reservation, ResultState};
use serde_json::{json, Value};

fn net(node: &str, octet: u8) -> Value {
    json!({"name": format!("hostile-{octet}"), "ip_range": format!("10.{octet}.0.0/16"),
           "net_resources": [{"node_id": node, "subnet": format!("10.{octet}.1.0/24")}]})
}

fn with_id(mut r: Reservation, id: &str) -> Reservation {
    r.id = id.into();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_hostile_answers_are_skipped_or_refused() -> anyhow::Result<()> {
    // The explorer serves an empty list until the script is set.
    let (url, script) = scripted::start().await;
    let agent = Agent::start(&url).await?;
    let node = agent.node_id.clone();
    let user = Identity::generate();
    let hour = Duration::from_secs(3600);
    let now = chrono::Utc::now();

    let good = with_id(
        signed(&user, &node, "network", net(&node, 221), now, hour),
        "5-1",
    );
    let mut forged = with_id(
        signed(&user, &node, "network", net(&node, 222), now, hour),
        "6-1",
    );
    forged.duration *= 2; // stretched by the explorer after signing
    let other_node = Identity::generate();
    let elsewhere = with_id(
        signed(
            &user,
            other_node.id(),
            "network",
            net(&node, 223),
            now,
            hour,
        ),
        "7-1",
    );
    let mut unknown_field = serde_json::to_value(with_id(
        signed(&user, &node, "network", net(&node, 224), now, hour),
        "8-1",
    ))?;
    unknown_field["surprise"] = json!(1);
    let mut wrong_type = serde_json::to_value(with_id(
        signed(&user, &node, "network", net(&node, 225), now, hour),
        "9-1",
    ))?;
    wrong_type["duration"] = json!("one hour");
    let two_mb = format!(
        "[{{\"id\":\"10-1\",\"pad\":\"{}\"}}]",
        "x".repeat(2 * 1024 * 1024)
    );

    scripted::set(
        &script,
        vec![
            Answer::Json("[{\"id\": \"1-1\", ".into()), // bad JSON
            Answer::Json("{\"not\": \"an array\"}".into()),
            Answer::Json(two_mb),
            Answer::Json(serde_json::to_string(&vec![unknown_field, wrong_type])?),
            Answer::Json(serde_json::to_string(&vec![
                serde_json::to_value(&forged)?,
                serde_json::to_value(&elsewhere)?,
                serde_json::to_value(&good)?,
            ])?),
        ],
    );
    let results = wait_for(
        "results for 5-1, 6-1 and 7-1",
        Duration::from_secs(60),
        || {
            let script = script.clone();
            async move {
                let s = script.lock().unwrap();
                (s.results.len() >= 3).then(|| s.results.clone())
            }
        },
    )
    .await?;
    let by_id = |id: &str| results.iter().find(|r| r.id == id).cloned().unwrap();
    assert_eq!(by_id("5-1").state, ResultState::Ok);
    let f = by_id("6-1");
    assert_eq!(f.state, ResultState::Error);
    assert!(f.error.contains("signature"), "{}", f.error);
    let e = by_id("7-1");
    assert!(e.error.contains("is not this node"), "{}", e.error);
    for r in &results {
        r.verify(&node)?;
    }
    // Malformed ones got no result (no id to trust) and were logged.
    assert!(!results.iter().any(|r| r.id == "8-1" || r.id == "9-1"));
    let log = agent.log();
    assert!(log.contains("skipping malformed reservation"), "{log}");
    assert!(log.contains("malformed json"), "{log}");
    assert!(
        log.contains("reservation=10-1"),
        "the 2 MB entry is skipped: {log}"
    );

    // A forged deletion of the running 5-1 changes nothing; it is warned
    // about once even though the explorer repeats it.
    let mallory = Identity::generate();
    let mut del = good.clone();
    del.to_delete = true;
    del.user_id = mallory.id().to_string();
    mallory.sign_reservation(&mut del);
    del.delete_signature = Some(mallory.sign_delete("5-1"));
    scripted::set(
        &script,
        vec![Answer::Json(serde_json::to_string(&vec![del])?)],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(agent.status()?["cached"], 1, "5-1 keeps running");
    assert!(script.lock().unwrap().deleted.is_empty());
    let warned = agent.log().matches("refusing a deletion").count();
    assert_eq!(warned, 1, "warned once");
    assert_eq!(labelled(&node, "5-1").1.len(), 1);
    cleanup_user(user.id());
    Ok(())
}
