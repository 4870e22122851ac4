#!/usr/bin/env bash
# Builds the real kube-apiserver, kube-controller-manager and etcd that the control-plane tests run,
# from the Go modules pinned in tests/control_plane/go/ (see the README there), into a cache outside
# git. Rebuilds only when a pin changes. Prints the directory that holds the three binaries.
#
#   scripts/build-control-plane.sh          # build if needed, print the bin directory
#
# First build: about 10 minutes on 2 cores (kube-apiserver ~7 min, kube-controller-manager ~2 min,
# etcd ~1 min); later runs return at once. Needs Go (>= the `go` line of the go.mod files) and the
# Go module proxy.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
pins="$root/tests/control_plane/go"
cache="${WS_CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ws-metrics-adapter/control-plane}"

command -v go >/dev/null || {
  echo "build-control-plane: Go is not installed; install Go 1.26 or newer (https://go.dev/dl)" >&2
  exit 1
}

# The pin is everything that decides the binaries: both module graphs, this script, the Go version.
key="$(cat "$pins/go.mod" "$pins/go.sum" "$pins/etcd/go.mod" "$pins/etcd/go.sum" "$0" \
  | { cat; go env GOVERSION; } | sha256sum | cut -c1-16)"
out="$cache/$key"
if [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ] && [ -x "$out/etcd" ]; then
  echo "$out"
  exit 0
fi

export GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false"
tmp="$out.partial.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"

# The binaries report the pinned release (kubectl and the aggregator log it; version skew checks
# read it), the way the Kubernetes Makefile stamps them.
version="$(cd "$pins" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
major="${version#v}"; major="${major%%.*}"
minor="${version#v*.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean"
done

build() { # dir, package, binary name
  local started=$SECONDS
  echo "build-control-plane: building $3 ($2)..." >&2
  (cd "$1" && go build -ldflags "$ldflags" -o "$tmp/$3" "$2")
  echo "build-control-plane: $3 built in $((SECONDS - started)) s" >&2
}
build "$pins" k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver
build "$pins" k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager
build "$pins/etcd" go.etcd.io/etcd/server/v3 etcd

rm -rf "$out"
mv "$tmp" "$out"
echo "$out"
