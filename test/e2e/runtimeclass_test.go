package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/natsutil/natsserver"
)

// TestRuntimeClassRouting runs two executors, wasmtime (the default) and
// wazero, and routes pods by their RuntimeClass's handler: a pod naming
// the class whose handler maps to wazero runs on the wazero executor; a
// handler no executor serves is a clear pod error.
func TestRuntimeClassRouting(t *testing.T) {
	bin := binaries(t)
	nats, err := natsserver.Start(natsserver.Config{StoreDir: t.TempDir(), Token: "rc-token"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nats.Shutdown)
	sp := startSplitWith(t, nats.URL, "rc-token")
	wazeroAddr := "unix://" + filepath.Join(t.TempDir(), "wazero.sock")
	startProcess(t, "executor-wazero", filepath.Join(bin, "executor"), sp.env,
		"--engine", "wazero", "--listen", wazeroAddr, "--registry", sp.registryAddr, "--nats", nats.URL, "--state-dir", t.TempDir(), "--mount-root", mountRoot(t))
	n := startNode(t, "e2e-runtimeclass", sp.env, append(sp.flags,
		"--executor", "wazero="+wazeroAddr, "--runtime-handler", "wasm-pure-go=wazero")...)

	if out, err := kubectlIn(t, []byte(`{"apiVersion":"node.k8s.io/v1","kind":"RuntimeClass","metadata":{"name":"pure-go"},"handler":"wasm-pure-go"}`), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := kubectlIn(t, []byte(`{"apiVersion":"node.k8s.io/v1","kind":"RuntimeClass","metadata":{"name":"unserved"},"handler":"no-such-engine"}`), "apply", "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Cleanup(func() { _, _ = kubectl(t, "delete", "runtimeclass", "pure-go", "unserved") })
	ns := namespace(t, "e2e-runtimeclass")
	image := push(t, "examples/hello:v1")

	pure := wasmPod("pure", n.name, image, v1.RestartPolicyNever)
	rc := "pure-go"
	pure.Spec.RuntimeClassName = &rc
	apply(t, ns, pure)
	apply(t, ns, wasmPod("default", n.name, image, v1.RestartPolicyNever))
	waitPhase(t, ns, "pure", v1.PodSucceeded, 2*time.Minute)
	waitPhase(t, ns, "default", v1.PodSucceeded, 2*time.Minute)
	if logs := mustKubectl(t, "logs", "-n", ns, "pure"); !strings.Contains(logs, "running as pod pure") {
		t.Errorf("logs of the wazero pod: %q", logs)
	}
	// Each executor ran exactly the pod routed to it.
	for addr, want := range map[string]string{wazeroAddr: "pure", sp.executorAddr: "default"} {
		conn, err := grpcutil.Dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := executorv1.NewExecutorServiceClient(conn).ListInstances(context.Background(), &executorv1.ListInstancesRequest{
			LabelSelector: map[string]string{"wasmlet.io/namespace": ns},
		})
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		var pods []string
		for _, inst := range resp.GetInstances() {
			pods = append(pods, inst.GetSpec().GetLabels()["wasmlet.io/pod"])
		}
		if len(pods) != 1 || pods[0] != want {
			t.Errorf("executor %s ran %v, want [%s]", addr, pods, want)
		}
	}

	unserved := wasmPod("unserved", n.name, image, v1.RestartPolicyNever)
	rc2 := "unserved"
	unserved.Spec.RuntimeClassName = &rc2
	apply(t, ns, unserved)
	waitFor(t, time.Minute, "a clear error for an unserved handler", func() (bool, string) {
		got := jsonpath(t, ns, "unserved", "{.status.phase}: {.status.message}")
		return strings.Contains(got, "no-such-engine") && strings.Contains(got, "not served"), got
	})
}

// TestNodeNotReadyWithoutExecutor stops the node's only executor: the Node
// turns NotReady with a message naming it, and Ready again once an
// executor answers at that address.
func TestNodeNotReadyWithoutExecutor(t *testing.T) {
	bin := binaries(t)
	nats, err := natsserver.Start(natsserver.Config{StoreDir: t.TempDir(), Token: "nr-token"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nats.Shutdown)
	sp := startSplitWith(t, nats.URL, "nr-token")
	n := startNode(t, "e2e-notready", sp.env, sp.flags...)

	exec := sp.executor
	exec.stop(10 * time.Second)
	waitFor(t, time.Minute, "Ready False naming the executor", func() (bool, string) {
		got := mustKubectl(t, "get", "node", n.name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}: {.status.conditions[?(@.type=="Ready")].message}`)
		return strings.HasPrefix(got, "False: ") && strings.Contains(got, "executor not reachable"), got
	})
	startProcess(t, "executor-again", filepath.Join(bin, "executor"), sp.env,
		"--listen", sp.executorAddr, "--registry", sp.registryAddr, "--nats", nats.URL, "--state-dir", t.TempDir(), "--mount-root", mountRoot(t))
	waitFor(t, time.Minute, "Ready True again", func() (bool, string) {
		got := mustKubectl(t, "get", "node", n.name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		return got == "True", got
	})
}
