package executors

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/internal/testharness/natstest"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/instances/proxy"
)

// fakeExecutor answers GetInfo, ListInstances (its instances, by label),
// DeleteInstance and an idle WatchInstances, or, while down, fails them
// all: enough for the pool's discovery, health and placement, which is
// what these tests are about.
type fakeExecutor struct {
	executorv1.UnimplementedExecutorServiceServer
	id, addr string
	srv      *grpc.Server

	mu    sync.Mutex
	holds map[string]string // instance id -> pod uid
	down  bool
	brk   chan struct{} // closed when it goes down: open watches break
}

func (f *fakeExecutor) setDown(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if down && !f.down {
		close(f.brk)
	}
	if !down && f.down {
		f.brk = make(chan struct{})
	}
	f.down = down
}

func (f *fakeExecutor) held() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.holds)
}

func (f *fakeExecutor) isDown() (bool, chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.down, f.brk
}

func startFake(t *testing.T, id string) *fakeExecutor {
	t.Helper()
	f := &fakeExecutor{id: id, addr: "unix://" + filepath.Join(t.TempDir(), id+".sock"), holds: map[string]string{}, brk: make(chan struct{})}
	l, err := grpcutil.Listen(f.addr)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = grpc.NewServer()
	executorv1.RegisterExecutorServiceServer(f.srv, f)
	go f.srv.Serve(l)
	t.Cleanup(f.srv.Stop)
	return f
}

func (f *fakeExecutor) GetInfo(context.Context, *executorv1.GetInfoRequest) (*executorv1.GetInfoResponse, error) {
	if down, _ := f.isDown(); down {
		return nil, status.Error(codes.Unavailable, "down")
	}
	return &executorv1.GetInfoResponse{ExecutorId: f.id, MaxInstances: 100, Engine: "fake"}, nil
}

func (f *fakeExecutor) ListInstances(_ context.Context, req *executorv1.ListInstancesRequest) (*executorv1.ListInstancesResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*executorv1.Instance
	for id, uid := range f.holds {
		if want, ok := req.GetLabelSelector()["uid"]; !ok || want == uid {
			out = append(out, &executorv1.Instance{Id: id, Spec: &executorv1.InstanceSpec{Labels: map[string]string{"uid": uid}}})
		}
	}
	return &executorv1.ListInstancesResponse{Instances: out}, nil
}

func (f *fakeExecutor) DeleteInstance(_ context.Context, req *executorv1.DeleteInstanceRequest) (*executorv1.DeleteInstanceResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.holds, req.GetId())
	return &executorv1.DeleteInstanceResponse{}, nil
}

func (f *fakeExecutor) WatchInstances(_ *executorv1.WatchInstancesRequest, s grpc.ServerStreamingServer[executorv1.WatchInstancesResponse]) error {
	down, brk := f.isDown()
	if down {
		return status.Error(codes.Unavailable, "down")
	}
	select {
	case <-s.Context().Done():
	case <-brk:
	}
	return status.Error(codes.Unavailable, "down")
}

// announce publishes what an executor's announcer would.
func announce(t *testing.T, nc *nats.Conn, f *fakeExecutor, seq uint64, leaving bool) {
	t.Helper()
	b, err := proto.Marshal(&eventsv1.ExecutorAnnouncement{
		ExecutorId: f.id, Flavour: "wasmtime", Node: "node-1", Address: f.addr, MaxInstances: 100,
		Healthy: !leaving, Leaving: leaving, Sequence: seq, Period: durationpb.New(100 * time.Millisecond),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish(subjects.Executor("node-1", "wasmtime", f.id), b); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

type recordingSink struct {
	mu   sync.Mutex
	lost map[string]string
}

func (s *recordingSink) InstanceChanged(string, instances.Instance) {}
func (s *recordingSink) ExecutorLost(replica, reason string) {
	s.mu.Lock()
	s.lost[replica] = reason
	s.mu.Unlock()
}
func (s *recordingSink) reason(replica string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lost[replica]
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestDiscoveredReplicas runs the pool against a real NATS server and two
// announced replicas: both are found, pods are spread over them, a pod
// whose instance one of them holds goes back to it, a replica that stops
// announcing but answers is kept, one that neither announces nor answers
// is given up (its pods hear it, and move on their next call) and, when it
// comes back, loses what it still runs before it is used again, and a
// leaving one goes at once.
func TestDiscoveredReplicas(t *testing.T) {
	_, nc := natstest.Conn(t)
	a, b := startFake(t, "exec-a"), startFake(t, "exec-b")
	b.holds["b-inst"] = "pod-on-b"
	a.holds["a-inst"] = "pod-on-a"

	// Executors answer the discovery request the pool sends when it starts.
	var seq uint64
	var seqMu sync.Mutex
	sub, err := nc.Subscribe(subjects.Discover("node-1"), func(*nats.Msg) {
		seqMu.Lock()
		seq++
		s := seq
		seqMu.Unlock()
		announce(t, nc, a, s, false)
		announce(t, nc, b, s, false)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	pool, err := New(Config{NATS: nc, Node: "node-1", Default: "wasmtime"})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := pool.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if got := len(pool.replicas("wasmtime")); got != 2 {
		t.Fatalf("%d replicas after WaitReady, want 2", got)
	}
	sink := &recordingSink{lost: map[string]string{}}
	go pool.Run(ctx, sink)
	waitUntil(t, "both replicas healthy", func() bool { return len(pool.Unavailable()) == 0 })

	back := pool.Bind(ctx, "wasmtime", map[string]string{"uid": "pod-on-b"}, 1)
	if back.Replica() != "exec-b" {
		t.Errorf("the pod whose instance exec-b holds was bound to %q", back.Replica())
	}
	spread := map[string]int{}
	var onA *Binding
	for range 5 {
		bd := pool.Bind(ctx, "wasmtime", map[string]string{"uid": "new"}, 1)
		spread[bd.Replica()]++
		if bd.Replica() == "exec-a" {
			onA = bd
		}
	}
	if spread["exec-a"] != 3 || spread["exec-b"] != 2 {
		t.Errorf("5 new pods beside one on exec-b went %v, want 3 on exec-a and 2 on exec-b", spread)
	}

	// exec-b goes silent but answers: kept well past its TTL.
	time.Sleep(time.Duration(TTLPeriods+2) * 100 * time.Millisecond)
	if _, ok := pool.Get("exec-b"); !ok || sink.reason("exec-b") != "" {
		t.Fatal("a replica that misses announcements but answers was given up")
	}
	// exec-a goes silent and stops answering: given up, its pods told.
	a.setDown(true)
	waitUntil(t, "exec-a given up and its pods told", func() bool { return sink.reason("exec-a") != "" })
	if _, ok := pool.Get("exec-a"); ok {
		t.Fatal("exec-a still in the pool after its loss was reported")
	}
	if r := sink.reason("exec-a"); r == "" || !onA.WasOn("exec-a") {
		t.Fatalf("loss of exec-a not reported to its pods (reason %q)", r)
	}
	if _, err := proxy.New(onA).Info(ctx); err != nil || onA.Replica() != "exec-b" {
		t.Errorf("a pod of the lost replica moved to %q (err %v), want exec-b", onA.Replica(), err)
	}
	// exec-a answers and announces again: what it still runs belongs to
	// pods that were told it was lost, so it is removed before exec-a
	// takes pods again.
	a.setDown(false)
	announce(t, nc, a, 50, false)
	waitUntil(t, "exec-a's leftover instance removed", func() bool { return a.held() == 0 })
	if _, ok := pool.Get("exec-a"); ok {
		t.Error("exec-a back in the pool before its leftovers were removed")
	}
	waitUntil(t, "exec-a back and answering", func() bool {
		announce(t, nc, a, 51, false)
		e, ok := pool.Get("exec-a")
		if !ok {
			return false
		}
		_, healthy := e.Info()
		return healthy
	})

	// exec-b leaves cleanly: gone at once; its pods move to exec-a.
	announce(t, nc, b, 100, true)
	waitUntil(t, "exec-b gone on leaving", func() bool { return sink.reason("exec-b") != "" })
	if _, err := proxy.New(onA).Info(ctx); err != nil || onA.Replica() != "exec-a" {
		t.Errorf("a pod of the leaving replica moved to %q (err %v), want exec-a", onA.Replica(), err)
	}
	// exec-a leaves too: nothing is left to place on.
	announce(t, nc, a, 52, true)
	waitUntil(t, "exec-a gone on leaving", func() bool { _, ok := pool.Get("exec-a"); return !ok })
	if _, err := proxy.New(onA).Create(ctx, "x", instances.Spec{}, true); err == nil {
		t.Error("a call with no live replica succeeded")
	} else if got := err.Error(); !strings.Contains(got, `no executor of flavour "wasmtime" is live on node node-1`) {
		t.Errorf("error with no live replica: %s", got)
	}
	if down := pool.Unavailable(); len(down) != 1 {
		t.Errorf("Unavailable = %v, want the default flavour", down)
	}
}
