#!/usr/bin/env bash
# Runs every benchmark of the agent and writes BENCHMARKS.md (see issue 6,
# "Benchmarks"). Not part of the test suite: it needs the real Docker engine
# and a quiet-ish machine, and takes about 25-35 minutes on 2 cores (building
# in release mode the first time, and figure 11 provisioning and removing
# 500 then 1,000 real containers: about 10 GiB of RAM while they run; set
# BENCH_FIG11_SIZES=500 on a smaller machine).
#
#   bash bench/run.sh            # everything
#   bash bench/run.sh --quick    # fewer samples, to check the scripts
#
# Raw samples go to bench/out/ (criterion's too, through CRITERION_HOME);
# bench/report.py turns them into BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=""
[ "${1:-}" = "--quick" ] && QUICK="--quick"
OUT=bench/out
started=$(date +%s)

docker info >/dev/null 2>&1 || { echo "run.sh: the Docker engine does not answer (is dockerd running?)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "run.sh: python3 is needed for bench/report.py" >&2; exit 1; }

rm -rf "$OUT"
mkdir -p "$OUT"
export CRITERION_HOME="$PWD/$OUT/criterion"

echo "== images and release binaries"
bash tests/images/build.sh
cargo build --release --bins

cores=$(nproc)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
mem=$(free -g | awk '/^Mem:/ {print $2 " GiB"}')
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=false
[ -n "$(git status --porcelain 2>/dev/null)" ] && dirty=true

CRIT_ARGS=()
if [ -n "$QUICK" ]; then
  CRIT_ARGS=(--warm-up-time 0.2 --measurement-time 1)
fi

echo "== figure 2: signature verification (criterion)"
BENCH_VERIFY_OUT="$PWD/$OUT/verify-paired.json" cargo bench -p reservation --bench verify -- "${CRIT_ARGS[@]}"

echo "== figure 1: engine throughput (criterion)"
cargo bench -p agent --bench engine -- "${CRIT_ARGS[@]}"

echo "== figures 3-6 and 9-11: real binaries, real Docker"
cargo bench -p agent --bench e2e -- --out "$PWD/$OUT/e2e.json" $QUICK

echo "== figure 7: explorer under load"
cargo bench -p explorer --bench load -- --out "$PWD/$OUT/explorer.json"

echo "== figure 8: explorer at fleet scale (PostgreSQL replicas vs sled)"
cargo bench -p explorer --bench fleet -- --out "$PWD/$OUT/fleet.json"

total=$(( $(date +%s) - started ))
python3 - "$OUT/machine.json" <<EOF
import json, sys
json.dump({"cores": $cores, "cpu": """$cpu""", "mem": "$mem", "kernel": "$(uname -r)",
           "commit": "$commit", "dirty": $( $dirty && echo True || echo False ),
           "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "total_s": $total}, open(sys.argv[1], "w"))
EOF
[ -f bench/notes.md ] && cp bench/notes.md "$OUT/notes.md"
python3 bench/report.py "$OUT" BENCHMARKS.md
echo "run.sh: done in ${total}s"
