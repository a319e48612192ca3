package instance

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/wazero"
)

// TestServeListeners runs the example server through the manager on the
// wazero engine: a listener with no address is opened on loopback, the
// instance serves, Stop ends it and frees the port; a port taken fails the
// instance with ReasonPortInUse (what the node agent shows), and the
// wasmtime engine refuses listeners at Create with ErrUnsupported.
func TestServeListeners(t *testing.T) {
	eng, err := wazero.New(wazero.Config{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	cache := &fileCache{}
	digest := cache.add(t, wasmbuild.BuildDir(t, "examples/httpserver"))
	m := newManager(t, cache, func(c *Config) { c.Engine = eng })
	ctx := context.Background()
	if info, _ := m.Info(ctx); !info.Listeners {
		t.Fatal("the wazero executor does not say it hands over listeners")
	}

	// No ListenAddress nor namespace: 127.0.0.1 only.
	_, port := enginetest.LoopbackAddr(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	spec := instances.Spec{Module: instances.Module{Digest: digest}, Args: []string{"httpserver"},
		Listeners: []instances.Listener{{Name: "http", Port: int32(port), Protocol: instances.ProtocolTCP}}}
	in, err := m.Create(ctx, "srv", spec, true)
	if err != nil || in.State != instances.StateRunning {
		t.Fatalf("create: %+v %v", in, err)
	}
	waitServes(t, addr)

	// Taken, by the running instance: the second one fails, saying so.
	failed, err := m.Create(ctx, "srv2", spec, true)
	if err != nil {
		t.Fatal(err)
	}
	if failed.State != instances.StateFailed || failed.Reason != instances.ReasonPortInUse ||
		!strings.Contains(failed.Message, strconv.Itoa(port)) || !strings.Contains(failed.Message, "already in use") {
		t.Fatalf("second instance on the port: %s %s %q", failed.State, failed.Reason, failed.Message)
	}
	t.Logf("%s: %s", failed.Reason, failed.Message)

	if out, err := m.Stop(ctx, "srv", time.Second); err != nil || out.State != instances.StateKilled {
		t.Fatalf("stop: %+v %v", out, err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the port of a stopped instance is not free: %v", err)
	}
	l.Close()

	// A namespace the executor cannot enter fails the start, saying why.
	bad := spec
	bad.NetworkNamespace = "/nonexistent/netns"
	in, err = m.Create(ctx, "srv3", bad, true)
	if err != nil || in.State != instances.StateFailed || in.Reason != instances.ReasonListenFailed || !strings.Contains(in.Message, bad.NetworkNamespace) {
		t.Fatalf("start in a missing namespace: %+v %v", in, err)
	}

	wt := newManager(t, cache, nil) // wasmtime
	if _, err := wt.Create(ctx, "srv", spec, true); !errors.Is(err, instances.ErrUnsupported) || !strings.Contains(err.Error(), "wazero") {
		t.Fatalf("wasmtime with listeners: %v, want ErrUnsupported pointing at wazero", err)
	}
	if info, _ := wt.Info(ctx); info.Listeners {
		t.Error("the wasmtime executor says it hands over listeners")
	}
}

// waitServes waits up to 30 s for the example server at addr to answer.
func waitServes(t *testing.T, addr string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer at %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// handedFake is a HandedListeners of fixed sockets.
type handedFake struct {
	byID map[string]map[string]*os.File
}

func (h *handedFake) Take(id string) (map[string]*os.File, bool) {
	fs, ok := h.byID[id]
	delete(h.byID, id)
	return fs, ok
}

// TestServeHandedListeners: the example server through the manager on
// wazero, on a listener handed over (as the node agent hands it from a
// pod's namespace): it serves on that very socket, whatever NetworkNamespace
// says; Stop frees it. An instance whose listeners were not all handed over
// fails ListenFailed, closing those that were; an executor without a
// listener socket refuses handed listeners.
func TestServeHandedListeners(t *testing.T) {
	eng, err := wazero.New(wazero.Config{CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	cache := &fileCache{}
	digest := cache.add(t, wasmbuild.BuildDir(t, "examples/httpserver"))
	handed := &handedFake{byID: map[string]map[string]*os.File{}}
	m := newManager(t, cache, func(c *Config) { c.Engine = eng; c.Handed = handed })
	ctx := context.Background()
	if info, _ := m.Info(ctx); !info.ListenerHandoff {
		t.Fatal("Info.ListenerHandoff is false with a store of handed listeners")
	}
	open := func() (string, *os.File) {
		host, port := enginetest.LoopbackAddr(t)
		l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		f, err := l.(*net.TCPListener).File()
		if err != nil {
			t.Fatal(err)
		}
		return l.Addr().String(), f
	}
	addr, f := open()
	handed.byID["srv"] = map[string]*os.File{"http": f}
	spec := instances.Spec{Module: instances.Module{Digest: digest}, Args: []string{"httpserver"},
		Listeners:       []instances.Listener{{Name: "http", Port: 8080}},
		HandedListeners: true, NetworkNamespace: "/nonexistent/netns"}
	in, err := m.Create(ctx, "srv", spec, true)
	if err != nil || in.State != instances.StateRunning {
		t.Fatalf("create: %+v %v", in, err)
	}
	waitServes(t, addr)
	if out, err := m.Stop(ctx, "srv", time.Second); err != nil || out.State != instances.StateKilled {
		t.Fatalf("stop: %+v %v", out, err)
	}
	if l, err := net.Listen("tcp", addr); err != nil {
		t.Fatalf("the handed port of a stopped instance is not free: %v", err)
	} else {
		l.Close()
	}

	// Nothing handed over; one of two handed over (which is closed).
	in, err = m.Create(ctx, "none", spec, true)
	if err != nil || in.State != instances.StateFailed || in.Reason != instances.ReasonListenFailed || !strings.Contains(in.Message, "no listeners were handed over") {
		t.Fatalf("nothing handed over: %+v %v", in, err)
	}
	t.Logf("%s: %s", in.Reason, in.Message)
	addr, f = open()
	handed.byID["half"] = map[string]*os.File{"http": f}
	two := spec
	two.Listeners = append(slices.Clone(spec.Listeners), instances.Listener{Name: "admin", Port: 9090})
	in, err = m.Create(ctx, "half", two, true)
	if err != nil || in.State != instances.StateFailed || in.Reason != instances.ReasonListenFailed || !strings.Contains(in.Message, `"admin"`) {
		t.Fatalf("half handed over: %+v %v", in, err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("the listener handed over for a failed instance was kept open")
	}

	without := newManager(t, cache, func(c *Config) { c.Engine = eng })
	if _, err := without.Create(ctx, "srv", spec, true); !errors.Is(err, instances.ErrUnsupported) || !strings.Contains(err.Error(), "--listener-socket") {
		t.Fatalf("handed listeners without a listener socket: %v, want ErrUnsupported", err)
	}
}
