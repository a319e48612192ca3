package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
)

// TestNodeStatsAndMetrics reads a wasmlet node's kubelet API through the
// API server's node proxy, as kubectl (and metrics-server) would:
// /stats/summary and /metrics/resource show a running Wasm pod's memory
// and CPU, /metrics the node agent's own metrics; a ServiceAccount without
// RBAC is refused.
//
// The API server proxies to no loopback address ("address not allowed"),
// so this node listens on the host's first other IPv4 address.
func TestNodeStatsAndMetrics(t *testing.T) {
	ip := hostIP(t)
	n := startNode(t, "e2e-metrics", nil, "--node-ip", ip)
	ns := namespace(t, "e2e-metrics")
	image := push(t, "examples/hello:v1")
	apply(t, ns, wasmPod("busy", n.name, image, v1.RestartPolicyAlways, v1.EnvVar{Name: "COUNT", Value: "100000"}, v1.EnvVar{Name: "SLEEP", Value: "10ms"}))
	waitPhase(t, ns, "busy", v1.PodRunning, 2*time.Minute)
	proxy := "/api/v1/nodes/" + n.name + "/proxy"

	var pod *statsv1alpha1.PodStats
	var summary statsv1alpha1.Summary
	waitFor(t, 30*time.Second, "the pod's memory and CPU time in /stats/summary", func() (bool, string) {
		out, err := kubectl(t, "get", "--raw", proxy+"/stats/summary")
		if err != nil {
			return false, err.Error()
		}
		summary = statsv1alpha1.Summary{}
		if err := json.Unmarshal([]byte(out), &summary); err != nil {
			return false, err.Error()
		}
		pod = nil
		for i := range summary.Pods {
			if p := &summary.Pods[i]; p.PodRef.Namespace == ns && p.PodRef.Name == "busy" {
				pod = p
			}
		}
		if pod == nil || pod.Memory == nil || pod.Memory.WorkingSetBytes == nil || *pod.Memory.WorkingSetBytes == 0 ||
			len(pod.Containers) != 1 || pod.CPU == nil || pod.CPU.UsageCoreNanoSeconds == nil || *pod.CPU.UsageCoreNanoSeconds == 0 {
			return false, out
		}
		return true, ""
	})
	ctr := pod.Containers[0]
	t.Logf("pod busy: working set %d bytes, CPU %d ns; container %s: %d bytes", *pod.Memory.WorkingSetBytes, *pod.CPU.UsageCoreNanoSeconds, ctr.Name, *ctr.Memory.WorkingSetBytes)
	if ctr.Name != "hello" || ctr.Memory == nil || *ctr.Memory.WorkingSetBytes != *pod.Memory.WorkingSetBytes || *ctr.Memory.WorkingSetBytes%(64<<10) != 0 {
		t.Errorf("container stats %+v: want hello with the pod's memory, whole wasm pages", ctr)
	}
	if node := summary.Node; node.NodeName != n.name || node.CPU == nil || node.CPU.UsageCoreNanoSeconds == nil || *node.CPU.UsageCoreNanoSeconds == 0 ||
		node.Memory == nil || node.Memory.WorkingSetBytes == nil || *node.Memory.WorkingSetBytes == 0 {
		t.Errorf("node stats: %+v", node)
	}
	// A second reading has a CPU rate for the pod.
	var again statsv1alpha1.Summary
	if err := json.Unmarshal([]byte(mustKubectl(t, "get", "--raw", proxy+"/stats/summary")), &again); err != nil {
		t.Fatal(err)
	}
	for _, p := range again.Pods {
		if p.PodRef.Name == "busy" && (p.CPU == nil || p.CPU.UsageNanoCores == nil) {
			t.Errorf("second summary: pod CPU %+v, want usageNanoCores", p.CPU)
		}
	}

	res := mustKubectl(t, "get", "--raw", proxy+"/metrics/resource")
	for _, want := range []string{
		fmt.Sprintf(`pod_memory_working_set_bytes{namespace="%s",pod="busy"} `, ns),
		fmt.Sprintf(`container_memory_working_set_bytes{container="hello",namespace="%s",pod="busy"} `, ns),
		fmt.Sprintf(`container_cpu_usage_seconds_total{container="hello",namespace="%s",pod="busy"} `, ns),
		fmt.Sprintf(`pod_cpu_usage_seconds_total{namespace="%s",pod="busy"} `, ns),
		"node_cpu_usage_seconds_total ", "node_memory_working_set_bytes ", "scrape_error 0",
	} {
		if !strings.Contains(res, want) {
			t.Errorf("/metrics/resource lacks %q:\n%s", want, res)
		}
	}

	// The node agent's own metrics.
	own := mustKubectl(t, "get", "--raw", proxy+"/metrics")
	for _, want := range []string{
		`wasmlet_pods{phase="Running"} 1`,
		"wasmlet_pod_starts_total 1",
		"wasmlet_pod_start_duration_seconds_count 1",
		`wasmlet_image_pulls_total{result="success"}`,
		`wasmlet_pod_status_writes_total{code="200"}`,
	} {
		if !strings.Contains(own, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, own)
		}
	}

	// A ServiceAccount with no RBAC is refused by the node agent's
	// SubjectAccessReview (nodes/stats), not by the API server's proxy
	// alone: call the kubelet API directly with its token too.
	mustKubectl(t, "create", "serviceaccount", "-n", ns, "nobody")
	token := strings.TrimSpace(mustKubectl(t, "create", "token", "-n", ns, "nobody"))
	// Only the token: the admin kubeconfig's client certificate would win.
	c := cluster.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "kubectl", "--kubeconfig", os.DevNull, "--server", c.Server(),
		"--certificate-authority", c.CACertPath(), "--token", token, "get", "--raw", proxy+"/stats/summary").CombinedOutput()
	if err == nil || !strings.Contains(strings.ToLower(string(out)), "forbidden") {
		t.Errorf("stats/summary as a ServiceAccount without rights: %v %s, want Forbidden", err, out)
	}
	for _, path := range []string{"/stats/summary", "/metrics/resource", "/metrics"} {
		if code := kubeletGet(t, ip, n.port, path, token); code != 403 {
			t.Errorf("GET %s on the kubelet API with the token of a ServiceAccount without rights = %d, want 403", path, code)
		}
	}
}

// kubeletGet calls a node agent's kubelet API directly with a bearer token
// and returns the status code.
func kubeletGet(t *testing.T, ip string, port int, path, token string) int {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("https://%s%s", net.JoinHostPort(ip, fmt.Sprint(port)), path), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// hostIP is this host's first IPv4 address that is not loopback.
func hostIP(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	t.Skip("this host has no IPv4 address but loopback, and the API server proxies to no loopback address")
	return ""
}
