#!/usr/bin/env bash
# Networking benchmarks for BENCHMARKS.md. Everything happens in private
# network namespaces (`unshare --net`): nothing touches this machine's
# interfaces or firewall. As root.
#
# Usage:
#   scripts/bench-net.sh [start] [RUNS] [N]
#       N zones on a [network.X] (a veth each, addresses, routes,
#       resolv.conf and hosts) against N plain zones, time to zonit's "all N
#       autostart unit(s) running" line, runs alternated (default 5 runs of
#       50 zones). With ZONIT_BEFORE=PATH, runs of that binary are
#       alternated with them too (before/after a change).
#   scripts/bench-net.sh idle [N] [SECONDS]
#       the agent's memory (VmRSS, PSS) and the context switches of the
#       agent and of every zone init over SECONDS idle (default 10), with
#       N plain zones and then N networked ones running (default 50).
#   scripts/bench-net.sh traffic [REPS] [SECONDS]
#       TCP throughput (iperf3, one stream) and request/response latency
#       (sockperf ping-pong over TCP, 64-byte messages) zone to zone and
#       host to zone over zonit's bridge, against a bare veth pair without
#       a bridge between two namespaces; the measurements alternated, REPS
#       of each (default 3), SECONDS each (default 5). iperf3 and sockperf
#       (ZONIT_BENCH=1 scripts/setup.sh) and their libraries are
#       bind-mounted read-only into the zones.
#   scripts/bench-net.sh frames [RUNS] [N]
#       guest frames per second through virtio-net: the test payload
#       (tests/payloads/payload.S, action txflood=N, default 100000) sends
#       N 42-byte ARP frames through its transmit queue to a tap; the
#       harness of scripts/bench-vmm.sh times "txflood: N" to "txflood
#       done" on the console. `zonit vmm` against QEMU microvm
#       (virtio-net-device on virtio-mmio, netdev tap without vhost), each
#       in a network namespace of its own holding the tap (up, on no
#       bridge); RUNS runs of each (default 7) in two alternated rounds.
#   scripts/bench-net.sh peers [RUNS]
#       one zone's whole `zonit run` (the zone runs /bin/true, its end
#       ends the run), plain and on a [network.X], against
#       `systemd-nspawn /bin/true` plain and with --network-bridge (a veth
#       on an existing bridge), when systemd-nspawn is installed
#       (ZONIT_BENCH=1 scripts/setup.sh); hyperfine, RUNS runs of each
#       (default 50), inside one private network namespace.
#
# ZONIT=PATH measures that binary instead of building the release one.
set -euo pipefail
mode=start
if [[ ${1:-} =~ ^(start|traffic|traffic-inside|idle|frames|peers|peers-inside)$ ]]; then
    mode=$1
    shift
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/bench-lib.sh
here=$PWD

# The binary, the template and a scratch directory.
prepare() {
    ZONIT_BENCH=1 scripts/setup.sh
    if [[ -z ${ZONIT:-} ]]; then
        cargo build --release --quiet
        ZONIT=$PWD/target/x86_64-unknown-linux-gnu/release/zonit
    fi
    dir=$(mktemp -d /tmp/zonit-bench-net.XXXXXX)
    trap 'rm -rf "$dir"' EXIT
    scripts/make-template.sh "$dir/base"
    mkdir -p "$dir/zones"
}

# One zone section: NAME, COMMAND (a TOML array), then extra lines.
zone() {
    local name=$1 command=$2
    shift 2
    printf '\n[zone.%s]\nroot = "%s/zones/%s"\ntemplate = "%s/base"\ncommand = %s\n' \
        "$name" "$dir" "$name" "$dir" "$command"
    printf '%s\n' "$@"
}

# plain.toml and net.toml: $1 zones, plain or all on one network.
configs() {
    local n=$1
    for kind in plain net; do
        {
            printf '[host]\ncontrol_socket = "%s/control-%s.sock"\n' "$dir" "$kind"
            if [[ $kind == net ]]; then
                printf '\n[network.lan]\naddress = "10.88.0.1/16"\nnat = true\n'
            fi
            for i in $(seq 0 $((n - 1))); do
                if [[ $kind == net ]]; then
                    zone "z$i" '["/bin/sh", "-c", "while true; do sleep 5; done"]' 'network = "lan"'
                else
                    zone "z$i" '["/bin/sh", "-c", "while true; do sleep 5; done"]'
                fi
            done
        } >"$dir/$kind.toml"
        "$ZONIT" check "$dir/$kind.toml" >/dev/null
    done
}

# Context switches (voluntary + nonvoluntary) of the processes $@.
switches() {
    local total=0 p
    for p in "$@"; do
        total=$((total + $(awk '/ctxt_switches/ {s += $2} END {print s}' "/proc/$p/status")))
    done
    echo "$total"
}

idle_bench() {
    local n=${1:-50} secs=${2:-10}
    configs "$n"
    echo "--- $n zones idle for $secs s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    for kind in plain net; do
        local log=$dir/idle-$kind.log
        : >"$log"
        unshare --net --pid --fork --mount --kill-child "$ZONIT" run --config "$dir/$kind.toml" 2>"$log" &
        local pid=$!
        for _ in $(seq 4000); do grep -q "autostart unit(s) running after" "$log" && break; sleep 0.005; done
        grep -q "all $n autostart unit(s) running" "$log" || { cat "$log"; exit 1; }
        sleep 2 # past the start's last echoes (IPv6 router solicitations are the kernel's)
        local agent inits rss pss a0 i0 a1 i1
        agent=$(cut -d' ' -f1 /proc/$pid/task/$pid/children)
        read -ra inits <"/proc/$agent/task/$agent/children" || true # no newline at its end
        a0=$(switches "$agent")
        i0=$(switches "${inits[@]}")
        sleep "$secs"
        a1=$(switches "$agent")
        i1=$(switches "${inits[@]}")
        rss=$(awk '/^VmRSS/ {print $2}' "/proc/$agent/status")
        pss=$(awk '/^Pss:/ {print $2}' "/proc/$agent/smaps_rollup")
        echo "$kind: agent VmRSS $rss KiB, PSS $pss KiB; context switches over $secs s: agent $((a1 - a0)), ${#inits[@]} zone inits $((i1 - i0))"
        kill -TERM "$agent"
        wait "$pid" || true
        rm -rf "$dir/zones"/* "$dir/zones"/.[!.]* 2>/dev/null || true
    done
}

start_bench() {
    local runs=${1:-5} n=${2:-50}
    configs "$n"
    local binaries=("$ZONIT")
    [[ -n ${ZONIT_BEFORE:-} ]] && binaries=("$ZONIT_BEFORE" "$ZONIT")
    echo "--- zonit run, $n zones, $runs runs of each, alternated; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    for r in $(seq "$runs"); do
        for bin in "${binaries[@]}"; do
            local label=""
            [[ ${#binaries[@]} -gt 1 ]] && label="$([[ $bin == "${ZONIT_BEFORE:-}" ]] && echo before || echo after) "
            for kind in plain net; do
                local out
                out=$(bench_time_start "$n" "$dir/run-$kind-$r.log" "$bin" "$dir/$kind.toml" --net)
                echo "$label$kind: $out"
                rm -rf "$dir/zones"/* "$dir/zones"/.[!.]* 2>/dev/null || true
            done
        done
    done
    echo "--- load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

traffic_bench() {
    local reps=${1:-3} secs=${2:-5}
    local iperf3 sockperf libdir
    iperf3=$(command -v iperf3)
    sockperf=$(command -v sockperf)
    libdir=$(dirname "$(readlink -f "$(ldd "$iperf3" | awk '/libc.so/ {print $3}')")")
    # The tools and their libraries, read-only, at the same paths inside.
    local mounts="mounts = [
  { source = \"$iperf3\", target = \"/usr/bin/iperf3\", readonly = true },
  { source = \"$sockperf\", target = \"/usr/bin/sockperf\", readonly = true },
  { source = \"$libdir\", target = \"/lib/x86_64-linux-gnu\", readonly = true },
  { source = \"$libdir\", target = \"/lib64\", readonly = true },
]"
    {
        printf '[host]\ncontrol_socket = "%s/control.sock"\n' "$dir"
        printf '\n[network.lan]\naddress = "10.88.0.1/24"\nnat = true\n'
        zone srv '["/bin/sh", "-c", "/usr/bin/iperf3 -s -D -p 5201 && exec /usr/bin/sockperf sr --tcp -i 0.0.0.0 -p 11111"]' \
            'network = "lan"' 'address = "10.88.0.2"' "$mounts"
        zone cli '["/bin/sh", "-c", "while true; do sleep 5; done"]' \
            'network = "lan"' 'address = "10.88.0.3"' "$mounts"
    } >"$dir/traffic.toml"
    "$ZONIT" check "$dir/traffic.toml" >/dev/null
    echo "--- traffic: $reps reps of $secs s each, alternated; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    DIR=$dir ZONIT=$ZONIT REPS=$reps SECS=$secs \
        unshare --net --pid --fork --mount --mount-proc --kill-child bash "$here/scripts/bench-net.sh" traffic-inside
    echo "--- load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

# Inside the private network namespace that stands in for the host.
traffic_inside() {
    ip link set lo up
    local log=$DIR/traffic.log ctl=("$ZONIT" ctl --socket "$DIR/control.sock")
    "$ZONIT" run --config "$DIR/traffic.toml" 2>"$log" &
    local agent=$!
    for _ in $(seq 2000); do grep -q "autostart unit(s) running after" "$log" && break; sleep 0.01; done
    grep -q "all 2 autostart unit(s) running" "$log" || { cat "$log"; exit 1; }

    # The peer: two namespaces on a bare veth pair, and one more pair from
    # this namespace to the first, no bridge anywhere.
    unshare --net sleep infinity &
    local a=$!
    unshare --net sleep infinity &
    local b=$!
    sleep 0.2
    local in_a=(nsenter --net=/proc/$a/ns/net) in_b=(nsenter --net=/proc/$b/ns/net)
    ip link add h0 type veth peer name eth0 netns "$a"
    ip addr add 10.99.0.1/24 dev h0
    ip link set h0 up
    "${in_a[@]}" ip addr add 10.99.0.2/24 dev eth0
    "${in_a[@]}" ip link set eth0 up
    "${in_a[@]}" ip link set lo up
    "${in_a[@]}" ip link add eth1 type veth peer name eth0 netns "$b"
    "${in_a[@]}" ip addr add 10.99.1.2/24 dev eth1
    "${in_a[@]}" ip link set eth1 up
    "${in_b[@]}" ip addr add 10.99.1.3/24 dev eth0
    "${in_b[@]}" ip link set eth0 up
    "${in_a[@]}" iperf3 -s -D -p 5201
    "${in_a[@]}" sockperf sr --tcp -i 0.0.0.0 -p 11111 >/dev/null 2>&1 &
    local sr=$!
    sleep 1

    local -A cmd=(
        [zonit-zone-to-zone]="${ctl[*]} exec cli --"
        [bare-zone-to-zone]="${in_b[*]}"
        [zonit-host-to-zone]=""
        [bare-host-to-zone]=""
    )
    local -A to=(
        [zonit-zone-to-zone]=10.88.0.2 [bare-zone-to-zone]=10.99.1.2
        [zonit-host-to-zone]=10.88.0.2 [bare-host-to-zone]=10.99.0.2
    )
    local order=(zonit-zone-to-zone bare-zone-to-zone zonit-host-to-zone bare-host-to-zone)
    for r in $(seq "$REPS"); do
        for k in "${order[@]}"; do
            local gbit lat
            # shellcheck disable=SC2086 # the prefix is words on purpose
            gbit=$(${cmd[$k]} /usr/bin/iperf3 -c "${to[$k]}" -p 5201 -t "$SECS" -J |
                python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))')
            # shellcheck disable=SC2086
            lat=$(${cmd[$k]} /usr/bin/sockperf pp --tcp -i "${to[$k]}" -p 11111 -t "$SECS" -m 64 2>&1 |
                awk '/percentile 50.000/ {p50 = $NF} /percentile 99.000/ {p99 = $NF} /avg-latency/ {sub(/.*avg-latency=/, ""); sub(/ .*/, ""); avg = $0}
                     END {printf "avg %s p50 %s p99 %s us", avg, p50, p99}')
            echo "$r $k: iperf3 $gbit Gbit/s; sockperf TCP 64 B one-way (half round trip) $lat"
        done
    done
    kill "$sr" "$a" "$b" 2>/dev/null || true
    kill -TERM "$agent"
    wait "$agent" || true
}

frames_bench() {
    local runs=${1:-7} n=${2:-100000}
    [[ -w /dev/kvm ]] || { echo "bench-net: frames needs /dev/kvm" >&2; exit 1; }
    local harness
    harness=$(bench_monitor_harness)
    bench_pvh_payload "$dir"
    # Opens tap ztap0 as zonit's agent does (vnet header of 12 bytes,
    # offloads off), sets it up, and executes the monitor with the fd
    # inherited, its number in place of TAPFD.
    cat >"$dir/tap.py" <<'PY'
import fcntl, os, struct, subprocess, sys
TUNSETIFF, TUNSETVNETHDRSZ, TUNSETOFFLOAD = 0x400454CA, 0x400454D8, 0x400454D0
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"ztap0", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", 12))
fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
subprocess.run(["ip", "link", "set", "ztap0", "up"], check=True)
os.set_inheritable(fd, True)
argv = [a.replace("TAPFD", str(fd)) for a in sys.argv[1:]]
os.execvp(argv[0], argv)
PY
    local payload=$dir/payload-pvh mac=52:54:00:12:34:56
    local -A cmd=(
        [zonit]="$ZONIT vmm --kernel $payload --memory 64M --cmdline txflood=$n --net fd=TAPFD,mac=$mac"
        [microvm]="qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off -accel kvm -cpu host,-arch-capabilities -m 64M -smp 1 -nodefaults -no-user-config -display none -serial stdio -no-reboot -kernel $payload -append txflood=$n -global virtio-mmio.force-legacy=false -netdev tap,id=n0,fd=TAPFD,vhost=off -device virtio-net-device,netdev=n0,mac=$mac"
    )
    echo "--- frames: $n per run, $runs runs of each in two rounds; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "$(qemu-system-x86_64 --version | head -n 1)"
    for round in 1 2; do
        for m in zonit microvm; do
            local out n_runs=$(((runs + 2 - round) / 2))
            ((n_runs > 0)) || continue # RUNS=1: one round only
            # shellcheck disable=SC2086 # the command lines are word lists
            out=$("$harness" marks --runs "$n_runs" --from "txflood: " \
                --to "txflood done" --count "$n" -- unshare --net python3 "$dir/tap.py" ${cmd[$m]})
            echo "round $round, $m: $(grep -E "^(time between the marks|rate)" <<<"$out" | tr '\n' ' ')"
        done
    done
    echo "--- load average $(cut -d' ' -f1-3 /proc/loadavg)"
    for m in zonit microvm; do echo "$m: ${cmd[$m]}"; done
}

peers_bench() {
    local runs=${1:-50}
    command -v systemd-nspawn >/dev/null || { echo "bench-net: peers needs systemd-nspawn (ZONIT_BENCH=1 scripts/setup.sh)" >&2; exit 1; }
    local one='["/bin/true"]'
    {
        printf '[host]\ncontrol_socket = "%s/control.sock"\nexit_with = "one"\n' "$dir"
        zone one "$one" 'restart = "never"'
    } >"$dir/one.toml"
    {
        printf '[host]\ncontrol_socket = "%s/control.sock"\nexit_with = "one"\n' "$dir"
        printf '\n[network.lan]\naddress = "10.88.0.1/24"\n'
        zone one "$one" 'restart = "never"' 'network = "lan"'
    } >"$dir/onenet.toml"
    for c in one onenet; do "$ZONIT" check "$dir/$c.toml" >/dev/null; done
    # nspawn wants an OS tree: the same busybox root with an os-release.
    cp -a "$dir/base" "$dir/nsroot"
    mkdir -p "$dir/nsroot/etc" "$dir/nsroot/usr"
    : >"$dir/nsroot/etc/os-release"
    echo "--- one start, $runs runs of each; load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "$(systemd-nspawn --version | head -n 1)"
    DIR=$dir ZONIT=$ZONIT RUNS=$runs \
        unshare --net --mount --propagation private bash "$here/scripts/bench-net.sh" peers-inside
    echo "--- load average $(cut -d' ' -f1-3 /proc/loadavg)"
}

# Inside the private network namespace: nspawn's bridge exists before the
# runs (it attaches a veth to it and configures no address); zonit makes
# its own bridge, the veth, the zone's address and route, and removes the
# bridge when it exits, all inside each run.
peers_inside() {
    ip link set lo up
    ip link add nsbr0 type bridge
    ip link set nsbr0 up
    local ns=(systemd-nspawn --register=no --keep-unit -q -D "$DIR/nsroot")
    hyperfine -N --style none --warmup 5 --runs "$RUNS" --export-csv "$DIR/peers.csv" \
        -n "zonit-run-plain" "$ZONIT run --config $DIR/one.toml" \
        -n "zonit-run-lan" "$ZONIT run --config $DIR/onenet.toml" \
        -n "nspawn" "${ns[*]} /bin/true" \
        -n "nspawn-network-bridge" "${ns[*]} --network-bridge=nsbr0 /bin/true" >/dev/null 2>"$DIR/peers.err"
    # command,mean,stddev,median,user,system,min,max
    awk -F, 'NR > 1 {printf "%s: median %.2f ms (min %.2f, max %.2f)\n", $1, $4 * 1000, $7 * 1000, $8 * 1000}' "$DIR/peers.csv"
}

case $mode in
start) prepare && start_bench "$@" ;;
traffic) prepare && traffic_bench "$@" ;;
traffic-inside) traffic_inside ;;
idle) prepare && idle_bench "$@" ;;
frames) prepare && frames_bench "$@" ;;
peers) prepare && peers_bench "$@" ;;
peers-inside) peers_inside ;;
esac
