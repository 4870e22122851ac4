#!/usr/bin/env bash
# Validates the kustomize output of manifests/, manifests/examples/, overlays/external-metrics/,
# overlays/cert-manager/, overlays/monitoring/ and overlays/remote-write/ offline (no cluster):
# every rendered object against the Kubernetes OpenAPI schemas with `kubernetes-validate
# --strict`, then a few cross-object references no schema can express (scripts/lib/, shared
# with scripts/validate-chart.sh), then that every namespace named in the base, and in the base
# moved to another namespace by scripts/testdata/other-namespace, is the one it is installed in.
#
# Usage: scripts/validate-manifests.sh
# Needs: bash, kubectl (built-in kustomize), python3 with pip (network to PyPI on first run).
# Env:   PYTHON     interpreter to use (default: python3)
#        TOOLS_DIR  where the pinned tools are installed (default: ~/.cache/ws-metrics-adapter/tools)
# Exit:  0 all objects valid; 1 validation failed; 2 setup failed.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=lib/validate-objects.sh
source "$REPO_ROOT/scripts/lib/validate-objects.sh"

# kustomization directory and a short name for each rendered set
SETS=("base:manifests" "examples:manifests/examples" "external:overlays/external-metrics"
      "certmgr:overlays/cert-manager" "monitoring:overlays/monitoring"
      "remote:overlays/remote-write" "otherns:scripts/testdata/other-namespace")
# set -> the namespace every reference in it must name
declare -A NAMESPACE_OF=([base]=ws-metrics [external]=ws-metrics [certmgr]=ws-metrics
                         [monitoring]=ws-metrics [remote]=ws-metrics [otherns]=ws-metrics-other)
# CRD kinds: kubernetes-validate has the built-in Kubernetes schemas only. Each is skipped with
# the reason printed, and says what checks it instead.
NO_SCHEMA_KINDS=(
    ["cert-manager.io/v1 Issuer"]="cert-manager CRD, no schema offline"
    ["cert-manager.io/v1 Certificate"]="cert-manager CRD, no schema offline; its DNS names are checked by the namespace check"
    ["monitoring.coreos.com/v1 ServiceMonitor"]="Prometheus Operator CRD, no schema offline; its selector and port are checked against the base Service"
    ["monitoring.coreos.com/v1 PrometheusRule"]="Prometheus Operator CRD, no schema offline; its rules are checked by scripts/check-monitoring.sh (promtool)"
)

command -v kubectl >/dev/null || kv_die "kubectl not found (needed for 'kubectl kustomize')"
kv_setup

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

for set in "${SETS[@]}"; do
    name=${set%%:*} dir=${set#*:}
    kubectl kustomize "$REPO_ROOT/$dir" >"$WORK/$name.yaml" \
        || { echo "FAIL kubectl kustomize $dir" >&2; exit 1; }
done

rc=0
validate_sets "$WORK" "${SETS[@]%%:*}" || rc=1
for name in "${!NAMESPACE_OF[@]}"; do
    py "$VALIDATE_LIB_DIR/check_namespaces.py" "$WORK/index.tsv" "$name" "${NAMESPACE_OF[$name]}" || rc=1
done
exit $rc
