//! The control socket `agentctl` talks to: a Unix socket (mode 0600) that
//! takes one JSON request line and answers one JSON line.
//!
//! Requests: `{"cmd":"status"}`, `{"cmd":"list"}`, `{"cmd":"show","id":"..."}`,
//! `{"cmd":"logs","id":"...","tail":N,"follow":bool}`. What a workload's
//! Docker objects and container are called, and what it uses of others,
//! its type's plug-in says (`provisioners::registry`).
//! Answers: `{"ok":true,"data":...}` or `{"ok":false,"error":"..."}`; for
//! `logs`, `{"ok":true}` then the raw log text until the stream ends.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use provisioners::names::Names;
use provisioners::registry;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sources::PollStatus;
use store::{Cached, Store};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::AgentError;

/// What the socket asks the Docker engine: its health, a container's
/// state, a container's logs.
#[async_trait]
pub trait DockerProbe: Send + Sync {
    /// The engine's version, or why it does not answer.
    async fn version(&self) -> Result<String, String>;

    /// Docker's state of container `name` (`running`, `exited`...).
    async fn state(&self, _name: &str) -> Result<Option<String>, String> {
        Err("docker is not reachable".into())
    }

    /// Logs of container `name`: the last `tail` lines, then new ones with
    /// `follow`.
    async fn logs(&self, _name: &str, _tail: usize, _follow: bool) -> Result<LogStream, String> {
        Err("docker is not reachable".into())
    }
}

/// Log text chunks.
pub type LogStream = futures_util::stream::BoxStream<'static, Result<String, String>>;

/// A request line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    List,
    Show {
        id: String,
    },
    Logs {
        id: String,
        #[serde(default = "default_tail")]
        tail: usize,
        #[serde(default)]
        follow: bool,
    },
    /// Take no new work (`on`), or take it again.
    Drain {
        #[serde(default = "yes")]
        on: bool,
    },
    /// Drain, and end every running workload now.
    Purge,
}

fn yes() -> bool {
    true
}

fn default_tail() -> usize {
    100
}

/// Everything the socket reads from.
pub struct Control {
    pub node_id: String,
    pub explorer: String,
    pub started: Instant,
    pub store: Store,
    pub poll: Arc<PollStatus>,
    pub docker: std::sync::RwLock<Arc<dyn DockerProbe>>,
    /// Capacity: total, reserved, used, free.
    pub ledger: Arc<std::sync::Mutex<crate::capacity::Ledger>>,
    /// Registration with the explorer and the last heartbeat.
    pub heartbeat: Arc<crate::heartbeat::HeartbeatState>,
    /// Crash counts per watched workload.
    pub crashes: crate::crash::CrashCounts,
    /// Set once the cache is loaded and reconciled with Docker.
    pub ready: std::sync::atomic::AtomicBool,
    /// How kubernetes runs here: `disabled`, `runtime <name>` or
    /// `privileged-unsafe`.
    pub kubernetes: String,
    /// The agent's root, where the drain marker lives.
    pub root: PathBuf,
    /// Shared with the engine: new work is refused while set.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Shared with the engine: the jobs running now.
    pub jobs: Arc<std::sync::Mutex<std::collections::HashMap<u64, crate::engine::JobView>>>,
    /// Ends workloads early through the engine (`purge`).
    pub evict: tokio::sync::mpsc::Sender<crate::crash::GiveUp>,
    /// The node scope the workloads' Docker objects are named in.
    pub names: Names,
}

/// Name of the marker file under the root that keeps a drain across
/// restarts.
pub const DRAIN_MARKER: &str = "draining";

/// Jobs listed by `status` (the oldest; the count is always given).
const JOBS_SHOWN: usize = 10;

/// Set `flag` from the drain marker under `root`.
pub fn load_draining(root: &Path, flag: &std::sync::atomic::AtomicBool) {
    let on = root.join(DRAIN_MARKER).exists();
    if on {
        warn!(root = %root.display(), "the node is draining: new reservations are refused (agentctl drain --undo resumes)");
    }
    flag.store(on, std::sync::atomic::Ordering::SeqCst);
}

impl Control {
    /// Replace the Docker probe (once the engine is reachable).
    pub fn set_docker(&self, probe: Arc<dyn DockerProbe>) {
        if let Ok(mut d) = self.docker.write() {
            *d = probe;
        }
    }

    /// Answer one request.
    pub async fn answer(&self, req: Request) -> Result<Value, String> {
        match req {
            Request::Status => self.status().await,
            Request::List => self.list(),
            Request::Show { id } => self.show(&id).await,
            Request::Drain { on } => self.drain(on),
            Request::Purge => self.purge().await,
            Request::Logs { .. } => Err("logs are streamed, not answered".into()),
        }
    }

    /// The Docker container that runs reservation `id`, as its type's
    /// plug-in names it, if it runs one of its own.
    fn container_of(&self, id: &str) -> Result<String, String> {
        let c = self
            .store
            .get(id)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("reservation {id} is not running on this node; `agentctl list` shows the ones that are"))?;
        registry::watched_container(&self.names, &c.reservation).ok_or_else(|| {
            format!(
                "reservation {id} is a {}: it has no container logs",
                c.reservation.kind
            )
        })
    }

    /// Start streaming the logs of reservation `id`.
    pub async fn logs(&self, id: &str, tail: usize, follow: bool) -> Result<LogStream, String> {
        let name = self.container_of(id)?;
        self.docker_probe().logs(&name, tail, follow).await
    }

    fn docker_probe(&self) -> Arc<dyn DockerProbe> {
        match self.docker.read() {
            Ok(d) => d.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    async fn status(&self) -> Result<Value, String> {
        let docker = match tokio::time::timeout(
            std::time::Duration::from_secs(3),
            self.docker_probe().version(),
        )
        .await
        {
            Ok(Ok(v)) => json!({"ok": true, "version": v}),
            Ok(Err(e)) => json!({"ok": false, "error": e}),
            Err(_) => json!({"ok": false, "error": "no answer within 3 s"}),
        };
        let (poll_failures, poll_error) = self.poll.failures();
        Ok(json!({
            "ready": self.ready.load(std::sync::atomic::Ordering::SeqCst),
            "node_id": self.node_id,
            "explorer": self.explorer,
            "explorer_in_use": self.poll.explorer_in_use(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started.elapsed().as_secs(),
            "last_poll": self.poll.last_ok().map(|t| t.to_rfc3339()),
            "poll_failures": poll_failures,
            "poll_error": if poll_error.is_empty() { Value::Null } else { Value::String(poll_error) },
            "cursor": self.store.cursor().map_err(|e| e.to_string())?,
            "counters": self.store.counters().map_err(|e| e.to_string())?,
            "cached": self.store.cached_len(),
            "pending_results": self.store.outbox_len(),
            "docker": docker,
            "capacity": self.ledger.lock().map(|l| json!(l.snapshot())).unwrap_or(Value::Null),
            "tenants": self.ledger.lock().map(|l| json!(l.tenants())).unwrap_or(Value::Null),
            "registration": json!(self.heartbeat.snapshot()),
            "crashes": self.crashes.lock().map(|c| json!(*c)).unwrap_or(Value::Null),
            "kubernetes": self.kubernetes,
            "wireguard": provisioners::network::wireguard::host_mode(),
            "draining": self.draining.load(std::sync::atomic::Ordering::SeqCst),
            "jobs": self.jobs_running(),
        }))
    }

    /// The jobs running, oldest first: how many, and the first
    /// [`JOBS_SHOWN`] (a hanging pull shows at the top).
    fn jobs_running(&self) -> Value {
        let mut jobs: Vec<crate::engine::JobView> = self
            .jobs
            .lock()
            .map(|j| j.values().cloned().collect())
            .unwrap_or_default();
        jobs.sort_by_key(|j| j.since);
        let running = jobs.len();
        jobs.truncate(JOBS_SHOWN);
        json!({"running": running, "oldest": jobs})
    }

    /// Start or stop draining; the marker file keeps it across restarts.
    fn drain(&self, on: bool) -> Result<Value, String> {
        let marker = self.root.join(DRAIN_MARKER);
        let done = if on {
            std::fs::write(&marker, b"agentctl drain\n")
        } else {
            match std::fs::remove_file(&marker) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        };
        done.map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
        self.draining.store(on, std::sync::atomic::Ordering::SeqCst);
        if on {
            warn!("draining: new reservations are refused; running work goes on until it expires or is deleted");
        } else {
            tracing::info!("drain lifted: taking new work again");
        }
        Ok(json!({"draining": on, "running": self.store.cached_len()}))
    }

    /// Drain, then hand every cached workload to the engine to end now:
    /// each is decommissioned, its user gets a signed error result saying
    /// the operator removed it, and the explorer its deletion.
    async fn purge(&self) -> Result<Value, String> {
        self.drain(true)?;
        let mut doomed = Vec::new();
        for c in self.store.list() {
            let c = c.map_err(|e| e.to_string())?;
            doomed.push((c.reservation.id.clone(), c.reservation.kind.clone()));
        }
        let evict = self.evict.clone();
        let list = doomed
            .iter()
            .map(|(id, kind)| json!({"id": id, "type": kind}))
            .collect::<Vec<_>>();
        warn!(
            count = doomed.len(),
            "purge: removing every workload of this node"
        );
        tokio::spawn(async move {
            for (id, kind) in doomed {
                let g = crate::crash::GiveUp {
                    id,
                    kind,
                    container: String::new(),
                    crashes: 0,
                    exit_code: 0,
                    message:
                        "removed by the node's operator (agentctl purge): the node is being cleared"
                            .into(),
                };
                if evict.send(g).await.is_err() {
                    break;
                }
            }
        });
        Ok(json!({"draining": true, "removing": list}))
    }

    fn list(&self) -> Result<Value, String> {
        let mut cached = Vec::new();
        for c in self.store.list() {
            cached.push(c.map_err(|e| e.to_string())?);
        }
        // Only a rescheduled decommission can be before the expiry: no
        // cache record is decoded a second time.
        let scheduled = |id: &str| self.store.rescheduled(id).ok().flatten();
        Ok(Value::Array(list_rows(
            &cached,
            scheduled,
            &self.names,
            Utc::now(),
        )))
    }

    async fn show(&self, id: &str) -> Result<Value, String> {
        let outcome = self.store.outcome(id).map_err(|e| e.to_string())?;
        let cached = self.store.get(id).map_err(|e| e.to_string())?;
        if outcome.is_none() && cached.is_none() {
            return Err(format!(
                "reservation {id} is unknown to this node; `agentctl list` shows the cached ones"
            ));
        }
        let (reservation, result) = match &cached {
            Some(c) => {
                let mut r = serde_json::to_value(&c.reservation).map_err(|e| e.to_string())?;
                if let Some(data) = r.get_mut("data") {
                    redact(data);
                }
                (
                    r,
                    serde_json::to_value(&c.result).map_err(|e| e.to_string())?,
                )
            }
            None => (Value::Null, Value::Null),
        };
        let container = cached
            .as_ref()
            .and_then(|c| registry::watched_container(&self.names, &c.reservation));
        let docker = match container {
            Some(name) => match self.docker_probe().state(&name).await {
                Ok(Some(state)) => json!({"container": name, "state": state}),
                Ok(None) => json!({"container": name, "state": "gone"}),
                Err(e) => json!({"container": name, "error": e}),
            },
            None => Value::Null,
        };
        let expires_at = cached.as_ref().map(|c| c.expires_at().to_rfc3339());
        Ok(json!({
            "id": id,
            "expires_at": expires_at,
            "outcome": outcome,
            "reservation": reservation,
            "result": result,
            "docker": docker,
        }))
    }
}

/// The rows of `agentctl list`, one per cached workload: its Docker
/// objects (named by its type's plug-in in node scope `names`) and its
/// state as of `now`. `scheduled` gives a workload's decommission time
/// ([`Store::scheduled`]): one before its expiry means a deletion waits.
///
/// State: `running`; `expiring` (expired, not decommissioned yet);
/// `deleting` (a deletion waits); or, for either of the last two while
/// other cached workloads use its objects (a container mounting the volume,
/// joining the network), `deleting (waits for 4-1, 5-1)`, naming them.
pub fn list_rows(
    cached: &[Cached],
    scheduled: impl Fn(&str) -> Option<DateTime<Utc>>,
    names: &Names,
    now: DateTime<Utc>,
) -> Vec<Value> {
    // What each workload uses, named once; looked at for due rows only.
    let uses: Vec<Vec<String>> = cached
        .iter()
        .map(|c| registry::uses(names, &c.reservation))
        .collect();
    cached
        .iter()
        .map(|c| {
            let r = &c.reservation;
            let exp = c.expires_at();
            let objects = registry::objects(names, r);
            let expired = exp <= now;
            let deleting =
                scheduled(&r.id).is_some_and(|at| at.timestamp_millis() < exp.timestamp_millis());
            let mut waits_for: Vec<&str> = Vec::new();
            if expired || deleting {
                for (other, used) in cached.iter().zip(&uses) {
                    let o = &other.reservation;
                    if o.id != r.id && registry::relies_on(o, used, r, &objects) {
                        waits_for.push(&o.id);
                    }
                }
            }
            let state = if !waits_for.is_empty() {
                format!("deleting (waits for {})", waits_for.join(", "))
            } else if expired {
                "expiring".into()
            } else if deleting {
                "deleting".into()
            } else {
                "running".into()
            };
            json!({
                "id": r.id,
                "type": r.kind,
                "user": r.user_id,
                "state": state,
                "expires_at": exp.to_rfc3339(),
                "expires_in_s": (exp - now).num_seconds(),
                "result": serde_json::from_str::<Value>(c.result.data.get()).unwrap_or(Value::Null),
                "objects": objects,
                "waits_for": waits_for,
            })
        })
        .collect()
}

/// Replace sealed secrets by a marker: they are sealed, but an operator
/// pasting `show` output somewhere should not carry them along.
pub fn redact(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                if reservation::workloads::is_secret_key(k) {
                    match val {
                        Value::Object(inner) => {
                            for (_, s) in inner.iter_mut() {
                                *s = Value::String("<redacted>".into());
                            }
                        }
                        _ => *val = Value::String("<redacted>".into()),
                    }
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// Bind the socket (mode 0600, replacing a stale one) and serve until
/// `shutdown` resolves; the socket file is removed on the way out.
pub async fn serve(
    path: PathBuf,
    control: Arc<Control>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let listener = bind(&path)?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            conn = listener.accept() => match conn {
                Ok((stream, _)) => {
                    if let Err(who) = peer_allowed(&stream, &path) {
                        warn!(peer = %who, "control socket: refusing a peer that is neither root nor in the socket's group");
                        tokio::spawn(refuse_peer(stream));
                        continue;
                    }
                    let c = control.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, c).await {
                            debug!(error = %e, "control connection");
                        }
                    });
                }
                Err(e) => warn!(error = %e, "control socket accept"),
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Answer a refused peer. Its request line is read first (bounded, with a
/// deadline), so the client reads the refusal instead of a broken pipe.
async fn refuse_peer(stream: UnixStream) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(64 * 1024)).lines();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), lines.next_line()).await;
    let _ = w
        .write_all(b"{\"ok\":false,\"error\":\"permission denied: only root or the control socket's group may use it\"}\n")
        .await;
}

/// Whether the peer on `stream` may use the socket at `path`: root, the
/// agent's own user, or a member (by primary group) of the socket file's
/// group. The file mode already keeps others out; this holds even if an
/// operator loosens it. `Err` names the peer.
fn peer_allowed(stream: &UnixStream, path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let cred = stream.peer_cred().map_err(|e| format!("unknown ({e})"))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let group = std::fs::metadata(path).map(|m| m.gid()).ok();
    if cred.uid() == 0 || cred.uid() == me || Some(cred.gid()) == group {
        Ok(())
    } else {
        Err(format!("uid {} gid {}", cred.uid(), cred.gid()))
    }
}

/// Bind `path` with mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, AgentError> {
    let err = |reason: String| AgentError::Socket {
        path: path.display().to_string(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create its directory: {e}")))?;
    }
    if path.exists() {
        // A live agent answers; a stale socket from a crash does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err("another agent is listening on it".into()));
        }
        std::fs::remove_file(path)
            .map_err(|e| err(format!("cannot remove the stale socket: {e}")))?;
    }
    // The daemon runs under umask 077 (set before anything is created), so
    // the socket is never connectable by others, not even between bind and
    // chmod. The umask is process-wide: it is not swapped here, where other
    // threads may be creating directories.
    let l = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err(format!("cannot set mode 0600: {e}")))?;
    Ok(l)
}

async fn handle(stream: UnixStream, control: Arc<Control>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(64 * 1024)).lines();
    if let Some(line) = lines.next_line().await? {
        if let Ok(Request::Logs { id, tail, follow }) = serde_json::from_str::<Request>(&line) {
            return stream_logs(&mut w, &control, &id, tail, follow).await;
        }
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(req) => match control.answer(req).await {
                Ok(data) => json!({"ok": true, "data": data}),
                Err(e) => json!({"ok": false, "error": e}),
            },
            Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
        };
        let mut out = serde_json::to_vec(&answer).unwrap_or_default();
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

async fn stream_logs(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    control: &Control,
    id: &str,
    tail: usize,
    follow: bool,
) -> std::io::Result<()> {
    use futures_util::StreamExt;
    match control.logs(id, tail, follow).await {
        Err(e) => {
            let mut out = serde_json::to_vec(&json!({"ok": false, "error": e}))?;
            out.push(b'\n');
            w.write_all(&out).await
        }
        Ok(mut s) => {
            w.write_all(b"{\"ok\":true}\n").await?;
            while let Some(chunk) = s.next().await {
                match chunk {
                    Ok(text) => w.write_all(text.as_bytes()).await?,
                    Err(e) => {
                        w.write_all(format!("\nagentctl: log stream ended: {e}\n").as_bytes())
                            .await?;
                        break;
                    }
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reservation::{Identity, Reservation};

    /// A cached workload of `user`, `kind` and `data`, created `age_s`
    /// seconds ago for `life_s` seconds.
    fn cached(
        node: &Identity,
        user: &Identity,
        id: &str,
        kind: &str,
        data: Value,
        age_s: i64,
        life_s: i64,
    ) -> Cached {
        let r = Reservation {
            id: id.into(),
            node_id: node.id().into(),
            user_id: user.id().into(),
            kind: kind.into(),
            data: serde_json::value::to_raw_value(&data).unwrap(),
            created: Some(Utc::now() - chrono::Duration::seconds(age_s)),
            duration: life_s * 1_000_000_000,
            signature: format!("sig-{id}"),
            ..Default::default()
        };
        let res = node.error_result(&r, "x");
        Cached::new(r, res)
    }

    #[test]
    fn list_names_the_objects_and_what_a_due_workload_waits_for() {
        let node = Identity::generate();
        let user = Identity::generate();
        let other = Identity::generate();
        let names = Names::for_node(node.id());
        let sealed = reservation::seal_for(node.id(), b"pw").unwrap();
        let net = json!({"name": "n", "ip_range": "10.1.0.0/16", "net_resources": []});
        let all = vec![
            // Its user deleted it; the container and the k3s node hold it.
            cached(&node, &user, "1-1", "network", net, 10, 3600),
            // Expired; the container still mounts it.
            cached(
                &node,
                &user,
                "3-1",
                "volume",
                json!({"size": 1, "type": "SSD"}),
                20,
                10,
            ),
            cached(
                &node,
                &user,
                "4-1",
                "container",
                json!({"flist": "b", "capacity": {"cpu": 1, "memory": 64},
                       "mounts": [{"volume_id": "3-1", "mountpoint": "/data"}],
                       "network": {"network_id": "n", "ips": ["10.1.1.5"]}}),
                10,
                3600,
            ),
            cached(
                &node,
                &user,
                "5-1",
                "zdb",
                json!({"size": 1, "mode": "seq", "password": sealed, "disk_type": "SSD"}),
                10,
                3600,
            ),
            cached(
                &node,
                &user,
                "6-1",
                "kubernetes",
                json!({"size": 1, "network_id": "n", "ip": "10.1.1.6",
                       "cluster_secret": sealed, "master_ips": []}),
                10,
                3600,
            ),
            // Expired, used by nothing.
            cached(
                &node,
                &user,
                "7-1",
                "debug",
                json!({"host": "127.0.0.1", "port": 6379}),
                20,
                10,
            ),
            // Deleted, used by nothing, its decommission retried.
            cached(
                &node,
                &user,
                "8-1",
                "volume",
                json!({"size": 1, "type": "HDD"}),
                10,
                3600,
            ),
            // Another tenant's container naming this user's volume 3-1 and
            // network "n" (refused when provisioned; cached here to attack
            // the listing): it must not show as holding them.
            cached(
                &node,
                &other,
                "9-1",
                "container",
                json!({"flist": "b", "capacity": {"cpu": 1, "memory": 64},
                       "mounts": [{"volume_id": "3-1", "mountpoint": "/data"}],
                       "network": {"network_id": "n", "ips": ["10.1.1.7"]}}),
                10,
                3600,
            ),
        ];
        let soon = Utc::now() + chrono::Duration::seconds(5);
        let scheduled = |id: &str| {
            let c = all.iter().find(|c| c.reservation.id == id)?;
            Some(if id == "1-1" || id == "8-1" {
                soon
            } else {
                c.expires_at()
            })
        };
        let rows = list_rows(&all, scheduled, &names, Utc::now());
        let row = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();
        let p = names.prefix();

        let network = names.network_name(user.id(), "n");
        assert!(network.starts_with(&format!("{p}net-")), "{network}");
        assert_eq!(row("1-1")["objects"], json!([network]));
        assert_eq!(row("1-1")["state"], "deleting (waits for 4-1, 6-1)");
        assert_eq!(row("1-1")["waits_for"], json!(["4-1", "6-1"]));

        assert_eq!(row("3-1")["objects"], json!([format!("{p}vol-3-1")]));
        assert_eq!(row("3-1")["state"], "deleting (waits for 4-1)");

        assert_eq!(row("4-1")["objects"], json!([format!("{p}ct-4-1")]));
        assert_eq!(row("4-1")["state"], "running");
        assert_eq!(row("4-1")["waits_for"], json!([]));

        let ns = provisioners::zdb::namespace_name(&all[3].reservation);
        assert_eq!(
            row("5-1")["objects"],
            json!([ns, format!("{p}zdb-ssd-seq")])
        );
        assert_eq!(row("6-1")["objects"], json!([format!("{p}k8s-6-1")]));
        assert_eq!(row("7-1")["objects"], json!([]));
        assert_eq!(row("7-1")["state"], "expiring");
        assert_eq!(row("8-1")["state"], "deleting");

        // Today's keys are all still there.
        for key in [
            "id",
            "type",
            "user",
            "state",
            "expires_at",
            "expires_in_s",
            "result",
        ] {
            assert!(row("4-1").get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn redacts_every_secret_field() {
        let mut v =
            json!({"flist":"x","secret_env":{"A":"aa","B":"bb"},"env":{"C":"c"},"password":"ff"});
        redact(&mut v);
        assert_eq!(v["secret_env"]["A"], "<redacted>");
        assert_eq!(v["password"], "<redacted>");
        assert_eq!(v["env"]["C"], "c");
    }
}
