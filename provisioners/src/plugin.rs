//! The typed seam of one workload type ([`Plugin`]) and its two erased
//! forms: every plug-in is a [`Provisioner`] (the engine's `&Workload`
//! seam, by the blanket impl below), and [`KindOf`] is its type-level side
//! ([`Kind`]: build, charge, tenancy, names) for the registry's list.
//!
//! The step from an untyped [`Workload`] to a plug-in's [`Plugin::Data`]
//! is done here, once, through [`WorkloadData::of`]; a workload of another
//! type is refused with a message naming both types.

use std::collections::HashSet;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use reservation::workloads::DiskType;
use reservation::{Identity, Reservation, Workload, WorkloadData, WorkloadType};
use serde_json::Value;

use crate::charge::{Charge, Resources, Tenancy};
use crate::names::Names;
use crate::registry::NodeOptions;
use crate::{Docker, ProvisionError, Provisioner};

/// What a plug-in is built from: the Docker seam, the node's key (it opens
/// sealed secrets), the agent's root and the operator's settings.
#[derive(Clone)]
pub struct Setup {
    pub docker: Arc<dyn Docker>,
    pub node: Arc<Identity>,
    pub root: PathBuf,
    pub options: NodeOptions,
}

/// Everything about one workload type, typed by its `data`. A new type is
/// one module implementing this, declared in `lib.rs`, and one line in
/// the list of plug-ins there ([`crate::PLUGINS`]).
///
/// The async methods act through Docker; the associated functions answer
/// from the reservation alone (names are a pure function of the node scope
/// and the reservation), so the ledger, the crash watch and the control
/// socket ask them without Docker.
#[async_trait]
pub trait Plugin: Send + Sync + Sized + 'static {
    /// The type's `data`; its [`WorkloadData::KIND`] is the wire type.
    type Data: WorkloadData;

    /// The wire type this plug-in provisions.
    fn kind() -> WorkloadType {
        <Self::Data as WorkloadData>::KIND
    }

    /// Build it from the node's setup (the registry does, once).
    fn build(setup: &Setup) -> Self;

    /// Create the workload, or find and reuse it if a previous run (cut by
    /// a crash before caching) already did. Returns the result `data`.
    async fn provision(&self, r: &Reservation, d: &Self::Data) -> Result<Value, ProvisionError>;

    /// Remove the workload and everything it owns. Removing what is already
    /// gone succeeds.
    async fn decommission(&self, r: &Reservation, d: &Self::Data) -> Result<(), ProvisionError>;

    /// See [`Provisioner::exists`].
    async fn exists(&self, _r: &Reservation, _d: &Self::Data) -> Result<bool, ProvisionError> {
        Ok(true)
    }

    /// See [`Provisioner::present`].
    async fn present(&self) -> Result<Option<HashSet<String>>, ProvisionError> {
        Ok(None)
    }

    /// See [`Provisioner::list_labelled`].
    async fn list_labelled(&self) -> Result<Vec<String>, ProvisionError> {
        Ok(Vec::new())
    }

    /// See [`Provisioner::remove_labelled`].
    async fn remove_labelled(&self, _id: &str) -> Result<(), ProvisionError> {
        Ok(())
    }

    /// See [`Provisioner::sweep_leftovers`].
    async fn sweep_leftovers(&self) -> Result<(), ProvisionError> {
        Ok(())
    }

    /// What it holds of the node while it runs, with container layers on
    /// `root_disk` (default: nothing).
    fn charge(_d: &Self::Data, _root_disk: DiskType) -> Charge {
        Resources::ZERO
    }

    /// What it counts against its user's limits (default: nothing).
    fn tenancy(_d: &Self::Data) -> Tenancy {
        Tenancy::default()
    }

    /// The container of its own that the crash watch follows and
    /// `agentctl logs` reads, named in node scope `names` (default: none).
    /// It depends on the type and the reservation id alone, so the crash
    /// watch can name it again without keeping it.
    fn watched_container(_names: &Names, _id: &str) -> Option<String> {
        None
    }

    /// Names of the Docker objects (or 0-db namespaces) it makes, for
    /// `agentctl list` (default: none).
    fn objects(_names: &Names, _r: &Reservation, _d: &Self::Data) -> Vec<String> {
        Vec::new()
    }

    /// Objects of other workloads it needs while it runs, named as their
    /// [`Plugin::objects`] name them: the volumes it mounts, the network it
    /// joins (default: none).
    fn uses(_names: &Names, _r: &Reservation, _d: &Self::Data) -> Vec<String> {
        Vec::new()
    }
}

/// `w`'s data for plug-in `P`, or a refusal naming both types.
fn data<'w, P: Plugin>(r: &Reservation, w: &'w Workload) -> Result<&'w P::Data, ProvisionError> {
    P::Data::of(w).ok_or_else(|| {
        ProvisionError::Refused(format!(
            "reservation {} is a {}, not a {}",
            r.id,
            w.kind(),
            P::kind()
        ))
    })
}

/// The erased adapter: every plug-in is a [`Provisioner`], its data taken
/// out of the [`Workload`] here.
#[async_trait]
impl<P: Plugin> Provisioner for P {
    async fn provision(&self, r: &Reservation, w: &Workload) -> Result<Value, ProvisionError> {
        Plugin::provision(self, r, data::<P>(r, w)?).await
    }

    async fn decommission(&self, r: &Reservation, w: &Workload) -> Result<(), ProvisionError> {
        Plugin::decommission(self, r, data::<P>(r, w)?).await
    }

    async fn exists(&self, r: &Reservation, w: &Workload) -> Result<bool, ProvisionError> {
        Plugin::exists(self, r, data::<P>(r, w)?).await
    }

    async fn present(&self) -> Result<Option<HashSet<String>>, ProvisionError> {
        Plugin::present(self).await
    }

    async fn list_labelled(&self) -> Result<Vec<String>, ProvisionError> {
        Plugin::list_labelled(self).await
    }

    async fn remove_labelled(&self, id: &str) -> Result<(), ProvisionError> {
        Plugin::remove_labelled(self, id).await
    }

    async fn sweep_leftovers(&self) -> Result<(), ProvisionError> {
        Plugin::sweep_leftovers(self).await
    }
}

/// A workload type's plug-in on the type level, erased: what the
/// registry's list holds. A workload of another type gets the defaults
/// (nothing charged, no objects).
pub trait Kind: Send + Sync {
    fn kind(&self) -> WorkloadType;
    /// The plug-in, built from the node's setup.
    fn build(&self, setup: &Setup) -> Arc<dyn Provisioner>;
    fn charge(&self, w: &Workload, root_disk: DiskType) -> Charge;
    fn tenancy(&self, w: &Workload) -> Tenancy;
    fn watched_container(&self, names: &Names, id: &str) -> Option<String>;
    fn objects(&self, names: &Names, r: &Reservation, w: &Workload) -> Vec<String>;
    fn uses(&self, names: &Names, r: &Reservation, w: &Workload) -> Vec<String>;
}

/// Plug-in `P` as a [`Kind`].
pub struct KindOf<P>(PhantomData<fn() -> P>);

impl<P> KindOf<P> {
    pub const fn new() -> Self {
        KindOf(PhantomData)
    }
}

impl<P> Default for KindOf<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Plugin> Kind for KindOf<P> {
    fn kind(&self) -> WorkloadType {
        P::kind()
    }

    fn build(&self, setup: &Setup) -> Arc<dyn Provisioner> {
        Arc::new(P::build(setup))
    }

    fn charge(&self, w: &Workload, root_disk: DiskType) -> Charge {
        P::Data::of(w).map_or(Resources::ZERO, |d| P::charge(d, root_disk))
    }

    fn tenancy(&self, w: &Workload) -> Tenancy {
        P::Data::of(w).map_or_else(Tenancy::default, P::tenancy)
    }

    fn watched_container(&self, names: &Names, id: &str) -> Option<String> {
        P::watched_container(names, id)
    }

    fn objects(&self, names: &Names, r: &Reservation, w: &Workload) -> Vec<String> {
        P::Data::of(w).map_or_else(Vec::new, |d| P::objects(names, r, d))
    }

    fn uses(&self, names: &Names, r: &Reservation, w: &Workload) -> Vec<String> {
        P::Data::of(w).map_or_else(Vec::new, |d| P::uses(names, r, d))
    }
}
