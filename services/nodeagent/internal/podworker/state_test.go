package podworker

import (
	"os"
	"strings"
	"testing"
)

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

// The package doc's table is the transitions table (Terminating, reachable
// from every live state, is said once below it).
func TestDocTableMatchesTransitions(t *testing.T) {
	b, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(strings.TrimPrefix(line, "//"))
		if len(fields) < 2 {
			continue
		}
		from := State(fields[0])
		tos, ok := transitions[from]
		if !ok || !strings.HasPrefix(line, "//\t") {
			continue
		}
		seen++
		var want []string
		for _, to := range tos {
			if to != StateTerminating || from == StateTerminating {
				want = append(want, string(to))
			}
		}
		got := fields[len(fields)-len(want):]
		if len(want) == 0 {
			got = fields[len(fields)-1:]
			want = []string{"-"}
		}
		if strings.ReplaceAll(strings.Join(got, " "), ",", "") != strings.Join(want, " ") {
			t.Errorf("doc: %s -> %v, table: %v", from, got, want)
		}
	}
	if seen != len(transitions)-1 { // Terminated has no row
		t.Errorf("doc table has %d rows, want %d", seen, len(transitions)-1)
	}
}
