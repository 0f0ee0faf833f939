//! The one Docker seam: the [`Docker`] trait every provisioner (and the
//! agent's crash watch and control socket) holds as `Arc<dyn Docker>`,
//! with its real implementation over bollard ([`BollardDocker`]) and the
//! recording fake for unit tests (`FakeDocker`).
//!
//! - `types.rs`: the plain structs that cross the seam.
//! - `error.rs`: [`DockerError`], and how it becomes a `ProvisionError`.
//! - `bollard.rs`, `bollard_convert.rs`: [`BollardDocker`]; the only files
//!   of the crate that name bollard.
//! - `fake.rs`: `FakeDocker` (tests and the `fake` feature).
//!
//! Conventions every implementation keeps:
//! - `inspect_*` answer `Ok(None)` for an object that does not exist;
//! - `remove_*` answer `Ok(false)` for an object already gone, and
//!   [`DockerError::InUse`] when Docker refuses because something still
//!   uses it (a volume mounted, a network with endpoints);
//! - every other engine failure is [`DockerError::Engine`] with Docker's
//!   message (the fake's are [`DockerError::Other`]).

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;

mod bollard;
mod bollard_convert;
mod error;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
mod types;

pub use self::bollard::BollardDocker;
pub use error::DockerError;
#[cfg(any(test, feature = "fake"))]
pub use fake::FakeDocker;
pub use types::*;

/// The operations the agent needs from a Docker engine, and no more, by
/// object kind: the engine, images, containers (with their runs and logs),
/// volumes and networks.
#[async_trait]
pub trait Docker: Send + Sync {
    // --- The engine -------------------------------------------------------

    /// Ping the engine and report its version and resources.
    async fn info(&self) -> Result<DockerInfo, DockerError>;

    // --- Images -----------------------------------------------------------

    /// Whether `image` (a reference, tag optional) is present locally.
    async fn image_exists(&self, image: &str) -> Result<bool, DockerError>;
    /// Pull `image` (tag `latest` when none is given), logging progress.
    async fn pull_image(&self, image: &str) -> Result<(), DockerError>;
    /// Images any container (the agent's or not, in any state) was
    /// created from, by reference and by id.
    async fn images_in_use(&self) -> Result<HashSet<String>, DockerError>;
    /// Remove image `image`; an image already gone is fine.
    async fn remove_image(&self, image: &str) -> Result<(), DockerError>;

    // --- Containers -------------------------------------------------------

    async fn inspect_container(&self, name: &str) -> Result<Option<ContainerInfo>, DockerError>;
    /// Create (not start) a container; returns its id.
    async fn create_container(&self, spec: &ContainerSpec) -> Result<String, DockerError>;
    /// Create (not start) a tenant's container, confined by `confine`;
    /// returns its id.
    async fn create_confined_container(
        &self,
        spec: &ContainerSpec,
        confine: &Confinement,
    ) -> Result<String, DockerError>;
    /// Create (not start) a container with `extras` (a k3s node: privileged,
    /// a command for the image's entrypoint, tmpfs); returns its id.
    async fn create_container_with(
        &self,
        spec: &ContainerSpec,
        extras: &ContainerExtras,
    ) -> Result<String, DockerError>;
    /// Write `files` into container `name` (created or running), owned by
    /// root. Missing parent directories are created with mode 0700.
    async fn upload_files(&self, name: &str, files: &[FileUpload]) -> Result<(), DockerError>;
    async fn start_container(&self, name: &str) -> Result<(), DockerError>;
    /// Stop with SIGTERM, then SIGKILL after `grace`. Stopping a stopped or
    /// missing container succeeds.
    async fn stop_container(&self, name: &str, grace: Duration) -> Result<(), DockerError>;
    /// Remove a (stopped) container and its anonymous volumes.
    async fn remove_container(&self, name: &str) -> Result<bool, DockerError>;
    async fn list_containers(
        &self,
        filter: &ContainerFilter,
    ) -> Result<Vec<ContainerInfo>, DockerError>;
    /// How container `name` has been running (restarts, last exit), for
    /// the crash policy; `Ok(None)` if it does not exist.
    async fn container_runs(&self, name: &str) -> Result<Option<ContainerRuns>, DockerError>;

    // --- Logs -------------------------------------------------------------

    /// The last `tail` lines of stdout and stderr.
    async fn container_logs(&self, name: &str, tail: usize) -> Result<String, DockerError>;
    /// The last `tail` lines of container `name`, then (with `follow`)
    /// every new line until the container stops or the stream is dropped.
    /// A missing container is [`DockerError::NoSuchContainer`].
    async fn stream_logs(
        &self,
        name: &str,
        tail: usize,
        follow: bool,
    ) -> Result<LogStream, DockerError>;

    // --- Volumes ----------------------------------------------------------

    async fn create_volume(&self, spec: &VolumeSpec) -> Result<(), DockerError>;
    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeInfo>, DockerError>;
    async fn remove_volume(&self, name: &str) -> Result<bool, DockerError>;
    /// Volumes carrying every `(key, value)` label.
    async fn list_volumes(
        &self,
        labels: &[(String, String)],
    ) -> Result<Vec<VolumeInfo>, DockerError>;

    // --- Networks ---------------------------------------------------------

    /// Create a bridge network; returns its id.
    async fn create_network(&self, spec: &NetworkSpec) -> Result<String, DockerError>;
    async fn inspect_network(&self, name: &str) -> Result<Option<NetworkInfo>, DockerError>;
    async fn remove_network(&self, name: &str) -> Result<bool, DockerError>;
    /// Every network of the engine (Docker's own included).
    async fn list_networks(&self) -> Result<Vec<NetworkInfo>, DockerError>;
}

/// The containers matching `filter`, as `name (state), ...`, or `None` when
/// there are none: what an InUse refusal names.
pub async fn users_of(
    docker: &dyn Docker,
    filter: &ContainerFilter,
) -> Result<Option<String>, DockerError> {
    let users = docker.list_containers(filter).await?;
    Ok((!users.is_empty()).then(|| {
        users
            .iter()
            .map(|c| format!("{} ({})", c.name, c.state))
            .collect::<Vec<_>>()
            .join(", ")
    }))
}

/// Split an image reference into `(repository, tag)`, `latest` when there
/// is neither tag nor digest (Docker would otherwise pull every tag).
pub fn split_image_tag(image: &str) -> (String, String) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo.to_string(), digest.to_string());
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rfind(':') {
        Some(i) => {
            let cut = image.len() - last.len() + i;
            (image[..cut].to_string(), image[cut + 1..].to_string())
        }
        None => (image.to_string(), "latest".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags() {
        let t = |s: &str| split_image_tag(s);
        assert_eq!(t("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(t("a/b:1.2"), ("a/b".into(), "1.2".into()));
        assert_eq!(
            t("reg.io:5000/a/b"),
            ("reg.io:5000/a/b".into(), "latest".into())
        );
        assert_eq!(
            t("reg.io:5000/a/b:v1"),
            ("reg.io:5000/a/b".into(), "v1".into())
        );
        assert_eq!(t("a@sha256:ab"), ("a".into(), "sha256:ab".into()));
    }
}
