//! Benchmark: engine throughput (BENCHMARKS.md, figure 1). Reservations per
//! second through the real `Engine::handle`: signature check, judgement,
//! the node's signed result, the cache and outbox transaction in a real
//! sled store on disk, and the store flush (fsync) the engine does once per
//! poll answer. The provisioner does nothing, so Docker is not measured.
//!
//! Each criterion iteration starts from a fresh store in a temp dir (same
//! disk as the agent's root would be); building the store and cloning the
//! input is outside the timed part.
//!
//! Cases:
//! - `one_answer/10000`: 10,000 reservations in one poll answer, one flush.
//! - `one_answer_json_log/10000`: the same with the daemon's JSON log lines
//!   (two per reservation) formatted and written to a sink.
//! - `answer_each/1000`: 1,000 poll answers of one reservation each, one
//!   flush each (1,000 rather than 10,000 keeps a sample short; the rate is
//!   what is compared).
//!
//! After the `engine` group it prints, per case run, the process CPU time
//! (every thread: the engine's, the blocking pool's, sled's) per
//! reservation of the timed part, median over every run: on a shared
//! machine that moves less with the load than the wall time does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use agent::engine::{Engine, EngineConfig};
use async_trait::async_trait;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use provisioners::{ProvisionError, Provisioner, Registry};
use reservation::{Identity, Reservation, Workload, WorkloadType};
use sources::Work;
use store::Store;

/// Provisions nothing and says so.
struct NoOp;

#[async_trait]
impl Provisioner for NoOp {
    async fn provision(
        &self,
        r: &Reservation,
        _w: &Workload,
    ) -> Result<serde_json::Value, ProvisionError> {
        Ok(serde_json::json!({"id": format!("noop-{}", r.id)}))
    }
    async fn decommission(&self, _r: &Reservation, _w: &Workload) -> Result<(), ProvisionError> {
        Ok(())
    }
}

/// `n` container reservations for `node`, signed by one user, valid for an
/// hour from now.
fn reservations(node: &Identity, n: usize) -> Vec<Reservation> {
    let user = Identity::generate();
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    (1..=n)
        .map(|i| {
            let mut r: Reservation = serde_json::from_value(serde_json::json!({
                "id": format!("{i}-1"),
                "version": 2,
                "node_id": node.id(),
                "user_id": user.id(),
                "type": "container",
                "data": {
                    "flist": "agent-test/busybox:latest",
                    "entrypoint": "sleep 3600",
                    // Distinct signed bytes: the engine refuses a replayed
                    // signature under a new id.
                    "env": {"N": i.to_string()},
                    "capacity": {"cpu": 1, "memory": 64}
                },
                "created": created,
                "duration": 3_600_000_000_000i64,
            }))
            .expect("reservation json");
            user.sign_reservation(&mut r);
            r
        })
        .collect()
}

/// CPU time of the whole process (user + system, every thread) so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is handed.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Per case: (wall, process CPU) of each timed run.
type Runs = BTreeMap<&'static str, Vec<(Duration, Duration)>>;

/// Every timed run so far, for the CPU summary.
fn runs() -> &'static Mutex<Runs> {
    static RUNS: OnceLock<Mutex<Runs>> = OnceLock::new();
    RUNS.get_or_init(Mutex::default)
}

/// Time handling `answers` (poll answers) on a fresh store and engine; the
/// run's wall and CPU time are kept under `case`.
fn run_once(
    case: &'static str,
    rt: &tokio::runtime::Runtime,
    node: &Arc<Identity>,
    answers: &[Vec<Reservation>],
    log: bool,
) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("cache")).expect("store");
    let mut reg = Registry::new();
    reg.register(WorkloadType::Container, Arc::new(NoOp));
    let mut engine = Engine::new(
        node.clone(),
        store.clone(),
        reg,
        EngineConfig::default(),
        Arc::default(),
    );
    let work: Vec<Work> = answers
        .iter()
        .enumerate()
        .map(|(i, a)| Work::Poll {
            reservations: a.clone(),
            cursor: i as u64 + 1,
            synced: true,
        })
        .collect();
    let total: usize = answers.iter().map(Vec::len).sum();
    let handle_all = || {
        rt.block_on(async {
            let cpu = process_cpu();
            let start = Instant::now();
            for w in work {
                engine.handle(w).await.expect("engine handles the answer");
            }
            (start.elapsed(), process_cpu().saturating_sub(cpu))
        })
    };
    let (took, cpu) = if log {
        // The daemon's `--log-format json` layer, written to a sink.
        let sub = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::with_default(sub, handle_all)
    } else {
        handle_all()
    };
    // Not timed: prove every reservation went through cache and outbox.
    if store.cached_len() != total {
        let r = answers[answers.len() - 1].last().expect("one");
        panic!(
            "only {} of {total} cached; {}: {:?}",
            store.cached_len(),
            r.id,
            store.outcome(&r.id)
        );
    }
    assert_eq!(store.cached_len(), total, "every reservation is cached");
    assert_eq!(store.outbox_len(), total, "every result is in the outbox");
    if let Ok(mut runs) = runs().lock() {
        runs.entry(case).or_default().push((took, cpu));
    }
    took
}

/// Print each case's median CPU and wall time per reservation.
fn print_cpu(per_run: &[(&'static str, usize)]) {
    let Ok(runs) = runs().lock() else { return };
    for (case, n) in per_run {
        let Some(v) = runs.get(case) else { continue };
        let median = |mut d: Vec<Duration>| {
            d.sort();
            d[d.len() / 2].as_secs_f64() * 1e6 / *n as f64
        };
        println!(
            "engine/{case}: CPU per reservation (process, every thread) {:.1} µs, wall {:.1} µs, median of {} runs",
            median(v.iter().map(|r| r.1).collect()),
            median(v.iter().map(|r| r.0).collect()),
            v.len()
        );
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let node = Arc::new(Identity::generate());
    let all = reservations(&node, 10_000);
    let one_answer = vec![all.clone()];
    let answer_each: Vec<Vec<Reservation>> = all[..1_000].iter().map(|r| vec![r.clone()]).collect();

    let mut g = c.benchmark_group("engine");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(10));

    g.throughput(Throughput::Elements(10_000));
    g.bench_function("one_answer/10000", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| run_once("one_answer/10000", &rt, &node, &one_answer, false))
                .sum()
        })
    });
    g.bench_function("one_answer_json_log/10000", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| run_once("one_answer_json_log/10000", &rt, &node, &one_answer, true))
                .sum()
        })
    });
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("answer_each/1000", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| run_once("answer_each/1000", &rt, &node, &answer_each, false))
                .sum()
        })
    });
    g.finish();
    print_cpu(&[
        ("one_answer/10000", 10_000),
        ("one_answer_json_log/10000", 10_000),
        ("answer_each/1000", 1_000),
    ]);

    // Where the time of one reservation goes: the same 10,000 reservations
    // through each step alone.
    let mut p = c.benchmark_group("engine_parts");
    p.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(10_000));
    p.bench_function("verify/10000", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for r in &all {
                    r.verify().expect("verifies");
                }
            }
            start.elapsed()
        })
    });
    p.bench_function("sign_result/10000", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for r in &all {
                    let data = serde_json::json!({"id": format!("noop-{}", r.id)});
                    node.ok_result(r, &data).expect("signs");
                }
            }
            start.elapsed()
        })
    });
    // Built on first use: a run filtered to the `engine` group (figure 1)
    // does not pay for 10,000 signatures and transactions it does not use.
    let results_cell = OnceLock::new();
    let results = || {
        results_cell.get_or_init(|| {
            all.iter()
                .map(|r| {
                    let data = serde_json::json!({"id": format!("noop-{}", r.id)});
                    let res = node.ok_result(r, &data).expect("signs");
                    (store::Cached::new(r.clone(), res.clone()), res)
                })
                .collect::<Vec<_>>()
        })
    };
    p.bench_function("store_record_provisioned_then_flush/10000", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("temp dir");
                let store = Store::open(&dir.path().join("cache")).expect("store");
                let start = Instant::now();
                for (c, res) in results() {
                    store.record_provisioned(c, res).expect("recorded");
                }
                store.flush().expect("flushed");
                took += start.elapsed();
            }
            took
        })
    });
    p.bench_function("store_lookups_in_10000/10000", |b| {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("cache")).expect("store");
        for (c, res) in results() {
            store.record_provisioned(c, res).expect("recorded");
        }
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for r in &all {
                    // What the engine reads before judging a reservation.
                    store.get(&r.id).expect("get");
                    store.outcome(&r.id).expect("outcome");
                    store.signature_owner(&r.signature).expect("owner");
                }
            }
            start.elapsed()
        })
    });
    // What a restart does with 10,000 cached before any Docker call: open
    // the store (sled recovery) and read and decode every cached workload.
    let filled = tempfile::tempdir().expect("temp dir");
    let filled_once = OnceLock::new();
    let fill = || {
        filled_once.get_or_init(|| {
            let store = Store::open(&filled.path().join("cache")).expect("store");
            for (c, res) in results() {
                store.record_provisioned(c, res).expect("recorded");
            }
            store.flush().expect("flushed");
        })
    };
    p.throughput(Throughput::Elements(1));
    p.bench_function("store_open_with_10000", |b| {
        fill();
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let store = Store::open(&filled.path().join("cache")).expect("store");
                took += start.elapsed();
                drop(store);
            }
            took
        })
    });
    p.throughput(Throughput::Elements(10_000));
    p.bench_function("store_list_decode_10000", |b| {
        fill();
        let store = Store::open(&filled.path().join("cache")).expect("store");
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let n = store.list().filter(|c| c.is_ok()).count();
                assert_eq!(n, 10_000, "every cached workload decodes");
            }
            start.elapsed()
        })
    });
    p.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
