package instancestest

import (
	"context"
	"encoding/hex"
	"fmt"
	"maps"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/wasmlet/wasmlet/services/executor/instances"
)

// KilledExitCode is the exit code of a killed instance, as the executor's.
const KilledExitCode = 137

// Outcome is how a Fake's instance goes. The zero Outcome runs until it is
// stopped.
type Outcome struct {
	// Fail: the module cannot be prepared; Create returns the instance
	// FAILED with Reason (default "ModuleInvalid") and Message.
	Fail bool
	// Exit: the instance ends by itself After its start, EXITED with
	// ExitCode, Reason (default "Completed" or "Error") and Message.
	Exit     bool
	ExitCode int32
	After    time.Duration

	Reason, Message string
}

// RunsUntilStopped is the Outcome of an instance that ends only when stopped.
func RunsUntilStopped() Outcome { return Outcome{} }

// ExitsWith is the Outcome of an instance that exits with code after d.
func ExitsWith(code int32, d time.Duration) Outcome {
	return Outcome{Exit: true, ExitCode: code, After: d}
}

// FailsWith is the Outcome of an instance whose module cannot be prepared.
func FailsWith(reason, message string) Outcome {
	return Outcome{Fail: true, Reason: reason, Message: message}
}

// Fake is an in-memory instances.Runtime for unit tests of its callers.
// It keeps the contracts of instances.Runtime; what each instance does is
// scripted with Behave, and the executor's loss with Lose and
// SetUnavailable. Set its exported fields before first use; its methods are
// safe for concurrent use.
//
//	f := &instancestest.Fake{Behave: func(id string, _ instances.Spec) instancestest.Outcome {
//		return instancestest.ExitsWith(1, 0) // every instance crashes at once
//	}}
//	f.Lose()                 // the executor restarted: every instance is gone
//	f.SetUnavailable(true)   // every call fails with ErrUnavailable
type Fake struct {
	ExecutorID   string // default "fake"
	MaxInstances int    // 0: no limit
	// History is how many events are kept for Watch (default 1024); a
	// watcher further behind gets ErrBehind.
	History int
	// MountRoots, when set, are the only host directories preopens may lie
	// under (ErrPermissionDenied otherwise).
	MountRoots []string
	// Behave decides each instance's Outcome at Create; nil: every
	// instance runs until stopped.
	Behave func(id string, spec instances.Spec) Outcome
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Listeners: the fake hands listeners to modules (Info.Listeners);
	// without it a spec with listeners is refused with ErrUnsupported. A
	// port in use is an Outcome: FailsWith(instances.ReasonPortInUse, ...).
	Listeners bool
	// ListenerHandoff: the fake takes handed-over listeners
	// (Info.ListenerHandoff); without it a spec with HandedListeners is
	// refused with ErrUnsupported. It receives no sockets: what such an
	// instance does is Behave's (the conformance suite wants one whose
	// listeners were not handed over to fail with ReasonListenFailed).
	ListenerHandoff bool
	// HandlerModes the fake runs (Info.HandlerModes); a spec with another
	// is refused with ErrUnsupported. A handler instance's listeners need
	// no Listeners (the executor serves them); what it does is Behave's.
	HandlerModes []instances.HandlerMode

	mu          sync.Mutex
	insts       map[string]*fakeInstance
	seq         uint64
	history     []instances.Instance // events, oldest first, contiguous sequences
	changed     chan struct{}        // closed and replaced at each event
	lost        chan struct{}        // closed and replaced at each Lose
	generation  int
	unavailable bool
	calls       map[string]int
}

type fakeInstance struct {
	snap     instances.Instance
	outcome  Outcome
	finished chan struct{} // closed once terminal
	timer    *time.Timer   // the scripted exit
}

var _ instances.Runtime = (*Fake)(nil)

// init sets defaults; f.mu is held.
func (f *Fake) initLocked() {
	if f.insts != nil {
		return
	}
	f.insts = map[string]*fakeInstance{}
	f.changed = make(chan struct{})
	f.lost = make(chan struct{})
	f.calls = map[string]int{}
	if f.ExecutorID == "" {
		f.ExecutorID = "fake"
	}
	if f.History <= 0 {
		f.History = 1024
	}
	if f.Now == nil {
		f.Now = time.Now
	}
}

// enter counts a call and locks f; it returns ErrUnavailable (with f
// unlocked) while the executor is unavailable.
func (f *Fake) enter(method string) error {
	f.mu.Lock()
	f.initLocked()
	f.calls[method]++
	if f.unavailable {
		f.mu.Unlock()
		return fmt.Errorf("%s: %w: the fake executor %s is unavailable", method, instances.ErrUnavailable, f.ExecutorID)
	}
	return nil
}

// Calls returns how many times method (e.g. "Create") was called.
func (f *Fake) Calls(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.initLocked()
	return f.calls[method]
}

// SetUnavailable makes every call fail with ErrUnavailable (and ends every
// Watch with it) until it is cleared; instances go on as they were.
func (f *Fake) SetUnavailable(u bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.initLocked()
	f.unavailable = u
	if u {
		close(f.lost)
		f.lost = make(chan struct{})
	}
}

// Lose is the executor process dying and coming back: every instance is
// gone without an event, every Watch ends with ErrUnavailable, the
// sequence starts again from zero (a watch after an older sequence is
// ErrFailedPrecondition) and the ExecutorID changes.
func (f *Fake) Lose() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.initLocked()
	for _, in := range f.insts {
		if in.timer != nil {
			in.timer.Stop()
		}
	}
	clear(f.insts)
	f.seq = 0
	f.history = nil
	f.generation++
	f.ExecutorID = fmt.Sprintf("%s~%d", strings.Split(f.ExecutorID, "~")[0], f.generation)
	close(f.lost)
	f.lost = make(chan struct{})
	close(f.changed)
	f.changed = make(chan struct{})
}

// DropHistory forgets every kept event, as an executor does that has
// recorded more than it keeps: a watcher behind the newest gets ErrBehind.
func (f *Fake) DropHistory() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.initLocked()
	f.history = nil
}

// Exit ends a running instance now, EXITED with code, as if its module
// returned.
func (f *Fake) Exit(id string, code int32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.initLocked()
	in, ok := f.insts[id]
	if !ok {
		return fmt.Errorf("%w: %s", instances.ErrNotFound, id)
	}
	if in.snap.State != instances.StateRunning {
		return fmt.Errorf("%w: instance %s is %s, not RUNNING", instances.ErrFailedPrecondition, id, in.snap.State)
	}
	f.endLocked(in, instances.StateExited, code, "", "")
	return nil
}

// Info describes the fake executor.
func (f *Fake) Info(context.Context) (instances.Info, error) {
	if err := f.enter("Info"); err != nil {
		return instances.Info{}, err
	}
	defer f.mu.Unlock()
	return instances.Info{
		ExecutorID: f.ExecutorID, Engine: "fake", Version: "0",
		OS: runtime.GOOS, Arch: runtime.GOARCH,
		MaxInstances: f.MaxInstances, Instances: len(f.insts),
		Listeners:       f.Listeners,
		ListenerHandoff: f.ListenerHandoff,
		HandlerModes:    slices.Clone(f.HandlerModes),
	}, nil
}

func (f *Fake) validate(id string, spec instances.Spec) error {
	if id == "" || len(id) > 253 {
		return fmt.Errorf("%w: instance id must be 1 to 253 characters", instances.ErrInvalidArgument)
	}
	if strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("%w: instance id %q must not contain '/' or NUL", instances.ErrInvalidArgument, id)
	}
	hexd, ok := strings.CutPrefix(spec.Module.Digest, "sha256:")
	if _, err := hex.DecodeString(hexd); !ok || len(hexd) != 64 || err != nil || strings.ToLower(hexd) != hexd {
		return fmt.Errorf("%w: module digest %q: want sha256:<64 lowercase hex digits>", instances.ErrInvalidArgument, spec.Module.Digest)
	}
	if spec.MemoryLimitBytes < 0 || spec.CPULimitMillis < 0 {
		return fmt.Errorf("%w: negative limit", instances.ErrInvalidArgument)
	}
	if err := instances.ValidateListeners(spec); err != nil {
		return err
	}
	for _, p := range spec.Preopens {
		if !filepath.IsAbs(p.HostPath) || p.GuestPath == "" {
			return fmt.Errorf("%w: preopen %q -> %q: the host path must be absolute and the guest path set", instances.ErrInvalidArgument, p.HostPath, p.GuestPath)
		}
		if len(f.MountRoots) > 0 && !slices.ContainsFunc(f.MountRoots, func(root string) bool {
			rel, err := filepath.Rel(root, p.HostPath)
			return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
		}) {
			return fmt.Errorf("%w: preopen %q is outside the mount roots %v", instances.ErrPermissionDenied, p.HostPath, f.MountRoots)
		}
	}
	if spec.Handler != "" && !slices.Contains(f.HandlerModes, spec.Handler) {
		return fmt.Errorf("%w: the fake executor does not run handler mode %s", instances.ErrUnsupported, spec.Handler)
	}
	if len(spec.Listeners) > 0 && spec.Handler == "" && !f.Listeners {
		return fmt.Errorf("%w: the fake executor hands no listeners to modules", instances.ErrUnsupported)
	}
	if spec.HandedListeners && !f.ListenerHandoff {
		return fmt.Errorf("%w: the fake executor takes no handed-over listeners", instances.ErrUnsupported)
	}
	return nil
}

// Create records the instance and, with start, starts it; its Outcome is
// decided here.
func (f *Fake) Create(ctx context.Context, id string, spec instances.Spec, start bool) (instances.Instance, error) {
	if err := f.enter("Create"); err != nil {
		return instances.Instance{}, err
	}
	defer f.mu.Unlock()
	if err := f.validate(id, spec); err != nil {
		return instances.Instance{}, err
	}
	if _, ok := f.insts[id]; ok {
		return instances.Instance{}, fmt.Errorf("%w: %s", instances.ErrAlreadyExists, id)
	}
	if f.MaxInstances > 0 && len(f.insts) >= f.MaxInstances {
		return instances.Instance{}, fmt.Errorf("%w: the fake executor holds %d instances, its maximum", instances.ErrResourceExhausted, f.MaxInstances)
	}
	spec = cloneSpec(spec)
	var out Outcome
	if f.Behave != nil {
		out = f.Behave(id, cloneSpec(spec))
	}
	in := &fakeInstance{
		snap:     instances.Instance{ID: id, Spec: spec, CreatedAt: f.Now()},
		outcome:  out,
		finished: make(chan struct{}),
	}
	f.insts[id] = in
	if out.Fail {
		reason := out.Reason
		if reason == "" {
			reason = "ModuleInvalid"
		}
		in.snap.FinishedAt = in.snap.CreatedAt
		f.transitionLocked(in, instances.StateFailed, reason, out.Message)
		close(in.finished)
		return in.snap, nil
	}
	f.transitionLocked(in, instances.StateCreated, "Created", "")
	if start {
		f.startLocked(in)
	}
	return in.snap, nil
}

// Start runs a CREATED instance.
func (f *Fake) Start(ctx context.Context, id string) (instances.Instance, error) {
	if err := f.enter("Start"); err != nil {
		return instances.Instance{}, err
	}
	defer f.mu.Unlock()
	in, ok := f.insts[id]
	if !ok {
		return instances.Instance{}, fmt.Errorf("%w: %s", instances.ErrNotFound, id)
	}
	if in.snap.State != instances.StateCreated {
		return instances.Instance{}, fmt.Errorf("%w: instance %s is %s, not CREATED", instances.ErrFailedPrecondition, id, in.snap.State)
	}
	f.startLocked(in)
	return in.snap, nil
}

// startLocked moves in to RUNNING and arms its scripted exit; f.mu is held.
func (f *Fake) startLocked(in *fakeInstance) {
	in.snap.StartedAt = f.Now()
	f.transitionLocked(in, instances.StateRunning, "Started", "")
	if !in.outcome.Exit {
		return
	}
	gen := f.generation
	in.timer = time.AfterFunc(in.outcome.After, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.generation != gen || f.insts[in.snap.ID] != in || in.snap.State != instances.StateRunning {
			return
		}
		f.endLocked(in, instances.StateExited, in.outcome.ExitCode, in.outcome.Reason, in.outcome.Message)
	})
}

// endLocked records in's end; f.mu is held.
func (f *Fake) endLocked(in *fakeInstance, to instances.State, code int32, reason, msg string) {
	if in.timer != nil {
		in.timer.Stop()
	}
	if reason == "" {
		switch {
		case to == instances.StateKilled:
			reason = "Killed"
		case code == 0:
			reason = "Completed"
		default:
			reason = "Error"
		}
	}
	in.snap.ExitCode = code
	in.snap.FinishedAt = f.Now()
	f.transitionLocked(in, to, reason, msg)
	close(in.finished)
}

// transitionLocked records a state change and its event; f.mu is held.
func (f *Fake) transitionLocked(in *fakeInstance, to instances.State, reason, msg string) {
	f.seq++
	in.snap.State, in.snap.Reason, in.snap.Message, in.snap.Sequence = to, reason, msg, f.seq
	if len(f.history) >= f.History {
		f.history = slices.Delete(f.history, 0, len(f.history)-f.History+1)
	}
	f.history = append(f.history, in.snap)
	close(f.changed)
	f.changed = make(chan struct{})
}

// Stop lets a running instance end by itself for up to grace, then kills it.
func (f *Fake) Stop(ctx context.Context, id string, grace time.Duration) (instances.Instance, error) {
	if err := f.enter("Stop"); err != nil {
		return instances.Instance{}, err
	}
	in, ok := f.insts[id]
	if !ok {
		f.mu.Unlock()
		return instances.Instance{}, fmt.Errorf("%w: %s", instances.ErrNotFound, id)
	}
	switch in.snap.State {
	case instances.StateCreated:
		f.endLocked(in, instances.StateKilled, KilledExitCode, "StoppedBeforeStart", "the instance was stopped before it started")
		f.mu.Unlock()
		return in.snap, nil
	case instances.StateRunning:
	default:
		f.mu.Unlock()
		return in.snap, nil
	}
	lost := f.lost
	f.mu.Unlock()
	if grace > 0 {
		t := time.NewTimer(grace)
		select {
		case <-in.finished:
		case <-t.C:
		case <-lost:
		case <-ctx.Done():
			t.Stop()
			return instances.Instance{}, fmt.Errorf("stop instance %s: %w", id, ctx.Err())
		}
		t.Stop()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.unavailable || f.insts[id] != in {
		return instances.Instance{}, fmt.Errorf("stop instance %s: %w: the fake executor went away", id, instances.ErrUnavailable)
	}
	if in.snap.State == instances.StateRunning {
		f.endLocked(in, instances.StateKilled, KilledExitCode, "Killed",
			fmt.Sprintf("the instance was stopped and killed after a grace period of %v (WASI has no signals)", grace))
	}
	return in.snap, nil
}

// Delete forgets an ended instance; with force it kills a running one first.
func (f *Fake) Delete(ctx context.Context, id string, force bool) error {
	if err := f.enter("Delete"); err != nil {
		return err
	}
	defer f.mu.Unlock()
	in, ok := f.insts[id]
	if !ok {
		return fmt.Errorf("%w: %s", instances.ErrNotFound, id)
	}
	if !in.snap.State.Terminal() {
		if !force && in.snap.State == instances.StateRunning {
			return fmt.Errorf("%w: instance %s is running; stop it first or delete with force", instances.ErrFailedPrecondition, id)
		}
		if in.snap.State == instances.StateCreated {
			f.endLocked(in, instances.StateKilled, KilledExitCode, "StoppedBeforeStart", "the instance was stopped before it started")
		} else {
			f.endLocked(in, instances.StateKilled, KilledExitCode, "Killed", "the instance was deleted with force")
		}
	}
	delete(f.insts, id)
	return nil
}

// Get returns one instance.
func (f *Fake) Get(ctx context.Context, id string) (instances.Instance, error) {
	if err := f.enter("Get"); err != nil {
		return instances.Instance{}, err
	}
	defer f.mu.Unlock()
	in, ok := f.insts[id]
	if !ok {
		return instances.Instance{}, fmt.Errorf("%w: %s", instances.ErrNotFound, id)
	}
	return in.snap, nil
}

// List returns the instances whose labels include selector, by ID, and the
// newest sequence.
func (f *Fake) List(ctx context.Context, selector map[string]string) ([]instances.Instance, uint64, error) {
	if err := f.enter("List"); err != nil {
		return nil, 0, err
	}
	defer f.mu.Unlock()
	var out []instances.Instance
	for _, in := range f.insts {
		if matches(in.snap.Spec.Labels, selector) {
			out = append(out, in.snap)
		}
	}
	slices.SortFunc(out, func(a, b instances.Instance) int { return strings.Compare(a.ID, b.ID) })
	return out, f.seq, nil
}

// Watch calls fn with every change after sequence after (0: from the
// oldest kept), for id only unless id is "". A sequence newer than the
// newest (another life's) is ErrFailedPrecondition.
func (f *Fake) Watch(ctx context.Context, after uint64, id string, fn func(instances.Instance) error) error {
	if err := f.enter("Watch"); err != nil {
		return err
	}
	lost := f.lost
	f.mu.Unlock()
	for {
		f.mu.Lock()
		if f.unavailable || isClosed(lost) {
			f.mu.Unlock()
			return fmt.Errorf("watch: %w: the fake executor went away", instances.ErrUnavailable)
		}
		if after > f.seq {
			seq := f.seq
			f.mu.Unlock()
			return fmt.Errorf("%w: sequence %d is newer than this executor's newest event %d; list instances and watch from the listing's sequence", instances.ErrFailedPrecondition, after, seq)
		}
		oldest := f.seq + 1 - uint64(len(f.history)) // the first kept sequence
		if after == 0 {
			after = oldest - 1 // from the oldest kept
		}
		if after+1 < oldest {
			f.mu.Unlock()
			return fmt.Errorf("watch after %d: %w (the oldest event kept is %d)", after, instances.ErrBehind, oldest)
		}
		evs := slices.Clone(f.history[after+1-oldest:])
		changed := f.changed
		f.mu.Unlock()
		for _, ev := range evs {
			after = ev.Sequence
			if id != "" && ev.ID != id {
				continue
			}
			if err := fn(ev); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-lost:
		case <-changed:
		}
	}
}

// Stats returns the started instances whose labels include selector, by
// ID; a fake instance uses no memory or CPU.
func (f *Fake) Stats(ctx context.Context, selector map[string]string) ([]instances.Stats, error) {
	if err := f.enter("Stats"); err != nil {
		return nil, err
	}
	defer f.mu.Unlock()
	var out []instances.Stats
	for _, in := range f.insts {
		if in.snap.StartedAt.IsZero() || !matches(in.snap.Spec.Labels, selector) {
			continue
		}
		out = append(out, instances.Stats{ID: in.snap.ID, State: in.snap.State, Labels: maps.Clone(in.snap.Spec.Labels), Time: f.Now(), CPUMeasured: true})
	}
	slices.SortFunc(out, func(a, b instances.Stats) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

func matches(labels, selector map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func cloneSpec(s instances.Spec) instances.Spec {
	s.Args = slices.Clone(s.Args)
	s.Env = slices.Clone(s.Env)
	s.Preopens = slices.Clone(s.Preopens)
	s.Labels = maps.Clone(s.Labels)
	s.Listeners = slices.Clone(s.Listeners)
	return s
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
