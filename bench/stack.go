package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/wasmlet/wasmlet/bench/noopnode"
	"github.com/wasmlet/wasmlet/internal/profiling"
	"github.com/wasmlet/wasmlet/internal/testharness/localcluster"
	"github.com/wasmlet/wasmlet/internal/testharness/testregistry"
)

// PodSyncWorkers is virtual-kubelet's pod sync workers (pod creations
// and status writes at once) on both nodes.
const PodSyncWorkers = 16

// Node names of the stack.
const (
	WasmNode = "bench-wasmlet"
	NoopNode = "bench-noop"
)

// Build builds the services (stripped, as shipped), the example module
// (hello.wasm) and the pod-start benchmark's idle module (idle.wasm) into
// dir, from the module whose root is repo.
func Build(repo, dir string) error {
	run := func(env []string, args ...string) error {
		cmd := exec.Command("go", args...)
		cmd.Dir, cmd.Env = repo, append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run(nil, "build", "-trimpath", "-ldflags", "-s -w", "-o", dir+"/", "./services/nodeagent", "./services/executor", "./services/registry-cache"); err != nil {
		return err
	}
	if b, err := exec.Command("wat2wasm", "-o", filepath.Join(dir, "idle.wasm"), filepath.Join(repo, "testdata", "wasm", "idle", "idle.wat")).CombinedOutput(); err != nil {
		return fmt.Errorf("wat2wasm: %v: %s (install Debian package wabt)", err, b)
	}
	return run([]string{"GOOS=wasip1", "GOARCH=wasm"}, "build", "-trimpath", "-o", filepath.Join(dir, "hello.wasm"), "./examples/hello")
}

// repoRoot is the root of the module the benchmarks are built from (the
// go.mod the go command finds from the working directory).
func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("go env GOMOD: not inside the wasmlet module")
	}
	return filepath.Dir(gomod), nil
}

// Stack is a control plane, a registry with the example module, a wasmlet
// node (the real node agent with its embedded NATS, registry cache and
// supervised executor) and a no-op node.
type Stack struct {
	Cluster  *localcluster.Cluster
	Registry *testregistry.Registry
	Client   kubernetes.Interface
	// WatchClient is a second admin client (its own connection) for watches.
	WatchClient kubernetes.Interface
	Image       string // digest reference of the example module (Go, 2.8 MB)
	IdleImage   string // digest reference of testdata/wasm/idle
	Bin         string
	// Engine is the wasmlet node's --default-executor: the engine its
	// pods run on.
	Engine   string
	dir      string
	stopNoop context.CancelFunc
	noopDone chan error
}

// StartStack starts everything under dir, with binaries from bin (see
// Build); the wasmlet node runs its pods on engine (wasmtime or wazero).
func StartStack(ctx context.Context, dir, bin, engine string) (_ *Stack, err error) {
	cpBin, err := localcluster.FindBinDir()
	if err != nil {
		return nil, err
	}
	s := &Stack{dir: dir, Bin: bin, Engine: engine}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	if s.Cluster, err = localcluster.Start(ctx, localcluster.Config{Dir: filepath.Join(dir, "cluster"), BinDir: cpBin}); err != nil {
		return nil, err
	}
	if s.Client, err = kubernetes.NewForConfig(benchConfig(s.Cluster.RESTConfig())); err != nil {
		return nil, err
	}
	// A dialer of its own keeps client-go from sharing the cached transport
	// (and so the HTTP/2 connection) with Client.
	wc := benchConfig(s.Cluster.RESTConfig())
	wc.Dial = (&net.Dialer{Timeout: 30 * time.Second}).DialContext
	if s.WatchClient, err = kubernetes.NewForConfig(wc); err != nil {
		return nil, err
	}
	regDir := filepath.Join(dir, "registry")
	if err := os.MkdirAll(regDir, 0o755); err != nil {
		return nil, err
	}
	if s.Registry, err = testregistry.Start(regDir, testregistry.Options{}); err != nil {
		return nil, err
	}
	if s.Image, err = s.push(filepath.Join(bin, "hello.wasm"), "hello"); err != nil {
		return nil, err
	}
	if s.IdleImage, err = s.push(filepath.Join(bin, "idle.wasm"), "idle"); err != nil {
		return nil, err
	}

	kubeconfig, err := s.Cluster.NodeKubeconfig(WasmNode)
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	// The node agent runs its executor as an unprivileged user
	// (--executor-user), who must reach the binary and the state dir.
	if err := passable(bin); err != nil {
		return nil, err
	}
	if err := passable(dir); err != nil {
		return nil, err
	}
	if _, err := localcluster.StartService(dir, "nodeagent", filepath.Join(bin, "nodeagent"), []string{
		"--kubeconfig", kubeconfig, "--node-name", WasmNode, "--port", fmt.Sprint(port),
		"--state-dir", filepath.Join(dir, "node"), "--client-ca-file", s.Cluster.KubeletClientCAPath(),
		"--insecure-registry", s.Registry.Host, "--max-pods", "6000", "--log-level", "warn",
		"--pod-sync-workers", fmt.Sprint(PodSyncWorkers), "--default-executor", engine,
	}, profileEnv()); err != nil {
		return nil, err
	}

	noopConfig, err := s.Cluster.NodeKubeconfig(NoopNode)
	if err != nil {
		return nil, err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", noopConfig)
	if err != nil {
		return nil, err
	}
	nctx, cancel := context.WithCancel(context.Background())
	s.stopNoop, s.noopDone = cancel, make(chan error, 1)
	ready := make(chan struct{})
	go func() { s.noopDone <- noopnode.Run(nctx, rc, NoopNode, PodSyncWorkers, ready) }()
	for _, n := range []string{WasmNode, NoopNode} {
		if err := s.waitSchedulable(ctx, n); err != nil {
			return nil, fmt.Errorf("%w (node agent log: %s)", err, localcluster.ServiceLog(dir, "nodeagent"))
		}
	}
	return s, nil
}

// startNodeAgent starts a node agent of its own for node, beside the
// stack's: as service (a link to the nodeagent binary of that name, since
// StopService finds the process by its binary's base name), its state
// under state, with the stack's flags and more. It returns the node agent's
// pid and what stops it and removes its Node and the mounts under state.
func (s *Stack) startNodeAgent(ctx context.Context, node, service, state string, more ...string) (int, func() error, error) {
	kubeconfig, err := s.Cluster.NodeKubeconfig(node)
	if err != nil {
		return 0, nil, err
	}
	port, err := freePort()
	if err != nil {
		return 0, nil, err
	}
	stop := func() error {
		errs := []error{localcluster.StopService(s.dir, service), localcluster.UnmountUnder(state)}
		if err := s.Client.CoreV1().Nodes().Delete(context.Background(), node, metav1.DeleteOptions{}); err != nil {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
	bin := filepath.Join(s.Bin, service)
	if err := os.Link(filepath.Join(s.Bin, "nodeagent"), bin); err != nil && !errors.Is(err, os.ErrExist) {
		return 0, nil, err
	}
	pid, err := localcluster.StartService(s.dir, service, bin, append([]string{
		"--kubeconfig", kubeconfig, "--node-name", node, "--port", fmt.Sprint(port),
		"--state-dir", state, "--client-ca-file", s.Cluster.KubeletClientCAPath(),
		"--insecure-registry", s.Registry.Host, "--max-pods", "6000", "--log-level", "warn",
		"--pod-sync-workers", fmt.Sprint(PodSyncWorkers),
	}, more...), profileEnv())
	if err != nil {
		return 0, nil, err
	}
	if err := s.waitSchedulable(ctx, node); err != nil {
		return 0, nil, errors.Join(fmt.Errorf("%w (node agent log: %s)", err, localcluster.ServiceLog(s.dir, service)), stop())
	}
	return pid, stop, nil
}

func (s *Stack) waitSchedulable(ctx context.Context, name string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		n, err := s.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil && schedulable(n) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s not Ready and schedulable after 2m (last error: %v)", name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func schedulable(n *v1.Node) bool {
	for _, t := range n.Spec.Taints {
		if strings.HasPrefix(t.Key, "node.kubernetes.io/") {
			return false
		}
	}
	for _, c := range n.Status.Conditions {
		if c.Type == v1.NodeReady {
			return c.Status == v1.ConditionTrue
		}
	}
	return false
}

// NodeAgentPID is the PID of the wasmlet node agent.
func (s *Stack) NodeAgentPID() (int, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, "pids", "nodeagent.pid"))
	if err != nil {
		return 0, err
	}
	var pid int
	_, err = fmt.Sscan(string(b), &pid)
	return pid, err
}

// Stop stops everything the stack started.
func (s *Stack) Stop() error {
	var errs []error
	errs = append(errs, localcluster.StopService(s.dir, "nodeagent"))
	errs = append(errs, localcluster.UnmountUnder(s.dir)) // the pods' token volumes
	if s.stopNoop != nil {
		s.stopNoop()
		select {
		case <-s.noopDone:
		case <-time.After(10 * time.Second):
		}
	}
	if s.Registry != nil {
		s.Registry.Stop()
	}
	if s.Cluster != nil {
		errs = append(errs, s.Cluster.Stop())
	}
	return errors.Join(errs...)
}

// benchConfig makes the benchmark's own client what a controller's is, so
// that it does not limit what it measures: protobuf, as controllers and
// the node agent speak it to the API server, and a client rate limit above
// any burst it sends (client-go's default of 5 QPS, or the admin client's
// 200, would pace a burst of 500 creates).
func benchConfig(c *rest.Config) *rest.Config {
	c.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	c.ContentType = "application/vnd.kubernetes.protobuf"
	c.QPS, c.Burst = 5000, 10000
	return c
}

// push pushes the module file wasm to the stack's registry as
// bench/<name>:v1 and returns its digest reference.
func (s *Stack) push(wasm, name string) (string, error) {
	ref := s.Registry.Host + "/bench/" + name + ":v1"
	b, err := exec.Command(filepath.Join(s.Bin, "registry-cache"), "push", "--plain-http", wasm, ref).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("push %s: %v: %s", ref, err, b)
	}
	return strings.TrimSpace(string(b)), nil
}

// profileEnv passes profiling.EnvDir on to the node agent (and so to its
// executor): the control plane's services start with a clean environment.
func profileEnv() []string {
	if dir := os.Getenv(profiling.EnvDir); dir != "" {
		return []string{profiling.EnvDir + "=" + dir}
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// passable lets any user pass through path and the directories above it
// up to the temporary directory (o+x, as /var/lib has), so that the node
// agent's unprivileged executor user reaches what lies below.
func passable(path string) error {
	for d := path; d != filepath.Dir(d) && d != os.TempDir(); d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if perm := st.Mode().Perm(); perm&0o001 == 0 {
			if err := os.Chmod(d, perm|0o011); err != nil {
				return err
			}
		}
	}
	return nil
}
