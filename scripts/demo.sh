#!/usr/bin/env bash
# The demo appliance: builds the initramfs (release zonit as /init, the
# demo config initramfs/demo.toml, the busybox zone template, kvm and
# overlay modules) and boots it in QEMU with the console on this terminal.
#
# Usage: scripts/demo.sh [EXTRA KERNEL WORDS...]
#   e.g. scripts/demo.sh zonit.shell     a root shell on the console beside
#                                        the zones (try `zonit ctl status`)
# Installs what it needs on a fresh Debian machine (qemu-system-x86,
# busybox-static; the kernel comes from scripts/fetch-kernel.sh).
# The appliance's NIC is on QEMU's user network, with this machine's
# 127.0.0.1:8080 forwarded to it: `curl http://127.0.0.1:8080/` reaches the
# demo's web zone through zonit's port forward.
# Quit with Ctrl-A X, or `zonit ctl poweroff` from the shell.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
scripts/fetch-kernel.sh
scripts/build-initramfs.sh --release build/demo.cpio.gz
exec scripts/run-qemu.sh --initrd build/demo.cpio.gz --append "$*" \
    -- -nic user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:8080-:8080
