//! JSON bodies of the explorer routes other than the reservation and the
//! result themselves (those are `reservation::Reservation` and
//! `reservation::WorkloadResult`): node registration, heartbeat, the node
//! list, and the reservation view of `GET /reservations/{id}`.

use chrono::{DateTime, Utc};
use reservation::{Reservation, WorkloadResult};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// Capacity of a node: `cru` CPU cores, `mru` memory GiB, `sru` SSD GiB,
/// `hru` HDD GiB. Held as `f64` so a node that counts memory in fractions of
/// a GiB is not refused; whole numbers are written back as JSON integers, so
/// a client that reads integers keeps working.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    #[serde(default, serialize_with = "whole")]
    pub cru: f64,
    #[serde(default, serialize_with = "whole")]
    pub mru: f64,
    #[serde(default, serialize_with = "whole")]
    pub sru: f64,
    #[serde(default, serialize_with = "whole")]
    pub hru: f64,
}

impl Capacity {
    /// The first field that is negative or not finite, for a 400 message.
    pub fn invalid_field(&self) -> Option<&'static str> {
        [
            ("cru", self.cru),
            ("mru", self.mru),
            ("sru", self.sru),
            ("hru", self.hru),
        ]
        .into_iter()
        .find(|(_, v)| !v.is_finite() || *v < 0.0)
        .map(|(k, _)| k)
    }
}

fn whole<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && *v >= 0.0 && *v < 9.0e15 {
        s.serialize_u64(*v as u64)
    } else {
        s.serialize_f64(*v)
    }
}

/// Body of `POST /nodes`. Unknown fields are accepted, so a newer agent that
/// sends more still registers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRegistration {
    pub node_id: String,
    /// Where the node can be reached.
    pub url: String,
    pub capacity: Capacity,
}

/// Body of `POST /nodes/{node_id}/uptime`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Uptime {
    /// Seconds since the agent started.
    pub uptime: f64,
    /// Capacity used by workloads; the last value is kept when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<Capacity>,
}

/// One entry of `GET /nodes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub url: String,
    pub capacity: Capacity,
    pub used: Capacity,
    /// RFC 3339; `null` until the first heartbeat.
    pub last_heartbeat: Option<DateTime<Utc>>,
}

/// Answer of `POST /reservations/{node_id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Created {
    pub id: String,
}

/// Body of `DELETE /reservations/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub delete_signature: String,
}

/// Answer of `GET /reservations/{id}`: the reservation, byte for byte in
/// its `data`, plus the latest `result` and whether the node confirmed the
/// deletion. The fields are spelled out (not `#[serde(flatten)]`) because a
/// flattened `RawValue` cannot be deserialized.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReservationView {
    pub id: String,
    pub node_id: String,
    pub user_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    #[serde(default)]
    pub duration: i64,
    #[serde(default)]
    pub signature: String,
    #[serde(default)]
    pub to_delete: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_signature: Option<String>,
    pub result: Option<WorkloadResult>,
    pub deleted: bool,
}

impl ReservationView {
    /// The view of `r` with its latest `result`.
    pub fn new(r: &Reservation, result: Option<WorkloadResult>, deleted: bool) -> Self {
        ReservationView {
            id: r.id.clone(),
            node_id: r.node_id.clone(),
            user_id: r.user_id.clone(),
            kind: r.kind.clone(),
            data: r.data.clone(),
            created: r.created,
            duration: r.duration,
            signature: r.signature.clone(),
            to_delete: r.to_delete,
            delete_signature: r.delete_signature.clone(),
            result,
            deleted,
        }
    }

    /// The reservation alone (to verify its signatures).
    pub fn reservation(&self) -> Reservation {
        Reservation {
            id: self.id.clone(),
            node_id: self.node_id.clone(),
            user_id: self.user_id.clone(),
            kind: self.kind.clone(),
            data: self.data.clone(),
            created: self.created,
            duration: self.duration,
            signature: self.signature.clone(),
            to_delete: self.to_delete,
            delete_signature: self.delete_signature.clone(),
        }
    }
}
