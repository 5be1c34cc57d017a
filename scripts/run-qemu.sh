#!/usr/bin/env bash
# Boots an initramfs with zonit as /init in QEMU with software emulation
# (the KVM of these build machines is nested and cannot boot Linux), the serial
# console on this terminal.
#
# Usage: scripts/run-qemu.sh [--initrd FILE] [--append WORDS] [-- QEMU-ARGS...]
#   --initrd   default build/initramfs.cpio.gz (built by
#              scripts/build-initramfs.sh when missing)
#   --append   extra kernel command line words, e.g. "zonit.shell zonit.log=debug"
#   QEMU-ARGS  passed to qemu-system-x86_64 as they are
# Environment: ZONIT_KERNEL_DIR (default build/kernel, fetched by
# scripts/fetch-kernel.sh when missing), QEMU_MEM (default 1G), QEMU_CPU
# (default max: an emulated CPU with SVM, so kvm_amd loads and nested
# guests run).
#
# Quit with Ctrl-A X. The machine ends on its own after a poweroff or a
# reboot (-no-reboot); a kernel panic reboots at once (panic=-1) and so
# ends QEMU too. With [host] exit_with, QEMU's exit status is
# (status << 1) | 1 of that unit (isa-debug-exit on port 0xf4).
# no_timer_check: an emulated CPU on a busy host can miss the kernel's
# boot-time timer interrupt check, which then panics ("IO-APIC + timer
# doesn't work"); the timer itself works.
set -euo pipefail

initrd=
append=
qemu_args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --initrd) initrd=$(realpath -- "$2"); shift ;;
        --append) append=$2; shift ;;
        --) shift; qemu_args=("$@"); break ;;
        *) echo "usage: $0 [--initrd FILE] [--append WORDS] [-- QEMU-ARGS...]" >&2; exit 2 ;;
    esac
    shift
done
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh >&2
kernel_dir=${ZONIT_KERNEL_DIR:-$PWD/build/kernel}
[[ -f $kernel_dir/vmlinuz ]] || scripts/fetch-kernel.sh "$kernel_dir" >&2
if [[ -z $initrd ]]; then
    initrd=$PWD/build/initramfs.cpio.gz
    [[ -f $initrd ]] || scripts/build-initramfs.sh --release "$initrd" >&2
fi

exec qemu-system-x86_64 \
    -accel tcg -cpu "${QEMU_CPU:-max}" -m "${QEMU_MEM:-1G}" -smp 1 \
    -nographic -no-reboot \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -kernel "$kernel_dir/vmlinuz" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 no_timer_check $append" \
    "${qemu_args[@]}"
