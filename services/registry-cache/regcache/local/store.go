package local

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// store is the cache's disk: a content-addressed blob store
// (blobs/<algorithm>/<hex>) and three small indexes: refs.json (what each
// reference last resolved to), pins.json with its journal pins.log (who
// pins which blob) and precompiled.json ((module digest, engine key) →
// artifact digest). A blob becomes visible only by a rename after its
// digest was checked, so a reader never sees partial or wrong content;
// blobs/tmp holds downloads in progress, and leftovers of a crash there
// are removed at start-up.
//
// The store keeps the size and last use of every blob in memory; past the
// budget it evicts the least recently used blobs that are neither pinned
// nor used within the grace period. The last use survives restarts as the
// blob file's modification time.
//
// Each concern has a file of its own; they share the one mutex mu because
// eviction crosses them (it spares pinned blobs, drops expired pins, and
// forgets the references and precompiled entries of what it removed):
//
//   - blobs.go: blob files, their size and last use, LRU eviction;
//   - refs.go: refs.json;
//   - pins.go: pins.json and its journal pins.log;
//   - precompiled.go: precompiled.json.
type store struct {
	dir     string
	budget  int64 // 0: no budget
	grace   time.Duration
	log     *slog.Logger
	metrics *Metrics
	now     func() time.Time

	// pinWrite serialises writes of pins.json and pins.log (see
	// savePins); it is taken before mu, never while holding it. It guards
	// pinLog, pinLogOps and pinLogTorn.
	pinWrite   sync.Mutex
	pinLog     *os.File // pins.log, opened for appending at the first write
	pinLogOps  int      // records in pins.log
	pinLogTorn bool     // an append failed, maybe midway: compact at the next write

	mu sync.Mutex // guards everything below and the index files

	// blobs.go
	blobs      map[digest.Digest]*blobInfo
	total      int64
	overBudget bool // to warn once per episode

	// refs.go
	refs map[string]refEntry

	// pins.go
	pins      map[digest.Digest]map[string]time.Time // holder → expiry (zero: none)
	pinsGen   uint64                                 // counts changes of pins
	pinsSaved uint64                                 // the pinsGen that pins.json and pins.log hold
	pinOps    []pinOp                                // changes not yet written, oldest first

	// precompiled.go
	precompiled map[string]precompiledEntry
}

func openStore(dir string, budget int64, grace time.Duration, log *slog.Logger, m *Metrics) (*store, error) {
	s := &store{
		dir: dir, budget: budget, grace: grace, log: log, metrics: m, now: time.Now,
		refs:        map[string]refEntry{},
		blobs:       map[digest.Digest]*blobInfo{},
		pins:        map[digest.Digest]map[string]time.Time{},
		precompiled: map[string]precompiledEntry{},
	}
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "tmp"), 0o700); err != nil {
		return nil, fmt.Errorf("create cache dir: %w", err)
	}
	// The indexes are caches of lookups: a damaged one is started afresh
	// rather than refusing to run.
	if err := s.loadJSON("refs.json", &s.refs); err != nil {
		return nil, err
	}
	var pins []pinEntry
	if err := s.loadJSON("pins.json", &pins); err != nil {
		return nil, err
	}
	for _, p := range pins {
		if d, err := digest.Parse(p.Digest); err == nil {
			s.addPin(d, p.Holder, p.Expires)
		}
	}
	if err := s.replayPinLog(); err != nil {
		return nil, err
	}
	var pre []precompiledEntry
	if err := s.loadJSON("precompiled.json", &pre); err != nil {
		return nil, err
	}
	for _, p := range pre {
		s.precompiled[precompiledKey(regcache.PrecompiledKey{ModuleDigest: p.ModuleDigest, EngineKey: p.EngineKey})] = p
	}
	if err := s.scan(); err != nil {
		return nil, err
	}
	m.setPinned(len(s.pins))
	s.mu.Lock()
	s.evictLocked("")
	s.mu.Unlock()
	return s, nil
}

func (s *store) loadJSON(name string, v any) error {
	data, err := os.ReadFile(filepath.Join(s.dir, name))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("read %s: %w", name, err)
	default:
		if err := json.Unmarshal(data, v); err != nil {
			s.log.Warn("damaged cache index, starting afresh", "file", name, "error", err)
		}
	}
	return nil
}

// saveJSON writes an index atomically: with mu held, or for pins.json
// with pinWrite held.
func (s *store) saveJSON(name string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.dir, name+"-*")
	if err != nil {
		return fmt.Errorf("save %s: %w", name, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("save %s: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(s.dir, name)); err != nil {
		return fmt.Errorf("save %s: %w", name, err)
	}
	return nil
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
