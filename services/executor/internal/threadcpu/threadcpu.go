// Package threadcpu reads the CPU time of one OS thread of this process,
// from any goroutine. The engines run each instance's wasm on a goroutine
// locked to a thread of its own (one at a time), so that thread's CPU time is the
// instance's (its wasm and the WASI host calls it makes; not the
// executor's reading of its output, which runs elsewhere).
//
// It reads the thread's CPU-time clock (clock_gettime on the clock id the
// kernel derives from a thread id, as pthread_getcpuclockid does), in
// nanoseconds, from the moment Current is called: Go reuses threads, and
// the clock counts what the thread ran before it was locked. Once the thread has ended the clock is gone: Thread keeps
// the last figure, and Final records one from the thread itself just
// before it ends.
//
// An instance may also move between threads (wazero's leave theirs while
// they sleep): Leave, on the thread it leaves, adds that thread's CPU so
// far to the total; Arrive, on the next one, takes its clock as the new
// baseline. In between the total is the sum so far: it never goes back
// and never counts what another goroutine ran on either thread.
//
// Usage (on the goroutine that runs the wasm):
//
//	runtime.LockOSThread()
//	t := threadcpu.Current()
//	defer t.Final()
//	... // elsewhere: cpu, ok := t.Usage()
package threadcpu

import (
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Thread is one OS thread's CPU clock. The zero value reports nothing.
type Thread struct {
	mu    sync.Mutex
	tid   int           // 0: none (the zero value, or away)
	base  time.Duration // the clock of tid when it became the instance's
	acc   time.Duration // CPU on threads left before tid
	last  time.Duration // the largest total read
	ended bool
}

// Current is the calling thread, which must be locked to its goroutine.
func Current() *Thread {
	t := &Thread{}
	t.Arrive()
	return t
}

// Leave adds the calling thread's CPU so far to the total: the instance
// leaves it (runtime.UnlockOSThread next). Usage reports the total until
// Arrive.
func (t *Thread) Leave() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tid == 0 {
		return
	}
	t.take()
	t.acc, t.tid = t.last, 0
}

// Arrive makes the calling thread, locked to its goroutine, the
// instance's: its clock from now on adds to the total.
func (t *Thread) Arrive() {
	tid := syscall.Gettid()
	base, _ := read(tid)
	t.mu.Lock()
	t.tid, t.base = tid, base
	t.mu.Unlock()
}

// take reads the current thread's clock into last; mu is held. It
// reports false if the clock is gone (the thread has ended).
func (t *Thread) take() bool {
	now, err := read(t.tid)
	if err != nil {
		return false
	}
	if d := t.acc + now - t.base; d > t.last {
		t.last = d
	}
	return true
}

func read(tid int) (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(clockID(tid), &ts); err != nil {
		return 0, err
	}
	return time.Duration(ts.Nano()), nil
}

// clockID is MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED) from the kernel.
func clockID(tid int) int32 {
	return int32(^uint32(tid)<<3 | 6)
}

// Usage is the thread's CPU time so far, and whether it could be read.
func (t *Thread) Usage() (time.Duration, bool) {
	if t == nil {
		return 0, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch {
	case t.ended:
		return t.last, true
	case t.tid == 0: // away, or never arrived
		return t.last, t.last > 0 || t.acc > 0
	case !t.take():
		// The thread has gone: the last figure is the best we have.
		return t.last, t.last > 0
	}
	return t.last, true
}

// Final takes the last reading; later calls of Usage return it. Call it on
// the thread itself, before the goroutine locked to it returns.
func (t *Thread) Final() {
	if t == nil {
		return
	}
	t.Usage()
	t.mu.Lock()
	t.ended = true
	t.mu.Unlock()
}
