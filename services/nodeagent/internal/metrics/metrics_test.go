package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

type fakeCache struct{ fail bool }

func (c fakeCache) Resolve(context.Context, regcache.ResolveRequest) (regcache.Resolved, error) {
	if c.fail {
		return regcache.Resolved{}, errors.New("no")
	}
	return regcache.Resolved{}, nil
}
func (fakeCache) Fetch(context.Context, string) (io.ReadCloser, int64, error) { return nil, 0, nil }

type pinningCache struct{ fakeCache }

func (pinningCache) Pin(context.Context, regcache.PinRequest) error     { return nil }
func (pinningCache) Unpin(context.Context, regcache.UnpinRequest) error { return nil }

type failingExecutor struct {
	executorv1.UnimplementedExecutorServiceServer
}

func (failingExecutor) StopInstance(context.Context, *executorv1.StopInstanceRequest) (*executorv1.StopInstanceResponse, error) {
	return nil, status.Error(codes.NotFound, "gone")
}
func (failingExecutor) GetInfo(context.Context, *executorv1.GetInfoRequest) (*executorv1.GetInfoResponse, error) {
	return &executorv1.GetInfoResponse{}, nil
}

// executorClient is a client of failingExecutor, in memory, dialled with
// opts.
func executorClient(t *testing.T, opts ...grpc.DialOption) executorv1.ExecutorServiceClient {
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	executorv1.RegisterExecutorServiceServer(srv, failingExecutor{})
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }))
	conn, err := grpc.NewClient("passthrough:///executor", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return executorv1.NewExecutorServiceClient(conn)
}

func pod(uid string, phase v1.PodPhase) *v1.Pod {
	return &v1.Pod{ObjectMeta: metav1.ObjectMeta{UID: types.UID(uid)}, Status: v1.PodStatus{Phase: phase}}
}

func TestAgentMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	a := New(reg)
	pods := []*v1.Pod{pod("a", v1.PodRunning), pod("b", v1.PodPending), pod("c", "")}
	a.PodPhases(reg, func(context.Context) ([]*v1.Pod, error) { return pods, nil })

	// A pod starts once, however many Running statuses follow.
	a.PodCreated(pods[0])
	a.PodStatus(pod("a", v1.PodPending))
	a.PodStatus(pods[0])
	a.PodStatus(pods[0])
	// A pod that fails before running is no start.
	a.PodCreated(pod("d", v1.PodPending))
	a.PodStatus(pod("d", v1.PodFailed))

	c := a.Cache(fakeCache{})
	if _, ok := c.(regcache.Pinner); ok {
		t.Error("a cache without Pin gained one")
	}
	c.Resolve(context.Background(), regcache.ResolveRequest{})
	a.Cache(fakeCache{fail: true}).Resolve(context.Background(), regcache.ResolveRequest{})
	if _, ok := a.Cache(pinningCache{}).(regcache.Pinner); !ok {
		t.Error("the cache's Pinner was lost")
	}

	ec := executorClient(t, a.ExecutorDialOptions("wasmtime")...)
	ec.StopInstance(context.Background(), &executorv1.StopInstanceRequest{})
	ec.GetInfo(context.Background(), &executorv1.GetInfoRequest{})

	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			w.WriteHeader(http.StatusConflict)
		}
	}))
	defer srv.Close()
	hc := &http.Client{Transport: a.Transport(http.DefaultTransport)}
	for _, r := range []struct{ method, path string }{
		{http.MethodPatch, "/api/v1/namespaces/ns/pods/p/status"},
		{http.MethodPut, "/api/v1/namespaces/ns/pods/p/status"},
		{http.MethodPatch, "/api/v1/nodes/n/status"}, // not a pod
		{http.MethodGet, "/api/v1/namespaces/ns/pods/p/status"},
	} {
		req, _ := http.NewRequest(r.method, srv.URL+r.path, nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}

	want := `
# HELP wasmlet_executor_grpc_errors_total Failed gRPC calls to executors, by executor, method and status code.
# TYPE wasmlet_executor_grpc_errors_total counter
wasmlet_executor_grpc_errors_total{code="NotFound",executor="wasmtime",method="StopInstance"} 1
# HELP wasmlet_image_pulls_total Module references resolved through the registry cache, by result.
# TYPE wasmlet_image_pulls_total counter
wasmlet_image_pulls_total{result="error"} 1
wasmlet_image_pulls_total{result="success"} 1
# HELP wasmlet_pod_starts_total Pods that reached Running on this node.
# TYPE wasmlet_pod_starts_total counter
wasmlet_pod_starts_total 1
# HELP wasmlet_pod_status_writes_total Pod status writes to the API server, by HTTP status code.
# TYPE wasmlet_pod_status_writes_total counter
wasmlet_pod_status_writes_total{code="200"} 1
wasmlet_pod_status_writes_total{code="409"} 1
# HELP wasmlet_pods Pods on this node by phase.
# TYPE wasmlet_pods gauge
wasmlet_pods{phase="Failed"} 0
wasmlet_pods{phase="Pending"} 2
wasmlet_pods{phase="Running"} 1
wasmlet_pods{phase="Succeeded"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "wasmlet_executor_grpc_errors_total", "wasmlet_image_pulls_total",
		"wasmlet_pod_starts_total", "wasmlet_pod_status_writes_total", "wasmlet_pods"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(a.startLatency); n != 1 {
		t.Errorf("start latency: %d series", n)
	}
}
