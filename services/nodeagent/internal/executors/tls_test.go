package executors

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	eventsv1 "github.com/wasmlet/wasmlet/gen/wasmlet/events/v1"
	executorv1 "github.com/wasmlet/wasmlet/gen/wasmlet/executor/v1"
	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/subjects"
	"github.com/wasmlet/wasmlet/internal/testharness/natstest"
	"github.com/wasmlet/wasmlet/internal/testharness/testpki"
)

// TestDiscoveredReplicaOverMutualTLS: an executor that announces a tcp://
// address and serves mutual TLS is dialled with the pool's client TLS and
// answers; a pool without TLS does not reach it, and never dials an
// announced address beyond loopback in plaintext.
func TestDiscoveredReplicaOverMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := testpki.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	srvPair, err := ca.Issue("executor", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cliPair, err := ca.Issue("nodeagent")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeExecutor{id: "exec-tls", holds: map[string]string{}}
	gs, l, err := grpcutil.NewServer("tcp://127.0.0.1:0", grpcutil.TLS{CertFile: srvPair.Cert, KeyFile: srvPair.Key, CAFile: ca.CertFile})
	if err != nil {
		t.Fatal(err)
	}
	executorv1.RegisterExecutorServiceServer(gs, f)
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	f.addr = grpcutil.Address(l)
	plain := startFake(t, "exec-plain")
	far := &fakeExecutor{id: "exec-far", addr: "tcp://192.0.2.1:7000"} // TEST-NET-1: not dialled

	_, nc := natstest.Conn(t)
	sub, err := nc.Subscribe(subjects.Discover("node-1"), func(*nats.Msg) {
		// In order: the far one first, so that once exec-plain is in, the
		// far one was seen.
		for _, e := range []*fakeExecutor{far, f, plain} {
			b, _ := proto.Marshal(&eventsv1.ExecutorAnnouncement{
				ExecutorId: e.id, Flavour: "wasmtime", Node: "node-1", Address: e.addr, MaxInstances: 100,
				Healthy: true, Sequence: 1, Period: durationpb.New(time.Second),
			})
			_ = nc.Publish(subjects.Executor("node-1", "wasmtime", e.id), b)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	getInfo := func(pool *Pool, id string) error {
		e, ok := pool.Get(id)
		if !ok {
			t.Fatalf("%s not in the pool", id)
		}
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		defer ccancel()
		_, err := e.Runtime.Info(cctx)
		return err
	}

	withTLS, err := New(Config{NATS: nc, Node: "node-1", Default: "wasmtime",
		TLS: grpcutil.TLS{CertFile: cliPair.Cert, KeyFile: cliPair.Key, CAFile: ca.CertFile}})
	if err != nil {
		t.Fatal(err)
	}
	defer withTLS.Close()
	waitUntil(t, "exec-tls and exec-plain discovered", func() bool {
		_, a := withTLS.Get("exec-tls")
		_, b := withTLS.Get("exec-plain")
		return a && b
	})
	if err := getInfo(withTLS, "exec-tls"); err != nil {
		t.Errorf("GetInfo over mutual TLS: %v", err)
	}
	if err := getInfo(withTLS, "exec-plain"); err != nil {
		t.Errorf("GetInfo on a unix socket from a pool with TLS: %v", err)
	}

	without, err := New(Config{NATS: nc, Node: "node-1", Default: "wasmtime"})
	if err != nil {
		t.Fatal(err)
	}
	defer without.Close()
	waitUntil(t, "exec-plain discovered without TLS", func() bool { _, ok := without.Get("exec-plain"); return ok })
	if _, ok := without.Get("exec-far"); ok {
		t.Error("an announced address beyond loopback was taken in without TLS")
	}
	if err := getInfo(without, "exec-tls"); err == nil {
		t.Error("a plaintext client got an answer from an executor serving mutual TLS")
	}
}
