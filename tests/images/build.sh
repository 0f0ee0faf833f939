#!/bin/sh
# Builds the local test image agent-test/busybox:latest (no registry is
# reachable in tests): a tarball holding Debian's static busybox as
# /bin/busybox, one symlink per applet, imported with `docker import`.
# Idempotent and fast when the image already exists (pass --force to rebuild).
set -eu

IMAGE="${AGENT_TEST_IMAGE:-agent-test/busybox:latest}"

if [ "${1:-}" != "--force" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    exit 0
fi

# Serialise concurrent builds (tests run in parallel, several crates at once).
LOCK="${TMPDIR:-/tmp}/agent-test-image.lock"
exec 9>"$LOCK"
flock 9
if [ "${1:-}" != "--force" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    exit 0
fi

BUSYBOX=""
for p in /bin/busybox /usr/bin/busybox; do
    # ldd (always there with libc) says so of a static binary.
    if [ -x "$p" ] && LC_ALL=C ldd "$p" 2>&1 | grep -q 'not a dynamic executable'; then
        BUSYBOX="$p"
        break
    fi
done
if [ -z "$BUSYBOX" ]; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "build.sh: installing busybox-static" >&2
        # A fresh machine's package lists may be empty or stale.
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >&2
        BUSYBOX=/bin/busybox
    else
        echo "build.sh: no static busybox found; install busybox-static" >&2
        exit 1
    fi
fi

ROOT="$(mktemp -d)"
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/bin" "$ROOT/etc" "$ROOT/tmp" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" "$ROOT/root"
chmod 1777 "$ROOT/tmp"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$ROOT/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOT/etc/passwd"
echo 'root:x:0:' >"$ROOT/etc/group"

tar -C "$ROOT" -c . | docker import \
    --change 'ENV PATH=/bin' \
    --change 'CMD ["/bin/sh"]' \
    - "$IMAGE" >/dev/null
echo "build.sh: built $IMAGE" >&2
