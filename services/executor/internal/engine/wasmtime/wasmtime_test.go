package wasmtime

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"testing"
	"time"

	wt "github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

func newTestEngine(t testing.TB, dir string, cpu engine.ThreadLimiter) engine.Engine {
	t.Helper()
	e, err := New(Config{CacheDir: dir, CPU: cpu})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestConformance(t *testing.T) {
	enginetest.Run(t, newTestEngine)
}

// TestServe: wasmtime-go has no socket preopen; listeners are refused.
func TestServe(t *testing.T) {
	enginetest.RunServe(t, newTestEngine)
}

// TestHandler runs modules in handler mode (package wagi).
func TestHandler(t *testing.T) {
	enginetest.RunHandler(t, newTestEngine)
}

// TestCorruptArtifactInternals covers what the conformance suite cannot see
// from outside: an artifact changed under a running process, and a missing
// sidecar.
func TestCorruptArtifactInternals(t *testing.T) {
	dir := t.TempDir()
	wasm := wasmbuild.Wat(t, enginetest.ProcExit(3))
	e1 := newTestEngine(t, dir, nil).(*Engine)
	m := enginetest.Prepare(t, e1, wasm)
	art := e1.modules[m.Digest()].artifact
	orig, err := os.ReadFile(art)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("changed under a running process", func(t *testing.T) {
		b := bytes.Clone(orig)
		for i := len(b) / 2; i < len(b)/2+64 && i < len(b); i++ {
			b[i] ^= 0xff
		}
		if err := os.WriteFile(art, b, 0o600); err != nil {
			t.Fatal(err)
		}
		future := time.Now().Add(time.Hour)
		os.Chtimes(art, future, future)
		if res := enginetest.Run1(t, e1, m, engine.Spec{}); res.ExitCode != 3 {
			t.Fatalf("result %+v", res)
		}
		if err := engine.VerifyFile(art, art+".sha256"); err != nil {
			t.Fatalf("artifact not rebuilt: %v", err)
		}
	})
	t.Run("missing sidecar", func(t *testing.T) {
		os.Remove(art + ".sha256")
		e3 := newTestEngine(t, dir, nil)
		if _, err := e3.Prepare(context.Background(), m.Digest(), wasm); err != nil {
			t.Fatal(err)
		}
		if err := engine.VerifyFile(art, art+".sha256"); err != nil {
			t.Fatalf("artifact not rebuilt: %v", err)
		}
	})
}

func BenchmarkEngine(b *testing.B) {
	enginetest.Bench(b, newTestEngine)
}

func TestSharedArtifacts(t *testing.T) {
	enginetest.RunShared(t, func(t testing.TB, dir string, store engine.ArtifactStore) engine.Engine {
		e, err := New(Config{CacheDir: dir, Shared: store})
		if err != nil {
			t.Fatal(err)
		}
		return e
	})
}

// pollFdsWat polls a 5 s clock (userdata 3) and stdout's writability
// (userdata 5), and exits with 10 × events + the first event's userdata.
const pollFdsWat = `(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i64.store (i32.const 0) (i64.const 3))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 5000000000))
    (i64.store (i32.const 48) (i64.const 5))
    (i32.store8 (i32.const 56) (i32.const 2))
    (i32.store (i32.const 64) (i32.const 1))
    (if (call $poll (i32.const 0) (i32.const 128) (i32.const 2) (i32.const 256))
      (then (call $exit (i32.const 99))))
    (call $exit (i32.add
      (i32.mul (i32.load (i32.const 256)) (i32.const 10))
      (i32.load (i32.const 128))))))`

// The engine's own poll_oneoff (async.go): an fd subscription is ready at
// once, and only the subscriptions that are ready get events, as in
// wasmtime's.
func TestPollOneoffFdReady(t *testing.T) {
	e := newTestEngine(t, t.TempDir(), nil)
	path := wasmbuild.Wat(t, pollFdsWat)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	m, err := e.Prepare(context.Background(), "sha256:"+hex.EncodeToString(sum[:]), path)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	inst, err := e.Start(context.Background(), m, engine.Spec{Stdout: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	res := inst.Wait()
	if !res.Exited || res.ExitCode != 15 || time.Since(t0) > 2*time.Second {
		t.Fatalf("result %+v after %v, want exit code 15 (one event, stdout's) at once", res, time.Since(t0))
	}
}

// BenchmarkNativeSleep is the Sleep benchmark of BenchmarkEngine without
// the engine: wasmtime's own poll_oneoff, called synchronously, which the
// engine replaces so that a kill ends a sleep and a sleep holds no thread
// (async.go). Compare cpu-µs/sleep:
//
//	go test -run '^$' -bench 'Engine/Sleep|NativeSleep' -benchtime 5x ./services/executor/internal/engine/wasmtime/
func BenchmarkNativeSleep(b *testing.B) {
	wasm, err := os.ReadFile(wasmbuild.Wat(b, enginetest.SleepLoop(enginetest.SleepLoopSleeps, time.Millisecond)))
	if err != nil {
		b.Fatal(err)
	}
	cfg := wt.NewConfig()
	cfg.SetEpochInterruption(true)
	eng := wt.NewEngineWithConfig(cfg) // synchronous, as wasmtime-go calls wasm
	defer eng.Close()
	mod, err := wt.NewModule(eng, wasm)
	if err != nil {
		b.Fatal(err)
	}
	l := wt.NewLinker(eng)
	if err := l.DefineWasi(); err != nil {
		b.Fatal(err)
	}
	c0 := enginetest.ProcessCPU()
	b.ResetTimer()
	for range b.N {
		st := wt.NewStore(eng)
		st.SetWasi(wt.NewWasiConfig())
		st.SetEpochDeadline(1) // nothing advances the epoch
		inst, err := l.Instantiate(st, mod)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := inst.GetFunc(st, "_start").Call(st); err != nil {
			b.Fatal(err)
		}
		st.Close()
	}
	b.StopTimer()
	enginetest.ReportSleepCPU(b, enginetest.ProcessCPU()-c0)
}

func TestCompiles(t *testing.T) {
	enginetest.RunCompiles(t, newTestEngine, 600) // Cranelift is slower per function than wazero
}

func TestDiskBound(t *testing.T) {
	enginetest.RunDiskBound(t, func(t testing.TB, dir string, maxBytes int64) engine.Engine {
		e, err := New(Config{CacheDir: dir, MaxCacheBytes: maxBytes})
		if err != nil {
			t.Fatal(err)
		}
		return e
	})
}

func BenchmarkServeHandler(b *testing.B) {
	enginetest.BenchServeHandler(b, newTestEngine)
}

func BenchmarkHandlerRequest(b *testing.B) {
	enginetest.BenchHandlerRequest(b, newTestEngine)
}
