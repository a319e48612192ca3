package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestOneEngineBuilds builds the executor as make build ships it, one
// engine each (wazero's without cgo, wasmtime's with the C linker's
// --gc-sections, both without gRPC's tracing), runs each on its engine against real
// NATS and a real registry cache, and checks that it refuses the other
// engine saying it was built without it.
func TestOneEngineBuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the executor binary twice")
	}
	// Tags and link flags as in the Makefile.
	for _, b := range []struct{ tag, has, lacks, cgo, ldflags string }{
		{"nowazero", "wasmtime", "wazero", "1", "-extldflags=-Wl,--gc-sections"},
		{"nowasmtime", "wazero", "wasmtime", "0", ""},
	} {
		t.Run(b.has, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
			defer cancel()
			bin := filepath.Join(t.TempDir(), "executor")
			build := exec.CommandContext(ctx, "go", "build", "-tags", "grpcnotrace,"+b.tag, "-ldflags", b.ldflags, "-o", bin, ".")
			build.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
			if out, err := build.CombinedOutput(); err != nil {
				t.Fatalf("go build -tags %s: %v\n%s", b.tag, err, out)
			}
			out, err := exec.CommandContext(ctx, bin, "--listen", "unix:///nonexistent/e.sock", "--registry", "unix:///nonexistent/r.sock", "--engine", b.lacks).CombinedOutput()
			if want := "--engine " + b.lacks + ": this executor was built without it (-tags " + b.tag; err == nil || !strings.Contains(string(out), want) {
				t.Errorf("--engine %s on a %s-only build: %v %q, want an error saying %q", b.lacks, b.has, err, out, want)
			}
			testExecutorProcess(t, ctx, bin, b.has)
		})
	}
}
