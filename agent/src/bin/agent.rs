//! The `agent` daemon: parse flags, set up tracing, run until SIGTERM/SIGINT.

use std::process::ExitCode;

use agent::config::Settings;
use agent::AgentError;

fn main() -> ExitCode {
    // Before any thread starts: a thread keeps the heap arena it got.
    agent::memory::limit_arenas(agent::memory::DAEMON_ARENAS);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build();
    match runtime {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("agent: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Threads for blocking work (the engine's commits and flushes, DNS
/// lookups, file I/O, WireGuard set-up): a few at a time are ever busy; each
/// idle one holds a stack and a share of the heap until it times out.
const BLOCKING_THREADS: usize = 16;

async fn run() -> ExitCode {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(AgentError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("agent: {e}");
            return ExitCode::from(2);
        }
    };
    let log_bus = provisioners::LogBus::default();
    agent::daemon::init_tracing(settings.log_format, &log_bus);
    match agent::daemon::run(settings, log_bus, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "agent failed");
            eprintln!("agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
}
