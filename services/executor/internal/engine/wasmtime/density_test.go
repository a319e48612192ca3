package wasmtime

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
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
		out := enginetest.NewLineWaiter("spinning")
		inst, err := e.Start(ctx, spin, engine.Spec{Args: []string{"spin"}, Stdout: out, Stderr: out})
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-out.Seen:
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
	asleep := make([]*enginetest.LineWaiter, n)
	t0 := time.Now()
	for i := range n {
		asleep[i] = enginetest.NewLineWaiter("count 1")
		insts[i], err = e.Start(ctx, m, engine.Spec{Args: []string{"hello"}, Env: env("COUNT", "2", "SLEEP", "1h"), Stdout: asleep[i]})
		if err != nil {
			t.Fatalf("instance %d: %v", i, err)
		}
	}
	for _, w := range asleep {
		<-w.Seen
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

// Helpers shared with the other engine's tests.
var (
	env        = enginetest.Env
	quantiles  = enginetest.Quantiles
	procFields = enginetest.ProcFields
)
