#!/usr/bin/env bash
# Prepares a real VPP 26.06 for capo's VPP tests: unpacks the build in shared/vpp/
# into DIR/vpp, installs its runtime packages and the test tools, and builds capo's plugin against its
# headers into DIR/capo/libcapo_vpp_plugin.so. Then `CAPO_VPP=DIR cargo test -p
# capo-agent --test vpp_real` (as root) runs the tests on it.
#
#   scripts/vpp-setup.sh DIR [TARBALL]
#
# CAPO_PROFILE=release builds the plugin optimised (for `capo-bench vpp`); the
# default is the debug build the tests use.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: scripts/vpp-setup.sh DIR [TARBALL]}
tarball=${2:-../shared/vpp/vpp-26.06-x86_64-debian12.tar.gz}
if [ ! -f "$tarball" ]; then
    echo "vpp-setup: $tarball not found: VPP 26.06's build (shared/vpp/) is needed" >&2
    exit 1
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

source scripts/apt.sh
capo_apt_install vpp-setup libunwind8 libssl3 iproute2 netcat-openbsd iputils-ping

if [ ! -x "$dir/vpp/bin/vpp" ]; then
    echo "vpp-setup: unpacking $(basename "$tarball") into $dir" >&2
    tar -C "$dir" -xzf "$tarball"
fi

inc="$dir/vpp/include"
lib="$dir/vpp/lib/x86_64-linux-gnu"
profile=${CAPO_PROFILE:-debug}
case "$profile" in
    debug) flags=() ;;
    release) flags=(--release) ;;
    *) echo "vpp-setup: CAPO_PROFILE is debug or release, not $profile" >&2; exit 2 ;;
esac
echo "vpp-setup: building the plugin ($profile) against $inc" >&2
CFLAGS="-I$inc" BINDGEN_EXTRA_CLANG_ARGS="-I$inc" LIBRARY_PATH="$lib" \
    cargo build --locked "${flags[@]}" -p capo-vpp-plugin --features vpp
mkdir -p "$dir/capo"
cp "target/$profile/libcapo_vpp_plugin.so" "$dir/capo/"
echo "vpp-setup: ready; CAPO_VPP=$dir" >&2
