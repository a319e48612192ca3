package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/natsutil/natsserver"
)

// wasmPod is a pod that asks for a wasmlet node: the taint's tolerations
// and the arch node selector, pinned to one node by hostname.
func wasmPod(name, nodeName, image string, policy v1.RestartPolicy, env ...v1.EnvVar) *v1.Pod {
	tol := func(effect v1.TaintEffect) v1.Toleration {
		return v1.Toleration{Key: "kubernetes.io/arch", Operator: v1.TolerationOpEqual, Value: "wasm32-wasi", Effect: effect}
	}
	return &v1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1.PodSpec{
			RestartPolicy: policy,
			NodeSelector:  map[string]string{"kubernetes.io/arch": "wasm32-wasi", "kubernetes.io/hostname": nodeName},
			Tolerations:   []v1.Toleration{tol(v1.TaintEffectNoSchedule), tol(v1.TaintEffectNoExecute)},
			Containers: []v1.Container{{
				Name:  "hello",
				Image: image,
				Args:  []string{"--from", "e2e"},
				Env: append([]v1.EnvVar{{Name: "POD_NAME", ValueFrom: &v1.EnvVarSource{
					FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.name"}}}}, env...),
			}},
		},
	}
}

func apply(t *testing.T, ns string, pod *v1.Pod) {
	t.Helper()
	b, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := kubectlIn(t, b, "apply", "-n", ns, "-f", "-"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

func jsonpath(t *testing.T, ns, pod, path string) string {
	t.Helper()
	out, err := kubectl(t, "get", "pod", "-n", ns, pod, "-o", "jsonpath="+path)
	if err != nil {
		return "error: " + err.Error()
	}
	return out
}

func waitPhase(t *testing.T, ns, pod string, phase v1.PodPhase, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("pod %s/%s phase %s", ns, pod, phase), func() (bool, string) {
		got := jsonpath(t, ns, pod, "{.status.phase} {.status.containerStatuses[*].state}")
		return strings.HasPrefix(got, string(phase)+" "), got
	})
}

// phasesSeen watches a pod and returns the phases it passed through, in
// order, until it reaches a terminal phase or ctx ends.
func phasesSeen(ctx context.Context, t *testing.T, ns, name string) <-chan []v1.PodPhase {
	t.Helper()
	client, err := cluster.Get(t).Clientset()
	if err != nil {
		t.Fatal(err)
	}
	w, err := client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan []v1.PodPhase, 1)
	go func() {
		defer w.Stop()
		var seen []v1.PodPhase
		defer func() { out <- seen }()
		for ev := range w.ResultChan() {
			pod, ok := ev.Object.(*v1.Pod)
			if !ok {
				continue
			}
			if p := pod.Status.Phase; p != "" && (len(seen) == 0 || seen[len(seen)-1] != p) {
				seen = append(seen, p)
			}
			if pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
				return
			}
		}
	}()
	return out
}

func TestNodeRegisters(t *testing.T) {
	n := startNode(t, "e2e-register", nil)
	out := mustKubectl(t, "get", "node", n.name, "-o", "json")
	var node v1.Node
	if err := json.Unmarshal([]byte(out), &node); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{"kubernetes.io/arch": "wasm32-wasi", "kubernetes.io/os": "wasip1", "kubernetes.io/hostname": n.name} {
		if got := node.Labels[k]; got != want {
			t.Errorf("label %s = %q, want %q", k, got, want)
		}
	}
	effects := map[v1.TaintEffect]bool{}
	for _, taint := range node.Spec.Taints {
		if taint.Key == "kubernetes.io/arch" && taint.Value == "wasm32-wasi" {
			effects[taint.Effect] = true
		}
	}
	if !effects[v1.TaintEffectNoSchedule] || !effects[v1.TaintEffectNoExecute] {
		t.Errorf("taints = %v, want kubernetes.io/arch=wasm32-wasi NoSchedule and NoExecute", node.Spec.Taints)
	}
	if node.Status.Capacity.Memory().IsZero() || node.Status.Capacity.Cpu().IsZero() || node.Status.Capacity.Pods().Value() != 110 {
		t.Errorf("capacity = %v", node.Status.Capacity)
	}
	for _, c := range node.Status.Conditions {
		if c.Type == v1.NodeMemoryPressure && (c.Status != v1.ConditionFalse || c.Reason != "KubeletHasSufficientMemory") {
			t.Errorf("MemoryPressure = %s/%s: %s", c.Status, c.Reason, c.Message)
		}
	}
	if !strings.Contains(node.Status.NodeInfo.ContainerRuntimeVersion, "wasmtime") {
		t.Errorf("runtime version = %q, want the executor's engine", node.Status.NodeInfo.ContainerRuntimeVersion)
	}
	if node.Status.DaemonEndpoints.KubeletEndpoint.Port != int32(n.port) {
		t.Errorf("kubelet port = %d, want %d", node.Status.DaemonEndpoints.KubeletEndpoint.Port, n.port)
	}
	// The Lease is renewed: its renewTime moves.
	first := mustKubectl(t, "get", "lease", "-n", "kube-node-lease", n.name, "-o", "jsonpath={.spec.renewTime}")
	waitFor(t, 30*time.Second, "lease renewal", func() (bool, string) {
		now := mustKubectl(t, "get", "lease", "-n", "kube-node-lease", n.name, "-o", "jsonpath={.spec.renewTime}")
		return now != first, now
	})
}

func TestPodRunsToCompletionWithLogs(t *testing.T) {
	n := startNode(t, "e2e-hello", nil)
	ns := namespace(t, "e2e-hello")
	image := push(t, "examples/hello:v1")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	seen := phasesSeen(ctx, t, ns, "hello")
	apply(t, ns, wasmPod("hello", n.name, image, v1.RestartPolicyNever,
		v1.EnvVar{Name: "COUNT", Value: "5"}, v1.EnvVar{Name: "SLEEP", Value: "400ms"}))
	waitPhase(t, ns, "hello", v1.PodSucceeded, 2*time.Minute)

	phases := <-seen
	if fmt.Sprint(phases) != "[Pending Running Succeeded]" {
		t.Errorf("phases = %v, want [Pending Running Succeeded]", phases)
	}
	if got := jsonpath(t, ns, "hello", "{.status.containerStatuses[0].state.terminated.exitCode} {.status.containerStatuses[0].state.terminated.reason}"); got != "0 Completed" {
		t.Errorf("terminated = %q, want exit code 0, Completed", got)
	}
	if got := jsonpath(t, ns, "hello", "{.status.containerStatuses[0].imageID}"); !strings.Contains(got, "@sha256:") {
		t.Errorf("imageID = %q, want a digest", got)
	}
	logs := mustKubectl(t, "logs", "-n", ns, "hello")
	for _, want := range []string{
		"Hello from WebAssembly, running as pod hello!",
		`argv: ["hello" "--from" "e2e"]`,
		"count 1", "count 5",
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("kubectl logs lacks %q; got:\n%s", want, logs)
		}
	}
	if tailed := mustKubectl(t, "logs", "-n", ns, "hello", "--tail=1"); strings.TrimSpace(tailed) != "count 5" {
		t.Errorf("kubectl logs --tail=1 = %q, want \"count 5\"", tailed)
	}
	stamped := strings.Split(strings.TrimSpace(mustKubectl(t, "logs", "-n", ns, "hello", "--timestamps", "--tail=1")), " ")
	if _, err := time.Parse(time.RFC3339Nano, stamped[0]); err != nil || stamped[len(stamped)-1] != "5" {
		t.Errorf("kubectl logs --timestamps = %q", stamped)
	}
	if limited := mustKubectl(t, "logs", "-n", ns, "hello", "--limit-bytes=10"); len(limited) != 10 {
		t.Errorf("kubectl logs --limit-bytes=10 gave %d bytes: %q", len(limited), limited)
	}
	if since := mustKubectl(t, "logs", "-n", ns, "hello", "--since=1h"); since != logs {
		t.Errorf("kubectl logs --since=1h differs from all logs: %q", since)
	}
	events := mustKubectl(t, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=hello", "-o", "jsonpath={.items[*].reason}")
	for _, want := range []string{"Scheduled", "Pulled", "Created", "Started"} {
		if !strings.Contains(events, want) {
			t.Errorf("events %q lack %s", events, want)
		}
	}
}

func TestExitCodeFailsPod(t *testing.T) {
	n := startNode(t, "e2e-exit", nil)
	ns := namespace(t, "e2e-exit")
	image := push(t, "examples/hello:v1")
	apply(t, ns, wasmPod("exit3", n.name, image, v1.RestartPolicyNever, v1.EnvVar{Name: "EXIT_CODE", Value: "3"}))
	waitPhase(t, ns, "exit3", v1.PodFailed, 2*time.Minute)
	if got := jsonpath(t, ns, "exit3", "{.status.containerStatuses[0].state.terminated.exitCode} {.status.containerStatuses[0].state.terminated.reason}"); got != "3 Error" {
		t.Errorf("terminated = %q, want exit code 3, Error", got)
	}
	if logs := mustKubectl(t, "logs", "-n", ns, "exit3"); !strings.Contains(logs, "exiting with code 3 as asked") {
		t.Errorf("stderr line missing from logs:\n%s", logs)
	}
}

func TestMissingImageStaysPending(t *testing.T) {
	n := startNode(t, "e2e-missing", nil)
	ns := namespace(t, "e2e-missing")
	ref := sharedRegistry(t).Host + "/examples/does-not-exist:v1"
	apply(t, ns, wasmPod("missing", n.name, ref, v1.RestartPolicyNever))
	waitFor(t, 90*time.Second, "ErrImagePull", func() (bool, string) {
		got := jsonpath(t, ns, "missing", "{.status.phase}|{.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].state.waiting.message}")
		parts := strings.SplitN(got, "|", 3)
		return len(parts) == 3 && parts[0] == "Pending" &&
			(parts[1] == "ErrImagePull" || parts[1] == "ImagePullBackOff") &&
			strings.Contains(parts[2], "examples/does-not-exist:v1"), got
	})
	// The node keeps working: a good pod next to it still runs.
	image := push(t, "examples/hello:v1")
	apply(t, ns, wasmPod("good", n.name, image, v1.RestartPolicyNever))
	waitPhase(t, ns, "good", v1.PodSucceeded, 2*time.Minute)
	events := mustKubectl(t, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=missing", "-o", "jsonpath={.items[*].message}")
	if !strings.Contains(events, "does-not-exist") {
		t.Errorf("events do not name the reference: %s", events)
	}
}

func TestDeleteRunningPod(t *testing.T) {
	n := startNode(t, "e2e-delete", nil)
	ns := namespace(t, "e2e-delete")
	image := push(t, "examples/hello:v1")
	pod := wasmPod("long", n.name, image, v1.RestartPolicyAlways, v1.EnvVar{Name: "COUNT", Value: "100000"}, v1.EnvVar{Name: "SLEEP", Value: "100ms"})
	grace := int64(1)
	pod.Spec.TerminationGracePeriodSeconds = &grace
	apply(t, ns, pod)
	waitPhase(t, ns, "long", v1.PodRunning, 2*time.Minute)

	// Made again under the same name while it runs, as kubectl replace
	// --force or a StatefulSet's controller does: the new pod runs. It
	// stayed Pending, the node agent answering for the old one.
	old := jsonpath(t, ns, "long", "{.metadata.uid}")
	manifest := mustKubectl(t, "get", "pod", "-n", ns, "long", "-o", "yaml")
	if out, err := kubectlIn(t, []byte(manifest), "replace", "--force", "-f", "-"); err != nil {
		t.Fatalf("kubectl replace --force: %v %s", err, out)
	}
	waitFor(t, time.Minute, "the pod made again under its name running", func() (bool, string) {
		uid, phase := jsonpath(t, ns, "long", "{.metadata.uid}"), jsonpath(t, ns, "long", "{.status.phase}")
		return uid != old && phase == string(v1.PodRunning), uid + " " + phase
	})

	waitFor(t, 30*time.Second, "logs of the running pod", func() (bool, string) {
		out, _ := kubectl(t, "logs", "-n", ns, "long", "--tail=1")
		return strings.HasPrefix(out, "count "), out
	})
	// kubectl logs -f shows new lines as the module prints them.
	lines := followLogs(t, ns, "long", 4, 30*time.Second)
	var counts []int
	for _, l := range lines {
		var i int
		if _, err := fmt.Sscanf(l, "count %d", &i); err == nil {
			counts = append(counts, i)
		}
	}
	if len(counts) != 4 || counts[3] <= counts[0] {
		t.Errorf("kubectl logs -f printed %q, want four rising counts", lines)
	}

	if out, err := kubectl(t, "exec", "-n", ns, "long", "--", "sh"); err == nil || !strings.Contains(err.Error(), "not supported for Wasm pods") {
		t.Errorf("kubectl exec: %v %s, want a clear refusal", err, out)
	}

	start := time.Now()
	mustKubectl(t, "delete", "pod", "-n", ns, "long", "--timeout=60s")
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("deletion took %s", d)
	}
	t.Logf("deleted a running pod (grace 1s) in %s", time.Since(start).Round(time.Millisecond))
}

func TestKubeletAPIRefusesAnonymous(t *testing.T) {
	n := startNode(t, "e2e-authn", nil)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, path := range []string{"/pods", "/containerLogs/default/x/y", "/healthz"} {
		resp, err := client.Get(fmt.Sprintf("https://127.0.0.1:%d%s", n.port, path))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("anonymous GET %s = %d, want 401", path, resp.StatusCode)
		}
	}
}

// split is NATS, a registry cache and an executor run as services of their
// own, and the flags and environment that point a node agent at them.
type split struct {
	executorAddr string
	registryAddr string
	executor     *process
	env          []string
	flags        []string
}

func startSplit(t *testing.T) split {
	t.Helper()
	nats, err := natsserver.Start(natsserver.Config{StoreDir: t.TempDir(), Token: "split-token"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nats.Shutdown)
	return startSplitWith(t, nats.URL, "split-token")
}

// startSplitWith runs the registry cache and executor against a NATS
// server the caller runs.
func startSplitWith(t *testing.T, natsURL, token string) split {
	t.Helper()
	bin := binaries(t)
	reg := sharedRegistry(t)
	sock := t.TempDir()
	registryAddr := "unix://" + filepath.Join(sock, "registry.sock")
	executorAddr := "unix://" + filepath.Join(sock, "executor.sock")
	env := []string{"WASMLET_NATS_TOKEN=" + token}
	startProcess(t, "registry-cache", filepath.Join(bin, "registry-cache"), nil,
		"serve", "--listen", registryAddr, "--dir", t.TempDir(), "--insecure-registry", reg.Host)
	exec := startProcess(t, "executor", filepath.Join(bin, "executor"), env,
		"--listen", executorAddr, "--registry", registryAddr, "--nats", natsURL, "--state-dir", t.TempDir(), "--mount-root", mountRoot(t))
	return split{executorAddr: executorAddr, registryAddr: registryAddr, executor: exec, env: env, flags: []string{
		"--nats", natsURL, "--registry-cache", registryAddr, "--executor", "wasmtime=" + executorAddr,
	}}
}

// TestSplitServices points a node agent at separately run services.
func TestSplitServices(t *testing.T) {
	sp := startSplit(t)
	n := startNode(t, "e2e-split", sp.env, sp.flags...)
	ns := namespace(t, "e2e-split")
	image := push(t, "examples/hello:v1")
	apply(t, ns, wasmPod("split", n.name, image, v1.RestartPolicyNever))
	waitPhase(t, ns, "split", v1.PodSucceeded, 2*time.Minute)
	if logs := mustKubectl(t, "logs", "-n", ns, "split"); !strings.Contains(logs, "running as pod split") {
		t.Errorf("logs through the split services:\n%s", logs)
	}
}

// TestNodeAgentRestartReadopts restarts the node agent while its executor
// keeps running: the running pod is adopted, not restarted; the instance
// of a pod deleted meanwhile is removed; and an instance that exited while
// the node agent was down has its exit applied to its pod when the node
// agent comes back.
func TestNodeAgentRestartReadopts(t *testing.T) {
	sp := startSplit(t)
	state := t.TempDir()
	flags := append([]string{"--state-dir", state}, sp.flags...)
	n := startNode(t, "e2e-restart", sp.env, flags...)
	ns := namespace(t, "e2e-restart")
	image := push(t, "examples/hello:v1")
	for _, name := range []string{"survivor", "gone"} {
		apply(t, ns, wasmPod(name, n.name, image, v1.RestartPolicyAlways,
			v1.EnvVar{Name: "COUNT", Value: "100000"}, v1.EnvVar{Name: "SLEEP", Value: "100ms"}))
	}
	// finisher exits a few seconds after it starts: while the node agent is down.
	apply(t, ns, wasmPod("finisher", n.name, image, v1.RestartPolicyNever,
		v1.EnvVar{Name: "COUNT", Value: "20"}, v1.EnvVar{Name: "SLEEP", Value: "250ms"}, v1.EnvVar{Name: "EXIT_CODE", Value: "7"}))
	waitPhase(t, ns, "survivor", v1.PodRunning, 2*time.Minute)
	waitPhase(t, ns, "gone", v1.PodRunning, 2*time.Minute)
	waitPhase(t, ns, "finisher", v1.PodRunning, 2*time.Minute)
	before := jsonpath(t, ns, "survivor", "{.status.containerStatuses[0].containerID} {.status.containerStatuses[0].state.running.startedAt} {.status.containerStatuses[0].restartCount}")

	n.proc.stop(15 * time.Second)
	if phase := jsonpath(t, ns, "finisher", "{.status.phase}"); phase != string(v1.PodRunning) {
		t.Fatalf("finisher ended before the node agent stopped (phase %s): the test needs it to exit while the node agent is down", phase)
	}
	mustKubectl(t, "delete", "pod", "-n", ns, "gone", "--force", "--grace-period=0")

	conn, err := grpcutil.Dial(sp.executorAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	exec := executorv1.NewExecutorServiceClient(conn)
	instances := func() (string, error) {
		resp, err := exec.ListInstances(context.Background(), &executorv1.ListInstancesRequest{})
		if err != nil {
			return "", err
		}
		var pods []string
		for _, inst := range resp.GetInstances() {
			pods = append(pods, inst.GetSpec().GetLabels()["wasmlet.io/pod"]+"/"+inst.GetState().String())
		}
		slices.Sort(pods)
		return fmt.Sprint(pods), nil
	}
	waitFor(t, time.Minute, "finisher's instance exited while the node agent is down", func() (bool, string) {
		got, err := instances()
		return err == nil && strings.Contains(got, "finisher/INSTANCE_STATE_EXITED"), fmt.Sprint(got, err)
	})
	if phase := jsonpath(t, ns, "finisher", "{.status.phase}"); phase != string(v1.PodRunning) {
		t.Fatalf("finisher's pod is %s with no node agent running: something else wrote its status", phase)
	}
	startNode(t, "e2e-restart", sp.env, flags...)

	waitFor(t, time.Minute, "the deleted pod's instance removed, the survivor's kept", func() (bool, string) {
		got, err := instances()
		return err == nil && strings.Contains(got, "survivor/INSTANCE_STATE_RUNNING") && !strings.Contains(got, "gone/"), fmt.Sprint(got, err)
	})
	waitPhase(t, ns, "finisher", v1.PodFailed, time.Minute)
	if got := jsonpath(t, ns, "finisher", "{.status.containerStatuses[0].state.terminated.exitCode}"); got != "7" {
		t.Errorf("finisher's exit while the node agent was down: exit code %q, want 7", got)
	}
	waitFor(t, time.Minute, "logs of the adopted pod through the new node agent", func() (bool, string) {
		out, err := kubectl(t, "logs", "-n", ns, "survivor", "--tail=1")
		return err == nil && strings.HasPrefix(out, "count "), fmt.Sprint(out, err)
	})
	after := jsonpath(t, ns, "survivor", "{.status.containerStatuses[0].containerID} {.status.containerStatuses[0].state.running.startedAt} {.status.containerStatuses[0].restartCount}")
	if before != after {
		t.Errorf("the running container changed across a node-agent restart: before %q, after %q", before, after)
	}
}

func TestCrashLoopRestartsWithBackoff(t *testing.T) {
	n := startNode(t, "e2e-crash", nil)
	ns := namespace(t, "e2e-crash")
	image := push(t, "examples/hello:v1")
	apply(t, ns, wasmPod("crash", n.name, image, v1.RestartPolicyOnFailure, v1.EnvVar{Name: "EXIT_CODE", Value: "1"}))
	waitFor(t, 2*time.Minute, "two restarts", func() (bool, string) {
		got := jsonpath(t, ns, "crash", "{.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].lastState.terminated.exitCode}")
		var restarts, code int
		_, err := fmt.Sscan(got, &restarts, &code)
		return err == nil && restarts >= 2 && code == 1, got
	})
	if phase := jsonpath(t, ns, "crash", "{.status.phase}"); phase != "Running" {
		t.Errorf("phase of a crash-looping OnFailure pod = %s, want Running", phase)
	}
	previous := mustKubectl(t, "logs", "-n", ns, "crash", "--previous")
	if !strings.Contains(previous, "exiting with code 1 as asked") {
		t.Errorf("kubectl logs --previous = %q", previous)
	}
	waitFor(t, 30*time.Second, "a BackOff event", func() (bool, string) {
		events, _ := kubectl(t, "get", "events", "-n", ns, "--field-selector", "involvedObject.name=crash", "-o", "jsonpath={.items[*].reason}")
		return strings.Contains(events, "BackOff"), events
	})
}

// followLogs runs `kubectl logs -f` and returns the first n lines it prints.
func followLogs(t *testing.T, ns, pod string, n int, timeout time.Duration) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "kubectl", "--kubeconfig", cluster.Get(t).KubeconfigPath(), "logs", "-f", "--tail=1", "-n", ns, pod)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); _ = cmd.Wait() }()
	var lines []string
	sc := bufio.NewScanner(out)
	for len(lines) < n && sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}

func TestVolumesAndInitContainers(t *testing.T) {
	n := startNode(t, "e2e-volumes", nil)
	ns := namespace(t, "e2e-volumes")
	image := push(t, "examples/hello:v1")
	mustKubectl(t, "create", "configmap", "cfg", "-n", ns, "--from-literal=greeting.txt=hi from a configmap")
	mustKubectl(t, "create", "secret", "generic", "sec", "-n", ns, "--from-literal=token=s3cret")

	pod := wasmPod("vols", n.name, image, v1.RestartPolicyNever, v1.EnvVar{Name: "CAT", Value: strings.Join([]string{
		"/work/from-init", "/cfg/greeting.txt", "/sec/token", "/info/name",
		"/var/run/secrets/kubernetes.io/serviceaccount/namespace",
	}, ",")})
	pod.Spec.Volumes = []v1.Volume{
		{Name: "work", VolumeSource: v1.VolumeSource{EmptyDir: &v1.EmptyDirVolumeSource{}}},
		{Name: "cfg", VolumeSource: v1.VolumeSource{ConfigMap: &v1.ConfigMapVolumeSource{LocalObjectReference: v1.LocalObjectReference{Name: "cfg"}}}},
		{Name: "sec", VolumeSource: v1.VolumeSource{Secret: &v1.SecretVolumeSource{SecretName: "sec"}}},
		{Name: "info", VolumeSource: v1.VolumeSource{DownwardAPI: &v1.DownwardAPIVolumeSource{Items: []v1.DownwardAPIVolumeFile{
			{Path: "name", FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.name"}}}}}},
	}
	pod.Spec.Containers[0].VolumeMounts = []v1.VolumeMount{
		{Name: "work", MountPath: "/work"},
		{Name: "cfg", MountPath: "/cfg", ReadOnly: true},
		{Name: "sec", MountPath: "/sec", ReadOnly: true},
		{Name: "info", MountPath: "/info", ReadOnly: true},
	}
	init := pod.Spec.Containers[0].DeepCopy()
	init.Name = "prepare"
	init.Env = []v1.EnvVar{{Name: "WRITE", Value: "/work/from-init=init was here"}}
	init.VolumeMounts = init.VolumeMounts[:1]
	pod.Spec.InitContainers = []v1.Container{*init}
	apply(t, ns, pod)
	waitPhase(t, ns, "vols", v1.PodSucceeded, 2*time.Minute)

	logs := mustKubectl(t, "logs", "-n", ns, "vols")
	for _, want := range []string{
		"/work/from-init: init was here",
		"/cfg/greeting.txt: hi from a configmap",
		"/sec/token: s3cret",
		"/info/name: vols",
		"/var/run/secrets/kubernetes.io/serviceaccount/namespace: " + ns,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	if got := mustKubectl(t, "logs", "-n", ns, "vols", "-c", "prepare"); !strings.Contains(got, "wrote /work/from-init") {
		t.Errorf("init container logs: %q", got)
	}
	if got := jsonpath(t, ns, "vols", "{.status.initContainerStatuses[0].state.terminated.exitCode} {.status.conditions[?(@.type==\"Initialized\")].status}"); got != "0 True" {
		t.Errorf("init status = %q, want exit 0 and Initialized True", got)
	}
}

func TestUnsupportedAndDeadline(t *testing.T) {
	n := startNode(t, "e2e-refuse", nil)
	ns := namespace(t, "e2e-refuse")
	image := push(t, "examples/hello:v1")

	// hostPath outside the allowed roots (none here) is refused with the reason.
	host := wasmPod("hostpath", n.name, image, v1.RestartPolicyNever)
	host.Spec.Volumes = []v1.Volume{{Name: "etc", VolumeSource: v1.VolumeSource{HostPath: &v1.HostPathVolumeSource{Path: "/etc"}}}}
	host.Spec.Containers[0].VolumeMounts = []v1.VolumeMount{{Name: "etc", MountPath: "/etc"}}
	apply(t, ns, host)
	waitFor(t, time.Minute, "hostPath refused", func() (bool, string) {
		got := jsonpath(t, ns, "hostpath", "{.status.phase}|{.status.containerStatuses[0].state.waiting.reason}|{.status.containerStatuses[0].state.waiting.message}")
		return strings.HasPrefix(got, "Pending|CreateContainerConfigError|") && strings.Contains(got, "allows no hostPath"), got
	})

	// activeDeadlineSeconds ends a running pod as the kubelet does.
	long := wasmPod("deadline", n.name, image, v1.RestartPolicyNever, v1.EnvVar{Name: "COUNT", Value: "100000"}, v1.EnvVar{Name: "SLEEP", Value: "100ms"})
	deadline := int64(3)
	long.Spec.ActiveDeadlineSeconds = &deadline
	apply(t, ns, long)
	waitPhase(t, ns, "deadline", v1.PodFailed, time.Minute)
	if got := jsonpath(t, ns, "deadline", "{.status.reason}"); got != "DeadlineExceeded" {
		t.Errorf("reason = %q, want DeadlineExceeded", got)
	}
}

// TestExecutorDiesPodsRecover kills the node agent's executor child: its
// instances are lost, the pods say so, the restart policy applies, and the
// node keeps working once the supervisor has restarted the executor.
func TestExecutorDiesPodsRecover(t *testing.T) {
	n := startNode(t, "e2e-lost", nil)
	ns := namespace(t, "e2e-lost")
	image := push(t, "examples/hello:v1")
	long := []v1.EnvVar{{Name: "COUNT", Value: "100000"}, {Name: "SLEEP", Value: "100ms"}}
	apply(t, ns, wasmPod("always", n.name, image, v1.RestartPolicyAlways, long...))
	apply(t, ns, wasmPod("never", n.name, image, v1.RestartPolicyNever, long...))
	waitPhase(t, ns, "always", v1.PodRunning, 2*time.Minute)
	waitPhase(t, ns, "never", v1.PodRunning, 2*time.Minute)

	children, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", n.proc.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	killed := 0
	for _, c := range children {
		b, _ := os.ReadFile(c)
		for _, pid := range strings.Fields(string(b)) {
			if exe, _ := os.Readlink("/proc/" + pid + "/exe"); filepath.Base(exe) == "executor" {
				p, _ := strconv.Atoi(pid)
				if err := syscall.Kill(p, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				killed++
			}
		}
	}
	if killed != 1 {
		t.Fatalf("killed %d executor processes, want 1", killed)
	}
	waitFor(t, time.Minute, "the Always pod restarted after the loss", func() (bool, string) {
		got := jsonpath(t, ns, "always", "{.status.phase} {.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].lastState.terminated.reason} {.status.containerStatuses[0].state.running.startedAt}")
		f := strings.Fields(got)
		return len(f) == 4 && f[0] == "Running" && f[1] != "0" && f[2] == "ExecutorLost", got
	})
	waitPhase(t, ns, "never", v1.PodFailed, time.Minute)
	if got := jsonpath(t, ns, "never", "{.status.containerStatuses[0].state.terminated.reason}: {.status.containerStatuses[0].state.terminated.message}"); !strings.HasPrefix(got, "ExecutorLost: ") || !strings.Contains(got, "executor") {
		t.Errorf("lost container's status = %q", got)
	}
	// The node keeps working: a new pod runs to completion.
	apply(t, ns, wasmPod("after", n.name, image, v1.RestartPolicyNever))
	waitPhase(t, ns, "after", v1.PodSucceeded, time.Minute)
}
