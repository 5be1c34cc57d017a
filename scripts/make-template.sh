#!/usr/bin/env bash
# Makes the busybox zone template: the one recipe behind the appliance
# image's /templates/base (scripts/build-initramfs.sh), the root tests'
# template (tests/common) and scripts/demo-host.sh.
#
# Usage: scripts/make-template.sh DIR     (DIR must not exist yet)
# DIR gets: bin/busybox (static) and a symlink per applet below; the mount
# points zones mount over (proc, sys, dev, tmp 1777), root 700, srv, and
# etc/passwd + etc/group (from initramfs/base/etc) so `id` and `ps` show
# names.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${1:?usage: make-template.sh DIR}
busybox=$(command -v busybox || true)
[[ -x ${busybox:-} ]] || busybox=/bin/busybox
if [[ ! -x $busybox ]]; then
    echo "make-template: busybox not found; install busybox-static (scripts/setup.sh)" >&2
    exit 1
fi
if ! file -b "$busybox" | grep -q "statically linked\|static-pie linked"; then
    echo "make-template: $busybox is not static; install busybox-static" >&2
    exit 1
fi
applets=(
    sh ash echo cat dd sleep ls ps hostname mount umount true false kill id wc
    head tail grep sed awk env printf test '[' uname date mkdir rm cp mv ln touch
    pwd sort uniq tr cut sync top free df du which whoami seq readlink stat
    chmod mknod nproc reboot poweroff httpd nc wget ip ifconfig ping
)
mkdir "$dir"
mkdir -p "$dir"/{bin,proc,sys,dev,tmp,root,srv,etc}
chmod 755 "$dir" "$dir/bin" "$dir/dev" "$dir/srv" "$dir/etc"
chmod 555 "$dir/proc" "$dir/sys"
chmod 1777 "$dir/tmp"
chmod 700 "$dir/root"
cp "$busybox" "$dir/bin/busybox"
chmod 755 "$dir/bin/busybox"
for a in "${applets[@]}"; do ln -s busybox "$dir/bin/$a"; done
install -m 644 "$here/initramfs/base/etc/passwd" "$here/initramfs/base/etc/group" "$dir/etc/"
