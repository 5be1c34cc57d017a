#!/usr/bin/env bash
# The README's first command: the demo. For now it runs the demo config on
# this machine (scripts/demo-host.sh); the appliance demo in QEMU replaces
# it once PID 1 boot lands.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/demo-host.sh" "$@"
