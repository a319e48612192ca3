package enginetest

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// BigModule returns a WASI command of funcs functions (the first is
// _start) of ops arithmetic steps each, made distinct by seed (modulo 60): a module
// that takes both engines seconds to compile.
func BigModule(funcs, ops int, seed uint32) []byte {
	section := func(out []byte, id byte, body []byte) []byte {
		out = append(out, id)
		out = binary.AppendUvarint(out, uint64(len(body)))
		return append(out, body...)
	}
	out := []byte("\x00asm\x01\x00\x00\x00")
	out = section(out, 1, []byte{1, 0x60, 0, 0})
	fs := binary.AppendUvarint(nil, uint64(funcs))
	for range funcs {
		fs = append(fs, 0)
	}
	out = section(out, 3, fs)
	out = section(out, 7, append([]byte{1, 6}, append([]byte("_start"), 0, 0)...))
	var body []byte
	body = append(body, 1, 1, 0x7f)                   // one i32 local
	body = append(body, 0x41, byte(seed%60), 0x21, 0) // i32.const seed%60, local.set 0
	for i := range ops {
		body = append(body, 0x41, byte(i%63), 0x20, 0, 0x6a, 0x41, byte(i%61+1), 0x6c, 0x21, 0)
	}
	body = append(body, 0x0b)
	code := binary.AppendUvarint(nil, uint64(funcs))
	for range funcs {
		code = binary.AppendUvarint(code, uint64(len(body)))
		code = append(code, body...)
	}
	return section(out, 10, code)
}

func writeModule(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "m.wasm")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// RunCompiles checks that a long compile stalls neither the start of a
// module compiled before (also under a memory limit not used before) nor
// a caller whose context ends: it stops waiting at once, and a second
// caller of the same module never starts a second compile. The big module
// has funcs functions (BigModule); it must take the engine over a second.
func RunCompiles(t *testing.T, newEngine NewEngine, funcs int) {
	e := newEngine(t, t.TempDir(), nil)
	small := wasmbuild.Wat(t, `(module (func (export "_start")) (memory (export "memory") 1))`)
	Prepare(t, e, small)
	seed := uint32(time.Now().UnixNano())
	big := writeModule(t, BigModule(funcs, 400, seed))
	other := writeModule(t, BigModule(funcs, 400, seed+1))

	t0 := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := e.Prepare(context.Background(), digestOf(t, big), big)
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)

	// A module compiled before starts, here under a limit not used before.
	s0 := time.Now()
	m := Prepare(t, e, small)
	inst, err := e.Start(context.Background(), m, engine.Spec{Args: []string{"m"}, MemoryLimitBytes: 3 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if res := inst.Wait(); res.Reason != engine.ReasonCompleted {
		t.Fatalf("small module: %+v", res)
	}
	startTook := time.Since(s0)

	// Callers whose context ends stop waiting: for the module being
	// compiled, and for another one waiting for its turn.
	for _, path := range []string{big, other} {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		c0 := time.Now()
		_, err := e.Prepare(ctx, digestOf(t, path), path)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("prepare with a 200 ms deadline during a long compile: %v, want a deadline exceeded", err)
		}
		if took := time.Since(c0); took > 2*time.Second { // wazero decodes a module before it looks at ctx
			t.Errorf("prepare with a 200 ms deadline returned after %v", took)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("the big module compiled in %v (err %v) before the checks ended: make it bigger", time.Since(t0), err)
	default:
	}
	if startTook > time.Second {
		t.Errorf("a start of a compiled module took %v during another module's compile", startTook)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("big module compiled in %v; small start %v meanwhile", time.Since(t0), startTook)
	before := stats(t, e).Compiles
	Prepare(t, e, big)
	if after := stats(t, e).Compiles; after != before {
		t.Errorf("preparing the compiled module again compiled %d times", after-before)
	}
	Prepare(t, e, other) // and wait for a compile its cancelled caller left

	// Callers that come at once for a module new to the engine (a burst of
	// pods of a new Deployment) share one compile.
	third := writeModule(t, BigModule(funcs, 400, seed+2))
	thirdDigest := digestOf(t, third)
	before = stats(t, e).Compiles
	errs := make(chan error, 4)
	for range cap(errs) {
		go func() {
			_, err := e.Prepare(context.Background(), thirdDigest, third)
			errs <- err
		}()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := stats(t, e).Compiles - before; got != 1 {
		t.Errorf("%d concurrent prepares of a new module compiled it %d times, want once", cap(errs), got)
	}
}
