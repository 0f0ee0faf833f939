//! The WireGuard tunnels of networks that span nodes: the [`Tunnels`] seam
//! the network plug-in drives, its host implementation ([`HostTunnels`]:
//! the routes, policy rule and firewall chains each tunnel owns, around a
//! [`TunnelBackend`] that makes the interface: kernel WireGuard configured
//! over netlink ([`KernelBackend`]) where the host has it, else boringtun
//! over `/dev/net/tun` configured over its UAPI stream
//! ([`BoringtunBackend`]); chosen once at start by [`select`]), and the
//! recording [`RecordingTunnels`] for unit tests.
//!
//! One tunnel = one interface `wg<13 base58>` (derived from the agent's
//! Docker network name, never from user strings), its own routing table
//! (peers' `allowed_ips` through the interface, anything else
//! unreachable) chosen by an `iif <bridge>` rule, and an iptables chain
//! `AGENT-<iface>` in `filter` (jumped to from INPUT, FORWARD and OUTPUT)
//! and in `nat` (from POSTROUTING, so Docker does not masquerade tunnel
//! traffic). The filter chain lets the bridge talk to the tunnel and to
//! itself, and drops everything else in or out of the bridge or the
//! tunnel: the host's addresses, other networks, the default bridge.
//! The chain and the rules are derived from the interface name; the table
//! is the first free one from a hash of that name ([`pick_table`]: two
//! names hashing alike never share a table), recorded in a comment on the
//! chain. So `down` removes it all even after a restart that lost the
//! in-memory state.
//!
//! Replacing a running tunnel (a takeover's new key, port and peers) that
//! fails after the old one went down brings the old one back as it ran
//! (its spec, key included, is kept in memory while it runs).
//!
//! The private key is held in memory only ([`WgKey`], redacted in `Debug`,
//! wiped on drop) and handed to boringtun over a socket pair, or to the
//! kernel in a netlink message: no file, no `wg` process.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::Ipv4Net;

/// MTU of a tunnel interface: 1500 less WireGuard's 80 bytes of overhead.
pub const TUNNEL_MTU: u32 = 1420;

/// Priority of the `iif <bridge> lookup <table>` rules.
const RULE_PRIORITY: &str = "1000";

/// A WireGuard private key in memory: never printed, wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct WgKey(pub [u8; 32]);

impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WgKey(<redacted>)")
    }
}

impl Drop for WgKey {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned `&mut u8`; volatile so the
            // wipe is not optimised away.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// One peer: its key, the ranges routed to it, where it listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub public_key: [u8; 32],
    pub allowed_ips: Vec<Ipv4Net>,
    pub endpoint: Option<SocketAddr>,
}

/// Everything a tunnel is made from, validated by the network plug-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    /// `wg…`, see [`iface_name`].
    pub iface: String,
    /// The Docker bridge of the network (`br-<12 of its id>`).
    pub bridge: String,
    /// This node's subnet of the network (the bridge's).
    pub subnet: Ipv4Net,
    pub key: WgKey,
    pub listen_port: u16,
    pub peers: Vec<PeerSpec>,
}

/// The interface name of the tunnel of Docker network `network_name`.
pub fn iface_name(network_name: &str) -> String {
    format!(
        "wg{}",
        reservation::network_local_id("wireguard-iface", network_name)
    )
}

/// The tunnels' routing tables: `TABLE_COUNT` numbers from `TABLE_FIRST`,
/// above the tables people number by hand.
const TABLE_FIRST: u32 = 0x1000_0000;
const TABLE_COUNT: u32 = 0x6fff_0000;

/// The preferred routing table of interface `iface`: a hash of its name.
/// Two names can hash to the same table, so the table a tunnel gets is
/// [`pick_table`]'s, recorded on its chain ([`table_mark`]).
pub fn table_of(iface: &str) -> u32 {
    let id = reservation::network_local_id("wireguard-table", iface);
    let h = id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    TABLE_FIRST + (h % TABLE_COUNT)
}

/// The table for a tunnel preferring `base`: the first of `base`,
/// `base + 1`, … (wrapping round within the tunnels' range) that `used`
/// does not hold, so two tunnels never share a table even when their
/// names hash alike. Deterministic: the same host state gives the same
/// table.
pub fn pick_table(base: u32, used: &BTreeSet<u32>) -> u32 {
    let start = base.wrapping_sub(TABLE_FIRST) % TABLE_COUNT;
    // Among `used.len() + 1` numbers one is free.
    (0..=used.len() as u32)
        .map(|i| TABLE_FIRST + (start + i) % TABLE_COUNT)
        .find(|t| !used.contains(t))
        .unwrap_or(TABLE_FIRST + start)
}

/// The comment on a tunnel's filter chain recording its routing table:
/// the chain outlives a restart, so `down` finds the table again.
pub fn table_mark(table: u32) -> String {
    format!("agent-table={table}")
}

/// Every table number named (`lookup <n>`, `table <n>`) in `ip rule` or
/// `ip route` text.
pub fn tables_named(text: &str) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    for l in text.lines() {
        let mut w = l.split_whitespace();
        while let Some(t) = w.next() {
            if t == "lookup" || t == "table" {
                if let Some(n) = w.next().and_then(|n| n.parse().ok()) {
                    out.insert(n);
                }
            }
        }
    }
    out
}

/// The firewall chain of interface `iface` (in `filter` and `nat`).
pub fn chain_of(iface: &str) -> String {
    format!("AGENT-{iface}")
}

/// The environment variable that overrides the choice of WireGuard:
/// `kernel`, `userspace` or `auto` (the default).
pub const BACKEND_ENV: &str = "AGENT_WIREGUARD";

/// Which WireGuard implementation makes the tunnels' interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The host kernel's, configured over netlink.
    Kernel,
    /// boringtun in the agent's process, over `/dev/net/tun`.
    Userspace,
}

/// The choice made at start, and why (shown by `agentctl status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub kind: BackendKind,
    /// `kernel (...)` or `userspace (...)`, with the reason.
    pub mode: String,
}

const USERSPACE_MODE: &str = "userspace (boringtun over /dev/net/tun)";
const KERNEL_MODE: &str = "kernel (configured over netlink)";

/// Choose the backend from the operator's override (`BACKEND_ENV`) and
/// `kernel_probe` (whether the host can make a kernel WireGuard link),
/// which is not asked when the override is `userspace`.
pub fn select(override_: Option<&str>, kernel_probe: impl FnOnce() -> bool) -> Selection {
    let userspace = |why: String| Selection {
        kind: BackendKind::Userspace,
        mode: format!("{USERSPACE_MODE}; {why}"),
    };
    let wanted = override_.map(str::trim).unwrap_or("");
    match wanted {
        "userspace" => return userspace(format!("{BACKEND_ENV}=userspace")),
        "" | "auto" | "kernel" => {}
        other => {
            let kernel = kernel_probe();
            let note = format!("{BACKEND_ENV}={other:?} is not kernel, userspace or auto");
            return if kernel {
                Selection {
                    kind: BackendKind::Kernel,
                    mode: format!("{KERNEL_MODE}; {note}"),
                }
            } else {
                userspace(format!("no kernel wireguard on this host; {note}"))
            };
        }
    }
    if kernel_probe() {
        Selection {
            kind: BackendKind::Kernel,
            mode: KERNEL_MODE.into(),
        }
    } else if wanted == "kernel" {
        userspace(format!(
            "{BACKEND_ENV}=kernel but this host has no kernel wireguard"
        ))
    } else {
        userspace("no kernel wireguard on this host".into())
    }
}

/// Whether this host can run kernel WireGuard: the module is there
/// (`/sys/module/wireguard`, loaded or built in), or a link of kind
/// `wireguard` can be made over netlink (which loads it) and is deleted
/// again.
pub fn probe_kernel() -> bool {
    if std::path::Path::new("/sys/module/wireguard").exists() {
        return true;
    }
    let name = format!("wgprobe{}", std::process::id() % 100_000);
    let Ok(iface) = name.parse::<wireguard_control::InterfaceName>() else {
        return false;
    };
    let made = wireguard_control::DeviceUpdate::new()
        .apply(&iface, wireguard_control::Backend::Kernel)
        .is_ok();
    if made {
        let _ = wireguard_control::Device::get(&iface, wireguard_control::Backend::Kernel)
            .and_then(|d| d.delete());
    }
    made
}

/// The choice of this process, made once (on first use).
pub fn selected() -> &'static Selection {
    static SELECTED: std::sync::OnceLock<Selection> = std::sync::OnceLock::new();
    SELECTED.get_or_init(|| {
        let s = select(std::env::var(BACKEND_ENV).ok().as_deref(), probe_kernel);
        tracing::info!(wireguard = %s.mode, "wireguard backend chosen");
        s
    })
}

/// Which WireGuard the node runs tunnels with, for `agentctl status`.
pub fn host_mode() -> String {
    selected().mode.clone()
}

/// One tunnel interface made by a [`TunnelBackend`].
pub trait TunnelDevice: Send {
    /// Set the private key, listen port and (replacing them all) peers.
    fn configure(
        &mut self,
        key: &WgKey,
        listen_port: u16,
        peers: &[PeerSpec],
    ) -> Result<(), String>;
    /// Remove the interface; what is already gone is fine.
    fn remove(self: Box<Self>);
}

/// A backend's refusal of `listen_port` because another socket holds it
/// (boringtun's errno 98 or the kernel's `EADDRINUSE`): the same words
/// from either.
fn port_in_use(listen_port: u16) -> String {
    format!("wireguard_listen_port {listen_port} is already in use on this node")
}

/// The seam between [`HostTunnels`] and the WireGuard implementation:
/// making an interface, configuring it, removing it. Routes, rules and
/// firewall are the same for every backend and stay in [`HostTunnels`].
pub trait TunnelBackend: Send + Sync {
    fn kind(&self) -> BackendKind;
    /// Make interface `iface` (none of that name exists).
    fn create(&self, iface: &str) -> Result<Box<dyn TunnelDevice>, String>;
}

/// The backend [`selected`] for this process.
pub fn selected_backend() -> Arc<dyn TunnelBackend> {
    match selected().kind {
        BackendKind::Kernel => Arc::new(KernelBackend),
        BackendKind::Userspace => Arc::new(BoringtunBackend),
    }
}

/// Userspace WireGuard: boringtun devices running in the agent's process.
pub struct BoringtunBackend;

/// A running boringtun device and our end of its UAPI stream.
struct BoringtunDevice {
    iface: String,
    handle: boringtun::device::DeviceHandle,
    api: UnixStream,
}

impl TunnelBackend for BoringtunBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Userspace
    }

    fn create(&self, iface: &str) -> Result<Box<dyn TunnelDevice>, String> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| format!("cannot open a socket pair: {e}"))?;
        let config = boringtun::device::DeviceConfig {
            n_threads: 2,
            use_connected_socket: true,
            use_multi_queue: false,
            uapi_fd: theirs.into_raw_fd(),
        };
        let handle = boringtun::device::DeviceHandle::new(iface, config)
            .map_err(|e| format!("cannot create the wireguard interface {iface}: {e:?}"))?;
        Ok(Box::new(BoringtunDevice {
            iface: iface.to_string(),
            handle,
            api: ours,
        }))
    }
}

impl TunnelDevice for BoringtunDevice {
    fn configure(
        &mut self,
        key: &WgKey,
        listen_port: u16,
        peers: &[PeerSpec],
    ) -> Result<(), String> {
        match uapi_set(&mut self.api, &uapi_body(key, listen_port, peers)) {
            Ok(()) => Ok(()),
            Err(98) => Err(port_in_use(listen_port)),
            Err(e) => Err(format!(
                "the wireguard interface {} refused its configuration (errno {e})",
                self.iface
            )),
        }
    }

    fn remove(self: Box<Self>) {
        let BoringtunDevice {
            mut handle, api, ..
        } = *self;
        // The device first: stops its threads and closes the tun.
        handle.clean();
        drop(handle);
        drop(api);
    }
}

/// Kernel WireGuard, configured over netlink (`wireguard-control`): no
/// `wg` process, the key goes to the kernel in a netlink message.
pub struct KernelBackend;

struct KernelDevice {
    iface: wireguard_control::InterfaceName,
}

/// Our tunnel's configuration as `wireguard-control`'s update: the key,
/// the port, and the peers replacing any others (each with its ranges,
/// replacing its old ones, and, with an endpoint, a 25 s keepalive, as
/// [`uapi_body`] says to boringtun).
pub fn kernel_update(
    key: &WgKey,
    listen_port: u16,
    peers: &[PeerSpec],
) -> wireguard_control::DeviceUpdate {
    let peers: Vec<wireguard_control::PeerConfigBuilder> = peers
        .iter()
        .map(|p| {
            let mut b =
                wireguard_control::PeerConfigBuilder::new(&wireguard_control::Key(p.public_key))
                    .replace_allowed_ips();
            if let Some(e) = p.endpoint {
                b = b.set_endpoint(e).set_persistent_keepalive_interval(25);
            }
            for a in &p.allowed_ips {
                b = b.add_allowed_ip(std::net::IpAddr::V4(a.addr()), a.prefix_len());
            }
            b
        })
        .collect();
    wireguard_control::DeviceUpdate::new()
        .set_private_key(wireguard_control::Key(key.0))
        .set_listen_port(listen_port)
        .replace_peers()
        .add_peers(&peers)
}

impl TunnelBackend for KernelBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kernel
    }

    fn create(&self, iface: &str) -> Result<Box<dyn TunnelDevice>, String> {
        let name: wireguard_control::InterfaceName = iface
            .parse()
            .map_err(|e| format!("bad wireguard interface name {iface}: {e:?}"))?;
        // An empty update makes the link (kind wireguard) and sets nothing.
        wireguard_control::DeviceUpdate::new()
            .apply(&name, wireguard_control::Backend::Kernel)
            .map_err(|e| format!("cannot create the wireguard interface {iface}: {e}"))?;
        Ok(Box::new(KernelDevice { iface: name }))
    }
}

impl TunnelDevice for KernelDevice {
    fn configure(
        &mut self,
        key: &WgKey,
        listen_port: u16,
        peers: &[PeerSpec],
    ) -> Result<(), String> {
        kernel_update(key, listen_port, peers)
            .apply(&self.iface, wireguard_control::Backend::Kernel)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AddrInUse => port_in_use(listen_port),
                _ => format!(
                    "the wireguard interface {} refused its configuration: {e}",
                    self.iface.as_str_lossy()
                ),
            })
    }

    fn remove(self: Box<Self>) {
        let _ = wireguard_control::Device::get(&self.iface, wireguard_control::Backend::Kernel)
            .and_then(|d| d.delete());
    }
}

/// The seam between the network plug-in and the host's tunnels.
#[async_trait]
pub trait Tunnels: Send + Sync {
    /// `kernel` or `userspace (...)`.
    fn mode(&self) -> String;
    /// Bring the tunnel up (replacing one of the same interface). On error
    /// nothing of it is left, and the tunnel it was to replace, if one ran
    /// here, runs on or runs again as it was (the error says when it could
    /// not be brought back): a failed replacement never leaves a network
    /// without the tunnel it had.
    async fn up(&self, spec: TunnelSpec) -> Result<(), String>;
    /// Remove the interface, its routes, rule and chains; what is already
    /// gone is fine.
    async fn down(&self, iface: &str) -> Result<(), String>;
    /// Whether the interface is up (run by this process).
    fn is_up(&self, iface: &str) -> bool;
    /// Remove every interface, policy rule, routing table and chain of
    /// ours on the host whose interface is not in `keep` nor up here (the
    /// leftovers of networks deleted while the agent was down, or of a
    /// crash in the middle of a provisioning); what is not ours (another
    /// name, another priority or table range) is never touched. Returns
    /// what it removed.
    async fn sweep(&self, keep: &BTreeSet<String>) -> Result<Vec<String>, String>;
}

/// A tunnel up: its interface and what it was made from, kept (the key
/// too, in memory only) to bring it back as it was when a replacement
/// fails after it went down.
struct Running {
    device: Box<dyn TunnelDevice>,
    spec: TunnelSpec,
}

/// The host's tunnels: interfaces made by a [`TunnelBackend`], with their
/// routes, policy rule and firewall chains.
#[derive(Clone)]
pub struct HostTunnels {
    backend: Arc<dyn TunnelBackend>,
    /// `agentctl status`'s words for the backend.
    mode: String,
    running: Arc<Mutex<HashMap<String, Running>>>,
    /// Interfaces being brought up (the sweep leaves them alone).
    starting: Arc<Mutex<HashSet<String>>>,
    /// This agent's node scope, marked on its chains ([`owner_mark`]).
    owner: String,
    /// The preferred table of an interface ([`table_of`]; unit tests force
    /// collisions with another).
    table_base: fn(&str) -> u32,
}

impl Default for HostTunnels {
    fn default() -> Self {
        Self::new()
    }
}

impl HostTunnels {
    /// With the backend [`selected`] for this process.
    pub fn new() -> Self {
        Self::with_backend(selected_backend(), &host_mode())
    }

    /// With `backend`, described as `mode` in `agentctl status`.
    pub fn with_backend(backend: Arc<dyn TunnelBackend>, mode: &str) -> Self {
        Self {
            backend,
            mode: mode.to_string(),
            running: Arc::default(),
            starting: Arc::default(),
            owner: "unscoped".into(),
            table_base: table_of,
        }
    }

    /// Prefer `base`'s tables rather than [`table_of`]'s (to force two
    /// interfaces onto the same one).
    #[cfg(test)]
    fn with_table_base(mut self, base: fn(&str) -> u32) -> Self {
        self.table_base = base;
        self
    }

    /// Mark the chains as this agent's (its node scope): the sweep only
    /// ever removes tunnels with this mark, never another agent's.
    pub fn owned_by(mut self, owner: &str) -> Self {
        self.owner = owner.to_string();
        self
    }
}

/// Run `prog args`; its stderr in the error.
fn run(prog: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Run `prog args`; its stdout.
fn output(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether `name` is an interface name we make ([`iface_name`]).
pub fn is_our_iface(name: &str) -> bool {
    name.len() == 15
        && name.starts_with("wg")
        && name[2..].bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The comment of the first rule of a tunnel's filter chain: which agent
/// (node scope) owns it. The chain is made first and removed last, so
/// every route, rule and table of a tunnel has it while they exist.
pub fn owner_mark(owner: &str) -> String {
    format!("agent-owner={owner}")
}

/// The interfaces whose filter chain carries `mark`, in `iptables -S`
/// text (`-A AGENT-wg… -m comment --comment <mark>` lines).
pub fn marked_ifaces(chains: &str, mark: &str) -> BTreeSet<String> {
    chain_comments(chains)
        .filter(|(_, comment)| *comment == mark)
        .map(|(iface, _)| iface.to_string())
        .collect()
}

/// The tables our chains record ([`table_mark`]) in `iptables -S` text,
/// by interface.
pub fn recorded_tables(chains: &str) -> HashMap<String, u32> {
    chain_comments(chains)
        .filter_map(|(iface, comment)| {
            let t = comment.strip_prefix("agent-table=")?.parse().ok()?;
            Some((iface.to_string(), t))
        })
        .collect()
}

/// `(interface, comment)` of each `-A AGENT-wg… -m comment --comment <c>`
/// line of `iptables -S` text.
fn chain_comments(chains: &str) -> impl Iterator<Item = (&str, &str)> {
    chains.lines().filter_map(|l| {
        let mut w = l.split_whitespace();
        if w.next() != Some("-A") {
            return None;
        }
        let iface = w.next()?.strip_prefix("AGENT-")?;
        let comment = w.skip_while(|t| *t != "--comment").nth(1)?;
        is_our_iface(iface).then_some((iface, comment.trim_matches('"')))
    })
}

/// Every routing table in use on the host: named by a policy rule or a
/// route, or recorded on one of our chains (chosen, its routes not in yet).
fn tables_in_use() -> Result<BTreeSet<u32>, String> {
    let mut used = tables_named(&output("ip", &["-4", "rule", "show"])?);
    used.extend(tables_named(&output(
        "ip",
        &["-4", "route", "show", "table", "all"],
    )?));
    used.extend(recorded_tables(&iptables_out(&["-S"])?).into_values());
    Ok(used)
}

/// Where the agents of a host take turns choosing tables, so two tunnels
/// coming up at once (in this process or another) never pick the same.
/// Inside `/run/agent`, the unit's `RuntimeDirectory`: the only part of
/// `/run` the service may write (`ProtectSystem=strict`).
const TABLE_LOCK: &str = "/run/agent/wireguard-tables.lock";

/// Hold [`TABLE_LOCK`] while the open file lives. Without it (no writable
/// `/run/agent`) the choice goes on unlocked: a race then needs two names
/// hashing alike coming up at the same instant.
fn lock_tables() -> Option<std::fs::File> {
    let dir = Path::new(TABLE_LOCK).parent().unwrap_or(Path::new("/run"));
    let locked = std::fs::create_dir_all(dir)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(TABLE_LOCK)
        })
        .and_then(|f| f.lock().map(|()| f));
    match locked {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(path = TABLE_LOCK, error = %e, "cannot lock the wireguard table choice; choosing unlocked");
            None
        }
    }
}

/// The table of interface `iface` to clear: the one its chain records;
/// else (a tunnel made before tables were recorded, whose table was its
/// preferred one `base`, or one cut before its table was chosen) `base`,
/// unless another tunnel's chain records that one: its name hashed alike,
/// and its table is not ours to clear.
fn table_to_clear(iface: &str, base: u32) -> Option<u32> {
    let recorded = recorded_tables(&iptables_out(&["-S"]).ok()?);
    if let Some(t) = recorded.get(iface) {
        return Some(*t);
    }
    (!recorded.values().any(|x| *x == base)).then_some(base)
}

fn iptables_out(args: &[&str]) -> Result<String, String> {
    let mut a = vec!["-w", "5"];
    a.extend_from_slice(args);
    output("iptables", &a)
}

fn iptables(args: &[&str]) -> Result<(), String> {
    let mut a = vec!["-w", "5"];
    a.extend_from_slice(args);
    run("iptables", &a)
}

/// Send one UAPI `set` and read its `errno`.
fn uapi_set(api: &mut UnixStream, body: &str) -> Result<(), i32> {
    api.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let msg = format!("set=1\n{body}\n");
    api.write_all(msg.as_bytes()).map_err(|_| -1)?;
    let mut reader = BufReader::new(api.try_clone().map_err(|_| -1)?);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(|_| -1)? == 0 {
            return Err(-1);
        }
        if let Some(n) = line.trim().strip_prefix("errno=") {
            // Drain the blank line that ends the answer.
            let mut end = String::new();
            reader.read_line(&mut end).ok();
            return match n.parse::<i32>() {
                Ok(0) => Ok(()),
                Ok(e) => Err(e),
                Err(_) => Err(-1),
            };
        }
    }
}

fn uapi_body(key: &WgKey, listen_port: u16, peers: &[PeerSpec]) -> String {
    let mut b = format!(
        "private_key={}\nlisten_port={}\nreplace_peers=true\n",
        hex::encode(key.0),
        listen_port
    );
    for p in peers {
        b.push_str(&format!(
            "public_key={}\nreplace_allowed_ips=true\n",
            hex::encode(p.public_key)
        ));
        if let Some(e) = p.endpoint {
            b.push_str(&format!("endpoint={e}\npersistent_keepalive_interval=25\n"));
        }
        for a in &p.allowed_ips {
            b.push_str(&format!("allowed_ip={a}\n"));
        }
    }
    b
}

/// Routes, rule and firewall of a tunnel whose interface exists; its
/// table is the first free one from `base` ([`pick_table`]).
fn plumb(spec: &TunnelSpec, owner: &str, base: u32) -> Result<(), String> {
    let (wg, br) = (spec.iface.as_str(), spec.bridge.as_str());
    // The chain first, marked: whatever follows is found by it after a
    // crash (the sweep), and it goes last in `unplumb`.
    let chain = chain_of(wg);
    iptables(&["-N", &chain])?;
    iptables(&[
        "-A",
        &chain,
        "-m",
        "comment",
        "--comment",
        &owner_mark(owner),
    ])?;
    // Then the table: chosen among those nothing uses, and recorded on the
    // chain before the lock goes, so the next choice sees it taken.
    let lock = lock_tables();
    let table = pick_table(base, &tables_in_use()?);
    iptables(&[
        "-A",
        &chain,
        "-m",
        "comment",
        "--comment",
        &table_mark(table),
    ])?;
    drop(lock);
    let table = table.to_string();
    let mtu = TUNNEL_MTU.to_string();
    run("ip", &["link", "set", "dev", wg, "mtu", &mtu, "up"])?;
    // Replies from a peer come in on the tunnel from addresses the main
    // table routes elsewhere: a strict reverse-path filter inherited from
    // `default` would drop them (`all` = 1 still wins; README says so).
    std::fs::write(format!("/proc/sys/net/ipv4/conf/{wg}/rp_filter"), "0")
        .map_err(|e| format!("cannot set rp_filter of {wg}: {e}"))?;
    for p in &spec.peers {
        for a in &p.allowed_ips {
            run(
                "ip",
                &[
                    "route",
                    "replace",
                    &a.to_string(),
                    "dev",
                    wg,
                    "table",
                    &table,
                ],
            )?;
        }
    }
    run(
        "ip",
        &[
            "route",
            "replace",
            "unreachable",
            "default",
            "table",
            &table,
        ],
    )?;
    run(
        "ip",
        &[
            "rule",
            "add",
            "iif",
            br,
            "lookup",
            &table,
            "priority",
            RULE_PRIORITY,
        ],
    )?;
    let sub = spec.subnet.to_string();
    let rules: [&[&str]; 10] = [
        &["-i", br, "-o", br, "-j", "ACCEPT"],
        &[
            "-i",
            br,
            "-o",
            wg,
            "-p",
            "tcp",
            "--tcp-flags",
            "SYN,RST",
            "SYN",
            "-j",
            "TCPMSS",
            "--clamp-mss-to-pmtu",
        ],
        &["-i", br, "-o", wg, "-s", &sub, "-j", "ACCEPT"],
        &["-i", wg, "-o", br, "-d", &sub, "-j", "ACCEPT"],
        // Path MTU: the host tells the bridge a packet is too big for the tunnel.
        &[
            "-o",
            br,
            "-p",
            "icmp",
            "--icmp-type",
            "fragmentation-needed",
            "-j",
            "ACCEPT",
        ],
        &["-i", br, "-j", "DROP"],
        &["-o", br, "-j", "DROP"],
        &["-i", wg, "-j", "DROP"],
        &["-o", wg, "-j", "DROP"],
        &["-j", "RETURN"],
    ];
    for r in rules {
        let mut a = vec!["-A", chain.as_str()];
        a.extend_from_slice(r);
        iptables(&a)?;
    }
    for hook in ["INPUT", "FORWARD", "OUTPUT"] {
        iptables(&["-I", hook, "1", "-j", &chain])?;
    }
    iptables(&["-t", "nat", "-N", &chain])?;
    iptables(&[
        "-t", "nat", "-A", &chain, "-s", &sub, "-o", wg, "-j", "ACCEPT",
    ])?;
    iptables(&["-t", "nat", "-I", "POSTROUTING", "1", "-j", &chain])?;
    Ok(())
}

/// Remove the routes, rule and chains of interface `iface`, whose table
/// preferred `base` ([`table_of`]'s but in tests): the chain is derived
/// from its name, the table is the one [`table_to_clear`] finds; errors of
/// what is already gone are ignored. The filter chain, made first by
/// `plumb`, goes last.
fn unplumb(iface: &str, base: u32) {
    let chain = chain_of(iface);
    if let Some(table) = table_to_clear(iface, base) {
        let table = table.to_string();
        while run("ip", &["rule", "del", "lookup", &table]).is_ok() {}
        let _ = run("ip", &["route", "flush", "table", &table]);
    }
    // A tun of ours that outlived its device (it should not) goes too.
    let _ = run("ip", &["link", "del", "dev", iface]);
    while iptables(&["-t", "nat", "-D", "POSTROUTING", "-j", &chain]).is_ok() {}
    let _ = iptables(&["-t", "nat", "-F", &chain]);
    let _ = iptables(&["-t", "nat", "-X", &chain]);
    for hook in ["INPUT", "FORWARD", "OUTPUT"] {
        while iptables(&["-D", hook, "-j", &chain]).is_ok() {}
    }
    let _ = iptables(&["-F", &chain]);
    let _ = iptables(&["-X", &chain]);
}

/// Wait a little for interface `iface` to go (a tun goes with its
/// device's last fd), then delete whatever is left of it.
fn wait_gone(iface: &str) {
    for _ in 0..50 {
        if !std::path::Path::new(&format!("/sys/class/net/{iface}")).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = run("ip", &["link", "del", "dev", iface]);
}

/// Refuse a port another socket holds, and an endpoint with no route.
fn preflight(spec: &TunnelSpec, check_port: bool) -> Result<(), String> {
    if check_port {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, spec.listen_port)).map_err(|e| {
            format!(
                "wireguard_listen_port {} cannot be used on this node: {e}",
                spec.listen_port
            )
        })?;
    }
    for p in &spec.peers {
        if let Some(e) = p.endpoint {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
                .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
            s.connect(e)
                .map_err(|err| format!("peer endpoint {e} is unreachable from this node: {err}"))?;
        }
    }
    Ok(())
}

impl HostTunnels {
    /// Remove the tunnels whose chain carries this agent's mark and that
    /// neither `keep` names nor this process is bringing up or runs.
    fn sweep_blocking(&self, keep: &BTreeSet<String>) -> Result<Vec<String>, String> {
        // The host first, then `starting`, then `running`: a tunnel whose
        // chain the listing shows entered `starting` before its chain was
        // made and leaves it only once it is in `running`, so read in this
        // order it is in one of them. Read before the listing (or the other
        // way round), a tunnel coming up in between would be swept.
        let found = marked_ifaces(&iptables_out(&["-S"])?, &owner_mark(&self.owner));
        let starting = self.starting_lock().clone();
        let running: HashSet<String> = self.lock().keys().cloned().collect();
        let gone: Vec<String> = found
            .into_iter()
            .filter(|i| !keep.contains(i) && !starting.contains(i) && !running.contains(i))
            .collect();
        for iface in &gone {
            unplumb(iface, (self.table_base)(iface));
        }
        Ok(gone)
    }

    fn up_blocking(&self, spec: &TunnelSpec) -> Result<(), String> {
        self.starting_lock().insert(spec.iface.clone());
        let r = self.up_inner(spec);
        self.starting_lock().remove(&spec.iface);
        r
    }

    fn up_inner(&self, spec: &TunnelSpec) -> Result<(), String> {
        // Checked before the tunnel it replaces goes down: a refused port
        // or endpoint leaves the running one as it was. Its own port is
        // not "taken".
        let before = self.lock().get(&spec.iface).map(|r| r.spec.clone());
        let running_port = before.as_ref().map(|b| b.listen_port);
        preflight(spec, running_port != Some(spec.listen_port))?;
        self.down_blocking(&spec.iface);
        let Err(e) = self.make(spec) else {
            return Ok(());
        };
        // Failed after the old one went down: fail closed (nothing of the
        // new one is left) and bring the old one back as it ran, so its
        // network is not left without its tunnel.
        let Some(before) = before else {
            return Err(e);
        };
        match self.make(&before) {
            Ok(()) => Err(format!(
                "{e}; the tunnel it was to replace runs again as it was"
            )),
            Err(again) => Err(format!(
                "{e}; the tunnel it was to replace could not be brought back either: {again}"
            )),
        }
    }

    /// Make the interface of `spec`, configure and plumb it; on error
    /// nothing of it is left.
    fn make(&self, spec: &TunnelSpec) -> Result<(), String> {
        let mut device = self.backend.create(&spec.iface)?;
        let configured = device
            .configure(&spec.key, spec.listen_port, &spec.peers)
            .and_then(|()| plumb(spec, &self.owner, (self.table_base)(&spec.iface)));
        if let Err(e) = configured {
            device.remove();
            unplumb(&spec.iface, (self.table_base)(&spec.iface));
            wait_gone(&spec.iface);
            return Err(e);
        }
        let running = Running {
            device,
            spec: spec.clone(),
        };
        self.lock().insert(spec.iface.clone(), running);
        Ok(())
    }

    fn down_blocking(&self, iface: &str) {
        let running = self.lock().remove(iface);
        unplumb(iface, (self.table_base)(iface));
        if let Some(r) = running {
            r.device.remove();
        }
        wait_gone(iface);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn starting_lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.starting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Tunnels for HostTunnels {
    fn mode(&self) -> String {
        self.mode.clone()
    }

    async fn up(&self, spec: TunnelSpec) -> Result<(), String> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.up_blocking(&spec))
            .await
            .map_err(|e| format!("wireguard task failed: {e}"))?
    }

    async fn down(&self, iface: &str) -> Result<(), String> {
        let me = self.clone();
        let iface = iface.to_string();
        tokio::task::spawn_blocking(move || me.down_blocking(&iface))
            .await
            .map_err(|e| format!("wireguard task failed: {e}"))
    }

    fn is_up(&self, iface: &str) -> bool {
        self.lock().contains_key(iface)
            && std::path::Path::new(&format!("/sys/class/net/{iface}")).exists()
    }

    async fn sweep(&self, keep: &BTreeSet<String>) -> Result<Vec<String>, String> {
        let (this, keep) = (self.clone(), keep.clone());
        tokio::task::spawn_blocking(move || this.sweep_blocking(&keep))
            .await
            .map_err(|e| format!("wireguard task failed: {e}"))?
    }
}

/// Records what the network plug-in asked of its tunnels (unit tests).
#[derive(Default)]
pub struct RecordingTunnels {
    /// `up <iface> <port> <peers>` / `down <iface>`, in order.
    pub calls: Mutex<Vec<String>>,
    /// Interfaces up.
    pub up: Mutex<HashMap<String, TunnelSpec>>,
    /// Make the next `up` fail with this; the tunnel it was to replace
    /// stays as it was, as [`Tunnels::up`] says.
    pub fail_up: Mutex<Option<String>>,
}

#[async_trait]
impl Tunnels for RecordingTunnels {
    fn mode(&self) -> String {
        "recording".into()
    }

    async fn up(&self, spec: TunnelSpec) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!(
            "up {} {} {}",
            spec.iface,
            spec.listen_port,
            spec.peers.len()
        ));
        if let Some(e) = self.fail_up.lock().unwrap().take() {
            return Err(e);
        }
        self.up.lock().unwrap().insert(spec.iface.clone(), spec);
        Ok(())
    }

    async fn down(&self, iface: &str) -> Result<(), String> {
        self.calls.lock().unwrap().push(format!("down {iface}"));
        self.up.lock().unwrap().remove(iface);
        Ok(())
    }

    fn is_up(&self, iface: &str) -> bool {
        self.up.lock().unwrap().contains_key(iface)
    }

    async fn sweep(&self, keep: &BTreeSet<String>) -> Result<Vec<String>, String> {
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        self.calls
            .lock()
            .unwrap()
            .push(format!("sweep keep [{}]", keep.join(" ")));
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_ours_and_fit_the_kernel() {
        let a = iface_name("agent-net-YMpYyGShfybHH");
        assert!(a.starts_with("wg") && a.len() == 15, "{a}");
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, iface_name("agent-n1-net-YMpYyGShfybHH"));
        assert!(chain_of(&a).len() <= 28);
        assert!(table_of(&a) >= 0x1000_0000);
        let k = WgKey([7; 32]);
        assert_eq!(format!("{k:?}"), "WgKey(<redacted>)");
    }

    #[test]
    fn the_sweep_finds_only_this_agents_marked_chains() {
        let ours = iface_name("agent-n1-net-a");
        let theirs = iface_name("agent-n2-net-a");
        let text = format!(
            "-P INPUT ACCEPT\n-N AGENT-{ours}\n-N AGENT-{theirs}\n-N AGENT-wgshort\n\
             -A INPUT -j AGENT-{ours}\n\
             -A AGENT-{ours} -m comment --comment agent-owner=n1\n\
             -A AGENT-{ours} -i br-1 -j DROP\n\
             -A AGENT-{theirs} -m comment --comment \"agent-owner=n2\"\n\
             -A AGENT-wgshort -m comment --comment agent-owner=n1\n\
             -A DOCKER-USER -m comment --comment agent-owner=n1 -j RETURN\n"
        );
        let found = marked_ifaces(&text, &owner_mark("n1"));
        assert_eq!(found, BTreeSet::from([ours.clone()]));
        assert_eq!(
            marked_ifaces(&text, &owner_mark("n2")),
            BTreeSet::from([theirs])
        );
        assert!(marked_ifaces(&text, &owner_mark("n3")).is_empty());
        assert!(is_our_iface(&ours) && !is_our_iface("wg0") && !is_our_iface("eth0"));
    }

    #[test]
    fn the_backend_is_kernel_where_the_probe_finds_it_else_userspace() {
        let asked = std::cell::Cell::new(0);
        let probe = |answer: bool| {
            let asked = &asked;
            move || {
                asked.set(asked.get() + 1);
                answer
            }
        };
        let auto_yes = select(None, probe(true));
        assert_eq!(auto_yes.kind, BackendKind::Kernel);
        assert_eq!(auto_yes.mode, "kernel (configured over netlink)");
        let auto_no = select(None, probe(false));
        assert_eq!(auto_no.kind, BackendKind::Userspace);
        assert_eq!(
            auto_no.mode,
            "userspace (boringtun over /dev/net/tun); no kernel wireguard on this host"
        );
        assert_eq!(select(Some("auto"), probe(true)).kind, BackendKind::Kernel);
        assert_eq!(asked.get(), 3);

        // The override to userspace does not even probe.
        let forced = select(Some("userspace"), probe(true));
        assert_eq!(forced.kind, BackendKind::Userspace);
        assert!(
            forced.mode.ends_with("AGENT_WIREGUARD=userspace"),
            "{}",
            forced.mode
        );
        assert_eq!(asked.get(), 3);

        // Kernel asked for where there is none: userspace, and it says so.
        let no_kernel = select(Some("kernel"), probe(false));
        assert_eq!(no_kernel.kind, BackendKind::Userspace);
        assert!(
            no_kernel.mode.starts_with("userspace")
                && no_kernel
                    .mode
                    .contains("AGENT_WIREGUARD=kernel but this host has no kernel wireguard"),
            "{}",
            no_kernel.mode
        );
        assert_eq!(
            select(Some(" kernel "), probe(true)).kind,
            BackendKind::Kernel
        );

        // A word it does not know: the probe decides, and the word is named.
        let odd = select(Some("wg"), probe(false));
        assert_eq!(odd.kind, BackendKind::Userspace);
        assert!(
            odd.mode.contains("AGENT_WIREGUARD=\"wg\" is not"),
            "{}",
            odd.mode
        );
        assert_eq!(select(Some("wg"), probe(true)).kind, BackendKind::Kernel);
    }

    fn two_peers() -> Vec<PeerSpec> {
        vec![
            PeerSpec {
                public_key: [2; 32],
                allowed_ips: vec![
                    "10.1.2.0/24".parse().unwrap(),
                    "10.1.9.0/25".parse().unwrap(),
                ],
                endpoint: Some("192.0.2.9:51821".parse().unwrap()),
            },
            PeerSpec {
                public_key: [3; 32],
                allowed_ips: vec!["10.1.3.0/24".parse().unwrap()],
                endpoint: None,
            },
        ]
    }

    #[test]
    fn kernel_update_carries_key_port_and_every_peer() {
        use wireguard_control::{AllowedIp, DeviceUpdate, Key, PeerConfigBuilder};
        let got = kernel_update(&WgKey([1; 32]), 51820, &two_peers());
        let want = DeviceUpdate::new()
            .set_private_key(Key([1; 32]))
            .set_listen_port(51820)
            .replace_peers()
            .add_peer(
                PeerConfigBuilder::new(&Key([2; 32]))
                    .replace_allowed_ips()
                    .set_endpoint("192.0.2.9:51821".parse().unwrap())
                    .set_persistent_keepalive_interval(25)
                    .add_allowed_ips(&[
                        "10.1.2.0/24".parse::<AllowedIp>().unwrap(),
                        "10.1.9.0/25".parse::<AllowedIp>().unwrap(),
                    ]),
            )
            .add_peer(
                // No endpoint: the peer calls us, no keepalive from here.
                PeerConfigBuilder::new(&Key([3; 32]))
                    .replace_allowed_ips()
                    .add_allowed_ip("10.1.3.0".parse().unwrap(), 24),
            );
        // Not `assert_eq!`: its message would print the (test) private key.
        assert!(got == want, "the kernel update differs from the spec");
        // Each part counts: another port, key, or peers merged in rather
        // than replacing the old ones, is not the same update.
        assert!(got != kernel_update(&WgKey([1; 32]), 51821, &two_peers()));
        assert!(got != kernel_update(&WgKey([4; 32]), 51820, &two_peers()));
        assert!(got != kernel_update(&WgKey([1; 32]), 51820, &two_peers()[..1]));
        let merged = DeviceUpdate::new()
            .set_private_key(Key([1; 32]))
            .set_listen_port(51820);
        assert!(kernel_update(&WgKey([1; 32]), 51820, &[]) != merged);
        assert!(kernel_update(&WgKey([1; 32]), 51820, &[]) == merged.replace_peers());
    }

    /// A backend that records what it is asked and can refuse a
    /// configuration, to see what [`HostTunnels`] does with it.
    #[derive(Default, Clone)]
    struct FakeBackend {
        calls: Arc<Mutex<Vec<String>>>,
        refuse: Option<String>,
    }

    struct FakeDevice(FakeBackend, String);

    impl TunnelBackend for FakeBackend {
        fn kind(&self) -> BackendKind {
            BackendKind::Kernel
        }
        fn create(&self, iface: &str) -> Result<Box<dyn TunnelDevice>, String> {
            self.calls.lock().unwrap().push(format!("create {iface}"));
            Ok(Box::new(FakeDevice(self.clone(), iface.to_string())))
        }
    }

    impl TunnelDevice for FakeDevice {
        fn configure(&mut self, _: &WgKey, port: u16, peers: &[PeerSpec]) -> Result<(), String> {
            self.0.calls.lock().unwrap().push(format!(
                "configure {} {port} {}",
                self.1,
                peers.len()
            ));
            self.0.refuse.clone().map_or(Ok(()), Err)
        }
        fn remove(self: Box<Self>) {
            self.0
                .calls
                .lock()
                .unwrap()
                .push(format!("remove {}", self.1));
        }
    }

    #[tokio::test]
    async fn a_tunnel_the_backend_refuses_is_removed_and_the_error_named() {
        let backend = FakeBackend {
            refuse: Some("wireguard_listen_port 0 is already in use on this node".into()),
            ..Default::default()
        };
        let tunnels = HostTunnels::with_backend(Arc::new(backend.clone()), "kernel (fake)")
            .owned_by("wg-unit-test");
        assert_eq!(tunnels.mode(), "kernel (fake)");
        // A name of ours that no host has: `unplumb` finds nothing of it.
        let iface = iface_name("agent-wg-unit-test-refused");
        let spec = TunnelSpec {
            iface: iface.clone(),
            bridge: "br-nonexistent".into(),
            subnet: "10.1.1.0/24".parse().unwrap(),
            key: WgKey([1; 32]),
            // Port 0: the pre-flight bind always succeeds.
            listen_port: 0,
            peers: two_peers()[1..].to_vec(),
        };
        let err = tunnels.up(spec).await.unwrap_err();
        assert_eq!(
            err,
            "wireguard_listen_port 0 is already in use on this node"
        );
        assert!(!tunnels.is_up(&iface));
        assert_eq!(
            *backend.calls.lock().unwrap(),
            vec![
                format!("create {iface}"),
                format!("configure {iface} 0 1"),
                format!("remove {iface}"),
            ]
        );
    }

    /// Removes everything of a test's tunnel when the test ends, however.
    struct Unplumb(String);

    impl Drop for Unplumb {
        fn drop(&mut self) {
            unplumb(&self.0, table_of(&self.0));
            let _ = run("ip", &["link", "del", "dev", &self.0]);
        }
    }

    fn test_spec(iface: &str, bridge: &str, key: u8, peers: Vec<PeerSpec>) -> TunnelSpec {
        TunnelSpec {
            iface: iface.into(),
            bridge: bridge.into(),
            subnet: "10.1.1.0/24".parse().unwrap(),
            key: WgKey([key; 32]),
            // Port 0: the pre-flight bind always succeeds.
            listen_port: 0,
            peers,
        }
    }

    /// One peer of key `key` routing `cidr`, with no endpoint (the
    /// pre-flight then needs no route anywhere).
    fn peer(key: u8, cidr: &str) -> Vec<PeerSpec> {
        vec![PeerSpec {
            public_key: [key; 32],
            allowed_ips: vec![cidr.parse().unwrap()],
            endpoint: None,
        }]
    }

    /// Whether this process can make links and chains (root, `ip`,
    /// `iptables`); the tests on the real host are skipped without.
    fn host_net_admin() -> bool {
        iptables_out(&["-S", "INPUT"]).is_ok() && output("ip", &["-4", "rule", "show"]).is_ok()
    }

    /// A backend whose interfaces are real (persistent tun) links, so
    /// `plumb` routes through them (root only), refusing any configuration whose key is
    /// one of `refused`, like a WireGuard that fails after the old tunnel
    /// went down.
    #[derive(Default, Clone)]
    struct DummyBackend {
        calls: Arc<Mutex<Vec<String>>>,
        refused: Arc<Mutex<Vec<[u8; 32]>>>,
    }

    struct DummyDevice(DummyBackend, String);

    impl TunnelBackend for DummyBackend {
        fn kind(&self) -> BackendKind {
            BackendKind::Kernel
        }
        fn create(&self, iface: &str) -> Result<Box<dyn TunnelDevice>, String> {
            self.calls.lock().unwrap().push(format!("create {iface}"));
            run("ip", &["tuntap", "add", "dev", iface, "mode", "tun"])?;
            Ok(Box::new(DummyDevice(self.clone(), iface.to_string())))
        }
    }

    impl TunnelDevice for DummyDevice {
        fn configure(&mut self, key: &WgKey, _: u16, peers: &[PeerSpec]) -> Result<(), String> {
            self.0.calls.lock().unwrap().push(format!(
                "configure {} key {} peers {}",
                self.1,
                key.0[0],
                peers.len()
            ));
            if self.0.refused.lock().unwrap().contains(&key.0) {
                return Err(format!("the wireguard interface {} refused it", self.1));
            }
            Ok(())
        }
        fn remove(self: Box<Self>) {
            self.0
                .calls
                .lock()
                .unwrap()
                .push(format!("remove {}", self.1));
            let _ = run("ip", &["link", "del", "dev", &self.1]);
        }
    }

    /// The table `iface`'s chain records, if it has one.
    fn table_now(iface: &str) -> Option<u32> {
        recorded_tables(&iptables_out(&["-S"]).unwrap())
            .get(iface)
            .copied()
    }

    fn routes_of(table: u32) -> String {
        output("ip", &["-4", "route", "show", "table", &table.to_string()]).unwrap()
    }

    /// Rules of the tunnels' priority that look `table` up.
    fn rules_of(table: u32) -> Vec<String> {
        output("ip", &["-4", "rule", "show"])
            .unwrap()
            .lines()
            .filter(|l| l.starts_with(&format!("{RULE_PRIORITY}:")))
            .filter(|l| l.trim_end().ends_with(&format!("lookup {table}")))
            // The test's bridges do not exist: `[detached]`, dropped here.
            .map(|l| {
                let w: Vec<&str> = l
                    .split_whitespace()
                    .filter(|w| *w != "[detached]")
                    .collect();
                w.join(" ")
            })
            .collect()
    }

    /// Issue 16 follow-up: a replacement (a takeover's new key and peers)
    /// that fails after its pre-flight, once the old tunnel is down, leaves
    /// nothing of itself and brings the old tunnel back as it ran: same
    /// key, peers, routes, rule and chain; the error says both. When the
    /// old one cannot come back either, nothing is left and the error says
    /// that.
    #[tokio::test]
    async fn a_replacement_failing_after_the_old_tunnel_went_down_brings_the_old_one_back() {
        if !host_net_admin() {
            eprintln!("skipped: needs root, ip and iptables");
            return;
        }
        let pid = std::process::id();
        let owner = format!("wg-unit-restore-{pid}");
        let backend = DummyBackend::default();
        let tunnels =
            HostTunnels::with_backend(Arc::new(backend.clone()), "dummy").owned_by(&owner);
        let iface = iface_name(&format!("agent-{owner}"));
        let _guard = Unplumb(iface.clone());
        let bridge = format!("br-r{pid}");
        let old = test_spec(&iface, &bridge, 1, peer(2, "10.1.3.0/24"));
        tunnels.up(old.clone()).await.unwrap();
        let table = table_now(&iface).unwrap();
        assert!(routes_of(table).contains(&format!("10.1.3.0/24 dev {iface}")));

        backend.refused.lock().unwrap().push([9; 32]);
        let new = test_spec(&iface, &bridge, 9, peer(3, "10.1.4.0/24"));
        let e = tunnels.up(new.clone()).await.unwrap_err();
        assert_eq!(
            e,
            format!(
                "the wireguard interface {iface} refused it; \
                 the tunnel it was to replace runs again as it was"
            )
        );
        assert!(tunnels.is_up(&iface));
        assert!(
            tunnels.lock().get(&iface).unwrap().spec == old,
            "the old key, port and peers"
        );
        let table = table_now(&iface).expect("the old tunnel's chain is back");
        let routes = routes_of(table);
        assert!(
            routes.contains(&format!("10.1.3.0/24 dev {iface}")),
            "{routes}"
        );
        assert!(!routes.contains("10.1.4.0/24"), "{routes}");
        assert_eq!(
            rules_of(table),
            vec![format!(
                "{RULE_PRIORITY}: from all iif {bridge} lookup {table}"
            )]
        );
        assert_eq!(
            *backend.calls.lock().unwrap(),
            vec![
                format!("create {iface}"),
                format!("configure {iface} key 1 peers 1"),
                format!("remove {iface}"),
                format!("create {iface}"),
                format!("configure {iface} key 9 peers 1"),
                format!("remove {iface}"),
                format!("create {iface}"),
                format!("configure {iface} key 1 peers 1"),
            ]
        );

        // The old one refused too: nothing is left, and the error says so.
        backend.refused.lock().unwrap().push([1; 32]);
        let e = tunnels.up(new).await.unwrap_err();
        assert_eq!(
            e,
            format!(
                "the wireguard interface {iface} refused it; the tunnel it was to \
                 replace could not be brought back either: the wireguard interface {iface} refused it"
            )
        );
        assert!(!tunnels.is_up(&iface));
        assert_eq!(table_now(&iface), None);
        assert!(!iptables_out(&["-S"])
            .unwrap()
            .contains(&format!("-N {}", chain_of(&iface))));
        assert_eq!(routes_of(table), "");
        assert!(rules_of(table).is_empty());
        assert!(!std::path::Path::new(&format!("/sys/class/net/{iface}")).exists());
    }

    /// A table every interface of this test prefers: a forced collision.
    fn colliding(_: &str) -> u32 {
        table_of(&format!("wg-unit-tables-{}", std::process::id()))
    }

    /// Issue 16 follow-up: two tunnels whose names hash to the same table
    /// get two tables; each keeps its own routes and rule when the other
    /// goes, and a restart (no state in memory) still removes the right
    /// one, by the record on its chain.
    #[tokio::test]
    async fn two_tunnels_whose_tables_collide_never_share_one() {
        if !host_net_admin() {
            eprintln!("skipped: needs root, ip and iptables");
            return;
        }
        let pid = std::process::id();
        let owner = format!("wg-unit-tables-{pid}");
        let backend = DummyBackend::default();
        let tunnels = HostTunnels::with_backend(Arc::new(backend.clone()), "dummy")
            .owned_by(&owner)
            .with_table_base(colliding);
        let a = iface_name(&format!("agent-{owner}-a"));
        let b = iface_name(&format!("agent-{owner}-b"));
        let (_ga, _gb) = (Unplumb(a.clone()), Unplumb(b.clone()));
        let (bra, brb) = (format!("br-a{pid}"), format!("br-b{pid}"));
        tunnels
            .up(test_spec(&a, &bra, 1, peer(2, "10.1.3.0/24")))
            .await
            .unwrap();
        tunnels
            .up(test_spec(&b, &brb, 1, peer(2, "10.1.4.0/24")))
            .await
            .unwrap();
        let (ta, tb) = (table_now(&a).unwrap(), table_now(&b).unwrap());
        assert_ne!(ta, tb, "one table each");
        // Bringing `b` up cleared what a tunnel of its name might have left
        // in its preferred table first: not `a`'s routes and rule there.
        // Probed deterministically: `b` takes the next free one after `a`'s.
        assert_eq!(tb, pick_table(colliding(""), &BTreeSet::from([ta])));
        assert!(routes_of(ta).contains(&format!("10.1.3.0/24 dev {a}")));
        assert!(!routes_of(ta).contains("10.1.4.0/24"));
        assert!(routes_of(tb).contains(&format!("10.1.4.0/24 dev {b}")));
        assert!(!routes_of(tb).contains("10.1.3.0/24"));
        assert_eq!(
            rules_of(ta),
            vec![format!("{RULE_PRIORITY}: from all iif {bra} lookup {ta}")]
        );
        assert_eq!(
            rules_of(tb),
            vec![format!("{RULE_PRIORITY}: from all iif {brb} lookup {tb}")]
        );

        // `a` goes: `b`'s table and rule stay.
        tunnels.down(&a).await.unwrap();
        assert_eq!(routes_of(ta), "");
        assert!(rules_of(ta).is_empty());
        assert!(routes_of(tb).contains(&format!("10.1.4.0/24 dev {b}")));
        assert_eq!(rules_of(tb).len(), 1);
        assert!(tunnels.is_up(&b));

        // After a restart (nothing in memory) `b` is still removed by the
        // table its chain records, not by its name's hash.
        let fresh = HostTunnels::with_backend(Arc::new(backend), "dummy")
            .owned_by(&owner)
            .with_table_base(colliding);
        fresh.down(&b).await.unwrap();
        assert_eq!(routes_of(tb), "");
        assert!(rules_of(tb).is_empty());
        assert_eq!(table_now(&b), None);
    }

    #[test]
    fn tables_are_probed_in_order_and_wrap_round() {
        let base = table_of("wgAnyName12345");
        assert_eq!(pick_table(base, &BTreeSet::new()), base);
        assert_eq!(pick_table(base, &BTreeSet::from([base])), base + 1);
        assert_eq!(
            pick_table(base, &BTreeSet::from([base, base + 1, base + 3])),
            base + 2
        );
        let last = TABLE_FIRST + TABLE_COUNT - 1;
        assert_eq!(pick_table(last, &BTreeSet::from([last])), TABLE_FIRST);
        assert_eq!(
            pick_table(last, &BTreeSet::from([last, TABLE_FIRST])),
            TABLE_FIRST + 1
        );
        // A base outside the range (none of ours) still lands inside it.
        assert!(pick_table(5, &BTreeSet::new()) >= TABLE_FIRST);

        let rules = "0:\tfrom all lookup local\n1000:\tfrom all iif br-1 lookup 268435457\n\
                     32766:\tfrom all lookup main\n";
        let routes = "unreachable default table 268435458\n10.1.3.0/24 dev wgx table 300 \n\
                      local 127.0.0.1 dev lo table local proto kernel\n";
        assert_eq!(tables_named(rules), BTreeSet::from([268435457]));
        assert_eq!(tables_named(routes), BTreeSet::from([300, 268435458]));
        let a = iface_name("agent-n1-net-a");
        let chains = format!(
            "-N AGENT-{a}\n-A AGENT-{a} -m comment --comment agent-owner=n1\n\
             -A AGENT-{a} -m comment --comment \"agent-table=268435459\"\n\
             -A AGENT-wgshort -m comment --comment agent-table=7\n"
        );
        assert_eq!(
            recorded_tables(&chains),
            HashMap::from([(a.clone(), 268435459)])
        );
        assert_eq!(
            marked_ifaces(&chains, &owner_mark("n1")),
            BTreeSet::from([a])
        );
    }

    /// The sweep on the real host (root and `iptables`; skipped without):
    /// a marked chain of a tunnel this process is bringing up, or runs, or
    /// that `keep` names, stays; only then is it swept.
    #[tokio::test]
    async fn the_sweep_spares_a_tunnel_coming_up_or_running_here() {
        if iptables_out(&["-S", "INPUT"]).is_err() {
            eprintln!("skipped: needs root and iptables");
            return;
        }
        let owner = format!("wg-unit-sweep-{}", std::process::id());
        let backend = FakeBackend::default();
        let tunnels = HostTunnels::with_backend(Arc::new(backend.clone()), "fake").owned_by(&owner);
        let iface = iface_name(&format!("agent-{owner}"));
        let _guard = Unplumb(iface.clone());
        let chain = chain_of(&iface);
        iptables(&["-N", &chain]).unwrap();
        iptables(&[
            "-A",
            &chain,
            "-m",
            "comment",
            "--comment",
            &owner_mark(&owner),
        ])
        .unwrap();
        let none = BTreeSet::new();

        tunnels.starting_lock().insert(iface.clone());
        assert!(tunnels.sweep(&none).await.unwrap().is_empty(), "coming up");
        tunnels.starting_lock().remove(&iface);
        let device = backend.create(&iface).unwrap();
        let spec = test_spec(&iface, "br-nonexistent", 1, Vec::new());
        tunnels
            .lock()
            .insert(iface.clone(), Running { device, spec });
        assert!(tunnels.sweep(&none).await.unwrap().is_empty(), "running");
        tunnels.lock().remove(&iface);
        let keep = BTreeSet::from([iface.clone()]);
        assert!(tunnels.sweep(&keep).await.unwrap().is_empty(), "kept");
        // Another agent's sweep (another mark) does not take it either.
        let other = HostTunnels::with_backend(Arc::new(backend), "fake")
            .owned_by(&format!("wg-unit-other-{}", std::process::id()));
        assert!(!other.sweep(&none).await.unwrap().contains(&iface));
        assert!(iptables_out(&["-S"])
            .unwrap()
            .contains(&format!("-N {chain}")));

        assert_eq!(tunnels.sweep(&none).await.unwrap(), vec![iface.clone()]);
        assert!(!iptables_out(&["-S"])
            .unwrap()
            .contains(&format!("-N {chain}")));
    }

    #[test]
    fn uapi_body_is_the_documented_text() {
        let spec = TunnelSpec {
            iface: "wgx".into(),
            bridge: "br-x".into(),
            subnet: "10.1.1.0/24".parse().unwrap(),
            key: WgKey([1; 32]),
            listen_port: 51820,
            peers: vec![PeerSpec {
                public_key: [2; 32],
                allowed_ips: vec!["10.1.2.0/24".parse().unwrap()],
                endpoint: Some("192.0.2.9:51821".parse().unwrap()),
            }],
        };
        let b = uapi_body(&spec.key, spec.listen_port, &spec.peers);
        assert!(b.starts_with(&format!(
            "private_key={}\nlisten_port=51820\n",
            "01".repeat(32)
        )));
        assert!(b.contains(&format!("public_key={}\n", "02".repeat(32))));
        assert!(b.contains("endpoint=192.0.2.9:51821\n"));
        assert!(b.ends_with("allowed_ip=10.1.2.0/24\n"));
    }
}
