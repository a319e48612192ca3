// Command localstack is `make up` and `make down`: it runs a whole wasmlet
// node on this machine's loopback — the control plane (internal/localcluster),
// a NATS server, an OCI registry, the registry cache, an executor and a node
// agent, each its own process — and runs the example pod on it.
//
// State, logs and PID files live in .state/ under the working directory;
// `down` stops every process recorded there. The control plane's data and
// PKI are kept for the next `up`.
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
var services = []string{"docker-registry", "nats-server", "registry-cache", "executor", "nodeagent"}

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
		err = s.down()
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

func (s *stack) down() error {
	var errs []error
	for i := len(services) - 1; i >= 0; i-- {
		if err := localcluster.StopService(s.state, services[i]); err != nil {
			errs = append(errs, err)
		}
	}
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

func (s *stack) up(ctx context.Context) error {
	for _, name := range services { // a previous `up`'s services, if any
		if err := localcluster.StopService(s.state, name); err != nil {
			return err
		}
	}
	for _, b := range []string{"nodeagent", "executor", "registry-cache", "nats-server", "wasm/hello.wasm"} {
		if _, err := os.Stat(filepath.Join(s.bin, b)); err != nil {
			return fmt.Errorf("%w: run `make build` first", err)
		}
	}
	if err := s.startCluster(ctx); err != nil {
		return err
	}
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

	step("executor (wasmtime)")
	executorAddr := "unix://" + filepath.Join(s.state, "sockets", "executor.sock")
	if err := s.service("executor", tokenEnv, "--listen", executorAddr, "--registry", registryAddr,
		"--nats", natsURL, "--state-dir", filepath.Join(s.state, "executor"), "--node", nodeName,
		"--mount-root", filepath.Join(s.state, "node", "pods")); err != nil {
		return err
	}

	// wazero's executor serves pods with ports: wasmtime-go cannot hand a
	// module a socket, and the node agent sends such pods to it.
	step("executor (wazero)")
	wazeroAddr := "unix://" + filepath.Join(s.state, "sockets", "executor-wazero.sock")
	if err := s.service("executor-wazero", tokenEnv, "--listen", wazeroAddr, "--registry", registryAddr,
		"--nats", natsURL, "--state-dir", filepath.Join(s.state, "executor-wazero"), "--node", nodeName,
		"--mount-root", filepath.Join(s.state, "node", "pods")); err != nil {
		return err
	}

	step("node agent " + nodeName)
	kubeconfig, err := s.cluster.NodeKubeconfig(nodeName)
	if err != nil {
		return err
	}
	if err := s.service("nodeagent", tokenEnv, "--kubeconfig", kubeconfig, "--node-name", nodeName,
		"--port", fmt.Sprint(freePort()), "--state-dir", filepath.Join(s.state, "node"),
		"--client-ca-file", s.cluster.KubeletClientCAPath(), "--nats", natsURL,
		"--registry-cache", registryAddr, "--executor", "wasmtime="+executorAddr, "--executor", "wazero="+wazeroAddr); err != nil {
		return err
	}
	if err := s.waitFor(ctx, 90*time.Second, "node "+nodeName+" Ready", func() bool {
		out, _ := s.kubectl(nil, "get", "node", nodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status} {.spec.taints[*].key}`)
		return strings.HasPrefix(out, "True") && !strings.Contains(out, "not-ready")
	}); err != nil {
		return fmt.Errorf("%w (see %s)", err, localcluster.ServiceLog(s.state, "nodeagent"))
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
	s.runServer(ctx, reg.Host)

	fmt.Println()
	pods, _ := s.kubectl(nil, "get", "pods", "-o", "wide")
	fmt.Print(pods)
	logs, _ := s.kubectl(nil, "logs", "hello-wasm")
	fmt.Printf("\n$ kubectl logs hello-wasm\n%s\n", logs)
	fmt.Printf(`The local wasmlet node is up. Use it with:

  export KUBECONFIG=%s
  kubectl get nodes -o wide
  kubectl get pods -o wide

Logs of every process: %s/logs/ and %s/cluster/logs/
Stop everything with: make down
`, s.cluster.KubeconfigPath(), s.state, s.state)
	return nil
}

// runServer runs the example server (examples/httpserver/pod.yaml) and
// fetches its page: this node has no pod network, so its port 8080 is
// opened on the node's address. A port already taken on this machine
// is reported, not fatal: the node is up all the same.
func (s *stack) runServer(ctx context.Context, registry string) {
	step("run the example server (examples/httpserver/pod.yaml) on port 8080")
	ref := registry + "/examples/httpserver:v1"
	if out, err := exec.Command(filepath.Join(s.bin, "registry-cache"), "push", "--plain-http", filepath.Join(s.bin, "wasm", "httpserver.wasm"), ref).CombinedOutput(); err != nil {
		fmt.Printf("   push %s: %v: %s\n", ref, err, out)
		return
	}
	manifest, err := os.ReadFile(filepath.Join(s.root, "examples", "httpserver", "pod.yaml"))
	if err != nil {
		fmt.Printf("   %v\n", err)
		return
	}
	manifest = bytes.ReplaceAll(manifest, []byte("${IMAGE}"), []byte(ref))
	if _, err := s.kubectl(nil, "delete", "pod", "httpserver-wasm", "--ignore-not-found", "--wait=true"); err != nil {
		fmt.Printf("   %v\n", err)
		return
	}
	if out, err := s.kubectl(manifest, "apply", "-f", "-"); err != nil {
		fmt.Printf("   %v: %s\n", err, out)
		return
	}
	if err := s.waitFor(ctx, time.Minute, "pod httpserver-wasm Ready", func() bool {
		out, _ := s.kubectl(nil, "get", "pod", "httpserver-wasm", "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		return out == "True"
	}); err != nil {
		why, _ := s.kubectl(nil, "get", "pod", "httpserver-wasm", "-o", "jsonpath={.status.containerStatuses[0].state}")
		fmt.Printf("   the example server is not serving: %v: %s\n", err, why)
		return
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://127.0.0.1:8080/")
	if err != nil {
		fmt.Printf("   GET http://127.0.0.1:8080/: %v\n", err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	fmt.Printf("\n$ curl http://127.0.0.1:8080/\n%s", body)
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
