package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/wasmlet/wasmlet/internal/natsutil/natsserver"
	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
)

// TestLogsSurviveNATSRestart stops the NATS server in the middle of a pod's
// output and starts it again on the same port and store: the executor
// buffers while NATS is away, and every line reaches kubectl logs, in order.
func TestLogsSurviveNATSRestart(t *testing.T) {
	store := t.TempDir()
	nats, err := natsserver.Start(natsserver.Config{StoreDir: store, Token: "restart-token"})
	if err != nil {
		t.Fatal(err)
	}
	_, portStr, _ := strings.Cut(strings.TrimPrefix(nats.URL, "nats://"), ":")
	natsPort, err := strconv.Atoi(portStr)
	if err != nil {
		t.Fatalf("NATS URL %q: %v", nats.URL, err)
	}
	current := nats
	t.Cleanup(func() { current.Shutdown() })

	sp := startSplitWith(t, nats.URL, "restart-token")
	n := startNode(t, "e2e-natsrestart", sp.env, sp.flags...)
	ns := namespace(t, "e2e-natsrestart")
	image := push(t, "examples/hello:v1")

	const lines = 60
	apply(t, ns, wasmPod("steady", n.name, image, v1.RestartPolicyNever,
		v1.EnvVar{Name: "COUNT", Value: fmt.Sprint(lines)}, v1.EnvVar{Name: "SLEEP", Value: "100ms"}))
	waitFor(t, 2*time.Minute, "the first lines", func() (bool, string) {
		out, _ := kubectl(t, "logs", "-n", ns, "steady", "--tail=1")
		return strings.HasPrefix(out, "count "), out
	})
	current.Shutdown()
	current.WaitForShutdown()
	time.Sleep(1500 * time.Millisecond) // NATS is away while the module prints ~15 lines
	current, err = natsserver.Start(natsserver.Config{StoreDir: store, Token: "restart-token", Port: natsPort})
	if err != nil {
		t.Fatal(err)
	}
	waitPhase(t, ns, "steady", v1.PodSucceeded, 2*time.Minute)
	waitFor(t, 30*time.Second, "every line in kubectl logs", func() (bool, string) {
		out, _ := kubectl(t, "logs", "-n", ns, "steady")
		var counts []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "count ") {
				counts = append(counts, strings.TrimPrefix(l, "count "))
			}
		}
		if len(counts) != lines {
			return false, fmt.Sprintf("%d count lines: %v", len(counts), counts)
		}
		for i, c := range counts {
			if c != fmt.Sprint(i+1) {
				return false, fmt.Sprintf("line %d is count %s", i+1, c)
			}
		}
		return true, ""
	})
}

// TestLogsSurviveExecutorAndNodeAgentRestarts kills a separately run
// executor (kill -9) in the middle of a pod's fast output and starts it
// again on the same state dir: the lines it had read but NATS had not yet
// acknowledged are in its spool, and the new process publishes them, once
// each. The node agent restarts the lost container; kubectl logs
// --previous shows the first instance's lines 1..N with no gap and no
// duplicate. Then the node agent itself is restarted in the middle of the
// second instance's output, and a later kubectl logs shows every line.
func TestLogsSurviveExecutorAndNodeAgentRestarts(t *testing.T) {
	nats, err := natsserver.Start(natsserver.Config{StoreDir: t.TempDir(), Token: "kill-token"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nats.Shutdown)
	bin := binaries(t)
	reg := sharedRegistry(t)
	sock := t.TempDir()
	registryAddr := "unix://" + filepath.Join(sock, "registry.sock")
	executorAddr := "unix://" + filepath.Join(sock, "executor.sock")
	env := []string{"WASMLET_NATS_TOKEN=kill-token"}
	startProcess(t, "registry-cache", filepath.Join(bin, "registry-cache"), nil,
		"serve", "--listen", registryAddr, "--dir", t.TempDir(), "--insecure-registry", reg.Host)
	execState := t.TempDir()
	execArgs := []string{"--listen", executorAddr, "--registry", registryAddr, "--nats", nats.URL, "--state-dir", execState, "--mount-root", mountRoot(t)}
	exec1 := startProcess(t, "executor-1", filepath.Join(bin, "executor"), env, execArgs...)

	nodeState := t.TempDir()
	nodeFlags := []string{"--state-dir", nodeState, "--nats", nats.URL, "--registry-cache", registryAddr, "--executor", "wasmtime=" + executorAddr}
	n := startNode(t, "e2e-logkill", env, nodeFlags...)
	ns := namespace(t, "e2e-logkill")
	image := pushFile(t, wasmbuild.Build(t, "logflood"), "e2e/logflood:v1")

	// About 20,000 lines/s in writes of 200: many are between the module
	// and NATS's ack at any moment.
	apply(t, ns, wasmPod("flood", n.name, image, v1.RestartPolicyAlways,
		v1.EnvVar{Name: "BURST", Value: "200"}, v1.EnvVar{Name: "PAUSE", Value: "10ms"}))
	seen := 0
	waitFor(t, 2*time.Minute, "20,000 lines", func() (bool, string) {
		out, _ := kubectl(t, "logs", "-n", ns, "flood", "--tail=1")
		fmt.Sscan(out, &seen)
		return seen >= 20000, out
	})
	if err := syscall.Kill(exec1.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exec1.exited
	exec2 := startProcess(t, "executor-2", filepath.Join(bin, "executor"), env, execArgs...)

	waitFor(t, 2*time.Minute, "the container restarted after the executor's loss", func() (bool, string) {
		got := jsonpath(t, ns, "flood", "{.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].lastState.terminated.reason}")
		f := strings.Fields(got)
		return len(f) == 2 && f[0] != "0", got
	})
	var last int
	waitFor(t, 2*time.Minute, "the first instance's lines contiguous in kubectl logs --previous", func() (bool, string) {
		out, err := kubectl(t, "logs", "-n", ns, "flood", "--previous")
		if err != nil {
			return false, err.Error()
		}
		n, msg := contiguous(out)
		last = n
		return msg == "" && n >= seen, fmt.Sprintf("%d lines (%d seen before the kill): %s", n, seen, msg)
	})
	t.Logf("first instance: %d lines, %d seen before the kill -9; executor-2 log: %s", last, seen, grepLog(exec2.logPath, "earlier executor"))

	// The node agent restarts in the middle of the second instance's output.
	var before int
	waitFor(t, 2*time.Minute, "the second instance's lines", func() (bool, string) {
		out, _ := kubectl(t, "logs", "-n", ns, "flood", "--tail=1")
		fmt.Sscan(out, &before)
		return before >= 5000, out
	})
	n.proc.stop(15 * time.Second)
	startNode(t, "e2e-logkill", env, nodeFlags...)
	waitFor(t, 2*time.Minute, "every line of the second instance across the node-agent restart", func() (bool, string) {
		out, err := kubectl(t, "logs", "-n", ns, "flood")
		if err != nil {
			return false, err.Error()
		}
		n, msg := contiguous(out)
		return msg == "" && n > before+5000, fmt.Sprintf("%d lines (%d before the restart): %s", n, before, msg)
	})
	if got := followLogs(t, ns, "flood", 50, 30*time.Second); len(got) != 50 {
		t.Errorf("kubectl logs -f after the node-agent restart printed %d lines, want 50", len(got))
	}
}

// contiguous checks that out is lines "<n> <time>" numbered 1, 2, ... with
// no gap and no duplicate, and returns the last number, or a description
// of the first fault.
func contiguous(out string) (int, string) {
	n := 0
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if l == "" {
			continue
		}
		f := strings.Fields(l)
		v, err := strconv.Atoi(f[0])
		if err != nil {
			return n, fmt.Sprintf("line %q after %d is not numbered", l, n)
		}
		if v != n+1 {
			return n, fmt.Sprintf("line %d follows line %d", v, n)
		}
		n = v
	}
	return n, ""
}

// pushFile pushes a module file and returns its digest reference.
func pushFile(t *testing.T, path, repoTag string) string {
	t.Helper()
	ref := sharedRegistry(t).Host + "/" + repoTag
	out, err := exec.Command(filepath.Join(binaries(t), "registry-cache"), "push", "--plain-http", path, ref).CombinedOutput()
	if err != nil {
		t.Fatalf("push %s: %v\n%s", ref, err, out)
	}
	return strings.TrimSpace(string(out))
}

func grepLog(path, substr string) string {
	b, _ := os.ReadFile(path)
	var hits []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, substr) {
			hits = append(hits, l)
		}
	}
	return strings.Join(hits, "\n")
}
