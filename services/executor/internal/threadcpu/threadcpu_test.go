package threadcpu

import (
	"runtime"
	"testing"
	"time"
)

func spin(d time.Duration) {
	end := time.Now().Add(d)
	x := 0
	for time.Now().Before(end) {
		x++
	}
	_ = x
}

// spinCPU spins until the thread has used want of CPU by its own clock, so
// that the test does not depend on how busy the machine is.
func spinCPU(th *Thread, want time.Duration) bool {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		spin(time.Millisecond)
		if d, ok := th.Usage(); ok && d >= want {
			return true
		}
	}
	return false
}

func TestThreadCPU(t *testing.T) {
	got := make(chan *Thread)
	spun := make(chan bool)
	release := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		spin(100 * time.Millisecond) // before Current: not counted
		th := Current()
		got <- th
		spun <- spinCPU(th, 200*time.Millisecond)
		<-release
		th.Final()
	}()
	th := <-got
	if d, _ := th.Usage(); d > 50*time.Millisecond {
		t.Fatalf("CPU time %v at once: the time before Current was counted", d)
	}
	early, ok := th.Usage()
	if !ok {
		t.Fatal("the thread's CPU time could not be read")
	}
	if !<-spun {
		t.Fatal("the thread did not reach 200 ms of CPU time within 20 s")
	}
	mid, _ := th.Usage()
	time.Sleep(200 * time.Millisecond) // the thread blocks: no CPU time
	blocked, _ := th.Usage()
	close(release)
	time.Sleep(50 * time.Millisecond)
	final, ok := th.Usage()
	if !ok || final < mid || mid <= early {
		t.Fatalf("CPU time early %v, after the spin %v, final %v: want increasing and readable", early, mid, final)
	}
	if blocked-mid > 20*time.Millisecond {
		t.Fatalf("CPU time grew by %v while the thread was blocked", blocked-mid)
	}
	var zero *Thread
	if _, ok := zero.Usage(); ok {
		t.Fatal("a nil Thread reported a figure")
	}
}

// TestThreadMoves: an instance that leaves its thread and arrives on
// another keeps its total, counts nothing while away nor what another
// goroutine runs on the thread it left.
func TestThreadMoves(t *testing.T) {
	got := make(chan *Thread)
	step := make(chan bool)
	go func() {
		runtime.LockOSThread()
		th := Current()
		got <- th
		ok := spinCPU(th, 100*time.Millisecond)
		th.Leave()
		runtime.UnlockOSThread()
		step <- ok
		<-step // away: others run
		runtime.LockOSThread()
		th.Arrive()
		step <- spinCPU(th, 200*time.Millisecond)
		th.Final()
		runtime.UnlockOSThread()
	}()
	th := <-got
	if !<-step {
		t.Fatal("the thread did not reach 100 ms of CPU time within 20 s")
	}
	away, ok := th.Usage()
	if !ok || away < 100*time.Millisecond {
		t.Fatalf("CPU time away %v (readable %v): want the first thread's 100 ms", away, ok)
	}
	// Other goroutines run, perhaps on the thread left: not counted.
	done := make(chan struct{})
	for range 4 {
		go func() { spin(100 * time.Millisecond); done <- struct{}{} }()
	}
	for range 4 {
		<-done
	}
	if d, _ := th.Usage(); d != away {
		t.Fatalf("CPU time moved from %v to %v while away", away, d)
	}
	step <- true
	if !<-step {
		t.Fatal("the total did not reach 200 ms of CPU time within 20 s")
	}
	final, _ := th.Usage()
	if final < 200*time.Millisecond || final-away > 250*time.Millisecond {
		t.Fatalf("CPU time %v after 100 ms more on the next thread (away %v)", final, away)
	}
}
