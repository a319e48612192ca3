package wazero

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/cpulimit"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/enginetest"
)

// threads is this process's OS thread count.
func threads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no Threads in /proc/self/status")
	return 0
}

// TestSleepersHoldNoThread: instances asleep in poll_oneoff give their
// threads back; their CPU stays still and readable while they sleep, and a
// kill ends each sleep at once.
func TestSleepersHoldNoThread(t *testing.T) {
	e := newEngine(t, t.TempDir(), nil)
	m := enginetest.Prepare(t, e, wasmbuild.Wat(t, enginetest.SleepLoop(1, time.Hour)))
	const n = 64
	before := threads(t)
	insts := make([]engine.Instance, 0, n)
	defer func() {
		for _, inst := range insts {
			inst.Kill()
		}
	}()
	for range n {
		inst, err := e.Start(t.Context(), m, engine.Spec{})
		if err != nil {
			t.Fatal(err)
		}
		insts = append(insts, inst)
	}
	time.Sleep(200 * time.Millisecond) // all asleep
	asleep := threads(t)
	t.Logf("threads: %d idle, %d with %d instances asleep", before, asleep, n)
	if asleep-before > n/4 {
		t.Errorf("%d instances asleep added %d threads, want them to hold none", n, asleep-before)
	}
	u0 := insts[0].Usage()
	time.Sleep(100 * time.Millisecond)
	u1 := insts[0].Usage()
	if !u0.CPUMeasured || !u1.CPUMeasured || u0.CPU <= 0 || u1.CPU != u0.CPU {
		t.Errorf("CPU of a sleeping instance: %v (measured %v), then %v (measured %v): want the same, above 0", u0.CPU, u0.CPUMeasured, u1.CPU, u1.CPUMeasured)
	}
	for i, inst := range insts {
		t0 := time.Now()
		inst.Kill()
		select {
		case <-inst.Done():
		case <-time.After(100 * time.Millisecond):
			t.Fatalf("instance %d: the kill did not end its sleep within 100 ms", i)
		}
		if res := inst.Wait(); res.Reason != engine.ReasonKilled {
			t.Fatalf("instance %d ended %+v after %v, want Killed", i, res, time.Since(t0))
		}
		if u := inst.Usage(); u.CPU < u1.CPU && i == 0 {
			t.Errorf("CPU went back from %v to %v at the end", u1.CPU, u.CPU)
		}
	}
}

// spinSleep spins k iterations, then sleeps 1 ms, for ever.
const spinSleep = `(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $i i32)
    (i64.store (i32.const 0) (i64.const 7))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 1000000))
    (loop $l
      (local.set $i (i32.const 0))
      (loop $spin
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $spin (i32.lt_u (local.get $i) (i32.const %d))))
      (drop (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 256)))
      (br $l))))`

// TestLimitAcrossSleeps: an instance that spins and sleeps in turn, on a
// new thread after each sleep, stays held to its CPU limit, and leaves
// the limiter's cgroup empty when it ends.
func TestLimitAcrossSleeps(t *testing.T) {
	root := os.Getenv("WASMLET_TEST_CPU_CGROUP")
	if root == "" {
		root = "/sys/fs/cgroup/cpu"
	}
	dir := filepath.Join(root, fmt.Sprintf("wasmlet-leavetest-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("no writable cgroup v1 cpu hierarchy at %s (%v); set WASMLET_TEST_CPU_CGROUP", root, err)
	}
	defer os.Remove(dir)
	l, err := cpulimit.New(dir)
	if err != nil {
		t.Skip(err)
	}
	e := newEngine(t, t.TempDir(), l)
	m := enginetest.Prepare(t, e, wasmbuild.Wat(t, fmt.Sprintf(spinSleep, 2_000_000)))
	inst, err := e.Start(t.Context(), m, engine.Spec{CPULimitMillis: 250})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Kill()
	time.Sleep(100 * time.Millisecond)
	c0, w0 := inst.Usage().CPU, time.Now()
	time.Sleep(time.Second)
	c1, w1 := inst.Usage().CPU, time.Now()
	s := float64(c1-c0) / float64(w1.Sub(w0))
	t.Logf("CPU limit 250m, spinning and sleeping 1 ms in turn: %.1f%% of a core", 100*s)
	if s > 0.30 || s < 0.02 {
		t.Errorf("with a 250m limit the instance used %.1f%% of a core, want at most about 25%%", 100*s)
	}
	inst.Kill()
	select {
	case <-inst.Done():
	case <-time.After(100 * time.Millisecond):
		t.Fatal("kill of a throttled instance took more than 100 ms")
	}
	time.Sleep(50 * time.Millisecond)
	children, _ := filepath.Glob(filepath.Join(dir, "wasmlet-*"))
	if len(children) > 0 {
		t.Errorf("cgroups left after the instance ended: %v", children)
	}
}

// acceptWait waits in poll_oneoff for its listener (fd 3) to be readable,
// accepts the connection and returns: were the connection left in the
// listener's queue when the instance ends and closes it, the kernel would
// reset it, and a client still completing its connect would see that.
const acceptWait = `(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_accept" (func $accept (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i64.store (i32.const 0) (i64.const 7))
    (i32.store8 (i32.const 8) (i32.const 1))
    (i32.store (i32.const 16) (i32.const 3))
    (drop (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 256)))
    (drop (call $accept (i32.const 3) (i32.const 0) (i32.const 512)))))`

// TestSocketWaitersHoldNoThread: instances waiting in poll_oneoff for a
// connection give their threads back, wake when one comes, and a kill ends
// the wait at once.
func TestSocketWaitersHoldNoThread(t *testing.T) {
	e := newEngine(t, t.TempDir(), nil)
	m := enginetest.Prepare(t, e, wasmbuild.Wat(t, acceptWait))
	const n = 32
	before := threads(t)
	insts := make([]engine.Instance, 0, n)
	addrs := make([]string, 0, n)
	defer func() {
		for _, inst := range insts {
			inst.Kill()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().(*net.TCPAddr)
		ln.Close() // the engine opens it again
		inst, err := e.Start(t.Context(), m, engine.Spec{Listeners: []engine.Listener{{Host: "127.0.0.1", Port: addr.Port}}})
		if err != nil {
			t.Fatal(err)
		}
		insts, addrs = append(insts, inst), append(addrs, addr.String())
	}
	time.Sleep(200 * time.Millisecond)
	waiting := threads(t)
	t.Logf("threads: %d idle, %d with %d instances waiting for a connection", before, waiting, n)
	if waiting-before > n/4 {
		t.Errorf("%d instances waiting for a connection added %d threads, want them to hold none", n, waiting-before)
	}
	// Another process on the machine may connect to one of these ports
	// (one it had and closed, now ours): that instance ends, and the dial
	// to it may fail; the next one still waiting is tried.
	var c net.Conn
	k := 0
	for ; k < n; k++ {
		if ended(insts[k]) {
			continue
		}
		var err error
		if c, err = net.Dial("tcp", addrs[k]); err == nil {
			break
		}
		t.Logf("instance %d: %v (the instance ended: %v)", k, err, ended(insts[k]))
	}
	if c == nil {
		t.Fatal("no instance could be connected to")
	}
	defer c.Close()
	select {
	case <-insts[k].Done():
		if res := insts[k].Wait(); res.Reason != engine.ReasonCompleted {
			t.Fatalf("the instance connected to ended %+v, want Completed", res)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a connection did not end the instance's wait within 5 s")
	}
	for i, inst := range insts[k+1:] {
		if ended(inst) {
			continue
		}
		inst.Kill()
		select {
		case <-inst.Done():
		case <-time.After(100 * time.Millisecond):
			t.Fatalf("instance %d: the kill did not end its wait within 100 ms", k+1+i)
		}
	}
}

func ended(inst engine.Instance) bool {
	select {
	case <-inst.Done():
		return true
	default:
		return false
	}
}
