package wasmtime

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// TestDensity holds WASMLET_DENSITY instances of examples/hello asleep in
// this process and reports what each adds to its VmRSS, Pss and OS
// threads, with the start (Start's return) and kill (Kill → Done) latency
// of a few instances besides. Opt-in: it takes what a node would.
//
//	WASMLET_DENSITY=500 flock /tmp/wasmlet-measure.lock go test -count=1 -run TestDensity -v ./services/executor/internal/engine/wasmtime/
func TestDensity(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("WASMLET_DENSITY"))
	if n <= 0 {
		t.Skip("set WASMLET_DENSITY to the number of sleeping instances")
	}
	e, err := New(Config{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	m := prepareFile(t, e, wasmbuild.BuildDir(t, "examples/hello"))
	spin := prepareFile(t, e, wasmbuild.Build(t, "spin"))
	ctx := context.Background()

	// Starts one after another, and kills of a spinning module, before
	// the instances are held (as the executor bench measures them).
	var starts, kills []time.Duration
	for range 50 {
		t0 := time.Now()
		inst, err := e.Start(ctx, m, engine.Spec{Args: []string{"hello"}, Env: env("COUNT", "1"), Stdout: io.Discard})
		if err != nil {
			t.Fatal(err)
		}
		starts = append(starts, time.Since(t0))
		inst.Wait()
	}
	for range 20 {
		out := &lineWaiter{line: "spinning", seen: make(chan struct{})}
		inst, err := e.Start(ctx, spin, engine.Spec{Args: []string{"spin"}, Stdout: out, Stderr: out})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-out.seen:
		case <-time.After(30 * time.Second):
			t.Fatal("spin printed nothing in 30s")
		}
		time.Sleep(10 * time.Millisecond)
		t0 := time.Now()
		inst.Kill()
		<-inst.Done()
		kills = append(kills, time.Since(t0))
		if res := inst.Wait(); res.Reason != engine.ReasonKilled || strings.Contains(res.Message, "host call") {
			t.Fatalf("spin killed: %+v", res)
		}
	}

	runtime.GC()
	time.Sleep(500 * time.Millisecond)
	before, pssBefore := procFields(t, "status"), procFields(t, "smaps_rollup")
	insts := make([]engine.Instance, n)
	asleep := make([]*lineWaiter, n)
	t0 := time.Now()
	for i := range n {
		asleep[i] = &lineWaiter{line: "count 1", seen: make(chan struct{})}
		insts[i], err = e.Start(ctx, m, engine.Spec{Args: []string{"hello"}, Env: env("COUNT", "2", "SLEEP", "1h"), Stdout: asleep[i]})
		if err != nil {
			t.Fatalf("instance %d: %v", i, err)
		}
	}
	for _, w := range asleep {
		<-w.seen
	}
	all := time.Since(t0)
	time.Sleep(time.Second)
	after, pssAfter := procFields(t, "status"), procFields(t, "smaps_rollup")
	per := func(a, b map[string]int64, k string) float64 { return float64(a[k]-b[k]) / float64(n) / (1 << 20) }
	t.Logf("%d sleeping instances, all asleep after %v", n, all.Round(time.Millisecond))
	t.Logf("per instance: VmRSS %.2f MiB (anon %.2f, file %.2f), Pss %.2f MiB (anon %.2f, file %.2f), threads %.3f (%d → %d)",
		per(after, before, "VmRSS"), per(after, before, "RssAnon"), per(after, before, "RssFile"),
		per(pssAfter, pssBefore, "Pss"), per(pssAfter, pssBefore, "Pss_Anon"), per(pssAfter, pssBefore, "Pss_File"),
		float64(after["Threads"]-before["Threads"])/float64(n), before["Threads"], after["Threads"])
	t.Logf("start (one after another): %s", quantiles(starts))
	t.Logf("kill of a spinning module: %s", quantiles(kills))

	// Every held instance is still asleep, and a kill ends it at once.
	t1 := time.Now()
	for _, inst := range insts {
		inst.Kill()
	}
	for i, inst := range insts {
		if res := inst.Wait(); res.Reason != engine.ReasonKilled || strings.Contains(res.Message, "host call") {
			t.Fatalf("instance %d: %+v", i, res)
		}
	}
	t.Logf("%d sleeping instances killed in %v", n, time.Since(t1).Round(time.Millisecond))
}

func prepareFile(t *testing.T, e *Engine, path string) engine.Module {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	m, err := e.Prepare(context.Background(), "sha256:"+hex.EncodeToString(sum[:]), path)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func env(kv ...string) []engine.EnvVar {
	var out []engine.EnvVar
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, engine.EnvVar{Name: kv[i], Value: kv[i+1]})
	}
	return out
}

// lineWaiter closes seen when a line starting with line is written.
type lineWaiter struct {
	line string
	mu   sync.Mutex
	buf  []byte
	once sync.Once
	seen chan struct{}
}

func (w *lineWaiter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for _, l := range strings.Split(string(w.buf), "\n") {
		if strings.HasPrefix(l, w.line) {
			w.once.Do(func() { close(w.seen) })
		}
	}
	if len(w.buf) > 4096 {
		w.buf = w.buf[len(w.buf)-1024:]
	}
	return len(p), nil
}

func quantiles(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	q := func(p float64) time.Duration { return s[int(p*float64(len(s)-1))].Round(10 * time.Microsecond) }
	return fmt.Sprintf("min %v, median %v, p90 %v, max %v (%d)", s[0], q(0.5), q(0.9), s[len(s)-1], len(s))
}

// procFields reads the "Name: N [kB]" lines of /proc/self/<file>, sizes in
// bytes.
func procFields(t *testing.T, file string) map[string]int64 {
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
