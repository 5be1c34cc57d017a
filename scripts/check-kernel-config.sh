#!/usr/bin/env bash
# Tells which options a kernel .config lacks against zonit's config
# fragments: merge_config.sh's re-check, made strict.
#
# Usage: scripts/check-kernel-config.sh CONFIG [FRAGMENT...]
#   FRAGMENT defaults to every kernel-config/*.config; later fragments
#   override earlier ones, as in merge_config.sh.
# Prints one line per missing option, e.g.
#   CONFIG_KVM: wanted y, have m
#   CONFIG_OVERLAY_FS: wanted y, not set
# Exit status: 0 all present, 1 something missing, 2 usage or input error.
#
# Fragment lines:
#   CONFIG_X=y            must be built in (=m is not enough: there is no
#                         module loader before /init runs)
#   CONFIG_X=y # m ok     built in or a module (zonit loads it at boot)
#   CONFIG_X=m            built in or a module
#   CONFIG_X=VALUE        exactly this value (numbers, strings)
#   # CONFIG_X is not set must be off
# Other comments and blank lines are ignored.
set -euo pipefail

usage() {
    echo "usage: $0 CONFIG [FRAGMENT...]" >&2
    exit 2
}
[[ $# -ge 1 ]] || usage
[[ $1 != -* ]] || usage

# Resolve arguments against the caller's directory before moving to the
# repository root, where the default fragments live.
config=$(realpath -m -- "$1")
shift
fragments=()
for f in "$@"; do
    fragments+=("$(realpath -m -- "$f")")
done
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ ${#fragments[@]} -eq 0 ]]; then
    fragments=("$PWD"/kernel-config/*.config)
fi
for f in "$config" "${fragments[@]}"; do
    if [[ ! -r $f ]]; then
        echo "check-kernel-config: unable to read $f" >&2
        exit 2
    fi
done

exec awk '
    # Reads one line of either kind of file into name/value; returns 0 for
    # lines that carry no option.
    function parse(line) {
        if (line ~ /^# CONFIG_[A-Za-z0-9_]+ is not set/) {
            split(line, words, " ")
            name = words[2]; value = "n"; mok = 0
            return 1
        }
        if (line ~ /^CONFIG_[A-Za-z0-9_]+=/) {
            eq = index(line, "=")
            name = substr(line, 1, eq - 1)
            value = substr(line, eq + 1)
            mok = (value ~ /#[ \t]*m ok[ \t]*$/)
            # Drop a trailing comment, but not a "#" inside a quoted string.
            sub(/[ \t]+#[^"]*$/, "", value)
            sub(/[ \t]+$/, "", value)
            return 1
        }
        if (line ~ /^[ \t]*(#.*)?$/) return 0
        printf "%s:%d: not a config line: %s\n", FILENAME, FNR, line > "/dev/stderr"
        bad = 1
        return 0
    }
    role == "fragment" && parse($0) {
        if (!(name in want)) order[++n] = name
        want[name] = value; modok[name] = mok
    }
    role == "config" && parse($0) { have[name] = value }
    END {
        if (bad) exit 2
        missing = 0
        for (i = 1; i <= n; i++) {
            k = order[i]; w = want[k]
            h = (k in have) ? have[k] : "n"
            if (w == "n") ok = (h == "n")
            else if (w == "y") ok = (h == "y" || (h == "m" && modok[k]))
            else if (w == "m") ok = (h == "y" || h == "m")
            else ok = (h == w)
            if (ok) continue
            missing++
            if (w == "n") printf "%s: wanted not set, have %s\n", k, h
            else if (h == "n") printf "%s: wanted %s, not set\n", k, w
            else printf "%s: wanted %s, have %s\n", k, w, h
        }
        if (missing) {
            printf "check-kernel-config: %d of %d options missing from %s\n", missing, n, config > "/dev/stderr"
            exit 1
        }
        printf "check-kernel-config: all %d options present in %s\n", n, config
    }
' config="$config" role=fragment "${fragments[@]}" role=config "$config"
