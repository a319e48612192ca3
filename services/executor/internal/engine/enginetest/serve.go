package enginetest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// IdleCPUBound is the most CPU an idle serving instance may use, as a
// share of one core.
const IdleCPUBound = 0.05

// RunServe checks listeners with the example server (examples/httpserver,
// Go net/http): an engine that hands them over (engine.SocketEngine)
// serves real HTTP on a loopback address, idles at next to no CPU, says
// which fd is which, closes connections the module closes, releases the
// port when killed, fails with ErrPortInUse on a taken port, and opens
// them inside a network namespace (as root), and serves on one handed over
// already open; any other engine refuses them with ErrUnsupported.
func RunServe(t *testing.T, newEngine NewEngine) {
	e := newEngine(t, t.TempDir(), nil)
	if s, ok := e.(engine.SocketEngine); !ok || !s.Listeners() {
		t.Run("Refused", func(t *testing.T) { testListenersRefused(t, e) })
		return
	}
	m := prepare(t, e, wasmbuild.BuildDir(t, "examples/httpserver"))
	t.Run("HTTP", func(t *testing.T) { testServeHTTP(t, e, m) })
	t.Run("PortInUse", func(t *testing.T) { testPortInUse(t, e, m) })
	t.Run("NetNS", func(t *testing.T) { testServeNetNS(t, e, m) })
	t.Run("KillBlockedAccept", func(t *testing.T) { testKillBlockedAccept(t, e) })
	t.Run("IPv6", func(t *testing.T) { testServeIPv6(t, e, m) })
	t.Run("Handed", func(t *testing.T) { testServeHanded(t, e, m) })
}

// testServeHanded: a listener handed over already open (Listener.File, as
// the node agent hands one from a pod's namespace) is the very socket the
// module serves on; the caller's copies closed, the instance holds the
// only one, and a kill frees the port.
func testServeHanded(t *testing.T, e engine.Engine, m engine.Module) {
	host, port := LoopbackAddr(t)
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	spec := ServeSpec(t, "", 0, nil)
	out := &Buffer{}
	spec.Stdout, spec.Stderr = out, out
	spec.Listeners = []engine.Listener{{Name: "http", File: f}}
	inst, err := e.Start(context.Background(), m, spec)
	f.Close()
	l.Close()
	if err != nil {
		t.Fatalf("start with a handed listener: %v", err)
	}
	defer inst.Kill()
	c := &http.Client{Timeout: 10 * time.Second}
	if body := WaitHTTP(t, c, "http://"+addr+"/", inst, out); body != "Hello from WebAssembly, pod p1!\n" {
		t.Errorf("GET / on the handed listener: %q", body)
	}
	inst.Kill()
	select {
	case <-inst.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a serving instance did not end within 5 s of a kill")
	}
	free, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the handed port of a killed server is not free: %v", err)
	}
	free.Close()
}

// testServeIPv6: a listener on an IPv6 address (::1).
func testServeIPv6(t *testing.T, e engine.Engine, m engine.Module) {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	out := &Buffer{}
	inst, err := e.Start(context.Background(), m, ServeSpec(t, "::1", port, out))
	if err != nil {
		t.Fatalf("start on [::1]:%d: %v", port, err)
	}
	defer inst.Kill()
	if body := WaitHTTP(t, &http.Client{Timeout: 5 * time.Second}, fmt.Sprintf("http://[::1]:%d/", port), inst, out); !strings.Contains(body, "Hello from WebAssembly") {
		t.Errorf("GET /: %q", body)
	}
}

// testKillBlockedAccept: a module blocked in sock_accept on a blocking
// listener (nothing connects) ends at a kill, and its port is free at once.
func testKillBlockedAccept(t *testing.T, e engine.Engine) {
	m := prepare(t, e, wasmbuild.Wat(t, `(module
  (import "wasi_snapshot_preview1" "sock_accept" (func $accept (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (drop (call $accept (i32.const 3) (i32.const 0) (i32.const 0)))))`))
	host, port := LoopbackAddr(t)
	inst, err := e.Start(context.Background(), m, engine.Spec{Listeners: []engine.Listener{{Name: "http", Host: host, Port: port}}})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	select {
	case <-inst.Done():
		t.Fatalf("sock_accept did not block: %+v", inst.Wait())
	default:
	}
	t0 := time.Now()
	inst.Kill()
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("the port of a killed instance is not free at once: %v", err)
	}
	l.Close()
	select {
	case <-inst.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("an instance blocked in sock_accept did not end within 5 s of a kill")
	}
	t.Logf("ended %v after the kill: %+v", time.Since(t0).Round(time.Millisecond), inst.Wait())
}

func testListenersRefused(t *testing.T, e engine.Engine) {
	m := prepare(t, e, wasmbuild.Wat(t, `(module (func (export "_start")))`))
	_, err := e.Start(context.Background(), m, engine.Spec{Listeners: []engine.Listener{{Name: "http", Host: "127.0.0.1", Port: 1}}})
	if !errors.Is(err, engine.ErrUnsupported) {
		t.Fatalf("start with a listener: %v, want ErrUnsupported", err)
	}
	t.Logf("refused: %v", err)
}

// LoopbackAddr is a loopback address of 127.0.0.0/8 other than 127.0.0.1
// with a port free on it, for a test's listener.
func LoopbackAddr(t testing.TB) (string, int) {
	t.Helper()
	host := fmt.Sprintf("127.0.%d.%d", rand.IntN(250)+1, rand.IntN(250)+2)
	l, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return host, port
}

// ServeSpec is the spec of the example server on host:port, with a
// preopened directory before its socket (so LISTEN_FDS_START is 4).
func ServeSpec(t testing.TB, host string, port int, out io.Writer) engine.Spec {
	return engine.Spec{
		Args:      []string{"httpserver"},
		Env:       []engine.EnvVar{{Name: "POD_NAME", Value: "p1"}},
		Preopens:  []engine.Preopen{{HostPath: t.TempDir(), GuestPath: "/data"}},
		Listeners: []engine.Listener{{Name: "http", Host: host, Port: port}},
		Stdout:    out, Stderr: out,
	}
}

// WaitHTTP gets url until it answers 200 (at most 30 s) and returns the body.
func WaitHTTP(t testing.TB, c *http.Client, url string, inst engine.Instance, out fmt.Stringer) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get(url)
		if err == nil {
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == http.StatusOK {
				return string(b)
			}
		}
		select {
		case <-inst.Done():
			t.Fatalf("the server ended before it answered: %+v; output: %s", inst.Wait(), out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: no answer in 30 s (%v); output: %s", url, err, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testServeHTTP(t *testing.T, e engine.Engine, m engine.Module) {
	host, port := LoopbackAddr(t)
	out := &Buffer{}
	inst, err := e.Start(context.Background(), m, ServeSpec(t, host, port, out))
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	defer inst.Kill()
	url := fmt.Sprintf("http://%s:%d/", host, port)
	c := &http.Client{Timeout: 10 * time.Second}
	if body := WaitHTTP(t, c, url, inst, out); body != "Hello from WebAssembly, pod p1!\n" {
		t.Errorf("GET /: %q", body)
	}
	if !strings.Contains(out.String(), "serving on") {
		t.Errorf("the server did not say where it serves: %s", out)
	}

	// Keep-alive requests, and one the server closes (HTTP/1.0): the
	// client must see the connection end, not wait for a garbage collection.
	t0 := time.Now()
	const n = 200
	for range n {
		resp, err := c.Get(url + "healthz")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "ok\n" {
			t.Fatalf("GET /healthz: %q", b)
		}
	}
	t.Logf("%d sequential keep-alive requests: %.0f req/s", n, n/time.Since(t0).Seconds())
	conn, err := net.Dial("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(conn, "GET / HTTP/1.0\r\n\r\n")
	all, err := io.ReadAll(conn)
	conn.Close()
	if err != nil || !strings.Contains(string(all), "Hello from WebAssembly") {
		t.Errorf("HTTP/1.0 request: the connection did not end with the answer: %v, %q", err, all)
	}

	// Idle, with a keep-alive connection open: next to no CPU.
	idle, err := net.Dial("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	fmt.Fprint(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	r := bufio.NewReader(idle)
	if resp, err := http.ReadResponse(r, nil); err != nil {
		t.Fatal(err)
	} else {
		io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	time.Sleep(300 * time.Millisecond)
	u0, p0, w0 := inst.Usage(), ProcessCPU(), time.Now()
	time.Sleep(2 * time.Second)
	u1, p1, wall := inst.Usage(), ProcessCPU(), time.Since(w0)
	if !u1.CPUMeasured {
		t.Fatal("the instance's CPU time is not measured")
	}
	share := float64(u1.CPU-u0.CPU) / float64(wall)
	t.Logf("idle serving instance: %.2f%% of a core (thread CPU %v over %v; process %v)", 100*share, u1.CPU-u0.CPU, wall.Round(time.Millisecond), p1-p0)
	if share > IdleCPUBound {
		t.Errorf("an idle server used %.1f%% of a core, want < %.0f%%", 100*share, 100*IdleCPUBound)
	}

	// Still serving after idling, on the connection kept open.
	fmt.Fprint(idle, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	idle.SetDeadline(time.Now().Add(5 * time.Second))
	if resp, err := http.ReadResponse(r, nil); err != nil {
		t.Fatalf("request on the idle connection: %v", err)
	} else {
		resp.Body.Close()
	}

	inst.Kill()
	select {
	case <-inst.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a serving instance did not end within 5 s of a kill")
	}
	if res := inst.Wait(); res.Reason != engine.ReasonKilled {
		t.Errorf("killed server: %+v", res)
	}
	// The connection the module held is closed with it, and the port free.
	if _, err := r.ReadByte(); err == nil {
		t.Error("a connection the killed server held is still open")
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("the port of a killed server is not free: %v", err)
	}
	l.Close()
}

func testPortInUse(t *testing.T, e engine.Engine, m engine.Module) {
	host, port := LoopbackAddr(t)
	taken, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	inst, err := e.Start(context.Background(), m, ServeSpec(t, host, port, nil))
	if err == nil {
		inst.Kill()
		t.Fatal("started on a port in use")
	}
	if !errors.Is(err, engine.ErrPortInUse) || !strings.Contains(err.Error(), strconv.Itoa(port)) || !strings.Contains(err.Error(), `"http"`) {
		t.Fatalf("start on a port in use: %v; want ErrPortInUse naming the listener and port", err)
	}
	t.Logf("port in use: %v", err)
}

// NetNS makes a network namespace named prefix-<pid>-<random> with its
// loopback up, deleted when t ends, and returns its name and path
// (/var/run/netns/<name>). It skips t where none can be made (not root, no
// ip command).
func NetNS(t testing.TB, prefix string) (name, path string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("making a network namespace needs root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip command (iproute2)")
	}
	name = fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), rand.IntN(1e6))
	if b, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Skipf("ip netns add: %v: %s", err, b)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", name).Run() })
	if b, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ip link set lo up: %v: %s", err, b)
	}
	return name, "/var/run/netns/" + name
}

// testServeNetNS opens the listener in a network namespace the test makes:
// it answers there, and nothing listens on the host's loopback.
func testServeNetNS(t *testing.T, e engine.Engine, m engine.Module) {
	_, ns := NetNS(t, "wasmlet-test")
	_, port := LoopbackAddr(t)
	hostAddr := fmt.Sprintf("127.0.0.1:%d", port)
	spec := ServeSpec(t, "", port, &Buffer{})
	spec.NetNS = ns
	out := spec.Stdout.(*Buffer)
	inst, err := e.Start(context.Background(), m, spec)
	if err != nil {
		t.Fatalf("start in %s: %v", ns, err)
	}
	defer inst.Kill()
	get := func() (string, error) {
		var body string
		err := engine.InNetNS(ns, func() error {
			c, err := net.DialTimeout("tcp", hostAddr, time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprint(c, "GET / HTTP/1.0\r\n\r\n")
			b, err := io.ReadAll(c)
			body = string(b)
			return err
		})
		return body, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		body, err := get()
		if err == nil && strings.Contains(body, "Hello from WebAssembly") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer inside %s: %v %q; output: %s", ns, err, body, out)
		}
		select {
		case <-inst.Done():
			t.Fatalf("the server ended: %+v; output: %s", inst.Wait(), out)
		case <-time.After(20 * time.Millisecond):
		}
	}
	c, err := net.DialTimeout("tcp", hostAddr, time.Second)
	if err == nil {
		c.Close()
		t.Fatalf("the server in %s is reachable from the host's loopback at %s", ns, hostAddr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Logf("host dial: %v", err)
	}
}
