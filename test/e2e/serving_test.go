package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestServingOnNodeAddress: on a node without a pod network (the default
// where no CNI config is installed, as under `make up`), a pod of the
// example server still serves its containerPort, on the node's address;
// a second pod asking for the same port cannot start, says why, and
// leaves the first serving; the first one's liveness probe restarts it
// when it hangs; once it is deleted, the second one gets the port.
func TestServingOnNodeAddress(t *testing.T) {
	name := "e2e-serve"
	startNode(t, name, nil, "--default-executor", "wazero", "--pod-network", "off")
	ns := namespace(t, "e2e-serve")
	image := pushModule(t, "httpserver.wasm", "e2e/httpserver:serve")
	port := freePort(t)
	server := func(pod string) *v1.Pod {
		p := wasmPod(pod, name, image, v1.RestartPolicyAlways)
		grace := int64(1) // WASI has no signals: a server runs out its grace period
		p.Spec.TerminationGracePeriodSeconds = &grace
		c := &p.Spec.Containers[0]
		c.Args = nil
		c.Ports = []v1.ContainerPort{{Name: "http", ContainerPort: int32(port), Protocol: v1.ProtocolTCP}}
		healthz := v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}
		c.ReadinessProbe = &v1.Probe{ProbeHandler: healthz, PeriodSeconds: 1}
		c.LivenessProbe = &v1.Probe{ProbeHandler: healthz, PeriodSeconds: 1, TimeoutSeconds: 1, FailureThreshold: 2}
		return p
	}
	get := func(path string, timeout time.Duration) (string, error) {
		c := http.Client{Timeout: timeout}
		resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(port) + path)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("%s: %s", resp.Status, b)
		}
		return string(b), nil
	}
	answers := func(pod string) {
		t.Helper()
		waitFor(t, 60*time.Second, "pod "+pod+" answering on the node's address", func() (bool, string) {
			body, err := get("/", 2*time.Second)
			if err != nil {
				return false, err.Error()
			}
			return strings.Contains(body, "Hello from WebAssembly, pod "+pod+"!"), body
		})
	}

	apply(t, ns, server("first"))
	waitPhase(t, ns, "first", v1.PodRunning, 2*time.Minute)
	waitFor(t, 30*time.Second, "pod first Ready", func() (bool, string) {
		out := jsonpath(t, ns, "first", `{.status.conditions[?(@.type=="Ready")].status}`)
		return out == "True", out
	})
	if ip, host := jsonpath(t, ns, "first", "{.status.podIP}"), jsonpath(t, ns, "first", "{.status.hostIP}"); ip != host {
		t.Errorf("podIP %q, want the node's address %q", ip, host)
	}
	answers("first")
	events := mustKubectl(t, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=first", "-o", "jsonpath={.items[*].reason}")
	if !strings.Contains(events, "PortsOnNodeAddress") {
		t.Errorf("events of first: %s; want PortsOnNodeAddress", events)
	}

	// A second pod asking for the same port: a clear error, the first
	// one untouched.
	apply(t, ns, server("second"))
	want := fmt.Sprintf("port %d (http) is already in use on the node's address", port)
	waitFor(t, 60*time.Second, "pod second waiting with CreateContainerError", func() (bool, string) {
		out := jsonpath(t, ns, "second", "{.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}")
		return strings.HasPrefix(out, "CreateContainerError: ") && strings.Contains(out, want), out
	})
	answers("first")
	if rc := jsonpath(t, ns, "first", "{.status.containerStatuses[0].restartCount}"); rc != "0" {
		t.Errorf("pod first restarted %s times while second failed", rc)
	}

	// A hung server: its liveness probe fails, the node kills it, the
	// restart policy brings it back.
	if _, err := get("/hang", time.Second); err == nil {
		t.Fatal("GET /hang answered")
	}
	waitFor(t, 60*time.Second, "pod first restarted by its liveness probe", func() (bool, string) {
		out := jsonpath(t, ns, "first", "{.status.containerStatuses[0].restartCount}")
		return out == "1", "restartCount " + out
	})
	events = mustKubectl(t, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=first", "-o", "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}")
	for _, want := range []string{"Unhealthy: Liveness probe failed", "Killing: Container hello failed liveness probe, will be restarted"} {
		if !strings.Contains(events, want) {
			t.Errorf("events of first:\n%s\nwant %q", events, want)
		}
	}
	answers("first")

	// The port freed, the second pod starts on its next try.
	mustKubectl(t, "delete", "pod", "-n", ns, "first", "--wait=true", "--timeout=60s")
	waitPhase(t, ns, "second", v1.PodRunning, time.Minute)
	answers("second")
}

// TestHandlerModeOnWasmtime: a pod annotated wasmlet.io/handler: wagi runs
// the WAT WAGI example once per request, on a node whose executor is
// wasmtime (which cannot hand a module a socket: in handler mode the
// executor serves the port itself), with a readiness probe on it.
func TestHandlerModeOnWasmtime(t *testing.T) {
	name := "e2e-wagi"
	startNode(t, name, nil, "--default-executor", "wasmtime", "--pod-network", "off")
	ns := namespace(t, "e2e-wagi")
	port := freePort(t)
	pod := wasmPod("greeter", name, pushModule(t, "wagi-hello.wasm", "e2e/wagi-hello:v1"), v1.RestartPolicyAlways)
	pod.Annotations = map[string]string{"wasmlet.io/handler": "wagi"}
	c := &pod.Spec.Containers[0]
	c.Args = nil
	c.Ports = []v1.ContainerPort{{Name: "http", ContainerPort: int32(port)}}
	c.ReadinessProbe = &v1.Probe{ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: "/ready", Port: intstr.FromString("http")}}, PeriodSeconds: 1}
	apply(t, ns, pod)
	waitPhase(t, ns, "greeter", v1.PodRunning, 2*time.Minute)
	waitFor(t, 30*time.Second, "pod greeter Ready", func() (bool, string) {
		out := jsonpath(t, ns, "greeter", `{.status.conditions[?(@.type=="Ready")].status}`)
		return out == "True", out
	})
	for _, path := range []string{"/greet", "/again"} {
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if want := "Hello from a WebAssembly handler at " + path; resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want) {
			t.Errorf("GET %s = %d %q, want 200 %q", path, resp.StatusCode, b, want)
		}
	}
	events := mustKubectl(t, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=greeter", "-o", "jsonpath={.items[*].reason}")
	if strings.Contains(events, "ServingFlavour") {
		t.Errorf("events %s: a handler pod was routed away from wasmtime", events)
	}
}
