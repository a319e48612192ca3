package podworker

import (
	"time"

	v1 "k8s.io/api/core/v1"
)

// Backoff is the kubelet's crash-loop and image-pull back-off: one formula
// for pulls, volume set-up, starts that fail and crash loops.
type Backoff struct {
	Initial time.Duration // first delay
	Max     time.Duration // cap
	Reset   time.Duration // a run this long resets a crash loop's back-off
}

// DefaultBackoff is the kubelet's: 10 s doubling to 5 min, reset after 10 min.
var DefaultBackoff = Backoff{Initial: 10 * time.Second, Max: 5 * time.Minute, Reset: 10 * time.Minute}

// Delay is the back-off after step earlier ones: Initial doubling up to Max.
func (b Backoff) Delay(step int) time.Duration {
	d := b.Initial
	for i := 0; i < step && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// backoffState counts one container's consecutive back-offs.
type backoffState struct{ step int }

// next returns the delay to wait now and counts it.
func (s *backoffState) next(b Backoff) time.Duration {
	d := b.Delay(s.step)
	s.step++
	return d
}

// restartDelay is the delay before a container that ended is started
// again, under the kubelet's crash-loop rules: the first restart of a
// container is at once, then the back-off runs; a run of at least
// b.Reset starts the back-off over.
func (s *backoffState) restartDelay(b Backoff, restarts int32, ran time.Duration) time.Duration {
	if ran >= b.Reset {
		s.step = 0
	}
	if restarts == 0 && s.step == 0 {
		return 0 // and the next one is Initial
	}
	return s.next(b)
}

// shouldRestart reports whether the restart policy starts a container that
// ended with exit code again.
func shouldRestart(policy v1.RestartPolicy, exit int32) bool {
	return policy == v1.RestartPolicyAlways || (policy == v1.RestartPolicyOnFailure && exit != 0)
}
