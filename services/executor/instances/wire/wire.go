// Package wire translates between the executor's domain API (package
// instances) and its gRPC form (executor.v1): specs, instances, stats and
// info both ways, and errors to status codes (ToStatus, for the server) and
// back to the sentinel errors (FromStatus, for the proxy). It is the one
// place where either translation is written.
//
// It owns no state and makes no decisions; it must not be imported by the
// node agent's lifecycle code, which holds instances.Runtime only.
//
// Usage:
//
//	// server side
//	in, err := rt.Create(ctx, req.GetId(), wire.SpecFromProto(req.GetSpec()), req.GetStart())
//	if err != nil { return nil, wire.ToStatus(err) }
//	return &executorv1.CreateInstanceResponse{Instance: wire.InstanceToProto(in)}, nil
//	// client side
//	resp, err := client.GetInstance(ctx, req)
//	if err != nil { return instances.Instance{}, wire.FromStatus(err) } // errors.Is(err, instances.ErrNotFound)
package wire

import (
	"context"
	"maps"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/services/executor/instances"
)

// errorCodes pairs each sentinel with its status code; both directions read it.
var errorCodes = grpcutil.ErrorCodes{Other: codes.Internal, Table: []grpcutil.ErrorCode{
	{Err: instances.ErrNotFound, Code: codes.NotFound},
	{Err: instances.ErrAlreadyExists, Code: codes.AlreadyExists},
	{Err: instances.ErrInvalidArgument, Code: codes.InvalidArgument},
	{Err: instances.ErrFailedPrecondition, Code: codes.FailedPrecondition},
	{Err: instances.ErrResourceExhausted, Code: codes.ResourceExhausted},
	{Err: instances.ErrPermissionDenied, Code: codes.PermissionDenied},
	{Err: instances.ErrUnavailable, Code: codes.Unavailable},
	{Err: instances.ErrBehind, Code: codes.OutOfRange},
	{Err: instances.ErrUnsupported, Code: codes.Unimplemented},
	{Err: context.Canceled, Code: codes.Canceled},
	{Err: context.DeadlineExceeded, Code: codes.DeadlineExceeded},
}}

// ToStatus turns an error of a Runtime into a gRPC status error whose code
// names its sentinel; an error that is already a status keeps its code,
// any other is Internal. nil stays nil.
func ToStatus(err error) error { return errorCodes.ToStatus(err) }

// FromStatus turns a gRPC status error back into an error that wraps the
// sentinel its code names (errors.Is(err, instances.ErrNotFound)); its
// message is the server's and status.Code still reads it. An error whose
// code names no sentinel is returned as it is. nil stays nil.
func FromStatus(err error) error { return errorCodes.FromStatus(err) }

// SpecToProto translates a spec.
func SpecToProto(s instances.Spec) *executorv1.InstanceSpec {
	p := &executorv1.InstanceSpec{
		Module:           &executorv1.Module{Digest: s.Module.Digest, Reference: s.Module.Reference},
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
	for _, l := range s.Listeners {
		p.Listeners = append(p.Listeners, &executorv1.Listener{Name: l.Name, Port: l.Port, Protocol: protocolToProto(l.Protocol)})
	}
	p.NetworkNamespace = s.NetworkNamespace
	p.ListenAddress = s.ListenAddress
	p.HandedListeners = s.HandedListeners
	p.Handler = handlerToProto(s.Handler)
	return p
}

// SpecFromProto translates a spec; a nil one is the zero Spec.
func SpecFromProto(p *executorv1.InstanceSpec) instances.Spec {
	s := instances.Spec{
		Module:           instances.Module{Digest: p.GetModule().GetDigest(), Reference: p.GetModule().GetReference()},
		Args:             slices.Clone(p.GetArgs()),
		MemoryLimitBytes: p.GetMemoryLimitBytes(),
		CPULimitMillis:   p.GetCpuLimitMillis(),
		LogSubject:       p.GetLogSubject(),
		Labels:           maps.Clone(p.GetLabels()),
	}
	for _, e := range p.GetEnv() {
		s.Env = append(s.Env, instances.EnvVar{Name: e.GetName(), Value: e.GetValue()})
	}
	for _, o := range p.GetPreopens() {
		s.Preopens = append(s.Preopens, instances.Preopen{HostPath: o.GetHostPath(), GuestPath: o.GetGuestPath(), ReadOnly: o.GetReadOnly()})
	}
	for _, l := range p.GetListeners() {
		s.Listeners = append(s.Listeners, instances.Listener{Name: l.GetName(), Port: l.GetPort(), Protocol: protocolFromProto(l.GetProtocol())})
	}
	s.NetworkNamespace = p.GetNetworkNamespace()
	s.ListenAddress = p.GetListenAddress()
	s.HandedListeners = p.GetHandedListeners()
	s.Handler = handlerFromProto(p.GetHandler())
	return s
}

// unknownProtocol stands on the wire for a protocol the domain does not
// name, so that the executor refuses it rather than take it as TCP.
const unknownProtocol executorv1.Protocol = 1000

// protocolToProto translates a protocol.
func protocolToProto(p instances.Protocol) executorv1.Protocol {
	switch p {
	case "":
		return executorv1.Protocol_PROTOCOL_UNSPECIFIED
	case instances.ProtocolTCP:
		return executorv1.Protocol_PROTOCOL_TCP
	case instances.ProtocolUDP:
		return executorv1.Protocol_PROTOCOL_UDP
	}
	return unknownProtocol
}

// protocolFromProto translates a protocol; unspecified is the empty
// Protocol (TCP), and one it does not know keeps its enum name, which
// the executor refuses.
func protocolFromProto(p executorv1.Protocol) instances.Protocol {
	switch p {
	case executorv1.Protocol_PROTOCOL_UNSPECIFIED:
		return ""
	case executorv1.Protocol_PROTOCOL_TCP:
		return instances.ProtocolTCP
	case executorv1.Protocol_PROTOCOL_UDP:
		return instances.ProtocolUDP
	}
	return instances.Protocol(p.String())
}

// unknownHandler stands on the wire for a handler mode the domain does
// not name, so that the executor refuses it rather than take it as none.
const unknownHandler executorv1.HandlerMode = 1000

func handlerToProto(h instances.HandlerMode) executorv1.HandlerMode {
	switch h {
	case "":
		return executorv1.HandlerMode_HANDLER_MODE_UNSPECIFIED
	case instances.HandlerWAGI:
		return executorv1.HandlerMode_HANDLER_MODE_WAGI
	}
	return unknownHandler
}

// handlerFromProto translates a handler mode; one it does not know keeps
// its enum name, which the executor refuses.
func handlerFromProto(h executorv1.HandlerMode) instances.HandlerMode {
	switch h {
	case executorv1.HandlerMode_HANDLER_MODE_UNSPECIFIED:
		return ""
	case executorv1.HandlerMode_HANDLER_MODE_WAGI:
		return instances.HandlerWAGI
	}
	return instances.HandlerMode(h.String())
}

// StateToProto translates a state.
func StateToProto(s instances.State) executorv1.InstanceState {
	switch s {
	case instances.StateCreated:
		return executorv1.InstanceState_INSTANCE_STATE_CREATED
	case instances.StateRunning:
		return executorv1.InstanceState_INSTANCE_STATE_RUNNING
	case instances.StateExited:
		return executorv1.InstanceState_INSTANCE_STATE_EXITED
	case instances.StateKilled:
		return executorv1.InstanceState_INSTANCE_STATE_KILLED
	case instances.StateFailed:
		return executorv1.InstanceState_INSTANCE_STATE_FAILED
	}
	return executorv1.InstanceState_INSTANCE_STATE_UNSPECIFIED
}

// StateFromProto translates a state; one it does not know is unspecified.
func StateFromProto(s executorv1.InstanceState) instances.State {
	switch s {
	case executorv1.InstanceState_INSTANCE_STATE_CREATED:
		return instances.StateCreated
	case executorv1.InstanceState_INSTANCE_STATE_RUNNING:
		return instances.StateRunning
	case executorv1.InstanceState_INSTANCE_STATE_EXITED:
		return instances.StateExited
	case executorv1.InstanceState_INSTANCE_STATE_KILLED:
		return instances.StateKilled
	case executorv1.InstanceState_INSTANCE_STATE_FAILED:
		return instances.StateFailed
	}
	return instances.StateUnspecified
}

// InstanceToProto translates an instance.
func InstanceToProto(in instances.Instance) *executorv1.Instance {
	return &executorv1.Instance{
		Id:         in.ID,
		Spec:       SpecToProto(in.Spec),
		State:      StateToProto(in.State),
		ExitCode:   in.ExitCode,
		Reason:     in.Reason,
		Message:    in.Message,
		CreatedAt:  ts(in.CreatedAt),
		StartedAt:  ts(in.StartedAt),
		FinishedAt: ts(in.FinishedAt),
		Sequence:   in.Sequence,
	}
}

// InstanceFromProto translates an instance; a nil one is the zero Instance.
func InstanceFromProto(p *executorv1.Instance) instances.Instance {
	return instances.Instance{
		ID:         p.GetId(),
		Spec:       SpecFromProto(p.GetSpec()),
		State:      StateFromProto(p.GetState()),
		ExitCode:   p.GetExitCode(),
		Reason:     p.GetReason(),
		Message:    p.GetMessage(),
		CreatedAt:  fromTS(p.GetCreatedAt()),
		StartedAt:  fromTS(p.GetStartedAt()),
		FinishedAt: fromTS(p.GetFinishedAt()),
		Sequence:   p.GetSequence(),
	}
}

// StatsToProto translates one instance's stats.
func StatsToProto(s instances.Stats) *executorv1.InstanceStats {
	return &executorv1.InstanceStats{
		InstanceId:    s.ID,
		State:         StateToProto(s.State),
		Labels:        maps.Clone(s.Labels),
		Time:          ts(s.Time),
		MemoryBytes:   s.MemoryBytes,
		CpuUsageNanos: uint64(max(s.CPU, 0)),
		CpuMeasured:   s.CPUMeasured,
	}
}

// StatsFromProto translates one instance's stats.
func StatsFromProto(p *executorv1.InstanceStats) instances.Stats {
	return instances.Stats{
		ID:          p.GetInstanceId(),
		State:       StateFromProto(p.GetState()),
		Labels:      maps.Clone(p.GetLabels()),
		Time:        fromTS(p.GetTime()),
		MemoryBytes: p.GetMemoryBytes(),
		CPU:         time.Duration(p.GetCpuUsageNanos()),
		CPUMeasured: p.GetCpuMeasured(),
	}
}

// InfoToProto translates an executor's info. A zero Confinement is sent
// unset, as by an executor that reports none.
func InfoToProto(in instances.Info) *executorv1.GetInfoResponse {
	cpu := executorv1.CpuLimitEnforcement_CPU_LIMIT_ENFORCEMENT_NONE
	if in.CPULimitsEnforced {
		cpu = executorv1.CpuLimitEnforcement_CPU_LIMIT_ENFORCEMENT_CGROUP
	}
	p := &executorv1.GetInfoResponse{
		Engine:               in.Engine,
		EngineVersion:        in.Version,
		Os:                   in.OS,
		Arch:                 in.Arch,
		MaxInstances:         int32(in.MaxInstances),
		Instances:            int32(in.Instances),
		ExecutorId:           in.ExecutorID,
		CpuLimits:            cpu,
		CpuLimitsDescription: in.CPULimitsWords,
		Listeners:            in.Listeners,
		ListenerHandoff:      in.ListenerHandoff,
	}
	for _, h := range in.HandlerModes {
		p.HandlerModes = append(p.HandlerModes, handlerToProto(h))
	}
	if c := in.Confinement; c != (instances.Confinement{}) {
		p.Confinement = &executorv1.Confinement{
			NoNewPrivs:            c.NoNewPrivs,
			Seccomp:               c.Seccomp,
			LandlockAbi:           int32(c.LandlockABI),
			LandlockMissingReason: c.LandlockMissingReason,
			Uid:                   c.UID,
			Gid:                   c.GID,
			NetworkIsolated:       c.NetworkIsolated,
			Description:           c.Description,
		}
	}
	return p
}

// InfoFromProto translates an executor's info. CPU limits are enforced
// only when the executor says how (an older one says nothing).
func InfoFromProto(p *executorv1.GetInfoResponse) instances.Info {
	c := p.GetConfinement()
	var handlers []instances.HandlerMode
	for _, h := range p.GetHandlerModes() {
		handlers = append(handlers, handlerFromProto(h))
	}
	return instances.Info{
		HandlerModes:      handlers,
		ExecutorID:        p.GetExecutorId(),
		Engine:            p.GetEngine(),
		Version:           p.GetEngineVersion(),
		OS:                p.GetOs(),
		Arch:              p.GetArch(),
		MaxInstances:      int(p.GetMaxInstances()),
		Instances:         int(p.GetInstances()),
		CPULimitsEnforced: p.GetCpuLimits() == executorv1.CpuLimitEnforcement_CPU_LIMIT_ENFORCEMENT_CGROUP,
		CPULimitsWords:    p.GetCpuLimitsDescription(),
		Listeners:         p.GetListeners(),
		ListenerHandoff:   p.GetListenerHandoff(),
		Confinement: instances.Confinement{
			NoNewPrivs:            c.GetNoNewPrivs(),
			Seccomp:               c.GetSeccomp(),
			LandlockABI:           int(c.GetLandlockAbi()),
			LandlockMissingReason: c.GetLandlockMissingReason(),
			UID:                   c.GetUid(),
			GID:                   c.GetGid(),
			NetworkIsolated:       c.GetNetworkIsolated(),
			Description:           c.GetDescription(),
		},
	}
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func fromTS(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}
