package engine

import (
	"runtime"
	"sync/atomic"

	"github.com/wasmlet/wasmlet/services/executor/internal/threadcpu"
)

// RunOnThread runs body on a goroutine locked to an OS thread of its own,
// so that the thread's CPU time is the instance's: it is recorded in cpu
// before anything else runs, and taken for the last time (Final) when body
// returns. Then the thread goes back to the Go runtime, which saves
// creating and ending a thread per instance. With a limiter and millis > 0
// the thread is first held to that share of a core, and ends with body
// instead (it stays in the limiter's hold); RunOnThread then returns only
// once the limit is in place, with the function that lifts it (which body
// also receives), or with the error that kept it from being set, in which
// case body does not run.
func RunOnThread(cpu *atomic.Pointer[threadcpu.Thread], l ThreadLimiter, millis int64, body func(unlimit func())) (unlimit func(), err error) {
	if millis <= 0 || l == nil {
		go func() {
			runtime.LockOSThread()
			t := threadcpu.Current()
			cpu.Store(t)
			body(nil)
			t.Final()
			runtime.UnlockOSThread()
		}()
		return nil, nil
	}
	type limited struct {
		release func()
		err     error
	}
	ready := make(chan limited, 1)
	go func() {
		runtime.LockOSThread()
		cpu.Store(threadcpu.Current())
		release, err := l.Limit(millis)
		ready <- limited{release, err}
		if err == nil {
			body(release)
		}
	}()
	r := <-ready
	return r.release, r.err
}
