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

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    fn server(status_code: u16, message: &str) -> BErr {
        BErr::DockerResponseServerError {
            status_code,
            message: message.into(),
        }
    }

    #[test]
    fn engine_errors_keep_their_text_and_their_source() {
        let e = DockerError::engine("start container agent-ct-1-1", server(500, "boom"));
        assert_eq!(e.to_string(), "docker: start container agent-ct-1-1: boom");
        let p = ProvisionError::from(e.clone());
        assert!(matches!(p, ProvisionError::Docker(_)));
        assert_eq!(p.to_string(), e.to_string());
        let source = p.source().expect("the bollard error");
        assert!(source.downcast_ref::<Arc<BErr>>().is_some(), "{source:?}");
    }

    #[test]
    fn each_variant_becomes_the_provision_error_of_who_must_act() {
        let in_use = DockerError::in_use("docker volume v is in use", server(409, "mounted"));
        match ProvisionError::from(in_use) {
            ProvisionError::InUse(m) => assert_eq!(m, "docker volume v is in use: mounted"),
            other => panic!("{other:?}"),
        }
        let gone = ProvisionError::from(DockerError::NoSuchContainer("c".into()));
        assert!(matches!(&gone, ProvisionError::Refused(m) if m == "container c does not exist"));
        let slow = ProvisionError::from(DockerError::PullTimeout {
            image: "i:1".into(),
            timeout: Duration::from_secs(3),
        });
        assert_eq!(
            slow.to_string(),
            "pulling image i:1 did not finish within 3s (--pull-timeout)"
        );
        assert!(matches!(slow, ProvisionError::Refused(_)));
        let tar = ProvisionError::from(DockerError::Archive("cannot upload".into()));
        assert!(matches!(tar, ProvisionError::Node(_)));
        let other = ProvisionError::from(DockerError::Other("x".into()));
        assert_eq!(other.to_string(), "docker: x");
    }
}
