package wasmtime

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

// failAfter takes n bytes, then fails every write; it counts the writes
// it is given after its first failure.
type failAfter struct {
	n, got int
	failed bool
	after  int
}

func (f *failAfter) Write(p []byte) (int, error) {
	if f.failed {
		f.after++
	}
	if f.got+len(p) > f.n {
		f.failed = true
		return 0, errors.New("full")
	}
	f.got += len(p)
	return len(p), nil
}

// TestHandlerRunOutput: a handler run's stdout (a pipe, pipeout.go) has
// reached its sink whole once the run has ended, more than a pipe holds
// included; a sink that fails neither blocks nor ends the module.
func TestHandlerRunOutput(t *testing.T) {
	e := newTestEngine(t, t.TempDir(), nil).(*Engine)
	const size, count = 10000, 100 // 1 MB in writes of 10 kB: many pipe buffers
	m := enginetest.Prepare(t, e, wasmbuild.Wat(t, writerWat(size, count)))
	run := func(stdout interface{ Write([]byte) (int, error) }) engine.Result {
		t.Helper()
		p, err := e.Instantiate(context.Background(), m, engine.Spec{})
		if err != nil {
			t.Fatal(err)
		}
		inst, err := p.Run(engine.Stdio{Stdout: stdout})
		if err != nil {
			t.Fatal(err)
		}
		return inst.Wait()
	}
	var out bytes.Buffer
	if res := run(&out); res.Reason != engine.ReasonCompleted {
		t.Fatalf("run: %+v", res)
	}
	if out.Len() != size*count {
		t.Fatalf("stdout has %d bytes once the run ended, want %d", out.Len(), size*count)
	}
	if n := bytes.Count(out.Bytes(), []byte{0}); n != size*count {
		t.Fatalf("stdout has %d zero bytes, want all %d", n, size*count)
	}
	f := &failAfter{n: 3 * size}
	if res := run(f); res.Reason != engine.ReasonCompleted {
		t.Fatalf("run with a failing sink: %+v", res)
	}
	if !f.failed || f.after != 0 || f.got > 3*size {
		t.Fatalf("the failing sink: failed %v, got %d bytes (at most %d), %d writes after it failed (want 0)", f.failed, f.got, 3*size, f.after)
	}
}

// TestPendingPipes: an instance instantiated ahead holds its run's stdout
// and stderr pipes (prepared with its WASI context); closed without a
// run, it gives both back to the engine's pool, read to their end, and
// the next runs, from those pipes, read only their own output.
func TestPendingPipes(t *testing.T) {
	readAtEnd(t)
	e := newTestEngine(t, t.TempDir(), nil).(*Engine)
	m := enginetest.Prepare(t, e, wasmbuild.Wat(t, writerWat(10, 3)))
	kept := func() int {
		e.pipes.mu.Lock()
		defer e.pipes.mu.Unlock()
		return len(e.pipes.free)
	}
	p, err := e.Instantiate(context.Background(), m, engine.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	if n := kept(); n != 0 {
		t.Fatalf("%d pipes in the pool with an instance pending, want 0 (it holds them)", n)
	}
	p.Close()
	if n := kept(); n != 2 {
		t.Fatalf("%d pipes in the pool after a pending instance was closed, want its 2", n)
	}
	for i := range 3 {
		p, err := e.Instantiate(context.Background(), m, engine.Spec{})
		if err != nil {
			t.Fatal(err)
		}
		var out, errb bytes.Buffer
		inst, err := p.Run(engine.Stdio{Stdout: &out, Stderr: &errb})
		if err != nil {
			t.Fatal(err)
		}
		if res := inst.Wait(); res.Reason != engine.ReasonCompleted {
			t.Fatalf("run %d: %+v", i, res)
		}
		if out.Len() != 30 || errb.Len() != 0 {
			t.Fatalf("run %d: %d bytes on stdout (want its 30), %d on stderr (want 0)", i, out.Len(), errb.Len())
		}
		if n := kept(); n != 2 {
			t.Fatalf("run %d: %d pipes in the pool after it, want 2", i, n)
		}
	}
}

// countWat writes count chunks of size bytes to stdout, each starting
// with its number (a little-endian uint32), the rest zeros; then, if
// lines is not 0, that many lines "e\n" to stderr.
func countWat(size, count, lines int) string {
	return fmt.Sprintf(`(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 4)
  (data (i32.const 64) "e\n")
  (func (export "_start") (local $i i32)
    (i32.store (i32.const 0) (i32.const 65536))
    (i32.store (i32.const 4) (i32.const %d))
    (i32.store (i32.const 16) (i32.const 64))
    (i32.store (i32.const 20) (i32.const 2))
    (block $done
      (loop $more
        (br_if $done (i32.ge_u (local.get $i) (i32.const %d)))
        (i32.store (i32.const 65536) (local.get $i))
        (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $more)))
    (local.set $i (i32.const 0))
    (block $done
      (loop $more
        (br_if $done (i32.ge_u (local.get $i) (i32.const %d)))
        (drop (call $write (i32.const 2) (i32.const 16) (i32.const 1) (i32.const 8)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $more)))))`, size, count, lines)
}

// runHandler runs m once in handler mode with stdout and stderr.
func runHandler(t *testing.T, e *Engine, m engine.Module, stdout, stderr interface{ Write([]byte) (int, error) }) engine.Result {
	t.Helper()
	p, err := e.Instantiate(context.Background(), m, engine.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	inst, err := p.Run(engine.Stdio{Stdout: stdout, Stderr: stderr})
	if err != nil {
		t.Fatal(err)
	}
	return inst.Wait()
}

// TestHandlerLargeOutput: a handler's response many times what its
// stdout pipe holds (pipeout.go) reaches its sink whole and in order.
func TestHandlerLargeOutput(t *testing.T) {
	e := newTestEngine(t, t.TempDir(), nil).(*Engine)
	const size, count = 10007, 60 // ~9 pipes' worth, in writes that do not divide one
	m := enginetest.Prepare(t, e, wasmbuild.Wat(t, countWat(size, count, 0)))
	for run := range 3 {
		var out, errs enginetest.Buffer
		if res := runHandler(t, e, m, &out, &errs); res.Reason != engine.ReasonCompleted {
			t.Fatalf("run %d: %+v", run, res)
		}
		b := []byte(out.String())
		if len(b) != size*count {
			t.Fatalf("run %d: %d bytes on stdout, want %d", run, len(b), size*count)
		}
		for k := range count {
			chunk := b[k*size : (k+1)*size]
			if n := binary.LittleEndian.Uint32(chunk); n != uint32(k) {
				t.Fatalf("run %d: chunk %d is chunk %d", run, k, n)
			}
			if z := bytes.Count(chunk[4:], []byte{0}); z != size-4 {
				t.Fatalf("run %d: chunk %d has %d bytes not zero", run, k, size-4-z)
			}
		}
		if errs.String() != "" {
			t.Fatalf("run %d: %d bytes on stderr, want 0", run, len(errs.String()))
		}
	}
}

// TestHandlerStderr: a handler run's stderr reaches its sink (the pod's
// log), apart from its stdout; a run with neither sink, and an instance
// closed without a run, leave nothing behind for the next.
func TestHandlerStderr(t *testing.T) {
	e := newTestEngine(t, t.TempDir(), nil).(*Engine)
	m := enginetest.Prepare(t, e, wasmbuild.Wat(t, countWat(10, 3, 5)))
	p, err := e.Instantiate(context.Background(), m, engine.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	if res := runHandler(t, e, m, nil, nil); res.Reason != engine.ReasonCompleted {
		t.Fatalf("run with no sinks: %+v", res)
	}
	for run := range 3 {
		var out, errs enginetest.Buffer
		if res := runHandler(t, e, m, &out, &errs); res.Reason != engine.ReasonCompleted {
			t.Fatalf("run %d: %+v", run, res)
		}
		if len(out.String()) != 30 || errs.String() != strings.Repeat("e\n", 5) {
			t.Fatalf("run %d: %d bytes on stdout (want 30), stderr %q (want 5 lines)", run, len(out.String()), errs.String())
		}
	}
}
