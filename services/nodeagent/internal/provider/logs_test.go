package provider

import (
	"context"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// fakeWorker is a pod worker's status as ended reads it.
type fakeWorker struct {
	mu      sync.Mutex
	current string
	pod     *v1.Pod
	done    chan struct{}
}

func (f *fakeWorker) InstanceIDs(string) (string, string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.current, "", true
}

func (f *fakeWorker) Pod() *v1.Pod {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pod.DeepCopy()
}

func (f *fakeWorker) Done() <-chan struct{} { return f.done }

func (f *fakeWorker) set(current string, st v1.ContainerStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.current = current
	f.pod = &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "u"},
		Status: v1.PodStatus{ContainerStatuses: []v1.ContainerStatus{st}}}
}

func running(id string) v1.ContainerStatus {
	return v1.ContainerStatus{Name: "c", ContainerID: "wasmlet://" + id,
		State: v1.ContainerState{Running: &v1.ContainerStateRunning{}}}
}

func terminated(id string) v1.ContainerStatus {
	return v1.ContainerStatus{Name: "c", ContainerID: "wasmlet://" + id,
		State: v1.ContainerState{Terminated: &v1.ContainerStateTerminated{ContainerID: "wasmlet://" + id}}}
}

// TestLogFollowEndsWithInstance: the channel that ends a follow is closed
// when the pod's status shows the instance ended (woken by the status
// notification, not by polling), when a newer instance replaced it, when
// the pod's worker is done, and at once for --previous; not while it runs.
func TestLogFollowEndsWithInstance(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	setup := func() (*Provider, *entry, *fakeWorker) {
		w := &fakeWorker{done: make(chan struct{})}
		w.set("i1", running("i1"))
		e := &entry{uid: "u"}
		return &Provider{pods: map[string]*entry{"ns/p": e}}, e, w
	}
	isClosed := func(ch <-chan struct{}, within time.Duration) bool {
		select {
		case <-ch:
			return true
		case <-time.After(within):
			return false
		}
	}

	p, e, w := setup()
	ch := p.ended(ctx, e, w, "c", "i1", false)
	if isClosed(ch, 200*time.Millisecond) {
		t.Fatal("ended while running")
	}
	w.set("i1", terminated("i1"))
	p.notifyPod(w.Pod())
	if !isClosed(ch, 5*time.Second) {
		t.Error("not ended when the status showed it terminated")
	}

	p, e, w = setup()
	ch = p.ended(ctx, e, w, "c", "i1", false)
	w.set("i2", running("i1")) // restarted; the status not yet written
	p.notifyPod(w.Pod())
	if !isClosed(ch, 5*time.Second) {
		t.Error("not ended when a newer instance replaced it")
	}

	p, e, w = setup()
	ch = p.ended(ctx, e, w, "c", "i1", false)
	close(w.done)
	if !isClosed(ch, 5*time.Second) {
		t.Error("not ended when the pod's worker was done")
	}

	p, e, w = setup()
	if !isClosed(p.ended(ctx, e, w, "c", "i0", true), 100*time.Millisecond) {
		t.Error("a previous instance not ended at once")
	}
}

// TestInstanceEnded reads an instance's end from a pod's status.
func TestInstanceEnded(t *testing.T) {
	waiting := func(id, reason string) v1.ContainerStatus {
		return v1.ContainerStatus{Name: "c", ContainerID: "wasmlet://" + id,
			State: v1.ContainerState{Waiting: &v1.ContainerStateWaiting{Reason: reason}}}
	}
	restarted := running("i2")
	restarted.LastTerminationState = terminated("i1").State
	for _, tc := range []struct {
		name string
		st   v1.ContainerStatus
		want bool
	}{
		{"running", running("i1"), false},
		{"terminated", terminated("i1"), true},
		{"another terminated", terminated("i0"), false},
		{"restarted, last termination", restarted, true},
		{"creating", waiting("i1", "ContainerCreating"), false},
		{"crash loop back-off", waiting("i1", "CrashLoopBackOff"), true},
		{"create error", waiting("i1", "CreateContainerError"), true},
		{"another container", v1.ContainerStatus{Name: "d", State: terminated("i1").State}, false},
	} {
		pod := &v1.Pod{Status: v1.PodStatus{ContainerStatuses: []v1.ContainerStatus{tc.st}}}
		if got := instanceEnded(pod, "c", "i1"); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
