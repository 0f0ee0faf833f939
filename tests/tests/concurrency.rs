//! Concurrency, end to end through the real agent, explorer and Docker: a
//! provisioning that hangs (an image pull from a registry that accepts and
//! never answers) holds up nothing but its own workload, and a kill -9
//! while several provisionings run still gives one container and one
//! signed result each.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use reservation::{Identity, ResultState};
use serde_json::json;

/// A "registry" on loopback that accepts connections and never answers:
/// Docker's pull of `127.0.0.1:<port>/...` hangs until its own timeout.
/// Counts the connections (a pull under way has one).
struct HangingRegistry {
    port: u16,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl HangingRegistry {
    async fn start() -> HangingRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(sock));
            }
        });
        HangingRegistry {
            port,
            connections,
            task,
        }
    }

    fn image(&self) -> String {
        format!("127.0.0.1:{}/hang:1", self.port)
    }
}

/// One connection to the hanging registry: a TLS hello is refused at once
/// (Docker then speaks plain HTTP to a loopback registry), `GET /v2/` is
/// answered as a registry would, and any other request is never answered,
/// so the pull hangs past Docker's own timeouts.
async fn serve(mut sock: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if buf[0] == 0x16 {
            return; // TLS
        }
        if buf[..n].starts_with(b"GET /v2/ ") {
            let ok = "HTTP/1.1 200 OK\r\nDocker-Distribution-API-Version: registry/2.0\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
            if sock.write_all(ok.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        // Hold the request unanswered until the client gives up.
        let _ = sock.read(&mut buf).await;
        std::future::pending::<()>().await;
    }
}

impl Drop for HangingRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn sleeper(tag: &str) -> serde_json::Value {
    json!({
        "flist": BUSYBOX,
        "entrypoint": format!("sleep 3600 # {tag}"),
        "capacity": {"cpu": 1, "memory": 64},
    })
}

fn hanging(image: &str) -> serde_json::Value {
    json!({"flist": image, "capacity": {"cpu": 1, "memory": 64}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_pull_holds_up_only_its_own_workload() -> anyhow::Result<()> {
    ensure_images();
    let registry = HangingRegistry::start().await;
    let explorer = Explorer::start().await?;
    // The pull would hang for good: the provisioning deadline ends it.
    let agent = Agent::start_with(&explorer.url, &[("AGENT_PROVISION_TIMEOUT", "20s")]).await?;
    let node = agent.node_id.clone();
    let user = Identity::generate();
    let hour = Duration::from_secs(3600);
    let stuck = explorer
        .reserve(&user, &node, "container", hanging(&registry.image()), hour)
        .await?;
    // The pull is under way (Docker dialled the registry) before the rest
    // is even submitted: they come in later poll answers.
    wait_for(
        "the pull to reach the registry",
        Duration::from_secs(60),
        || async { (registry.connections.load(Ordering::SeqCst) > 0).then_some(()) },
    )
    .await?;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            explorer
                .reserve(
                    &user,
                    &node,
                    "container",
                    sleeper(&format!("behind-{i}")),
                    hour,
                )
                .await?,
        );
    }
    for id in &ids {
        let res = explorer.wait_result(id).await?;
        assert_eq!(res.state, ResultState::Ok, "{id}: {}", res.error);
        explorer.verify(&res, &node).await?;
    }
    // All three run while the pull still hangs: no result for it yet.
    assert!(
        explorer.results(&stuck).await?.is_empty(),
        "the hanging pull finished first; the test proves nothing"
    );
    let status = agent.status()?;
    assert_eq!(status["cached"], 3, "{status}");
    // The operator sees what holds it: the one job running, its pull.
    assert_eq!(status["jobs"]["running"], 1, "{status}");
    assert_eq!(
        status["jobs"]["oldest"][0]["id"],
        stuck.as_str(),
        "{status}"
    );
    let (code, out, _) = agent.ctl(&["status"])?;
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!(
            "jobs running:    1: {stuck} provisioning container for"
        )),
        "{out}"
    );
    // The hanging one ends with one signed error, and no container.
    let res = explorer.wait_result(&stuck).await?;
    assert_eq!(res.state, ResultState::Error);
    explorer.verify(&res, &node).await?;
    let (containers, _, _) = labelled(&node, &stuck);
    assert!(containers.is_empty(), "{containers:?}");
    cleanup_user(user.id());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_while_provisionings_run_side_by_side() -> anyhow::Result<()> {
    // The agent dies at the first record while the others of its answer
    // still run (one behind a hanging pull). Restarted, each workload has
    // one container and exactly one signed result; the hanging one one
    // error.
    ensure_images();
    let registry = HangingRegistry::start().await;
    let explorer = Explorer::start().await?;
    let mut agent = Agent::prepare(
        &explorer.url,
        &[
            ("AGENT_FAULT", "after-record"),
            ("AGENT_PROVISION_TIMEOUT", "20s"),
        ],
    )?;
    let node = agent.node_id.clone();
    let user = Identity::generate();
    let hour = Duration::from_secs(3600);
    let stuck = explorer
        .reserve(&user, &node, "container", hanging(&registry.image()), hour)
        .await?;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            explorer
                .reserve(
                    &user,
                    &node,
                    "container",
                    sleeper(&format!("kill-{i}")),
                    hour,
                )
                .await?,
        );
    }
    // All five in the agent's first answer.
    agent.spawn().await?;
    let status = agent.wait_exit(Duration::from_secs(60))?;
    assert!(!status.success(), "agent must have died at after-record");
    agent.env.retain(|(k, _)| k != "AGENT_FAULT");
    agent.spawn().await?;
    for id in &ids {
        let res = explorer.wait_result(id).await?;
        assert_eq!(res.state, ResultState::Ok, "{id}: {}", res.error);
        explorer.verify(&res, &node).await?;
    }
    let res = explorer.wait_result(&stuck).await?;
    assert_eq!(res.state, ResultState::Error, "{}", res.error);
    // Let the restarted agent settle, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in ids.iter().chain([&stuck]) {
        assert_eq!(
            explorer.results(id).await?.len(),
            1,
            "exactly one result for {id}"
        );
    }
    for id in &ids {
        let (containers, _, _) = labelled(&node, id);
        assert_eq!(containers.len(), 1, "one container for {id}, no twin");
    }
    assert!(labelled(&node, &stuck).0.is_empty());
    assert_eq!(agent.status()?["cached"], 4);
    cleanup_user(user.id());
    Ok(())
}
