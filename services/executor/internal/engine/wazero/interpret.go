package wazero

// Interpret first (Config.InterpretFirst): Prepare checks a module's
// imports and exports from its sections (sections.go), and a module with
// no compiled code yet (in memory, or an entry the index names) starts on
// wazero's interpreter, whose compile to its own code costs about a tenth of
// wazero's compiler, and its code runs several times slower. Shortly
// after its first instance has started (behindDelay: once that start is
// reported), the module is compiled in the background into the cache, as
// a start without InterpretFirst would have (the shared store included);
// the instances started after that run compiled code. An instance
// started interpreted keeps running interpreted until it ends, so a
// server (an instance with listeners) is not started so: it waits for its
// compile, as without InterpretFirst.
//
// Interpreted and compiled instances are the same instance to everything
// around them: the same WASI, memory and table limits, kills
// (WithCloseOnContextDone: the interpreter checks at function entries and
// loops too), thread, CPU limit and usage (engine.Run).
//
// Not for wasmtime executors: a module's first instance there would run
// on wazero's WASI and limits, its later ones on wasmtime's, and a pod
// routed to wasmtime (by its RuntimeClass) is routed there for wasmtime's
// behaviour (no listeners, its traps, its memory accounting); a wasmtime
// executor would also carry wazero again (the one-engine builds). What
// wasmtime has is --quick-first-compile (Cranelift's quick settings
// first); a workload that wants fast first starts runs on wazero.
//
// The background compile is bounded: one at a time for the whole engine
// (the compile slot), at most one per module (behind.pending, and the
// flight lock on its bytes that foreground compiles take too), a module
// whose compile failed is not tried again in this process (its instances
// go on starting interpreted, and the failure is logged), and Close
// cancels what runs or waits.

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	wz "github.com/tetratelabs/wazero"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// behind is the engine's background compiles.
type behind struct {
	on     bool // Config.InterpretFirst
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	pending map[string]bool  // by digest: queued or compiling
	failed  map[string]error // by digest: compiles that failed, not tried again
}

func newBehind(on bool, log *slog.Logger) behind {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return behind{on: on, log: log, ctx: ctx, cancel: cancel, pending: map[string]bool{}, failed: map[string]error{}}
}

// code returns what to start m with under a memory limit of pages, both
// counted in use until release: its compiled code, or, with
// InterpretFirst, none compiled yet and interpret set, interpreted code
// (interpreted reports which).
func (e *Engine) code(ctx context.Context, m *module, pages uint32, interpret bool) (r *runtime, c *compiled, interpreted bool, err error) {
	r, err = e.runtime(pages)
	if err != nil {
		return nil, nil, false, err
	}
	if !e.behind.on || !interpret {
		c, err = e.compile(ctx, r, m)
	} else {
		c, err = e.interpretUnlessCompiled(ctx, &r, m)
		interpreted = r.interp
	}
	if err != nil {
		e.release(r, nil)
		return nil, nil, false, err
	}
	return r, c, interpreted, nil
}

// interpretUnlessCompiled returns m's compiled code in *r when there is
// some (kept in memory, or loaded from an entry the index names), or else
// its interpreted code, *r then the interpreting runtime of its limit (in
// use in place of the compiling one).
func (e *Engine) interpretUnlessCompiled(ctx context.Context, r **runtime, m *module) (*compiled, error) {
	if c := e.lookup(*r, m.digest); c != nil {
		e.touch(c)
		return c, nil
	}
	e.disk.Touch(e.indexPath(m.digest))
	wasm, sum, _, data, err := e.source(ctx, *r, m)
	if err != nil {
		return nil, err
	}
	kept := false
	defer func() {
		if !kept {
			data.close()
		}
	}()
	if cm, ok := e.load(ctx, *r, sum, wasm); ok {
		kept = true
		return e.keep(*r, m.digest, cm, data), nil
	}
	if cm, ok := e.loadShared(ctx, *r, m, sum, wasm); ok {
		kept = true
		return e.keep(*r, m.digest, cm, data), nil
	}
	ir, err := e.runtimeOf(rtKey{pages: (*r).pages, interp: true})
	if err != nil {
		return nil, err
	}
	e.release(*r, nil)
	*r = ir
	if c := e.lookup(ir, m.digest); c != nil {
		return c, nil
	}
	// Two interpreted compiles of one module at once would both do the
	// work: the engine keeps one per module.
	unlock, err := e.flights.Lock(ctx, "interp-"+sum)
	if err != nil {
		return nil, fmt.Errorf("prepare module %s: wait for its compile: %w", m.digest, err)
	}
	defer unlock()
	if c := e.lookup(ir, m.digest); c != nil {
		return c, nil
	}
	cm, err := ir.rt.CompileModule(ctx, wasm)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("prepare module %s: compile: %w", m.digest, ctx.Err())
		}
		return nil, compileError(ir, m, err)
	}
	kept = true
	return e.keep(ir, m.digest, cm, data), nil
}

// checkSections checks, with InterpretFirst, that m can run under WASI:
// from its code compiled under no limit when that is in memory (as a
// Prepare without InterpretFirst would, reading nothing), else from its
// import and export sections alone, read without the rest of its file
// (wasiSections, wasiOf); it reports whether it could tell. A module
// that does not validate is then refused at its first start.
func (e *Engine) checkSections(m *module) (bool, error) {
	if !e.behind.on {
		return false, nil
	}
	r, err := e.runtime(maxPages)
	if err != nil {
		return true, err
	}
	c := e.lookup(r, m.digest)
	defer e.release(r, c)
	if c != nil {
		return true, checkWASI(c.cm, m.digest)
	}
	f, err := os.Open(m.wasmPath)
	if err != nil {
		return true, fmt.Errorf("prepare module %s: read %s: %w", m.digest, m.wasmPath, err)
	}
	defer f.Close()
	wasm, ok, err := wasiSections(f)
	if err != nil {
		return true, fmt.Errorf("prepare module %s: read %s: %w", m.digest, m.wasmPath, err)
	}
	if !ok {
		return false, nil
	}
	imports, hasStart, ok := wasiOf(wasm)
	if !ok {
		return false, nil
	}
	return true, engine.CheckWASI(m.digest, imports, hasStart)
}

// loadShared installs m's entry from the shared store, another
// executor's compile, and loads it in r, when the compile slot is free:
// under it no compile of ours writes entries, which tells them from the
// one installed (compileMiss). With the slot taken it reports false at
// once, and the compile behind asks the store. Once asked, the store is
// not asked again for m.
func (e *Engine) loadShared(ctx context.Context, r *runtime, m *module, sum string, wasm []byte) (wz.CompiledModule, bool) {
	if !e.Artifacts().Shared() || m.sharedTried.Load() {
		return nil, false
	}
	select {
	case e.slot <- struct{}{}:
		defer e.slot.Release()
	default:
		return nil, false
	}
	m.sharedTried.Store(true)
	// No entry for m loaded (load): the cache need not be verified
	// whole, as before a compile, which hashes what this process has not.
	e.cacheMu.Lock()
	installed := e.fetchShared(ctx, e.ArtifactKey(m.digest))
	if installed != "" && sum != digestHex(m.digest) { // bytes rewritten: load finds it by the sum of the bytes compiled
		engine.WriteAtomic(filepath.Join(e.index, sum), []byte(installed+"\n"))
	}
	e.cacheMu.Unlock()
	if installed == "" {
		return nil, false
	}
	cm, ok := e.load(ctx, r, sum, wasm)
	if ok {
		e.Artifacts().Hit()
	}
	return cm, ok
}

func digestHex(digest string) string { return strings.TrimPrefix(digest, "sha256:") }

// behindDelay is how long a compile behind waits before it starts.
const behindDelay = 250 * time.Millisecond

// compileBehind compiles m in the background, unless that is under way,
// has failed, or the engine is closed; then the interpreted code of m
// left unused is closed. It compiles in the runtime of the memory limit
// (pages) of the instance that asked: the next instances of that pod's
// spec find the code there in memory, not on disk (a load decodes and
// validates the whole module again: ~30 ms of CPU for a Go module).
func (e *Engine) compileBehind(m *module, pages uint32) {
	b := &e.behind
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pending[m.digest] || b.failed[m.digest] != nil || b.ctx.Err() != nil {
		return
	}
	b.pending[m.digest] = true
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		// The instance that asked is reported started (Start's return,
		// the executor's reply and events, the pod's status) while this
		// waits: the compile takes every core.
		t := time.NewTimer(behindDelay)
		select {
		case <-t.C:
		case <-b.ctx.Done():
			t.Stop()
		}
		err := e.compileNow(b.ctx, m, pages)
		b.mu.Lock()
		delete(b.pending, m.digest)
		if err != nil && b.ctx.Err() == nil {
			b.failed[m.digest] = err
		}
		b.mu.Unlock()
		switch {
		case err == nil:
			e.staleInterpreted(m.digest)
		case b.ctx.Err() == nil:
			b.log.Warn("background compile failed; the module's instances go on starting on the interpreter", "module", m.digest, "error", err)
		}
	}()
}

// compileNow compiles m as a start under a memory limit of pages without
// InterpretFirst would.
func (e *Engine) compileNow(ctx context.Context, m *module, pages uint32) error {
	r, err := e.runtime(pages)
	if err != nil {
		return err
	}
	c, err := e.compile(ctx, r, m)
	e.release(r, c)
	return err
}

// staleInterpreted marks the interpreted code of digest stale: closed
// once no instance uses it (evict).
func (e *Engine) staleInterpreted(digest string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for k, r := range e.runtimes {
		if c := r.compiled[digest]; k.interp && c != nil {
			c.stale = true
		}
	}
	e.evict()
}

// Close cancels the background compiles and waits for them to end. The
// engine still starts instances after it; those of modules not compiled
// yet start interpreted.
func (e *Engine) Close() {
	e.behind.cancel()
	e.behind.wg.Wait()
}
