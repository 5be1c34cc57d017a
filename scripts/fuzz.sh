#!/usr/bin/env bash
# Runs each fuzz target (fuzz/fuzz_targets) for a bounded time.
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
# Needs cargo-fuzz (installed here if missing) and a toolchain that takes
# -Z flags: nightly if rustup has it, else stable with RUSTC_BOOTSTRAP=1.
# New crashes land in fuzz/artifacts/TARGET/; copy each into
# fuzz/regressions/TARGET/ once fixed, so tier 1 replays it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi
# The project builds fully static; sanitizers need the dynamic runtime.
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=-crt-static"
for target in config control; do
    mkdir -p "fuzz/corpus/$target"
    cp -n fuzz/regressions/"$target"/* "fuzz/corpus/$target/" 2>/dev/null || true
    echo "=== fuzzing $target for ${secs}s"
    cargo "${toolchain[@]}" fuzz run "$target" --target x86_64-unknown-linux-gnu \
        "fuzz/corpus/$target" -- -max_total_time="$secs" -max_len=4096
done
