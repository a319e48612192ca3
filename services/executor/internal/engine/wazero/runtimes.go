package wazero

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	wz "github.com/tetratelabs/wazero"

	"github.com/wasmlet/wasmlet/services/executor/internal/diskcache"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// runtime is a wazero Runtime for one memory limit and kind (compiler or
// interpreter), with WASI in it and the modules compiled for it. Its
// fields are guarded by Engine.mu.
type runtime struct {
	rtKey
	rt wz.Runtime

	refs     int                  // compiles and instances using it
	used     uint64               // Engine.clock at its last use
	compiled map[string]*compiled // by digest
}

// rtKey names a runtime: its memory limit, and whether it interprets
// (interpret.go) rather than compiles.
type rtKey struct {
	pages  uint32
	interp bool
}

// compiled is a module compiled in a runtime. Its fields are guarded by
// Engine.mu.
type compiled struct {
	cm   wz.CompiledModule
	refs int // instances and callers using it
	used uint64
	// stale: interpreted, and the module is compiled now; closed once
	// unused, whatever the bounds.
	stale bool

	// data is the image of its data segments, when it was compiled
	// without them (data.go): its instances' memory starts as it.
	data *image

	imgOnce sync.Once
	img     *image // otherwise its instances' initial memory (memory.go), made by the first

	touched diskcache.Touched // its cache entry's last use passed on (touch)

	index string // its module's index file (touch)

	sys atomic.Pointer[sysPool] // guest's, for the args last asked for
}

// touch records a use of c's cache entry on disk at most once a
// diskcache.TouchEvery: handler mode instantiates c once per request, and
// a stat per request was a tenth of its CPU.
func (e *Engine) touch(c *compiled) {
	e.disk.TouchSoon(&c.touched, c.index)
}

// image returns c's image, made from mem, the memory of an instance as
// instantiated, if it is the first (in dir if it must be a file).
func (c *compiled) image(mem []byte, dir string) *image {
	c.imgOnce.Do(func() { c.img = newImage(mem, dir) })
	return c.img
}

// close closes c's compiled module and image. It is unused.
func (c *compiled) close(ctx context.Context) {
	c.cm.Close(ctx)
	c.imgOnce.Do(func() {})
	c.img.close()
	c.data.close()
}

// runtime returns the compiling Runtime for a memory limit of pages,
// counted in use until release.
func (e *Engine) runtime(pages uint32) (*runtime, error) {
	return e.runtimeOf(rtKey{pages: pages})
}

// runtimeOf returns the Runtime k names, counted in use until release.
// Runtimes of both kinds share one CompilationCache, so one engine of
// each kind: a module compiled (or interpreted) under one limit is so
// under the others.
func (e *Engine) runtimeOf(k rtKey) (*runtime, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.clock++
	if r := e.runtimes[k]; r != nil {
		r.refs++
		r.used = e.clock
		return r, nil
	}
	ctx := context.Background() // the Runtime outlives the caller
	cfg := wz.NewRuntimeConfig()
	if k.interp {
		cfg = wz.NewRuntimeConfigInterpreter()
	}
	cfg = cfg.
		WithCompilationCache(e.cache).
		WithMemoryLimitPages(k.pages).
		WithCloseOnContextDone(true)
	rt := wz.NewRuntimeWithConfig(ctx, cfg)
	if err := defineWASI(ctx, rt); err != nil {
		rt.Close(ctx)
		return nil, fmt.Errorf("%w: instantiate WASI: %v", engine.ErrInstantiate, err)
	}
	r := &runtime{rtKey: k, rt: rt, refs: 1, used: e.clock, compiled: map[string]*compiled{}}
	e.runtimes[k] = r
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

// evict closes stale compiled modules no longer in use, then idle
// compiled modules, then idle runtimes, least recently used first, until
// the bounds hold or all that is left is in use. e.mu is held.
func (e *Engine) evict() {
	ctx := context.Background()
	for _, r := range e.runtimes {
		for d, c := range r.compiled {
			if c.stale && c.refs == 0 {
				c.close(ctx)
				delete(r.compiled, d)
				e.ncompiled--
			}
		}
	}
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
		lc.close(ctx)
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
			c.close(ctx)
			delete(lr.compiled, d)
			e.ncompiled--
		}
		lr.rt.Close(ctx)
		delete(e.runtimes, lr.rtKey)
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

// keep records cm as m's compiled module in r, with data, the image of
// the data segments it was compiled without (nil: it has them), or, if
// another caller did first, closes cm and data and takes that one;
// counted in use.
func (e *Engine) keep(r *runtime, digest string, cm wz.CompiledModule, data *image) *compiled {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.clock++
	c := r.compiled[digest]
	if c != nil {
		cm.Close(context.Background())
		data.close()
	} else {
		c = &compiled{cm: cm, data: data, index: e.indexPath(digest)}
		r.compiled[digest] = c
		e.ncompiled++
	}
	c.refs++
	c.used = e.clock
	e.evict()
	return c
}

// pages maps a limit in bytes to wazero's limit in pages: whole 64 KiB
// pages rounded down, at least one, at most the wasm32 maximum.
func pages(limit int64) uint32 {
	if limit <= 0 || limit >= maxPages*pageSize {
		return maxPages
	}
	return uint32(max(1, limit/pageSize))
}
