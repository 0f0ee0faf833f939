//! Framing of every signed message (protocol version 2): each field is
//! written as its byte length (u32, big endian) followed by its bytes, the
//! first field being a fixed tag that names the message.
//!
//! Version 1 signed plain concatenations, so bytes could move from one field
//! to its neighbour (`created ‖ duration`, `id ‖ state`) without changing
//! the signed message. A length prefix pins every field's boundaries.

/// Tag of a user's reservation signature.
pub const RESERVATION: &str = "reservation-v2";
/// Tag of a user's deletion signature.
pub const DELETE: &str = "delete-v2";
/// Tag of a node's result signature.
pub const RESULT: &str = "result-v2";
/// Tag of a node's deletion confirmation (`PUT /reservations/{id}/deleted`).
pub const DELETED: &str = "deleted-v2";
/// Tag of a node's registration and uptime messages.
pub const NODE: &str = "node-v2";

/// `frame(f1, ..., fn)`: for each field, `u32_be(len) ‖ bytes`.
///
/// A field of 4 GiB or more cannot reach here (every request is capped far
/// below); its prefix would saturate and the message would not verify.
pub fn frame(fields: &[&[u8]]) -> Vec<u8> {
    let len: usize = fields.iter().map(|f| 4 + f.len()).sum();
    let mut m = Vec::with_capacity(len);
    for f in fields {
        let n = u32::try_from(f.len()).unwrap_or(u32::MAX);
        m.extend_from_slice(&n.to_be_bytes());
        m.extend_from_slice(f);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_length_prefixed_big_endian() {
        assert_eq!(
            frame(&[b"ab", b"", b"c"]),
            [0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0, 0, 0, 0, 1, b'c']
        );
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_message() {
        // The version 1 digit shift: "1795604400" ‖ "3600000000000" and
        // "17956044003" ‖ "600000000000" concatenate to the same bytes.
        assert_ne!(
            frame(&[b"1795604400", b"3600000000000"]),
            frame(&[b"17956044003", b"600000000000"])
        );
        assert_ne!(frame(&[b"12-1ok", b"error"]), frame(&[b"12-1", b"okerror"]));
    }
}
