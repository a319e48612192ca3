package enginetest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// Env makes environment variables of name, value pairs.
func Env(kv ...string) []engine.EnvVar {
	var out []engine.EnvVar
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, engine.EnvVar{Name: kv[i], Value: kv[i+1]})
	}
	return out
}

// LineWaiter is an output sink that closes Seen when a line starting with
// its line is written.
type LineWaiter struct {
	Seen chan struct{}
	line string
	mu   sync.Mutex
	buf  []byte
	once sync.Once
}

// NewLineWaiter waits for a line starting with line.
func NewLineWaiter(line string) *LineWaiter {
	return &LineWaiter{line: line, Seen: make(chan struct{})}
}

// StartUntilLine starts an instance of m whose stdout (and, with
// stderr, its stderr) goes to a LineWaiter for line, and waits at most
// 10 s until the instance has written it.
func StartUntilLine(t testing.TB, e engine.Engine, m engine.Module, line string, stderr bool) engine.Instance {
	t.Helper()
	out := NewLineWaiter(line)
	spec := engine.Spec{Stdout: out}
	if stderr {
		spec.Stderr = out
	}
	inst, err := e.Start(context.Background(), m, spec)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-out.Seen:
	case <-time.After(10 * time.Second):
		inst.Kill()
		t.Fatalf("an instance wrote no line %q in 10s", line)
	}
	return inst
}

func (w *LineWaiter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for _, l := range strings.Split(string(w.buf), "\n") {
		if strings.HasPrefix(l, w.line) {
			w.once.Do(func() { close(w.Seen) })
		}
	}
	if len(w.buf) > 4096 {
		w.buf = w.buf[len(w.buf)-1024:]
	}
	return len(p), nil
}

// Quantiles describes durations: min, median, p90, max and their number.
func Quantiles(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	q := func(p float64) time.Duration { return s[int(p*float64(len(s)-1))].Round(10 * time.Microsecond) }
	return fmt.Sprintf("min %v, median %v, p90 %v, max %v (%d)", s[0], q(0.5), q(0.9), s[len(s)-1], len(s))
}

// ProcFields reads the "Name: N [kB]" lines of /proc/self/<file>, sizes
// in bytes.
func ProcFields(t testing.TB, file string) map[string]int64 {
	f, err := os.Open("/proc/self/" + file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		fs := strings.Fields(v)
		if !ok || len(fs) == 0 {
			continue
		}
		n, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			continue
		}
		if len(fs) > 1 && fs[1] == "kB" {
			n *= 1024
		}
		out[k] = n
	}
	return out
}
