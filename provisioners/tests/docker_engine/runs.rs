//! What the crash watch reads through the seam, on the real engine: a
//! container whose entrypoint exits 1 is restarted by its policy, and
//! `container_runs` counts those exits with the last exit code while
//! `container_logs` returns what it printed. (The watch's decisions over
//! these figures are unit-tested with the fake in agent/src/crash.rs.)

use std::time::{Duration, Instant};

use provisioners::docker::{ContainerNet, ContainerSpec, Docker, Labels};

use crate::common::{docker, Guard, IMAGE};

#[tokio::test]
async fn a_crashing_container_reports_its_exits_code_and_log() {
    let d = docker().await;
    let mut g = Guard::new();
    let id = g.id();
    let name = format!("agent-test-runs-{id}");
    let spec = ContainerSpec {
        name: name.clone(),
        image: IMAGE.into(),
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
        labels: Labels::from([("io.agent.reservation".to_string(), id.clone())]),
    };
    assert!(d.container_runs(&name).await.unwrap().is_none());
    d.create_container(&spec).await.unwrap();
    d.start_container(&name).await.unwrap();

    // Docker's restart delay doubles from 100 ms: three exits take ~1 s.
    let started = Instant::now();
    let runs = loop {
        let runs = d.container_runs(&name).await.unwrap().expect("exists");
        if runs.exits() >= 3 || started.elapsed() > Duration::from_secs(60) {
            break runs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let logs = d.container_logs(&name, 5).await.unwrap();
    let _ = d.remove_container(&name).await;
    assert!(runs.exits() >= 3, "{runs:?}");
    assert_eq!(runs.exit_code, 1, "{runs:?}");
    assert!(runs.finished_at.is_some(), "{runs:?}");
    assert!(!runs.oom_killed);
    assert!(logs.lines().any(|l| l.trim() == "boom"), "{logs:?}");
}
