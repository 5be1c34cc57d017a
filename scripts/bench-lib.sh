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
