//! Benchmark: the explorer at fleet scale (BENCHMARKS.md, figure 8). Not a
//! criterion bench: it starts release `explorer serve` processes and a
//! PostgreSQL cluster of its own, and writes raw samples as JSON for
//! `bench/report.py`.
//!
//! Two setups, side by side in one run:
//! - `sled`: one `explorer serve --data DIR` (the default store);
//! - `pg2`: two `explorer serve --database URL` replicas on one PostgreSQL
//!   15 database (a throwaway cluster with PostgreSQL's default durability:
//!   fsync and synchronous commit on, as sled flushes before each 201).
//!
//! Each run: `NODES` simulated nodes long-poll (one task each, in this one
//! process; node i polls replica i mod 2, as a load balancer would spread
//! them), and once every poll is held (`explorer_long_polls_open` on the
//! servers' `/metrics`) come bursts, one per level of `USERS`: that many
//! concurrent users post `SUBMITS` pre-signed reservations, each for a
//! random node, alternating replicas. Recorded:
//! - submits/s of each burst: `SUBMITS` / the time from the first POST
//!   sent to the last 201 received. A setup's capacity is its best rate
//!   over the levels: few users measure round trips (each waits for its
//!   answer before the next POST), many measure what the servers can take
//!   (sled flushes per POST; PostgreSQL commits a replica's concurrent
//!   POSTs together);
//! - submit → answer: from the moment a reservation's POST is sent to the
//!   moment its node's long poll answers with it (keyed by signature), over
//!   every reservation of the run; in each burst, and paced at `PACED_RATE`/s (a fleet's steady state);
//! - connections: the peak of PostgreSQL's `pg_stat_activity` client
//!   backends during the run (both replicas' pools and listeners), and the
//!   HTTP connections held (one per node, plus the users').
//!
//! `cargo bench -p explorer --bench fleet -- --out FILE [--runs N]` after
//! `cargo build --release --bins` (`--runs`: runs of each setup, 3 by
//! default; `--users 16,64`: the bursts' levels, those by default; `--setup sled|pg2`: that setup only, e.g. under a profiler;
//! `EXPLORER_BENCH_BIN=PATH` runs another `explorer` binary, e.g.
//! an older build for a before/after comparison); needs PostgreSQL
//! (`initdb`, `pg_ctl`) installed. Client, servers and database share the
//! machine's cores.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::{explorer_bin, Server};
use reservation::{Identity, Reservation};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};

const NODES: usize = 1_000;
/// Concurrent users of each burst unless `--users` says otherwise: a
/// low concurrency, where each POST's round trips bound the rate, and a
/// fleet's, where the servers' capacity does.
const USERS: [usize; 2] = [16, 64];
const SUBMITS: usize = 3_000;
const PACED: usize = 600;
const PACED_RATE: f64 = 200.0;
/// Runs of each setup unless `--runs N` says otherwise.
const RUNS: usize = 3;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `explorer serve` on a free port: `--database URL`, else sled in `dir`.
async fn serve(dir: &Path, database: Option<&str>) -> Result<(Server, String)> {
    let port = free_port()?;
    let mut cmd = Command::new(explorer_bin()?);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .env_remove("EXPLORER_DATABASE")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(db) = database {
        cmd.args(["--database", db]);
    }
    let server = Server(cmd.spawn()?);
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let start = Instant::now();
    while http.get(format!("{url}/health")).send().await.is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("explorer on {url} did not answer");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((server, url))
}

fn signed(user: &Identity, node: &str) -> Reservation {
    let mut r: Reservation = serde_json::from_value(json!({
        "id": "",
        "version": reservation::PROTOCOL_VERSION,
        "node_id": node,
        "user_id": user.id(),
        "type": "volume",
        "data": {"size": 1, "type": "SSD"},
        "created": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "duration": 3_600_000_000_000i64,
    }))
    .expect("reservation json");
    user.sign_reservation(&mut r);
    r
}

/// Sum of `explorer_long_polls_open` over `urls`.
async fn polls_open(http: &reqwest::Client, urls: &[String]) -> i64 {
    let mut n = 0;
    for u in urls {
        let Ok(r) = http.get(format!("{u}/metrics")).send().await else {
            continue;
        };
        let text = r.text().await.unwrap_or_default();
        n += text
            .lines()
            .find_map(|l| l.strip_prefix("explorer_long_polls_open "))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0);
    }
    n
}

/// When each reservation's POST was sent, by signature; and the
/// submit → answer latencies seen by the pollers.
#[derive(Default)]
struct Book {
    sent: Mutex<HashMap<String, Instant>>,
    latencies: Mutex<Vec<f64>>,
}

/// One simulated node: long-polls `url` from its cursor until `stop`.
async fn node_loop(
    http: reqwest::Client,
    url: String,
    node: String,
    book: Arc<Book>,
    stop: Arc<AtomicBool>,
) {
    let mut from = 1u64;
    while !stop.load(Ordering::Relaxed) {
        let resp = http
            .get(format!("{url}/reservations/{node}/poll?from={from}"))
            .timeout(Duration::from_secs(40))
            .send()
            .await;
        let Ok(resp) = resp else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(list) = resp.json::<Vec<Reservation>>().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let now = Instant::now();
        let mut lat = Vec::new();
        {
            let sent = book.sent.lock().unwrap();
            for r in &list {
                if let Some(t) = sent.get(&r.signature) {
                    lat.push(now.duration_since(*t).as_secs_f64());
                }
                if let Some(n) = r.number() {
                    from = from.max(n + 1);
                }
            }
        }
        book.latencies.lock().unwrap().extend(lat);
    }
}

/// Peak client connections to PostgreSQL while `stop` is unset.
async fn watch_connections(admin: String, stop: Arc<AtomicBool>, peak: Arc<AtomicI64>) {
    let Ok(mut conn) = PgConnection::connect(&admin).await else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        if let Ok(row) = sqlx::query(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut conn)
        .await
        {
            let n: i64 = row.try_get(0).unwrap_or(0);
            peak.fetch_max(n, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = conn.close().await;
}

/// POST `r` to `url`, noting when it was sent (for its node's answer); an
/// error unless it is stored (201).
async fn submit(http: &reqwest::Client, book: &Book, url: &str, r: &Reservation) -> Result<()> {
    book.sent
        .lock()
        .unwrap()
        .insert(r.signature.clone(), Instant::now());
    let resp = http
        .post(format!("{url}/reservations/{}", r.node_id))
        .json(r)
        .timeout(Duration::from_secs(30))
        .send()
        .await?;
    if resp.status().as_u16() != 201 {
        bail!("POST answered {}", resp.status());
    }
    Ok(())
}

/// One burst: `SUBMITS` reservations posted by `users` concurrent users,
/// as fast as answers come, alternating `urls`; once every one reached its
/// node's poll, its rate, latencies and database transactions.
async fn burst(
    http: &reqwest::Client,
    urls: &[String],
    admin: Option<&str>,
    book: &Arc<Book>,
    users: usize,
    list: Vec<Reservation>,
) -> Result<Value> {
    let queue = Arc::new(Mutex::new(list.into_iter().enumerate().collect::<Vec<_>>()));
    let xacts_before = match admin {
        Some(a) => Some(transactions(a).await?),
        None => None,
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..users {
        let (queue, http, book, urls) = (queue.clone(), http.clone(), book.clone(), urls.to_vec());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some((i, r)) = queue.lock().unwrap().pop() else {
                    return anyhow::Ok(());
                };
                submit(&http, &book, &urls[i % urls.len()], &r).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let rate = SUBMITS as f64 / started.elapsed().as_secs_f64();
    wait_answered(book, SUBMITS).await;
    // Transactions the database ran for the burst (inserts, NOTIFYs, the
    // woken polls' queries and the nodes' next polls), per reservation.
    let xacts_per_submit = match (admin, xacts_before) {
        (Some(a), Some(before)) => {
            // Backends report their counters within a second of going idle.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Some((transactions(a).await? - before) as f64 / SUBMITS as f64)
        }
        _ => None,
    };
    let latency = std::mem::take(&mut *book.latencies.lock().unwrap());
    eprintln!(
        "  {} replica(s), {users} users: {rate:.0} submits/s; answers {}/{SUBMITS}; db transactions per submit {}",
        urls.len(),
        latency.len(),
        xacts_per_submit.map_or("-".into(), |x| format!("{x:.2}"))
    );
    Ok(json!({
        "users": users,
        "submit_rate_per_s": rate,
        "burst_latency_s": latency,
        "db_transactions_per_submit": xacts_per_submit,
    }))
}

/// One run on `urls`: `NODES` pollers, then a burst at each of `levels`
/// (concurrent users) and a paced phase.
async fn run_once(urls: &[String], admin: Option<&str>, levels: &[usize]) -> Result<Value> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(NODES + levels.iter().copied().max().unwrap_or(0))
        .build()?;
    let nodes: Vec<String> = (0..NODES)
        .map(|_| Identity::generate().id().to_string())
        .collect();
    let book = Arc::new(Book::default());
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicI64::new(0));
    let watcher =
        admin.map(|a| tokio::spawn(watch_connections(a.to_string(), stop.clone(), peak.clone())));
    let mut pollers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        pollers.push(tokio::spawn(node_loop(
            http.clone(),
            urls[i % urls.len()].clone(),
            node.clone(),
            book.clone(),
            stop.clone(),
        )));
    }
    let t = Instant::now();
    while polls_open(&http, urls).await < NODES as i64 {
        if t.elapsed() > Duration::from_secs(60) {
            bail!(
                "only {} of {NODES} polls held after 60 s",
                polls_open(&http, urls).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Pre-signed (users sign, the server verifies); each for a random node.
    let user = Identity::generate();
    let mut rng_state = 0x9e3779b97f4a7c15u64;
    let mut pick = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        (rng_state % NODES as u64) as usize
    };
    let mut bursts = Vec::new();
    for &users in levels {
        let list: Vec<Reservation> = (0..SUBMITS)
            .map(|_| signed(&user, &nodes[pick()]))
            .collect();
        bursts.push(burst(&http, urls, admin, &book, users, list).await?);
    }
    let paced: Vec<Reservation> = (0..PACED).map(|_| signed(&user, &nodes[pick()])).collect();

    // Paced: one POST every 1/PACED_RATE s, each its own task.
    let mut tasks = Vec::new();
    let t0 = Instant::now();
    for (i, r) in paced.into_iter().enumerate() {
        let at = t0 + Duration::from_secs_f64(i as f64 / PACED_RATE);
        tokio::time::sleep_until(at.into()).await;
        let (http, book, url) = (http.clone(), book.clone(), urls[i % urls.len()].clone());
        tasks.push(tokio::spawn(
            async move { submit(&http, &book, &url, &r).await },
        ));
    }
    for t in tasks {
        t.await??;
    }
    wait_answered(&book, PACED).await;
    let paced_lat = std::mem::take(&mut *book.latencies.lock().unwrap());

    stop.store(true, Ordering::Relaxed);
    for p in pollers {
        p.abort();
    }
    if let Some(w) = watcher {
        let _ = w.await;
    }
    eprintln!(
        "  {} replica(s): paced answers {}/{PACED}; peak db connections {}",
        urls.len(),
        paced_lat.len(),
        peak.load(Ordering::Relaxed),
    );
    Ok(json!({
        "bursts": bursts,
        "paced_latency_s": paced_lat,
        "db_connections_peak": admin.map(|_| peak.load(Ordering::Relaxed)),
        "http_connections": NODES + levels.iter().copied().max().unwrap_or(0),
    }))
}

/// Transactions committed or rolled back so far in the bench's database
/// (`pg_stat_database`).
async fn transactions(admin: &str) -> Result<i64> {
    let mut conn = PgConnection::connect(admin).await?;
    let row = sqlx::query(
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = 'explorer_bench'",
    )
    .fetch_one(&mut conn)
    .await?;
    let _ = conn.close().await;
    Ok(row.try_get(0)?)
}

/// Wait until `n` answers were recorded (at most 30 s).
async fn wait_answered(book: &Book, n: usize) {
    let t = Instant::now();
    while book.latencies.lock().unwrap().len() < n && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run(out: PathBuf, runs: usize, only: Option<String>, levels: Vec<usize>) -> Result<()> {
    let dir = tempfile::tempdir()?;
    // PostgreSQL's defaults (durable commits), more connections than the
    // two pools need.
    let cluster = explorer::testing::Cluster::start(&[("max_connections", "200")])
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let admin = cluster.url.clone();
    let mut conn = PgConnection::connect(&admin).await?;
    sqlx::query("CREATE DATABASE explorer_bench")
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    let database = format!(
        "{}/explorer_bench",
        admin
            .rsplit_once('/')
            .map(|(root, _)| root)
            .unwrap_or(&admin)
    );

    let mut sled_runs = Vec::new();
    let mut pg_runs = Vec::new();
    for run in 0..runs {
        // Alternate which goes first, so drift falls on both alike.
        for setup in if run % 2 == 0 {
            ["sled", "pg2"]
        } else {
            ["pg2", "sled"]
        } {
            if only.as_deref().is_some_and(|o| o != setup) {
                continue;
            }
            eprintln!("fleet run {run}, {setup}");
            if setup == "sled" {
                let (_s, url) = serve(&dir.path().join(format!("sled-{run}")), None).await?;
                sled_runs.push(run_once(&[url], None, &levels).await?);
            } else {
                let (_a, a) = serve(dir.path(), Some(&database)).await?;
                let (_b, b) = serve(dir.path(), Some(&database)).await?;
                pg_runs.push(run_once(&[a, b], Some(&admin), &levels).await?);
            }
        }
    }
    let version = Command::new("sh")
        .args([
            "-c",
            "pg_config --version 2>/dev/null || ls /usr/lib/postgresql",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let res = json!({
        "commit": commit,
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "nodes": NODES,
        "users": levels,
        "submits_per_run": SUBMITS,
        "paced_per_run": PACED,
        "paced_rate_per_s": PACED_RATE,
        "postgres": version,
        "max_connections_per_replica": explorer::DEFAULT_MAX_CONNECTIONS,
        "sled": sled_runs,
        "pg2": pg_runs,
    });
    if let Some(p) = out.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&res)?)?;
    eprintln!("wrote {}", out.display());
    drop(cluster);
    Ok(())
}

fn main() -> Result<()> {
    let mut out = PathBuf::from("bench/out/fleet.json");
    let mut runs = RUNS;
    let mut only = None;
    let mut levels = USERS.to_vec();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "--out" => out = PathBuf::from(args.next().context("--out FILE")?),
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .context("--runs N (a positive number)")?
            }
            "--users" => {
                levels = args
                    .next()
                    .and_then(|l| {
                        l.split(',')
                            .map(|u| u.trim().parse::<usize>().ok().filter(|u| *u > 0))
                            .collect::<Option<Vec<_>>>()
                    })
                    .filter(|l| !l.is_empty())
                    .context("--users N[,N...] (positive numbers)")?
            }
            "--setup" => {
                only = Some(
                    args.next()
                        .filter(|s| s == "sled" || s == "pg2")
                        .context("--setup sled|pg2")?,
                )
            }
            other => bail!(
                "unknown argument {other:?} (expected --out FILE, --runs N, --users N[,N...] or --setup sled|pg2)"
            ),
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
    rt.block_on(run(out, runs, only, levels))
}
