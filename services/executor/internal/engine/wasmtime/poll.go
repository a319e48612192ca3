package wasmtime

import (
	wt "github.com/bytecodealliance/wasmtime-go/v39"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// pollOneoff is WASI's poll_oneoff, defined over the one DefineWasi
// provides so that a kill ends a module asleep in it at once (engine.Poller).
// Epoch interruption reaches wasm code only: a module asleep in wasmtime's
// own poll_oneoff (a Go time.Sleep, a C sleep) kept its thread, store and
// Engine until its sleep returned, however long after the kill. A module
// here has no sockets (Start refuses listeners), so fd subscriptions are
// ready at once, as wasmtime's own are for files.
func (i *instance) pollOneoff(c *wt.Caller, in, out, nsubs, nevents int32) (int32, *wt.Trap) {
	ext := c.GetExport("memory")
	if ext == nil || ext.Memory() == nil {
		return engine.ErrnoFault, nil
	}
	mem := ext.Memory().UnsafeData(c)
	errno, killed := i.poller.PollOneoff(mem, uint32(in), uint32(out), uint32(nsubs), uint32(nevents), nil)
	if killed {
		return 0, wt.NewTrap("killed while asleep in poll_oneoff")
	}
	return int32(errno), nil
}
