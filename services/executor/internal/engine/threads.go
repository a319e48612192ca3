package engine

import (
	"bytes"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"
)

// Go keeps every OS thread it made until the process ends. An instance
// runs on a thread of its own while it computes (Launch), so a burst of
// starts left behind as many idle threads as instances ran at once: 437 in
// an executor of 5,000 sleeping pods, each with its stack and kernel task.
// As instances leave their threads, the idle threads beyond a few are
// ended: a goroutine that exits locked to its thread ends that thread, and
// the runtime runs a new goroutine on an idle thread.

// idleThreadsKept is how many idle threads beyond GOMAXPROCS are kept for
// the next starts.
const idleThreadsKept = 16

// trimEvery is how often at most the threads are counted and trimmed.
const trimEvery = time.Second

var (
	onThread    atomic.Int64 // instances on a thread of their own now
	trimPending atomic.Bool
)

// arrive counts an instance onto a thread of its own.
func arrive() { onThread.Add(1) }

// depart counts an instance off its thread and trims the idle threads a
// moment later (at most every trimEvery).
func depart() {
	onThread.Add(-1)
	if trimPending.CompareAndSwap(false, true) {
		time.AfterFunc(trimEvery, func() {
			trimPending.Store(false)
			trimThreads()
		})
	}
}

// trimThreads ends the process's threads beyond those instances are on,
// GOMAXPROCS and idleThreadsKept, one after another.
func trimThreads() {
	excess := threadCount() - int(onThread.Load()) - runtime.GOMAXPROCS(0) - idleThreadsKept
	for range excess {
		ended := make(chan struct{})
		go func() {
			runtime.LockOSThread()
			close(ended)
			// Exits locked: the runtime ends this thread.
		}()
		<-ended
	}
}

// threadCount is the process's threads (/proc/self/status), 0 if unknown.
func threadCount() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	_, rest, ok := bytes.Cut(b, []byte("\nThreads:"))
	if !ok {
		return 0
	}
	line, _, _ := bytes.Cut(rest, []byte("\n"))
	n, _ := strconv.Atoi(string(bytes.TrimSpace(line)))
	return n
}
