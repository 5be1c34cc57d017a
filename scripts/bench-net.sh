#!/usr/bin/env bash
# Networking benchmark for BENCHMARKS.md: N zones on a [network.X] (a veth
# each, addresses, routes, resolv.conf and hosts) against N plain zones,
# time to zonit's "all N autostart unit(s) running" line, runs alternated.
# Everything happens in a private network namespace (`unshare --net`):
# nothing touches this machine's interfaces or firewall.
#
# Usage: scripts/bench-net.sh [RUNS] [N]    (default 5 runs of 50 zones;
#                                           as root)
set -euo pipefail
runs=${1:-5}
n=${2:-50}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo build --release --quiet
zonit=$PWD/target/x86_64-unknown-linux-gnu/release/zonit

dir=$(mktemp -d /tmp/zonit-bench-net.XXXXXX)
trap 'rm -rf "$dir"' EXIT
scripts/make-template.sh "$dir/base"
mkdir -p "$dir/zones"
for kind in plain net; do
    {
        printf '[host]\ncontrol_socket = "%s/control-%s.sock"\n' "$dir" "$kind"
        if [[ $kind == net ]]; then
            printf '\n[network.lan]\naddress = "10.88.0.1/16"\nnat = true\n'
        fi
        for i in $(seq 0 $((n - 1))); do
            printf '\n[zone.z%s]\nroot = "%s/zones/z%s"\ntemplate = "%s/base"\n' "$i" "$dir" "$i" "$dir"
            printf 'command = ["/bin/sh", "-c", "while true; do sleep 5; done"]\n'
            if [[ $kind == net ]]; then
                printf 'network = "lan"\n'
            fi
        done
    } >"$dir/$kind.toml"
    "$zonit" check "$dir/$kind.toml" >/dev/null
done

echo "--- zonit run, $n zones, $runs runs of each, alternated"
for r in $(seq "$runs"); do
    for kind in plain net; do
        log=$dir/run-$kind-$r.log
        : >"$log"
        unshare --net --pid --fork --mount --kill-child "$zonit" run --config "$dir/$kind.toml" 2>"$log" &
        pid=$!
        for _ in $(seq 4000); do grep -q "autostart unit(s) running after" "$log" && break; sleep 0.005; done
        agent=$(cut -d' ' -f1 /proc/$pid/task/$pid/children)
        cpu=$(awk '{printf "%.1f", $1 / 1e6}' "/proc/$agent/schedstat")
        line=$(grep -o "all $n autostart unit(s) running after [0-9.]* ms" "$log") || { cat "$log"; exit 1; }
        echo "$kind: $line; agent CPU $cpu ms"
        kill -TERM "$agent"
        wait "$pid" || true
        rm -rf "$dir/zones"/* "$dir/zones"/.[!.]* 2>/dev/null || true
    done
done
