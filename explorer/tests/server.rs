//! The explorer's HTTP API (protocol version 2) over real loopback HTTP:
//! every route of PROTOCOL.md, signatures checked on the way in, data kept
//! byte for byte, the lifetime and replay rules of a POST, poll paging and
//! long-poll semantics (with its per-node limit), signed node messages, and
//! state across a restart. Every test runs on both stores: sled
//! (`sled::NAME`) and PostgreSQL (`postgres::NAME`, a fresh database each;
//! see `explorer::testing` for where the server comes from).

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use chrono::{SubsecRound, Utc};
use common::{
    cap, confirm_deleted, delete, expiring_in, heartbeat, ids, nodes, now_ms, poll, poll_q,
    poll_query, post, post_as, post_body, register, registration, send, signed, signed_exact,
    start_with, until_expired, uptime, volume, Backend, VOLUME,
};
use explorer::{ReservationView, ServerConfig};
use reservation::node::{Registration, Uptime};
use reservation::{Identity, Reservation, ResultState, WorkloadResult};
use serde_json::json;
use serde_json::value::RawValue;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_string()).unwrap()
}

async fn view(c: &reqwest::Client, url: &str, id: &str) -> ReservationView {
    let (st, text) = send(c.get(format!("{url}/reservations/{id}"))).await;
    assert_eq!(st, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

async fn post_and_get_keep_data_byte_for_byte(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
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

    let (st, text) = send(c.get(format!("{}/reservations/1-1", s.url))).await;
    assert_eq!(st, 200);
    assert!(text.contains(&format!("\"data\":{raw}")), "{text}");
    let view: ReservationView = serde_json::from_str(&text).unwrap();
    assert_eq!(view.id, "1-1");
    assert_eq!((view.version, view.nonce.as_str()), (2, r.nonce.as_str()));
    assert!(view.result.is_none() && !view.deleted && !view.to_delete);
    view.reservation.verify().unwrap();
    view.reservation.check_version().unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["version"], json!(2));
    assert_eq!(v["nonce"], json!(r.nonce));
    assert_eq!(v["result"], serde_json::Value::Null);
    assert_eq!(v["deleted"], json!(false));

    let list = poll(&c, &s.url, node.id(), 0).await;
    assert_eq!(ids(&list), ["1-1"]);
    assert_eq!(list[0].data.get(), raw);
    assert_eq!((list[0].version, &list[0].nonce), (2, &r.nonce));
    list[0].verify().unwrap();

    assert_eq!(post(&c, &s.url, &volume(&user, node.id())).await, "2-1");
    s.stop().await;
}

async fn the_libsodium_vector_reservation_is_judged_by_its_signature_and_lifetime(b: Backend) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../reservation/tests/vectors.json"
    );
    let vectors: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let body = vectors["reservation_json"].as_str().unwrap();
    let node = vectors["node_id"].as_str().unwrap();
    let seed: [u8; 32] = hex_seed(vectors["user_seed"].as_str().unwrap());
    let user = Identity::from_seed(&seed);
    let vector: Reservation = serde_json::from_str(body).unwrap();
    vector.verify().unwrap();

    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
    let c = client();
    // The vector itself is valid only in its hour (2026-11-25 11:00 to
    // 12:00 UTC): outside it the explorer refuses it for its lifetime.
    let (st, msg) = post_body(&c, &s.url, node, body.to_string()).await;
    let now = Utc::now();
    let created = vector.created.unwrap();
    if now >= vector.expires_at().unwrap() {
        assert_eq!(st, 400, "{msg}");
        assert!(
            msg.contains("the reservation ended at 2026-11-25T12:00:00"),
            "{msg}"
        );
    } else if created - now > chrono::Duration::minutes(5) {
        assert_eq!(st, 400, "{msg}");
        assert!(msg.contains("in the future"), "{msg}");
    } else {
        assert_eq!(st, 201, "{msg}");
    }

    // The same bytes of data (spaces included), signed now by the vector's
    // user with the vector's nonce: accepted, kept byte for byte, the
    // posted id 12-1 replaced.
    let mut live = vector.clone();
    live.created = Some(Utc::now().trunc_subsecs(0));
    user.sign_reservation(&mut live);
    let (st, msg) = post_body(&c, &s.url, node, serde_json::to_string(&live).unwrap()).await;
    assert_eq!(st, 201, "{msg}");
    let list = poll(&c, &s.url, node, 0).await;
    let got = list.last().unwrap();
    assert_eq!(got.data.get(), r#"{"size": 1, "type":"SSD"}"#);
    assert_ne!(got.id, "12-1", "the posted id is replaced");
    assert_eq!(got.nonce, "00112233445566778899aabbccddeeff");
    got.verify().unwrap();
    s.stop().await;
}

fn hex_seed(h: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

async fn bad_signatures_and_shapes_are_refused_with_a_message(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());
    let send = |body: String| post_body(&c, &s.url, node.id(), body);
    let good = serde_json::to_string(&volume(&user, node.id())).unwrap();

    // A tampered duration, data, nonce or user: the signature no longer
    // verifies.
    let mut r = volume(&user, node.id());
    r.duration *= 2;
    let (st, msg) = send(serde_json::to_string(&r).unwrap()).await;
    assert_eq!(st, 400);
    assert!(
        msg.contains("reservation refused: signature") && msg.contains("does not verify"),
        "{msg}"
    );
    let tampered = good.replace(r#""size":1"#, r#""size":2"#);
    assert_ne!(tampered, good);
    let (st, msg) = send(tampered).await;
    assert_eq!((st, msg.contains("does not verify")), (400, true), "{msg}");
    let mut r = volume(&user, node.id());
    r.nonce = reservation::new_nonce();
    let (st, msg) = send(serde_json::to_string(&r).unwrap()).await;
    assert_eq!((st, msg.contains("does not verify")), (400, true), "{msg}");
    let mut r = volume(&user, node.id());
    let other = Identity::generate();
    r.user_id = other.id().to_string();
    let (st, msg) = send(serde_json::to_string(&r).unwrap()).await;
    assert_eq!((st, msg.contains(other.id())), (400, true), "{msg}");
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
    let mut no_type = volume(&user, node.id());
    no_type.kind.clear();
    user.sign_reservation(&mut no_type);
    let (st, msg) = send(serde_json::to_string(&no_type).unwrap()).await;
    assert_eq!(
        (st, msg.contains("type: must not be empty")),
        (400, true),
        "{msg}"
    );
    // A path that is not a node id.
    let r = volume(&user, "not-a-node");
    let (st, msg) = post_body(&c, &s.url, "not-a-node", serde_json::to_string(&r).unwrap()).await;
    assert_eq!((st, msg.contains("node_id")), (400, true), "{msg}");

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
    for id in ["99-1", "abc", "1-2", "+1-1"] {
        let (st, msg) = send_get(&c, &format!("{}/reservations/{id}", s.url)).await;
        assert_eq!(st, 404, "{id}");
        assert!(msg.contains("not found"), "{msg}");
    }
    s.stop().await;
}

async fn send_get(c: &reqwest::Client, url: &str) -> (u16, String) {
    send(c.get(url)).await
}

/// A version 1 body (no `version`, no `nonce`), another version, and
/// missing or malformed nonces are refused, with check_version's message.
async fn version_1_and_bad_nonces_are_refused(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());
    let send = |body: String| post_body(&c, &s.url, node.id(), body);

    // Version 1: no version, no nonce, signed the old way (a plain
    // concatenation); its old signature would verify, but is never tried.
    let created = Utc::now().trunc_subsecs(0);
    let v1_message = format!(
        "{}{}volume{VOLUME}{}{}",
        node.id(),
        user.id(),
        created.timestamp(),
        3_600_000_000_000i64
    );
    let v1 = json!({
        "id": "",
        "node_id": node.id(),
        "user_id": user.id(),
        "type": "volume",
        "data": {"size": 1, "type": "SSD"},
        "created": created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "duration": 3_600_000_000_000i64,
        "signature": user.sign(v1_message.as_bytes()),
        "to_delete": false,
    });
    let (st, msg) = send(v1.to_string()).await;
    assert_eq!(st, 400, "{msg}");
    assert!(
        msg.contains("protocol version 1 is not accepted; sign with version 2"),
        "{msg}"
    );
    let mut explicit_v1 = v1.clone();
    explicit_v1["version"] = json!(1);
    let (st, msg) = send(explicit_v1.to_string()).await;
    assert_eq!(
        (st, msg.contains("protocol version 1 is not accepted")),
        (400, true),
        "{msg}"
    );

    let mut r = volume(&user, node.id());
    r.version = 3;
    let (st, msg) = send(serde_json::to_string(&r).unwrap()).await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("protocol version 3 is not supported"), "{msg}");

    // Version 2 without a nonce.
    let mut no_nonce: serde_json::Value = serde_json::to_value(volume(&user, node.id())).unwrap();
    no_nonce.as_object_mut().unwrap().remove("nonce");
    let (st, msg) = send(no_nonce.to_string()).await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("nonce: missing"), "{msg}");

    // Malformed nonces, each correctly signed.
    for nonce in [
        "00112233445566778899AABBCCDDEEFF", // upper case
        "0011223344556677",                 // too short
        "zz112233445566778899aabbccddeeff", // not hex
        &"ab".repeat(33),                   // too long
    ] {
        let mut r = volume(&user, node.id());
        r.nonce = nonce.to_string();
        user.sign_reservation(&mut r);
        r.verify().unwrap();
        let (st, msg) = send(serde_json::to_string(&r).unwrap()).await;
        assert_eq!(st, 400, "{nonce}: {msg}");
        assert!(
            msg.contains("nonce: must be 32 to 64 lowercase hex characters"),
            "{msg}"
        );
    }
    assert!(poll(&c, &s.url, node.id(), 0).await.is_empty());
    s.stop().await;
}

/// `created` must be whole seconds, at most 5 minutes ahead, and the
/// reservation not expired; `duration` must be positive.
async fn expired_future_and_fractional_reservations_are_refused(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());
    let send =
        |r: Reservation| post_body(&c, &s.url, node.id(), serde_json::to_string(&r).unwrap());
    let hour = 3_600_000_000_000i64;

    let expired = signed(
        &user,
        node.id(),
        "volume",
        VOLUME,
        Utc::now() - chrono::Duration::hours(2),
        3600,
    );
    let (st, msg) = send(expired).await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("expired: the reservation ended at"), "{msg}");

    let future = signed(
        &user,
        node.id(),
        "volume",
        VOLUME,
        Utc::now() + chrono::Duration::minutes(10),
        3600,
    );
    let (st, msg) = send(future).await;
    assert_eq!(st, 400, "{msg}");
    assert!(
        msg.contains("in the future; at most 300s is accepted (check the clock)"),
        "{msg}"
    );
    // Four minutes ahead is within the allowance.
    let soon = signed(
        &user,
        node.id(),
        "volume",
        VOLUME,
        Utc::now() + chrono::Duration::minutes(4),
        3600,
    );
    assert_eq!(send(soon).await.0, 201);

    // The signature covers whole seconds only: a fraction is refused even
    // though the signature verifies.
    let fraction = Utc::now().trunc_subsecs(0) + chrono::Duration::milliseconds(500);
    let r = signed_exact(&user, node.id(), "volume", VOLUME, fraction, hour);
    r.verify().unwrap();
    let (st, msg) = send(r).await;
    assert_eq!(st, 400, "{msg}");
    assert!(msg.contains("created: must be whole seconds"), "{msg}");

    let r = signed_exact(
        &user,
        node.id(),
        "volume",
        VOLUME,
        Utc::now().trunc_subsecs(0),
        0,
    );
    let (st, msg) = send(r).await;
    assert_eq!(
        (st, msg.contains("duration: must be > 0")),
        (400, true),
        "{msg}"
    );
    let mut r = volume(&user, node.id());
    r.created = None;
    user.sign_reservation(&mut r);
    let (st, msg) = send(r).await;
    assert_eq!((st, msg.contains("created: not set")), (400, true), "{msg}");

    assert_eq!(ids(&poll(&c, &s.url, node.id(), 0).await), ["1-1"]);
    s.stop().await;
}

async fn data_larger_than_64_kib_is_refused(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());
    // A JSON string of exactly 64 KiB (quotes included): accepted.
    let at_limit = format!("\"{}\"", "x".repeat(explorer::MAX_DATA - 2));
    let r = signed(&user, node.id(), "volume", &at_limit, Utc::now(), 60);
    assert_eq!(post(&c, &s.url, &r).await, "1-1");
    // One byte more: refused, the message names the limit.
    let over = format!("\"{}\"", "x".repeat(explorer::MAX_DATA - 1));
    let r = signed(&user, node.id(), "volume", &over, Utc::now(), 60);
    let (st, msg) = post_body(&c, &s.url, node.id(), serde_json::to_string(&r).unwrap()).await;
    assert_eq!(st, 400, "{msg}");
    assert!(
        msg.contains("data: 65537 bytes is larger than the limit of 65536 bytes (64 KiB)"),
        "{msg}"
    );
    assert_eq!(poll(&c, &s.url, node.id(), 0).await.len(), 1);
    s.stop().await;
}

async fn bodies_over_the_limit_are_413_on_every_route(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());
    let r = post_as(&c, &s.url, &volume(&user, node.id())).await;
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(2 << 20));
    for req in [
        c.post(format!("{}/reservations/{}", s.url, node.id())),
        c.put(format!("{}/reservations/{}", s.url, r.id)),
        c.put(format!("{}/reservations/{}/deleted", s.url, r.id)),
        c.delete(format!("{}/reservations/{}", s.url, r.id)),
        c.post(format!("{}/nodes", s.url)),
        c.post(format!("{}/nodes/{}/uptime", s.url, node.id())),
    ] {
        let (st, msg) = send(req.body(big.clone())).await;
        assert_eq!(st, 413, "{msg}");
        assert!(
            msg.contains("request body is larger than the 1048576 byte limit"),
            "{msg}"
        );
    }
    let v = view(&c, &s.url, &r.id).await;
    assert!(v.result.is_none() && !v.to_delete && !v.deleted);
    s.stop().await;
}

async fn a_reservation_posted_under_another_node_is_refused(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
    let c = client();
    let (user, node, other) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let r = volume(&user, node.id());
    let (st, msg) = post_body(&c, &s.url, other.id(), serde_json::to_string(&r).unwrap()).await;
    assert_eq!(st, 400);
    assert!(msg.contains("does not match"), "{msg}");
    assert!(poll(&c, &s.url, other.id(), 0).await.is_empty());
    s.stop().await;
}

async fn the_same_signed_reservation_posted_twice_is_a_conflict(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());
    let r = volume(&user, node.id());
    let body = serde_json::to_string(&r).unwrap();
    assert_eq!(post(&c, &s.url, &r).await, "1-1");
    let resp = c
        .post(format!("{}/reservations/{}", s.url, node.id()))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    assert_eq!(resp.headers()["location"], "/reservations/1-1");
    let msg = resp.text().await.unwrap();
    assert!(
        msg.contains("already stored as 1-1") && msg.contains("fresh nonce"),
        "{msg}"
    );
    // With another id, or another posted deletion state: the same
    // signature, still a conflict.
    let mut v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["id"] = json!("77-1");
    let (st, msg) = post_body(&c, &s.url, node.id(), v.to_string()).await;
    assert_eq!(
        (st, msg.contains("already stored as 1-1")),
        (409, true),
        "{msg}"
    );
    // The same content with a fresh nonce is another reservation.
    let mut again = r.clone();
    again.nonce.clear();
    user.sign_reservation(&mut again);
    assert_ne!(again.nonce, r.nonce);
    assert_eq!(post(&c, &s.url, &again).await, "2-1");
    assert_eq!(ids(&poll(&c, &s.url, node.id(), 0).await), ["1-1", "2-1"]);

    // Still a conflict after a restart, and the counter was not burnt.
    s.stop().await;
    let s = store.start(Duration::from_secs(2)).await;
    let (st, _) = post_body(&c, &s.url, node.id(), body).await;
    assert_eq!(st, 409);
    assert_eq!(post(&c, &s.url, &volume(&user, node.id())).await, "3-1");
    s.stop().await;
}

async fn concurrent_posts_of_one_signed_reservation_store_it_once(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
    let (user, node) = (Identity::generate(), Identity::generate());
    let body = serde_json::to_string(&volume(&user, node.id())).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (url, node, body) = (s.url.clone(), node.id().to_string(), body.clone());
        tasks.push(tokio::spawn(async move {
            post_body(&client(), &url, &node, body).await
        }));
    }
    let answers: Vec<(u16, String)> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let created = answers.iter().filter(|(st, _)| *st == 201).count();
    let conflicts = answers.iter().filter(|(st, _)| *st == 409).count();
    assert_eq!((created, conflicts), (1, 15), "{answers:?}");
    assert_eq!(poll(&client(), &s.url, node.id(), 0).await.len(), 1);
    s.stop().await;
}

async fn poll_answers_by_cursor_expiry_and_pending_deletion(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_millis(300)).await;
    let c = client();
    let (user, a, b) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let r1 = post_as(&c, &s.url, &volume(&user, a.id())).await;
    let short = expiring_in(&user, a.id(), 3);
    let r2 = post_as(&c, &s.url, &short).await;
    let r3 = post_as(&c, &s.url, &volume(&user, a.id())).await;
    assert_eq!(post(&c, &s.url, &volume(&user, b.id())).await, "4-1");
    assert_eq!(
        (r1.id.as_str(), r2.id.as_str(), r3.id.as_str()),
        ("1-1", "2-1", "3-1")
    );
    assert_eq!(
        ids(&poll(&c, &s.url, a.id(), 1).await),
        ["1-1", "2-1", "3-1"]
    );
    until_expired(&short).await;

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
    for r in [&r1, &r2] {
        let (st, msg) = delete(&c, &s.url, &user, r).await;
        assert_eq!(st, 200, "{msg}");
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

    let (st, msg) = confirm_deleted(&c, &s.url, "1-1", &a.sign_deleted("1-1", &r1.signature)).await;
    assert_eq!(st, 200, "{msg}");
    assert!(view(&c, &s.url, "1-1").await.deleted);
    assert_eq!(ids(&poll(&c, &s.url, a.id(), 3).await), ["2-1", "3-1"]);
    // Confirmed deleted: no longer sent from a cursor, even in range.
    assert_eq!(ids(&poll(&c, &s.url, a.id(), 1).await), ["2-1", "3-1"]);
    // all=true (and a bare from=0) answers everything, expired and
    // confirmed-deleted ones included.
    assert_eq!(
        ids(&poll(&c, &s.url, a.id(), 0).await),
        ["1-1", "2-1", "3-1"]
    );
    assert_eq!(
        ids(&poll_q(&c, &s.url, a.id(), "from=1&all=true").await),
        ["1-1", "2-1", "3-1"]
    );
    assert_eq!(
        ids(&poll_q(&c, &s.url, a.id(), "from=2&all=true").await),
        ["2-1", "3-1"]
    );
    // from=0 with all=false is an ordinary poll.
    assert_eq!(
        ids(&poll_q(&c, &s.url, a.id(), "from=0&all=false").await),
        ["2-1", "3-1"]
    );
    let (st, _) = confirm_deleted(&c, &s.url, "77-1", &a.sign_deleted("77-1", &r1.signature)).await;
    assert_eq!(st, 404);

    // Everything survives a restart; the counter goes on.
    s.stop().await;
    let s = store.start(Duration::from_millis(300)).await;
    assert_eq!(
        ids(&poll(&c, &s.url, a.id(), 0).await),
        ["1-1", "2-1", "3-1"]
    );
    assert_eq!(ids(&poll(&c, &s.url, a.id(), 3).await), ["2-1", "3-1"]);
    assert_eq!(post(&c, &s.url, &volume(&user, b.id())).await, "5-1");
    s.stop().await;
}

async fn poll_pages_with_limit(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_millis(300)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());
    let mut posted = Vec::new();
    for _ in 0..5 {
        posted.push(post_as(&c, &s.url, &volume(&user, node.id())).await);
    }
    // Another node's reservations are never counted in.
    post(&c, &s.url, &volume(&user, Identity::generate().id())).await;

    // Ordinary poll: 2, 2, 1, each from the last number + 1.
    let mut from = 1;
    let mut pages = Vec::new();
    loop {
        let page = poll_q(&c, &s.url, node.id(), &format!("from={from}&limit=2")).await;
        let numbers: Vec<u64> = page.iter().map(|r| r.number().unwrap()).collect();
        pages.push(numbers.clone());
        if page.len() < 2 {
            break;
        }
        from = numbers.last().unwrap() + 1;
    }
    assert_eq!(pages, [vec![1, 2], vec![3, 4], vec![5]]);

    // A resync pages the same way with all=true.
    assert_eq!(
        ids(&poll_q(&c, &s.url, node.id(), "from=0&all=true&limit=2").await),
        ["1-1", "2-1"]
    );
    assert_eq!(
        ids(&poll_q(&c, &s.url, node.id(), "from=3&all=true&limit=2").await),
        ["3-1", "4-1"]
    );
    assert_eq!(
        ids(&poll_q(&c, &s.url, node.id(), "from=5&all=true&limit=2").await),
        ["5-1"]
    );
    // A bare from=0 with a limit is still the resync.
    assert_eq!(
        ids(&poll_q(&c, &s.url, node.id(), "from=0&limit=3").await),
        ["1-1", "2-1", "3-1"]
    );

    // A pending deletion below the cursor comes first, in number order,
    // and counts in the limit.
    let (st, msg) = delete(&c, &s.url, &user, &posted[1]).await;
    assert_eq!(st, 200, "{msg}");
    assert_eq!(
        ids(&poll_q(&c, &s.url, node.id(), "from=4&limit=2").await),
        ["2-1", "4-1"]
    );
    assert_eq!(
        ids(&poll_q(&c, &s.url, node.id(), "from=1&limit=2").await),
        ["1-1", "2-1"]
    );
    assert_eq!(
        ids(&poll_q(&c, &s.url, node.id(), "from=3&limit=1000").await),
        ["2-1", "3-1", "4-1", "5-1"]
    );

    // Bad queries say what is wrong.
    for (q, want) in [
        (
            "from=1&limit=0",
            "limit must be a number from 1 to 1000, got \"0\"",
        ),
        (
            "from=1&limit=1001",
            "limit must be a number from 1 to 1000, got \"1001\"",
        ),
        ("from=1&limit=ten", "limit must be a number from 1 to 1000"),
        ("from=1&limit=-1", "limit must be a number from 1 to 1000"),
        ("from=x", "from must be a reservation number"),
        ("from=-1", "from must be a reservation number"),
        ("from=1&all=yes", "all must be true or false"),
        ("from=1&from=2", "from is given twice"),
    ] {
        let (st, msg) = poll_query(&c, &s.url, node.id(), q).await;
        assert_eq!(st, 400, "{q}: {msg}");
        assert!(msg.contains(want), "{q}: {msg}");
    }
    // Only a node id can have work: anything else is refused before it
    // reaches the store or the tables of held polls.
    for bogus in ["a%00", "node-a", &"x".repeat(5000)] {
        let (st, msg) = poll_query(&c, &s.url, bogus, "from=1").await;
        assert_eq!((st, msg.contains("node_id")), (400, true), "{msg}");
    }
    s.stop().await;
}

async fn long_poll_holds_then_wakes_on_post_and_on_delete(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
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
    let mine = post_as(&c, &s.url, &volume(&user, node.id())).await;
    assert_eq!(mine.id, "2-1");
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
    let (st, msg) = delete(&c, &s.url, &user, &mine).await;
    assert_eq!(st, 200, "{msg}");
    let (list, took) = waiting.await.unwrap();
    assert_eq!(ids(&list), ["2-1"]);
    assert!(list[0].to_delete);
    assert!(took < Duration::from_millis(1500), "{took:?}");
    s.stop().await;
}

/// One poll more than `max_polls_per_node` held for a node is answered
/// 429 at once; other nodes, and polls with something to answer, are not
/// affected; the slots are freed however a held poll ends.
async fn too_many_held_polls_for_one_node_are_refused(b: Backend) {
    let store = b.store().await;
    let cfg = ServerConfig {
        long_poll: Duration::from_secs(3),
        ..store.config()
    };
    let max = cfg.max_polls_per_node;
    assert_eq!(max, 4, "the default");
    let s = start_with(cfg).await;
    let c = client();
    let (user, node, other) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    assert_eq!(post(&c, &s.url, &volume(&user, node.id())).await, "1-1");
    let hold = |from: u64| {
        let (c, url, n) = (c.clone(), s.url.clone(), node.id().to_string());
        tokio::spawn(async move {
            let t = Instant::now();
            let r = poll_query(&c, &url, &n, &format!("from={from}")).await;
            (r, t.elapsed())
        })
    };
    let held: Vec<_> = (0..max).map(|_| hold(2)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(held.iter().all(|h| !h.is_finished()));

    // One more for the same node: 429 at once, saying why.
    let t = Instant::now();
    let (st, msg) = poll_query(&c, &s.url, node.id(), "from=2").await;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(st, 429, "{msg}");
    assert!(
        msg.contains(&format!("too many concurrent polls for node {}", node.id()))
            && msg.contains("at most 4"),
        "{msg}"
    );
    // A poll with something to answer is not held, so not refused.
    assert_eq!(ids(&poll(&c, &s.url, node.id(), 1).await), ["1-1"]);
    // Another node's polls are held as usual (and answered when woken).
    let theirs = tokio::spawn({
        let (c, url, n) = (c.clone(), s.url.clone(), other.id().to_string());
        async move { poll_query(&c, &url, &n, "from=1").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!theirs.is_finished());
    assert_eq!(post(&c, &s.url, &volume(&user, other.id())).await, "2-1");
    let (st, text) = theirs.await.unwrap();
    assert_eq!(st, 200, "{text}");
    assert!(text.contains("\"2-1\""), "{text}");

    // The held ones end normally (empty after long_poll)...
    for h in held {
        let ((st, text), took) = h.await.unwrap();
        assert_eq!((st, text.as_str()), (200, "[]"));
        assert!(took >= Duration::from_millis(2500), "{took:?}");
    }
    // ...and free their slots: max polls are held again.
    let held: Vec<_> = (0..max).map(|_| hold(3)).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(held.iter().all(|h| !h.is_finished()));
    // Woken polls free their slots too.
    assert_eq!(post(&c, &s.url, &volume(&user, node.id())).await, "3-1");
    for h in held {
        let ((st, text), took) = h.await.unwrap();
        assert_eq!(st, 200);
        assert!(text.contains("\"3-1\""), "{text}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    // Clients that give up (the connection closes while held) free their
    // slots as well.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    for _ in 0..max {
        let r = impatient
            .get(format!("{}/reservations/{}/poll?from=4", s.url, node.id()))
            .send()
            .await;
        assert!(r.unwrap_err().is_timeout());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let (st, msg) = poll_query(&c, &s.url, node.id(), "from=4").await;
    assert_eq!((st, msg.as_str()), (200, "[]"));
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    s.stop().await;
}

async fn shutdown_answers_held_polls_at_once(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(30)).await;
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

async fn results_must_be_signed_by_the_node_for_this_reservation_and_are_all_kept(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());
    let r = post_as(&c, &s.url, &volume(&user, node.id())).await;
    let other = post_as(&c, &s.url, &volume(&user, node.id())).await;
    let id = r.id.clone();
    let put = |id: &str, res: &WorkloadResult| {
        send(
            c.put(format!("{}/reservations/{id}", s.url))
                .body(serde_json::to_string(res).unwrap()),
        )
    };
    let results = || {
        let (c, url) = (c.clone(), format!("{}/reservations/{id}/results", s.url));
        async move {
            let resp = c.get(url).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Vec<WorkloadResult>>().await.unwrap()
        }
    };

    // Signed by someone else: refused, naming the node.
    let forged = Identity::generate()
        .ok_result(&r, &json!({"volume_id": id}))
        .unwrap();
    let (st, msg) = put(&id, &forged).await;
    assert_eq!(st, 400);
    assert!(
        msg.contains("result refused")
            && msg.contains("does not verify")
            && msg.contains(node.id()),
        "{msg}"
    );
    // Tampered after signing.
    let mut tampered = node.error_result(&r, "disk full");
    tampered.error = "all good".into();
    assert_eq!(put(&id, &tampered).await.0, 400);
    // Signed by the node for another reservation's signature, relabelled
    // with this id: refused (results are bound to the reservation).
    let moved = node.sign_result(
        "volume",
        &id,
        &other.signature,
        ResultState::Ok,
        String::new(),
        raw(r#"{"volume_id":"1-1"}"#),
    );
    let (st, msg) = put(&id, &moved).await;
    assert_eq!(st, 400, "{msg}");
    assert!(
        msg.contains("does not verify") && msg.contains("with the signature of reservation 1-1"),
        "{msg}"
    );
    // For another id.
    let for_other = node.error_result(&other, "x");
    let (st, msg) = put(&id, &for_other).await;
    assert_eq!((st, msg.contains("does not match")), (400, true), "{msg}");
    let mut unknown = r.clone();
    unknown.id = "9-1".into();
    assert_eq!(put("9-1", &node.error_result(&unknown, "x")).await.0, 404);
    let (st, msg) = send(
        c.put(format!("{}/reservations/{id}", s.url))
            .body("{not json"),
    )
    .await;
    assert_eq!(
        (st, msg.contains("invalid result JSON")),
        (400, true),
        "{msg}"
    );
    assert!(results().await.is_empty());
    assert!(view(&c, &s.url, &id).await.result.is_none());

    // A good one, with its data bytes kept as signed.
    let good = node.sign_result(
        "volume",
        &id,
        &r.signature,
        ResultState::Ok,
        String::new(),
        raw(r#"{ "volume_id" : "1-1" }"#),
    );
    let (st, msg) = put(&id, &good).await;
    assert_eq!(st, 200, "{msg}");
    let (_, text) = send(c.get(format!("{}/reservations/{id}", s.url))).await;
    assert!(text.contains(r#""data":{ "volume_id" : "1-1" }"#), "{text}");
    let v: ReservationView = serde_json::from_str(&text).unwrap();
    let got = v.result.unwrap();
    got.verify(node.id(), &v.reservation.signature).unwrap();
    assert!(got.verify(node.id(), &other.signature).is_err());
    assert_eq!(got.signature, good.signature);
    assert_eq!(results().await.len(), 1);
    // The very same result again (a node retrying) is not kept twice.
    assert_eq!(put(&id, &good).await.0, 200);
    assert_eq!(results().await.len(), 1);

    // A second one is kept too; GET shows the latest.
    let err = node.error_result(&r, "crashed");
    assert_eq!(put(&id, &err).await.0, 200);
    let all = results().await;
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].state, all[1].state),
        (ResultState::Ok, ResultState::Error)
    );
    assert_eq!(view(&c, &s.url, &id).await.result.unwrap().error, "crashed");
    let (st, _) = send(c.get(format!("{}/reservations/8-1/results", s.url))).await;
    assert_eq!(st, 404);
    s.stop().await;
}

async fn deletion_needs_the_users_signature_over_this_reservation(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());
    let r = post_as(&c, &s.url, &volume(&user, node.id())).await;
    let other = post_as(&c, &s.url, &volume(&user, node.id())).await;
    let id = r.id.clone();
    let del =
        |id: &str, body: String| send(c.delete(format!("{}/reservations/{id}", s.url)).body(body));

    // Signed by another key: refused, saying what to sign and with whose key.
    let forged = Identity::generate().sign_delete(&r.signature);
    let (st, msg) = del(&id, json!({"delete_signature": forged}).to_string()).await;
    assert_eq!(st, 400);
    assert!(
        msg.contains("deletion refused: delete_signature")
            && msg.contains("sign frame(\"delete-v2\", <the reservation's signature>)")
            && msg.contains(user.id())
            && msg.contains(&r.signature),
        "{msg}"
    );
    // The user's deletion of another reservation: refused here.
    let for_other = user.sign_delete(&other.signature);
    let (st, msg) = del(&id, json!({"delete_signature": for_other}).to_string()).await;
    assert_eq!((st, msg.contains("does not verify")), (400, true), "{msg}");
    // The version 1 way (over "delete:<id>"): refused.
    let v1 = user.sign(format!("delete:{id}").as_bytes());
    assert_eq!(
        del(&id, json!({"delete_signature": v1}).to_string())
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
    let v = view(&c, &s.url, &id).await;
    assert!(!v.to_delete && v.delete_signature.is_none());
    assert!(!view(&c, &s.url, &other.id).await.to_delete);

    let good = user.sign_delete(&r.signature);
    assert_eq!(
        del("5-1", json!({"delete_signature": good}).to_string())
            .await
            .0,
        404
    );
    let (st, msg) = del(&id, json!({"delete_signature": good}).to_string()).await;
    assert_eq!(st, 200, "{msg}");
    let v = view(&c, &s.url, &id).await;
    assert!(v.to_delete && !v.deleted);
    assert_eq!(v.delete_signature.as_deref(), Some(good.as_str()));
    v.reservation.verify_delete().unwrap();
    v.reservation.verify().unwrap();
    assert!(!view(&c, &s.url, &other.id).await.to_delete);
    s.stop().await;
}

/// `PUT /reservations/{id}/deleted` needs the node's signature over the id
/// and the reservation's signature; anything else is 400 and changes
/// nothing (the deletion is still handed out as pending).
async fn deletion_confirmations_must_be_signed_by_the_node(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_millis(300)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());
    let r = post_as(&c, &s.url, &volume(&user, node.id())).await;
    let other = post_as(&c, &s.url, &volume(&user, node.id())).await;
    let (st, msg) = delete(&c, &s.url, &user, &r).await;
    assert_eq!(st, 200, "{msg}");
    let pending = || poll(&c, &s.url, node.id(), 3);
    assert_eq!(ids(&pending().await), ["1-1"]);

    let url = format!("{}/reservations/{}/deleted", s.url, r.id);
    // Unsigned: no body, an empty object, an empty signature.
    let (st, msg) = send(c.put(&url)).await;
    assert_eq!(
        (st, msg.contains("invalid deletion confirmation JSON")),
        (400, true),
        "{msg}"
    );
    let (st, msg) = send(c.put(&url).json(&json!({}))).await;
    assert_eq!(
        (st, msg.contains("missing field `signature`")),
        (400, true),
        "{msg}"
    );
    let (st, msg) = confirm_deleted(&c, &s.url, &r.id, "").await;
    assert_eq!(st, 400, "{msg}");
    assert!(
        msg.contains("deletion confirmation refused") && msg.contains("missing"),
        "{msg}"
    );
    // Signed by the wrong key (the user's, or anyone's).
    for wrong in [&user, &Identity::generate()] {
        let (st, msg) =
            confirm_deleted(&c, &s.url, &r.id, &wrong.sign_deleted(&r.id, &r.signature)).await;
        assert_eq!(st, 400, "{msg}");
        assert!(
            msg.contains("does not verify")
                && msg.contains(&format!("it must be signed by node {}", node.id())),
            "{msg}"
        );
    }
    // Signed by the node, but for another id or another reservation.
    let (st, _) = confirm_deleted(
        &c,
        &s.url,
        &r.id,
        &node.sign_deleted(&other.id, &r.signature),
    )
    .await;
    assert_eq!(st, 400);
    let (st, _) = confirm_deleted(
        &c,
        &s.url,
        &r.id,
        &node.sign_deleted(&r.id, &other.signature),
    )
    .await;
    assert_eq!(st, 400);
    // Nothing changed.
    assert!(!view(&c, &s.url, &r.id).await.deleted);
    assert_eq!(ids(&pending().await), ["1-1"]);

    // Unknown id: 404.
    let (st, msg) =
        confirm_deleted(&c, &s.url, "9-1", &node.sign_deleted("9-1", &r.signature)).await;
    assert_eq!((st, msg.contains("not found")), (404, true), "{msg}");

    // The node's own confirmation: 200, and the deletion is done.
    let (st, msg) =
        confirm_deleted(&c, &s.url, &r.id, &node.sign_deleted(&r.id, &r.signature)).await;
    assert_eq!(st, 200, "{msg}");
    assert!(view(&c, &s.url, &r.id).await.deleted);
    assert!(pending().await.is_empty());
    assert!(!view(&c, &s.url, &other.id).await.deleted);
    s.stop().await;
}

async fn nodes_register_heartbeat_and_list(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
    let c = client();
    let node = Identity::generate();
    let (_, text) = send(c.get(format!("{}/nodes", s.url))).await;
    assert_eq!(text, "[]");

    // Uptime before registering: 404, so the agent registers.
    let (st, msg) = heartbeat(&c, &s.url, node.id(), &uptime(&node, 5, cap(0, 0, 0, 0))).await;
    assert_eq!((st, msg.contains("POST /nodes")), (404, true), "{msg}");

    // Shapes.
    let mut bad_id = serde_json::to_value(registration(&node, "http://10.0.0.1:1")).unwrap();
    bad_id["node_id"] = json!("node-a");
    let (st, msg) = register(&c, &s.url, &bad_id).await;
    assert_eq!((st, msg.contains("node_id")), (400, true), "{msg}");
    // The url is shown in lists, pages and logs: bounded, one line.
    for url in [
        "http://a\ninfo fake log line".to_string(),
        format!("http://{}", "a".repeat(3000)),
    ] {
        let (st, msg) = register(&c, &s.url, &registration(&node, &url)).await;
        assert_eq!((st, msg.contains("url: at most")), (400, true), "{msg}");
    }
    let mut no_cap = serde_json::to_value(registration(&node, "http://10.0.0.1:1")).unwrap();
    no_cap.as_object_mut().unwrap().remove("capacity");
    let (st, msg) = register(&c, &s.url, &no_cap).await;
    assert_eq!(
        (st, msg.contains("missing field `capacity`")),
        (400, true),
        "{msg}"
    );
    let neg = signed_registration(
        &node,
        "http://u",
        r#"{"cru":-1,"mru":1,"sru":1,"hru":1}"#,
        now_ms(),
    );
    let (st, msg) = register(&c, &s.url, &neg).await;
    assert_eq!((st, msg.contains("capacity.cru")), (400, true), "{msg}");
    // Finite but huge: two such nodes would make the fleet's sums infinite
    // (written as null, unreadable back).
    let huge = signed_registration(
        &node,
        "http://u",
        r#"{"cru":1,"mru":1e308,"sru":1,"hru":1}"#,
        now_ms(),
    );
    let (st, msg) = register(&c, &s.url, &huge).await;
    assert_eq!((st, msg.contains("capacity.mru")), (400, true), "{msg}");
    let not_obj = signed_registration(&node, "http://u", r#""lots""#, now_ms());
    let (st, msg) = register(&c, &s.url, &not_obj).await;
    assert_eq!(
        (st, msg.contains("capacity: not a capacity object")),
        (400, true),
        "{msg}"
    );
    let no_url = Registration::signed(&node, " ", &cap(1, 1, 1, 1), now_ms());
    let (st, msg) = register(&c, &s.url, &no_url).await;
    assert_eq!((st, msg.contains("url:")), (400, true), "{msg}");

    // A fractional capacity, signed as sent.
    let first = signed_registration(
        &node,
        "http://10.0.0.1:8080",
        r#"{"cru": 8, "mru": 15.5, "sru": 100, "hru": 0}"#,
        now_ms(),
    );
    let (st, msg) = register(&c, &s.url, &first).await;
    assert_eq!(st, 201, "{msg}");
    let (_, text) = send(c.get(format!("{}/nodes", s.url))).await;
    // Whole numbers stay integers on the wire.
    assert!(
        text.contains(r#""capacity":{"cru":8,"mru":15.5,"sru":100,"hru":0}"#),
        "{text}"
    );
    let list = nodes(&c, &s.url).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].url, "http://10.0.0.1:8080");
    assert!(list[0].last_heartbeat.is_none());
    assert_eq!(list[0].used, explorer::Capacity::default());

    let (st, msg) = heartbeat(&c, &s.url, node.id(), &uptime(&node, 42, cap(2, 4, 10, 0))).await;
    assert_eq!(st, 200, "{msg}");
    let list = nodes(&c, &s.url).await;
    let hb = list[0].last_heartbeat.expect("heartbeat recorded");
    assert!((Utc::now() - hb).num_seconds().abs() <= 5);
    assert_eq!((list[0].used.cru, list[0].used.sru), (2.0, 10.0));
    let (st, msg) = send(
        c.post(format!("{}/nodes/{}/uptime", s.url, node.id()))
            .json(&json!({"up": 1})),
    )
    .await;
    assert_eq!(
        (st, msg.contains("invalid uptime JSON")),
        (400, true),
        "{msg}"
    );

    // Re-registration replaces url and capacity, keeps the heartbeat;
    // unknown fields are accepted (a newer agent still registers).
    // (Edited as text: re-serializing through a `Value` would reorder the
    // signed capacity object's keys.)
    let again = serde_json::to_string(&registration(&node, "http://10.0.0.9:8080"))
        .unwrap()
        .replacen('{', r#"{"version":"x","#, 1);
    let (st, msg) = send(
        c.post(format!("{}/nodes", s.url))
            .header("content-type", "application/json")
            .body(again),
    )
    .await;
    assert_eq!(st, 201, "{msg}");
    let list = nodes(&c, &s.url).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].url, "http://10.0.0.9:8080");
    assert_eq!(list[0].capacity.hru, 500.0);
    assert!(list[0].last_heartbeat.is_some());
    assert_eq!(list[0].used.cru, 2.0);

    // Kept across a restart, with the timestamp counter: the first
    // registration replayed is still refused.
    s.stop().await;
    let s = store.start(Duration::from_secs(2)).await;
    let list = nodes(&c, &s.url).await;
    assert_eq!(list[0].url, "http://10.0.0.9:8080");
    let (st, msg) = register(&c, &s.url, &first).await;
    assert_eq!(
        (st, msg.contains("not newer than the last accepted")),
        (400, true),
        "{msg}"
    );
    s.stop().await;
}

/// A registration with a raw capacity object, signed by `node`.
fn signed_registration(node: &Identity, url: &str, capacity: &str, timestamp: i64) -> Registration {
    let mut r = Registration {
        node_id: node.id().to_string(),
        url: url.to_string(),
        capacity: raw(capacity),
        timestamp,
        signature: String::new(),
    };
    r.signature = node.sign(&r.signing_message());
    r
}

/// Forged node messages (another key, a captured one replayed, a stale
/// timestamp) are 400 and change nothing.
async fn forged_or_replayed_node_messages_change_nothing(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
    let c = client();
    let (node, mallory) = (Identity::generate(), Identity::generate());
    let genuine = registration(&node, "http://10.0.0.1:9100");
    assert_eq!(register(&c, &s.url, &genuine).await.0, 201);
    let up = uptime(&node, 10, cap(1, 2, 3, 0));
    assert_eq!(heartbeat(&c, &s.url, node.id(), &up).await.0, 200);
    let unchanged = |list: Vec<explorer::NodeInfo>| {
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].url, "http://10.0.0.1:9100");
        assert_eq!(list[0].capacity.cru, 8.0);
        assert_eq!((list[0].used.cru, list[0].used.sru), (1.0, 3.0));
    };
    let before = nodes(&c, &s.url).await;
    unchanged(before.clone());

    // Registration: signed by another key for this node id.
    let mut forged =
        Registration::signed(&mallory, "http://evil:1", &cap(99, 99, 99, 99), now_ms());
    forged.node_id = node.id().to_string();
    let (st, msg) = register(&c, &s.url, &forged).await;
    assert_eq!(st, 400, "{msg}");
    assert!(
        msg.contains("node registration refused: node registration signature")
            && msg.contains("does not verify"),
        "{msg}"
    );
    // A genuine one with its url changed in transit.
    let mut moved = registration(&node, "http://10.0.0.1:9100");
    moved.url = "http://evil:1".into();
    let (st, msg) = register(&c, &s.url, &moved).await;
    assert_eq!((st, msg.contains("does not verify")), (400, true), "{msg}");
    // The captured body replayed (same timestamp).
    let (st, msg) = register(&c, &s.url, &genuine).await;
    assert_eq!(st, 400, "{msg}");
    assert!(
        msg.contains("not newer than the last accepted") && msg.contains("replayed"),
        "{msg}"
    );
    // Correctly signed, but 10 minutes old, or 10 minutes ahead.
    for skew in [-10, 10] {
        let ts = now_ms() + skew * 60_000;
        let stale = Registration::signed(&node, "http://evil:1", &cap(1, 1, 1, 1), ts);
        let (st, msg) = register(&c, &s.url, &stale).await;
        assert_eq!(st, 400, "{msg}");
        assert!(
            msg.contains("away from this explorer's clock") && msg.contains("at most 300s"),
            "{msg}"
        );
    }
    unchanged(nodes(&c, &s.url).await);

    // Uptime: signed by another key, tampered, replayed, stale.
    let forged = uptime(&mallory, 1, cap(50, 50, 50, 50));
    let (st, msg) = heartbeat(&c, &s.url, node.id(), &forged).await;
    assert_eq!(st, 400, "{msg}");
    assert!(
        msg.contains("uptime refused: uptime signature") && msg.contains("does not verify"),
        "{msg}"
    );
    let mut tampered = uptime(&node, 11, cap(1, 2, 3, 0));
    tampered.used = raw(r#"{"cru":50,"mru":50,"sru":50,"hru":50}"#);
    assert_eq!(heartbeat(&c, &s.url, node.id(), &tampered).await.0, 400);
    let (st, msg) = heartbeat(&c, &s.url, node.id(), &up).await;
    assert_eq!(
        (st, msg.contains("not newer than the last accepted")),
        (400, true),
        "{msg}"
    );
    let old = Uptime::signed(&node, 12, &cap(50, 50, 50, 50), now_ms() - 600_000);
    let (st, msg) = heartbeat(&c, &s.url, node.id(), &old).await;
    assert_eq!(
        (st, msg.contains("away from this explorer's clock")),
        (400, true),
        "{msg}"
    );
    // Another node's genuine uptime posted under this node's path.
    let (st, _) = heartbeat(
        &c,
        &s.url,
        node.id(),
        &uptime(&mallory, 1, cap(50, 0, 0, 0)),
    )
    .await;
    assert_eq!(st, 400);
    let after = nodes(&c, &s.url).await;
    unchanged(after.clone());
    assert_eq!(after[0].last_heartbeat, before[0].last_heartbeat);

    // An uptime registered before the registration it follows is older:
    // refused, one counter for both.
    let earlier = Uptime::signed(&node, 13, &cap(0, 0, 0, 0), now_ms());
    assert_eq!(
        register(&c, &s.url, &registration(&node, "http://10.0.0.2:9100"))
            .await
            .0,
        201
    );
    let (st, msg) = heartbeat(&c, &s.url, node.id(), &earlier).await;
    assert_eq!((st, msg.contains("not newer")), (400, true), "{msg}");
    assert_eq!(
        heartbeat(&c, &s.url, node.id(), &uptime(&node, 14, cap(0, 0, 0, 0)))
            .await
            .0,
        200
    );
    assert_eq!(nodes(&c, &s.url).await[0].url, "http://10.0.0.2:9100");

    // The protocol's vector registration verifies but is from 2026-11-25.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../reservation/tests/vectors.json"
    );
    let vectors: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let body = vectors["node_registration"]["body"].as_str().unwrap();
    let reg: Registration = serde_json::from_str(body).unwrap();
    reg.verify().unwrap();
    let (st, msg) = send(c.post(format!("{}/nodes", s.url)).body(body.to_string())).await;
    assert_eq!(
        (st, msg.contains("away from this explorer's clock")),
        (400, true),
        "{msg}"
    );
    s.stop().await;
}

async fn unknown_routes_say_so(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
    let (st, msg) = send(client().get(format!("{}/reservation", s.url))).await;
    assert_eq!(st, 404);
    assert!(msg.contains("no route GET /reservation"), "{msg}");
    s.stop().await;
}

/// A deletion posted along with the reservation (`to_delete`, outside the
/// user's signature) is kept only when the user signed it; an unsigned one
/// would stay pending in every poll of the node for good.
async fn a_deletion_posted_with_the_reservation_must_be_signed(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
    let c = client();
    let (user, node) = (Identity::generate(), Identity::generate());
    assert_eq!(post(&c, &s.url, &volume(&user, node.id())).await, "1-1");
    let mut r = volume(&user, node.id());
    r.to_delete = true;
    r.delete_signature = Some(Identity::generate().sign_delete(&r.signature));
    let (st, msg) = post_body(&c, &s.url, node.id(), serde_json::to_string(&r).unwrap()).await;
    assert_eq!(st, 400, "{msg}");
    assert!(
        msg.contains("to_delete is set but delete_signature") && msg.contains(user.id()),
        "{msg}"
    );
    r.delete_signature = None;
    let (st, msg) = post_body(&c, &s.url, node.id(), serde_json::to_string(&r).unwrap()).await;
    assert_eq!((st, msg.contains("missing")), (400, true), "{msg}");
    let mut half = volume(&user, node.id());
    half.delete_signature = Some(user.sign_delete(&half.signature));
    let (st, msg) = post_body(&c, &s.url, node.id(), serde_json::to_string(&half).unwrap()).await;
    assert_eq!(
        (st, msg.contains("to_delete is false")),
        (400, true),
        "{msg}"
    );

    // Signed by the user: stored, and handed to the node as pending.
    r.delete_signature = Some(user.sign_delete(&r.signature));
    assert_eq!(post(&c, &s.url, &r).await, "2-1");
    let list = poll(&c, &s.url, node.id(), 3).await;
    assert_eq!(ids(&list), ["2-1"]);
    assert!(list[0].to_delete);
    list[0].verify().unwrap();
    list[0].verify_delete().unwrap();
    let (st, msg) =
        confirm_deleted(&c, &s.url, "2-1", &node.sign_deleted("2-1", &r.signature)).await;
    assert_eq!(st, 200, "{msg}");
    let t = Instant::now();
    assert!(poll(&c, &s.url, node.id(), 3).await.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(1900));
    s.stop().await;
}

/// Many users posting at once are all answered (sled's `flush_async`
/// used to hang when awaited concurrently).
async fn concurrent_posts_are_all_answered(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
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

/// `GET /health` answers 200 while the store answers; `GET /metrics`
/// counts requests by route and status, held polls and stored
/// reservations (and, with PostgreSQL, the pool's connections).
async fn health_and_metrics(b: Backend) {
    let store = b.store().await;
    let s = store.start(Duration::from_secs(2)).await;
    let c = client();
    let (st, text) = send(c.get(format!("{}/health", s.url))).await;
    assert_eq!((st, text.as_str()), (200, "ok\n"));
    let (user, node) = (Identity::generate(), Identity::generate());
    let r = volume(&user, node.id());
    assert_eq!(post(&c, &s.url, &r).await, "1-1");
    let (st, _) = post_body(&c, &s.url, node.id(), serde_json::to_string(&r).unwrap()).await;
    assert_eq!(st, 409);
    send(c.get(format!("{}/no/such/route", s.url))).await;
    let held = tokio::spawn({
        let (c, url, n) = (c.clone(), s.url.clone(), node.id().to_string());
        async move { poll(&c, &url, &n, 2).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (st, text) = send(c.get(format!("{}/metrics", s.url))).await;
    assert_eq!(st, 200, "{text}");
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(
        has(
            r#"explorer_http_requests_total{method="POST",route="/reservations/:key",status="201"} 1"#
        ),
        "{text}"
    );
    assert!(
        has(
            r#"explorer_http_requests_total{method="POST",route="/reservations/:key",status="409"} 1"#
        ),
        "{text}"
    );
    assert!(
        has(r#"explorer_http_requests_total{method="GET",route="unmatched",status="404"} 1"#),
        "{text}"
    );
    assert!(has("explorer_long_polls_open 1"), "{text}");
    assert!(has("explorer_reservations_stored_total 1"), "{text}");
    let pooled = text.contains("explorer_database_connections{state=\"open\"}");
    assert_eq!(pooled, b == Backend::Postgres, "{text}");
    assert!(held.await.unwrap().is_empty());
    let (_, text) = send(c.get(format!("{}/metrics", s.url))).await;
    assert!(
        text.lines().any(|l| l == "explorer_long_polls_open 0"),
        "{text}"
    );
    assert!(
        text.contains(r#"explorer_http_requests_total{method="GET",route="/reservations/:key/poll",status="200"} 1"#),
        "{text}"
    );
    s.stop().await;
}

/// PostgreSQL only: what replicas on one database must agree on.
mod replicas {
    use super::*;
    use futures_util::future::join_all;
    use futures_util::StreamExt;

    /// Two servers on one fresh database.
    async fn two() -> (common::Store, common::Server, common::Server) {
        let store = Backend::Postgres.store().await;
        let a = store.start(Duration::from_secs(5)).await;
        let b = store.start(Duration::from_secs(5)).await;
        (store, a, b)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poll_held_on_one_replica_wakes_on_a_post_to_the_other() {
        let (_store, a, b) = two().await;
        let c = client();
        let (user, node) = (Identity::generate(), Identity::generate());
        for round in 1..=3u64 {
            let waiting = tokio::spawn({
                let (c, url, n) = (c.clone(), b.url.clone(), node.id().to_string());
                async move {
                    let list = poll(&c, &url, &n, round).await;
                    (list, Instant::now())
                }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!waiting.is_finished(), "held on B");
            let t = Instant::now();
            let id = post(&c, &a.url, &volume(&user, node.id())).await;
            let (list, answered) = waiting.await.unwrap();
            assert_eq!(ids(&list), [id.as_str()]);
            let took = answered - t;
            assert!(took < Duration::from_secs(1), "woken in {took:?}");
        }
        // A deletion through B wakes a poll held on A.
        let r = post_as(&c, &a.url, &volume(&user, node.id())).await;
        let waiting = tokio::spawn({
            let (c, url, n) = (c.clone(), a.url.clone(), node.id().to_string());
            async move { poll(&c, &url, &n, 100).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        assert_eq!(delete(&c, &b.url, &user, &r).await.0, 200);
        let list = waiting.await.unwrap();
        assert_eq!(ids(&list), [r.id.as_str()]);
        assert!(list[0].to_delete);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        a.stop().await;
        b.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ids_are_unique_and_a_signature_is_stored_once_across_replicas() {
        let (_store, a, b) = two().await;
        let (user, node) = (Identity::generate(), Identity::generate());
        // The same signed reservation posted 8 times to each replica at
        // once: one 201, fifteen 409s naming the stored id.
        let body = serde_json::to_string(&volume(&user, node.id())).unwrap();
        let posts = (0..16).map(|i| {
            let url = if i % 2 == 0 {
                a.url.clone()
            } else {
                b.url.clone()
            };
            let (node, body) = (node.id().to_string(), body.clone());
            async move { post_body(&client(), &url, &node, body).await }
        });
        let answers = join_all(posts).await;
        let created: Vec<_> = answers.iter().filter(|(st, _)| *st == 201).collect();
        assert_eq!(created.len(), 1, "{answers:?}");
        assert_eq!(answers.iter().filter(|(st, _)| *st == 409).count(), 15);
        // Distinct reservations posted to both at once get distinct ids.
        let posts = (0..40).map(|i| {
            let url = if i % 2 == 0 {
                a.url.clone()
            } else {
                b.url.clone()
            };
            let r = volume(&Identity::generate(), node.id());
            async move { post(&client(), &url, &r).await }
        });
        let got: std::collections::HashSet<String> = join_all(posts).await.into_iter().collect();
        assert_eq!(got.len(), 40);
        let c = client();
        assert_eq!(poll(&c, &a.url, node.id(), 0).await.len(), 41);
        assert_eq!(
            serde_json::to_string(&poll(&c, &a.url, node.id(), 0).await).unwrap(),
            serde_json::to_string(&poll(&c, &b.url, node.id(), 0).await).unwrap(),
            "the same answer from both"
        );
        a.stop().await;
        b.stop().await;
    }

    /// Posts for one node racing on both replicas become visible in number
    /// order: a node walking its cursor over the answers misses none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_nodes_cursor_misses_nothing_posted_concurrently_to_both() {
        let (_store, a, b) = two().await;
        let node = Identity::generate();
        const N: usize = 80;
        let walker = tokio::spawn({
            let (url, n) = (b.url.clone(), node.id().to_string());
            async move {
                let c = client();
                let mut from = 1;
                let mut seen = Vec::new();
                let t = Instant::now();
                while seen.len() < N && t.elapsed() < Duration::from_secs(30) {
                    for r in poll(&c, &url, &n, from).await {
                        from = from.max(r.number().unwrap() + 1);
                        seen.push(r.id);
                    }
                }
                seen
            }
        });
        let posts = (0..N).map(|i| {
            let url = if i % 2 == 0 {
                a.url.clone()
            } else {
                b.url.clone()
            };
            let r = volume(&Identity::generate(), node.id());
            async move { post(&client(), &url, &r).await }
        });
        let mut posted: Vec<String> = join_all(posts).await;
        let mut seen = walker.await.unwrap();
        posted.sort();
        seen.sort();
        assert_eq!(seen, posted, "every reservation reached the node once");
        a.stop().await;
        b.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn node_timestamps_increase_across_replicas() {
        let (_store, a, b) = two().await;
        let c = client();
        let node = Identity::generate();
        let first = registration(&node, "http://10.0.0.1:1");
        assert_eq!(register(&c, &a.url, &first).await.0, 201);
        // Replayed on the other replica: refused.
        let (st, msg) = register(&c, &b.url, &first).await;
        assert_eq!((st, msg.contains("not newer")), (400, true), "{msg}");
        let up = uptime(&node, 1, cap(1, 1, 1, 0));
        assert_eq!(heartbeat(&c, &b.url, node.id(), &up).await.0, 200);
        let (st, msg) = heartbeat(&c, &a.url, node.id(), &up).await;
        assert_eq!((st, msg.contains("not newer")), (400, true), "{msg}");
        // Many heartbeats, each sent to both replicas at once: each
        // timestamp is accepted exactly once.
        for i in 0..10 {
            let up = uptime(&node, 10 + i, cap(1, 1, 1, 0));
            let (x, y) = tokio::join!(
                heartbeat(&c, &a.url, node.id(), &up),
                heartbeat(&c, &b.url, node.id(), &up)
            );
            let mut sts = [x.0, y.0];
            sts.sort();
            assert_eq!(sts, [200, 400], "{x:?} {y:?}");
        }
        // A registration signed before the last heartbeat: refused on both.
        let stale =
            Registration::signed(&node, "http://evil:1", &cap(1, 1, 1, 1), now_ms() - 1_000);
        assert_eq!(register(&c, &a.url, &stale).await.0, 400);
        assert_eq!(register(&c, &b.url, &stale).await.0, 400);
        assert_eq!(nodes(&c, &b.url).await[0].url, "http://10.0.0.1:1");
        a.stop().await;
        b.stop().await;
    }

    /// A figure of `/metrics`: the value of the line starting `series `.
    async fn metric(url: &str, series: &str) -> u64 {
        let (_, text) = send(client().get(format!("{url}/metrics"))).await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {text}"))
    }

    /// Run one SQL statement on the test's database.
    async fn sql(store: &common::Store, q: &str) {
        use sqlx::{Connection, Executor};
        let url = &store.database.as_ref().unwrap().url;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        conn.execute(q).await.unwrap();
    }

    /// Group commit under load: many POSTs at once on both replicas share
    /// insert statements (fewer statements than rows), every one gets its
    /// own id, every copy of one signed reservation but one gets 409 naming
    /// that id (copies on one replica land in one batch, others on the
    /// other replica), and every node walking its cursor, on either
    /// replica, gets each of its reservations exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_posts_get_distinct_ids_and_reach_their_nodes_once() {
        let (_store, a, b) = two().await;
        const NODES: usize = 12;
        const DISTINCT: usize = 360;
        let nodes: Vec<Identity> = (0..NODES).map(|_| Identity::generate()).collect();
        let reservations: Vec<Reservation> = (0..DISTINCT)
            .map(|i| volume(&Identity::generate(), nodes[i % NODES].id()))
            .collect();
        // Every node's walker, on replica a or b.
        let walkers: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let url = if i % 2 == 0 {
                    a.url.clone()
                } else {
                    b.url.clone()
                };
                let n = n.id().to_string();
                let want = DISTINCT / NODES;
                tokio::spawn(async move {
                    let c = client();
                    let (mut from, mut seen) = (1, Vec::new());
                    let t = Instant::now();
                    while seen.len() < want && t.elapsed() < Duration::from_secs(60) {
                        for r in poll(&c, &url, &n, from).await {
                            from = from.max(r.number().unwrap() + 1);
                            seen.push(r.id);
                        }
                    }
                    seen
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = client();
        // Each reservation once; every 6th three times more: twice to the
        // replica of its first post, once to the other.
        let mut posts = Vec::new();
        for (i, r) in reservations.iter().enumerate() {
            let body = serde_json::to_string(r).unwrap();
            let copies = if i % 6 == 0 { 4 } else { 1 };
            for k in 0..copies {
                let url = if (i + usize::from(k == 3)) % 2 == 0 {
                    a.url.clone()
                } else {
                    b.url.clone()
                };
                let (node, body, c) = (r.node_id.clone(), body.clone(), c.clone());
                posts.push(async move { (i, post_body(&c, &url, &node, body).await) });
            }
        }
        // 64 at a time (one process holds both ends of every connection).
        let answers: Vec<_> = futures_util::stream::iter(posts)
            .buffer_unordered(64)
            .collect()
            .await;
        let mut ids: Vec<Option<String>> = vec![None; DISTINCT];
        for (i, (st, text)) in &answers {
            if *st == 201 {
                let v: serde_json::Value = serde_json::from_str(text).unwrap();
                assert!(ids[*i].is_none(), "a second 201 for reservation {i}");
                ids[*i] = Some(v["id"].as_str().unwrap().to_string());
            } else {
                assert_eq!(*st, 409, "{text}");
            }
        }
        let ids: Vec<String> = ids
            .into_iter()
            .map(|id| id.expect("one 201 each"))
            .collect();
        for (i, (st, text)) in &answers {
            if *st == 409 {
                assert!(
                    text.contains(&format!("already stored as {}:", ids[*i])),
                    "{text}"
                );
            }
        }
        assert_eq!(
            answers.iter().filter(|(_, (st, _))| *st == 409).count(),
            3 * (DISTINCT / 6)
        );
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), DISTINCT, "distinct ids");
        for (i, w) in walkers.into_iter().enumerate() {
            let mut seen = w.await.unwrap();
            let mut want: Vec<String> = (0..DISTINCT)
                .filter(|j| j % NODES == i)
                .map(|j| ids[j].clone())
                .collect();
            seen.sort();
            want.sort();
            assert_eq!(seen, want, "node {i} got each of its reservations once");
        }
        // The POSTs shared statements.
        let mut rows = 0;
        let mut statements = 0;
        for s in [&a, &b] {
            rows += metric(&s.url, r#"explorer_database_inserts_total{what="rows"}"#).await;
            statements += metric(
                &s.url,
                r#"explorer_database_inserts_total{what="statements"}"#,
            )
            .await;
        }
        assert_eq!(
            rows as usize,
            answers.len(),
            "every POST went through a batch"
        );
        assert!(statements < rows, "{statements} statements for {rows} rows");
        a.stop().await;
        b.stop().await;
    }

    /// A connection of its own to `store`'s database.
    async fn raw(store: &common::Store) -> sqlx::PgConnection {
        use sqlx::Connection;
        let url = &store.database.as_ref().expect("a PostgreSQL store").url;
        sqlx::PgConnection::connect(url).await.unwrap()
    }

    /// Store `r` through the migrations' batch function, behind both
    /// replicas' backs (no NOTIFY): its number, whether it is new, and its
    /// node's highest number before it.
    async fn insert_behind(
        conn: &mut sqlx::PgConnection,
        r: &Reservation,
    ) -> (i64, bool, Option<i64>) {
        use sqlx::Row;
        let row = sqlx::query(
            "SELECT o_number, o_new, o_after FROM explorer_insert_reservations_after(\
             ARRAY[$1]::integer[], ARRAY[$2], ARRAY[$3], ARRAY[$4::bytea], ARRAY[$5], \
             ARRAY[$6]::timestamptz[], ARRAY[$7]::bigint[], ARRAY[$8], ARRAY[$9], \
             ARRAY[$10]::boolean[], ARRAY[$11]::text[], ARRAY[$12]::bigint[])",
        )
        .bind(r.version as i32)
        .bind(&r.node_id)
        .bind(&r.user_id)
        .bind(r.kind.as_bytes())
        .bind(r.data.get())
        .bind(r.created)
        .bind(r.duration)
        .bind(&r.nonce)
        .bind(&r.signature)
        .bind(r.to_delete)
        .bind(&r.delete_signature)
        .bind(i64::MAX)
        .fetch_one(conn)
        .await
        .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }

    /// `NOTIFY channel, payload` from `conn`'s session, as another
    /// replica (of this release or an older one) sends it.
    async fn notify(conn: &mut sqlx::PgConnection, channel: &str, payload: &str) {
        sqlx::query("SELECT pg_notify($1, $2)::text")
            .bind(channel)
            .bind(payload)
            .execute(conn)
            .await
            .unwrap();
    }

    /// A poll of `node` from `from` held on `url` (after 300 ms: its query
    /// proved nothing new).
    async fn held(url: &str, node: &str, from: u64) -> tokio::task::JoinHandle<Vec<Reservation>> {
        let (url, n) = (url.to_string(), node.to_string());
        let h = tokio::spawn(async move { poll(&client(), &url, &n, from).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!h.is_finished(), "held");
        h
    }

    /// A replica keeps the connections its batches ran on: when their
    /// database sessions die (terminated here; a restart, a proxy), a
    /// broken one is dropped after its statement fails, never used again,
    /// and the next POSTs are stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn posts_are_stored_again_after_the_kept_connections_died() {
        let (store, a, b) = two().await;
        let c = client();
        let node = Identity::generate();
        post(&c, &a.url, &volume(&Identity::generate(), node.id())).await;
        let mut conn = raw(&store).await;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let mut failed = 0;
        let stored = loop {
            let r = volume(&Identity::generate(), node.id());
            let (st, text) =
                post_body(&c, &a.url, node.id(), serde_json::to_string(&r).unwrap()).await;
            if st == 201 {
                break r;
            }
            failed += 1;
            assert!(
                failed < 20,
                "still failing after {failed} posts: {st} {text}"
            );
        };
        // And then every POST is stored, on the connections kept since.
        for _ in 0..5 {
            post(&c, &a.url, &volume(&Identity::generate(), node.id())).await;
        }
        // B's pool held dead sessions too: each fails its query once.
        let mut tries = 0;
        let list: Vec<Reservation> = loop {
            let url = format!("{}/reservations/{}/poll?from=1", b.url, node.id());
            let (st, text) = send(c.get(url)).await;
            if st == 200 {
                break serde_json::from_str(&text).unwrap();
            }
            tries += 1;
            assert!(tries < 20, "poll still failing: {st} {text}");
        };
        assert_eq!(list.len(), 7, "{failed} failed");
        assert!(list.iter().any(|r| r.signature == stored.signature));
        a.stop().await;
        b.stop().await;
    }

    /// What the held poll `h` answers, within 2 s (its deadline is 5 s:
    /// a wake-up answered it).
    async fn woken(h: tokio::task::JoinHandle<Vec<Reservation>>) -> Vec<Reservation> {
        tokio::time::timeout(Duration::from_secs(2), h)
            .await
            .expect("woken within 2 s, before the poll's deadline")
            .unwrap()
    }

    /// Another replica's wake-up carries its new reservation and the
    /// node's number before it: the poll held here answers from it, with
    /// no query, when what this replica proved reaches that number. When a
    /// reservation lies between (stored elsewhere, its NOTIFY never came),
    /// the poll asks the database and the node's cursor skips nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_replicas_wake_up_answers_a_held_poll_unless_a_reservation_lies_between() {
        let (store, a, b) = two().await;
        let node = Identity::generate();
        let mut conn = raw(&store).await;
        let wrote =
            |r: &Reservation, after: u64| serde_json::json!({"after": after, "r": r}).to_string();
        // Two stored behind the replicas' backs; only the second's NOTIFY
        // comes: 1 lies between what B proved (nothing from 1) and 2.
        let held_b = held(&b.url, node.id(), 1).await;
        let first = volume(&Identity::generate(), node.id());
        assert_eq!(insert_behind(&mut conn, &first).await, (1, true, Some(0)));
        let mut second = volume(&Identity::generate(), node.id());
        assert_eq!(insert_behind(&mut conn, &second).await, (2, true, Some(1)));
        second.id = "2-1".into();
        notify(&mut conn, "explorer_wrote", &wrote(&second, 1)).await;
        let list = woken(held_b).await;
        assert_eq!(ids(&list), ["1-1", "2-1"], "asked the database");
        assert_eq!(list[0].signature, first.signature);
        // Held from 3 (nothing, proved); a wake-up for 3 right after 2:
        // answered from the payload alone. (The database holds no 3: a
        // query would have found nothing and kept the poll.)
        let held_b = held(&b.url, node.id(), 3).await;
        let mut third = volume(&Identity::generate(), node.id());
        third.id = "3-1".into();
        notify(&mut conn, "explorer_wrote", &wrote(&third, 2)).await;
        let list = woken(held_b).await;
        assert_eq!(ids(&list), ["3-1"]);
        assert_eq!(list[0].signature, third.signature);
        assert_eq!(list[0].data.get(), third.data.get());
        // An unreadable payload wakes every held poll: each asks the
        // database, and finds what was stored behind its back.
        let other = Identity::generate();
        let held_other = held(&b.url, other.id(), 1).await;
        let r = volume(&Identity::generate(), other.id());
        assert_eq!(insert_behind(&mut conn, &r).await, (3, true, Some(0)));
        notify(&mut conn, "explorer_wrote", "{not json").await;
        assert_eq!(ids(&woken(held_other).await), ["3-1"]);
        a.stop().await;
        b.stop().await;
    }

    /// What a tenant puts in `data` travels in the wake-up payload (or,
    /// too large for it, as a plain wake-up): an escaped NUL, non-ASCII
    /// text and odd spacing reach the node's poll on the other replica
    /// byte for byte, and nothing in them stops the NOTIFY that carries
    /// another tenant's reservation in the same statement.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tenants_data_crosses_replicas_byte_for_byte_and_blocks_no_other_wake_up() {
        let (_store, a, b) = two().await;
        let c = client();
        let odd = r#"{ "size":1 , "type":"SSD", "note":"nul \u0000 é ✓ \"q\"" }"#;
        let big = format!(r#"{{"size":1,"type":"SSD","note":"{}"}}"#, "x".repeat(5000));
        for data in [odd.to_string(), big] {
            let (hostile, other) = (Identity::generate(), Identity::generate());
            let held_h = held(&b.url, hostile.id(), 1).await;
            let held_o = held(&b.url, other.id(), 1).await;
            let user = Identity::generate();
            let r = signed(&user, hostile.id(), "volume", &data, Utc::now(), 3600);
            let plain = volume(&Identity::generate(), other.id());
            let (x, y) = tokio::join!(post(&c, &a.url, &r), post(&c, &a.url, &plain));
            let got = woken(held_h).await;
            assert_eq!(ids(&got), [x.as_str()]);
            assert_eq!(got[0].data.get(), data);
            assert_eq!(got[0].signature, r.signature);
            assert_eq!(ids(&woken(held_o).await), [y.as_str()]);
        }
        a.stop().await;
        b.stop().await;
    }

    /// Replicas of earlier releases know only `explorer_wake` (a node id):
    /// theirs wakes this release's polls, and this release's writes wake
    /// theirs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wake_ups_reach_and_come_from_replicas_of_earlier_releases() {
        use futures_util::StreamExt;
        let (store, a, b) = two().await;
        let node = Identity::generate();
        // An older replica's write: stored, then a node id on the old
        // channel.
        let held_b = held(&b.url, node.id(), 1).await;
        let mut conn = raw(&store).await;
        let r = volume(&Identity::generate(), node.id());
        assert_eq!(insert_behind(&mut conn, &r).await.0, 1);
        notify(&mut conn, "explorer_wake", node.id()).await;
        assert_eq!(ids(&woken(held_b).await), ["1-1"]);
        // An older replica listening: A's write reaches it as a node id.
        let url = &store.database.as_ref().unwrap().url;
        let mut old = sqlx::postgres::PgListener::connect(url).await.unwrap();
        old.listen("explorer_wake").await.unwrap();
        let mut heard = old.into_stream();
        assert_eq!(
            post(&client(), &a.url, &volume(&Identity::generate(), node.id())).await,
            "2-1"
        );
        let n = tokio::time::timeout(Duration::from_secs(5), heard.next())
            .await
            .expect("a wake-up within 5 s")
            .unwrap()
            .unwrap();
        assert_eq!((n.channel(), n.payload()), ("explorer_wake", node.id()));
        a.stop().await;
        b.stop().await;
    }

    /// A poll woken by a reservation its own replica stored answers it
    /// without asking the database only when nothing of the node can lie
    /// between: here another replica's reservation (written behind both
    /// replicas' backs, its NOTIFY late: never sent) took the number
    /// before it, and the woken poll still answers both, in order, so the
    /// node's cursor skips neither. Then one stored right after what the
    /// poll proved is answered alone, as it should be.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_woken_poll_never_skips_another_replicas_reservation_whose_notify_is_late() {
        let (store, a, b) = two().await;
        let node = Identity::generate();
        let held = tokio::spawn({
            let (url, n) = (a.url.clone(), node.id().to_string());
            async move { poll(&client(), &url, &n, 1).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!held.is_finished(), "held on A, its query proved it empty");
        let other = volume(&Identity::generate(), node.id());
        let mut conn = raw(&store).await;
        let got = insert_behind(&mut conn, &other).await;
        assert_eq!(got, (1, true, Some(0)), "number 1, new, the node's first");
        // A stores the next one (its predecessor, 1, is past what A's
        // poll proved): the woken poll asks the database.
        let mine = post(&client(), &a.url, &volume(&Identity::generate(), node.id())).await;
        assert_eq!(mine, "2-1");
        assert_eq!(ids(&held.await.unwrap()), ["1-1", "2-1"]);
        // Held again from 3 on both; A stores 3 right after: answered on
        // A (from what it stored) and on B (its NOTIFY, a query).
        let held: Vec<_> = [&a, &b]
            .into_iter()
            .map(|s| {
                let (url, n) = (s.url.clone(), node.id().to_string());
                tokio::spawn(async move { poll(&client(), &url, &n, 3).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = volume(&Identity::generate(), node.id());
        assert_eq!(post(&client(), &a.url, &r).await, "3-1");
        for h in held {
            let list = h.await.unwrap();
            assert_eq!(ids(&list), ["3-1"]);
            assert_eq!(list[0].signature, r.signature);
            assert_eq!(list[0].data.get(), r.data.get());
        }
        // And the store agrees, from a cursor this replica never proved.
        assert_eq!(
            ids(&poll(&client(), &a.url, node.id(), 1).await),
            ["1-1", "2-1", "3-1"]
        );
        a.stop().await;
        b.stop().await;
    }

    /// The batch function itself: a duplicate inside one batch and one of
    /// a row already stored answer the stored number without taking one;
    /// numbers follow the array's order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_batch_statement_answers_duplicates_in_and_before_the_batch() {
        use sqlx::{Connection, Row};
        let (store, a, b) = two().await;
        let node = Identity::generate();
        let first = post(&client(), &a.url, &volume(&Identity::generate(), node.id())).await;
        assert_eq!(first, "1-1");
        let (x, y) = (
            volume(&Identity::generate(), node.id()),
            volume(&Identity::generate(), node.id()),
        );
        let stored: Reservation = poll(&client(), &b.url, node.id(), 1).await.remove(0);
        let batch = [&x, &stored, &y, &x];
        let url = &store.database.as_ref().unwrap().url;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let rows = sqlx::query(
            "SELECT o_number, o_new FROM explorer_insert_reservations(\
             $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(batch.map(|r| r.version as i32).to_vec())
        .bind(batch.map(|r| r.node_id.clone()).to_vec())
        .bind(batch.map(|r| r.user_id.clone()).to_vec())
        .bind(batch.map(|r| r.kind.as_bytes().to_vec()).to_vec())
        .bind(batch.map(|r| r.data.get().to_string()).to_vec())
        .bind(batch.map(|r| r.created).to_vec())
        .bind(batch.map(|r| r.duration).to_vec())
        .bind(batch.map(|r| r.nonce.clone()).to_vec())
        .bind(batch.map(|r| r.signature.clone()).to_vec())
        .bind(batch.map(|r| r.to_delete).to_vec())
        .bind(batch.map(|r| r.delete_signature.clone()).to_vec())
        .bind(vec![i64::MAX; 4])
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let got: Vec<(i64, bool)> = rows
            .iter()
            .map(|r| (r.get::<i64, _>(0), r.get::<bool, _>(1)))
            .collect();
        assert_eq!(got, [(2, true), (1, false), (3, true), (2, false)]);
        // The function stores; the replica that calls it announces the
        // nodes (its notifier). Written here behind both replicas' backs,
        // announce it as they would: without it, a replica whose last poll
        // query of this node proved it quiet holds the next poll to its
        // deadline without asking the database (a test that raced).
        sqlx::query("SELECT pg_notify('explorer_wake', $1)")
            .bind(node.id())
            .execute(&mut conn)
            .await
            .unwrap();
        // Both replicas answer them, x and y byte for byte.
        let list = poll(&client(), &b.url, node.id(), 2).await;
        assert_eq!(ids(&list), ["2-1", "3-1"]);
        assert_eq!(list[0].data.get(), x.data.get());
        assert_eq!(list[0].signature, x.signature);
        assert_eq!(
            ids(&poll(&client(), &a.url, node.id(), 2).await),
            ["2-1", "3-1"]
        );
        // One row the database refuses fails the whole statement (so the
        // explorer stores the rows of such a batch one by one).
        let refused = sqlx::query(
            "SELECT * FROM explorer_insert_reservations(ARRAY[2], ARRAY['n1', 'n2'], \
             ARRAY['u', 'u'], ARRAY['\\x00'::bytea, '\\x00'], ARRAY['{}', '{}'], \
             ARRAY[NULL, NULL]::timestamptz[], ARRAY[1, 1]::bigint[], ARRAY['a', 'b'], \
             ARRAY['s1', 's2'], ARRAY[false, false], ARRAY[NULL, NULL]::text[], ARRAY[1, 1]::bigint[])",
        )
        .fetch_all(&mut conn)
        .await;
        assert!(refused.is_err(), "a NULL version is refused");
        assert_eq!(poll(&client(), &a.url, node.id(), 4).await.len(), 0);
        // Nor its first row, which the database would take alone (the
        // poll above is of another node: it could not see it).
        let kept: i64 =
            sqlx::query_scalar("SELECT count(*) FROM reservations WHERE signature IN ('s1', 's2')")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(kept, 0, "nothing of the refused statement is stored");
        a.stop().await;
        b.stop().await;
    }

    async fn send_post(url: String, r: Reservation) -> (u16, String) {
        let body = serde_json::to_string(&r).unwrap();
        post_body(&client(), &url, &r.node_id, body).await
    }

    /// A batch with a row the database refuses (here: a CHECK constraint
    /// the test adds against one user) fails that POST alone (500), and
    /// the others posted with it at once are stored and reach their node.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_row_the_database_refuses_fails_only_its_own_post() {
        let (store, a, b) = two().await;
        let bad_user = Identity::generate();
        sql(
            &store,
            &format!(
                "ALTER TABLE reservations ADD CONSTRAINT test_refuses_user CHECK (user_id <> '{}')",
                bad_user.id()
            ),
        )
        .await;
        let node = Identity::generate();
        const GOOD: usize = 60;
        let mut posts = Vec::new();
        for i in 0..GOOD {
            let url = if i % 2 == 0 {
                a.url.clone()
            } else {
                b.url.clone()
            };
            posts.push(send_post(url, volume(&Identity::generate(), node.id())));
            if i % 20 == 10 {
                // Three bad ones among them, on both replicas.
                let url = if i % 40 == 10 {
                    a.url.clone()
                } else {
                    b.url.clone()
                };
                posts.push(send_post(url, volume(&bad_user, node.id())));
            }
        }
        let answers = join_all(posts).await;
        let bad: Vec<_> = answers.iter().filter(|(st, _)| *st != 201).collect();
        assert_eq!(bad.len(), 3, "{bad:?}");
        for (st, text) in bad {
            assert_eq!(*st, 500);
            assert!(text.contains("store failed"), "{text}");
            assert!(!text.contains("test_refuses_user"), "{text}");
        }
        let list = poll(&client(), &b.url, node.id(), 0).await;
        assert_eq!(list.len(), GOOD);
        assert!(list.iter().all(|r| r.user_id != bad_user.id()));
        a.stop().await;
        b.stop().await;
    }

    /// A POST whose client goes away while its reservation waits for the
    /// writer is still stored, and still wakes the polls held for its
    /// node: on the other replica (its NOTIFY), and on its own replica,
    /// which skips its own NOTIFYs and whose server never got to wake them
    /// (the `Waiting` guard and the writer do). The writer is held back by
    /// the node's advisory lock, taken here as a batch of a replica would.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_post_is_stored_and_wakes_polls_on_both_replicas() {
        use sqlx::Connection;
        let (store, a, b) = two().await;
        let node = Identity::generate();
        let held: Vec<_> = [&a, &b]
            .into_iter()
            .map(|s| {
                let (url, n) = (s.url.clone(), node.id().to_string());
                tokio::spawn(async move { poll(&client(), &url, &n, 1).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let url = &store.database.as_ref().unwrap().url;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let lock = "SELECT pg_advisory_lock(hashtextextended('explorer node ' || $1, 0))";
        sqlx::query(lock)
            .bind(node.id())
            .execute(&mut conn)
            .await
            .unwrap();
        let r = volume(&Identity::generate(), node.id());
        let impatient = reqwest::Client::builder()
            .timeout(Duration::from_millis(400))
            .build()
            .unwrap();
        let sent = impatient
            .post(format!("{}/reservations/{}", a.url, node.id()))
            .body(serde_json::to_string(&r).unwrap())
            .send()
            .await;
        assert!(sent.is_err(), "the POST waits for the lock: {sent:?}");
        // The explorer sees the connection closed and drops the handler.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        sqlx::query("SELECT pg_advisory_unlock(hashtextextended('explorer node ' || $1, 0))")
            .bind(node.id())
            .execute(&mut conn)
            .await
            .unwrap();
        for h in held {
            let list = h.await.unwrap();
            assert_eq!(ids(&list), ["1-1"]);
            assert_eq!(list[0].signature, r.signature);
        }
        // Not at the 5 s deadline.
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        a.stop().await;
        b.stop().await;
    }

    /// The smallest pools still serve: with two connections (one holds the
    /// LISTEN), the notifier takes none of its own, so POSTs after the
    /// first one's NOTIFY still get a connection (they waited the pool's
    /// 10 s and failed when it kept one), and such a replica still stops.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_two_connection_pool_serves_posts_and_stops_after_notifying() {
        let store = Backend::Postgres.store().await;
        let small = common::start_with(explorer::ServerConfig {
            max_connections: 2,
            long_poll: Duration::from_secs(5),
            ..store.config()
        })
        .await;
        let other = store.start(Duration::from_secs(5)).await;
        let (c, node) = (client(), Identity::generate());
        for i in 1..=4u64 {
            let held = tokio::spawn({
                let (c, url, n) = (c.clone(), other.url.clone(), node.id().to_string());
                async move { poll(&c, &url, &n, i).await }
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            let t = Instant::now();
            let id = post(&c, &small.url, &volume(&Identity::generate(), node.id())).await;
            assert_eq!(id, format!("{i}-1"));
            // Its NOTIFY woke the poll held on the other replica.
            assert_eq!(ids(&held.await.unwrap()), [id.as_str()]);
            assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        }
        let t = Instant::now();
        small.stop().await;
        other.stop().await;
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    }

    /// A replica whose database lags (here: the reservations table locked
    /// by another session, so every insert statement waits) keeps at most
    /// `max_queued_posts` POSTs waiting beyond the batches being stored;
    /// the next one is answered at once `503` with `Retry-After: 1` and a
    /// message saying to post it again, and nothing of it is stored: once
    /// the database moves, every waiting POST is `201` with its own id, and
    /// the refused reservation, posted again, is stored too (not `409`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_insert_queue_answers_503_with_retry_after_and_stores_nothing() {
        const QUEUED: usize = 2;
        let store = Backend::Postgres.store().await;
        let s = common::start_with(explorer::ServerConfig {
            max_queued_posts: QUEUED,
            long_poll: Duration::from_secs(1),
            ..store.config()
        })
        .await;
        let node = Identity::generate();
        let stalled = common::Stalled::new(&store).await;
        let (waiting, answered) = common::post_until_answered(&s.url, node.id(), 20).await;
        let Some((refused, (status, retry, text))) = answered else {
            panic!("{} POSTs waited and none was refused", waiting.len());
        };
        assert_eq!(status, 503, "{text}");
        assert_eq!(retry.as_deref(), Some("1"), "{text}");
        assert!(
            text.contains("explorer busy")
                && text.contains(&format!("waiting for the database is full ({QUEUED})"))
                && text.contains("post it again after 1 s"),
            "{text}"
        );
        // Refused once the queue is full, not before: the two batch
        // statements in flight hold one POST each (posted one at a time),
        // then the queue's own.
        assert_eq!(waiting.len(), 2 + QUEUED);
        stalled.release().await;
        let c = client();
        let mut stored = Vec::new();
        for w in waiting {
            let (r, (status, _, text)) = w.await.unwrap();
            assert_eq!(status, 201, "{text}");
            let id: explorer::Created = serde_json::from_str(&text).unwrap();
            stored.push((id.id, r.signature));
        }
        let mut got: Vec<(String, String)> = poll(&c, &s.url, node.id(), 0)
            .await
            .into_iter()
            .map(|r| (r.id, r.signature))
            .collect();
        stored.sort();
        got.sort();
        assert_eq!(
            got, stored,
            "the waiting POSTs are stored, the refused one is not"
        );
        // Posted again later, the refused reservation is stored.
        let (status, _, text) = common::post_answer(&c, &s.url, &refused).await;
        assert_eq!(status, 201, "{text}");
        assert_eq!(poll(&c, &s.url, node.id(), 0).await.len(), 2 + QUEUED + 1);
        s.stop().await;
    }

    /// `GET /health` is 503 while the database refuses connections, 200
    /// again once it takes them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_says_503_while_the_database_is_away() {
        let store = Backend::Postgres.store().await;
        let s = store.start(Duration::from_secs(2)).await;
        let c = client();
        assert_eq!(send(c.get(format!("{}/health", s.url))).await.0, 200);
        let db = store.database.as_ref().unwrap();
        let name = db.url.rsplit('/').next().unwrap().to_string();
        let admin = db.url.replace(&format!("/{name}"), "/postgres");
        let sql = |q: String| {
            let admin = admin.clone();
            async move {
                use sqlx::{Connection, Executor};
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
                conn.execute(q.as_str()).await.unwrap();
            }
        };
        sql(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false")).await;
        sql(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await;
        let (st, msg) = send(c.get(format!("{}/health", s.url))).await;
        assert_eq!(st, 503, "{msg}");
        assert!(msg.contains("store does not answer"), "{msg}");
        assert!(!msg.contains("postgres") && !msg.contains(&name), "{msg}");
        sql(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true")).await;
        let mut ok = false;
        for _ in 0..50 {
            if send(c.get(format!("{}/health", s.url))).await.0 == 200 {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "healthy again");
        s.stop().await;
    }
}

// Every test above, on each backend: `sled::NAME` and `postgres::NAME`.
both_backends! {
    #[tokio::test] health_and_metrics;
    #[tokio::test] post_and_get_keep_data_byte_for_byte;
    #[tokio::test] the_libsodium_vector_reservation_is_judged_by_its_signature_and_lifetime;
    #[tokio::test] bad_signatures_and_shapes_are_refused_with_a_message;
    #[tokio::test] version_1_and_bad_nonces_are_refused;
    #[tokio::test] expired_future_and_fractional_reservations_are_refused;
    #[tokio::test] data_larger_than_64_kib_is_refused;
    #[tokio::test] bodies_over_the_limit_are_413_on_every_route;
    #[tokio::test] a_reservation_posted_under_another_node_is_refused;
    #[tokio::test] the_same_signed_reservation_posted_twice_is_a_conflict;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] concurrent_posts_of_one_signed_reservation_store_it_once;
    #[tokio::test] poll_answers_by_cursor_expiry_and_pending_deletion;
    #[tokio::test] poll_pages_with_limit;
    #[tokio::test] long_poll_holds_then_wakes_on_post_and_on_delete;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] too_many_held_polls_for_one_node_are_refused;
    #[tokio::test] shutdown_answers_held_polls_at_once;
    #[tokio::test] results_must_be_signed_by_the_node_for_this_reservation_and_are_all_kept;
    #[tokio::test] deletion_needs_the_users_signature_over_this_reservation;
    #[tokio::test] deletion_confirmations_must_be_signed_by_the_node;
    #[tokio::test] nodes_register_heartbeat_and_list;
    #[tokio::test] forged_or_replayed_node_messages_change_nothing;
    #[tokio::test] unknown_routes_say_so;
    #[tokio::test] a_deletion_posted_with_the_reservation_must_be_signed;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] concurrent_posts_are_all_answered;
}
