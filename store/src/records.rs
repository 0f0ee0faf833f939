//! The records the cache holds, each carrying a schema version so a later
//! release can read what an earlier one wrote.

use chrono::{DateTime, Utc};
use reservation::{Reservation, WorkloadResult};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// Schema version written by this release.
pub const SCHEMA: u32 = 1;

/// A workload the node runs. Stored inside an envelope `{"v": SCHEMA, "body": ...}`
/// like every record.
/// The reservation keeps its sealed secrets
/// sealed: no plaintext is ever part of a record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cached {
    pub reservation: Reservation,
    pub result: WorkloadResult,
    pub cached_at: DateTime<Utc>,
}

impl Cached {
    pub fn new(reservation: Reservation, result: WorkloadResult) -> Self {
        Cached {
            reservation,
            result,
            cached_at: Utc::now(),
        }
    }

    /// When to decommission it; a reservation without a valid expiry is due
    /// at once.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.reservation
            .expires_at()
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
    }
}

/// How a reservation was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomeState {
    Provisioned,
    Refused,
    Deleted,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub state: OutcomeState,
    pub at: DateTime<Utc>,
    /// The error posted, for refused (and given-up) reservations.
    #[serde(default)]
    pub error: String,
}

impl Outcome {
    pub fn new(state: OutcomeState, error: &str) -> Self {
        Outcome {
            state,
            at: Utc::now(),
            error: error.to_string(),
        }
    }
}

/// A message for the explorer, kept until it answers 200.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")] // externally tagged: RawValue cannot pass through a buffered (internally tagged) enum
pub enum Outbound {
    /// `PUT /reservations/{id}` with the signed result.
    Result(WorkloadResult),
    /// `PUT /reservations/{id}/deleted` with the node's signature
    /// (`deleted-v2`). Records written before protocol version 2 have none;
    /// the explorer refuses those and delivery drops them.
    Deleted {
        id: String,
        #[serde(default)]
        signature: String,
    },
}

impl Outbound {
    pub fn id(&self) -> &str {
        match self {
            Outbound::Result(r) => &r.id,
            Outbound::Deleted { id, .. } => id,
        }
    }
}

#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub seq: u64,
    pub item: Outbound,
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    /// Schema version of `body`.
    v: u32,
    body: T,
}

pub(crate) fn encode<T: Serialize>(t: &T) -> Vec<u8> {
    // Serializing our own plain structs cannot fail.
    serde_json::to_vec(&Envelope { v: SCHEMA, body: t }).expect("records serialize")
}

pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    // One pass over the record in the common case: `v` is written before
    // `body`, and a record of this schema parses as `Envelope<T>` at once.
    // Only a record that does not is parsed again for its version alone,
    // so a newer schema is named as such rather than as corruption. (Two
    // passes every time were a third of start-up's read of 10,000 cached.)
    match serde_json::from_slice::<Envelope<T>>(bytes) {
        Ok(env) if env.v <= SCHEMA => Ok(env.body),
        Ok(env) => Err(StoreError::Schema {
            key: key.to_string(),
            found: env.v,
        }),
        Err(e) => {
            #[derive(Deserialize)]
            struct Version {
                v: u32,
            }
            match serde_json::from_slice::<Version>(bytes) {
                Ok(ver) if ver.v > SCHEMA => Err(StoreError::Schema {
                    key: key.to_string(),
                    found: ver.v,
                }),
                _ => Err(StoreError::Corrupt {
                    key: key.to_string(),
                    reason: e.to_string(),
                }),
            }
        }
    }
}
