//go:build tools

// Package controlplane pins the Kubernetes release whose kube-apiserver and
// kube-controller-manager the control-plane tests run (see README.md beside
// this file). It holds no code: scripts/build-control-plane.sh builds the two
// commands from this module's dependency graph.
package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
