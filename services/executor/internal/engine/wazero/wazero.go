// Package wazero is the engine.Engine of wazero, the pure-Go WebAssembly
// runtime, for hosts that wasmtime-go ships no library for. It compiles
// modules into wazero's compilation cache on disk, shared through the
// registry cache (engine.Artifacts), and runs each instance as an
// engine.Run.
//
// It owns its cache directory (<dir>/wazero-<version>/: wazero's entries,
// and this package's sums/ and index/) and nothing else on disk; it must
// not know of instance ids, states or NATS.
//
// What is wazero's here:
//   - Sums (cache.go): every cache entry is hashed against its sum before
//     wazero reads the cache (once per process, and when it changes on
//     disk); wazero checks a CRC of an entry's code, not its function
//     offsets, and fails on a corrupt entry rather than compiling again.
//   - Sharing: a module's entry is one file named by wazero's key (module,
//     version, CPU features), shared as a bundle of its name and bytes; one
//     wazero ignores or cannot load is rejected and replaced.
//   - The cache on disk is bounded by total bytes (Config.MaxCacheBytes,
//     engine.NewDiskCache): a unit is an entry, its sum and the index files
//     naming it, the module's index file's mtime its last use. wazero opens
//     an entry only inside CompileModule, reads it whole and never again,
//     and writes one through a temporary file and a rename, so removing one
//     while a Runtime runs is safe for wazero; it is trimmed only while
//     nothing of ours compiles or loads (cache.go: trim), since the sums
//     and the slot's "new entries are this compile's" rely on it. A module
//     whose entry went, and whose compiled module left memory, is compiled
//     again.
//   - Memory limits are per Runtime (runtimes.go): one Runtime per distinct
//     limit over one CompilationCache, idle ones closed least recently used
//     first (Config.MaxRuntimes, MaxCompiled). Tables are capped in the
//     module's bytes (tables.go); linear memory lives outside the Go heap
//     (memory.go), and starts as the image of a module's data segments,
//     mapped rather than copied by wazero (data.go).
//   - Interpret first (Config.InterpretFirst, interpret.go): a module
//     with no compiled code yet starts on wazero's interpreter, in a
//     Runtime of its own per limit over the same CompilationCache, while
//     it compiles in the background; Prepare then checks its imports from
//     its sections (sections.go) rather than decode it.
//   - Preopens are confined (fs.go): no symlink leads out of one, and an
//     instance holds at most engine.MaxOpenFiles files open.
//   - A kill cancels the instance's context: wasm stops at its next
//     function entry or loop, and a WASI sleep ends (poll_oneoff is the
//     engine's Poller, which the kill wakes).
//   - Output goes straight from the module's thread to the sinks, in
//     writes of at most maxSinkWrite.
//   - Listeners (sockets.go) are wazero's experimental/sock, opened by
//     InstantiateModule on a thread in the spec's network namespace; they
//     follow the preopened directories (fd 3 + len(Preopens)). A listener
//     handed over already open takes the place of a loopback placeholder
//     wazero opened, in its file table (adoptHanded). poll_oneoff
//     and fd_close are the engine's, which reach the host socket behind a
//     module's fd in wazero's file table by reflection (checked at New).
//
// Usage:
//
//	e, err := wazero.New(wazero.Config{CacheDir: dir, CPU: limiter, Shared: store})
//	m, err := e.Prepare(ctx, digest, wasmPath)
//	inst, err := e.Start(ctx, m, spec)
package wazero

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	wz "github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/experimental/sock"
	"github.com/tetratelabs/wazero/sys"

	"github.com/wasmlet/wasmlet/services/executor/internal/diskcache"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

const (
	name            = "wazero"
	fallbackVersion = "1.12.0"
	modulePath      = "github.com/tetratelabs/wazero"

	pageSize = 64 << 10
	maxPages = 65536
)

// Config configures the engine.
type Config struct {
	// CacheDir keeps compiled modules. Required.
	CacheDir string
	// CPU enforces Spec.CPULimitMillis; nil runs every instance unthrottled.
	CPU engine.ThreadLimiter
	// Shared, if set, shares compiled modules with other executors of the
	// same engine key (see the package doc).
	Shared engine.ArtifactStore
	// Logger, if set, receives warnings about shared artifacts.
	Logger *slog.Logger
	// MaxRuntimes bounds the idle Runtimes kept, one per distinct memory
	// limit (default 16).
	MaxRuntimes int
	// MaxCompiled bounds the idle compiled modules kept, over all
	// Runtimes (default 64).
	MaxCompiled int
	// MaxCacheBytes bounds the compiled modules kept in CacheDir, least
	// recently used removed first (default engine.DefaultMaxCacheBytes).
	MaxCacheBytes int64
	// InterpretFirst starts a module that has no compiled code yet on
	// wazero's interpreter and compiles it in the background for the
	// instances started after (interpret.go).
	InterpretFirst bool
}

const (
	defaultMaxRuntimes = 16
	defaultMaxCompiled = 64
)

// Engine is the wazero engine.Engine.
type Engine struct {
	engine.Base
	root  string // wazero's cache root
	sums  string // our sha256 per entry
	index string // the entry of each module, by module digest
	cache wz.CompilationCache
	cpu   engine.ThreadLimiter
	// placeholder is the address of the listeners wazero opens in the
	// place of handed ones (adoptHanded).
	placeholder string

	slot    engine.Slots     // compiles that miss the cache: one at a time, each on every core, so the entries new after one are its own
	flights engine.KeyedLock // one compile of the same bytes at a time

	cacheMu  sync.Mutex                  // guards verified, the cache's entries, sums and index
	verified map[string]engine.FileStamp // entries hashed against their sums, as they were then
	disk     *diskcache.Cache            // bounds the cache on disk (trim)

	maxRuntimes, maxCompiled int

	behind behind // background compiles (Config.InterpretFirst)

	mu        sync.Mutex         // guards the fields below and those of runtimes and compiled
	runtimes  map[rtKey]*runtime // by memory limit in pages and kind
	ncompiled int                // over all runtimes
	clock     uint64             // the LRU's: ticks at each use
}

var _ engine.Engine = (*Engine)(nil)

// New returns an engine caching compiled modules under cfg.CacheDir.
func New(cfg Config) (*Engine, error) {
	if cfg.CacheDir == "" {
		return nil, errors.New("wazero engine: CacheDir is required")
	}
	b := engine.NewBase(engine.BaseConfig{Name: name, ModulePath: modulePath, FallbackVersion: fallbackVersion, ConfigKey: configKey, Shared: cfg.Shared, Logger: cfg.Logger})
	root := filepath.Join(cfg.CacheDir, name+"-"+b.Version())
	sums := filepath.Join(root, "sums")
	index := filepath.Join(root, "index")
	for _, d := range []string{sums, index} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("wazero engine: create cache dir: %w", err)
		}
	}
	placeholder := placeholderHost()
	if err := checkFiles(context.Background(), placeholder); err != nil {
		return nil, fmt.Errorf("wazero engine: this build of wazero does not lay out module files as the engine's poll_oneoff and fd_close expect (see sockets.go): %w", err)
	}
	cache, err := wz.NewCompilationCacheWithDir(root)
	if err != nil {
		return nil, fmt.Errorf("wazero engine: compilation cache: %w", err)
	}
	e := &Engine{
		Base:        b,
		root:        root,
		sums:        sums,
		index:       index,
		cache:       cache,
		cpu:         cfg.CPU,
		placeholder: placeholder,
		slot:        engine.NewSlots(1),
		verified:    map[string]engine.FileStamp{},
		runtimes:    map[rtKey]*runtime{},
		behind:      newBehind(cfg.InterpretFirst, cfg.Logger),
		maxRuntimes: cmp.Or(max(cfg.MaxRuntimes, 0), defaultMaxRuntimes),
		maxCompiled: cmp.Or(max(cfg.MaxCompiled, 0), defaultMaxCompiled),
	}
	disk, err := engine.NewDiskCache(cfg.MaxCacheBytes, e.units, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("wazero engine: %w", err)
	}
	e.disk = disk
	// A bound lowered since the last run holds from the start.
	if _, err := e.disk.Trim(); err != nil {
		return nil, fmt.Errorf("wazero engine: bound the compilation cache: %w", err)
	}
	return e, nil
}

// module is a prepared module.
type module struct {
	digest   string
	wasmPath string
	// sharedTried: a start asked the shared store for its entry already
	// (interpret.go: loadShared); its compile behind does not again.
	sharedTried atomic.Bool
}

func (m *module) Digest() string { return m.digest }

// Prepare implements engine.Engine.
func (e *Engine) Prepare(ctx context.Context, digest, wasmPath string) (engine.Module, error) {
	if _, err := engine.DigestHex(digest); err != nil {
		return nil, err
	}
	m := &module{digest: digest, wasmPath: wasmPath}
	if checked, err := e.checkSections(m); checked {
		return m, err
	}
	r, c, _, err := e.code(ctx, m, maxPages, true)
	if err != nil {
		return nil, err
	}
	defer e.release(r, c)
	if err := checkWASI(c.cm, digest); err != nil {
		return nil, err
	}
	return m, nil
}

// Start implements engine.Engine.
func (e *Engine) Start(ctx context.Context, em engine.Module, spec engine.Spec) (engine.Instance, error) {
	i := &instance{}
	if err := e.instantiate(ctx, em, spec, i, false); err != nil {
		return nil, err
	}
	return i.launch(spec, e.cpu)
}

// instantiate instantiates em with spec into i: for Start, with its env,
// output and listeners; for a Pending (pending set), with none of them:
// the env and stdio are i.env and i.sys, given at its Run.
func (e *Engine) instantiate(ctx context.Context, em engine.Module, spec engine.Spec, i *instance, pending bool) error {
	m, ok := em.(*module)
	if !ok {
		return fmt.Errorf("%w: module was not prepared by the wazero engine", engine.ErrInstantiate)
	}
	// A server (an instance with listeners) runs for long: it waits for
	// its compile rather than serve interpreted all its life.
	r, c, interpreted, err := e.code(ctx, m, pages(spec.MemoryLimitBytes), pending || len(spec.Listeners) == 0)
	if err != nil {
		return err
	}
	// The runtime and compiled module stay in use until the instance is
	// closed (at the end of its run), or Start fails.
	released := false
	defer func() {
		if !released {
			e.release(r, c)
		}
	}()
	// The module's monotonic clock reads 0 now (WithNanotime below), so
	// that the poller takes absolute deadlines against the same zero.
	monoZero := time.Now()
	poller, err := engine.NewPoller(monoZero)
	if err != nil {
		return err
	}
	i.socks.poller = poller
	// A handler's instance takes nothing of the caller's context (a
	// request's, or none): what wazero finds in it, a sock config, it
	// would write into the config that instances share (guestSys).
	parent := context.Background()
	if !pending {
		parent = context.WithoutCancel(ctx)
	}
	i.values = instanceValues{Context: parent, i: i}
	i.ctx, i.cancel = context.WithCancel(&i.values)
	listeners := spec.Listeners
	if pending && len(spec.Preopens) == 0 {
		// Handler mode: a config of c's, kept for the next instance.
		i.sys = c.guestSys(spec.Args)
	} else {
		fsc, err := preopens(spec.Preopens)
		if err != nil {
			i.end()
			return err
		}
		i.sys = newGuestSys(spec.Args, fsc, nil)
	}
	i.sys.monoZero = monoZero
	if pending {
		listeners = nil // the handler's: its env and stdio come at its run
	} else {
		i.sys.io.s = engine.Stdio{Stdout: spec.Stdout, Stderr: spec.Stderr}
		// Listeners follow stdio and the preopened directories.
		i.env.vars = engine.Environ(append(slices.Clone(spec.Env), engine.ListenEnv(listeners, 3+len(spec.Preopens))...))
	}
	mc := i.sys.mc
	lm := &i.memory
	lm.start, lm.copySmall = c.data, pending
	i.socks.memory = lm
	mctx := experimental.WithMemoryAllocator(i.ctx, lm)
	var mod api.Module
	if spec.NetNS == "" {
		// No closure to enter a namespace with: a handler's instance.
		mod, err = r.rt.InstantiateModule(withListeners(mctx, listeners, e.placeholder), c.cm, mc)
	} else {
		err = engine.InNetNS(spec.NetNS, func() error {
			// wazero opens the listeners here, on this thread, with net.Listen.
			var err error
			mod, err = r.rt.InstantiateModule(withListeners(mctx, listeners, e.placeholder), c.cm, mc)
			return err
		})
	}
	if err != nil {
		i.end()
		var op *net.OpError
		if errors.Is(err, engine.ErrListen) || errors.As(err, &op) && op.Op == "listen" {
			return engine.ListenError(listeners, spec.NetNS, err)
		}
		return engine.InstantiateError(m.digest, err)
	}
	if err := adoptHanded(&i.socks, mod, 3+len(spec.Preopens), listeners); err != nil {
		mod.Close(i.ctx)
		i.end()
		return err
	}
	if err := i.socks.holdListeners(mod, 3+len(spec.Preopens), len(listeners)); err != nil {
		mod.Close(i.ctx)
		i.end()
		return fmt.Errorf("%w: %v", engine.ErrListen, err)
	}
	if lm.m != nil && c.data == nil {
		// Its memory as instantiated: the image, if it is the first.
		lm.img = c.image(lm.m.mem[:lm.m.open], e.root)
	}
	start := mod.ExportedFunction("_start")
	if start == nil {
		mod.Close(i.ctx)
		i.end()
		return engine.CheckWASI(m.digest, nil, false)
	}
	// From here the instance owns the runtime and compiled module: it
	// releases them when it is closed.
	released = true
	if interpreted {
		e.compileBehind(m, r.pages)
	}
	i.mod, i.mem, i.start = mod, mod.ExportedMemory("memory"), start
	i.e, i.r, i.c = e, r, c
	return nil
}

// preopens is the FSConfig of ps, confined (fs.go), their open files
// counted together.
func preopens(ps []engine.Preopen) (wz.FSConfig, error) {
	fsc := wz.NewFSConfig()
	open := new(atomic.Int32)
	for _, p := range ps {
		if err := engine.CheckPreopen(p); err != nil {
			return nil, err
		}
		fsc = mountDir(fsc, p.HostPath, p.GuestPath, p.ReadOnly, open)
	}
	return fsc, nil
}

// launch runs i as an engine.Run.
func (i *instance) launch(spec engine.Spec, cpu engine.ThreadLimiter) (engine.Instance, error) {
	run, err := engine.Launch(i, cpu, spec)
	if err != nil {
		return nil, err
	}
	return run, nil
}

// Listeners implements engine.SocketEngine.
func (e *Engine) Listeners() bool { return true }

// withListeners has InstantiateModule open ls (experimental/sock).
// One handed over (engine.Listener.File) gets a placeholder on
// placeholder, port 0, for adoptHanded to replace.
func withListeners(ctx context.Context, ls []engine.Listener, placeholder string) context.Context {
	if len(ls) == 0 {
		return ctx
	}
	cfg := sock.NewConfig()
	for _, l := range ls {
		host := l.Host
		if strings.Contains(host, ":") {
			host = "[" + host + "]" // wazero joins host and port with a colon
		}
		port := l.Port
		if l.File != nil {
			// A placeholder, replaced by the handed socket (adoptHanded).
			host, port = placeholder, 0
		}
		cfg = cfg.WithTCPListener(host, port)
	}
	return sock.WithConfig(ctx, cfg)
}

// maxSinkWrite bounds what a sink is given in one Write. wazero hands
// fd_write's iovecs over as views of linear memory, up to 4 GiB each; a
// sink given them in pieces handles output a bounded piece at a time, as
// with wasmtime, whose pipe is read 32 KiB at a time.
const maxSinkWrite = 64 << 10

// writeChunked writes p to w at most maxSinkWrite bytes at a time; to
// nothing if w is nil.
func writeChunked(w io.Writer, p []byte) (int, error) {
	if w == nil {
		return len(p), nil
	}
	n := 0
	for len(p) > 0 {
		k, err := w.Write(p[:min(len(p), maxSinkWrite)])
		n += k
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}

// instance is the engine.Guest of one run. Output goes straight from
// the module's thread to the sinks, so all of it has been delivered when
// _start returns. What its run needs of the engine's own WASI functions
// (poll_oneoff, fd_close, environ_get) is in it, by value: one
// allocation per instance, where handler mode makes one per request.
type instance struct {
	ctx    context.Context    // its calls': values, and cancelled by Interrupt
	cancel context.CancelFunc // Interrupt: stops wasm at its next function entry or loop
	values instanceValues     // ctx's parent
	ended  sync.Once          // end's
	mod    api.Module
	mem    api.Memory // the exported memory, if any, taken at start: a module that exits drops its export
	start  api.Function
	socks  sockets
	env    environ      // environ_get's (handler.go)
	sys    *guestSys    // handler mode's stdio and clock (handler.go)
	memory linearMemory // its linear memory (memory.go)

	// e, r and c: its use of the runtime and compiled module, ended at
	// Close.
	e *Engine
	r *runtime
	c *compiled
}

// instanceValues is the parent of an instance's context: the engine's
// WASI functions find the instance in it (instanceOf).
type instanceValues struct {
	context.Context
	i *instance
}

type instanceKey struct{}

func (v *instanceValues) Value(key any) any {
	if _, ok := key.(instanceKey); ok {
		return v.i
	}
	return v.Context.Value(key)
}

// instanceOf is the instance whose call ctx is, or nil.
func instanceOf(ctx context.Context) *instance {
	i, _ := ctx.Value(instanceKey{}).(*instance)
	return i
}

// end cancels the instance's context, then closes its poller: the
// context ends once, after its last poll (the run has ended, or it never
// started).
func (i *instance) end() {
	i.cancel()
	i.ended.Do(i.socks.poller.Close)
}

var _ engine.Guest = (*instance)(nil)

// Call implements engine.Guest.
func (i *instance) Call() error {
	_, err := i.start.Call(i.ctx)
	return err
}

// Exit implements engine.Guest.
func (i *instance) Exit(err error) (int32, bool) {
	var exit *sys.ExitError
	if errors.As(err, &exit) {
		return int32(exit.ExitCode()), true
	}
	return 0, false
}

// Failure implements engine.Guest: wazero's "wasm error: <kind>\nwasm
// stack trace:\n\t<frame>..." becomes "wasm trap: <kind> in <innermost
// frame>".
func (i *instance) Failure(err error) string {
	lines := strings.Split(err.Error(), "\n")
	kind, ok := strings.CutPrefix(strings.TrimSpace(lines[0]), "wasm error: ")
	if !ok {
		return "the module failed: " + strings.TrimSpace(lines[0])
	}
	msg := "wasm trap: " + kind
	for j, l := range lines {
		if strings.TrimSpace(l) == "wasm stack trace:" && j+1 < len(lines) {
			msg += " in " + strings.TrimSpace(lines[j+1])
			break
		}
	}
	return msg
}

// Memory implements engine.Guest: a word-sized read of a length the
// module may be growing, at worst a growth late.
func (i *instance) Memory() int64 {
	if i.mem == nil {
		return 0
	}
	return int64(i.mem.Size())
}

// Poller implements engine.Mobile: a wazero instance waiting in
// poll_oneoff leaves its thread (nothing of wazero is on its stack).
func (i *instance) Poller() *engine.Poller { return i.socks.poller }

// Interrupt implements engine.Guest.
func (i *instance) Interrupt() {
	i.socks.poller.Wake()
	i.end()
	i.socks.closeListeners()
}

// Close implements engine.Guest.
func (i *instance) Close() {
	// Connections come from sock_accept on a listener: an instance without
	// one has none, and the walk of its file table (reflection, 256 fds
	// past the last) was half the CPU of a handler's run.
	if len(i.socks.listeners) > 0 {
		if f, err := i.socks.filesOf(i.mod); err == nil {
			f.closeConns()
		}
	}
	i.mod.Close(context.Background())
	i.e.release(i.r, i.c)
	i.end()
	i.sys.put()
}
