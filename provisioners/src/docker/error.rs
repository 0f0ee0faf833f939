//! [`DockerError`]: what a call across the Docker seam fails with, and how
//! it becomes a [`ProvisionError`].
//!
//! Each variant displays exactly as the `ProvisionError` it turns into
//! (engine failures as `docker: <what>: <Docker's message>`), so operators
//! and signed error results read the same text whichever of the two a
//! caller holds. The bollard error stays reachable as the `source`.

use std::sync::Arc;
use std::time::Duration;

use crate::ProvisionError;

type BErr = ::bollard::errors::Error;

/// Errors of the Docker seam.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DockerError {
    /// The engine cannot be reached, or the API version not agreed on.
    #[error("docker: {what}: {source}")]
    Connect {
        what: &'static str,
        #[source]
        source: Arc<BErr>,
    },
    /// The engine failed `what` (e.g. `create container agent-ct-1-1`);
    /// `message` is Docker's own, without bollard's wrapping.
    #[error("docker: {what}: {message}")]
    Engine {
        what: String,
        message: String,
        #[source]
        source: Arc<BErr>,
    },
    /// Docker refuses to remove an object something still uses (a volume
    /// mounted, a network with endpoints, a container being removed).
    #[error("{message}")]
    InUse {
        message: String,
        #[source]
        source: Option<Arc<BErr>>,
    },
    /// The container does not exist (asked for its log stream).
    #[error("container {0} does not exist")]
    NoSuchContainer(String),
    /// A pull did not finish within the operator's deadline.
    #[error("pulling image {image} did not finish within {}s (--pull-timeout)", .timeout.as_secs())]
    PullTimeout { image: String, timeout: Duration },
    /// Files to upload cannot be packed into a tar archive.
    #[error("{0}")]
    Archive(String),
    /// A failure with no bollard error behind it: an object gone between
    /// two calls, or what the recording fake was told to fail with.
    #[error("docker: {0}")]
    Other(String),
}

impl DockerError {
    /// The engine failed `what` with bollard error `e`.
    pub(crate) fn engine(what: impl std::fmt::Display, e: BErr) -> Self {
        DockerError::Engine {
            what: what.to_string(),
            message: message_of(&e),
            source: Arc::new(e),
        }
    }

    /// The engine refused to remove an object still in use: `message`,
    /// then Docker's own words.
    pub(crate) fn in_use(message: impl std::fmt::Display, e: BErr) -> Self {
        DockerError::InUse {
            message: format!("{message}: {}", message_of(&e)),
            source: Some(Arc::new(e)),
        }
    }
}

/// The HTTP status of an engine answer.
pub(crate) fn status_of(e: &BErr) -> Option<u16> {
    match e {
        BErr::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// Docker's own message, without bollard's wrapping.
fn message_of(e: &BErr) -> String {
    match e {
        BErr::DockerResponseServerError { message, .. } => message.clone(),
        BErr::DockerStreamError { error } => error.clone(),
        other => other.to_string(),
    }
}

/// Who must act decides the variant: a removal that must wait is
/// [`ProvisionError::InUse`] (retried later), a missing container or a
/// pull past its deadline is the request's fault
/// ([`ProvisionError::Refused`]), files that cannot be packed are the
/// node's ([`ProvisionError::Node`]); the rest is the engine's
/// ([`ProvisionError::Docker`]).
impl From<DockerError> for ProvisionError {
    fn from(e: DockerError) -> Self {
        match e {
            DockerError::InUse { message, .. } => ProvisionError::InUse(message),
            e @ (DockerError::NoSuchContainer(_) | DockerError::PullTimeout { .. }) => {
                ProvisionError::Refused(e.to_string())
            }
            DockerError::Archive(m) => ProvisionError::Node(m),
            e @ (DockerError::Connect { .. }
            | DockerError::Engine { .. }
            | DockerError::Other(_)) => ProvisionError::Docker(e),
        }
    }
}
