package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/time/rate"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// fakeSink records writes; fail decides the error of each.
type fakeSink struct {
	mu      sync.Mutex
	writes  []string
	fail    func(verb, name string) error
	release chan struct{} // when set, each write waits for it
}

func (f *fakeSink) do(verb string, e *v1.Event) (*v1.Event, error) {
	if f.release != nil {
		<-f.release
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes = append(f.writes, verb+" "+e.Name)
	if f.fail != nil {
		if err := f.fail(verb, e.Name); err != nil {
			return nil, err
		}
	}
	return e, nil
}

func (f *fakeSink) Create(e *v1.Event) (*v1.Event, error)          { return f.do("create", e) }
func (f *fakeSink) Update(e *v1.Event) (*v1.Event, error)          { return f.do("update", e) }
func (f *fakeSink) Patch(e *v1.Event, _ []byte) (*v1.Event, error) { return f.do("patch", e) }

func (f *fakeSink) got() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.writes)
}

func ev(name string) *v1.Event {
	return &v1.Event{ObjectMeta: metav1.ObjectMeta{Name: name}, Reason: "Started"}
}

func waitWrites(t *testing.T, f *fakeSink, n int) []string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for len(f.got()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("after 5s the sink has %v, want %d writes", f.got(), n)
		}
		time.Sleep(time.Millisecond)
	}
	return f.got()
}

func TestQueuedSinkWritesInOrderAndRetries(t *testing.T) {
	gone := apierrors.NewNotFound(schema.GroupResource{Resource: "events"}, "b")
	refused := apierrors.NewForbidden(schema.GroupResource{Resource: "events"}, "c", errors.New("no"))
	tries := map[string]int{}
	f := &fakeSink{fail: func(verb, name string) error {
		tries[verb+" "+name]++
		switch {
		case verb == "patch" && name == "b":
			return gone // the aggregated event expired: created afresh
		case name == "c":
			return refused // not retried
		case name == "d" && tries["create d"] < 3:
			return fmt.Errorf("connection refused") // retried
		}
		return nil
	}}
	q := newQueuedSink(f, 100, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	q.retry = time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.Run(ctx)
	q.Create(ev("a"))
	q.Patch(ev("b"), []byte("{}"))
	q.Create(ev("c"))
	q.Create(ev("d"))
	q.Update(ev("e"))
	want := []string{"create a", "patch b", "create b", "create c", "create d", "create d", "create d", "update e"}
	if got := waitWrites(t, f, len(want)); !slices.Equal(got, want) {
		t.Fatalf("writes %v, want %v", got, want)
	}
}

// A full queue drops and counts, and the broadcaster is never held up;
// what was queued is written.
func TestQueuedSinkDropsPastLimit(t *testing.T) {
	f := &fakeSink{release: make(chan struct{})}
	q := newQueuedSink(f, 3, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go q.Run(ctx)
	q.Create(ev("first")) // taken by the writer, which waits on release
	waitQueued := time.Now().Add(5 * time.Second)
	for {
		q.mu.Lock()
		n := len(q.queue)
		q.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(waitQueued) {
			t.Fatal("the writer did not take the first event")
		}
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	for i := range 5 {
		q.Create(ev(fmt.Sprint(i)))
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("queueing 5 events took %v: the sink must not block its caller", d)
	}
	if got := testutil.ToFloat64(q.dropped); got != 2 {
		t.Fatalf("dropped %v, want 2 (limit 3)", got)
	}
	close(f.release)
	want := []string{"create first", "create 0", "create 1", "create 2"}
	if got := waitWrites(t, f, len(want)); !slices.Equal(got, want) {
		t.Fatalf("writes %v, want %v", got, want)
	}
}

// At shutdown what is queued is still written, at once, paced or not.
func TestQueuedSinkDrainsAtShutdown(t *testing.T) {
	for _, paced := range []bool{false, true} {
		t.Run(fmt.Sprint("paced=", paced), func(t *testing.T) { testDrainAtShutdown(t, paced) })
	}
}

func testDrainAtShutdown(t *testing.T, paced bool) {
	f := &fakeSink{}
	q := newQueuedSink(f, 100, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if paced {
		q.pace = rate.NewLimiter(0.1, 1) // one now, the next in 10 s
	}
	for i := range 3 {
		q.Create(ev(fmt.Sprint(i)))
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan struct{})
	go func() { defer close(done); q.Run(ctx) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5 s of its context's end")
	}
	if got, want := f.got(), []string{"create 0", "create 1", "create 2"}; !slices.Equal(got, want) {
		t.Fatalf("writes %v, want %v", got, want)
	}
	q.Create(ev("late"))
	if got := testutil.ToFloat64(q.dropped); got != 1 {
		t.Fatalf("an event after shutdown: dropped %v, want 1", got)
	}
}

// Paced like the kubelet's --event-qps: past the burst, writes wait.
func TestQueuedSinkPaced(t *testing.T) {
	f := &fakeSink{}
	q := newQueuedSink(f, 100, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	q.pace = rate.NewLimiter(100, 2) // 2 at once, then one per 10 ms
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	go q.Run(ctx)
	for i := range 7 {
		q.Create(ev(fmt.Sprint(i)))
	}
	waitWrites(t, f, 7)
	if d := time.Since(start); d < 45*time.Millisecond {
		t.Fatalf("7 writes at 100/s after a burst of 2 took %v, want at least 50 ms", d)
	}
}
