package wasmtime

// Output goes from WASI straight to the instance's sinks, through the C
// API's custom stdout and stderr (wasi_config_set_*_custom, which
// wasmtime-go does not wrap): wasmtime calls wlOutputWrite for each write
// and wlOutputFree when it drops the WASI context (with its store, or
// when a handler's run replaces it). An instance holds no descriptor and
// no goroutine for its output.
//
// wasmtime's WASI hands each write to a task of its own tokio runtime:
// the sinks are called on that runtime's threads (threads Go did not
// make, which it lends an M for the call), one write after another per
// stream, while the module waits in fd_write until its write is done. A
// sink that blocks holds one of that runtime's few threads meanwhile:
// the sinks here (logs.Shipper's, a handler's response buffer) do not.
//
// That hand-over bounds an instance's output, not the sink nor the fiber
// (whose driver waits in place meanwhile: TestOutputWaitIdle): wasmtime
// passes a write on in chunks of 4 KiB at most, each a round trip to its
// runtime's thread (as of v39, and v44's C API is the same). A module's
// 64 KiB writes reach ~180 MB/s to io.Discard here and 100-byte lines
// ~5 MB/s (BenchmarkOutput, 2 cores), where wasmtime alone, with a C
// callback that does nothing, reaches ~250 and ~5 MB/s; a pipe as stdout
// (wasi_config_set_stdout_file) was faster but holds descriptors.
//
// The C side (outputc.go) casts the exported functions to the callback
// types: a file with //export may only declare in its preamble.

import "C"

import (
	"io"
	"runtime/cgo"
	"sync/atomic"
	"unsafe"

	wt "github.com/bytecodealliance/wasmtime-go/v39"
)

// maxSinkWrite bounds what a sink is given in one Write, as wazero's
// engine does: wasmtime hands over a write's buffer whole.
const maxSinkWrite = 64 << 10

// outputSink is one output stream's sink. A sink that fails is given
// nothing more, and the module is told its writes succeeded: a failing
// sink must never block or end it.
type outputSink struct {
	w      io.Writer
	failed atomic.Bool
}

func (s *outputSink) write(p []byte) {
	if s.failed.Load() {
		return
	}
	for len(p) > 0 {
		n := min(len(p), maxSinkWrite)
		if _, err := s.w.Write(p[:n]); err != nil {
			s.failed.Store(true)
			return
		}
		p = p[n:]
	}
}

//export wlOutputWrite
func wlOutputWrite(data unsafe.Pointer, buf *C.uchar, n C.size_t) C.ptrdiff_t {
	s := cgo.Handle(uintptr(data)).Value().(*outputSink)
	if n > 0 {
		s.write(unsafe.Slice((*byte)(unsafe.Pointer(buf)), int(n)))
	}
	return C.ptrdiff_t(n)
}

//export wlOutputFree
func wlOutputFree(data unsafe.Pointer) {
	cgo.Handle(uintptr(data)).Delete()
}

// setOutput directs wasi's stdout (stderr: its stderr) to sink; nil
// discards it (WASI's default: no stream, writes succeed).
func setOutput(wasi *wt.WasiConfig, stderr bool, sink io.Writer) {
	if sink == nil {
		return
	}
	h := cgo.NewHandle(&outputSink{w: sink})
	setCustomOutput(first(wasi), stderr, uintptr(h))
}
