package enginetest

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// MaxSinkWrite is the most an engine hands a sink (Spec.Stdout, Stderr)
// in one Write, however much the module wrote in one fd_write: a sink
// handles output a bounded piece at a time.
const MaxSinkWrite = 64 << 10

// writeWat writes size bytes of 'x' to stdout in one fd_write (again
// from where it stopped if the engine writes less), with a newline after
// every lineLen-1 bytes when lineLen > 0, then calls proc_exit(exit), or
// returns from _start when exit is negative. Its memory is the bytes and
// one page for the iovec.
func writeWat(size, lineLen, exit int) string {
	end := ""
	if exit >= 0 {
		end = fmt.Sprintf("\n    (call $exit (i32.const %d))", exit)
	}
	return fmt.Sprintf(`(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") %d)
  (func (export "_start")
    (local $off i32) (local $left i32) (local $i i32)
    (memory.fill (i32.const 65536) (i32.const 120) (i32.const %d))
    (if (i32.gt_s (i32.const %d) (i32.const 0))
      (then
        (local.set $i (i32.const %d))
        (block $done (loop $nl
          (br_if $done (i32.ge_u (local.get $i) (i32.const %d)))
          (i32.store8 (local.get $i) (i32.const 10))
          (local.set $i (i32.add (local.get $i) (i32.const %d)))
          (br $nl)))))
    (local.set $off (i32.const 65536))
    (local.set $left (i32.const %d))
    (block $end (loop $more
      (i32.store (i32.const 0) (local.get $off))
      (i32.store (i32.const 4) (local.get $left))
      (if (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)) (then unreachable))
      (local.set $off (i32.add (local.get $off) (i32.load (i32.const 8))))
      (local.set $left (i32.sub (local.get $left) (i32.load (i32.const 8))))
      (br_if $more (i32.gt_s (local.get $left) (i32.const 0)))))%s))`,
		size/(64<<10)+1, size, lineLen, 65536+lineLen-1, 65536+size, max(lineLen, 1), size, end)
}

// sizeSink counts what it is given and keeps none of it.
type sizeSink struct {
	mu       sync.Mutex
	bytes    int
	newlines int
	writes   int
	largest  int
	other    int // bytes neither 'x' nor '\n'
}

func (s *sizeSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	s.bytes += len(p)
	s.largest = max(s.largest, len(p))
	nl := bytes.Count(p, []byte("\n"))
	s.newlines += nl
	s.other += len(p) - nl - bytes.Count(p, []byte("x"))
	return len(p), nil
}

// heapAndRSS reads the Go heap's bytes in objects (without stopping the
// world) and the process's resident set.
func heapAndRSS() (heap, rss uint64) {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			pages, _ := strconv.ParseUint(f[1], 10, 64)
			rss = pages * uint64(os.Getpagesize())
		}
	}
	return s[0].Value.Uint64(), rss
}

// testHugeWrite: one fd_write of 256 MiB, without a newline and with one
// every 100 bytes, reaches the sink whole, in writes of at most
// MaxSinkWrite, while the Go heap grows by far less than the write. The
// resident set beyond the module's own memory is logged (wasmtime's WASI
// copies output outside the Go heap).
func testHugeWrite(t *testing.T, e engine.Engine) {
	const size = 256 << 20
	for _, tc := range []struct {
		name    string
		lineLen int
	}{{"no newline", 0}, {"lines of 100 bytes", 100}} {
		t.Run(tc.name, func(t *testing.T) {
			m := prepare(t, e, wasmbuild.Wat(t, writeWat(size, tc.lineLen, -1)))
			var out sizeSink
			runtime.GC()
			heap0, rss0 := heapAndRSS()
			inst, err := e.Start(t.Context(), m, engine.Spec{Args: []string{"huge"}, Stdout: &out})
			if err != nil {
				t.Fatal(err)
			}
			defer inst.Kill()
			const bound = 32 << 20
			var peak, peakRSS uint64
			t0 := time.Now()
			var ended atomic.Bool
			go func() { <-inst.Done(); ended.Store(true) }()
			for !ended.Load() {
				h, r := heapAndRSS()
				if h > heap0 {
					peak = max(peak, h-heap0)
				}
				if r > rss0 {
					peakRSS = max(peakRSS, r-rss0)
				}
				if peak > bound {
					t.Fatalf("the Go heap grew by %d MiB during a %d MiB write, want under %d MiB", peak>>20, size>>20, bound>>20)
				}
				if time.Since(t0) > 2*time.Minute {
					t.Fatal("a 256 MiB write did not end in 2 minutes")
				}
				time.Sleep(time.Millisecond)
			}
			res := inst.Wait()
			t.Logf("%d MiB in one fd_write: %v, %d sink writes (largest %d bytes), Go heap +%.1f MiB, RSS +%.1f MiB (the module's memory is %d MiB)",
				size>>20, time.Since(t0), out.writes, out.largest, float64(peak)/(1<<20), float64(peakRSS)/(1<<20), size>>20)
			if res.ExitCode != 0 || res.Reason != engine.ReasonCompleted {
				t.Fatalf("result %+v", res)
			}
			out.mu.Lock()
			defer out.mu.Unlock()
			wantNL := 0
			if tc.lineLen > 0 {
				wantNL = size / tc.lineLen
			}
			if out.bytes != size || out.newlines != wantNL || out.other != 0 {
				t.Fatalf("sink got %d bytes with %d newlines (%d other bytes), want %d with %d", out.bytes, out.newlines, out.other, size, wantNL)
			}
			if out.largest > MaxSinkWrite {
				t.Fatalf("the sink was given %d bytes in one write, want at most %d", out.largest, MaxSinkWrite)
			}
		})
	}
}

// tableGrowWat grows a funcref table declared without a maximum by 1 Mi
// elements at a time, 64 times (512 MiB of host memory at 8 bytes an
// element), and exits 3 as soon as a growth fails, 1 if none did.
const tableGrowWat = `(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (table $t 1 funcref)
  (func (export "_start")
    (local $n i32)
    (loop $grow
      (if (i32.eq (table.grow $t (ref.null func) (i32.const 1048576)) (i32.const -1)) (then (call $exit (i32.const 3))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br_if $grow (i32.lt_u (local.get $n) (i32.const 64))))
    (call $exit (i32.const 1))))`

// testTableGrowthLimited: table growth counts toward the memory limit:
// under a 16 MiB limit, a table may not grow past 2 Mi elements (16 MiB of
// pointers), and the module sees table.grow fail; without a limit it grows.
func testTableGrowthLimited(t *testing.T, e engine.Engine) {
	m := prepare(t, e, wasmbuild.Wat(t, tableGrowWat))
	res := run(t, e, m, engine.Spec{Args: []string{"grow"}, MemoryLimitBytes: 16 << 20})
	if !res.Exited || res.ExitCode != 3 {
		t.Fatalf("result %+v under a 16 MiB limit: want exit 3 (a table.grow past the limit failed)", res)
	}
	// A table declared with a small maximum keeps it.
	small := strings.Replace(tableGrowWat, "(table $t 1 funcref)", "(table $t 1 4 funcref)", 1)
	if res := run(t, e, prepare(t, e, wasmbuild.Wat(t, small)), engine.Spec{MemoryLimitBytes: 64 << 20}); res.ExitCode != 3 {
		t.Fatalf("result %+v for a table of at most 4 elements: want exit 3", res)
	}
	// A table whose minimum does not fit the limit does not start.
	big := strings.Replace(tableGrowWat, "(table $t 1 funcref)", "(table $t 4194304 funcref)", 1)
	mb := prepare(t, e, wasmbuild.Wat(t, big))
	inst, err := e.Start(t.Context(), mb, engine.Spec{MemoryLimitBytes: 16 << 20})
	if err == nil {
		res := inst.Wait()
		t.Fatalf("a table of 4 Mi elements (32 MiB) started under a 16 MiB limit: %+v", res)
	}
	t.Logf("table over the limit: %v", err)
}
