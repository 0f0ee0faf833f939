//! The wake-up messages replicas send each other through PostgreSQL's
//! `NOTIFY`: what [`super::notifier`] sends, and how a listening replica
//! reads what it receives ([`Reader`]).
//!
//! Two channels:
//! - [`WAKE_CHANNEL`] (`explorer_wake`, every release): the payload is a
//!   node id; the node's polls held on the receiving replica look again,
//!   a query each;
//! - [`WROTE_CHANNEL`] (`explorer_wrote`, from this release on): a JSON
//!   object, either `{"node": ID}` (the same wake-up) or `{"after": N,
//!   "r": RESERVATION}`: a new reservation, with its id, whose node's
//!   highest number before it was `N` (0: none). A replica whose proof of
//!   that node's polls covers `N` answers its held poll from the payload,
//!   without a query, as it does for its own writes
//!   (`crate::storage::Wakers::wrote`). Without this, half of all writes
//!   behind a load balancer of two replicas (more with more replicas) cost
//!   the other replica one poll query each.
//!
//! Replicas of earlier releases listen on the old channel only, so this
//! release sends every message on the new channel first and then, in the
//! same statement, each node id on the old channel. A statement's
//! notifications reach every listener together and in the order sent
//! (PostgreSQL serializes the commits of notifying transactions), so a
//! reader skips the old channel's messages that directly follow the new
//! channel's messages of the same session: each wake-up counts once. Any
//! doubt (an unreadable payload) wakes more, never less.

use reservation::Reservation;
use serde::{Deserialize, Serialize};

use crate::storage::MAX_FRESH_DATA;

/// The channel of every release; the payload is a node id.
pub(crate) const WAKE_CHANNEL: &str = "explorer_wake";

/// The channel of this release: JSON payloads (see the module doc).
pub(crate) const WROTE_CHANNEL: &str = "explorer_wrote";

/// PostgreSQL refuses a payload of 8,000 bytes or more.
const MAX_PAYLOAD: usize = 7_999;

/// One message to send: a node's wake-up, on both channels.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Notice {
    node: String,
    /// The new channel's payload.
    payload: String,
}

/// The new channel's payload, as sent.
#[derive(Serialize)]
struct Out<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    r: Option<&'a Reservation>,
}

/// The new channel's payload, as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct In {
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    r: Option<Reservation>,
}

impl Notice {
    /// Wake `node`'s held polls on every replica: they look again.
    pub fn wake(node: &str) -> Notice {
        let out = Out {
            node: Some(node),
            after: None,
            r: None,
        };
        Notice {
            node: node.to_string(),
            payload: serde_json::to_string(&out).expect("plain data serializes"),
        }
    }

    /// `r` was stored, with its id, and its node's highest number before
    /// it was `after` (`None`: unknown). The reservation travels when a
    /// receiver could keep it (`data` within what a proof keeps) and the
    /// payload fits; otherwise this is a plain wake-up.
    pub fn wrote(r: &Reservation, after: Option<u64>) -> Notice {
        let Some(after) = after else {
            return Notice::wake(&r.node_id);
        };
        if r.data.get().len() > MAX_FRESH_DATA || r.number().is_none() {
            return Notice::wake(&r.node_id);
        }
        let out = Out {
            node: None,
            after: Some(after),
            r: Some(r),
        };
        match serde_json::to_string(&out) {
            Ok(payload) if payload.len() <= MAX_PAYLOAD => Notice {
                node: r.node_id.clone(),
                payload,
            },
            _ => Notice::wake(&r.node_id),
        }
    }

    /// The node whose polls this wakes.
    #[cfg(test)]
    pub fn node(&self) -> &str {
        &self.node
    }
}

/// The channels and payloads of one `NOTIFY` statement sending `notices`:
/// every notice on the new channel, in order (a node's writes chain by
/// `after`), then each node once on the old channel.
pub(crate) fn statement(notices: &[Notice]) -> (Vec<&'static str>, Vec<&str>) {
    let mut old: Vec<&str> = notices.iter().map(|n| n.node.as_str()).collect();
    old.sort_unstable();
    old.dedup();
    let mut channels = Vec::with_capacity(notices.len() + old.len());
    let mut payloads = Vec::with_capacity(notices.len() + old.len());
    for n in notices {
        channels.push(WROTE_CHANNEL);
        payloads.push(n.payload.as_str());
    }
    for node in old {
        channels.push(WAKE_CHANNEL);
        payloads.push(node);
    }
    (channels, payloads)
}

/// What a received message asks of this replica.
#[derive(Debug)]
pub(crate) enum Heard {
    /// A reservation another replica stored, and its node's highest number
    /// before it.
    Wrote(Box<Reservation>, u64),
    /// Wake this node's held polls.
    Wake(String),
    /// Nothing: the old channel's copy of a message already read.
    Copy,
    /// A payload this release cannot read (of a later release, say): wake
    /// the polls of the node it names, if it names one, else every held
    /// poll.
    Unreadable { node: Option<String>, error: String },
}

/// Reads the messages of both channels, in the order received.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    /// The session whose new-channel messages came last, while nothing
    /// else came since: its old-channel messages are copies.
    new_sender: Option<u32>,
}

impl Reader {
    /// The message `payload` on `channel` from the session `pid`.
    pub fn read(&mut self, pid: u32, channel: &str, payload: &str) -> Heard {
        if channel != WROTE_CHANNEL {
            if self.new_sender == Some(pid) {
                return Heard::Copy;
            }
            self.new_sender = None;
            return Heard::Wake(payload.to_string());
        }
        self.new_sender = Some(pid);
        match serde_json::from_str::<In>(payload) {
            Ok(In {
                node: None,
                after: Some(after),
                r: Some(r),
            }) => Heard::Wrote(Box::new(r), after),
            Ok(In {
                node: Some(node),
                after: None,
                r: None,
            }) => Heard::Wake(node),
            Ok(_) => Heard::Unreadable {
                node: node_named(payload),
                error: "neither a node nor a reservation".into(),
            },
            Err(e) => Heard::Unreadable {
                node: node_named(payload),
                error: e.to_string(),
            },
        }
    }
}

/// The node an unreadable payload still names: its `node`, or its
/// reservation's `node_id`.
fn node_named(payload: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let node = v.get("node").or_else(|| v.pointer("/r/node_id"))?;
    node.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(number: u64, data: &str) -> Reservation {
        let mut r: Reservation = serde_json::from_value(serde_json::json!({
            "id": format!("{number}-1"),
            "version": 2,
            "node_id": "node-a",
            "user_id": "user",
            "type": "volume",
            "data": null,
            "created": "2026-12-01T05:00:00Z",
            "duration": 3_600_000_000_000i64,
            "nonce": "n1",
            "signature": "ab",
        }))
        .unwrap();
        // data byte for byte, not as serde_json would spell it
        r.data = serde_json::value::RawValue::from_string(data.to_string()).unwrap();
        r
    }

    /// Sends `notices` as one statement and reads them back in order.
    fn round_trip(reader: &mut Reader, pid: u32, notices: &[Notice]) -> Vec<Heard> {
        let (channels, payloads) = statement(notices);
        channels
            .iter()
            .zip(payloads)
            .map(|(c, p)| reader.read(pid, c, p))
            .collect()
    }

    #[test]
    fn a_write_arrives_whole_and_its_old_channel_copy_is_skipped() {
        let r = stored(7, r#"{ "size":1,  "type":"SSD"}"#);
        let mut reader = Reader::default();
        let heard = round_trip(&mut reader, 42, &[Notice::wrote(&r, Some(3))]);
        let [Heard::Wrote(got, 3), Heard::Copy] = &heard[..] else {
            panic!("{heard:?}");
        };
        assert_eq!(
            serde_json::to_string(&**got).unwrap(),
            serde_json::to_string(&r).unwrap()
        );
        assert_eq!(got.data.get(), r#"{ "size":1,  "type":"SSD"}"#);
        assert_eq!(got.number(), Some(7));
    }

    #[test]
    fn an_older_replica_s_wake_up_is_read_after_a_new_one_s() {
        let mut reader = Reader::default();
        let r = stored(7, "{}");
        round_trip(&mut reader, 42, &[Notice::wrote(&r, Some(3))]);
        // Another session (an older replica) on the old channel only.
        assert!(matches!(reader.read(43, WAKE_CHANNEL, "node-b"), Heard::Wake(n) if n == "node-b"));
        // And the first session's later old-channel message, alone (an
        // older replica that got its process id): not a copy either.
        assert!(matches!(reader.read(42, WAKE_CHANNEL, "node-c"), Heard::Wake(n) if n == "node-c"));
    }

    #[test]
    fn a_wake_up_and_a_write_of_one_node_in_one_statement_both_count() {
        let mut reader = Reader::default();
        let r = stored(8, "{}");
        let heard = round_trip(
            &mut reader,
            42,
            &[Notice::wake("node-a"), Notice::wrote(&r, Some(7))],
        );
        assert!(
            matches!(&heard[..], [Heard::Wake(n), Heard::Wrote(_, 7), Heard::Copy] if n == "node-a"),
            "{heard:?}"
        );
    }

    #[test]
    fn what_cannot_travel_is_a_plain_wake_up() {
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_FRESH_DATA));
        let unknown = Notice::wrote(&stored(9, "{}"), None);
        for n in [Notice::wrote(&stored(9, &big), Some(1)), unknown] {
            assert_eq!(n, Notice::wake("node-a"));
        }
        // Within what a proof keeps, but too long for a payload.
        let mut r = stored(9, "{}");
        r.nonce = "n".repeat(MAX_PAYLOAD);
        assert_eq!(Notice::wrote(&r, Some(1)), Notice::wake("node-a"));
        assert_eq!(Notice::wake("node-a").node(), "node-a");
    }

    #[test]
    fn deeply_nested_data_is_read_back_whole() {
        // One level deeper in the payload than in a POST: `data` is raw
        // both ways (serde_json skips it without its recursion limit), so
        // nothing a user stores makes other replicas wake every poll.
        for depth in [1, 127, 128, 129, 1000] {
            let data = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let r = stored(5, &data);
            let posted = serde_json::to_string(&r).unwrap();
            assert!(
                serde_json::from_str::<Reservation>(&posted).is_ok(),
                "{depth}"
            );
            let notice = [Notice::wrote(&r, Some(4))];
            let (channels, payloads) = statement(&notice);
            let heard = Reader::default().read(1, channels[0], payloads[0]);
            assert!(
                matches!(&heard, Heard::Wrote(got, 4) if got.data.get() == data),
                "depth {depth}: {heard:?}"
            );
        }
    }

    #[test]
    fn an_unreadable_payload_says_so() {
        let mut reader = Reader::default();
        for p in ["", "{", r#"{"after":1}"#, r#"{"x":1}"#, r#"{"node":7}"#] {
            assert!(
                matches!(
                    reader.read(1, WROTE_CHANNEL, p),
                    Heard::Unreadable { node: None, .. }
                ),
                "{p}"
            );
        }
        // A later release's fields: still the node it names.
        let later = [
            r#"{"node":"a","after":1}"#,
            r#"{"node":"a","priority":2}"#,
            r#"{"after":1,"r":{"node_id":"a","new_field":true}}"#,
        ];
        for p in later {
            assert!(
                matches!(reader.read(1, WROTE_CHANNEL, p), Heard::Unreadable { node: Some(n), .. } if n == "a"),
                "{p}"
            );
        }
    }

    #[test]
    fn one_statement_names_each_node_once_on_the_old_channel() {
        let (a, b) = (stored(1, "{}"), stored(2, "{}"));
        let notices = [
            Notice::wrote(&a, Some(0)),
            Notice::wrote(&b, Some(1)),
            Notice::wake("node-b"),
        ];
        let (channels, payloads) = statement(&notices);
        assert_eq!(
            channels,
            [
                WROTE_CHANNEL,
                WROTE_CHANNEL,
                WROTE_CHANNEL,
                WAKE_CHANNEL,
                WAKE_CHANNEL
            ]
        );
        assert_eq!(&payloads[3..], ["node-a", "node-b"]);
    }
}
