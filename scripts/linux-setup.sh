#!/usr/bin/env bash
# linux-setup.sh: install what prezero's Linux-guest harness (harness/linux) needs.
#
#   scripts/linux-setup.sh [--peer] [--uml7] [--uml7-suite SUITE] [--cache DIR]
#
# Always: the apt packages `user-mode-linux` (the UML kernel /usr/bin/linux.uml and its
# modules under /usr/lib/uml/modules), `busybox-static` and `cpio`.
# With --peer (the QEMU guests, `prezero bench linux`, `prezero linux --vmm qemu`): Debian's cloud
# kernel (`linux-image-cloud-amd64`), which is *not* installed into the host's /boot: its versioned
# package is fetched with `apt-get download` and unpacked with `dpkg-deb -x` into
# DIR/cloud-kernel/<package>/ (DIR defaults to $PREZERO_LINUX_CACHE, else
# $CARGO_TARGET_DIR/prezero-linux, else <repo>/target/prezero-linux).
#
# With --uml7 (the newest stock driver: `prezero linux --kernel 7`, tests/linux_uml7.rs): Debian's
# prebuilt `user-mode-linux` 7.x from a newer suite (SUITE, default forky: Debian 12 has 6.1,
# trixie 6.12, forky and sid 7.2) with its libc closure, unpacked into DIR/uml7/prefix, never
# into the system: apt runs with a private configuration (its own sources list, lists, cache and
# an empty dpkg status file, as scripts/qemu-setup.sh does) and `dpkg-deb -x` unpacks each
# package. The binary needs glibc >= 2.38 (Debian 12 has 2.36), so `patchelf` (apt, installed if
# missing) points its interpreter and rpath at the prefix's own loader and glibc; its modules
# (virtio_balloon.ko of the same build) stay in DIR/uml7/prefix/usr/lib/uml/modules/<release>.
# A 40 MB download (192 MB unpacked), 15-35 s once; 0.1 s when cached. Prints `uml7=PATH`
# (the patched linux.uml).
#
# Installing packages needs root; without root, missing packages are an error that names the
# command to run. Fetching the cloud kernel needs no root. Nothing fetched here is committed.
# The Rust harness (prezero_linux_harness::setup) runs this same script, embedded, when root.
# QEMU itself (>= 10.2, for the generic vhost-user device) comes from scripts/qemu-setup.sh.
set -euo pipefail
# The private-apt fetch (debian-prefix.sh): defined already when the harness runs this text.
declare -F debian_prefix >/dev/null || . "$(dirname "$0")/debian-prefix.sh"

peer=0
uml7=0
uml7_suite="forky"
cache=""
while [ $# -gt 0 ]; do
    case "$1" in
        --peer) peer=1 ;;
        --uml7) uml7=1 ;;
        --uml7-suite) uml7_suite="$2"; shift ;;
        --uml7-suite=*) uml7_suite="${1#--uml7-suite=}" ;;
        --cache) cache="$2"; shift ;;
        --cache=*) cache="${1#--cache=}" ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "linux-setup: unknown argument '$1' (use --peer, --uml7, --uml7-suite SUITE, --cache DIR)" >&2; exit 2 ;;
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

apt_opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=600)
updated=0
apt_update() {
    if [ "$updated" = 0 ]; then
        echo "linux-setup: apt-get update" >&2
        apt-get -q -o DPkg::Lock::Timeout=600 update >&2
        updated=1
    fi
}

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

pkgs=(user-mode-linux busybox-static cpio)
[ "$uml7" = 1 ] && pkgs+=(patchelf)
missing=()
for p in "${pkgs[@]}"; do
    is_installed "$p" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "linux-setup: missing packages: ${missing[*]}" >&2
        echo "linux-setup: fix: sudo apt-get install ${missing[*]}   (or run this script as root)" >&2
        exit 1
    fi
    apt_update
    echo "linux-setup: apt-get install ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install "${apt_opts[@]}" "${missing[@]}" >&2
fi

if [ "$peer" = 1 ]; then
    # The metapackage depends on exactly one versioned image package, e.g.
    # linux-image-6.1.0-56-cloud-amd64; resolve it (refreshing the lists once if unknown).
    resolve() {
        apt-cache depends linux-image-cloud-amd64 2>/dev/null \
            | sed -n 's/^ *Depends: \(linux-image-[^ ]*-cloud-amd64\)$/\1/p' | head -n1
    }
    kpkg="$(resolve)"
    if [ -z "$kpkg" ]; then
        if [ "$(id -u)" = 0 ]; then apt_update; kpkg="$(resolve)"; fi
    fi
    if [ -z "$kpkg" ]; then
        echo "linux-setup: apt does not know linux-image-cloud-amd64; fix: sudo apt-get update" >&2
        exit 1
    fi
    dest="$cache/cloud-kernel/$kpkg"
    if ! ls "$dest"/boot/vmlinuz-* >/dev/null 2>&1; then
        mkdir -p "$cache/cloud-kernel"
        tmp="$(mktemp -d "$cache/cloud-kernel/.fetch.XXXXXX")"
        trap 'rm -rf "$tmp"' EXIT
        echo "linux-setup: apt-get download $kpkg -> $dest" >&2
        # apt's sandbox user may not write here; `download` then warns and fetches as root.
        (cd "$tmp" && apt-get -q download "$kpkg" >&2)
        dpkg-deb -x "$tmp"/"$kpkg"_*.deb "$tmp/root"
        rm -rf "$dest"
        mv "$tmp/root" "$dest"
    fi
    echo "cloud-kernel=$(ls "$dest"/boot/vmlinuz-* | head -n1)"
fi
if [ "$uml7" = 1 ]; then
    root="$cache/uml7"
    prefix="$root/prefix"
    linux="$prefix/usr/bin/linux.uml"
    lib="$prefix/usr/lib/x86_64-linux-gnu"
    # Cached: the same suite, and the patched binary still runs.
    if ! { [ -f "$root/.complete" ] && [ "$(cat "$root/.complete")" = "$uml7_suite" ] \
        && "$linux" --version >/dev/null 2>&1; }; then
        echo "linux-setup: fetching user-mode-linux from Debian $uml7_suite into $prefix" >&2
        rm -rf "$root"
        # The closure from an empty status: user-mode-linux, libc6, libgcc-s1 and their bases.
        debian_prefix "$root/apt" "$prefix" \
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $uml7_suite main" \
            install user-mode-linux
        [ -x "$lib/ld-linux-x86-64.so.2" ] && [ -f "$linux" ] || {
            echo "linux-setup: the unpacked prefix lacks its loader or linux.uml; fix: rm -rf $root and retry" >&2
            exit 1
        }
        # Absolute paths: the cache must not move after this (a moved cache is fetched again,
        # since the check above then fails).
        patchelf --set-interpreter "$lib/ld-linux-x86-64.so.2" --set-rpath "$lib" "$linux"
        if ! release="$("$linux" --version 2>/dev/null)" || [ -z "$release" ]; then
            echo "linux-setup: the patched $linux does not run; fix: rm -rf $root and retry" >&2
            exit 1
        fi
        if ! ls "$prefix/usr/lib/uml/modules/$release/kernel/drivers/virtio/"virtio_balloon.ko* \
            >/dev/null 2>&1; then
            echo "linux-setup: $uml7_suite's user-mode-linux $release has no virtio_balloon module" >&2
            exit 1
        fi
        echo "$uml7_suite" >"$root/.complete"
        echo "linux-setup: user-mode-linux $release from Debian $uml7_suite" >&2
    fi
    echo "uml7=$linux"
fi
echo "linux-setup: ok" >&2
