#!/usr/bin/env bash
# qemu-setup.sh: a QEMU that can host `prezero serve` (QEMU >= 10.2: the user-creatable
# generic vhost-user device `vhost-user-test-device-pci`).
#
#   scripts/qemu-setup.sh [--cache DIR] [--suite SUITE]
#
# Uses the system's qemu-system-x86_64 when it is >= 10.2 and lists the device. Otherwise
# (Debian 12 ships 7.2) it fetches Debian's newest build (SUITE, default trixie-backports) with
# its whole library closure into DIR/qemu/prefix, never into the system and never committed:
# apt runs with a private configuration (its own sources list, lists, cache and an empty dpkg
# status file, so it resolves the closure as if nothing were installed), and `dpkg-deb -x`
# unpacks each package. DIR/qemu/bin/qemu-system-x86_64 then runs that QEMU through the
# prefix's own dynamic loader (the prefix's glibc is newer than the system's) with its own
# firmware and module directories. About 40 MB and 30 s once; instant when cached.
#
# DIR defaults to $PREZERO_LINUX_CACHE, else $CARGO_TARGET_DIR/prezero-linux, else
# <repo>/target/prezero-linux. Needs no root. The last line of output is `qemu=PATH`.
# Measured facts behind this recipe: QEMU-NOTES.md of the project's shared notes.
set -euo pipefail

cache=""
suite="trixie-backports"
while [ $# -gt 0 ]; do
    case "$1" in
        --cache) cache="$2"; shift ;;
        --cache=*) cache="${1#--cache=}" ;;
        --suite) suite="$2"; shift ;;
        --suite=*) suite="${1#--suite=}" ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "qemu-setup: unknown argument '$1' (use --cache DIR, --suite SUITE)" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "$cache" ]; then
    if [ -n "${PREZERO_LINUX_CACHE:-}" ]; then
        cache="$PREZERO_LINUX_CACHE"
    elif [ -n "${CARGO_TARGET_DIR:-}" ]; then
        cache="$CARGO_TARGET_DIR/prezero-linux"
    else
        cache="$(cd "$(dirname "$0")/.." && pwd)/target/prezero-linux"
    fi
fi

# Whether $1 runs, is >= 10.2 and has the generic vhost-user device.
usable() {
    local v major minor
    v="$("$1" --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')" || return 1
    [ -n "$v" ] || return 1
    read -r major minor <<<"$v"
    [ "$major" -gt 10 ] || { [ "$major" = 10 ] && [ "$minor" -ge 2 ]; } || return 1
    # Not `-device help`: that loads every module, and a prefix QEMU would also try the system
    # QEMU's modules that it lacks (and abort on their build id).
    "$1" -nodefaults -machine none -device vhost-user-test-device-pci,help 2>/dev/null \
        | grep -q 'num_vqs='
}

if sys="$(command -v qemu-system-x86_64)" && usable "$sys"; then
    echo "qemu-setup: using the system's $("$sys" --version | head -n1)" >&2
    echo "qemu=$sys"
    exit 0
fi

root="$cache/qemu"
prefix="$root/prefix"
wrapper="$root/bin/qemu-system-x86_64"
if [ -f "$root/.complete" ] && [ -x "$wrapper" ] && [ "$(cat "$root/.complete")" = "$suite" ]; then
    echo "qemu=$wrapper"
    exit 0
fi

echo "qemu-setup: fetching QEMU from Debian $suite into $prefix" >&2
rm -rf "$root"
apt_dir="$root/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/etc/sources.list.d" \
    "$apt_dir/etc/preferences.d" "$apt_dir/etc/trusted.gpg.d" "$prefix" "$root/bin"
: >"$apt_dir/status"
base="${suite%%-*}"
cat >"$apt_dir/etc/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $base main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main
EOF
apt_private=(
    -o "Dir::State=$apt_dir" -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::State::status=$apt_dir/status" -o "Dir::Cache=$apt_dir"
    -o "Dir::Cache::Archives=$apt_dir/archives"
    -o "Dir::Etc::SourceList=$apt_dir/etc/sources.list"
    -o "Dir::Etc::SourceParts=$apt_dir/etc/sources.list.d"
    -o "Dir::Etc::Preferences=$apt_dir/etc/preferences"
    -o "Dir::Etc::PreferencesParts=$apt_dir/etc/preferences.d"
    -o "Dir::Etc::TrustedParts=$apt_dir/etc/trusted.gpg.d"
    -o "APT::Architecture=amd64" -o "APT::Architectures=amd64"
    -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
)
apt-get -q "${apt_private[@]}" update >&2
apt-get -q -y "${apt_private[@]}" --no-install-recommends -d -t "$suite" \
    install qemu-system-x86 qemu-system-common qemu-system-data >&2
for deb in "$apt_dir"/archives/*.deb; do
    dpkg-deb -x "$deb" "$prefix"
done
rm -rf "$apt_dir"

lib="$prefix/usr/lib/x86_64-linux-gnu"
[ -x "$lib/ld-linux-x86-64.so.2" ] && [ -x "$prefix/usr/bin/qemu-system-x86_64" ] || {
    echo "qemu-setup: the unpacked prefix lacks its loader or QEMU; fix: rm -rf $root and retry" >&2
    exit 1
}
# QEMU_MODULE_DIR is searched before the built-in /usr/lib/x86_64-linux-gnu/qemu, where a
# system QEMU of another build keeps modules QEMU would refuse ("Only modules from the same
# build can be loaded"). `exec` keeps one process: its pid is QEMU's (the harness's probes).
cat >"$wrapper" <<EOF
#!/bin/sh
# Generated by scripts/qemu-setup.sh: Debian $suite's QEMU from a private prefix.
export QEMU_MODULE_DIR="$lib/qemu"
exec "$lib/ld-linux-x86-64.so.2" --library-path "$lib" "$prefix/usr/bin/qemu-system-x86_64" \\
    -L "$prefix/usr/share/seabios" -L "$prefix/usr/share/qemu" "\$@"
EOF
chmod +x "$wrapper"
if ! usable "$wrapper"; then
    echo "qemu-setup: $wrapper does not run or lacks vhost-user-test-device-pci" >&2
    exit 1
fi
echo "$suite" >"$root/.complete"
echo "qemu-setup: $("$wrapper" --version | head -n1)" >&2
echo "qemu=$wrapper"
