//! The zdb provisioner on the real Docker engine, against the local 0-db
//! stand-in image `agent-test/zdb:latest` (tests/images/build-standins.sh;
//! production uses the real threefoldtech/0-db image). A user's view:
//! namespaces reachable at the result's ip:port, passwords and public
//! read-only access as set, maxsize enforced, containers shared per (disk,
//! mode) and removed with their volume when the last namespace goes.

use std::sync::{Arc, Once};
use std::time::Duration;

use chrono::Utc;
use provisioners::docker::{ContainerFilter, Docker};
use provisioners::zdb::{namespace_name, ZdbProvisioner};
use provisioners::{BollardDocker, ProvisionError, Provisioner};
use redis::aio::MultiplexedConnection;
use redis::{IntoConnectionInfo, RedisConnectionInfo, RedisError};
use reservation::{seal_for, Identity, Reservation, Workload, WorkloadType};
use serde_json::{json, Value};

const IMAGE: &str = "agent-test/zdb:latest";

fn build_images() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/images/build-standins.sh"
        );
        let st = std::process::Command::new("sh")
            .arg(script)
            .status()
            .unwrap();
        assert!(st.success(), "{script} failed");
    });
}

fn counter() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Removes every container and volume named with `prefix`, also when the
/// test panics.
struct Cleanup {
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let sh = |cmd: String| {
            let _ = std::process::Command::new("sh").arg("-c").arg(cmd).output();
        };
        let p = &self.prefix;
        sh(format!(
            "docker ps -aq --filter name=^/{p} | xargs -r docker rm -f"
        ));
        sh(format!(
            "docker volume ls -q --filter name=^{p} | xargs -r docker volume rm -f"
        ));
    }
}

struct Setup {
    docker: Arc<BollardDocker>,
    node: Arc<Identity>,
    user: Identity,
    zdb: ZdbProvisioner,
    prefix: String,
    _cleanup: Cleanup,
}

async fn setup() -> Setup {
    build_images();
    let docker = Arc::new(BollardDocker::connect().await.unwrap());
    let node = Arc::new(Identity::generate());
    let prefix = format!("agent-zdbtest-{}-{}-", std::process::id(), counter());
    let zdb =
        ZdbProvisioner::new(docker.clone(), node.clone(), IMAGE).with_name_prefix(prefix.clone());
    Setup {
        docker,
        node,
        user: Identity::generate(),
        zdb,
        prefix: prefix.clone(),
        _cleanup: Cleanup { prefix },
    }
}

impl Setup {
    /// A signed zdb reservation with `password` sealed for `sealed_for`.
    fn reservation(
        &self,
        data: Value,
        sealed_for: &str,
        password: &str,
    ) -> (Reservation, Workload) {
        let mut data = data;
        data["password"] = Value::String(seal_for(sealed_for, password.as_bytes()).unwrap());
        let mut r = Reservation {
            id: format!("{}{:04}-1", std::process::id(), counter()),
            node_id: self.node.id().to_string(),
            user_id: self.user.id().to_string(),
            kind: "zdb".into(),
            data: serde_json::value::RawValue::from_string(data.to_string()).unwrap(),
            created: Some(Utc::now()),
            duration: 3_600_000_000_000,
            signature: String::new(),
            to_delete: false,
            delete_signature: None,
            ..Default::default()
        };
        self.user.sign_reservation(&mut r);
        let w = Workload::parse(WorkloadType::Zdb, &r.data).unwrap();
        (r, w)
    }

    fn zdb(&self, mode: &str, disk: &str, public: bool, password: &str) -> (Reservation, Workload) {
        self.reservation(
            json!({"size": 1, "mode": mode, "disk_type": disk, "public": public}),
            self.node.id(),
            password,
        )
    }

    /// Names of this test's containers.
    async fn containers(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .docker
            .list_containers(&ContainerFilter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .filter(|n| n.starts_with(&self.prefix))
            .collect();
        v.sort();
        v
    }

    async fn volume_exists(&self, name: &str) -> bool {
        self.docker.inspect_volume(name).await.unwrap().is_some()
    }
}

/// A user's plain connection to a namespace server at `ip`.
async fn client(ip: &str) -> MultiplexedConnection {
    let info = (ip.to_string(), 9900u16)
        .into_connection_info()
        .unwrap()
        .set_redis_settings(RedisConnectionInfo::default().set_skip_set_lib_name());
    redis::Client::open(info)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn text(e: &RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(c), Some(d)) => format!("{c} {d}"),
        (Some(c), None) => c.to_string(),
        _ => e.to_string(),
    }
}

async fn run(con: &mut MultiplexedConnection, args: &[&[u8]]) -> Result<redis::Value, String> {
    let mut c = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query_async(con).await.map_err(|e| text(&e))
}

fn ok(v: Result<redis::Value, String>) {
    match v {
        Ok(redis::Value::Okay) => {}
        other => panic!("expected OK, got {other:?}"),
    }
}

#[tokio::test]
async fn namespaces_share_a_container_with_passwords_public_access_and_maxsize() {
    let s = setup().await;
    let (r1, w1) = s.zdb("user", "SSD", false, "pw-one");
    let (r2, w2) = s.zdb("user", "SSD", true, "pw-two");

    let res1 = s.zdb.provision(&r1, &w1).await.unwrap();
    let res2 = s.zdb.provision(&r2, &w2).await.unwrap();
    assert_eq!(res1["namespace"], namespace_name(&r1).as_str());
    assert_eq!(res2["namespace"], namespace_name(&r2).as_str());
    assert!(namespace_name(&r1).starts_with(&format!("{}-", r1.id)));
    assert_eq!(res1["port"], 9900);
    assert_eq!(
        res1["ip"], res2["ip"],
        "one 0-db container per (disk, mode)"
    );
    let ip = res1["ip"].as_str().unwrap().to_string();
    let instance = format!("{}ssd-user", s.prefix);
    assert_eq!(s.containers().await, vec![instance.clone()]);
    assert!(s.volume_exists(&instance).await);
    assert!(s.zdb.exists(&r1, &w1).await.unwrap());

    // Passwords: wrong one and none are refused on a private namespace.
    let mut c = client(&ip).await;
    let ns1 = res1["namespace"].as_str().unwrap().as_bytes();
    assert_eq!(
        run(&mut c, &[b"SELECT", ns1, b"pw-two"]).await.unwrap_err(),
        "Access denied"
    );
    assert_eq!(
        run(&mut c, &[b"SELECT", ns1]).await.unwrap_err(),
        "Namespace protected and private"
    );
    ok(run(&mut c, &[b"SELECT", ns1, b"pw-one"]).await);
    run(&mut c, &[b"SET", b"k", b"v1"]).await.unwrap();
    assert_eq!(
        run(&mut c, &[b"GET", b"k"]).await.unwrap(),
        redis::Value::BulkString(b"v1".to_vec())
    );

    // maxsize is the reserved 1 GiB: it fills up exactly, not a byte more.
    let info = run(&mut c, &[b"NSINFO", ns1]).await.unwrap();
    let redis::Value::BulkString(info) = info else {
        panic!("{info:?}")
    };
    assert!(String::from_utf8_lossy(&info).contains("data_limits_bytes: 1073741824\n"));
    run(&mut c, &[b"DEL", b"k"]).await.unwrap();
    let chunk = vec![7u8; 8 << 20];
    for i in 0..128u32 {
        let key = format!("chunk-{i}");
        run(&mut c, &[b"SET", key.as_bytes(), &chunk])
            .await
            .unwrap_or_else(|e| panic!("chunk {i}: {e}"));
    }
    assert_eq!(
        run(&mut c, &[b"SET", b"one-more", b"x"]).await.unwrap_err(),
        "No space left on this namespace"
    );
    drop(c);

    // Public namespace: readable without password, not writable.
    let mut c = client(&ip).await;
    let ns2 = res2["namespace"].as_str().unwrap().as_bytes();
    ok(run(&mut c, &[b"SELECT", ns2, b"pw-two"]).await);
    run(&mut c, &[b"SET", b"pub", b"data"]).await.unwrap();
    let mut anon = client(&ip).await;
    ok(run(&mut anon, &[b"SELECT", ns2]).await);
    assert_eq!(
        run(&mut anon, &[b"GET", b"pub"]).await.unwrap(),
        redis::Value::BulkString(b"data".to_vec())
    );
    assert_eq!(
        run(&mut anon, &[b"SET", b"pub", b"evil"])
            .await
            .unwrap_err(),
        "Namespace is in read-only mode"
    );
    // Only the agent administers namespaces.
    assert_eq!(
        run(&mut anon, &[b"NSDEL", ns1]).await.unwrap_err(),
        "Permission denied"
    );
    assert_eq!(
        run(&mut anon, &[b"NSSET", ns1, b"password", b"x"])
            .await
            .unwrap_err(),
        "Permission denied"
    );

    // Provisioning again reuses the namespace and keeps its data.
    assert_eq!(s.zdb.provision(&r2, &w2).await.unwrap(), res2);
    assert_eq!(
        run(&mut anon, &[b"GET", b"pub"]).await.unwrap(),
        redis::Value::BulkString(b"data".to_vec())
    );
    let mut ids = s.zdb.list_labelled().await.unwrap();
    ids.sort();
    let mut want = vec![r1.id.clone(), r2.id.clone()];
    want.sort();
    assert_eq!(ids, want);

    // Decommissioning one keeps the container for the other.
    s.zdb.decommission(&r1, &w1).await.unwrap();
    assert!(!s.zdb.exists(&r1, &w1).await.unwrap());
    assert!(s.zdb.exists(&r2, &w2).await.unwrap());
    assert_eq!(s.containers().await, vec![instance.clone()]);
    let mut c = client(&ip).await;
    assert_eq!(
        run(&mut c, &[b"SELECT", ns1, b"pw-one"]).await.unwrap_err(),
        "Namespace not found"
    );
    ok(run(&mut c, &[b"SELECT", ns2, b"pw-two"]).await);
    drop((c, anon));

    // The last one takes the container and its volume with it.
    s.zdb.decommission(&r2, &w2).await.unwrap();
    assert!(s.containers().await.is_empty());
    assert!(!s.volume_exists(&instance).await);
    assert!(!s.zdb.exists(&r2, &w2).await.unwrap());
    s.zdb.decommission(&r2, &w2).await.unwrap();
}

#[tokio::test]
async fn modes_and_disks_get_their_own_container_and_bad_passwords_are_refused() {
    let s = setup().await;

    // Sealed for another node: refused before anything is created.
    let other = Identity::generate();
    let (bad, wbad) = s.reservation(
        json!({"size": 1, "mode": "user", "disk_type": "SSD", "public": false}),
        other.id(),
        "pw",
    );
    match s.zdb.provision(&bad, &wbad).await {
        Err(ProvisionError::Refused(m)) => assert!(m.contains("password"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let (long, wlong) = s.zdb("user", "SSD", false, &"x".repeat(64));
    match s.zdb.provision(&long, &wlong).await {
        Err(ProvisionError::Refused(m)) => assert!(m.contains("63 bytes"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(s.containers().await.is_empty());

    let (seq, wseq) = s.zdb("seq", "HDD", false, "pw-seq");
    let (usr, wusr) = s.zdb("user", "HDD", false, "pw-usr");
    let a = s.zdb.provision(&seq, &wseq).await.unwrap();
    let b = s.zdb.provision(&usr, &wusr).await.unwrap();
    assert_ne!(a["ip"], b["ip"]);
    assert_eq!(
        s.containers().await,
        vec![
            format!("{}hdd-seq", s.prefix),
            format!("{}hdd-user", s.prefix)
        ]
    );
    // The seq instance runs in sequential mode: keys are allocated.
    let mut c = client(a["ip"].as_str().unwrap()).await;
    ok(run(
        &mut c,
        &[b"SELECT", namespace_name(&seq).as_bytes(), b"pw-seq"],
    )
    .await);
    assert_eq!(
        run(&mut c, &[b"SET", b"", b"v"]).await.unwrap(),
        redis::Value::BulkString(0u32.to_le_bytes().to_vec())
    );

    s.zdb.decommission(&seq, &wseq).await.unwrap();
    s.zdb.decommission(&usr, &wusr).await.unwrap();
    assert!(s.containers().await.is_empty());
}

#[tokio::test]
async fn a_lost_container_is_recreated_on_provision() {
    let s = setup().await;
    let (r, w) = s.zdb("user", "SSD", false, "pw");
    s.zdb.provision(&r, &w).await.unwrap();
    let name = format!("{}ssd-user", s.prefix);

    // Someone removes the container (the volume stays): the namespace is
    // not there any more, and provisioning brings it back.
    s.docker
        .stop_container(&name, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(!s.zdb.exists(&r, &w).await.unwrap());
    s.docker.remove_container(&name).await.unwrap();
    assert!(!s.zdb.exists(&r, &w).await.unwrap());
    let res = s.zdb.provision(&r, &w).await.unwrap();
    assert!(s.zdb.exists(&r, &w).await.unwrap());
    let mut c = client(res["ip"].as_str().unwrap()).await;
    ok(run(&mut c, &[b"SELECT", namespace_name(&r).as_bytes(), b"pw"]).await);

    s.zdb.remove_labelled(&r.id).await.unwrap();
    assert!(s.containers().await.is_empty());
    assert!(!s.volume_exists(&name).await);
}

fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_default_namespace_is_protected_and_the_admin_password_stays_off_argv() {
    let s = setup().await;
    let (r, w) = s.zdb("user", "SSD", false, "pw");
    let res = s.zdb.provision(&r, &w).await.unwrap();
    let name = format!("{}ssd-user", s.prefix);

    // The admin password is in the environment, never in Cmd, Args or
    // Entrypoint.
    let c = s
        .docker
        .client()
        .inspect_container(&name, None)
        .await
        .unwrap();
    let env = c.config.as_ref().unwrap().env.clone().unwrap_or_default();
    let admin = env
        .iter()
        .find_map(|e| e.strip_prefix("ADMIN="))
        .expect("ADMIN in the container's environment")
        .to_string();
    assert!(admin.len() >= 20, "{admin}");
    // The shared 0-db server is confined like tenant containers.
    let hc = c.host_config.clone().unwrap();
    assert_eq!(hc.pids_limit, Some(256));
    assert!(
        hc.security_opt
            .unwrap_or_default()
            .iter()
            .any(|o| o.starts_with("no-new-privileges")),
        "no-new-privileges"
    );
    assert_eq!(hc.cap_drop, Some(vec!["NET_RAW".to_string()]));
    let config = c.config.unwrap();
    let shown = format!(
        "{:?} {:?} {:?} {:?}",
        c.args, c.path, config.cmd, config.entrypoint
    );
    assert!(
        !shown.contains(&admin),
        "admin password on the command line: {shown}"
    );
    assert!(
        shown.contains("--protect") && shown.contains("--maxsize"),
        "{shown}"
    );

    // A tenant who reaches port 9900 cannot write the default namespace,
    // nor administer it with AUTH alone.
    let ip = res["ip"].as_str().unwrap();
    let mut anon = client(ip).await;
    assert_eq!(
        run(&mut anon, &[b"SET", b"k", b"v"]).await.unwrap_err(),
        "Namespace is in read-only mode"
    );
    ok(run(&mut anon, &[b"SELECT", b"default"]).await);
    assert_eq!(
        run(&mut anon, &[b"SET", b"k", b"v"]).await.unwrap_err(),
        "Namespace is in read-only mode"
    );
    assert_eq!(
        run(&mut anon, &[b"SELECT", b"default", b"guess"])
            .await
            .unwrap_err(),
        "Access denied"
    );
    // With the admin password it is writable, and capped at 1 MiB.
    let mut adm = client(ip).await;
    ok(run(&mut adm, &[b"SELECT", b"default", admin.as_bytes()]).await);
    run(&mut adm, &[b"SET", b"k", b"v"]).await.unwrap();
    let big = vec![1u8; 1 << 20];
    assert_eq!(
        run(&mut adm, &[b"SET", b"big", &big]).await.unwrap_err(),
        "No space left on this namespace"
    );
    drop((anon, adm));
    s.zdb.decommission(&r, &w).await.unwrap();
    assert!(s.containers().await.is_empty());
}

#[tokio::test]
async fn a_failed_provisioning_leaves_no_container_it_created() {
    let s = setup().await;
    // The stand-in with NSSET failing (ZDB_STANDIN_FAIL): the namespace
    // step after NSNEW fails.
    let tag = format!(
        "agent-test/zdb-failing:{}-{}",
        std::process::id(),
        counter()
    );
    let tmp = format!("{}mk-image", s.prefix);
    sh(&format!("docker create --name {tmp} {IMAGE} >/dev/null"));
    sh(&format!(
        "docker commit --change 'ENV ZDB_STANDIN_FAIL=NSSET' {tmp} {tag} >/dev/null; docker rm -f {tmp} >/dev/null"
    ));
    struct Image(String);
    impl Drop for Image {
        fn drop(&mut self) {
            sh(&format!("docker rmi -f {} >/dev/null 2>&1", self.0));
        }
    }
    let _image = Image(tag.clone());
    let failing = ZdbProvisioner::new(s.docker.clone(), s.node.clone(), tag.as_str())
        .with_name_prefix(s.prefix.clone());
    let (r, w) = s.zdb("user", "HDD", false, "pw");
    match failing.provision(&r, &w).await {
        Err(e) => assert!(e.to_string().contains("NSSET"), "{e}"),
        Ok(v) => panic!("expected a failure, got {v}"),
    }
    assert!(
        s.containers().await.is_empty(),
        "{:?}",
        s.containers().await
    );
    assert!(!s.volume_exists(&format!("{}hdd-user", s.prefix)).await);

    // A container that existed before is kept, without the namespace.
    let (ok_r, ok_w) = s.zdb("user", "HDD", false, "pw");
    let res = s.zdb.provision(&ok_r, &ok_w).await.unwrap();
    let (r2, w2) = s.zdb("user", "HDD", false, "x".repeat(64).as_str());
    assert!(s.zdb.provision(&r2, &w2).await.is_err());
    assert_eq!(s.containers().await, vec![format!("{}hdd-user", s.prefix)]);
    let mut c = client(res["ip"].as_str().unwrap()).await;
    let list = run(&mut c, &[b"NSLIST"]).await.unwrap();
    assert!(!format!("{list:?}").contains(&r2.id), "{list:?}");
    drop(c);
    s.zdb.decommission(&ok_r, &ok_w).await.unwrap();
}

#[tokio::test]
async fn another_users_reservation_under_the_same_id_never_takes_over_a_namespace() {
    let s = setup().await;
    let (r, w) = s.zdb("user", "SSD", false, "alice-pw");
    let res = s.zdb.provision(&r, &w).await.unwrap();

    // The explorer hands Mallory's signed reservation the same id.
    let mallory = Identity::generate();
    let data = json!({"size": 1, "mode": "user", "disk_type": "SSD", "public": false,
        "password": seal_for(s.node.id(), b"mallory-pw").unwrap()});
    let mut evil = Reservation {
        id: r.id.clone(),
        node_id: s.node.id().to_string(),
        user_id: mallory.id().to_string(),
        kind: "zdb".into(),
        data: serde_json::value::RawValue::from_string(data.to_string()).unwrap(),
        created: Some(Utc::now()),
        duration: 3_600_000_000_000,
        ..Default::default()
    };
    mallory.sign_reservation(&mut evil);
    let we = Workload::parse(WorkloadType::Zdb, &evil.data).unwrap();
    let res_evil = s.zdb.provision(&evil, &we).await.unwrap();
    assert_ne!(res_evil["namespace"], res["namespace"]);

    // Alice's namespace keeps Alice's password.
    let mut c = client(res["ip"].as_str().unwrap()).await;
    let ns = res["namespace"].as_str().unwrap().as_bytes();
    assert_eq!(
        run(&mut c, &[b"SELECT", ns, b"mallory-pw"])
            .await
            .unwrap_err(),
        "Access denied"
    );
    ok(run(&mut c, &[b"SELECT", ns, b"alice-pw"]).await);
    drop(c);
    s.zdb.decommission(&evil, &we).await.unwrap();
    assert!(s.zdb.exists(&r, &w).await.unwrap());
    s.zdb.decommission(&r, &w).await.unwrap();
}
