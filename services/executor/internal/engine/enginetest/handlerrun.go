package enginetest

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchHandlerRequest measures what handler mode costs per request with
// no HTTP serving around it: the WAT example handler
// (examples/wagi-hello), default pool and bounds, its ServeHTTP called
// directly with a GET / as net/http would hand it over, by 1 and by 16
// goroutines at once; reported as the process's CPU per request
// (getrusage: the runs, the pool's refills, the goroutines between them)
// beside the time per request.
//
//	go test -run '^$' -bench HandlerRequest -benchtime 20000x ./services/executor/internal/engine/wazero/
func BenchHandlerRequest(b *testing.B, newEngine NewEngine) {
	h, url := serveExampleHandler(b, newEngine)
	local, err := net.ResolveTCPAddr("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		b.Fatal(err)
	}
	want := "Hello from a WebAssembly handler at /\n"
	request := func() {
		r := httptest.NewRequest("GET", url+"/", nil)
		r.Header.Set("User-Agent", "Go-http-client/1.1")
		r.Header.Set("Accept-Encoding", "gzip")
		r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, local))
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != 200 || w.Body.String() != want {
			b.Errorf("GET /: %d %q, want 200 %q", w.Code, w.Body.String(), want)
		}
	}
	for range 100 { // the pool and the threads warm
		request()
	}
	for _, c := range []int{1, 16} {
		b.Run("c"+strconv.Itoa(c), func(b *testing.B) {
			cpu0 := ProcessCPU()
			t0 := time.Now()
			var wg sync.WaitGroup
			next := make(chan struct{}, b.N)
			for range b.N {
				next <- struct{}{}
			}
			close(next)
			for range c {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range next {
						request()
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(t0)
			b.ReportMetric(float64(ProcessCPU()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/req")
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
		})
	}
}
