package enginetest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/wagi"
)

// RunHandler checks handler mode (package wagi) on an engine that
// instantiates ahead (engine.Instantiator), with real HTTP requests on a
// loopback port: the example handler (examples/wagi-hello) answers with
// the request's path (in WAT and in Go); the echo handler (testdata/wasm/wagi-echo) gets the
// CGI environment and the body, and its CGI response (Status, Location,
// headers) is the HTTP one; a trap, an exit code or a malformed response
// answers 500, says why in the log, and the next request is served;
// requests beyond the runs in flight wait and get 503; a client gone
// kills its run; a kill stops serving and frees the port; a drain stops
// taking connections and ends the handler once those in flight are
// answered.
func RunHandler(t *testing.T, newEngine NewEngine) {
	e, ok := newEngine(t, t.TempDir(), nil).(engine.Instantiator)
	if !ok {
		t.Fatal("the engine does not instantiate ahead (engine.Instantiator)")
	}
	echo := prepare(t, e, wasmbuild.WatFile(t, "wagi-echo"))
	t.Run("Hello", func(t *testing.T) { testHandlerHello(t, e, wasmbuild.WatAt(t, "examples/wagi-hello/hello.wat")) })
	t.Run("HelloGo", func(t *testing.T) { testHandlerHello(t, e, wasmbuild.BuildDir(t, "examples/wagi-hello-go")) })
	t.Run("CGI", func(t *testing.T) { testHandlerCGI(t, e, echo) })
	t.Run("Failures", func(t *testing.T) { testHandlerFailures(t, e, echo) })
	t.Run("Busy", func(t *testing.T) { testHandlerBusy(t, e, echo) })
	t.Run("Kill", func(t *testing.T) { testHandlerKill(t, e, echo) })
	t.Run("StartSection", func(t *testing.T) { testHandlerStartSection(t, e) })
	t.Run("FreshState", func(t *testing.T) { testHandlerFreshState(t, e) })
	t.Run("Drain", func(t *testing.T) { testHandlerDrain(t, e, echo) })
}

// ServeHandler serves m in handler mode on a loopback port and returns
// its URL; the handler is killed at the test's end.
func ServeHandler(t testing.TB, e engine.Instantiator, m engine.Module, spec engine.Spec, cfg wagi.Config) (*wagi.Handler, string) {
	t.Helper()
	spec.Listeners = []engine.Listener{{Name: "http", Host: "127.0.0.1"}}
	if spec.MemoryLimitBytes == 0 {
		spec.MemoryLimitBytes = 64 << 20
	}
	h, err := wagi.Serve(context.Background(), e, m, spec, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Kill()
		h.Wait()
	})
	return h, "http://" + h.Addrs()[0].String()
}

func get(t testing.TB, c *http.Client, method, url, body string, header http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return res, string(b)
}

func testHandlerHello(t *testing.T, e engine.Instantiator, wasm string) {
	m := prepare(t, e, wasm)
	h, url := ServeHandler(t, e, m, engine.Spec{}, wagi.Config{Pool: 2})
	for _, path := range []string{"/", "/hi/there", "/a%20b"} {
		res, body := get(t, http.DefaultClient, "GET", url+path, "", nil)
		want := "Hello from a WebAssembly handler at " + strings.ReplaceAll(path, "%20", " ") + "\n"
		if res.StatusCode != 200 || body != want || res.Header.Get("Content-Type") != "text/plain" {
			t.Errorf("GET %s: %d %q (%s), want 200 %q text/plain", path, res.StatusCode, body, res.Header.Get("Content-Type"), want)
		}
	}
	// The pool refills in the background.
	waitFor(t, func() bool { return h.Usage().MemoryBytes > 0 }, "the pool's memory in the handler's usage")
	if u := h.Usage(); !u.CPUMeasured || u.CPU <= 0 {
		t.Errorf("usage %+v: want the runs' CPU", u)
	}
}

func testHandlerCGI(t *testing.T, e engine.Instantiator, m engine.Module) {
	var log Buffer
	_, url := ServeHandler(t, e, m, engine.Spec{Env: []engine.EnvVar{{Name: "GREETING", Value: "hi"}, {Name: "SERVER_SOFTWARE", Value: "not this"}}, Stderr: &log}, wagi.Config{})
	response := "Status: 201 Created\r\nX-Test: yes\nContent-Type: text/x-test\n\nhello\n"
	res, body := get(t, http.DefaultClient, "POST", url+"/some/path?a=b&c=d", response, http.Header{"X-Custom": {"v1", "v2"}, "Content-Type": {"text/cgi"}})
	if res.StatusCode != 201 || res.Header.Get("X-Test") != "yes" || res.Header.Get("Content-Type") != "text/x-test" || res.Header.Get("Status") != "" {
		t.Errorf("response %d %v, want 201 with X-Test and the Content-Type, no Status", res.StatusCode, res.Header)
	}
	rest, ok := strings.CutPrefix(body, "hello\n")
	if !ok {
		t.Fatalf("body %q: want the body written after the headers first", body)
	}
	env := map[string]string{}
	for _, l := range strings.Split(strings.TrimSuffix(rest, "\n"), "\n") {
		k, v, _ := strings.Cut(l, "=")
		env[k] = v
	}
	port := strings.TrimPrefix(url[strings.LastIndex(url, ":"):], ":")
	for k, v := range map[string]string{
		"REQUEST_METHOD": "POST", "PATH_INFO": "/some/path", "SCRIPT_NAME": "", "QUERY_STRING": "a=b&c=d",
		"CONTENT_LENGTH": fmt.Sprint(len(response)), "CONTENT_TYPE": "text/cgi", "SERVER_NAME": "127.0.0.1",
		"SERVER_PORT": port, "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "GATEWAY_INTERFACE": "CGI/1.1",
		"HTTP_X_CUSTOM": "v1, v2", "HTTP_HOST": "127.0.0.1:" + port, "X_FULL_URL": url + "/some/path?a=b&c=d",
		"GREETING": "hi", "SERVER_SOFTWARE": "wasmlet",
	} {
		if got, ok := env[k]; !ok || got != v {
			t.Errorf("%s=%q (set %v), want %q", k, got, ok, v)
		}
	}
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, _ = get(t, noFollow, "POST", url+"/", "Location: /elsewhere\n\n", nil)
	if res.StatusCode != http.StatusFound || res.Header.Get("Location") != "/elsewhere" {
		t.Errorf("Location only: %d %v, want 302 to /elsewhere", res.StatusCode, res.Header)
	}
	res, _ = get(t, noFollow, "POST", url+"/", "Status: 404 Gone away\nContent-Type: text/plain\n\n", nil)
	if res.StatusCode != 404 {
		t.Errorf("Status 404: %d, want 404", res.StatusCode)
	}
	waitFor(t, func() bool { return strings.Contains(log.String(), "echo: handled\n") }, "the handler's stderr in the log")
}

func testHandlerFailures(t *testing.T, e engine.Instantiator, m engine.Module) {
	var log Buffer
	_, url := ServeHandler(t, e, m, engine.Spec{Stderr: &log}, wagi.Config{Pool: 1})
	for _, tc := range []struct{ body, why string }{
		{"trap", "wasm trap: unreachable"},
		{"exit", "exited with code 3"},
		{"no blank line after headers", "malformed CGI response"},
		{"Content-Type: text/plain\nno colon here\n\nbody", "malformed CGI response"},
		{"Status: abc\n\n", "Status \"abc\""},
	} {
		res, body := get(t, http.DefaultClient, "POST", url+"/x", tc.body, nil)
		if res.StatusCode != 500 || !strings.Contains(body, tc.why) {
			t.Errorf("body %q: %d %q, want 500 saying %q", tc.body, res.StatusCode, body, tc.why)
		}
		if !strings.Contains(log.String(), "POST /x answered 500: ") || !strings.Contains(log.String(), tc.why) {
			t.Errorf("log %q: want a line saying why (%q)", log.String(), tc.why)
		}
		res, _ = get(t, http.DefaultClient, "POST", url+"/x", "Content-Type: text/plain\n\nok", nil)
		if res.StatusCode != 200 {
			t.Errorf("after %q: %d, want the next request served", tc.body, res.StatusCode)
		}
	}
}

func testHandlerBusy(t *testing.T, e engine.Instantiator, m engine.Module) {
	h, url := ServeHandler(t, e, m, engine.Spec{}, wagi.Config{Pool: 1, MaxInFlight: 1, QueueTimeout: 300 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	spinning := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "POST", url+"/", strings.NewReader("spin"))
		res, err := http.DefaultClient.Do(req)
		if err == nil {
			res.Body.Close()
		}
		spinning <- err
	}()
	waitFor(t, func() bool { return h.Usage().CPU > 50*time.Millisecond }, "the spinning run to use CPU")
	t0 := time.Now()
	res, _ := get(t, http.DefaultClient, "GET", url+"/", "", nil)
	if res.StatusCode != http.StatusServiceUnavailable || time.Since(t0) < 250*time.Millisecond {
		t.Errorf("a request beyond the one in flight: %d after %v, want 503 after the queue timeout", res.StatusCode, time.Since(t0))
	}
	cancel() // the client goes: its run is killed, its slot freed
	<-spinning
	res, _ = get(t, http.DefaultClient, "POST", url+"/", "Content-Type: text/plain\n\nok", nil)
	if res.StatusCode != 200 {
		t.Errorf("after the spinning client went: %d, want 200", res.StatusCode)
	}
	// Concurrent requests up to the bound are served.
	h2, url2 := ServeHandler(t, e, m, engine.Spec{}, wagi.Config{Pool: 2, MaxInFlight: 4})
	var wg sync.WaitGroup
	errs := make(chan string, 32)
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := http.Post(url2+fmt.Sprintf("/%d", i), "text/plain", strings.NewReader("Content-Type: text/plain\n\nok"))
			if err != nil {
				errs <- err.Error()
				return
			}
			res.Body.Close()
			if res.StatusCode != 200 {
				errs <- res.Status
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error("concurrent request:", e)
	}
	_ = h2
}

func testHandlerKill(t *testing.T, e engine.Instantiator, m engine.Module) {
	h, url := ServeHandler(t, e, m, engine.Spec{}, wagi.Config{})
	addr := h.Addrs()[0].String()
	go http.Post(url+"/", "text/plain", strings.NewReader("spin"))
	waitFor(t, func() bool { return h.Usage().CPU > 20*time.Millisecond }, "the spinning run to start")
	h.Kill()
	select {
	case <-h.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a killed handler with a run in flight did not end in 5s")
	}
	if res := h.Wait(); res.Reason != engine.ReasonKilled || res.ExitCode != engine.KilledExitCode {
		t.Errorf("result %+v, want Killed", res)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("%s still accepts connections after the kill", addr)
	}
	if u := h.Usage(); u.MemoryBytes != 0 {
		t.Errorf("memory %d after the kill, want 0 (nothing held)", u.MemoryBytes)
	}
}

// testHandlerStartSection: a module whose start section writes to stdout
// while it is instantiated ahead, before any request: it goes nowhere,
// nothing breaks, and the request's response is _start's alone.
func testHandlerStartSection(t *testing.T, e engine.Instantiator) {
	m := prepare(t, e, wasmbuild.Wat(t, `(module
		(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
		(memory (export "memory") 1)
		(data (i32.const 100) "Content-Type: text/plain\n\nstarted\n")
		(func $write (param $len i32)
			(i32.store (i32.const 0) (i32.const 100))
			(i32.store (i32.const 4) (local.get $len))
			(drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
		(func $init (call $write (i32.const 12)))
		(start $init)
		(func (export "_start") (call $write (i32.const 34))))`))
	_, url := ServeHandler(t, e, m, engine.Spec{}, wagi.Config{Pool: 2})
	for range 3 {
		res, body := get(t, http.DefaultClient, "GET", url+"/", "", nil)
		if res.StatusCode != 200 || body != "started\n" {
			t.Errorf("GET: %d %q, want 200 \"started\\n\"", res.StatusCode, body)
		}
	}
}

// testHandlerFreshState: every request's run starts from the module's
// initial state, whatever the runs before it changed: a module that
// counts its runs in a global, in its memory (beside its data) and in a
// memory page it grows answers 1 each time, over many requests, one at a
// time and at once (instances of the pool, and made in a burst).
func testHandlerFreshState(t *testing.T, e engine.Instantiator) {
	m := prepare(t, e, wasmbuild.Wat(t, `(module
		(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
		(memory (export "memory") 1)
		(global $runs (mut i32) (i32.const 0))
		(data (i32.const 100) "Content-Type: text/plain\n\nglobal 0 data 0 grown 0\n")
		(func (export "_start") (local $page i32)
			(global.set $runs (i32.add (global.get $runs) (i32.const 1)))
			;; the digit after "data " counts up from '0', in place
			(i32.store8 (i32.const 140) (i32.add (i32.load8_u (i32.const 140)) (i32.const 1)))
			;; a page grown past the initial memory, zero when grown
			(local.set $page (memory.grow (i32.const 1)))
			(i32.store8 (i32.const 70000) (i32.add (i32.load8_u (i32.const 70000)) (i32.const 1)))
			(i32.store8 (i32.const 133) (i32.add (i32.const 48) (global.get $runs)))
			(i32.store8 (i32.const 148) (i32.add (i32.const 48) (i32.load8_u (i32.const 70000))))
			(i32.store (i32.const 0) (i32.const 100))
			(i32.store (i32.const 4) (i32.const 50))
			(drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))`))
	_, url := ServeHandler(t, e, m, engine.Spec{}, wagi.Config{Pool: 2, MaxInFlight: 4})
	want := "global 1 data 1 grown 1\n"
	check := func() {
		res, body := get(t, http.DefaultClient, "GET", url+"/", "", nil)
		if res.StatusCode != 200 || body != want {
			t.Errorf("GET: %d %q, want 200 %q: a run saw what a run before it left", res.StatusCode, body, want)
		}
	}
	for range 20 {
		check()
	}
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				check()
			}
		}()
	}
	wg.Wait()
}

func testHandlerDrain(t *testing.T, e engine.Instantiator, m engine.Module) {
	h, url := ServeHandler(t, e, m, engine.Spec{}, wagi.Config{})
	addr := h.Addrs()[0].String()
	if res, _ := get(t, http.DefaultClient, "POST", url+"/", "Content-Type: text/plain\n\nok", nil); res.StatusCode != 200 {
		t.Fatalf("before the drain: %d", res.StatusCode)
	}
	go http.Post(url+"/", "text/plain", strings.NewReader("spin"))
	waitFor(t, func() bool { return h.Usage().CPU > 20*time.Millisecond }, "the spinning run to start")
	h.Drain()
	waitFor(t, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err != nil
	}, "the draining handler to stop taking connections")
	select {
	case <-h.Done():
		t.Fatal("a draining handler ended with a request in flight")
	case <-time.After(300 * time.Millisecond):
	}
	h.Kill()
	if res := h.Wait(); res.Reason != engine.ReasonKilled {
		t.Errorf("killed while draining: %+v, want Killed", res)
	}

	idle, _ := ServeHandler(t, e, m, engine.Spec{}, wagi.Config{})
	idle.Drain()
	select {
	case <-idle.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a drained handler with nothing in flight did not end in 5s")
	}
	if res := idle.Wait(); !res.Exited || res.ExitCode != 0 || res.Reason != engine.ReasonCompleted {
		t.Errorf("drained: %+v, want Completed", res)
	}
}

func waitFor(t testing.TB, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10s for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
