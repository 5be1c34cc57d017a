#!/usr/bin/env bash
# Builds the appliance initramfs (SPEC section 9): zonit as /init plus
# everything initramfs/manifest lists, as a reproducible gzip newc archive.
#
# Usage: scripts/build-initramfs.sh [--release] [OUTPUT]
#   OUTPUT defaults to build/initramfs.cpio.gz. --release packs a release
#   build of zonit (the fully static, small one) instead of the debug build.
# Needs busybox-static on the build host (/bin/busybox), for the rescue
# shell and the zone template.
set -euo pipefail

profile=debug
output=
for arg in "$@"; do
    case $arg in
        --release) profile=release ;;
        -*) echo "usage: $0 [--release] [OUTPUT]" >&2; exit 2 ;;
        *) output=$(realpath -m -- "$arg") ;;
    esac
done
cd "$(dirname "${BASH_SOURCE[0]}")/.."
output=${output:-$PWD/build/initramfs.cpio.gz}

if [[ ! -x /bin/busybox ]]; then
    echo "build-initramfs: /bin/busybox not found; install busybox-static" >&2
    exit 1
fi

cargo_flags=()
[[ $profile == release ]] && cargo_flags+=(--release)
cargo build "${cargo_flags[@]}" --bin zonit --bin zonit-mkinitramfs

# The target is fixed by .cargo/config.toml; honour a relocated target dir.
bin_dir="${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/$profile"
mkdir -p "$(dirname "$output")"
ZONIT_BIN="$bin_dir/zonit" "$bin_dir/zonit-mkinitramfs" initramfs/manifest "$output"
