// Package server exposes the instance manager as wasmlet.executor.v1's
// ExecutorService. It owns the translation between protobuf messages and
// the manager's types, and between the manager's errors and gRPC status
// codes; it holds no state of its own and must not make lifecycle
// decisions.
//
// Usage:
//
//	srv := grpc.NewServer()
//	executorv1.RegisterExecutorServiceServer(srv, server.New(mgr, eng))
package server

import (
	"context"
	"errors"
	"maps"
	"runtime"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine"
	"github.com/wasmlet/wasmlet/services/executor/internal/instance"
)

// Server implements executorv1.ExecutorServiceServer.
type Server struct {
	executorv1.UnimplementedExecutorServiceServer
	mgr *instance.Manager
	eng engine.Engine

	cpuLimits      executorv1.CpuLimitEnforcement
	cpuLimitsWords string
	confinement    *executorv1.Confinement
}

var _ executorv1.ExecutorServiceServer = (*Server)(nil)

// Option configures a Server.
type Option func(*Server)

// WithCPULimits tells what GetInfo reports about CPU limits: enforced or
// not, and how in words (e.g. "CFS bandwidth control in cgroup DIR
// (--cpu-cgroup)"). Without it GetInfo reports them not enforced.
func WithCPULimits(enforced bool, description string) Option {
	return func(s *Server) {
		s.cpuLimits = executorv1.CpuLimitEnforcement_CPU_LIMIT_ENFORCEMENT_NONE
		if enforced {
			s.cpuLimits = executorv1.CpuLimitEnforcement_CPU_LIMIT_ENFORCEMENT_CGROUP
		}
		s.cpuLimitsWords = description
	}
}

// New returns a Server over mgr, whose engine is eng.
func New(mgr *instance.Manager, eng engine.Engine, opts ...Option) *Server {
	s := &Server{mgr: mgr, eng: eng,
		cpuLimits:      executorv1.CpuLimitEnforcement_CPU_LIMIT_ENFORCEMENT_NONE,
		cpuLimitsWords: "not enforced",
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// GetInfo implements executorv1.ExecutorServiceServer.
func (s *Server) GetInfo(context.Context, *executorv1.GetInfoRequest) (*executorv1.GetInfoResponse, error) {
	return &executorv1.GetInfoResponse{
		Engine:               s.eng.Name(),
		EngineVersion:        s.eng.Version(),
		Os:                   runtime.GOOS,
		Arch:                 runtime.GOARCH,
		MaxInstances:         int32(s.mgr.MaxInstances()),
		Instances:            int32(s.mgr.Count()),
		ExecutorId:           s.mgr.ExecutorID(),
		CpuLimits:            s.cpuLimits,
		CpuLimitsDescription: s.cpuLimitsWords,
		Confinement:          s.confinement,
	}, nil
}

// CreateInstance implements executorv1.ExecutorServiceServer.
func (s *Server) CreateInstance(ctx context.Context, req *executorv1.CreateInstanceRequest) (*executorv1.CreateInstanceResponse, error) {
	if req.GetSpec() == nil {
		return nil, status.Error(codes.InvalidArgument, "create instance: spec is required")
	}
	in, err := s.mgr.Create(ctx, req.GetId(), specFromProto(req.GetSpec()), req.GetStart())
	if err != nil {
		return nil, toStatus(err)
	}
	return &executorv1.CreateInstanceResponse{Instance: toProto(in)}, nil
}

// StartInstance implements executorv1.ExecutorServiceServer.
func (s *Server) StartInstance(ctx context.Context, req *executorv1.StartInstanceRequest) (*executorv1.StartInstanceResponse, error) {
	in, err := s.mgr.Start(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &executorv1.StartInstanceResponse{Instance: toProto(in)}, nil
}

// StopInstance implements executorv1.ExecutorServiceServer.
func (s *Server) StopInstance(ctx context.Context, req *executorv1.StopInstanceRequest) (*executorv1.StopInstanceResponse, error) {
	var grace time.Duration
	if g := req.GetGracePeriod(); g != nil {
		if err := g.CheckValid(); err != nil || g.AsDuration() < 0 {
			return nil, status.Errorf(codes.InvalidArgument, "stop instance %s: grace period must be a non-negative duration", req.GetId())
		}
		grace = g.AsDuration()
	}
	in, err := s.mgr.Stop(ctx, req.GetId(), grace)
	if err != nil {
		return nil, toStatus(err)
	}
	return &executorv1.StopInstanceResponse{Instance: toProto(in)}, nil
}

// DeleteInstance implements executorv1.ExecutorServiceServer.
func (s *Server) DeleteInstance(ctx context.Context, req *executorv1.DeleteInstanceRequest) (*executorv1.DeleteInstanceResponse, error) {
	if err := s.mgr.Delete(ctx, req.GetId(), req.GetForce()); err != nil {
		return nil, toStatus(err)
	}
	return &executorv1.DeleteInstanceResponse{}, nil
}

// GetInstance implements executorv1.ExecutorServiceServer.
func (s *Server) GetInstance(_ context.Context, req *executorv1.GetInstanceRequest) (*executorv1.GetInstanceResponse, error) {
	in, err := s.mgr.Get(req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &executorv1.GetInstanceResponse{Instance: toProto(in)}, nil
}

// ListInstances implements executorv1.ExecutorServiceServer.
func (s *Server) ListInstances(_ context.Context, req *executorv1.ListInstancesRequest) (*executorv1.ListInstancesResponse, error) {
	ins, seq := s.mgr.List(req.GetLabelSelector())
	resp := &executorv1.ListInstancesResponse{Sequence: seq}
	for _, in := range ins {
		resp.Instances = append(resp.Instances, toProto(in))
	}
	return resp, nil
}

// WatchInstances implements executorv1.ExecutorServiceServer.
func (s *Server) WatchInstances(req *executorv1.WatchInstancesRequest, stream grpc.ServerStreamingServer[executorv1.WatchInstancesResponse]) error {
	ctx := stream.Context()
	after := req.GetAfterSequence()
	for {
		evs, changed, err := s.mgr.EventsAfter(after)
		if err != nil {
			return toStatus(err)
		}
		for _, ev := range evs {
			after = ev.Sequence
			if req.GetId() != "" && ev.Instance.ID != req.GetId() {
				continue
			}
			if err := stream.Send(&executorv1.WatchInstancesResponse{Instance: toProto(ev.Instance)}); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-changed:
		}
	}
}

// toStatus maps the manager's errors to gRPC codes.
// ListInstanceStats implements executorv1.ExecutorServiceServer.
func (s *Server) ListInstanceStats(_ context.Context, req *executorv1.ListInstanceStatsRequest) (*executorv1.ListInstanceStatsResponse, error) {
	resp := &executorv1.ListInstanceStatsResponse{}
	for _, st := range s.mgr.Stats(req.GetLabelSelector()) {
		resp.Stats = append(resp.Stats, &executorv1.InstanceStats{
			InstanceId:    st.ID,
			State:         stateToProto(st.State),
			Labels:        st.Labels,
			Time:          ts(st.Time),
			MemoryBytes:   st.Usage.MemoryBytes,
			CpuUsageNanos: uint64(st.Usage.CPU.Nanoseconds()),
			CpuMeasured:   st.Usage.CPUMeasured,
		})
	}
	return resp, nil
}

func toStatus(err error) error {
	code := codes.Internal
	switch {
	case errors.Is(err, instance.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, instance.ErrAlreadyExists):
		code = codes.AlreadyExists
	case errors.Is(err, instance.ErrInvalidArgument):
		code = codes.InvalidArgument
	case errors.Is(err, instance.ErrFailedPrecondition):
		code = codes.FailedPrecondition
	case errors.Is(err, instance.ErrResourceExhausted):
		code = codes.ResourceExhausted
	case errors.Is(err, instance.ErrPermissionDenied):
		code = codes.PermissionDenied
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	}
	return status.Error(code, err.Error())
}

func specFromProto(p *executorv1.InstanceSpec) instance.Spec {
	s := instance.Spec{
		ModuleDigest:     p.GetModule().GetDigest(),
		ModuleReference:  p.GetModule().GetReference(),
		Args:             slices.Clone(p.GetArgs()),
		MemoryLimitBytes: p.GetMemoryLimitBytes(),
		CPULimitMillis:   p.GetCpuLimitMillis(),
		LogSubject:       p.GetLogSubject(),
		Labels:           maps.Clone(p.GetLabels()),
	}
	for _, e := range p.GetEnv() {
		s.Env = append(s.Env, engine.EnvVar{Name: e.GetName(), Value: e.GetValue()})
	}
	for _, o := range p.GetPreopens() {
		s.Preopens = append(s.Preopens, engine.Preopen{HostPath: o.GetHostPath(), GuestPath: o.GetGuestPath(), ReadOnly: o.GetReadOnly()})
	}
	return s
}

func specToProto(s instance.Spec) *executorv1.InstanceSpec {
	p := &executorv1.InstanceSpec{
		Module:           &executorv1.Module{Digest: s.ModuleDigest, Reference: s.ModuleReference},
		Args:             slices.Clone(s.Args),
		MemoryLimitBytes: s.MemoryLimitBytes,
		CpuLimitMillis:   s.CPULimitMillis,
		LogSubject:       s.LogSubject,
		Labels:           maps.Clone(s.Labels),
	}
	for _, e := range s.Env {
		p.Env = append(p.Env, &executorv1.EnvVar{Name: e.Name, Value: e.Value})
	}
	for _, o := range s.Preopens {
		p.Preopens = append(p.Preopens, &executorv1.Preopen{HostPath: o.HostPath, GuestPath: o.GuestPath, ReadOnly: o.ReadOnly})
	}
	return p
}

func stateToProto(s instance.State) executorv1.InstanceState {
	switch s {
	case instance.StateCreated:
		return executorv1.InstanceState_INSTANCE_STATE_CREATED
	case instance.StateRunning:
		return executorv1.InstanceState_INSTANCE_STATE_RUNNING
	case instance.StateExited:
		return executorv1.InstanceState_INSTANCE_STATE_EXITED
	case instance.StateKilled:
		return executorv1.InstanceState_INSTANCE_STATE_KILLED
	case instance.StateFailed:
		return executorv1.InstanceState_INSTANCE_STATE_FAILED
	}
	return executorv1.InstanceState_INSTANCE_STATE_UNSPECIFIED
}

func toProto(in instance.Instance) *executorv1.Instance {
	return &executorv1.Instance{
		Id:         in.ID,
		Spec:       specToProto(in.Spec),
		State:      stateToProto(in.State),
		ExitCode:   in.ExitCode,
		Reason:     in.Reason,
		Message:    in.Message,
		CreatedAt:  ts(in.CreatedAt),
		StartedAt:  ts(in.StartedAt),
		FinishedAt: ts(in.FinishedAt),
		Sequence:   in.Sequence,
	}
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
