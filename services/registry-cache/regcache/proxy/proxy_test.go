package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/wasmlet/wasmlet/internal/grpcutil"
	"github.com/wasmlet/wasmlet/internal/testharness/testregistry"
	"github.com/wasmlet/wasmlet/services/registry-cache/push"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/cachetest"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/local"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/proxy"
	"github.com/wasmlet/wasmlet/services/registry-cache/regcache/server"
)

// serve runs a real gRPC server for a fresh local cache on a unix socket
// and returns a proxy connected to it, and the local cache for comparison.
func serve(t *testing.T, cfg local.Config) (*proxy.Client, *local.Cache) {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	cfg.Logger = slog.New(slog.DiscardHandler)
	lc, err := local.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return serveCache(t, lc), lc
}

// serveCache serves c with the real gRPC server on a unix socket and
// returns a client connected to it; opts are the server's.
func serveCache(t *testing.T, c regcache.Cache, opts ...grpc.ServerOption) *proxy.Client {
	t.Helper()
	// Unix socket paths are short: t.TempDir() can be too long.
	sockDir, err := shortTempDir(t)
	if err != nil {
		t.Fatal(err)
	}
	l, err := grpcutil.Listen("unix://" + filepath.Join(sockDir, "r.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(opts...)
	server.New(c).Register(srv)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- grpcutil.Serve(ctx, srv, l, time.Second) }()
	conn, err := grpcutil.Dial(grpcutil.Address(l))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := grpcutil.WaitHealthy(wctx, conn); err != nil {
		t.Fatal(err)
	}
	return proxy.New(conn)
}

func TestConformanceOverGRPC(t *testing.T) {
	reg := testregistry.New(t, testregistry.Options{})
	fx := cachetest.Prepare(t, reg)
	cachetest.Run(t, func(t *testing.T) regcache.Cache {
		c, _ := serve(t, local.Config{InsecureHosts: []string{reg.Host}})
		return c
	}, fx)

	t.Run("MessageKept", func(t *testing.T) {
		c, lc := serve(t, local.Config{InsecureHosts: []string{reg.Host}})
		ctx := context.Background()
		_, remoteErr := c.Resolve(ctx, regcache.ResolveRequest{Reference: fx.Missing})
		_, localErr := lc.Resolve(ctx, regcache.ResolveRequest{Reference: fx.Missing})
		if remoteErr == nil || localErr == nil || remoteErr.Error() != localErr.Error() {
			t.Fatalf("over the wire %q, in process %q: want the same message", remoteErr, localErr)
		}
	})
}

func TestConformanceOverGRPCWithAuth(t *testing.T) {
	reg := testregistry.New(t, testregistry.Options{Auth: true})
	fx := cachetest.Prepare(t, reg)
	c, _ := serve(t, local.Config{CAFile: reg.CAFile})
	_, err := c.Resolve(context.Background(), regcache.ResolveRequest{Reference: fx.CNCF.Reference,
		Credentials: map[string]regcache.Credentials{reg.Host: {Username: reg.Username, Password: "wrong"}}})
	if !errors.Is(err, regcache.ErrUnauthorized) {
		t.Fatalf("wrong password over gRPC: %v, want ErrUnauthorized", err)
	}
	res, err := c.Resolve(context.Background(), regcache.ResolveRequest{Reference: fx.CNCF.Reference, Credentials: fx.Credentials})
	if err != nil || res.ModuleDigest != cachetest.Digest(fx.CNCF.Bytes) {
		t.Fatalf("good credentials over gRPC: %+v, %v", res, err)
	}
}

func TestFetchLargeModule(t *testing.T) {
	reg := testregistry.New(t, testregistry.Options{})
	module := bytes.Repeat(cachetest.WasmModule("large"), 50_000) // ~750 KB: several chunks
	ref := reg.Host + "/large:v1"
	if _, err := push.Push(context.Background(), push.Options{Bytes: module, Reference: ref, PlainHTTP: true}); err != nil {
		t.Fatal(err)
	}
	c, _ := serve(t, local.Config{InsecureHosts: []string{reg.Host}})
	res, err := c.Resolve(context.Background(), regcache.ResolveRequest{Reference: ref})
	if err != nil {
		t.Fatal(err)
	}
	rc, size, err := c.Fetch(context.Background(), res.ModuleDigest)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if size != int64(len(module)) || !bytes.Equal(got, module) {
		t.Fatalf("fetched %d bytes (size %d), want %d", len(got), size, len(module))
	}
	if !strings.HasPrefix(res.Reference, reg.Host) {
		t.Fatalf("reference %q", res.Reference)
	}
}

// unavailableOrigin answers every resolve as a cache whose origin
// registry cannot be reached.
type unavailableOrigin struct{ regcache.Cache }

func (unavailableOrigin) Resolve(_ context.Context, req regcache.ResolveRequest) (regcache.Resolved, error) {
	return regcache.Resolved{}, fmt.Errorf("resolve %s: %w: dial tcp: connection refused", req.Reference, regcache.ErrUnavailable)
}

// A pull through a registry cache that does not answer says which cache
// (the transport's own error names none); a cache that answers that its
// origin is unreachable is not blamed.
func TestUnreachableCacheIsNamed(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	conn, err := grpcutil.Dial("tcp://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = proxy.New(conn).Resolve(ctx, regcache.ResolveRequest{Reference: "r.example/m:v1"})
	if !errors.Is(err, regcache.ErrUnavailable) || !strings.Contains(err.Error(), "the registry cache at "+addr+" did not answer") {
		t.Errorf("resolve through a cache that is not there: %v; want ErrUnavailable naming the cache at %s", err, addr)
	}

	c := serveCache(t, unavailableOrigin{})
	_, err = c.Resolve(ctx, regcache.ResolveRequest{Reference: "r.example/m:v1"})
	if !errors.Is(err, regcache.ErrUnavailable) || strings.Contains(err.Error(), "did not answer") {
		t.Errorf("resolve through a cache whose origin is down: %v; want ErrUnavailable, the cache not blamed", err)
	}
}
