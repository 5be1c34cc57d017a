#!/usr/bin/env bash
# The zone benchmarks of BENCHMARKS.md, zonit side by side with its peers
# (util-linux unshare, bubblewrap, crun, s6) on one busybox root:
#
#   1. latency of one start: "start" to a zone running /bin/true having exited
#   2. 100 zones started at once: time until all run, starts per second
#   3. memory with 100 running zones: agent RSS/PSS, PSS per zone (its init)
#   4. agent context switches over an idle window with 100 zones
#
# Usage: scripts/bench.sh            (as root; prints a markdown report)
# Knobs (environment):
#   BENCH_RUNS=300    hyperfine runs per command per round (latency)
#   BENCH_ROUNDS=3    rounds; every figure is the median over its rounds,
#                     the spread across rounds shows the noise
#   BENCH_ZONES=100   zones/services for 2-4
#   BENCH_IDLE=10     idle window in seconds for 4
#   BENCH_OUT=FILE    also write the report there (default
#                     target/bench/report.md)
#   ZONIT=PATH        binary to measure (default: cargo build --release)
#
# Benchmarks are noisy on shared machines: this script only measures and
# reports; nothing here is a pass/fail test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bench-lib.sh

RUNS=${BENCH_RUNS:-300}
ROUNDS=${BENCH_ROUNDS:-3}
N=${BENCH_ZONES:-100}
IDLE=${BENCH_IDLE:-10}
OUT=${BENCH_OUT:-target/bench/report.md}

bench_require_root bench

bench_tools
# Every long-lived process started here goes in pids, stopped by PID on exit.
bench_prepare zonit-bench sh true sleep

# --- helpers ---------------------------------------------------------------
private_kb() { awk '$1 == "Private_Clean:" || $1 == "Private_Dirty:" {s += $2} END {print s}' "/proc/$1/smaps_rollup"; }

# crun refuses a hybrid cgroup host whose cgroup2 has controllers enabled
# ("cgroups in hybrid mode not supported"); hide that cgroup2 from crun
# only, in a private mount namespace, so it runs on cgroup v1 alone.
crun_wrap=()
cg2=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)
if [[ -n $cg2 && $cg2 != /sys/fs/cgroup && -n $(cat "$cg2/cgroup.subtree_control" 2>/dev/null) ]]; then
    crun_wrap=(unshare --mount --propagation private -- sh -c 'umount -l "$0" && exec "$@"' "$cg2")
fi

bench_crun_bundle
bundle=$dir/bundle

# s6: a scan directory; service `t` is down until told, and runs
# busybox true directly (the script's interpreter is `true`). Each
# measurement waits for `D` (down and finished), not `d`: an `-o` sent
# while s6-supervise is still finishing the previous run can be lost, and
# the next measurement would wait forever.
scan=$dir/s6/scan
mkdir -p "$scan/t"
printf '#!%s\n' "$root/bin/true" > "$scan/t/run"
chmod +x "$scan/t/run"
touch "$scan/t/down"
for i in $(seq "$N"); do
    mkdir -p "$scan/s$i"
    printf '#!/bin/sh\nexec %s 1000\n' "$root/bin/sleep" > "$scan/s$i/run"
    chmod +x "$scan/s$i/run"
    touch "$scan/s$i/down"
done
s6-svscan "$scan" >/dev/null 2>&1 &
svscan=$!
pids+=("$svscan")
for _ in $(seq 200); do [[ -p $scan/t/supervise/control ]] && break; sleep 0.01; done

# zonit configs
bench_one_config
one=$dir/one.toml

many() { # many FILE LOG_LEVEL ROOT_OR_TEMPLATE_KEY
    {
        printf '[host]\ncontrol_socket = "%s.sock"\nlog_level = "%s"\nshutdown_timeout = "20s"\n' "$1" "$2"
        for i in $(seq "$N"); do
            printf '\n[zone.z%d]\ncommand = ["/bin/sleep", "1000"]\nrestart = "never"\n' "$i"
            if [[ $3 == root ]]; then
                printf 'root = "%s"\n' "$root"
            else
                printf 'root = "%s/zones/z%d"\ntemplate = "%s"\n' "$dir" "$i" "$root"
            fi
        done
    } > "$1"
}
many "$dir/many.toml" warn root
many "$dir/overlay.toml" warn template

report=()

echo "bench: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg) at start; $RUNS runs x $ROUNDS rounds" >&2

# --- 1. latency of one start -----------------------------------------------
declare -A lat
for r in $(seq "$ROUNDS"); do
    echo "bench: latency round $r/$ROUNDS" >&2
    hyperfine -N --style none --warmup 20 --runs "$RUNS" --export-csv "$dir/lat$r.csv" \
        -n zonit "$ZONIT run --config $one" \
        -n unshare "unshare --pid --fork --mount --uts --ipc --net --root $root /bin/true" \
        -n bwrap "bwrap --unshare-all --ro-bind $root / --proc /proc --dev /dev /bin/true" \
        -n s6 "s6-ftrig-listen1 $scan/t/event D s6-svc -o $scan/t" >/dev/null
    "${crun_wrap[@]}" hyperfine -N --style none --warmup 20 --runs "$RUNS" \
        --export-csv "$dir/crun$r.csv" \
        -n crun "crun run -b $bundle zonit-bench-$$" >/dev/null
    for f in "$dir/lat$r.csv" "$dir/crun$r.csv"; do
        # command,mean,stddev,median,user,system,min,max
        while IFS=, read -r name _ _ med _; do
            lat[$name]+="$med "
        done < <(tail -n +2 "$f")
    done
    # zonit's own timings of the zone start (debug log, spawn origin).
    for _ in $(seq "$RUNS"); do "$ZONIT" run --config "$dir/one-debug.toml" 2>&1; done > "$dir/debug$r.log"
    lat[zonit-ready]+="$(awk '/command running/ {print $6 / 1e6}' "$dir/debug$r.log" | median) "
    lat[zonit-reaped]+="$(awk '/reaped/ {print $5 / 1e6}' "$dir/debug$r.log" | median) "
done
row() { # name label what
    local v=${lat[$1]}
    say "| $2 | $(fmt_ms "$(tr ' ' '\n' <<< "$v" | median)") | $(tr ' ' '\n' <<< "$v" | grep . | while read -r x; do fmt_ms "$x"; echo; done | minmax) | $3 |"
}
say "### 1. One start: median latency to /bin/true having exited (ms)"
say ""
say "| what | median | round medians | includes |"
say "|---|---|---|---|"
row zonit "zonit run (1 zone, exit_with)" "agent start, config, cgroup setup, zone start, /bin/true, reap, agent exit"
row zonit-reaped "zonit zone start share" "agent's spawn decision to the zone init reaped (zonit debug log)"
row zonit-ready "zonit to ready" "spawn decision to the init's \`ready\` (command executed)"
row unshare "unshare --root" "pid,mnt,uts,ipc,net namespaces + chroot, no mounts"
row bwrap "bwrap --unshare-all" "all namespaces, ro bind root, /proc, /dev, lo up"
row crun "crun run" "OCI runtime: namespaces, mounts, cgroup v1, /bin/true"
row s6 "s6-svc -o (no namespaces)" "s6-supervise forks+execs /bin/true; its \`D\` (down, finished) event seen"
say ""

# --- 2. N zones at once ------------------------------------------------------
# zonit: from `zonit run` until `zonit ctl status --json` shows N running.
ctl_running() { "$ZONIT" ctl --socket "$1" status --json 2>/dev/null | grep -o '"state":"running"' | wc -l; }
start_many() { # start_many CONFIG -> sets zpid, t_all (seconds)
    local t0 t1
    rm -rf "$dir/zones" "$dir"/.z*.overlay 2>/dev/null || true
    t0=$(now)
    "$ZONIT" run --config "$1" 2>>"$dir/many.log" &
    zpid=$!
    pids+=("$zpid")
    until (($(ctl_running "$1.sock") >= N)); do
        kill -0 "$zpid" 2>/dev/null || { echo "bench: zonit exited early" >&2; tail "$dir/many.log" >&2; exit 1; }
        sleep 0.001
    done
    t1=$(now)
    t_all=$(elapsed "$t0" "$t1")
}
stop_many() {
    kill -TERM "$zpid"
    wait "$zpid" || true
}
declare -A conc
for r in $(seq "$ROUNDS"); do
    echo "bench: $N at once, round $r/$ROUNDS" >&2
    start_many "$dir/overlay.toml"
    stop_many
    conc[zonit-overlay]+="$t_all "
    start_many "$dir/many.toml"
    conc[zonit]+="$t_all "
    if ((r < ROUNDS)); then stop_many; fi # the last one stays up for 3 and 4
done
# Peers: N concurrent starts of /bin/true, all waited for.
for p in unshare bwrap crun; do
    case $p in
        unshare) cmd="unshare --pid --fork --mount --uts --ipc --net --root $root /bin/true" ;;
        bwrap) cmd="bwrap --unshare-all --ro-bind $root / --proc /proc --dev /dev /bin/true" ;;
        crun) cmd="crun run -b $bundle zonit-bench-$$-{}" ;;
    esac
    printf 'seq %d | xargs -P %d -I{} %s\n' "$N" "$N" "$cmd" > "$dir/par-$p.sh"
done
for r in $(seq "$ROUNDS"); do
    hyperfine -N --style none --warmup 1 --runs 10 --export-csv "$dir/par$r.csv" \
        -n unshare "bash $dir/par-unshare.sh" -n bwrap "bash $dir/par-bwrap.sh" >/dev/null
    "${crun_wrap[@]}" hyperfine -N --style none --warmup 1 --runs 10 \
        --export-csv "$dir/parcrun$r.csv" -n crun "bash $dir/par-crun.sh" >/dev/null
    for f in "$dir/par$r.csv" "$dir/parcrun$r.csv"; do
        while IFS=, read -r name _ _ med _; do conc[$name]+="$med "; done < <(tail -n +2 "$f")
    done
done
crow() {
    local v=${conc[$1]} m
    m=$(tr ' ' '\n' <<< "$v" | median)
    say "| $2 | $(fmt_ms "$m") | $(tr ' ' '\n' <<< "$v" | grep . | while read -r x; do fmt_ms "$x"; echo; done | minmax) | $(awk -v n="$N" -v s="$m" 'BEGIN {printf "%.0f", n / s}') | $3 |"
}
say "### 2. $N started at once"
say ""
say "| what | time (ms, median) | round values | starts/s | measured |"
say "|---|---|---|---|---|"
crow zonit "zonit, shared root" "\`zonit run\` until \`ctl status --json\` shows $N running (sleep 1000)"
crow zonit-overlay "zonit, overlay template per zone" "same, each zone on its own overlayfs"
crow unshare "unshare --root" "\`seq $N | xargs -P $N\`, /bin/true, all exited"
crow bwrap "bwrap --unshare-all" "same"
crow crun "crun run" "same"
say ""

# --- 3. memory with N running zones -------------------------------------------
inits=$("$ZONIT" ctl --socket "$dir/many.toml.sock" status --json | grep -o '"pid":[0-9]*' | cut -d: -f2)
agent_rss=$(smaps Rss "$zpid")
agent_pss=$(smaps Pss "$zpid")
agent_priv=$(private_kb "$zpid")
init_pss=$(for p in $inits; do smaps Pss "$p"; done)
init_priv=$(for p in $inits; do private_kb "$p"; done)
init_rss=$(for p in $inits; do smaps Rss "$p"; done)

# s6: N services running sleep, one s6-supervise each.
for i in $(seq "$N"); do s6-svc -u "$scan/s$i"; done
for _ in $(seq 500); do
    up=0
    for i in $(seq "$N"); do [[ $(s6-svstat -o up "$scan/s$i" 2>/dev/null) == true ]] && up=$((up + 1)); done
    ((up >= N)) && break
    sleep 0.02
done
sups=$(for i in $(seq "$N"); do pgrep -P "$svscan" -f "s6-supervise s$i\$"; done)
sup_pss=$(for p in $sups; do smaps Pss "$p"; done)
sup_priv=$(for p in $sups; do private_kb "$p"; done)
svscan_pss=$(smaps Pss "$svscan")

say "### 3. Memory with $N running (kB, from /proc/PID/smaps_rollup)"
say ""
say "| what | RSS | PSS | private (USS) |"
say "|---|---|---|---|"
say "| zonit agent | $agent_rss | $agent_pss | $agent_priv |"
say "| zonit zone init (reaper), median of $N | $(median <<< "$init_rss") | $(median <<< "$init_pss") | $(median <<< "$init_priv") |"
say "| zonit agent + $N inits, per zone | | $(awk -v a="$agent_pss" -v s="$(sum <<< "$init_pss")" -v n="$N" 'BEGIN {printf "%.0f", (a + s) / n}') | |"
say "| s6-supervise, median of $N | | $(median <<< "$sup_pss") | $(median <<< "$sup_priv") |"
say "| s6-svscan + $N s6-supervise, per service | | $(awk -v a="$svscan_pss" -v s="$(sum <<< "$sup_pss")" -v n="$N" 'BEGIN {printf "%.0f", (a + s) / n}') | |"
say ""

# --- 4. idle wake-ups -------------------------------------------------------------
a0=$(ctxt "$zpid")
i0=$(for p in $inits; do ctxt "$p"; done | sum)
s0=$(for p in $svscan $sups; do ctxt "$p"; done | sum)
sleep "$IDLE"
a1=$(ctxt "$zpid")
i1=$(for p in $inits; do ctxt "$p"; done | sum)
s1=$(for p in $svscan $sups; do ctxt "$p"; done | sum)
say "### 4. Context switches over ${IDLE} s idle with $N running"
say ""
say "| what | voluntary + nonvoluntary |"
say "|---|---|"
say "| zonit agent | $((a1 - a0)) |"
say "| zonit's $N zone inits, total | $((i1 - i0)) |"
say "| s6-svscan + $N s6-supervise, total | $((s1 - s0)) |"
say ""

# --- teardown -------------------------------------------------------------------
stop_many
for i in $(seq "$N"); do s6-svc -dx "$scan/s$i" 2>/dev/null || true; done

say "Host: $(nproc) CPUs, $(uname -r), load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
say "Tools: $(hyperfine --version), $(unshare --version | head -1), $(bwrap --version), $(crun --version | head -1), s6 $(dpkg-query -W -f='${Version}' s6 2>/dev/null)."
((${#crun_wrap[@]})) && say "crun ran with the host's cgroup2 ($cg2) hidden, on cgroup v1 alone (crun refuses a hybrid host whose cgroup2 has controllers)."

mkdir -p "$(dirname "$OUT")"
printf '%s\n' "${report[@]}" | tee "$OUT"
