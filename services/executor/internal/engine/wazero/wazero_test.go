package wazero

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

func newEngine(t testing.TB, dir string, cpu engine.ThreadLimiter) engine.Engine {
	t.Helper()
	e, err := New(Config{CacheDir: dir, CPU: cpu})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestConformance(t *testing.T) {
	enginetest.Run(t, newEngine)
}

// TestServe runs the example HTTP server on listeners the engine opens.
func TestServe(t *testing.T) {
	enginetest.RunServe(t, newEngine)
}

func TestPages(t *testing.T) {
	for _, tc := range []struct {
		limit int64
		want  uint32
	}{{0, 65536}, {-1, 65536}, {1, 1}, {64 << 10, 1}, {64<<10 + 1, 1}, {64 << 20, 1024}, {4 << 30, 65536}, {8 << 30, 65536}} {
		if got := pages(tc.limit); got != tc.want {
			t.Errorf("pages(%d) = %d, want %d", tc.limit, got, tc.want)
		}
	}
}

func BenchmarkEngine(b *testing.B) {
	enginetest.Bench(b, newEngine)
}

func BenchmarkServe(b *testing.B) {
	enginetest.BenchServe(b, newEngine)
}

func newSharing(t testing.TB, dir string, store engine.ArtifactStore) engine.Engine {
	t.Helper()
	e, err := New(Config{CacheDir: dir, Shared: store})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestSharedArtifacts(t *testing.T) {
	enginetest.RunShared(t, newSharing)
}

// TestSharedBundleRejected: an intact bundle whose entry wazero does not
// look for (made on a host whose CPU features the engine key did not tell
// apart), or whose entry wazero cannot load, is noticed: counted rejected,
// removed, the module compiled, and the store's entry replaced.
func TestSharedBundleRejected(t *testing.T) {
	wasm := wasmbuild.Wat(t, enginetest.ProcExit(3))
	store := enginetest.NewMemoryStore()
	e1 := newSharing(t, t.TempDir(), store).(*Engine)
	m := enginetest.Prepare(t, e1, wasm)
	e1.WaitShared()
	key := engine.ArtifactKey{ModuleDigest: m.Digest(), EngineKey: e1.Key()}
	good, ok := store.Entry(key)
	if !ok {
		t.Fatal("the first engine put nothing")
	}
	parts := bytes.SplitN(good.Bytes, []byte("\n"), 3)
	name, entry := string(parts[1]), parts[2]
	for _, tc := range []struct {
		test, name string
		entry      []byte
	}{
		{"EntryForAnotherHost", strings.Repeat("ab", 32), entry},
		{"EntryNotLoadable", name, bytes.Repeat([]byte("garbage!"), 100)},
	} {
		t.Run(tc.test, func(t *testing.T) {
			bundle := append([]byte(bundleMagic+tc.name+"\n"), tc.entry...)
			sum := sha256.Sum256(bundle)
			store.Set(key, enginetest.MemoryEntry{Info: engine.ArtifactInfo{Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(bundle))}, Bytes: bundle})
			e2 := newSharing(t, t.TempDir(), store).(*Engine)
			m2 := enginetest.Prepare(t, e2, wasm)
			if res := enginetest.Run1(t, e2, m2, engine.Spec{}); res.ExitCode != 3 {
				t.Fatalf("result %+v", res)
			}
			if st := e2.ArtifactStats(); st.SharedRejected != 1 || st.Compiles != 1 || st.SharedHits != 0 {
				t.Fatalf("stats %+v, want one rejected and one compile", st)
			}
			e2.WaitShared()
			if now, _ := store.Entry(key); !bytes.Equal(now.Bytes, good.Bytes) {
				t.Fatal("the bad bundle was not replaced by this engine's")
			}
			es, dir, err := e2.entries()
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range es {
				if d.Name() != name {
					t.Errorf("entry %s left in %s beside the module's %s", d.Name(), dir, name)
				}
				if d.Name() == name {
					if b, _ := os.ReadFile(filepath.Join(dir, name)); !bytes.Equal(b, entry) {
						t.Errorf("entry %s is not the compiled one", name)
					}
				}
			}
		})
	}
}

func TestCompiles(t *testing.T) {
	enginetest.RunCompiles(t, newEngine, 16000) // a compile of seconds, as for wasmtime
}

// TestRuntimesBounded: instances under many distinct memory limits leave
// at most MaxRuntimes runtimes and MaxCompiled compiled modules, and one
// still running keeps its runtime and compiled module.
func TestRuntimesBounded(t *testing.T) {
	e, err := New(Config{CacheDir: t.TempDir(), MaxRuntimes: 2, MaxCompiled: 2})
	if err != nil {
		t.Fatal(err)
	}
	sleeper := enginetest.Prepare(t, e, wasmbuild.Wat(t, enginetest.SleepLoop(1, 300*time.Millisecond)))
	quick := enginetest.Prepare(t, e, wasmbuild.Wat(t, `(module (func (export "_start")) (memory (export "memory") 1))`))
	long, err := e.Start(context.Background(), sleeper, engine.Spec{Args: []string{"s"}, MemoryLimitBytes: 100 << 20})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if res := enginetest.Run1(t, e, quick, engine.Spec{Args: []string{"q"}, MemoryLimitBytes: int64(i+1) << 20}); res.Reason != engine.ReasonCompleted {
			t.Fatalf("limit %d MiB: %+v", i+1, res)
		}
	}
	if res := long.Wait(); res.Reason != engine.ReasonCompleted {
		t.Fatalf("the instance running while others came and went: %+v", res)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.runtimes) > 2 || e.ncompiled > 2 {
		t.Fatalf("%d runtimes and %d compiled modules kept, want at most 2 each", len(e.runtimes), e.ncompiled)
	}
}

func TestDiskBound(t *testing.T) {
	enginetest.RunDiskBound(t, func(t testing.TB, dir string, maxBytes int64) engine.Engine {
		// One compiled module in memory: the others start from the disk.
		e, err := New(Config{CacheDir: dir, MaxCacheBytes: maxBytes, MaxCompiled: 1})
		if err != nil {
			t.Fatal(err)
		}
		return e
	})
}

// TestHandler runs modules in handler mode (package wagi).
func TestHandler(t *testing.T) {
	enginetest.RunHandler(t, newEngine)
}

func BenchmarkServeHandler(b *testing.B) {
	enginetest.BenchServeHandler(b, newEngine)
}

func BenchmarkHandlerRequest(b *testing.B) {
	enginetest.BenchHandlerRequest(b, newEngine)
}
