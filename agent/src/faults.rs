//! Fault injection for the restart drills: `AGENT_FAULT=<point>` makes the
//! process die like `kill -9` (abort, no destructors, no flush) the first
//! time it reaches that point. Inert unless the variable is set.
//!
//! Points: `after-provision` (Docker object made, nothing recorded),
//! `after-record` (outbox and cache written, not flushed... then flushed
//! and killed before delivery), `during-delivery` (result sent, ack not
//! recorded).

use std::sync::OnceLock;

fn configured() -> Option<&'static str> {
    static FAULT: OnceLock<Option<String>> = OnceLock::new();
    FAULT
        .get_or_init(|| std::env::var("AGENT_FAULT").ok().filter(|s| !s.is_empty()))
        .as_deref()
}

/// Die here if `AGENT_FAULT` names this point.
pub fn point(name: &str) {
    if configured() == Some(name) {
        eprintln!("AGENT_FAULT={name}: aborting like kill -9");
        std::process::abort();
    }
}
