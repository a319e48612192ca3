package wazero

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"io"
	"slices"
	"sync"
	"time"

	wz "github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/sys"

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
	p := &pending{spec: spec, cpu: e.cpu}
	if err := e.instantiate(ctx, m, spec, &p.instance, true); err != nil {
		return nil, err
	}
	return p, nil
}

// pending is an engine.Pending: its instance, and what its run needs.
type pending struct {
	instance
	spec engine.Spec
	cpu  engine.ThreadLimiter
}

// Run implements engine.Pending. The stdio and environment are set
// before Launch starts the module's thread, which reads them.
func (p *pending) Run(s engine.Stdio) (engine.Instance, error) {
	p.sys.io.s = s
	p.env.vars = engine.Environ(s.Env)
	return p.launch(p.spec, p.cpu)
}

// RunInline implements engine.Inline.
func (p *pending) RunInline(s engine.Stdio, started func(engine.Instance)) (engine.Instance, error) {
	p.sys.io.s = s
	p.env.vars = engine.Environ(s.Env)
	run, err := engine.LaunchInline(&p.instance, p.cpu, p.spec, func(r *engine.Run) { started(r) })
	if err != nil {
		return nil, err
	}
	return run, nil
}

// Memory and Close (engine.Pending) are the instance's.

// guestSys is what an instance's ModuleConfig reads of the instance: its
// stdio (a handler's set at its run) and the zero of its monotonic clock.
// wazero's configs are immutable values, each With* a copy of the config
// and its map: a handler's guestSys and its config are made once and kept
// for the next instance of the module (guestSys.put), rather than a
// dozen copies made per request.
type guestSys struct {
	io       stdio
	monoZero time.Time
	mc       wz.ModuleConfig // reads io and monoZero
	pool     *sysPool        // where it is kept after its instance; nil: nowhere
}

// sysPool keeps a compiled module's guestSys for instances started with
// args and no preopens.
type sysPool struct {
	args []string
	sync.Pool
}

// newGuestSys returns a guestSys for instances with args and fsc (nil:
// no preopens), kept in pool after each.
func newGuestSys(args []string, fsc wz.FSConfig, pool *sysPool) *guestSys {
	g := &guestSys{pool: pool}
	mc := wz.NewModuleConfig().
		WithName("").
		WithStartFunctions().
		WithArgs(args...).
		WithStdin(&g.io).
		WithStdout((*stdout)(&g.io)).
		WithStderr((*stderr)(&g.io)).
		WithSysWalltime().
		WithNanotime(g.nanotime, sys.ClockResolution(time.Microsecond)).
		WithRandSource(rand.Reader)
	if fsc != nil {
		mc = mc.WithFSConfig(fsc)
	}
	g.mc = mc
	return g
}

// nanotime is the instance's monotonic clock: 0 at its instantiation.
func (g *guestSys) nanotime() int64 { return int64(time.Since(g.monoZero)) }

// guestSys returns a guestSys for an instance of c with args and no
// preopens: one kept, or a new one.
func (c *compiled) guestSys(args []string) *guestSys {
	p := c.sys.Load()
	if p == nil || !slices.Equal(p.args, args) {
		p = &sysPool{args: slices.Clone(args)}
		c.sys.Store(p)
	}
	if g, ok := p.Get().(*guestSys); ok {
		return g
	}
	return newGuestSys(p.args, nil, p)
}

// put keeps g for a next instance, its instance closed: nothing of that
// instance's stays in it, and wazero no longer reads it.
func (g *guestSys) put() {
	if g == nil || g.pool == nil {
		return
	}
	g.io.s = engine.Stdio{}
	g.monoZero = time.Time{}
	g.pool.Put(g)
}

// stdio is the standard streams of an instance instantiated before they
// are known: set once, before its run. It is fd 0's reader; stdout and
// stderr, conversions of it, are fd 1's and fd 2's writers (in at most
// maxSinkWrite bytes a write), so that none is allocated per instance.
type stdio struct{ s engine.Stdio }

// Read implements io.Reader: stdin, empty if nil.
func (s *stdio) Read(b []byte) (int, error) {
	if s.s.Stdin == nil {
		return 0, io.EOF
	}
	return s.s.Stdin.Read(b)
}

type (
	stdout stdio
	stderr stdio
)

func (s *stdout) Write(b []byte) (int, error) { return writeChunked(s.s.Stdout, b) }
func (s *stderr) Write(b []byte) (int, error) { return writeChunked(s.s.Stderr, b) }

// environ is an instance's environment as environ_get reads it; set
// before its run.
type environ struct{ vars []engine.EnvVar }

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
	if i := instanceOf(ctx); i != nil {
		return i.env.vars
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
