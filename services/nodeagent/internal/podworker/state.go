package podworker

import (
	"context"
	"fmt"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/wasmlet/wasmlet/services/executor/instances"
)

// State is a named phase of a pod's lifecycle on the node. Each has a
// handler (handler) that reads the world and returns the next state.
type State string

// The states; the package doc shows what kubectl shows in each.
const (
	StateRegistered       State = "Registered"
	StatePulling          State = "Pulling"
	StatePullBackOff      State = "PullBackOff"
	StatePreparingVolumes State = "PreparingVolumes"
	StateInitializing     State = "Initializing"
	StateStarting         State = "Starting"
	StateRunning          State = "Running"
	StateCrashLoopBackOff State = "CrashLoopBackOff"
	StateCompleted        State = "Completed"
	StateTerminating      State = "Terminating"
	StateTerminated       State = "Terminated"
)

// transitions declares every move the handlers make; a state's staying
// where it is (a retry, a wait) is not a move. Terminating is reachable
// from every live state (a pod may be deleted at any time); Terminated is
// final. TestEveryTransitionWalked walks each one.
var transitions = map[State][]State{
	StateRegistered:       {StatePulling, StateTerminating},
	StatePulling:          {StatePreparingVolumes, StatePullBackOff, StateTerminating},
	StatePullBackOff:      {StatePulling, StateTerminating},
	StatePreparingVolumes: {StateInitializing, StateStarting, StateTerminating},
	StateInitializing:     {StateStarting, StateRunning, StateCrashLoopBackOff, StateCompleted, StateTerminating},
	StateStarting:         {StateRunning, StateCrashLoopBackOff, StateCompleted, StateTerminating},
	StateRunning:          {StateStarting, StateCrashLoopBackOff, StateCompleted, StateTerminating},
	StateCrashLoopBackOff: {StateInitializing, StateStarting, StateRunning, StateTerminating},
	StateCompleted:        {StateTerminating},
	StateTerminating:      {StateTerminated},
	StateTerminated:       {},
}

func checkTransition(from, to State) error {
	if from == to {
		return nil
	}
	for _, s := range transitions[from] {
		if s == to {
			return nil
		}
	}
	return fmt.Errorf("undeclared pod state transition %s -> %s", from, to)
}

// handler is s's handler. Each runs on Run's goroutine with the work's
// context, which Terminate cancels; Run then moves to Terminating.
func (w *Worker) handler(s State) func(ctx context.Context) State {
	switch s {
	case StateRegistered:
		return func(context.Context) State { return StatePulling }
	case StatePulling:
		return w.pulling
	case StatePullBackOff:
		return w.pullBackOff
	case StatePreparingVolumes:
		return w.preparingVolumes
	case StateInitializing, StateStarting, StateRunning, StateCrashLoopBackOff, StateCompleted:
		return w.converge
	}
	return nil // Terminating runs with Run's own context; Terminated is final
}

// pulling resolves every container's module; a failure shows ErrImagePull
// for a moment, then PullBackOff.
func (w *Worker) pulling(ctx context.Context) State {
	failed, err := w.resolveAllPublishing(ctx, w.current(), w.pull.attempt == 0)
	if err == nil {
		return StatePreparingVolumes
	}
	if ctx.Err() != nil {
		return StatePulling
	}
	delay := w.deps.Backoff.Delay(w.pull.attempt)
	msg := err.Error()
	w.log.Warn("image pull failed", "container", failed.spec.Name, "image", failed.spec.Image, "err", err, "retry_in", delay)
	w.event(v1.EventTypeWarning, "Failed", "Failed to pull image %q: %s", failed.spec.Image, msg)
	w.event(v1.EventTypeWarning, "Failed", "Error: ErrImagePull")
	failed.state = waiting("ErrImagePull", msg)
	w.publish()
	w.pull.failed, w.pull.msg, w.pull.delay = failed, msg, delay
	if !sleep(ctx, min(delay, 2*time.Second)) {
		return StatePulling
	}
	return StatePullBackOff
}

// pullBackOff waits out the rest of the pull's back-off.
func (w *Worker) pullBackOff(ctx context.Context) State {
	f := w.pull.failed
	f.state = waiting("ImagePullBackOff", fmt.Sprintf("Back-off pulling image %q: %s", f.spec.Image, w.pull.msg))
	w.event(v1.EventTypeNormal, "BackOff", "Back-off pulling image %q", f.spec.Image)
	w.publish()
	sleep(ctx, w.pull.delay-min(w.pull.delay, 2*time.Second))
	w.pull.attempt++
	return StatePulling
}

// converge is the handler of the states in which instances run
// (Initializing, Starting, Running, CrashLoopBackOff, Completed), sample-
// controller's loop: it applies what the executor reported, starts the
// containers due, and names the state the containers are in; while that
// stays the same it publishes the status and waits for the next change,
// restart or periodic sync.
func (w *Worker) converge(ctx context.Context) State {
	current := w.State()
	w.drain()
	w.startDue(ctx)
	w.syncProbes(ctx)
	if next := w.assess(); next != current {
		return next
	}
	w.publish()
	next := time.Duration(-1)
	for _, c := range w.all() {
		if !c.restartAt.IsZero() {
			if d := time.Until(c.restartAt); next < 0 || d < next {
				next = max(d, 0)
			}
		}
	}
	if next < 0 {
		next = time.Hour
	}
	timer := time.NewTimer(next)
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-w.wake:
	case <-timer.C:
	case <-w.refresh:
		w.refreshVolumes(ctx)
		w.checkEmptyDirLimits()
	case <-w.resyncs:
		w.resync(ctx)
	}
	return current
}

// active is what may run now: the first init container that has not
// ended for good, or the containers once every init container succeeded;
// none when one failed for good.
func (w *Worker) active() []*ctr {
	for _, c := range w.inits {
		if !c.finished {
			return []*ctr{c}
		}
		if t := c.state.Terminated; t == nil || t.ExitCode != 0 {
			return nil
		}
	}
	return w.containers
}

// assess names the state the containers are in.
func (w *Worker) assess() State {
	active := w.active()
	if len(active) == 0 {
		return StateCompleted // an init container failed for good
	}
	if c := active[0]; c.init {
		if c.backingOff() {
			return StateCrashLoopBackOff
		}
		return StateInitializing
	}
	finished, running, backingOff := true, true, false
	for _, c := range active {
		if !c.finished {
			finished = false
			running = running && c.state.Running != nil
		}
		backingOff = backingOff || c.backingOff()
	}
	switch {
	case finished:
		return StateCompleted
	case backingOff:
		return StateCrashLoopBackOff
	case running:
		return StateRunning
	}
	return StateStarting
}

// backingOff reports whether c waits out a crash loop's back-off.
func (c *ctr) backingOff() bool {
	return !c.restartAt.IsZero() && c.state.Waiting != nil && c.state.Waiting.Reason == "CrashLoopBackOff"
}

// listResult is what a resync's list found.
type listResult struct {
	began uint64 // Worker.creates when it began
	list  []instances.Instance
	err   error
}

// resync lists the pod's instances again, as level-based controllers
// re-read the world: a change whose event was missed is applied, and an
// instance the Worker believes live that the executor no longer has is
// lost (drain). The list runs on a goroutine of its own, so that a slow
// executor holds up neither restarts nor the status; one at a time. Its
// result names the creations that returned before it began: only those
// instances can be judged by it (one created while it ran may be missing
// from it and still live).
func (w *Worker) resync(ctx context.Context) {
	if w.listing {
		return
	}
	w.listing = true
	res := &listResult{began: w.creates}
	selector := map[string]string{LabelPodUID: string(w.current().UID)}
	w.lists.Add(1)
	go func() {
		defer w.lists.Done()
		lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		res.list, _, res.err = w.deps.Executor.List(lctx, selector)
		w.mu.Lock()
		w.listed = res
		w.mu.Unlock()
		w.poke()
	}()
}

// terminate stops every instance within the grace period, publishes the
// pod's final status and releases what the pod held.
func (w *Worker) terminate(ctx context.Context) State {
	w.mu.Lock()
	grace := time.Duration(0)
	if w.grace != nil {
		grace = *w.grace
	}
	w.mu.Unlock()
	w.drain()
	for _, c := range w.containers {
		w.stopProbes(c)
		c.unready = false
	}
	var wg sync.WaitGroup
	all := w.all()
	results := make([]instances.Instance, len(all))
	for i, c := range all {
		if c.instanceID == "" || c.state.Terminated != nil {
			continue
		}
		w.event(v1.EventTypeNormal, "Killing", "Stopping container %s", c.spec.Name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, grace+30*time.Second)
			defer cancel()
			inst, err := w.deps.Executor.Stop(sctx, c.instanceID, grace)
			if err != nil {
				w.log.Warn("stop instance failed", "instance", c.instanceID, "err", err)
				return
			}
			results[i] = inst
		}()
	}
	wg.Wait()
	now := time.Now()
	for i, c := range all {
		w.apply(c, results[i])
		c.restartAt = time.Time{}
		c.finished = true
		if c.state.Terminated == nil {
			c.state = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{
				ExitCode: 137, Reason: "Killed", Message: "the pod was deleted before this container ended",
				StartedAt: ts(now), FinishedAt: ts(now),
			}}
		}
		if c.instanceID != "" {
			w.forget(c.instanceID)
		}
	}
	w.unpin(ctx)
	w.teardownNetwork(ctx)
	if w.deps.VolumeDir != "" {
		if err := RemoveVolumes(w.deps.VolumeDir); err != nil {
			w.log.Warn("remove pod volumes failed", "dir", w.deps.VolumeDir, "err", err)
		}
	}
	w.setState(StateTerminated)
	w.publish()
	return StateTerminated
}
