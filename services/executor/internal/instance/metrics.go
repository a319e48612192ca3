package instance

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/outbox"
)

// metrics are the manager's counters; Collector serves them with what is
// read at scrape time (instances by state, NATS publish fates).
type metrics struct {
	starts       prometheus.Counter
	startLatency prometheus.Histogram
	kills        prometheus.Counter
	// Log records' fates of deleted instances (live ones are read from
	// their shippers at scrape time). m.mu guards it.
	deletedLogs outbox.Stats
}

func newMetrics() metrics {
	return metrics{
		starts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wasmlet_executor_instance_starts_total", Help: "Instances the engine started.",
		}),
		startLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "wasmlet_executor_instance_start_duration_seconds",
			Help:    "Time the engine took to start an instance (instantiate and begin _start), successful or not.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1},
		}),
		kills: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wasmlet_executor_instance_kills_total", Help: "Running instances killed by a stop (grace period over, or none given).",
		}),
	}
}

var (
	descInstances = prometheus.NewDesc("wasmlet_executor_instances", "Instances held, by state.", []string{"state"}, nil)
	descPublished = prometheus.NewDesc("wasmlet_executor_nats_published_total", "Log lines (kind log, however many a message carried) and events (kind event) acknowledged by JetStream.", []string{"kind"}, nil)
	descDropped   = prometheus.NewDesc("wasmlet_executor_nats_dropped_total", "Log lines or events dropped: displaced from a full outbox, left at close, or produced with no NATS; by kind.", []string{"kind"}, nil)
	descFailed    = prometheus.NewDesc("wasmlet_executor_nats_publish_errors_total", "Log lines or events whose publish or acknowledgement failed, by kind.", []string{"kind"}, nil)

	// How the engine came by its precompiled artifacts (engine.ArtifactStats).
	descCompiles = prometheus.NewDesc("wasmlet_executor_compiles_total", "Modules the engine compiled (failed compiles too).", nil, nil)
	descShared   = prometheus.NewDesc("wasmlet_executor_precompiled_shared_gets_total",
		"Precompiled artifacts asked of the shared store (the registry cache) on a local miss, by result: hit (loaded), miss (none stored), corrupt (bytes not matching the stored digest or size), refused (not signed with the executor's artifact key: never loaded), rejected (intact but not loadable), error.", []string{"result"}, nil)
	descSharedPuts = prometheus.NewDesc("wasmlet_executor_precompiled_shared_puts_total", "Precompiled artifacts put to the shared store after a compile, by result (ok, error).", []string{"result"}, nil)
)

// Collector returns the manager's metrics, to register on the executor's
// Registry.
func (m *Manager) Collector() prometheus.Collector { return collector{m} }

type collector struct{ m *Manager }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	c.m.metrics.starts.Describe(ch)
	c.m.metrics.startLatency.Describe(ch)
	c.m.metrics.kills.Describe(ch)
	for _, d := range []*prometheus.Desc{descInstances, descPublished, descDropped, descFailed, descCompiles, descShared, descSharedPuts} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	m.metrics.starts.Collect(ch)
	m.metrics.startLatency.Collect(ch)
	m.metrics.kills.Collect(ch)

	byState := map[instances.State]int{}
	for _, s := range []instances.State{instances.StateCreated, instances.StateRunning, instances.StateExited, instances.StateKilled, instances.StateFailed} {
		byState[s] = 0
	}
	m.mu.Lock()
	logs := m.metrics.deletedLogs
	for _, rec := range m.instances {
		byState[rec.snap.State]++
		if rec.shipper != nil {
			st := rec.shipper.Stats()
			logs.Published += st.Published
			logs.Dropped += st.Dropped
			logs.Failed += st.Failed
		}
	}
	m.mu.Unlock()
	for s, n := range byState {
		ch <- prometheus.MustNewConstMetric(descInstances, prometheus.GaugeValue, float64(n), s.String())
	}
	var events outbox.Stats
	if m.pub != nil {
		events = m.pub.Stats()
	}
	for _, k := range []struct {
		kind string
		st   outbox.Stats
	}{{"log", logs}, {"event", events}} {
		ch <- prometheus.MustNewConstMetric(descPublished, prometheus.CounterValue, float64(k.st.Published), k.kind)
		ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(k.st.Dropped), k.kind)
		ch <- prometheus.MustNewConstMetric(descFailed, prometheus.CounterValue, float64(k.st.Failed), k.kind)
	}
	if r, ok := m.cfg.Engine.(engine.ArtifactReporter); ok {
		st := r.ArtifactStats()
		ch <- prometheus.MustNewConstMetric(descCompiles, prometheus.CounterValue, float64(st.Compiles))
		for result, n := range map[string]uint64{"hit": st.SharedHits, "miss": st.SharedMisses, "corrupt": st.SharedCorrupt, "refused": st.SharedRefused, "rejected": st.SharedRejected, "error": st.SharedErrors} {
			ch <- prometheus.MustNewConstMetric(descShared, prometheus.CounterValue, float64(n), result)
		}
		ch <- prometheus.MustNewConstMetric(descSharedPuts, prometheus.CounterValue, float64(st.SharedPuts), "ok")
		ch <- prometheus.MustNewConstMetric(descSharedPuts, prometheus.CounterValue, float64(st.SharedPutErrors), "error")
	}
}
