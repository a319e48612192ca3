// Package instance is the executor's instance lifecycle: Manager
// implements instances.Runtime in process. It creates instances from
// modules of the module store, starts, stops, deletes and lists them, and
// keeps each one's state under declared transitions (see transitions),
// recording every change in the journal, from which watchers (the gRPC
// server's WatchInstances, the NATS fan-out of package eventpub) read.
//
// It owns the instances and their lifecycles. It must not speak of pods
// or restart policies (the node agent's), run wasm itself (the engine's),
// keep module files (package modules), or choose log subjects (they come
// with the spec). It holds each instance's module file in use
// (modules.Store.Use) from Create until the instance is deleted, so the
// bound of the module files never removes one an engine may read again.
// Listeners handed over for an instance (Config.Handed) are taken at its
// Create and given to the engine at its Start.
//
// Stopping: WASI preview 1 has no signals, so there is no way to ask a
// module to end. Stop waits up to the grace period for the module to end
// by itself, then kills it.
//
// Usage:
//
//	m, _ := instance.New(instance.Config{ExecutorID: id, Engine: eng, Cache: cache, ModuleDir: dir})
//	var rt instances.Runtime = m
//	in, err := rt.Create(ctx, "i1", spec, true)
//	in, err = rt.Stop(ctx, "i1", 30*time.Second)
//	m.Shutdown(ctx)
package instance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/eventpub"
	"github.com/wasmlet/wasmlet/services/executor/internal/journal"
	"github.com/wasmlet/wasmlet/services/executor/internal/logs"
	"github.com/wasmlet/wasmlet/services/executor/internal/modules"
	"github.com/wasmlet/wasmlet/services/executor/internal/outbox"
	"github.com/wasmlet/wasmlet/services/executor/internal/wagi"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// Config configures a Manager.
type Config struct {
	// ExecutorID names this executor in events. Required.
	ExecutorID string
	Engine     engine.Engine // required
	Cache      regcache.Cache
	// ModuleDir keeps fetched modules. Required.
	ModuleDir string
	// JetStream, when set, receives logs and instance events.
	JetStream jetstream.JetStream
	// MaxInstances bounds the instances held at once (default 1000).
	MaxInstances int
	// DefaultMemoryLimit applies when a spec sets none (default 256 MiB).
	DefaultMemoryLimit int64
	// History is how many events are kept for watchers (default 10000).
	History int
	// LogOutbox bounds each instance's log queue; EventOutbox the events'.
	LogOutbox, EventOutbox outbox.Config
	// LogFlush bounds the wait for an ended instance's last log records
	// before its end is recorded (default 2s).
	LogFlush time.Duration
	// MaxModuleBytes bounds a fetched module (default 256 MiB).
	MaxModuleBytes int64
	// ModuleCacheBytes bounds the module files in ModuleDir, least
	// recently used removed first (default 4 GiB; not below
	// MaxModuleBytes). The module of an instance is kept from its Create
	// until it is deleted; a module removed is fetched again at its next
	// Create.
	ModuleCacheBytes int64
	// MountRoots are the directories under which every preopen's host
	// path must lie (the node agent's pod directory root and its allowed
	// hostPath roots); a preopen elsewhere is refused, and with none every
	// preopen is. Below its root a preopen is opened without following a
	// symlink, at every start.
	MountRoots []string
	// CPULimitsEnforced says whether the engine holds instances to their
	// CPU limits, and CPULimitsWords how (default "not enforced"); Info
	// reports them, as it reports Confinement, the process's walls.
	CPULimitsEnforced bool
	CPULimitsWords    string
	Confinement       instances.Confinement
	// Handed holds the listeners handed over for instances (package
	// handed, the executor's --listener-socket); nil: this executor takes
	// none, and a spec with HandedListeners is refused (ErrUnsupported).
	Handed HandedListeners
	// Handlers bounds each instance in handler mode (Spec.Handler; package
	// wagi); zero values take wagi's defaults.
	Handlers wagi.Config
	Logger   *slog.Logger
	Now      func() time.Time
}

// HandedListeners gives the listening sockets handed over for an
// instance before its Create (package handed implements it).
type HandedListeners interface {
	// Take removes and returns those handed over for id, by name; the
	// caller closes them. ok is false when there are none.
	Take(id string) (files map[string]*os.File, ok bool)
}

// Manager holds the instances. Safe for concurrent use.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	modules *modules.Store
	journal *journal.Journal
	pub     *eventpub.Publisher // nil without JetStream

	mu        sync.Mutex
	instances map[string]*record
	byLabel   labelIndex      // instances, by each of their labels
	reserved  map[string]bool // ids being created

	metrics metrics
}

var _ instances.Runtime = (*Manager)(nil)

type record struct {
	snap     instances.Instance
	mod      engine.Module
	run      engine.Instance
	shipper  *logs.Shipper
	dirs     []*os.File    // the preopens, open while the instance runs
	handed   []*os.File    // the handed-over listeners, in spec order, from Create until the engine has its own (Start) or Delete
	finished chan struct{} // closed once the final state is recorded
	stopMsg  string        // why it was killed, when by Stop
	// releaseModule ends the instance's use of its module file (the
	// engine reads it again whenever it compiles the module anew, at a
	// Start), at Delete.
	releaseModule func()
}

// New returns a Manager.
func New(cfg Config) (*Manager, error) {
	if cfg.ExecutorID == "" || cfg.Engine == nil || cfg.Cache == nil || cfg.ModuleDir == "" {
		return nil, errors.New("instance manager: ExecutorID, Engine, Cache and ModuleDir are required")
	}
	if cfg.MaxInstances <= 0 {
		cfg.MaxInstances = 1000
	}
	if cfg.DefaultMemoryLimit <= 0 {
		cfg.DefaultMemoryLimit = 256 << 20
	}
	if cfg.History <= 0 {
		cfg.History = 10000
	}
	if cfg.LogFlush <= 0 {
		cfg.LogFlush = 2 * time.Second
	}
	if cfg.CPULimitsWords == "" {
		cfg.CPULimitsWords = "not enforced"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	store, err := modules.New(modules.Config{Cache: cfg.Cache, Dir: cfg.ModuleDir, MaxBytes: cfg.MaxModuleBytes, MaxDiskBytes: cfg.ModuleCacheBytes, Logger: cfg.Logger})
	if err != nil {
		return nil, fmt.Errorf("instance manager: %w", err)
	}
	m := &Manager{
		cfg:       cfg,
		log:       cfg.Logger,
		modules:   store,
		journal:   journal.New(cfg.History),
		instances: map[string]*record{},
		byLabel:   labelIndex{},
		reserved:  map[string]bool{},
		metrics:   newMetrics(),
	}
	if cfg.JetStream != nil {
		m.pub = eventpub.New(eventpub.Config{ExecutorID: cfg.ExecutorID, Journal: m.journal, JetStream: cfg.JetStream, Outbox: cfg.EventOutbox, Logger: cfg.Logger})
	}
	return m, nil
}

// Count is how many instances the manager holds.
func (m *Manager) Count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.instances)
}

// Info implements instances.Runtime.
func (m *Manager) Info(context.Context) (instances.Info, error) {
	return instances.Info{
		ExecutorID:        m.cfg.ExecutorID,
		Engine:            m.cfg.Engine.Name(),
		Version:           m.cfg.Engine.Version(),
		OS:                runtime.GOOS,
		Arch:              runtime.GOARCH,
		MaxInstances:      m.cfg.MaxInstances,
		Instances:         m.Count(),
		CPULimitsEnforced: m.cfg.CPULimitsEnforced,
		CPULimitsWords:    m.cfg.CPULimitsWords,
		Confinement:       m.cfg.Confinement,
		Listeners:         canListen(m.cfg.Engine),
		ListenerHandoff:   m.cfg.Handed != nil && (canListen(m.cfg.Engine) || canHandle(m.cfg.Engine)),
		HandlerModes:      handlerModes(m.cfg.Engine),
	}, nil
}

// canHandle reports whether e runs modules in handler mode (package wagi).
func canHandle(e engine.Engine) bool {
	_, ok := e.(engine.Instantiator)
	return ok
}

// handlerModes are the Spec.Handler modes e runs.
func handlerModes(e engine.Engine) []instances.HandlerMode {
	if canHandle(e) {
		return []instances.HandlerMode{instances.HandlerWAGI}
	}
	return nil
}

// canListen reports whether e hands listeners to modules.
func canListen(e engine.Engine) bool {
	s, ok := e.(engine.SocketEngine)
	return ok && s.Listeners()
}

// Create implements instances.Runtime: it fetches and prepares the module
// and records the instance as CREATED, then starts it when start is set. A
// module that cannot be fetched or prepared gives an instance in FAILED
// (not an error), whose reason and message say why. Errors:
// ErrInvalidArgument, ErrPermissionDenied, ErrAlreadyExists,
// ErrResourceExhausted, and ErrUnsupported for listeners on an engine that
// cannot hand them over or handed listeners on an executor that takes
// none. With HandedListeners it takes the listeners handed over for id;
// any missing fails the instance (ReasonListenFailed).
func (m *Manager) Create(ctx context.Context, id string, spec instances.Spec, start bool) (instances.Instance, error) {
	if err := validate(id, spec, m.cfg.MountRoots); err != nil {
		return instances.Instance{}, err
	}
	if spec.Handler != "" && !canHandle(m.cfg.Engine) {
		return instances.Instance{}, fmt.Errorf("%w: the %s engine does not run modules in handler mode %s; run the instance on an executor whose info lists it", instances.ErrUnsupported, m.cfg.Engine.Name(), spec.Handler)
	}
	// In handler mode the executor serves the listeners: the module gets none.
	if len(spec.Listeners) > 0 && spec.Handler == "" && !canListen(m.cfg.Engine) {
		return instances.Instance{}, fmt.Errorf("%w: the %s engine cannot hand a module a listening socket (it has no socket preopen); run instances with listeners on an executor of the wazero engine", instances.ErrUnsupported, m.cfg.Engine.Name())
	}
	if spec.HandedListeners && m.cfg.Handed == nil {
		return instances.Instance{}, fmt.Errorf("%w: this executor takes no handed-over listeners (it was started without --listener-socket); start it with one, or create the instance without HandedListeners for the executor to open them", instances.ErrUnsupported)
	}
	m.mu.Lock()
	if _, ok := m.instances[id]; ok || m.reserved[id] {
		m.mu.Unlock()
		return instances.Instance{}, fmt.Errorf("%w: %s", instances.ErrAlreadyExists, id)
	}
	if len(m.instances)+len(m.reserved) >= m.cfg.MaxInstances {
		m.mu.Unlock()
		return instances.Instance{}, fmt.Errorf("%w: this executor holds %d instances, its maximum; delete ended instances or raise --max-instances", instances.ErrResourceExhausted, m.cfg.MaxInstances)
	}
	m.reserved[id] = true
	m.mu.Unlock()

	rec := &record{
		snap:     instances.Instance{ID: id, Spec: spec, CreatedAt: m.cfg.Now()},
		finished: make(chan struct{}),
	}
	release := m.modules.Use(spec.Module.Digest)
	var mod engine.Module
	reason := instances.ReasonListenFailed
	handed, err := m.takeHanded(id, spec)
	if err == nil {
		if mod, reason, err = m.prepare(ctx, spec.Module); err != nil {
			closeAll(handed)
		}
	}

	m.mu.Lock()
	delete(m.reserved, id)
	m.instances[id] = rec
	m.byLabel.add(id, rec)
	if err != nil {
		release()
		m.transition(rec, instances.StateFailed, reason, err.Error())
		close(rec.finished)
		snap := rec.snap
		m.mu.Unlock()
		m.log.Warn("instance failed", "instance", id, "reason", reason, "error", err)
		return snap, nil
	}
	rec.mod, rec.releaseModule, rec.handed = mod, release, handed
	m.transition(rec, instances.StateCreated, ReasonCreated, "")
	snap := rec.snap
	m.mu.Unlock()
	m.log.Info("instance created", "instance", id, "module", spec.Module.Digest)
	if start {
		return m.Start(ctx, id)
	}
	return snap, nil
}

// takeHanded takes the listeners handed over for id, in the order of
// spec's, when spec says they were; the caller closes them. Those handed
// over that spec does not list are closed.
func (m *Manager) takeHanded(id string, spec instances.Spec) ([]*os.File, error) {
	if !spec.HandedListeners {
		return nil, nil
	}
	got, ok := m.cfg.Handed.Take(id)
	if !ok {
		return nil, fmt.Errorf("no listeners were handed over to the executor for instance %s: hand them over (package handoff, to the executor's --listener-socket) shortly before Create, which takes them; handed-over listeners that wait too long expire", id)
	}
	var out []*os.File
	var missing []string
	for _, l := range spec.Listeners {
		if f := got[l.FDName()]; f != nil {
			out = append(out, f)
			delete(got, l.FDName())
		} else {
			missing = append(missing, l.FDName())
		}
	}
	for _, f := range got {
		f.Close()
	}
	if len(missing) > 0 {
		closeAll(out)
		return nil, fmt.Errorf("listeners %q were not handed over to the executor for instance %s: hand over every listener of the spec, named by its LISTEN_FDNAMES name, in one hand-over", missing, id)
	}
	return out, nil
}

// prepare fetches the module into the module store and prepares it; on
// failure it gives the instance's reason.
func (m *Manager) prepare(ctx context.Context, mod instances.Module) (engine.Module, string, error) {
	path, err := m.modules.Fetch(ctx, mod.Digest, mod.Reference)
	switch {
	case errors.Is(err, modules.ErrNotFound):
		return nil, ReasonModuleNotFound, err
	case errors.Is(err, modules.ErrTooLarge):
		return nil, ReasonModuleInvalid, err
	case errors.Is(err, modules.ErrDigest):
		return nil, ReasonModuleDigest, err
	case err != nil:
		return nil, ReasonModuleFetchFailed, err
	}
	em, err := m.cfg.Engine.Prepare(ctx, mod.Digest, path)
	switch {
	case errors.Is(err, engine.ErrModuleInvalid):
		return nil, ReasonModuleInvalid, err
	case errors.Is(err, engine.ErrModuleUnsupported):
		return nil, ReasonModuleUnsupported, err
	case err != nil:
		return nil, ReasonModuleInvalid, err
	}
	return em, "", nil
}

// Start implements instances.Runtime. Errors: ErrNotFound, and
// ErrFailedPrecondition when it is not CREATED. An instance the engine
// cannot start is FAILED (not an error).
func (m *Manager) Start(ctx context.Context, id string) (instances.Instance, error) {
	m.mu.Lock()
	rec, ok := m.instances[id]
	if !ok {
		m.mu.Unlock()
		return instances.Instance{}, fmt.Errorf("%w: %s", instances.ErrNotFound, id)
	}
	if rec.snap.State != instances.StateCreated || rec.run != nil {
		m.mu.Unlock()
		return instances.Instance{}, fmt.Errorf("%w: instance %s is %s, not CREATED; create a new instance to run the module again", instances.ErrFailedPrecondition, id, rec.snap.State)
	}
	spec := rec.snap.Spec
	preopens, dirs, err := m.openPreopens(spec.Preopens)
	if err != nil {
		closeAll(rec.handed)
		rec.handed = nil
		m.transition(rec, instances.StateFailed, ReasonStartFailed, err.Error())
		close(rec.finished)
		snap := rec.snap
		m.mu.Unlock()
		m.log.Warn("instance failed to start", "instance", id, "error", err)
		return snap, nil
	}
	rec.dirs = dirs
	espec := engine.Spec{
		Args:             spec.Args,
		Preopens:         preopens,
		MemoryLimitBytes: spec.MemoryLimitBytes,
		CPULimitMillis:   spec.CPULimitMillis,
		Listeners:        listeners(spec),
		NetNS:            spec.NetworkNamespace,
	}
	if spec.HandedListeners {
		// Opened where the node agent opened them; the engine makes its own copies.
		espec.NetNS = ""
		for i := range espec.Listeners {
			espec.Listeners[i].File = rec.handed[i]
		}
	}
	handed := rec.handed
	rec.handed = nil
	for _, e := range spec.Env {
		espec.Env = append(espec.Env, engine.EnvVar{Name: e.Name, Value: e.Value})
	}
	if espec.MemoryLimitBytes == 0 {
		espec.MemoryLimitBytes = m.cfg.DefaultMemoryLimit
	}
	if spec.LogSubject != "" && m.cfg.JetStream != nil {
		rec.shipper = logs.NewShipper(logs.ShipperConfig{InstanceID: id, Subject: spec.LogSubject, JetStream: m.cfg.JetStream, Outbox: m.cfg.LogOutbox, Now: m.cfg.Now})
		espec.Stdout, espec.Stderr = rec.shipper.Stdout(), rec.shipper.Stderr()
	}
	// Mark it taken while the engine starts it, outside the lock.
	rec.run = placeholder{}
	m.mu.Unlock()

	t0 := time.Now()
	run, err := m.start(ctx, rec.mod, espec, spec.Handler)
	m.metrics.startLatency.Observe(time.Since(t0).Seconds())
	closeAll(handed)

	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		rec.run = nil
		closeAll(rec.dirs)
		err = explainOutOfFiles(err, len(m.instances))
		reason := ReasonStartFailed
		switch {
		case errors.Is(err, engine.ErrModuleUnsupported):
			reason = ReasonModuleUnsupported
		case errors.Is(err, engine.ErrPortInUse):
			reason = instances.ReasonPortInUse
		case errors.Is(err, engine.ErrListen):
			reason = instances.ReasonListenFailed
		}
		if rec.shipper != nil {
			go rec.shipper.Close(context.Background())
		}
		m.transition(rec, instances.StateFailed, reason, err.Error())
		close(rec.finished)
		m.log.Warn("instance failed to start", "instance", id, "error", err)
		return rec.snap, nil
	}
	rec.run = run
	m.metrics.starts.Inc()
	rec.snap.StartedAt = m.cfg.Now()
	m.transition(rec, instances.StateRunning, ReasonStarted, "")
	if rec.stopMsg != "" {
		run.Kill() // stopped while the engine was starting it
	}
	m.log.Info("instance started", "instance", id)
	go m.wait(rec)
	return rec.snap, nil
}

// start starts an instance of mod with spec, in handler mode when
// handler is set (Create checked that the engine runs it).
func (m *Manager) start(ctx context.Context, mod engine.Module, spec engine.Spec, handler instances.HandlerMode) (engine.Instance, error) {
	if handler == "" {
		return m.cfg.Engine.Start(ctx, mod, spec)
	}
	h, err := wagi.Serve(ctx, m.cfg.Engine.(engine.Instantiator), mod, spec, m.cfg.Handlers)
	if err != nil {
		return nil, err
	}
	return h, nil
}

// placeholder stands for an engine instance being started.
type placeholder struct{}

func (placeholder) Done() <-chan struct{} { return nil }
func (placeholder) Wait() engine.Result   { return engine.Result{} }
func (placeholder) Kill()                 {}
func (placeholder) Usage() engine.Usage   { return engine.Usage{} }

// wait records the end of a running instance.
func (m *Manager) wait(rec *record) {
	res := rec.run.Wait()
	closeAll(rec.dirs)
	if rec.shipper != nil {
		ctx, cancel := context.WithTimeout(context.Background(), m.cfg.LogFlush)
		rec.shipper.Close(ctx)
		cancel()
		if st := rec.shipper.Stats(); st.Dropped > 0 || st.Failed > 0 {
			m.log.Warn("instance log records lost", "instance", rec.snap.ID, "records", st.Records, "dropped", st.Dropped, "failed", st.Failed)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	rec.snap.FinishedAt = m.cfg.Now()
	rec.snap.ExitCode = res.ExitCode
	to := instances.StateKilled
	if res.Exited {
		to = instances.StateExited
	}
	msg := res.Message
	if res.Reason == engine.ReasonKilled && rec.stopMsg != "" {
		msg = rec.stopMsg
	}
	m.transition(rec, to, res.Reason, msg)
	close(rec.finished)
	m.log.Info("instance ended", "instance", rec.snap.ID, "state", to, "exit_code", res.ExitCode, "reason", res.Reason)
}

// Stop implements instances.Runtime: it lets a running instance end by
// itself for up to grace, then kills it, and returns once its end is
// recorded (or ctx ends). A CREATED instance becomes KILLED; an ended one
// is returned as it is.
func (m *Manager) Stop(ctx context.Context, id string, grace time.Duration) (instances.Instance, error) {
	m.mu.Lock()
	rec, ok := m.instances[id]
	if !ok {
		m.mu.Unlock()
		return instances.Instance{}, fmt.Errorf("%w: %s", instances.ErrNotFound, id)
	}
	if rec.snap.State == instances.StateCreated && rec.run == nil {
		rec.snap.FinishedAt = m.cfg.Now()
		rec.snap.ExitCode = engine.KilledExitCode
		m.transition(rec, instances.StateKilled, ReasonStoppedBeforeStart, "the instance was stopped before it started")
		close(rec.finished)
		snap := rec.snap
		m.mu.Unlock()
		return snap, nil
	}
	if d, ok := rec.run.(drainer); ok && grace > 0 {
		d.Drain() // a handler stops taking requests and ends once it has answered those in flight
	}
	m.mu.Unlock()
	if grace > 0 {
		t := time.NewTimer(grace)
		select {
		case <-rec.finished:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	m.mu.Lock()
	if !rec.snap.State.Terminal() {
		rec.stopMsg = fmt.Sprintf("the instance was stopped and killed after a grace period of %v (WASI has no signals)", grace)
		if rec.run != nil {
			rec.run.Kill()
			m.metrics.kills.Inc()
		}
	}
	m.mu.Unlock()
	select {
	case <-rec.finished:
	case <-ctx.Done():
		return instances.Instance{}, fmt.Errorf("stop instance %s: %w", id, ctx.Err())
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return rec.snap, nil
}

// drainer is an instance that can be asked to end (a handler, package
// wagi): Stop asks it before the grace period; a module cannot be asked
// (WASI has no signals).
type drainer interface{ Drain() }

// Delete implements instances.Runtime: it forgets an instance that is not
// running; with force it kills a running one first. Errors: ErrNotFound,
// ErrFailedPrecondition.
func (m *Manager) Delete(ctx context.Context, id string, force bool) error {
	m.mu.Lock()
	rec, ok := m.instances[id]
	if !ok {
		m.mu.Unlock()
		return fmt.Errorf("%w: %s", instances.ErrNotFound, id)
	}
	running := rec.snap.State == instances.StateRunning || (rec.snap.State == instances.StateCreated && rec.run != nil)
	m.mu.Unlock()
	if running {
		if !force {
			return fmt.Errorf("%w: instance %s is running; stop it first or delete with force", instances.ErrFailedPrecondition, id)
		}
		if _, err := m.Stop(ctx, id, 0); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.instances[id] == rec && rec.shipper != nil {
		st := rec.shipper.Stats()
		m.metrics.deletedLogs.Published += st.Published
		m.metrics.deletedLogs.Dropped += st.Dropped
		m.metrics.deletedLogs.Failed += st.Failed
	}
	if m.instances[id] == rec && rec.releaseModule != nil {
		rec.releaseModule()
	}
	if m.instances[id] == rec {
		closeAll(rec.handed) // created, never started
		rec.handed = nil
	}
	if cur, ok := m.instances[id]; ok {
		m.byLabel.remove(id, cur)
	}
	delete(m.instances, id)
	m.log.Info("instance deleted", "instance", id)
	return nil
}

// Get implements instances.Runtime. Errors: ErrNotFound.
func (m *Manager) Get(_ context.Context, id string) (instances.Instance, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.instances[id]
	if !ok {
		return instances.Instance{}, fmt.Errorf("%w: %s", instances.ErrNotFound, id)
	}
	return rec.snap, nil
}

// List implements instances.Runtime: the instances whose labels include
// all of selector, by id, and the newest event sequence.
func (m *Manager) List(_ context.Context, selector map[string]string) ([]instances.Instance, uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []instances.Instance
	for _, rec := range m.byLabel.candidates(selector, m.instances) {
		if matches(rec.snap.Spec.Labels, selector) {
			out = append(out, rec.snap)
		}
	}
	slices.SortFunc(out, func(a, b instances.Instance) int { return strings.Compare(a.ID, b.ID) })
	// Changes are recorded under m.mu: none falls between the list and
	// the sequence.
	return out, m.journal.Seq(), nil
}

// Watch implements instances.Runtime, from the journal.
func (m *Manager) Watch(ctx context.Context, after uint64, id string, fn func(instances.Instance) error) error {
	return m.journal.Watch(ctx, after, id, fn)
}

// Stats implements instances.Runtime: the resource use of every started
// instance whose labels include all of selector, by id: running ones now,
// ended ones as they ended.
func (m *Manager) Stats(_ context.Context, selector map[string]string) ([]instances.Stats, error) {
	type started struct {
		snap instances.Instance
		run  engine.Instance
	}
	var runs []started
	m.mu.Lock()
	for _, rec := range m.byLabel.candidates(selector, m.instances) {
		if _, starting := rec.run.(placeholder); rec.run == nil || starting || !matches(rec.snap.Spec.Labels, selector) {
			continue
		}
		runs = append(runs, started{rec.snap, rec.run})
	}
	m.mu.Unlock()
	out := make([]instances.Stats, 0, len(runs))
	for _, r := range runs {
		u := r.run.Usage()
		out = append(out, instances.Stats{ID: r.snap.ID, State: r.snap.State, Labels: r.snap.Spec.Labels, Time: m.cfg.Now(),
			MemoryBytes: u.MemoryBytes, CPU: u.CPU, CPUMeasured: u.CPUMeasured})
	}
	slices.SortFunc(out, func(a, b instances.Stats) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// transition records a state change in the journal. m.mu is held. An
// illegal change is logged and refused: it is a bug in the manager.
func (m *Manager) transition(rec *record, to instances.State, reason, message string) {
	if err := checkTransition(rec.snap.State, to); err != nil {
		m.log.Error("refused state change", "instance", rec.snap.ID, "error", err)
		return
	}
	rec.snap.State, rec.snap.Reason, rec.snap.Message = to, reason, message
	rec.snap = m.journal.Append(m.cfg.Now(), rec.snap)
}

// Shutdown kills every running instance, waits for their ends to be
// recorded, and flushes the events to NATS, until ctx ends.
func (m *Manager) Shutdown(ctx context.Context) error {
	m.mu.Lock()
	var recs []*record
	for _, rec := range m.instances {
		recs = append(recs, rec)
	}
	m.mu.Unlock()
	for _, rec := range recs {
		m.mu.Lock()
		running := !rec.snap.State.Terminal() && rec.run != nil // running or being started
		m.mu.Unlock()
		if running {
			go m.Stop(ctx, rec.snap.ID, 0)
		}
	}
	for _, rec := range recs {
		m.mu.Lock()
		created := rec.snap.State == instances.StateCreated && rec.run == nil
		m.mu.Unlock()
		if created {
			continue
		}
		select {
		case <-rec.finished:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if m.pub != nil {
		return m.pub.Close(ctx)
	}
	return nil
}
