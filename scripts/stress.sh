#!/usr/bin/env bash
# Replays hostile cases against one `zonit run` and reports the agent's fds,
# RSS and unit states before and after. Needs root.
#
# Usage: scripts/stress.sh [ZONES]   (default 200 zones)
#
# zonit runs as PID 1 of a new PID and mount namespace (unshare); zones get
# their own network namespaces; every client talks to the agent's control
# socket in a scratch directory. Nothing touches the host's interfaces,
# routes or firewall. Each step has a deadline; the whole run is bounded
# (about two minutes).
#
# Cases: requests carrying too many fds; 5000 pipelined requests in one
# write (50 bytes each); clients that half-close after their request (stop, logs -f); a
# SIGHUP storm over good, good and broken configs with a slow-stopping unit
# that is removed and re-added; start/stop races in one write; many zones
# and a unit flooding its output.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

zones=${1:-200}
[[ $(id -u) == 0 ]] || { echo "stress: needs root" >&2; exit 1; }
scripts/setup.sh
cargo build --quiet --bin zonit --example stress_client
target=target/x86_64-unknown-linux-gnu/debug
zonit=$PWD/$target/zonit
client=$PWD/$target/examples/stress_client

dir=$(mktemp -d "${TMPDIR:-/tmp}/zonit-stress.XXXXXX")
unshare_pid=
cleanup() {
    if [[ -n $unshare_pid ]] && kill -0 "$unshare_pid" 2>/dev/null; then
        kill -TERM "$(agent_pid)" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$unshare_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$unshare_pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

mkdir -p "$dir/base/bin" "$dir/base/proc" "$dir/base/sys" "$dir/base/dev" "$dir/base/tmp" "$dir/zones"
cp "$(command -v busybox)" "$dir/base/bin/busybox"
for a in sh echo sleep cat yes true; do ln -s busybox "$dir/base/bin/$a"; done

sock=$dir/control.sock
zone() { # NAME COMMAND [EXTRA]
    printf '[zone.%s]\nroot = "%s"\ntemplate = "%s"\ncommand = ["/bin/sh", "-c", "%s"]\n%s\n' \
        "$1" "$dir/zones/$1" "$dir/base" "$2" "${3:-}"
}
write_config() { # with-slow(0/1) broken(0/1)
    {
        printf '[host]\ncontrol_socket = "%s"\nshutdown_timeout = "10s"\n' "$sock"
        for i in $(seq "$zones"); do zone "z$i" "sleep 100000" 'restart = "always"'; done
        zone flood "yes flood-line" 'restart = "always"'
        zone racer "sleep 100000" 'stop_timeout = "2s"'
        if [[ $1 == 1 ]]; then
            zone slow "trap 'sleep 0.3; exit 0' TERM; while true; do sleep 0.1; done" 'stop_timeout = "3s"'
        fi
        if [[ $2 == 1 ]]; then printf '[zone.broken]\nroot = 7\n'; fi
    } > "$dir/zonit.toml"
}
# The storm's three configs, written once.
write_config 0 0 && cp "$dir/zonit.toml" "$dir/without-slow.toml"
write_config 1 1 && cp "$dir/zonit.toml" "$dir/broken.toml"
write_config 1 0 && cp "$dir/zonit.toml" "$dir/with-slow.toml"
"$zonit" check "$dir/zonit.toml" >/dev/null

ctl() { timeout 30 "$zonit" ctl --socket "$sock" "$@"; }
agent_pid() { cut -d' ' -f1 "/proc/$unshare_pid/task/$unshare_pid/children"; }
report() { # LABEL
    local pid fds rss states
    pid=$(agent_pid)
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
    rss=$(awk '/^VmRSS/ {print $2 " " $3}' "/proc/$pid/status")
    states=$(ctl status | awk 'NR > 1 {n[$3]++} END {for (s in n) printf "%s=%d ", s, n[s]}')
    echo "$1: agent pid $pid, fds $fds, VmRSS $rss, units: $states"
}
step() { echo "--- $*"; }

start=$(date +%s)
unshare --pid --fork --mount --kill-child "$zonit" run --config "$dir/zonit.toml" \
    > "$dir/agent.log" 2>&1 &
unshare_pid=$!
for _ in $(seq 200); do [[ -S $sock ]] && ctl status >/dev/null 2>&1 && break; sleep 0.05; done
total=$((zones + 3))
for _ in $(seq 600); do
    running=$(ctl status | awk 'NR > 1 && $3 == "running"' | wc -l)
    ((running == total)) && break
    sleep 0.1
done
echo "zonit stress: $zones zones + flood + racer + slow, agent $(agent_pid) (namespace PID 1)"
report before

step "fd-carrying requests: 100 x 5 fds, 100 x 200 fds"
timeout 60 "$client" "$sock" fds 5 100
timeout 60 "$client" "$sock" fds 200 100
step "pipelined flood"
timeout 60 "$client" "$sock" pipeline 5000
step "half-closing clients"
timeout 60 "$client" "$sock" halfclose flood
step "start/stop races in one write"
timeout 90 "$client" "$sock" race racer 200
step "SIGHUP storm: 300 reloads over good (with slow), good (without), broken"
for i in $(seq 300); do
    case $((i % 3)) in
        0) cp "$dir/with-slow.toml" "$dir/zonit.toml" ;;
        1) cp "$dir/without-slow.toml" "$dir/zonit.toml" ;;
        2) cp "$dir/broken.toml" "$dir/zonit.toml" ;;
    esac
    kill -HUP "$(agent_pid)"
    sleep 0.01
done
cp "$dir/with-slow.toml" "$dir/zonit.toml"
kill -HUP "$(agent_pid)"
sleep 1
ctl start racer >/dev/null
ctl start slow >/dev/null || echo "slow: lost by the storm"
for _ in $(seq 300); do
    running=$(ctl status | awk 'NR > 1 && $3 == "running"' | wc -l)
    ((running == total)) && break
    sleep 0.1
done
report after
echo "log lines: $(wc -l < "$dir/agent.log"), of which flood lines: $(grep -c 'zonit\[flood\]' "$dir/agent.log"), dropped-lines notices: $(grep -c 'lines not logged' "$dir/agent.log")"
step "SIGTERM"
kill -TERM "$(agent_pid)"
status=0
wait "$unshare_pid" || status=$?
unshare_pid=
echo "zonit exited with status $status after $(($(date +%s) - start)) s"
