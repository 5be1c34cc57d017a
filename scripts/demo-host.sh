#!/usr/bin/env bash
# The demo config (initramfs/demo.toml) under `zonit run` on this machine,
# with zonit as PID 1 of a new PID namespace: shows `zonit ctl status`
# while the crash-looping zone is restarted with backoff, then stops
# everything with SIGTERM. Needs root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo build --release --quiet
zonit=$PWD/target/x86_64-unknown-linux-gnu/release/zonit

dir=$(mktemp -d /tmp/zonit-demo.XXXXXX)
trap 'rm -rf "$dir"' EXIT
scripts/make-template.sh "$dir/base"
mkdir -p "$dir/zones"
# Same config, with its paths moved under the demo directory.
sed -e "s|\"/zones/|\"$dir/zones/|; s|\"/templates/base\"|\"$dir/base\"|" \
    -e "s|^\[host\]|[host]\ncontrol_socket = \"$dir/control.sock\"|" \
    initramfs/demo.toml > "$dir/zonit.toml"
cg2=$(awk '$9 == "cgroup2" {print $5; exit}' /proc/self/mountinfo)
if ! grep -qw memory "${cg2:-/nonexistent}/cgroup.controllers" 2>/dev/null; then
    # zonit refuses to run a zone whose limits it cannot enforce.
    echo "note: no cgroup v2 memory/pids controllers on this host; dropping the demo's limits"
    sed -i '/^memory_max\|^pids_max/d' "$dir/zonit.toml"
fi

ctl() { "$zonit" ctl --socket "$dir/control.sock" "$@"; }

"$zonit" check "$dir/zonit.toml"
echo "--- starting: unshare --pid --fork --mount zonit run --config $dir/zonit.toml"
unshare --pid --fork --mount --kill-child "$zonit" run --config "$dir/zonit.toml" &
unshare_pid=$!
for _ in $(seq 100); do [[ -S $dir/control.sock ]] && break; sleep 0.05; done

for t in 1 2 3; do
    sleep 1.5
    echo "--- zonit ctl status (after ${t}x1.5 s)"
    ctl status
done
echo "--- zonit ctl logs worker"
ctl logs worker
echo "--- SIGTERM to zonit: zones stop in reverse order, then it exits"
kill -TERM "$(cat /proc/$unshare_pid/task/$unshare_pid/children | cut -d' ' -f1)"
wait "$unshare_pid"
echo "--- zonit exited with status $?"
