package podworker

import (
	"context"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/instancestest"
)

func TestHandlerOf(t *testing.T) {
	web := v1.Container{Name: "web", Ports: []v1.ContainerPort{{ContainerPort: 8080}}}
	job := v1.Container{Name: "job"}
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		c           v1.Container
		want        instances.HandlerMode
		err         string
	}{
		{name: "none", c: web},
		{name: "pod-wide", annotations: map[string]string{"wasmlet.io/handler": "wagi"}, c: web, want: instances.HandlerWAGI},
		{name: "pod-wide skips a container without ports", annotations: map[string]string{"wasmlet.io/handler": "wagi"}, c: job},
		{name: "container over pod", annotations: map[string]string{"wasmlet.io/handler": "wagi", "wasmlet.io/handler.web": "server"}, c: web},
		{name: "container", annotations: map[string]string{"wasmlet.io/handler.web": "wagi"}, c: web, want: instances.HandlerWAGI},
		{name: "container without ports", annotations: map[string]string{"wasmlet.io/handler.job": "wagi"}, c: job, err: `annotation wasmlet.io/handler.job: wagi: container "job" declares no containerPort`},
		{name: "unknown", annotations: map[string]string{"wasmlet.io/handler": "cgi"}, c: web, err: `annotation wasmlet.io/handler: "cgi": want "wagi"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &v1.Pod{}
			pod.Annotations = tc.annotations
			got, err := handlerOf(pod, &tc.c)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("%q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// A pod in handler mode gets instances that the executor serves: the
// mode in the spec, the container's ports as its listeners, handed over;
// a mode the node does not know is the pod's configuration error.
func TestHandlerModePod(t *testing.T) {
	exec := &instancestest.Fake{ListenerHandoff: true, HandlerModes: []instances.HandlerMode{instances.HandlerWAGI}}
	pod := serverPod()
	pod.Annotations = map[string]string{AnnotationHandler: "wagi"}
	h := runWith(t, exec, pod, config{backoff: testBackoff, network: &fakeNetwork{}})
	h.waitFor("Running", func(st v1.PodStatus) bool { return st.Phase == v1.PodRunning })
	inst, err := exec.Get(context.Background(), instanceID(h.w.Pod(), "web", 0))
	if err != nil {
		t.Fatal(err)
	}
	if inst.Spec.Handler != instances.HandlerWAGI || len(inst.Spec.Listeners) != 2 || !inst.Spec.HandedListeners {
		t.Errorf("spec handler %q listeners %v handed %v: want WAGI on both ports, handed over", inst.Spec.Handler, inst.Spec.Listeners, inst.Spec.HandedListeners)
	}
	if !HandlesRequests(pod) {
		t.Error("HandlesRequests false for a pod whose only serving container is a handler")
	}
	h.terminate()

	bad := serverPod()
	bad.Annotations = map[string]string{AnnotationHandler: "cgi"}
	h = runWith(t, &instancestest.Fake{Listeners: true}, bad, config{backoff: testBackoff, network: &fakeNetwork{}})
	h.waitFor("CreateContainerConfigError", func(st v1.PodStatus) bool {
		if len(st.ContainerStatuses) == 0 {
			return false
		}
		w := st.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == "CreateContainerConfigError" && strings.Contains(w.Message, `annotation wasmlet.io/handler: "cgi"`)
	})
}
