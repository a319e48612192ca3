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
