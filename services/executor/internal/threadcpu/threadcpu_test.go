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

func TestThreadCPU(t *testing.T) {
	got := make(chan *Thread)
	release := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		spin(100 * time.Millisecond) // before Current: not counted
		th := Current()
		got <- th
		spin(200 * time.Millisecond)
		<-release
		th.Final()
	}()
	th := <-got
	if d, _ := th.Usage(); d > 50*time.Millisecond {
		t.Fatalf("CPU time %v at once: the time before Current was counted", d)
	}
	time.Sleep(50 * time.Millisecond)
	early, ok := th.Usage()
	if !ok {
		t.Fatal("the thread's CPU time could not be read")
	}
	time.Sleep(250 * time.Millisecond) // the spin ends; the thread then blocks
	mid, _ := th.Usage()
	close(release)
	time.Sleep(50 * time.Millisecond)
	final, ok := th.Usage()
	if !ok || final < mid || mid <= early {
		t.Fatalf("CPU time early %v, after the spin %v, final %v: want increasing and readable", early, mid, final)
	}
	// The spin was 200 ms of busy CPU; blocking does not count.
	if mid < 150*time.Millisecond || mid > 400*time.Millisecond {
		t.Fatalf("CPU time after a 200 ms spin = %v", mid)
	}
	var zero *Thread
	if _, ok := zero.Usage(); ok {
		t.Fatal("a nil Thread reported a figure")
	}
}
