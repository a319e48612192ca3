package modules

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// blobs serves bytes by digest and counts fetches.
type blobs struct {
	mu      sync.Mutex
	b       map[string][]byte
	fetches int
}

func (c *blobs) Resolve(context.Context, regcache.ResolveRequest) (regcache.Resolved, error) {
	return regcache.Resolved{}, errors.New("not in this test")
}

func (c *blobs) Fetch(_ context.Context, digest string) (io.ReadCloser, int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fetches++
	b, ok := c.b[digest]
	if !ok {
		return nil, 0, fmt.Errorf("fetch %s: %w", digest, regcache.ErrNotFound)
	}
	return io.NopCloser(bytes.NewReader(b)), int64(len(b)), nil
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func TestFetch(t *testing.T) {
	mod := []byte("\x00asm\x01\x00\x00\x00")
	d := digest(mod)
	liar := "sha256:" + strings.Repeat("ab", 32)
	big := bytes.Repeat([]byte{1}, 100)
	cache := &blobs{b: map[string][]byte{d: mod, liar: mod, digest(big): big}}
	dir := t.TempDir()
	s, err := New(Config{Cache: cache, Dir: dir, MaxBytes: 64})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// Many at once: one fetch.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if p, err := s.Fetch(ctx, d, "r/m:v1"); err != nil || p != filepath.Join(dir, d[7:]+".wasm") {
				t.Errorf("fetch: %s %v", p, err)
			}
		})
	}
	wg.Wait()
	if b, _ := os.ReadFile(filepath.Join(dir, d[7:]+".wasm")); !bytes.Equal(b, mod) || cache.fetches != 1 {
		t.Fatalf("file %q after %d fetches", b, cache.fetches)
	}
	// Another store on the same directory verifies the file instead of fetching it.
	s2, _ := New(Config{Cache: cache, Dir: dir})
	if _, err := s2.Fetch(ctx, d, ""); err != nil || cache.fetches != 1 {
		t.Fatalf("second store: %v, %d fetches", err, cache.fetches)
	}
	// A damaged file is fetched again.
	os.WriteFile(filepath.Join(dir, d[7:]+".wasm"), []byte("junk"), 0o600)
	s3, _ := New(Config{Cache: cache, Dir: dir})
	if _, err := s3.Fetch(ctx, d, ""); err != nil || cache.fetches != 2 {
		t.Fatalf("damaged file: %v, %d fetches", err, cache.fetches)
	}

	for _, tc := range []struct {
		digest string
		kind   error
		text   string
	}{
		{"sha256:" + strings.Repeat("0", 64), ErrNotFound, "resolve the reference"},
		{liar, ErrDigest, "the registry cache served content with digest " + d},
		{digest(big), ErrTooLarge, "more than the limit of 64"},
	} {
		_, err := s.Fetch(ctx, tc.digest, "r/m:v1")
		if !errors.Is(err, tc.kind) || !strings.Contains(err.Error(), tc.text) || !strings.Contains(err.Error(), "r/m:v1@"+tc.digest) {
			t.Errorf("fetch %s: %v, want %v saying %q", tc.digest, err, tc.kind, tc.text)
		}
	}
	if _, err := s.Fetch(ctx, liar, ""); !errors.Is(err, regcache.ErrDigestMismatch) {
		t.Errorf("mismatch does not wrap regcache.ErrDigestMismatch: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*.tmp-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

// TestBound: the module files stay within MaxDiskBytes, the least recently
// used removed first, those in use kept; a removed module is fetched again.
func TestBound(t *testing.T) {
	const size = 100
	mods := map[string][]byte{}
	cache := &blobs{b: map[string][]byte{}}
	for _, name := range []string{"a", "b", "c"} {
		b := bytes.Repeat([]byte(name), size)
		mods[name] = b
		cache.b[digest(b)] = b
	}
	dir := t.TempDir()
	file := func(name string) string { return filepath.Join(dir, digest(mods[name])[7:]+".wasm") }
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
		for _, name := range []string{"a", "b", "c"} {
			if _, err := os.Stat(file(name)); err == nil {
				got = append(got, name)
			}
		}
		return strings.Join(got, ",")
	}
	ctx := context.Background()
	s, err := New(Config{Cache: cache, Dir: dir, MaxBytes: 2 * size, MaxDiskBytes: 2*size + size/2}) // two fit
	if err != nil {
		t.Fatal(err)
	}
	fetch := func(name string, wantFetches int) {
		t.Helper()
		p, err := s.Fetch(ctx, digest(mods[name]), "")
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(p); !bytes.Equal(b, mods[name]) {
			t.Fatalf("%s: file %s holds %d other bytes", name, p, len(b))
		}
		if cache.fetches != wantFetches {
			t.Fatalf("after %s: %d fetches, want %d", name, cache.fetches, wantFetches)
		}
	}

	// a, the oldest, is in use: b goes for c.
	release := s.Use(digest(mods["a"]))
	fetch("a", 1)
	age("a", 3*time.Hour)
	fetch("b", 2)
	age("b", 2*time.Hour)
	fetch("c", 3)
	if got := left(); got != "a,c" {
		t.Fatalf("left %s, want a,c: a in use, b the least recently used", got)
	}
	// Released, a goes for b, which is fetched again.
	release()
	fetch("b", 4)
	if got := left(); got != "b,c" {
		t.Fatalf("left %s, want b,c", got)
	}
	// A use makes a file recent: c, touched, stays and b goes for a.
	age("b", time.Hour)
	age("c", 5*time.Hour)
	fetch("c", 4)
	fetch("a", 5)
	if got := left(); got != "a,c" {
		t.Fatalf("left %s, want a,c: c was used after b", got)
	}
	// A file verified in this process and gone since is fetched again.
	os.Remove(file("c"))
	fetch("c", 6)

	// At start: leftovers of a crash go, and a lowered bound holds.
	tmp := filepath.Join(dir, digest(mods["b"])[7:]+".tmp-123")
	if err := os.WriteFile(tmp, mods["b"], 0o600); err != nil {
		t.Fatal(err)
	}
	age("a", time.Hour)
	if _, err := New(Config{Cache: cache, Dir: dir, MaxBytes: size, MaxDiskBytes: size}); err != nil {
		t.Fatal(err)
	}
	if got := left(); got != "c" {
		t.Errorf("left %s after a start with room for one, want c", got)
	}
	if _, err := os.Stat(tmp); err == nil {
		t.Error("a temporary file left by a crash is still there after a start")
	}

	// The module a Fetch returns stays, even when modules in use fill the
	// bound: the caller reads it next.
	s, err = New(Config{Cache: cache, Dir: dir, MaxBytes: size, MaxDiskBytes: size})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Use(digest(mods["c"]))()
	fetch("a", 7)
	if got := left(); got != "a,c" {
		t.Errorf("left %s, want a,c: c in use, a just fetched", got)
	}

	if _, err := New(Config{Cache: cache, Dir: dir, MaxBytes: 2 * size, MaxDiskBytes: size}); err == nil || !strings.Contains(err.Error(), "raise it") {
		t.Errorf("a bound below the module size: %v", err)
	}
}
