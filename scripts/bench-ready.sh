#!/usr/bin/env bash
# The readiness and health benchmarks of BENCHMARKS.md:
#
#   1. cost of one exec health probe: the agent's time from deciding to
#      start it to its helper reaped (the agent's debug line), and the
#      agent's CPU time per probe
#   2. the same probe through `crun exec` into a running container, when
#      crun is installed and runs on this host
#   3. agent context switches with N zones each probed by tcp every 10 s:
#      the goal is the probes' own wake-ups and nothing else
#
# Usage: scripts/bench-ready.sh      (as root; prints a markdown report)
# Knobs (environment):
#   BENCH_WINDOW=20    seconds of probing measured in 1
#   BENCH_ZONES=100    zones for 3
#   BENCH_IDLE=30      window in seconds for 3
#   ZONIT=PATH         binary to measure (default: cargo build --release)
#
# Measures only; nothing here is a pass/fail test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bench-lib.sh

WINDOW=${BENCH_WINDOW:-20}
N=${BENCH_ZONES:-100}
IDLE=${BENCH_IDLE:-30}

bench_require_root bench-ready
bench_prepare zonit-bench-ready sh true sleep httpd

# cpu_ms PID -> utime + stime in ms
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) * 1000 / hz}' "/proc/$1/stat"; }
# The agent's PID: zonit runs as PID 1 of its own PID namespace.
agent_of() { cat "/proc/$1/task/$1/children" | awk '{print $1}'; }

# zonit under unshare, as the tier-2 tests run it; sets $zpid (agent).
start_zonit() {
    local config=$1 log=$2
    unshare --pid --fork --mount --kill-child "$ZONIT" run --config "$config" >"$log" 2>&1 &
    pids+=($!)
    local outer=$! i
    for i in $(seq 500); do
        zpid=$(agent_of "$outer" 2>/dev/null || true)
        [[ -n $zpid && -S $dir/ctl.sock ]] && return 0
        sleep 0.01
    done
    echo "bench-ready: zonit did not start" >&2
    cat "$log" >&2
    exit 1
}
# unshare ignores SIGTERM while it waits: the agent gets it, stops its
# zones and exits, and unshare with it.
stop_zonit() {
    local outer=${pids[-1]}
    kill -TERM "$zpid" 2>/dev/null || true
    wait "$outer" 2>/dev/null || true
    unset 'pids[-1]'
}

report=()

# --- 1. one exec probe ----------------------------------------------------------
cat >"$dir/exec.toml" <<EOF
[host]
control_socket = "$dir/ctl.sock"
log_level = "debug"
[zone.p]
root = "$root"
command = ["/bin/sleep", "100000"]
health = { exec = ["/bin/true"], interval = "100ms", timeout = "5s", retries = 3 }
EOF
start_zonit "$dir/exec.toml" "$dir/exec.log"
sleep 2
c0=$(cpu_ms "$zpid")
n0=$(grep -c "exec probe reaped" "$dir/exec.log" || true)
sleep "$WINDOW"
c1=$(cpu_ms "$zpid")
n1=$(grep -c "exec probe reaped" "$dir/exec.log" || true)
# The same command through the CLI, as crun exec is measured below.
ctl_med=-
if command -v hyperfine >/dev/null; then
    hyperfine -N --runs 100 --warmup 10 --export-json "$dir/ctl.json" \
        "$ZONIT ctl --socket $dir/ctl.sock exec p -- /bin/true" >/dev/null
    ctl_med=$(awk -F: '/"median"/ {gsub(/[ ,]/, "", $2); printf "%.0f", $2 * 1e6; exit}' "$dir/ctl.json")
fi
stop_zonit
grep -o "exec probe reaped [0-9]* us" "$dir/exec.log" | awk '{print $4}' >"$dir/exec.us"
probes=$((n1 - n0))
say "### Readiness and health probes"
say ""
say "**1. One exec probe (\`health = { exec = [\"/bin/true\"], interval = \"100ms\" }\`), ${WINDOW} s window**"
say ""
say "| figure | value |"
say "|---|---|"
say "| probes in the window | $probes |"
say "| agent's start-to-reap, median (us) | $(median <"$dir/exec.us") |"
say "| agent's start-to-reap, 90th percentile (us) | $(pct 90 <"$dir/exec.us") |"
say "| agent CPU per probe (ms, utime + stime) | $(awk -v a="$c0" -v b="$c1" -v n="$probes" 'BEGIN {if (n) printf "%.3f", (b - a) / n}') |"
say "| \`zonit ctl exec p -- /bin/true\`, wall time, median of 100 (us; client start included, probes still running) | $ctl_med |"
say ""

# --- 2. crun exec, when crun runs here -------------------------------------------
# crun refuses a hybrid host (a cgroup2 beside cgroup v1, even one with no
# controllers enabled): as in scripts/bench.sh, the container is created where that cgroup2 is
# unmounted, and without a cgroup of its own (--cgroup-manager=disabled:
# on cgroup v1 alone crun's detached container did not stay up). `crun
# exec` itself needs neither, so it is timed bare, as `zonit ctl exec` is.
crun=(crun --cgroup-manager=disabled)
cg2=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)
if [[ -n $cg2 && $cg2 != /sys/fs/cgroup ]]; then
    crun=(unshare --mount --propagation private -- sh -c 'umount -l "$0" && exec crun --cgroup-manager=disabled "$@"' "$cg2")
fi
if command -v crun >/dev/null && command -v hyperfine >/dev/null; then
    bundle=$dir/bundle
    mkdir -p "$bundle"
    (cd "$bundle" && crun spec)
    sed -i -e 's/"terminal": true/"terminal": false/' \
        -e "s|\"path\": \"rootfs\"|\"path\": \"$root\"|" \
        -e 's|"sh"|"/bin/sleep", "100000"|' "$bundle/config.json"
    if "${crun[@]}" run -d -b "$bundle" zonit-bench-ready </dev/null >"$dir/crun-run.log" 2>&1 &&
        crun exec zonit-bench-ready /bin/true; then
        hyperfine -N --runs 100 --warmup 10 --export-json "$dir/crun.json" \
            "crun exec zonit-bench-ready /bin/true" >/dev/null
        med=$(awk -F: '/"median"/ {gsub(/[ ,]/, "", $2); print $2; exit}' "$dir/crun.json")
        say "**2. \`crun exec zonit-bench-ready /bin/true\` into a running container of the same root: median $(awk -v s="$med" 'BEGIN {printf "%.0f", s * 1e6}') us** (hyperfine -N, 100 runs, wall time of the whole command)"
        crun kill zonit-bench-ready KILL >/dev/null 2>&1 || true
        sleep 0.5
        crun delete -f zonit-bench-ready >/dev/null 2>&1 || true
    else
        say "**2. crun exec**: crun is installed but its container did not run here ($(tr '\n' ' ' <"$dir/crun-run.log")); not measured."
    fi
else
    say "**2. crun exec**: crun (and hyperfine) not installed; not measured."
fi
say ""

# --- 3. wake-ups with N zones probing every 10 s ---------------------------------
{
    echo "[host]"
    echo "control_socket = \"$dir/ctl.sock\""
    for i in $(seq "$N"); do
        echo "[zone.h$i]"
        echo "root = \"$root\""
        echo "command = [\"/bin/httpd\", \"-f\", \"-p\", \"8080\"]"
        echo "health = { tcp = 8080, interval = \"10s\" }"
    done
} >"$dir/many.toml"
start_zonit "$dir/many.toml" "$dir/many.log"
for i in $(seq 3000); do
    healthy=$("$ZONIT" ctl --socket "$dir/ctl.sock" status --json | { grep -o '"health":"healthy"' || true; } | wc -l)
    ((healthy == N)) && break
    sleep 0.1
done
a0=$(ctxt "$zpid")
c0=$(cpu_ms "$zpid")
sleep "$IDLE"
a1=$(ctxt "$zpid")
c1=$(cpu_ms "$zpid")
stop_zonit
say "**3. Agent with $N zones, each probed by tcp every 10 s, over ${IDLE} s** ($healthy healthy at the start of the window)"
say ""
say "| figure | value |"
say "|---|---|"
say "| probes due in the window | $((N * IDLE / 10)) |"
say "| agent context switches (voluntary + nonvoluntary) | $((a1 - a0)) |"
say "| agent CPU (ms) | $(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.0f", b - a}') |"
say ""
say "Host: $(nproc) CPUs, $(uname -r), load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
printf '%s\n' "${report[@]}"
