#!/usr/bin/env bash
# The hardening benchmarks of BENCHMARKS.md ("Hardening"):
#
#   latency  one zone start with full hardening, beside the same start
#            without it, beside crun (and, for scale, the zone-start peers)
#   zones    N overlay zones from one template (default 1000), each running
#            `sleep 1000`: time to all running, disk and memory per zone
#
# Usage: scripts/bench-hardening.sh [latency|zones|all]   (as root; default all)
# Knobs (environment):
#   BENCH_RUNS=200    hyperfine runs per command per round (latency)
#   BENCH_ROUNDS=3    rounds; figures are the median of the round medians,
#                     with the spread of the round medians (the noise)
#   BENCH_ZONES=1000  zones for `zones`
#   BENCH_ZROUNDS=3   rounds of "N zones to all running"
#   BENCH_OUT=FILE    also write the report there (default
#                     target/bench/hardening.md)
#   ZONIT=PATH        binary to measure (default: cargo build --release)
#
# "Unhardened" has no switch in zonit: no environment variable, option or
# feature turns the hardening off. This script builds two more binaries, for
# measurement only, from a scratch copy of the source in which it patches
# out (a) the masked and read-only /proc and /sys paths (the plan's Mask and
# ReadOnly ops), (b) the capability drop and no_new_privs, and (c) the
# seccomp filter (neither compiled nor installed): `unhardened` without all
# three, `nomasks` without (a) only, to split the cost. They live in a
# temporary directory, deleted on exit. The script checks that every
# patch applied, so a source change cannot silently make the two binaries
# equal. The nodev/nosuid mount flags and the fd-based mounts stay: they are
# flags and call shapes, not extra work.
#
# Benchmarks are noisy on shared machines: this script only measures and
# reports; nothing here is a pass/fail test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bench-lib.sh

MODE=${1:-all}
RUNS=${BENCH_RUNS:-200}
ROUNDS=${BENCH_ROUNDS:-3}
N=${BENCH_ZONES:-1000}
ZROUNDS=${BENCH_ZROUNDS:-3}
OUT=${BENCH_OUT:-target/bench/hardening.md}

case $MODE in latency | zones | all) ;; *) echo "usage: $0 [latency|zones|all]" >&2; exit 2 ;; esac
bench_require_root bench

bench_tools
# Long-lived processes started here go in pids, stopped by PID on exit.
bench_prepare zonit-hbench sh true sleep

report=()

echo "bench: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg) at start" >&2

# --- 1. hardened vs unhardened vs crun ----------------------------------------
# build_variant NAME WHAT: a measurement-only binary at $dir/zonit-NAME,
# built from a scratch copy of the tracked source with WHAT patched out:
# `masks` (the plan's Mask and ReadOnly ops) and/or `privs` (capability
# drop, no_new_privs, seccomp compile and install).
build_variant() {
    local name=$1 what=$2 src=$dir/src-$1
    mkdir -p "$src"
    git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$src"
    # Each edit must change exactly the lines it names; checked below.
    local plan=$src/src/zone/mount_plan.rs spawn=$src/src/zone/command.rs sec=$src/src/zone/seccomp.rs n
    if [[ $what == *masks* ]]; then
        sed -i -e 's/^    for path in MASKED {$/    for path in MASKED.into_iter().take(0) {/' \
            -e 's/^    for cpu in &host.cpus {$/    for cpu in host.cpus.iter().take(0) {/' \
            -e 's/^    for path in READ_ONLY {$/    for path in READ_ONLY.into_iter().take(0) {/' "$plan"
        n=$(grep -c 'take(0)' "$plan")
        [[ $n == 3 ]] || { echo "bench: mount_plan.rs patch: $n of 3 applied" >&2; exit 1; }
    fi
    if [[ $what == *privs* ]]; then
        sed -i -e '/^    sys::caps::limit_bounding_and_ambient(&prep.caps, prep.last_cap)?;$/d' \
            -e 's/^        sys::caps::set_capabilities(&prep.caps)?;$/        let _ = \&prep.caps;/' \
            -e '/^    nix::sys::prctl::set_no_new_privs().map_err(io::Error::from)?;$/d' \
            -e 's/^    if let Err(e) = seccomp::install(prep.seccomp) {$/    if let Err(e) = Ok::<(), seccomp::Error>(()) {/' "$spawn"
        sed -i -e 's/PROGRAM.get_or_init(build)/PROGRAM.get_or_init(|| Ok(Vec::new()))/' "$sec"
        ! grep -q 'limit_bounding_and_ambient(&prep.caps\|set_capabilities(&prep.caps)\|set_no_new_privs()\|seccomp::install(prep' "$spawn" ||
            { echo "bench: command.rs patch incomplete" >&2; exit 1; }
        grep -q 'get_or_init(|| Ok(Vec::new()))' "$sec" || { echo "bench: seccomp.rs patch failed" >&2; exit 1; }
    fi
    # Its own target directory under target/: dependencies are built once.
    (cd "$src" && CARGO_TARGET_DIR=$OLDPWD/target/bench-unhardened cargo build --release --quiet 2>/dev/null)
    cp target/bench-unhardened/x86_64-unknown-linux-gnu/release/zonit "$dir/zonit-$name"
    rm -rf "$src"
}

latency() {
    echo "bench: building the measurement-only binaries" >&2
    build_variant unhardened masks,privs
    build_variant nomasks masks
    local U=$dir/zonit-unhardened M=$dir/zonit-nomasks
    local one=$dir/one.toml
    bench_one_config
    # A zone that shows the difference: its CapBnd, Seccomp and NoNewPrivs
    # lines, what /proc/interrupts is (masked: /dev/null, a character device),
    # and how many mounts sit on /proc/sys (read-only: one).
    sed '/^command/d' "$one" > "$dir/check.toml"
    cat >> "$dir/check.toml" <<'EOF'
command = ["/bin/busybox", "sh", "-c", 'busybox grep -E "^(CapBnd|Seccomp|NoNewPrivs):" /proc/self/status; busybox stat -c %F /proc/interrupts; busybox grep -c " /proc/sys " /proc/self/mountinfo']
EOF
    say "### Hardened vs unhardened: what the zone sees"
    say ""
    say "| binary | CapBnd | Seccomp | NoNewPrivs | /proc/interrupts is | mounts on /proc/sys |"
    say "|---|---|---|---|---|---|"
    for b in hardened:"$ZONIT" nomasks:"$M" unhardened:"$U"; do
        local out
        out=$("${b#*:}" run --config "$dir/check.toml" 2>&1 | sed -n 's/^zonit\[one\]: //p' | tr -s ' \t' ' ' || true)
        say "| ${b%%:*} | $(awk '/^CapBnd/ {print $2}' <<< "$out") | $(awk '/^Seccomp:/ {print $2}' <<< "$out") | $(awk '/^NoNewPrivs/ {print $2}' <<< "$out") | $(sed -n 4p <<< "$out") | $(sed -n 5p <<< "$out") |"
    done
    say ""

    local crun_wrap=() cg2
    cg2=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)
    if [[ -n $cg2 && $cg2 != /sys/fs/cgroup && -n $(cat "$cg2/cgroup.subtree_control" 2>/dev/null) ]]; then
        crun_wrap=(unshare --mount --propagation private -- sh -c 'umount -l "$0" && exec "$@"' "$cg2")
    fi
    bench_crun_bundle
    local bundle=$dir/bundle

    declare -A lat
    for r in $(seq "$ROUNDS"); do
        echo "bench: latency round $r/$ROUNDS" >&2
        # Absolute figures. hyperfine runs one command's runs after the
        # other's, so load drift between them would pass for a difference:
        # the A/B of the binaries is the alternating loop below.
        hyperfine -N --style none --warmup 20 --runs "$RUNS" --export-csv "$dir/lat$r.csv" \
            -n hardened "$ZONIT run --config $one" \
            -n unshare "unshare --pid --fork --mount --uts --ipc --net --root $root /bin/true" >/dev/null
        "${crun_wrap[@]}" hyperfine -N --style none --warmup 20 --runs "$RUNS" \
            --export-csv "$dir/crun$r.csv" -n crun "crun run -b $bundle zonit-hbench-$$" >/dev/null
        for f in "$dir/lat$r.csv" "$dir/crun$r.csv"; do
            while IFS=, read -r name _ _ med _; do lat[$name]+="$med "; done < <(tail -n +2 "$f")
        done
        # The zone start alone, from the agent's debug log (spawn decision
        # to `ready` and to the init reaped), alternating the binaries.
        : > "$dir/dh$r.log"
        : > "$dir/du$r.log"
        : > "$dir/dm$r.log"
        # The whole run is timed too (wall time around the command, bash's
        # fork and exec included, the same for the three).
        local k b t0 t1
        for _ in $(seq "$RUNS"); do
            for k in h m u; do
                case $k in h) b=$ZONIT ;; m) b=$M ;; u) b=$U ;; esac
                t0=$EPOCHREALTIME
                "$b" run --config "$dir/one-debug.toml" 2>> "$dir/d$k$r.log"
                t1=$EPOCHREALTIME
                elapsed "$t0" "$t1" >> "$dir/w$k$r"
                echo >> "$dir/w$k$r"
            done
        done
        for k in h u m; do
            lat[run-$k]+="$(median < "$dir/w$k$r") "
            lat[ready-$k]+="$(awk '/command running/ {print $6 / 1e6}' "$dir/d$k$r.log" | median) "
            lat[reaped-$k]+="$(awk '/reaped/ {print $5 / 1e6}' "$dir/d$k$r.log" | median) "
        done
    done
    med() { tr ' ' '\n' <<< "${lat[$1]}" | median; }
    spread() { tr ' ' '\n' <<< "${lat[$1]}" | grep . | while read -r x; do fmt_ms "$x"; echo; done | minmax; }
    row() { say "| $2 | $(fmt_ms "$(med "$1")") | $(spread "$1") | $3 |"; }
    diffrow() { # name label a b
        say "| $2 | $(awk -v a="$(med "$3")" -v b="$(med "$4")" 'BEGIN {printf "%.2f", (a - b) * 1000}') | | $5 |"
    }
    say "### One start: median latency (ms), $RUNS runs x $ROUNDS rounds"
    say ""
    say "| what | median | round medians | measured |"
    say "|---|---|---|---|"
    row hardened "zonit run, full hardening (hyperfine)" "\`zonit run\`, one zone, /bin/true, to agent exit"
    row run-h "zonit run, hardened, alternating" "wall time around \`zonit run\` (debug log on), binaries alternating run by run"
    row run-m "zonit run, no masks/read-only, alternating" "same"
    row run-u "zonit run, unhardened, alternating" "same"
    diffrow d "**hardening cost, whole run**" run-h run-u "difference of the medians"
    row reaped-h "zone start to reaped, hardened" "agent's spawn decision to the init reaped (debug log)"
    row reaped-m "zone start to reaped, no masks/read-only" "same"
    row reaped-u "zone start to reaped, unhardened" "same"
    diffrow d2 "**hardening cost, zone start**" reaped-h reaped-u "difference of the medians"
    diffrow d3 "of which masks and read-only paths" reaped-h reaped-m "difference of the medians"
    diffrow d4 "of which capabilities, no_new_privs, seccomp" reaped-m reaped-u "difference of the medians"
    row ready-h "zone start to \`ready\`, hardened" "spawn decision to the command executed"
    row ready-m "zone start to \`ready\`, no masks/read-only" "same"
    row ready-u "zone start to \`ready\`, unhardened" "same"
    row crun "crun run" "OCI runtime, /bin/true, to exit"
    row unshare "unshare --root (no mounts)" "for scale"
    say ""
    ((${#crun_wrap[@]})) && say "crun ran with the host's cgroup2 ($cg2) hidden, on cgroup v1 alone." && say ""

    # Syscalls each hardening step makes in the command's process (counted,
    # not timed: tracing costs ~10-20 us per call on this VM, far more than
    # the calls themselves).
    perf trace -f -o "$dir/trace.txt" -- "$ZONIT" run --config "$one" 2>/dev/null >/dev/null || true
    if [[ -s $dir/trace.txt ]]; then
        local caps masks drops sec
        caps=$(grep -c 'CAPBSET_DROP\|capset(\|CAP_AMBIENT\|NO_NEW_PRIVS' "$dir/trace.txt" || true)
        sec=$(grep -c ' seccomp(\|SET_SECCOMP' "$dir/trace.txt" || true)
        masks=$(grep -c 'fsconfig\|fsmount\|fsopen\|open_tree\|move_mount\|mount_setattr\| mount(' "$dir/trace.txt" || true)
        say "Syscalls in one traced hardened start (\`perf trace -f\`): capability drop and no_new_privs $caps, seccomp $sec, all new-API and classic mount calls $masks."
        drops=$(awk '/CAPBSET_DROP/ {n++} END {print n + 0}' "$dir/trace.txt")
        say "(of which CAPBSET_DROP: $drops)"
        say ""
    fi
}

# --- 2. N overlay zones from one template ---------------------------------------
zones() {
    local cfg=$dir/overlay.toml zd=$dir/zones
    {
        printf '[host]\ncontrol_socket = "%s.sock"\nlog_level = "warn"\nshutdown_timeout = "60s"\n' "$cfg"
        for i in $(seq "$N"); do
            printf '\n[zone.z%d]\ncommand = ["/bin/sleep", "1000"]\nrestart = "never"\n' "$i"
            printf 'root = "%s/z%d"\ntemplate = "%s"\ntemplate_mode = "overlay"\n' "$zd" "$i" "$root"
        done
    } > "$cfg"
    # Limits: two processes and ~4 agent fds per zone, ~30 mounts per zone
    # (each in its own mount namespace: fs.mount-max is per namespace).
    local nofile=$((N * 8 + 1024)) was
    was=$(ulimit -n)
    ((nofile > was)) || nofile=$was
    say "### $N overlay zones from one template"
    say ""
    say "Limits: \`ulimit -n\` raised to $nofile for the agent (was $was); kernel.pid_max $(cat /proc/sys/kernel/pid_max), kernel.threads-max $(cat /proc/sys/kernel/threads-max), fs.mount-max $(cat /proc/sys/fs/mount-max) (per mount namespace), fs.file-max $(cat /proc/sys/fs/file-max), $(awk '/MemAvailable/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) available."
    say ""
    ctl_running() { "$ZONIT" ctl --socket "$cfg.sock" status --json 2>/dev/null | grep -o '"state":"running"' | wc -l; }
    local t=() zpid t0 t1 n_up
    for r in $(seq "$ZROUNDS"); do
        echo "bench: $N overlay zones, round $r/$ZROUNDS" >&2
        rm -rf "$zd"
        mkdir -p "$zd"
        t0=$(now)
        (ulimit -n "$nofile" && exec "$ZONIT" run --config "$cfg") 2>> "$dir/zones.log" &
        zpid=$!
        pids+=("$zpid")
        n_up=0
        until ((n_up >= N)); do
            kill -0 "$zpid" 2>/dev/null || { echo "bench: zonit exited early" >&2; tail "$dir/zones.log" >&2; exit 1; }
            sleep 0.05
            n_up=$(ctl_running)
        done
        t1=$(now)
        t+=("$(elapsed "$t0" "$t1")")
        ((r < ZROUNDS)) || break
        kill -TERM "$zpid"
        wait "$zpid" || true
    done
    "$ZONIT" ctl --socket "$cfg.sock" status --json > "$dir/status.json"
    local inits sleeps
    inits=$(grep -o '"pid":[0-9]*' "$dir/status.json" | cut -d: -f2)
    sleeps=$(for p in $inits; do cat "/proc/$p/task/$p/children" 2>/dev/null; done | tr ' ' '\n' | grep .)
    local a_rss a_pss i_pss s_pss i_rss s_rss ni ns tot
    a_rss=$(smaps Rss "$zpid")
    a_pss=$(smaps Pss "$zpid")
    i_pss=$(for p in $inits; do smaps Pss "$p"; done)
    i_rss=$(for p in $inits; do smaps Rss "$p"; done)
    s_pss=$(for p in $sleeps; do smaps Pss "$p"; done)
    s_rss=$(for p in $sleeps; do smaps Rss "$p"; done)
    ni=$(grep -c . <<< "$i_pss")
    ns=$(grep -c . <<< "$s_pss")
    tot=$(( a_pss + $(sum <<< "$i_pss") + $(sum <<< "$s_pss") ))
    # Kernel-side memory the zones cost: MemAvailable and Slab before/after
    # are too noisy with others on the host; mounts are counted instead.
    local mounts
    mounts=$(for p in $(head -3 <<< "$sleeps"); do wc -l < "/proc/$p/mountinfo"; done | median)
    # Disk: the state dirs (upper and work) and the (host-side) root dirs.
    local up_kb root_kb up_med
    up_kb=$(du -sk "$zd"/.z*.overlay | awk '{print $1}')
    root_kb=$(du -sk "$zd"/z* | awk '{print $1}')
    up_med=$(median <<< "$up_kb")
    say "| what | figure |"
    say "|---|---|"
    say "| time to all $N running (\`ctl status --json\`, polled every 50 ms) | $(fmt_ms "$(printf '%s\n' "${t[@]}" | median)") ms median, rounds $(printf '%s\n' "${t[@]}" | while read -r x; do fmt_ms "$x"; echo; done | minmax) ms, $(awk -v n="$N" -v s="$(printf '%s\n' "${t[@]}" | median)" 'BEGIN {printf "%.0f", n / s}') starts/s |"
    say "| zone inits / sleeps found | $ni / $ns |"
    say "| agent RSS / PSS | $a_rss / $a_pss KiB |"
    say "| agent open fds | $(find "/proc/$zpid/fd" -mindepth 1 | wc -l) |"
    say "| zone init PSS, median (RSS median) | $(median <<< "$i_pss") KiB ($(median <<< "$i_rss") KiB) |"
    say "| \`sleep\` PSS, median (RSS median) | $(median <<< "$s_pss") KiB ($(median <<< "$s_rss") KiB) |"
    say "| total PSS (agent + inits + sleeps) / $N | $(awk -v t="$tot" -v n="$N" 'BEGIN {printf "%.0f", t / n}') KiB (total $(awk -v t="$tot" 'BEGIN {printf "%.1f", t / 1024}') MiB) |"
    say "| (agent + inits) PSS / $N, zonit's own share | $(awk -v a="$a_pss" -v s="$(sum <<< "$i_pss")" -v n="$N" 'BEGIN {printf "%.0f", (a + s) / n}') KiB |"
    say "| disk: \`du -sk\` of each \`.zN.overlay\` (upper + work), median / total | $up_med KiB / $(sum <<< "$up_kb") KiB ($(find "$zd/.z1.overlay" -mindepth 1 | wc -l) entries in z1's: $(cd "$zd/.z1.overlay" && find . -mindepth 1 | tr '\n' ' ')) |"
    say "| disk: \`du -sk\` of each zone root dir on the host, median / total | $(median <<< "$root_kb") KiB / $(sum <<< "$root_kb") KiB |"
    say "| mounts in a zone's namespace (\`/proc/PID/mountinfo\` lines) | $mounts |"
    say ""
    echo "bench: stopping $N zones" >&2
    t0=$(now)
    kill -TERM "$zpid"
    wait "$zpid" || true
    t1=$(now)
    say "Stopping all $N (SIGTERM to the agent until it exited): $(fmt_ms "$(elapsed "$t0" "$t1")") ms. Leftover zone processes after stop: $(for p in $inits; do [[ -d /proc/$p ]] && echo "$p"; done | wc -l)."
    say ""
}

case $MODE in
    latency) latency ;;
    zones) zones ;;
    all) latency; zones ;;
esac

say "Host: $(nproc) CPUs, $(uname -r), load average at the end: $(cut -d' ' -f1-3 /proc/loadavg). Tools: $(hyperfine --version), $(crun --version | head -1)."
mkdir -p "$(dirname "$OUT")"
printf '%s\n' "${report[@]}" | tee "$OUT"
