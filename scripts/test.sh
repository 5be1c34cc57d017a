#!/usr/bin/env bash
# Runs every test tier (the README's test command).
#
# Usage: scripts/test.sh [TIER...]   tiers: lint 1 2 3 4 static (default: all)
#   lint    cargo fmt --check, clippy -D warnings
#   1       unit tests, no root
#   2       root integration tests: zones under `zonit run` as PID 1 of a
#           PID namespace
#   3       monitor tests on /dev/kvm with tiny guest payloads
#   4       QEMU system tests: the real initramfs with zonit as /init
#   static  the release binary is fully static
# Under CI=true a test whose prerequisite is missing fails, never skips.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh

tiers=("$@")
((${#tiers[@]})) || tiers=(lint 1 2 3 4 static)

for tier in "${tiers[@]}"; do
    echo "=== tier $tier ==="
    case $tier in
        lint)
            cargo fmt --all -- --check
            cargo clippy --workspace --all-targets -- -D warnings
            ;;
        1)
            cargo test -p zonit-mkinitramfs
            cargo test --lib --bins --test initramfs --test kernel_config --test fuzz_regressions --test syslog --test pid1_panic --test repo --test cli
            ;;
        2)
            cargo test --test zones --test agent --test hardening --test escape --test network --test dhcp --test terminal --test ready
            ;;
        3)
            cargo test --test vmm
            ;;
        4)
            # Each test boots its own QEMU (one emulated CPU each); two at
            # a time keep both cores busy.
            scripts/fetch-kernel.sh
            cargo test --test qemu -- --test-threads=2
            ;;
        static)
            cargo build --release
            bin=target/x86_64-unknown-linux-gnu/release/zonit
            desc=$(file -b "$bin")
            echo "$bin: $desc"
            case $desc in
                *"static-pie linked"* | *"statically linked"*) ;;
                *) echo "release binary is not static" >&2; exit 1 ;;
            esac
            echo "size: $(stat -c %s "$bin") bytes"
            ;;
        *)
            echo "unknown tier $tier" >&2
            exit 2
            ;;
    esac
done
echo "=== all requested tiers passed ==="
