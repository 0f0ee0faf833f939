#!/usr/bin/env bash
# Runs every test of the workspace, on the real Docker engine.
#
# It first installs what a fresh machine lacks (Debian packages), builds the
# local test images (no registry is reachable: images are made with
# `docker import`), starts a throwaway PostgreSQL cluster (the explorer's
# tests run on sled and on PostgreSQL; EXPLORER_TEST_DATABASE names it),
# builds the binaries the end-to-end tests drive, then runs the whole suite
# with cargo-nextest (cargo test when nextest is absent). The cluster is
# stopped and removed on exit.
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
# tests/tests/wireguard.rs: the stand-in remote node runs wireguard-go,
# configured with wg, in a namespace made with ip; the agent itself uses
# neither wg nor wireguard-go. bench/wireguard.sh uses iperf3.
command -v wireguard-go >/dev/null 2>&1 || need+=(wireguard-go)
command -v wg >/dev/null 2>&1 || need+=(wireguard-tools)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
# The dashboard's browser test drives headless Chromium through
# /usr/bin/chromedriver (Debian: chromium, chromium-driver).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
pg_bin() {
  local d
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"
    return
  fi
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}
[ -n "$(pg_bin)" ] || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# A fresh Debian redis-server package starts a daemon on 6379, and
# postgresql one on 5432; the tests start their own servers on free ports
# and need neither.

# The throwaway PostgreSQL cluster: trust auth on loopback and a socket in
# its temp dir, run as the postgres user (PostgreSQL refuses root), no
# fsync (nothing here outlives the run).
if [ -z "${EXPLORER_TEST_DATABASE:-}" ]; then
  pgbin=$(pg_bin)
  pgdir=$(mktemp -d /tmp/explorer-test-pg.XXXXXX)
  as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$pgdir"
  pgport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  stop_pg() {
    as_pg "$pgbin/pg_ctl" -D "$pgdir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$pgdir"
  }
  trap stop_pg EXIT
  as_pg "$pgbin/initdb" -D "$pgdir/data" -A trust -U postgres -E UTF8 --no-locale -N >"$pgdir/initdb.log" 2>&1 \
    || { cat "$pgdir/initdb.log" >&2; exit 1; }
  as_pg "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/postgres.log" -w -t 60 \
    -o "-p $pgport -k $pgdir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
    start >/dev/null || { cat "$pgdir/postgres.log" >&2; exit 1; }
  export EXPLORER_TEST_DATABASE="postgres://postgres@127.0.0.1:$pgport/postgres"
  echo "test.sh: PostgreSQL $("$pgbin/pg_ctl" --version | awk '{print $NF}') on 127.0.0.1:$pgport (EXPLORER_TEST_DATABASE)"
fi

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
