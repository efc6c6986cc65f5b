#!/usr/bin/env bash
# What keeps the code base as it is: formatting, clippy on every feature set (the
# default, `dpdk`, `rte-acl`, and the VPP plugin's `vpp` when CAPO_VPP names an
# unpacked VPP with its headers), and the docs with warnings denied.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo clippy --locked -p capo-offload -p capo-hw-tests -p capo-agent --all-targets \
    --features capo-offload/dpdk,capo-hw-tests/dpdk,capo-agent/dpdk -- -D warnings
cargo clippy --locked -p capo-bench --all-targets --features rte-acl -- -D warnings
if [ -n "${CAPO_VPP:-}" ] && [ -d "$CAPO_VPP/vpp/include" ]; then
    inc="$CAPO_VPP/vpp/include"
    CFLAGS="-I$inc" BINDGEN_EXTRA_CLANG_ARGS="-I$inc" \
        LIBRARY_PATH="$CAPO_VPP/vpp/lib/x86_64-linux-gnu" \
        cargo clippy --locked -p capo-vpp-plugin --features vpp -- -D warnings
else
    echo "lint: SKIPPED clippy of the VPP glue (--features vpp): set CAPO_VPP to an unpacked VPP (scripts/vpp-setup.sh)" >&2
fi
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps
echo "lint: clean"
