package wasmtime

import (
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

// writerWat writes its first size bytes of memory to stdout count times,
// in writes of size bytes.
func writerWat(size, count int) string {
	return fmt.Sprintf(`(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "_start") (local $i i32)
    (i32.store (i32.const 65536) (i32.const 0))
    (i32.store (i32.const 65540) (i32.const %d))
    (loop $more
      (drop (call $write (i32.const 1) (i32.const 65536) (i32.const 1) (i32.const 65544)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $more (i32.lt_u (local.get $i) (i32.const %d))))))`, size, count)
}

// BenchmarkOutput: a module's output to a sink that discards it, in
// writes of a line (100 bytes) and of 64 KiB; MB/s of output. wasmtime's
// hand-over of each write (at most 4 KiB at a time) to its runtime's
// thread bounds it (output.go).
//
//	flock -o /tmp/wasmlet-measure.lock go test -count=1 -run XXX -bench BenchmarkOutput ./services/executor/internal/engine/wasmtime/
func BenchmarkOutput(b *testing.B) {
	e := newTestEngine(b, b.TempDir(), nil)
	for _, c := range []struct {
		name        string
		size, count int
	}{{"Lines", 100, 100000}, {"64KiB", 64 << 10, 1600}} {
		m := enginetest.Prepare(b, e, wasmbuild.Wat(b, writerWat(c.size, c.count)))
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(c.size * c.count))
			for b.Loop() {
				inst, err := e.Start(context.Background(), m, engine.Spec{Stdout: io.Discard})
				if err != nil {
					b.Fatal(err)
				}
				if res := inst.Wait(); res.Reason != engine.ReasonCompleted {
					b.Fatalf("%+v", res)
				}
			}
		})
	}
}
