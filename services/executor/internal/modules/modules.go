// Package modules is the executor's local store of Wasm modules: it fetches
// a module by digest from the registry cache into <Dir>/<hex>.wasm,
// verifies the bytes against the digest before keeping them, and fetches
// each digest once at a time however many instances ask for it.
//
// It owns the module files and the per-digest locks. It must not prepare
// or run a module (the engine's), nor resolve references (the registry
// cache's); a reference given with a digest is for messages only.
//
// Usage:
//
//	s, _ := modules.New(modules.Config{Cache: cache, Dir: dir})
//	path, err := s.Fetch(ctx, "sha256:…", "example/app:v1")
//	switch {
//	case errors.Is(err, modules.ErrNotFound): // not in the registry cache
//	case errors.Is(err, modules.ErrDigest): // the cache served other bytes
//	}
package modules

import (
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

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// What went wrong with a fetch; an error of Fetch wraps one of them and
// reads as the cause itself.
var (
	ErrNotFound = errors.New("module not in the registry cache")
	ErrFetch    = errors.New("module fetch failed")
	ErrTooLarge = errors.New("module too large")
	ErrDigest   = errors.New("module digest mismatch")
)

// Config configures a Store.
type Config struct {
	Cache regcache.Cache // required
	// Dir keeps the module files. Required; created if missing.
	Dir string
	// MaxBytes bounds a fetched module (default 256 MiB).
	MaxBytes int64
}

// Store holds module files. Safe for concurrent use.
type Store struct {
	cfg Config

	mu       sync.Mutex
	fetching map[string]*sync.Mutex // by digest
	verified map[string]bool        // files verified in this process
}

// New returns a Store.
func New(cfg Config) (*Store, error) {
	if cfg.Cache == nil || cfg.Dir == "" {
		return nil, errors.New("module store: Cache and Dir are required")
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 256 << 20
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create module dir: %w", err)
	}
	return &Store{cfg: cfg, fetching: map[string]*sync.Mutex{}, verified: map[string]bool{}}, nil
}

// Fetch returns the path of the module with digest ("sha256:<hex>",
// validated by the caller), fetching it from the registry cache unless a
// verified copy is held. Errors wrap ErrNotFound, ErrFetch, ErrTooLarge or
// ErrDigest.
func (s *Store) Fetch(ctx context.Context, digest, reference string) (string, error) {
	hexd := strings.TrimPrefix(digest, "sha256:")
	path := filepath.Join(s.cfg.Dir, hexd+".wasm")
	s.mu.Lock()
	mu := s.fetching[digest]
	if mu == nil {
		mu = &sync.Mutex{}
		s.fetching[digest] = mu
	}
	s.mu.Unlock()
	mu.Lock()
	defer mu.Unlock()

	s.mu.Lock()
	ok := s.verified[digest]
	s.mu.Unlock()
	if ok {
		if _, err := os.Stat(path); err == nil {
			return path, nil
		}
	} else if got, err := fileDigest(path); err == nil && got == digest {
		s.markVerified(digest)
		return path, nil
	}

	name := digest
	if reference != "" {
		name = reference + "@" + digest
	}
	max := s.cfg.MaxBytes
	rc, size, err := s.cfg.Cache.Fetch(ctx, digest)
	if err != nil {
		if errors.Is(err, regcache.ErrNotFound) {
			return "", kind(ErrNotFound, fmt.Errorf("fetch module %s from the registry cache: %w; resolve the reference through the registry cache first", name, err))
		}
		return "", kind(ErrFetch, fmt.Errorf("fetch module %s from the registry cache: %w", name, err))
	}
	defer rc.Close()
	if size > max {
		return "", kind(ErrTooLarge, fmt.Errorf("module %s is %d bytes, more than the limit of %d", name, size, max))
	}
	tmp, err := os.CreateTemp(s.cfg.Dir, hexd+".tmp-*")
	if err != nil {
		return "", kind(ErrFetch, fmt.Errorf("store module %s: %w", name, err))
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(rc, max+1))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", kind(ErrFetch, fmt.Errorf("fetch module %s from the registry cache: %w", name, err))
	}
	if n > max {
		return "", kind(ErrTooLarge, fmt.Errorf("module %s is more than the limit of %d bytes", name, max))
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != digest {
		return "", kind(ErrDigest, fmt.Errorf("module %s: the registry cache served content with digest %s; %w; the cache may be corrupt", name, got, regcache.ErrDigestMismatch))
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", kind(ErrFetch, fmt.Errorf("store module %s: %w", name, err))
	}
	s.markVerified(digest)
	return path, nil
}

func (s *Store) markVerified(digest string) {
	s.mu.Lock()
	s.verified[digest] = true
	s.mu.Unlock()
}

func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// kindError reads as its cause and is also its kind.
type kindError struct{ kind, err error }

func kind(k, err error) error        { return &kindError{k, err} }
func (e *kindError) Error() string   { return e.err.Error() }
func (e *kindError) Unwrap() []error { return []error{e.kind, e.err} }
