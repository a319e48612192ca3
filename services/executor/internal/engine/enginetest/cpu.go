package enginetest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/cpulimit"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// recorder is the ThreadLimiter of the shared engines: a cpulimit.Limiter
// in a cgroup of the test binary's own, which reports each limited thread.
type recorder struct {
	l    *cpulimit.Limiter
	tids chan int
}

func (r *recorder) Limit(millis int64) (func(), error) {
	release, err := r.l.Limit(millis)
	if err == nil {
		select {
		case r.tids <- syscall.Gettid():
		default:
		}
	}
	return release, err
}

var limiter struct {
	once sync.Once
	rec  *recorder
	why  string
}

// testLimiter returns the test binary's recorder, or nil (with the reason
// kept for the CPU test's skip message) where no cgroup can be written.
func testLimiter(t testing.TB) engine.ThreadLimiter {
	limiter.once.Do(func() {
		root := os.Getenv("WASMLET_TEST_CPU_CGROUP")
		if root == "" {
			root = "/sys/fs/cgroup/cpu"
		}
		dir := filepath.Join(root, fmt.Sprintf("wasmlet-enginetest-%d", os.Getpid()))
		if err := os.Mkdir(dir, 0o755); err != nil {
			limiter.why = fmt.Sprintf("no writable cgroup v1 cpu hierarchy at %s (%v); set WASMLET_TEST_CPU_CGROUP", root, err)
			return
		}
		l, err := cpulimit.New(dir)
		if err != nil {
			os.Remove(dir)
			limiter.why = err.Error()
			return
		}
		limiter.rec = &recorder{l: l, tids: make(chan int, 16)}
	})
	if limiter.rec == nil {
		return nil
	}
	dir := limiter.rec.l.Dir()
	t.Cleanup(func() {
		// Threads of ended instances may not have exited yet: move what
		// is left to the parent, so that the cgroups can go.
		var dirs []string
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			b, _ := os.ReadFile(filepath.Join(dirs[i], "tasks"))
			for _, tid := range strings.Fields(string(b)) {
				os.WriteFile(filepath.Join(filepath.Dir(dir), "tasks"), []byte(tid), 0)
			}
			if err := os.Remove(dirs[i]); err != nil {
				t.Logf("remove test cgroup: %v", err)
			}
		}
		// The next top-level test (another suite in this binary) makes
		// its own.
		limiter.once, limiter.rec, limiter.why = sync.Once{}, nil, ""
	})
	return limiter.rec
}

// threadCPU is the CPU time a thread of this process has used.
func threadCPU(t *testing.T, tid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/schedstat", tid))
	if err != nil {
		t.Fatal(err)
	}
	ns, err := strconv.ParseInt(strings.Fields(string(b))[0], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return time.Duration(ns)
}

// testCPULimit runs the spinning module under 250m and under 1000m, and
// measures the share of a core its thread gets; then kills the throttled
// one, which must end within 50 ms like any other.
func testCPULimit(t *testing.T, e engine.Engine) {
	if limiter.rec == nil {
		t.Skip(limiter.why)
	}
	m := prepare(t, e, wasmbuild.Build(t, "spin"))
	const window = time.Second
	share := func(millis int64) (engine.Instance, float64) {
		var out Buffer
		inst, err := e.Start(t.Context(), m, engine.Spec{Args: []string{"spin"}, Stdout: &out, CPULimitMillis: millis})
		if err != nil {
			t.Fatalf("start with %dm: %v", millis, err)
		}
		var tid int
		select {
		case tid = <-limiter.rec.tids:
		case <-time.After(5 * time.Second):
			inst.Kill()
			t.Fatal("the engine did not limit a thread")
		}
		for !strings.Contains(out.String(), "spinning") {
			time.Sleep(5 * time.Millisecond)
		}
		c0, w0 := threadCPU(t, tid), time.Now()
		time.Sleep(window)
		c1, w1 := threadCPU(t, tid), time.Now()
		s := float64(c1-c0) / float64(w1.Sub(w0))
		t.Logf("CPU limit %dm: the instance's thread used %.1f%% of a core over %v", millis, 100*s, w1.Sub(w0).Round(time.Millisecond))
		return inst, s
	}
	full, _ := share(1000)
	full.Kill()
	full.Wait()
	limited, s := share(250)
	defer limited.Kill()
	if s > 0.30 || s < 0.05 {
		t.Errorf("with a 250m limit the instance used %.1f%% of a core, want about 25%%", 100*s)
	}
	t0 := time.Now()
	limited.Kill()
	select {
	case <-limited.Done():
	case <-time.After(50 * time.Millisecond):
		t.Fatal("kill of a throttled instance took more than 50ms")
	}
	t.Logf("kill latency of a throttled instance: %v", time.Since(t0))
}
