package instance

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/testharness/natstest"
	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/internal/outbox"
)

// An outsider (no wasmlet code, only the documented subject and payload)
// sees every change of an instance, in order.
func TestEventsSeenByAnOutsider(t *testing.T) {
	srv, js := natstest.JetStream(t, "")
	nc, err := nats.Connect(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	msgs := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe("wasmlet.events.>", msgs)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	cache := &fileCache{}
	hello := cache.add(t, wasmbuild.Build(t, "hello"))
	m := newManager(t, cache, func(c *Config) { c.JetStream = js; c.ExecutorID = "exec-9" })
	ctx := context.Background()
	spec := helloSpec(hello, instances.EnvVar{Name: "EXIT_CODE", Value: "4"})
	if _, err := m.Create(ctx, "web-0", spec, true); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 3 {
		select {
		case msg := <-msgs:
			ev := &eventsv1.InstanceEvent{}
			if err := proto.Unmarshal(msg.Data, ev); err != nil {
				t.Fatalf("%s: %v", msg.Subject, err)
			}
			if msg.Subject != "wasmlet.events.exec-9.web-0" || ev.GetExecutorId() != "exec-9" || ev.GetInstanceId() != "web-0" ||
				ev.GetLabels()["app"] != "hello" || ev.GetTime() == nil || ev.GetReason() == "" {
				t.Fatalf("%s: %v", msg.Subject, ev)
			}
			got = append(got, fmt.Sprintf("%d:%s:%d", ev.GetSequence(), ev.GetState(), ev.GetExitCode()))
		case <-time.After(30 * time.Second):
			t.Fatalf("events seen: %v", got)
		}
	}
	if s := strings.Join(got, ","); s != "1:INSTANCE_STATE_CREATED:0,2:INSTANCE_STATE_RUNNING:0,3:INSTANCE_STATE_EXITED:4" {
		t.Fatalf("events %s", s)
	}
}

// A NATS that takes nothing holds up the events' fan-out, not the
// lifecycle: changes are recorded without waiting for the outbox.
func TestStalledNATSDoesNotStallInstances(t *testing.T) {
	srv, js := natstest.JetStream(t, "")
	cache := &fileCache{}
	hello := cache.add(t, wasmbuild.Build(t, "hello"))
	m := newManager(t, cache, func(c *Config) {
		c.JetStream = js
		c.EventOutbox = outbox.Config{Capacity: 1, MaxInFlight: 1, BlockTimeout: 5 * time.Second, AckTimeout: time.Minute}
	})
	ctx := context.Background()
	if _, err := m.Create(ctx, "warm", helloSpec(hello), false); err != nil { // compiled before the clock starts
		t.Fatal(err)
	}
	srv.Shutdown()
	t0 := time.Now()
	for i := range 4 {
		if _, err := m.Create(ctx, fmt.Sprint("i", i), helloSpec(hello), false); err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(t0); took > 2*time.Second {
		t.Fatalf("4 creates took %v with NATS away: the lifecycle waited for the outbox", took)
	}
	if _, seq, _ := m.List(ctx, nil); seq != 5 {
		t.Fatalf("sequence %d, want 5", seq)
	}
}
