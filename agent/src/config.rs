//! The agent's settings: one layered [`Settings`]. Each value comes from
//! its flag, else its `AGENT_*` environment variable, else the key of the
//! same name (snake_case) in the TOML file (`--config`, default
//! `/etc/agent/agent.toml`, ignored when absent unless named), else the
//! default written on the flag, which `agent --help` shows.
//!
//! How the layers meet: clap reads flags, the environment and the
//! defaults; the file's values are handed to clap as the defaults of their
//! flags (after checking each key and value, so an error names the file and
//! the key), and clap parses once more. `--dev` changes the defaults of
//! `explorer`, `root` and `socket` the same way.

use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Command, CommandFactory, FromArgMatches, Parser};
use provisioners::container::{parse_port_range, DEFAULT_HOST_PORTS, DEFAULT_PIDS_LIMIT};
use provisioners::kubernetes::{check_runtime_name, KubernetesMode, DEFAULT_K3S_IMAGE};
use provisioners::network::{parse_pool, DEFAULT_POOL};
use provisioners::zdb::DEFAULT_ZDB_IMAGE;
use provisioners::TenantOptions;
use reservation::workloads::DiskType;

use crate::capacity::{self, parse_disk_type, parse_size, UserLimits};
use crate::AgentError;

pub const DEFAULT_CONFIG: &str = "/etc/agent/agent.toml";
pub const DEFAULT_ROOT: &str = "/var/lib/agent";
pub const DEFAULT_SOCKET: &str = "/run/agent/agent.sock";
/// `--dev`: the root, under the working directory.
pub const DEV_ROOT: &str = "./.agent-dev";
pub const DEV_EXPLORER_PORT: u16 = 7700;
/// Default of `--max-poll-bytes`.
pub const DEFAULT_MAX_POLL_BYTES: usize = 16 << 20;
/// Default of `--pull-timeout`.
pub const DEFAULT_PULL_TIMEOUT: Duration = Duration::from_secs(600);
/// Default of `--image-grace`.
pub const DEFAULT_IMAGE_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Flags with no key in the file.
const NOT_IN_FILE: [&str; 3] = ["config", "dev", "dev_port"];

/// Every setting of the `agent` daemon, resolved: see the module doc for
/// where each value comes from.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "agent",
    version,
    about = "Node provisioning agent: polls the explorer for signed reservations and provisions them through Docker.",
    after_help = "Every flag can also come from the environment (AGENT_EXPLORER, AGENT_ROOT, ...) or from the TOML file\n\
(the flag's name in snake_case: max_poll_bytes = 16777216).\n\
Precedence: flag, then environment, then file, then default.\n\n\
Examples:\n  agent --dev                                   # local explorer on 127.0.0.1:7700, root ./.agent-dev\n  agent --explorer https://explorer.example --root /var/lib/agent"
)]
pub struct Settings {
    /// Explorer base URL, e.g. https://explorer.example; several replicas
    /// of one explorer: comma-separated or the flag repeated (a list in the
    /// file), polled in turn, moving to the next when one fails [required;
    /// --dev: http://127.0.0.1:<dev-port>].
    #[arg(long, env = "AGENT_EXPLORER", value_name = "URL[,URL...]", required = false, action = clap::ArgAction::Append, value_delimiter = ',')]
    pub explorer: Vec<String>,
    /// State directory: node key, cache, volume images [--dev: ./.agent-dev].
    #[arg(long, env = "AGENT_ROOT", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Control socket for agentctl (mode 0600) [--dev: <root>/agent.sock].
    #[arg(long, env = "AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// TOML config file; the default one is ignored if absent.
    #[arg(long, env = "AGENT_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Run the reference explorer in this process on 127.0.0.1:7700 with
    /// root ./.agent-dev, and print a command that reserves a workload here.
    #[arg(long, hide = !cfg!(feature = "dev"))]
    pub dev: bool,
    /// Port of the `--dev` explorer on 127.0.0.1.
    #[arg(long, env = "AGENT_DEV_PORT", value_name = "PORT", default_value_t = DEV_EXPLORER_PORT, hide = !cfg!(feature = "dev"))]
    pub dev_port: u16,
    /// Deadline for one provisioning, e.g. 10m.
    #[arg(long, env = "AGENT_PROVISION_TIMEOUT", value_parser = humantime::parse_duration, default_value = human(crate::engine::DEFAULT_PROVISION_TIMEOUT))]
    pub provision_timeout: Duration,
    /// Longest reservation lifetime (duration) accepted, e.g. 366d; longer
    /// ones are refused with a signed error.
    #[arg(long, env = "AGENT_MAX_DURATION", value_parser = humantime::parse_duration, default_value = human(crate::engine::DEFAULT_MAX_DURATION))]
    pub max_duration: Duration,
    /// Provisionings and decommissionings of independent workloads that
    /// run at once (default 4 × cores; 0 counts as 1).
    #[arg(long, env = "AGENT_MAX_PARALLEL", default_value_t = crate::engine::default_max_parallel())]
    pub max_parallel: usize,
    /// SIGTERM to SIGKILL when a workload's container is stopped, e.g.
    /// 10s. An expiring workload gets SIGTERM this long before its expiry
    /// and SIGKILL at it; an early deletion gets all of it.
    #[arg(long, env = "AGENT_STOP_GRACE", value_parser = humantime::parse_duration, default_value = human(provisioners::container::DEFAULT_STOP_GRACE))]
    pub stop_grace: Duration,
    /// Log format: text or json.
    #[arg(long, env = "AGENT_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Largest poll answer accepted, in bytes.
    #[arg(long, env = "AGENT_MAX_POLL_BYTES", default_value_t = DEFAULT_MAX_POLL_BYTES)]
    pub max_poll_bytes: usize,
    /// Image of the 0-db containers.
    #[arg(long, env = "AGENT_ZDB_IMAGE", default_value = DEFAULT_ZDB_IMAGE)]
    pub zdb_image: String,
    /// Image of the k3s containers.
    #[arg(long, env = "AGENT_K3S_IMAGE", default_value = DEFAULT_K3S_IMAGE)]
    pub k3s_image: String,
    /// Run k3s containers privileged (true/false) once kubernetes is
    /// enabled. k3s needs it; only a sandboxed engine that cannot start
    /// privileged containers, with a k3s stand-in image, calls for false.
    /// It enables nothing by itself.
    #[arg(long, env = "AGENT_K3S_PRIVILEGED", action = clap::ArgAction::Set, default_value_t = true)]
    pub k3s_privileged: bool,
    /// Enable kubernetes with k3s containers run under this isolating OCI
    /// runtime registered with Docker (e.g. kata, sysbox-runc; checked
    /// against `docker info` at start, runc refused) [default: none,
    /// kubernetes disabled].
    #[arg(long, env = "AGENT_KUBERNETES_RUNTIME", value_parser = parse_kubernetes_runtime)]
    pub kubernetes_runtime: Option<String>,
    /// Enable kubernetes with privileged k3s containers on the host's
    /// runtime: any tenant then owns the host. Only for a single-tenant
    /// node [default: false, kubernetes disabled].
    #[arg(long, env = "AGENT_KUBERNETES_PRIVILEGED_UNSAFE")]
    pub kubernetes_privileged_unsafe: bool,
    /// Comma-separated user ids whose debug reservations get the whole
    /// node's log; other users get only their own reservations' lines
    /// [default: none].
    #[arg(long, env = "AGENT_DEBUG_OPERATORS", value_name = "IDS", value_parser = parse_user_ids, default_value = "", hide_default_value = true)]
    pub debug_operators: ::std::vec::Vec<String>,
    /// What the disk under the root is: SSD or HDD.
    #[arg(long, env = "AGENT_DISK_TYPE", value_parser = parse_disk_type, default_value = DiskType::Ssd.as_str())]
    pub disk_type: DiskType,
    /// Memory kept for the host, e.g. 2GiB.
    #[arg(long, env = "AGENT_RESERVE_MEMORY", value_parser = parse_size, default_value = size(capacity::DEFAULT_RESERVE_MEMORY))]
    pub reserve_memory: u64,
    /// CPU cores kept for the host.
    #[arg(long, env = "AGENT_RESERVE_CPU", default_value_t = 0)]
    pub reserve_cpu: u32,
    /// How many times the usable cores may be promised to workloads
    /// (1 = no overcommit; 0 counts as 1).
    #[arg(long, env = "AGENT_CPU_OVERCOMMIT", default_value_t = 1)]
    pub cpu_overcommit: u32,
    /// Disk kept free under the root for the agent's state, e.g. 64MiB.
    #[arg(long, env = "AGENT_MIN_FREE_DISK", value_parser = parse_size, default_value = size(crate::engine::DEFAULT_MIN_FREE_DISK))]
    pub min_free_disk: u64,
    /// URL where this node can be reached, sent at registration [default:
    /// http://<hostname>].
    #[arg(long, env = "AGENT_NODE_URL", default_value = crate::heartbeat::default_node_url(), hide_default_value = true)]
    pub node_url: String,
    /// Time between heartbeats, e.g. 30s.
    #[arg(long, env = "AGENT_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration, default_value = human(crate::heartbeat::DEFAULT_INTERVAL))]
    pub heartbeat_interval: Duration,
    /// Serve Prometheus metrics on http://ADDR/metrics (off by default).
    #[arg(long, env = "AGENT_METRICS")]
    pub metrics: Option<String>,
    /// Exits within --crash-window after which a workload is given up (0
    /// counts as 1).
    #[arg(long, env = "AGENT_CRASH_LIMIT", default_value_t = crate::crash::DEFAULT_CRASH_LIMIT)]
    pub crash_limit: u32,
    /// Window of the crash policy, e.g. 10m.
    #[arg(long, env = "AGENT_CRASH_WINDOW", value_parser = humantime::parse_duration, default_value = human(crate::crash::DEFAULT_CRASH_WINDOW))]
    pub crash_window: Duration,
    /// Deadline of one image pull, e.g. 10m.
    #[arg(long, env = "AGENT_PULL_TIMEOUT", value_parser = humantime::parse_duration, default_value = human(DEFAULT_PULL_TIMEOUT))]
    pub pull_timeout: Duration,
    /// How long an image the agent pulled may stay unused before it is
    /// removed, e.g. 24h.
    #[arg(long, env = "AGENT_IMAGE_GRACE", value_parser = humantime::parse_duration, default_value = human(DEFAULT_IMAGE_GRACE))]
    pub image_grace: Duration,
    /// Most processes (threads included) one tenant container may hold.
    #[arg(long, env = "AGENT_CONTAINER_PIDS_LIMIT", value_parser = parse_pids_limit, default_value_t = DEFAULT_PIDS_LIMIT)]
    pub container_pids_limit: i64,
    /// OCI runtime of every tenant container, e.g. runsc (gVisor); it must
    /// be registered with Docker (`docker info` Runtimes) or the agent
    /// refuses to start [default: Docker's default runtime].
    #[arg(long, env = "AGENT_CONTAINER_RUNTIME", value_parser = parse_container_runtime)]
    pub container_runtime: Option<String>,
    /// Host ports tenants may publish, LOW-HIGH.
    #[arg(long, env = "AGENT_HOST_PORT_RANGE", value_name = "LOW-HIGH", value_parser = parse_port_range, default_value = format!("{}-{}", DEFAULT_HOST_PORTS.0, DEFAULT_HOST_PORTS.1))]
    pub host_port_range: (u16, u16),
    /// Host address published ports are bound to (0.0.0.0: every address).
    #[arg(long, env = "AGENT_HOST_PORT_ADDRESS", default_value_t = provisioners::container::ContainerPolicy::default().host_port_address)]
    pub host_port_address: IpAddr,
    /// Comma-separated IPv4 CIDRs every network's subnet must lie in.
    #[arg(long, env = "AGENT_NETWORK_POOL", value_name = "CIDRS", value_parser = parse_pool, default_value = DEFAULT_POOL)]
    pub network_pool: ::std::vec::Vec<ipnet::Ipv4Net>,
    /// Most networks one user may hold on this node.
    #[arg(long, env = "AGENT_MAX_NETWORKS_PER_USER", default_value_t = capacity::DEFAULT_MAX_NETWORKS_PER_USER)]
    pub max_networks_per_user: u64,
    /// Most debug reservations one user may hold on this node.
    #[arg(long, env = "AGENT_MAX_DEBUG_PER_USER", default_value_t = capacity::DEFAULT_MAX_DEBUG_PER_USER)]
    pub max_debug_per_user: u64,
    /// Most host ports one user's containers may publish on this node.
    #[arg(long, env = "AGENT_MAX_PORTS_PER_USER", default_value_t = capacity::DEFAULT_MAX_PORTS_PER_USER)]
    pub max_ports_per_user: u64,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not text or json")),
        }
    }
}

impl Settings {
    /// The settings of this process: its arguments, environment and file.
    /// A [`AgentError::Cli`] is clap's to print (`--help` and `--version`
    /// among them): call its `exit`.
    pub fn load() -> Result<Settings, AgentError> {
        Self::load_from(std::env::args_os())
    }

    /// [`Settings::load`] with these arguments (the first is the program).
    pub fn load_from<I, T>(args: I) -> Result<Settings, AgentError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        // Flags, environment and built-in defaults: where the file is, and
        // --dev.
        let first = Settings::command().try_get_matches_from(&args)?;
        let dev = first.get_flag("dev");
        if dev && !cfg!(feature = "dev") {
            return Err(AgentError::Config {
                path: "--dev".into(),
                reason: "this agent is built without the dev feature (the embedded explorer, left out of the Debian package): run an explorer and pass --explorer URL, or build the agent with its default features (cargo run --bin agent -- --dev)".into(),
            });
        }
        let path = first
            .get_one::<PathBuf>("config")
            .cloned()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let explicit = first.value_source("config") != Some(ValueSource::DefaultValue);
        let file = file_for(&path, explicit, dev)?;

        // The file's values (and --dev's) become the flags' defaults.
        let mut defaults = file_defaults(&path, &file)?;
        if dev {
            let port = first
                .get_one::<u16>("dev_port")
                .copied()
                .unwrap_or(DEV_EXPLORER_PORT);
            let root = match given(&first, "root") {
                Some(r) => r,
                None => defaults.get("root").cloned().unwrap_or(DEV_ROOT.into()),
            };
            for (key, value) in [
                ("explorer", format!("http://127.0.0.1:{port}")),
                (
                    "socket",
                    Path::new(&root).join("agent.sock").display().to_string(),
                ),
                ("root", root),
            ] {
                defaults.entry(key.to_string()).or_insert(value);
            }
        }
        let mut cmd = Settings::command();
        for (key, value) in defaults {
            cmd = if key == "explorer" {
                // A list: one default value per URL.
                let urls: Vec<String> = value.split(',').map(str::to_string).collect();
                cmd.mut_arg(key, |a| a.default_values(urls))
            } else {
                cmd.mut_arg(key, |a| a.default_value(value))
            };
        }
        let matches = cmd.try_get_matches_from(&args)?;
        if !matches.contains_id("explorer") {
            return Err(AgentError::Config {
                path: path.display().to_string(),
                reason: "no explorer URL: pass --explorer URL, set AGENT_EXPLORER, or set explorer = \"...\" in the config file (or try --dev)".into(),
            });
        }
        let mut s = Settings::from_arg_matches(&matches)?;
        s.check()?;
        Ok(s)
    }

    /// The explorer URLs, comma-joined, as [`sources::ExplorerClient::new`]
    /// takes them.
    pub fn explorers(&self) -> String {
        self.explorer.join(",")
    }

    /// Checks across settings, and the figures where 0 means 1.
    fn check(&mut self) -> Result<(), AgentError> {
        self.explorer = self
            .explorer
            .iter()
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if self.explorer.is_empty() {
            return Err(AgentError::Config {
                path: "--explorer".into(),
                reason: "no explorer URL: pass --explorer URL (several: URL,URL)".into(),
            });
        }
        if self.kubernetes_runtime.is_some() && self.kubernetes_privileged_unsafe {
            return Err(AgentError::Config {
                path: "--kubernetes-runtime".into(),
                reason: "--kubernetes-runtime and --kubernetes-privileged-unsafe exclude each other; pick one".into(),
            });
        }
        if self.container_runtime.as_deref() == Some("") {
            self.container_runtime = None;
        }
        self.cpu_overcommit = self.cpu_overcommit.max(1);
        self.crash_limit = self.crash_limit.max(1);
        Ok(())
    }

    /// Whether kubernetes is enabled, and how: only when the operator
    /// names an isolating runtime or accepts privileged containers on a
    /// single-tenant node (never both: refused at load).
    pub fn kubernetes(&self) -> KubernetesMode {
        match (&self.kubernetes_runtime, self.kubernetes_privileged_unsafe) {
            (Some(r), _) => KubernetesMode::Runtime(r.clone()),
            (None, true) => KubernetesMode::PrivilegedUnsafe,
            (None, false) => KubernetesMode::Disabled,
        }
    }

    /// What tenants may ask of the host: container confinement, host
    /// ports, the subnet pool.
    pub fn tenants(&self) -> TenantOptions {
        let mut t = TenantOptions::default();
        t.container.pids_limit = self.container_pids_limit;
        t.container.runtime = self.container_runtime.clone();
        t.container.host_ports = self.host_port_range;
        t.container.host_port_address = self.host_port_address;
        t.network_pool = self.network_pool.clone();
        t
    }

    /// What one user may hold at once.
    pub fn user_limits(&self) -> UserLimits {
        UserLimits {
            networks: self.max_networks_per_user,
            debug: self.max_debug_per_user,
            ports: self.max_ports_per_user,
        }
    }
}

/// The value of `id` if a flag or the environment gave it.
fn given(m: &ArgMatches, id: &str) -> Option<String> {
    match m.value_source(id) {
        Some(ValueSource::CommandLine | ValueSource::EnvVariable) => m
            .get_raw(id)
            .and_then(|mut v| v.next())
            .map(|v| v.to_string_lossy().into_owned()),
        _ => None,
    }
}

/// The file as a TOML table: empty when the default file is absent.
/// The config file's table. `--dev` is a sandbox of its own: the system's
/// default file (which may name the production explorer, root and socket)
/// is read only when named with `--config`.
fn file_for(path: &Path, explicit: bool, dev: bool) -> Result<toml::Table, AgentError> {
    if dev && !explicit {
        return Ok(toml::Table::new());
    }
    read_file(path, explicit)
}

fn read_file(path: &Path, explicit: bool) -> Result<toml::Table, AgentError> {
    let bad = |reason: String| AgentError::Config {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(s) => s.parse::<toml::Table>().map_err(|e| bad(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(toml::Table::new()),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Each key of the file, checked against the flags and its value against
/// the flag's parser, as the text clap reads.
fn file_defaults(
    path: &Path,
    file: &toml::Table,
) -> Result<std::collections::BTreeMap<String, String>, AgentError> {
    let cmd = Settings::command();
    let keys: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.get_long().is_some())
        .filter(|a| !NOT_IN_FILE.contains(&a.get_id().as_str()))
        .filter(|a| !["help", "version"].contains(&a.get_id().as_str()))
        .map(|a| a.get_id().to_string())
        .collect();
    let mut out = std::collections::BTreeMap::new();
    for (key, value) in file {
        let bad = |reason: String| AgentError::Config {
            path: format!("{} ({key})", path.display()),
            reason,
        };
        if !keys.contains(key) {
            let expected: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
            return Err(AgentError::Config {
                path: path.display().to_string(),
                reason: format!(
                    "unknown key `{key}`, expected one of {}",
                    expected.join(", ")
                ),
            });
        }
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            // Several explorer URLs (replicas): a list of strings.
            toml::Value::Array(items) if key == "explorer" => {
                let mut urls = Vec::new();
                for item in items {
                    match item.as_str() {
                        Some(u) if !u.contains(',') => urls.push(u.to_string()),
                        _ => {
                            return Err(bad(format!("{item}: each element must be one URL string")))
                        }
                    }
                }
                urls.join(",")
            }
            other => {
                return Err(bad(format!(
                    "expected a string, a number or a boolean, found {}",
                    other.type_str()
                )))
            }
        };
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id() == key.as_str())
            .expect("a key is a flag");
        let check = if arg.get_action().takes_values() {
            // The flag's own parser, through clap.
            let flag = format!("--{}={text}", arg.get_long().unwrap_or(key));
            Command::new("agent")
                .arg(arg.clone().env(None).default_value(None).required(false))
                .try_get_matches_from(["agent", flag.as_str()])
                .map(|_| ())
                .map_err(|e| reason_of(&e))
        } else {
            // A switch: true or false.
            text.parse::<bool>()
                .map(|_| ())
                .map_err(|_| format!("{text:?} is not true or false"))
        };
        check.map_err(|reason| bad(format!("{value}: {reason}")))?;
        out.insert(key.clone(), text);
    }
    Ok(out)
}

/// What a clap error says of a value, without clap's decoration.
fn reason_of(e: &clap::Error) -> String {
    match std::error::Error::source(e) {
        Some(s) => s.to_string(),
        None => e
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string(),
    }
}

/// A duration as the flags take it, in its largest whole unit up to days
/// ("30s", "10m", "24h", "366d").
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 2 * 86400 && s.is_multiple_of(86400) => format!("{}d", s / 86400),
        s if s >= 3600 && s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s >= 60 && s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A size in its largest whole binary unit ("64MiB", "2GiB").
fn size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// `--debug-operators`: comma-separated base58 user ids, blanks dropped.
fn parse_user_ids(s: &str) -> Result<Vec<String>, String> {
    let ids: Vec<String> = s
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    match ids
        .iter()
        .find(|u| !u.chars().all(|c| c.is_ascii_alphanumeric()))
    {
        Some(bad) => Err(format!("{bad:?} is not a user id (base58)")),
        None => Ok(ids),
    }
}

/// `--kubernetes-runtime`: an isolating runtime's name (runc refused).
fn parse_kubernetes_runtime(s: &str) -> Result<String, String> {
    check_runtime_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.trim_start_matches("--kubernetes-runtime: ").to_string())
}

/// `--container-pids-limit`: a positive number.
fn parse_pids_limit(s: &str) -> Result<i64, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(n) => Err(format!("{n} is not a positive number of processes")),
        Err(e) => Err(e.to_string()),
    }
}

/// `--container-runtime`: a runtime's name (blank: Docker's default).
fn parse_container_runtime(s: &str) -> Result<String, String> {
    let r = s.trim();
    if !r
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "{r:?} is not a runtime name (letters, digits, - _ .)"
        ));
    }
    Ok(r.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_reads_the_default_file_only_when_named() {
        // A system file naming the production explorer and root.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "explorer = \"https://prod.example\"\nroot = \"/var/lib/agent\"\n",
        )
        .unwrap();
        assert!(file_for(&path, false, true).unwrap().is_empty());
        assert_eq!(file_for(&path, false, false).unwrap().len(), 2);
        assert_eq!(file_for(&path, true, true).unwrap().len(), 2);
    }

    fn load(args: &[&str]) -> Result<Settings, AgentError> {
        Settings::load_from(std::iter::once("agent").chain(args.iter().copied()))
    }

    /// `--dev` with an empty config file: only flags and --dev decide.
    fn dev(args: &[&str]) -> Result<Settings, AgentError> {
        let mut all = vec!["--dev", "--config", "/dev/null"];
        all.extend_from_slice(args);
        load(&all)
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("agent.toml");
        std::fs::write(
            &f,
            "explorer = \"http://file:1\"\nroot = \"/from/file\"\nprovision_timeout = \"2m\"\npull_timeout = \"3m\"\n",
        )
        .unwrap();
        let path = f.to_str().unwrap();
        let s = load(&["--explorer", "http://flag:1", "--config", path]).unwrap();
        assert_eq!(s.explorer, ["http://flag:1"]);
        assert_eq!(s.root, PathBuf::from("/from/file"));
        assert_eq!(s.provision_timeout, Duration::from_secs(120));
        assert_eq!(s.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(s.crash_window, crate::crash::DEFAULT_CRASH_WINDOW);
        assert_eq!(s.min_free_disk, crate::engine::DEFAULT_MIN_FREE_DISK);
        // The environment beats the file (a variable no other test reads).
        std::env::set_var("AGENT_PULL_TIMEOUT", "4m");
        let s = load(&["--config", path]).unwrap();
        std::env::remove_var("AGENT_PULL_TIMEOUT");
        assert_eq!(s.pull_timeout, Duration::from_secs(240));
        assert_eq!(s.explorer, ["http://file:1"]);
    }

    #[test]
    fn several_explorers_by_commas_repeated_flags_or_a_list_in_the_file() {
        let s = load(&["--explorer", "http://a:1, http://b:2/"]).unwrap();
        assert_eq!(s.explorer, ["http://a:1", "http://b:2/"]);
        assert_eq!(s.explorers(), "http://a:1,http://b:2/");
        let s = load(&["--explorer", "http://a:1", "--explorer", "http://b:2"]).unwrap();
        assert_eq!(s.explorer, ["http://a:1", "http://b:2"]);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("agent.toml");
        std::fs::write(&f, "explorer = [\"http://a:1\", \"http://b:2\"]\n").unwrap();
        let path = f.to_str().unwrap();
        let s = load(&["--config", path]).unwrap();
        assert_eq!(s.explorer, ["http://a:1", "http://b:2"]);
        // The flag still beats the file, list and all.
        let s = load(&["--config", path, "--explorer", "http://c:3"]).unwrap();
        assert_eq!(s.explorer, ["http://c:3"]);
        std::fs::write(&f, "explorer = \"http://a:1,http://b:2\"\n").unwrap();
        assert_eq!(load(&["--config", path]).unwrap().explorer.len(), 2);
        std::fs::write(&f, "explorer = [\"http://a:1\", 7]\n").unwrap();
        let e = load(&["--config", path]).unwrap_err().to_string();
        assert!(
            e.contains("(explorer)") && e.contains("one URL string"),
            "{e}"
        );
        let e = load(&["--explorer", " , "]).unwrap_err().to_string();
        assert!(e.contains("no explorer URL"), "{e}");
    }

    #[test]
    fn unknown_keys_bad_values_and_missing_explicit_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("agent.toml");
        let path = f.to_str().unwrap();
        std::fs::write(&f, "explorr = \"x\"\n").unwrap();
        let e = load(&["--config", path]).unwrap_err().to_string();
        assert!(e.contains("explorr") && e.contains(path), "{e}");
        assert!(e.contains("`explorer`"), "the keys are listed: {e}");
        for (toml, want) in [
            (
                "provision_timeout = \"soon\"\n",
                "(provision_timeout): \"soon\"",
            ),
            (
                "reserve_memory = \"2XB\"\n",
                "(reserve_memory): \"2XB\": size",
            ),
            ("reserve_cpu = -1\n", "(reserve_cpu): -1"),
            (
                "kubernetes_privileged_unsafe = \"yes\"\n",
                "is not true or false",
            ),
            ("log_format = \"xml\"\n", "\"xml\" is not text or json"),
            ("network_pool = [\"10.0.0.0/8\"]\n", "found array"),
            ("dev = true\n", "unknown key `dev`"),
            ("explorer = \n", "TOML parse error"),
        ] {
            std::fs::write(&f, toml).unwrap();
            let e = load(&["--config", path, "--explorer", "http://e"])
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("config {path}")), "{toml}: {e}");
            assert!(e.contains(want), "{toml}: {e}");
        }
        let missing = dir.path().join("nope.toml");
        assert!(load(&["--config", missing.to_str().unwrap(), "--dev"]).is_err());
        // The default file may be absent; the explorer may not.
        let e = load(&["--config", "/dev/null"]).unwrap_err().to_string();
        assert!(e.contains("no explorer URL"), "{e}");
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
        let s = load(&["--config", f.to_str().unwrap()]).unwrap();
        assert_eq!(s.explorer, ["https://explorer.example"]);
        assert_eq!(s.image_grace, Duration::from_secs(24 * 3600));
        // Every tenant setting is shown with its default, but the runtime
        // (none by default) with an example.
        let mut want = provisioners::TenantOptions::default();
        want.container.runtime = Some("runsc".into());
        assert_eq!(s.tenants(), want);
        assert_eq!(s.user_limits(), UserLimits::default());
        // And every setting of the example is shown with its default, or
        // says why not.
        let defaults = dev(&[]).unwrap();
        assert_eq!(
            (s.provision_timeout, s.max_duration, s.max_poll_bytes),
            (
                defaults.provision_timeout,
                defaults.max_duration,
                defaults.max_poll_bytes
            )
        );
    }

    #[test]
    fn tenant_settings_resolve_and_bad_ones_are_named() {
        let s = dev(&[]).unwrap();
        assert_eq!(s.tenants(), provisioners::TenantOptions::default());
        assert_eq!(s.tenants().container.pids_limit, 1024);
        assert_eq!(s.tenants().container.host_ports, (30000, 32767));
        assert_eq!(s.tenants().container.runtime, None);
        assert_eq!(s.tenants().network_pool.len(), 3);
        assert_eq!(
            (
                s.user_limits().networks,
                s.user_limits().debug,
                s.user_limits().ports
            ),
            (16, 2, 16)
        );
        let s = dev(&[
            "--container-pids-limit",
            "64",
            "--container-runtime",
            "runsc",
            "--host-port-range",
            "40000-40100",
            "--host-port-address",
            "127.0.0.1",
            "--network-pool",
            "10.0.0.0/8",
            "--max-networks-per-user",
            "1",
        ])
        .unwrap();
        let t = s.tenants();
        assert_eq!(t.container.pids_limit, 64);
        assert_eq!(t.container.runtime.as_deref(), Some("runsc"));
        assert_eq!(t.container.host_ports, (40000, 40100));
        assert_eq!(t.network_pool, vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(s.user_limits().networks, 1);
        for (flag, value) in [
            ("--host-port-range", "2-1"),
            ("--network-pool", "10.0.0.0/33"),
            ("--container-pids-limit", "0"),
            ("--container-runtime", "a/b"),
        ] {
            let e = dev(&[flag, value]).unwrap_err().to_string();
            assert!(e.contains(flag), "{flag}: {e}");
        }
        let e = dev(&["--container-pids-limit", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("0 is not a positive number of processes"), "{e}");
        // A blank runtime is Docker's default.
        assert_eq!(
            dev(&["--container-runtime", " "])
                .unwrap()
                .tenants()
                .container
                .runtime,
            None
        );
    }

    #[test]
    fn kubernetes_is_enabled_only_explicitly_and_never_with_runc() {
        let s = dev(&[
            "--kubernetes-runtime",
            "kata",
            "--debug-operators",
            " abc, DEF9 ,",
        ])
        .unwrap();
        assert_eq!(s.kubernetes(), KubernetesMode::Runtime("kata".into()));
        assert_eq!(s.debug_operators, ["abc", "DEF9"]);
        let s = dev(&["--kubernetes-privileged-unsafe"]).unwrap();
        assert_eq!(s.kubernetes(), KubernetesMode::PrivilegedUnsafe);
        // A switch set in the file, and a file setting excluded by a flag.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("agent.toml");
        std::fs::write(
            &f,
            "kubernetes_privileged_unsafe = true
",
        )
        .unwrap();
        let path = f.to_str().unwrap();
        let s = load(&["--dev", "--config", path]).unwrap();
        assert_eq!(s.kubernetes(), KubernetesMode::PrivilegedUnsafe);
        let e = load(&["--dev", "--config", path, "--kubernetes-runtime", "kata"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("exclude each other"), "{e}");
        for args in [
            &["--kubernetes-runtime", "runc"][..],
            &[
                "--kubernetes-runtime",
                "kata",
                "--kubernetes-privileged-unsafe",
            ],
            &["--debug-operators", "ok,not an id"],
        ] {
            let e = dev(args).unwrap_err().to_string();
            assert!(
                e.contains("--kubernetes-runtime") || e.contains("--debug-operators"),
                "{e}"
            );
        }
        let e = dev(&["--kubernetes-runtime", "runc"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not isolate"), "{e}");
    }

    #[test]
    fn dev_defaults() {
        let s = dev(&[]).unwrap();
        assert_eq!(s.explorer, ["http://127.0.0.1:7700"]);
        assert_eq!(
            s.kubernetes(),
            KubernetesMode::Disabled,
            "kubernetes is off unless the operator enables it"
        );
        assert!(s.debug_operators.is_empty());
        assert_eq!(s.root, PathBuf::from("./.agent-dev"));
        assert_eq!(s.socket, PathBuf::from("./.agent-dev/agent.sock"));
        let s = dev(&["--dev-port", "7800", "--root", "/tmp/r"]).unwrap();
        assert_eq!(s.explorer, ["http://127.0.0.1:7800"]);
        assert_eq!(s.socket, PathBuf::from("/tmp/r/agent.sock"));
    }

    /// The defaults `agent --help` shows are the ones the agent uses.
    #[test]
    fn help_shows_every_default() {
        let help = Settings::command().render_long_help().to_string();
        for want in [
            "[default: 10m]",
            "[default: 366d]",
            "[default: 24h]",
            "[default: 30s]",
            "[default: 2GiB]",
            "[default: 64MiB]",
            "[default: 16777216]",
            "[default: 30000-32767]",
            "[default: /var/lib/agent]",
            "[default: SSD]",
            "[default: text]",
        ] {
            assert!(help.contains(want), "{want} missing from:\n{help}");
        }
        for d in [
            crate::engine::DEFAULT_PROVISION_TIMEOUT,
            crate::engine::DEFAULT_MAX_DURATION,
            DEFAULT_IMAGE_GRACE,
            crate::heartbeat::DEFAULT_INTERVAL,
        ] {
            assert_eq!(humantime::parse_duration(&human(d)).unwrap(), d);
        }
        for b in [capacity::DEFAULT_RESERVE_MEMORY, 64 << 20, 1536, 3] {
            assert_eq!(parse_size(&size(b)).unwrap(), b);
        }
    }
}
