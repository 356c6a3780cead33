#!/usr/bin/env bash
# kernel-build.sh: builds prezero-kernel (kernel/), the x86-64 guest kernel QEMU boots with
# `-kernel` (PVH), with the installed stable toolchain and the host target's precompiled
# `core`/`alloc`: no `rustup target add`, no nightly, nothing downloaded but crates.
#
#   scripts/kernel-build.sh [--debug]
#
# The kernel is its own Cargo workspace; its freestanding flags live in kernel/.cargo/config.toml,
# which cargo reads only when run from kernel/, hence the `cd`. Output (never committed):
# $CARGO_TARGET_DIR/kernel (default <repo>/target/kernel)/x86_64-unknown-linux-gnu/<profile>/
# prezero-kernel. The last line of output is `kernel=PATH`.
set -euo pipefail

profile=release
case "${1:-}" in
    "") ;;
    --debug) profile=debug ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "kernel-build: unknown argument '$1' (use --debug)" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "$0")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}/kernel"
cd "$root/kernel"
flags=(--locked --target-dir "$target_dir")
[ "$profile" = release ] && flags+=(--release)
cargo build "${flags[@]}" >&2
echo "kernel=$target_dir/x86_64-unknown-linux-gnu/$profile/prezero-kernel"
