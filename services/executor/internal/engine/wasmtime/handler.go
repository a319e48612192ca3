package wasmtime

import (
	"context"

	wt "github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// Handler mode (engine.Instantiator): an instance is instantiated in a
// store with an empty WASI context, which its Run replaces: the WASI
// functions the linker defines look the context up in the store when
// called, so the request's environment and stdio reach a module
// instantiated before it came. A run's stdout (the response) and stderr
// go through pipes of the engine's (pipeout.go), which the instance's
// Close waits to be drained: not the custom output of a long-running
// instance (output.go), whose handle costs a callback from C into Go at
// the store's close, and whose writes are each handed to another thread.

var (
	_ engine.Instantiator = (*Engine)(nil)
	_ engine.Inline       = (*pending)(nil)
)

// Instantiate implements engine.Instantiator.
func (e *Engine) Instantiate(ctx context.Context, em engine.Module, spec engine.Spec) (engine.Pending, error) {
	if inst, err := e.instantiatePooled(ctx, em, spec); err == nil {
		return &pending{i: inst, spec: spec, cpu: e.cpu, pipes: &e.pipes}, nil
	}
	inst, m, err := e.newInstance(ctx, em)
	if err != nil {
		return nil, err
	}
	// A WASI context of nothing until the run's: a module whose start
	// section calls WASI must find one (wasmtime panics without), and no
	// request has come yet.
	if err := inst.instantiate(m, spec, wt.NewWasiConfig()); err != nil {
		inst.release()
		return nil, err
	}
	return &pending{i: inst, spec: spec, cpu: e.cpu, pipes: &e.pipes}, nil
}

// pending is an engine.Pending.
type pending struct {
	i     *instance
	spec  engine.Spec
	cpu   engine.ThreadLimiter
	pipes *pipePool // for its stdout
}

// Run implements engine.Pending.
func (p *pending) Run(io engine.Stdio) (engine.Instance, error) {
	if err := p.connect(io); err != nil {
		return nil, err
	}
	run, err := engine.Launch(p.i, p.cpu, p.spec)
	if err != nil {
		return nil, err
	}
	return run, nil
}

// RunInline implements engine.Inline.
func (p *pending) RunInline(io engine.Stdio, started func(engine.Instance)) (engine.Instance, error) {
	if err := p.connect(io); err != nil {
		return nil, err
	}
	run, err := engine.LaunchInline(p.i, p.cpu, p.spec, func(r *engine.Run) { started(r) })
	if err != nil {
		return nil, err
	}
	return run, nil
}

// connect gives the instance the run's WASI context: stdout and stderr
// through pipes (pipeout.go), the rest as Start's. On an error it is
// freed.
func (p *pending) connect(io engine.Stdio) error {
	stdout, stderr := io.Stdout, io.Stderr
	io.Stdout, io.Stderr = nil, nil
	wasi, err := p.i.wasiConfig(p.spec, io)
	if err != nil {
		p.i.Close()
		return err
	}
	if stdout != nil {
		p.i.stdout, err = pipeStdout(p.pipes, wasi, stdout)
	}
	if err == nil && stderr != nil {
		p.i.stderr, err = pipeStderr(p.pipes, wasi, stderr)
	}
	if err != nil {
		wasi.Close()
		p.i.Close()
		return err
	}
	p.i.store.SetWasi(wasi)
	return nil
}

// Memory implements engine.Pending.
func (p *pending) Memory() int64 { return p.i.Memory() }

// Close implements engine.Pending.
func (p *pending) Close() { p.i.Close() }
