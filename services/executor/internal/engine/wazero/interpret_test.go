package wazero

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

func newInterpretFirst(t testing.TB, dir string) *Engine {
	t.Helper()
	e, err := New(Config{CacheDir: dir, InterpretFirst: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

// TestConformanceInterpretFirst: the suite's instance cases on an engine
// whose first start of each module is interpreted and later ones compiled.
func TestConformanceInterpretFirst(t *testing.T) {
	enginetest.RunInstances(t, interpretFirst(false))
}

// TestConformanceInterpreted: the same cases with every instance
// interpreted (limits, kills, CPU limits and usage, output): an engine
// closed at once compiles nothing behind.
func TestConformanceInterpreted(t *testing.T) {
	enginetest.RunInstances(t, interpretFirst(true))
}

// interpretFirst makes InterpretFirst engines, closed at once if closed
// (else when the test ends), each with a cache of its own (the suite's is shared with
// TestConformance, whose compiled entries would be loaded).
func interpretFirst(closed bool) enginetest.NewEngine {
	return func(t testing.TB, _ string, cpu engine.ThreadLimiter) engine.Engine {
		e, err := New(Config{CacheDir: t.TempDir(), CPU: cpu, InterpretFirst: true})
		if err != nil {
			t.Fatal(err)
		}
		if closed {
			e.Close()
		} else {
			// Before the cache directory goes (cleanups run last first):
			// Close cancels and waits for the compiles behind.
			t.Cleanup(func() { e.Close() })
		}
		return e
	}
}

// inUse counts the instances (and callers) using digest's code,
// interpreted and compiled.
func inUse(e *Engine, digest string) (interp, comp int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for k, r := range e.runtimes {
		if c := r.compiled[digest]; c != nil {
			if k.interp {
				interp += c.refs
			} else {
				comp += c.refs
			}
		}
	}
	return interp, comp
}

// kept reports whether interpreted code of digest is still held.
func keptInterpreted(e *Engine, digest string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for k, r := range e.runtimes {
		if k.interp && r.compiled[digest] != nil {
			return true
		}
	}
	return false
}

// waitBehind waits until no background compile runs or waits.
func waitBehind(t testing.TB, e *Engine) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		e.behind.mu.Lock()
		n := len(e.behind.pending)
		e.behind.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("background compile still running after 2m")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func start(t *testing.T, e engine.Engine, m engine.Module, env ...engine.EnvVar) engine.Instance {
	t.Helper()
	inst, err := e.Start(context.Background(), m, engine.Spec{Args: []string{"hello"}, Env: env, Stdout: &enginetest.Buffer{}, MemoryLimitBytes: 256 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return inst
}

// runsCompiled prepares and starts wasm on e, which must start it
// compiled (from), and waits for its exit code.
func runsCompiled(t *testing.T, e *Engine, wasm string, code int32, from string) {
	t.Helper()
	m := enginetest.Prepare(t, e, wasm)
	inst := start(t, e, m)
	if interp, comp := inUse(e, m.Digest()); interp != 0 || comp != 1 {
		t.Fatalf("start from %s: %d interpreted, %d compiled users, want 0 and 1", from, interp, comp)
	}
	if res := inst.Wait(); !res.Exited || res.ExitCode != code {
		t.Fatalf("start from %s: %+v, want exit code %d", from, res, code)
	}
}

// TestInterpretFirst: with a Go-built module, Prepare compiles nothing;
// the first start is interpreted and starts the compile behind; a start
// after it runs compiled code while the first instance goes on
// interpreted; a kill stops the interpreted instance, whose code is then
// let go; an engine started again on the cache starts compiled at once.
func TestInterpretFirst(t *testing.T) {
	dir := t.TempDir()
	e := newInterpretFirst(t, dir)
	wasm := wasmbuild.BuildDir(t, "examples/hello")
	m := enginetest.Prepare(t, e, wasm)
	if n := e.ArtifactStats().Compiles; n != 0 {
		t.Fatalf("Prepare compiled %d times, want 0 (interpreted)", n)
	}
	forever := []engine.EnvVar{{Name: "COUNT", Value: "1000000000"}, {Name: "SLEEP", Value: "10ms"}}
	first := start(t, e, m, forever...)
	if interp, comp := inUse(e, m.Digest()); interp != 1 || comp != 0 {
		t.Fatalf("first start: %d interpreted, %d compiled users, want 1 and 0", interp, comp)
	}
	waitBehind(t, e)
	if n := e.ArtifactStats().Compiles; n != 1 {
		t.Fatalf("%d compiles behind the first start, want 1", n)
	}
	if _, err := os.Stat(e.indexPath(m.Digest())); err != nil {
		t.Fatalf("no cache entry after the compile behind: %v", err)
	}
	// Compiled under the first instance's limit: the next instance of that
	// limit finds the code in memory, not on disk to decode again.
	e.mu.Lock()
	r := e.runtimes[rtKey{pages: pages(256 << 20)}]
	e.mu.Unlock()
	if r == nil || r.compiled[m.Digest()] == nil {
		t.Fatal("the compile behind left no code in the runtime of the first instance's memory limit")
	}
	second := start(t, e, m, forever...)
	if interp, comp := inUse(e, m.Digest()); interp != 1 || comp != 1 {
		t.Fatalf("second start: %d interpreted, %d compiled users, want 1 and 1", interp, comp)
	}
	select {
	case <-first.Done():
		t.Fatalf("the interpreted instance ended when the compiled one started: %+v", first.Wait())
	default:
	}
	first.Kill()
	if res := first.Wait(); res.Reason != engine.ReasonKilled {
		t.Fatalf("interpreted instance killed: %+v, want reason %s", res, engine.ReasonKilled)
	}
	if keptInterpreted(e, m.Digest()) {
		t.Fatal("interpreted code kept after its last instance ended, the module compiled")
	}
	second.Kill()
	second.Wait()

	e2 := newInterpretFirst(t, dir)
	runsCompiled(t, e2, wasm, 0, "a warm cache")
	if n := e2.ArtifactStats().Compiles; n != 0 {
		t.Fatalf("the engine on a warm cache compiled %d times", n)
	}
}

// TestInterpretFirstCompileFails: a compile behind that fails (wazero
// cannot write its cache: its directory is a file) is logged and not tried
// again; the module's instances go on starting, interpreted.
func TestInterpretFirstCompileFails(t *testing.T) {
	e := newInterpretFirst(t, t.TempDir())
	_, dir, err := e.entries()
	if err != nil || dir == "" {
		t.Fatalf("wazero's cache directory: %q, %v", dir, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	m := enginetest.Prepare(t, e, wasmbuild.Wat(t, sleepThenExit(100*time.Millisecond, 3)))
	for i := range 3 {
		inst := start(t, e, m)
		if interp, comp := inUse(e, m.Digest()); interp != 1 || comp != 0 {
			t.Fatalf("start %d: %d interpreted, %d compiled users, want 1 and 0", i, interp, comp)
		}
		if res := inst.Wait(); !res.Exited || res.ExitCode != 3 {
			t.Fatalf("start %d: %+v, want exit code 3", i, res)
		}
		waitBehind(t, e)
	}
	e.behind.mu.Lock()
	failed := e.behind.failed[m.Digest()]
	e.behind.mu.Unlock()
	if failed == nil {
		t.Fatal("the failed compile behind was not recorded")
	}
	if n := e.ArtifactStats().Compiles; n != 1 {
		t.Fatalf("%d compiles, want 1: a failed compile is not tried again", n)
	}
}

// TestInterpretFirstCloseCancels: Close cancels a compile behind (of the
// ~8 MB testdata/wasm/large, seconds of compiling) at once: nothing is
// kept in the cache, no failure recorded, and later starts still work,
// interpreted.
func TestInterpretFirstCloseCancels(t *testing.T) {
	e := newInterpretFirst(t, t.TempDir())
	m := enginetest.Prepare(t, e, wasmbuild.Build(t, "large"))
	inst := start(t, e, m)
	t0 := time.Now()
	e.Close()
	t.Logf("Close returned after %v", time.Since(t0))
	if _, err := os.Stat(e.indexPath(m.Digest())); err == nil {
		t.Fatal("the module was compiled into the cache: Close waited for the compile instead of cancelling it")
	}
	e.behind.mu.Lock()
	failed, pending := e.behind.failed[m.Digest()], len(e.behind.pending)
	e.behind.mu.Unlock()
	if failed != nil || pending != 0 {
		t.Fatalf("after Close: failed %v, %d pending; want none", failed, pending)
	}
	if res := inst.Wait(); !res.Exited || res.ExitCode != 0 {
		t.Fatalf("the interpreted instance: %+v", res)
	}
	again := start(t, e, m)
	if interp, _ := inUse(e, m.Digest()); interp != 1 {
		t.Fatalf("start after Close: %d interpreted users, want 1", interp)
	}
	if res := again.Wait(); !res.Exited || res.ExitCode != 0 {
		t.Fatalf("start after Close: %+v", res)
	}
}

// sleepThenExit is a WASI command that sleeps d in poll_oneoff and exits
// with code: it is still running when a test looks at its users.
func sleepThenExit(d time.Duration, code int) string {
	return fmt.Sprintf(`(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i64.store (i32.const 0) (i64.const 7))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const %d))
    (drop (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 256)))
    (call $exit (i32.const %d))))`, d.Nanoseconds(), code)
}

// TestInterpretFirstShared: a module another executor compiled and shared
// starts compiled from the shared store, not interpreted; one the store
// lacks starts interpreted, and the store is asked once for it, not again
// by its compile behind.
func TestInterpretFirstShared(t *testing.T) {
	store := enginetest.NewMemoryStore()
	// A module that exits at once could be gone before its users are
	// counted (a flake seen in CI: 0 users).
	wasm := wasmbuild.Wat(t, sleepThenExit(300*time.Millisecond, 3))
	newShared := func() *Engine {
		e, err := New(Config{CacheDir: t.TempDir(), Shared: store, InterpretFirst: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		return e
	}
	e1 := newShared()
	m1 := enginetest.Prepare(t, e1, wasm)
	first := start(t, e1, m1)
	if interp, _ := inUse(e1, m1.Digest()); interp != 1 {
		t.Fatalf("a module the store lacks: %d interpreted users, want 1", interp)
	}
	first.Wait()
	waitBehind(t, e1)
	e1.WaitShared()
	if st := e1.ArtifactStats(); st.SharedMisses != 1 || st.Compiles != 1 || st.SharedPuts != 1 {
		t.Fatalf("first executor: %+v, want 1 miss, 1 compile, 1 put", st)
	}

	e2 := newShared()
	runsCompiled(t, e2, wasm, 3, "the shared entry")
	if st := e2.ArtifactStats(); st.SharedHits != 1 || st.Compiles != 0 {
		t.Fatalf("second executor: %+v, want 1 hit, no compile", st)
	}
}

// TestInterpretFirstServerCompiled: an instance with listeners, a server
// that would serve interpreted all its life, starts compiled: the compile
// is done when Start returns, and nothing was interpreted.
func TestInterpretFirstServerCompiled(t *testing.T) {
	e := newInterpretFirst(t, t.TempDir())
	m := enginetest.Prepare(t, e, wasmbuild.Wat(t, enginetest.ProcExit(0)))
	host, port := enginetest.LoopbackAddr(t)
	inst, err := e.Start(context.Background(), m, enginetest.ServeSpec(t, host, port, &enginetest.Buffer{}))
	if err != nil {
		t.Fatal(err)
	}
	if n := e.ArtifactStats().Compiles; n != 1 || keptInterpreted(e, m.Digest()) {
		t.Fatalf("server start: %d compiles, interpreted code kept %v; want 1 compile, none interpreted", n, keptInterpreted(e, m.Digest()))
	}
	if res := inst.Wait(); !res.Exited || res.ExitCode != 0 {
		t.Fatalf("server module: %+v", res)
	}
}
