package executors

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/services/executor/instances"
)

// behindExecutor lists one instance (at a newer sequence each time) and
// answers the first watch with one event, then "behind" (OutOfRange, what
// the proxy reads as instances.ErrBehind); later watches stay open.
type behindExecutor struct {
	executorv1.UnimplementedExecutorServiceServer

	mu      sync.Mutex
	lists   uint64
	watches []uint64 // the AfterSequence of each watch
}

func (f *behindExecutor) GetInfo(context.Context, *executorv1.GetInfoRequest) (*executorv1.GetInfoResponse, error) {
	return &executorv1.GetInfoResponse{ExecutorId: "e1", MaxInstances: 10}, nil
}

func (f *behindExecutor) ListInstances(context.Context, *executorv1.ListInstancesRequest) (*executorv1.ListInstancesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists++
	return &executorv1.ListInstancesResponse{
		Instances: []*executorv1.Instance{{Id: "listed", State: executorv1.InstanceState_INSTANCE_STATE_RUNNING, Sequence: 5}},
		Sequence:  10 * f.lists,
	}, nil
}

func (f *behindExecutor) WatchInstances(req *executorv1.WatchInstancesRequest, s grpc.ServerStreamingServer[executorv1.WatchInstancesResponse]) error {
	f.mu.Lock()
	f.watches = append(f.watches, req.GetAfterSequence())
	first := len(f.watches) == 1
	f.mu.Unlock()
	if !first {
		<-s.Context().Done()
		return nil
	}
	if err := s.Send(&executorv1.WatchInstancesResponse{Instance: &executorv1.Instance{Id: "watched", Sequence: req.GetAfterSequence() + 1}}); err != nil {
		return err
	}
	return status.Error(codes.OutOfRange, "behind: list again")
}

type changes struct {
	mu  sync.Mutex
	ids []string
}

func (c *changes) InstanceChanged(replica string, in instances.Instance) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ids = append(c.ids, fmt.Sprintf("%s/%s@%d", replica, in.ID, in.Sequence))
}
func (c *changes) ExecutorLost(string, string) {}
func (c *changes) seen() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.ids)
}

// A replica's watch starts from a listing, and a watch told it is behind
// lists again and goes on from the new listing's sequence: the sink sees
// every instance's state, and nothing is replayed.
func TestWatchListsWhenBehind(t *testing.T) {
	f, sink := &behindExecutor{}, &changes{}
	runPool(t, f, sink)

	waitUntil(t, "a second watch", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.watches) >= 2
	})
	f.mu.Lock()
	watches := slices.Clone(f.watches)
	f.mu.Unlock()
	if !slices.Equal(watches, []uint64{10, 20}) {
		t.Errorf("watches after %v, want after each listing's sequence [10 20]", watches)
	}
	want := []string{"wasmtime/listed@5", "wasmtime/watched@11", "wasmtime/listed@5"}
	if got := sink.seen(); !slices.Equal(got, want) {
		t.Errorf("sink saw %v, want %v", got, want)
	}
}

// restartedExecutor is an executor whose process is replaced under the
// same id: its first listing is at sequence 10, its first watch breaks
// (the process died), and the new process refuses a watch after 10 (a
// sequence it never gave: FailedPrecondition) and lists from 0.
type restartedExecutor struct {
	executorv1.UnimplementedExecutorServiceServer

	mu      sync.Mutex
	watches []uint64
	lists   int
}

func (f *restartedExecutor) GetInfo(context.Context, *executorv1.GetInfoRequest) (*executorv1.GetInfoResponse, error) {
	return &executorv1.GetInfoResponse{ExecutorId: "same-id", MaxInstances: 10}, nil
}

func (f *restartedExecutor) ListInstances(context.Context, *executorv1.ListInstancesRequest) (*executorv1.ListInstancesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists++
	if f.lists == 1 {
		return &executorv1.ListInstancesResponse{Instances: []*executorv1.Instance{{Id: "old", State: executorv1.InstanceState_INSTANCE_STATE_RUNNING, Sequence: 10}}, Sequence: 10}, nil
	}
	return &executorv1.ListInstancesResponse{}, nil
}

func (f *restartedExecutor) WatchInstances(req *executorv1.WatchInstancesRequest, s grpc.ServerStreamingServer[executorv1.WatchInstancesResponse]) error {
	f.mu.Lock()
	f.watches = append(f.watches, req.GetAfterSequence())
	n := len(f.watches)
	f.mu.Unlock()
	switch {
	case n == 1:
		return status.Error(codes.Unavailable, "the process died")
	case req.GetAfterSequence() > 0:
		return status.Error(codes.FailedPrecondition, "sequence 10 is newer than this executor's newest, 0")
	}
	<-s.Context().Done()
	return nil
}

type losses struct {
	changes
	lost []string
}

func (l *losses) ExecutorLost(replica, reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lost = append(l.lost, replica+": "+reason)
}

// An executor restarted under the same id (a fixed --id, pid 1 in a
// container) is noticed by the sequence it no longer knows: its pods are
// told their instances were lost, once, and the watch starts again from a
// new listing instead of retrying the old sequence forever.
func TestWatchNoticesRestartUnderSameID(t *testing.T) {
	f, sink := &restartedExecutor{}, &losses{}
	runPool(t, f, sink)

	waitUntil(t, "a watch from the new listing", func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return slices.Contains(f.watches, 0)
	})
	sink.mu.Lock()
	lost := slices.Clone(sink.lost)
	sink.mu.Unlock()
	if len(lost) != 1 {
		t.Fatalf("ExecutorLost %d times (%q), want once", len(lost), lost)
	}
	f.mu.Lock()
	watches, lists := slices.Clone(f.watches), f.lists
	f.mu.Unlock()
	if !slices.Equal(watches, []uint64{10, 10, 0}) || lists != 2 {
		t.Errorf("watches after %v with %d listings, want [10 10 0] after 2", watches, lists)
	}
}

// runPool serves srv as the pool's one static executor and runs the pool
// into sink until the test ends.
func runPool(t *testing.T, srv executorv1.ExecutorServiceServer, sink Sink) {
	t.Helper()
	addr := "unix://" + filepath.Join(t.TempDir(), "e1.sock")
	l, err := grpcutil.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	executorv1.RegisterExecutorServiceServer(gs, srv)
	go gs.Serve(l)
	pool, err := New(Config{Executors: map[string]string{"wasmtime": addr}, Default: "wasmtime"})
	if err != nil {
		gs.Stop()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { pool.Run(ctx, sink); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
		pool.Close()
		gs.Stop()
	})
}
