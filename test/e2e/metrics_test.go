package e2e

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
)

// TestNodeStatsAndMetrics reads a wasmlet node's kubelet API as the API
// server and metrics-server do, with the API server's kubelet client
// certificate: /stats/summary and /metrics/resource show a running Wasm
// pod's memory and CPU, /metrics the node agent's own metrics; a
// ServiceAccount without RBAC is refused by the node agent's
// SubjectAccessReview.
//
// (The API server's node proxy, `kubectl get --raw .../nodes/N/proxy/...`,
// refuses loopback addresses, and these tests use loopback only, so the
// kubelet API is called directly on 127.0.0.1.)
func TestNodeStatsAndMetrics(t *testing.T) {
	n := startNode(t, "e2e-metrics", nil)
	ns := namespace(t, "e2e-metrics")
	image := push(t, "examples/hello:v1")
	apply(t, ns, wasmPod("busy", n.name, image, v1.RestartPolicyAlways, v1.EnvVar{Name: "COUNT", Value: "100000"}, v1.EnvVar{Name: "SLEEP", Value: "10ms"}))
	waitPhase(t, ns, "busy", v1.PodRunning, 2*time.Minute)
	c := cluster.Get(t)
	certFile, keyFile := c.KubeletClientCert()
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) (string, error) {
		code, body := kubeletGet(t, n.port, path, func(cfg *tls.Config, _ *http.Request) { cfg.Certificates = []tls.Certificate{cert} })
		if code != http.StatusOK {
			return body, fmt.Errorf("GET %s = %d: %s", path, code, body)
		}
		return body, nil
	}
	mustGet := func(path string) string {
		out, err := get(path)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}

	var pod *statsv1alpha1.PodStats
	var summary statsv1alpha1.Summary
	waitFor(t, 30*time.Second, "the pod's memory and CPU time in /stats/summary", func() (bool, string) {
		out, err := get("/stats/summary")
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
	if err := json.Unmarshal([]byte(mustGet("/stats/summary")), &again); err != nil {
		t.Fatal(err)
	}
	for _, p := range again.Pods {
		if p.PodRef.Name == "busy" && (p.CPU == nil || p.CPU.UsageNanoCores == nil) {
			t.Errorf("second summary: pod CPU %+v, want usageNanoCores", p.CPU)
		}
	}

	res := mustGet("/metrics/resource")
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
	own := mustGet("/metrics")
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

	// /containerLogs: a container not in the pod is a 400 naming the pod's
	// containers; an unknown pod is a 404.
	withCert := func(cfg *tls.Config, _ *http.Request) { cfg.Certificates = []tls.Certificate{cert} }
	if code, body := kubeletGet(t, n.port, "/containerLogs/"+ns+"/busy/nope", withCert); code != http.StatusBadRequest || !strings.Contains(body, "hello") {
		t.Errorf("logs of a container not in the pod = %d %q, want 400 naming hello", code, body)
	}
	if code, body := kubeletGet(t, n.port, "/containerLogs/"+ns+"/no-such-pod/hello", withCert); code != http.StatusNotFound {
		t.Errorf("logs of an unknown pod = %d %q, want 404", code, body)
	}

	// A ServiceAccount with no RBAC is authenticated (TokenReview) and then
	// refused by the node agent's SubjectAccessReview.
	mustKubectl(t, "create", "serviceaccount", "-n", ns, "nobody")
	token := strings.TrimSpace(mustKubectl(t, "create", "token", "-n", ns, "nobody"))
	for _, path := range []string{"/stats/summary", "/metrics/resource", "/metrics", "/pods"} {
		code, _ := kubeletGet(t, n.port, path, func(_ *tls.Config, r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) })
		if code != http.StatusForbidden {
			t.Errorf("GET %s on the kubelet API with the token of a ServiceAccount without rights = %d, want 403", path, code)
		}
	}
}

// kubeletGet calls a node agent's kubelet API on 127.0.0.1 with whatever
// credentials with sets, and returns the status code and body.
func kubeletGet(t *testing.T, port int, path string, with func(*tls.Config, *http.Request)) (int, string) {
	t.Helper()
	cfg := &tls.Config{InsecureSkipVerify: true}
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d%s", port, path), nil)
	if err != nil {
		t.Fatal(err)
	}
	with(cfg, req)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}
