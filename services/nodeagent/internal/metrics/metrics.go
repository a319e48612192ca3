// Package metrics holds the node agent's Prometheus metrics, served at
// /metrics on the kubelet API (so authorised as nodes/metrics). It
// measures from the outside of what it observes, by decorating it: the
// registry cache (image pulls), each executor's gRPC connection (errors by
// method and code, as interceptors), the Kubernetes client's transport (pod status
// writes) and the pod notifications the provider gives virtual-kubelet
// (pod starts and their latency). Pods by phase are read at scrape time.
// It owns no state of the pods; it registers only on the Registry it is
// given (no global registry).
//
// Usage:
//
//	reg := prometheus.NewRegistry()
//	m := metrics.New(reg)
//	cache = m.Cache(cache)
//	conn, err := grpc.NewClient(addr, m.ExecutorDialOptions(flavour)...)
//	restCfg.Wrap(m.Transport)
//	m.PodPhases(reg, prov.GetPods)
//	// on CreatePod: m.PodCreated(pod); on each notification: m.PodStatus(pod)
package metrics

import (
	"context"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// Agent is the node agent's metrics.
type Agent struct {
	podStarts      prometheus.Counter
	startLatency   prometheus.Histogram
	imagePulls     *prometheus.CounterVec
	executorErrors *prometheus.CounterVec
	statusWrites   *prometheus.CounterVec

	mu      sync.Mutex
	created map[types.UID]time.Time // pods handed to the node, not yet running
}

// New registers the node agent's metrics on reg.
func New(reg prometheus.Registerer) *Agent {
	a := &Agent{
		podStarts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wasmlet_pod_starts_total", Help: "Pods that reached Running on this node.",
		}),
		startLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "wasmlet_pod_start_duration_seconds",
			Help:    "Time from the pod being handed to this node agent to its first Running status.",
			Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
		}),
		imagePulls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wasmlet_image_pulls_total", Help: "Module references resolved through the registry cache, by result.",
		}, []string{"result"}),
		executorErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wasmlet_executor_grpc_errors_total", Help: "Failed gRPC calls to executors, by executor, method and status code.",
		}, []string{"executor", "method", "code"}),
		statusWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wasmlet_pod_status_writes_total", Help: "Pod status writes to the API server, by HTTP status code.",
		}, []string{"code"}),
		created: map[types.UID]time.Time{},
	}
	reg.MustRegister(a.podStarts, a.startLatency, a.imagePulls, a.executorErrors, a.statusWrites)
	return a
}

// PodPhases registers a gauge of the node's pods by phase, read from pods
// at each scrape.
func (a *Agent) PodPhases(reg prometheus.Registerer, pods func(context.Context) ([]*v1.Pod, error)) {
	reg.MustRegister(&phaseCollector{pods: pods, desc: prometheus.NewDesc(
		"wasmlet_pods", "Pods on this node by phase.", []string{"phase"}, nil)})
}

type phaseCollector struct {
	pods func(context.Context) ([]*v1.Pod, error)
	desc *prometheus.Desc
}

func (c *phaseCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *phaseCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[v1.PodPhase]int{v1.PodPending: 0, v1.PodRunning: 0, v1.PodSucceeded: 0, v1.PodFailed: 0}
	pods, _ := c.pods(context.Background())
	for _, p := range pods {
		ph := p.Status.Phase
		if ph == "" {
			ph = v1.PodPending
		}
		counts[ph]++
	}
	for ph, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n), string(ph))
	}
}

// PodCreated notes when a pod was handed to the node; a second call for
// the same pod keeps the first time.
func (a *Agent) PodCreated(pod *v1.Pod) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.created[pod.UID]; !ok {
		a.created[pod.UID] = time.Now()
	}
}

// PodStatus sees a status the node agent reports: the first Running of a
// pod counts a start and its latency.
func (a *Agent) PodStatus(pod *v1.Pod) {
	a.mu.Lock()
	t0, ok := a.created[pod.UID]
	switch pod.Status.Phase {
	case v1.PodRunning, v1.PodSucceeded, v1.PodFailed:
		delete(a.created, pod.UID)
	}
	a.mu.Unlock()
	if ok && pod.Status.Phase == v1.PodRunning {
		a.podStarts.Inc()
		a.startLatency.Observe(time.Since(t0).Seconds())
	}
}

// Cache counts Resolve calls (image pulls) of c. The result keeps c's
// Pinner, when it has one.
func (a *Agent) Cache(c regcache.Cache) regcache.Cache {
	cc := countingCache{Cache: c, pulls: a.imagePulls}
	if p, ok := c.(regcache.Pinner); ok {
		return struct {
			countingCache
			regcache.Pinner
		}{cc, p}
	}
	return cc
}

type countingCache struct {
	regcache.Cache
	pulls *prometheus.CounterVec
}

func (c countingCache) Resolve(ctx context.Context, req regcache.ResolveRequest) (regcache.Resolved, error) {
	r, err := c.Cache.Resolve(ctx, req)
	result := "success"
	if err != nil {
		result = "error"
	}
	c.pulls.WithLabelValues(result).Inc()
	return r, err
}

// Transport counts pod status writes (PUT or PATCH of pods/status) by
// status code; give it to rest.Config.Wrap.
func (a *Agent) Transport(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(req *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(req)
		if (req.Method == http.MethodPut || req.Method == http.MethodPatch) &&
			strings.Contains(req.URL.Path, "/pods/") && strings.HasSuffix(req.URL.Path, "/status") {
			code := "error"
			if err == nil {
				code = strconv.Itoa(resp.StatusCode)
			}
			a.statusWrites.WithLabelValues(code).Inc()
		}
		return resp, err
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// ExecutorDialOptions count the failed calls to the executors of
// flavour by method and status code, as client interceptors; add them to
// the replica's dial. A watch counts when it cannot be opened, not when
// an open one ends.
func (a *Agent) ExecutorDialOptions(flavour string) []grpc.DialOption {
	count := func(method string, err error) {
		if err != nil {
			a.executorErrors.WithLabelValues(flavour, path.Base(method), status.Code(err).String()).Inc()
		}
	}
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			err := invoker(ctx, method, req, reply, cc, opts...)
			count(method, err)
			return err
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			s, err := streamer(ctx, desc, cc, method, opts...)
			count(method, err)
			return s, err
		}),
	}
}
