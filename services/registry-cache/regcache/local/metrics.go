package local

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
)

// Metrics are the cache's Prometheus metrics. A nil *Metrics records
// nothing, so a Cache without Config.Metrics needs no checks.
//
// A Resolve is a hit when the module was already in the store (under
// PullAlways the origin is still asked for the manifest) and a miss when
// its bytes had to come from the origin, including when it waited on a
// download another caller started. GetPrecompiled counts hits and misses
// with kind="precompiled".
type Metrics struct {
	hits           *prometheus.CounterVec
	misses         *prometheus.CounterVec
	originBytes    prometheus.Counter
	originRequests *prometheus.CounterVec
	pullDuration   *prometheus.HistogramVec
	errors         *prometheus.CounterVec
	servedBytes    prometheus.Counter
	storeBytes     prometheus.Gauge
	storeBlobs     prometheus.Gauge
	pinnedBlobs    prometheus.Gauge
	evictions      prometheus.Counter
	evictedBytes   prometheus.Counter
}

// NewMetrics creates the metrics and registers them with reg (never a
// global registry: main owns it).
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	const ns, sub = "wasmlet", "registry_cache"
	m := &Metrics{
		hits: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "hits_total",
			Help: "Requests served from the store without fetching the artifact's bytes from the origin, by kind (module, precompiled)."}, []string{"kind"}),
		misses: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "misses_total",
			Help: "Requests whose artifact was not in the store, by kind (module: fetched from the origin; precompiled: not found)."}, []string{"kind"}),
		originBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "origin_bytes_total",
			Help: "Bytes of manifests and blobs read from origin registries."}),
		originRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "origin_requests_total",
			Help: "Manifest and blob fetches sent to origin registries, by kind (manifest, blob)."}, []string{"kind"}),
		pullDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "pull_duration_seconds",
			Help:    "Duration of pulls from an origin registry (one per shared pull, not per waiting request), by result (ok, error).",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}, []string{"result"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "errors_total",
			Help: "Failed requests, by operation and kind of error."}, []string{"op", "kind"}),
		servedBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "served_bytes_total",
			Help: "Bytes of blobs opened for callers (Fetch and GetPrecompiled), counted at open."}),
		storeBytes: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "store_bytes",
			Help: "Bytes of blobs in the store."}),
		storeBlobs: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "store_blobs",
			Help: "Blobs in the store."}),
		pinnedBlobs: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "pinned_blobs",
			Help: "Blobs held by at least one pin."}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "evictions_total",
			Help: "Blobs evicted to keep the store within its budget."}),
		evictedBytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "evicted_bytes_total",
			Help: "Bytes of blobs evicted."}),
	}
	for _, c := range []prometheus.Collector{m.hits, m.misses, m.originBytes, m.originRequests, m.pullDuration, m.errors,
		m.servedBytes, m.storeBytes, m.storeBlobs, m.pinnedBlobs, m.evictions, m.evictedBytes} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

func (m *Metrics) hit(kind string) {
	if m != nil {
		m.hits.WithLabelValues(kind).Inc()
	}
}

func (m *Metrics) miss(kind string) {
	if m != nil {
		m.misses.WithLabelValues(kind).Inc()
	}
}

func (m *Metrics) originRequest(kind string) {
	if m != nil {
		m.originRequests.WithLabelValues(kind).Inc()
	}
}

func (m *Metrics) originRead(n int64) {
	if m != nil {
		m.originBytes.Add(float64(n))
	}
}

func (m *Metrics) pulled(start time.Time, err error) {
	if m != nil {
		result := "ok"
		if err != nil {
			result = "error"
		}
		m.pullDuration.WithLabelValues(result).Observe(time.Since(start).Seconds())
	}
}

func (m *Metrics) failed(op string, err error) {
	if m != nil && err != nil {
		m.errors.WithLabelValues(op, ErrorKind(err)).Inc()
	}
}

func (m *Metrics) served(n int64) {
	if m != nil {
		m.servedBytes.Add(float64(n))
	}
}

func (m *Metrics) setStore(bytes int64, blobs int) {
	if m != nil {
		m.storeBytes.Set(float64(bytes))
		m.storeBlobs.Set(float64(blobs))
	}
}

func (m *Metrics) setPinned(n int) {
	if m != nil {
		m.pinnedBlobs.Set(float64(n))
	}
}

func (m *Metrics) evicted(size int64) {
	if m != nil {
		m.evictions.Inc()
		m.evictedBytes.Add(float64(size))
	}
}

// ErrorKind names the kind of a cache error for metrics: the regcache
// sentinel it wraps, a context error, or "other".
func ErrorKind(err error) string {
	for _, k := range []struct {
		err  error
		name string
	}{
		{regcache.ErrInvalidReference, "invalid_reference"},
		{regcache.ErrNotFound, "not_found"},
		{regcache.ErrUnauthorized, "unauthorized"},
		{regcache.ErrNotWasm, "not_wasm"},
		{regcache.ErrDigestMismatch, "digest_mismatch"},
		{regcache.ErrTooLarge, "too_large"},
		{regcache.ErrUnavailable, "unavailable"},
		{context.DeadlineExceeded, "deadline_exceeded"},
		{context.Canceled, "canceled"},
	} {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return "other"
}
