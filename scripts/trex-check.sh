#!/usr/bin/env bash
# capo's TRex tooling (bench/trex/) without a TRex server: installs TRex's STL client
# library from PyPI (lbr-trex-client, which packages TRex's trex.stl.api), scapy,
# matplotlib and grpcio in a private virtualenv, then runs bench/trex/tests: the
# profiles load and build their streams (W-k8s and W-large from `capo-bench traffic
# --export`), their packets go to pcap, equal the export's, and are replayed through
# capo (capo-agent built with the dpdk feature on a net_pcap port; VPP's packet
# generator with capo's plugin when CAPO_VPP names an unpacked VPP), the NDR/PDR
# search runs against a simulated DUT.
#
#   scripts/trex-check.sh [CAPO_BIN_DIR]     (default: target/debug)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(cd "${1:-target/debug}" && pwd)

source scripts/apt.sh
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || capo_apt_install trex-check python3-venv
work=$(mktemp -d "${TMPDIR:-/tmp}/capo-trex.XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q lbr-trex-client==3.4.0 scapy matplotlib grpcio grpcio-tools pytest
CAPO_BIN="$bin" "$work/venv/bin/python" -m pytest -q -rs -p no:cacheprovider bench/trex/tests
