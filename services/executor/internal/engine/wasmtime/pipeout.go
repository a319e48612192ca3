package wasmtime

// A handler's run (handler.go) gives its stdout and stderr to WASI as
// files: write ends of pipes, read into the sinks. wasmtime writes to a
// file in place, on the thread that runs the fiber, where a custom output
// (output.go) hands each write to its tokio runtime's thread and waits for
// it: two thread wake-ups per write, most of a small response's cost; and
// a custom output's handle is freed by a call from C into Go when the
// store closes, which cost a handler run more than a pipe of the pool
// (BenchmarkHandlerRequest, a stderr given as the executor gives one:
// 87-103 -> 73-87 µs of CPU per request at 1 at once, 68-72 -> 55-77 at
// 16).
// The hand-over is most of that cost, not Go: a custom output whose
// callback and finalizer are C only (each write appended to a buffer the
// instance's Close reads) cost a handler's request some 2.5 times the CPU
// of these pipes, its futex waits and tokio's wake-ups most of it.
//
// The pipes are the engine's, reused from run to run (pipePool): the
// engine keeps only a pipe's read end, and a run's WASI context opens a
// write end of its own through /proc/self/fd/<read end> (a pipe opened by
// that name for writing is a new writer of the same pipe), which the
// store's close drops. A read that returns the pipe's end (no writer
// left, everything read) proves that nothing more of that run can come,
// and only then does the pipe go back to the pool for another run. A new
// pipe per run cost a pipe2, three closes and a fresh procfs entry to
// open (BenchmarkPipeReuse: 13.1-13.4 µs against 8.3-9.4 µs a run,
// its drain timer included).
//
// A run that ends within drainAfter, having written no more than the pipe
// holds (64 KiB), as a small handler does, is read at its end, on the
// goroutine that closes it: no goroutine, no poller. A run still going
// then gets a goroutine that drains the pipe through Go's poller, so that
// a module that writes more than the pipe holds is not held up for long;
// that pipe is closed at its end, not reused (the poller had it).

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	wt "github.com/bytecodealliance/wasmtime-go/v39"
	"golang.org/x/sys/unix"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// drainAfter is how long a run's stdout is left in its pipe before a
// goroutine drains it (a variable for tests of reuse, which must not
// depend on a run's ending within it on a busy machine).
var drainAfter = time.Millisecond

// idlePipes bounds the pipes an engine keeps for the next runs (a
// descriptor each, and a page of buffer once used).
const idlePipes = 64

// pipePool is the pipes no run has, each held by its read end only.
// Safe for concurrent use.
type pipePool struct {
	mu   sync.Mutex
	free []*pipeEnd
}

// pipeEnd is a pipe's read end, non-blocking, and the name a write end of
// it is opened by.
type pipeEnd struct {
	fd   int
	path string // /proc/self/fd/<fd>
}

// get is a pipe with no writer and nothing in it.
func (pp *pipePool) get() (*pipeEnd, error) {
	pp.mu.Lock()
	if n := len(pp.free); n > 0 {
		p := pp.free[n-1]
		pp.free = pp.free[:n-1]
		pp.mu.Unlock()
		return p, nil
	}
	pp.mu.Unlock()
	// Plain descriptors, never Go's poller's (but a drainer's).
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, err
	}
	unix.Close(fds[1])
	return &pipeEnd{fd: fds[0], path: "/proc/self/fd/" + strconv.Itoa(fds[0])}, nil
}

// put takes back p, read to its end by the caller after its last writer
// had gone, or closes it when enough are kept.
func (pp *pipePool) put(p *pipeEnd) {
	pp.mu.Lock()
	if len(pp.free) < idlePipes {
		pp.free = append(pp.free, p)
		pp.mu.Unlock()
		return
	}
	pp.mu.Unlock()
	unix.Close(p.fd)
}

// pipeBufs are the read buffers.
var pipeBufs = sync.Pool{New: func() any { b := make([]byte, maxSinkWrite); return &b }}

// States of a pipeOutput.
const (
	pipeIdle     = iota // nobody reads yet
	pipeDraining        // the drainer reads
	pipeEnded           // wait reads, at the run's end
)

// pipeOutput is a stream of a run read from a pipe into its sink.
type pipeOutput struct {
	pool  *pipePool
	end   *pipeEnd
	sink  *outputSink
	state atomic.Int32
	timer *time.Timer
	done  chan struct{} // closed once the drainer read the pipe's end
}

// pipeStdout makes wasi's stdout a write end of a pipe of pool's, which is
// read into the sink given to start until every write end is closed
// (wasi's, when wasmtime drops it). A sink that fails is given nothing
// more, and the module's writes still succeed (outputSink).
func pipeStdout(pool *pipePool, wasi *wt.WasiConfig) (*pipeOutput, error) {
	return pipeOutputTo(pool, wasi.SetStdoutFile)
}

// pipeStderr is pipeStdout for wasi's stderr.
func pipeStderr(pool *pipePool, wasi *wt.WasiConfig) (*pipeOutput, error) {
	return pipeOutputTo(pool, wasi.SetStderrFile)
}

// pipeOutputTo gives a pipe of pool's to set, which opens the file of
// the path it is given as a WASI stream.
func pipeOutputTo(pool *pipePool, set func(path string) error) (*pipeOutput, error) {
	end, err := pool.get()
	if err != nil {
		return nil, fmt.Errorf("%w: output pipe: %v", engine.ErrInstantiate, err)
	}
	// wasmtime opens a descriptor of its own (a description of its own,
	// blocking, a writer of the pipe while the WASI context lives).
	if err := set(end.path); err != nil {
		unix.Close(end.fd)
		return nil, fmt.Errorf("%w: connect output: %v", engine.ErrInstantiate, err)
	}
	return &pipeOutput{pool: pool, end: end, done: make(chan struct{})}, nil
}

// newPipeOutput reads end, of pool, into sink from now on.
func newPipeOutput(pool *pipePool, end *pipeEnd, sink io.Writer) *pipeOutput {
	p := &pipeOutput{pool: pool, end: end, done: make(chan struct{})}
	p.start(sink)
	return p
}

// start reads the pipe into sink (nil: discards it) from the run's start
// on: at its end (wait), or by a drainer if it runs on past drainAfter.
// Called once, before wait; a pipe never started is read at wait into
// nothing.
func (p *pipeOutput) start(sink io.Writer) {
	if p == nil {
		return
	}
	if sink == nil {
		sink = io.Discard
	}
	p.sink = &outputSink{w: sink}
	p.timer = time.AfterFunc(drainAfter, p.drain)
}

// drain reads the pipe to its end through Go's poller, on a goroutine of
// its own (the timer's), unless wait is reading it.
func (p *pipeOutput) drain() {
	if !p.state.CompareAndSwap(pipeIdle, pipeDraining) {
		return
	}
	defer close(p.done)
	p.copy(os.NewFile(uintptr(p.end.fd), "stdout"))
}

// copy reads f to its end into the sink, and closes it.
func (p *pipeOutput) copy(f *os.File) {
	defer f.Close()
	buf := pipeBufs.Get().(*[]byte)
	defer pipeBufs.Put(buf)
	for {
		n, err := f.Read(*buf)
		p.sink.write((*buf)[:n])
		if err != nil {
			return
		}
	}
}

// wait returns once everything written has reached the sink; the write
// end must be closed (the WASI context dropped) or it never returns.
func (p *pipeOutput) wait() {
	if !p.state.CompareAndSwap(pipeIdle, pipeEnded) {
		<-p.done
		return
	}
	if p.timer != nil {
		p.timer.Stop()
	} else {
		p.sink = &outputSink{w: io.Discard} // never started: no run wrote it
	}
	buf := pipeBufs.Get().(*[]byte)
	defer pipeBufs.Put(buf)
	for {
		n, err := unix.Read(p.end.fd, *buf)
		switch {
		case n > 0:
			p.sink.write((*buf)[:n])
		case err == nil: // the end: no writer left, nothing in it
			p.pool.put(p.end)
			return
		case errors.Is(err, unix.EINTR):
		default:
			// Not at its end (EAGAIN: a write end is still open
			// somewhere): read it through the poller, and close it.
			p.copy(os.NewFile(uintptr(p.end.fd), "stdout"))
			return
		}
	}
}
