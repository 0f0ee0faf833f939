#!/usr/bin/env bash
# Builds the node-agent Debian package (`cargo deb -p agent`, metadata in
# agent/Cargo.toml [package.metadata.deb], assets in agent/debian/), lints it
# with lintian, installs it with dpkg, checks what it installed, and purges it.
#
# Checks: lintian shows no error and no warning that is not overridden
# (agent/debian/node-agent.lintian-overrides); after `dpkg -i`, `agent
# --version` names the package's version, `agent --dev` is refused (the
# package is built without the dev feature), `agentctl --help` runs, the
# installed agent.service passes `systemd-analyze verify` and is neither
# enabled nor started, /etc/agent/agent.toml is a conffile, and the package
# ships nothing under /var/lib/agent or /run/agent (the unit's
# StateDirectory/RuntimeDirectory); after `dpkg --purge`, the binaries, the
# unit and the conffile are gone.
#
# For build and CI machines, not for a node that runs the agent: it installs
# and purges node-agent, and refuses to run where agent.service is enabled or
# where a hand-installed agent would be overwritten. A node-agent left
# installed by an interrupted run is purged first; the package is purged on
# every exit, failure included. Exits non-zero, with a message, on any failure.
#
# Usage: scripts/deb.sh [--no-build]
#   --no-build  package the binaries already in target/release (passed to
#               cargo deb; for iterating on the packaging only).
set -euo pipefail
cd "$(dirname "$0")/.."

PKG=node-agent
UNIT=agent.service
CONF=/etc/agent/agent.toml
BINS=(/usr/bin/agent /usr/bin/agentctl)
export DEBIAN_FRONTEND=noninteractive

say() { echo "deb.sh: $*"; }
die() { echo "deb.sh: FAILED: $*" >&2; exit 1; }

deb_args=()
for a in "$@"; do
    case "$a" in
        --no-build) deb_args+=(--no-build) ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $a (usage: scripts/deb.sh [--no-build])" ;;
    esac
done

# --- tools -------------------------------------------------------------------
apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq || die "apt-get update failed"
        apt_updated=1
    fi
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || die "apt-get install $* failed"
}
if ! cargo deb --version >/dev/null 2>&1; then
    say "installing cargo-deb (cargo install cargo-deb --locked)"
    cargo install cargo-deb --locked || die "cargo install cargo-deb failed"
fi
command -v lintian >/dev/null 2>&1 || { say "installing lintian"; apt_install lintian; }
command -v systemd-analyze >/dev/null 2>&1 || { say "installing systemd (for systemd-analyze)"; apt_install systemd; }

# --- state of the machine before anything is installed ------------------------
pkg_status() { dpkg-query -W -f='${db:Status-Status}' "$PKG" 2>/dev/null || true; }
# Installed in any form dpkg must still remove (unpacked, half-configured,
# config-files...): everything but "not-installed" or absent.
pkg_present() { local s; s="$(pkg_status)"; [ -n "$s" ] && [ "$s" != not-installed ]; }

if [ -e "/etc/systemd/system/multi-user.target.wants/$UNIT" ]; then
    die "$UNIT is enabled on this machine: it runs the agent, deb.sh would purge it (run deb.sh on a build machine)"
fi
if pkg_present; then
    say "purging $PKG left installed by an earlier run (status: $(pkg_status))"
    dpkg --purge "$PKG" >/dev/null || die "dpkg --purge $PKG (left by an earlier run) failed"
fi
for f in "${BINS[@]}" "$CONF"; do
    if [ -e "$f" ]; then
        owner="$(dpkg -S "$f" 2>/dev/null | cut -d: -f1 || true)"
        die "$f exists, ${owner:+from package $owner}${owner:-from no package (a hand install?)}: installing $PKG would take it over and purging it would delete it; move it away first"
    fi
done

TMP="$(mktemp -d)"
installed=0
cleanup() {
    local rc=$?
    if [ "$installed" = 1 ] && pkg_present; then
        echo "deb.sh: cleanup: dpkg --purge $PKG" >&2
        if ! dpkg --purge "$PKG" >"$TMP/purge.out" 2>&1; then
            cat "$TMP/purge.out" >&2
            echo "deb.sh: FAILED: cleanup could not purge $PKG: remove it by hand (dpkg --purge $PKG)" >&2
            rc=1
        fi
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build ---------------------------------------------------------------------
say "cargo deb -p agent ${deb_args[*]:-}"
cargo deb -p agent "${deb_args[@]}" >"$TMP/deb.path" || die "cargo deb -p agent failed"
DEB="$(tail -n 1 "$TMP/deb.path")"
[ -f "$DEB" ] || die "cargo deb did not print the path of a .deb (got: $DEB)"
VERSION="$(dpkg-deb -f "$DEB" Version)"
say "built $DEB ($PKG $VERSION)"
[ "$(dpkg-deb -f "$DEB" Package)" = "$PKG" ] || die "$DEB is not a $PKG package"

# --- lintian -----------------------------------------------------------------
# Every tag is listed: errors (E:), warnings (W:), overridden tags (O:; the
# reasons are the comments of agent/debian/node-agent.lintian-overrides,
# which lintian repeats as N: lines, left out here) and informational ones
# (I:). Any E: or W: line fails. The verdict is read from
# the output: lintian 2.116 counts overridden tags towards --fail-on once
# --show-overrides is given. lintian warns when run as root: not a tag.
say "lintian $DEB"
set +e
lintian --fail-on none --show-overrides --display-info "$DEB" >"$TMP/lintian.out" 2>&1
lint_rc=$?
set -e
grep -vE '^N: |running with root privileges is not recommended' "$TMP/lintian.out" | sed 's/^/  /' || true
[ "$lint_rc" -eq 0 ] || die "lintian could not check $DEB (exit $lint_rc)"
if grep -qE '^[EW]: ' "$TMP/lintian.out"; then
    die "lintian reported errors or warnings (E:/W: above): fix them, or override each in agent/debian/node-agent.lintian-overrides with a comment saying why"
fi
if grep -qE '^I: [^ ]+ (unused|mismatched)-override ' "$TMP/lintian.out"; then
    say "note: some lintian overrides match no tag (unused-override above): drop them"
fi
say "lintian: no error or warning left ($(grep -c '^O: ' "$TMP/lintian.out" || true) tags overridden)"

# --- install -------------------------------------------------------------------
say "dpkg -i $DEB"
installed=1
quiet_check=1
if ! dpkg -i "$DEB" >"$TMP/dpkg.out" 2>&1; then
    quiet_check=0
    cat "$TMP/dpkg.out" >&2
    # Most often a missing dependency (docker.io, e2fsprogs, ...): let apt
    # bring it in and finish the configuration.
    say "dpkg -i failed: installing the missing dependencies with apt-get -f install"
    apt_updated=1
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq -f --no-install-recommends >/dev/null || die "apt-get -f install failed: $PKG cannot be installed"
fi
[ "$(dpkg-query -W -f='${Status}' "$PKG")" = "install ok installed" ] \
    || die "$PKG is not installed after dpkg -i (status: $(dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null))"
# What the maintainer scripts printed: dpkg's own lines aside, nothing.
noise=""
[ "$quiet_check" = 0 ] || noise="$(grep -vE '^(Selecting previously unselected package|\(Reading database|Preparing to unpack|Unpacking|Setting up) ' "$TMP/dpkg.out" || true)"
[ -z "$noise" ] || { printf '%s\n' "$noise" >&2; die "dpkg -i printed more than dpkg's own progress (maintainer scripts must stay quiet)"; }

# --- checks on the installed package ---------------------------------------------
for b in "${BINS[@]}"; do
    [ -x "$b" ] || die "$b is not installed"
done
want="${VERSION%-*}"
got="$(/usr/bin/agent --version)" || die "agent --version failed"
say "agent --version: $got"
case "$got" in
    *" $want") ;;
    *) die "agent --version says '$got', the package is $VERSION (expected version $want)" ;;
esac
# Built without the dev feature (agent/Cargo.toml [package.metadata.deb]):
# --dev is refused before anything is read or created.
# Bounded, in a scratch directory: a wrongly built package would start an
# embedded explorer (and ./.agent-dev) and run until stopped.
if dev_out="$(cd "$TMP" && timeout 10 /usr/bin/agent --dev 2>&1)"; then
    die "/usr/bin/agent --dev ran: the package must be built without the dev feature"
fi
case "$dev_out" in
    *"without the dev feature"*) say "agent --dev: refused (built without the dev feature)" ;;
    *) die "/usr/bin/agent --dev failed, but not for want of the dev feature: $dev_out" ;;
esac
/usr/bin/agentctl --help >"$TMP/agentctl.help" 2>&1 || { cat "$TMP/agentctl.help" >&2; die "agentctl --help failed"; }
say "agentctl --help: ok ($(head -n 1 "$TMP/agentctl.help"))"

UNIT_PATH="$(dpkg -L "$PKG" | grep -E "^(/usr)?/lib/systemd/system/$UNIT\$" || true)"
if [ -z "$UNIT_PATH" ] || [ ! -f "$UNIT_PATH" ]; then
    die "$PKG installs no $UNIT under /lib/systemd/system or /usr/lib/systemd/system"
fi
grep -q '^ExecStart=/usr/bin/agent ' "$UNIT_PATH" || die "$UNIT_PATH does not start /usr/bin/agent"
for l in /etc/systemd/system/*.wants/"$UNIT"; do
    if [ -e "$l" ]; then
        die "installing $PKG enabled $UNIT ($l): the operator must set explorer first"
    fi
done
if [ -d /run/systemd/system ] && systemctl is-active --quiet "$UNIT"; then
    die "installing $PKG started $UNIT: the operator must set explorer first"
fi

# systemd-analyze verify on the installed unit, as systemd/verify.sh does:
# systemd need not be PID 1 (--man=no, no bus), and a stand-in docker.service
# is put first in the unit search path when the machine has none.
mkdir -p "$TMP/units"
if ! systemctl cat docker.service >/dev/null 2>&1 \
    && [ ! -e /lib/systemd/system/docker.service ] \
    && [ ! -e /usr/lib/systemd/system/docker.service ] \
    && [ ! -e /etc/systemd/system/docker.service ]; then
    printf '[Unit]\nDescription=stand-in for verify\n[Service]\nExecStart=/bin/true\n' >"$TMP/units/docker.service"
fi
set +e
SYSTEMD_UNIT_PATH="$TMP/units:" systemd-analyze verify --man=no "$UNIT_PATH" >"$TMP/verify.out" 2>&1
v_rc=$?
set -e
# Lines about other units on the machine are not ours (see systemd/verify.sh).
problems="$(grep -E 'agent\.service|^[^/]*$' "$TMP/verify.out" | grep -v '^$' || true)"
if [ "$v_rc" -ne 0 ] || [ -n "$problems" ]; then
    cat "$TMP/verify.out" >&2
    die "systemd-analyze verify $UNIT_PATH failed (exit $v_rc)"
fi
say "systemd-analyze verify $UNIT_PATH: ok"

conffiles="$(dpkg-query -W -f='${Conffiles}' "$PKG")"
printf '%s\n' "$conffiles" | grep -qE "^ $CONF [0-9a-f]{32}\$" \
    || die "$CONF is not a conffile of $PKG (Conffiles: $conffiles)"
[ -f "$CONF" ] || die "$CONF is not installed"
say "$CONF: conffile"

if dpkg -L "$PKG" | grep -E '^(/var/lib/agent|/run/agent)(/|$)'; then
    die "$PKG ships files under /var/lib/agent or /run/agent: the unit's StateDirectory/RuntimeDirectory create them"
fi
for d in /usr/share/doc/"$PKG"/copyright /usr/share/doc/"$PKG"/README.md; do
    [ -f "$d" ] || die "$d is not installed"
done

# --- purge -------------------------------------------------------------------
say "dpkg --purge $PKG"
dpkg --purge "$PKG" >"$TMP/purge.out" 2>&1 || { cat "$TMP/purge.out" >&2; die "dpkg --purge $PKG failed"; }
installed=0
! pkg_present || die "$PKG is still known to dpkg after purge (status: $(pkg_status))"
for f in "${BINS[@]}" "$UNIT_PATH" "$CONF"; do
    [ ! -e "$f" ] || die "$f is still there after dpkg --purge $PKG"
done
say "purged: ${BINS[*]}, $UNIT_PATH and $CONF are gone"
say "ok: $(basename "$DEB")"
