// Package server serves an instances.Runtime (the executor's manager) as
// wasmlet.executor.v1's ExecutorService: each RPC checks what only the
// wire can get wrong, calls the Runtime, and translates with package wire.
// It holds no state of its own and must not make lifecycle decisions.
//
// Usage:
//
//	srv := grpc.NewServer()
//	executorv1.RegisterExecutorServiceServer(srv, server.New(mgr))
package server

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/wire"
)

// Server implements executorv1.ExecutorServiceServer.
type Server struct {
	executorv1.UnimplementedExecutorServiceServer
	rt instances.Runtime
}

var _ executorv1.ExecutorServiceServer = (*Server)(nil)

// New returns a Server over rt.
func New(rt instances.Runtime) *Server { return &Server{rt: rt} }

// GetInfo implements executorv1.ExecutorServiceServer.
func (s *Server) GetInfo(ctx context.Context, _ *executorv1.GetInfoRequest) (*executorv1.GetInfoResponse, error) {
	info, err := s.rt.Info(ctx)
	if err != nil {
		return nil, wire.ToStatus(err)
	}
	return wire.InfoToProto(info), nil
}

// CreateInstance implements executorv1.ExecutorServiceServer.
func (s *Server) CreateInstance(ctx context.Context, req *executorv1.CreateInstanceRequest) (*executorv1.CreateInstanceResponse, error) {
	if req.GetSpec() == nil {
		return nil, status.Error(codes.InvalidArgument, "create instance: spec is required")
	}
	in, err := s.rt.Create(ctx, req.GetId(), wire.SpecFromProto(req.GetSpec()), req.GetStart())
	if err != nil {
		return nil, wire.ToStatus(err)
	}
	return &executorv1.CreateInstanceResponse{Instance: wire.InstanceToProto(in)}, nil
}

// StartInstance implements executorv1.ExecutorServiceServer.
func (s *Server) StartInstance(ctx context.Context, req *executorv1.StartInstanceRequest) (*executorv1.StartInstanceResponse, error) {
	in, err := s.rt.Start(ctx, req.GetId())
	if err != nil {
		return nil, wire.ToStatus(err)
	}
	return &executorv1.StartInstanceResponse{Instance: wire.InstanceToProto(in)}, nil
}

// StopInstance implements executorv1.ExecutorServiceServer.
func (s *Server) StopInstance(ctx context.Context, req *executorv1.StopInstanceRequest) (*executorv1.StopInstanceResponse, error) {
	g := req.GetGracePeriod()
	if g != nil && (g.CheckValid() != nil || g.AsDuration() < 0) {
		return nil, status.Errorf(codes.InvalidArgument, "stop instance %s: grace period must be a non-negative duration", req.GetId())
	}
	in, err := s.rt.Stop(ctx, req.GetId(), g.AsDuration())
	if err != nil {
		return nil, wire.ToStatus(err)
	}
	return &executorv1.StopInstanceResponse{Instance: wire.InstanceToProto(in)}, nil
}

// DeleteInstance implements executorv1.ExecutorServiceServer.
func (s *Server) DeleteInstance(ctx context.Context, req *executorv1.DeleteInstanceRequest) (*executorv1.DeleteInstanceResponse, error) {
	if err := s.rt.Delete(ctx, req.GetId(), req.GetForce()); err != nil {
		return nil, wire.ToStatus(err)
	}
	return &executorv1.DeleteInstanceResponse{}, nil
}

// GetInstance implements executorv1.ExecutorServiceServer.
func (s *Server) GetInstance(ctx context.Context, req *executorv1.GetInstanceRequest) (*executorv1.GetInstanceResponse, error) {
	in, err := s.rt.Get(ctx, req.GetId())
	if err != nil {
		return nil, wire.ToStatus(err)
	}
	return &executorv1.GetInstanceResponse{Instance: wire.InstanceToProto(in)}, nil
}

// ListInstances implements executorv1.ExecutorServiceServer.
func (s *Server) ListInstances(ctx context.Context, req *executorv1.ListInstancesRequest) (*executorv1.ListInstancesResponse, error) {
	ins, seq, err := s.rt.List(ctx, req.GetLabelSelector())
	if err != nil {
		return nil, wire.ToStatus(err)
	}
	resp := &executorv1.ListInstancesResponse{Sequence: seq}
	for _, in := range ins {
		resp.Instances = append(resp.Instances, wire.InstanceToProto(in))
	}
	return resp, nil
}

// WatchInstances implements executorv1.ExecutorServiceServer. A watcher
// behind the changes kept gets OutOfRange (instances.ErrBehind).
func (s *Server) WatchInstances(req *executorv1.WatchInstancesRequest, stream grpc.ServerStreamingServer[executorv1.WatchInstancesResponse]) error {
	err := s.rt.Watch(stream.Context(), req.GetAfterSequence(), req.GetId(), func(in instances.Instance) error {
		return stream.Send(&executorv1.WatchInstancesResponse{Instance: wire.InstanceToProto(in)})
	})
	return wire.ToStatus(err)
}

// ListInstanceStats implements executorv1.ExecutorServiceServer.
func (s *Server) ListInstanceStats(ctx context.Context, req *executorv1.ListInstanceStatsRequest) (*executorv1.ListInstanceStatsResponse, error) {
	stats, err := s.rt.Stats(ctx, req.GetLabelSelector())
	if err != nil {
		return nil, wire.ToStatus(err)
	}
	resp := &executorv1.ListInstanceStatsResponse{}
	for _, st := range stats {
		resp.Stats = append(resp.Stats, wire.StatsToProto(st))
	}
	return resp, nil
}
