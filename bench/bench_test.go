package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/localcluster"
)

// TestShortSuite runs the benchmark suite with small counts, so that a
// broken benchmark fails `make test`. It checks that every figure was
// measured, not that targets are met.
func TestShortSuite(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the suite needs a local control plane")
	}
	if _, err := localcluster.FindBinDir(); err != nil {
		if os.Getenv(localcluster.EnvRequire) != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	work := t.TempDir()
	bin := filepath.Join(work, "bin")
	if err := Build(filepath.Join("..", ""), bin); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s, err := StartStack(ctx, work, bin, "wasmtime")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Error(err)
		}
	})
	r, err := Run(ctx, s, ShortOptions)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range r.Figures {
		// CPU figures may be 0 (the node agent is idle while the no-op node
		// works, and asleep with its pods), and so may counts whose target
		// is 0, the API server's closes of watches (none, in a burst it
		// keeps up with), refused status writes and the threads sleeping
		// pods add (none: the idle threads are ended), and the executor's
		// CPU per start of a few idle pods (under one 10 ms tick), and the CPU
		// of processes outside the benchmark during cold starts (none on a
		// quiet machine).
		zeroOK := strings.HasPrefix(f.Name, "CPU in") || strings.HasPrefix(f.Name, "executor CPU per pod start") || strings.HasPrefix(f.Target, "max ≤ 0 ") ||
			strings.HasPrefix(f.Name, "pod watches closed") || strings.Contains(f.Name, "CPU, all pods asleep") ||
			strings.Contains(f.Name, "(409 Conflict)") || strings.Contains(f.Name, "OS threads per sleeping") ||
			strings.Contains(f.Name, "CPU outside the benchmark")
		if f.Samples == 0 || (f.Max <= 0 && !zeroOK) {
			t.Errorf("figure %q has no measurement: %+v", f.Name, f)
		}
	}
	md := r.Markdown()
	for _, want := range []string{"pod start, single, bench-wasmlet", "burst of 10, all running, bench-noop", "idle node memory", "ratio wasmlet / no-op node", "CPU in burst of 10 on bench-wasmlet: nodeagent", "nodeagent (with NATS) CPU per pod start, burst of 10, bench-wasmlet", "nodeagent (with NATS) CPU per pod start, single, bench-wasmlet", "nodeagent (with NATS) CPU per pod start, density 10", "pod watches closed by the API server in burst of 10 on bench-wasmlet", "density 10: node memory per pod (PSS)", "density 10: pod status writes per pod", "registry cache: hit latency", "pull, uncached module"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	t.Logf("\n%s", md)
}

func TestValuesQuantiles(t *testing.T) {
	f := Values("x", "m", "ms", []float64{5, 1, 3, 2, 4})
	if f.Min != 1 || f.Max != 5 || f.Median != 3 || f.P99 != 5 || f.Samples != 5 {
		t.Fatalf("figure = %+v", f)
	}
	f.Hold("median", 2)
	if f.Met == nil || *f.Met {
		t.Errorf("median 3 met a target of 2")
	}
	f.Hold("max", 5)
	if f.Met == nil || !*f.Met {
		t.Errorf("max 5 did not meet a target of 5")
	}
}
