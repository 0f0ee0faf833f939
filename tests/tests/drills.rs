//! Fault drills: the explorer down for minutes, the Docker engine
//! unreachable, a full disk under the agent's root, and a slow or hostile
//! explorer (an answer that never ends, 100 MB of JSON, one reservation
//! repeated 10,000 times). The long ones are `#[ignore]`d and run with
//! `scripts/test.sh --drills` (which `.ci/run` does).

mod common;

use std::time::Duration;

use common::proxy::{Proxy, DOWN, UP};
use common::scripted::{self, Answer};
use common::*;
use reservation::{Identity, ResultState};
use serde_json::json;

/// A small container. Each call differs (a nonce in its env): two
/// byte-identical signed reservations in the same second would be taken for
/// a replay under a new id, and refused.
fn busybox(cmd: &str) -> serde_json::Value {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    json!({"flist": BUSYBOX, "entrypoint": cmd, "env": {"NONCE": n.to_string()},
           "capacity": {"cpu": 1, "memory": 32}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "drill (2 minutes): scripts/test.sh --drills"]
async fn explorer_down_two_minutes_while_work_and_deletions_queue() -> anyhow::Result<()> {
    ensure_images();
    let explorer = Explorer::start().await?;
    let proxy = Proxy::start(&explorer.url).await;
    let agent = Agent::start(&proxy.url).await?;
    let node = agent.node_id.clone();
    let user = Identity::generate();
    // Before: three running, two of them about to expire during the outage.
    let keep = explorer
        .reserve(
            &user,
            &node,
            "container",
            busybox("sleep 3600"),
            Duration::from_secs(3600),
        )
        .await?;
    let mut short = Vec::new();
    for _ in 0..2 {
        short.push(
            explorer
                .reserve(
                    &user,
                    &node,
                    "container",
                    busybox("sleep 3600"),
                    Duration::from_secs(20),
                )
                .await?,
        );
    }
    let doomed = explorer
        .reserve(
            &user,
            &node,
            "container",
            busybox("sleep 3600"),
            Duration::from_secs(3600),
        )
        .await?;
    for id in short.iter().chain([&keep, &doomed]) {
        let res = explorer.wait_result(id).await?;
        assert_eq!(res.state, ResultState::Ok, "{id}: {}", res.error);
    }
    let rss_before = agent.rss_kib();
    let disk_before = dir_size(&agent.root.join("cache"));

    proxy.set(DOWN);
    // During: users keep submitting and deleting at the explorer.
    let mut queued = Vec::new();
    for i in 0..20 {
        let vol = json!({"size": 1, "type": if i % 2 == 0 { "SSD" } else { "TAPE" }});
        queued.push(
            explorer
                .reserve(&user, &node, "volume", vol, Duration::from_secs(3600))
                .await?,
        );
    }
    assert_eq!(explorer.delete_as(&user, &doomed).await?, 200);
    tokio::time::sleep(Duration::from_secs(120)).await;
    // The short ones expired and were decommissioned meanwhile; their
    // confirmations wait in the outbox.
    for id in &short {
        assert!(
            labelled(&node, id).0.is_empty(),
            "{id} decommissioned at expiry during the outage"
        );
    }
    let st = agent.status()?;
    assert!(st["pending_results"].as_u64().unwrap() >= 2, "{st}");
    let rss_during = agent.rss_kib();
    assert!(
        rss_during < rss_before + 8 * 1024,
        "memory grew from {rss_before} KiB to {rss_during} KiB during the outage"
    );

    proxy.set(UP);
    for id in &queued {
        let res = explorer.wait_result(id).await?;
        explorer.verify(&res, &node).await?;
    }
    for id in &short {
        explorer.wait_deleted(id).await?;
    }
    explorer.wait_deleted(&doomed).await?;
    wait_for("the outbox to drain", Duration::from_secs(30), || async {
        (agent.status().ok()?["pending_results"] == 0).then_some(())
    })
    .await?;
    assert_eq!(
        labelled(&node, &keep).0.len(),
        1,
        "untouched workload still runs"
    );
    assert!(labelled(&node, &doomed).0.is_empty());
    for id in queued.iter().chain([&keep]) {
        assert_eq!(
            explorer.results(id).await?.len(),
            1,
            "{id}: exactly one result"
        );
    }
    let disk_after = dir_size(&agent.root.join("cache"));
    assert!(
        disk_after < disk_before + 64 * 1024 * 1024,
        "the cache grew from {disk_before} to {disk_after} bytes"
    );
    Ok(())
}

fn dir_size(p: &std::path::Path) -> u64 {
    let out = std::process::Command::new("du")
        .args(["-sB1"])
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A unix socket that forwards to the real Docker socket while it is up.
struct DockerGate {
    path: std::path::PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl DockerGate {
    fn new(path: std::path::PathBuf) -> Self {
        DockerGate { path, task: None }
    }

    fn open(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = tokio::net::UnixListener::bind(&self.path).unwrap();
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((mut a, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    if let Ok(mut b) = tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
            }
        }));
    }

    fn close(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_unreachable_then_back() -> anyhow::Result<()> {
    ensure_images();
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("docker.sock");
    let host = format!("unix://{}", sock.display());
    let explorer = Explorer::start().await?;
    let mut agent = Agent::start_with(&explorer.url, &[("DOCKER_HOST", host.as_str())]).await?;
    // Up, but Docker is not: status says so, and it does not crash-loop.
    let st = agent.status()?;
    assert_eq!(st["docker"]["ok"], false, "{st}");
    let user = Identity::generate();
    let node = agent.node_id.clone();
    let early = explorer
        .reserve(
            &user,
            &node,
            "container",
            busybox("sleep 3600"),
            Duration::from_secs(600),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(agent.is_running());
    assert!(
        explorer.results(&early).await?.is_empty(),
        "waits for Docker instead of failing"
    );
    assert!(agent.log().contains("docker engine unreachable"));

    // Docker comes back: the waiting reservation is provisioned.
    let mut gate = DockerGate::new(sock.clone());
    gate.open();
    let res = explorer.wait_result(&early).await?;
    assert_eq!(res.state, ResultState::Ok, "{}", res.error);
    let st = agent.status()?;
    assert_eq!(st["docker"]["ok"], true, "{st}");

    // Docker goes away again: a new reservation gets a clear error, the
    // agent keeps running, and works again once Docker is back.
    gate.close();
    let during = explorer
        .reserve(
            &user,
            &node,
            "container",
            busybox("sleep 3600"),
            Duration::from_secs(600),
        )
        .await?;
    let res = explorer.wait_result(&during).await?;
    assert_eq!(res.state, ResultState::Error);
    assert!(res.error.contains("docker"), "{}", res.error);
    assert!(agent.is_running());
    gate.open();
    let after = explorer
        .reserve(
            &user,
            &node,
            "container",
            busybox("sleep 3600"),
            Duration::from_secs(600),
        )
        .await?;
    assert_eq!(explorer.wait_result(&after).await?.state, ResultState::Ok);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_keep_memory_bounded() -> anyhow::Result<()> {
    let (url, script) = scripted::start().await;
    let agent = Agent::start_with(&url, &[("AGENT_MAX_POLL_BYTES", "8388608")]).await?;
    let node = agent.node_id.clone();
    let user = Identity::generate();
    let base = agent.rss_kib();

    // 100 MB of JSON: dropped past the 8 MiB cap, never held whole.
    scripted::set(
        &script,
        vec![Answer::Huge(100 * 1024 * 1024), Answer::Json("[]".into())],
    );
    wait_for(
        "the 100 MB answer to be dropped",
        Duration::from_secs(60),
        || async {
            agent
                .log()
                .contains("sent more than 8388608 bytes")
                .then_some(())
        },
    )
    .await?;
    let after_huge = agent.rss_kib();
    assert!(
        after_huge < base + 32 * 1024,
        "RSS {base} KiB -> {after_huge} KiB after a 100 MB answer"
    );

    // One reservation repeated 10,000 times: handled once.
    let mut r = signed(
        &user,
        &node,
        "volume",
        json!({"size": 1, "type": "TAPE"}),
        chrono::Utc::now(),
        Duration::from_secs(600),
    );
    r.id = "7-1".into();
    let one = serde_json::to_string(&r)?;
    let body = format!("[{}]", vec![one; 10_000].join(","));
    scripted::set(&script, vec![Answer::Json(body), Answer::Json("[]".into())]);
    wait_for("a result for 7-1", Duration::from_secs(30), || async {
        (!script.lock().unwrap().results.is_empty()).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let results = script.lock().unwrap().results.clone();
    assert_eq!(results.len(), 1, "one result for 10,000 copies");
    assert!(agent.log().contains("repeated"), "the repeats are logged");
    assert!(agent.rss_kib() < base + 32 * 1024);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "drill (~40 s): scripts/test.sh --drills"]
async fn an_answer_that_never_ends_is_cut_off() -> anyhow::Result<()> {
    let (url, script) = scripted::start().await;
    let agent = Agent::start(&url).await?;
    let node = agent.node_id.clone();
    let user = Identity::generate();
    let mut r = signed(
        &user,
        &node,
        "volume",
        json!({"size": 1, "type": "TAPE"}),
        chrono::Utc::now(),
        Duration::from_secs(600),
    );
    r.id = "3-1".into();
    scripted::set(
        &script,
        vec![
            Answer::Endless,
            Answer::Json(serde_json::to_string(&vec![r])?),
        ],
    );
    // The poll times out (long poll + 10 s), and the next answer is used.
    wait_for(
        "a result after the endless answer",
        Duration::from_secs(90),
        || async { (!script.lock().unwrap().results.is_empty()).then_some(()) },
    )
    .await?;
    assert!(agent.log().contains("poll failed"), "the cut-off is logged");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_under_the_root_refuses_new_work_and_keeps_the_old() -> anyhow::Result<()> {
    let explorer = Explorer::start().await?;
    let mut agent = Agent::prepare(&explorer.url, &[])?;
    // The root on a small tmpfs of its own.
    let seed = std::fs::read(agent.root.join("node.seed"))?;
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=160m", "tmpfs"])
        .arg(&agent.root)
        .status()?;
    assert!(st.success(), "mount tmpfs (needs root)");
    let _unmount = Unmount(agent.root.clone());
    std::fs::write(agent.root.join("node.seed"), seed)?;
    std::fs::set_permissions(
        agent.root.join("node.seed"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    agent.spawn().await?;
    let node = agent.node_id.clone();
    let user = Identity::generate();
    let net = |octet: u8| {
        json!({"name": format!("disk-{octet}"), "ip_range": format!("10.{octet}.0.0/16"),
               "net_resources": [{"node_id": node, "subnet": format!("10.{octet}.1.0/24")}]})
    };
    let before = explorer
        .reserve(&user, &node, "network", net(236), Duration::from_secs(600))
        .await?;
    assert_eq!(explorer.wait_result(&before).await?.state, ResultState::Ok);

    // Fill the disk, leaving a few MiB.
    let fill = agent.root.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=130"])
        .arg(format!("of={}", fill.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let after = explorer
        .reserve(&user, &node, "network", net(237), Duration::from_secs(600))
        .await?;
    let res = explorer.wait_result(&after).await?;
    assert_eq!(res.state, ResultState::Error);
    assert!(res.error.contains("disk"), "{}", res.error);
    assert!(labelled(&node, &after).1.is_empty(), "nothing created");
    assert!(agent.is_running());
    assert_eq!(agent.status()?["cached"], 1, "keeps what it had");
    assert_eq!(labelled(&node, &before).1.len(), 1);
    std::fs::remove_file(&fill)?;
    Ok(())
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
