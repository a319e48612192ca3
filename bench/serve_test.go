package bench

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestServeSection runs the serve section alone, without the control
// plane: set WASMLET_BENCH_SERVE=short or full.
//
//	WASMLET_BENCH_SERVE=full go test -count=1 -run TestServeSection -v -timeout 30m ./bench/
func TestServeSection(t *testing.T) {
	mode := os.Getenv("WASMLET_BENCH_SERVE")
	if mode == "" {
		t.Skip("set WASMLET_BENCH_SERVE=short or full to run the serve section alone")
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
	figs, err := ServeFigures(ctx, bin, opts)
	t.Logf("serve section: %v", time.Since(t0))
	r := Report{Date: time.Now().UTC(), Mode: mode, Machine: ThisMachine(), Figures: figs}
	t.Logf("\n%s", r.Markdown())
	if err != nil {
		t.Fatal(err)
	}
	if want := 10*len(serveConns) + 3; len(figs) != want {
		t.Errorf("%d figures, want %d", len(figs), want)
	}
	for _, f := range figs {
		if f.Samples == 0 || (f.Max <= 0 && f.Unit != "% of a core") {
			t.Errorf("figure %q has no measurement: %+v", f.Name, f)
		}
	}
}
