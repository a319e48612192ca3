package diskcache

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// diskUnits writes one unit per key under a new directory: <key>.code of
// size bytes and a <key>.sum of 8 bytes, both last modified age[key] ago,
// and returns the directory and a list function over what is left of them.
func diskUnits(t *testing.T, size int, age map[string]time.Duration) (string, func() ([]Unit, error)) {
	t.Helper()
	dir := t.TempDir()
	for k, a := range age {
		when := time.Now().Add(-a)
		for _, f := range []struct {
			name string
			n    int
		}{{k + ".code", size}, {k + ".sum", 8}} {
			p := filepath.Join(dir, f.name)
			if err := os.WriteFile(p, make([]byte, f.n), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(p, when, when); err != nil {
				t.Fatal(err)
			}
		}
	}
	list := func() ([]Unit, error) {
		var us []Unit
		for k := range age {
			us = append(us, Unit{Key: k, Files: []string{filepath.Join(dir, k+".code"), filepath.Join(dir, k+".sum")}})
		}
		return us, nil
	}
	return dir, list
}

func newCache(t *testing.T, max int64, list func() ([]Unit, error)) *Cache {
	t.Helper()
	c, err := New(Config{What: "test units", MaxBytes: max, List: list})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// present lists the keys whose code is still on disk, sorted.
func present(t *testing.T, dir string) []string {
	t.Helper()
	ms, err := filepath.Glob(filepath.Join(dir, "*.code"))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, m := range ms {
		keys = append(keys, filepath.Base(m[:len(m)-len(".code")]))
	}
	slices.Sort(keys)
	return keys
}

func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

func TestTrim(t *testing.T) {
	const unit = 1000 + 8
	age := map[string]time.Duration{"a": 5 * time.Hour, "b": 4 * time.Hour, "c": 3 * time.Hour, "d": 2 * time.Hour, "e": time.Hour}

	t.Run("least recently used first, to within the bound", func(t *testing.T) {
		dir, list := diskUnits(t, 1000, age)
		c := newCache(t, 3*unit, list)
		removed, err := c.Trim()
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(removed)
		if !slices.Equal(removed, []string{"a", "b"}) {
			t.Errorf("removed %v, want [a b]", removed)
		}
		if got := present(t, dir); !slices.Equal(got, []string{"c", "d", "e"}) {
			t.Errorf("left %v, want [c d e]", got)
		}
		if n := dirBytes(t, dir); n > c.Max() {
			t.Errorf("%d bytes left, over the bound of %d", n, c.Max())
		}
		// Within the bound: nothing more goes.
		if removed, err := c.Trim(); err != nil || len(removed) > 0 {
			t.Errorf("second trim removed %v (%v)", removed, err)
		}
	})

	t.Run("a touched unit is recent, also for a new process", func(t *testing.T) {
		dir, list := diskUnits(t, 1000, age)
		newCache(t, 1<<30, list).Touch(filepath.Join(dir, "a.sum"))
		c := newCache(t, 3*unit, list) // a restart: the order is on disk
		if _, err := c.Trim(); err != nil {
			t.Fatal(err)
		}
		if got := present(t, dir); !slices.Equal(got, []string{"a", "d", "e"}) {
			t.Errorf("left %v, want [a d e]", got)
		}
	})

	t.Run("units in use stay, even over the bound", func(t *testing.T) {
		dir, list := diskUnits(t, 1000, age)
		c := newCache(t, unit, list)
		ra, rb := c.Use("a"), c.Use("b")
		rb2 := c.Use("b") // uses nest
		rb()
		if _, err := c.Trim(); err != nil {
			t.Fatal(err)
		}
		if got := present(t, dir); !slices.Equal(got, []string{"a", "b"}) {
			t.Errorf("left %v, want [a b]: the units in use", got)
		}
		ra()
		rb2()
		rb2() // a second release is a no-op
		if _, err := c.Trim(); err != nil {
			t.Fatal(err)
		}
		if got := present(t, dir); !slices.Equal(got, []string{"b"}) {
			t.Errorf("left %v, want [b] once released", got)
		}
	})

	t.Run("a bound is required", func(t *testing.T) {
		_, list := diskUnits(t, 1000, age)
		for _, max := range []int64{0, -1} {
			if _, err := New(Config{MaxBytes: max, List: list}); err == nil {
				t.Errorf("New with MaxBytes %d: no error", max)
			}
		}
		if _, err := New(Config{MaxBytes: 1}); err == nil {
			t.Error("New without List: no error")
		}
	})
}

func TestTouchIsCheap(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.sum")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	recent := time.Now().Add(-10 * time.Second).Truncate(time.Second)
	os.Chtimes(p, recent, recent)
	c := newCache(t, 1<<30, func() ([]Unit, error) { return nil, nil })
	c.Touch(p)
	if fi, _ := os.Stat(p); !fi.ModTime().Equal(recent) {
		t.Errorf("a use seconds after the last was written: mtime %v, want %v", fi.ModTime(), recent)
	}
	old := time.Now().Add(-time.Hour)
	os.Chtimes(p, old, old)
	c.Touch(p)
	if fi, _ := os.Stat(p); time.Since(fi.ModTime()) > time.Minute {
		t.Errorf("a use an hour after the last was not written: mtime %v", fi.ModTime())
	}
	c.Touch(filepath.Join(dir, "missing")) // no file, no panic, nothing made
	if _, err := os.Stat(filepath.Join(dir, "missing")); err == nil {
		t.Error("Touch made a file")
	}
}

// TestTouchSoon: the first TouchSoon of a Touched passes the use on; one
// within TouchEvery after it does not, even of a file aged meanwhile.
func TestTouchSoon(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.sum")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCache(t, 1<<30, func() ([]Unit, error) { return nil, nil })
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	os.Chtimes(p, old, old)
	var touched Touched
	c.TouchSoon(&touched, p)
	if fi, _ := os.Stat(p); time.Since(fi.ModTime()) > time.Minute {
		t.Fatalf("the first use was not passed on: mtime %v", fi.ModTime())
	}
	os.Chtimes(p, old, old)
	c.TouchSoon(&touched, p)
	if fi, _ := os.Stat(p); !fi.ModTime().Equal(old) {
		t.Errorf("a use within TouchEvery of the last was passed on: mtime %v, want %v", fi.ModTime(), old)
	}
}
