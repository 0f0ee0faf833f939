//! Capacity: what the node has ([`fingerprint`]), what workloads hold
//! ([`Ledger`]), and admission of a new workload against what is free.
//! What one workload holds ([`Charge`], [`Tenancy`]) is its type's plug-in's
//! to say (`provisioners::charge`, re-exported here).
//!
//! Units inside: CPU in whole cores, memory and disk in MiB (a container's
//! writable layer is charged 256 MiB, less than the protocol's GiB). The
//! protocol's [`reservation::Capacity`] counts memory and disk in GiB; see
//! [`Ledger::total_capacity`] and [`Ledger::used_capacity`] for the rounding.
//!
//! Invariants: a reservation id is charged at most once (adding it again
//! replaces its charge, releasing it twice releases once), so rebuilding from
//! the cache at start and charging again on a repeated poll never double
//! count; a workload that does not fit is refused before anything is created.

use std::collections::BTreeMap;

use crate::ids::IdKey;
use std::path::Path;

use provisioners::charge::gib;
pub use provisioners::charge::{Charge, Resources, Tenancy, CONTAINER_LAYER_MIB, MIB_PER_GIB};
pub use provisioners::registry::{charge_of, charge_of_reservation, tenancy_of};
use reservation::workloads::DiskType;
#[cfg(test)]
use reservation::Reservation;
use reservation::{Capacity, Workload};
use serde::Serialize;

/// Default of `--reserve-memory`: 2 GiB stay with the host.
pub const DEFAULT_RESERVE_MEMORY: u64 = 2 << 30;

/// The node's resources as found at start, and the part kept for the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Total {
    /// What the machine has.
    pub physical: Resources,
    /// What stays with the host (`--reserve-cpu`, `--reserve-memory`).
    pub reserved: Resources,
    /// What the agent's root disk is (`--disk-type`): containers' writable
    /// layers are charged on it.
    pub root_disk: DiskType,
}

impl Total {
    /// What workloads may take: physical less reserved.
    pub fn usable(&self) -> Resources {
        self.physical.saturating_sub(self.reserved)
    }
}

/// Parse `--disk-type` (`SSD` or `HDD`, any case).
pub fn parse_disk_type(s: &str) -> Result<DiskType, String> {
    match s.trim().to_ascii_uppercase().as_str() {
        "SSD" => Ok(DiskType::Ssd),
        "HDD" => Ok(DiskType::Hdd),
        _ => Err(format!("disk type {s:?} is not SSD or HDD")),
    }
}

/// Parse a size such as `--reserve-memory`: a number of bytes, or a number
/// with a binary unit `B`, `KiB`, `MiB`, `GiB`, `TiB` (`K`, `M`, `G`, `T`,
/// `KB`... are read as the same binary units), e.g. `2GiB`, `512 MiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "size {s:?}: unit {other:?} is not one of B, KiB, MiB, GiB, TiB"
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("size {s:?}: expected a number with an optional unit, e.g. 2GiB"))?;
    let bytes = n * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(format!("size {s:?} is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Find the node's resources: CPU cores this process may use, memory
/// (`MemTotal` of `/proc/meminfo`), and the size of the filesystem holding
/// `root`, all counted as `disk_type`. The disk figure is the filesystem's
/// size, not what is free now: the agent's own volumes live there, so "free
/// at start" would shrink with every restart. `reserve_cpu` cores and
/// `reserve_memory_bytes` (rounded up to a MiB) stay with the host.
///
/// A figure that cannot be read counts as 0, with a warning: admission then
/// refuses what needs it instead of the agent failing to start.
pub fn fingerprint(
    root: &Path,
    disk_type: DiskType,
    reserve_cpu: u32,
    reserve_memory_bytes: u64,
) -> Total {
    let cpu = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot count CPU cores; counting 0");
            0
        });
    let memory_mib = match std::fs::read_to_string("/proc/meminfo") {
        Ok(s) => {
            mem_total_kib(&s).unwrap_or_else(|| {
                tracing::warn!("/proc/meminfo has no MemTotal line; counting 0 memory");
                0
            }) / 1024
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read /proc/meminfo; counting 0 memory");
            0
        }
    };
    let disk_mib = match fs_size_bytes(root) {
        Ok(b) => b >> 20,
        Err(e) => {
            tracing::warn!(root = %root.display(), error = %e, "cannot measure the filesystem of the root; counting 0 disk");
            0
        }
    };
    let physical = Resources {
        cpu,
        memory_mib,
        ..Resources::ZERO
    }
    .saturating_add(Resources::disk(disk_type, disk_mib));
    Total {
        physical,
        reserved: Resources {
            cpu: reserve_cpu as u64,
            memory_mib: reserve_memory_bytes.div_ceil(1 << 20),
            ..Resources::ZERO
        },
        root_disk: disk_type,
    }
}

/// `MemTotal` in KiB from the text of `/proc/meminfo`.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Size in bytes of the filesystem holding `path` (statvfs; the nearest
/// existing ancestor when `path` does not exist yet).
fn fs_size_bytes(path: &Path) -> std::io::Result<u64> {
    statvfs(path).map(|(size, _)| size)
}

/// Bytes available to the agent on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    statvfs(path).map(|(_, avail)| avail)
}

/// (size, available) of the filesystem holding `path`.
fn statvfs(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => {
                p = Path::new(".");
                break;
            }
        }
    }
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((
        (st.f_blocks as u64).saturating_mul(frsize),
        (st.f_bavail as u64).saturating_mul(frsize),
    ))
}

/// Default of `--max-networks-per-user`.
pub const DEFAULT_MAX_NETWORKS_PER_USER: u64 = 16;
/// Default of `--max-debug-per-user`.
pub const DEFAULT_MAX_DEBUG_PER_USER: u64 = 2;
/// Default of `--max-ports-per-user`.
pub const DEFAULT_MAX_PORTS_PER_USER: u64 = 16;

/// The most of each a single user may hold on this node at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UserLimits {
    pub networks: u64,
    pub debug: u64,
    pub ports: u64,
}

impl Default for UserLimits {
    fn default() -> Self {
        Self {
            networks: DEFAULT_MAX_NETWORKS_PER_USER,
            debug: DEFAULT_MAX_DEBUG_PER_USER,
            ports: DEFAULT_MAX_PORTS_PER_USER,
        }
    }
}

/// Per-user figures for `agentctl status`: the limits and what each user
/// holds (users holding none of the three are left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantsSnapshot {
    pub limits: UserLimits,
    pub users: BTreeMap<String, Tenancy>,
}

/// Capacity figures for `agentctl status`, in the ledger's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub total: Resources,
    pub reserved: Resources,
    pub used: Resources,
    pub free: Resources,
    pub root_disk: &'static str,
    /// Workloads charged.
    pub workloads: usize,
}

/// Usage of the node by workloads, one charge per reservation id. Plain
/// data: share it as `Arc<Mutex<Ledger>>`.
#[derive(Debug, Clone)]
pub struct Ledger {
    total: Total,
    /// Keyed by [`IdKey`]: 10,000 charges on a full node, for as long as
    /// it runs, without a heap block per id.
    charges: BTreeMap<IdKey, Charge>,
    used: Resources,
    limits: UserLimits,
    /// Reservation id → (user, what it counts against the user's limits).
    owners: BTreeMap<IdKey, (String, Tenancy)>,
    /// User → what their reservations count, summed.
    per_user: BTreeMap<String, Tenancy>,
}

impl Ledger {
    pub fn new(total: Total) -> Self {
        Ledger {
            total,
            charges: BTreeMap::new(),
            used: Resources::ZERO,
            limits: UserLimits::default(),
            owners: BTreeMap::new(),
            per_user: BTreeMap::new(),
        }
    }

    /// A ledger that admits everything and still counts it: the engine's
    /// until it is given the node's (benches and tests that do not count
    /// capacity).
    pub fn unbounded() -> Self {
        let all = Resources {
            cpu: u64::MAX,
            memory_mib: u64::MAX,
            ssd_mib: u64::MAX,
            hdd_mib: u64::MAX,
        };
        Ledger::new(Total {
            physical: all,
            reserved: Resources::ZERO,
            root_disk: DiskType::Ssd,
        })
        .with_user_limits(UserLimits {
            networks: u64::MAX,
            debug: u64::MAX,
            ports: u64::MAX,
        })
    }

    /// Cap what one user may hold (default [`UserLimits::default`]).
    pub fn with_user_limits(mut self, limits: UserLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The per-user limits.
    pub fn user_limits(&self) -> UserLimits {
        self.limits
    }

    /// Whether reservation `id` of `user`, counting `t`, stays within the
    /// user's limits. An id already counted fits. The error names the
    /// limit, e.g. `per-user limit: user U already has 16 networks on this
    /// node, the most one user may hold (max_networks_per_user = 16)`.
    pub fn admit_user(&self, user: &str, id: &str, t: &Tenancy) -> Result<(), String> {
        if self.owners.contains_key(&IdKey::new(id)) {
            return Ok(());
        }
        let held = self.per_user.get(user).copied().unwrap_or_default();
        let checks = [
            (
                "networks",
                "max_networks_per_user",
                t.networks,
                held.networks,
                self.limits.networks,
            ),
            (
                "debug reservations",
                "max_debug_per_user",
                t.debug,
                held.debug,
                self.limits.debug,
            ),
            (
                "published host ports",
                "max_ports_per_user",
                t.ports,
                held.ports,
                self.limits.ports,
            ),
        ];
        for (what, key, asked, has, max) in checks {
            if asked > 0 && has.saturating_add(asked) > max {
                return Err(if asked == 1 {
                    format!(
                        "per-user limit: user {user} already has {has} {what} on this node, the most one user may hold ({key} = {max})"
                    )
                } else {
                    format!(
                        "per-user limit: user {user} already has {has} {what} on this node and asks {asked} more, past the most one user may hold ({key} = {max})"
                    )
                });
            }
        }
        Ok(())
    }

    /// Count reservation `id` of `user` against the user's limits.
    /// Counting an id again replaces its count.
    pub fn add_user(&mut self, id: &str, user: &str, t: Tenancy) {
        self.release_user(id);
        if t.is_zero() {
            return;
        }
        self.owners.insert(IdKey::new(id), (user.to_string(), t));
        let e = self.per_user.entry(user.to_string()).or_default();
        *e = e.saturating_add(t);
    }

    fn release_user(&mut self, id: &str) {
        if let Some((user, t)) = self.owners.remove(&IdKey::new(id)) {
            if let Some(e) = self.per_user.get_mut(&user) {
                *e = e.saturating_sub(t);
                if e.is_zero() {
                    self.per_user.remove(&user);
                }
            }
        }
    }

    /// What each user holds against the limits.
    pub fn tenants(&self) -> TenantsSnapshot {
        TenantsSnapshot {
            limits: self.limits,
            users: self.per_user.clone(),
        }
    }

    /// The charge of `w` on this node (container layers on its root disk).
    pub fn charge_of(&self, w: &Workload) -> Charge {
        charge_of(w, self.total.root_disk)
    }

    /// Whether `charge` fits in what is free, for reservation `id`. An id
    /// already charged fits (it holds its resources already). The error
    /// names the first resource short, e.g.
    /// `not enough memory: asked 4096 MiB, 1024 MiB free`.
    pub fn admit(&self, id: &str, charge: &Charge) -> Result<(), String> {
        if self.charges.contains_key(&IdKey::new(id)) {
            return Ok(());
        }
        let free = self.free();
        if charge.cpu > free.cpu {
            return Err(format!(
                "not enough cpu: asked {}, {} free",
                cores(charge.cpu),
                cores(free.cpu)
            ));
        }
        if charge.memory_mib > free.memory_mib {
            return Err(format!(
                "not enough memory: asked {} MiB, {} MiB free",
                charge.memory_mib, free.memory_mib
            ));
        }
        for (name, asked, left) in [
            ("SSD", charge.ssd_mib, free.ssd_mib),
            ("HDD", charge.hdd_mib, free.hdd_mib),
        ] {
            if asked > left {
                return Err(format!(
                    "not enough {name} disk: asked {} GiB, {} GiB free",
                    gib(asked),
                    gib(left)
                ));
            }
        }
        Ok(())
    }

    /// Charge reservation `id`. Charging an id again replaces its charge.
    pub fn add(&mut self, id: &str, charge: Charge) {
        if let Some(old) = self.charges.insert(IdKey::new(id), charge) {
            self.used = self.used.saturating_sub(old);
        }
        self.used = self.used.saturating_add(charge);
    }

    /// Release reservation `id`'s charge; releasing an unknown (or already
    /// released) id does nothing. Returns whether something was released.
    pub fn release(&mut self, id: &str) -> bool {
        self.release_user(id);
        match self.charges.remove(&IdKey::new(id)) {
            Some(c) => {
                self.used = self.used.saturating_sub(c);
                true
            }
            None => false,
        }
    }

    /// Forget every charge and charge each cached workload once (at start).
    /// A cached entry whose data does not parse is charged nothing.
    pub fn rebuild<'a>(&mut self, cached: impl IntoIterator<Item = &'a store::Cached>) {
        self.clear();
        for c in cached {
            self.charge_cached(c);
        }
    }

    /// Rebuild the maps as densely packed trees, once they were filled one
    /// charge at a time (start-up's pass over the cache, in id order).
    /// Why: ids inserted in order leave each `BTreeMap` node a little over
    /// half full; built from an ordered list, nodes are full. With 10,000
    /// cached that is ~0.5 MB of the idle agent's heap.
    pub fn compact(&mut self) {
        self.charges = std::mem::take(&mut self.charges).into_iter().collect();
        self.owners = std::mem::take(&mut self.owners).into_iter().collect();
    }

    /// Forget every charge (before charging the cache again).
    pub fn clear(&mut self) {
        self.charges.clear();
        self.used = Resources::ZERO;
        self.owners.clear();
        self.per_user.clear();
    }

    /// Charge one cached workload (again: its charge is replaced). One
    /// whose data does not parse is charged nothing.
    pub fn charge_cached(&mut self, c: &store::Cached) {
        let r = &c.reservation;
        let parsed = r
            .workload_type()
            .ok()
            .and_then(|k| Workload::parse(k, &r.data).ok());
        // Parsed once for both (it was parsed twice: a tenth of start-up's
        // pass over 10,000 cached).
        match &parsed {
            Some(w) => {
                self.add_user(&r.id, &r.user_id, tenancy_of(w));
                self.add(&r.id, charge_of(w, self.total.root_disk));
            }
            None => {
                tracing::warn!(reservation = %r.id, kind = %r.kind, "cached workload does not parse; charging nothing for it")
            }
        }
    }

    /// [`Ledger::rebuild`] from every workload in `store`, decoding one
    /// record at a time. Returns how many were charged; a record that
    /// cannot be read is skipped with a warning. (The daemon charges at
    /// start through `inventory::take`, which reads the cache once for
    /// reconciliation and the crash watch too.)
    pub fn rebuild_from_store(&mut self, store: &store::Store) -> usize {
        self.clear();
        for c in store.list() {
            match c {
                Ok(c) => self.charge_cached(&c),
                Err(e) => tracing::warn!(error = %e, "cannot read a cached workload; not charged"),
            }
        }
        self.charges.len()
    }

    /// Whether reservation `id` is charged.
    pub fn contains(&self, id: &str) -> bool {
        self.charges.contains_key(&IdKey::new(id))
    }

    /// What the machine has.
    pub fn total(&self) -> Resources {
        self.total.physical
    }

    /// What stays with the host.
    pub fn reserved(&self) -> Resources {
        self.total.reserved
    }

    /// What workloads hold.
    pub fn used(&self) -> Resources {
        self.used
    }

    /// What a new workload may still take: total less reserved less used.
    pub fn free(&self) -> Resources {
        self.total.usable().saturating_sub(self.used)
    }

    pub fn fingerprint(&self) -> &Total {
        &self.total
    }

    /// Number of charged workloads.
    pub fn len(&self) -> usize {
        self.charges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.charges.is_empty()
    }

    /// Capacity to register with the explorer: what workloads may take
    /// (total less reserved), memory and disk rounded **down** to whole GiB
    /// so the node never promises what it lacks.
    pub fn total_capacity(&self) -> Capacity {
        self.total.usable().to_capacity_floor()
    }

    /// Used capacity for the heartbeat, memory and disk rounded **up** to
    /// whole GiB (a 256 MiB container layer shows as 1 GiB of disk), so
    /// the explorer never sees a busy node as idle.
    pub fn used_capacity(&self) -> Capacity {
        self.used.to_capacity_ceil()
    }

    /// Figures for `agentctl status`.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            total: self.total(),
            reserved: self.reserved(),
            used: self.used(),
            free: self.free(),
            root_disk: self.total.root_disk.as_str(),
            workloads: self.charges.len(),
        }
    }
}

fn cores(n: u64) -> String {
    if n == 1 {
        "1 core".into()
    } else {
        format!("{n} cores")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reservation::{Identity, WorkloadType};
    use serde_json::json;

    #[test]
    fn resources_read_as_people_write_them() {
        let r = Resources {
            cpu: 2,
            memory_mib: 24_105,
            ssd_mib: 251 * 1024,
            hdd_mib: 0,
        };
        assert_eq!(r.to_string(), "cpu=2 memory=23.54GiB ssd=251GiB hdd=0GiB");
    }

    fn total(cpu: u64, mem_mib: u64, ssd_gib: u64, hdd_gib: u64) -> Total {
        Total {
            physical: Resources {
                cpu,
                memory_mib: mem_mib,
                ssd_mib: ssd_gib * 1024,
                hdd_mib: hdd_gib * 1024,
            },
            reserved: Resources::ZERO,
            root_disk: DiskType::Ssd,
        }
    }

    fn w(kind: WorkloadType, data: serde_json::Value) -> Workload {
        let raw = serde_json::value::to_raw_value(&data).unwrap();
        Workload::parse(kind, &raw).unwrap()
    }

    fn container(cpu: u32, mem: u64) -> Workload {
        w(
            WorkloadType::Container,
            json!({"flist": "busybox", "capacity": {"cpu": cpu, "memory": mem}}),
        )
    }

    fn volume(size: u64, t: &str) -> Workload {
        w(WorkloadType::Volume, json!({"size": size, "type": t}))
    }

    /// Charges and per-user counts are kept under each id's exact
    /// spelling: `01-1` is not `1-1`, whose charge it must not take for its
    /// own (an id already charged is admitted without a look at what is
    /// free).
    #[test]
    fn ids_are_charged_under_their_exact_spelling() {
        let mut l = Ledger::new(total(4, 8192, 100, 100)).with_user_limits(UserLimits {
            networks: 1,
            debug: 1,
            ports: 1,
        });
        let big = l.charge_of(&container(3, 512));
        l.add("1-1", big);
        l.admit("1-1", &big).unwrap();
        assert_eq!(
            l.admit("01-1", &big).unwrap_err(),
            "not enough cpu: asked 3 cores, 1 core free"
        );
        assert!(!l.release("01-1"));
        assert!(l.contains("1-1") && !l.contains("01-1") && !l.contains("1-01"));
        l.add("a-b", l.charge_of(&container(1, 64)));
        assert_eq!(l.snapshot().workloads, 2);
        assert!(l.release("1-1"));
        assert!(l.contains("a-b"));
        assert_eq!(l.snapshot().used.cpu, 1);

        let net = Tenancy {
            networks: 1,
            ..Tenancy::default()
        };
        l.add_user("7-1", "alice", net);
        l.admit_user("alice", "7-1", &net).unwrap();
        assert!(l.admit_user("alice", "07-1", &net).is_err());
        l.release("07-1");
        assert_eq!(l.tenants().users["alice"].networks, 1);
        l.release("7-1");
        assert!(l.tenants().users.is_empty());
    }

    #[test]
    fn charges_by_type() {
        let l = Ledger::new(total(4, 8192, 100, 100));
        let node = Identity::generate();
        let sealed = reservation::seal_for(node.id(), b"pw").unwrap();
        assert_eq!(
            l.charge_of(&container(2, 512)),
            Resources {
                cpu: 2,
                memory_mib: 512,
                ssd_mib: 256,
                hdd_mib: 0
            }
        );
        assert_eq!(
            l.charge_of(&volume(10, "HDD")),
            Resources::disk(DiskType::Hdd, 10 * 1024)
        );
        let zdb = w(
            WorkloadType::Zdb,
            json!({"size": 3, "mode": "seq", "password": sealed, "disk_type": "SSD"}),
        );
        assert_eq!(l.charge_of(&zdb), Resources::disk(DiskType::Ssd, 3 * 1024));
        let k8s = w(
            WorkloadType::Kubernetes,
            json!({"size": 2, "network_id": "n", "ip": "10.1.1.2", "cluster_secret": sealed, "master_ips": []}),
        );
        assert_eq!(
            l.charge_of(&k8s),
            Resources {
                cpu: 2,
                memory_mib: 4096,
                ssd_mib: 100 * 1024 + 256,
                hdd_mib: 0
            }
        );
        let net = w(
            WorkloadType::Network,
            json!({"name": "n", "ip_range": "10.1.0.0/16", "net_resources": []}),
        );
        assert_eq!(l.charge_of(&net), Resources::ZERO);
        let dbg = w(
            WorkloadType::Debug,
            json!({"host": "127.0.0.1", "port": 6379}),
        );
        assert_eq!(l.charge_of(&dbg), Resources::ZERO);
        // An HDD root disk takes the container layers.
        let mut t = total(4, 8192, 0, 100);
        t.root_disk = DiskType::Hdd;
        assert_eq!(Ledger::new(t).charge_of(&container(1, 64)).hdd_mib, 256);
    }

    #[test]
    fn admission_messages_name_what_is_short() {
        let mut t = total(4, 6144, 20, 0);
        t.reserved = Resources {
            cpu: 1,
            memory_mib: 2048,
            ..Resources::ZERO
        };
        let mut l = Ledger::new(t);
        l.add("1-1", l.charge_of(&container(1, 3072)));
        let c = l.charge_of(&container(1, 4096));
        assert_eq!(
            l.admit("2-1", &c).unwrap_err(),
            "not enough memory: asked 4096 MiB, 1024 MiB free"
        );
        let c = l.charge_of(&container(3, 64));
        assert_eq!(
            l.admit("2-1", &c).unwrap_err(),
            "not enough cpu: asked 3 cores, 2 cores free"
        );
        let c = l.charge_of(&volume(20, "SSD"));
        assert_eq!(
            l.admit("2-1", &c).unwrap_err(),
            "not enough SSD disk: asked 20 GiB, 19.75 GiB free"
        );
        let c = l.charge_of(&volume(1, "HDD"));
        assert_eq!(
            l.admit("2-1", &c).unwrap_err(),
            "not enough HDD disk: asked 1 GiB, 0 GiB free"
        );
        assert!(l.admit("2-1", &l.charge_of(&volume(19, "SSD"))).is_ok());
        // What a workload already holds is not asked again.
        assert!(l.admit("1-1", &l.charge_of(&container(1, 3072))).is_ok());
        assert_eq!(l.free().cpu, 2);
    }

    #[test]
    fn never_double_counts() {
        let mut l = Ledger::new(total(8, 8192, 100, 100));
        let c = l.charge_of(&container(2, 1024));
        l.add("1-1", c);
        l.add("1-1", c);
        assert_eq!(l.used().cpu, 2);
        assert_eq!(l.used().memory_mib, 1024);
        assert!(l.release("1-1"));
        assert!(!l.release("1-1"));
        assert_eq!(l.used(), Resources::ZERO);
        assert!(l.is_empty());
    }

    #[test]
    fn compacting_keeps_every_charge_and_owner() {
        let mut l = Ledger::new(total(64, 1 << 20, 100, 100));
        let c = l.charge_of(&container(1, 64));
        let net = tenancy_of(&w(
            WorkloadType::Network,
            json!({"name": "n", "ip_range": "10.1.0.0/16", "net_resources": []}),
        ));
        for i in 0..100 {
            l.add(&format!("{i}-1"), c);
            l.add_user(&format!("{i}-1"), "alice", net);
        }
        let (used, tenants) = (l.used(), l.tenants());
        l.compact();
        assert_eq!((l.len(), l.used()), (100, used));
        assert_eq!(l.tenants(), tenants);
        assert!(l.contains("42-1") && !l.contains("100-1"));
        assert!(l.release("42-1"));
        assert_eq!(l.tenants().users["alice"].networks, 99);
    }

    fn cached(
        node: &Identity,
        user: &Identity,
        id: &str,
        kind: WorkloadType,
        data: serde_json::Value,
    ) -> store::Cached {
        let raw = serde_json::value::to_raw_value(&data).unwrap();
        let r = Reservation {
            id: id.into(),
            node_id: node.id().into(),
            user_id: user.id().into(),
            kind: kind.as_str().into(),
            data: raw,
            created: Some(chrono::Utc::now()),
            duration: 3_600_000_000_000,
            ..Default::default()
        };
        let res = node.error_result(&r, "x");
        store::Cached::new(r, res)
    }

    #[test]
    fn rebuilt_from_the_store_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let node = Identity::generate();
        let user = Identity::generate();
        {
            let s = store::Store::open(dir.path()).unwrap();
            for c in [
                cached(
                    &node,
                    &user,
                    "1-1",
                    WorkloadType::Volume,
                    json!({"size": 5, "type": "HDD"}),
                ),
                cached(
                    &node,
                    &user,
                    "2-1",
                    WorkloadType::Container,
                    json!({"flist": "b", "capacity": {"cpu": 1, "memory": 512}}),
                ),
                cached(
                    &node,
                    &user,
                    "3-1",
                    WorkloadType::Container,
                    json!({"flist": "b"}),
                ), // bad data
            ] {
                let res = c.result.clone();
                s.record_provisioned(&c, &res).unwrap();
            }
            s.flush().unwrap();
        }
        let s = store::Store::open(dir.path()).unwrap();
        let mut l = Ledger::new(total(4, 4096, 10, 10));
        l.add(
            "2-1",
            Resources {
                cpu: 3,
                ..Resources::ZERO
            },
        ); // stale figure before rebuild
        assert_eq!(l.rebuild_from_store(&s), 2);
        assert_eq!(l.rebuild_from_store(&s), 2, "rebuilding twice counts once");
        assert_eq!(
            l.used(),
            Resources {
                cpu: 1,
                memory_mib: 512,
                ssd_mib: 256,
                hdd_mib: 5 * 1024
            }
        );
        assert_eq!(l.used_capacity(), Capacity::whole(1, 1, 1, 5));
    }

    fn user_of(kind: WorkloadType, data: serde_json::Value) -> Tenancy {
        tenancy_of(&w(kind, data))
    }

    #[test]
    fn per_user_limits_are_charged_named_and_released() {
        let mut l = Ledger::new(total(4, 8192, 100, 100)).with_user_limits(UserLimits {
            networks: 2,
            debug: 1,
            ports: 3,
        });
        let net = user_of(
            WorkloadType::Network,
            json!({"name": "n", "ip_range": "10.1.0.0/16", "net_resources": []}),
        );
        let dbg = user_of(
            WorkloadType::Debug,
            json!({"host": "127.0.0.1", "port": 6379}),
        );
        let two_ports = user_of(
            WorkloadType::Container,
            json!({"flist": "b", "capacity": {"cpu": 1, "memory": 64},
                   "ports": [{"container_port": 1, "host_port": 30001},
                             {"container_port": 2, "host_port": 30002}]}),
        );
        assert_eq!((net.networks, dbg.debug, two_ports.ports), (1, 1, 2));
        assert!(
            user_of(WorkloadType::Volume, json!({"size": 1, "type": "SSD"})) == Tenancy::default()
        );

        for id in ["1-1", "1-2"] {
            l.admit_user("alice", id, &net).unwrap();
            l.add_user(id, "alice", net);
        }
        assert_eq!(
            l.admit_user("alice", "1-3", &net).unwrap_err(),
            "per-user limit: user alice already has 2 networks on this node, the most one user may hold (max_networks_per_user = 2)"
        );
        // Another user is not held back by alice; an id already counted fits.
        l.admit_user("bob", "2-1", &net).unwrap();
        l.admit_user("alice", "1-2", &net).unwrap();

        l.add_user("1-4", "alice", dbg);
        assert_eq!(
            l.admit_user("alice", "1-5", &dbg).unwrap_err(),
            "per-user limit: user alice already has 1 debug reservations on this node, the most one user may hold (max_debug_per_user = 1)"
        );
        l.add_user("1-6", "alice", two_ports);
        assert_eq!(
            l.admit_user("alice", "1-7", &two_ports).unwrap_err(),
            "per-user limit: user alice already has 2 published host ports on this node and asks 2 more, past the most one user may hold (max_ports_per_user = 3)"
        );
        // Counting an id again replaces its count.
        l.add_user("1-6", "alice", two_ports);
        assert_eq!(
            l.tenants().users["alice"],
            Tenancy {
                networks: 2,
                debug: 1,
                ports: 2
            }
        );

        // Decommission releases.
        assert!(!l.release("1-1")); // no capacity charge, but the count goes
        l.release("1-4");
        l.release("1-6");
        l.admit_user("alice", "1-3", &net).unwrap();
        l.admit_user("alice", "1-7", &two_ports).unwrap();
        assert_eq!(
            l.tenants().users["alice"],
            Tenancy {
                networks: 1,
                debug: 0,
                ports: 0
            }
        );
        l.release("1-2");
        assert!(l.tenants().users.is_empty());
        assert_eq!(l.tenants().limits.networks, 2);
    }

    #[test]
    fn per_user_counts_are_rebuilt_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let node = Identity::generate();
        let user = Identity::generate();
        let s = store::Store::open(dir.path()).unwrap();
        for c in [
            cached(
                &node,
                &user,
                "1-1",
                WorkloadType::Network,
                json!({"name": "n", "ip_range": "10.1.0.0/16", "net_resources": []}),
            ),
            cached(
                &node,
                &user,
                "2-1",
                WorkloadType::Container,
                json!({"flist": "b", "capacity": {"cpu": 1, "memory": 64},
                       "ports": [{"container_port": 1, "host_port": 30001}]}),
            ),
        ] {
            let res = c.result.clone();
            s.record_provisioned(&c, &res).unwrap();
        }
        let mut l = Ledger::new(total(4, 4096, 10, 10)).with_user_limits(UserLimits {
            networks: 1,
            ..UserLimits::default()
        });
        l.add_user(
            "9-9",
            user.id(),
            Tenancy {
                networks: 5,
                ..Tenancy::default()
            },
        ); // stale
        l.rebuild_from_store(&s);
        l.rebuild_from_store(&s);
        assert_eq!(
            l.tenants().users[user.id()],
            Tenancy {
                networks: 1,
                debug: 0,
                ports: 1
            }
        );
        let net = Tenancy {
            networks: 1,
            ..Tenancy::default()
        };
        assert!(l
            .admit_user(user.id(), "3-1", &net)
            .unwrap_err()
            .contains("max_networks_per_user = 1"));
    }

    #[test]
    fn protocol_units_round_total_down_and_used_up() {
        let mut t = total(4, 3900, 0, 0);
        t.physical.ssd_mib = 10 * 1024 + 500;
        t.reserved.memory_mib = 100;
        let mut l = Ledger::new(t);
        assert_eq!(l.total_capacity(), Capacity::whole(4, 3, 10, 0));
        l.add(
            "1-1",
            Resources {
                memory_mib: 1025,
                ..Resources::ZERO
            },
        );
        assert_eq!(l.used_capacity().mru, 2.0);
        let snap = l.snapshot();
        assert_eq!(snap.free.memory_mib, 3900 - 100 - 1025);
        assert_eq!(snap.root_disk, "SSD");
    }

    #[test]
    fn fingerprint_reads_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let t = fingerprint(&dir.path().join("not/yet"), DiskType::Hdd, 1, 1 << 30);
        assert!(t.physical.cpu >= 1);
        assert!(t.physical.memory_mib > 64, "{t:?}");
        assert!(t.physical.hdd_mib > 0 && t.physical.ssd_mib == 0, "{t:?}");
        assert_eq!(
            t.reserved,
            Resources {
                cpu: 1,
                memory_mib: 1024,
                ..Resources::ZERO
            }
        );
        assert_eq!(t.usable().cpu, t.physical.cpu - 1);
        assert_eq!(
            mem_total_kib("MemFree: 1 kB\nMemTotal:  16384 kB\n"),
            Some(16384)
        );
        assert_eq!(parse_disk_type("hdd"), Ok(DiskType::Hdd));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("2 GB of RAM").unwrap_err().contains("unit"));
        assert!(parse_size("lots").is_err());
        assert!(parse_disk_type("nvme").unwrap_err().contains("nvme"));
    }
}
