//! Benchmark: `explorer serve` requests per second over loopback, with its
//! signature checks on (BENCHMARKS.md, figure 7). Not a criterion bench: it
//! starts the release binary on a temp dir, sends bounded bursts with a
//! fixed number of concurrent clients, and writes raw samples as JSON for
//! `bench/report.py`.
//!
//! - submit: `POST /reservations/{node}` of distinct user-signed version 2
//!   container reservations (each with its own nonce; the server checks
//!   version, signature, lifetime and the signature index, and flushes sled
//!   before answering 201);
//! - poll: `GET /reservations/{node}/poll?from=0` (the full resync) of a
//!   node holding 10 reservations (never held: there is always something
//!   to answer, so the per-node limit of held polls does not apply).
//!
//! Submit runs with one client and with `CLIENTS`. Concurrent POSTs once
//! stalled the server for good (sled 0.34's concurrent `flush_async`
//! deadlock, fixed in the explorer by flushing on the blocking pool), so
//! each request has a deadline and a stall is recorded (with how many
//! requests went through) instead of hanging the bench.
//!
//! `cargo bench -p explorer --bench load -- --out FILE` after
//! `cargo build --release --bins`. Client and server share the machine's
//! cores; the client is one tokio runtime with as many workers as cores.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::{explorer_bin, Server};
use reservation::{Identity, Reservation};
use serde_json::{json, Value};

const CLIENTS: usize = 16;
const RUNS: usize = 5;
const SUBMITS_PER_RUN: usize = 1_000;
const POLLS_PER_RUN: usize = 5_000;
/// A request not answered by then counts as a stall.
const DEADLINE: Duration = Duration::from_secs(10);

fn signed(user: &Identity, node: &str, n: usize) -> Reservation {
    // Version 2: `sign_reservation` fills in a fresh nonce.
    let mut r: Reservation = serde_json::from_value(json!({
        "id": "",
        "version": reservation::PROTOCOL_VERSION,
        "node_id": node,
        "user_id": user.id(),
        "type": "container",
        "data": {
            "flist": "agent-test/busybox:latest",
            "entrypoint": "sleep 3600",
            "env": {"N": n.to_string()},
            "capacity": {"cpu": 1, "memory": 64}
        },
        "created": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "duration": 3_600_000_000_000i64,
    }))
    .expect("reservation json");
    user.sign_reservation(&mut r);
    r
}

/// What one burst gave.
struct Burst {
    rate: f64,
    latencies: Vec<f64>,
    /// Requests not answered within [`DEADLINE`].
    stalled: usize,
}

/// Send `reqs` with `clients` concurrent clients.
async fn burst(reqs: Vec<reqwest::RequestBuilder>, expect: u16, clients: usize) -> Result<Burst> {
    let queue = std::sync::Arc::new(std::sync::Mutex::new(reqs));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let Some(rb) = queue.lock().ok().and_then(|mut q| q.pop()) else {
                    break;
                };
                let t = Instant::now();
                let resp = match rb.timeout(DEADLINE).send().await {
                    Ok(r) => r,
                    Err(e) if e.is_timeout() => return anyhow::Ok((lat, true)),
                    Err(e) => return Err(e.into()),
                };
                let status = resp.status().as_u16();
                let _ = resp.bytes().await?;
                if status != expect {
                    bail!("explorer answered {status}, expected {expect}");
                }
                lat.push(t.elapsed().as_secs_f64());
            }
            anyhow::Ok((lat, false))
        }));
    }
    let mut latencies = Vec::new();
    let mut stalled = 0;
    for t in tasks {
        let (lat, stall) = t.await??;
        latencies.extend(lat);
        stalled += usize::from(stall);
    }
    let took = start.elapsed().as_secs_f64();
    Ok(Burst {
        rate: latencies.len() as f64 / took,
        latencies,
        stalled,
    })
}

async fn run(out: PathBuf) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = Server(
        Command::new(explorer_bin()?)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()?;
    let start = Instant::now();
    while http.get(format!("{url}/nodes")).send().await.is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("explorer did not answer");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let user = Identity::generate();
    let node = Identity::generate();
    let poll_node = Identity::generate();
    for i in 0..10 {
        let r = signed(&user, poll_node.id(), 1_000_000 + i);
        let resp = http
            .post(format!("{url}/reservations/{}", poll_node.id()))
            .json(&r)
            .send()
            .await?;
        if resp.status().as_u16() != 201 {
            bail!("seeding the poll node: {}", resp.status());
        }
    }

    let mut submit = Vec::new();
    let mut poll = Vec::new();
    let mut n = 0;
    let submits = |count: usize, n: &mut usize| -> Vec<reqwest::RequestBuilder> {
        // Signed before the clock starts: users sign, the server verifies.
        (0..count)
            .map(|_| {
                *n += 1;
                let r = signed(&user, node.id(), *n);
                http.post(format!("{url}/reservations/{}", node.id()))
                    .json(&r)
            })
            .collect()
    };
    let mut submit_conc = Vec::new();
    for run in 0..RUNS {
        let b = burst(submits(SUBMITS_PER_RUN, &mut n), 201, 1).await?;
        eprintln!("explorer submit run {run}, 1 client: {:.0}/s", b.rate);
        submit.push(json!({"rate_per_s": b.rate, "latency_s": b.latencies, "stalled": b.stalled}));

        let b = burst(submits(SUBMITS_PER_RUN, &mut n), 201, CLIENTS).await?;
        eprintln!(
            "explorer submit run {run}, {CLIENTS} clients: {:.0}/s, {} answered, {} clients stalled",
            b.rate,
            b.latencies.len(),
            b.stalled
        );
        let stalled = b.stalled;
        submit_conc.push(json!({
            "rate_per_s": b.rate,
            "latency_s": b.latencies,
            "answered": b.latencies.len(),
            "sent": SUBMITS_PER_RUN,
            "stalled_clients": b.stalled,
        }));
        if stalled > 0 {
            // The server is stuck; the rest would measure nothing.
            break;
        }

        let reqs: Vec<_> = (0..POLLS_PER_RUN)
            .map(|_| http.get(format!("{url}/reservations/{}/poll?from=0", poll_node.id())))
            .collect();
        let b = burst(reqs, 200, CLIENTS).await?;
        eprintln!(
            "explorer poll run {run}, {CLIENTS} clients: {:.0}/s",
            b.rate
        );
        poll.push(json!({"rate_per_s": b.rate, "latency_s": b.latencies, "stalled": b.stalled}));
    }
    let res: Value = json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "clients": CLIENTS,
        "submits_per_run": SUBMITS_PER_RUN,
        "polls_per_run": POLLS_PER_RUN,
        "poll_answer_reservations": 10,
        "submit": submit,
        "submit_concurrent": submit_conc,
        "poll": poll,
    });
    if let Some(p) = out.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&res)?)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn main() -> Result<()> {
    let mut out = PathBuf::from("bench/out/explorer.json");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "--out" => out = PathBuf::from(args.next().context("--out FILE")?),
            other => bail!("unknown argument {other:?} (expected --out FILE)"),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        )
        .enable_all()
        .build()?;
    rt.block_on(run(out))
}
