package podworker

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

func TestBackoffDoublesToMax(t *testing.T) {
	b := Backoff{Initial: 10 * time.Second, Max: 5 * time.Minute}
	var s backoffState
	var got []time.Duration
	for range 8 {
		got = append(got, s.next(b))
	}
	want := []time.Duration{10, 20, 40, 80, 160, 300, 300, 300}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("delays %v, want %v seconds", got, want)
		}
	}
	if d := b.Delay(0); d != 10*time.Second {
		t.Errorf("pull Delay(0) = %s", d)
	}
	if d := b.Delay(10); d != 5*time.Minute {
		t.Errorf("pull Delay(10) = %s", d)
	}
}

// The kubelet's crash loop: the first restart at once, then Initial
// doubling to Max; a long run starts it over, and a container that has
// restarted before waits Initial.
func TestRestartDelay(t *testing.T) {
	b := Backoff{Initial: 10 * time.Second, Max: 40 * time.Second, Reset: 10 * time.Minute}
	var s backoffState
	var got []time.Duration
	for restarts := int32(0); restarts < 5; restarts++ {
		got = append(got, s.restartDelay(b, restarts, time.Second))
	}
	want := []time.Duration{0, 10, 20, 40, 40}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("delays %v, want %v seconds", got, want)
		}
	}
	if d := s.restartDelay(b, 5, 10*time.Minute); d != 10*time.Second {
		t.Errorf("after a run of Reset: %s, want Initial", d)
	}
	if d := s.restartDelay(b, 6, time.Second); d != 20*time.Second {
		t.Errorf("after that: %s, want 2*Initial", d)
	}
	// A start that failed (CreateContainerError) took a step: the first
	// exit then waits too.
	var f backoffState
	f.next(b)
	if d := f.restartDelay(b, 0, time.Second); d != 20*time.Second {
		t.Errorf("exit after a failed start: %s", d)
	}
}

func TestShouldRestart(t *testing.T) {
	for _, tc := range []struct {
		policy v1.RestartPolicy
		exit   int32
		want   bool
	}{
		{v1.RestartPolicyAlways, 0, true},
		{v1.RestartPolicyAlways, 1, true},
		{v1.RestartPolicyOnFailure, 0, false},
		{v1.RestartPolicyOnFailure, 137, true},
		{v1.RestartPolicyNever, 1, false},
		{v1.RestartPolicyNever, 0, false},
	} {
		if got := shouldRestart(tc.policy, tc.exit); got != tc.want {
			t.Errorf("%s exit %d: restart %v", tc.policy, tc.exit, got)
		}
	}
}
