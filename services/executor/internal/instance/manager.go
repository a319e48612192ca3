// Package instance is the executor's instance manager, what the gRPC API
// drives: it creates instances from modules fetched by digest from the
// registry cache, starts, stops, deletes and lists them, keeps each one's
// state under declared transitions (see State), and keeps an event log
// with a per-executor sequence from which watchers resume. Every state
// change is also published as an events.v1.InstanceEvent when NATS is
// configured.
//
// It owns the local module directory (<ModuleDir>/<digest hex>.wasm, each
// verified against its digest) and the instances' lifecycles. It must not
// speak of pods or restart policies (the node agent's), run wasm itself
// (the engine's), or choose log subjects (they come with the spec).
//
// Stopping: WASI preview 1 has no signals, so there is no way to ask a
// module to end. Stop waits up to the grace period for the module to end
// by itself, then kills it.
//
// Usage:
//
//	m, _ := instance.New(instance.Config{ExecutorID: id, Engine: eng, Cache: cache, ModuleDir: dir})
//	inst, err := m.Create(ctx, "i1", spec, true)
//	inst, err = m.Stop(ctx, "i1", 30*time.Second)
//	m.Shutdown(ctx)
package instance

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/beneath"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/logs"
	"github.com/wasmlet/wasmlet/services/executor/internal/outbox"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// Errors, wrapped with detail. The gRPC server maps them to status codes.
var (
	ErrNotFound           = errors.New("instance not found")
	ErrAlreadyExists      = errors.New("instance already exists")
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrResourceExhausted  = errors.New("resource exhausted")
	ErrPermissionDenied   = errors.New("permission denied")
	// ErrIllegalTransition: a state change the lifecycle does not declare.
	// It wraps ErrFailedPrecondition.
	ErrIllegalTransition = fmt.Errorf("%w: illegal state transition", ErrFailedPrecondition)
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
	// MountRoots are the directories under which every preopen's host
	// path must lie (the node agent's pod directory root and its allowed
	// hostPath roots); a preopen elsewhere is refused, and with none every
	// preopen is. Below its root a preopen is opened without following a
	// symlink, at every start.
	MountRoots []string
	Logger     *slog.Logger
	Now        func() time.Time
}

// Manager holds the instances. Safe for concurrent use.
type Manager struct {
	cfg    Config
	log    *slog.Logger
	events *outbox.Outbox

	fetchMu  sync.Mutex
	fetching map[string]*sync.Mutex // by digest
	verified map[string]bool        // module files verified in this process

	mu        sync.Mutex
	instances map[string]*record
	reserved  map[string]bool // ids being created
	seq       uint64
	history   []Event // oldest first, at most cfg.History
	changed   chan struct{}

	metrics metrics
}

type record struct {
	snap     Instance
	mod      engine.Module
	run      engine.Instance
	shipper  *logs.Shipper
	dirs     []*os.File    // the preopens, open while the instance runs
	finished chan struct{} // closed once the final state is recorded
	stopMsg  string        // why it was killed, when by Stop
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
	if cfg.MaxModuleBytes <= 0 {
		cfg.MaxModuleBytes = 256 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.ModuleDir, 0o700); err != nil {
		return nil, fmt.Errorf("instance manager: create module dir: %w", err)
	}
	m := &Manager{
		cfg:       cfg,
		log:       cfg.Logger,
		fetching:  map[string]*sync.Mutex{},
		verified:  map[string]bool{},
		instances: map[string]*record{},
		reserved:  map[string]bool{},
		changed:   make(chan struct{}),
		metrics:   newMetrics(),
	}
	if cfg.JetStream != nil {
		m.events = outbox.New(cfg.JetStream, cfg.EventOutbox)
	}
	return m, nil
}

// MaxInstances is the configured bound.
func (m *Manager) MaxInstances() int { return m.cfg.MaxInstances }

// Count is how many instances the manager holds.
func (m *Manager) Count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.instances)
}

// ExecutorID is the id given in events.
func (m *Manager) ExecutorID() string { return m.cfg.ExecutorID }

func validate(id string, spec Spec, roots []string) error {
	if id == "" || len(id) > 253 {
		return fmt.Errorf("%w: instance id must be 1 to 253 characters", ErrInvalidArgument)
	}
	if strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("%w: instance id %q must not contain '/' or NUL", ErrInvalidArgument, id)
	}
	hexd, ok := strings.CutPrefix(spec.ModuleDigest, "sha256:")
	if _, err := hex.DecodeString(hexd); !ok || len(hexd) != 64 || err != nil || strings.ToLower(hexd) != hexd {
		return fmt.Errorf("%w: module digest %q: want sha256:<64 lowercase hex digits>", ErrInvalidArgument, spec.ModuleDigest)
	}
	if spec.MemoryLimitBytes < 0 {
		return fmt.Errorf("%w: memory limit %d is negative", ErrInvalidArgument, spec.MemoryLimitBytes)
	}
	if spec.CPULimitMillis < 0 {
		return fmt.Errorf("%w: CPU limit %dm is negative", ErrInvalidArgument, spec.CPULimitMillis)
	}
	for _, p := range spec.Preopens {
		if !filepath.IsAbs(p.HostPath) || p.GuestPath == "" {
			return fmt.Errorf("%w: preopen %q -> %q: the host path must be absolute and the guest path set", ErrInvalidArgument, p.HostPath, p.GuestPath)
		}
		if _, _, ok := beneath.Rel(p.HostPath, roots); !ok {
			return fmt.Errorf("%w: preopen %q: the host path is outside this executor's mount roots %v (start it with --mount-root for the node agent's pod directory and allowed hostPath roots)", ErrPermissionDenied, p.HostPath, roots)
		}
	}
	return nil
}

// Create fetches and prepares the module and records the instance as
// CREATED, then starts it when start is set. A module that cannot be
// fetched or prepared gives an instance in FAILED (not an error), whose
// reason and message say why. Errors: ErrInvalidArgument, ErrAlreadyExists,
// ErrResourceExhausted.
func (m *Manager) Create(ctx context.Context, id string, spec Spec, start bool) (Instance, error) {
	if err := validate(id, spec, m.cfg.MountRoots); err != nil {
		return Instance{}, err
	}
	m.mu.Lock()
	if _, ok := m.instances[id]; ok || m.reserved[id] {
		m.mu.Unlock()
		return Instance{}, fmt.Errorf("%w: %s", ErrAlreadyExists, id)
	}
	if len(m.instances)+len(m.reserved) >= m.cfg.MaxInstances {
		m.mu.Unlock()
		return Instance{}, fmt.Errorf("%w: this executor holds %d instances, its maximum; delete ended instances or raise --max-instances", ErrResourceExhausted, m.cfg.MaxInstances)
	}
	m.reserved[id] = true
	m.mu.Unlock()

	rec := &record{
		snap:     Instance{ID: id, Spec: spec, CreatedAt: m.cfg.Now()},
		finished: make(chan struct{}),
	}
	mod, reason, err := m.prepare(ctx, spec)

	m.mu.Lock()
	delete(m.reserved, id)
	m.instances[id] = rec
	if err != nil {
		m.transition(rec, StateFailed, reason, err.Error())
		close(rec.finished)
		snap := rec.snap
		m.mu.Unlock()
		m.log.Warn("instance failed", "instance", id, "reason", reason, "error", err)
		return snap, nil
	}
	rec.mod = mod
	m.transition(rec, StateCreated, ReasonCreated, "")
	snap := rec.snap
	m.mu.Unlock()
	m.log.Info("instance created", "instance", id, "module", spec.ModuleDigest)
	if start {
		return m.Start(ctx, id)
	}
	return snap, nil
}

// prepare fetches the module into the module dir and prepares it.
func (m *Manager) prepare(ctx context.Context, spec Spec) (engine.Module, string, error) {
	path, reason, err := m.fetch(ctx, spec)
	if err != nil {
		return nil, reason, err
	}
	mod, err := m.cfg.Engine.Prepare(ctx, spec.ModuleDigest, path)
	switch {
	case errors.Is(err, engine.ErrModuleInvalid):
		return nil, ReasonModuleInvalid, err
	case errors.Is(err, engine.ErrModuleUnsupported):
		return nil, ReasonModuleUnsupported, err
	case err != nil:
		return nil, ReasonModuleInvalid, err
	}
	return mod, "", nil
}

func (m *Manager) fetch(ctx context.Context, spec Spec) (string, string, error) {
	digest := spec.ModuleDigest
	hexd := strings.TrimPrefix(digest, "sha256:")
	path := filepath.Join(m.cfg.ModuleDir, hexd+".wasm")
	m.fetchMu.Lock()
	mu := m.fetching[digest]
	if mu == nil {
		mu = &sync.Mutex{}
		m.fetching[digest] = mu
	}
	m.fetchMu.Unlock()
	mu.Lock()
	defer mu.Unlock()

	m.fetchMu.Lock()
	ok := m.verified[digest]
	m.fetchMu.Unlock()
	if ok {
		if _, err := os.Stat(path); err == nil {
			return path, "", nil
		}
	} else if got, err := fileDigest(path); err == nil && got == digest {
		m.markVerified(digest)
		return path, "", nil
	}

	name := digest
	if spec.ModuleReference != "" {
		name = spec.ModuleReference + "@" + digest
	}
	rc, size, err := m.cfg.Cache.Fetch(ctx, digest)
	if err != nil {
		if errors.Is(err, regcache.ErrNotFound) {
			return "", ReasonModuleNotFound, fmt.Errorf("fetch module %s from the registry cache: %w; resolve the reference through the registry cache first", name, err)
		}
		return "", ReasonModuleFetchFailed, fmt.Errorf("fetch module %s from the registry cache: %w", name, err)
	}
	defer rc.Close()
	if size > m.cfg.MaxModuleBytes {
		return "", ReasonModuleInvalid, fmt.Errorf("module %s is %d bytes, more than the limit of %d", name, size, m.cfg.MaxModuleBytes)
	}
	tmp, err := os.CreateTemp(m.cfg.ModuleDir, hexd+".tmp-*")
	if err != nil {
		return "", ReasonModuleFetchFailed, fmt.Errorf("store module %s: %w", name, err)
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(rc, m.cfg.MaxModuleBytes+1))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", ReasonModuleFetchFailed, fmt.Errorf("fetch module %s from the registry cache: %w", name, err)
	}
	if n > m.cfg.MaxModuleBytes {
		return "", ReasonModuleInvalid, fmt.Errorf("module %s is more than the limit of %d bytes", name, m.cfg.MaxModuleBytes)
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != digest {
		return "", ReasonModuleDigest, fmt.Errorf("module %s: the registry cache served content with digest %s; %w; the cache may be corrupt", name, got, regcache.ErrDigestMismatch)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", ReasonModuleFetchFailed, fmt.Errorf("store module %s: %w", name, err)
	}
	m.markVerified(digest)
	return path, "", nil
}

func (m *Manager) markVerified(digest string) {
	m.fetchMu.Lock()
	m.verified[digest] = true
	m.fetchMu.Unlock()
}

func fileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// Start starts a CREATED instance. Errors: ErrNotFound, and
// ErrFailedPrecondition when it is not CREATED. An instance the engine
// cannot start is FAILED (not an error).
func (m *Manager) Start(ctx context.Context, id string) (Instance, error) {
	m.mu.Lock()
	rec, ok := m.instances[id]
	if !ok {
		m.mu.Unlock()
		return Instance{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if rec.snap.State != StateCreated || rec.run != nil {
		m.mu.Unlock()
		return Instance{}, fmt.Errorf("%w: instance %s is %s, not CREATED; create a new instance to run the module again", ErrFailedPrecondition, id, rec.snap.State)
	}
	spec := rec.snap.Spec
	preopens, dirs, err := m.openPreopens(spec.Preopens)
	if err != nil {
		m.transition(rec, StateFailed, ReasonStartFailed, err.Error())
		close(rec.finished)
		m.mu.Unlock()
		m.log.Warn("instance failed to start", "instance", id, "error", err)
		return rec.snap, nil
	}
	rec.dirs = dirs
	espec := engine.Spec{
		Args:             spec.Args,
		Env:              spec.Env,
		Preopens:         preopens,
		MemoryLimitBytes: spec.MemoryLimitBytes,
		CPULimitMillis:   spec.CPULimitMillis,
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
	run, err := m.cfg.Engine.Start(ctx, rec.mod, espec)
	m.metrics.startLatency.Observe(time.Since(t0).Seconds())

	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		rec.run = nil
		closeAll(rec.dirs)
		reason := ReasonStartFailed
		if errors.Is(err, engine.ErrModuleUnsupported) {
			reason = ReasonModuleUnsupported
		}
		if rec.shipper != nil {
			go rec.shipper.Close(context.Background())
		}
		m.transition(rec, StateFailed, reason, err.Error())
		close(rec.finished)
		m.log.Warn("instance failed to start", "instance", id, "error", err)
		return rec.snap, nil
	}
	rec.run = run
	m.metrics.starts.Inc()
	rec.snap.StartedAt = m.cfg.Now()
	m.transition(rec, StateRunning, ReasonStarted, "")
	if rec.stopMsg != "" {
		run.Kill() // stopped while the engine was starting it
	}
	m.log.Info("instance started", "instance", id)
	go m.wait(rec)
	return rec.snap, nil
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
	to := StateKilled
	if res.Exited {
		to = StateExited
	}
	msg := res.Message
	if res.Reason == engine.ReasonKilled && rec.stopMsg != "" {
		msg = rec.stopMsg
	}
	m.transition(rec, to, res.Reason, msg)
	close(rec.finished)
	m.log.Info("instance ended", "instance", rec.snap.ID, "state", to, "exit_code", res.ExitCode, "reason", res.Reason)
}

// openPreopens opens each preopen's directory beneath its mount root
// without following a symlink (a module may have replaced a directory of a
// shared volume by a link since the node agent made it), and returns the
// preopens with their host paths as /proc/self/fd paths of the opened
// directories, so that the engine opens exactly what was checked.
func (m *Manager) openPreopens(ps []engine.Preopen) ([]engine.Preopen, []*os.File, error) {
	out := make([]engine.Preopen, len(ps))
	var dirs []*os.File
	for i, p := range ps {
		root, rel, ok := beneath.Rel(p.HostPath, m.cfg.MountRoots)
		if !ok { // validated at create; the roots do not change
			closeAll(dirs)
			return nil, nil, fmt.Errorf("%w: preopen %q is outside the mount roots", ErrPermissionDenied, p.HostPath)
		}
		d, err := beneath.OpenDir(root, rel)
		if err != nil {
			closeAll(dirs)
			if errors.Is(err, beneath.ErrEscape) {
				return nil, nil, fmt.Errorf("preopen %s at %s refused: %v; a mounted path must be a directory reached without symbolic links", p.HostPath, p.GuestPath, err)
			}
			return nil, nil, fmt.Errorf("preopen %s at %s: host path is not a directory (%v); create it or fix the path", p.HostPath, p.GuestPath, err)
		}
		dirs = append(dirs, d)
		out[i] = p
		out[i].HostPath = fmt.Sprintf("/proc/self/fd/%d", d.Fd())
	}
	return out, dirs, nil
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// Stop lets a running instance end by itself for up to grace, then kills
// it, and returns once its end is recorded (or ctx ends). A CREATED
// instance becomes KILLED; an ended one is returned as it is.
func (m *Manager) Stop(ctx context.Context, id string, grace time.Duration) (Instance, error) {
	m.mu.Lock()
	rec, ok := m.instances[id]
	if !ok {
		m.mu.Unlock()
		return Instance{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if rec.snap.State == StateCreated && rec.run == nil {
		rec.snap.FinishedAt = m.cfg.Now()
		rec.snap.ExitCode = engine.KilledExitCode
		m.transition(rec, StateKilled, ReasonStoppedBeforeStart, "the instance was stopped before it started")
		close(rec.finished)
		snap := rec.snap
		m.mu.Unlock()
		return snap, nil
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
		return Instance{}, fmt.Errorf("stop instance %s: %w", id, ctx.Err())
	}
	return m.Get(id)
}

// Delete forgets an instance that is not running; with force it kills a
// running one first. Errors: ErrNotFound, ErrFailedPrecondition.
func (m *Manager) Delete(ctx context.Context, id string, force bool) error {
	m.mu.Lock()
	rec, ok := m.instances[id]
	if !ok {
		m.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	running := rec.snap.State == StateRunning || (rec.snap.State == StateCreated && rec.run != nil)
	m.mu.Unlock()
	if running {
		if !force {
			return fmt.Errorf("%w: instance %s is running; stop it first or delete with force", ErrFailedPrecondition, id)
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
	delete(m.instances, id)
	m.log.Info("instance deleted", "instance", id)
	return nil
}

// Get returns one instance. Errors: ErrNotFound.
func (m *Manager) Get(id string) (Instance, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.instances[id]
	if !ok {
		return Instance{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return rec.snap, nil
}

// List returns the instances whose labels include all of selector, by id,
// and the newest event sequence.
func (m *Manager) List(selector map[string]string) ([]Instance, uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Instance
	for _, rec := range m.instances {
		if matches(rec.snap.Spec.Labels, selector) {
			out = append(out, rec.snap)
		}
	}
	slices.SortFunc(out, func(a, b Instance) int { return strings.Compare(a.ID, b.ID) })
	return out, m.seq
}

// Stats is one instance's resource use at a moment.
type Stats struct {
	ID     string
	State  State
	Labels map[string]string
	Time   time.Time
	Usage  engine.Usage
}

// Stats returns the resource use of every started instance whose labels
// include all of selector, by id: running ones now, ended ones as they
// ended.
func (m *Manager) Stats(selector map[string]string) []Stats {
	type started struct {
		snap Instance
		run  engine.Instance
	}
	var runs []started
	m.mu.Lock()
	for _, rec := range m.instances {
		if _, starting := rec.run.(placeholder); rec.run == nil || starting || !matches(rec.snap.Spec.Labels, selector) {
			continue
		}
		runs = append(runs, started{rec.snap, rec.run})
	}
	m.mu.Unlock()
	out := make([]Stats, 0, len(runs))
	for _, r := range runs {
		out = append(out, Stats{ID: r.snap.ID, State: r.snap.State, Labels: r.snap.Spec.Labels, Time: m.cfg.Now(), Usage: r.run.Usage()})
	}
	slices.SortFunc(out, func(a, b Stats) int { return strings.Compare(a.ID, b.ID) })
	return out
}

func matches(labels, selector map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// EventsAfter returns the held events with a sequence greater than after,
// oldest first, and a channel closed when the next event is recorded.
// after greater than the newest sequence is ErrFailedPrecondition: the
// caller holds a sequence of another executor process.
func (m *Manager) EventsAfter(after uint64) ([]Event, <-chan struct{}, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if after > m.seq {
		return nil, nil, fmt.Errorf("%w: sequence %d is newer than this executor's newest event %d; the executor restarted: list instances and watch from the listing's sequence", ErrFailedPrecondition, after, m.seq)
	}
	i, _ := slices.BinarySearchFunc(m.history, after+1, func(e Event, s uint64) int {
		switch {
		case e.Sequence < s:
			return -1
		case e.Sequence > s:
			return 1
		}
		return 0
	})
	return slices.Clone(m.history[i:]), m.changed, nil
}

// transition records a state change and its event. m.mu is held. An
// illegal change is logged and refused: it is a bug in the manager.
func (m *Manager) transition(rec *record, to State, reason, message string) {
	if err := checkTransition(rec.snap.State, to); err != nil {
		m.log.Error("refused state change", "instance", rec.snap.ID, "error", err)
		return
	}
	m.seq++
	rec.snap.State, rec.snap.Reason, rec.snap.Message, rec.snap.Sequence = to, reason, message, m.seq
	ev := Event{Sequence: m.seq, Instance: rec.snap}
	if len(m.history) >= m.cfg.History {
		n := len(m.history) - m.cfg.History + 1
		clear(m.history[:n])
		m.history = m.history[n:]
	}
	m.history = append(m.history, ev)
	close(m.changed)
	m.changed = make(chan struct{})
	if m.events != nil {
		m.publish(ev)
	}
}

func (m *Manager) publish(ev Event) {
	in := ev.Instance
	b, err := proto.Marshal(&eventsv1.InstanceEvent{
		ExecutorId: m.cfg.ExecutorID,
		InstanceId: in.ID,
		Sequence:   ev.Sequence,
		State:      "INSTANCE_STATE_" + in.State.String(),
		ExitCode:   in.ExitCode,
		Reason:     in.Reason,
		Message:    in.Message,
		Time:       timestamppb.New(m.cfg.Now()),
		Labels:     maps.Clone(in.Spec.Labels),
	})
	if err != nil {
		return
	}
	// Publish may wait up to the outbox's BlockTimeout with m.mu held;
	// events are few, and the outbox bounds it.
	m.events.Publish(subjects.Events(m.cfg.ExecutorID, in.ID), b)
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
		created := rec.snap.State == StateCreated && rec.run == nil
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
	if m.events != nil {
		return m.events.Close(ctx)
	}
	return nil
}
