// Package announce makes an executor findable: it publishes an
// events.v1.ExecutorAnnouncement (identity, flavour, node, gRPC address,
// listener socket, engine, os/arch, capacity, running instances, health) on
// wasmlet.executors.<node>.<flavour>.<executor> when it starts, every
// Period, whenever a node agent asks on wasmlet.discover.<node>, and once
// with Leaving set when its context ends, so that the node agent it serves
// finds every replica without being given addresses.
//
// It owns only those NATS messages: it never touches instances, and an
// announcement that cannot be sent (NATS away) is logged and tried again
// at the next period — the node agent does not take a missed announcement
// for death.
//
// Usage:
//
//	a, err := announce.New(announce.Config{Conn: nc, Node: "node-1", Flavour: "wasmtime", ...})
//	go a.Run(ctx) // returns after the leaving announcement once ctx ends
package announce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	"github.com/wasmlet/wasmlet/internal/subjects"
)

// DefaultPeriod is how often an executor announces itself.
const DefaultPeriod = 5 * time.Second

// Config is what an announcement says; fields are required unless noted.
type Config struct {
	Conn       *nats.Conn
	ExecutorID string
	Flavour    string
	Node       string
	Address    string // the gRPC address the node agent dials
	// ListenerSocket is the executor's --listener-socket (optional), where
	// the node agent hands over pods' listeners: a path, valid only where
	// the node agent shares the executor's filesystem.
	ListenerSocket string
	Engine         string
	EngineVersion  string
	MaxInstances   int
	// CPULimits: limits.cpu is enforced (the executor has a CPU cgroup).
	CPULimits bool
	// Running reports the instances held now.
	Running func() int
	// Healthy reports whether instances can be run now (optional: always).
	Healthy func() bool
	Period  time.Duration // zero: DefaultPeriod
	Log     *slog.Logger  // optional
}

// Announcer publishes one executor's announcements.
type Announcer struct {
	cfg Config

	mu       sync.Mutex
	seq      uint64
	draining bool
	kick     chan struct{}
}

// New validates cfg and returns an Announcer; call Run.
func New(cfg Config) (*Announcer, error) {
	switch {
	case cfg.Conn == nil:
		return nil, errors.New("announce: a NATS connection is required")
	case cfg.ExecutorID == "", cfg.Flavour == "", cfg.Node == "", cfg.Address == "":
		return nil, errors.New("announce: executor id, flavour, node and address are required")
	case cfg.Running == nil:
		return nil, errors.New("announce: Running is required")
	}
	if cfg.Period <= 0 {
		cfg.Period = DefaultPeriod
	}
	if cfg.Healthy == nil {
		cfg.Healthy = func() bool { return true }
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Announcer{cfg: cfg, kick: make(chan struct{}, 1)}, nil
}

// SetDraining says whether the executor takes new instances; the change is
// announced at once.
func (a *Announcer) SetDraining(d bool) {
	a.mu.Lock()
	a.draining = d
	a.mu.Unlock()
	a.poke()
}

func (a *Announcer) poke() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// Run announces until ctx ends, then sends the leaving announcement and
// waits (at most 2 s) for NATS to take it. It returns nil then, or an
// error if it cannot listen for discovery requests.
func (a *Announcer) Run(ctx context.Context) error {
	sub, err := a.cfg.Conn.Subscribe(subjects.Discover(a.cfg.Node), func(*nats.Msg) { a.poke() })
	if err != nil {
		return fmt.Errorf("announce: subscribe to %s: %w", subjects.Discover(a.cfg.Node), err)
	}
	defer sub.Unsubscribe()
	t := time.NewTicker(a.cfg.Period)
	defer t.Stop()
	for {
		a.publish(false)
		select {
		case <-ctx.Done():
			a.publish(true)
			if err := a.cfg.Conn.FlushTimeout(2 * time.Second); err != nil {
				a.cfg.Log.Warn("leaving announcement not confirmed", "err", err)
			}
			return nil
		case <-t.C:
		case <-a.kick:
		}
	}
}

// Announcement returns what would be published now.
func (a *Announcer) Announcement(leaving bool) *eventsv1.ExecutorAnnouncement {
	a.mu.Lock()
	a.seq++
	seq, draining := a.seq, a.draining
	a.mu.Unlock()
	return &eventsv1.ExecutorAnnouncement{
		ExecutorId:        a.cfg.ExecutorID,
		Flavour:           a.cfg.Flavour,
		Node:              a.cfg.Node,
		Address:           a.cfg.Address,
		ListenerSocket:    a.cfg.ListenerSocket,
		Engine:            a.cfg.Engine,
		EngineVersion:     a.cfg.EngineVersion,
		Os:                runtime.GOOS,
		Arch:              runtime.GOARCH,
		MaxInstances:      int32(a.cfg.MaxInstances),
		RunningInstances:  int32(a.cfg.Running()),
		Healthy:           !leaving && a.cfg.Healthy(),
		Draining:          draining || leaving,
		CpuLimitsEnforced: a.cfg.CPULimits,
		Sequence:          seq,
		Time:              timestamppb.Now(),
		Period:            durationpb.New(a.cfg.Period),
		Leaving:           leaving,
	}
}

func (a *Announcer) publish(leaving bool) {
	b, err := proto.Marshal(a.Announcement(leaving))
	if err != nil {
		a.cfg.Log.Error("encode announcement", "err", err)
		return
	}
	subject := subjects.Executor(a.cfg.Node, a.cfg.Flavour, a.cfg.ExecutorID)
	if err := a.cfg.Conn.Publish(subject, b); err != nil {
		a.cfg.Log.Warn("announce executor", "subject", subject, "err", err)
	}
}
