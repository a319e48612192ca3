package instance

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/instancestest"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/wazero"
	"github.com/wasmlet/wasmlet/services/executor/internal/handed"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
)

// exit3 exits 3 through proc_exit.
const exit3 = `(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 3))))`

// ConformanceHarness is the suite's harness over managers of eng, with the
// test modules of testdata/wasm.
// A harness over wazero takes handed-over listeners (none are ever handed).
func conformanceHarness(t *testing.T, eng engine.Engine) instancestest.Harness {
	cache := cachetest.Files{}
	spec := func(path string) instances.Spec {
		d, err := cache.Add(path)
		if err != nil {
			t.Fatal(err)
		}
		return instances.Spec{Module: instances.Module{Digest: d, Reference: "test/" + filepath.Base(path)}}
	}
	text := filepath.Join(t.TempDir(), "not.wasm")
	if err := os.WriteFile(text, []byte("this is not a Wasm module\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return instancestest.Harness{
		New: func(t *testing.T, history int) instances.Runtime {
			cfg := Config{ExecutorID: "conformance", Engine: eng, Cache: cache, ModuleDir: t.TempDir(), History: history}
			if canListen(eng) {
				cfg.Handed = handed.New(handed.Config{})
			}
			m, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				m.Shutdown(ctx)
			})
			return m
		},
		Exit0:         spec(wasmbuild.WatFile(t, "empty")),
		ExitNonZero:   spec(wasmbuild.Wat(t, exit3)),
		ExitCode:      3,
		Running:       spec(wasmbuild.WatFile(t, "idle")),
		NotWasm:       spec(text),
		MeasuresUsage: true,
	}
}

func TestConformanceWasmtime(t *testing.T) {
	instancestest.Run(t, conformanceHarness(t, testEngine(t)))
}

func TestConformanceWazero(t *testing.T) {
	eng, err := wazero.New(wazero.Config{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	instancestest.Run(t, conformanceHarness(t, eng))
}
