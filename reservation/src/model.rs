//! Wire types: [`Reservation`], [`WorkloadResult`] and [`WorkloadType`]
//! (declared with the other per-type items in `workloads.rs`, re-exported
//! here).
//!
//! JSON matches Go's encoding: `created` is RFC 3339, `duration` integer
//! nanoseconds, signatures standard padded base64. `data` is held as the
//! exact bytes received because the signature covers those bytes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::frame::{self, frame};
use crate::Error;

/// Unix seconds of Go's zero `time.Time`, used in the signed message when a
/// reservation carries no `created` (a Go client would sign exactly that).
pub const GO_ZERO_TIME_UNIX: i64 = -62_135_596_800;

pub use crate::workloads::WorkloadType;

/// The protocol version this crate speaks and signs.
pub const PROTOCOL_VERSION: u32 = 2;

/// How far in the future `created` may be (clock skew between the user and
/// the node).
pub const MAX_FUTURE_SKEW_SECS: i64 = 5 * 60;

/// The refusal of a reservation signed with version 1 (or no version).
pub const VERSION_1_REFUSED: &str = "protocol version 1 is not accepted; sign with version 2";

/// Whether `id` follows the grammar `^[0-9]{1,20}-[0-9]{1,20}$`. A node
/// signs nothing about a reservation whose id does not: a crafted id could
/// otherwise make the node sign bytes it never meant.
pub fn valid_id(id: &str) -> bool {
    let digits = |p: &str| (1..=20).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    match id.split_once('-') {
        Some((n, w)) => digits(n) && digits(w),
        None => false,
    }
}

/// `id` as its two numbers when it is in canonical form (`<n>-<n>`, no
/// leading zero, each part a u64): `Some` for exactly one spelling of each
/// pair, so a map keyed by the numbers keeps `01-1` and `1-1` apart when the
/// other spellings are kept as text (the agent's and the store's compact id
/// sets).
pub fn id_numbers(id: &str) -> Option<(u64, u64)> {
    let part = |p: &str| -> Option<u64> {
        let canonical = !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && (p.len() == 1 || !p.starts_with('0'));
        canonical.then(|| p.parse().ok()).flatten()
    };
    let (n, w) = id.split_once('-')?;
    Some((part(n)?, part(w)?))
}

/// Whether `nonce` is 32 to 64 lowercase hex characters.
pub fn valid_nonce(nonce: &str) -> bool {
    (32..=64).contains(&nonce.len())
        && nonce
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fresh random nonce: 16 random bytes as 32 lowercase hex characters.
pub fn new_nonce() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// A reservation as the explorer serves it and the user signed it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    pub id: String,
    /// Protocol version; absent (0) in a version 1 reservation.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u32,
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
    /// Random per reservation, so two otherwise identical reservations have
    /// different signatures (and neither is taken for a replay).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nonce: String,
    #[serde(default)]
    pub signature: String,
    #[serde(default)]
    pub to_delete: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_signature: Option<String>,
}

impl Default for Reservation {
    /// An empty version 2 reservation with `data` `null`, for building one
    /// field by field before signing.
    fn default() -> Self {
        Reservation {
            id: String::new(),
            version: PROTOCOL_VERSION,
            node_id: String::new(),
            user_id: String::new(),
            kind: String::new(),
            data: null_raw(),
            created: None,
            duration: 0,
            nonce: String::new(),
            signature: String::new(),
            to_delete: false,
            delete_signature: None,
        }
    }
}

impl Reservation {
    /// The wire names of every field, in order (views that wrap a
    /// reservation pick these keys out of a larger object).
    pub const FIELDS: [&'static str; 12] = [
        "id",
        "version",
        "node_id",
        "user_id",
        "type",
        "data",
        "created",
        "duration",
        "nonce",
        "signature",
        "to_delete",
        "delete_signature",
    ];

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
    /// `frame("reservation-v2", node_id, user_id, type, data,
    /// decimal(unix seconds of created), decimal(duration), nonce)`.
    pub fn signing_message(&self) -> Vec<u8> {
        let created = self
            .created
            .map(|c| c.timestamp())
            .unwrap_or(GO_ZERO_TIME_UNIX)
            .to_string();
        let duration = self.duration.to_string();
        frame(&[
            frame::RESERVATION.as_bytes(),
            self.node_id.as_bytes(),
            self.user_id.as_bytes(),
            self.kind.as_bytes(),
            self.data.get().as_bytes(),
            created.as_bytes(),
            duration.as_bytes(),
            self.nonce.as_bytes(),
        ])
    }

    /// The bytes a deletion signs: `frame("delete-v2", signature)`, where
    /// `signature` is the reservation's own base64 signature text. A
    /// deletion is thereby bound to one signed reservation, whatever id the
    /// explorer gives it.
    pub fn delete_message(reservation_signature: &str) -> Vec<u8> {
        frame(&[frame::DELETE.as_bytes(), reservation_signature.as_bytes()])
    }

    /// The bytes of a node's deletion confirmation:
    /// `frame("deleted-v2", id, signature_of_the_reservation)`.
    pub fn deleted_message(id: &str, reservation_signature: &str) -> Vec<u8> {
        frame(&[
            frame::DELETED.as_bytes(),
            id.as_bytes(),
            reservation_signature.as_bytes(),
        ])
    }

    /// Check 2 of PROTOCOL.md: version 2 with a nonce.
    pub fn check_version(&self) -> Result<(), Error> {
        match self.version {
            0 | 1 => Err(Error::Field {
                field: "version".into(),
                message: VERSION_1_REFUSED.into(),
            }),
            PROTOCOL_VERSION if self.nonce.is_empty() => Err(Error::Field {
                field: "nonce".into(),
                message: format!("missing: {VERSION_1_REFUSED}"),
            }),
            PROTOCOL_VERSION if !valid_nonce(&self.nonce) => Err(Error::Field {
                field: "nonce".into(),
                message: "must be 32 to 64 lowercase hex characters".into(),
            }),
            PROTOCOL_VERSION => Ok(()),
            v => Err(Error::Field {
                field: "version".into(),
                message: format!("protocol version {v} is not supported; sign with version 2"),
            }),
        }
    }

    /// Check 6 of PROTOCOL.md: `created` is set in whole seconds and at
    /// most 5 minutes ahead of `now`, `duration` is positive and at most
    /// `max_duration`, and the reservation has not expired. Returns the
    /// expiry.
    pub fn check_lifetime(
        &self,
        now: DateTime<Utc>,
        max_duration: std::time::Duration,
    ) -> Result<DateTime<Utc>, Error> {
        let field = |field: &str, message: String| Error::Field {
            field: field.into(),
            message,
        };
        let created = self
            .created_set()
            .ok_or_else(|| field("created", "not set".into()))?;
        if created.timestamp_subsec_nanos() != 0 {
            return Err(field(
                "created",
                "must be whole seconds (the signature covers seconds only)".into(),
            ));
        }
        let ahead = created - now;
        if ahead > chrono::Duration::seconds(MAX_FUTURE_SKEW_SECS) {
            return Err(field(
                "created",
                format!(
                    "{} is {}s in the future; at most {MAX_FUTURE_SKEW_SECS}s is accepted (check the clock)",
                    created.to_rfc3339(),
                    ahead.num_seconds()
                ),
            ));
        }
        if self.duration <= 0 {
            return Err(field(
                "duration",
                format!("must be > 0, got {}", self.duration),
            ));
        }
        let max_ns = i64::try_from(max_duration.as_nanos()).unwrap_or(i64::MAX);
        if self.duration > max_ns {
            return Err(field(
                "duration",
                format!(
                    "{} is longer than this node's maximum of {}",
                    human_duration(self.duration),
                    human_duration(max_ns)
                ),
            ));
        }
        let at = self
            .expires_at()
            .ok_or_else(|| field("duration", "created + duration overflows".into()))?;
        if at <= now {
            return Err(field(
                "expired",
                format!("the reservation ended at {}", at.to_rfc3339()),
            ));
        }
        Ok(at)
    }

    /// Verify the user's signature over [`Reservation::signing_message`].
    pub fn verify(&self) -> Result<(), Error> {
        self.verify_with(None)
    }

    /// [`Reservation::verify`], with the user's key from `keys` if given.
    pub fn verify_with(&self, keys: Option<&crate::KeyCache>) -> Result<(), Error> {
        let msg = self.signing_message();
        match keys {
            Some(k) => k.verify(&self.user_id, &msg, &self.signature),
            None => crate::verify_signature(&self.user_id, &msg, &self.signature),
        }
        .map_err(|e| Error::BadSignature {
            what: "signature".into(),
            reason: format!("{e}"),
        })
    }

    /// Verify `delete_signature` against `user_id`, over this reservation's
    /// own signature. A missing one is an error.
    pub fn verify_delete(&self) -> Result<(), Error> {
        self.verify_delete_with(None)
    }

    /// [`Reservation::verify_delete`], with the user's key from `keys` if
    /// given.
    pub fn verify_delete_with(&self, keys: Option<&crate::KeyCache>) -> Result<(), Error> {
        let sig = self.delete_signature.as_deref().unwrap_or("");
        if sig.is_empty() {
            return Err(Error::BadSignature {
                what: "delete_signature".into(),
                reason: "missing: the deletion is not signed by the user".into(),
            });
        }
        let msg = Self::delete_message(&self.signature);
        match keys {
            Some(k) => k.verify(&self.user_id, &msg, sig),
            None => crate::verify_signature(&self.user_id, &msg, sig),
        }
        .map_err(|e| Error::BadSignature {
            what: "delete_signature".into(),
            reason: format!("{e}"),
        })
    }

    /// Verify a node's deletion confirmation of this reservation.
    pub fn verify_deleted(&self, confirmation: &str) -> Result<(), Error> {
        crate::verify_signature(
            &self.node_id,
            &Self::deleted_message(&self.id, &self.signature),
            confirmation,
        )
        .map_err(|e| Error::BadSignature {
            what: "deleted signature".into(),
            reason: format!("{e}"),
        })
    }
}

/// A duration in nanoseconds as days, hours or seconds, for messages.
fn human_duration(ns: i64) -> String {
    let s = ns / 1_000_000_000;
    if s >= 86_400 && s % 86_400 == 0 {
        format!("{} days", s / 86_400)
    } else if s >= 3600 && s % 3600 == 0 {
        format!("{} hours", s / 3600)
    } else {
        format!("{s}s")
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
    /// The bytes the node signs: `frame("result-v2", id, state, error,
    /// data, signature_of_the_reservation)`. Binding the reservation's
    /// signature means a result cannot be moved to another reservation.
    pub fn signing_message(&self, reservation_signature: &str) -> Vec<u8> {
        frame(&[
            frame::RESULT.as_bytes(),
            self.id.as_bytes(),
            self.state.as_str().as_bytes(),
            self.error.as_bytes(),
            self.data.get().as_bytes(),
            reservation_signature.as_bytes(),
        ])
    }

    /// Verify the node's signature, for the reservation whose signature is
    /// `reservation_signature`.
    pub fn verify(&self, node_id: &str, reservation_signature: &str) -> Result<(), Error> {
        crate::verify_signature(
            node_id,
            &self.signing_message(reservation_signature),
            &self.signature,
        )
        .map_err(|e| Error::BadSignature {
            what: format!("result {} signature", self.id),
            reason: format!("{e}"),
        })
    }
}

/// `null` as a raw JSON value.
pub fn null_raw() -> Box<RawValue> {
    RawValue::from_string("null".into()).expect("null is valid JSON")
}
