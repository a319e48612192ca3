package cachetest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// Files is a regcache.Cache for tests of the cache's clients (executors):
// it serves the files it maps, by digest, and resolves no reference. Fill
// it before use; it is not safe for concurrent writes.
type Files map[string]string // digest -> path

// Add maps the file at path under its sha256 digest, and returns the digest.
func (f Files) Add(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	d := "sha256:" + hex.EncodeToString(sum[:])
	f[d] = path
	return d, nil
}

// Resolve implements regcache.Cache: Files resolves nothing.
func (f Files) Resolve(context.Context, regcache.ResolveRequest) (regcache.Resolved, error) {
	return regcache.Resolved{}, regcache.ErrNotFound
}

// Fetch implements regcache.Cache.
func (f Files) Fetch(_ context.Context, digest string) (io.ReadCloser, int64, error) {
	p, ok := f[digest]
	if !ok {
		return nil, 0, fmt.Errorf("%s: %w", digest, regcache.ErrNotFound)
	}
	file, err := os.Open(p)
	if err != nil {
		return nil, 0, err
	}
	fi, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, 0, err
	}
	return file, fi.Size(), nil
}
