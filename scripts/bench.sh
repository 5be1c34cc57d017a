#!/usr/bin/env bash
# The zone benchmarks of BENCHMARKS.md, zonit side by side with its peers
# (util-linux unshare, bubblewrap, crun, s6) on one busybox root:
#
#   1. latency of one start: "start" to a zone running /bin/true having exited
#   2. 100 zones started at once: time until all run, starts per second,
#      beside the floor (scripts/zone-floor.c: clone, pivot_root, /proc, exec)
#   3. memory with 100 running zones: agent RSS/PSS, PSS per zone (its init),
#      and the zone init's PSS at each size in BENCH_MEM_ZONES
#   4. agent context switches over an idle window with 100 zones
#
# Usage: scripts/bench.sh            (as root; prints a markdown report)
# Knobs (environment):
#   BENCH_RUNS=300    hyperfine runs per command per round (latency)
#   BENCH_ROUNDS=3    rounds; every figure is the median over its rounds,
#                     the spread across rounds shows the noise
#   BENCH_ZONES=100   zones/services for 2-4
#   BENCH_IDLE=10     idle window in seconds for 4
#   BENCH_MEM_ZONES="100 1000"  zone counts at which 3 takes the zone
#                     init's PSS (is it flat in the number of zones?)
#   BENCH_OUT=FILE    also write the report there (default
#                     target/bench/report.md)
#   ZONIT=PATH        binary to measure (default: cargo build --release)
#
# Benchmarks are noisy on shared machines: this script only measures and
# reports; nothing here is a pass/fail test. A peer that cannot run here is
# reported as not measured, with the reason, and the rest goes on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bench-lib.sh

RUNS=${BENCH_RUNS:-300}
ROUNDS=${BENCH_ROUNDS:-3}
N=${BENCH_ZONES:-100}
IDLE=${BENCH_IDLE:-10}
MEM_ZONES=${BENCH_MEM_ZONES:-"$N 1000"}
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
# crun refuses it even with no controller enabled there (it looks at the
# hierarchy's available controllers), so any cgroup2 beside a cgroup v1
# tree counts.
crun_wrap=()
cg2=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)
if [[ -n $cg2 && $cg2 != /sys/fs/cgroup ]]; then
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

bench_many_config "$dir/many.toml" info root
bench_many_config "$dir/overlay.toml" info template

report=()

# The floor for N zones at once: a static C program that only clones,
# pivot_roots, mounts /proc and execs.
floor=$dir/zone-floor
gcc -O2 -static -o "$floor" scripts/zone-floor.c

# Each peer is tried once before the rounds; one that fails is reported as
# not measured, with its first error line, instead of ending the run.
declare -A peer_cmd skip
peer_cmd[unshare]="unshare --pid --fork --mount --uts --ipc --net --root $root /bin/true"
peer_cmd[bwrap]="bwrap --unshare-all --ro-bind $root / --proc /proc --dev /dev /bin/true"
peer_cmd[s6]="s6-ftrig-listen1 $scan/t/event D s6-svc -o $scan/t"
peer_cmd[crun]="crun run -b $bundle zonit-bench-$$"
try_peer() { # try_peer NAME [WRAPPER...]: sets skip[NAME] if it fails
    local name=$1 err
    shift
    # shellcheck disable=SC2086 # the command is a word list on purpose
    if ! err=$(timeout 20 "$@" ${peer_cmd[$name]} 2>&1 >/dev/null); then
        skip[$name]="not measured: \`${peer_cmd[$name]}\` failed here ($(head -1 <<< "${err:-exit status non-zero, no message}"))"
        echo "bench: $name ${skip[$name]}" >&2
    fi
}
try_peer unshare
try_peer bwrap
try_peer s6
try_peer crun "${crun_wrap[@]}"
# hyperfine_peer NAME CSV [WRAPPER...]: one peer's latency runs, unless
# skipped; a failure mid-run marks it not measured.
hyperfine_peer() {
    local name=$1 csv=$2
    shift 2
    [[ -n ${skip[$name]:-} ]] && return 0
    if ! "$@" hyperfine -N --style none --warmup 20 --runs "$RUNS" --export-csv "$csv" \
        -n "$name" "${peer_cmd[$name]}" >/dev/null 2>"$dir/$name.err"; then
        skip[$name]="not measured: failed during the runs ($(grep -m1 . "$dir/$name.err" || echo no message))"
        rm -f "$csv"
    fi
}

echo "bench: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg) at start; $RUNS runs x $ROUNDS rounds" >&2

# --- 1. latency of one start -----------------------------------------------
declare -A lat
for r in $(seq "$ROUNDS"); do
    echo "bench: latency round $r/$ROUNDS" >&2
    hyperfine -N --style none --warmup 20 --runs "$RUNS" --export-csv "$dir/lat$r.csv" \
        -n zonit "$ZONIT run --config $one" >/dev/null
    for p in unshare bwrap s6; do hyperfine_peer "$p" "$dir/$p$r.csv"; done
    hyperfine_peer crun "$dir/crun$r.csv" "${crun_wrap[@]}"
    for f in "$dir/lat$r.csv" "$dir"/{unshare,bwrap,s6,crun}"$r.csv"; do
        [[ -f $f ]] || continue
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
    if [[ -n ${skip[$1]:-} ]]; then
        say "| $2 | - | - | ${skip[$1]} |"
        return
    fi
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
# zonit: from `zonit run` until `zonit ctl status --json` shows N running;
# and the agent's own figure, from its decision to start them all until
# the last one's command was executed (its `all N autostart unit(s)
# running after X ms` line), which has no polling in it.
ctl_running() { "$ZONIT" ctl --socket "$1" status --json 2>/dev/null | grep -o '"state":"running"' | wc -l; }
start_many() { # start_many CONFIG -> sets zpid, t_all (seconds), t_agent (seconds)
    local t0 t1
    rm -rf "$dir/zones" "$dir"/.z*.overlay 2>/dev/null || true
    t0=$(now)
    "$ZONIT" run --config "$1" 2>"$dir/start.log" &
    zpid=$!
    pids+=("$zpid")
    until (($(ctl_running "$1.sock") >= N)); do
        kill -0 "$zpid" 2>/dev/null || { echo "bench: zonit exited early" >&2; tail "$dir/start.log" >&2; exit 1; }
        sleep 0.001
    done
    t1=$(now)
    t_all=$(elapsed "$t0" "$t1")
    cat "$dir/start.log" >> "$dir/many.log"
    t_agent=$(awk '/autostart unit\(s\) running after/ {for (i = 1; i < NF; i++) if ($i == "after") print $(i + 1) / 1000}' "$dir/start.log")
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
    # The floor right before zonit, in the same round.
    conc[floor]+="$("$floor" "$N" "$root" /bin/sleep 1000 | awk '{print $5 / 1000}') "
    start_many "$dir/many.toml"
    conc[zonit]+="$t_all "
    conc[zonit-agent]+="$t_agent "
    if ((r < ROUNDS)); then stop_many; fi # the last one stays up for 3 and 4
done
# Peers: N concurrent starts of /bin/true, all waited for.
for p in unshare bwrap crun; do
    cmd=${peer_cmd[$p]}
    [[ $p == crun ]] && cmd="crun run -b $bundle zonit-bench-$$-{}"
    printf 'seq %d | xargs -P %d -I{} %s\n' "$N" "$N" "$cmd" > "$dir/par-$p.sh"
done
for r in $(seq "$ROUNDS"); do
    for p in unshare bwrap crun; do
        [[ -n ${skip[$p]:-} ]] && continue
        wrap=()
        [[ $p == crun ]] && wrap=("${crun_wrap[@]}")
        if "${wrap[@]}" hyperfine -N --style none --warmup 1 --runs 10 \
            --export-csv "$dir/par-$p$r.csv" -n "$p" "bash $dir/par-$p.sh" >/dev/null 2>"$dir/par-$p.err"; then
            while IFS=, read -r name _ _ med _; do conc[$name]+="$med "; done < <(tail -n +2 "$dir/par-$p$r.csv")
        else
            skip[$p]="not measured: $N at once failed ($(grep -m1 . "$dir/par-$p.err" || echo no message))"
        fi
    done
done
crow() {
    if [[ -n ${skip[$1]:-} ]]; then
        say "| $2 | - | - | - | ${skip[$1]} |"
        return
    fi
    local v=${conc[$1]} m
    m=$(tr ' ' '\n' <<< "$v" | median)
    say "| $2 | $(fmt_ms "$m") | $(tr ' ' '\n' <<< "$v" | grep . | while read -r x; do fmt_ms "$x"; echo; done | minmax) | $(awk -v n="$N" -v s="$m" 'BEGIN {printf "%.0f", n / s}') | $3 |"
}
say "### 2. $N started at once"
say ""
say "| what | time (ms, median) | round values | starts/s | measured |"
say "|---|---|---|---|---|"
crow zonit "zonit, shared root" "\`zonit run\` until \`ctl status --json\` shows $N running (sleep 1000)"
crow zonit-agent "zonit, shared root, agent's own figure" "the agent's decision to start them to the last command executed (its log line)"
crow floor "floor (scripts/zone-floor.c)" "clone into pid, mnt, uts, ipc, net namespaces, bind + pivot_root, /proc, exec sleep; first clone to the last exec"
crow zonit-overlay "zonit, overlay template per zone" "same as the first row, each zone on its own overlayfs"
crow unshare "unshare --root" "\`seq $N | xargs -P $N\`, /bin/true, all exited"
crow bwrap "bwrap --unshare-all" "same"
crow crun "crun run" "same"
ratio() { awk -v a="$(tr ' ' '\n' <<< "${conc[$1]}" | median)" -v b="$(tr ' ' '\n' <<< "${conc[$2]}" | median)" 'BEGIN {printf "%.2f", a / b}'; }
say ""
say "zonit's own figure against the floor: $(ratio zonit-agent floor)x (medians; per round: $(paste -d/ <(tr ' ' '\n' <<< "${conc[zonit-agent]}" | grep .) <(tr ' ' '\n' <<< "${conc[floor]}" | grep .) | awk -F/ '{printf "%.2f ", $1 / $2}'))."
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
sups=""
if [[ -z ${skip[s6]:-} ]]; then
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
fi

say "### 3. Memory with $N running (kB, from /proc/PID/smaps_rollup)"
say ""
say "| what | RSS | PSS | private (USS) |"
say "|---|---|---|---|"
say "| zonit agent | $agent_rss | $agent_pss | $agent_priv |"
say "| zonit zone init (reaper), median of $N | $(median <<< "$init_rss") | $(median <<< "$init_pss") | $(median <<< "$init_priv") |"
say "| zonit agent + $N inits, per zone | | $(awk -v a="$agent_pss" -v s="$(sum <<< "$init_pss")" -v n="$N" 'BEGIN {printf "%.0f", (a + s) / n}') | |"
if [[ -n ${skip[s6]:-} ]]; then
    say "| s6-supervise | | ${skip[s6]} | |"
else
    say "| s6-supervise, median of $N | | $(median <<< "$sup_pss") | $(median <<< "$sup_priv") |"
    say "| s6-svscan + $N s6-supervise, per service | | $(awk -v a="$svscan_pss" -v s="$(sum <<< "$sup_pss")" -v n="$N" 'BEGIN {printf "%.0f", (a + s) / n}') | |"
fi
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

# --- 3b. the zone init's memory at several zone counts ----------------------------
say "### 3b. Zone init memory by number of zones (kB, median over the inits)"
say ""
say "| zones | init RSS | init PSS | init private (USS) | agent PSS |"
say "|---|---|---|---|---|"
for m in $MEM_ZONES; do
    echo "bench: memory with $m zones" >&2
    N=$m bench_many_config "$dir/mem$m.toml" warn root
    N=$m start_many "$dir/mem$m.toml"
    sleep 1
    ip=$("$ZONIT" ctl --socket "$dir/mem$m.toml.sock" status --json | grep -o '"pid":[0-9]*' | cut -d: -f2)
    say "| $m | $(for p in $ip; do smaps Rss "$p"; done | median) | $(for p in $ip; do smaps Pss "$p"; done | median) | $(for p in $ip; do private_kb "$p"; done | median) | $(smaps Pss "$zpid") |"
    stop_many
done
say ""

say "Host: $(nproc) CPUs, $(uname -r), load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
say "Tools: $(hyperfine --version), $(unshare --version | head -1), $(bwrap --version), $(crun --version | head -1), s6 $(dpkg-query -W -f='${Version}' s6 2>/dev/null)."
((${#crun_wrap[@]})) && say "crun ran with the host's cgroup2 ($cg2) hidden, on cgroup v1 alone (crun refuses a hybrid host whose cgroup2 has controllers)."

mkdir -p "$(dirname "$OUT")"
printf '%s\n' "${report[@]}" | tee "$OUT"
