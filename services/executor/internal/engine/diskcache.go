package engine

import (
	"cmp"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"
)

// DefaultMaxCacheBytes bounds an engine's compiled code on disk when its
// Config gives no bound.
const DefaultMaxCacheBytes int64 = 2 << 30

// CacheUnit is the compiled code of one module on disk, as an engine lays
// it out: the files that go together (an artifact and its sidecar; an
// entry, its sum and the index files naming it).
type CacheUnit struct {
	// Key names the unit for Use; the engine's choice (a digest's hex, an
	// entry's name).
	Key string
	// Files are the unit's paths, removed in this order: the code first,
	// so that a crash midway leaves a sidecar without code (a miss), never
	// code without its sidecar being checked.
	Files []string
}

// DiskCache bounds an engine's compiled code on disk by total bytes,
// removing the units used least recently first. The engine says which
// files make up a unit (list); a unit's last use is the newest
// modification time of its files, which the engine sets with Touch when
// it uses the unit, so the order survives restarts.
//
// The rule: a unit in use (Use) is never removed; an engine holds that
// from its check of a module's compiled code on disk until its runtime has
// loaded it (or, for wazero, trims only while nothing reads the cache).
// Anything else may go at a Trim, also the code of a Module handed out:
// that module is compiled again (or fetched from the shared store) at its
// next Start, as after a corrupt artifact. The Engine interface never
// releases a Module, so pinning the code of every Module handed out would
// pin every module the process ever prepared, and bound nothing.
//
// Safe for concurrent use.
type DiskCache struct {
	max  int64
	list func() ([]CacheUnit, error)
	log  *slog.Logger

	trimMu sync.Mutex // one Trim at a time
	mu     sync.Mutex // guards inUse; held by Trim while it removes
	inUse  map[string]int
}

// NewDiskCache returns the bound of maxBytes (DefaultMaxCacheBytes when it
// is not positive) over the units list returns, logging evictions to log
// (nil: discarded).
func NewDiskCache(maxBytes int64, list func() ([]CacheUnit, error), log *slog.Logger) *DiskCache {
	if maxBytes <= 0 {
		maxBytes = DefaultMaxCacheBytes
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &DiskCache{max: maxBytes, list: list, log: log, inUse: map[string]int{}}
}

// Max is the bound in bytes.
func (c *DiskCache) Max() int64 { return c.max }

// Use keeps the unit key from being removed until release is called
// (once). Uses nest.
func (c *DiskCache) Use(key string) (release func()) {
	c.mu.Lock()
	c.inUse[key]++
	c.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			defer c.mu.Unlock()
			if c.inUse[key]--; c.inUse[key] <= 0 {
				delete(c.inUse, key)
			}
		})
	}
}

// touchEvery is how stale a last use may be before Touch writes it again:
// an order kept to the minute needs no write of an inode at every start.
const touchEvery = time.Minute

// Touch records a use of the unit that path belongs to by setting path's
// modification time to now. The engine names a file whose modification
// time nothing else relies on (a sidecar, an index file: never the code,
// whose size and time FileStamp compares). A missing file is not an error:
// its unit is then as old as its newest file.
func (c *DiskCache) Touch(path string) {
	fi, err := os.Stat(path)
	if err != nil {
		return
	}
	now := time.Now()
	if now.Sub(fi.ModTime()) < touchEvery {
		return
	}
	os.Chtimes(path, now, now)
}

// unitStat is a unit as Trim found it.
type unitStat struct {
	CacheUnit
	size int64
	used time.Time
}

// Trim removes units, least recently used first, until their total size is
// within the bound, skipping those in use, and returns the keys of those
// removed. What cannot be removed (in use, or a file that fails to go) is
// left and the total may stay above the bound until a later Trim. Errors
// are logged too, for callers that go on without the bound.
func (c *DiskCache) Trim() ([]string, error) {
	removed, err := c.trim()
	if err != nil {
		c.log.Warn("bound the compiled code on disk failed", "max_bytes", c.max, "error", err)
	}
	return removed, err
}

func (c *DiskCache) trim() ([]string, error) {
	c.trimMu.Lock()
	defer c.trimMu.Unlock()
	units, err := c.list()
	if err != nil {
		return nil, err
	}
	stats := make([]unitStat, 0, len(units))
	var total int64
	for _, u := range units {
		s := unitStat{CacheUnit: u}
		for _, p := range u.Files {
			fi, err := os.Lstat(p)
			if err != nil {
				continue
			}
			s.size += fi.Size()
			if fi.ModTime().After(s.used) {
				s.used = fi.ModTime()
			}
		}
		total += s.size
		stats = append(stats, s)
	}
	if total <= c.max {
		return nil, nil
	}
	slices.SortFunc(stats, func(a, b unitStat) int {
		return cmp.Or(a.used.Compare(b.used), cmp.Compare(a.Key, b.Key))
	})
	var (
		removed []string
		errs    []error
		freed   int64
	)
	c.mu.Lock()
	for _, s := range stats {
		if total <= c.max {
			break
		}
		if c.inUse[s.Key] > 0 {
			continue
		}
		some := false // removed: the engine forgets the unit even if a file stayed
		for _, p := range s.Files {
			fi, err := os.Lstat(p)
			if err != nil {
				continue
			}
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
				continue
			}
			some = true
			total -= fi.Size()
			freed += fi.Size()
		}
		if some {
			removed = append(removed, s.Key)
		}
	}
	c.mu.Unlock()
	if len(removed) > 0 {
		c.log.Info("evicted compiled code from disk", "units", len(removed), "bytes", freed, "remaining_bytes", total, "max_bytes", c.max)
	}
	return removed, errors.Join(errs...)
}
