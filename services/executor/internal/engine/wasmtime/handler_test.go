package wasmtime

import (
	"bytes"
	"context"
	"errors"
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
