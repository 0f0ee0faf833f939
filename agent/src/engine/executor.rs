//! The executor: owns what the engine does to the node through the
//! provisioner registry. It provisions under a deadline and rolls back a
//! provisioning that failed (so a refusal changes nothing on the node), and
//! decommissions under the same deadline. It never touches the store.

use std::time::Duration;

use provisioners::{ProvisionError, Registry};
use reservation::{Reservation, Workload, WorkloadType};
use tracing::warn;

/// Why a provisioning did not give result data.
#[derive(Debug)]
pub enum Failure {
    /// The provisioner failed or refused.
    Failed(ProvisionError),
    /// It did not finish within the deadline.
    TimedOut,
}

/// Provisions and decommissions through the registry.
pub struct Executor {
    registry: Registry,
    /// Deadline of one provisioning.
    deadline: Duration,
}

impl Executor {
    pub fn new(registry: Registry, deadline: Duration) -> Self {
        Executor { registry, deadline }
    }

    /// Whether a provisioner serves this type.
    pub fn supports(&self, kind: WorkloadType) -> bool {
        self.registry.get(kind).is_some()
    }

    /// The workload of a cached reservation when one of the node's
    /// provisioners serves it (otherwise nothing can have been provisioned
    /// for it).
    pub fn workload(&self, r: &Reservation) -> Option<Workload> {
        let kind = r.workload_type().ok()?;
        self.registry.get(kind)?;
        Workload::parse(kind, &r.data).ok()
    }

    /// Provision `w` under the deadline, without rolling back (a repair
    /// keeps what it could make; the next start tries again).
    pub async fn provision_once(
        &self,
        r: &Reservation,
        w: &Workload,
    ) -> Result<serde_json::Value, Failure> {
        let Some(p) = self.registry.get(w.kind()) else {
            return Err(Failure::Failed(ProvisionError::Refused(format!(
                "workload type {} is not supported on this node",
                w.kind()
            ))));
        };
        match tokio::time::timeout(self.deadline, p.provision(r, w)).await {
            Ok(Ok(data)) => Ok(data),
            Ok(Err(e)) => Err(Failure::Failed(e)),
            Err(_) => Err(Failure::TimedOut),
        }
    }

    /// Provision `w` under the deadline; when that fails, undo what it may
    /// have left and give the message of the refusal.
    pub async fn provision(
        &self,
        r: &Reservation,
        w: &Workload,
    ) -> Result<serde_json::Value, String> {
        let failure = match self.provision_once(r, w).await {
            Ok(data) => return Ok(data),
            Err(f) => f,
        };
        let msg = match failure {
            Failure::Failed(ProvisionError::Refused(m)) => m,
            Failure::Failed(other) => format!("provisioning failed: {other}"),
            Failure::TimedOut => format!(
                "provisioning did not finish within {}s; rolled back",
                self.deadline.as_secs()
            ),
        };
        self.roll_back(r, w).await;
        Err(msg)
    }

    /// Undo what a failed provisioning may have left.
    async fn roll_back(&self, r: &Reservation, w: &Workload) {
        if let Err(e) = self.remove(r, w).await {
            warn!(reservation = %r.id, error = %e, "rolling back a failed provisioning");
        }
    }

    /// Remove what was provisioned for a cached reservation. Nothing can
    /// have been provisioned for one of a type the node does not serve or
    /// whose data does not parse.
    pub async fn decommission(&self, r: &Reservation) -> Result<(), ProvisionError> {
        match self.workload(r) {
            Some(w) => self.remove(r, &w).await,
            None => Ok(()),
        }
    }

    /// Decommission `w` under the same deadline as a provisioning: a Docker
    /// call that never answers must not hold the engine's unit of work (and
    /// every job after it) for good. A timeout is an error, so the caller
    /// tries again later.
    async fn remove(&self, r: &Reservation, w: &Workload) -> Result<(), ProvisionError> {
        let Some(p) = self.registry.get(w.kind()) else {
            return Ok(());
        };
        tokio::time::timeout(self.deadline, p.decommission(r, w))
            .await
            .unwrap_or_else(|_| {
                Err(ProvisionError::Node(format!(
                    "decommission of {} did not finish within {}s",
                    r.id,
                    self.deadline.as_secs()
                )))
            })
    }
}
