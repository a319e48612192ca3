package wasmtime

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

// sleepySink takes d over each Write, as a sink that waits on a lock or
// a slow reader does.
type sleepySink struct{ d time.Duration }

func (s sleepySink) Write(p []byte) (int, error) {
	time.Sleep(s.d)
	return len(p), nil
}

// cpuTime is the process's CPU time so far, user and system.
func cpuTime(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestOutputWaitIdle: while a module waits in fd_write for a slow sink
// (its write on wasmtime's runtime thread, its fiber pending), the
// thread that drives the fiber waits too: it does not poll the future in
// a loop, which would burn a core the write itself may need.
func TestOutputWaitIdle(t *testing.T) {
	e := newTestEngine(t, t.TempDir(), nil)
	m := enginetest.Prepare(t, e, wasmbuild.Wat(t, writerWat(100, 4)))
	const slow = 100 * time.Millisecond
	wall, before := time.Now(), cpuTime(t)
	inst, err := e.Start(context.Background(), m, engine.Spec{Stdout: sleepySink{slow}})
	if err != nil {
		t.Fatal(err)
	}
	if res := inst.Wait(); res.Reason != engine.ReasonCompleted {
		t.Fatalf("%+v", res)
	}
	cpu, took := cpuTime(t)-before, time.Since(wall)
	t.Logf("4 writes of %v each: %v wall, %v CPU", slow, took, cpu)
	if took < 4*slow {
		t.Fatalf("the run took %v, less than its writes (4 × %v): the sink was not waited for", took, slow)
	}
	if cpu > took/4 {
		t.Fatalf("the process used %v of CPU in %v waiting for the sink: the fiber's driver spins while the write runs", cpu, took)
	}
}
