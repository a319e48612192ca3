package e2e

import (
	"context"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/natsutil/natsserver"
)

// runningPods lists, sorted, the pods of namespace ns whose instances run
// on the executor at addr.
func runningPods(t *testing.T, addr, ns string) []string {
	t.Helper()
	conn, err := grpcutil.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := executorv1.NewExecutorServiceClient(conn).ListInstances(ctx, &executorv1.ListInstancesRequest{
		LabelSelector: map[string]string{"wasmlet.io/namespace": ns},
	})
	if err != nil {
		return []string{"error: " + err.Error()}
	}
	var pods []string
	for _, inst := range resp.GetInstances() {
		if inst.GetState() == executorv1.InstanceState_INSTANCE_STATE_RUNNING {
			pods = append(pods, inst.GetSpec().GetLabels()["wasmlet.io/pod"])
		}
	}
	sort.Strings(pods)
	return pods
}

// TestExecutorReplicasDiscovered runs two executor processes of one
// flavour that announce themselves on the node's NATS, and a node agent
// given no executor address at all: it finds both, spreads a Deployment's
// pods over them, and when one is killed (no goodbye), its pods are
// restarted on the other under their restart policy while the node stays
// Ready.
func TestExecutorReplicasDiscovered(t *testing.T) {
	bin := binaries(t)
	reg := sharedRegistry(t)
	nats, err := natsserver.Start(natsserver.Config{StoreDir: t.TempDir(), Token: "replicas-token"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nats.Shutdown)
	env := []string{"WASMLET_NATS_TOKEN=replicas-token"}
	sock := t.TempDir()
	registryAddr := "unix://" + filepath.Join(sock, "registry.sock")
	startProcess(t, "registry-cache", filepath.Join(bin, "registry-cache"), nil,
		"serve", "--listen", registryAddr, "--dir", t.TempDir(), "--insecure-registry", reg.Host)
	const nodeName = "e2e-replicas"
	addrs := map[string]string{}
	procs := map[string]*process{}
	for _, id := range []string{"replica-a", "replica-b"} {
		addrs[id] = "unix://" + filepath.Join(sock, id+".sock")
		procs[id] = startProcess(t, "executor-"+id, filepath.Join(bin, "executor"), env,
			"--listen", addrs[id], "--registry", registryAddr, "--nats", nats.URL, "--state-dir", t.TempDir(), "--mount-root", mountRoot(t),
			"--id", id, "--node", nodeName, "--flavour", "wasmtime", "--announce-period", "1s")
	}
	n := startNode(t, nodeName, env, "--nats", nats.URL, "--registry-cache", registryAddr, "--supervise-executor=false")

	ns := namespace(t, "e2e-replicas")
	image := push(t, "examples/hello:v1")
	labels := map[string]string{"app": "spread"}
	dep := &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: "spread"},
		Spec: appsv1.DeploymentSpec{
			Replicas: int32p(4),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: template(labels, n.name, image, v1.RestartPolicyAlways,
				v1.EnvVar{Name: "COUNT", Value: "1000000"}, v1.EnvVar{Name: "SLEEP", Value: "200ms"}),
		},
	}
	dep.Spec.Template.Spec.TerminationGracePeriodSeconds = new(int64)
	applyObject(t, ns, dep)
	waitRollout(t, ns, "spread")

	var onA, onB []string
	waitFor(t, time.Minute, "4 instances running, spread over both replicas", func() (bool, string) {
		onA, onB = runningPods(t, addrs["replica-a"], ns), runningPods(t, addrs["replica-b"], ns)
		return len(onA)+len(onB) == 4 && len(onA) > 0 && len(onB) > 0, "replica-a " + strings.Join(onA, ",") + "; replica-b " + strings.Join(onB, ",")
	})
	t.Logf("replica-a runs %v, replica-b runs %v", onA, onB)
	podsBefore := mustKubectl(t, "get", "pods", "-n", ns, "-l", "app=spread", "-o", "jsonpath={.items[*].metadata.name}")

	// From now on the node must stay Ready.
	var mu sync.Mutex
	var notReady []string
	ctx, stopWatch := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for ctx.Err() == nil {
			got, err := kubectl(t, "get", "node", nodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}: {.status.conditions[?(@.type=="Ready")].message}`)
			if err == nil && !strings.HasPrefix(got, "True") {
				mu.Lock()
				notReady = append(notReady, got)
				mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()

	a := procs["replica-a"]
	if err := syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-a.exited
	killedAt := time.Now()
	waitFor(t, 2*time.Minute, "every pod running again on replica-b", func() (bool, string) {
		onB = runningPods(t, addrs["replica-b"], ns)
		return len(onB) == 4, strings.Join(onB, ",")
	})
	t.Logf("all 4 pods run on replica-b %s after replica-a was killed", time.Since(killedAt).Round(100*time.Millisecond))
	// The pods that were on replica-a were restarted in place, not replaced.
	for _, pod := range onA {
		waitFor(t, time.Minute, pod+" Running, restarted after the loss", func() (bool, string) {
			got := jsonpath(t, ns, pod, "{.status.phase} {.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].lastState.terminated.reason}")
			f := strings.Fields(got)
			return len(f) == 3 && f[0] == "Running" && f[1] != "0" && f[2] == "ExecutorLost", got
		})
		if msg := jsonpath(t, ns, pod, "{.status.containerStatuses[0].lastState.terminated.message}"); !strings.Contains(msg, "replica-a") {
			t.Errorf("%s: the loss does not name the replica: %q", pod, msg)
		}
	}
	if got := mustKubectl(t, "get", "pods", "-n", ns, "-l", "app=spread", "-o", "jsonpath={.items[*].metadata.name}"); got != podsBefore {
		t.Errorf("pods after the loss %q, before %q: want the same pods restarted", got, podsBefore)
	}
	stopWatch()
	<-watched
	mu.Lock()
	defer mu.Unlock()
	if len(notReady) > 0 {
		t.Errorf("the node was not Ready while one replica of two was gone: %v", notReady)
	}
}
