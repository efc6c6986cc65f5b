#!/usr/bin/env bash
# Runs every fuzz target of host-agent/fuzz for SECONDS each (default 30) with
# libFuzzer and AddressSanitizer, starting from the saved corpora. New inputs go to a
# scratch directory, not the repository. A crash fails the run; libFuzzer leaves the
# input in host-agent/fuzz/artifacts/TARGET/: once fixed, add it to
# host-agent/fuzz/corpus/TARGET/ so the stable tests replay it for good.
#
# The stable toolchain ships the ASan runtime; RUSTC_BOOTSTRAP lets cargo-fuzz pass
# the sanitizer flag to it.
set -euo pipefail
seconds=${1:-30}
cd "$(dirname "$0")/../host-agent"
if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
scratch=$(mktemp -d "${TMPDIR:-/tmp}/capo-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
cargo fuzz build -s address
failed=()
for target in $(cargo fuzz list); do
    mkdir -p "$scratch/$target"
    echo "fuzz: $target for ${seconds}s"
    if ! cargo fuzz run -s address "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 -print_final_stats=1; then
        failed+=("$target")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs in host-agent/fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: every target ran ${seconds}s without a crash"
