#!/usr/bin/env bash
# PID 1 benchmarks for BENCHMARKS.md: ten zones, time to "all autostart
# units running" from zonit's own CLOCK_MONOTONIC stamps.
#
# Usage: scripts/bench-pid1.sh [RUNS]     (default 10; as root;
#                                         BENCH_QEMU=0 skips the QEMU part)
#   host:  `zonit run` with ten zones on this machine (the agent's own
#          share: its "all 10 autostart unit(s) running after X ms" line)
#   qemu:  the release initramfs as PID 1 under TCG, from zonit's first
#          instruction to the same line, plus PID 1's RSS (ignored test
#          bench_ten_zones_boot_and_pid1_rss in tests/qemu.rs)
#   size:  the static release binary
set -euo pipefail
runs=${1:-10}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bench-lib.sh
scripts/setup.sh
cargo build --release --quiet
zonit=$PWD/target/x86_64-unknown-linux-gnu/release/zonit

dir=$(mktemp -d /tmp/zonit-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/base/bin" "$dir/base/proc" "$dir/base/dev" "$dir/base/sys" "$dir/base/tmp" "$dir/zones"
cp /bin/busybox "$dir/base/bin/busybox"
for a in sh sleep; do ln -s busybox "$dir/base/bin/$a"; done
{
    printf '[host]\ncontrol_socket = "%s/control.sock"\n' "$dir"
    for i in $(seq 0 9); do
        printf '\n[zone.z%s]\nroot = "%s/zones/z%s"\ntemplate = "%s/base"\n' "$i" "$dir" "$i" "$dir"
        printf 'command = ["/bin/sh", "-c", "while true; do sleep 5; done"]\n'
    done
} >"$dir/zonit.toml"
"$zonit" check "$dir/zonit.toml" >/dev/null

echo "--- host: zonit run, 10 zones, $runs runs"
for r in $(seq "$runs"); do
    bench_time_start 10 "$dir/run-$r.log" "$zonit" "$dir/zonit.toml"
    rm -rf "$dir/zones"/*
done

if [[ ${BENCH_QEMU:-1} == 1 ]]; then
    echo "--- qemu (TCG): zonit as PID 1, 10 zones, 5 runs"
    scripts/fetch-kernel.sh >/dev/null
    BENCH_RUNS=5 cargo test --release --test qemu -- --ignored --nocapture bench_ 2>&1 | grep -E "^run "
fi

echo "--- size"
ls -l "$zonit" | awk '{print $5, $9}'
file -b "$zonit"
