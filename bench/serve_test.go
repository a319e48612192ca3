package bench

import "testing"

// TestServeSection runs the serve section alone, without the control
// plane: set WASMLET_BENCH_SERVE=short or full.
//
//	WASMLET_BENCH_SERVE=full go test -count=1 -run TestServeSection -v -timeout 30m ./bench/
func TestServeSection(t *testing.T) {
	figs := runSectionAlone(t, "serve", "WASMLET_BENCH_SERVE", ServeFigures)
	// Server mode on wazero, then handler mode on each engine: the same
	// figures per connection count; and the idle servers.
	if want := 13*len(serveConns)*(1+len(execEngines)) + 3; len(figs) != want {
		t.Errorf("%d figures, want %d", len(figs), want)
	}
	for _, f := range figs {
		if f.Samples == 0 || (f.Max <= 0 && f.Unit != "% of a core") {
			t.Errorf("figure %q has no measurement: %+v", f.Name, f)
		}
	}
}
