//! Crash policy: a workload container that keeps crashing is restarted by
//! Docker (`unless-stopped`); once it has exited `limit` times (5) within
//! `window` (10 min) the agent gives up on it.
//!
//! [`CrashWatch`] polls each watched container's restart count and state
//! (`inspect`, every `poll`, 10 s by default), keeps the time of each exit
//! it sees per reservation, and returns a [`GiveUp`] decision with the
//! message for the signed error result:
//! `workload crashed 5 times: exit code 1; last log lines: a | b`.
//! It decides only: the engine decommissions the workload, posts the error
//! result and marks it deleted (`EngineCommand::GiveUp`).
//!
//! Every exit counts, a clean `exit 0` too: with `unless-stopped` Docker
//! restarts it all the same, so a workload that keeps exiting is not
//! running whatever its code. Exits are dated when the watch sees them
//! (Docker restarts a crashing container within seconds, well inside a
//! poll), and exits from before the agent started are not counted.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use provisioners::names::Names;
use provisioners::Docker;
use reservation::WorkloadType;
use serde::Serialize;
use store::{Cached, Store};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::ids::IdKey;

/// The numbers of the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashPolicy {
    /// Exits within `window` that make the agent give up (`--crash-limit`).
    pub limit: u32,
    /// The sliding window (`--crash-window`).
    pub window: Duration,
    /// How often the containers are inspected.
    pub poll: Duration,
    /// Log lines quoted in the error result.
    pub tail_lines: usize,
}

/// Default `--crash-limit`.
pub const DEFAULT_CRASH_LIMIT: u32 = 5;
/// Default `--crash-window`.
pub const DEFAULT_CRASH_WINDOW: Duration = Duration::from_secs(600);

impl Default for CrashPolicy {
    fn default() -> Self {
        CrashPolicy {
            limit: DEFAULT_CRASH_LIMIT,
            window: DEFAULT_CRASH_WINDOW,
            poll: Duration::from_secs(10),
            tail_lines: 5,
        }
    }
}

/// A container to watch for reservation `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub id: String,
    /// Type of the reservation (`container`, `kubernetes`).
    pub kind: WorkloadType,
    /// Docker name of its container.
    pub container: String,
}

impl Watched {
    /// The container of a cached workload, named in node scope `names`,
    /// as its type's plug-in says: the types that run one of their own
    /// (`container`, `kubernetes`; zdb instances are shared by many
    /// reservations and are not given up on for one of them).
    pub fn of(cached: &Cached, names: &Names) -> Option<Watched> {
        let r = &cached.reservation;
        let container = provisioners::registry::watched_container(names, r)?;
        Some(Watched {
            id: r.id.clone(),
            kind: r.workload_type().ok()?,
            container,
        })
    }
}

/// The decision to give up on reservation `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiveUp {
    pub id: String,
    pub kind: String,
    pub container: String,
    /// Exits seen within the window (at least the limit).
    pub crashes: u32,
    pub exit_code: i64,
    /// The error for the signed result: `workload crashed N times: exit
    /// code C; last log lines: ...`, or the operator's reason.
    pub message: String,
}

/// Crash figures of one reservation, for `agentctl status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CrashCount {
    /// Exits within the window now.
    pub recent: u32,
    /// Exits seen since the agent started watching it.
    pub total: u64,
    /// Exit code of the last run that ended.
    pub last_exit_code: i64,
}

/// Crash counts by reservation id, shared with the control socket: the
/// watched workloads whose container has exited at least once.
pub type CrashCounts = Arc<Mutex<BTreeMap<String, CrashCount>>>;

/// One watched container. Kept small: a node with 10,000 cached holds
/// 10,000 of these for as long as it runs, and almost none ever exits.
#[derive(Debug)]
struct Track {
    kind: WorkloadType,
    /// The container's name when it is not the one its type's plug-in
    /// names for the id ([`usual_container`]); `None` for almost every
    /// track, so 10,000 names are not each kept in a heap block.
    container: Option<Box<str>>,
    /// Exits Docker reported at the last look; `None` before the first.
    seen: Option<u64>,
    /// Made once the container has exited at least once.
    history: Option<Box<History>>,
}

/// The name its type's plug-in gives reservation `id`'s container in node
/// scope `names` (as [`Watched::of`] finds it).
fn usual_container(names: &Names, kind: WorkloadType, id: &str) -> Option<String> {
    provisioners::registry::watched_container_of(names, kind, id)
}

impl Track {
    /// `container` as the track keeps it: `None` when it is the usual name.
    fn kept_name(
        names: &Names,
        kind: WorkloadType,
        id: &str,
        container: String,
    ) -> Option<Box<str>> {
        let usual = usual_container(names, kind, id);
        (usual.as_deref() != Some(container.as_str())).then(|| container.into_boxed_str())
    }

    /// The name of the container watched for `id`.
    fn container(&self, names: &Names, id: &str) -> String {
        match &self.container {
            Some(c) => c.to_string(),
            None => usual_container(names, self.kind, id).unwrap_or_default(),
        }
    }
}

/// What the watch remembers of a container that has exited.
#[derive(Debug, Default)]
struct History {
    exits: VecDeque<Instant>,
    total: u64,
    last_exit: i64,
    oom: bool,
}

/// Watches containers and decides when to give up on one.
pub struct CrashWatch {
    docker: Arc<dyn Docker>,
    policy: CrashPolicy,
    /// How the workloads' containers are named.
    names: Names,
    tracks: BTreeMap<IdKey, Track>,
    /// Decided already: not decided again while the engine works on it.
    given_up: HashSet<String>,
    counts: CrashCounts,
    /// Docker failed on the last look (logged once per outage).
    failing: bool,
    /// Cached ids that run no container of their own (not decoded again).
    unwatched: HashSet<IdKey>,
    /// The store's cache generation at the last sync (`None`: never).
    generation: Option<u64>,
}

impl CrashWatch {
    pub fn new(docker: Arc<dyn Docker>, policy: CrashPolicy) -> Self {
        CrashWatch {
            docker,
            policy,
            names: Names::unscoped(),
            tracks: BTreeMap::new(),
            given_up: HashSet::new(),
            counts: CrashCounts::default(),
            failing: false,
            unwatched: HashSet::new(),
            generation: None,
        }
    }

    /// Find the workloads' containers under this node scope's names
    /// (default: unscoped, [`Names::unscoped`]).
    pub fn with_names(mut self, names: Names) -> Self {
        self.names = names;
        self
    }

    pub fn policy(&self) -> &CrashPolicy {
        &self.policy
    }

    /// The crash counts, kept up to date by [`CrashWatch::check`].
    /// Share `counts` (made before the watch, e.g. for the control socket).
    pub fn with_counts(mut self, counts: CrashCounts) -> Self {
        self.counts = counts;
        self
    }

    pub fn counts(&self) -> CrashCounts {
        self.counts.clone()
    }

    /// Watch exactly `items`: new ones are added (their past exits are not
    /// counted), ones that are gone are forgotten. A reservation's track
    /// is kept while its container name stays the same.
    pub fn set_watched(&mut self, items: impl IntoIterator<Item = Watched>) {
        let mut keep = HashSet::new();
        for w in items {
            let key = IdKey::new(&w.id);
            let container = Track::kept_name(&self.names, w.kind, &w.id, w.container);
            let same = self
                .tracks
                .get(&key)
                .is_some_and(|t| t.kind == w.kind && t.container == container);
            if !same {
                self.tracks.insert(
                    key.clone(),
                    Track {
                        kind: w.kind,
                        container,
                        seen: None,
                        history: None,
                    },
                );
            }
            keep.insert(key);
        }
        self.tracks.retain(|id, _| keep.contains(id));
        self.given_up.retain(|id| keep.contains(&IdKey::new(id)));
    }

    /// Start from start-up's one pass over the cache: `watched` are the
    /// containers to follow, `unwatched` the other cached ids, both as of
    /// the store's cache generation `generation`.
    pub fn seed(
        &mut self,
        watched: Vec<Watched>,
        unwatched: impl IntoIterator<Item = String>,
        generation: u64,
    ) {
        self.unwatched = unwatched.into_iter().map(IdKey::from).collect();
        self.set_watched(watched);
        // Full nodes: the tracks were inserted one at a time, which leaves
        // each node a little over half full (10,000 tracks at start).
        self.tracks = std::mem::take(&mut self.tracks).into_iter().collect();
        self.generation = Some(generation);
    }

    /// Watch every cached workload that runs a container of its own. Only
    /// when the cache changed since the last look, and then it reads the
    /// cached ids (not the records) and decodes only the ids it has not
    /// seen: the whole cache is decoded at most once.
    pub fn sync_from_store(&mut self, store: &Store) {
        let generation = store.cache_generation();
        if self.generation == Some(generation) {
            return;
        }
        let mut cached = HashSet::new();
        let mut added = Vec::new();
        for id in store.cached_ids() {
            let Ok(id) = id else {
                continue;
            };
            let key = IdKey::new(&id);
            if !self.tracks.contains_key(&key) && !self.unwatched.contains(&key) {
                match store.get(&id) {
                    Ok(Some(c)) => match Watched::of(&c, &self.names) {
                        Some(w) => added.push(w),
                        None => {
                            self.unwatched.insert(key.clone());
                        }
                    },
                    // Gone meanwhile, or unreadable: looked at next time.
                    Ok(None) | Err(_) => continue,
                }
            }
            cached.insert(key);
        }
        self.unwatched.retain(|id| cached.contains(id));
        let kept: Vec<Watched> = self
            .tracks
            .iter()
            .filter(|(id, _)| cached.contains(*id))
            .map(|(id, t)| {
                let id = id.to_string();
                Watched {
                    container: t.container(&self.names, &id),
                    id,
                    kind: t.kind,
                }
            })
            .collect();
        self.set_watched(kept.into_iter().chain(added));
        self.generation = Some(generation);
    }

    /// Look at every watched container once, as of `now`; the reservations
    /// to give up on (each decided once).
    pub async fn check(&mut self, now: Instant) -> Vec<GiveUp> {
        let mut out = Vec::new();
        let ids: Vec<(IdKey, String)> = self
            .tracks
            .keys()
            .map(|key| (key.clone(), key.to_string()))
            .filter(|(_, id)| !self.given_up.contains(id))
            .collect();
        let mut failed = None;
        for (key, id) in ids {
            let Some(container) = self.tracks.get(&key).map(|t| t.container(&self.names, &id))
            else {
                continue;
            };
            let runs = match self.docker.container_runs(&container).await {
                Ok(Some(r)) => r,
                // Gone: reconciliation repairs it; nothing crashed.
                Ok(None) => continue,
                Err(e) => {
                    failed = Some(e.to_string());
                    continue;
                }
            };
            let Some(t) = self.tracks.get_mut(&key) else {
                continue;
            };
            let exits = runs.exits();
            let new = match t.seen {
                Some(before) if exits >= before => exits - before,
                // First look, or the container was made anew: baseline.
                _ => 0,
            };
            t.seen = Some(exits);
            let exited = runs.finished_at.is_some() || exits > 0;
            if exited && t.history.is_none() {
                t.history = Some(Box::default());
            }
            // Never exited: nothing to count (`new` is 0 then).
            let Some(h) = t.history.as_deref_mut() else {
                continue;
            };
            if exited {
                h.last_exit = runs.exit_code;
                h.oom = runs.oom_killed;
            }
            for _ in 0..new.min(self.policy.limit as u64 * 2) {
                h.exits.push_back(now);
            }
            h.total += new;
            while h
                .exits
                .front()
                .is_some_and(|at| now.saturating_duration_since(*at) > self.policy.window)
            {
                h.exits.pop_front();
            }
            if new > 0 {
                info!(reservation = %id, container = %container, exits = new, exit_code = runs.exit_code, recent = h.exits.len(), limit = self.policy.limit, "workload container exited; docker restarts it");
            }
            if h.exits.len() as u32 >= self.policy.limit {
                let crashes = h.exits.len() as u32;
                let (kind, code, oom) = (t.kind.as_str().to_string(), h.last_exit, h.oom);
                let tail = match self
                    .docker
                    .container_logs(&container, self.policy.tail_lines)
                    .await
                {
                    Ok(s) => tail_of(&s, self.policy.tail_lines),
                    Err(e) => format!("(logs unavailable: {e})"),
                };
                let message = give_up_message(crashes, code, oom, &tail);
                warn!(reservation = %id, container = %container, crashes, exit_code = code, window_s = self.policy.window.as_secs(), "crash policy: giving up on the workload");
                self.given_up.insert(id.clone());
                out.push(GiveUp {
                    id,
                    kind,
                    container,
                    crashes,
                    exit_code: code,
                    message,
                });
            }
        }
        match failed {
            Some(e) if !self.failing => {
                warn!(error = %e, "crash watch cannot inspect containers; will retry");
                self.failing = true;
            }
            Some(e) => debug!(error = %e, "crash watch: inspect failed"),
            None => self.failing = false,
        }
        self.publish();
        out
    }

    /// Share the counts of the containers that have exited (the others
    /// have nothing to show: a copy of 10,000 zero counts was held for
    /// `agentctl status` and printed by it).
    fn publish(&self) {
        let counts = self
            .tracks
            .iter()
            .filter_map(|(id, t)| {
                let h = t.history.as_deref()?;
                Some((
                    id.to_string(),
                    CrashCount {
                        recent: h.exits.len() as u32,
                        total: h.total,
                        last_exit_code: h.last_exit,
                    },
                ))
            })
            .collect();
        if let Ok(mut c) = self.counts.lock() {
            *c = counts;
        }
    }
}

/// `workload crashed N times: exit code C; last log lines: TAIL`.
pub fn give_up_message(crashes: u32, exit_code: i64, oom_killed: bool, tail: &str) -> String {
    let oom = if oom_killed {
        " (killed: out of memory)"
    } else {
        ""
    };
    let tail = if tail.is_empty() {
        "(no log output)"
    } else {
        tail
    };
    format!("workload crashed {crashes} times: exit code {exit_code}{oom}; last log lines: {tail}")
}

/// The last `n` non-empty lines of `logs`, control characters dropped, each
/// cut at 200 characters, joined by ` | ` (the message stays one line).
pub fn tail_of(logs: &str, n: usize) -> String {
    let lines: Vec<String> = logs
        .lines()
        .map(|l| {
            l.chars()
                .filter(|c| !c.is_control() || *c == '\t')
                .take(200)
                .collect::<String>()
                .trim()
                .to_string()
        })
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// Every `policy.poll`: watch what the store caches, look at the
/// containers, and send each give-up decision to `decisions` (the engine).
/// Ends on `shutdown` or when the receiver is dropped.
pub async fn run(
    mut watch: CrashWatch,
    store: Store,
    decisions: mpsc::Sender<GiveUp>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(watch.policy.poll) => {}
        }
        watch.sync_from_store(&store);
        for g in watch.check(Instant::now()).await {
            if decisions.send(g).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use provisioners::docker::{ContainerNet, ContainerSpec};
    use provisioners::FakeDocker;

    /// Container name of reservation `id` (unscoped, as the watch's default).
    fn ct(id: &str) -> String {
        Names::unscoped().container_name(id)
    }

    fn spec(name: &str) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: "agent-test/busybox:latest".into(),
            env: vec![],
            secret_env: vec![],
            entrypoint: Some(vec!["sh".into(), "-c".into(), "echo boom; exit 1".into()]),
            tty: false,
            open_stdin: false,
            nano_cpus: 100_000_000,
            memory: 32 << 20,
            mounts: vec![],
            network: ContainerNet::None,
            ports: vec![],
            restart_unless_stopped: true,
            labels: Default::default(),
        }
    }

    fn watched(id: &str) -> Watched {
        Watched {
            id: id.into(),
            kind: WorkloadType::Container,
            container: ct(id),
        }
    }

    async fn fake_with(ids: &[&str]) -> Arc<FakeDocker> {
        let fake = Arc::new(FakeDocker::new());
        fake.add_image("agent-test/busybox:latest");
        for id in ids {
            let name = ct(id);
            fake.create_container(&spec(&name)).await.unwrap();
            fake.start_container(&name).await.unwrap();
        }
        fake
    }

    fn policy() -> CrashPolicy {
        CrashPolicy {
            limit: 5,
            window: Duration::from_secs(600),
            poll: Duration::from_millis(10),
            tail_lines: 5,
        }
    }

    #[tokio::test]
    async fn gives_up_after_five_exits_within_the_window() {
        let fake = fake_with(&["1-1", "2-1"]).await;
        let name = ct("1-1");
        // Restarts from before the agent watched do not count.
        fake.set_runs(&name, 40, 1);
        let mut w = CrashWatch::new(fake.clone(), policy());
        w.set_watched([watched("1-1"), watched("2-1")]);
        let t0 = Instant::now();
        assert!(w.check(t0).await.is_empty());
        fake.set_runs(&name, 43, 1);
        assert!(w.check(t0 + Duration::from_secs(60)).await.is_empty());
        assert_eq!(w.counts().lock().unwrap()["1-1"].recent, 3);
        // Exited now and not restarted yet: one more exit.
        fake.set_state(&name, "exited");
        assert!(w.check(t0 + Duration::from_secs(120)).await.is_empty());
        fake.set_state(&name, "running");
        fake.set_runs(&name, 45, 2);
        let g = w.check(t0 + Duration::from_secs(180)).await;
        assert_eq!(g.len(), 1, "{g:?}");
        assert_eq!(g[0].id, "1-1");
        assert_eq!(g[0].crashes, 5);
        assert_eq!(g[0].exit_code, 2);
        assert_eq!(
            g[0].message,
            "workload crashed 5 times: exit code 2; last log lines: (no log output)"
        );
        assert_eq!(fake.count("container_logs"), 1);
        // Decided once, while the engine works on it.
        fake.set_runs(&name, 50, 2);
        assert!(w.check(t0 + Duration::from_secs(190)).await.is_empty());
        // The healthy one was never in question.
        let c = w.counts().lock().unwrap().clone();
        assert!(!c.contains_key("2-1"), "never exited: {c:?}");
        assert_eq!(c["1-1"].total, 5);
        // Once decommissioned it is no longer watched.
        w.set_watched([watched("2-1")]);
        w.check(t0 + Duration::from_secs(200)).await;
        assert!(!w.counts().lock().unwrap().contains_key("1-1"));
    }

    #[tokio::test]
    async fn old_exits_leave_the_window() {
        let fake = fake_with(&["1-1"]).await;
        let name = ct("1-1");
        let mut w = CrashWatch::new(fake.clone(), policy());
        w.set_watched([watched("1-1")]);
        let t0 = Instant::now();
        w.check(t0).await;
        // Four exits, then four more 11 minutes later: never five within
        // ten minutes.
        fake.set_runs(&name, 4, 1);
        assert!(w.check(t0 + Duration::from_secs(1)).await.is_empty());
        fake.set_runs(&name, 8, 1);
        assert!(w.check(t0 + Duration::from_secs(662)).await.is_empty());
        assert_eq!(w.counts().lock().unwrap()["1-1"].recent, 4);
        assert_eq!(w.counts().lock().unwrap()["1-1"].total, 8);
        // A container made anew (restart count back to 0) is a new
        // baseline; the exits already in the window still count.
        fake.set_runs(&name, 0, 0);
        assert!(w.check(t0 + Duration::from_secs(663)).await.is_empty());
        assert_eq!(w.counts().lock().unwrap()["1-1"].recent, 4);
        fake.set_runs(&name, 1, 3);
        let g = w.check(t0 + Duration::from_secs(664)).await;
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].exit_code, 3);
    }

    #[tokio::test]
    async fn docker_errors_and_missing_containers_decide_nothing() {
        let fake = fake_with(&[]).await;
        let mut w = CrashWatch::new(fake.clone(), policy());
        w.set_watched([watched("9-1")]);
        assert!(w.check(Instant::now()).await.is_empty());
        fake.fail_next("inspect_container", "engine down");
        assert!(w.check(Instant::now()).await.is_empty());
    }

    #[test]
    fn message_and_tail() {
        assert_eq!(tail_of("a\n\nb\r\n\u{1b}[31mc\n d \n", 2), "[31mc | d");
        assert_eq!(tail_of("", 5), "");
        assert_eq!(
            give_up_message(6, 137, true, "x | y"),
            "workload crashed 6 times: exit code 137 (killed: out of memory); last log lines: x | y"
        );
    }

    #[test]
    fn watched_types() {
        let node = reservation::Identity::generate();
        let mk = |kind: &str, data: &str| {
            let r: reservation::Reservation = serde_json::from_str(&format!(
                r#"{{"id":"7-1","node_id":"n","user_id":"u","type":"{kind}","data":{data},"created":"2026-11-25T11:00:00Z","duration":1,"signature":""}}"#
            ))
            .unwrap();
            {
                let res = node.error_result(&r, "x");
                Cached::new(r, res)
            }
        };
        assert_eq!(
            Watched::of(&mk("container", "{}"), &Names::unscoped())
                .unwrap()
                .container,
            "agent-ct-7-1"
        );
        assert_eq!(
            Watched::of(&mk("kubernetes", "{}"), &Names::unscoped())
                .unwrap()
                .container,
            provisioners::kubernetes::node_name(&Names::unscoped(), "7-1")
        );
        assert!(Watched::of(&mk("volume", "{}"), &Names::unscoped()).is_none());
        assert!(Watched::of(&mk("zdb", "{}"), &Names::unscoped()).is_none());
        // The agent's own names are scoped to its node.
        let scoped = Names::for_node(node.id());
        assert_eq!(
            Watched::of(&mk("container", "{}"), &scoped)
                .unwrap()
                .container,
            scoped.container_name("7-1")
        );
    }

    /// The watch follows the cache from its seed, looks again only when
    /// the cache changed, and decodes only ids it has not seen.
    #[tokio::test]
    async fn syncs_follow_the_cache_from_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let node = reservation::Identity::generate();
        let put = |id: &str, kind: &str| crate::testing::cache_bare(&store, &node, id, kind);
        put("1-1", "container");
        put("2-1", "volume");
        let mut w = CrashWatch::new(fake_with(&[]).await, policy());
        w.seed(
            vec![watched("1-1")],
            ["2-1".to_string()],
            store.cache_generation(),
        );
        assert_eq!(
            w.tracks.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
            ["1-1"]
        );
        // Unchanged cache: nothing read.
        w.sync_from_store(&store);
        assert_eq!(
            w.tracks.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
            ["1-1"]
        );
        // A new container is followed; the known volume is not decoded.
        put("3-1", "container");
        w.sync_from_store(&store);
        assert_eq!(
            w.tracks.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
            ["1-1", "3-1"]
        );
        assert!(w.unwatched.contains(&IdKey::new("2-1")));
        // Gone from the cache: forgotten.
        store
            .record_decommissioned("1-1", "container", "", "c2ln", None)
            .unwrap();
        store
            .record_decommissioned("2-1", "volume", "", "c2ln", None)
            .unwrap();
        w.sync_from_store(&store);
        assert_eq!(
            w.tracks.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
            ["3-1"]
        );
        assert!(w.unwatched.is_empty());
    }

    /// Ids that spell the same numbers are watched apart, each given up
    /// under its exact spelling and its own container; a container not
    /// named as its type's plug-in names it is still the one inspected.
    #[tokio::test]
    async fn ids_are_watched_and_given_up_under_their_exact_spelling() {
        let fake = fake_with(&["1-1", "01-1", "2-1"]).await;
        fake.create_container(&spec("custom-2")).await.unwrap();
        fake.start_container("custom-2").await.unwrap();
        let mut w = CrashWatch::new(fake.clone(), policy());
        let custom = Watched {
            container: "custom-2".into(),
            ..watched("2-1")
        };
        w.set_watched([watched("1-1"), watched("01-1"), custom.clone()]);
        assert_eq!(w.tracks.len(), 3);
        let t0 = Instant::now();
        assert!(w.check(t0).await.is_empty());
        fake.set_runs(&ct("01-1"), 5, 4);
        fake.set_runs("custom-2", 5, 6);
        // The usual-named container of 2-1 exits too: not the watched one.
        fake.set_runs(&ct("2-1"), 7, 9);
        let mut g = w.check(t0 + Duration::from_secs(1)).await;
        g.sort_by(|a, b| a.id.cmp(&b.id));
        let got: Vec<_> = g
            .iter()
            .map(|g| (g.id.as_str(), g.container.as_str(), g.exit_code))
            .collect();
        assert_eq!(
            got,
            [("01-1", ct("01-1").as_str(), 4), ("2-1", "custom-2", 6)]
        );
        let c = w.counts().lock().unwrap().clone();
        assert_eq!(c.keys().collect::<Vec<_>>(), ["01-1", "2-1"]);
        // The same container again: the track (and its history) is kept.
        w.set_watched([watched("1-1"), watched("01-1"), custom]);
        w.check(t0 + Duration::from_secs(2)).await;
        assert_eq!(w.counts().lock().unwrap()["2-1"].total, 5);
    }

    /// A container whose entrypoint exits 1 is restarted by its policy
    /// until the watch gives up, with its exit code and its log in the
    /// message. (The real engine's restart bookkeeping behind
    /// `container_runs` is proven in provisioners/tests/docker_engine.)
    #[tokio::test]
    async fn a_container_exiting_1_is_given_up_with_its_code_and_log() {
        let fake = fake_with(&["3-1"]).await;
        let name = ct("3-1");
        fake.set_logs(&name, "starting\nboom\nboom\n");
        let mut w = CrashWatch::new(fake.clone(), CrashPolicy::default());
        w.set_watched([watched("3-1")]);
        let t0 = Instant::now();
        assert!(w.check(t0).await.is_empty());
        let mut decision = None;
        // Docker restarts it after each exit: one more restart per look.
        for restarts in 1..=10u64 {
            fake.set_runs(&name, restarts, 1);
            let at = t0 + Duration::from_secs(restarts);
            if let Some(g) = w.check(at).await.into_iter().next() {
                decision = Some(g);
                break;
            }
        }
        let g = decision.expect("gave up within 10 exits");
        assert_eq!(g.id, "3-1");
        assert_eq!(g.exit_code, 1);
        assert_eq!(g.crashes, 5, "{g:?}");
        assert_eq!(
            g.message,
            "workload crashed 5 times: exit code 1; last log lines: starting | boom | boom"
        );
    }
}
