//! `agent --dev` (cargo feature `dev`, on by default): the reference
//! explorer in the daemon's process on 127.0.0.1, the command that reserves
//! a workload on this node, and the reminder at exit that the workloads
//! keep running. The Debian package is built without it.

use std::future::Future;
use std::net::SocketAddr;

use reservation::Identity;
use store::Store;
use tracing::warn;

use crate::config::Settings;
use crate::AgentError;

/// Serve the reference explorer on 127.0.0.1:`--dev-port` until `stop`,
/// with its data under the root, and print a ready-to-paste reservation
/// command.
pub async fn start_explorer(
    settings: &Settings,
    node: &Identity,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], settings.dev_port));
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| AgentError::Config {
        path: "--dev".into(),
        reason: format!("cannot listen on {addr} for the dev explorer: {e} (is another agent --dev or explorer running? pick another port with --dev-port)"),
    })?;
    let cfg = explorer::ServerConfig {
        data_dir: settings.root.join("explorer"),
        ..explorer::ServerConfig::default()
    };
    tokio::spawn(async move {
        if let Err(e) = explorer::serve(listener, cfg, stop).await {
            warn!(error = %e, "dev explorer stopped");
        }
    });
    let id = node.id();
    println!(
        "\nagent --dev: explorer on http://{addr}, node id {id}\n\
         Reserve a container on this node from another terminal, in this checkout:\n\n  \
         cargo build --bins && export PATH=$PWD/target/debug:$PATH\n  \
         bash tests/images/build.sh     # the local image agent-test/busybox:latest\n  \
         explorer keygen\n  \
         explorer reserve container --explorer http://{addr} --node {id} --flist agent-test/busybox:latest --entrypoint 'sleep 3600' --cpu 1 --memory 64 --duration 10m\n\n\
         Inspect it:  agentctl --socket {sock} list\n\
         Clean up:    agentctl --socket {sock} purge --yes   (before stopping this agent)\n",
        sock = settings.socket.display()
    );
    Ok(())
}

/// At exit: the workloads outlive the agent; say how to remove them.
pub fn remind_at_exit(settings: &Settings, store: &Store) {
    let running = store.cached_len();
    if running > 0 {
        println!(
            "\nagent --dev stopped; its {running} workloads keep running in Docker.\n\
             To remove them, start `agent --dev` again and run\n  \
             agentctl --socket {} purge --yes\n\
             Do not `rm -rf {}` while they run: it holds the node key and mounted volumes.\n",
            settings.socket.display(),
            settings.root.display()
        );
    }
}
