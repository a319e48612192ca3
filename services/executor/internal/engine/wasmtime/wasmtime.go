// Package wasmtime is the engine.Engine of wasmtime-go (cgo). It compiles
// each module once into a precompiled artifact, kept on disk and shared
// through the registry cache (engine.Artifacts), and runs each instance,
// as an engine.Run, in a Store of its own.
//
// It owns its cache directory (<dir>/<engine key>/<digest hex>.cwasm and a
// .sha256 sidecar) and nothing else on disk; it must not know of instance
// ids, states or NATS.
//
// What is wasmtime's here:
//   - One wasmtime Engine and Linker for every instance (two with
//     Config.QuickFirst: the quick code's and the optimised code's), and a
//     module's code loaded once (code.go), into which every instance of
//     it is instantiated: its code is mapped once however many run, and a
//     start costs a Store and an instantiation. The epoch that interrupts
//     wasm is the Engine's, so each Store has a kill switch of its own
//     (kill.go, the C API's epoch deadline callback, reached through a
//     read of wasmtime-go's Store by its layout, checked when the engine
//     is made): a kill sets it and advances the epoch; the other stores
//     see the epoch pass and go on.
//   - Wasm runs on a fiber (async.go, the C API's async support): an
//     instance asleep in poll_oneoff waits in Go, off its OS thread (an
//     engine.Mobile, as wazero's are), and its wasm goes on, on whatever
//     thread, when the wait is over.
//   - Artifacts (prepare.go) are hashed against their sidecar before first
//     use and whenever they change on disk: wasmtime checks an artifact's
//     header (its wasmtime, Config, target and ISA flags), not its code.
//   - Config.QuickFirst: a module with no artifact yet is compiled with
//     Cranelift's quick settings first, run from that (in <key>.quick/,
//     emptied at start: wasmtime loads an artifact of either settings into
//     an Engine of the other, so a quick one must never be found where the
//     optimised ones are kept or shared), and compiled optimised in the
//     background (prepare.go: compileQuick).
//   - Artifacts on disk are bounded by total bytes (Config.MaxCacheBytes,
//     engine.NewDiskCache): a module's unit is its artifact and sidecar, the
//     sidecar's mtime its last use; an artifact is in use from ready's
//     check until its code is loaded (loaded code keeps its mapping, also
//     once the file is unlinked). A module whose artifact went is
//     compiled again at its next Start; code loaded from an artifact that
//     has changed since is not run again.
//   - Memory limits through the store limiter: memory.grow and table.grow
//     past the limit fail (-1) rather than trap.
//   - A kill sets the instance's kill switch and advances the epoch,
//     which ends its running wasm, and wakes the engine's own poll_oneoff
//     (async.go), which ends a sleep.
//   - A handler's instances (handler mode, one per request) are
//     instantiated in an Engine of their own with wasmtime's pooling
//     allocator (pooling.go): memories, tables and fiber stacks reserved
//     once and reused, reset, rather than mapped and unmapped per
//     instance; one the pool cannot take is allocated on demand.
//   - Output goes straight to the sinks at each write, called on
//     wasmtime's own runtime threads while fd_write waits (output.go): an
//     instance holds no descriptor for its stdio. A handler's run is the
//     exception: its stdout (the response) and stderr go through pipes of
//     the engine's (pipeout.go: a write end opened for the run's while,
//     the pipe reused once read to its end), which wasmtime writes in
//     place, and its request body is given to WASI whole
//     (wasi_config_set_stdin_bytes).
//   - No listeners: wasmtime-go has no socket preopen (neither its Go API
//     nor the C API's wasi_config_*), so Start refuses Spec.Listeners
//     with engine.ErrUnsupported.
//
// Usage:
//
//	e, err := wasmtime.New(wasmtime.Config{CacheDir: dir, CPU: limiter, Shared: store})
//	m, err := e.Prepare(ctx, digest, wasmPath)
//	inst, err := e.Start(ctx, m, spec)
package wasmtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	wt "github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/wasmlet/wasmlet/services/executor/internal/diskcache"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// The engine's identity. The version is read from the build where it can be.
const (
	name            = "wasmtime"
	fallbackVersion = "39.0.1"
	modulePath      = "github.com/bytecodealliance/wasmtime-go/v39"
	// configKey names the Config every Engine is made with; artifacts are
	// kept per key, since an artifact loads only into an equal Config.
	configKey = "epoch1"
)

// Config configures the engine.
type Config struct {
	// CacheDir keeps precompiled artifacts. Required.
	CacheDir string
	// CPU enforces Spec.CPULimitMillis; nil runs every instance unthrottled.
	CPU engine.ThreadLimiter
	// Shared, if set, shares artifacts with other executors of the same
	// engine key (see the package doc).
	Shared engine.ArtifactStore
	// Logger, if set, receives warnings about shared artifacts.
	Logger *slog.Logger
	// MaxCacheBytes bounds the artifacts kept in CacheDir, least recently
	// used removed first (default engine.DefaultMaxCacheBytes).
	MaxCacheBytes int64
	// QuickFirst compiles a module that has no artifact yet (on disk or in
	// the shared store) with Cranelift's quick settings first (opt level
	// none, single-pass register allocation: about half the CPU of the
	// optimised compile, slower code), runs its instances from that
	// artifact, kept for this process only, and compiles the optimised
	// artifact in the background: instances started once it is there run optimised
	// code. Only optimised artifacts go to disk and to the shared store.
	//
	// Not Winch, wasmtime's baseline compiler, which compiled
	// examples/hello 3.2-3.6x and testdata/wasm/large 3x faster than these
	// settings in a probe (v42 and v44, its strategy set by hand): the C API
	// has no way to choose it up to wasmtime-go v44 (the newest the module
	// proxy serves; wasmtime_config_strategy_set stores Cranelift whatever
	// it is given, though the library has Winch built in). wasmtime adds
	// WASMTIME_STRATEGY_WINCH after v44 (its PR 13155); its artifacts do
	// not load into a Cranelift Engine, so quick ones stay apart as now.
	QuickFirst bool
}

// Engine is the wasmtime engine.Engine.
type Engine struct {
	engine.Base
	dir  string
	cpu  engine.ThreadLimiter
	disk *diskcache.Cache // bounds dir

	// The Engine of the optimised code, which compiles it (one compile at a
	// time: each uses every core) and runs it.
	compileMu sync.Mutex
	compiler  *runEngine

	// With Config.QuickFirst: the quick code's Engine and lock (a quick
	// compile never waits for an optimised one in the background), and
	// the background compiles.
	quickMu    sync.Mutex
	quick      *runEngine
	quickDir   string // the quick artifacts, this process's only
	background sync.WaitGroup
	log        *slog.Logger

	mu      sync.Mutex
	modules map[string]*module // by digest

	codes codes // the modules' code loaded into compiler or quick

	// Handler instances' Engine, with the pooling allocator (pooling.go),
	// made at the first; nil if it cannot be. Its modules' code is loaded
	// into it apart.
	poolOnce    sync.Once
	pool        *runEngine
	pooledCodes codes

	pipes pipePool // handler runs' stdout and stderr (pipeout.go)
}

var _ engine.Engine = (*Engine)(nil)

// New returns an engine caching artifacts under cfg.CacheDir.
func New(cfg Config) (*Engine, error) {
	if cfg.CacheDir == "" {
		return nil, errors.New("wasmtime engine: CacheDir is required")
	}
	b := engine.NewBase(engine.BaseConfig{Name: name, ModulePath: modulePath, FallbackVersion: fallbackVersion, ConfigKey: configKey, Shared: cfg.Shared, Logger: cfg.Logger})
	dir := filepath.Join(cfg.CacheDir, b.Key())
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("wasmtime engine: create cache dir: %w", err)
	}
	if err := checkSizes(); err != nil {
		return nil, fmt.Errorf("wasmtime engine: %w", err)
	}
	compiler, err := newRunEngine(false)
	if err != nil {
		return nil, err
	}
	e := &Engine{
		Base:     b,
		dir:      dir,
		cpu:      cfg.CPU,
		compiler: compiler,
		modules:  map[string]*module{},
		log:      cfg.Logger,
	}
	if e.log == nil {
		e.log = slog.New(slog.DiscardHandler)
	}
	if cfg.QuickFirst {
		// Beside the engine key's directory, never inside it: nothing there
		// is kept across a restart or shared.
		e.quickDir = dir + ".quick"
		if err := os.RemoveAll(e.quickDir); err != nil {
			return nil, fmt.Errorf("wasmtime engine: clear the quick compiles: %w", err)
		}
		if err := os.MkdirAll(e.quickDir, 0o700); err != nil {
			return nil, fmt.Errorf("wasmtime engine: create cache dir: %w", err)
		}
		if e.quick, err = newRunEngine(true); err != nil {
			return nil, err
		}
	}
	disk, err := engine.NewDiskCache(cfg.MaxCacheBytes, e.units, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("wasmtime engine: %w", err)
	}
	e.disk = disk
	// A bound lowered since the last run holds from the start.
	if _, err := e.disk.Trim(); err != nil {
		return nil, fmt.Errorf("wasmtime engine: bound the cache dir: %w", err)
	}
	return e, nil
}

// newEngine returns an Engine of the engine's Config (configKey), or of
// its quick variant: an artifact loads only into an Engine of the settings
// that compiled it, so quick artifacts are never kept under configKey.
func newEngine(quick bool, more func(*wt.Config)) *wt.Engine {
	cfg := wt.NewConfig()
	cfg.SetEpochInterruption(true)
	// Async support does not change the compiled code: artifacts load
	// into Engines with it or without (and are the same bytes).
	setAsync(cfg)
	if quick {
		cfg.SetCraneliftOptLevel(wt.OptLevelNone)
		cfg.SetCraneliftFlag("regalloc_algorithm", "single_pass")
	}
	if more != nil {
		more(cfg)
	}
	return wt.NewEngineWithConfig(cfg)
}

// WaitBackground blocks until the optimised compiles started in the
// background so far (Config.QuickFirst) have ended.
func (e *Engine) WaitBackground() { e.background.Wait() }

// Start implements engine.Engine.
func (e *Engine) Start(ctx context.Context, em engine.Module, spec engine.Spec) (engine.Instance, error) {
	if len(spec.Listeners) > 0 {
		return nil, fmt.Errorf("%w: the wasmtime engine cannot hand a module a listening socket (wasmtime-go has no socket preopen); use a wazero flavour", engine.ErrUnsupported)
	}
	inst, m, err := e.newInstance(ctx, em)
	if err != nil {
		return nil, err
	}
	if err := inst.setup(m, spec); err != nil {
		inst.release()
		return nil, err
	}
	run, err := engine.Launch(inst, e.cpu, spec)
	if err != nil {
		return nil, err
	}
	return run, nil
}

// newInstance is an instance of em with its module's code, not yet set up.
func (e *Engine) newInstance(ctx context.Context, em engine.Module) (*instance, *module, error) {
	m, ok := em.(*module)
	if !ok {
		return nil, nil, fmt.Errorf("%w: module was not prepared by the wasmtime engine", engine.ErrInstantiate)
	}
	c, err := e.load(ctx, m)
	if err != nil {
		return nil, nil, err
	}
	return &instance{code: c, codes: &e.codes}, m, nil
}

// load returns m's code as its artifact is now, for one more user
// (codes.put gives it back).
func (e *Engine) load(ctx context.Context, m *module) (*code, error) {
	// The artifact stays on disk from its check until it is loaded.
	release := e.disk.Use(m.key)
	defer release()
	a, err := e.ready(ctx, m)
	if err != nil {
		return nil, err
	}
	c, err := e.codes.get(m, a, e.runEngine(a))
	if err != nil && a.quick {
		// The optimised artifact came, and the quick one went, meanwhile.
		if a, err = e.ready(ctx, m); err == nil {
			c, err = e.codes.get(m, a, e.runEngine(a))
		}
	}
	return c, err
}

// runEngine is the Engine a's code runs in: an artifact loads only into
// an Engine of the settings that compiled it.
func (e *Engine) runEngine(a artifact) *runEngine {
	if a.quick {
		return e.quick
	}
	return e.compiler
}

// instance is the engine.Guest of one run: a Store of its own, in the
// Engine its module's code was loaded into, which it shares with every
// other instance of that Engine; it ends its own wasm only (kill).
type instance struct {
	code  *code
	codes *codes // code goes back there when released
	store *wt.Store
	kill  killSwitch
	fiber *fiber // its wasm (async.go)

	poller *engine.Poller // poll_oneoff's (async.go); Interrupt wakes it
	stdout *pipeOutput    // a handler run's stdout (pipeout.go); nil: none
	stderr *pipeOutput    // and its stderr
}

var _ engine.Mobile = (*instance)(nil)

func (i *instance) setup(m *module, spec engine.Spec) error {
	wasi, err := i.wasiConfig(spec, engine.Stdio{Env: spec.Env, Stdout: spec.Stdout, Stderr: spec.Stderr})
	if err != nil {
		return err
	}
	return i.instantiate(m, spec, wasi)
}

// wasiConfig is the WASI context of a run of spec with io.
func (i *instance) wasiConfig(spec engine.Spec, io engine.Stdio) (*wt.WasiConfig, error) {
	wasi, err := i.wasiBase(spec)
	if err != nil {
		return nil, err
	}
	if err := i.wasiStdio(wasi, io); err != nil {
		wasi.Close()
		return nil, err
	}
	return wasi, nil
}

// wasiBase is the WASI context of a run of spec without its environment
// and stdio (wasiStdio), and the instance's poller.
func (i *instance) wasiBase(spec engine.Spec) (*wt.WasiConfig, error) {
	wasi := wt.NewWasiConfig()
	if len(spec.Args) > 0 {
		wasi.SetArgv(spec.Args)
	}
	for _, p := range spec.Preopens {
		if err := engine.CheckPreopen(p); err != nil {
			wasi.Close()
			return nil, err
		}
		dp, fp := wt.DIR_READ, wt.FILE_READ
		if !p.ReadOnly {
			dp, fp = wt.DIR_READ|wt.DIR_WRITE, wt.FILE_READ|wt.FILE_WRITE
		}
		if err := wasi.PreopenDir(p.HostPath, p.GuestPath, dp, fp); err != nil {
			wasi.Close()
			return nil, fmt.Errorf("%w: preopen %s at %s: %v", engine.ErrInstantiate, p.HostPath, p.GuestPath, err)
		}
	}
	// The monotonic clock a module reads (clock_time_get) counts from the
	// creation of its WASI context, within microseconds of now: absolute
	// monotonic deadlines are taken against it.
	p, err := engine.NewPoller(time.Now())
	if err != nil {
		wasi.Close()
		return nil, err
	}
	i.poller = p
	return wasi, nil
}

// wasiStdio gives wasi io's environment and streams (nil ones: none).
func (i *instance) wasiStdio(wasi *wt.WasiConfig, io engine.Stdio) error {
	setEnv(wasi, engine.Environ(io.Env))
	if b, ok := inMemory(io.Stdin); ok {
		setStdinBytes(first(wasi), b)
	} else if err := i.input(io.Stdin, wasi.SetStdinFile); err != nil {
		return err
	}
	setOutput(wasi, false, io.Stdout)
	setOutput(wasi, true, io.Stderr)
	return nil
}

// instantiate instantiates m in a new store with the WASI context wasi,
// which a run may replace (handler.go: wasmtime's WASI functions find it
// in the store when they are called).
func (i *instance) instantiate(m *module, spec engine.Spec, wasi *wt.WasiConfig) error {
	i.store = wt.NewStore(i.code.rt.engine)
	kill, err := watch(i.store)
	if err != nil {
		wasi.Close()
		return fmt.Errorf("%w: %v", engine.ErrInstantiate, err)
	}
	i.kill = kill
	if spec.MemoryLimitBytes > 0 {
		i.store.Limiter(spec.MemoryLimitBytes, engine.TableElements(spec.MemoryLimitBytes), -1, -1, -1)
	}
	i.store.SetWasi(wasi)
	i.fiber = newFiber(i.store)
	if err := i.fiber.instantiate(i.code.rt.linker, i.code.module, i.code.instancePre(), i.poller); err != nil {
		return engine.InstantiateError(m.digest, err)
	}
	if !i.fiber.hasStart() {
		return engine.CheckWASI(m.digest, nil, false)
	}
	return nil
}

// inMemory is what src, a reader of bytes in memory (a handler's request
// body: a bytes.Reader), has left to read, which WASI's stdin can be
// given whole (no pipe, no goroutine).
func inMemory(src io.Reader) ([]byte, bool) {
	r, ok := src.(interface {
		io.Reader
		Len() int
	})
	if !ok || r.Len() < 0 {
		return nil, false
	}
	b := make([]byte, r.Len())
	n, _ := io.ReadFull(r, b)
	return b[:n], true
}

// input connects WASI's stdin to src through a pipe, which a goroutine
// fills: WASI takes only a path, so the pipe's read end is named through
// /proc/self/fd (WASI opens its own descriptor; ours is closed at once).
// It ends when src does or when the store closes WASI's descriptor. nil:
// no stdin, which a module reads as at its end, and holds no descriptor.
func (i *instance) input(src io.Reader, set func(string) error) error {
	if src == nil {
		return nil
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("%w: input pipe: %v", engine.ErrInstantiate, err)
	}
	err = set(fmt.Sprintf("/proc/self/fd/%d", r.Fd()))
	r.Close()
	if err != nil {
		w.Close()
		return fmt.Errorf("%w: connect input: %v", engine.ErrInstantiate, err)
	}
	go func() {
		io.Copy(w, src)
		w.Close()
	}()
	return nil
}

// Call implements engine.Guest.
func (i *instance) Call() error {
	return i.fiber.call(i.poller)
}

// Poller implements engine.Mobile: the instance's wasm is on a fiber of
// its own, off the thread while poll_oneoff waits (async.go).
func (i *instance) Poller() *engine.Poller { return i.poller }

// Exit implements engine.Guest: wasmtime reports proc_exit, 0 included,
// as an error with an exit status.
func (i *instance) Exit(err error) (int32, bool) {
	var re *runError
	if errors.As(err, &re) && re.exited {
		return re.status, true
	}
	return 0, false
}

// Failure implements engine.Guest.
func (i *instance) Failure(err error) string {
	var re *runError
	if errors.As(err, &re) && re.trap {
		return "wasm trap: " + trapMessage(re)
	}
	return "the module failed: " + engine.FirstLine(err.Error())
}

// trapNames follows the C API's wasmtime_trap_code_enum, which has
// ALWAYS_TRAP_ADAPTER between INTERRUPT and OUT_OF_FUEL: the Go constants
// after Interrupt are off by one, so the numbers are used here.
var trapNames = []string{
	"stack overflow", "out of bounds memory access", "misaligned memory access",
	"undefined element: out of bounds table access", "uninitialized element",
	"indirect call type mismatch", "integer overflow", "integer divide by zero",
	"invalid conversion to integer", "unreachable code reached", "interrupt",
	"degenerate component adapter called", "all fuel consumed",
	"atomic wait on non-shared memory", "null reference", "array out of bounds",
	"allocation too large", "cast failure", "cannot enter component instance",
	"async-lifted export failed to produce a result", "disabled opcode",
}

// trapMessage is the trap's kind and its innermost frame.
func trapMessage(t *runError) string {
	msg := "unknown trap"
	switch {
	case t.code >= 0 && t.code < len(trapNames):
		msg = trapNames[t.code]
	case t.code >= 0:
		msg = fmt.Sprintf("trap code %d", t.code)
	}
	return msg + t.frame
}

// Memory implements engine.Guest. wasmtime reserves linear memory up
// front and grows it in place, so this reads its current length, at worst
// a growth late.
func (i *instance) Memory() int64 {
	if i.fiber == nil {
		return 0
	}
	return i.fiber.memorySize()
}

// Interrupt implements engine.Guest: the kill switch, with the epoch
// advanced, ends running wasm, the poller a wait in poll_oneoff. The other
// stores of the Engine see the epoch pass and go on.
func (i *instance) Interrupt() {
	i.kill.set()
	i.code.rt.engine.IncrementEpoch()
	i.poller.Wake()
}

// Close implements engine.Guest.
func (i *instance) Close() { i.release() }

// release frees the wasmtime objects; the store's close frees the output
// sinks' handles (output.go) and the kill switch
// (engine.Run interrupts only before Close), and ends a handler run's
// stdout (its write end of the pipe), whose drain it waits for.
func (i *instance) release() {
	if i.store != nil {
		i.store.Close()
	}
	if i.fiber != nil {
		i.fiber.free()
	}
	if i.stdout != nil {
		i.stdout.wait() // the store's close closed the run's write end
	}
	if i.stderr != nil {
		i.stderr.wait()
	}
	i.codes.put(i.code)
	if i.poller != nil {
		i.poller.Close()
	}
}
