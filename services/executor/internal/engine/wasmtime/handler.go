package wasmtime

import (
	"context"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// Handler mode (engine.Instantiator): an instance is instantiated in a
// store without WASI, which its Run sets: the WASI functions the linker
// defines look the context up in the store when called, so the request's
// environment and stdio reach a module instantiated before it came.

var _ engine.Instantiator = (*Engine)(nil)

// Instantiate implements engine.Instantiator.
func (e *Engine) Instantiate(ctx context.Context, em engine.Module, spec engine.Spec) (engine.Pending, error) {
	inst, m, err := e.newInstance(ctx, em)
	if err != nil {
		return nil, err
	}
	if err := inst.instantiate(m, spec, nil); err != nil {
		inst.release()
		return nil, err
	}
	return &pending{i: inst, spec: spec, cpu: e.cpu}, nil
}

// pending is an engine.Pending.
type pending struct {
	i    *instance
	spec engine.Spec
	cpu  engine.ThreadLimiter
}

// Run implements engine.Pending.
func (p *pending) Run(io engine.Stdio) (engine.Instance, error) {
	wasi, err := p.i.wasiConfig(p.spec, io)
	if err != nil {
		p.i.Close()
		return nil, err
	}
	p.i.store.SetWasi(wasi)
	run, err := engine.Launch(p.i, p.cpu, p.spec)
	if err != nil {
		return nil, err
	}
	return run, nil
}

// Memory implements engine.Pending.
func (p *pending) Memory() int64 { return p.i.Memory() }

// Close implements engine.Pending.
func (p *pending) Close() { p.i.Close() }
