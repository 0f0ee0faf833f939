#!/usr/bin/env bash
# Check systemd/agent.service with `systemd-analyze verify` (installing
# systemd first if the machine lacks systemd-analyze), and that the example
# config parses as TOML. Exits non-zero on any problem verify reports.
#
# verify wants ExecStart's binary to exist and the units it depends on to
# be known: the unit is checked from a temporary copy whose ExecStart points
# at a stand-in executable, with a stand-in docker.service when the machine
# has none.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "verify.sh: installing systemd (for systemd-analyze)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends systemd >&2
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/units" "$TMP/bin"

printf '#!/bin/sh\nexit 0\n' >"$TMP/bin/agent"
chmod 0755 "$TMP/bin/agent"
# /usr/bin/agent: where the node-agent package (scripts/deb.sh) and the
# manual install alike put the binary.
grep -q '^ExecStart=/usr/bin/agent ' agent.service || {
    echo "verify.sh: agent.service must start /usr/bin/agent" >&2
    exit 1
}
sed "s|^ExecStart=/usr/bin/agent |ExecStart=$TMP/bin/agent |" agent.service >"$TMP/units/agent.service"

if ! systemctl cat docker.service >/dev/null 2>&1 \
    && [ ! -e /lib/systemd/system/docker.service ] \
    && [ ! -e /usr/lib/systemd/system/docker.service ] \
    && [ ! -e /etc/systemd/system/docker.service ]; then
    printf '[Unit]\nDescription=stand-in for verify\n[Service]\nExecStart=/bin/true\n' >"$TMP/units/docker.service"
fi

# Unit search path: the temporary units first, then the system's
# (the trailing colon appends the default path).
OUT="$TMP/verify.out"
set +e
SYSTEMD_UNIT_PATH="$TMP/units:" systemd-analyze verify --man=no "$TMP/units/agent.service" >"$OUT" 2>&1
RC=$?
set -e
# Warnings about *other* units on the machine are not ours: keep the lines
# naming agent.service, and any that name no unit file at all.
PROBLEMS="$(grep -E 'agent\.service|^[^/]*$' "$OUT" | grep -v '^$' || true)"
if [ "$RC" -ne 0 ] || [ -n "$PROBLEMS" ]; then
    echo "verify.sh: systemd-analyze verify agent.service failed (exit $RC):" >&2
    cat "$OUT" >&2
    exit 1
fi

# The example config must be TOML (every setting commented still parses).
if command -v python3 >/dev/null 2>&1 && python3 -c 'import tomllib' 2>/dev/null; then
    python3 -c 'import sys, tomllib; tomllib.load(open(sys.argv[1], "rb"))' agent.toml.example
fi

echo "verify.sh: agent.service ok"
