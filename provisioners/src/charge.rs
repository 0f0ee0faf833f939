//! What a workload holds while it runs: its [`Charge`] on the node's
//! [`Resources`] and its [`Tenancy`] against its user's limits. Each type's
//! module computes its own ([`crate::Plugin::charge`],
//! [`crate::Plugin::tenancy`]); the agent's ledger sums them.
//!
//! Units: CPU in whole cores, memory and disk in MiB (a container's
//! writable layer is charged [`CONTAINER_LAYER_MIB`], less than the
//! protocol's GiB). The protocol's [`Capacity`] counts memory and disk in
//! GiB: see [`Resources::to_capacity_floor`] and
//! [`Resources::to_capacity_ceil`].

use reservation::workloads::DiskType;
use reservation::Capacity;
use serde::Serialize;

/// MiB in a GiB.
pub const MIB_PER_GIB: u64 = 1024;
/// Disk charged for a container's (or a k3s node's, beyond its size) writable
/// layer, on the root disk, in MiB.
pub const CONTAINER_LAYER_MIB: u64 = 256;

/// An amount of each resource: cores, MiB of memory, MiB of SSD and HDD.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub cpu: u64,
    pub memory_mib: u64,
    pub ssd_mib: u64,
    pub hdd_mib: u64,
}

/// What one workload holds while it runs.
pub type Charge = Resources;

impl std::fmt::Display for Resources {
    /// `cpu=2 memory=23.54GiB ssd=251GiB hdd=0GiB`, for log lines.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cpu={} memory={}GiB ssd={}GiB hdd={}GiB",
            self.cpu,
            gib(self.memory_mib),
            gib(self.ssd_mib),
            gib(self.hdd_mib)
        )
    }
}

impl Resources {
    pub const ZERO: Resources = Resources {
        cpu: 0,
        memory_mib: 0,
        ssd_mib: 0,
        hdd_mib: 0,
    };

    /// `mib` of disk of type `disk`.
    pub fn disk(disk: DiskType, mib: u64) -> Resources {
        match disk {
            DiskType::Ssd => Resources {
                ssd_mib: mib,
                ..Resources::ZERO
            },
            DiskType::Hdd => Resources {
                hdd_mib: mib,
                ..Resources::ZERO
            },
        }
    }

    pub fn saturating_add(self, o: Resources) -> Resources {
        Resources {
            cpu: self.cpu.saturating_add(o.cpu),
            memory_mib: self.memory_mib.saturating_add(o.memory_mib),
            ssd_mib: self.ssd_mib.saturating_add(o.ssd_mib),
            hdd_mib: self.hdd_mib.saturating_add(o.hdd_mib),
        }
    }

    pub fn saturating_sub(self, o: Resources) -> Resources {
        Resources {
            cpu: self.cpu.saturating_sub(o.cpu),
            memory_mib: self.memory_mib.saturating_sub(o.memory_mib),
            ssd_mib: self.ssd_mib.saturating_sub(o.ssd_mib),
            hdd_mib: self.hdd_mib.saturating_sub(o.hdd_mib),
        }
    }

    /// In the protocol's units, every figure rounded down to a whole GiB.
    pub fn to_capacity_floor(self) -> Capacity {
        Capacity::whole(
            self.cpu,
            self.memory_mib / MIB_PER_GIB,
            self.ssd_mib / MIB_PER_GIB,
            self.hdd_mib / MIB_PER_GIB,
        )
    }

    /// In the protocol's units, every figure rounded up to a whole GiB.
    pub fn to_capacity_ceil(self) -> Capacity {
        Capacity::whole(
            self.cpu,
            self.memory_mib.div_ceil(MIB_PER_GIB),
            self.ssd_mib.div_ceil(MIB_PER_GIB),
            self.hdd_mib.div_ceil(MIB_PER_GIB),
        )
    }
}

/// What one workload counts against its user's limits: networks, `debug`
/// reservations and published host ports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tenancy {
    pub networks: u64,
    pub debug: u64,
    pub ports: u64,
}

impl Tenancy {
    pub fn is_zero(&self) -> bool {
        *self == Tenancy::default()
    }

    pub fn saturating_add(self, o: Tenancy) -> Tenancy {
        Tenancy {
            networks: self.networks.saturating_add(o.networks),
            debug: self.debug.saturating_add(o.debug),
            ports: self.ports.saturating_add(o.ports),
        }
    }

    pub fn saturating_sub(self, o: Tenancy) -> Tenancy {
        Tenancy {
            networks: self.networks.saturating_sub(o.networks),
            debug: self.debug.saturating_sub(o.debug),
            ports: self.ports.saturating_sub(o.ports),
        }
    }
}

/// MiB as GiB: whole when it is, else with up to two decimals.
pub fn gib(mib: u64) -> String {
    if mib.is_multiple_of(MIB_PER_GIB) {
        format!("{}", mib / MIB_PER_GIB)
    } else {
        let s = format!("{:.2}", mib as f64 / MIB_PER_GIB as f64);
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}
