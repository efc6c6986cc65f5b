#!/usr/bin/env bash
# Installs what capo's build needs on a fresh Debian 12 machine (idempotent).
# Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail

# Debian packages the workspace builds against (none are needed for the policy
# core; later crates add theirs here), and python3 for the benchmark gate's tests.
CAPO_APT_PACKAGES=(pkg-config libdpdk-dev dpdk-dev clang libclang-dev python3)

source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"
capo_apt_install setup "${CAPO_APT_PACKAGES[@]}"

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found: install a stable Rust toolchain (rustup) first" >&2
    exit 1
fi
