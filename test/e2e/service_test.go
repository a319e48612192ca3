package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/wasmlet/wasmlet/internal/testharness/localcluster"
)

// TestServiceOverWasmPods: a ClusterIP Service in front of a Deployment of
// three example Go net/http server pods on a --pod-network=bridge node,
// with the real kube-proxy (iptables mode) for that node: the
// EndpointSlices list exactly the three Ready pods' IPs, GETs from the host
// at the Service's ClusterIP reach more than one pod, a rolling update
// under a loop of GETs is counted, and scaled to zero the Service has no
// endpoints and its ClusterIP refuses connections.
//
// It has a node (and bridge) of its own beside TestWasmServerOnPodNetwork's.
func TestServiceOverWasmPods(t *testing.T) {
	c := cluster.Get(t)
	name := "e2e-svc"
	startPodNetworkNode(t, name, t.TempDir())

	begin := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	stopProxy, err := c.StartKubeProxy(ctx, name)
	if errors.Is(err, localcluster.ErrNoBinaries) && os.Getenv("WASMLET_REQUIRE_CLUSTER") == "" {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stopProxy(); err != nil {
			t.Errorf("stop kube-proxy: %v", err)
		}
		if t.Failed() {
			t.Logf("kube-proxy's log: %s", c.LogPath("kube-proxy"))
		}
	})
	t.Logf("kube-proxy ready in %s", time.Since(begin).Round(time.Millisecond))

	ns := namespace(t, "e2e-svc")
	image := pushModule(t, "httpserver.wasm", "e2e/httpserver-svc:v1")
	labels := map[string]string{"app": "hello-svc"}
	tmpl := template(labels, name, image, v1.RestartPolicyAlways)
	ctr := &tmpl.Spec.Containers[0]
	ctr.Args = nil
	ctr.Ports = []v1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: v1.ProtocolTCP}}
	ctr.ReadinessProbe = &v1.Probe{
		ProbeHandler:  v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
		PeriodSeconds: 1,
	}
	one, zero := intstr.FromInt32(1), intstr.FromInt32(0)
	dep := &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: int32p(3),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: tmpl,
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{MaxSurge: &one, MaxUnavailable: &zero}},
		},
	}
	svc := &v1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: v1.ServiceSpec{
			Type:     v1.ServiceTypeClusterIP,
			Selector: labels,
			Ports:    []v1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: v1.ProtocolTCP}},
		},
	}
	begin = time.Now()
	applyObject(t, ns, dep)
	applyObject(t, ns, svc)
	waitRollout(t, ns, "web")
	t.Logf("3 replicas Ready in %s", time.Since(begin).Round(time.Millisecond))

	// The EndpointSlices list exactly the Ready pods' IPs.
	var podIPs []string
	waitFor(t, 60*time.Second, "EndpointSlices listing the 3 Ready pods", func() (bool, string) {
		podIPs = readyPodIPs(t, ns, "app=hello-svc")
		eps := readyEndpoints(t, ns, "web")
		return len(podIPs) == 3 && slices.Equal(podIPs, eps), fmt.Sprintf("ready pods %v, endpoints %v", podIPs, eps)
	})
	t.Logf("EndpointSlices list the 3 Ready pods: %v", podIPs)

	// kube-proxy follows within its sync period (--iptables-min-sync-period,
	// 1 s): until then its rules may hold fewer endpoints.
	begin = time.Now()
	waitFor(t, 30*time.Second, "kube-proxy's rules for the 3 endpoints", func() (bool, string) {
		eps := proxiedEndpoints(t, ns+"/web:http")
		return slices.Equal(eps, podIPs), fmt.Sprint(eps)
	})
	t.Logf("kube-proxy's rules list the 3 endpoints %s after the EndpointSlices", time.Since(begin).Round(time.Millisecond))

	clusterIP := mustKubectl(t, "get", "service", "-n", ns, "web", "-o", "jsonpath={.spec.clusterIP}")
	url := "http://" + clusterIP + "/"
	// A new connection for every request: kube-proxy picks an endpoint per
	// connection.
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	begin = time.Now()
	waitFor(t, 30*time.Second, "the Service answering at "+url, func() (bool, string) {
		_, err := getPod(client, url)
		return err == nil, fmt.Sprint(err)
	})
	t.Logf("ClusterIP %s answers from the host (first GET after %s)", clusterIP, time.Since(begin).Round(time.Millisecond))
	seen := map[string]int{}
	for range 30 {
		pod, err := getPod(client, url)
		if err != nil {
			t.Fatal(err)
		}
		seen[pod]++
	}
	t.Logf("30 GETs at %s answered by: %v", url, seen)
	if len(seen) < 2 {
		t.Errorf("30 GETs at the ClusterIP were answered by %v, want more than one pod", seen)
	}

	// A rolling update under a loop of GETs.
	loopCtx, stopLoop := context.WithCancel(context.Background())
	var (
		mu       sync.Mutex
		total    int
		failures []string
		answered = map[string]int{}
		done     = make(chan struct{})
	)
	go func() {
		defer close(done)
		for loopCtx.Err() == nil {
			at := time.Now()
			pod, err := getPod(client, url)
			mu.Lock()
			total++
			if err != nil {
				failures = append(failures, fmt.Sprintf("%s: %v", at.Format("15:04:05.000"), err))
			} else {
				answered[pod]++
			}
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()
	old := readyPodIPs(t, ns, "app=hello-svc")
	begin = time.Now()
	mustKubectl(t, "set", "env", "-n", ns, "deployment/web", "ROLLOUT=2")
	waitRollout(t, ns, "web")
	waitFor(t, 60*time.Second, "EndpointSlices listing the 3 new Ready pods", func() (bool, string) {
		podIPs = readyPodIPs(t, ns, "app=hello-svc")
		eps := readyEndpoints(t, ns, "web")
		fresh := len(podIPs) == 3
		for _, ip := range podIPs {
			fresh = fresh && !slices.Contains(old, ip)
		}
		return fresh && slices.Equal(podIPs, eps), fmt.Sprintf("ready pods %v (old %v), endpoints %v", podIPs, old, eps)
	})
	rollout := time.Since(begin)
	time.Sleep(2 * time.Second) // and a little while on the new pods
	stopLoop()
	<-done
	mu.Lock()
	t.Logf("rolling update in %s: %d GETs, %d failed, answered by %v", rollout.Round(time.Millisecond), total, len(failures), answered)
	for _, f := range failures {
		t.Logf("  failed: %s", f)
	}
	if len(failures) > 0 {
		t.Errorf("%d of %d GETs at the ClusterIP failed during the rolling update", len(failures), total)
	}
	mu.Unlock()

	// Scaled to zero the Service has no endpoints, and its ClusterIP refuses
	// connections (kube-proxy's REJECT for a Service without endpoints).
	mustKubectl(t, "scale", "-n", ns, "deployment/web", "--replicas=0")
	waitFor(t, 60*time.Second, "no endpoints", func() (bool, string) {
		out, _ := kubectl(t, "get", "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=web", "-o",
			`jsonpath={range .items[*].endpoints[*]}{.addresses[0]} {end}`)
		return strings.TrimSpace(out) == "", out
	})
	waitFor(t, 30*time.Second, "the ClusterIP refusing connections", func() (bool, string) {
		_, err := getPod(client, url)
		return err != nil && strings.Contains(err.Error(), "connection refused"), fmt.Sprint(err)
	})
}

var podNameRE = regexp.MustCompile(`Hello from WebAssembly, pod (\S+)!`)

// getPod GETs url and returns the pod named in the answer.
func getPod(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	m := podNameRE.FindStringSubmatch(string(b))
	if resp.StatusCode != http.StatusOK || m == nil {
		return "", fmt.Errorf("GET %s: %s %q", url, resp.Status, b)
	}
	return m[1], nil
}

// readyPodIPs lists the IPs of the Ready pods matching selector, sorted.
func readyPodIPs(t *testing.T, ns, selector string) []string {
	out, _ := kubectl(t, "get", "pods", "-n", ns, "-l", selector, "-o",
		`jsonpath={range .items[*]}{.status.podIP} {.status.conditions[?(@.type=="Ready")].status} {.metadata.deletionTimestamp}{"\n"}{end}`)
	var ips []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && f[1] == "True" {
			ips = append(ips, f[0])
		}
	}
	sort.Strings(ips)
	return ips
}

// readyEndpoints lists the ready endpoints' addresses of the Service's
// EndpointSlices, sorted.
func readyEndpoints(t *testing.T, ns, service string) []string {
	out, _ := kubectl(t, "get", "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name="+service, "-o",
		`jsonpath={range .items[*].endpoints[*]}{.addresses[0]} {.conditions.ready}{"\n"}{end}`)
	var ips []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(l)
		if len(f) == 2 && f[1] == "true" {
			ips = append(ips, f[0])
		}
	}
	sort.Strings(ips)
	return ips
}

var sepRE = regexp.MustCompile(`-j KUBE-SEP-\S+|--comment "?(\S+) -> ([0-9.]+):`)

// proxiedEndpoints lists the endpoints (IPs, sorted) of kube-proxy's rules
// for the service port "namespace/name:port": the jumps of its KUBE-SVC-
// chain to KUBE-SEP- chains, whose comments name them.
func proxiedEndpoints(t *testing.T, servicePort string) []string {
	out, err := exec.Command("iptables-save", "-t", "nat").Output()
	if err != nil {
		t.Fatalf("iptables-save -t nat: %v", err)
	}
	var ips []string
	for _, l := range strings.Split(string(out), "\n") {
		if !strings.HasPrefix(l, "-A KUBE-SVC-") || !strings.Contains(l, "-j KUBE-SEP-") {
			continue
		}
		for _, m := range sepRE.FindAllStringSubmatch(l, -1) {
			if m[1] == servicePort {
				ips = append(ips, m[2])
			}
		}
	}
	sort.Strings(ips)
	return ips
}

// startPodNetworkNode starts a node agent with --pod-network=bridge and
// the supervised executor on wazero (which serves pods' ports), with the
// CNI plugins make cni builds; root only (skipped otherwise, failed under
// WASMLET_REQUIRE_CLUSTER). The node's bridge (named after the node, so
// other nodes on this host keep theirs) goes with the test, and a stale
// one of an earlier run, with another cluster's podCIDR on it, before.
func startPodNetworkNode(t *testing.T, name, state string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("WASMLET_REQUIRE_CLUSTER") != "" {
			t.Fatal("pod networking needs root")
		}
		t.Skip("pod networking needs root")
	}
	out, err := exec.Command("bash", filepath.Join(repoRoot(), "hack", "cni", "build.sh")).Output()
	if err != nil {
		t.Fatalf("hack/cni/build.sh: %v", err)
	}
	bridge := localcluster.NodeBridge(name)
	exec.Command("ip", "link", "delete", bridge).Run()
	t.Cleanup(func() { exec.Command("ip", "link", "delete", bridge).Run() })
	startNode(t, name, nil, "--state-dir", state, "--default-executor", "wazero",
		"--pod-network", "bridge", "--cni-bin-dir", strings.TrimSpace(string(out)))
}
