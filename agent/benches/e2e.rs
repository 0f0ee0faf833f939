//! Benchmark harness for the figures that need the real binaries and the
//! real Docker engine (BENCHMARKS.md, figures 3 to 6 and 9 to 11). Not a criterion
//! bench: it drives `target/release/{explorer,agent}` like an operator
//! would and writes raw samples as JSON; `bench/report.py` turns them into
//! medians, p99s and ratios.
//!
//! - `fig3`: reservation to running container, beside `docker run -d` of the
//!   same image in the same run (alternating order).
//! - `fig4`: expiry lateness, from `created + duration` to the container's
//!   `die` and `destroy` events; also waves of 6 whose process ignores
//!   SIGTERM, expiring in the same second (default `--stop-grace`).
//! - `fig5`: agent RSS idle (fresh root, after its first poll).
//! - `fig6`: restart with 10,000 cached reservations (also their RSS), with
//!   a Docker API stub that reports every cached container running, and
//!   with the real engine and a few real containers; plus the latency of
//!   one container inspect on the stub and on the real engine.
//! - `fig9`: 12 reservations in one poll answer → all 12 running, beside 12
//!   sequential `docker run -d` with the agent's flags.
//! - `fig10`: 3 containers behind one whose image pull hangs (a registry
//!   stub on 127.0.0.1 that never answers the manifest request), in the
//!   same poll answer and in the next one.
//! - `fig11`: restart → ready with N containers really running, provisioned
//!   through the agent (`BENCH_FIG11_SIZES`, default 500,1000).
//!
//! Run through `bench/run.sh`, or:
//! `cargo bench -p agent --bench e2e -- --out FILE [--quick] [fig3 .. fig6 fig9 fig10 fig11]`
//! after `cargo build --release --bins` and `bash tests/images/build.sh`.
//!
//! Times come from one clock: the harness's `SystemTime`, the agent's JSON
//! log timestamps and Docker's event `timeNano` are all the host's
//! wall clock.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bollard::system::EventsOptions;
use futures_util::StreamExt;
use reservation::{Identity, Reservation};
use serde_json::{json, Value};
use store::{Cached, Store};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const IMAGE: &str = "agent-test/busybox:latest";
/// What the agent asks of Docker for a [`signed`] reservation running
/// `sleep 3600` (1 CPU, 64 MiB), as `docker run -d` arguments after the
/// name: the peer of figures 3 and 9.
const AGENT_FLAGS: [&str; 12] = [
    "--network",
    "none",
    "--cpus",
    "1",
    "--memory",
    "64m",
    "--restart",
    "unless-stopped",
    "--entrypoint",
    "sleep",
    IMAGE,
    "3600",
];
/// Busybox `sh` as PID 1 ends on SIGTERM (`wait` is interrupted by a
/// trapped signal), like a well-behaved service.
const TERM_AWARE: &str = "sh -c 'trap \"exit 0\" TERM; sleep 3600 & wait'";

/// Wall clock in seconds since the epoch.
fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Path of a release binary next to this bench (target/release/NAME).
fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("target dir of the bench")?;
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} is missing: run `cargo build --release --bins` first",
            p.display()
        );
    }
    Ok(p)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A child process killed when dropped.
struct Proc(Option<Child>);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or(0)
    }
    /// SIGTERM, then wait (SIGKILL after 20 s).
    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running `explorer serve`.
struct Explorer {
    url: String,
    _proc: Proc,
}

async fn start_explorer(dir: &Path) -> Result<Explorer> {
    let port = free_port();
    let log = std::fs::File::create(dir.join("explorer.log"))?;
    let child = Command::new(bin("explorer")?)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.join("explorer"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("spawn explorer")?;
    let e = Explorer {
        url: format!("http://127.0.0.1:{port}"),
        _proc: Proc(Some(child)),
    };
    let http = reqwest::Client::new();
    let start = Instant::now();
    while http.get(format!("{}/nodes", e.url)).send().await.is_err() {
        if start.elapsed() > Duration::from_secs(20) {
            bail!("explorer did not answer within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(e)
}

/// An agent root with its node key.
struct Root {
    root: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    node: Identity,
}

fn make_root(dir: &Path, name: &str) -> Result<Root> {
    let root = dir.join(name);
    std::fs::create_dir_all(&root)?;
    let node = Identity::load_or_create(&root.join("node.seed"))?;
    Ok(Root {
        socket: dir.join(format!("{name}.sock")),
        log: dir.join(format!("{name}.log")),
        root,
        node,
    })
}

/// Spawn `agent` on `root` (JSON logs at info into `root.log`).
fn spawn_agent(root: &Root, explorer: &str, env: &[(&str, &str)]) -> Result<Proc> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&root.log)?;
    // `BENCH_AGENT_WRAP="perf record -g -o FILE --"` profiles the agent;
    // (the RSS figures then read the wrapper's, so only for profiling).
    // `{name}` in it becomes the root's name (one profile per run).
    let name = root.root.file_name().unwrap_or_default().to_string_lossy();
    let wrap = std::env::var("BENCH_AGENT_WRAP")
        .unwrap_or_default()
        .replace("{name}", &name);
    let mut words = wrap.split_whitespace();
    let mut cmd = match words.next() {
        Some(w) => {
            let mut c = Command::new(w);
            c.args(words).arg(bin("agent")?);
            c
        }
        None => Command::new(bin("agent")?),
    };
    cmd.arg("--explorer")
        .arg(explorer)
        .arg("--root")
        .arg(&root.root)
        .arg("--socket")
        .arg(&root.socket)
        .arg("--config")
        .arg("/dev/null")
        .arg("--log-format")
        .arg("json")
        // `BENCH_AGENT_LOG=debug` (any RUST_LOG filter) for a closer look;
        // the figures read info lines only.
        .env(
            "RUST_LOG",
            std::env::var("BENCH_AGENT_LOG").unwrap_or_else(|_| "info".into()),
        )
        // The figures run more 1-core containers than this machine has
        // cores; capacity admission is not what they measure.
        .env("AGENT_CPU_OVERCOMMIT", "100000")
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(Proc(Some(cmd.spawn().context("spawn agent")?)))
}

/// `{"cmd":"status"}` on the control socket, as `agentctl status` sends it.
async fn status(socket: &Path) -> Option<Value> {
    let s = tokio::net::UnixStream::connect(socket).await.ok()?;
    let (r, mut w) = s.into_split();
    w.write_all(b"{\"cmd\":\"status\"}\n").await.ok()?;
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await.ok()?;
    let v: Value = serde_json::from_str(&line).ok()?;
    (v["ok"] == json!(true)).then(|| v["data"].clone())
}

/// Poll the status every 5 ms until `pred` holds; the wall time it did.
async fn wait_status(
    socket: &Path,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Result<(f64, Value)> {
    let start = Instant::now();
    loop {
        if let Some(v) = status(socket).await {
            if pred(&v) {
                return Ok((now_s(), v));
            }
        }
        if start.elapsed() > timeout {
            bail!(
                "agent status at {} not reached in {timeout:?}",
                socket.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// (VmRSS, VmHWM) of `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        let line = s
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} in /proc/{pid}/status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// A container reservation signed by `user`, `created` in whole seconds.
fn signed(
    user: &Identity,
    node: &str,
    entrypoint: &str,
    created: i64,
    dur: Duration,
) -> Reservation {
    signed_with(user, node, IMAGE, entrypoint, created, dur, 64)
}

/// [`signed`] with another image and memory (MiB).
fn signed_with(
    user: &Identity,
    node: &str,
    image: &str,
    entrypoint: &str,
    created: i64,
    dur: Duration,
    memory_mib: u64,
) -> Reservation {
    // Distinct signed bytes: the agent refuses a replayed signature under a
    // new id.
    static NONCE: AtomicU64 = AtomicU64::new(0);
    let nonce = NONCE.fetch_add(1, Ordering::Relaxed).to_string();
    let created = chrono::DateTime::from_timestamp(created, 0).unwrap_or_default();
    let mut r: Reservation = serde_json::from_value(json!({
        "id": "",
        "version": 2,
        "node_id": node,
        "user_id": user.id(),
        "type": "container",
        "data": {
            "flist": image,
            "entrypoint": entrypoint,
            "env": {"BENCH_NONCE": nonce},
            "capacity": {"cpu": 1, "memory": memory_mib}
        },
        "created": created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "duration": dur.as_nanos() as i64,
    }))
    .expect("reservation json");
    user.sign_reservation(&mut r);
    r
}

async fn post(http: &reqwest::Client, url: &str, r: &Reservation) -> Result<String> {
    let resp = http
        .post(format!("{url}/reservations/{}", r.node_id))
        .json(r)
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status.as_u16() != 201 {
        bail!("explorer answered {status}: {body}");
    }
    Ok(body["id"].as_str().context("id in answer")?.to_string())
}

/// One Docker container event.
#[derive(Debug, Clone)]
struct Ev {
    t: f64,
    action: String,
    attrs: HashMap<String, String>,
}

/// Every container event since the collector started.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<Ev>>>);

impl Events {
    async fn start(docker: bollard::Docker) -> Events {
        let ev = Events::default();
        let sink = ev.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let opts = EventsOptions::<String> {
                filters: HashMap::from([("type".to_string(), vec!["container".to_string()])]),
                ..Default::default()
            };
            let mut stream = docker.events(Some(opts));
            let _ = ready_tx.send(());
            while let Some(Ok(m)) = stream.next().await {
                let actor = m.actor.unwrap_or_default();
                let e = Ev {
                    t: m.time_nano.unwrap_or(0) as f64 / 1e9,
                    action: m.action.unwrap_or_default(),
                    attrs: actor.attributes.unwrap_or_default(),
                };
                if let Ok(mut v) = sink.0.lock() {
                    v.push(e);
                }
            }
        });
        let _ = ready_rx.await;
        // The stream is open once the engine answered its headers.
        tokio::time::sleep(Duration::from_millis(200)).await;
        ev
    }

    /// Wait for the first event `action` whose attributes have `key=value`.
    async fn wait(&self, action: &str, key: &str, value: &str, timeout: Duration) -> Result<Ev> {
        let start = Instant::now();
        loop {
            if let Ok(v) = self.0.lock() {
                if let Some(e) = v.iter().find(|e| {
                    e.action == action && e.attrs.get(key).map(String::as_str) == Some(value)
                }) {
                    return Ok(e.clone());
                }
            }
            if start.elapsed() > timeout {
                bail!("no docker {action} event for {key}={value} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Timestamp (s) of the agent's JSON log line `message` about `id`.
async fn log_time(log: &Path, message: &str, id: Option<&str>, timeout: Duration) -> Result<f64> {
    Ok(log_line(log, message, id, timeout).await?.0)
}

/// The agent's first JSON log line `message` about `id`, and its timestamp.
async fn log_line(
    log: &Path,
    message: &str,
    id: Option<&str>,
    timeout: Duration,
) -> Result<(f64, Value)> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let about = id.is_none_or(|id| v["reservation"].as_str() == Some(id));
            if v["message"].as_str() == Some(message) && about {
                let ts = v["timestamp"].as_str().unwrap_or_default();
                let t = chrono::DateTime::parse_from_rfc3339(ts)
                    .with_context(|| format!("log timestamp {ts:?}"))?;
                return Ok((t.timestamp_micros() as f64 / 1e6, v));
            }
        }
        if start.elapsed() > timeout {
            bail!("no log line {message:?} for {id:?} in {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn running(docker: &bollard::Docker, name_or_id: &str) -> bool {
    docker
        .inspect_container(name_or_id, None)
        .await
        .ok()
        .and_then(|c| c.state)
        .and_then(|s| s.running)
        .unwrap_or(false)
}

fn docker_cli(args: &[&str]) -> Result<String> {
    let out = Command::new("docker").args(args).output()?;
    if !out.status.success() {
        bail!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Remove every container labelled for `node` (the harness's leftovers).
fn cleanup_node(node: &str) {
    let f = format!("label=io.agent.node={node}");
    if let Ok(ids) = docker_cli(&["ps", "-aq", "--filter", &f]) {
        let ids: Vec<&str> = ids.lines().filter(|l| !l.is_empty()).collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = docker_cli(&args);
        }
    }
}

/// Remove the named containers when dropped, and every container of the
/// listed nodes.
#[derive(Default)]
struct Cleanup {
    nodes: Vec<String>,
    names: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in &self.nodes {
            cleanup_node(n);
        }
        for n in &self.names {
            let _ = docker_cli(&["rm", "-f", n]);
        }
    }
}

/// Start an agent on a fresh root and wait until it is ready (socket
/// answers, "agent ready" logged; its first poll is a long poll held by
/// the explorer while it has nothing for the node): (process, spawn time,
/// ready time).
async fn fresh_agent(root: &Root, explorer: &str) -> Result<(Proc, f64, f64)> {
    let t0 = now_s();
    let p = spawn_agent(root, explorer, &[])?;
    wait_status(&root.socket, Duration::from_secs(60), |_| true).await?;
    let t = log_time(&root.log, "agent ready", None, Duration::from_secs(60)).await?;
    Ok((p, t0, t))
}

/// Figure 3: reservation to running container vs `docker run -d`.
async fn fig3(
    dir: &Path,
    docker: &bollard::Docker,
    n: usize,
    clean: &mut Cleanup,
) -> Result<Value> {
    let explorer = start_explorer(dir).await?;
    let root = make_root(dir, "fig3")?;
    clean.nodes.push(root.node.id().to_string());
    let (mut agent, _, _) = fresh_agent(&root, &explorer.url).await?;
    let events = Events::start(docker.clone()).await;
    let user = Identity::generate();
    let http = reqwest::Client::new();
    let mut rows = Vec::new();
    for i in 0..n {
        let mut row = json!({"i": i});
        // Alternate who goes first, so neither always runs on a warmer engine.
        let order: [&str; 3] = if i % 2 == 0 {
            ["agent", "matched", "plain"]
        } else {
            ["plain", "matched", "agent"]
        };
        for who in order {
            tokio::time::sleep(Duration::from_millis(300)).await;
            match who {
                "agent" => {
                    let r = signed(
                        &user,
                        root.node.id(),
                        "sleep 3600",
                        chrono::Utc::now().timestamp(),
                        Duration::from_secs(3600),
                    );
                    let t0 = now_s();
                    let id = post(&http, &explorer.url, &r).await?;
                    let t_post = now_s();
                    let ev = events
                        .wait(
                            "start",
                            "io.agent.reservation",
                            &id,
                            Duration::from_secs(60),
                        )
                        .await?;
                    let name = ev.attrs.get("name").cloned().unwrap_or_default();
                    if !running(docker, &name).await {
                        bail!("container {name} of {id} is not running after its start event");
                    }
                    let t_prov = log_time(
                        &root.log,
                        "provisioning",
                        Some(&id),
                        Duration::from_secs(10),
                    )
                    .await?;
                    let t_done =
                        log_time(&root.log, "provisioned", Some(&id), Duration::from_secs(10))
                            .await?;
                    row["agent"] = json!({
                        "id": id,
                        "post_to_running_s": ev.t - t0,
                        "post_answer_s": t_post - t0,
                        "provisioning_to_running_s": ev.t - t_prov,
                        "provisioning_to_provisioned_s": t_done - t_prov,
                        "post_to_provisioning_s": t_prov - t0,
                    });
                }
                peer => {
                    let name = format!("bench-{peer}-{}-{i}", std::process::id());
                    clean.names.push(name.clone());
                    let mut args = vec!["run", "-d", "--name", name.as_str()];
                    if peer == "matched" {
                        args.extend(AGENT_FLAGS);
                    } else {
                        args.extend([IMAGE, "sleep", "3600"]);
                    }
                    let t0 = now_s();
                    let out = tokio::process::Command::new("docker")
                        .args(&args)
                        .stdout(Stdio::null())
                        .status()
                        .await?;
                    let t_cli = now_s();
                    if !out.success() {
                        bail!("docker {args:?} failed");
                    }
                    let ev = events
                        .wait("start", "name", &name, Duration::from_secs(60))
                        .await?;
                    if !running(docker, &name).await {
                        bail!("container {name} is not running after its start event");
                    }
                    row[peer] = json!({
                        "spawn_to_running_s": ev.t - t0,
                        "cli_exit_s": t_cli - t0,
                    });
                    let _ = docker_cli(&["rm", "-f", &name]);
                }
            }
        }
        eprintln!("fig3 {i}: {row}");
        rows.push(row);
    }
    let (rss, hwm) = rss_kib(agent.pid())?;
    agent.stop();
    cleanup_node(root.node.id());
    Ok(json!({"runs": rows, "agent_rss_after_kib": rss, "agent_hwm_after_kib": hwm}))
}

/// Reservations per wave whose process ignores SIGTERM, all expiring in the
/// same second (figure 4b).
const IGNORING_WAVE: usize = 6;
/// Their duration: longer than the agent's default `--stop-grace` (10 s),
/// so the SIGTERM goes out before the expiry and the SIGKILL at it.
const IGNORING_DURATION_S: f64 = 15.0;

/// Figure 4: expiry lateness over `waves` waves of 5 reservations lasting
/// 3, 3.5, 4, 4.5 and 5 s; plus `ignoring_waves` waves of
/// [`IGNORING_WAVE`] reservations lasting [`IGNORING_DURATION_S`] whose
/// process ignores SIGTERM (plain `sleep` as PID 1), which the agent has
/// Docker SIGKILL at the expiry (`--stop-grace` left at its default).
async fn fig4(
    dir: &Path,
    docker: &bollard::Docker,
    waves: usize,
    ignoring_waves: usize,
    clean: &mut Cleanup,
) -> Result<Value> {
    let explorer = start_explorer(&dir.join("fig4-explorer").tap_mkdir()?).await?;
    let root = make_root(dir, "fig4")?;
    clean.nodes.push(root.node.id().to_string());
    let (mut agent, _, _) = fresh_agent(&root, &explorer.url).await?;
    let events = Events::start(docker.clone()).await;
    let user = Identity::generate();
    let http = reqwest::Client::new();

    let run_wave = async |entrypoint: &str, durations: &[f64], label: &str| -> Result<Vec<Value>> {
        let created = chrono::Utc::now().timestamp();
        let mut posted = Vec::new();
        for d in durations {
            let dur = Duration::from_secs_f64(*d);
            let r = signed(&user, root.node.id(), entrypoint, created, dur);
            let id = post(&http, &explorer.url, &r).await?;
            posted.push((id, created as f64 + d));
        }
        let mut out = Vec::new();
        for (id, expiry) in posted {
            let start = events
                .wait(
                    "start",
                    "io.agent.reservation",
                    &id,
                    Duration::from_secs(60),
                )
                .await?;
            let gone = events
                .wait(
                    "destroy",
                    "io.agent.reservation",
                    &id,
                    Duration::from_secs(90),
                )
                .await?;
            let die = events
                .wait("die", "io.agent.reservation", &id, Duration::from_secs(1))
                .await
                .map(|e| e.t)
                .unwrap_or(gone.t);
            let row = json!({
                "id": id,
                "kind": label,
                "running_before_expiry_s": expiry - start.t,
                "die_late_s": die - expiry,
                "gone_late_s": gone.t - expiry,
            });
            eprintln!("fig4 {row}");
            out.push(row);
        }
        Ok(out)
    };

    let mut rows = Vec::new();
    for _ in 0..waves {
        rows.extend(run_wave(TERM_AWARE, &[3.0, 3.5, 4.0, 4.5, 5.0], "term_aware").await?);
    }
    let mut ignoring_rows = Vec::new();
    for _ in 0..ignoring_waves {
        let wave = [IGNORING_DURATION_S; IGNORING_WAVE];
        ignoring_rows.extend(run_wave("sleep 3600", &wave, "ignores_sigterm").await?);
    }
    agent.stop();
    cleanup_node(root.node.id());
    Ok(json!({
        "term_aware": rows,
        "ignores_sigterm": ignoring_rows,
        "ignores_sigterm_wave": IGNORING_WAVE,
        "ignores_sigterm_duration_s": IGNORING_DURATION_S,
        "stop_grace_s": 10,
    }))
}

/// `mkdir -p` that hands the path on.
trait TapMkdir {
    fn tap_mkdir(self) -> Result<PathBuf>;
}

impl TapMkdir for PathBuf {
    fn tap_mkdir(self) -> Result<PathBuf> {
        std::fs::create_dir_all(&self)?;
        Ok(self)
    }
}

/// Figure 5: RSS of an idle agent, `runs` fresh starts.
async fn fig5(dir: &Path, runs: usize, clean: &mut Cleanup) -> Result<Value> {
    let explorer = start_explorer(&dir.join("fig5-explorer").tap_mkdir()?).await?;
    let mut rows = Vec::new();
    for i in 0..runs {
        let root = make_root(dir, &format!("fig5-{i}"))?;
        clean.nodes.push(root.node.id().to_string());
        let (mut agent, t0, t_ready) = fresh_agent(&root, &explorer.url).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (rss, hwm) = rss_kib(agent.pid())?;
        agent.stop();
        let row = json!({"rss_kib": rss, "hwm_kib": hwm, "start_to_ready_s": t_ready - t0});
        eprintln!("fig5 {i}: {row}");
        rows.push(row);
    }
    Ok(json!({"runs": rows}))
}

/// A Docker Engine API stub on a Unix socket, for the restart figure: every
/// seeded reservation's container is listed running and labelled (as
/// `docker ps` would show 10,000 of them), every container named like the
/// agent's (`agent-<node>-ct-<id>`) inspects as running; other lists are
/// empty. It counts the requests it answers.
#[derive(Default)]
struct StubStats {
    requests: AtomicU64,
    inspects: AtomicU64,
    lists: AtomicU64,
}

async fn stub_docker(
    path: PathBuf,
    node: String,
    ids: Arc<Vec<String>>,
    stats: Arc<StubStats>,
) -> Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let node = node.clone();
            let stats = stats.clone();
            let ids = ids.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let answer = stub_answer(&req, &node, &ids, &stats);
                    async move { Ok::<_, Infallible>(answer) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}

fn stub_answer<B>(
    req: &hyper::Request<B>,
    node: &str,
    ids: &[String],
    stats: &StubStats,
) -> hyper::Response<axum::body::Body> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path();
    // Drop the `/v1.NN` version prefix.
    let path = match path.strip_prefix("/v1.") {
        Some(rest) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
        None => path,
    };
    let reply = |code: u16, body: Value| {
        hyper::Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .header("api-version", "1.47")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap_or_default()
    };
    let prefix = format!("agent-{}-ct-", node.chars().take(8).collect::<String>());
    match path {
        "/_ping" => hyper::Response::new(axum::body::Body::from("OK")),
        "/version" => reply(
            200,
            json!({"Version": "stub", "ApiVersion": "1.47", "MinAPIVersion": "1.24", "Os": "linux", "Arch": "amd64"}),
        ),
        "/info" => reply(
            200,
            json!({"NCPU": 2, "MemTotal": 1u64 << 33, "ServerVersion": "stub"}),
        ),
        "/containers/json" => {
            stats.lists.fetch_add(1, Ordering::Relaxed);
            let q = req.uri().query().unwrap_or_default();
            if q.contains("io.agent.type%3Dcontainer") || q.contains("io.agent.type=container") {
                let list: Vec<Value> = ids
                    .iter()
                    .map(|id| {
                        json!({
                            "Id": format!("{:064x}", id.len()),
                            "Names": [format!("/{prefix}{id}")],
                            "Image": IMAGE,
                            "State": "running",
                            "Status": "Up 1 hour",
                            "Labels": {
                                "io.agent.reservation": id,
                                "io.agent.type": "container",
                                "io.agent.node": node,
                            },
                        })
                    })
                    .collect();
                reply(200, Value::Array(list))
            } else {
                reply(200, json!([]))
            }
        }
        "/networks" => reply(200, json!([])),
        "/volumes" => reply(200, json!({"Volumes": [], "Warnings": []})),
        p if p.starts_with("/containers/") && p.ends_with("/json") => {
            stats.inspects.fetch_add(1, Ordering::Relaxed);
            let name = &p["/containers/".len()..p.len() - "/json".len()];
            match name.strip_prefix(&prefix) {
                Some(id) => reply(
                    200,
                    json!({
                        "Id": format!("{:064x}", id.len()),
                        "Name": format!("/{name}"),
                        "State": {"Status": "running", "Running": true},
                        "Config": {"Image": IMAGE, "Labels": {
                            "io.agent.reservation": id,
                            "io.agent.type": "container",
                            "io.agent.node": node,
                        }},
                    }),
                ),
                None => reply(
                    404,
                    json!({"message": format!("No such container: {name}")}),
                ),
            }
        }
        p if p.starts_with("/images/") => reply(200, json!({"Id": "sha256:stub"})),
        _ => reply(404, json!({"message": "not in the stub"})),
    }
}

/// Post `n` container reservations (`sleep 3600`, `memory_mib` each) for
/// `node` with `conc` clients; ids in order, and the POST rate.
async fn post_many(
    url: &str,
    user: &Identity,
    node: &str,
    n: usize,
    conc: usize,
    memory_mib: u64,
) -> Result<(Vec<(String, Reservation)>, f64)> {
    let created = chrono::Utc::now().timestamp();
    let all: Vec<Reservation> = (0..n)
        .map(|_| {
            signed_with(
                user,
                node,
                IMAGE,
                "sleep 3600",
                created,
                Duration::from_secs(6 * 3600),
                memory_mib,
            )
        })
        .collect();
    let http = reqwest::Client::new();
    let chunks: Vec<Vec<Reservation>> = all
        .chunks(n.div_ceil(conc).max(1))
        .map(<[_]>::to_vec)
        .collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let http = http.clone();
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for mut r in chunk {
                let id = post(&http, &url, &r).await?;
                r.id = id.clone();
                out.push((id, r));
            }
            anyhow::Ok(out)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.extend(t.await??);
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    Ok((out, rate))
}

/// Write `posted` into a new store at `root/cache` as the engine would have
/// (result signed by the node), then acknowledge the outbox: the state of a
/// node that delivered everything.
fn seed(root: &Root, posted: &[(String, Reservation)]) -> Result<f64> {
    let start = Instant::now();
    let store = Store::open(&root.root.join("cache"))?;
    for (id, r) in posted {
        let data = json!({"id": format!("{:064x}", r.id.len() * 7919), "ipv4": ""});
        let mut r = r.clone();
        r.id = id.clone();
        let res = root.node.ok_result(&r, &data)?;
        store.record_provisioned(&Cached::new(r, res.clone()), &res)?;
    }
    loop {
        let batch = store.outbox_peek(1000)?;
        if batch.is_empty() {
            break;
        }
        for e in batch {
            store.outbox_ack(e.seq)?;
        }
    }
    store.flush()?;
    Ok(start.elapsed().as_secs_f64())
}

/// Time one restart of a copy of `tmpl`: process start to socket answer,
/// to the "agent ready" log line (cache loaded and repaired), to the first
/// `from=0` answer handled (cursor past `last`).
async fn restart_once(
    tmpl: &Root,
    dir: &Path,
    name: &str,
    explorer: &str,
    env: &[(&str, &str)],
    cached: u64,
    last: u64,
) -> Result<Value> {
    let run = make_root(dir, name)?;
    std::fs::remove_dir_all(&run.root)?;
    let ok = Command::new("cp")
        .arg("-a")
        .arg(&tmpl.root)
        .arg(&run.root)
        .status()?
        .success();
    if !ok {
        bail!("cp -a {} {}", tmpl.root.display(), run.root.display());
    }
    let t0 = now_s();
    let mut agent = spawn_agent(&run, explorer, env)?;
    let (t_socket, _) = wait_status(&run.socket, Duration::from_secs(120), |_| true).await?;
    // `ready` in the status: cache loaded and reconciled.
    let (t_ready_status, _) = wait_status(&run.socket, Duration::from_secs(300), |v| {
        v["ready"] == json!(true)
    })
    .await?;
    let (t_polled, st) = wait_status(&run.socket, Duration::from_secs(300), |v| {
        v["cursor"].as_u64().unwrap_or(0) > last
    })
    .await?;
    let t_ready = log_time(&run.log, "agent ready", None, Duration::from_secs(10)).await?;
    let (rss_ready, _) = rss_kib(agent.pid())?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, hwm) = rss_kib(agent.pid())?;
    // `BENCH_TRIM_GDB=1`: how much of that RSS is freed heap glibc keeps
    // (gdb calls malloc_trim(0) in the agent). A diagnosis aid only.
    let mut rss_trimmed = Value::Null;
    if std::env::var_os("BENCH_TRIM_GDB").is_some() {
        let pid = agent.pid().to_string();
        let _ = Command::new("gdb")
            .args(["-p", &pid, "-batch", "-ex", "call (int)malloc_trim(0)"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        rss_trimmed = json!(rss_kib(agent.pid())?.0);
    }
    agent.stop();
    if st["cached"].as_u64() != Some(cached) {
        bail!(
            "{name}: status says {} cached, expected {cached}",
            st["cached"]
        );
    }
    let log = std::fs::read_to_string(&run.log).unwrap_or_default();
    let repairs = log.matches("provisioning again").count();
    let _ = std::fs::remove_dir_all(&run.root);
    Ok(json!({
        "start_to_socket_s": t_socket - t0,
        "start_to_ready_log_s": t_ready - t0,
        "start_to_ready_status_s": t_ready_status - t0,
        "start_to_first_poll_handled_s": t_polled - t0,
        "rss_at_ready_kib": rss_ready,
        "rss_idle_kib": rss,
        "hwm_kib": hwm,
        "rss_after_malloc_trim_kib": rss_trimmed,
        "repairs": repairs,
    }))
}

/// Median latency (s) of `n` sequential inspects of `name` through bollard.
async fn inspect_latency(docker: &bollard::Docker, name: &str, n: usize) -> Result<Vec<f64>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        docker.inspect_container(name, None).await?;
        v.push(t.elapsed().as_secs_f64());
    }
    Ok(v)
}

/// Figure 6 (and 5 with 10,000 cached): restarts.
async fn fig6(
    dir: &Path,
    docker: &bollard::Docker,
    n: usize,
    runs: usize,
    real_k: usize,
    clean: &mut Cleanup,
) -> Result<Value> {
    let explorer = start_explorer(&dir.join("fig6-explorer").tap_mkdir()?).await?;
    let user = Identity::generate();

    // 10,000 cached, Docker stub.
    let tmpl = make_root(dir, "fig6-stub-tmpl")?;
    // One client, so reservation numbers follow the order of `posted`.
    let (posted, post_rate) = post_many(&explorer.url, &user, tmpl.node.id(), n, 1, 64).await?;
    let seed_s = seed(&tmpl, &posted)?;
    let stub_sock = dir.join("docker-stub.sock");
    let stats = Arc::new(StubStats::default());
    let ids = Arc::new(posted.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>());
    stub_docker(
        stub_sock.clone(),
        tmpl.node.id().to_string(),
        ids,
        stats.clone(),
    )
    .await?;
    let host = format!("unix://{}", stub_sock.display());
    let last = posted
        .iter()
        .filter_map(|(_, r)| r.number())
        .max()
        .unwrap_or(0);
    let mut stub_runs = Vec::new();
    for i in 0..runs {
        let before = stats.inspects.load(Ordering::Relaxed);
        let lists_before = stats.lists.load(Ordering::Relaxed);
        let mut row = restart_once(
            &tmpl,
            dir,
            &format!("fig6-stub-{i}"),
            &explorer.url,
            &[("DOCKER_HOST", host.as_str())],
            n as u64,
            last,
        )
        .await?;
        row["stub_inspects"] = json!(stats.inspects.load(Ordering::Relaxed) - before);
        row["stub_lists"] = json!(stats.lists.load(Ordering::Relaxed) - lists_before);
        eprintln!("fig6 stub {i}: {row}");
        stub_runs.push(row);
    }

    // A few cached containers that really run, real engine.
    let real = make_root(dir, "fig6-real-tmpl")?;
    clean.nodes.push(real.node.id().to_string());
    let (posted_real, _) = post_many(&explorer.url, &user, real.node.id(), real_k, 1, 64).await?;
    seed(&real, &posted_real)?;
    let scope: String = real.node.id().chars().take(8).collect();
    let mut real_name = String::new();
    for (id, r) in &posted_real {
        real_name = format!("agent-{scope}-ct-{id}");
        docker_cli(&[
            "run",
            "-d",
            "--name",
            &real_name,
            "--network",
            "none",
            "--label",
            &format!("io.agent.reservation={id}"),
            "--label",
            &format!("io.agent.user={}", r.user_id),
            "--label",
            "io.agent.type=container",
            "--label",
            &format!("io.agent.node={}", real.node.id()),
            "--entrypoint",
            "sleep",
            IMAGE,
            "3600",
        ])?;
    }
    let last_real = posted_real
        .iter()
        .filter_map(|(_, r)| r.number())
        .max()
        .unwrap_or(0);
    let mut real_runs = Vec::new();
    for i in 0..runs.min(3) {
        let row = restart_once(
            &real,
            dir,
            &format!("fig6-real-{i}"),
            &explorer.url,
            &[],
            real_k as u64,
            last_real,
        )
        .await?;
        eprintln!("fig6 real {i}: {row}");
        real_runs.push(row);
    }

    // One inspect: the stub vs the real engine, same client library.
    let stub_client = bollard::Docker::connect_with_unix(&host, 120, bollard::API_DEFAULT_VERSION)?;
    let stub_name = format!(
        "agent-{}-ct-{}",
        tmpl.node.id().chars().take(8).collect::<String>(),
        posted[0].0
    );
    let inspect_stub = inspect_latency(&stub_client, &stub_name, 1000).await?;
    let inspect_real = inspect_latency(docker, &real_name, 1000).await?;
    cleanup_node(real.node.id());
    Ok(json!({
        "cached": n,
        "explorer_post_rate_per_s": post_rate,
        "seed_s": seed_s,
        "stub": stub_runs,
        "real_cached": real_k,
        "real": real_runs,
        "inspect_stub_s": inspect_stub,
        "inspect_real_s": inspect_real,
    }))
}

/// Wait for the `start` event of every reservation in `ids`; the latest.
async fn all_started(events: &Events, ids: &[String], timeout: Duration) -> Result<f64> {
    let mut last = 0.0f64;
    for id in ids {
        let ev = events
            .wait("start", "io.agent.reservation", id, timeout)
            .await?;
        last = last.max(ev.t);
    }
    Ok(last)
}

/// Earliest `provisioning` log line of `ids`, and the latest.
async fn provisioning_span(log: &Path, ids: &[String]) -> Result<(f64, f64)> {
    let (mut first, mut last) = (f64::MAX, 0.0f64);
    for id in ids {
        let t = log_time(log, "provisioning", Some(id), Duration::from_secs(30)).await?;
        first = first.min(t);
        last = last.max(t);
    }
    Ok((first, last))
}

/// How many containers of `node` Docker says are running.
fn running_count(node: &str) -> usize {
    docker_cli(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.agent.node={node}"),
        "--filter",
        "status=running",
    ])
    .map(|s| s.lines().filter(|l| !l.is_empty()).count())
    .unwrap_or(0)
}

/// Figure 9: `k` container reservations in one poll answer → all running,
/// beside `k` sequential `docker run -d` with the agent's flags; `runs`
/// rounds, order alternating. The reservations are posted before the agent
/// starts (fresh root each round), so its first poll (`from=0`) answers
/// with all of them.
async fn fig9(
    dir: &Path,
    docker: &bollard::Docker,
    runs: usize,
    k: usize,
    clean: &mut Cleanup,
) -> Result<Value> {
    let explorer = start_explorer(&dir.join("fig9-explorer").tap_mkdir()?).await?;
    let events = Events::start(docker.clone()).await;
    let user = Identity::generate();
    let http = reqwest::Client::new();
    let mut rows = Vec::new();
    for i in 0..runs {
        let mut row = json!({"i": i, "k": k});
        let order = if i % 2 == 0 {
            ["agent", "sequential"]
        } else {
            ["sequential", "agent"]
        };
        for who in order {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if who == "agent" {
                let root = make_root(dir, &format!("fig9-{i}"))?;
                clean.nodes.push(root.node.id().to_string());
                let created = chrono::Utc::now().timestamp();
                let mut ids = Vec::new();
                for _ in 0..k {
                    let r = signed(
                        &user,
                        root.node.id(),
                        "sleep 3600",
                        created,
                        Duration::from_secs(3600),
                    );
                    ids.push(post(&http, &explorer.url, &r).await?);
                }
                let t_spawn = now_s();
                let mut agent = spawn_agent(&root, &explorer.url, &[])?;
                let t_last = all_started(&events, &ids, Duration::from_secs(120)).await?;
                let (p_first, p_last) = provisioning_span(&root.log, &ids).await?;
                let t_ready =
                    log_time(&root.log, "agent ready", None, Duration::from_secs(10)).await?;
                let up = running_count(root.node.id());
                if up != k {
                    bail!("fig9: {up} of {k} containers running");
                }
                row["agent"] = json!({
                    "first_provisioning_to_all_running_s": t_last - p_first,
                    "provisioning_spread_s": p_last - p_first,
                    "spawn_to_all_running_s": t_last - t_spawn,
                    "ready_to_first_provisioning_s": p_first - t_ready,
                });
                agent.stop();
                cleanup_node(root.node.id());
            } else {
                let names: Vec<String> = (0..k)
                    .map(|j| format!("bench-seq-{}-{i}-{j}", std::process::id()))
                    .collect();
                clean.names.extend(names.iter().cloned());
                let t0 = now_s();
                for name in &names {
                    let mut args = vec!["run", "-d", "--name", name.as_str()];
                    args.extend(AGENT_FLAGS);
                    let ok = tokio::process::Command::new("docker")
                        .args(&args)
                        .stdout(Stdio::null())
                        .status()
                        .await?
                        .success();
                    if !ok {
                        bail!("docker {args:?} failed");
                    }
                }
                let t_cli = now_s();
                let mut t_last = 0.0f64;
                for name in &names {
                    let ev = events
                        .wait("start", "name", name, Duration::from_secs(60))
                        .await?;
                    t_last = t_last.max(ev.t);
                    if !running(docker, name).await {
                        bail!("container {name} is not running after its start event");
                    }
                }
                row["sequential"] = json!({
                    "spawn_to_all_running_s": t_last - t0,
                    "cli_exits_s": t_cli - t0,
                });
                let mut args = vec!["rm", "-f"];
                args.extend(names.iter().map(String::as_str));
                let _ = docker_cli(&args);
            }
        }
        eprintln!("fig9 {i}: {row}");
        rows.push(row);
    }
    Ok(json!({"k": k, "runs": rows}))
}

/// A registry on 127.0.0.1 that hangs every pull: it fails the TLS
/// handshake at once (Docker then falls back to plain HTTP, as it does for
/// an insecure registry), answers `GET /v2/` (Docker's ping, which has a
/// 15 s client timeout) and never answers anything else (the manifest
/// request hangs for as long as the client waits). Its port, and the
/// number of requests it left hanging.
async fn hanging_registry() -> Result<(u16, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let hung = Arc::new(AtomicU64::new(0));
    let count = hung.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if buf[0] == 0x16 {
                        let _ = s
                            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                            .await;
                        return;
                    }
                    if buf[..n].starts_with(b"GET /v2/ ") {
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 200 OK\r\nDocker-Distribution-API-Version: registry/2.0\r\n\
                                  Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
                            )
                            .await;
                        continue;
                    }
                    // Hold the request unanswered until the client gives up.
                    count.fetch_add(1, Ordering::Relaxed);
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                    return;
                }
            });
        }
    });
    Ok((port, hung))
}

/// Figure 10: 3 containers behind one whose image pull hangs. Variant
/// `same`: the 4 reservations are posted before the agent starts (one poll
/// answer, the hanging one first). Variant `next`: the hanging one is
/// posted to a running agent, and the 3 once its provisioning started (a
/// later answer). The agent runs with `--provision-timeout
/// provision_timeout_s`, so the hanging one ends with a signed error.
async fn fig10(
    dir: &Path,
    docker: &bollard::Docker,
    runs: usize,
    provision_timeout_s: u64,
    clean: &mut Cleanup,
) -> Result<Value> {
    let explorer = start_explorer(&dir.join("fig10-explorer").tap_mkdir()?).await?;
    let (port, hung) = hanging_registry().await?;
    let hang_image = format!("127.0.0.1:{port}/hang:1");
    let events = Events::start(docker.clone()).await;
    let user = Identity::generate();
    let http = reqwest::Client::new();
    let timeout = format!("{provision_timeout_s}s");
    let env = [("AGENT_PROVISION_TIMEOUT", timeout.as_str())];
    let mut rows = Vec::new();
    for i in 0..runs {
        for variant in ["same", "next"] {
            let root = make_root(dir, &format!("fig10-{variant}-{i}"))?;
            clean.nodes.push(root.node.id().to_string());
            let created = chrono::Utc::now().timestamp();
            let dur = Duration::from_secs(3600);
            let hang = signed_with(
                &user,
                root.node.id(),
                &hang_image,
                "sleep 3600",
                created,
                dur,
                64,
            );
            let mut agent;
            let hang_id;
            let mut ids = Vec::new();
            let t_start;
            let t_spawn;
            if variant == "same" {
                hang_id = post(&http, &explorer.url, &hang).await?;
                for _ in 0..3 {
                    let r = signed(&user, root.node.id(), "sleep 3600", created, dur);
                    ids.push(post(&http, &explorer.url, &r).await?);
                }
                t_spawn = now_s();
                agent = spawn_agent(&root, &explorer.url, &env)?;
                t_start = f64::NAN;
            } else {
                t_spawn = now_s();
                agent = spawn_agent(&root, &explorer.url, &env)?;
                wait_status(&root.socket, Duration::from_secs(60), |_| true).await?;
                log_time(&root.log, "agent ready", None, Duration::from_secs(60)).await?;
                hang_id = post(&http, &explorer.url, &hang).await?;
                log_time(
                    &root.log,
                    "provisioning",
                    Some(&hang_id),
                    Duration::from_secs(30),
                )
                .await?;
                tokio::time::sleep(Duration::from_millis(500)).await;
                t_start = now_s();
                for _ in 0..3 {
                    let r = signed(&user, root.node.id(), "sleep 3600", created, dur);
                    ids.push(post(&http, &explorer.url, &r).await?);
                }
            }
            let t_last = all_started(&events, &ids, Duration::from_secs(60)).await?;
            let t_hang_prov = log_time(
                &root.log,
                "provisioning",
                Some(&hang_id),
                Duration::from_secs(10),
            )
            .await?;
            let (p_first, _) = provisioning_span(&root.log, &ids).await?;
            // The hanging one: no container, still provisioning.
            let log = std::fs::read_to_string(&root.log).unwrap_or_default();
            let hang_pending = !log.lines().any(|l| {
                l.contains(&format!("\"reservation\":\"{hang_id}\""))
                    && (l.contains("\"provisioned\"") || l.contains("\"refused\""))
            });
            let up = running_count(root.node.id());
            // Its end: the provisioning deadline, then a signed error
            // (logged "refused" with the error it carries).
            let (t_fail, fail) = log_line(
                &root.log,
                "refused",
                Some(&hang_id),
                Duration::from_secs(provision_timeout_s + 60),
            )
            .await?;
            let first = if variant == "same" {
                t_hang_prov.min(p_first)
            } else {
                t_start
            };
            let row = json!({
                "i": i,
                "variant": variant,
                "three_running_s": t_last - first,
                "three_provisioning_to_running_s": t_last - p_first,
                "spawn_to_three_running_s": t_last - t_spawn,
                "hang_pending_when_three_running": hang_pending,
                "running_when_three_running": up,
                "hang_provisioning_to_error_s": t_fail - t_hang_prov,
                "hang_error": fail["error"],
            });
            eprintln!("fig10 {row}");
            rows.push(row);
            agent.stop();
            cleanup_node(root.node.id());
        }
    }
    Ok(json!({
        "runs": rows,
        "provision_timeout_s": provision_timeout_s,
        "hung_registry_requests": hung.load(Ordering::Relaxed),
    }))
}

/// Figure 11: restart with `n` cached containers really running on the
/// real engine (busybox `sleep`, 16 MiB each so the node's memory admits
/// 1,000), provisioned through the agent (posted before it starts: one poll
/// answer); the agent is killed (SIGKILL) and each of `runs` restarts
/// starts on a copy of its root.
async fn fig11(dir: &Path, sizes: &[usize], runs: usize, clean: &mut Cleanup) -> Result<Value> {
    let explorer = start_explorer(&dir.join("fig11-explorer").tap_mkdir()?).await?;
    let user = Identity::generate();
    let mut out = Vec::new();
    for &n in sizes {
        let root = make_root(dir, &format!("fig11-{n}"))?;
        clean.nodes.push(root.node.id().to_string());
        let (posted, _) = post_many(&explorer.url, &user, root.node.id(), n, 4, 16).await?;
        let last = posted
            .iter()
            .filter_map(|(_, r)| r.number())
            .max()
            .unwrap_or(0);
        let t_spawn = now_s();
        let agent = spawn_agent(&root, &explorer.url, &[])?;
        // Polled every 100 ms (not wait_status's 5 ms: this takes minutes).
        let waited = Instant::now();
        let t_all = loop {
            if let Some(v) = status(&root.socket).await {
                if v["cached"].as_u64() == Some(n as u64) {
                    break now_s();
                }
            }
            if waited.elapsed() > Duration::from_secs(3600) {
                bail!("fig11: {n} not provisioned within an hour");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let t_first = log_time(&root.log, "provisioning", None, Duration::from_secs(10)).await?;
        let (rss_prov, hwm_prov) = rss_kib(agent.pid())?;
        let up = running_count(root.node.id());
        if up != n {
            bail!("fig11: {up} of {n} containers running");
        }
        let mem_avail = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemAvailable:"))
                    .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
            })
            .and_then(|v| v.parse::<u64>().ok());
        eprintln!(
            "fig11 {n}: provisioned in {:.1} s ({:.1}/s), MemAvailable {mem_avail:?} KiB",
            t_all - t_first,
            n as f64 / (t_all - t_first)
        );
        // kill -9.
        drop(agent);
        let mut restarts = Vec::new();
        for i in 0..runs {
            let row = restart_once(
                &root,
                dir,
                &format!("fig11-{n}-r{i}"),
                &explorer.url,
                &[],
                n as u64,
                last,
            )
            .await?;
            eprintln!("fig11 {n} restart {i}: {row}");
            restarts.push(row);
        }
        let t_clean = Instant::now();
        cleanup_node(root.node.id());
        out.push(json!({
            "n": n,
            "spawn_to_all_provisioned_s": t_all - t_spawn,
            "first_provisioning_to_all_provisioned_s": t_all - t_first,
            "provision_rate_per_s": n as f64 / (t_all - t_first),
            "rss_after_provisioning_kib": rss_prov,
            "hwm_after_provisioning_kib": hwm_prov,
            "mem_available_with_all_running_kib": mem_avail,
            "restarts": restarts,
            "cleanup_s": t_clean.elapsed().as_secs_f64(),
        }));
    }
    Ok(json!({"sizes": out}))
}

fn main() -> Result<()> {
    let mut out = PathBuf::from("bench/out/e2e.json");
    let mut figs: Vec<String> = Vec::new();
    let mut quick = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "--out" => out = PathBuf::from(args.next().context("--out FILE")?),
            "--quick" => quick = true,
            f if f.starts_with("fig") => figs.push(f.to_string()),
            other => bail!(
                "unknown argument {other:?} (expected --out FILE, --quick, fig3..fig6, fig9..fig11)"
            ),
        }
    }
    if figs.is_empty() {
        figs = ["fig3", "fig4", "fig5", "fig6", "fig9", "fig10", "fig11"]
            .map(String::from)
            .to_vec();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(out, figs, quick))
}

async fn run(out: PathBuf, figs: Vec<String>, quick: bool) -> Result<()> {
    let docker = bollard::Docker::connect_with_local_defaults()?
        .negotiate_version()
        .await
        .context("the Docker engine does not answer")?;
    docker
        .inspect_image(IMAGE)
        .await
        .with_context(|| format!("{IMAGE} is missing: run bash tests/images/build.sh"))?;
    let version = docker.version().await?;
    let dir = tempfile::Builder::new().prefix("agent-bench").tempdir()?;
    let mut clean = Cleanup::default();
    let mut res = json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "docker": version.version,
        "quick": quick,
    });
    let (n3, waves, ign, idle, n6, runs6, k) = if quick {
        (3, 2, 1, 2, 1000, 2, 5)
    } else {
        (10, 10, 3, 5, 10_000, 5, 20)
    };
    let (runs9, runs10, runs11) = if quick { (2, 1, 2) } else { (7, 3, 3) };
    // `BENCH_FIG11_SIZES=500,1000` (default 500 and 1,000; quick: 50).
    let sizes11: Vec<usize> = match std::env::var("BENCH_FIG11_SIZES") {
        Ok(v) => v
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()
            .context("BENCH_FIG11_SIZES: comma-separated counts")?,
        Err(_) if quick => vec![50],
        Err(_) => vec![500, 1000],
    };
    for f in &figs {
        let started = Instant::now();
        let v = match f.as_str() {
            "fig3" => fig3(dir.path(), &docker, n3, &mut clean).await?,
            "fig4" => fig4(dir.path(), &docker, waves, ign, &mut clean).await?,
            "fig5" => fig5(dir.path(), idle, &mut clean).await?,
            "fig6" => fig6(dir.path(), &docker, n6, runs6, k, &mut clean).await?,
            "fig9" => fig9(dir.path(), &docker, runs9, 12, &mut clean).await?,
            "fig10" => fig10(dir.path(), &docker, runs10, 20, &mut clean).await?,
            "fig11" => fig11(dir.path(), &sizes11, runs11, &mut clean).await?,
            other => bail!("unknown figure {other}"),
        };
        res[f.as_str()] = v;
        res[format!("{f}_wall_s")] = json!(started.elapsed().as_secs_f64());
        eprintln!("{f}: done in {:.0?}", started.elapsed());
    }
    if let Some(p) = out.parent() {
        std::fs::create_dir_all(p)?;
    }
    // Merge with figures of an earlier run written to the same file.
    let mut all: Value = std::fs::read_to_string(&out)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| json!({}));
    if let (Some(a), Some(r)) = (all.as_object_mut(), res.as_object()) {
        for (k, v) in r {
            a.insert(k.clone(), v.clone());
        }
    }
    std::fs::write(&out, serde_json::to_string_pretty(&all)?)?;
    eprintln!("wrote {}", out.display());
    if std::env::var_os("BENCH_KEEP").is_some() {
        // Keep the agents' logs and roots for a closer look.
        eprintln!("kept {}", dir.path().display());
        std::mem::forget(dir);
    }
    Ok(())
}
