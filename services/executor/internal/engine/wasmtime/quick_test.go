package wasmtime

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"strings"
	"testing"

	wt "github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

// TestQuickFirst: with Config.QuickFirst a Go module new to the engine
// runs from the quick compile, kept apart, while the optimised compile
// waits; once that is done, instances run from the optimised artifact,
// the only one on disk and in the shared store, and an engine started
// again on the same directory compiles nothing.
func TestQuickFirst(t *testing.T) {
	dir := t.TempDir()
	store := enginetest.NewMemoryStore()
	e, err := New(Config{CacheDir: dir, Shared: store, QuickFirst: true})
	if err != nil {
		t.Fatal(err)
	}
	wasm := wasmbuild.Build(t, "hello")
	e.compileMu.Lock() // the optimised compile waits
	m := enginetest.Prepare(t, e, wasm)
	mod := e.modules[m.Digest()]
	mod.mu.Lock()
	a, ok := mod.current()
	mod.mu.Unlock()
	if !ok || !a.quick {
		e.compileMu.Unlock()
		t.Fatalf("after the first prepare the module runs from %+v (ok %v), want the quick artifact", a, ok)
	}
	if _, err := os.Stat(mod.artifact); !os.IsNotExist(err) {
		e.compileMu.Unlock()
		t.Fatalf("an artifact on disk before the optimised compile: %v", err)
	}
	quickRes, quickOut := runHello(t, e, m)
	e.compileMu.Unlock()
	e.WaitBackground()
	e.WaitShared()
	if quickRes.Reason != engine.ReasonCompleted || !strings.Contains(quickOut, "args: x") {
		t.Fatalf("instance from the quick artifact: %+v, output %q", quickRes, quickOut)
	}

	mod.mu.Lock()
	a, ok = mod.current()
	mod.mu.Unlock()
	if !ok || a.quick || !mod.verified {
		t.Fatalf("after the optimised compile the module runs from %+v (ok %v, verified %v), want the optimised artifact", a, ok, mod.verified)
	}
	if res, out := runHello(t, e, m); res.Reason != engine.ReasonCompleted || out != quickOut {
		t.Fatalf("instance from the optimised artifact: %+v, output %q, want %q", res, out, quickOut)
	}
	e.codes.mu.Lock()
	if c := e.codes.byDigest[m.Digest()]; c == nil || c.quick {
		t.Errorf("the module's code kept is %+v, want the optimised artifact's", c)
	}
	for el := e.codes.idle.Front(); el != nil; el = el.Next() {
		if el.Value.(*code).quick {
			t.Errorf("the quick artifact's code kept once the optimised one is there")
		}
	}
	e.codes.mu.Unlock()
	if st := e.ArtifactStats(); st.Compiles != 2 || st.SharedPuts != 1 {
		t.Errorf("stats %+v, want 2 compiles (quick, optimised) and 1 put (the optimised artifact)", st)
	}

	// The shared store holds the optimised artifact under the engine's key
	// (the optimised settings), and nothing else: wasmtime loads an
	// artifact of either settings into an Engine of the other (its header
	// check does not tell them apart), so the quick one must never be
	// shared, nor kept where optimised ones are; it is gone once the
	// optimised one is there.
	if keys := store.Keys(); len(keys) != 1 || keys[0] != e.ArtifactKey(m.Digest()) {
		t.Fatalf("shared store keys %v, want only %v", keys, e.ArtifactKey(m.Digest()))
	}
	rc, _, err := store.GetPrecompiled(context.Background(), e.ArtifactKey(m.Digest()))
	if err != nil {
		t.Fatal(err)
	}
	shared, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	onDisk, err := os.ReadFile(mod.artifact)
	if err != nil || !bytes.Equal(onDisk, shared) {
		t.Fatalf("artifact on disk (%v) is not the one shared", err)
	}
	if quick := quickArtifact(t, wasm); bytes.Equal(quick, shared) {
		t.Fatal("the shared artifact is the quick compile's")
	}
	if ents, err := os.ReadDir(e.dir); err != nil || len(ents) != 2 {
		t.Fatalf("cache dir holds %v (%v), want the artifact and its sidecar", ents, err)
	}
	if ents, err := os.ReadDir(e.quickDir); err != nil || len(ents) != 0 {
		t.Fatalf("quick dir holds %v (%v) once the optimised artifact is there, want nothing", ents, err)
	}

	// A restarted engine finds the optimised artifact and compiles nothing.
	e2, err := New(Config{CacheDir: dir, QuickFirst: true})
	if err != nil {
		t.Fatal(err)
	}
	m2 := enginetest.Prepare(t, e2, wasm)
	if res, out := runHello(t, e2, m2); res.Reason != engine.ReasonCompleted || out != quickOut {
		t.Fatalf("restarted engine: %+v, output %q", res, out)
	}
	if st := e2.ArtifactStats(); st.Compiles != 0 {
		t.Errorf("restarted engine compiled %d times, want none", st.Compiles)
	}
}

// TestQuickFirstConcurrent: callers preparing a new module at once share
// one quick compile and one optimised compile.
func TestQuickFirstConcurrent(t *testing.T) {
	e, err := New(Config{CacheDir: t.TempDir(), QuickFirst: true})
	if err != nil {
		t.Fatal(err)
	}
	wasm := wasmbuild.Build(t, "hello")
	b, err := os.ReadFile(wasm)
	if err != nil {
		t.Fatal(err)
	}
	other := t.TempDir() + "/other.wasm"
	if err := os.WriteFile(other, append(b, 0, 2, 1, 'x'), 0o644); err != nil { // a custom section: a digest of its own
		t.Fatal(err)
	}
	errs := make(chan error, 4)
	sum := sha256.Sum256(append(b, 0, 2, 1, 'x'))
	od := "sha256:" + hex.EncodeToString(sum[:])
	for range cap(errs) {
		go func() {
			m, err := e.Prepare(context.Background(), od, other)
			if err == nil {
				var inst engine.Instance
				if inst, err = e.Start(context.Background(), m, engine.Spec{Args: []string{"hello"}}); err == nil {
					inst.Wait()
				}
			}
			errs <- err
		}()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	e.WaitBackground()
	if got := e.ArtifactStats().Compiles; got != 2 {
		t.Errorf("%d callers at once compiled a new module %d times, want 2 (quick, then optimised)", cap(errs), got)
	}
}

func runHello(t *testing.T, e *Engine, m engine.Module) (engine.Result, string) {
	t.Helper()
	var out enginetest.Buffer
	res := enginetest.Run1(t, e, m, engine.Spec{Args: []string{"hello", "x"}, Stdout: &out})
	return res, out.String()
}

func quickArtifact(t *testing.T, wasmPath string) []byte {
	t.Helper()
	wasm, err := os.ReadFile(wasmPath)
	if err != nil {
		t.Fatal(err)
	}
	eng := newEngine(true, nil)
	defer eng.Close()
	mod, err := wt.NewModule(eng, wasm)
	if err != nil {
		t.Fatal(err)
	}
	defer mod.Close()
	b, err := mod.Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
