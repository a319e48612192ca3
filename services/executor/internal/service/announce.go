package service

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats.go"

	"github.com/wasmlet/wasmlet/services/executor/internal/announce"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
)

// startAnnouncer announces the executor on NATS to the node agent of
// cfg.Node (nothing without nc); stop sends the leaving announcement and
// waits until NATS has it. running counts the instances held.
func startAnnouncer(ctx context.Context, cfg Config, nc *nats.Conn, running func() int, eng engine.Engine, cpuLimits bool, log *slog.Logger) (stop func(), err error) {
	if nc == nil {
		return func() {}, nil
	}
	a, err := announce.New(announce.Config{
		Conn: nc, ExecutorID: cfg.ID, Flavour: cfg.Flavour, Node: cfg.Node, Address: cfg.Advertise,
		ListenerSocket: cfg.ListenerSocket,
		Engine:         eng.Name(), EngineVersion: eng.Version(), MaxInstances: cfg.MaxInstances, CPULimits: cpuLimits,
		Running: running, Period: cfg.AnnouncePeriod, Log: log,
	})
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(actx); err != nil {
			log.Warn("executor not announced; the node agent finds it only through --executor", "err", err)
		}
	}()
	log.Info("announcing executor", "node", cfg.Node, "flavour", cfg.Flavour, "address", cfg.Advertise, "listener_socket", cfg.ListenerSocket, "period", cfg.AnnouncePeriod)
	return func() { cancel(); <-done }, nil
}
