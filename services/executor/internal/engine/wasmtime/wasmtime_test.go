package wasmtime

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/wasmbuild"
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
		if err := verify(art); err != nil {
			t.Fatalf("artifact not rebuilt: %v", err)
		}
	})
	t.Run("missing sidecar", func(t *testing.T) {
		os.Remove(art + ".sha256")
		e3 := newTestEngine(t, dir, nil)
		if _, err := e3.Prepare(context.Background(), m.Digest(), wasm); err != nil {
			t.Fatal(err)
		}
		if err := verify(art); err != nil {
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
