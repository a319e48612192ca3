package instance

import (
	"fmt"
	"time"

	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// State is where an instance is in its lifecycle.
type State int

// The states. Their names match executor.v1's InstanceState.
const (
	StateUnspecified State = iota
	StateCreated
	StateRunning
	StateExited
	StateKilled
	StateFailed
)

func (s State) String() string {
	switch s {
	case StateCreated:
		return "CREATED"
	case StateRunning:
		return "RUNNING"
	case StateExited:
		return "EXITED"
	case StateKilled:
		return "KILLED"
	case StateFailed:
		return "FAILED"
	}
	return "UNSPECIFIED"
}

// Terminal reports whether no transition leaves s.
func (s State) Terminal() bool {
	return s == StateExited || s == StateKilled || s == StateFailed
}

// transitions declares every legal change; StateUnspecified is "not yet
// recorded". An instance whose module cannot be fetched or prepared is
// recorded as FAILED directly; one stopped before it started is KILLED.
var transitions = map[State][]State{
	StateUnspecified: {StateCreated, StateFailed},
	StateCreated:     {StateRunning, StateFailed, StateKilled},
	StateRunning:     {StateExited, StateKilled},
}

func checkTransition(from, to State) error {
	for _, s := range transitions[from] {
		if s == to {
			return nil
		}
	}
	return fmt.Errorf("%w: %s -> %s", ErrIllegalTransition, from, to)
}

// Spec is what an instance runs. It is not modified once the instance is
// created; callers must not modify one they were given.
type Spec struct {
	// ModuleDigest is "sha256:<hex>"; ModuleReference is for messages.
	ModuleDigest     string
	ModuleReference  string
	Args             []string
	Env              []engine.EnvVar
	Preopens         []engine.Preopen
	MemoryLimitBytes int64
	// CPULimitMillis is a share of one core in millicores; 0: no limit.
	CPULimitMillis int64
	// LogSubject receives the output as LogBatch messages of LogRecords
	// (package logs); empty discards it.
	LogSubject string
	Labels     map[string]string
}

// Instance is a snapshot of one instance.
type Instance struct {
	ID       string
	Spec     Spec
	State    State
	ExitCode int32
	Reason   string
	Message  string

	CreatedAt, StartedAt, FinishedAt time.Time
	// Sequence of the event that produced this state.
	Sequence uint64
}

// Event is one state change: the instance right after it.
type Event struct {
	Sequence uint64
	Instance Instance
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
