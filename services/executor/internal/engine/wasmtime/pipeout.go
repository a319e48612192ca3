package wasmtime

// A handler's run (handler.go) gives its stdout to WASI as a file: the
// write end of a pipe, which a goroutine drains into the sink. wasmtime
// writes to a file in place, on the thread that runs the fiber, where a
// custom output (output.go) hands each write to its tokio runtime's
// thread and waits for it: two thread wake-ups per write, most of a
// small response's cost. The pipe lives for one run (the run's WASI
// context holds the write end; the store's close drops it), so a run
// holds two descriptors while it runs and none after.

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"

	wt "github.com/bytecodealliance/wasmtime-go/v39"
	"golang.org/x/sys/unix"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// pipeBufs are the drainers' read buffers.
var pipeBufs = sync.Pool{New: func() any { b := make([]byte, maxSinkWrite); return &b }}

// pipeOutput is a stream of a run drained from a pipe into its sink.
type pipeOutput struct {
	done chan struct{} // closed once the pipe's end came and all reached the sink
}

// pipeStdout makes wasi's stdout the write end of a pipe that a goroutine
// drains into sink, until every write end is closed (wasi's, when
// wasmtime drops it). A sink that fails is given nothing more, and the
// module's writes still succeed (outputSink).
func pipeStdout(wasi *wt.WasiConfig, sink io.Writer) (*pipeOutput, error) {
	// A pipe of plain descriptors: the write end, which wasmtime opens a
	// descriptor of its own of and ours is closed at once, never goes to
	// Go's poller; the read end does as it becomes a File.
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("%w: output pipe: %v", engine.ErrInstantiate, err)
	}
	// wasmtime's descriptor must block: its own open, without O_NONBLOCK,
	// gets a description of its own.
	err := wasi.SetStdoutFile("/proc/self/fd/" + strconv.Itoa(fds[1]))
	unix.Close(fds[1])
	if err != nil {
		unix.Close(fds[0])
		return nil, fmt.Errorf("%w: connect output: %v", engine.ErrInstantiate, err)
	}
	r := os.NewFile(uintptr(fds[0]), "stdout")
	p := &pipeOutput{done: make(chan struct{})}
	s := &outputSink{w: sink}
	go func() {
		defer close(p.done)
		defer r.Close()
		buf := pipeBufs.Get().(*[]byte)
		defer pipeBufs.Put(buf)
		for {
			n, err := r.Read(*buf)
			s.write((*buf)[:n])
			if err != nil {
				return
			}
		}
	}()
	return p, nil
}

// wait returns once everything written has reached the sink; the write
// end must be closed (the WASI context dropped) or it never returns.
func (p *pipeOutput) wait() { <-p.done }
