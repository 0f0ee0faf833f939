//! Benchmark: a reservation's signature check through this crate
//! (`Reservation::verify`) beside a bare ed25519-dalek `verify_strict` of
//! the same message, on one core, in the same run (BENCHMARKS.md, figure 2).
//!
//! The two "bare" peers split our overhead: `dalek/verify_strict` is the
//! floor (key and signature already decoded, message already built);
//! `dalek/decode_and_verify_strict` adds exactly the decoding a verifier of
//! wire data must do (base58 key, point decompression, base64 signature),
//! so the difference between it and `reservation/verify` is our wrapping.

use std::hint::black_box;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use criterion::{criterion_group, Criterion, Throughput};
use ed25519_dalek::{Signature, VerifyingKey};
use reservation::{Identity, Reservation};

/// A container reservation as the CLI signs it (realistic `data` size).
fn signed_reservation() -> Reservation {
    let user = Identity::from_seed(&[7; 32]);
    let node = Identity::from_seed(&[9; 32]);
    let json = serde_json::json!({
        "id": "1-1",
        "version": 2,
        "node_id": node.id(),
        "user_id": user.id(),
        "type": "container",
        "data": {
            "flist": "agent-test/busybox:latest",
            "entrypoint": "sleep 3600",
            "env": {"A": "1"},
            "capacity": {"cpu": 1, "memory": 64}
        },
        "created": "2030-01-01T00:00:00Z",
        "duration": 3_600_000_000_000i64,
    });
    let mut r: Reservation = serde_json::from_value(json).expect("reservation json");
    user.sign_reservation(&mut r);
    r
}

fn bench(c: &mut Criterion) {
    let r = signed_reservation();
    r.verify().expect("the benchmark's reservation verifies");
    let msg = r.signing_message();
    let key_bytes: [u8; 32] = bs58::decode(&r.user_id)
        .into_vec()
        .expect("base58")
        .try_into()
        .expect("32 bytes");
    let vk = VerifyingKey::from_bytes(&key_bytes).expect("key");
    let sig = Signature::from_slice(&B64.decode(&r.signature).expect("b64")).expect("sig");
    vk.verify_strict(&msg, &sig).expect("bare verify");

    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1))
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    // As the agent's judge verifies: the user's key from its cache.
    let keys = reservation::KeyCache::new();
    g.bench_function("reservation/verify", |b| {
        b.iter(|| black_box(&r).verify_with(Some(&keys)).is_ok())
    });
    g.bench_function("dalek/verify_strict", |b| {
        b.iter(|| {
            black_box(&vk)
                .verify_strict(black_box(&msg), black_box(&sig))
                .is_ok()
        })
    });
    g.bench_function("dalek/decode_and_verify_strict", |b| {
        b.iter(|| {
            let kb: [u8; 32] = bs58::decode(black_box(&r.user_id))
                .into_vec()
                .unwrap_or_default()
                .try_into()
                .unwrap_or([0; 32]);
            let vk = VerifyingKey::from_bytes(&kb).expect("key");
            let sb = B64.decode(black_box(&r.signature)).unwrap_or_default();
            let sig = Signature::from_slice(&sb).expect("sig");
            vk.verify_strict(black_box(&msg), &sig).is_ok()
        })
    });
    // The parts of our overhead, to say where it goes.
    g.bench_function("parts/signing_message", |b| {
        b.iter(|| black_box(&r).signing_message())
    });
    g.bench_function("parts/key_decompress", |b| {
        b.iter(|| VerifyingKey::from_bytes(black_box(&key_bytes)).is_ok())
    });
    g.finish();
}

/// The ratio, measured in pairs: rounds of `PAIR_N` verifications through
/// our crate then `PAIR_N` bare ones (order alternating), so load from
/// other processes hits both sides alike. Per-round times go to the JSON
/// file named by `BENCH_VERIFY_OUT`, if set.
fn paired() {
    const ROUNDS: usize = 100;
    const PAIR_N: usize = 500;
    let r = signed_reservation();
    let msg = r.signing_message();
    let key_bytes: [u8; 32] = bs58::decode(&r.user_id)
        .into_vec()
        .expect("base58")
        .try_into()
        .expect("32 bytes");
    let vk = VerifyingKey::from_bytes(&key_bytes).expect("key");
    let sig = Signature::from_slice(&B64.decode(&r.signature).expect("b64")).expect("sig");
    let keys = reservation::KeyCache::new();
    let ours = || {
        let t = std::time::Instant::now();
        for _ in 0..PAIR_N {
            black_box(black_box(&r).verify_with(Some(&keys)).is_ok());
        }
        t.elapsed().as_secs_f64() / PAIR_N as f64
    };
    let bare = || {
        let t = std::time::Instant::now();
        for _ in 0..PAIR_N {
            black_box(vk.verify_strict(black_box(&msg), black_box(&sig)).is_ok());
        }
        t.elapsed().as_secs_f64() / PAIR_N as f64
    };
    let mut rounds = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let (o, b) = if i % 2 == 0 {
            let o = ours();
            (o, bare())
        } else {
            let b = bare();
            (ours(), b)
        };
        rounds.push(serde_json::json!({"ours_s": o, "bare_s": b}));
    }
    let mut ratios: Vec<f64> = rounds
        .iter()
        .map(|v| v["ours_s"].as_f64().unwrap_or(0.0) / v["bare_s"].as_f64().unwrap_or(1.0))
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "verify paired: {ROUNDS} rounds of {PAIR_N}: median ratio ours/bare {:.3} (min {:.3}, max {:.3})",
        ratios[ROUNDS / 2],
        ratios[0],
        ratios[ROUNDS - 1]
    );
    if let Some(path) = std::env::var_os("BENCH_VERIFY_OUT") {
        let out = serde_json::json!({"per_round": PAIR_N, "rounds": rounds});
        if let Err(e) = std::fs::write(&path, out.to_string()) {
            eprintln!(
                "cannot write {}: {e}",
                std::path::Path::new(&path).display()
            );
        }
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    paired();
}
