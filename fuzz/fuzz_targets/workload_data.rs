//! Fuzz target: every workload type's `data` parser and validator.
//!
//! Input: one byte choosing the workload type
//! (`WorkloadType::ALL[b % ALL.len()]`), then the `data` JSON text. The
//! text is also fed to `normalize_mountpoint` as a path.
//!
//! Besides "never panics", it checks that what the validator accepts is
//! what the provisioners can use: a container's entrypoint shell-splits
//! (the container provisioner calls `shell_words::split`), its mountpoints
//! normalize, memory in bytes fits Docker's i64; a network's subnets are
//! found by `subnet_for` and lie in its range; sizes are in range; every
//! accepted workload serializes and parses back equal; every refusal names
//! a `data.` field.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reservation::workloads::{
    kubernetes_size, normalize_mountpoint, Container, Debug, Kubernetes, Network, Volume, Zdb,
    MAX_SIZE_GIB,
};
use reservation::{Workload, WorkloadType};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    check_mountpoint(text);
    let Ok(raw) = RawValue::from_string(text.to_owned()) else {
        return;
    };
    let kind = WorkloadType::ALL[sel as usize % WorkloadType::ALL.len()];
    match Workload::parse(kind, &raw) {
        Ok(w) => {
            assert_eq!(w.kind(), kind);
            w.validate().expect("a parsed workload validates again");
            check_accepted(&w);
        }
        Err(e) => {
            let m = e.to_string();
            assert!(m.starts_with("data."), "refusal names no data field: {m}");
        }
    }
    // A network's helpers are called on parsed-but-invalid data too.
    if let Ok(n) = serde_json::from_str::<Network>(text) {
        check_network(&n);
    }
});

/// An accepted path is absolute, clean, not `/`, made of the input's own
/// components, and normalizing it again changes nothing.
fn check_mountpoint(p: &str) {
    let parts: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    match normalize_mountpoint(p) {
        Ok(n) => {
            assert!(p.starts_with('/'), "relative {p:?} accepted");
            assert!(n.starts_with('/') && n != "/", "{p:?} -> {n:?}");
            assert!(!n.ends_with('/') && !n.contains("//"), "{p:?} -> {n:?}");
            assert!(!n.contains('\0'), "{p:?} -> NUL kept");
            let got: Vec<&str> = n[1..].split('/').collect();
            assert_eq!(got, parts, "{p:?} -> {n:?}");
            assert!(!got.iter().any(|c| *c == "." || *c == ".."), "{n:?}");
            assert_eq!(normalize_mountpoint(&n).as_deref(), Ok(n.as_str()));
        }
        Err(msg) => {
            assert!(
                !p.starts_with('/')
                    || parts.is_empty()
                    || parts.contains(&"..")
                    || p.contains('\0'),
                "{p:?} refused: {msg}"
            );
        }
    }
}

fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let text = serde_json::to_string(v).expect("workload data serializes");
    let back: T = match serde_json::from_str(&text) {
        Ok(b) => b,
        Err(e) => panic!("workload data does not parse back from {text}: {e}"),
    };
    assert_eq!(&back, v, "round trip through {text}");
}

fn check_accepted(w: &Workload) {
    match w {
        Workload::Container(c) => {
            check_container(c);
            roundtrip::<Container>(c);
        }
        Workload::Volume(v) => {
            assert!((1..=MAX_SIZE_GIB).contains(&v.size));
            assert_eq!(v.disk().as_str(), v.disk_type);
            roundtrip::<Volume>(v);
        }
        Workload::Network(n) => {
            let range = n.validate().expect("accepted network validates");
            for r in &n.net_resources {
                let sub = n
                    .subnet_for(&r.node_id)
                    .expect("an accepted network has a subnet for each of its nodes");
                assert!(range.contains(&sub), "{sub} outside {range}");
            }
            roundtrip::<Network>(n);
        }
        Workload::Zdb(z) => {
            assert!((1..=MAX_SIZE_GIB).contains(&z.size));
            assert!(z.mode == "user" || z.mode == "seq");
            assert_eq!(z.disk().as_str(), z.disk_type);
            assert!(!z.password.is_empty());
            roundtrip::<Zdb>(z);
        }
        Workload::Kubernetes(k) => {
            assert!(kubernetes_size(k.size).is_some());
            assert!(!k.network_id.is_empty());
            assert!(k.ssh_keys.iter().all(|s| !s.contains('\n')));
            roundtrip::<Kubernetes>(k);
        }
        Workload::Debug(d) => {
            assert!(d.port > 0 && !d.host.trim().is_empty());
            roundtrip::<Debug>(d);
        }
        // `Workload` is non-exhaustive: a type added since has no
        // property of its own here yet (parsing it is still fuzzed).
        _ => {}
    }
}

/// What the container provisioner does with accepted data must not fail
/// on the data itself.
fn check_container(c: &Container) {
    if !c.entrypoint.trim().is_empty() {
        if let Err(e) = shell_words::split(&c.entrypoint) {
            panic!(
                "validator accepted entrypoint {:?} that the provisioner cannot shell-split: {e}",
                c.entrypoint
            );
        }
    }
    for m in &c.mounts {
        let n = normalize_mountpoint(&m.mountpoint).expect("accepted mountpoint normalizes");
        check_mountpoint(&n);
    }
    let bytes = c
        .capacity
        .memory
        .checked_mul(1024 * 1024)
        .and_then(|b| i64::try_from(b).ok());
    assert!(
        bytes.is_some(),
        "memory {} MiB overflows",
        c.capacity.memory
    );
    assert!(c.capacity.cpu > 0);
    for k in c.env.keys().chain(c.secret_env.keys()) {
        assert!(
            !k.is_empty() && !k.contains('=') && !k.contains('\0'),
            "{k:?}"
        );
    }
}

fn check_network(n: &Network) {
    let valid = n.validate();
    for r in &n.net_resources {
        let sub = n.subnet_for(&r.node_id);
        if let Ok(range) = &valid {
            let sub = sub.expect("a valid network has a subnet for each of its nodes");
            assert!(range.contains(&sub));
        }
    }
    let _ = n.subnet_for("");
}
