package server

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/testharness/wasmbuild"
	"github.com/wasmlet/wasmlet/services/executor/instances"
	"github.com/wasmlet/wasmlet/services/executor/internal/engine/wasmtime"
	"github.com/wasmlet/wasmlet/services/executor/internal/instance"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
)

func serve(t *testing.T, cache regcache.Cache, maxInstances int) executorv1.ExecutorServiceClient {
	t.Helper()
	state := t.TempDir()
	eng, err := wasmtime.New(wasmtime.Config{CacheDir: filepath.Join(state, "compiled")})
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := instance.New(instance.Config{ExecutorID: "e1", Engine: eng, Cache: cache, ModuleDir: filepath.Join(state, "modules"), MaxInstances: maxInstances})
	if err != nil {
		t.Fatal(err)
	}
	sock, err := os.MkdirTemp("", "exsrv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sock) })
	addr := "unix://" + filepath.Join(sock, "e.sock")
	l, err := grpcutil.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	executorv1.RegisterExecutorServiceServer(srv, New(mgr))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- grpcutil.Serve(ctx, srv, l, time.Second) }()
	t.Cleanup(func() {
		cancel()
		<-done
		sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
		defer c()
		mgr.Shutdown(sctx)
	})
	conn, err := grpcutil.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	hctx, hc := context.WithTimeout(context.Background(), 10*time.Second)
	defer hc()
	if err := grpcutil.WaitHealthy(hctx, conn); err != nil {
		t.Fatal(err)
	}
	return executorv1.NewExecutorServiceClient(conn)
}

func code(err error) codes.Code { return status.Code(err) }

func TestServerOverUnixSocket(t *testing.T) {
	cache := cachetest.Files{}
	hello := addFile(t, cache, wasmbuild.Build(t, "hello"))
	spin := addFile(t, cache, wasmbuild.Build(t, "spin"))
	c := serve(t, cache, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	info, err := c.GetInfo(ctx, &executorv1.GetInfoRequest{})
	if err != nil || info.GetEngine() != "wasmtime" || info.GetEngineVersion() == "" || info.GetMaxInstances() != 3 || info.GetExecutorId() != "e1" || info.GetArch() == "" {
		t.Fatalf("info %v %v", info, err)
	}
	if info.GetCpuLimits() != executorv1.CpuLimitEnforcement_CPU_LIMIT_ENFORCEMENT_NONE || info.GetCpuLimitsDescription() == "" {
		t.Fatalf("info of a server not told of CPU limits: %v", info)
	}

	watch, err := c.WatchInstances(ctx, &executorv1.WatchInstancesRequest{Id: "h"})
	if err != nil {
		t.Fatal(err)
	}
	spec := &executorv1.InstanceSpec{
		Module: &executorv1.Module{Digest: hello, Reference: "example/hello:v1"},
		Args:   []string{"hello"},
		Env:    []*executorv1.EnvVar{{Name: "EXIT_CODE", Value: "3"}},
		Labels: map[string]string{"k": "v"},
		// Kept in the spec; this test's engine does not enforce it.
		CpuLimitMillis: 500,
	}
	created, err := c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: "h", Spec: spec, Start: true})
	if err != nil || created.GetInstance().GetState() != executorv1.InstanceState_INSTANCE_STATE_RUNNING {
		t.Fatalf("create: %v %v", created, err)
	}
	var states []executorv1.InstanceState
	var last *executorv1.Instance
	for len(states) < 3 {
		r, err := watch.Recv()
		if err != nil {
			t.Fatal(err)
		}
		last = r.GetInstance()
		states = append(states, last.GetState())
	}
	if states[0] != executorv1.InstanceState_INSTANCE_STATE_CREATED || states[2] != executorv1.InstanceState_INSTANCE_STATE_EXITED ||
		last.GetExitCode() != 3 || last.GetSpec().GetLabels()["k"] != "v" || last.GetSpec().GetCpuLimitMillis() != 500 || last.GetFinishedAt() == nil {
		t.Fatalf("watched %v, last %v", states, last)
	}

	// Errors map to codes.
	if _, err := c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: "h", Spec: spec}); code(err) != codes.AlreadyExists {
		t.Errorf("duplicate: %v", err)
	}
	if _, err := c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: "x", Spec: &executorv1.InstanceSpec{Module: &executorv1.Module{Digest: "md5:1"}}}); code(err) != codes.InvalidArgument {
		t.Errorf("bad digest: %v", err)
	}
	if _, err := c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: "x"}); code(err) != codes.InvalidArgument {
		t.Errorf("no spec: %v", err)
	}
	if _, err := c.GetInstance(ctx, &executorv1.GetInstanceRequest{Id: "nope"}); code(err) != codes.NotFound {
		t.Errorf("get unknown: %v", err)
	}
	if _, err := c.StartInstance(ctx, &executorv1.StartInstanceRequest{Id: "h"}); code(err) != codes.FailedPrecondition {
		t.Errorf("start ended: %v", err)
	}
	if _, err := c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: "s", Spec: &executorv1.InstanceSpec{Module: &executorv1.Module{Digest: spin}}, Start: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteInstance(ctx, &executorv1.DeleteInstanceRequest{Id: "s"}); code(err) != codes.FailedPrecondition {
		t.Errorf("delete running: %v", err)
	}
	// The spinning instance's figures: its memory at once, its CPU time as it spins.
	var st *executorv1.InstanceStats
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		stats, err := c.ListInstanceStats(ctx, &executorv1.ListInstanceStatsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range stats.GetStats() {
			if s.GetInstanceId() == "s" {
				st = s
			}
		}
		if st.GetCpuUsageNanos() > 0 || time.Now().After(deadline) {
			break
		}
	}
	if st.GetMemoryBytes() <= 0 || !st.GetCpuMeasured() || st.GetCpuUsageNanos() == 0 || st.GetState() != executorv1.InstanceState_INSTANCE_STATE_RUNNING || st.GetTime() == nil {
		t.Errorf("stats of a running instance: %v", st)
	}
	if stats, err := c.ListInstanceStats(ctx, &executorv1.ListInstanceStatsRequest{LabelSelector: map[string]string{"no": "such"}}); err != nil || len(stats.GetStats()) != 0 {
		t.Errorf("stats with a selector that matches nothing: %v %v", stats, err)
	}
	if _, err := c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: "c", Spec: spec}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateInstance(ctx, &executorv1.CreateInstanceRequest{Id: "d", Spec: spec}); code(err) != codes.ResourceExhausted {
		t.Errorf("over the limit: %v", err)
	}

	list, err := c.ListInstances(ctx, &executorv1.ListInstancesRequest{LabelSelector: map[string]string{"k": "v"}})
	if err != nil || len(list.GetInstances()) != 2 || list.GetSequence() < 5 {
		t.Fatalf("list: %v %v", list, err)
	}
	stopped, err := c.StopInstance(ctx, &executorv1.StopInstanceRequest{Id: "s", GracePeriod: durationpb.New(50 * time.Millisecond)})
	if err != nil || stopped.GetInstance().GetState() != executorv1.InstanceState_INSTANCE_STATE_KILLED || stopped.GetInstance().GetExitCode() != 137 {
		t.Fatalf("stop: %v %v", stopped, err)
	}
	if _, err := c.DeleteInstance(ctx, &executorv1.DeleteInstanceRequest{Id: "s"}); err != nil {
		t.Fatal(err)
	}
	// A watch from a listing's sequence sees nothing old, then new events.
	list, _ = c.ListInstances(ctx, &executorv1.ListInstancesRequest{})
	w2, err := c.WatchInstances(ctx, &executorv1.WatchInstancesRequest{AfterSequence: list.GetSequence()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.StopInstance(ctx, &executorv1.StopInstanceRequest{Id: "c"}); err != nil {
		t.Fatal(err)
	}
	r, err := w2.Recv()
	if err != nil || r.GetInstance().GetId() != "c" || r.GetInstance().GetSequence() != list.GetSequence()+1 {
		t.Fatalf("resumed watch: %v %v", r, err)
	}
	w3, err := c.WatchInstances(ctx, &executorv1.WatchInstancesRequest{AfterSequence: 1 << 40})
	if err == nil {
		_, err = w3.Recv()
	}
	if code(err) != codes.FailedPrecondition {
		t.Errorf("watch from the future: %v", err)
	}
}

func TestGetInfoCPULimits(t *testing.T) {
	state := t.TempDir()
	eng, err := wasmtime.New(wasmtime.Config{CacheDir: filepath.Join(state, "compiled")})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		enforced bool
		want     executorv1.CpuLimitEnforcement
	}{
		{true, executorv1.CpuLimitEnforcement_CPU_LIMIT_ENFORCEMENT_CGROUP},
		{false, executorv1.CpuLimitEnforcement_CPU_LIMIT_ENFORCEMENT_NONE},
	} {
		mgr, err := instance.New(instance.Config{ExecutorID: "e1", Engine: eng, Cache: cachetest.Files{}, ModuleDir: filepath.Join(state, "modules"),
			CPULimitsEnforced: tc.enforced, CPULimitsWords: "how", Confinement: instances.Confinement{Seccomp: true, Description: "walls"}})
		if err != nil {
			t.Fatal(err)
		}
		info, err := New(mgr).GetInfo(context.Background(), &executorv1.GetInfoRequest{})
		if err != nil || info.GetCpuLimits() != tc.want || info.GetCpuLimitsDescription() != "how" || !info.GetConfinement().GetSeccomp() || info.GetConfinement().GetDescription() != "walls" {
			t.Errorf("enforced %v: info %v, %v; want %v", tc.enforced, info, err, tc.want)
		}
	}
}

// addFile maps the file at path in c and returns its digest.
func addFile(t *testing.T, c cachetest.Files, path string) string {
	t.Helper()
	d, err := c.Add(path)
	if err != nil {
		t.Fatal(err)
	}
	return d
}
