// Package profiling lets a developer take a CPU profile of a wasmlet
// service over its whole life, without a listener: with
// WASMLET_CPU_PROFILE_DIR set, Start writes <dir>/<service>-<pid>.pprof
// until the stop function it returns is called (on a clean exit).
//
// The variable is inherited, so a node agent's supervised executor is
// profiled with it. The benchmark suite sets it with -cpu-profile; read a
// profile with `go tool pprof -top BINARY FILE`.
package profiling

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
)

// EnvDir names the directory profiles are written to.
const EnvDir = "WASMLET_CPU_PROFILE_DIR"

// Start begins a CPU profile of service when EnvDir is set, and returns
// the function that ends it. Without EnvDir, or if the profile cannot be
// started, the returned function does nothing; the error says why.
func Start(service string) (stop func(), err error) {
	dir := os.Getenv(EnvDir)
	if dir == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return func() {}, fmt.Errorf("cpu profile: %w", err)
	}
	f, err := os.Create(filepath.Join(dir, fmt.Sprintf("%s-%d.pprof", service, os.Getpid())))
	if err != nil {
		return func() {}, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return func() {}, fmt.Errorf("cpu profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
