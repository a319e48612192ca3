package grpcutil

import (
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// A call waiting on a TCP peer that freezes (docker pause: the socket
// stays open, nothing answers) fails with Unavailable once the keepalive
// ping goes unanswered, instead of waiting forever.
func TestCallToFrozenPeerFails(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a keepalive ping (gRPC's floor is 10 s)")
	}
	old := Keepalive
	Keepalive.Timeout = time.Second
	t.Cleanup(func() { Keepalive = old })

	sl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.KeepaliveEnforcementPolicy(KeepaliveEnforcement))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(sl)
	t.Cleanup(srv.Stop)

	fwd := newFreezer(t, sl.Addr().String())
	conn, err := Dial("tcp://" + fwd.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Watch answers at once, then waits for a change that never comes.
	stream, err := healthpb.NewHealthClient(conn).Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	fwd.frozen.Store(true)
	start := time.Now()
	errc := make(chan error, 1)
	go func() { _, err := stream.Recv(); errc <- err }()
	select {
	case err := <-errc:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("after the peer froze, the call ended with %v, want Unavailable", err)
		}
		t.Logf("frozen peer noticed after %s", time.Since(start).Round(100*time.Millisecond))
	case <-time.After(Keepalive.Time + Keepalive.Timeout + 10*time.Second):
		t.Fatal("a call to a frozen peer still waits: no keepalive")
	}
}

// freezer forwards TCP connections to a server until frozen; then it holds
// every byte, as a paused container does.
type freezer struct {
	addr   string
	frozen atomic.Bool
}

func newFreezer(t *testing.T, to string) *freezer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f := &freezer{addr: l.Addr().String()}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", to)
			if err != nil {
				c.Close()
				continue
			}
			t.Cleanup(func() { c.Close(); s.Close() })
			go f.pipe(c, s)
			go f.pipe(s, c)
		}
	}()
	return f
}

func (f *freezer) pipe(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if f.frozen.Load() {
			continue // read and dropped: nothing reaches the other side
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}
