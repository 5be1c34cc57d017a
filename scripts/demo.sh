#!/usr/bin/env bash
# The demo appliance: builds the initramfs (release zonit as /init, the
# demo config initramfs/demo.toml, the busybox zone template, kvm and
# overlay modules) and boots it in QEMU with the console on this terminal.
#
# Usage: scripts/demo.sh [--disk FILE] [EXTRA KERNEL WORDS...]
#   e.g. scripts/demo.sh zonit.shell     a root shell on the console beside
#                                        the zones (try `zonit ctl status`)
#   --disk FILE   the data-disk demo (initramfs/data-demo.toml): FILE is
#                 the appliance's data disk, made (256 MiB, ext4, label
#                 zdata) when missing; a zone on it counts the boots, so
#                 run the demo twice with the same FILE
# Installs what it needs on a fresh Debian machine (qemu-system-x86,
# busybox-static; the kernel comes from scripts/fetch-kernel.sh).
# The appliance's NIC is on QEMU's user network, with this machine's
# 127.0.0.1:8080 (ZONIT_DEMO_PORT to choose another) forwarded to its port
# 8080: `curl http://127.0.0.1:8080/` from this machine reaches the demo's
# web zone through zonit's port forward (tests/qemu.rs checks that path).
# Quit with Ctrl-A X, or `zonit ctl poweroff` from the shell.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

disk=
if [[ ${1:-} == --disk ]]; then
    [[ $# -ge 2 ]] || { echo "usage: $0 [--disk FILE] [KERNEL WORDS...]" >&2; exit 2; }
    disk=$(realpath -m -- "$2")
    shift 2
fi

scripts/setup.sh
scripts/fetch-kernel.sh
if [[ -z $disk ]]; then
    scripts/build-initramfs.sh --release build/demo.cpio.gz
    port=${ZONIT_DEMO_PORT:-8080}
    echo "demo: once the console says \"web: ready\", curl http://127.0.0.1:$port/ from this machine shows zone web's page"
    exec scripts/run-qemu.sh --initrd build/demo.cpio.gz --append "$*" \
        -- -nic "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:$port-:8080"
fi
if [[ ! -e $disk ]]; then
    truncate -s 256M "$disk"
    mkfs.ext4 -q -L zdata "$disk"
    echo "demo: made the data disk $disk (ext4, label zdata)"
fi
scripts/build-initramfs.sh --release --config initramfs/data-demo.toml build/data-demo.cpio.gz
exec scripts/run-qemu.sh --initrd build/data-demo.cpio.gz --append "$*" \
    -- -drive "file=$disk,if=virtio,format=raw"
