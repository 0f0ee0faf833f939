//! Shared helpers of the integration tests: the locally built test image,
//! reservations, unique ids and subnets, one-shot helper containers, and a
//! guard that removes every Docker object and mount of a test even when it
//! fails.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context, Result};
use bollard::container::{Config, CreateContainerOptions, LogsOptions, WaitContainerOptions};
use bollard::models::{HostConfig, Mount, MountTypeEnum};
use futures_util::StreamExt;
use provisioners::{BollardDocker, Docker};
use reservation::{Identity, Reservation, Workload, WorkloadType};
use serde_json::value::RawValue;

/// The image every test container runs (built by tests/images/build.sh).
pub const IMAGE: &str = "agent-test/busybox:latest";

/// Build the test image once per test process.
pub fn test_image() -> &'static str {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/images/build.sh");
        let st = Command::new("sh")
            .arg(&script)
            .status()
            .expect("run tests/images/build.sh");
        assert!(st.success(), "tests/images/build.sh failed");
    });
    IMAGE
}

pub async fn docker() -> Arc<BollardDocker> {
    test_image();
    Arc::new(BollardDocker::connect().await.expect("docker engine"))
}

fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// A reservation number unique to this test (tests run in parallel, and
/// other test processes may share the engine).
pub fn unique_number() -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let base = *BASE.get_or_init(|| (random() % 1_000_000) * 1000 + 1_000_000_000);
    base + NEXT.fetch_add(1, Ordering::SeqCst)
}

/// A host port in the agent's default host port range (30000-32767) that
/// nothing listens on now, for a test to publish: a random one, checked by
/// binding it (TCP and UDP) on every interface, as Docker's proxy will.
pub fn free_host_port() -> u16 {
    let (start, end) = provisioners::container::DEFAULT_HOST_PORTS;
    let span = u64::from(end - start) + 1;
    for i in 0..2000u64 {
        let port = start + ((random().wrapping_add(i * 7919)) % span) as u16;
        let tcp = std::net::TcpListener::bind(("0.0.0.0", port));
        let udp = std::net::UdpSocket::bind(("0.0.0.0", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free host port in {start}-{end}");
}

/// A private /24 for this test: `10.<o>.<n>.0/24`, with `<o>` chosen per
/// process among second octets no existing Docker network uses.
pub fn unique_subnet() -> String {
    static OCTET: OnceLock<u8> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let o = *OCTET.get_or_init(|| {
        let out = Command::new("docker")
            .args([
                "network",
                "inspect",
                "--format",
                "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
            ])
            .args(docker_network_names())
            .output()
            .expect("docker network inspect");
        let used = String::from_utf8_lossy(&out.stdout).to_string();
        let start = random() % 120;
        (0..120)
            .map(|i| (64 + (start + i) % 120) as u8)
            .find(|o| !used.contains(&format!("10.{o}.")))
            .expect("a free 10.x/16")
    });
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    assert!(n < 255, "out of test subnets");
    format!("10.{o}.{n}.0/24")
}

fn docker_network_names() -> Vec<String> {
    let out = Command::new("docker")
        .args(["network", "ls", "--format", "{{.Name}}"])
        .output()
        .expect("docker network ls");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The `n`-th host address of a /24 like `10.1.2.0/24`.
pub fn host(subnet: &str, n: u8) -> String {
    let base = subnet.split('/').next().unwrap();
    let mut parts: Vec<&str> = base.split('.').collect();
    let last = n.to_string();
    parts[3] = &last;
    parts.join(".")
}

/// A reservation (signed by `user`) and its parsed workload.
pub fn reservation(
    user: &Identity,
    node: &Identity,
    id: &str,
    kind: WorkloadType,
    data: serde_json::Value,
) -> (Reservation, Workload) {
    let raw = RawValue::from_string(data.to_string()).unwrap();
    let mut r = Reservation {
        id: id.to_string(),
        node_id: node.id().to_string(),
        user_id: user.id().to_string(),
        kind: kind.as_str().to_string(),
        data: raw,
        created: Some(chrono::Utc::now()),
        duration: 3_600_000_000_000,
        signature: String::new(),
        to_delete: false,
        delete_signature: None,
        ..Default::default()
    };
    user.sign_reservation(&mut r);
    let w = Workload::parse(kind, &r.data).expect("valid workload data");
    (r, w)
}

/// The exit code and output of a one-shot helper container.
pub struct Run {
    pub code: i64,
    pub output: String,
}

/// Run `cmd` in a throw-away container of the test image on `network`
/// (`None`: Docker's default) with `volumes` (`(docker volume, target)`).
pub async fn run_once(
    d: &BollardDocker,
    network: Option<&str>,
    volumes: &[(&str, &str)],
    cmd: &str,
) -> Result<Run> {
    let c = d.client();
    let name = format!("agent-test-helper-{}", unique_number());
    let host = HostConfig {
        network_mode: network.map(str::to_string),
        mounts: Some(
            volumes
                .iter()
                .map(|(v, t)| Mount {
                    typ: Some(MountTypeEnum::VOLUME),
                    source: Some(v.to_string()),
                    target: Some(t.to_string()),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    };
    let cfg = Config {
        image: Some(IMAGE.to_string()),
        cmd: Some(vec!["sh".to_string(), "-c".to_string(), cmd.to_string()]),
        host_config: Some(host),
        ..Default::default()
    };
    c.create_container(
        Some(CreateContainerOptions {
            name: name.clone(),
            platform: None,
        }),
        cfg,
    )
    .await
    .context("create helper")?;
    let result = async {
        c.start_container::<String>(&name, None)
            .await
            .context("start helper")?;
        let mut wait = c.wait_container(&name, None::<WaitContainerOptions<String>>);
        let code = match wait.next().await {
            Some(Ok(r)) => r.status_code,
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => bail!("wait helper: {e}"),
            None => bail!("helper wait stream ended"),
        };
        let mut logs = c.logs(
            &name,
            Some(LogsOptions::<String> {
                stdout: true,
                stderr: true,
                ..Default::default()
            }),
        );
        let mut output = String::new();
        while let Some(l) = logs.next().await {
            output.push_str(&String::from_utf8_lossy(&l?.into_bytes()));
        }
        Ok(Run { code, output })
    }
    .await;
    let _ = c
        .remove_container(
            &name,
            Some(bollard::container::RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    result
}

/// Full inspect of a container (the test's independent view).
pub async fn inspect(d: &BollardDocker, name: &str) -> bollard::models::ContainerInspectResponse {
    d.client()
        .inspect_container(name, None)
        .await
        .unwrap_or_else(|e| panic!("inspect {name}: {e}"))
}

/// Removes, on drop (also when the test panics), every container, volume
/// and network labelled with one of the test's reservation ids, unmounts
/// its volume images and deletes its temporary root.
pub struct Guard {
    pub ids: Vec<String>,
    pub root: Option<tempfile::TempDir>,
}

impl Guard {
    pub fn new() -> Self {
        Guard {
            ids: Vec::new(),
            root: Some(tempfile::tempdir().expect("tempdir")),
        }
    }

    /// A fresh reservation id `<n>-1`, cleaned up at the end.
    pub fn id(&mut self) -> String {
        let id = format!("{}-1", unique_number());
        self.ids.push(id.clone());
        id
    }

    pub fn root(&self) -> PathBuf {
        self.root.as_ref().unwrap().path().to_path_buf()
    }
}

fn docker_cli(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default()
}

impl Drop for Guard {
    fn drop(&mut self) {
        for id in &self.ids {
            let f = format!("label=io.agent.reservation={id}");
            for c in docker_cli(&["ps", "-aq", "--filter", &f]).split_whitespace() {
                docker_cli(&["rm", "-f", c]);
            }
        }
        for id in &self.ids {
            let f = format!("label=io.agent.reservation={id}");
            for v in docker_cli(&["volume", "ls", "-q", "--filter", &f]).split_whitespace() {
                docker_cli(&["volume", "rm", "-f", v]);
            }
            for n in docker_cli(&["network", "ls", "-q", "--filter", &f]).split_whitespace() {
                docker_cli(&["network", "rm", n]);
            }
        }
        if let Some(root) = self.root.take() {
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let path = std::fs::canonicalize(root.path()).unwrap_or(root.path().to_path_buf());
            let prefix = path.to_string_lossy().to_string();
            for line in mounts.lines() {
                if let Some(mp) = line.split(' ').nth(4) {
                    if mp.starts_with(&prefix) {
                        let _ = Command::new("umount").arg(mp).status();
                    }
                }
            }
            drop(root);
        }
    }
}

/// Labels of a Docker object as a map.
pub fn labels(m: Option<HashMap<String, String>>) -> HashMap<String, String> {
    m.unwrap_or_default()
}

pub async fn info(d: &BollardDocker) -> provisioners::docker::DockerInfo {
    d.info().await.expect("docker info")
}
