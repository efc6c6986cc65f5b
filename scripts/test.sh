#!/usr/bin/env bash
# Builds everything and runs every test of the workspace, then the DPDK-backed
# tests (EAL on virtual devices) with the system's DPDK, then the fuzz targets for
# CAPO_FUZZ_SECONDS each (default 30; 0 skips them), the lints (scripts/lint.sh), then
# the real-VPP tests, the TRex tooling (scripts/trex-check.sh), then the Kubernetes
# manifests (scripts/deploy-check.sh) and the OCI image (scripts/image.sh, as root):
# VPP 26.06 from shared/vpp/ unpacked into a private directory, capo's plugin built
# against it, pods as network namespaces (needs root). Set CAPO_VPP=DIR to reuse an
# unpacked VPP; without shared/vpp/ (or root) the VPP tests skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# Disk is what a CI machine may lack: a fresh clone gains nothing from incremental
# artefacts, and full debug info is most of target/'s size (line tables keep
# backtraces). Each stage's footprint is printed so a full disk says where it filled.
if [ "${CI:-}" = "true" ]; then
    export CARGO_INCREMENTAL=0
    export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
fi
disk_report() {
    echo "test: disk after $1: $(du -sh target 2>/dev/null | cut -f1) in target/," \
        "$(df -h --output=avail . | tail -1 | tr -d ' ') free" >&2
}
disk_report "set-up"
cargo build --locked --workspace --all-targets
disk_report "the workspace build"
cargo test --locked --workspace
disk_report "the workspace tests"
cargo test --locked -p capo-offload -p capo-hw-tests --features capo-offload/dpdk,capo-hw-tests/dpdk
cargo test --locked -p capo-bench --features rte-acl
# The benchmark gate's logic (bench/gate/gate.py) on synthetic rows.
python3 -m unittest discover -s bench/gate/tests
cargo test --locked -p capo-agent --features dpdk --test api dpdk_port
if [ "${CAPO_FUZZ_SECONDS:-30}" != 0 ]; then
    bash scripts/fuzz.sh "${CAPO_FUZZ_SECONDS:-30}"
    disk_report "the fuzz targets"
    # The sanitized builds serve nothing after this; a CI disk wants the room back.
    if [ "${CI:-}" = "true" ]; then
        rm -rf host-agent/fuzz/target
    fi
fi

vpp_tarball=../shared/vpp/vpp-26.06-x86_64-debian12.tar.gz
if [ -z "${CAPO_VPP:-}" ] && [ -f "$vpp_tarball" ] && [ "$(id -u)" -eq 0 ]; then
    CAPO_VPP=$(mktemp -d "${TMPDIR:-/tmp}/capo-vpp.XXXXXX")
    trap 'rm -rf "$CAPO_VPP"' EXIT
fi
if [ -n "${CAPO_VPP:-}" ]; then
    bash scripts/vpp-setup.sh "$CAPO_VPP" "$vpp_tarball"
    export CAPO_VPP
fi
# Formatting, clippy on every feature set (the VPP glue with CAPO_VPP's headers), docs.
bash scripts/lint.sh
# In CI the real-VPP tests must run, not skip.
if [ "${CI:-}" = "true" ]; then
    export CAPO_VPP_REQUIRED=1
fi
disk_report "the lints"
cargo test --locked -p capo-agent --test vpp_real -- --test-threads 1
# The in-VPP benchmark once: it runs, and capo's verdicts inside VPP equal the
# reference's on every packet (it fails otherwise), the established packets sent twice
# over; a debug build's timings mean nothing.
if [ -n "${CAPO_VPP:-}" ]; then
    target/debug/capo-bench vpp --workload w-k8s --runs 1 --repeat-established 2 >/dev/null
fi
# TRex profiles and the NDR/PDR runner; their packets replayed through capo-agent
# built with dpdk (a net_pcap port) and through VPP's packet generator (CAPO_VPP).
cargo build --locked -p capo-agent --features dpdk --bins
bash scripts/trex-check.sh target/debug

# Kubernetes: every manifest rendered and validated offline, against the binaries.
bash scripts/deploy-check.sh target/debug
# The OCI image: buildah as root, the plugin against CAPO_VPP's headers.
if [ "$(id -u)" -eq 0 ] && [ -n "${CAPO_VPP:-}" ]; then
    image_dir=$(mktemp -d "${TMPDIR:-/tmp}/capo-image-out.XXXXXX")
    bash scripts/image.sh "$image_dir/capo.oci.tar"
    rm -rf "$image_dir"
elif [ "${CI:-}" = "true" ]; then
    echo "test: the OCI image needs root and VPP's headers (shared/vpp/)" >&2
    exit 1
else
    echo "test: OCI image skipped: it needs root (buildah) and VPP's headers (CAPO_VPP)" >&2
fi
disk_report "every stage"
