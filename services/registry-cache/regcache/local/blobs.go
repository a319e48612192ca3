package local

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// blobInfo is what the store keeps in memory of a blob on disk.
type blobInfo struct {
	size     int64
	lastUsed time.Time
	onDisk   time.Time // the mtime last written, to limit Chtimes calls
}

// staleTmp is how old a file in blobs/tmp must be to be a crash's leftover
// rather than a download in progress.
const staleTmp = 15 * time.Minute

// touchEvery limits how often a blob's last use is written to disk.
const touchEvery = time.Minute

// scan builds the in-memory blob table from disk and removes what a crash
// left in blobs/tmp.
func (s *store) scan() error {
	root := filepath.Join(s.dir, "blobs")
	algs, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("read cache dir: %w", err)
	}
	for _, alg := range algs {
		if !alg.IsDir() {
			continue
		}
		entries, err := os.ReadDir(filepath.Join(root, alg.Name()))
		if err != nil {
			return fmt.Errorf("read cache dir: %w", err)
		}
		for _, e := range entries {
			fi, err := e.Info()
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			if alg.Name() == "tmp" {
				if s.now().Sub(fi.ModTime()) > staleTmp {
					os.Remove(filepath.Join(root, "tmp", e.Name()))
				}
				continue
			}
			d := digest.NewDigestFromEncoded(digest.Algorithm(alg.Name()), e.Name())
			if d.Validate() != nil {
				continue
			}
			s.blobs[d] = &blobInfo{size: fi.Size(), lastUsed: fi.ModTime(), onDisk: fi.ModTime()}
			s.total += fi.Size()
		}
	}
	s.metrics.setStore(s.total, len(s.blobs))
	return nil
}

func (s *store) blobPath(d digest.Digest) string {
	return filepath.Join(s.dir, "blobs", d.Algorithm().String(), d.Encoded())
}

func (s *store) has(d digest.Digest) bool {
	fi, err := os.Stat(s.blobPath(d))
	return err == nil && fi.Mode().IsRegular()
}

// open returns a cached blob and its size, and counts it as used.
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
	s.touch(d)
	return f, fi.Size(), nil
}

// touch records a use of d, for least-recently-used eviction.
func (s *store) touch(d digest.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.touchLocked(d)
}

func (s *store) touchLocked(d digest.Digest) {
	b, ok := s.blobs[d]
	if !ok {
		return
	}
	now := s.now()
	b.lastUsed = now
	if now.Sub(b.onDisk) >= touchEvery {
		// Best effort: the time only orders evictions after a restart.
		if os.Chtimes(s.blobPath(d), now, now) == nil {
			b.onDisk = now
		}
	}
}

// write copies r into the store as blob d of the given size, refusing more
// than limit bytes. Nothing is kept unless the content matches d and size.
// It returns the number of bytes read from r.
func (s *store) write(d digest.Digest, size, limit int64, r io.Reader) (int64, error) {
	if size > limit {
		return 0, fmt.Errorf("blob %s: %w: %d bytes, over the limit of %d bytes", d, regcache.ErrTooLarge, size, limit)
	}
	tmp, err := os.CreateTemp(filepath.Join(s.dir, "blobs", "tmp"), "blob-*")
	if err != nil {
		return 0, fmt.Errorf("blob %s: %w", d, err)
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
		return n, fmt.Errorf("blob %s: download: %w", d, err)
	}
	if n > limit {
		return n, fmt.Errorf("blob %s: %w: more than the limit of %d bytes", d, regcache.ErrTooLarge, limit)
	}
	if n != size || !verifier.Verified() {
		return n, fmt.Errorf("blob %s: %w: got %d bytes that do not match the digest (want %d bytes); the source's copy may be corrupt, nothing was cached",
			d, regcache.ErrDigestMismatch, n, size)
	}
	if err := tmp.Sync(); err != nil {
		return n, fmt.Errorf("blob %s: %w", d, err)
	}
	if err := tmp.Close(); err != nil {
		return n, fmt.Errorf("blob %s: %w", d, err)
	}
	dst := s.blobPath(d)
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return n, fmt.Errorf("blob %s: %w", d, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return n, fmt.Errorf("blob %s: %w", d, err)
	}
	keep = true
	now := s.now()
	if b, ok := s.blobs[d]; ok {
		b.lastUsed, b.onDisk = now, now
	} else {
		s.blobs[d] = &blobInfo{size: size, lastUsed: now, onDisk: now}
		s.total += size
	}
	s.evictLocked(d)
	return n, nil
}

// evictLocked removes least recently used blobs until the store fits its
// budget, sparing keep, pinned blobs and blobs used within the grace
// period. When what is left still exceeds the budget it warns, once until
// the store fits again.
func (s *store) evictLocked(keep digest.Digest) {
	if s.budget <= 0 || s.total <= s.budget {
		s.overBudget = false
		s.metrics.setStore(s.total, len(s.blobs))
		return
	}
	now := s.now()
	type cand struct {
		d digest.Digest
		b *blobInfo
	}
	var cands []cand
	pinsBefore := len(s.pins)
	for d, b := range s.blobs {
		if d == keep || now.Sub(b.lastUsed) < s.grace || s.pinnedLocked(d, now) {
			continue
		}
		cands = append(cands, cand{d, b})
	}
	slices.SortFunc(cands, func(a, b cand) int { return a.b.lastUsed.Compare(b.b.lastUsed) })
	evicted := map[string]bool{}
	for _, c := range cands {
		if s.total <= s.budget {
			break
		}
		if err := os.Remove(s.blobPath(c.d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Warn("evict blob", "digest", c.d, "error", err)
			continue
		}
		delete(s.blobs, c.d)
		evicted[c.d.String()] = true
		s.total -= c.b.size
		s.metrics.evicted(c.b.size)
		s.log.Info("evicted blob", "digest", c.d, "size", c.b.size, "last_used", c.b.lastUsed)
	}
	if len(s.pins) != pinsBefore {
		// Expired pins leave pins.json at its next compaction; until then
		// a restart reads them and drops them again.
		s.pinsGen++
		s.metrics.setPinned(len(s.pins))
	}
	s.forgetLocked(evicted)
	if s.total > s.budget && !s.overBudget {
		s.log.Warn("cache over its size budget: everything left is pinned or recently used",
			"size", s.total, "budget", s.budget)
	}
	s.overBudget = s.total > s.budget
	s.metrics.setStore(s.total, len(s.blobs))
}

// forgetLocked drops the references and precompiled entries that lead to
// evicted blobs, so that the indexes do not grow without end.
func (s *store) forgetLocked(evicted map[string]bool) {
	if len(evicted) == 0 {
		return
	}
	n := len(s.refs)
	maps.DeleteFunc(s.refs, func(_ string, e refEntry) bool { return evicted[e.ModuleDigest] })
	if len(s.refs) != n {
		if err := s.saveJSON("refs.json", s.refs); err != nil {
			s.log.Warn("save reference index", "error", err)
		}
	}
	n = len(s.precompiled)
	maps.DeleteFunc(s.precompiled, func(_ string, e precompiledEntry) bool { return evicted[e.Digest] })
	if len(s.precompiled) != n {
		if err := s.savePrecompiledLocked(); err != nil {
			s.log.Warn("save precompiled index", "error", err)
		}
	}
}
