package enginetest

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// Bench measures an engine the way the executor's benchmarks compare
// engines: Start of a prepared Go-built module (from precompiled code to a
// running _start), and the latency of killing a spinning module, each
// with p50 and p99 in milliseconds; and the process CPU per start of
// instances that stay running, as pods' do (testdata/wasm/idle), so that
// no start reuses what an ended instance leaves (for wasmtime, its
// Engine); and the process CPU per wake of a module that sleeps 1 ms at a
// time in poll_oneoff (SleepLoop).
//
//	go test -run '^$' -bench . -benchtime 50x ./services/executor/internal/engine/...
func Bench(b *testing.B, newEngine NewEngine) {
	e := Shared(b, newEngine)
	b.Run("StartPrecompiled", func(b *testing.B) {
		m := prepare(b, e, wasmbuild.Build(b, "hello"))
		var ds []time.Duration
		b.ResetTimer()
		for range b.N {
			t0 := time.Now()
			inst, err := e.Start(context.Background(), m, engine.Spec{Args: []string{"hello"}, Stdout: &Buffer{}})
			ds = append(ds, time.Since(t0))
			if err != nil {
				b.Fatal(err)
			}
			inst.Wait()
		}
		report(b, ds)
	})
	b.Run("StartHeld", func(b *testing.B) {
		m := prepare(b, e, wasmbuild.WatFile(b, "idle"))
		held := make([]engine.Instance, 0, b.N)
		defer func() {
			for _, inst := range held {
				inst.Kill()
			}
			for _, inst := range held {
				inst.Wait()
			}
		}()
		c0 := ProcessCPU()
		b.ResetTimer()
		for range b.N {
			inst, err := e.Start(context.Background(), m, engine.Spec{Stdout: io.Discard, Stderr: io.Discard})
			if err != nil {
				b.Fatal(err)
			}
			held = append(held, inst)
		}
		b.StopTimer()
		b.ReportMetric(float64(ProcessCPU()-c0)/float64(time.Millisecond)/float64(b.N), "cpu-ms/start")
	})
	b.Run("Sleep", func(b *testing.B) {
		m := prepare(b, e, wasmbuild.Wat(b, SleepLoop(SleepLoopSleeps, time.Millisecond)))
		c0 := ProcessCPU()
		b.ResetTimer()
		for range b.N {
			if res := run(b, e, m, engine.Spec{}); !res.Exited || res.ExitCode != 0 {
				b.Fatalf("result %+v", res)
			}
		}
		b.StopTimer()
		ReportSleepCPU(b, ProcessCPU()-c0)
	})
	b.Run("KillSpinning", func(b *testing.B) {
		m := prepare(b, e, wasmbuild.Build(b, "spin"))
		var ds []time.Duration
		b.ResetTimer()
		for range b.N {
			var out Buffer
			inst, err := e.Start(context.Background(), m, engine.Spec{Args: []string{"spin"}, Stdout: &out})
			if err != nil {
				b.Fatal(err)
			}
			for !strings.Contains(out.String(), "spinning") {
				time.Sleep(time.Millisecond)
			}
			t0 := time.Now()
			inst.Kill()
			<-inst.Done()
			ds = append(ds, time.Since(t0))
			if res := inst.Wait(); res.Reason != engine.ReasonKilled {
				b.Fatalf("result %+v", res)
			}
		}
		report(b, ds)
	})
}

// SleepLoopSleeps is how many sleeps a SleepLoop module of the Sleep
// benchmark makes.
const SleepLoopSleeps = 1000

// SleepLoop is a WASI command that sleeps n times for d in poll_oneoff (one
// relative monotonic clock) and returns.
func SleepLoop(n int, d time.Duration) string {
	return fmt.Sprintf(`(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $i i32)
    (i64.store (i32.const 0) (i64.const 7))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const %d))
    (loop $l
      (drop (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 256)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const %d))))))`, d.Nanoseconds(), n)
}

// ReportSleepCPU reports cpu, spent on b.N runs of a SleepLoop module of
// SleepLoopSleeps sleeps, per sleep.
func ReportSleepCPU(b *testing.B, cpu time.Duration) {
	b.ReportMetric(float64(cpu)/float64(time.Microsecond)/float64(b.N*SleepLoopSleeps), "cpu-µs/sleep")
}

// ProcessCPU is the user and system CPU time the process has used.
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func report(b *testing.B, ds []time.Duration) {
	slices.Sort(ds)
	ms := func(q float64) float64 {
		return float64(ds[min(len(ds)-1, int(q*float64(len(ds))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(ms(0.50), "p50-ms")
	b.ReportMetric(ms(0.99), "p99-ms")
}
