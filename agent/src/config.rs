//! The agent's settings: flags, then environment (`AGENT_*`), then the TOML
//! file (`--config`, default `/etc/agent/agent.toml`), then defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use crate::AgentError;

pub const DEFAULT_CONFIG: &str = "/etc/agent/agent.toml";
pub const DEFAULT_ROOT: &str = "/var/lib/agent";
pub const DEFAULT_SOCKET: &str = "/run/agent/agent.sock";
pub const DEV_EXPLORER_PORT: u16 = 7700;

/// Command line of the `agent` daemon.
#[derive(Debug, Parser, Default)]
#[command(
    name = "agent",
    version,
    about = "Node provisioning agent: polls the explorer for signed reservations and provisions them through Docker.",
    after_help = "Every flag can also come from the environment (AGENT_EXPLORER, AGENT_ROOT, ...) or from the TOML file.\n\
Precedence: flag, then environment, then file, then default.\n\n\
Examples:\n  agent --dev                                   # local explorer on 127.0.0.1:7700, root ./.agent-dev\n  agent --explorer https://explorer.example --root /var/lib/agent"
)]
pub struct Args {
    /// Explorer base URL, e.g. https://explorer.example [required; --dev:
    /// http://127.0.0.1:7700].
    #[arg(long, env = "AGENT_EXPLORER")]
    pub explorer: Option<String>,
    /// State directory: node key, cache, volume images [default:
    /// /var/lib/agent; --dev: ./.agent-dev].
    #[arg(long, env = "AGENT_ROOT")]
    pub root: Option<PathBuf>,
    /// Control socket for agentctl (mode 0600) [default:
    /// /run/agent/agent.sock; --dev: <root>/agent.sock].
    #[arg(long, env = "AGENT_SOCKET")]
    pub socket: Option<PathBuf>,
    /// TOML config file [default: /etc/agent/agent.toml, ignored if absent].
    #[arg(long, env = "AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Run the reference explorer in this process on 127.0.0.1:7700 with
    /// root ./.agent-dev, and print a command that reserves a workload here.
    #[arg(long)]
    pub dev: bool,
    /// Port of the `--dev` explorer on 127.0.0.1 [default: 7700].
    #[arg(long, env = "AGENT_DEV_PORT", value_name = "PORT")]
    pub dev_port: Option<u16>,
    /// Deadline for one provisioning, e.g. 10m [default: 10m].
    #[arg(long, env = "AGENT_PROVISION_TIMEOUT", value_parser = humantime::parse_duration)]
    pub provision_timeout: Option<Duration>,
    /// Longest reservation lifetime (duration) accepted, e.g. 366d; longer
    /// ones are refused with a signed error [default: 366d].
    #[arg(long, env = "AGENT_MAX_DURATION", value_parser = humantime::parse_duration)]
    pub max_duration: Option<Duration>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "AGENT_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Largest poll answer accepted, in bytes [default: 16777216].
    #[arg(long, env = "AGENT_MAX_POLL_BYTES")]
    pub max_poll_bytes: Option<usize>,
    /// Image of the 0-db containers [default: threefoldtech/0-db].
    #[arg(long, env = "AGENT_ZDB_IMAGE")]
    pub zdb_image: Option<String>,
    /// Image of the k3s containers [default: rancher/k3s:v1.31.4-k3s1].
    #[arg(long, env = "AGENT_K3S_IMAGE")]
    pub k3s_image: Option<String>,
    /// Run k3s containers privileged (true/false) once kubernetes is
    /// enabled [default: true]. k3s needs it; only a sandboxed engine that
    /// cannot start privileged containers, with a k3s stand-in image,
    /// calls for false. It enables nothing by itself.
    #[arg(long, env = "AGENT_K3S_PRIVILEGED")]
    pub k3s_privileged: Option<bool>,
    /// Enable kubernetes with k3s containers run under this isolating OCI
    /// runtime registered with Docker (e.g. kata, sysbox-runc; checked
    /// against `docker info` at start, runc refused) [default: none,
    /// kubernetes disabled].
    #[arg(long, env = "AGENT_KUBERNETES_RUNTIME")]
    pub kubernetes_runtime: Option<String>,
    /// Enable kubernetes with privileged k3s containers on the host's
    /// runtime: any tenant then owns the host. Only for a single-tenant
    /// node [default: false, kubernetes disabled].
    #[arg(long, env = "AGENT_KUBERNETES_PRIVILEGED_UNSAFE")]
    pub kubernetes_privileged_unsafe: bool,
    /// Comma-separated user ids whose debug reservations get the whole
    /// node's log; other users get only their own reservations' lines
    /// [default: none].
    #[arg(long, env = "AGENT_DEBUG_OPERATORS")]
    pub debug_operators: Option<String>,
    /// What the disk under the root is: SSD or HDD [default: SSD].
    #[arg(long, env = "AGENT_DISK_TYPE")]
    pub disk_type: Option<String>,
    /// Memory kept for the host, e.g. 2GiB [default: 2GiB].
    #[arg(long, env = "AGENT_RESERVE_MEMORY")]
    pub reserve_memory: Option<String>,
    /// CPU cores kept for the host [default: 0].
    #[arg(long, env = "AGENT_RESERVE_CPU")]
    pub reserve_cpu: Option<u32>,
    /// How many times the usable cores may be promised to workloads
    /// (1 = no overcommit) [default: 1].
    #[arg(long, env = "AGENT_CPU_OVERCOMMIT")]
    pub cpu_overcommit: Option<u32>,
    /// Disk kept free under the root for the agent's state, e.g. 64MiB
    /// [default: 64MiB].
    #[arg(long, env = "AGENT_MIN_FREE_DISK")]
    pub min_free_disk: Option<String>,
    /// URL where this node can be reached, sent at registration [default:
    /// http://<hostname>].
    #[arg(long, env = "AGENT_NODE_URL")]
    pub node_url: Option<String>,
    /// Time between heartbeats, e.g. 30s [default: 30s].
    #[arg(long, env = "AGENT_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Option<Duration>,
    /// Serve Prometheus metrics on http://ADDR/metrics (off by default).
    #[arg(long, env = "AGENT_METRICS")]
    pub metrics: Option<String>,
    /// Exits within --crash-window after which a workload is given up
    /// [default: 5].
    #[arg(long, env = "AGENT_CRASH_LIMIT")]
    pub crash_limit: Option<u32>,
    /// Window of the crash policy, e.g. 10m [default: 10m].
    #[arg(long, env = "AGENT_CRASH_WINDOW", value_parser = humantime::parse_duration)]
    pub crash_window: Option<Duration>,
    /// Deadline of one image pull, e.g. 10m [default: 10m].
    #[arg(long, env = "AGENT_PULL_TIMEOUT", value_parser = humantime::parse_duration)]
    pub pull_timeout: Option<Duration>,
    /// How long an image the agent pulled may stay unused before it is
    /// removed, e.g. 24h [default: 24h].
    #[arg(long, env = "AGENT_IMAGE_GRACE", value_parser = humantime::parse_duration)]
    pub image_grace: Option<Duration>,
    /// Most processes (threads included) one tenant container may hold
    /// [default: 1024].
    #[arg(long, env = "AGENT_CONTAINER_PIDS_LIMIT")]
    pub container_pids_limit: Option<i64>,
    /// OCI runtime of every tenant container, e.g. runsc (gVisor); it must
    /// be registered with Docker (`docker info` Runtimes) or the agent
    /// refuses to start [default: Docker's default runtime].
    #[arg(long, env = "AGENT_CONTAINER_RUNTIME")]
    pub container_runtime: Option<String>,
    /// Host ports tenants may publish, LOW-HIGH [default: 30000-32767].
    #[arg(long, env = "AGENT_HOST_PORT_RANGE")]
    pub host_port_range: Option<String>,
    /// Host address published ports are bound to [default: 0.0.0.0, every
    /// address].
    #[arg(long, env = "AGENT_HOST_PORT_ADDRESS")]
    pub host_port_address: Option<std::net::IpAddr>,
    /// Comma-separated IPv4 CIDRs every network's subnet must lie in
    /// [default: 10.0.0.0/8,172.16.0.0/12,192.168.0.0/16].
    #[arg(long, env = "AGENT_NETWORK_POOL")]
    pub network_pool: Option<String>,
    /// Most networks one user may hold on this node [default: 16].
    #[arg(long, env = "AGENT_MAX_NETWORKS_PER_USER")]
    pub max_networks_per_user: Option<u64>,
    /// Most debug reservations one user may hold on this node [default: 2].
    #[arg(long, env = "AGENT_MAX_DEBUG_PER_USER")]
    pub max_debug_per_user: Option<u64>,
    /// Most host ports one user's containers may publish on this node
    /// [default: 16].
    #[arg(long, env = "AGENT_MAX_PORTS_PER_USER")]
    pub max_ports_per_user: Option<u64>,
}

/// The TOML file: the same settings, snake_case, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub explorer: Option<String>,
    pub root: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    #[serde(default, with = "humantime_serde_opt")]
    pub provision_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub max_duration: Option<Duration>,
    pub log_format: Option<String>,
    pub max_poll_bytes: Option<usize>,
    pub zdb_image: Option<String>,
    pub k3s_image: Option<String>,
    pub k3s_privileged: Option<bool>,
    pub kubernetes_runtime: Option<String>,
    pub kubernetes_privileged_unsafe: Option<bool>,
    pub debug_operators: Option<String>,
    pub disk_type: Option<String>,
    pub reserve_memory: Option<String>,
    pub reserve_cpu: Option<u32>,
    pub cpu_overcommit: Option<u32>,
    pub min_free_disk: Option<String>,
    pub node_url: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    pub heartbeat_interval: Option<Duration>,
    pub metrics: Option<String>,
    pub crash_limit: Option<u32>,
    #[serde(default, with = "humantime_serde_opt")]
    pub crash_window: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub pull_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    pub image_grace: Option<Duration>,
    pub container_pids_limit: Option<i64>,
    pub container_runtime: Option<String>,
    pub host_port_range: Option<String>,
    pub host_port_address: Option<std::net::IpAddr>,
    pub network_pool: Option<String>,
    pub max_networks_per_user: Option<u64>,
    pub max_debug_per_user: Option<u64>,
    pub max_ports_per_user: Option<u64>,
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub explorer: String,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub dev: bool,
    /// Port of the `--dev` explorer on 127.0.0.1.
    pub dev_port: u16,
    pub provision_timeout: Duration,
    pub max_duration: Duration,
    pub log_format: LogFormat,
    pub max_poll_bytes: usize,
    pub zdb_image: String,
    pub k3s_image: String,
    pub k3s_privileged: bool,
    /// Whether kubernetes is enabled, and how (default: disabled).
    pub kubernetes: provisioners::kubernetes::KubernetesMode,
    /// Users whose debug reservations see the whole node's log.
    pub debug_operators: Vec<String>,
    pub disk_type: reservation::workloads::DiskType,
    pub reserve_memory: u64,
    pub reserve_cpu: u32,
    pub cpu_overcommit: u32,
    pub min_free_disk: u64,
    pub node_url: String,
    pub heartbeat_interval: Duration,
    pub metrics: Option<String>,
    pub crash_limit: u32,
    pub crash_window: Duration,
    pub pull_timeout: Duration,
    pub image_grace: Duration,
    /// What tenants may ask of the host: container confinement, host
    /// ports, the subnet pool.
    pub tenants: provisioners::TenantOptions,
    /// What one user may hold at once.
    pub user_limits: crate::capacity::UserLimits,
}

impl Settings {
    /// Merge flags/environment with the file and defaults.
    pub fn resolve(args: Args) -> Result<Settings, AgentError> {
        let (path, explicit) = match &args.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let file = load_file(&path, explicit)?;
        let log_format = match args
            .log_format
            .or(file.log_format)
            .as_deref()
            .unwrap_or("text")
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(AgentError::Config {
                    path: "--log-format".into(),
                    reason: format!("{other:?} is not text or json"),
                })
            }
        };
        let dev = args.dev;
        let bad = |key: &str, reason: String| AgentError::Config {
            path: format!("{} ({key})", path.display()),
            reason,
        };
        let kubernetes = kubernetes_mode(
            args.kubernetes_runtime.or(file.kubernetes_runtime),
            args.kubernetes_privileged_unsafe || file.kubernetes_privileged_unsafe.unwrap_or(false),
        )?;
        let debug_operators: Vec<String> = args
            .debug_operators
            .or(file.debug_operators)
            .unwrap_or_default()
            .split(',')
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if let Some(bad) = debug_operators
            .iter()
            .find(|u| !u.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(AgentError::Config {
                path: "--debug-operators".into(),
                reason: format!("{bad:?} is not a user id (base58)"),
            });
        }
        let explorer = match args.explorer.or(file.explorer) {
            Some(e) => e,
            None if dev => format!(
                "http://127.0.0.1:{}",
                args.dev_port.unwrap_or(DEV_EXPLORER_PORT)
            ),
            None => {
                return Err(AgentError::Config {
                    path: path.display().to_string(),
                    reason: "no explorer URL: pass --explorer URL, set AGENT_EXPLORER, or set explorer = \"...\" in the config file (or try --dev)".into(),
                })
            }
        };
        let root = args.root.or(file.root).unwrap_or_else(|| {
            if dev {
                PathBuf::from("./.agent-dev")
            } else {
                PathBuf::from(DEFAULT_ROOT)
            }
        });
        let socket = args.socket.or(file.socket).unwrap_or_else(|| {
            if dev {
                root.join("agent.sock")
            } else {
                PathBuf::from(DEFAULT_SOCKET)
            }
        });
        Ok(Settings {
            explorer,
            root,
            socket,
            dev,
            dev_port: args.dev_port.unwrap_or(DEV_EXPLORER_PORT),
            provision_timeout: args
                .provision_timeout
                .or(file.provision_timeout)
                .unwrap_or(Duration::from_secs(600)),
            max_duration: args
                .max_duration
                .or(file.max_duration)
                .unwrap_or(crate::engine::DEFAULT_MAX_DURATION),
            log_format,
            max_poll_bytes: args
                .max_poll_bytes
                .or(file.max_poll_bytes)
                .unwrap_or(16 * 1024 * 1024),
            zdb_image: args
                .zdb_image
                .or(file.zdb_image)
                .unwrap_or_else(|| provisioners::zdb::DEFAULT_ZDB_IMAGE.into()),
            k3s_image: args
                .k3s_image
                .or(file.k3s_image)
                .unwrap_or_else(|| provisioners::kubernetes::DEFAULT_K3S_IMAGE.into()),
            k3s_privileged: args.k3s_privileged.or(file.k3s_privileged).unwrap_or(true),
            kubernetes,
            debug_operators,
            disk_type: match args.disk_type.or(file.disk_type) {
                Some(d) => crate::capacity::parse_disk_type(&d).map_err(|e| bad("disk_type", e))?,
                None => reservation::workloads::DiskType::Ssd,
            },
            reserve_memory: match args.reserve_memory.or(file.reserve_memory) {
                Some(m) => crate::capacity::parse_size(&m).map_err(|e| bad("reserve_memory", e))?,
                None => crate::capacity::DEFAULT_RESERVE_MEMORY,
            },
            reserve_cpu: args.reserve_cpu.or(file.reserve_cpu).unwrap_or(0),
            cpu_overcommit: args
                .cpu_overcommit
                .or(file.cpu_overcommit)
                .unwrap_or(1)
                .max(1),
            min_free_disk: match args.min_free_disk.or(file.min_free_disk) {
                Some(m) => crate::capacity::parse_size(&m).map_err(|e| bad("min_free_disk", e))?,
                None => 64 << 20,
            },
            node_url: args
                .node_url
                .or(file.node_url)
                .unwrap_or_else(crate::heartbeat::default_node_url),
            heartbeat_interval: args
                .heartbeat_interval
                .or(file.heartbeat_interval)
                .unwrap_or(crate::heartbeat::DEFAULT_INTERVAL),
            metrics: args.metrics.or(file.metrics),
            crash_limit: args.crash_limit.or(file.crash_limit).unwrap_or(5).max(1),
            crash_window: args
                .crash_window
                .or(file.crash_window)
                .unwrap_or(Duration::from_secs(600)),
            pull_timeout: args
                .pull_timeout
                .or(file.pull_timeout)
                .unwrap_or(Duration::from_secs(600)),
            image_grace: args
                .image_grace
                .or(file.image_grace)
                .unwrap_or(Duration::from_secs(24 * 3600)),
            tenants: tenant_options(
                args.container_pids_limit.or(file.container_pids_limit),
                args.container_runtime.or(file.container_runtime),
                args.host_port_range.or(file.host_port_range),
                args.host_port_address.or(file.host_port_address),
                args.network_pool.or(file.network_pool),
            )?,
            user_limits: {
                let d = crate::capacity::UserLimits::default();
                crate::capacity::UserLimits {
                    networks: args
                        .max_networks_per_user
                        .or(file.max_networks_per_user)
                        .unwrap_or(d.networks),
                    debug: args
                        .max_debug_per_user
                        .or(file.max_debug_per_user)
                        .unwrap_or(d.debug),
                    ports: args
                        .max_ports_per_user
                        .or(file.max_ports_per_user)
                        .unwrap_or(d.ports),
                }
            },
        })
    }
}

/// The tenant rules from their settings (`None`: the default).
fn tenant_options(
    pids_limit: Option<i64>,
    runtime: Option<String>,
    port_range: Option<String>,
    port_address: Option<std::net::IpAddr>,
    pool: Option<String>,
) -> Result<provisioners::TenantOptions, AgentError> {
    let bad = |path: &str, reason: String| AgentError::Config {
        path: path.into(),
        reason,
    };
    let mut t = provisioners::TenantOptions::default();
    if let Some(n) = pids_limit {
        if n < 1 {
            return Err(bad(
                "--container-pids-limit",
                format!("{n} is not a positive number of processes"),
            ));
        }
        t.container.pids_limit = n;
    }
    if let Some(r) = runtime
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
    {
        if !r
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(bad(
                "--container-runtime",
                format!("{r:?} is not a runtime name (letters, digits, - _ .)"),
            ));
        }
        t.container.runtime = Some(r);
    }
    if let Some(r) = port_range {
        t.container.host_ports = provisioners::container::parse_port_range(&r)
            .map_err(|e| bad("--host-port-range", e))?;
    }
    if let Some(a) = port_address {
        t.container.host_port_address = a;
    }
    if let Some(p) = pool {
        t.network_pool =
            provisioners::network::parse_pool(&p).map_err(|e| bad("--network-pool", e))?;
    }
    Ok(t)
}

/// Kubernetes is disabled unless the operator names an isolating runtime
/// or accepts privileged containers on a single-tenant node; not both.
fn kubernetes_mode(
    runtime: Option<String>,
    privileged_unsafe: bool,
) -> Result<provisioners::kubernetes::KubernetesMode, AgentError> {
    use provisioners::kubernetes::{check_runtime_name, KubernetesMode};
    let bad = |path: &str, reason: String| AgentError::Config {
        path: path.into(),
        reason,
    };
    match (runtime, privileged_unsafe) {
        (Some(_), true) => Err(bad(
            "--kubernetes-runtime",
            "--kubernetes-runtime and --kubernetes-privileged-unsafe exclude each other; pick one"
                .into(),
        )),
        (Some(r), false) => {
            check_runtime_name(&r).map_err(|e| {
                let reason = e.trim_start_matches("--kubernetes-runtime: ").to_string();
                bad("--kubernetes-runtime", reason)
            })?;
            Ok(KubernetesMode::Runtime(r))
        }
        (None, true) => Ok(KubernetesMode::PrivilegedUnsafe),
        (None, false) => Ok(KubernetesMode::Disabled),
    }
}

fn load_file(path: &Path, explicit: bool) -> Result<FileConfig, AgentError> {
    match std::fs::read_to_string(path) {
        Ok(s) => toml::from_str(&s).map_err(|e| AgentError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
            Ok(FileConfig::default())
        }
        Err(e) => Err(AgentError::Config {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("agent.toml");
        std::fs::write(
            &f,
            "explorer = \"http://file:1\"\nroot = \"/from/file\"\nprovision_timeout = \"2m\"\n",
        )
        .unwrap();
        let s = Settings::resolve(Args {
            explorer: Some("http://flag:1".into()),
            config: Some(f.clone()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.explorer, "http://flag:1");
        assert_eq!(s.root, PathBuf::from("/from/file"));
        assert_eq!(s.provision_timeout, Duration::from_secs(120));
        assert_eq!(s.socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn unknown_keys_and_missing_explicit_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("agent.toml");
        std::fs::write(&f, "explorr = \"x\"\n").unwrap();
        let e = Settings::resolve(Args {
            config: Some(f),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("explorr"), "{e}");
        assert!(Settings::resolve(Args {
            config: Some(dir.path().join("nope.toml")),
            ..Default::default()
        })
        .is_err());
    }

    /// Every setting the shipped example documents is one the agent reads,
    /// with a value of the right type.
    #[test]
    fn the_shipped_example_config_parses_uncommented() {
        let example = include_str!("../../systemd/agent.toml.example");
        let uncommented: String = example
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                l.split_once(" = ").is_some_and(|(k, _)| {
                    k.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let keys = uncommented.lines().count();
        assert!(keys >= 20, "only {keys} settings found:\n{uncommented}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("agent.toml");
        std::fs::write(&f, &uncommented).unwrap();
        let s = Settings::resolve(Args {
            config: Some(f),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.explorer, "https://explorer.example");
        assert_eq!(s.image_grace, Duration::from_secs(24 * 3600));
        // Every tenant setting is shown with its default, but the runtime
        // (none by default) with an example.
        let mut want = provisioners::TenantOptions::default();
        want.container.runtime = Some("runsc".into());
        assert_eq!(s.tenants, want);
        assert_eq!(s.user_limits, crate::capacity::UserLimits::default());
    }

    #[test]
    fn tenant_settings_resolve_and_bad_ones_are_named() {
        let resolve = |args: Args| {
            Settings::resolve(Args {
                dev: true,
                config: Some(PathBuf::from("/dev/null")),
                ..args
            })
        };
        let s = resolve(Args::default()).unwrap();
        assert_eq!(s.tenants.container.pids_limit, 1024);
        assert_eq!(s.tenants.container.host_ports, (30000, 32767));
        assert_eq!(s.tenants.container.runtime, None);
        assert_eq!(s.tenants.network_pool.len(), 3);
        assert_eq!(
            (
                s.user_limits.networks,
                s.user_limits.debug,
                s.user_limits.ports
            ),
            (16, 2, 16)
        );
        let s = resolve(Args {
            container_pids_limit: Some(64),
            container_runtime: Some("runsc".into()),
            host_port_range: Some("40000-40100".into()),
            host_port_address: Some("127.0.0.1".parse().unwrap()),
            network_pool: Some("10.0.0.0/8".into()),
            max_networks_per_user: Some(1),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.tenants.container.pids_limit, 64);
        assert_eq!(s.tenants.container.runtime.as_deref(), Some("runsc"));
        assert_eq!(s.tenants.container.host_ports, (40000, 40100));
        assert_eq!(s.tenants.network_pool, vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(s.user_limits.networks, 1);
        for (args, want) in [
            (
                Args {
                    host_port_range: Some("2-1".into()),
                    ..Default::default()
                },
                "--host-port-range",
            ),
            (
                Args {
                    network_pool: Some("10.0.0.0/33".into()),
                    ..Default::default()
                },
                "--network-pool",
            ),
            (
                Args {
                    container_pids_limit: Some(0),
                    ..Default::default()
                },
                "--container-pids-limit",
            ),
            (
                Args {
                    container_runtime: Some("a/b".into()),
                    ..Default::default()
                },
                "--container-runtime",
            ),
        ] {
            let e = resolve(args).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn kubernetes_is_enabled_only_explicitly_and_never_with_runc() {
        use provisioners::kubernetes::KubernetesMode;
        let resolve = |args: Args| {
            Settings::resolve(Args {
                dev: true,
                config: Some(PathBuf::from("/dev/null")),
                ..args
            })
        };
        let s = resolve(Args {
            kubernetes_runtime: Some("kata".into()),
            debug_operators: Some(" abc, DEF9 ,".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.kubernetes, KubernetesMode::Runtime("kata".into()));
        assert_eq!(s.debug_operators, ["abc", "DEF9"]);
        let s = resolve(Args {
            kubernetes_privileged_unsafe: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.kubernetes, KubernetesMode::PrivilegedUnsafe);
        for args in [
            Args {
                kubernetes_runtime: Some("runc".into()),
                ..Default::default()
            },
            Args {
                kubernetes_runtime: Some("kata".into()),
                kubernetes_privileged_unsafe: true,
                ..Default::default()
            },
            Args {
                debug_operators: Some("ok,not an id".into()),
                ..Default::default()
            },
        ] {
            let e = resolve(args).unwrap_err().to_string();
            assert!(
                e.contains("--kubernetes-runtime") || e.contains("--debug-operators"),
                "{e}"
            );
        }
    }

    #[test]
    fn dev_defaults() {
        // An empty config file: only flags and --dev decide.
        let s = Settings::resolve(Args {
            dev: true,
            config: Some(PathBuf::from("/dev/null")),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.explorer, "http://127.0.0.1:7700");
        assert_eq!(
            s.kubernetes,
            provisioners::kubernetes::KubernetesMode::Disabled,
            "kubernetes is off unless the operator enables it"
        );
        assert!(s.debug_operators.is_empty());
        assert_eq!(s.root, PathBuf::from("./.agent-dev"));
        assert_eq!(s.socket, PathBuf::from("./.agent-dev/agent.sock"));
    }
}
