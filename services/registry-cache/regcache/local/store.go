package local

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// store is the cache's disk: a content-addressed blob store
// (blobs/<algorithm>/<hex>) and a small reference index (refs.json). A blob
// becomes visible only by a rename after its digest was checked, so a
// reader never sees partial or wrong content.
type store struct {
	dir string

	mu   sync.Mutex // guards refs and refs.json
	refs map[string]refEntry
}

// refEntry is what a reference resolved to when last pulled.
type refEntry struct {
	ManifestDigest string `json:"manifestDigest"`
	ModuleDigest   string `json:"moduleDigest"`
	ModuleSize     int64  `json:"moduleSize"`
	MediaType      string `json:"mediaType"`
}

func openStore(dir string) (*store, error) {
	s := &store{dir: dir, refs: map[string]refEntry{}}
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "tmp"), 0o700); err != nil {
		return nil, fmt.Errorf("create cache dir: %w", err)
	}
	data, err := os.ReadFile(s.indexPath())
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read reference index: %w", err)
	default:
		if err := json.Unmarshal(data, &s.refs); err != nil {
			// The index is only a cache of tag lookups: start afresh
			// rather than refuse to run.
			s.refs = map[string]refEntry{}
		}
	}
	return s, nil
}

func (s *store) indexPath() string { return filepath.Join(s.dir, "refs.json") }

func (s *store) blobPath(d digest.Digest) string {
	return filepath.Join(s.dir, "blobs", d.Algorithm().String(), d.Encoded())
}

func (s *store) has(d digest.Digest) bool {
	fi, err := os.Stat(s.blobPath(d))
	return err == nil && fi.Mode().IsRegular()
}

// open returns a cached blob and its size.
func (s *store) open(d digest.Digest) (*os.File, int64, error) {
	f, err := os.Open(s.blobPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("blob %s: %w: the cache does not hold it; resolve its reference first", d, regcache.ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("blob %s: %w", d, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("blob %s: %w", d, err)
	}
	return f, fi.Size(), nil
}

// write copies r into the store as blob d of the given size, refusing more
// than limit bytes. Nothing is kept unless the content matches d and size.
func (s *store) write(d digest.Digest, size, limit int64, r io.Reader) error {
	if size > limit {
		return fmt.Errorf("blob %s: %w: %d bytes, over the limit of %d bytes", d, regcache.ErrTooLarge, size, limit)
	}
	tmp, err := os.CreateTemp(filepath.Join(s.dir, "blobs", "tmp"), "blob-*")
	if err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	keep := false
	defer func() {
		if !keep {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	verifier := d.Verifier()
	// One byte over the limit is enough to know it is too large.
	n, err := io.Copy(io.MultiWriter(tmp, verifier), io.LimitReader(r, limit+1))
	if err != nil {
		return fmt.Errorf("blob %s: download: %w", d, err)
	}
	if n > limit {
		return fmt.Errorf("blob %s: %w: more than the limit of %d bytes", d, regcache.ErrTooLarge, limit)
	}
	if n != size || !verifier.Verified() {
		return fmt.Errorf("blob %s: %w: got %d bytes that do not match the digest (want %d bytes); the registry's copy may be corrupt, nothing was cached",
			d, regcache.ErrDigestMismatch, n, size)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	dst := s.blobPath(d)
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("blob %s: %w", d, err)
	}
	keep = true
	return nil
}

// lookup returns the entry of ref when its module is still on disk.
func (s *store) lookup(ref string) (refEntry, bool) {
	s.mu.Lock()
	e, ok := s.refs[ref]
	s.mu.Unlock()
	if !ok {
		return refEntry{}, false
	}
	d, err := digest.Parse(e.ModuleDigest)
	if err != nil || !s.has(d) {
		return refEntry{}, false
	}
	return e, true
}

// record remembers what ref resolved to, and saves the index.
func (s *store) record(ref string, e refEntry) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refs[ref] = e
	data, err := json.MarshalIndent(s.refs, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.dir, "refs-*.json")
	if err != nil {
		return fmt.Errorf("save reference index: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("save reference index: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save reference index: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.indexPath()); err != nil {
		return fmt.Errorf("save reference index: %w", err)
	}
	return nil
}
