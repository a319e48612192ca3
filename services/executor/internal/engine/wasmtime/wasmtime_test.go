package wasmtime

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// shared is one engine whose artifacts every test reuses: compiling a
// Go-built module takes seconds.
var shared struct {
	once sync.Once
	eng  *Engine
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.eng != nil {
		os.RemoveAll(filepath.Dir(shared.eng.dir))
	}
	os.Exit(code)
}

func sharedEngine(t *testing.T) *Engine {
	t.Helper()
	shared.once.Do(func() {
		dir, err := os.MkdirTemp("", "wasmtime-engine-test-")
		if err != nil {
			shared.err = err
			return
		}
		shared.eng, shared.err = New(Config{CacheDir: dir})
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.eng
}

func digestOf(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func prepare(t *testing.T, e *Engine, path string) engine.Module {
	t.Helper()
	m, err := e.Prepare(context.Background(), digestOf(t, path), path)
	if err != nil {
		t.Fatalf("prepare %s: %v", path, err)
	}
	return m
}

type buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func run(t *testing.T, e *Engine, m engine.Module, spec engine.Spec) engine.Result {
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

func TestHello(t *testing.T) {
	e := sharedEngine(t)
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
			var out, errb buffer
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

func TestWatModules(t *testing.T) {
	e := sharedEngine(t)
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

func TestUnusableModules(t *testing.T) {
	e := sharedEngine(t)
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

func TestKillSpinningWithin50ms(t *testing.T) {
	e := sharedEngine(t)
	m := prepare(t, e, wasmbuild.Build(t, "spin"))
	var out1, out2 buffer
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
	case <-time.After(50 * time.Millisecond):
		t.Fatalf("kill took more than 50ms")
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

func TestMemoryLimitOOMKilled(t *testing.T) {
	e := sharedEngine(t)
	m := prepare(t, e, wasmbuild.Build(t, "oom"))
	var out, errb buffer
	res := run(t, e, m, engine.Spec{Args: []string{"oom"}, MemoryLimitBytes: 64 << 20, Stdout: &out, Stderr: &errb})
	if res.Reason != engine.ReasonOOMKilled || res.Exited || res.ExitCode != engine.KilledExitCode {
		t.Fatalf("result %+v, want OOMKilled; stderr %q", res, firstLine(errb.String()))
	}
	t.Logf("%+v", res)
}

func TestPreopens(t *testing.T) {
	e := sharedEngine(t)
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
	preopens := []engine.Preopen{{HostPath: ro, GuestPath: "/ro", ReadOnly: true}, {HostPath: rw, GuestPath: "/rw"}}
	for _, tc := range []struct {
		name   string
		env    []engine.EnvVar
		code   int32
		stdout string
	}{
		{"read-only readable", []engine.EnvVar{{Name: "READ_FILE", Value: "/ro/in.txt"}}, 0, "read: from host"},
		{"read-only not writable", []engine.EnvVar{{Name: "WRITE_FILE", Value: "/ro/new.txt"}}, 4, ""},
		{"read-write writable", []engine.EnvVar{{Name: "WRITE_FILE", Value: "/rw/new.txt"}}, 0, "wrote: /rw/new.txt"},
		{"outside not visible", []engine.EnvVar{{Name: "READ_FILE", Value: outside}}, 4, ""},
		{"host root not visible", []engine.EnvVar{{Name: "READ_FILE", Value: "/etc/passwd"}}, 4, ""},
		{"escape by dotdot", []engine.EnvVar{{Name: "READ_FILE", Value: "/ro/../../../../etc/passwd"}}, 4, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb buffer
			res := run(t, e, m, engine.Spec{Args: []string{"hello"}, Env: tc.env, Preopens: preopens, Stdout: &out, Stderr: &errb})
			if res.ExitCode != tc.code || !strings.Contains(out.String(), tc.stdout) {
				t.Fatalf("result %+v stdout %q stderr %q, want code %d and %q", res, out.String(), errb.String(), tc.code, tc.stdout)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(ro, "new.txt")); err == nil {
		t.Error("a file was written into the read-only preopen")
	}
	if b, err := os.ReadFile(filepath.Join(rw, "new.txt")); err != nil || string(b) != "written" {
		t.Errorf("read-write preopen: %q %v", b, err)
	}
}

func TestBadPreopen(t *testing.T) {
	e := sharedEngine(t)
	m := prepare(t, e, wasmbuild.Wat(t, `(module (func (export "_start")))`))
	_, err := e.Start(context.Background(), m, engine.Spec{Preopens: []engine.Preopen{{HostPath: "/nonexistent/dir", GuestPath: "/data"}}})
	if !errors.Is(err, engine.ErrInstantiate) || !strings.Contains(err.Error(), "/nonexistent/dir") {
		t.Fatalf("start: %v", err)
	}
}

func TestCorruptArtifactRebuilt(t *testing.T) {
	dir := t.TempDir()
	wasm := wasmbuild.Wat(t, procExit(3))
	digest := digestOf(t, wasm)
	e1, err := New(Config{CacheDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e1.Prepare(context.Background(), digest, wasm); err != nil {
		t.Fatal(err)
	}
	art := e1.modules[digest].artifact
	orig, err := os.ReadFile(art)
	if err != nil {
		t.Fatal(err)
	}
	corrupt := func() {
		t.Helper()
		b := bytes.Clone(orig)
		for i := len(b) / 2; i < len(b)/2+64 && i < len(b); i++ {
			b[i] ^= 0xff
		}
		// Same size, so only the hash can tell.
		if err := os.WriteFile(art, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("new process", func(t *testing.T) {
		corrupt()
		e2, err := New(Config{CacheDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		m, err := e2.Prepare(context.Background(), digest, wasm)
		if err != nil {
			t.Fatal(err)
		}
		if err := verify(art); err != nil {
			t.Fatalf("artifact not rebuilt: %v", err)
		}
		if res := run(t, e2, m, engine.Spec{}); res.ExitCode != 3 {
			t.Fatalf("result %+v", res)
		}
	})
	t.Run("changed under a running process", func(t *testing.T) {
		m, err := e1.Prepare(context.Background(), digest, wasm)
		if err != nil {
			t.Fatal(err)
		}
		corrupt()
		future := time.Now().Add(time.Hour)
		os.Chtimes(art, future, future)
		if res := run(t, e1, m, engine.Spec{}); res.ExitCode != 3 {
			t.Fatalf("result %+v", res)
		}
		if err := verify(art); err != nil {
			t.Fatalf("artifact not rebuilt: %v", err)
		}
	})
	t.Run("missing sidecar", func(t *testing.T) {
		os.Remove(art + ".sha256")
		e3, _ := New(Config{CacheDir: dir})
		if _, err := e3.Prepare(context.Background(), digest, wasm); err != nil {
			t.Fatal(err)
		}
		if err := verify(art); err != nil {
			t.Fatalf("artifact not rebuilt: %v", err)
		}
	})
}

func TestStartTimePrecompiled(t *testing.T) {
	e := sharedEngine(t)
	m := prepare(t, e, wasmbuild.Build(t, "hello"))
	const n = 20
	var total time.Duration
	for range n {
		t0 := time.Now()
		inst, err := e.Start(context.Background(), m, engine.Spec{Args: []string{"hello"}, Stdout: &buffer{}})
		total += time.Since(t0)
		if err != nil {
			t.Fatal(err)
		}
		inst.Wait()
	}
	t.Logf("instance start (precompiled %s, fresh engine, store, WASI, instantiate): %v on average", "hello", total/n)
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

func TestChattyOutputComplete(t *testing.T) {
	e := sharedEngine(t)
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
// in a host call, where epoch interruption cannot reach it.
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

func TestKillBlockedInHostCall(t *testing.T) {
	e := sharedEngine(t)
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
	if res := inst.Wait(); res.Reason != engine.ReasonKilled || res.Exited {
		t.Fatalf("result %+v", res)
	}
}
