//! Harness for the end-to-end tests: start the real `explorer serve` and
//! `agent` binaries on temp dirs and loopback, talk to them like users do.
//!
//! The binaries come from the workspace's target dir; the README's test
//! command builds them (`cargo build --bins`) before running the tests.

#![allow(dead_code)]

pub mod proxy;
pub mod scripted;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reservation::{Identity, Reservation, WorkloadResult};
use serde_json::{json, Value};

/// Path of a workspace binary (target/debug/NAME).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/test-hash -> target/debug
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (cargo build --bins), as scripts/test.sh does",
        p.display()
    );
    p
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until `f` returns Some, or fail after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A running `explorer serve`.
pub struct Explorer {
    pub url: String,
    pub port: u16,
    pub data: PathBuf,
    /// `--database`: PostgreSQL instead of sled under `data`.
    pub database: Option<String>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Explorer {
    pub async fn start() -> Result<Explorer> {
        Self::start_on(None).await
    }

    /// An explorer on the PostgreSQL `database` (every one started on the
    /// same database is a replica of the others).
    pub async fn replica(database: &str) -> Result<Explorer> {
        Self::start_on(Some(database.to_string())).await
    }

    async fn start_on(database: Option<String>) -> Result<Explorer> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("explorer");
        let mut e = Explorer {
            url: String::new(),
            port: free_port(),
            data,
            database,
            child: None,
            _dir: Some(dir),
        };
        e.url = format!("http://127.0.0.1:{}", e.port);
        e.spawn().await?;
        Ok(e)
    }

    /// (Re)start the process on the same port and data.
    pub async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.with_extension("log"))?;
        let mut cmd = Command::new(bin("explorer"));
        cmd.args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", self.port),
            "--data",
        ])
        .arg(&self.data)
        .env_remove("EXPLORER_DATABASE")
        .stdout(Stdio::null())
        .stderr(log);
        if let Some(db) = &self.database {
            cmd.arg("--database").arg(db);
        }
        let child = cmd.spawn().context("spawn explorer")?;
        self.child = Some(child);
        let http = reqwest::Client::new();
        let url = format!("{}/nodes", self.url);
        wait_for("explorer to answer", Duration::from_secs(20), || {
            let http = http.clone();
            let url = url.clone();
            async move { http.get(&url).send().await.ok().map(|_| ()) }
        })
        .await
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The explorer's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    /// POST a reservation signed by `user` for `node`; returns the id.
    pub async fn reserve(
        &self,
        user: &Identity,
        node: &str,
        kind: &str,
        data: Value,
        duration: Duration,
    ) -> Result<String> {
        let r = signed(user, node, kind, data, chrono::Utc::now(), duration);
        self.post(&r).await
    }

    pub async fn post(&self, r: &Reservation) -> Result<String> {
        let resp = reqwest::Client::new()
            .post(format!("{}/reservations/{}", self.url, r.node_id))
            .json(r)
            .send()
            .await?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.as_u16() != 201 {
            bail!("explorer answered {status}: {}", text.trim());
        }
        let body: Value = serde_json::from_str(&text)?;
        Ok(body["id"].as_str().context("id in answer")?.to_string())
    }

    pub async fn get(&self, id: &str) -> Result<Value> {
        Ok(reqwest::get(format!("{}/reservations/{id}", self.url))
            .await?
            .json()
            .await?)
    }

    /// Every result the explorer has received for `id`, in order.
    pub async fn results(&self, id: &str) -> Result<Vec<WorkloadResult>> {
        let v: Value = reqwest::get(format!("{}/reservations/{id}/results", self.url))
            .await?
            .json()
            .await?;
        Ok(serde_json::from_value(v)?)
    }

    /// Wait for the first result of `id`.
    pub async fn wait_result(&self, id: &str) -> Result<WorkloadResult> {
        wait_for(
            &format!("a result for {id}"),
            Duration::from_secs(60),
            || async {
                self.results(id)
                    .await
                    .ok()
                    .and_then(|r| r.into_iter().next())
            },
        )
        .await
    }

    /// The user signature of reservation `id`, as the explorer serves it.
    pub async fn signature_of(&self, id: &str) -> Result<String> {
        let v = self.get(id).await?;
        Ok(v["signature"]
            .as_str()
            .with_context(|| format!("no reservation {id}: {v}"))?
            .to_string())
    }

    /// Check `res` as a user does: signed by `node` for the reservation
    /// the user signed (its signature as the explorer serves it).
    pub async fn verify(&self, res: &WorkloadResult, node: &str) -> Result<()> {
        let sig = self.signature_of(&res.id).await?;
        res.verify(node, &sig)?;
        Ok(())
    }

    /// `DELETE` reservation `id` as `user` does: fetch the reservation and
    /// sign its signature. Returns the status.
    pub async fn delete_as(&self, user: &Identity, id: &str) -> Result<u16> {
        let sig = self.signature_of(id).await?;
        self.delete(id, &user.sign_delete(&sig)).await
    }

    pub async fn delete(&self, id: &str, signature: &str) -> Result<u16> {
        Ok(reqwest::Client::new()
            .delete(format!("{}/reservations/{id}", self.url))
            .json(&json!({"delete_signature": signature}))
            .send()
            .await?
            .status()
            .as_u16())
    }

    pub async fn wait_deleted(&self, id: &str) -> Result<()> {
        wait_for(
            &format!("{id} confirmed deleted"),
            Duration::from_secs(60),
            || async {
                let v = self.get(id).await.ok()?;
                (v["deleted"] == json!(true)).then_some(())
            },
        )
        .await
    }
}

impl Drop for Explorer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A reservation signed by `user`.
pub fn signed(
    user: &Identity,
    node: &str,
    kind: &str,
    data: Value,
    created: chrono::DateTime<chrono::Utc>,
    duration: Duration,
) -> Reservation {
    let mut r: Reservation = serde_json::from_value(json!({
        "id": "",
        "version": 2,
        "node_id": node,
        "user_id": user.id(),
        "type": kind,
        "data": data,
        "created": created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "duration": duration.as_nanos() as i64,
    }))
    .expect("reservation json");
    user.sign_reservation(&mut r);
    r
}

/// A running `agent` on a temp root.
pub struct Agent {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub explorer: String,
    pub node_id: String,
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Agent {
    /// Start an agent polling `explorer`; waits until it is ready.
    pub async fn start(explorer: &str) -> Result<Agent> {
        Self::start_with(explorer, &[]).await
    }

    pub async fn start_with(explorer: &str, env: &[(&str, &str)]) -> Result<Agent> {
        let mut a = Self::prepare(explorer, env)?;
        a.spawn().await?;
        Ok(a)
    }

    /// An agent's root with its node key made, not started yet (so a test
    /// can post reservations for it first).
    pub fn prepare(explorer: &str, env: &[(&str, &str)]) -> Result<Agent> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root)?;
        // The node id is known before start: the seed file decides it.
        let node = Identity::load_or_create(&root.join("node.seed"))?;
        let a = Agent {
            socket: dir.path().join("agent.sock"),
            root,
            explorer: explorer.to_string(),
            node_id: node.id().to_string(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            _dir: Some(dir),
        };
        Ok(a)
    }

    /// Path of the agent's log file.
    pub fn log_path(&self) -> PathBuf {
        self.root.with_extension("log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Spawn the process and wait for its socket (not when a fault is
    /// armed: it may die first).
    pub async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(bin("agent"));
        cmd.arg("--explorer")
            .arg(&self.explorer)
            .arg("--root")
            .arg(&self.root)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--config")
            .arg("/dev/null")
            .env("RUST_LOG", "info,agent=debug")
            // Tests run several 1-core containers on a 2-core machine.
            .env("AGENT_CPU_OVERCOMMIT", "16")
            .env("AGENT_HEARTBEAT_INTERVAL", "2s")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().context("spawn agent")?);
        if self.env.iter().any(|(k, _)| k == "AGENT_FAULT") {
            return Ok(());
        }
        if self.env.iter().any(|(k, _)| k == "DOCKER_HOST") {
            // Docker may be unreachable on purpose: the socket answers, but
            // the agent is not ready until Docker is.
            return self.wait_socket().await;
        }
        self.wait_ready().await
    }

    /// Wait until the control socket answers.
    pub async fn wait_socket(&self) -> Result<()> {
        let socket = self.socket.clone();
        wait_for("agent socket", Duration::from_secs(30), || {
            let socket = socket.clone();
            async move {
                let (code, _, _) = ctl_at(&socket, &["status", "--json"]).ok()?;
                (code == 0).then_some(())
            }
        })
        .await
        .with_context(|| format!("agent log:\n{}", self.log()))
    }

    pub async fn wait_ready(&self) -> Result<()> {
        let socket = self.socket.clone();
        wait_for("agent socket", Duration::from_secs(30), || {
            let socket = socket.clone();
            async move {
                // Ready: socket answers, cache loaded, reconciled.
                let (code, out, _) = ctl_at(&socket, &["status", "--json"]).ok()?;
                let v: serde_json::Value = serde_json::from_str(&out).ok()?;
                (code == 0 && v["ready"] == true).then_some(())
            }
        })
        .await
        .with_context(|| format!("agent log:\n{}", self.log()))
    }

    /// Wait for the process to exit (after a fault), returning its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let start = Instant::now();
        let child = self.child.as_mut().context("not running")?;
        loop {
            if let Some(s) = child.try_wait()? {
                self.child = None;
                return Ok(s);
            }
            if start.elapsed() > timeout {
                bail!(
                    "agent did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = c.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Resident memory of the agent process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid().unwrap_or(0)))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Run `agentctl --socket ... ARGS`: (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> Result<(i32, String, String)> {
        ctl_at(&self.socket, args)
    }

    /// `agentctl status --json`.
    pub fn status(&self) -> Result<Value> {
        let (code, out, err) = self.ctl(&["status", "--json"])?;
        if code != 0 {
            bail!("agentctl status exited {code}: {err}");
        }
        Ok(serde_json::from_str(&out)?)
    }

    pub fn node(&self) -> Identity {
        Identity::load_or_create(&self.root.join("node.seed")).unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        cleanup_node(&self.node_id, &self.root);
    }
}

/// Remove every Docker object of `node` and unmount volume images under
/// `root`, so a test leaves nothing behind even when it fails.
pub fn cleanup_node(node: &str, root: &Path) {
    let f = format!("label=io.agent.node={node}");
    for (list, rm) in [
        (vec!["ps", "-a", "-q"], vec!["rm", "-f"]),
        (vec!["network", "ls", "-q"], vec!["network", "rm"]),
        (vec!["volume", "ls", "-q"], vec!["volume", "rm", "-f"]),
    ] {
        let mut args = list.clone();
        args.extend(["--filter", f.as_str()]);
        if let Ok(ids) = docker(&args) {
            for id in ids.lines().filter(|l| !l.is_empty()) {
                let mut a = rm.clone();
                a.push(id);
                let _ = docker(&a);
            }
        }
    }
    let root = root.to_string_lossy().to_string();
    if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
        for m in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
            if m.starts_with(&root) {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
}

pub fn ctl_at(socket: &Path, args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(bin("agentctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `docker` CLI, for assertions about what users see in `docker ps`.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker").args(args).output()?;
    if !out.status.success() {
        bail!("docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Docker objects of `node` labelled with reservation `id`:
/// (containers, networks, volumes).
pub fn labelled(node: &str, id: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let f = format!("label=io.agent.reservation={id}");
    let n = format!("label=io.agent.node={node}");
    let split = |s: String| {
        s.lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    };
    let q = |what: &[&str]| {
        let mut args: Vec<&str> = what.to_vec();
        args.extend(["--filter", &f, "--filter", &n]);
        split(docker(&args).unwrap_or_default())
    };
    (
        q(&["ps", "-a", "-q"]),
        q(&["network", "ls", "-q"]),
        q(&["volume", "ls", "-q"]),
    )
}

/// Remove every Docker object labelled with a reservation of `user`.
pub fn cleanup_user(user: &str) {
    let f = format!("label=io.agent.user={user}");
    if let Ok(ids) = docker(&["ps", "-a", "-q", "--filter", &f]) {
        for id in ids.lines() {
            let _ = docker(&["rm", "-f", id]);
        }
    }
    if let Ok(ids) = docker(&["network", "ls", "-q", "--filter", &f]) {
        for id in ids.lines() {
            let _ = docker(&["network", "rm", id]);
        }
    }
}

/// Make sure the test images exist (built by tests/images/build.sh).
pub fn ensure_images() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("images/build.sh");
        let st = Command::new("bash")
            .arg(script)
            .status()
            .expect("run build.sh");
        assert!(st.success(), "tests/images/build.sh failed");
    });
}

pub const BUSYBOX: &str = "agent-test/busybox:latest";
