package podworker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/instancestest"
)

// slowCompile is a Runtime whose Create takes compile before it answers,
// as an executor's does for a module new to it (its CreateInstance
// replies once the module is compiled and the instance RUNNING). It
// honours the caller's context as a gRPC call does: a create whose
// context ends before the compile does fails with the context's error.
type slowCompile struct {
	*instancestest.Fake
	compile time.Duration

	mu      sync.Mutex
	answers []time.Time // when each Create answered
}

func (s *slowCompile) Create(ctx context.Context, id string, spec instances.Spec, start bool) (instances.Instance, error) {
	select {
	case <-time.After(s.compile):
	case <-ctx.Done():
		return instances.Instance{}, fmt.Errorf("create %s: %w", id, ctx.Err())
	}
	in, err := s.Fake.Create(ctx, id, spec, start)
	s.mu.Lock()
	s.answers = append(s.answers, time.Now())
	s.mu.Unlock()
	return in, err
}

// A pod whose module is new to the node waits for the compile and no
// more: the Worker makes one create, whatever it takes (no deadline that
// a slow compile outlasts, no retry that compiles again), shows the pod
// ContainerCreating meanwhile, and publishes Running as soon as the
// create answers (no poll interval between the executor's RUNNING and the
// pod's). This is the user-visible wait of issue 18 §1: the pod-level
// start of a module new to the node should be its pull + compile + start.
func TestColdStartWaitsOnlyForTheCompile(t *testing.T) {
	const compile = 1200 * time.Millisecond
	exec := &instancestest.Fake{}
	slow := &slowCompile{Fake: exec, compile: compile}
	t0 := time.Now()
	h := runWith(t, exec, testPod(v1.RestartPolicyAlways, nil, "app"), config{backoff: testBackoff, executor: slow})
	isRunning := func(st v1.PodStatus) bool { return container(st, "app").State.Running != nil }
	// When a Running status was first notified (polled every millisecond).
	var running time.Time
	for deadline := time.Now().Add(compile + 5*time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if h.saw(isRunning) {
			running = time.Now()
			break
		}
	}
	if running.IsZero() {
		t.Fatalf("not running %v after the create: %s", compile+5*time.Second, describe(h.w.Pod().Status))
	}
	if n := exec.Calls("Create"); n != 1 {
		t.Errorf("%d creates reached the executor, want 1 (each would compile the module again)", n)
	}
	slow.mu.Lock()
	answers := append([]time.Time(nil), slow.answers...)
	slow.mu.Unlock()
	if len(answers) != 1 {
		t.Fatalf("%d creates answered, want 1", len(answers))
	}
	// The pod's wait beyond the compile: from the create's answer to the
	// Running status (the test polls every millisecond), and from the
	// Worker's start to the create's (the fake cache resolves at once).
	after := running.Sub(answers[0])
	total := running.Sub(t0)
	t.Logf("compile %v; pod Running %v after the Worker started, %v after the create answered", compile, total.Round(time.Millisecond), after.Round(time.Millisecond))
	if after > 250*time.Millisecond {
		t.Errorf("Running was published %v after the create answered, want ≤ 250ms", after)
	}
	if total > compile+500*time.Millisecond {
		t.Errorf("the pod waited %v for a compile of %v, want ≤ compile + 500ms", total, compile)
	}
	if !h.saw(func(st v1.PodStatus) bool { return waitingReason(st, "app") == "ContainerCreating" }) {
		t.Error("the pod was not shown ContainerCreating during the compile")
	}
	if h.events.has("Failed:") || h.events.has("BackOff:") {
		t.Errorf("a failure or back-off during a slow create: %v", h.events.all)
	}
}
