// Package threadcpu reads the CPU time of one OS thread of this process,
// from any goroutine. The engines run each instance's wasm on a goroutine
// locked to a thread of its own, so that thread's CPU time is the
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
	tid  int
	base time.Duration // the clock when Current was called

	mu    sync.Mutex
	last  time.Duration
	ended bool
}

// Current is the calling thread, which must be locked to its goroutine.
func Current() *Thread {
	t := &Thread{tid: syscall.Gettid()}
	t.base, _ = read(t.tid)
	return t
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
	if t == nil || t.tid == 0 {
		return 0, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ended {
		return t.last, true
	}
	now, err := read(t.tid)
	if err != nil {
		// The thread has gone: the last figure is the best we have.
		return t.last, t.last > 0
	}
	if d := now - t.base; d > t.last {
		t.last = d
	}
	return t.last, true
}

// Final takes the last reading; later calls of Usage return it. Call it on
// the thread itself, before the goroutine locked to it returns.
func (t *Thread) Final() {
	if t == nil || t.tid == 0 {
		return
	}
	t.Usage()
	t.mu.Lock()
	t.ended = true
	t.mu.Unlock()
}
