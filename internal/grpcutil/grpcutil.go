// Package grpcutil holds what every wasmlet gRPC server and client shares:
// the address syntax, listening safely, dialing, and serving with the
// standard health service and a graceful stop.
//
// Addresses are "unix:///path/to.sock" or "tcp://host:port" (a bare
// "host:port" means tcp). A server listens on a unix socket (mode 0600:
// only its user may connect) or on TCP with mutual TLS (type TLS: a key
// pair and the CA of the peers), where it requires and verifies client
// certificates; a TCP server without mutual TLS is refused, even on
// loopback, since any local user or process could then call an API that
// starts native code and mounts host paths. A client verifies the server
// it dials over TCP when given TLS, and dials plaintext only to loopback.
package grpcutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
)

// Keepalive is how a client finds a TCP peer that stopped answering (a
// paused or cut-off container, a host gone without a FIN) while it waits
// on a call: after Time without traffic it pings, and closes the
// connection when no answer comes in Timeout, failing the call with
// Unavailable. Without it a call to a frozen peer waits forever (a pod
// stuck in ContainerCreating with no word why). A peer that is merely
// slow still answers pings. gRPC raises a Time under 10 s to 10 s.
var Keepalive = keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}

// KeepaliveEnforcement lets clients ping as often as Keepalive does; the
// gRPC default (one ping in 5 minutes) answers them with GOAWAY.
var KeepaliveEnforcement = keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}

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

// ErrPlaintextTCP: a gRPC server was to listen on TCP without mutual TLS.
var ErrPlaintextTCP = errors.New("refusing to serve gRPC over TCP without mutual TLS, even on loopback (any local user or process could call it): listen on a unix socket (unix:///path, created 0600) or give --tls-cert, --tls-key and --tls-ca")

// Listen opens a listener on the unix socket addr: its directory is
// created (0700) if missing, a stale socket is removed, and the socket is
// made 0600 before anyone can connect to it. A TCP address is refused
// (ErrPlaintextTCP): TCP needs mutual TLS (NewServer).
func Listen(addr string) (net.Listener, error) { return listen(addr, false) }

// listen is Listen; secured allows a TCP address, for a server that
// speaks mutual TLS.
func listen(addr string, secured bool) (net.Listener, error) {
	network, target, err := Split(addr)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		l, err := listenUnix(target)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", addr, err)
		}
		return l, nil
	}
	if !secured {
		return nil, fmt.Errorf("listen %s: %w", addr, ErrPlaintextTCP)
	}
	l, err := net.Listen("tcp", target)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return l, nil
}

// maxSocketPath is the longest path a unix socket may have on Linux
// (sockaddr_un's 108 bytes with the terminating NUL).
const maxSocketPath = 107

// listenUnix listens on a unix socket at path, mode 0600. A socket that
// bind creates has the umask's mode until a chmod; so it is bound in a
// fresh directory of mode 0700 beside path, made 0600 there, and renamed
// into place. Only when that longer path would not fit is it bound in
// place and then made 0600 (reachable meanwhile under the umask's mode).
func listenUnix(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	private, err := os.MkdirTemp(dir, ".s")
	if err != nil {
		return nil, err
	}
	defer os.Remove(private)
	bind := filepath.Join(private, "s")
	if len(bind) > maxSocketPath {
		bind = path
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: bind, Net: "unix"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(bind, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	if bind == path {
		return l, nil
	}
	if err := os.Rename(bind, path); err != nil {
		l.Close()
		return nil, err
	}
	// Close would unlink the path it bound, which is gone: unlink the
	// socket where it now is instead.
	l.SetUnlinkOnClose(false)
	return &movedUnixListener{UnixListener: l, path: path}, nil
}

// movedUnixListener is a unix listener whose socket was renamed to path.
type movedUnixListener struct {
	*net.UnixListener
	path   string
	unlink sync.Once
}

func (l *movedUnixListener) Close() error {
	err := l.UnixListener.Close()
	l.unlink.Do(func() { os.Remove(l.path) })
	return err
}

// Addr reports the socket where it is, not where it was bound.
func (l *movedUnixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

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
	defaults := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16 << 20)),
	}
	if network == "unix" {
		target = "unix://" + target
	} else {
		target = "passthrough:///" + target
		defaults = append(defaults, grpc.WithKeepaliveParams(Keepalive))
	}
	opts = append(defaults, opts...)
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
