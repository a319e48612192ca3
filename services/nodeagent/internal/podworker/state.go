package podworker

import "fmt"

// State is a named phase of a pod's lifecycle on the node.
type State string

// The states. Pull back-off and crash-loop back-off are states of their own,
// as in Krustlet, so that what the node is doing is always one name.
const (
	StateRegistered       State = "Registered"
	StatePulling          State = "Pulling"
	StatePullBackOff      State = "PullBackOff"
	StatePreparingVolumes State = "PreparingVolumes"
	StateStarting         State = "Starting"
	StateRunning          State = "Running"
	StateCrashLoopBackOff State = "CrashLoopBackOff"
	StateTerminating      State = "Terminating"
	StateTerminated       State = "Terminated"
)

// transitions declares every legal move. Terminating is reachable from every
// live state (a pod may be deleted at any time); Terminated is final.
var transitions = map[State][]State{
	StateRegistered:       {StatePulling, StateTerminating, StateTerminated},
	StatePulling:          {StatePreparingVolumes, StatePullBackOff, StateTerminating, StateTerminated},
	StatePullBackOff:      {StatePulling, StateTerminating},
	StatePreparingVolumes: {StateStarting, StateTerminating, StateTerminated},
	StateStarting:         {StateRunning, StateCrashLoopBackOff, StateTerminating, StateTerminated},
	StateRunning:          {StateStarting, StateCrashLoopBackOff, StateTerminating, StateTerminated},
	StateCrashLoopBackOff: {StateStarting, StateTerminating},
	StateTerminating:      {StateTerminated},
	StateTerminated:       {},
}

func checkTransition(from, to State) error {
	if from == to {
		return nil
	}
	for _, s := range transitions[from] {
		if s == to {
			return nil
		}
	}
	return fmt.Errorf("illegal pod state transition %s -> %s", from, to)
}
