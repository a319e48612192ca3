package engine

import (
	"runtime"
	"sync"
	"testing"
	"time"
)

// The threads a burst of instances ran on are ended once they left them:
// an executor of 5,000 sleeping pods held 437 idle threads.
func TestIdleThreadsTrimmed(t *testing.T) {
	base := threadCount()
	if base == 0 {
		t.Skip("no /proc/self/status")
	}
	const burst = 64
	var started sync.WaitGroup
	release := make(chan struct{})
	var left sync.WaitGroup
	for range burst {
		started.Add(1)
		left.Add(1)
		go func() {
			defer left.Done()
			runtime.LockOSThread()
			arrive()
			started.Done()
			<-release
			runtime.UnlockOSThread()
			depart()
		}()
	}
	started.Wait()
	if n := threadCount(); n < burst {
		t.Fatalf("%d threads with %d goroutines locked to theirs, %d before", n, burst, base)
	}
	close(release)
	left.Wait()
	limit := base + runtime.GOMAXPROCS(0) + idleThreadsKept
	deadline := time.Now().Add(10 * time.Second)
	for threadCount() > limit {
		if time.Now().After(deadline) {
			t.Fatalf("%d threads %v after the burst left them, want at most %d (%d before it)", threadCount(), 10*time.Second, limit, base)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("threads: %d before, %d during the burst, %d after", base, base+burst, threadCount())
}
