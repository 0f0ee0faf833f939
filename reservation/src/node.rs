//! The node's messages to and about the explorer's node list: signed
//! registration (`POST /nodes`) and heartbeat (`POST /nodes/{node_id}/uptime`),
//! the [`Capacity`] they carry, and the [`NodeInfo`] entries of `GET /nodes`.
//!
//! Both carry a capacity object signed as its exact JSON bytes and a unix
//! millisecond `timestamp`; the explorer accepts a message only within 5
//! minutes of its clock and newer than the last one it accepted for that
//! node, so a captured message cannot be replayed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::frame::{self, frame};
use crate::{Error, Identity};

/// How far a node message's `timestamp` may be from the explorer's clock.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// Capacity in the protocol's units: `cru` CPU cores, `mru` memory GiB,
/// `sru` SSD GiB, `hru` HDD GiB.
///
/// The agent counts whole numbers ([`Capacity::whole`]); the explorer
/// accepts fractions too (a node that counts memory in fractions of a GiB is
/// not refused), and a missing figure is 0. Whole numbers are written as
/// JSON integers (`{"cru":4,"mru":16,"sru":200,"hru":0}`), fractions as
/// JSON floats, so a client that reads integers keeps working.
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
    /// A capacity of whole cores and GiB.
    pub fn whole(cru: u64, mru: u64, sru: u64, hru: u64) -> Self {
        Capacity {
            cru: cru as f64,
            mru: mru as f64,
            sru: sru as f64,
            hru: hru as f64,
        }
    }

    /// The first field that is negative, not finite or above
    /// [`MAX_FIGURE`], for a 400 message. The bound keeps sums over a fleet
    /// finite and every figure writable as a JSON integer.
    pub fn invalid_field(&self) -> Option<&'static str> {
        [
            ("cru", self.cru),
            ("mru", self.mru),
            ("sru", self.sru),
            ("hru", self.hru),
        ]
        .into_iter()
        .find(|(_, v)| !v.is_finite() || *v < 0.0 || *v > MAX_FIGURE)
        .map(|(k, _)| k)
    }
}

/// The largest capacity figure accepted (2^53: every whole figure up to it
/// is exact in an f64 and written as a JSON integer).
pub const MAX_FIGURE: f64 = 9_007_199_254_740_992.0;

/// A whole, non-negative figure as a JSON integer; anything else as a float.
fn whole<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.fract() == 0.0 && *v >= 0.0 && *v <= MAX_FIGURE {
        s.serialize_u64(*v as u64)
    } else {
        s.serialize_f64(*v)
    }
}

/// One entry of `GET /nodes`: the node's last accepted registration and
/// heartbeat, as the explorer stores and lists them.
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

/// Body of `POST /nodes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub node_id: String,
    /// Where the node can be reached.
    pub url: String,
    /// Signed as these exact bytes.
    pub capacity: Box<RawValue>,
    /// Unix milliseconds.
    pub timestamp: i64,
    #[serde(default)]
    pub signature: String,
}

/// Body of `POST /nodes/{node_id}/uptime`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Uptime {
    /// Seconds since the agent started.
    pub uptime: u64,
    /// Capacity used by workloads, signed as these exact bytes.
    pub used: Box<RawValue>,
    /// Unix milliseconds.
    pub timestamp: i64,
    #[serde(default)]
    pub signature: String,
}

fn raw(c: &Capacity) -> Box<RawValue> {
    // Four numbers always serialize.
    RawValue::from_string(serde_json::to_string(c).expect("capacity serializes"))
        .expect("capacity is JSON")
}

impl Registration {
    /// `frame("node-v2", node_id, url, capacity, decimal(timestamp))`.
    pub fn signing_message(&self) -> Vec<u8> {
        let ts = self.timestamp.to_string();
        frame(&[
            frame::NODE.as_bytes(),
            self.node_id.as_bytes(),
            self.url.as_bytes(),
            self.capacity.get().as_bytes(),
            ts.as_bytes(),
        ])
    }

    /// A registration signed by `node`.
    pub fn signed(node: &Identity, url: &str, capacity: &Capacity, timestamp: i64) -> Self {
        let mut r = Registration {
            node_id: node.id().to_string(),
            url: url.to_string(),
            capacity: raw(capacity),
            timestamp,
            signature: String::new(),
        };
        r.signature = node.sign(&r.signing_message());
        r
    }

    /// Verify the signature against `node_id`.
    pub fn verify(&self) -> Result<(), Error> {
        crate::verify_signature(&self.node_id, &self.signing_message(), &self.signature).map_err(
            |e| Error::BadSignature {
                what: "node registration signature".into(),
                reason: e.to_string(),
            },
        )
    }
}

impl Uptime {
    /// `frame("node-v2", node_id, "uptime", decimal(uptime), used,
    /// decimal(timestamp))`.
    pub fn signing_message(&self, node_id: &str) -> Vec<u8> {
        let up = self.uptime.to_string();
        let ts = self.timestamp.to_string();
        frame(&[
            frame::NODE.as_bytes(),
            node_id.as_bytes(),
            b"uptime",
            up.as_bytes(),
            self.used.get().as_bytes(),
            ts.as_bytes(),
        ])
    }

    /// A heartbeat signed by `node`.
    pub fn signed(node: &Identity, uptime: u64, used: &Capacity, timestamp: i64) -> Self {
        Self::signed_raw(node, uptime, raw(used), timestamp)
    }

    /// A heartbeat signed by `node` whose `used` object is given as JSON
    /// (the capacity, plus `"draining": true` while the node takes no new
    /// work: an extension key inside the signed bytes, which explorers that
    /// do not know it ignore).
    pub fn signed_raw(node: &Identity, uptime: u64, used: Box<RawValue>, timestamp: i64) -> Self {
        let mut u = Uptime {
            uptime,
            used,
            timestamp,
            signature: String::new(),
        };
        u.signature = node.sign(&u.signing_message(node.id()));
        u
    }

    /// Verify the signature against `node_id` (from the request path).
    pub fn verify(&self, node_id: &str) -> Result<(), Error> {
        crate::verify_signature(node_id, &self.signing_message(node_id), &self.signature).map_err(
            |e| Error::BadSignature {
                what: "uptime signature".into(),
                reason: e.to_string(),
            },
        )
    }
}

/// Whether a node message's `timestamp` is acceptable at `now_ms`: within
/// 5 minutes of it, and newer than `last_ms` (the last one accepted for the
/// node). The error says which rule failed.
pub fn check_timestamp(timestamp: i64, now_ms: i64, last_ms: Option<i64>) -> Result<(), Error> {
    let skew = timestamp.saturating_sub(now_ms).saturating_abs();
    if skew > MAX_CLOCK_SKEW_MS {
        return Err(Error::Field {
            field: "timestamp".into(),
            message: format!(
                "{timestamp} is {}s away from this explorer's clock ({now_ms}); at most 300s is accepted",
                skew / 1000
            ),
        });
    }
    if let Some(last) = last_ms {
        if timestamp <= last {
            return Err(Error::Field {
                field: "timestamp".into(),
                message: format!(
                    "{timestamp} is not newer than the last accepted ({last}): a replayed or reordered message"
                ),
            });
        }
    }
    Ok(())
}
