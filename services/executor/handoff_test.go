package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/handoff"
	"github.com/wasmlet/wasmlet/services/executor/instances/wire"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
)

// executorUID is the unprivileged user the test's executor runs as (the
// distroless "nonroot", as the node agent's supervised executor).
const executorUID = 65532

// TestHandedListenersExecutorProcess: a confined wazero executor running
// as an unprivileged user, which may not enter a network namespace, serves
// the example server inside one on a listener the test (root, as the node
// agent) opened there and handed over on the executor's --listener-socket.
// It answers from inside the namespace; Stop closes it. An instance whose
// listeners were not handed over fails ListenFailed. The same with an
// executor in a network namespace of its own (--isolate-network).
func TestHandedListenersExecutorProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the executor binary")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: to make a network namespace and to start the executor as an unprivileged user")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Second)
	defer cancel()

	// Everything the executor's user must reach, under a directory it may
	// traverse (t.TempDir is 0700).
	base, err := os.MkdirTemp("", "exhandoff")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	dirs := map[string]string{}
	for _, d := range []string{"sock", "reg"} {
		dirs[d] = filepath.Join(base, d)
		if err := os.Mkdir(dirs[d], 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dirs[d], executorUID, executorUID); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "executor")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	files := cachetest.Files{}
	server, err := files.Add(wasmbuild.BuildDir(t, "examples/httpserver"))
	if err != nil {
		t.Fatal(err)
	}
	regSock := filepath.Join(dirs["reg"], "reg.sock")
	rl, err := grpcutil.Listen("unix://" + regSock)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(regSock, executorUID, executorUID); err != nil {
		t.Fatal(err)
	}
	serveRegistry(t, rl, files)

	for n, v := range []struct {
		name  string
		extra []string
	}{
		{"Unprivileged", nil},
		// No network of its own at all: the handed socket is its only one.
		{"IsolatedNetwork", []string{"--isolate-network"}},
	} {
		t.Run(v.name, func(t *testing.T) {
			state := filepath.Join(base, "state"+v.name)
			if err := os.Mkdir(state, 0o755); err != nil {
				t.Fatal(err)
			}
			testHandedListeners(t, ctx, bin, dirs["sock"], "unix://"+regSock, state, n+1, server, v.extra...)
		})
	}
}

func testHandedListeners(t *testing.T, ctx context.Context, bin, sockDir, regAddr, state string, n int, server string, extra ...string) {
	listenerSock := filepath.Join(state, "listeners.sock")
	e := startExecutor(t, ctx, bin, sockDir, n, regAddr, append([]string{"--engine", "wazero",
		"--state-dir", state, "--run-as-user", fmt.Sprint(executorUID), "--listener-socket", listenerSock}, extra...)...)
	infoResp, err := e.c.GetInfo(ctx, &executorv1.GetInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	info := wire.InfoFromProto(infoResp)
	if !info.ListenerHandoff || info.Confinement.UID != executorUID || !info.Confinement.Seccomp {
		t.Fatalf("info: %+v, want listener handoff from a confined executor running as %d", info, executorUID)
	}
	t.Logf("executor: %s", info.Confinement.Description)
	if st, err := os.Stat(listenerSock); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("listener socket: %v %v, want mode 0600", st, err)
	}

	name, netns := enginetest.NetNS(t, "wasmlet-handoff-test")
	const port = 8080 // free: the namespace is new
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	// The node agent's part: open the listener inside the namespace, hand
	// it over, close its own copies.
	var l net.Listener
	if err := engine.InNetNS(netns, func() error {
		var err error
		l, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	err = handoff.Send(ctx, listenerSock, "srv", []handoff.Handed{{Name: "http", File: f}})
	f.Close()
	l.Close()
	if err != nil {
		t.Fatalf("hand over: %v", err)
	}

	spec := instances.Spec{Module: instances.Module{Digest: server}, Args: []string{"httpserver"},
		Env:             []instances.EnvVar{{Name: "POD_NAME", Value: "handed"}},
		Listeners:       []instances.Listener{{Name: "http", Port: port, Protocol: instances.ProtocolTCP}},
		HandedListeners: true}
	create := func(id string) instances.Instance {
		t.Helper()
		r, err := e.c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: id, Start: true, Spec: wire.SpecToProto(spec)})
		if err != nil {
			t.Fatalf("create %s: %v", id, wire.FromStatus(err))
		}
		return wire.InstanceFromProto(r.GetInstance())
	}
	if in := create("srv"); in.State != instances.StateRunning {
		t.Fatalf("create with the handed listener: %+v", in)
	}

	// A client inside the namespace.
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			var conn net.Conn
			err := engine.InNetNS(netns, func() error {
				var err error
				conn, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, a)
				return err
			})
			return conn, err
		},
	}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := c.Get("http://" + addr + "/")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "Hello from WebAssembly, pod handed!\n" {
				t.Fatalf("GET / inside %s: %d %q", name, resp.StatusCode, b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET / inside %s: %v", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Log("note: something on the host's loopback listens on", addr, "(not the instance: it serves in the namespace)")
	}

	if _, err := e.c.StopInstance(ctx, &executorv1.StopInstanceRequest{Id: "srv"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get("http://" + addr + "/"); err == nil {
		t.Error("the namespace's port still answers after Stop")
	}

	// Nothing handed over for this one.
	in := create("unhanded")
	if in.State != instances.StateFailed || in.Reason != instances.ReasonListenFailed || !strings.Contains(in.Message, "handed over") {
		t.Errorf("create with nothing handed over: %+v", in)
	}
	t.Logf("%s: %s", in.Reason, in.Message)
}
