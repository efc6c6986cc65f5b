#!/usr/bin/env bash
# Renders every manifest in deploy/ and validates it offline:
#   - each overlay with kustomize (kubectl's built-in one; Debian's kubernetes-client
#     when no kubectl is installed);
#   - capo's CalicoVPP patches applied to a stand-in of CalicoVPP's objects;
#   - every rendered object against Kubernetes' schemas (kubernetes-validate, strict);
#   - the settings that must agree across objects (scripts/deploy_check.py), and
#     every flag the manifests pass to capo's binaries against the binaries' --help.
#
#   scripts/deploy-check.sh [CAPO_BIN_DIR]     (default: target/debug)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug}
k8s_version=${CAPO_K8S_VERSION:-1.30}

source scripts/apt.sh
command -v kubectl >/dev/null 2>&1 || capo_apt_install deploy-check kubernetes-client
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || capo_apt_install deploy-check python3-venv

work=$(mktemp -d "${TMPDIR:-/tmp}/capo-deploy.XXXXXX")
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q kubernetes-validate==1.37.0 pyyaml

mkdir -p "$work/rendered"
for overlay in deploy/overlays/*/; do
    name=$(basename "$overlay")
    kubectl kustomize "$overlay" >"$work/rendered/$name.yaml"
    echo "deploy-check: rendered $overlay ($(grep -c '^kind:' "$work/rendered/$name.yaml") objects)" >&2
done
# kustomize only reads patches below its root: assemble the CalicoVPP check there.
mkdir -p "$work/calico-vpp"
cp deploy/tests/calicovpp-standin.yaml deploy/calico-vpp-patches/*.yaml "$work/calico-vpp/"
{
    echo "resources:"
    echo "  - calicovpp-standin.yaml"
    echo "patchesStrategicMerge:"
    for p in deploy/calico-vpp-patches/*.yaml; do echo "  - $(basename "$p")"; done
} >"$work/calico-vpp/kustomization.yaml"
kubectl kustomize "$work/calico-vpp" >"$work/rendered/calico-vpp-patched.yaml"
echo "deploy-check: rendered deploy/calico-vpp-patches on CalicoVPP's stand-in" >&2

"$work/venv/bin/kubernetes-validate" --strict -k "$k8s_version" "$work"/rendered/*.yaml
"$work/venv/bin/python" scripts/deploy_check.py "$bin" "$work/rendered"
