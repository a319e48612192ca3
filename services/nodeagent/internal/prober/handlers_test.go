package prober

import (
	"net"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// A tcpSocket probe succeeds while something accepts on the port and fails
// once the listener is closed.
func TestTCPSocket(t *testing.T) {
	noLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	closeLn := sync.OnceFunc(func() { _ = ln.Close(); wg.Wait() })
	t.Cleanup(closeLn)
	port := ln.Addr().(*net.TCPAddr).Port

	p := &v1.Probe{
		ProbeHandler:     v1.ProbeHandler{TCPSocket: &v1.TCPSocketAction{Port: intstr.FromString("svc")}},
		PeriodSeconds:    1,
		TimeoutSeconds:   100,
		FailureThreshold: 2,
	}
	c := &v1.Container{Name: "app", ReadinessProbe: p, Ports: []v1.ContainerPort{{Name: "svc", ContainerPort: int32(port)}}}
	w, r := start(t, Config{Container: c, PodIP: "127.0.0.1"}, nil)
	waitFor(t, w, "ready", func(st Status) bool { return st.Ready })
	closeLn()
	waitFor(t, w, "unready", func(st Status) bool { return !st.Ready })
	ms := r.messages(ReasonUnhealthy)
	if len(ms) < 2 || !strings.HasPrefix(ms[0], "Readiness probe failed: dial tcp 127.0.0.1:") || !strings.HasSuffix(ms[0], "connection refused") {
		t.Errorf("events %q", ms)
	}
}

// A grpc probe asks the standard health service about its service: SERVING is
// a success, anything else a failure, and so is a server that is gone.
func TestGRPC(t *testing.T) {
	noLeaks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	hs.SetServingStatus("echo", healthpb.HealthCheckResponse_SERVING)
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	stopSrv := sync.OnceFunc(func() { srv.Stop(); <-done })
	t.Cleanup(stopSrv)
	port := int32(ln.Addr().(*net.TCPAddr).Port)

	service := "echo"
	p := &v1.Probe{
		ProbeHandler:     v1.ProbeHandler{GRPC: &v1.GRPCAction{Port: port, Service: &service}},
		PeriodSeconds:    1,
		TimeoutSeconds:   100,
		FailureThreshold: 1,
	}
	w, r := start(t, Config{Container: &v1.Container{Name: "app", ReadinessProbe: p}, PodIP: "127.0.0.1"}, nil)
	waitFor(t, w, "ready", func(st Status) bool { return st.Ready })
	hs.SetServingStatus("echo", healthpb.HealthCheckResponse_NOT_SERVING)
	waitFor(t, w, "unready", func(st Status) bool { return !st.Ready })
	if ms := r.messages(ReasonUnhealthy); len(ms) == 0 || ms[0] != `Readiness probe failed: service unhealthy (responded with "NOT_SERVING")` {
		t.Errorf("events %q", ms)
	}
	hs.SetServingStatus("echo", healthpb.HealthCheckResponse_SERVING)
	waitFor(t, w, "ready again", func(st Status) bool { return st.Ready })

	// A service the server does not know, and a server that is gone.
	unknown := "nope"
	q := p.DeepCopy()
	q.GRPC.Service = &unknown
	w2, r2 := start(t, Config{Container: &v1.Container{Name: "app", LivenessProbe: q}, PodIP: "127.0.0.1"}, nil)
	st := waitFor(t, w2, "restart", func(st Status) bool { return st.Restart })
	if !strings.HasPrefix(st.Message, "Liveness probe failed: error: health rpc probe failed: ") || !strings.Contains(st.Message, "NotFound") {
		t.Errorf("unknown service: %q (events %q)", st.Message, r2.messages(ReasonUnhealthy))
	}
	stopSrv()
	waitFor(t, w, "unready with the server gone", func(st Status) bool { return !st.Ready })
	ms := r.messages(ReasonUnhealthy)
	if last := ms[len(ms)-1]; !strings.HasPrefix(last, `Readiness probe failed: error: failed to connect service at "127.0.0.1:`) {
		t.Errorf("server gone: %q", last)
	}
}
