#!/usr/bin/env bash
# The WireGuard tunnel's throughput (BENCHMARKS.md, "WireGuard tunnel"):
# runs tests/tests/wireguard.rs with WG_BENCH_OUT set, which sends 256 MiB
# three times from a container on the agent's network to the stand-in
# remote peer through the tunnel (boringtun in the agent, wireguard-go in
# the peer's namespace), and the same 256 MiB from a container on Docker's
# default bridge to the peer's veth address (no tunnel), and prints what the
# peer's sink measured (first byte to last, in Mbit/s).
# Needs what scripts/test.sh installs (wireguard-go, wireguard-tools, the
# busybox test image). Usage: bench/wireguard.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/images/build.sh
cargo build -p agent -p explorer --bins
out=$(mktemp)
WG_BENCH_OUT="$out" cargo nextest run -p integration-tests --test wireguard --no-capture
cat "$out"
rm -f "$out"
