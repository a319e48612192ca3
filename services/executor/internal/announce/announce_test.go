package announce

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/internal/testharness/natstest"
)

// TestAnnounceLifecycle runs an announcer against a real NATS server: it
// announces at start (with its listener socket), again when a node agent
// asks, and leaves on stop.
func TestAnnounceLifecycle(t *testing.T) {
	_, nc := natstest.Conn(t)
	got := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe(subjects.ExecutorsOf("node.1"), got)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	var running atomic.Int32
	running.Store(3)
	a, err := New(Config{
		Conn: nc, ExecutorID: "exec-1", Flavour: "wazero", Node: "node.1", Address: "unix:///e.sock",
		ListenerSocket: "/run/wasmlet/sockets/exec-1.listeners.sock", Engine: "wazero", EngineVersion: "v1", MaxInstances: 10, Running: func() int { return int(running.Load()) },
		Period: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()

	next := func(what string) (*eventsv1.ExecutorAnnouncement, string) {
		t.Helper()
		select {
		case m := <-got:
			var ann eventsv1.ExecutorAnnouncement
			if err := proto.Unmarshal(m.Data, &ann); err != nil {
				t.Fatal(err)
			}
			return &ann, m.Subject
		case <-time.After(5 * time.Second):
			t.Fatalf("no announcement %s", what)
			return nil, ""
		}
	}
	first, subject := next("at start")
	if subject != "wasmlet.executors.node_1.wazero.exec-1" {
		t.Errorf("subject %q", subject)
	}
	if first.GetSequence() != 1 || first.GetRunningInstances() != 3 || first.GetMaxInstances() != 10 ||
		!first.GetHealthy() || first.GetLeaving() || first.GetAddress() != "unix:///e.sock" ||
		first.GetListenerSocket() != "/run/wasmlet/sockets/exec-1.listeners.sock" || first.GetPeriod().AsDuration() != time.Hour {
		t.Errorf("first announcement: %v", first)
	}

	// The period is an hour: only a discovery request brings the next one.
	// The announcer subscribed before it announced, on the same connection
	// as this request: the server has its subscription.
	b, _ := proto.Marshal(&eventsv1.ExecutorDiscovery{Node: "node.1"})
	if err := nc.Publish(subjects.Discover("node.1"), b); err != nil {
		t.Fatal(err)
	}
	second, _ := next("on a discovery request")
	if second.GetSequence() != 2 || second.GetLeaving() {
		t.Errorf("second announcement: %v", second)
	}

	cancel()
	last, _ := next("on leaving")
	if !last.GetLeaving() || last.GetHealthy() || !last.GetDraining() || last.GetSequence() != 3 {
		t.Errorf("leaving announcement: %v", last)
	}
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}
