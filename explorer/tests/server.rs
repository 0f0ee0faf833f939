//! The explorer's HTTP API over real loopback HTTP: every route of
//! PROTOCOL.md, signatures checked on the way in, data kept byte for byte,
//! poll and long-poll semantics, and state across a restart.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::{ids, poll, post, signed, start, volume};
use explorer::{NodeInfo, ReservationView};
use reservation::{Identity, ResultState, WorkloadResult};
use serde_json::json;
use serde_json::value::RawValue;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

#[tokio::test]
async fn post_and_get_keep_data_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Duration::from_secs(2)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());
    // Odd spacing, key order and a 2.50 that any re-serialization changes.
    let raw = r#"{"type":"SSD",  "size": 1 , "zz":[1, 2.50]}"#;
    let r = signed(&user, node.id(), "volume", raw, Utc::now(), 3600);
    let resp = c
        .post(format!("{}/reservations/{}", s.url, node.id()))
        .body(serde_json::to_string(&r).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["location"], "/reservations/1-1");
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap(),
        json!({"id": "1-1"})
    );

    let text = c
        .get(format!("{}/reservations/1-1", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(&format!("\"data\":{raw}")), "{text}");
    let view: ReservationView = serde_json::from_str(&text).unwrap();
    assert_eq!(view.id, "1-1");
    assert!(view.result.is_none() && !view.deleted && !view.to_delete);
    view.reservation().verify().unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["result"], serde_json::Value::Null);
    assert_eq!(v["deleted"], json!(false));

    let list = poll(&c, &s.url, node.id(), 0).await;
    assert_eq!(ids(&list), ["1-1"]);
    assert_eq!(list[0].data.get(), raw);
    list[0].verify().unwrap();

    assert_eq!(post(&c, &s.url, &volume(&user, node.id())).await, "2-1");
    s.stop().await;
}

#[tokio::test]
async fn accepts_the_libsodium_vector_reservation() {
    // The committed copy (reservation/tests checks it equals shared/).
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../reservation/tests/vectors.json"
    );
    let vectors: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let body = vectors["reservation_json"].as_str().unwrap();
    let node = vectors["node_id"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Duration::from_secs(2)).await;
    let c = client();
    let resp = c
        .post(format!("{}/reservations/{node}", s.url))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let list = poll(&c, &s.url, node, 0).await;
    assert_eq!(list[0].data.get(), r#"{"size": 1, "type":"SSD"}"#);
    assert_eq!(list[0].id, "1-1", "the posted id 12-1 is replaced");
    list[0].verify().unwrap();
    s.stop().await;
}

#[tokio::test]
async fn bad_signatures_and_shapes_are_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Duration::from_secs(2)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());
    let url = format!("{}/reservations/{}", s.url, node.id());
    let send = |body: String| {
        let c = c.clone();
        let url = url.clone();
        async move {
            let resp = c.post(url).body(body).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let good = serde_json::to_string(&volume(&user, node.id())).unwrap();

    // A tampered duration, data, or user: the signature no longer verifies.
    let mut r = volume(&user, node.id());
    r.duration *= 2;
    let (st, msg) = send(serde_json::to_string(&r).unwrap()).await;
    assert_eq!(st, 400);
    assert!(msg.contains("signature"), "{msg}");
    let tampered = good.replace(r#""size":1"#, r#""size":2"#);
    assert_ne!(tampered, good);
    let (st, msg) = send(tampered).await;
    assert_eq!((st, msg.contains("does not verify")), (400, true), "{msg}");
    let mut r = volume(&user, node.id());
    r.user_id = Identity::generate().id().to_string();
    assert_eq!(send(serde_json::to_string(&r).unwrap()).await.0, 400);
    let mut r = volume(&user, node.id());
    r.signature.clear();
    let (st, msg) = send(serde_json::to_string(&r).unwrap()).await;
    assert_eq!((st, msg.contains("missing")), (400, true), "{msg}");

    // Shape.
    let (st, msg) = send(good.replacen('{', r#"{"extra":1,"#, 1)).await;
    assert_eq!(
        (st, msg.contains("unknown field `extra`")),
        (400, true),
        "{msg}"
    );
    let v: serde_json::Value = serde_json::from_str(&good).unwrap();
    let mut no_data = v.clone();
    no_data.as_object_mut().unwrap().remove("data");
    let (st, msg) = send(no_data.to_string()).await;
    assert_eq!(
        (st, msg.contains("missing field `data`")),
        (400, true),
        "{msg}"
    );
    let (st, msg) = send("not json".into()).await;
    assert_eq!(
        (st, msg.contains("invalid reservation JSON")),
        (400, true),
        "{msg}"
    );
    let mut bad_dur = v.clone();
    bad_dur["duration"] = json!("1h");
    assert_eq!(send(bad_dur.to_string()).await.0, 400);

    // Too big: refused before parsing.
    let (st, msg) = send(format!("{{\"pad\":\"{}\"}}", "x".repeat(2 << 20))).await;
    assert_eq!(st, 413);
    assert!(msg.contains("1048576 byte limit"), "{msg}");

    // Well signed but bad data or an unknown type: accepted, the node
    // refuses it with a signed error result.
    let r = signed(
        &user,
        node.id(),
        "volume",
        r#"{"size":-1,"type":"TAPE"}"#,
        Utc::now(),
        60,
    );
    assert_eq!(send(serde_json::to_string(&r).unwrap()).await.0, 201);
    let r = signed(&user, node.id(), "teapot", "{}", Utc::now(), 60);
    assert_eq!(send(serde_json::to_string(&r).unwrap()).await.0, 201);

    // Unknown ids.
    for id in ["99-1", "abc", "1-2"] {
        let resp = c
            .get(format!("{}/reservations/{id}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{id}");
        assert!(resp.text().await.unwrap().contains("not found"));
    }
    s.stop().await;
}

#[tokio::test]
async fn a_reservation_posted_under_another_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Duration::from_secs(2)).await;
    let c = client();
    let (user, node, other) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let r = volume(&user, node.id());
    let resp = c
        .post(format!("{}/reservations/{}", s.url, other.id()))
        .body(serde_json::to_string(&r).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let msg = resp.text().await.unwrap();
    assert!(msg.contains("does not match"), "{msg}");
    assert!(poll(&c, &s.url, other.id(), 0).await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn poll_answers_by_cursor_expiry_and_pending_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Duration::from_millis(300)).await;
    let c = client();
    let (user, a, b) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let two_hours_ago = Utc::now() - chrono::Duration::hours(2);
    let expired = signed(
        &user,
        a.id(),
        "volume",
        r#"{"size":1,"type":"SSD"}"#,
        two_hours_ago,
        3600,
    );
    assert_eq!(post(&c, &s.url, &volume(&user, a.id())).await, "1-1");
    assert_eq!(post(&c, &s.url, &expired).await, "2-1");
    assert_eq!(post(&c, &s.url, &volume(&user, a.id())).await, "3-1");
    assert_eq!(post(&c, &s.url, &volume(&user, b.id())).await, "4-1");

    assert_eq!(
        ids(&poll(&c, &s.url, a.id(), 0).await),
        ["1-1", "2-1", "3-1"]
    );
    assert_eq!(ids(&poll(&c, &s.url, b.id(), 0).await), ["4-1"]);
    assert_eq!(ids(&poll(&c, &s.url, a.id(), 1).await), ["1-1", "3-1"]);
    assert_eq!(ids(&poll(&c, &s.url, a.id(), 2).await), ["3-1"]);
    assert!(poll(&c, &s.url, a.id(), 4).await.is_empty());

    // Deleted reservations come whatever the cursor, expired or not, until
    // the node confirms.
    for id in ["1-1", "2-1"] {
        let resp = c
            .delete(format!("{}/reservations/{id}", s.url))
            .json(&json!({"delete_signature": user.sign_delete(id)}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let list = poll(&c, &s.url, a.id(), 4).await;
    assert_eq!(ids(&list), ["1-1", "2-1"]);
    assert!(list.iter().all(|r| r.to_delete));
    list[0].verify_delete().unwrap();
    list[0].verify().unwrap();
    assert_eq!(
        ids(&poll(&c, &s.url, a.id(), 3).await),
        ["1-1", "2-1", "3-1"]
    );

    let resp = c
        .put(format!("{}/reservations/1-1/deleted", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(ids(&poll(&c, &s.url, a.id(), 3).await), ["2-1", "3-1"]);
    // Confirmed deleted: no longer sent from a cursor, even in range.
    assert_eq!(ids(&poll(&c, &s.url, a.id(), 1).await), ["2-1", "3-1"]);
    assert_eq!(
        ids(&poll(&c, &s.url, a.id(), 0).await),
        ["1-1", "2-1", "3-1"]
    );
    let resp = c
        .put(format!("{}/reservations/77-1/deleted", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let resp = c
        .get(format!("{}/reservations/{}/poll?from=x", s.url, a.id()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("from must be"));

    // Everything survives a restart; the counter goes on.
    s.stop().await;
    let s = start(dir.path(), Duration::from_millis(300)).await;
    assert_eq!(
        ids(&poll(&c, &s.url, a.id(), 0).await),
        ["1-1", "2-1", "3-1"]
    );
    assert_eq!(ids(&poll(&c, &s.url, a.id(), 3).await), ["2-1", "3-1"]);
    assert_eq!(post(&c, &s.url, &volume(&user, b.id())).await, "5-1");
    s.stop().await;
}

#[tokio::test]
async fn long_poll_holds_then_wakes_on_post_and_on_delete() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Duration::from_secs(2)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());

    // Nothing: held about long_poll, then an empty array.
    let t = Instant::now();
    assert!(poll(&c, &s.url, node.id(), 1).await.is_empty());
    let held = t.elapsed();
    assert!(
        held >= Duration::from_millis(1900) && held < Duration::from_secs(4),
        "{held:?}"
    );

    // A post for this node wakes a waiting poll at once.
    let waiting = tokio::spawn({
        let (c, url, n) = (c.clone(), s.url.clone(), node.id().to_string());
        async move {
            let t = Instant::now();
            (poll(&c, &url, &n, 1).await, t.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A post for another node does not answer it.
    post(&c, &s.url, &volume(&user, Identity::generate().id())).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    assert_eq!(post(&c, &s.url, &volume(&user, node.id())).await, "2-1");
    let (list, took) = waiting.await.unwrap();
    assert_eq!(ids(&list), ["2-1"]);
    assert!(took < Duration::from_millis(1500), "{took:?}");

    // A deletion wakes a poll whose cursor is past the reservation.
    let waiting = tokio::spawn({
        let (c, url, n) = (c.clone(), s.url.clone(), node.id().to_string());
        async move {
            let t = Instant::now();
            (poll(&c, &url, &n, 3).await, t.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = c
        .delete(format!("{}/reservations/2-1", s.url))
        .json(&json!({"delete_signature": user.sign_delete("2-1")}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (list, took) = waiting.await.unwrap();
    assert_eq!(ids(&list), ["2-1"]);
    assert!(list[0].to_delete);
    assert!(took < Duration::from_millis(1500), "{took:?}");
    s.stop().await;
}

#[tokio::test]
async fn shutdown_answers_held_polls_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Duration::from_secs(30)).await;
    let c = client();
    let node = Identity::generate();
    let waiting = tokio::spawn({
        let (c, url, n) = (c.clone(), s.url.clone(), node.id().to_string());
        async move { poll(&c, &url, &n, 1).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    s.stop().await;
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(waiting.await.unwrap().is_empty());
}

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_string()).unwrap()
}

#[tokio::test]
async fn results_must_be_signed_by_the_node_and_are_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Duration::from_secs(2)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());
    let id = post(&c, &s.url, &volume(&user, node.id())).await;
    let put = |id: &str, r: &WorkloadResult| {
        let (c, url) = (c.clone(), format!("{}/reservations/{id}", s.url));
        let body = serde_json::to_string(r).unwrap();
        async move {
            let resp = c.put(url).body(body).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let results = || {
        let (c, url) = (c.clone(), format!("{}/reservations/{id}/results", s.url));
        async move {
            let resp = c.get(url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Vec<WorkloadResult>>().await.unwrap()
        }
    };

    // Signed by someone else, tampered, or for another id: refused.
    let forged = Identity::generate()
        .ok_result("volume", &id, &json!({"volume_id": id}))
        .unwrap();
    let (st, msg) = put(&id, &forged).await;
    assert_eq!(st, 400);
    assert!(
        msg.contains("signature") && msg.contains(node.id()),
        "{msg}"
    );
    let mut tampered = node.error_result("volume", &id, "disk full");
    tampered.error = "all good".into();
    assert_eq!(put(&id, &tampered).await.0, 400);
    let other = node.error_result("volume", "9-1", "x");
    let (st, msg) = put(&id, &other).await;
    assert_eq!((st, msg.contains("does not match")), (400, true), "{msg}");
    assert_eq!(put("9-1", &other).await.0, 404);
    let resp = c
        .put(format!("{}/reservations/{id}", s.url))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("invalid result JSON"));
    assert!(results().await.is_empty());
    let view: ReservationView = c
        .get(format!("{}/reservations/{id}", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(view.result.is_none());

    // A good one, with its data bytes kept as signed.
    let mut good = WorkloadResult {
        kind: "volume".into(),
        id: id.clone(),
        created: Utc::now(),
        state: ResultState::Ok,
        error: String::new(),
        data: raw(r#"{ "volume_id" : "1-1" }"#),
        signature: String::new(),
    };
    good.signature = node.sign(&good.signing_message());
    assert_eq!(put(&id, &good).await.0, 200);
    let text = c
        .get(format!("{}/reservations/{id}", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(r#""data":{ "volume_id" : "1-1" }"#), "{text}");
    let view: ReservationView = serde_json::from_str(&text).unwrap();
    let got = view.result.unwrap();
    got.verify(node.id()).unwrap();
    assert_eq!(got.signature, good.signature);
    assert_eq!(results().await.len(), 1);

    // A second one is kept too; GET shows the latest.
    let err = node.error_result("volume", &id, "crashed");
    assert_eq!(put(&id, &err).await.0, 200);
    let all = results().await;
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].state, all[1].state),
        (ResultState::Ok, ResultState::Error)
    );
    let view: ReservationView = c
        .get(format!("{}/reservations/{id}", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view.result.unwrap().error, "crashed");
    let resp = c
        .get(format!("{}/reservations/8-1/results", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    s.stop().await;
}

#[tokio::test]
async fn deletion_needs_the_users_signature() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Duration::from_secs(2)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());
    let id = post(&c, &s.url, &volume(&user, node.id())).await;
    let del = |id: &str, body: String| {
        let (c, url) = (c.clone(), format!("{}/reservations/{id}", s.url));
        async move {
            let resp = c.delete(url).body(body).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let view = || {
        let (c, url) = (c.clone(), format!("{}/reservations/{id}", s.url));
        async move {
            c.get(url)
                .send()
                .await
                .unwrap()
                .json::<ReservationView>()
                .await
                .unwrap()
        }
    };

    let forged = Identity::generate().sign_delete(&id);
    let (st, msg) = del(&id, json!({"delete_signature": forged}).to_string()).await;
    assert_eq!(st, 400);
    assert!(
        msg.contains("delete_signature") && msg.contains(user.id()),
        "{msg}"
    );
    let other_id = user.sign_delete("2-1");
    assert_eq!(
        del(&id, json!({"delete_signature": other_id}).to_string())
            .await
            .0,
        400
    );
    let (st, msg) = del(&id, json!({"delete_signature": ""}).to_string()).await;
    assert_eq!((st, msg.contains("missing")), (400, true), "{msg}");
    let (st, msg) = del(&id, String::new()).await;
    assert_eq!(
        (st, msg.contains("invalid deletion JSON")),
        (400, true),
        "{msg}"
    );
    assert_eq!(del(&id, "{}".into()).await.0, 400);
    let v = view().await;
    assert!(!v.to_delete && v.delete_signature.is_none());

    let good = user.sign_delete(&id);
    assert_eq!(
        del("5-1", json!({"delete_signature": good}).to_string())
            .await
            .0,
        404
    );
    let (st, msg) = del(&id, json!({"delete_signature": good}).to_string()).await;
    assert_eq!(st, 200, "{msg}");
    let v = view().await;
    assert!(v.to_delete && !v.deleted);
    assert_eq!(v.delete_signature.as_deref(), Some(good.as_str()));
    v.reservation().verify_delete().unwrap();
    v.reservation().verify().unwrap();
    s.stop().await;
}

#[tokio::test]
async fn nodes_register_heartbeat_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Duration::from_secs(2)).await;
    let c = client();
    let node = Identity::generate();
    let nodes = || {
        let (c, url) = (c.clone(), format!("{}/nodes", s.url));
        async move {
            let resp = c.get(url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.text().await.unwrap()
        }
    };
    let send = |path: String, body: serde_json::Value| {
        let (c, url) = (c.clone(), format!("{}{path}", s.url));
        async move {
            let resp = c.post(url).json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    assert_eq!(nodes().await, "[]");
    let up = format!("/nodes/{}/uptime", node.id());
    let (st, msg) = send(up.clone(), json!({"uptime": 5})).await;
    assert_eq!((st, msg.contains("POST /nodes")), (404, true), "{msg}");

    let cap = json!({"cru": 8, "mru": 15.5, "sru": 100, "hru": 0});
    let (st, msg) = send(
        "/nodes".into(),
        json!({"node_id": "node-a", "url": "http://10.0.0.1:1", "capacity": cap}),
    )
    .await;
    assert_eq!((st, msg.contains("node_id")), (400, true), "{msg}");
    let (st, msg) = send(
        "/nodes".into(),
        json!({"node_id": node.id(), "url": "http://10.0.0.1:1"}),
    )
    .await;
    assert_eq!(
        (st, msg.contains("missing field `capacity`")),
        (400, true),
        "{msg}"
    );
    let neg = json!({"cru": -1, "mru": 1, "sru": 1, "hru": 1});
    let (st, msg) = send(
        "/nodes".into(),
        json!({"node_id": node.id(), "url": "u", "capacity": neg}),
    )
    .await;
    assert_eq!((st, msg.contains("capacity.cru")), (400, true), "{msg}");

    let reg = json!({"node_id": node.id(), "url": "http://10.0.0.1:8080", "capacity": cap});
    assert_eq!(send("/nodes".into(), reg).await.0, 201);
    let text = nodes().await;
    // Whole numbers stay integers on the wire.
    assert!(
        text.contains(r#""capacity":{"cru":8,"mru":15.5,"sru":100,"hru":0}"#),
        "{text}"
    );
    let list: Vec<NodeInfo> = serde_json::from_str(&text).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].url, "http://10.0.0.1:8080");
    assert!(list[0].last_heartbeat.is_none());
    assert_eq!(list[0].used, explorer::Capacity::default());

    let used = json!({"cru": 2, "mru": 4, "sru": 10, "hru": 0});
    assert_eq!(
        send(up.clone(), json!({"uptime": 42, "used": used}))
            .await
            .0,
        200
    );
    let list: Vec<NodeInfo> = serde_json::from_str(&nodes().await).unwrap();
    let hb = list[0].last_heartbeat.expect("heartbeat recorded");
    assert!((Utc::now() - hb).num_seconds().abs() <= 5);
    assert_eq!((list[0].used.cru, list[0].used.sru), (2.0, 10.0));
    // A heartbeat without `used` keeps the last figures.
    assert_eq!(send(up.clone(), json!({"uptime": 43})).await.0, 200);
    let (st, msg) = send(up.clone(), json!({"up": 1})).await;
    assert_eq!((st, msg.contains("uptime")), (400, true), "{msg}");

    // Re-registration replaces url and capacity, keeps the heartbeat.
    let reg = json!({"node_id": node.id(), "url": "http://10.0.0.9:8080", "capacity": cap, "version": "x"});
    assert_eq!(send("/nodes".into(), reg).await.0, 201);
    let list: Vec<NodeInfo> = serde_json::from_str(&nodes().await).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].url, "http://10.0.0.9:8080");
    assert!(list[0].last_heartbeat.is_some());
    assert_eq!(list[0].used.cru, 2.0);

    // Kept across a restart.
    s.stop().await;
    let s = start(dir.path(), Duration::from_secs(2)).await;
    let list: Vec<NodeInfo> = c
        .get(format!("{}/nodes", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0].url, "http://10.0.0.9:8080");
    s.stop().await;
}

#[tokio::test]
async fn unknown_routes_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Duration::from_secs(2)).await;
    let resp = client()
        .get(format!("{}/reservation", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("no route GET /reservation"));
    s.stop().await;
}

#[tokio::test]
async fn a_deletion_posted_with_the_reservation_is_kept_for_the_node_to_judge() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Duration::from_secs(2)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());
    assert_eq!(post(&c, &s.url, &volume(&user, node.id())).await, "1-1");
    // to_delete and delete_signature are outside the user's signature: a
    // forged one is stored as posted and reaches the node, which refuses it.
    let mut r = volume(&user, node.id());
    r.to_delete = true;
    r.delete_signature = Some(Identity::generate().sign_delete("2-1"));
    assert_eq!(post(&c, &s.url, &r).await, "2-1");
    let list = poll(&c, &s.url, node.id(), 3).await;
    assert_eq!(ids(&list), ["2-1"]);
    assert!(list[0].to_delete);
    assert_eq!(list[0].delete_signature, r.delete_signature);
    list[0].verify().unwrap();
    assert!(list[0].verify_delete().is_err());
    let resp = c
        .put(format!("{}/reservations/2-1/deleted", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let t = Instant::now();
    assert!(poll(&c, &s.url, node.id(), 3).await.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(1900));
    s.stop().await;
}

/// Many users posting at once are all answered (sled's `flush_async`
/// used to hang when awaited concurrently).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_are_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), Duration::from_secs(2)).await;
    let node = Identity::generate();
    let node_id = node.id().to_string();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let url = s.url.clone();
        let node_id = node_id.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut ids = Vec::new();
            for _ in 0..10 {
                let r = volume(&Identity::generate(), &node_id);
                ids.push(post(&c, &url, &r).await);
            }
            ids
        }));
    }
    let all = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(tasks),
    )
    .await
    .expect("every POST answered within 60 s");
    let ids: std::collections::HashSet<String> = all.into_iter().flat_map(|r| r.unwrap()).collect();
    assert_eq!(ids.len(), 320, "320 distinct ids");
    assert_eq!(poll(&client(), &s.url, &node_id, 0).await.len(), 320);
    s.stop().await;
}
