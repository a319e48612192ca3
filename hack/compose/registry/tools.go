//go:build tools

// Package registry pins the OCI registry (CNCF distribution) that the compose
// stack runs. It is its own module so that distribution's dependencies never
// enter the main module; build.sh builds the static binary from it.
package registry

import (
	_ "github.com/distribution/distribution/v3/cmd/registry"
)
