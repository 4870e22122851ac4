//go:build tools

// Package etcd pins the etcd server the control-plane tests run. A separate
// module because `go install go.etcd.io/etcd/server/v3@version` refuses
// modules with replace directives, and because etcd's dependency graph must
// not move Kubernetes' (and the other way round).
package etcd

import _ "go.etcd.io/etcd/server/v3"
