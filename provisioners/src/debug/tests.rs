//! Unit tests of the `debug` plug-in: lines, redaction, attribution to
//! users, forwarding.

use super::*;
use tracing_subscriber::layer::SubscriberExt;

#[test]
fn events_become_json_lines_with_secrets_redacted() {
    let bus = LogBus::new(16);
    let mut rx = bus.subscribe();
    let subscriber = tracing_subscriber::registry().with(bus.layer());
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("provision", reservation = "7-1", cluster_secret = "s3cr3t");
        let _g = span.enter();
        tracing::warn!(password = "hunter2", secret_env = ?["A"], count = 3u64, "opened");
    });
    let line = rx.try_recv().unwrap();
    assert!(
        !line.contains("hunter2") && !line.contains("s3cr3t"),
        "{line}"
    );
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "WARN");
    assert_eq!(v["fields"]["message"], "opened");
    assert_eq!(v["fields"]["password"], REDACTED);
    assert_eq!(v["fields"]["secret_env"], REDACTED);
    assert_eq!(v["fields"]["count"], 3);
    assert_eq!(v["spans"][0]["name"], "provision");
    assert_eq!(v["spans"][0]["reservation"], "7-1");
    assert_eq!(v["spans"][0]["cluster_secret"], REDACTED);
    assert!(rx.try_recv().is_err());
}

#[test]
fn lines_belong_to_the_verified_user_of_their_reservation() {
    let bus = LogBus::new(64);
    let mut rx = bus.subscribe();
    let subscriber = tracing_subscriber::registry().with(bus.layer());
    tracing::subscriber::with_default(subscriber, || {
        {
            let span = tracing::info_span!("reservation", id = "1-1", user = tracing::field::Empty);
            let _g = span.enter();
            tracing::info!("before its signature verified");
            span.record("user", "alice");
            tracing::info!("alice's");
        }
        tracing::info!(reservation = "1-1", "about alice's, outside the span");
        tracing::info!(reservation = "9-9", "about a reservation nobody saw");
        tracing::info!("node-wide");
        {
            let span = tracing::info_span!("reservation", id = "2-1", user = "bob");
            let _g = span.enter();
            tracing::info!(
                reservation = "1-1",
                "bob's span mentions alice's reservation"
            );
            tracing::info!("bob's");
        }
        tracing::debug!(target: "bollard::docker", body = "{\"Env\":[\"A=b\"]}", "request");
        tracing::error!(target: "hyper_util::client::legacy", "connection");
        tracing::info!(target: "reqwest", "request");
    });
    let owners: Vec<Option<String>> = std::iter::from_fn(|| rx.try_recv().ok())
        .map(|l| l.owner().map(String::from))
        .collect();
    let s = |u: &str| Some(u.to_string());
    assert_eq!(
        owners,
        [None, s("alice"), s("alice"), None, None, None, s("bob")],
        "HTTP and Docker client events never become lines"
    );
}

#[test]
fn quiet_targets() {
    for t in [
        "bollard",
        "bollard::docker",
        "hyper::proto::h1",
        "reqwest::connect",
        "h2",
    ] {
        assert!(is_quiet_target(t), "{t}");
    }
    for t in ["agent::engine", "provisioners::zdb", "bollardx", "hyperion"] {
        assert!(!is_quiet_target(t), "{t}");
    }
}

#[test]
fn secret_names() {
    for n in [
        "password",
        "zdb_password",
        "cluster_secret",
        "secret_env",
        "K3S_TOKEN",
        "token",
        "key",
        "ssh_private_key",
        "admin_password",
        "seed",
    ] {
        assert!(is_secret_field(n), "{n}");
    }
    for n in ["message", "reservation", "host", "channel"] {
        assert!(!is_secret_field(n), "{n}");
    }
}
