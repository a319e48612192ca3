package kubeletapi

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	v1 "k8s.io/api/core/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
)

// FuzzQuery: no query crashes the kubelet API. parseLogOptions accepts
// only values within their bounds, refuses anything else as InvalidInput
// (400), and every route that reads a query answers it without a 500.
// Seeds: f.Add below and testdata/fuzz/FuzzQuery. Run for a while with
//
//	go test -run '^$' -fuzz FuzzQuery -fuzztime 5m ./services/nodeagent/internal/kubeletapi/
func FuzzQuery(f *testing.F) {
	for _, q := range []string{
		"",
		"tailLines=3&follow=true&timestamps=1&limitBytes=10",
		"tailLines=4611686018427387904",
		"tailLines=99999999999999999999999999",
		"tailLines=-1",
		"limitBytes=9223372036854775807",
		"sinceSeconds=9223372036854775807",
		"sinceSeconds=5&sinceTime=2026-01-01T00:00:00Z",
		"sinceTime=0000-01-01T00:00:00Z",
		"sinceTime=9999-12-31T23:59:59.999999999+23:59",
		"follow=maybe&previous=TRUE",
		"tailLines=1&tailLines=-1",
		"tailLines=%00",
		"%zz=1",
		"only_cpu_and_memory=true",
	} {
		f.Add(q)
	}
	h, err := Handler(Routes{
		Pods: func(context.Context) ([]*v1.Pod, error) { return nil, nil },
		ContainerLogs: func(context.Context, string, string, string, LogOptions) (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader("x\n")), nil
		},
		StatsSummary: func(context.Context) (*statsv1alpha1.Summary, error) { return &statsv1alpha1.Summary{}, nil },
		Refuse:       func(context.Context, string, string, string, string) error { return errdefs.InvalidInput("no") },
	}, Limits{}, quietLog())
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, query string) {
		req := httptest.NewRequest("GET", "/containerLogs/ns/p/c", nil)
		req.URL.RawQuery = query
		o, err := parseLogOptions(req)
		if err != nil {
			if !errdefs.IsInvalidInput(err) {
				t.Fatalf("%q: %v is not InvalidInput", query, err)
			}
		} else if o.Tail < 0 || o.Tail > MaxLogCount || o.LimitBytes < 0 || o.LimitBytes > MaxLogCount ||
			o.SinceSeconds < 0 || o.SinceSeconds > MaxSinceSeconds || (o.SinceSeconds > 0 && !o.SinceTime.IsZero()) {
			t.Fatalf("%q: options out of bounds: %+v", query, o)
		}
		for _, path := range []string{"/containerLogs/ns/p/c", "/stats/summary", "/pods", "/exec/ns/p/c"} {
			w := httptest.NewRecorder()
			req := httptest.NewRequest("GET", path, nil)
			req.URL.RawQuery = query
			h.ServeHTTP(w, req)
			if w.Code >= 500 {
				t.Fatalf("GET %s?%s = %d %s", path, query, w.Code, w.Body)
			}
		}
	})
}
