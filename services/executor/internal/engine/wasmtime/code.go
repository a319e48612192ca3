package wasmtime

import (
	"container/list"
	"fmt"
	"sync"

	wt "github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// idleCode bounds the modules whose code stays loaded with no instance
// running it.
const idleCode = 64

// runEngine is a wasmtime Engine that instances run in, with the Linker
// every instance of it is instantiated by: WASI, and poll_oneoff over it
// (async.go).
type runEngine struct {
	engine *wt.Engine
	linker *wt.Linker
}

func newRunEngine(quick bool) (*runEngine, error) { return newRunEngineWith(quick, nil) }

// newRunEngineWith is newRunEngine with more settings (nil: none) made
// to its Config: ones that do not change compiled code (an artifact must
// load into it).
func newRunEngineWith(quick bool, more func(*wt.Config)) (*runEngine, error) {
	eng := newEngine(quick, more)
	if err := checkLayout(eng); err != nil {
		return nil, fmt.Errorf("wasmtime engine: %w", err)
	}
	l := wt.NewLinker(eng)
	l.AllowShadowing(true)
	err := l.DefineWasi()
	if err == nil {
		err = defineAsyncPollOneoff(l)
	}
	if err != nil {
		return nil, fmt.Errorf("wasmtime engine: define WASI: %w", err)
	}
	return &runEngine{engine: eng, linker: l}, nil
}

// code is a module's artifact loaded into its runtime: its compiled code,
// mapped once, which every instance of the module runs.
type code struct {
	digest string
	stamp  engine.FileStamp // of the artifact it was loaded from
	quick  bool             // loaded from the quick artifact (Config.QuickFirst)
	rt     *runEngine

	loaded chan struct{} // closed once module or err is set
	module *wt.Module
	err    error

	preOnce sync.Once
	pre     *instancePre // nil: not made (yet), or the imports do not resolve

	// Under codes.mu.
	users int           // instances started from it and not released
	stale bool          // no longer its module's code: closed once unused
	idle  *list.Element // in codes.idle while loaded and unused
}

// codes keeps each module's code loaded while it has instances, and the
// idleCode most recently used of those without. Safe for concurrent use.
type codes struct {
	mu       sync.Mutex
	byDigest map[string]*code
	idle     list.List // of *code, least recently used first
}

// get returns m's code loaded from the artifact a, loading it unless it
// is already, for one more user (put gives it back). The code of an older
// artifact is dropped (closed once its last instance ends): only an
// artifact verified as it is now is run, and the quick artifact's code
// goes once the optimised one is there. Callers that come while a load is
// under way wait for it.
func (p *codes) get(m *module, a artifact, rt *runEngine) (*code, error) {
	p.mu.Lock()
	if p.byDigest == nil {
		p.byDigest = map[string]*code{}
	}
	var drop *code
	c := p.byDigest[m.digest]
	if c != nil && (c.quick != a.quick || !c.stamp.Equal(a.stamp)) {
		drop = p.retire(c)
		c = nil
	}
	load := c == nil
	if load {
		c = &code{digest: m.digest, stamp: a.stamp, quick: a.quick, rt: rt, loaded: make(chan struct{})}
		p.byDigest[m.digest] = c
	}
	p.use(c)
	p.mu.Unlock()
	if drop != nil {
		drop.close()
	}
	if load {
		c.module, c.err = wt.NewModuleDeserializeFile(rt.engine, a.path)
		if c.err != nil {
			c.err = fmt.Errorf("%w: load precompiled module %s: %v", engine.ErrInstantiate, m.digest, c.err)
		}
		close(c.loaded)
	}
	<-c.loaded
	if c.err != nil {
		p.put(c)
		return nil, c.err
	}
	return c, nil
}

// use counts one more user of c; p.mu is held.
func (p *codes) use(c *code) {
	c.users++
	if c.idle != nil {
		p.idle.Remove(c.idle)
		c.idle = nil
	}
}

// retire takes c out of its module's place and returns it if it is to be
// closed now (no users); p.mu is held.
func (p *codes) retire(c *code) *code {
	if p.byDigest[c.digest] == c {
		delete(p.byDigest, c.digest)
	}
	c.stale = true
	if c.idle != nil {
		p.idle.Remove(c.idle)
		c.idle = nil
	}
	if c.users == 0 {
		return c
	}
	return nil
}

// put gives back a user's c: unused code of a module is kept for its next
// instances, and the least recently used beyond idleCode is closed, as is
// stale code.
func (p *codes) put(c *code) {
	var drop []*code
	p.mu.Lock()
	c.users--
	switch {
	case c.users > 0:
	case c.stale || c.err != nil:
		if d := p.retire(c); d != nil {
			drop = append(drop, d)
		}
	default:
		c.idle = p.idle.PushBack(c)
		for p.idle.Len() > idleCode {
			if d := p.retire(p.idle.Front().Value.(*code)); d != nil {
				drop = append(drop, d)
			}
		}
	}
	p.mu.Unlock()
	for _, d := range drop {
		d.close()
	}
}

// instancePre is the module's imports resolved in its runtime's linker,
// made at its first instantiation; nil if they do not resolve. The
// caller is one of c's users.
func (c *code) instancePre() *instancePre {
	c.preOnce.Do(func() { c.pre = newInstancePre(c.rt.linker, c.module) })
	return c.pre
}

// close frees the module, once it has no user. Instances still running
// it keep its code: a store holds what it instantiated.
func (c *code) close() {
	c.preOnce.Do(func() {}) // none made from now on
	if c.pre != nil {
		c.pre.delete()
	}
	if c.module != nil {
		c.module.Close()
	}
}
