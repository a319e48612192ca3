package executors

import (
	"context"
	"testing"

	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/internal/testharness/natstest"
)

// TestListenerSockets: a static replica has the listener socket given for
// its flavour, whatever it announces, or, given none, the one it
// announces; an announced one has the one it announces (a relative path is
// not used), and a pod's Binding reports its replica's; a socket for a
// flavour with no static executor, or a relative one, is refused.
func TestListenerSockets(t *testing.T) {
	_, nc := natstest.Conn(t)
	static, staticAnnouncing := startFake(t, "static"), startFake(t, "static-ann")
	withSocket, relative := startFake(t, "exec-sock"), startFake(t, "exec-rel")
	pool, err := New(Config{
		Executors:       map[string]string{"wazero": static.addr, "wazero-2": staticAnnouncing.addr},
		ListenerSockets: map[string]string{"wazero": "/run/wasmlet/wazero/listeners.sock"},
		NATS:            nc, Node: "node-1", Default: "wazero",
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for _, a := range []struct {
		f    *fakeExecutor
		path string
	}{
		{static, "/elsewhere.sock"},
		{staticAnnouncing, "/run/wasmlet/wazero-2/listeners.sock"},
		{withSocket, "/run/wasmlet/sockets/exec-sock.listeners.sock"},
		{relative, "sockets/l.sock"},
	} {
		b, err := proto.Marshal(&eventsv1.ExecutorAnnouncement{
			ExecutorId: a.f.id, Flavour: "wasmtime", Node: "node-1", Address: a.f.addr, Healthy: true, Sequence: 1,
			ListenerSocket: a.path,
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := nc.Publish(subjects.Executor("node-1", "wasmtime", a.f.id), b); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "both announced replicas", func() bool { return len(pool.replicas("wasmtime")) == 2 })
	want := map[string]string{
		"wazero":    "/run/wasmlet/wazero/listeners.sock",
		"wazero-2":  "/run/wasmlet/wazero-2/listeners.sock",
		"exec-sock": "/run/wasmlet/sockets/exec-sock.listeners.sock",
		"exec-rel":  "",
	}
	for _, e := range pool.All() {
		if got := e.ListenerSocket(); got != want[e.ID] {
			t.Errorf("replica %s: ListenerSocket %q, want %q", e.ID, got, want[e.ID])
		}
	}
	if b := pool.Bind(context.Background(), "wazero", nil, 1); b.ListenerSocket() != want["wazero"] {
		t.Errorf("a pod bound to %s: ListenerSocket %q", b.Replica(), b.ListenerSocket())
	}

	for _, cfg := range []Config{
		{Executors: map[string]string{"wazero": static.addr}, Default: "wazero", ListenerSockets: map[string]string{"wasmtime": "/l.sock"}},
		{Executors: map[string]string{"wazero": static.addr}, Default: "wazero", ListenerSockets: map[string]string{"wazero": "l.sock"}},
	} {
		if p, err := New(cfg); err == nil {
			p.Close()
			t.Errorf("New with listener sockets %v: no error", cfg.ListenerSockets)
		}
	}
}
