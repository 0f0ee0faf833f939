//! Fault injection for the restart drills: `AGENT_FAULT=<point>` makes the
//! process die like `kill -9` (abort, no destructors, no flush) the first
//! time it reaches that point. Inert unless the variable is set; read once
//! at start by the daemon into a [`Faults`] value the engine and delivery
//! share (no process-wide state).
//!
//! Points: `after-provision` (Docker object made, nothing recorded),
//! `after-record` (outbox and cache written, not flushed... then flushed
//! and killed before delivery), `during-delivery` (result sent, ack not
//! recorded).

/// The fault point this process dies at, if any.
#[derive(Debug, Clone, Default)]
pub struct Faults(Option<String>);

impl Faults {
    /// From `AGENT_FAULT` (unset or empty: none).
    pub fn from_env() -> Self {
        Faults(std::env::var("AGENT_FAULT").ok().filter(|s| !s.is_empty()))
    }

    /// Die here if this is the configured point.
    pub fn point(&self, name: &str) {
        if self.0.as_deref() == Some(name) {
            eprintln!("AGENT_FAULT={name}: aborting like kill -9");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_by_default_and_only_the_named_point_fires() {
        // A point not configured returns (the process would abort otherwise).
        Faults::default().point("after-record");
        Faults(Some("during-delivery".into())).point("after-record");
    }
}
