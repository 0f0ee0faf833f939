#!/usr/bin/env bash
# Figure 8 alone: the explorer at fleet scale, 2 PostgreSQL replicas vs
# sled, 1,000 nodes long-polling (explorer/benches/fleet.rs). Installs
# PostgreSQL from Debian if missing, builds the release binaries, runs the
# bench and writes its section and summary rows into BENCHMARKS.md
# (bench/run.sh runs it too, with every other figure).
#
#   bash bench/fleet.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/out
mkdir -p "$OUT"
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
cargo build --release --bins
cargo bench -p explorer --bench fleet -- --out "$PWD/$OUT/fleet.json"
python3 bench/report.py --fleet-only "$OUT" BENCHMARKS.md
