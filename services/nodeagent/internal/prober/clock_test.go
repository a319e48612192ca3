package prober

import (
	"sync"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// fakeClock moves only when told to; its timers fire when it passes them.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
	armed  chan struct{} // receives when a timer is made
}

type fakeTimer struct {
	at time.Time
	c  chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), armed: make(chan struct{}, 100)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{at: c.now.Add(d), c: make(chan time.Time, 1)}
	c.timers = append(c.timers, t)
	c.armed <- struct{}{}
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }
func (t *fakeTimer) Stop() bool          { return true }

// advance moves the clock on by d and reports whether a timer fired.
func (c *fakeClock) advance(d time.Duration) (fired bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if t.at.After(c.now) {
			kept = append(kept, t)
			continue
		}
		t.c <- c.now
		fired = true
	}
	c.timers = kept
	return fired
}

// waitArmed waits until the worker waits on the clock, that is, until it has
// finished the probes that were due.
func (c *fakeClock) waitArmed(t *testing.T) {
	t.Helper()
	select {
	case <-c.armed:
	case <-time.After(10 * time.Second):
		t.Fatal("the worker never waited for its next probe")
	}
}

// With the API's units: the first probe runs initialDelaySeconds after the
// instance started, and each next one periodSeconds after the one before.
func TestSchedule(t *testing.T) {
	noLeaks(t)
	s := &script{codes: []int{200}}
	host, port := serve(t, s)
	clock := newFakeClock()
	p := httpProbe("/", port, 10, 3, 1)
	p.TimeoutSeconds = 5
	p.InitialDelaySeconds = 15
	w, err := New(Config{Container: &v1.Container{Name: "app", ReadinessProbe: p}, PodIP: host, Clock: clock, StartedAt: clock.Now()})
	if err != nil {
		t.Fatal(err)
	}
	w.Start()
	t.Cleanup(w.Stop)

	steps := []struct {
		advance time.Duration
		hits    int
	}{
		{0, 0},
		{14 * time.Second, 0},
		{1 * time.Second, 1}, // 15s: the initial delay is over
		{9 * time.Second, 1},
		{1 * time.Second, 2}, // 25s
		{10 * time.Second, 3},
		{25 * time.Second, 4}, // late: runs once at once, not for each missed period
		{9 * time.Second, 4},
		{1 * time.Second, 5},
	}
	for i, st := range steps {
		if clock.advance(st.advance) || i == 0 {
			clock.waitArmed(t)
		}
		if n := s.hits(); n != st.hits {
			t.Fatalf("step %d (+%v): %d probes, want %d", i, st.advance, n, st.hits)
		}
	}
	if !w.Status().Ready {
		t.Error("not ready after successful probes")
	}
}
