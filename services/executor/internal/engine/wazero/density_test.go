package wazero

import (
	"bufio"
	"context"
	"io"
	"os"
	goruntime "runtime"
	"runtime/pprof"
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
// threads, and how much of it their linear memories hold, with the start
// latency (Start's return) of a cached module and the process's CPU per
// start besides. Opt-in: it takes what a node would. As wasmtime's
// TestDensity. WASMLET_DENSITY_HEAP=<file> writes the heap profile
// (pprof) taken while they sleep.
//
//	WASMLET_DENSITY=500 flock -o /tmp/wasmlet-measure.lock go test -count=1 -run TestDensity -v ./services/executor/internal/engine/wazero/
func TestDensity(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("WASMLET_DENSITY"))
	if n <= 0 {
		t.Skip("set WASMLET_DENSITY to the number of sleeping instances")
	}
	e, err := New(Config{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	m := enginetest.Prepare(t, e, wasmbuild.BuildDir(t, "examples/hello"))
	ctx := context.Background()

	// Starts one after another, the module compiled, before the
	// instances are held.
	var starts []time.Duration
	var seqCPU time.Duration
	for i := range 60 {
		if i == 10 {
			seqCPU = -enginetest.ProcessCPU()
		}
		t0 := time.Now()
		inst, err := e.Start(ctx, m, engine.Spec{Args: []string{"hello"}, Env: env("COUNT", "1"), Stdout: io.Discard})
		if err != nil {
			t.Fatal(err)
		}
		if i >= 10 {
			starts = append(starts, time.Since(t0))
		}
		inst.Wait()
	}
	seqCPU += enginetest.ProcessCPU()

	goruntime.GC()
	time.Sleep(500 * time.Millisecond)
	before, pssBefore, memBefore := procFields(t, "status"), procFields(t, "smaps_rollup"), linearResident(t)
	insts := make([]engine.Instance, n)
	asleep := make([]*enginetest.LineWaiter, n)
	t0 := time.Now()
	cpu0 := enginetest.ProcessCPU()
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
	burstCPU := enginetest.ProcessCPU() - cpu0
	goruntime.GC()
	time.Sleep(time.Second)
	after, pssAfter, memAfter := procFields(t, "status"), procFields(t, "smaps_rollup"), linearResident(t)
	if path := os.Getenv("WASMLET_DENSITY_HEAP"); path != "" {
		writeHeapProfile(t, path)
	}
	per := func(a, b map[string]int64, k string) float64 { return float64(a[k]-b[k]) / float64(n) / (1 << 20) }
	t.Logf("%d sleeping instances, all asleep after %v", n, all.Round(time.Millisecond))
	t.Logf("per instance: VmRSS %.2f MiB (anon %.2f, file %.2f, shmem %.2f), Pss %.2f MiB (anon %.2f, file %.2f, shmem %.2f), linear memory resident %.2f MiB, threads %.3f (%d → %d)",
		per(after, before, "VmRSS"), per(after, before, "RssAnon"), per(after, before, "RssFile"), per(after, before, "RssShmem"),
		per(pssAfter, pssBefore, "Pss"), per(pssAfter, pssBefore, "Pss_Anon"), per(pssAfter, pssBefore, "Pss_File"), per(pssAfter, pssBefore, "Pss_Shmem"),
		float64(memAfter-memBefore)/float64(n)/(1<<20),
		float64(after["Threads"]-before["Threads"])/float64(n), before["Threads"], after["Threads"])
	t.Logf("start of a cached module (one after another): %s", quantiles(starts))
	t.Logf("process CPU per instance (user+sys): %v started one after another and run to its exit, %v started in the burst and run until asleep",
		(seqCPU / time.Duration(len(starts))).Round(time.Microsecond), (burstCPU / time.Duration(n)).Round(time.Microsecond))

	// Every held instance is still asleep, and a kill ends it at once.
	t1 := time.Now()
	for _, inst := range insts {
		inst.Kill()
	}
	for i, inst := range insts {
		if res := inst.Wait(); res.Reason != engine.ReasonKilled {
			t.Fatalf("instance %d: %+v", i, res)
		}
	}
	t.Logf("%d sleeping instances killed in %v", n, time.Since(t1).Round(time.Millisecond))
}

// writeHeapProfile writes the heap profile (inuse_space after a GC) to
// path: what the sleeping instances hold on the Go heap.
func writeHeapProfile(t *testing.T, path string) {
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		t.Fatal(err)
	}
}

// Helpers shared with the other engine's tests.
var (
	env        = enginetest.Env
	quantiles  = enginetest.Quantiles
	procFields = enginetest.ProcFields
)

// linearResident is the resident bytes of the mappings that back linear
// memories. A memory reserves its maximum (4 GiB with no limit) without
// access and opens what it grows to, splitting the mapping in two: its
// open part is an anonymous mapping directly below an inaccessible one of
// at least a GiB, which nothing else here maps.
func linearResident(t *testing.T) int64 {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type vma struct {
		start, end uint64
		perms      string
		anon       bool
		rss        int64
	}
	var vmas []vma
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 0 {
			continue
		}
		if lo, hi, ok := strings.Cut(fs[0], "-"); ok && len(fs) >= 5 {
			a, err1 := strconv.ParseUint(lo, 16, 64)
			b, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil {
				vmas = append(vmas, vma{start: a, end: b, perms: fs[1], anon: len(fs) == 5})
				continue
			}
		}
		if fs[0] == "Rss:" && len(vmas) > 0 && len(fs) > 1 {
			kb, _ := strconv.ParseInt(fs[1], 10, 64)
			vmas[len(vmas)-1].rss = kb << 10
		}
	}
	var total int64
	for i := 0; i+1 < len(vmas); i++ {
		v, next := vmas[i], vmas[i+1]
		if v.anon && v.perms == "rw-p" && next.start == v.end && next.perms == "---p" && next.end-next.start >= 1<<30 {
			total += v.rss
		}
	}
	return total
}
