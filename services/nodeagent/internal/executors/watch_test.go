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
	addr := "unix://" + filepath.Join(t.TempDir(), "e1.sock")
	l, err := grpcutil.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	f := &behindExecutor{}
	srv := grpc.NewServer()
	executorv1.RegisterExecutorServiceServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)

	pool, err := New(Config{Executors: map[string]string{"wasmtime": addr}, Default: "wasmtime"})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx, cancel := context.WithCancel(context.Background())
	sink := &changes{}
	done := make(chan struct{})
	go func() { pool.Run(ctx, sink); close(done) }()
	defer func() { cancel(); <-done }()

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
