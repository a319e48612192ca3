package service

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metricsServer is the Prometheus endpoint: the Go and process collectors
// and the executor's own. A nil *metricsServer is none.
type metricsServer struct {
	hs *http.Server
}

// serveMetrics serves /metrics on addr (a loopback address, checked by
// Config.validate) with the collectors; empty addr: nil, no metrics.
func serveMetrics(addr string, executor prometheus.Collector, log *slog.Logger) (*metricsServer, error) {
	if addr == "" {
		return nil, nil
	}
	reg := prometheus.NewRegistry()
	if err := reg.Register(collectors.NewGoCollector()); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if err := reg.Register(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	if err := reg.Register(executor); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(l)
	log.Info("serving metrics", "address", l.Addr().String())
	return &metricsServer{hs: hs}, nil
}

func (ms *metricsServer) close() {
	if ms != nil {
		ms.hs.Close()
	}
}
