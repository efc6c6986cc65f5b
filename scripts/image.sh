#!/usr/bin/env bash
# Builds capo's OCI image with buildah, from Debian packages, without a registry:
#
#   scripts/image.sh [OUT]        (default: target/image/capo-VERSION.oci.tar)
#
# The image holds capo-agent, capoctl and capo-felix-driver (/usr/bin, static) and the
# VPP plugin built against VPP 26.06's headers
# (/usr/lib/capo/vpp_plugins/libcapo_vpp_plugin.so), on a root filesystem of Debian 12
# packages (base-files by default, CAPO_IMAGE_PACKAGES to add) unpacked with dpkg -x:
# no shell, no package manager. It is reproducible: SOURCE_DATE_EPOCH (default: the last commit's time) fixes every timestamp, paths
# are remapped out of the binaries, and the layer is written in a fixed order.
#
# Needs root (buildah with the vfs driver and chroot isolation), and VPP's headers:
# CAPO_VPP=DIR from scripts/vpp-setup.sh, or ../shared/vpp/'s tarball. After the
# build, every binary in the committed image is run with --version.
#
# Load it with `podman load -i OUT` or `skopeo copy oci-archive:OUT docker-daemon:…`;
# on a node: `ctr -n k8s.io images import OUT`.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
source scripts/setup.sh

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
out=${1:-target/image/capo-$version.oci.tar}
tag="localhost/capo:$version"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}

capo_apt_install image buildah

work=$(mktemp -d "${TMPDIR:-/tmp}/capo-image.XXXXXX")
storage="$work/storage"
bah() { buildah --storage-driver vfs --root "$storage" --runroot "$work/run" "$@"; }
containers=()
cleanup() {
    for c in "${containers[@]}"; do bah rm "$c" >/dev/null 2>&1 || true; done
    bah rmi -a -f >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# VPP's headers for the plugin.
vpp=${CAPO_VPP:-}
if [ -z "$vpp" ]; then
    tarball=../shared/vpp/vpp-26.06-x86_64-debian12.tar.gz
    [ -f "$tarball" ] || { echo "image: set CAPO_VPP or provide $tarball" >&2; exit 1; }
    vpp="$work/vpp"
    mkdir -p "$vpp"
    tar -C "$vpp" -xzf "$tarball"
fi
inc="$vpp/vpp/include"
lib="$vpp/vpp/lib/x86_64-linux-gnu"

# Release binaries in a target directory of their own, with nothing of this machine
# (paths) in them. The three programs are linked static (glibc's crt-static, on the
# final link only, so they share every dependency with the plugin's build):
# capo-felix-driver runs inside calico-node's image, whatever its C library. The
# plugin is a shared object that VPP loads.
echo "image: building the release binaries (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)" >&2
target="$root/target/image-build"
export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols
export RUSTFLAGS="--remap-path-prefix=$root=/capo --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
export CFLAGS="-I$inc" BINDGEN_EXTRA_CLANG_ARGS="-I$inc" LIBRARY_PATH="$lib"
cargo build --locked --release --target-dir "$target" -p capo-vpp-plugin --features vpp
bins=(capo-agent capoctl capo-felix-driver)
for b in "${bins[@]}"; do
    cargo rustc --locked --release --target-dir "$target" -p capo-agent --bin "$b" \
        -- -C target-feature=+crt-static
done

rootfs="$work/rootfs"
mkdir -p "$rootfs/usr/bin" "$rootfs/usr/lib/capo/vpp_plugins" "$rootfs/etc" "$rootfs/tmp" \
    "$rootfs/var/run/capo"
for b in "${bins[@]}"; do
    install -m 0755 "$target/release/$b" "$rootfs/usr/bin/$b"
    if ! ldd "$rootfs/usr/bin/$b" 2>&1 | grep -qE "statically linked|not a dynamic executable"; then
        echo "image: $b is not static: $(ldd "$rootfs/usr/bin/$b" 2>&1 | head -3)" >&2
        exit 1
    fi
done
install -m 0644 "$target/release/libcapo_vpp_plugin.so" "$rootfs/usr/lib/capo/vpp_plugins/"

# The Debian base: the packages listed (base-files: /etc/os-release and the FHS
# layout) at the versions Debian 12's mirror serves (recorded in the image's labels),
# unpacked with dpkg -x (no maintainer scripts, no shell, no package manager).
packages=${CAPO_IMAGE_PACKAGES:-base-files}
echo "image: Debian packages: $packages" >&2
mkdir -p "$work/debs"
chmod 0777 "$work/debs"
(cd "$work/debs" && for p in $packages; do apt-get download -qq "$p"; done)
debs=$(for deb in "$work"/debs/*.deb; do
    echo "$(dpkg-deb -f "$deb" Package)=$(dpkg-deb -f "$deb" Version)"
done | paste -sd,)
for deb in "$work"/debs/*.deb; do
    dpkg -x "$deb" "$rootfs"
done
# Debian 12 is merged-/usr: the loader path /lib64 must resolve.
for d in bin lib lib64 sbin; do
    [ -e "$rootfs/$d" ] || ln -s "usr/$d" "$rootfs/$d"
done
# Only what runs is kept: documentation and locales of the packages are dropped.
rm -rf "$rootfs/usr/share/doc" "$rootfs/usr/share/locale" "$rootfs/usr/share/man" \
    "$rootfs/usr/share/lintian"
printf 'root:x:0:0:root:/:/usr/sbin/nologin\ncapo:x:10001:10001:capo:/:/usr/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\ncapo:x:10001:\n' >"$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"
# One fixed order and timestamp for every file.
find "$rootfs" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
tar -C "$rootfs" --sort=name --owner=0 --group=0 --numeric-owner \
    --mtime="@$SOURCE_DATE_EPOCH" -cf "$work/rootfs.tar" .

echo "image: assembling $tag" >&2
ctr=$(bah from scratch)
containers+=("$ctr")
bah add --quiet "$ctr" "$work/rootfs.tar" / >/dev/null
git_rev=$(git rev-parse HEAD 2>/dev/null || echo unknown)
bah config \
    --entrypoint '["/usr/bin/capo-agent"]' --cmd '[]' \
    --env CAPO_LOG=info \
    --label org.opencontainers.image.title=capo \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.revision="$git_rev" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --label org.opencontainers.image.base.name=debian:12-packages \
    --label dev.capo.debian-packages="$debs" \
    "$ctr"
bah commit --quiet --format oci --timestamp "$SOURCE_DATE_EPOCH" "$ctr" "$tag" >/dev/null

# The committed image runs its binaries (chroot isolation: no runtime needed).
check=$(bah from "$tag")
containers+=("$check")
for b in "${bins[@]}"; do
    v=$(bah run --isolation chroot "$check" -- "/usr/bin/$b" --version)
    echo "image: $b in the image: $v" >&2
    case "$v" in *"$version"*) ;; *) echo "image: $b --version said '$v'" >&2; exit 1 ;; esac
done
if bah run --isolation chroot "$check" -- /bin/sh -c true >/dev/null 2>&1; then
    echo "image: a shell is present in the image; it must not be" >&2
    exit 1
fi

mkdir -p "$(dirname "$out")"
rm -f "$out"
bah push --quiet "$tag" "oci-archive:$out:$tag"
digest=$(bah inspect --format '{{.FromImageDigest}}' "$check")
echo "image: wrote $out ($tag, $(du -h "$out" | cut -f1), image digest $digest)" >&2
