package outbox

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// gatedJS publishes only while its gate is open, acknowledging at once;
// every other JetStream method is left unimplemented (nil embedded).
type gatedJS struct {
	jetstream.JetStream
	gate chan struct{}
	mu   sync.Mutex
	got  []string
}

func (g *gatedJS) PublishMsgAsync(m *nats.Msg, _ ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	<-g.gate
	g.mu.Lock()
	g.got = append(g.got, string(m.Data))
	g.mu.Unlock()
	return ackedFuture{}, nil
}

func (g *gatedJS) published() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.got...)
}

type ackedFuture struct{ jetstream.PubAckFuture }

func (ackedFuture) Ok() <-chan *jetstream.PubAck {
	c := make(chan *jetstream.PubAck, 1)
	c <- &jetstream.PubAck{}
	return c
}

func (ackedFuture) Err() <-chan error { return make(chan error) }

func TestDropOldestAfterBlockTimeout(t *testing.T) {
	js := &gatedJS{gate: make(chan struct{})}
	o := New(js, Config{Capacity: 4, BlockTimeout: 50 * time.Millisecond})
	// The first message is taken by the publishing goroutine, which then
	// blocks at the closed gate; four more fill the queue.
	o.Publish("s", []byte("0"))
	time.Sleep(20 * time.Millisecond)
	for i := 1; i <= 4; i++ {
		t0 := time.Now()
		o.Publish("s", []byte(fmt.Sprint(i)))
		if d := time.Since(t0); d > 20*time.Millisecond {
			t.Fatalf("publish %d into a queue with room took %v", i, d)
		}
	}
	// Full: the next waits BlockTimeout, then displaces the oldest.
	t0 := time.Now()
	o.Publish("s", []byte("5"))
	if d := time.Since(t0); d < 45*time.Millisecond || d > time.Second {
		t.Fatalf("publish into a full queue returned after %v, want about 50ms", d)
	}
	// In overflow: no more waiting.
	t0 = time.Now()
	o.Publish("s", []byte("6"))
	if d := time.Since(t0); d > 20*time.Millisecond {
		t.Fatalf("publish in overflow took %v", d)
	}
	if st := o.Stats(); st.Dropped != 2 {
		t.Fatalf("stats %+v, want 2 dropped", st)
	}
	close(js.gate)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := o.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(js.published()); got != "[0 3 4 5 6]" {
		t.Fatalf("published %s, want the oldest queued (1, 2) dropped", got)
	}
	if st := o.Stats(); st.Published != 5 || st.Dropped != 2 || st.Failed != 0 {
		t.Fatalf("stats %+v", st)
	}
	o.Publish("s", []byte("late"))
	if st := o.Stats(); st.Dropped != 3 {
		t.Fatalf("publish after close: %+v", st)
	}
}

func TestCloseGivesUpAtDeadline(t *testing.T) {
	js := &gatedJS{gate: make(chan struct{})}
	defer close(js.gate)
	o := New(js, Config{Capacity: 10})
	for i := range 5 {
		o.Publish("s", []byte(fmt.Sprint(i)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := o.Close(ctx); err == nil {
		t.Fatal("close with NATS stuck returned no error")
	}
	if st := o.Stats(); st.Dropped != 4 {
		t.Fatalf("stats %+v, want the 4 still queued dropped", st)
	}
}

// slowJS acknowledges every publish after a pause.
type slowJS struct {
	gatedJS
	pause time.Duration
}

func (s *slowJS) PublishMsgAsync(m *nats.Msg, o ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	time.Sleep(s.pause)
	return s.gatedJS.PublishMsgAsync(m, o...)
}

// TestBackpressureWhileMoving: a producer faster than NATS is slowed down,
// not cut: nothing is dropped while messages keep leaving the queue, even
// though the whole run takes many BlockTimeouts.
func TestBackpressureWhileMoving(t *testing.T) {
	gate := make(chan struct{})
	close(gate)
	js := &slowJS{gatedJS: gatedJS{gate: gate}, pause: 10 * time.Millisecond}
	o := New(js, Config{Capacity: 4, BlockTimeout: 150 * time.Millisecond})
	t0 := time.Now()
	for i := range 60 {
		o.Publish("s", []byte(fmt.Sprint(i)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := o.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if st := o.Stats(); st.Dropped != 0 || st.Published != 60 {
		t.Fatalf("stats %+v after %v, want 60 published, none dropped", st, time.Since(t0))
	}
}

// TestMaxBytesBoundsHeld: with NATS stuck, messages beyond MaxBytes held
// wait, then displace the oldest, however few messages that is: an
// instance printing 64 KiB batches held Capacity of them (256 MiB).
func TestMaxBytesBoundsHeld(t *testing.T) {
	js := &gatedJS{gate: make(chan struct{})}
	o := New(js, Config{Capacity: 1000, MaxBytes: 10 << 10, BlockTimeout: 50 * time.Millisecond})
	msg := make([]byte, 1<<10)
	t0 := time.Now()
	for range 100 {
		o.Publish("s", msg)
	}
	d := time.Since(t0)
	o.mu.Lock()
	held, queued := o.held, len(o.queue)
	o.mu.Unlock()
	if held > 10<<10 || queued > 10 {
		t.Fatalf("%d messages queued, %d bytes held, want at most 10 KiB", queued, held)
	}
	if d < 45*time.Millisecond || d > 2*time.Second {
		t.Fatalf("publishing past MaxBytes returned after %v, want one BlockTimeout (50ms)", d)
	}
	if st := o.Stats(); st.Dropped < 89 {
		t.Fatalf("stats %+v, want the oldest beyond 10 KiB dropped", st)
	}
	close(js.gate)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := o.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if st := o.Stats(); st.Published+st.Dropped != 100 {
		t.Fatalf("stats %+v, want 100 messages accounted for", st)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.held != 0 {
		t.Fatalf("%d bytes held after everything was acknowledged", o.held)
	}
}
