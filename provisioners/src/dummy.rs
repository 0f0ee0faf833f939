//! The `dummy` workload type (scratch): provisions nothing.

use async_trait::async_trait;
use reservation::workloads::Dummy;
use reservation::Reservation;
use serde_json::{json, Value};

use crate::plugin::{Plugin, Setup};
use crate::ProvisionError;

/// Provisions `dummy` workloads: nothing at all.
pub struct DummyProvisioner;

#[async_trait]
impl Plugin for DummyProvisioner {
    type Data = Dummy;

    fn build(_s: &Setup) -> Self {
        DummyProvisioner
    }

    async fn provision(&self, _r: &Reservation, d: &Dummy) -> Result<Value, ProvisionError> {
        Ok(json!({ "note": d.note }))
    }

    async fn decommission(&self, _r: &Reservation, _d: &Dummy) -> Result<(), ProvisionError> {
        Ok(())
    }
}
