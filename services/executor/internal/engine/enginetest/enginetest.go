// Package enginetest is the conformance suite of engine.Engine: the
// behaviour every engine must show (exit codes, traps, unusable modules,
// kill, memory limit, preopens, output, corrupt compiled artifacts), run
// against each implementation from its own tests. It is test support: only
// _test.go files may import it (it imports testing and wasmbuild).
//
// Usage, in an engine's package:
//
//	func TestConformance(t *testing.T) {
//		enginetest.Run(t, func(t testing.TB, dir string, cpu engine.ThreadLimiter) engine.Engine {
//			e, err := wazero.New(wazero.Config{CacheDir: dir, CPU: cpu})
//			if err != nil {
//				t.Fatal(err)
//			}
//			return e
//		})
//	}
//
// newEngine must return a new engine whose compiled artifacts live under
// dir, and nothing else, and that enforces CPU limits with cpu when it is
// not nil. The CPU limit test needs a writable cgroup v1 cpu hierarchy
// (/sys/fs/cgroup/cpu, or the directory in WASMLET_TEST_CPU_CGROUP), in
// which it makes a child for the test binary; without one it is skipped. Most tests share one engine whose directory is
// kept under the user cache dir (wasmlet-enginetest/), so that compiled
// Go-built modules are reused by later runs; engines must verify what they
// load from it, which the corrupt-artifact test checks in a fresh directory.
package enginetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// NewEngine returns a new engine keeping its artifacts under dir and
// enforcing CPU limits with cpu (which may be nil).
type NewEngine func(t testing.TB, dir string, cpu engine.ThreadLimiter) engine.Engine

// Run runs the conformance suite against engines made by newEngine.
func Run(t *testing.T, newEngine NewEngine) {
	RunInstances(t, newEngine)
	t.Run("CorruptArtifactRebuilt", func(t *testing.T) { testCorruptArtifactRebuilt(t, newEngine) })
}

// RunInstances runs the suite's cases on how instances run, leaving out
// those on the engine's artifacts: for an engine that may run a module
// before it has compiled it (wazero's Config.InterpretFirst).
func RunInstances(t *testing.T, newEngine NewEngine) {
	e := Shared(t, newEngine)
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, engine.Engine)
	}{
		{"Hello", testHello},
		{"WatModules", testWatModules},
		{"UnusableModules", testUnusableModules},
		{"KillSpinning", testKillSpinning},
		{"MemoryLimitOOMKilled", testMemoryLimitOOMKilled},
		{"Preopens", testPreopens},
		{"BadPreopen", testBadPreopen},
		{"StartTimePrecompiled", testStartTimePrecompiled},
		{"ChattyOutputComplete", testChattyOutputComplete},
		{"KillBlockedInHostCall", testKillBlockedInHostCall},
		{"KilledThenExited", testKilledThenExited},
		{"PollClocks", testPollClocks},
		{"CPULimit", testCPULimit},
		{"Usage", testUsage},
		{"HugeWrite", testHugeWrite},
		{"TableGrowthLimited", testTableGrowthLimited},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, e) })
	}
}

var shared struct {
	mu   sync.Mutex
	engs map[string]engine.Engine // by the test's top-level name
}

// Shared returns the engine of newEngine whose artifacts are kept between
// runs, one per top-level test (so per engine).
func Shared(t testing.TB, newEngine NewEngine) engine.Engine {
	t.Helper()
	key := strings.SplitN(t.Name(), "/", 2)[0]
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if e := shared.engs[key]; e != nil {
		return e
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = os.TempDir()
	}
	dir := filepath.Join(base, "wasmlet-enginetest")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, dir, testLimiter(t))
	if shared.engs == nil {
		shared.engs = map[string]engine.Engine{}
	}
	shared.engs[key] = e
	return e
}

// Prepare prepares the module at path, failing the test on an error.
func Prepare(t testing.TB, e engine.Engine, path string) engine.Module {
	t.Helper()
	return prepare(t, e, path)
}

// Run1 starts an instance and waits for it (at most 30 s).
func Run1(t *testing.T, e engine.Engine, m engine.Module, spec engine.Spec) engine.Result {
	t.Helper()
	return run(t, e, m, spec)
}

// ProcExit is a module in WebAssembly text that calls proc_exit(code), 0-9.
func ProcExit(code int) string { return procExit(code) }

// testCorruptArtifactRebuilt corrupts every file an engine wrote for a
// module (same size, so only a hash tells) and checks that a new engine on
// the same directory discards them, runs the module correctly and leaves
// none of the corrupt bytes behind.
func testCorruptArtifactRebuilt(t *testing.T, newEngine NewEngine) {
	dir := t.TempDir()
	wasm := wasmbuild.Wat(t, procExit(3))
	digest := digestOf(t, wasm)
	e1 := newEngine(t, dir, nil)
	if _, err := e1.Prepare(context.Background(), digest, wasm); err != nil {
		t.Fatal(err)
	}
	files := artifacts(t, dir)
	if len(files) == 0 {
		t.Fatalf("the engine wrote no artifact under %s", dir)
	}
	corrupt := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// Flip bytes in the middle and, for small files, near the start:
		// headers, offsets and code all get hit somewhere.
		for _, at := range []int{len(b) / 2, min(len(b)/4, 64)} {
			for i := at; i < at+32 && i < len(b); i++ {
				b[i] ^= 0xff
			}
		}
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		corrupt[f] = b
	}
	e2 := newEngine(t, dir, nil)
	m, err := e2.Prepare(context.Background(), digest, wasm)
	if err != nil {
		t.Fatalf("prepare over a corrupt artifact: %v", err)
	}
	if res := run(t, e2, m, engine.Spec{}); res.ExitCode != 3 || res.Reason != engine.ReasonError {
		t.Fatalf("result %+v, want exit code 3", res)
	}
	for f, b := range corrupt {
		if now, err := os.ReadFile(f); err == nil && bytes.Equal(now, b) {
			t.Errorf("corrupt artifact %s is still there", f)
		}
	}
	if len(artifacts(t, dir)) == 0 {
		t.Error("no artifact was written again")
	}
}

// artifacts lists the files under dir that look like compiled code: every
// regular file but checksums.
func artifacts(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() && !strings.HasSuffix(p, ".sha256") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return out
}

func digestOf(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func prepare(t testing.TB, e engine.Engine, path string) engine.Module {
	t.Helper()
	m, err := e.Prepare(context.Background(), digestOf(t, path), path)
	if err != nil {
		t.Fatalf("prepare %s: %v", path, err)
	}
	return m
}

// Buffer is a bytes.Buffer safe to write and read at once: a module's
// output, or a process's stderr, read while it runs.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func run(t testing.TB, e engine.Engine, m engine.Module, spec engine.Spec) engine.Result {
	t.Helper()
	inst, err := e.Start(context.Background(), m, spec)
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	select {
	case <-inst.Done():
	case <-time.After(30 * time.Second):
		inst.Kill()
		t.Fatal("instance did not end in 30s")
	}
	return inst.Wait()
}

func testHello(t *testing.T, e engine.Engine) {
	m := prepare(t, e, wasmbuild.Build(t, "hello"))
	for _, tc := range []struct {
		name   string
		env    []engine.EnvVar
		exited bool
		code   int32
		reason string
	}{
		{"exit 0", nil, true, 0, engine.ReasonCompleted},
		{"exit 3", []engine.EnvVar{{Name: "EXIT_CODE", Value: "3"}}, true, 3, engine.ReasonError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb Buffer
			env := append([]engine.EnvVar{{Name: "GREETING", Value: "first"}, {Name: "GREETING", Value: "hi there"}}, tc.env...)
			res := run(t, e, m, engine.Spec{Args: []string{"hello", "a", "b c"}, Env: env, Stdout: &out, Stderr: &errb})
			if res.Exited != tc.exited || res.ExitCode != tc.code || res.Reason != tc.reason {
				t.Fatalf("result %+v, want exited=%v code=%d reason=%s", res, tc.exited, tc.code, tc.reason)
			}
			if want := "args: a b c\ngreeting: hi there\n"; out.String() != want {
				t.Errorf("stdout %q, want %q", out.String(), want)
			}
			if want := "hello on stderr\n"; errb.String() != want {
				t.Errorf("stderr %q, want %q", errb.String(), want)
			}
		})
	}
}

func testWatModules(t *testing.T, e engine.Engine) {
	for _, tc := range []struct {
		name, wat string
		exited    bool
		code      int32
		reason    string
		message   string
	}{
		{"return from _start", `(module (func (export "_start")) (memory (export "memory") 1))`, true, 0, engine.ReasonCompleted, ""},
		{"proc_exit 0", procExit(0), true, 0, engine.ReasonCompleted, ""},
		{"proc_exit 3", procExit(3), true, 3, engine.ReasonError, "exited with code 3"},
		{"trap", `(module (func $boom (export "_start") unreachable) (memory (export "memory") 1))`, false, 137, engine.ReasonTrap, "unreachable"},
		{"divide by zero", `(module (func (export "_start") (drop (i32.div_s (i32.const 1) (i32.const 0)))))`, false, 137, engine.ReasonTrap, "divide by zero"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := prepare(t, e, wasmbuild.Wat(t, tc.wat))
			res := run(t, e, m, engine.Spec{Args: []string{"m"}})
			if res.Exited != tc.exited || res.ExitCode != tc.code || res.Reason != tc.reason || !strings.Contains(res.Message, tc.message) {
				t.Fatalf("result %+v, want exited=%v code=%d reason=%s message~%q", res, tc.exited, tc.code, tc.reason, tc.message)
			}
			t.Logf("%+v", res)
		})
	}
}

func procExit(code int) string {
	return `(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const ` + string(rune('0'+code)) + `))))`
}

func testUnusableModules(t *testing.T, e engine.Engine) {
	invalid := filepath.Join(t.TempDir(), "bad.wasm")
	if err := os.WriteFile(invalid, []byte("\x00asm\x01\x00\x00\x00garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	notWasm := filepath.Join(t.TempDir(), "text.wasm")
	if err := os.WriteFile(notWasm, []byte("#!/bin/sh\necho hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path string
		want       error
		message    string
	}{
		{"invalid bytes", invalid, engine.ErrModuleInvalid, "does not compile"},
		{"not wasm", notWasm, engine.ErrModuleInvalid, "does not compile"},
		{"missing import", wasmbuild.Wat(t, `(module (import "env" "host_thing" (func)) (func (export "_start")))`), engine.ErrModuleUnsupported, "env::host_thing"},
		{"no _start", wasmbuild.Wat(t, `(module (func (export "main")))`), engine.ErrModuleUnsupported, "no _start"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.Prepare(context.Background(), digestOf(t, tc.path), tc.path)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.message) {
				t.Fatalf("prepare: %v, want %v containing %q", err, tc.want, tc.message)
			}
			t.Log(err)
		})
	}
}

// testKillSpinning: a kill interrupts a module spinning in wasm. Its
// latency is a figure for the executor benchmark (p99 ≤ 50 ms, `make
// bench`); here it must only land before engine.Run's fallback would
// report a kill that did not interrupt (500 ms), on a loaded machine too.
func testKillSpinning(t *testing.T, e engine.Engine) {
	m := prepare(t, e, wasmbuild.Build(t, "spin"))
	var out1, out2 Buffer
	a, err := e.Start(context.Background(), m, engine.Spec{Args: []string{"spin"}, Stdout: &out1})
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.Start(context.Background(), m, engine.Spec{Args: []string{"spin"}, Stdout: &out2})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Kill()
	// Let both get into their loops.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out1.String(), "spinning") || !strings.Contains(out2.String(), "spinning") {
		if time.Now().After(deadline) {
			t.Fatalf("modules did not start spinning: %q %q", out1.String(), out2.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	t0 := time.Now()
	a.Kill()
	select {
	case <-a.Done():
	case <-time.After(400 * time.Millisecond):
		t.Fatalf("kill did not interrupt the spinning module within 400ms")
	}
	latency := time.Since(t0)
	t.Logf("kill latency: %v", latency)
	if res := a.Wait(); res.Reason != engine.ReasonKilled || res.ExitCode != engine.KilledExitCode || res.Exited {
		t.Fatalf("killed instance: %+v", res)
	}
	select {
	case <-b.Done():
		t.Fatalf("the other instance ended too: %+v", b.Wait())
	case <-time.After(200 * time.Millisecond):
	}
	b.Kill()
	<-b.Done()
	if res := b.Wait(); res.Reason != engine.ReasonKilled {
		t.Fatalf("second instance: %+v", res)
	}
}

func testMemoryLimitOOMKilled(t *testing.T, e engine.Engine) {
	m := prepare(t, e, wasmbuild.Build(t, "oom"))
	var out, errb Buffer
	res := run(t, e, m, engine.Spec{Args: []string{"oom"}, MemoryLimitBytes: 64 << 20, Stdout: &out, Stderr: &errb})
	if res.Reason != engine.ReasonOOMKilled || res.Exited || res.ExitCode != engine.KilledExitCode {
		t.Fatalf("result %+v, want OOMKilled; stderr %q", res, strings.SplitN(errb.String(), "\n", 2)[0])
	}
	t.Logf("%+v", res)
}

func testPreopens(t *testing.T, e engine.Engine) {
	m := prepare(t, e, wasmbuild.Build(t, "hello"))
	ro := t.TempDir()
	rw := t.TempDir()
	if err := os.WriteFile(filepath.Join(ro, "in.txt"), []byte("from host"), 0o644); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(t.TempDir(), "secret.txt")
	if err := os.WriteFile(outside, []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Symlinks in a volume (absolute, and relative climbing out) must not
	// lead out of it.
	if err := os.Symlink(outside, filepath.Join(ro, "abs-link")); err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(ro, outside)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(rel, filepath.Join(ro, "rel-link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("in.txt", filepath.Join(ro, "in-link")); err != nil {
		t.Fatal(err)
	}
	// The instance manager hands engines directories it opened itself, as
	// /proc/self/fd paths; both forms must confine alike.
	fdPath := func(dir string) string {
		f, err := os.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return fmt.Sprintf("/proc/self/fd/%d", f.Fd())
	}
	for form, preopens := range map[string][]engine.Preopen{
		"path": {{HostPath: ro, GuestPath: "/ro", ReadOnly: true}, {HostPath: rw, GuestPath: "/rw"}},
		"fd":   {{HostPath: fdPath(ro), GuestPath: "/ro", ReadOnly: true}, {HostPath: fdPath(rw), GuestPath: "/rw"}},
	} {
		t.Run(form, func(t *testing.T) { testPreopensAs(t, e, m, preopens, ro, outside) })
	}
	if _, err := os.Stat(filepath.Join(ro, "new.txt")); err == nil {
		t.Error("a file was written into the read-only preopen")
	}
	if b, err := os.ReadFile(filepath.Join(rw, "new.txt")); err != nil || string(b) != "written" {
		t.Errorf("read-write preopen: %q %v", b, err)
	}
}

func testPreopensAs(t *testing.T, e engine.Engine, m engine.Module, preopens []engine.Preopen, ro, outside string) {
	for _, tc := range []struct {
		name   string
		env    []engine.EnvVar
		code   int32
		stdout string
	}{
		{"symlink inside followed", []engine.EnvVar{{Name: "READ_FILE", Value: "/ro/in-link"}}, 0, "read: from host"},
		{"absolute symlink out not followed", []engine.EnvVar{{Name: "READ_FILE", Value: "/ro/abs-link"}}, 4, ""},
		{"relative symlink out not followed", []engine.EnvVar{{Name: "READ_FILE", Value: "/ro/rel-link"}}, 4, ""},
		{"read-only readable", []engine.EnvVar{{Name: "READ_FILE", Value: "/ro/in.txt"}}, 0, "read: from host"},
		{"read-only not writable", []engine.EnvVar{{Name: "WRITE_FILE", Value: "/ro/new.txt"}}, 4, ""},
		{"read-write writable", []engine.EnvVar{{Name: "WRITE_FILE", Value: "/rw/new.txt"}}, 0, "wrote: /rw/new.txt"},
		{"outside not visible", []engine.EnvVar{{Name: "READ_FILE", Value: outside}}, 4, ""},
		{"host root not visible", []engine.EnvVar{{Name: "READ_FILE", Value: "/etc/passwd"}}, 4, ""},
		{"escape by dotdot", []engine.EnvVar{{Name: "READ_FILE", Value: "/ro/../../../../etc/passwd"}}, 4, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb Buffer
			res := run(t, e, m, engine.Spec{Args: []string{"hello"}, Env: tc.env, Preopens: preopens, Stdout: &out, Stderr: &errb})
			if res.ExitCode != tc.code || !strings.Contains(out.String(), tc.stdout) {
				t.Fatalf("result %+v stdout %q stderr %q, want code %d and %q", res, out.String(), errb.String(), tc.code, tc.stdout)
			}
		})
	}
}

func testBadPreopen(t *testing.T, e engine.Engine) {
	m := prepare(t, e, wasmbuild.Wat(t, `(module (func (export "_start")))`))
	_, err := e.Start(context.Background(), m, engine.Spec{Preopens: []engine.Preopen{{HostPath: "/nonexistent/dir", GuestPath: "/data"}}})
	if !errors.Is(err, engine.ErrInstantiate) || !strings.Contains(err.Error(), "/nonexistent/dir") {
		t.Fatalf("start: %v", err)
	}
}

// testStartTimePrecompiled reports how long Start takes for a prepared
// Go-built module (everything from the precompiled artifact to a running
// _start). It only reports: timings on a shared machine are not asserted.
func testStartTimePrecompiled(t *testing.T, e engine.Engine) {
	m := prepare(t, e, wasmbuild.Build(t, "hello"))
	const n = 20
	var ds []time.Duration
	for range n {
		t0 := time.Now()
		inst, err := e.Start(context.Background(), m, engine.Spec{Args: []string{"hello"}, Stdout: &Buffer{}})
		ds = append(ds, time.Since(t0))
		if err != nil {
			t.Fatal(err)
		}
		inst.Wait()
	}
	slices.Sort(ds)
	t.Logf("instance start (precompiled hello, %d runs): p50 %v, max %v", n, ds[n/2], ds[n-1])
}

// lineCounter counts newlines as they arrive.
type lineCounter struct {
	mu    sync.Mutex
	lines int
	last  []byte
}

func (c *lineCounter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lines += bytes.Count(p, []byte("\n"))
	c.last = append(c.last[:0], p...)
	return len(p), nil
}

func testChattyOutputComplete(t *testing.T, e engine.Engine) {
	m := prepare(t, e, wasmbuild.Build(t, "chatty"))
	var c lineCounter
	t0 := time.Now()
	res := run(t, e, m, engine.Spec{Args: []string{"chatty", "200000"}, Stdout: &c})
	if res.ExitCode != 0 || c.lines != 200000 || !bytes.HasSuffix(c.last, []byte("line 200000\n")) {
		t.Fatalf("result %+v, %d lines, last write ends %q", res, c.lines, c.last[max(0, len(c.last)-20):])
	}
	t.Logf("200000 lines in %v", time.Since(t0))
}

// sleepWat sleeps for 30 s in one WASI poll_oneoff call: a module blocked
// in a host call, where epoch interruption cannot reach it; a kill must
// end the sleep itself, so that the instance's thread is freed.
const sleepWat = `(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; subscription at 0: userdata 0, tag 0 (clock), clock id 1 (monotonic),
    ;; timeout 30 s relative, precision 0, flags 0
    (i32.store8 (i32.const 8) (i32.const 0))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 30000000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))`

func testKillBlockedInHostCall(t *testing.T, e engine.Engine) {
	m := prepare(t, e, wasmbuild.Wat(t, sleepWat))
	inst, err := e.Start(context.Background(), m, engine.Spec{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-inst.Done():
		t.Fatalf("sleeper ended early: %+v", inst.Wait())
	case <-time.After(200 * time.Millisecond):
	}
	t0 := time.Now()
	inst.Kill()
	select {
	case <-inst.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("kill of a module blocked in a host call took more than 5s")
	}
	t.Logf("kill of a sleeping module reported after %v", time.Since(t0))
	// The fallback result (reported while the host call goes on) says so.
	if res := inst.Wait(); res.Reason != engine.ReasonKilled || res.Exited || strings.Contains(res.Message, "blocked in a host call") {
		t.Fatalf("result %+v, want Killed with the sleep ended", res)
	}
}

// gateSink holds its first Write until open is closed, and closes held
// when it starts holding.
type gateSink struct {
	once       sync.Once
	held, open chan struct{}
}

func (g *gateSink) Write(p []byte) (int, error) {
	g.once.Do(func() {
		close(g.held)
		<-g.open
	})
	return len(p), nil
}

// testKilledThenExited: a kill that reaches a module blocked in a host
// call a kill cannot end (a write to a sink that is slow to take it) wins
// over what the module does once the call returns: returning from _start
// or proc_exit, with any code, is reported Killed, by the run's end and
// not by the fallback that reports a module still blocked.
func testKilledThenExited(t *testing.T, e engine.Engine) {
	const size = 1 << 20 // beyond any pipe's buffer
	for _, tc := range []struct {
		name string
		code int
	}{{"return from _start", -1}, {"proc_exit 0", 0}, {"proc_exit 3", 3}} {
		t.Run(tc.name, func(t *testing.T) {
			m := prepare(t, e, wasmbuild.Wat(t, writeWat(size, 0, tc.code)))
			out := &gateSink{held: make(chan struct{}), open: make(chan struct{})}
			inst, err := e.Start(context.Background(), m, engine.Spec{Args: []string{"w"}, Stdout: out})
			if err != nil {
				t.Fatal(err)
			}
			defer inst.Kill()
			select {
			case <-out.held:
			case <-time.After(10 * time.Second):
				t.Fatal("the module wrote nothing in 10s")
			}
			// The module's write cannot end while the sink holds: its bytes
			// outrun any buffer between the module and the sink.
			time.Sleep(50 * time.Millisecond)
			select {
			case <-inst.Done():
				t.Fatalf("ended while its output was held: %+v", inst.Wait())
			default:
			}
			inst.Kill()
			close(out.open)
			select {
			case <-inst.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("did not end in 10s after the kill")
			}
			if res := inst.Wait(); res.Reason != engine.ReasonKilled || res.Exited || res.ExitCode != engine.KilledExitCode || strings.Contains(res.Message, "blocked in a host call") {
				t.Fatalf("result %+v, want Killed by the run's end", res)
			}
		})
	}
}

// pollWat polls two clocks at once, 30 ms (userdata 7) and 5 s (userdata
// 9) from now, and exits with the first event's userdata (98: no event).
const pollWat = `(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    ;; subscriptions at 0 and 48: clock 1 (monotonic), relative, flags 0
    (i64.store (i32.const 0) (i64.const 7))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 30000000))
    (i64.store (i32.const 48) (i64.const 9))
    (i32.store (i32.const 64) (i32.const 1))
    (i64.store (i32.const 72) (i64.const 5000000000))
    (if (call $poll (i32.const 0) (i32.const 128) (i32.const 2) (i32.const 256))
      (then (call $exit (i32.const 99))))
    (if (i32.eqz (i32.load (i32.const 256)))
      (then (call $exit (i32.const 98))))
    (call $exit (i32.load (i32.const 128)))))`

// testPollClocks: poll_oneoff returns when the first clock is due, with
// its event first. (wasmtime's reports that one only; wazero's reports
// every clock subscription.)
func testPollClocks(t *testing.T, e engine.Engine) {
	m := prepare(t, e, wasmbuild.Wat(t, pollWat))
	t0 := time.Now()
	res := run(t, e, m, engine.Spec{Args: []string{"poll"}})
	d := time.Since(t0)
	if !res.Exited || res.ExitCode != 7 {
		t.Fatalf("result %+v, want exit code 7 (the 30 ms clock's event first)", res)
	}
	if d < 30*time.Millisecond || d > 4*time.Second {
		t.Fatalf("poll of a 30 ms clock returned after %v", d)
	}
}

// testUsage: a spinning instance reports its linear memory and a CPU time
// that grows, no faster than the wall clock; an ended one keeps its last
// figures.
func testUsage(t *testing.T, e engine.Engine) {
	m := prepare(t, e, wasmbuild.Build(t, "spin"))
	var out Buffer
	inst, err := e.Start(context.Background(), m, engine.Spec{Args: []string{"spin"}, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	defer inst.Kill()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "spinning") {
		if time.Now().After(deadline) {
			t.Fatalf("module did not start spinning: %q", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The CPU time grows as it spins (by 50 ms within 10 s, however busy
	// the machine), and one thread's grows no faster than the wall clock.
	t0, a := time.Now(), inst.Usage()
	b := a
	for b.CPU-a.CPU < 50*time.Millisecond && time.Since(t0) < 10*time.Second {
		time.Sleep(20 * time.Millisecond)
		b = inst.Usage()
	}
	wall := time.Since(t0)
	t.Logf("usage: %+v, %v later %+v", a, wall, b)
	if !a.CPUMeasured || !b.CPUMeasured {
		t.Fatalf("CPU time not measured: %+v %+v", a, b)
	}
	if d := b.CPU - a.CPU; d < 50*time.Millisecond || d > wall+5*time.Millisecond {
		t.Fatalf("CPU time over %v of spinning grew by %v", wall, d)
	}
	// A Go-built module has at least a few pages of linear memory.
	if b.MemoryBytes < 64<<10 || b.MemoryBytes%(64<<10) != 0 {
		t.Fatalf("memory %d bytes: want a positive multiple of the 64 KiB wasm page", b.MemoryBytes)
	}
	inst.Kill()
	inst.Wait()
	c := inst.Usage()
	if c.CPU < b.CPU || c.MemoryBytes != b.MemoryBytes || !c.CPUMeasured {
		t.Fatalf("usage after the end %+v, before %+v: want the last figures", c, b)
	}
}
