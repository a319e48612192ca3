// Package executors is the node agent's view of its executors: a pool of
// gRPC clients keyed by flavour, the routing of a pod to one of them (by its
// RuntimeClass handler, through configuration, else the default), and one
// watch per executor that follows its instance events, resuming from the
// last sequence seen, and notices when an executor restarted (its id
// changed), which means its instances are lost.
//
// It never interprets instance states: it hands them to a Sink.
package executors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	v1 "k8s.io/api/core/v1"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
)

// Sink receives what the watches see.
type Sink interface {
	// InstanceChanged is called for every state change, in order per executor.
	InstanceChanged(flavour string, inst *executorv1.Instance)
	// ExecutorRestarted is called when an executor came back with a new
	// identity: every instance it ran before is gone.
	ExecutorRestarted(flavour string)
}

// Executor is one connected executor.
type Executor struct {
	Flavour string
	Address string
	Client  executorv1.ExecutorServiceClient
	conn    *grpc.ClientConn

	mu      sync.Mutex
	info    *executorv1.GetInfoResponse
	healthy bool
}

// Info returns what the executor last reported, and whether it answered
// its last check.
func (e *Executor) Info() (*executorv1.GetInfoResponse, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.info, e.healthy
}

// Config lists the executors and the routing.
type Config struct {
	// Executors by flavour name, each a gRPC address.
	Executors map[string]string
	// Default is the flavour of pods that name no RuntimeClass.
	Default string
	// Handlers maps a RuntimeClass handler to a flavour.
	Handlers map[string]string
	Log      *slog.Logger
}

// Pool holds the executors.
type Pool struct {
	cfg   Config
	execs map[string]*Executor
}

// New dials every executor (lazily: none need be up yet).
func New(cfg Config) (*Pool, error) {
	if len(cfg.Executors) == 0 {
		return nil, errors.New("executors: at least one executor is required")
	}
	if _, ok := cfg.Executors[cfg.Default]; !ok {
		return nil, fmt.Errorf("executors: default flavour %q is not among the executors", cfg.Default)
	}
	for h, f := range cfg.Handlers {
		if _, ok := cfg.Executors[f]; !ok {
			return nil, fmt.Errorf("executors: handler %q maps to unknown flavour %q", h, f)
		}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	p := &Pool{cfg: cfg, execs: map[string]*Executor{}}
	for name, addr := range cfg.Executors {
		conn, err := grpcutil.Dial(addr)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("executor %s: %w", name, err)
		}
		p.execs[name] = &Executor{Flavour: name, Address: addr, Client: executorv1.NewExecutorServiceClient(conn), conn: conn}
	}
	return p, nil
}

// Close closes every connection.
func (p *Pool) Close() {
	for _, e := range p.execs {
		e.conn.Close()
	}
}

// All returns every executor.
func (p *Pool) All() []*Executor {
	out := make([]*Executor, 0, len(p.execs))
	for _, e := range p.execs {
		out = append(out, e)
	}
	return out
}

// Get returns the executor of a flavour.
func (p *Pool) Get(flavour string) (*Executor, bool) {
	e, ok := p.execs[flavour]
	return e, ok
}

// ErrNoHandler: the pod's RuntimeClass names a handler no executor serves.
var ErrNoHandler = errors.New("runtime handler not served by this node")

// Route picks the executor for a pod whose RuntimeClass has the given
// handler ("" for a pod that names none).
func (p *Pool) Route(pod *v1.Pod, handler string) (*Executor, error) {
	if handler == "" {
		return p.execs[p.cfg.Default], nil
	}
	f, ok := p.cfg.Handlers[handler]
	if !ok {
		if _, direct := p.execs[handler]; !direct {
			return nil, fmt.Errorf("runtimeClass %q has handler %q: %w; served handlers: %v",
				deref(pod.Spec.RuntimeClassName), handler, ErrNoHandler, p.handlerNames())
		}
		f = handler
	}
	return p.execs[f], nil
}

func (p *Pool) handlerNames() []string {
	var out []string
	for h := range p.cfg.Handlers {
		out = append(out, h)
	}
	for f := range p.execs {
		out = append(out, f)
	}
	return out
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// WaitReady waits until every executor answers its health check.
func (p *Pool) WaitReady(ctx context.Context) error {
	for _, e := range p.execs {
		if err := grpcutil.WaitHealthy(ctx, e.conn); err != nil {
			return fmt.Errorf("executor %s at %s: %w", e.Flavour, e.Address, err)
		}
	}
	return nil
}

// Watch follows every executor's instance events into sink until ctx ends.
func (p *Pool) Watch(ctx context.Context, sink Sink) {
	var wg sync.WaitGroup
	for _, e := range p.execs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.watch(ctx, e, sink)
		}()
	}
	wg.Wait()
}

func (p *Pool) watch(ctx context.Context, e *Executor, sink Sink) {
	log := p.cfg.Log.With("executor", e.Flavour)
	var id string
	var after uint64
	for ctx.Err() == nil {
		info, err := e.Client.GetInfo(ctx, &executorv1.GetInfoRequest{})
		e.mu.Lock()
		e.healthy = err == nil
		if err == nil {
			e.info = info
		}
		e.mu.Unlock()
		if err != nil {
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		if id != "" && info.GetExecutorId() != id {
			log.Warn("executor restarted; its instances are lost", "old", id, "new", info.GetExecutorId())
			after = 0
			sink.ExecutorRestarted(e.Flavour)
		}
		id = info.GetExecutorId()
		stream, err := e.Client.WatchInstances(ctx, &executorv1.WatchInstancesRequest{AfterSequence: after})
		if err != nil {
			sleep(ctx, 200*time.Millisecond)
			continue
		}
		for {
			resp, err := stream.Recv()
			if err != nil {
				if ctx.Err() == nil {
					log.Warn("instance watch broke; resuming", "after", after, "err", err)
				}
				break
			}
			inst := resp.GetInstance()
			after = max(after, inst.GetSequence())
			sink.InstanceChanged(e.Flavour, inst)
		}
		e.mu.Lock()
		e.healthy = false
		e.mu.Unlock()
		sleep(ctx, 100*time.Millisecond)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
