package engine

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeGuest is a Guest whose Call ends when release is closed (or at
// once when release is nil), with err.
type fakeGuest struct {
	release chan struct{}
	err     error
	exit    *int32 // what Exit reports for err
	mem     int64

	mu          sync.Mutex
	interrupts  int
	closed      bool
	afterClosed []string // methods called after Close
}

var errTrap = errors.New("wasm error: unreachable\nwasm stack trace:\n\tf")

func (g *fakeGuest) Call() error {
	if g.release != nil {
		<-g.release
	}
	return g.err
}

func (g *fakeGuest) Exit(err error) (int32, bool) {
	if g.exit == nil {
		return 0, false
	}
	return *g.exit, true
}

func (g *fakeGuest) Failure(err error) string { return "wasm trap: " + FirstLine(err.Error()) }

func (g *fakeGuest) Memory() int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		g.afterClosed = append(g.afterClosed, "Memory")
	}
	return g.mem
}

func (g *fakeGuest) Interrupt() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		g.afterClosed = append(g.afterClosed, "Interrupt")
	}
	g.interrupts++
}

func (g *fakeGuest) Close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
}

// guestEnd is how a fakeGuest's call ends.
type guestEnd struct {
	err  error
	exit *int32
	mem  int64
}

func code(c int32) *int32 { return &c }

// TestClassify is the rule every engine reports a run's end by.
func TestClassify(t *testing.T) {
	const limit = 64 << 20
	for _, tc := range []struct {
		name   string
		g      guestEnd
		killed bool
		limit  int64
		want   Result
	}{
		{"returned", guestEnd{}, false, 0, Result{Exited: true, Reason: ReasonCompleted}},
		{"proc_exit 0", guestEnd{err: errTrap, exit: code(0)}, false, 0, Result{Exited: true, Reason: ReasonCompleted}},
		{"proc_exit 0 near the limit", guestEnd{err: errTrap, exit: code(0), mem: limit}, false, limit, Result{Exited: true, Reason: ReasonCompleted}},
		{"proc_exit 3", guestEnd{err: errTrap, exit: code(3)}, false, limit, Result{Exited: true, ExitCode: 3, Reason: ReasonError, Message: "the module exited with code 3"}},
		{"proc_exit 2 near the limit", guestEnd{err: errTrap, exit: code(2), mem: limit - 1<<20}, false, limit, Result{ExitCode: KilledExitCode, Reason: ReasonOOMKilled, Message: "exited with code 2"}},
		{"trap", guestEnd{err: errTrap, mem: limit - 16<<20}, false, limit, Result{ExitCode: KilledExitCode, Reason: ReasonTrap, Message: "wasm trap: wasm error: unreachable"}},
		{"trap near the limit", guestEnd{err: errTrap, mem: limit}, false, limit, Result{ExitCode: KilledExitCode, Reason: ReasonOOMKilled, Message: "trapped: wasm error: unreachable;"}},
		{"killed, then returned", guestEnd{}, true, 0, Result{ExitCode: KilledExitCode, Reason: ReasonKilled, Message: "killed"}},
		{"killed, then proc_exit 3", guestEnd{err: errTrap, exit: code(3)}, true, 0, Result{ExitCode: KilledExitCode, Reason: ReasonKilled, Message: "killed"}},
		{"killed near the limit", guestEnd{err: errTrap, mem: limit}, true, limit, Result{ExitCode: KilledExitCode, Reason: ReasonKilled, Message: "killed"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &fakeGuest{err: tc.g.err, exit: tc.g.exit, mem: tc.g.mem}
			got := classify(g, g.err, tc.killed, tc.limit)
			if got.Exited != tc.want.Exited || got.ExitCode != tc.want.ExitCode || got.Reason != tc.want.Reason || !strings.Contains(got.Message, tc.want.Message) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func launch(t *testing.T, g *fakeGuest) *Run {
	t.Helper()
	r, err := Launch(g, nil, Spec{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func wait(t *testing.T, r *Run) Result {
	t.Helper()
	select {
	case <-r.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the run did not end in 5s")
	}
	return r.Wait()
}

// TestRunKilledThenExited: a kill while _start runs interrupts the guest
// once, and the run is Killed although the guest then exits on its own.
func TestRunKilledThenExited(t *testing.T) {
	g := &fakeGuest{release: make(chan struct{}), err: errTrap, exit: code(0), mem: 1 << 20}
	r := launch(t, g)
	r.Kill()
	r.Kill()
	close(g.release)
	if res := wait(t, r); res.Reason != ReasonKilled || res.Message != "the instance was killed" {
		t.Fatalf("result %+v, want Killed", res)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.interrupts != 1 || !g.closed || len(g.afterClosed) > 0 {
		t.Fatalf("interrupts %d, closed %v, called after Close: %v", g.interrupts, g.closed, g.afterClosed)
	}
}

// TestRunKillAfterEnd: a kill once the run has ended changes nothing and
// reaches no guest; its memory stays as last read.
func TestRunKillAfterEnd(t *testing.T) {
	g := &fakeGuest{err: errTrap, exit: code(3), mem: 2 << 20}
	r := launch(t, g)
	wait(t, r)
	r.Kill()
	if res := r.Wait(); res.Reason != ReasonError || res.ExitCode != 3 {
		t.Fatalf("result %+v, want exit code 3", res)
	}
	if u := r.Usage(); u.MemoryBytes != 2<<20 {
		t.Fatalf("usage after the end %+v, want the last memory size", u)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.interrupts != 0 || len(g.afterClosed) > 0 {
		t.Fatalf("interrupts %d, called after Close: %v", g.interrupts, g.afterClosed)
	}
}

// TestRunKillBlocked: a guest that does not notice the interrupt is
// reported Killed after killWait; it is closed when its call returns.
func TestRunKillBlocked(t *testing.T) {
	g := &fakeGuest{release: make(chan struct{})}
	r := launch(t, g)
	t0 := time.Now()
	r.Kill()
	res := wait(t, r)
	if d := time.Since(t0); d < killWait {
		t.Fatalf("reported after %v, before killWait", d)
	}
	if res.Reason != ReasonKilled || !strings.Contains(res.Message, "blocked in a host call") {
		t.Fatalf("result %+v, want Killed while blocked", res)
	}
	close(g.release)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		g.mu.Lock()
		closed := g.closed
		g.mu.Unlock()
		if closed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the guest was not closed once its call returned")
		}
	}
	if res := r.Wait(); !strings.Contains(res.Message, "blocked in a host call") {
		t.Fatalf("result changed to %+v", res)
	}
}
