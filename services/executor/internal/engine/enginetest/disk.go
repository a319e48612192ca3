package enginetest

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// NewBoundedEngine returns a new engine keeping its compiled code under dir
// within maxBytes (0: the engine's default), and, for an engine that also
// keeps compiled modules in memory, keeping as few there as it can, so that
// a module whose code left the disk is compiled again at its next start.
type NewBoundedEngine func(t testing.TB, dir string, maxBytes int64) engine.Engine

// RunDiskBound checks the bound on compiled code on disk: an engine that
// prepares more modules than its bound holds keeps its directory within
// the bound, a module whose code was evicted still runs (compiled again),
// and a new engine on the directory, with a lower bound, trims it at once
// and keeps what was used last.
func RunDiskBound(t *testing.T, newEngine NewBoundedEngine) {
	const n = 8
	var paths []string
	for i := range n {
		paths = append(paths, writeModule(t, BigModule(4, 40, uint32(i))))
	}
	// What one module's compiled code takes, in a directory of its own.
	dir0 := t.TempDir()
	e0 := newEngine(t, dir0, 0)
	Prepare(t, e0, paths[0])
	per := dirBytes(t, dir0)
	if per == 0 {
		t.Fatalf("the engine wrote nothing under %s", dir0)
	}

	bound := 3*per + per/2
	dir := t.TempDir()
	e := newEngine(t, dir, bound)
	within := func(when string, bound int64) {
		t.Helper()
		if got := dirBytes(t, dir); got > bound {
			t.Fatalf("%s: %d bytes of compiled code on disk, over the bound of %d (one module takes %d)", when, got, bound, per)
		}
	}
	var mods []engine.Module
	for i, p := range paths {
		mods = append(mods, Prepare(t, e, p))
		within(fmt.Sprintf("after preparing module %d", i), bound)
	}
	before := stats(t, e).Compiles
	for i, m := range mods {
		if res := run(t, e, m, engine.Spec{Args: []string{"m"}}); res.Reason != engine.ReasonCompleted {
			t.Fatalf("module %d, prepared before %d others: %+v", i, n-1-i, res)
		}
		within(fmt.Sprintf("after running module %d", i), bound)
		time.Sleep(20 * time.Millisecond) // file times are coarse: keep the order of use apart
	}
	if got := stats(t, e).Compiles - before; got < n-3 {
		t.Errorf("running %d modules of which at most 3 fit the bound compiled %d times, want at least %d", n, got, n-3)
	}

	// Starts at once, each evicting what the others compiled: none may
	// lose the code it is loading.
	var wg sync.WaitGroup
	for round := range 2 {
		for i, m := range mods {
			wg.Go(func() {
				inst, err := e.Start(context.Background(), m, engine.Spec{Args: []string{"m"}})
				if err != nil {
					t.Errorf("round %d, module %d: start under eviction: %v", round, i, err)
					return
				}
				if res := inst.Wait(); res.Reason != engine.ReasonCompleted {
					t.Errorf("round %d, module %d: %+v", round, i, res)
				}
			})
		}
	}
	wg.Wait()
	within("after concurrent starts", bound)

	// A use is recorded on disk: with every file made two hours old, a
	// start of module 0 makes it the one a restart with a bound of one
	// module keeps.
	if res := run(t, e, mods[0], engine.Spec{Args: []string{"m"}}); res.Reason != engine.ReasonCompleted {
		t.Fatalf("module 0: %+v", res)
	}
	age(t, dir, 2*time.Hour)
	if res := run(t, e, mods[0], engine.Spec{Args: []string{"m"}}); res.Reason != engine.ReasonCompleted {
		t.Fatalf("module 0: %+v", res)
	}
	e2 := newEngine(t, dir, per+per/2)
	within("after a restart with a lower bound", per+per/2)
	before = stats(t, e2).Compiles
	Prepare(t, e2, paths[0])
	if got := stats(t, e2).Compiles - before; got != 0 {
		t.Errorf("the module used last was compiled again (%d) after a restart that lowered the bound: an older one was kept instead", got)
	}
}

// age sets the times of every regular file under dir to d ago.
func age(t testing.TB, dir string, d time.Duration) {
	t.Helper()
	when := time.Now().Add(-d)
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || !de.Type().IsRegular() {
			return err
		}
		return os.Chtimes(p, when, when)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// dirBytes is the size of the regular files under dir.
func dirBytes(t testing.TB, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		fi, err := d.Info()
		if err == nil {
			n += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
