//! Wiring of the `agent` daemon, one named step at a time: open the state
//! (identity, cache), count capacity, start what needs no Docker (heartbeat,
//! metrics, control socket), connect Docker and check its runtimes, build
//! the provisioners, background tasks and engine, then run the engine on
//! the sources with delivery beside it; all stopped by one shutdown future.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use provisioners::images::ImagePolicy;
use provisioners::kubernetes::KubernetesMode;
use provisioners::names::Names;
use provisioners::{BollardDocker, Docker, LogBus, NodeOptions, VolumeProvisioner};
use reservation::Identity;
use sources::{CombinedSource, DecommissionSource, ExplorerClient, PollSource, ReservationSource};
use store::Store;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::capacity::{fingerprint, Ledger};
use crate::config::Settings;
use crate::control::{Control, DockerProbe, LogStream};
use crate::crash::{self, CrashCounts, CrashPolicy, CrashWatch, GiveUp, Watched};
use crate::engine::{Engine, EngineConfig, Shared};
use crate::heartbeat::{self, HeartbeatState, NodeProfile};
use crate::inventory::{self, Inventory};
use crate::memory::TrimAfterLarge;
use crate::metrics;
use crate::{delivery, reconcile, AgentError};

/// `DockerProbe` over the provisioners' Docker seam.
struct Probe(Arc<BollardDocker>);

#[async_trait]
impl DockerProbe for Probe {
    async fn version(&self) -> Result<String, String> {
        self.0
            .info()
            .await
            .map(|i| format!("{} (api {})", i.version, i.api_version))
            .map_err(|e| e.to_string())
    }

    async fn state(&self, name: &str) -> Result<Option<String>, String> {
        self.0
            .inspect_container(name)
            .await
            .map(|c| c.map(|c| c.state))
            .map_err(|e| e.to_string())
    }

    async fn logs(&self, name: &str, tail: usize, follow: bool) -> Result<LogStream, String> {
        use futures_util::StreamExt;
        let s = self
            .0
            .stream_logs(name, tail, follow)
            .await
            .map_err(|e| e.to_string())?;
        Ok(s.map(|c| c.map_err(|e| e.to_string())).boxed())
    }
}

/// A probe for when the engine could not be reached at all.
struct Unreachable(String);

#[async_trait]
impl DockerProbe for Unreachable {
    async fn version(&self) -> Result<String, String> {
        Err(self.0.clone())
    }
}

/// A cloneable shutdown signal.
fn signal(rx: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Run the agent until `shutdown` resolves.
/// `log_bus` carries the agent's own log lines to `debug` reservations
/// (install its layer with [`init_tracing`]).
pub async fn run(
    settings: Settings,
    log_bus: LogBus,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let started = Instant::now();
    let stop = stop_on(shutdown);
    let (node, store) = open_state(&settings)?;
    log_policies(&settings);
    #[cfg(feature = "dev")]
    if settings.dev {
        crate::dev::start_explorer(&settings, &node, signal(&stop)).await?;
    }
    // One pass over the cache: the ledger, what reconciliation and the
    // crash watch need.
    let (ledger, inventory) = open_ledger(&settings, &store, &Names::for_node(node.id()));
    // The pass left sled holding every tree node it decoded; a fresh open
    // holds none, and the resync answers from the ids the pass remembered.
    let store = if inventory.live.len() >= reopen_from() {
        let took = Instant::now();
        let store = store.reopen()?;
        crate::memory::release_freed_memory();
        info!(
            cached = inventory.live.len(),
            took_ms = took.elapsed().as_millis() as u64,
            "store reopened after the start-up pass (its decoded records let go)"
        );
        store
    } else {
        store
    };
    let core = Core {
        ledger,
        shared: Arc::new(Shared {
            faults: crate::faults::Faults::from_env(),
            ..Shared::default()
        }),
        settings,
        node,
        store,
        stop,
    };
    // A drain survives restarts: a retiring node stays retiring.
    crate::control::load_draining(&core.settings.root, &core.shared.draining);

    let client = ExplorerClient::new(
        &core.settings.explorers(),
        core.node.id(),
        core.settings.max_poll_bytes,
    )?;
    let poll = PollSource::new(client.clone(), core.store.cursor()?);
    // Registration and heartbeat need no Docker: start them first.
    let heartbeat = core.spawn_heartbeat(client.clone());
    core.serve_metrics(&poll, &heartbeat).await?;
    core.mark_outbox_durable()?;

    // The control socket answers even while Docker is down. Decisions to
    // end workloads early go to the engine: the crash watch's give-ups and
    // the operator's `agentctl purge`.
    let crashes = CrashCounts::default();
    let (give_up_tx, give_up_rx) = mpsc::channel(16);
    let control = core.control(
        started,
        &poll,
        heartbeat,
        crashes.clone(),
        give_up_tx.clone(),
    );
    let socket = tokio::spawn(crate::control::serve(
        core.settings.socket.clone(),
        control.clone(),
        core.signal(),
    ));
    let Some(docker) = connect_docker(&core.stop, &core.settings).await else {
        let _ = socket.await;
        return Ok(()); // shut down while waiting for Docker
    };
    control.set_docker(Arc::new(Probe(docker.clone())));
    check_runtimes(&core.settings, &docker).await?;
    prepare_volumes(&core.settings, &docker).await;

    let registry = provisioners::node_registry(
        docker.clone(),
        core.node.clone(),
        &core.settings.root,
        node_options(&core.settings, log_bus, core.names()),
    );
    core.spawn_image_gc(docker.clone());
    let Inventory {
        live,
        watched,
        unwatched,
        generation,
        unreadable,
        ..
    } = inventory;
    core.spawn_crash_watch(
        docker,
        crashes,
        give_up_tx,
        (watched, unwatched, generation),
    );
    // Reconciliation's repairs go through the engine, before any work.
    let (commands, inbox) = mpsc::channel(64);
    let engine = core
        .engine(registry.clone())
        .with_give_ups(give_up_rx)
        .with_commands(inbox);
    let cached = match unreadable {
        Some(e) => Err(e),
        None => Ok(live),
    };
    let reconciled = reconcile::start(core.store.clone(), registry, commands, cached);

    let delivery = tokio::spawn(delivery::run(
        core.store.clone(),
        client,
        core.shared.clone(),
        core.signal(),
    ));
    let run = engine.run(core.sources(poll), core.signal());
    tokio::pin!(run);
    let result = tokio::select! {
        result = &mut run => result, // stopped before reconciliation ended
        reconciled = reconciled => {
            if reconciled?.is_some() {
                control.ready.store(true, Ordering::SeqCst);
                info!(node_id = core.node.id(), socket = %core.settings.socket.display(), "agent ready");
            }
            run.await
        }
    };
    let _ = delivery.await;
    match socket.await {
        Ok(Err(e)) => error!(error = %e, "control socket"),
        Err(e) => error!(error = %e, "control socket task"),
        Ok(Ok(())) => {}
    }
    core.store.flush()?;
    info!("agent stopped");
    #[cfg(feature = "dev")]
    if core.settings.dev {
        crate::dev::remind_at_exit(&core.settings, &core.store);
    }
    result
}

/// Cached workloads from which start-up reopens the store after its pass
/// over the cache ([`Store::reopen`]): with 10,000 cached the reopen cut
/// the idle RSS by ~2 MiB (~10 ms), but a second open of sled costs ~1 MiB
/// of its own (fresh root: 15.9 -> 16.9 MiB), so few cached records are
/// not worth it (bench/notes.md, section 5d; the break-even is not
/// measured).
const REOPEN_FROM: usize = 2_000;

/// [`REOPEN_FROM`], or `AGENT_REOPEN_FROM` when set: the restart tests
/// take the reopening path with a few cached workloads.
fn reopen_from() -> usize {
    std::env::var("AGENT_REOPEN_FROM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(REOPEN_FROM)
}

/// A watch that turns true once `shutdown` resolves.
fn stop_on(shutdown: impl Future<Output = ()> + Send + 'static) -> watch::Receiver<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    stop_rx
}

/// The node's state under the root: private files, the node key, the
/// cache; names of Docker objects scoped to this node.
fn open_state(settings: &Settings) -> Result<(Arc<Identity>, Store), AgentError> {
    // Everything the agent creates (root, cache, volume images, the control
    // socket) is for root alone: no window between create and chmod.
    // SAFETY: umask only swaps the process's file mode mask.
    unsafe {
        libc::umask(0o077);
    }
    crate::files::private_root(&settings.root)?;
    let node = Arc::new(Identity::load_or_create(&settings.root.join("node.seed"))?);
    let store = Store::open(&settings.root.join("cache"))?;
    // A cache written by an earlier release (or outside systemd) may be
    // readable by others: it holds every tenant's reservations.
    crate::files::private_tree(&settings.root.join("cache"));
    info!(node_id = node.id(), root = %settings.root.display(), explorer = %settings.explorers(), cached = store.cached_len(), pending_results = store.outbox_len(), "agent starting");
    Ok((node, store))
}

/// Say at start what the operator opened: kubernetes, debug operators.
fn log_policies(settings: &Settings) {
    match settings.kubernetes() {
        KubernetesMode::PrivilegedUnsafe => warn!(
            "KUBERNETES PRIVILEGED-UNSAFE: k3s containers run privileged on the host's runtime; every tenant who reserves kubernetes owns this host. Only for a single-tenant node (--kubernetes-privileged-unsafe)"
        ),
        KubernetesMode::Disabled => info!(
            "kubernetes disabled: kubernetes reservations are refused (enable with --kubernetes-runtime or --kubernetes-privileged-unsafe)"
        ),
        KubernetesMode::Runtime(rt) => info!(runtime = %rt, "kubernetes enabled under an isolating runtime; checked against the docker engine once it answers"),
    }
    if !settings.debug_operators.is_empty() {
        info!(operators = ?settings.debug_operators, "debug operators get the whole node's log");
    }
}

/// Capacity: fingerprinted now, usage rebuilt from the cache (each cached
/// workload charged once) in the one pass that also collects what
/// reconciliation and the crash watch (containers named in `names`) need.
fn open_ledger(
    settings: &Settings,
    store: &Store,
    names: &Names,
) -> (Arc<Mutex<Ledger>>, Inventory) {
    let mut total = fingerprint(
        &settings.root,
        settings.disk_type,
        settings.reserve_cpu,
        settings.reserve_memory,
    );
    total.physical.cpu = total
        .physical
        .cpu
        .saturating_mul(settings.cpu_overcommit as u64);
    let mut ledger = Ledger::new(total).with_user_limits(settings.user_limits());
    let inventory = inventory::take(store, &mut ledger, names);
    let charged = inventory.charged;
    info!(charged, capacity = %total.physical, reserved = %total.reserved, root_disk = ?total.root_disk, "capacity fingerprinted");
    (Arc::new(Mutex::new(ledger)), inventory)
}

/// What the provisioners are told of the node's settings.
fn node_options(settings: &Settings, log_bus: LogBus, names: Names) -> NodeOptions {
    NodeOptions {
        zdb_image: settings.zdb_image.clone(),
        k3s_image: settings.k3s_image.clone(),
        k3s_privileged: settings.k3s_privileged,
        kubernetes: settings.kubernetes(),
        log_bus,
        debug_operators: settings.debug_operators.clone(),
        tenants: settings.tenants(),
        names,
        stop_grace: settings.stop_grace,
    }
}

/// What the steps after [`open_state`] share.
struct Core {
    settings: Settings,
    node: Arc<Identity>,
    store: Store,
    shared: Arc<Shared>,
    ledger: Arc<Mutex<Ledger>>,
    stop: watch::Receiver<bool>,
}

impl Core {
    /// Docker names and labels scoped to this node: two agents sharing one
    /// engine never adopt or reap each other's objects.
    fn names(&self) -> Names {
        Names::for_node(self.node.id())
    }

    fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        signal(&self.stop)
    }

    /// Register with the explorer, then heartbeat the used capacity.
    fn spawn_heartbeat(&self, client: ExplorerClient) -> Arc<HeartbeatState> {
        let state = Arc::new(HeartbeatState::default());
        let profile = NodeProfile {
            node: self.node.clone(),
            url: self.settings.node_url.clone(),
            draining: self.shared.draining.clone(),
            capacity: self
                .ledger
                .lock()
                .map(|l| l.total_capacity())
                .unwrap_or_default(),
        };
        let ledger = self.ledger.clone();
        tokio::spawn(heartbeat::run(
            client,
            profile,
            move || ledger.lock().map(|l| l.used_capacity()).unwrap_or_default(),
            self.settings.heartbeat_interval,
            state.clone(),
            self.signal(),
        ));
        state
    }

    /// The metrics' sources, and `--metrics ADDR` served.
    async fn serve_metrics(
        &self,
        poll: &PollSource,
        heartbeat: &Arc<HeartbeatState>,
    ) -> Result<(), AgentError> {
        let m = &self.shared.metrics;
        m.watch_outbox(self.store.clone());
        m.watch_poll(poll.status());
        m.watch_heartbeat(heartbeat.clone());
        m.watch_ledger(self.ledger.clone());
        if let Some(addr) = &self.settings.metrics {
            let listener = metrics::bind(addr).await?;
            info!(addr = %addr, "serving Prometheus metrics on /metrics");
            tokio::spawn(metrics::serve(listener, m.clone(), self.signal()));
        }
        Ok(())
    }

    /// What the outbox held at start was durable: delivery may send it.
    fn mark_outbox_durable(&self) -> Result<(), AgentError> {
        if let Some(last) = self.store.outbox_last_seq()? {
            self.shared.durable_below.store(last + 1, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The control socket's view of the agent (Docker: not yet reachable).
    fn control(
        &self,
        started: Instant,
        poll: &PollSource,
        heartbeat: Arc<HeartbeatState>,
        crashes: CrashCounts,
        evict: mpsc::Sender<GiveUp>,
    ) -> Arc<Control> {
        Arc::new(Control {
            node_id: self.node.id().to_string(),
            explorer: self.settings.explorers(),
            started,
            store: self.store.clone(),
            poll: poll.status(),
            docker: std::sync::RwLock::new(Arc::new(Unreachable("connecting".into()))),
            ledger: self.ledger.clone(),
            heartbeat,
            crashes,
            ready: Default::default(),
            kubernetes: self.settings.kubernetes().describe(),
            root: self.settings.root.clone(),
            draining: self.shared.draining.clone(),
            jobs: self.shared.jobs.clone(),
            evict,
            names: self.names(),
        })
    }

    /// Images the agent pulled and no container used for the grace period
    /// go; images pulled by hand are never touched.
    fn spawn_image_gc(&self, docker: Arc<BollardDocker>) {
        let grace = self.settings.image_grace;
        let stop = self.signal();
        tokio::spawn(async move {
            tokio::pin!(stop);
            let every = (grace / 4).clamp(Duration::from_secs(60), Duration::from_secs(3600));
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) =
                    provisioners::images::collect(docker.as_ref(), docker.image_policy(), grace)
                        .await
                {
                    warn!(error = %e, "image garbage collection");
                }
            }
        });
    }

    /// The crash watch decides; the engine decommissions.
    fn spawn_crash_watch(
        &self,
        docker: Arc<BollardDocker>,
        crashes: CrashCounts,
        give_ups: mpsc::Sender<GiveUp>,
        (watched, unwatched, generation): (Vec<Watched>, Vec<String>, u64),
    ) {
        let mut watch = CrashWatch::new(
            docker,
            CrashPolicy {
                limit: self.settings.crash_limit,
                window: self.settings.crash_window,
                ..CrashPolicy::default()
            },
        )
        .with_counts(crashes)
        .with_names(self.names());
        watch.seed(watched, unwatched, generation);
        tokio::spawn(crash::run(
            watch,
            self.store.clone(),
            give_ups,
            self.signal(),
        ));
    }

    /// The engine over the provisioners, admitting against the ledger.
    fn engine(&self, registry: provisioners::Registry) -> Engine {
        Engine::new(
            self.node.clone(),
            self.store.clone(),
            registry,
            EngineConfig {
                provision_timeout: self.settings.provision_timeout,
                max_duration: self.settings.max_duration,
                max_parallel: self.settings.max_parallel,
                stop_grace: self.settings.stop_grace,
                min_free_disk: self.settings.min_free_disk,
                ..EngineConfig::default()
            },
            self.shared.clone(),
        )
        .with_ledger(self.ledger.clone())
    }

    /// The engine's input: the poll and the expiries, merged; freed memory
    /// goes back to the system after each large unit (a resync page).
    fn sources(&self, poll: PollSource) -> TrimAfterLarge<CombinedSource> {
        let sources: Vec<Box<dyn ReservationSource>> = vec![
            Box::new(poll),
            Box::new(
                DecommissionSource::new(self.store.clone(), self.shared.expiry_wake.clone())
                    .with_grace(self.settings.stop_grace),
            ),
        ];
        TrimAfterLarge::new(CombinedSource::new(sources))
    }
}

/// The runtimes the settings name must be the engine's, or the agent
/// refuses to start.
async fn check_runtimes(
    settings: &Settings,
    docker: &Arc<BollardDocker>,
) -> Result<(), AgentError> {
    if let KubernetesMode::Runtime(rt) = settings.kubernetes() {
        // A runtime the engine does not have (or runc under another name)
        // would fail every k3s node, or isolate nothing: refuse to start.
        if let Err(e) = provisioners::kubernetes::check_runtime(docker.as_ref(), &rt).await {
            error!(error = %e, "refusing to start");
            return Err(AgentError::Other(e));
        }
        info!(runtime = %rt, "kubernetes enabled: k3s containers run under this isolating runtime");
    }
    if let Some(rt) = &settings.container_runtime {
        // Every tenant container would fail to start: refuse to start.
        if let Err(e) = check_container_runtime(docker.as_ref(), rt).await {
            error!(error = %e, "refusing to start");
            return Err(e);
        }
        info!(runtime = %rt, "tenant containers run under this runtime");
    }
    Ok(())
}

/// Whether volume sizes can be enforced here; after a reboot, the volume
/// filesystems back before reconciliation looks at the containers that
/// mount them.
async fn prepare_volumes(settings: &Settings, docker: &Arc<BollardDocker>) {
    let volumes = VolumeProvisioner::new(docker.clone(), settings.root.clone());
    if let Some(why) = volumes.unavailable() {
        error!(reason = %why, "VOLUME SIZES CANNOT BE ENFORCED ON THIS NODE: volume reservations will be refused");
        return;
    }
    match volumes.remount_all().await {
        Ok(ids) if !ids.is_empty() => info!(count = ids.len(), "remounted volume images"),
        Ok(_) => {}
        Err(e) => error!(error = %e, "cannot remount volume images"),
    }
}

/// `--container-runtime NAME` must be one of the engine's runtimes.
async fn check_container_runtime(docker: &dyn Docker, name: &str) -> Result<(), AgentError> {
    let info = docker.info().await.map_err(|e| AgentError::Config {
        path: "--container-runtime".into(),
        reason: format!("cannot read the docker engine's runtimes: {e}"),
    })?;
    if info.runtimes.iter().any(|r| r == name) {
        return Ok(());
    }
    Err(AgentError::Config {
        path: "--container-runtime".into(),
        reason: format!(
            "runtime {name:?} is not registered with this node's docker engine (it has: {}); add it to \"runtimes\" in /etc/docker/daemon.json and reload dockerd (SIGHUP), or drop the setting",
            info.runtimes.join(", ")
        ),
    })
}

/// Connect to Docker, retrying every 5 s while it is unreachable (the agent
/// must not crash-loop when the engine restarts). `None` on shutdown.
async fn connect_docker(
    stop: &watch::Receiver<bool>,
    settings: &Settings,
) -> Option<Arc<BollardDocker>> {
    let mut warned = false;
    loop {
        match BollardDocker::connect().await {
            Ok(d) => {
                if warned {
                    info!("docker engine reachable again");
                }
                let policy =
                    ImagePolicy::new(settings.pull_timeout, settings.root.join("images.json"));
                return Some(Arc::new(d.with_image_policy(policy)));
            }
            Err(e) => {
                if !warned {
                    error!(error = %e, "docker engine unreachable; retrying every 5 s (check that dockerd runs and DOCKER_HOST)");
                    warned = true;
                }
            }
        }
        tokio::select! {
            _ = signal(stop) => return None,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Set up tracing: text or JSON lines on stderr, `RUST_LOG` to filter
/// (default `info`).
/// Every event also goes to `log_bus`, for `debug` reservations.
pub fn init_tracing(format: crate::config::LogFormat, log_bus: &LogBus) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt_layer = match format {
        crate::config::LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed(),
        crate::config::LogFormat::Text => fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(log_bus.layer())
        .try_init();
}
