//! JSON bodies of the explorer routes other than the ones the reservation
//! crate defines (`reservation::Reservation`, `reservation::WorkloadResult`
//! and the node's signed [`Registration`] and [`Uptime`]): the capacity
//! figures as stored and listed, the node list, the answer of a `POST`,
//! the deletion request and confirmation bodies, and the reservation view
//! of `GET /reservations/{id}`.

use chrono::{DateTime, Utc};
use reservation::{Reservation, WorkloadResult};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

pub use reservation::node::{Registration, Uptime};

/// Capacity of a node as the explorer stores and lists it: `cru` CPU cores,
/// `mru` memory GiB, `sru` SSD GiB, `hru` HDD GiB. The signed `capacity` /
/// `used` objects of [`Registration`] and [`Uptime`] are parsed into this.
/// Held as `f64` so a node that counts memory in fractions of a GiB is not
/// refused (the agent sends `reservation::Capacity`, whole numbers); whole
/// numbers are written back as JSON integers, so a client that reads
/// integers keeps working.
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

impl From<reservation::Capacity> for Capacity {
    fn from(c: reservation::Capacity) -> Self {
        Capacity {
            cru: c.cru as f64,
            mru: c.mru as f64,
            sru: c.sru as f64,
            hru: c.hru as f64,
        }
    }
}

fn whole<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && *v >= 0.0 && *v < 9.0e15 {
        s.serialize_u64(*v as u64)
    } else {
        s.serialize_f64(*v)
    }
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
    /// The node takes no new work (`agentctl drain`), as its last signed
    /// heartbeat said (`"draining": true` inside `used`).
    #[serde(default)]
    pub draining: bool,
}

/// Answer of `POST /reservations/{node_id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Created {
    pub id: String,
}

/// Body of `DELETE /reservations/{id}`: the user's signature over
/// `frame("delete-v2", <the reservation's signature>)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub delete_signature: String,
}

/// Body of `PUT /reservations/{id}/deleted`: the node's signature over
/// `frame("deleted-v2", id, <the reservation's signature>)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletedConfirmation {
    pub signature: String,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Answer of `GET /reservations/{id}`: the reservation, byte for byte in
/// its `data`, plus the latest `result` and whether the node confirmed the
/// deletion. The reservation's fields are spelled out, with the same JSON
/// as [`Reservation`] (not `#[serde(flatten)]`, because a flattened
/// `RawValue` cannot be deserialized and `Reservation` denies unknown
/// fields); [`ReservationView::reservation`] gives the reservation back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReservationView {
    pub id: String,
    /// Protocol version; `2` for everything this explorer accepts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u32,
    pub node_id: String,
    pub user_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    #[serde(default)]
    pub duration: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nonce: String,
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
        let Reservation {
            id,
            version,
            node_id,
            user_id,
            kind,
            data,
            created,
            duration,
            nonce,
            signature,
            to_delete,
            delete_signature,
        } = r.clone();
        ReservationView {
            id,
            version,
            node_id,
            user_id,
            kind,
            data,
            created,
            duration,
            nonce,
            signature,
            to_delete,
            delete_signature,
            result,
            deleted,
        }
    }

    /// The reservation alone (to verify its signatures).
    pub fn reservation(&self) -> Reservation {
        Reservation {
            id: self.id.clone(),
            version: self.version,
            node_id: self.node_id.clone(),
            user_id: self.user_id.clone(),
            kind: self.kind.clone(),
            data: self.data.clone(),
            created: self.created,
            duration: self.duration,
            nonce: self.nonce.clone(),
            signature: self.signature.clone(),
            to_delete: self.to_delete,
            delete_signature: self.delete_signature.clone(),
        }
    }
}
