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
// instantiated before it came, made with the instance (but its
// environment and stdin) so that a request does not wait for it. A run's
// stdout (the response) and stderr go through pipes of the engine's
// (pipeout.go), which the instance's Close waits to be drained: not the custom output of a long-running
// instance (output.go), whose handle costs a callback from C into Go at
// the store's close, and whose writes are each handed to another thread.

var (
	_ engine.Instantiator = (*Engine)(nil)
	_ engine.Inline       = (*pending)(nil)
)

// Instantiate implements engine.Instantiator.
func (e *Engine) Instantiate(ctx context.Context, em engine.Module, spec engine.Spec) (engine.Pending, error) {
	inst, err := e.instantiatePooled(ctx, em, spec)
	if err != nil {
		var m *module
		if inst, m, err = e.newInstance(ctx, em); err != nil {
			return nil, err
		}
		// A WASI context of nothing until the run's: a module whose start
		// section calls WASI must find one (wasmtime panics without), and
		// no request has come yet.
		if err := inst.instantiate(m, spec, wt.NewWasiConfig()); err != nil {
			inst.release()
			return nil, err
		}
	}
	p := &pending{i: inst, spec: spec, cpu: e.cpu}
	if err := p.prepare(&e.pipes); err != nil {
		return nil, err
	}
	return p, nil
}

// pending is an engine.Pending.
type pending struct {
	i    *instance
	spec engine.Spec
	cpu  engine.ThreadLimiter
	// wasi is the run's WASI context but its environment and stdin, made
	// ahead (prepare); nil once given to the store.
	wasi *wt.WasiConfig
}

// prepare makes the run's WASI context ahead of the run, off a request's
// path: its args, preopens, and its stdout and stderr pipes, whose opens
// were most of what connect did. A pending instance holds them (four
// descriptors, two of them the pipes' read ends) until it runs. On an
// error the instance is freed.
func (p *pending) prepare(pipes *pipePool) error {
	wasi, err := p.i.wasiBase(p.spec)
	if err != nil {
		p.i.Close()
		return err
	}
	if p.i.stdout, err = pipeStdout(pipes, wasi); err == nil {
		p.i.stderr, err = pipeStderr(pipes, wasi)
	}
	if err != nil {
		wasi.Close() // the write ends opened: the pipes read to their end
		p.i.Close()
		return err
	}
	p.wasi = wasi
	return nil
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

// connect gives the instance the run's WASI context, with io's
// environment and stdin, and its stdout and stderr pipes read into io's
// (pipeout.go). On an error it is freed.
func (p *pending) connect(io engine.Stdio) error {
	wasi := p.wasi
	p.wasi = nil
	stdout, stderr := io.Stdout, io.Stderr
	io.Stdout, io.Stderr = nil, nil
	if err := p.i.wasiStdio(wasi, io); err != nil {
		wasi.Close()
		p.i.Close()
		return err
	}
	p.i.stdout.start(stdout)
	p.i.stderr.start(stderr)
	p.i.store.SetWasi(wasi)
	return nil
}

// Memory implements engine.Pending.
func (p *pending) Memory() int64 { return p.i.Memory() }

// Close implements engine.Pending.
func (p *pending) Close() {
	if p.wasi != nil {
		p.wasi.Close() // its write ends: the pipes come to their end
		p.wasi = nil
	}
	p.i.Close()
}
