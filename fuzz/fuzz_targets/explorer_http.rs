//! Fuzz target: the explorer's HTTP handlers (protocol version 2), driven
//! in-process through `explorer::router` (the real routes, extractors and
//! sled store on a tmpfs directory; no socket).
//!
//! Input layout (bytes):
//! - `op`: which request (see [`Op`], `op % 11`);
//! - `flags`: bits 0-1 choose the path key (0: from the input, 1: the id of
//!   the last reservation this run created, 2: the harness node's id,
//!   3: `"1-1"`), bit 2 signs the body with the harness's keys (so signed
//!   paths are reached, not just refusals), bit 3 addresses a created
//!   reservation to the harness node, bit 4 keeps a signed reservation's
//!   `version`, `nonce`, `created` and deletion fields as the input has
//!   them (otherwise the harness makes it version 2 with a fresh nonce,
//!   created now, and signs a deletion it carries: what a client does);
//! - with key choice 0: a length byte (`% 64`) and that many key bytes;
//! - the rest: the body (for a poll, the query string; for a raw request,
//!   `METHOD path\n` then the body).
//!
//! Checks, besides "never panics": no request gets a 5xx (a 500 means
//! storage broke or a stored record no longer parses); a signed reservation
//! that passes every rule of PROTOCOL.md (version, nonce, lifetime, data
//! size, node id, signed deletion) is accepted (201, or 409 when that very
//! signature was posted before) and one that breaks a rule is not; an
//! accepted one shows with its signature still verifying and is polled by
//! its node; a signed deletion of it is accepted and still verifies when
//! served; a result or a deletion confirmation signed by its node over its
//! signature is accepted (and the result is listed, verifying); a node
//! registration or uptime signed by the node with a fresh timestamp is
//! accepted; a poll answers only its node's reservations, in ascending
//! order, at most `limit`. Every request body is also parsed as each of the
//! explorer's body types and round-tripped.

#![no_main]

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use libfuzzer_sys::fuzz_target;
use reservation::api::{Created, DeleteRequest, DeletedConfirmation, ReservationView};
use reservation::node::{Capacity, NodeInfo, Registration, Uptime};
use reservation::{Identity, Reservation, WorkloadResult};
use tower::ServiceExt;

const MAX_BODY: usize = 64 << 10;

struct World {
    rt: tokio::runtime::Runtime,
    router: Router,
    user: Identity,
    node: Identity,
    /// The last reservation created in this run.
    last: Mutex<Option<Last>>,
}

/// The last reservation created in this run.
#[derive(Clone)]
struct Last {
    id: String,
    /// Its node is the harness node.
    ours: bool,
    /// The user's signature, which results, deletions and confirmations
    /// are bound to.
    signature: String,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        // tmpfs when there is one: every request is flushed.
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm/node-agent-explorer-fuzz")
        } else {
            std::env::temp_dir().join("node-agent-explorer-fuzz")
        };
        // Remove the stores of runs that are gone.
        if let Ok(entries) = std::fs::read_dir(&base) {
            for e in entries.flatten() {
                let pid = e.file_name().to_string_lossy().to_string();
                if !std::path::Path::new("/proc").join(&pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = explorer::ServerConfig::new(&dir);
        cfg.long_poll = Duration::ZERO;
        cfg.max_body = MAX_BODY;
        let router = explorer::router(&cfg).expect("explorer store opens");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        World {
            rt,
            router,
            user: Identity::from_seed(&[7; 32]),
            node: Identity::from_seed(&[9; 32]),
            last: Mutex::new(None),
        }
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Create,
    Show,
    PutResult,
    Delete,
    Poll,
    Results,
    PutDeleted,
    Register,
    Nodes,
    Uptime,
    Raw,
}

const OPS: [Op; 11] = [
    Op::Create,
    Op::Show,
    Op::PutResult,
    Op::Delete,
    Op::Poll,
    Op::Results,
    Op::PutDeleted,
    Op::Register,
    Op::Nodes,
    Op::Uptime,
    Op::Raw,
];

fn pct(key: &str) -> String {
    let mut s = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// `EXPLORER_FUZZ_TRACE=1` prints every request and its status (to see
/// which paths an input reaches when replaying it).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("EXPLORER_FUZZ_TRACE").is_some())
}

struct Answer {
    status: StatusCode,
    body: Vec<u8>,
}

fn send(w: &World, method: Method, uri: &str, body: Vec<u8>) -> Option<Answer> {
    let req = Request::builder()
        .method(method.clone())
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .ok()?;
    let resp =
        w.rt.block_on(w.router.clone().oneshot(req))
            .expect("the router is infallible");
    let status = resp.status();
    let body =
        w.rt.block_on(axum::body::to_bytes(resp.into_body(), 64 << 20))
            .expect("answer body")
            .to_vec();
    if trace() {
        eprintln!("{method} {uri} -> {status}");
    }
    assert!(
        !status.is_server_error(),
        "{method} {uri} answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    Some(Answer { status, body })
}

fn get<T: serde::de::DeserializeOwned>(w: &World, uri: &str) -> T {
    let a = send(w, Method::GET, uri, Vec::new()).expect("valid uri");
    assert_eq!(a.status, StatusCode::OK, "GET {uri}");
    serde_json::from_slice(&a.body).unwrap_or_else(|e| {
        panic!(
            "GET {uri} answer does not parse: {e}: {}",
            String::from_utf8_lossy(&a.body)
        )
    })
}

/// Parse `body` as a JSON object, let `edit` change it, re-serialize.
fn edit_object(
    body: &[u8],
    edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Option<String> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    edit(v.as_object_mut()?);
    serde_json::to_string(&v).ok()
}

fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned>(b: &[u8]) -> Option<T> {
    let v: T = serde_json::from_slice(b).ok()?;
    let text = serde_json::to_string(&v).expect("body type serializes");
    match serde_json::from_str::<T>(&text) {
        Ok(back) => Some(back),
        Err(e) => panic!(
            "{} does not parse back from {text}: {e}",
            std::any::type_name::<T>()
        ),
    }
}

fn check_body_types(b: &[u8]) {
    // The signed objects (`capacity`, `used`, `data`) are raw bytes: a
    // round trip must keep the signed message byte for byte.
    if let Some(reg) = roundtrip::<Registration>(b) {
        let first: Registration = serde_json::from_slice(b).unwrap();
        assert_eq!(reg.signing_message(), first.signing_message());
    }
    if let Some(up) = roundtrip::<Uptime>(b) {
        let first: Uptime = serde_json::from_slice(b).unwrap();
        assert_eq!(up.signing_message("n"), first.signing_message("n"));
    }
    if let Some(c) = roundtrip::<Capacity>(b) {
        let first: Capacity = serde_json::from_slice(b).unwrap();
        if first.invalid_field().is_none() {
            assert_eq!(c, first, "capacity round trip");
        }
    }
    roundtrip::<DeleteRequest>(b);
    roundtrip::<DeletedConfirmation>(b);
    if let Some(v) = roundtrip::<ReservationView>(b) {
        let first: ReservationView = serde_json::from_slice(b).unwrap();
        assert_eq!(
            v.reservation.signing_message(),
            first.reservation.signing_message()
        );
        let _ = v.reservation.verify();
    }
    if let Some(r) = roundtrip::<WorkloadResult>(b) {
        let first: WorkloadResult = serde_json::from_slice(b).unwrap();
        assert_eq!(r.signing_message("s"), first.signing_message("s"));
    }
}

/// Unix milliseconds, strictly increasing across calls: every signed node
/// message of the harness carries a fresh timestamp.
fn now_ms() -> i64 {
    use std::sync::atomic::{AtomicI64, Ordering};
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = chrono::Utc::now().timestamp_millis();
    let prev = LAST
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| Some(now.max(l + 1)))
        .unwrap();
    now.max(prev + 1)
}

/// Whether the explorer must accept `r` posted under `path_node`: every
/// rule of `POST /reservations/{node_id}` (the signature is the harness's
/// own). The lifetime is judged now and 5 s later, so that a reservation
/// at the edge of expiry is not asserted either way.
fn admissible(r: &Reservation, path_node: &str) -> bool {
    let now = chrono::Utc::now();
    let lifetime = Duration::from_secs(100 * 365 * 86_400);
    r.node_id == path_node
        && !path_node.is_empty()
        && reservation::identity::parse_public_key("node_id", path_node).is_ok()
        && !r.kind.is_empty()
        && r.data.get().len() <= explorer::MAX_DATA
        && r.check_version().is_ok()
        && r.verify().is_ok()
        && r.check_lifetime(now, lifetime).is_ok()
        && r.check_lifetime(now + chrono::Duration::seconds(5), lifetime)
            .is_ok()
        && (!(r.to_delete || r.delete_signature.is_some())
            || (r.to_delete && r.verify_delete().is_ok()))
}

/// Whether `r` breaks a rule for sure (whatever the clock does meanwhile).
fn inadmissible(r: &Reservation, path_node: &str) -> bool {
    let now = chrono::Utc::now();
    let lifetime = Duration::from_secs(100 * 365 * 86_400);
    // Failing at both ends means failing all along: a `created` too far
    // ahead at now + 5 s is too far ahead before; an expiry before now
    // stays one after.
    let before = r.check_lifetime(now, lifetime);
    let after = r.check_lifetime(now + chrono::Duration::seconds(5), lifetime);
    r.node_id != path_node
        || reservation::identity::parse_public_key("node_id", path_node).is_err()
        || r.kind.is_empty()
        || r.data.get().len() > explorer::MAX_DATA
        || r.check_version().is_err()
        || r.verify().is_err()
        || (before.is_err() && after.is_err())
        || ((r.to_delete || r.delete_signature.is_some())
            && !(r.to_delete && r.verify_delete().is_ok()))
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let [op, flags, rest @ ..] = data else { return };
    let op = OPS[*op as usize % OPS.len()];
    let sign = flags & 4 != 0;
    let to_node = flags & 8 != 0;
    let as_given = flags & 16 != 0;
    let last = w.last.lock().unwrap().clone();
    let (key, rest): (String, &[u8]) = match flags & 3 {
        0 => {
            let Some((&len, rest)) = rest.split_first() else {
                return;
            };
            let len = (len as usize % 64).min(rest.len());
            (
                String::from_utf8_lossy(&rest[..len]).into_owned(),
                &rest[len..],
            )
        }
        1 => (
            last.as_ref()
                .map(|l| l.id.clone())
                .unwrap_or_else(|| "1-1".into()),
            rest,
        ),
        2 => (w.node.id().to_string(), rest),
        _ => ("1-1".to_string(), rest),
    };
    // The path key is the last reservation created (so signatures over
    // its signature must be accepted).
    let mine = flags & 3 == 1 && last.is_some();
    let last_sig = last
        .as_ref()
        .map(|l| l.signature.clone())
        .unwrap_or_default();
    let body = rest.to_vec();
    check_body_types(&body);
    let k = pct(&key);

    match op {
        Op::Create => {
            let (path_key, path_node, body, signed) = if sign {
                let node_id = if to_node {
                    w.node.id().to_string()
                } else {
                    key.clone()
                };
                let signed = edit_object(&body, |o| {
                    o.entry("id").or_insert("".into());
                    o.insert("user_id".into(), w.user.id().into());
                    o.insert("node_id".into(), node_id.clone().into());
                    if !as_given {
                        // What a client does: version 2, a fresh nonce
                        // (filled in by `sign_reservation`), created now.
                        let now =
                            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                        o.insert("version".into(), reservation::PROTOCOL_VERSION.into());
                        o.remove("nonce");
                        o.insert("created".into(), now.into());
                    }
                })
                .and_then(|t| serde_json::from_str::<Reservation>(&t).ok())
                .map(|mut r| {
                    w.user.sign_reservation(&mut r);
                    if !as_given && r.to_delete {
                        r.delete_signature = Some(w.user.sign_delete(&r.signature));
                    }
                    r
                });
                match signed {
                    Some(r) => (
                        pct(&node_id),
                        node_id,
                        serde_json::to_vec(&r).unwrap(),
                        Some(r),
                    ),
                    None => (k, key.clone(), body, None),
                }
            } else {
                (k, key.clone(), body, None)
            };
            let (must, must_not) = match &signed {
                Some(r) => (admissible(r, &path_node), inadmissible(r, &path_node)),
                None => (false, false),
            };
            let Some(a) = send(
                w,
                Method::POST,
                &format!("/reservations/{path_key}"),
                body.clone(),
            ) else {
                return;
            };
            let Some(r) = signed else { return };
            let fits = body.len() <= MAX_BODY;
            if !fits || must_not {
                assert_ne!(
                    a.status,
                    StatusCode::CREATED,
                    "a reservation breaking a rule was accepted"
                );
                return;
            }
            if must {
                assert!(
                    a.status == StatusCode::CREATED || a.status == StatusCode::CONFLICT,
                    "a signed reservation was refused: {} {}",
                    a.status,
                    String::from_utf8_lossy(&a.body)
                );
            }
            if a.status != StatusCode::CREATED {
                return;
            }
            let created: Created = serde_json::from_slice(&a.body).expect("created answer");
            let view: ReservationView = get(w, &format!("/reservations/{}", pct(&created.id)));
            let served = view.reservation.clone();
            assert_eq!(served.signing_message(), r.signing_message());
            if let Err(e) = served.verify() {
                panic!("a stored reservation no longer verifies when served: {e}");
            }
            served
                .check_version()
                .expect("a stored reservation is version 2");
            let n = served.number().expect("assigned ids have a number");
            // The same signature again: a conflict, nothing stored.
            let again = send(
                w,
                Method::POST,
                &format!("/reservations/{path_key}"),
                body.clone(),
            )
            .expect("valid uri");
            assert_ne!(again.status, StatusCode::CREATED, "a replay was stored");
            if must {
                assert_eq!(
                    again.status,
                    StatusCode::CONFLICT,
                    "a replay was not a conflict"
                );
            }
            let polled: Vec<Reservation> = get(
                w,
                &format!(
                    "/reservations/{}/poll?from={n}&all=true&limit=1",
                    pct(&r.node_id)
                ),
            );
            assert_eq!(
                polled.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
                [created.id.as_str()],
                "a new reservation is the first of its node from its number"
            );
            polled[0].verify().expect("a polled reservation verifies");
            let polled: Vec<Reservation> = get(
                w,
                &format!("/reservations/{}/poll?from={n}", pct(&r.node_id)),
            );
            assert!(
                polled.iter().all(|p| p.node_id == r.node_id),
                "poll leaked another node's reservation"
            );
            *w.last.lock().unwrap() = Some(Last {
                id: created.id,
                ours: r.node_id == w.node.id(),
                signature: r.signature.clone(),
            });
        }
        Op::Show => {
            if let Some(a) = send(w, Method::GET, &format!("/reservations/{k}"), body) {
                if a.status == StatusCode::OK {
                    let v: ReservationView =
                        serde_json::from_slice(&a.body).expect("a shown reservation parses");
                    v.reservation
                        .verify()
                        .expect("every stored reservation verifies");
                }
            }
        }
        Op::PutResult => {
            let ours = mine && last.as_ref().is_some_and(|l| l.ours);
            let (body, signed) = if sign {
                let r = edit_object(&body, |o| {
                    o.insert("id".into(), key.clone().into());
                })
                .and_then(|t| serde_json::from_str::<WorkloadResult>(&t).ok())
                .map(|mut r| {
                    r.signature = w.node.sign(&r.signing_message(&last_sig));
                    r
                });
                match r {
                    Some(r) => (serde_json::to_vec(&r).unwrap(), Some(r)),
                    None => (body, None),
                }
            } else {
                (body, None)
            };
            let fits = body.len() <= MAX_BODY;
            let Some(a) = send(w, Method::PUT, &format!("/reservations/{k}"), body) else {
                return;
            };
            if a.status == StatusCode::OK {
                // Only a result the reservation's node signed over its
                // signature is accepted: the harness node signs over the
                // last reservation's signature only.
                let v: ReservationView = get(w, &format!("/reservations/{k}"));
                assert!(
                    signed.is_some() && v.signature == last_sig && v.node_id == w.node.id(),
                    "a result not signed by the node for this reservation was accepted"
                );
            }
            if let (Some(r), true, true) = (signed, ours, fits) {
                assert_eq!(
                    a.status,
                    StatusCode::OK,
                    "a result signed by the node was refused: {}",
                    String::from_utf8_lossy(&a.body)
                );
                let all: Vec<WorkloadResult> = get(w, &format!("/reservations/{k}/results"));
                let stored = all
                    .iter()
                    .find(|x| x.signature == r.signature)
                    .expect("an accepted result is listed");
                stored
                    .verify(w.node.id(), &last_sig)
                    .expect("a stored result verifies when served");
            }
        }
        Op::Delete => {
            let body = if sign {
                // Over the last reservation's signature when the path is
                // that reservation, else over the key (never a signature).
                let over = if mine { last_sig.clone() } else { key.clone() };
                serde_json::to_vec(&DeleteRequest {
                    delete_signature: w.user.sign_delete(&over),
                })
                .unwrap()
            } else {
                body
            };
            let Some(a) = send(w, Method::DELETE, &format!("/reservations/{k}"), body) else {
                return;
            };
            if sign && mine {
                assert_eq!(a.status, StatusCode::OK, "a signed deletion was refused");
            }
            if a.status == StatusCode::OK {
                assert!(sign, "an unsigned deletion was accepted");
                let v: ReservationView = get(w, &format!("/reservations/{k}"));
                let r = &v.reservation;
                assert!(r.to_delete);
                r.verify_delete()
                    .expect("a stored deletion verifies when served");
                r.verify().expect("a deleted reservation still verifies");
            }
        }
        Op::Poll => {
            let q = String::from_utf8_lossy(&body).replace(['#', ' '], "");
            if let Some(a) = send(
                w,
                Method::GET,
                &format!("/reservations/{k}/poll?{q}"),
                Vec::new(),
            ) {
                assert_ne!(
                    a.status,
                    StatusCode::TOO_MANY_REQUESTS,
                    "an in-process poll is never held"
                );
                if a.status == StatusCode::OK {
                    let list: Vec<Reservation> =
                        serde_json::from_slice(&a.body).expect("a poll answer parses");
                    assert!(
                        list.iter().all(|r| r.node_id == key),
                        "poll leaked another node's reservation"
                    );
                    assert!(list.len() <= explorer::MAX_POLL_LIMIT);
                    let numbers: Vec<u64> = list.iter().filter_map(|r| r.number()).collect();
                    assert!(
                        numbers.windows(2).all(|p| p[0] < p[1]),
                        "poll answer not ascending: {numbers:?}"
                    );
                }
            }
        }
        Op::Results => {
            if let Some(a) = send(w, Method::GET, &format!("/reservations/{k}/results"), body) {
                if a.status == StatusCode::OK {
                    let _: Vec<WorkloadResult> =
                        serde_json::from_slice(&a.body).expect("results parse");
                }
            }
        }
        Op::PutDeleted => {
            let ours = mine && last.as_ref().is_some_and(|l| l.ours);
            let body = if sign {
                serde_json::to_vec(&DeletedConfirmation {
                    signature: w.node.sign_deleted(&key, &last_sig),
                })
                .unwrap()
            } else {
                body
            };
            let Some(a) = send(w, Method::PUT, &format!("/reservations/{k}/deleted"), body) else {
                return;
            };
            if sign && ours {
                assert_eq!(
                    a.status,
                    StatusCode::OK,
                    "a deletion confirmation signed by the node was refused: {}",
                    String::from_utf8_lossy(&a.body)
                );
            }
            if a.status == StatusCode::OK {
                let v: ReservationView = get(w, &format!("/reservations/{k}"));
                assert!(v.deleted);
                assert!(
                    sign && v.node_id == w.node.id(),
                    "an unsigned deletion confirmation was accepted"
                );
            }
        }
        Op::Register => {
            let signed = if sign {
                edit_object(&body, |o| {
                    o.insert("node_id".into(), w.node.id().into());
                    o.insert("timestamp".into(), now_ms().into());
                })
                .and_then(|t| serde_json::from_str::<Registration>(&t).ok())
                .map(|mut r| {
                    r.signature = w.node.sign(&r.signing_message());
                    r
                })
            } else {
                None
            };
            let body = match &signed {
                Some(r) => serde_json::to_vec(r).unwrap(),
                None => body,
            };
            let fits = body.len() <= MAX_BODY;
            let Some(a) = send(w, Method::POST, "/nodes", body) else {
                return;
            };
            if let (Some(r), true) = (signed, fits) {
                let cap_ok = serde_json::from_str::<Capacity>(r.capacity.get())
                    .is_ok_and(|c| c.invalid_field().is_none());
                if cap_ok && !r.url.trim().is_empty() {
                    assert_eq!(
                        a.status,
                        StatusCode::CREATED,
                        "a registration signed by the node was refused: {}",
                        String::from_utf8_lossy(&a.body)
                    );
                }
            } else {
                assert_ne!(
                    a.status,
                    StatusCode::CREATED,
                    "an unsigned registration was accepted"
                );
            }
        }
        Op::Nodes => {
            if let Some(a) = send(w, Method::GET, "/nodes", Vec::new()) {
                let _: Vec<NodeInfo> =
                    serde_json::from_slice(&a.body).expect("the node list parses");
            }
        }
        Op::Uptime => {
            let signed = if sign {
                edit_object(&body, |o| {
                    o.insert("timestamp".into(), now_ms().into());
                })
                .and_then(|t| serde_json::from_str::<Uptime>(&t).ok())
                .map(|mut u| {
                    u.signature = w.node.sign(&u.signing_message(&key));
                    u
                })
            } else {
                None
            };
            let body = match &signed {
                Some(u) => serde_json::to_vec(u).unwrap(),
                None => body,
            };
            let fits = body.len() <= MAX_BODY;
            let Some(a) = send(w, Method::POST, &format!("/nodes/{k}/uptime"), body) else {
                return;
            };
            match signed {
                Some(u) if fits && key == w.node.id() => {
                    let used_ok = serde_json::from_str::<Capacity>(u.used.get())
                        .is_ok_and(|c| c.invalid_field().is_none());
                    if used_ok {
                        // 404 until the harness node registered.
                        assert!(
                            a.status == StatusCode::OK || a.status == StatusCode::NOT_FOUND,
                            "an uptime signed by the node was refused: {} {}",
                            a.status,
                            String::from_utf8_lossy(&a.body)
                        );
                    }
                }
                Some(_) => {}
                None => assert_ne!(a.status, StatusCode::OK, "an unsigned uptime was accepted"),
            }
        }
        Op::Raw => {
            let (head, body) = match body.iter().position(|&b| b == b'\n') {
                Some(i) => (&body[..i], body[i + 1..].to_vec()),
                None => (&body[..], Vec::new()),
            };
            let head = String::from_utf8_lossy(head);
            let (m, path) = head.split_once(' ').unwrap_or(("GET", &head));
            let Ok(method) = Method::from_bytes(m.as_bytes()) else {
                return;
            };
            if !path.starts_with('/') {
                return;
            }
            send(w, method, path, body);
        }
    }
});
