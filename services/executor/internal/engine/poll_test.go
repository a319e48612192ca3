package engine

import (
	"encoding/binary"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// subs lays out WASI subscriptions in a fresh memory: clocks (relative,
// ns) and fd subscriptions (tag 1 read, 2 write), userdata their index.
type sub struct {
	tag     uint8
	fd      uint32
	timeout time.Duration
	abs     bool
	clock   uint32
}

const (
	pollIn, pollOut, pollN = 0, 1024, 2048
)

func layout(ss ...sub) []byte {
	mem := make([]byte, 4096)
	for i, s := range ss {
		b := mem[pollIn+48*i:]
		binary.LittleEndian.PutUint64(b[0:], uint64(i))
		b[8] = s.tag
		if s.tag == 0 {
			binary.LittleEndian.PutUint32(b[16:], s.clock)
			binary.LittleEndian.PutUint64(b[24:], uint64(s.timeout))
			if s.abs {
				binary.LittleEndian.PutUint16(b[40:], 1)
			}
		} else {
			binary.LittleEndian.PutUint32(b[16:], s.fd)
		}
	}
	return mem
}

type event struct {
	userdata uint64
	errno    uint16
	tag      uint8
	flags    uint16
}

func events(mem []byte) []event {
	n := binary.LittleEndian.Uint32(mem[pollN:])
	var out []event
	for i := range n {
		e := mem[pollOut+32*i:]
		out = append(out, event{binary.LittleEndian.Uint64(e), binary.LittleEndian.Uint16(e[8:]), e[10], binary.LittleEndian.Uint16(e[24:])})
	}
	return out
}

func newPoller(t *testing.T, zero time.Time) *Poller {
	t.Helper()
	p, err := NewPoller(zero)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func poll(t *testing.T, p *Poller, mem []byte, n int, host HostFD) ([]event, time.Duration) {
	t.Helper()
	t0 := time.Now()
	errno, killed := p.PollOneoff(mem, pollIn, pollOut, uint32(n), pollN, host)
	if errno != 0 || killed {
		t.Fatalf("poll: errno %d killed %v", errno, killed)
	}
	return events(mem), time.Since(t0)
}

func TestPollClocks(t *testing.T) {
	zero := time.Now().Add(-time.Hour)
	p := newPoller(t, zero)
	// The earliest of a relative and an absolute monotonic clock.
	mem := layout(sub{timeout: time.Second}, sub{timeout: time.Hour + 30*time.Millisecond, abs: true, clock: 1})
	evs, d := poll(t, p, mem, 2, nil)
	if len(evs) != 1 || evs[0].userdata != 1 || evs[0].tag != 0 || d < 20*time.Millisecond || d > 500*time.Millisecond {
		t.Errorf("clocks: %+v after %v", evs, d)
	}
	// An absolute realtime clock in the past: at once.
	mem = layout(sub{timeout: time.Duration(time.Now().Add(-time.Second).UnixNano()), abs: true, clock: 0})
	if evs, d := poll(t, p, mem, 1, nil); len(evs) != 1 || d > 50*time.Millisecond {
		t.Errorf("realtime in the past: %+v after %v", evs, d)
	}
	// A file (no host fd) is ready at once, beside a long clock.
	mem = layout(sub{tag: 1, fd: 0}, sub{timeout: time.Hour})
	if evs, d := poll(t, p, mem, 2, nil); len(evs) != 1 || evs[0].userdata != 0 || evs[0].tag != 1 || d > 50*time.Millisecond {
		t.Errorf("file: %+v after %v", evs, d)
	}
}

func TestPollSockets(t *testing.T) {
	p := newPoller(t, time.Now())
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	host := func(fd uint32) (int, bool) {
		if fd == 7 {
			return fds[0], true
		}
		return 0, false
	}
	// Nothing to read: the clock ends the wait; writable at once.
	mem := layout(sub{tag: 1, fd: 7}, sub{timeout: 30 * time.Millisecond})
	if evs, d := poll(t, p, mem, 2, host); len(evs) != 1 || evs[0].userdata != 1 || d < 20*time.Millisecond {
		t.Errorf("idle socket: %+v after %v", evs, d)
	}
	mem = layout(sub{tag: 2, fd: 7})
	if evs, _ := poll(t, p, mem, 1, host); len(evs) != 1 || evs[0].tag != 2 {
		t.Errorf("writable socket: %+v", evs)
	}
	// Readable when the peer writes, with no clock to end the wait.
	go func() {
		time.Sleep(30 * time.Millisecond)
		unix.Write(fds[1], []byte("x"))
	}()
	mem = layout(sub{tag: 1, fd: 7})
	if evs, d := poll(t, p, mem, 1, host); len(evs) != 1 || evs[0].tag != 1 || evs[0].flags != 0 || d < 20*time.Millisecond {
		t.Errorf("socket written to: %+v after %v", evs, d)
	}
	// Hang-up when the peer closes.
	unix.Close(fds[1])
	mem = layout(sub{tag: 1, fd: 7})
	if evs, _ := poll(t, p, mem, 1, host); len(evs) != 1 || evs[0].flags != 1 {
		t.Errorf("peer closed: %+v, want the hangup flag", evs)
	}
}

func TestPollWake(t *testing.T) {
	p := newPoller(t, time.Now())
	go func() {
		time.Sleep(30 * time.Millisecond)
		p.Wake()
	}()
	mem := layout(sub{timeout: time.Hour})
	t0 := time.Now()
	if _, killed := p.PollOneoff(mem, pollIn, pollOut, 1, pollN, nil); !killed || time.Since(t0) > time.Second {
		t.Errorf("a wake did not end an hour's wait: killed %v after %v", killed, time.Since(t0))
	}
	if !p.Sleep(time.Hour) || !p.Woken() {
		t.Error("a sleep after a wake did not end at once")
	}
}

func TestPollBadInput(t *testing.T) {
	p := newPoller(t, time.Now())
	mem := layout(sub{timeout: 0})
	if errno, _ := p.PollOneoff(mem, pollIn, pollOut, 0, pollN, nil); errno != ErrnoInval {
		t.Errorf("no subscriptions: errno %d", errno)
	}
	if errno, _ := p.PollOneoff(mem, uint32(len(mem)-10), pollOut, 1, pollN, nil); errno != ErrnoFault {
		t.Errorf("subscriptions out of memory: errno %d", errno)
	}
	mem[pollIn+8] = 9
	if errno, _ := p.PollOneoff(mem, pollIn, pollOut, 1, pollN, nil); errno != ErrnoInval {
		t.Errorf("unknown tag: errno %d", errno)
	}
}

// A guest that leaves its thread to sleep holds no descriptor while it
// sleeps (its poller makes the wake eventfd only for waits in the kernel):
// an executor of 5,000 sleeping pods ran out of descriptors with one each.
// A wait in the kernel after a Wake still ends at once.
func TestPollSleepHoldsNoDescriptor(t *testing.T) {
	fds := func() int {
		d, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(d)
	}
	before := fds()
	const n = 50
	ps := make([]*Poller, n)
	done := make(chan bool, n)
	for i := range ps {
		ps[i] = newPoller(t, time.Now())
		ps[i].leave = func() func() { return func() {} }
		go func(p *Poller) {
			_, killed := p.PollOneoff(layout(sub{timeout: time.Hour}), pollIn, pollOut, 1, pollN, nil)
			done <- killed
		}(ps[i])
	}
	time.Sleep(50 * time.Millisecond)
	if got := fds() - before; got > 0 {
		t.Errorf("%d sleeping instances hold %d descriptors more", n, got)
	}
	for _, p := range ps {
		p.Wake()
	}
	for range ps {
		if !<-done {
			t.Fatal("a wake did not end a sleep as a kill")
		}
	}
	on := newPoller(t, time.Now())
	on.Wake()
	if !on.Sleep(time.Hour) {
		t.Error("a wait in the kernel after a wake did not end at once")
	}
}

// TestPollShortWaitStays: a guest that may leave its thread keeps it for a
// wait that ends within stayFor (a sleep that short; a socket ready that
// soon after a wait that ended as soon), and leaves it for a longer one
// (a longer sleep; a server's first wait, or one after an idle spell).
func TestPollShortWaitStays(t *testing.T) {
	p := newPoller(t, time.Now())
	p.stay = 100 * time.Millisecond // stayFor, with room for a loaded machine
	leaves := 0
	p.leave = func() func() { leaves++; return func() {} }
	for _, tc := range []struct {
		sleep time.Duration
		leave bool
	}{{p.stay / 2, false}, {p.stay * 3, true}} {
		leaves = 0
		poll(t, p, layout(sub{timeout: tc.sleep}), 1, nil)
		if got := leaves > 0; got != tc.leave {
			t.Errorf("sleep %v: left the thread %v, want %v", tc.sleep, got, tc.leave)
		}
	}

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	host := func(fd uint32) (int, bool) { return fds[0], fd == 7 }
	// Written to after d, and read by the guest.
	wait := func(d time.Duration) bool {
		t.Helper()
		leaves = 0
		go func() {
			time.Sleep(d)
			unix.Write(fds[1], []byte("x"))
		}()
		if evs, _ := poll(t, p, layout(sub{tag: 1, fd: 7}), 1, host); len(evs) != 1 {
			t.Fatalf("socket written to: %+v", evs)
		}
		unix.Read(fds[0], make([]byte, 1))
		return leaves > 0
	}
	for i, tc := range []struct {
		after time.Duration
		leave bool
	}{
		{p.stay / 4, true},  // the first wait: no server to serve yet
		{p.stay / 4, false}, // serving: the last wait was short
		{p.stay * 5, true},  // idle: past its stay on the thread, then off it
		{p.stay / 4, true},  // after the idle spell: at once
		{p.stay / 4, false},
	} {
		if got := wait(tc.after); got != tc.leave {
			t.Errorf("socket wait %d, ready after %v: left the thread %v, want %v", i, tc.after, got, tc.leave)
		}
	}
}
