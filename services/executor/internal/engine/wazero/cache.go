package wazero

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"

	wz "github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/experimental"

	"github.com/wasmlet/wasmlet/services/executor/internal/diskcache"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// compile returns m compiled in r, counted in use until release: kept
// from before, loaded from an entry the index names, or compiled (from
// the verified cache, the shared store or afresh). r is in use.
func (e *Engine) compile(ctx context.Context, r *runtime, m *module) (*compiled, error) {
	if c := e.lookup(r, m.digest); c != nil {
		e.touch(c)
		return c, nil
	}
	e.disk.Touch(e.indexPath(m.digest))
	wasm, sum, rewritten, data, err := e.source(ctx, r, m)
	if err != nil {
		return nil, err
	}
	kept := false
	defer func() {
		if !kept {
			data.close()
		}
	}()
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
		cm, err = e.compileMiss(ctx, r, m, wasm, sum, rewritten)
		if err != nil {
			return nil, err
		}
	}
	kept = true
	return e.keep(r, m.digest, cm, data), nil
}

// source reads m's bytes as they are compiled in r: a table that starts
// larger than r's limit allows does not start; every table may grow to at
// most tableBudget (tables.go), the same for every limit, so that a module
// is compiled once, not once per limit, and its compiled code is shared.
// A module whose data segments qualify is compiled without them (data.go):
// data is then the image they make, the caller's to keep or close.
// sum names the bytes in the index: the module's digest unless they were
// rewritten so (tables capped, data segments left out).
func (e *Engine) source(ctx context.Context, r *runtime, m *module) (wasm []byte, sum string, rewritten bool, data *image, err error) {
	wasm, err = os.ReadFile(m.wasmPath)
	if err != nil {
		return nil, "", false, nil, fmt.Errorf("prepare module %s: read %s: %w", m.digest, m.wasmPath, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, "", false, nil, fmt.Errorf("prepare module %s: %w", m.digest, err)
	}
	if err := tablesFit(wasm, uint32(min(engine.TableElements(int64(r.pages)*pageSize), 1<<32-1))); err != nil {
		return nil, "", false, nil, fmt.Errorf("%w: module %s: %v of %d bytes; raise the limit", engine.ErrInstantiate, m.digest, err, int64(r.pages)*pageSize)
	}
	// The data section goes first: the tables are then capped in a copy
	// the size of the module without it (the same bytes either way).
	if stripped, mem, ok := stripData(wasm); ok {
		// Without an image the segments stay: its instances need them.
		if data = newImage(mem, e.root); data != nil {
			wasm, rewritten = stripped, true
		}
	}
	wasm, capped, err := capTables(wasm, uint32(engine.TableElements(tableBudget)))
	if err != nil {
		data.close()
		return nil, "", false, nil, fmt.Errorf("%w: module %s: %v", engine.ErrInstantiate, m.digest, err)
	}
	rewritten = rewritten || capped
	sum = strings.TrimPrefix(m.digest, "sha256:")
	if rewritten {
		h := sha256.Sum256(wasm)
		sum = hex.EncodeToString(h[:])
	}
	return wasm, sum, rewritten, data, nil
}

// indexPath is the index file of the module with digest.
func (e *Engine) indexPath(digest string) string {
	return filepath.Join(e.index, strings.TrimPrefix(digest, "sha256:"))
}

// load compiles wasm in r when the index names an entry for its bytes
// that matches its sum: wazero then loads that entry (or finds the module compiled in
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
	_, dir, err := e.entries()
	if err != nil || dir == "" || !validEntryName(entry) {
		return nil, false
	}
	path := filepath.Join(dir, entry)
	fi, err := os.Stat(path)
	if err != nil {
		return nil, false
	}
	if st, ok := e.verified[entry]; !ok || !engine.StampOf(fi).Equal(st) {
		// Not verified in this process, or changed on disk since: this
		// one entry is hashed now (wazero writes an entry whole, through
		// a rename, and its sum is written under cacheMu); one that does
		// not match is left to the slow path, which removes it.
		if engine.VerifyFile(path, filepath.Join(e.sums, entry+".sha256")) != nil {
			return nil, false
		}
		e.verified[entry] = engine.StampOf(fi)
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
func (e *Engine) compileMiss(ctx context.Context, r *runtime, m *module, wasm []byte, sum string, rewritten bool) (wz.CompiledModule, error) {
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
	if e.Artifacts().Shared() && !e.haveEntry(m.digest) && !m.sharedTried.Load() {
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
		if rewritten {
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
		if rewritten { // load finds it by the sum of the bytes compiled
			engine.WriteAtomic(filepath.Join(e.index, sum), []byte(fresh[0]+"\n"))
		}
		e.shareEntry(key, fresh[0])
	}
	if len(fresh) > 0 || installed != "" {
		e.trim(append(fresh, installed)...)
	}
	if err != nil {
		if cm != nil {
			cm.Close(context.Background())
		}
		return nil, compileError(r, m, err)
	}
	return cm, nil
}

// compileError is the error of a module wazero did not compile in r.
func compileError(r *runtime, m *module, err error) error {
	if r.pages != maxPages && strings.Contains(err.Error(), "memory") {
		return fmt.Errorf("%w: module %s does not fit the memory limit of %d pages (%d bytes): %s; raise the limit",
			engine.ErrInstantiate, m.digest, r.pages, int64(r.pages)*pageSize, engine.FirstLine(err.Error()))
	}
	return engine.CompileError(m.digest, err)
}

// configKey names the RuntimeConfig settings that shape compiled code
// (WithCloseOnContextDone is part of wazero's module id).
// nodata1: modules are compiled without their data segments where they
// qualify (data.go), which changes the bytes wazero compiles.
const configKey = "ctxdone1nodata1"

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

// trim bounds the cache on disk (Engine.disk), keeping the entries named
// (what was just compiled or installed). cacheMu is held, and the compile
// slot (or New runs): nothing of ours reads or writes wazero's entries
// meanwhile, since load compiles holding cacheMu and compileMiss holding
// the slot, and wazero touches its files only inside CompileModule.
func (e *Engine) trim(keep ...string) {
	for _, k := range keep {
		if k != "" {
			defer e.disk.Use(k)()
		}
	}
	removed, _ := e.disk.Trim() // logs its errors
	for _, k := range removed {
		delete(e.verified, k)
	}
}

// units lists the cache on disk for Engine.disk, one unit per entry: the
// entry, its sum and the index files naming it. Sums and index files whose
// entry is gone make units of their own, small and, unused, removed in
// time. Files being written (temporary names, with a dot) are not
// counted. Called by trim, cacheMu held.
func (e *Engine) units() ([]diskcache.Unit, error) {
	byKey := map[string]*diskcache.Unit{}
	var keys []string
	add := func(key, path string) {
		u := byKey[key]
		if u == nil {
			u = &diskcache.Unit{Key: key}
			byKey[key] = u
			keys = append(keys, key)
		}
		u.Files = append(u.Files, path)
	}
	es, dir, err := e.entries()
	if err != nil {
		return nil, fmt.Errorf("read compilation cache: %w", err)
	}
	for _, d := range es {
		if d.Type().IsRegular() && !strings.Contains(d.Name(), ".") {
			add(d.Name(), filepath.Join(dir, d.Name()))
		}
	}
	sums, err := os.ReadDir(e.sums)
	if err != nil {
		return nil, fmt.Errorf("read compilation cache: %w", err)
	}
	for _, d := range sums {
		if entry, ok := strings.CutSuffix(d.Name(), ".sha256"); ok && d.Type().IsRegular() && !strings.Contains(entry, ".") {
			add(entry, filepath.Join(e.sums, d.Name()))
		}
	}
	index, err := os.ReadDir(e.index)
	if err != nil {
		return nil, fmt.Errorf("read compilation cache: %w", err)
	}
	for _, d := range index {
		if !d.Type().IsRegular() || strings.Contains(d.Name(), ".") {
			continue
		}
		p := filepath.Join(e.index, d.Name())
		b, err := os.ReadFile(p)
		entry := strings.TrimSpace(string(b))
		if err != nil || !validEntryName(entry) {
			entry = "index/" + d.Name() // names no entry: a unit of its own
		}
		add(entry, p)
	}
	units := make([]diskcache.Unit, 0, len(keys))
	for _, k := range keys {
		units = append(units, *byKey[k]) // the entry first, where there is one
	}
	return units, nil
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
	imports, hasStart := wasiOfCompiled(cm)
	return engine.CheckWASI(digest, imports, hasStart)
}

// wasiOfCompiled is what checkWASI checks: the function and memory
// imports, and whether a _start function is exported.
func wasiOfCompiled(cm wz.CompiledModule) (imports []engine.Import, hasStart bool) {
	for _, f := range cm.ImportedFunctions() {
		mod, n, _ := f.Import()
		imports = append(imports, engine.Import{Module: mod, Name: n})
	}
	for _, m := range cm.ImportedMemories() {
		mod, n, _ := m.Import()
		imports = append(imports, engine.Import{Module: mod, Name: n})
	}
	_, hasStart = cm.ExportedFunctions()["_start"]
	return imports, hasStart
}
