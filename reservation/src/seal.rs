//! Sealed secrets: libsodium `crypto_box_seal` boxes, hex encoded, made for
//! a node's X25519 key (the birational map of its ed25519 key).

use std::fmt;

use crypto_box::{PublicKey, SecretKey};
use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::Error;

/// A plaintext secret. Its `Debug` and `Display` never show the value, so it
/// cannot leak into logs by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The plaintext; call only where the value leaves for its workload.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Seal `plaintext` for the node `node_id`; hex of the box.
pub fn seal_for(node_id: &str, plaintext: &[u8]) -> Result<String, Error> {
    let vk = crate::identity::parse_public_key("node_id", node_id)?;
    let pk = PublicKey::from(vk.to_montgomery().to_bytes());
    let sealed = pk
        .seal(&mut rand::rngs::OsRng, plaintext)
        .map_err(|e| Error::Seal {
            field: "plaintext".into(),
            reason: format!("cannot seal: {e}"),
        })?;
    Ok(hex::encode(sealed))
}

/// Open the hex box in `field` with the node's signing key.
pub(crate) fn open(key: &SigningKey, field: &str, hex_box: &str) -> Result<Secret, Error> {
    let bytes = hex::decode(hex_box.trim()).map_err(|e| Error::Seal {
        field: field.into(),
        reason: format!("not hex: {e}"),
    })?;
    let sk = SecretKey::from(key.to_scalar_bytes());
    let plain = sk.unseal(&bytes).map_err(|_| Error::Seal {
        field: field.into(),
        reason: "cannot be opened with this node's key (sealed for another node, or corrupt)"
            .into(),
    })?;
    let s = String::from_utf8(plain).map_err(|_| Error::Seal {
        field: field.into(),
        reason: "plaintext is not UTF-8".into(),
    })?;
    Ok(Secret(s))
}

/// The X25519 public key a node's secrets are sealed to.
pub fn x25519_public(vk: &VerifyingKey) -> [u8; 32] {
    vk.to_montgomery().to_bytes()
}
