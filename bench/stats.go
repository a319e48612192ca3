// Package bench measures wasmlet on the local stack (a real control plane,
// registry and wasmlet node) against a no-op node on the same control plane,
// and reports each figure with its method, unit, sample count,
// min/median/p99/max, target and the machine it ran on.
//
// `make bench` runs the full suite (cmd/wasmlet-bench) and writes
// bench/results/<date>.json and .md; the package's test runs the same
// scenarios with small counts inside `make test`, so a broken benchmark
// fails CI.
package bench

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Figure is one measured quantity.
type Figure struct {
	Name    string  `json:"name"`
	Method  string  `json:"method"`
	Unit    string  `json:"unit"`
	Samples int     `json:"samples"`
	Min     float64 `json:"min"`
	Median  float64 `json:"median"`
	P99     float64 `json:"p99"`
	Max     float64 `json:"max"`
	// Target is the figure it is held to, as text (e.g. "p50 ≤ 40 ms"), and
	// Met whether the measured value meets it; empty when there is none.
	Target string `json:"target,omitempty"`
	Met    *bool  `json:"met,omitempty"`
	// Anchor is the outside figure the target came from, or that this one
	// is best read against (a peer's, the Kubernetes SLO's).
	Anchor string `json:"anchor,omitempty"`
}

// Machine describes where the figures were taken.
type Machine struct {
	Cores     int    `json:"cores"`
	MemBytes  int64  `json:"mem_bytes"`
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	// Engines are the Wasm engines' module versions in the executor built
	// for the run (e.g. "github.com/tetratelabs/wazero v1.12.0").
	Engines []string `json:"engines,omitempty"`
}

// Report is a whole run.
type Report struct {
	Date    time.Time `json:"date"`
	Mode    string    `json:"mode"` // "full" or "short"
	Machine Machine   `json:"machine"`
	// Engine runs the wasmlet node's pods: the node agent's
	// --default-executor (wasmtime unless the run asked for wazero).
	Engine  string   `json:"engine,omitempty"`
	Figures []Figure `json:"figures"`
	// Error is why the run stopped before its end; the figures are those
	// measured until then.
	Error string `json:"error,omitempty"`
}

// ThisMachine reads the machine's description.
func ThisMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(strings.SplitN(string(b), "\n", 2)[0], "MemTotal: %d kB", &kb)
		m.MemBytes = kb * 1024
	}
	return m
}

// Durations makes a figure in milliseconds from samples.
func Durations(name, method string, d []time.Duration) Figure {
	ms := make([]float64, len(d))
	for i, x := range d {
		ms[i] = float64(x) / float64(time.Millisecond)
	}
	return Values(name, method, "ms", ms)
}

// Values makes a figure from samples in unit.
func Values(name, method, unit string, v []float64) Figure {
	f := Figure{Name: name, Method: method, Unit: unit, Samples: len(v)}
	if len(v) == 0 {
		return f
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	f.Min, f.Max = s[0], s[len(s)-1]
	f.Median = quantile(s, 0.5)
	f.P99 = quantile(s, 0.99)
	return f
}

// quantile of sorted s, nearest rank.
func quantile(s []float64, q float64) float64 {
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Hold sets a target on the figure: its stat (median, p99 or max) must be
// at most limit.
func (f *Figure) Hold(stat string, limit float64) {
	v := map[string]float64{"median": f.Median, "p99": f.P99, "max": f.Max}[stat]
	ok := f.Samples > 0 && v <= limit
	f.Target = fmt.Sprintf("%s ≤ %g %s", stat, limit, f.Unit)
	f.Met = &ok
}

// HoldAtLeast sets a floor on the figure: its stat (min, median or max)
// must be at least limit (throughputs).
func (f *Figure) HoldAtLeast(stat string, limit float64) {
	v := map[string]float64{"min": f.Min, "median": f.Median, "max": f.Max}[stat]
	ok := f.Samples > 0 && v >= limit
	f.Target = fmt.Sprintf("%s ≥ %g %s", stat, limit, f.Unit)
	f.Met = &ok
}

// Markdown renders the report as a table.
func (r Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# wasmlet benchmarks, %s (%s run)\n\n", r.Date.Format("2006-01-02 15:04 MST"), r.Mode)
	fmt.Fprintf(&b, "Machine: %d cores, %.1f GiB, %s %s/%s; engines: %s.\n\n", r.Machine.Cores, float64(r.Machine.MemBytes)/(1<<30), r.Machine.GoVersion, r.Machine.OS, r.Machine.Arch, strings.Join(r.Machine.Engines, ", "))
	if r.Engine != "" {
		fmt.Fprintf(&b, "The wasmlet node runs its pods on %s.\n\n", r.Engine)
	}
	if r.Error != "" {
		fmt.Fprintf(&b, "**The run stopped early**: %s. The figures are those measured until then.\n\n", r.Error)
	}
	b.WriteString("| figure | unit | n | min | median | p99 | max | target | met | anchor | method |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, f := range r.Figures {
		met := ""
		if f.Met != nil {
			met = map[bool]string{true: "yes", false: "**no**"}[*f.Met]
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %.3g | %.3g | %.3g | %.3g | %s | %s | %s | %s |\n",
			f.Name, f.Unit, f.Samples, f.Min, f.Median, f.P99, f.Max, f.Target, met, f.Anchor, f.Method)
	}
	return b.String()
}
