package wasmtime

import (
	"fmt"
	"sync"
	"sync/atomic"

	wt "github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/wasmlet/wasmlet/services/executor/internal/diskcache"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// Bounds of the runners kept idle for the next instances.
const (
	idlePerModule = 16
	idleTotal     = 64
)

// runner is what an instance needs beyond its Store: a wasmtime Engine of
// its own (see the package doc), the module deserialized into it and a
// Linker with WASI defined. Making one costs most of a start (deserializing
// the module, and unmapping its code again when closed, which stops every
// core), so the runner of an ended instance is kept for the next instance
// of the same module. A runner serves one instance at a
// time; the epoch a kill advanced stays advanced, and the next Store's
// deadline is set relative to it.
type runner struct {
	digest string
	stamp  engine.FileStamp // of the artifact it was loaded from
	quick  bool             // loaded from the quick artifact (Config.QuickFirst)
	engine *wt.Engine
	module *wt.Module
	linker *wt.Linker
	// current is the instance the runner serves, which the linker's
	// poll_oneoff (pollOneoff) waits for.
	current atomic.Pointer[instance]
}

func newRunner(m *module, a artifact) (*runner, error) {
	eng := newEngine(a.quick)
	mod, err := wt.NewModuleDeserializeFile(eng, a.path)
	if err != nil {
		eng.Close()
		return nil, fmt.Errorf("%w: load precompiled module %s: %v", engine.ErrInstantiate, m.digest, err)
	}
	r := &runner{digest: m.digest, stamp: a.stamp, quick: a.quick, engine: eng, module: mod}
	l := wt.NewLinker(eng)
	l.AllowShadowing(true)
	err = l.DefineWasi()
	if err == nil {
		err = l.FuncWrap(engine.WASIModule, "poll_oneoff", func(c *wt.Caller, in, out, nsubs, nevents int32) (int32, *wt.Trap) {
			inst := r.current.Load()
			if inst == nil {
				return 0, wt.NewTrap("poll_oneoff called outside an instance")
			}
			return inst.pollOneoff(c, in, out, nsubs, nevents)
		})
	}
	if err != nil {
		l.Close()
		mod.Close()
		eng.Close()
		return nil, fmt.Errorf("%w: define WASI: %v", engine.ErrInstantiate, err)
	}
	r.linker = l
	return r, nil
}

func (r *runner) close() {
	r.linker.Close()
	r.module.Close()
	r.engine.Close()
}

// runners keeps idle runners by module digest. Safe for concurrent use.
type runners struct {
	mu      sync.Mutex
	idle    map[string][]*runner
	n       int
	warming map[string]bool // digests a spare is being made for

	disk *diskcache.Cache // keeps a spare's artifact until it is loaded
}

// get returns an idle runner of m loaded from the artifact a, or a new
// one. Idle runners of an older artifact are closed: only an artifact
// verified as it is now is run, and the quick artifact's runners go once
// the optimised one is there.
func (p *runners) get(m *module, a artifact) (*runner, error) {
	var stale []*runner
	p.mu.Lock()
	list := p.idle[m.digest]
	var r *runner
	for len(list) > 0 && r == nil {
		last := list[len(list)-1]
		list = list[:len(list)-1]
		p.n--
		if last.quick == a.quick && last.stamp.Equal(a.stamp) {
			r = last
		} else {
			stale = append(stale, last)
		}
	}
	if len(list) == 0 {
		delete(p.idle, m.digest)
	} else {
		p.idle[m.digest] = list
	}
	p.mu.Unlock()
	for _, s := range stale {
		s.close()
	}
	p.spare(m, a)
	if r != nil {
		return r, nil
	}
	return newRunner(m, a)
}

// spare makes, in the background, a runner of m for the next instance,
// unless one is idle or on its way: a module that has just started an
// instance is likely to start another (a Deployment scaling, a Job's next
// pod, the next pod of a burst), and that one then costs a Store and an
// instantiation instead of an Engine and a deserialisation. At most one
// spare per module is kept beyond those of ended instances.
func (p *runners) spare(m *module, a artifact) {
	p.mu.Lock()
	if p.warming[m.digest] || len(p.idle[m.digest]) > 0 || p.n >= idleTotal {
		p.mu.Unlock()
		return
	}
	if p.warming == nil {
		p.warming = map[string]bool{}
	}
	p.warming[m.digest] = true
	p.mu.Unlock()
	release := p.disk.Use(m.key)
	go func() {
		r, err := newRunner(m, a)
		release()
		p.mu.Lock()
		delete(p.warming, m.digest)
		p.mu.Unlock()
		if err == nil {
			p.put(r)
		}
	}()
}

// put keeps r for a next instance, or closes it when enough are idle.
func (p *runners) put(r *runner) {
	p.mu.Lock()
	if p.idle == nil {
		p.idle = map[string][]*runner{}
	}
	if len(p.idle[r.digest]) < idlePerModule && p.n < idleTotal {
		p.idle[r.digest] = append(p.idle[r.digest], r)
		p.n++
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	r.close()
}
