#!/usr/bin/env bash
# Installs what capo's build needs on a fresh Debian 12 machine (idempotent).
# Sourced by scripts/demo.sh and scripts/test.sh.
set -euo pipefail

# Debian packages the workspace builds against (none are needed for the policy
# core; later crates add theirs here).
CAPO_APT_PACKAGES=(pkg-config libdpdk-dev dpdk-dev clang libclang-dev)

missing=()
for p in "${CAPO_APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found: install a stable Rust toolchain (rustup) first" >&2
    exit 1
fi
