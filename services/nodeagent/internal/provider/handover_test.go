package provider

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/handoff"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/executors"
	"github.com/wasmlet/wasmlet/services/nodeagent/internal/podworker"
)

// TestServeToSeparateExecutor: a pod bound to a separately run executor
// (--executor FLAVOUR=ADDRESS,listener-socket=PATH) has its port opened by
// the node agent and handed over on that socket, as the executor's side
// (handoff.Receive) takes it: the listener it gets answers at the pod's
// address. Without a listener socket the executor is told to open the
// ports itself, and the error says how to give it one; a socket the node
// agent cannot see says to share its directory.
func TestServeToSeparateExecutor(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "listeners.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	got := make(chan handoff.Request, 1)
	go func() {
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		r, err := handoff.Receive(c)
		handoff.Answer(c, err)
		if err == nil {
			got <- r
		}
	}()

	bind := func(sockets map[string]string) *executors.Binding {
		pool, err := executors.New(executors.Config{
			Executors:       map[string]string{"wazero": "unix://" + filepath.Join(dir, "executor.sock")},
			ListenerSockets: sockets, Default: "wazero",
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		return pool.Bind(context.Background(), "wazero", nil, 1)
	}
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := int32(free.Addr().(*net.TCPAddr).Port)
	free.Close()
	att := podworker.Attachment{IPs: []string{"127.0.0.1"}}
	ls := []instances.Listener{{Name: "http", Port: port}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	n := &podNetwork{binding: bind(map[string]string{"wazero": socket})}
	if err := n.Serve(ctx, att, "pod-c-0", ls); err != nil {
		t.Fatalf("Serve to an executor with a listener socket: %v", err)
	}
	var r handoff.Request
	select {
	case r = <-got:
	case <-ctx.Done():
		t.Fatal("nothing handed over")
	}
	defer r.Close()
	if r.ID != "pod-c-0" || len(r.Listeners) != 1 || r.Listeners[0].Name != "http" {
		t.Fatalf("handed over %+v", r)
	}
	hl, err := net.FileListener(r.Listeners[0].File)
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	if a := hl.Addr().String(); a != fmt.Sprintf("127.0.0.1:%d", port) {
		t.Errorf("the handed-over listener is at %s", a)
	}
	go func() {
		if c, err := hl.Accept(); err == nil {
			c.Write([]byte("ok"))
			c.Close()
		}
	}()
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		t.Fatalf("the pod's port does not answer: %v", err)
	}
	buf := make([]byte, 2)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(buf); err != nil || string(buf) != "ok" {
		t.Errorf("through the handed-over listener: %q %v", buf, err)
	}
	c.Close()
	hl.Close()
	r.Close() // the port is free again

	n = &podNetwork{binding: bind(nil)}
	err = n.Serve(ctx, att, "pod-c-1", ls)
	if !errors.Is(err, podworker.ErrExecutorListens) || !strings.Contains(err.Error(), "--executor FLAVOUR=ADDRESS,listener-socket=PATH") {
		t.Errorf("Serve to an executor without a listener socket: %v; want ErrExecutorListens saying how to give it one", err)
	}

	missing := filepath.Join(dir, "elsewhere", "listeners.sock")
	n = &podNetwork{binding: bind(map[string]string{"wazero": missing})}
	err = n.Serve(ctx, att, "pod-c-2", ls)
	if err == nil || errors.Is(err, podworker.ErrExecutorListens) || !strings.Contains(err.Error(), "the node agent sees no socket at "+missing) {
		t.Errorf("Serve to a listener socket the node agent cannot see: %v", err)
	}
}
