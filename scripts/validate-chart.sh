#!/usr/bin/env bash
# Validates the Helm chart charts/ws-metrics-adapter offline (no cluster): `helm lint --strict`
# with each value set, then `helm template` of each set checked like the kustomize manifests
# (scripts/lib/validate-objects.sh: every object against the Kubernetes schemas with
# `kubernetes-validate --strict`, references between objects), every namespace in each render
# the release namespace, and the renders of the defaults, of servingTLS.mode=certManager, of
# externalMetrics.enabled, of every monitoring object and of source.kind=remote-write compared
# object by object with `kubectl kustomize` of manifests/, overlays/cert-manager/,
# overlays/external-metrics/, the base with overlays/monitoring/ and overlays/remote-write/
# (scripts/lib/compare_rendered.py), so that chart and kustomize cannot drift apart.
#
# Usage: scripts/validate-chart.sh
# Needs: bash, kubectl (built-in kustomize), Go (helm is built by scripts/install-helm.sh on
#        first run), python3 with pip (network to PyPI on first run).
# Env:   PYTHON, TOOLS_DIR as scripts/validate-manifests.sh.
# Exit:  0 all checks pass; 1 a check failed; 2 setup failed (helm missing and not buildable
#        included: never skipped).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART="$REPO_ROOT/charts/ws-metrics-adapter"
VALUES="$REPO_ROOT/scripts/testdata/chart-values"
# shellcheck source=lib/validate-objects.sh
source "$REPO_ROOT/scripts/lib/validate-objects.sh"

# set name : release namespace : values file under $VALUES ("" = the chart's defaults)
SETS=("chart:ws-metrics:"
      "chart-ns:ws-metrics-other:"
      "certmgr:ws-metrics:cert-manager.yaml"
      "external:ws-metrics:external-metrics.yaml"
      "monitoring:ws-metrics:monitoring.yaml"
      "prom:ws-metrics:prometheus.yaml"
      "remote:ws-metrics:remote-write.yaml"
      "remote-ns:ws-metrics-other:remote-write-custom.yaml"
      "all:ws-metrics-other:everything.yaml")

# CRD kinds: kubernetes-validate has the built-in Kubernetes schemas only.
NO_SCHEMA_KINDS=(
    ["monitoring.coreos.com/v1 ServiceMonitor"]="Prometheus Operator CRD, no schema offline; its selector and port are checked against the Service"
    ["monitoring.coreos.com/v1 PrometheusRule"]="Prometheus Operator CRD, no schema offline; its rules are checked by scripts/check-monitoring.sh (promtool)"
    ["cert-manager.io/v1 Issuer"]="cert-manager CRD, no schema offline"
    ["cert-manager.io/v1 Certificate"]="cert-manager CRD, no schema offline"
)

command -v kubectl >/dev/null || kv_die "kubectl not found (needed for 'kubectl kustomize')"
helm=$("$REPO_ROOT/scripts/install-helm.sh" | tail -n1) || kv_die "no helm (scripts/install-helm.sh failed)"
[[ -x "$helm" ]] || kv_die "scripts/install-helm.sh printed '$helm', not an executable"
kv_setup

# The monitoring files are links into overlays/monitoring/ (one copy in the repository); helm
# follows them, and refuses the whole chart when one dangles.
dangling=0
for f in "$CHART"/files/*; do
    if [[ ! -e "$f" ]]; then
        echo "FAIL  ${f#"$REPO_ROOT"/} links to $(readlink "$f"), which does not exist" \
            "(overlays/monitoring/ holds the alerts and the dashboard; helm refuses the whole chart while a link dangles)"
        dangling=1
    fi
done
[[ $dangling -eq 0 ]] || exit 1

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# helm prints one line per followed link on every run; shown once here instead.
quiet_links() { grep -v 'found symbolic link in path' "$1" >&2 || true; }
echo "note  helm follows $(find "$CHART/files" -type l | wc -l) links in charts/ws-metrics-adapter/files/ (into overlays/monitoring/)"

rc=0
for set in "${SETS[@]}"; do
    IFS=: read -r name ns file <<<"$set"
    args=(--namespace "$ns")
    [[ -z "$file" ]] || args+=(--values "$VALUES/$file")
    if "$helm" lint --strict "${args[@]}" "$CHART" >"$WORK/lint.out" 2>"$WORK/lint.err"; then
        echo "ok    lint      $name (helm lint --strict${file:+ -f $file})"
    else
        echo "FAIL  lint      $name (helm lint --strict${file:+ -f $file})"
        sed 's/^/      /' "$WORK/lint.out"; quiet_links "$WORK/lint.err"; rc=1
    fi
    if ! "$helm" template ws-metrics-adapter "$CHART" "${args[@]}" >"$WORK/$name.yaml" 2>"$WORK/template.err"; then
        echo "FAIL  template  $name"; quiet_links "$WORK/template.err"; exit 1
    fi
done
# chart set : the kustomization its render must equal
COMPARE=("chart:manifests" "certmgr:overlays/cert-manager" "external:overlays/external-metrics"
         "monitoring:scripts/testdata/base-and-monitoring" "remote:overlays/remote-write")
for pair in "${COMPARE[@]}"; do
    kubectl kustomize "$REPO_ROOT/${pair#*:}" >"$WORK/kustomize-${pair%%:*}.yaml" \
        || { echo "FAIL kubectl kustomize ${pair#*:}" >&2; exit 1; }
done

names=()
for set in "${SETS[@]}"; do names+=("${set%%:*}"); done
for pair in "${COMPARE[@]}"; do names+=("kustomize-${pair%%:*}"); done
validate_sets "$WORK" "${names[@]}" || rc=1
for set in "${SETS[@]}"; do
    IFS=: read -r name ns _ <<<"$set"
    py "$VALIDATE_LIB_DIR/check_namespaces.py" "$WORK/index.tsv" "$name" "$ns" || rc=1
done
for pair in "${COMPARE[@]}"; do
    py "$VALIDATE_LIB_DIR/compare_rendered.py" "$WORK/index.tsv" "${pair%%:*}" "kustomize-${pair%%:*}" "${pair#*:}" || rc=1
done
exit $rc
