package wazero

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	wz "github.com/tetratelabs/wazero"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

// TestWasiOf: what wasiOf reads from the sections is what wazero decodes,
// for Go-built modules and for WAT ones with other imports, an imported
// memory, a table and global import, and no _start.
func TestWasiOf(t *testing.T) {
	mods := map[string]string{
		"hello":     wasmbuild.BuildDir(t, "examples/hello"),
		"large":     wasmbuild.Build(t, "large"),
		"proc_exit": wasmbuild.Wat(t, enginetest.ProcExit(3)),
		"other imports": wasmbuild.Wat(t, `(module
  (import "env" "f" (func))
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (import "env" "mem" (memory 1 2))
  (import "env" "tbl" (table 1 funcref))
  (import "env" "g" (global (mut i32)))
  (func (export "_start")))`),
		"no _start":             wasmbuild.Wat(t, `(module (memory (export "memory") 1) (func (export "start")))`),
		"_start not a function": wasmbuild.Wat(t, `(module (memory (export "_start") 1))`),
	}
	ctx := context.Background()
	r := wz.NewRuntimeWithConfig(ctx, wz.NewRuntimeConfigInterpreter())
	defer r.Close(ctx)
	for name, path := range mods {
		wasm, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		imports, hasStart, ok := wasiOf(wasm)
		if !ok {
			t.Errorf("%s: sections do not parse", name)
			continue
		}
		cm, err := r.CompileModule(ctx, wasm)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want, wantStart := wasiOfCompiled(cm)
		if !slices.Equal(imports, want) || hasStart != wantStart {
			t.Errorf("%s: wasiOf = %v, _start %v; wazero: %v, _start %v", name, imports, hasStart, want, wantStart)
		}
		imports, hasStart, ok = wasiOf(readWASISections(t, path))
		if !ok || !slices.Equal(imports, want) || hasStart != wantStart {
			t.Errorf("%s: wasiOf of wasiSections = %v, _start %v, parsed %v; wazero: %v, _start %v", name, imports, hasStart, ok, want, wantStart)
		}
	}
	large, err := os.ReadFile(mods["large"])
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]byte{nil, []byte("\x00asm"), []byte("\x00asm\x01\x00\x00\x00\x02\x05\x01\x03env"), []byte("not wasm at all"), large[:len(large)/2]} {
		if _, _, ok := wasiOf(bad); ok {
			t.Errorf("wasiOf(%.20q) parsed", bad)
		}
		path := filepath.Join(t.TempDir(), "bad.wasm")
		if err := os.WriteFile(path, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, _, ok := wasiOf(readWASISections(t, path)); ok {
			t.Errorf("wasiOf of wasiSections(%.20q) parsed", bad)
		}
	}
}

// readWASISections is wasiSections of the file at path, nil if its
// sections do not parse.
func readWASISections(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	wasm, ok, err := wasiSections(f)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return nil
	}
	return wasm
}
