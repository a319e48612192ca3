// Package wazero is the engine.Engine of wazero, the pure-Go WebAssembly
// runtime, for hosts that wasmtime-go ships no library for. It compiles
// modules into wazero's compilation cache on disk, shared through the
// registry cache (engine.Artifacts), and runs each instance as an
// engine.Run.
//
// It owns its cache directory (<dir>/wazero-<version>/: wazero's entries,
// and this package's sums/ and index/) and nothing else on disk; it must
// not know of instance ids, states or NATS.
//
// What is wazero's here:
//   - Sums: every cache entry is hashed against its sum before wazero
//     reads the cache (once per process, and when it changes on disk);
//     wazero checks a CRC of an entry's code, not its function offsets,
//     and fails on a corrupt entry rather than compiling again.
//   - Sharing: a module's entry is one file named by wazero's key (module,
//     version, CPU features), shared as a bundle of its name and bytes; one
//     wazero ignores or cannot load is rejected and replaced.
//   - Memory limits are per Runtime: one Runtime per distinct limit over one
//     CompilationCache, idle ones closed least recently used first
//     (Config.MaxRuntimes, MaxCompiled). Tables are capped in the module's
//     bytes (tables.go); linear memory lives outside the Go heap (memory.go).
//   - Preopens are confined (fs.go): no symlink leads out of one, and an
//     instance holds at most engine.MaxOpenFiles files open.
//   - A kill cancels the instance's context: wasm stops at its next
//     function entry or loop, and a WASI sleep ends (sleeper).
//   - Output goes straight from the module's thread to the sinks, in
//     writes of at most maxSinkWrite.
//
// Usage:
//
//	e, err := wazero.New(wazero.Config{CacheDir: dir, CPU: limiter, Shared: store})
//	m, err := e.Prepare(ctx, digest, wasmPath)
//	inst, err := e.Start(ctx, m, spec)
package wazero

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	wz "github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

const (
	name            = "wazero"
	fallbackVersion = "1.12.0"
	modulePath      = "github.com/tetratelabs/wazero"

	pageSize = 64 << 10
	maxPages = 65536
)

// Config configures the engine.
type Config struct {
	// CacheDir keeps compiled modules. Required.
	CacheDir string
	// CPU enforces Spec.CPULimitMillis; nil runs every instance unthrottled.
	CPU engine.ThreadLimiter
	// Shared, if set, shares compiled modules with other executors of the
	// same engine key (see the package doc).
	Shared engine.ArtifactStore
	// Logger, if set, receives warnings about shared artifacts.
	Logger *slog.Logger
	// MaxRuntimes bounds the idle Runtimes kept, one per distinct memory
	// limit (default 16).
	MaxRuntimes int
	// MaxCompiled bounds the idle compiled modules kept, over all
	// Runtimes (default 64).
	MaxCompiled int
}

const (
	defaultMaxRuntimes = 16
	defaultMaxCompiled = 64
)

// Engine is the wazero engine.Engine.
type Engine struct {
	engine.Base
	root  string // wazero's cache root
	sums  string // our sha256 per entry
	index string // the entry of each module, by module digest
	cache wz.CompilationCache
	cpu   engine.ThreadLimiter

	slot    engine.Slots     // compiles that miss the cache: one at a time, each on every core, so the entries new after one are its own
	flights engine.KeyedLock // one compile of the same bytes at a time

	cacheMu  sync.Mutex                  // guards verified, the cache's entries, sums and index
	verified map[string]engine.FileStamp // entries hashed against their sums, as they were then

	maxRuntimes, maxCompiled int

	mu        sync.Mutex          // guards the fields below and those of runtimes and compiled
	runtimes  map[uint32]*runtime // by memory limit in pages
	ncompiled int                 // over all runtimes
	clock     uint64              // the LRU's: ticks at each use
}

var _ engine.Engine = (*Engine)(nil)

// runtime is a wazero Runtime for one memory limit, with WASI in it and
// the modules compiled for it. Its fields are guarded by Engine.mu.
type runtime struct {
	pages uint32
	rt    wz.Runtime

	refs     int                  // compiles and instances using it
	used     uint64               // Engine.clock at its last use
	compiled map[string]*compiled // by digest
}

// compiled is a module compiled in a runtime. Its fields are guarded by
// Engine.mu.
type compiled struct {
	cm   wz.CompiledModule
	refs int // instances and callers using it
	used uint64
}

// New returns an engine caching compiled modules under cfg.CacheDir.
func New(cfg Config) (*Engine, error) {
	if cfg.CacheDir == "" {
		return nil, errors.New("wazero engine: CacheDir is required")
	}
	b := engine.NewBase(engine.BaseConfig{Name: name, ModulePath: modulePath, FallbackVersion: fallbackVersion, ConfigKey: configKey, Shared: cfg.Shared, Logger: cfg.Logger})
	root := filepath.Join(cfg.CacheDir, name+"-"+b.Version())
	sums := filepath.Join(root, "sums")
	index := filepath.Join(root, "index")
	for _, d := range []string{sums, index} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("wazero engine: create cache dir: %w", err)
		}
	}
	cache, err := wz.NewCompilationCacheWithDir(root)
	if err != nil {
		return nil, fmt.Errorf("wazero engine: compilation cache: %w", err)
	}
	return &Engine{
		Base:        b,
		root:        root,
		sums:        sums,
		index:       index,
		cache:       cache,
		cpu:         cfg.CPU,
		slot:        engine.NewSlots(1),
		verified:    map[string]engine.FileStamp{},
		runtimes:    map[uint32]*runtime{},
		maxRuntimes: cmp.Or(max(cfg.MaxRuntimes, 0), defaultMaxRuntimes),
		maxCompiled: cmp.Or(max(cfg.MaxCompiled, 0), defaultMaxCompiled),
	}, nil
}

// module is a prepared module.
type module struct {
	digest   string
	wasmPath string
}

func (m *module) Digest() string { return m.digest }

// Prepare implements engine.Engine.
func (e *Engine) Prepare(ctx context.Context, digest, wasmPath string) (engine.Module, error) {
	if _, err := engine.DigestHex(digest); err != nil {
		return nil, err
	}
	m := &module{digest: digest, wasmPath: wasmPath}
	r, err := e.runtime(maxPages)
	if err != nil {
		return nil, err
	}
	defer e.release(r, nil)
	c, err := e.compile(ctx, r, m)
	if err != nil {
		return nil, err
	}
	defer e.release(nil, c)
	if err := checkWASI(c.cm, digest); err != nil {
		return nil, err
	}
	return m, nil
}

// runtime returns the Runtime for a memory limit of pages, counted in use
// until release.
func (e *Engine) runtime(pages uint32) (*runtime, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.clock++
	if r := e.runtimes[pages]; r != nil {
		r.refs++
		r.used = e.clock
		return r, nil
	}
	ctx := context.Background() // the Runtime outlives the caller
	cfg := wz.NewRuntimeConfig().
		WithCompilationCache(e.cache).
		WithMemoryLimitPages(pages).
		WithCloseOnContextDone(true)
	rt := wz.NewRuntimeWithConfig(ctx, cfg)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		rt.Close(ctx)
		return nil, fmt.Errorf("%w: instantiate WASI: %v", engine.ErrInstantiate, err)
	}
	r := &runtime{pages: pages, rt: rt, refs: 1, used: e.clock, compiled: map[string]*compiled{}}
	e.runtimes[pages] = r
	e.evict()
	return r, nil
}

// release ends a use of r and of c (either may be nil) and closes what is
// idle beyond the bounds.
func (e *Engine) release(r *runtime, c *compiled) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if r != nil {
		r.refs--
	}
	if c != nil {
		c.refs--
	}
	e.evict()
}

// evict closes idle compiled modules, then idle runtimes, least recently
// used first, until the bounds hold or all that is left is in use. e.mu
// is held.
func (e *Engine) evict() {
	ctx := context.Background()
	for e.ncompiled > e.maxCompiled {
		var (
			lr   *runtime
			ld   string
			lc   *compiled
			seen bool
		)
		for _, r := range e.runtimes {
			for d, c := range r.compiled {
				if c.refs == 0 && (!seen || c.used < lc.used) {
					lr, ld, lc, seen = r, d, c, true
				}
			}
		}
		if !seen {
			break
		}
		lc.cm.Close(ctx)
		delete(lr.compiled, ld)
		e.ncompiled--
	}
	for len(e.runtimes) > e.maxRuntimes {
		var lr *runtime
		for _, r := range e.runtimes {
			if r.refs == 0 && idle(r) && (lr == nil || r.used < lr.used) {
				lr = r
			}
		}
		if lr == nil {
			break
		}
		for d, c := range lr.compiled {
			c.cm.Close(ctx)
			delete(lr.compiled, d)
			e.ncompiled--
		}
		lr.rt.Close(ctx)
		delete(e.runtimes, lr.pages)
	}
}

// idle reports whether none of r's compiled modules is in use.
func idle(r *runtime) bool {
	for _, c := range r.compiled {
		if c.refs > 0 {
			return false
		}
	}
	return true
}

// lookup returns m's compiled module in r, counted in use, or nil.
func (e *Engine) lookup(r *runtime, digest string) *compiled {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := r.compiled[digest]
	if c != nil {
		e.clock++
		c.refs++
		c.used = e.clock
	}
	return c
}

// keep records cm as m's compiled module in r (or, if another caller did
// first, closes cm and takes that one), counted in use.
func (e *Engine) keep(r *runtime, digest string, cm wz.CompiledModule) *compiled {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.clock++
	c := r.compiled[digest]
	if c != nil {
		cm.Close(context.Background())
	} else {
		c = &compiled{cm: cm}
		r.compiled[digest] = c
		e.ncompiled++
	}
	c.refs++
	c.used = e.clock
	e.evict()
	return c
}

// compile returns m compiled in r, counted in use until release: kept
// from before, loaded from an entry the index names, or compiled (from
// the verified cache, the shared store or afresh). r is in use.
func (e *Engine) compile(ctx context.Context, r *runtime, m *module) (*compiled, error) {
	if c := e.lookup(r, m.digest); c != nil {
		return c, nil
	}
	wasm, err := os.ReadFile(m.wasmPath)
	if err != nil {
		return nil, fmt.Errorf("prepare module %s: read %s: %w", m.digest, m.wasmPath, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("prepare module %s: %w", m.digest, err)
	}
	// A table that starts larger than the runtime's limit allows does not
	// start; every table may grow to at most tableBudget (tables.go), the
	// same for every limit, so that a module is compiled once, not once per
	// limit, and its compiled code is shared.
	if _, _, err := capTables(wasm, uint32(min(engine.TableElements(int64(r.pages)*pageSize), 1<<32-1))); err != nil {
		return nil, fmt.Errorf("%w: module %s: %v of %d bytes; raise the limit", engine.ErrInstantiate, m.digest, err, int64(r.pages)*pageSize)
	}
	wasm, capped, err := capTables(wasm, uint32(engine.TableElements(tableBudget)))
	if err != nil {
		return nil, fmt.Errorf("%w: module %s: %v", engine.ErrInstantiate, m.digest, err)
	}
	// The index names entries by the sha256 of the bytes compiled: the
	// module's digest unless its tables were capped.
	sum := strings.TrimPrefix(m.digest, "sha256:")
	if capped {
		h := sha256.Sum256(wasm)
		sum = hex.EncodeToString(h[:])
	}
	unlock, err := e.flights.Lock(ctx, sum)
	if err != nil {
		return nil, fmt.Errorf("prepare module %s: wait for its compile: %w", m.digest, err)
	}
	defer unlock()
	if c := e.lookup(r, m.digest); c != nil {
		return c, nil
	}
	cm, ok := e.load(ctx, r, sum, wasm)
	if !ok {
		cm, err = e.compileMiss(ctx, r, m, wasm, sum, capped)
		if err != nil {
			return nil, err
		}
	}
	return e.keep(r, m.digest, cm), nil
}

// load compiles wasm in r when the index names a verified entry for its
// bytes: wazero then loads that entry (or finds the module compiled in
// memory) rather than compiling, and the caller need not wait for a
// compile of another module. It reports false when there is no such
// entry or wazero did not load it.
func (e *Engine) load(ctx context.Context, r *runtime, sum string, wasm []byte) (wz.CompiledModule, bool) {
	e.cacheMu.Lock()
	defer e.cacheMu.Unlock()
	b, err := os.ReadFile(filepath.Join(e.index, sum))
	if err != nil {
		return nil, false
	}
	entry := strings.TrimSpace(string(b))
	st, ok := e.verified[entry]
	_, dir, err := e.entries()
	if !ok || err != nil || dir == "" || !validEntryName(entry) {
		return nil, false
	}
	fi, err := os.Stat(filepath.Join(dir, entry))
	if err != nil || !engine.StampOf(fi).Equal(st) {
		return nil, false // changed on disk: the slow path verifies it again
	}
	cm, err := r.rt.CompileModule(ctx, wasm)
	if err != nil {
		return nil, false
	}
	return cm, true
}

// compileMiss compiles wasm in r holding the compile slot: from the
// verified cache, the shared store, or afresh, recording the sum of the
// entry wazero writes and the index entry for sum.
func (e *Engine) compileMiss(ctx context.Context, r *runtime, m *module, wasm []byte, sum string, capped bool) (wz.CompiledModule, error) {
	if err := e.slot.Acquire(ctx); err != nil {
		return nil, fmt.Errorf("prepare module %s: wait for other compiles: %w", m.digest, err)
	}
	defer e.slot.Release()
	e.cacheMu.Lock()
	if err := e.verifyCache(); err != nil {
		e.cacheMu.Unlock()
		return nil, fmt.Errorf("prepare module %s: %w", m.digest, err)
	}
	key := e.ArtifactKey(m.digest)
	before := make(map[string]bool, len(e.verified))
	for n := range e.verified {
		before[n] = true
	}
	installed := ""
	if e.Artifacts().Shared() && !e.haveEntry(m.digest) {
		installed = e.fetchShared(ctx, key)
	}
	e.cacheMu.Unlock()
	// Loads of entries the index names go on meanwhile; they write none.
	// With workers, wazero compiles on every core and checks ctx between
	// functions; with one (its default) it does neither.
	ctx = experimental.WithCompilationWorkers(ctx, goruntime.GOMAXPROCS(0))
	cm, err := r.rt.CompileModule(ctx, wasm)
	e.cacheMu.Lock()
	defer e.cacheMu.Unlock()
	if err != nil && installed != "" && ctx.Err() == nil {
		// The shared entry does not load: remove it and compile.
		e.removeEntry(installed)
		e.Artifacts().Rejected(ctx, key, err)
		installed = ""
		cm, err = r.rt.CompileModule(ctx, wasm)
	}
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("prepare module %s: compile: %w", m.digest, ctx.Err())
	}
	if serr := e.recordSums(); serr != nil && err == nil {
		err = serr
	}
	var fresh []string // entries wazero wrote: what it compiled
	for n := range e.verified {
		if !before[n] && n != installed {
			fresh = append(fresh, n)
		}
	}
	switch {
	case installed != "" && len(fresh) == 0:
		e.Artifacts().Hit()
		if capped {
			engine.WriteAtomic(filepath.Join(e.index, sum), []byte(installed+"\n"))
		}
	case installed != "":
		// wazero looked for another name: the entry is not for this host.
		e.removeEntry(installed)
		e.Artifacts().Rejected(ctx, key, fmt.Errorf("wazero compiled the module into entry %v instead of loading %s", fresh, installed))
	}
	if len(fresh) > 0 || err != nil {
		e.Artifacts().Compiled()
	}
	if err == nil && len(fresh) == 1 {
		if capped { // load finds it by the sum of the bytes compiled
			engine.WriteAtomic(filepath.Join(e.index, sum), []byte(fresh[0]+"\n"))
		}
		e.shareEntry(key, fresh[0])
	}
	if err != nil {
		if cm != nil {
			cm.Close(context.Background())
		}
		if r.pages != maxPages && strings.Contains(err.Error(), "memory") {
			return nil, fmt.Errorf("%w: module %s does not fit the memory limit of %d pages (%d bytes): %s; raise the limit",
				engine.ErrInstantiate, m.digest, r.pages, int64(r.pages)*pageSize, engine.FirstLine(err.Error()))
		}
		return nil, engine.CompileError(m.digest, err)
	}
	return cm, nil
}

// configKey names the RuntimeConfig settings that shape compiled code
// (WithCloseOnContextDone is part of wazero's module id).
const configKey = "ctxdone1"

// bundleMagic starts a shared bundle: this line, the entry's name and a
// newline, then the entry's bytes.
const bundleMagic = "wasmlet-wazero-entry-v1\n"

// haveEntry reports whether the index names a verified entry for the
// module. cacheMu is held, after verifyCache.
func (e *Engine) haveEntry(digest string) bool {
	b, err := os.ReadFile(filepath.Join(e.index, strings.TrimPrefix(digest, "sha256:")))
	if err != nil {
		return false
	}
	_, ok := e.verified[strings.TrimSpace(string(b))]
	return ok
}

// validEntryName: wazero names entries by the hex of a sha256.
func validEntryName(n string) bool {
	if len(n) != 64 {
		return false
	}
	_, err := hex.DecodeString(n)
	return err == nil && strings.ToLower(n) == n
}

// fetchShared installs the module's entry from the shared store and
// returns its name, or "" when there is none to install (counted by
// engine.Artifacts, or here as rejected). cacheMu is held.
func (e *Engine) fetchShared(ctx context.Context, key engine.ArtifactKey) string {
	tmp, _, ok := e.Artifacts().Fetch(ctx, key, e.sums)
	if !ok {
		return ""
	}
	defer os.Remove(tmp)
	_, dir, err := e.entries()
	if err == nil && dir == "" {
		err = errors.New("wazero's cache directory is missing")
	}
	if err != nil {
		e.Artifacts().LocalError(ctx, key, err)
		return ""
	}
	f, err := os.Open(tmp)
	if err != nil {
		e.Artifacts().LocalError(ctx, key, err)
		return ""
	}
	defer f.Close()
	br := bufio.NewReader(f)
	magic, err1 := br.ReadString('\n')
	entry, err2 := br.ReadString('\n')
	entry = strings.TrimSuffix(entry, "\n")
	if err1 != nil || err2 != nil || magic != bundleMagic || !validEntryName(entry) {
		e.Artifacts().Rejected(ctx, key, errors.New("not a wazero entry bundle"))
		return ""
	}
	out, err := os.CreateTemp(dir, entry+".shared.tmp-*")
	if err != nil {
		e.Artifacts().LocalError(ctx, key, err)
		return ""
	}
	h := sha256.New()
	_, err = io.Copy(io.MultiWriter(out, h), br)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if err == nil {
		err = engine.Install(out.Name(), filepath.Join(dir, entry), sum)
	}
	if err == nil {
		// Install wrote the sum beside the entry; ours live under sums/.
		err = os.Rename(filepath.Join(dir, entry)+".sha256", filepath.Join(e.sums, entry+".sha256"))
	}
	var fi os.FileInfo
	if err == nil {
		fi, err = os.Stat(filepath.Join(dir, entry))
	}
	if err == nil {
		err = engine.WriteAtomic(filepath.Join(e.index, strings.TrimPrefix(key.ModuleDigest, "sha256:")), []byte(entry+"\n"))
	}
	if err != nil {
		os.Remove(out.Name())
		e.removeEntry(entry)
		e.Artifacts().LocalError(ctx, key, err)
		return ""
	}
	e.verified[entry] = engine.StampOf(fi)
	return entry
}

// removeEntry removes an entry and its sum. cacheMu is held.
func (e *Engine) removeEntry(entry string) {
	if _, dir, err := e.entries(); err == nil && dir != "" {
		os.Remove(filepath.Join(dir, entry))
	}
	os.Remove(filepath.Join(e.sums, entry+".sha256"))
	delete(e.verified, entry)
}

// shareEntry records entry as the module's in the index and puts it to
// the shared store in the background. cacheMu is held.
func (e *Engine) shareEntry(key engine.ArtifactKey, entry string) {
	if err := engine.WriteAtomic(filepath.Join(e.index, strings.TrimPrefix(key.ModuleDigest, "sha256:")), []byte(entry+"\n")); err != nil {
		return
	}
	if !e.Artifacts().Shared() {
		return
	}
	_, dir, err := e.entries()
	if err != nil || dir == "" {
		return
	}
	b, err := os.ReadFile(filepath.Join(dir, entry))
	if err != nil {
		return
	}
	bundle := append([]byte(bundleMagic+entry+"\n"), b...)
	sum := sha256.Sum256(bundle)
	e.Artifacts().Put(key, bundle, hex.EncodeToString(sum[:]))
}

// entries lists the directory where wazero keeps its entries (see
// wazero's cache.go). The sums and sharing rely on this much of wazero's
// internals: that directory, and one file per module named by its key. If
// wazero changes it, sharing finds no new entry to put and the engine
// still works locally.
func (e *Engine) entries() ([]os.DirEntry, string, error) {
	ds, err := os.ReadDir(e.root)
	if err != nil {
		return nil, "", err
	}
	for _, d := range ds {
		if d.IsDir() && strings.HasPrefix(d.Name(), "wazero-") {
			dir := filepath.Join(e.root, d.Name())
			es, err := os.ReadDir(dir)
			return es, dir, err
		}
	}
	return nil, "", nil
}

// verifyCache removes every cache entry that does not match its sum or has
// none. cacheMu is held.
func (e *Engine) verifyCache() error {
	es, dir, err := e.entries()
	if err != nil {
		return fmt.Errorf("read compilation cache: %w", err)
	}
	for _, d := range es {
		if !d.Type().IsRegular() || strings.Contains(d.Name(), ".") { // wazero's temp files have a suffix
			continue
		}
		path := filepath.Join(dir, d.Name())
		fi, err := d.Info()
		if err != nil {
			continue
		}
		st := engine.StampOf(fi)
		if v, ok := e.verified[d.Name()]; ok && v.Equal(st) {
			continue
		}
		if err := engine.VerifyFile(path, filepath.Join(e.sums, d.Name()+".sha256")); err != nil {
			os.Remove(path)
			os.Remove(filepath.Join(e.sums, d.Name()+".sha256"))
			delete(e.verified, d.Name())
			continue
		}
		e.verified[d.Name()] = st
	}
	return nil
}

// recordSums writes a sum for every entry that has none: entries wazero
// just wrote from code it compiled in this process. cacheMu is held.
func (e *Engine) recordSums() error {
	es, dir, err := e.entries()
	if err != nil {
		return fmt.Errorf("read compilation cache: %w", err)
	}
	for _, d := range es {
		if !d.Type().IsRegular() || strings.Contains(d.Name(), ".") {
			continue
		}
		if _, ok := e.verified[d.Name()]; ok {
			continue
		}
		path := filepath.Join(dir, d.Name())
		sum, fi, err := engine.HashFile(path)
		if err != nil {
			return err
		}
		if err := engine.WriteAtomic(filepath.Join(e.sums, d.Name()+".sha256"), []byte(sum+"\n")); err != nil {
			return err
		}
		e.verified[d.Name()] = engine.StampOf(fi)
	}
	return nil
}

// checkWASI refuses a module that imports anything but WASI preview 1 or
// has no _start.
func checkWASI(cm wz.CompiledModule, digest string) error {
	var imports []engine.Import
	for _, f := range cm.ImportedFunctions() {
		mod, n, _ := f.Import()
		imports = append(imports, engine.Import{Module: mod, Name: n})
	}
	for _, m := range cm.ImportedMemories() {
		mod, n, _ := m.Import()
		imports = append(imports, engine.Import{Module: mod, Name: n})
	}
	_, hasStart := cm.ExportedFunctions()["_start"]
	return engine.CheckWASI(digest, imports, hasStart)
}

// pages maps a limit in bytes to wazero's limit in pages: whole 64 KiB
// pages rounded down, at least one, at most the wasm32 maximum.
func pages(limit int64) uint32 {
	if limit <= 0 || limit >= maxPages*pageSize {
		return maxPages
	}
	return uint32(max(1, limit/pageSize))
}

// Start implements engine.Engine.
func (e *Engine) Start(ctx context.Context, em engine.Module, spec engine.Spec) (engine.Instance, error) {
	m, ok := em.(*module)
	if !ok {
		return nil, fmt.Errorf("%w: module was not prepared by the wazero engine", engine.ErrInstantiate)
	}
	r, err := e.runtime(pages(spec.MemoryLimitBytes))
	if err != nil {
		return nil, err
	}
	c, err := e.compile(ctx, r, m)
	if err != nil {
		e.release(r, nil)
		return nil, err
	}
	// The runtime and compiled module stay in use until the instance is
	// closed (at the end of its run), or Start fails.
	released := false
	defer func() {
		if !released {
			e.release(r, c)
		}
	}()
	cm := c.cm
	ictx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	fsc := wz.NewFSConfig()
	open := new(atomic.Int32)
	for _, p := range spec.Preopens {
		if err := engine.CheckPreopen(p); err != nil {
			cancel()
			return nil, err
		}
		fsc = mountDir(fsc, p.HostPath, p.GuestPath, p.ReadOnly, open)
	}
	mc := wz.NewModuleConfig().
		WithName("").
		WithStartFunctions().
		WithArgs(spec.Args...).
		WithFSConfig(fsc).
		WithStdout(sink(spec.Stdout)).
		WithStderr(sink(spec.Stderr)).
		WithSysWalltime().
		WithSysNanotime().
		WithNanosleep(sleeper(ictx)).
		WithRandSource(rand.Reader)
	for _, v := range engine.Environ(spec.Env) {
		mc = mc.WithEnv(v.Name, v.Value)
	}
	mod, err := r.rt.InstantiateModule(withLinearMemory(ictx), cm, mc)
	if err != nil {
		cancel()
		return nil, engine.InstantiateError(m.digest, err)
	}
	start := mod.ExportedFunction("_start")
	if start == nil {
		mod.Close(ictx)
		cancel()
		return nil, engine.CheckWASI(m.digest, nil, false)
	}
	// From here the instance owns the runtime and compiled module: it
	// releases them when it is closed.
	released = true
	run, err := engine.Launch(&instance{ctx: ictx, cancel: cancel, mod: mod, mem: mod.ExportedMemory("memory"), start: start,
		closed: func() { e.release(r, c) }}, e.cpu, spec)
	if err != nil {
		return nil, err
	}
	return run, nil
}

// sleeper is WASI's sleep (poll_oneoff on a clock) for an instance: it
// returns early when ctx ends, so that a kill reaches a sleeping module at
// once (wazero then stops it at its next function entry or loop).
func sleeper(ctx context.Context) func(ns int64) {
	return func(ns int64) {
		t := time.NewTimer(time.Duration(ns))
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
}

// maxSinkWrite bounds what a sink is given in one Write. wazero hands
// fd_write's iovecs over as views of linear memory, up to 4 GiB each; a
// sink given them in pieces handles output a bounded piece at a time, as
// with wasmtime, whose pipe is read 32 KiB at a time.
const maxSinkWrite = 64 << 10

func sink(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return chunked{w}
}

// chunked writes to w at most maxSinkWrite bytes at a time.
type chunked struct{ w io.Writer }

func (c chunked) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k, err := c.w.Write(p[:min(len(p), maxSinkWrite)])
		n += k
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}

// instance is the engine.Guest of one run. Output goes straight from
// the module's thread to the sinks, so all of it has been delivered when
// _start returns.
type instance struct {
	ctx    context.Context
	cancel context.CancelFunc // Interrupt: stops wasm at its next function entry or loop, and ends a sleep (sleeper)
	mod    api.Module
	mem    api.Memory // the exported memory, if any, taken at start: a module that exits drops its export
	start  api.Function
	closed func() // ends the instance's use of its runtime and compiled module
}

var _ engine.Guest = (*instance)(nil)

// Call implements engine.Guest.
func (i *instance) Call() error {
	_, err := i.start.Call(i.ctx)
	return err
}

// Exit implements engine.Guest.
func (i *instance) Exit(err error) (int32, bool) {
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		return int32(exit.ExitCode()), true
	}
	return 0, false
}

// Failure implements engine.Guest: wazero's "wasm error: <kind>\nwasm
// stack trace:\n\t<frame>..." becomes "wasm trap: <kind> in <innermost
// frame>".
func (i *instance) Failure(err error) string {
	lines := strings.Split(err.Error(), "\n")
	kind, ok := strings.CutPrefix(strings.TrimSpace(lines[0]), "wasm error: ")
	if !ok {
		return "the module failed: " + strings.TrimSpace(lines[0])
	}
	msg := "wasm trap: " + kind
	for j, l := range lines {
		if strings.TrimSpace(l) == "wasm stack trace:" && j+1 < len(lines) {
			msg += " in " + strings.TrimSpace(lines[j+1])
			break
		}
	}
	return msg
}

// Memory implements engine.Guest: a word-sized read of a length the
// module may be growing, at worst a growth late.
func (i *instance) Memory() int64 {
	if i.mem == nil {
		return 0
	}
	return int64(i.mem.Size())
}

// Interrupt implements engine.Guest.
func (i *instance) Interrupt() { i.cancel() }

// Close implements engine.Guest.
func (i *instance) Close() {
	i.mod.Close(context.Background())
	i.closed()
	i.cancel()
}
