// Package engine is the executor's seam to a WebAssembly runtime: the
// Engine, Module and Instance interfaces the instance manager holds, the
// types and errors every implementation shares, and what they do alike:
// the instance lifecycle (Run: its thread and CPU limit, kill, usage, and
// the one rule for how a run ended), WASI's poll_oneoff (Poller: clocks
// and sockets, ended by a kill), listeners (opened in a network namespace
// with InNetNS, or handed over already open, named to the module by
// ListenEnv), instances instantiated ahead of their run for handler mode
// (Instantiator, Pending; package wagi serves them), the checks of modules
// and specs, and compiled artifacts on disk (bounded by NewDiskCache) and
// in a shared store (Artifacts). The implementations (engine/wasmtime, the default;
// engine/wazero, pure Go) keep only what is their runtime's: compiling,
// linking WASI, instantiating, interrupting, reading memory, and which
// files hold a module's compiled code. engine/enginetest is the behaviour
// both must show, run from each one's tests.
//
// Threads. Each instance runs on a goroutine locked to an OS thread of its
// own while it runs wasm or a host call: the thread's CPU clock is the
// instance's CPU time (threadcpu), and a CPU limit holds the thread in a
// cgroup (ThreadLimiter, cpulimit). A wazero instance (a Mobile guest: pure
// Go, nothing of the runtime on the thread's stack) gives its thread back
// while it waits in poll_oneoff (a sleep, or an idle server's wait for its
// sockets; Poller): Run.leave adds the thread's CPU so far to the
// instance's, takes the thread out of the instance's cgroup, and unlocks
// it; the wait is one of Go's (a timer, or the netpoller on an epoll set of
// the module's sockets), which holds no thread; then the goroutine locks a
// thread again, whose clock from then on is the instance's and which
// joins the instance's cgroup. So a sleeping wazero instance holds no OS
// thread. A wasmtime instance keeps its thread for its whole run: a guest
// blocked in a host call is on the C stack of its thread. Other blocking
// host calls (a write to a full pipe, a blocking accept) keep it too.
//
// It must not know of instance ids, states, events, NATS, pods or gRPC: an
// engine runs a module with what it is given and reports how the run
// ended. An engine owns its cache directory and the threads its instances
// run on, nothing else.
//
// Usage, by the instance manager:
//
//	m, err := eng.Prepare(ctx, digest, "/var/lib/wasmlet/modules/<hex>.wasm")
//	inst, err := eng.Start(ctx, m, engine.Spec{Args: []string{"hello"}, Stdout: w})
//	res := inst.Wait() // or inst.Kill() first
//
// and by an engine's Start, for its runtime's instance g (a Guest):
//
//	run, err := engine.Launch(g, cfg.CPU, spec) // the Instance Start returns
package engine

import (
	"context"
	"errors"
	"io"
	"time"
)

// Engine prepares modules and runs their instances. Implementations are
// safe for concurrent use.
type Engine interface {
	// Name is the engine's short name ("wasmtime").
	Name() string
	// Version is the engine's version ("39.0.1").
	Version() string
	// Prepare makes the module in wasmPath, whose content digest is digest
	// (already verified by the caller), ready to run: it loads a precompiled
	// artifact from the engine's cache directory, or compiles the module and
	// stores one. It checks that the module can be run under WASI preview 1
	// (imports, _start). Errors wrap ErrModuleInvalid or ErrModuleUnsupported.
	// May be called more than once for the same digest, concurrently.
	Prepare(ctx context.Context, digest, wasmPath string) (Module, error)
	// Start instantiates m with spec and runs its _start on a goroutine of
	// its own, locked to an OS thread of its own (whose CPU time is the
	// instance's, see Usage) but while a wazero instance sleeps (see
	// Threads above). Errors wrap ErrInstantiate (the instance did not start).
	Start(ctx context.Context, m Module, spec Spec) (Instance, error)
}

// Module is a prepared module. It holds no per-instance state.
type Module interface {
	// Digest is the module's content digest.
	Digest() string
}

// EnvVar is one environment variable.
type EnvVar struct {
	Name, Value string
}

// Preopen maps a host directory into the guest's filesystem. Nothing else
// of the host's filesystem is visible to the guest.
type Preopen struct {
	HostPath  string
	GuestPath string
	ReadOnly  bool
}

// Spec is what an instance runs with.
type Spec struct {
	// Args is argv, including argv[0].
	Args []string
	// Env in order; a later entry for the same name wins.
	Env      []EnvVar
	Preopens []Preopen
	// MemoryLimitBytes bounds the linear memory; 0 means no limit beyond
	// the wasm32 address space.
	MemoryLimitBytes int64
	// CPULimitMillis is the share of one core the instance may use, in
	// millicores (250: a quarter of a core); 0 means no limit. An engine
	// given a ThreadLimiter enforces it (Start fails if it cannot); one
	// without runs the instance unthrottled.
	CPULimitMillis int64
	// Stdout and Stderr receive the instance's output as it is written; nil
	// discards it. Writes come from one goroutine per stream. A sink that
	// blocks stalls the module's writes, so a sink must bound how long it
	// blocks. Wait returns only after both sinks have had all output.
	Stdout, Stderr io.Writer
	// Listeners are opened, in NetNS, before the module starts, handed to
	// it as preopened sockets after its preopened directories, named to it
	// by ListenEnv, and closed when it ends. An engine that cannot refuses
	// them (ErrUnsupported); one that can says so (SocketEngine). A port
	// taken fails Start with ErrPortInUse, anything else with ErrListen.
	// A Listener with a File is handed over already open.
	Listeners []Listener
	// NetNS is the path of the network namespace the listeners are opened
	// in (InNetNS); empty: the executor's own.
	NetNS string
}

// SocketEngine is an Engine that hands Spec.Listeners to modules.
type SocketEngine interface {
	Engine
	// Listeners reports whether it can (true).
	Listeners() bool
}

// Instance is one running instance.
type Instance interface {
	// Done is closed when the instance has ended and its output has been
	// delivered to the sinks. One exception: an instance killed while
	// blocked in a host call that a kill cannot end (a read of a slow file;
	// a WASI sleep ends at a kill) is reported ended after a short bound;
	// its thread ends, and its sinks get their last writes, when the call
	// returns.
	Done() <-chan struct{}
	// Wait blocks until Done and returns how the instance ended.
	Wait() Result
	// Kill stops the instance at once (WASI has no signals: there is no
	// polite request to end). Idempotent; a no-op once the module's run has
	// ended. A module killed before then ends Killed, even if it goes on
	// to return or exit (a kill may end a host call under it early, or
	// find it in one that it cannot end).
	Kill()
	// Usage is what the instance uses now, or used last once it ended. Safe
	// to call from any goroutine, at any time.
	Usage() Usage
}

// Usage is an instance's resource use. Memory is the size of its linear
// memory (its working set as far as the guest can tell: the engine's own
// structures and compiled code are not counted). CPU is the CPU time of
// the threads its wasm runs on, wasm and WASI host calls together; engines
// lock each instance to a thread of its own for this (see threadcpu), one
// at a time (a wazero instance may move between threads as it sleeps).
type Usage struct {
	MemoryBytes int64
	CPU         time.Duration
	// CPUMeasured is false when the thread's CPU time could not be read.
	CPUMeasured bool
}

// ThreadLimiter holds an OS thread to a share of one core (cpulimit
// implements it with a cgroup). Engines cannot pause running wasm, so
// they honour Spec.CPULimitMillis by running an instance's wasm on one
// locked thread and handing that thread to a ThreadLimiter.
type ThreadLimiter interface {
	// Limit holds the calling thread, locked to its goroutine, to millis
	// thousandths of one core. release lifts the limit; it may be called
	// from any goroutine, more than once.
	Limit(millis int64) (release func(), err error)
}

// Reasons a run ended with, short and CamelCase, as the executor API
// reports them.
const (
	ReasonCompleted = "Completed" // exit code 0
	ReasonError     = "Error"     // a non-zero exit code
	ReasonKilled    = "Killed"    // Kill
	ReasonTrap      = "Trap"      // a wasm trap
	ReasonOOMKilled = "OOMKilled" // the memory limit was reached
)

// Result is how an instance ended.
type Result struct {
	// Exited is true when the module returned from _start or called
	// proc_exit; ExitCode is then its exit code. Otherwise the engine ended
	// it (Reason says why) and ExitCode is 137.
	Exited   bool
	ExitCode int32
	Reason   string
	Message  string
}

// KilledExitCode is the exit code reported for an instance the engine
// ended, as a shell would report SIGKILL.
const KilledExitCode = 137

// Errors, wrapped with detail.
var (
	// ErrModuleInvalid: the bytes are not a valid WebAssembly module.
	ErrModuleInvalid = errors.New("module invalid")
	// ErrModuleUnsupported: a valid module that cannot run here: an import
	// the engine does not provide, or no _start.
	ErrModuleUnsupported = errors.New("module unsupported")
	// ErrInstantiate: the instance could not be set up (a preopen that is
	// not a directory, the memory limit below the module's minimum, ...).
	ErrInstantiate = errors.New("instantiate")
)
