package engine

import (
	"context"
	"io"
)

// Instantiator is an Engine that instantiates a module ahead of its run,
// so that a run pays only its _start: handler mode (package wagi) keeps a
// pool of them and runs one per request.
type Instantiator interface {
	Engine
	// Instantiate instantiates m with spec's args, preopens and memory
	// limit (its linear memory initialised, _start not called); the
	// environment and stdio come with Pending.Run. spec's Env, Stdout,
	// Stderr and Listeners are not used. Errors wrap ErrInstantiate.
	Instantiate(ctx context.Context, m Module, spec Spec) (Pending, error)
}

// Stdio is what a Pending instance runs with besides its spec: its whole
// environment and its standard streams.
type Stdio struct {
	// Env in order; a later entry for the same name wins.
	Env []EnvVar
	// Stdin is read by fd_read(0); nil: empty.
	Stdin io.Reader
	// Stdout and Stderr are as Spec's.
	Stdout, Stderr io.Writer
}

// Pending is an instantiated module whose _start has not run. Methods are
// called from one goroutine at a time.
type Pending interface {
	// Run runs _start with io, as Engine.Start would with the spec given
	// to Instantiate (its thread, CPU limit and end, see Launch), and
	// returns the Instance. Called at most once; Close is not called after
	// it, the Instance frees it. On an error (ErrInstantiate) it is freed.
	Run(io Stdio) (Instance, error)
	// Memory is the size of its linear memory in bytes.
	Memory() int64
	// Close frees it without running it.
	Close()
}

// Inline is a Pending that can run on the calling goroutine (LaunchInline).
type Inline interface {
	Pending
	// RunInline is Run on the calling goroutine: it returns once the run
	// has ended (Done is closed), having given the Instance to started,
	// which may Kill it from another goroutine, before _start.
	RunInline(io Stdio, started func(Instance)) (Instance, error)
}
