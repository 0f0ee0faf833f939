//! The built `explorer` binary as a user runs it: keygen, reserve (with
//! secrets sealed for the node), get, delete, nodes, `serve` and SIGTERM,
//! and the exit codes (1 refused, 2 unreachable).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use common::{cap, heartbeat, ids, poll, register, registration, start, uptime, volume};
use explorer::ReservationView;
use reservation::{Identity, Reservation, ResultState, Workload, WorkloadResult, WorkloadType};
use serde_json::json;
use serde_json::value::RawValue;

const BIN: &str = env!("CARGO_BIN_EXE_explorer");

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(explorer: &str, key: &Path, args: &[&str]) -> Run {
    let out: Output = tokio::process::Command::new(BIN)
        .args(["--explorer", explorer, "--key"])
        .arg(key)
        .args(args)
        .env_remove("EXPLORER_URL")
        .env_remove("EXPLORER_KEY")
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_reserve_get_delete_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir.path().join("db"), Duration::from_secs(2)).await;
    let key = dir.path().join("keys/user.seed");
    let node = Identity::generate();
    let c = reqwest::Client::new();

    // keygen: a 0600 seed, the user id printed; no silent overwrite.
    let r = run(&s.url, &key, &["keygen"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let user = Identity::load_or_create(&key).unwrap();
    assert_eq!(r.stdout.trim(), user.id());
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let r = run(&s.url, &key, &["keygen"]).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("--force") && r.stderr.contains(user.id()),
        "{}",
        r.stderr
    );
    assert_eq!(Identity::load_or_create(&key).unwrap().id(), user.id());

    // reserve volume.
    let r = run(
        &s.url,
        &key,
        &[
            "reserve",
            "volume",
            "--node",
            node.id(),
            "--size",
            "2",
            "--type",
            "HDD",
            "--duration",
            "30m",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "1-1");
    assert!(r.stderr.contains("explorer get 1-1"), "{}", r.stderr);
    let list = poll(&c, &s.url, node.id(), 0).await;
    assert_eq!(ids(&list), ["1-1"]);
    let res = &list[0];
    res.verify().unwrap();
    // Version 2, with a fresh random nonce.
    res.check_version().unwrap();
    assert_eq!(res.version, 2);
    assert_eq!(res.nonce.len(), 32, "{}", res.nonce);
    assert_eq!(
        (res.user_id.as_str(), res.kind.as_str()),
        (user.id(), "volume")
    );
    assert_eq!(res.duration, 30 * 60 * 1_000_000_000);
    let age = (Utc::now() - res.created.unwrap()).num_seconds();
    assert!((0..30).contains(&age), "{age}");
    match Workload::parse(WorkloadType::Volume, &res.data).unwrap() {
        Workload::Volume(v) => assert_eq!((v.size, v.disk_type.as_str()), (2, "HDD")),
        w => panic!("{w:?}"),
    }

    // get: pretty JSON, and the verdicts.
    let r = run(&s.url, &key, &["get", "1-1"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["id"], "1-1");
    assert!(
        r.stdout.contains("\n  \"id\": \"1-1\""),
        "pretty: {}",
        r.stdout
    );
    assert!(
        r.stderr.contains("user signature: verifies"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("result: none yet"), "{}", r.stderr);

    let result = node.error_result(res, "not enough HDD: asked 2 GiB, 0 GiB free");
    let resp = c
        .put(format!("{}/reservations/1-1", s.url))
        .json(&result)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = run(&s.url, &key, &["get", "1-1"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("result: error: not enough HDD")
            && r.stderr.contains("node signature verifies")
            && r.stderr.contains("for this reservation"),
        "{}",
        r.stderr
    );

    // delete: fetches the reservation and signs over its signature.
    let r = run(&s.url, &key, &["delete", "1-1"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let view: ReservationView = c
        .get(format!("{}/reservations/1-1", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(view.to_delete);
    view.reservation.verify_delete().unwrap();
    assert_eq!(
        view.delete_signature.as_deref(),
        Some(user.sign_delete(&res.signature).as_str())
    );
    assert!(
        r.stderr.contains("deleting the volume reservation 1-1"),
        "{}",
        r.stderr
    );
    let r = run(&s.url, &key, &["get", "1-1"]).await;
    assert!(
        r.stderr.contains("deletion: requested and signed"),
        "{}",
        r.stderr
    );

    // Someone else's key cannot delete it: refused before anything is
    // signed, exit 1.
    let other = dir.path().join("other.seed");
    assert_eq!(run(&s.url, &other, &["keygen"]).await.code, 0);
    let mallory = Identity::load_or_create(&other).unwrap();
    let second = volume(&user, node.id());
    assert_eq!(common::post(&c, &s.url, &second).await, "2-1");
    let r = run(&s.url, &other, &["delete", "2-1"]).await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains(&format!("reservation 2-1 belongs to user {}", user.id()))
            && r.stderr.contains(mallory.id())
            && r.stderr.contains("only its user can delete it"),
        "{}",
        r.stderr
    );
    let view: ReservationView = c
        .get(format!("{}/reservations/2-1", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!view.to_delete);
    let r = run(&s.url, &key, &["get", "99-1"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("404"), "{}", r.stderr);

    // nodes: the table, with the loopback flag.
    let r = run(&s.url, &key, &["nodes"]).await;
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, "no node registered yet (an agent registers at start)")
    );
    for (n, url) in [
        (&node, "http://127.0.0.1:9000"),
        (&Identity::generate(), "http://10.0.0.7:9000"),
    ] {
        let (st, msg) = register(&c, &s.url, &registration(n, url)).await;
        assert_eq!(st, 201, "{msg}");
    }
    let (st, msg) = heartbeat(&c, &s.url, node.id(), &uptime(&node, 10, cap(2, 4, 2, 0))).await;
    assert_eq!(st, 200, "{msg}");
    let r = run(&s.url, &key, &["nodes"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    assert!(
        lines[0].starts_with("NODE ID") && lines[0].contains("LAST HEARTBEAT"),
        "{}",
        r.stdout
    );
    let mine = lines.iter().find(|l| l.starts_with(node.id())).unwrap();
    assert!(
        mine.contains("s ago") && mine.contains("2/8") && mine.contains("4/16"),
        "{mine}"
    );
    assert!(
        mine.ends_with("(loopback: unreachable from other nodes)"),
        "{mine}"
    );
    let theirs = lines.iter().find(|l| l.contains("10.0.0.7")).unwrap();
    assert!(
        theirs.contains("never") && !theirs.contains("loopback"),
        "{theirs}"
    );
    let r = run(&s.url, &key, &["nodes", "--json"]).await;
    let v: Vec<explorer::NodeInfo> = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v.len(), 2);
    s.stop().await;
}

/// A stand-in explorer (the explorer is not trusted): it answers every
/// `GET /reservations/{id}` with the JSON in `view`, and records the body
/// of every `DELETE`.
struct Fake {
    url: String,
    view: Arc<Mutex<String>>,
    deletes: Arc<Mutex<Vec<String>>>,
}

async fn fake_explorer() -> Fake {
    use axum::routing::get;
    let view = Arc::new(Mutex::new(String::new()));
    let deletes = Arc::new(Mutex::new(Vec::new()));
    let (v, d) = (view.clone(), deletes.clone());
    let app = axum::Router::new().route(
        "/reservations/:id",
        get(move || {
            let body = v.lock().unwrap().clone();
            async move { ([("content-type", "application/json")], body) }
        })
        .delete(move |body: String| {
            d.lock().unwrap().push(body);
            async { "" }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Fake { url, view, deletes }
}

impl Fake {
    fn serve(&self, r: &Reservation, result: Option<WorkloadResult>) {
        let v = ReservationView::new(r, result, false);
        *self.view.lock().unwrap() = serde_json::to_string(&v).unwrap();
    }
}

/// `get` checks the result against the node and this reservation's
/// signature, and says so plainly when it does not verify; `delete` signs
/// nothing for a reservation that does not carry the user's signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_delete_check_what_the_explorer_serves() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("user.seed");
    let user = Identity::load_or_create(&key).unwrap();
    let node = Identity::generate();
    let fake = fake_explorer().await;
    let mut r = volume(&user, node.id());
    r.id = "1-1".into();
    let mut other = volume(&user, node.id());
    other.id = "2-1".into();
    let null = || RawValue::from_string("null".into()).unwrap();

    // A good result: verifies, exit 0.
    fake.serve(
        &r,
        Some(node.ok_result(&r, &json!({"volume_id": "1-1"})).unwrap()),
    );
    let out = run(&fake.url, &key, &["get", "1-1"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("result: ok; node signature verifies"),
        "{}",
        out.stderr
    );

    // Signed by the node, but for the other reservation's signature and
    // shown under this id: refused, exit 1.
    let moved = node.sign_result(
        "volume",
        "1-1",
        &other.signature,
        ResultState::Ok,
        String::new(),
        null(),
    );
    fake.serve(&r, Some(moved));
    let out = run(&fake.url, &key, &["get", "1-1"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("result: ok; node signature DOES NOT VERIFY for this reservation")
            && out.stderr.contains("do not trust it")
            && out
                .stderr
                .contains("reservation 1-1: a signature does not verify"),
        "{}",
        out.stderr
    );
    // Signed by someone else.
    fake.serve(&r, Some(Identity::generate().error_result(&r, "nope")));
    let out = run(&fake.url, &key, &["get", "1-1"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("DOES NOT VERIFY"), "{}", out.stderr);
    // The other reservation's genuine result shown with this one.
    fake.serve(&r, Some(node.error_result(&other, "disk full")));
    let out = run(&fake.url, &key, &["get", "1-1"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("it is about \"2-1\", NOT this reservation \"1-1\""),
        "{}",
        out.stderr
    );
    // A version 1 reservation: nodes refuse it, and get says so.
    let mut v1 = r.clone();
    v1.version = 0;
    v1.nonce.clear();
    fake.serve(&v1, None);
    let out = run(&fake.url, &key, &["get", "1-1"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "version: NOT ACCEPTED by nodes: version: protocol version 1 is not accepted"
        ),
        "{}",
        out.stderr
    );

    // delete: a served reservation that does not verify gets no signature.
    let mut tampered = r.clone();
    tampered.duration *= 1000;
    fake.serve(&tampered, None);
    let out = run(&fake.url, &key, &["delete", "1-1"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "reservation 1-1 as the explorer shows it does not carry your valid signature"
        ) && out.stderr.contains("nothing was signed"),
        "{}",
        out.stderr
    );
    assert!(fake.deletes.lock().unwrap().is_empty());
    // A genuine one: the deletion signs its signature.
    fake.serve(&r, None);
    let out = run(&fake.url, &key, &["delete", "1-1"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let sent = fake.deletes.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&sent[0]).unwrap();
    assert_eq!(
        body["delete_signature"],
        json!(user.sign_delete(&r.signature))
    );
    let mut check = r.clone();
    check.delete_signature = Some(body["delete_signature"].as_str().unwrap().into());
    check.verify_delete().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_seals_secrets_for_the_node_and_fills_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(&dir.path().join("db"), Duration::from_secs(2)).await;
    let key = dir.path().join("user.seed");
    assert_eq!(run(&s.url, &key, &["keygen"]).await.code, 0);
    let node = Identity::generate();
    let c = reqwest::Client::new();
    let r = run(
        &s.url,
        &key,
        &[
            "reserve",
            "container",
            "--node",
            node.id(),
            "--flist",
            "busybox:latest",
            "--flist-storage",
            "https://hub.example.org",
            "--env",
            "A=b=c",
            "--secret-env",
            "TOKEN=s3cr3t-value",
            "--entrypoint",
            "sh -c 'sleep 60'",
            "--interactive",
            "--mount",
            "vol1:/data",
            "--network-id",
            "net",
            "--ip",
            "10.1.1.5",
            "--public-ip6",
            "--cpu",
            "2",
            "--memory",
            "128",
            "--port",
            "8080:80",
            "--port",
            "5353:53/udp",
            "--duration",
            "2h",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(
        &s.url,
        &key,
        &[
            "reserve",
            "zdb",
            "--node",
            node.id(),
            "--size",
            "3",
            "--mode",
            "seq",
            "--password",
            "zpass-plain",
            "--disk-type",
            "HDD",
            "--public",
        ],
    )
    .await;
    assert_eq!((r.code, r.stdout.trim()), (0, "2-1"), "{}", r.stderr);
    let r = run(
        &s.url,
        &key,
        &[
            "reserve",
            "kubernetes",
            "--node",
            node.id(),
            "--size",
            "2",
            "--network-id",
            "net",
            "--ip",
            "10.1.1.9",
            "--cluster-secret",
            "k8s-plain",
            "--master-ip",
            "10.1.1.2",
            "--ssh-key",
            "ssh-ed25519 AAAA me",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(
        &s.url,
        &key,
        &[
            "reserve",
            "network",
            "--node",
            node.id(),
            "--name",
            "net",
            "--ip-range",
            "10.1.0.0/16",
            "--subnet",
            "10.1.1.0/24",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(
        &s.url,
        &key,
        &[
            "reserve",
            "debug",
            "--node",
            node.id(),
            "--host",
            "10.0.0.1",
            "--port",
            "6379",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);

    let list = poll(&c, &s.url, node.id(), 0).await;
    assert_eq!(ids(&list), ["1-1", "2-1", "3-1", "4-1", "5-1"]);
    let all_text = c
        .get(format!("{}/reservations/{}/poll?from=0", s.url, node.id()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for plain in ["s3cr3t-value", "zpass-plain", "k8s-plain"] {
        assert!(!all_text.contains(plain), "{plain} sent in plaintext");
    }
    for r in &list {
        r.verify().unwrap();
        r.check_version().unwrap();
    }
    let nonces: std::collections::HashSet<&str> = list.iter().map(|r| r.nonce.as_str()).collect();
    assert_eq!(nonces.len(), list.len(), "a fresh nonce each");
    let parsed: Vec<Workload> = list
        .iter()
        .map(|r| Workload::parse(r.workload_type().unwrap(), &r.data).unwrap())
        .collect();
    let Workload::Container(ct) = &parsed[0] else {
        panic!()
    };
    assert_eq!(list[0].duration, 2 * 3600 * 1_000_000_000);
    assert_eq!(ct.flist, "busybox:latest");
    assert_eq!(ct.flist_storage, "https://hub.example.org");
    assert_eq!(ct.env["A"], "b=c");
    assert_eq!(
        node.open_sealed("TOKEN", &ct.secret_env["TOKEN"])
            .unwrap()
            .expose(),
        "s3cr3t-value"
    );
    assert_eq!(ct.entrypoint, "sh -c 'sleep 60'");
    assert!(ct.interactive && ct.network.public_ip6);
    assert_eq!(
        (
            ct.mounts[0].volume_id.as_str(),
            ct.mounts[0].mountpoint.as_str()
        ),
        ("vol1", "/data")
    );
    assert_eq!(ct.network.network_id, "net");
    assert_eq!(
        ct.network.ips,
        ["10.1.1.5".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    assert_eq!((ct.capacity.cpu, ct.capacity.memory), (2, 128));
    assert_eq!(
        (
            ct.ports[0].host_port,
            ct.ports[0].container_port,
            ct.ports[0].protocol.as_str()
        ),
        (8080, 80, "tcp")
    );
    assert_eq!(
        (ct.ports[1].host_port, ct.ports[1].protocol.as_str()),
        (5353, "udp")
    );
    let Workload::Zdb(z) = &parsed[1] else {
        panic!()
    };
    assert_eq!(
        (z.size, z.mode.as_str(), z.disk_type.as_str(), z.public),
        (3, "seq", "HDD", true)
    );
    assert_eq!(
        node.open_sealed("password", &z.password).unwrap().expose(),
        "zpass-plain"
    );
    let Workload::Kubernetes(k) = &parsed[2] else {
        panic!()
    };
    assert_eq!(
        (k.size, k.network_id.as_str(), k.ip.to_string()),
        (2, "net", "10.1.1.9".into())
    );
    assert_eq!(
        node.open_sealed("cluster_secret", &k.cluster_secret)
            .unwrap()
            .expose(),
        "k8s-plain"
    );
    assert_eq!(
        (k.master_ips[0].to_string(), k.ssh_keys[0].as_str()),
        ("10.1.1.2".into(), "ssh-ed25519 AAAA me")
    );
    let Workload::Network(n) = &parsed[3] else {
        panic!()
    };
    assert_eq!(n.subnet_for(node.id()).unwrap().to_string(), "10.1.1.0/24");
    let Workload::Debug(d) = &parsed[4] else {
        panic!()
    };
    assert_eq!(
        (d.host.as_str(), d.port, d.channel.as_str()),
        ("10.0.0.1", 6379, "")
    );

    // --data: sent byte for byte, not judged by the CLI.
    let raw = r#"{"size": 0,  "type":"TAPE"}"#;
    let r = run(
        &s.url,
        &key,
        &["reserve", "volume", "--node", node.id(), "--data", raw],
    )
    .await;
    assert_eq!((r.code, r.stdout.trim()), (0, "6-1"), "{}", r.stderr);
    let list = poll(&c, &s.url, node.id(), 6).await;
    assert_eq!(list[0].data.get(), raw);
    list[0].verify().unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_say_refused_or_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("user.seed");
    let node = Identity::generate();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("http://127.0.0.1:{port}");

    let r = run(&dead, &key, &["get", "1-1"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains(&dead) && r.stderr.contains("--explorer"),
        "{}",
        r.stderr
    );
    let r = run(&dead, &key, &["nodes"]).await;
    assert_eq!(r.code, 2);

    // A flag before the command wins over EXPLORER_URL (flag, then env).
    let out = tokio::process::Command::new(BIN)
        .args(["--explorer", &dead, "nodes"])
        .env("EXPLORER_URL", "http://127.0.0.1:9/from-env")
        .env_remove("EXPLORER_KEY")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&dead) && !err.contains("from-env"), "{err}");

    // No key yet: says how to make one.
    let r = run(
        &dead,
        &key,
        &["reserve", "volume", "--node", node.id(), "--size", "1"],
    )
    .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("explorer keygen") && r.stderr.contains("--key"),
        "{}",
        r.stderr
    );
    assert_eq!(run(&dead, &key, &["keygen"]).await.code, 0);
    let r = run(
        &dead,
        &key,
        &["reserve", "volume", "--node", node.id(), "--size", "1"],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.stderr);

    // Mistakes caught before anything is sent.
    let r = run(
        &dead,
        &key,
        &["reserve", "volume", "--node", "nope", "--size", "1"],
    )
    .await;
    assert!(r.code == 1 && r.stderr.contains("--node"), "{}", r.stderr);
    let r = run(
        &dead,
        &key,
        &[
            "reserve",
            "volume",
            "--node",
            node.id(),
            "--size",
            "1",
            "--type",
            "TAPE",
        ],
    )
    .await;
    assert!(r.code == 1 && r.stderr.contains("TAPE"), "{}", r.stderr);
    let r = run(
        &dead,
        &key,
        &[
            "reserve",
            "volume",
            "--node",
            node.id(),
            "--size",
            "1",
            "--duration",
            "5",
        ],
    )
    .await;
    assert!(r.code == 1 && r.stderr.contains("unit"), "{}", r.stderr);
    let r = run(
        &dead,
        &key,
        &[
            "reserve",
            "container",
            "--node",
            node.id(),
            "--flist",
            "x",
            "--port",
            "80",
        ],
    )
    .await;
    assert!(
        r.code == 1 && r.stderr.contains("HOST:CONTAINER"),
        "{}",
        r.stderr
    );
    let r = run(&dead, &key, &["reserve", "volume", "--node", node.id()]).await;
    assert!(r.code == 1 && r.stderr.contains("--size"), "{}", r.stderr);
    let r = run(
        &dead,
        &key,
        &[
            "reserve",
            "volume",
            "--node",
            node.id(),
            "--size",
            "1",
            "--data",
            "{}",
        ],
    )
    .await;
    assert!(
        r.code == 1 && r.stderr.contains("cannot be used with"),
        "{}",
        r.stderr
    );
    let r = run(&dead, &key, &["--bogus"]).await;
    assert_eq!(r.code, 1);
    let r = run(&dead, &key, &["--help"]).await;
    assert!(
        r.code == 0 && r.stdout.contains("Examples:") && r.stdout.contains("Exit codes"),
        "{}",
        r.stdout
    );
}

/// On a busy explorer (PostgreSQL, its queue of posts full while the
/// database lags) `reserve` says "explorer busy, retry after 1 s" and exits
/// 2 (try again later), having stored nothing; once the database moves,
/// the same command reserves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_on_a_busy_explorer_says_retry_after_and_exits_2() {
    let store = common::Backend::Postgres.store().await;
    let s = common::start_with(explorer::ServerConfig {
        max_queued_posts: 1,
        long_poll: Duration::from_secs(1),
        ..store.config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("user.seed");
    assert_eq!(run(&s.url, &key, &["keygen"]).await.code, 0);
    let node = Identity::generate();
    let reserve = ["reserve", "volume", "--node", node.id(), "--size", "1"];
    let stalled = common::Stalled::new(&store).await;
    let (waiting, answered) = common::post_until_answered(&s.url, node.id(), 20).await;
    let status = answered.map(|(_, (status, _, _))| status);
    assert_eq!(status, Some(503), "the queue did not fill");
    let r = run(&s.url, &key, &reserve).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("explorer busy, retry after 1 s") && r.stderr.contains("503"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    stalled.release().await;
    let queued = waiting.len();
    for w in waiting {
        let (_, (status, _, text)) = w.await.unwrap();
        assert_eq!(status, 201, "{text}");
    }
    let r = run(&s.url, &key, &reserve).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The busy attempt stored nothing.
    let c = reqwest::Client::new();
    let all = poll(&c, &s.url, node.id(), 0).await;
    assert_eq!(all.len(), queued + 1);
    assert_eq!(all.last().unwrap().id, r.stdout.trim());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--listen", &listen, "--data"])
        .arg(dir.path().join("db"))
        .env_remove("EXPLORER_DATABASE")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let c = reqwest::Client::new();
    let url = format!("http://{listen}/nodes");
    let mut up = false;
    for _ in 0..100 {
        if let Ok(r) = c.get(&url).send().await {
            assert_eq!(r.status(), 200);
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "explorer serve did not answer on {listen}");
    let key = dir.path().join("user.seed");
    assert_eq!(
        run(&format!("http://{listen}"), &key, &["keygen"])
            .await
            .code,
        0
    );
    let r = run(
        &format!("http://{listen}"),
        &key,
        &[
            "reserve",
            "debug",
            "--node",
            Identity::generate().id(),
            "--host",
            "h",
            "--port",
            "1",
        ],
    )
    .await;
    assert_eq!((r.code, r.stdout.trim()), (0, "1-1"), "{}", r.stderr);

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("serve stops within 10 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .await
        .unwrap();
    assert!(
        log.contains("reservation created") && log.contains("1-1"),
        "{log}"
    );
}

/// `explorer migrate` brings a PostgreSQL database's schema up to date
/// (again: nothing to do), says which database without its password when
/// it cannot, and `serve --help` shows the PostgreSQL deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_the_postgres_deployment_in_serve_help() {
    let migrate = |url: String| async move {
        tokio::process::Command::new(BIN)
            .args(["migrate", "--database", &url])
            .output()
            .await
            .unwrap()
    };
    let db = explorer::testing::fresh_database().await;
    for _ in 0..2 {
        let out = migrate(db.url.clone()).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(err.contains("schema up to date"), "{err}");
    }
    let out = migrate("postgres://explorer:s3cret@127.0.0.1:1/explorer".into()).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("postgres://127.0.0.1:1/explorer") && !err.contains("s3cret"),
        "{err}"
    );

    let out = std::process::Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "--database <URL>",
        "EXPLORER_DATABASE",
        "--max-connections",
        "two replicas behind a load",
        "explorer migrate",
        "GET /health",
        "agent --explorer http://a:7700,http://b:7700",
    ] {
        assert!(help.contains(want), "{want:?} in:\n{help}");
    }
}
