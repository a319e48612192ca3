package instance

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// TestModuleFilesBounded: with room for two module files and four
// modules, the file of a module an instance was created from stays until
// the instance is deleted, the least recently used other goes, and a
// module whose file went is fetched again and runs.
func TestModuleFilesBounded(t *testing.T) {
	cache := &fileCache{}
	digests := map[string]string{}
	var size int64
	for _, name := range []string{"a", "b", "c", "d"} {
		// The same size each, other bytes.
		p := wasmbuild.Wat(t, `(module (memory 1) (data (i32.const 0) "`+strings.Repeat(name, 64)+`") (func (export "_start")))`)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		size = fi.Size()
		digests[name] = cache.add(t, p)
	}
	dir := t.TempDir()
	m := newManager(t, cache, func(c *Config) {
		c.ModuleDir = dir
		c.MaxModuleBytes = size
		c.ModuleCacheBytes = 2*size + size/2
	})
	ctx := context.Background()
	file := func(name string) string {
		return filepath.Join(dir, strings.TrimPrefix(digests[name], "sha256:")+".wasm")
	}
	age := func(name string, d time.Duration) {
		t.Helper()
		when := time.Now().Add(-d)
		if err := os.Chtimes(file(name), when, when); err != nil {
			t.Fatal(err)
		}
	}
	left := func() string {
		t.Helper()
		var got []string
		for _, name := range []string{"a", "b", "c", "d"} {
			if _, err := os.Stat(file(name)); err == nil {
				got = append(got, name)
			} else if !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		}
		return strings.Join(got, ",")
	}
	run := func(id, name string, wantFetches int) {
		t.Helper()
		in, err := m.Create(ctx, id, instances.Spec{Module: instances.Module{Digest: digests[name]}}, true)
		if err != nil || in.State == instances.StateFailed {
			t.Fatalf("create %s from %s: %+v %v", id, name, in, err)
		}
		if end := waitEnd(t, m, id); end.State != instances.StateExited || end.Reason != engine.ReasonCompleted {
			t.Fatalf("%s: %+v", id, end)
		}
		if cache.fetches != wantFetches {
			t.Fatalf("after %s: %d fetches, want %d", id, cache.fetches, wantFetches)
		}
	}

	// i1, created from a and not started, holds a's file; a is the least
	// recently used, so b goes when c comes.
	if in, err := m.Create(ctx, "i1", instances.Spec{Module: instances.Module{Digest: digests["a"]}}, false); err != nil || in.State != instances.StateCreated {
		t.Fatalf("create i1: %+v %v", in, err)
	}
	age("a", 3*time.Hour)
	run("i2", "b", 2)
	if err := m.Delete(ctx, "i2", false); err != nil {
		t.Fatal(err)
	}
	age("b", 2*time.Hour)
	run("i3", "c", 3)
	if got := left(); got != "a,c" {
		t.Fatalf("module files %s, want a,c: a in use by i1, b the least recently used", got)
	}
	// An ended instance still holds its module until it is deleted.
	age("c", 4*time.Hour)
	if _, err := m.Start(ctx, "i1"); err != nil {
		t.Fatal(err)
	}
	if end := waitEnd(t, m, "i1"); end.State != instances.StateExited || end.Reason != engine.ReasonCompleted {
		t.Fatalf("i1: %+v", end)
	}

	// b was removed: fetched again, and it runs. a and c are held by
	// i1 and i3, so the bound is exceeded for now.
	run("i4", "b", 4)
	if got := left(); got != "a,b,c" {
		t.Fatalf("module files %s, want a,b,c: all in use", got)
	}
	// Once deleted, their modules may go, at the next fetch: c and a,
	// the least recently used, for d; then b for c, fetched again.
	for _, id := range []string{"i1", "i3", "i4"} {
		if err := m.Delete(ctx, id, false); err != nil {
			t.Fatal(err)
		}
	}
	age("a", 2*time.Hour)
	age("b", time.Hour)
	run("i5", "d", 5)
	if got := left(); got != "b,d" {
		t.Fatalf("module files %s, want b,d once the instances were deleted", got)
	}
	run("i6", "c", 6)
	if got := left(); got != "c,d" {
		t.Fatalf("module files %s, want c,d: d in use by i5", got)
	}
}
