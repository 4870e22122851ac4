//go:build tools

// Package promadapter pins the prometheus-adapter release that `make bench-peers` measures this
// adapter against (see README.md beside this file). It holds no code:
// scripts/build-prometheus-adapter.sh builds sigs.k8s.io/prometheus-adapter/cmd/adapter from this
// module's dependency graph.
package promadapter

import (
	_ "sigs.k8s.io/prometheus-adapter/cmd/adapter"
)
