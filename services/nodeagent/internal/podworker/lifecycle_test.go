package podworker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/instancestest"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// The lifecycle tests run a Worker against instancestest.Fake: what the
// executor does is scripted, and the pod's status is what is checked, as a
// user would see it in kubectl describe.

const testDigest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"

type moduleCache struct{}

func (moduleCache) Resolve(_ context.Context, req regcache.ResolveRequest) (regcache.Resolved, error) {
	return regcache.Resolved{Reference: req.Reference, ModuleDigest: testDigest, ModuleSize: 8}, nil
}
func (moduleCache) Fetch(context.Context, string) (io.ReadCloser, int64, error) {
	return nil, 0, regcache.ErrNotFound
}

// events records the Worker's events as "Reason: message".
type events struct {
	mu  sync.Mutex
	all []string
}

func (e *events) Event(_ runtime.Object, _, reason, msg string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, reason+": "+msg)
}
func (e *events) Eventf(o runtime.Object, typ, reason, format string, args ...any) {
	e.Event(o, typ, reason, fmt.Sprintf(format, args...))
}
func (e *events) AnnotatedEventf(o runtime.Object, _ map[string]string, typ, reason, format string, args ...any) {
	e.Eventf(o, typ, reason, format, args...)
}
func (e *events) has(prefix string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.ContainsFunc(e.all, func(s string) bool { return strings.HasPrefix(s, prefix) })
}

// testBackoff keeps every lifecycle test within a second or two.
var testBackoff = Backoff{Initial: 100 * time.Millisecond, Max: 200 * time.Millisecond, Reset: time.Hour}

type harness struct {
	t      *testing.T
	exec   *instancestest.Fake
	w      *Worker
	events *events

	mu          sync.Mutex
	statuses    []v1.PodStatus // every status notified
	transitions []transition   // every state change, in order
}

type transition struct{ from, to State }

func (tr transition) String() string { return string(tr.from) + " -> " + string(tr.to) }

// stateLog records the Worker's state changes from its log, and fails the
// test on an undeclared one.
type stateLog struct{ h *harness }

func (stateLog) Enabled(context.Context, slog.Level) bool { return true }
func (l stateLog) Handle(_ context.Context, r slog.Record) error {
	var tr transition
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "from":
			tr.from = State(a.Value.String())
		case "to":
			tr.to = State(a.Value.String())
		}
		return true
	})
	switch r.Message {
	case "pod state":
		l.h.mu.Lock()
		l.h.transitions = append(l.h.transitions, tr)
		l.h.mu.Unlock()
	case "undeclared pod state change":
		l.h.t.Errorf("undeclared transition %s", tr)
	}
	return nil
}
func (l stateLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l stateLog) WithGroup(string) slog.Handler      { return l }

// walked returns the transitions made so far.
func (h *harness) walked() []transition {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.transitions)
}

// config is what a harness runs with besides the pod and the executor.
type config struct {
	backoff Backoff
	cache   regcache.Cache   // default moduleCache
	objects []runtime.Object // in the API
	before  func(w *Worker)  // called before Run
	sync    time.Duration    // Deps.VolumeRefresh and Deps.Resync
	noWatch bool             // no watch feeds the Worker: only its resync
	// executor, when set, is what the Worker calls instead of the Fake
	// (a wrapper of it); the watch still follows the Fake.
	executor instances.Runtime
	network  Network // Deps.Network
}

// run starts a Worker for pod on exec, and a watch that feeds it exec's
// instance events as the executor pool does.
func run(t *testing.T, exec *instancestest.Fake, pod *v1.Pod, b Backoff) *harness {
	return runWith(t, exec, pod, config{backoff: b})
}

func runWith(t *testing.T, exec *instancestest.Fake, pod *v1.Pod, cfg config) *harness {
	t.Helper()
	h := &harness{t: t, exec: exec, events: &events{}}
	if cfg.cache == nil {
		cfg.cache = moduleCache{}
	}
	var rt instances.Runtime = exec
	if cfg.executor != nil {
		rt = cfg.executor
	}
	h.w = New(Deps{
		Client:        fake.NewClientset(cfg.objects...),
		Cache:         cfg.cache,
		Executor:      rt,
		Recorder:      h.events,
		NodeIP:        "10.0.0.1",
		LogSubject:    func(ns, pod, c string) string { return "logs." + ns + "." + pod + "." + c },
		VolumeDir:     t.TempDir(),
		Backoff:       cfg.backoff,
		VolumeRefresh: cfg.sync, Resync: cfg.sync,
		Network: cfg.network,
		Log:     slog.New(stateLog{h}),
		Notify: func(p *v1.Pod) {
			h.mu.Lock()
			h.statuses = append(h.statuses, p.Status)
			h.mu.Unlock()
		},
	}, pod)
	if cfg.before != nil {
		cfg.before(h.w)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		h.w.Run(ctx)
	}()
	go func() {
		defer wg.Done()
		for ctx.Err() == nil && !cfg.noWatch {
			// After a loss the sequence starts again: watch from zero.
			_ = exec.Watch(ctx, 0, "", func(in instances.Instance) error {
				h.w.InstanceChanged(in)
				return nil
			})
			time.Sleep(5 * time.Millisecond)
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	return h
}

// waitFor waits until the pod's status satisfies cond.
func (h *harness) waitFor(what string, cond func(st v1.PodStatus) bool) v1.PodStatus {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := h.w.Pod().Status
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s; status: %s", what, describe(st))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitState waits until the Worker is in state s.
func (h *harness) waitState(s State) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for h.w.State() != s {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for state %s; in %s after %v", s, h.w.State(), h.walked())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// terminate terminates the pod and waits for the Worker to end.
func (h *harness) terminate() {
	h.t.Helper()
	h.w.Terminate(10 * time.Millisecond)
	select {
	case <-h.w.Done():
	case <-time.After(5 * time.Second):
		h.t.Fatalf("the worker did not end after Terminate; in %s", h.w.State())
	}
}

// saw reports whether some notified status satisfied cond.
func (h *harness) saw(cond func(st v1.PodStatus) bool) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.ContainsFunc(h.statuses, cond)
}

// describe is a status in short, for failures.
func describe(st v1.PodStatus) string {
	var b strings.Builder
	fmt.Fprintf(&b, "phase %s", st.Phase)
	for _, cs := range append(slices.Clone(st.InitContainerStatuses), st.ContainerStatuses...) {
		fmt.Fprintf(&b, "; %s restarts %d ", cs.Name, cs.RestartCount)
		switch s := cs.State; {
		case s.Waiting != nil:
			fmt.Fprintf(&b, "waiting %s %q", s.Waiting.Reason, s.Waiting.Message)
		case s.Running != nil:
			b.WriteString("running")
		case s.Terminated != nil:
			fmt.Fprintf(&b, "terminated %s exit %d", s.Terminated.Reason, s.Terminated.ExitCode)
		}
	}
	return b.String()
}

func testPod(policy v1.RestartPolicy, inits []string, containers ...string) *v1.Pod {
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "uid-1"},
		Spec:       v1.PodSpec{RestartPolicy: policy},
	}
	for _, n := range inits {
		pod.Spec.InitContainers = append(pod.Spec.InitContainers, v1.Container{Name: n, Image: "reg/" + n})
	}
	for _, n := range containers {
		pod.Spec.Containers = append(pod.Spec.Containers, v1.Container{Name: n, Image: "reg/" + n})
	}
	return pod
}

func container(st v1.PodStatus, name string) v1.ContainerStatus {
	for _, cs := range append(slices.Clone(st.InitContainerStatuses), st.ContainerStatuses...) {
		if cs.Name == name {
			return cs
		}
	}
	return v1.ContainerStatus{}
}

func waitingReason(st v1.PodStatus, name string) string {
	if w := container(st, name).State.Waiting; w != nil {
		return w.Reason
	}
	return ""
}

// restartCount is the restart count an instance is labelled with.
func restartCount(t *testing.T, exec *instancestest.Fake, id string) int {
	t.Helper()
	in, err := exec.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("instance %s: %v", id, err)
	}
	n, err := strconv.Atoi(in.Spec.Labels[LabelRestartCount])
	if err != nil {
		t.Fatalf("instance %s: label %s: %v", id, LabelRestartCount, err)
	}
	return n
}

// A container that keeps crashing under RestartPolicy Always is started
// again, shows CrashLoopBackOff between runs, and counts its restarts in
// its instances' labels.
func TestLifecycleRestart(t *testing.T) {
	exec := &instancestest.Fake{Behave: func(string, instances.Spec) instancestest.Outcome {
		return instancestest.ExitsWith(3, 50*time.Millisecond)
	}}
	h := run(t, exec, testPod(v1.RestartPolicyAlways, nil, "app"), testBackoff)
	st := h.waitFor("running after two restarts", func(st v1.PodStatus) bool {
		cs := container(st, "app")
		return cs.RestartCount >= 2 && cs.State.Running != nil
	})
	cs := container(st, "app")
	if st.Phase != v1.PodRunning {
		t.Errorf("phase %s, want Running", st.Phase)
	}
	if last := cs.LastTerminationState.Terminated; last == nil || last.ExitCode != 3 || last.Reason != "Error" {
		t.Errorf("last termination %+v", cs.LastTerminationState)
	}
	if !h.saw(func(st v1.PodStatus) bool { return waitingReason(st, "app") == "CrashLoopBackOff" }) {
		t.Error("never showed CrashLoopBackOff")
	}
	id := strings.TrimPrefix(cs.ContainerID, containerIDPrefix)
	if n := restartCount(t, exec, id); n != int(cs.RestartCount) || id != instanceID(h.w.Pod(), "app", cs.RestartCount) {
		t.Errorf("instance %s labelled restart %d, status says %d", id, n, cs.RestartCount)
	}
	if !h.events.has("BackOff: Back-off restarting failed container app") {
		t.Errorf("no BackOff event: %v", h.events.all)
	}
}

// Restarts follow the one back-off: the first at once, then Initial,
// doubling up to Max.
func TestLifecycleBackoff(t *testing.T) {
	var mu sync.Mutex
	var created []time.Time
	exec := &instancestest.Fake{Behave: func(string, instances.Spec) instancestest.Outcome {
		mu.Lock()
		created = append(created, time.Now())
		mu.Unlock()
		return instancestest.ExitsWith(1, 0)
	}}
	h := run(t, exec, testPod(v1.RestartPolicyOnFailure, nil, "app"), testBackoff)
	h.waitFor("four restarts", func(v1.PodStatus) bool { return exec.Calls("Create") >= 5 })
	mu.Lock()
	defer mu.Unlock()
	want := []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 200 * time.Millisecond}
	for i, min := range want {
		gap := created[i+1].Sub(created[i])
		if gap < min || gap > min+300*time.Millisecond {
			t.Errorf("restart %d after %s, want %s", i+1, gap, min)
		}
	}
	if !h.saw(func(st v1.PodStatus) bool {
		w := container(st, "app").State.Waiting
		return w != nil && w.Reason == "CrashLoopBackOff" && strings.Contains(w.Message, "back-off 200ms")
	}) {
		t.Error("the capped back-off never showed in the waiting message")
	}
}

// A failed init container fails the pod under RestartPolicy Never, and
// the containers never start; under OnFailure it is retried until it
// succeeds, then the containers start.
func TestLifecycleInitFailure(t *testing.T) {
	t.Run("Never", func(t *testing.T) {
		exec := &instancestest.Fake{Behave: func(string, instances.Spec) instancestest.Outcome {
			return instancestest.ExitsWith(2, 0)
		}}
		h := run(t, exec, testPod(v1.RestartPolicyNever, []string{"init"}, "app"), testBackoff)
		st := h.waitFor("the pod failed", func(st v1.PodStatus) bool { return st.Phase == v1.PodFailed })
		if t0 := container(st, "init").State.Terminated; t0 == nil || t0.ExitCode != 2 {
			t.Errorf("init: %s", describe(st))
		}
		time.Sleep(50 * time.Millisecond)
		if list, _, _ := exec.List(context.Background(), map[string]string{LabelContainer: "app"}); len(list) != 0 || exec.Calls("Create") != 1 {
			t.Errorf("the app container was started after its init container failed: %v", list)
		}
	})
	t.Run("OnFailure", func(t *testing.T) {
		exec := &instancestest.Fake{Behave: func(_ string, spec instances.Spec) instancestest.Outcome {
			if spec.Labels[LabelContainer] == "init" && spec.Labels[LabelRestartCount] != "2" {
				return instancestest.ExitsWith(1, 0)
			}
			if spec.Labels[LabelContainer] == "init" {
				return instancestest.ExitsWith(0, 0)
			}
			return instancestest.RunsUntilStopped()
		}}
		h := run(t, exec, testPod(v1.RestartPolicyOnFailure, []string{"init"}, "app"), testBackoff)
		st := h.waitFor("app running", func(st v1.PodStatus) bool { return container(st, "app").State.Running != nil })
		if cs := container(st, "init"); cs.RestartCount != 2 || cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 0 {
			t.Errorf("init: %s", describe(st))
		}
		if !h.saw(func(st v1.PodStatus) bool { return waitingReason(st, "init") == "CrashLoopBackOff" }) {
			t.Error("the failing init container never showed CrashLoopBackOff")
		}
		if !h.saw(func(st v1.PodStatus) bool {
			return waitingReason(st, "app") == "PodInitializing" && st.Phase == v1.PodPending
		}) {
			t.Error("the app container never waited for PodInitializing in a Pending pod")
		}
	})
}

// A restarted node agent adopts the newest instance of each container
// (its restart count from the label, or for an older node agent's
// instance from its ID) without starting another, and deletes the older
// ones.
func TestLifecycleAdoption(t *testing.T) {
	for _, tc := range []struct {
		name     string
		labelled bool
	}{{"labelled", true}, {"older node agent", false}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			exec := &instancestest.Fake{}
			pod := testPod(v1.RestartPolicyAlways, nil, "app")
			started := metav1.NewTime(time.Now().Add(-time.Minute))
			pod.Status.StartTime = &started // an earlier life started it
			for _, n := range []int32{1, 2} {
				spec, err := instanceSpec(pod, &pod.Spec.Containers[0], specInput{digest: testDigest, restarts: n})
				if err != nil {
					t.Fatal(err)
				}
				if !tc.labelled {
					delete(spec.Labels, LabelRestartCount)
				}
				if _, err := exec.Create(ctx, instanceID(pod, "app", n), spec, true); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := exec.Stop(ctx, "uid-1-app-1", 0); err != nil {
				t.Fatal(err)
			}
			h := run(t, exec, pod, testBackoff)
			st := h.waitFor("adopted", func(st v1.PodStatus) bool { return container(st, "app").State.Running != nil })
			if cs := container(st, "app"); cs.RestartCount != 2 || cs.ContainerID != "wasmlet://uid-1-app-2" {
				t.Errorf("adopted %s with %d restarts, want uid-1-app-2 with 2", cs.ContainerID, cs.RestartCount)
			}
			if n := exec.Calls("Create"); n != 2 {
				t.Errorf("%d creates, want only the earlier life's 2", n)
			}
			if _, err := exec.Get(ctx, "uid-1-app-1"); err == nil {
				t.Error("the older instance was kept")
			}
		})
	}
}

// Terminating a pod stops its instances within the grace period, deletes
// them, and publishes the final status.
func TestLifecycleTermination(t *testing.T) {
	exec := &instancestest.Fake{}
	h := run(t, exec, testPod(v1.RestartPolicyAlways, nil, "a", "b"), testBackoff)
	h.waitFor("running", func(st v1.PodStatus) bool {
		return st.Phase == v1.PodRunning && st.ContainerStatuses[1].State.Running != nil
	})
	h.w.Terminate(20 * time.Millisecond)
	select {
	case <-h.w.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the worker did not end after Terminate")
	}
	st := h.w.Pod().Status
	for _, name := range []string{"a", "b"} {
		if term := container(st, name).State.Terminated; term == nil || term.ExitCode != 137 || term.Reason != "Killed" {
			t.Errorf("%s: %s", name, describe(st))
		}
	}
	if list, _, _ := exec.List(context.Background(), nil); len(list) != 0 {
		t.Errorf("instances left after termination: %v", list)
	}
	if exec.Calls("Stop") != 2 || !h.events.has("Killing: Stopping container a") {
		t.Errorf("%d stops, events %v", exec.Calls("Stop"), h.events.all)
	}
	if !h.saw(func(st v1.PodStatus) bool { return container(st, "a").State.Terminated != nil }) {
		t.Error("the final status was not notified")
	}
}

// When the executor is lost, its instances count as crashed
// (ExecutorLost) and the restart policy starts them again.
func TestLifecycleExecutorLoss(t *testing.T) {
	exec := &instancestest.Fake{}
	h := run(t, exec, testPod(v1.RestartPolicyAlways, nil, "app"), testBackoff)
	h.waitFor("running", func(st v1.PodStatus) bool { return container(st, "app").State.Running != nil })
	exec.Lose()
	h.w.InstancesLost("executor wasmtime stopped unexpectedly")
	st := h.waitFor("running again", func(st v1.PodStatus) bool {
		cs := container(st, "app")
		return cs.State.Running != nil && cs.RestartCount == 1
	})
	last := container(st, "app").LastTerminationState.Terminated
	if last == nil || last.Reason != "ExecutorLost" || last.ExitCode != 137 || !strings.Contains(last.Message, "stopped unexpectedly") {
		t.Errorf("last termination %+v", last)
	}
	if _, err := exec.Get(context.Background(), "uid-1-app-1"); err != nil {
		t.Errorf("the restart is not on the executor: %v", err)
	}
}

// A module the executor cannot make into an instance (FAILED) shows
// CreateContainerError with the executor's words and is retried; it never
// ran, so it is no restart.
func TestLifecycleCreateContainerError(t *testing.T) {
	var fixed atomic.Bool
	exec := &instancestest.Fake{Behave: func(string, instances.Spec) instancestest.Outcome {
		if fixed.Load() {
			return instancestest.RunsUntilStopped()
		}
		return instancestest.FailsWith("ModuleInvalid", "module reg/app is not WebAssembly")
	}}
	h := run(t, exec, testPod(v1.RestartPolicyAlways, nil, "app"), testBackoff)
	st := h.waitFor("CreateContainerError", func(st v1.PodStatus) bool { return waitingReason(st, "app") == "CreateContainerError" })
	if w := container(st, "app").State.Waiting; !strings.Contains(w.Message, "is not WebAssembly") {
		t.Errorf("waiting message %q", w.Message)
	}
	fixed.Store(true) // the module is fixed: the retry after the back-off runs
	st = h.waitFor("running after the retry", func(st v1.PodStatus) bool { return container(st, "app").State.Running != nil })
	if cs := container(st, "app"); cs.RestartCount != 0 {
		t.Errorf("restart count %d after failed creates, want 0", cs.RestartCount)
	}
}

// An executor that cannot be reached makes the start fail with its words;
// the start is retried until it answers.
func TestLifecycleExecutorUnavailable(t *testing.T) {
	exec := &instancestest.Fake{}
	exec.SetUnavailable(true)
	h := run(t, exec, testPod(v1.RestartPolicyAlways, nil, "app"), testBackoff)
	st := h.waitFor("CreateContainerError", func(st v1.PodStatus) bool { return waitingReason(st, "app") == "CreateContainerError" })
	if w := container(st, "app").State.Waiting; !strings.Contains(w.Message, "unavailable") {
		t.Errorf("waiting message %q", w.Message)
	}
	exec.SetUnavailable(false)
	h.waitFor("running", func(st v1.PodStatus) bool { return container(st, "app").State.Running != nil })
}

// A Job's pod (OnFailure) whose containers exit zero has Succeeded.
func TestLifecycleCompletes(t *testing.T) {
	exec := &instancestest.Fake{Behave: func(string, instances.Spec) instancestest.Outcome {
		return instancestest.ExitsWith(0, 0)
	}}
	h := run(t, exec, testPod(v1.RestartPolicyOnFailure, nil, "a", "b"), testBackoff)
	st := h.waitFor("succeeded", func(st v1.PodStatus) bool { return st.Phase == v1.PodSucceeded })
	for _, name := range []string{"a", "b"} {
		if term := container(st, name).State.Terminated; term == nil || term.Reason != "Completed" || container(st, name).RestartCount != 0 {
			t.Errorf("%s: %s", name, describe(st))
		}
	}
}

// A change whose event never reached the Worker is found by its periodic
// resync, which lists the pod's instances again.
func TestLifecycleResync(t *testing.T) {
	exec := &instancestest.Fake{Behave: func(string, instances.Spec) instancestest.Outcome {
		return instancestest.ExitsWith(3, 20*time.Millisecond)
	}}
	h := runWith(t, exec, testPod(v1.RestartPolicyNever, nil, "app"), config{backoff: testBackoff, sync: 50 * time.Millisecond, noWatch: true})
	st := h.waitFor("failed", func(st v1.PodStatus) bool { return st.Phase == v1.PodFailed })
	if term := container(st, "app").State.Terminated; term == nil || term.ExitCode != 3 {
		t.Errorf("after the resync: %s", describe(st))
	}
}

// An instance the executor no longer has, without an event and without
// the pool noticing (here the executor restarted with its identity), is
// found by the resync's list and lost: the restart policy applies, as to
// a crash.
func TestLifecycleResyncLost(t *testing.T) {
	for _, policy := range []v1.RestartPolicy{v1.RestartPolicyAlways, v1.RestartPolicyOnFailure, v1.RestartPolicyNever} {
		t.Run(string(policy), func(t *testing.T) {
			exec := &instancestest.Fake{}
			h := runWith(t, exec, testPod(policy, nil, "app"), config{backoff: testBackoff, sync: 50 * time.Millisecond})
			h.waitFor("running", func(st v1.PodStatus) bool { return container(st, "app").State.Running != nil })
			exec.Lose()
			var st v1.PodStatus
			if policy == v1.RestartPolicyNever {
				st = h.waitFor("failed", func(st v1.PodStatus) bool { return st.Phase == v1.PodFailed })
				if term := container(st, "app").State.Terminated; term == nil || term.Reason != "InstanceLost" || term.ExitCode != 137 {
					t.Errorf("after the loss: %s", describe(st))
				}
				if n := exec.Calls("Create"); n != 1 {
					t.Errorf("%d creates under Never, want 1", n)
				}
			} else {
				st = h.waitFor("running again", func(st v1.PodStatus) bool {
					cs := container(st, "app")
					return cs.State.Running != nil && cs.RestartCount == 1
				})
				last := container(st, "app").LastTerminationState.Terminated
				if last == nil || last.Reason != "InstanceLost" || last.ExitCode != 137 || !strings.Contains(last.Message, "uid-1-app-0 is no longer on its executor") {
					t.Errorf("last termination %+v", last)
				}
				if _, err := exec.Get(context.Background(), "uid-1-app-1"); err != nil {
					t.Errorf("the restart is not on the executor: %v", err)
				}
			}
			if !h.events.has("Failed: Container app was lost: instance uid-1-app-0 is no longer on its executor") {
				t.Errorf("no Warning event for the loss: %v", h.events.all)
			}
		})
	}
}

// A list that fails proves nothing: the running container stays as it
// was, and the next resync's list finds it.
func TestLifecycleResyncListFails(t *testing.T) {
	exec := &instancestest.Fake{}
	h := runWith(t, exec, testPod(v1.RestartPolicyAlways, nil, "app"), config{backoff: testBackoff, sync: 20 * time.Millisecond})
	h.waitFor("running", func(st v1.PodStatus) bool { return container(st, "app").State.Running != nil })
	exec.SetUnavailable(true)
	lists := exec.Calls("List")
	h.waitFor("three failed lists", func(v1.PodStatus) bool { return exec.Calls("List") >= lists+3 })
	exec.SetUnavailable(false)
	lists = exec.Calls("List")
	h.waitFor("two lists that answer", func(v1.PodStatus) bool { return exec.Calls("List") >= lists+2 })
	st := h.w.Pod().Status
	if cs := container(st, "app"); cs.State.Running == nil || cs.RestartCount != 0 || cs.ContainerID != "wasmlet://uid-1-app-0" {
		t.Errorf("after lists that failed: %s", describe(st))
	}
	if h.events.has("Failed: Container app was lost") || exec.Calls("Create") != 1 {
		t.Errorf("%d creates, events %v", exec.Calls("Create"), h.events.all)
	}
}

// heldList is a Runtime whose resync lists (by pod, not by container),
// once hold is set, take their snapshot at once and return only when
// released: what is created meanwhile is missing from them.
type heldList struct {
	*instancestest.Fake
	hold    atomic.Bool
	taken   chan struct{} // a held list took its snapshot
	release chan struct{}
	done    atomic.Int32 // held lists returned
}

func (l *heldList) List(ctx context.Context, selector map[string]string) ([]instances.Instance, uint64, error) {
	list, seq, err := l.Fake.List(ctx, selector)
	if _, byContainer := selector[LabelContainer]; byContainer || !l.hold.Load() {
		return list, seq, err
	}
	select {
	case l.taken <- struct{}{}:
	default:
	}
	<-l.release
	l.done.Add(1)
	return list, seq, err
}

// An instance created while a resync's list was under way is missing from
// that list, and is not lost for it.
func TestLifecycleResyncCreatedDuringList(t *testing.T) {
	exec := &instancestest.Fake{}
	held := &heldList{Fake: exec, taken: make(chan struct{}, 1), release: make(chan struct{})}
	h := runWith(t, exec, testPod(v1.RestartPolicyAlways, nil, "app"), config{backoff: testBackoff, sync: 50 * time.Millisecond, executor: held})
	h.waitFor("running", func(st v1.PodStatus) bool { return container(st, "app").State.Running != nil })
	held.hold.Store(true)
	select {
	case <-held.taken:
	case <-time.After(5 * time.Second):
		t.Fatal("no resync list")
	}
	// The list holds uid-1-app-0 running; it crashes, and its restart,
	// uid-1-app-1, is created while the list is under way.
	if err := exec.Exit("uid-1-app-0", 1); err != nil {
		t.Fatal(err)
	}
	h.waitFor("restarted", func(st v1.PodStatus) bool {
		cs := container(st, "app")
		return cs.State.Running != nil && cs.ContainerID == "wasmlet://uid-1-app-1"
	})
	close(held.release)
	// The next list begins only once the held one was applied.
	n := held.done.Load()
	h.waitFor("the held list applied", func(v1.PodStatus) bool { return held.done.Load() >= n+1 })
	time.Sleep(20 * time.Millisecond)
	st := h.w.Pod().Status
	if cs := container(st, "app"); cs.State.Running == nil || cs.RestartCount != 1 || cs.ContainerID != "wasmlet://uid-1-app-1" {
		t.Errorf("after the held list: %s", describe(st))
	}
	if h.events.has("Failed: Container app was lost") {
		t.Errorf("the instance created during the list was lost: %v", h.events.all)
	}
}
