package bench

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestExecutorSection runs the executor section alone, without the control
// plane (TestShortSuite runs it within the suite): set
// WASMLET_BENCH_EXECUTOR=short or full.
//
//	WASMLET_BENCH_EXECUTOR=full go test -count=1 -run TestExecutorSection -v -timeout 30m ./bench/
func TestExecutorSection(t *testing.T) {
	figs := runSectionAlone(t, "executor", "WASMLET_BENCH_EXECUTOR", ExecutorFigures)
	for _, eng := range execEngines {
		n := 0
		for _, f := range figs {
			if strings.HasPrefix(f.Name, "executor "+eng+": ") {
				n++
				if f.Samples == 0 || f.Max <= 0 {
					t.Errorf("figure %q has no measurement: %+v", f.Name, f)
				}
			}
		}
		if n < 9 {
			t.Errorf("%d figures for %s, want 9", n, eng)
		}
	}
}

// TestColdStartSection runs the coldstart section alone, without the
// control plane: set WASMLET_BENCH_COLDSTART=short or full.
//
//	WASMLET_BENCH_COLDSTART=full go test -count=1 -run TestColdStartSection -v -timeout 30m ./bench/
func TestColdStartSection(t *testing.T) {
	figs := runSectionAlone(t, "coldstart", "WASMLET_BENCH_COLDSTART", ColdStartFigures)
	if want := 3 * 2 * len(coldVariants); len(figs) != want {
		t.Errorf("%d figures, want %d", len(figs), want)
	}
	for _, f := range figs {
		if f.Samples == 0 || f.Max <= 0 {
			t.Errorf("figure %q has no measurement: %+v", f.Name, f)
		}
	}
}

// runSectionAlone runs one section without the control plane when env is
// "short" or "full" (skipping the test otherwise), logs its report and
// fails the test on its error.
func runSectionAlone(t *testing.T, name, env string, section func(context.Context, string, Options) ([]Figure, error)) []Figure {
	t.Helper()
	mode := os.Getenv(env)
	if mode == "" {
		t.Skipf("set %s=short or full to run the %s section alone", env, name)
	}
	opts := ShortOptions
	if mode == "full" {
		opts = FullOptions
	}
	bin := filepath.Join(t.TempDir(), "bin")
	if err := Build(filepath.Join("..", ""), bin); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	t0 := time.Now()
	figs, err := section(ctx, bin, opts)
	t.Logf("%s section: %v", name, time.Since(t0))
	r := Report{Date: time.Now().UTC(), Mode: mode, Machine: ThisMachine(), Figures: figs}
	t.Logf("\n%s", r.Markdown())
	if err != nil {
		t.Fatal(err)
	}
	return figs
}
