// Package service runs the registry cache as its own process (the
// `registry-cache serve` command): it builds the cache (regcache/local),
// its gRPC face (regcache/server) on a unix socket or mutual-TLS TCP, and
// the optional Prometheus endpoint, and serves until the context ends. It
// holds no logic beyond that wiring.
//
// It owns the listeners it opens and, through the cache, Config.Cache.Dir.
// It must not touch flags, the process's signals or its exit: main owns
// those.
//
//	err := service.Run(ctx, service.Config{
//		Listen: "unix:///run/wasmlet/registry.sock",
//		Cache:  local.Config{Dir: "/var/lib/wasmlet/registry"},
//	})
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"

	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/local"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/server"
)

// stopGrace is how long in-flight RPCs may run on once the context ends.
const stopGrace = 5 * time.Second

// Config is what `registry-cache serve` runs.
type Config struct {
	// Listen is unix:///path (created 0600) or, with TLS, tcp://host:port.
	// Required.
	Listen string
	// TLS is the gRPC server's mutual TLS; required for a tcp:// Listen.
	TLS grpcutil.TLS
	// MetricsListen is a loopback host:port to serve Prometheus metrics on
	// at /metrics; empty: none. The metrics name the modules in use, so
	// they are not served beyond loopback.
	MetricsListen string
	// Cache configures the cache; Cache.Dir is required. Run sets its
	// Logger and Metrics.
	Cache local.Config
	// Logger; default slog.Default().
	Logger *slog.Logger
}

func (c *Config) validate() error {
	if c.Listen == "" || c.Cache.Dir == "" {
		return errors.New("the listen address and the cache directory are required")
	}
	if c.MetricsListen != "" && !grpcutil.IsLoopback(c.MetricsListen) {
		return fmt.Errorf("--metrics-listen %s is not a loopback address; metrics are served on loopback only (e.g. 127.0.0.1:9464)", c.MetricsListen)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Run serves the registry cache until ctx ends, then stops gracefully.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	log := cfg.Logger
	ms, err := newMetricsServer(cfg.MetricsListen)
	if err != nil {
		return fmt.Errorf("serve: metrics: %w", err)
	}
	defer ms.close()
	cache, err := newCache(cfg.Cache, log, ms)
	if err != nil {
		return err
	}
	srv, l, err := newGRPCServer(cfg.Listen, cfg.TLS, cache)
	if err != nil {
		return err
	}
	ms.start(log)
	log.Info("serving registry cache", "address", grpcutil.Address(l), "mutual_tls", cfg.TLS.Enabled(), "dir", cfg.Cache.Dir,
		"insecure_registries", strings.Join(cfg.Cache.InsecureHosts, ","), "max_store_bytes", cfg.Cache.MaxStoreBytes)
	err = grpcutil.Serve(ctx, srv, l, stopGrace)
	log.Info("registry cache stopped")
	return err
}

// newCache opens the cache's store, recording into ms's metrics if any.
func newCache(cfg local.Config, log *slog.Logger, ms *metricsServer) (*local.Cache, error) {
	cfg.Logger = log
	if ms != nil {
		cfg.Metrics = ms.cache
	}
	return local.New(cfg)
}

// newGRPCServer listens on addr and registers the cache's service.
func newGRPCServer(addr string, t grpcutil.TLS, cache *local.Cache) (*grpc.Server, net.Listener, error) {
	srv, l, err := grpcutil.NewServer(addr, t)
	if err != nil {
		return nil, nil, err
	}
	server.New(cache).Register(srv)
	return srv, l, nil
}

// metricsServer is the Prometheus endpoint: a registry with the Go and
// process collectors and the cache's metrics, and its listener. A nil
// *metricsServer is none.
type metricsServer struct {
	reg   *prometheus.Registry
	cache *local.Metrics
	l     net.Listener
	hs    *http.Server
}

// newMetricsServer listens on addr (a loopback address, checked by
// Config.validate) before the cache opens, so that a taken port fails
// the start; empty addr: nil, no metrics.
func newMetricsServer(addr string) (*metricsServer, error) {
	if addr == "" {
		return nil, nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := local.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &metricsServer{reg: reg, cache: m, l: l}, nil
}

func (ms *metricsServer) start(log *slog.Logger) {
	if ms == nil {
		return
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(ms.reg, promhttp.HandlerOpts{Registry: ms.reg}))
	ms.hs = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go ms.hs.Serve(ms.l)
	log.Info("serving metrics", "address", ms.l.Addr().String())
}

// close stops the endpoint, or releases its listener when it never started.
func (ms *metricsServer) close() {
	switch {
	case ms == nil:
	case ms.hs != nil:
		ms.hs.Close()
	default:
		ms.l.Close()
	}
}
