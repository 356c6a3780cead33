#!/usr/bin/env bash
# linux-setup.sh: install what prezero's Linux-guest harness (harness/linux) needs.
#
#   scripts/linux-setup.sh [--peer] [--cache DIR]
#
# Always: the apt packages `user-mode-linux` (the UML kernel /usr/bin/linux.uml and its
# modules under /usr/lib/uml/modules), `busybox-static` and `cpio`.
# With --peer (the QEMU guests, `prezero bench linux`, `prezero linux --vmm qemu`): Debian's cloud
# kernel (`linux-image-cloud-amd64`), which is *not* installed into the host's /boot: its versioned
# package is fetched with `apt-get download` and unpacked with `dpkg-deb -x` into
# DIR/cloud-kernel/<package>/ (DIR defaults to $PREZERO_LINUX_CACHE, else
# $CARGO_TARGET_DIR/prezero-linux, else <repo>/target/prezero-linux).
#
# Installing packages needs root; without root, missing packages are an error that names the
# command to run. Fetching the cloud kernel needs no root. Nothing fetched here is committed.
# The Rust harness (prezero_linux_harness::setup) runs this same script, embedded, when root.
# QEMU itself (>= 10.2, for the generic vhost-user device) comes from scripts/qemu-setup.sh.
set -euo pipefail

peer=0
cache=""
while [ $# -gt 0 ]; do
    case "$1" in
        --peer) peer=1 ;;
        --cache) cache="$2"; shift ;;
        --cache=*) cache="${1#--cache=}" ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "linux-setup: unknown argument '$1' (use --peer, --cache DIR)" >&2; exit 2 ;;
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
echo "linux-setup: ok" >&2
