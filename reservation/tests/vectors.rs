//! Known-answer vectors made with libsodium (`shared/vectors.json`), plus a
//! cross-check of our sealed boxes and signatures in libsodium (PyNaCl).

use std::process::Command;

use reservation::{seal_for, Identity, Reservation, WorkloadResult};
use serde_json::Value;

fn vectors() -> Value {
    // Prefer the shared copy beside the repo; the committed copy must match it.
    let local = include_str!("vectors.json");
    let shared = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors.json");
    if let Ok(s) = std::fs::read_to_string(shared) {
        let a: Value = serde_json::from_str(&s).unwrap();
        let b: Value = serde_json::from_str(local).unwrap();
        assert_eq!(
            a, b,
            "reservation/tests/vectors.json is stale: copy shared/vectors.json"
        );
        a
    } else {
        serde_json::from_str(local).unwrap()
    }
}

fn seed(v: &Value, k: &str) -> [u8; 32] {
    hex::decode(v[k].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

#[test]
fn ids_from_seeds() {
    let v = vectors();
    assert_eq!(
        Identity::from_seed(&seed(&v, "user_seed")).id(),
        v["user_id"]
    );
    assert_eq!(
        Identity::from_seed(&seed(&v, "node_seed")).id(),
        v["node_id"]
    );
}

#[test]
fn reservation_signature_and_message() {
    let v = vectors();
    let r: Reservation = serde_json::from_str(v["reservation_json"].as_str().unwrap()).unwrap();
    assert_eq!(
        String::from_utf8(r.signing_message()).unwrap(),
        v["reservation_signed_message"].as_str().unwrap()
    );
    r.verify().unwrap();
    // Our signature is ed25519-deterministic: it must equal libsodium's.
    let user = Identity::from_seed(&seed(&v, "user_seed"));
    let mut ours = r.clone();
    user.sign_reservation(&mut ours);
    assert_eq!(ours.signature, r.signature);
    // Any change to a signed part breaks it, duration and created included.
    let mut t = r.clone();
    t.duration += 1;
    assert!(t.verify().is_err());
    let mut t = r.clone();
    t.created = Some(t.created.unwrap() + chrono::Duration::seconds(1));
    assert!(t.verify().is_err());
    // Re-serializing data (dropping the space) breaks it: data is raw bytes.
    let mut t = r.clone();
    t.data = serde_json::value::RawValue::from_string(r#"{"size":1,"type":"SSD"}"#.into()).unwrap();
    assert!(t.verify().is_err());
    // And the raw bytes survive a round trip through our serializer.
    let back: Reservation = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
    back.verify().unwrap();
}

#[test]
fn deletion_signature() {
    let v = vectors();
    let mut r: Reservation = serde_json::from_str(v["reservation_json"].as_str().unwrap()).unwrap();
    assert!(
        r.verify_delete().is_err(),
        "missing deletion must not verify"
    );
    r.delete_signature = Some(v["delete_signature"].as_str().unwrap().into());
    r.verify_delete().unwrap();
    let user = Identity::from_seed(&seed(&v, "user_seed"));
    assert_eq!(
        user.sign_delete("12-1"),
        v["delete_signature"].as_str().unwrap()
    );
    r.id = "12-2".into();
    assert!(r.verify_delete().is_err(), "a deletion is bound to its id");
}

#[test]
fn results_sign_like_libsodium() {
    let v = vectors();
    let node = Identity::from_seed(&seed(&v, "node_seed"));
    for key in ["result_ok", "result_error"] {
        let x = &v[key];
        let data: Box<serde_json::value::RawValue> =
            serde_json::from_str(x["data"].as_str().unwrap()).unwrap();
        let r = WorkloadResult {
            kind: "volume".into(),
            id: x["id"].as_str().unwrap().into(),
            created: chrono::Utc::now(),
            state: serde_json::from_value(x["state"].clone()).unwrap(),
            error: x["error"].as_str().unwrap().into(),
            data,
            signature: x["signature"].as_str().unwrap().into(),
        };
        r.verify(node.id()).unwrap();
        assert_eq!(node.sign(&r.signing_message()), r.signature);
    }
    let ok = node
        .ok_result("volume", "12-1", &serde_json::json!({"volume_id": "12-1"}))
        .unwrap();
    assert_eq!(ok.signature, v["result_ok"]["signature"].as_str().unwrap());
    let err = node.error_result(
        "volume",
        "12-1",
        r#"volume type "TAPE" is not one of HDD, SSD"#,
    );
    assert_eq!(
        err.signature,
        v["result_error"]["signature"].as_str().unwrap()
    );
}

#[test]
fn sealed_secret_from_libsodium_opens() {
    let v = vectors();
    let node = Identity::from_seed(&seed(&v, "node_seed"));
    let s = &v["sealed_secret_for_node"];
    let plain = node
        .open_sealed("password", s["hex"].as_str().unwrap())
        .unwrap();
    assert_eq!(plain.expose(), s["plaintext"].as_str().unwrap());
    assert_eq!(format!("{plain:?}"), "Secret(<redacted>)");
    // Another node cannot open it.
    assert!(Identity::generate()
        .open_sealed("password", s["hex"].as_str().unwrap())
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
        reservation::network_local_id(n["user_id"].as_str().unwrap(), n["name"].as_str().unwrap()),
        n["id"].as_str().unwrap()
    );
}

/// Cross-check in libsodium itself: a box we seal opens there, and a
/// signature we make verifies there. Needs Debian's python3-nacl, which the
/// test script installs.
#[test]
fn libsodium_opens_our_box_and_verifies_our_signature() {
    let v = vectors();
    let node = Identity::from_seed(&seed(&v, "node_seed"));
    let hex_box = seal_for(node.id(), b"from rust").unwrap();
    let user = Identity::generate();
    let msg = b"delete:99-1";
    let sig = user.sign(msg);
    let vk = hex::encode(user.verifying_key().as_bytes());
    let script = format!(
        r#"
import base64, nacl.bindings as b, nacl.public as p, nacl.signing as s
seed = bytes.fromhex("{seed}")
pk, sk = b.crypto_sign_seed_keypair(seed)
xsk = b.crypto_sign_ed25519_sk_to_curve25519(sk)
print(p.SealedBox(p.PrivateKey(xsk)).decrypt(bytes.fromhex("{hex_box}")).decode())
s.VerifyKey(bytes.fromhex("{vk}")).verify(b"delete:99-1", base64.b64decode("{sig}"))
print("verified")
"#,
        seed = v["node_seed"].as_str().unwrap()
    );
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run /usr/bin/python3 (apt-get install python3-nacl)");
    let _ = msg;
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
