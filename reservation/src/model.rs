//! Wire types: [`Reservation`], [`WorkloadResult`] and [`WorkloadType`].
//!
//! JSON matches Go's encoding: `created` is RFC 3339, `duration` integer
//! nanoseconds, signatures standard padded base64. `data` is held as the
//! exact bytes received because the signature covers those bytes.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Error;

/// Unix seconds of Go's zero `time.Time`, used in the signed message when a
/// reservation carries no `created` (a Go client would sign exactly that).
pub const GO_ZERO_TIME_UNIX: i64 = -62_135_596_800;

/// The closed set of workload types of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadType {
    Network,
    Volume,
    Zdb,
    Container,
    Kubernetes,
    Debug,
}

impl WorkloadType {
    /// Every type, in dependency order: a poll batch is handled in this
    /// order so a container never fails because its network came later.
    pub const ALL: [WorkloadType; 6] = [
        WorkloadType::Network,
        WorkloadType::Volume,
        WorkloadType::Zdb,
        WorkloadType::Container,
        WorkloadType::Kubernetes,
        WorkloadType::Debug,
    ];

    /// The wire name (`"container"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadType::Container => "container",
            WorkloadType::Volume => "volume",
            WorkloadType::Network => "network",
            WorkloadType::Zdb => "zdb",
            WorkloadType::Debug => "debug",
            WorkloadType::Kubernetes => "kubernetes",
        }
    }

    /// Position in the dependency order of [`WorkloadType::ALL`].
    pub fn order(self) -> usize {
        self as usize
    }
}

impl fmt::Display for WorkloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkloadType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        WorkloadType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| Error::Field {
                field: "type".into(),
                message: format!(
                    "unknown workload type {s:?}: expected one of container, volume, network, zdb, debug, kubernetes"
                ),
            })
    }
}

/// A reservation as the explorer serves it and the user signed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    pub id: String,
    pub node_id: String,
    pub user_id: String,
    /// The wire `type`. Kept as a string so an unknown type still gets a
    /// signed error result; [`Reservation::workload_type`] gives the enum.
    #[serde(rename = "type")]
    pub kind: String,
    /// The workload data, byte for byte as received.
    pub data: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    /// Lifetime in nanoseconds (Go `time.Duration`).
    #[serde(default)]
    pub duration: i64,
    #[serde(default)]
    pub signature: String,
    #[serde(default)]
    pub to_delete: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_signature: Option<String>,
}

impl Reservation {
    /// The typed workload type, or an error naming the unknown `type`.
    pub fn workload_type(&self) -> Result<WorkloadType, Error> {
        self.kind.parse()
    }

    /// The reservation number: the part of `id` before `-`, the poll cursor.
    pub fn number(&self) -> Option<u64> {
        self.id.split('-').next()?.parse().ok()
    }

    /// When it expires: `created + duration`. `None` when `created` is unset
    /// or the sum overflows.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        let created = self.created_set()?;
        created.checked_add_signed(chrono::Duration::nanoseconds(self.duration))
    }

    /// `created`, unless it is missing or Go's zero time (or before 1970).
    pub fn created_set(&self) -> Option<DateTime<Utc>> {
        self.created.filter(|c| c.timestamp() > 0)
    }

    /// Whether the reservation has expired at `now`. Unset `created` or a
    /// non-positive duration count as expired.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        match self.expires_at() {
            Some(at) => self.duration <= 0 || at <= now,
            None => true,
        }
    }

    /// The exact bytes the user signs:
    /// `node_id ‖ user_id ‖ type ‖ data ‖ unix(created) ‖ duration`.
    pub fn signing_message(&self) -> Vec<u8> {
        let created = self
            .created
            .map(|c| c.timestamp())
            .unwrap_or(GO_ZERO_TIME_UNIX);
        let mut m = Vec::with_capacity(
            self.node_id.len() + self.user_id.len() + self.kind.len() + self.data.get().len() + 32,
        );
        m.extend_from_slice(self.node_id.as_bytes());
        m.extend_from_slice(self.user_id.as_bytes());
        m.extend_from_slice(self.kind.as_bytes());
        m.extend_from_slice(self.data.get().as_bytes());
        m.extend_from_slice(created.to_string().as_bytes());
        m.extend_from_slice(self.duration.to_string().as_bytes());
        m
    }

    /// The bytes a deletion signs: `"delete:" ‖ id`.
    pub fn delete_message(id: &str) -> Vec<u8> {
        let mut m = b"delete:".to_vec();
        m.extend_from_slice(id.as_bytes());
        m
    }

    /// Verify the user's signature over [`Reservation::signing_message`].
    pub fn verify(&self) -> Result<(), Error> {
        crate::verify_signature(&self.user_id, &self.signing_message(), &self.signature).map_err(
            |e| Error::BadSignature {
                what: "signature".into(),
                reason: format!("{e}"),
            },
        )
    }

    /// Verify `delete_signature` against `user_id`. A missing one is an error.
    pub fn verify_delete(&self) -> Result<(), Error> {
        let sig = self.delete_signature.as_deref().unwrap_or("");
        if sig.is_empty() {
            return Err(Error::BadSignature {
                what: "delete_signature".into(),
                reason: "missing: the deletion is not signed by the user".into(),
            });
        }
        crate::verify_signature(&self.user_id, &Self::delete_message(&self.id), sig).map_err(|e| {
            Error::BadSignature {
                what: "delete_signature".into(),
                reason: format!("{e}"),
            }
        })
    }
}

/// `ok` or `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultState {
    Ok,
    Error,
}

impl ResultState {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultState::Ok => "ok",
            ResultState::Error => "error",
        }
    }
}

/// The protocol's `Result`: what a node posts back for a reservation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadResult {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    pub created: DateTime<Utc>,
    pub state: ResultState,
    #[serde(default)]
    pub error: String,
    /// Exact bytes sent; `null` when there is nothing.
    pub data: Box<RawValue>,
    #[serde(default)]
    pub signature: String,
}

impl WorkloadResult {
    /// The bytes the node signs: `id ‖ state ‖ error ‖ data`.
    pub fn signing_message(&self) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(self.id.as_bytes());
        m.extend_from_slice(self.state.as_str().as_bytes());
        m.extend_from_slice(self.error.as_bytes());
        m.extend_from_slice(self.data.get().as_bytes());
        m
    }

    /// Verify the node's signature.
    pub fn verify(&self, node_id: &str) -> Result<(), Error> {
        crate::verify_signature(node_id, &self.signing_message(), &self.signature).map_err(|e| {
            Error::BadSignature {
                what: format!("result {} signature", self.id),
                reason: format!("{e}"),
            }
        })
    }
}

/// `null` as a raw JSON value.
pub fn null_raw() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is valid JSON")
}
