#!/usr/bin/env bash
# The metrics benchmark of BENCHMARKS.md: `GET /metrics` with N running
# zones, scraped S times in a row over a unix socket after one warm-up
# scrape. Reports the body size, scrape time (median, p99, max), the
# agent's CPU per scrape and its VmRSS before and after the scrapes.
#
# Usage: scripts/bench-metrics.sh      (as root; prints a markdown report)
# Knobs (environment):
#   BENCH_ZONES=100    zones
#   BENCH_SCRAPES=200  scrapes measured
#   ZONIT=PATH         binary to measure (default: cargo build --release)
#   BENCH_STRACE=1     also count the agent's syscalls over the scrapes
#                      (strace -c; slows the scrapes, so times are not
#                      comparable then)
#
# Measures only; nothing here is a pass/fail test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${BENCH_ZONES:-100}
S=${BENCH_SCRAPES:-200}

if [[ $(id -u) != 0 ]]; then
    echo "bench-metrics: needs root (namespaces, mounts, cgroups)" >&2
    exit 1
fi
busybox=$(command -v busybox)
if [[ -z ${ZONIT:-} ]]; then
    cargo build --release --quiet
    ZONIT=$PWD/target/x86_64-unknown-linux-gnu/release/zonit
fi

dir=$(mktemp -d /tmp/zonit-bench-metrics.XXXXXX)
pids=() # processes started here, stopped by PID on exit
cleanup() {
    if [[ -n ${zpid:-} ]]; then kill -TERM "$zpid" 2>/dev/null || true; fi
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT

root=$dir/root
mkdir -p "$root"/{bin,proc,sys,dev,tmp,etc}
cp "$busybox" "$root/bin/busybox"
for a in sh sleep; do ln -s busybox "$root/bin/$a"; done

cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) * 1000 / hz}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
agent_of() { cat "/proc/$1/task/$1/children" | awk '{print $1}'; }

{
    echo "[host]"
    echo "control_socket = \"$dir/ctl.sock\""
    echo "metrics = \"unix:$dir/metrics.sock\""
    for i in $(seq "$N"); do
        echo "[zone.z$i]"
        echo "root = \"$root\""
        echo "command = [\"/bin/sleep\", \"1000\"]"
    done
} >"$dir/zonit.toml"

unshare --pid --fork --mount --kill-child "$ZONIT" run --config "$dir/zonit.toml" >"$dir/log" 2>&1 &
pids+=($!)
outer=$!
for _ in $(seq 500); do
    zpid=$(agent_of "$outer" 2>/dev/null || true)
    [[ -n $zpid && -S $dir/ctl.sock ]] && break
    sleep 0.01
done
for _ in $(seq 600); do
    running=$("$ZONIT" ctl --socket "$dir/ctl.sock" status --json | { grep -o '"state":"running"' || true; } | wc -l)
    ((running == N)) && break
    sleep 0.1
done
if ((running != N)); then
    echo "bench-metrics: only $running of $N zones running" >&2
    cat "$dir/log" >&2
    exit 1
fi

scrape='
import socket, sys, time
path, n = sys.argv[1], int(sys.argv[2])
def scrape():
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: zonit\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(262144)
        if not chunk:
            break
        data += chunk
    s.close()
    return data
body = scrape().split(b"\r\n\r\n", 1)[1]
print(len(body))
sys.stdout.flush()
sys.stdin.readline()
for _ in range(n):
    t = time.perf_counter()
    scrape()
    print((time.perf_counter() - t) * 1000)
'
coproc CLIENT { python3 -c "$scrape" "$dir/metrics.sock" "$S"; }
read -r body <&"${CLIENT[0]}"
if [[ ${BENCH_STRACE:-} == 1 ]]; then
    strace -c -f -p "$zpid" -o "$dir/strace" &
    spid=$!
    sleep 1
fi
r0=$(rss_kb "$zpid")
c0=$(cpu_ms "$zpid")
echo go >&"${CLIENT[1]}"
cat <&"${CLIENT[0]}" >"$dir/times"
c1=$(cpu_ms "$zpid")
r1=$(rss_kb "$zpid")
if [[ -n ${spid:-} ]]; then
    kill -INT "$spid"
    wait "$spid" || true
fi

median() { sort -g | awk '{a[NR] = $1} END {printf "%.2f", a[int((NR + 1) / 2)]}'; }
pct() { sort -g | awk -v p="$1" '{a[NR] = $1} END {i = int(NR * p / 100 + 0.5); if (i < 1) i = 1; printf "%.2f", a[i]}'; }
echo "**/metrics with $N running zones, $S scrapes** (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
echo ""
echo "| measurement | figure |"
echo "|---|---|"
echo "| body | $body bytes |"
echo "| scrape time | median $(median <"$dir/times") ms, p99 $(pct 99 <"$dir/times") ms, max $(pct 100 <"$dir/times") ms |"
echo "| agent CPU per scrape | $(awk -v a="$c0" -v b="$c1" -v n="$S" 'BEGIN {printf "%.2f", (b - a) / n}') ms |"
echo "| agent VmRSS before and after | $r0 kB, then $r1 kB |"
if [[ -f $dir/strace ]]; then
    echo ""
    echo '```'
    head -20 "$dir/strace"
    echo '```'
fi
