#!/usr/bin/env bash
# Fetches Debian's cloud kernel for the QEMU tests and the appliance image
# without installing it: `apt-get download` the versioned
# linux-image-*-cloud-amd64 package that the linux-image-cloud-amd64
# metapackage points at, and unpack it with `dpkg-deb -x`.
#
# Usage: scripts/fetch-kernel.sh [DIR]      (default DIR: build/kernel,
#                                            or $ZONIT_KERNEL_DIR)
# Leaves, in DIR:
#   vmlinuz    the bzImage
#   config     the kernel's .config (check it with check-kernel-config.sh)
#   modules/   the lib/modules/VERSION tree (kvm.ko*, kvm-amd.ko*, ...)
#   version    the kernel release string, e.g. 6.1.0-56-cloud-amd64
#   debs/      the downloaded package, kept as the cache
# Idempotent: does nothing when all of these already exist.
set -euo pipefail

# A DIR given on the command line is relative to the caller's directory;
# the default is relative to the repository.
dest="${1:-${ZONIT_KERNEL_DIR:-}}"
[[ -z $dest ]] || dest=$(realpath -m -- "$dest")
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dest="${dest:-$PWD/build/kernel}"
meta=linux-image-cloud-amd64

if [[ -f $dest/vmlinuz && -f $dest/config && -d $dest/modules && -f $dest/version ]]; then
    echo "fetch-kernel: $dest already holds kernel $(cat "$dest/version")"
    exit 0
fi

# The metapackage only depends on the real, versioned image package; that
# one holds the files.
resolve() {
    apt-cache depends "$meta" 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-.*-cloud-amd64$/ { print $2; exit }'
}

# apt-get download writes into the current directory. Running as root it
# would drop to the _apt user, which cannot write into our tree; the
# download is a signed-repository fetch either way, so keep it as root.
download() {
    local pkg
    pkg=$(resolve) || return 1
    [[ -n $pkg ]] || return 1
    # The cache already holds this exact package: nothing to fetch.
    if compgen -G "$dest/debs/${pkg}_*.deb" >/dev/null; then
        echo "$pkg"
        return 0
    fi
    (cd "$dest/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) || return 1
    echo "$pkg"
}

mkdir -p "$dest/debs"
# Package lists can be missing or stale (the versioned package rotates with
# each kernel update); refresh them only when the first attempt fails.
if ! pkg=$(download); then
    echo "fetch-kernel: download failed; running apt-get update and retrying" >&2
    apt-get update -q >&2
    if ! pkg=$(download); then
        echo "fetch-kernel: unable to download $meta's kernel package; check the apt sources" >&2
        exit 1
    fi
fi

deb=$(find "$dest/debs" -name "${pkg}_*.deb" -printf '%T@ %p\n' | sort -rn | awk 'NR == 1 { print $2 }')
unpack="$dest/unpack"
rm -rf "$unpack"
mkdir -p "$unpack"
dpkg-deb -x "$deb" "$unpack"

# bookworm ships /lib/modules, later releases /usr/lib/modules.
shopt -s nullglob
moddirs=("$unpack"/lib/modules/*/ "$unpack"/usr/lib/modules/*/)
shopt -u nullglob
if [[ ${#moddirs[@]} -ne 1 ]]; then
    echo "fetch-kernel: $deb does not hold exactly one lib/modules/VERSION tree" >&2
    exit 1
fi
moddir=${moddirs[0]%/}
version=$(basename "$moddir")

# The package leaves modules.dep to depmod in its postinst; build the index
# here when depmod is available, otherwise zonit falls back to .modinfo.
if command -v depmod >/dev/null; then
    depmod -b "$unpack" "$version" || echo "fetch-kernel: depmod failed; no modules.dep" >&2
fi

rm -rf "$dest/modules"
mv "$unpack/boot/vmlinuz-$version" "$dest/vmlinuz"
mv "$unpack/boot/config-$version" "$dest/config"
mv "$moddir" "$dest/modules"
echo "$version" >"$dest/version"
rm -rf "$unpack"

# Say how modules are compressed: finit_module needs the kernel to
# decompress them itself (CONFIG_MODULE_DECOMPRESS) unless they are plain .ko.
compression=$(find "$dest/modules" -name '*.ko*' | sed -n 's/.*\.ko\(\.[a-z]*\)\{0,1\}$/\1/p' | sort | uniq -c | awk '{ printf "%s%s %s", sep, $1, ($2 == "" ? ".ko" : ".ko" $2); sep = ", " }')
echo "fetch-kernel: kernel $version in $dest (modules: ${compression:-none})"
