//! Prometheus metrics of one explorer server (`GET /metrics`, text
//! exposition format, with the `prometheus` crate as the agent does). Each
//! server has its own registry, so servers in one process (tests) do not
//! mix their figures.
//!
//! Series:
//! - `explorer_http_requests_total{method,route,status}` counter; `route`
//!   is the matched pattern (`/reservations/:key/poll`), `unmatched` for a
//!   path no route takes, so arbitrary paths do not make new series;
//! - `explorer_long_polls_open` gauge: polls held open now, waiting for
//!   something to answer;
//! - `explorer_reservations_stored_total` counter: reservations this server
//!   stored (`201`), not counting `409`s;
//! - `explorer_database_connections{state}` gauge, state `open` or `idle`
//!   (PostgreSQL's pool; absent with sled);
//! - `explorer_database_inserts_total{what}` counter, what `statements`
//!   (one per group-committed batch) or `rows` (the POSTs they answered),
//!   since the server started (PostgreSQL only): rows / statements is the
//!   mean batch. A counter, so `rate()` works across restarts.

use std::sync::Mutex;

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::storage::Connections;

pub(crate) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    pub long_polls: IntGauge,
    pub stored: IntCounter,
    connections: Option<IntGaugeVec>,
    /// Brought up to the store's counts at each render; the lock keeps
    /// two renders at once from both adding the same difference.
    inserts: Option<Mutex<IntCounterVec>>,
}

impl Metrics {
    /// `pooled`: the store has a connection pool to report.
    pub fn new(pooled: bool) -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "explorer_http_requests_total",
                "HTTP requests answered, by method, route pattern and status",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let long_polls = IntGauge::new(
            "explorer_long_polls_open",
            "Polls held open now, waiting for a reservation or a deletion",
        )
        .expect("valid metric");
        let stored = IntCounter::new(
            "explorer_reservations_stored_total",
            "Reservations stored by this server (201)",
        )
        .expect("valid metric");
        let connections = pooled.then(|| {
            IntGaugeVec::new(
                Opts::new(
                    "explorer_database_connections",
                    "Database connections of the pool: open, and idle among them",
                ),
                &["state"],
            )
            .expect("valid metric")
        });
        let inserts = pooled.then(|| {
            IntCounterVec::new(
                Opts::new(
                    "explorer_database_inserts_total",
                    "Insert statements since start (one per batch of POSTs), and the rows they answered",
                ),
                &["what"],
            )
            .expect("valid metric")
        });
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(long_polls.clone()),
            Box::new(stored.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        if let Some(c) = &connections {
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
        }
        if let Some(c) = &inserts {
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
        }
        let inserts = inserts.map(Mutex::new);
        Metrics {
            registry,
            requests,
            long_polls,
            stored,
            connections,
            inserts,
        }
    }

    pub fn request(&self, method: &str, route: &str, status: u16) {
        self.requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
    }

    /// The text exposition of every series, with `conns` read now.
    pub fn render(&self, conns: Option<Connections>) -> String {
        if let (Some(g), Some(c)) = (&self.connections, conns) {
            g.with_label_values(&["open"]).set(i64::from(c.open));
            g.with_label_values(&["idle"]).set(i64::from(c.idle));
        }
        if let (Some(m), Some(c)) = (&self.inserts, conns) {
            let counters = m.lock().unwrap_or_else(|p| p.into_inner());
            for (what, now) in [
                ("statements", c.insert_statements),
                ("rows", c.inserted_rows),
            ] {
                let counter = counters.with_label_values(&[what]);
                counter.inc_by(now.saturating_sub(counter.get()));
            }
        }
        let mut buf = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            buf.clear();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A held poll counted in `explorer_long_polls_open` while it lives.
pub(crate) struct OpenPoll(IntGauge);

impl OpenPoll {
    pub fn new(g: &IntGauge) -> Self {
        g.inc();
        OpenPoll(g.clone())
    }
}

impl Drop for OpenPoll {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inserts(statements: u64, rows: u64) -> Option<Connections> {
        Some(Connections {
            insert_statements: statements,
            inserted_rows: rows,
            ..Connections::default()
        })
    }

    #[test]
    fn database_inserts_are_a_counter_that_follows_the_stores_counts() {
        let m = Metrics::new(true);
        let text = m.render(inserts(2, 7));
        assert!(
            text.contains("# TYPE explorer_database_inserts_total counter"),
            "{text}"
        );
        assert!(
            text.contains("explorer_database_inserts_total{what=\"rows\"} 7"),
            "{text}"
        );
        // Rendered again with the same counts: not added twice.
        let text = m.render(inserts(2, 7));
        assert!(
            text.contains("explorer_database_inserts_total{what=\"statements\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("explorer_database_inserts_total{what=\"rows\"} 7"),
            "{text}"
        );
        let text = m.render(inserts(3, 9));
        assert!(
            text.contains("explorer_database_inserts_total{what=\"statements\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("explorer_database_inserts_total{what=\"rows\"} 9"),
            "{text}"
        );
        // sled: no such series.
        assert!(!Metrics::new(false)
            .render(None)
            .contains("explorer_database_inserts"));
    }
}
