package proxy

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/services/executor/instances"
)

// stub answers every call with the error set for it, and a watch with two
// instances and then OutOfRange.
type stub struct {
	executorv1.UnimplementedExecutorServiceServer
	grace time.Duration
}

func (s *stub) GetInstance(_ context.Context, r *executorv1.GetInstanceRequest) (*executorv1.GetInstanceResponse, error) {
	if r.GetId() == "there" {
		return &executorv1.GetInstanceResponse{Instance: &executorv1.Instance{Id: "there", State: executorv1.InstanceState_INSTANCE_STATE_RUNNING}}, nil
	}
	return nil, status.Error(codes.NotFound, "instance not found: "+r.GetId())
}

func (s *stub) StopInstance(_ context.Context, r *executorv1.StopInstanceRequest) (*executorv1.StopInstanceResponse, error) {
	s.grace = r.GetGracePeriod().AsDuration()
	return &executorv1.StopInstanceResponse{Instance: &executorv1.Instance{Id: r.GetId(), State: executorv1.InstanceState_INSTANCE_STATE_KILLED, ExitCode: 137}}, nil
}

func (s *stub) WatchInstances(r *executorv1.WatchInstancesRequest, stream grpc.ServerStreamingServer[executorv1.WatchInstancesResponse]) error {
	for i := r.GetAfterSequence() + 1; i <= r.GetAfterSequence()+2; i++ {
		if err := stream.Send(&executorv1.WatchInstancesResponse{Instance: &executorv1.Instance{Id: r.GetId(), Sequence: i}}); err != nil {
			return err
		}
	}
	return status.Error(codes.OutOfRange, "watcher is behind: list again")
}

func dial(t *testing.T, srv executorv1.ExecutorServiceServer) *grpc.ClientConn {
	t.Helper()
	l := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	executorv1.RegisterExecutorServiceServer(gs, srv)
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func TestProxy(t *testing.T) {
	s := &stub{}
	var rt instances.Runtime = New(dial(t, s))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	if in, err := rt.Get(ctx, "there"); err != nil || in.ID != "there" || in.State != instances.StateRunning {
		t.Fatalf("get: %+v %v", in, err)
	}
	if _, err := rt.Get(ctx, "nope"); !errors.Is(err, instances.ErrNotFound) || err.Error() != "instance not found: nope" {
		t.Fatalf("get unknown: %v", err)
	}
	if in, err := rt.Stop(ctx, "x", 1500*time.Millisecond); err != nil || in.State != instances.StateKilled || in.ExitCode != 137 || s.grace != 1500*time.Millisecond {
		t.Fatalf("stop: %+v %v, grace %v", in, err, s.grace)
	}
	// Unimplemented names no sentinel: it comes back as it is.
	if _, err := rt.Info(ctx); status.Code(err) != codes.Unimplemented {
		t.Fatalf("info: %v", err)
	}

	var seqs []uint64
	err := rt.Watch(ctx, 5, "w", func(in instances.Instance) error {
		if in.ID != "w" {
			t.Errorf("watched %+v", in)
		}
		seqs = append(seqs, in.Sequence)
		return nil
	})
	if !errors.Is(err, instances.ErrBehind) || len(seqs) != 2 || seqs[0] != 6 {
		t.Fatalf("watch: %v %v", seqs, err)
	}
	stop := errors.New("enough")
	if err := rt.Watch(ctx, 0, "", func(instances.Instance) error { return stop }); err != stop {
		t.Fatalf("watch ended by fn: %v", err)
	}
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if err := rt.Watch(cctx, 0, "", func(instances.Instance) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("watch with an ended context: %v", err)
	}

	// No executor behind the connection: ErrUnavailable.
	l := bufconn.Listen(1)
	l.Close()
	cc, err := grpc.NewClient("passthrough:///gone",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return l.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := New(cc).Get(ctx, "x"); !errors.Is(err, instances.ErrUnavailable) {
		t.Fatalf("get from no executor: %v", err)
	}
}
