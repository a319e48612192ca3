package podworker

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/services/executor/instances"
)

// The translations between executor.v1 and the domain types that the
// Worker needs until it holds an instances.Runtime (the gRPC proxy's).

func specToProto(s instances.Spec) *executorv1.InstanceSpec {
	p := &executorv1.InstanceSpec{
		Module:           &executorv1.Module{Digest: s.Module.Digest, Reference: s.Module.Reference},
		Args:             s.Args,
		MemoryLimitBytes: s.MemoryLimitBytes,
		CpuLimitMillis:   s.CPULimitMillis,
		LogSubject:       s.LogSubject,
		Labels:           s.Labels,
	}
	for _, e := range s.Env {
		p.Env = append(p.Env, &executorv1.EnvVar{Name: e.Name, Value: e.Value})
	}
	for _, o := range s.Preopens {
		p.Preopens = append(p.Preopens, &executorv1.Preopen{HostPath: o.HostPath, GuestPath: o.GuestPath, ReadOnly: o.ReadOnly})
	}
	return p
}

func instanceFromProto(p *executorv1.Instance) instances.Instance {
	state := map[executorv1.InstanceState]instances.State{
		executorv1.InstanceState_INSTANCE_STATE_CREATED: instances.StateCreated,
		executorv1.InstanceState_INSTANCE_STATE_RUNNING: instances.StateRunning,
		executorv1.InstanceState_INSTANCE_STATE_EXITED:  instances.StateExited,
		executorv1.InstanceState_INSTANCE_STATE_KILLED:  instances.StateKilled,
		executorv1.InstanceState_INSTANCE_STATE_FAILED:  instances.StateFailed,
	}[p.GetState()]
	return instances.Instance{
		ID: p.GetId(), State: state, ExitCode: p.GetExitCode(), Reason: p.GetReason(), Message: p.GetMessage(),
		Spec:      instances.Spec{Labels: p.GetSpec().GetLabels()},
		CreatedAt: fromTS(p.GetCreatedAt()), StartedAt: fromTS(p.GetStartedAt()), FinishedAt: fromTS(p.GetFinishedAt()),
		Sequence: p.GetSequence(),
	}
}

func fromTS(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}
