package wasmtime

import (
	"context"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

// spinWriteWat writes "line\n" to stdout 20 times, spinning ~10M loop
// turns before each write.
const spinWriteWat = `(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 512) "line\n")
  (func (export "_start") (local $i i32) (local $j i32)
    (i32.store (i32.const 0) (i32.const 512))
    (i32.store (i32.const 4) (i32.const 5))
    (loop $lines
      (local.set $j (i32.const 0))
      (loop $spin
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br_if $spin (i32.lt_u (local.get $j) (i32.const 10000000))))
      (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $lines (i32.lt_u (local.get $i) (i32.const 20))))))`

// slowSink blocks in each Write (a sink that waits on a lock or a
// channel), parking its goroutine while the module waits on its fiber.
// It records whether each write came on its thread's own stack.
type slowSink struct {
	mu       sync.Mutex
	b        strings.Builder
	offStack int
}

func (s *slowSink) Write(p []byte) (int, error) {
	on := onThreadStack()
	time.Sleep(time.Millisecond)
	runtime.GC()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !on {
		s.offStack++
	}
	return s.b.Write(p)
}

// TestOutputFromFiber: output is written to the sink by the instance's
// wasm, which runs on a fiber; the sink must be called on a thread's own
// stack (on a fiber's, Go's runtime would run its own code out of the
// stack bounds it knows: see onThreadStack). A sink that blocks, and
// writes after long computations, must work, in many instances at once,
// with every line delivered, in order, by the instance's end.
func TestOutputFromFiber(t *testing.T) {
	e := newTestEngine(t, t.TempDir(), nil)
	m := enginetest.Prepare(t, e, wasmbuild.Wat(t, spinWriteWat))
	const n = 16
	sinks := make([]*slowSink, n)
	var insts []engine.Instance
	for i := range n {
		sinks[i] = &slowSink{}
		inst, err := e.Start(context.Background(), m, engine.Spec{Stdout: sinks[i]})
		if err != nil {
			t.Fatal(err)
		}
		insts = append(insts, inst)
	}
	for i, inst := range insts {
		if res := inst.Wait(); res.Reason != engine.ReasonCompleted {
			t.Fatalf("instance %d: %+v", i, res)
		}
		if got := sinks[i].b.String(); got != strings.Repeat("line\n", 20) {
			t.Fatalf("instance %d wrote %q", i, got)
		}
		if k := sinks[i].offStack; k > 0 {
			t.Fatalf("instance %d: %d writes came on a stack not its thread's (a fiber's): the sinks must not be called there", i, k)
		}
	}
}

// readStdinWat reads stdin once and exits 7 if the read succeeded with
// nothing (the end), 90 + its errno's lowest byte otherwise, 80 if it
// read something.
const readStdinWat = `(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $errno i32)
    (i32.store (i32.const 0) (i32.const 512))
    (i32.store (i32.const 4) (i32.const 64))
    (i32.store (i32.const 8) (i32.const 99))
    (local.set $errno (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (if (local.get $errno) (then (call $exit (i32.add (i32.const 90) (local.get $errno)))))
    (if (i32.load (i32.const 8)) (then (call $exit (i32.const 80))))
    (call $exit (i32.const 7))))`

// TestNoStdin: an instance with no input has no stdin, which it reads as
// at its end, as from /dev/null.
func TestNoStdin(t *testing.T) {
	e := newTestEngine(t, t.TempDir(), nil)
	m := enginetest.Prepare(t, e, wasmbuild.Wat(t, readStdinWat))
	inst, err := e.Start(context.Background(), m, engine.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	if res := inst.Wait(); res.ExitCode != 7 {
		t.Fatalf("result %+v, want exit 7: a read of stdin that succeeds with nothing", res)
	}
}

// TestSleepersHoldNoDescriptor: an instance's stdio holds no descriptor
// of the process's (its output goes straight to the sinks): a node's
// thousands of sleeping pods must not exhaust RLIMIT_NOFILE.
func TestSleepersHoldNoDescriptor(t *testing.T) {
	e := newTestEngine(t, t.TempDir(), nil)
	m := enginetest.Prepare(t, e, wasmbuild.Wat(t, sayAndSleepWat))
	const n = 200
	var insts []engine.Instance
	defer func() {
		for _, inst := range insts {
			inst.Kill()
			inst.Wait()
		}
	}()
	start := func() {
		insts = append(insts, enginetest.StartUntilLine(t, e, m, "asleep", true))
	}
	start() // the first start's descriptors (its code's) are not the instances'
	before := openFiles(t)
	for range n {
		start()
	}
	after := openFiles(t)
	t.Logf("open descriptors: %d, %d with %d more instances asleep", before, after, n)
	if per := float64(after-before) / n; per >= 0.1 {
		t.Fatalf("%d instances asleep added %d descriptors (%.2f each), want < 0.1 each", n, after-before, per)
	}
}

func openFiles(t *testing.T) int {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}
