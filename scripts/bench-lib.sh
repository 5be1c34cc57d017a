# Shell shared by the benchmark scripts (scripts/bench*.sh), sourced from
# the repository's top directory: the root check, the binary measured, a
# scratch directory whose processes are stopped by PID on exit, a busybox
# root, and the statistics over one number a line. Not run on its own.

# bench_require_root NAME: exits unless run as root.
bench_require_root() {
    if [[ $(id -u) != 0 ]]; then
        echo "$1: needs root (namespaces, mounts, cgroups)" >&2
        exit 1
    fi
}

# bench_tools: installs what the benchmarks compare zonit with (hyperfine,
# bubblewrap, crun, s6, busybox-static, util-linux), the one list in
# scripts/setup.sh.
bench_tools() {
    ZONIT_BENCH=1 scripts/setup.sh
}

# bench_prepare PREFIX APPLET...: the binary measured (bench_zonit), a
# scratch directory (bench_scratch PREFIX) and a busybox root in it with
# these applets (bench_root).
bench_prepare() {
    busybox=$(command -v busybox)
    bench_zonit
    bench_scratch "$1"
    shift
    bench_root "$@"
}

# bench_zonit: sets ZONIT to the binary measured, a release build unless
# ZONIT is given.
bench_zonit() {
    if [[ -z ${ZONIT:-} ]]; then
        cargo build --release --quiet
        ZONIT=$PWD/target/x86_64-unknown-linux-gnu/release/zonit
    fi
}

# bench_scratch PREFIX: sets dir to a new directory under /tmp and pids to
# an empty list. On exit, every PID in pids, and the agent in zpid if one
# is set, gets SIGTERM and is waited for; then dir is removed.
bench_scratch() {
    dir=$(mktemp -d "/tmp/$1.XXXXXX")
    pids=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    local p
    if [[ -n ${zpid:-} ]]; then kill -TERM "$zpid" 2>/dev/null || true; fi
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}

# bench_root APPLET...: sets root to $dir/root, a minimal zone root: the
# busybox at $busybox, a link per APPLET, and the mount points.
bench_root() {
    local a
    root=$dir/root
    mkdir -p "$root"/{bin,proc,sys,dev,tmp,etc}
    cp "$busybox" "$root/bin/busybox"
    for a in "$@"; do ln -s busybox "$root/bin/$a"; done
}

# bench_one_config: writes $dir/one.toml, one zone in $root that runs
# /bin/true once and whose end ends the run, and $dir/one-debug.toml, the
# same at log level debug (its start timings).
bench_one_config() {
    cat >"$dir/one.toml" <<EOF
[host]
control_socket = "$dir/one.sock"
exit_with = "one"

[zone.one]
root = "$root"
command = ["/bin/true"]
restart = "never"
EOF
    sed 's/^exit_with.*/&\nlog_level = "debug"/' "$dir/one.toml" >"$dir/one-debug.toml"
}

# bench_many_config FILE LOG_LEVEL root|template: writes FILE, $N zones
# z1..zN running `/bin/sleep 1000` (restart never), all on $root, or each
# with its own root under $dir/zones made from the template $root.
bench_many_config() {
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

# bench_crun_bundle: an OCI bundle at $dir/bundle (`crun spec`) that runs
# /bin/true in $root, without a terminal.
bench_crun_bundle() {
    local bundle=$dir/bundle
    mkdir -p "$bundle"
    (cd "$bundle" && crun spec)
    sed -i -e 's|"terminal": true|"terminal": false|' \
        -e 's|"path": "rootfs"|"path": "'"$root"'"|' \
        -e '/"args": \[/,/\]/c\                "args": ["/bin/true"],' "$bundle/config.json"
    grep -q '"/bin/true"' "$bundle/config.json" || { echo "bench: crun spec edit failed" >&2; exit 1; }
}

# These read one number a line and skip empty lines.
# bench_time_start N LOG BIN CONFIG [UNSHARE_OPTION...]: runs `BIN run
# --config CONFIG` under `unshare --pid --fork --mount` (and these options)
# until its N autostart units run; prints zonit's "all N autostart unit(s)
# running after X ms" line and the agent's CPU time up to then
# (schedstat: ns on a CPU; the zones' own set-up runs in their processes),
# then stops it. Exits with zonit's log on stderr if the line never comes.
bench_time_start() {
    local n=$1 log=$2 bin=$3 config=$4
    shift 4
    : >"$log"
    unshare "$@" --pid --fork --mount --kill-child "$bin" run --config "$config" 2>"$log" &
    local pid=$! agent cpu line
    for _ in $(seq 4000); do grep -q "autostart unit(s) running after" "$log" && break; sleep 0.005; done
    agent=$(cut -d' ' -f1 "/proc/$pid/task/$pid/children")
    cpu=$(awk '{printf "%.1f", $1 / 1e6}' "/proc/$agent/schedstat")
    line=$(grep -o "all $n autostart unit(s) running after [0-9.]* ms" "$log") || { cat "$log" >&2; exit 1; }
    echo "$line; agent CPU $cpu ms"
    kill -TERM "$agent"
    wait "$pid" || true
}

# bench_monitor_harness: prints the path of the monitor benchmark harness
# (benches/monitor.rs, a bench target without libtest), built if needed.
bench_monitor_harness() {
    local harness
    harness=$(cargo bench --bench monitor --no-run 2>&1 |
        sed -n 's/^ *Executable .*(\(.*\))$/\1/p' | tail -n 1)
    [[ -x $harness ]] || { echo "bench: cannot build the monitor harness" >&2; exit 1; }
    echo "$harness"
}

# bench_pvh_payload DIR: builds the PVH test payload (tests/payloads, as
# tests/vmm.rs builds it; QEMU boots PVH ELFs too) as DIR/payload-pvh.
bench_pvh_payload() {
    as --64 --defsym PVH=1 -o "$1/pvh.o" tests/payloads/payload.S
    ld -m elf_x86_64 -nostdlib -static --build-id=none -z noexecstack \
        -T tests/payloads/elf.ld -o "$1/payload-pvh" "$1/pvh.o"
}

median() { grep . | sort -g | awk '{a[NR] = $1} END {if (NR) print a[int((NR + 1) / 2)]}'; }
minmax() { grep . | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%s-%s", lo, hi}'; }
# pct P: the P-th percentile (nearest rank).
pct() { grep . | sort -g | awk -v p="$1" '{a[NR] = $1} END {if (NR) {i = int(NR * p / 100 + 0.5); if (i < 1) i = 1; print a[i]}}'; }

# fmt_ms SECONDS -> milliseconds with two decimals
fmt_ms() { awk -v s="$1" 'BEGIN {printf "%.2f", s * 1000}'; }
now() { echo "$EPOCHREALTIME"; }
# elapsed T0 T1 -> seconds between two `now`s
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.6f", b - a}'; }
# smaps KEY PID -> kB from /proc/PID/smaps_rollup (nothing if PID is gone)
smaps() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$2/smaps_rollup" 2>/dev/null; }
sum() { awk '{s += $1} END {print s + 0}'; }
# ctxt PID -> its context switches, voluntary and not
ctxt() { awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {s += $2} END {print s}' "/proc/$1/status"; }
# say TEXT: appends a line to the report array
say() { report+=("$*"); }
