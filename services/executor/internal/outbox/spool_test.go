package outbox

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/wasmlet/wasmlet/internal/testharness/natstest"
	"github.com/wasmlet/wasmlet/services/executor/internal/spool"
)

// realJS is a JetStream with the logs stream on a real in-process server.
func realJS(t *testing.T) jetstream.JetStream {
	t.Helper()
	_, js := natstest.JetStream(t, "")
	return js
}

func batch(from, to int) []spool.Entry {
	var b []spool.Entry
	for i := from; i <= to; i++ {
		b = append(b, spool.Entry{Subject: "wasmlet.logs.n.ns.p.c", MsgID: fmt.Sprint("inst:", i), Data: []byte(fmt.Sprint(i))})
	}
	return b
}

func streamData(t *testing.T, js jetstream.JetStream) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := js.OrderedConsumer(ctx, "WASMLET_LOGS", jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		b, err := c.FetchNoWait(1000)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range b.Messages() {
			got = append(got, string(m.Data()))
			n++
		}
		if n == 0 {
			return got
		}
	}
}

// TestSpooledSurviveAndReplayOnce: a process that dies with spooled
// messages in flight leaves them in the spool; the next process publishes
// them again, and the stream holds each message once (Nats-Msg-Id).
func TestSpooledSurviveAndReplayOnce(t *testing.T) {
	js := realJS(t)
	dir := t.TempDir()
	sp, err := spool.Open(spool.Config{Dir: dir, SegmentBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	// First life: 1..50 acknowledged; 51..60 queued behind a NATS that
	// does not answer when the process "dies" (Close gives up at once).
	o := New(js, Config{Spool: sp})
	o.PublishBatch(batch(1, 50))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if err := o.Close(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	stuck := &gatedJS{gate: make(chan struct{})}
	defer close(stuck.gate)
	o2 := New(stuck, Config{Spool: sp})
	o2.PublishBatch(batch(51, 60))
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Millisecond)
	o2.Close(ctx)
	cancel()
	if st := o2.Stats(); st.Left == 0 {
		t.Fatalf("stats %+v: nothing left in the spool", st)
	}

	// Second life: 1..60 are all in the (one) segment; all are replayed.
	sp2, err := spool.Open(spool.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	r := sp2.Replay()
	if len(r) != 60 {
		t.Fatalf("replayed %d messages, want 60", len(r))
	}
	o3 := New(js, Config{Spool: sp2})
	o3.PublishReplayed(r)
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := o3.Close(ctx); err != nil {
		t.Fatal(err)
	}
	got := streamData(t, js)
	want := fmt.Sprint(func() []string {
		var w []string
		for i := 1; i <= 60; i++ {
			w = append(w, fmt.Sprint(i))
		}
		return w
	}())
	if fmt.Sprint(got) != want {
		t.Fatalf("stream holds %v, want 1..60 once each", got)
	}
	if st := sp2.Stats(); st.Bytes != 0 {
		// The active (empty) segment is all that is left.
		t.Errorf("spool stats after every ack: %+v, want 0 bytes", st)
	}
}
