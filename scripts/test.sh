#!/usr/bin/env bash
# Runs every test of the workspace, on the real Docker engine.
#
# It first installs what a fresh machine lacks (Debian packages), builds the
# local test images (no registry is reachable: images are made with
# `docker import`), builds the binaries the end-to-end tests drive, then
# runs the whole suite with cargo-nextest (cargo test when nextest is absent).
#
# Usage: scripts/test.sh [--drills] [nextest filters...]
#   --drills  also run the long fault drills (#[ignore]d otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."

args=()
drills=0
for a in "$@"; do
  case "$a" in
    --drills) drills=1 ;;
    *) args+=("$a") ;;
  esac
done

need=()
command -v busybox >/dev/null 2>&1 || [ -x /bin/busybox ] || need+=(busybox-static)
/usr/bin/python3 -c 'import nacl' >/dev/null 2>&1 || need+=(python3-nacl)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
command -v losetup >/dev/null 2>&1 || need+=(mount)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# A fresh Debian redis-server package starts a daemon on 6379; the tests
# start their own servers on free ports and do not need it.

docker info >/dev/null 2>&1 || { echo "test.sh: the Docker engine does not answer (is dockerd running?)" >&2; exit 1; }

bash tests/images/build.sh
if [ -f tests/images/build-standins.sh ]; then
  bash tests/images/build-standins.sh
fi

cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  extra=()
  [ "$drills" = 1 ] && extra+=(--run-ignored all)
  cargo nextest run --workspace --no-fail-fast "${extra[@]}" "${args[@]}"
else
  extra=()
  [ "$drills" = 1 ] && extra+=(-- --include-ignored)
  cargo test --workspace --no-fail-fast "${args[@]}" "${extra[@]}"
fi
