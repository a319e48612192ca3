package enginetest

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// BenchServe measures the example server (examples/httpserver) on an
// engine that hands over listeners, against the same program built
// natively (the limit), in the same run: b.N GET / requests over 1 and 16
// keep-alive connections from a Go client in this process, reported as
// req/s with p50 and p99 in milliseconds, and the server's CPU per request
// in microseconds (the instance's thread; the native process's user+system
// time), which the load others put on the machine moves less than req/s.
//
//	go test -run '^$' -bench Serve -benchtime 20000x ./services/executor/internal/engine/wazero/
func BenchServe(b *testing.B, newEngine NewEngine) {
	e := newEngine(b, b.TempDir(), nil)
	if s, ok := e.(engine.SocketEngine); !ok || !s.Listeners() {
		b.Skip("the engine hands no listeners to modules")
	}
	m := prepare(b, e, wasmbuild.BuildDir(b, "examples/httpserver"))
	host, port := LoopbackAddr(b)
	out := &Buffer{}
	inst, err := e.Start(context.Background(), m, ServeSpec(b, host, port, out))
	if err != nil {
		b.Fatal(err)
	}
	defer inst.Kill()
	wasmURL := "http://" + net.JoinHostPort(host, strconv.Itoa(port)) + "/"
	WaitHTTP(b, &http.Client{}, wasmURL, inst, out)

	BenchAgainstNative(b, wasmURL, func() time.Duration { return inst.Usage().CPU })
}

// processCPU is the user+system time of process pid, in clock ticks of
// 10 ms (Linux's USER_HZ).
func processCPU(t testing.TB, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command, which is in parentheses: state is
	// field 3, utime and stime fields 14 and 15.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("/proc/%d/stat: %v", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

func benchGet(b *testing.B, url string, conc int) {
	tr := &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var next atomic.Int64
	lat := make([]time.Duration, b.N)
	var wg sync.WaitGroup
	b.ResetTimer()
	t0 := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				s := time.Now()
				resp, err := c.Get(url)
				if err != nil {
					b.Error(err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat[i] = time.Since(s)
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(t0).Seconds(), "req/s")
	report(b, lat)
}

// moduleRootOf is the directory of the module's go.mod.
func moduleRootOf(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(string(out[:len(out)-1]))
}
