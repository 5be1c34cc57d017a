#!/usr/bin/env bash
# The monitor benchmarks of BENCHMARKS.md ("Monitor"): `zonit vmm` side by
# side with QEMU (microvm, and pc) booting the same PVH payload
# (tests/payloads/payload.S) on /dev/kvm:
#
#   1. spawn to the first guest console byte (the payload's first `out` to
#      COM1), and spawn to exit for the poweroff payload (also hyperfine);
#   2. monitor memory with a spinning guest, guest RAM left out;
#   3. port-I/O exits per second (payload action `pio=N`), and the CPU
#      time of such a run in the monitor's user space and in the kernel.
#
# Usage: scripts/bench-vmm.sh        (as root; prints a markdown report)
# Knobs (environment):
#   BENCH_RUNS=50       runs per monitor for 1 (harness and hyperfine)
#   BENCH_PC_RUNS=10    the same for QEMU pc, whose start is much slower
#   BENCH_RSS_RUNS=5    samples per monitor for 2
#   BENCH_PIO=100000    port writes per run for 3
#   BENCH_PIO_RUNS=7    runs per monitor for 3
#   BENCH_MEM=64M       guest memory of every run, in MiB with the M
#   BENCH_OUT=FILE      also write the report there (default
#                       target/bench-vmm/report.md)
#
# The measuring is done by benches/monitor.rs, one harness for every
# monitor. Numbers are noisy on a shared machine: each figure is a median
# with its spread; nothing here passes or fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bench-lib.sh

RUNS=${BENCH_RUNS:-50}
PC_RUNS=${BENCH_PC_RUNS:-10}
RSS_RUNS=${BENCH_RSS_RUNS:-5}
PIO=${BENCH_PIO:-100000}
PIO_RUNS=${BENCH_PIO_RUNS:-7}
MEM=${BENCH_MEM:-64M}
OUT=${BENCH_OUT:-target/bench-vmm/report.md}
WORK=target/bench-vmm

if [[ $(id -u) != 0 ]]; then
    echo "bench-vmm: needs root (the monitor confines itself with namespaces)" >&2
    exit 1
fi
if [[ ! -w /dev/kvm ]]; then
    echo "bench-vmm: needs /dev/kvm" >&2
    exit 1
fi

# --- tools -----------------------------------------------------------------
ZONIT_BENCH=1 scripts/setup.sh

# --- builds ----------------------------------------------------------------
mkdir -p "$WORK"
cargo build --release --bin zonit >&2
ZONIT=$PWD/target/x86_64-unknown-linux-gnu/release/zonit
HARNESS=$(bench_monitor_harness)
bench_pvh_payload "$WORK"
PAYLOAD=$PWD/$WORK/payload-pvh

# --- the monitors ------------------------------------------------------------
# `-cpu host` minus the ARCH_CAPABILITIES MSR, which QEMU 7.2 cannot set on
# nested KVM; it is also the CPU zonit gives (KVM's supported CPUID).
QEMU_COMMON=(-accel kvm -cpu host,-arch-capabilities -m "$MEM" -smp 1
    -nodefaults -no-user-config -display none -serial stdio -no-reboot
    -kernel "$PAYLOAD")
# Each prints the argv of a monitor whose guest obeys the word $1.
zonit_cmd() { echo "$ZONIT vmm --kernel $PAYLOAD --memory $MEM --cmdline $1"; }
microvm_cmd() {
    echo "qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off ${QEMU_COMMON[*]} -append $1"
}
pc_cmd() { echo "qemu-system-x86_64 -M pc ${QEMU_COMMON[*]} -append $1"; }
MONITORS=(zonit microvm pc)
declare -A LABEL=([zonit]="zonit vmm" [microvm]="QEMU microvm" [pc]="QEMU pc")
runs_of() { if [[ $1 == pc ]]; then echo "$PC_RUNS"; else echo "$RUNS"; fi; }

# "median (p25-p75, min-max)" of a harness summary line.
median_of() {
    sed -n "s/^$1: median \([0-9.]*\) [^ ]* (p25 \([0-9.]*\), p75 \([0-9.]*\), min \([0-9.]*\), max \([0-9.]*\), n=\([0-9]*\))$/\1 (\2-\3; \4-\5; n=\6)/p"
}

report=$WORK/report.new
{
    echo "host: $(uname -r), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start;"
    echo "$(qemu-system-x86_64 --version | head -n 1)"
    echo "zonit: $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty'), guest memory $MEM"
    echo
} >"$report"

declare -A FIRST EXIT HYPER RSS PSS PRIV ANON PIOMS PIORATE PIOUSER PIOSYS FIRSTLINE
for m in "${MONITORS[@]}"; do
    echo "bench-vmm: $m" >&2
    # shellcheck disable=SC2046  # the command lines are word lists
    out=$("$HARNESS" first-byte --runs "$(runs_of "$m")" --expect "zonit-payload: pvh" \
        -- $("${m}_cmd" poweroff))
    FIRSTLINE[$m]=$(sed -n 's/^first line: //p' <<<"$out")
    FIRST[$m]=$(median_of "spawn to first console byte" <<<"$out")
    EXIT[$m]=$(median_of "spawn to monitor exit" <<<"$out")
    hyperfine -N --warmup 3 --runs "$(runs_of "$m")" --export-json "$WORK/hyperfine-$m.json" \
        "$("${m}_cmd" poweroff)" >/dev/null 2>&1
    HYPER[$m]=$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
t = sorted(r["times"])
q = lambda f: t[round((len(t) - 1) * f)] * 1e3
print("%.1f (%.1f-%.1f; %.1f-%.1f; n=%d)" % (q(0.5), q(0.25), q(0.75), t[0] * 1e3, t[-1] * 1e3, len(t)))
' "$WORK/hyperfine-$m.json")
    # shellcheck disable=SC2046
    out=$("$HARNESS" rss --runs "$RSS_RUNS" --wait spinning --guest-mib "$((${MEM%M}))" \
        -- $("${m}_cmd" spin))
    RSS[$m]=$(median_of "rss without guest RAM" <<<"$out")
    PSS[$m]=$(median_of "pss without guest RAM" <<<"$out")
    PRIV[$m]=$(median_of "private (clean + dirty) without guest RAM" <<<"$out")
    ANON[$m]=$(median_of "anonymous without guest RAM" <<<"$out")
    # shellcheck disable=SC2046
    out=$("$HARNESS" marks --runs "$PIO_RUNS" --from "pio: " --to "pio done" --count "$PIO" \
        -- $("${m}_cmd" "pio=$PIO"))
    PIOMS[$m]=$(median_of "time between the marks" <<<"$out")
    PIORATE[$m]=$(median_of "rate" <<<"$out")
    # Where the time of an exit goes: the monitor's user-space CPU against
    # the kernel's, over whole pio runs (start and exit included).
    hyperfine -N --warmup 1 --runs "$PIO_RUNS" --export-json "$WORK/hyperfine-pio-$m.json" \
        "$("${m}_cmd" "pio=$PIO")" >/dev/null 2>&1
    read -r PIOUSER[$m] PIOSYS[$m] < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["results"][0]
print("%.0f %.0f" % (r["user"] * 1e3, r["system"] * 1e3))
' "$WORK/hyperfine-pio-$m.json")
done

{
    row() {
        local name=$1 arr=$2 line="| $1 |"
        local -n values=$arr
        for m in "${MONITORS[@]}"; do line+=" ${values[$m]} |"; done
        echo "$line"
    }
    header="| figure |"
    rule="|---|"
    for m in "${MONITORS[@]}"; do header+=" ${LABEL[$m]} |"; rule+="---|"; done
    echo "$header"
    echo "$rule"
    row "first console line" FIRSTLINE
    row "spawn to first console byte, ms (harness)" FIRST
    row "spawn to exit, poweroff payload, ms (harness)" EXIT
    row "spawn to exit, poweroff payload, ms (hyperfine -N)" HYPER
    row "RSS without guest RAM, KiB" RSS
    row "PSS without guest RAM, KiB" PSS
    row "private without guest RAM, KiB" PRIV
    row "anonymous without guest RAM, KiB" ANON
    row "$PIO port writes, ms" PIOMS
    row "port-I/O exits, thousand/s" PIORATE
    row "whole pio run, user CPU ms (hyperfine mean)" PIOUSER
    row "whole pio run, system CPU ms (hyperfine mean)" PIOSYS
    echo
    echo "Each cell: median (p25-p75; min-max; n runs)."
    echo
    echo "Commands (payload action as the last word: poweroff, spin, pio=$PIO):"
    echo
    for m in "${MONITORS[@]}"; do echo "    $("${m}_cmd" poweroff)"; done
    echo
    echo "Harness: $HARNESS (benches/monitor.rs), e.g."
    echo
    echo "    monitor first-byte --runs $RUNS --expect 'zonit-payload: pvh' -- COMMAND"
    echo "    monitor rss --runs $RSS_RUNS --wait spinning --guest-mib ${MEM%M} -- COMMAND (spin)"
    echo "    monitor marks --runs $PIO_RUNS --from 'pio: ' --to 'pio done' --count $PIO -- COMMAND (pio=$PIO)"
    echo "    hyperfine -N --warmup 3 --runs $RUNS 'COMMAND (poweroff)'"
} >>"$report"

mkdir -p "$(dirname "$OUT")"
mv "$report" "$OUT"
cat "$OUT"
