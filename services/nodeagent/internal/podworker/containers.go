package podworker

import (
	"context"
	"errors"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// ctr is the Worker's view of one container. Owned by Run's goroutine.
type ctr struct {
	spec       v1.Container
	image      regcache.Resolved
	instanceID string
	previousID string
	restarts   int32
	state      v1.ContainerState
	last       v1.ContainerState
	backoff    backoffState
	delay      time.Duration // the delay of the restart pending
	restartAt  time.Time     // zero: no restart pending
	seq        uint64        // the executor's sequence of the newest change of instanceID applied
	created    uint64        // Worker.creates once instanceID's creation (or adoption) returned
	failedSeq  uint64        // the executor's sequence of the last FAILED instance applied
	started    bool          // a first start was made
	finished   bool          // ended and will not run again
	init       bool          // an init container
	// adoptChecked: the executor was asked once for an instance left by an
	// earlier life of the node agent.
	adoptChecked bool
	probes       *probing // the running instance's probes; nil: none
	probeKilled  string   // the instance stopped for a failed liveness or startup probe
	unready      bool     // its readiness probe has not passed
	// selfListen: the executor opens this attempt's listeners itself
	// (ErrExecutorListens), and why, with what to do should it fail.
	selfListen string
}

// all returns the init containers and the containers.
func (w *Worker) all() []*ctr {
	return append(append([]*ctr{}, w.inits...), w.containers...)
}

func (w *Worker) start(ctx context.Context, c *ctr) {
	pod := w.current()
	c.restartAt = time.Time{}
	// Only a pod that some life of the node agent has started can have
	// instances to adopt, and such a life wrote its startTime, unless it
	// stopped first: then the instance it made has this attempt's ID (IDs
	// are derived from the pod), and the create below finds it. A new pod
	// skips the executor round trip.
	if c.instanceID == "" && !c.adoptChecked && pod.Status.StartTime != nil {
		c.adoptChecked = true
		if w.adopt(ctx, pod, c) {
			return
		}
	}
	env, err := resolveEnv(ctx, w.deps.Client, pod, &c.spec, w.deps.NodeIP)
	if err != nil {
		w.failStart(c, "CreateContainerConfigError", err.Error())
		return
	}
	id := instanceID(pod, c.spec.Name, c.restarts)
	spec, err := instanceSpec(pod, &c.spec, specInput{
		digest: c.image.ModuleDigest, env: env, volumes: w.volumes, restarts: c.restarts,
		logSubject: w.deps.LogSubject(pod.Namespace, pod.Name, c.spec.Name),
	})
	if err != nil {
		w.failStart(c, "CreateContainerConfigError", err.Error())
		return
	}
	if err := w.serve(ctx, c, id, &spec); err != nil {
		if ctx.Err() == nil {
			w.failStart(c, "CreateContainerError", err.Error())
		}
		return
	}
	inst, err := w.createPublishing(ctx, id, spec)
	switch {
	case errors.Is(err, instances.ErrAlreadyExists):
		// Created by an earlier life of this node agent: adopt it.
		if inst, err = w.deps.Executor.Get(ctx, id); err != nil {
			w.failStart(c, "CreateContainerError", err.Error())
			return
		}
	case err != nil:
		if ctx.Err() != nil {
			return
		}
		w.failStart(c, "CreateContainerError", err.Error())
		return
	default:
		if inst.State != instances.StateFailed {
			w.event(v1.EventTypeNormal, "Created", "Created container %s", c.spec.Name)
		}
	}
	if c.instanceID != "" && c.instanceID != id {
		c.previousID = c.instanceID
		w.forget(c.previousID)
	}
	w.creates++
	c.instanceID, c.seq, c.created = id, 0, w.creates
	w.mu.Lock()
	w.ids[c.spec.Name] = [2]string{c.instanceID, c.previousID}
	w.mu.Unlock()
	if inst.State != instances.StateFailed {
		w.event(v1.EventTypeNormal, "Started", "Started container %s", c.spec.Name)
	}
	w.apply(c, inst)
}

// adopt takes over the newest instance of this container that an earlier
// life of the node agent started, so that a node-agent restart neither
// restarts a healthy container nor starts a duplicate. Older instances of
// the container are deleted. It reports whether one was adopted.
func (w *Worker) adopt(ctx context.Context, pod *v1.Pod, c *ctr) bool {
	list, _, err := w.deps.Executor.List(ctx, map[string]string{
		LabelPodUID: string(pod.UID), LabelContainer: c.spec.Name,
	})
	if err != nil || len(list) == 0 {
		return false
	}
	var newest *instances.Instance
	newestAttempt := int32(-1)
	for _, inst := range list {
		attempt, ok := attempt(pod, c.spec.Name, inst)
		if !ok {
			continue
		}
		if attempt > newestAttempt {
			if newest != nil {
				w.forget(newest.ID)
			}
			newest, newestAttempt = &inst, attempt
		} else {
			w.forget(inst.ID)
		}
	}
	if newest == nil {
		return false
	}
	w.log.Info("adopted running instance", "container", c.spec.Name, "instance", newest.ID, "state", newest.State)
	c.restarts = newestAttempt
	w.creates++
	c.instanceID, c.seq, c.created = newest.ID, 0, w.creates
	w.mu.Lock()
	w.ids[c.spec.Name] = [2]string{c.instanceID, ""}
	w.mu.Unlock()
	w.apply(c, *newest)
	return true
}

// forget deletes an ended instance from its executor; its output stays in NATS.
func (w *Worker) forget(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.deps.Executor.Delete(ctx, id, true); err != nil && !errors.Is(err, instances.ErrNotFound) {
		w.log.Warn("delete instance failed", "instance", id, "err", err)
	}
}

// failStart records a container that could not be started and schedules a
// retry under the restart policy's back-off.
func (w *Worker) failStart(c *ctr, reason, msg string) {
	w.log.Warn("container start failed", "container", c.spec.Name, "reason", reason, "err", msg)
	w.event(v1.EventTypeWarning, "Failed", "Error: %s", msg)
	c.state = waiting(reason, msg)
	// Like the kubelet, retry a container that could not be created whatever
	// the restart policy: the cause (a missing config map, an executor at
	// capacity) may go away.
	if !w.terminating() {
		c.delay = c.backoff.next(w.deps.Backoff)
		c.restartAt = time.Now().Add(c.delay)
	}
	w.publish()
}

// apply folds an instance's state into its container.
func (w *Worker) apply(c *ctr, in instances.Instance) {
	if in.ID == "" || in.ID != c.instanceID || in.Sequence != 0 && in.Sequence < c.seq {
		return // not this container's instance, or older than what was applied
	}
	c.seq = max(c.seq, in.Sequence)
	state := containerState(in, time.Now())
	switch in.State {
	case instances.StateCreated, instances.StateRunning:
		c.state = state
	case instances.StateFailed:
		if in.Sequence != 0 && in.Sequence <= c.failedSeq {
			return // already applied (the create reply and the watch both carry it)
		}
		c.failedSeq = in.Sequence
		// The failed instance keeps this attempt's ID; delete it so that the
		// retry creates the instance anew rather than finding this one.
		w.forget(in.ID)
		msg := state.Waiting.Message
		if in.Reason == instances.ReasonListenFailed && c.selfListen != "" {
			msg += "; " + c.selfListen
		}
		w.failStart(c, state.Waiting.Reason, msg)
	case instances.StateExited, instances.StateKilled:
		if t := c.state.Terminated; t != nil && t.ContainerID == state.Terminated.ContainerID {
			return // already applied
		}
		c.state = state
		w.scheduleRestart(c)
	}
}

// scheduleRestart applies the restart policy to a container that ended.
func (w *Worker) scheduleRestart(c *ctr) {
	t := c.state.Terminated
	policy := w.current().Spec.RestartPolicy
	restart := shouldRestart(policy, t.ExitCode)
	// As the kubelet: a container stopped for a failed liveness or startup
	// probe restarts under any policy but Never, however it ended (a
	// handler drained in its grace period exits 0).
	if c.probeKilled != "" && c.probeKilled == c.instanceID && policy != v1.RestartPolicyNever {
		restart = true
	}
	if c.init {
		// An init container runs to a zero exit; under Never, a failed one
		// fails the pod and its containers never start.
		restart = t.ExitCode != 0 && policy != v1.RestartPolicyNever
	}
	if !restart || w.terminating() {
		c.finished = true
		if c.init && t.ExitCode != 0 {
			for _, cc := range w.containers {
				cc.finished = true
			}
		}
		return
	}
	c.delay = c.backoff.restartDelay(w.deps.Backoff, c.restarts, t.FinishedAt.Sub(t.StartedAt.Time))
	c.restartAt = time.Now().Add(c.delay)
	if c.delay > 0 {
		w.event(v1.EventTypeWarning, "BackOff", "Back-off restarting failed %s %s in pod %s", c.kind(), c.spec.Name, w.current().Name)
	}
}

// kind is how messages name c.
func (c *ctr) kind() string {
	if c.init {
		return "init container"
	}
	return "container"
}

// drain applies what reached the Worker since it last looked: instance
// changes, the executor's loss, and a resync's list.
func (w *Worker) drain() {
	w.mu.Lock()
	pending, lost, listed := w.pending, w.lostAll, w.listed
	w.pending, w.lostAll, w.listed = nil, "", nil
	w.mu.Unlock()
	for _, inst := range pending {
		w.applyByID(inst)
	}
	if lost != "" {
		for _, c := range w.all() {
			if c.live() {
				w.lose(c, "ExecutorLost", lost)
			}
		}
	}
	if listed != nil {
		w.listing = false
		w.applyList(listed)
	}
}

func (w *Worker) applyByID(inst instances.Instance) {
	for _, c := range w.all() {
		if c.instanceID == inst.ID {
			w.apply(c, inst)
		}
	}
}

// applyList applies a resync's list, level-based: what it shows is
// applied (older than what was applied is ignored), and an instance the
// Worker believes live that it lacks is lost: deleted on the executor by
// someone else, or the executor restarted with its identity and without
// its instances, which the pool does not see. A list that failed proves
// nothing (the next resync tries again), and one that began before an
// instance's creation returned cannot judge that instance.
func (w *Worker) applyList(r *listResult) {
	if r.err != nil {
		w.log.Warn("list instances to resync failed", "err", r.err)
		return
	}
	listed := make(map[string]bool, len(r.list))
	for _, inst := range r.list {
		listed[inst.ID] = true
		w.applyByID(inst)
	}
	for _, c := range w.all() {
		if c.live() && c.created <= r.began && !listed[c.instanceID] {
			w.log.Warn("instance missing from its executor", "container", c.spec.Name, "instance", c.instanceID)
			w.lose(c, "InstanceLost", fmt.Sprintf(
				"instance %s is no longer on its executor (deleted there, or the executor restarted without it); the pod's restart policy decides whether it runs again",
				c.instanceID))
		}
	}
}

// live reports whether c has an instance that has not been seen to end
// and no restart is due: one that can be lost.
func (c *ctr) live() bool {
	return c.instanceID != "" && c.state.Terminated == nil && c.restartAt.IsZero()
}

// lose ends c's live instance as lost, for reason, and applies the
// restart policy as to a crash.
func (w *Worker) lose(c *ctr, reason, msg string) {
	now := time.Now()
	started := now
	if r := c.state.Running; r != nil {
		started = r.StartedAt.Time
	}
	c.state = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{
		ExitCode: 137, Reason: reason, Message: msg,
		StartedAt: ts(started), FinishedAt: ts(now), ContainerID: containerIDPrefix + c.instanceID,
	}}
	w.event(v1.EventTypeWarning, "Failed", "Container %s was lost: %s", c.spec.Name, msg)
	w.scheduleRestart(c)
}

// startDue starts what may run now and has not started, and restarts
// what is due.
func (w *Worker) startDue(ctx context.Context) {
	active := w.active()
	for _, c := range active {
		if c.started || ctx.Err() != nil {
			continue
		}
		c.started = true
		if !c.init {
			c.state = waiting("ContainerCreating", "")
		}
		w.start(ctx, c)
	}
	w.restartDue(ctx, active)
}

// restartDue starts again the active containers whose restart is due;
// those still waiting for it show CrashLoopBackOff, as the kubelet's do.
func (w *Worker) restartDue(ctx context.Context, active []*ctr) {
	now := time.Now()
	for _, c := range active {
		if c.restartAt.IsZero() || c.restartAt.After(now) || ctx.Err() != nil {
			continue
		}
		if c.state.Terminated != nil {
			c.last = c.state
			c.restarts++
		}
		w.start(ctx, c)
	}
	for _, c := range active {
		if !c.restartAt.IsZero() && c.restartAt.After(now) && c.state.Terminated != nil {
			c.last = c.state
			c.restarts++
			c.state = waiting("CrashLoopBackOff", fmt.Sprintf("back-off %s restarting failed %s=%s pod=%s",
				c.delay, c.kind(), c.spec.Name, w.current().Name))
		}
	}
}
