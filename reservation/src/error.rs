//! The crate's one error enum; every message names the field, id or path.

/// Errors of the reservation crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key or identity string that is not a valid ed25519 public key.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidKey {
        what: &'static str,
        value: String,
        reason: String,
    },
    /// A signature that is missing, malformed, or does not verify.
    #[error("{what}: {reason}")]
    BadSignature { what: String, reason: String },
    /// Workload `data` that does not parse or is out of range.
    #[error("data.{field}: {message}")]
    Data { field: String, message: String },
    /// Any other invalid field of a reservation.
    #[error("{field}: {message}")]
    Field { field: String, message: String },
    /// A sealed secret that cannot be opened or made.
    #[error("sealed secret {field}: {reason}")]
    Seal { field: String, reason: String },
    /// The seed file cannot be read or written.
    #[error("node seed file {path}: {reason}")]
    Seed { path: String, reason: String },
}

impl Error {
    pub(crate) fn data(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Data {
            field: field.into(),
            message: message.into(),
        }
    }
}
