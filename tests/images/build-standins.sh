#!/bin/sh
# Builds the local stand-in images the zdb and kubernetes tests run against
# (no registry is reachable, so the real threefoldtech/0-db and rancher/k3s
# images cannot be pulled; production uses those):
#
#   agent-test/zdb:latest  busybox + standins' zdb-standin as /bin/zdb,
#                          entrypoint /bin/zdb (a 0-db command subset server
#                          on port 9900)
#   agent-test/k3s:latest  busybox + standins' k3s-standin as /bin/k3s,
#                          entrypoint /bin/k3s, cmd "agent", like rancher/k3s
#                          (records argv and env, then sleeps)
#
# The stand-ins are std-only Rust, compiled here with rustc directly as
# static binaries (no cargo: tests call this script while `cargo test` holds
# the target dir's lock). Idempotent: each image carries a label with the
# hash of the stand-in sources and of this script, and is rebuilt only when
# that changed (pass --force to rebuild anyway). Concurrent calls serialise.
set -eu

HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="$HERE/../../standins/src"
ZDB_IMAGE="${AGENT_TEST_ZDB_IMAGE:-agent-test/zdb:latest}"
K3S_IMAGE="${AGENT_TEST_K3S_IMAGE:-agent-test/k3s:latest}"
LABEL=io.agent.standin.sources

HASH="$(cat "$0" $(find "$SRC" -name '*.rs' | sort) | sha256sum | cut -c1-32)"

current() {
    for image in "$ZDB_IMAGE" "$K3S_IMAGE"; do
        have="$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$image" 2>/dev/null || true)"
        [ "$have" = "$HASH" ] || return 1
    done
}

if [ "${1:-}" != "--force" ] && current; then
    exit 0
fi

LOCK="${TMPDIR:-/tmp}/agent-test-standins.lock"
exec 9>"$LOCK"
flock 9
if [ "${1:-}" != "--force" ] && current; then
    exit 0
fi

BUSYBOX=""
for p in /bin/busybox /usr/bin/busybox; do
    if [ -x "$p" ] && file -L "$p" 2>/dev/null | grep -q 'statically linked'; then
        BUSYBOX="$p"
        break
    fi
done
if [ -z "$BUSYBOX" ]; then
    echo "build-standins.sh: no static busybox found; install busybox-static" >&2
    exit 1
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# Static glibc comes with libc6-dev.
RUSTC="${RUSTC:-rustc}"
FLAGS="--edition 2021 -C opt-level=2 -C target-feature=+crt-static --target x86_64-unknown-linux-gnu"
# shellcheck disable=SC2086
"$RUSTC" $FLAGS --crate-type rlib --crate-name standins -o "$WORK/libstandins.rlib" "$SRC/lib.rs"
for bin in zdb-standin k3s-standin; do
    # shellcheck disable=SC2086
    "$RUSTC" $FLAGS --crate-type bin --crate-name "$(echo $bin | tr - _)" \
        --extern standins="$WORK/libstandins.rlib" -o "$WORK/$bin" "$SRC/bin/$bin.rs"
done

# rootfs DIR BINARY NAME: busybox (so sh, cat exist) plus BINARY as /bin/NAME.
rootfs() {
    root="$1"
    mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/proc" "$root/sys" "$root/dev" "$root/root" "$root/data"
    chmod 1777 "$root/tmp"
    cp "$BUSYBOX" "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
    cp "$2" "$root/bin/$3"
    chmod 755 "$root/bin/$3"
}

rootfs "$WORK/zdb" "$WORK/zdb-standin" zdb
tar -C "$WORK/zdb" -c . | docker import \
    --change 'ENV PATH=/bin' \
    --change 'EXPOSE 9900' \
    --change "LABEL $LABEL=$HASH" \
    --change 'ENTRYPOINT ["/bin/zdb"]' \
    --change 'CMD ["--listen", "0.0.0.0", "--port", "9900"]' \
    - "$ZDB_IMAGE" >/dev/null

rootfs "$WORK/k3s" "$WORK/k3s-standin" k3s
tar -C "$WORK/k3s" -c . | docker import \
    --change 'ENV PATH=/bin' \
    --change "LABEL $LABEL=$HASH" \
    --change 'ENTRYPOINT ["/bin/k3s"]' \
    --change 'CMD ["agent"]' \
    - "$K3S_IMAGE" >/dev/null

echo "build-standins.sh: built $ZDB_IMAGE and $K3S_IMAGE" >&2
