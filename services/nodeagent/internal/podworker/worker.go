package podworker

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/record"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// DefaultVolumeRefresh is the kubelet's sync period.
const DefaultVolumeRefresh = time.Minute

// DefaultResync is how often a pod's instances are listed again by
// default: a safety net, since the executor's watch reports every change,
// and the pool notices a restart and a gap in it (package executors). At
// the volume refresh's minute, 5,000 pods made 83 lists a second, most of
// an idle node agent's CPU.
const DefaultResync = 5 * time.Minute

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
	// VolumeRefresh is the period of the pod's volume sync, the kubelet's:
	// configMap, secret, downwardAPI and projected volumes are written
	// again from their sources (and service-account tokens renewed), and
	// emptyDir limits checked; a pod with none of those has no such sync.
	// 0 means DefaultVolumeRefresh.
	VolumeRefresh time.Duration
	// Resync is how often the pod's instances are listed again from the
	// executor; 0 means DefaultResync.
	Resync time.Duration
	// AllowedHostPaths are the host directories (and what is below them)
	// that hostPath volumes may name; empty: none.
	AllowedHostPaths []string
	// Network, optional, puts pods that declare containerPorts on the pod
	// network and serves their ports; nil: pods keep the node's address
	// and their ports are not served (a Warning event says so).
	Network Network
	// Notify receives the pod each time its status changes: its metadata
	// (without managedFields) and its new status, and no spec, which a
	// status write never changes. It may block briefly; it must not call
	// back into the Worker.
	Notify func(*v1.Pod)
	Log    *slog.Logger // optional
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
	lostAll    string      // non-empty: every instance was lost, for this reason
	listed     *listResult // a resync's list, not yet applied
	grace      *time.Duration
	cancelWork context.CancelFunc
	ids        map[string][2]string // container -> current, previous instance id

	wake chan struct{}
	done chan struct{}

	// Owned by Run's goroutine: only the handlers read and change them
	// (resolveAll, on a goroutine of its own, reads specs and images).
	inits         []*ctr // init containers, run in order before containers
	containers    []*ctr
	volumes       map[string]string // volume name -> host dir
	tokensAt      time.Time         // when service-account tokens were last written
	volumeAttempt int               // volume set-ups failed in a row
	net           *Attachment       // the pod's place on the pod network; nil: none (yet)
	netAttempt    int               // network set-ups failed in a row
	noNetworkSaid bool              // the event that ports are on the node's address (or not served) was sent
	pull          struct {
		attempt int // pulls failed in a row
		failed  *ctr
		msg     string
		delay   time.Duration
	}
	// The periodic syncs: volumes and emptyDir limits (nil: the pod has
	// nothing to refresh), and the instances' resync.
	refresh, resyncs <-chan time.Time
	creates          uint64 // instances created or adopted so far (ctr.created)
	listing          bool   // a resync's list is under way
	lists            sync.WaitGroup

	// Guarded by mu: a pod-level failure (DeadlineExceeded, Evicted).
	failReason, failMsg string
}

// New returns a Worker for pod; call Run to start it.
func New(deps Deps, pod *v1.Pod) *Worker {
	if deps.Backoff == (Backoff{}) {
		deps.Backoff = DefaultBackoff
	}
	if deps.VolumeRefresh <= 0 {
		deps.VolumeRefresh = DefaultVolumeRefresh
	}
	if deps.Resync <= 0 {
		deps.Resync = DefaultResync
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

func (w *Worker) terminating() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.grace != nil
}

// setState records the state Run entered. An undeclared transition is a
// bug of the handlers: it is logged at error level (the lifecycle tests
// fail on it) and made anyway, so that a pod is never left without a
// handler.
func (w *Worker) setState(s State) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := checkTransition(w.state, s); err != nil {
		w.log.Error("undeclared pod state change", "from", w.state, "to", s, "err", err)
	}
	if w.state != s {
		w.log.Debug("pod state", "from", w.state, "to", s)
	}
	w.state = s
}

// Run drives the pod through its states until it is terminated or ctx
// ends. When ctx ends (the node agent is stopping) instances are left
// running, to be re-adopted.
func (w *Worker) Run(ctx context.Context) {
	defer close(w.done)
	wctx, cancel := context.WithCancel(ctx)
	defer w.lists.Wait() // after cancel, which ends a list under way
	defer cancel()
	w.mu.Lock()
	w.cancelWork = cancel
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
	if !w.admitProbes() {
		w.Terminate(0)
	}
	if refreshes(w.current()) {
		t := time.NewTicker(w.deps.VolumeRefresh)
		defer t.Stop()
		w.refresh = t.C
	}
	resyncs := time.NewTicker(w.deps.Resync)
	defer resyncs.Stop()
	w.resyncs = resyncs.C
	for s := w.State(); s != StateTerminated; s = w.State() {
		if ctx.Err() != nil {
			return
		}
		next := StateTerminating
		switch {
		case s == StateTerminating:
			next = w.terminate(ctx)
		case !w.terminating():
			next = w.handler(s)(wctx)
			if w.terminating() {
				next = StateTerminating
			}
		}
		w.setState(next)
	}
}

// publish builds the pod's status and notifies when it changed.
func (w *Worker) publish() {
	w.mu.Lock()
	pod := w.pod
	prev := pod.Status
	st := podStatus(statusInput{
		pod: pod, inits: w.inits, containers: w.containers, nodeIP: w.deps.NodeIP, podIPs: w.podIPs(),
		prepared:   w.state != StateRegistered && w.state != StatePulling && w.state != StatePullBackOff && w.state != StatePreparingVolumes,
		failReason: w.failReason, failMsg: w.failMsg,
	}, metav1.Now())
	if statusEqual(&prev, &st) {
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

// statusEqual reports whether a and b would be stored alike: their
// protobuf encodings, what the node agent sends and the API server keeps
// (times to the second, nil and empty lists alike), are equal. Generated
// code, no reflection: 1.6 µs for a running pod's status, where
// equality.Semantic.DeepEqual took 13.7 µs, several times per pod start.
// A status that cannot be encoded counts as changed.
func statusEqual(a, b *v1.PodStatus) bool {
	x, err := a.Marshal()
	if err != nil {
		return false
	}
	y, err := b.Marshal()
	return err == nil && bytes.Equal(x, y)
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
