//! The explorer's other JSON bodies: the answer of a `POST`, the deletion
//! request and confirmation, and the view of `GET /reservations/{id}`
//! (the reservation, its latest result, whether the node confirmed the
//! deletion). The reservation, the result and the node's messages are in
//! [`crate::model`] and [`crate::node`].

use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::{Reservation, WorkloadResult};

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

/// Answer of `GET /reservations/{id}`: the reservation's own fields (its
/// `data` byte for byte), then `"result"` (the latest, or `null`) and
/// `"deleted"` (the node confirmed the deletion). It reads as the
/// reservation it wraps (`Deref`).
///
/// Serialized through `#[serde(flatten)]`; read by hand, because a
/// flattened `RawValue` cannot be deserialized: the keys of
/// [`Reservation::FIELDS`] are gathered as raw JSON and parsed as one
/// [`Reservation`]; other keys are ignored.
#[derive(Debug, Clone, Serialize)]
pub struct ReservationView {
    #[serde(flatten)]
    pub reservation: Reservation,
    pub result: Option<WorkloadResult>,
    pub deleted: bool,
}

impl ReservationView {
    /// The view of `r` with its latest `result`.
    pub fn new(r: &Reservation, result: Option<WorkloadResult>, deleted: bool) -> Self {
        ReservationView {
            reservation: r.clone(),
            result,
            deleted,
        }
    }
}

impl std::ops::Deref for ReservationView {
    type Target = Reservation;

    fn deref(&self) -> &Reservation {
        &self.reservation
    }
}

impl<'de> Deserialize<'de> for ReservationView {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ViewVisitor)
    }
}

struct ViewVisitor;

impl<'de> Visitor<'de> for ViewVisitor {
    type Value = ReservationView;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a reservation with \"result\" and \"deleted\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ReservationView, A::Error> {
        let mut result: Option<Option<WorkloadResult>> = None;
        let mut deleted: Option<bool> = None;
        // The reservation's own keys, re-assembled around their raw values.
        let mut own = String::from("{");
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "result" => result = Some(map.next_value()?),
                "deleted" => deleted = Some(map.next_value()?),
                k if Reservation::FIELDS.contains(&k) => {
                    let v: Box<RawValue> = map.next_value()?;
                    if own.len() > 1 {
                        own.push(',');
                    }
                    own.push_str(&serde_json::to_string(k).map_err(de::Error::custom)?);
                    own.push(':');
                    own.push_str(v.get());
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        own.push('}');
        let reservation = serde_json::from_str(&own).map_err(de::Error::custom)?;
        Ok(ReservationView {
            reservation,
            result: result.unwrap_or(None),
            deleted: deleted.ok_or_else(|| de::Error::missing_field("deleted"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of `GET /reservations/{id}` as the explorer always wrote
    /// them: the reservation's keys in order, then `result` and `deleted`.
    const VIEW: &str = r#"{"id":"1-1","version":2,"node_id":"n","user_id":"u","type":"volume","data":{"size": 1,  "type":"SSD"},"created":"2026-11-25T11:00:00Z","duration":5,"nonce":"00ff","signature":"c2ln","to_delete":true,"delete_signature":"ZGVs","result":null,"deleted":false}"#;

    #[test]
    fn the_view_is_the_reservation_then_result_and_deleted() {
        let v: ReservationView = serde_json::from_str(VIEW).unwrap();
        assert_eq!(v.id, "1-1");
        assert_eq!(
            v.data.get(),
            r#"{"size": 1,  "type":"SSD"}"#,
            "data byte for byte"
        );
        assert_eq!(serde_json::to_string(&v).unwrap(), VIEW);
        let r: Reservation = serde_json::from_str(
            r#"{"id":"2-1","node_id":"n","user_id":"u","type":"debug","data":{}}"#,
        )
        .unwrap();
        let v = ReservationView::new(&r, None, true);
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"id":"2-1","node_id":"n","user_id":"u","type":"debug","data":{},"duration":0,"signature":"","to_delete":false,"result":null,"deleted":true}"#
        );
    }

    #[test]
    fn unknown_keys_are_ignored_and_deleted_is_required() {
        let extra = VIEW.replacen('{', r#"{"extension":[1,{"a":2}],"#, 1);
        let v: ReservationView = serde_json::from_str(&extra).unwrap();
        assert_eq!(v.signature, "c2ln");
        let no_result = VIEW.replace(r#""result":null,"#, "");
        assert!(serde_json::from_str::<ReservationView>(&no_result)
            .unwrap()
            .result
            .is_none());
        let e = serde_json::from_str::<ReservationView>(&VIEW.replace(r#","deleted":false"#, ""))
            .unwrap_err();
        assert!(e.to_string().contains("missing field `deleted`"), "{e}");
        let e = serde_json::from_str::<ReservationView>(&VIEW.replace(r#""id":"1-1","#, ""))
            .unwrap_err();
        assert!(e.to_string().contains("missing field `id`"), "{e}");
    }

    #[test]
    fn fields_names_every_key_of_a_reservation() {
        let own = format!("{}}}", VIEW.split(r#","result""#).next().unwrap());
        let full: Reservation = serde_json::from_str(&own).unwrap();
        let v = serde_json::to_value(&full).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut fields = Reservation::FIELDS.to_vec();
        keys.sort();
        fields.sort();
        assert_eq!(keys, fields);
    }
}
