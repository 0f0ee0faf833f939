//! Fuzz target: a reservation, and a poll answer, from arbitrary bytes, and
//! every call the agent makes on one (signature, deletion signature, expiry,
//! number, type, `data`).
//!
//! Besides "never panics", it checks what the protocol relies on:
//! - a parsed reservation serializes and parses back to the same signed
//!   message (the explorer stores and serves it again; a node must still be
//!   able to verify it);
//! - a reservation signed by a user verifies, still does after that round
//!   trip, and stops verifying when a signed field changes;
//! - expiry agrees with itself (`is_expired` flips exactly at `expires_at`);
//! - a poll answer keeps one reservation per id and accounts for every
//!   element (kept + malformed + repeated).

#![no_main]

use std::collections::HashSet;
use std::sync::OnceLock;

use chrono::{DateTime, TimeDelta, Utc};
use libfuzzer_sys::fuzz_target;
use reservation::{Identity, Reservation, Workload};
use serde_json::value::RawValue;

fn user() -> &'static Identity {
    static USER: OnceLock<Identity> = OnceLock::new();
    USER.get_or_init(|| Identity::from_seed(&[7; 32]))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(answer) = sources::poll::parse_poll_answer("http://fuzz/poll", data) {
        let items: Vec<&RawValue> =
            serde_json::from_slice(data).expect("a poll answer that parsed is a JSON array");
        assert_eq!(
            answer.reservations.len() + answer.malformed + answer.repeated,
            items.len(),
            "every element is kept, malformed or repeated"
        );
        let mut ids = HashSet::new();
        for r in &answer.reservations {
            assert!(ids.insert(r.id.as_str()), "id {:?} kept twice", r.id);
            check(r);
        }
    }
    if let Ok(r) = serde_json::from_slice::<Reservation>(data) {
        check(&r);
    }
});

fn reparse(r: &Reservation) -> Reservation {
    let text = serde_json::to_string(r).expect("a reservation serializes");
    match serde_json::from_str(&text) {
        Ok(back) => back,
        Err(e) => panic!("a reservation does not parse back from its own JSON {text}: {e}"),
    }
}

fn check(r: &Reservation) {
    let msg = r.signing_message();
    let verdict = r.verify().is_ok();
    let delete_verdict = r.verify_delete().is_ok();

    // Expiry.
    let expires = r.expires_at();
    for now in [
        DateTime::<Utc>::MIN_UTC,
        DateTime::UNIX_EPOCH,
        Utc::now(),
        DateTime::<Utc>::MAX_UTC,
    ] {
        let expired = r.is_expired(now);
        if expires.is_none() || r.duration <= 0 {
            assert!(expired, "no expiry or duration <= 0 must count as expired");
        }
    }
    if let (Some(at), true) = (expires, r.duration > 0) {
        assert!(r.is_expired(at), "expired at expires_at");
        if let Some(before) = at.checked_sub_signed(TimeDelta::nanoseconds(1)) {
            assert!(!r.is_expired(before), "not expired just before expires_at");
        }
    }

    if let Some(n) = r.number() {
        let head = r.id.split('-').next().unwrap_or_default();
        assert_eq!(head.parse::<u64>().ok(), Some(n));
    }

    match r.workload_type() {
        Ok(t) => {
            assert_eq!(t.as_str(), r.kind);
            if let Ok(w) = Workload::parse(t, &r.data) {
                assert_eq!(w.kind(), t);
            }
        }
        Err(e) => assert!(e.to_string().starts_with("type: "), "{e}"),
    }

    // What the explorer stores and serves is the reservation the user
    // signed: same message, same verdicts.
    let back = reparse(r);
    assert_eq!(
        back.signing_message(),
        msg,
        "round trip changed the message"
    );
    assert_eq!(back.verify().is_ok(), verdict);
    assert_eq!(back.verify_delete().is_ok(), delete_verdict);
    assert_eq!(back.id, r.id);
    assert_eq!(back.to_delete, r.to_delete);
    assert_eq!(back.expires_at(), r.expires_at());

    // Signed by a user, it verifies, before and after the round trip.
    let u = user();
    let mut s = r.clone();
    s.user_id = u.id().to_string();
    u.sign_reservation(&mut s);
    if let Err(e) = s.verify() {
        panic!("a freshly signed reservation does not verify: {e}");
    }
    let back = reparse(&s);
    if let Err(e) = back.verify() {
        panic!("a signed reservation no longer verifies after a round trip: {e}");
    }
    s.delete_signature = Some(u.sign_delete(&s.signature));
    s.verify_delete()
        .expect("a fresh delete signature verifies");
    reparse(&s)
        .verify_delete()
        .expect("a delete signature verifies after a round trip");

    // Changing a signed field breaks the signature.
    let mut t = s.clone();
    t.duration = t.duration.wrapping_add(1);
    assert!(t.verify().is_err(), "a changed duration still verifies");
    let mut t = s.clone();
    t.node_id.push('x');
    assert!(t.verify().is_err(), "a changed node_id still verifies");
    let mut t = s.clone();
    t.nonce.push('0');
    assert!(t.verify().is_err(), "a changed nonce still verifies");
    // A deletion names the signed reservation, not the explorer's id.
    let mut t = s.clone();
    t.id.push('x');
    assert!(t.verify_delete().is_ok(), "a deletion is bound to the signature, not the id");
    let mut t = s;
    t.signature = u.sign(b"another reservation");
    assert!(
        t.verify_delete().is_err(),
        "a deletion signature verifies for another reservation"
    );
}
