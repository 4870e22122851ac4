#!/usr/bin/env bash
# Builds prometheus-adapter (sigs.k8s.io/prometheus-adapter, the peer `make bench-peers` measures
# this adapter against) from its Go module, pinned, into the tools directory, and prints the
# binary's path as the last line of stdout. The build is keyed by the pins (go.mod, go.sum), the
# recipe and the Go version; a binary already there is reused, so only the first run builds (a few
# minutes on 2 cores, longer when the modules must be downloaded). The pinned go.mod requires the
# release alone, so the selected versions are the release's own (go.sum checks them).
#
# Usage: adapter=$(scripts/build-prometheus-adapter.sh | tail -n1)
# Needs: bash, Go (>= the `go` line of the pinned go.mod), network to the Go module proxy on first run.
# Env:   TOOLS_DIR  where the pinned tools are installed (default: ~/.cache/ws-metrics-adapter/tools)
# Exit:  0 binary ready (path printed); 2 setup failed.
set -euo pipefail

# Pinned in crates/e2e/benches/prometheus-adapter/ (go.mod requires the release; go.sum is its
# graph). NB: `go install MODULE/cmd/adapter@VERSION` would need no pin file, but it reads the
# module's version list (for deprecation notices), which the module proxy here refuses (403).
MODULE=sigs.k8s.io/prometheus-adapter
root="$(cd "$(dirname "$0")/.." && pwd)"
pins="$root/crates/e2e/benches/prometheus-adapter"

die() { echo "build-prometheus-adapter: $*" >&2; exit 2; }
command -v go >/dev/null || die "Go is not installed; install Go 1.26 or newer (https://go.dev/dl)"

VERSION="$(cd "$pins" && go list -m -f '{{.Version}}' "$MODULE")" || die "reading the pin in $pins failed"
# The pin is everything that decides the binary: the module graph, the build recipe below (bump
# `recipe` when the flags change) and the Go version; not this file's bytes.
recipe="v1: -mod=readonly -buildvcs=false -trimpath; CGO_ENABLED=0; ldflags -s -w; cmd/adapter"
key="$(cat "$pins/go.mod" "$pins/go.sum" | { cat; echo "$recipe"; go env GOVERSION; } | sha256sum | cut -c1-16)"
TOOLS_DIR=${TOOLS_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/ws-metrics-adapter/tools}
dir="$TOOLS_DIR/prometheus-adapter-$VERSION-$key"
bin="$dir/adapter"

# `go version -m` prints the module a Go binary's main package came from as
# "mod<TAB>path<TAB>version<TAB>sum" (here the required release, not this pin module); the
# adapter has no --version flag of its own.
built_version() {
    go version -m "$1" 2>/dev/null | awk -v m="$MODULE" '$1 == "mod" && $2 == m { print $3 }' || true
}

if [[ "$(built_version "$bin")" != "$VERSION" ]]; then
    echo "build-prometheus-adapter: building $MODULE/cmd/adapter $VERSION into $dir (a few minutes the first time)" >&2
    rm -rf "$dir"
    mkdir -p "$dir.partial.$$"
    trap 'rm -rf "$dir.partial.$$"' EXIT
    (cd "$pins" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false -trimpath"         go build -ldflags "-s -w" -o "$dir.partial.$$/adapter" "$MODULE/cmd/adapter") >&2 \
        || die "go build $MODULE/cmd/adapter $VERSION failed"
    mv "$dir.partial.$$" "$dir"
    have=$(built_version "$bin")
    [[ "$have" == "$VERSION" ]] || die "built $bin but its build info says '${have}', not $VERSION"
fi
echo "$bin"
