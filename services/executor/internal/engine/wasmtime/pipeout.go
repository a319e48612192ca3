package wasmtime

// A handler's run (handler.go) gives its stdout to WASI as a file: the
// write end of a pipe, read into the sink. wasmtime writes to a file in
// place, on the thread that runs the fiber, where a custom output
// (output.go) hands each write to its tokio runtime's thread and waits for
// it: two thread wake-ups per write, most of a small response's cost. The
// pipe lives for one run (the run's WASI context holds the write end; the
// store's close drops it), so a run holds two descriptors while it runs
// and none after.
//
// A run that ends within drainAfter, having written no more than the pipe
// holds (64 KiB), as a small handler does, is read at its end, on the
// goroutine that closes it: no goroutine, no poller. A run still going
// then gets a goroutine that drains the pipe through Go's poller, so that
// a module that writes more than the pipe holds is not held up for long.

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
// goroutine drains it.
const drainAfter = time.Millisecond

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
	fd    int // the read end, non-blocking
	sink  *outputSink
	state atomic.Int32
	timer *time.Timer
	done  chan struct{} // closed once the drainer read the pipe's end
}

// pipeStdout makes wasi's stdout the write end of a pipe that is read
// into sink until every write end is closed (wasi's, when wasmtime drops
// it). A sink that fails is given nothing more, and the module's writes
// still succeed (outputSink).
func pipeStdout(wasi *wt.WasiConfig, sink io.Writer) (*pipeOutput, error) {
	// Plain descriptors: the write end, which wasmtime opens a descriptor
	// of its own of (a description of its own, blocking) and ours is
	// closed at once, never goes to Go's poller.
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("%w: output pipe: %v", engine.ErrInstantiate, err)
	}
	err := wasi.SetStdoutFile("/proc/self/fd/" + strconv.Itoa(fds[1]))
	unix.Close(fds[1])
	if err != nil {
		unix.Close(fds[0])
		return nil, fmt.Errorf("%w: connect output: %v", engine.ErrInstantiate, err)
	}
	p := &pipeOutput{fd: fds[0], sink: &outputSink{w: sink}, done: make(chan struct{})}
	p.timer = time.AfterFunc(drainAfter, p.drain)
	return p, nil
}

// drain reads the pipe to its end through Go's poller, on a goroutine of
// its own (the timer's), unless wait is reading it.
func (p *pipeOutput) drain() {
	if !p.state.CompareAndSwap(pipeIdle, pipeDraining) {
		return
	}
	defer close(p.done)
	p.copy(os.NewFile(uintptr(p.fd), "stdout"))
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
	p.timer.Stop()
	buf := pipeBufs.Get().(*[]byte)
	defer pipeBufs.Put(buf)
	for {
		n, err := unix.Read(p.fd, *buf)
		switch {
		case n > 0:
			p.sink.write((*buf)[:n])
		case err == nil: // the end
			unix.Close(p.fd)
			return
		case errors.Is(err, unix.EINTR):
		default:
			// Not at its end (EAGAIN: a write end is still open
			// somewhere): read it through the poller.
			p.copy(os.NewFile(uintptr(p.fd), "stdout"))
			return
		}
	}
}
