#!/usr/bin/env bash
# Builds the real kube-apiserver, kube-controller-manager and etcd that the control-plane tests run,
# from the Go modules pinned in crates/e2e/tests/control_plane/go/ (see the README there), into a
# cache outside git. Rebuilds only when a pin changes. Prints the directory that holds the three
# binaries; progress goes to stderr (a line every 30 s while a binary builds).
#
#   scripts/build-control-plane.sh          # build if needed, print the bin directory
#
# First build: 10 to 25 minutes on 2 cores, depending on what else runs (kube-apiserver 7-20 min,
# kube-controller-manager 2-5 min, etcd 1-3 min); later runs return at once. Needs Go (>= the `go` line of the go.mod files) and the
# Go module proxy.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
pins="$root/crates/e2e/tests/control_plane/go"
cache="${WS_CONTROL_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ws-metrics-adapter/control-plane}"

command -v go >/dev/null || {
  echo "build-control-plane: Go is not installed; install Go 1.26 or newer (https://go.dev/dl)" >&2
  exit 1
}

# The pin is everything that decides the binaries: both module graphs, the build recipe below
# (bump `recipe` when the flags or packages change) and the Go version. Not this file's bytes:
# editing a comment or the progress output must not cost a 20-minute rebuild.
recipe="v1: -mod=readonly -buildvcs=false; ldflags -s -w + version stamps; kube-apiserver kube-controller-manager etcd"
key="$(cat "$pins/go.mod" "$pins/go.sum" "$pins/etcd/go.mod" "$pins/etcd/go.sum" \
  | { cat; echo "$recipe"; go env GOVERSION; } | sha256sum | cut -c1-16)"
out="$cache/$key"
if [ -x "$out/kube-apiserver" ] && [ -x "$out/kube-controller-manager" ] && [ -x "$out/etcd" ]; then
  echo "$out"
  exit 0
fi

export GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false"
tmp="$out.partial.$$"
ticker=""
trap 'rm -rf "$tmp"; if [ -n "$ticker" ]; then kill "$ticker" 2>/dev/null || true; fi' EXIT
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
  # Go prints nothing while it compiles; say every 30 s that the build is alive.
  ( while sleep 30; do
      echo "build-control-plane: still building $3 ($((SECONDS - started)) s so far)" >&2
    done ) &
  ticker=$!
  if ! (cd "$1" && go build -ldflags "$ldflags" -o "$tmp/$3" "$2"); then
    echo "build-control-plane: building $3 failed" >&2
    exit 1
  fi
  kill "$ticker" 2>/dev/null || true
  ticker=""
  echo "build-control-plane: $3 built in $((SECONDS - started)) s" >&2
}
build "$pins" k8s.io/kubernetes/cmd/kube-apiserver kube-apiserver
build "$pins" k8s.io/kubernetes/cmd/kube-controller-manager kube-controller-manager
build "$pins/etcd" go.etcd.io/etcd/server/v3 etcd

rm -rf "$out"
mv "$tmp" "$out"
echo "$out"
