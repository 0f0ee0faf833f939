//! Wiring of the `agent` daemon: identity, cache, Docker, provisioners,
//! sources, engine, delivery and the control socket, all stopped by one
//! shutdown future.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use provisioners::images::ImagePolicy;
use provisioners::kubernetes::KubernetesMode;
use provisioners::{BollardDocker, Docker, LogBus, NodeOptions, VolumeProvisioner};
use reservation::Identity;
use sources::{CombinedSource, DecommissionSource, ExplorerClient, PollSource, ReservationSource};
use store::Store;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::capacity::{fingerprint, Ledger};
use crate::config::Settings;
use crate::control::{Control, DockerProbe, LogStream};
use crate::crash::{self, CrashCounts, CrashPolicy, CrashWatch};
use crate::engine::{Engine, EngineConfig, Shared};
use crate::heartbeat::{self, HeartbeatState};
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
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

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
    let names = provisioners::names::Names::for_node(node.id());
    info!(node_id = node.id(), root = %settings.root.display(), explorer = %settings.explorer, cached = store.cached_len(), pending_results = store.outbox_len(), "agent starting");
    match &settings.kubernetes {
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

    if settings.dev {
        start_dev_explorer(&settings, &node, &stop_rx).await?;
    }

    // Capacity: fingerprinted now, usage rebuilt from the cache (each
    // cached workload charged once).
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
    let mut ledger = Ledger::new(total).with_user_limits(settings.user_limits);
    let charged = ledger.rebuild_from_store(&store);
    let ledger = Arc::new(Mutex::new(ledger));
    info!(charged, capacity = %total.physical, reserved = %total.reserved, root_disk = ?total.root_disk, "capacity fingerprinted");

    let client = ExplorerClient::new(&settings.explorer, node.id(), settings.max_poll_bytes)?;
    let poll = PollSource::new(client.clone(), store.cursor()?);
    let shared = Arc::new(Shared::default());
    // A drain survives restarts: a retiring node stays retiring.
    crate::control::load_draining(&settings.root, &shared.draining);

    // Registration and heartbeat need no Docker: start them first.
    let heartbeat = Arc::new(HeartbeatState::default());
    let registration = heartbeat::NodeProfile {
        node: node.clone(),
        url: settings.node_url.clone(),
        draining: shared.draining.clone(),
        capacity: ledger
            .lock()
            .map(|l| l.total_capacity())
            .unwrap_or_default(),
    };
    let used_ledger = ledger.clone();
    tokio::spawn(heartbeat::run(
        client.clone(),
        registration,
        move || {
            used_ledger
                .lock()
                .map(|l| l.used_capacity())
                .unwrap_or_default()
        },
        settings.heartbeat_interval,
        heartbeat.clone(),
        signal(&stop_rx),
    ));

    let metrics = &shared.metrics;
    metrics.watch_outbox(store.clone());
    metrics.watch_poll(poll.status());
    metrics.watch_heartbeat(heartbeat.clone());
    metrics.watch_ledger(ledger.clone());
    if let Some(addr) = &settings.metrics {
        let listener = metrics::bind(addr).await?;
        info!(addr = %addr, "serving Prometheus metrics on /metrics");
        tokio::spawn(metrics::serve(
            listener,
            shared.metrics.clone(),
            signal(&stop_rx),
        ));
    }
    if let Some(last) = store.outbox_last_seq()? {
        shared
            .durable_below
            .store(last + 1, std::sync::atomic::Ordering::SeqCst);
    }

    let crash_watch_counts = CrashCounts::default();
    // The control socket answers even while Docker is down.
    // Decisions to end workloads early go to the engine: the crash watch's
    // give-ups and the operator's `agentctl purge`.
    let (give_up_tx, give_up_rx) = tokio::sync::mpsc::channel(16);
    let control = Arc::new(Control {
        node_id: node.id().to_string(),
        explorer: settings.explorer.clone(),
        started,
        store: store.clone(),
        poll: poll.status(),
        docker: std::sync::RwLock::new(Arc::new(Unreachable("connecting".into()))),
        ledger: ledger.clone(),
        heartbeat: heartbeat.clone(),
        crashes: crash_watch_counts.clone(),
        ready: Default::default(),
        kubernetes: settings.kubernetes.describe(),
        root: settings.root.clone(),
        draining: shared.draining.clone(),
        evict: give_up_tx.clone(),
    });
    let socket = tokio::spawn(crate::control::serve(
        settings.socket.clone(),
        control.clone(),
        signal(&stop_rx),
    ));
    let Some(docker) = connect_docker(&stop_rx, &settings).await else {
        let _ = socket.await;
        return Ok(()); // shut down while waiting for Docker
    };
    control.set_docker(Arc::new(Probe(docker.clone())));
    if let KubernetesMode::Runtime(rt) = &settings.kubernetes {
        // A runtime the engine does not have (or runc under another name)
        // would fail every k3s node, or isolate nothing: refuse to start.
        if let Err(e) = provisioners::kubernetes::check_runtime(docker.as_ref(), rt).await {
            error!(error = %e, "refusing to start");
            return Err(AgentError::Other(e));
        }
        info!(runtime = %rt, "kubernetes enabled: k3s containers run under this isolating runtime");
    }
    if let Some(rt) = &settings.tenants.container.runtime {
        // Every tenant container would fail to start: refuse to start.
        if let Err(e) = check_container_runtime(docker.as_ref(), rt).await {
            error!(error = %e, "refusing to start");
            return Err(e);
        }
        info!(runtime = %rt, "tenant containers run under this runtime");
    }
    let volumes = VolumeProvisioner::new(docker.clone(), settings.root.clone());
    if let Some(why) = volumes.unavailable() {
        error!(reason = %why, "VOLUME SIZES CANNOT BE ENFORCED ON THIS NODE: volume reservations will be refused");
    } else {
        // After a reboot: the volume filesystems back, before reconciliation
        // looks at the containers that mount them.
        match volumes.remount_all().await {
            Ok(ids) if !ids.is_empty() => info!(count = ids.len(), "remounted volume images"),
            Ok(_) => {}
            Err(e) => error!(error = %e, "cannot remount volume images"),
        }
    }

    let registry = provisioners::node_registry(
        docker.clone(),
        node.clone(),
        &settings.root,
        NodeOptions {
            zdb_image: settings.zdb_image.clone(),
            k3s_image: settings.k3s_image.clone(),
            k3s_privileged: settings.k3s_privileged,
            kubernetes: settings.kubernetes.clone(),
            log_bus,
            debug_operators: settings.debug_operators.clone(),
            tenants: settings.tenants.clone(),
            names: names.clone(),
        },
    );
    // Images the agent pulled and no container used for the grace period
    // go; images pulled by hand are never touched.
    let gc_docker = docker.clone();
    let grace = settings.image_grace;
    let gc_stop = signal(&stop_rx);
    tokio::spawn(async move {
        tokio::pin!(gc_stop);
        let every = (grace / 4).clamp(Duration::from_secs(60), Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = &mut gc_stop => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) =
                provisioners::images::collect(gc_docker.as_ref(), gc_docker.image_policy(), grace)
                    .await
            {
                warn!(error = %e, "image garbage collection");
            }
        }
    });

    // The crash watch decides; the engine decommissions.
    let watch = CrashWatch::new(
        docker.clone(),
        CrashPolicy {
            limit: settings.crash_limit,
            window: settings.crash_window,
            ..CrashPolicy::default()
        },
    )
    .with_counts(crash_watch_counts)
    .with_names(names);
    tokio::spawn(crash::run(
        watch,
        store.clone(),
        give_up_tx,
        signal(&stop_rx),
    ));

    let mut engine = Engine::new(
        node.clone(),
        store.clone(),
        registry,
        EngineConfig {
            provision_timeout: settings.provision_timeout,
            max_duration: settings.max_duration,
            root: Some(settings.root.clone()),
            min_free_disk: settings.min_free_disk,
            ..EngineConfig::default()
        },
        shared.clone(),
    )
    .with_ledger(ledger.clone())
    .with_give_ups(give_up_rx);
    reconcile::repair_cached(&mut engine).await?;

    let delivery = tokio::spawn(delivery::run(
        store.clone(),
        client.clone(),
        shared.clone(),
        signal(&stop_rx),
    ));
    let sources: Vec<Box<dyn ReservationSource>> = vec![
        Box::new(poll),
        Box::new(DecommissionSource::new(
            store.clone(),
            shared.expiry_wake.clone(),
        )),
    ];
    control
        .ready
        .store(true, std::sync::atomic::Ordering::SeqCst);
    info!(node_id = node.id(), socket = %settings.socket.display(), "agent ready");
    let result = engine
        .run(CombinedSource::new(sources), signal(&stop_rx))
        .await;
    let _ = delivery.await;
    match socket.await {
        Ok(Err(e)) => error!(error = %e, "control socket"),
        Err(e) => error!(error = %e, "control socket task"),
        Ok(Ok(())) => {}
    }
    store.flush()?;
    info!("agent stopped");
    if settings.dev {
        let running = store.cached_len();
        if running > 0 {
            println!(
                "\nagent --dev stopped; its {running} workloads keep running in Docker.\n\
                 To remove them, start `agent --dev` again and run\n  \
                 agentctl --socket {} purge --yes\n\
                 Do not `rm -rf {}` while they run: it holds the node key and mounted volumes.\n",
                settings.socket.display(),
                settings.root.display()
            );
        }
    }
    result
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

/// `--dev`: the reference explorer in this process, and a ready-to-paste
/// reservation command.
async fn start_dev_explorer(
    settings: &Settings,
    node: &Identity,
    stop: &watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], settings.dev_port));
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| AgentError::Config {
        path: "--dev".into(),
        reason: format!("cannot listen on {addr} for the dev explorer: {e} (is another agent --dev or explorer running? pick another port with --dev-port)"),
    })?;
    let cfg = explorer::ServerConfig {
        data_dir: settings.root.join("explorer"),
        ..explorer::ServerConfig::default()
    };
    let stop = signal(stop);
    tokio::spawn(async move {
        if let Err(e) = explorer::serve(listener, cfg, stop).await {
            warn!(error = %e, "dev explorer stopped");
        }
    });
    let id = node.id();
    println!(
        "\nagent --dev: explorer on http://{addr}, node id {id}\n\
         Reserve a container on this node from another terminal, in this checkout:\n\n  \
         cargo build --bins && export PATH=$PWD/target/debug:$PATH\n  \
         bash tests/images/build.sh     # the local image agent-test/busybox:latest\n  \
         explorer keygen\n  \
         explorer reserve container --explorer http://{addr} --node {id} --flist agent-test/busybox:latest --entrypoint 'sleep 3600' --cpu 1 --memory 64 --duration 10m\n\n\
         Inspect it:  agentctl --socket {sock} list\n\
         Clean up:    agentctl --socket {sock} purge --yes   (before stopping this agent)\n",
        sock = settings.socket.display()
    );
    Ok(())
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
