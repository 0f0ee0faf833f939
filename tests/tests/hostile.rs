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
    for (r, sig) in [
        (by_id("5-1"), &good.signature),
        (f, &forged.signature),
        (e, &elsewhere.signature),
    ] {
        r.verify(&node, sig)?;
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
    del.delete_signature = Some(mallory.sign_delete(&del.signature));
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

/// The version 1 holes, tried through the scripted (hostile) explorer
/// against the real agent: a digit moved from `duration` onto `created`, a
/// version 1 reservation, an id crafted to make a signed error read as
/// "ok", a user's deletion moved onto another reservation, and a refused
/// reservation replayed under a new id once it could succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_holes_stay_closed() -> anyhow::Result<()> {
    let (url, script) = scripted::start().await;
    let agent = Agent::start(&url).await?;
    let node = agent.node_id.clone();
    let user = Identity::generate();
    let hour = Duration::from_secs(3600);
    let now = chrono::Utc::now();

    // The digit shift: "created ‖ duration" keeps its bytes, the framed
    // version 2 message does not.
    let honest = with_id(
        signed(&user, &node, "network", net(&node, 231), now, hour),
        "11-1",
    );
    let created = honest.created.unwrap().timestamp().to_string();
    let duration = honest.duration.to_string();
    let shifted_created: i64 = format!("{created}{}", &duration[..1]).parse()?;
    let mut shifted = honest.clone();
    shifted.created = chrono::DateTime::from_timestamp(shifted_created, 0);
    shifted.duration = duration[1..].parse()?;
    assert_eq!(
        format!("{}{}", shifted_created, shifted.duration),
        format!("{created}{duration}"),
        "version 1 would have signed the same bytes"
    );
    // Version 1: no version, no nonce.
    let mut v1 = serde_json::to_value(with_id(
        signed(&user, &node, "network", net(&node, 232), now, hour),
        "12-1",
    ))?;
    v1.as_object_mut().unwrap().remove("version");
    v1.as_object_mut().unwrap().remove("nonce");
    // A crafted id: nothing may be signed about it.
    let crafted = with_id(
        signed(&user, &node, "network", net(&node, 233), now, hour),
        "157-1ok",
    );
    scripted::set(
        &script,
        vec![Answer::Json(serde_json::to_string(&vec![
            serde_json::to_value(&shifted)?,
            v1,
            serde_json::to_value(&crafted)?,
        ])?)],
    );
    let results = wait_for("results for 11-1 and 12-1", Duration::from_secs(60), || {
        let script = script.clone();
        async move {
            let s = script.lock().unwrap();
            (s.results.len() >= 2).then(|| s.results.clone())
        }
    })
    .await?;
    let by_id = |id: &str| results.iter().find(|r| r.id == id).cloned().unwrap();
    let r = by_id("11-1");
    assert_eq!(r.state, ResultState::Error);
    assert!(r.error.starts_with("signature:"), "{}", r.error);
    r.verify(&node, &shifted.signature)?;
    let r = by_id("12-1");
    assert!(
        r.error
            .contains("protocol version 1 is not accepted; sign with version 2"),
        "{}",
        r.error
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !script
            .lock()
            .unwrap()
            .results
            .iter()
            .any(|r| r.id.starts_with("157")),
        "nothing signed about 157-1ok"
    );
    assert!(agent.log().contains("157-1ok"), "the crafted id is logged");
    assert_eq!(agent.status()?["cached"], 0, "nothing provisioned");

    // A deletion the user signed for another reservation does not stop
    // this one, whatever id the explorer puts it under.
    let running = with_id(
        signed(&user, &node, "network", net(&node, 234), now, hour),
        "13-1",
    );
    let other = signed(&user, &node, "network", net(&node, 234), now, hour);
    assert_ne!(running.signature, other.signature, "fresh nonce");
    let mut moved = running.clone();
    moved.to_delete = true;
    moved.delete_signature = Some(user.sign_delete(&other.signature));
    // A container that needs a network the user has not reserved yet: it is
    // refused now, and must stay refused when the explorer replays it
    // under a new id after the network exists.
    let ct_data = json!({"flist": BUSYBOX, "entrypoint": "sleep 600",
        "capacity": {"cpu": 1, "memory": 32}, "network": {"network_id": "hostile-235"}});
    let ct = with_id(
        signed(&user, &node, "container", ct_data, now, hour),
        "14-1",
    );
    scripted::set(
        &script,
        vec![
            Answer::Json(serde_json::to_string(&vec![&running, &ct])?),
            Answer::Json(serde_json::to_string(&vec![&moved])?),
            Answer::Json(serde_json::to_string(&vec![with_id(
                signed(&user, &node, "network", net(&node, 235), now, hour),
                "15-1",
            )])?),
        ],
    );
    // Work runs in parallel, so results arrive in any order: the replay is
    // handed over only once 15-1's network exists, when 14-1 could succeed.
    wait_for("the result of 15-1", Duration::from_secs(60), || {
        let script = script.clone();
        async move {
            let s = script.lock().unwrap();
            s.results.iter().any(|r| r.id == "15-1").then_some(())
        }
    })
    .await?;
    scripted::set(
        &script,
        vec![Answer::Json(serde_json::to_string(&vec![with_id(
            ct.clone(),
            "16-1",
        )])?)],
    );
    let results = wait_for("results of 13-1 to 16-1", Duration::from_secs(60), || {
        let script = script.clone();
        async move {
            let s = script.lock().unwrap();
            ["13-1", "14-1", "15-1", "16-1"]
                .iter()
                .all(|id| s.results.iter().any(|r| r.id == *id))
                .then(|| s.results.clone())
        }
    })
    .await?;
    let by_id = |id: &str| results.iter().find(|r| r.id == id).cloned().unwrap();
    assert_eq!(by_id("13-1").state, ResultState::Ok);
    assert_eq!(by_id("15-1").state, ResultState::Ok);
    let first = by_id("14-1");
    assert_eq!(first.state, ResultState::Error, "{}", first.error);
    let replay = by_id("16-1");
    assert_eq!(replay.state, ResultState::Error);
    assert!(
        replay.error.contains("already judged as 14-1"),
        "{}",
        replay.error
    );
    replay.verify(&node, &ct.signature)?;
    assert!(labelled(&node, "16-1").0.is_empty(), "no container");
    assert!(labelled(&node, "14-1").0.is_empty(), "no container");
    assert_eq!(labelled(&node, "13-1").1.len(), 1, "13-1 still runs");
    assert!(script.lock().unwrap().deleted.is_empty());
    assert!(agent.log().contains("refusing a deletion"));
    cleanup_user(user.id());
    Ok(())
}

/// 300 distinct reservations of 60 KB each: the `from=0` resync is larger
/// than the agent's 16 MiB answer cap, so it pages down until an answer
/// fits, and the good reservation behind the flood is provisioned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_reservations_does_not_stop_the_node() -> anyhow::Result<()> {
    let explorer = Explorer::start().await?;
    let mut agent = Agent::prepare(&explorer.url, &[])?;
    let node = agent.node_id.clone();
    let user = Identity::generate();
    let hour = Duration::from_secs(3600);
    let pad = "x".repeat(60 * 1000);
    let mut flood = Vec::new();
    for _ in 0..300 {
        // Refused by the node (size 0), cheaply.
        let data = json!({"size": 0, "type": "SSD", "pad": pad});
        flood.push(explorer.reserve(&user, &node, "volume", data, hour).await?);
    }
    let good = explorer
        .reserve(&user, &node, "network", net(&node, 236), hour)
        .await?;
    agent.spawn().await?;
    let res = explorer.wait_result(&good).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    explorer.verify(&res, &node).await?;
    // Each of the flood got its signed refusal, none was dropped.
    for id in [&flood[0], &flood[150], &flood[299]] {
        let r = explorer.wait_result(id).await?;
        assert!(r.error.contains("data.size"), "{}", r.error);
    }
    assert!(
        agent.log().contains("asking again for fewer entries"),
        "the answer cap was hit and paged around"
    );
    // And new work still flows.
    let next = explorer
        .reserve(&user, &node, "network", net(&node, 237), hour)
        .await?;
    assert_eq!(explorer.wait_result(&next).await?.state, ResultState::Ok);
    agent.stop();
    cleanup_user(user.id());
    Ok(())
}

/// Three identical volumes scripted in the same second are three
/// reservations (fresh nonces), not one and two replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_reservations_with_fresh_nonces_are_all_provisioned() -> anyhow::Result<()> {
    let explorer = Explorer::start().await?;
    let agent = Agent::start(&explorer.url).await?;
    let user = Identity::generate();
    let hour = Duration::from_secs(3600);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let data = json!({"size": 1, "type": "SSD"});
        ids.push(
            explorer
                .reserve(&user, &agent.node_id, "volume", data, hour)
                .await?,
        );
    }
    for id in &ids {
        let r = explorer.wait_result(id).await?;
        assert_eq!(r.state, ResultState::Ok, "{id}: {}", r.error);
        assert_eq!(
            labelled(&agent.node_id, id).2.len(),
            1,
            "{id} has its volume"
        );
    }
    Ok(())
}

/// The explorer's writes that only the node may make: `PUT .../deleted`,
/// `POST /nodes` and uptime. Unsigned or forged ones change nothing, and
/// the user's real deletion still reaches the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_writes_at_the_explorer_cannot_be_forged() -> anyhow::Result<()> {
    let explorer = Explorer::start().await?;
    let agent = Agent::start(&explorer.url).await?;
    let node = agent.node_id.clone();
    let user = Identity::generate();
    let hour = Duration::from_secs(3600);
    let http = reqwest::Client::new();
    let id = explorer
        .reserve(&user, &node, "network", net(&node, 238), hour)
        .await?;
    assert_eq!(explorer.wait_result(&id).await?.state, ResultState::Ok);

    // The node is registered, with its own URL.
    let nodes = wait_for("node registered", Duration::from_secs(30), || async {
        let v: Value = reqwest::get(format!("{}/nodes", explorer.url))
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v.as_array()?.len() == 1 && !v[0]["last_heartbeat"].is_null()).then_some(v)
    })
    .await?;
    let url_before = nodes[0]["url"].clone();

    // An unsigned, then a wrongly signed, `PUT /deleted` before the user
    // even deletes: refused, and the reservation is not marked deleted.
    let put_deleted = |body: Value| {
        let http = http.clone();
        let url = format!("{}/reservations/{id}/deleted", explorer.url);
        async move {
            http.put(url)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    assert_eq!(put_deleted(json!({})).await?, 400);
    let sig = explorer.signature_of(&id).await?;
    let mallory = Identity::generate();
    assert_eq!(
        put_deleted(json!({"signature": mallory.sign_deleted(&id, &sig)})).await?,
        400
    );
    assert_eq!(explorer.get(&id).await?["deleted"], false);

    // Forged registrations: another key, and the node's own key with a
    // stale timestamp (a captured message replayed).
    let forged_url = "http://attacker.example:9100";
    let cap = reservation::Capacity::whole(999, 999, 999, 999);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut other_key = reservation::node::Registration::signed(&mallory, forged_url, &cap, now_ms);
    other_key.node_id = node.clone();
    let stale = reservation::node::Registration::signed(
        &agent.node(),
        forged_url,
        &cap,
        now_ms - 10 * 60 * 1000,
    );
    for body in [&other_key, &stale] {
        let resp = http
            .post(format!("{}/nodes", explorer.url))
            .json(body)
            .send()
            .await?;
        assert_eq!(resp.status().as_u16(), 400);
    }
    // Forged uptime: another key.
    let up = reservation::node::Uptime::signed(&mallory, 1, &cap, now_ms);
    let resp = http
        .post(format!("{}/nodes/{node}/uptime", explorer.url))
        .json(&up)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 400);
    let nodes: Value = reqwest::get(format!("{}/nodes", explorer.url))
        .await?
        .json()
        .await?;
    assert_eq!(nodes[0]["url"], url_before, "url unchanged");
    assert_ne!(nodes[0]["capacity"]["cru"], 999, "capacity unchanged");
    assert_ne!(nodes[0]["used"]["cru"], 999, "usage unchanged");

    // The user's deletion reaches the node, which confirms it (signed).
    assert_eq!(explorer.delete_as(&user, &id).await?, 200);
    explorer.wait_deleted(&id).await?;
    wait_for("network removed", Duration::from_secs(30), || async {
        labelled(&node, &id).1.is_empty().then_some(())
    })
    .await?;
    Ok(())
}
