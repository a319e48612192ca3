package instance

import (
	"fmt"

	"github.com/wasmlet/wasmlet/services/executor/instances"
)

// ErrIllegalTransition: a state change the lifecycle does not declare.
// It wraps instances.ErrFailedPrecondition.
var ErrIllegalTransition = fmt.Errorf("%w: illegal state transition", instances.ErrFailedPrecondition)

// transitions declares every legal change; StateUnspecified is "not yet
// recorded". An instance whose module cannot be fetched or prepared is
// recorded as FAILED directly; one stopped before it started is KILLED.
var transitions = map[instances.State][]instances.State{
	instances.StateUnspecified: {instances.StateCreated, instances.StateFailed},
	instances.StateCreated:     {instances.StateRunning, instances.StateFailed, instances.StateKilled},
	instances.StateRunning:     {instances.StateExited, instances.StateKilled},
}

func checkTransition(from, to instances.State) error {
	for _, s := range transitions[from] {
		if s == to {
			return nil
		}
	}
	return fmt.Errorf("%w: %s -> %s", ErrIllegalTransition, from, to)
}

// Reasons the manager gives, besides the engine's (engine.Reason*).
const (
	ReasonCreated            = "Created"
	ReasonStarted            = "Started"
	ReasonModuleNotFound     = "ModuleNotFound"
	ReasonModuleFetchFailed  = "ModuleFetchFailed"
	ReasonModuleDigest       = "ModuleDigestMismatch"
	ReasonModuleInvalid      = "ModuleInvalid"
	ReasonModuleUnsupported  = "ModuleUnsupported"
	ReasonStartFailed        = "StartFailed"
	ReasonStoppedBeforeStart = "StoppedBeforeStart"
)
