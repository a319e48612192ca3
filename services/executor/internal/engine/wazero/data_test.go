package wazero

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"testing"

	wz "github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

// TestStripDataGo: a Go module's data segments qualify, and the memory
// they make is the memory wazero instantiates the module with.
func TestStripDataGo(t *testing.T) {
	wasm, err := os.ReadFile(wasmbuild.BuildDir(t, "examples/hello"))
	if err != nil {
		t.Fatal(err)
	}
	stripped, mem, ok := stripData(wasm)
	if !ok {
		t.Fatal("a Go module's data segments do not qualify")
	}
	if sectionIDs(t, stripped)[sectionData] || !sectionIDs(t, wasm)[sectionData] {
		t.Fatal("the data section was not left out")
	}
	if len(mem) < 64<<10 || len(mem)%os.Getpagesize() != 0 {
		t.Fatalf("initial memory of %d bytes", len(mem))
	}
	ctx := context.Background()
	rt := wz.NewRuntime(ctx)
	defer rt.Close(ctx)
	wasi_snapshot_preview1.MustInstantiate(ctx, rt)
	mod, err := rt.InstantiateWithConfig(ctx, wasm, wz.NewModuleConfig().WithStartFunctions())
	if err != nil {
		t.Fatal(err)
	}
	got, ok := mod.Memory().Read(0, mod.Memory().Size())
	if !ok {
		t.Fatal("read memory")
	}
	if !bytes.Equal(got[:len(mem)], mem) {
		t.Fatal("the image differs from the memory wazero instantiates")
	}
	if len(bytes.TrimRight(got[len(mem):], "\x00")) != 0 {
		t.Fatal("wazero's memory has data past the image")
	}
	if _, err := rt.CompileModule(ctx, stripped); err != nil {
		t.Fatalf("stripped module: %v", err)
	}
}

// TestStripData: segments applied in order, up to the page past the
// last; modules whose segments do not qualify are left as they are.
func TestStripData(t *testing.T) {
	wasm := readWat(t, `(module (memory 2)
		(data (i32.const 8) "abcdef") (data (i32.const 10) "XY") (data (i32.const 70000) "z"))`)
	_, mem, ok := stripData(wasm)
	if !ok {
		t.Fatal("constant active segments do not qualify")
	}
	page := os.Getpagesize()
	if want := (70001 + page - 1) / page * page; len(mem) != want {
		t.Fatalf("memory of %d bytes, want %d", len(mem), want)
	}
	if string(mem[8:14]) != "abXYef" || mem[70000] != 'z' || len(bytes.Trim(mem[14:70000], "\x00")) != 0 {
		t.Fatal("segments not laid out in order")
	}

	// Two data sections: not a module, left for wazero to refuse.
	two := append(append([]byte(nil), wasm...), wasm[len(wasm)-dataSectionLen(t, wasm):]...)
	if _, _, ok := stripData(two); ok {
		t.Error("a module with two data sections stripped")
	}

	for name, src := range map[string]string{
		"passive":    `(module (memory 1) (data "x"))`,
		"data count": `(module (memory 1) (data (i32.const 0) "x") (func data.drop 0))`,
		"global":     `(module (import "env" "g" (global i32)) (memory 1) (data (global.get 0) "x"))`,
		"past min":   `(module (memory 1 2) (data (i32.const 65535) "xy"))`,
		"negative":   `(module (memory 1) (data (i32.const -1) "x"))`,
		"imported":   `(module (import "env" "m" (memory 1)) (data (i32.const 0) "x"))`,
		"no data":    `(module (memory 1))`,
		"zero":       `(module (memory 1) (data (i32.const 0) ""))`,
	} {
		wasm := readWat(t, src)
		if out, mem, ok := stripData(wasm); ok || mem != nil || !bytes.Equal(out, wasm) {
			t.Errorf("%s: stripped (%v)", name, ok)
		}
	}
}

// dataWat writes the 13 bytes at 100 to stdout, then overwrites them: its
// data segments (the second over the first) make them "data SEGment\n".
const dataWat = `(module
	(import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
	(memory (export "memory") 1)
	(data (i32.const 0) "\64\00\00\00\0d\00\00\00")
	(data (i32.const 100) "data segment\n")
	(data (i32.const 105) "SEG")
	(func (export "_start")
		(drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 200)))
		(i64.store (i32.const 100) (i64.const -1))))`

// zeroWat writes the 13 bytes at 100 of its memory, which has no data,
// to stdout.
const zeroWat = `(module
	(import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
	(memory (export "memory") 1)
	(func (export "_start")
		(i32.store (i32.const 0) (i32.const 100))
		(i32.store (i32.const 4) (i32.const 13))
		(drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 200)))))`

// TestDataImage: a module compiled without its data segments starts with
// the memory they make, each instance afresh though the one before wrote
// over it in the same mapping (kept for reuse), and a module without data
// that reuses such a mapping starts with zeros.
func TestDataImage(t *testing.T) {
	e := newEngine(t, t.TempDir(), nil)
	data := enginetest.Prepare(t, e, wasmbuild.Wat(t, dataWat))
	zero := enginetest.Prepare(t, e, wasmbuild.Wat(t, zeroWat))
	run := func(m engine.Module) string {
		var out bytes.Buffer
		inst, err := e.Start(context.Background(), m, engine.Spec{Stdout: &out})
		if err != nil {
			t.Fatal(err)
		}
		if res := inst.Wait(); !res.Exited || res.ExitCode != 0 {
			t.Fatalf("%+v", res)
		}
		return out.String()
	}
	for i := range 3 {
		if got := run(data); got != "data SEGment\n" {
			t.Fatalf("run %d wrote %q", i, got)
		}
	}
	if got := run(zero); got != string(make([]byte, 13)) {
		t.Fatalf("a module without data wrote %q", got)
	}
	if got := run(data); got != "data SEGment\n" {
		t.Fatalf("after it, wrote %q", got)
	}
}

func readWat(t *testing.T, src string) []byte {
	t.Helper()
	b, err := os.ReadFile(wasmbuild.Wat(t, src))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dataSectionLen is the length of wasm's data section, its last.
func dataSectionLen(t *testing.T, wasm []byte) int {
	t.Helper()
	p := wasm[8:]
	for len(p) > 0 {
		size, n := binary.Uvarint(p[1:])
		if p[0] == sectionData {
			if len(p) != 1+n+int(size) {
				t.Fatal("the data section is not the last")
			}
			return len(p)
		}
		p = p[1+n+int(size):]
	}
	t.Fatal("no data section")
	return 0
}

// sectionIDs are the ids of wasm's sections.
func sectionIDs(t *testing.T, wasm []byte) map[byte]bool {
	t.Helper()
	ids := map[byte]bool{}
	p := wasm[8:]
	for len(p) > 0 {
		size, n := binary.Uvarint(p[1:])
		if n <= 0 || size > uint64(len(p)-1-n) {
			t.Fatal("malformed module")
		}
		ids[p[0]] = true
		p = p[1+n+int(size):]
	}
	return ids
}
