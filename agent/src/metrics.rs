//! Prometheus metrics on `/metrics` (`--metrics ADDR`, off by default), in
//! the text exposition format, with the `prometheus` crate.
//!
//! Two kinds of figures:
//! - events the engine reports as they happen, through cheap calls
//!   ([`Metrics::handled`], [`Metrics::provisioned_in`]);
//! - state read at scrape time from handles the agent already keeps
//!   (outbox depth from the store, last poll, heartbeat, capacity), so
//!   nothing has to push them ([`Metrics::watch_outbox`] and friends).
//!
//! Series:
//! - `agent_reservations_total{type,outcome}` counter, outcome one of
//!   `provisioned`, `refused`, `decommissioned`;
//! - `agent_provision_duration_seconds{type}` histogram;
//! - `agent_outbox_depth` gauge: results and deletions not yet acknowledged;
//! - `agent_last_poll_timestamp_seconds`, `agent_last_heartbeat_timestamp_seconds`
//!   gauges (unix seconds, 0 before the first success); `agent_registered`;
//! - `agent_capacity_cpu_cores{state}`, `agent_capacity_memory_bytes{state}`,
//!   `agent_capacity_disk_bytes{disk,state}` gauges, state one of `total`,
//!   `reserved`, `used`, `free`, disk `ssd` or `hdd`.

use std::future::Future;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use reservation::WorkloadType;
use tokio::net::TcpListener;

use crate::capacity::{Ledger, Resources};
use crate::heartbeat::HeartbeatState;
use crate::AgentError;

/// Outcomes counted by `agent_reservations_total`.
pub const OUTCOMES: [&str; 3] = ["provisioned", "refused", "decommissioned"];

/// Histogram buckets of provisioning durations, in seconds: a network takes
/// milliseconds, a container with a pull minutes.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0,
];

type Refresher = Box<dyn Fn(&Metrics) + Send + Sync>;

/// The agent's metrics. Share it as `Arc<Metrics>`; every method takes
/// `&self`.
pub struct Metrics {
    registry: Registry,
    handled: IntCounterVec,
    durations: HistogramVec,
    /// Results and deletions waiting for the explorer.
    pub outbox_depth: IntGauge,
    /// Unix seconds of the last successful poll, 0 before it.
    pub last_poll: Gauge,
    /// Unix seconds of the last accepted heartbeat, 0 before it.
    pub last_heartbeat: Gauge,
    /// 1 while the explorer knows the node.
    pub registered: IntGauge,
    cpu: IntGaugeVec,
    memory: IntGaugeVec,
    disk: IntGaugeVec,
    refreshers: Mutex<Vec<Refresher>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_secs(t: Option<chrono::DateTime<chrono::Utc>>) -> f64 {
    t.map(|t| t.timestamp_millis() as f64 / 1000.0)
        .unwrap_or(0.0)
}

impl Metrics {
    /// Every series registered, the per-type ones at zero for each type so
    /// a dashboard sees them before the first reservation.
    pub fn new() -> Self {
        // Names and label sets are constants: registering cannot fail
        // unless this function itself is wrong.
        let registry = Registry::new();
        let handled = IntCounterVec::new(
            Opts::new(
                "agent_reservations_total",
                "Reservations handled, by workload type and outcome.",
            ),
            &["type", "outcome"],
        )
        .expect("valid counter");
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "agent_provision_duration_seconds",
                "Time to provision a workload, by type (successful provisionings).",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["type"],
        )
        .expect("valid histogram");
        let outbox_depth = IntGauge::new(
            "agent_outbox_depth",
            "Signed results and deletions not yet acknowledged by the explorer.",
        )
        .expect("valid gauge");
        let last_poll = Gauge::new(
            "agent_last_poll_timestamp_seconds",
            "Unix time of the last successful poll of the explorer (0: none yet).",
        )
        .expect("valid gauge");
        let last_heartbeat = Gauge::new(
            "agent_last_heartbeat_timestamp_seconds",
            "Unix time of the last heartbeat the explorer accepted (0: none yet).",
        )
        .expect("valid gauge");
        let registered = IntGauge::new(
            "agent_registered",
            "1 while the node is registered with the explorer.",
        )
        .expect("valid gauge");
        let cpu = IntGaugeVec::new(
            Opts::new(
                "agent_capacity_cpu_cores",
                "CPU cores: total, reserved for the host, used by workloads, free.",
            ),
            &["state"],
        )
        .expect("valid gauge");
        let memory = IntGaugeVec::new(
            Opts::new(
                "agent_capacity_memory_bytes",
                "Memory: total, reserved for the host, used by workloads, free.",
            ),
            &["state"],
        )
        .expect("valid gauge");
        let disk = IntGaugeVec::new(
            Opts::new(
                "agent_capacity_disk_bytes",
                "Disk by type: total, reserved, used by workloads, free.",
            ),
            &["disk", "state"],
        )
        .expect("valid gauge");
        for c in [
            Box::new(handled.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(durations.clone()),
            Box::new(outbox_depth.clone()),
            Box::new(last_poll.clone()),
            Box::new(last_heartbeat.clone()),
            Box::new(registered.clone()),
            Box::new(cpu.clone()),
            Box::new(memory.clone()),
            Box::new(disk.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        for t in WorkloadType::ALL {
            for o in OUTCOMES {
                handled.with_label_values(&[t.as_str(), o]);
            }
            durations.with_label_values(&[t.as_str()]);
        }
        Metrics {
            registry,
            handled,
            durations,
            outbox_depth,
            last_poll,
            last_heartbeat,
            registered,
            cpu,
            memory,
            disk,
            refreshers: Mutex::new(Vec::new()),
        }
    }

    /// Count one reservation of type `kind` (the wire type, unknown ones
    /// included) handled with `outcome` (`provisioned`, `refused` or
    /// `decommissioned`).
    pub fn handled(&self, kind: &str, outcome: &str) {
        self.handled.with_label_values(&[kind, outcome]).inc();
    }

    /// Record a successful provisioning of type `kind` that took `secs`.
    pub fn provisioned_in(&self, kind: &str, secs: f64) {
        self.durations.with_label_values(&[kind]).observe(secs);
    }

    /// Run `f` before every scrape, to set gauges from live state.
    pub fn on_scrape(&self, f: impl Fn(&Metrics) + Send + Sync + 'static) {
        if let Ok(mut r) = self.refreshers.lock() {
            r.push(Box::new(f));
        }
    }

    /// Outbox depth from the store at each scrape.
    pub fn watch_outbox(&self, store: store::Store) {
        self.on_scrape(move |m| m.outbox_depth.set(store.outbox_len() as i64));
    }

    /// Time of the last successful poll at each scrape.
    pub fn watch_poll(&self, status: Arc<sources::PollStatus>) {
        self.on_scrape(move |m| m.last_poll.set(unix_secs(status.last_ok())));
    }

    /// Heartbeat time and registration at each scrape.
    pub fn watch_heartbeat(&self, state: Arc<HeartbeatState>) {
        self.on_scrape(move |m| {
            m.last_heartbeat.set(unix_secs(state.last_heartbeat()));
            m.registered.set(state.registered() as i64);
        });
    }

    /// Capacity figures from the ledger at each scrape.
    pub fn watch_ledger(&self, ledger: Arc<Mutex<Ledger>>) {
        self.on_scrape(move |m| {
            let l = match ledger.lock() {
                Ok(l) => l,
                Err(p) => p.into_inner(),
            };
            m.set_capacity(&l);
        });
    }

    /// Set the capacity gauges from `ledger`.
    pub fn set_capacity(&self, ledger: &Ledger) {
        let mib = |v: u64| (v.saturating_mul(1 << 20)).min(i64::MAX as u64) as i64;
        let states: [(&str, Resources); 4] = [
            ("total", ledger.total()),
            ("reserved", ledger.reserved()),
            ("used", ledger.used()),
            ("free", ledger.free()),
        ];
        for (state, r) in states {
            self.cpu.with_label_values(&[state]).set(r.cpu as i64);
            self.memory
                .with_label_values(&[state])
                .set(mib(r.memory_mib));
            self.disk
                .with_label_values(&["ssd", state])
                .set(mib(r.ssd_mib));
            self.disk
                .with_label_values(&["hdd", state])
                .set(mib(r.hdd_mib));
        }
    }

    /// Refresh the scrape-time gauges and encode every series.
    pub fn render(&self) -> Result<String, String> {
        if let Ok(r) = self.refreshers.lock() {
            for f in r.iter() {
                f(self);
            }
        }
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .map_err(|e| e.to_string())?;
        String::from_utf8(buf).map_err(|e| e.to_string())
    }
}

/// Listen on `addr` (`--metrics`, e.g. `127.0.0.1:9100` or `[::]:9100`).
pub async fn bind(addr: &str) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| AgentError::Config {
            path: "--metrics".into(),
            reason: format!("cannot listen on {addr}: {e} (choose another address with --metrics ADDR or `metrics` in the config file)"),
        })
}

/// Serve `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics);
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, "metrics on http://{a}/metrics");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(State(m): State<Arc<Metrics>>) -> Response {
    match m.render() {
        Ok(body) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::Total;
    use prometheus_parse::{Sample, Scrape, Value};
    use reservation::workloads::DiskType;

    fn find<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> &'a Sample {
        s.samples
            .iter()
            .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }

    fn num(v: &Value) -> f64 {
        match v {
            Value::Counter(n) | Value::Gauge(n) | Value::Untyped(n) => *n,
            other => panic!("not a number: {other:?}"),
        }
    }

    #[tokio::test]
    async fn scraped_over_http_and_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store::Store::open(dir.path()).unwrap();
        let node = reservation::Identity::generate();
        for id in ["1-1", "2-1"] {
            let r = reservation::Reservation {
                id: id.into(),
                kind: "volume".into(),
                ..Default::default()
            };
            store
                .record_refused(&node.error_result(&r, "bad"), "")
                .unwrap();
        }

        let mut ledger = Ledger::new(Total {
            physical: Resources {
                cpu: 4,
                memory_mib: 8192,
                ssd_mib: 100 * 1024,
                hdd_mib: 0,
            },
            reserved: Resources {
                cpu: 1,
                memory_mib: 2048,
                ..Resources::ZERO
            },
            root_disk: DiskType::Ssd,
        });
        ledger.add(
            "3-1",
            Resources {
                cpu: 1,
                memory_mib: 512,
                ssd_mib: 256,
                hdd_mib: 0,
            },
        );
        let ledger = Arc::new(Mutex::new(ledger));
        let hb = Arc::new(HeartbeatState::default());

        let m = Arc::new(Metrics::new());
        m.watch_outbox(store.clone());
        m.watch_ledger(ledger.clone());
        m.watch_heartbeat(hb.clone());
        m.watch_poll(Arc::new(sources::PollStatus::default()));
        m.handled("container", "provisioned");
        m.handled("container", "provisioned");
        m.handled("volume", "refused");
        m.handled("bogus", "refused");
        m.provisioned_in("container", 0.3);
        m.provisioned_in("container", 42.0);

        let listener = bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, m.clone(), async move {
            let _ = rx.await;
        }));
        let url = format!("http://{addr}/metrics");
        let resp = reqwest::get(&url).await.unwrap();
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        let text = resp.text().await.unwrap();
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();

        let v = |name: &str, labels: &[(&str, &str)]| num(&find(&scrape, name, labels).value);
        assert_eq!(
            v(
                "agent_reservations_total",
                &[("type", "container"), ("outcome", "provisioned")]
            ),
            2.0
        );
        assert_eq!(
            v(
                "agent_reservations_total",
                &[("type", "volume"), ("outcome", "refused")]
            ),
            1.0
        );
        assert_eq!(
            v(
                "agent_reservations_total",
                &[("type", "bogus"), ("outcome", "refused")]
            ),
            1.0
        );
        assert_eq!(
            v(
                "agent_reservations_total",
                &[("type", "zdb"), ("outcome", "decommissioned")]
            ),
            0.0
        );
        assert_eq!(v("agent_outbox_depth", &[]), 2.0);
        assert_eq!(v("agent_last_poll_timestamp_seconds", &[]), 0.0);
        assert_eq!(v("agent_registered", &[]), 0.0);
        assert_eq!(v("agent_capacity_cpu_cores", &[("state", "total")]), 4.0);
        assert_eq!(v("agent_capacity_cpu_cores", &[("state", "reserved")]), 1.0);
        assert_eq!(v("agent_capacity_cpu_cores", &[("state", "free")]), 2.0);
        assert_eq!(
            v("agent_capacity_memory_bytes", &[("state", "used")]),
            (512u64 << 20) as f64
        );
        assert_eq!(
            v(
                "agent_capacity_disk_bytes",
                &[("disk", "ssd"), ("state", "used")]
            ),
            (256u64 << 20) as f64
        );
        assert_eq!(
            v(
                "agent_capacity_disk_bytes",
                &[("disk", "hdd"), ("state", "total")]
            ),
            0.0
        );
        match &find(
            &scrape,
            "agent_provision_duration_seconds",
            &[("type", "container")],
        )
        .value
        {
            Value::Histogram(buckets) => {
                let le = |x: f64| buckets.iter().find(|b| b.less_than == x).unwrap().count;
                assert_eq!(le(0.25), 0.0);
                assert_eq!(le(0.5), 1.0);
                assert_eq!(le(60.0), 2.0);
                assert_eq!(le(f64::INFINITY), 2.0);
            }
            other => panic!("not a histogram: {other:?}"),
        }
        assert_eq!(
            v(
                "agent_provision_duration_seconds_count",
                &[("type", "container")]
            ),
            2.0
        );

        // Gauges follow live state between scrapes.
        store
            .outbox_ack(store.outbox_peek(1).unwrap()[0].seq)
            .unwrap();
        ledger.lock().unwrap().release("3-1");
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        assert!(text.contains("\nagent_outbox_depth 1\n"), "{text}");
        assert!(
            text.contains("agent_capacity_cpu_cores{state=\"used\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE agent_provision_duration_seconds histogram"));

        assert_eq!(
            reqwest::get(format!("http://{addr}/nope"))
                .await
                .unwrap()
                .status(),
            404
        );
        let _ = tx.send(());
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_busy_address_says_which_flag_to_change() {
        let l = bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let e = bind(&addr).await.unwrap_err().to_string();
        assert!(e.contains(&addr) && e.contains("--metrics"), "{e}");
    }
}
