//! Whether and how kubernetes runs on this node: [`KubernetesMode`], the
//! refusal while it is disabled, and the check that a
//! `--kubernetes-runtime` is registered and isolating.

use crate::docker::Docker;

/// The refusal every kubernetes reservation gets while kubernetes is
/// disabled on the node.
pub const DISABLED: &str = "kubernetes is disabled on this node: k3s needs a privileged container; the operator enables it with --kubernetes-runtime <isolating runtime> or, on a single-tenant node, --kubernetes-privileged-unsafe";

/// OCI runtimes that share the host's kernel with plain namespaces: no
/// isolation for a privileged container. Refused by [`check_runtime_name`].
pub const NON_ISOLATING_RUNTIMES: &[&str] = &[
    "runc",
    "crun",
    "youki",
    "io.containerd.runc.v1",
    "io.containerd.runc.v2",
    "io.containerd.runtime.v1.linux",
];

/// Whether and how this node runs k3s nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum KubernetesMode {
    /// Every kubernetes reservation is refused with [`DISABLED`] (default).
    #[default]
    Disabled,
    /// Node containers run under this isolating OCI runtime (`kata`,
    /// `sysbox-runc`...), registered with the Docker engine.
    Runtime(String),
    /// Node containers run privileged on the host's runtime: any tenant
    /// owns the host. Only for a node with a single tenant.
    PrivilegedUnsafe,
}

impl KubernetesMode {
    /// `disabled`, `runtime <name>` or `privileged-unsafe`.
    pub fn describe(&self) -> String {
        match self {
            KubernetesMode::Disabled => "disabled".into(),
            KubernetesMode::Runtime(r) => format!("runtime {r}"),
            KubernetesMode::PrivilegedUnsafe => "privileged-unsafe".into(),
        }
    }
}

/// Refuse a runtime name known not to isolate (`runc` and its aliases).
pub fn check_runtime_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("--kubernetes-runtime: the runtime name is empty".into());
    }
    if NON_ISOLATING_RUNTIMES.contains(&name) {
        return Err(format!(
            "--kubernetes-runtime: {name:?} does not isolate containers from the host (a privileged k3s container would own it); name an isolating runtime such as kata or sysbox-runc, or use --kubernetes-privileged-unsafe on a single-tenant node"
        ));
    }
    Ok(())
}

/// Check that `name` is registered with the engine (`docker info`
/// Runtimes) and is not runc under another name.
pub async fn check_runtime(docker: &dyn Docker, name: &str) -> Result<(), String> {
    check_runtime_name(name)?;
    let info = docker
        .info()
        .await
        .map_err(|e| format!("--kubernetes-runtime: cannot read docker info: {e}"))?;
    check_runtime_in(name, &info.runtime_paths.into_iter().collect::<Vec<_>>())
}

/// [`check_runtime`] against a list of (name, path) registered runtimes.
pub fn check_runtime_in(name: &str, registered: &[(String, String)]) -> Result<(), String> {
    check_runtime_name(name)?;
    let Some((_, path)) = registered.iter().find(|(n, _)| n == name) else {
        let mut known: Vec<&str> = registered.iter().map(|(n, _)| n.as_str()).collect();
        known.sort();
        return Err(format!(
            "--kubernetes-runtime: runtime {name:?} is not registered with this node's docker engine (registered: {}); add it to \"runtimes\" in /etc/docker/daemon.json and restart dockerd",
            known.join(", ")
        ));
    };
    let base = path.rsplit('/').next().unwrap_or("");
    if NON_ISOLATING_RUNTIMES.contains(&base) {
        return Err(format!(
            "--kubernetes-runtime: runtime {name:?} runs {path:?}, which does not isolate containers from the host; name an isolating runtime such as kata or sysbox-runc"
        ));
    }
    Ok(())
}
