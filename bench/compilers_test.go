package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	wt "github.com/bytecodealliance/wasmtime-go/v39"
	wz "github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
)

// TestCompilerAlternatives measures the means of a faster cold start that
// live in the runtimes themselves, on the modules of the coldstart
// section: the compile of examples/hello and testdata/wasm/large by
// wasmtime's Cranelift as the engine configures it (the reference), by
// Cranelift at opt level none, with single-pass register allocation, with
// both (the engine's quick compile), with the Winch strategy asked for, and by
// wazero's compiler and interpreter (each also run to its end: an
// interpreter's code runs slower). Wall and CPU time (this process's
// user+system: on a loaded machine the steadier of the two), medians of
// rounds in which the alternatives take turns; and, beside them, the other
// work on a module's way to its first start (digest checks, the module
// store's write). Set
// WASMLET_BENCH_COMPILERS=1 (or a number of rounds):
//
//	WASMLET_BENCH_COMPILERS=3 go test -count=1 -run TestCompilerAlternatives -v -timeout 30m ./bench/
func TestCompilerAlternatives(t *testing.T) {
	rounds := 1
	switch v := os.Getenv("WASMLET_BENCH_COMPILERS"); v {
	case "":
		t.Skip("set WASMLET_BENCH_COMPILERS=<rounds> to measure the compilers")
	default:
		fmt.Sscan(v, &rounds)
	}
	hello := filepath.Join(t.TempDir(), "hello.wasm")
	cmd := exec.Command("go", "build", "-trimpath", "-o", hello, "./examples/hello")
	cmd.Dir, cmd.Env = "..", append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build examples/hello: %v: %s", err, out)
	}
	type alt struct {
		name    string
		compile func(t *testing.T, wasm []byte) (run time.Duration)
	}
	const decodeOnly = "not a compile: decode + validate (wazero, code cached)"
	// The reference's artifact: a setting the C API ignores compiles the
	// same bytes.
	var ref []byte
	tuned := func(tune func(*wt.Config)) func(t *testing.T, wasm []byte) time.Duration {
		return func(t *testing.T, wasm []byte) time.Duration {
			if b := wasmtimeCompile(t, wasm, tune); tune == nil {
				ref = b
			} else if bytes.Equal(b, ref) {
				t.Logf("%d-byte artifact identical to Cranelift's: the setting changed nothing", len(b))
			}
			return 0
		}
	}
	alts := []alt{
		{"wasmtime Cranelift (the engine's config)", tuned(nil)},
		{"wasmtime Cranelift, opt level none", tuned(func(c *wt.Config) { c.SetCraneliftOptLevel(wt.OptLevelNone) })},
		{"wasmtime Cranelift, single-pass register allocation", tuned(func(c *wt.Config) { c.SetCraneliftFlag("regalloc_algorithm", "single_pass") })},
		{"wasmtime Cranelift quick: both (--quick-first-compile)", tuned(func(c *wt.Config) {
			c.SetCraneliftOptLevel(wt.OptLevelNone)
			c.SetCraneliftFlag("regalloc_algorithm", "single_pass")
		})},
		// wasmtime-go has no constant for Winch; 2 is WASMTIME_STRATEGY_WINCH
		// in the C API headers that have it.
		{"wasmtime, Winch asked for (strategy 2)", tuned(func(c *wt.Config) { c.SetStrategy(wt.Strategy(2)) })},
		{"wazero compiler (the engine's)", func(t *testing.T, wasm []byte) time.Duration {
			return wazeroCompileRun(t, wasm, wz.NewRuntimeConfigCompiler())
		}},
		{"wazero interpreter", func(t *testing.T, wasm []byte) time.Duration {
			return wazeroCompileRun(t, wasm, wz.NewRuntimeConfigInterpreter())
		}},
		// The rest of a module's way to its first start, besides the
		// compile: each digest check hashes the bytes (the registry cache
		// on pull, the executor's module store on fetch), and the store
		// writes them to a file it renames into place.
		// A Runtime under another memory limit over the same cache finds
		// the module's code there, but decodes and validates it again.
		{decodeOnly, func(t *testing.T, wasm []byte) time.Duration {
			ctx := context.Background()
			r := wz.NewRuntimeWithConfig(ctx, wz.NewRuntimeConfigInterpreter().WithCompilationCache(decodeCache).WithMemoryLimitPages(4096))
			defer r.Close(ctx)
			if _, err := r.CompileModule(ctx, wasm); err != nil {
				t.Fatal(err)
			}
			return 0
		}},
		{"not a compile: sha256 of the bytes (one digest check)", func(t *testing.T, wasm []byte) time.Duration {
			sha256.Sum256(wasm)
			return 0
		}},
		{"not a compile: write to a file, rename (the module store)", func(t *testing.T, wasm []byte) time.Duration {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "m.tmp"), wasm, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(filepath.Join(dir, "m.tmp"), filepath.Join(dir, "m.wasm")); err != nil {
				t.Fatal(err)
			}
			return 0
		}},
	}
	var report strings.Builder
	fmt.Fprintf(&report, "\n| module | compiler | compile wall ms | compile CPU ms | CPU / Cranelift's | run to end ms |\n|---|---|---|---|---|---|\n")
	for _, mod := range []struct{ name, path string }{{"examples/hello", hello}, {"testdata/wasm/large", wasmbuild.Build(t, "large")}} {
		wasm, err := os.ReadFile(mod.path)
		if err != nil {
			t.Fatal(err)
		}
		walls, cpus, runs := make([][]float64, len(alts)), make([][]float64, len(alts)), make([][]float64, len(alts))
		for range rounds {
			for i, a := range alts {
				if a.name == decodeOnly { // the module's code in the cache first, untimed
					ctx := context.Background()
					r := wz.NewRuntimeWithConfig(ctx, wz.NewRuntimeConfigInterpreter().WithCompilationCache(decodeCache))
					if _, err := r.CompileModule(ctx, wasm); err != nil {
						t.Fatal(err)
					}
				}
				c0, t0 := processCPU(), time.Now()
				run := a.compile(t, wasm)
				wall, cpu := time.Since(t0)-run, processCPU()-c0
				walls[i] = append(walls[i], ms(wall))
				cpus[i] = append(cpus[i], ms(cpu)) // a run's CPU is small beside a compile's
				runs[i] = append(runs[i], ms(run))
			}
		}
		ref := median(cpus[0])
		for i, a := range alts {
			fmt.Fprintf(&report, "| %s (%.1f MB) | %s | %.0f | %.0f | %.2f | %.0f |\n", mod.name, float64(len(wasm))/1e6, a.name, median(walls[i]), median(cpus[i]), median(cpus[i])/ref, median(runs[i]))
		}
	}
	t.Log(report.String())
}

// decodeCache holds the interpreted code of the modules measured, so that
// a compile finds it and only decodes and validates.
var decodeCache = wz.NewCompilationCache()

// wasmtimeCompile compiles wasm in an Engine configured as the wasmtime
// engine's (epoch interruption), changed by tune, and returns the
// artifact.
func wasmtimeCompile(t *testing.T, wasm []byte, tune func(*wt.Config)) []byte {
	t.Helper()
	cfg := wt.NewConfig()
	cfg.SetEpochInterruption(true)
	if tune != nil {
		tune(cfg)
	}
	e := wt.NewEngineWithConfig(cfg)
	defer e.Close()
	m, err := wt.NewModule(e, wasm)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	b, err := m.Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// wazeroCompileRun compiles wasm in a wazero Runtime of cfg and runs it
// to its end with WASI, returning how long the run took.
func wazeroCompileRun(t *testing.T, wasm []byte, cfg wz.RuntimeConfig) time.Duration {
	t.Helper()
	ctx := context.Background()
	r := wz.NewRuntimeWithConfig(ctx, cfg)
	defer r.Close(ctx)
	wasi_snapshot_preview1.MustInstantiate(ctx, r)
	cm, err := r.CompileModule(ctx, wasm)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	var out bytes.Buffer
	_, err = r.InstantiateModule(ctx, cm, wz.NewModuleConfig().WithArgs("app").WithEnv("COUNT", "1").WithStdout(&out).WithStderr(&out))
	if err != nil && !strings.Contains(err.Error(), "exit_code(0)") {
		t.Fatalf("run: %v: %s", err, out.Bytes())
	}
	return time.Since(t0)
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return quantile(s, 0.5)
}
