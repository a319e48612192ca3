package podworker

import "testing"

func TestTransitionsAreDeclared(t *testing.T) {
	for from, tos := range transitions {
		for _, to := range tos {
			if _, ok := transitions[to]; !ok {
				t.Errorf("%s -> %s: target state has no entry", from, to)
			}
		}
	}
	if err := checkTransition(StateTerminated, StateRunning); err == nil {
		t.Error("Terminated -> Running was allowed")
	}
	if err := checkTransition(StatePulling, StatePreparingVolumes); err != nil {
		t.Errorf("Pulling -> PreparingVolumes refused: %v", err)
	}
	for s := range transitions {
		if s == StateTerminated || s == StateTerminating {
			continue
		}
		if err := checkTransition(s, StateTerminating); err != nil {
			t.Errorf("%s cannot be deleted: %v", s, err)
		}
	}
}
