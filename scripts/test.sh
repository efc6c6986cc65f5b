#!/usr/bin/env bash
# Builds everything and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --locked --workspace --all-targets
cargo test --locked --workspace
