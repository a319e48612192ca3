package engine

import (
	"runtime"
	"sync/atomic"

	"github.com/wasmlet/wasmlet/services/executor/internal/threadcpu"
)

// RunOnThread runs body on a goroutine locked for good to an OS thread of
// its own (the thread ends with it), so that the thread's CPU time is the
// instance's: it is recorded in cpu before anything else runs. With a
// limiter and millis > 0 the thread is first held to that share of a core;
// RunOnThread then returns only once the limit is in place, with the
// function that lifts it (which body also receives), or with the error that
// kept it from being set, in which case body does not run.
func RunOnThread(cpu *atomic.Pointer[threadcpu.Thread], l ThreadLimiter, millis int64, body func(unlimit func())) (unlimit func(), err error) {
	if millis <= 0 || l == nil {
		go func() {
			runtime.LockOSThread()
			cpu.Store(threadcpu.Current())
			body(nil)
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
