package wazero

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/gcpercent"
	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

// BenchmarkFirstStart times the executor's part of a cold start on an
// InterpretFirst engine: Prepare and Start of a module it has never seen,
// to Start's return (where the executor reports the instance RUNNING).
// Each iteration starts a variant of its own (a custom section: a digest
// the engine has not seen), kills it once started and waits for the
// compile behind before the next, as the bench's coldstart section starts
// each on a quiet executor (go test -bench FirstStart -benchtime 5x).
func BenchmarkFirstStart(b *testing.B) {
	// The executor's collector target (main), which the compile's growth of the heap meets.
	defer debug.SetGCPercent(debug.SetGCPercent(gcpercent.Percent))
	for _, mod := range []struct{ name, dir string }{{"hello", "examples/hello"}, {"large", "testdata/wasm/large"}} {
		b.Run(mod.name, func(b *testing.B) {
			wasm, err := os.ReadFile(wasmbuild.BuildDir(b, mod.dir))
			if err != nil {
				b.Fatal(err)
			}
			e := newInterpretFirst(b, b.TempDir())
			dir := b.TempDir()
			var prepare, start, cpu time.Duration
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				path := filepath.Join(dir, fmt.Sprintf("v%d.wasm", i))
				v := wasmbuild.WithCustomSection(wasm, "wasmlet-bench", fmt.Appendf(nil, "%d-%d", time.Now().UnixNano(), i))
				if err := os.WriteFile(path, v, 0o644); err != nil {
					b.Fatal(err)
				}
				sum := sha256.Sum256(v)
				b.StartTimer()
				c0 := enginetest.ProcessCPU()
				t0 := time.Now()
				m, err := e.Prepare(context.Background(), "sha256:"+hex.EncodeToString(sum[:]), path)
				if err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				inst, err := e.Start(context.Background(), m, engine.Spec{Args: []string{mod.name}, Env: []engine.EnvVar{{Name: "SLEEP", Value: "1h"}}, Stdout: &enginetest.Buffer{}, MemoryLimitBytes: 256 << 20})
				if err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				b.StopTimer()
				prepare, start, cpu = prepare+t1.Sub(t0), start+t2.Sub(t1), cpu+enginetest.ProcessCPU()-c0
				inst.Kill()
				<-inst.Done()
				waitBehind(b, e)
				b.StartTimer()
			}
			b.ReportMetric(float64(prepare.Microseconds())/1e3/float64(b.N), "prepare-ms/op")
			b.ReportMetric(float64(start.Microseconds())/1e3/float64(b.N), "start-ms/op")
			// The process's CPU meanwhile (every thread's): less than the
			// machine's load sways the times above.
			b.ReportMetric(float64(cpu.Microseconds())/1e3/float64(b.N), "cpu-ms/op")
		})
	}
}
