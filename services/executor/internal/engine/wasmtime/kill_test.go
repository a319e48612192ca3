package wasmtime

import (
	"context"
	"io"
	"testing"
	"time"

	wt "github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

// TestLayout: the engine reaches the C pointers of wasmtime-go's Store,
// Config, Linker, Module and WasiConfig by their layout in v39.0.1
// (storePointer, first). An upgrade that changes one must fail here, and New must refuse
// to make an engine.
func TestLayout(t *testing.T) {
	if err := checkLayout(newEngine(false, nil)); err != nil {
		t.Fatalf("%v: fix storePointer and first for this wasmtime-go", err)
	}
}

// spinWat computes without a host call until the epoch ends it.
const spinWat = `(module
  (memory (export "memory") 1)
  (func (export "_start") (loop br 0)))`

// TestKillOneOfMany: instances of one module share its code, and a kill
// of one, which advances the Engine's epoch they all share, ends only it.
func TestKillOneOfMany(t *testing.T) {
	e, err := New(Config{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	m := enginetest.Prepare(t, e, wasmbuild.Wat(t, spinWat))
	var insts []engine.Instance
	for range 3 {
		inst, err := e.Start(context.Background(), m, engine.Spec{Stdout: io.Discard})
		if err != nil {
			t.Fatal(err)
		}
		insts = append(insts, inst)
	}
	e.codes.mu.Lock()
	c := e.codes.byDigest[m.Digest()]
	users := 0
	if c != nil {
		users = c.users
	}
	e.codes.mu.Unlock()
	if users != 3 {
		t.Fatalf("the module's code has %d users, want the 3 instances", users)
	}
	time.Sleep(50 * time.Millisecond)
	for i, inst := range insts {
		t0 := time.Now()
		inst.Kill()
		select {
		case <-inst.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("instance %d not ended 5s after its kill", i)
		}
		if res := inst.Wait(); res.Reason != engine.ReasonKilled || res.Message != "the instance was killed" {
			t.Fatalf("instance %d: %+v", i, res)
		}
		if d := time.Since(t0); d > 100*time.Millisecond {
			t.Errorf("instance %d ended %v after its kill", i, d)
		}
		time.Sleep(50 * time.Millisecond) // the others saw the epoch pass
		for j, other := range insts[i+1:] {
			select {
			case <-other.Done():
				t.Fatalf("instance %d ended with the kill of instance %d: %+v", i+1+j, i, other.Wait())
			default:
			}
		}
	}
	e.codes.mu.Lock()
	users = c.users
	idle := c.idle != nil
	e.codes.mu.Unlock()
	if users != 0 || !idle {
		t.Errorf("once its instances ended the code has %d users (idle %v), want 0, kept idle", users, idle)
	}
}

// TestNoStoreLayout: a Store whose layout is not v39.0.1's is refused
// rather than read (here, a closed store: its pointer is nil).
func TestNoStoreLayout(t *testing.T) {
	s := wt.NewStore(newEngine(false, nil))
	s.Close()
	if p := storePointer(s); p != nil {
		t.Fatalf("a closed store's pointer reads %p, want nil: storePointer does not read Store's first field", p)
	}
}
