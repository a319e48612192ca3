// Package proxy is instances.Runtime over gRPC: each method is one call of
// executor.v1's ExecutorService, its status code turned back into the
// instances sentinel errors (package wire), so that a caller holds the
// same interface as the executor's in-process manager.
//
// It owns no state and does not retry: retries, deadlines and routing
// belong to the caller, or to the connection it passes (any
// grpc.ClientConnInterface, e.g. one that sends each call to the replica a
// pod is bound to). ErrUnavailable means the call did not reach an
// executor.
//
// Usage:
//
//	conn, _ := grpc.NewClient(addr, opts...)
//	var rt instances.Runtime = proxy.New(conn)
//	in, err := rt.Get(ctx, "pod-uid-app-0") // errors.Is(err, instances.ErrNotFound)
package proxy

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/wire"
)

// Proxy implements instances.Runtime over an ExecutorService client.
type Proxy struct {
	c executorv1.ExecutorServiceClient
}

var _ instances.Runtime = (*Proxy)(nil)

// New returns a Runtime whose calls go over cc.
func New(cc grpc.ClientConnInterface) *Proxy {
	return &Proxy{c: executorv1.NewExecutorServiceClient(cc)}
}

// Info implements instances.Runtime.
func (p *Proxy) Info(ctx context.Context) (instances.Info, error) {
	r, err := p.c.GetInfo(ctx, &executorv1.GetInfoRequest{})
	if err != nil {
		return instances.Info{}, wire.FromStatus(err)
	}
	return wire.InfoFromProto(r), nil
}

// Create implements instances.Runtime.
func (p *Proxy) Create(ctx context.Context, id string, spec instances.Spec, start bool) (instances.Instance, error) {
	r, err := p.c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: id, Spec: wire.SpecToProto(spec), Start: start})
	if err != nil {
		return instances.Instance{}, wire.FromStatus(err)
	}
	return wire.InstanceFromProto(r.GetInstance()), nil
}

// Start implements instances.Runtime.
func (p *Proxy) Start(ctx context.Context, id string) (instances.Instance, error) {
	r, err := p.c.StartInstance(ctx, &executorv1.StartInstanceRequest{Id: id})
	if err != nil {
		return instances.Instance{}, wire.FromStatus(err)
	}
	return wire.InstanceFromProto(r.GetInstance()), nil
}

// Stop implements instances.Runtime.
func (p *Proxy) Stop(ctx context.Context, id string, grace time.Duration) (instances.Instance, error) {
	r, err := p.c.StopInstance(ctx, &executorv1.StopInstanceRequest{Id: id, GracePeriod: durationpb.New(grace)})
	if err != nil {
		return instances.Instance{}, wire.FromStatus(err)
	}
	return wire.InstanceFromProto(r.GetInstance()), nil
}

// Delete implements instances.Runtime.
func (p *Proxy) Delete(ctx context.Context, id string, force bool) error {
	_, err := p.c.DeleteInstance(ctx, &executorv1.DeleteInstanceRequest{Id: id, Force: force})
	return wire.FromStatus(err)
}

// Get implements instances.Runtime.
func (p *Proxy) Get(ctx context.Context, id string) (instances.Instance, error) {
	r, err := p.c.GetInstance(ctx, &executorv1.GetInstanceRequest{Id: id})
	if err != nil {
		return instances.Instance{}, wire.FromStatus(err)
	}
	return wire.InstanceFromProto(r.GetInstance()), nil
}

// List implements instances.Runtime.
func (p *Proxy) List(ctx context.Context, selector map[string]string) ([]instances.Instance, uint64, error) {
	r, err := p.c.ListInstances(ctx, &executorv1.ListInstancesRequest{LabelSelector: selector})
	if err != nil {
		return nil, 0, wire.FromStatus(err)
	}
	out := make([]instances.Instance, 0, len(r.GetInstances()))
	for _, in := range r.GetInstances() {
		out = append(out, wire.InstanceFromProto(in))
	}
	return out, r.GetSequence(), nil
}

// Watch implements instances.Runtime. The stream ends when fn returns an
// error, ctx ends, or the server ends it (ErrBehind, ErrUnavailable, ...).
func (p *Proxy) Watch(ctx context.Context, after uint64, id string, fn func(instances.Instance) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := p.c.WatchInstances(ctx, &executorv1.WatchInstancesRequest{AfterSequence: after, Id: id})
	if err != nil {
		return wire.FromStatus(err)
	}
	for {
		r, err := stream.Recv()
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return cerr
			}
			return wire.FromStatus(err)
		}
		if err := fn(wire.InstanceFromProto(r.GetInstance())); err != nil {
			return err
		}
	}
}

// Stats implements instances.Runtime.
func (p *Proxy) Stats(ctx context.Context, selector map[string]string) ([]instances.Stats, error) {
	r, err := p.c.ListInstanceStats(ctx, &executorv1.ListInstanceStatsRequest{LabelSelector: selector})
	if err != nil {
		return nil, wire.FromStatus(err)
	}
	out := make([]instances.Stats, 0, len(r.GetStats()))
	for _, s := range r.GetStats() {
		out = append(out, wire.StatsFromProto(s))
	}
	return out, nil
}
