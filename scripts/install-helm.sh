#!/usr/bin/env bash
# Builds helm from its Go module (helm.sh/helm/v3), pinned, into the tools directory, and prints
# the binary's path as the last line of stdout. A binary already there that reports the pinned
# version is reused, so only the first run builds (about 1.5 minutes on 2 cores with a warm Go
# module cache; longer when the modules must be downloaded from the Go module proxy).
#
# Usage: helm=$(scripts/install-helm.sh | tail -n1)
# Needs: bash, Go (the version helm's go.mod asks for), network to the Go module proxy on first run.
# Env:   TOOLS_DIR  where the pinned tools are installed (default: ~/.cache/ws-metrics-adapter/tools)
# Exit:  0 helm ready (path printed); 2 setup failed.
set -euo pipefail

# Pinned: scripts/validate-chart.sh lints and renders the chart with exactly this helm.
HELM_VERSION=v3.21.4
# The Kubernetes version helm's release build stamps in (from its k8s.io/client-go v0.36.2: 1.36):
# the default .Capabilities.KubeVersion of `helm template` and `helm lint`. Without it a
# `go install` build says v1.20.
HELM_K8S_MAJOR=1 HELM_K8S_MINOR=36

TOOLS_DIR=${TOOLS_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/ws-metrics-adapter/tools}
dir="$TOOLS_DIR/helm-$HELM_VERSION"
helm="$dir/helm"

die() { echo "install-helm: $*" >&2; exit 2; }

helm_version() { # prints e.g. v3.21.4, or nothing
    "$1" version --template '{{ .Version }}' 2>/dev/null || true
}

if [[ "$(helm_version "$helm")" != "$HELM_VERSION" ]]; then
    command -v go >/dev/null || die "helm $HELM_VERSION not in $dir and no Go to build it (https://go.dev/dl)"
    echo "install-helm: building helm $HELM_VERSION into $dir (go install; a few minutes the first time)" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    # The -X flags are the ones helm's Makefile sets for a release: without them `helm version`
    # says only "v3.21" (the source's default), not the module version built.
    ldflags="-w -s -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in pkg/lint/rules pkg/chartutil; do
        ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=$HELM_K8S_MAJOR"
        ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$HELM_K8S_MINOR"
    done
    GOBIN="$dir" CGO_ENABLED=0 GOFLAGS="-buildvcs=false -trimpath" \
        go install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2 \
        || die "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION failed"
    have=$(helm_version "$helm")
    [[ "$have" == "$HELM_VERSION" ]] || die "built $helm but it reports version '${have}', not $HELM_VERSION"
fi
echo "$helm"
