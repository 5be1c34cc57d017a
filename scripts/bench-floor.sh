#!/usr/bin/env bash
# N zones started at once against the floor, wall time and CPU, for one or
# more zonit binaries side by side in the same rounds.
#
#   scripts/bench-floor.sh [ROUNDS [BIN...]]     (as root)
#
# Each round runs the floor (scripts/zone-floor.c: N children cloned into
# new PID, mount, UTS, IPC and network namespaces, each binding the root,
# pivot_root, /proc, exec) and then each BIN (default: the release build)
# with N zones of `/bin/sleep 1000` on one busybox root. Wall time: the
# floor's "all N running after X ms", zonit's own "all N autostart unit(s)
# running after X ms" (from the agent's decision to start them to the last
# command executed). CPU: the whole process tree's `cpuacct.usage` (a
# cgroup v1 made for the run), read when that line appears.
#
#   BENCH_ZONES=100    zones per start
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bench-lib.sh

ROUNDS=${1:-5}
shift || true
N=${BENCH_ZONES:-100}

bench_require_root bench-floor
cpuacct=/sys/fs/cgroup/cpuacct
if [[ ! -d $cpuacct ]]; then
    echo "bench-floor: needs a cgroup v1 cpuacct hierarchy at $cpuacct for the CPU figure" >&2
    exit 1
fi
bench_tools
bench_prepare zonit-floor sh true sleep
bins=("$@")
((${#bins[@]})) || bins=("$ZONIT")

gcc -O2 -static -o "$dir/floor" scripts/zone-floor.c
cfg=$dir/many.toml
bench_many_config "$cfg" info root
cg=$cpuacct/zonit-floor-$$
mkdir "$cg"
trap 'bench_cleanup; rmdir "$cg" 2>/dev/null || true' EXIT

# in_cg CMD...: resets the usage and becomes CMD inside the accounting
# cgroup; run it in a subshell (one: `$!` of `(in_cg ...) &` is CMD).
in_cg() {
    echo 0 >"$cg/cpuacct.usage"
    echo "$BASHPID" >"$cg/tasks"
    exec "$@"
}
cpu_ms() { awk '{printf "%.0f", $1 / 1e6}' "$cg/cpuacct.usage"; }

echo "bench-floor: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); $N zones, $ROUNDS rounds" >&2
printf '| round | load | floor: wall / CPU (ms) |'
for b in "${bins[@]}"; do printf ' %s: wall / CPU (ms) |' "$b"; done
printf '\n|---|---|---|'
for _ in "${bins[@]}"; do printf -- '---|'; done
printf '\n'
for r in $(seq "$ROUNDS"); do
    line="| $r | $(cut -d' ' -f1 /proc/loadavg) | "
    out=$(in_cg "$dir/floor" "$N" "$root" /bin/sleep 1000)  # $(...) is the subshell
    line+="$(awk '{print $5}' <<<"$out") / $(cpu_ms) |"
    for b in "${bins[@]}"; do
        log=$dir/start.log
        rm -f "$log" "$cfg.sock"
        (in_cg "$b" run --config "$cfg" 2>"$log") &
        zpid=$!
        for ((i = 0; ; i++)); do
            grep -q "autostart unit(s) running after" "$log" 2>/dev/null && break
            if ! kill -0 "$zpid" 2>/dev/null || ((i > 10000)); then
                echo "bench-floor: $b did not report its $N zones running" >&2
                cat "$log" >&2
                exit 1
            fi
            sleep 0.002
        done
        cpu=$(cpu_ms)
        t=$(grep -o "running after [0-9.]* ms" "$log" | awk '{print $3}')
        line+=" $t / $cpu |"
        kill -TERM "$zpid"
        wait "$zpid" || true
        zpid=
    done
    echo "$line"
done
