//! Known-answer vectors of protocol version 2, made with libsodium
//! (`reservation/tests/vectors.json`), the refusals among them, plus a
//! cross-check of our framing, sealed boxes and signatures in libsodium
//! itself (PyNaCl).

use std::process::Command;

use chrono::{DateTime, Utc};
use reservation::node::{Registration, Uptime};
use reservation::{seal_for, valid_id, Identity, Reservation, ResultState, WorkloadResult};
use serde_json::Value;

/// The committed copy. When the project's shared copy sits beside the
/// checkout (the upstream source of these vectors), both must be equal; a
/// user's clone without it compares nothing.
fn vectors() -> Value {
    let local: Value = serde_json::from_str(include_str!("vectors.json")).unwrap();
    let upstream = std::env::var("UPSTREAM_VECTORS").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors.json").to_string()
    });
    if let Ok(s) = std::fs::read_to_string(&upstream) {
        let a: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(
            a, local,
            "reservation/tests/vectors.json differs from {upstream}: copy it"
        );
    }
    local
}

fn seed(v: &Value, k: &str) -> [u8; 32] {
    hex::decode(v[k].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("vector {k}"))
}

fn reservation(v: &Value) -> Reservation {
    serde_json::from_str(s(v, "reservation_json")).unwrap()
}

#[test]
fn ids_from_seeds() {
    let v = vectors();
    assert_eq!(
        Identity::from_seed(&seed(&v, "user_seed")).id(),
        s(&v, "user_id")
    );
    assert_eq!(
        Identity::from_seed(&seed(&v, "node_seed")).id(),
        s(&v, "node_id")
    );
}

#[test]
fn reservation_message_and_signature() {
    let v = vectors();
    let r = reservation(&v);
    assert_eq!(r.version, 2);
    assert_eq!(
        hex::encode(r.signing_message()),
        s(&v, "reservation_signed_message_hex")
    );
    assert_eq!(r.signature, s(&v, "reservation_signature"));
    r.verify().unwrap();
    r.check_version().unwrap();
    // ed25519 is deterministic: our signature equals libsodium's.
    let user = Identity::from_seed(&seed(&v, "user_seed"));
    let mut ours = r.clone();
    user.sign_reservation(&mut ours);
    assert_eq!(ours.signature, r.signature);
    // Every signed field counts.
    let mut t = r.clone();
    t.duration += 1;
    assert!(t.verify().is_err());
    let mut t = r.clone();
    t.created = Some(t.created.unwrap() + chrono::Duration::seconds(1));
    assert!(t.verify().is_err());
    let mut t = r.clone();
    t.nonce = "00112233445566778899aabbccddeef0".into();
    assert!(t.verify().is_err(), "the nonce is signed");
    // data is raw bytes: re-serializing it (dropping the space) breaks it.
    let mut t = r.clone();
    t.data = serde_json::value::RawValue::from_string(r#"{"size":1,"type":"SSD"}"#.into()).unwrap();
    assert!(t.verify().is_err());
    // The raw bytes survive our own serializer.
    let back: Reservation = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    back.verify().unwrap();
}

#[test]
fn version_1_and_the_digit_shift_are_refused() {
    let v = vectors();
    let refuse = &v["refuse"];
    let v1: Reservation = serde_json::from_str(s(refuse, "version_1_reservation")).unwrap();
    let e = v1.check_version().unwrap_err().to_string();
    assert!(
        e.contains("protocol version 1 is not accepted; sign with version 2"),
        "{e}"
    );
    // Its version 1 signature does not verify as version 2 either.
    assert!(v1.verify().is_err());
    // The digit shift: moving a digit of duration onto created keeps the
    // version 1 bytes but not the framed version 2 ones.
    let shift = &refuse["version_1_digit_shift"];
    let mut t = reservation(&v);
    t.created = DateTime::<Utc>::from_timestamp(shift["created_unix"].as_i64().unwrap(), 0);
    t.duration = shift["duration"].as_i64().unwrap();
    assert!(t.verify().is_err(), "a digit shift must not verify");
    let mut t1 = v1.clone();
    t1.created = t.created;
    t1.duration = t.duration;
    assert!(t1.check_version().is_err());
}

#[test]
fn ids_outside_the_grammar() {
    let v = vectors();
    for id in v["refuse"]["bad_ids"].as_array().unwrap() {
        let id = id.as_str().unwrap();
        assert!(!valid_id(id), "{id:?} must be refused");
    }
    for id in [
        "12-1",
        "0-0",
        "18446744073709551615-1",
        "99999999999999999999-99999999999999999999",
    ] {
        assert!(valid_id(id), "{id:?} is valid");
    }
}

#[test]
fn deletion_is_bound_to_the_reservation_signature() {
    let v = vectors();
    let d = &v["delete"];
    let mut r = reservation(&v);
    assert!(
        r.verify_delete().is_err(),
        "a missing deletion must not verify"
    );
    assert_eq!(
        hex::encode(Reservation::delete_message(&r.signature)),
        s(d, "signed_message_hex")
    );
    let user = Identity::from_seed(&seed(&v, "user_seed"));
    assert_eq!(user.sign_delete(&r.signature), s(d, "delete_signature"));
    r.delete_signature = Some(s(d, "delete_signature").into());
    r.verify_delete().unwrap();
    // The explorer reassigning the id changes nothing: the deletion names
    // the signature, not the id.
    r.id = "99-1".into();
    r.verify_delete().unwrap();
    // Another reservation (same fields, fresh nonce) is not deleted by it.
    let mut other = reservation(&v);
    other.nonce = reservation::new_nonce();
    user.sign_reservation(&mut other);
    other.delete_signature = Some(s(d, "delete_signature").into());
    assert!(other.verify_delete().is_err());
}

#[test]
fn results_sign_like_libsodium() {
    let v = vectors();
    let node = Identity::from_seed(&seed(&v, "node_seed"));
    let res = reservation(&v);
    for key in ["result_ok", "result_error"] {
        let x = &v[key];
        let r = WorkloadResult {
            kind: "volume".into(),
            id: s(x, "id").into(),
            created: Utc::now(),
            state: serde_json::from_value(x["state"].clone()).unwrap(),
            error: s(x, "error").into(),
            data: serde_json::from_str(s(x, "data")).unwrap(),
            signature: s(x, "signature").into(),
        };
        assert_eq!(
            hex::encode(r.signing_message(&res.signature)),
            s(x, "signed_message_hex"),
            "{key}"
        );
        r.verify(node.id(), &res.signature).unwrap();
        // Bound to the reservation: it does not verify for another one.
        assert!(r
            .verify(node.id(), s(&v["delete"], "delete_signature"))
            .is_err());
    }
    let ok = node
        .ok_result(&res, &serde_json::json!({"volume_id": "12-1"}))
        .unwrap();
    assert_eq!(ok.signature, s(&v["result_ok"], "signature"));
    let err = node.error_result(&res, s(&v["result_error"], "error"));
    assert_eq!(err.signature, s(&v["result_error"], "signature"));
}

#[test]
fn a_crafted_id_cannot_turn_an_error_into_ok() {
    // Version 1 signed id ‖ state ‖ error ‖ data: an error for "157-1ok"
    // with an empty message read as "ok" for "157-1". Framed, it cannot.
    let node = Identity::generate();
    let mut r = Reservation {
        id: "157-1ok".into(),
        signature: "c2ln".into(),
        kind: "volume".into(),
        ..Default::default()
    };
    let forged_source = node.sign_result(
        "volume",
        &r.id,
        &r.signature,
        ResultState::Error,
        String::new(),
        reservation::model::null_raw(),
    );
    r.id = "157-1".into();
    let mut as_ok = forged_source.clone();
    as_ok.id = "157-1".into();
    as_ok.state = ResultState::Ok;
    as_ok.error = "rror".into();
    assert!(as_ok.verify(node.id(), &r.signature).is_err());
}

#[test]
fn deleted_confirmation() {
    let v = vectors();
    let node = Identity::from_seed(&seed(&v, "node_seed"));
    let d = &v["deleted_confirmation"];
    let mut r = reservation(&v);
    r.id = s(d, "id").into();
    assert_eq!(
        hex::encode(Reservation::deleted_message(&r.id, &r.signature)),
        s(d, "signed_message_hex")
    );
    assert_eq!(node.sign_deleted(&r.id, &r.signature), s(d, "signature"));
    r.verify_deleted(s(d, "signature")).unwrap();
    r.id = "13-1".into();
    assert!(r.verify_deleted(s(d, "signature")).is_err());
}

#[test]
fn node_registration_and_uptime() {
    let v = vectors();
    let node = Identity::from_seed(&seed(&v, "node_seed"));
    let reg_v = &v["node_registration"];
    let reg: Registration = serde_json::from_str(s(reg_v, "body")).unwrap();
    assert_eq!(
        hex::encode(reg.signing_message()),
        s(reg_v, "signed_message_hex")
    );
    reg.verify().unwrap();
    let cap: reservation::Capacity = serde_json::from_str(reg.capacity.get()).unwrap();
    let ours = Registration::signed(&node, &reg.url, &cap, reg.timestamp);
    assert_eq!(serde_json::to_string(&ours).unwrap(), s(reg_v, "body"));
    let mut moved = reg.clone();
    moved.url = "http://attacker.example:9100".into();
    assert!(moved.verify().is_err(), "the url is signed");

    let up_v = &v["node_uptime"];
    let up: Uptime = serde_json::from_str(s(up_v, "body")).unwrap();
    assert_eq!(
        hex::encode(up.signing_message(node.id())),
        s(up_v, "signed_message_hex")
    );
    up.verify(node.id()).unwrap();
    assert!(up.verify(Identity::generate().id()).is_err());
    let used: reservation::Capacity = serde_json::from_str(up.used.get()).unwrap();
    let ours = Uptime::signed(&node, up.uptime, &used, up.timestamp);
    assert_eq!(serde_json::to_string(&ours).unwrap(), s(up_v, "body"));
}

#[test]
fn node_timestamps() {
    use reservation::node::check_timestamp;
    let now = 1_795_604_400_123;
    check_timestamp(now, now, None).unwrap();
    check_timestamp(now - 299_000, now, Some(now - 300_000)).unwrap();
    assert!(
        check_timestamp(now - 301_000, now, None).is_err(),
        "too old"
    );
    assert!(check_timestamp(now + 301_000, now, None).is_err(), "future");
    let e = check_timestamp(now, now, Some(now))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not newer"), "{e}");
    assert!(check_timestamp(i64::MIN, now, None).is_err());
}

#[test]
fn sealed_secret_from_libsodium_opens() {
    let v = vectors();
    let node = Identity::from_seed(&seed(&v, "node_seed"));
    let x = &v["sealed_secret_for_node"];
    let plain = node.open_sealed("password", s(x, "hex")).unwrap();
    assert_eq!(plain.expose(), s(x, "plaintext"));
    assert_eq!(format!("{plain:?}"), "Secret(<redacted>)");
    assert!(Identity::generate()
        .open_sealed("password", s(x, "hex"))
        .is_err());
}

#[test]
fn our_sealed_box_opens_for_ourselves() {
    let node = Identity::generate();
    let hex_box = seal_for(node.id(), b"hello").unwrap();
    assert_eq!(node.open_sealed("x", &hex_box).unwrap().expose(), "hello");
}

#[test]
fn network_local_id() {
    let v = vectors();
    let n = &v["network_local_id"];
    assert_eq!(
        reservation::network_local_id(s(n, "user_id"), s(n, "name")),
        s(n, "id")
    );
}

/// Cross-check in libsodium itself: Python frames a fresh reservation of
/// ours on its own (from the page's rule, not our code), verifies our
/// signature over it, and opens a box we sealed. Needs Debian's
/// python3-nacl, which the test script installs.
#[test]
fn libsodium_verifies_our_framed_signature_and_opens_our_box() {
    let v = vectors();
    let node = Identity::from_seed(&seed(&v, "node_seed"));
    let hex_box = seal_for(node.id(), b"from rust").unwrap();
    let user = Identity::generate();
    let mut r = Reservation {
        node_id: node.id().into(),
        user_id: user.id().into(),
        kind: "volume".into(),
        data: serde_json::value::RawValue::from_string(r#"{"size": 2, "type":"HDD"}"#.into())
            .unwrap(),
        created: DateTime::<Utc>::from_timestamp(1_795_604_400, 0),
        duration: 3_600_000_000_000,
        ..Default::default()
    };
    user.sign_reservation(&mut r);
    let vk = hex::encode(user.verifying_key().as_bytes());
    let script = format!(
        r#"
import base64, struct, nacl.bindings as b, nacl.public as p, nacl.signing as s
def frame(*fs): return b"".join(struct.pack(">I", len(f)) + f for f in fs)
seed = bytes.fromhex("{seed}")
pk, sk = b.crypto_sign_seed_keypair(seed)
xsk = b.crypto_sign_ed25519_sk_to_curve25519(sk)
print(p.SealedBox(p.PrivateKey(xsk)).decrypt(bytes.fromhex("{hex_box}")).decode())
m = frame(b"reservation-v2", b"{node}", b"{user}", b"volume", b'{{"size": 2, "type":"HDD"}}',
          b"1795604400", b"3600000000000", b"{nonce}")
s.VerifyKey(bytes.fromhex("{vk}")).verify(m, base64.b64decode("{sig}"))
print("verified")
"#,
        seed = s(&v, "node_seed"),
        node = node.id(),
        user = user.id(),
        nonce = r.nonce,
        sig = r.signature,
    );
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run /usr/bin/python3 (apt-get install python3-nacl)");
    assert!(
        out.status.success(),
        "libsodium check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from rust\nverified\n"
    );
}
