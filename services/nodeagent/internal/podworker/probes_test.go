package podworker

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/wasmlet/wasmlet/services/executor/instances/instancestest"
)

// probedPod is a server pod on the pod network (the fake network's
// address is 127.0.0.1, where srv listens) with the given probes.
func probedPod(t *testing.T, srv *httptest.Server, readiness, liveness bool) (*v1.Pod, Network) {
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	probe := &v1.Probe{
		ProbeHandler:  v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(int32(p))}},
		PeriodSeconds: 1, FailureThreshold: 1,
	}
	pod := serverPod()
	if readiness {
		pod.Spec.Containers[0].ReadinessProbe = probe
	}
	if liveness {
		pod.Spec.Containers[0].LivenessProbe = probe
	}
	return pod, &fakeNetwork{ips: []string{"127.0.0.1"}}
}

// A readiness probe holds the pod out of Ready until the server answers
// 2xx, and takes it out again when it stops; the container keeps running.
func TestReadinessProbeGatesReady(t *testing.T) {
	var healthy atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	pod, network := probedPod(t, srv, true, false)
	h := runWith(t, &instancestest.Fake{Listeners: true, ListenerHandoff: true}, pod, config{backoff: testBackoff, network: network})
	ready := func(st v1.PodStatus) bool {
		for _, c := range st.Conditions {
			if c.Type == v1.PodReady {
				return c.Status == v1.ConditionTrue
			}
		}
		return false
	}
	h.waitFor("Running", func(st v1.PodStatus) bool { return st.Phase == v1.PodRunning })
	time.Sleep(1500 * time.Millisecond)
	if st := h.w.Pod().Status; ready(st) || st.ContainerStatuses[0].Ready {
		t.Fatalf("Ready while the readiness probe fails: %s", describe(st))
	}
	if !h.events.has("Unhealthy: Readiness probe failed: HTTP probe failed with statuscode: 503") {
		t.Errorf("events %v: want Unhealthy for the readiness probe", h.events.all)
	}
	healthy.Store(true)
	h.waitFor("Ready", ready)
	healthy.Store(false)
	h.waitFor("not Ready again", func(st v1.PodStatus) bool { return !ready(st) && st.Phase == v1.PodRunning })
	if n := h.w.Pod().Status.ContainerStatuses[0].RestartCount; n != 0 {
		t.Errorf("a failing readiness probe restarted the container %d times", n)
	}
}

// livenessFailing is serverPod with a liveness probe against a server
// that answers 500 until the test ends.
func livenessFailing(t *testing.T) (*v1.Pod, Network) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	}))
	t.Cleanup(srv.Close)
	return probedPod(t, srv, false, true)
}

// A failing liveness probe kills the instance (Killing), and the restart
// policy starts it again.
func TestLivenessProbeRestarts(t *testing.T) {
	pod, network := livenessFailing(t)
	zero := int64(0)
	pod.Spec.TerminationGracePeriodSeconds = &zero
	h := runWith(t, &instancestest.Fake{Listeners: true, ListenerHandoff: true}, pod, config{backoff: testBackoff, network: network})
	h.waitFor("a restart", func(st v1.PodStatus) bool {
		return len(st.ContainerStatuses) == 1 && st.ContainerStatuses[0].RestartCount >= 1
	})
	for _, want := range []string{
		"Unhealthy: Liveness probe failed: HTTP probe failed with statuscode: 500",
		"Killing: Container web failed liveness probe, will be restarted",
	} {
		if !h.events.has(want) {
			t.Errorf("events %v: want %q", h.events.all, want)
		}
	}
}

// An exec probe is refused when the pod comes to the node: the pod fails
// saying why, and nothing runs.
func TestExecProbeRefused(t *testing.T) {
	pod := testPod(v1.RestartPolicyAlways, nil, "c")
	pod.Spec.Containers[0].LivenessProbe = &v1.Probe{ProbeHandler: v1.ProbeHandler{Exec: &v1.ExecAction{Command: []string{"true"}}}}
	exec := &instancestest.Fake{}
	h := runWith(t, exec, pod, config{backoff: testBackoff})
	st := h.waitFor("Failed", func(st v1.PodStatus) bool { return st.Phase == v1.PodFailed })
	if st.Reason != "UnsupportedProbe" || !h.events.has("UnsupportedProbe: Pod was rejected: liveness probe of container \"c\": exec probes are not supported for Wasm pods") {
		t.Errorf("reason %q message %q events %v", st.Reason, st.Message, h.events.all)
	}
	if n := exec.Calls("Create"); n != 0 {
		t.Errorf("%d instances created for a refused pod", n)
	}
}

// A container stopped for a failed liveness probe restarts under
// OnFailure even when it ends with exit 0 in its grace period (a handler
// pod drains so), as the kubelet restarts it under any policy but Never.
func TestLivenessRestartsUnderOnFailure(t *testing.T) {
	pod, network := livenessFailing(t)
	pod.Spec.RestartPolicy = v1.RestartPolicyOnFailure
	grace := int64(30)
	pod.Spec.TerminationGracePeriodSeconds = &grace
	exec := &instancestest.Fake{Listeners: true, ListenerHandoff: true}
	h := runWith(t, exec, pod, config{backoff: testBackoff, network: network})
	// The module ends cleanly as soon as it is asked to stop.
	go func() {
		id := instanceID(pod, "web", 0)
		for exec.Calls("Stop") == 0 {
			time.Sleep(10 * time.Millisecond)
		}
		exec.Exit(id, 0)
	}()
	st := h.waitFor("a restart", func(st v1.PodStatus) bool {
		return len(st.ContainerStatuses) == 1 && st.ContainerStatuses[0].RestartCount >= 1 || st.Phase == v1.PodSucceeded
	})
	if st.Phase == v1.PodSucceeded {
		t.Fatalf("the pod Succeeded: a container stopped by its liveness probe was not restarted under OnFailure")
	}
}
