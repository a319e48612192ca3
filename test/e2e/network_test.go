package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/wasmlet/wasmlet/internal/testharness/localcluster"
)

// TestWasmServerOnPodNetwork: a pod of the example Go net/http server,
// with a containerPort and a readiness probe, on a node with
// --pod-network=bridge: it gets an
// address of its own from the Node's podCIDR through the CNI plugins, the
// node agent opens its port inside the pod's namespace and hands it to the
// unprivileged wazero executor, the probe makes it Ready, and the node
// reaches the server at the pod's IP; a pod without ports keeps the node's
// address; deleting the server pod takes its namespace and address away.
func TestWasmServerOnPodNetwork(t *testing.T) {
	state := t.TempDir()
	name := "e2e-net"
	startPodNetworkNode(t, name, state)
	var cidr netip.Prefix
	waitFor(t, 30*time.Second, "the Node's spec.podCIDR", func() (bool, string) {
		out, _ := kubectl(t, "get", "node", name, "-o", "jsonpath={.spec.podCIDR}")
		var err error
		cidr, err = netip.ParsePrefix(out)
		return err == nil, out
	})
	if cluster, _ := netip.ParsePrefix(localcluster.ClusterCIDR); !cluster.Contains(cidr.Addr()) {
		t.Fatalf("podCIDR %s outside the cluster CIDR %s", cidr, localcluster.ClusterCIDR)
	}

	ns := namespace(t, "e2e-net")
	image := pushModule(t, "httpserver.wasm", "e2e/httpserver:v1")
	server := wasmPod("web", name, image, v1.RestartPolicyAlways)
	server.Spec.Containers[0].Args = nil
	server.Spec.Containers[0].Ports = []v1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: v1.ProtocolTCP}}
	server.Spec.Containers[0].ReadinessProbe = &v1.Probe{
		ProbeHandler:  v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
		PeriodSeconds: 1,
	}
	apply(t, ns, server)
	waitPhase(t, ns, "web", v1.PodRunning, 2*time.Minute)
	// Its readiness probe, on the named port at the pod's IP, makes it Ready.
	waitFor(t, 30*time.Second, "pod web Ready", func() (bool, string) {
		out := jsonpath(t, ns, "web", `{.status.conditions[?(@.type=="Ready")].status}`)
		return out == "True", out
	})
	podIP := jsonpath(t, ns, "web", "{.status.podIP}")
	ip, err := netip.ParseAddr(podIP)
	if err != nil || !cidr.Contains(ip) {
		t.Fatalf("podIP %q: want an address of the Node's podCIDR %s", podIP, cidr)
	}
	t.Logf("pod web has %s on node %s (podCIDR %s)", ip, name, cidr)

	url := fmt.Sprintf("http://%s:8080/", ip)
	var body string
	waitFor(t, 30*time.Second, "the server answering at "+url, func() (bool, string) {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get(url)
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	if want := "Hello from WebAssembly, pod web!"; !strings.Contains(body, want) {
		t.Errorf("GET %s = %q, want %q", url, body, want)
	}

	// kubectl port-forward reaches it through the API server and the
	// kubelet API (WebSocket, or SPDY for an older kubectl).
	local := freePort(t)
	pf := exec.Command("kubectl", "--kubeconfig", cluster.Get(t).KubeconfigPath(), "port-forward", "-n", ns, "pod/web", fmt.Sprintf("%d:http", local))
	pfOut, err := pf.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var pfErr strings.Builder
	pf.Stderr = &pfErr
	if err := pf.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pf.Process.Kill(); pf.Wait() })
	line, _ := bufio.NewReader(pfOut).ReadString('\n')
	if !strings.HasPrefix(line, "Forwarding from") {
		t.Fatalf("kubectl port-forward: %q %s", line, pfErr.String())
	}
	fwd := fmt.Sprintf("http://127.0.0.1:%d/", local)
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(fwd)
	if err != nil {
		t.Fatalf("GET %s through kubectl port-forward: %v (%s)", fwd, err, pfErr.String())
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "Hello from WebAssembly, pod web!") {
		t.Errorf("GET %s through kubectl port-forward = %d %q", fwd, resp.StatusCode, b)
	}
	pf.Process.Kill()

	// A pod without ports stays on the node's address.
	hello := wasmPod("plain", name, push(t, "e2e/hello-net:v1"), v1.RestartPolicyNever)
	apply(t, ns, hello)
	waitPhase(t, ns, "plain", v1.PodSucceeded, 2*time.Minute)
	if got, host := jsonpath(t, ns, "plain", "{.status.podIP}"), jsonpath(t, ns, "plain", "{.status.hostIP}"); got != host {
		t.Errorf("a pod without ports has podIP %q, want the node's %q", got, host)
	}

	uid := jsonpath(t, ns, "web", "{.metadata.uid}")
	mustKubectl(t, "delete", "pod", "-n", ns, "web", "--wait=true", "--timeout=60s")
	waitFor(t, 30*time.Second, "the pod's namespace and address gone", func() (bool, string) {
		_, nsErr := os.Stat(filepath.Join(state, "podnet", "netns", uid))
		lease, _ := filepath.Glob(filepath.Join(state, "podnet", "ipam", "*", ip.String()))
		return os.IsNotExist(nsErr) && len(lease) == 0, fmt.Sprintf("netns: %v, lease: %v", nsErr, lease)
	})
	c := http.Client{Timeout: time.Second}
	if resp, err := c.Get(url); err == nil {
		resp.Body.Close()
		t.Errorf("the deleted pod's address still answers")
	}
}
