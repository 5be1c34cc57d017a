#!/usr/bin/env bash
# Builds the appliance initramfs: zonit as /init plus
# everything initramfs/manifest lists, as a reproducible gzip newc archive.
#
# Usage: scripts/build-initramfs.sh [--release] [--config FILE] [OUTPUT]
#   OUTPUT defaults to build/initramfs.cpio.gz. --release packs a release
#   build of zonit (the fully static, small one) instead of the debug build.
#   --config packs FILE as /etc/zonit.toml instead of initramfs/demo.toml.
# Needs busybox-static on the build host (/bin/busybox), for the rescue
# shell and the zone template. Kernel modules listed in initramfs/modules
# are taken from build/kernel/modules (scripts/fetch-kernel.sh; set
# ZONIT_KERNEL_DIR to use another); without it the archive has no modules.
set -euo pipefail

profile=debug
output=
config=
while [[ $# -gt 0 ]]; do
    case $1 in
        --release) profile=release ;;
        --config) config=$(realpath -- "$2"); shift ;;
        -*) echo "usage: $0 [--release] [--config FILE] [OUTPUT]" >&2; exit 2 ;;
        *) output=$(realpath -m -- "$1") ;;
    esac
    shift
done
cd "$(dirname "${BASH_SOURCE[0]}")/.."
output=${output:-$PWD/build/initramfs.cpio.gz}
config=${config:-$PWD/initramfs/demo.toml}

if [[ ! -x /bin/busybox ]]; then
    echo "build-initramfs: /bin/busybox not found; install busybox-static" >&2
    exit 1
fi

cargo_flags=()
[[ $profile == release ]] && cargo_flags+=(--release)
cargo build "${cargo_flags[@]}" --bin zonit --bin zonit-mkinitramfs --workspace

# Stage /lib: the listed modules of the fetched kernel, under
# lib/modules/VERSION, with the kernel's built-in list and modules.dep if
# depmod made one.
kernel_dir=${ZONIT_KERNEL_DIR:-$PWD/build/kernel}
lib=$(mktemp -d "${TMPDIR:-/tmp}/zonit-lib.XXXXXX")
trap 'rm -rf "$lib"' EXIT
mkdir -p "$lib/modules"
if [[ -d $kernel_dir/modules && -f $kernel_dir/version ]]; then
    version=$(cat "$kernel_dir/version")
    dest=$lib/modules/$version
    mkdir -p "$dest"
    while read -r rel; do
        rel=${rel%%#*}
        rel=${rel//[[:space:]]/}
        [[ -n $rel ]] || continue
        if [[ ! -f $kernel_dir/modules/$rel ]]; then
            echo "build-initramfs: $rel (initramfs/modules) is not in $kernel_dir/modules" >&2
            exit 1
        fi
        mkdir -p "$dest/$(dirname "$rel")"
        cp "$kernel_dir/modules/$rel" "$dest/$rel"
    done <initramfs/modules
    for f in modules.builtin modules.order modules.dep; do
        [[ ! -f $kernel_dir/modules/$f ]] || cp "$kernel_dir/modules/$f" "$dest/$f"
    done
else
    echo "build-initramfs: no kernel in $kernel_dir (scripts/fetch-kernel.sh); packing no modules" >&2
fi
# The archive must not depend on the builder's umask.
chmod -R u=rwX,go=rX "$lib"
scripts/make-template.sh "$lib/template"
rmdir "$lib/template/tmp"   # listed in the manifest with its sticky 1777 mode

# The target is fixed by .cargo/config.toml; honour a relocated target dir.
bin_dir="${CARGO_TARGET_DIR:-$PWD/target}/x86_64-unknown-linux-gnu/$profile"
mkdir -p "$(dirname "$output")"
ZONIT_BIN="$bin_dir/zonit" ZONIT_CONFIG="$config" ZONIT_LIB="$lib" ZONIT_TEMPLATE="$lib/template" \
    "$bin_dir/zonit-mkinitramfs" initramfs/manifest "$output"
