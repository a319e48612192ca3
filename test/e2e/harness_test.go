// Package e2e drives wasmlet end to end: a real kube-apiserver, scheduler
// and controller-manager (internal/localcluster), a real OCI registry
// (Debian's docker-registry), the real nodeagent, executor and
// registry-cache binaries as processes, a real Wasm module built from
// examples/hello, and stock kubectl for what a user would do.
package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/localcluster"
	"github.com/wasmlet/wasmlet/internal/testharness/testregistry"
)

// The CSR signers issue 3-minute certificates, so that a node's serving
// certificate is renewed within a test (servingcert_test.go); no other test
// uses CSRs.
var cluster = localcluster.Shared{ClusterSigningDuration: 3 * time.Minute}

func TestMain(m *testing.M) {
	code := cluster.Run(m)
	if registry.reg != nil {
		registry.reg.Stop()
		os.RemoveAll(registry.reg.Dir)
	}
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// repoRoot is the module's root, from this file's place in it.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

var build struct {
	once sync.Once
	dir  string
	err  error
}

// binaries builds the three services and the example module once per test
// binary, and returns the directory holding nodeagent, executor,
// registry-cache and hello.wasm.
func binaries(t *testing.T) string {
	t.Helper()
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "wasmlet-e2e-bin-")
		if err != nil {
			build.err = err
			return
		}
		// A root node agent runs its executor as an unprivileged user
		// (--executor-user), which executes the binary again.
		if build.err = os.Chmod(dir, 0o755); build.err != nil {
			return
		}
		build.dir = dir
		run := func(env []string, args ...string) error {
			cmd := exec.Command("go", args...)
			cmd.Dir = repoRoot()
			cmd.Env = append(os.Environ(), env...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			return nil
		}
		if build.err = run(nil, "build", "-o", dir+"/", "./services/nodeagent", "./services/executor", "./services/registry-cache"); build.err != nil {
			return
		}
		if build.err = run([]string{"GOOS=wasip1", "GOARCH=wasm"}, "build", "-o", filepath.Join(dir, "hello.wasm"), "./examples/hello"); build.err != nil {
			return
		}
		if build.err = run([]string{"GOOS=wasip1", "GOARCH=wasm"}, "build", "-ldflags", "-X main.version=v2", "-o", filepath.Join(dir, "hello-v2.wasm"), "./examples/hello"); build.err != nil {
			return
		}
		if build.err = run([]string{"GOOS=wasip1", "GOARCH=wasm"}, "build", "-o", filepath.Join(dir, "httpserver.wasm"), "./examples/httpserver"); build.err != nil {
			return
		}
		if out, err := exec.Command("wat2wasm", "-o", filepath.Join(dir, "wagi-hello.wasm"), filepath.Join(repoRoot(), "examples", "wagi-hello", "hello.wat")).CombinedOutput(); err != nil {
			build.err = fmt.Errorf("wat2wasm examples/wagi-hello (make deps installs it): %v: %s", err, out)
		}
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.dir
}

var registry struct {
	once sync.Once
	reg  *testregistry.Registry
	err  error
}

// sharedRegistry is one plain-HTTP registry for the package's tests.
func sharedRegistry(t *testing.T) *testregistry.Registry {
	t.Helper()
	registry.once.Do(func() {
		dir, err := os.MkdirTemp("", "wasmlet-e2e-registry-")
		if err != nil {
			registry.err = err
			return
		}
		registry.reg, registry.err = testregistry.Start(dir, testregistry.Options{})
	})
	if registry.err != nil {
		t.Fatal(registry.err)
	}
	return registry.reg
}

// push pushes hello.wasm with our own push command and returns the
// digest reference it prints.
func push(t *testing.T, repoTag string) string {
	t.Helper()
	return pushModule(t, "hello.wasm", repoTag)
}

// pushModule pushes one of the built modules (hello.wasm, hello-v2.wasm,
// httpserver.wasm, wagi-hello.wasm).
func pushModule(t *testing.T, module, repoTag string) string {
	t.Helper()
	bin := binaries(t)
	reg := sharedRegistry(t)
	ref := reg.Host + "/" + repoTag
	out, err := exec.Command(filepath.Join(bin, "registry-cache"), "push", "--plain-http", filepath.Join(bin, module), ref).CombinedOutput()
	if err != nil {
		t.Fatalf("push %s: %v\n%s", ref, err, out)
	}
	digestRef := strings.TrimSpace(string(out))
	if !strings.Contains(digestRef, "@sha256:") {
		t.Fatalf("push printed %q, want a digest reference", digestRef)
	}
	return digestRef
}

// process is a started service, stopped (SIGTERM, then SIGKILL) at cleanup;
// its output goes to a file whose tail is printed when the test failed.
type process struct {
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
}

func startProcess(t *testing.T, name, bin string, env []string, args ...string) *process {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); f.Close(); close(p.exited) }()
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("--- last lines of %s:\n%s", name, tail(logPath, 60))
		}
	})
	return p
}

func (p *process) stop(grace time.Duration) {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	}
}

func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// node is a running wasmlet node agent.
type node struct {
	name string
	port int
	proc *process
}

// startNode starts a node agent as the node's own identity (not admin),
// with extra flags appended.
func startNode(t *testing.T, name string, env []string, extra ...string) *node {
	t.Helper()
	c := cluster.Get(t)
	bin := binaries(t)
	kubeconfig, err := c.NodeKubeconfig(name)
	if err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	args := append([]string{
		"--kubeconfig", kubeconfig,
		"--node-name", name,
		"--port", fmt.Sprint(port),
		"--state-dir", t.TempDir(),
		"--client-ca-file", c.KubeletClientCAPath(),
		"--executor-binary", filepath.Join(bin, "executor"),
		"--backoff-initial", "1s", "--backoff-max", "4s",
		"--insecure-registry", sharedRegistry(t).Host,
	}, extra...)
	for i := range args[:len(args)-1] {
		if args[i] == "--state-dir" {
			state := args[i+1]
			// The test's temporary directory (0700) must let the
			// executor's unprivileged user pass to the state dir, as
			// /var/lib does.
			if err := os.Chmod(filepath.Dir(state), 0o711); err != nil {
				t.Fatal(err)
			}
			// After the node agent stops, before its state dir is removed:
			// a stopped node agent leaves its pods' volumes mounted, as a
			// kubelet does.
			t.Cleanup(func() {
				if err := localcluster.UnmountUnder(state); err != nil {
					t.Log(err)
				}
			})
		}
	}
	n := &node{name: name, port: port, proc: startProcess(t, "nodeagent-"+name, filepath.Join(bin, "nodeagent"), env, args...)}
	waitFor(t, 90*time.Second, "node "+name+" Ready and schedulable", func() (bool, string) {
		out, err := kubectl(t, "get", "node", name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status} {.spec.taints[*].key}`)
		if err != nil {
			return false, err.Error()
		}
		return strings.HasPrefix(out, "True") && !strings.Contains(out, "node.kubernetes.io/not-ready"), out
	})
	return n
}

// kubectl runs the stock kubectl as the cluster admin.
func kubectl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return kubectlIn(t, nil, args...)
}

func kubectlIn(t *testing.T, stdin []byte, args ...string) (string, error) {
	t.Helper()
	c := cluster.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "kubectl", append([]string{"--kubeconfig", c.KubeconfigPath()}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

func mustKubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := kubectl(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, detail := cond()
		if ok {
			return
		}
		last = detail
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last: %s", timeout, what, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// namespace creates a namespace for one test and waits for its default
// ServiceAccount (pods are refused until the controller-manager makes it).
func namespace(t *testing.T, name string) string {
	t.Helper()
	mustKubectl(t, "create", "namespace", name)
	t.Cleanup(func() {
		_, _ = kubectl(t, "delete", "namespace", name, "--wait=false")
	})
	waitFor(t, 60*time.Second, "default service account in "+name, func() (bool, string) {
		_, err := kubectl(t, "get", "serviceaccount", "default", "-n", name)
		return err == nil, fmt.Sprint(err)
	})
	return name
}

// mountRoot is where a separately run executor of this test may mount
// volumes from (--mount-root): the test's temporary directories, which
// hold its node agents' state dirs.
func mountRoot(t *testing.T) string {
	return filepath.Dir(t.TempDir())
}
