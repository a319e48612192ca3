package local

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
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

	mu          sync.Mutex // guards everything below and the other index files
	refs        map[string]refEntry
	blobs       map[digest.Digest]*blobInfo
	total       int64
	pins        map[digest.Digest]map[string]time.Time // holder → expiry (zero: none)
	precompiled map[string]precompiledEntry
	overBudget  bool    // to warn once per episode
	pinsGen     uint64  // counts changes of pins
	pinsSaved   uint64  // the pinsGen that pins.json and pins.log hold
	pinOps      []pinOp // changes not yet written, oldest first
}

type blobInfo struct {
	size     int64
	lastUsed time.Time
	onDisk   time.Time // the mtime last written, to limit Chtimes calls
}

// refEntry is what a reference resolved to when last pulled.
type refEntry struct {
	ManifestDigest string `json:"manifestDigest"`
	ModuleDigest   string `json:"moduleDigest"`
	ModuleSize     int64  `json:"moduleSize"`
	MediaType      string `json:"mediaType"`
}

type pinEntry struct {
	Digest  string    `json:"digest"`
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires,omitzero"`
}

// pinOp is a record of pins.log: a pin, or an unpin of the holder's pin of
// Digest (of all its pins when Digest is empty).
type pinOp struct {
	Unpin   bool      `json:"unpin,omitempty"`
	Digest  string    `json:"digest,omitempty"`
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires,omitzero"`
}

// Pins are kept as a snapshot (pins.json) and a journal of the changes
// since (pins.log, a JSON record a line). A change appends to the journal
// only, so that a pod's pin and unpin cost one short write however many
// pins there are; once the journal holds more than pinLogCompact records
// and twice as many as there are pins, the snapshot is rewritten and the
// journal emptied. A record cut short by a crash is the journal's last
// line: it is dropped when the store opens.
const pinLogCompact = 1000

type precompiledEntry struct {
	ModuleDigest string `json:"moduleDigest"`
	EngineKey    string `json:"engineKey"`
	Digest       string `json:"digest"`
	Size         int64  `json:"size"`
}

func precompiledKey(k regcache.PrecompiledKey) string { return k.ModuleDigest + "\x00" + k.EngineKey }

// staleTmp is how old a file in blobs/tmp must be to be a crash's leftover
// rather than a download in progress.
const staleTmp = 15 * time.Minute

// touchEvery limits how often a blob's last use is written to disk.
const touchEvery = time.Minute

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

// pinnedLocked reports whether a live pin holds d, dropping expired ones.
func (s *store) pinnedLocked(d digest.Digest, now time.Time) bool {
	holders := s.pins[d]
	for h, exp := range holders {
		if !exp.IsZero() && !now.Before(exp) {
			delete(holders, h)
		}
	}
	if len(holders) == 0 {
		delete(s.pins, d)
		return false
	}
	return true
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
	return s.saveJSON("refs.json", s.refs)
}

// removePinLocked removes holder's pin of d (of every blob when d is
// empty) and reports whether it held one.
func (s *store) removePinLocked(d digest.Digest, holder string) bool {
	changed := false
	for pd, holders := range s.pins {
		if d != "" && pd != d {
			continue
		}
		if _, ok := holders[holder]; ok {
			delete(holders, holder)
			changed = true
		}
		if len(holders) == 0 {
			delete(s.pins, pd)
		}
	}
	return changed
}

func (s *store) addPin(d digest.Digest, holder string, expires time.Time) {
	if s.pins[d] == nil {
		s.pins[d] = map[string]time.Time{}
	}
	s.pins[d][holder] = expires
}

// savePins writes every change of the pins up to gen (the caller's
// pinsGen) to pins.log, unless a write since has covered it. Pins and
// unpins made while one write is under way share the next (a group
// commit): a burst of pods costs a few short appends.
func (s *store) savePins(gen uint64) error {
	s.pinWrite.Lock()
	defer s.pinWrite.Unlock()
	s.mu.Lock()
	if s.pinsSaved >= gen {
		s.mu.Unlock()
		return nil
	}
	ops := s.pinOps
	s.pinOps = nil
	covers := s.pinsGen
	s.metrics.setPinned(len(s.pins))
	var snapshot []pinEntry
	if n := s.pinLogOps + len(ops); s.pinLogTorn || n > pinLogCompact && n > 2*s.pinCountLocked() {
		snapshot = s.pinListLocked()
	}
	s.mu.Unlock()
	var err error
	if snapshot != nil {
		err = s.compactPins(snapshot)
	} else {
		err = s.appendPinLog(ops)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.pinOps = append(ops, s.pinOps...) // the next write tries again
		return err
	}
	s.pinsSaved = max(s.pinsSaved, covers)
	return nil
}

func (s *store) pinCountLocked() int {
	n := 0
	for _, holders := range s.pins {
		n += len(holders)
	}
	return n
}

// pinListLocked is the pins, sorted, as pins.json keeps them.
func (s *store) pinListLocked() []pinEntry {
	list := make([]pinEntry, 0, len(s.pins))
	for d, holders := range s.pins {
		for h, exp := range holders {
			list = append(list, pinEntry{Digest: d.String(), Holder: h, Expires: exp})
		}
	}
	slices.SortFunc(list, func(a, b pinEntry) int {
		if a.Digest != b.Digest {
			return cmpString(a.Digest, b.Digest)
		}
		return cmpString(a.Holder, b.Holder)
	})
	return list
}

// appendPinLog appends ops to pins.log in one write. With pinWrite held.
func (s *store) appendPinLog(ops []pinOp) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf) // a record a line
	for _, op := range ops {
		if err := enc.Encode(op); err != nil {
			return err
		}
	}
	if s.pinLog == nil {
		f, err := os.OpenFile(filepath.Join(s.dir, "pins.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("save pins: %w", err)
		}
		s.pinLog = f
	}
	if _, err := s.pinLog.Write(buf.Bytes()); err != nil {
		s.pinLogTorn = true // a partial record must not prefix the next one
		return fmt.Errorf("save pins: %w", err)
	}
	s.pinLogOps += len(ops)
	return nil
}

// compactPins writes the snapshot to pins.json, then empties pins.log. A
// crash between the two leaves a journal whose records the snapshot
// already holds: replaying them again changes nothing. With pinWrite held.
func (s *store) compactPins(snapshot []pinEntry) error {
	if err := s.saveJSON("pins.json", snapshot); err != nil {
		return err
	}
	if err := os.Truncate(filepath.Join(s.dir, "pins.log"), 0); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("save pins: %w", err)
	}
	s.pinLogOps, s.pinLogTorn = 0, false
	return nil
}

// replayPinLog applies pins.log to the pins read from pins.json. A last
// line without its newline (a write cut short by a crash) is dropped from
// the file, so that the next record starts a line of its own.
func (s *store) replayPinLog() error {
	path := filepath.Join(s.dir, "pins.log")
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read pins.log: %w", err)
	}
	if end := bytes.LastIndexByte(data, '\n') + 1; end < len(data) {
		s.log.Warn("pins.log ends in a partial record, dropped", "bytes", len(data)-end)
		if err := os.Truncate(path, int64(end)); err != nil {
			return fmt.Errorf("repair pins.log: %w", err)
		}
		data = data[:end]
	}
	for line := range bytes.Lines(data) {
		var op pinOp
		if err := json.Unmarshal(line, &op); err != nil {
			s.log.Warn("damaged record in pins.log, skipped", "error", err)
			continue
		}
		s.pinLogOps++
		if op.Unpin {
			s.removePinLocked(digest.Digest(op.Digest), op.Holder)
		} else if d, err := digest.Parse(op.Digest); err == nil {
			s.addPin(d, op.Holder, op.Expires)
		}
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

// pin holds d for holder until expires (zero: until unpinned).
func (s *store) pin(d digest.Digest, holder string, expires time.Time) error {
	s.mu.Lock()
	if _, ok := s.blobs[d]; !ok || !s.has(d) {
		s.mu.Unlock()
		return fmt.Errorf("pin %s: %w: the cache does not hold it (it may have been evicted); resolve it again", d, regcache.ErrNotFound)
	}
	s.addPin(d, holder, expires)
	s.pinOps = append(s.pinOps, pinOp{Digest: d.String(), Holder: holder, Expires: expires})
	s.touchLocked(d)
	s.pinsGen++
	gen := s.pinsGen
	s.mu.Unlock()
	return s.savePins(gen)
}

// unpin releases holder's pin of d, or all its pins when d is empty, and
// evicts what no longer fits.
func (s *store) unpin(d digest.Digest, holder string) error {
	s.mu.Lock()
	if !s.removePinLocked(d, holder) {
		s.mu.Unlock()
		return nil
	}
	s.pinOps = append(s.pinOps, pinOp{Unpin: true, Digest: string(d), Holder: holder})
	s.pinsGen++
	gen := s.pinsGen
	s.evictLocked("")
	s.mu.Unlock()
	return s.savePins(gen)
}

// recordPrecompiled maps key to the artifact d, already written.
func (s *store) recordPrecompiled(key regcache.PrecompiledKey, d digest.Digest, size int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.precompiled[precompiledKey(key)] = precompiledEntry{ModuleDigest: key.ModuleDigest, EngineKey: key.EngineKey, Digest: d.String(), Size: size}
	return s.savePrecompiledLocked()
}

func (s *store) savePrecompiledLocked() error {
	list := make([]precompiledEntry, 0, len(s.precompiled))
	for _, p := range s.precompiled {
		list = append(list, p)
	}
	slices.SortFunc(list, func(a, b precompiledEntry) int {
		return cmpString(a.ModuleDigest+"\x00"+a.EngineKey, b.ModuleDigest+"\x00"+b.EngineKey)
	})
	return s.saveJSON("precompiled.json", list)
}

// lookupPrecompiled returns the artifact recorded for key, forgetting it
// when its blob was evicted.
func (s *store) lookupPrecompiled(key regcache.PrecompiledKey) (precompiledEntry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.precompiled[precompiledKey(key)]
	if !ok {
		return precompiledEntry{}, false
	}
	d, err := digest.Parse(e.Digest)
	if err != nil || !s.has(d) {
		delete(s.precompiled, precompiledKey(key))
		if err := s.savePrecompiledLocked(); err != nil {
			s.log.Warn("save precompiled index", "error", err)
		}
		return precompiledEntry{}, false
	}
	return e, true
}
