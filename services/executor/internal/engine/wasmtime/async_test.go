package wasmtime

import (
	"context"
	"io"
	"regexp"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

// pollArgsWat calls poll_oneoff with arguments each distinct, on a 1 ms
// monotonic clock of userdata 0x1122334455667788, and exits 7 if its
// errno, event count and event came back as WASI says, 90-93 if not. Its
// memory is 3 pages.
const pollArgsWat = `(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 3)
  (func (export "_start")
    (i64.store (i32.const 1000) (i64.const 0x1122334455667788))
    (i32.store8 (i32.const 1008) (i32.const 0))
    (i32.store (i32.const 1016) (i32.const 1))
    (i64.store (i32.const 1024) (i64.const 1000000))
    (if (call $poll (i32.const 1000) (i32.const 2000) (i32.const 1) (i32.const 3000))
      (then (call $exit (i32.const 90))))
    (if (i32.ne (i32.load (i32.const 3000)) (i32.const 1))
      (then (call $exit (i32.const 91))))
    (if (i64.ne (i64.load (i32.const 2000)) (i64.const 0x1122334455667788))
      (then (call $exit (i32.const 92))))
    (if (i32.load16_u (i32.const 2008))
      (then (call $exit (i32.const 93))))
    (call $exit (i32.const 7))))`

// TestAsyncLayout: async.go declares the C API's structs itself (v39's
// layouts); a module through each of them: poll_oneoff's arguments and
// result (wasmtime_val_t), the exported memory and _start
// (wasmtime_extern_t, wasmtime_memory_t), a trap's code and frame. A
// wasmtime-go upgrade that changes one must fail here.
func TestAsyncLayout(t *testing.T) {
	e := newTestEngine(t, t.TempDir(), nil)
	m := enginetest.Prepare(t, e, wasmbuild.Wat(t, pollArgsWat))
	inst, err := e.Start(context.Background(), m, engine.Spec{Stdout: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if res := inst.Wait(); !res.Exited || res.ExitCode != 7 {
		t.Fatalf("result %+v, want exit code 7: poll_oneoff's arguments or result are not where async.go reads and writes them", res)
	}
	if got := inst.Usage().MemoryBytes; got != 3<<16 {
		t.Errorf("memory %d bytes, want 3 pages: the exported memory is not read right", got)
	}

	m = enginetest.Prepare(t, e, wasmbuild.Wat(t, `(module
  (memory (export "memory") 1)
  (func $boom unreachable)
  (func (export "_start") (call $boom)))`))
	inst, err = e.Start(context.Background(), m, engine.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	res := inst.Wait()
	// wat2wasm writes no name section: the frame is the function's index.
	if ok, _ := regexp.MatchString(`^wasm trap: unreachable code reached in function #0 at offset 0x[0-9a-f]+$`, res.Message); res.Reason != engine.ReasonTrap || !ok {
		t.Fatalf("result %+v, want the trap's kind and its innermost frame", res)
	}
}

// sayAndSleepWat writes "asleep\n" to stdout and sleeps an hour.
const sayAndSleepWat = `(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 512) "asleep\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 512))
    (i32.store (i32.const 4) (i32.const 7))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store8 (i32.const 1008) (i32.const 0))
    (i32.store (i32.const 1016) (i32.const 1))
    (i64.store (i32.const 1024) (i64.const 3600000000000))
    (drop (call $poll (i32.const 1000) (i32.const 2000) (i32.const 1) (i32.const 3000)))))`

// TestSleepersHoldNoThread: instances asleep in poll_oneoff are on
// fibers, off the OS threads (each started once the one before is
// asleep: Go keeps the threads that a burst of starts made); a kill still
// ends each at once.
func TestSleepersHoldNoThread(t *testing.T) {
	e := newTestEngine(t, t.TempDir(), nil)
	m := enginetest.Prepare(t, e, wasmbuild.Wat(t, sayAndSleepWat))
	const n = 64
	var insts []engine.Instance
	defer func() {
		for _, inst := range insts {
			inst.Kill()
		}
	}()
	start := func() {
		insts = append(insts, enginetest.StartUntilLine(t, e, m, "asleep", false))
	}
	start() // the first start's threads (compiles, readers) are not the instances'
	time.Sleep(100 * time.Millisecond)
	before := threads(t)
	for range n {
		start()
	}
	time.Sleep(100 * time.Millisecond) // all in poll_oneoff
	asleep := threads(t)
	t.Logf("threads: %d, %d with %d more instances asleep", before, asleep, n)
	var wg sync.WaitGroup
	t0 := time.Now()
	for _, inst := range insts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			inst.Kill()
			if res := inst.Wait(); res.Reason != engine.ReasonKilled || res.Message != "the instance was killed" {
				t.Errorf("result %+v", res)
			}
		}()
	}
	wg.Wait()
	if d := time.Since(t0); d > 2*time.Second {
		t.Errorf("%d sleeping instances took %v to kill", len(insts), d)
	}
	if asleep-before > n/4 { // each held its own before: n
		t.Fatalf("%d instances asleep added %d OS threads, want them to hold none", n, asleep-before)
	}
}

func threads(t *testing.T) int {
	runtime.GC()
	return int(procFields(t, "status")["Threads"])
}
