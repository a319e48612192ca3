package wasmtime

import (
	"fmt"
	"sync"
	"time"

	wt "github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// runEngine is what every instance runs in: one wasmtime Engine, a Linker
// with WASI defined on it, and each module deserialized into it once (per
// artifact, as verified). An instance costs a Store and an instantiation;
// its code is mapped once for all instances of its module.
type runEngine struct {
	once   sync.Once
	engine *wt.Engine
	linker *wt.Linker
	err    error

	mu      sync.Mutex
	modules map[string]*loaded // by digest
}

// loaded is a module deserialized into the runtime's Engine from the
// artifact with stamp.
type loaded struct {
	stamp  stamp
	module *wt.Module
}

// stamp identifies the artifact file a module was loaded from, as the
// module's verification recorded it.
type stamp struct {
	size    int64
	modTime time.Time
}

func (s stamp) equal(o stamp) bool { return s.size == o.size && s.modTime.Equal(o.modTime) }

func (r *runEngine) init() error {
	r.once.Do(func() {
		r.engine = newEngine()
		r.linker = wt.NewLinker(r.engine)
		r.modules = map[string]*loaded{}
		if err := r.linker.DefineWasi(); err != nil {
			r.err = fmt.Errorf("%w: define WASI: %v", engine.ErrInstantiate, err)
		}
	})
	return r.err
}

// module returns m deserialized from the artifact with stamp st. An older
// artifact's module is dropped (its running instances keep it alive):
// only an artifact verified as it is now is run.
func (r *runEngine) module(m *module, st stamp) (*wt.Module, error) {
	if err := r.init(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if l := r.modules[m.digest]; l != nil {
		if l.stamp.equal(st) {
			return l.module, nil
		}
		// Not closed: instances being set up may hold it; wasmtime-go's
		// finalizer frees it once none does.
		delete(r.modules, m.digest)
	}
	mod, err := wt.NewModuleDeserializeFile(r.engine, m.artifact)
	if err != nil {
		return nil, fmt.Errorf("%w: load precompiled module %s: %v", engine.ErrInstantiate, m.digest, err)
	}
	r.modules[m.digest] = &loaded{stamp: st, module: mod}
	return mod, nil
}
