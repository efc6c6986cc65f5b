#!/usr/bin/env bash
# Builds everything and runs every test of the workspace, then the DPDK-backed
# tests (EAL on virtual devices) with the system's DPDK.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --locked --workspace --all-targets
cargo test --locked --workspace
cargo test --locked -p capo-offload -p capo-hw-tests --features capo-offload/dpdk,capo-hw-tests/dpdk
cargo test --locked -p capo-bench --features rte-acl
cargo test --locked -p capo-agent --features dpdk --test api dpdk_port
