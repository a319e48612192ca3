package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/wire"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
)

// TestServeExecutorProcess runs the example server (examples/httpserver)
// in executor processes as a node agent would, over gRPC: the wazero
// executor, confined as by default, serves HTTP on a loopback listener and
// idles at next to no CPU (its thread's and the whole process's); a second
// instance on the same port fails PortInUse; a stopped one frees its port.
// A network namespace is refused by the confined executor (its seccomp
// filter forbids setns), ListenFailed saying so, and served in by an
// unconfined one (as root). The wasmtime executor refuses listeners
// (UNIMPLEMENTED).
func TestServeExecutorProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the executor binary")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Second)
	defer cancel()
	files := cachetest.Files{}
	server, err := files.Add(wasmbuild.BuildDir(t, "examples/httpserver"))
	if err != nil {
		t.Fatal(err)
	}
	bin, sockDir, regAddr := executorHarness(t, ctx, "exserve", files)

	create := func(e *executor, id string, spec instances.Spec) (instances.Instance, error) {
		r, err := e.c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: id, Start: true, Spec: wire.SpecToProto(spec)})
		if err != nil {
			return instances.Instance{}, wire.FromStatus(err)
		}
		return wire.InstanceFromProto(r.GetInstance()), nil
	}
	spec := func(port int) instances.Spec {
		return instances.Spec{Module: instances.Module{Digest: server}, Args: []string{"httpserver"},
			Listeners: []instances.Listener{{Name: "http", Port: int32(port), Protocol: instances.ProtocolTCP}}}
	}

	t.Run("wazero", func(t *testing.T) {
		e := startExecutor(t, ctx, bin, sockDir, 1, regAddr, "--engine", "wazero")
		if info, err := e.c.GetInfo(ctx, &executorv1.GetInfoRequest{}); err != nil || !info.GetListeners() {
			t.Fatalf("info: %v %v", info, err)
		}
		_, port := enginetest.LoopbackAddr(t)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		in, err := create(e, "srv", spec(port))
		if err != nil || in.State != instances.StateRunning {
			t.Fatalf("create: %+v %v", in, err)
		}
		body := waitGet(t, "http://"+addr+"/")
		if body != "Hello from WebAssembly, pod somewhere!\n" {
			t.Errorf("GET /: %q", body)
		}
		c := &http.Client{Timeout: 5 * time.Second}
		for range 20 { // and keep a connection open while idle
			resp, err := c.Get("http://" + addr + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		time.Sleep(300 * time.Millisecond)
		thread0, proc0, w0 := instanceCPU(t, ctx, e, "srv"), processCPU(t, e.cmd.Process.Pid), time.Now()
		time.Sleep(2 * time.Second)
		thread1, proc1, wall := instanceCPU(t, ctx, e, "srv"), processCPU(t, e.cmd.Process.Pid), time.Since(w0)
		thread, proc := float64(thread1-thread0)/float64(wall), float64(proc1-proc0)/float64(wall)
		t.Logf("idle serving instance over %v: its thread %.2f%% of a core, the executor process %.2f%%", wall.Round(time.Millisecond), 100*thread, 100*proc)
		if thread > enginetest.IdleCPUBound || proc > enginetest.IdleCPUBound {
			t.Errorf("an idle server costs %.1f%% (thread) / %.1f%% (process) of a core, want < %.0f%%", 100*thread, 100*proc, 100*enginetest.IdleCPUBound)
		}

		again, err := create(e, "srv2", spec(port))
		if err != nil || again.State != instances.StateFailed || again.Reason != instances.ReasonPortInUse {
			t.Errorf("a second instance on the port: %+v %v", again, err)
		}
		t.Logf("%s: %s", again.Reason, again.Message)
		if _, err := e.c.StopInstance(ctx, &executorv1.StopInstanceRequest{Id: "srv"}); err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("the port of a stopped instance is not free: %v", err)
		}
		l.Close()
	})

	t.Run("NetNS", func(t *testing.T) {
		name, netns := enginetest.NetNS(t, "wasmlet-exec-test")
		_, port := enginetest.LoopbackAddr(t)
		s := spec(port)
		s.NetworkNamespace = netns

		confined := startExecutor(t, ctx, bin, sockDir, 2, regAddr, "--engine", "wazero")
		in, err := create(confined, "srv", s)
		if err != nil || in.State != instances.StateFailed || in.Reason != instances.ReasonListenFailed || !strings.Contains(in.Message, name) {
			t.Fatalf("the confined executor in a namespace: %+v %v", in, err)
		}
		t.Logf("confined: %s: %s", in.Reason, in.Message)

		open := startExecutor(t, ctx, bin, sockDir, 3, regAddr, "--engine", "wazero", "--confine=false")
		in, err = create(open, "srv", s)
		if err != nil || in.State != instances.StateRunning {
			t.Fatalf("the unconfined executor in a namespace: %+v %v", in, err)
		}
		out, err := exec.Command("ip", "netns", "exec", name, "bash", "-c",
			fmt.Sprintf("for i in $(seq 100); do exec 3<>/dev/tcp/127.0.0.1/%d 2>/dev/null && break; sleep 0.1; done; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3", port)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Hello from WebAssembly") {
			t.Fatalf("GET inside %s: %v: %s", name, err, out)
		}
		if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), time.Second); err == nil {
			c.Close()
			t.Fatal("the server in the namespace answers on the host's loopback")
		}
	})

	t.Run("wasmtime", func(t *testing.T) {
		e := startExecutor(t, ctx, bin, sockDir, 4, regAddr, "--engine", "wasmtime")
		_, port := enginetest.LoopbackAddr(t)
		if _, err := create(e, "srv", spec(port)); !errors.Is(err, instances.ErrUnsupported) || !strings.Contains(err.Error(), "wazero") {
			t.Fatalf("wasmtime with a listener: %v, want ErrUnsupported naming wazero", err)
		}
	})
}

func waitGet(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := c.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return string(b)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// instanceCPU is the CPU time of an instance's thread, as the executor
// reports it.
func instanceCPU(t *testing.T, ctx context.Context, e *executor, id string) time.Duration {
	t.Helper()
	r, err := e.c.ListInstanceStats(ctx, &executorv1.ListInstanceStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range r.GetStats() {
		if st := wire.StatsFromProto(s); st.ID == id && st.CPUMeasured {
			return st.CPU
		}
	}
	t.Fatalf("no CPU figure for %s", id)
	return 0
}

// executorHarness builds the executor binary and serves files as the
// registry cache, on a unix socket in a short temporary directory
// (sockDir, removed at the test's end; socket paths are bounded), for
// executor-process tests.
func executorHarness(t *testing.T, ctx context.Context, prefix string, files cachetest.Files) (bin, sockDir, regAddr string) {
	t.Helper()
	bin = filepath.Join(t.TempDir(), "executor")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	sockDir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	regAddr = "unix://" + filepath.Join(sockDir, "reg.sock")
	rl, err := grpcutil.Listen(regAddr)
	if err != nil {
		t.Fatal(err)
	}
	serveRegistry(t, rl, files)
	return bin, sockDir, regAddr
}

// processCPU is a process's user and system time, from /proc/<pid>/stat.
func processCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}
