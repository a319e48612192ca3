package podworker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// DefaultVolumeRefresh is the kubelet's sync period.
const DefaultVolumeRefresh = time.Minute

// Deps is what a Worker needs. All fields are required unless noted.
type Deps struct {
	Client kubernetes.Interface
	Cache  regcache.Cache
	// Executor runs the pod's instances (a proxy to the replica the pod is
	// bound to).
	Executor instances.Runtime
	Recorder record.EventRecorder
	NodeIP   string
	// LogSubject names the NATS subject of a container's output.
	LogSubject func(namespace, pod, container string) string
	// VolumeDir is this pod's directory for its emptyDir volumes.
	VolumeDir string
	Backoff   Backoff // zero: DefaultBackoff
	// VolumeRefresh is how often configMap, secret, downwardAPI and
	// projected volumes are written again from their sources, as the
	// kubelet's periodic sync does (and so that service-account tokens are
	// renewed); 0 means DefaultVolumeRefresh.
	VolumeRefresh time.Duration
	// AllowedHostPaths are the host directories (and what is below them)
	// that hostPath volumes may name; empty: none.
	AllowedHostPaths []string
	// Notify receives the pod each time its status changes: its metadata
	// (without managedFields) and its new status, and no spec, which a
	// status write never changes. It may block briefly; it must not call
	// back into the Worker.
	Notify func(*v1.Pod)
	Log    *slog.Logger // optional
}

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
	failedSeq  uint64        // the executor's sequence of the last FAILED instance applied
	finished   bool          // ended and will not run again
	init       bool          // an init container: runInits decides its restarts
	// adoptChecked: the executor was asked once for an instance left by an
	// earlier life of the node agent.
	adoptChecked bool
}

// Worker runs one pod. Its methods other than Run are safe to call from any
// goroutine, any number of times.
type Worker struct {
	deps Deps
	log  *slog.Logger

	mu         sync.Mutex
	pod        *v1.Pod // latest spec, and the status last built
	state      State
	pending    []instances.Instance
	lostAll    string // non-empty: every instance was lost, for this reason
	grace      *time.Duration
	cancelWork context.CancelFunc
	ids        map[string][2]string // container -> current, previous instance id

	wake chan struct{}
	done chan struct{}

	inits      []*ctr // init containers, run in order before containers
	containers []*ctr
	volumes    map[string]string // volume name -> host dir
	tokensAt   time.Time         // when service-account tokens were last written
	failReason string            // a pod-level failure (DeadlineExceeded)
	failMsg    string
}

// New returns a Worker for pod; call Run to start it.
func New(deps Deps, pod *v1.Pod) *Worker {
	if deps.Backoff == (Backoff{}) {
		deps.Backoff = DefaultBackoff
	}
	if deps.VolumeRefresh <= 0 {
		deps.VolumeRefresh = DefaultVolumeRefresh
	}
	log := deps.Log
	if log == nil {
		log = slog.Default()
	}
	w := &Worker{
		deps:  deps,
		log:   log.With("pod", pod.Namespace+"/"+pod.Name),
		pod:   pod.DeepCopy(),
		state: StateRegistered,
		ids:   map[string][2]string{},
		wake:  make(chan struct{}, 1),
		done:  make(chan struct{}),
	}
	for _, c := range pod.Spec.InitContainers {
		w.inits = append(w.inits, &ctr{spec: c, init: true, state: waiting("PodInitializing", "")})
	}
	for _, c := range pod.Spec.Containers {
		reason := "ContainerCreating"
		if len(w.inits) > 0 {
			reason = "PodInitializing"
		}
		w.containers = append(w.containers, &ctr{spec: c, state: waiting(reason, "")})
	}
	return w
}

// Pod returns a copy of the pod with the status the Worker last built.
func (w *Worker) Pod() *v1.Pod {
	return w.current().DeepCopy()
}

// current returns the pod with the status the Worker last built, for the
// Worker's own reading: w.pod is replaced (Update, publish), never changed
// in place, so what it returns stays as it was and must not be modified.
// (A deep copy per read was 6% of the node agent's CPU in a burst.)
func (w *Worker) current() *v1.Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pod
}

// State is the pod's current named state.
func (w *Worker) State() State {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state
}

// InstanceIDs returns the current and the previous instance of a container
// (either may be empty), for logs.
func (w *Worker) InstanceIDs(container string) (current, previous string, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, cs := range [][]v1.Container{w.pod.Spec.InitContainers, w.pod.Spec.Containers} {
		for _, c := range cs {
			if c.Name == container {
				ids := w.ids[container]
				return ids[0], ids[1], true
			}
		}
	}
	return "", "", false
}

// Update takes a newer version of the pod's object (labels, annotations,
// deletion timestamp); the spec of a running pod does not change.
func (w *Worker) Update(pod *v1.Pod) {
	w.mu.Lock()
	defer w.mu.Unlock()
	np := pod.DeepCopy()
	np.Status = w.pod.Status
	w.pod = np
}

// InstanceChanged hands the Worker a state change of one of its instances.
func (w *Worker) InstanceChanged(inst instances.Instance) {
	w.mu.Lock()
	w.pending = append(w.pending, inst)
	w.mu.Unlock()
	w.poke()
}

// InstancesLost tells the Worker that every instance it had is gone (its
// executor died): the restart policy applies as to a crash.
func (w *Worker) InstancesLost(reason string) {
	w.mu.Lock()
	w.lostAll = reason
	w.mu.Unlock()
	w.poke()
}

// Terminate asks the Worker to stop the pod: instances get grace to end on
// their own, then are killed; the final status is then published. Only the
// first call's grace counts.
func (w *Worker) Terminate(grace time.Duration) {
	w.mu.Lock()
	if w.grace == nil {
		w.grace = &grace
		if w.cancelWork != nil {
			w.cancelWork()
		}
	}
	w.mu.Unlock()
	w.poke()
}

// Done is closed when Run has returned.
func (w *Worker) Done() <-chan struct{} { return w.done }

func (w *Worker) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *Worker) setState(s State) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := checkTransition(w.state, s); err != nil {
		w.log.Error("refusing pod state change", "from", w.state, "to", s, "err", err)
		return
	}
	if w.state != s {
		w.log.Debug("pod state", "from", w.state, "to", s)
	}
	w.state = s
}

// Run drives the pod until it is terminated or ctx ends. When ctx ends (the
// node agent is stopping) instances are left running, to be re-adopted.
func (w *Worker) Run(ctx context.Context) {
	defer close(w.done)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w.mu.Lock()
	w.cancelWork = cancel
	terminating := w.grace != nil
	w.mu.Unlock()

	if pod := w.current(); pod.Spec.ActiveDeadlineSeconds != nil {
		// The active deadline counts from the pod's start on the node (an
		// earlier life of the node agent may have started it) and ends only
		// a pod that is still active.
		deadline := *pod.Spec.ActiveDeadlineSeconds
		start := time.Now()
		if pod.Status.StartTime != nil {
			start = pod.Status.StartTime.Time
		}
		t := time.AfterFunc(time.Until(start.Add(time.Duration(deadline)*time.Second)), func() {
			w.mu.Lock()
			if phase := w.pod.Status.Phase; phase == v1.PodSucceeded || phase == v1.PodFailed {
				w.mu.Unlock()
				return
			}
			w.failReason = "DeadlineExceeded"
			w.failMsg = fmt.Sprintf("Pod was active on the node longer than the specified deadline (%ds)", deadline)
			w.mu.Unlock()
			w.Terminate(0)
		})
		defer t.Stop()
	}
	if !terminating && w.pull(wctx) && w.prepareVolumes(wctx) && w.runInits(wctx) {
		w.setState(StateStarting)
		for _, c := range w.containers {
			w.start(wctx, c)
		}
		w.loop(wctx)
	} else if !terminating && wctx.Err() == nil {
		// A pod whose init containers failed for good waits until deleted.
		<-wctx.Done()
	}
	if ctx.Err() != nil {
		return
	}
	w.terminate(ctx)
}

// statusDelay is how long a pod may go without its first status from the
// node: a module that is cached starts sooner, and then the pod's first
// status write is already Running (one write instead of two).
const statusDelay = 100 * time.Millisecond

func (w *Worker) pull(ctx context.Context) bool {
	pod := w.current()
	for attempt := 0; ; attempt++ {
		w.setState(StatePulling)
		failed, err := w.resolveAllPublishing(ctx, pod, attempt == 0)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		delay := w.deps.Backoff.Delay(attempt)
		msg := err.Error()
		w.log.Warn("image pull failed", "container", failed.spec.Name, "image", failed.spec.Image, "err", err, "retry_in", delay)
		w.event(v1.EventTypeWarning, "Failed", "Failed to pull image %q: %s", failed.spec.Image, msg)
		w.event(v1.EventTypeWarning, "Failed", "Error: ErrImagePull")
		failed.state = waiting("ErrImagePull", msg)
		w.publish()
		first := min(delay, 2*time.Second)
		if !sleep(ctx, first) {
			return false
		}
		w.setState(StatePullBackOff)
		failed.state = waiting("ImagePullBackOff", fmt.Sprintf("Back-off pulling image %q: %s", failed.spec.Image, msg))
		w.event(v1.EventTypeNormal, "BackOff", "Back-off pulling image %q", failed.spec.Image)
		w.publish()
		if !sleep(ctx, delay-first) {
			return false
		}
	}
}

// resolveAllPublishing resolves in the background and, if that takes
// longer than statusDelay (a pull from the origin), publishes the pod's
// ContainerCreating status meanwhile.
func (w *Worker) resolveAllPublishing(ctx context.Context, pod *v1.Pod, first bool) (*ctr, error) {
	type result struct {
		res    map[*ctr]regcache.Resolved
		failed *ctr
		err    error
	}
	done := make(chan result, 1)
	go func() {
		res, failed, err := w.resolveAll(ctx, pod)
		done <- result{res, failed, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(statusDelay):
		if first {
			w.publish()
		}
		r = <-done
	}
	for c, res := range r.res {
		c.image = res
	}
	return r.failed, r.err
}

// resolveAll resolves every container's module that is not yet resolved.
// It runs outside Run's goroutine, so it only reads the containers.
func (w *Worker) resolveAll(ctx context.Context, pod *v1.Pod) (map[*ctr]regcache.Resolved, *ctr, error) {
	out := map[*ctr]regcache.Resolved{}
	creds, err := pullCredentials(ctx, w.deps.Client, pod)
	if err != nil {
		return out, w.all()[0], err
	}
	for _, c := range w.all() {
		if c.image.ModuleDigest != "" {
			continue
		}
		start := time.Now()
		// Like the kubelet, say "Pulling" only for a pull that takes time: a
		// module the cache holds is just reported Pulled.
		pulling := time.AfterFunc(statusDelay, func() {
			w.event(v1.EventTypeNormal, "Pulling", "Pulling image %q", c.spec.Image)
		})
		res, err := w.deps.Cache.Resolve(ctx, regcache.ResolveRequest{
			Reference:   c.spec.Image,
			Policy:      pullPolicy(c.spec.ImagePullPolicy),
			Credentials: creds,
			// Held until the pod is terminated: a cache with a size budget
			// never evicts the module of a pod on the node.
			PinHolder: w.pinHolder(pod),
		})
		pulling.Stop()
		if err != nil {
			return out, c, err
		}
		if res.Warning != "" {
			w.event(v1.EventTypeWarning, "PullWarning", "%s", res.Warning)
		}
		w.event(v1.EventTypeNormal, "Pulled", "Successfully pulled image %q in %s (module %s, %d bytes)",
			c.spec.Image, time.Since(start).Round(time.Millisecond), res.ModuleDigest, res.ModuleSize)
		out[c] = res
	}
	return out, nil, nil
}

func (w *Worker) pinHolder(pod *v1.Pod) string { return "pod/" + string(pod.UID) }

// unpin releases the pod's pins on its modules, where the cache pins.
func (w *Worker) unpin(ctx context.Context) {
	p, ok := w.deps.Cache.(regcache.Pinner)
	if !ok {
		return
	}
	if err := p.Unpin(ctx, regcache.UnpinRequest{Holder: w.pinHolder(w.current())}); err != nil {
		w.log.Warn("unpin modules failed", "err", err)
	}
}

func pullPolicy(p v1.PullPolicy) regcache.PullPolicy {
	switch p {
	case v1.PullAlways:
		return regcache.PullAlways
	case v1.PullNever:
		return regcache.PullNever
	}
	return regcache.PullIfNotPresent
}

// prepareVolumes makes every volume a directory to preopen, retrying with
// back-off while a source (a config map, a secret, a token) cannot be read.
func (w *Worker) prepareVolumes(ctx context.Context) bool {
	w.setState(StatePreparingVolumes)
	pod := w.current()
	src := &volumeSource{client: w.deps.Client, pod: pod, hostIP: w.deps.NodeIP, allowedRoots: w.deps.AllowedHostPaths, log: w.log}
	for attempt := 0; ; attempt++ {
		w.volumes = map[string]string{}
		var err error
		for _, v := range pod.Spec.Volumes {
			var dir string
			if dir, err = src.prepare(ctx, filepath.Join(w.deps.VolumeDir, v.Name), v); err != nil {
				err = fmt.Errorf("volume %q: %w", v.Name, err)
				break
			}
			w.volumes[v.Name] = dir
		}
		if err == nil {
			w.tokensAt = time.Now()
			return ctx.Err() == nil
		}
		if ctx.Err() != nil {
			return false
		}
		w.log.Warn("volume setup failed", "err", err)
		w.event(v1.EventTypeWarning, "FailedMount", "MountVolume.SetUp failed: %v", err)
		for _, c := range w.all() {
			c.state = waiting("CreateContainerConfigError", err.Error())
		}
		w.publish()
		if !sleep(ctx, w.deps.Backoff.Delay(attempt)) {
			return false
		}
	}
}

// runInits runs the init containers in order, each to a zero exit. A failed
// one is retried with back-off, unless the restart policy is Never: then the
// pod has failed.
func (w *Worker) runInits(ctx context.Context) bool {
	for _, c := range w.inits {
		for {
			w.setState(StateStarting)
			w.start(ctx, c)
			for c.state.Terminated == nil && ctx.Err() == nil {
				w.publish()
				if !c.restartAt.IsZero() { // could not be created: retry after back-off
					if !sleep(ctx, time.Until(c.restartAt)) {
						return false
					}
					w.start(ctx, c)
					continue
				}
				select {
				case <-ctx.Done():
				case <-w.wake:
					w.drain()
				}
			}
			if ctx.Err() != nil {
				return false
			}
			if c.state.Terminated.ExitCode == 0 {
				c.finished = true
				break
			}
			if w.current().Spec.RestartPolicy == v1.RestartPolicyNever {
				c.finished = true
				for _, cc := range w.containers {
					cc.finished = true
				}
				w.publish()
				return false
			}
			c.last = c.state
			c.restarts++
			delay := c.backoff.next(w.deps.Backoff)
			c.state = waiting("CrashLoopBackOff", fmt.Sprintf("back-off %s restarting failed init container=%s pod=%s", delay, c.spec.Name, w.current().Name))
			w.event(v1.EventTypeWarning, "BackOff", "Back-off restarting failed init container %s in pod %s", c.spec.Name, w.current().Name)
			w.publish()
			if !sleep(ctx, delay) {
				return false
			}
		}
	}
	for _, c := range w.containers {
		c.state = waiting("ContainerCreating", "")
	}
	return true
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
	inst, err := w.deps.Executor.Create(ctx, id, spec, true)
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
	c.instanceID = id
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
	c.instanceID = newest.ID
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
	if in.ID == "" || in.ID != c.instanceID {
		return
	}
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
		w.failStart(c, state.Waiting.Reason, state.Waiting.Message)
	case instances.StateExited, instances.StateKilled:
		if t := c.state.Terminated; t != nil && t.ContainerID == state.Terminated.ContainerID {
			return // already applied
		}
		c.state = state
		if !c.init { // runInits decides for init containers
			w.scheduleRestart(c)
		}
	}
}

// scheduleRestart applies the restart policy to a container that ended.
func (w *Worker) scheduleRestart(c *ctr) {
	t := c.state.Terminated
	if !shouldRestart(w.current().Spec.RestartPolicy, t.ExitCode) || w.terminating() {
		c.finished = true
		return
	}
	c.delay = c.backoff.restartDelay(w.deps.Backoff, c.restarts, t.FinishedAt.Sub(t.StartedAt.Time))
	c.restartAt = time.Now().Add(c.delay)
	if c.delay > 0 {
		w.event(v1.EventTypeWarning, "BackOff", "Back-off restarting failed container %s in pod %s", c.spec.Name, w.current().Name)
	}
}

func (w *Worker) terminating() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.grace != nil
}

// loop applies instance changes and due restarts until ctx ends.
func (w *Worker) loop(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	refresh := time.NewTicker(w.deps.VolumeRefresh)
	defer refresh.Stop()
	for {
		w.drain()
		w.restartDue(ctx)
		w.publish()
		next := time.Duration(-1)
		for _, c := range w.containers {
			if !c.restartAt.IsZero() {
				if d := time.Until(c.restartAt); next < 0 || d < next {
					next = max(d, 0)
				}
			}
		}
		if next < 0 {
			next = time.Hour
		}
		timer.Reset(next)
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		case <-timer.C:
		case <-refresh.C:
			w.refreshVolumes(ctx)
			w.checkEmptyDirLimits()
		}
	}
}

// checkEmptyDirLimits evicts the pod, as the kubelet does, when an emptyDir
// holds more than its sizeLimit.
func (w *Worker) checkEmptyDirLimits() {
	pod := w.current()
	for _, v := range pod.Spec.Volumes {
		if v.EmptyDir == nil || v.EmptyDir.SizeLimit == nil || v.EmptyDir.SizeLimit.IsZero() {
			continue
		}
		used := dirSize(filepath.Join(w.deps.VolumeDir, v.Name))
		if used <= v.EmptyDir.SizeLimit.Value() {
			continue
		}
		msg := fmt.Sprintf("Usage of EmptyDir volume %q exceeds the limit %q.", v.Name, v.EmptyDir.SizeLimit.String())
		w.log.Warn("evicting pod", "reason", msg, "used_bytes", used)
		w.event(v1.EventTypeWarning, "Evicted", "%s", msg)
		w.mu.Lock()
		w.failReason, w.failMsg = "Evicted", msg
		w.mu.Unlock()
		w.Terminate(0)
		return
	}
}

// dirSize is the bytes of the regular files below dir.
func dirSize(dir string) int64 {
	var total int64
	_ = filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				total += info.Size()
			}
		}
		return nil
	})
	return total
}

// refreshVolumes writes the files of volumes that come from API objects
// again, so that a running module sees updated config maps and secrets and
// a renewed token. A source that cannot be read leaves the files as they
// are.
func (w *Worker) refreshVolumes(ctx context.Context) {
	pod := w.current()
	// Tokens are renewed, like the kubelet's, at 80% of their default
	// hour-long life, not at every refresh.
	renew := time.Since(w.tokensAt) > 48*time.Minute
	if renew {
		w.tokensAt = time.Now()
	}
	src := &volumeSource{client: w.deps.Client, pod: pod, hostIP: w.deps.NodeIP, skipTokens: !renew, refreshing: true, log: w.log}
	for _, v := range pod.Spec.Volumes {
		if v.ConfigMap == nil && v.Secret == nil && v.DownwardAPI == nil && v.Projected == nil {
			continue
		}
		if _, err := src.prepare(ctx, filepath.Join(w.deps.VolumeDir, v.Name), v); err != nil {
			w.log.Warn("volume refresh failed", "volume", v.Name, "err", err)
		}
	}
}

func (w *Worker) drain() {
	w.mu.Lock()
	pending, lost := w.pending, w.lostAll
	w.pending, w.lostAll = nil, ""
	w.mu.Unlock()
	for _, inst := range pending {
		for _, c := range w.all() {
			if c.instanceID == inst.ID {
				w.apply(c, inst)
			}
		}
	}
	if lost == "" {
		return
	}
	now := time.Now()
	for _, c := range w.all() {
		if c.instanceID == "" || c.state.Terminated != nil || c.state.Waiting != nil && !c.restartAt.IsZero() {
			continue // nothing ran, or a retry is already due
		}
		started := now
		if r := c.state.Running; r != nil {
			started = r.StartedAt.Time
		}
		c.state = v1.ContainerState{Terminated: &v1.ContainerStateTerminated{
			ExitCode: 137, Reason: "ExecutorLost", Message: lost,
			StartedAt: ts(started), FinishedAt: ts(now), ContainerID: "wasmlet://" + c.instanceID,
		}}
		w.event(v1.EventTypeWarning, "Failed", "Container %s was lost: %s", c.spec.Name, lost)
		if !c.init {
			w.scheduleRestart(c)
		}
	}
}

func (w *Worker) restartDue(ctx context.Context) {
	now := time.Now()
	for _, c := range w.containers {
		if c.restartAt.IsZero() || c.restartAt.After(now) || ctx.Err() != nil {
			continue
		}
		if c.state.Terminated != nil {
			c.last = c.state
			c.restarts++
		}
		w.start(ctx, c)
	}
	// Containers waiting for a restart show CrashLoopBackOff, as the kubelet's do.
	for _, c := range w.containers {
		if !c.restartAt.IsZero() && c.restartAt.After(now) && c.state.Terminated != nil {
			c.last = c.state
			c.restarts++
			c.state = waiting("CrashLoopBackOff", fmt.Sprintf("back-off %s restarting failed container=%s pod=%s",
				c.delay, c.spec.Name, w.current().Name))
		}
	}
}

// terminate stops every instance within the grace period and publishes the
// pod's final status.
func (w *Worker) terminate(ctx context.Context) {
	w.setState(StateTerminating)
	w.mu.Lock()
	grace := time.Duration(0)
	if w.grace != nil {
		grace = *w.grace
	}
	w.mu.Unlock()
	w.drain()
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
	if w.deps.VolumeDir != "" {
		if err := RemoveVolumes(w.deps.VolumeDir); err != nil {
			w.log.Warn("remove pod volumes failed", "dir", w.deps.VolumeDir, "err", err)
		}
	}
	w.setState(StateTerminated)
	w.publish()
}

// publish builds the pod's status and notifies when it changed.
func (w *Worker) publish() {
	w.mu.Lock()
	pod := w.pod
	prev := pod.Status
	st := podStatus(statusInput{
		pod: pod, inits: w.inits, containers: w.containers, nodeIP: w.deps.NodeIP,
		prepared:   w.state != StateRegistered && w.state != StatePulling && w.state != StatePullBackOff && w.state != StatePreparingVolumes,
		failReason: w.failReason, failMsg: w.failMsg,
	}, metav1.Now())
	if equality.Semantic.DeepEqual(prev, st) {
		w.mu.Unlock()
		return
	}
	next := *pod // see current: the pod is replaced, not changed
	next.Status = st
	w.pod = &next
	pod = &next
	// What a status write needs, and no more: virtual-kubelet compares each
	// notified pod with the previous one (go-cmp, by reflection), and with
	// the spec and managedFields in it that comparison was a quarter of the
	// node agent's CPU in a burst of pod starts. The API server takes the
	// spec from the stored pod on a status write, and keeps the stored
	// managedFields when none are sent; labels, annotations and finalizers
	// are kept, since a status write may change them.
	out := &v1.Pod{TypeMeta: pod.TypeMeta, ObjectMeta: *pod.ObjectMeta.DeepCopy(), Status: *st.DeepCopy()}
	out.ManagedFields = nil
	w.mu.Unlock()
	w.deps.Notify(out)
}

func (w *Worker) event(typ, reason, format string, args ...any) {
	if w.deps.Recorder == nil {
		return
	}
	// The pod's reference, as the recorder would take it from the pod,
	// without copying the whole pod for each event.
	w.mu.Lock()
	ref := &v1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: w.pod.Namespace, Name: w.pod.Name,
		UID: w.pod.UID, ResourceVersion: w.pod.ResourceVersion}
	w.mu.Unlock()
	w.deps.Recorder.Eventf(ref, typ, reason, format, args...)
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
