package regbench

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/testregistry"
)

// TestQuick runs the benchmark small, so that it cannot rot: the counts
// must hold at any size; the latency target is only reported.
func TestQuick(t *testing.T) {
	if _, err := os.Stat(testregistry.Binary); err != nil {
		t.Skipf("%s is missing: %v", testregistry.Binary, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := Run(ctx, Config{ModuleBytes: 64 << 10, HitIterations: 5, Concurrency: 20})
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	rep.Print(&out)
	t.Log("\n" + out.String())
	rep.HitP50 = 0 // latency on a shared test machine is not a test
	if err := rep.Check(); err != nil {
		t.Fatal(err)
	}
}
