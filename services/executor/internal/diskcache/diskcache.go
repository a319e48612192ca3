// Package diskcache bounds a directory of files by total bytes, removing
// the units used least recently first and never one in use. Its users say
// which files make up a unit and when a unit is in use; it owns only the
// order and the removal. The engines bound their compiled code with it,
// the module store its module files.
//
// A unit's last use is the newest modification time of its files, which
// the user sets with Touch when it uses the unit, so the order survives
// restarts.
//
// Usage:
//
//	c, _ := diskcache.New(diskcache.Config{What: "module files", MaxBytes: max, List: list})
//	release := c.Use(key) // from the check that the unit is there until done with it
//	defer release()
//	c.Touch(path)
//	c.Trim() // after adding a unit, and at start
package diskcache

import (
	"cmp"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Unit is what goes together on disk: the files of one cached thing (an
// artifact and its sidecar; an entry, its sum and the index files naming
// it; a module file).
type Unit struct {
	// Key names the unit for Use; the user's choice (a digest's hex, an
	// entry's name).
	Key string
	// Files are the unit's paths, removed in this order: the code first,
	// so that a crash midway leaves a sidecar without code (a miss), never
	// code without its sidecar being checked.
	Files []string
}

// Config configures a Cache.
type Config struct {
	// What the units are, for logs ("compiled code", "module files").
	What string
	// MaxBytes is the bound. Required, positive: each user has its own
	// default.
	MaxBytes int64
	// List returns the units on disk. Required.
	List func() ([]Unit, error)
	// Logger receives evictions and errors (nil: discarded).
	Logger *slog.Logger
}

// Cache bounds units on disk by total bytes.
//
// The rule: a unit in use (Use) is never removed; anything else may go at
// a Trim. Safe for concurrent use.
type Cache struct {
	max  int64
	what string
	list func() ([]Unit, error)
	log  *slog.Logger

	trimMu sync.Mutex // one Trim at a time
	mu     sync.Mutex // guards inUse; held by Trim while it removes
	inUse  map[string]int
}

// New returns a Cache.
func New(cfg Config) (*Cache, error) {
	if cfg.MaxBytes <= 0 || cfg.List == nil {
		return nil, errors.New("disk cache: a positive MaxBytes and List are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Cache{max: cfg.MaxBytes, what: cfg.What, list: cfg.List, log: cfg.Logger, inUse: map[string]int{}}, nil
}

// Max is the bound in bytes.
func (c *Cache) Max() int64 { return c.max }

// Use keeps the unit key from being removed until release is called
// (once). Uses nest.
func (c *Cache) Use(key string) (release func()) {
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

// TouchEvery is how stale a last use may be before Touch writes it again:
// an order kept to the minute needs no write of an inode at every use. A
// user that holds a unit in memory may skip Touch as often (the engines
// do, with TouchSoon, for code they keep loaded).
const TouchEvery = time.Minute

// Touch records a use of the unit that path belongs to by setting path's
// modification time to now. The user names a file whose modification
// time nothing else relies on (for an engine a sidecar or an index file,
// never the code, whose size and time engine.FileStamp compares). A
// missing file is not an error: its unit is then as old as its newest
// file.
func (c *Cache) Touch(path string) {
	fi, err := os.Stat(path)
	if err != nil {
		return
	}
	now := time.Now()
	if now.Sub(fi.ModTime()) < TouchEvery {
		return
	}
	os.Chtimes(path, now, now)
}

// Touched is when a user last passed a unit's use on with TouchSoon; a
// user that holds a unit in memory keeps one beside it. The zero value
// has passed none.
type Touched struct{ ns atomic.Int64 }

// TouchSoon is Touch unless t passed a use on within TouchEvery: a unit
// used many times a second (an engine's code, instantiated for every
// request in handler mode) costs no stat at each use.
func (c *Cache) TouchSoon(t *Touched, path string) {
	now := time.Now().UnixNano()
	if last := t.ns.Load(); last != 0 && now-last < int64(TouchEvery) {
		return
	}
	t.ns.Store(now)
	c.Touch(path)
}

// unitStat is a unit as Trim found it.
type unitStat struct {
	Unit
	size int64
	used time.Time
}

// Trim removes units, least recently used first, until their total size is
// within the bound, skipping those in use, and returns the keys of those
// removed. What cannot be removed (in use, or a file that fails to go) is
// left and the total may stay above the bound until a later Trim. Errors
// are logged too, for callers that go on without the bound.
func (c *Cache) Trim() ([]string, error) {
	removed, err := c.trim()
	if err != nil {
		c.log.Warn("bound a disk cache failed", "cache", c.what, "max_bytes", c.max, "error", err)
	}
	return removed, err
}

func (c *Cache) trim() ([]string, error) {
	c.trimMu.Lock()
	defer c.trimMu.Unlock()
	units, err := c.list()
	if err != nil {
		return nil, err
	}
	stats := make([]unitStat, 0, len(units))
	var total int64
	for _, u := range units {
		s := unitStat{Unit: u}
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
		some := false // removed: the user forgets the unit even if a file stayed
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
		c.log.Info("evicted from a disk cache", "cache", c.what, "units", len(removed), "bytes", freed, "remaining_bytes", total, "max_bytes", c.max)
	}
	return removed, errors.Join(errs...)
}
