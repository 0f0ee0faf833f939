//! Unit tests of the engine's judgement with a recording fake provisioner
//! (the real Docker provisioners are proven in provisioners/tests and the
//! end-to-end tests).

use std::sync::Mutex;

use async_trait::async_trait;
use chrono::Timelike;
use provisioners::Provisioner;
use reservation::seal_for;
use serde_json::json;
use store::Outbound;

use super::*;

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<String>>,
    fail_provision: Mutex<Option<ProvisionError>>,
    fail_decommission: Mutex<Option<ProvisionError>>,
    hang: bool,
    /// Provisioning of these ids takes this long.
    slow: Mutex<HashMap<String, Duration>>,
    /// "start <id>" and "end <id>" of every provisioning, "stop <id>" and
    /// "gone <id>" of every decommission, in order.
    log: Mutex<Vec<String>>,
    /// Decommission of these ids takes this long.
    slow_stop: Mutex<HashMap<String, Duration>>,
}

#[async_trait]
impl Provisioner for Recorder {
    async fn provision(
        &self,
        r: &Reservation,
        _w: &Workload,
    ) -> Result<serde_json::Value, ProvisionError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("provision {} {}", r.kind, r.id));
        self.log.lock().unwrap().push(format!("start {}", r.id));
        if self.hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let slow = self.slow.lock().unwrap().get(&r.id).copied();
        if let Some(d) = slow {
            tokio::time::sleep(d).await;
        }
        self.log.lock().unwrap().push(format!("end {}", r.id));
        if let Some(e) = self.fail_provision.lock().unwrap().clone() {
            return Err(e);
        }
        Ok(json!({"id": format!("obj-{}", r.id)}))
    }
    async fn decommission(&self, r: &Reservation, _w: &Workload) -> Result<(), ProvisionError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("decommission {}", r.id));
        self.log.lock().unwrap().push(format!("stop {}", r.id));
        let slow = self.slow_stop.lock().unwrap().get(&r.id).copied();
        if let Some(d) = slow {
            tokio::time::sleep(d).await;
        }
        self.log.lock().unwrap().push(format!("gone {}", r.id));
        match self.fail_decommission.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    node: Arc<Identity>,
    user: Identity,
    store: Store,
    rec: Arc<Recorder>,
    engine: Engine,
}

fn fixture_with(rec: Recorder, kinds: &[WorkloadType]) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let node = Arc::new(Identity::generate());
    let rec = Arc::new(rec);
    let mut reg = Registry::new();
    for k in kinds {
        reg.register(*k, rec.clone());
    }
    let cfg = EngineConfig {
        provision_timeout: Duration::from_millis(300),
        retry_decommission: Duration::from_secs(60),
        ..EngineConfig::default()
    };
    let engine = Engine::new(node.clone(), store.clone(), reg, cfg, Arc::default());
    Fixture {
        _dir: dir,
        node,
        user: Identity::generate(),
        store,
        rec,
        engine,
    }
}

fn fixture() -> Fixture {
    fixture_with(
        Recorder::default(),
        &[
            WorkloadType::Container,
            WorkloadType::Volume,
            WorkloadType::Network,
        ],
    )
}

impl Fixture {
    fn reservation(&self, id: &str, kind: &str, data: serde_json::Value) -> Reservation {
        let mut r: Reservation = serde_json::from_value(json!({
            "id": id, "version": 2, "node_id": self.node.id(), "user_id": self.user.id(), "type": kind,
            "data": data, "created": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "duration": 3_600_000_000_000i64,
        }))
        .unwrap();
        self.user.sign_reservation(&mut r);
        r
    }

    fn volume(&self, id: &str) -> Reservation {
        self.reservation(id, "volume", json!({"size": 1, "type": "SSD"}))
    }

    fn results(&self) -> Vec<WorkloadResult> {
        self.store
            .outbox_peek(1000)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.item {
                Outbound::Result(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// The one result posted, an error for `res`, signed by the node.
    fn only_error(&self, res: &Reservation) -> String {
        let r = self.results();
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].state, reservation::ResultState::Error);
        r[0].verify(self.node.id(), &res.signature).unwrap();
        assert_eq!(r[0].data.get(), "null");
        r[0].error.clone()
    }

    fn calls(&self) -> Vec<String> {
        self.rec.calls.lock().unwrap().clone()
    }

    async fn poll(&mut self, rs: Vec<Reservation>) {
        self.engine
            .handle(Work::Poll {
                reservations: rs,
                cursor: 1,
                synced: true,
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn provisions_once_and_posts_one_signed_result() {
    let mut f = fixture();
    let r = f.volume("1-1");
    let r_sig = r.signature.clone();
    f.poll(vec![r.clone()]).await;
    f.poll(vec![r]).await;
    assert_eq!(f.calls(), ["provision volume 1-1"]);
    let res = f.results();
    assert_eq!(res.len(), 1);
    res[0].verify(f.node.id(), &r_sig).unwrap();
    assert_eq!(res[0].data.get(), r#"{"id":"obj-1-1"}"#);
    assert!(f.store.is_cached("1-1").unwrap());
    assert_eq!(f.store.counters().unwrap()["volume"], 1);
    // Delivery may send it: the engine flushed and raised the watermark.
    assert!(f.engine.shared().durable_below.load(Ordering::SeqCst) > 0);
}

#[tokio::test]
async fn refusals_name_the_check_and_change_nothing() {
    type Make = Box<dyn Fn(&Fixture) -> Reservation>;
    let cases: Vec<(Make, &str)> = vec![
        (
            Box::new(|f| {
                let mut r = f.volume("1-1");
                r.duration += 1; // signed value changed after signing
                r
            }),
            "signature: does not verify",
        ),
        (
            Box::new(|f| {
                let mut r = f.volume("1-1");
                r.node_id = Identity::generate().id().to_string();
                f.user.sign_reservation(&mut r);
                r
            }),
            "is not this node",
        ),
        (
            Box::new(|f| {
                let mut r = f.volume("1-1");
                r.created = Some(
                    (Utc::now() - chrono::Duration::hours(2))
                        .with_nanosecond(0)
                        .unwrap(),
                );
                f.user.sign_reservation(&mut r);
                r
            }),
            "expired",
        ),
        (
            Box::new(|f| {
                let mut r = f.volume("1-1");
                r.created = None;
                f.user.sign_reservation(&mut r);
                r
            }),
            "created: not set",
        ),
        (
            Box::new(|f| {
                let mut r = f.volume("1-1");
                r.duration = 0;
                f.user.sign_reservation(&mut r);
                r
            }),
            "duration: must be > 0",
        ),
        (
            Box::new(|f| {
                let mut r = f.volume("1-1");
                r.version = 0;
                r.nonce.clear();
                f.user.sign_reservation(&mut r);
                r.nonce.clear();
                r
            }),
            "protocol version 1 is not accepted; sign with version 2",
        ),
        (
            Box::new(|f| {
                let mut r = f.volume("1-1");
                r.created = Some(
                    (Utc::now() + chrono::Duration::minutes(10))
                        .with_nanosecond(0)
                        .unwrap(),
                );
                f.user.sign_reservation(&mut r);
                r
            }),
            "in the future",
        ),
        (
            Box::new(|f| {
                let mut r = f.volume("1-1");
                r.duration = 367 * 24 * 3_600_000_000_000;
                f.user.sign_reservation(&mut r);
                r
            }),
            "duration: 367 days is longer than this node's maximum of 366 days",
        ),
        (
            Box::new(|f| f.reservation("1-1", "vm", json!({}))),
            "unknown workload type \"vm\"",
        ),
        (
            Box::new(|f| f.reservation("1-1", "volume", json!({"size": 1, "type": "TAPE"}))),
            "data.type: volume type \"TAPE\" is not one of HDD, SSD",
        ),
        (
            Box::new(|f| {
                f.reservation(
                    "1-1",
                    "container",
                    json!({"flist": "x", "capacity": {"cpu": 1}}),
                )
            }),
            "data.capacity: missing field `memory`",
        ),
        (
            Box::new(|f| {
                f.reservation(
                    "1-1",
                    "zdb",
                    json!({"size": 1, "mode": "user", "password": "00", "disk_type": "SSD"}),
                )
            }),
            "workload type zdb is not supported on this node",
        ),
    ];
    for (make, want) in cases {
        let mut f = fixture();
        let r = make(&f);
        f.poll(vec![r.clone()]).await;
        let err = f.only_error(&r);
        assert!(err.contains(want), "want {want:?} in {err:?}");
        assert!(f.calls().is_empty(), "a refusal must provision nothing");
        assert_eq!(f.store.cached_len(), 0);
        // Judged once: the same reservation again gets no second result.
        f.poll(vec![r]).await;
        assert_eq!(f.results().len(), 1);
    }
}

#[tokio::test]
async fn batch_is_handled_in_dependency_order() {
    let mut f = fixture();
    let ct = f.reservation(
        "1-1",
        "container",
        json!({"flist": "img", "capacity": {"cpu": 1, "memory": 64}, "mounts": [{"volume_id": "3-1", "mountpoint": "/data"}], "network": {"network_id": "net"}}),
    );
    let net = f.reservation(
        "2-1",
        "network",
        json!({"name": "net", "ip_range": "10.9.0.0/16", "net_resources": [{"node_id": f.node.id(), "subnet": "10.9.1.0/24"}]}),
    );
    let vol = f.volume("3-1");
    f.poll(vec![ct, vol, net]).await;
    assert_eq!(
        f.calls(),
        [
            "provision network 2-1",
            "provision volume 3-1",
            "provision container 1-1"
        ]
    );
}

#[tokio::test]
async fn signed_deletion_decommissions_forged_one_changes_nothing() {
    let mut f = fixture();
    let r = f.volume("1-1");
    f.poll(vec![r.clone()]).await;

    // Forged: signed by someone else, and the explorer swapped user_id too.
    let mallory = Identity::generate();
    let mut forged = r.clone();
    forged.to_delete = true;
    forged.user_id = mallory.id().to_string();
    forged.delete_signature = Some(mallory.sign_delete(&r.signature));
    f.poll(vec![forged.clone()]).await;
    let mut unsigned = r.clone();
    unsigned.to_delete = true;
    f.poll(vec![unsigned]).await;
    assert!(f.store.is_cached("1-1").unwrap());
    assert_eq!(f.calls(), ["provision volume 1-1"]);

    // The user's real deletion, but of another reservation (same fields,
    // another nonce), handed over under this id: bound to the other one.
    let mut other = f.volume("1-1");
    other.nonce = reservation::new_nonce();
    f.user.sign_reservation(&mut other);
    let mut moved = r.clone();
    moved.to_delete = true;
    moved.delete_signature = Some(f.user.sign_delete(&other.signature));
    f.poll(vec![moved]).await;
    assert!(f.store.is_cached("1-1").unwrap());
    assert_eq!(f.calls(), ["provision volume 1-1"]);

    let mut del = r.clone();
    del.to_delete = true;
    del.delete_signature = Some(f.user.sign_delete(&r.signature));
    f.poll(vec![del]).await;
    assert_eq!(f.calls(), ["provision volume 1-1", "decommission 1-1"]);
    assert!(!f.store.is_cached("1-1").unwrap());
    let deleted: Vec<_> = f
        .store
        .outbox_peek(100)
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.item, Outbound::Deleted { .. }))
        .collect();
    assert_eq!(deleted.len(), 1);
    // The confirmation is signed by the node for this reservation.
    match &deleted[0].item {
        Outbound::Deleted { id, signature } => {
            let mut check = r.clone();
            check.node_id = f.node.id().to_string();
            check.verify_deleted(signature).unwrap();
            assert_eq!(id, "1-1");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn failed_provisioning_is_rolled_back_and_refused() {
    let rec = Recorder::default();
    *rec.fail_provision.lock().unwrap() = Some(ProvisionError::Refused(
        "image \"nope\" is not present and cannot be pulled".into(),
    ));
    let mut f = fixture_with(rec, &[WorkloadType::Volume]);
    let r = f.volume("1-1");
    f.poll(vec![r.clone()]).await;
    assert_eq!(f.calls(), ["provision volume 1-1", "decommission 1-1"]);
    assert!(f.only_error(&r).contains("image \"nope\""));
}

#[tokio::test]
async fn stuck_provisioning_hits_the_deadline() {
    let rec = Recorder {
        hang: true,
        ..Default::default()
    };
    let mut f = fixture_with(rec, &[WorkloadType::Volume]);
    let r = f.volume("1-1");
    f.poll(vec![r.clone()]).await;
    assert!(f.only_error(&r).contains("did not finish within"));
}

#[tokio::test]
async fn expiry_decommissions_and_in_use_is_rescheduled() {
    let mut f = fixture();
    f.poll(vec![f.volume("1-1")]).await;
    *f.rec.fail_decommission.lock().unwrap() = Some(ProvisionError::InUse(
        "volume 1-1 is mounted by agent-ct-2-1".into(),
    ));
    f.engine
        .handle(Work::Due(vec!["1-1".into()]))
        .await
        .unwrap();
    assert!(f.store.is_cached("1-1").unwrap(), "in use: kept");
    let next = f.store.next_expiry().unwrap().unwrap();
    assert!(
        next > Utc::now() + chrono::Duration::seconds(30),
        "rescheduled by retry_decommission"
    );
    f.engine
        .handle(Work::Due(vec!["1-1".into()]))
        .await
        .unwrap();
    assert!(!f.store.is_cached("1-1").unwrap());
}

#[tokio::test]
async fn secrets_never_reach_the_result_or_cache() {
    let mut f = fixture();
    let sealed = seal_for(f.node.id(), b"hunter2-plaintext").unwrap();
    let r = f.reservation(
        "1-1",
        "container",
        json!({"flist": "img", "capacity": {"cpu": 1, "memory": 64}, "secret_env": {"PW": sealed}}),
    );
    f.poll(vec![r]).await;
    f.store.flush().unwrap();
    let dump = format!(
        "{:?}{:?}",
        f.store.list().collect::<Vec<_>>(),
        f.store.outbox_peek(100).unwrap()
    );
    assert!(!dump.contains("hunter2-plaintext"));
}

fn tiny_ledger() -> Arc<Mutex<crate::capacity::Ledger>> {
    use crate::capacity::{Ledger, Resources, Total};
    Arc::new(Mutex::new(Ledger::new(Total {
        physical: Resources {
            cpu: 2,
            memory_mib: 1024,
            ssd_mib: 4096,
            hdd_mib: 0,
        },
        reserved: Resources::ZERO,
        root_disk: reservation::workloads::DiskType::Ssd,
    })))
}

#[tokio::test]
async fn admission_charges_refuses_and_releases() {
    let mut f = fixture();
    let ledger = tiny_ledger();
    f.engine = Engine::new(
        f.node.clone(),
        f.store.clone(),
        {
            let mut reg = Registry::new();
            reg.register(WorkloadType::Container, f.rec.clone());
            reg
        },
        EngineConfig::default(),
        Arc::default(),
    )
    .with_ledger(ledger.clone());
    let ct = |f: &Fixture, id: &str, mem: u64| {
        f.reservation(
            id,
            "container",
            json!({"flist": "img", "capacity": {"cpu": 1, "memory": mem}}),
        )
    };
    f.poll(vec![ct(&f, "1-1", 800)]).await;
    assert_eq!(ledger.lock().unwrap().used().memory_mib, 800);
    f.poll(vec![ct(&f, "2-1", 400)]).await;
    let errs: Vec<_> = f.results().into_iter().filter(|r| r.id == "2-1").collect();
    assert_eq!(
        errs[0].error,
        "not enough memory: asked 400 MiB, 224 MiB free"
    );
    assert_eq!(
        f.calls(),
        ["provision container 1-1"],
        "nothing created for 2-1"
    );
    f.engine
        .handle(Work::Due(vec!["1-1".into()]))
        .await
        .unwrap();
    assert_eq!(
        ledger.lock().unwrap().used().memory_mib,
        0,
        "released at decommission"
    );
}

#[tokio::test]
async fn crash_give_up_decommissions_with_a_signed_error() {
    let mut f = fixture();
    let r = f.volume("1-1");
    f.poll(vec![r.clone()]).await;
    f.engine
        .give_up(GiveUp {
            id: "1-1".into(),
            kind: "volume".into(),
            container: "c".into(),
            crashes: 5,
            exit_code: 3,
            message: "workload crashed 5 times: exit code 3; last log lines: boom".into(),
        })
        .await
        .unwrap();
    // The decommission runs as a job; wait for it to be recorded.
    f.engine.drain().await.unwrap();
    assert!(!f.store.is_cached("1-1").unwrap());
    let errs: Vec<_> = f
        .results()
        .into_iter()
        .filter(|r| r.state == reservation::ResultState::Error)
        .collect();
    assert_eq!(errs.len(), 1);
    errs[0].verify(f.node.id(), &r.signature).unwrap();
    assert!(errs[0].error.starts_with("workload crashed 5 times"));
    assert_eq!(
        f.store.outcome("1-1").unwrap().unwrap().state,
        OutcomeState::Deleted
    );
}

/// The engine over the real Docker provisioners, with bollard swapped for
/// the recording fake: what Docker would be asked, in order.
#[tokio::test]
async fn engine_drives_docker_provisioners_through_the_narrow_seam() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("cache")).unwrap();
    let node = Arc::new(Identity::generate());
    let fake = Arc::new(provisioners::FakeDocker::new());
    fake.add_image("img:1");
    let reg = provisioners::docker_registry(fake.clone(), node.clone(), dir.path());
    let mut engine = Engine::new(
        node.clone(),
        store.clone(),
        reg,
        EngineConfig::default(),
        Arc::default(),
    );
    let user = Identity::generate();
    let mk = |id: &str, kind: &str, data: serde_json::Value| {
        let mut r: Reservation = serde_json::from_value(json!({
            "id": id, "version": 2, "node_id": node.id(), "user_id": user.id(), "type": kind, "data": data,
            "created": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "duration": 3_600_000_000_000i64,
        }))
        .unwrap();
        user.sign_reservation(&mut r);
        r
    };
    let ct = mk(
        "1-1",
        "container",
        json!({"flist": "img:1", "env": {"A": "b"}, "capacity": {"cpu": 2, "memory": 64}}),
    );
    engine
        .handle(Work::Poll {
            reservations: vec![ct.clone()],
            cursor: 2,
            synced: true,
        })
        .await
        .unwrap();
    let name = provisioners::names::Names::unscoped().container_name("1-1");
    assert_eq!(fake.container_names(), vec![name.clone()]);
    let spec = fake.container_spec(&name).unwrap();
    assert_eq!(spec.nano_cpus, 2_000_000_000);
    assert_eq!(spec.memory, 64 << 20);
    assert!(spec.restart_unless_stopped);
    assert_eq!(fake.count("create_container"), 1);
    // Seen again: no second create.
    engine
        .handle(Work::Poll {
            reservations: vec![ct],
            cursor: 2,
            synced: true,
        })
        .await
        .unwrap();
    assert_eq!(fake.count("create_container"), 1);
    // Expiry: stopped and removed.
    engine.handle(Work::Due(vec!["1-1".into()])).await.unwrap();
    assert!(fake.container_names().is_empty());
    assert!(fake.count("remove_container") >= 1);
}

#[tokio::test]
async fn a_signed_reservation_replayed_under_a_new_id_is_refused() {
    let mut f = fixture();
    let r = f.volume("1-1");
    f.poll(vec![r.clone()]).await;
    let mut replay = r.clone();
    replay.id = "2-1".into();
    f.poll(vec![replay]).await;
    assert_eq!(f.calls(), ["provision volume 1-1"]);
    let err = f.results().into_iter().find(|x| x.id == "2-1").unwrap();
    assert!(err.error.contains("already judged as 1-1"), "{}", err.error);
}

#[tokio::test]
async fn a_refused_reservation_replayed_under_a_new_id_stays_refused() {
    let mut f = fixture();
    f.engine = Engine::new(
        f.node.clone(),
        f.store.clone(),
        {
            let mut reg = Registry::new();
            reg.register(WorkloadType::Container, f.rec.clone());
            reg
        },
        EngineConfig::default(),
        Arc::default(),
    )
    .with_ledger(tiny_ledger());
    // Too big for the node: refused, its user is told it failed.
    let big = f.reservation(
        "1-1",
        "container",
        json!({"flist": "img", "capacity": {"cpu": 1, "memory": 4096}}),
    );
    f.poll(vec![big.clone()]).await;
    // Capacity frees up (nothing else runs), and the explorer hands the
    // same signed reservation over under a new id.
    let mut replay = big.clone();
    replay.id = "2-1".into();
    f.poll(vec![replay]).await;
    assert!(f.calls().is_empty(), "{:?}", f.calls());
    let err = f.results().into_iter().find(|x| x.id == "2-1").unwrap();
    assert!(err.error.contains("already judged as 1-1"), "{}", err.error);
}

#[tokio::test]
async fn identical_reservations_with_fresh_nonces_are_all_provisioned() {
    let mut f = fixture();
    let rs: Vec<_> = ["1-1", "2-1", "3-1"]
        .iter()
        .map(|id| f.volume(id))
        .collect();
    assert!(rs[0].nonce != rs[1].nonce && rs[1].nonce != rs[2].nonce);
    f.poll(rs).await;
    assert_eq!(f.calls().len(), 3, "{:?}", f.calls());
    assert_eq!(f.store.cached_len(), 3);
}

#[tokio::test]
async fn an_id_outside_the_grammar_gets_nothing_signed() {
    let mut f = fixture();
    for id in ["157-1ok", "", "1-1-1", "a-1", "12-1\n"] {
        let mut r = f.volume("1-1");
        r.id = id.into();
        f.poll(vec![r]).await;
    }
    assert!(f.calls().is_empty());
    assert!(
        f.store.outbox_peek(10).unwrap().is_empty(),
        "nothing signed"
    );
}

#[tokio::test]
async fn orphans_wait_for_the_last_resync_page() {
    let mut f = fixture();
    f.engine
        .handle(Work::Poll {
            reservations: vec![f.volume("1-1")],
            cursor: 2,
            synced: false,
        })
        .await
        .unwrap();
    assert!(!f.engine.shared().first_poll_done.load(Ordering::SeqCst));
    f.engine
        .handle(Work::Poll {
            reservations: vec![f.volume("2-1")],
            cursor: 3,
            synced: true,
        })
        .await
        .unwrap();
    assert!(f.engine.shared().first_poll_done.load(Ordering::SeqCst));
}

/// A hostile explorer hands over a reservation its user deleted before the
/// node ever saw it (the node confirms the deletion), then the same signed
/// reservation again under a new id without `to_delete`: a replay, refused.
#[tokio::test]
async fn a_reservation_deleted_before_it_ran_cannot_come_back_under_a_new_id() {
    let mut f = fixture();
    let r = f.volume("1-1");
    let mut del = r.clone();
    del.to_delete = true;
    del.delete_signature = Some(f.user.sign_delete(&r.signature));
    f.poll(vec![del]).await;
    assert!(f.calls().is_empty());
    let mut again = r.clone();
    again.id = "2-1".into();
    f.poll(vec![again]).await;
    assert!(f.calls().is_empty(), "{:?}", f.calls());
    let err = f.results().into_iter().find(|x| x.id == "2-1").unwrap();
    assert!(err.error.contains("already judged as 1-1"), "{}", err.error);
}

/// Hands over its answers, then has nothing more (and does not end).
struct Answers(std::collections::VecDeque<Work>);

#[async_trait]
impl ReservationSource for Answers {
    async fn next(&mut self) -> Option<Work> {
        match self.0.pop_front() {
            Some(w) => Some(w),
            None => std::future::pending().await,
        }
    }
}

/// Reconciliation's commands: no work before `Reconciled`, repairs
/// answered with their count, and the engine holds still for the sweep
/// after the first resync.
#[tokio::test]
async fn commands_repair_before_any_work_and_hold_for_the_sweep() {
    use tokio::sync::oneshot;
    let mut f = fixture();
    f.poll(vec![f.volume("1-1")]).await;
    let (commands, inbox) = mpsc::channel(8);
    let mut reg = Registry::new();
    reg.register(WorkloadType::Volume, f.rec.clone());
    let engine = Engine::new(
        f.node.clone(),
        f.store.clone(),
        reg,
        EngineConfig::default(),
        Arc::default(),
    )
    .with_commands(inbox);
    let shared = engine.shared();
    let source = Answers(
        vec![Work::Poll {
            reservations: vec![f.volume("2-1")],
            cursor: 2,
            synced: true,
        }]
        .into(),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let run = engine.run(source, async {
        let _ = stopped.await;
    });
    let drive = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(f.calls(), ["provision volume 1-1"], "no work yet");
        commands
            .send(EngineCommand::Repair("1-1".into()))
            .await
            .unwrap();
        let (synced, synced_rx) = oneshot::channel();
        let (done_tx, done) = oneshot::channel();
        let (repaired, answer) = oneshot::channel();
        commands
            .send(EngineCommand::Reconciled {
                repaired,
                sweep: Some(SweepGate { synced, done }),
            })
            .await
            .unwrap();
        assert_eq!(answer.await.unwrap().unwrap(), 1);
        // The resync is judged; its provisioning runs (the sweep spares
        // it) and waits, as the engine does, for the sweep.
        let running = synced_rx.await.unwrap();
        assert_eq!(running, HashSet::from(["2-1".to_string()]));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!f.store.is_cached("2-1").unwrap(), "ran during the sweep");
        assert!(!shared.first_poll_done.load(Ordering::SeqCst));
        done_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f.store.is_cached("2-1").unwrap() {
            assert!(Instant::now() < deadline, "2-1 never recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = stop.send(());
    };
    let (result, ()) = tokio::join!(run, drive);
    result.unwrap();
    assert!(shared.first_poll_done.load(Ordering::SeqCst));
    assert_eq!(
        f.calls(),
        [
            "provision volume 1-1",
            "provision volume 1-1",
            "provision volume 2-1"
        ]
    );
    // The repair gave the same result data: nothing posted again.
    assert_eq!(f.results().len(), 2);
}

#[tokio::test]
async fn a_slow_provisioning_delays_nothing_else() {
    let mut f = fixture();
    f.rec
        .slow
        .lock()
        .unwrap()
        .insert("1-1".into(), Duration::from_millis(200));
    let (a, b) = (f.volume("1-1"), f.volume("2-1"));
    f.poll(vec![a, b]).await;
    let log = f.rec.log.lock().unwrap().clone();
    assert_eq!(log, ["start 1-1", "start 2-1", "end 2-1", "end 1-1"]);
    assert_eq!(f.results().len(), 2);
    assert!(f.store.is_cached("1-1").unwrap() && f.store.is_cached("2-1").unwrap());
}

#[tokio::test]
async fn a_container_waits_for_its_network_in_the_same_answer() {
    let mut f = fixture();
    f.rec
        .slow
        .lock()
        .unwrap()
        .insert("2-1".into(), Duration::from_millis(150));
    let ct = f.reservation(
        "1-1",
        "container",
        json!({"flist": "img", "capacity": {"cpu": 1, "memory": 64}, "network": {"network_id": "net"}}),
    );
    let other = f.reservation(
        "4-1",
        "container",
        json!({"flist": "img", "capacity": {"cpu": 1, "memory": 64}}),
    );
    let net = f.reservation(
        "2-1",
        "network",
        json!({"name": "net", "ip_range": "10.9.0.0/16", "net_resources": [{"node_id": f.node.id(), "subnet": "10.9.1.0/24"}]}),
    );
    f.poll(vec![ct, other, net]).await;
    let log = f.rec.log.lock().unwrap().clone();
    let at = |e: &str| log.iter().position(|l| l == e).unwrap();
    // The container on the network starts once the network is made; the
    // other one does not wait for it.
    assert!(at("start 1-1") > at("end 2-1"), "{log:?}");
    assert!(at("end 4-1") < at("end 2-1"), "{log:?}");
    assert_eq!(f.results().len(), 3);
}

#[tokio::test]
async fn a_volume_is_deleted_after_the_container_that_mounts_it() {
    let mut f = fixture();
    let vol = f.volume("3-1");
    let ct = f.reservation(
        "1-1",
        "container",
        json!({"flist": "img", "capacity": {"cpu": 1, "memory": 64}, "mounts": [{"volume_id": "3-1", "mountpoint": "/data"}]}),
    );
    f.poll(vec![vol, ct]).await;
    f.engine
        .handle(Work::Due(vec!["3-1".into(), "1-1".into()]))
        .await
        .unwrap();
    let calls = f.calls();
    let at = |e: &str| calls.iter().position(|l| l == e).unwrap();
    assert!(at("decommission 1-1") < at("decommission 3-1"), "{calls:?}");
}

#[tokio::test]
async fn an_expiry_batch_in_time_order_still_removes_the_user_first() {
    // The expiry index hands ids over in time order: here the container
    // before the volume it mounts. The volume must still go after it, not
    // fail "in use" and outlive its expiry until a retry.
    let mut f = fixture();
    let vol = f.volume("3-1");
    let ct = f.reservation(
        "1-1",
        "container",
        json!({"flist": "img", "capacity": {"cpu": 1, "memory": 64}, "mounts": [{"volume_id": "3-1", "mountpoint": "/data"}]}),
    );
    f.poll(vec![vol, ct]).await;
    f.rec
        .slow_stop
        .lock()
        .unwrap()
        .insert("1-1".into(), Duration::from_millis(100));
    f.engine
        .handle(Work::Due(vec!["1-1".into(), "3-1".into()]))
        .await
        .unwrap();
    let log = f.rec.log.lock().unwrap().clone();
    let at = |e: &str| log.iter().position(|l| l == e).unwrap();
    assert!(at("stop 3-1") > at("gone 1-1"), "{log:?}");
}

#[tokio::test]
async fn a_hung_decommission_gives_up_at_the_deadline_and_is_retried() {
    // A Docker call that never answers must not hold the engine for good:
    // the decommission ends at the deadline (300 ms here) and stays cached
    // for a retry.
    let mut f = fixture();
    let vol = f.volume("3-1");
    f.poll(vec![vol]).await;
    f.rec
        .slow_stop
        .lock()
        .unwrap()
        .insert("3-1".into(), Duration::from_secs(3600));
    tokio::time::timeout(
        Duration::from_secs(10),
        f.engine.handle(Work::Due(vec!["3-1".into()])),
    )
    .await
    .expect("the engine is not held by a hung decommission")
    .unwrap();
    assert!(f.store.is_cached("3-1").unwrap());
}

#[tokio::test]
async fn twelve_containers_at_once_survive_a_kill_midway() {
    // kill -9 while 12 provisionings of one answer run: the engine's future
    // is dropped with some done and some not, nothing flushed; a new
    // engine over the same store and Docker makes each container once and
    // posts one result each.
    let dir = tempfile::tempdir().unwrap();
    let node = Arc::new(Identity::generate());
    let fake = Arc::new(provisioners::FakeDocker::new());
    fake.add_image("img:1");
    fake.allow_pull("slow:1");
    fake.delay_pull("slow:1", Duration::from_millis(300));
    let user = Identity::generate();
    let rs: Vec<Reservation> = (1..=12)
        .map(|i| {
            let image = if i % 3 == 0 { "slow:1" } else { "img:1" };
            let mut r: Reservation = serde_json::from_value(json!({
                "id": format!("{i}-1"), "version": 2, "node_id": node.id(), "user_id": user.id(), "type": "container",
                "data": {"flist": image, "capacity": {"cpu": 1, "memory": 64}},
                "created": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "duration": 3_600_000_000_000i64,
            }))
            .unwrap();
            user.sign_reservation(&mut r);
            r
        })
        .collect();
    let work = || Work::Poll {
        reservations: rs.clone(),
        cursor: 12,
        synced: false,
    };
    {
        let store = Store::open(&dir.path().join("cache")).unwrap();
        let reg = provisioners::docker_registry(fake.clone(), node.clone(), dir.path());
        let mut engine = Engine::new(
            node.clone(),
            store,
            reg,
            EngineConfig::default(),
            Arc::default(),
        );
        let killed = tokio::time::timeout(Duration::from_millis(100), engine.handle(work())).await;
        assert!(killed.is_err(), "the slow pulls were still running");
    }
    let made = fake.count("create_container");
    assert!((8..12).contains(&made), "{made} made before the kill");
    let store = Store::open(&dir.path().join("cache2")).unwrap();
    let reg = provisioners::docker_registry(fake.clone(), node.clone(), dir.path());
    let mut engine = Engine::new(
        node.clone(),
        store.clone(),
        reg,
        EngineConfig::default(),
        Arc::default(),
    );
    engine.handle(work()).await.unwrap();
    assert_eq!(fake.count("create_container"), 12);
    assert_eq!(fake.container_names().len(), 12);
    let results = store.outbox_peek(100).unwrap();
    assert_eq!(results.len(), 12);
}

#[tokio::test]
async fn an_expiring_container_is_killed_by_its_expiry_a_deletion_gets_the_full_grace() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("cache")).unwrap();
    let node = Arc::new(Identity::generate());
    let fake = Arc::new(provisioners::FakeDocker::new());
    fake.add_image("img:1");
    let reg = provisioners::docker_registry(fake.clone(), node.clone(), dir.path());
    let mut engine = Engine::new(
        node.clone(),
        store,
        reg,
        EngineConfig::default(),
        Arc::default(),
    );
    let user = Identity::generate();
    let mk = |id: &str, seconds: i64| {
        let mut r: Reservation = serde_json::from_value(json!({
            "id": id, "version": 2, "node_id": node.id(), "user_id": user.id(), "type": "container",
            "data": {"flist": "img:1", "capacity": {"cpu": 1, "memory": 64}},
            "created": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "duration": seconds * 1_000_000_000,
        }))
        .unwrap();
        user.sign_reservation(&mut r);
        r
    };
    let (soon, later) = (mk("1-1", 4), mk("2-1", 3600));
    let _ = &later;
    engine
        .handle(Work::Poll {
            reservations: vec![soon.clone(), later.clone()],
            cursor: 3,
            synced: false,
        })
        .await
        .unwrap();
    // Handed over `stop_grace` before its expiry: SIGKILL at the expiry.
    engine.handle(Work::Due(vec!["1-1".into()])).await.unwrap();
    let names = provisioners::names::Names::unscoped();
    let g = fake.stop_grace(&names.container_name("1-1")).unwrap();
    assert!(
        g <= Duration::from_secs(4) && g >= Duration::from_secs(1),
        "{g:?}"
    );
    // Stopped long before its expiry (a user's early deletion, a give-up):
    // the full grace.
    engine.handle(Work::Due(vec!["2-1".into()])).await.unwrap();
    let g = fake.stop_grace(&names.container_name("2-1"));
    assert_eq!(g, Some(provisioners::container::DEFAULT_STOP_GRACE));
}

/// Run `engine` over `answers` until `until` holds (checked every 10 ms,
/// at most 10 s), calling `during` once meanwhile; then stop it.
async fn run_until(
    engine: Engine,
    answers: Vec<Work>,
    mut until: impl FnMut() -> bool,
    during: impl Future<Output = ()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = engine.run(Answers(answers.into()), async {
        let _ = stopped.await;
    });
    let drive = async {
        during.await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !until() {
            assert!(Instant::now() < deadline, "not done within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = stop.send(());
    };
    let (result, ()) = tokio::join!(run, drive);
    result.unwrap();
}

fn answer(reservations: Vec<Reservation>, cursor: u64) -> Work {
    Work::Poll {
        reservations,
        cursor,
        synced: false,
    }
}

/// A fixture whose provisionings may take long (no 300 ms deadline).
fn patient_fixture() -> Fixture {
    let mut f = fixture();
    let mut reg = Registry::new();
    for k in [
        WorkloadType::Container,
        WorkloadType::Volume,
        WorkloadType::Network,
    ] {
        reg.register(k, f.rec.clone());
    }
    f.engine = Engine::new(
        f.node.clone(),
        f.store.clone(),
        reg,
        EngineConfig::default(),
        Arc::default(),
    );
    f
}

#[tokio::test]
async fn a_slow_job_holds_up_no_later_answer_and_keeps_its_cursor_back() {
    // Answer 1 brings a workload whose provisioning is slow (an image pull
    // that hangs); answer 2 brings another. The second is provisioned and
    // recorded while the first still runs; the cursor stays before answer
    // 1 until it is recorded too (a restart must get it again).
    let f = patient_fixture();
    f.rec
        .slow
        .lock()
        .unwrap()
        .insert("1-1".into(), Duration::from_millis(1500));
    let answers = vec![
        answer(vec![f.volume("1-1")], 2),
        answer(vec![f.volume("2-1")], 3),
    ];
    let store = f.store.clone();
    let mut seen_second_alone = false;
    run_until(
        f.engine,
        answers,
        || {
            let (one, two) = (
                store.is_cached("1-1").unwrap(),
                store.is_cached("2-1").unwrap(),
            );
            if two && !one {
                assert_eq!(store.cursor().unwrap(), 0, "cursor moved past running work");
                seen_second_alone = true;
            }
            one && two
        },
        async {},
    )
    .await;
    assert!(seen_second_alone, "answer 2 waited for answer 1's slow job");
    assert_eq!(f.store.cursor().unwrap(), 3);
    assert_eq!(f.rec.log.lock().unwrap()[..2], ["start 1-1", "start 2-1"]);
}

#[tokio::test]
async fn a_deletion_of_a_running_job_is_judged_once_it_is_recorded() {
    // The user deletes a workload while it is still being provisioned: the
    // deletion waits for it (no decommission of something half made, no
    // "not running here" confirmation), and other work goes on meanwhile.
    let f = patient_fixture();
    f.rec
        .slow
        .lock()
        .unwrap()
        .insert("1-1".into(), Duration::from_millis(800));
    let r = f.volume("1-1");
    let mut deletion = r.clone();
    deletion.to_delete = true;
    deletion.delete_signature = Some(f.user.sign_delete(&r.signature));
    // A replay of the same signed reservation under a new id, too.
    let mut replay = r.clone();
    replay.id = "9-1".into();
    let answers = vec![
        answer(vec![r.clone()], 2),
        answer(vec![deletion, replay, f.volume("2-1")], 5),
    ];
    let store = f.store.clone();
    run_until(
        f.engine,
        answers,
        || {
            store.outcome("1-1").unwrap().map(|o| o.state) == Some(OutcomeState::Deleted)
                && store.outcome("9-1").unwrap().is_some()
        },
        async {},
    )
    .await;
    let log = f.rec.log.lock().unwrap().clone();
    let at = |e: &str| log.iter().position(|l| l == e).unwrap();
    assert!(at("end 2-1") < at("end 1-1"), "{log:?}");
    assert!(at("stop 1-1") > at("end 1-1"), "{log:?}");
    assert_eq!(
        *f.rec.calls.lock().unwrap(),
        [
            "provision volume 1-1",
            "provision volume 2-1",
            "decommission 1-1"
        ]
    );
    assert_eq!(
        store.outcome("9-1").unwrap().unwrap().state,
        OutcomeState::Refused
    );
    assert_eq!(store.cursor().unwrap(), 5);
}

#[tokio::test]
async fn a_container_waits_for_its_network_from_an_earlier_answer() {
    let f = patient_fixture();
    f.rec
        .slow
        .lock()
        .unwrap()
        .insert("2-1".into(), Duration::from_millis(400));
    let net = f.reservation(
        "2-1",
        "network",
        json!({"name": "net", "ip_range": "10.9.0.0/16", "net_resources": [{"node_id": f.node.id(), "subnet": "10.9.1.0/24"}]}),
    );
    let ct = f.reservation(
        "3-1",
        "container",
        json!({"flist": "img", "capacity": {"cpu": 1, "memory": 64}, "network": {"network_id": "net"}}),
    );
    let store = f.store.clone();
    run_until(
        f.engine,
        vec![answer(vec![net], 2), answer(vec![ct], 3)],
        || store.is_cached("3-1").unwrap(),
        async {},
    )
    .await;
    let log = f.rec.log.lock().unwrap().clone();
    let at = |e: &str| log.iter().position(|l| l == e).unwrap();
    assert!(at("start 3-1") > at("end 2-1"), "{log:?}");
}

/// Hands over what the test sends, as it sends it.
struct Channel(tokio::sync::mpsc::UnboundedReceiver<Work>);

#[async_trait]
impl ReservationSource for Channel {
    async fn next(&mut self) -> Option<Work> {
        match self.0.recv().await {
            Some(w) => Some(w),
            None => std::future::pending().await,
        }
    }
}

#[tokio::test]
async fn a_flood_of_forged_deletions_behind_a_slow_job_is_bounded_and_harmless() {
    // While 1-1's provisioning runs, a hostile explorer sends 1,100
    // deletions of it with forged signatures (each parks behind the job)
    // and the user's real deletion last, several times. What waits is
    // bounded (the rest is dropped), the forged ones change nothing once
    // judged, and the real deletion, handed over again after the job (as
    // the explorer does until the node confirms it), deletes it once.
    let f = patient_fixture();
    f.rec
        .slow
        .lock()
        .unwrap()
        .insert("1-1".into(), Duration::from_millis(2000));
    let r = f.volume("1-1");
    let mut flood = Vec::new();
    for _ in 0..inflight::MAX_PARKED + 76 {
        let mallory = Identity::generate();
        let mut forged = r.clone();
        forged.to_delete = true;
        forged.delete_signature = Some(mallory.sign_delete(&r.signature));
        flood.push(forged);
    }
    let mut real = r.clone();
    real.to_delete = true;
    real.delete_signature = Some(f.user.sign_delete(&r.signature));
    flood.push(real.clone());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(answer(vec![r.clone()], 2)).unwrap();
    tx.send(answer(flood, 3)).unwrap();
    tx.send(answer(vec![real.clone()], 4)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = f.engine.run(Channel(rx), async {
        let _ = stopped.await;
    });
    let store = f.store.clone();
    let drive = async {
        let deadline = Instant::now() + Duration::from_secs(20);
        // The job and everything parked behind it are recorded.
        while store.cursor().unwrap() < 4 {
            assert!(Instant::now() < deadline, "answers 1-3 not recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            store.is_cached("1-1").unwrap(),
            "deleted before the deletion came again: a forged one won, or what waits is unbounded"
        );
        // The explorer hands the pending deletion over again.
        tx.send(answer(vec![real], 5)).unwrap();
        while store.outcome("1-1").unwrap().map(|o| o.state) != Some(OutcomeState::Deleted) {
            assert!(Instant::now() < deadline, "the real deletion was lost");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = stop.send(());
    };
    let (result, ()) = tokio::join!(run, drive);
    result.unwrap();
    assert_eq!(
        *f.rec.calls.lock().unwrap(),
        ["provision volume 1-1", "decommission 1-1"]
    );
    let deleted = f
        .store
        .outbox_peek(10_000)
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.item, Outbound::Deleted { .. }))
        .count();
    assert_eq!(deleted, 1);
    assert_eq!(f.store.cursor().unwrap(), 5);
}

/// A large answer (its signatures verified ahead, its results signed
/// ahead) with forgeries in the middle: each forgery is refused with a
/// signed error naming the signature and changes nothing; the rest is
/// provisioned in the answer's order, each result signed for its own
/// reservation.
#[tokio::test]
async fn forgeries_in_a_large_answer_are_refused_and_the_order_kept() {
    let mut f = fixture();
    let mut rs: Vec<Reservation> = (1..=60).map(|i| f.volume(&format!("{i}-1"))).collect();
    // Changed after signing.
    rs[20].duration += 1;
    // Another reservation's signature, and a copy of it with other data
    // (same signature, one of them forged).
    rs[30].signature = rs[31].signature.clone();
    let mut twin = rs[45].clone();
    twin.id = "61-1".into();
    twin.data =
        serde_json::value::RawValue::from_string(r#"{"size":2,"type":"SSD"}"#.into()).unwrap();
    rs.insert(46, twin);
    let forged = ["21-1", "31-1", "61-1"];
    let by_id: HashMap<String, Reservation> =
        rs.iter().map(|r| (r.id.clone(), r.clone())).collect();
    let order: Vec<String> = rs.iter().map(|r| r.id.clone()).collect();
    f.poll(rs).await;

    let provisioned: Vec<String> = order
        .iter()
        .filter(|id| !forged.contains(&id.as_str()))
        .map(|id| format!("provision volume {id}"))
        .collect();
    assert_eq!(f.calls(), provisioned, "the rest, in the answer's order");
    let results = f.results();
    assert_eq!(results.len(), order.len(), "one result each");
    for res in &results {
        let r = &by_id[&res.id];
        res.verify(f.node.id(), &r.signature)
            .unwrap_or_else(|e| panic!("{}: {e}", res.id));
        if forged.contains(&res.id.as_str()) {
            assert_eq!(res.state, reservation::ResultState::Error, "{}", res.id);
            assert!(
                res.error.contains("signature: does not verify"),
                "{}: {}",
                res.id,
                res.error
            );
            assert!(!f.store.is_cached(&res.id).unwrap(), "{}", res.id);
        } else {
            assert_eq!(res.state, reservation::ResultState::Ok, "{}", res.id);
            assert_eq!(res.data.get(), format!(r#"{{"id":"obj-{}"}}"#, res.id));
        }
    }
    // Refusals are recorded as they are judged, in the answer's order;
    // the provisionings' results after, in the answer's order too. The
    // twin shares a queued reservation's signature: it is parked, and
    // judged (and refused) once that one is recorded.
    let ids: Vec<&str> = results.iter().map(|r| r.id.as_str()).collect();
    let mut want: Vec<&str> = vec!["21-1", "31-1"];
    for id in order.iter().map(String::as_str) {
        if !forged.contains(&id) {
            want.push(id);
        }
        if id == "46-1" {
            want.push("61-1");
        }
    }
    assert_eq!(ids, want);
    assert_eq!(f.store.cached_len(), order.len() - forged.len());
    // The forged twin's signature is the genuine one's: the genuine one
    // was judged first and owns it.
    assert_eq!(
        f.store.signature_owner(&by_id["46-1"].signature).unwrap(),
        Some("46-1".into())
    );
}

/// A deletion in a large answer, after the provisioning of the same id,
/// is judged once that provisioning is recorded, and decommissions it;
/// its forged twin (same id, another signer) changes nothing.
#[tokio::test]
async fn a_deletion_in_a_large_answer_waits_for_its_provisioning() {
    let mut f = fixture();
    let mut rs: Vec<Reservation> = (1..=20).map(|i| f.volume(&format!("{i}-1"))).collect();
    let mallory = Identity::generate();
    let mut forged = rs[5].clone();
    forged.to_delete = true;
    forged.delete_signature = Some(mallory.sign_delete(&rs[5].signature));
    let del = {
        let mut d = rs[5].clone();
        d.to_delete = true;
        d.delete_signature = Some(f.user.sign_delete(&d.signature));
        d
    };
    rs.push(forged);
    rs.push(del);
    f.poll(rs).await;
    let calls = f.calls();
    assert_eq!(calls.len(), 21, "{calls:?}");
    assert_eq!(calls.last().unwrap(), "decommission 6-1");
    assert!(!f.store.is_cached("6-1").unwrap());
    assert_eq!(f.store.cached_len(), 19);
}
