//! Fuzz target: the explorer's HTTP handlers, driven in-process through
//! `explorer::router` (the real routes, extractors and sled store on a
//! tmpfs directory; no socket).
//!
//! Input layout (bytes):
//! - `op`: which request (see [`Op`], `op % 11`);
//! - `flags`: bits 0-1 choose the path key (0: from the input, 1: the id of
//!   the last reservation this run created, 2: the harness node's id,
//!   3: `"1-1"`), bit 2 signs the body with the harness's keys (so signed
//!   paths are reached, not just refusals), bit 3 addresses a created
//!   reservation to the harness node;
//! - with key choice 0: a length byte (`% 64`) and that many key bytes;
//! - the rest: the body (for a poll, the query string; for a raw request,
//!   `METHOD path\n` then the body).
//!
//! Checks, besides "never panics": no request gets a 5xx (a 500 means
//! storage broke or a stored record no longer parses); a correctly signed
//! reservation for the path's node is accepted (201), shows with its
//! signature still verifying, and is polled by its node; a signed deletion
//! of it is accepted and still verifies when served; a result signed by
//! the reservation's node is accepted and listed. Every request body is
//! also parsed as each of the explorer's body types and round-tripped.

#![no_main]

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use explorer::api::{Capacity, Created, DeleteRequest, NodeRegistration, ReservationView, Uptime};
use libfuzzer_sys::fuzz_target;
use reservation::{Identity, Reservation, WorkloadResult};
use tower::ServiceExt;

const MAX_BODY: usize = 64 << 10;

struct World {
    rt: tokio::runtime::Runtime,
    router: Router,
    user: Identity,
    node: Identity,
    /// The last reservation created in this run, and whether its node is
    /// the harness node.
    last: Mutex<Option<(String, bool)>>,
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
    if let Some(reg) = roundtrip::<NodeRegistration>(b) {
        let first: NodeRegistration = serde_json::from_slice(b).unwrap();
        if first.capacity.invalid_field().is_none() {
            assert_eq!(reg.capacity, first.capacity, "capacity round trip");
        }
    }
    if let Some(up) = roundtrip::<Uptime>(b) {
        let first: Uptime = serde_json::from_slice(b).unwrap();
        if first.used.and_then(|u| u.invalid_field()).is_none() {
            assert_eq!(up.used, first.used, "used round trip");
        }
    }
    roundtrip::<Capacity>(b);
    roundtrip::<DeleteRequest>(b);
    if let Some(v) = roundtrip::<ReservationView>(b) {
        let _ = v.reservation().verify();
    }
    if let Some(r) = roundtrip::<WorkloadResult>(b) {
        let first: WorkloadResult = serde_json::from_slice(b).unwrap();
        assert_eq!(r.signing_message(), first.signing_message());
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let [op, flags, rest @ ..] = data else { return };
    let op = OPS[*op as usize % OPS.len()];
    let sign = flags & 4 != 0;
    let to_node = flags & 8 != 0;
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
                .map(|l| l.0.clone())
                .unwrap_or_else(|| "1-1".into()),
            rest,
        ),
        2 => (w.node.id().to_string(), rest),
        _ => ("1-1".to_string(), rest),
    };
    let body = rest.to_vec();
    check_body_types(&body);
    let k = pct(&key);

    match op {
        Op::Create => {
            let (path_key, body, signed) = if sign {
                let node_id = if to_node {
                    w.node.id().to_string()
                } else {
                    key.clone()
                };
                let signed = edit_object(&body, |o| {
                    o.entry("id").or_insert("".into());
                    o.insert("user_id".into(), w.user.id().into());
                    o.insert("node_id".into(), node_id.clone().into());
                })
                .and_then(|t| serde_json::from_str::<Reservation>(&t).ok())
                .map(|mut r| {
                    w.user.sign_reservation(&mut r);
                    r
                });
                match signed {
                    Some(r) => (pct(&node_id), serde_json::to_vec(&r).unwrap(), Some(r)),
                    None => (k, body, None),
                }
            } else {
                (k, body, None)
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
            // An empty node id leaves no path segment: no route, 404.
            if !fits || r.kind.is_empty() || r.node_id.is_empty() {
                assert_ne!(a.status, StatusCode::CREATED);
                return;
            }
            assert_eq!(
                a.status,
                StatusCode::CREATED,
                "a signed reservation was refused: {}",
                String::from_utf8_lossy(&a.body)
            );
            let created: Created = serde_json::from_slice(&a.body).expect("created answer");
            let view: ReservationView = get(w, &format!("/reservations/{}", pct(&created.id)));
            let served = view.reservation();
            assert_eq!(served.signing_message(), r.signing_message());
            if let Err(e) = served.verify() {
                panic!("a stored reservation no longer verifies when served: {e}");
            }
            let n = served.number().expect("assigned ids have a number");
            let polled: Vec<Reservation> = get(
                w,
                &format!("/reservations/{}/poll?from={n}", pct(&r.node_id)),
            );
            assert!(
                polled.iter().all(|p| p.node_id == r.node_id),
                "poll leaked another node's reservation"
            );
            let mine = polled.iter().find(|p| p.id == created.id);
            if !r.is_expired(chrono::Utc::now()) || r.to_delete {
                let mine = mine.expect("a live reservation is polled by its node");
                mine.verify().expect("a polled reservation verifies");
            }
            *w.last.lock().unwrap() = Some((created.id, r.node_id == w.node.id()));
        }
        Op::Show => {
            if let Some(a) = send(w, Method::GET, &format!("/reservations/{k}"), body) {
                if a.status == StatusCode::OK {
                    let v: ReservationView =
                        serde_json::from_slice(&a.body).expect("a shown reservation parses");
                    let _ = v.reservation().verify();
                }
            }
        }
        Op::PutResult => {
            let ours = flags & 3 == 1 && last.as_ref().is_some_and(|l| l.1);
            let (body, signed) = if sign {
                let r = edit_object(&body, |o| {
                    o.insert("id".into(), key.clone().into());
                })
                .and_then(|t| serde_json::from_str::<WorkloadResult>(&t).ok())
                .map(|mut r| {
                    r.signature = w.node.sign(&r.signing_message());
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
                    .verify(w.node.id())
                    .expect("a stored result verifies when served");
            }
        }
        Op::Delete => {
            let mine = flags & 3 == 1 && last.is_some();
            let body = if sign {
                serde_json::to_vec(&DeleteRequest {
                    delete_signature: w.user.sign_delete(&key),
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
                let v: ReservationView = get(w, &format!("/reservations/{k}"));
                let r = v.reservation();
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
                if a.status == StatusCode::OK {
                    let list: Vec<Reservation> =
                        serde_json::from_slice(&a.body).expect("a poll answer parses");
                    assert!(
                        list.iter().all(|r| r.node_id == key),
                        "poll leaked another node's reservation"
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
            send(w, Method::PUT, &format!("/reservations/{k}/deleted"), body);
        }
        Op::Register => {
            let body = if sign {
                edit_object(&body, |o| {
                    o.insert("node_id".into(), w.node.id().into());
                })
                .map(String::into_bytes)
                .unwrap_or(body)
            } else {
                body
            };
            send(w, Method::POST, "/nodes", body);
        }
        Op::Nodes => {
            if let Some(a) = send(w, Method::GET, "/nodes", Vec::new()) {
                let _: Vec<explorer::NodeInfo> =
                    serde_json::from_slice(&a.body).expect("the node list parses");
            }
        }
        Op::Uptime => {
            send(w, Method::POST, &format!("/nodes/{k}/uptime"), body);
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
