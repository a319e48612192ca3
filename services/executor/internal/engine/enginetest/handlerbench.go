package enginetest

import (
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/wagi"
)

// BenchServeHandler measures the WAT example handler (examples/wagi-hello)
// in handler mode (package wagi, default pool and bounds) against the
// native Go hello server (examples/httpserver built for this machine), in
// the same run: b.N GET / requests over 1 and 16 keep-alive connections,
// reported as req/s with p50 and p99, and the server's CPU per request in
// microseconds (the handler's: its runs' and instantiations' threads,
// Usage).
//
//	go test -run '^$' -bench ServeHandler -benchtime 20000x ./services/executor/internal/engine/wazero/
func BenchServeHandler(b *testing.B, newEngine NewEngine) {
	h, wasmURL := serveExampleHandler(b, newEngine)
	BenchAgainstNative(b, wasmURL+"/", func() time.Duration { return h.Usage().CPU })
}

// BenchAgainstNative runs b.N GET requests over 1 and 16 keep-alive
// connections against wasmURL ("wasm-c<n>") and against the native hello
// server (examples/httpserver built for this machine, "native-c<n>"),
// taking turns, each reported as req/s, p50 and p99, and the server's
// CPU per request: wasmCPU, and the native process's user+system time.
func BenchAgainstNative(b *testing.B, wasmURL string, wasmCPU func() time.Duration) {
	nativeURL, pid := startNativeHello(b)
	nativeCPU := func() time.Duration { return processCPU(b, pid) }
	for _, c := range []int{1, 16} {
		for _, target := range []struct {
			name, url string
			cpu       func() time.Duration
		}{{"wasm", wasmURL, wasmCPU}, {"native", nativeURL, nativeCPU}} {
			b.Run(target.name+"-c"+strconv.Itoa(c), func(b *testing.B) {
				cpu0 := target.cpu()
				benchGet(b, target.url, c)
				b.ReportMetric(float64(target.cpu()-cpu0)/float64(time.Microsecond)/float64(b.N), "server-µs/req")
			})
		}
	}
}

// startNativeHello builds examples/httpserver for this machine, starts it
// on a loopback port until the benchmark ends, and returns its URL and
// process id once it answers.
func startNativeHello(b *testing.B) (string, int) {
	b.Helper()
	native := filepath.Join(b.TempDir(), "httpserver")
	build := exec.Command("go", "build", "-o", native, "./examples/httpserver")
	build.Dir = moduleRootOf(b)
	if o, err := build.CombinedOutput(); err != nil {
		b.Fatalf("go build examples/httpserver: %v: %s", err, o)
	}
	host, port := LoopbackAddr(b)
	cmd := exec.Command(native)
	cmd.Env = append(os.Environ(), "ADDR="+net.JoinHostPort(host, strconv.Itoa(port)))
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	url := "http://" + net.JoinHostPort(host, strconv.Itoa(port)) + "/"
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			return url, cmd.Process.Pid
		}
		if time.Now().After(deadline) {
			b.Fatalf("the native server at %s does not answer: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serveExampleHandler serves the WAT example handler (examples/wagi-hello)
// on newEngine's engine, default pool and bounds, for the benchmarks; b is
// skipped when the engine does not instantiate ahead.
func serveExampleHandler(b *testing.B, newEngine NewEngine) (*wagi.Handler, string) {
	b.Helper()
	e, ok := newEngine(b, b.TempDir(), nil).(engine.Instantiator)
	if !ok {
		b.Skip("the engine does not instantiate ahead")
	}
	m := prepare(b, e, wasmbuild.WatAt(b, "examples/wagi-hello/hello.wat"))
	// A stderr, as the executor gives every instance (its log shipper's).
	return ServeHandler(b, e, m, engine.Spec{Stderr: io.Discard}, wagi.Config{})
}
