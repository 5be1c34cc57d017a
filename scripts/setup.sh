#!/usr/bin/env bash
# Installs what building, the demo and the tests need on a fresh Debian
# machine: run as root (or with sudo). Idempotent: installs only what is
# missing, and runs `apt-get update` only when something is.
set -euo pipefail

packages=(
    busybox-static   # zone templates and the initramfs rescue shell
    python3-prometheus-client   # tests only: Prometheus's text parser checks /metrics
    util-linux       # unshare, for tier-2 tests and the host demo
    file             # the static-binary check
    qemu-system-x86  # tier-4 tests and the appliance demo
    iproute2         # network checks in tests
    nftables         # tests read zonit's ruleset back with `nft` (never used by zonit)
    gcc libc6-dev    # the static syscall probe of the escape tests
    # Test-only: file system and partition images for the superblock
    # readers (tier 1) and the data-disk QEMU tests (tier 4).
    e2fsprogs xfsprogs btrfs-progs dosfstools gdisk
)
if [[ ${ZONIT_BENCH:-0} == 1 ]]; then
    # Peers measured side by side in BENCHMARKS.md.
    packages+=(hyperfine bubblewrap crun s6 binutils python3)
    # scripts/bench-net.sh traffic: throughput and latency over the bridge.
    packages+=(iperf3 sockperf)
    # scripts/bench-net.sh peers: systemd-nspawn with a veth on a bridge.
    packages+=(systemd-container)
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    SUDO=
    [[ $(id -u) == 0 ]] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install the Rust toolchain (rustup) first" >&2
    exit 1
fi
