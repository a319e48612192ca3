package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/wasmlet/wasmlet/internal/testharness/localcluster"
)

// EnvMetricsServer names a metrics-server binary; without it the newest
// build of hack/metrics-server/build.sh under $WASMLET_CACHE is used.
const EnvMetricsServer = "WASMLET_METRICS_SERVER"

// TestKubectlTop: metrics-server (built from the Go module proxy by
// hack/metrics-server/build.sh) runs as a process on loopback with a
// ServiceAccount's token and the RBAC its manifests give it, scrapes the
// wasmlet node's kubelet API (InternalIP and the port from
// status.daemonEndpoints, verifying the node's CSR-issued serving
// certificate against the cluster CA), and is registered with the
// aggregator as v1beta1.metrics.k8s.io. Stock `kubectl top pod` shows a
// running Wasm pod's CPU and memory and `kubectl top node` the node.
//
// The aggregator reaches a loopback metrics-server through a Service of
// type ExternalName "localhost": for ExternalName it dials the name at the
// APIService's port (k8s.io/apiserver pkg/util/proxy ResolveCluster), with
// none of the node proxy's refusal of loopback addresses, while Endpoints
// and EndpointSlices may not hold loopback IPs.
func TestKubectlTop(t *testing.T) {
	msBin := metricsServerBinary(t)
	c := cluster.Get(t)
	// Runs last: an APIService left behind would break discovery (and so
	// kubectl) for the package's later tests.
	t.Cleanup(func() {
		out, err := kubectl(t, "get", "apiservice", "v1beta1.metrics.k8s.io", "--ignore-not-found", "-o", "name")
		if err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("APIService v1beta1.metrics.k8s.io not removed after the test: %q %v", out, err)
		}
	})
	n := startNode(t, "e2e-top", nil, "--rotate-server-certificates")
	autoApproveServingCSRs(t, c.KubeconfigPath(), n.name)

	// metrics-server's identity: a ServiceAccount with the RBAC of its
	// release manifests (nodes/metrics for the kubelet API, pods and nodes
	// to list, delegated authn/authz for its own API).
	_, err := kubectlIn(t, []byte(metricsServerRBAC), "apply", "-f", "-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = kubectlIn(t, []byte(metricsServerRBAC), "delete", "--ignore-not-found", "-f", "-") })
	token := strings.TrimSpace(mustKubectl(t, "create", "token", "metrics-server", "-n", "kube-system", "--duration", "2h"))
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "metrics-server.kubeconfig")
	caPEM, err := os.ReadFile(c.CACertPath())
	if err != nil {
		t.Fatal(err)
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["local"] = &clientcmdapi.Cluster{Server: c.Server(), CertificateAuthorityData: caPEM}
	kc.AuthInfos["metrics-server"] = &clientcmdapi.AuthInfo{Token: token}
	kc.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "metrics-server"}
	kc.CurrentContext = "local"
	if err := clientcmd.WriteToFile(*kc, kubeconfig); err != nil {
		t.Fatal(err)
	}
	// Its serving certificate is for the name the aggregator verifies
	// (<service>.<namespace>.svc), signed by the cluster CA (the caBundle).
	certFile, keyFile, err := c.ServingCert("metrics-server", []string{"metrics-server.kube-system.svc", "localhost"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	ms := startProcess(t, "metrics-server", msBin, nil,
		"--kubeconfig", kubeconfig,
		"--authentication-kubeconfig", kubeconfig,
		"--authorization-kubeconfig", kubeconfig,
		"--bind-address", "127.0.0.1",
		"--secure-port", fmt.Sprint(port),
		"--tls-cert-file", certFile,
		"--tls-private-key-file", keyFile,
		"--kubelet-preferred-address-types", "InternalIP",
		"--kubelet-use-node-status-port",
		"--kubelet-certificate-authority", c.CACertPath(),
		// The shortest resolution it takes; it must exceed the scrape timeout.
		"--metric-resolution", "10s",
		"--kubelet-request-timeout", "5s",
		"--v", "2",
	)
	apiService := fmt.Sprintf(metricsAPIService, port, base64.StdEncoding.EncodeToString(caPEM))
	if _, err := kubectlIn(t, []byte(apiService), "apply", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	// Removed before metrics-server stops (cleanups run last first): an
	// APIService that does not answer breaks discovery for later tests.
	t.Cleanup(func() { _, _ = kubectlIn(t, []byte(apiService), "delete", "--ignore-not-found", "-f", "-") })
	waitFor(t, 90*time.Second, "APIService v1beta1.metrics.k8s.io Available", func() (bool, string) {
		select {
		case <-ms.exited:
			t.Fatalf("metrics-server exited:\n%s", tail(ms.logPath, 40))
		default:
		}
		out, err := kubectl(t, "get", "apiservice", "v1beta1.metrics.k8s.io", "-o",
			`jsonpath={.status.conditions[?(@.type=="Available")].status} {.status.conditions[?(@.type=="Available")].message}`)
		return err == nil && strings.HasPrefix(out, "True"), fmt.Sprint(out, err)
	})

	ns := namespace(t, "e2e-top")
	image := push(t, "examples/hello:v1")
	apply(t, ns, wasmPod("busy", n.name, image, v1.RestartPolicyAlways,
		v1.EnvVar{Name: "COUNT", Value: "100000000"}, v1.EnvVar{Name: "SLEEP", Value: "2ms"}))
	waitPhase(t, ns, "busy", v1.PodRunning, 2*time.Minute)

	// metrics-server needs two scrapes of the pod (10 s apart) for a CPU rate.
	topLine := regexp.MustCompile(`^busy\s+(\d+)m\s+(\d+)Mi$`)
	var top string
	waitFor(t, 2*time.Minute, "kubectl top pod to show busy", func() (bool, string) {
		out, err := kubectl(t, "top", "pod", "-n", ns, "--no-headers")
		top = strings.TrimSpace(out)
		return err == nil && topLine.MatchString(top), fmt.Sprint(out, err)
	})
	t.Logf("kubectl top pod: %s", top)
	if m := topLine.FindStringSubmatch(top); m[2] == "0" {
		t.Errorf("kubectl top pod shows no memory: %q", top)
	}
	// The same through the API, unrounded: CPU and memory both above zero.
	var pm struct {
		Containers []struct {
			Name  string            `json:"name"`
			Usage map[string]string `json:"usage"`
		} `json:"containers"`
	}
	raw := mustKubectl(t, "get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/"+ns+"/pods/busy")
	if err := json.Unmarshal([]byte(raw), &pm); err != nil {
		t.Fatal(err)
	}
	if len(pm.Containers) != 1 || pm.Containers[0].Name != "hello" {
		t.Fatalf("PodMetrics containers: %s", raw)
	}
	for _, res := range []string{"cpu", "memory"} {
		q, err := resource.ParseQuantity(pm.Containers[0].Usage[res])
		if err != nil || q.Sign() <= 0 {
			t.Errorf("PodMetrics %s usage %q, want above zero (%v): %s", res, pm.Containers[0].Usage[res], err, raw)
		}
	}

	nodeLine := regexp.MustCompile(`^` + regexp.QuoteMeta(n.name) + `\s+(\d+)m\s+\d+%\s+(\d+)Mi\s+\d+%$`)
	var nodeTop string
	waitFor(t, time.Minute, "kubectl top node to show "+n.name, func() (bool, string) {
		out, err := kubectl(t, "top", "node", n.name, "--no-headers")
		nodeTop = strings.TrimSpace(out)
		return err == nil && nodeLine.MatchString(nodeTop), fmt.Sprint(out, err)
	})
	t.Logf("kubectl top node: %s", nodeTop)
	if m := nodeLine.FindStringSubmatch(nodeTop); m[1] == "0" || m[2] == "0" {
		t.Errorf("kubectl top node shows no usage: %q", nodeTop)
	}
}

// metricsServerBinary finds metrics-server: $WASMLET_METRICS_SERVER, else the
// newest complete build under ${WASMLET_CACHE:-~/.cache/wasmlet}/metrics-server/.
// Without one the test is skipped, or fails when $WASMLET_REQUIRE_CLUSTER is
// set (`make test` builds it).
func metricsServerBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping a test that needs a local control plane")
	}
	bin, err := findMetricsServer()
	if err == nil {
		return bin
	}
	if os.Getenv(localcluster.EnvRequire) != "" {
		t.Fatalf("%v (%s is set, so this is a failure, not a skip)", err, localcluster.EnvRequire)
	}
	t.Skipf("skipping: %v", err)
	return ""
}

func findMetricsServer() (string, error) {
	if b := os.Getenv(EnvMetricsServer); b != "" {
		if st, err := os.Stat(b); err != nil || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("%s=%s is not an executable", EnvMetricsServer, b)
		}
		return b, nil
	}
	cache := os.Getenv(localcluster.EnvCache)
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", err
		}
		cache = filepath.Join(home, ".cache", "wasmlet")
	}
	matches, _ := filepath.Glob(filepath.Join(cache, "metrics-server", "*", "metrics-server"))
	var best string
	var bestTime time.Time
	for _, m := range matches {
		if strings.HasSuffix(filepath.Dir(m), ".tmp") {
			continue
		}
		if st, err := os.Stat(m); err == nil && st.Mode()&0o111 != 0 && (best == "" || st.ModTime().After(bestTime)) {
			best, bestTime = m, st.ModTime()
		}
	}
	if best == "" {
		return "", errors.New("no metrics-server build in " + filepath.Join(cache, "metrics-server") + ": run hack/metrics-server/build.sh (or make metrics-server), or set " + EnvMetricsServer)
	}
	return best, nil
}

// autoApproveServingCSRs approves node's kubelet-serving CSRs as they come,
// until the test ends: the shared cluster signs for 3 minutes, so a node
// that serves longer than that renews while the test runs (a real cluster
// runs an approver such as kubelet-csr-approver for this).
func autoApproveServingCSRs(t *testing.T, kubeconfig, node string) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			out, _ := exec.CommandContext(ctx, "kubectl", "--kubeconfig", kubeconfig, "get", "csr", "-o",
				`jsonpath={range .items[*]}{.metadata.name} {.spec.signerName} {.spec.username} {.status.conditions[*].type}{"\n"}{end}`).Output()
			for _, line := range strings.Split(string(out), "\n") {
				f := strings.Fields(line)
				if len(f) == 3 && f[1] == "kubernetes.io/kubelet-serving" && f[2] == "system:node:"+node {
					_ = exec.CommandContext(ctx, "kubectl", "--kubeconfig", kubeconfig, "certificate", "approve", f[0]).Run()
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// metricsServerRBAC is what metrics-server's release manifests grant it.
const metricsServerRBAC = `
apiVersion: v1
kind: ServiceAccount
metadata: {name: metrics-server, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:metrics-server"}
rules:
- apiGroups: [""]
  resources: [nodes/metrics]
  verbs: [get]
- apiGroups: [""]
  resources: [pods, nodes]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:metrics-server"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:metrics-server"}
subjects: [{kind: ServiceAccount, name: metrics-server, namespace: kube-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "metrics-server:system:auth-delegator"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:auth-delegator"}
subjects: [{kind: ServiceAccount, name: metrics-server, namespace: kube-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: "metrics-server-auth-reader", namespace: kube-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: extension-apiserver-authentication-reader}
subjects: [{kind: ServiceAccount, name: metrics-server, namespace: kube-system}]
`

// metricsAPIService registers metrics-server (at localhost:%d) with the
// aggregator, verified against the cluster CA (%s, base64).
const metricsAPIService = `
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec: {type: ExternalName, externalName: localhost}
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  group: metrics.k8s.io
  version: v1beta1
  service: {name: metrics-server, namespace: kube-system, port: %d}
  caBundle: %s
  groupPriorityMinimum: 100
  versionPriority: 100
`
