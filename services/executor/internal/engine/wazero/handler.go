package wazero

import (
	"context"
	"encoding/binary"
	"io"

	wz "github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// Handler mode (engine.Instantiator): an instance is instantiated ahead of
// its run, and its environment and stdio, unknown then, are given when it
// runs. wazero fixes both in the ModuleConfig at instantiation, so stdio
// goes through a stdio the instance is instantiated with, and environ_get
// and environ_sizes_get are the engine's (for every instance: wazero's own
// cannot be called from ours), reading the instance's environ.

var (
	_ engine.Instantiator = (*Engine)(nil)
	_ engine.Inline       = (*pending)(nil)
)

// Instantiate implements engine.Instantiator.
func (e *Engine) Instantiate(ctx context.Context, m engine.Module, spec engine.Spec) (engine.Pending, error) {
	s := &stdio{}
	i, err := e.instantiate(ctx, m, spec, s)
	if err != nil {
		return nil, err
	}
	return &pending{i: i, io: s, spec: spec, cpu: e.cpu}, nil
}

// pending is an engine.Pending.
type pending struct {
	i    *instance
	io   *stdio
	spec engine.Spec
	cpu  engine.ThreadLimiter
}

// Run implements engine.Pending. The stdio and environment are set
// before Launch starts the module's thread, which reads them.
func (p *pending) Run(s engine.Stdio) (engine.Instance, error) {
	p.io.set(s)
	p.i.env.vars = engine.Environ(s.Env)
	return p.i.launch(p.spec, p.cpu)
}

// RunInline implements engine.Inline.
func (p *pending) RunInline(s engine.Stdio, started func(engine.Instance)) (engine.Instance, error) {
	p.io.set(s)
	p.i.env.vars = engine.Environ(s.Env)
	run, err := engine.LaunchInline(p.i, p.cpu, p.spec, func(r *engine.Run) { started(r) })
	if err != nil {
		return nil, err
	}
	return run, nil
}

// Memory implements engine.Pending.
func (p *pending) Memory() int64 { return p.i.Memory() }

// Close implements engine.Pending.
func (p *pending) Close() { p.i.Close() }

// stdio is the standard streams of an instance instantiated before they
// are known: set once, before its run.
type stdio struct{ s engine.Stdio }

func (s *stdio) set(io engine.Stdio) { s.s = io }

func (s *stdio) stdin() io.Reader {
	return readerFunc(func(b []byte) (int, error) { return read(s.s.Stdin, b) })
}
func (s *stdio) stdout() io.Writer {
	return writerFunc(func(b []byte) (int, error) { return write(s.s.Stdout, b) })
}
func (s *stdio) stderr() io.Writer {
	return writerFunc(func(b []byte) (int, error) { return write(s.s.Stderr, b) })
}
func read(r io.Reader, b []byte) (int, error) {
	if r == nil {
		return 0, io.EOF
	}
	return r.Read(b)
}

func write(w io.Writer, b []byte) (int, error) {
	if w == nil {
		return len(b), nil
	}
	return w.Write(b)
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(b []byte) (int, error) { return f(b) }

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// environ is an instance's environment as environ_get reads it; set
// before its run.
type environ struct{ vars []engine.EnvVar }

type environKey struct{}

// exportEnviron defines environ_get and environ_sizes_get in b over those
// wazero's exporter defined.
func exportEnviron(b wz.HostModuleBuilder) {
	i32 := api.ValueTypeI32
	b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(environGet), []api.ValueType{i32, i32}, []api.ValueType{i32}).
		WithParameterNames("environ", "environ_buf").Export("environ_get")
	b.NewFunctionBuilder().WithGoModuleFunction(api.GoModuleFunc(environSizesGet), []api.ValueType{i32, i32}, []api.ValueType{i32}).
		WithParameterNames("result.environc", "result.environv_len").Export("environ_sizes_get")
}

func envOf(ctx context.Context) []engine.EnvVar {
	if e, ok := ctx.Value(environKey{}).(*environ); ok {
		return e.vars
	}
	return nil
}

func environSizesGet(ctx context.Context, mod api.Module, stack []uint64) {
	vars := envOf(ctx)
	size := 0
	for _, v := range vars {
		size += len(v.Name) + len(v.Value) + 2 // '=' and NUL
	}
	mem := mod.Memory()
	if mem == nil || !mem.WriteUint32Le(uint32(stack[0]), uint32(len(vars))) || !mem.WriteUint32Le(uint32(stack[1]), uint32(size)) {
		stack[0] = engine.ErrnoFault
		return
	}
	stack[0] = 0
}

func environGet(ctx context.Context, mod api.Module, stack []uint64) {
	vars := envOf(ctx)
	ptrs, buf := uint32(stack[0]), uint32(stack[1])
	mem := mod.Memory()
	if mem == nil {
		stack[0] = engine.ErrnoFault
		return
	}
	size := 0
	for _, v := range vars {
		size += len(v.Name) + len(v.Value) + 2
	}
	pv, okp := mem.Read(ptrs, uint32(4*len(vars)))
	bv, okb := mem.Read(buf, uint32(size))
	if !okp || !okb {
		stack[0] = engine.ErrnoFault
		return
	}
	off := 0
	for k, v := range vars {
		binary.LittleEndian.PutUint32(pv[4*k:], buf+uint32(off))
		off += copy(bv[off:], v.Name)
		bv[off] = '='
		off++
		off += copy(bv[off:], v.Value)
		bv[off] = 0
		off++
	}
	stack[0] = 0
}
