// Package compose tests the docker compose stack (deploy/compose) from the
// outside, as a developer uses it: docker compose and stock kubectl.
//
// It runs only with WASMLET_COMPOSE_TEST=1 (make compose-test, which builds
// the images first) and skips, saying why, when no Docker engine answers. It
// uses a compose project of its own (wasmlet-compose-test) on free host
// ports, so a developer's stack (make compose-up) is left alone, and it
// begins and ends by removing whatever of that project is left: the Docker
// engine outlives an interrupted run.
package compose

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	project  = "wasmlet-compose-test"
	imageRef = "registry:5000/examples/hello:v1"
	// spreadReplicas is the Deployment spread over the scaled flavour.
	spreadReplicas    = 30
	wasmtimeReplicas  = 3
	executorTLSFlags  = "--cert=/run/wasmlet/tls/tls.crt --key=/run/wasmlet/tls/tls.key --ca=/pki/grpc/ca.crt"
	defaultImageTag   = "dev"
	nodesReadyTimeout = 3 * time.Minute
)

type stack struct {
	t          *testing.T
	root       string
	compose    []string // the compose command with -p and -f
	env        []string
	kubeconfig string
}

func TestComposeStack(t *testing.T) {
	if os.Getenv("WASMLET_COMPOSE_TEST") == "" {
		t.Skip("the compose stack's test runs with WASMLET_COMPOSE_TEST=1 (make compose-test): it builds images and starts about 15 containers")
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("no Docker engine answers (docker info: %v: %s): the compose stack's test needs one", err, bytes.TrimSpace(out))
	}
	s := newStack(t)
	tag := envOr("WASMLET_COMPOSE_TAG", defaultImageTag)
	for _, img := range []string{"init", "etcd", "kube-apiserver", "nats", "registry", "registry-cache", "nodeagent", "executor", "executor-wazero", "executor-arm64"} {
		if err := exec.Command("docker", "image", "inspect", "wasmlet-compose/"+img+":"+tag).Run(); err != nil {
			t.Fatalf("image wasmlet-compose/%s:%s is missing: run make compose-images (or make compose-test, which builds them)", img, tag)
		}
	}
	begin := time.Now()
	s.removeLeftovers()
	t.Cleanup(func() {
		if t.Failed() {
			s.dumpState()
		}
		s.removeLeftovers()
	})

	// Up from nothing: both Nodes Ready.
	s.step("up from nothing")
	s.composeRun("up", "-d", "--remove-orphans")
	s.copyKubeconfig()
	s.waitNodesReady(nodesReadyTimeout)
	t.Logf("TIMING up: both Nodes Ready %.1fs after `up`", time.Since(begin).Seconds())
	out := s.kubectl("get", "nodes", "-o", "wide")
	t.Logf("kubectl get nodes -o wide:\n%s", out)
	// Both nodes joined with the bootstrap token: a client CSR each,
	// approved by the controller-manager and issued.
	csrs := s.kubectl("get", "csr", "-o", `jsonpath={range .items[?(@.spec.signerName=="kubernetes.io/kube-apiserver-client-kubelet")]}{.spec.username} {.status.conditions[0].type} {.status.certificate}{"\n"}{end}`)
	joined := 0
	for _, l := range strings.Split(strings.TrimSpace(csrs), "\n") {
		if f := strings.Fields(l); len(f) == 3 && strings.HasPrefix(f[0], "system:bootstrap:") && f[1] == "Approved" {
			joined++
		}
	}
	t.Logf("node client CSRs (requestor, condition): %d approved and issued", joined)
	if joined < 2 {
		t.Errorf("node client CSRs %q: want one approved and issued per node, sent with the bootstrap token", csrs)
	}
	for _, n := range []string{"wasmlet-1", "wasmlet-2"} {
		if l := s.kubectl("get", "node", n, "-o", `jsonpath={.metadata.labels}`); !strings.Contains(l, "flavour.wasmlet.io/") {
			t.Errorf("node %s labels %s: no flavour.wasmlet.io/ label for its executors", n, l)
		}
	}

	// The example module pushed to the stack's registry.
	s.step("push examples/hello")
	wasm := filepath.Join(s.root, "bin", "compose", "wasm", "hello.wasm")
	if _, err := os.Stat(wasm); err != nil {
		t.Fatalf("%v: run make compose-images", err)
	}
	t.Logf("pushed %s", strings.TrimSpace(s.push(wasm, imageRef)))

	// One pod per executor flavour, by RuntimeClass; running, then its logs.
	s.step("one pod per flavour")
	// RuntimeClass -> the node whose executors serve it. wasmtime-arm64 is
	// the executor built for linux/arm64 under qemu: its first compile of
	// the module takes tens of seconds.
	flavours := map[string]string{"wasmtime": "wasmlet-1", "wazero": "wasmlet-2", "wasmtime-arm64": "wasmlet-2"}
	for rc := range flavours {
		s.kubectlIn(podManifest("hello-"+rc, rc), "apply", "-f", "-")
	}
	for rc, node := range flavours {
		pod := "hello-" + rc
		s.waitFor(4*time.Minute, pod+" Succeeded", func() bool {
			return s.kubectlQuiet("get", "pod", pod, "-o", "jsonpath={.status.phase}") == "Succeeded"
		})
		if got := s.kubectl("get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"); got != node {
			t.Errorf("pod %s ran on node %q, want %q (its RuntimeClass's node selector)", pod, got, node)
		}
		logs := s.kubectl("logs", pod)
		if want := "Hello from WebAssembly, running as pod " + pod + "!"; !strings.Contains(logs, want) {
			t.Errorf("kubectl logs %s = %q, want it to contain %q", pod, logs, want)
		}
		if !strings.Contains(logs, "count 3") {
			t.Errorf("kubectl logs %s = %q: lines missing (want up to \"count 3\")", pod, logs)
		}
	}
	t.Logf("TIMING pods: one per flavour run and logged %.1fs after `up`", time.Since(begin).Seconds())
	// The arm64 pod ran on the emulated linux/arm64 executor: ask it.
	arm := s.containers("executor-arm64", "healthy")
	if len(arm) != 1 {
		t.Fatalf("healthy executor-arm64 containers: %v, want one", arm)
	}
	armOut := s.run("docker", append([]string{"exec", arm[0], "/bin/wasmlet-compose", "instances", "tcp://{ip}:7000"}, strings.Fields(executorTLSFlags)...)...)
	t.Logf("executor-arm64 holds:\n%s", armOut)
	if !strings.Contains(armOut, "on linux/arm64") || !strings.Contains(armOut, "default/hello-wasmtime-arm64 hello EXITED") {
		t.Errorf("executor-arm64 = %q: want a linux/arm64 executor that ran default/hello-wasmtime-arm64", armOut)
	}

	// A pod with a containerPort, on an executor run in a container of its own.
	s.servePort()

	// Scale the wasmtime flavour to 3 replicas and spread a Deployment.
	s.step(fmt.Sprintf("scale executor-wasmtime to %d", wasmtimeReplicas))
	scaleStart := time.Now()
	s.composeRun("up", "-d", "--scale", fmt.Sprintf("executor-wasmtime=%d", wasmtimeReplicas))
	var replicas []string
	s.waitFor(2*time.Minute, fmt.Sprintf("%d healthy executor-wasmtime replicas", wasmtimeReplicas), func() bool {
		replicas = s.containers("executor-wasmtime", "healthy")
		return len(replicas) == wasmtimeReplicas
	})
	// A replica announces itself on NATS when it starts serving, and again
	// every 5 s; wait for one period so that the node agent knows them all.
	time.Sleep(6 * time.Second)
	t.Logf("TIMING scale: %d healthy replicas in %.1fs", wasmtimeReplicas, time.Since(scaleStart).Seconds())

	s.step(fmt.Sprintf("a Deployment of %d replicas on the wasmtime flavour", spreadReplicas))
	deployStart := time.Now()
	s.kubectlIn(deploymentManifest("spread", spreadReplicas), "apply", "-f", "-")
	s.waitFor(4*time.Minute, fmt.Sprintf("%d spread pods Running", spreadReplicas), func() bool {
		out := s.kubectlQuiet("get", "pods", "-l", "app=spread", "-o", "jsonpath={range .items[*]}{.status.phase}{\"\\n\"}{end}")
		return strings.Count(out, "Running") == spreadReplicas
	})
	t.Logf("TIMING deployment: %d pods Running in %.1fs", spreadReplicas, time.Since(deployStart).Seconds())
	spread := map[string]int{}
	total := 0
	for _, c := range replicas {
		out := s.run("docker", append([]string{"exec", c, "/bin/wasmlet-compose", "instances", "tcp://{ip}:7000"}, strings.Fields(executorTLSFlags)...)...)
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "default/spread-") && strings.HasSuffix(line, " RUNNING") {
				spread[c]++
				total++
			}
		}
	}
	names := make([]string, 0, len(spread))
	for _, c := range replicas {
		names = append(names, fmt.Sprintf("%s=%d", c, spread[c]))
	}
	sort.Strings(names)
	t.Logf("SPREAD of %d pods over %d executor-wasmtime replicas: %s", spreadReplicas, len(replicas), strings.Join(names, " "))
	if total != spreadReplicas {
		t.Errorf("the replicas hold %d running spread instances, want %d", total, spreadReplicas)
	}
	for _, c := range replicas {
		if spread[c] == 0 {
			t.Errorf("replica %s runs none of the Deployment's pods: the node agent did not spread them", c)
		}
	}

	s.faults(wasm)
	t.Logf("TIMING faults: done %.1fs after `up`", time.Since(begin).Seconds())

	// Down with volumes: nothing of the project left.
	s.step("down -v")
	downStart := time.Now()
	s.composeRun("down", "-v", "--remove-orphans", "--timeout", "10")
	t.Logf("TIMING down: %.1fs", time.Since(downStart).Seconds())
	if left := s.leftovers(); left != "" {
		t.Errorf("after down -v, left of project %s:\n%s", project, left)
	}
	t.Logf("TIMING total: %.1fs", time.Since(begin).Seconds())
}

func newStack(t *testing.T) *stack {
	_, file, _, _ := runtime.Caller(0)
	root, err := filepath.Abs(filepath.Join(filepath.Dir(file), "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	compose := []string{"docker-compose"}
	if exec.Command("docker", "compose", "version").Run() == nil {
		compose = []string{"docker", "compose"}
	} else if _, err := exec.LookPath("docker-compose"); err != nil {
		t.Skip("neither `docker compose` nor docker-compose is installed")
	}
	compose = append(compose, "-p", project, "-f", filepath.Join(root, "deploy", "compose", "compose.yaml"))
	apiPort, natsPort := freePort(t), freePort(t)
	return &stack{
		t: t, root: root, compose: compose,
		env: append(os.Environ(),
			"WASMLET_COMPOSE_API_PORT="+strconv.Itoa(apiPort),
			"WASMLET_COMPOSE_NATS_MONITOR_PORT="+strconv.Itoa(natsPort),
		),
		kubeconfig: filepath.Join(t.TempDir(), "kubeconfig"),
	}
}

func (s *stack) step(what string) { s.t.Logf("== %s", what) }

// run runs a command and fails the test when it fails.
func (s *stack) run(name string, args ...string) string {
	s.t.Helper()
	out, err := s.try(nil, name, args...)
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

func (s *stack) try(stdin []byte, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = s.env
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

func (s *stack) composeRun(args ...string) string {
	s.t.Helper()
	return s.run(s.compose[0], append(s.compose[1:], args...)...)
}

func (s *stack) kubectl(args ...string) string {
	s.t.Helper()
	return s.run("kubectl", append([]string{"--kubeconfig", s.kubeconfig, "--request-timeout=20s"}, args...)...)
}

func (s *stack) kubectlIn(stdin []byte, args ...string) string {
	s.t.Helper()
	out, err := s.try(stdin, "kubectl", append([]string{"--kubeconfig", s.kubeconfig, "--request-timeout=20s"}, args...)...)
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

// kubectlQuiet is kubectl for polling: an error is an empty answer.
func (s *stack) kubectlQuiet(args ...string) string {
	out, _ := s.try(nil, "kubectl", append([]string{"--kubeconfig", s.kubeconfig, "--request-timeout=10s"}, args...)...)
	return strings.TrimSpace(out)
}

func (s *stack) waitFor(timeout time.Duration, what string, cond func() bool) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			s.t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(time.Second)
	}
}

func (s *stack) waitNodesReady(timeout time.Duration) {
	s.t.Helper()
	s.waitFor(timeout, "Nodes wasmlet-1 and wasmlet-2 Ready", func() bool {
		out := s.kubectlQuiet("get", "nodes", "wasmlet-1", "wasmlet-2", "-o",
			`jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		return strings.Count(out, "True") == 2
	})
}

// copyKubeconfig takes the host's kubeconfig out of the exited init
// container (the pki volume is not on the host).
func (s *stack) copyKubeconfig() {
	s.t.Helper()
	id := strings.TrimSpace(s.composeRun("ps", "-q", "init"))
	if id == "" {
		s.t.Fatal("no init container")
	}
	s.run("docker", "cp", id+":/pki/host.kubeconfig", s.kubeconfig)
}

// containers lists the project's containers of a service in a health state.
func (s *stack) containers(service, health string) []string {
	out, _ := s.try(nil, "docker", "ps", "--format", "{{.Names}}",
		"--filter", "label=com.docker.compose.project="+project,
		"--filter", "label=com.docker.compose.service="+service,
		"--filter", "health="+health)
	return strings.Fields(out)
}

// leftovers lists the project's containers, networks and volumes.
func (s *stack) leftovers() string {
	var b strings.Builder
	filter := "label=com.docker.compose.project=" + project
	for _, what := range [][]string{
		{"ps", "-a", "--format", "container {{.Names}} {{.Status}}", "--filter", filter},
		{"network", "ls", "--format", "network {{.Name}}", "--filter", filter},
		{"volume", "ls", "--format", "volume {{.Name}}", "--filter", filter},
	} {
		out, _ := s.try(nil, "docker", what...)
		b.WriteString(out)
	}
	return strings.TrimSpace(b.String())
}

// removeLeftovers removes whatever of the project an earlier run, or this
// one, left: compose down first, then anything still labelled with the
// project (a container of a scaled service compose no longer knows).
func (s *stack) removeLeftovers() {
	if left := s.leftovers(); left != "" {
		s.t.Logf("removing what is left of project %s:\n%s", project, left)
	}
	if _, err := s.try(nil, s.compose[0], append(s.compose[1:], "down", "-v", "--remove-orphans", "--timeout", "5")...); err != nil {
		s.t.Logf("compose down: %v", err)
	}
	filter := "label=com.docker.compose.project=" + project
	for _, kind := range []struct{ ls, rm []string }{
		{[]string{"ps", "-aq", "--filter", filter}, []string{"rm", "-f", "-v"}},
		{[]string{"network", "ls", "-q", "--filter", filter}, []string{"network", "rm"}},
		{[]string{"volume", "ls", "-q", "--filter", filter}, []string{"volume", "rm", "-f"}},
	} {
		out, _ := s.try(nil, "docker", kind.ls...)
		if ids := strings.Fields(out); len(ids) > 0 {
			s.t.Logf("removing leftovers: docker %s %s", strings.Join(kind.rm, " "), strings.Join(ids, " "))
			if _, err := s.try(nil, "docker", append(kind.rm, ids...)...); err != nil {
				s.t.Errorf("remove leftovers: %v", err)
			}
		}
	}
}

// dumpState logs what helps to understand a failure: containers, nodes,
// pods, and the end of the node agents' and executors' logs.
func (s *stack) dumpState() {
	out, _ := s.try(nil, s.compose[0], append(s.compose[1:], "ps")...)
	s.t.Logf("compose ps:\n%s", out)
	out, _ = s.try(nil, "kubectl", "--kubeconfig", s.kubeconfig, "--request-timeout=10s", "get", "nodes,pods", "-A", "-o", "wide")
	s.t.Logf("kubectl get nodes,pods:\n%s", out)
	for _, svc := range []string{"nodeagent-1", "nodeagent-2", "executor-wasmtime", "executor-wazero", "executor-arm64"} {
		out, _ := s.try(nil, s.compose[0], append(s.compose[1:], "logs", "--no-color", "--tail=30", svc)...)
		s.t.Logf("logs of %s:\n%s", svc, out)
	}
}

func podManifest(name, runtimeClass string) []byte {
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
spec:
  runtimeClassName: %s
  restartPolicy: Never
  containers:
    - name: hello
      image: %s
      env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
`, name, runtimeClass, imageRef))
}

// deploymentManifest: pods that keep running (a count every 10 s for days).
func deploymentManifest(name string, replicas int) []byte {
	return []byte(fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: %[1]s
spec:
  replicas: %[2]d
  selector: {matchLabels: {app: %[1]s}}
  template:
    metadata: {labels: {app: %[1]s}}
    spec:
      runtimeClassName: wasmtime
      containers:
        - name: hello
          image: %[3]s
          env:
            - {name: COUNT, value: "100000"}
            - {name: SLEEP, value: "10s"}
`, name, replicas, imageRef))
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
