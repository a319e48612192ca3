// Package grpcutil holds what every wasmlet gRPC server and client shares:
// the address syntax, listening safely, dialing, and serving with the
// standard health service and a graceful stop.
//
// Addresses are "unix:///path/to.sock" or "tcp://host:port" (a bare
// "host:port" means tcp). Without TLS a TCP listener must be on a loopback
// address: nothing listens beyond loopback unless configured. With TLS
// (type TLS: a key pair and the CA of the peers) a TCP server requires and
// verifies client certificates, and a client verifies the server: mutual
// TLS, which is what lets executors and the registry cache serve other
// hosts.
package grpcutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// Split parses an address into a network ("unix" or "tcp") and its target.
func Split(addr string) (network, target string, err error) {
	switch {
	case strings.HasPrefix(addr, "unix://"):
		target = strings.TrimPrefix(addr, "unix://")
		if target == "" {
			return "", "", fmt.Errorf("address %q: empty socket path", addr)
		}
		return "unix", target, nil
	case strings.HasPrefix(addr, "tcp://"):
		target = strings.TrimPrefix(addr, "tcp://")
	case strings.Contains(addr, "://"):
		return "", "", fmt.Errorf("address %q: want unix:///path or tcp://host:port", addr)
	default:
		target = addr
	}
	if _, _, err := net.SplitHostPort(target); err != nil {
		return "", "", fmt.Errorf("address %q: %w", addr, err)
	}
	return "tcp", target, nil
}

// Listen opens a listener for addr. A unix socket's directory is created
// (0700) and a stale socket removed; the socket itself is made 0600. A TCP
// address must be loopback (NewServer with TLS lifts that).
func Listen(addr string) (net.Listener, error) { return listen(addr, false) }

// listen is Listen; secured allows a TCP address beyond loopback, for a
// server that speaks mutual TLS.
func listen(addr string, secured bool) (net.Listener, error) {
	network, target, err := Split(addr)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		if err := os.MkdirAll(filepath.Dir(target), 0o700); err != nil {
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
		if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("listen %s: remove stale socket: %w", addr, err)
		}
		l, err := net.Listen("unix", target)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
		if err := os.Chmod(target, 0o600); err != nil {
			l.Close()
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
		return l, nil
	}
	if !secured && !IsLoopback(target) {
		return nil, fmt.Errorf("listen %s: refusing a non-loopback address without mutual TLS (give --tls-cert, --tls-key and --tls-ca)", addr)
	}
	l, err := net.Listen("tcp", target)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return l, nil
}

// IsLoopback reports whether host:port names a loopback host.
func IsLoopback(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Address renders a listener's address in the syntax Split reads.
func Address(l net.Listener) string {
	if l.Addr().Network() == "unix" {
		return "unix://" + l.Addr().String()
	}
	return "tcp://" + l.Addr().String()
}

// Dial returns a client connection for addr. The connection is lazy: a
// server that is not there yet fails the first call, not Dial.
func Dial(addr string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	network, target, err := Split(addr)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		target = "unix://" + target
	} else {
		target = "passthrough:///" + target
	}
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16 << 20)),
	}, opts...)
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	return conn, nil
}

// Serve runs srv on l, with the standard health service registered and
// reporting SERVING, until ctx ends; then it stops gracefully, and hard
// after grace.
func Serve(ctx context.Context, srv *grpc.Server, l net.Listener, grace time.Duration) error {
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	hs.Shutdown()
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(grace):
		srv.Stop()
	}
	return nil
}

// WaitHealthy polls the health service at conn until it reports SERVING or
// ctx ends.
func WaitHealthy(ctx context.Context, conn *grpc.ClientConn) error {
	hc := healthpb.NewHealthClient(conn)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := hc.Check(cctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		select {
		case <-ctx.Done():
			if err == nil {
				err = fmt.Errorf("status %s", resp.GetStatus())
			}
			return fmt.Errorf("wait for healthy server: %w (last: %v)", ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
