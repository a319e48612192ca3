//go:build tools

// Package controlplane pins the Kubernetes control plane and etcd that wasmlet's
// tests and local stack run. It is its own module so that k8s.io/kubernetes never
// enters the main module's dependency graph; build.sh builds the binaries from it.
package controlplane

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
