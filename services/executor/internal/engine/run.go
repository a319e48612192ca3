package engine

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wasmlet/wasmlet/services/executor/internal/threadcpu"
)

// Guest is one instantiated module as an engine's runtime holds it: what a
// Run needs of the engine. Everything else of an instance's life (its
// thread, the CPU limit, kill, how the run ended, usage) is the Run's, the
// same for every engine.
type Guest interface {
	// Call runs the module's _start to its end on the calling goroutine
	// and returns its error (nil when _start returned).
	Call() error
	// Exit reports whether err, from Call, is the module's proc_exit, and
	// with what code.
	Exit(err error) (code int32, ok bool)
	// Failure says in one line what ended a Call that was no exit: a trap
	// ("wasm trap: <kind> in <frame>") or another error ("the module
	// failed: ...").
	Failure(err error) string
	// Memory is the size of the linear memory in bytes (0 without one),
	// read from any goroutine while the module may grow it.
	Memory() int64
	// Interrupt makes running wasm stop soon and a WASI sleep end at once
	// (Call then returns, with an error or not). Called at most once.
	Interrupt()
	// Close frees what the guest holds, once Call has returned or when it
	// never will run, and returns once the module's output has reached
	// the sinks. Called once; Memory and Interrupt are not called during
	// it or after it.
	Close()
}

const (
	// oomHeadroom: an abnormal end with linear memory this close to the
	// limit counts as OOMKilled (a Go runtime grows its heap in 4 MiB
	// arenas, and memory.grow past the limit fails rather than traps).
	oomHeadroom = 8 << 20
	// killWait bounds how long Kill waits for the module to notice before
	// it reports the instance ended (see Instance.Done).
	killWait = 500 * time.Millisecond
)

// Mobile is a Guest that may leave its OS thread while it waits in its
// Poller: nothing of its runtime is on the thread's stack (wazero, pure
// Go; wasmtime, whose wasm runs on a fiber that a wait returns from).
// Launch hands the Poller the Run's leave, so that an instance asleep
// holds no thread.
type Mobile interface {
	Guest
	// Poller is the guest's poll_oneoff.
	Poller() *Poller
}

// Run is the Instance of every engine: it runs a Guest on a thread of its
// own and owns its lifecycle.
type Run struct {
	guest   Guest
	limit   int64  // Spec.MemoryLimitBytes
	unlimit func() // lifts the CPU limit; set before Launch returns
	cpu     atomic.Pointer[threadcpu.Thread]
	held    *held // the CPU limit across threads (nil: none)

	offThread func() // LaunchInline's: unlocks the thread before the guest's Close

	mu     sync.Mutex // orders Kill and Usage against the end of the run
	killed bool
	ended  bool   // the result is decided; the guest is being closed
	mem    int64  // the largest memory size read
	cut    string // why a kill came from the Run itself ("": it did not)

	doneOnce sync.Once
	done     chan struct{}
	result   Result
}

var _ Instance = (*Run)(nil)

// Launch runs g's _start with spec's limits on a goroutine locked to an OS
// thread of its own, held by l to spec.CPULimitMillis when both are set,
// and returns it as an Instance. A Mobile g leaves its thread while it
// sleeps (Run.leave) and the limit follows it to the next. On an error (ErrInstantiate: the CPU
// limit could not be set) g has been closed and did not run.
func Launch(g Guest, l ThreadLimiter, spec Spec) (*Run, error) {
	r := &Run{guest: g, limit: spec.MemoryLimitBytes, mem: g.Memory(), done: make(chan struct{})}
	if m, ok := g.(Mobile); ok {
		if spec.CPULimitMillis > 0 && l != nil {
			r.held = &held{l: l, millis: spec.CPULimitMillis}
		}
		m.Poller().leave = r.leave
	}
	unlimit, err := runOnThread(&r.cpu, r.held.limiter(l), spec.CPULimitMillis, r.run)
	if err != nil {
		g.Close()
		return nil, fmt.Errorf("%w: CPU limit %dm: %v", ErrInstantiate, spec.CPULimitMillis, err)
	}
	r.unlimit = unlimit
	return r, nil
}

// LaunchInline is Launch on the calling goroutine, locked to its thread
// for the while, when spec has no CPU limit (or l is nil): it returns once
// the run has ended and its guest is closed, having given the Run to
// started (which may Kill it from elsewhere) before _start. With a CPU
// limit it is Launch, started, then a Wait: a limited thread ends with
// its run, which the caller's must not. A handler's run (package wagi)
// saves the hand-over to a goroutine and back per request.
func LaunchInline(g Guest, l ThreadLimiter, spec Spec, started func(*Run)) (*Run, error) {
	if spec.CPULimitMillis > 0 && l != nil {
		r, err := Launch(g, l, spec)
		if err != nil {
			return nil, err
		}
		started(r)
		<-r.done
		return r, nil
	}
	r := &Run{guest: g, limit: spec.MemoryLimitBytes, mem: g.Memory(), done: make(chan struct{})}
	if m, ok := g.(Mobile); ok {
		m.Poller().leave = r.leave
	}
	runtime.LockOSThread()
	arrive()
	r.cpu.Store(threadcpu.Current())
	// Its CPU taken, the run leaves the thread before its guest is
	// closed: a close that waits (for the last output to reach its sink)
	// then parks an ordinary goroutine, not a locked thread.
	r.offThread = func() {
		runtime.UnlockOSThread()
		depart()
	}
	started(r)
	r.run(nil)
	return r, nil
}

// leave gives the instance's thread back to the Go runtime while its
// guest waits, from the guest's goroutine: the thread's CPU so far is
// added to the instance's, and it leaves the instance's CPU cgroup (it
// must not carry the limit to other goroutines). back, after the wait,
// takes a thread again: its CPU clock from now on is the instance's, and
// it joins the instance's CPU cgroup. If the limit cannot be set again the
// instance is killed, rather than run unlimited.
func (r *Run) leave() (back func()) {
	cpu := r.cpu.Load()
	cpu.Leave()
	r.held.leave()
	runtime.UnlockOSThread()
	depart()
	return func() {
		runtime.LockOSThread()
		arrive()
		cpu.Arrive()
		if err := r.held.join(); err != nil {
			r.mu.Lock()
			r.cut = fmt.Sprintf("the instance was killed: its CPU limit of %dm could not be set again after a wait: %v", r.held.millis, err)
			r.mu.Unlock()
			r.Kill()
		}
	}
}

// held is the CPU limit of an instance that moves between threads: the
// limiter's hold of the thread it is on, none while it is away, and none
// once lifted (Kill, the end of the run). Safe from any goroutine.
type held struct {
	l      ThreadLimiter
	millis int64

	mu      sync.Mutex
	release func() // the hold of the current thread; nil: none
	lifted  bool
}

// limiter is h as the ThreadLimiter of the instance's first thread, or l
// without h.
func (h *held) limiter(l ThreadLimiter) ThreadLimiter {
	if h == nil {
		return l
	}
	return h
}

// Limit implements ThreadLimiter: the first thread's hold.
func (h *held) Limit(int64) (func(), error) {
	if err := h.join(); err != nil {
		return nil, err
	}
	return h.lift, nil
}

// join holds the calling thread, locked, to the limit, unless lifted.
func (h *held) join() error {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lifted {
		return nil
	}
	release, err := h.l.Limit(h.millis)
	h.release = release
	return err
}

// leave takes the calling thread out of the limit, back to where the
// limiter found it.
func (h *held) leave() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.release != nil {
		h.release()
		h.release = nil
	}
}

// lift ends the limit for good.
func (h *held) lift() {
	h.mu.Lock()
	h.lifted = true
	h.mu.Unlock()
	h.leave()
}

// run is the instance's thread.
func (r *Run) run(unlimit func()) {
	err := r.guest.Call()
	if unlimit != nil {
		unlimit()
	}
	r.mu.Lock()
	res := classify(r.guest, err, r.killed, r.limit)
	if r.killed && r.cut != "" {
		res.Message = r.cut
	}
	r.observe()
	r.ended = true
	r.mu.Unlock()
	r.cpu.Load().Final()
	if r.offThread != nil {
		r.offThread()
	}
	r.guest.Close()
	r.finish(res)
}

// classify is how a run ended, the one rule of every engine.
func classify(g Guest, err error, killed bool, limit int64) Result {
	// Killed first: a kill may reach a module blocked in a host call that
	// it cannot end (a write to a slow sink), or end one early (a sleep),
	// after which the module may return or exit as if it had not been
	// killed.
	if killed {
		return Result{ExitCode: KilledExitCode, Reason: ReasonKilled, Message: "the instance was killed"}
	}
	code, exited := int32(0), err == nil
	if !exited {
		code, exited = g.Exit(err)
	}
	if exited && code == 0 {
		return Result{Exited: true, Reason: ReasonCompleted}
	}
	oom := limit > 0 && g.Memory()+oomHeadroom > limit
	switch {
	case exited && oom:
		return Result{ExitCode: KilledExitCode, Reason: ReasonOOMKilled,
			Message: fmt.Sprintf("the module reached its memory limit of %d bytes and exited with code %d; raise the limit or reduce its memory use", limit, code)}
	case exited:
		return Result{Exited: true, ExitCode: code, Reason: ReasonError, Message: fmt.Sprintf("the module exited with code %d", code)}
	case oom:
		return Result{ExitCode: KilledExitCode, Reason: ReasonOOMKilled,
			Message: fmt.Sprintf("the module reached its memory limit of %d bytes and trapped: %s; raise the limit or reduce its memory use", limit, FirstLine(err.Error()))}
	}
	return Result{ExitCode: KilledExitCode, Reason: ReasonTrap, Message: g.Failure(err)}
}

// observe reads the guest's memory size; mu is held and the run not ended.
func (r *Run) observe() {
	r.mem = max(r.mem, r.guest.Memory())
}

func (r *Run) finish(res Result) {
	r.doneOnce.Do(func() {
		r.result = res
		close(r.done)
	})
}

// Done implements Instance.
func (r *Run) Done() <-chan struct{} { return r.done }

// Wait implements Instance.
func (r *Run) Wait() Result {
	<-r.done
	return r.result
}

// Kill implements Instance. A kill before the run's end is decided makes
// it Killed, whatever the module does meanwhile.
func (r *Run) Kill() {
	r.mu.Lock()
	if r.killed || r.ended {
		r.mu.Unlock()
		return
	}
	r.killed = true
	if r.unlimit != nil {
		r.unlimit() // a throttled thread must get to run to see the interrupt
	}
	r.guest.Interrupt()
	r.mu.Unlock()
	go func() {
		t := time.NewTimer(killWait)
		defer t.Stop()
		select {
		case <-r.done:
		case <-t.C:
			// Blocked in a host call: report it now; the thread and the
			// guest are released when the call returns.
			r.finish(Result{ExitCode: KilledExitCode, Reason: ReasonKilled,
				Message: "the instance was killed while blocked in a host call"})
		}
	}()
}

// Usage implements Instance. Memory never shrinks, so the largest size
// read is the last one, also once the run has ended.
func (r *Run) Usage() Usage {
	r.mu.Lock()
	if !r.ended {
		r.observe()
	}
	mem := r.mem
	r.mu.Unlock()
	cpu, ok := r.cpu.Load().Usage()
	return Usage{MemoryBytes: mem, CPU: cpu, CPUMeasured: ok}
}

// runOnThread runs body on a goroutine locked to an OS thread of its own,
// so that the thread's CPU time is the instance's: it is recorded in cpu
// before anything else runs; body takes it for the last time (Final).
// Then the thread goes back to the Go runtime, which saves creating and
// ending a thread per instance. With a limiter and millis > 0 the thread
// is first held to that share of a core, and ends with body instead (it
// stays in the limiter's hold); runOnThread then returns only once the
// limit is in place, with the function that lifts it (which body also
// receives), or with the error that kept it from being set, in which case
// body does not run.
func runOnThread(cpu *atomic.Pointer[threadcpu.Thread], l ThreadLimiter, millis int64, body func(unlimit func())) (unlimit func(), err error) {
	if millis <= 0 || l == nil {
		go func() {
			runtime.LockOSThread()
			arrive()
			cpu.Store(threadcpu.Current())
			body(nil)
			runtime.UnlockOSThread()
			depart()
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
		arrive()
		defer onThread.Add(-1) // the thread ends with body
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

// FirstLine is the first line of s, trimmed: runtimes' errors carry
// backtraces a user need not read.
func FirstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}
