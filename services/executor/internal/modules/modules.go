// Package modules is the executor's local store of Wasm modules: it fetches
// a module by digest from the registry cache into <Dir>/<hex>.wasm,
// verifies the bytes against the digest before keeping them, and fetches
// each digest once at a time however many instances ask for it.
//
// The files are bounded by total bytes (Config.MaxDiskBytes, package
// diskcache), the least recently used removed first: a file's mtime is its
// last use (Fetch touches it, at most once a minute), and a trim follows
// each file added and New. A module in use (Use, and every Fetch while it
// runs) is never removed: its user holds it for as long as something may
// read the file (an engine reads it again whenever it compiles the module
// anew). A removed module is fetched again by the next Fetch. New removes
// the temporary files a crash left; one Store per directory.
//
// It owns the module files and the per-digest locks. It must not prepare
// or run a module (the engine's), nor resolve references (the registry
// cache's); a reference given with a digest is for messages only.
//
// Usage:
//
//	s, _ := modules.New(modules.Config{Cache: cache, Dir: dir})
//	release := s.Use("sha256:…") // until nothing reads the file any more
//	defer release()
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
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/wasmlet/wasmlet/services/executor/internal/diskcache"
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
	// MaxBytes bounds a fetched module (default DefaultMaxBytes).
	MaxBytes int64
	// MaxDiskBytes bounds the module files in Dir, least recently used
	// removed first (default DefaultMaxDiskBytes). It may not be below
	// MaxBytes; well above it, or modules that run side by side evict
	// each other's files and are fetched again at each new instance.
	MaxDiskBytes int64
	// Logger receives evictions (nil: discarded).
	Logger *slog.Logger
}

// Defaults of Config.
const (
	DefaultMaxBytes     int64 = 256 << 20
	DefaultMaxDiskBytes int64 = 4 << 30
)

// Store holds module files. Safe for concurrent use.
type Store struct {
	cfg  Config
	disk *diskcache.Cache

	mu       sync.Mutex
	fetching map[string]*sync.Mutex // by digest
	verified map[string]bool        // files verified in this process
}

// New returns a Store, with the temporary files of fetches a crash
// interrupted removed and the files within the bound.
func New(cfg Config) (*Store, error) {
	if cfg.Cache == nil || cfg.Dir == "" {
		return nil, errors.New("module store: Cache and Dir are required")
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.MaxDiskBytes <= 0 {
		cfg.MaxDiskBytes = DefaultMaxDiskBytes
	}
	if cfg.MaxDiskBytes < cfg.MaxBytes {
		return nil, fmt.Errorf("module store: the bound of the module files (%d bytes) is below the size of one module (%d bytes); raise it", cfg.MaxDiskBytes, cfg.MaxBytes)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create module dir: %w", err)
	}
	s := &Store{cfg: cfg, fetching: map[string]*sync.Mutex{}, verified: map[string]bool{}}
	disk, err := diskcache.New(diskcache.Config{What: "module files", MaxBytes: cfg.MaxDiskBytes, List: s.units, Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("module store: %w", err)
	}
	s.disk = disk
	tmps, err := filepath.Glob(filepath.Join(cfg.Dir, "*"+tmpInfix+"*"))
	if err != nil {
		return nil, fmt.Errorf("module store: %w", err)
	}
	for _, p := range tmps {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("module store: remove a temporary file left by a crash: %w", err)
		}
	}
	// A bound lowered since the last run holds from the start.
	if _, err := s.trim(); err != nil {
		return nil, fmt.Errorf("module store: bound the module files: %w", err)
	}
	return s, nil
}

// tmpInfix is in the name of a file being fetched, and in no module file.
const tmpInfix = ".tmp-"

// Use keeps the module with digest from being removed until release is
// called (once). Uses nest. Hold it from before Fetch for as long as
// something may read the file.
func (s *Store) Use(digest string) (release func()) {
	return s.disk.Use(strings.TrimPrefix(digest, "sha256:"))
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
	defer s.Use(digest)() // a trim meanwhile keeps it

	s.mu.Lock()
	ok := s.verified[digest]
	s.mu.Unlock()
	if ok {
		if _, err := os.Stat(path); err == nil {
			s.disk.Touch(path)
			return path, nil
		}
	} else if got, err := fileDigest(path); err == nil && got == digest {
		s.markVerified(digest)
		s.disk.Touch(path)
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
	tmp, err := os.CreateTemp(s.cfg.Dir, hexd+tmpInfix+"*")
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
	s.trim() // logs its errors; the module is there to use
	return path, nil
}

// trim bounds the module files, forgetting that those removed were
// verified.
func (s *Store) trim() ([]string, error) {
	removed, err := s.disk.Trim()
	s.mu.Lock()
	for _, hexd := range removed {
		delete(s.verified, "sha256:"+hexd)
	}
	s.mu.Unlock()
	return removed, err
}

// units lists the module files for Store.disk, one unit per file, keyed
// by the digest's hex. Files being fetched are not counted.
func (s *Store) units() ([]diskcache.Unit, error) {
	ds, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return nil, err
	}
	var units []diskcache.Unit
	for _, d := range ds {
		hexd, ok := strings.CutSuffix(d.Name(), ".wasm")
		if !ok || !d.Type().IsRegular() || strings.Contains(d.Name(), tmpInfix) {
			continue
		}
		units = append(units, diskcache.Unit{Key: hexd, Files: []string{filepath.Join(s.cfg.Dir, d.Name())}})
	}
	return units, nil
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
