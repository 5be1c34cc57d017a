#!/usr/bin/env bash
# The console benchmark of BENCHMARKS.md ("Guest console"): the keystroke
# round trip through `zonit ctl console` to a guest that echoes what it
# reads from COM1 (the payload's `echo` action, tests/payloads/payload.S),
# next to QEMU's serial chardev (`-serial stdio`) with the same payload.
#
# One keystroke: one byte written to the client's stdin (a pipe, so the
# client is not in raw mode and nothing else differs), timed until the
# guest's echo of it comes out of the client's stdout. Path through zonit:
# client -> control socket -> agent (input queue) -> pipe -> monitor main
# thread -> UART FIFO -> guest -> UART out -> monitor stdout -> agent
# (output ring, followers) -> control socket -> client.
#
# Usage: scripts/bench-console.sh     (as root, /dev/kvm; prints a report)
# Knobs: BENCH_KEYS=500 keystrokes per monitor.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KEYS=${BENCH_KEYS:-500}
WORK=$PWD/target/bench-console
if [[ $(id -u) != 0 || ! -w /dev/kvm ]]; then
    echo "bench-console: needs root and /dev/kvm" >&2
    exit 1
fi
mkdir -p "$WORK"
cargo build --release --bin zonit >&2
ZONIT=$PWD/target/x86_64-unknown-linux-gnu/release/zonit
# PVH: both zonit and QEMU boot it.
as --64 --defsym PVH=1 -o "$WORK/pvh.o" tests/payloads/payload.S
ld -m elf_x86_64 -nostdlib -static --build-id=none -z noexecstack \
    -T tests/payloads/elf.ld -o "$WORK/payload-pvh" "$WORK/pvh.o"

socket=$WORK/ctl.sock
cat >"$WORK/zonit.toml" <<EOF
[host]
control_socket = "$socket"

[guest.echo]
kernel = "$WORK/payload-pvh"
cmdline = "echo"
memory = "32M"
# The echo payload ignores the power button: kill it soon at the end.
stop_timeout = "1s"
EOF
rm -f "$socket"
unshare --pid --fork --mount --kill-child "$ZONIT" run --config "$WORK/zonit.toml" \
    2>"$WORK/zonit.log" &
agent=$!
# unshare ignores SIGTERM while it waits: the agent (its child) gets it.
trap 'kill $(cat /proc/$agent/task/$agent/children 2>/dev/null) 2>/dev/null; wait $agent || true' EXIT
for _ in $(seq 100); do
    "$ZONIT" ctl --socket "$socket" logs echo 2>/dev/null | grep -q "echo ready" && break
    sleep 0.1
done

# Times KEYS keystrokes through the command in argv: each one byte, until
# its echo is read back; prints "median p25 p75 min max" in microseconds.
rtt() {
    python3 - "$KEYS" "$@" <<'PY'
import os, subprocess, sys, time
keys, argv = int(sys.argv[1]), sys.argv[2:]
p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, bufsize=0)
out, inp = p.stdout.fileno(), p.stdin.fileno()
seen = b""
deadline = time.monotonic() + 20
while b"echo ready" not in seen:
    if time.monotonic() > deadline:
        sys.exit("no 'echo ready' from " + " ".join(argv))
    seen += os.read(out, 4096)
times = []
for i in range(keys + 20):
    key = bytes([ord("a") + i % 26])
    t = time.perf_counter()
    os.write(inp, key)
    got = b""
    while key not in got:
        got += os.read(out, 4096)
    if i >= 20:  # warm-up
        times.append((time.perf_counter() - t) * 1e6)
p.kill()
times.sort()
q = lambda f: times[int(f * (len(times) - 1))]
print(f"{q(0.5):.0f} {q(0.25):.0f} {q(0.75):.0f} {times[0]:.0f} {times[-1]:.0f}")
PY
}

z=$(rtt "$ZONIT" ctl --socket "$socket" console echo)
q=$(rtt qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off -accel kvm \
    -cpu host,-arch-capabilities -m 32M -smp 1 -nodefaults -no-user-config \
    -display none -serial stdio -no-reboot -kernel "$WORK/payload-pvh" -append echo)
row() { read -r med p25 p75 min max <<<"$2"; echo "| $1 | $med | $p25-$p75 | $min-$max |"; }
echo "host: $(uname -r), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg);" \
    "zonit $(git rev-parse --short HEAD), $KEYS keystrokes each"
echo
echo "| path | median (us) | p25-p75 | min-max |"
echo "|---|---|---|---|"
row "zonit ctl console -> agent -> zonit vmm -> guest echo" "$z"
row "QEMU microvm -serial stdio -> guest echo" "$q"
