// Package service runs the executor process: it builds the engine (with
// its CPU limiter and the registry cache's signed store of precompiled
// modules), the NATS link (streams, log spool, outbox), the instance
// manager, the gRPC server with its health service, the optional listener
// socket (package handed), the announcer and the optional Prometheus
// endpoint, each with a small constructor, and serves
// until the context ends; then it kills every instance and gives the
// engine's background artifact puts a few seconds to finish. It holds no
// logic beyond that wiring.
//
// It owns the listeners and connections it opens and, through the
// components, Config.StateDir. It must not touch flags, the process's
// signals, its exit or its confinement: main owns those, and confines the
// process (Config.ConfineConfig) before anything here runs.
//
//	st, err := confine.Apply(cfg.ConfineConfig()) // first: it re-executes the process
//	cfg.Confinement = st
//	err = service.Run(ctx, cfg)
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/wasmlet/wasmlet/internal/binpages"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/services/executor/internal/confine"
	"github.com/wasmlet/wasmlet/services/executor/internal/handed"
	"github.com/wasmlet/wasmlet/services/executor/internal/instance"
	"github.com/wasmlet/wasmlet/services/executor/internal/wagi"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/proxy"
)

const (
	// stopGrace is how long in-flight RPCs may run on once the context ends.
	stopGrace = 5 * time.Second
	// shutdownTimeout bounds the kill of every instance and the wait for
	// the engine's artifact puts at the end.
	shutdownTimeout = 10 * time.Second
)

// Config is what an executor process runs; main fills it from flags.
type Config struct {
	// Listen is the gRPC address served: unix:///path (created 0600) or,
	// with TLS, tcp://host:port. Required.
	Listen string
	// TLS is the gRPC server's mutual TLS (--tls-*).
	TLS grpcutil.TLS
	// Registry is the registry cache's gRPC address. Required.
	Registry string
	// RegistryTLS is the client's mutual TLS to it (--registry-tls-*).
	RegistryTLS grpcutil.TLS
	// ListenerSocket is the path of the unix socket (created 0600) on
	// which the node agent hands over listening sockets for instances
	// (package handoff; Spec.HandedListeners); empty: none are taken.
	ListenerSocket string

	// NATS is the URL logs and events are published to, with NATSToken;
	// empty: none (and no announcements).
	NATS, NATSToken string
	// LogSpoolBytes bounds the on-disk spool of log lines not yet
	// acknowledged by NATS.
	LogSpoolBytes int64

	// StateDir holds modules, compiled artifacts, the log spool and, by
	// default, the artifact key. Required.
	StateDir string
	// Engine is "wasmtime" or "wazero", one of Engines(). Required.
	Engine string
	// CompiledCacheBytes bounds the engine's compiled code on disk; 0: the
	// engine's default.
	CompiledCacheBytes int64
	// QuickFirstCompile: wasmtime compiles a module new to it quickly
	// first and optimised in the background (wasmtime.Config.QuickFirst).
	QuickFirstCompile bool
	// InterpretFirst: wazero starts a module that has no compiled code yet
	// on its interpreter and compiles it in the background
	// (wazero.Config.InterpretFirst).
	InterpretFirst bool
	// Handlers bounds each instance in handler mode (package wagi; zero
	// values: its defaults).
	Handlers wagi.Config
	// ModuleCacheBytes bounds the module files on disk (StateDir/modules);
	// 0: the module store's default.
	ModuleCacheBytes int64
	// CPUCgroup is the cgroup CPU limits are enforced in; empty: not
	// enforced.
	CPUCgroup string
	// SharePrecompiled gets precompiled modules from the registry cache on
	// a local miss and puts there what this executor compiles, signed with
	// the key in ArtifactKeyFile (default StateDir/artifact.key, created
	// when missing).
	SharePrecompiled bool
	ArtifactKeyFile  string

	// ID names this executor in events and announcements. Required.
	ID string
	// MaxInstances is how many instances are held at once. Required.
	MaxInstances int
	// MountRoots hold every preopen's host path.
	MountRoots []string

	// MetricsListen is a loopback host:port to serve Prometheus metrics on
	// at /metrics; empty: none.
	MetricsListen string

	// What it announces on NATS: the flavour, the node it serves, the
	// address the node agent dials, and how often.
	Flavour, Node, Advertise string
	AnnouncePeriod           time.Duration

	// The process's confinement, applied by main through ConfineConfig:
	// Landlock and seccomp (Confine), the user and group it drops to, the
	// extra read-write directories, a network namespace of its own.
	Confine               bool
	RunAsUser, RunAsGroup string
	LandlockRW            []string
	IsolateNetwork        bool
	// Confinement is what confine.Apply reported; GetInfo says it.
	Confinement confine.Status

	// Logger; default slog.Default().
	Logger *slog.Logger
}

func (c *Config) validate() error {
	switch {
	case c.Listen == "" || c.Registry == "" || c.StateDir == "" || c.ID == "":
		return errors.New("the listen and registry addresses, the state directory and the executor id are required")
	case CheckEngine(c.Engine) != nil:
		return CheckEngine(c.Engine)
	case c.MaxInstances <= 0:
		return errors.New("max instances must be positive")
	case c.MetricsListen != "" && !grpcutil.IsLoopback(c.MetricsListen):
		return fmt.Errorf("--metrics-listen %s is not a loopback address; metrics are served on loopback only (e.g. 127.0.0.1:9465)", c.MetricsListen)
	case c.NATS != "" && c.AnnouncePeriod <= 0:
		return errors.New("the announce period must be positive")
	case c.ListenerSocket != "" && !filepath.IsAbs(c.ListenerSocket):
		return fmt.Errorf("--listener-socket %q: want an absolute path", c.ListenerSocket)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Run serves the executor until ctx ends, then kills every instance and
// stops.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	log := cfg.Logger
	cpu, err := newCPULimits(cfg.CPUCgroup, log)
	if err != nil {
		return err
	}
	regConn, err := grpcutil.DialTLS(cfg.Registry, cfg.RegistryTLS)
	if err != nil {
		return err
	}
	defer regConn.Close()
	registry := proxy.New(regConn)
	eng, err := newEngine(cfg, cpu.limiter, registry, log)
	if err != nil {
		return err
	}
	if c, ok := eng.(interface{ Close() }); ok {
		defer c.Close() // cancels the compiles left in the background
	}
	link, err := dialNATS(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer link.close()
	var store *handed.Store
	if cfg.ListenerSocket != "" {
		store = handed.New(handed.Config{Logger: log.With("component", "listener-handoff")})
		l, err := grpcutil.Listen("unix://" + cfg.ListenerSocket)
		if err != nil {
			return fmt.Errorf("listener socket: %w", err)
		}
		hctx, stopHandoff := context.WithCancel(ctx)
		handoffDone := make(chan struct{})
		go func() {
			defer close(handoffDone)
			if err := store.Serve(hctx, l); err != nil {
				log.Error("listener socket failed", "error", err)
			}
		}()
		defer func() { stopHandoff(); <-handoffDone }()
	}
	mgr, err := instance.New(instance.Config{
		ExecutorID:       cfg.ID,
		Engine:           eng,
		Cache:            registry,
		ModuleDir:        filepath.Join(cfg.StateDir, "modules"),
		ModuleCacheBytes: cfg.ModuleCacheBytes,
		JetStream:        link.jetStream(),
		LogOutbox:        link.logOutbox(),
		MaxInstances:     cfg.MaxInstances,
		MountRoots:       cfg.MountRoots,
		Logger:           log,

		CPULimitsEnforced: cpu.limiter != nil,
		CPULimitsWords:    cpu.words,
		Confinement:       confinement(cfg.Confinement),
		Handed:            handedListeners(store),
		Handlers:          cfg.Handlers,
	})
	if err != nil {
		return err
	}
	ms, err := serveMetrics(cfg.MetricsListen, mgr.Collector(), log)
	if err != nil {
		return err
	}
	defer ms.close()
	srv, l, err := newGRPCServer(cfg.Listen, cfg.TLS, mgr)
	if err != nil {
		return err
	}
	log.Info("executor serving", "listen", cfg.Listen, "listener_socket", cfg.ListenerSocket, "mutual_tls", cfg.TLS.Enabled(), "id", cfg.ID, "engine", eng.Name(), "engine_version", eng.Version())
	stopAnnouncing, err := startAnnouncer(ctx, cfg, link.conn(), mgr.Count, eng, cpu.limiter != nil, log)
	if err != nil {
		l.Close()
		return err
	}
	// Start-up is over: its pages of the binary are not the idle
	// executor's (package binpages).
	go binpages.DropAfter(ctx, binpages.Settle, log)
	err = grpcutil.Serve(ctx, srv, l, stopGrace)
	stopAnnouncing()

	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if serr := mgr.Shutdown(sctx); serr != nil {
		log.Warn("shutdown incomplete", "error", serr)
	}
	waitShared(sctx, eng, log)
	log.Info("executor stopped")
	return err
}

// handedListeners is store as the manager takes it: nil without one (a
// nil *handed.Store in the interface would not be nil).
func handedListeners(store *handed.Store) instance.HandedListeners {
	if store == nil {
		return nil
	}
	return store
}
