package prober

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
)

// ErrExecUnsupported is returned by New for a container with an exec probe.
var ErrExecUnsupported = errors.New("exec probes are not supported for Wasm pods: a WebAssembly module has no processes to exec into; use httpGet, tcpSocket or grpc")

// ErrInvalidProbe is returned by New for a probe that could never run: no
// handler or more than one, a port name the container does not declare, a
// threshold the API would refuse.
var ErrInvalidProbe = errors.New("invalid probe")

// DefaultUserAgent is what the kubelet of the Kubernetes minor this module is
// built against sends.
const DefaultUserAgent = "kube-probe/1.35"

// Event reasons, as the kubelet records them.
const (
	ReasonUnhealthy    = "Unhealthy"
	ReasonProbeWarning = "ProbeWarning"
)

// Kind is which of a container's probes a result is about.
type Kind int

const (
	Readiness Kind = iota + 1
	Liveness
	Startup
)

func (k Kind) String() string {
	switch k {
	case Readiness:
		return "Readiness"
	case Liveness:
		return "Liveness"
	case Startup:
		return "Startup"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// KillingMessage is the kubelet's Killing event text for a container whose
// liveness or startup probe failed.
func KillingMessage(container string, k Kind) string {
	return fmt.Sprintf("Container %s failed %s probe, will be restarted", container, lower(k))
}

func lower(k Kind) string {
	switch k {
	case Liveness:
		return "liveness"
	case Startup:
		return "startup"
	}
	return "readiness"
}

// Event is one event the kubelet would record for a probe: a Warning with
// reason Unhealthy for every failed run ("Readiness probe failed: ..."), or
// ProbeWarning for a success with a warning (a redirect to another host).
type Event struct {
	Kind    Kind
	Type    string // v1.EventTypeWarning
	Reason  string // ReasonUnhealthy or ReasonProbeWarning
	Message string
}

// Status is what a container's probes have found so far.
type Status struct {
	// Started: the startup probe has succeeded, or there is none.
	Started bool
	// Ready: started, and the readiness probe has succeeded successThreshold
	// times in a row since it last failed failureThreshold times; or started
	// and there is no readiness probe.
	Ready bool
	// Restart: the liveness (or startup) probe failed failureThreshold times
	// in a row. The Worker probes no more; kill the instance and let the
	// restart policy decide.
	Restart bool
	// RestartKind is Liveness or Startup when Restart is set.
	RestartKind Kind
	// Message is the last failure's text when Restart is set, as the kubelet
	// words it: "Liveness probe failed: HTTP probe failed with statuscode: 500".
	Message string
	// TerminationGracePeriodSeconds is the failed probe's own grace period
	// when Restart is set and it names one; nil means the pod's.
	TerminationGracePeriodSeconds *int64
}

// Clock is the time a Worker schedules by.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is a Clock's one-shot timer.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

type realClock struct{}

func (realClock) Now() time.Time                 { return time.Now() }
func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }

// Config is one container instance's probing.
type Config struct {
	// Container gives the probes and the ports they may name. Required.
	Container *v1.Container
	// PodIP is the host probes reach unless they name one.
	PodIP string
	// StartedAt is when this instance began running; initialDelaySeconds
	// counts from it. Zero means now.
	StartedAt time.Time
	// Record receives the events the kubelet would record. It is called on
	// the probing goroutine and must not block. Optional.
	Record func(Event)
	// UserAgent defaults to DefaultUserAgent.
	UserAgent string
	// Clock defaults to the real one.
	Clock Clock

	// unit is how long the API's "seconds" are; tests shorten it.
	unit time.Duration
	// onChange, for tests, sees every change of Status on the probing
	// goroutine, before Changed is signalled.
	onChange func(Status)
}

// probe is one of a container's probes and its run of results.
type probe struct {
	kind             Kind
	spec             *v1.Probe
	h                handler
	period, timeout  time.Duration
	success, failure int
	next             time.Time
	hasRun, last     bool
	run              int
}

// Worker runs one container instance's probes.
type Worker struct {
	clock     Clock
	record    func(Event)
	onChange  func(Status)
	startup   *probe
	liveness  *probe
	readiness *probe

	mu          sync.Mutex
	status      Status
	terminating bool
	changed     chan struct{}
	wake        chan struct{} // the schedule changed: look again

	startOnce, stopOnce sync.Once
	cancel              context.CancelFunc
	done                chan struct{}
}

// New validates the container's probes and returns a Worker that has not
// started probing. It returns an error wrapping ErrExecUnsupported for an exec
// probe and ErrInvalidProbe for one that could never run; both are meant to be
// shown to the user at admission.
func New(cfg Config) (*Worker, error) {
	if cfg.Container == nil {
		return nil, errors.New("prober: Config.Container is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = DefaultUserAgent
	}
	if cfg.unit == 0 {
		cfg.unit = time.Second
	}
	if cfg.StartedAt.IsZero() {
		cfg.StartedAt = cfg.Clock.Now()
	}
	w := &Worker{
		clock:    cfg.Clock,
		record:   cfg.Record,
		onChange: cfg.onChange,
		changed:  make(chan struct{}, 1),
		wake:     make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	var err error
	c := cfg.Container
	if w.startup, err = newProbe(Startup, c.StartupProbe, &cfg); err != nil {
		return nil, err
	}
	if w.liveness, err = newProbe(Liveness, c.LivenessProbe, &cfg); err != nil {
		w.closeHandlers()
		return nil, err
	}
	if w.readiness, err = newProbe(Readiness, c.ReadinessProbe, &cfg); err != nil {
		w.closeHandlers()
		return nil, err
	}
	w.status.Started = w.startup == nil
	w.status.Ready = w.status.Started && w.readiness == nil
	return w, nil
}

func newProbe(k Kind, spec *v1.Probe, cfg *Config) (*probe, error) {
	if spec == nil {
		return nil, nil
	}
	wrap := func(err error) error {
		return fmt.Errorf("%s probe of container %q: %w", lower(k), cfg.Container.Name, err)
	}
	p := &probe{kind: k, spec: spec.DeepCopy()}
	// The API server defaults these; a pod built by hand may not have been.
	period, timeout := orDefault(spec.PeriodSeconds, 10), orDefault(spec.TimeoutSeconds, 1)
	p.success, p.failure = int(orDefault(spec.SuccessThreshold, 1)), int(orDefault(spec.FailureThreshold, 3))
	switch {
	case spec.InitialDelaySeconds < 0, period < 0, timeout < 0, p.success < 0, p.failure < 0:
		return nil, wrap(fmt.Errorf("%w: negative delay, period, timeout or threshold", ErrInvalidProbe))
	case k != Readiness && p.success != 1:
		return nil, wrap(fmt.Errorf("%w: successThreshold must be 1 for %s probes", ErrInvalidProbe, lower(k)))
	}
	p.period = time.Duration(period) * cfg.unit
	p.timeout = time.Duration(timeout) * cfg.unit
	p.next = cfg.StartedAt.Add(time.Duration(spec.InitialDelaySeconds) * cfg.unit)
	h, err := newHandler(spec, cfg.Container, cfg.PodIP, cfg.UserAgent, p.timeout)
	if err != nil {
		return nil, wrap(err)
	}
	p.h = h
	return p, nil
}

func orDefault(v, d int32) int32 {
	if v == 0 {
		return d
	}
	return v
}

// Status returns what the probes have found so far.
func (w *Worker) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.status
	if s.TerminationGracePeriodSeconds != nil {
		g := *s.TerminationGracePeriodSeconds
		s.TerminationGracePeriodSeconds = &g
	}
	return s
}

// Changed receives after Status changes; several changes may be coalesced into
// one receive, so read Status after each. It is never closed.
func (w *Worker) Changed() <-chan struct{} { return w.changed }

// Start starts probing on a goroutine of its own. A container with no probes
// needs none, and gets none. Start may be called more than once; only the
// first call does anything, and none after Stop.
func (w *Worker) Start() {
	w.startOnce.Do(func() {
		if w.startup == nil && w.liveness == nil && w.readiness == nil {
			close(w.done)
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		w.cancel = cancel
		go w.loop(ctx)
	})
}

// Stop ends probing, cancelling a probe under way, and returns once the
// probing goroutine has ended. It may be called more than once, and before
// Start.
func (w *Worker) Stop() {
	w.startOnce.Do(func() { close(w.done) }) // never started: never will
	w.stopOnce.Do(func() {
		if w.cancel != nil {
			w.cancel()
		}
	})
	<-w.done
	w.closeHandlers()
}

func (w *Worker) closeHandlers() {
	for _, p := range []*probe{w.startup, w.liveness, w.readiness} {
		if p != nil {
			p.h.close()
		}
	}
}

// Terminating stops the liveness and startup probes of an instance that is
// being deleted, as the kubelet does when a pod is deleted, so that no probe
// calls for a restart during its grace period; readiness probing goes on. (The
// kubelet also counts a container that had not started as started then; here
// it stays unstarted and unready.) It may be called more than once.
func (w *Worker) Terminating() {
	w.mu.Lock()
	w.terminating = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// due returns the probes that may run now: the startup probe alone until it
// has succeeded, then the other two; none once a restart is called for, and
// readiness alone once the instance is terminating.
func (w *Worker) due() []*probe {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.status.Restart:
		return nil
	case !w.status.Started && w.terminating:
		return nil
	case !w.status.Started:
		return []*probe{w.startup}
	}
	var ps []*probe
	for _, p := range []*probe{w.liveness, w.readiness} {
		if p != nil && !(w.terminating && p.kind == Liveness) {
			ps = append(ps, p)
		}
	}
	return ps
}

func (w *Worker) loop(ctx context.Context) {
	defer close(w.done)
	for {
		ps := w.due()
		if len(ps) == 0 {
			return // a restart is called for, or nothing is left to probe
		}
		p := ps[0]
		for _, q := range ps[1:] {
			if q.next.Before(p.next) {
				p = q
			}
		}
		if d := p.next.Sub(w.clock.Now()); d > 0 {
			t := w.clock.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-w.wake:
				t.Stop()
				continue
			case <-t.C():
			}
		}
		if !w.runOnce(ctx, p) {
			return
		}
		// On period from when it was due; a run late by more than a period
		// (another probe took its whole timeout) counts from now instead, so
		// that missed runs are dropped rather than made up in a burst.
		now := w.clock.Now()
		if p.next = p.next.Add(p.period); p.next.Before(now) {
			p.next = now.Add(p.period)
		}
	}
}

// runOnce runs p once and applies its thresholds. It returns false when
// probing was stopped meanwhile; that run's result is thrown away.
func (w *Worker) runOnce(ctx context.Context, p *probe) bool {
	o := p.h.probe(ctx, p.timeout)
	if ctx.Err() != nil {
		return false
	}
	w.mu.Lock()
	stale := w.terminating && p.kind != Readiness
	w.mu.Unlock()
	if stale {
		return true // it ran as Terminating was called: its verdict no longer counts
	}
	if !o.ok {
		w.emit(Event{Kind: p.kind, Type: v1.EventTypeWarning, Reason: ReasonUnhealthy, Message: fmt.Sprintf("%s probe failed: %s", p.kind, o.output)})
	} else if o.warning {
		w.emit(Event{Kind: p.kind, Type: v1.EventTypeWarning, Reason: ReasonProbeWarning, Message: fmt.Sprintf("%s probe warning: %s", p.kind, o.output)})
	}

	if p.hasRun && p.last == o.ok {
		p.run++
	} else {
		p.hasRun, p.last, p.run = true, o.ok, 1
	}
	if (o.ok && p.run < p.success) || (!o.ok && p.run < p.failure) {
		return true // below its threshold: nothing changes yet
	}

	w.mu.Lock()
	if w.terminating && p.kind != Readiness {
		w.mu.Unlock()
		return true
	}
	old := w.status
	switch {
	case p.kind == Readiness:
		w.status.Ready = o.ok
	case o.ok && p.kind == Startup:
		w.status.Started = true
		w.status.Ready = w.readiness == nil
	case !o.ok: // liveness or startup
		w.status.Restart = true
		w.status.RestartKind = p.kind
		w.status.Message = fmt.Sprintf("%s probe failed: %s", p.kind, o.output)
		w.status.TerminationGracePeriodSeconds = p.spec.TerminationGracePeriodSeconds
	}
	now, changed := w.status, w.status != old
	w.mu.Unlock()
	if changed {
		if w.onChange != nil {
			w.onChange(now)
		}
		select {
		case w.changed <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
	return true
}

func (w *Worker) emit(e Event) {
	if w.record != nil {
		w.record(e)
	}
}
