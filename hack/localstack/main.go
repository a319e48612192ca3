// Command localstack is `make up` and `make down`: it runs a whole wasmlet
// node on this machine's loopback — the control plane (internal/localcluster),
// a NATS server, an OCI registry, the registry cache, two executors (wasmtime
// and wazero) and a node agent, each its own process — and runs the example
// pods on it. Run as root with the CNI plugins built (`make cni`), the node
// has a pod network (see podnet.go) and kube-proxy runs beside it, so that
// the example server has an address of its own and Services answer;
// otherwise the server's port is opened on 127.0.0.1.
//
// State, logs and PID files live in .state/ under the working directory;
// `down` stops every process recorded there and undoes the pod network.
// `up` first does what `down` does but for the control plane, so that a
// second `up`, or one after an `up` killed half-way, starts clean. The
// control plane's data and PKI are kept for the next `up`.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/localcluster"
	"github.com/wasmlet/wasmlet/internal/testharness/testregistry"
)

const nodeName = "wasmlet-local"

// services in start order; down stops them in reverse, then the control plane.
var services = []string{"docker-registry", "nats-server", "registry-cache", "executor", "executor-wazero", "nodeagent"}

func main() {
	if len(os.Args) != 2 || (os.Args[1] != "up" && os.Args[1] != "down") {
		fmt.Fprintln(os.Stderr, "usage: localstack up|down")
		os.Exit(2)
	}
	root, err := os.Getwd()
	if err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	s := stack{root: root, state: filepath.Join(root, ".state"), bin: filepath.Join(root, "bin")}
	if os.Args[1] == "down" {
		err = s.down(ctx)
	} else {
		err = s.up(ctx)
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "localstack:", err)
	os.Exit(1)
}

type stack struct {
	root, state, bin string
	cluster          *localcluster.Cluster
}

func (s *stack) down(ctx context.Context) error {
	errs := []error{s.teardown(ctx)}
	if err := localcluster.Stop(filepath.Join(s.state, "cluster")); err != nil {
		errs = append(errs, err)
	}
	// The node agent leaves its pods' secret volumes mounted; `make clean`
	// could not remove them.
	if err := localcluster.UnmountUnder(s.state); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Println("wasmlet local stack stopped (state kept in .state/; `make clean` removes it)")
	return nil
}

// teardown stops everything but the control plane: the services, in
// reverse order, kube-proxy (with its clean-up) and the pod network.
func (s *stack) teardown(ctx context.Context) error {
	var errs []error
	for i := len(services) - 1; i >= 0; i-- {
		if err := localcluster.StopService(s.state, services[i]); err != nil {
			errs = append(errs, err)
		}
	}
	// Another harness's kube-proxy may hold the host's lock; its run ends
	// in minutes.
	kctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if err := localcluster.StopKubeProxy(kctx, filepath.Join(s.state, "cluster")); err != nil {
		errs = append(errs, err)
	}
	if err := s.downPodNetwork(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (s *stack) up(ctx context.Context) error {
	if err := s.teardown(ctx); err != nil { // what a previous `up` left, if anything
		return fmt.Errorf("stop what an earlier `make up` left: %w", err)
	}
	for _, b := range []string{"nodeagent", "executor", "executor-wazero", "registry-cache", "nats-server", "wasm/hello.wasm", "wasm/httpserver.wasm"} {
		if _, err := os.Stat(filepath.Join(s.bin, b)); err != nil {
			return fmt.Errorf("%w: run `make build` first", err)
		}
	}
	if err := s.startCluster(ctx); err != nil {
		return err
	}
	// The example pods of an earlier `up` are removed before the node agent
	// starts, not deleted and made again under it: it did not start a pod
	// made again under the same name at once (left Pending). Nothing of
	// theirs runs any more (the executors were stopped), so no one need
	// confirm their end.
	if out, err := s.kubectl(nil, "delete", "pod", "hello-wasm", "httpserver-wasm", "--ignore-not-found", "--grace-period=0", "--force"); err != nil {
		return fmt.Errorf("remove the example pods of an earlier `make up`: %v: %s", err, out)
	}
	pn := s.choosePodNetwork()
	step("OCI registry (docker-registry)")
	regDir := filepath.Join(s.state, "registry")
	if err := os.MkdirAll(regDir, 0o755); err != nil {
		return err
	}
	reg, err := testregistry.Start(regDir, testregistry.Options{})
	if err != nil {
		return err
	}
	if err := localcluster.RecordService(s.state, "docker-registry", reg.PID()); err != nil {
		return err
	}

	step("NATS with JetStream")
	token := randomHex(24)
	natsPort := freePort()
	natsURL := fmt.Sprintf("nats://127.0.0.1:%d", natsPort)
	if err := s.service("nats-server", nil, "-a", "127.0.0.1", "-p", fmt.Sprint(natsPort), "-js",
		"-sd", filepath.Join(s.state, "nats"), "--auth", token); err != nil {
		return err
	}
	tokenEnv := []string{"WASMLET_NATS_TOKEN=" + token}

	step("registry cache")
	registryAddr := "unix://" + filepath.Join(s.state, "sockets", "registry.sock")
	if err := s.service("registry-cache", nil, "serve", "--listen", registryAddr,
		"--dir", filepath.Join(s.state, "registry-cache"), "--insecure-registry", reg.Host); err != nil {
		return err
	}

	unprivileged, why := s.executorUser()
	if unprivileged {
		if err := shareRegistrySocket(filepath.Join(s.state, "sockets", "registry.sock")); err != nil {
			return err
		}
		step(fmt.Sprintf("executors run unprivileged, as %d:%d (the node agent's --executor-user)", executorUID, executorGID))
	} else {
		step("executors run as this user: " + why)
	}

	step("executor (wasmtime)")
	dir, err := s.executorSocketDir("executor", unprivileged)
	if err != nil {
		return err
	}
	executorAddr := "unix://" + filepath.Join(dir, "executor.sock")
	if err := s.service("executor", tokenEnv, append([]string{"--listen", executorAddr, "--registry", registryAddr,
		"--nats", natsURL, "--state-dir", filepath.Join(s.state, "executor"), "--node", nodeName,
		"--mount-root", filepath.Join(s.state, "node", "pods")}, executorUserArgs(unprivileged)...)...); err != nil {
		return err
	}

	// wazero's executor serves pods with ports: wasmtime-go cannot hand a
	// module a socket, and the node agent sends such pods to it. The node
	// agent opens a pod's listeners (in its network namespace, or on
	// 127.0.0.1 without a pod network) and hands them over on the
	// executor's listener socket, so that the executor keeps its
	// confinement: it never enters a namespace.
	step("executor (wazero), taking pods' listeners on its listener socket")
	if dir, err = s.executorSocketDir("executor-wazero", unprivileged); err != nil {
		return err
	}
	wazeroAddr := "unix://" + filepath.Join(dir, "executor.sock")
	wazeroListeners := filepath.Join(s.state, "executor-wazero", "listeners.sock")
	if err := s.service("executor-wazero", tokenEnv, append([]string{"--listen", wazeroAddr, "--registry", registryAddr,
		"--nats", natsURL, "--state-dir", filepath.Join(s.state, "executor-wazero"), "--node", nodeName,
		"--mount-root", filepath.Join(s.state, "node", "pods"), "--listener-socket", wazeroListeners}, executorUserArgs(unprivileged)...)...); err != nil {
		return err
	}

	kubeconfig, err := s.cluster.NodeKubeconfig(nodeName)
	if err != nil {
		return err
	}
	args := []string{"--kubeconfig", kubeconfig, "--node-name", nodeName,
		"--port", fmt.Sprint(freePort()), "--state-dir", filepath.Join(s.state, "node"),
		"--client-ca-file", s.cluster.KubeletClientCAPath(), "--nats", natsURL,
		"--registry-cache", registryAddr, "--executor", "wasmtime=" + executorAddr, "--executor", "wazero=" + wazeroAddr + ",listener-socket=" + wazeroListeners}
	if pn.on() {
		step("node agent " + nodeName + " with a pod network (a bridge on the Node's podCIDR, " + localcluster.NodeBridge(nodeName) + ")")
		if err := s.recordPodNetwork(pn); err != nil {
			return err
		}
		args = append(args, "--pod-network", "bridge", "--cni-bin-dir", pn.cniBinDir)
	} else {
		step("node agent " + nodeName + " without a pod network: " + pn.why + "; pods' ports are opened on 127.0.0.1")
		args = append(args, "--pod-network", "off")
	}
	if err := s.service("nodeagent", tokenEnv, args...); err != nil {
		return err
	}
	if err := s.waitFor(ctx, 90*time.Second, "node "+nodeName+" Ready", func() bool {
		out, _ := s.kubectl(nil, "get", "node", nodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status} {.spec.taints[*].key}`)
		return strings.HasPrefix(out, "True") && !strings.Contains(out, "not-ready")
	}); err != nil {
		return fmt.Errorf("%w (see %s)", err, localcluster.ServiceLog(s.state, "nodeagent"))
	}

	if pn.on() {
		s.startKubeProxy(ctx, &pn)
	}

	step("push examples/hello with `registry-cache push`")
	ref := reg.Host + "/examples/hello:v1"
	out, err := exec.Command(filepath.Join(s.bin, "registry-cache"), "push", "--plain-http", filepath.Join(s.bin, "wasm", "hello.wasm"), ref).CombinedOutput()
	if err != nil {
		return fmt.Errorf("push %s: %v: %s", ref, err, out)
	}
	fmt.Printf("   pushed %s\n", strings.TrimSpace(string(out)))

	step("run the example pod (examples/hello/pod.yaml)")
	manifest, err := os.ReadFile(filepath.Join(s.root, "examples", "hello", "pod.yaml"))
	if err != nil {
		return err
	}
	manifest = bytes.ReplaceAll(manifest, []byte("${IMAGE}"), []byte(ref))
	if _, err := s.kubectl(nil, "delete", "pod", "hello-wasm", "--ignore-not-found", "--wait=true"); err != nil {
		return err
	}
	if err := s.waitFor(ctx, 60*time.Second, "the default service account", func() bool {
		_, err := s.kubectl(nil, "get", "serviceaccount", "default")
		return err == nil
	}); err != nil {
		return err
	}
	if out, err := s.kubectl(manifest, "apply", "-f", "-"); err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	if err := s.waitFor(ctx, 3*time.Minute, "pod hello-wasm to finish", func() bool {
		out, _ := s.kubectl(nil, "get", "pod", "hello-wasm", "-o", "jsonpath={.status.phase}")
		return out == "Succeeded" || out == "Failed"
	}); err != nil {
		return err
	}
	podIP := s.runServer(ctx, reg.Host, pn)

	fmt.Println()
	pods, _ := s.kubectl(nil, "get", "pods", "-o", "wide")
	fmt.Print(pods)
	logs, _ := s.kubectl(nil, "logs", "hello-wasm")
	fmt.Printf("\n$ kubectl logs hello-wasm\n%s\n", logs)
	fmt.Printf(`The local wasmlet node is up. Use it with:

  export KUBECONFIG=%s
  kubectl get nodes -o wide
  kubectl get pods -o wide
`, s.cluster.KubeconfigPath())
	s.printServer(pn, podIP)
	fmt.Printf(`
Logs of every process: %s/logs/ and %s/cluster/logs/
Stop everything with: make down
`, s.state, s.state)
	return nil
}

// startKubeProxy runs kube-proxy for the node, detached (`down` stops it
// and removes its rules). Without it the node serves all the same, at pod
// addresses; pn says why Services do not answer.
func (s *stack) startKubeProxy(ctx context.Context, pn *podNetwork) {
	if !pn.proxy {
		return
	}
	step("kube-proxy for " + nodeName + " (iptables mode; waits while another kube-proxy of the test harness holds /run/lock/wasmlet-kube-proxy.lock)")
	kctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	if err := s.cluster.StartKubeProxyDetached(kctx, nodeName); err != nil {
		pn.proxy, pn.proxyWhy = false, err.Error()
		fmt.Printf("   no kube-proxy: %v\n", err)
	}
}

// printServer says how to reach the example server: at its pod IP and
// through a Service with a pod network, at 127.0.0.1:8080 without.
func (s *stack) printServer(pn podNetwork, podIP string) {
	if !pn.on() {
		fmt.Printf(`
The example server listens on the node's address (no pod network: %s):

  curl http://127.0.0.1:8080/
`, pn.why)
		return
	}
	if podIP == "" {
		return
	}
	cidr, _ := s.kubectl(nil, "get", "node", nodeName, "-o", "jsonpath={.spec.podCIDR}")
	fmt.Printf(`
The example server has an address of its own on the pod network (node %s's podCIDR %s, bridge %s):

  kubectl get pod httpserver-wasm -o wide   # IP %s
  curl http://%s:8080/
`, nodeName, cidr, localcluster.NodeBridge(nodeName), podIP, podIP)
	if !pn.proxy {
		fmt.Printf("\nServices do not answer on this node: no kube-proxy (%s)\n", pn.proxyWhy)
		return
	}
	clusterIP, err := s.kubectl(nil, "get", "service", "httpserver-wasm", "-o", "jsonpath={.spec.clusterIP}")
	if err != nil || clusterIP == "" {
		fmt.Print(`
and a Service in front of it answers through kube-proxy:

  kubectl expose pod httpserver-wasm --port 80 --target-port 8080
  curl http://$(kubectl get service httpserver-wasm -o jsonpath='{.spec.clusterIP}')/
`)
		return
	}
	// An earlier `make up`'s Service, kept with the control plane's data.
	fmt.Printf(`
and the Service httpserver-wasm (made by an earlier `+"`kubectl expose`"+`) answers through kube-proxy:

  curl http://%s/
`, clusterIP)
}

// runServer runs the example server (examples/httpserver/pod.yaml) and
// fetches its page, at its own address with a pod network (which it
// returns), else on the node's address, 127.0.0.1:8080. Failures are
// reported, not fatal (a port already taken on this machine, say): the
// node is up all the same.
func (s *stack) runServer(ctx context.Context, registry string, pn podNetwork) (podIP string) {
	step("run the example server (examples/httpserver/pod.yaml) on port 8080")
	ref := registry + "/examples/httpserver:v1"
	if out, err := exec.Command(filepath.Join(s.bin, "registry-cache"), "push", "--plain-http", filepath.Join(s.bin, "wasm", "httpserver.wasm"), ref).CombinedOutput(); err != nil {
		fmt.Printf("   push %s: %v: %s\n", ref, err, out)
		return ""
	}
	manifest, err := os.ReadFile(filepath.Join(s.root, "examples", "httpserver", "pod.yaml"))
	if err != nil {
		fmt.Printf("   %v\n", err)
		return ""
	}
	manifest = bytes.ReplaceAll(manifest, []byte("${IMAGE}"), []byte(ref))
	if _, err := s.kubectl(nil, "delete", "pod", "httpserver-wasm", "--ignore-not-found", "--wait=true"); err != nil {
		fmt.Printf("   %v\n", err)
		return ""
	}
	if out, err := s.kubectl(manifest, "apply", "-f", "-"); err != nil {
		fmt.Printf("   %v: %s\n", err, out)
		return ""
	}
	if err := s.waitFor(ctx, time.Minute, "pod httpserver-wasm Ready", func() bool {
		out, _ := s.kubectl(nil, "get", "pod", "httpserver-wasm", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		return out == "True"
	}); err != nil {
		why, _ := s.kubectl(nil, "get", "pod", "httpserver-wasm", "-o", "jsonpath={.status.containerStatuses[0].state}")
		fmt.Printf("   the example server is not serving: %v: %s\n", err, why)
		return ""
	}
	url := "http://127.0.0.1:8080/"
	if pn.on() {
		podIP, _ = s.kubectl(nil, "get", "pod", "httpserver-wasm", "-o", "jsonpath={.status.podIP}")
		url = "http://" + net.JoinHostPort(podIP, "8080") + "/"
	}
	body, err := get(url)
	if err != nil {
		fmt.Printf("   GET %s: %v\n", url, err)
		return podIP
	}
	fmt.Printf("\n$ curl %s\n%s", url, body)
	if !pn.proxy {
		return podIP
	}
	// A Service an earlier `kubectl expose` made: kube-proxy needs a moment
	// for the new pod's endpoint.
	clusterIP, err := s.kubectl(nil, "get", "service", "httpserver-wasm", "-o", "jsonpath={.spec.clusterIP}")
	if err != nil || clusterIP == "" || clusterIP == "None" {
		return podIP
	}
	url = "http://" + clusterIP + "/"
	deadline := time.Now().Add(20 * time.Second)
	for body, err = get(url); err != nil && time.Now().Before(deadline) && ctx.Err() == nil; body, err = get(url) {
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		fmt.Printf("   GET %s (Service httpserver-wasm): %v\n", url, err)
		return podIP
	}
	fmt.Printf("\n$ curl %s   # Service httpserver-wasm, through kube-proxy\n%s", url, body)
	return podIP
}

// get fetches url's body; a status other than 200 is an error.
func get(url string) (string, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, body)
	}
	return string(body), nil
}

func (s *stack) startCluster(ctx context.Context) error {
	dir := filepath.Join(s.state, "cluster")
	if c, err := localcluster.Attach(dir); err == nil {
		step("control plane (already running)")
		s.cluster = c
		return nil
	}
	_ = localcluster.Stop(dir)
	binDir, err := localcluster.FindBinDir()
	if err != nil {
		return err
	}
	step("control plane: etcd, kube-apiserver, kube-scheduler, kube-controller-manager")
	sctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	s.cluster, err = localcluster.Start(sctx, localcluster.Config{Dir: dir, BinDir: binDir})
	return err
}

func (s *stack) service(name string, env []string, args ...string) error {
	pid, err := localcluster.StartService(s.state, name, filepath.Join(s.bin, name), args, env)
	if err != nil {
		return err
	}
	// A service that fails at once (a bad flag, a taken port) says so now;
	// the exited child has been reaped by then, so the signal fails.
	time.Sleep(300 * time.Millisecond)
	if syscall.Kill(pid, 0) != nil {
		return fmt.Errorf("%s exited at once; see %s", name, localcluster.ServiceLog(s.state, name))
	}
	return nil
}

func (s *stack) kubectl(stdin []byte, args ...string) (string, error) {
	cmd := exec.Command("kubectl", append([]string{"--kubeconfig", s.cluster.KubeconfigPath()}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

func (s *stack) waitFor(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if ctx.Err() != nil || time.Now().After(deadline) {
			return fmt.Errorf("timed out waiting for %s", what)
		}
		time.Sleep(250 * time.Millisecond)
	}
	return nil
}

func step(what string) { fmt.Printf("== %s\n", what) }

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
