//go:build tools

// Package metricsserver pins the metrics-server that wasmlet's `kubectl top`
// end-to-end test runs beside the control plane. It is its own module so that
// metrics-server's dependencies (k8s.io v0.36, prometheus) never enter the main
// module's graph; build.sh builds the binary from it.
package metricsserver

import (
	_ "sigs.k8s.io/metrics-server/cmd/metrics-server"
)
