//! ed25519 identities of users and nodes: the seed file, ids (base58 of the
//! public key), and signing and verifying the protocol's messages.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::Utc;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::model::{null_raw, ResultState, WorkloadResult};
use crate::{Error, Reservation, Secret};

/// A key pair. The id is base58 of the public key.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
    id: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.id)
    }
}

impl Identity {
    /// The identity of a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let id = bs58::encode(key.verifying_key().as_bytes()).into_string();
        Identity { key, id }
    }

    /// A fresh random identity.
    pub fn generate() -> Self {
        Self::from_seed(&SigningKey::generate(&mut rand::rngs::OsRng).to_bytes())
    }

    /// Load the seed at `path`, or create it (mode 0600) on first start.
    /// A seed file readable by others, or not 32 bytes long, is an error:
    /// the node's identity must not be silently replaced or exposed.
    pub fn load_or_create(path: &Path) -> Result<Self, Error> {
        let err = |reason: String| Error::Seed {
            path: path.display().to_string(),
            reason,
        };
        match fs::read(path) {
            Ok(bytes) => {
                let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    err(format!("holds {} bytes, a seed is exactly 32", bytes.len()))
                })?;
                let mode = fs::metadata(path)
                    .map_err(|e| err(e.to_string()))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(err(format!(
                        "mode {:o} lets others read the node key; run chmod 600 on it",
                        mode & 0o777
                    )));
                }
                Ok(Self::from_seed(&seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(|e| err(format!("cannot create dir: {e}")))?;
                }
                let ident = Self::generate();
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| err(format!("cannot create: {e}")))?;
                f.write_all(&ident.key.to_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| err(format!("cannot write: {e}")))?;
                Ok(ident)
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// base58 of the public key.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The 32-byte seed (for writing key files in the CLI).
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Standard base64 of the signature over `msg`.
    pub fn sign(&self, msg: &[u8]) -> String {
        B64.encode(self.key.sign(msg).to_bytes())
    }

    /// Fill in `r.signature` as the user `self`. A reservation is never
    /// signed without a nonce: an empty one is filled with a fresh random
    /// nonce first.
    pub fn sign_reservation(&self, r: &mut Reservation) {
        if r.nonce.is_empty() {
            r.nonce = crate::model::new_nonce();
        }
        r.signature = self.sign(&r.signing_message());
    }

    /// The `delete_signature` for the reservation whose signature (base64
    /// text, exactly as in the reservation) is `reservation_signature`.
    pub fn sign_delete(&self, reservation_signature: &str) -> String {
        self.sign(&Reservation::delete_message(reservation_signature))
    }

    /// The node's confirmation that it decommissioned reservation `id`
    /// (body of `PUT /reservations/{id}/deleted`).
    pub fn sign_deleted(&self, id: &str, reservation_signature: &str) -> String {
        self.sign(&Reservation::deleted_message(id, reservation_signature))
    }

    /// A signed ok result for `r` carrying `data` (serialized once; those
    /// bytes are both signed and sent).
    pub fn ok_result(
        &self,
        r: &Reservation,
        data: &impl Serialize,
    ) -> Result<WorkloadResult, serde_json::Error> {
        let raw = RawValue::from_string(serde_json::to_string(data)?)?;
        Ok(self.sign_result(
            &r.kind,
            &r.id,
            &r.signature,
            ResultState::Ok,
            String::new(),
            raw,
        ))
    }

    /// A signed error result for `r` with the message a person can act on.
    pub fn error_result(&self, r: &Reservation, error: impl Into<String>) -> WorkloadResult {
        self.sign_result(
            &r.kind,
            &r.id,
            &r.signature,
            ResultState::Error,
            error.into(),
            null_raw(),
        )
    }

    /// A result signed for the reservation `id` whose user signature is
    /// `reservation_signature`.
    pub fn sign_result(
        &self,
        kind: &str,
        id: &str,
        reservation_signature: &str,
        state: ResultState,
        error: String,
        data: Box<RawValue>,
    ) -> WorkloadResult {
        let mut r = WorkloadResult {
            kind: kind.to_string(),
            id: id.to_string(),
            created: Utc::now(),
            state,
            error,
            data,
            signature: String::new(),
        };
        r.signature = self.sign(&r.signing_message(reservation_signature));
        r
    }

    /// Open a hex sealed secret from the field `field`.
    pub fn open_sealed(&self, field: &str, hex_box: &str) -> Result<Secret, Error> {
        crate::seal::open(&self.key, field, hex_box)
    }
}

/// Parse a base58 identity into an ed25519 public key.
pub fn parse_public_key(what: &'static str, id: &str) -> Result<VerifyingKey, Error> {
    let bad = |reason: String| Error::InvalidKey {
        what,
        value: id.chars().take(64).collect(),
        reason,
    };
    let bytes = bs58::decode(id)
        .into_vec()
        .map_err(|e| bad(format!("not base58: {e}")))?;
    let arr: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| bad(format!("decodes to {} bytes, a key is 32", bytes.len())))?;
    VerifyingKey::from_bytes(&arr).map_err(|_| bad("not an ed25519 public key".into()))
}

/// Most decompressed keys a [`KeyCache`] keeps; past that it starts over
/// (a node sees few distinct signers).
const KEY_CACHE_CAP: usize = 1024;

/// Signers' public keys, decoded once: decompressing the point costs about
/// a tenth of a verification. A value its owner holds (the agent's engine
/// keeps one for the judge), not process-wide state.
#[derive(Debug, Default)]
pub struct KeyCache {
    keys: std::sync::Mutex<std::collections::HashMap<String, VerifyingKey>>,
}

impl KeyCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// [`parse_public_key`] of a signer id, kept.
    fn key(&self, id: &str) -> Result<VerifyingKey, Error> {
        if let Some(vk) = self.keys.lock().ok().and_then(|k| k.get(id).copied()) {
            return Ok(vk);
        }
        let vk = parse_public_key("signer id", id)?;
        if let Ok(mut k) = self.keys.lock() {
            if k.len() >= KEY_CACHE_CAP {
                k.clear();
            }
            k.insert(id.to_string(), vk);
        }
        Ok(vk)
    }

    /// [`verify_signature`], with the signer's key from this cache.
    pub fn verify(&self, signer_id: &str, msg: &[u8], sig_b64: &str) -> Result<(), Error> {
        verify_with_key(&self.key(signer_id)?, msg, sig_b64)
    }
}

/// Verify the base64 signature `sig_b64` by `signer_id` over `msg`.
/// Strict verification: rejects small-order keys and malleable signatures.
pub fn verify_signature(signer_id: &str, msg: &[u8], sig_b64: &str) -> Result<(), Error> {
    verify_with_key(&parse_public_key("signer id", signer_id)?, msg, sig_b64)
}

/// Verify `sig_b64` by `vk` over `msg`, strictly.
fn verify_with_key(vk: &VerifyingKey, msg: &[u8], sig_b64: &str) -> Result<(), Error> {
    let bad = |reason: &str| Error::BadSignature {
        what: "signature".into(),
        reason: reason.into(),
    };
    if sig_b64.is_empty() {
        return Err(bad("missing"));
    }
    let bytes = B64
        .decode(sig_b64)
        .map_err(|_| bad("not standard base64"))?;
    let sig = Signature::from_slice(&bytes).map_err(|_| bad("not 64 bytes"))?;
    vk.verify_strict(msg, &sig)
        .map_err(|_| bad("does not verify against the signer's key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A signature whose `R` carries a small-order component (`rB + T`,
    /// `T` of order 2), made by the key's owner with an otherwise correct
    /// `s`, is refused, while the same key's plain signature over the same
    /// message verifies. ed25519-dalek's `verify_batch` accepts it (1,000
    /// batches of 8 out of 1,000, bench/notes.md section 2b): this is why a
    /// poll answer is not batch-verified. Vectors made with
    /// curve25519-dalek 4.1.3 (key: a random scalar times the base point).
    #[test]
    fn a_signature_with_a_torsion_component_in_r_is_refused() {
        let unhex = |h: &str| hex::decode(h).unwrap();
        let key = bs58::encode(unhex(
            "d37072ca2528f435fecf2a67479f47d92a7f1a2dfedfcc7dadd86752618e53d9",
        ))
        .into_string();
        let good = B64.encode(unhex(
            "6800a4104de0a07640bd5f9467d2964b710717aa105162f9edbb6fc923c87a17\
             ea99f00af92efa24f8864e3b102806c6c4ade4977afe7446d638605ed2fda008",
        ));
        let torsion = B64.encode(unhex(
            "7bf26d991e7fb5fbba344e68294d8db1e8d3519010354b29b705470085f9a841\
             792826360464eb69ea189bd8cc63d7cab653b3930108ee838b0bc4497e5d720a",
        ));
        verify_signature(&key, b"reservation", &good).unwrap();
        let refused = verify_signature(&key, b"reservation", &torsion).unwrap_err();
        assert!(refused.to_string().contains("does not verify"), "{refused}");
        let keys = KeyCache::new();
        keys.verify(&key, b"reservation", &good).unwrap();
        assert!(keys.verify(&key, b"reservation", &torsion).is_err());
    }

    #[test]
    fn a_cached_key_verifies_the_same() {
        let a = Identity::generate();
        let b = Identity::generate();
        let sig = a.sign(b"m");
        let keys = KeyCache::new();
        for _ in 0..2 {
            keys.verify(a.id(), b"m", &sig).unwrap();
            assert!(keys.verify(a.id(), b"n", &sig).is_err());
            assert!(keys.verify(b.id(), b"m", &sig).is_err());
            assert!(keys.verify("not-a-key", b"m", &sig).is_err());
            verify_signature(a.id(), b"m", &sig).unwrap();
            assert!(verify_signature(a.id(), b"n", &sig).is_err());
            assert!(verify_signature(b.id(), b"m", &sig).is_err());
        }
        assert!(verify_signature("not-a-key", b"m", &sig).is_err());
    }

    #[test]
    fn seed_file_is_created_0600_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/seed");
        let a = Identity::load_or_create(&p).unwrap();
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = Identity::load_or_create(&p).unwrap();
        assert_eq!(a.id(), b.id());
    }

    #[test]
    fn seed_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seed");
        Identity::load_or_create(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load_or_create(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn short_seed_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("seed");
        fs::write(&p, b"short").unwrap();
        assert!(Identity::load_or_create(&p).is_err());
    }
}
