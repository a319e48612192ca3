package wazero

import (
	"context"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

// TestKillBurst: sleeping Go modules killed at once end without spinning
// in poll_oneoff until wazero marks each closed (about a time slice, 10
// ms of CPU, each).
func TestKillBurst(t *testing.T) {
	e := newEngine(t, t.TempDir(), nil)
	m := enginetest.Prepare(t, e, wasmbuild.BuildDir(t, "examples/hello"))
	const n = 200
	insts := make([]engine.Instance, n)
	for i := range insts {
		w := enginetest.NewLineWaiter("count 1")
		inst, err := e.Start(context.Background(), m, engine.Spec{Args: []string{"hello"}, Env: env("COUNT", "2", "SLEEP", "1h"), Stdout: w})
		if err != nil {
			t.Fatal(err)
		}
		insts[i] = inst
		<-w.Seen
	}
	time.Sleep(100 * time.Millisecond) // all in their sleep
	cpu := enginetest.ProcessCPU()
	for _, inst := range insts {
		inst.Kill()
	}
	for i, inst := range insts {
		if res := inst.Wait(); res.Reason != engine.ReasonKilled {
			t.Fatalf("instance %d: %+v", i, res)
		}
	}
	per := (enginetest.ProcessCPU() - cpu) / n
	if per > 2*time.Millisecond {
		t.Errorf("a kill took %v of CPU", per)
	}
	t.Logf("CPU per kill: %v", per)
}
