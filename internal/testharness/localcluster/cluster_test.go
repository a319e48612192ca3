package localcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

var cluster Shared

func TestMain(m *testing.M) { os.Exit(cluster.Run(m)) }

const wantVersion = "v1.33.13"

func TestKubectlAdmin(t *testing.T) {
	c := cluster.Get(t)
	kubectl := func(args ...string) []byte {
		t.Helper()
		cmd := exec.Command("/usr/bin/kubectl", append([]string{"--kubeconfig", c.KubeconfigPath()}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.Bytes())
		}
		return out
	}
	if out := kubectl("get", "ns"); !bytes.Contains(out, []byte("kube-node-lease")) {
		t.Errorf("kubectl get ns: no kube-node-lease in\n%s", out)
	}
	var v struct {
		ServerVersion struct{ GitVersion string } `json:"serverVersion"`
	}
	out := kubectl("version", "-o", "json")
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("kubectl version -o json: %v\n%s", err, out)
	}
	if v.ServerVersion.GitVersion != wantVersion {
		t.Errorf("server version %q, want %q", v.ServerVersion.GitVersion, wantVersion)
	}
}

// nodeClient returns a clientset with the node identity of name.
func nodeClient(t *testing.T, c *Cluster, name string) kubernetes.Interface {
	t.Helper()
	path, err := c.NodeKubeconfig(name)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

const wasmTaintKey = "kubernetes.io/arch"

// registerNode creates a wasm node as the node itself and marks it Ready, as the
// node agent does.
func registerNode(ctx context.Context, t *testing.T, cs kubernetes.Interface, name string) {
	t.Helper()
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
			"kubernetes.io/arch": "wasm32-wasi", "kubernetes.io/os": "wasip1", "kubernetes.io/hostname": name,
		}},
		Spec: corev1.NodeSpec{Taints: []corev1.Taint{{Key: wasmTaintKey, Value: "wasm32-wasi", Effect: corev1.TaintEffectNoSchedule}}},
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatalf("node identity creates its Node: %v", err)
	}
	res := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("4"),
		corev1.ResourceMemory: resource.MustParse("8Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	// The controller-manager taints a new Node at once: an Update carrying a stale
	// spec would be refused by NodeRestriction ("not allowed to modify taints")
	// before any conflict check, so write the status as a patch, as the kubelet does.
	now := metav1.Now()
	status := corev1.NodeStatus{
		Capacity: res, Allocatable: res,
		Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}},
	}
	patch, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Nodes().PatchStatus(ctx, name, patch); err != nil {
		t.Fatalf("node identity sets its status: %v", err)
	}
	holder := name
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: corev1.NamespaceNodeLease},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder, RenewTime: &metav1.MicroTime{Time: time.Now()}},
	}
	if _, err := cs.CoordinationV1().Leases(corev1.NamespaceNodeLease).Create(ctx, lease, metav1.CreateOptions{}); err != nil {
		t.Fatalf("node identity creates its Lease: %v", err)
	}
}

func TestNodeIdentity(t *testing.T) {
	c := cluster.Get(t)
	ctx := t.Context()
	const name = "wasm-identity"
	cs := nodeClient(t, c, name)
	registerNode(ctx, t, cs, name)

	if _, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("node lists all pods: err = %v, want Forbidden", err)
	}
	sel := metav1.ListOptions{FieldSelector: "spec.nodeName=" + name}
	if _, err := cs.CoreV1().Pods("").List(ctx, sel); err != nil {
		t.Errorf("node lists its own pods: %v", err)
	}
	other := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "someone-else"}}
	if _, err := cs.CoreV1().Nodes().Create(ctx, other, metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("node creates another Node: err = %v, want Forbidden", err)
	}
	if _, err := c.NodeKubeconfig("../escape"); err == nil {
		t.Error("NodeKubeconfig accepted a name with a path in it")
	}
}

func TestSchedulesOnWasmNode(t *testing.T) {
	c := cluster.Get(t)
	ctx := t.Context()
	const name = "wasm-sched"
	registerNode(ctx, t, nodeClient(t, c, name), name)
	admin, err := c.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "hello-wasm", Namespace: "default"},
		Spec: corev1.PodSpec{
			NodeSelector: map[string]string{"kubernetes.io/arch": "wasm32-wasi", "kubernetes.io/hostname": name},
			Tolerations:  []corev1.Toleration{{Key: wasmTaintKey, Operator: corev1.TolerationOpExists}},
			Containers:   []corev1.Container{{Name: "main", Image: "example.test/hello:v1"}},
		},
	}
	start := time.Now()
	if _, err := admin.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := start.Add(30 * time.Second)
	for {
		p, err := admin.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if p.Spec.NodeName == name {
			t.Logf("pod scheduled on %s after %s", name, time.Since(start).Round(time.Millisecond))
			return
		}
		if p.Spec.NodeName != "" {
			t.Fatalf("pod scheduled on %q, want %q", p.Spec.NodeName, name)
		}
		if time.Now().After(deadline) {
			n, _ := admin.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
			t.Fatalf("pod not scheduled within 30 s; conditions %+v; node taints %+v", p.Status.Conditions, n.Spec.Taints)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestStopAttachRestart runs its own cluster: it stops it from "another command"
// (Attach and the package-level Stop), checks no process is left, and starts it
// again on the same directory, which must keep the PKI and the etcd data.
func TestStopAttachRestart(t *testing.T) {
	binDir := findBinDirForTest(t)
	dir := t.TempDir()
	ctx := t.Context()
	cfg := Config{Dir: dir, BinDir: binDir, Logs: t.Output(), dieWithParent: true}
	t.Cleanup(func() { _ = Stop(dir) })

	begin := time.Now()
	c, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("start (cold PKI): %s", time.Since(begin).Round(time.Millisecond))
	if err := createNamespace(ctx, c, "survives-restart"); err != nil {
		t.Fatal(err)
	}
	caBefore, err := os.ReadFile(c.CACertPath())
	if err != nil {
		t.Fatal(err)
	}

	a, err := Attach(dir)
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	pids := a.PIDs()
	if len(pids) != 4 {
		t.Fatalf("Attach sees PIDs %v, want 4 components", pids)
	}
	if a.Server() != c.Server() || a.KubeconfigPath() != c.KubeconfigPath() {
		t.Errorf("Attach: server %s kubeconfig %s, want %s %s", a.Server(), a.KubeconfigPath(), c.Server(), c.KubeconfigPath())
	}
	t.Logf("memory: %s", rssReport(pids))

	begin = time.Now()
	if err := Stop(dir); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("stop: %s", time.Since(begin).Round(time.Millisecond))
	for name, pid := range pids {
		if alive(pid) {
			t.Errorf("%s (PID %d) still running after Stop", name, pid)
		}
	}
	if _, err := Attach(dir); err == nil {
		t.Error("Attach succeeded on a stopped cluster")
	}
	if err := Stop(dir); err != nil {
		t.Errorf("second Stop: %v", err)
	}

	begin = time.Now()
	c, err = Start(ctx, cfg)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	t.Logf("start (warm: PKI and etcd data reused): %s", time.Since(begin).Round(time.Millisecond))
	caAfter, err := os.ReadFile(c.CACertPath())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(caBefore, caAfter) {
		t.Error("restart replaced a valid cluster CA")
	}
	cs, err := c.Clientset()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().Get(ctx, "survives-restart", metav1.GetOptions{}); err != nil {
		t.Errorf("namespace created before the restart: %v", err)
	}
	if _, err := Start(ctx, cfg); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second Start on a running dir: err = %v, want already running", err)
	}
	pids = c.PIDs()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	for name, pid := range pids {
		if alive(pid) {
			t.Errorf("%s (PID %d) still running after Stop", name, pid)
		}
	}
}

func createNamespace(ctx context.Context, c *Cluster, name string) error {
	cs, err := c.Clientset()
	if err != nil {
		return err
	}
	_, err = cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	return err
}

// rssReport sums VmRSS of the processes.
func rssReport(pids map[string]int) string {
	var total int
	var parts []string
	for name, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
				total += kb
				parts = append(parts, fmt.Sprintf("%s %d MiB", name, kb/1024))
			}
		}
	}
	return fmt.Sprintf("RSS total %d MiB (%s)", total/1024, strings.Join(parts, ", "))
}

// TestStartFailsFast needs no real binaries: an etcd that dies at once must make
// Start fail quickly with the end of etcd's log in the error.
func TestStartFailsFast(t *testing.T) {
	bin := t.TempDir()
	for _, name := range components() {
		script := "#!/bin/sh\necho \"" + name + ": refusing to start: bad flag\" >&2\nexit 3\n"
		if err := os.WriteFile(filepath.Join(bin, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	begin := time.Now()
	_, err := Start(t.Context(), Config{Dir: dir, BinDir: bin})
	if err == nil {
		t.Fatal("Start succeeded with an etcd that exits")
	}
	if !strings.Contains(err.Error(), "etcd: refusing to start: bad flag") || !strings.Contains(err.Error(), "exited") {
		t.Errorf("error does not carry etcd's log tail:\n%v", err)
	}
	if d := time.Since(begin); d > 10*time.Second {
		t.Errorf("Start took %s to notice etcd exited", d)
	}
	if _, err := os.Stat(pidPath(dir, etcdName)); !os.IsNotExist(err) {
		t.Errorf("pid file left after a failed start: %v", err)
	}
}

func TestStartNeedsBinaries(t *testing.T) {
	_, err := Start(t.Context(), Config{Dir: t.TempDir(), BinDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "build.sh") {
		t.Errorf("err = %v, want a hint to build the control plane", err)
	}
}
